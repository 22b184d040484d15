// The FP8 GEMM launcher for kiln::fp8::gemm (include/kiln/ops/fp8_gemm.hpp), registered for
// Fp8GemmArgs (args.hpp): runs the Hopper kernel (gemm_hopper.cuh) when args.implementation asks
// for it, or is automatic and the GPU and the shapes allow it; else the plain CUDA kernel
// (gemm_simt.cuh). Each launch records which one ran (core/kernel_trace.hpp: "fp8_gemm/hopper",
// "fp8_gemm/hopper_split_k", "fp8_gemm/hopper_multicast" or "fp8_gemm/simt").
#pragma once

#include <cstdint>

#include "kiln/core/kernel_trace.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/fp8_gemm/args.hpp"
#include "kiln/kernels/fp8_gemm/gemm_hopper.cuh"
#include "kiln/kernels/fp8_gemm/gemm_simt.cuh"

namespace kiln::kernels {

inline void launch_fp8_gemm(const Fp8GemmArgs& g) {
  const int device = g.launch.device;
  cuda::DeviceGuard guard(device);
  const bool hopper = g.implementation == Fp8GemmKernel::hopper ||
                      (g.implementation == Fp8GemmKernel::automatic && fp8_gemm_hopper_supports(g));
  if (hopper) {
    // The split-K workspace comes from the caching allocator; freeing it after the launch is safe
    // because the allocator reuses memory in stream order.
    const std::int64_t workspace_floats = fp8_gemm_hopper_workspace(g);
    Tensor<float> workspace;
    if (workspace_floats > 0) workspace = Tensor<float>({workspace_floats}, Device::cuda(device));
    const char* variant = launch_fp8_gemm_hopper(g, workspace_floats > 0 ? workspace.data() : nullptr);
    record_kernel_variant(Fp8GemmArgs::kernel, variant);
  } else {
    launch_fp8_gemm_simt(g);
    record_kernel_variant(Fp8GemmArgs::kernel, "simt");
  }
}

inline const bool fp8_gemm_registered = register_device_kernel(&launch_fp8_gemm);

}  // namespace kiln::kernels
