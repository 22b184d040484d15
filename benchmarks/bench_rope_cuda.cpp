// CUDA throughput of rope (forward; from precomputed tables in both layouts, and from positions),
// in GB/s of essential memory traffic (bytes each kernel must read + write, 1 GB = 1e9 B), next to
// a device-to-device copy of the same number of bytes measured in the same run (cudaMemcpyAsync;
// its GB/s also counts read + write). ratio = kernel GB/s / copy GB/s.
//
// CUDA events around each call, 5 warm-up calls, median of 30 (benchmarks/cuda_bench.hpp). Every
// buffer is over 200 MB (more than 4x the H100's 50 MB L2), so no run finds its inputs in cache.
//
//   ./benchmarks/bench_rope_cuda        (a few seconds on an H100)
#include <string>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

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

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 26, .shape = 22});
  meter.print_header();
  bench_rope(meter);
  return 0;
}
