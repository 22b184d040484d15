// The GRPO trainer (DeepSeekMath §4.1; DeepSeek-R1-Zero): reinforcement learning of a causal
// language model from rule-based rewards, with no value model.
//
// One step (GrpoTrainer::step):
//   1. Rollouts. `prompts_per_step` problems from the training split, G samples each from the
//      current policy with the generation engine (infer/engine.hpp): prompts in the R1-Zero
//      template (rl/rewards.hpp), sampling at `sampling` (temperature, top-p/k, stop "</answer>",
//      eos), at most grpo.max_completion_length new tokens.
//   2. Rewards (rl/rewards.hpp: a weighted RewardSet) and advantages per group
//      (rl/grpo_loss.hpp: (r - mean_group) / (std + eps), or scaled per batch, or not at all).
//      With dynamic sampling (DAPO), groups whose G rewards are all equal carry no signal: they
//      are dropped and more prompts are drawn, up to dynamic_sampling_max_rounds rounds.
//   3. Training sequences: prompt + completion, right-padded per micro-batch (sorted by length, so
//      padding stays small); the loss counts completion tokens only (the mask), and with
//      mask_truncated_completions those of completions cut at the length limit not at all.
//   4. Log-probabilities of the sampled tokens, fused (rl/logprobs.hpp: -cross_entropy, no
//      [tokens, vocab] probability tensor): old log-probs (μ > 1 only; with μ = 1 the ratio is 1
//      and its gradient is the policy gradient) and reference log-probs (β > 0 only) without a
//      graph, then μ policy updates over the same rollouts: per micro-batch forward, GRPO loss,
//      backward; global-norm clipping; AdamW at the (warmup, then constant) rate.
//   5. Every ref_reset_steps steps (when β > 0) the reference takes the policy's weights.
// The per-token objective and the four normalisers (grpo, bnpo, dr_grpo, dapo) are in
// rl/grpo_loss.hpp. Micro-batches of one update accumulate gradients: grpo/bnpo/dr_grpo losses
// are divided by the number of micro-batches (each is a mean over its own), dapo's are not (its
// normaliser is already the token count of the whole step).
//
// MoE policies: routing stays what the model computes; the aux-loss-free bias is frozen during RL
// unless balance_gamma > 0 (a bias that moves between generation and update would make the
// stored old log-probs stale).
//
// Reproducibility: problems come from a Philox generator (saved in checkpoints), draws are keyed
// by (seed, sample id, position) with sample ids unique per step and round, so a run resumed from
// a checkpoint draws the same samples as the uninterrupted one (on the CPU, bit for bit given the
// same thread count).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/core/random.hpp"
#include "kiln/data/tasks.hpp"
#include "kiln/data/tokenizer.hpp"
#include "kiln/infer/engine.hpp"
#include "kiln/optim/adamw.hpp"
#include "kiln/optim/clip.hpp"
#include "kiln/rl/grpo_loss.hpp"
#include "kiln/rl/logprobs.hpp"
#include "kiln/rl/rewards.hpp"

