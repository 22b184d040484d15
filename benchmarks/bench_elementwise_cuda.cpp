// CUDA elementwise throughput of kiln against a device-to-device copy of the same bytes, on
// tensors of 16384 x 16384 elements (1 GiB in float, 512 MiB in bf16: far beyond the 50 MB L2,
// so every run streams from HBM and no flushing is needed).
//
// Each row: the op, its shape and dtype, the median time of 25 runs (CUDA events on kiln's stream,
// after 3 warm-up runs, benchmarks/cuda_bench.hpp; the op's output comes from the caching allocator, so allocation is part of
// what is measured, as in real use), the bandwidth it achieves counting the bytes it must read plus
// the bytes it must write (1 GB = 1e9 bytes; a broadcast row is counted once), and the ratio to a
// cudaMemcpyAsync device-to-device copy that moves the same bytes (half of them read, half
// written), measured in the same run. Memory-bound kernels aim at >= 0.85 of the copy.
//
//   ./benchmarks/bench_elementwise_cuda        (about 20 s on an H100, most of it making inputs)
#include <cstdio>
#include <string>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

constexpr std::int64_t rows = 16384, cols = 16384, n = rows * cols;

template <class T>
void bench_dtype(bench::BandwidthBench& meter, const Tensor<float>& a32, const Tensor<float>& b32,
                 const Tensor<float>& c32, const Tensor<float>& r32) {
  const Tensor<T> a = cast<T>(a32), b = cast<T>(b32), c = cast<T>(c32), bias = cast<T>(r32);
  const double e = sizeof(T), elems = static_cast<double>(n);
  const std::string shape = "16384x16384";
  const char* dtype = dtype_name<T>;
  meter.row("add (contiguous)", shape, dtype, 3 * e * elems, [&] { add(a, b); });
  meter.row("mul, broadcast row [16384]", shape, dtype, 2 * e * elems + e * cols, [&] { mul(a, bias); });
  meter.row("exp", shape, dtype, 2 * e * elems, [&] { kiln::exp(a); });
  meter.row("silu", shape, dtype, 2 * e * elems, [&] { silu(a); });
  meter.row("swiglu forward", shape, dtype, 3 * e * elems, [&] { swiglu(a, b); });
  meter.row("swiglu backward (fused)", shape, dtype, 5 * e * elems,
      [&] { detail::swiglu_backward_kernel(c, a, b); });
  meter.row("silu backward", shape, dtype, 3 * e * elems,
      [&] { detail::unary_backward_kernel(UnaryOp::silu, a, b); });
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  std::printf("tensors of %lld elements\n", static_cast<long long>(n));

  // Inputs made on the host (deterministic) and moved once.
  const Device gpu = Device::cuda(0);
  const Tensor<float> a = to(randn<float>({rows, cols}), gpu), b = to(randn<float>({rows, cols}), gpu);
  const Tensor<float> c = add(a, b), bias = to(randn<float>({cols}), gpu);
  const Tensor<bool> cond = lt(a, 0.0);

  bench::BandwidthBench meter({.warmup = 3, .timed = 25}, {.name = 34, .shape = 18});
  meter.copy().reserve(5.0 * n * 4);  // the largest case moves 5 float tensors

  meter.print_header();
  const double elems = static_cast<double>(n);
  meter.row("copy (cudaMemcpyAsync D2D)", "1 GiB", "bytes", 2.0 * (1 << 30),
            [&] { meter.copy().enqueue(2.0 * (1 << 30)); });
  bench_dtype<float>(meter, a, b, c, bias);
  bench_dtype<bf16>(meter, a, b, c, bias);
  meter.row("where (bool cond)", "16384x16384", "float32", 13 * elems, [&] { where(cond, a, b); });
  meter.row("gt (float -> bool)", "16384x16384", "float32", 9 * elems, [&] { gt(a, b); });
  // Strided: a transposed operand takes the general path (per-element index arithmetic).
  meter.row("add, one operand transposed", "16384x16384", "float32", 12 * elems,
      [&] { add(transpose(a, 0, 1), b); });
  meter.row("add, column broadcast [16384, 1]", "16384x16384", "float32", 8 * elems,
      [&] { add(a, view(bias, {cols, 1})); });
  // Training's layouts (the big config's MoE layer; 2026-12-05, H100, Nsight Compute: 169 µs
  // and 115 µs in a step before their kernels' changes). swiglu's backward on the gate and up
  // halves of one [32768, 1024] projection (row-strided views: the rows path); the sum over 12
  // heads of MLA's rope key gradient, a [32, 12, 512, 32] view of a [.., 96] tensor (a short
  // column reduction).
  {
    const Tensor<bf16> gu = cast<bf16>(narrow(reshape(a, {16384 * 16384 / 1024, 1024}), 0, 0, 32768));
    const Tensor<bf16> dy = cast<bf16>(narrow(reshape(b, {16384 * 16384 / 512, 512}), 0, 0, 32768));
    const auto halves = chunk(gu, 2, -1);
    meter.row("swiglu backward, halves of [32768, 1024]", "32768x512", "bfloat16", 5.0 * 2 * 32768 * 512,
        [&] { detail::swiglu_backward_kernel(dy, halves[0], halves[1]); });
    const Tensor<bf16> k = cast<bf16>(narrow(reshape(a, {-1}), 0, 0, 32 * 12 * 512 * 96));
    const Tensor<bf16> k_pe = narrow(reshape(k, {32, 12, 512, 96}), 3, 64, 32);
    meter.row("sum over 12 heads of [32, 12, 512, 32]", "view of [..,96]", "bfloat16",
        2.0 * (32 * 12 * 512 * 32 + 32 * 512 * 32), [&] { sum(k_pe, std::vector<std::int64_t>{1}, true); });
  }
  return 0;
}
