// softmax, log_softmax (ops/softmax.hpp) and cross_entropy (ops/cross_entropy.hpp): forward
// against double references, extreme inputs, gradients along several dims, ignore_index,
// reductions and errors.
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// softmax / log_softmax of a row-major array along `dim`, in double: element (o, k, j) of the
// [outer, n, inner] view sits at (o * n + k) * inner + j.
std::vector<double> reference_softmax(const std::vector<double>& x, const Shape& shape, std::int64_t dim, bool log) {
  const auto d = static_cast<std::size_t>(dim < 0 ? dim + static_cast<std::int64_t>(shape.size()) : dim);
  std::int64_t outer = 1, inner = 1;
  for (std::size_t i = 0; i < d; ++i) outer *= shape[i];
  for (std::size_t i = d + 1; i < shape.size(); ++i) inner *= shape[i];
  const std::int64_t n = shape[d];
  std::vector<double> y(x.size());
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::int64_t j = 0; j < inner; ++j) {
      auto at = [&](std::int64_t k) { return static_cast<std::size_t>((o * n + k) * inner + j); };
      double m = -kInf;
      for (std::int64_t k = 0; k < n; ++k) m = std::max(m, x[at(k)]);
      double s = 0.0;
      for (std::int64_t k = 0; k < n; ++k) s += std::exp(x[at(k)] - m);
      for (std::int64_t k = 0; k < n; ++k) y[at(k)] = log ? x[at(k)] - m - std::log(s) : std::exp(x[at(k)] - m) / s;
    }
  }
  return y;
}

// Per-row cross-entropy of [rows, C] logits (row-major) in double; ignored rows give 0.
std::vector<double> reference_ce_rows(const std::vector<double>& x, std::int64_t classes,
                                      const std::vector<std::int64_t>& target, std::int64_t ignore_index) {
  std::vector<double> loss(target.size(), 0.0);
  for (std::size_t r = 0; r < target.size(); ++r) {
    if (target[r] == ignore_index) continue;
    const double* row = x.data() + r * static_cast<std::size_t>(classes);
    double m = -kInf, s = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) m = std::max(m, row[c]);
    for (std::int64_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
    loss[r] = m + std::log(s) - row[target[r]];
  }
  return loss;
}

template <class T>
void check_softmax_forward(const Tensor<T>& x, std::int64_t dim, double tol) {
  const auto xs = as_double(x);
  for (bool log : {false, true}) {
    const Tensor<T> y = log ? log_softmax(x, dim) : softmax(x, dim);
    EXPECT_EQ(y.shape(), x.shape());
    EXPECT_LE(relative_error(as_double(y), reference_softmax(xs, x.shape(), dim, log)), tol)
        << (log ? "log_softmax" : "softmax") << " of shape " << str(x.shape()) << " strides " << str(x.strides())
        << " dim " << dim;
  }
}

}  // namespace

TEST(Softmax, MatchesDoubleReference) {
  const std::vector<Shape> shapes = {{1}, {7}, {5, 1}, {4, 7}, {3, 1003}, {1003, 3}, {2, 3, 5}};
  for (const Shape& shape : shapes) {
    for (std::int64_t dim : {std::int64_t{0}, std::int64_t{-1}}) {
      check_softmax_forward(randn<float>(shape, 0.0, 3.0), dim, 1e-6);
      check_softmax_forward(randn<double>(shape, 0.0, 3.0), dim, 1e-13);
    }
  }
  check_softmax_forward(randn<float>({2, 3, 5}), 1, 1e-6);
  check_softmax_forward(randn<double>({4, 1, 6}), -2, 1e-13);
  EXPECT_EQ(softmax(full<float>({}, 3.0f)).item(), 1.0f);  // a scalar is a row of one
}

TEST(Softmax, NonContiguousInputs) {
  for (std::int64_t dim : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1}}) {
    check_softmax_forward(transpose(randn<float>({1003, 7}), 0, 1), dim == 1 ? -1 : dim, 1e-6);
    check_softmax_forward(transpose(randn<double>({5, 4, 3}), 0, 2), dim, 1e-13);
    check_softmax_forward(slice(randn<double>({6, 15}), 1, 1, 15, 3), dim == 1 ? 0 : dim, 1e-13);
    check_softmax_forward(expand(randn<double>({1, 9}), {4, 9}), dim == 1 ? 0 : dim, 1e-13);
  }
}

TEST(Softmax, LargeAndInfiniteInputsStayFinite) {
  // Without subtracting the max, exp(1000) overflows.
  auto big = tensor<float>({1000, 1000, 999, -1000}, {1, 4});
  const auto s = softmax(big).to_vector();
  const double e = std::exp(-1.0), z = 2.0 + e;
  EXPECT_NEAR(s[0], 1.0 / z, 1e-7);
  EXPECT_NEAR(s[2], e / z, 1e-7);
  EXPECT_EQ(s[3], 0.0f);
  const auto l = log_softmax(big).to_vector();
  EXPECT_NEAR(l[0], -std::log(z), 1e-6);  // exact to float rounding of the result, not of 1000
  EXPECT_NEAR(l[2], -1.0 - std::log(z), 1e-6);
  EXPECT_NEAR(l[3], -2000.0 - std::log(z), 1e-3);
  check_softmax_forward(randn<float>({9, 33}, 0.0, 1000.0), -1, 1e-6);
  check_softmax_forward(add(randn<double>({9, 33}), 1e4), 0, 1e-12);

  // -inf entries (masked positions) get probability 0 and log-probability -inf; others are exact.
  auto masked = tensor<double>({-kInf, 1.0, -kInf, 2.0}, {1, 4});
  const auto ms = softmax(masked).to_vector();
  EXPECT_EQ(ms[0], 0.0);
  EXPECT_NEAR(ms[3], 1.0 / (1.0 + std::exp(-1.0)), 1e-15);
  const auto ml = log_softmax(masked).to_vector();
  EXPECT_EQ(ml[2], -kInf);
  EXPECT_NEAR(ml[1], -1.0 - std::log(1.0 + std::exp(-1.0)), 1e-15);
}

TEST(Softmax, NanPoisonsOnlyItsRow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto x = tensor<float>({1, nan, 3, 0, 1, 2}, {2, 3});
  for (bool log : {false, true}) {
    const auto y = (log ? log_softmax(x) : softmax(x)).to_vector();
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(i)])) << i;
    for (int i = 3; i < 6; ++i) EXPECT_FALSE(std::isnan(y[static_cast<std::size_t>(i)])) << i;
  }
  // A row of -inf has no probability distribution: NaN, as in PyTorch.
  const auto all_masked = softmax(full<float>({3}, -std::numeric_limits<float>::infinity())).to_vector();
  EXPECT_TRUE(std::isnan(all_masked[0]));
}

TEST(Softmax, Gradients) {
  for (std::int64_t dim : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1}}) {
    EXPECT_GRADCHECK([dim](const std::vector<Tensor<double>>& x) { return softmax(x[0], dim); },
                     {randn<double>({3, 7, 2})});
    EXPECT_GRADCHECK([dim](const std::vector<Tensor<double>>& x) { return log_softmax(x[0], dim); },
                     {randn<double>({3, 7, 2})});
    EXPECT_GRADCHECK([dim](const std::vector<Tensor<double>>& x) { return softmax(x[0], dim); },
                     {transpose(randn<double>({4, 3, 5}), 0, 2).detach()});
    EXPECT_GRADCHECK([dim](const std::vector<Tensor<double>>& x) { return log_softmax(x[0], dim); },
                     {transpose(randn<double>({4, 3, 5}), 0, 2).detach()});
  }
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return softmax(x[0]); }, {randn<double>({1})});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return log_softmax(x[0], 0); }, {randn<double>({33})});
  // An upstream gradient with stride 0 (from sum) and a chain of the two ops.
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return sum(mul(softmax(x[0], 0), x[0]), {0}); },
                   {randn<double>({5, 3})});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return log_softmax(softmax(x[0], 1), 0); },
                   {randn<double>({4, 6})});
}

TEST(Softmax, LowPrecisionRowsComputeInFloat) {
  const auto x = randn<bf16>({5, 37}, 0.0, 3.0);
  const auto xs = as_double(x);
  for (std::int64_t dim : {std::int64_t{0}, std::int64_t{-1}}) {
    // One bf16 rounding of each output: relative error about 2^-9.
    EXPECT_LE(relative_error(as_double(softmax(x, dim)), reference_softmax(xs, x.shape(), dim, false)), 4e-3);
    EXPECT_LE(relative_error(as_double(log_softmax(x, dim)), reference_softmax(xs, x.shape(), dim, true)), 4e-3);
  }
}

#ifdef _OPENMP
TEST(Softmax, SameBitsForAnyThreadCount) {
  const auto x = randn<float>({700, 301});
  const auto t = randint<std::int64_t>(0, 301, {700});
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> out = softmax(x, 0).to_vector();
    for (float v : log_softmax(x).to_vector()) out.push_back(v);
    out.push_back(cross_entropy(x, t).item());
    return out;
  };
  const int saved = omp_get_max_threads();
  const auto one = run(1), two = run(2);
  omp_set_num_threads(saved);
  ASSERT_EQ(one.size(), two.size());
  EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0);
}
#endif

TEST(Softmax, Errors) {
  auto x = randn<float>({2, 3});
  EXPECT_KILN_ERROR(softmax(x, 2), "softmax", "dim 2");
  EXPECT_KILN_ERROR(log_softmax(x, -3), "log_softmax", "dim -3");
  EXPECT_KILN_ERROR(softmax(Tensor<float>()), "softmax", "undefined");
}

TEST(CrossEntropy, MatchesDoubleReference) {
  constexpr std::int64_t classes = 11;
  const std::vector<std::int64_t> targets = {3, -100, 0, 10, 7, -100, 2};
  const auto n = static_cast<std::int64_t>(targets.size());
  const auto t = tensor<std::int64_t>(targets);
  for (const auto& logits : {randn<float>({n, classes}, 0.0, 2.0),
                             transpose(randn<float>({classes, n}, 0.0, 2.0), 0, 1)}) {
    const auto ref = reference_ce_rows(as_double(logits), classes, targets, -100);
    double total = 0.0;
    for (double l : ref) total += l;
    EXPECT_NEAR(cross_entropy(logits, t).item(), total / 5.0, 1e-6 * total);
    EXPECT_NEAR(cross_entropy(logits, t, -100, Reduction::sum).item(), total, 1e-6 * total);
    const auto none = cross_entropy(logits, t, -100, Reduction::none);
    EXPECT_EQ(none.shape(), (Shape{n}));
    EXPECT_LE(relative_error(as_double(none), ref), 1e-6);
  }
  // Leading dims [2, 3] flatten into rows; another ignore_index.
  const auto logits = randn<double>({2, 3, 4}, 0.0, 5.0);
  const std::vector<std::int64_t> tv = {1, 3, 0, 2, 2, 3};
  const auto ref = reference_ce_rows(logits.to_vector(), 4, tv, 2);
  const auto none = cross_entropy(logits, tensor<std::int64_t>(tv, {2, 3}), 2, Reduction::none);
  EXPECT_EQ(none.shape(), (Shape{2, 3}));
  EXPECT_LE(relative_error(none.to_vector(), ref), 1e-14);
  EXPECT_EQ(none.to_vector()[3], 0.0);
  const double mean_ref = (ref[0] + ref[1] + ref[2] + ref[5]) / 4.0;
  EXPECT_NEAR(cross_entropy(logits, tensor<std::int64_t>(tv, {2, 3}), 2).item(), mean_ref, 1e-14 * mean_ref);
  // Non-contiguous targets and logits of the transposed layout give the same losses.
  const auto tt = transpose(tensor<std::int64_t>(tv, {2, 3}), 0, 1);
  const auto lt = transpose(logits, 0, 1);
  const auto none_t = cross_entropy(lt, tt, 2, Reduction::none);
  EXPECT_EQ(none_t.to_vector(), transpose(none, 0, 1).to_vector());
}

TEST(CrossEntropy, LargeLogitsAndWideRows) {
  // logsumexp of logits near 1e4 must not overflow; the loss is small and must stay accurate.
  auto logits = tensor<float>({10000, 10001, 9999}, {1, 3});
  const double ref = std::log(std::exp(-1.0) + 1.0 + std::exp(-2.0));
  EXPECT_NEAR(cross_entropy(logits, tensor<std::int64_t>({1})).item(), ref, 1e-6);
  // A vocabulary-sized row.
  const auto wide = randn<float>({3, 32003}, 0.0, 4.0);
  const std::vector<std::int64_t> tv = {0, 32002, 12345};
  const auto got = cross_entropy(wide, tensor<std::int64_t>(tv), -100, Reduction::none);
  EXPECT_LE(relative_error(as_double(got), reference_ce_rows(as_double(wide), 32003, tv, -100)), 1e-6);
}

TEST(CrossEntropy, Gradients) {
  const auto t = tensor<std::int64_t>({2, -100, 0, 4, 4});
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    EXPECT_GRADCHECK([&t, r](const std::vector<Tensor<double>>& x) { return cross_entropy(x[0], t, -100, r); },
                     {randn<double>({5, 5})});
    EXPECT_GRADCHECK([&t, r](const std::vector<Tensor<double>>& x) { return cross_entropy(x[0], t, -100, r); },
                     {transpose(randn<double>({5, 5}), 0, 1).detach()});
  }
  const auto t2 = tensor<std::int64_t>({0, 1, 2, 1, 0, 2}, {3, 2});
  EXPECT_GRADCHECK([&t2](const std::vector<Tensor<double>>& x) { return cross_entropy(x[0], t2, 1); },
                   {randn<double>({3, 2, 3})});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) {
    return cross_entropy(x[0], tensor<std::int64_t>({0}));
  }, {randn<double>({1, 1})});
}

