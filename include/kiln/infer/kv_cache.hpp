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
//   MLA in FP8 (KVCache::latent with CacheFormat::fp8): the same rows with c in e4m3 and one
//     FP32 scale per 128 values, k_pe in the model's type (ops/latent_fp8_cache.hpp: three tensors
//     per layer, Layer::fp8; k and v stay undefined): 328 bytes a token and layer at r = 256,
//     dr = 32 in bf16, against 576. Written through write_latent (which quantizes), read through
//     attend_cached(_tokens) (which dequantize as they read).
// The memory is zeroed once; positions at or past a sequence's length are never read
// (decode_attention attends over j < lengths[a]), so stale rows of finished sequences or padding
// need no clearing.
//
// Two layouts of the same rows (CacheLayout):
//   contiguous  [slots, capacity, kv_heads, dim]: one slot of `capacity` rows per sequence;
//   paged       [num_blocks, block_tokens, kv_heads, dim]: a pool of blocks, and one block table
//               [sequences, max_blocks] int64 shared by every layer (ops/paged_attention.hpp):
//               token j of sequence s in block table[s, j / block_tokens]. The table is one
//               device tensor for the cache's lifetime (a CUDA graph reads it at a fixed
//               address); the engine's BlockAllocator (infer/block_allocator.hpp) decides which
//               blocks a sequence holds, and set_block_table() copies its table in when it changes.
// A "slot" in the index tensors below is a sequence: a row of the block table when paged. The
// models write through write_cache_rows (ops/paged_attention.hpp) / write_latent and attend
// through attend_cached, which take either layout.
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
#include "kiln/ops/latent_cache_write.hpp"
#include "kiln/ops/latent_fp8_cache.hpp"
#include "kiln/ops/paged_attention.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/infer/block_allocator.hpp"

namespace kiln::infer {

// How a cache lays out its rows: `sequences` sequences of up to `capacity` tokens each, either
// contiguous (one slot of capacity rows each) or paged (block_tokens > 0: a pool of num_blocks
// blocks, a sequence holding at most ceil(capacity / block_tokens) of them).
struct CacheLayout {
  std::int64_t sequences = 0, capacity = 0;
  std::int64_t block_tokens = 0;  // 0: contiguous
  std::int64_t num_blocks = 0;    // paged: blocks in the pool

  static CacheLayout contiguous(std::int64_t sequences, std::int64_t capacity) { return {sequences, capacity, 0, 0}; }
  static CacheLayout paged(std::int64_t sequences, std::int64_t capacity, std::int64_t block_tokens,
                           std::int64_t num_blocks) {
    return {sequences, capacity, block_tokens, num_blocks};
  }

  bool is_paged() const { return block_tokens > 0; }
  std::int64_t max_blocks() const { return is_paged() ? (capacity + block_tokens - 1) / block_tokens : 0; }
  // The leading dims of a cache tensor: [slots, capacity] or [num_blocks, block_tokens].
  std::int64_t rows_dim0() const { return is_paged() ? num_blocks : sequences; }
  std::int64_t rows_dim1() const { return is_paged() ? block_tokens : capacity; }

  void check(const char* op) const {
    kiln::check(sequences > 0 && capacity > 0 && block_tokens >= 0 && (!is_paged() || num_blocks > 0), op,
                "needs slots (sequences) > 0, capacity > 0 and, paged, block_tokens > 0 and num_blocks > 0; got slots ",
                sequences, ", capacity ", capacity, ", block_tokens ", block_tokens, ", num_blocks ", num_blocks);
  }
};

// How an MLA latent cache stores its rows: in the model's type, or the latent in FP8 (above).
enum class CacheFormat { model, fp8 };

template <class T>
class KVCache {
 public:
  struct Layer {
    Tensor<T> k;  // [slots, capacity, kv_heads, k_dim] or [num_blocks, block_tokens, ...], contiguous
    Tensor<T> v;  // likewise with v_dim; for MLA a view of k's first v_dim columns
    Tensor<std::int64_t> table;  // paged: the cache's block table [sequences, max_blocks]; else undefined
    Fp8LatentCache<T> fp8;       // CacheFormat::fp8: the latent cache's rows (k and v undefined then)
  };

  KVCache() = default;

