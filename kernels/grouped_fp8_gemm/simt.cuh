// The plain CUDA grouped FP8 GEMM: the function of args.hpp on any GPU, as G dense products run by
// the dense plain kernel's tile routine (kernels/fp8_gemm/gemm_simt.cuh: fp8_simt::gemm_tile, FP32
// products, the promotion at every k-block's end). It exists for GPUs other than sm_90, for shapes
// the Hopper kernel does not take (N or K not multiples of 16, misaligned operands), and as a
// second implementation the tests compare with the float64 reference.
//
// Work split: grid (ceil(N/64), Y, G); block (x, y, g) reads group g's rows from the device index
// (group_rows.cuh: GroupIndex), points the dense kernel's Problem at the group's operands (A's rows
// from the group's first row, its scales shifted by the same rows: 1×128 scales are k-block major,
// scale(r, kb) = a_scale[kb · ld + r]; B_g and its block scales at g · N · K and g · ceil(N/128) ·
// ceil(K/128)), then computes the group's 64-row tiles y, y + Y, ... Y = min(ceil(rows/64), 1024)
// with rows the most a group can hold (contiguous: R; masked: M_max): blocks past a group's tiles
// exit at once. Bytes and FLOPs as the dense plain kernel's on each group: it is CUDA-core bound.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/fp8_gemm/gemm_simt.cuh"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/kernels/grouped_fp8_gemm/group_index.cuh"
#include "kiln/kernels/grouped_gemm/group_rows.cuh"

namespace kiln::kernels::grouped_fp8_simt {

// base: the whole problem as the dense kernel sees it (A = all rows, B = group 0, d = all rows).
template <class Out>
__global__ void __launch_bounds__(fp8_simt::kThreads)
    grouped_kernel(const fp8_simt::Problem base, const grouped_gemm::GroupIndex groups) {
  using namespace fp8_simt;
  __shared__ float as[kChunk][kPitch], bs[kChunk][kPitch];
  const int g = static_cast<int>(blockIdx.z);
  std::int64_t start, count;
  groups(g, start, count);
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * kBlockN;
  if (static_cast<std::int64_t>(blockIdx.y) * kBlockM >= count) return;  // the whole block leaves together
  Problem p = base;
  const std::int64_t kblocks = (base.k + 127) / 128;
  p.a = base.a + start * base.lda;
  p.a_scale = base.a_scale + start;
  p.m = count;
  p.d = static_cast<Out*>(base.d) + start * base.ldd;
  p.b = base.b + static_cast<std::int64_t>(g) * base.n * base.k;
  p.b_scale = base.b_scale + static_cast<std::int64_t>(g) * ((base.n + 127) / 128) * kblocks;
  const bool a_aligned8 = (reinterpret_cast<std::uintptr_t>(p.a) | static_cast<std::uintptr_t>(p.lda)) % 8 == 0;
  const bool b_aligned8 = (reinterpret_cast<std::uintptr_t>(p.b) | static_cast<std::uintptr_t>(p.ldb)) % 8 == 0;
  for (std::int64_t m0 = static_cast<std::int64_t>(blockIdx.y) * kBlockM; m0 < count;
       m0 += static_cast<std::int64_t>(gridDim.y) * kBlockM)
    gemm_tile<Out>(p, m0, n0, a_aligned8, b_aligned8, as, bs);
}

}  // namespace kiln::kernels::grouped_fp8_simt

namespace kiln::kernels {

// Launches the plain kernel for the arguments (args.hpp) on a.launch.
inline void launch_grouped_fp8_gemm_simt(const GroupedFp8GemmArgs& a) {
  using namespace fp8_simt;
  const std::int64_t grid_x = (a.n + kBlockN - 1) / kBlockN;
  const std::int64_t grid_y = std::min<std::int64_t>((a.rows + kBlockM - 1) / kBlockM, 1024);
  check(grid_x <= 0x7FFFFFFF && a.groups <= 65535, "grouped_fp8_gemm", "the plain kernel takes up to 65535 groups, got ",
        a.groups, " (N = ", a.n, ")");
  const std::int64_t rows_total = a.layout == GroupedFp8Layout::masked ? a.rows * a.groups : a.rows;
  // The dense kernel's problem over all rows; each block narrows it to its group.
  const Problem base{a.d, a.d_dtype, a.n, a.a, a.k, a.a_scale, a.a_scale_ld, a.b, a.k, a.b_scale,
                     (a.k + 127) / 128, 128, rows_total, a.n, a.k};
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(a.groups));
  cuda::DeviceGuard guard(a.launch.device);
  const grouped_gemm::GroupIndex groups = grouped_fp8_group_index(a);
  switch (a.d_dtype) {
    case DType::f32:
      grouped_fp8_simt::grouped_kernel<float><<<grid, kThreads, 0, a.launch.stream>>>(base, groups);
      break;
    case DType::bf16:
      grouped_fp8_simt::grouped_kernel<bf16><<<grid, kThreads, 0, a.launch.stream>>>(base, groups);
      break;
    default: fail("grouped_fp8_gemm", "the plain kernel writes float32 or bfloat16, got ", a.d_dtype);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels
