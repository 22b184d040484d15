// CUDA throughput of FP8 quantization (kernels/fp8_gemm/quantize.cuh) at the shapes a training
// step quantizes, in GB/s of essential memory traffic next to a device-to-device copy of the same
// bytes measured in the same run (cuda_bench.hpp's BandwidthBench; ratio 1.0 = copy speed).
//
// Bytes counted: the bf16 source read once per call (2 B an element), 1 B an element written per
// tiling, and the scales (4 B per 1×128 tile or 128×128 block).
//   rows            quantize(x, 1x128): fp8_linear's forward A (x) and data-gradient A (dY)
//   transposed      quantize_transposed(x, 1x128): the weight gradient's operands (xᵀ, dYᵀ)
//   rows + transposed, two calls   what fp8_linear ran before 2026-12-05, for each x and dY
//   with_transposed, one read      quantize_with_transposed (rows_both_kernel): what it runs now
//   W, W^T: 2 launches per expert  quantize and quantize_transposed of each w[g]: before 2026-12-05
//   W, W^T: 2 batched launches      quantize_grouped, quantize_grouped_transposed (batched kernel)
//   W, W^T: one read                quantize_grouped_with_transposed: what grouped_fp8_linear runs now
//   dense W, W^T: two calls / one read   fp8_linear's weight, before / now
// Shapes: kiln's big config (16384 tokens a batch, hidden 768, 32768 routed rows with top-2,
// experts [8, 1024, 768] gate|up and [8, 768, 512] down, a [768, 768] projection) and DeepSeek-V3's
// (hidden 7168, a 4096-token micro-batch; experts [8, 4096, 7168], a [7168, 7168] weight). Inputs
// over 50 MB make the L2 irrelevant; the smaller ones are timed with the L2 flushed before each
// call.
//
// CUDA events, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp).
//   ./benchmarks/bench_fp8_quantize_cuda        (about 10 s on an H100)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <kiln/ops/fp8_gemm.hpp>
#include <kiln/ops/grouped_fp8_gemm.hpp>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

std::string shape_of(const Shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void bench_activation(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t cols) {
  Generator gen{static_cast<std::uint64_t>(rows * 31 + cols), 0};
  const Tensor<bf16> x = randn<bf16>({rows, cols}, 0.0, 1.0, gpu, gen);
  const double n = static_cast<double>(rows) * static_cast<double>(cols);
  const double one = 2.0 * n + n + 4.0 * n / 128.0, both = 2.0 * n + 2.0 * n + 8.0 * n / 128.0;
  const bool flush = 2.0 * n < 100e6;
  const std::string shape = shape_of({rows, cols});
  using fp8::Tiling;
  meter.row("rows (1x128)", shape, "bf16", one, [&] { (void)fp8::quantize(x, Tiling::row_1x128); }, flush);
  meter.row("transposed (1x128 of x^T)", shape, "bf16", one,
            [&] { (void)fp8::quantize_transposed(x, Tiling::row_1x128); }, flush);
  const double two = meter.time_us([&] {
    (void)fp8::quantize(x, Tiling::row_1x128);
    (void)fp8::quantize_transposed(x, Tiling::row_1x128);
  }, flush);
  meter.print_row("rows + transposed, two calls", shape, "bf16", two, both, flush);
  const double fused = meter.row("with_transposed, one read", shape, "bf16", both,
                                 [&] { (void)fp8::quantize_with_transposed(x, Tiling::row_1x128); }, flush);
  std::printf("%-30s %-22s one read / two calls: %.2fx faster\n", "", "", two / fused);
}

void bench_grouped_weights(bench::BandwidthBench& meter, std::int64_t G, std::int64_t N, std::int64_t K) {
  Generator gen{static_cast<std::uint64_t>(G * N + K), 0};
  const Tensor<bf16> w = randn<bf16>({G, N, K}, 0.0, 0.02, gpu, gen);
  const double n = static_cast<double>(G * N * K);
  const double one = 3.0 * n + 4.0 * n / 16384.0, both = 4.0 * n + 8.0 * n / 16384.0;
  const std::string shape = shape_of({G, N, K});
  using fp8::Tiling;
  const double per = meter.time_us([&] {
    for (std::int64_t g = 0; g < G; ++g) {
      const Tensor<bf16> wg = squeeze(narrow(w, 0, g, 1), 0);
      (void)fp8::quantize(wg, Tiling::block_128x128);
      (void)fp8::quantize_transposed(wg, Tiling::block_128x128);
    }
  }, true);
  meter.print_row("W, W^T: 2 launches per expert", shape, "bf16", per, both, true);
  const double two = meter.time_us([&] {
    (void)fp8::quantize_grouped(w);
    (void)fp8::quantize_grouped_transposed(w);
  }, true);
  meter.print_row("W, W^T: 2 batched launches", shape, "bf16", two, both, true);
  const double fused = meter.row("W, W^T: one read", shape, "bf16", both,
                                 [&] { (void)fp8::quantize_grouped_with_transposed(w); }, true);
  meter.row("W alone, one batched launch", shape, "bf16", one, [&] { (void)fp8::quantize_grouped(w); }, true);
  std::printf("%-30s %-22s one read / per expert: %.2fx faster\n", "", "", per / fused);
}

void bench_dense_weight(bench::BandwidthBench& meter, std::int64_t N, std::int64_t K) {
  Generator gen{static_cast<std::uint64_t>(N + K), 0};
  const Tensor<bf16> w = randn<bf16>({N, K}, 0.0, 0.02, gpu, gen);
  const double n = static_cast<double>(N * K), both = 4.0 * n + 8.0 * n / 16384.0;
  const std::string shape = shape_of({N, K});
  using fp8::Tiling;
  const double two = meter.time_us([&] {
    (void)fp8::quantize(w, Tiling::block_128x128);
    (void)fp8::quantize_transposed(w, Tiling::block_128x128);
  }, true);
  meter.print_row("W, W^T: two calls", shape, "bf16", two, both, true);
  meter.row("W, W^T: one read", shape, "bf16", both,
            [&] { (void)fp8::quantize_with_transposed(w, Tiling::block_128x128); }, true);
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  // The one-read launches (quantize_with_transposed, the batched expert weights): the default, and
  // what the "one read" and "batched" rows measure whatever the caller's environment says.
  setenv("KILN_FP8_ONE_READ", "on", 1);
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 30, .shape = 22});
  meter.print_header();
  for (const auto& [rows, cols] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {16384, 768}, {32768, 768}, {16384, 1536}, {4096, 7168}, {16384, 7168}})
    bench_activation(meter, rows, cols);
  bench_grouped_weights(meter, 8, 1024, 768);
  bench_grouped_weights(meter, 8, 768, 512);
  bench_grouped_weights(meter, 8, 4096, 7168);
  bench_dense_weight(meter, 768, 768);
  bench_dense_weight(meter, 7168, 7168);
  return 0;
}
