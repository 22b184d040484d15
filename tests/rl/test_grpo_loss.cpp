// rl/grpo_loss.hpp: advantages and every loss type against values worked out by hand; the loss
// gradient against finite differences in double; k3; where clipping zeroes the gradient;
// truncation masking; dynamic sampling; bad input.
#include <cmath>
#include <limits>

#include <kiln/rl/grpo_loss.hpp>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::rl;
using kiln::testing::relative_error;

namespace {

const double kLn2 = std::log(2.0);

// ---- the hand-worked example: B = 2 sequences, T = 3 -------------------------------------------
// mask            seq0 [1, 1, 0]          seq1 [1, 1, 1]
// advantage       A0 = 1                  A1 = -0.5
// ratio r         [1.1, 1.5, 2.0]         [0.5, 1.0, 1.3]          (ε_low 0.2, ε_high 0.28)
// clip(r)         [1.1, 1.28, 1.28]       [0.8, 1.0, 1.28]
// -min(rA, c(r)A) [-1.1, -1.28, (masked)] [0.4, 0.5, 0.65]
//   seq0 t1: min(1.5, 1.28) = 1.28, clip-high binds; seq1 t0: min(-0.25, -0.4) = -0.4, clip-low
//   binds; seq1 t2: min(-0.65, -0.64) = -0.65, unclipped (A < 0 above the range).
// Sums over the mask: seq0 -2.38 (2 tokens), seq1 1.55 (3 tokens), all -0.83 (5 tokens).
//   grpo    = (-2.38/2 + 1.55/3) / 2 = (-1.19 + 0.516666...) / 2 = -0.336666...
//   bnpo    = -0.83 / 5 = -0.166
//   dr_grpo = -0.83 / (2 · 4) = -0.10375                 (max_completion_length 4)
//   dapo    = -0.83 / 10 = -0.083                       (10 tokens in the whole step)
// KL: ref − logp = d = [ln2, 0, 5] / [0, −ln2, ln2]; k3 = e^d − d − 1:
//   e^ln2 − ln2 − 1 = 1 − ln2;  e^−ln2 + ln2 − 1 = ln2 − 0.5;  0 at d = 0.
//   seq0 masked k3 sum = 1 − ln2; seq1 = (ln2 − 0.5) + (1 − ln2) = 0.5; total 1.5 − ln2.
// With β = 0.1 the sums become seq0 -2.38 + 0.1(1 − ln2), seq1 1.55 + 0.05, all -0.83 + 0.1(1.5 − ln2).
// Clip metrics over the 5 masked tokens: low {seq1 t0} = 0.2, high {seq0 t1} = 0.2 (seq0 t2 would
// be high too but is masked), region 0.4.
struct Example {
  Tensor<double> logp, old_logp, ref_logp, advantages;
  Tensor<bool> mask;
};

Example example() {
  const std::vector<double> logp = {-1.3, -0.2, -2.7, -0.9, -3.1, -0.05};
  const std::vector<double> r = {1.1, 1.5, 2.0, 0.5, 1.0, 1.3};
  const std::vector<double> d = {kLn2, 0.0, 5.0, 0.0, -kLn2, kLn2};
  std::vector<double> old, ref;
  for (std::size_t i = 0; i < logp.size(); ++i) {
    old.push_back(logp[i] - std::log(r[i]));
    ref.push_back(logp[i] + d[i]);
  }
  return {tensor<double>(logp, {2, 3}), tensor<double>(old, {2, 3}), tensor<double>(ref, {2, 3}),
          tensor<double>({1.0, -0.5}, {2}), Tensor<bool>::from_vector({true, true, false, true, true, true}, {2, 3})};
}

GrpoConfig example_config(LossType type, double beta = 0.0) {
  GrpoConfig c;
  c.group_size = 2;
  c.loss_type = type;
  c.epsilon_low = 0.2;
  c.epsilon_high = 0.28;
  c.beta = beta;
  c.max_completion_length = 4;
  return c;
}

template <class T>
GrpoLossInputs<T> inputs_of(const Example& e, bool with_ref, double dapo_tokens = 10.0) {
  GrpoLossInputs<T> in;
  in.logp = cast<T>(e.logp);
  in.old_logp = cast<T>(e.old_logp);
  if (with_ref) in.ref_logp = cast<T>(e.ref_logp);
  in.advantages = cast<T>(e.advantages);
  in.mask = e.mask;
  in.dapo_token_count = dapo_tokens;
  return in;
}

double expected_loss(LossType type, double beta) {
  const double s0 = -2.38 + beta * (1.0 - kLn2), s1 = 1.55 + beta * 0.5, all = s0 + s1;
  switch (type) {
    case LossType::grpo: return (s0 / 2.0 + s1 / 3.0) / 2.0;
    case LossType::bnpo: return all / 5.0;
    case LossType::dr_grpo: return all / (2.0 * 4.0);
    case LossType::dapo: return all / 10.0;
  }
  return NAN;
}

const std::vector<LossType> kLossTypes = {LossType::grpo, LossType::bnpo, LossType::dr_grpo, LossType::dapo};

}  // namespace

