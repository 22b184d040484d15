// CUDA elementwise throughput of kiln against a device-to-device copy of the same bytes, on
// tensors of 16384 x 16384 elements (1 GiB in float, 512 MiB in bf16: far beyond the 50 MB L2,
// so every run streams from HBM and no flushing is needed).
//
// Each row: the op, its shape and dtype, the median time of 25 runs (CUDA events on kiln's stream,
// after 3 warm-up runs; the op's output comes from the caching allocator, so allocation is part of
// what is measured, as in real use), the bandwidth it achieves counting the bytes it must read plus
// the bytes it must write (1 GB = 1e9 bytes; a broadcast row is counted once), and the ratio to a
// cudaMemcpyAsync device-to-device copy that moves the same bytes (half of them read, half
// written), measured in the same run. Memory-bound kernels aim at >= 0.85 of the copy.
//
//   ./benchmarks/bench_elementwise_cuda        (about 20 s on an H100, most of it making inputs)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/kiln.hpp>

using namespace kiln;

namespace {

constexpr int warmup_runs = 3, timed_runs = 25;
constexpr std::int64_t rows = 16384, cols = 16384, n = rows * cols;

// Median milliseconds of `f` over timed_runs runs, timed with events on kiln's stream.
double median_ms(const std::function<void()>& f) {
  const cudaStream_t stream = cuda::current_stream(0);
  for (int i = 0; i < warmup_runs; ++i) f();
  cuda::Event start, stop;
  std::vector<double> ms;
  for (int i = 0; i < timed_runs; ++i) {
    start.record(stream);
    f();
    stop.record(stream);
    stop.synchronize();
    ms.push_back(stop.elapsed_since(start));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Two raw device buffers the copy baseline moves bytes between.
struct CopyBuffers {
  Tensor<std::uint8_t> src, dst;
  double ms_for(std::int64_t bytes) const {
    const cudaStream_t stream = cuda::current_stream(0);
    return median_ms([&] {
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice,
                                      stream));
    });
  }
};

void print_header() {
  std::printf("%-34s %-18s %-9s %10s %9s %11s %7s\n", "case", "shape", "dtype", "time_us", "GB/s", "copy_GB/s",
              "x_copy");
}

// Times `f` (which moves `bytes` bytes of reads + writes) and the copy of the same bytes.
void row(const CopyBuffers& copy, const std::string& name, const std::string& shape, const char* dtype,
         double bytes, const std::function<void()>& f) {
  const double ms = median_ms(f);
  const double copy_ms = copy.ms_for(static_cast<std::int64_t>(bytes / 2));
  const double gbps = bytes / (ms * 1e-3) / 1e9, copy_gbps = bytes / (copy_ms * 1e-3) / 1e9;
  std::printf("%-34s %-18s %-9s %10.1f %9.1f %11.1f %7.3f\n", name.c_str(), shape.c_str(), dtype, ms * 1e3, gbps,
              copy_gbps, gbps / copy_gbps);
  std::fflush(stdout);
}

template <class T>
void bench_dtype(const CopyBuffers& copy, const Tensor<float>& a32, const Tensor<float>& b32, const Tensor<float>& c32,
                 const Tensor<float>& r32) {
  const Tensor<T> a = cast<T>(a32), b = cast<T>(b32), c = cast<T>(c32), bias = cast<T>(r32);
  const double e = sizeof(T), elems = static_cast<double>(n);
  const std::string shape = "16384x16384";
  const char* dtype = dtype_name<T>;
  row(copy, "add (contiguous)", shape, dtype, 3 * e * elems, [&] { add(a, b); });
  row(copy, "mul, broadcast row [16384]", shape, dtype, 2 * e * elems + e * cols, [&] { mul(a, bias); });
  row(copy, "exp", shape, dtype, 2 * e * elems, [&] { kiln::exp(a); });
  row(copy, "silu", shape, dtype, 2 * e * elems, [&] { silu(a); });
  row(copy, "swiglu forward", shape, dtype, 3 * e * elems, [&] { swiglu(a, b); });
  row(copy, "swiglu backward (fused)", shape, dtype, 5 * e * elems,
      [&] { detail::swiglu_backward_kernel(c, a, b); });
  row(copy, "silu backward", shape, dtype, 3 * e * elems,
      [&] { detail::unary_backward_kernel(UnaryOp::silu, a, b); });
}

}  // namespace

int main() {
  if (!cuda::available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, L2 %d MB; tensors of %lld elements\n", prop.name, prop.l2CacheSize >> 20,
              static_cast<long long>(n));

  // Inputs made on the host (deterministic) and moved once.
  const Device gpu = Device::cuda(0);
  const Tensor<float> a = to(randn<float>({rows, cols}), gpu), b = to(randn<float>({rows, cols}), gpu);
  const Tensor<float> c = add(a, b), bias = to(randn<float>({cols}), gpu);
  const Tensor<bool> cond = lt(a, 0.0);

  // The largest case moves 5 float tensors: the copy needs half of that in each buffer.
  CopyBuffers copy{Tensor<std::uint8_t>({5 * n * 4 / 2}, gpu), Tensor<std::uint8_t>({5 * n * 4 / 2}, gpu)};

  print_header();
  const double elems = static_cast<double>(n);
  row(copy, "copy (cudaMemcpyAsync D2D)", "1 GiB", "bytes", 2.0 * (1 << 30), [&] {
    KILN_CUDA_CHECK(cudaMemcpyAsync(copy.dst.data(), copy.src.data(), std::size_t(1) << 30, cudaMemcpyDeviceToDevice,
                                    cuda::current_stream(0)));
  });
  bench_dtype<float>(copy, a, b, c, bias);
  bench_dtype<bf16>(copy, a, b, c, bias);
  row(copy, "where (bool cond)", "16384x16384", "float32", 13 * elems, [&] { where(cond, a, b); });
  row(copy, "gt (float -> bool)", "16384x16384", "float32", 9 * elems, [&] { gt(a, b); });
  // Strided: a transposed operand takes the general path (per-element index arithmetic).
  row(copy, "add, one operand transposed", "16384x16384", "float32", 12 * elems,
      [&] { add(transpose(a, 0, 1), b); });
  row(copy, "add, column broadcast [16384, 1]", "16384x16384", "float32", 8 * elems,
      [&] { add(a, view(bias, {cols, 1})); });
  return 0;
}
