// The models' generation path — prefill into the preallocated cache (infer/kv_cache.hpp), then one
// token per row per decode step (Llama: K/V; DeepSeek-V3: the MLA latent through the absorbed
// path, MoE by dense dispatch) — against the independent reference, each sequence's plain uncached
// forward: ragged prompts in one padded batch, rows at different positions in one step, rows
// leaving early, slots in any order, GRPO groups sharing a prompt's prefill; double and float.
// Also: dense MoE dispatch against the sparse (sorted) dispatch, and errors.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "infer_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

struct Target {
  std::int64_t prompt;             // the prompt it continues
  std::int64_t slot;               // its cache slot
  std::vector<std::int64_t> feed;  // the tokens fed after the prompt, one per decode step
};

std::vector<std::int64_t> random_tokens(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  Generator gen{seed, 0};
  return n == 0 ? std::vector<std::int64_t>{} : randint<std::int64_t>(0, vocab, {n}, Device::cpu(), gen).to_vector();
}

// The cached path: per target the logits rows [1 + feed.size(), V] (the prompt's last token's,
// then one after each fed token), flattened. Targets whose feed is used up leave the batch.
template <class Model>
std::vector<double> cached_logits(const Model& m, const std::vector<std::vector<std::int64_t>>& prompts,
                                  const std::vector<Target>& targets, std::int64_t num_slots) {
  NoGradGuard no_grad;
  std::vector<std::int64_t> lengths;
  std::int64_t S = 0, longest_feed = 0;
  for (const auto& p : prompts) {
    lengths.push_back(static_cast<std::int64_t>(p.size()));
    S = std::max(S, lengths.back());
  }
  const auto B = static_cast<std::int64_t>(prompts.size());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(B * S), m.vocab_size() - 1);  // padding: any id
  for (std::int64_t b = 0; b < B; ++b) std::copy(prompts[b].begin(), prompts[b].end(), ids.begin() + b * S);
  std::vector<std::int64_t> slots, rows;
  for (const Target& t : targets) {
    slots.push_back(t.slot);
    rows.push_back(t.prompt);
    longest_feed = std::max(longest_feed, static_cast<std::int64_t>(t.feed.size()));
  }
  auto cache = m.make_decode_cache(num_slots, S + longest_feed);
  const auto index = infer::PrefillIndex::make(lengths, S, slots, rows, num_slots, Device::cpu());
  const std::int64_t V = m.vocab_size();
  std::vector<std::vector<double>> per_target(targets.size());
  const std::vector<double> first = cast<double>(m.prefill(Tensor<std::int64_t>::from_vector(ids, {B, S}), index, cache))
                                        .to_vector();
  for (std::size_t r = 0; r < targets.size(); ++r) {
    const auto row = row_of(first, r, static_cast<std::size_t>(V));
    per_target[r].insert(per_target[r].end(), row.begin(), row.end());
  }
  for (std::int64_t step = 0; step < longest_feed; ++step) {
    std::vector<std::size_t> active;
    std::vector<std::int64_t> step_ids, step_slots, positions;
    for (std::size_t r = 0; r < targets.size(); ++r)
      if (step < static_cast<std::int64_t>(targets[r].feed.size())) {
        active.push_back(r);
        step_ids.push_back(targets[r].feed[static_cast<std::size_t>(step)]);
        step_slots.push_back(targets[r].slot);
        positions.push_back(lengths[static_cast<std::size_t>(targets[r].prompt)] + step);
      }
    const auto step_index = infer::DecodeIndex::at(tensor(step_slots), tensor(positions));
    const std::vector<double> logits = cast<double>(m.decode(tensor(step_ids), step_index, cache)).to_vector();
    EXPECT_EQ(logits.size(), active.size() * static_cast<std::size_t>(V));
    for (std::size_t i = 0; i < active.size(); ++i) {
      const auto row = row_of(logits, i, static_cast<std::size_t>(V));
      per_target[active[i]].insert(per_target[active[i]].end(), row.begin(), row.end());
    }
  }
  std::vector<double> out;
  for (const auto& t : per_target) out.insert(out.end(), t.begin(), t.end());
  return out;
}

// The reference: each target's prompt + feed through the uncached forward, rows L−1 .. L+feed−1.
template <class Model>
std::vector<double> uncached_logits(Model& m, const std::vector<std::vector<std::int64_t>>& prompts,
                                    const std::vector<Target>& targets) {
  std::vector<double> out;
  const auto V = static_cast<std::size_t>(m.vocab_size());
  for (const Target& t : targets) {
    std::vector<std::int64_t> seq = prompts[static_cast<std::size_t>(t.prompt)];
    const std::size_t L = seq.size();
    seq.insert(seq.end(), t.feed.begin(), t.feed.end());
    const std::vector<double> full = full_logits(m, seq);
    out.insert(out.end(), full.begin() + static_cast<std::ptrdiff_t>((L - 1) * V), full.end());
  }
  return out;
}

