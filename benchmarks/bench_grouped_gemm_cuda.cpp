// The grouped GEMM (kernels/grouped_gemm/, through kiln::grouped_linear and its backward kernels)
// against cuBLASLt running the same per-group GEMMs one by one (kiln::matmul on each group's rows,
// which calls cublasLtMatmul with a cached plan: bench_matmul_cuda measures it within 2% of a raw
// call), in the same process, bf16.
//
// The peer knows every group's size on the host; the grouped kernels read them on the device (no
// synchronisation), which is what lets the MoE layer run without a host round trip. Cases: kiln's
// big config (8 experts, 32768 routes split unevenly, GEMM1 N 1024 × K 768 and GEMM2 768 × 512)
// and DeepSeek-V3's expert shapes (N × K = 4096 × 7168 and 7168 × 2048) with 8 groups of about
// 4096 rows and 32 of about 512. Group sizes: a fixed uneven split (±40% around the mean).
// FLOPs 2·R·N·K for each of forward (y = x·W_gᵀ), dgrad (dx = dy·W_g) and wgrad (dW_g = dy_gᵀ·x_g).
//
// kiln runs twice in the same rounds: the plain mma.sync kernel and, on an sm_90 GPU, the Hopper
// kernel (grouped_gemm_hopper.cuh) at both of its tile widths, 128 and 256 columns.
//
// Timing (benchmarks/cuda_bench.hpp, Timer::interleaved_median_us): CUDA events around each call,
// the two sides interleaved, L2 flushed before every timed call, 3 warm-up and 15 timed calls,
// medians. ratio = peer time / kiln time (> 1: kiln faster). The last columns are kiln's largest
// errors relative to the peer's output (max |kiln − peer| / max |peer|).
// Run: ./benchmarks/bench_grouped_gemm_cuda (about 20 s on an H200).
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <kiln/ops/grouped_linear.hpp>

#include "cuda_bench.hpp"

