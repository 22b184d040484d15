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
// The descriptor array reaches the device through a small ring of pinned host buffers and an
// asynchronous copy on the kiln stream: the host never waits for the device, except when it is a
// whole ring (kSlots launches) ahead of it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/launch.cuh"

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

// Pinned staging buffers of one device, used round robin.
class PinnedRing {
 public:
  static PinnedRing& of(int device) {
    static std::mutex mutex;
    static auto* rings = new std::map<int, std::unique_ptr<PinnedRing>>();  // never destroyed
    std::lock_guard<std::mutex> lock(mutex);
    auto& ring = (*rings)[device];
    if (!ring) ring.reset(new PinnedRing(device));
    return *ring;
  }

  // Queues a copy of `bytes` from host memory `src` to device memory `dst` on `stream`; returns
  // once `src` has been staged (it may be reused at once).
  void copy_to_device(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    cuda::DeviceGuard guard(device_);
    Slot& s = slots_[next_++ % kSlots];
    if (!s.done) KILN_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    if (s.used) KILN_CUDA_CHECK(cudaEventSynchronize(s.done));  // its previous copy has finished
    if (s.capacity < bytes) {
      if (s.host) KILN_CUDA_CHECK(cudaFreeHost(s.host));
      s.capacity = bytes < 65536 ? 65536 : bytes;
      KILN_CUDA_CHECK(cudaMallocHost(&s.host, s.capacity));
    }
    std::memcpy(s.host, src, bytes);
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
    KILN_CUDA_CHECK(cudaEventRecord(s.done, stream));
    s.used = true;
  }

 private:
  static constexpr int kSlots = 4;
  struct Slot {
    void* host = nullptr;
    std::size_t capacity = 0;
    cudaEvent_t done = nullptr;
    bool used = false;
  };
  explicit PinnedRing(int device) : device_(device) {}

  int device_;
  std::mutex mutex_;
  Slot slots_[kSlots];
  unsigned next_ = 0;
};

// The descriptors in device memory (from kiln's caching allocator: freeing the returned tensor
// after the launch is safe, the allocator reuses memory in stream order).
template <class Desc>
Tensor<std::uint8_t> upload(const std::vector<Desc>& descs, int device, cudaStream_t stream) {
  const std::size_t bytes = descs.size() * sizeof(Desc);
  Tensor<std::uint8_t> buffer({static_cast<std::int64_t>(bytes)}, Device::cuda(device));
  PinnedRing::of(device).copy_to_device(buffer.data(), descs.data(), bytes, stream);
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
