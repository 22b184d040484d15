// The generation engine (infer/engine.hpp) on both model types, against independent references:
// greedy tokens are the argmax of the uncached forward of prompt + completion; every logits row
// the engine draws from equals that forward's row (ragged prompts, groups, samples finishing at
// different times by eos, stop strings and length); eos and stop strings cut a completion exactly
// where the unconstrained run first meets them, leaving the other samples' draws unchanged; same
// seed, same samples whatever the batch (other prompts, admissions under max_batch, padding to buckets); different
// seeds and different group members give different samples; errors.
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <kiln/data/tokenizer.hpp>

#include "infer_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

using Prompts = std::vector<std::vector<std::int64_t>>;

Prompts ragged_prompts(std::int64_t vocab) { return random_prompts(vocab, {3, 6, 1, 4}, 40); }

// Every token is the draw sample_tokens makes from the uncached forward's logits row before it,
// keyed by the completion's sample id and the token's position.
template <class Model>
void expect_draws_from_full_forward(Model& m, const Prompts& prompts, const std::vector<infer::Completion>& out,
                                    const infer::SamplingParams& p) {
  const auto V = m.vocab_size();
  for (const auto& c : out) {
    std::vector<std::int64_t> seq = prompts[static_cast<std::size_t>(c.prompt)];
    const auto L = static_cast<std::int64_t>(seq.size());
    seq.insert(seq.end(), c.tokens.begin(), c.tokens.end());
    const std::vector<double> full = full_logits(m, seq);
    for (std::int64_t t = 0; t < static_cast<std::int64_t>(c.tokens.size()); ++t) {
      const auto row = Tensor<double>::from_vector(row_of(full, static_cast<std::size_t>(L - 1 + t),
                                                          static_cast<std::size_t>(V)), {1, V});
      const auto drawn = sample_tokens(row, p.sampling_options(),
                                       tensor<std::int64_t>({static_cast<std::int64_t>(c.sample_id)}),
                                       tensor<std::int64_t>({L + t}));
      EXPECT_EQ(c.tokens[static_cast<std::size_t>(t)], drawn.item()) << "sample " << c.sample_id << ", token " << t;
    }
  }
}

template <class Model>
void greedy_is_argmax(Model& m) {
  const Prompts prompts = ragged_prompts(m.vocab_size());
  infer::SamplingParams p;
  p.greedy = true;
  p.temperature = 0.7;  // ignored: greedy
  p.max_new_tokens = 7;
  LogitsLog log;
  infer::GenerateOptions o;
  o.on_logits = log.hook();
  const auto out = infer::generate(m, prompts, p, o);
  ASSERT_EQ(out.size(), prompts.size());
  for (std::size_t j = 0; j < out.size(); ++j) {
    EXPECT_EQ(out[j].finish, infer::FinishReason::length);
    ASSERT_EQ(out[j].tokens.size(), 7u);
    std::vector<std::int64_t> seq = prompts[j];
    seq.insert(seq.end(), out[j].tokens.begin(), out[j].tokens.end());
    const std::vector<double> full = full_logits(m, seq);
    const auto V = static_cast<std::size_t>(m.vocab_size());
    for (std::size_t t = 0; t < 7; ++t)
      EXPECT_EQ(out[j].tokens[t], argmax_of(row_of(full, prompts[j].size() - 1 + t, V))) << "sample " << j << ", token " << t;
  }
  expect_logits_of_full_forward(m, prompts, 1, out, log, 1e-10);
}

