// Unary ops: forward against std:: references (float and double, odd shapes, non-contiguous and
// broadcast inputs), special values, gradients by finite differences, errors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numbers>
#include <tuple>

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

// Plain double references. The textbook forms 1 + erf(z) and 1 + tanh(u) cancel for negative
// arguments (relative error ~1e-10 at x = -5 in double), so the references use the equivalent
// erfc(-z) and 2 / (1 + e^(-2u)), which keep full precision there.
double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double ref_gelu(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }
double ref_gelu_tanh(double x) {
  const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
  return 0.5 * x * (2.0 / (1.0 + std::exp(-2.0 * u)));
}

// Inputs of every layout the kernel must handle, drawn uniformly from [lo, hi).
template <class T>
std::vector<std::pair<std::string, Tensor<T>>> layouts(double lo, double hi) {
  std::vector<std::pair<std::string, Tensor<T>>> xs;
  xs.emplace_back("scalar", rand<T>({}, lo, hi));
  xs.emplace_back("[1]", rand<T>({1}, lo, hi));
  xs.emplace_back("[7]", rand<T>({7}, lo, hi));
  xs.emplace_back("[33, 5]", rand<T>({33, 5}, lo, hi));
  xs.emplace_back("[3, 1, 17]", rand<T>({3, 1, 17}, lo, hi));
  xs.emplace_back("[0, 4]", rand<T>({0, 4}, lo, hi));
  xs.emplace_back("big [257, 301]", rand<T>({257, 301}, lo, hi));  // several parallel chunks
  // Rows longer than the parallel grain (split into segments), 3 of them with a gap between.
  xs.emplace_back("long rows", slice(rand<T>({3, 70010}, lo, hi), 1, 3, 70004));
  xs.emplace_back("transposed", transpose(rand<T>({9, 13}, lo, hi), 0, 1));
  xs.emplace_back("sliced step 2", slice(rand<T>({6, 21}, lo, hi), 1, 1, 20, 2));
  xs.emplace_back("expanded", expand(rand<T>({1, 11}, lo, hi), {5, 11}));
  return xs;
}

// Runs op on every layout of type T and compares with ref applied in double to each element.
template <class T, class Op, class Ref>
void expect_forward_t(Op op, Ref ref, double lo, double hi, double tol) {
  for (const auto& [name, x] : layouts<T>(lo, hi)) {
    SCOPED_TRACE(name + " " + dtype_name<T>);
    const std::vector<T> before = x.to_vector();
    const Tensor<T> y = op(x);
    ASSERT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(y.is_contiguous());
    std::vector<double> expected;
    for (T v : before) expected.push_back(ref(static_cast<double>(v)));
    EXPECT_LE(relative_error(y.to_vector(), expected), tol);
    EXPECT_EQ(x.to_vector(), before);  // the input is untouched
  }
}

template <class Op, class Ref>
void expect_forward(const char* name, Op op, Ref ref, double lo, double hi) {
  SCOPED_TRACE(name);
  // float: a few ulp of the float result (inputs are exact in both); double: rounding only.
  expect_forward_t<float>(op, ref, lo, hi, 1e-6);
  expect_forward_t<double>(op, ref, lo, hi, 1e-14);
}

// A contiguous double tensor uniform on [lo, hi) with every element moved at least `margin` away
// from each of `avoid` (points where the op is not differentiable).
Tensor<double> leaf(const Shape& shape, double lo, double hi, std::vector<double> avoid = {}, double margin = 0.05) {
  std::vector<double> v = rand<double>(shape, lo, hi).to_vector();
  for (double& e : v)
    for (double p : avoid)
      if (std::abs(e - p) < margin) e = e < p ? p - margin : p + margin;
  return tensor<double>(v, shape);
}

