// MTP speculative decoding in the generation engine (options.speculative; infer/speculative.hpp):
// the tokens are plain decoding's, token for token, with the same seed — in double on the CPU, over
// ragged prompts of odd lengths, groups, eos, stop strings and length limits, on the contiguous
// cache and on blocks of 1, 3 and 4 tokens (drafts crossing block boundaries), with rows refilled
// as samples finish (max_batch, a block budget) and padded to buckets; rows finish on an accepted
// second token; every emitted token's logits row is the uncached forward's. The checks can fail:
// accepting drafts unchecked changes the output, and the draft's noise coupling is what makes two
// nearly equal distributions agree (near-uniform logits: almost every draft accepted). Errors.
#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <kiln/data/tokenizer.hpp>

#include "infer_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

using Prompts = std::vector<std::vector<std::int64_t>>;

// Lengths 5, 1, 4, 7, 3: with blocks of 3 or 4 tokens a prompt ends mid-block, at a block's end
// (L − 1 the block's last row) and at a block's start.
Prompts odd_prompts(std::int64_t vocab) { return random_prompts(vocab, {5, 1, 4, 7, 3}, 60); }

std::vector<infer::FinishReason> finishes_of(const std::vector<infer::Completion>& cs) {
  std::vector<infer::FinishReason> out;
  for (const auto& c : cs) out.push_back(c.finish);
  return out;
}

// What a speculative run reports: the logits rows it emitted from, its last progress, and the
// (sample, position) of every token emitted as the second of its step (an accepted draft's).
struct SpeculativeLog {
  LogitsLog logits;
  infer::GenerationProgress last;
  std::set<std::pair<std::int64_t, std::int64_t>> second_tokens;

  infer::GenerateOptions attach(infer::GenerateOptions o) {
    const auto rows = logits.hook();
    o.on_logits = [this, rows](const infer::StepLogits& s) {
      rows(s);
      for (std::size_t r = 1; r < s.samples.size(); ++r)
        if (s.samples[r] >= 0 && s.samples[r] == s.samples[r - 1]) second_tokens.insert({s.samples[r], s.positions[r]});
    };
    o.on_progress = [this](const infer::GenerationProgress& g) { last = g; };
    return o;
  }
};

// Samples whose last token was the second of its step.
std::int64_t finished_on_second_token(const Prompts& prompts, const std::vector<infer::Completion>& out,
                                      const SpeculativeLog& log) {
  std::int64_t n = 0;
  for (std::size_t j = 0; j < out.size(); ++j) {
    const auto L = static_cast<std::int64_t>(prompts[static_cast<std::size_t>(out[j].prompt)].size());
    const auto last = L + static_cast<std::int64_t>(out[j].tokens.size()) - 1;
    n += log.second_tokens.count({static_cast<std::int64_t>(j), last}) > 0 ? 1 : 0;
  }
  return n;
}

}  // namespace