TEST(CrossEntropy, GradientIsSoftmaxMinusOneHotOverCount) {
  auto x = tensor<double>({0.0, std::log(3.0), 5.0, 5.0}, {2, 2}).requires_grad_();
  cross_entropy(x, tensor<std::int64_t>({1, -100})).backward();
  // Row 0: softmax = [1/4, 3/4], target 1, count 1 -> [1/4, -1/4]; row 1 is ignored.
  const auto g = x.grad().to_vector();
  EXPECT_NEAR(g[0], 0.25, 1e-15);
  EXPECT_NEAR(g[1], -0.25, 1e-15);
  EXPECT_EQ(g[2], 0.0);
  EXPECT_EQ(g[3], 0.0);
}

TEST(CrossEntropy, AllIgnoredGivesNanLikePyTorch) {
  auto x = randn<double>({3, 4}).requires_grad_();
  const auto t = tensor<std::int64_t>({-100, -100, -100});
  auto loss = cross_entropy(x, t);
  EXPECT_TRUE(std::isnan(loss.item()));
  loss.backward();
  EXPECT_EQ(x.grad().to_vector(), std::vector<double>(12, 0.0));
  EXPECT_EQ(cross_entropy(x, t, -100, Reduction::sum).item(), 0.0);
}

TEST(CrossEntropy, Errors) {
  auto logits = randn<float>({4, 5});
  EXPECT_KILN_ERROR(cross_entropy(logits, tensor<std::int64_t>({0, 1, 5, 2})), "cross_entropy", "target 5", "5 classes");
  EXPECT_KILN_ERROR(cross_entropy(logits, tensor<std::int64_t>({0, -1, 3, 2})), "cross_entropy", "target -1",
                    "5 classes");
  EXPECT_KILN_ERROR(cross_entropy(logits, tensor<std::int64_t>({0, 1, 2})), "cross_entropy", "[4, 5]", "[3]");
  EXPECT_KILN_ERROR(cross_entropy(logits, tensor<std::int64_t>({0, 1, 2, 3}, {4, 1})), "cross_entropy", "[4, 5]",
                    "[4, 1]");
  EXPECT_KILN_ERROR(cross_entropy(full<float>({}, 1.0f), full<std::int64_t>({}, 0)), "cross_entropy", "class dim");
}

// ignore_index may be any value: outside [0, classes) (7 of 5 classes, rows 1 and 2 ignored; the
// mean is over the 2 rows left) or a valid class (2: the rows whose target is 2 are ignored). The
// value against the double reference, not just "does not throw".
TEST(CrossEntropy, IgnoreIndexOutOfRangeOrAValidClass) {
  const auto logits = randn<double>({4, 5});
  const std::vector<double> x = logits.to_vector();
  const auto mean_of = [](const std::vector<double>& rows, double kept) {
    double s = 0.0;
    for (double v : rows) s += v;
    return s / kept;
  };
  const std::vector<std::int64_t> out_of_range{0, 7, 7, 2}, valid{0, 2, 4, 2};
  EXPECT_NEAR(cross_entropy(logits, tensor<std::int64_t>(out_of_range), 7).item(),
              mean_of(reference_ce_rows(x, 5, out_of_range, 7), 2.0), 1e-14);
  EXPECT_NEAR(cross_entropy(logits, tensor<std::int64_t>(valid), 2).item(), mean_of(reference_ce_rows(x, 5, valid, 2), 2.0),
              1e-14);
  const auto none = cross_entropy(logits, tensor<std::int64_t>(out_of_range), 7, Reduction::none).to_vector();
  EXPECT_EQ(none[1], 0.0);
  EXPECT_EQ(none[2], 0.0);
  EXPECT_NEAR(none[0], reference_ce_rows(x, 5, out_of_range, 7)[0], 1e-14);
  // Every row ignored: mean is 0/0 = NaN (as PyTorch), sum is 0.
  EXPECT_TRUE(std::isnan(cross_entropy(logits, tensor<std::int64_t>({9, 9, 9, 9}), 9).item()));
  EXPECT_EQ(cross_entropy(logits, tensor<std::int64_t>({9, 9, 9, 9}), 9, Reduction::sum).item(), 0.0);
}
