// kiln::matmul against a raw Eigen GEMM on the same buffers, in the same process.
//
// Shapes are written M×K×N: C[M, N] = A[M, K] · B[K, N], float, all row-major. The peer is what
// kiln's CPU kernel wraps: Eigen::Map over the same A and B buffers and `c.noalias() = a * b` into a
// preallocated C. kiln additionally checks shapes, allocates C and builds the tensor (target:
// kiln/eigen <= 1.05, DESIGN.md). A third side, Eigen writing into a freshly allocated kiln tensor,
// separates the cost of that allocation (the C library handing back fresh pages that fault on
// first write) from kiln's own code.
//
// Each benchmark iteration times the three sides back to back, in an order that rotates between
// iterations so none always finds the caches warmed by another. Counters:
//   kiln/eigen            median over iterations of (kiln time / Eigen time) of the same iteration:
//                         robust to load changing during the run, which shifts every side of one
//                         iteration alike
//   kiln/eigen_fresh_out  the same against Eigen into a fresh output (kiln's overhead alone)
//   eigen_GFLOPs, kiln_GFLOPs   2·M·K·N / median time of each side
//   threads               OpenMP threads available to both (set OMP_NUM_THREADS to change)
//   max_abs_diff          between the kiln and Eigen results (0: kiln ran the same computation)
// Run: ./benchmarks/bench_matmul   (about a minute on 2 busy cores)
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include <kiln/kiln.hpp>

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

template <class F>
double time_seconds(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void matmul_vs_eigen(benchmark::State& state, std::int64_t m, std::int64_t k, std::int64_t n) {
  const kiln::Tensor<float> a = kiln::randn<float>({m, k});
  const kiln::Tensor<float> b = kiln::randn<float>({k, n});
  std::vector<float> c_eigen(static_cast<std::size_t>(m * n));
  const Eigen::Map<const RowMatrix> ea(a.data(), m, k), eb(b.data(), k, n);
  Eigen::Map<RowMatrix> ec(c_eigen.data(), m, n);
  kiln::Tensor<float> c_kiln, c_fresh;

  auto run_eigen = [&] {
    ec.noalias() = ea * eb;
    benchmark::DoNotOptimize(c_eigen.data());
    benchmark::ClobberMemory();
  };
  auto run_eigen_fresh_out = [&] {
    c_fresh = kiln::Tensor<float>();  // free the previous output first, as kiln's side does
    c_fresh = kiln::Tensor<float>({m, n});
    Eigen::Map<RowMatrix>(c_fresh.data(), m, n).noalias() = ea * eb;
    benchmark::DoNotOptimize(c_fresh.data());
    benchmark::ClobberMemory();
  };
  auto run_kiln = [&] {
    c_kiln = kiln::Tensor<float>();  // free the previous result first, as a training step would
    c_kiln = kiln::matmul(a, b);
    benchmark::DoNotOptimize(c_kiln.data());
    benchmark::ClobberMemory();
  };
  // Warm-up: page in C, let Eigen size its blocking, start the OpenMP threads.
  run_eigen();
  run_eigen_fresh_out();
  run_kiln();

  std::vector<double> t_eigen, t_kiln, ratio, ratio_fresh;
  int rotation = 0;
  for (auto _ : state) {
    double te = 0, tf = 0, tk = 0;
    for (int i = 0; i < 3; ++i) {
      switch ((rotation + i) % 3) {
        case 0: te = time_seconds(run_eigen); break;
        case 1: tf = time_seconds(run_eigen_fresh_out); break;
        default: tk = time_seconds(run_kiln); break;
      }
    }
    rotation = (rotation + 1) % 3;
    t_eigen.push_back(te);
    t_kiln.push_back(tk);
    ratio.push_back(tk / te);
    ratio_fresh.push_back(tk / tf);
  }

  double max_diff = 0.0;
  const float* pk = c_kiln.data();
  for (std::size_t i = 0; i < c_eigen.size(); ++i)
    max_diff = std::max(max_diff, static_cast<double>(std::abs(pk[i] - c_eigen[i])));

  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n);
  state.counters["kiln/eigen"] = median(ratio);
  state.counters["kiln/eigen_fresh_out"] = median(ratio_fresh);
  state.counters["eigen_GFLOPs"] = flops / median(t_eigen) / 1e9;
  state.counters["kiln_GFLOPs"] = flops / median(t_kiln) / 1e9;
  state.counters["threads"] = kiln::cpu::num_threads();
  state.counters["max_abs_diff"] = max_diff;
  state.SetLabel("MxKxN=" + std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n));
}

}  // namespace

int main(int argc, char** argv) {
  struct Case {
    std::int64_t m, k, n;
    benchmark::IterationCount iterations;  // fixed (a multiple of 3: whole rotations), so the run stays short
  };
  for (const Case& c : {Case{256, 256, 256, 201}, Case{1024, 1024, 1024, 24}, Case{2048, 2048, 2048, 9},
                        Case{4096, 1024, 4096, 9}}) {
    const std::string name = "MatmulVsEigen/" + std::to_string(c.m) + "x" + std::to_string(c.k) + "x" +
                             std::to_string(c.n);
    benchmark::RegisterBenchmark(name.c_str(), [c](benchmark::State& s) { matmul_vs_eigen(s, c.m, c.k, c.n); })
        ->Iterations(c.iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
