// Reductions: sum and mean (ops/reduce.hpp), max/min/amax/amin/argmax/argmin (ops/reduce_max.hpp):
// forward against plain double loops, gradients, ties, NaN, errors and thread-count determinism.
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

enum class Ref { sum, mean, max, min };

// Reference reduction of a row-major array of `shape` over the dims in `mask`: walks every input
// element with its multi-index and folds it into the output element its kept dims name.
// Also returns, per output, the row-major index within the reduced range of the first extremum.
struct RefResult {
  std::vector<double> values;
  std::vector<std::int64_t> index;
};

RefResult reference(const std::vector<double>& x, const Shape& shape, const std::vector<bool>& mask, Ref op) {
  std::int64_t n_out = 1, n_red = 1;
  for (std::size_t d = 0; d < shape.size(); ++d) (mask[d] ? n_red : n_out) *= shape[d];
  RefResult r;
  r.values.assign(static_cast<std::size_t>(n_out), 0.0);
  r.index.assign(static_cast<std::size_t>(n_out), -1);
  std::vector<std::int64_t> idx(shape.size(), 0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::int64_t o = 0, k = 0;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      if (mask[d]) k = k * shape[d] + idx[d];
      else o = o * shape[d] + idx[d];
    }
    double& acc = r.values[static_cast<std::size_t>(o)];
    std::int64_t& at = r.index[static_cast<std::size_t>(o)];
    const double v = x[i];
    switch (op) {
      case Ref::sum:
      case Ref::mean: acc += v; break;
      case Ref::max:
      case Ref::min: {
        const bool better = op == Ref::max ? v > acc : v < acc;
        if (at < 0 || (!std::isnan(acc) && (std::isnan(v) || better))) {
          acc = v;
          at = k;
        }
        break;
      }
    }
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  if (op == Ref::mean)
    for (auto& v : r.values) v /= static_cast<double>(n_red);
  return r;
}

std::vector<bool> mask_of(const Shape& shape, const std::vector<std::int64_t>& dims) {
  std::vector<bool> mask(shape.size(), dims.empty());
  for (auto d : dims) mask[static_cast<std::size_t>(d < 0 ? d + static_cast<std::int64_t>(shape.size()) : d)] = true;
  return mask;
}

Shape reduced(const Shape& shape, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (!mask[d]) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

struct Case {
  Shape shape;
  std::vector<std::int64_t> dims;
};

const std::vector<Case> kCases = {
    {{7}, {}},        {{7}, {0}},          {{1}, {-1}},          {{5, 33}, {1}},      {{5, 33}, {0}},
    {{5, 33}, {}},    {{3, 1, 5, 4}, {0, 2}}, {{3, 1, 5, 4}, {-1, 1}}, {{3, 4, 5}, {-2}}, {{2, 3, 4}, {0, 1, 2}},
};

// Fresh inputs in several layouts: contiguous, transposed, sliced with a step, and broadcast.
template <class T>
std::vector<Tensor<T>> layouts(const Shape& shape) {
  std::vector<Tensor<T>> out;
  out.reserve(4);
  out.push_back(randn<T>(shape));
  if (shape.size() >= 2) {
    Shape swapped = shape;
    std::swap(swapped.front(), swapped.back());
    out.push_back(transpose(randn<T>(swapped), 0, -1));
    Shape wide = shape;
    wide.back() = 2 * shape.back() + 1;
    out.push_back(slice(randn<T>(wide), -1, 1, wide.back(), 2));
    Shape one = shape;
    one.front() = 1;
    out.push_back(expand(randn<T>(one), shape));
  }
  return out;
}

}  // namespace

