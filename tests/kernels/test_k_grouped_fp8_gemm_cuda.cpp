// kiln::fp8's k-grouped FP8 GEMM on CUDA (the experts' FP8 weight gradient; ops/k_grouped_fp8_gemm.hpp,
// kernels/fp8_gemm/quantize.cuh's k-grouped variant, kernels/grouped_fp8_gemm/k_grouped.cuh): the
// layout's bytes and scales bit-identical to the CPU's (every byte and every scale of the storage,
// outputs allocated from NaN-poisoned memory so an unwritten byte shows), the product of both
// kernels (Hopper and plain, each by name and through the automatic choice, the kernel trace
// saying which ran) against kiln's float64 reference of the same operands, empty groups exactly
// zero (an empty group's output tile must still be stored), group sizes on both sides of 128,
// partial tiles and the big config's expert shapes; grouped_fp8_linear's FP8 weight gradient against the
// CPU's; the operands' shared-offsets rule.
#include <kiln/nn/fp8_linear.hpp>
#include <kiln/kernels/common/device_info.hpp>
#include <kiln/ops/k_grouped_fp8_gemm.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "grouped_fp8_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

std::vector<float> scale_storage_of(const fp8::QuantizedMatrix& q) {
  return to(contiguous(fp8::detail::scale_storage(q)), Device::cpu()).to_vector();
}

std::vector<std::uint8_t> bytes_of(const fp8::QuantizedMatrix& q) {
  std::vector<std::uint8_t> out;
  for (const fp8_e4m3& v : to(q.data, Device::cpu()).to_vector()) out.push_back(v.bits);
  return out;
}

template <class T>
void expect_layout_matches_cpu(const std::vector<std::int64_t>& sizes, std::int64_t C, std::uint64_t seed) {
  SCOPED_TRACE(str(dtype_of<T>, " C ", C, " seed ", seed));
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const Tensor<T> x = cast<T>(varied_randn({R, C}, seed));
  const Tensor<std::int64_t> off = offsets_of(sizes);
  const fp8::KGroupedMatrix cpu_k = fp8::quantize_k_grouped(x, off);
  poison_cached_memory();
  const fp8::KGroupedMatrix gpu_k = fp8::quantize_k_grouped(on_gpu(x), on_gpu(off));
  ASSERT_EQ(gpu_k.q.data.shape(), cpu_k.q.data.shape());
  EXPECT_EQ(bytes_of(gpu_k.q), bytes_of(cpu_k.q));
  EXPECT_EQ(scale_storage_of(gpu_k.q), scale_storage_of(cpu_k.q));
}

// The plain kernel sums in FP32 like the CPU; the Hopper kernel's wgmma keeps about 13 bits within
// each promotion interval of 128 (the dense FP8 GEMM's bound, test_fp8_gemm_cuda.cpp:
// 2^-13 · (128/32 + 1) / 2); bf16 outputs add one rounding (2^-8).
double product_tolerance(fp8::GroupedGemmKernel kernel, bool bf16_out) {
  const double f32 = kernel == fp8::GroupedGemmKernel::simt ? 1e-5 : 0x1p-13 * (128 / 32 + 1) / 2.0;
  return bf16_out ? 0x1p-8 + f32 : f32;
}

template <class Out>
void expect_product(const std::vector<std::int64_t>& sizes, std::int64_t M, std::int64_t N, std::uint64_t seed) {
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const Tensor<std::int64_t> off = on_gpu(offsets_of(sizes));
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(on_gpu(cast<bf16>(varied_randn({R, M}, seed))), off);
  const fp8::KGroupedMatrix b = fp8::quantize_k_grouped(on_gpu(cast<bf16>(varied_randn({R, N}, seed + 1))), off);
  const std::vector<double> want = fp8::k_grouped_gemm_reference(a, b).to_vector();
  const bool hopper_shape = M % 16 == 0 && N % 16 == 0 && sizes.size() <= 1024;
  using fp8::GroupedGemmKernel;
  for (const GroupedGemmKernel kernel :
       {GroupedGemmKernel::simt, GroupedGemmKernel::hopper, GroupedGemmKernel::automatic}) {
    const bool hopper = kernel == GroupedGemmKernel::hopper ||
                        (kernel == GroupedGemmKernel::automatic && hopper_shape && gpu_is_hopper());
    if (kernel == GroupedGemmKernel::hopper && !(hopper_shape && gpu_is_hopper())) {
      EXPECT_KILN_ERROR(fp8::k_grouped_gemm<Out>(a, b, {.kernel = kernel}), "k_grouped_fp8_gemm", "Hopper");
      continue;
    }
    SCOPED_TRACE(str(dtype_of<Out>, " M ", M, " N ", N, " seed ", seed, hopper ? " hopper" : " simt"));
    poison_cached_memory();
    KernelTrace trace;
    const Tensor<Out> d = fp8::k_grouped_gemm<Out>(a, b, {.kernel = kernel});
    const std::string ran = hopper ? "k_grouped_fp8_gemm/hopper" : "k_grouped_fp8_gemm/simt";
    EXPECT_EQ(trace.launches(), std::vector<std::string>{ran});
    ASSERT_EQ(d.shape(), (Shape{static_cast<std::int64_t>(sizes.size()), M, N}));
    const std::vector<double> got = cast<double>(to(d, Device::cpu())).to_vector();
    const GroupedGemmKernel kind = hopper ? GroupedGemmKernel::hopper : GroupedGemmKernel::simt;
    EXPECT_LE(relative_error(got, want), product_tolerance(kind, std::is_same_v<Out, bf16>));
    for (std::size_t g = 0; g < sizes.size(); ++g) {
      if (sizes[g] != 0) continue;
      for (std::int64_t e = 0; e < M * N; ++e) {
        ASSERT_EQ(got[g * static_cast<std::size_t>(M * N) + static_cast<std::size_t>(e)], 0.0) << "empty group " << g;
      }
    }
  }
}

}  // namespace