namespace kiln::rl {

struct GrpoTrainerOptions {
  GrpoConfig grpo;                       // G, loss type, clipping, β, μ, dynamic sampling, ...
  std::int64_t prompts_per_step = 16;    // groups per step
  std::int64_t micro_batch = 32;         // sequences per training forward/backward
  infer::SamplingParams sampling;        // rollouts (max_new_tokens is set from grpo.max_completion_length)
  std::int64_t generation_batch = 0;     // samples decoded at once (0: all of a round)
  bool cuda_graphs = true;               // GPU: the engine replays decode steps as CUDA graphs
  bool fp8_cache = false;                // rollouts over the FP8 latent cache (DeepSeek-V3 models;
                                         // infer::GenerateOptions::fp8_cache): the tokens are drawn
                                         // from logits ~1% off the policy's; the loss's log-probs
                                         // are the training forward's, as always
  optim::AdamWOptions adamw{.lr = 1e-5, .weight_decay = 0.0};
  std::int64_t warmup_steps = 0;         // linear warmup of the rate, then constant
  double max_grad_norm = 1.0;
  double balance_gamma = 0.0;            // MoE aux-loss-free bias rate during RL (0: frozen)
  // A problem's prompt as token ids (default: encode_r1_zero_prompt: bos, if the tokenizer has
  // one, then the R1-Zero template).
  std::function<std::vector<std::int64_t>(const data::Problem&)> encode_prompt;
};


// Seconds spent in each part of a step.
struct StepTimes {
  double generation = 0, scoring = 0, logprobs = 0, backward = 0, optimizer = 0, total = 0;
};

struct StepReport {
  std::int64_t step = 0;                 // 1-based, after the update
  std::int64_t groups = 0, samples = 0;  // trained on
  std::int64_t rounds = 1;               // generation rounds (dynamic sampling)
  std::vector<RewardStats> rewards;      // per reward function, then "total"
  double frac_reward_zero_std = 0;       // of the groups generated in the first round
  double completion_len_mean = 0, completion_len_max = 0, truncated_frac = 0;
  std::optional<double> kl;              // mean k3 (when a reference is used)
  double entropy = 0;                    // mean token entropy of the policy on completion tokens
  double clip_low = 0, clip_high = 0, clip_region = 0;
  double grad_norm = 0, lr = 0, loss = 0;
  std::int64_t generated_tokens = 0, trained_tokens = 0;
  double gen_tokens_per_s = 0, train_tokens_per_s = 0;
  StepTimes time;
};

namespace detail {

// Every sampled sequence of a step, ready for training.
struct Rollout {
  std::vector<std::int64_t> prompt;      // prompt token ids
  std::vector<std::int64_t> completion;  // generated ids (an ending eos included)
  bool truncated = false;                // stopped by the length limit
  double advantage = 0;
};

template <class T, class Model>
Tensor<T> forward_logits(Model& model, const Tensor<std::int64_t>& ids) {
  return model.forward(ids);
}

}  // namespace detail

// Model: nn::DeepseekV3ForCausalLM<T> or nn::LlamaForCausalLM<T>. The trainer keeps references
// to the models, the tokenizer and the problem source; they must outlive it.
template <class Model>
class GrpoTrainer {
 public:
  using T = typename infer::Engine<Model>::T;
  using ProblemSource = std::function<data::Problem(Generator&)>;

  // reference: required when grpo.beta != 0 (a model of the same config; it starts as a copy of
  // the policy's weights), ignored otherwise.
  GrpoTrainer(Model& policy, Model* reference, const data::Tokenizer& tokenizer, ProblemSource problems,
              RewardSet rewards, GrpoTrainerOptions options, Generator problem_rng)
      : policy_(policy),
        reference_(reference),
        tokenizer_(tokenizer),
        problems_(std::move(problems)),
        rewards_(std::move(rewards)),
        options_(std::move(options)),
        problem_rng_(problem_rng),
        optimizer_(policy.parameters(), options_.adamw) {
    const char* op = "GrpoTrainer";
    validate(options_.grpo);
    check(options_.prompts_per_step > 0, op, "prompts_per_step must be positive, got ", options_.prompts_per_step);
    check(options_.micro_batch > 0, op, "micro_batch must be positive, got ", options_.micro_batch);
    check(options_.warmup_steps >= 0, op, "warmup_steps must be >= 0, got ", options_.warmup_steps);
    check(std::isfinite(options_.max_grad_norm) && options_.max_grad_norm > 0, op,
          "max_grad_norm must be positive, got ", options_.max_grad_norm);
    check(!rewards_.empty(), op, "needs at least one reward function");
    check(static_cast<bool>(problems_), op, "needs a problem source");
    options_.sampling.max_new_tokens = options_.grpo.max_completion_length;
    if (options_.sampling.eos_token_ids.empty() && tokenizer_.eos_id())
      options_.sampling.eos_token_ids = {*tokenizer_.eos_id()};
    if (needs_reference(options_.grpo)) {
      check(reference_ != nullptr, op, "beta = ", options_.grpo.beta, " needs a reference model");
      copy_weights(policy_, *reference_);
    }
  }

