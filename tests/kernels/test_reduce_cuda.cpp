// Reductions on CUDA (kernels/reduce/): sum, mean, max/min with indices, amax/amin, argmax/argmin,
// and their gradients, each compared with the CPU op on the same inputs: odd shapes, every dim,
// keepdim, non-contiguous and broadcast layouts, float/double/bf16 (and integer sums), ties, NaN,
// long reductions split over many blocks, and run-to-run determinism.
#include <cstring>
#include <limits>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

struct Case {
  Shape shape;
  std::vector<std::int64_t> dims;
};

// Odd sizes, every dim and several dim sets; long rows and long columns (split into segments).
const std::vector<Case> kCases = {
    {{1}, {}},           {{7}, {0}},           {{33}, {}},           {{1003}, {-1}},
    {{5, 33}, {1}},      {{5, 33}, {0}},       {{5, 33}, {}},        {{3, 1, 5, 4}, {0, 2}},
    {{3, 1, 5, 4}, {-1, 1}}, {{3, 4, 5}, {-2}}, {{2, 3, 4}, {0, 1, 2}}, {{4, 7, 6, 5}, {1, 3}},
    {{1003, 3}, {0}},    {{3, 1003}, {1}},     {{64, 4099}, {1}},    {{4099, 64}, {0}},
    {{2, 70001}, {1}},   {{40003, 5}, {0}},    {{300007}, {}},       {{7, 33, 65}, {0, 2}},
};

// The same values on the CPU and on the GPU, in the same layout (a copy to the GPU is
// contiguous, so the view is taken on each device).
template <class T>
struct Both {
  Tensor<T> cpu, gpu;
};

template <class T, class View>
Both<T> both(const Tensor<T>& base, View view) {
  return {view(base), view(on_gpu(base))};
}

// Fresh inputs in several layouts: contiguous, transposed, sliced with a step (and an odd offset),
// a unit-stride slice of wider rows, and broadcast (stride 0).
template <class T>
std::vector<Both<T>> layouts(const Shape& shape) {
  std::vector<Both<T>> out;
  out.push_back(both(randn<T>(shape), [](const Tensor<T>& t) { return t; }));
  if (shape.size() >= 2) {
    Shape swapped = shape;
    std::swap(swapped.front(), swapped.back());
    out.push_back(both(randn<T>(swapped), [](const Tensor<T>& t) { return transpose(t, 0, -1); }));
    Shape wide = shape;
    wide.back() = 2 * shape.back() + 1;
    out.push_back(both(randn<T>(wide), [&](const Tensor<T>& t) { return slice(t, -1, 1, wide.back(), 2); }));
    Shape wider = shape;
    wider.back() = shape.back() + 3;
    out.push_back(both(randn<T>(wider), [&](const Tensor<T>& t) { return narrow(t, -1, 3, shape.back()); }));
    Shape one = shape;
    one.front() = 1;
    out.push_back(both(randn<T>(one), [&](const Tensor<T>& t) { return expand(t, shape); }));
  }
  return out;
}

std::string describe(const Tensor<float>& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  return str("shape ", x.shape(), " strides ", x.strides(), " dims ", dims, " keepdim ", keepdim);
}

template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  const auto u = a.to_vector(), v = b.to_vector();
  return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(T)) == 0;
}

}  // namespace

TEST(CudaReduce, SumAndMeanMatchTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (const auto& c : kCases) {
    for (const auto& [x, g] : layouts<float>(c.shape)) {
      ASSERT_EQ(g.strides(), x.strides());
      for (bool keepdim : {false, true}) {
        // Both accumulate in double: only the last rounding to float can differ.
        const auto s = sum(g, c.dims, keepdim), m = mean(g, c.dims, keepdim);
        EXPECT_EQ(s.device(), gpu);
        EXPECT_EQ(s.shape(), sum(x, c.dims, keepdim).shape());
        EXPECT_LE(relative_error(on_cpu(s), sum(x, c.dims, keepdim)), 1e-6) << describe(x, c.dims, keepdim);
        EXPECT_LE(relative_error(on_cpu(m), mean(x, c.dims, keepdim)), 1e-6) << describe(x, c.dims, keepdim);
      }
    }
  }
}

