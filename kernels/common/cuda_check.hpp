// Error checks for CUDA runtime and driver calls: a failure becomes a kiln::Error naming the file,
// the line, the call and CUDA's message. Every launch is followed by KILN_CUDA_CHECK_LAUNCH(), which
// reports a bad launch configuration at the launch rather than at some later synchronisation.
// Host code: g++ and nvcc both compile it.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "kiln/core/error.hpp"

namespace kiln::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw Error(str("kiln::cuda: ", call, " failed at ", file, ":", line, ": ", cudaGetErrorName(e), ": ",
                  cudaGetErrorString(e)));
}

[[noreturn]] inline void throw_cuda_driver(CUresult r, const char* call, const char* file, int line) {
  const char* name = nullptr;
  const char* text = nullptr;
  cuGetErrorName(r, &name);
  cuGetErrorString(r, &text);
  throw Error(str("kiln::cuda: ", call, " failed at ", file, ":", line, ": ", name ? name : "unknown error", ": ",
                  text ? text : "", " (driver error ", static_cast<int>(r), ")"));
}

}  // namespace kiln::cuda

#define KILN_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    cudaError_t kiln_e_ = (call);                                                              \
    if (kiln_e_ != cudaSuccess) ::kiln::cuda::throw_cuda(kiln_e_, #call, __FILE__, __LINE__); \
  } while (0)

#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())

#define KILN_CU_CHECK(call)                                                                            \
  do {                                                                                                 \
    CUresult kiln_r_ = (call);                                                                         \
    if (kiln_r_ != CUDA_SUCCESS) ::kiln::cuda::throw_cuda_driver(kiln_r_, #call, __FILE__, __LINE__); \
  } while (0)
