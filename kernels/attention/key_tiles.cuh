// Which keys a block of queries attends, shared by the forward kernels (attention.cuh's plain one,
// attention_hopper.cuh) and the dQ kernel: query i sees keys seq_begin(i) .. i, so a block of
// queries [q0, q0 + rows) sees the key tiles from the one holding its first row's sequence start
// (sequence starts never decrease along the row) to the one holding its last row. Tiles before
// last_begin or reaching past a row need the mask (RowBounds, scale_and_mask below); the others
// are wholly visible.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/kernels/attention/args.hpp"
#include "kiln/kernels/common/online_softmax.cuh"

namespace kiln::kernels::attention {

__device__ __forceinline__ std::int64_t seq_begin_of(const AttentionShapeArgs& s, std::int64_t i) {
  return s.seq_begin ? s.seq_begin[i] : 0;
}
__device__ __forceinline__ std::int64_t seq_end_of(const AttentionShapeArgs& s, std::int64_t i) {
  return s.seq_end ? s.seq_end[i] : s.seq;
}

struct KeyTiles {
  std::int64_t first, last;  // the first and the last key tile's first key (multiples of the tile size)
  std::int64_t last_begin;   // the sequence start of the block's last query: the largest of the block
};

// The key tiles of `tile` keys that queries [q0, q0 + rows) see (q0 < S).
__device__ __forceinline__ KeyTiles key_tiles(const AttentionShapeArgs& s, std::int64_t q0, int rows, int tile) {
  const std::int64_t q_last = (q0 + rows < s.seq ? q0 + rows : s.seq) - 1;
  return {seq_begin_of(s, q0) / tile * tile, q_last / tile * tile, seq_begin_of(s, q_last)};
}

// The visible columns of a thread's two accumulator rows in a key tile at n0, for the wgmma/mma.sync
// C layout: the thread holds rows g and g + 8 (r = 0, 1) and columns 2t + 8c + j (j < 2), element
// i = 4c + 2r + j. Row r sees keys first[r] .. last[r]: column c is visible iff lo <= c <= hi, with
// lo = first - n0 and hi = last - n0 clamped into [-1, 2^30] (which keeps every comparison with a
// column index 0 <= c < 2^30 unchanged) and kept less 2t, so that the test of element i is two
// 32-bit compares against constants. (The key index in 64 bits took two instructions to form and
// two to compare, twice: in the SASS of the Hopper forward, with the mask if-converted into every
// tile, about a third of all instructions issued.)
struct RowBounds {
  int lo[2], hi[2];
  __device__ __forceinline__ bool visible(int i) const {
    const int r = (i >> 1) & 1, c = 8 * (i >> 2) + (i & 1);
    return c >= lo[r] && c <= hi[r];
  }
};
__device__ __forceinline__ RowBounds row_bounds(const std::int64_t (&first)[2], const std::int64_t (&last)[2],
                                                std::int64_t n0, int t) {
  constexpr std::int64_t kBig = std::int64_t(1) << 30;
  const auto clamp = [](std::int64_t x) { return static_cast<int>(x < -1 ? -1 : x > kBig ? kBig : x); };
  RowBounds b;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    b.lo[r] = clamp(first[r] - n0) - 2 * t;
    b.hi[r] = clamp(last[r] - n0) - 2 * t;
  }
  return b;
}

// Scores of one tile in the C layout above, flat (element i = 4c + 2r + j; mma.sync's [N / 8][4]
// fragments hold the same order) -> x = s·scale·log2 e, −inf where the column is not visible
// (MASKED: instantiated apart, so that the compiler does not if-convert the mask into every tile);
// mt: the thread's maximum for each of its two rows. Shared by the plain and the Hopper forward.
template <bool MASKED, int N>
__device__ __forceinline__ void scale_and_mask(float (&sc)[N / 2], float (&mt)[2], float scale_log2,
                                               const RowBounds& bounds) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    float x = sc[i] * scale_log2;
    if constexpr (MASKED) {
      if (!bounds.visible(i)) x = -INFINITY;
    }
    sc[i] = x;
    mt[(i >> 1) & 1] = ::fmaxf(mt[(i >> 1) & 1], x);
  }
}

// The two halves of softmax_update below, apart for the decode kernel whose two consumers exchange
// the row maxima between them (decode_attention/decode_attention_seesaw.cuh). softmax_maxima: one
// tile's scores in the C layout above scaled and masked in place (base-2 domain), the row maxima m
// raised to cover them (the quad's four lanes share a row), l scaled by alpha = 2^(m_old − m_new),
// and base = the new maxima, 0 for a row with nothing visible yet (its p stay 0).
template <bool MASKED, int N>
__device__ __forceinline__ void softmax_maxima(float (&sc)[N / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               float (&base)[2], const RowBounds& bounds, float scale_log2) {
  float mt[2] = {-INFINITY, -INFINITY};
  scale_and_mask<MASKED, N>(sc, mt, scale_log2, bounds);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float x = mt[r];
    x = ::fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = ::fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    const float m_new = ::fmaxf(m[r], x);
    base[r] = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = exp2_approx(m[r] - base[r]);
    m[r] = m_new;
    l[r] *= alpha[r];
  }
}
// softmax_exponentials: the scaled scores -> p = 2^(x − base) in place, added to the row sums l.
template <int N>
__device__ __forceinline__ void softmax_exponentials(float (&sc)[N / 2], float (&l)[2], const float (&base)[2]) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float p = exp2_approx(sc[i] - base[(i >> 1) & 1]);
    sc[i] = p;
    l[(i >> 1) & 1] += p;
  }
}

// One tile's scores in the C layout above -> unnormalised probabilities in place, in the base-2
// domain: scaled, masked (MASKED: columns outside the rows' bounds; instantiated apart so that the
// compiler does not if-convert the mask into every tile), the row maxima m and sums l updated (the
// row's four lanes, a quad, share them). alpha = 2^(m_old - m_new) is the factor the output
// accumulator still has to be scaled by; it is returned rather than applied because the
// accumulator's previous product may be in flight. Five instructions an element unmasked. Shared
// by the Hopper forward (attention_hopper.cuh, N = 128 keys) and the Hopper decode kernel
// (decode_attention/decode_attention_hopper.cuh, N = 64).
template <bool MASKED, int N>
__device__ __forceinline__ void softmax_update(float (&sc)[N / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               const RowBounds& bounds, float scale_log2) {
  float base[2];
  softmax_maxima<MASKED, N>(sc, m, l, alpha, base, bounds, scale_log2);
  softmax_exponentials<N>(sc, l, base);
}

}  // namespace kiln::kernels::attention