// Four prompts of lengths 5, 2, 7, 1 continued by 6, 9, 2 and 4 tokens: the batch shrinks from 4
// rows to 1 while rows sit at different positions; slots in another order than the rows.
struct RaggedCase {
  std::vector<std::vector<std::int64_t>> prompts;
  std::vector<Target> targets;
  std::int64_t slots = 5;
};

RaggedCase ragged_case(std::int64_t vocab) {
  RaggedCase c;
  const std::vector<std::int64_t> prompt_lengths{5, 2, 7, 1}, feed_lengths{6, 9, 2, 4}, slots{3, 0, 4, 1};
  for (std::size_t i = 0; i < prompt_lengths.size(); ++i) {
    c.prompts.push_back(random_tokens(prompt_lengths[i], vocab, 100 + i));
    c.targets.push_back({static_cast<std::int64_t>(i), slots[i], random_tokens(feed_lengths[i], vocab, 200 + i)});
  }
  return c;
}

// Two prompts; prompt 0 starts a group of three samples with different continuations (one stops
// at the prompt), prompt 1 one sample: the prefill computes each prompt once and writes it to
// every slot of its group.
RaggedCase group_case(std::int64_t vocab) {
  RaggedCase c;
  c.prompts = {random_tokens(4, vocab, 300), random_tokens(6, vocab, 301)};
  c.targets = {{0, 3, random_tokens(5, vocab, 310)},
               {0, 0, random_tokens(3, vocab, 311)},
               {1, 1, random_tokens(4, vocab, 312)},
               {0, 2, {}}};
  return c;
}

template <class Model>
void expect_cached_equals_uncached(Model& m, const RaggedCase& c, double tolerance, const char* what) {
  const std::vector<double> cached = cached_logits(m, c.prompts, c.targets, c.slots);
  const std::vector<double> reference = uncached_logits(m, c.prompts, c.targets);
  EXPECT_LT(relative_error(cached, reference), tolerance) << what;
  // The comparison can see a difference: a slightly perturbed copy fails it.
  std::vector<double> moved = cached;
  moved[moved.size() / 2] += 1e-6 * std::abs(moved[moved.size() / 2]) + 1e-6;
  EXPECT_GT(relative_error(moved, reference), 1e-9) << what;
}

}  // namespace

TEST(CachedDecode, LlamaRaggedBatchEqualsUncachedForward) {
  auto m = make_llama<double>(1);
  expect_cached_equals_uncached(*m, ragged_case(m->vocab_size()), 1e-10, "llama ragged");
}

TEST(CachedDecode, DeepseekRaggedBatchEqualsUncachedForward) {
  auto m = make_deepseek<double>(2);
  expect_cached_equals_uncached(*m, ragged_case(m->vocab_size()), 1e-10, "deepseek ragged");
}

TEST(CachedDecode, GroupsShareTheirPromptsPrefill) {
  auto llama = make_llama<double>(3);
  expect_cached_equals_uncached(*llama, group_case(llama->vocab_size()), 1e-10, "llama groups");
  auto deepseek = make_deepseek<double>(4);
  expect_cached_equals_uncached(*deepseek, group_case(deepseek->vocab_size()), 1e-10, "deepseek groups");
}

// Tied embeddings, no q_lora_rank, dense-only DeepSeek-V3 (first_k_dense_replace past the last
// layer): the other branches of the models' decode paths.
TEST(CachedDecode, OtherModelVariants) {
  nn::LlamaConfig lc = infer_llama_config();
  lc.tie_word_embeddings = true;
  lc.num_key_value_heads = 4;  // plain multi-head attention
  Generator g1{5, 0};
  nn::LlamaForCausalLM<double> llama(lc, g1);
  randomize(llama, 6, 0.4);
  expect_cached_equals_uncached(llama, ragged_case(lc.vocab_size), 1e-10, "tied llama");

  nn::DeepseekV3Config dc = infer_deepseek_config();
  dc.q_lora_rank = std::nullopt;
  dc.tie_word_embeddings = true;
  dc.first_k_dense_replace = 3;
  Generator g2{7, 0};
  nn::DeepseekV3ForCausalLM<double> deepseek(dc, g2);
  randomize(deepseek, 8, 0.4);
  expect_cached_equals_uncached(deepseek, ragged_case(dc.vocab_size), 1e-10, "dense deepseek without q_lora");
}

