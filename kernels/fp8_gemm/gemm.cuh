// CUDA entry "fp8_gemm" for kiln::fp8::gemm (include/kiln/ops/fp8_gemm.hpp): unpacks the call into
// Fp8GemmArgs (args.cuh) and runs the Hopper kernel (gemm_hopper.cuh) when the GPU and the shapes
// allow it, else the plain CUDA kernel (gemm_simt.cuh).
//
// KernelCall: tensors {d [M, N] (row stride ldd, unit column stride), a.data [M, K] e4m3, a.scale
// [M, ceil(K/128)] with strides (1, ld), b.data [N, K] e4m3, b.scale ([ceil(N/128), ceil(K/128)]
// row-major, or [N, ceil(K/128)] with strides (1, ld))}; ints {b_tile_rows (128 or 1), promote (0/1),
// kernel (0 automatic, 1 hopper, 2 simt), optionally promotion_interval (32, 64, 128; default 128)}.
#pragma once

#include <cstdint>

#include "fp8_gemm/args.cuh"
#include "fp8_gemm/gemm_hopper.cuh"
#include "fp8_gemm/gemm_simt.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/core/dispatch.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::kernels {

inline Fp8GemmArgs fp8_gemm_args(const KernelCall& call) {
  const TensorArg& d = call.tensors[0];
  const TensorArg& a = call.tensors[1];
  const TensorArg& a_scale = call.tensors[2];
  const TensorArg& b = call.tensors[3];
  const TensorArg& b_scale = call.tensors[4];
  Fp8GemmArgs g;
  g.d = d.data;
  g.d_dtype = d.dtype;
  g.ldd = d.strides[0];
  g.a = static_cast<const std::uint8_t*>(a.data);
  g.lda = a.strides[0];
  g.a_scale = static_cast<const float*>(a_scale.data);
  g.a_scale_ld = a_scale.strides[1];
  g.b = static_cast<const std::uint8_t*>(b.data);
  g.ldb = b.strides[0];
  g.b_scale = static_cast<const float*>(b_scale.data);
  g.b_tile_rows = static_cast<int>(call.ints[0]);
  g.b_scale_ld = g.b_tile_rows == 1 ? b_scale.strides[1] : b_scale.strides[0];
  g.promote = call.ints[1] != 0;
  if (call.ints.size() > 3) g.promotion_interval = static_cast<int>(call.ints[3]);
  g.m = a.shape[0];
  g.n = b.shape[0];
  g.k = a.shape[1];
  return g;
}

inline void fp8_gemm_entry(const KernelCall& call) {
  const Fp8GemmArgs g = fp8_gemm_args(call);
  const int device = call.tensors[0].device;
  const std::int64_t kernel = call.ints[2];
  cudaStream_t stream = cuda::current_stream(device);
  const bool hopper = kernel == 1 || (kernel == 0 && fp8_gemm_hopper_supports(g, device));
  if (hopper) {
    // The split-K workspace comes from the caching allocator; freeing it after the launch is safe
    // because the allocator reuses memory in stream order.
    const std::int64_t workspace_floats = fp8_gemm_hopper_workspace(g, device);
    Tensor<float> workspace;
    if (workspace_floats > 0) workspace = Tensor<float>({workspace_floats}, Device::cuda(device));
    launch_fp8_gemm_hopper(g, workspace_floats > 0 ? workspace.data() : nullptr, device, stream);
  } else {
    launch_fp8_gemm_simt(g, stream);
  }
}

inline const bool fp8_gemm_registered = register_device_kernel("fp8_gemm", fp8_gemm_entry);

}  // namespace kiln::kernels
