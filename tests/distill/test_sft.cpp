// SFT data (distill/sft.hpp) through train::Trainer, the distillation objectives
// (distill/objectives.hpp) and on-policy batches (distill/on_policy.hpp). References: hand-written
// targets; each example run alone through the model with its completion's log-probabilities summed
// in plain double (the mean CE over completion tokens that SFT minimises); KD losses recomputed from
// full logits at the completion positions.
#include <kiln/distill/objectives.hpp>
#include <kiln/distill/on_policy.hpp>
#include <kiln/distill/sft.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "infer_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

using distill::SftData;
using distill::SftDataOptions;
using distill::SftExample;

// Examples of assorted prompt and completion lengths over `vocab` ids.
std::vector<SftExample> random_examples(std::size_t n, std::int64_t vocab, std::uint64_t seed) {
  Generator gen{seed, 0};
  std::vector<SftExample> out;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t P = 1 + static_cast<std::int64_t>(i * 7 % 5), C = 1 + static_cast<std::int64_t>(i * 3 % 6);
    out.push_back({randint<std::int64_t>(0, vocab, {P}, Device::cpu(), gen).to_vector(),
                   randint<std::int64_t>(0, vocab, {C}, Device::cpu(), gen).to_vector()});
  }
  return out;
}

// The sequences of a batch: (ids, targets) per packed sequence or padded row (padding cut off).
std::vector<std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>>> sequences(const train::Batch& b) {
  const std::vector<std::int64_t> ids = b.ids.to_vector(), targets = b.targets.to_vector();
  std::vector<std::int64_t> cu;
  if (b.cu_seqlens.defined()) {
    cu = b.cu_seqlens.to_vector();
  } else {
    for (std::int64_t r = 0; r <= b.ids.size(0); ++r) cu.push_back(r * b.ids.size(1));
  }
  std::vector<std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>>> out;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s)
    out.emplace_back(std::vector<std::int64_t>(ids.begin() + cu[s], ids.begin() + cu[s + 1]),
                     std::vector<std::int64_t>(targets.begin() + cu[s], targets.begin() + cu[s + 1]));
  return out;
}

TEST(SftData, TargetsAreTheCompletionTokensOnly) {
  // Prompt [5, 6, 7], completion [8, 9]: positions 0..4 predict 6, 7, 8, 9, - ; the prompt's
  // tokens carry no loss, so only positions 2 and 3 count.
  for (bool packing : {true, false}) {
    SftDataOptions o;
    o.packing = packing;
    o.pad_id = 3;
    const SftData data({{{5, 6, 7}, {8, 9}}, {{1}, {2}}}, o);
    ASSERT_EQ(data.batches(), 1);
    const train::Batch b = data.batch(0);
    std::map<std::vector<std::int64_t>, std::vector<std::int64_t>> by_ids;
    for (const auto& [ids, targets] : sequences(b)) by_ids[ids] = targets;
    if (packing) {
      EXPECT_EQ(b.ids.size(0), 1);
      EXPECT_EQ(by_ids.at({5, 6, 7, 8, 9}), (std::vector<std::int64_t>{-100, -100, 8, 9, -100}));
      EXPECT_EQ(by_ids.at({1, 2}), (std::vector<std::int64_t>{2, -100}));
    } else {  // the short row is padded with pad_id, and the padding is never a target
      EXPECT_EQ(b.ids.shape(), (Shape{2, 5}));
      EXPECT_EQ(by_ids.at({5, 6, 7, 8, 9}), (std::vector<std::int64_t>{-100, -100, 8, 9, -100}));
      EXPECT_EQ(by_ids.at({1, 2, 3, 3, 3}), (std::vector<std::int64_t>{2, -100, -100, -100, -100}));
    }
  }
}

