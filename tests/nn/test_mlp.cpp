// A composed graph: a 2-layer MLP with a cross-entropy loss,
//   logits = act(x·W1 + b1)·W2ᵀ + b2,   loss = cross_entropy(logits, targets)  (one target ignored)
// (W2 stored [classes, hidden] as in a linear layer, so the second product reads a transposed
// operand). Every gradient is checked against formulas derived by hand and evaluated in plain
// double loops below, and the whole graph passes a finite-difference gradient check.
#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

enum class Act { relu, tanh };

constexpr std::int64_t ignored = -100;  // cross_entropy's default ignore_index

struct Sizes {
  std::int64_t n, d, h, c;  // rows, input features, hidden units, classes
};

// Row-major double copies of the parameters and what the hand derivation produces.
struct Mlp {
  std::vector<double> x, w1, b1, w2, b2;  // x [n, d], w1 [d, h], b1 [h], w2 [c, h], b2 [c]
  std::vector<std::int64_t> targets;      // [n]
};
struct Grads {
  double loss = 0.0;
  std::vector<double> x, w1, b1, w2, b2;
};

// Forward and backward by hand. With z1 = x W1 + b1, a = act(z1), z2 = a W2ᵀ + b2,
// p = softmax(z2) per row and `count` rows whose target is not ignored:
//   loss   = (1/count) Σ_r [logsumexp(z2_r) - z2_r,t_r]
//   dz2    = (p - onehot(t)) / count on counted rows, 0 on ignored ones
//   dW2    = dz2ᵀ a   (W2 is [c, h]),  db2 = Σ_r dz2_r
//   da     = dz2 W2,  dz1 = da ⊙ act'(z1)  (relu: [z1 > 0];  tanh: 1 - a²)
//   dW1    = xᵀ dz1,  db1 = Σ_r dz1_r,  dx = dz1 W1ᵀ
Grads hand_derived(const Mlp& m, const Sizes& s, Act act) {
  const auto at = [](const std::vector<double>& v, std::int64_t i) { return v[static_cast<std::size_t>(i)]; };
  std::vector<double> z1(static_cast<std::size_t>(s.n * s.h)), a(z1.size()), z2(static_cast<std::size_t>(s.n * s.c));
  for (std::int64_t r = 0; r < s.n; ++r)
    for (std::int64_t j = 0; j < s.h; ++j) {
      double v = at(m.b1, j);
      for (std::int64_t i = 0; i < s.d; ++i) v += at(m.x, r * s.d + i) * at(m.w1, i * s.h + j);
      z1[static_cast<std::size_t>(r * s.h + j)] = v;
      a[static_cast<std::size_t>(r * s.h + j)] = act == Act::relu ? std::max(v, 0.0) : std::tanh(v);
    }
  for (std::int64_t r = 0; r < s.n; ++r)
    for (std::int64_t k = 0; k < s.c; ++k) {
      double v = at(m.b2, k);
      for (std::int64_t j = 0; j < s.h; ++j) v += at(a, r * s.h + j) * at(m.w2, k * s.h + j);
      z2[static_cast<std::size_t>(r * s.c + k)] = v;
    }

  std::int64_t count = 0;
  for (auto t : m.targets) count += t != ignored;
  Grads g;
  std::vector<double> dz2(z2.size(), 0.0);
  for (std::int64_t r = 0; r < s.n; ++r) {
    const std::int64_t t = m.targets[static_cast<std::size_t>(r)];
    if (t == ignored) continue;
    double mx = -INFINITY;
    for (std::int64_t k = 0; k < s.c; ++k) mx = std::max(mx, at(z2, r * s.c + k));
    double se = 0.0;
    for (std::int64_t k = 0; k < s.c; ++k) se += std::exp(at(z2, r * s.c + k) - mx);
    g.loss += (mx + std::log(se) - at(z2, r * s.c + t)) / static_cast<double>(count);
    for (std::int64_t k = 0; k < s.c; ++k) {
      const double p = std::exp(at(z2, r * s.c + k) - mx) / se;
      dz2[static_cast<std::size_t>(r * s.c + k)] = (p - (k == t ? 1.0 : 0.0)) / static_cast<double>(count);
    }
  }

  g.w2.assign(m.w2.size(), 0.0);
  g.b2.assign(m.b2.size(), 0.0);
  std::vector<double> dz1(z1.size(), 0.0);
  for (std::int64_t r = 0; r < s.n; ++r)
    for (std::int64_t k = 0; k < s.c; ++k) {
      const double d = at(dz2, r * s.c + k);
      g.b2[static_cast<std::size_t>(k)] += d;
      for (std::int64_t j = 0; j < s.h; ++j) {
        g.w2[static_cast<std::size_t>(k * s.h + j)] += d * at(a, r * s.h + j);
        dz1[static_cast<std::size_t>(r * s.h + j)] += d * at(m.w2, k * s.h + j);  // da for now
      }
    }
  for (std::size_t i = 0; i < dz1.size(); ++i)
    dz1[i] *= act == Act::relu ? (z1[i] > 0.0 ? 1.0 : 0.0) : 1.0 - a[i] * a[i];

  g.w1.assign(m.w1.size(), 0.0);
  g.b1.assign(m.b1.size(), 0.0);
  g.x.assign(m.x.size(), 0.0);
  for (std::int64_t r = 0; r < s.n; ++r)
    for (std::int64_t j = 0; j < s.h; ++j) {
      const double d = at(dz1, r * s.h + j);
      g.b1[static_cast<std::size_t>(j)] += d;
      for (std::int64_t i = 0; i < s.d; ++i) {
        g.w1[static_cast<std::size_t>(i * s.h + j)] += at(m.x, r * s.d + i) * d;
        g.x[static_cast<std::size_t>(r * s.d + i)] += d * at(m.w1, i * s.h + j);
      }
    }
  return g;
}