TEST(Reduce, SumAndMeanMatchDoubleLoops) {
  for (const auto& c : kCases) {
    for (const auto& x : layouts<float>(c.shape)) {
      for (bool keepdim : {false, true}) {
        const auto mask = mask_of(c.shape, c.dims);
        const auto xs = as_double(x);
        for (Ref op : {Ref::sum, Ref::mean}) {
          const Tensor<float> y = op == Ref::sum ? sum(x, c.dims, keepdim) : mean(x, c.dims, keepdim);
          EXPECT_EQ(y.shape(), reduced(c.shape, mask, keepdim)) << str(c.shape);
          EXPECT_LE(relative_error(y.to_vector(), reference(xs, c.shape, mask, op).values), 1e-6)
              << "shape " << str(c.shape) << " dims " << str(c.dims) << " keepdim " << keepdim;
        }
      }
    }
  }
}

TEST(Reduce, SumOfEmptyIsZeroAndMeanOfEmptyThrows) {
  auto x = zeros<double>({0, 3});
  EXPECT_EQ(sum(x).item(), 0.0);
  EXPECT_EQ(sum(x, {0}).to_vector(), (std::vector<double>{0.0, 0.0, 0.0}));
  EXPECT_KILN_ERROR(mean(x, {0}), "mean", "[0, 3]");
  EXPECT_KILN_ERROR(sum(x, {2}), "sum", "dim 2");
  EXPECT_KILN_ERROR(sum(x, {1, -1}), "sum", "twice");
}

TEST(Reduce, SumAndMeanGradients) {
  for (bool keepdim : {false, true}) {
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return sum(x[0], {1}, keepdim); },
                     {randn<double>({3, 5, 2})});
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return mean(x[0], {0, -1}, keepdim); },
                     {randn<double>({3, 5, 2})});
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return mean(x[0], {}, keepdim); },
                     {transpose(randn<double>({5, 3}), 0, 1).detach()});
  }
}

TEST(Reduce, MaxMinAlongDimMatchReference) {
  const std::vector<std::pair<Shape, std::int64_t>> cases = {
      {{1}, 0}, {{7}, 0}, {{7}, -1}, {{5, 33}, 1}, {{5, 33}, 0}, {{3, 4, 5}, 1}, {{3, 4, 5}, -1}, {{2, 1, 3}, 1}};
  for (const auto& [shape, dim] : cases) {
    for (const auto& x : layouts<double>(shape)) {
      const auto mask = mask_of(shape, {dim});
      const auto xs = as_double(x);
      for (bool keepdim : {false, true}) {
        for (Ref op : {Ref::max, Ref::min}) {
          const auto [values, indices] = op == Ref::max ? max(x, dim, keepdim) : min(x, dim, keepdim);
          const RefResult ref = reference(xs, shape, mask, op);
          EXPECT_EQ(values.shape(), reduced(shape, mask, keepdim));
          EXPECT_EQ(indices.shape(), reduced(shape, mask, keepdim));
          EXPECT_EQ(values.to_vector(), ref.values) << str(shape) << " dim " << dim;
          EXPECT_EQ(indices.to_vector(), ref.index) << str(shape) << " dim " << dim;
          const auto arg = op == Ref::max ? argmax(x, dim, keepdim) : argmin(x, dim, keepdim);
          EXPECT_EQ(arg.to_vector(), ref.index);
        }
      }
    }
  }
}

