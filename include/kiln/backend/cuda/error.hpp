// Every CUDA and cuBLASLt call is checked; a failure becomes a kiln::Error naming the file, the
// line, the call and the CUDA message. Kernel launches are followed by KILN_CUDA_CHECK_LAUNCH().
// The checks live with the kernels: the CUDA ones in kernels/common/cuda_check.hpp, cuBLASLt's
// with the matmul family (kernels/matmul/cublas_check.hpp); this header gathers both.
#pragma once

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/matmul/cublas_check.hpp"