TEST(KGroupedFp8GemmCuda, LayoutMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  expect_layout_matches_cpu<float>({0, 1, 127, 128, 129, 300, 0, 5}, 7, 1);
  expect_layout_matches_cpu<bf16>({3, 0, 200}, 130, 2);
  expect_layout_matches_cpu<bf16>({700, 64, 1000, 2}, 768, 3);  // 16-byte loads
  expect_layout_matches_cpu<float>({0, 0}, 9, 4);                // no rows: zeros and all-zero tiles
}

TEST(KGroupedFp8GemmCuda, ProductMatchesTheReference) {
  KILN_REQUIRE_GPU();
  expect_product<float>({0, 1, 130, 7, 0, 257, 64}, 40, 72, 10);    // the plain kernel only
  expect_product<bf16>({5, 128, 0, 129}, 33, 130, 12);
  expect_product<float>({0, 1, 130, 7, 0, 257, 64}, 48, 80, 15);    // both: 64-row tiles, partial N tile
  expect_product<bf16>({129, 0, 0, 3, 256}, 144, 32, 16);           // 128-row tiles, a partial M tile
  // The big config's routed experts (hidden 768, 512 wide), ragged loads over 8 experts.
  expect_product<bf16>({1500, 0, 3, 2047, 128, 900, 4000, 1}, 512, 768, 13);
  expect_product<float>({1000}, 768, 1024, 14);
}

TEST(KGroupedFp8GemmCuda, GroupedLinearWeightGradientMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  const std::vector<std::int64_t> sizes{3, 0, 300, 129};
  const std::int64_t R = 432, G = 4, in = 256, out = 208;  // multiples of 16: the Hopper kernel
  const Tensor<std::int64_t> off = offsets_of(sizes);
  const Tensor<bf16> x = cast<bf16>(randn<float>({R, in}, 0.0, 2.0)), dy = cast<bf16>(randn<float>({R, out}));
  const Tensor<bf16> w = cast<bf16>(randn<float>({G, out, in}, 0.0, 0.05));
  nn::Fp8LinearOptions recipe;
  recipe.grouped_fp8_wgrad = true;
  auto weight_grad = [&](Device device) {
    const Tensor<bf16> xi = to(x, device).requires_grad_(), wi = to(w, device).requires_grad_();
    sum(mul(nn::grouped_fp8_linear(xi, wi, to(off, device), recipe), to(dy, device))).backward();
    return cast<double>(to(wi.grad(), Device::cpu())).to_vector();
  };
  // The same bytes and scales on both devices (LayoutMatchesTheCpu); the Hopper kernel's sums (see
  // product_tolerance), then one bf16 rounding on each device.
  KernelTrace trace;
  const std::vector<double> gpu_grad = weight_grad(Device::cuda(0));
  EXPECT_EQ(trace.count(gpu_is_hopper() ? "k_grouped_fp8_gemm/hopper" : "k_grouped_fp8_gemm/simt"), 1);
  EXPECT_LE(relative_error(gpu_grad, weight_grad(Device::cpu())),
            product_tolerance(fp8::GroupedGemmKernel::hopper, true) + 0x1p-8);
}

TEST(KGroupedFp8GemmCuda, OperandsShareTheOffsetsTensor) {
  KILN_REQUIRE_GPU();
  const Tensor<float> x = on_gpu(randn<float>({10, 8}));
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(x, on_gpu(offsets_of({4, 6})));
  const fp8::KGroupedMatrix b = fp8::quantize_k_grouped(x, on_gpu(offsets_of({4, 6})));
  EXPECT_KILN_ERROR(fp8::k_grouped_gemm<float>(a, b), "fp8_k_grouped_gemm", "same offsets tensor");
}
