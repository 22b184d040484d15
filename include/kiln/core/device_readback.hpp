// Some device ops check their result on the host: gather, scatter_add, index_select, embedding
// and cross_entropy validate every index on the device and read one flag back after the launch,
// so that a bad index gets the same kiln::Error as on the CPU. A read-back waits for the device,
// which a generation step cannot afford per token and a CUDA graph capture does not allow.
//
// While a DeviceReadbackGuard lives on a thread, those ops skip the read-back on that thread. The
// kernels still skip out-of-range indices (they never read or write outside a tensor), so a bad
// index then gives wrong numbers, never a memory fault: use it only where the indices are known
// to be valid (tokens sampled from the model's own vocabulary, experts chosen by topk).
#pragma once

namespace kiln {

namespace detail {
inline bool& device_readbacks_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

inline bool device_readbacks_enabled() { return detail::device_readbacks_flag(); }

class DeviceReadbackGuard {
 public:
  DeviceReadbackGuard() : previous_(detail::device_readbacks_flag()) { detail::device_readbacks_flag() = false; }
  ~DeviceReadbackGuard() { detail::device_readbacks_flag() = previous_; }
  DeviceReadbackGuard(const DeviceReadbackGuard&) = delete;
  DeviceReadbackGuard& operator=(const DeviceReadbackGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace kiln
