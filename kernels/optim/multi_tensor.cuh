// Shared pieces of the multi-tensor kernels (AdamW, gradient norm and scaling): one launch works
// on a list of tensors of any sizes.
//
// The host packs one descriptor per tensor into an array in device memory. Each tensor is cut into
// chunks of kChunk elements, numbered consecutively across the list (a descriptor records the
// number of its first chunk), and the blocks of the launch take chunks blockIdx.x, + gridDim.x, ...
// A block finds the tensor of its chunk by binary search over the descriptors' first chunks
// (log2 of the tensor count of uniform, cached loads). The chunk layout depends only on the tensor
// sizes, never on the grid, so per-chunk results (partial sums) are deterministic.
//
// The descriptor array reaches the device through the ring of pinned host buffers
// (kernels/common/pinned_ring.hpp) and an asynchronous copy on the kiln stream: the host never waits
// for the device, except when it is a whole ring of uploads ahead of it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/pinned_ring.hpp"

namespace kiln::kernels::multi_tensor {

constexpr std::int64_t kChunk = 4096;  // elements of one tensor a block handles at a time

// Index of the descriptor that owns chunk c: the last one whose first_chunk is <= c. Desc has a
// member first_chunk; descriptors of empty tensors must be left out.
template <class Desc>
__device__ __forceinline__ int find_tensor(const Desc* __restrict__ d, int count, std::int64_t c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (d[mid].first_chunk <= c) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

inline std::int64_t chunks_of(std::int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// The descriptors in device memory (from kiln's caching allocator: freeing the returned tensor
// after the launch is safe, the allocator reuses memory in stream order).
template <class Desc>
Tensor<std::uint8_t> upload(const std::vector<Desc>& descs, int device, cudaStream_t stream) {
  const std::size_t bytes = descs.size() * sizeof(Desc);
  Tensor<std::uint8_t> buffer({static_cast<std::int64_t>(bytes)}, Device::cuda(device));
  cuda::PinnedRing::of(device).copy_to_device(buffer.data(), descs.data(), bytes, stream);
  return buffer;
}

// Blocks for a grid-stride launch over `chunks`: what fits on the device at once, at most one per chunk.
template <class Kernel>
unsigned grid_for(Kernel* kernel, int threads, std::int64_t chunks, int device) {
  const std::int64_t resident =
      static_cast<std::int64_t>(resident_blocks(kernel, threads, 0)) * device_info(device).sms;
  return static_cast<unsigned>(chunks < resident ? (chunks < 1 ? 1 : chunks) : resident);
}

inline bool aligned_to(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace kiln::kernels::multi_tensor
