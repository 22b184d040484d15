// softmax / log_softmax (kernels/softmax/) and the fused cross_entropy (kernels/cross_entropy/) on
// CUDA, forward and backward, compared with the CPU ops: odd shapes, every dim, non-contiguous and
// broadcast layouts, rows of 32000+ classes, float/double/bf16, special values (NaN, -inf, huge),
// ignore_index rows, every Reduction, out-of-range targets, and run-to-run determinism.
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class T>
struct Both {
  Tensor<T> cpu, gpu;
};

// The same values on both devices in the same layout (a copy to the GPU is contiguous, so the
// view is taken on each device).
template <class T, class View>
Both<T> both(const Tensor<T>& base, View view) {
  return {view(base), view(on_gpu(base))};
}

// Contiguous, transposed, a strided slice, a unit-stride slice at an odd offset, broadcast.
template <class T>
std::vector<Both<T>> layouts(const Shape& shape, double stddev = 3.0) {
  std::vector<Both<T>> out;
  out.push_back(both(randn<T>(shape, 0.0, stddev), [](const Tensor<T>& t) { return t; }));
  if (shape.size() >= 2) {
    Shape swapped = shape;
    std::swap(swapped.front(), swapped.back());
    out.push_back(both(randn<T>(swapped, 0.0, stddev), [](const Tensor<T>& t) { return transpose(t, 0, -1); }));
    Shape wide = shape;
    wide.back() = 2 * shape.back() + 1;
    out.push_back(
        both(randn<T>(wide, 0.0, stddev), [&](const Tensor<T>& t) { return slice(t, -1, 1, wide.back(), 2); }));
    Shape wider = shape;
    wider.back() = shape.back() + 5;
    out.push_back(
        both(randn<T>(wider, 0.0, stddev), [&](const Tensor<T>& t) { return narrow(t, -1, 5, shape.back()); }));
    Shape one = shape;
    one.front() = 1;
    out.push_back(both(randn<T>(one, 0.0, stddev), [&](const Tensor<T>& t) { return expand(t, shape); }));
  }
  return out;
}

// Only the contiguous layout.
template <class T>
Both<T> plain(const Shape& shape, double stddev = 3.0) {
  return both(randn<T>(shape, 0.0, stddev), [](const Tensor<T>& t) { return t; });
}

// The CPU op in double precision: the reference for every dtype.
template <class T>
Tensor<double> reference_softmax(const Tensor<T>& x, std::int64_t dim, bool log) {
  const auto xd = cast<double>(x.detach());
  return log ? log_softmax(xd, dim) : softmax(xd, dim);
}

// Forward against the float64 softmax of the same (exactly representable) inputs. Low-precision
// types compute in float and round the output once: round-to-nearest moves each element by at most
// u = 2^-p of itself (p significant bits: 8 for bf16, 11 for fp16), so the relative Frobenius
// error is at most u plus the float computation's (below 1e-6; 1e-5 allowed, as for float).
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-13;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, fp16>) return 0x1p-11 + 1e-5;
  else return 0x1p-8 + 1e-5;
}

template <class T>
void check_forward(const Both<T>& x, std::int64_t dim) {
  for (bool log : {false, true}) {
    const Tensor<T> y = log ? log_softmax(x.gpu, dim) : softmax(x.gpu, dim);
    EXPECT_EQ(y.device(), gpu);
    EXPECT_EQ(y.shape(), x.cpu.shape());
    EXPECT_LE(relative_error(on_cpu(y), reference_softmax(x.cpu, dim, log)), tolerance<T>())
        << (log ? "log_softmax" : "softmax") << " " << dtype_name<T> << " shape " << str(x.cpu.shape()) << " strides "
        << str(x.gpu.strides()) << " dim " << dim;
  }
}

template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  const auto u = a.to_vector(), v = b.to_vector();
  return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(T)) == 0;
}

const std::vector<Shape> kShapes = {{1}, {7}, {33}, {1003}, {5, 1}, {4, 7}, {3, 1003}, {1003, 3}, {2, 3, 5},
                                    {3, 4099}, {2, 5, 33}, {6, 32003}, {70003, 2}};

}  // namespace

