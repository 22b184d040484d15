// The order in which a causal attention kernel's blocks start: heaviest first, in sections of heads
// whose K and V fit in L2 together. Shared by the forward and backward kernels (attention.cuh's
// plain ones, attention_hopper.cuh, attention_backward_hopper.cuh); host code too, for tests.
//
// Why. A causal kernel's blocks differ in work by up to S / tile times: the forward's block of the
// last queries reads every key tile, the first block one. The GPU starts blocks in about the order
// of their linear index as multiprocessors free up, so that order is the schedule. The grids were
// (tiles, heads, batch), heaviest tile first within each head: the last wave then held the last
// heads' heavy blocks beside light ones, and the kernel's end waited for a heavy block started
// late (at B4 H16 S2048, 1024 blocks of 1 to 16 key tiles on 132 multiprocessors, about 8 waves).
// Heaviest first over all heads (longest processing time first) leaves only light blocks for the
// end. Over all heads at once, though, the blocks running together read the K and V of as many
// heads as there are multiprocessors (132 heads of 1.3 MB at S 2048, (192, 128): more than L2's
// 50 MB), where the grid's order kept about 8 heads' at a time; a block's arithmetic intensity
// (128 flop a byte of K and V for a 128 x 128 tile at (192, 128)) is below the H100's ratio of peak
// tensor flops to HBM bandwidth (about 295), so K and V must come from L2. Hence sections: the
// heads are taken in sections of `section` slices whose K and V together take at most half of L2,
// and heaviest first within each section (FlashAttention-3's LPT scheduler does the same; Shah et
// al. 2024). The last section's light blocks end the kernel.
//
// A slice is what one block's rank is counted in: a (batch row, head) for the forward and dQ
// kernels, a (batch row, kv head) for the dK/dV kernels. Rank 0 is the heaviest block of a slice
// (the forward's and dQ's last query block, dK/dV's first key block).
#pragma once

#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD
#include "kiln/kernels/attention/args.hpp"

namespace kiln::kernels::attention {

// In 32 bits (the launchers check that the grid has fewer than 2^31 blocks): 64-bit divisions are
// subroutine calls, and the values stay in registers for the whole kernel.
struct BlockOrder {
  int rank;   // 0: the slice's heaviest block
  int slice;  // batch row · slices a row + head
};

// The block started `linear`-th of a grid of tiles x slices blocks, in sections of `section` slices
// (the last section may hold fewer).
KILN_HD inline BlockOrder heaviest_first(unsigned linear, int tiles, int slices, int section) {
  const int index = static_cast<int>(linear / static_cast<unsigned>(tiles * section)), first = index * section;
  const int width = slices - first < section ? slices - first : section;
  const int r = static_cast<int>(linear) - first * tiles;
  return {r / width, first + r % width};
}

// Slices a section: as many as keep the bytes every block of a section reads from L2 (K and V,
// or Q, dout and their statistics for dK/dV) within half of L2, at least 1 (at most l2_bytes / 2).
inline int section_slices(std::int64_t bytes_per_slice, int l2_bytes) {
  const std::int64_t n = (l2_bytes / 2) / (bytes_per_slice > 0 ? bytes_per_slice : 1);
  return n < 1 ? 1 : static_cast<int>(n);
}

// The sections of the forward and dQ kernels (slices: query heads; the query heads of a group
// share their K and V) and of the dK/dV kernels (slices: kv heads, each reading the Q, dout, lse and
// D of its group's query heads).
inline int query_head_section(const AttentionShapeArgs& s, int l2_bytes) {
  return section_slices(s.seq * (s.dk + s.dv) * 2 / (s.heads / s.kv_heads), l2_bytes);
}
inline int kv_head_section(const AttentionShapeArgs& s, int l2_bytes) {
  return section_slices(s.seq * ((s.dk + s.dv) * 2 + 8) * (s.heads / s.kv_heads), l2_bytes);
}

}  // namespace kiln::kernels::attention