// The central property: speculative decoding emits plain decoding's tokens, whatever the cache
// layout and batching, and both of its branches run (drafts accepted and rejected). A sample's
// drafts depend on its own tokens only, so which of them are accepted does not depend on the
// layout or the batch either: the runs accept the same drafts as the contiguous all-at-once run
// (which catches drafts computed over another sample's MTP rows, e.g. a shared prompt block).
TEST(Speculative, EqualsPlainDecoding) {
  auto m = make_deepseek<double>(41, infer_deepseek_config(), 0.4);
  const Prompts prompts = odd_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.temperature = 0.9;
  p.top_p = 0.95;
  p.max_new_tokens = 9;
  p.eos_token_ids = {5, 11, 17};
  p.seed = 23;
  infer::GenerateOptions plain;
  plain.samples_per_prompt = 3;
  plain.sample_id_base = 500;
  plain.cache_block_tokens = 0;
  const auto want = infer::generate(*m, prompts, p, plain);
  std::int64_t drafts = 0, accepted = 0, ended_on_second = 0, eos = 0;
  std::set<std::pair<std::int64_t, std::int64_t>> first_run_seconds;
  infer::GenerationProgress first_run;
  for (const auto& c : want) eos += c.finish == infer::FinishReason::eos ? 1 : 0;
  EXPECT_GE(eos, 2) << "the case should end some samples by eos";
  EXPECT_LT(eos, 15) << "and others by length";
  for (const std::int64_t block_tokens : {0, 1, 3, 4}) {
    for (const std::int64_t max_batch : {0, 5}) {
      SCOPED_TRACE(::testing::Message() << "block_tokens " << block_tokens << ", max_batch " << max_batch);
      SpeculativeLog log;
      infer::GenerateOptions o = plain;
      o.cache_block_tokens = block_tokens;
      o.max_batch = max_batch;
      o.pad_to_bucket = max_batch > 0;
      o.speculative = true;
      const auto out = infer::generate(*m, prompts, p, log.attach(o));
      EXPECT_EQ(tokens_of(out), tokens_of(want));
      EXPECT_EQ(finishes_of(out), finishes_of(want));
      expect_logits_of_full_forward(*m, prompts, 3, out, log.logits, 1e-10);
      std::int64_t tokens = 0;
      for (const auto& c : out) tokens += static_cast<std::int64_t>(c.tokens.size());
      EXPECT_EQ(log.last.tokens, tokens);
      EXPECT_EQ(log.last.finished, 15);
      // Every step checks one draft per sample; a step emits 1 + (accepted) tokens a sample.
      EXPECT_GT(log.last.drafts, 0);
      EXPECT_GT(log.last.accepted_drafts, 0);
      EXPECT_LT(log.last.accepted_drafts, log.last.drafts);
      EXPECT_LE(tokens - 15, log.last.drafts + log.last.accepted_drafts);  // the first token of each is the prefill's
      drafts += log.last.drafts;
      accepted += log.last.accepted_drafts;
      ended_on_second += finished_on_second_token(prompts, out, log);
      if (block_tokens == 0 && max_batch == 0) {
        first_run_seconds = log.second_tokens;
        first_run = log.last;
      }
      EXPECT_EQ(log.second_tokens, first_run_seconds);
      EXPECT_EQ(log.last.drafts, first_run.drafts);
      EXPECT_EQ(log.last.accepted_drafts, first_run.accepted_drafts);
    }
  }
  EXPECT_GT(ended_on_second, 0) << "some row should finish on an accepted draft's step's second token";
  std::printf("speculative, random MTP module: %lld of %lld drafts accepted (%.2f)\n", static_cast<long long>(accepted),
              static_cast<long long>(drafts), static_cast<double>(accepted) / static_cast<double>(drafts));
}

// Rows waiting for blocks (a budget) and a stop string: still plain decoding's tokens.
TEST(Speculative, StopStringsAndABlockBudget) {
  const data::Tokenizer tok;  // byte-level: the model's 40 ids are bytes 0..39
  auto m = make_deepseek<double>(42, infer_deepseek_config(), 0.2);
  const Prompts prompts = odd_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.temperature = 1.0;
  p.max_new_tokens = 10;
  p.seed = 4;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  o.tokenizer = &tok;
  o.cache_block_tokens = 3;
  const auto free = infer::generate(*m, prompts, p, o);
  p.stop_strings = {tok.decode(std::vector<std::int64_t>(free[0].tokens.begin() + 3, free[0].tokens.begin() + 5)),
                    tok.decode(std::vector<std::int64_t>{free[7].tokens[6]})};
  const auto want = infer::generate(*m, prompts, p, o);
  std::int64_t stopped = 0;
  for (const auto& c : want) stopped += c.finish == infer::FinishReason::stop_string ? 1 : 0;
  EXPECT_GE(stopped, 2);
  infer::GenerateOptions spec = o;
  spec.speculative = true;
  const auto got = infer::generate(*m, prompts, p, spec);
  EXPECT_EQ(tokens_of(got), tokens_of(want));
  EXPECT_EQ(finishes_of(got), finishes_of(want));
  for (std::size_t j = 0; j < got.size(); ++j) EXPECT_EQ(got[j].text, want[j].text) << "sample " << j;
  // A budget of 10 blocks of 3: one sample (7 prompt tokens + 10) needs 7 with its promise, so
  // samples wait for blocks and are admitted as others finish.
  spec.cache_blocks = 10;
  infer::GenerationProgress last;
  std::int64_t most = 0;
  spec.on_progress = [&](const infer::GenerationProgress& g) {
    most = std::max(most, g.active);
    last = g;
  };
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, spec)), tokens_of(want));
  EXPECT_LE(most, 4);
  EXPECT_EQ(last.finished, 10);
}