// Every epoch visits every example exactly once, micro-batches stay within the budget (unless one
// sequence alone exceeds it), orders differ between epochs, and batch(i) is a pure function.
TEST(SftData, EpochsCoverEveryExampleWithinTheBudget) {
  std::vector<SftExample> examples = random_examples(23, 50, 1);
  examples.push_back({std::vector<std::int64_t>(30, 4), {1, 2}});  // 32 tokens, over the budget
  for (bool packing : {true, false}) {
    SftDataOptions o;
    o.packing = packing;
    o.tokens_per_batch = 24;
    o.seed = 9;
    const SftData data(examples, o);
    std::vector<std::vector<std::int64_t>> first_epoch;
    for (std::int64_t epoch = 0; epoch < 3; ++epoch) {
      std::multiset<std::vector<std::int64_t>> seen;
      std::vector<std::vector<std::int64_t>> order;
      for (std::int64_t k = 0; k < data.batches(); ++k) {
        const train::Batch b = data.batch(epoch * data.batches() + k);
        EXPECT_TRUE(b.ids.numel() <= 24 || sequences(b).size() == 1) << b.ids.numel() << " tokens";
        EXPECT_EQ(b.ids.to_vector(), data.batch(epoch * data.batches() + k).ids.to_vector());
        order.push_back(b.ids.to_vector());
        for (const auto& [ids, targets] : sequences(b)) {
          std::vector<std::int64_t> trimmed = ids;
          const auto last = std::find_if(targets.rbegin(), targets.rend(), [](std::int64_t t) { return t != -100; });
          trimmed.resize(static_cast<std::size_t>(targets.rend() - last) + 1);  // up to the last completion token
          seen.insert(trimmed);
        }
      }
      std::multiset<std::vector<std::int64_t>> expected;
      for (const SftExample& e : examples) {
        std::vector<std::int64_t> all = e.prompt;
        all.insert(all.end(), e.completion.begin(), e.completion.end());
        expected.insert(all);
      }
      EXPECT_EQ(seen, expected) << "epoch " << epoch;
      if (epoch == 0) first_epoch = order;
      else EXPECT_NE(order, first_epoch) << "epoch " << epoch;
    }
  }
}

TEST(SftData, Errors) {
  EXPECT_KILN_ERROR(SftData({}, {}), "SftData", "no examples");
  EXPECT_KILN_ERROR(SftData({{{1, 2}, {}}}, {}), "SftData", "example 0", "non-empty");
  EXPECT_KILN_ERROR(SftData({{{1}, {2}}, {{}, {3}}}, {}), "SftData", "example 1");
  SftDataOptions o;
  o.max_length = 4;
  EXPECT_KILN_ERROR(SftData({{{1, 2, 3}, {4, 5}}}, o), "SftData", "5 tokens", "max_length = 4");
  o = {};
  o.tokens_per_batch = 0;
  EXPECT_KILN_ERROR(SftData({{{1}, {2}}}, o), "SftData", "tokens_per_batch");
}

// Σ over completion tokens of −log p(token | its prefix), each example run alone, in plain double.
template <class Model>
std::pair<double, std::int64_t> reference_nll(Model& model, const std::vector<SftExample>& examples) {
  NoGradGuard no_grad;
  double nll = 0.0;
  std::int64_t count = 0;
  for (const SftExample& e : examples) {
    std::vector<std::int64_t> ids = e.prompt;
    ids.insert(ids.end(), e.completion.begin(), e.completion.end());
    const auto L = static_cast<std::int64_t>(ids.size());
    const std::vector<double> logits = model.forward(Tensor<std::int64_t>::from_vector(ids, {1, L})).to_vector();
    const auto V = static_cast<std::size_t>(model.vocab_size());
    for (std::size_t c = 0; c < e.completion.size(); ++c) {
      const std::size_t pos = e.prompt.size() - 1 + c;
      double m = -INFINITY, s = 0.0;
      for (std::size_t v = 0; v < V; ++v) m = std::max(m, logits[pos * V + v]);
      for (std::size_t v = 0; v < V; ++v) s += std::exp(logits[pos * V + v] - m);
      nll -= logits[pos * V + static_cast<std::size_t>(e.completion[c])] - m - std::log(s);
      ++count;
    }
  }
  return {nll, count};
}

nn::DeepseekV3Config sft_deepseek_config() {
  nn::DeepseekV3Config c = infer_deepseek_config();
  c.mtp_loss_weight = 0.0;     // packed rows skip the MTP modules; padded rows would run them
  c.seq_aux_loss_alpha = 0.0;  // a sequence-wise loss differs between the layouts by definition
  return c;
}