// Gradient checks of op at odd shapes, including a non-contiguous (transposed) leaf.
template <class Op>
void expect_gradcheck(const char* name, Op op, double lo, double hi, std::vector<double> avoid = {}) {
  SCOPED_TRACE(name);
  auto f = [op](const std::vector<Tensor<double>>& x) { return op(x[0]); };
  EXPECT_GRADCHECK(f, {leaf({7}, lo, hi, avoid)});
  EXPECT_GRADCHECK(f, {leaf({3, 1, 5}, lo, hi, avoid)});
  EXPECT_GRADCHECK(f, {leaf({}, lo, hi, avoid)});
  const Tensor<double> nc = transpose(leaf({5, 3}, lo, hi, avoid), 0, 1).detach();
  ASSERT_FALSE(nc.is_contiguous());
  EXPECT_GRADCHECK(f, {nc});
}

template <class T>
std::vector<double> values_of(const Tensor<T>& t) {
  std::vector<double> out;
  for (T v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

}  // namespace

TEST(Unary, ForwardMatchesReference) {
  expect_forward("neg", [](const auto& x) { return neg(x); }, [](double v) { return -v; }, -3, 3);
  expect_forward("operator-", [](const auto& x) { return -x; }, [](double v) { return -v; }, -3, 3);
  expect_forward("exp", [](const auto& x) { return kiln::exp(x); }, [](double v) { return std::exp(v); }, -5, 5);
  expect_forward("log", [](const auto& x) { return kiln::log(x); }, [](double v) { return std::log(v); }, 0.01, 10);
  expect_forward("sqrt", [](const auto& x) { return kiln::sqrt(x); }, [](double v) { return std::sqrt(v); }, 0, 10);
  expect_forward("rsqrt", [](const auto& x) { return rsqrt(x); }, [](double v) { return 1.0 / std::sqrt(v); }, 0.01, 10);
  expect_forward("abs", [](const auto& x) { return kiln::abs(x); }, [](double v) { return std::fabs(v); }, -3, 3);
  expect_forward("square", [](const auto& x) { return square(x); }, [](double v) { return v * v; }, -3, 3);
  expect_forward("tanh", [](const auto& x) { return kiln::tanh(x); }, [](double v) { return std::tanh(v); }, -4, 4);
  expect_forward("sigmoid", [](const auto& x) { return sigmoid(x); }, ref_sigmoid, -8, 8);
  expect_forward("relu", [](const auto& x) { return relu(x); }, [](double v) { return v > 0 ? v : 0.0; }, -3, 3);
  expect_forward("silu", [](const auto& x) { return silu(x); }, [](double v) { return v * ref_sigmoid(v); }, -8, 8);
  expect_forward("gelu", [](const auto& x) { return gelu(x); }, ref_gelu, -5, 5);
  expect_forward("gelu tanh", [](const auto& x) { return gelu(x, GeluApprox::tanh); }, ref_gelu_tanh, -5, 5);
  expect_forward("clamp", [](const auto& x) { return clamp(x, -0.5, 0.75); },
                 [](double v) { return std::min(std::max(v, -0.5), 0.75); }, -2, 2);
  expect_forward("clamp_min", [](const auto& x) { return clamp_min(x, 0.25); },
                 [](double v) { return std::max(v, 0.25); }, -2, 2);
  expect_forward("clamp_max", [](const auto& x) { return clamp(x, std::nullopt, -0.25); },
                 [](double v) { return std::min(v, -0.25); }, -2, 2);
}

TEST(Unary, Bf16ComputesInFloatAndRounds) {
  const Tensor<bf16> x = randn<bf16>({37});
  const std::vector<bf16> xv = x.to_vector();
  const std::vector<bf16> e = kiln::exp(x).to_vector(), s = silu(x).to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const float v = static_cast<float>(static_cast<double>(xv[i]));
    EXPECT_EQ(static_cast<double>(e[i]), static_cast<double>(convert<bf16>(std::exp(v)))) << "element " << i;
    const float sv = v * (1.0f / (1.0f + std::exp(-v)));
    // The kernel's sigmoid differs from the naive one by float rounding: allow one bf16 step.
    EXPECT_NEAR(static_cast<double>(s[i]), static_cast<double>(sv), std::abs(static_cast<double>(sv)) * 0x1p-7)
        << "element " << i;
  }
}