TEST(CudaSoftmax, ForwardMatchesTheCpuOnEveryDimAndLayout) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (const Shape& shape : kShapes) {
    for (std::int64_t dim = -1; dim < static_cast<std::int64_t>(shape.size()); ++dim) {
      for (const auto& x : layouts<float>(shape)) check_forward(x, dim);
      check_forward(plain<double>(shape), dim);
      for (const auto& x : layouts<bf16>(shape)) check_forward(x, dim);
    }
  }
  // A scalar is a row of one; fp16 computes in float too.
  EXPECT_EQ(softmax(full<float>({}, 3.0f, gpu)).item(), 1.0f);
  EXPECT_EQ(log_softmax(full<float>({}, 3.0f, gpu)).item(), 0.0f);
  const auto h = cast<fp16>(randn<float>({5, 1003}));
  EXPECT_LE(relative_error(on_cpu(softmax(on_gpu(h))), reference_softmax(h, -1, false)), tolerance<fp16>());
}

TEST(CudaSoftmax, LargeRows) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Rows long enough for a block per row, odd lengths (unaligned rows), a grid-stride loop over
  // many rows, and a strided dim of a large tensor.
  check_forward(plain<float>({4096, 4099}), -1);
  check_forward(plain<float>({4096, 4099}), 0);
  check_forward(plain<bf16>({257, 32000}), -1);
  check_forward(plain<float>({3, 100003}), -1);
  check_forward(plain<float>({2, 262147}, 20.0), 1);
  check_forward(plain<bf16>({2, 50000, 3}), 1);
  check_forward(plain<float>({20000, 1, 7}), -1);
}

TEST(CudaSoftmax, SpecialValuesLikeTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // Huge values (no overflow), -inf entries (probability 0), a NaN row, an all -inf row (NaN).
  auto x = randn<float>({6, 2001}, 0.0, 3.0);
  for (int i = 0; i < 2001; ++i) x.data()[i] = 1000.0f + static_cast<float>(i % 3);
  for (int i = 0; i < 2001; i += 7) x.data()[2001 + i] = -inf;
  x.data()[2 * 2001 + 1999] = nan;
  for (int i = 0; i < 2001; ++i) x.data()[3 * 2001 + i] = -inf;
  x.data()[4 * 2001 + 5] = -inf;
  x.data()[4 * 2001 + 2000] = 1e30f;
  for (const auto& v : {Both<float>{x, on_gpu(x)}, Both<float>{transpose(x, 0, 1), transpose(on_gpu(x), 0, 1)}}) {
    for (bool log : {false, true}) {
      const std::int64_t dim = v.cpu.shape()[0] == 6 ? 1 : 0;
      const auto got = on_cpu(log ? log_softmax(v.gpu, dim) : softmax(v.gpu, dim));
      const auto want = log ? log_softmax(v.cpu, dim) : softmax(v.cpu, dim);
      EXPECT_LE(relative_error(got, want), 1e-5) << (log ? "log_softmax" : "softmax") << " dim " << dim;
      const auto g = got.to_vector(), w = want.to_vector();
      for (std::size_t i = 0; i < g.size(); ++i) {
        ASSERT_EQ(std::isnan(g[i]), std::isnan(w[i])) << i;
        if (std::isinf(w[i])) {
          ASSERT_EQ(g[i], w[i]) << i;
        }
      }
    }
  }
  // A short row with a NaN (warp per row).
  const auto small = tensor<float>({1, nan, 3, 0, 1, 2}, {2, 3});
  const auto y = on_cpu(softmax(on_gpu(small))).to_vector();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(i)])) << i;
  for (int i = 3; i < 6; ++i) EXPECT_FALSE(std::isnan(y[static_cast<std::size_t>(i)])) << i;
}

