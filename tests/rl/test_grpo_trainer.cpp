// The GRPO trainer end to end on the CPU (rl/grpo_trainer.hpp): a tiny Llama learns a trivially
// learnable rule from the reward alone (answer "7": the reward rises from ~0 to above 0.9), every
// loss type and option runs and reports consistent metrics, a reference model at the policy's
// weights gives KL 0, and bad options are refused.
#include <cmath>

#include <kiln/nn/llama.hpp>
#include <kiln/rl/grpo_trainer.hpp>
#include <kiln/rl/policy_evaluation.hpp>

#include "test_util.hpp"

using namespace kiln;

namespace {

using Model = nn::LlamaForCausalLM<float>;

nn::LlamaConfig tiny_config(std::int64_t vocab) {
  nn::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 512;
  c.initializer_range = 0.02;
  return c;
}

data::Tokenizer byte_tokenizer() { return data::Tokenizer(data::SpecialTokens{.eos = "<eos>"}); }

// Arithmetic problems (their content does not matter to the "7" reward).
rl::GrpoTrainer<Model>::ProblemSource arithmetic() {
  return [](Generator& g) { return data::sample_arithmetic({.min_digits = 1, .max_digits = 1}, g, data::Split::train); };
}

rl::RewardSet answer_seven() {
  rl::RewardSet set;
  set.add("seven", 1.0, [](const data::Problem&, std::string_view completion) { return completion == "7" ? 1.0 : 0.0; });
  return set;
}

TEST(GrpoTrainer, LearnsToAnswerSeven) {
  // One new token per completion; a random policy says "7" with probability ~1/263 (the bytes and
  // the special tokens), so the first steps see a group with a "7" now and then; each one pushes
  // the token up, and the reward climbs to nearly 1.
  const data::Tokenizer tok = byte_tokenizer();
  Generator init{7, 0};
  Model policy(tiny_config(tok.vocab_size()), init);
  rl::GrpoTrainerOptions o;
  o.grpo.group_size = 16;
  o.grpo.max_completion_length = 1;
  o.prompts_per_step = 16;
  o.micro_batch = 256;
  o.adamw.lr = 3e-2;
  o.sampling.temperature = 1.0;
  o.sampling.seed = 11;
  rl::GrpoTrainer<Model> trainer(policy, nullptr, tok, arithmetic(), answer_seven(), o, Generator{3, 0});
  std::vector<double> rewards;
  for (int step = 0; step < (kiln::testing::kSanitized ? 2 : 40); ++step) {
    const rl::StepReport r = trainer.step();
    rewards.push_back(r.rewards.back().mean);
    if (step >= 5 && rewards[rewards.size() - 1] > 0.95 && rewards[rewards.size() - 2] > 0.95) break;
  }
  EXPECT_LT(rewards.front(), 0.2);
  if (kiln::testing::kSanitized) return;  // two steps under the sanitizers (test_util.hpp): no learning yet
  EXPECT_GT(rewards.back(), 0.9) << "reward after " << rewards.size() << " steps";
}

struct Rollouts {
  std::vector<rl::StepReport> reports;
};

Rollouts run_steps(const rl::GrpoTrainerOptions& o, int steps, bool with_reference) {
  const data::Tokenizer tok = byte_tokenizer();
  Generator init{9, 0};
  Model policy(tiny_config(tok.vocab_size()), init);
  Generator other{10, 0};
  Model reference(tiny_config(tok.vocab_size()), other);  // different weights until the trainer copies
  rl::RewardSet rewards;
  rewards.add("digit", 1.0, [](const data::Problem&, std::string_view c) {
    return !c.empty() && c[0] >= '0' && c[0] <= '9' ? 1.0 : 0.0;
  });
  rewards.add("short", 0.5, [](const data::Problem&, std::string_view c) { return c.size() <= 2 ? 1.0 : 0.0; });
  rl::GrpoTrainer<Model> trainer(policy, with_reference ? &reference : nullptr, tok, arithmetic(), rewards, o,
                                 Generator{4, 0});
  Rollouts run;
  for (int i = 0; i < steps; ++i) run.reports.push_back(trainer.step());
  return run;
}

rl::GrpoTrainerOptions small_options() {
  rl::GrpoTrainerOptions o;
  o.grpo.group_size = 4;
  o.grpo.max_completion_length = 5;
  o.prompts_per_step = 3;
  o.micro_batch = 5;  // 12 sequences in micro-batches of 5, 5, 2
  o.adamw.lr = 1e-3;
  o.sampling.seed = 5;
  return o;
}

TEST(GrpoTrainer, EveryLossTypeRunsWithConsistentMetrics) {
  for (rl::LossType loss : {rl::LossType::grpo, rl::LossType::bnpo, rl::LossType::dr_grpo, rl::LossType::dapo}) {
    rl::GrpoTrainerOptions o = small_options();
    o.grpo.loss_type = loss;
    const Rollouts run = run_steps(o, 2, false);
    for (const rl::StepReport& r : run.reports) {
      SCOPED_TRACE(rl::to_string(loss));
      EXPECT_EQ(r.samples, 12);
      EXPECT_EQ(r.groups, 3);
      ASSERT_EQ(r.rewards.size(), 3u);  // digit, short, total
      EXPECT_EQ(r.rewards[0].name, "digit");
      EXPECT_EQ(r.rewards[2].name, "total");
      EXPECT_NEAR(r.rewards[2].mean, r.rewards[0].mean + 0.5 * r.rewards[1].mean, 1e-12);
      EXPECT_GT(r.completion_len_mean, 0.0);
      EXPECT_LE(r.completion_len_max, 5.0);
      EXPECT_GE(r.truncated_frac, 0.0);
      EXPECT_LE(r.truncated_frac, 1.0);
      EXPECT_GT(r.entropy, 0.0);
      EXPECT_LE(r.entropy, std::log(static_cast<double>(byte_tokenizer().vocab_size())) + 1e-6);  // <= log(vocab)
      EXPECT_EQ(r.clip_region, 0.0);  // μ = 1: ratio 1 exactly, nothing clipped
      EXPECT_FALSE(r.kl.has_value());
      EXPECT_TRUE(std::isfinite(r.grad_norm));
      EXPECT_GT(r.trained_tokens, 0);
      EXPECT_GE(r.time.total, r.time.generation);
    }
  }
}

TEST(GrpoTrainer, ReferenceAtThePolicyGivesZeroKl) {
  rl::GrpoTrainerOptions o = small_options();
  o.grpo.beta = 0.04;
  const Rollouts run = run_steps(o, 2, true);
  // Step 1's one update sees the policy still equal to the reference it was copied into: the
  // log-ratio is exactly 0, and so is k3. After an update they differ.
  ASSERT_TRUE(run.reports[0].kl.has_value());
  EXPECT_EQ(*run.reports[0].kl, 0.0);
  ASSERT_TRUE(run.reports[1].kl.has_value());
  EXPECT_GT(*run.reports[1].kl, 0.0);
}

TEST(GrpoTrainer, SeveralUpdatesPerRolloutClip) {
  rl::GrpoTrainerOptions o = small_options();
  o.grpo.num_iterations = 4;  // old log-probs, then four updates over the same rollouts
  o.grpo.epsilon_low = 0.05;
  o.grpo.epsilon_high = 0.05;
  o.adamw.lr = 5e-2;  // large steps: later updates move ratios out of [0.95, 1.05]
  const Rollouts run = run_steps(o, 1, false);
  EXPECT_GT(run.reports[0].clip_region, 0.0);
  EXPECT_NEAR(run.reports[0].clip_region, run.reports[0].clip_low + run.reports[0].clip_high, 1e-12);
}

TEST(GrpoTrainer, DynamicSamplingAndTruncationMasking) {
  rl::GrpoTrainerOptions o = small_options();
  o.grpo.dynamic_sampling = true;
  o.grpo.dynamic_sampling_max_rounds = 3;
  o.grpo.mask_truncated_completions = true;
  const Rollouts run = run_steps(o, 2, false);
  for (const rl::StepReport& r : run.reports) {
    EXPECT_GE(r.rounds, 1);
    EXPECT_LE(r.rounds, 3);
    EXPECT_LE(r.groups, 3);
    EXPECT_EQ(r.samples, 4 * r.groups);
  }
}

TEST(GrpoTrainer, BadOptions) {
  const data::Tokenizer tok = byte_tokenizer();
  Generator init{1, 0};
  Model policy(tiny_config(tok.vocab_size()), init);
  rl::GrpoTrainerOptions o = small_options();
  o.grpo.beta = 0.1;
  EXPECT_KILN_ERROR(rl::GrpoTrainer<Model>(policy, nullptr, tok, arithmetic(), answer_seven(), o, Generator{}),
                    "reference model");
  o = small_options();
  o.micro_batch = 0;
  EXPECT_KILN_ERROR(rl::GrpoTrainer<Model>(policy, nullptr, tok, arithmetic(), answer_seven(), o, Generator{}),
                    "micro_batch");
  o = small_options();
  EXPECT_KILN_ERROR(rl::GrpoTrainer<Model>(policy, nullptr, tok, arithmetic(), rl::RewardSet{}, o, Generator{}),
                    "reward");
}

TEST(PolicyEvaluation, AnswerKeysAndReport) {
  data::Problem cd;
  cd.kind = data::TaskKind::countdown;
  cd.numbers = {2, 3, 4};
  cd.target = 14;
  // Two different correct expressions vote together; a value reached by breaking the rules does not.
  EXPECT_EQ(rl::answer_key(cd, "<think></think><answer>2 + 3 * 4</answer>", true), "=14");
  EXPECT_EQ(rl::answer_key(cd, "<answer>4 * 3 + 2</answer>", true), "=14");
  EXPECT_EQ(rl::answer_key(cd, "<answer>4 * 3 + 2 + 0</answer>", false), "~14");
  EXPECT_EQ(rl::answer_key(cd, "<answer> 2 + + </answer>", false), "2 + +");
  EXPECT_EQ(rl::answer_key(cd, "no answer", false), "");
  data::Problem ar;
  ar.kind = data::TaskKind::arithmetic;
  ar.numbers = {2, 5};
  ar.target = 7;
  EXPECT_EQ(rl::answer_key(ar, "<answer> 7 </answer>", true), "7");

  // The report of a tiny untrained model on a few problems: shapes and bounds.
  const data::Tokenizer tok = byte_tokenizer();
  Generator init{2, 0};
  Model policy(tiny_config(tok.vocab_size()), init);
  Generator g{6, 0};
  std::vector<data::Problem> problems;
  for (int i = 0; i < 5; ++i) problems.push_back(data::sample_arithmetic({}, g, data::Split::test));
  const rl::PolicyEvalReport r = rl::evaluate_policy(policy, tok, problems, {.k = 3, .max_new_tokens = 8});
  EXPECT_EQ(r.problems, 5);
  EXPECT_EQ(r.k, 3);
  for (const rl::Interval& i : {r.pass_at_1, r.cons_at_k, r.greedy}) {
    EXPECT_GE(i.estimate, 0.0);
    EXPECT_LE(i.estimate, 1.0);
    EXPECT_LE(i.lo, i.estimate);
    EXPECT_GE(i.hi, i.estimate);
  }
  EXPECT_GT(r.mean_length.estimate, 0.0);
  EXPECT_LE(r.mean_length.estimate, 8.0);
  // One rate per problem, a multiple of 1/k; pass@1 is their mean.
  ASSERT_EQ(r.per_problem.size(), 5u);
  double sum = 0.0;
  for (double x : r.per_problem) {
    EXPECT_EQ(x * 3.0, std::round(x * 3.0)) << x;
    EXPECT_GE(x, 0.0);
    EXPECT_LE(x, 1.0);
    sum += x;
  }
  EXPECT_DOUBLE_EQ(sum / 5.0, r.pass_at_1.estimate);
  // Its JSON form (run folders and reports) carries every figure.
  const io::ordered_json j = rl::to_json(r);
  EXPECT_EQ(j["problems"].get<std::int64_t>(), 5);
  EXPECT_EQ(j["k"].get<std::int64_t>(), 3);
  EXPECT_EQ(j["pass_at_1"]["estimate"].get<double>(), r.pass_at_1.estimate);
  EXPECT_EQ(j["cons_at_k"]["lo"].get<double>(), r.cons_at_k.lo);
  EXPECT_EQ(j["greedy"]["hi"].get<double>(), r.greedy.hi);
  EXPECT_EQ(j["mean_length"]["estimate"].get<double>(), r.mean_length.estimate);
  EXPECT_EQ(j["format_rate"].get<double>(), r.format_rate);
  EXPECT_EQ(j["per_problem_pass_at_1"].get<std::vector<double>>(), r.per_problem);
}

}  // namespace