// float: both paths compute the same function with float roundings in different orders (another
// association of the attention sums, the absorbed instead of the naive MLA product, dense instead
// of sorted MoE sums). Each inner product of length K (K <= 40 here) in float has relative error
// at most about K·2^-24 ≈ 2.4e-6 in the worst case and far less in practice (errors of random sign
// grow like sqrt(K)); through the layers and the head the measured distance of either float path to
// the float64 reference is 2-3e-7 (both models). The bound below is DESIGN.md's fp32 tolerance
// against a float64 reference, 1e-5: well above what rounding gives, and far below what a real
// error (a wrong position, slot or row: relative differences of order 1) would give.
// Two tokens per row per step (a token and its draft, MTP speculative decoding; index.tokens = 2),
// DeepSeek-V3: the ragged case's targets fed two tokens a step (a target with an odd feed ends with
// a one-token step), on the contiguous cache (one decode_attention per query) and on a paged cache
// of 3-token blocks scattered over the pool (one paged_decode_attention for both queries). Every
// logits row equals the uncached forward's.
namespace {

// A RaggedCase prefilled into a new DeepSeek-V3 cache (with_mtp: with the MTP module's layer):
// contiguous, or paged in 3-token blocks, slot s holding blocks s, s + slots, s + 2·slots, ...
// (interleaved over the pool).
struct PrefilledCase {
  nn::DeepseekV3DecodeCache<double> cache;
  std::vector<std::int64_t> lengths;  // per prompt
  std::vector<std::int64_t> slots;    // per target
  nn::DecodeOutput<double> first;     // per target: its last prompt token's logits and hidden state
};

PrefilledCase prefill_case(const nn::DeepseekV3ForCausalLM<double>& m, const RaggedCase& c, bool paged,
                           bool with_mtp) {
  PrefilledCase out;
  std::int64_t S = 0, longest_feed = 0;
  for (const auto& p : c.prompts) {
    out.lengths.push_back(static_cast<std::int64_t>(p.size()));
    S = std::max(S, out.lengths.back());
  }
  for (const Target& t : c.targets) longest_feed = std::max(longest_feed, static_cast<std::int64_t>(t.feed.size()));
  const std::int64_t capacity = S + longest_feed, block_tokens = 3;
  const std::int64_t max_blocks = (capacity + block_tokens - 1) / block_tokens;
  out.cache = m.make_decode_cache(paged ? infer::CacheLayout::paged(c.slots, capacity, block_tokens, c.slots * max_blocks)
                                        : infer::CacheLayout::contiguous(c.slots, capacity),
                                  with_mtp);
  if (paged) {
    std::vector<std::int64_t> table;
    for (std::int64_t s = 0; s < c.slots; ++s)
      for (std::int64_t b = 0; b < max_blocks; ++b) table.push_back(s + b * c.slots);
    out.cache.kv.set_block_table(table);
  }
  const auto B = static_cast<std::int64_t>(c.prompts.size());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(B * S), 0), rows;
  for (std::int64_t b = 0; b < B; ++b) std::copy(c.prompts[b].begin(), c.prompts[b].end(), ids.begin() + b * S);
  for (const Target& t : c.targets) {
    out.slots.push_back(t.slot);
    rows.push_back(t.prompt);
  }
  const auto index = infer::PrefillIndex::make(out.lengths, S, out.slots, rows, c.slots, Device::cpu());
  out.first = m.prefill_with_hidden(Tensor<std::int64_t>::from_vector(ids, {B, S}), index, out.cache);
  return out;
}

// Feeds every target's tokens two a row while it has two left, its last one alone when the count
// is odd: step(tokens, rows, fed) per step, with the targets it feeds and how many each had fed.
template <class Step>
void feed_in_pairs(const RaggedCase& c, const Step& step) {
  std::vector<std::int64_t> fed(c.targets.size(), 0);
  for (bool any = true; any;) {
    any = false;
    for (const std::int64_t tokens : {2, 1}) {  // the rows with two tokens left, then those with one
      std::vector<std::size_t> rows;
      for (std::size_t r = 0; r < c.targets.size(); ++r) {
        const auto left = static_cast<std::int64_t>(c.targets[r].feed.size()) - fed[r];
        if (left >= tokens && (tokens == 2 || left == 1)) rows.push_back(r);
      }
      if (rows.empty()) continue;
      any = true;
      step(tokens, rows, fed);
      for (const std::size_t r : rows) fed[r] += tokens;
    }
  }
}

