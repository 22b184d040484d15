// Copies between host and device memory. Pageable host memory cannot be read by the copy
// engine directly, so host data is staged through pinned buffers.
//
// Which copies make the host wait for the device (each counted by core's host_wait_count):
//   device to host: always (the host reads the data: it must have been computed);
//   host to device up to PinnedRing::kSmallCopy (a batch's ids, rope positions, sequence bounds):
//     never, but for a ring slot's reuse (kernels/common/pinned_ring.hpp); the copy is queued on
//     the kiln stream, so the kernels queued after it see the data;
//   larger host to device (weights, checkpoints): staged in 8 MB chunks, two at a time (the CPU fills
//     one while the DMA engine moves the other), and the call returns when all have arrived;
//   device to device on one device: never (the stream orders it before every later kernel and
//     before the allocator's reuse of either buffer); across devices: waits for the source's stream.
#pragma once

#include <cstring>
#include <mutex>

#include "kiln/backend/cuda/stream.hpp"
#include "kiln/core/device.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/kernels/common/pinned_ring.hpp"

namespace kiln::cuda {

class PinnedStaging {
 public:
  static constexpr std::size_t chunk = 8u << 20;

  static PinnedStaging& instance() {
    static PinnedStaging* staging = new PinnedStaging();
    return *staging;
  }

  // dst (device) <- src (pageable host), or dst (pageable host) <- src (device).
  void copy(void* dst, const void* src, std::size_t bytes, bool to_device, int device, cudaStream_t stream) {
    // A copy waits for the stream, which a stream being captured into a CUDA graph cannot do; and
    // the staging events, once recorded into a capture, would be unusable afterwards. Refuse
    // before touching anything, so the capture fails cleanly and later copies still work.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    KILN_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
      fail("copy", to_device ? "host-to-device" : "device-to-host", " copy of ", bytes, " bytes on cuda:", device,
           " while its stream is captured into a CUDA graph (a captured function must leave its inputs on the device)");
    std::lock_guard<std::mutex> lock(mutex_);
    ensure();
    auto* d = static_cast<char*>(dst);
    auto* s = static_cast<const char*>(src);
    for (std::size_t done = 0, k = 0; done < bytes; done += chunk, ++k) {
      const std::size_t n = bytes - done < chunk ? bytes - done : chunk;
      char* buf = buffers_[k % 2];
      KILN_CUDA_CHECK(cudaEventSynchronize(ready_[k % 2]));  // the buffer's previous copy has finished
      if (to_device) {
        std::memcpy(buf, s + done, n);
        KILN_CUDA_CHECK(cudaMemcpyAsync(d + done, buf, n, cudaMemcpyHostToDevice, stream));
        KILN_CUDA_CHECK(cudaEventRecord(ready_[k % 2], stream));
      } else {
        KILN_CUDA_CHECK(cudaMemcpyAsync(buf, s + done, n, cudaMemcpyDeviceToHost, stream));
        KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
        std::memcpy(d + done, buf, n);
      }
    }
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
    host_wait_count().fetch_add(1, std::memory_order_relaxed);
    (void)device;
  }

 private:
  void ensure() {
    if (buffers_[0]) return;
    for (int i = 0; i < 2; ++i) {
      KILN_CUDA_CHECK(cudaMallocHost(&buffers_[i], chunk));
      KILN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_[i], cudaEventDisableTiming));
    }
  }
  std::mutex mutex_;
  char* buffers_[2] = {nullptr, nullptr};
  cudaEvent_t ready_[2] = {nullptr, nullptr};
};

// The DeviceBackend copy entry: any pair of devices (host side pageable).
inline void copy_between(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes) {
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    DeviceGuard g(dst_device.index);
    cudaStream_t stream = current_stream(dst_device.index);
    if (dst_device.index == src_device.index) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
      return;
    }
    // Order after the source device's queued work, then copy peer to peer.
    KILN_CUDA_CHECK(cudaStreamSynchronize(current_stream(src_device.index)));
    KILN_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, bytes, stream));
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
    host_wait_count().fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  DeviceGuard g(device);
  if (dst_device.is_cuda() && bytes <= PinnedRing::kSmallCopy)
    return PinnedRing::of(device).copy_to_device(dst, src, bytes, current_stream(device));
  PinnedStaging::instance().copy(dst, src, bytes, dst_device.is_cuda(), device, current_stream(device));
}

}  // namespace kiln::cuda
