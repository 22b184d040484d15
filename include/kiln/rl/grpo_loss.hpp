// The GRPO objective: group-relative advantages, the clipped per-token surrogate with an optional
// k3 KL penalty, the four loss normalisers, and the helpers around them (truncation masking,
// dynamic sampling, reference resets). Everything on tensors is built from kiln ops, so autograd
// works on any device that has the ops' kernels.
//
// ---- Advantages (compute_advantages) -----------------------------------------------------------
// Rewards come group-major: G completions of prompt 0, then G of prompt 1, ... (N = P·G values).
// For group g with rewards r_1..r_G:
//   mean_g = (1/G) Σ r_i
//   std_g  = sqrt( Σ (r_i − mean_g)² / (G − 1) )      the unbiased (Bessel) std, as torch.std and
//                                                      therefore TRL's GRPOTrainer use
//   A_i    = (r_i − mean_g) / (s + ε)   where s depends on scale_rewards:
//     group: s = std_g (DeepSeekMath's GRPO; TRL scale_rewards="group")
//     batch: s = the unbiased std of all N rewards (group mean, batch std: "Tricks or Traps? A
//            Deep Dive into RL for LLM Reasoning", Liu et al. 2025; TRL scale_rewards="batch")
//     none:  A_i = r_i − mean_g, no division (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
//            Training": dividing by the std over-weights prompts that are almost always or almost
//            never solved)
//   ε = advantage_epsilon = 1e-4, TRL's constant: it only keeps the division finite; a group
//   whose rewards all agree is handled exactly instead (below).
// A group whose G rewards are all equal ("zero spread") carries no learning signal: its advantages
// are exactly 0 here (TRL gets r − mean ≈ 0 up to rounding). frac_reward_zero_std is the fraction
// of groups with zero spread. (TRL computes it per sample from std ≈ 0 with torch.isclose; under
// "group"/"none" that is the same fraction; under "batch" TRL tests the batch std instead, which
// says little, so kiln always reports the per-group fraction — what dynamic sampling acts on.)
//
// ---- Per-token objective (grpo_loss) -------------------------------------------------------------
// For sequence b with advantage A_b and token t (TRL's GRPOTrainer._compute_loss, PPO's clip):
//   ratio   = exp(logp − old_logp)                     π_θ / π_old of the sampled token
//   clipped = clamp(ratio, 1 − ε_low, 1 + ε_high)      ε_high > ε_low is DAPO's "clip-higher"
//   L_t     = −min(ratio · A_b, clipped · A_b) + β · k3_t
//   k3_t    = exp(ref − logp) − (ref − logp) − 1       Schulman's k3 estimator of KL(π_θ ‖ π_ref),
//                                                      ≥ 0, exactly 0 where logp = ref (DeepSeekMath)
// old_logp undefined means π_old = π_θ (μ = 1, first update: TRL then uses logp.detach()), so
// ratio = 1 with gradient ∂ratio/∂logp = 1. With β = 0 no reference is needed (ref_logp may be
// undefined; if given, the KL is still measured for logging but not added to the loss).
// Gradient of the surrogate in logp: A·ratio where min() takes the unclipped branch or where the
// ratio lies strictly inside the clip range; exactly 0 where the clipped branch binds (ratio above
// 1 + ε_high with A > 0, or below 1 − ε_low with A < 0).
//
// ---- Normalisers (loss_type), with M the [B, T] completion mask and S = Σ_{b,t} M·L ------------
//   grpo:    (1/B) Σ_b (Σ_t M·L) / max(1, Σ_t M)      per-sequence mean, then mean over the B
//            sequences of this micro-batch (DeepSeekMath/R1's objective; long sequences' tokens
//            weigh less). All-masked rows (e.g. masked truncations) count in B and add 0, as in TRL.
//   bnpo:    S / max(1, Σ M)                           token mean over this micro-batch (TRL "bnpo")
//   dr_grpo: S / (B · max_completion_length)           a constant normaliser, so no length bias
//            (Dr. GRPO; TRL "dr_grpo")
//   dapo:    S / N_batch                               N_batch = completion tokens (after masking)
//            in ALL micro-batches whose gradients go into one optimizer step, passed by the caller
//            (GrpoLossInputs::dapo_token_count). Summing the micro-batch losses then gives the token
//            mean over the whole generation batch, independent of how it was split (DAPO's
//            token-level loss; TRL "dapo" with num_items_in_batch).
// For grpo, bnpo and dr_grpo the result is this micro-batch's mean; a caller accumulating k
// micro-batches into one step divides each loss by k (the HF Trainer convention). Not for dapo.
//
// ---- Metrics (detached masked token means over M) -----------------------------------------------
//   kl = mean k3 (present when ref_logp is given); clip_low = mean[ratio < 1 − ε_low ∧ A < 0];
//   clip_high = mean[ratio > 1 + ε_high ∧ A > 0]; clip_region = mean[either] (TRL's clip_ratio/*).
// Each comes with `tokens` = Σ M, the weight for averaging over micro-batches.
//
// ---- Around the loss ----------------------------------------------------------------------------
// - Truncation masking (DAPO's "overlong filtering"; TRL mask_truncated_completions): a completion
//   that hit max_completion_length without a stop token has an unknown true reward; its mask row
//   is zeroed so it adds neither loss nor gradient (it still counts as a sequence in grpo's B).
// - Dynamic sampling (DAPO): groups with zero reward spread have zero advantage and only dilute the
//   batch; DynamicSampler keeps the groups with spread from successive generation rounds until the
//   target number of groups is reached.
// - μ = num_iterations policy updates per generation batch reuse old_logp stored once after
//   generation (TRL num_iterations; GRPO's μ); with μ = 1 and one update per batch it may be left
//   undefined.
// - Periodic reference reset (ProRL, Liu et al. 2025; TRL's sync_ref_model with α = 1): every
//   ref_reset_steps optimizer steps the reference weights become a copy of the policy's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/ops/where.hpp"

