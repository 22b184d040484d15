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

}  // namespace kiln::kernels::attention