// Sampling with groups, eos and a length limit: samples finish at different steps, the batch
// shrinks, and every row drawn from is still the uncached forward's.
template <class Model>
void sampled_logits_follow_full_forward(Model& m) {
  const Prompts prompts = ragged_prompts(m.vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.3;
  p.top_p = 0.97;
  p.max_new_tokens = 9;
  p.eos_token_ids = {5, 11, 17, 23};
  p.seed = 21;
  LogitsLog log;
  infer::GenerateOptions o;
  o.samples_per_prompt = 3;
  o.sample_id_base = 77;
  o.on_logits = log.hook();
  const auto out = infer::generate(m, prompts, p, o);
  ASSERT_EQ(out.size(), prompts.size() * 3);
  EXPECT_EQ(out[5].sample_id, 77u + 5u);
  std::size_t eos_count = 0, shortest = 9;
  for (const auto& c : out) {
    eos_count += c.finish == infer::FinishReason::eos;
    shortest = std::min(shortest, c.tokens.size());
    const auto& eos = p.eos_token_ids;
    if (c.finish == infer::FinishReason::eos) EXPECT_NE(std::find(eos.begin(), eos.end(), c.tokens.back()), eos.end());
    else EXPECT_EQ(c.tokens.size(), 9u);
  }
  EXPECT_GT(eos_count, 0u) << "the case should end some samples by eos";
  EXPECT_LT(shortest, 9u);
  expect_logits_of_full_forward(m, prompts, 3, out, log, 1e-10);
  expect_draws_from_full_forward(m, prompts, out, p);
}

}  // namespace

TEST(Engine, LlamaGreedyIsTheArgmaxOfTheUncachedForward) {
  auto m = make_llama<double>(1);
  greedy_is_argmax(*m);
}

TEST(Engine, DeepseekGreedyIsTheArgmaxOfTheUncachedForward) {
  auto m = make_deepseek<double>(2);
  greedy_is_argmax(*m);
}

TEST(Engine, LlamaSampledLogitsFollowTheUncachedForward) {
  auto m = make_llama<double>(3);
  sampled_logits_follow_full_forward(*m);
}

TEST(Engine, DeepseekSampledLogitsFollowTheUncachedForward) {
  auto m = make_deepseek<double>(4);
  sampled_logits_follow_full_forward(*m);
}

// A run with an eos id ends each sample at the first eos token of the same run without it: the
// samples that stop leave the batch, and the others' draws are unchanged.
TEST(Engine, EosEndsSamplesWhereTheFreeRunFirstMeetsIt) {
  auto m = make_deepseek<double>(5);
  const Prompts prompts = ragged_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.0;
  p.max_new_tokens = 12;
  p.seed = 8;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  const auto free = infer::generate(*m, prompts, p, o);
  p.eos_token_ids = {free[0].tokens[2], free[3].tokens[5]};
  const auto stopped = infer::generate(*m, prompts, p, o);
  ASSERT_EQ(stopped.size(), free.size());
  std::size_t ended = 0, ran_on = 0;
  for (std::size_t j = 0; j < free.size(); ++j) {
    const auto& f = free[j].tokens;
    const auto first = std::find_if(f.begin(), f.end(), [&](std::int64_t t) {
      return t == p.eos_token_ids[0] || t == p.eos_token_ids[1];
    });
    const std::vector<std::int64_t> expected(f.begin(), first == f.end() ? f.end() : first + 1);
    EXPECT_EQ(stopped[j].tokens, expected) << "sample " << j;
    EXPECT_EQ(stopped[j].finish, first == f.end() ? infer::FinishReason::length : infer::FinishReason::eos);
    ended += first != f.end();
    ran_on += first == f.end() || expected.size() > 4;
  }
  EXPECT_GE(ended, 2u);
  EXPECT_GE(ran_on, 1u);
}