// A step's ids: [n] for one token a row, [n, tokens] else.
Tensor<std::int64_t> step_ids(const std::vector<std::int64_t>& ids, std::int64_t n, std::int64_t tokens) {
  return tokens == 1 ? tensor(ids) : Tensor<std::int64_t>::from_vector(ids, {n, tokens});
}

}  // namespace

TEST(CachedDecode, DeepseekTwoTokenStepsEqualUncachedForward) {
  auto m = make_deepseek<double>(31);
  const RaggedCase c = ragged_case(m->vocab_size());
  const std::vector<double> want = uncached_logits(*m, c.prompts, c.targets);
  const auto V = static_cast<std::size_t>(m->vocab_size());
  for (const bool paged : {false, true}) {
    SCOPED_TRACE(paged ? "paged" : "contiguous");
    NoGradGuard no_grad;
    PrefilledCase pc = prefill_case(*m, c, paged, false);
    std::vector<std::vector<double>> per_target(c.targets.size());
    const std::vector<double> first = pc.first.logits.to_vector();
    for (std::size_t r = 0; r < c.targets.size(); ++r) {
      const auto row = row_of(first, r, V);
      per_target[r].insert(per_target[r].end(), row.begin(), row.end());
    }
    feed_in_pairs(c, [&](std::int64_t tokens, const std::vector<std::size_t>& rows, const std::vector<std::int64_t>& fed) {
      std::vector<std::int64_t> ids, slots, positions;
      for (const std::size_t r : rows) {
        for (std::int64_t t = 0; t < tokens; ++t) ids.push_back(c.targets[r].feed[fed[r] + t]);
        slots.push_back(c.targets[r].slot);
        positions.push_back(pc.lengths[static_cast<std::size_t>(c.targets[r].prompt)] + fed[r]);
      }
      const auto n = static_cast<std::int64_t>(rows.size());
      const std::vector<double> logits =
          m->decode(step_ids(ids, n, tokens), infer::DecodeIndex::at(tensor(slots), tensor(positions), tokens), pc.cache)
              .to_vector();
      ASSERT_EQ(logits.size(), static_cast<std::size_t>(n * tokens) * V);
      for (std::size_t i = 0; i < rows.size(); ++i)
        for (std::int64_t t = 0; t < tokens; ++t) {
          const auto row = row_of(logits, i * static_cast<std::size_t>(tokens) + static_cast<std::size_t>(t), V);
          per_target[rows[i]].insert(per_target[rows[i]].end(), row.begin(), row.end());
        }
    });
    std::vector<double> got;
    for (const auto& t : per_target) got.insert(got.end(), t.begin(), t.end());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(relative_error(got, want), 1e-10);
  }
  // Llama decodes one token a row.
  auto llama = make_llama<double>(32);
  auto lc = llama->make_decode_cache(2, 8);
  EXPECT_KILN_ERROR(llama->decode(Tensor<std::int64_t>::from_vector({1, 2}, {1, 2}),
                                  infer::DecodeIndex::at(tensor<std::int64_t>({0}), tensor<std::int64_t>({0}), 2), lc),
                    "LlamaForCausalLM::decode", "one token each");
  EXPECT_KILN_ERROR(infer::DecodeIndex::at(tensor<std::int64_t>({0}), tensor<std::int64_t>({0}), 3), "DecodeIndex",
                    "1 or 2 tokens");
}

