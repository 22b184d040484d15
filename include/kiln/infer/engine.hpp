// The batched generation engine: many prompts, optionally G samples each (a GRPO group), decoded
// together over a preallocated KV cache, with each model's cached path (nn/llama.hpp: K/V;
// nn/deepseek_v3.hpp: the MLA latent through the absorbed path).
//
//   infer::SamplingParams p;
//   p.temperature = 0.8; p.top_p = 0.95; p.max_new_tokens = 256;
//   p.eos_token_ids = {eos}; p.stop_strings = {"</answer>"}; p.seed = 7;
//   infer::GenerateOptions o;
//   o.samples_per_prompt = 8; o.tokenizer = &tok;
//   std::vector<infer::Completion> out = infer::generate(model, prompts, p, o);
//   // out[prompt·8 + sample]: .tokens, .finish, .text
//
// How a run goes. Samples are ADMITTED in output order as the cache allows: all at once by
// default; with options.max_batch, at most that many decode together, and a sample that finishes
// hands its slot (and its cache blocks) to the next one waiting (continuous batching: no wave
// waits for its slowest sample). Each admission:
//  1. Prefill. The admitted samples' distinct prompts, right-padded to the longest ([B, S], pad
//     id 0), run once through the model's training attention path (exact for every valid
//     position under the causal mask); every layer's keys/latents go straight to the cache (see
//     the paged cache below). The logits of each prompt's last token give each sample its first
//     token; the samples join the active rows.
// Then, while samples are active:
//  2. Decode steps. The active samples form the rows of fixed-shape device tensors: ids [n] (the
//     newest token of each), positions [n] (its position), slots [n], sample_ids [n]. A step is
//        logits = model.decode(ids, {slots, positions, lengths = positions + 1}, cache)
//        ids    = sample_tokens(logits, options, sample_ids, lengths)   // drawn at position lengths
//        positions = lengths
//     all on the device, then ONE host read: the n sampled tokens, which the host appends to each
//     sample's completion (CompletionBuilder: eos, stop strings on the decoded text, length).
//  3. Finished samples leave the batch (and waiting samples are admitted): when the set of active
//     samples changes, the host builds the rows of those left (it knows every value: the tokens
//     it just read, positions, slots and ids) and uploads them as one packed tensor — only on
//     steps where the set changed, never per token. A finished sample costs nothing afterwards.
// options.fp8_cache keeps a DeepSeek-V3 model's latent cache in FP8 (infer/kv_cache.hpp,
// ops/latent_fp8_cache.hpp): prefill attends over the exact latents and writes them quantized;
// every decode step reads the quantized ones.
// The cache is paged by default (options.cache_block_tokens = 64; 0: one contiguous slot of
// capacity = longest prompt + max_new_tokens rows per decoding sample, infer/kv_cache.hpp). Then
// a pool of blocks and a BlockAllocator (infer/block_allocator.hpp):
//   - prefill writes each distinct prompt of an admission ONCE, into its first sample's blocks;
//     the other samples of its group fork that sequence (they share its blocks, no copy); the
//     first decode step of each sample copies only the prompt's partly filled last block, where
//     its own token goes;
//   - a sample takes a new block when its newest token reaches the end of its blocks (every
//     block_tokens steps), and gives its blocks back when it finishes; the block table is
//     uploaded only when a list changed;
//   - admission keeps a promise per sample (the blocks it may still take: up to max_new_tokens)
//     and admits a sample only when the free blocks cover every promise and its own, so a step
//     never runs out. With G samples of a P-token prompt a group needs about P + G·max_new rows
//     instead of G·(P + max_new). The pool (options.cache_blocks, a memory budget; by default
//     what max_batch samples can need) bounds how many decode at once as much as max_batch does.
// Draws are keyed by (seed, sample id, position): sample id = options.sample_id_base +
// prompt·G + sample, position = the drawn token's position in its sequence. The same seed gives
// the same samples, whatever the batch (its size, its other prompts, admissions, padding) — up to
// the rounding differences a different batch shape can make in the logits.
//
// Host synchronisation per decode step (GPU): the read of the sampled tokens; on steps where the
// active set changes, the upload of the new rows. The decode step itself is a function of
// fixed-shape device tensors (ids, the DecodeIndex, the cache) that reads nothing back. The step
// runs under a DeviceReadbackGuard (core/device_readback.hpp): its ids are the sampler's own
// draws, so embedding skips its id range check's read-back.
//
// CUDA graphs (options.cuda_graphs, on by default; GPU only). A decode step of a small model is a
// few hundred kernels of a few microseconds each: launched one by one, the host's launch cost is
// most of the step. So the step — decode + draw — is captured once per row count into a
// DeviceGraph (core/device_graph.hpp) and replayed: one launch per step. The row count is padded
// to a power of two (as options.pad_to_bucket; padding rows decode a spare slot and are ignored),
// so at most log2(batch) + 1 graphs cover a run as its samples finish (captured once per run).
// A capture costs a few steps (the step run eagerly, recorded, instantiated), so when the rows
// shrink into a smaller bucket the steps go on replaying the smallest larger graph captured
// (more padding rows, nearly free in a step bound by reading the weights) until that bucket has
// been wanted options.graph_patience steps in a row: a tail of samples finishing over a few steps
// (speculative decoding's, whose samples advance by 1 or 2 tokens) captures nothing. A graph reads its rows
// ([4, rows]: newest ids, positions, slots, sample ids) from a device tensor of its own, which the
// host refills before every replay with the values it knows (the tokens it just read, the
// positions one further): one small upload per step instead of device-side bookkeeping, and the
// step stays a pure function of that tensor and the cache, so the capture's warm-up run and its
// first replay compute the same step (same cache entries, same draws). Per step on the GPU: one
// upload, one graph launch, one read of the drawn tokens. Graphs are not used with on_logits (it
// reads the logits back every step).
//
// Speculative decoding (options.speculative; DeepSeek-V3 with MTP modules; infer/speculative.hpp
// has the step). MTP module 1 drafts the token after each sample's newest, and a step feeds both
// (model.decode with two tokens a row): it draws the token after the newest, and the one after the
// draft, each with its own key (sample id, position) — plain decoding's draws, the second exactly
// when the draft equals the first (accepted). So a sample gets 1 or 2 tokens a step, the tokens
// plain decoding gives with the same seed. The same step runs the MTP module on the main model's
// final hidden states and the tokens just drawn, for the next draft, drawn with the noise key of
// the position it drafts: when the module's distribution is close to the main model's the two
// draws agree (that, and how close the distributions are, is what acceptance depends on). What
// changes in the run:
//   - the cache has one more layer, the MTP block's (make_decode_cache(layout, true)); the prefill
//     fills it for the prompts, and each admitted sample's first draft (read with its first token)
//     writes its row at the last prompt position: paged, that block becomes the sample's own
//     (a copy when shared), so promises count from it;
//   - each step writes two rows per sample (its token's and its draft's; a rejected draft's row is
//     rewritten by the next step before anything reads it), so a sample may take a block for
//     either;
//   - positions advance by 1 or 2, which the host learns from the step's one read (both tokens
//     and both next drafts per row): it uploads the rows (11 values each: speculative.hpp) before
//     every step, eager or graphed (graphs as above, one per padded row count);
//   - GenerationProgress counts the drafts checked and accepted (acceptance_rate()).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/core/device_graph.hpp"
#include "kiln/core/device_readback.hpp"
#include "kiln/data/tokenizer.hpp"
#include "kiln/infer/block_allocator.hpp"
#include "kiln/infer/completion.hpp"
#include "kiln/infer/kv_cache.hpp"
#include "kiln/infer/sampling_params.hpp"
#include "kiln/infer/speculative.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/nn/moe.hpp"  // nn::GenerationDispatch
#include "kiln/ops/copy.hpp"
#include "kiln/ops/sampling.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::infer {

