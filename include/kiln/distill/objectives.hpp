// Distillation objectives for train::Trainer (issue 12): the student learns the teacher's
// next-token distribution at every counted target of a batch (completion tokens: distill/sft.hpp
// builds the batches from the teacher's traces, distill/on_policy.hpp from the student's own
// samples).
//
//   logit KD:        τ² · KL(p_τ ‖ q_τ)   (distill/losses.hpp: logit_kd_loss; Hinton et al. 2015)
//   generalized JSD: GKD's divergence at β (generalized_jsd_loss: β = 0 forward KL, β = 1 reverse
//                    KL; Agarwal et al. 2024). On-policy distillation uses it on student samples.
//
// Both models run the batch's tokens (packed or padded, as train::batch_logits), but their output
// heads run only at the counted positions: the [n, vocab] logits of the n counted targets, never
// of the prompt or padding. The teacher runs without a graph, so its logits live for one
// micro-batch only (train::Trainer computes the micro-batches one after another, each bounded by
// SftDataOptions::tokens_per_batch): no [tokens, vocab] copy of a whole batch is ever kept.
// Teacher and student may differ in architecture and size (a DeepSeek-V3 MoE teacher, a Llama
// student) but must share the vocabulary.
//
// The loss parts are {"main": the student's next-token CE at the counted targets, "kd": the
// divergence}; the loss back-propagated is the divergence. Validation (Trainer::evaluate) reports
// "main", so every student is compared on the same held-out CE whatever its objective.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/distill/losses.hpp"
#include "kiln/ops/cross_entropy.hpp"
#include "kiln/ops/gather.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/train/trainer.hpp"

namespace kiln::distill {

enum class Divergence { logit_kd, generalized_jsd };

struct DistillLossOptions {
  Divergence divergence = Divergence::logit_kd;
  double temperature = 1.0;  // τ > 0
  double beta = 1.0;         // generalized JSD's β in [0, 1] (1: reverse KL, on-policy distillation)
};

namespace detail {

// Positions of the counted targets of a batch (row-major over [B, S]) and those targets.
struct CountedTargets {
  Tensor<std::int64_t> rows, targets;
  std::int64_t count = 0;
};

inline CountedTargets counted_targets(const train::Batch& b, Device device) {
  const std::vector<std::int64_t> t = b.targets.to_vector();
  std::vector<std::int64_t> rows, targets;
  for (std::size_t i = 0; i < t.size(); ++i)
    if (t[i] != -100) {
      rows.push_back(static_cast<std::int64_t>(i));
      targets.push_back(t[i]);
    }
  const auto n = static_cast<std::int64_t>(rows.size());
  return {to(Tensor<std::int64_t>::from_vector(rows, {n}), device), to(Tensor<std::int64_t>::from_vector(targets, {n}), device),
          n};
}

// The model's logits at `rows` of the batch's [B·S] positions -> [n, vocab]: the decoder runs every
// token, the output head only the selected ones.
template <class Model>
auto logits_at(Model& model, const train::Batch& b, const Tensor<std::int64_t>& rows) {
  const auto hidden = model.model.forward(b.ids, train::batch_positions(b), b.cu_seqlens);
  return model.head(index_select(reshape(hidden, {-1, hidden.size(-1)}), 0, rows));
}

}  // namespace detail

// The objective as a train::LossFn for the student. `teacher` must outlive it; its weights are
// read, never changed (it runs under NoGradGuard).
template <class Student, class Teacher>
train::LossFn<Student> distillation_objective(Teacher& teacher, DistillLossOptions options) {
  using T = typename train::scalar_of<Student>::type;
  static_assert(std::is_same_v<T, typename train::scalar_of<Teacher>::type>,
                "teacher and student must have the same element type");
  const char* op = "distillation_objective";
  check(std::isfinite(options.temperature) && options.temperature > 0.0, op,
        "temperature must be positive and finite, got ", options.temperature);
  check(options.beta >= 0.0 && options.beta <= 1.0, op, "beta must lie in [0, 1], got ", options.beta);
  return [&teacher, options](Student& student, const train::Batch& b) -> train::LossParts<T> {
    const char* name = "distillation_objective";
    check(teacher.vocab_size() == student.vocab_size(), name, "teacher and student vocabularies differ (",
          teacher.vocab_size(), " vs ", student.vocab_size(), "): they must share the tokenizer");
    const Device device = b.ids.device();
    const detail::CountedTargets counted = detail::counted_targets(b, device);
    if (counted.count == 0) {  // nothing to learn here: a zero loss that still reaches the parameters
      const Tensor<T> zero = mul(sum(train::batch_logits(student, b)), 0.0);
      return {zero, {{"main", zero}, {"kd", zero}}};
    }
    const Tensor<T> student_logits = detail::logits_at(student, b, counted.rows);
    Tensor<T> teacher_logits;
    {
      NoGradGuard no_grad;
      teacher_logits = detail::logits_at(teacher, b, counted.rows);
    }
    const Tensor<T> weights = ones<T>({counted.count}, device);
    const Tensor<T> kd = options.divergence == Divergence::logit_kd
                             ? logit_kd_loss(student_logits, teacher_logits, weights, options.temperature)
                             : generalized_jsd_loss(student_logits, teacher_logits, weights, options.beta,
                                                    options.temperature);
    const Tensor<T> ce = cross_entropy(student_logits.detach(), counted.targets);
    return {kd, {{"main", ce}, {"kd", kd}}};
  };
}

}  // namespace kiln::distill
