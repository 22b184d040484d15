// CUDA throughput of the multi-tensor AdamW step (plain, and with FP32 master weights), in GB/s of
// essential memory traffic (bytes the kernel must read + write, 1 GB = 1e9 B), next to a
// device-to-device copy of the same number of bytes measured in the same run (cudaMemcpyAsync; its
// GB/s also counts read + write). ratio = kernel GB/s / copy GB/s.
//
// CUDA events around each call, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp). The
// parameters, gradients and moments of a step are over 1 GB together (more than 20x the H100's
// 50 MB L2), so no run finds its inputs in cache.
//
//   ./benchmarks/bench_adamw_cuda        (a few seconds on an H100)
#include <vector>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

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
  bench_adamw<float>(meter, false);
  bench_adamw<bf16>(meter, true);
  return 0;
}
