// kiln's FP8 GEMM (DeepSeek-V3 fine-grained scaling) against cuBLASLt, in one process, on the same
// e4m3 inputs:
//   kiln     kiln::fp8::gemm: A 1×128 tiles, B 128×128 blocks, promotion every 128 of K, bf16 out;
//   lt-fp8   cublasLtMatmul with FP8 e4m3 operands and per-tensor scales (TN), bf16 out — the
//            coarser recipe NVIDIA's library computes;
//   lt-bf16  cublasLtMatmul on the same values widened to bf16 (exact), bf16 out.
// Every scale is 1, so the three compute the same function and their results can be compared with
// one float64 reference (fine-grained scales themselves are tested in tests/kernels/test_fp8_gemm_cuda.cpp).
//
// Timing (benchmarks/cuda_bench.hpp, Timer::graph_call_us): each side's call is captured 20 times
// into a CUDA graph, with the operands rotated over enough copies to exceed twice the L2 (so the
// weights come from HBM, as in a real layer); the graph is replayed after a warm-up, 15 times, with
// events around each replay; the median / 20 is the time of one call. Graph replay removes host
// launch cost from both sides; the stream column times kiln's plain calls back to back, 20 per
// batch (Timer::stream_call_us; host cost included). TFLOP/s = 2·M·N·K / time; GB/s counts
// A + B + D bytes once; ratio = lt-fp8 time / kiln time (> 1: kiln faster). Geometric means per M.
//
// Errors: relative Frobenius error against a float64 product of the same e4m3 values over a subset
// of rows, with FP32 outputs: kiln with promotion every 128 (default) and every 64 of K, kiln
// without (the whole K in the tensor cores' accumulator), lt-fp8 (its default, and with
// CUBLASLT_MATMUL_DESC_FAST_ACCUM), lt-bf16.
// Run: ./benchmarks/bench_fp8_gemm_cuda [--quick | --shape M,N,K]   (about a minute on an H100;
// --shape: that one problem, e.g. under Nsight Compute: scripts/gpu_pending.sh profile-fp8-gemm)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <kiln/ops/fp8_gemm.hpp>

#include "cuda_bench.hpp"
#include "lt_gemm.hpp"

namespace {

using kiln::bf16;
using kiln::Device;
using kiln::fp8_e4m3;
using kiln::Tensor;
namespace fp8 = kiln::fp8;

// Timing (cuda_bench.hpp, Timer::graph_call_us / stream_call_us): 3 single warm-up calls, batches
// of 20 calls, 1 untimed and 15 timed batches, median batch time / 20.
const kiln::bench::BatchRuns kBatch{.warmup_calls = 3, .calls = 20, .batches = {.warmup = 1, .timed = 15}};

struct Inputs {
  std::vector<fp8::QuantizedMatrix> a, b;  // rotation copies on the GPU
  std::vector<Tensor<bf16>> a16, b16;       // the same values as bf16
  Tensor<fp8_e4m3> a_host, b_host;
  Tensor<float> one;                        // a device scalar 1.0 for cuBLASLt's scale pointers
};

fp8::QuantizedMatrix with_unit_scales(const Tensor<fp8_e4m3>& data, fp8::Tiling tiling) {
  const std::int64_t rows = data.size(0), kb = (data.size(1) + 127) / 128;
  fp8::QuantizedMatrix q;
  q.data = data;
  q.tiling = tiling;
  if (tiling == fp8::Tiling::row_1x128) {
    const std::int64_t ld = (rows + 3) / 4 * 4;
    q.scale = kiln::narrow(kiln::transpose(kiln::ones<float>({kb, ld}, data.device()), 0, 1), 0, 0, rows);
  } else {
    q.scale = kiln::ones<float>({(rows + 127) / 128, kb}, data.device());
  }
  return q;
}

// Rows of the float64 reference: spread over M.
std::vector<std::int64_t> sample_rows(std::int64_t m) {
  const std::int64_t count = std::min<std::int64_t>(m, 16);
  std::vector<std::int64_t> rows;
  for (std::int64_t i = 0; i < count; ++i) rows.push_back(i * m / count);
  return rows;
}

// Float64 A·Bᵀ on the sampled rows.
std::vector<double> reference_rows(const Inputs& in, const std::vector<std::int64_t>& rows) {
  const std::int64_t n = in.b_host.size(0), k = in.b_host.size(1);
  std::vector<double> b(static_cast<std::size_t>(n * k));
  const fp8_e4m3* bp = in.b_host.data();
  for (std::int64_t i = 0; i < n * k; ++i) b[i] = static_cast<double>(static_cast<float>(bp[i]));
  std::vector<double> out(rows.size() * static_cast<std::size_t>(n));
  for (std::size_t r = 0; r < rows.size(); ++r) {
    std::vector<double> a(static_cast<std::size_t>(k));
    const fp8_e4m3* ap = in.a_host.data() + rows[r] * k;
    for (std::int64_t j = 0; j < k; ++j) a[j] = static_cast<double>(static_cast<float>(ap[j]));
#pragma omp parallel for schedule(static)
    for (std::int64_t col = 0; col < n; ++col) {
      double s = 0;
      const double* bc = b.data() + col * k;
      for (std::int64_t j = 0; j < k; ++j) s += a[j] * bc[j];
      out[r * n + col] = s;
    }
  }
  return out;
}

double relative_error(const float* d, std::int64_t ldd, const std::vector<std::int64_t>& rows,
                      const std::vector<double>& ref, std::int64_t n) {
  double num = 0, den = 0;
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      const double x = d[rows[r] * ldd + c], y = ref[r * n + c];
      if (!std::isfinite(x)) return INFINITY;
      num += (x - y) * (x - y);
      den += y * y;
    }
  return std::sqrt(num / den);
}

