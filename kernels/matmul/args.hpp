// Arguments of the matmul kernel (kernels/matmul/matmul.cuh, which runs cuBLASLt through
// kernels/matmul/cublaslt.hpp; front-end ops/matmul.hpp, CPU reference backend/cpu/matmul.hpp).
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// out[..., m, n] = a[..., m, k] · b[..., k, n] for every batch index. All three views have the same
// rank and batch sizes; out.dtype is the element type of all three (f32, f64, bf16, f16).
// float32 runs in TF32 only after kiln::cuda::set_allow_tf32(true) (kernels/matmul/cublaslt.hpp).
struct MatmulArgs {
  static constexpr const char* kernel = "matmul";
  static constexpr const char* header = "kiln/kernels/matmul/matmul.cuh";
  DeviceLaunch launch;
  TensorView out;  // [batch..., m, n], row-major matrices (any row stride >= n; matmul.cuh)
  TensorView a;    // [batch..., m, k], broadcast to out's batch dims (stride 0 there); matrices
                   // row-major or transposed (unit column or unit row stride, math/matmul.hpp)
  TensorView b;    // [batch..., k, n], the same rules
  TensorView addend;  // optional: out = addend + a·b (added in the GEMM's epilogue); out's shape and strides
};

}  // namespace kiln::kernels
