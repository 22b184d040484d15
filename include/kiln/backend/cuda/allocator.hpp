// A caching, stream-ordered device allocator.
//
// cudaMalloc and cudaFree are slow (hundreds of microseconds, and cudaFree synchronises the
// device), so freed blocks are kept in a per-device pool and handed out again. A block is
// reused only on the stream it was last used on: work on one stream runs in order, so a kernel
// queued after the free cannot overtake the kernels that still read the old contents. Sizes are
// rounded (512 B granules below 1 MiB, 2 MiB above) so blocks fit many requests; a cached block
// serves a request of at least half its size. When cudaMalloc fails, the cache is released and
// the allocation retried once before the error is raised.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kiln/backend/cuda/stream.hpp"

namespace kiln::cuda {

struct MemoryStats {
  std::size_t allocated = 0;       // bytes in live tensors (rounded sizes)
  std::size_t cached = 0;          // bytes held in the pool, free for reuse
  std::size_t peak_allocated = 0;  // high-water mark of `allocated`
  std::size_t device_allocations = 0;  // cudaMalloc calls made
};

class CachingAllocator {
 public:
  static CachingAllocator& instance() {
    static CachingAllocator* allocator = new CachingAllocator();  // never destroyed: tensors may outlive statics
    return *allocator;
  }

  static std::size_t round_size(std::size_t bytes) {
    constexpr std::size_t small = 512, large = 2u << 20, threshold = 1u << 20;
    if (bytes == 0) bytes = 1;
    return bytes < threshold ? (bytes + small - 1) / small * small : (bytes + large - 1) / large * large;
  }

  void* allocate(std::size_t bytes, int device) {
    const std::size_t size = round_size(bytes);
    cudaStream_t stream = current_stream(device);
    std::lock_guard<std::mutex> lock(mutex_);
    Pool& pool = pools_[device];
    auto& free_list = pool.free[stream];
    auto it = free_list.lower_bound(size);
    void* ptr = nullptr;
    std::size_t block = size;
    if (it != free_list.end() && it->first <= 2 * size) {
      block = it->first;
      ptr = it->second;
      free_list.erase(it);
      pool.stats.cached -= block;
    } else {
      DeviceGuard guard(device);
      cudaError_t e = cudaMalloc(&ptr, size);
      if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        release_locked(device);
        e = cudaMalloc(&ptr, size);
      }
      if (e != cudaSuccess) {
        cudaGetLastError();
        fail("cuda allocator", "cudaMalloc of ", size, " bytes on cuda:", device, " failed: ", cudaGetErrorString(e),
             " (", pool.stats.allocated, " bytes in use by tensors)");
      }
      ++pool.stats.device_allocations;
    }
    pool.live[ptr] = Live{block, stream};
    pool.stats.allocated += block;
    if (pool.stats.allocated > pool.stats.peak_allocated) pool.stats.peak_allocated = pool.stats.allocated;
    return ptr;
  }

  void deallocate(void* ptr, int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    Pool& pool = pools_[device];
    auto it = pool.live.find(ptr);
    if (it == pool.live.end()) return;  // not ours (cannot happen through Storage)
    pool.free[it->second.stream].emplace(it->second.size, ptr);
    pool.stats.allocated -= it->second.size;
    pool.stats.cached += it->second.size;
    pool.live.erase(it);
  }

  // After `stream` is synchronised and about to be destroyed: its cached blocks move to
  // `successor`'s pool, and blocks still in use on it go there when they are freed.
  void retire_stream(int device, cudaStream_t stream, cudaStream_t successor) {
    std::lock_guard<std::mutex> lock(mutex_);
    Pool& pool = pools_[device];
    auto retired = pool.free.extract(stream);  // (an iterator would not survive the insertion below)
    if (!retired.empty()) pool.free[successor].merge(retired.mapped());
    for (auto& [ptr, live] : pool.live)
      if (live.stream == stream) live.stream = successor;
  }

  MemoryStats stats(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    return pools_[device].stats;
  }

  // Returns every cached (free) block on `device` to the driver.
  void release_cached(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    release_locked(device);
  }

 private:
  struct Live {
    std::size_t size;
    cudaStream_t stream;
  };
  struct Pool {
    std::unordered_map<cudaStream_t, std::multimap<std::size_t, void*>> free;
    std::unordered_map<void*, Live> live;
    MemoryStats stats;
  };

  void release_locked(int device) {
    DeviceGuard guard(device);
    Pool& pool = pools_[device];
    cudaDeviceSynchronize();  // cached blocks may still be read by queued kernels
    for (auto& [stream, list] : pool.free) {
      for (auto& [size, ptr] : list) {
        cudaFree(ptr);
        pool.stats.cached -= size;
      }
      list.clear();
    }
  }

  std::mutex mutex_;
  std::unordered_map<int, Pool> pools_;
};

inline MemoryStats memory_stats(int device = 0) { return CachingAllocator::instance().stats(device); }
inline void empty_cache(int device = 0) { CachingAllocator::instance().release_cached(device); }

}  // namespace kiln::cuda