TEST(GrpoAdvantages, HandComputedForEveryScale) {
  // G = 4, three groups:
  //   g0 [1, 0, 0, 1]: mean 0.5, deviations ±0.5, unbiased var 4·0.25/3 = 1/3, std sqrt(1/3)
  //   g1 [1, 1, 1, 1]: zero spread: advantages exactly 0
  //   g2 [0, 0, 0, 2]: mean 0.5, deviations -0.5 ×3 and 1.5, var (3·0.25 + 2.25)/3 = 1, std 1
  // Batch of 12: sum 8, mean 2/3, Σr² = 10, SS = 10 − 12·4/9 = 14/3, unbiased var 14/33.
  const std::vector<double> r = {1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 2};
  const double eps = 1e-4, s0 = std::sqrt(1.0 / 3.0), s2 = 1.0, sb = std::sqrt(14.0 / 33.0);
  const std::vector<double> dev = {0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5};

  const Advantages group = compute_advantages(r, 4, ScaleRewards::group, eps);
  const Advantages batch = compute_advantages(r, 4, ScaleRewards::batch, eps);
  const Advantages none = compute_advantages(r, 4, ScaleRewards::none, eps);
  for (std::size_t i = 0; i < r.size(); ++i) {
    const double sg = i < 4 ? s0 : s2;
    EXPECT_NEAR(group.advantages[i], i >= 4 && i < 8 ? 0.0 : dev[i] / (sg + eps), 1e-15) << i;
    EXPECT_NEAR(batch.advantages[i], dev[i] / (sb + eps), 1e-15) << i;
    EXPECT_NEAR(none.advantages[i], dev[i], 1e-15) << i;
  }
  for (std::size_t i = 4; i < 8; ++i) {  // exactly zero, not merely small
    EXPECT_EQ(group.advantages[i], 0.0);
    EXPECT_EQ(batch.advantages[i], 0.0);
    EXPECT_EQ(none.advantages[i], 0.0);
  }
  EXPECT_NEAR(group.group_mean[0], 0.5, 1e-15);
  EXPECT_EQ(group.group_mean[1], 1.0);
  EXPECT_NEAR(group.group_std[0], s0, 1e-15);
  EXPECT_EQ(group.group_std[1], 0.0);
  EXPECT_NEAR(group.group_std[2], 1.0, 1e-15);
  EXPECT_NEAR(group.batch_std, sb, 1e-15);
  EXPECT_EQ(group.zero_spread, (std::vector<bool>{false, true, false}));
  for (const Advantages* a : {&group, &batch, &none}) EXPECT_DOUBLE_EQ(a->frac_reward_zero_std, 1.0 / 3.0);

  // Equal rewards whose computed mean is off by rounding (0.1 + 0.1 + 0.1 = 0.30000000000000004)
  // still give exactly 0, not (0.1 − 0.10000000000000002) / ε ≈ −1e-13.
  for (ScaleRewards scale : {ScaleRewards::group, ScaleRewards::batch, ScaleRewards::none}) {
    const Advantages flat = compute_advantages({0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.2, 0.3, 0.4}, 3, scale);
    for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(flat.advantages[i], 0.0) << to_string(scale) << " " << i;
    EXPECT_NE(flat.advantages[6], 0.0);
    EXPECT_DOUBLE_EQ(flat.frac_reward_zero_std, 2.0 / 3.0);
  }

  // Within each group the advantages sum to 0 (the group mean is subtracted).
  for (std::size_t g = 0; g < 3; ++g) {
    double s = 0.0;
    for (std::size_t i = 0; i < 4; ++i) s += group.advantages[g * 4 + i];
    EXPECT_NEAR(s, 0.0, 1e-14);
  }
  // The config overload takes G, scale and ε from the config; advantages_tensor slices.
  GrpoConfig c;
  c.group_size = 4;
  c.scale_rewards = ScaleRewards::batch;
  EXPECT_EQ(compute_advantages(r, c).advantages, batch.advantages);
  const Tensor<float> slice = advantages_tensor<float>(batch, 8, 4);
  EXPECT_EQ(slice.shape(), Shape{4});
  EXPECT_EQ(slice.at({3}), static_cast<float>(batch.advantages[11]));
}