// Stop strings are matched on the decoded text (tokenizer.hpp's byte-level tokens): each sample
// ends at the first token whose text completes a stop string, the text cut right after it.
TEST(Engine, StopStringsCutWhereTheFreeRunFirstMeetsThem) {
  const data::Tokenizer tok;  // the 256 bytes and the special tokens: 263 ids
  nn::LlamaConfig c = infer_llama_config();
  c.vocab_size = 270;  // a model vocabulary larger than the tokenizer's: draws stay below 263
  auto m = make_llama<double>(6, c);
  const Prompts prompts = ragged_prompts(tok.vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.0;
  p.max_new_tokens = 14;
  p.seed = 3;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  o.tokenizer = &tok;
  const auto free = infer::generate(*m, prompts, p, o);
  for (const auto& f : free) {
    EXPECT_EQ(f.text, tok.decode(f.tokens));
    for (const std::int64_t t : f.tokens) EXPECT_LT(t, tok.vocab_size());
  }
  // Two stop strings: the text of tokens 4..5 of sample 0 (spanning a token boundary), and one
  // byte of sample 5's text.
  const std::string a = tok.decode(std::vector<std::int64_t>(free[0].tokens.begin() + 4, free[0].tokens.begin() + 6));
  const std::string b = tok.decode(std::vector<std::int64_t>{free[5].tokens[7]}).substr(0, 1);
  p.stop_strings = {a, b};
  const auto stopped = infer::generate(*m, prompts, p, o);
  std::size_t cut = 0;
  for (std::size_t j = 0; j < free.size(); ++j) {
    // The first token after which the text holds a stop string; the text cut after the earliest end.
    std::size_t t = 0;
    std::string text;
    std::size_t end = std::string::npos;
    for (; t < free[j].tokens.size(); ++t) {
      text += tok.token_bytes(free[j].tokens[t]);
      for (const std::string& s : p.stop_strings)
        if (text.find(s) != std::string::npos) end = std::min(end, text.find(s) + s.size());
      if (end != std::string::npos) break;
    }
    if (end == std::string::npos) {
      EXPECT_EQ(stopped[j].tokens, free[j].tokens) << "sample " << j;
      EXPECT_EQ(stopped[j].finish, infer::FinishReason::length);
      EXPECT_EQ(stopped[j].text, free[j].text);
    } else {
      ++cut;
      EXPECT_EQ(stopped[j].tokens, std::vector<std::int64_t>(free[j].tokens.begin(), free[j].tokens.begin() + t + 1))
          << "sample " << j;
      EXPECT_EQ(stopped[j].finish, infer::FinishReason::stop_string);
      EXPECT_EQ(stopped[j].text, text.substr(0, end));
    }
  }
  EXPECT_GE(cut, 2u);
}

// Draws depend on (seed, sample id, position) and the sample's own logits only.
template <class Model>
void same_seed_same_samples(const Model& m) {
  const Prompts prompts = ragged_prompts(m.vocab_size());
  infer::SamplingParams p;
  p.temperature = 0.9;
  p.top_k = 20;
  p.top_p = 0.95;
  p.max_new_tokens = 8;
  p.eos_token_ids = {7};
  p.seed = 11;
  infer::GenerateOptions o;
  o.samples_per_prompt = 3;
  o.sample_id_base = 1000;
  const auto all = tokens_of(infer::generate(m, prompts, p, o));
  EXPECT_EQ(tokens_of(infer::generate(m, prompts, p, o)), all);  // run again

  // 4 rows for 12 samples (groups split, rows refilled as samples finish), padded to powers of two.
  infer::GenerateOptions rows = o;
  rows.max_batch = 4;
  rows.pad_to_bucket = true;
  EXPECT_EQ(tokens_of(infer::generate(m, prompts, p, rows)), all);

  // Another batch: prompts 3 and 1 alone, their sample ids given by the base.
  infer::GenerateOptions last = o;
  last.sample_id_base = 1000 + 3 * 3;
  const auto only_last = tokens_of(infer::generate(m, Prompts{prompts[3]}, p, last));
  EXPECT_EQ(only_last, std::vector<std::vector<std::int64_t>>(all.begin() + 9, all.end()));
  infer::GenerateOptions second = o;
  second.sample_id_base = 1000 + 1 * 3;
  second.pad_to_bucket = true;
  const auto only_second = tokens_of(infer::generate(m, Prompts{prompts[1], prompts[3]}, p, second));
  // ids 1003..1005 are prompt 1's samples; prompt 3 now has ids 1006..1008 (prompt 2's before).
  EXPECT_EQ(std::vector<std::vector<std::int64_t>>(only_second.begin(), only_second.begin() + 3),
            std::vector<std::vector<std::int64_t>>(all.begin() + 3, all.begin() + 6));

  // Another seed draws other samples; the members of a group differ from each other.
  infer::SamplingParams q = p;
  q.seed = 12;
  EXPECT_NE(tokens_of(infer::generate(m, prompts, q, o)), all);
  EXPECT_NE(all[0], all[1]);
  EXPECT_NE(all[1], all[2]);
}

TEST(Engine, LlamaSameSeedSameSamplesWhateverTheBatch) {
  auto m = make_llama<double>(7, infer_llama_config(), 0.2);  // flatter distributions: varied samples
  same_seed_same_samples(*m);
}

TEST(Engine, DeepseekSameSeedSameSamplesWhateverTheBatch) {
  auto m = make_deepseek<float>(8, infer_deepseek_config(), 0.2);
  same_seed_same_samples(*m);
}

TEST(Engine, GreedyGroupsAgreeAndTopKOneIsGreedy) {
  auto m = make_llama<double>(9);
  const Prompts prompts = ragged_prompts(m->vocab_size());
  infer::SamplingParams greedy;
  greedy.greedy = true;
  greedy.max_new_tokens = 5;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  const auto g = tokens_of(infer::generate(*m, prompts, greedy, o));
  for (std::size_t j = 0; j < g.size(); j += 2) EXPECT_EQ(g[j], g[j + 1]);
  infer::SamplingParams top1;
  top1.temperature = 2.0;
  top1.top_k = 1;
  top1.max_new_tokens = 5;
  top1.seed = 4;
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, top1, o)), g);
  infer::SamplingParams zero = top1;
  zero.top_k = 0;
  zero.temperature = 0.0;  // temperature 0 is greedy too
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, zero, o)), g);
}