// MTP module 1 as a drafter (speculative decoding): a cache made with_mtp, the prefill (which
// fills the module's layer too), the first mtp_decode at each prompt's last position, then decode
// steps of two and one tokens, each followed by mtp_decode at the same positions over the tokens
// one further, give the module's logits of the training path (multi_token_prediction_loss: h^0 from
// the main stack, the embeddings one position ahead, positions 0..) at every position, on the
// contiguous cache and on 3-token blocks. Feeding the MTP module the tokens at the positions
// themselves (not one ahead) fails it.
TEST(CachedDecode, DeepseekMTPDecodeEqualsTheTrainingPath) {
  auto m = make_deepseek<double>(33);
  const RaggedCase c = ragged_case(m->vocab_size());
  const auto V = static_cast<std::size_t>(m->vocab_size());
  const std::int64_t hidden = m->model.config.hidden_size;
  auto& mtp = *m->model.mtp_layers.front();
  // The reference: per target, the MTP logits at positions L − 1 .. N − 2 of prompt + feed.
  std::vector<double> want;
  for (const Target& t : c.targets) {
    NoGradGuard no_grad;
    std::vector<std::int64_t> seq = c.prompts[static_cast<std::size_t>(t.prompt)];
    const auto L = static_cast<std::int64_t>(seq.size());
    seq.insert(seq.end(), t.feed.begin(), t.feed.end());
    const auto N = static_cast<std::int64_t>(seq.size());
    const auto ids = Tensor<std::int64_t>::from_vector(seq, {1, N});
    const Tensor<double> h0 = m->model.forward_full(ids, nn::positions_from(0, N)).hidden;
    const Tensor<double> h1 =
        mtp.forward_mtp(narrow(h0, 1, 0, N - 1), m->model.embed_tokens(contiguous(narrow(ids, 1, 1, N - 1)))).hidden;
    const std::vector<double> logits = m->head(mtp.shared_head.norm(h1)).to_vector();
    want.insert(want.end(), logits.begin() + (L - 1) * static_cast<std::int64_t>(V), logits.end());
  }
  for (const bool paged : {false, true}) {
    for (const bool one_ahead : {true, false}) {
      SCOPED_TRACE(::testing::Message() << (paged ? "paged" : "contiguous") << (one_ahead ? "" : ", tokens not ahead"));
      NoGradGuard no_grad;
      PrefilledCase pc = prefill_case(*m, c, paged, true);
      EXPECT_EQ(pc.cache.kv.num_layers(), 4);  // 3 main layers and the MTP module's
      // The token the MTP module takes at a target's position L + k (k = -1: the last prompt token).
      const auto token_for = [&](const Target& t, std::int64_t k) {
        const std::int64_t i = one_ahead ? k + 1 : k;
        if (i < 0) return c.prompts[static_cast<std::size_t>(t.prompt)].back();
        return i < static_cast<std::int64_t>(t.feed.size()) ? t.feed[static_cast<std::size_t>(i)] : 0;  // 0: no reference
      };
      const auto n_all = static_cast<std::int64_t>(c.targets.size());
      std::vector<std::int64_t> first_positions, first_ids;
      for (const Target& t : c.targets) {
        first_positions.push_back(pc.lengths[static_cast<std::size_t>(t.prompt)] - 1);
        first_ids.push_back(token_for(t, -1));
      }
      std::vector<std::vector<double>> per_target(c.targets.size());
      const std::vector<double> first =
          m->mtp_decode(reshape(pc.first.hidden, {n_all, 1, hidden}), tensor(first_ids),
                        infer::DecodeIndex::at(tensor(pc.slots), tensor(first_positions)), pc.cache)
              .to_vector();
      for (std::size_t r = 0; r < c.targets.size(); ++r) {
        const auto row = row_of(first, r, V);
        per_target[r].insert(per_target[r].end(), row.begin(), row.end());
      }
      feed_in_pairs(c, [&](std::int64_t tokens, const std::vector<std::size_t>& rows,
                           const std::vector<std::int64_t>& fed) {
        std::vector<std::int64_t> ids, mtp_ids, slots, positions;
        for (const std::size_t r : rows) {
          for (std::int64_t k = 0; k < tokens; ++k) {
            ids.push_back(c.targets[r].feed[static_cast<std::size_t>(fed[r] + k)]);
            mtp_ids.push_back(token_for(c.targets[r], fed[r] + k));
          }
          slots.push_back(c.targets[r].slot);
          positions.push_back(pc.lengths[static_cast<std::size_t>(c.targets[r].prompt)] + fed[r]);
        }
        const auto n = static_cast<std::int64_t>(rows.size());
        const auto index = infer::DecodeIndex::at(tensor(slots), tensor(positions), tokens);
        const auto step = m->decode_with_hidden(step_ids(ids, n, tokens), index, pc.cache);
        EXPECT_EQ(step.hidden.shape(), (Shape{n, tokens, hidden}));
        const std::vector<double> drafted =
            m->mtp_decode(step.hidden, Tensor<std::int64_t>::from_vector(mtp_ids, {n, tokens}), index, pc.cache)
                .to_vector();
        ASSERT_EQ(drafted.size(), static_cast<std::size_t>(n * tokens) * V);
        for (std::size_t i = 0; i < rows.size(); ++i)
          for (std::int64_t k = 0; k < tokens; ++k) {
            if (fed[rows[i]] + k + 1 >= static_cast<std::int64_t>(c.targets[rows[i]].feed.size())) continue;  // last
            const auto row = row_of(drafted, i * static_cast<std::size_t>(tokens) + static_cast<std::size_t>(k), V);
            per_target[rows[i]].insert(per_target[rows[i]].end(), row.begin(), row.end());
          }
      });
      std::vector<double> got;
      for (const auto& t : per_target) got.insert(got.end(), t.begin(), t.end());
      ASSERT_EQ(got.size(), want.size());
      if (one_ahead) EXPECT_LT(relative_error(got, want), 1e-10);
      else EXPECT_GT(relative_error(got, want), 1e-3);
    }
  }
  // Without the MTP module's layer in the cache, or without MTP modules.
  NoGradGuard no_grad;
  auto plain = m->make_decode_cache(2, 8);
  const auto at = infer::DecodeIndex::at(tensor<std::int64_t>({0}), tensor<std::int64_t>({0}));
  EXPECT_KILN_ERROR(m->mtp_decode(zeros<double>({1, 1, hidden}), tensor<std::int64_t>({1}), at, plain),
                    "DeepseekV3ForCausalLM::mtp_decode", "no layer for the MTP module");
  nn::DeepseekV3Config none = infer_deepseek_config();
  none.num_nextn_predict_layers = 0;
  Generator gen{34, 0};
  nn::DeepseekV3ForCausalLM<double> without(none, gen);
  EXPECT_KILN_ERROR(without.make_decode_cache(infer::CacheLayout::contiguous(2, 8), true),
                    "DeepseekV3ForCausalLM::make_decode_cache", "num_nextn_predict_layers");
}