TEST(GrpoAdvantages, RandomGroupsAgainstDirectFormula) {
  // Independent of the implementation's loops: two-pass formulas over fresh random rewards.
  Generator gen{201, 0};
  const std::int64_t G = 7, P = 5;
  const std::vector<double> r = rand<double>({P * G}, -2.0, 3.0, Device::cpu(), gen).to_vector();
  const Advantages a = compute_advantages(r, G, ScaleRewards::group, 1e-4);
  for (std::int64_t g = 0; g < P; ++g) {
    double mean = 0.0, var = 0.0;
    for (std::int64_t i = 0; i < G; ++i) mean += r[static_cast<std::size_t>(g * G + i)] / G;
    for (std::int64_t i = 0; i < G; ++i) var += std::pow(r[static_cast<std::size_t>(g * G + i)] - mean, 2) / (G - 1);
    for (std::int64_t i = 0; i < G; ++i) {
      const auto k = static_cast<std::size_t>(g * G + i);
      EXPECT_NEAR(a.advantages[k], (r[k] - mean) / (std::sqrt(var) + 1e-4), 1e-13);
    }
  }
  EXPECT_EQ(a.frac_reward_zero_std, 0.0);
}

TEST(GrpoLoss, EveryLossTypeMatchesHandValues) {
  const Example e = example();
  for (LossType type : kLossTypes) {
    for (double beta : {0.0, 0.1}) {
      const auto res = grpo_loss(example_config(type, beta), inputs_of<double>(e, beta != 0.0));
      EXPECT_NEAR(res.loss.item(), expected_loss(type, beta), 1e-14) << to_string(type) << " beta " << beta;
      const auto res_f = grpo_loss(example_config(type, beta), inputs_of<float>(e, beta != 0.0));
      EXPECT_NEAR(res_f.loss.item(), expected_loss(type, beta), 2e-6) << to_string(type) << " float beta " << beta;

      EXPECT_EQ(res.metrics.tokens, 5);
      EXPECT_NEAR(res.metrics.clip_low, 0.2, 1e-15);
      EXPECT_NEAR(res.metrics.clip_high, 0.2, 1e-15);
      EXPECT_NEAR(res.metrics.clip_region, 0.4, 1e-15);
      EXPECT_EQ(res.metrics.kl.has_value(), beta != 0.0);
      if (res.metrics.kl) {
        EXPECT_NEAR(*res.metrics.kl, (1.5 - kLn2) / 5.0, 1e-15);
      }
    }
  }
  // β = 0 with a reference given: the KL is measured for logging but not added to the loss.
  const auto logged = grpo_loss(example_config(LossType::bnpo, 0.0), inputs_of<double>(example(), true));
  EXPECT_NEAR(logged.loss.item(), expected_loss(LossType::bnpo, 0.0), 1e-15);
  ASSERT_TRUE(logged.metrics.kl.has_value());
  EXPECT_NEAR(*logged.metrics.kl, (1.5 - kLn2) / 5.0, 1e-15);
}

