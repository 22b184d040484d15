// CUDA throughput of reductions (sum), softmax / log_softmax (forward and backward) and the fused
// cross-entropy (forward, backward, and both through autograd), in GB/s of essential memory
// traffic (bytes each operation must read + write, 1 GB = 1e9 B), next to a device-to-device copy
// of the same number of bytes measured in the same run (cudaMemcpyAsync; its GB/s also counts
// read + write). ratio = op GB/s / copy GB/s; the target is >= 0.85.
//
// Essential traffic: sum reads its input once; softmax forward reads x and writes y, backward reads
// g and y and writes gx (each kernel reads its rows twice, the second time from L2, which is not
// counted); cross-entropy forward reads the logits once (plus 8 B per target and 24 B per row of
// statistics and losses), backward reads the logits and writes their gradient.
//
// CUDA events around each call, 3 warm-up calls, median of 20 (benchmarks/cuda_bench.hpp). Every input is over 500 MB (more
// than 10x the H100's 50 MB L2), so no run finds its inputs in cache. Ops run as users call them
// (a fresh output from the caching allocator each call); the backward rows call the kernel alone.
// cross_entropy's forward includes its one stream synchronisation (the target range check).
//
//   ./benchmarks/bench_reduce_cuda        (about 20 s on an H100, most of it making random inputs)
#include <string>

#include <kiln/kernels/cross_entropy/args.hpp>
#include <kiln/kernels/softmax/args.hpp>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

void bench_sum(bench::BandwidthBench& meter) {
  const std::int64_t rows = 8192, cols = 32768;
  const auto x = randn<float>({rows, cols}, 0.0, 1.0, gpu);
  const double in = 4.0 * static_cast<double>(rows * cols);
  const std::string shape = "[8192, 32768]";
  meter.row("sum over the last dim", shape, "float32", in + 4.0 * rows, [&] { (void)sum(x, {1}); });
  meter.row("sum over dim 0", shape, "float32", in + 4.0 * cols, [&] { (void)sum(x, {0}); });
  meter.row("sum over all", shape, "float32", in + 4.0, [&] { (void)sum(x); });
  meter.row("amax over the last dim", shape, "float32", in + 4.0 * rows, [&] { (void)amax(x, {1}); });
  meter.row("argmax over the last dim", shape, "float32", in + 8.0 * rows, [&] { (void)argmax(x, 1); });
}

template <class T>
void bench_softmax(bench::BandwidthBench& meter) {
  const std::int64_t rows = 8192, cols = 32768;
  const double s = sizeof(T), n = static_cast<double>(rows * cols);
  const auto x = randn<T>({rows, cols}, 0.0, 2.0, gpu);
  const auto g = randn<T>({rows, cols}, 0.0, 1.0, gpu);
  const std::string shape = "[8192, 32768]";
  for (bool log : {false, true}) {
    const std::string name = log ? "log_softmax" : "softmax";
    meter.row(name + " fwd", shape, dtype_name<T>, 2.0 * s * n,
              [&] { (void)(log ? log_softmax(x, -1) : softmax(x, -1)); });
    const Tensor<T> y = log ? log_softmax(x, -1) : softmax(x, -1);
    Tensor<T> gx({rows, cols}, gpu);
    const kernels::SoftmaxBackwardArgs backward{
        .launch = launch_on("bench", gpu), .gx = kernel_view(gx), .g = kernel_view(g), .y = kernel_view(y), .dim = 1, .log = log};
    meter.row(name + " bwd (kernel)", shape, dtype_name<T>, 3.0 * s * n,
              [&] { launch_device_kernel("bench", backward); });
  }
}

void bench_cross_entropy(bench::BandwidthBench& meter) {
  using T = bf16;
  const std::int64_t rows = 16384, classes = 32000;
  const double s = sizeof(T), n = static_cast<double>(rows * classes);
  const auto x = randn<T>({rows, classes}, 0.0, 2.0, gpu);
  auto t = randint<std::int64_t>(0, classes, {rows});
  for (std::int64_t i = 0; i < rows; i += 10) t.data()[i] = -100;  // some ignored rows, as with padding
  const auto targets = to(t, gpu);
  const std::string shape = "[16384, 32000]";
  const double per_row = 8.0 + 24.0;

  meter.row("cross_entropy fwd (mean)", shape, "bfloat16", s * n + per_row * rows,
            [&] { (void)cross_entropy(x, targets); });

  // The backward kernel alone, from statistics the forward kernel leaves.
  Tensor<T> out(Shape{}, gpu), gx({rows, classes}, gpu);
  Tensor<double> stats({rows, 2}, gpu), losses({rows}, gpu), counted(Shape{}, gpu);
  const auto first_bad = full<std::int64_t>({}, rows, gpu);
  const DeviceLaunch on = launch_on("bench", gpu);
  launch_device_kernel("bench", kernels::CrossEntropyForwardArgs{.launch = on,
                                                                 .logits = kernel_view(x),
                                                                 .targets = targets.data(),
                                                                 .ignore_index = -100,
                                                                 .stats = stats.data(),
                                                                 .loss_rows = losses.data(),
                                                                 .total = out.data(),
                                                                 .counted = counted.data(),
                                                                 .mean = true,
                                                                 .first_bad = first_bad.data()});
  const auto one = full<T>({}, convert<T>(1.0), gpu);
  const kernels::CrossEntropyBackwardArgs backward{.launch = on,
                                                   .gx = kernel_view(gx),
                                                   .logits = kernel_view(x),
                                                   .targets = targets.data(),
                                                   .ignore_index = -100,
                                                   .stats = stats.data(),
                                                   .g = one.data(),
                                                   .per_row_g = false,
                                                   .counted = counted.data()};
  meter.row("cross_entropy bwd (kernel)", shape, "bfloat16", 2.0 * s * n + 16.0 * rows,
            [&] { launch_device_kernel("bench", backward); });

  // Forward and backward as a training step runs them.
  auto leaf = x.detach().requires_grad_();
  meter.row("cross_entropy fwd+bwd (autograd)", shape, "bfloat16", 3.0 * s * n + (per_row + 16.0) * rows, [&] {
    leaf.zero_grad();
    cross_entropy(leaf, targets).backward();
  });
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 3, .timed = 20}, {.name = 32, .shape = 16});
  meter.print_header();
  bench_sum(meter);
  bench_softmax<float>(meter);
  bench_softmax<bf16>(meter);
  bench_cross_entropy(meter);
  return 0;
}
