// Where a new token's row goes in a KV cache, for the kernels that write one (cache_write.cuh,
// latent_write.cuh): the contiguous layout [slots, capacity, row] or the paged one (blocks of
// block_tokens rows through a block table [num_slots, max_blocks]; kernels/decode_attention/args.hpp).
#pragma once

#include <cstdint>

namespace kiln::kernels::decode_attention {

// The cache row of step s of batch row b (the token at positions[b] + s of sequence slots[b]), or
// -1 when its slot, its position or its block falls outside the cache (the index tensors stay on
// the device, so the front-ends cannot check them; such rows are skipped, never written). Args:
// CacheWriteArgs or LatentWriteArgs (the same addressing fields).
template <class Args>
__device__ __forceinline__ std::int64_t cache_row(const Args& a, std::int64_t b, std::int64_t s) {
  const std::int64_t slot = a.slots[b], position = a.positions[b] + s;
  if (slot < 0 || slot >= a.num_slots || position < 0 || position >= a.capacity) return -1;
  if (!a.block_table) return slot * a.capacity + position;
  const std::int64_t block = a.block_table[slot * a.max_blocks + position / a.block_tokens];
  if (block < 0 || block >= a.num_blocks) return -1;
  return block * a.block_tokens + position % a.block_tokens;
}

}  // namespace kiln::kernels::decode_attention
