// cache_write and paged_cache_write on CUDA (arguments kernels/decode_attention/args.hpp;
// front-ends ops/decode_attention.hpp, ops/paged_attention.hpp): scatters count × steps rows into
// a [slots, capacity, row] cache, or into the blocks of a paged cache through its block table.
//
// A pure copy: row * element_bytes bytes per (batch row, step), moved as 16-byte words when every
// row start is 16-byte aligned (the usual case: rows of 64+ bf16), else as elements. One thread
// per word, grid-stride; each thread finds its (batch row, step) with one division, and in a paged
// cache its block with one more and a table read (an L1 hit for all but the first word of a
// row). Rows whose slot, position or table entry falls outside the cache are skipped (the
// front-end cannot check device indices without a synchronisation).
#pragma once

#include <cstdint>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/decode_attention/args.hpp"

namespace kiln::kernels::decode_attention {

template <class Word>
__global__ void cache_write_kernel(CacheWriteArgs a, std::int64_t row_words) {
  const std::int64_t total = a.count * a.steps * row_words;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const std::int64_t item = i / row_words, w = i - item * row_words;  // item = a * steps + s
    const std::int64_t b = item / a.steps, s = item - b * a.steps;
    const std::int64_t slot = a.slots[b], position = a.positions[b] + s;
    if (slot < 0 || slot >= a.num_slots || position < 0 || position >= a.capacity) continue;
    std::int64_t at = slot * a.capacity + position;  // the token's row in the cache
    if (a.block_table) {
      const std::int64_t block = a.block_table[slot * a.max_blocks + position / a.block_tokens];
      if (block < 0 || block >= a.num_blocks) continue;
      at = block * a.block_tokens + position % a.block_tokens;
    }
    static_cast<Word*>(a.cache)[at * row_words + w] = static_cast<const Word*>(a.values)[item * row_words + w];
  }
}

inline void launch_cache_write(const CacheWriteArgs& a) {
  const std::int64_t row_bytes = a.row * a.element_bytes;
  if (a.count == 0 || a.steps == 0 || row_bytes == 0) return;
  check(!a.block_table || (a.block_tokens >= 1 && a.max_blocks >= 1 && a.capacity == a.max_blocks * a.block_tokens),
        "cache_write", "a paged cache needs block_tokens, max_blocks >= 1 and capacity = max_blocks x block_tokens, got ",
        a.block_tokens, ", ", a.max_blocks, ", ", a.capacity);
  cuda::DeviceGuard guard(a.launch.device);
  constexpr int threads = 256;
  auto run = [&](auto word) {
    using Word = decltype(word);
    const std::int64_t row_words = row_bytes / static_cast<std::int64_t>(sizeof(Word));
    cache_write_kernel<Word><<<blocks_for(a.count * a.steps * row_words, threads), threads, 0, a.launch.stream>>>(
        a, row_words);
    KILN_CUDA_CHECK_LAUNCH();
  };
  if (row_bytes % 16 == 0 && aligned16(a.cache) && aligned16(a.values)) return run(Vec<std::uint32_t, 4>{});
  switch (a.element_bytes) {
    case 8: return run(std::uint64_t{});
    case 4: return run(std::uint32_t{});
    case 2: return run(std::uint16_t{});
    default: return run(std::uint8_t{});
  }
}

inline const bool cache_write_registered = register_device_kernel(&launch_cache_write);

}  // namespace kiln::kernels::decode_attention
