// Supervised fine-tuning data (issue 12): prompt/completion pairs as train::Batch micro-batches
// whose loss counts completion tokens only, packed or padded. train::Trainer runs the SFT itself
// (next-token CE over the counted targets, accumulation weighted by counted targets, schedule,
// clipping, checkpoints, validation); distill/objectives.hpp swaps the loss for logit KD.
//
// Targets. Example tokens t_0 .. t_{L-1}, the first P the prompt: position j predicts t_{j+1},
// so target[j] = t_{j+1} where t_{j+1} is a completion token (j >= P - 1) and ignore (-100)
// elsewhere: the prompt carries no loss, and the last token predicts nothing.
//
// Micro-batches hold at most `tokens_per_batch` tokens (padding included):
//   packed:  sequences end to end in one row [1, S], cu_seqlens marking each (attention stays
//            inside each, positions restart: nn/attention.hpp). No padding.
//   padded:  rows [B, S_max], right-padded with pad_id (targets ignore there); sequences are
//            sorted by length before they are grouped, so rows of a batch have similar lengths.
// A sequence longer than the budget gets a micro-batch of its own (it is never cut: a cut
// completion would teach the model to stop mid-answer).
//
// Order. The plan (which sequences share a micro-batch) is made once from a seeded shuffle; every
// epoch visits the micro-batches in an order of its own, drawn from (seed, epoch). batch(i) is a
// pure function of i, as train::Trainer requires for resuming: micro-batch i is number i mod N of
// epoch i / N. With shuffle off (validation), batch(i) is plan entry i in plan order, and
// batches() = N covers every example once.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/core/random.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/train/trainer.hpp"

namespace kiln::distill {

// One example: prompt token ids (a bos first, when the tokenizer has one) and the completion's.
struct SftExample {
  std::vector<std::int64_t> prompt, completion;
};

struct SftDataOptions {
  std::int64_t tokens_per_batch = 2048;  // tokens per micro-batch (padding included), at most
  bool packing = true;                   // packed rows (else padded rows, sorted by length)
  bool shuffle = true;                   // per-epoch order of the micro-batches (off: validation)
  std::uint64_t seed = 0;
  std::int64_t max_length = 0;  // prompt + completion tokens at most (0: no limit): the model's positions
  std::int64_t pad_id = 0;      // padded rows: any valid id (padding positions are never targets)
};

class SftData {
 public:
  SftData(std::vector<SftExample> examples, SftDataOptions options)
      : examples_(std::move(examples)), options_(options) {
    const char* op = "SftData";
    check(!examples_.empty(), op, "no examples");
    check(options_.tokens_per_batch > 0, op, "tokens_per_batch must be positive, got ", options_.tokens_per_batch);
    check(options_.max_length >= 0, op, "max_length must not be negative, got ", options_.max_length);
    for (std::size_t i = 0; i < examples_.size(); ++i) {
      const SftExample& e = examples_[i];
      check(!e.prompt.empty() && !e.completion.empty(), op, "example ", i, " has ", e.prompt.size(),
            " prompt and ", e.completion.size(), " completion tokens: both must be non-empty");
      const auto L = static_cast<std::int64_t>(e.prompt.size() + e.completion.size());
      check(options_.max_length == 0 || L <= options_.max_length, op, "example ", i, " has ", L,
            " tokens, more than max_length = ", options_.max_length);
      completion_tokens_ += static_cast<std::int64_t>(e.completion.size());
    }
    plan();
  }

  // Micro-batch i (any i >= 0; see the file comment).
  train::Batch batch(std::int64_t i) const {
    check(i >= 0, "SftData::batch", "index must not be negative, got ", i);
    const auto N = static_cast<std::int64_t>(plan_.size());
    std::int64_t k = i % N;
    if (options_.shuffle) k = epoch_order(i / N)[static_cast<std::size_t>(k)];
    return make(plan_[static_cast<std::size_t>(k)]);
  }

  // A BatchFn over this data (it must outlive the function).
  train::BatchFn batch_fn() const {
    return [this](std::int64_t i) { return batch(i); };
  }

  std::int64_t batches() const { return static_cast<std::int64_t>(plan_.size()); }  // micro-batches per epoch
  std::int64_t examples() const { return static_cast<std::int64_t>(examples_.size()); }
  std::int64_t completion_tokens() const { return completion_tokens_; }  // counted targets per epoch
  const std::vector<std::vector<std::size_t>>& plan_entries() const { return plan_; }