TEST(Unary, SpecialValues) {
  auto d = [](std::vector<double> v) { return tensor<double>(v); };
  auto f = [](std::vector<float> v) { return tensor<float>(v); };

  EXPECT_EQ(values_of(kiln::exp(d({1000.0, -1000.0, inf, -inf}))), (std::vector<double>{inf, 0.0, inf, 0.0}));
  EXPECT_EQ(values_of(kiln::exp(f({100.0f, -200.0f}))), (std::vector<double>{inf, 0.0}));

  const auto l = values_of(kiln::log(d({0.0, -1.0, inf, 1.0})));
  EXPECT_EQ(l[0], -inf);
  EXPECT_TRUE(std::isnan(l[1]));
  EXPECT_EQ(l[2], inf);
  EXPECT_EQ(l[3], 0.0);

  const auto sq = values_of(kiln::sqrt(d({-1.0, 0.0, inf})));
  EXPECT_TRUE(std::isnan(sq[0]));
  EXPECT_EQ(sq[1], 0.0);
  EXPECT_EQ(sq[2], inf);
  const auto rs = values_of(rsqrt(f({0.0f, std::numeric_limits<float>::infinity(), 4.0f})));
  EXPECT_EQ(rs, (std::vector<double>{inf, 0.0, 0.5}));

  // Sigmoid and its relatives saturate without overflow (no inf/inf = NaN).
  for (auto s : {values_of(sigmoid(d({1000.0, -1000.0, inf, -inf}))), values_of(sigmoid(f({1000.0f, -1000.0f, 100.0f, -100.0f})))}) {
    EXPECT_EQ(s[0], 1.0);
    EXPECT_EQ(s[1], 0.0);
  }
  EXPECT_EQ(values_of(silu(d({1000.0, -1000.0}))), (std::vector<double>{1000.0, 0.0}));
  EXPECT_EQ(values_of(silu(f({1000.0f, -1000.0f}))), (std::vector<double>{1000.0, 0.0}));
  EXPECT_EQ(values_of(kiln::tanh(f({1000.0f, -1000.0f}))), (std::vector<double>{1.0, -1.0}));
  EXPECT_EQ(values_of(gelu(f({1000.0f, -1000.0f}), GeluApprox::tanh)), (std::vector<double>{1000.0, 0.0}));
  EXPECT_EQ(values_of(gelu(f({1000.0f, -1000.0f}))), (std::vector<double>{1000.0, 0.0}));

  // Deep in the left tail gelu is tiny but not 0: x * erfc(-x/sqrt2)/2 keeps it.
  const double g = gelu(d({-10.0})).item();
  const double expected = -10.0 * 0.5 * std::erfc(10.0 / std::sqrt(2.0));
  EXPECT_LT(g, 0.0);
  EXPECT_NEAR(g, expected, 1e-12 * std::abs(expected));

  // The gradients at the saturated ends are finite too.
  auto x = d({1000.0, -1000.0}).requires_grad_();
  sum(add(sigmoid(x), silu(x))).backward();
  EXPECT_EQ(values_of(x.grad()), (std::vector<double>{1.0, 0.0}));

  // Unbounded clamp sides stay unbounded.
  EXPECT_EQ(values_of(clamp_min(d({-inf, inf, 3.0}), 0.0)), (std::vector<double>{0.0, inf, 3.0}));
}

