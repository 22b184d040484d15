// CUDA throughput of rms_norm (forward, fused backward), in GB/s of essential memory traffic (bytes
// each kernel must read + write, 1 GB = 1e9 B), next to a device-to-device copy of the same number
// of bytes measured in the same run (cudaMemcpyAsync; its GB/s also counts read + write).
// ratio = kernel GB/s / copy GB/s.
//
// Backward rows: "bwd (dx, dw)" is one backward call as the op makes it, the fused kernel (dx and
// the per-block dw partials from one pass over x and g) plus the small kernel that sums the
// partials; its bytes are x and g read, dx written, w read and dw written, and r (8 bytes a row).
// The partials (blocks x D floats, written then read once, mostly in L2) are not counted: they are
// overhead, part of the time. "bwd (dx only)" is the same call without dw, so the difference
// between the two rows' times is what dw costs.
//
// Shapes: [16384, 7168] (buffers over 200 MB, more than 4x the H100's 50 MB L2, so no run finds its
// inputs in cache), and the three norms of `pretrain --config big` (32 x 512 tokens; hidden 768,
// q_lora_rank 384, kv_lora_rank 256), whose operands fit in L2 or nearly: L2 is flushed before
// each of their timed calls (and copies).
//
// CUDA events around each call, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp).
//
//   ./benchmarks/bench_rms_norm_cuda        (a few seconds on an H100)
#include <string>

#include <kiln/kernels/rms_norm/args.hpp>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

template <class T>
void bench_rms_norm(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t D, bool flush_l2) {
  const double s = sizeof(T);
  const auto x = full<T>({rows, D}, convert<T>(0.5), gpu);
  const auto w = full<T>({D}, convert<T>(1.25), gpu);
  const auto g = full<T>({rows, D}, convert<T>(-0.75), gpu);
  Tensor<T> y({rows, D}, gpu), dx({rows, D}, gpu), dw({D}, gpu);
  Tensor<double> rstd({rows}, gpu);
  const std::string shape = str("[", rows, ", ", D, "]");

  // Forward as users call it (fresh output from the caching allocator each call).
  meter.row("rms_norm fwd", shape, dtype_name<T>, s * (2.0 * rows * D + D) + 8.0 * rows,
            [&] { (void)rms_norm(x, w); }, flush_l2);

  // The backward launcher alone (through autograd, leaf accumulation would add a copy of dx).
  const DeviceLaunch on = launch_on("bench", gpu);
  launch_device_kernel("bench", kernels::RmsNormForwardArgs{.launch = on, .dtype = dtype_of<T>, .y = y.data(),
                                                            .rstd = rstd.data(), .x = x.data(), .w = w.data(),
                                                            .rows = rows, .cols = static_cast<int>(D), .eps = 1e-6});
  const kernels::RmsNormBackwardArgs backward{.launch = on, .dtype = dtype_of<T>, .dx = dx.data(), .dw = dw.data(),
                                              .x = x.data(), .w = w.data(), .g = g.data(), .rstd = rstd.data(),
                                              .rows = rows, .cols = static_cast<int>(D)};
  meter.row("rms_norm bwd (dx, dw)", shape, dtype_name<T>, s * (3.0 * rows * D + 2.0 * D) + 8.0 * rows,
            [&] { launch_device_kernel("bench", backward); }, flush_l2);
  kernels::RmsNormBackwardArgs dx_only = backward;
  dx_only.dw = nullptr;
  meter.row("rms_norm bwd (dx only)", shape, dtype_name<T>, s * (3.0 * rows * D + D) + 8.0 * rows,
            [&] { launch_device_kernel("bench", dx_only); }, flush_l2);
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 26, .shape = 22});
  meter.print_header();
  bench_rms_norm<bf16>(meter, 16384, 7168, /*flush_l2=*/false);
  bench_rms_norm<float>(meter, 16384, 7168, /*flush_l2=*/false);
  for (std::int64_t D : {768, 384, 256}) bench_rms_norm<bf16>(meter, 16384, D, /*flush_l2=*/true);
  return 0;
}
