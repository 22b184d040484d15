// CUDA throughput of rms_norm (forward, fused backward), rope (forward) and the multi-tensor AdamW
// step, in GB/s of essential memory traffic (bytes each kernel must read + write, 1 GB = 1e9 B),
// next to a device-to-device copy of the same number of bytes measured in the same run
// (cudaMemcpyAsync; its GB/s also counts read + write). ratio = kernel GB/s / copy GB/s.
//
// CUDA events around each call, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp). Every
// buffer is over 200 MB (more than 4x the H100's 50 MB L2), so no run finds its inputs in cache.
//
//   ./benchmarks/bench_norm_cuda        (a few seconds on an H100)
#include <string>
#include <vector>

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

void bench_rope(bench::BandwidthBench& meter) {
  const std::int64_t B = 8, S = 4096, H = 128, D = 64;
  const auto x = full<bf16>({B, S, H, D}, bf16(0.5f), gpu);
  const auto positions = arange<std::int64_t>(0, static_cast<double>(S), 1.0, gpu);
  const auto tables = rope_tables<float>(positions, D);
  const double n = static_cast<double>(B * S * H * D);
  const double table_bytes = 2.0 * 4.0 * static_cast<double>(S * D / 2);
  const std::string shape = "[8, 4096, 128, 64]";
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    const std::string l = layout == RopeLayout::half_split ? " half_split" : " interleaved";
    meter.row("rope fwd, tables" + l, shape, "bfloat16", 2.0 * 2.0 * n + table_bytes,
              [&] { (void)rope(x, tables, layout); });
  }
  // From positions: the tables are built on the device in the same call.
  meter.row("rope fwd, positions", shape, "bfloat16", 2.0 * 2.0 * n + 8.0 * S, [&] { (void)rope(x, positions); });
}

template <class T>
void bench_adamw(bench::BandwidthBench& meter, bool master) {
  // 100M parameters in 50 tensors of 2M (one launch for all of them).
  const std::int64_t count = 50, n = 2'000'000;
  std::vector<Tensor<T>> params;
  for (std::int64_t i = 0; i < count; ++i) {
    auto p = full<T>({n}, convert<T>(0.01), gpu);
    p.requires_grad_();
    p.set_grad(full<T>({n}, convert<T>(1e-3), gpu));
    params.push_back(p);
  }
  optim::AdamWOptions o;
  o.master_weights = master;
  optim::AdamW<T> opt(params, o);
  // float: read p, g, m, v; write p, m, v. Master: read master, g, m, v; write master, p, m, v.
  const double s = sizeof(T);
  const double per_element = master ? (4 + s + 8) + (4 + s + 8) : (s + s + 8) + (s + 8);
  meter.row(master ? "AdamW step, FP32 master" : "AdamW step", "100M in 50 tensors", dtype_name<T>,
            per_element * static_cast<double>(count * n), [&] { opt.step(); });
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 26, .shape = 22});
  meter.print_header();
  bench_rms_norm<bf16>(meter);
  bench_rms_norm<float>(meter);
  bench_rope(meter);
  bench_adamw<float>(meter, false);
  bench_adamw<bf16>(meter, true);
  return 0;
}