TEST(CachedDecode, FloatFollowsTheDoubleReference) {
  const RaggedCase c = ragged_case(40);
  {
    auto md = make_llama<double>(9);
    auto mf = make_llama<float>(9);
    const std::vector<double> reference = uncached_logits(*md, c.prompts, c.targets);
    EXPECT_LT(relative_error(cached_logits(*mf, c.prompts, c.targets, c.slots), reference), 1e-5);
    EXPECT_LT(relative_error(uncached_logits(*mf, c.prompts, c.targets), reference), 1e-5);
  }
  {
    auto md = make_deepseek<double>(10);
    auto mf = make_deepseek<float>(10);
    const std::vector<double> reference = uncached_logits(*md, c.prompts, c.targets);
    EXPECT_LT(relative_error(cached_logits(*mf, c.prompts, c.targets, c.slots), reference), 1e-5);
    EXPECT_LT(relative_error(uncached_logits(*mf, c.prompts, c.targets), reference), 1e-5);
  }
}

// ---- dense MoE dispatch ------------------------------------------------------------------------

namespace {

nn::DeepseekV3Config moe_config(std::int64_t shared, std::int64_t groups, std::int64_t topk_group, std::int64_t k,
                                bool norm) {
  nn::DeepseekV3Config c;
  c.hidden_size = 7;
  c.moe_intermediate_size = 5;
  c.n_routed_experts = 6;
  c.n_shared_experts = shared;
  c.num_experts_per_tok = k;
  c.n_group = groups;
  c.topk_group = topk_group;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = 2.5;
  c.initializer_range = 0.5;
  return c;
}

}  // namespace

TEST(DenseMoE, EqualsSparseDispatch) {
  struct Case {
    std::int64_t shared, groups, topk_group, k;
    bool norm;
  };
  // Group-limited routing; two shared experts (split into two units) and no group limit; no shared
  // expert, K = 1 (gates not normalised); K = 3 unnormalised.
  for (const Case& cs : {Case{1, 3, 2, 2, true}, Case{2, 1, 1, 2, true}, Case{0, 2, 2, 1, true},
                         Case{1, 2, 1, 3, false}}) {
    const nn::DeepseekV3Config c = moe_config(cs.shared, cs.groups, cs.topk_group, cs.k, cs.norm);
    Generator gen{11, 0};
    nn::MoE<double> moe(c, gen);
    randomize(moe, 12, 0.5);  // the routing bias too
    const Tensor<double> x = randn<double>({3, 4, c.hidden_size});
    NoGradGuard no_grad;
    const Tensor<double> sparse = moe.forward(x);
    const nn::ExpertLoad load = moe.last_load();
    const nn::DenseExperts<double> w = moe.stack_experts();
    EXPECT_EQ(w.w_in.shape(), (Shape{2 * (6 + cs.shared) * 5, c.hidden_size}));
    EXPECT_EQ(w.w_out.shape(), (Shape{c.hidden_size, (6 + cs.shared) * 5}));
    const Tensor<double> dense = moe.forward_dense(x, w);
    EXPECT_EQ(dense.shape(), x.shape());
    EXPECT_LT(relative_error(dense, sparse), 1e-13) << "shared " << cs.shared << ", k " << cs.k;
    EXPECT_GT(relative_error(dense, mul(sparse, 1.0 + 1e-9)), 1e-12);
    EXPECT_EQ(moe.last_load().counts, load.counts);  // dense dispatch leaves the statistics alone

    // The dense gates are the routing's gates at the chosen experts and exact zeros elsewhere.
    const Tensor<double> flat = reshape(x, {12, c.hidden_size});
    const nn::Routing<double> r = moe.gate(flat);
    const auto chosen = r.experts.to_vector();
    const auto gates = r.gates.to_vector();
    const std::size_t units = 6 + static_cast<std::size_t>(cs.shared);
    const auto dense_gates = moe.gate.dense_gates(flat, static_cast<std::int64_t>(units)).to_vector();
    std::vector<double> expected(12 * units, 0.0);
    for (std::size_t n = 0; n < 12; ++n) {
      for (std::size_t j = 0; j < static_cast<std::size_t>(cs.k); ++j)
        expected[n * units + static_cast<std::size_t>(chosen[n * cs.k + j])] = gates[n * cs.k + j];
      for (std::size_t u = 6; u < units; ++u) expected[n * units + u] = 1.0;  // shared units: gate 1
    }
    ASSERT_EQ(dense_gates.size(), expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
      if (expected[i] == 0.0) EXPECT_EQ(dense_gates[i], 0.0) << i;
      else EXPECT_NEAR(dense_gates[i], expected[i], 1e-15 * std::abs(expected[i])) << i;
    }
  }
}

