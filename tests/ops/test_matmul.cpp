// matmul: every shape case (dot, matrix, 1-D promotion, batched, broadcast batch) against a plain
// double triple loop, non-contiguous operands, low precision, gradients, errors.
#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

struct Reference {
  Shape shape;
  std::vector<double> values;
};

// The NumPy definition written out directly: promote 1-D operands, broadcast the batch dims, then
// out[b, i, j] = sum_p a[b, i, p] * b[b, p, j] over row-major copies of the inputs.
template <class T>
Reference reference_matmul(const Tensor<T>& a, const Tensor<T>& b) {
  Shape sa = a.shape(), sb = b.shape();
  const bool a_vec = sa.size() == 1, b_vec = sb.size() == 1;
  if (a_vec) sa.insert(sa.begin(), 1);
  if (b_vec) sb.push_back(1);
  const std::size_t nd = std::max(sa.size(), sb.size());
  while (sa.size() < nd) sa.insert(sa.begin(), 1);
  while (sb.size() < nd) sb.insert(sb.begin(), 1);
  const std::int64_t m = sa[nd - 2], k = sa[nd - 1], n = sb[nd - 1];

  Reference r;
  std::int64_t batch = 1;
  for (std::size_t d = 0; d + 2 < nd; ++d) {
    r.shape.push_back(sa[d] == 1 ? sb[d] : sa[d]);
    batch *= r.shape.back();
  }
  const Shape batch_shape = r.shape;
  if (!a_vec) r.shape.push_back(m);
  if (!b_vec) r.shape.push_back(n);

  std::vector<double> va, vb;
  for (const T& x : a.to_vector()) va.push_back(static_cast<double>(x));
  for (const T& x : b.to_vector()) vb.push_back(static_cast<double>(x));
  r.values.assign(static_cast<std::size_t>(batch * m * n), 0.0);
  for (std::int64_t bi = 0; bi < batch; ++bi) {
    // Matrix index of batch element bi in a and b (size-1 batch dims repeat their one matrix).
    std::int64_t rest = bi, ia = 0, ib = 0, step_a = 1, step_b = 1;
    for (std::size_t d = batch_shape.size(); d-- > 0;) {
      const std::int64_t idx = rest % batch_shape[d];
      rest /= batch_shape[d];
      ia += (sa[d] == 1 ? 0 : idx) * step_a;
      ib += (sb[d] == 1 ? 0 : idx) * step_b;
      step_a *= sa[d];
      step_b *= sb[d];
    }
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (std::int64_t p = 0; p < k; ++p)
          acc += va[static_cast<std::size_t>(ia * m * k + i * k + p)] * vb[static_cast<std::size_t>(ib * k * n + p * n + j)];
        r.values[static_cast<std::size_t>(bi * m * n + i * n + j)] = acc;
      }
  }
  return r;
}

template <class T>
void expect_matches_reference(const Tensor<T>& a, const Tensor<T>& b, double tolerance) {
  const Reference ref = reference_matmul(a, b);
  const Tensor<T> out = matmul(a, b);
  ASSERT_EQ(out.shape(), ref.shape) << "for " << str(a.shape()) << " · " << str(b.shape());
  if (out.numel() > 0) {
    EXPECT_TRUE(out.is_contiguous());
  }
  EXPECT_LE(relative_error(out.to_vector(), ref.values), tolerance)
      << "for " << str(a.shape()) << " · " << str(b.shape());
}

// Float against double: DESIGN.md's fp32 tolerance. Double: rounding only.
constexpr double float_tol = 1e-5;
constexpr double double_tol = 1e-13;

inline void expect_both_types(const Shape& sa, const Shape& sb) {
  expect_matches_reference(randn<float>(sa), randn<float>(sb), float_tol);
  expect_matches_reference(randn<double>(sa), randn<double>(sb), double_tol);
}

using Dims = std::vector<std::int64_t>;

}  // namespace

TEST(Matmul, MatrixTimesMatrixAtOddSizes) {
  for (const Dims& mkn : std::vector<Dims>{{1, 1, 1}, {1, 7, 1}, {7, 1, 7}, {1, 33, 65}, {33, 1, 1}, {7, 33, 65},
                                           {65, 130, 17}, {64, 64, 64}, {130, 17, 65}, {3, 200, 2}}) {
    expect_both_types({mkn[0], mkn[1]}, {mkn[1], mkn[2]});
  }
}

