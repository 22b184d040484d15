// AdamW (CPU): several steps against a hand-written double-precision reference of the update, the
// bias correction, decoupled weight decay, FP32 master weights for bf16 parameters, errors; and
// clip_grad_norm: the global norm, the scaling, determinism across thread counts, errors.
#include "test_util.hpp"

#include <kiln/optim/clip.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace kiln;
using kiln::testing::relative_error;

namespace {

// The textbook AdamW update of Loshchilov & Hutter in double, moments rounded to M after each step
// as the optimizer stores them, parameters rounded to P.
template <class P, class M>
struct ReferenceAdamW {
  optim::AdamWOptions o;
  std::vector<double> p, m, v;
  int t = 0;

  ReferenceAdamW(const std::vector<double>& p0, optim::AdamWOptions options)
      : o(options), p(p0), m(p0.size(), 0.0), v(p0.size(), 0.0) {}

  void step(const std::vector<double>& g) {
    ++t;
    for (std::size_t k = 0; k < p.size(); ++k) {
      const double mk = o.beta1 * m[k] + (1 - o.beta1) * g[k];
      const double vk = o.beta2 * v[k] + (1 - o.beta2) * g[k] * g[k];
      const double mhat = mk / (1 - std::pow(o.beta1, t));
      const double vhat = vk / (1 - std::pow(o.beta2, t));
      p[k] = static_cast<double>(static_cast<P>(p[k] - o.lr * (mhat / (std::sqrt(vhat) + o.eps) + o.weight_decay * p[k])));
      m[k] = static_cast<double>(static_cast<M>(mk));
      v[k] = static_cast<double>(static_cast<M>(vk));
    }
  }
};

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& x : t.to_vector()) out.push_back(static_cast<double>(x));
  return out;
}

template <class T, class M>
void check_against_reference(double tol) {
  const optim::AdamWOptions options{.lr = 3e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  std::vector<Tensor<T>> params;
  std::vector<ReferenceAdamW<T, M>> refs;
  for (std::int64_t n : {1, 7, 33, 1003}) {
    params.push_back(randn<T>({n}).requires_grad_());
    refs.emplace_back(as_double(params.back()), options);
  }
  params.push_back(randn<T>({5, 9}).requires_grad_());  // any shape
  refs.emplace_back(as_double(params.back()), options);
  optim::AdamW<T> opt(params, options);
  for (int step = 0; step < 6; ++step) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      // Gradients of mixed scales, so the second moment matters.
      const auto g = mul(randn<T>(params[i].shape()), step % 2 ? 0.01 : 3.0);
      params[i].set_grad(g);
      refs[i].step(as_double(g));
    }
    opt.step();
    for (std::size_t i = 0; i < params.size(); ++i)
      EXPECT_LE(relative_error(as_double(params[i]), refs[i].p), tol) << "param " << i << " step " << step;
  }
  EXPECT_EQ(opt.steps(), 6);
}

}  // namespace

TEST(AdamW, MatchesDoubleReferenceOverSeveralSteps) {
  check_against_reference<float, float>(2e-7);
  check_against_reference<double, double>(1e-14);
}

// At step 1 the bias corrections make m_hat = g and v_hat = g^2: every element moves by lr
// against the sign of its gradient (here without decay), whatever the gradient's size.
TEST(AdamW, FirstStepIsBiasCorrected) {
  auto p = zeros<double>({4}).requires_grad_();
  p.set_grad(tensor<double>({1e-4, -2.0, 300.0, -5e-3}));
  optim::AdamW<double> opt({p}, {.lr = 0.5, .eps = 1e-12, .weight_decay = 0.0});
  opt.step();
  const std::vector<double> expected = {-0.5, 0.5, -0.5, 0.5};
  const auto got = p.to_vector();
  for (std::size_t k = 0; k < 4; ++k) EXPECT_NEAR(got[k], expected[k], 1e-7) << k;
}