// Sparse dispatch for generation (MoE::forward_sparse) is forward()'s function with no statistics:
// bit for bit the same ops as the composed path on the CPU, and as the fused path when that is
// chosen (its reference loops); the automatic choice between dense and sparse follows E >= 8 K.
TEST(SparseGenerationMoE, IsTheForwardWithoutStatistics) {
  for (const nn::MoEDispatch path : {nn::MoEDispatch::composed, nn::MoEDispatch::fused}) {
    const nn::MoEDispatchScope scope(path);
    const nn::DeepseekV3Config c = moe_config(1, 3, 2, 2, true);
    Generator gen{14, 0};
    nn::MoE<double> moe(c, gen);
    randomize(moe, 15, 0.5);
    const Tensor<double> x = randn<double>({3, 5, c.hidden_size});
    NoGradGuard no_grad;
    const Tensor<double> forward = moe.forward(x);
    const nn::ExpertLoad load = moe.last_load();
    const Tensor<double> sparse = moe.forward_sparse(randn<double>({2, 3, c.hidden_size}));  // other tokens
    EXPECT_EQ(moe.last_load().counts, load.counts) << "sparse generation leaves the statistics alone";
    EXPECT_EQ(moe.forward_sparse(x).to_vector(), forward.to_vector());
    EXPECT_EQ(sparse.shape(), (Shape{2, 3, c.hidden_size}));
    EXPECT_LT(relative_error(moe.forward_dense(x, moe.stack_experts()), forward), 1e-13);
  }
  Generator gen{16, 0};
  nn::MoE<double> few(moe_config(1, 3, 2, 2, true), gen);  // 6 experts, top-2: dense
  EXPECT_EQ(few.generation_dispatch(nn::GenerationDispatch::automatic, Device::cpu()), nn::GenerationDispatch::dense);
  EXPECT_EQ(few.generation_dispatch(nn::GenerationDispatch::sparse, Device::cpu()), nn::GenerationDispatch::sparse);
  nn::DeepseekV3Config many = moe_config(1, 2, 2, 2, true);
  many.n_routed_experts = 16;  // 8 K
  nn::MoE<double> wide(many, gen);
  EXPECT_EQ(wide.generation_dispatch(nn::GenerationDispatch::automatic, Device::cpu()), nn::GenerationDispatch::sparse);
  EXPECT_EQ(wide.generation_dispatch(nn::GenerationDispatch::dense, Device::cpu()), nn::GenerationDispatch::dense);
  EXPECT_KILN_ERROR((void)wide.forward_sparse(randn<double>({2, 6})), "MoE::forward_sparse", "[2, 6]");
}

TEST(DenseMoE, StackedExpertsMustFitTheLayer) {
  Generator gen{13, 0};
  nn::MoE<double> a(moe_config(1, 3, 2, 2, true), gen), b(moe_config(2, 3, 2, 2, true), gen);
  EXPECT_KILN_ERROR(a.forward_dense(randn<double>({2, 7}), b.stack_experts()), "MoE::forward_dense",
                    "stack_experts");
  EXPECT_KILN_ERROR(a.forward_dense(randn<double>({2, 6}), a.stack_experts()), "MoE::forward_dense", "[2, 6]");
}

// ---- errors ------------------------------------------------------------------------------------