TEST(Engine, ProgressAndBuckets) {
  auto m = make_llama<double>(10);
  const Prompts prompts = ragged_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.max_new_tokens = 6;
  p.eos_token_ids = {3, 4, 5, 6};
  p.seed = 2;
  std::vector<infer::GenerationProgress> seen;
  LogitsLog log;
  infer::GenerateOptions o;
  o.samples_per_prompt = 3;
  o.pad_to_bucket = true;
  o.on_progress = [&](const infer::GenerationProgress& g) { seen.push_back(g); };
  o.on_logits = log.hook();
  const auto out = infer::generate(*m, prompts, p, o);
  ASSERT_FALSE(seen.empty());
  std::int64_t tokens = 0;
  for (const auto& c : out) tokens += static_cast<std::int64_t>(c.tokens.size());
  EXPECT_EQ(seen.back().finished, 12);
  EXPECT_EQ(seen.back().total, 12);
  EXPECT_EQ(seen.back().active, 0);
  EXPECT_EQ(seen.back().tokens, tokens);
  EXPECT_EQ(seen.front().step, 0);
  EXPECT_LE(seen.back().step, 5);
  // 12 samples fit a bucket of 16 rows: padding rows ran (and were ignored).
  EXPECT_GT(log.padding_rows, 0);
  expect_logits_of_full_forward(*m, prompts, 3, out, log, 1e-10);
}