// Decoupled decay: with a zero gradient the Adam term vanishes and p shrinks by exactly
// lr * wd * p. (Decay through the gradient, as in Adam with L2, would be normalised by sqrt(v)
// and move every element by about lr.)
TEST(AdamW, WeightDecayIsDecoupled) {
  auto p = tensor<double>({2.0, -4.0, 0.5}).requires_grad_();
  p.set_grad(zeros<double>({3}));
  optim::AdamW<double> opt({p}, {.lr = 0.1, .weight_decay = 0.5});
  opt.step();
  opt.step();
  const std::vector<double> expected = {2.0 * 0.95 * 0.95, -4.0 * 0.95 * 0.95, 0.5 * 0.95 * 0.95};
  const auto got = p.to_vector();
  for (std::size_t k = 0; k < 3; ++k) EXPECT_NEAR(got[k], expected[k], 4e-15) << k;
}

TEST(AdamW, ParametersWithoutGradientAreLeftAlone) {
  auto a = randn<float>({7}).requires_grad_();
  auto b = randn<float>({3}).requires_grad_();
  const auto b0 = b.to_vector();
  a.set_grad(ones<float>({7}));
  optim::AdamW<float> opt({a, b});
  opt.step();
  EXPECT_EQ(b.to_vector(), b0);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

// bf16 parameters near 1 have a spacing of 2^-7: updates of 1e-4 a step vanish when applied to the
// bf16 value directly, but accumulate in the FP32 master copy, which follows the reference.
TEST(AdamW, MasterWeightsKeepSmallUpdatesOfBf16Parameters) {
  const optim::AdamWOptions with{.lr = 1e-4, .weight_decay = 0.0};
  optim::AdamWOptions without = with;
  without.master_weights = false;
  const auto start = add(mul(rand<float>({33}), 0.5), 1.0);  // in [1, 1.5)
  auto p_master = cast<bf16>(start).requires_grad_();
  auto p_plain = cast<bf16>(start).requires_grad_();
  optim::AdamW<bf16> opt_master({p_master}, with), opt_plain({p_plain}, without);
  ASSERT_EQ(opt_master.master_weights().size(), 1u);
  EXPECT_TRUE(opt_plain.master_weights().empty());
  ReferenceAdamW<float, float> ref(as_double(p_master), with);
  const auto p0 = p_plain.to_vector();
  for (int step = 0; step < 200; ++step) {
    const auto g = cast<bf16>(add(rand<float>({33}), 0.5));  // positive: p decreases steadily
    p_master.set_grad(g);
    p_plain.set_grad(g);
    ref.step(as_double(g));
    opt_master.step();
    opt_plain.step();
  }
  EXPECT_EQ(p_plain.to_vector(), p0);  // every update was lost to rounding
  const Tensor<float> master = opt_master.master_weights()[0];
  EXPECT_LE(relative_error(as_double(master), ref.p), 2e-7);
  EXPECT_EQ(p_master.to_vector(), cast<bf16>(master).to_vector());  // p is the rounded master copy
  EXPECT_LT(as_double(p_master)[0], as_double(cast<bf16>(start))[0]);
}

TEST(AdamW, Errors) {
  EXPECT_KILN_ERROR(optim::AdamW<float>({randn<float>({3})}), "AdamW", "require grad");
  auto t = transpose(randn<float>({3, 4}), 0, 1).detach().requires_grad_();
  EXPECT_KILN_ERROR(optim::AdamW<float>({t}), "AdamW", "contiguous", "[4, 3]");
  auto p = randn<float>({3}).requires_grad_();
  p.set_grad(randn<float>({4}));
  optim::AdamW<float> opt({p});
  EXPECT_KILN_ERROR(opt.step(), "AdamW", "[4]", "[3]");
}

// ---- clip_grad_norm ----

TEST(ClipGradNorm, NormAndScaling) {
  std::vector<Tensor<double>> params;
  std::vector<std::vector<double>> grads;
  double squares = 0.0;
  for (std::int64_t n : {1, 7, 33, 70001}) {  // the last one spans several chunks
    auto p = randn<double>({n}).requires_grad_();
    auto g = randn<double>({n});
    p.set_grad(g);
    grads.push_back(g.to_vector());
    for (double x : grads.back()) squares += x * x;
    params.push_back(p);
  }
  params.push_back(randn<double>({5}).requires_grad_());  // no gradient: skipped
  const double norm = std::sqrt(squares);

  // Below the limit: the norm comes back and nothing changes.
  EXPECT_NEAR(optim::clip_grad_norm(params, norm * 2), norm, 1e-12 * norm);
  for (std::size_t i = 0; i < grads.size(); ++i) EXPECT_EQ(params[i].grad().to_vector(), grads[i]);

  // Above: every gradient scaled by max / (norm + 1e-6); the new global norm is about max.
  const double max_norm = norm / 4;
  const double returned = optim::clip_grad_norm(params, max_norm);
  EXPECT_NEAR(returned, norm, 1e-12 * norm);
  const double scale = max_norm / (returned + 1e-6);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    std::vector<double> expected;
    for (double x : grads[i]) expected.push_back(x * scale);
    EXPECT_LE(relative_error(params[i].grad().to_vector(), expected), 1e-15) << i;
  }
  EXPECT_NEAR(optim::clip_grad_norm(params, 1e9), max_norm, 1e-6 * max_norm);
}

