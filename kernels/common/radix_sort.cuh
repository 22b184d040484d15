// A stable LSD radix sort of (key, value) pairs on the device: 64-bit unsigned keys, int64
// values. It is what makes the scatter-adds deterministic without float atomics: index_add and
// scatter_add (kernels/gather/) sort (destination, source position) pairs by destination, and since
// the pairs enter in ascending source position and the sort is stable, every destination then reads
// its sources in ascending position order — the CPU kernels' order of summation. topk's path for
// long rows with large k (kernels/topk/) sorts (score, position) pairs the same way.
//
// Algorithm: one pass per 8-bit digit of the key, least significant first (only as many digits as
// the largest key needs). Each pass:
//   1. radix_histogram: each block counts the digits of its tile of 2048 pairs (shared-memory
//      integer atomics: the counts, not their order, matter) into hist[digit][tile];
//   2. exclusive_scan over hist, digit-major: the first output slot of each (digit, tile);
//   3. radix_scatter: each block ranks its pairs stably within the tile and writes them out.
// The stable in-tile rank: warp w owns 256 consecutive pairs of the tile and walks them 32 at a
// time; __match_any_sync finds the lanes holding the same digit, so a pair's rank among its warp's
// equal digits is (pairs already counted for that digit) + (equal lanes below it). Per-warp counts
// then turn into per-warp bases (tile offset + counts of the warps before), in warp order. So the
// output order is digit, then tile, then warp, then round, then lane: the input order.
//
// Memory traffic per pass: keys read twice, values once, both written once: 40 B per pair. The
// scatter writes are not coalesced (pairs go to their digit's bucket), which at these sizes
// (thousands to a few million pairs) costs less than the launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/scan.cuh"

namespace kiln::kernels {

inline constexpr int kSortThreads = 256;
inline constexpr int kSortItems = 8;  // pairs per thread: each warp owns 32 * 8 consecutive pairs
inline constexpr int kSortTile = kSortThreads * kSortItems;
inline constexpr int kRadixBits = 8;
inline constexpr int kRadixBins = 1 << kRadixBits;
static_assert(kSortThreads == kRadixBins, "one thread per digit in the per-tile bookkeeping");

static __global__ void __launch_bounds__(kSortThreads) radix_histogram(const std::uint64_t* __restrict__ keys, std::int64_t n,
                                                                 int shift, std::int64_t* __restrict__ hist) {
  __shared__ unsigned counts[kRadixBins];
  counts[threadIdx.x] = 0;
  __syncthreads();
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kSortTile;
#pragma unroll
  for (int r = 0; r < kSortItems; ++r) {
    const std::int64_t i = first + r * kSortThreads + threadIdx.x;
    if (i < n) atomicAdd(&counts[(keys[i] >> shift) & (kRadixBins - 1)], 1u);
  }
  __syncthreads();
  hist[static_cast<std::int64_t>(threadIdx.x) * gridDim.x + blockIdx.x] = counts[threadIdx.x];
}

static __global__ void __launch_bounds__(kSortThreads) radix_scatter(const std::uint64_t* __restrict__ keys_in,
                                                               const std::int64_t* __restrict__ values_in,
                                                               std::uint64_t* __restrict__ keys_out,
                                                               std::int64_t* __restrict__ values_out, std::int64_t n,
                                                               int shift, const std::int64_t* __restrict__ offsets) {
  constexpr int kWarps = kSortThreads / 32;
  // Per warp and digit: first the number of pairs seen so far, later the output slot of the first.
  __shared__ std::int64_t slot[kWarps][kRadixBins];
  for (int i = threadIdx.x; i < kWarps * kRadixBins; i += kSortThreads) (&slot[0][0])[i] = 0;
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned below = (1u << lane) - 1u;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kSortTile + warp * (32 * kSortItems) + lane;
  std::uint64_t key[kSortItems];
  std::int64_t value[kSortItems];
  unsigned digit[kSortItems];
  int rank[kSortItems];
#pragma unroll
  for (int r = 0; r < kSortItems; ++r) {
    const std::int64_t i = first + 32 * r;
    const bool valid = i < n;
    key[r] = valid ? keys_in[i] : 0;
    value[r] = valid ? values_in[i] : 0;
    digit[r] = valid ? static_cast<unsigned>((key[r] >> shift) & (kRadixBins - 1)) : kRadixBins;  // past-the-end: own group
    const unsigned peers = __match_any_sync(0xffffffffu, digit[r]);
    int seen = 0;
    if (valid) seen = static_cast<int>(slot[warp][digit[r]]);
    rank[r] = seen + __popc(peers & below);
    __syncwarp();
    if (valid && lane == __ffs(peers) - 1) slot[warp][digit[r]] = seen + __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  {
    const int d = threadIdx.x;  // one thread per digit
    std::int64_t next = offsets[static_cast<std::int64_t>(d) * gridDim.x + blockIdx.x];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const std::int64_t count = slot[w][d];
      slot[w][d] = next;
      next += count;
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kSortItems; ++r) {
    if (digit[r] < kRadixBins) {
      const std::int64_t at = slot[warp][digit[r]] + rank[r];
      keys_out[at] = key[r];
      values_out[at] = value[r];
    }
  }
}

// Number of bits needed to write every value in [0, max_value]: the key bits a sort must look at.
inline int bits_for(std::uint64_t max_value) {
  int bits = 0;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

// Sorts the n pairs (keys[i], values[i]) by the low `bits` bits of the key, stably. keys and
// values are int64 tensors (keys read as unsigned) of n elements on `device`; on return they hold
// the sorted pairs (the handles may point at what were the scratch buffers).
inline void radix_sort_pairs(Tensor<std::int64_t>& keys, Tensor<std::int64_t>& values, std::int64_t n, int bits,
                             int device, cudaStream_t stream) {
  if (n <= 1 || bits <= 0) return;
  const std::int64_t tiles = (n + kSortTile - 1) / kSortTile;
  Tensor<std::int64_t> keys_alt({n}, Device::cuda(device)), values_alt({n}, Device::cuda(device));
  Tensor<std::int64_t> hist({tiles * kRadixBins}, Device::cuda(device));
  for (int shift = 0; shift < bits; shift += kRadixBits) {
    const auto* k_in = reinterpret_cast<const std::uint64_t*>(keys.data());
    radix_histogram<<<static_cast<unsigned>(tiles), kSortThreads, 0, stream>>>(k_in, n, shift, hist.data());
    KILN_CUDA_CHECK_LAUNCH();
    exclusive_scan(hist.data(), tiles * kRadixBins, device, stream);
    radix_scatter<<<static_cast<unsigned>(tiles), kSortThreads, 0, stream>>>(
        k_in, values.data(), reinterpret_cast<std::uint64_t*>(keys_alt.data()), values_alt.data(), n, shift,
        hist.data());
    KILN_CUDA_CHECK_LAUNCH();
    std::swap(keys, keys_alt);
    std::swap(values, values_alt);
  }
}

}  // namespace kiln::kernels