TEST(Unary, NanPropagates) {
  using Op = Tensor<float> (*)(const Tensor<float>&);
  const std::vector<std::pair<const char*, Op>> ops = {
      {"neg", [](const Tensor<float>& x) { return neg(x); }},
      {"exp", [](const Tensor<float>& x) { return kiln::exp(x); }},
      {"log", [](const Tensor<float>& x) { return kiln::log(x); }},
      {"sqrt", [](const Tensor<float>& x) { return kiln::sqrt(x); }},
      {"rsqrt", [](const Tensor<float>& x) { return rsqrt(x); }},
      {"abs", [](const Tensor<float>& x) { return kiln::abs(x); }},
      {"square", [](const Tensor<float>& x) { return square(x); }},
      {"tanh", [](const Tensor<float>& x) { return kiln::tanh(x); }},
      {"sigmoid", [](const Tensor<float>& x) { return sigmoid(x); }},
      {"relu", [](const Tensor<float>& x) { return relu(x); }},
      {"silu", [](const Tensor<float>& x) { return silu(x); }},
      {"gelu", [](const Tensor<float>& x) { return gelu(x); }},
      {"gelu tanh", [](const Tensor<float>& x) { return gelu(x, GeluApprox::tanh); }},
      {"clamp", [](const Tensor<float>& x) { return clamp(x, -1.0, 1.0); }},
  };
  const auto x = tensor<float>({1.0f, static_cast<float>(nan_v), -1.0f});
  for (const auto& [name, op] : ops) {
    const std::vector<float> y = op(x).to_vector();
    EXPECT_TRUE(std::isnan(y[1])) << name;
    EXPECT_FALSE(std::isnan(y[0])) << name;
  }
}

TEST(Unary, Gradients) {
  expect_gradcheck("neg", [](const Tensor<double>& x) { return neg(x); }, -3, 3);
  expect_gradcheck("operator-", [](const Tensor<double>& x) { return -x; }, -3, 3);
  expect_gradcheck("exp", [](const Tensor<double>& x) { return kiln::exp(x); }, -2, 2);
  expect_gradcheck("log", [](const Tensor<double>& x) { return kiln::log(x); }, 0.2, 3);
  expect_gradcheck("sqrt", [](const Tensor<double>& x) { return kiln::sqrt(x); }, 0.2, 3);
  expect_gradcheck("rsqrt", [](const Tensor<double>& x) { return rsqrt(x); }, 0.2, 3);
  expect_gradcheck("abs", [](const Tensor<double>& x) { return kiln::abs(x); }, -3, 3, {0.0});
  expect_gradcheck("square", [](const Tensor<double>& x) { return square(x); }, -3, 3);
  expect_gradcheck("tanh", [](const Tensor<double>& x) { return kiln::tanh(x); }, -3, 3);
  expect_gradcheck("sigmoid", [](const Tensor<double>& x) { return sigmoid(x); }, -5, 5);
  expect_gradcheck("relu", [](const Tensor<double>& x) { return relu(x); }, -3, 3, {0.0});
  expect_gradcheck("silu", [](const Tensor<double>& x) { return silu(x); }, -5, 5);
  expect_gradcheck("gelu", [](const Tensor<double>& x) { return gelu(x); }, -4, 4);
  expect_gradcheck("gelu tanh", [](const Tensor<double>& x) { return gelu(x, GeluApprox::tanh); }, -4, 4);
  expect_gradcheck("clamp", [](const Tensor<double>& x) { return clamp(x, -0.5, 0.75); }, -2, 2, {-0.5, 0.75});
  expect_gradcheck("clamp_min", [](const Tensor<double>& x) { return clamp_min(x, 0.25); }, -2, 2, {0.25});
  expect_gradcheck("clamp_max", [](const Tensor<double>& x) { return clamp_max(x, -0.25); }, -2, 2, {-0.25});
  // Composition: the gradient flows through a chain of unary ops and a broadcast binary op.
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return mul(silu(kiln::tanh(x[0])), sigmoid(x[1])); },
                   {leaf({4, 5}, -2, 2), leaf({5}, -2, 2)});
}

TEST(Unary, GradientAtKinksIsZero) {
  // relu and abs take the subgradient 0 at 0; clamp passes gradient only strictly inside.
  auto x = tensor<double>({-1.0, 0.0, 0.5, 1.0, 2.0}).requires_grad_();
  sum(relu(x)).backward();
  EXPECT_EQ(values_of(x.grad()), (std::vector<double>{0.0, 0.0, 1.0, 1.0, 1.0}));
  x.zero_grad();
  sum(kiln::abs(x)).backward();
  EXPECT_EQ(values_of(x.grad()), (std::vector<double>{-1.0, 0.0, 1.0, 1.0, 1.0}));
  x.zero_grad();
  sum(clamp(x, 0.0, 1.0)).backward();
  EXPECT_EQ(values_of(x.grad()), (std::vector<double>{0.0, 0.0, 1.0, 0.0, 0.0}));
}