TEST(Reduce, AmaxAminMatchReference) {
  for (const auto& c : kCases) {
    for (const auto& x : layouts<float>(c.shape)) {
      const auto mask = mask_of(c.shape, c.dims);
      const auto xs = as_double(x);
      for (bool keepdim : {false, true}) {
        const auto hi = amax(x, c.dims, keepdim), lo = amin(x, c.dims, keepdim);
        EXPECT_EQ(hi.shape(), reduced(c.shape, mask, keepdim));
        EXPECT_EQ(as_double(hi), reference(xs, c.shape, mask, Ref::max).values) << str(c.shape) << str(c.dims);
        EXPECT_EQ(as_double(lo), reference(xs, c.shape, mask, Ref::min).values) << str(c.shape) << str(c.dims);
      }
    }
  }
  // The whole tensor: max(t), min(t), argmax(t) (row-major flat index).
  const auto x = transpose(randn<float>({6, 9}), 0, 1);
  const auto xs = as_double(x);
  const auto all = mask_of(x.shape(), {});
  EXPECT_EQ(static_cast<double>(max(x).item()), reference(xs, x.shape(), all, Ref::max).values[0]);
  EXPECT_EQ(static_cast<double>(min(x).item()), reference(xs, x.shape(), all, Ref::min).values[0]);
  EXPECT_EQ(argmax(x).item(), reference(xs, x.shape(), all, Ref::max).index[0]);
  EXPECT_EQ(argmin(x).item(), reference(xs, x.shape(), all, Ref::min).index[0]);
  EXPECT_EQ(argmax(x).shape(), Shape{});
}

TEST(Reduce, TiesGiveTheFirstIndex) {
  auto x = tensor<float>({1, 3, 3, 0, 2, 2, 2, 5}, {2, 4});
  EXPECT_EQ(max(x, 1).indices.to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(argmax(x, 1).to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(argmin(tensor<float>({4, 1, 1, 1})).item(), 1);
  // A long reduction is folded in parallel blocks: a tie across blocks still picks the first.
  auto long_row = zeros<float>({2, 100000});
  long_row.data()[100] = 7.0f;
  long_row.data()[70000] = 7.0f;
  long_row.data()[100000 + 99999] = 7.0f;
  long_row.data()[100000 + 20000] = 7.0f;
  EXPECT_EQ(argmax(long_row, 1).to_vector(), (std::vector<std::int64_t>{100, 20000}));
  EXPECT_EQ(argmax(long_row).item(), 100);
  EXPECT_EQ(argmin(long_row, 1).to_vector(), (std::vector<std::int64_t>{0, 0}));
}

TEST(Reduce, NanPropagates) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto x = tensor<float>({1, nan, 5, nan, -inf, -inf, -inf, 2}, {2, 4});
  auto [v, i] = max(x, 1);
  EXPECT_TRUE(std::isnan(v.to_vector()[0]));
  EXPECT_EQ(v.to_vector()[1], 2.0f);
  EXPECT_EQ(i.to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(min(x, 1).indices.to_vector(), (std::vector<std::int64_t>{1, 0}));
  EXPECT_TRUE(std::isnan(amax(x).item()));
  EXPECT_TRUE(std::isnan(amin(x, {0}).to_vector()[1]));
  EXPECT_EQ(amin(x, {0}).to_vector()[0], -inf);
  EXPECT_EQ(argmax(x).item(), 1);
  // NaN in the last of many parallel blocks still wins.
  auto long_row = randn<float>({300000});
  long_row.data()[299999] = nan;
  EXPECT_TRUE(std::isnan(amax(long_row).item()));
  EXPECT_EQ(argmin(long_row).item(), 299999);
  // All -inf: the max is -inf at index 0.
  EXPECT_EQ(max(full<float>({3}, -inf), 0).indices.item(), 0);
  EXPECT_EQ(amax(full<float>({3}, -inf)).item(), -inf);
}

TEST(Reduce, MaxMinGradients) {
  // randn in double: ties have probability zero.
  for (bool keepdim : {false, true}) {
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return max(x[0], 1, keepdim).values; },
                     {randn<double>({3, 7, 2})});
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return min(x[0], -1, keepdim).values; },
                     {transpose(randn<double>({5, 3}), 0, 1).detach()});
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return amax(x[0], {0, 2}, keepdim); },
                     {randn<double>({3, 7, 2})});
    EXPECT_GRADCHECK([keepdim](const std::vector<Tensor<double>>& x) { return amin(x[0], {-2}, keepdim); },
                     {transpose(randn<double>({4, 3, 5}), 0, 2).detach()});
  }
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return max(x[0]); }, {randn<double>({4, 5})});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return min(x[0]); }, {randn<double>({33})});
  // Used twice in one graph: both gradients arrive.
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return add(max(x[0], 0).values, amax(x[0], {0})); },
                   {randn<double>({6, 4})});
}