// The paged cache (options.cache_block_tokens) at block sizes that put block boundaries inside
// the prompts (lengths 1, 3, 4, 6) and the completions: 1 (every token its own block), 2, 3 and 4,
// with groups of 3 (forked prompts, copy-on-write of the prompt's partly filled last block), eos
// ending samples early (their blocks given back mid-run) and 5 rows refilled as samples finish. Every
// row drawn from is still the uncached forward's, and the draws equal the contiguous cache's.
template <class Model>
void paged_cache_follows_full_forward(Model& m) {
  const Prompts prompts = ragged_prompts(m.vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.1;
  p.max_new_tokens = 9;
  p.eos_token_ids = {5, 11, 17};
  p.seed = 31;
  infer::GenerateOptions contiguous;
  contiguous.samples_per_prompt = 3;
  contiguous.cache_block_tokens = 0;
  const auto want = tokens_of(infer::generate(m, prompts, p, contiguous));
  for (const std::int64_t block_tokens : {1, 2, 3, 4}) {
    for (const std::int64_t max_batch : {0, 5}) {
      SCOPED_TRACE(::testing::Message() << "block_tokens " << block_tokens << ", max_batch " << max_batch);
      LogitsLog log;
      infer::GenerateOptions o = contiguous;
      o.cache_block_tokens = block_tokens;
      o.max_batch = max_batch;
      o.pad_to_bucket = max_batch > 0;
      o.on_logits = log.hook();
      const auto out = infer::generate(m, prompts, p, o);
      EXPECT_EQ(tokens_of(out), want);
      expect_logits_of_full_forward(m, prompts, 3, out, log, 1e-10);
    }
  }
}

TEST(Engine, LlamaPagedCacheFollowsTheUncachedForward) {
  auto m = make_llama<double>(12, infer_llama_config(), 0.2);
  paged_cache_follows_full_forward(*m);
}

TEST(Engine, DeepseekPagedCacheFollowsTheUncachedForward) {
  auto m = make_deepseek<double>(13, infer_deepseek_config(), 0.2);
  paged_cache_follows_full_forward(*m);
}

// MoE dispatch in generation (options.moe_dispatch): sparse (the chosen experts only) draws what
// dense draws, every row the uncached forward's, over contiguous and paged caches, with and
// without speculative decoding; its cache stacks no experts. Automatic picks sparse for a model
// with 8·top_k experts or more, dense below.
TEST(Engine, DeepseekSparseMoEDispatchFollowsTheUncachedForward) {
  const nn::DeepseekV3Config c = many_experts_deepseek_config();  // automatic: sparse
  auto m = make_deepseek<double>(14, c, 0.3);
  const Prompts prompts = ragged_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.1;
  p.max_new_tokens = 8;
  p.seed = 5;
  infer::GenerateOptions dense;
  dense.samples_per_prompt = 2;
  dense.moe_dispatch = nn::GenerationDispatch::dense;
  const auto want = tokens_of(infer::generate(*m, prompts, p, dense));
  for (const std::int64_t block_tokens : {0, 3}) {
    for (const bool speculative : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "blocks of " << block_tokens << (speculative ? ", speculative" : ""));
      LogitsLog log;
      infer::GenerateOptions o = dense;
      o.moe_dispatch = nn::GenerationDispatch::sparse;
      o.cache_block_tokens = block_tokens;
      o.speculative = speculative;
      o.on_logits = log.hook();
      const auto out = infer::generate(*m, prompts, p, o);
      EXPECT_EQ(tokens_of(out), want);
      if (!speculative) expect_logits_of_full_forward(*m, prompts, 2, out, log, 1e-10);
    }
  }
  infer::GenerateOptions automatic = dense;
  automatic.moe_dispatch = nn::GenerationDispatch::automatic;
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, automatic)), want);
  const auto layout = infer::CacheLayout::contiguous(2, 16);
  for (const auto& e : m->make_decode_cache(layout).experts) EXPECT_FALSE(e.defined()) << "automatic: sparse";
  std::size_t stacked = 0;
  for (const auto& e : m->make_decode_cache(layout, false, infer::CacheFormat::model, nn::GenerationDispatch::dense)
                           .experts)
    stacked += e.defined();
  EXPECT_EQ(stacked, static_cast<std::size_t>(c.num_hidden_layers - c.first_k_dense_replace));
  auto few = make_deepseek<double>(15);  // 4 experts, top-2: automatic is dense
  std::size_t few_stacked = 0;
  for (const auto& e : few->make_decode_cache(layout).experts) few_stacked += e.defined();
  EXPECT_GT(few_stacked, 0u);
}