// One epoch as one step: the Trainer's loss is the mean CE over every completion token (the
// micro-batches weighted by their counted targets), for packed and padded layouts alike, and the
// two layouts give the same gradient.
template <class Model>
void check_sft_epoch(std::unique_ptr<Model> (*make)(std::uint64_t)) {
  const std::vector<SftExample> examples = random_examples(11, 40, 3);
  std::vector<std::vector<double>> grads;
  for (bool packing : {true, false}) {
    auto model = make(5);
    SftDataOptions o;
    o.packing = packing;
    o.tokens_per_batch = 20;
    const SftData data(examples, o);
    ASSERT_GT(data.batches(), 2);
    train::TrainerOptions t;
    t.steps = 1;
    t.grad_accum = data.batches();
    t.log = nullptr;
    train::Trainer trainer(*model, t, data.batch_fn());
    const train::StepRecord r = trainer.compute_gradients(0);
    const auto [nll, count] = reference_nll(*model, examples);
    EXPECT_EQ(count, data.completion_tokens());
    EXPECT_NEAR(r.loss, nll / static_cast<double>(count), 1e-12) << (packing ? "packed" : "padded");
    std::vector<double> g;
    for (const auto& p : model->parameters())
      if (p.grad().defined())
        for (const double x : p.grad().to_vector()) g.push_back(x);
      else
        g.insert(g.end(), static_cast<std::size_t>(p.numel()), 0.0);
    grads.push_back(g);
  }
  EXPECT_LE(relative_error(grads[0], grads[1]), 1e-11);
}

std::unique_ptr<nn::LlamaForCausalLM<double>> llama_of(std::uint64_t seed) { return make_llama<double>(seed); }
std::unique_ptr<nn::DeepseekV3ForCausalLM<double>> deepseek_of(std::uint64_t seed) {
  return make_deepseek<double>(seed, sft_deepseek_config());
}

TEST(SftTraining, LossIsTheMeanCompletionCrossEntropyLlama) { check_sft_epoch(&llama_of); }
TEST(SftTraining, LossIsTheMeanCompletionCrossEntropyDeepseekV3) { check_sft_epoch(&deepseek_of); }

// Validation over a whole unshuffled SftData reports the same mean, and training lowers it.
TEST(SftTraining, ValidationLossAndLearning) {
  auto model = make_llama<double>(8, infer_llama_config(), 0.1);
  const std::vector<SftExample> examples = random_examples(6, 40, 4);
  SftDataOptions o;
  o.tokens_per_batch = 16;
  const SftData train_data(examples, o);
  o.shuffle = false;
  const SftData eval_data(examples, o);
  train::TrainerOptions t;
  t.steps = 30;
  t.grad_accum = 2;
  t.eval_batches = eval_data.batches();
  t.schedule = {.peak_lr = 3e-2, .min_lr = 3e-3, .warmup_steps = 0};
  t.log = nullptr;
  train::Trainer trainer(*model, t, train_data.batch_fn(), eval_data.batch_fn());
  const auto [nll, count] = reference_nll(*model, examples);
  const double before = trainer.evaluate().loss;
  EXPECT_NEAR(before, nll / static_cast<double>(count), 1e-12);
  trainer.run();
  EXPECT_LT(trainer.eval_history().back().loss, 0.5 * before);
}

// ---- distillation objectives -------------------------------------------------------------------