TEST(Reduce, MaxGradientGoesToTheReturnedIndexOnly) {
  auto x = tensor<double>({1, 3, 3, 0, 2, 2}, {2, 3}).requires_grad_();
  sum(max(x, 1).values).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 1, 0, 0, 1, 0}));
}

TEST(Reduce, AmaxSplitsTheGradientAmongTies) {
  auto x = tensor<double>({1, 3, 3, 2, 2, 0}, {2, 3}).requires_grad_();
  amax(x, {1}).backward(tensor<double>({2.0, 6.0}));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 1, 1, 3, 3, 0}));
  auto y = tensor<double>({4, 1, 4, 4}, {2, 2}).requires_grad_();
  max(y).backward();  // the whole-tensor max splits like amax: three ties get 1/3 each
  const double third = 1.0 / 3.0;
  EXPECT_EQ(y.grad().to_vector(), (std::vector<double>{third, 0, third, third}));
  auto z = tensor<double>({-1, -1, 5}).requires_grad_();
  amin(z, {0}, true).backward(tensor<double>({1.0}, {1}));
  EXPECT_EQ(z.grad().to_vector(), (std::vector<double>{0.5, 0.5, 0}));
}

TEST(Reduce, ScalarsAndEmptyInputs) {
  auto s = full<double>({}, 4.0);
  EXPECT_EQ(max(s, 0).values.item(), 4.0);
  EXPECT_EQ(max(s, -1).indices.item(), 0);
  EXPECT_EQ(amax(s).item(), 4.0);
  EXPECT_EQ(argmax(s).item(), 0);
  auto e = zeros<float>({0, 3});
  EXPECT_EQ(max(e, 1).values.shape(), (Shape{0}));
  EXPECT_EQ(amax(e, {1}).shape(), (Shape{0}));
  EXPECT_KILN_ERROR(max(e, 0), "max", "size 0", "[0, 3]");
  EXPECT_KILN_ERROR(amin(e), "amin", "[0, 3]");
  EXPECT_KILN_ERROR(argmax(e), "argmax", "[0, 3]");
  EXPECT_KILN_ERROR(max(e, 2), "max", "dim 2");
  EXPECT_KILN_ERROR(amax(e, {0, 0}), "amax", "twice");
}

TEST(Reduce, NoGraphWithoutRequiresGrad) {
  auto x = randn<double>({3, 4});
  EXPECT_FALSE(max(x, 1).values.requires_grad());
  auto w = randn<double>({3, 4}).requires_grad_();
  EXPECT_TRUE(max(w, 1).values.requires_grad());
  EXPECT_TRUE(max(w, 1, true).values.requires_grad());
  EXPECT_EQ(argmax(w, 1).shape(), (Shape{3}));
  NoGradGuard guard;
  EXPECT_FALSE(amax(w).requires_grad());
}

#ifdef _OPENMP
TEST(Reduce, FloatSumIsTheSameForAnyThreadCount) {
  const auto x = randn<float>({10'000'000});
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const float one = sum(x).item();
  const std::vector<float> one_rows = sum(reshape(x, {10, 1'000'000}), {1}).to_vector();
  omp_set_num_threads(2);
  const float two = sum(x).item();
  const std::vector<float> two_rows = sum(reshape(x, {10, 1'000'000}), {1}).to_vector();
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(&one, &two, sizeof(float)), 0) << one << " vs " << two;
  EXPECT_EQ(std::memcmp(one_rows.data(), two_rows.data(), one_rows.size() * sizeof(float)), 0);
  double ref = 0.0;
  for (float v : x.to_vector()) ref += v;
  EXPECT_NEAR(one, ref, 1e-6 * std::abs(ref) + 1e-3);
}
#endif