TEST(CudaReduce, SumOfOtherTypes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (const auto& c : kCases) {
    const auto d = randn<double>(c.shape);
    EXPECT_LE(relative_error(on_cpu(sum(on_gpu(d), c.dims)), sum(d, c.dims)), 1e-13) << str(c.shape);
    EXPECT_LE(relative_error(on_cpu(mean(on_gpu(d), c.dims, true)), mean(d, c.dims, true)), 1e-13) << str(c.shape);
    // bf16 and fp16: both devices sum the same values in double (reduce.cuh, math/reduce.hpp) and
    // round once to the output type. The double sums differ at most in their last bits (another
    // order), which moves the rounded result only if the sum lies within ~1e-16 of a rounding
    // boundary: the results are equal.
    const auto b = randn<bf16>(c.shape);
    EXPECT_EQ(relative_error(on_cpu(sum(on_gpu(b), c.dims)), sum(b, c.dims)), 0.0) << str(c.shape);
    const auto h = cast<fp16>(randn<float>(c.shape));
    EXPECT_EQ(relative_error(on_cpu(mean(on_gpu(h), c.dims)), mean(h, c.dims)), 0.0) << str(c.shape);
    // Integers are summed exactly (in double, as on the CPU).
    const auto i = randint<std::int64_t>(-1000, 1000, c.shape);
    EXPECT_EQ(on_cpu(sum(on_gpu(i), c.dims)).to_vector(), sum(i, c.dims).to_vector()) << str(c.shape);
    const auto j = randint<std::int32_t>(-1000, 1000, c.shape);
    EXPECT_EQ(on_cpu(sum(on_gpu(j), c.dims, true)).to_vector(), sum(j, c.dims, true).to_vector()) << str(c.shape);
  }
}

TEST(CudaReduce, LargeSumsAreAccurateAndDeterministic) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const auto x = randn<float>({4096, 4099}, 1.0, 1.0);
  const auto g = on_gpu(x);
  EXPECT_LE(relative_error(on_cpu(sum(g)), sum(x)), 1e-7);
  EXPECT_LE(relative_error(on_cpu(sum(g, {1})), sum(x, {1})), 1e-7);
  EXPECT_LE(relative_error(on_cpu(sum(g, {0})), sum(x, {0})), 1e-7);
  EXPECT_LE(relative_error(on_cpu(mean(transpose(g, 0, 1), {1})), mean(transpose(x, 0, 1), {1})), 1e-7);
  // The same bits on every run (segments and trees depend on the shape only; no atomics).
  const auto big = on_gpu(randn<float>({(1 << 25) + 3}));
  EXPECT_TRUE(same_bits(sum(big), sum(big)));
  EXPECT_TRUE(same_bits(sum(g, {0}), sum(g, {0})));
  EXPECT_TRUE(same_bits(sum(reshape(big, {1, -1}), {1}), sum(big, {0}, true)));
  double ref = 0.0;
  for (float v : on_cpu(big).to_vector()) ref += v;
  EXPECT_NEAR(sum(big).item(), ref, 1e-6 * std::abs(ref) + 1e-3);
}

TEST(CudaReduce, EmptyAndScalarInputs) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const auto e = zeros<float>({0, 3}, gpu);
  EXPECT_EQ(on_cpu(sum(e, {0})).to_vector(), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(sum(e).item(), 0.0f);
  EXPECT_EQ(sum(e, {1}).shape(), (Shape{0}));
  EXPECT_KILN_ERROR(mean(e, {0}), "mean", "[0, 3]");
  EXPECT_KILN_ERROR(amax(e), "amax", "[0, 3]");
  EXPECT_KILN_ERROR(max(e, 0), "max", "size 0", "[0, 3]");
  const auto s = full<float>({}, 2.5f, gpu);
  EXPECT_EQ(sum(s).item(), 2.5f);
  EXPECT_EQ(mean(s, {0}).item(), 2.5f);
  EXPECT_EQ(amax(s).item(), 2.5f);
  EXPECT_EQ(argmax(s).item(), 0);
  EXPECT_EQ(max(s, 0).indices.item(), 0);
}