// The same network in kiln. x may have leading batch dims (targets then have the same ones).
template <class T>
Tensor<T> mlp_loss(const Tensor<T>& x, const Tensor<T>& w1, const Tensor<T>& b1, const Tensor<T>& w2,
                   const Tensor<T>& b2, const Tensor<std::int64_t>& targets, Act act) {
  const Tensor<T> z1 = add(matmul(x, w1), b1);
  const Tensor<T> a = act == Act::relu ? relu(z1) : tanh(z1);
  return cross_entropy(add(matmul(a, transpose(w2, 0, 1)), b2), targets);
}

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// Random parameters and targets (targets[ignored_row] = ignore_index), in double.
struct Case {
  Tensor<double> x, w1, b1, w2, b2;
  Tensor<std::int64_t> targets;
};
Case make_case(const Shape& x_shape, const Sizes& s, std::int64_t ignored_row) {
  Case c{randn<double>(x_shape), randn<double>({s.d, s.h}, 0.0, 0.6), randn<double>({s.h}, 0.0, 0.3),
         randn<double>({s.c, s.h}, 0.0, 0.6), randn<double>({s.c}, 0.0, 0.3),
         randint<std::int64_t>(0, s.c, Shape(x_shape.begin(), x_shape.end() - 1))};
  c.targets.data()[ignored_row] = ignored;
  return c;
}

// Pre-activations far from relu's kink, so finite differences and float rounding never cross it.
void expect_away_from_kink(const Case& c, double margin) {
  NoGradGuard no_grad;
  for (double v : add(matmul(c.x, c.w1), c.b1).to_vector()) ASSERT_GT(std::abs(v), margin);
}

template <class T>
void expect_matches_hand_derivation(const Case& c, const Sizes& s, Act act, double tol) {
  auto x = cast<T>(c.x).requires_grad_(), w1 = cast<T>(c.w1).requires_grad_(), b1 = cast<T>(c.b1).requires_grad_();
  auto w2 = cast<T>(c.w2).requires_grad_(), b2 = cast<T>(c.b2).requires_grad_();
  // The reference sees exactly the values kiln sees (rounded to T).
  const Grads ref = hand_derived({as_double(x), as_double(w1), as_double(b1), as_double(w2), as_double(b2),
                                  c.targets.to_vector()},
                                 s, act);
  const Tensor<T> loss = mlp_loss(x, w1, b1, w2, b2, c.targets, act);
  EXPECT_EQ(loss.shape(), Shape{});
  EXPECT_NEAR(static_cast<double>(loss.item()), ref.loss, tol * std::abs(ref.loss));
  loss.backward();
  EXPECT_LE(relative_error(as_double(x.grad()), ref.x), tol) << "dx";
  EXPECT_LE(relative_error(as_double(w1.grad()), ref.w1), tol) << "dW1";
  EXPECT_LE(relative_error(as_double(b1.grad()), ref.b1), tol) << "db1";
  EXPECT_LE(relative_error(as_double(w2.grad()), ref.w2), tol) << "dW2";
  EXPECT_LE(relative_error(as_double(b2.grad()), ref.b2), tol) << "db2";
  EXPECT_EQ(x.grad().shape(), x.shape());
}

