// rms_norm: forward against a double reference, gradients (gradcheck, float vs double, thread
// count independence) and errors.
#include "test_util.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace kiln;
using kiln::testing::relative_error;

namespace {

// y[r, j] = x[r, j] / sqrt(mean_j x[r, j]^2 + eps) * w[j], in double; w empty means no weight.
std::vector<double> reference(const std::vector<double>& x, const std::vector<double>& w, std::int64_t D,
                              double eps) {
  std::vector<double> y(x.size());
  const std::size_t d = static_cast<std::size_t>(D);
  for (std::size_t r = 0; r < x.size() / d; ++r) {
    double ms = 0.0;
    for (std::size_t j = 0; j < d; ++j) ms += x[r * d + j] * x[r * d + j];
    ms /= static_cast<double>(D);
    for (std::size_t j = 0; j < d; ++j)
      y[r * d + j] = x[r * d + j] / std::sqrt(ms + eps) * (w.empty() ? 1.0 : w[j]);
  }
  return y;
}

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

template <class T>
void check_forward(const Tensor<T>& x, const Tensor<T>& w, double eps, double tol) {
  const std::int64_t D = x.size(-1);
  const Tensor<T> y = rms_norm(x, w, eps);
  ASSERT_EQ(y.shape(), x.shape());
  const std::vector<double> ref = reference(as_double(x), w.defined() ? as_double(w) : std::vector<double>{}, D, eps);
  EXPECT_LE(relative_error(as_double(y), ref), tol) << "shape " << str(x.shape()) << " weight " << w.defined();
}

}  // namespace

TEST(RmsNorm, ForwardMatchesDoubleReference) {
  for (std::int64_t D : {1, 7, 33, 1003}) {
    for (bool with_weight : {true, false}) {
      const auto xf = randn<float>({3, 5, D});
      const auto wf = with_weight ? randn<float>({D}) : Tensor<float>();
      check_forward(xf, wf, 1e-6, 1e-6);
      const auto xd = randn<double>({4, D});
      const auto wd = with_weight ? randn<double>({D}) : Tensor<double>();
      check_forward(xd, wd, 1e-6, 1e-14);
      check_forward(xd, wd, 0.5, 1e-14);  // a large eps matters to the result
    }
  }
  // A 1-D input is one row.
  check_forward(randn<double>({33}), randn<double>({33}), 1e-6, 1e-14);
}

TEST(RmsNorm, NonContiguousInputs) {
  for (std::int64_t D : {7, 33}) {
    const auto xt = transpose(randn<float>({D, 4}), 0, 1);  // [4, D], rows strided
    ASSERT_FALSE(xt.is_contiguous());
    check_forward(xt, randn<float>({D}), 1e-6, 1e-6);
    const auto xs = slice(randn<double>({3, 2, 2 * D}), 2, 0, 2 * D, 2);  // every other feature
    const auto ws = slice(randn<double>({2 * D}), 0, 1, 2 * D, 2);
    ASSERT_FALSE(xs.is_contiguous());
    ASSERT_FALSE(ws.is_contiguous());
    check_forward(xs, ws, 1e-6, 1e-14);
    check_forward(expand(randn<double>({1, D}), {6, D}), Tensor<double>(), 1e-6, 1e-14);  // stride-0 rows
  }
}

// bf16 computes in float and rounds the output once: each element moves by at most 2^-8 of itself
// (8 significant bits, round to nearest), so the relative error is at most 2^-8 plus float's.
// rms_norm_into: the normalised rows written into a slice of a larger tensor, the rest untouched.
TEST(RmsNorm, IntoASliceOfALargerTensor) {
  const Tensor<double> x = randn<double>({4, 6}), w = randn<double>({6});
  const Tensor<double> out = randn<double>({4, 10});
  const std::vector<double> before = out.to_vector();
  rms_norm_into(narrow(out, 1, 2, 6), x, w, 1e-5);
  EXPECT_EQ(contiguous(narrow(out, 1, 2, 6)).to_vector(), rms_norm(x, w, 1e-5).to_vector());
  const std::vector<double> after = out.to_vector();
  for (std::size_t i = 0; i < after.size(); ++i) {
    if (i % 10 < 2 || i % 10 >= 8) {
      EXPECT_EQ(after[i], before[i]) << i;
    }
  }
  EXPECT_KILN_ERROR(rms_norm_into(zeros<double>({4, 5}), x, w), "rms_norm", "[4, 5]", "[4, 6]");
}

TEST(RmsNorm, Bf16WithinBf16Tolerance) {
  const auto x = randn<bf16>({6, 257});
  const auto w = randn<bf16>({257});
  check_forward(x, w, 1e-6, 0x1p-8 + 1e-6);
}

TEST(RmsNorm, Gradcheck) {
  auto with_weight = [](const std::vector<Tensor<double>>& in) { return rms_norm(in[0], in[1]); };
  auto no_weight = [](const std::vector<Tensor<double>>& in) { return rms_norm(in[0]); };
  auto large_eps = [](const std::vector<Tensor<double>>& in) { return rms_norm(in[0], in[1], 0.3); };
  EXPECT_GRADCHECK(with_weight, {randn<double>({3, 7}), randn<double>({7})});
  EXPECT_GRADCHECK(with_weight, {randn<double>({2, 3, 5}), randn<double>({5})});
  EXPECT_GRADCHECK(with_weight, {randn<double>({1}), randn<double>({1})});
  EXPECT_GRADCHECK(with_weight, {randn<double>({2, 33}), randn<double>({33})});
  EXPECT_GRADCHECK(no_weight, {randn<double>({4, 7})});
  EXPECT_GRADCHECK(large_eps, {randn<double>({3, 5}), randn<double>({5})});
  // Non-contiguous leaves.
  EXPECT_GRADCHECK(with_weight, {transpose(randn<double>({7, 4}), 0, 1).detach(),
                                 slice(randn<double>({14}), 0, 0, 14, 2).detach()});
  // A non-contiguous output gradient (the transpose's backward hands one over).
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& in) { return transpose(rms_norm(in[0], in[1]), 0, 1); },
                   {randn<double>({5, 3}), randn<double>({3})});
}

TEST(RmsNorm, GradientOnlyWhereAsked) {
  auto x = randn<double>({3, 5}).requires_grad_();
  const auto w = randn<double>({5});
  sum(rms_norm(x, w)).backward();
  EXPECT_TRUE(x.grad().defined());
  auto x2 = randn<double>({3, 5});
  auto w2 = randn<double>({5}).requires_grad_();
  sum(rms_norm(x2, w2)).backward();
  EXPECT_EQ(w2.grad().shape(), (Shape{5}));
  EXPECT_FALSE(rms_norm(x2, w).requires_grad());
}

// Many rows, so dw sums partials of several row blocks: the fused backward against the autograd
// of the same formula written with elementary ops (double), and float against double.
TEST(RmsNorm, BackwardMatchesComposedOpsManyRows) {
  const std::int64_t R = 300, D = 1003;
  const auto x = randn<double>({R, D});
  const auto w = randn<double>({D});
  const auto g = randn<double>({R, D});
  auto xd = x.detach().requires_grad_(), wd = w.detach().requires_grad_();
  rms_norm(xd, wd).backward(g);
  auto xc = x.detach().requires_grad_(), wc = w.detach().requires_grad_();
  mul(mul(xc, pow(add(mean(mul(xc, xc), {-1}, true), 1e-6), -0.5)), wc).backward(g);
  EXPECT_LE(relative_error(xd.grad(), xc.grad()), 1e-12);
  EXPECT_LE(relative_error(wd.grad(), wc.grad()), 1e-12);
  auto xf = cast<float>(x).requires_grad_(), wf = cast<float>(w).requires_grad_();
  rms_norm(xf, wf).backward(cast<float>(g));
  EXPECT_LE(relative_error(xf.grad(), xd.grad()), 1e-6);
  EXPECT_LE(relative_error(wf.grad(), wd.grad()), 1e-6);
}

#ifdef _OPENMP
TEST(RmsNorm, GradientsIndependentOfThreadCount) {
  const auto x = randn<float>({517, 129});
  const auto w = randn<float>({129});
  const auto g = randn<float>({517, 129});
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    auto xl = x.detach().requires_grad_(), wl = w.detach().requires_grad_();
    rms_norm(xl, wl).backward(g);
    omp_set_num_threads(saved);
    return std::make_pair(xl.grad().to_vector(), wl.grad().to_vector());
  };
  const auto one = run(1), three = run(3);
  EXPECT_EQ(one.first, three.first);
  EXPECT_EQ(one.second, three.second);
}
#endif

TEST(RmsNorm, Errors) {
  EXPECT_KILN_ERROR(rms_norm(randn<float>({2, 3}), randn<float>({4})), "rms_norm", "[4]", "[2, 3]");
  EXPECT_KILN_ERROR(rms_norm(randn<float>({2, 3}), randn<float>({1, 3})), "rms_norm", "[1, 3]", "[2, 3]");
  EXPECT_KILN_ERROR(rms_norm(full<float>({}, 1.0f)), "rms_norm", "[]");
  EXPECT_KILN_ERROR(rms_norm(randn<float>({2, 0})), "rms_norm", "[2, 0]");
  EXPECT_KILN_ERROR(rms_norm(Tensor<float>()), "rms_norm", "undefined");
  EXPECT_KILN_ERROR(rms_norm(randn<float>({2, 3}), Tensor<float>(), -1.0), "rms_norm", "eps");
}

// A gradient x received before (here from the residual add(x, rms_norm(x, w)), whose backward runs
// first) is folded into dx as the kernel writes it (autograd's InputGrads::received): in float the
// result is the double gradient plus the received one, rounded once, bit for bit; a separate add
// would round twice. Gradcheck in double covers the fold's value in a residual block.
TEST(RmsNorm, FoldsTheGradientReceivedBeforeIntoDx) {
  const std::int64_t R = 37, D = 67;
  const auto x = randn<double>({R, D}), w = randn<double>({D}), c = randn<double>({R, D});
  // x, w, c rounded to float first, so that the double run sees the float run's exact inputs.
  const auto xf0 = cast<float>(x), wf = cast<float>(w), cf = cast<float>(c);
  auto xd = cast<double>(xf0).requires_grad_();
  sum(mul(rms_norm(xd, cast<double>(wf)), cast<double>(cf))).backward();  // the rms_norm gradient alone
  auto xf = xf0.detach().requires_grad_();
  sum(mul(add(xf, rms_norm(xf, wf)), cf)).backward();  // plus the residual's, c
  const std::vector<double> d = xd.grad().to_vector();
  const std::vector<float> got = xf.grad().to_vector(), received = cf.to_vector();
  std::int64_t twice_differs = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], static_cast<float>(d[i] + static_cast<double>(received[i]))) << "element " << i;
    twice_differs += static_cast<float>(static_cast<float>(d[i]) + received[i]) != got[i];
  }
  EXPECT_GT(twice_differs, 0);  // the inputs are such that rounding twice would show
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& in) { return add(in[0], rms_norm(in[0], in[1])); },
                   {randn<double>({3, 7}), randn<double>({7})});
}