  // One GRPO step (see the file comment); `on_progress` (optional) sees the generation's progress.
  StepReport step(const std::function<void(const infer::GenerationProgress&)>& on_progress = {}) {
    using Clock = std::chrono::steady_clock;
    const auto t_start = Clock::now();
    auto seconds = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    const GrpoConfig& cfg = options_.grpo;
    const std::int64_t G = cfg.group_size;
    StepReport report;
    report.step = step_ + 1;

    // 1-2. Rollouts, rewards, advantages (rounds of dynamic sampling).
    std::vector<detail::Rollout> rollouts;
    std::vector<double> kept_rewards;
    std::vector<std::vector<double>> kept_values(rewards_.size());
    DynamicSampler sampler(options_.prompts_per_step, G);
    for (std::int64_t round = 0;; ++round) {
      std::vector<data::Problem> problems;
      std::vector<std::vector<std::int64_t>> prompts;
      for (std::int64_t i = 0; i < options_.prompts_per_step; ++i) {
        problems.push_back(problems_(problem_rng_));
        prompts.push_back(options_.encode_prompt ? options_.encode_prompt(problems.back())
                                                 : encode_r1_zero_prompt(tokenizer_, problems.back()));
      }
      const auto t_gen = Clock::now();
      infer::GenerateOptions gen;
      gen.samples_per_prompt = G;
      gen.tokenizer = &tokenizer_;
      gen.max_batch = options_.generation_batch;
      gen.cuda_graphs = options_.cuda_graphs;
      gen.fp8_cache = options_.fp8_cache;
      gen.sample_id_base = sample_id_base(step_, round);
      gen.on_progress = on_progress;
      std::vector<infer::Completion> completions = infer::generate(policy_, prompts, options_.sampling, gen);
      const auto t_score = Clock::now();
      report.time.generation += seconds(t_gen, t_score);
      std::vector<std::string> texts;
      for (const auto& c : completions) {
        texts.push_back(c.text);
        report.generated_tokens += static_cast<std::int64_t>(c.tokens.size());
      }
      const RewardBatch scored = rewards_.evaluate(problems, texts, static_cast<std::size_t>(G));
      report.time.scoring += seconds(t_score, Clock::now());
      if (round == 0) {
        report.rewards = scored.stats();
        const Advantages first = compute_advantages(scored.total, cfg);
        report.frac_reward_zero_std = first.frac_reward_zero_std;
      }
      std::vector<std::int64_t> accepted;
      if (cfg.dynamic_sampling) {
        accepted = sampler.offer(scored.total);
      } else {
        accepted.resize(static_cast<std::size_t>(options_.prompts_per_step));
        std::iota(accepted.begin(), accepted.end(), 0);
      }
      for (const std::int64_t g : accepted) {
        for (std::int64_t s = 0; s < G; ++s) {
          const auto j = static_cast<std::size_t>(g * G + s);
          detail::Rollout r;
          r.prompt = prompts[static_cast<std::size_t>(g)];
          r.completion = completions[j].tokens;
          r.truncated = completions[j].finish == infer::FinishReason::length;
          rollouts.push_back(std::move(r));
          kept_rewards.push_back(scored.total[j]);
        }
      }
      report.rounds = round + 1;
      if (!cfg.dynamic_sampling || sampler.full() || round + 1 >= cfg.dynamic_sampling_max_rounds) break;
    }
    report.samples = static_cast<std::int64_t>(rollouts.size());
    report.groups = report.samples / G;
    if (rollouts.empty()) {  // dynamic sampling found no group with a reward spread: nothing to learn
      ++step_;
      report.time.total = seconds(t_start, Clock::now());
      return report;
    }
    const Advantages adv = compute_advantages(kept_rewards, cfg);
    double length_sum = 0;
    std::int64_t truncated = 0;
    for (std::size_t i = 0; i < rollouts.size(); ++i) {
      rollouts[i].advantage = adv.advantages[i];
      const auto C = static_cast<double>(rollouts[i].completion.size());
      length_sum += C;
      report.completion_len_max = std::max(report.completion_len_max, C);
      truncated += rollouts[i].truncated;
    }
    report.completion_len_mean = length_sum / static_cast<double>(rollouts.size());
    report.truncated_frac = static_cast<double>(truncated) / static_cast<double>(rollouts.size());

    // 3. Micro-batches.
    const std::vector<Batch> batches = make_batches(rollouts);
    double dapo_tokens = 0;
    for (const Batch& b : batches) dapo_tokens += static_cast<double>(b.tokens);
    report.trained_tokens = static_cast<std::int64_t>(dapo_tokens);

    // 4. Old and reference log-probs, without a graph.
    const auto t_logp = Clock::now();
    std::vector<Tensor<T>> old_logp(batches.size()), ref_logp(batches.size());
    {
      NoGradGuard no_grad;
      for (std::size_t i = 0; i < batches.size(); ++i) {
        if (cfg.num_iterations > 1) old_logp[i] = logprobs(policy_, batches[i]);
        if (needs_reference(cfg)) ref_logp[i] = logprobs(*reference_, batches[i]);
      }
    }
    report.time.logprobs = seconds(t_logp, Clock::now());

    // μ updates over the same rollouts.
    const double lr = rate(step_);
    double entropy_sum = 0, kl_sum = 0, clip_low = 0, clip_high = 0, clip_region = 0, loss_sum = 0;
    std::int64_t metric_tokens = 0, first_tokens = 0;
    bool has_kl = false;
    const bool divide = cfg.loss_type != LossType::dapo;
    for (std::int64_t it = 0; it < cfg.num_iterations; ++it) {
      const auto t_bwd = Clock::now();
      optimizer_.zero_grad();
      for (std::size_t i = 0; i < batches.size(); ++i) {
        const Batch& b = batches[i];
        const Tensor<T> logits = detail::forward_logits<T>(policy_, b.ids);
        const Tensor<T> logp = token_logprobs(logits, b.targets, temperature());
        GrpoLossInputs<T> in{logp, old_logp[i], ref_logp[i], b.advantages, b.mask, dapo_tokens};
        GrpoLossResult<T> r = grpo_loss(cfg, in);
        const Tensor<T> loss = divide ? div(r.loss, static_cast<double>(batches.size())) : r.loss;
        loss.backward();
        // Metrics: token-weighted means over every update of the step (clipping only happens
        // after the first: its ratio is 1); entropy and loss from the first update.
        NoGradGuard no_grad;
        const double w = static_cast<double>(r.metrics.tokens);
        metric_tokens += r.metrics.tokens;
        clip_low += r.metrics.clip_low * w;
        clip_high += r.metrics.clip_high * w;
        clip_region += r.metrics.clip_region * w;
        if (r.metrics.kl) {
          has_kl = true;
          kl_sum += *r.metrics.kl * w;
        }
        if (it == 0) {
          first_tokens += r.metrics.tokens;
          if (r.metrics.tokens > 0) entropy_sum += masked_mean(token_entropy(logits.detach(), temperature()), b.mask) * w;
          loss_sum += static_cast<double>(loss.item());
        }
      }
      const auto t_opt = Clock::now();
      report.time.backward += seconds(t_bwd, t_opt);
      report.grad_norm = optim::clip_grad_norm(optimizer_.params(), options_.max_grad_norm);
      if (std::isfinite(report.grad_norm)) {
        optimizer_.set_lr(lr);
        optimizer_.step();
      } else {
        ++skipped_updates_;
      }
      if constexpr (requires { policy_.update_balance(0.0); }) policy_.update_balance(options_.balance_gamma);
      report.time.optimizer += seconds(t_opt, Clock::now());
    }
    const double tokens = std::max<double>(static_cast<double>(metric_tokens), 1.0);
    report.entropy = entropy_sum / std::max<double>(static_cast<double>(first_tokens), 1.0);
    report.clip_low = clip_low / tokens;
    report.clip_high = clip_high / tokens;
    report.clip_region = clip_region / tokens;
    if (has_kl) report.kl = kl_sum / tokens;
    report.loss = loss_sum;
    report.lr = lr;

    // 5. Reference reset.
    ++step_;
    if (needs_reference(cfg) && reference_reset_due(cfg, step_)) copy_weights(policy_, *reference_);

    report.time.total = seconds(t_start, Clock::now());
    report.gen_tokens_per_s =
        report.time.generation > 0 ? static_cast<double>(report.generated_tokens) / report.time.generation : 0;
    const double train_time = report.time.logprobs + report.time.backward;
    report.train_tokens_per_s = train_time > 0 ? static_cast<double>(report.trained_tokens) * static_cast<double>(
                                                     cfg.num_iterations) / train_time
                                               : 0;
    return report;
  }

