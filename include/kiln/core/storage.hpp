// Storage: one reference-counted allocation on one device. Tensors are views over a Storage
// (offset + shape + strides), so views share it and it is freed with the last view.
//
// Device work other than the CPU goes through a backend table (DeviceBackend). The core never
// includes CUDA headers and never changes with __CUDACC__, so translation units compiled by g++
// and by nvcc see identical definitions; the CUDA backend header, compiled by nvcc, fills the
// table in at static-initialisation time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <algorithm>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kiln/core/device.hpp"
#include "kiln/core/error.hpp"

// cudaStream_t is CUstream_st*; declaring the struct lets g++-compiled code carry a stream.
struct CUstream_st;

namespace kiln {

using DeviceStream = CUstream_st*;

struct DeviceBackend {
  void* (*allocate)(std::size_t bytes, int device) = nullptr;
  void (*deallocate)(void* ptr, std::size_t bytes, int device) = nullptr;
  // Copies bytes between any two devices (either side may be the CPU). The host's buffer may be
  // reused on return; a read to the host has arrived on return; the device side is in the order of
  // the thread's kiln stream (backend/cuda/copy.hpp says which copies wait).
  void (*copy)(void* dst, Device dst_device, const void* src, Device src_device,
               std::size_t bytes) = nullptr;
  // The stream kiln queues this thread's work for `device` on (kernels take it in their arguments).
  DeviceStream (*stream)(int device) = nullptr;
  // Graphs (core/device_graph.hpp). begin: a new graph with a stream of its own, made this
  // thread's kiln stream for `device`; record: start capturing that stream; end: stop, instantiate
  // and restore the thread's stream; replay: launch, ordered with the device's kiln stream;
  // destroy: also ends a capture in progress and restores the stream.
  void* (*graph_begin)(int device) = nullptr;
  void (*graph_record)(void* graph) = nullptr;
  void (*graph_end)(void* graph) = nullptr;
  void (*graph_replay)(void* graph) = nullptr;
  void (*graph_destroy)(void* graph) = nullptr;
};

// The CUDA backend's table, or nullptr when no nvcc-compiled translation unit registered one.
inline DeviceBackend*& cuda_backend() {
  static DeviceBackend* backend = nullptr;
  return backend;
}

inline DeviceBackend& backend_for(const char* op, Device device) {
  DeviceBackend* b = cuda_backend();
  if (!b)
    fail(op, "device ", device,
         " needs the CUDA backend: include <kiln/backend/cuda.hpp> in a file compiled by nvcc");
  return *b;
}

class Storage {
 public:
  // CPU memory is 64-byte aligned: a cache line, and enough for any SIMD load. Large blocks are
  // aligned to 2 MiB and marked for transparent huge pages: a fresh 64 MiB output otherwise takes
  // 16K page faults on first write, which costs more than the op itself (measured: an add of two
  // 16M-float tensors went from 19 ms to 9 ms on 2 cores).
  static constexpr std::size_t cpu_alignment = 64;
  static constexpr std::size_t huge_page = std::size_t(2) << 20;

  Storage(std::size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
    if (device.is_cpu()) {
      const std::size_t align = nbytes >= 2 * huge_page ? huge_page : cpu_alignment;
      const std::size_t size = (std::max<std::size_t>(nbytes, 1) + align - 1) / align * align;
      data_ = std::aligned_alloc(align, size);
      if (!data_) fail("Storage", "out of CPU memory allocating ", nbytes, " bytes");
#ifdef MADV_HUGEPAGE
      if (align == huge_page) madvise(data_, size, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
    } else {
      data_ = backend_for("Storage", device).allocate(nbytes, device.index);
    }
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (device_.is_cpu()) {
      std::free(data_);
    } else if (cuda_backend()) {
      cuda_backend()->deallocate(data_, nbytes_, device_.index);
    }
  }

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  Device device_;
};

// How many times this process's host has waited for a device's queued work to finish: the device
// backend counts each copy that waits (reads back to the host, large uploads; backend/cuda/copy.hpp
// lists which do). Over a training step the count tells how often the host stopped feeding the
// GPU (train::StepPhases::host_waits).
inline std::atomic<std::int64_t>& host_wait_count() {
  static std::atomic<std::int64_t> count{0};
  return count;
}

// Copies bytes between devices.
inline void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                       std::size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
  } else {
    backend_for("copy", dst_device.is_cpu() ? src_device : dst_device)
        .copy(dst, dst_device, src, src_device, bytes);
  }
}

}  // namespace kiln
