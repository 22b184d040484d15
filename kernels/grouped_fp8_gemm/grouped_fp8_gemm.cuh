// The grouped FP8 GEMM launcher for kiln::fp8::grouped_gemm / grouped_gemm_masked
// (include/kiln/ops/grouped_fp8_gemm.hpp), registered for GroupedFp8GemmArgs (args.hpp): runs the
// Hopper kernel (hopper.cuh) when args.implementation asks for it, or is automatic and the GPU and
// the arguments allow it (grouped_fp8_gemm_hopper_supports); else the plain CUDA kernel (simt.cuh).
// Each launch records which one ran (core/kernel_trace.hpp: "grouped_fp8_gemm/hopper",
// "grouped_fp8_gemm/hopper_multicast" or "grouped_fp8_gemm/simt"). Nothing runs when there are no
// rows (R = 0, or M_max = 0).
#pragma once

#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/kernels/grouped_fp8_gemm/hopper.cuh"
#include "kiln/kernels/grouped_fp8_gemm/simt.cuh"

namespace kiln::kernels {

inline void launch_grouped_fp8_gemm(const GroupedFp8GemmArgs& a) {
  if (a.rows == 0 || a.groups == 0 || a.n == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  const bool hopper = a.implementation == GroupedFp8GemmKernel::hopper ||
                      (a.implementation == GroupedFp8GemmKernel::automatic && grouped_fp8_gemm_hopper_supports(a));
  if (hopper) {
    record_kernel_variant(GroupedFp8GemmArgs::kernel, launch_grouped_fp8_gemm_hopper(a));
  } else {
    launch_grouped_fp8_gemm_simt(a);
    record_kernel_variant(GroupedFp8GemmArgs::kernel, "simt");
  }
}

inline const bool grouped_fp8_gemm_registered = register_device_kernel(&launch_grouped_fp8_gemm);

}  // namespace kiln::kernels