constexpr Sizes sizes{7, 5, 6, 4};

}  // namespace

TEST(Mlp, ReluGradientsMatchHandDerivation) {
  const Case c = make_case({sizes.n, sizes.d}, sizes, 3);
  expect_away_from_kink(c, 1e-3);
  expect_matches_hand_derivation<double>(c, sizes, Act::relu, 1e-12);
  expect_matches_hand_derivation<float>(c, sizes, Act::relu, 1e-5);
}

TEST(Mlp, TanhGradientsMatchHandDerivation) {
  const Case c = make_case({sizes.n, sizes.d}, sizes, 0);
  expect_matches_hand_derivation<double>(c, sizes, Act::tanh, 1e-12);
  expect_matches_hand_derivation<float>(c, sizes, Act::tanh, 1e-5);
}

TEST(Mlp, BatchedInputMatchesTheFlattenedRows) {
  // x [2, 4, d] with targets [2, 4]: the same network on 8 rows (the shared weights' gradients
  // sum over both batch dims).
  const Sizes s{8, sizes.d, sizes.h, sizes.c};
  const Case c = make_case({2, 4, s.d}, s, 5);
  expect_matches_hand_derivation<double>(c, s, Act::tanh, 1e-12);
  expect_matches_hand_derivation<float>(c, s, Act::tanh, 1e-5);
}

TEST(Mlp, IgnoredRowContributesNothing) {
  const Case c = make_case({sizes.n, sizes.d}, sizes, 2);
  auto x = c.x.detach().requires_grad_();
  mlp_loss(x, c.w1, c.b1, c.w2, c.b2, c.targets, Act::tanh).backward();
  const auto gx = x.grad().to_vector();
  for (std::int64_t i = 0; i < sizes.d; ++i) EXPECT_EQ(gx[static_cast<std::size_t>(2 * sizes.d + i)], 0.0);
  // Changing the ignored row's input leaves the loss unchanged.
  NoGradGuard no_grad;
  const double before = mlp_loss(c.x, c.w1, c.b1, c.w2, c.b2, c.targets, Act::tanh).item();
  c.x.data()[2 * sizes.d] += 1.0;
  EXPECT_EQ(mlp_loss(c.x, c.w1, c.b1, c.w2, c.b2, c.targets, Act::tanh).item(), before);
}

TEST(Mlp, GradcheckWholeGraph) {
  for (const Act act : {Act::relu, Act::tanh}) {
    SCOPED_TRACE(act == Act::relu ? "relu" : "tanh");
    const Case c = make_case({sizes.n, sizes.d}, sizes, 4);
    if (act == Act::relu) expect_away_from_kink(c, 1e-3);
    const Tensor<std::int64_t> targets = c.targets;
    EXPECT_GRADCHECK([targets, act](const std::vector<Tensor<double>>& p) {
      return mlp_loss(p[0], p[1], p[2], p[3], p[4], targets, act);
    }, {c.x, c.w1, c.b1, c.w2, c.b2});
  }
  // A batched input and a transposed (non-contiguous) first-layer weight.
  const Case c = make_case({2, 3, sizes.d}, sizes, 1);
  const Tensor<std::int64_t> targets = c.targets;
  EXPECT_GRADCHECK([targets](const std::vector<Tensor<double>>& p) {
    return mlp_loss(p[0], p[1], p[2], p[3], p[4], targets, Act::tanh);
  }, {c.x, transpose(randn<double>({sizes.h, sizes.d}), 0, 1).detach(), c.b1, c.w2, c.b2});
}
