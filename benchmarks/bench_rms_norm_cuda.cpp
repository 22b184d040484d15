// CUDA throughput of rms_norm (forward, fused backward), in GB/s of essential memory traffic (bytes
// each kernel must read + write, 1 GB = 1e9 B), next to a device-to-device copy of the same number
// of bytes measured in the same run (cudaMemcpyAsync; its GB/s also counts read + write).
// ratio = kernel GB/s / copy GB/s.
//
// CUDA events around each call, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp). Every
// buffer is over 200 MB (more than 4x the H100's 50 MB L2), so no run finds its inputs in cache.
//
//   ./benchmarks/bench_rms_norm_cuda        (a few seconds on an H100)
#include <string>

#include <kiln/kernels/rms_norm/args.hpp>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

template <class T>
void bench_rms_norm(bench::BandwidthBench& meter) {
  const std::int64_t rows = 16384, D = 7168;
  const double s = sizeof(T);
  const auto x = full<T>({rows, D}, convert<T>(0.5), gpu);
  const auto w = full<T>({D}, convert<T>(1.25), gpu);
  const auto g = full<T>({rows, D}, convert<T>(-0.75), gpu);
  Tensor<T> y({rows, D}, gpu), dx({rows, D}, gpu), dw({D}, gpu);
  Tensor<double> rstd({rows}, gpu);
  const std::string shape = "[16384, 7168]";

  // Forward as users call it (fresh output from the caching allocator each call).
  meter.row("rms_norm fwd", shape, dtype_name<T>, s * (2.0 * rows * D + D) + 8.0 * rows,
            [&] { (void)rms_norm(x, w); });

  // The fused backward kernel alone (through autograd, leaf accumulation would add a copy of dx).
  const DeviceLaunch on = launch_on("bench", gpu);
  launch_device_kernel("bench", kernels::RmsNormForwardArgs{.launch = on, .dtype = dtype_of<T>, .y = y.data(),
                                                            .rstd = rstd.data(), .x = x.data(), .w = w.data(),
                                                            .rows = rows, .cols = static_cast<int>(D), .eps = 1e-6});
  const kernels::RmsNormBackwardArgs backward{.launch = on, .dtype = dtype_of<T>, .dx = dx.data(), .dw = dw.data(),
                                              .x = x.data(), .w = w.data(), .g = g.data(), .rstd = rstd.data(),
                                              .rows = rows, .cols = static_cast<int>(D)};
  meter.row("rms_norm bwd (dx, dw)", shape, dtype_name<T>, s * (3.0 * rows * D + 2.0 * D) + 8.0 * rows,
            [&] { launch_device_kernel("bench", backward); });
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 26, .shape = 22});
  meter.print_header();
  bench_rms_norm<bf16>(meter);
  bench_rms_norm<float>(meter);
  return 0;
}
