// The preallocated key/value cache of the generation engine, and the index tensors that say where
// a prefill or a decode step reads and writes it.
//
// Layout. One cache per model: per decoder layer a key tensor and a value tensor, shaped for
// decode_attention (ops/decode_attention.hpp):
//   k [slots, capacity, kv_heads, k_dim],  v [slots, capacity, kv_heads, v_dim]
// A slot is one sequence; capacity bounds its length (prompt + new tokens). Sequences of
// different lengths share the cache: each keeps its own length (a device tensor of the decode
// step, never a shape), so nothing is reallocated, moved or copied as sequences grow — a token
// is one cache_write into its row at its position.
//   Llama (KVCache::separate): k holds the rotated keys, v the values, kv_heads = the model's
//     num_key_value_heads (GQA), k_dim = v_dim = head_dim.
//   MLA (KVCache::latent): ONE tensor [slots, capacity, 1, r + dr] per layer holding per token
//     [c | k_pe]: the normalised latent c = kv_a_layernorm(compressed_kv) (r = kv_lora_rank) and
//     the ROTATED shared rope key k_pe (dr = qk_rope_head_dim). The absorbed score of a query
//     head, q_lat·c + q_pe·k_pe, is then one dot product [q_lat, q_pe]·[c, k_pe], so k is that
//     tensor; the values of the absorbed path are the latents themselves, so v is the view of
//     k's first r columns (no second copy). The one "kv head" is shared by every query head.
//     Per token and layer this is r + dr numbers (288 for DeepSeek-V3-style r = 256, dr = 32),
//     against 2·H·head_dim for plain multi-head attention.
// The memory is zeroed once; positions at or past a sequence's length are never read
// (decode_attention attends over j < lengths[a]), so stale rows of finished sequences or padding
// need no clearing.
//
// Index tensors (int64, on the cache's device):
//   PrefillIndex  prompts [B, S] right-padded, written to R slots (R = B, or B·G when each prompt
//                 starts a group of G samples: a prompt's keys are computed once and written to
//                 every slot of its group).
//   DecodeIndex   one new token per row: its slot, its position (= tokens already cached) and
//                 the length its query attends over (position + 1, itself included).
// This file depends only on the ops: the models (nn/llama.hpp, nn/deepseek_v3.hpp) use it to
// write their caches, the engine (infer/engine.hpp) to drive them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kiln/ops/binary.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/decode_attention.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/gather.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::infer {

template <class T>
class KVCache {
 public:
  struct Layer {
    Tensor<T> k;  // [slots, capacity, kv_heads, k_dim], contiguous (cache_write's target)
    Tensor<T> v;  // [slots, capacity, kv_heads, v_dim]; for MLA a view of k's first v_dim columns
  };

  KVCache() = default;

  // Separate keys and values (Llama): per layer k [slots, capacity, kv_heads, k_dim] and
  // v [slots, capacity, kv_heads, v_dim].
  static KVCache separate(std::int64_t layers, std::int64_t slots, std::int64_t capacity, std::int64_t kv_heads,
                          std::int64_t k_dim, std::int64_t v_dim, Device device) {
    check_sizes("KVCache::separate", layers, slots, capacity, kv_heads, k_dim, v_dim);
    KVCache c(slots, capacity);
    for (std::int64_t l = 0; l < layers; ++l)
      c.layers_.push_back({zeros<T>({slots, capacity, kv_heads, k_dim}, device),
                           zeros<T>({slots, capacity, kv_heads, v_dim}, device)});
    return c;
  }

  // The MLA latent cache: per layer one tensor [slots, capacity, 1, latent_dim + rope_dim] of
  // [c | k_pe]; v is the view of its first latent_dim columns.
  static KVCache latent(std::int64_t layers, std::int64_t slots, std::int64_t capacity, std::int64_t latent_dim,
                        std::int64_t rope_dim, Device device) {
    check_sizes("KVCache::latent", layers, slots, capacity, 1, latent_dim + rope_dim, latent_dim);
    check(rope_dim >= 0, "KVCache::latent", "rope_dim must be >= 0, got ", rope_dim);
    KVCache c(slots, capacity);
    for (std::int64_t l = 0; l < layers; ++l) {
      const Tensor<T> k = zeros<T>({slots, capacity, 1, latent_dim + rope_dim}, device);
      c.layers_.push_back({k, narrow(k, 3, 0, latent_dim)});
    }
    return c;
  }

  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  std::int64_t num_slots() const { return slots_; }
  std::int64_t capacity() const { return capacity_; }
  bool defined() const { return !layers_.empty(); }

