// The k-grouped FP8 GEMM: the weight gradient of an MoE layer's experts in DeepSeek-V3's recipe
// (front-end ops/k_grouped_fp8_gemm.hpp; the function and the layout in args.hpp and
// math/k_grouped.hpp), registered for KGroupedFp8GemmArgs. Two kernels, chosen like the dense
// FP8 GEMM's (automatic: the Hopper one where it applies); each launch records which ran
// ("k_grouped_fp8_gemm/hopper" or "/simt").
//
// Hopper: the dense Hopper FP8 GEMM (kernels/fp8_gemm/gemm_hopper.cuh) with its split-K units as
// the groups. A one-block kernel first writes each group's run of k-blocks of the layout,
// [col_g / 128, ceil((col_g + count_g) / 128)), into a small device array (no host read); unit
// (tile, g) then sums group g's run with the promoted wgmma k-loop (B with 1×128 scales, the
// dense kernel's weight-gradient tiling) and stores its tile into slice g of D [G, M, N] through
// a 3-D TMA map, in D's own dtype (no workspace, no reduction). The columns between groups are
// zeros in both operands, so a group's partial last k-block reads only zeros past its end. Needs
// sm_90, M and N multiples of 16, 16-byte aligned operands, G ≤ 1024; 128 × 128 tiles (64 rows
// for M ≤ 64), promotion every 128 of K. Units: G · ceil(M/BM) · ceil(N/128) on a persistent grid.
//
// Plain CUDA: the dense plain kernel's tile routine (kernels/fp8_gemm/gemm_simt.cuh:
// fp8_simt::gemm_tile, FP32 products, the promotion at every k-block's end) on one group's
// columns. Grid (ceil(N/64), ceil(M/64), G): block (x, y, g) finds group g's columns from the
// device offsets (math/k_grouped.hpp: k_group, a loop over the groups before it), points the
// dense kernel's Problem at them (A and B from column col_g, their k-block major scales from
// k-block col_g/128: groups start on k-block boundaries, so the tiles' k-blocks are the group's own)
// with K = count_g, and computes its 64 × 64 tile of D_g (zeros for an empty group).
//
// FLOPs 2·M·N·R over all groups; bytes about (M + N)·P for the operands (each k-block of A and B
// read once per output tile row or column of tiles) and G·M·N·sizeof(Out) for D. Both kernels were
// written without a GPU (2026-12-05): FP8 training leaves the experts' weight gradient unquantized
// by default until they are tested and measured (nn/fp8_linear.hpp: grouped_fp8_wgrad).
#pragma once

#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/fp8_gemm/gemm_hopper.cuh"
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

// ranges[2g], ranges[2g + 1]: group g's k-blocks of the layout (one block; thread g per group).
static __global__ void k_group_runs_kernel(const std::int64_t* __restrict__ offsets, std::int64_t rows, int groups,
                                           int* __restrict__ ranges) {
  for (int g = static_cast<int>(threadIdx.x); g < groups; g += static_cast<int>(blockDim.x)) {
    const fp8::KGroup k = fp8::k_group(offsets, rows, g);
    ranges[2 * g] = static_cast<int>(k.column / 128);
    ranges[2 * g + 1] = static_cast<int>((k.column + k.count + 127) / 128);
  }
}

}  // namespace kiln::kernels::k_grouped_fp8_simt