  // Separate keys and values (Llama): per layer k [..., kv_heads, k_dim] and v [..., kv_heads, v_dim].
  static KVCache separate(std::int64_t layers, const CacheLayout& layout, std::int64_t kv_heads, std::int64_t k_dim,
                          std::int64_t v_dim, Device device) {
    check_sizes("KVCache::separate", layers, layout, kv_heads, k_dim, v_dim);
    KVCache c(layout, device);
    const std::int64_t d0 = layout.rows_dim0(), d1 = layout.rows_dim1();
    for (std::int64_t l = 0; l < layers; ++l)
      c.layers_.push_back({zeros<T>({d0, d1, kv_heads, k_dim}, device), zeros<T>({d0, d1, kv_heads, v_dim}, device),
                           c.table_, {}});
    return c;
  }
  static KVCache separate(std::int64_t layers, std::int64_t slots, std::int64_t capacity, std::int64_t kv_heads,
                          std::int64_t k_dim, std::int64_t v_dim, Device device) {
    return separate(layers, CacheLayout::contiguous(slots, capacity), kv_heads, k_dim, v_dim, device);
  }

  // The MLA latent cache: per layer one tensor [..., 1, latent_dim + rope_dim] of [c | k_pe]; v is
  // the view of its first latent_dim columns. CacheFormat::fp8: per layer the FP8 rows instead.
  static KVCache latent(std::int64_t layers, const CacheLayout& layout, std::int64_t latent_dim, std::int64_t rope_dim,
                        Device device, CacheFormat format = CacheFormat::model) {
    check_sizes("KVCache::latent", layers, layout, 1, latent_dim + rope_dim, latent_dim);
    check(rope_dim >= 0, "KVCache::latent", "rope_dim must be >= 0, got ", rope_dim);
    // Before any prefill: a GPU decode step could not read an FP8 cache the kernel does not take.
    if (format == CacheFormat::fp8 && !device.is_cpu())
      detail::check_fp8_latent_gpu_shape<T>("KVCache::latent", latent_dim, rope_dim);
    KVCache c(layout, device);
    for (std::int64_t l = 0; l < layers; ++l) {
      if (format == CacheFormat::fp8) {
        c.layers_.push_back({Tensor<T>(), Tensor<T>(), c.table_,
                             Fp8LatentCache<T>::zeros(layout.rows_dim0(), layout.rows_dim1(), latent_dim, rope_dim,
                                                      device)});
        continue;
      }
      const Tensor<T> k = zeros<T>({layout.rows_dim0(), layout.rows_dim1(), 1, latent_dim + rope_dim}, device);
      c.layers_.push_back({k, narrow(k, 3, 0, latent_dim), c.table_, {}});
    }
    return c;
  }
  static KVCache latent(std::int64_t layers, std::int64_t slots, std::int64_t capacity, std::int64_t latent_dim,
                        std::int64_t rope_dim, Device device) {
    return latent(layers, CacheLayout::contiguous(slots, capacity), latent_dim, rope_dim, device);
  }

  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  std::int64_t num_slots() const { return layout_.sequences; }
  std::int64_t capacity() const { return layout_.capacity; }
  const CacheLayout& layout() const { return layout_; }
  bool paged() const { return layout_.is_paged(); }
  bool defined() const { return !layers_.empty(); }
  CacheFormat format() const {
    return !layers_.empty() && layers_.front().fp8.defined() ? CacheFormat::fp8 : CacheFormat::model;
  }

  const Layer& layer(std::int64_t i) const {
    check(i >= 0 && i < num_layers(), "KVCache", "layer ", i, " is out of range for a cache of ", num_layers(),
          " layers");
    return layers_[static_cast<std::size_t>(i)];
  }

  // Paged: the block table [sequences, max_blocks] (−1: no block), copied into the cache's one
  // device table (same address, so captured graphs see it): BlockAllocator::table()'s layout.
  void set_block_table(const std::vector<std::int64_t>& table) const {
    const char* op = "KVCache::set_block_table";
    check(paged(), op, "the cache is contiguous: it has no block table");
    check(static_cast<std::int64_t>(table.size()) == table_.numel(), op, "needs ", table_.numel(),
          " entries ([", table_.size(0), ", ", table_.size(1), "]), got ", table.size());
    for (const std::int64_t b : table)
      check(b >= -1 && b < layout_.num_blocks, op, "entry ", b, " is neither a block of the ", layout_.num_blocks,
            " nor −1");
    copy_bytes(table_.data(), table_.device(), table.data(), Device::cpu(), table.size() * sizeof(std::int64_t));
  }

  // Paged: the copy-on-write a BlockAllocator asked for (its BlockCopy), in every layer's cache.
  void copy_block(const BlockCopy& c) const {
    check(paged(), "KVCache::copy_block", "the cache is contiguous: it has no blocks");
    if (c.rows == 0) return;
    for (const Layer& l : layers_) {
      if (l.fp8.defined()) {
        l.fp8.copy_block_rows(c.from, c.to, c.rows);
        continue;
      }
      copy_block_rows(l.k, c.from, c.to, c.rows);
      if (l.v.storage() != l.k.storage()) copy_block_rows(l.v, c.from, c.to, c.rows);
    }
  }

