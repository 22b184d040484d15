// Distillation losses (distill/losses.hpp): hand-computed values for a two-class case, the τ²
// scaling, β = 0 and β = 1 as forward and reverse KL and the limits of the interior formula,
// gradients by finite differences (student only; the teacher gets none), the per-token weights, and
// errors.
#include <kiln/distill/losses.hpp>

#include <cmath>
#include <utility>
#include <vector>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using distill::generalized_jsd_loss;
using distill::logit_kd_loss;

namespace {

// Teacher logits [0, 0] (P = [1/2, 1/2]) and student logits [log 3, 0] (Q = [3/4, 1/4]), by hand:
//   KL(P‖Q) = ½ log(½ / ¾) + ½ log(½ / ¼) = ½ log(4/3)
//   KL(Q‖P) = ¾ log(¾ / ½) + ¼ log(¼ / ½) = ¾ log(3/2) − ¼ log 2
//   M = ½P + ½Q = [5/8, 3/8]: JSD(½) = ½ (½ log(4/5) + ½ log(4/3)) + ½ (¾ log(6/5) + ¼ log(2/3))
constexpr double kForward = 0.14384103622589042;
constexpr double kReverse = 0.13081203594113697;
constexpr double kJsdHalf = 0.033822075568605205;

Tensor<double> teacher_2() { return tensor<double>({0.0, 0.0}, {1, 2}); }
Tensor<double> student_2(double temperature = 1.0) { return tensor<double>({temperature * std::log(3.0), 0.0}, {1, 2}); }
Tensor<double> one_token() { return tensor<double>({1.0}); }

// KL(softmax(a) ‖ softmax(b)) per row of [N, V] logits, in plain double.
std::vector<double> plain_kl_rows(const std::vector<double>& a, const std::vector<double>& b, std::size_t V) {
  std::vector<double> out;
  for (std::size_t r = 0; r * V < a.size(); ++r) {
    auto log_softmax_row = [&](const std::vector<double>& x) {
      double m = -INFINITY, s = 0.0;
      for (std::size_t v = 0; v < V; ++v) m = std::max(m, x[r * V + v]);
      for (std::size_t v = 0; v < V; ++v) s += std::exp(x[r * V + v] - m);
      std::vector<double> l(V);
      for (std::size_t v = 0; v < V; ++v) l[v] = x[r * V + v] - m - std::log(s);
      return l;
    };
    const auto la = log_softmax_row(a), lb = log_softmax_row(b);
    double kl = 0.0;
    for (std::size_t v = 0; v < V; ++v) kl += std::exp(la[v]) * (la[v] - lb[v]);
    out.push_back(kl);
  }
  return out;
}

}  // namespace

TEST(DistillLosses, HandComputedTwoClassValues) {
  const auto w = one_token();
  EXPECT_NEAR(logit_kd_loss(student_2(), teacher_2(), w).item(), kForward, 1e-15);
  EXPECT_NEAR(generalized_jsd_loss(student_2(), teacher_2(), w, 0.0).item(), kForward, 1e-15);
  EXPECT_NEAR(generalized_jsd_loss(student_2(), teacher_2(), w, 1.0).item(), kReverse, 1e-15);
  EXPECT_NEAR(generalized_jsd_loss(student_2(), teacher_2(), w, 0.5).item(), kJsdHalf, 1e-15);
  // Symmetric at β = ½: swapping teacher and student gives the same value.
  EXPECT_NEAR(generalized_jsd_loss(teacher_2(), student_2(), w, 0.5).item(), kJsdHalf, 1e-15);
}

// At temperature τ the distributions are softmax(logits / τ), and the KD loss is τ² times their
// KL: student logits [2 log 3, 0] at τ = 2 give Q = [3/4, 1/4] again.
TEST(DistillLosses, TemperatureSquaredScaling) {
  const auto w = one_token();
  EXPECT_NEAR(logit_kd_loss(student_2(2.0), teacher_2(), w, 2.0).item(), 4.0 * kForward, 1e-14);
  EXPECT_NEAR(logit_kd_loss(student_2(0.5), teacher_2(), w, 0.5).item(), 0.25 * kForward, 1e-15);
  // The GKD divergences take the temperature without the τ² factor.
  EXPECT_NEAR(generalized_jsd_loss(student_2(2.0), teacher_2(), w, 1.0, 2.0).item(), kReverse, 1e-15);
}