// The acceptance rule is what keeps the output: taking every draft unchecked changes it.
TEST(Speculative, AcceptingDraftsUncheckedChangesTheOutput) {
  auto m = make_deepseek<double>(43, infer_deepseek_config(), 0.2);
  const Prompts prompts = odd_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.max_new_tokens = 8;
  p.seed = 9;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  const auto want = tokens_of(infer::generate(*m, prompts, p, o));
  o.speculative = true;
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, o)), want);
  o.speculative_accept_all = true;
  EXPECT_NE(tokens_of(infer::generate(*m, prompts, p, o)), want);
}

// The coupling: a draft drawn with its target's noise key agrees with the target whenever the
// two distributions are close, whatever they are. Near-uniform logits (tiny weights) make the
// random MTP module's distribution close to the main model's: nearly every draft is accepted
// (a draft with noise of its own would agree about 1/40 of the time), and a step emits nearly
// two tokens. The tokens are still plain decoding's.
TEST(Speculative, CoupledDraftsAgreeWhenTheDistributionsDo) {
  auto m = make_deepseek<double>(44, infer_deepseek_config(), 0.02);
  const Prompts prompts = odd_prompts(m->vocab_size());
  infer::SamplingParams p;
  p.max_new_tokens = 12;
  p.seed = 3;
  infer::GenerateOptions o;
  o.samples_per_prompt = 2;
  o.cache_block_tokens = 4;
  std::int64_t plain_steps = 0;
  o.on_progress = [&](const infer::GenerationProgress& g) { plain_steps = g.step; };
  const auto want = tokens_of(infer::generate(*m, prompts, p, o));
  infer::GenerationProgress last;
  o.on_progress = [&](const infer::GenerationProgress& g) { last = g; };
  o.speculative = true;
  EXPECT_EQ(tokens_of(infer::generate(*m, prompts, p, o)), want);
  EXPECT_GT(last.acceptance_rate(), 0.9);
  EXPECT_EQ(plain_steps, 11);  // the prefill draws the first of 12 tokens
  EXPECT_LE(last.step, 7);     // 11 more tokens at nearly two a step
}

TEST(Speculative, Errors) {
  infer::SamplingParams p;
  p.max_new_tokens = 4;
  infer::GenerateOptions o;
  o.speculative = true;
  auto llama = make_llama<double>(45);
  EXPECT_KILN_ERROR(infer::generate(*llama, Prompts{{1, 2}}, p, o), "generate", "options.speculative",
                    "MTP modules", "DeepseekV3ForCausalLM");
  nn::DeepseekV3Config c = infer_deepseek_config();
  c.num_nextn_predict_layers = 0;
  auto without = make_deepseek<double>(46, c);
  EXPECT_KILN_ERROR(infer::generate(*without, Prompts{{1, 2}}, p, o), "generate", "options.speculative",
                    "num_nextn_predict_layers = 0");
  o.speculative = false;
  EXPECT_EQ(infer::generate(*without, Prompts{{1, 2}}, p, o).size(), 1u);  // plain decoding needs no MTP module
}