  // Bytes held (a latent cache's v shares k's memory; the block table not counted).
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const Layer& l : layers_) {
      if (l.fp8.defined()) {
        n += l.fp8.bytes();
        continue;
      }
      n += (l.k.numel() + (l.v.storage() == l.k.storage() ? 0 : l.v.numel())) * static_cast<std::int64_t>(sizeof(T));
    }
    return n;
  }

  // Checks that a model of `layers` layers may use this cache.
  void check_layers(const char* op, std::int64_t layers) const {
    check(defined() && num_layers() == layers, op, "the cache holds ", num_layers(), " layers, the model has ",
          layers, " (make the cache with the model's make_decode_cache)");
  }

 private:
  KVCache(const CacheLayout& layout, Device device) : layout_(layout) {
    if (layout.is_paged()) {
      const std::int64_t n = layout.sequences * layout.max_blocks();
      table_ = Tensor<std::int64_t>::from_vector(std::vector<std::int64_t>(static_cast<std::size_t>(n), -1),
                                                 {layout.sequences, layout.max_blocks()}, device);
    }
  }

  static void check_sizes(const char* op, std::int64_t layers, const CacheLayout& layout, std::int64_t kv_heads,
                          std::int64_t k_dim, std::int64_t v_dim) {
    layout.check(op);
    check(layers >= 0 && kv_heads > 0 && k_dim > 0 && v_dim > 0, op,
          "sizes must be positive (layers >= 0): layers ", layers, ", slots ", layout.sequences, ", capacity ",
          layout.capacity, ", kv_heads ", kv_heads, ", k_dim ", k_dim, ", v_dim ", v_dim);
  }

  std::vector<Layer> layers_;
  CacheLayout layout_;
  Tensor<std::int64_t> table_;
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

// T query tokens per row, q [n, T, heads, dk] (T = 1 or 2), over sequence slots[a]'s first
// lengths[a] cached tokens -> [n, T, heads, dv]: query t attends the tokens up to its own position
// lengths[a] − T + t. Paged, in one call (paged_decode_attention takes both); contiguous, one
// decode_attention per query with its own lengths.
template <class T>
Tensor<T> attend_cached_tokens(const Tensor<T>& q, const typename KVCache<T>::Layer& layer,
                               const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& lengths, double scale) {
  check_defined("attend_cached_tokens", q);
  check(q.dim() == 4 && (q.size(1) == 1 || q.size(1) == 2), "attend_cached_tokens",
        "needs q [n, T, heads, dk] with T = 1 or 2, got shape ", q.shape());
  if (layer.fp8.defined()) return fp8_latent_decode_attention(q, layer.fp8, layer.table, slots, lengths, scale);
  const std::int64_t n = q.size(0), tokens = q.size(1), heads = q.size(2), dv = layer.v.size(3);
  if (layer.table.defined())
    return paged_decode_attention(q, layer.k, layer.v, layer.table, slots, lengths, scale);
  std::vector<Tensor<T>> outs;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const Tensor<std::int64_t> upto = t + 1 == tokens ? lengths : add_index(lengths, t + 1 - tokens);
    const Tensor<T> qt = reshape(narrow(q, 1, t, 1), {n, heads, q.size(3)});
    outs.push_back(reshape(decode_attention(qt, layer.k, layer.v, slots, upto, scale), {n, 1, heads, dv}));
  }
  return tokens == 1 ? outs[0] : cat(outs, 1);
}

// MLA's latent rows [c | k_pe], values [n, steps, 1, r + dr], into a latent cache layer in either
// format (FP8: quantized on the way in) and layout.
template <class T>
void write_latent(const typename KVCache<T>::Layer& layer, const Tensor<std::int64_t>& slots,
                  const Tensor<std::int64_t>& positions, const Tensor<T>& values) {
  if (layer.fp8.defined()) {
    fp8_latent_cache_write(layer.fp8, layer.table, slots, positions, values);
  } else {
    write_cache_rows(layer.k, layer.table, slots, positions, values);
  }
}

