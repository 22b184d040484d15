// The CUDA runtime's entries in the core's backend table (core/storage.hpp): device memory (the
// caching allocator), copies, the current stream, graphs. Filled in at static initialisation by
// every nvcc-compiled file that includes this header (kiln/backend/cuda.hpp includes it, with
// every kernel); the table is an inline function's static, so all of them fill the same one.
#pragma once

#ifndef __CUDACC__
#error "kiln/backend/cuda/runtime_registration.hpp must be compiled by nvcc"
#endif

#include "kiln/kiln.hpp"

#include "kiln/backend/cuda/allocator.hpp"
#include "kiln/backend/cuda/copy.hpp"
#include "kiln/backend/cuda/error.hpp"
#include "kiln/backend/cuda/graph.hpp"
#include "kiln/backend/cuda/stream.hpp"

namespace kiln::cuda {

inline DeviceBackend& backend_table() {
  static DeviceBackend table{
      [](std::size_t bytes, int device) { return CachingAllocator::instance().allocate(bytes, device); },
      [](void* ptr, std::size_t, int device) { CachingAllocator::instance().deallocate(ptr, device); },
      copy_between,
      [](int device) -> DeviceStream { return current_stream(device); },
      graph_begin,
      graph_record,
      graph_end,
      graph_replay,
      graph_destroy,
  };
  return table;
}

inline const bool backend_registered = (cuda_backend() = &backend_table(), true);

}  // namespace kiln::cuda