TEST(GrpoLoss, GradientMatchesFiniteDifferences) {
  // Fresh random log-probs with ratios spread across and beyond the clip range, both advantage
  // signs, a ragged mask and a KL term, for every normaliser; odd sizes B = 3, T = 5.
  Generator gen{202, 0};
  const std::int64_t B = 3, T = 5;
  for (LossType type : kLossTypes) {
    for (double beta : {0.0, 0.04}) {
      const Tensor<double> logp = randn<double>({B, T}, -1.0, 0.5, Device::cpu(), gen);
      const Tensor<double> old = add(logp, randn<double>({B, T}, 0.0, 0.3, Device::cpu(), gen));
      const Tensor<double> ref = add(logp, randn<double>({B, T}, 0.0, 0.5, Device::cpu(), gen));
      const Tensor<double> adv = randn<double>({B}, 0.0, 1.0, Device::cpu(), gen);
      const Tensor<bool> mask = completion_mask({5, 2, 4}, T);
      GrpoConfig c = example_config(type, beta);
      c.max_completion_length = 7;
      SCOPED_TRACE(std::string(to_string(type)) + " beta " + std::to_string(beta));
      EXPECT_GRADCHECK(
          [&](const std::vector<Tensor<double>>& x) {
            GrpoLossInputs<double> in{x[0], old, ref, adv, mask, 17.0};
            return grpo_loss(c, in).loss;
          },
          {logp});
    }
  }
}

TEST(GrpoLoss, UndefinedOldLogpMeansRatioOne) {
  // μ = 1: old_logp undefined is π_old = π_θ, i.e. the same loss and gradient as passing a copy of
  // logp's values; the gradient is then −A·m/N per token (bnpo), the policy-gradient term.
  Generator gen{203, 0};
  const Tensor<double> values = randn<double>({2, 4}, -1.0, 0.5, Device::cpu(), gen);
  const Tensor<double> adv = tensor<double>({0.7, -1.3}, {2});
  const Tensor<bool> mask = completion_mask({4, 3}, 4);
  const GrpoConfig c = example_config(LossType::bnpo);
  Tensor<double> a = clone(values), b = clone(values);
  a.requires_grad_();
  b.requires_grad_();
  const auto ra = grpo_loss(c, GrpoLossInputs<double>{a, {}, {}, adv, mask});
  const auto rb = grpo_loss(c, GrpoLossInputs<double>{b, clone(values), {}, adv, mask});
  EXPECT_EQ(ra.loss.item(), rb.loss.item());
  EXPECT_NEAR(ra.loss.item(), -(0.7 * 4 - 1.3 * 3) / 7.0, 1e-15);
  ra.loss.backward();
  rb.loss.backward();
  EXPECT_EQ(a.grad().to_vector(), b.grad().to_vector());
  for (std::int64_t t = 0; t < 4; ++t) {
    EXPECT_NEAR(a.grad().at({0, t}), -0.7 / 7.0, 1e-16);
    EXPECT_NEAR(a.grad().at({1, t}), t < 3 ? 1.3 / 7.0 : 0.0, 1e-16);
  }
  EXPECT_EQ(ra.metrics.clip_region, 0.0);
}

TEST(GrpoLoss, K3IsNonNegativeAndZeroAtTheReference) {
  Generator gen{204, 0};
  const Tensor<double> logp = randn<double>({7, 13}, -2.0, 2.0, Device::cpu(), gen);
  const Tensor<double> ref = randn<double>({7, 13}, -2.0, 2.0, Device::cpu(), gen);
  for (double v : k3_kl(logp, ref).to_vector()) EXPECT_GE(v, 0.0);
  for (double v : k3_kl(cast<float>(logp), cast<float>(ref)).to_vector()) EXPECT_GE(v, 0.0);
  for (double v : k3_kl(logp, logp).to_vector()) EXPECT_EQ(v, 0.0);
  // Against e^d − d − 1 computed here.
  const auto lv = logp.to_vector(), rv = ref.to_vector(), kv = k3_kl(logp, ref).to_vector();
  for (std::size_t i = 0; i < lv.size(); ++i) {
    const double d = rv[i] - lv[i];
    EXPECT_NEAR(kv[i], std::exp(d) - d - 1.0, 1e-12 * std::max(1.0, std::exp(d)));
  }

  // In the loss: with ref = logp the KL metric is exactly 0 and β changes neither loss nor gradient.
  const Tensor<double> old = add(logp, randn<double>({7, 13}, 0.0, 0.2, Device::cpu(), gen));
  const Tensor<double> adv = randn<double>({7}, 0.0, 1.0, Device::cpu(), gen);
  const Tensor<bool> mask = gt(rand<double>({7, 13}, 0.0, 1.0, Device::cpu(), gen), 0.3);
  Tensor<double> x0 = clone(logp), x1 = clone(logp);
  x0.requires_grad_();
  x1.requires_grad_();
  const auto r0 = grpo_loss(example_config(LossType::dapo, 0.0), GrpoLossInputs<double>{x0, old, {}, adv, mask, 200.0});
  const auto r1 =
      grpo_loss(example_config(LossType::dapo, 0.5), GrpoLossInputs<double>{x1, old, clone(logp), adv, mask, 200.0});
  EXPECT_EQ(r1.metrics.kl.value(), 0.0);
  EXPECT_EQ(r0.loss.item(), r1.loss.item());
  r0.loss.backward();
  r1.loss.backward();
  EXPECT_EQ(x0.grad().to_vector(), x1.grad().to_vector());
}