// The objective's loss equals the KD loss recomputed from the full logits at the completion
// positions; its "main" part is the student's CE there; a teacher identical to the student gives
// 0. A DeepSeek-V3 (MoE) teacher and a Llama student share the vocabulary.
TEST(DistillationObjective, MatchesTheLossOnFullLogits) {
  auto student = make_llama<double>(11);
  auto teacher = make_deepseek<double>(12, sft_deepseek_config());
  const std::vector<SftExample> examples = random_examples(5, 40, 6);
  for (bool packing : {true, false}) {
    SftDataOptions o;
    o.packing = packing;
    o.shuffle = false;
    const train::Batch b = SftData(examples, o).batch(0);
    const std::vector<std::int64_t> t = b.targets.to_vector();
    std::vector<std::int64_t> rows;
    for (std::size_t i = 0; i < t.size(); ++i)
      if (t[i] != -100) rows.push_back(static_cast<std::int64_t>(i));
    const auto rows_t = Tensor<std::int64_t>::from_vector(rows, {static_cast<std::int64_t>(rows.size())});
    auto at_rows = [&](const Tensor<double>& logits) { return index_select(reshape(logits, {-1, 40}), 0, rows_t); };
    const Tensor<double> s = at_rows(train::batch_logits(*student, b)), te = at_rows(train::batch_logits(*teacher, b));
    const Tensor<double> w = ones<double>({static_cast<std::int64_t>(rows.size())});
    const std::vector<std::pair<distill::DistillLossOptions, double>> cases{
        {{distill::Divergence::logit_kd, 2.0, 0.0}, distill::logit_kd_loss(s, te, w, 2.0).item()},
        {{distill::Divergence::generalized_jsd, 1.0, 0.5}, distill::generalized_jsd_loss(s, te, w, 0.5, 1.0).item()},
        {{distill::Divergence::generalized_jsd, 1.5, 1.0}, distill::generalized_jsd_loss(s, te, w, 1.0, 1.5).item()}};
    for (const auto& [options, expected] : cases) {
      const auto objective = distill::distillation_objective<nn::LlamaForCausalLM<double>>(*teacher, options);
      const train::LossParts<double> l = objective(*student, b);
      EXPECT_NEAR(l.loss.item(), expected, 1e-12);
      EXPECT_GT(l.loss.item(), 1e-3);
      ASSERT_EQ(l.parts.size(), 2u);
      EXPECT_NEAR(l.parts[0].second.item(), cross_entropy(s, Tensor<std::int64_t>::from_vector(
                                                                  [&] {
                                                                    std::vector<std::int64_t> v;
                                                                    for (auto r : rows) v.push_back(t[static_cast<std::size_t>(r)]);
                                                                    return v;
                                                                  }(),
                                                                  {static_cast<std::int64_t>(rows.size())}))
                                                  .item(),
                  1e-12);
    }
    auto twin = make_llama<double>(11);
    const auto self = distill::distillation_objective<nn::LlamaForCausalLM<double>>(*twin, {});
    EXPECT_NEAR(self(*student, b).loss.item(), 0.0, 1e-14);
  }
}

// Logit KD through the Trainer moves the student towards the teacher: the divergence over the
// training examples (all in one unshuffled batch) falls.
TEST(DistillationObjective, TrainingReducesTheDivergence) {
  auto student = make_llama<double>(21, infer_llama_config(), 0.1);
  auto teacher = make_llama<double>(22);
  const std::vector<SftExample> examples = random_examples(8, 40, 7);
  SftDataOptions o;
  o.tokens_per_batch = 24;
  const SftData data(examples, o);
  o.shuffle = false;
  o.tokens_per_batch = 1000;
  const SftData held_out(examples, o);
  ASSERT_EQ(held_out.batches(), 1);
  const auto objective = distill::distillation_objective<nn::LlamaForCausalLM<double>>(*teacher, {});
  auto divergence = [&] {
    NoGradGuard no_grad;
    return objective(*student, held_out.batch(0)).loss.item();
  };
  const double before = divergence();
  train::TrainerOptions t;
  t.steps = 40;
  t.schedule = {.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 0};
  t.log = nullptr;
  train::Trainer trainer(*student, t, data.batch_fn(), {}, objective);
  trainer.run();
  EXPECT_LT(divergence(), 0.7 * before);
}

TEST(DistillationObjective, Errors) {
  auto teacher = make_llama<double>(1);
  EXPECT_KILN_ERROR((distill::distillation_objective<nn::LlamaForCausalLM<double>>(
                        *teacher, {distill::Divergence::logit_kd, 0.0, 0.0})),
                    "distillation_objective", "temperature");
  EXPECT_KILN_ERROR((distill::distillation_objective<nn::LlamaForCausalLM<double>>(
                        *teacher, {distill::Divergence::generalized_jsd, 1.0, 1.5})),
                    "distillation_objective", "beta");
  nn::LlamaConfig c = infer_llama_config();
  c.vocab_size = 41;
  auto other = make_llama<double>(2, c);
  const auto objective = distill::distillation_objective<nn::LlamaForCausalLM<double>>(*other, {});
  const train::Batch b = SftData({{{1, 2}, {3}}}, {}).batch(0);
  EXPECT_KILN_ERROR(objective(*teacher, b), "distillation_objective", "41", "40");
}

// ---- on-policy batches -------------------------------------------------------------------------

data::Tokenizer byte_tokenizer() { return data::Tokenizer(data::SpecialTokens{.bos = "<bos>", .eos = "<eos>"}); }