  const Layer& layer(std::int64_t i) const {
    check(i >= 0 && i < num_layers(), "KVCache", "layer ", i, " is out of range for a cache of ", num_layers(),
          " layers");
    return layers_[static_cast<std::size_t>(i)];
  }

  // Bytes held (a latent cache's v shares k's memory).
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const Layer& l : layers_)
      n += (l.k.numel() + (l.v.storage() == l.k.storage() ? 0 : l.v.numel())) * static_cast<std::int64_t>(sizeof(T));
    return n;
  }

  // Checks that a model of `layers` layers may use this cache.
  void check_layers(const char* op, std::int64_t layers) const {
    check(defined() && num_layers() == layers, op, "the cache holds ", num_layers(), " layers, the model has ",
          layers, " (make the cache with the model's make_decode_cache)");
  }

 private:
  KVCache(std::int64_t slots, std::int64_t capacity) : slots_(slots), capacity_(capacity) {}

  static void check_sizes(const char* op, std::int64_t layers, std::int64_t slots, std::int64_t capacity,
                          std::int64_t kv_heads, std::int64_t k_dim, std::int64_t v_dim) {
    check(layers >= 0 && slots > 0 && capacity > 0 && kv_heads > 0 && k_dim > 0 && v_dim > 0, op,
          "sizes must be positive (layers >= 0): layers ", layers, ", slots ", slots, ", capacity ", capacity,
          ", kv_heads ", kv_heads, ", k_dim ", k_dim, ", v_dim ", v_dim);
  }

  std::vector<Layer> layers_;
  std::int64_t slots_ = 0, capacity_ = 0;
};

// t + k for an int64 index tensor, on its device, without a host round trip. The device
// elementwise kernels are floating-point only, so on a GPU the sum runs in double (exact for
// |values| < 2^53) between two casts: a few tiny launches, no synchronisation.
inline Tensor<std::int64_t> add_index(const Tensor<std::int64_t>& t, std::int64_t k) {
  check_defined("add_index", t);
  if (!t.device().is_cpu()) return cast<std::int64_t>(add(cast<double>(t), static_cast<double>(k)));
  const Tensor<std::int64_t> c = contiguous(t);
  Tensor<std::int64_t> out(c.shape());
  for (std::int64_t i = 0; i < c.numel(); ++i) out.data()[i] = c.data()[i] + k;
  return out;
}

// The rows of one decode step: n sequences, one new token each. Device tensors [n] int64.
struct DecodeIndex {
  Tensor<std::int64_t> slots;      // the cache slot of each row
  Tensor<std::int64_t> positions;  // the new token's position = the tokens cached before it
  Tensor<std::int64_t> lengths;    // positions + 1: the keys the row's query attends over, its own included

  // The index of rows at `positions` of `slots` (lengths computed on the device).
  static DecodeIndex at(const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& positions) {
    check_defined("DecodeIndex", slots, positions);
    check(slots.dim() == 1 && positions.shape() == slots.shape() && slots.device() == positions.device(),
          "DecodeIndex", "slots and positions must be [n] on one device, got shapes ", slots.shape(), " and ",
          positions.shape());
    return {slots, positions, add_index(positions, 1)};
  }

  // The step after this one: every row one token further (its new token sits at `lengths`).
  DecodeIndex next() const { return {slots, lengths, add_index(lengths, 1)}; }

  std::int64_t size() const { return slots.defined() ? slots.size(0) : 0; }
};

