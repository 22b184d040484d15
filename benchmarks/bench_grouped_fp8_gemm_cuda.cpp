// kiln's grouped FP8 GEMM (kiln::fp8::grouped_gemm / grouped_gemm_masked, kernels/grouped_fp8_gemm/:
// A 1×128 tiles, B 128×128 blocks, promotion every 128 of K, bf16 out) against two peers in the
// same process:
//   bf16     kiln's bf16 grouped GEMM (kernels/grouped_gemm/, the Hopper kernel at its default tile
//            width) on the same shapes, operands widened to bf16: what the MoE layer runs today;
//   lt-fp8   cuBLASLt FP8 e4m3 with per-tensor scales (benchmarks/lt_gemm.hpp), one dense GEMM per
//            group, G calls: a yardstick for what the tensor cores give on each group's product
//            (it knows the group sizes on the host, and computes the coarser recipe).
// Cases: DeepGEMM's m-grouped contiguous shapes (4 and 8 groups of 4096 and 8192 rows; N × K =
// 4096 × 7168 and 7168 × 2048) and a masked decode-time shape (16 groups, slots of M_max = 256 rows
// holding 64..256 tokens each; kiln computes only the counted rows, and so do the peers).
//
// Timing (benchmarks/cuda_bench.hpp, Timer::interleaved_median_us): CUDA events around each call,
// the three sides interleaved, L2 flushed before every timed call, 3 warm-up and 10 timed rounds,
// medians. TFLOP/s = 2 · rows · N · K / time over the rows computed; ratio = peer time / kiln time
// (> 1: kiln faster). Errors: kiln's output (f32 and bf16) against the float64 value of the same
// quantized operands (backend/cpu/fp8_gemm.hpp's fp8_gemm_reference) over 6 rows of each group.
// A second table: the experts' weight gradient dW_g = dY_gᵀ · X_g, kiln's k-grouped FP8 GEMM
// (fp8::k_grouped_gemm on operands from fp8::quantize_k_grouped; the Hopper kernel and the plain
// one) against the bf16 grouped weight gradient (kernels/grouped_gemm/, what FP8 training runs by
// default), at the big config's expert shapes (8 experts, 32768 routed rows, gate|up 1024 × 768
// and down 768 × 512) and a DeepSeek-V3-sized one; "kiln+q" adds the two quantizations to the GEMM
// (what a training step pays). Error: the f32 output against kiln's float64 reference.
// Run: ./benchmarks/bench_grouped_fp8_gemm_cuda [--quick]   (about 30 s on an H200)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <kiln/ops/grouped_fp8_gemm.hpp>
#include <kiln/ops/grouped_linear.hpp>
#include <kiln/ops/k_grouped_fp8_gemm.hpp>

#include "cuda_bench.hpp"
#include "lt_gemm.hpp"

