// CPU reference of the KV-cache kernels (front-ends ops/decode_attention.hpp and, for the paged
// layout, ops/paged_attention.hpp; CUDA kernels kernels/decode_attention/): plain loops, accumulation in double (float inputs) or in the input
// type's compute type widened to double, softmax with the running maximum subtracted.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::cpu {

inline void cache_write(std::uint8_t* cache, const std::uint8_t* values, const std::int64_t* slots,
                        const std::int64_t* positions, std::int64_t count, std::int64_t steps, std::int64_t row_bytes,
                        std::int64_t capacity) {
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t s = 0; s < steps; ++s)
      std::memcpy(cache + ((slots[a] * capacity) + positions[a] + s) * row_bytes, values + (a * steps + s) * row_bytes,
                  static_cast<std::size_t>(row_bytes));
}

// Attention of new query tokens over cached keys and values, whatever the cache's layout or
// storage: q [count, queries, heads, dk] -> out [count, queries, heads, dv]; query t of row a sits
// at position lengths[a] − queries + t and attends the tokens j <= its position (causal among the
// row's queries: MTP's second token sees the first). The cache is read through two callbacks:
// dot(a, j, kv_head, q_row) = q_row · k_j (double) and add_value(a, j, kv_head, p, acc), acc += p v_j
// (double [dv]), so that one loop serves rows of the model's type (attend_cached) and FP8 latent
// rows dequantized as they are read (fp8_latent_decode_attention).
struct CachedAttentionShape {
  std::int64_t count = 0;
  int queries = 1, heads = 1, kv_heads = 1, dk = 0, dv = 0;
  std::int64_t k_head_stride = 0, v_head_stride = 0;
};

template <class T, class Dot, class AddValue>
void attend_tokens(T* out, const T* q, const std::int64_t* lengths, const CachedAttentionShape& s, Dot dot,
                   AddValue add_value, double scale) {
  const int group = s.heads / s.kv_heads;
  const std::int64_t per_row = static_cast<std::int64_t>(s.queries) * s.heads;
  parallel_for(s.count * per_row, 64 * (s.dk + s.dv), [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> score;
    std::vector<double> acc(static_cast<std::size_t>(s.dv));
    for (std::int64_t ah = begin; ah < end; ++ah) {
      const std::int64_t a = ah / per_row;
      const int t = static_cast<int>((ah / s.heads) % s.queries);
      const int h = static_cast<int>(ah % s.heads), kvh = h / group;
      const std::int64_t L = lengths[a] - (s.queries - 1 - t);
      const T* qa = q + ah * s.dk;
      score.assign(static_cast<std::size_t>(L), 0.0);
      double m = -INFINITY;
      for (std::int64_t j = 0; j < L; ++j) {
        const double x = dot(a, j, kvh, qa) * scale;
        score[static_cast<std::size_t>(j)] = x;
        m = std::max(m, x);
      }
      double total = 0.0;
      for (double& x : score) total += (x = std::exp(x - m));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t j = 0; j < L; ++j) add_value(a, j, kvh, score[static_cast<std::size_t>(j)] / total, acc.data());
      T* o = out + ah * s.dv;
      for (int d = 0; d < s.dv; ++d) o[d] = convert<T>(acc[static_cast<std::size_t>(d)]);
    }
  });
}

// attend_tokens over caches of the model's type: key_row(a, j) and value_row(a, j) give the
// element offset of token j of batch row a (kv head 0) in k and v.
template <class T, class KeyRow, class ValueRow>
void attend_cached(T* out, const T* q, const T* k, const T* v, const std::int64_t* lengths,
                   const CachedAttentionShape& s, KeyRow key_row, ValueRow value_row, double scale) {
  attend_tokens(
      out, q, lengths, s,
      [&](std::int64_t a, std::int64_t j, int kvh, const T* qa) {
        const T* kj = k + key_row(a, j) + kvh * s.k_head_stride;
        double dot = 0.0;
        for (int d = 0; d < s.dk; ++d) dot += static_cast<double>(qa[d]) * static_cast<double>(kj[d]);
        return dot;
      },
      [&](std::int64_t a, std::int64_t j, int kvh, double p, double* acc) {
        const T* vj = v + value_row(a, j) + kvh * s.v_head_stride;
        for (int d = 0; d < s.dv; ++d) acc[d] += p * static_cast<double>(vj[d]);
      },
      scale);
}

struct DecodeAttentionShape {
  std::int64_t count = 0;
  int heads = 1, kv_heads = 1, dk = 0, dv = 0;
  std::int64_t k_slot_stride = 0, k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_slot_stride = 0, v_row_stride = 0, v_head_stride = 0;
};

// One query per row over a contiguous cache [slots, capacity, kv_heads, d].
template <class T>
void decode_attention(T* out, const T* q, const T* k, const T* v, const std::int64_t* slots,
                      const std::int64_t* lengths, const DecodeAttentionShape& s, double scale) {
  attend_cached(
      out, q, k, v, lengths, CachedAttentionShape{s.count, 1, s.heads, s.kv_heads, s.dk, s.dv, s.k_head_stride, s.v_head_stride},
      [&](std::int64_t a, std::int64_t j) { return slots[a] * s.k_slot_stride + j * s.k_row_stride; },
      [&](std::int64_t a, std::int64_t j) { return slots[a] * s.v_slot_stride + j * s.v_row_stride; }, scale);
}

// A paged cache: blocks [num_blocks, block_tokens, kv_heads, d]; token j of the sequence in slot
// slots[a] lives in block table[slots[a]·max_blocks + j / block_tokens], row j % block_tokens.
struct PagedCacheShape {
  std::int64_t block_tokens = 0, max_blocks = 0;
  std::int64_t k_block_stride = 0, k_row_stride = 0, v_block_stride = 0, v_row_stride = 0;
};

template <class T>
void paged_decode_attention(T* out, const T* q, const T* k, const T* v, const std::int64_t* table,
                            const std::int64_t* slots, const std::int64_t* lengths, const CachedAttentionShape& s,
                            const PagedCacheShape& p, double scale) {
  auto block_of = [&](std::int64_t a, std::int64_t j) { return table[slots[a] * p.max_blocks + j / p.block_tokens]; };
  attend_cached(
      out, q, k, v, lengths, s,
      [&](std::int64_t a, std::int64_t j) { return block_of(a, j) * p.k_block_stride + (j % p.block_tokens) * p.k_row_stride; },
      [&](std::int64_t a, std::int64_t j) { return block_of(a, j) * p.v_block_stride + (j % p.block_tokens) * p.v_row_stride; },
      scale);
}

// Rows [count, steps, row] to positions positions[a] + s of the sequences in slots[a] of a paged
// cache [num_blocks, block_tokens, row] (row_bytes each).
inline void paged_cache_write(std::uint8_t* blocks, const std::uint8_t* values, const std::int64_t* table,
                              const std::int64_t* slots, const std::int64_t* positions, std::int64_t count,
                              std::int64_t steps, std::int64_t row_bytes, std::int64_t block_tokens,
                              std::int64_t max_blocks) {
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t s = 0; s < steps; ++s) {
      const std::int64_t p = positions[a] + s;
      const std::int64_t block = table[slots[a] * max_blocks + p / block_tokens];
      std::memcpy(blocks + (block * block_tokens + p % block_tokens) * row_bytes, values + (a * steps + s) * row_bytes,
                  static_cast<std::size_t>(row_bytes));
    }
}

}  // namespace kiln::cpu
