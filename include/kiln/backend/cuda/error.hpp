// Every CUDA and cuBLASLt call is checked; a failure becomes a kiln::Error naming the file, the
// line, the call and the CUDA message. Kernel launches are followed by KILN_CUDA_CHECK_LAUNCH().
// The CUDA checks live with the kernels (kernels/common/cuda_check.hpp); cuBLASLt's are here.
#pragma once

#include <cublasLt.h>

#include "kiln/kernels/common/cuda_check.hpp"

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
