// The CUDA backend. Include this header from at least one translation unit compiled by nvcc; it
// registers device memory (the caching allocator), copies, and every CUDA kernel with the core's
// registries at static-initialisation time. Files compiled by g++ can then run kiln ops on
// Device::cuda(n) tensors too: the core reaches the kernels through the registries only.
#pragma once

#ifndef __CUDACC__
#error "kiln/backend/cuda.hpp must be compiled by nvcc"
#endif

#include "kiln/kiln.hpp"

#include "kiln/backend/cuda/allocator.hpp"
#include "kiln/backend/cuda/copy.hpp"
#include "kiln/backend/cuda/error.hpp"
#include "kiln/backend/cuda/stream.hpp"

// One folder of kernels/ per family; each family's all.cuh lists its kernels.
#include "elementwise/all.cuh"
#include "fp8_gemm/all.cuh"
#include "indexing/all.cuh"
#include "loss/all.cuh"
#include "matmul/all.cuh"
#include "kiln/kernels/rms_norm/rms_norm.cuh"
#include "optim/all.cuh"
#include "reduce/all.cuh"
#include "rope/all.cuh"
#include "softmax/all.cuh"

namespace kiln::cuda {

inline DeviceBackend& backend_table() {
  static DeviceBackend table{
      [](std::size_t bytes, int device) { return CachingAllocator::instance().allocate(bytes, device); },
      [](void* ptr, std::size_t, int device) { CachingAllocator::instance().deallocate(ptr, device); },
      copy_between,
      [](int device) -> DeviceStream { return current_stream(device); },
  };
  return table;
}

inline const bool backend_registered = (cuda_backend() = &backend_table(), true);

}  // namespace kiln::cuda
