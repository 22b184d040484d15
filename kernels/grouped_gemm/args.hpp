// Arguments of the grouped GEMM kernels (kernels/grouped_gemm/grouped_gemm.cuh; front-end
// ops/grouped_linear.hpp; CPU reference backend/cpu/grouped_gemm.hpp).
//
// Rows of x [R, K] are sorted by group: group g owns rows offsets[g] .. offsets[g+1] − 1 (offsets
// [G+1] int64 on the device: the host never reads them). weight [G, N, K] stacks G linear weights
// [out, in]. Every buffer is contiguous; dtypes bf16 or fp16, accumulation in float.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

enum class GroupedGemmKind {
  forward,  // y [R, N] = x [R, K] · W_gᵀ for the rows of each group
  dgrad,    // dx [R, K] = dy [R, N] · W_g
  wgrad,    // dW [G, N, K]: dW_g = dy_gᵀ · x_g, summed over the group's rows (zero for an empty group)
};

// What the kernel does with the product before it is stored (the expert MLP's SwiGLU fused into
// its GEMMs; ops/grouped_swiglu_mlp.hpp). math::Swiglu / math::SwigluGrad of kiln/math/swiglu.hpp,
// in float, on the products rounded to the 16-bit type: the arithmetic of grouped_linear followed
// by kiln::swiglu, without the [R, 2I] round trip between them.
enum class GroupedGemmEpilogue {
  none,
  // forward over W [G, 2I, K] (each expert's gate rows, then its up rows; N = 2I, I a multiple of
  // 8): gate_up [R, 2I] receives the product (the backward's input), out [R, I] silu(gate)·up.
  swiglu,
  // dgrad of the MLP's second product (W [G, H, I]: N = H, K = I): with da = dy·W_g rounded, out
  // [R, 2I] receives the SwiGLU's gradients d_gate | d_up at gate_up's gate | up (read).
  swiglu_backward,
};

// Which kernel runs (grouped_gemm.cuh's launcher). automatic: the Hopper kernel where the GPU and
// the arguments allow it (grouped_gemm_hopper_supports), unless the environment variable
// KILN_GROUPED_GEMM=plain (read once per process) turns it off; else the plain kernel.
enum class GroupedGemmKernel {
  automatic,
  hopper,  // the Hopper kernel (grouped_gemm_hopper.cuh); arguments it cannot take are an error
  plain,   // the mma.sync kernel (grouped_gemm.cuh)
};

struct GroupedGemmArgs {
  static constexpr const char* kernel = "grouped_gemm";
  static constexpr const char* header = "kiln/kernels/grouped_gemm/grouped_gemm.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;
  GroupedGemmKind kind = GroupedGemmKind::forward;
  void* out = nullptr;                     // forward: y [R, N]; dgrad: dx [R, K]; wgrad: dW [G, N, K]
  const void* x = nullptr;                 // forward, wgrad: x [R, K]
  const void* dy = nullptr;                // dgrad, wgrad: dy [R, N]
  const void* weight = nullptr;            // forward, dgrad: W [G, N, K]
  const std::int64_t* offsets = nullptr;   // [G + 1]
  std::int64_t rows = 0;                   // R
  int groups = 0, n = 0, k = 0;            // G, N (out features), K (in features); N, K multiples of 8
  GroupedGemmKernel implementation = GroupedGemmKernel::automatic;
  int hopper_block_n = 0;                  // the Hopper kernel's tile width: 128, 256, or 0 (chosen by shape)
  GroupedGemmEpilogue epilogue = GroupedGemmEpilogue::none;
  void* gate_up = nullptr;                 // the SwiGLU epilogues' [R, 2I]: written (swiglu), read (backward)
  // wgrad on the Hopper kernel: each group's rows summed in chunks of this many rows (a multiple of
  // 64), the chunks of a tile added in order (kernels/grouped_gemm/wgrad_chunks.cuh); 0: one chunk a
  // group, or with KILN_GROUPED_WGRAD_CHUNKS=on in the environment chosen by shape and SM count.
  std::int64_t wgrad_chunk_rows = 0;
};

}  // namespace kiln::kernels
