// Error checks for cuBLASLt calls (the matmul family's library): a failure becomes a kiln::Error
// naming the file, the line, the call and cuBLASLt's status. The CUDA runtime and driver checks
// are kernels/common/cuda_check.hpp. Host code: g++ and nvcc both compile it.
#pragma once

#include <cublasLt.h>

#include "kiln/core/error.hpp"

namespace kiln::cuda {

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw Error(str("kiln::cublasLt: ", call, " failed at ", file, ":", line, ": status ", static_cast<int>(s), " (",
                  cublasLtGetStatusName(s), ": ", cublasLtGetStatusString(s), ")"));
}

}  // namespace kiln::cuda

#define KILN_CUBLAS_CHECK(call)                                                     \
  do {                                                                              \
    cublasStatus_t kiln_s_ = (call);                                                \
    if (kiln_s_ != CUBLAS_STATUS_SUCCESS) ::kiln::cuda::throw_cublas(kiln_s_, #call, __FILE__, __LINE__); \
  } while (0)
