// rope and rope_tables: forward against a complex-number reference in both layouts, the rotation
// properties (identity at position 0, relative positions, layouts equal up to a permutation),
// gradients and errors.
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>

using namespace kiln;
using kiln::testing::relative_error;

namespace {

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// Each feature pair of each head, taken on its own as a complex number and multiplied by
// e^{i p theta^(-2i/D)}. x is [..., S, H, D]; positions is [S] or x's [..., S].
template <class T>
std::vector<double> reference(const Tensor<T>& x, const Tensor<std::int64_t>& positions, double theta,
                              RopeLayout layout) {
  const std::vector<double> xv = as_double(x);
  const std::vector<std::int64_t> pos = positions.to_vector();
  const std::int64_t S = x.size(-3), H = x.size(-2), D = x.size(-1), half = D / 2;
  const std::int64_t outer = x.numel() / (S * H * D);
  const bool per_batch = positions.dim() > 1;
  std::vector<double> y(xv.size());
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t s = 0; s < S; ++s) {
      const double p = static_cast<double>(pos[static_cast<std::size_t>(per_batch ? o * S + s : s)]);
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < half; ++i) {
          const std::int64_t base = ((o * S + s) * H + h) * D;
          const std::size_t a = static_cast<std::size_t>(base + (layout == RopeLayout::interleaved ? 2 * i : i));
          const std::size_t b = static_cast<std::size_t>(base + (layout == RopeLayout::interleaved ? 2 * i + 1 : i + half));
          const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
          const std::complex<double> z = std::complex<double>(xv[a], xv[b]) * std::polar(1.0, p * freq);
          y[a] = z.real();
          y[b] = z.imag();
        }
    }
  return y;
}

template <class T>
void check_forward(const Tensor<T>& x, const Tensor<std::int64_t>& positions, double theta, double tol) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    const Tensor<T> y = rope(x, positions, theta, layout);
    ASSERT_EQ(y.shape(), x.shape());
    EXPECT_LE(relative_error(as_double(y), reference(x, positions, theta, layout)), tol)
        << "x " << str(x.shape()) << " positions " << str(positions.shape()) << " layout "
        << (layout == RopeLayout::interleaved ? "interleaved" : "half_split");
  }
}

// The half_split feature order rearranged into the interleaved one: [x0..x{h-1}, xh..x{D-1}]
// becomes [x0, xh, x1, x{h+1}, ...], so half_split pair i lands on interleaved pair i.
template <class T>
Tensor<T> to_interleaved(const Tensor<T>& x) {
  Shape split = x.shape();
  const std::int64_t D = split.back();
  split.back() = 2;
  split.push_back(D / 2);
  return reshape(transpose(reshape(x, split), -1, -2), x.shape());
}

double dot(const Tensor<double>& a, const Tensor<double>& b) {
  const auto av = a.to_vector(), bv = b.to_vector();
  double s = 0.0;
  for (std::size_t i = 0; i < av.size(); ++i) s += av[i] * bv[i];
  return s;
}

}  // namespace

TEST(Rope, ForwardMatchesComplexReference) {
  for (std::int64_t D : {2, 6, 64}) {
    check_forward(randn<double>({7, 3, D}), randint<std::int64_t>(0, 4096, {7}), 10000.0, 1e-14);
    check_forward(randn<float>({7, 3, D}), randint<std::int64_t>(0, 4096, {7}), 10000.0, 1e-6);
    check_forward(randn<double>({2, 5, 1, D}), randint<std::int64_t>(0, 100, {5}), 500000.0, 1e-14);
    check_forward(randn<float>({2, 5, 3, D}), randint<std::int64_t>(0, 100000, {2, 5}), 10000.0, 1e-6);
    check_forward(randn<double>({2, 3, 1, 2, D}), randint<std::int64_t>(0, 50, {2, 3, 1}), 10.0, 1e-14);
  }
  // bf16: float arithmetic, the output rounded once (at most 2^-8 of each element).
  check_forward(randn<bf16>({3, 4, 2, 32}), randint<std::int64_t>(0, 1000, {3, 4}), 10000.0, 0x1p-8 + 1e-6);
}

TEST(Rope, NonContiguousInputs) {
  // Heads-first data moved to [B, S, H, D] by a transpose, as attention code produces it.
  const auto x = transpose(randn<float>({2, 3, 5, 8}), 1, 2);
  ASSERT_FALSE(x.is_contiguous());
  check_forward(x, randint<std::int64_t>(0, 64, {5}), 10000.0, 1e-6);
  const auto positions = slice(arange<std::int64_t>(0, 20), 0, 0, 20, 4);  // [0, 4, 8, 12, 16]
  ASSERT_FALSE(positions.is_contiguous());
  check_forward(slice(randn<double>({5, 2, 12}), 2, 0, 12, 2), positions, 10000.0, 1e-14);
  check_forward(expand(randn<double>({1, 5, 1, 4}), {3, 5, 2, 4}), positions, 10000.0, 1e-14);
}