TEST(CudaReduce, MaxMinAlongEveryDimMatchTheCpuExactly) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const std::vector<Shape> shapes = {{1},       {7},        {1003},       {5, 33},     {3, 4, 5},
                                     {2, 1, 3}, {64, 4099}, {3, 70001}, {40003, 3}};
  for (const Shape& shape : shapes) {
    for (std::int64_t dim = -1; dim < static_cast<std::int64_t>(shape.size()); ++dim) {
      for (const auto& [x, g] : layouts<float>(shape)) {
        for (bool keepdim : {false, true}) {
          const auto [v, i] = max(g, dim, keepdim);
          const auto [cv, ci] = max(x, dim, keepdim);
          EXPECT_EQ(on_cpu(v).to_vector(), cv.to_vector()) << describe(x, {dim}, keepdim);
          EXPECT_EQ(on_cpu(i).to_vector(), ci.to_vector()) << describe(x, {dim}, keepdim);
          EXPECT_EQ(v.shape(), cv.shape());
          const auto [w, j] = min(g, dim, keepdim);
          const auto [cw, cj] = min(x, dim, keepdim);
          EXPECT_EQ(on_cpu(w).to_vector(), cw.to_vector()) << describe(x, {dim}, keepdim);
          EXPECT_EQ(on_cpu(j).to_vector(), cj.to_vector()) << describe(x, {dim}, keepdim);
          EXPECT_EQ(on_cpu(argmax(g, dim, keepdim)).to_vector(), argmax(x, dim, keepdim).to_vector());
          EXPECT_EQ(on_cpu(argmin(g, dim, keepdim)).to_vector(), argmin(x, dim, keepdim).to_vector());
        }
      }
    }
  }
  // bf16 and double: values are exact, so the answers are identical.
  for (const Shape& shape : std::vector<Shape>{{33, 65}, {3, 4099}}) {
    for (std::int64_t dim : {0, 1}) {
      const auto b = randn<bf16>(shape);
      EXPECT_EQ(on_cpu(max(on_gpu(b), dim).indices).to_vector(), max(b, dim).indices.to_vector());
      EXPECT_EQ(on_cpu(argmin(on_gpu(b), dim)).to_vector(), argmin(b, dim).to_vector());
      const auto d = randn<double>(shape);
      EXPECT_EQ(on_cpu(min(on_gpu(d), dim).values).to_vector(), min(d, dim).values.to_vector());
      EXPECT_EQ(on_cpu(argmax(on_gpu(d), dim, true)).to_vector(), argmax(d, dim, true).to_vector());
    }
  }
}

TEST(CudaReduce, AmaxAminAndWholeTensorArgMatchTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (const auto& c : kCases) {
    for (const auto& [x, g] : layouts<float>(c.shape)) {
      for (bool keepdim : {false, true}) {
        EXPECT_EQ(on_cpu(amax(g, c.dims, keepdim)).to_vector(), amax(x, c.dims, keepdim).to_vector())
            << describe(x, c.dims, keepdim);
        EXPECT_EQ(on_cpu(amin(g, c.dims, keepdim)).to_vector(), amin(x, c.dims, keepdim).to_vector())
            << describe(x, c.dims, keepdim);
      }
      // Row-major flat index over the whole tensor, whatever the layout.
      EXPECT_EQ(argmax(g).item(), argmax(x).item()) << describe(x, {}, false);
      EXPECT_EQ(argmin(g).item(), argmin(x).item()) << describe(x, {}, false);
      EXPECT_EQ(max(g).item(), max(x).item());
      EXPECT_EQ(min(g).item(), min(x).item());
    }
    const auto b = randn<bf16>(c.shape);
    EXPECT_EQ(on_cpu(amax(on_gpu(b), c.dims)).to_vector(), amax(b, c.dims).to_vector()) << str(c.shape);
  }
}