TEST(GrpoLoss, ClippingZeroesTheGradientExactlyWhereItBinds) {
  // One sequence per (ratio, advantage sign) case, 1 token each, bnpo over 8 tokens:
  //   ratio 1.5 (> 1 + 0.28), 0.5 (< 1 − 0.2), 1.1 and 0.9 (inside), each with A = +1 and A = −1.
  // The clipped branch binds, so the gradient is exactly 0, for (1.5, +) and (0.5, −); everywhere
  // else d/dlogp [−r·A / 8] = −r·A/8 (r = exp(logp − old), so dr/dlogp = r).
  const std::vector<double> r = {1.5, 1.5, 0.5, 0.5, 1.1, 1.1, 0.9, 0.9};
  const std::vector<double> A = {1, -1, 1, -1, 1, -1, 1, -1};
  Generator gen{205, 0};
  const std::vector<double> lp = randn<double>({8, 1}, -1.0, 0.5, Device::cpu(), gen).to_vector();
  std::vector<double> old;
  for (std::size_t i = 0; i < 8; ++i) old.push_back(lp[i] - std::log(r[i]));
  Tensor<double> logp = tensor<double>(lp, {8, 1});
  logp.requires_grad_();
  const auto res = grpo_loss(example_config(LossType::bnpo),
                             GrpoLossInputs<double>{logp, tensor<double>(old, {8, 1}), {}, tensor<double>(A, {8}),
                                                    ones<bool>({8, 1})});
  res.loss.backward();
  const auto g = logp.grad().to_vector();
  for (std::size_t i = 0; i < 8; ++i) {
    const bool binds = (r[i] > 1.28 && A[i] > 0) || (r[i] < 0.8 && A[i] < 0);
    if (binds) {
      EXPECT_EQ(g[i], 0.0) << "case " << i;
    } else {
      EXPECT_NE(g[i], 0.0) << "case " << i;
      EXPECT_NEAR(g[i], -r[i] * A[i] / 8.0, 1e-15) << "case " << i;
    }
  }
  EXPECT_DOUBLE_EQ(res.metrics.clip_low, 1.0 / 8.0);
  EXPECT_DOUBLE_EQ(res.metrics.clip_high, 1.0 / 8.0);
  EXPECT_DOUBLE_EQ(res.metrics.clip_region, 2.0 / 8.0);
}

