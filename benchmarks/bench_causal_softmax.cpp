// nn::causal_softmax on the CPU, forward and backward: the fused pass (backend/cpu/softmax.hpp,
// causal_softmax_forward and _backward) against the composed ops it replaced, as the peer in the
// same process: softmax(masked_fill(mul(scores, scale), causal_mask, -inf)) and their autograd.
// Both give the same bits (tests/nn/test_causal_softmax.cpp); the shapes are the CPU training's
// attention scores [B, H, S, S]: the R1 pipeline's small teacher (B 16, H 4, S 128), its tiny
// student (H 2), and a longer sequence.
//
// Counters:
//   x_composed  this row's time / the composed ops' time (the median of 9 warm runs, measured once
//               per shape; the composed rows show its noise: about 1)
//   threads     OpenMP threads in use
//
//   ./benchmarks/bench_causal_softmax            (about 10 s on 2 cores)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include <kiln/kiln.hpp>
#include <kiln/nn/attention.hpp>

namespace {

using namespace kiln;

// Forward and backward of one path on fresh leaves; returns the gradient (kept live).
Tensor<float> step(const Tensor<float>& scores, const Tensor<float>& g, bool fused) {
  Tensor<float> x = scores.detach().requires_grad_();
  const double scale = 0.125;
  Tensor<float> y;
  if (fused) {
    y = nn::causal_softmax(x, scale);
  } else {
    const Tensor<bool> mask = nn::causal_mask(x.size(-2), x.size(-1));
    y = softmax(masked_fill(mul(x, scale), mask, -std::numeric_limits<double>::infinity()), -1);
  }
  y.backward(g);
  return x.grad();
}

double median_seconds(const Tensor<float>& scores, const Tensor<float>& g, bool fused) {
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(step(scores, g, fused));  // warm: pages, caches
  std::vector<double> t;
  for (int i = 0; i < 9; ++i) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(step(scores, g, fused));
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(t.begin(), t.begin() + 4, t.end());
  return t[4];
}

void BM_causal_softmax(benchmark::State& state) {
  const std::int64_t B = state.range(0), H = state.range(1), S = state.range(2);
  const bool fused = state.range(3) != 0;
  const Tensor<float> scores = randn<float>({B, H, S, S});
  const Tensor<float> g = randn<float>({B, H, S, S});
  static std::map<std::int64_t, double> composed;  // per shape, measured once
  const std::int64_t key = (B * 1000 + H) * 100000 + S;
  if (!composed.count(key)) composed[key] = median_seconds(scores, g, false);
  for (auto _ : state) benchmark::DoNotOptimize(step(scores, g, fused));
  state.counters["x_composed"] = benchmark::Counter(static_cast<double>(state.iterations()) * composed[key],
                                                    benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["threads"] = cpu::num_threads();
}

// {B, H, S, fused}
BENCHMARK(BM_causal_softmax)
    ->ArgNames({"B", "H", "S", "fused"})
    ->Args({16, 4, 128, 1})
    ->Args({16, 4, 128, 0})
    ->Args({16, 2, 128, 1})
    ->Args({16, 2, 128, 0})
    ->Args({4, 4, 512, 1})
    ->Args({4, 4, 512, 0})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