namespace kiln::rl {

enum class ScaleRewards { group, batch, none };
enum class LossType { grpo, bnpo, dr_grpo, dapo };

inline const char* to_string(ScaleRewards s) {
  switch (s) {
    case ScaleRewards::group: return "group";
    case ScaleRewards::batch: return "batch";
    case ScaleRewards::none: return "none";
  }
  return "?";
}

inline const char* to_string(LossType t) {
  switch (t) {
    case LossType::grpo: return "grpo";
    case LossType::bnpo: return "bnpo";
    case LossType::dr_grpo: return "dr_grpo";
    case LossType::dapo: return "dapo";
  }
  return "?";
}

// "group" | "batch" | "none" (TRL's spellings); anything else throws.
inline ScaleRewards parse_scale_rewards(const std::string& s) {
  for (ScaleRewards v : {ScaleRewards::group, ScaleRewards::batch, ScaleRewards::none})
    if (s == to_string(v)) return v;
  fail("parse_scale_rewards", "unknown scale_rewards \"", s, "\" (expected group, batch or none)");
}

// "grpo" | "bnpo" | "dr_grpo" | "dapo" (TRL's spellings); anything else throws.
inline LossType parse_loss_type(const std::string& s) {
  for (LossType v : {LossType::grpo, LossType::bnpo, LossType::dr_grpo, LossType::dapo})
    if (s == to_string(v)) return v;
  fail("parse_loss_type", "unknown loss_type \"", s, "\" (expected grpo, bnpo, dr_grpo or dapo)");
}

struct GrpoConfig {
  std::int64_t group_size = 8;                        // G completions per prompt (≥ 2: the std needs two)
  ScaleRewards scale_rewards = ScaleRewards::group;
  LossType loss_type = LossType::grpo;                // DeepSeekMath/R1's; TRL's current default is dapo
  double epsilon_low = 0.2;                           // ratio clipped below at 1 − epsilon_low
  double epsilon_high = 0.2;                          // ... and above at 1 + epsilon_high (DAPO: 0.28)
  double beta = 0.0;                                  // KL coefficient; 0 = no reference model (TRL default)
  std::int64_t max_completion_length = 256;           // generation cap; dr_grpo's normaliser
  bool mask_truncated_completions = false;            // zero the mask of completions cut at the cap
  double advantage_epsilon = 1e-4;                    // ε in (r − mean) / (std + ε), TRL's value
  std::int64_t num_iterations = 1;                    // μ: policy updates per generation batch
  bool dynamic_sampling = false;                      // DAPO: drop zero-spread groups and refill
  std::int64_t dynamic_sampling_max_rounds = 4;       // generation rounds per step at most
  std::int64_t ref_reset_steps = 0;                   // reset reference to policy every N steps (0: never)
};

// Throws kiln::Error naming the first invalid field.
inline void validate(const GrpoConfig& c) {
  const char* op = "GrpoConfig";
  check(c.group_size >= 2, op, "group_size must be >= 2 (the group std needs two samples), got ", c.group_size);
  check(c.epsilon_low > 0.0 && c.epsilon_low < 1.0, op, "epsilon_low must be in (0, 1), got ", c.epsilon_low);
  check(c.epsilon_high > 0.0 && std::isfinite(c.epsilon_high), op, "epsilon_high must be finite and > 0, got ",
        c.epsilon_high);
  check(c.beta >= 0.0 && std::isfinite(c.beta), op, "beta must be finite and >= 0, got ", c.beta);
  check(c.max_completion_length > 0, op, "max_completion_length must be > 0, got ", c.max_completion_length);
  check(c.advantage_epsilon >= 0.0 && std::isfinite(c.advantage_epsilon), op,
        "advantage_epsilon must be finite and >= 0, got ", c.advantage_epsilon);
  check(c.num_iterations >= 1, op, "num_iterations (mu) must be >= 1, got ", c.num_iterations);
  check(c.dynamic_sampling_max_rounds >= 1, op, "dynamic_sampling_max_rounds must be >= 1, got ",
        c.dynamic_sampling_max_rounds);
  check(c.ref_reset_steps >= 0, op, "ref_reset_steps must be >= 0, got ", c.ref_reset_steps);
}

// Whether a reference model must be loaded at all (β = 0 loads none).
inline bool needs_reference(const GrpoConfig& c) { return c.beta != 0.0; }

// Whether the reference is reset to the policy after optimizer step `step` (counted from 1).
inline bool reference_reset_due(const GrpoConfig& c, std::int64_t step) {
  return c.ref_reset_steps > 0 && step > 0 && step % c.ref_reset_steps == 0;
}

// ---- advantages ---------------------------------------------------------------------------------

struct Advantages {
  std::vector<double> advantages;  // [P·G], group-major like the rewards
  std::vector<double> group_mean;  // [P]
  std::vector<double> group_std;   // [P], unbiased
  std::vector<bool> zero_spread;   // [P], all G rewards equal
  double batch_std = 0.0;          // unbiased std of all P·G rewards
  double frac_reward_zero_std = 0.0;
};

namespace detail {

inline void check_groups(const char* op, std::size_t n, std::int64_t group_size) {
  check(group_size >= 2, op, "group_size must be >= 2, got ", group_size);
  check(n > 0 && n % static_cast<std::size_t>(group_size) == 0, op, "got ", n,
        " rewards, not a positive multiple of group_size ", group_size);
}

inline void check_finite(const char* op, const std::vector<double>& rewards) {
  for (std::size_t i = 0; i < rewards.size(); ++i)
    check(std::isfinite(rewards[i]), op, "reward ", i, " is ", rewards[i], " (rewards must be finite)");
}

// Whether the G rewards starting at `first` all compare equal (exact: no tolerance needed, rewards
// of verifiable tasks are exact values, and any difference carries signal).
inline bool all_equal(const std::vector<double>& r, std::size_t first, std::size_t g) {
  for (std::size_t i = 1; i < g; ++i)
    if (r[first + i] != r[first]) return false;
  return true;
}

// Mean and unbiased std of v[first, first + n).
inline std::pair<double, double> mean_std(const std::vector<double>& v, std::size_t first, std::size_t n) {
  double s = 0.0;
  for (std::size_t i = 0; i < n; ++i) s += v[first + i];
  const double mean = s / static_cast<double>(n);
  double ss = 0.0;
  for (std::size_t i = 0; i < n; ++i) ss += (v[first + i] - mean) * (v[first + i] - mean);
  return {mean, n > 1 ? std::sqrt(ss / static_cast<double>(n - 1)) : std::numeric_limits<double>::quiet_NaN()};
}

}  // namespace detail

// Group-relative advantages of `rewards` (group-major, P·G values); see the header comment.
inline Advantages compute_advantages(const std::vector<double>& rewards, std::int64_t group_size, ScaleRewards scale,
                                     double epsilon = 1e-4) {
  const char* op = "compute_advantages";
  detail::check_groups(op, rewards.size(), group_size);
  detail::check_finite(op, rewards);
  check(epsilon >= 0.0 && std::isfinite(epsilon), op, "epsilon must be finite and >= 0, got ", epsilon);
  const auto G = static_cast<std::size_t>(group_size);
  const std::size_t P = rewards.size() / G;
  Advantages out;
  out.advantages.resize(rewards.size());
  out.batch_std = detail::mean_std(rewards, 0, rewards.size()).second;
  std::size_t zero = 0;
  for (std::size_t g = 0; g < P; ++g) {
    const auto [mean, std] = detail::mean_std(rewards, g * G, G);
    const bool flat = detail::all_equal(rewards, g * G, G);
    out.group_mean.push_back(mean);
    out.group_std.push_back(flat ? 0.0 : std);
    out.zero_spread.push_back(flat);
    zero += flat ? 1 : 0;
    const double scale_by = scale == ScaleRewards::group ? std + epsilon
                            : scale == ScaleRewards::batch ? out.batch_std + epsilon
                                                           : 1.0;
    for (std::size_t i = g * G; i < (g + 1) * G; ++i) out.advantages[i] = flat ? 0.0 : (rewards[i] - mean) / scale_by;
  }
  out.frac_reward_zero_std = static_cast<double>(zero) / static_cast<double>(P);
  return out;
}

inline Advantages compute_advantages(const std::vector<double>& rewards, const GrpoConfig& c) {
  return compute_advantages(rewards, c.group_size, c.scale_rewards, c.advantage_epsilon);
}

// advantages[begin, begin + count) as a [count] tensor on `device` (one micro-batch's slice).
template <class T>
Tensor<T> advantages_tensor(const Advantages& a, std::int64_t begin, std::int64_t count, Device device = Device::cpu()) {
  const auto n = static_cast<std::int64_t>(a.advantages.size());
  check(begin >= 0 && count >= 0 && begin + count <= n, "advantages_tensor", "range [", begin, ", ", begin + count,
        ") is outside the ", n, " advantages");
  std::vector<T> v;
  for (std::int64_t i = begin; i < begin + count; ++i) v.push_back(convert<T>(a.advantages[static_cast<std::size_t>(i)]));
  return Tensor<T>::from_vector(v, {count}, device);
}

// ---- masks ----------------------------------------------------------------------------------------

// [B, T] completion mask from each completion's length (its tokens, the stop token included):
// mask[b, t] = t < lengths[b].
inline Tensor<bool> completion_mask(const std::vector<std::int64_t>& lengths, std::int64_t T,
                                    Device device = Device::cpu()) {
  const char* op = "completion_mask";
  check(T >= 0, op, "T must be >= 0, got ", T);
  std::vector<bool> m;
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    check(lengths[b] >= 0 && lengths[b] <= T, op, "length ", lengths[b], " of completion ", b, " is outside [0, ", T,
          "]");
    for (std::int64_t t = 0; t < T; ++t) m.push_back(t < lengths[b]);
  }
  return Tensor<bool>::from_vector(m, {static_cast<std::int64_t>(lengths.size()), T}, device);
}