namespace {

using kiln::bf16;
using kiln::Device;
using kiln::Tensor;
namespace fp8 = kiln::fp8;
namespace bench = kiln::bench;
const Device gpu = Device::cuda(0);

struct Case {
  const char* name;
  std::int64_t groups, rows;  // contiguous: rows per group; masked: M_max
  std::int64_t n, k;
  bool masked;
};

// Uniform values scaled per row by factors in [0.01, 10] on the GPU: `distinct` host rows repeated
// to `rows` (drawing 500M values on the host would dominate the run; the timing does not care).
Tensor<float> gpu_values(std::int64_t rows, std::int64_t cols, std::int64_t distinct, std::uint64_t seed) {
  kiln::Generator gen{seed, 0};
  distinct = std::min(rows, distinct);
  const Tensor<float> x = kiln::to(kiln::rand<float>({distinct, cols}, -1.0, 1.0, Device::cpu(), gen), gpu);
  const Tensor<float> f = kiln::to(kiln::exp(kiln::rand<float>({distinct, 1}, -4.6, 2.3, Device::cpu(), gen)), gpu);
  const Tensor<float> block = kiln::mul(x, f);
  std::vector<Tensor<float>> parts;
  for (std::int64_t r = 0; r < rows; r += distinct) parts.push_back(kiln::narrow(block, 0, 0, std::min(distinct, rows - r)));
  return parts.size() == 1 ? parts.front() : kiln::cat(parts, 0);
}

// Relative Frobenius error of d's rows (host copy, [rows_total, N]) against the float64 value of the
// quantized product on 6 rows of each group.
template <class Out>
double error_vs_float64(const Tensor<Out>& d, const fp8::QuantizedMatrix& a, const fp8::GroupedWeights& b,
                        const std::vector<kiln::cpu::GroupSpan>& spans) {
  const fp8::QuantizedMatrix ha = fp8::detail::to_host(a);
  const Tensor<kiln::fp8_e4m3> bd = kiln::to(b.data, Device::cpu());
  const Tensor<float> bs = kiln::to(b.scale, Device::cpu());
  const std::vector<Out> got = kiln::to(d, Device::cpu()).to_vector();
  const std::int64_t n = b.rows(), k = b.cols();
  double num = 0, den = 0;
  for (std::size_t g = 0; g < spans.size(); ++g) {
    if (spans[g].count == 0) continue;
    std::vector<std::int64_t> rows;
    for (int i = 0; i < 6; ++i) rows.push_back(i * (spans[g].count - 1) / 5);
    std::vector<double> ref(rows.size() * static_cast<std::size_t>(n));
    kiln::cpu::fp8_gemm_reference(kiln::cpu::rows_from(fp8::detail::cpu_operand(ha), spans[g].start),
                                  kiln::cpu::group_weights(reinterpret_cast<const std::uint8_t*>(bd.data()), bs.data(),
                                                           static_cast<std::int64_t>(g), n, k),
                                  rows, n, k, ref.data());
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (std::int64_t j = 0; j < n; ++j) {
        const double x = static_cast<double>(got[static_cast<std::size_t>((spans[g].start + rows[r]) * n + j)]);
        const double y = ref[r * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)];
        if (!std::isfinite(x)) return INFINITY;
        num += (x - y) * (x - y);
        den += y * y;
      }
  }
  return std::sqrt(num / den);
}