// β = 0 and β = 1 are forward and reverse KL on random logits (against plain loops); the interior
// formula approaches β·KL(P‖Q) near 0 and (1 − β)·KL(Q‖P) near 1 (first order in β).
TEST(DistillLosses, BetaEndsAreForwardAndReverseKl) {
  Generator gen{5, 0};
  const auto s = randn<double>({6, 11}, 0.0, 2.0, Device::cpu(), gen), t = randn<double>({6, 11}, 0.0, 2.0, Device::cpu(), gen);
  const auto w = full<double>({6}, 1.0);
  double forward = 0.0, reverse = 0.0;
  for (double v : plain_kl_rows(t.to_vector(), s.to_vector(), 11)) forward += v / 6.0;
  for (double v : plain_kl_rows(s.to_vector(), t.to_vector(), 11)) reverse += v / 6.0;
  EXPECT_NEAR(generalized_jsd_loss(s, t, w, 0.0).item(), forward, 1e-14);
  EXPECT_NEAR(generalized_jsd_loss(s, t, w, 1.0).item(), reverse, 1e-14);
  EXPECT_NEAR(logit_kd_loss(s, t, w).item(), forward, 1e-14);
  // Near the ends, with M = Q + β(P − Q): KL(P‖M) = KL(P‖Q) − β χ²(P‖Q) + O(β²) and
  // KL(Q‖M) = β²/2 χ²(P‖Q) + O(β³), χ²(P‖Q) = Σ p²/q − 1; so d(β)/β = KL(P‖Q) − β/2 χ²(P‖Q) + O(β²),
  // and by symmetry d(1 − β)/β = KL(Q‖P) − β/2 χ²(Q‖P) + O(β²). (Without the χ² term the
  // difference is β/2 χ², 1e-4 of the KL here: these logits' ratios p/q reach thousands.)
  auto chi2 = [](const Tensor<double>& a, const Tensor<double>& b) {  // mean over rows of Σ p_a²/p_b − 1
    const auto pa = softmax(a, -1).to_vector(), pb = softmax(b, -1).to_vector();
    double c = 0.0;
    for (std::size_t i = 0; i < pa.size(); ++i) c += pa[i] * pa[i] / pb[i];
    return c / 6.0 - 1.0;
  };
  // The remainder is O(β²) (its coefficient involves Σ p³/q², large here): 1e-6 of the KL at
  // β = 1e-6, a hundred times less at β = 1e-7.
  for (auto [small, tol] : {std::pair{1e-6, 1e-6}, std::pair{1e-7, 1e-8}}) {
    EXPECT_NEAR(generalized_jsd_loss(s, t, w, small).item() / small, forward - small / 2 * chi2(t, s), tol * forward);
    EXPECT_NEAR(generalized_jsd_loss(s, t, w, 1.0 - small).item() / small, reverse - small / 2 * chi2(s, t),
                tol * reverse);
  }
}

TEST(DistillLosses, GradientsReachTheStudentOnly) {
  Generator gen{9, 0};
  const auto t = randn<double>({2, 3, 7}, 0.0, 1.5, Device::cpu(), gen);
  const auto w = tensor<double>({1, 1, 0, 0, 1, 0.5}, {2, 3});  // masked and fractional weights
  for (double tau : {1.0, 2.5}) {
    EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& x) { return logit_kd_loss(x[0], t, w, tau); },
                     {randn<double>({2, 3, 7}, 0.0, 1.5, Device::cpu(), gen)});
    for (double beta : {0.0, 0.3, 0.9, 1.0})
      EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& x) { return generalized_jsd_loss(x[0], t, w, beta, tau); },
                       {randn<double>({2, 3, 7}, 0.0, 1.5, Device::cpu(), gen)});
  }
  // The teacher is a constant even when its logits carry a graph.
  const auto teacher = clone(t).requires_grad_(), student = randn<double>({2, 3, 7}).requires_grad_();
  generalized_jsd_loss(student, teacher, w, 0.5).backward();
  EXPECT_TRUE(student.grad().defined());
  EXPECT_FALSE(teacher.grad().defined());
}

