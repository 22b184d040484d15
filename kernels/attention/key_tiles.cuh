// Which keys a block of queries attends, shared by the forward kernels (attention.cuh's plain one,
// attention_hopper.cuh) and the dQ kernel: query i sees keys seq_begin(i) .. i, so a block of
// queries [q0, q0 + rows) sees the key tiles from the one holding its first row's sequence start
// (sequence starts never decrease along the row) to the one holding its last row. Tiles before
// last_begin or reaching past a row need the mask; the others are wholly visible.
#pragma once

#include <cstdint>

#include "kiln/kernels/attention/args.hpp"

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

// The columns of a key tile starting at n0 that a row sees, in 32 bits: column c is visible iff
// lo <= c <= hi, for a row that sees keys first .. last (both clamped into [-1, 2^30], which keeps
// every comparison with a column index 0 <= c < 2^30 unchanged). Masking a tile with these costs
// two 32-bit compares against constants an element, where the key index in 64 bits took two
// instructions to form and two to compare, twice (the SASS of the Hopper forward, with the mask
// if-converted into every tile: about a third of all instructions issued).
struct VisibleCols {
  int lo, hi;
};
__device__ __forceinline__ VisibleCols visible_cols(std::int64_t first, std::int64_t last, std::int64_t n0) {
  constexpr std::int64_t kBig = std::int64_t(1) << 30;
  const auto clamp = [](std::int64_t x) { return static_cast<int>(x < -1 ? -1 : x > kBig ? kBig : x); };
  return {clamp(first - n0), clamp(last - n0)};
}

// The visible columns of a thread's two accumulator rows in a tile at n0, for the wgmma/mma.sync C
// layout: the thread holds rows g and g + 8 (r = 0, 1) and columns 2t + 8c + j (j < 2), element
// i = 4c + 2r + j. Bounds are kept less 2t, so that the test of element i compares with constants.
struct RowBounds {
  int lo[2], hi[2];
  __device__ __forceinline__ bool visible(int i) const {
    const int r = (i >> 1) & 1, c = 8 * (i >> 2) + (i & 1);
    return c >= lo[r] && c <= hi[r];
  }
};
__device__ __forceinline__ RowBounds row_bounds(const std::int64_t (&first)[2], const std::int64_t (&last)[2],
                                                std::int64_t n0, int t) {
  RowBounds b;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const VisibleCols v = visible_cols(first[r], last[r], n0);
    b.lo[r] = v.lo - 2 * t;
    b.hi[r] = v.hi - 2 * t;
  }
  return b;
}

}  // namespace kiln::kernels::attention