// Where a prefill writes: prompts ids [B, S], right-padded (row b's true length lengths[b] <= S),
// go to R target slots; target r takes prompt rows[r] (several targets may take one prompt: the
// G samples of a GRPO group share their prompt's keys, computed once). Device tensors.
struct PrefillIndex {
  std::int64_t batch = 0, seq = 0;   // B, S of the padded prompts
  Tensor<std::int64_t> slots;        // [R] the target slots (distinct)
  Tensor<std::int64_t> rows;         // [R] the prompt row each target takes
  Tensor<std::int64_t> starts;       // [R] zeros: prompts are written from position 0
  Tensor<std::int64_t> last;         // [R] rows[r]·S + lengths[rows[r]] − 1: the flat [B·S] index of
                                     //     the target's last prompt token, whose logits predict token 1
  bool identity = false;             // rows == 0..B−1: the values need no gathering

  std::int64_t size() const { return slots.defined() ? slots.size(0) : 0; }

  // Checked on the host, then uploaded once (one packed copy): lengths [B] in [1, S]; slots [R]
  // distinct in [0, num_slots); rows [R] in [0, B) (empty: 0..B−1, R = B).
  static PrefillIndex make(const std::vector<std::int64_t>& lengths, std::int64_t S,
                           const std::vector<std::int64_t>& slots, std::vector<std::int64_t> rows,
                           std::int64_t num_slots, Device device) {
    const char* op = "PrefillIndex";
    const auto B = static_cast<std::int64_t>(lengths.size());
    check(B > 0 && S > 0, op, "needs at least one prompt of at least one token, got B = ", B, ", S = ", S);
    for (std::int64_t b = 0; b < B; ++b)
      check(lengths[static_cast<std::size_t>(b)] >= 1 && lengths[static_cast<std::size_t>(b)] <= S, op,
            "prompt ", b, " has length ", lengths[static_cast<std::size_t>(b)], ", outside [1, S = ", S, "]");
    if (rows.empty())
      for (std::int64_t b = 0; b < B; ++b) rows.push_back(b);
    const auto R = static_cast<std::int64_t>(slots.size());
    check(static_cast<std::int64_t>(rows.size()) == R, op, "slots (", R, ") and rows (", rows.size(),
          ") must have one entry per target");
    std::vector<char> used(static_cast<std::size_t>(std::max<std::int64_t>(num_slots, 0)), 0);
    bool identity = R == B;
    std::vector<std::int64_t> packed(static_cast<std::size_t>(4 * R));
    for (std::int64_t r = 0; r < R; ++r) {
      const std::int64_t s = slots[static_cast<std::size_t>(r)], b = rows[static_cast<std::size_t>(r)];
      check(s >= 0 && s < num_slots, op, "slot ", s, " of target ", r, " is outside the cache's ", num_slots,
            " slots");
      check(!used[static_cast<std::size_t>(s)], op, "slot ", s, " is the target of two prompts");
      used[static_cast<std::size_t>(s)] = 1;
      check(b >= 0 && b < B, op, "row ", b, " of target ", r, " is outside the ", B, " prompts");
      identity = identity && b == r;
      packed[static_cast<std::size_t>(r)] = s;
      packed[static_cast<std::size_t>(R + r)] = b;
      packed[static_cast<std::size_t>(2 * R + r)] = 0;
      packed[static_cast<std::size_t>(3 * R + r)] = b * S + lengths[static_cast<std::size_t>(b)] - 1;
    }
    const auto all = Tensor<std::int64_t>::from_vector(packed, {4, R}, device);
    auto row = [&](std::int64_t i) { return reshape(narrow(all, 0, i, 1), {R}); };
    return {B, S, row(0), row(1), row(2), row(3), identity};
  }
};

// Writes a prefill's per-token cache rows, values [B, S, row...] (row = the cache's trailing
// dims), to the targets of `index` at positions 0..S−1. Positions past a prompt's length receive
// padding's rows; decoding overwrites each of them before any query reads it.
template <class T>
void write_prompt(const Tensor<T>& cache, const PrefillIndex& index, const Tensor<T>& values) {
  check_defined("write_prompt", cache, values);
  check(values.dim() >= 2 && values.size(0) == index.batch && values.size(1) == index.seq, "write_prompt",
        "values of shape ", values.shape(), " are not [B, S, ...] for prompts [", index.batch, ", ", index.seq, "]");
  cache_write(cache, index.slots, index.starts, index.identity ? values : index_select(values, 0, index.rows));
}

}  // namespace kiln::infer