// The views a GPU rotates in place (rows of heads a fixed stride apart) and those it copies first.
TEST(Rope, RowStridesOfViews) {
  const auto wide = randn<float>({2, 7, 3, 24});
  const auto q_pe = detail::rope_row_strides(narrow(wide, -1, 8, 16));  // [B, S, H, 16] of rows of 72
  ASSERT_TRUE(q_pe.has_value());
  EXPECT_EQ(*q_pe, (std::pair<std::int64_t, std::int64_t>{72, 24}));
  const auto k_pe = detail::rope_row_strides(unsqueeze(narrow(randn<float>({2, 7, 40}), -1, 8, 32), 2));
  ASSERT_TRUE(k_pe.has_value());
  EXPECT_EQ(k_pe->first, 40);
  EXPECT_EQ(detail::rope_row_strides(randn<float>({2, 7, 3, 16})), (std::pair<std::int64_t, std::int64_t>{48, 16}));
  EXPECT_EQ(detail::rope_row_strides(expand(randn<float>({2, 7, 1, 16}), {2, 7, 3, 16})),
            (std::pair<std::int64_t, std::int64_t>{16, 0}));
  EXPECT_FALSE(detail::rope_row_strides(transpose(randn<float>({2, 8, 33, 64}), 1, 2)).has_value());  // B breaks S
  EXPECT_FALSE(detail::rope_row_strides(expand(randn<float>({1, 5, 1, 16}), {3, 5, 2, 16})).has_value());
  EXPECT_FALSE(detail::rope_row_strides(transpose(randn<float>({2, 7, 16, 3}), 2, 3)).has_value());  // D strided
}

// rope_into on the CPU: rope's values written into a slice, the rest of the tensor untouched.
TEST(Rope, IntoASliceOfALargerTensor) {
  const auto x = randn<double>({2, 3, 4, 8});
  const auto tables = rope_tables<double>(arange<std::int64_t>(0, 3), 8);
  const auto out = randn<double>({2, 3, 4, 11});
  const std::vector<double> before = out.to_vector();
  rope_into(narrow(out, -1, 1, 8), x, tables, RopeLayout::interleaved);
  EXPECT_EQ(contiguous(narrow(out, -1, 1, 8)).to_vector(), rope(x, tables, RopeLayout::interleaved).to_vector());
  const std::vector<double> after = out.to_vector();
  for (std::size_t i = 0; i < after.size(); ++i) {
    if (i % 11 < 1 || i % 11 >= 9) {
      EXPECT_EQ(after[i], before[i]) << i;
    }
  }
  EXPECT_KILN_ERROR(rope_into(randn<double>({2, 3, 4, 6}), x, tables), "rope", "[2, 3, 4, 6]");
}

TEST(Rope, PositionZeroIsIdentity) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    const auto x = randn<float>({2, 4, 3, 10});
    EXPECT_EQ(rope(x, zeros<std::int64_t>({4}), 10000.0, layout).to_vector(), x.to_vector());
  }
}

// <rope(q, m), rope(k, n)> = Re(sum q_i conj(k_i) e^{i (m - n) f_i}) depends only on m - n.
TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    const auto q = randn<double>({1, 1, 16});
    const auto k = randn<double>({1, 1, 16});
    auto score = [&](std::int64_t m, std::int64_t n) {
      return dot(rope(q, tensor<std::int64_t>({m}), 10000.0, layout), rope(k, tensor<std::int64_t>({n}), 10000.0, layout));
    };
    const double d3 = score(3, 0);
    // The error scales with the angles, not with d3 (which may lie near 0): an angle m·θ_i is
    // rounded to about m·eps (θ_i ≤ 1, and θ_i itself from pow carries a few eps), and that angle
    // error moves each of the 8 rotated pairs' product by up to |q_i|·|k_i| times it, for q and k.
    double pair_products = 0.0;
    const auto qv = q.to_vector(), kv = k.to_vector();
    for (std::size_t i = 0; i < qv.size(); ++i) pair_products += std::abs(qv[i] * kv[i]);
    const double eps = std::numeric_limits<double>::epsilon();
    for (std::int64_t m : {5, 17, 1000, 123456})
      EXPECT_NEAR(score(m, m - 3), d3, 8.0 * static_cast<double>(m) * eps * pair_products + 1e-12) << "m " << m;
    EXPECT_NEAR(score(7, 7), dot(q, k), 1e-12);
    // It does depend on the offset: over offsets 1..8 the score moves by a fair share of its scale
    // (one pair of random vectors may give nearly equal scores at two offsets, not at eight).
    double spread = 0.0;
    for (std::int64_t n = 1; n <= 8; ++n) spread = std::max(spread, std::abs(score(n, 0) - score(0, 0)));
    EXPECT_GT(spread, 1e-2 * pair_products);
  }
}