TEST(Matmul, LargeProductUsesEigenThreadsCorrectly) {
  expect_matches_reference(randn<float>({257, 513}), randn<float>({513, 129}), float_tol);
  expect_matches_reference(randn<double>({300, 301}), randn<double>({301, 299}), double_tol);
  // Outputs large enough to be zeroed in parallel before the product, alone, as a folded batch, and
  // as one product per thread of a batch.
  expect_both_types({520, 33}, {33, 520});
  expect_both_types({2, 520, 33}, {33, 520});
  expect_both_types({9, 512, 8}, {9, 8, 512});
}

TEST(Matmul, VectorOperandsArePromotedThenDropped) {
  for (const std::int64_t k : {1, 7, 33}) {
    expect_both_types({k}, {k});            // dot -> []
    expect_both_types({k}, {k, 5});         // -> [5]
    expect_both_types({6, k}, {k});         // -> [6]
    expect_both_types({k}, {4, 3, k, 5});   // -> [4, 3, 5]
    expect_both_types({2, 3, 6, k}, {k});   // -> [2, 3, 6]
  }
  EXPECT_EQ(matmul(randn<double>({7}), randn<double>({7})).shape(), Shape{});
  EXPECT_EQ(matmul(randn<double>({7}), randn<double>({2, 7, 5})).shape(), (Shape{2, 5}));
  EXPECT_EQ(matmul(randn<double>({2, 4, 7}), randn<double>({7})).shape(), (Shape{2, 4}));
}

// matmul_into on the CPU: the product copied into a view of a larger tensor (per-head products
// into [tokens, heads, dims]), the rest of that tensor untouched; the shape is checked.
TEST(Matmul, IntoAViewOfALargerTensor) {
  const std::int64_t n = 5, H = 3, dn = 4, r = 6, dr = 2;
  const Tensor<double> q = randn<double>({n, H, r + dr});
  const std::vector<double> before = q.to_vector();
  const Tensor<double> a = randn<double>({H, n, dn}), b = randn<double>({H, dn, r});
  matmul_into(transpose(narrow(q, -1, 0, r), 0, 1), a, b);
  EXPECT_LE(relative_error(transpose(narrow(q, -1, 0, r), 0, 1), matmul(a, b)), 1e-15);
  const std::vector<double> after = q.to_vector();
  for (std::int64_t i = 0; i < n * H; ++i)
    for (std::int64_t j = r; j < r + dr; ++j) EXPECT_EQ(after[i * (r + dr) + j], before[i * (r + dr) + j]);
  EXPECT_KILN_ERROR(matmul_into(zeros<double>({3, 5}), randn<double>({3, 4}), randn<double>({4, 6})), "matmul_into",
                    "[3, 5]", "[3, 6]");
  EXPECT_KILN_ERROR(matmul_into(zeros<double>({3}), randn<double>({3, 4}), randn<double>({4})), "matmul_into",
                    "two or more dims");
}

// matmul_add = c + a·b (the residual after a linear layer), differentiable in all three; shapes checked.
TEST(Matmul, AddIsTheSumAndDifferentiable) {
  const Tensor<double> a = randn<double>({2, 3, 4}), b = randn<double>({4, 5}), c = randn<double>({2, 3, 5});
  EXPECT_LE(relative_error(matmul_add(a, b, c), add(c, matmul(a, b))), 1e-15);
  const auto result = gradcheck([](const std::vector<Tensor<double>>& in) { return matmul_add(in[0], in[1], in[2]); },
                                {randn<double>({3, 4}), randn<double>({4, 2}), randn<double>({3, 2})});
  EXPECT_TRUE(result.ok) << result.report;
  EXPECT_KILN_ERROR(matmul_add(a, b, randn<double>({3, 5})), "matmul_add", "[3, 5]", "[2, 3, 5]");
  EXPECT_KILN_ERROR(matmul_add(randn<double>({4}), b, randn<double>({5})), "matmul_add", "two or more dims");
}

