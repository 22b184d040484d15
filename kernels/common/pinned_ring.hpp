// Small host-to-device copies that the host does not wait for: the source is copied into one slot
// of a ring of pinned host buffers, and the slot's DMA to the device is queued on the caller's
// stream. The caller's buffer is free as soon as the call returns, the device sees the data in
// stream order (every kernel queued after the copy reads it), and the host waits only when a slot
// comes round again before its previous copy has run, kSlots copies later: by then the device is
// that many uploads behind the host (such a wait counts in core's host_wait_count).
//
// Used by the backend's copies (backend/cuda/copy.hpp: a batch's ids, rope positions, a packed
// row's sequence bounds) and by the multi-tensor kernels' descriptor arrays (kernels/optim).
// Pageable host memory cannot be read by the copy engine, hence the staging; a synchronous copy
// would wait for all the work queued before it, which is what a training step must not do.
//
// Not while the stream is captured into a CUDA graph: the graph would replay a copy from a slot
// that holds other data by then. Host code: g++ and nvcc both compile it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "kiln/core/error.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"

namespace kiln::cuda {

class PinnedRing {
 public:
  static constexpr int kSlots = 16;
  static constexpr std::size_t kMinSlotBytes = 64u << 10;
  // A slot grows to the largest copy it has staged: backend/cuda/copy.hpp sends copies above this
  // size through its double-buffered staging instead (which waits).
  static constexpr std::size_t kSmallCopy = 1u << 20;

  static PinnedRing& of(int device) {
    static std::mutex mutex;
    static auto* rings = new std::map<int, std::unique_ptr<PinnedRing>>();  // never destroyed
    std::lock_guard<std::mutex> lock(mutex);
    auto& ring = (*rings)[device];
    if (!ring) ring.reset(new PinnedRing(device));
    return *ring;
  }

  // Queues a copy of `bytes` from host memory `src` to device memory `dst` on `stream`; returns
  // once `src` has been staged.
  void copy_to_device(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    KILN_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
      fail("copy", "host-to-device copy of ", bytes, " bytes on cuda:", device_,
           " while its stream is captured into a CUDA graph (a captured function must leave its inputs on the device)");
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard guard(device_);
    Slot& s = slots_[next_++ % kSlots];
    if (!s.done) KILN_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    if (s.used) {  // its previous copy must have run
      const cudaError_t state = cudaEventQuery(s.done);
      if (state == cudaErrorNotReady) {
        KILN_CUDA_CHECK(cudaEventSynchronize(s.done));
        host_wait_count().fetch_add(1, std::memory_order_relaxed);
      } else {
        KILN_CUDA_CHECK(state);
      }
    }
    if (s.capacity < bytes) {
      if (s.host) KILN_CUDA_CHECK(cudaFreeHost(s.host));
      s.capacity = bytes < kMinSlotBytes ? kMinSlotBytes : bytes;
      KILN_CUDA_CHECK(cudaMallocHost(&s.host, s.capacity));
    }
    std::memcpy(s.host, src, bytes);
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
    KILN_CUDA_CHECK(cudaEventRecord(s.done, stream));
    s.used = true;
  }

 private:
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

}  // namespace kiln::cuda
