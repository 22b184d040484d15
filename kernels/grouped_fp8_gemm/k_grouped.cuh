// The k-grouped FP8 GEMM: the weight gradient of an MoE layer's experts in DeepSeek-V3's recipe
// (front-end ops/k_grouped_fp8_gemm.hpp; the function and the layout in args.hpp and
// math/k_grouped.hpp), registered for KGroupedFp8GemmArgs.
//
// Plain CUDA kernel: the dense plain kernel's tile routine (kernels/fp8_gemm/gemm_simt.cuh:
// fp8_simt::gemm_tile, FP32 products, the promotion at every k-block's end) on one group's
// columns. Grid (ceil(N/64), ceil(M/64), G): block (x, y, g) finds group g's columns from the
// device offsets (math/k_grouped.hpp: k_group, a loop over the groups before it), points the
// dense kernel's Problem at them (A and B from column col_g, their k-block major scales from
// k-block col_g/128: groups start on k-block boundaries, so the tiles' k-blocks are the group's own)
// with K = count_g, and computes its 64 × 64 tile of D_g (zeros for an empty group). FLOPs 2·M·N·R
// over all groups, on CUDA cores: a tensor-core (wgmma) variant is not written yet, which is why
// FP8 training leaves the experts' weight gradient unquantized on the GPU by default
// (nn/fp8_linear.hpp: Fp8LinearOptions::grouped_fp8_wgrad).
#pragma once

#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/fp8_gemm/gemm_simt.cuh"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/math/k_grouped.hpp"

namespace kiln::kernels::k_grouped_fp8_simt {

// base: A, B and their scales from column 0, D = group 0's output, K unset.
template <class Out>
__global__ void __launch_bounds__(fp8_simt::kThreads)
    k_grouped_kernel(const fp8_simt::Problem base, const std::int64_t* __restrict__ offsets, std::int64_t rows) {
  using namespace fp8_simt;
  __shared__ float as[kChunk][kPitch], bs[kChunk][kPitch];
  const auto g = static_cast<std::int64_t>(blockIdx.z);
  const fp8::KGroup k = fp8::k_group(offsets, rows, g);
  const std::int64_t kb0 = k.column / 128;
  Problem p = base;
  p.a = base.a + k.column;
  p.a_scale = base.a_scale + kb0 * base.a_scale_ld;
  p.b = base.b + k.column;
  p.b_scale = base.b_scale + kb0 * base.b_scale_ld;
  p.k = k.count;
  p.d = static_cast<Out*>(base.d) + g * base.m * base.n;
  const bool a_aligned8 = (reinterpret_cast<std::uintptr_t>(p.a) | static_cast<std::uintptr_t>(p.lda)) % 8 == 0;
  const bool b_aligned8 = (reinterpret_cast<std::uintptr_t>(p.b) | static_cast<std::uintptr_t>(p.ldb)) % 8 == 0;
  gemm_tile<Out>(p, static_cast<std::int64_t>(blockIdx.y) * kBlockM, static_cast<std::int64_t>(blockIdx.x) * kBlockN,
                 a_aligned8, b_aligned8, as, bs);
}

}  // namespace kiln::kernels::k_grouped_fp8_simt

namespace kiln::kernels {

inline void launch_k_grouped_fp8_gemm(const KGroupedFp8GemmArgs& a) {
  using namespace fp8_simt;
  const char* op = KGroupedFp8GemmArgs::kernel;
  if (a.m == 0 || a.n == 0 || a.groups == 0) return;
  const std::int64_t grid_x = (a.n + kBlockN - 1) / kBlockN, grid_y = (a.m + kBlockM - 1) / kBlockM;
  check(grid_x <= 0x7FFFFFFF && grid_y <= 65535 && a.groups <= 65535, op, "takes M up to ", 65535 * kBlockM,
        " and up to 65535 groups, got M = ", a.m, ", N = ", a.n, ", ", a.groups, " groups");
  check(a.columns % 128 == 0, op, "the k-grouped layout has a multiple of 128 columns, got ", a.columns);
  const Problem base{a.d, a.d_dtype, a.n, a.a, a.columns, a.a_scale, a.a_scale_ld, a.b, a.columns, a.b_scale,
                     a.b_scale_ld, 1, a.m, a.n, 0};
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(a.groups));
  cuda::DeviceGuard guard(a.launch.device);
  switch (a.d_dtype) {
    case DType::f32:
      k_grouped_fp8_simt::k_grouped_kernel<float><<<grid, kThreads, 0, a.launch.stream>>>(base, a.offsets, a.rows);
      break;
    case DType::bf16:
      k_grouped_fp8_simt::k_grouped_kernel<bf16><<<grid, kThreads, 0, a.launch.stream>>>(base, a.offsets, a.rows);
      break;
    default: fail(op, "writes float32 or bfloat16, got ", a.d_dtype);
  }
  KILN_CUDA_CHECK_LAUNCH();
  record_kernel_variant(op, "simt");
}

inline const bool k_grouped_fp8_gemm_registered = register_device_kernel(&launch_k_grouped_fp8_gemm);

}  // namespace kiln::kernels