TEST(Matmul, BatchedAndBroadcastBatches) {
  const std::vector<std::pair<Shape, Shape>> cases{
      {{3, 5, 7}, {3, 7, 4}},           // plain batch
      {{2, 1, 5, 7}, {3, 7, 4}},        // [B,1,M,K]·[H,K,N] -> [B,H,M,N]
      {{1, 5, 7}, {4, 7, 3}},           // size-1 batch against 4
      {{2, 3, 5, 7}, {7, 4}},           // shared right operand (batch folded into rows)
      {{2, 3, 5, 7}, {1, 1, 7, 4}},     // the same with explicit size-1 batch dims
      {{5, 7}, {2, 3, 7, 4}},           // shared left operand
      {{2, 1, 5, 7}, {1, 3, 7, 4}},     // both broadcast
      {{4, 1, 1, 33}, {1, 33, 1}},      // 1x1 products
      {{1, 1, 65, 130}, {130, 17}},     // batch of one
  };
  for (const auto& [sa, sb] : cases) expect_both_types(sa, sb);
  EXPECT_EQ(matmul(randn<float>({2, 1, 5, 7}), randn<float>({3, 7, 4})).shape(), (Shape{2, 3, 5, 4}));
}

TEST(Matmul, ManySmallProductsAndFewLargeOnes) {
  // Small products: one per thread. Few large ones: Eigen's threads inside each.
  expect_both_types({64, 33, 65}, {64, 65, 17});
  expect_both_types({3, 200, 150}, {3, 150, 170});
  expect_both_types({2, 130, 140}, {140, 150});
}

TEST(Matmul, NonContiguousOperands) {
  auto check_both = [](auto make_a, auto make_b) {
    expect_matches_reference(make_a(float{}), make_b(float{}), float_tol);
    expect_matches_reference(make_a(double{}), make_b(double{}), double_tol);
  };
  // Transposed (column-major) matrices, either side or both.
  check_both([](auto t) { return transpose(randn<decltype(t)>({33, 7}), 0, 1); },
             [](auto t) { return randn<decltype(t)>({33, 65}); });
  check_both([](auto t) { return randn<decltype(t)>({7, 33}); },
             [](auto t) { return transpose(randn<decltype(t)>({65, 33}), 0, 1); });
  check_both([](auto t) { return transpose(randn<decltype(t)>({130, 65}), 0, 1); },
             [](auto t) { return transpose(randn<decltype(t)>({17, 130}), 0, 1); });
  // Batched transposes, and permuted batch dims over row-major matrices.
  check_both([](auto t) { return transpose(randn<decltype(t)>({3, 7, 5}), -1, -2); },
             [](auto t) { return transpose(randn<decltype(t)>({3, 4, 7}), -1, -2); });
  check_both([](auto t) { return permute(randn<decltype(t)>({5, 3, 7}), {1, 0, 2}); },
             [](auto t) { return permute(randn<decltype(t)>({7, 3, 4}), {1, 0, 2}); });
  // Shared right operand whose left side cannot be folded into rows (batch dims permuted).
  check_both([](auto t) { return permute(randn<decltype(t)>({5, 3, 7}), {1, 0, 2}); },
             [](auto t) { return randn<decltype(t)>({7, 4}); });
  check_both([](auto t) { return transpose(randn<decltype(t)>({2, 7, 5}), -1, -2); },
             [](auto t) { return transpose(randn<decltype(t)>({4, 7}), 0, 1); });
  // Row stride larger than the row (a narrowed matrix): still read in place.
  check_both([](auto t) { return narrow(randn<decltype(t)>({7, 40}), 1, 3, 33); },
             [](auto t) { return narrow(randn<decltype(t)>({33, 20}), 1, 2, 17); });
  check_both([](auto t) { return narrow(randn<decltype(t)>({2, 5, 40}), 2, 3, 33); },
             [](auto t) { return randn<decltype(t)>({33, 6}); });
  // Layouts Eigen cannot read (stepped slices, stride-0 expanded rows, 1-D slices): copied first.
  check_both([](auto t) { return slice(randn<decltype(t)>({7, 66}), 1, 0, 66, 2); },
             [](auto t) { return slice(randn<decltype(t)>({66, 17}), 0, 1, 66, 2); });
  check_both([](auto t) { return expand(randn<decltype(t)>({1, 33}), {7, 33}); },
             [](auto t) { return expand(randn<decltype(t)>({33, 1}), {33, 5}); });
  check_both([](auto t) { return expand(randn<decltype(t)>({1, 5, 7}), {3, 5, 7}); },
             [](auto t) { return randn<decltype(t)>({3, 7, 4}); });
  check_both([](auto t) { return slice(randn<decltype(t)>({66}), 0, 0, 66, 2); },
             [](auto t) { return slice(randn<decltype(t)>({33, 10}), 1, 0, 10, 3); });
}