TEST(GrpoLoss, TruncationMaskingRemovesThoseSequences) {
  Generator gen{206, 0};
  const std::int64_t B = 4, T = 6;
  const Tensor<bool> mask = completion_mask({6, 3, 6, 5}, T);
  const std::vector<bool> truncated = {true, false, true, false};  // hit the cap without a stop token
  const Tensor<bool> masked = mask_truncated(mask, truncated);
  const auto mv = masked.to_vector(), m0 = mask.to_vector();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t) {
      const auto i = static_cast<std::size_t>(b * T + t);
      EXPECT_EQ(mv[i], truncated[static_cast<std::size_t>(b)] ? false : static_cast<bool>(m0[i])) << b << "," << t;
    }
  EXPECT_EQ(count_tokens(mask), 20);
  EXPECT_EQ(count_tokens(masked), 8);

  const Tensor<double> values = randn<double>({B, T}, -1.0, 0.5, Device::cpu(), gen);
  const Tensor<double> old = add(values, randn<double>({B, T}, 0.0, 0.2, Device::cpu(), gen));
  const Tensor<double> adv = randn<double>({B}, 0.0, 1.0, Device::cpu(), gen);
  for (LossType type : kLossTypes) {
    Tensor<double> logp = clone(values);
    logp.requires_grad_();
    const auto res = grpo_loss(example_config(type), GrpoLossInputs<double>{logp, old, {}, adv, masked, 8.0});
    res.loss.backward();
    for (std::int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(logp.grad().at({0, t}), 0.0) << to_string(type);
      EXPECT_EQ(logp.grad().at({2, t}), 0.0) << to_string(type);
    }
    EXPECT_NE(logp.grad().at({1, 0}), 0.0);
    EXPECT_EQ(res.metrics.tokens, 8);
    // The same loss as the kept sequences alone, up to the normaliser: grpo and dr_grpo still
    // count the truncated rows in B (as TRL does), bnpo and dapo count tokens.
    const Tensor<std::int64_t> keep = tensor<std::int64_t>({1, 3}, {2});
    const double scale_b = type == LossType::grpo || type == LossType::dr_grpo ? 2.0 / 4.0 : 1.0;
    const auto alone =
        grpo_loss(example_config(type), GrpoLossInputs<double>{index_select(values, 0, keep), index_select(old, 0, keep),
                                                               {}, index_select(adv, 0, keep),
                                                               index_select(mask, 0, keep), 8.0});
    EXPECT_NEAR(res.loss.item(), alone.loss.item() * scale_b, 1e-15) << to_string(type);
  }
}

TEST(GrpoLoss, AnythingAtMaskedPositionsIsIgnored) {
  // Padding may hold sentinels: old/ref log-probs of ±inf or NaN at masked positions change neither
  // the loss nor the gradient, and nothing non-finite comes out.
  Generator gen{208, 0};
  const std::int64_t B = 3, T = 4;
  const Tensor<double> values = randn<double>({B, T}, -1.0, 0.5, Device::cpu(), gen);
  const Tensor<double> old = add(values, randn<double>({B, T}, 0.0, 0.3, Device::cpu(), gen));
  const Tensor<double> ref = add(values, randn<double>({B, T}, 0.0, 0.3, Device::cpu(), gen));
  const Tensor<double> adv = randn<double>({B}, 0.0, 1.0, Device::cpu(), gen);
  const Tensor<bool> mask = completion_mask({4, 1, 2}, T);
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor<double> old_bad = where(mask, old, -inf), ref_bad = where(mask, ref, NAN);
  const Tensor<double> logp_bad_values = where(mask, values, inf);
  for (LossType type : kLossTypes) {
    Tensor<double> a = clone(values), b = clone(logp_bad_values);
    a.requires_grad_();
    b.requires_grad_();
    const GrpoConfig c = example_config(type, 0.05);
    const auto clean = grpo_loss(c, GrpoLossInputs<double>{a, old, ref, adv, mask, 7.0});
    const auto dirty = grpo_loss(c, GrpoLossInputs<double>{b, old_bad, ref_bad, adv, mask, 7.0});
    EXPECT_EQ(clean.loss.item(), dirty.loss.item()) << to_string(type);
    EXPECT_EQ(clean.metrics.kl.value(), dirty.metrics.kl.value());
    EXPECT_EQ(clean.metrics.clip_region, dirty.metrics.clip_region);
    clean.loss.backward();
    dirty.loss.backward();
    EXPECT_EQ(a.grad().to_vector(), b.grad().to_vector()) << to_string(type);
  }
  EXPECT_DOUBLE_EQ(masked_mean(logp_bad_values, mask), masked_mean(values, mask));
}

