// Launch helpers shared by every kernel family: grid sizes for grid-stride loops, the 16-byte
// alignment test of vectorised paths, occupancy, and the large-shared-memory opt-in.
//
// Shared memory above 48 KiB per block needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
// for that kernel ON THE DEVICE that launches it: the attribute belongs to the (device, kernel)
// pair, so a once-per-process opt-in makes the first GPU work and every other GPU fail with
// "invalid argument". opt_in_shared_memory keeps one record per (device, kernel) and raises the
// limit when a launch needs more than was set before.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"

namespace kiln::kernels {

// Blocks for n work items of `threads` each, capped at 2^20 (the kernels loop grid-stride beyond).
inline unsigned blocks_for(std::int64_t n, int threads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 1048576 ? 1048576 : b));
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Blocks of `kernel` that fit on one multiprocessor at this block size and shared memory (>= 1).
template <class Kernel>
int resident_blocks(Kernel* kernel, int threads, std::size_t smem) {
  int blocks = 0;
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  return std::max(blocks, 1);
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on `device` (call before the launch;
// a map lookup after the first call for a (device, kernel) pair). A block may use 48 KiB of static
// plus dynamic shared memory without the opt-in; beyond that the dynamic limit must be raised.
template <class Kernel>
void opt_in_shared_memory(Kernel* kernel, std::size_t bytes, int device) {
  if (bytes == 0) return;
  struct Grant {
    std::size_t static_bytes = 0, dynamic_limit = 0;
    bool known = false;
  };
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, Grant> grants;
  std::lock_guard<std::mutex> lock(mutex);
  Grant& grant = grants[{device, reinterpret_cast<const void*>(kernel)}];
  if (!grant.known) {
    cuda::DeviceGuard guard(device);
    cudaFuncAttributes attributes{};
    KILN_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    grant.static_bytes = attributes.sharedSizeBytes;
    grant.dynamic_limit = 48 * 1024 - std::min<std::size_t>(attributes.sharedSizeBytes, 48 * 1024);
    grant.known = true;
  }
  if (bytes <= grant.dynamic_limit) return;
  const DeviceInfo& info = device_info(device);
  check(bytes + grant.static_bytes <= static_cast<std::size_t>(info.smem_per_block_optin), "kernel launch", "needs ",
        bytes, " bytes of dynamic shared memory (plus ", grant.static_bytes, " static) per block; cuda:", device,
        " allows ", info.smem_per_block_optin);
  cuda::DeviceGuard guard(device);
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  grant.dynamic_limit = bytes;
}

}  // namespace kiln::kernels