 private:
  std::int64_t length(std::size_t e) const {
    return static_cast<std::int64_t>(examples_[e].prompt.size() + examples_[e].completion.size());
  }

  // Groups the examples into micro-batches within the token budget.
  void plan() {
    std::vector<std::size_t> order(examples_.size());
    std::iota(order.begin(), order.end(), 0);
    if (options_.shuffle) shuffle(order, options_.seed, 0);
    if (!options_.packing)  // similar lengths together: little padding
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return length(a) < length(b); });
    std::vector<std::size_t> current;
    std::int64_t used = 0, widest = 0;
    for (const std::size_t e : order) {
      const std::int64_t L = length(e);
      // Tokens of the micro-batch with e added: packed, the sum; padded, rows × the longest row.
      const std::int64_t with = options_.packing ? used + L
                                                 : (static_cast<std::int64_t>(current.size()) + 1) * std::max(widest, L);
      if (!current.empty() && with > options_.tokens_per_batch) {
        plan_.push_back(std::move(current));
        current.clear();
        used = widest = 0;
      }
      current.push_back(e);
      used += L;
      widest = std::max(widest, L);
    }
    plan_.push_back(std::move(current));
  }

  // Fisher-Yates with counter-based draws (philox) keyed by (seed, stream).
  template <class V>
  static void shuffle(V& v, std::uint64_t seed, std::uint64_t stream) {
    const std::uint64_t key = seed ^ (stream * 0x9E3779B97F4A7C15ull);
    for (std::size_t i = v.size(); i > 1; --i) {
      const std::array<std::uint32_t, 4> w = philox::at(key, i);
      const std::uint64_t draw = (static_cast<std::uint64_t>(w[0]) << 32) | w[1];
      std::swap(v[i - 1], v[static_cast<std::size_t>(draw % i)]);
    }
  }

  std::vector<std::int64_t> epoch_order(std::int64_t epoch) const {
    std::vector<std::int64_t> order(plan_.size());
    std::iota(order.begin(), order.end(), 0);
    shuffle(order, options_.seed, static_cast<std::uint64_t>(epoch) + 1);
    return order;
  }

  train::Batch make(const std::vector<std::size_t>& members) const {
    std::vector<std::int64_t> ids, targets;
    auto append = [&](const SftExample& e) {
      const std::size_t start = ids.size(), P = e.prompt.size();
      ids.insert(ids.end(), e.prompt.begin(), e.prompt.end());
      ids.insert(ids.end(), e.completion.begin(), e.completion.end());
      targets.resize(ids.size(), -100);
      // Completion token c sits at P + c and is predicted at position P + c - 1.
      for (std::size_t c = 0; c < e.completion.size(); ++c) targets[start + P - 1 + c] = e.completion[c];
    };
    train::Batch b;
    if (options_.packing) {
      std::vector<std::int64_t> cu{0};
      for (const std::size_t e : members) {
        append(examples_[e]);
        cu.push_back(static_cast<std::int64_t>(ids.size()));
      }
      const auto S = static_cast<std::int64_t>(ids.size());
      b.ids = Tensor<std::int64_t>::from_vector(ids, {1, S});
      b.targets = Tensor<std::int64_t>::from_vector(targets, {1, S});
      b.cu_seqlens = Tensor<std::int64_t>::from_vector(cu, {static_cast<std::int64_t>(cu.size())});
      return b;
    }
    std::int64_t S = 0;
    for (const std::size_t e : members) S = std::max(S, length(e));
    for (std::size_t row = 0; row < members.size(); ++row) {
      append(examples_[members[row]]);
      ids.resize((row + 1) * static_cast<std::size_t>(S), options_.pad_id);  // right padding
      targets.resize(ids.size(), -100);
    }
    const auto B = static_cast<std::int64_t>(members.size());
    b.ids = Tensor<std::int64_t>::from_vector(ids, {B, S});
    b.targets = Tensor<std::int64_t>::from_vector(targets, {B, S});
    return b;
  }

  std::vector<SftExample> examples_;
  SftDataOptions options_;
  std::vector<std::vector<std::size_t>> plan_;
  std::int64_t completion_tokens_ = 0;
};

}  // namespace kiln::distill
