// grouped_linear (ops/grouped_linear.hpp) on the CPU: forward and both gradients against plain
// double loops written here, finite differences, empty groups, one group holding every row, odd
// sizes, and the errors. The CUDA kernels are compared with the CPU op in
// tests/kernels/test_grouped_gemm_cuda.cpp.
#include "kiln/autograd/gradcheck.hpp"
#include "kiln/ops/grouped_linear.hpp"
#include "test_util.hpp"

using namespace kiln;

namespace {

using Vec = std::vector<double>;

// y[r, n] = Σ_k x[r, k] w[g(r), n, k] in double.
Vec reference_forward(const Vec& x, const Vec& w, const std::vector<std::int64_t>& off, std::int64_t N, std::int64_t K) {
  const std::int64_t R = off.back();
  Vec y(static_cast<std::size_t>(R * N), 0.0);
  for (std::size_t g = 0; g + 1 < off.size(); ++g)
    for (std::int64_t r = off[g]; r < off[g + 1]; ++r)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t k = 0; k < K; ++k)
          y[static_cast<std::size_t>(r * N + n)] +=
              x[static_cast<std::size_t>(r * K + k)] * w[static_cast<std::size_t>((static_cast<std::int64_t>(g) * N + n) * K + k)];
  return y;
}

Tensor<std::int64_t> offsets_of(const std::vector<std::int64_t>& sizes) {
  std::vector<std::int64_t> off{0};
  for (auto s : sizes) off.push_back(off.back() + s);
  return Tensor<std::int64_t>::from_vector(off, {static_cast<std::int64_t>(off.size())});
}

}  // namespace

TEST(GroupedLinear, ForwardAndGradientsEqualDoubleLoops) {
  for (const std::vector<std::int64_t>& sizes : std::vector<std::vector<std::int64_t>>{
           {1}, {7}, {3, 0, 5, 1}, {0, 0, 9}, {129, 2, 0, 17}, {0}}) {
    const std::int64_t R = [&] { std::int64_t r = 0; for (auto s : sizes) r += s; return r; }();
    const std::int64_t G = static_cast<std::int64_t>(sizes.size()), N = 5, K = 3;
    SCOPED_TRACE(::testing::Message() << "G " << G << " R " << R);
    const Tensor<std::int64_t> off = offsets_of(sizes);
    const Tensor<double> x = randn<double>({R, K}).requires_grad_(), w = randn<double>({G, N, K}).requires_grad_();
    const Tensor<double> y = grouped_linear(x, w, off);
    const Vec want = reference_forward(x.to_vector(), w.to_vector(), off.to_vector(), N, K);
    const Vec got = y.to_vector();
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-13);
    if (R == 0) continue;
    // Gradients of sum(y ⊙ d): dx = d · W_g, dW_g = dᵀ x_g, by the definition, in double.
    const Tensor<double> d = randn<double>({R, N});
    sum(mul(y, d)).backward();
    const Vec xv = x.to_vector(), wv = w.to_vector(), dv = d.to_vector(), gx = x.grad().to_vector(),
              gw = w.grad().to_vector();
    const std::vector<std::int64_t> o = off.to_vector();
    Vec want_gx(xv.size(), 0.0), want_gw(wv.size(), 0.0);
    for (std::int64_t g = 0; g < G; ++g)
      for (std::int64_t r = o[static_cast<std::size_t>(g)]; r < o[static_cast<std::size_t>(g) + 1]; ++r)
        for (std::int64_t n = 0; n < N; ++n)
          for (std::int64_t k = 0; k < K; ++k) {
            const std::size_t wi = static_cast<std::size_t>((g * N + n) * K + k);
            want_gx[static_cast<std::size_t>(r * K + k)] += dv[static_cast<std::size_t>(r * N + n)] * wv[wi];
            want_gw[wi] += dv[static_cast<std::size_t>(r * N + n)] * xv[static_cast<std::size_t>(r * K + k)];
          }
    for (std::size_t i = 0; i < gx.size(); ++i) EXPECT_NEAR(gx[i], want_gx[i], 1e-13);
    for (std::size_t i = 0; i < gw.size(); ++i) EXPECT_NEAR(gw[i], want_gw[i], 1e-13) << "dW element " << i;
  }
}

TEST(GroupedLinear, GradcheckAndLowPrecision) {
  const Tensor<std::int64_t> off = offsets_of({2, 0, 3, 1});
  const auto result = gradcheck(
      [&](const std::vector<Tensor<double>>& in) { return grouped_linear(in[0], in[1], off); },
      {randn<double>({6, 4}), randn<double>({4, 3, 4})});
  EXPECT_TRUE(result.ok) << result.report;
  // bf16 and float on the CPU: the double result rounded (float accumulation).
  const Tensor<float> x = randn<float>({6, 16}), w = randn<float>({4, 8, 16});
  const Vec exact = grouped_linear(cast<double>(cast<bf16>(x)), cast<double>(cast<bf16>(w)), off).to_vector();
  const std::vector<bf16> low = grouped_linear(cast<bf16>(x), cast<bf16>(w), off).to_vector();
  for (std::size_t i = 0; i < exact.size(); ++i)
    EXPECT_NEAR(static_cast<double>(low[i]), exact[i], std::abs(exact[i]) / 256.0 + 1e-5) << i;
}

TEST(GroupedLinear, ChecksItsArguments) {
  const Tensor<double> x = randn<double>({5, 4}), w = randn<double>({2, 3, 4});
  EXPECT_THROW(grouped_linear(x, w, offsets_of({2, 2})), Error);         // ends at 4, not R = 5
  EXPECT_THROW(grouped_linear(x, w, offsets_of({2, 2, 1})), Error);      // G + 1 = 4 offsets for 2 groups
  EXPECT_THROW(grouped_linear(x, w, Tensor<std::int64_t>::from_vector({1, 4, 5}, {3})), Error);   // starts at 1
  EXPECT_THROW(grouped_linear(x, w, Tensor<std::int64_t>::from_vector({0, 6, 5}, {3})), Error);  // decreasing
  EXPECT_THROW(grouped_linear(x, randn<double>({2, 3, 5}), offsets_of({2, 3})), Error);           // K mismatch
  EXPECT_THROW(grouped_linear(reshape(x, {20}), w, offsets_of({2, 3})), Error);
}