// `mask` [B, T] with the rows of truncated completions (truncated[b]: reached the length cap
// without a stop token) set to false. Apply it when GrpoConfig::mask_truncated_completions is on,
// before counting tokens for dapo_token_count.
inline Tensor<bool> mask_truncated(const Tensor<bool>& mask, const std::vector<bool>& truncated) {
  const char* op = "mask_truncated";
  check_defined(op, mask);
  check(mask.dim() == 2, op, "mask must be [B, T], got shape ", mask.shape());
  check(static_cast<std::int64_t>(truncated.size()) == mask.shape()[0], op, "mask of shape ", mask.shape(), " needs ",
        mask.shape()[0], " truncation flags, got ", truncated.size());
  std::vector<bool> keep(truncated.size());
  for (std::size_t b = 0; b < truncated.size(); ++b) keep[b] = !truncated[b];
  return logical_and(mask, Tensor<bool>::from_vector(keep, {mask.shape()[0], 1}, mask.device()));
}

// Σ mask: the number of completion tokens (reads one number back from the device).
inline std::int64_t count_tokens(const Tensor<bool>& mask) {
  check_defined("count_tokens", mask);
  NoGradGuard no_grad;
  return static_cast<std::int64_t>(std::llround(sum(cast<double>(mask)).item()));
}