TEST(Matmul, RowMajorAndTransposedOperandsAreReadInPlace) {
  using cpu::GemmLayout;
  const auto x = randn<float>({7, 33});
  EXPECT_EQ(cpu::gemm_layout(x).layout, GemmLayout::row_major);
  EXPECT_EQ(cpu::gemm_layout(transpose(x, 0, 1)).layout, GemmLayout::col_major);
  EXPECT_EQ(cpu::gemm_layout(transpose(x, 0, 1)).leading, 33);
  EXPECT_EQ(cpu::gemm_layout(narrow(x, 1, 1, 5)).leading, 33);
  EXPECT_EQ(cpu::gemm_layout(transpose(randn<float>({4, 33, 7}), -1, -2)).layout, GemmLayout::col_major);
  EXPECT_EQ(cpu::gemm_layout(slice(x, 1, 0, 33, 2)).layout, GemmLayout::unsupported);
  EXPECT_EQ(cpu::gemm_layout(expand(randn<float>({1, 33}), {7, 33})).layout, GemmLayout::unsupported);
  // No copy for the readable layouts, a copy for the others.
  EXPECT_EQ(detail::gemm_readable(transpose(x, 0, 1)).data(), x.data());
  EXPECT_EQ(detail::gemm_readable(narrow(x, 1, 1, 5)).data(), x.data() + 1);
  EXPECT_NE(detail::gemm_readable(slice(x, 1, 0, 33, 2)).data(), x.data());
}

