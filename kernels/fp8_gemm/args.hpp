// The arguments every FP8 GEMM kernel of kiln takes (the Hopper kernel in gemm_hopper.cuh and the
// plain CUDA kernel in gemm_simt.cuh compute the same function from the same arguments).
//
//   D[m, n] = sum over k-blocks kb of  a_scale(m, kb) · b_scale(n, kb) · sum_{k in kb} A[m, k] · B[n, k]
//
// A is e4m3 [M, K] row-major (one FP32 scale per 1×128 tile: per row, per 128 columns); B is e4m3
// [N, K] row-major ("TN": both operands K-major, the layout FP8 wgmma requires) with one scale per
// 128×128 block (weights) or per 1×128 tile (the transposed activations of the weight gradient).
// A k-block is 128 consecutive k; the last one may be partial (K need not be a multiple of 128).
//
// Scale layouts (what kiln::fp8::quantize_* produce, see include/kiln/ops/fp8_gemm.hpp):
//   1×128 tiles:   k-block major, scale(row, kb) = scale[kb * scale_ld + row], scale_ld ≥ rows and a
//                  multiple of 4, so the scales of one k-block for a run of rows are contiguous and
//                  16-byte aligned (one bulk copy per k-block for a tile of rows);
//   128×128 blocks: row-major [ceil(rows/128), ceil(K/128)], scale(row, kb) = scale[(row/128) * scale_ld + kb].
#pragma once

#include <cstdint>

#include "kiln/core/dtype.hpp"
#include "kiln/core/low_precision.hpp"  // KILN_HD

namespace kiln::kernels {

struct Fp8GemmArgs {
  void* d = nullptr;               // [M, N], row stride ldd (elements), bf16 or f32
  DType d_dtype = DType::bf16;
  std::int64_t ldd = 0;
  const std::uint8_t* a = nullptr;  // e4m3 bytes [M, K], row stride lda (bytes)
  std::int64_t lda = 0;
  const float* a_scale = nullptr;   // 1×128 tiles, k-block major (see above)
  std::int64_t a_scale_ld = 0;
  const std::uint8_t* b = nullptr;  // e4m3 bytes [N, K], row stride ldb (bytes)
  std::int64_t ldb = 0;
  const float* b_scale = nullptr;
  std::int64_t b_scale_ld = 0;
  int b_tile_rows = 128;            // 128: 128×128 blocks; 1: 1×128 tiles (k-block major)
  std::int64_t m = 0, n = 0, k = 0;
  // true: each k-block's partial sum leaves the tensor cores' accumulator after 128 elements of K and
  // is scaled and added in FP32 on CUDA cores (DeepSeek-V3's promotion). false: the whole K is
  // accumulated in the tensor cores and scaled once at the end, which is only the same function when
  // the scales are constant along K (per-tensor or per-row scaling); it exists to measure why
  // promotion is needed. Kernels without tensor cores ignore it.
  bool promote = true;
  // Elements of K summed in the tensor cores between promotions: 128 (one k-block, DeepSeek-V3's
  // N_C), 64 or 32. Hopper's FP8 tensor cores keep about 13 mantissa bits and truncate each wgmma's
  // sum, so shorter intervals lower the error (and cost CUDA-core work). The plain kernel ignores it.
  int promotion_interval = 128;
};

// The scale of A's row m in k-block kb, and of B's row n in k-block kb.
KILN_HD inline float fp8_a_scale(const Fp8GemmArgs& g, std::int64_t m, std::int64_t kb) {
  return g.a_scale[kb * g.a_scale_ld + m];
}
KILN_HD inline float fp8_b_scale(const Fp8GemmArgs& g, std::int64_t n, std::int64_t kb) {
  return g.b_tile_rows == 1 ? g.b_scale[kb * g.b_scale_ld + n] : g.b_scale[(n / 128) * g.b_scale_ld + kb];
}

}  // namespace kiln::kernels