TEST(GrpoLoss, DapoMicroBatchesSumToTheTokenMeanOfTheBatch) {
  // Split 5 sequences into micro-batches of 2 and 3: the dapo losses (normalised by all tokens)
  // add up to bnpo's token mean over the whole batch, and so do their gradients.
  Generator gen{207, 0};
  const std::int64_t B = 5, T = 7;
  const Tensor<double> values = randn<double>({B, T}, -1.0, 0.5, Device::cpu(), gen);
  const Tensor<double> old = add(values, randn<double>({B, T}, 0.0, 0.3, Device::cpu(), gen));
  const Tensor<double> adv = randn<double>({B}, 0.0, 1.0, Device::cpu(), gen);
  const Tensor<bool> mask = completion_mask({7, 1, 4, 6, 3}, T);
  const auto N = static_cast<double>(count_tokens(mask));
  Tensor<double> whole = clone(values), parts = clone(values);
  whole.requires_grad_();
  parts.requires_grad_();
  const auto full_batch = grpo_loss(example_config(LossType::bnpo), GrpoLossInputs<double>{whole, old, {}, adv, mask});
  full_batch.loss.backward();
  double total = 0.0;
  for (auto [start, len] : std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 2}, {2, 3}}) {
    const auto res = grpo_loss(example_config(LossType::dapo),
                               GrpoLossInputs<double>{narrow(parts, 0, start, len), narrow(old, 0, start, len), {},
                                                      narrow(adv, 0, start, len), narrow(mask, 0, start, len), N});
    res.loss.backward();
    total += res.loss.item();
  }
  EXPECT_NEAR(total, full_batch.loss.item(), 1e-15);
  EXPECT_LE(relative_error(parts.grad().to_vector(), whole.grad().to_vector()), 1e-15);
}

TEST(GrpoLoss, MasksAndMeans) {
  const Tensor<bool> m = completion_mask({0, 2, 3}, 3);
  EXPECT_EQ(m.to_vector(), (std::vector<bool>{false, false, false, true, true, false, true, true, true}));
  const Tensor<double> v = tensor<double>({9, 9, 9, 1, 2, 9, 3, 4, 5}, {3, 3});
  EXPECT_DOUBLE_EQ(masked_mean(v, m), 3.0);
  EXPECT_EQ(masked_mean(v, zeros<bool>({3, 3})), 0.0);
}

TEST(GrpoDynamicSampling, ZeroSpreadGroupsAndRefill) {
  EXPECT_EQ(zero_spread_groups({1, 1, 0, 1, 0.5, 0.5, 0, 0.25}, 2), (std::vector<bool>{true, false, true, false}));
  DynamicSampler s(3, 2);
  // Round 1: groups [1,1] and [0.5,0.5]... kept: those with spread, in order.
  EXPECT_EQ(s.offer({1, 1, 0, 1, 1, 1, 0.5, 0}), (std::vector<std::int64_t>{1, 3}));
  EXPECT_FALSE(s.full());
  EXPECT_EQ(s.held(), 2);
  EXPECT_EQ(s.dropped_zero_spread(), 2);
  // Round 2: one more is needed; group 2 has spread but the target is reached: surplus.
  EXPECT_EQ(s.offer({0, 0, 1, 0, 0, 1}), (std::vector<std::int64_t>{1}));
  EXPECT_TRUE(s.full());
  EXPECT_EQ(s.held(), 3);
  EXPECT_EQ(s.rounds(), 2);
  EXPECT_EQ(s.dropped_zero_spread(), 3);
  EXPECT_EQ(s.dropped_surplus(), 1);
  EXPECT_TRUE(s.offer({0, 1}).empty());
  EXPECT_EQ(s.dropped_surplus(), 2);
  // The advantages of the kept groups carry signal; a kept batch has no zero-spread group.
  const Advantages a = compute_advantages({0, 1, 1, 0, 1, 0}, 2, ScaleRewards::group);
  EXPECT_EQ(a.frac_reward_zero_std, 0.0);
}

