// nn::causal_softmax on the CPU: one fused pass over each row's visible keys. It must give the
// bits of the composed ops it replaces (softmax(masked_fill(mul(scores, scale), mask, -inf))), in
// the output and in the scores' gradient, for every dtype, for queries that continue earlier keys
// (Sq < Sk), for packed rows and for strided scores; and the function itself is checked against
// plain loops in long double and by finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <kiln/autograd/gradcheck.hpp>
#include <kiln/nn/attention.hpp>

#include "test_util.hpp"

namespace {

using namespace kiln;

// The composed ops, as nn::causal_softmax ran them everywhere before.
template <class T>
Tensor<T> composed(const Tensor<T>& scores, double scale, const Tensor<std::int64_t>& cu = Tensor<std::int64_t>()) {
  const Tensor<bool> mask = cu.defined() ? nn::packed_causal_mask(cu, scores.size(-1))
                                         : nn::causal_mask(scores.size(-2), scores.size(-1));
  return softmax(masked_fill(mul(scores, scale), mask, -std::numeric_limits<double>::infinity()), -1);
}

template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  const std::vector<T> x = contiguous(a).to_vector(), y = contiguous(b).to_vector();
  return a.shape() == b.shape() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

// Forward and backward of both paths on the same scores and upstream gradient: equal bits.
template <class T>
void expect_same_as_composed(const Shape& shape, double scale, std::uint64_t seed,
                             const Tensor<std::int64_t>& cu = Tensor<std::int64_t>(), bool transposed = false) {
  Generator gen{seed, 0};
  Tensor<T> base = randn<T>(shape, 0.0, 3.0, Device::cpu(), gen);
  if (transposed) base = contiguous(transpose(base, -1, -2));  // then viewed back: strided scores
  const Tensor<T> g = randn<T>(shape, 0.0, 1.0, Device::cpu(), gen);
  auto run = [&](bool fused) {
    Tensor<T> leaf = base.detach().requires_grad_();
    const Tensor<T> x = transposed ? transpose(leaf, -1, -2) : leaf;
    const Tensor<T> y = fused ? nn::causal_softmax(x, scale, cu) : composed(x, scale, cu);
    y.backward(g);
    return std::pair{y.detach(), leaf.grad()};
  };
  const auto [y_fused, g_fused] = run(true);
  const auto [y_composed, g_composed] = run(false);
  EXPECT_TRUE(same_bits(y_fused, y_composed)) << dtype_name<T> << " " << str(shape);
  EXPECT_TRUE(same_bits(g_fused, g_composed)) << dtype_name<T> << " " << str(shape);
}

TEST(CausalSoftmax, BitsOfTheComposedOps) {
  // Sq = Sk, Sq < Sk (queries continuing earlier keys), one query, single elements, odd sizes.
  for (const Shape& shape : {Shape{2, 3, 7, 7}, Shape{1, 2, 5, 9}, Shape{3, 1, 1, 6}, Shape{1, 1, 1, 1},
                             Shape{2, 17, 33}, Shape{4, 64, 64}}) {
    expect_same_as_composed<float>(shape, 0.125, 1);
    expect_same_as_composed<double>(shape, 1.0 / std::sqrt(48.0), 2);
    expect_same_as_composed<bf16>(shape, 0.1767766952966369, 3);
  }
}

TEST(CausalSoftmax, BitsOfTheComposedOpsPackedAndStrided) {
  const auto cu = Tensor<std::int64_t>::from_vector({0, 3, 10, 11, 20}, {5});
  expect_same_as_composed<float>({1, 3, 20, 20}, 0.2, 4, cu);
  expect_same_as_composed<double>({1, 2, 20, 20}, 0.3, 5, cu);
  expect_same_as_composed<bf16>({1, 2, 20, 20}, 0.25, 6, cu);
  expect_same_as_composed<float>({2, 3, 9, 9}, 0.5, 7, Tensor<std::int64_t>(), /*transposed=*/true);
  expect_same_as_composed<float>({1, 1, 20, 20}, 0.5, 8, cu, /*transposed=*/true);
}

// Against plain loops in long double: row i of [.., Sq, Sk] sees keys lo..Sk - Sq + i.
TEST(CausalSoftmax, MatchesPlainLoops) {
  Generator gen{9, 0};
  const std::int64_t Sq = 6, Sk = 11;
  const Tensor<double> x = randn<double>({2, Sq, Sk}, 0.0, 2.0, Device::cpu(), gen);
  const double scale = 0.7;
  const std::vector<double> y = nn::causal_softmax(x, scale).to_vector(), xv = x.to_vector();
  for (std::int64_t r = 0; r < 2 * Sq; ++r) {
    const std::int64_t hi = r % Sq + Sk - Sq;
    long double m = -INFINITY, sum = 0;
    for (std::int64_t j = 0; j <= hi; ++j) m = std::max<long double>(m, scale * xv[r * Sk + j]);
    for (std::int64_t j = 0; j <= hi; ++j) sum += std::exp(scale * xv[r * Sk + j] - m);
    for (std::int64_t j = 0; j < Sk; ++j) {
      const double want = j <= hi ? static_cast<double>(std::exp(scale * xv[r * Sk + j] - m) / sum) : 0.0;
      EXPECT_NEAR(y[r * Sk + j], want, 1e-15) << "row " << r << " key " << j;
    }
  }
}

TEST(CausalSoftmax, GradcheckPlainAndPacked) {
  Generator gen{10, 0};
  const auto cu = Tensor<std::int64_t>::from_vector({0, 2, 7}, {3});
  const auto r1 = gradcheck([](const std::vector<Tensor<double>>& in) { return nn::causal_softmax(in[0], 0.6); },
                            {randn<double>({2, 4, 7}, 0.0, 1.0, Device::cpu(), gen)});
  EXPECT_TRUE(r1.ok) << r1.report;
  const auto r2 = gradcheck([&](const std::vector<Tensor<double>>& in) { return nn::causal_softmax(in[0], 1.3, cu); },
                            {randn<double>({1, 2, 7, 7}, 0.0, 1.0, Device::cpu(), gen)});
  EXPECT_TRUE(r2.ok) << r2.report;
}

TEST(CausalSoftmax, Errors) {
  const Tensor<float> x({2, 5, 3});
  EXPECT_KILN_ERROR(nn::causal_softmax(x, 1.0), "causal_softmax", "Sq <= Sk", "[2, 5, 3]");
  EXPECT_KILN_ERROR(nn::causal_softmax(Tensor<float>({4}), 1.0), "causal_softmax", "[..., Sq, Sk]");
  const auto cu = Tensor<std::int64_t>::from_vector({0, 2, 3}, {3});
  EXPECT_KILN_ERROR(nn::causal_softmax(Tensor<float>({1, 3, 4}), 1.0, cu), "causal_softmax", "Sq = Sk");
  EXPECT_KILN_ERROR(nn::causal_softmax(Tensor<float>({1, 4, 4}), 1.0, cu), "causal_softmax", "S = 4");
}

}  // namespace