namespace {

using kiln::bf16;
using kiln::Tensor;
namespace bench = kiln::bench;

const kiln::Device gpu = kiln::Device::cuda(0);

struct Case {
  const char* name;
  std::int64_t groups, rows_per_group, n, k;
};

std::vector<std::int64_t> uneven_sizes(std::int64_t groups, std::int64_t mean) {
  std::vector<std::int64_t> sizes;
  for (std::int64_t g = 0; g < groups; ++g) {
    const double f = 0.6 + 0.8 * static_cast<double>((g * 5) % groups) / static_cast<double>(groups > 1 ? groups - 1 : 1);
    sizes.push_back(static_cast<std::int64_t>(f * static_cast<double>(mean)));
  }
  return sizes;
}

double max_relative(const Tensor<bf16>& a, const Tensor<bf16>& b) {
  const std::vector<bf16> x = kiln::to(a, kiln::Device::cpu()).to_vector(), y = kiln::to(b, kiln::Device::cpu()).to_vector();
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(x[i]) - static_cast<double>(y[i])));
    scale = std::max(scale, std::abs(static_cast<double>(y[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

Tensor<bf16> random_on_gpu(const kiln::Shape& shape) { return kiln::to(kiln::cast<bf16>(kiln::randn<float>(shape)), gpu); }

void run_case(bench::Timer& timer, const Case& c) {
  const std::vector<std::int64_t> sizes = uneven_sizes(c.groups, c.rows_per_group);
  std::vector<std::int64_t> off{0};
  for (auto s : sizes) off.push_back(off.back() + s);
  const std::int64_t R = off.back();
  const Tensor<std::int64_t> offsets = kiln::to(Tensor<std::int64_t>::from_vector(off, {c.groups + 1}), gpu);
  const Tensor<bf16> x = random_on_gpu({R, c.k}), w = random_on_gpu({c.groups, c.n, c.k}), dy = random_on_gpu({R, c.n});
  std::vector<Tensor<bf16>> xs, dys, ws;
  for (std::int64_t g = 0; g < c.groups; ++g) {
    xs.push_back(kiln::narrow(x, 0, off[static_cast<std::size_t>(g)], sizes[static_cast<std::size_t>(g)]));
    dys.push_back(kiln::narrow(dy, 0, off[static_cast<std::size_t>(g)], sizes[static_cast<std::size_t>(g)]));
    ws.push_back(kiln::squeeze(kiln::narrow(w, 0, g, 1), 0));
  }
  const kiln::Device d = gpu;
  Tensor<bf16> y_kiln({R, c.n}, d), dx_kiln({R, c.k}, d), dw_kiln({c.groups, c.n, c.k}, d);
  Tensor<bf16> y_peer({R, c.n}, d), dx_peer({R, c.k}, d), dw_peer({c.groups, c.n, c.k}, d);
  using kiln::kernels::GroupedGemmKernel;
  auto kernel = [&](kiln::kernels::GroupedGemmKind kind, Tensor<bf16>& out, GroupedGemmKernel implementation,
                    int block_n) {
    kiln::detail::grouped_gemm_launch("bench", kind, out, x, dy, w, offsets, R, c.groups, c.n, c.k, implementation,
                                      block_n);
  };
  // The peer writes each group's product into its slice of the same outputs (copy_ into views).
  auto peer = [&](int which) {
    for (std::int64_t g = 0; g < c.groups; ++g) {
      if (sizes[static_cast<std::size_t>(g)] == 0) continue;
      const std::size_t i = static_cast<std::size_t>(g);
      if (which == 0) (void)kiln::matmul(xs[i], kiln::transpose(ws[i], 0, 1));
      if (which == 1) (void)kiln::matmul(dys[i], ws[i]);
      if (which == 2) (void)kiln::matmul(kiln::transpose(dys[i], 0, 1), xs[i]);
    }
  };
  int major = 0;
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  const bool hopper_gpu = major == 9;
  const char* names[3] = {"forward y = x·Wᵀ", "dgrad dx = dy·W", "wgrad dW = dyᵀ·x"};
  const kiln::kernels::GroupedGemmKind kinds[3] = {kiln::kernels::GroupedGemmKind::forward,
                                                    kiln::kernels::GroupedGemmKind::dgrad,
                                                    kiln::kernels::GroupedGemmKind::wgrad};
  Tensor<bf16>* outs[3] = {&y_kiln, &dx_kiln, &dw_kiln};
  const double flops = 2.0 * static_cast<double>(R) * static_cast<double>(c.n) * static_cast<double>(c.k);
  for (int v = 0; v < 3; ++v) {
    // Sides: the plain kernel, the Hopper kernel at 128- and 256-column tiles (sm_90 only), the peer.
    const bool hopper = hopper_gpu;
    std::vector<std::function<void()>> sides{[&] { kernel(kinds[v], *outs[v], GroupedGemmKernel::plain, 0); }};
    if (hopper) {
      sides.push_back([&] { kernel(kinds[v], *outs[v], GroupedGemmKernel::hopper, 128); });
      sides.push_back([&] { kernel(kinds[v], *outs[v], GroupedGemmKernel::hopper, 256); });
    }
    sides.push_back([&] { peer(v); });
    const std::vector<double> us = timer.interleaved_median_us(sides, {.warmup = 3, .timed = 15, .flush_l2 = true});
    // Accuracy against the peer's result.
    Tensor<bf16> ref;
    if (v == 0) {
      std::vector<Tensor<bf16>> parts;
      for (std::size_t g = 0; g < xs.size(); ++g)
        if (sizes[g]) parts.push_back(kiln::matmul(xs[g], kiln::transpose(ws[g], 0, 1)));
      ref = kiln::cat(parts, 0);
    } else if (v == 1) {
      std::vector<Tensor<bf16>> parts;
      for (std::size_t g = 0; g < xs.size(); ++g)
        if (sizes[g]) parts.push_back(kiln::matmul(dys[g], ws[g]));
      ref = kiln::cat(parts, 0);
    } else {
      std::vector<Tensor<bf16>> parts;
      for (std::size_t g = 0; g < xs.size(); ++g)
        parts.push_back(sizes[g] ? kiln::unsqueeze(kiln::matmul(kiln::transpose(dys[g], 0, 1), xs[g]), 0)
                                 : kiln::zeros<bf16>({1, c.n, c.k}, gpu));
      ref = kiln::cat(parts, 0);
    }
    // Errors against the peer: the plain kernel's output, then the Hopper kernel's (the last side
    // that wrote outs[v] in each case; both are recomputed here).
    kernel(kinds[v], *outs[v], GroupedGemmKernel::plain, 0);
    const double plain_error = max_relative(*outs[v], ref);
    double hopper_error = 0.0;
    if (hopper) {
      kernel(kinds[v], *outs[v], GroupedGemmKernel::automatic, 0);
      hopper_error = max_relative(*outs[v], ref);
    }
    const double peer_us = us.back();
    auto tflops = [&](double t) { return flops / t / 1e6; };
    std::printf("%-10s %-18s G %3lld R %6lld N %5lld K %5lld | plain %6.1f TF/s %5.2fx", c.name, names[v],
                static_cast<long long>(c.groups), static_cast<long long>(R), static_cast<long long>(c.n),
                static_cast<long long>(c.k), tflops(us[0]), peer_us / us[0]);
    if (hopper)
      std::printf(" | hopper128 %6.1f TF/s %5.2fx | hopper256 %6.1f TF/s %5.2fx", tflops(us[1]), peer_us / us[1],
                  tflops(us[2]), peer_us / us[2]);
    else
      std::printf(" | %-27s | %-27s", "hopper128 -", "hopper256 -");
    std::printf(" | cuBLASLt %6.1f TF/s | err plain %8.2e hopper %8.2e\n", tflops(peer_us), plain_error, hopper_error);
    std::fflush(stdout);
  }
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  std::printf("TF/s and ratio = cuBLASLt time / kiln time (> 1: kiln faster) for kiln's plain (mma.sync) kernel and\n"
              "its Hopper kernel at 128- and 256-column tiles (automatic picks %s), errors relative\n"
              "to the peer's largest output (hopper: the automatic choice)\n",
              "256 from 512 output columns");
  bench::Timer timer(0);
  const std::vector<Case> cases{{"big GEMM1", 8, 4096, 1024, 768},      {"big GEMM2", 8, 4096, 768, 512},
                                {"DSV3 up", 8, 4096, 4096, 7168},       {"DSV3 down", 8, 4096, 7168, 2048},
                                {"DSV3 up", 32, 512, 4096, 7168},       {"DSV3 down", 32, 512, 7168, 2048}};
  for (const Case& c : cases) run_case(timer, c);
  return 0;
}
