// What launchers need to know about a GPU (multiprocessor count, L2 size, compute capability,
// the shared-memory limits), read once per device and kept for the life of the process.
//
// Any number of devices, any number of threads: the table grows under a mutex, and entries live
// in a std::deque, whose elements never move, so a returned reference stays valid while other
// threads add devices.
#pragma once

#include <cuda_runtime.h>

#include <deque>
#include <mutex>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"

namespace kiln::kernels {

struct DeviceInfo {
  int device = -1;
  int sms = 0;                      // multiprocessors
  int major = 0, minor = 0;         // compute capability
  int l2_bytes = 0;
  int smem_per_block_optin = 0;     // largest dynamic shared memory a block may opt into
  int smem_per_sm = 0;
  int max_threads_per_sm = 0;
  int max_blocks_per_sm = 0;
};

inline const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::deque<DeviceInfo> known;  // known[i].device == i once read; -1 before
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= 0 && static_cast<std::size_t>(device) < known.size() && known[static_cast<std::size_t>(device)].device >= 0)
    return known[static_cast<std::size_t>(device)];
  int count = 0;
  KILN_CUDA_CHECK(cudaGetDeviceCount(&count));
  check(device >= 0 && device < count, "device_info", "device cuda:", device, " does not exist (", count,
        " devices)");
  while (known.size() <= static_cast<std::size_t>(device)) known.emplace_back();
  DeviceInfo& info = known[static_cast<std::size_t>(device)];
  {
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.minor, cudaDevAttrComputeCapabilityMinor, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.l2_bytes, cudaDevAttrL2CacheSize, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&info.max_blocks_per_sm, cudaDevAttrMaxBlocksPerMultiprocessor, device));
    info.device = device;
  }
  return info;
}

}  // namespace kiln::kernels
