// Token-level distillation losses between a student's and a teacher's next-token distributions
// (issue 12; the R1-Distill pipeline uses them besides sequence-level KD, which is plain SFT on
// the teacher's traces).
//
// Both take logits [..., V] of the same shape (teacher and student may differ in architecture and
// size but share the tokenizer, hence V), and a per-token weight [...] (1 for completion tokens,
// 0 for prompt and padding: the SFT mask), and return the weighted mean over tokens:
//
//   loss = Σ_n w_n · d_n / Σ_n w_n          (0 when every weight is 0)
//
// where d_n is the divergence of token n. The teacher is a constant: its logits are detached, so
// gradients reach the student only.
//
// logit_kd_loss (Hinton et al. 2015): forward KL at temperature τ, scaled by τ² so that the
// gradients' size does not shrink as 1/τ² when τ grows:
//   d_n = τ² · KL(p_τ ‖ q_τ) = τ² Σ_v p_τ,v (log p_τ,v − log q_τ,v),   p_τ = softmax(teacher / τ),
//   q_τ = softmax(student / τ).
//
// generalized_jsd_loss (GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models"; the
// same convention as TRL's GKDTrainer): with P the teacher's and Q the student's distribution at
// temperature τ and the mixture M = β P + (1 − β) Q,
//   d_n = β KL(P ‖ M) + (1 − β) KL(Q ‖ M)     for 0 < β < 1,
//   d_n = KL(P ‖ Q) (forward KL)             for β = 0,
//   d_n = KL(Q ‖ P) (reverse KL)             for β = 1.
// The interior formula vanishes at both ends (M becomes Q or P); it behaves like β·KL(P‖Q) near 0
// and (1 − β)·KL(Q‖P) near 1, so the endpoints are defined as the divergences it approaches up to
// that scale, as GKD does. On-policy distillation uses β = 1 (the student samples, the teacher
// scores: reverse KL, mode-seeking).
//
// Logits must be finite (a -inf logit makes 0 · inf in the sums). Both are composed of kiln ops (log_softmax, exp, mul, sum; logsumexp of two terms for log M), so
// they run on any device and autograd gives the gradient. Every temporary is the size of the
// logits: callers bound it by passing chunks of tokens (the pipeline computes teacher logits in
// chunks and never keeps a [tokens, vocab] copy for a whole batch).
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/ops/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/softmax.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/where.hpp"

namespace kiln::distill {

namespace detail {

template <class T>
void check_pair(const char* op, const Tensor<T>& student, const Tensor<T>& teacher, const Tensor<T>& weights,
                double temperature) {
  check_defined(op, student, teacher, weights);
  check_same_device(op, student, teacher, weights);
  check(student.dim() >= 1 && student.shape() == teacher.shape(), op, "student logits ", student.shape(),
        " and teacher logits ", teacher.shape(), " must have the same shape [..., V] (a shared vocabulary)");
  check(student.size(-1) > 0, op, "empty vocabulary: logits of shape ", student.shape());
  check(weights.shape() == Shape(student.shape().begin(), student.shape().end() - 1), op, "weights of shape ",
        weights.shape(), " must be the logits' shape without the vocabulary dim, ",
        Shape(student.shape().begin(), student.shape().end() - 1));
  check(std::isfinite(temperature) && temperature > 0.0, op, "temperature must be positive and finite, got ",
        temperature);
}

// Σ_n w_n d_n / Σ_n w_n over all tokens (0 when Σ w = 0); d [...] and w the same shape. The
// division stays on the device (no read of Σ w): a zero denominator becomes 1, and the numerator
// is 0 then too.
template <class T>
Tensor<T> weighted_token_mean(const Tensor<T>& d, const Tensor<T>& w) {
  const Tensor<T> total = sum(w.detach());
  return div(sum(mul(d, w.detach())), where(eq(total, 0.0), 1.0, total));
}

// KL(a ‖ b) over the last dim from log-probabilities: Σ_v e^{a_v} (a_v − b_v) -> [...].
template <class T>
Tensor<T> kl_from_log_probs(const Tensor<T>& log_a, const Tensor<T>& log_b) {
  return sum(mul(exp(log_a), sub(log_a, log_b)), {-1});
}

}  // namespace detail

template <class T>
Tensor<T> logit_kd_loss(const Tensor<T>& student_logits, const Tensor<T>& teacher_logits, const Tensor<T>& weights,
                        double temperature = 1.0) {
  static_assert(is_floating<T>, "logit_kd_loss needs a floating element type");
  const char* op = "logit_kd_loss";
  detail::check_pair(op, student_logits, teacher_logits, weights, temperature);
  const double inv = 1.0 / temperature;
  const Tensor<T> log_p = log_softmax(mul(teacher_logits.detach(), inv), -1);
  const Tensor<T> log_q = log_softmax(mul(student_logits, inv), -1);
  const Tensor<T> d = mul(detail::kl_from_log_probs(log_p, log_q), temperature * temperature);
  return detail::weighted_token_mean(d, weights);
}

template <class T>
Tensor<T> generalized_jsd_loss(const Tensor<T>& student_logits, const Tensor<T>& teacher_logits,
                               const Tensor<T>& weights, double beta, double temperature = 1.0) {
  static_assert(is_floating<T>, "generalized_jsd_loss needs a floating element type");
  const char* op = "generalized_jsd_loss";
  detail::check_pair(op, student_logits, teacher_logits, weights, temperature);
  check(beta >= 0.0 && beta <= 1.0, op, "beta must lie in [0, 1] (0: forward KL, 1: reverse KL), got ", beta);
  const double inv = 1.0 / temperature;
  const Tensor<T> log_p = log_softmax(mul(teacher_logits.detach(), inv), -1);  // teacher P
  const Tensor<T> log_q = log_softmax(mul(student_logits, inv), -1);           // student Q
  Tensor<T> d;
  if (beta == 0.0) {
    d = detail::kl_from_log_probs(log_p, log_q);
  } else if (beta == 1.0) {
    d = detail::kl_from_log_probs(log_q, log_p);
  } else {
    // log M = log(β e^{log P} + (1 − β) e^{log Q}), stably: the larger of the two terms factored out.
    const Tensor<T> a = add(log_p, std::log(beta)), b = add(log_q, std::log1p(-beta));
    const Tensor<T> m = maximum(a, b).detach();  // a shift only: the result does not depend on it
    const Tensor<T> log_m = add(m, log(add(exp(sub(a, m)), exp(sub(b, m)))));
    d = add(mul(detail::kl_from_log_probs(log_p, log_m), beta),
            mul(detail::kl_from_log_probs(log_q, log_m), 1.0 - beta));
  }
  return detail::weighted_token_mean(d, weights);
}

}  // namespace kiln::distill