TEST(OnPolicyBatches, StudentSamplesWithCompletionTargets) {
  const data::Tokenizer tok = byte_tokenizer();
  nn::LlamaConfig c = infer_llama_config();
  c.vocab_size = tok.vocab_size();
  c.max_position_embeddings = 96;
  auto student = make_llama<float>(31, c);
  const data::TaskMix mix;
  auto problem = [&](std::int64_t k) { return data::make_arithmetic(mix.arithmetic, 17, static_cast<std::uint64_t>(k)); };
  auto encode = [&](const data::Problem& p) {
    std::vector<std::int64_t> ids{*tok.bos_id()};
    const auto text = tok.encode(data::prompt(p));
    ids.insert(ids.end(), text.begin(), text.end());
    return ids;
  };
  distill::OnPolicyOptions o;
  o.prompts_per_batch = 3;
  o.samples_per_prompt = 2;
  o.sampling.max_new_tokens = 12;
  o.seed = 4;
  distill::OnPolicyStats stats;
  const train::BatchFn batches = distill::on_policy_batches(*student, tok, problem, encode, nullptr, o, &stats);
  const train::Batch b = batches(5);
  EXPECT_EQ(stats.batches, 1);
  EXPECT_EQ(stats.samples, 6);
  // The same samples as generate() with the documented keys: prompts 15..17, sample ids from 30.
  std::vector<std::vector<std::int64_t>> prompts;
  for (std::int64_t k = 15; k < 18; ++k) prompts.push_back(encode(problem(k)));
  infer::SamplingParams sp = o.sampling;
  sp.eos_token_ids = {*tok.eos_id()};
  sp.seed = o.seed ^ 0x6F6E2D706F6C6963ull;
  infer::GenerateOptions g;
  g.samples_per_prompt = 2;
  g.tokenizer = &tok;
  g.sample_id_base = 30;
  const auto completions = infer::generate(*student, prompts, sp, g);
  const auto seqs = sequences(b);
  ASSERT_EQ(seqs.size(), completions.size());
  std::int64_t counted = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const auto& prompt = prompts[static_cast<std::size_t>(completions[i].prompt)];
    std::vector<std::int64_t> ids = prompt, targets(prompt.size() - 1, -100);
    ids.insert(ids.end(), completions[i].tokens.begin(), completions[i].tokens.end());
    targets.insert(targets.end(), completions[i].tokens.begin(), completions[i].tokens.end());
    targets.push_back(-100);
    EXPECT_EQ(seqs[i].first, ids) << "sample " << i;
    EXPECT_EQ(seqs[i].second, targets) << "sample " << i;
    counted += static_cast<std::int64_t>(completions[i].tokens.size());
  }
  EXPECT_EQ(stats.tokens, counted);
  EXPECT_EQ(batches(5).ids.to_vector(), b.ids.to_vector());  // a pure function of the index (same weights)
}

TEST(OnPolicyBatches, LambdaMixesOfflineBatches) {
  const data::Tokenizer tok = byte_tokenizer();
  nn::LlamaConfig c = infer_llama_config();
  c.vocab_size = tok.vocab_size();
  auto student = make_llama<float>(32, c);
  const SftData offline(random_examples(9, 40, 9), {});
  auto problem = [](std::int64_t k) { return data::make_arithmetic({}, 3, static_cast<std::uint64_t>(k)); };
  auto encode = [&](const data::Problem&) { return std::vector<std::int64_t>{*tok.bos_id()}; };
  distill::OnPolicyOptions o;
  o.sampling.max_new_tokens = 4;
  for (double lambda : {0.0, 0.5}) {
    o.lambda = lambda;
    distill::OnPolicyStats stats;
    const train::BatchFn batches = distill::on_policy_batches(*student, tok, problem, encode, &offline, o, &stats);
    std::int64_t offline_batches = 0;
    for (std::int64_t i = 0; i < 40; ++i) {
      const std::int64_t before = stats.batches;
      const train::Batch b = batches(i);
      if (stats.batches == before) {
        ++offline_batches;
        EXPECT_EQ(b.ids.to_vector(), offline.batch(i).ids.to_vector());
      }
    }
    if (lambda == 0.0) EXPECT_EQ(offline_batches, 40);
    else EXPECT_TRUE(offline_batches > 8 && offline_batches < 32) << offline_batches;
  }
  o.lambda = 0.5;
  EXPECT_KILN_ERROR(distill::on_policy_batches(*student, tok, problem, encode, nullptr, o), "on_policy_batches",
                    "offline dataset");
}

}  // namespace