// MLA's new latent rows from kv_a's output [n, steps, r + dr] (before the norm and rope; rows may be
// a slice of a wider product) into a layer's cache at (slots[a], positions[a] + s): one fused
// launch on a GPU for a cache in T (ops/latent_cache_write.hpp), the composed rows quantized by
// write_latent for the FP8 cache.
template <class T>
void write_normed_latent(const typename KVCache<T>::Layer& layer, const Tensor<std::int64_t>& slots,
                         const Tensor<std::int64_t>& positions, const Tensor<T>& kv_a, const Tensor<T>& weight,
                         double eps, const RopeTables<compute_t<T>>& tables) {
  if (layer.fp8.defined()) {
    write_latent<T>(layer, slots, positions, unsqueeze(normed_latent_rows(kv_a, weight, eps, tables), 2));
  } else {
    latent_cache_write(layer.k, layer.table, slots, positions, kv_a, weight, eps, tables);
  }
}

// One query token per row, q [n, heads, dk], over the first lengths[a] cached tokens of sequence
// slots[a] of a layer -> [n, heads, dv], in either layout.
template <class T>
Tensor<T> attend_cached(const Tensor<T>& q, const typename KVCache<T>::Layer& layer, const Tensor<std::int64_t>& slots,
                        const Tensor<std::int64_t>& lengths, double scale) {
  if (layer.fp8.defined()) {
    const Tensor<T> o = fp8_latent_decode_attention(unsqueeze(q, 1), layer.fp8, layer.table, slots, lengths, scale);
    return reshape(o, {q.size(0), q.size(1), layer.fp8.latent_dim()});
  }
  if (!layer.table.defined()) return decode_attention(q, layer.k, layer.v, slots, lengths, scale);
  const Tensor<T> o = paged_decode_attention(unsqueeze(q, 1), layer.k, layer.v, layer.table, slots, lengths, scale);
  return reshape(o, {q.size(0), q.size(1), layer.v.size(3)});
}

// The rows of one decode step: n sequences, `tokens` new tokens each (1; or 2: a token and its
// draft, speculative decoding). Device tensors [n] int64.
struct DecodeIndex {
  Tensor<std::int64_t> slots;      // the cache slot of each row
  Tensor<std::int64_t> positions;  // the first new token's position = the tokens cached before it
  Tensor<std::int64_t> lengths;    // positions + tokens: the keys the row's last query attends over, its own included
  std::int64_t tokens = 1;

  // The index of rows at `positions` of `slots` (lengths computed on the device).
  static DecodeIndex at(const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& positions,
                        std::int64_t tokens = 1) {
    check_defined("DecodeIndex", slots, positions);
    check(slots.dim() == 1 && positions.shape() == slots.shape() && slots.device() == positions.device(),
          "DecodeIndex", "slots and positions must be [n] on one device, got shapes ", slots.shape(), " and ",
          positions.shape());
    check(tokens == 1 || tokens == 2, "DecodeIndex", "takes 1 or 2 tokens per row, got ", tokens);
    return {slots, positions, add_index(positions, tokens), tokens};
  }

  // The step after this one: every row `tokens` further (its next token sits at `lengths`).
  DecodeIndex next() const { return {slots, lengths, add_index(lengths, tokens), tokens}; }

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

// The prefill's per-token cache rows for the targets of `index`: values [B, S, row...] with each
// target's prompt row (values itself when the targets are the prompts in order).
template <class T>
Tensor<T> prompt_rows(const PrefillIndex& index, const Tensor<T>& values) {
  check_defined("write_prompt", values);
  check(values.dim() >= 2 && values.size(0) == index.batch && values.size(1) == index.seq, "write_prompt",
        "values of shape ", values.shape(), " are not [B, S, ...] for prompts [", index.batch, ", ", index.seq, "]");
  return index.identity ? values : index_select(values, 0, index.rows);
}

// Writes a prefill's per-token cache rows, values [B, S, row...] (row = the cache's trailing
// dims), to the targets of `index` at positions 0..S−1 (table: the layer's block table, or
// undefined for a contiguous cache; paged, every target must hold blocks for all S positions).
// Positions past a prompt's length receive padding's rows; decoding overwrites each of them
// before any query reads it.
template <class T>
void write_prompt(const Tensor<T>& cache, const Tensor<std::int64_t>& table, const PrefillIndex& index,
                  const Tensor<T>& values) {
  check_defined("write_prompt", cache);
  write_cache_rows(cache, table, index.slots, index.starts, prompt_rows(index, values));
}

// write_prompt for MLA's latent rows [B, S, 1, r + dr], into a latent cache layer of either format.
template <class T>
void write_latent_prompt(const typename KVCache<T>::Layer& layer, const PrefillIndex& index, const Tensor<T>& values) {
  write_latent<T>(layer, index.slots, index.starts, prompt_rows(index, values));
}

}  // namespace kiln::infer