  std::int64_t steps_done() const { return step_; }
  std::int64_t skipped_updates() const { return skipped_updates_; }
  optim::AdamW<T>& optimizer() { return optimizer_; }
  const Generator& problem_rng() const { return problem_rng_; }
  const GrpoTrainerOptions& options() const { return options_; }

  // For resuming: the step count and the problem generator of a checkpoint.
  void restore(std::int64_t steps_done, Generator problem_rng) {
    check(steps_done >= 0, "GrpoTrainer", "steps_done must be >= 0, got ", steps_done);
    step_ = steps_done;
    problem_rng_ = problem_rng;
    if (needs_reference(options_.grpo)) copy_weights(policy_, *reference_);
  }

 private:
  struct Batch {
    Tensor<std::int64_t> ids;      // [b, S]: prompt + completion, right-padded
    Tensor<std::int64_t> targets;  // [b, S]: the next token where it is a completion token, else -100
    Tensor<bool> mask;             // [b, S]: targets != -100 (and not a masked truncation)
    Tensor<T> advantages;          // [b]
    std::int64_t tokens = 0;       // Σ mask
  };

  double temperature() const { return options_.sampling.greedy ? 1.0 : std::max(options_.sampling.temperature, 1e-6); }

  double rate(std::int64_t step) const {
    const double peak = options_.adamw.lr;
    if (step < options_.warmup_steps)
      return peak * static_cast<double>(step + 1) / static_cast<double>(options_.warmup_steps);
    return peak;
  }