TEST(Matmul, EmptyOperands) {
  expect_both_types({0, 5}, {5, 3});
  expect_both_types({4, 5}, {5, 0});
  expect_both_types({0, 4, 5}, {5, 3});
  const auto zero_k = matmul(randn<float>({4, 0}), randn<float>({0, 3}));  // sums of nothing
  EXPECT_EQ(zero_k.shape(), (Shape{4, 3}));
  for (float v : zero_k.to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(matmul(randn<double>({0}), randn<double>({0})).item(), 0.0);
}

TEST(Matmul, LowPrecisionThroughFloat) {
  // Against the exact product of the rounded inputs; the sums run in float and the output is rounded
  // once to bf16/fp16, which moves each element by at most u = 2^-8 (bf16) or 2^-11 (fp16) of itself:
  // the relative error is at most u plus float's (about 1e-7 at K = 65).
  for (const auto& [sa, sb] : std::vector<std::pair<Shape, Shape>>{{{33, 65}, {65, 17}}, {{2, 7, 33}, {33}}}) {
    expect_matches_reference(cast<bf16>(randn<float>(sa)), cast<bf16>(randn<float>(sb)), 0x1p-8 + 1e-6);
    expect_matches_reference(cast<fp16>(randn<float>(sa)), cast<fp16>(randn<float>(sb)), 0x1p-11 + 1e-6);
  }
}

TEST(Matmul, DeterministicAcrossCalls) {
  const auto a = randn<float>({3, 65, 130}), b = randn<float>({130, 17});
  EXPECT_EQ(matmul(a, b).to_vector(), matmul(a, b).to_vector());
  const auto c = randn<float>({300, 300});
  EXPECT_EQ(matmul(c, c).to_vector(), matmul(c, c).to_vector());
}

TEST(Matmul, GradcheckEveryShapeCase) {
  auto f = [](const std::vector<Tensor<double>>& x) { return matmul(x[0], x[1]); };
  const std::vector<std::pair<Shape, Shape>> cases{
      {{7}, {7}},                 // dot
      {{3, 7}, {7, 5}},           // matrices
      {{1, 1}, {1, 1}},
      {{7}, {7, 5}},              // vector · matrix
      {{3, 7}, {7}},              // matrix · vector
      {{7}, {2, 7, 3}},           // vector · batch
      {{2, 3, 7}, {7}},           // batch · vector
      {{2, 3, 4}, {2, 4, 5}},     // batch
      {{2, 1, 3, 4}, {3, 4, 2}},  // broadcast batch on both sides
      {{2, 3, 4}, {4, 5}},        // shared right operand (folded backward)
      {{2, 3, 4}, {1, 4, 5}},
      {{3, 4}, {2, 4, 5}},        // shared left operand
      {{1, 3, 4}, {2, 1, 4, 5}},
  };
  for (const auto& [sa, sb] : cases) {
    SCOPED_TRACE(str(sa, " · ", sb));
    EXPECT_GRADCHECK(f, {randn<double>(sa), randn<double>(sb)});
  }
}

TEST(Matmul, GradcheckNonContiguousLeaves) {
  auto f = [](const std::vector<Tensor<double>>& x) { return matmul(x[0], x[1]); };
  EXPECT_GRADCHECK(f, {transpose(randn<double>({5, 3}), 0, 1).detach(), transpose(randn<double>({4, 5}), 0, 1).detach()});
  EXPECT_GRADCHECK(f, {transpose(randn<double>({2, 5, 3}), -1, -2).detach(), randn<double>({5, 4})});
  EXPECT_GRADCHECK(f, {permute(randn<double>({3, 2, 4}), {1, 0, 2}).detach(), randn<double>({4, 5})});
  EXPECT_GRADCHECK(f, {slice(randn<double>({3, 10}), 1, 0, 10, 2).detach(), randn<double>({2, 5, 4})});
  EXPECT_GRADCHECK(f, {slice(randn<double>({9}), 0, 0, 9, 2).detach(), randn<double>({5})});
}

// Linear's product x·Wᵀ, W a row-major [n, k] leaf read through a transposed view: W's gradient
// (made in W's own layout, dBᵀ = dCᵀ·A, so that the leaf keeps it without a strided copy: that
// shows in a GPU profile, not here) is row-major with the values of a double triple loop; at odd
// sizes, batched, and with a 1-D x.
TEST(Matmul, TransposedWeightGetsARowMajorGradient) {
  const std::vector<std::pair<Shape, Shape>> cases{{{5, 7}, {3, 7}}, {{2, 9, 13}, {11, 13}}, {{13}, {6, 13}},
                                                   {{3, 2, 5, 4}, {7, 4}}};
  for (const auto& [sx, sw] : cases) {
    SCOPED_TRACE(str(sx, " · ", sw, "ᵀ"));
    auto x = randn<double>(sx).requires_grad_();
    auto w = randn<double>(sw).requires_grad_();
    const Tensor<double> y = matmul(x, transpose(w, 0, 1));
    const auto c = randn<double>(y.shape());
    sum(mul(y, c)).backward();
    ASSERT_TRUE(w.grad().is_contiguous()) << "strides " << str(w.grad().strides());
    // dW[j, p] = sum over rows r of c[r, j] · x[r, p].
    const std::int64_t n = sw[0], k = sw[1], rows = x.numel() / k;
    const auto xv = x.to_vector(), cv = c.to_vector(), gw = w.grad().to_vector();
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t p = 0; p < k; ++p) {
        double expected = 0.0;
        for (std::int64_t r = 0; r < rows; ++r)
          expected += cv[static_cast<std::size_t>(r * n + j)] * xv[static_cast<std::size_t>(r * k + p)];
        EXPECT_NEAR(gw[static_cast<std::size_t>(j * k + p)], expected, 1e-11);
      }
    EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& in) { return matmul(in[0], transpose(in[1], 0, 1)); },
                     {randn<double>(sx), randn<double>(sw)});
  }
}