void run_case(bench::Timer& timer, const Case& c) {
  // Rows of each group: contiguous, all `rows`; masked, 64..256 of the M_max = 256 slot.
  std::vector<kiln::cpu::GroupSpan> spans;
  std::vector<std::int64_t> off{0};
  std::vector<std::int32_t> counts;
  for (std::int64_t g = 0; g < c.groups; ++g) {
    const std::int64_t count = c.masked ? 64 + (g * 53) % (c.rows - 63) : c.rows;
    spans.push_back({c.masked ? g * c.rows : off.back(), count});
    off.push_back(off.back() + count);
    counts.push_back(static_cast<std::int32_t>(count));
  }
  const std::int64_t a_rows = c.masked ? c.groups * c.rows : off.back();
  const std::int64_t computed_rows = off.back();
  const Tensor<float> x = gpu_values(a_rows, c.k, 4096, 7);
  const Tensor<float> w = kiln::reshape(gpu_values(c.groups * c.n, c.k, c.groups * c.n, 8), {c.groups, c.n, c.k});
  const fp8::QuantizedMatrix a = fp8::quantize(x, fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(w);
  const Tensor<std::int64_t> offsets = kiln::to(Tensor<std::int64_t>::from_vector(off, {c.groups + 1}), gpu);
  const Tensor<std::int32_t> count_t = kiln::to(Tensor<std::int32_t>::from_vector(counts, {c.groups}), gpu);
  const kiln::Shape d_shape = c.masked ? kiln::Shape{c.groups, c.rows, c.n} : kiln::Shape{a_rows, c.n};
  Tensor<bf16> d(d_shape, gpu);

  // The bf16 peer: the counted rows, contiguous (for masked: the same rows gathered group by group).
  std::vector<Tensor<float>> rows_parts;
  for (const auto& s : spans) rows_parts.push_back(kiln::narrow(x, 0, s.start, s.count));
  const Tensor<bf16> x16 = kiln::cast<bf16>(c.masked ? kiln::cat(rows_parts, 0) : x);
  const Tensor<bf16> w16 = kiln::cast<bf16>(w);
  Tensor<bf16> y16({computed_rows, c.n}, gpu);

  // The cuBLASLt peer: one FP8 GEMM per group on the same bytes (unit per-tensor scales).
  const Tensor<float> one = kiln::ones<float>({1}, gpu);
  std::vector<std::unique_ptr<bench::LtGemm>> lt;
  for (const auto& s : spans) lt.push_back(std::make_unique<bench::LtGemm>(CUDA_R_8F_E4M3, CUDA_R_16BF, s.count, c.n, c.k, one.data(), false));
  const cudaStream_t stream = kiln::cuda::current_stream(0);
  const auto* a_bytes = reinterpret_cast<const std::uint8_t*>(a.data.data());
  const auto* b_bytes = reinterpret_cast<const std::uint8_t*>(b.data.data());

  std::vector<std::function<void()>> sides{
      [&] {
        if (c.masked) {
          fp8::grouped_gemm_masked_out(d, a, b, count_t);
        } else {
          fp8::grouped_gemm_out(d, a, b, offsets);
        }
      },
      [&] {
        kiln::detail::grouped_gemm_launch("bench", kiln::kernels::GroupedGemmKind::forward, y16, x16, Tensor<bf16>(),
                                          w16, offsets, computed_rows, c.groups, c.n, c.k);
      },
      [&] {
        for (std::size_t g = 0; g < spans.size(); ++g)
          lt[g]->run(a_bytes + spans[g].start * c.k, b_bytes + static_cast<std::int64_t>(g) * c.n * c.k,
                     d.data() + spans[g].start * c.n, stream);
      }};
  bool lt_ok = true;
  for (const auto& l : lt) lt_ok = lt_ok && l->ok();
  if (!lt_ok) sides.pop_back();
  const std::vector<double> us = timer.interleaved_median_us(sides, {.warmup = 3, .timed = 10, .flush_l2 = true});
  const double lt_us = lt_ok ? us[2] : NAN;

  // Errors against float64 (after the timing: d now holds the last peer's values, so recompute).
  Tensor<float> d32(d_shape, gpu);
  if (c.masked) {
    fp8::grouped_gemm_masked_out(d, a, b, count_t);
    fp8::grouped_gemm_masked_out(d32, a, b, count_t);
  } else {
    fp8::grouped_gemm_out(d, a, b, offsets);
    fp8::grouped_gemm_out(d32, a, b, offsets);
  }
  const double err32 = error_vs_float64(d32, a, b, spans), err16 = error_vs_float64(d, a, b, spans);

  const double flops = 2.0 * static_cast<double>(computed_rows) * static_cast<double>(c.n) * static_cast<double>(c.k);
  const double tf = flops / us[0] * 1e-6;
  std::printf("%-11s %3lld %6lld %5lld %5lld | %8.1f %8.1f %8.1f | %6.0f %6.0f %6.0f | %6.3f %6.3f | %8.2e %8.2e\n",
              c.name, (long long)c.groups, (long long)c.rows, (long long)c.n, (long long)c.k, us[0], us[1], lt_us, tf,
              flops / us[1] * 1e-6, flops / lt_us * 1e-6, us[1] / us[0], lt_us / us[0], err32, err16);
  std::fflush(stdout);
}

// The experts' weight gradient: G groups of `sizes` rows, dY [R, N], X [R, K] -> dW [G, N, K].
void run_k_grouped_case(bench::Timer& timer, const char* name, const std::vector<std::int64_t>& sizes, std::int64_t n,
                        std::int64_t k) {
  std::vector<std::int64_t> off{0};
  for (std::int64_t s : sizes) off.push_back(off.back() + s);
  const std::int64_t R = off.back(), G = static_cast<std::int64_t>(sizes.size());
  const Tensor<std::int64_t> offsets = kiln::to(Tensor<std::int64_t>::from_vector(off, {G + 1}), gpu);
  const Tensor<bf16> dy = kiln::cast<bf16>(gpu_values(R, n, 4096, 11));
  const Tensor<bf16> x = kiln::cast<bf16>(gpu_values(R, k, 4096, 12));
  const fp8::QuantizeOptions gradient{.amax_floor = 1e-30f};
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(dy, offsets, gradient), b = fp8::quantize_k_grouped(x, offsets);
  Tensor<bf16> dw16;
  const fp8::GroupedGemmOptions plain{.kernel = fp8::GroupedGemmKernel::simt};
  const std::vector<double> us = timer.interleaved_median_us(
      {[&] { (void)fp8::k_grouped_gemm<bf16>(a, b); },
       [&] {
         (void)fp8::k_grouped_gemm<bf16>(fp8::quantize_k_grouped(dy, offsets, gradient),
                                         fp8::quantize_k_grouped(x, offsets));
       },
       [&] { dw16 = kiln::detail::grouped_linear_wgrad("bench", x, dy, offsets, G, n); },
       [&] { (void)fp8::k_grouped_gemm<bf16>(a, b, plain); }},
      {.warmup = 2, .timed = 5, .flush_l2 = true});
  std::string err = "-";  // not checked: the float64 reference would take minutes on the host
  if (static_cast<double>(R) * static_cast<double>(n) * static_cast<double>(k) <= 2e10) {
    const std::vector<float> got = kiln::to(fp8::k_grouped_gemm<float>(a, b), Device::cpu()).to_vector();
    const std::vector<double> ref = fp8::k_grouped_gemm_reference(a, b).to_vector();
    double num = 0, den = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      num += (got[i] - ref[i]) * (got[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    char text[32];
    std::snprintf(text, sizeof text, "%8.2e", std::sqrt(num / den));
    err = text;
  }
  const double flops = 2.0 * static_cast<double>(R) * static_cast<double>(n) * static_cast<double>(k);
  std::printf("%-14s %2lld %6lld %5lld %5lld | %8.1f %8.1f %8.1f %8.1f | %6.1f %6.1f %6.1f | %6.3f %6.3f | %8s\n",
              name, (long long)G, (long long)R, (long long)n, (long long)k, us[0], us[1], us[2], us[3],
              flops / us[0] * 1e-6, flops / us[2] * 1e-6, flops / us[3] * 1e-6, us[2] / us[0], us[2] / us[1],
              err.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (!bench::open_device()) return 0;
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::vector<Case> cases;
  for (auto [g, m] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4, 8192}, {8, 4096}, {4, 4096}, {8, 8192}})
    for (auto [n, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4096, 7168}, {7168, 2048}})
      cases.push_back({"contiguous", g, m, n, k, false});
  for (auto [n, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4096, 7168}, {7168, 2048}})
    cases.push_back({"masked", 16, 256, n, k, true});
  if (quick) cases = {cases[1], cases.back()};
  std::printf("\n%-11s %3s %6s %5s %5s | %8s %8s %8s | %6s %6s %6s | %6s %6s | %8s %8s\n", "layout", "G", "rows", "N",
              "K", "kiln us", "bf16 us", "lt8 us", "kilnTF", "bf16TF", "lt8TF", "x bf16", "x lt8", "err f32",
              "err bf16");
  std::printf("(rows: per group, contiguous; M_max, masked; x = peer time / kiln time)\n");
  bench::Timer timer;
  for (const Case& c : cases) {
    try {
      run_case(timer, c);
    } catch (const std::exception& e) {
      std::printf("%-11s %3lld %6lld %5lld %5lld | FAILED: %s\n", c.name, (long long)c.groups, (long long)c.rows,
                  (long long)c.n, (long long)c.k, e.what());
    }
  }
  std::printf("\nThe experts' weight gradient dW_g = dY_gT X_g (k-grouped: the groups split the reduction)\n");
  std::printf("%-14s %2s %6s %5s %5s | %8s %8s %8s %8s | %6s %6s %6s | %6s %6s | %8s\n", "case", "G", "rows", "N", "K",
              "kiln us", "kiln+q us", "bf16 us", "plain us", "kilnTF", "bf16TF", "plainTF", "x bf16", "x+q",
              "err f32");
  std::printf("(rows: all groups together; kiln: the automatic choice (Hopper here), plain: the CUDA-core kernel;\n"
              " x = bf16 time / kiln time, x+q: kiln with both quantizations)\n");
  // The big config's routed experts: 16384 tokens x top-2 over 8 experts, ragged.
  const std::vector<std::int64_t> big{5200, 3100, 4600, 3900, 4100, 2800, 4500, 4568};
  try {
    run_k_grouped_case(timer, "big gate|up", big, 1024, 768);
    run_k_grouped_case(timer, "big down", big, 768, 512);
    if (!quick) run_k_grouped_case(timer, "dsv3 4 x 2048", {2048, 2048, 2048, 2048}, 4096, 7168);
  } catch (const std::exception& e) {
    std::printf("k-grouped: FAILED: %s\n", e.what());
  }
  return 0;
}