TEST(CudaSoftmax, BackwardMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const std::vector<Shape> shapes = {{7}, {4, 7}, {3, 1003}, {1003, 3}, {2, 5, 33}, {5, 4099}, {3, 32003}};
  for (const Shape& shape : shapes) {
    for (std::int64_t dim = -1; dim < static_cast<std::int64_t>(shape.size()); ++dim) {
      for (bool log : {false, true}) {
        for (const auto& leaf : layouts<float>(shape)) {
          auto x = leaf.cpu.detach().requires_grad_();
          auto xg = leaf.gpu.detach().requires_grad_();
          const auto w = randn<float>(shape);
          auto f = [&](const Tensor<float>& t) { return log ? log_softmax(t, dim) : softmax(t, dim); };
          sum(mul(f(x), w)).backward();
          sum(mul(f(xg), on_gpu(w))).backward();
          // Reference: the same in double on the CPU.
          auto xd = cast<double>(leaf.cpu.detach()).requires_grad_();
          const auto wd = cast<double>(w);
          sum(mul(log ? log_softmax(xd, dim) : softmax(xd, dim), wd)).backward();
          // The gradient is a difference: softmax dx_i = y_i (w_i − Σ_j w_j y_j), log_softmax
          // dx_i = w_i − y_i Σ_j w_j. Where the terms nearly cancel, dx is much smaller than what
          // it is computed from, and float's error relative to dx has no bound however accurate
          // each step (seen: 2e-5 relative on a [1003, 3] input whose gradient's rms is 2e-3 of
          // w's). So the error is measured against the magnitude of the terms, in double:
          // softmax y_i (|w_i| + Σ_j |w_j| y_j), log_softmax |w_i| + y_i Σ_j |w_j|, and must stay
          // within 1e-5 of it (float rounding of sums of up to 32003 terms); a wrong gradient is
          // off by the order of the terms themselves.
          const auto y = softmax(xd.detach(), dim), aw = abs(wd);
          const auto terms = log ? add(aw, mul(y, sum(aw, {dim}, true))) : mul(y, add(aw, sum(mul(aw, y), {dim}, true)));
          const auto diff = sub(cast<double>(on_cpu(xg.grad())), xd.grad());
          const double error = std::sqrt(sum(mul(diff, diff)).item() / sum(mul(terms, terms)).item());
          EXPECT_LE(error, 1e-5) << relative_error(on_cpu(xg.grad()), xd.grad()) << "; "
              << (log ? "log_softmax" : "softmax") << " shape " << str(shape) << " strides "
              << str(xg.strides()) << " dim " << dim;
        }
      }
    }
  }
  // An upstream gradient with stride 0 (from sum over dim 0), in bf16; double along dim 0.
  for (bool log : {false, true}) {
    auto f = [log](const auto& t, std::int64_t dim) { return log ? log_softmax(t, dim) : softmax(t, dim); };
    const auto base = randn<float>({9, 2001}, 0.0, 2.0);
    const auto b16 = cast<bf16>(base), w = cast<bf16>(randn<float>({2001}));
    auto xb = on_gpu(b16).requires_grad_();
    sum(mul(sum(f(xb, 1), {0}), on_gpu(w))).backward();
    auto xr = cast<double>(b16).requires_grad_();
    sum(mul(sum(f(xr, 1), {0}), cast<double>(w))).backward();
    EXPECT_LE(relative_error(on_cpu(xb.grad()), xr.grad()), 1e-2) << (log ? "log_softmax" : "softmax");
    auto x64 = on_gpu(cast<double>(base)).requires_grad_();
    sum(mul(log ? log_softmax(x64, 0) : softmax(x64, 0), on_gpu(cast<double>(base)))).backward();
    auto c64 = cast<double>(base).requires_grad_();
    sum(mul(log ? log_softmax(c64, 0) : softmax(c64, 0), cast<double>(base))).backward();
    EXPECT_LE(relative_error(on_cpu(x64.grad()), c64.grad()), 1e-12);
  }
}

TEST(CudaSoftmax, SameBitsOnEveryRun) {
  KILN_REQUIRE_GPU();
  const auto x = on_gpu(randn<float>({700, 30001}));
  EXPECT_TRUE(same_bits(softmax(x), softmax(x)));
  EXPECT_TRUE(same_bits(log_softmax(x, 0), log_softmax(x, 0)));
}

// ---- cross_entropy ----

