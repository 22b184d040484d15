// Launch helpers shared by every kernel family: grid sizes for grid-stride loops, the 16-byte
// alignment test of vectorised paths, occupancy, the large-shared-memory opt-in, and launches in
// thread-block clusters.
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
#include <tuple>
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

// A launch configuration in thread-block clusters of `cluster` CTAs along x
// (kernels/common/sm90/cluster.cuh); config.attrs points at the attribute beside it, so it is not
// copied.
struct ClusterLaunch {
  cudaLaunchAttribute attribute{};
  cudaLaunchConfig_t config{};
  ClusterLaunch(int grid, int block, std::size_t smem, cudaStream_t stream, int cluster) {
    config.gridDim = dim3(static_cast<unsigned>(grid));
    config.blockDim = dim3(static_cast<unsigned>(block));
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// Launches kernel<<<grid, block, smem, stream>>>(args...) in clusters of `cluster` CTAs along x
// (grid a multiple of it). Launch errors are checked.
template <class... Params, class... Args>
void launch_in_clusters(void (*kernel)(Params...), int grid, int block, std::size_t smem, cudaStream_t stream,
                        int cluster, Args&&... args) {
  check(cluster >= 1 && grid % cluster == 0, "kernel launch", "a grid of ", grid,
        " blocks does not divide into clusters of ", cluster);
  const ClusterLaunch launch(grid, block, smem, stream, cluster);
  KILN_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, std::forward<Args>(args)...));
}

// How many clusters of `cluster` CTAs of `kernel` (block threads, smem bytes of dynamic shared
// memory, opted in already) can be resident on `device` at once: fewer than SMs / cluster where the
// SMs of a GPC do not divide into clusters. One query per (device, kernel, cluster, block, smem).
template <class Kernel>
int max_active_clusters(Kernel* kernel, int block, std::size_t smem, int cluster, int device) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int, int, std::size_t>, int> known;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), cluster, block, smem);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  cuda::DeviceGuard guard(device);
  const ClusterLaunch launch(cluster, block, smem, nullptr, cluster);
  int clusters = 0;
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.config));
  check(clusters >= 1, "kernel launch", "no cluster of ", cluster, " blocks of ", block, " threads and ", smem,
        " bytes of shared memory fits on cuda:", device);
  known.emplace(key, clusters);
  return clusters;
}

// A persistent kernel (each CTA, or each cluster of `cluster` CTAs, loops over units i, i + grid,
// ...): one CTA an SM, or as many clusters as fit at once, never more than `units`. The kernel's
// shared memory is opted into here.
template <class... Params, class... Args>
void launch_persistent(void (*kernel)(Params...), std::int64_t units, int block, std::size_t smem, cudaStream_t stream,
                       int device, int cluster, Args&&... args) {
  opt_in_shared_memory(kernel, smem, device);
  if (cluster == 1) {
    const int grid = static_cast<int>(std::min<std::int64_t>(units, device_info(device).sms));
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    KILN_CUDA_CHECK_LAUNCH();
  } else {
    const int clusters =
        static_cast<int>(std::min<std::int64_t>(units, max_active_clusters(kernel, block, smem, cluster, device)));
    launch_in_clusters(kernel, cluster * clusters, block, smem, stream, cluster, std::forward<Args>(args)...);
  }
}

}  // namespace kiln::kernels