TEST(Unary, FloatBackwardMatchesDoubleBackward) {
  // The same backward kernels in float (the dtype training uses) against double.
  const Tensor<double> xd = leaf({6, 9}, 0.2, 3);
  const Tensor<float> xf = cast<float>(xd);
  using OpD = Tensor<double> (*)(const Tensor<double>&);
  using OpF = Tensor<float> (*)(const Tensor<float>&);
  const std::vector<std::tuple<const char*, OpD, OpF>> ops = {
      {"exp", [](const Tensor<double>& x) { return kiln::exp(x); }, [](const Tensor<float>& x) { return kiln::exp(x); }},
      {"rsqrt", [](const Tensor<double>& x) { return rsqrt(x); }, [](const Tensor<float>& x) { return rsqrt(x); }},
      {"silu", [](const Tensor<double>& x) { return silu(x); }, [](const Tensor<float>& x) { return silu(x); }},
      {"gelu", [](const Tensor<double>& x) { return gelu(x); }, [](const Tensor<float>& x) { return gelu(x); }},
  };
  for (const auto& [name, op_d, op_f] : ops) {
    auto ld = xd.detach().requires_grad_();
    auto lf = xf.detach().requires_grad_();
    sum(op_d(ld)).backward();
    sum(op_f(lf)).backward();
    EXPECT_LE(relative_error(lf.grad(), cast<float>(ld.grad())), 1e-6) << name;
  }
}

TEST(Unary, SavedOutputDoesNotKeepTheGraphAlive) {
  // Ops that save their output must save a detached handle: otherwise output -> node -> output
  // is a cycle and neither is ever freed.
  auto x = randn<double>({64}).requires_grad_();
  using Op = Tensor<double> (*)(const Tensor<double>&);
  for (Op op : std::vector<Op>{[](const Tensor<double>& t) { return kiln::exp(t); },
                               [](const Tensor<double>& t) { return kiln::tanh(t); },
                               [](const Tensor<double>& t) { return sigmoid(t); },
                               [](const Tensor<double>& t) { return kiln::sqrt(t); },
                               [](const Tensor<double>& t) { return rsqrt(t); },
                               [](const Tensor<double>& t) { return relu(t); }}) {
    std::weak_ptr<Storage> storage;
    std::weak_ptr<autograd::Node> node;
    {
      auto y = op(x);
      ASSERT_TRUE(y.requires_grad());
      storage = y.storage();
      node = y.grad_fn();
    }
    EXPECT_TRUE(storage.expired());
    EXPECT_TRUE(node.expired());
  }
}

TEST(Unary, NoGraphWithoutRequiresGrad) {
  auto x = randn<double>({3});
  EXPECT_FALSE(kiln::exp(x).requires_grad());
  auto w = randn<double>({3}).requires_grad_();
  NoGradGuard guard;
  EXPECT_FALSE(silu(w).requires_grad());
}

TEST(Unary, Errors) {
  EXPECT_KILN_ERROR(kiln::exp(Tensor<float>()), "exp", "undefined");
  EXPECT_KILN_ERROR(gelu(Tensor<double>(), GeluApprox::tanh), "gelu", "undefined");
  EXPECT_KILN_ERROR(-Tensor<float>(), "neg", "undefined");
  EXPECT_KILN_ERROR(clamp(Tensor<float>(), 0.0, 1.0), "clamp", "undefined");
  const auto x = randn<float>({2, 3});
  EXPECT_KILN_ERROR(clamp(x, 2.0, 1.0), "clamp", "[2, 3]", "exceeds");
  EXPECT_KILN_ERROR(clamp(x, std::nullopt, std::nullopt), "clamp", "[2, 3]", "bound");
  EXPECT_KILN_ERROR(clamp(x, nan_v, 1.0), "clamp", "[2, 3]", "NaN");
}