namespace {

// Targets in [0, classes) with every `every`-th row set to ignore_index.
Tensor<std::int64_t> targets_for(const Shape& rows, std::int64_t classes, std::int64_t ignore_index, int every) {
  auto t = randint<std::int64_t>(0, classes, rows);
  for (std::int64_t i = 0; i < t.numel(); i += every) t.data()[i] = ignore_index;
  return t;
}

template <class T>
void check_cross_entropy(const Both<T>& logits, const Tensor<std::int64_t>& targets, std::int64_t ignore_index) {
  const auto tg = on_gpu(targets);
  const auto ref_logits = cast<double>(logits.cpu.detach());
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    auto x = logits.gpu.detach().requires_grad_();
    const auto loss = cross_entropy(x, tg, ignore_index, r);
    auto xd = ref_logits.detach().requires_grad_();
    const auto ref = cross_entropy(xd, targets, ignore_index, r);
    EXPECT_EQ(loss.shape(), ref.shape());
    const double tol = std::is_same_v<T, bf16> ? 1e-2 : (std::is_same_v<T, double> ? 1e-13 : 1e-6);
    EXPECT_LE(relative_error(on_cpu(loss), ref), tol)
        << dtype_name<T> << " logits " << str(logits.cpu.shape()) << " strides " << str(logits.gpu.strides())
        << " reduction " << static_cast<int>(r);
    // Backward with a random upstream gradient for Reduction::none.
    const auto w = randn<double>(ref.shape());
    sum(mul(loss, on_gpu(cast<T>(w)))).backward();
    sum(mul(ref, cast<double>(cast<T>(w)))).backward();
    const double grad_tol = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;
    EXPECT_LE(relative_error(on_cpu(x.grad()), xd.grad()), grad_tol)
        << dtype_name<T> << " gradient, logits " << str(logits.cpu.shape()) << " reduction " << static_cast<int>(r);
  }
}

}  // namespace

TEST(CudaCrossEntropy, MatchesTheCpuForEveryReduction) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (std::int64_t classes : {1, 7, 33, 1003, 4099}) {
    for (const Shape& rows : std::vector<Shape>{{1}, {7}, {33}, {2, 3}}) {
      Shape shape = rows;
      shape.push_back(classes);
      const auto t = targets_for(rows, classes, -100, 3);
      for (const auto& x : layouts<float>(shape, 2.0)) check_cross_entropy(x, t, -100);
      check_cross_entropy(plain<double>(shape, 2.0), t, -100);
      check_cross_entropy(plain<bf16>(shape, 2.0), t, -100);
    }
  }
  // Another ignore_index (a valid class), non-contiguous targets.
  const auto tb = targets_for({5, 4}, 6, 2, 4);
  const auto logits = randn<float>({4, 5, 6});
  check_cross_entropy(Both<float>{logits, on_gpu(logits)}, contiguous(transpose(tb, 0, 1)), 2);
  const auto got = cross_entropy(on_gpu(logits), transpose(on_gpu(tb), 0, 1), 2, Reduction::none);
  const auto want = cross_entropy(logits, transpose(tb, 0, 1), 2, Reduction::none);
  EXPECT_LE(relative_error(on_cpu(got), want), 1e-6);
}

TEST(CudaCrossEntropy, VocabularySizedRows) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (std::int64_t classes : {32000, 32003, 50257}) {
    const auto t = targets_for({37}, classes, -100, 5);
    check_cross_entropy(plain<float>({37, classes}, 4.0), t, -100);
    check_cross_entropy(plain<bf16>({37, classes}, 4.0), t, -100);
  }
  // Many rows (grid-stride over rows), a unit-stride slice of wider rows.
  const auto t = targets_for({300}, 32000, -100, 7);
  const auto wide =
      both(randn<bf16>({300, 32005}, 0.0, 4.0), [](const Tensor<bf16>& x) { return narrow(x, -1, 5, 32000); });
  check_cross_entropy(wide, t, -100);
  // Huge logits: logsumexp must not overflow; the loss is small and stays accurate.
  const auto big = tensor<float>({10000, 10001, 9999}, {1, 3});
  const double ref = std::log(std::exp(-1.0) + 1.0 + std::exp(-2.0));
  EXPECT_NEAR(cross_entropy(on_gpu(big), on_gpu(tensor<std::int64_t>({1}))).item(), ref, 1e-6);
}