struct Row {
  std::int64_t m, n, k;
  double kiln_us, kiln_stream_us, lt8_us, lt16_us;
  double err_kiln, err_kiln64, err_nopromote, err_lt8, err_lt8_fast, err_lt16;
};

Row run_case(std::int64_t m, std::int64_t n, std::int64_t k, bool errors) {
  const Device gpu = Device::cuda(0);
  cudaStream_t stream = kiln::cuda::current_stream(0);
  Inputs in;
  kiln::Generator gen(1234 + m + n + k);
  in.a_host = kiln::randn<fp8_e4m3>({m, k}, 0.0, 1.0, Device::cpu(), gen);
  in.b_host = kiln::randn<fp8_e4m3>({n, k}, 0.0, 1.0, Device::cpu(), gen);
  const double operand_bytes = static_cast<double>(m * k + n * k);
  const int copies = static_cast<int>(std::clamp(std::ceil(150e6 / operand_bytes), 1.0, 8.0));
  for (int c = 0; c < copies; ++c) {
    const Tensor<fp8_e4m3> a = kiln::to(in.a_host, gpu), b = kiln::to(in.b_host, gpu);
    in.a.push_back(with_unit_scales(a, fp8::Tiling::row_1x128));
    in.b.push_back(with_unit_scales(b, fp8::Tiling::block_128x128));
    in.a16.push_back(kiln::cast<bf16>(a));
    in.b16.push_back(kiln::cast<bf16>(b));
  }
  in.one = kiln::ones<float>({1}, gpu);
  Tensor<bf16> d16({m, n}, gpu);

  Row row{m, n, k, 0, 0, 0, 0, NAN, NAN, NAN, NAN, NAN, NAN};
  kiln::bench::Timer timer;
  const auto kiln_call = [&](int i) { (void)fp8::gemm<bf16>(in.a[i % copies], in.b[i % copies]); };
  row.kiln_us = timer.graph_call_us(kiln_call, kBatch);
  row.kiln_stream_us = timer.stream_call_us(kiln_call, kBatch);
  kiln::bench::LtGemm lt8(CUDA_R_8F_E4M3, CUDA_R_16BF, m, n, k, in.one.data(), false);
  if (lt8.ok())
    row.lt8_us = timer.graph_call_us(
        [&](int i) { lt8.run(in.a[i % copies].data.data(), in.b[i % copies].data.data(), d16.data(), stream); },
        kBatch);
  kiln::bench::LtGemm lt16(CUDA_R_16BF, CUDA_R_16BF, m, n, k, in.one.data(), false);
  if (lt16.ok())
    row.lt16_us = timer.graph_call_us(
        [&](int i) { lt16.run(in.a16[i % copies].data(), in.b16[i % copies].data(), d16.data(), stream); }, kBatch);

  if (errors) {
    const std::vector<std::int64_t> rows = sample_rows(m);
    const std::vector<double> ref = reference_rows(in, rows);
    const auto err_of = [&](const Tensor<float>& d) {
      const Tensor<float> h = kiln::to(d, Device::cpu());
      return relative_error(h.data(), n, rows, ref, n);
    };
    row.err_kiln = err_of(fp8::gemm<float>(in.a[0], in.b[0]));
    fp8::GemmOptions interval64;
    interval64.promotion_interval = 64;
    row.err_kiln64 = err_of(fp8::gemm<float>(in.a[0], in.b[0], interval64));
    fp8::GemmOptions no_promotion;
    no_promotion.promote = false;
    no_promotion.kernel = fp8::GemmKernel::hopper;
    row.err_nopromote = err_of(fp8::gemm<float>(in.a[0], in.b[0], no_promotion));
    Tensor<float> d32({m, n}, gpu);
    for (int fast = 0; fast < 2; ++fast) {
      kiln::bench::LtGemm lt(CUDA_R_8F_E4M3, CUDA_R_32F, m, n, k, in.one.data(), fast == 1);
      if (!lt.ok()) continue;
      lt.run(in.a[0].data.data(), in.b[0].data.data(), d32.data(), stream);
      (fast ? row.err_lt8_fast : row.err_lt8) = err_of(d32);
    }
    kiln::bench::LtGemm lt16f(CUDA_R_16BF, CUDA_R_32F, m, n, k, in.one.data(), false);
    if (lt16f.ok()) {
      lt16f.run(in.a16[0].data(), in.b16[0].data(), d32.data(), stream);
      row.err_lt16 = err_of(d32);
    }
  }
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  if (!kiln::cuda::available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::array<long long, 3> one{0, 0, 0};
  if (argc > 2 && std::strcmp(argv[1], "--shape") == 0 &&
      (std::sscanf(argv[2], "%lld,%lld,%lld", &one[0], &one[1], &one[2]) != 3 || one[0] < 1 || one[1] < 16 ||
       one[2] < 16 || one[1] % 16 != 0 || one[2] % 16 != 0)) {
    std::printf("--shape takes M,N,K with M >= 1 and N, K positive multiples of 16, got %s\n", argv[2]);
    return 2;
  }
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const std::vector<std::pair<std::int64_t, std::int64_t>> nk = {{2112, 7168}, {24576, 1536}, {32768, 512},
                                                                  {7168, 16384}, {4096, 7168},  {7168, 2048}};
  std::vector<std::array<std::int64_t, 3>> shapes;
  for (std::int64_t m : {64, 128, 4096})
    for (auto [n, k] : nk) shapes.push_back({m, n, k});
  shapes.push_back({8192, 8192, 8192});
  if (quick) shapes = {{128, 7168, 2048}, {4096, 7168, 16384}};
  if (one[0] > 0) shapes = {{one[0], one[1], one[2]}};

  std::printf("\n%6s %6s %6s | %9s %9s %9s %9s | %8s %8s %8s | %7s %6s | %9s %9s %9s %9s %9s %9s\n", "M", "N", "K",
              "kiln us", "stream us", "lt8 us", "lt16 us", "kiln TF", "lt8 TF", "lt16 TF", "kilnGB/s", "ratio",
              "err kiln", "kiln i64", "no-promo", "lt8", "lt8 fast", "lt16");
  double log_sum[3] = {0, 0, 0};
  int count[3] = {0, 0, 0};
  for (const auto& s : shapes) {
    const std::int64_t m = s[0], n = s[1], k = s[2];
    Row r;
    try {
      r = run_case(m, n, k, true);
    } catch (const std::exception& e) {
      std::printf("%6lld %6lld %6lld | FAILED: %s\n", (long long)m, (long long)n, (long long)k, e.what());
      continue;
    }
    const double flops = 2.0 * m * n * k;
    const double bytes = static_cast<double>(m * k + n * k + 2 * m * n);
    const double ratio = r.lt8_us / r.kiln_us;
    const int group = m == 64 ? 0 : m == 128 ? 1 : m == 4096 ? 2 : -1;
    if (group >= 0 && std::isfinite(ratio)) {
      log_sum[group] += std::log(ratio);
      ++count[group];
    }
    std::printf("%6lld %6lld %6lld | %9.1f %9.1f %9.1f %9.1f | %8.0f %8.0f %8.0f | %7.0f %6.3f | %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e\n",
                (long long)m, (long long)n, (long long)k, r.kiln_us, r.kiln_stream_us, r.lt8_us, r.lt16_us,
                flops / r.kiln_us * 1e-6, flops / r.lt8_us * 1e-6, flops / r.lt16_us * 1e-6, bytes / r.kiln_us * 1e-3,
                ratio, r.err_kiln, r.err_kiln64, r.err_nopromote, r.err_lt8, r.err_lt8_fast, r.err_lt16);
    std::fflush(stdout);
  }
  const char* names[3] = {"M=64", "M=128", "M=4096"};
  std::printf("\ngeometric mean of lt8 time / kiln time:");
  for (int g = 0; g < 3; ++g)
    if (count[g]) std::printf("  %s %.3f", names[g], std::exp(log_sum[g] / count[g]));
  std::printf("\n");
  return 0;
}
