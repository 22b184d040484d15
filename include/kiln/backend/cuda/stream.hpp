// Streams and events. Each device has one kiln stream (non-blocking, created on first use) that all
// kiln work on that device is queued on, unless a StreamGuard on the calling thread selects
// another. Ops are asynchronous; reading data back (to_vector, item, to(cpu)) synchronises.
#pragma once

#include <mutex>
#include <vector>

#include "kiln/backend/cuda/error.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/kernels/common/device_guard.hpp"

namespace kiln::cuda {

inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

inline bool available() { return device_count() > 0; }

namespace detail {
inline cudaStream_t& thread_stream_override(int device) {
  check(device >= 0, "cuda", "device index ", device, " is negative");
  thread_local std::vector<cudaStream_t> overrides;
  if (overrides.size() <= static_cast<std::size_t>(device)) overrides.resize(static_cast<std::size_t>(device) + 1, nullptr);
  return overrides[static_cast<std::size_t>(device)];
}
}  // namespace detail

// The stream kiln queues work on for `device` on this thread.
inline cudaStream_t current_stream(int device) {
  if (cudaStream_t s = detail::thread_stream_override(device)) return s;
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams;
  std::lock_guard<std::mutex> lock(mutex);
  if (streams.empty()) streams.assign(static_cast<std::size_t>(device_count() > 0 ? device_count() : 1), nullptr);
  check(device >= 0 && device < static_cast<int>(streams.size()), "cuda", "device cuda:", device,
        " does not exist (", streams.size(), " devices)");
  cudaStream_t& s = streams[static_cast<std::size_t>(device)];
  if (!s) {
    DeviceGuard g(device);
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  return s;
}

// Queues this thread's kiln work for `device` on `stream` while the guard lives.
class StreamGuard {
 public:
  StreamGuard(int device, cudaStream_t stream) : device_(device), previous_(detail::thread_stream_override(device)) {
    detail::thread_stream_override(device) = stream;
  }
  ~StreamGuard() { detail::thread_stream_override(device_) = previous_; }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

inline void synchronize(int device = 0) {
  KILN_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
  host_wait_count().fetch_add(1, std::memory_order_relaxed);
}

// A CUDA event (timing enabled), for measuring and ordering stream work.
class Event {
 public:
  Event() { KILN_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t stream) { KILN_CUDA_CHECK(cudaEventRecord(event_, stream)); }
  void synchronize() { KILN_CUDA_CHECK(cudaEventSynchronize(event_)); }
  // Milliseconds from `start` to this event (both recorded and complete).
  float elapsed_since(const Event& start) const {
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace kiln::cuda