// Σ(values · mask) / Σ mask over elements where mask holds (0 when none does); values and mask
// broadcast together. Detached: for logging (e.g. the mean entropy of completion tokens).
template <class T>
double masked_mean(const Tensor<T>& values, const Tensor<bool>& mask) {
  const char* op = "masked_mean";
  check_defined(op, values, mask);
  check_same_device(op, values, mask);
  NoGradGuard no_grad;
  const double count = sum(cast<double>(mask)).item();
  if (count == 0.0) return 0.0;
  return sum(where(mask, cast<double>(values.detach()), 0.0)).item() / count;  // where: NaN outside is ignored
}

// ---- the loss -------------------------------------------------------------------------------------

namespace detail {

// k3 from d = ref − logp: e^d − d − 1.
template <class T>
Tensor<T> k3_of_log_ratio(const Tensor<T>& d) {
  return sub(sub(exp(d), d), 1.0);
}

}  // namespace detail

// Schulman's k3 estimator per element: exp(ref − logp) − (ref − logp) − 1 (≥ 0 since e^x ≥ 1 + x;
// 0 exactly where logp = ref). Differentiable in logp (and ref_logp, though that is frozen).
template <class T>
Tensor<T> k3_kl(const Tensor<T>& logp, const Tensor<T>& ref_logp) {
  const char* op = "k3_kl";
  check_defined(op, logp, ref_logp);
  check_same_device(op, logp, ref_logp);
  check(logp.shape() == ref_logp.shape(), op, "logp of shape ", logp.shape(), " and ref_logp of shape ",
        ref_logp.shape(), " differ");
  return detail::k3_of_log_ratio(sub(ref_logp, logp));
}