// Where a generation stands, after each step.
struct GenerationProgress {
  std::int64_t step = 0;       // decode steps run (0: after the prefill's first draw)
  std::int64_t active = 0;     // samples still generating in the current wave
  std::int64_t finished = 0;   // samples finished, so far
  std::int64_t total = 0;      // samples requested
  std::int64_t tokens = 0;     // tokens generated so far
  // Speculative decoding (options.speculative): drafts checked so far (one per sample and decode
  // step) and those accepted (equal to the token drawn at their position: their step gave the
  // sample two tokens, unless it ended on the first).
  std::int64_t drafts = 0;
  std::int64_t accepted_drafts = 0;
  std::int64_t graphs_captured = 0;  // CUDA graphs captured so far (one per padded row count used)

  double acceptance_rate() const {
    return drafts > 0 ? static_cast<double>(accepted_drafts) / static_cast<double>(drafts) : 0.0;
  }
};

// What options.on_logits sees at every draw (a testing and inspection hook: the logits are copied
// to the host, so setting it costs a read per step). Speculative, after each step: the rows of
// the tokens it emitted (one or two a sample), not those of rejected drafts' positions.
struct StepLogits {
  std::vector<std::int64_t> samples;    // per logits row: the index of its sample in the output (−1: padding)
  std::vector<std::int64_t> positions;  // per row: the position of the token drawn from it
  Tensor<double> logits;                // [rows, vocab] on the CPU
};

struct GenerateOptions {
  std::int64_t samples_per_prompt = 1;          // G: samples per prompt (a GRPO group)
  std::uint64_t sample_id_base = 0;             // sample ids are base + prompt·G + sample
  const data::Tokenizer* tokenizer = nullptr;   // text, stop strings; draws then only ids it knows
  std::int64_t max_batch = 0;                   // samples decoded at once (0: all); the rest wait
                                                // for the next wave
  bool pad_to_bucket = false;                   // pad the active rows to a power of two (see above)
  bool cuda_graphs = true;                      // GPU: replay each decode step as a CUDA graph
                                                // (implies pad_to_bucket; not with on_logits)
  std::int64_t graph_patience = 8;              // CUDA graphs: steps a smaller bucket is wanted
                                                // in a row before its graph is captured (until
                                                // then a larger one replays with padding rows);
                                                // 0: capture each bucket when first wanted
  std::int64_t cache_block_tokens = 64;         // the paged KV cache's block size (see above);
                                                // 0: one contiguous slot per sample
  std::int64_t cache_blocks = 0;                // paged: the pool's size in blocks, a memory
                                                // budget (samples wait for blocks); 0: enough
                                                // for max_batch samples at their longest
  bool speculative = false;                     // MTP speculative decoding (a DeepSeek-V3 model
                                                // with MTP modules; see above): 1 or 2 tokens a
                                                // step, the same tokens as without it
  bool fp8_cache = false;                       // MLA models (DeepSeek-V3): keep the latent cache in
                                                // FP8 (e4m3, 1x128 scales; the rope part in the
                                                // model's type): 43% fewer bytes a token; the
                                                // tokens drawn change by FP8's rounding
  nn::GenerationDispatch moe_dispatch =        // MoE models: every expert on every token over a
      nn::GenerationDispatch::automatic;        // stacked copy (dense), or the chosen experts only
                                                // (sparse); automatic: sparse from 8·top_k experts
                                                // (nn/moe.hpp, GenerationDispatch)
  bool speculative_accept_all = false;          // TESTING ONLY: accept every draft unchecked, which
                                                // changes the output (the tests show the check
                                                // is what keeps it equal to plain decoding)
  std::function<void(const GenerationProgress&)> on_progress;
  std::function<void(const StepLogits&)> on_logits;
};

namespace detail {
template <class T>
T element_of(const nn::Module<T>*);

inline std::int64_t bucket_size(std::int64_t n) {
  std::int64_t b = 1;
  while (b < n) b *= 2;
  return b;
}

// Models that can draft with an MTP module (nn::DeepseekV3ForCausalLM: mtp_modules, mtp_decode,
// decode_with_hidden, prefill_with_hidden, make_decode_cache(layout, with_mtp)).
template <class Model>
concept MTPDrafting = requires(const Model& m) {
  { m.mtp_modules() } -> std::convertible_to<std::int64_t>;
};
}  // namespace detail

// Model: nn::LlamaForCausalLM<T> or nn::DeepseekV3ForCausalLM<T> (anything with their
// make_decode_cache / prefill / decode / device / vocab_size / max_positions).
template <class Model>
class Engine {
 public:
  using T = decltype(detail::element_of(static_cast<const Model*>(nullptr)));

  explicit Engine(const Model& model) : model_(&model) {}