  // Sample ids unique per (step, round): a run's draws never repeat, and a resumed run draws what
  // the uninterrupted one would.
  std::uint64_t sample_id_base(std::int64_t step, std::int64_t round) const {
    const auto per_round = static_cast<std::uint64_t>(options_.prompts_per_step * options_.grpo.group_size);
    const auto rounds = static_cast<std::uint64_t>(std::max<std::int64_t>(options_.grpo.dynamic_sampling_max_rounds, 1));
    return (static_cast<std::uint64_t>(step) * rounds + static_cast<std::uint64_t>(round)) * per_round;
  }

  // Sequences sorted by length (ties by index), cut into micro-batches of micro_batch sequences.
  std::vector<Batch> make_batches(const std::vector<detail::Rollout>& rollouts) const {
    const Device device = policy_device();
    std::vector<std::size_t> order(rollouts.size());
    std::iota(order.begin(), order.end(), 0);
    auto length = [&](std::size_t i) { return rollouts[i].prompt.size() + rollouts[i].completion.size(); };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return length(a) < length(b); });
    const std::int64_t pad = tokenizer_.eos_id().value_or(0);  // any id: padded positions are never targets
    std::vector<Batch> out;
    for (std::size_t first = 0; first < order.size(); first += static_cast<std::size_t>(options_.micro_batch)) {
      const std::size_t last = std::min(order.size(), first + static_cast<std::size_t>(options_.micro_batch));
      const auto b = static_cast<std::int64_t>(last - first);
      std::int64_t S = 0;
      for (std::size_t k = first; k < last; ++k) S = std::max<std::int64_t>(S, static_cast<std::int64_t>(length(order[k])));
      std::vector<std::int64_t> ids(static_cast<std::size_t>(b * S), pad), targets(static_cast<std::size_t>(b * S), -100);
      std::vector<T> advantages;
      std::int64_t tokens = 0;
      for (std::size_t k = first; k < last; ++k) {
        const detail::Rollout& r = rollouts[order[k]];
        const auto row = static_cast<std::int64_t>(k - first);
        std::vector<std::int64_t> seq = r.prompt;
        seq.insert(seq.end(), r.completion.begin(), r.completion.end());
        std::copy(seq.begin(), seq.end(), ids.begin() + row * S);
        const bool masked = r.truncated && options_.grpo.mask_truncated_completions;
        const auto P = static_cast<std::int64_t>(r.prompt.size());
        // Position t predicts token t + 1: completion token c sits at P + c, predicted at P + c - 1.
        if (!masked)
          for (std::size_t c = 0; c < r.completion.size(); ++c) {
            targets[static_cast<std::size_t>(row * S + P - 1 + static_cast<std::int64_t>(c))] = r.completion[c];
            ++tokens;
          }
        advantages.push_back(convert<T>(r.advantage));
      }
      Batch batch;
      batch.ids = Tensor<std::int64_t>::from_vector(ids, {b, S}, device);
      batch.targets = Tensor<std::int64_t>::from_vector(targets, {b, S}, device);
      batch.mask = ne(batch.targets, -100.0);
      batch.advantages = Tensor<T>::from_vector(advantages, {b}, device);
      batch.tokens = tokens;
      out.push_back(std::move(batch));
    }
    return out;
  }

  Tensor<T> logprobs(Model& model, const Batch& b) const {
    return token_logprobs(detail::forward_logits<T>(model, b.ids), b.targets, temperature());
  }

  Device policy_device() const { return policy_.device(); }

  static void copy_weights(const Model& from, Model& to) {
    NoGradGuard no_grad;
    const auto src = from.named_parameters();
    auto dst = to.named_parameters();
    check(src.size() == dst.size(), "GrpoTrainer", "the reference model has ", dst.size(), " parameters, the policy ",
          src.size());
    for (std::size_t i = 0; i < src.size(); ++i) {
      const Tensor<T>& s = src[i].second;
      Tensor<T>& d = dst[i].second;
      check(src[i].first == dst[i].first && s.shape() == d.shape() && s.is_contiguous() && d.is_contiguous(),
            "GrpoTrainer", "the reference model does not match the policy at ", src[i].first);
      copy_bytes(d.data(), d.device(), s.data(), s.device(), static_cast<std::size_t>(s.numel()) * sizeof(T));
    }
  }

  Model& policy_;
  Model* reference_;
  const data::Tokenizer& tokenizer_;
  ProblemSource problems_;
  RewardSet rewards_;
  GrpoTrainerOptions options_;
  Generator problem_rng_;
  optim::AdamW<T> optimizer_;
  std::int64_t step_ = 0;
  std::int64_t skipped_updates_ = 0;
};

}  // namespace kiln::rl