template <class T>
struct GrpoLossInputs {
  Tensor<T> logp;               // [B, T] log π_θ of the sampled tokens (token_logprobs), with grad
  Tensor<T> old_logp;           // [B, T] log π_old stored after generation; undefined: logp.detach()
  Tensor<T> ref_logp;           // [B, T] log π_ref; required when β ≠ 0
  Tensor<T> advantages;         // [B]
  Tensor<bool> mask;            // [B, T] completion tokens (truncation masking already applied)
  double dapo_token_count = 0;  // loss_type dapo: Σ mask over every micro-batch of the optimizer step
};

struct GrpoLossMetrics {
  std::optional<double> kl;  // mean k3 over completion tokens; absent without ref_logp
  double clip_low = 0.0;     // fraction of tokens with ratio < 1 − ε_low and A < 0
  double clip_high = 0.0;    // fraction with ratio > 1 + ε_high and A > 0
  double clip_region = 0.0;  // either
  std::int64_t tokens = 0;   // Σ mask: the weight of these means across micro-batches
};

template <class T>
struct GrpoLossResult {
  Tensor<T> loss;  // scalar, differentiable in inputs.logp
  GrpoLossMetrics metrics;
};

// The GRPO loss of one micro-batch; see the header comment for every formula and normaliser.
template <class T>
GrpoLossResult<T> grpo_loss(const GrpoConfig& cfg, const GrpoLossInputs<T>& in) {
  const char* op = "grpo_loss";
  validate(cfg);
  check_defined(op, in.logp, in.advantages, in.mask);
  check(in.logp.dim() == 2, op, "logp must be [B, T], got shape ", in.logp.shape());
  const Shape& shape = in.logp.shape();
  const std::int64_t B = shape[0];
  check(B > 0, op, "empty batch (logp of shape ", shape, ")");
  check(in.mask.shape() == shape, op, "mask of shape ", in.mask.shape(), " does not match logp of shape ", shape);
  check(in.advantages.shape() == Shape{B}, op, "advantages must be [", B, "] for logp of shape ", shape, ", got shape ",
        in.advantages.shape());
  check_same_device(op, in.logp, in.advantages, in.mask);
  if (in.old_logp.defined()) {
    check(in.old_logp.shape() == shape, op, "old_logp of shape ", in.old_logp.shape(), " does not match logp of shape ",
          shape);
    check_same_device(op, in.logp, in.old_logp);
  }
  check(cfg.beta == 0.0 || in.ref_logp.defined(), op, "beta = ", cfg.beta, " needs ref_logp (logp of shape ", shape,
        ")");
  if (in.ref_logp.defined()) {
    check(in.ref_logp.shape() == shape, op, "ref_logp of shape ", in.ref_logp.shape(), " does not match logp of shape ",
          shape);
    check_same_device(op, in.logp, in.ref_logp);
  }
  if (cfg.loss_type == LossType::dapo)
    check(in.dapo_token_count > 0.0 && std::isfinite(in.dapo_token_count), op,
          "loss_type dapo needs dapo_token_count > 0 (completion tokens in the whole step), got ", in.dapo_token_count);

  const Tensor<T> logp = in.logp;
  const Tensor<T> old = in.old_logp.defined() ? in.old_logp.detach() : logp.detach();
  const Tensor<T> adv = reshape(in.advantages.detach(), {B, 1});
  const Tensor<T> m = cast<T>(in.mask);

  // Masked-out positions (padding, masked truncations) may hold anything, even ±inf from a sentinel:
  // the log-ratios are selected to 0 there before exp, so nothing non-finite enters the forward or
  // (through where, which multiplies nothing) the backward.
  const Tensor<T> ratio = exp(where(in.mask, sub(logp, old), 0.0));
  const Tensor<T> clipped = clamp(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
  Tensor<T> per_token = neg(minimum(mul(ratio, adv), mul(clipped, adv)));
  Tensor<T> kl;
  if (in.ref_logp.defined()) {
    kl = detail::k3_of_log_ratio(where(in.mask, sub(in.ref_logp.detach(), logp), 0.0));  // k3_kl, masked
    if (cfg.beta != 0.0) per_token = add(per_token, mul(kl, cfg.beta));
  }
  const Tensor<T> masked = where(in.mask, per_token, 0.0);

  GrpoLossResult<T> out;
  {
    NoGradGuard no_grad;
    out.metrics.tokens = static_cast<std::int64_t>(std::llround(static_cast<double>(sum(cast<double>(m)).item())));
  }
  const double tokens = static_cast<double>(out.metrics.tokens);
  if (cfg.loss_type == LossType::dapo)
    check(in.dapo_token_count >= tokens, op, "dapo_token_count ", in.dapo_token_count,
          " is below this micro-batch's own ", out.metrics.tokens, " completion tokens (it must count the whole step)");
  switch (cfg.loss_type) {
    case LossType::grpo: {
      Tensor<T> seq_tokens;
      {
        NoGradGuard no_grad;
        seq_tokens = clamp_min(sum(m, {1}), 1.0);  // a constant: no graph through the counts
      }
      out.loss = mean(div(sum(masked, {1}), seq_tokens));
      break;
    }
    case LossType::bnpo:
      out.loss = div(sum(masked), std::max(tokens, 1.0));
      break;
    case LossType::dr_grpo:
      out.loss = div(sum(masked), static_cast<double>(B) * static_cast<double>(cfg.max_completion_length));
      break;
    case LossType::dapo:
      out.loss = div(sum(masked), in.dapo_token_count);
      break;
  }

  NoGradGuard no_grad;  // the metrics: masked token means, detached
  if (tokens > 0.0) {
    const Tensor<bool> mb = in.mask;
    const Tensor<bool> low = logical_and(lt(ratio.detach(), 1.0 - cfg.epsilon_low), lt(adv, 0.0));
    const Tensor<bool> high = logical_and(gt(ratio.detach(), 1.0 + cfg.epsilon_high), gt(adv, 0.0));
    auto frac = [&](const Tensor<bool>& c) { return sum(cast<double>(logical_and(c, mb))).item() / tokens; };
    out.metrics.clip_low = frac(low);
    out.metrics.clip_high = frac(high);
    out.metrics.clip_region = frac(logical_or(low, high));
  }
  if (kl.defined()) out.metrics.kl = masked_mean(kl, in.mask);
  return out;
}

// ---- dynamic sampling -----------------------------------------------------------------------------

// Per group of `rewards` (group-major), whether all G rewards are equal (zero spread).
inline std::vector<bool> zero_spread_groups(const std::vector<double>& rewards, std::int64_t group_size) {
  const char* op = "zero_spread_groups";
  detail::check_groups(op, rewards.size(), group_size);
  detail::check_finite(op, rewards);
  const auto G = static_cast<std::size_t>(group_size);
  std::vector<bool> out;
  for (std::size_t g = 0; g < rewards.size() / G; ++g) out.push_back(detail::all_equal(rewards, g * G, G));
  return out;
}

// DAPO's dynamic sampling across generation rounds: each round's rewards are offered; the groups
// with reward spread are accepted, in order, until `target_groups` are held; zero-spread groups and
// groups beyond the target are dropped. The trainer generates rounds while !full() and
// rounds() < GrpoConfig::dynamic_sampling_max_rounds, keeping the accepted groups' samples, and then
// trains on what it holds (possibly fewer groups than the target; none: skip the step).
class DynamicSampler {
 public:
  DynamicSampler(std::int64_t target_groups, std::int64_t group_size)
      : target_(target_groups), group_size_(group_size) {
    check(target_groups > 0, "DynamicSampler", "target_groups must be > 0, got ", target_groups);
    check(group_size >= 2, "DynamicSampler", "group_size must be >= 2, got ", group_size);
  }

  // Offers one round's rewards ([n·G], group-major); returns the indices (0..n−1 within this
  // round) of the groups accepted.
  std::vector<std::int64_t> offer(const std::vector<double>& rewards) {
    const std::vector<bool> flat = zero_spread_groups(rewards, group_size_);
    ++rounds_;
    std::vector<std::int64_t> accepted;
    for (std::size_t g = 0; g < flat.size(); ++g) {
      if (flat[g]) {
        ++dropped_zero_spread_;
      } else if (held_ < target_) {
        accepted.push_back(static_cast<std::int64_t>(g));
        ++held_;
      } else {
        ++dropped_surplus_;
      }
    }
    return accepted;
  }

  bool full() const { return held_ == target_; }
  std::int64_t held() const { return held_; }
  std::int64_t target() const { return target_; }
  std::int64_t rounds() const { return rounds_; }
  std::int64_t dropped_zero_spread() const { return dropped_zero_spread_; }
  std::int64_t dropped_surplus() const { return dropped_surplus_; }

 private:
  std::int64_t target_, group_size_;
  std::int64_t held_ = 0, rounds_ = 0, dropped_zero_spread_ = 0, dropped_surplus_ = 0;
};

}  // namespace kiln::rl