TEST(ClipGradNorm, Float32AndNonContiguousGradients) {
  auto a = randn<float>({4, 3}).requires_grad_();
  a.set_grad(transpose(tensor<float>({3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4}, {3, 4}), 0, 1));  // norm 5
  auto b = randn<float>({2}).requires_grad_();
  EXPECT_FLOAT_EQ(static_cast<float>(optim::clip_grad_norm(std::vector<Tensor<float>>{a, b}, 1.0)), 5.0f);
  EXPECT_TRUE(a.grad().is_contiguous());
  const auto g = a.grad().to_vector();
  EXPECT_NEAR(g[0], 0.6, 1e-6);
  EXPECT_NEAR(g[11], 0.8, 1e-6);
  EXPECT_EQ(optim::clip_grad_norm(std::vector<Tensor<float>>{b}, 1.0), 0.0);  // no gradients at all
}

TEST(ClipGradNorm, NonFiniteNormLeavesGradientsAlone) {
  auto p = zeros<float>({3}).requires_grad_();
  p.set_grad(tensor<float>({1.0f, INFINITY, 2.0f}));
  EXPECT_TRUE(std::isinf(optim::clip_grad_norm(std::vector<Tensor<float>>{p}, 1.0)));
  EXPECT_EQ(p.grad().to_vector()[2], 2.0f);
}

#ifdef _OPENMP
TEST(ClipGradNorm, IndependentOfThreadCount) {
  const auto g = randn<float>({300001});
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    auto p = zeros<float>({300001}).requires_grad_();
    p.set_grad(clone(g));
    const double norm = optim::clip_grad_norm(std::vector<Tensor<float>>{p}, 1.0);
    omp_set_num_threads(saved);
    return std::make_pair(norm, p.grad().to_vector());
  };
  const auto one = run(1), three = run(3);
  EXPECT_EQ(one.first, three.first);
  EXPECT_EQ(one.second, three.second);
}
#endif

TEST(ClipGradNorm, Errors) {
  auto p = randn<float>({3}).requires_grad_();
  p.set_grad(ones<float>({3}));
  EXPECT_KILN_ERROR(optim::clip_grad_norm(std::vector<Tensor<float>>{p}, 0.0), "clip_grad_norm", "max_norm");
  EXPECT_KILN_ERROR(optim::clip_grad_norm(std::vector<Tensor<float>>{p}, NAN), "clip_grad_norm", "max_norm");
}