// ---- swiglu(gate, up) = silu(gate) * up, fused ----

TEST(Swiglu, ForwardMatchesReference) {
  for (const Shape& shape : std::vector<Shape>{{}, {1}, {7}, {33, 5}, {3, 1, 17}, {0, 4}, {257, 301}}) {
    SCOPED_TRACE(kiln::str(shape));
    const auto gate = rand<double>(shape, -8, 8), up = randn<double>(shape);
    const auto gv = gate.to_vector(), uv = up.to_vector();
    std::vector<double> expected;
    for (std::size_t i = 0; i < gv.size(); ++i) expected.push_back(gv[i] * ref_sigmoid(gv[i]) * uv[i]);
    const auto y = swiglu(gate, up);
    ASSERT_EQ(y.shape(), shape);
    EXPECT_LE(relative_error(y.to_vector(), expected), 1e-14);
    const auto yf = swiglu(cast<float>(gate), cast<float>(up));
    EXPECT_LE(relative_error(yf.to_vector(), expected), 1e-6);
  }
  // Non-contiguous and broadcast operands (transposed, strided slices, expanded).
  const auto a = rand<double>({9, 13}, -4, 4), b = randn<double>({13, 9});
  const auto ta = transpose(a, 0, 1);
  std::vector<double> expected;
  const auto av = ta.to_vector(), bv = b.to_vector();
  for (std::size_t i = 0; i < av.size(); ++i) expected.push_back(av[i] * ref_sigmoid(av[i]) * bv[i]);
  EXPECT_LE(relative_error(swiglu(ta, b).to_vector(), expected), 1e-14);
  const auto row = rand<double>({1, 11}, -4, 4);
  const auto e = expand(row, {5, 11}), s = slice(randn<double>({5, 23}), 1, 1, 23, 2);
  expected.clear();
  const auto ev = e.to_vector(), sv = s.to_vector();
  for (std::size_t i = 0; i < ev.size(); ++i) expected.push_back(ev[i] * ref_sigmoid(ev[i]) * sv[i]);
  EXPECT_LE(relative_error(swiglu(e, s).to_vector(), expected), 1e-14);
}

TEST(Swiglu, EqualsSiluTimesUpBitForBit) {
  // Fused, the op computes (gate * sigmoid(gate)) * up in the same order as silu then mul, so in
  // float and double it matches the unfused graph exactly, gradients included.
  auto check = [](auto tag) {
    using T = decltype(tag);
    const auto gate = cast<T>(rand<double>({37, 29}, -6, 6)), up = cast<T>(randn<double>({37, 29}));
    const auto g = cast<T>(randn<double>({37, 29}));
    auto g1 = gate.detach().requires_grad_(), u1 = up.detach().requires_grad_();
    auto g2 = gate.detach().requires_grad_(), u2 = up.detach().requires_grad_();
    const auto fused = swiglu(g1, u1), unfused = mul(silu(g2), u2);
    EXPECT_EQ(fused.to_vector(), unfused.to_vector());
    fused.backward(g);
    unfused.backward(g);
    EXPECT_EQ(g1.grad().to_vector(), g2.grad().to_vector());
    EXPECT_EQ(u1.grad().to_vector(), u2.grad().to_vector());
  };
  check(float{});
  check(double{});
}

