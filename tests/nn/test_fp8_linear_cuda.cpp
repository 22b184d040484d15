// nn::fp8_linear on CUDA against the same layer on the CPU: forward output and both gradients, for
// float and bf16 activations, at shapes where every GEMM can use the Hopper kernel and at odd ones
// where some fall back to the plain kernel. Quantization is bit-identical on both devices, so the
// outputs differ only by the GEMMs' accumulation order: tolerances 2e-4 for float outputs (the CPU side
// is within 1e-5 of the float64 product, the Hopper kernel near 1.3e-4: see test_fp8_gemm_cuda.cpp), 1e-2 for bf16 (DESIGN.md).
#include <kiln/nn/fp8_linear.hpp>

#include <array>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class A>
void compare_with_cpu(std::int64_t tokens, std::int64_t in, std::int64_t out) {
  SCOPED_TRACE(str(dtype_of<A>, " tokens ", tokens, " in ", in, " out ", out));
  const double tol = std::is_same_v<A, float> ? 2e-4 : 1e-2;
  const Tensor<A> x = cast<A>(randn<float>({tokens, in}, 0.0, 1.5));
  const Tensor<float> w = randn<float>({out, in}, 0.0, 0.05);
  const Tensor<A> r = cast<A>(randn<float>({tokens, out}));

  const Tensor<A> xc = clone(x).requires_grad_(), xg = on_gpu(x).detach().requires_grad_();
  const Tensor<float> wc = clone(w).requires_grad_(), wg = on_gpu(w).detach().requires_grad_();
  const Tensor<A> yc = nn::fp8_linear(xc, wc);
  sum(mul(yc, r)).backward();
  KernelTrace trace;
  const Tensor<A> yg = nn::fp8_linear(xg, wg);
  ASSERT_EQ(yg.device(), gpu);
  sum(mul(yg, on_gpu(r))).backward();
  // Three GEMMs (forward, dX, dW); the Hopper kernel takes all three when every dimension, K of the
  // weight gradient (tokens) included, is a multiple of 16 (gemm_hopper.cuh), else some fall back.
  EXPECT_EQ(trace.count("fp8_gemm"), 3);
  if (tokens % 16 == 0 && in % 16 == 0 && out % 16 == 0)
    EXPECT_EQ(trace.count("fp8_gemm/simt"), 0) << "a plain-kernel fallback at a shape the Hopper kernel takes";
  else
    EXPECT_GE(trace.count("fp8_gemm/simt"), 1);
  EXPECT_LE(relative_error(on_cpu(yg.detach()), yc.detach()), tol);
  ASSERT_TRUE(xg.grad().defined() && wg.grad().defined());
  EXPECT_EQ(xg.grad().device(), gpu);
  EXPECT_LE(relative_error(on_cpu(xg.grad()), xc.grad()), tol);
  EXPECT_LE(relative_error(on_cpu(wg.grad()), wc.grad()), 2e-4);  // dW is always float
}

}  // namespace

TEST(Fp8LinearCuda, MatchesCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (auto [tokens, in, out] : std::vector<std::array<std::int64_t, 3>>{{256, 512, 256}, {512, 1024, 2048}, {38, 200, 70},
                                                                        {300, 1024, 512}, {1, 128, 16}}) {
    compare_with_cpu<float>(tokens, in, out);
    compare_with_cpu<bf16>(tokens, in, out);
  }
}

TEST(Fp8LinearCuda, LeadingDimsAndModule) {
  KILN_REQUIRE_GPU();
  Generator gen{3, 0};
  nn::Fp8Linear<float> layer(256, 128, 0.02, gen);
  const Tensor<float> x = randn<float>({2, 5, 256});
  const Tensor<float> yc = layer(x);
  layer.to(gpu);
  EXPECT_EQ(layer.weight.device(), gpu);
  EXPECT_TRUE(layer.weight.requires_grad());
  const Tensor<float> yg = layer(on_gpu(x));
  EXPECT_EQ(yg.shape(), (Shape{2, 5, 128}));
  EXPECT_LE(relative_error(on_cpu(yg), yc), 2e-4);
  sum(yg).backward();
  EXPECT_EQ(layer.weight.grad().device(), gpu);
  EXPECT_EQ(layer.weight.grad().shape(), (Shape{128, 256}));
  EXPECT_KILN_ERROR(layer(x), "fp8_linear", "[2, 5, 256]");  // CPU input, GPU weight
}