TEST(Matmul, GradientsHaveTheInputShapesAndSumBroadcastBatches) {
  auto a = randn<double>({2, 1, 3, 4}).requires_grad_();
  auto b = randn<double>({5, 4, 2}).requires_grad_();
  sum(matmul(a, b)).backward();
  EXPECT_EQ(a.grad().shape(), a.shape());
  EXPECT_EQ(b.grad().shape(), b.shape());
  // d sum(A·B) / dA[.., i, p] = sum over the 5 broadcast products and columns j of B[h, p, j].
  const auto bv = b.to_vector();
  const auto ga = a.grad().to_vector();
  for (std::int64_t p = 0; p < 4; ++p) {
    double expected = 0.0;
    for (std::int64_t h = 0; h < 5; ++h)
      for (std::int64_t j = 0; j < 2; ++j) expected += bv[static_cast<std::size_t>(h * 8 + p * 2 + j)];
    for (std::int64_t r = 0; r < 6; ++r) EXPECT_NEAR(ga[static_cast<std::size_t>(r * 4 + p)], expected, 1e-12);
  }
  // Float and bf16 graphs run too (backward uses matmul in the same dtype).
  auto af = randn<float>({3, 4}).requires_grad_();
  auto bh = cast<bf16>(randn<float>({4, 2})).requires_grad_();
  sum(matmul(af, transpose(af, 0, 1))).backward();
  sum(matmul(cast<bf16>(af), bh)).backward();
  EXPECT_EQ(bh.grad().shape(), (Shape{4, 2}));
}

TEST(Matmul, ShapeErrorsNameOpAndShapes) {
  EXPECT_KILN_ERROR(matmul(randn<float>({2, 3}), randn<float>({4, 5})), "matmul", "[2, 3]", "[4, 5]",
                    "inner dimensions 3 and 4 differ");
  EXPECT_KILN_ERROR(matmul(randn<float>({3}), randn<float>({4})), "matmul", "[3]", "[4]", "inner dimensions");
  EXPECT_KILN_ERROR(matmul(randn<float>({2, 3}), randn<float>({2})), "matmul", "[2, 3]", "[2]", "inner dimensions 3 and 2");
  EXPECT_KILN_ERROR(matmul(randn<float>({2, 3, 4}), randn<float>({5, 4, 6})), "matmul", "[2, 3, 4]", "[5, 4, 6]",
                    "batch dimensions [2] and [5] cannot be broadcast");
  EXPECT_KILN_ERROR(matmul(randn<float>({2, 3, 3, 4}), randn<float>({4, 4, 6})), "matmul", "batch dimensions [2, 3] and [4]");
  EXPECT_KILN_ERROR(matmul(randn<float>({}), randn<float>({3})), "matmul", "[]", "[3]", "at least one dimension");
  EXPECT_KILN_ERROR(matmul(Tensor<float>(), randn<float>({3})), "matmul", "undefined");
}

// A gradient a received before (a residual's, or another consumer's of a shared input) is added in
// the product's epilogue (matmul_add) when no batch dims are summed: the values of the separate
// sum, and the usual path where batch dims are summed (a broadcast against a batched b).
TEST(Matmul, FoldsTheGradientReceivedBeforeIntoDa) {
  auto residual_block = [](const std::vector<Tensor<double>>& in) { return add(in[0], matmul(in[0], in[1])); };
  EXPECT_GRADCHECK(residual_block, {randn<double>({2, 3, 4}), randn<double>({4, 4})});
  EXPECT_GRADCHECK(residual_block, {randn<double>({5, 6}), randn<double>({6, 6})});
  // a [3, 4] broadcast over b's batch of 2: da sums the batch, no fold.
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& in) { return add(in[0], sum(matmul(in[0], in[1]), {0})); },
                   {randn<double>({3, 4}), randn<double>({2, 4, 4})});
  // Float: the fold's sum equals the separate one's (on the CPU matmul_add adds as accumulate does).
  const auto x = randn<float>({7, 5}), w = randn<float>({5, 5}), c = randn<float>({7, 5});
  auto a = x.detach().requires_grad_();
  sum(mul(add(a, matmul(a, w)), c)).backward();
  EXPECT_EQ(a.grad().to_vector(), add(c, matmul(c, transpose(w, 0, 1))).to_vector());
}