TEST(CachedDecode, Errors) {
  const Device cpu = Device::cpu();
  using infer::PrefillIndex;
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 0}, 3, {0, 1}, {}, 2, cpu), "PrefillIndex", "prompt 1", "length 0");
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 4}, 3, {0, 1}, {}, 2, cpu), "PrefillIndex", "length 4");
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 2}, 3, {0, 0}, {}, 2, cpu), "PrefillIndex", "slot 0", "two prompts");
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 2}, 3, {0, 2}, {}, 2, cpu), "PrefillIndex", "slot 2", "2 slots");
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 2}, 3, {0, 1}, {0, 2}, 2, cpu), "PrefillIndex", "row 2");
  EXPECT_KILN_ERROR(PrefillIndex::make({3, 2}, 3, {0, 1, 2}, {}, 3, cpu), "PrefillIndex", "rows (2)");
  EXPECT_KILN_ERROR(infer::KVCache<float>::latent(2, 0, 8, 4, 2, cpu), "KVCache::latent", "slots 0");
  EXPECT_KILN_ERROR(infer::KVCache<float>::latent(2, infer::CacheLayout::paged(2, 8, 4, 0), 4, 2, cpu),
                    "KVCache::latent", "num_blocks 0");
  const auto paged = infer::KVCache<float>::separate(1, infer::CacheLayout::paged(2, 9, 4, 5), 1, 2, 2, cpu);
  EXPECT_EQ(paged.layer(0).k.shape(), (Shape{5, 4, 1, 2}));   // [blocks, block tokens, kv heads, dim]
  EXPECT_EQ(paged.layer(0).table.shape(), (Shape{2, 3}));     // [sequences, ceil(9 / 4)]
  EXPECT_EQ(paged.layer(0).table.to_vector(), std::vector<std::int64_t>(6, -1));
  EXPECT_KILN_ERROR(paged.set_block_table({0, 1, 2}), "KVCache::set_block_table", "needs 6 entries", "got 3");
  EXPECT_KILN_ERROR(paged.set_block_table({0, 1, 2, 3, 4, 5}), "KVCache::set_block_table", "entry 5");
  paged.set_block_table({4, -1, -1, 0, 1, -1});
  EXPECT_EQ(paged.layer(0).table.to_vector(), (std::vector<std::int64_t>{4, -1, -1, 0, 1, -1}));
  const auto slots = infer::KVCache<float>::separate(1, 2, 8, 1, 2, 2, cpu);
  EXPECT_KILN_ERROR(slots.set_block_table({}), "KVCache::set_block_table", "contiguous");
  EXPECT_KILN_ERROR(slots.copy_block({0, 1, 2}), "KVCache::copy_block", "contiguous");
  EXPECT_KILN_ERROR(infer::DecodeIndex::at(tensor<std::int64_t>({0, 1}), tensor<std::int64_t>({0})), "DecodeIndex",
                    "[2]", "[1]");

  auto m = make_deepseek<double>(14);
  nn::DeepseekV3Config shallow = infer_deepseek_config();
  shallow.num_hidden_layers = 2;
  Generator gen{15, 0};
  nn::DeepseekV3ForCausalLM<double> other(shallow, gen);
  NoGradGuard no_grad;
  auto cache = other.make_decode_cache(2, 8);
  const auto index = infer::DecodeIndex::at(tensor<std::int64_t>({0, 1}), tensor<std::int64_t>({0, 0}));
  EXPECT_KILN_ERROR(m->decode(tensor<std::int64_t>({1, 2}), index, cache), "DeepseekV3ForCausalLM::decode",
                    "2 layers", "has 3");
  auto own = m->make_decode_cache(2, 8);
  // The cache's snapshot of each layer's stacked attention inputs [q_a | kv_a]; one of the wrong
  // shape (another layer's) is refused.
  ASSERT_EQ(own.attention_inputs.size(), 3u);
  const nn::DeepseekV3Config dc = infer_deepseek_config();
  EXPECT_EQ(own.attention_inputs[0].shape(),
            (Shape{*dc.q_lora_rank + dc.kv_lora_rank + dc.qk_rope_head_dim, dc.hidden_size}));
  auto wrong = m->make_decode_cache(2, 8);
  wrong.attention_inputs[1] = narrow(wrong.attention_inputs[1], 0, 1, wrong.attention_inputs[1].size(0) - 1);
  EXPECT_KILN_ERROR(m->decode(tensor<std::int64_t>({1, 2}), index, wrong), "MLA", "stack_inputs");
  // On the CPU a position past the capacity is caught by the cache write.
  const auto late = infer::DecodeIndex::at(tensor<std::int64_t>({0, 1}), tensor<std::int64_t>({8, 0}));
  EXPECT_KILN_ERROR(m->decode(tensor<std::int64_t>({1, 2}), late, own), "cache_write", "capacity 8");
}