TEST(Rope, LayoutsAgreeUpToFeaturePermutation) {
  const auto x = randn<double>({2, 5, 3, 12});
  const auto positions = randint<std::int64_t>(0, 1000, {2, 5});
  const auto half = rope(x, positions, 10000.0, RopeLayout::half_split);
  const auto inter = rope(to_interleaved(x), positions, 10000.0, RopeLayout::interleaved);
  EXPECT_LE(relative_error(inter, to_interleaved(half)), 1e-15);
  // The permutation matters: the layouts differ on the same input.
  EXPECT_GT(relative_error(rope(x, positions, 10000.0, RopeLayout::interleaved), half), 0.1);
}

TEST(Rope, TablesMatchFormulaAndPositionsOverload) {
  const auto positions = randint<std::int64_t>(0, 5000, {2, 6});
  const auto t = rope_tables<double>(positions, 8, 10000.0);
  ASSERT_EQ(t.cos.shape(), (Shape{2, 6, 4}));
  ASSERT_EQ(t.sin.shape(), (Shape{2, 6, 4}));
  const auto pv = positions.to_vector();
  const auto cv = t.cos.to_vector(), sv = t.sin.to_vector();
  for (std::size_t k = 0; k < pv.size(); ++k)
    for (std::size_t i = 0; i < 4; ++i) {
      const double angle = static_cast<double>(pv[k]) * std::pow(10000.0, -2.0 * static_cast<double>(i) / 8.0);
      EXPECT_NEAR(cv[k * 4 + i], std::cos(angle), 1e-12);
      EXPECT_NEAR(sv[k * 4 + i], std::sin(angle), 1e-12);
    }
  const auto x = randn<float>({2, 6, 3, 8});
  const auto tf = rope_tables<float>(positions, 8);
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
    EXPECT_EQ(rope(x, tf, layout).to_vector(), rope(x, positions, 10000.0, layout).to_vector());
  // Tables for [S] positions are shared by the batch.
  const auto shared = rope_tables<float>(arange<std::int64_t>(0, 6), 8);
  EXPECT_EQ(rope(x, shared).to_vector(), rope(x, arange<std::int64_t>(0, 6)).to_vector());
}

TEST(Rope, Gradcheck) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    const auto shared = tensor<std::int64_t>({0, 3, 17, 250});
    const auto per_batch = tensor<std::int64_t>({1, 2, 40, 5, 0, 9, 33, 1000}, {2, 4});
    auto f_shared = [&](const std::vector<Tensor<double>>& in) { return rope(in[0], shared, 10000.0, layout); };
    auto f_batch = [&](const std::vector<Tensor<double>>& in) { return rope(in[0], per_batch, 100.0, layout); };
    EXPECT_GRADCHECK(f_shared, {randn<double>({4, 3, 6})});
    EXPECT_GRADCHECK(f_shared, {randn<double>({3, 4, 2, 2})});
    EXPECT_GRADCHECK(f_batch, {randn<double>({2, 4, 1, 10})});
    EXPECT_GRADCHECK(f_batch, {transpose(randn<double>({2, 3, 4, 4}), 1, 2).detach()});  // non-contiguous leaf
    // A non-contiguous output gradient.
    EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& in) { return transpose(rope(in[0], shared, 10000.0, layout), 0, 2); },
                     {randn<double>({4, 3, 6})});
  }
}

TEST(Rope, Errors) {
  EXPECT_KILN_ERROR(rope(randn<float>({4, 2, 5}), arange<std::int64_t>(0, 4)), "rope", "even", "[4, 2, 5]");
  EXPECT_KILN_ERROR(rope(randn<float>({2, 4, 3, 8}), arange<std::int64_t>(0, 5)), "rope", "[5]", "[2, 4, 3, 8]");
  EXPECT_KILN_ERROR(rope(randn<float>({2, 4, 3, 8}), zeros<std::int64_t>({3, 4})), "rope", "[3, 4]", "[2, 4, 3, 8]");
  EXPECT_KILN_ERROR(rope(randn<float>({4, 3, 8}), zeros<std::int64_t>({1, 4})), "rope", "[1, 4]", "[4, 3, 8]");
  EXPECT_KILN_ERROR(rope(randn<float>({4, 2, 8}), tensor<std::int64_t>({0, -3, 1, 2})), "rope", "negative", "-3", "[4]");
  EXPECT_KILN_ERROR(rope(randn<float>({4, 8}), arange<std::int64_t>(0, 4)), "rope", "[4, 8]");
  EXPECT_KILN_ERROR(rope(randn<float>({4, 2, 8}), arange<std::int64_t>(0, 4), 0.0), "rope", "theta");
  EXPECT_KILN_ERROR(rope(randn<float>({4, 2, 8}), rope_tables<float>(arange<std::int64_t>(0, 4), 6)), "rope",
                    "[4, 3]", "[4, 2, 8]");
  EXPECT_KILN_ERROR(rope_tables<float>(arange<std::int64_t>(0, 4), 7), "rope_tables", "even");
}