TEST(Swiglu, Gradients) {
  auto f = [](const std::vector<Tensor<double>>& x) { return swiglu(x[0], x[1]); };
  EXPECT_GRADCHECK(f, {leaf({7}, -5, 5), leaf({7}, -2, 2)});
  EXPECT_GRADCHECK(f, {leaf({3, 1, 5}, -5, 5), leaf({3, 1, 5}, -2, 2)});
  EXPECT_GRADCHECK(f, {leaf({}, -5, 5), leaf({}, -2, 2)});
  const Tensor<double> nc = transpose(leaf({5, 3}, -5, 5), 0, 1).detach();
  ASSERT_FALSE(nc.is_contiguous());
  EXPECT_GRADCHECK(f, {nc, leaf({3, 5}, -2, 2)});
  // Only one input requiring grad, and the op inside a larger graph.
  const Tensor<double> fixed_up = randn<double>({4, 6});
  EXPECT_GRADCHECK([fixed_up](const std::vector<Tensor<double>>& x) { return swiglu(x[0], fixed_up); },
                   {leaf({4, 6}, -3, 3)});
  EXPECT_GRADCHECK([fixed_up](const std::vector<Tensor<double>>& x) { return swiglu(fixed_up, x[0]); },
                   {leaf({4, 6}, -3, 3)});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return mul(swiglu(x[0], x[1]), swiglu(x[1], x[0])); },
                   {leaf({2, 7}, -3, 3), leaf({2, 7}, -3, 3)});
  // Both gradients against the closed forms: d_up = g silu(gate), d_gate = g up silu'(gate).
  auto gate = leaf({19}, -6, 6).requires_grad_(), up = leaf({19}, -2, 2).requires_grad_();
  const auto g = randn<double>({19});
  swiglu(gate, up).backward(g);
  const auto xv = gate.to_vector(), uv = up.to_vector(), gv = g.to_vector();
  std::vector<double> d_gate, d_up;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const double s = ref_sigmoid(xv[i]);
    d_gate.push_back(gv[i] * uv[i] * (s + xv[i] * s * (1 - s)));
    d_up.push_back(gv[i] * xv[i] * s);
  }
  EXPECT_LE(relative_error(gate.grad().to_vector(), d_gate), 1e-14);
  EXPECT_LE(relative_error(up.grad().to_vector(), d_up), 1e-14);
}

TEST(Swiglu, Bf16AndSaturation) {
  const auto gate = randn<bf16>({41}), up = randn<bf16>({41});
  const auto y = swiglu(gate, up).to_vector();
  const auto xv = gate.to_vector(), uv = up.to_vector();
  for (std::size_t i = 0; i < y.size(); ++i) {
    const float x = static_cast<float>(static_cast<double>(xv[i])), u = static_cast<float>(static_cast<double>(uv[i]));
    const float expected = x / (1.0f + std::exp(-x)) * u;
    EXPECT_NEAR(static_cast<double>(y[i]), expected, std::abs(expected) * 0x1p-7 + 1e-30) << "element " << i;
  }
  // Large |gate| saturates without NaN, forward and backward; NaN propagates.
  auto g = tensor<float>({1000.0f, -1000.0f, static_cast<float>(nan_v)}).requires_grad_();
  auto u = tensor<float>({2.0f, 2.0f, 1.0f}).requires_grad_();
  const auto out = swiglu(g, u);
  const auto ov = out.to_vector();
  EXPECT_EQ(ov[0], 2000.0f);
  EXPECT_EQ(ov[1], 0.0f);
  EXPECT_TRUE(std::isnan(ov[2]));
  out.backward(ones<float>({3}));
  const auto dg = g.grad().to_vector(), du = u.grad().to_vector();
  EXPECT_EQ(dg[0], 2.0f);
  EXPECT_EQ(dg[1], 0.0f);
  EXPECT_EQ(du[0], 1000.0f);
  EXPECT_EQ(du[1], 0.0f);
  EXPECT_TRUE(std::isnan(dg[2]) && std::isnan(du[2]));
}

TEST(Swiglu, Errors) {
  EXPECT_KILN_ERROR(swiglu(randn<float>({2, 3}), randn<float>({3, 2})), "swiglu", "[2, 3]", "[3, 2]");
  EXPECT_KILN_ERROR(swiglu(randn<float>({2, 3}), randn<float>({3})), "swiglu", "[2, 3]", "[3]");
  EXPECT_KILN_ERROR(swiglu(Tensor<float>(), randn<float>({3})), "swiglu", "undefined");
}