  // prompts: token ids, each non-empty, of any lengths. Returns prompts.size() · G completions,
  // completion prompt·G + sample of prompt `prompt`.
  std::vector<Completion> generate(const std::vector<std::vector<std::int64_t>>& prompts,
                                   const SamplingParams& params, const GenerateOptions& options = {}) const {
    const char* op = "generate";
    const Model& m = *model_;
    const std::int64_t V = m.vocab_size(), G = options.samples_per_prompt;
    check(G >= 1, op, "samples_per_prompt must be >= 1, got ", G);
    check(options.max_batch >= 0, op, "max_batch must be >= 0 (0: all samples at once), got ", options.max_batch);
    check(options.graph_patience >= 0, op, "graph_patience must be >= 0 (0: capture each bucket at once), got ",
          options.graph_patience);
    params.check(op, V, options.tokenizer != nullptr);
    if (options.speculative) {
      if constexpr (detail::MTPDrafting<Model>) {
        check(m.mtp_modules() > 0, op, "options.speculative drafts with the model's MTP module, and this DeepSeek-V3 "
              "model has none (num_nextn_predict_layers = 0)");
      } else {
        check(false, op, "options.speculative drafts with an MTP module: it needs a DeepSeek-V3 model with MTP "
              "modules (nn::DeepseekV3ForCausalLM), and this model type has none");
      }
    }
    if constexpr (!detail::MTPDrafting<Model>) {
      check(!options.fp8_cache, op, "options.fp8_cache is MLA's FP8 latent cache: it needs a DeepSeek-V3 model "
            "(nn::DeepseekV3ForCausalLM), and this model type caches full keys and values");
      check(options.moe_dispatch == nn::GenerationDispatch::automatic, op, "options.moe_dispatch ",
            nn::generation_dispatch_name(options.moe_dispatch), " is for MoE models (nn::DeepseekV3ForCausalLM), and "
            "this model type has none");
    }
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      const auto L = static_cast<std::int64_t>(prompts[p].size());
      check(L > 0, op, "prompt ", p, " is empty");
      check(L + params.max_new_tokens <= m.max_positions(), op, "prompt ", p, " of ", L, " tokens plus max_new_tokens ",
            params.max_new_tokens, " exceeds the model's ", m.max_positions(), " positions (max_position_embeddings)");
      for (const std::int64_t id : prompts[p])
        check(id >= 0 && id < V, op, "prompt ", p, " holds token id ", id, ", outside the vocabulary [0, ", V, ")");
    }

    NoGradGuard no_grad;
    const auto total = static_cast<std::int64_t>(prompts.size()) * G;
    std::vector<CompletionBuilder> samples;
    samples.reserve(static_cast<std::size_t>(total));
    for (std::int64_t j = 0; j < total; ++j) {
      Completion c;
      c.prompt = j / G;
      c.sample = j % G;
      c.sample_id = options.sample_id_base + static_cast<std::uint64_t>(j);
      samples.emplace_back(std::move(c), params, options.tokenizer);
    }
    Run run{prompts, params, options, samples, total};
    if (total > 0) run_all(run);