namespace kiln::kernels {

inline bool k_grouped_fp8_gemm_hopper_supports(const KGroupedFp8GemmArgs& a) {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return device_info(a.launch.device).major == 9 && a.m % 16 == 0 && a.n % 16 == 0 && a.groups <= 1024 &&
         a.columns % 128 == 0 && a.columns <= 0x7fffffff && a.m <= 0x7fffffff && a.n <= 0x7fffffff &&
         a.a_scale_ld % 4 == 0 && a.b_scale_ld % 4 == 0 && aligned(a.a) && aligned(a.b) && aligned(a.a_scale) &&
         aligned(a.b_scale) && aligned(a.d);
}

inline void launch_k_grouped_fp8_gemm_hopper(const KGroupedFp8GemmArgs& a) {
  using namespace fp8_hopper;
  const int device = a.launch.device;
  const cudaStream_t stream = a.launch.stream;
  // Each group's k-block run, computed on the device from the offsets.
  const Tensor<int> runs({2 * static_cast<std::int64_t>(a.groups)}, Device::cuda(device));
  k_grouped_fp8_simt::k_group_runs_kernel<<<1, 256, 0, stream>>>(a.offsets, a.rows, a.groups, runs.data());
  KILN_CUDA_CHECK_LAUNCH();
  const int bm = a.m <= 64 ? 64 : 128;
  Params p{};
  p.m = static_cast<int>(a.m);
  p.n = static_cast<int>(a.n);
  p.k = static_cast<int>(a.columns);
  p.num_kb = static_cast<int>(a.columns / 128);
  p.a_scale = a.a_scale;
  p.a_scale_ld = a.a_scale_ld;
  p.b_scale = a.b_scale;
  p.b_scale_ld = a.b_scale_ld;
  p.b_rowwise = 1;
  p.promote = 1;
  p.out_is_fp32 = a.d_dtype == DType::f32;
  p.m_tiles = static_cast<int>((a.m + bm - 1) / bm);
  p.n_tiles = static_cast<int>((a.n + 127) / 128);
  p.splits = a.groups;
  p.kb_per_split = 0;
  p.units = p.m_tiles * p.n_tiles * p.splits;
  p.kb_ranges = runs.data();
  const CUtensorMap a_map = make_tensor_map(a.a, a.m, a.columns, a.columns, bm);
  const CUtensorMap b_map = make_tensor_map(a.b, a.n, a.columns, a.columns, 128);
  const CUtensorMap d_map = make_output_map(a.d, a.d_dtype == DType::f32, a.m, a.n, a.n, a.groups);
  if (bm == 128)
    fp8_hopper::launch<128, 128, 128, 1>(a_map, b_map, d_map, p, device, stream);
  else
    fp8_hopper::launch<64, 128, 128, 1>(a_map, b_map, d_map, p, device, stream);
}

inline void launch_k_grouped_fp8_gemm(const KGroupedFp8GemmArgs& a) {
  using namespace fp8_simt;
  const char* op = KGroupedFp8GemmArgs::kernel;
  if (a.m == 0 || a.n == 0 || a.groups == 0) return;
  check(a.columns % 128 == 0, op, "the k-grouped layout has a multiple of 128 columns, got ", a.columns);
  check(a.d_dtype == DType::f32 || a.d_dtype == DType::bf16, op, "writes float32 or bfloat16, got ", a.d_dtype);
  cuda::DeviceGuard guard(a.launch.device);
  check(a.implementation != GroupedFp8GemmKernel::hopper || k_grouped_fp8_gemm_hopper_supports(a), op,
        "the Hopper kernel needs an sm_90 GPU, M and N multiples of 16 (got M = ", a.m, ", N = ", a.n,
        "), at most 1024 groups (got ", a.groups, ") and 16-byte aligned operands");
  if (a.implementation == GroupedFp8GemmKernel::hopper ||
      (a.implementation == GroupedFp8GemmKernel::automatic && k_grouped_fp8_gemm_hopper_supports(a))) {
    launch_k_grouped_fp8_gemm_hopper(a);
    record_kernel_variant(op, "hopper");
    return;
  }
  const std::int64_t grid_x = (a.n + kBlockN - 1) / kBlockN, grid_y = (a.m + kBlockM - 1) / kBlockM;
  check(grid_x <= 0x7FFFFFFF && grid_y <= 65535 && a.groups <= 65535, op, "takes M up to ", 65535 * kBlockM,
        " and up to 65535 groups, got M = ", a.m, ", N = ", a.n, ", ", a.groups, " groups");
  const Problem base{a.d, a.d_dtype, a.n, a.a, a.columns, a.a_scale, a.a_scale_ld, a.b, a.columns, a.b_scale,
                     a.b_scale_ld, 1, a.m, a.n, 0};
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(a.groups));
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
