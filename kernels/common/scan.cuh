// Exclusive prefix sums of int64 arrays on the device: the digit offsets of the radix sort
// (kernels/common/radix_sort.cuh) and the slot of each selected element in topk's sort-based path
// (kernels/topk/topk.cuh).
//
// Algorithm (reduce, then scan): the array is cut into tiles of 2048 (256 threads x 8 items).
// One kernel sums each tile; the tile sums are scanned by the same routine (recursively: a
// single tile needs no second level); a second kernel scans each tile in shared registers and adds
// its tile's offset. A thread owns 8 consecutive items, so the block-wide step is one scan over
// 256 thread totals: warp shuffles, then one warp over the 8 warp totals.
//
// Memory traffic: 8 B read (sums) + 8 B read + 8 B written (scan) per element, 3 launches per
// level. The arrays scanned here are small (256 counters per 2048 sorted items), so launch
// latency, not bandwidth, is what this costs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"

namespace kiln::kernels {

inline constexpr int kScanThreads = 256;
inline constexpr int kScanItems = 8;
inline constexpr int kScanTile = kScanThreads * kScanItems;

// Exclusive scan of one value per thread over a block of THREADS threads; `total` receives the
// block's sum. Every thread of the block must call it.
template <int THREADS>
__device__ std::int64_t block_exclusive_scan(std::int64_t value, std::int64_t& total) {
  constexpr int kWarps = THREADS / 32;
  __shared__ std::int64_t warp_sums[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  std::int64_t inclusive = value;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const std::int64_t up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    std::int64_t w = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const std::int64_t up = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += up;
    }
    if (lane < kWarps) warp_sums[lane] = w;
  }
  __syncthreads();
  const std::int64_t before = warp == 0 ? 0 : warp_sums[warp - 1];
  total = warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before + inclusive - value;
}

static __global__ void __launch_bounds__(kScanThreads) scan_tile_sums(const std::int64_t* __restrict__ data, std::int64_t n,
                                                                std::int64_t* __restrict__ sums) {
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kScanTile;
  std::int64_t s = 0;
#pragma unroll
  for (int r = 0; r < kScanItems; ++r) {
    const std::int64_t i = first + r * kScanThreads + threadIdx.x;
    if (i < n) s += data[i];
  }
  std::int64_t total;
  block_exclusive_scan<kScanThreads>(s, total);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// In place: each tile's exclusive scan, plus offsets[tile] when offsets is given.
static __global__ void __launch_bounds__(kScanThreads) scan_tiles(std::int64_t* __restrict__ data, std::int64_t n,
                                                            const std::int64_t* __restrict__ offsets) {
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kScanTile + threadIdx.x * kScanItems;
  std::int64_t v[kScanItems];
  std::int64_t own = 0;
#pragma unroll
  for (int r = 0; r < kScanItems; ++r) {
    v[r] = first + r < n ? data[first + r] : 0;
    own += v[r];
  }
  std::int64_t total;
  std::int64_t running = block_exclusive_scan<kScanThreads>(own, total);
  if (offsets) running += offsets[blockIdx.x];
#pragma unroll
  for (int r = 0; r < kScanItems; ++r) {
    if (first + r < n) data[first + r] = running;
    running += v[r];
  }
}

// data[i] <- data[0] + ... + data[i - 1], in place, on `stream`.
inline void exclusive_scan(std::int64_t* data, std::int64_t n, int device, cudaStream_t stream) {
  if (n <= 0) return;
  const std::int64_t tiles = (n + kScanTile - 1) / kScanTile;
  if (tiles == 1) {
    scan_tiles<<<1, kScanThreads, 0, stream>>>(data, n, nullptr);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  Tensor<std::int64_t> sums({tiles}, Device::cuda(device));
  scan_tile_sums<<<static_cast<unsigned>(tiles), kScanThreads, 0, stream>>>(data, n, sums.data());
  KILN_CUDA_CHECK_LAUNCH();
  exclusive_scan(sums.data(), tiles, device, stream);
  scan_tiles<<<static_cast<unsigned>(tiles), kScanThreads, 0, stream>>>(data, n, sums.data());
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels
