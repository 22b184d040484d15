// CPU elementwise and reduction throughput of kiln at 16M floats (64 MiB per tensor), in GB/s of
// memory traffic (bytes read + bytes written, 1 GB = 1e9 bytes), with a plain C++ loop over
// std::vector<float> as the peer in the same process.
//
// The peer loops run on the same OpenMP threads kiln uses (`#pragma omp parallel for`), so the
// ratio compares like with like. The peer writes into a buffer allocated once; kiln, like any
// functional tensor library, allocates a fresh output per call, and that cost is part of what the
// kiln numbers measure (BM_peer_add_fresh_output shows how much of it is first-touching new
// pages). Counters (Google Benchmark appends "/s" to rate counters and "s" to inverted ones; the
// numbers are as named):
//   GB/s      bytes moved per second, in 1e9 bytes
//   x_peer    kiln time / peer time for the same operation (1.0 = no overhead); the peer time is
//             the median of 9 runs, measured once per process
//   threads   OpenMP threads in use
//
//   ./benchmarks/bench_elementwise            (about 20 s on 2 cores)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include <kiln/kiln.hpp>

namespace {

constexpr std::int64_t rows = 4096, cols = 4096, n = rows * cols;
constexpr double fbytes = sizeof(float);

void report(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * bytes_per_iteration / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["threads"] = kiln::cpu::num_threads();
}

// kiln time / peer time: with kIsRate | kInvert the reported value is elapsed / (iterations * peer).
void report_ratio(benchmark::State& state, double peer_seconds) {
  state.counters["x_peer"] = benchmark::Counter(static_cast<double>(state.iterations()) * peer_seconds,
                                                benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// ---- the peer: plain loops over std::vector<float> ----

struct PeerData {
  std::vector<float> a, b, out;
  PeerData() : a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n)) {
    const std::vector<float> ka = kiln::randn<float>({n}).to_vector(), kb = kiln::randn<float>({n}).to_vector();
    std::copy(ka.begin(), ka.end(), a.begin());
    std::copy(kb.begin(), kb.end(), b.begin());
  }
};

PeerData& peer_data() {
  static PeerData data;
  return data;
}

void peer_add(PeerData& d) {
  const float* a = d.a.data();
  const float* b = d.b.data();
  float* o = d.out.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) o[i] = a[i] + b[i];
}

void peer_exp(PeerData& d) {
  const float* a = d.a.data();
  float* o = d.out.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) o[i] = std::exp(a[i]);
}

// Median wall time of several runs (after one warm-up), measured once per process.
template <class F>
double median_seconds(F f) {
  f();
  std::vector<double> times;
  for (int r = 0; r < 9; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    benchmark::ClobberMemory();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double peer_add_seconds() {
  static const double t = median_seconds([] { peer_add(peer_data()); });
  return t;
}

double peer_exp_seconds() {
  static const double t = median_seconds([] { peer_exp(peer_data()); });
  return t;
}

void BM_peer_add(benchmark::State& state) {
  PeerData& d = peer_data();
  for (auto _ : state) {
    peer_add(d);
    benchmark::ClobberMemory();
  }
  report(state, 3 * fbytes * n);
}

// The same loop writing into a fresh uninitialised allocation per call, as kiln does: the
// difference to BM_peer_add is the cost of first-touching 64 MiB of new pages.
void BM_peer_add_fresh_output(benchmark::State& state) {
  PeerData& d = peer_data();
  for (auto _ : state) {
    std::unique_ptr<float[]> out(new float[static_cast<std::size_t>(n)]);
    const float* a = d.a.data();
    const float* b = d.b.data();
    float* o = out.get();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) o[i] = a[i] + b[i];
    benchmark::DoNotOptimize(o);
    benchmark::ClobberMemory();
  }
  report(state, 3 * fbytes * n);
}

void BM_peer_exp(benchmark::State& state) {
  PeerData& d = peer_data();
  for (auto _ : state) {
    peer_exp(d);
    benchmark::ClobberMemory();
  }
  report(state, 2 * fbytes * n);
}

// ---- kiln ----

void BM_kiln_add(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols}), b = kiln::randn<float>({rows, cols});
  const double peer = peer_add_seconds();
  for (auto _ : state) {
    auto out = kiln::add(a, b);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, 3 * fbytes * n);
  report_ratio(state, peer);
}

void BM_kiln_mul_broadcast_row(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols}), row = kiln::randn<float>({cols});
  for (auto _ : state) {
    auto out = kiln::mul(a, row);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, 2 * fbytes * n + fbytes * cols);
}

void BM_kiln_exp(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols});
  const double peer = peer_exp_seconds();
  for (auto _ : state) {
    auto out = kiln::exp(a);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, 2 * fbytes * n);
  report_ratio(state, peer);
}

void BM_kiln_silu(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols});
  for (auto _ : state) {
    auto out = kiln::silu(a);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, 2 * fbytes * n);
}

// a^T + b: one operand read column-wise (stride 4096 floats), so every element of it costs a
// cache line fetched for 4 of its 64 bytes unless the lines stay cached across rows.
void BM_kiln_add_transposed(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols}), b = kiln::randn<float>({cols, rows});
  const auto at = kiln::transpose(a, 0, 1);
  for (auto _ : state) {
    auto out = kiln::add(at, b);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, 3 * fbytes * n);
}

void BM_kiln_sum(benchmark::State& state) {
  const auto a = kiln::randn<float>({rows, cols});
  for (auto _ : state) {
    auto out = kiln::sum(a);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, fbytes * n);
}

// The same 16M elements as one dimension: the 2-D case above also has to walk two reduced dims.
void BM_kiln_sum_1d(benchmark::State& state) {
  const auto a = kiln::randn<float>({n});
  for (auto _ : state) {
    auto out = kiln::sum(a);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, fbytes * n);
}

}  // namespace

BENCHMARK(BM_peer_add)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_peer_add_fresh_output)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_add)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_mul_broadcast_row)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_add_transposed)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_peer_exp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_exp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_silu)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_sum)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_sum_1d)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