TEST(CudaReduce, TiesGiveTheFirstIndex) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const auto x = on_gpu(tensor<float>({1, 3, 3, 0, 2, 2, 2, 5}, {2, 4}));
  EXPECT_EQ(on_cpu(max(x, 1).indices).to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(on_cpu(argmax(x, 1)).to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(on_cpu(argmin(x, 0)).to_vector(), (std::vector<std::int64_t>{0, 1, 1, 0}));
  EXPECT_EQ(argmin(on_gpu(tensor<float>({4, 1, 1, 1}))).item(), 1);
  // Long rows are split among many threads and blocks: ties across them still pick the first.
  auto long_row = zeros<float>({2, 300000});
  long_row.data()[100] = 7.0f;
  long_row.data()[270000] = 7.0f;
  long_row.data()[300000 + 299999] = 7.0f;
  long_row.data()[300000 + 20000] = 7.0f;
  const auto g = on_gpu(long_row);
  EXPECT_EQ(on_cpu(argmax(g, 1)).to_vector(), (std::vector<std::int64_t>{100, 20000}));
  EXPECT_EQ(argmax(g).item(), 100);
  EXPECT_EQ(on_cpu(argmin(g, 1)).to_vector(), (std::vector<std::int64_t>{0, 0}));
  EXPECT_EQ(argmin(g).item(), 0);
  // Columns: ties down a long column, and -0 ties +0.
  auto col = zeros<float>({100003, 3});
  col.data()[3 * 90000 + 1] = 1.0f;
  col.data()[3 * 5 + 1] = 1.0f;
  col.data()[3 * 7 + 2] = -0.0f;
  EXPECT_EQ(on_cpu(argmax(on_gpu(col), 0)).to_vector(), argmax(col, 0).to_vector());
  EXPECT_EQ(on_cpu(argmax(on_gpu(col), 0)).to_vector(), (std::vector<std::int64_t>{0, 5, 0}));
  // All equal: index 0 everywhere.
  const auto flat = on_gpu(full<float>({5, 1000}, 3.0f));
  EXPECT_EQ(on_cpu(argmax(flat, 1)).to_vector(), std::vector<std::int64_t>(5, 0));
  EXPECT_EQ(on_cpu(argmin(flat, 0)).to_vector(), std::vector<std::int64_t>(1000, 0));
}

TEST(CudaReduce, NanPropagatesLikeTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const auto x = tensor<float>({1, nan, 5, nan, -inf, -inf, -inf, 2}, {2, 4});
  const auto g = on_gpu(x);
  const auto [v, i] = max(g, 1);
  EXPECT_TRUE(std::isnan(on_cpu(v).to_vector()[0]));
  EXPECT_EQ(on_cpu(v).to_vector()[1], 2.0f);
  EXPECT_EQ(on_cpu(i).to_vector(), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(on_cpu(min(g, 1).indices).to_vector(), (std::vector<std::int64_t>{1, 0}));
  EXPECT_TRUE(std::isnan(amax(g).item()));
  EXPECT_TRUE(std::isnan(on_cpu(amin(g, {0})).to_vector()[1]));
  EXPECT_EQ(on_cpu(amin(g, {0})).to_vector()[0], -inf);
  EXPECT_EQ(argmax(g).item(), 1);
  EXPECT_TRUE(std::isnan(sum(g).item()));
  EXPECT_LE(relative_error(on_cpu(sum(g, {0})), sum(x, {0})), 0.0);  // NaN positions agree
  // A NaN in the last of many blocks, and NaNs in several: the first one's index.
  auto long_row = randn<float>({300000});
  long_row.data()[299999] = nan;
  EXPECT_TRUE(std::isnan(amax(on_gpu(long_row)).item()));
  EXPECT_EQ(argmin(on_gpu(long_row)).item(), 299999);
  long_row.data()[150001] = nan;
  long_row.data()[200000] = nan;
  EXPECT_EQ(argmax(on_gpu(long_row)).item(), 150001);
  auto rows = randn<float>({4, 5000});
  rows.data()[2 * 5000 + 4999] = nan;
  rows.data()[2 * 5000 + 3000] = nan;
  EXPECT_EQ(on_cpu(argmax(on_gpu(rows), 1)).to_vector(), argmax(rows, 1).to_vector());
  EXPECT_EQ(on_cpu(argmin(on_gpu(transpose(rows, 0, 1)), 0)).to_vector(), argmin(transpose(rows, 0, 1), 0).to_vector());
  // All -inf: the max is -inf at index 0.
  const auto ninf = on_gpu(full<float>({3, 5}, -inf));
  EXPECT_EQ(on_cpu(max(ninf, 1).indices).to_vector(), (std::vector<std::int64_t>{0, 0, 0}));
  EXPECT_EQ(amax(ninf).item(), -inf);
}

TEST(CudaReduce, SumAndMeanGradientsMatchTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (const auto& c : kCases) {
    for (bool keepdim : {false, true}) {
      for (bool use_mean : {false, true}) {
        const auto leaves = layouts<float>(c.shape);
        const auto& leaf = leaves[leaves.size() > 1 ? 1 : 0];  // transposed where there are two dims
        auto x = leaf.cpu.detach().requires_grad_();
        auto xg = leaf.gpu.detach().requires_grad_();
        const auto w = randn<float>(sum(x.detach(), c.dims, keepdim).shape());
        auto reduce = [&](const Tensor<float>& t) {
          return use_mean ? mean(t, c.dims, keepdim) : sum(t, c.dims, keepdim);
        };
        sum(mul(reduce(x), w)).backward();
        sum(mul(reduce(xg), on_gpu(w))).backward();
        ASSERT_TRUE(xg.grad().defined());
        EXPECT_EQ(xg.grad().device(), gpu);
        EXPECT_LE(relative_error(on_cpu(xg.grad()), x.grad()), 1e-6) << str(c.shape) << " dims " << str(c.dims);
      }
    }
  }
}

TEST(CudaReduce, MaxMinAmaxGradientsMatchTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const std::vector<std::pair<Shape, std::int64_t>> along = {{{7}, 0}, {{5, 33}, 1}, {{5, 33}, 0}, {{3, 7, 2}, 1},
                                                             {{64, 4099}, -1}, {{4099, 5}, 0}};
  for (const auto& [shape, dim] : along) {
    for (bool keepdim : {false, true}) {
      for (const auto& [x0, g0] : layouts<double>(shape)) {
        auto x = x0.detach().requires_grad_();
        auto xg = g0.detach().requires_grad_();
        const auto w = randn<double>(max(x0, dim, keepdim).values.shape());
        sum(mul(max(x, dim, keepdim).values, w)).backward();
        sum(mul(max(xg, dim, keepdim).values, on_gpu(w))).backward();
        EXPECT_EQ(on_cpu(xg.grad()).to_vector(), x.grad().to_vector()) << str(shape) << " dim " << dim;
        x.zero_grad();
        xg.zero_grad();
        sum(mul(min(x, dim, keepdim).values, w)).backward();
        sum(mul(min(xg, dim, keepdim).values, on_gpu(w))).backward();
        EXPECT_EQ(on_cpu(xg.grad()).to_vector(), x.grad().to_vector()) << str(shape) << " dim " << dim;
      }
    }
  }
  // amax/amin share the gradient among ties (small integers make many ties).
  for (const auto& c : kCases) {
    const auto x0 = cast<double>(randint<std::int64_t>(0, 3, c.shape));
    auto x = x0.detach().requires_grad_();
    auto xg = on_gpu(x0);
    xg.requires_grad_();
    const auto w = randn<double>(amax(x0, c.dims).shape());
    sum(mul(amax(x, c.dims), w)).backward();
    sum(mul(amax(xg, c.dims), on_gpu(w))).backward();
    EXPECT_LE(relative_error(on_cpu(xg.grad()), x.grad()), 1e-15) << str(c.shape) << " dims " << str(c.dims);
    x.zero_grad();
    xg.zero_grad();
    sum(mul(amin(x, c.dims, true), reshape(w, amin(x0, c.dims, true).shape()))).backward();
    sum(mul(amin(xg, c.dims, true), on_gpu(reshape(w, amin(x0, c.dims, true).shape())))).backward();
    EXPECT_LE(relative_error(on_cpu(xg.grad()), x.grad()), 1e-15) << str(c.shape) << " dims " << str(c.dims);
  }
  // The whole-tensor max splits among ties; bf16 gradients run too.
  auto y = on_gpu(tensor<float>({4, 1, 4, 4}, {2, 2}));
  y.requires_grad_();
  max(y).backward();
  EXPECT_EQ(on_cpu(y.grad()).to_vector(), (std::vector<float>{1.0f / 3, 0, 1.0f / 3, 1.0f / 3}));
  auto b = on_gpu(tensor<float>({1, 3, 3, 0, 2, 2}, {2, 3}));
  b.requires_grad_();
  sum(max(b, 1).values).backward();
  EXPECT_EQ(on_cpu(b.grad()).to_vector(), (std::vector<float>{0, 1, 0, 0, 1, 0}));
}

TEST(CudaReduce, ErrorsNameTheOp) {
  KILN_REQUIRE_GPU();
  const auto x = zeros<float>({2, 3}, gpu);
  EXPECT_KILN_ERROR(sum(x, {2}), "sum", "dim 2");
  EXPECT_KILN_ERROR(sum(x, {1, -1}), "sum", "twice");
  EXPECT_KILN_ERROR(amax(x, {0, 0}), "amax", "twice");
  EXPECT_KILN_ERROR(max(x, 2), "max", "dim 2");
  EXPECT_KILN_ERROR(argmax(zeros<float>({0}, gpu)), "argmax", "[0]");
}