TEST(GrpoConfig, ParsingValidationAndSchedule) {
  EXPECT_EQ(parse_loss_type("dr_grpo"), LossType::dr_grpo);
  EXPECT_EQ(parse_scale_rewards("batch"), ScaleRewards::batch);
  for (LossType t : kLossTypes) EXPECT_EQ(parse_loss_type(to_string(t)), t);
  EXPECT_KILN_ERROR(parse_loss_type("ppo"), "parse_loss_type", "ppo");
  EXPECT_KILN_ERROR(parse_scale_rewards("std"), "parse_scale_rewards", "std");

  GrpoConfig c;
  EXPECT_NO_THROW(validate(c));
  EXPECT_FALSE(needs_reference(c));
  c.beta = 0.04;
  EXPECT_TRUE(needs_reference(c));
  c.ref_reset_steps = 50;
  EXPECT_FALSE(reference_reset_due(c, 49));
  EXPECT_TRUE(reference_reset_due(c, 50));
  EXPECT_TRUE(reference_reset_due(c, 100));
  c.ref_reset_steps = 0;
  EXPECT_FALSE(reference_reset_due(c, 100));

  auto bad = [](auto edit) {
    GrpoConfig b;
    edit(b);
    return b;
  };
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.group_size = 1; })), "GrpoConfig", "group_size");
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.epsilon_low = 1.0; })), "GrpoConfig", "epsilon_low");
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.epsilon_high = 0.0; })), "GrpoConfig", "epsilon_high");
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.beta = -0.1; })), "GrpoConfig", "beta");
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.num_iterations = 0; })), "GrpoConfig", "num_iterations");
  EXPECT_KILN_ERROR(validate(bad([](GrpoConfig& b) { b.max_completion_length = 0; })), "GrpoConfig",
                    "max_completion_length");
}

TEST(GrpoLoss, BadInput) {
  EXPECT_KILN_ERROR(compute_advantages({1, 2, 3}, 2, ScaleRewards::group), "compute_advantages", "3 rewards",
                    "group_size 2");
  EXPECT_KILN_ERROR(compute_advantages({1, NAN}, 2, ScaleRewards::group), "compute_advantages", "reward 1");
  EXPECT_KILN_ERROR(compute_advantages({}, 2, ScaleRewards::group), "compute_advantages");
  EXPECT_KILN_ERROR(mask_truncated(ones<bool>({2, 3}), {true}), "mask_truncated", "[2, 3]", "needs 2 truncation flags, got 1");
  EXPECT_KILN_ERROR(completion_mask({4}, 3), "completion_mask", "length 4");
  EXPECT_KILN_ERROR(DynamicSampler(0, 2), "DynamicSampler", "target_groups");

  const Example e = example();
  const GrpoConfig c = example_config(LossType::bnpo);
  auto with = [&](auto edit) {
    GrpoLossInputs<double> in = inputs_of<double>(e, false);
    edit(in);
    return in;
  };
  EXPECT_KILN_ERROR(grpo_loss(c, with([](auto& in) { in.mask = ones<bool>({2, 4}); })), "grpo_loss", "mask of shape [2, 4]",
                    "[2, 3]");
  EXPECT_KILN_ERROR(grpo_loss(c, with([](auto& in) { in.advantages = zeros<double>({3}); })), "grpo_loss",
                    "advantages must be [2]", "[3]");
  EXPECT_KILN_ERROR(grpo_loss(c, with([](auto& in) { in.old_logp = zeros<double>({3, 2}); })), "grpo_loss", "old_logp",
                    "[3, 2]");
  EXPECT_KILN_ERROR(grpo_loss(c, with([](auto& in) { in.logp = zeros<double>({6}); })), "grpo_loss", "[B, T]", "[6]");
  EXPECT_KILN_ERROR(grpo_loss(example_config(LossType::bnpo, 0.1), with([](auto&) {})), "grpo_loss", "needs ref_logp");
  EXPECT_KILN_ERROR(grpo_loss(example_config(LossType::dapo), with([](auto& in) { in.dapo_token_count = 0; })),
                    "grpo_loss", "dapo_token_count");
  EXPECT_KILN_ERROR(grpo_loss(example_config(LossType::dapo), with([](auto& in) { in.dapo_token_count = 4; })),
                    "grpo_loss", "dapo_token_count 4", "5 completion tokens");
  GrpoConfig g1 = c;
  g1.group_size = 1;
  EXPECT_KILN_ERROR(grpo_loss(g1, with([](auto&) {})), "GrpoConfig", "group_size");
}