TEST(CudaCrossEntropy, IgnoredRowsAndAllIgnored) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  auto x = on_gpu(tensor<float>({0.0f, std::log(3.0f), 5.0f, 5.0f}, {2, 2})).requires_grad_();
  cross_entropy(x, on_gpu(tensor<std::int64_t>({1, -100}))).backward();
  const auto g = on_cpu(x.grad()).to_vector();
  EXPECT_NEAR(g[0], 0.25, 1e-7);
  EXPECT_NEAR(g[1], -0.25, 1e-7);
  EXPECT_EQ(g[2], 0.0f);
  EXPECT_EQ(g[3], 0.0f);
  // Every row ignored: the mean is 0/0 = NaN (as in PyTorch), the gradient zero, the sum 0.
  auto y = on_gpu(randn<float>({3, 4000})).requires_grad_();
  const auto t = on_gpu(tensor<std::int64_t>({-100, -100, -100}));
  auto loss = cross_entropy(y, t);
  EXPECT_TRUE(std::isnan(loss.item()));
  loss.backward();
  EXPECT_EQ(on_cpu(y.grad()).to_vector(), std::vector<float>(12000, 0.0f));
  EXPECT_EQ(cross_entropy(y, t, -100, Reduction::sum).item(), 0.0f);
  EXPECT_EQ(on_cpu(cross_entropy(y, t, -100, Reduction::none)).to_vector(), std::vector<float>(3, 0.0f));
}

TEST(CudaCrossEntropy, ErrorsNameTheTargetAndShapes) {
  KILN_REQUIRE_GPU();
  const auto logits = on_gpu(randn<float>({4, 5}));
  EXPECT_KILN_ERROR(cross_entropy(logits, on_gpu(tensor<std::int64_t>({0, 1, 5, 2}))), "cross_entropy", "target 5",
                    "flat position 2", "5 classes");
  EXPECT_KILN_ERROR(cross_entropy(logits, on_gpu(tensor<std::int64_t>({0, -1, 3, -7}))), "cross_entropy", "target -1",
                    "flat position 1", "5 classes");
  EXPECT_KILN_ERROR(cross_entropy(on_gpu(randn<float>({4, 2000})), on_gpu(tensor<std::int64_t>({0, 1, 2000, 2}))),
                    "cross_entropy", "target 2000", "2000 classes");
  EXPECT_KILN_ERROR(cross_entropy(logits, on_gpu(tensor<std::int64_t>({0, 1, 2}))), "cross_entropy", "[4, 5]", "[3]");
  EXPECT_KILN_ERROR(cross_entropy(logits, tensor<std::int64_t>({0, 1, 2, 3})), "cross_entropy", "cpu", "cuda:0");
  // ignore_index may be any value: outside [0, classes) or a valid class; the values equal the CPU's,
  // and the device still works after the errors above.
  const auto cpu_logits = on_cpu(logits);
  for (auto [targets, ignore] : {std::pair{std::vector<std::int64_t>{0, 7, 7, 2}, std::int64_t{7}},
                                 std::pair{std::vector<std::int64_t>{0, 2, 4, 2}, std::int64_t{2}},
                                 std::pair{std::vector<std::int64_t>{0, 1, 2, 3}, std::int64_t{-100}}})
    for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
      // Same float inputs, sums of 2-4 rows of 5 classes: only the order of a few float additions
      // and the exp/log implementations differ.
      EXPECT_LE(relative_error(on_cpu(cross_entropy(logits, on_gpu(tensor<std::int64_t>(targets)), ignore, r)),
                               cross_entropy(cpu_logits, tensor<std::int64_t>(targets), ignore, r)),
                1e-6)
          << "ignore_index " << ignore << " reduction " << static_cast<int>(r);
    }
}

TEST(CudaCrossEntropy, SameBitsOnEveryRun) {
  KILN_REQUIRE_GPU();
  const auto x = on_gpu(randn<float>({513, 32000}));
  const auto t = on_gpu(targets_for({513}, 32000, -100, 9));
  EXPECT_TRUE(same_bits(cross_entropy(x, t), cross_entropy(x, t)));
  auto a = x.detach().requires_grad_(), b = x.detach().requires_grad_();
  cross_entropy(a, t).backward();
  cross_entropy(b, t).backward();
  EXPECT_TRUE(same_bits(a.grad(), b.grad()));
}