    std::vector<Completion> out;
    out.reserve(samples.size());
    for (auto& s : samples) out.push_back(s.take());
    return out;
  }

 private:
  struct Run {
    const std::vector<std::vector<std::int64_t>>& prompts;
    const SamplingParams& params;
    const GenerateOptions& options;
    std::vector<CompletionBuilder>& samples;
    std::int64_t total;
    std::int64_t finished = 0, tokens = 0, step = 0;
    std::int64_t drafts = 0, accepted_drafts = 0;  // speculative
    std::int64_t graphs_captured = 0;
    std::vector<std::int64_t> freed{};  // slots of samples finished since the scheduler last looked
  };

  // An active sample: its index in the output, its cache slot, and the position of its newest
  // token (the one it feeds next); speculative, also the draft for the position after it.
  struct Row {
    std::int64_t sample, slot, position;
    std::int64_t draft = -1;
  };

  // What a prefill gives each of its targets: the logits of its last prompt token [R, vocab] and,
  // speculative, that token's final hidden state [R, hidden] (the first draft's input).
  struct Prefilled {
    Tensor<T> logits, hidden;
  };

  // Who holds which part of the cache (see the file comment). Samples are admitted in output
  // order: [0, next) have been admitted. Paged, every admitted sample keeps a promise of the
  // blocks it may still take (`outstanding`: its worst case, less what it took), and the pool
  // never lends out a block promised to someone: free blocks >= the sum of the promises.
  struct Scheduler {
    std::int64_t rows = 0;          // samples decoded at once at most
    std::int64_t spare_slot = -1;   // the padding rows' slot (-1: none)
    std::set<std::int64_t> free_slots;
    std::int64_t next = 0;
    std::int64_t block_tokens = 0;  // 0: contiguous cache
    std::optional<BlockAllocator> blocks;
    std::vector<std::int64_t> outstanding;  // per slot
    std::int64_t outstanding_total = 0;
  };

  std::int64_t prompt_length(const Run& run, std::int64_t sample) const {
    return static_cast<std::int64_t>(run.prompts[static_cast<std::size_t>(sample / run.options.samples_per_prompt)].size());
  }

  static std::int64_t blocks_for(std::int64_t tokens, std::int64_t block_tokens) {
    return (tokens + block_tokens - 1) / block_tokens;
  }

  // Blocks a sample with an L-token prompt may take after its prefill: from the prompt's last,
  // partly filled block (its private copy) up to its last fed position (< L + max_new_tokens).
  // Speculative, from the block of position L − 1 (the MTP layer's row there is the sample's own:
  // own_last_prompt_blocks) up to its last draft's (< L + max_new_tokens as well).
  std::int64_t sample_blocks(const Run& run, std::int64_t L, std::int64_t block_tokens) const {
    const std::int64_t first = run.options.speculative ? L - 1 : L;
    return blocks_for(L + run.params.max_new_tokens, block_tokens) - first / block_tokens;
  }

  // Blocks an admission of samples [first, last) needs free (beyond the others' promises): while
  // its prefill runs every distinct prompt holds blocks for the batch's S padded positions; after
  // it, each prompt's blocks_for(L) (shared by its samples) plus every sample's promise.
  std::int64_t admission_blocks(const Run& run, std::int64_t first, std::int64_t last, std::int64_t block_tokens) const {
    const std::int64_t G = run.options.samples_per_prompt;
    std::int64_t prompts = 0, S = 0, decode = 0;
    for (std::int64_t j = first; j < last; ++j) {
      const std::int64_t L = prompt_length(run, j);
      if (j == first || j / G != (j - 1) / G) {
        ++prompts;
        S = std::max(S, L);
        decode += blocks_for(L, block_tokens);
      }
      decode += sample_blocks(run, L, block_tokens);
    }
    return std::max(prompts * blocks_for(S, block_tokens), decode);
  }

  // The whole generation: one cache for the run; samples admitted as slots (and, paged, blocks)
  // allow — all at once unless options.max_batch bounds the rows —, each admission prefilled and
  // given its first draw, then decode steps over the active samples until every one finished.
  void run_all(Run& run) const {
    const GenerateOptions& o = run.options;
    const bool graphs = use_graphs(run);
    Scheduler sched;
    sched.rows = o.max_batch > 0 ? std::min(o.max_batch, run.total) : run.total;
    const std::int64_t spare = o.pad_to_bucket || graphs ? 1 : 0;
    std::int64_t longest = 0;
    for (const auto& prompt : run.prompts) longest = std::max(longest, static_cast<std::int64_t>(prompt.size()));
    // Capacity: the longest prompt plus max_new_tokens (the last token drawn is never fed back,
    // so every fed position is < capacity).
    const std::int64_t sequences = sched.rows + spare, capacity = longest + run.params.max_new_tokens;
    for (std::int64_t s = 0; s < sched.rows; ++s) sched.free_slots.insert(s);
    if (spare > 0) sched.spare_slot = sched.rows;
    sched.block_tokens = o.cache_block_tokens;
    const std::int64_t bt = sched.block_tokens;

    CacheLayout layout = CacheLayout::contiguous(sequences, capacity);
    if (bt > 0) {
      // The pool: what the largest admission can need with nothing else in the cache (any rows
      // consecutive samples; more samples only need more), so every sample is admitted in time;
      // plus the padding rows' sequence, which holds blocks for the whole capacity (between
      // uploads of the rows, eager steps advance every row's position on the device —
      // DecodeIndex::next —, padding rows too).
      std::int64_t largest = 0;  // over windows of `rows` samples (a shorter one is inside one)
      for (std::int64_t j = 0; j + sched.rows <= run.total; ++j)
        largest = std::max(largest, admission_blocks(run, j, j + sched.rows, bt));
      const std::int64_t spare_blocks = spare * blocks_for(capacity, bt);
      std::int64_t pool = largest + spare_blocks;
      if (o.cache_blocks > 0) {
        for (std::int64_t j = 0; j < run.total; ++j)
          check(admission_blocks(run, j, j + 1, bt) + spare_blocks <= o.cache_blocks, "generate", "sample ", j,
                " (a prompt of ", prompt_length(run, j), " tokens plus max_new_tokens ", run.params.max_new_tokens,
                ") needs ", admission_blocks(run, j, j + 1, bt) + spare_blocks, " cache blocks of ", bt,
                " tokens, more than options.cache_blocks = ", o.cache_blocks);
        pool = o.cache_blocks;
      }
      layout = CacheLayout::paged(sequences, capacity, bt, pool);
    }
    auto cache = make_cache(run, layout);
    if (bt > 0) {
      sched.blocks.emplace(layout.num_blocks, bt, sequences, layout.max_blocks());
      sched.outstanding.assign(static_cast<std::size_t>(sequences), 0);
      if (spare > 0) sched.blocks->reserve(sched.spare_slot, layout.max_blocks() * bt);
    }

    std::vector<Row> active;
    DecodeState state;
    while (true) {
      recycle(run, sched);
      while (sched.next < run.total && admit(run, sched, cache, active)) {
        state.changed = true;
        recycle(run, sched);  // samples that finished on their first draw
      }
      if (active.empty()) {
        check(sched.next >= run.total, "generate", "internal: sample ", sched.next,
              " cannot be admitted into an empty cache");
        break;
      }
      if constexpr (detail::MTPDrafting<Model>) {
        if (o.speculative) {
          prepare_blocks(sched, cache, active, 2);
          step_speculative(run, sched, cache, active, state, graphs);
          continue;
        }
      }
      prepare_blocks(sched, cache, active, 1);
      if (graphs) {
        step_graphed(run, sched, cache, active, state);
      } else {
        step_eager(run, sched, cache, active, state);
      }
    }
  }

  // The model's decode cache; speculative, with the MTP module's layer.
  auto make_cache(const Run& run, const CacheLayout& layout) const {
    if constexpr (detail::MTPDrafting<Model>) {
      return model_->make_decode_cache(layout, run.options.speculative,
                                       run.options.fp8_cache ? CacheFormat::fp8 : CacheFormat::model,
                                       run.options.moe_dispatch);
    } else {
      return model_->make_decode_cache(layout);
    }
  }

  // Returns the slots (and blocks) of the samples that finished to the scheduler.
  static void recycle(Run& run, Scheduler& sched) {
    for (const std::int64_t slot : run.freed) {
      sched.free_slots.insert(slot);
      if (sched.blocks) {
        sched.blocks->release(slot);
        sched.outstanding_total -= sched.outstanding[static_cast<std::size_t>(slot)];
        sched.outstanding[static_cast<std::size_t>(slot)] = 0;
      }
    }
    run.freed.clear();
  }

  // Admits the next samples that fit (free slots; paged, blocks beyond the promises), prefills
  // their prompts and draws their first tokens. Returns whether it admitted any.
  template <class Cache>
  bool admit(Run& run, Scheduler& sched, Cache& cache, std::vector<Row>& active) const {
    const Model& m = *model_;
    const Device device = m.device();
    const std::int64_t G = run.options.samples_per_prompt, first = sched.next, bt = sched.block_tokens;
    // The longest run of waiting samples that the free slots and (paged) blocks take: all those the
    // slots allow when their blocks fit (the common case, checked once), else grown one by one
    // (a longer run never needs fewer blocks).
    std::int64_t last = std::min(run.total, first + static_cast<std::int64_t>(sched.free_slots.size()));
    const auto fits = [&](std::int64_t end) {
      return bt == 0 || admission_blocks(run, first, end, bt) <= sched.blocks->free_blocks() - sched.outstanding_total;
    };
    if (!fits(last)) {
      const std::int64_t most = last;
      last = first;
      while (last < most && fits(last + 1)) ++last;
    }
    if (last == first) return false;
    const std::int64_t count = last - first;

    // The admission's distinct prompts (rows of the padded batch) and each sample's row and slot.
    std::map<std::int64_t, std::int64_t> row_of;
    std::vector<std::int64_t> prompt_of_row, lengths, rows, slots;
    for (std::int64_t j = first; j < last; ++j) {
      const std::int64_t p = j / G;
      auto [it, fresh] = row_of.emplace(p, static_cast<std::int64_t>(prompt_of_row.size()));
      if (fresh) {
        prompt_of_row.push_back(p);
        lengths.push_back(prompt_length(run, j));
      }
      rows.push_back(it->second);
      slots.push_back(*sched.free_slots.begin());
      sched.free_slots.erase(sched.free_slots.begin());
    }
    sched.next = last;
    const auto B = static_cast<std::int64_t>(prompt_of_row.size());
    const std::int64_t S = *std::max_element(lengths.begin(), lengths.end());
    std::vector<std::int64_t> ids(static_cast<std::size_t>(B * S), 0);  // pad id 0: any valid id will do
    for (std::int64_t b = 0; b < B; ++b) {
      const auto& prompt = run.prompts[static_cast<std::size_t>(prompt_of_row[static_cast<std::size_t>(b)])];
      std::copy(prompt.begin(), prompt.end(), ids.begin() + b * S);
    }
    const Tensor<std::int64_t> prompt_ids = Tensor<std::int64_t>::from_vector(ids, {B, S}, device);
    std::vector<Row> admitted;
    for (std::int64_t a = 0; a < count; ++a)
      admitted.push_back({first + a, slots[static_cast<std::size_t>(a)],
                          lengths[static_cast<std::size_t>(rows[static_cast<std::size_t>(a)])]});
    Prefilled prefilled;
    if (bt > 0) {
      prefilled = prefill_shared(run, sched, prompt_ids, lengths, rows, slots, cache);
      for (std::int64_t a = 0; a < count; ++a) {
        const std::int64_t promise = sample_blocks(run, lengths[static_cast<std::size_t>(rows[static_cast<std::size_t>(a)])], bt);
        sched.outstanding[static_cast<std::size_t>(slots[static_cast<std::size_t>(a)])] = promise;
        sched.outstanding_total += promise;
      }
      if (run.options.speculative) own_last_prompt_blocks(sched, cache, admitted);
    } else {
      const PrefillIndex prefill = PrefillIndex::make(lengths, S, slots, rows, cache.kv.num_slots(), device);
      prefilled = prefill_rows(run, prompt_ids, prefill, cache);
    }

    // The first draw, from each sample's prompt logits, at position L (the first new token's);
    // speculative, also the first draft (first_drafts), read in the same read.
    const bool speculative = run.options.speculative;
    std::vector<std::int64_t> packed;
    for (const Row& r : admitted) packed.push_back(sample_id(run, r));
    for (const Row& r : admitted) packed.push_back(r.position);
    if (speculative) {
      for (const Row& r : admitted) packed.push_back(r.slot);
      for (const Row& r : admitted) packed.push_back(r.position - 1);
      for (const Row& r : admitted) packed.push_back(r.position + 1);
    }
    const auto first_index = Tensor<std::int64_t>::from_vector(packed, {speculative ? 5 : 2, count}, device);
    Tensor<std::int64_t> drawn = draw(run, prefilled.logits, row_view(first_index, 0, count),
                                      row_view(first_index, 1, count), admitted, count);
    if (speculative) drawn = first_drafts(run, prefilled.hidden, drawn, first_index, cache);
    const std::vector<std::int64_t> tokens = drawn.to_vector();
    if (speculative)
      for (std::int64_t a = 0; a < count; ++a) admitted[static_cast<std::size_t>(a)].draft = tokens[static_cast<std::size_t>(count + a)];
    accept(run, tokens, admitted);
    active.insert(active.end(), admitted.begin(), admitted.end());
    report(run, static_cast<std::int64_t>(active.size()));
    return true;
  }

  // The paged prefill: each distinct prompt is written once, to its first sample's sequence (which
  // holds blocks for all S padded positions while the prefill writes them, then gives back those
  // past its prompt), and the admission's other samples of that prompt fork it: they share its
  // blocks (BlockAllocator::fork), to be copied on write only where a sample's first new token
  // lands in the prompt's partly filled last block. Returns the first logits row of every
  // sample, [count, vocab] (and speculative, its hidden state).
  template <class Cache>
  Prefilled prefill_shared(const Run& run, Scheduler& sched, const Tensor<std::int64_t>& prompt_ids,
                           const std::vector<std::int64_t>& lengths, const std::vector<std::int64_t>& rows,
                           const std::vector<std::int64_t>& slots, Cache& cache) const {
    BlockAllocator& blocks = *sched.blocks;
    const auto B = static_cast<std::int64_t>(lengths.size()), count = static_cast<std::int64_t>(rows.size());
    const std::int64_t S = prompt_ids.size(1);
    std::vector<std::int64_t> parent(static_cast<std::size_t>(B), -1);  // per prompt row: its first sample's slot
    for (std::int64_t a = 0; a < count; ++a) {
      std::int64_t& p = parent[static_cast<std::size_t>(rows[static_cast<std::size_t>(a)])];
      if (p < 0) p = slots[static_cast<std::size_t>(a)];
    }
    for (const std::int64_t p : parent) blocks.reserve(p, S);
    cache.kv.set_block_table(blocks.table());
    const PrefillIndex prefill = PrefillIndex::make(lengths, S, parent, {}, blocks.num_sequences(), model_->device());
    const Prefilled prompts = prefill_rows(run, prompt_ids, prefill, cache);  // [B, vocab], [B, hidden]
    for (std::int64_t b = 0; b < B; ++b)
      blocks.truncate(parent[static_cast<std::size_t>(b)], lengths[static_cast<std::size_t>(b)]);
    bool identity = B == count;
    for (std::int64_t a = 0; a < count; ++a) {
      const std::int64_t r = rows[static_cast<std::size_t>(a)], slot = slots[static_cast<std::size_t>(a)];
      if (slot != parent[static_cast<std::size_t>(r)]) blocks.fork(parent[static_cast<std::size_t>(r)], slot);
      identity = identity && r == a;
    }
    cache.kv.set_block_table(blocks.table());
    if (identity) return prompts;
    const auto of_sample = Tensor<std::int64_t>::from_vector(rows, {count}, model_->device());
    return {index_select(prompts.logits, 0, of_sample),
            prompts.hidden.defined() ? index_select(prompts.hidden, 0, of_sample) : Tensor<T>()};
  }

  template <class Cache>
  Prefilled prefill_rows(const Run& run, const Tensor<std::int64_t>& ids, const PrefillIndex& index, Cache& cache) const {
    if constexpr (detail::MTPDrafting<Model>) {
      if (run.options.speculative) {
        const auto out = model_->prefill_with_hidden(ids, index, cache);
        return {out.logits, out.hidden};
      }
    }
    return {model_->prefill(ids, index, cache), Tensor<T>()};
  }

  // Speculative: the first draft of each admitted sample, for position L + 1, from the MTP module
  // at the last prompt token's position L − 1 (that token's hidden state and the token just drawn
  // at L), which also writes the MTP layer's row L − 1. index: admit's [5, count] (sample ids, L,
  // slots, L − 1, L + 1). Returns [drawn; drafts] [2 · count], for the admission's one read.
  template <class Cache>
  Tensor<std::int64_t> first_drafts(const Run& run, const Tensor<T>& hidden, const Tensor<std::int64_t>& drawn,
                                    const Tensor<std::int64_t>& index, Cache& cache) const {
    if constexpr (detail::MTPDrafting<Model>) {
      const std::int64_t count = drawn.size(0);
      const DecodeIndex at{row_view(index, 2, count), row_view(index, 3, count), row_view(index, 1, count), 1};
      Tensor<T> logits;
      {
        DeviceReadbackGuard trusted_ids;  // the sampler's own draws
        logits = model_->mtp_decode(reshape(hidden, {count, 1, -1}), drawn, at, cache);
      }
      const Tensor<std::int64_t> drafts =
          sample_rows(run, reshape(logits, {count, -1}), row_view(index, 0, count), row_view(index, 4, count));
      return cat(std::vector<Tensor<std::int64_t>>{drawn, drafts});
    } else {
      return drawn;  // unreachable: generate() refuses speculative decoding without MTP modules
    }
  }

  // Speculative, paged: the MTP layer's row of a sample's last prompt token (L − 1) embeds the
  // sample's own first token, so the block holding it must be the sample's own too: a private
  // copy of the prompt's block where it is shared, with every row through L − 1 (the main layers'
  // row L − 1 is the prompt's; the MTP layer's is rewritten by first_drafts). Counted against the
  // sample's promise (sample_blocks).
  template <class Cache>
  static void own_last_prompt_blocks(Scheduler& sched, const Cache& cache, const std::vector<Row>& admitted) {
    BlockAllocator& blocks = *sched.blocks;
    bool changed = false;
    for (const Row& r : admitted) {
      BlockCopy copy = blocks.prepare_write(r.slot, r.position - 1);
      if (copy.to < 0) continue;
      ++copy.rows;
      cache.kv.copy_block(copy);
      take_promised(sched, r, 1);
      changed = true;
    }
    if (changed) cache.kv.set_block_table(blocks.table());
  }

  // A sample took `taken` blocks: that many fewer promised.
  static void take_promised(Scheduler& sched, const Row& r, std::int64_t taken) {
    std::int64_t& promise = sched.outstanding[static_cast<std::size_t>(r.slot)];
    check(taken <= promise, "generate", "internal: sample ", r.sample, " took more blocks than promised");
    promise -= taken;
    sched.outstanding_total -= taken;
  }

  // Before a decode step writes each active sample's `tokens` new rows (from r.position: its
  // newest token, and speculative its draft) into a paged cache: blocks for them where the
  // sample's blocks end, and a private copy of a block it still shares (its prompt's last one, on
  // its first step); each block taken is one fewer promised. The block table is copied to the
  // device only when a list changed: every block_tokens steps, and on a sample's first.
  template <class Cache>
  static void prepare_blocks(Scheduler& sched, const Cache& cache, const std::vector<Row>& active, std::int64_t tokens) {
    if (!sched.blocks) return;
    BlockAllocator& blocks = *sched.blocks;
    bool changed = false;
    for (const Row& r : active) {
      const auto before = static_cast<std::int64_t>(blocks.blocks(r.slot).size());
      blocks.reserve(r.slot, r.position + tokens);
      std::int64_t copies = 0;
      for (std::int64_t t = 0; t < tokens; ++t) {
        const BlockCopy copy = blocks.prepare_write(r.slot, r.position + t);
        if (copy.to >= 0) cache.kv.copy_block(copy);
        copies += copy.to >= 0 ? 1 : 0;
      }
      const std::int64_t taken = static_cast<std::int64_t>(blocks.blocks(r.slot).size()) - before + copies;
      take_promised(sched, r, taken);
      changed = changed || taken > 0;
    }
    if (changed) cache.kv.set_block_table(blocks.table());
  }

  // What the decode steps keep between steps. Eager: the device rows (ids, index, sample ids),
  // rebuilt only when the active set changed — between changes the next step's ids are the drawn
  // tokens and its index is index.next(), both already on the device. Graphs: one graph per
  // padded row count with its own rows tensor, refilled from the host before every replay.
  struct GraphStep {
    Tensor<std::int64_t> rows;   // [4, rows_n] on the device: what the graph reads
    Tensor<std::int64_t> drawn;  // [rows_n]: what it writes (a block of the graph's own pool)
    DeviceGraph graph;           // destroyed first (declared last)
  };
  struct DecodeState {
    bool changed = true;  // no device rows yet
    Tensor<std::int64_t> step_ids, sample_ids, drawn;
    DecodeIndex index;
    std::map<std::int64_t, std::unique_ptr<GraphStep>> graphs;  // by padded row count
    std::int64_t wanted_bucket = 0, wanted_steps = 0;           // a bucket without a graph, and
                                                                // for how many steps in a row
  };

  // The padded row count of a graphed step with n active rows (see the file comment): n's bucket
  // when its graph exists or it has been wanted options.graph_patience steps in a row; until then
  // the smallest larger graph captured, if any.
  static std::int64_t graph_rows(const Run& run, DecodeState& st, std::int64_t n) {
    const std::int64_t bucket = detail::bucket_size(n);
    if (st.graphs.count(bucket)) {
      st.wanted_steps = 0;  // a run of steps wanting a missing bucket ends here
      return bucket;
    }
    st.wanted_steps = st.wanted_bucket == bucket ? st.wanted_steps + 1 : 1;
    st.wanted_bucket = bucket;
    const auto larger = st.graphs.upper_bound(bucket);
    if (larger == st.graphs.end() || st.wanted_steps > run.options.graph_patience) return bucket;
    return larger->first;
  }

  // One decode step launched from the host (see DecodeState).
  template <class Cache>
  void step_eager(Run& run, const Scheduler& sched, Cache& cache, std::vector<Row>& active, DecodeState& st) const {
    const Model& m = *model_;
    const auto n = static_cast<std::int64_t>(active.size());
    if (st.changed) {
      // The rows of the samples left (or the first decode step): upload what the host knows.
      const std::int64_t rows_n = run.options.pad_to_bucket ? detail::bucket_size(n) : n;
      const auto packed_state = Tensor<std::int64_t>::from_vector(step_rows(run, active, rows_n, sched.spare_slot),
                                                                  {4, rows_n}, m.device());
      st.step_ids = row_view(packed_state, 0, rows_n);
      st.index = DecodeIndex::at(row_view(packed_state, 2, rows_n), row_view(packed_state, 1, rows_n));
      st.sample_ids = row_view(packed_state, 3, rows_n);
    } else {
      st.step_ids = st.drawn;
      st.index = st.index.next();
    }
    Tensor<T> logits;
    {
      // The ids are the sampler's own draws (valid by construction): no range-check read-back.
      DeviceReadbackGuard trusted_ids;
      logits = m.decode(st.step_ids, st.index, cache);
    }
    for (Row& r : active) ++r.position;  // the token drawn now sits one further
    st.drawn = draw(run, logits, st.sample_ids, st.index.lengths, active, st.index.size());
    ++run.step;
    st.changed = accept(run, st.drawn.to_vector(), active);
    report(run, static_cast<std::int64_t>(active.size()));
  }

  // One decode step as a CUDA graph replay (see the file comment and DecodeState).
  template <class Cache>
  void step_graphed(Run& run, const Scheduler& sched, Cache& cache, std::vector<Row>& active, DecodeState& st) const {
    const Model& m = *model_;
    const Device device = m.device();
    const std::int64_t rows_n = graph_rows(run, st, static_cast<std::int64_t>(active.size()));
    const std::vector<std::int64_t> rows = step_rows(run, active, rows_n, sched.spare_slot);
    std::unique_ptr<GraphStep>& step = st.graphs[rows_n];
    if (!step) {
      ++run.graphs_captured;
      step = std::make_unique<GraphStep>();
      step->rows = Tensor<std::int64_t>::from_vector(rows, {4, rows_n}, device);
      GraphStep* s = step.get();
      // Capture runs the step for real (its warm-up), records it, and replays it once: the same
      // step twice, which writes the same cache entries and draws the same tokens.
      s->graph.capture(device, [&, s, rows_n] {
        const DecodeIndex index = DecodeIndex::at(row_view(s->rows, 2, rows_n), row_view(s->rows, 1, rows_n));
        const Tensor<T> logits = m.decode(row_view(s->rows, 0, rows_n), index, cache);
        s->drawn = sample_rows(run, logits, row_view(s->rows, 3, rows_n), index.lengths);
      });
    } else {
      copy_bytes(step->rows.data(), device, rows.data(), Device::cpu(), rows.size() * sizeof(std::int64_t));
      step->graph.replay();
    }
    for (Row& r : active) ++r.position;  // the token drawn now sits one further
    ++run.step;
    st.changed = accept(run, step->drawn.to_vector(), active);
    report(run, static_cast<std::int64_t>(active.size()));
  }

  // One speculative decode step (infer/speculative.hpp): every active sample feeds its newest
  // token and its draft, and gets one or two tokens and its next draft. The host fills the step's
  // packed index every step (positions advance by 1 or 2, decided by the read), then launches it
  // eagerly or replays its graph (one per padded row count, as step_graphed), then reads the
  // tokens and drafts once.
  template <class Cache>
  void step_speculative(Run& run, const Scheduler& sched, Cache& cache, std::vector<Row>& active, DecodeState& st,
                        bool graphed) const {
    const Model& m = *model_;
    const Device device = m.device();
    const auto n = static_cast<std::int64_t>(active.size());
    const std::int64_t rows_n = graphed                     ? graph_rows(run, st, n)
                                : run.options.pad_to_bucket ? detail::bucket_size(n)
                                                            : n;
    std::vector<SpeculativeRow> rows;
    rows.reserve(active.size());
    for (const Row& r : active)
      rows.push_back({run.samples[static_cast<std::size_t>(r.sample)].completion().tokens.back(), r.draft, r.position,
                      r.slot, sample_id(run, r)});
    const std::vector<std::int64_t> packed = SpeculativeIndex::pack(rows, rows_n, sched.spare_slot);
    const auto draw_fn = [&run](const Tensor<T>& logits, const Tensor<std::int64_t>& sample_ids,
                                const Tensor<std::int64_t>& positions) {
      return sample_rows(run, logits, sample_ids, positions);
    };
    SpeculativeDraws<T> out;
    if (graphed) {
      std::unique_ptr<GraphStep>& step = st.graphs[rows_n];
      if (!step) {
        ++run.graphs_captured;
        step = std::make_unique<GraphStep>();
        step->rows = Tensor<std::int64_t>::from_vector(packed, {SpeculativeIndex::fields * rows_n}, device);
        GraphStep* s = step.get();
        // As in step_graphed: the capture runs the step, records it and replays it once, and the
        // replay recomputes the same step (same rows, same cache entries, same draws).
        s->graph.capture(device, [&, s, rows_n] {
          s->drawn = speculative_step<T>(m, SpeculativeIndex::view(s->rows, rows_n), cache, draw_fn).tokens;
        });
      } else {
        copy_bytes(step->rows.data(), device, packed.data(), Device::cpu(), packed.size() * sizeof(std::int64_t));
        step->graph.replay();
      }
      out.tokens = step->drawn;
    } else {
      const auto index = Tensor<std::int64_t>::from_vector(packed, {SpeculativeIndex::fields * rows_n}, device);
      DeviceReadbackGuard trusted_ids;  // the ids are the sampler's own draws
      out = speculative_step<T>(m, SpeculativeIndex::view(index, rows_n), cache, draw_fn);
    }
    const std::vector<std::int64_t> drawn = out.tokens.to_vector();  // THE read of the step
    ++run.step;
    const std::vector<Row> stepped = active;
    const std::vector<std::int64_t> emitted = accept_speculative(run, drawn, rows_n, active);
    if (run.options.on_logits) report_speculative_logits(run, out.logits, stepped, emitted);
    report(run, static_cast<std::int64_t>(active.size()));
  }

  // A speculative step's read resolved (see infer/speculative.hpp): per row y1, and y2 when its
  // draft equals y1 (accepted), appended to the sample; a sample that goes on advances by the
  // tokens it got and keeps the draft for the position after them. drawn [4 · rows_n]: y1, y2
  // per row, then the drafts for p + 2 and p + 3 per row. Returns, per row stepped, how many
  // tokens it emitted.
  static std::vector<std::int64_t> accept_speculative(Run& run, const std::vector<std::int64_t>& drawn,
                                                      std::int64_t rows_n, std::vector<Row>& active) {
    std::vector<Row> left;
    std::vector<std::int64_t> emitted;
    left.reserve(active.size());
    for (std::size_t r = 0; r < active.size(); ++r) {
      Row row = active[r];
      const std::int64_t y1 = drawn[2 * r], y2 = drawn[2 * r + 1];
      const std::int64_t after_rejected = drawn[static_cast<std::size_t>(2 * rows_n) + 2 * r];
      const std::int64_t after_accepted = drawn[static_cast<std::size_t>(2 * rows_n) + 2 * r + 1];
      const bool accepted = y1 == row.draft || run.options.speculative_accept_all;
      ++run.drafts;
      run.accepted_drafts += accepted ? 1 : 0;
      CompletionBuilder& sample = run.samples[static_cast<std::size_t>(row.sample)];
      std::int64_t tokens = 1;
      bool finished = sample.append(y1);
      if (!finished && accepted) {
        ++tokens;
        finished = sample.append(y2);
      }
      run.tokens += tokens;
      emitted.push_back(tokens);
      if (finished) {
        ++run.finished;
        run.freed.push_back(row.slot);
        continue;
      }
      row.position += accepted ? 2 : 1;
      row.draft = accepted ? after_accepted : after_rejected;
      left.push_back(row);
    }
    active = std::move(left);
    return emitted;
  }

  // options.on_logits after a speculative step: the logits rows of the tokens it emitted.
  static void report_speculative_logits(const Run& run, const Tensor<T>& logits, const std::vector<Row>& stepped,
                                        const std::vector<std::int64_t>& emitted) {
    const std::int64_t V = logits.size(2);
    const std::vector<double> all = to(cast<double>(logits), Device::cpu()).to_vector();  // [rows, 2, vocab]
    StepLogits s;
    std::vector<double> rows;
    for (std::size_t r = 0; r < stepped.size(); ++r)
      for (std::int64_t t = 0; t < emitted[r]; ++t) {
        s.samples.push_back(stepped[r].sample);
        s.positions.push_back(stepped[r].position + 1 + t);
        const auto first = all.begin() + static_cast<std::ptrdiff_t>((2 * static_cast<std::int64_t>(r) + t) * V);
        rows.insert(rows.end(), first, first + V);
      }
    s.logits = Tensor<double>::from_vector(rows, {static_cast<std::int64_t>(s.samples.size()), V});
    run.options.on_logits(s);
  }

  bool use_graphs(const Run& run) const {
    return run.options.cuda_graphs && model_->device().is_cuda() && !run.options.on_logits;
  }

  // The device rows of a step as one packed host vector [4, rows_n]: newest ids, positions, slots,
  // sample ids of the active samples, then padding rows (id 0 at position 0 of the spare slot).
  static std::vector<std::int64_t> step_rows(const Run& run, const std::vector<Row>& active, std::int64_t rows_n,
                                             std::int64_t spare_slot) {
    const auto n = static_cast<std::int64_t>(active.size());
    std::vector<std::int64_t> state(static_cast<std::size_t>(4 * rows_n), 0);
    for (std::int64_t r = 0; r < rows_n; ++r) {
      const bool real = r < n;
      const Row& row = active[static_cast<std::size_t>(real ? r : 0)];
      const auto& tokens = run.samples[static_cast<std::size_t>(row.sample)].completion().tokens;
      state[static_cast<std::size_t>(r)] = real ? tokens.back() : 0;                     // ids
      state[static_cast<std::size_t>(rows_n + r)] = real ? row.position : 0;             // positions
      state[static_cast<std::size_t>(2 * rows_n + r)] = real ? row.slot : spare_slot;    // slots
      state[static_cast<std::size_t>(3 * rows_n + r)] = real ? sample_id(run, row) : 0;  // sample ids
    }
    return state;
  }

  static std::int64_t sample_id(const Run& run, const Row& r) {
    return static_cast<std::int64_t>(run.samples[static_cast<std::size_t>(r.sample)].completion().sample_id);
  }

  // Row i of a packed [k, n] index tensor, as a contiguous [n] view.
  static Tensor<std::int64_t> row_view(const Tensor<std::int64_t>& packed, std::int64_t i, std::int64_t n) {
    return reshape(narrow(packed, 0, i, 1), {n});
  }

  // Draws one token per logits row (rows past active.size() are padding), on the device.
  Tensor<std::int64_t> draw(const Run& run, const Tensor<T>& logits, const Tensor<std::int64_t>& sample_ids,
                            const Tensor<std::int64_t>& positions, const std::vector<Row>& active,
                            std::int64_t rows) const {
    if (run.options.on_logits) {
      StepLogits s;
      for (std::int64_t r = 0; r < rows; ++r) {
        const bool real = r < static_cast<std::int64_t>(active.size());
        s.samples.push_back(real ? active[static_cast<std::size_t>(r)].sample : -1);
        s.positions.push_back(real ? active[static_cast<std::size_t>(r)].position : -1);
      }
      s.logits = to(cast<double>(logits), Device::cpu());
      run.options.on_logits(s);
    }
    return sample_rows(run, logits, sample_ids, positions);
  }

  // One token per logits row, drawn at `positions` (device work only).
  static Tensor<std::int64_t> sample_rows(const Run& run, const Tensor<T>& logits, const Tensor<std::int64_t>& sample_ids,
                                          const Tensor<std::int64_t>& positions) {
    // With a tokenizer of fewer ids than the model's vocabulary, draw only ids it can decode.
    const data::Tokenizer* tok = run.options.tokenizer;
    const Tensor<T> z = tok && tok->vocab_size() < logits.size(1) ? narrow(logits, 1, 0, tok->vocab_size()) : logits;
    return sample_tokens(z, run.params.sampling_options(), sample_ids, positions);
  }

  // After THE host read of a step, the drawn tokens (one per row): appends each active sample's
  // token, drops finished samples from `active`; returns whether the active set changed.
  static bool accept(Run& run, const std::vector<std::int64_t>& tokens, std::vector<Row>& active) {
    std::vector<Row> left;
    left.reserve(active.size());
    for (std::size_t r = 0; r < active.size(); ++r) {
      ++run.tokens;
      if (run.samples[static_cast<std::size_t>(active[r].sample)].append(tokens[r])) {
        ++run.finished;
        run.freed.push_back(active[r].slot);  // its slot and blocks go to the samples admitted next
      } else {
        left.push_back(active[r]);
      }
    }
    const bool changed = left.size() != active.size();
    active = std::move(left);
    return changed;
  }

  static void report(const Run& run, std::int64_t active) {
    if (run.options.on_progress)
      run.options.on_progress({run.step, active, run.finished, run.total, run.tokens, run.drafts, run.accepted_drafts,
                               run.graphs_captured});
  }

  const Model* model_;
};

// One-call form: Engine(model).generate(prompts, params, options).
template <class Model>
std::vector<Completion> generate(const Model& model, const std::vector<std::vector<std::int64_t>>& prompts,
                                 const SamplingParams& params, const GenerateOptions& options = {}) {
  return Engine<Model>(model).generate(prompts, params, options);
}

}  // namespace kiln::infer