// Continuous batching: with max_batch rows, a sample that finishes hands its slot to the next one
// waiting (the batch refills mid-run instead of draining wave by wave), and with a cache budget
// (options.cache_blocks) samples also wait for blocks. The draws are those of the all-at-once run.
TEST(Engine, ContinuousBatchingAndCacheBudget) {
  auto m = make_llama<double>(14, infer_llama_config(), 0.2);
  const Prompts prompts = ragged_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.2;
  p.max_new_tokens = 8;
  p.eos_token_ids = {3, 9, 15, 21};
  p.seed = 5;
  infer::GenerateOptions all;
  all.samples_per_prompt = 3;
  all.cache_block_tokens = 2;
  const auto want = tokens_of(infer::generate(*m, prompts, p, all));

  // 4 rows for 12 samples: after the first finish the batch is full again while samples wait.
  std::vector<infer::GenerationProgress> seen;
  infer::GenerateOptions rows = all;
  rows.max_batch = 4;
  rows.on_progress = [&](const infer::GenerationProgress& g) { seen.push_back(g); };
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, rows)), want);
  // An admission reports right after the step that freed the slots: the same step, more active.
  int refills = 0;
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_LE(seen[i].active, 4);
    if (i > 0 && seen[i].step > 0 && seen[i].step == seen[i - 1].step && seen[i].active > seen[i - 1].active) ++refills;
  }
  EXPECT_GE(refills, 3) << "samples should be admitted into finished samples' slots mid-run";

  // A budget of blocks: the longest prompt (6 tokens) + 8 new ones need 7 blocks of 2 for one
  // sample, so 16 blocks hold two or three samples at a time, fewer than the 12 rows allowed.
  for (const std::int64_t budget : {7, 16}) {
    SCOPED_TRACE(::testing::Message() << "cache_blocks " << budget);
    seen.clear();
    infer::GenerateOptions tight = all;
    tight.cache_blocks = budget;
    tight.on_progress = rows.on_progress;
    EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, tight)), want);
    std::int64_t most = 0;
    for (const auto& g : seen) most = std::max(most, g.active);
    EXPECT_LE(most, budget / 2);  // every sample holds at least 2 blocks while it decodes
    EXPECT_GE(most, 1);
  }
  infer::GenerateOptions too_small = all;
  too_small.cache_blocks = 6;
  // (3 prompt tokens + 8: 2 prompt blocks, the private copy of the partial one and 4 more, counted
  // as the admission promises them)
  EXPECT_KILN_ERROR(infer::generate(*m, prompts, p, too_small), "generate", "sample 0", "needs 7 cache blocks",
                    "cache_blocks = 6");
}

TEST(Engine, Errors) {
  auto m = make_llama<double>(11);
  const Prompts ok{{1, 2, 3}};
  infer::SamplingParams p;
  p.max_new_tokens = 4;
  EXPECT_KILN_ERROR(infer::generate(*m, Prompts{{1, 2}, {}}, p), "generate", "prompt 1 is empty");
  infer::GenerateOptions sparse;
  sparse.moe_dispatch = nn::GenerationDispatch::sparse;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, p, sparse), "generate", "moe_dispatch sparse", "has none");
  EXPECT_KILN_ERROR(infer::generate(*m, Prompts{{1, 40}}, p), "generate", "prompt 0", "token id 40", "[0, 40)");
  EXPECT_KILN_ERROR(infer::generate(*m, Prompts{{-1}}, p), "generate", "token id -1");
  EXPECT_KILN_ERROR(infer::generate(*m, Prompts{std::vector<std::int64_t>(61, 1)}, p), "generate", "61 tokens",
                    "64 positions");
  infer::SamplingParams bad = p;
  bad.max_new_tokens = 0;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "max_new_tokens", "0");
  bad = p;
  bad.temperature = -1.0;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "temperature");
  bad = p;
  bad.top_p = 0.0;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "top_p");
  bad = p;
  bad.top_k = -2;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "top_k");
  bad = p;
  bad.eos_token_ids = {40};
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "eos token id 40");
  bad = p;
  bad.stop_strings = {"</answer>"};
  EXPECT_KILN_ERROR(infer::generate(*m, ok, bad), "generate", "need a tokenizer");
  infer::GenerateOptions o;
  o.samples_per_prompt = 0;
  EXPECT_KILN_ERROR(infer::generate(*m, ok, p, o), "generate", "samples_per_prompt");
  EXPECT_TRUE(infer::generate(*m, Prompts{}, p).empty());
}