// Tokens of weight 0 (the prompt) do not count, whatever their logits; the mean is over the
// weights; all weights 0 give 0 and no NaN.
TEST(DistillLosses, WeightsSelectAndAverageTokens) {
  Generator gen{13, 0};
  const auto s = randn<double>({4, 5}, 0.0, 1.0, Device::cpu(), gen), t = randn<double>({4, 5}, 0.0, 1.0, Device::cpu(), gen);
  const std::vector<double> rows = plain_kl_rows(t.to_vector(), s.to_vector(), 5);
  const auto w = tensor<double>({0.0, 2.0, 0.0, 1.0});
  EXPECT_NEAR(logit_kd_loss(s, t, w).item(), (2.0 * rows[1] + rows[3]) / 3.0, 1e-14);
  auto t2 = t.to_vector();
  for (int v = 0; v < 5; ++v) t2[static_cast<std::size_t>(v)] += 3.0 * v;  // row 0 changed, but masked
  EXPECT_NEAR(logit_kd_loss(s, Tensor<double>::from_vector(t2, {4, 5}), w).item(), logit_kd_loss(s, t, w).item(), 1e-15);
  const auto student = clone(s).requires_grad_();
  const auto zero = generalized_jsd_loss(student, t, zeros<double>({4}), 0.5);
  EXPECT_EQ(zero.item(), 0.0);
  zero.backward();
  for (double g : student.grad().to_vector()) EXPECT_EQ(g, 0.0);
}

TEST(DistillLosses, FloatFollowsDouble) {
  Generator gen{17, 0};
  const auto s = randn<double>({9, 301}, 0.0, 2.0, Device::cpu(), gen), t = randn<double>({9, 301}, 0.0, 2.0, Device::cpu(), gen);
  const auto w = full<double>({9}, 1.0);
  // Float rounding of the logits' log-softmax and of sums over 301 classes: ~1e-6 relative.
  EXPECT_NEAR(logit_kd_loss(cast<float>(s), cast<float>(t), cast<float>(w), 2.0).item(), logit_kd_loss(s, t, w, 2.0).item(),
              1e-5 * logit_kd_loss(s, t, w, 2.0).item());
  EXPECT_NEAR(generalized_jsd_loss(cast<float>(s), cast<float>(t), cast<float>(w), 0.4).item(),
              generalized_jsd_loss(s, t, w, 0.4).item(), 1e-5 * generalized_jsd_loss(s, t, w, 0.4).item());
}

TEST(DistillLosses, Errors) {
  const auto s = randn<float>({2, 3, 5}), w = full<float>({2, 3}, 1.0f);
  EXPECT_KILN_ERROR(logit_kd_loss(s, randn<float>({2, 3, 6}), w), "logit_kd_loss", "[2, 3, 5]", "[2, 3, 6]");
  EXPECT_KILN_ERROR(logit_kd_loss(s, s, full<float>({6}, 1.0f)), "logit_kd_loss", "weights of shape [6]", "[2, 3]");
  EXPECT_KILN_ERROR(logit_kd_loss(s, s, w, 0.0), "logit_kd_loss", "temperature");
  EXPECT_KILN_ERROR(generalized_jsd_loss(s, s, w, 1.5), "generalized_jsd_loss", "beta", "1.5");
  EXPECT_KILN_ERROR(generalized_jsd_loss(s, s, w, -0.1), "generalized_jsd_loss", "beta");
  EXPECT_KILN_ERROR(generalized_jsd_loss(s, s, w, 0.5, NAN), "generalized_jsd_loss", "temperature");
}
