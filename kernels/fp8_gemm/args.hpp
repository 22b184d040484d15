// Arguments of the FP8 kernels (front-end ops/fp8_gemm.hpp; CPU references backend/cpu/fp8_gemm.hpp;
// the scale rules both sides share are math/fp8.hpp). Plain structs: g++ compiles this file.
//
// Fp8GemmArgs: every FP8 GEMM kernel of kiln takes it (the Hopper kernel in gemm_hopper.cuh and the
// plain CUDA kernel in gemm_simt.cuh compute the same function from the same arguments; gemm.cuh
// picks one and registers the launcher).
//
//   D[m, n] = sum over k-blocks kb of  a_scale(m, kb) · b_scale(n, kb) · sum_{k in kb} A[m, k] · B[n, k]
//
// A is e4m3 [M, K] row-major (one FP32 scale per 1×128 tile: per row, per 128 columns); B is e4m3
// [N, K] row-major ("TN": both operands K-major, the layout FP8 wgmma requires) with one scale per
// 128×128 block (weights) or per 1×128 tile (the transposed activations of the weight gradient).
// A k-block is 128 consecutive k; the last one may be partial (K need not be a multiple of 128).
//
// Scale layouts (what kiln::fp8::quantize_* produce, see include/kiln/ops/fp8_gemm.hpp;
// fp8::scale_index in math/fp8.hpp):
//   1×128 tiles:   k-block major, scale(row, kb) = scale[kb * scale_ld + row], scale_ld ≥ rows and a
//                  multiple of 4, so the scales of one k-block for a run of rows are contiguous and
//                  16-byte aligned (one bulk copy per k-block for a tile of rows);
//   128×128 blocks: row-major [ceil(rows/128), ceil(K/128)], scale(row, kb) = scale[(row/128) * scale_ld + kb].
//
// Fp8QuantizeArgs: the quantization kernels (quantize.cuh) that produce those operands.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/math/fp8.hpp"

namespace kiln::kernels {

// Which GEMM kernel runs (kiln::fp8::GemmKernel in the front-end).
enum class Fp8GemmKernel {
  automatic,  // the Hopper kernel where the GPU and the arguments allow it, else the plain kernel
  hopper,     // the Hopper kernel (gemm_hopper.cuh); arguments it cannot take are an error
  simt,       // the plain CUDA kernel (gemm_simt.cuh)
};

struct Fp8GemmArgs {
  static constexpr const char* kernel = "fp8_gemm";
  static constexpr const char* header = "kiln/kernels/fp8_gemm/gemm.cuh";
  DeviceLaunch launch;
  Fp8GemmKernel implementation = Fp8GemmKernel::automatic;  // which kernel runs
  void* d = nullptr;                // [M, N], row stride ldd (elements), bf16 or f32
  DType d_dtype = DType::bf16;      // of d: bf16 or f32
  std::int64_t ldd = 0;             // d's row stride, elements
  const std::uint8_t* a = nullptr;  // e4m3 bytes [M, K], row stride lda (bytes)
  std::int64_t lda = 0;             // a's row stride, bytes
  const float* a_scale = nullptr;   // 1×128 tiles, k-block major (see above)
  std::int64_t a_scale_ld = 0;      // a_scale's leading dimension: ≥ M, a multiple of 4
  const std::uint8_t* b = nullptr;  // e4m3 bytes [N, K], row stride ldb (bytes)
  std::int64_t ldb = 0;             // b's row stride, bytes
  const float* b_scale = nullptr;   // 128×128 blocks (row-major) or 1×128 tiles (k-block major): b_tile_rows
  std::int64_t b_scale_ld = 0;      // b_scale's leading dimension (see the layouts above)
  int b_tile_rows = 128;            // 128: 128×128 blocks; 1: 1×128 tiles (k-block major)
  std::int64_t m = 0, n = 0, k = 0;  // D is [m, n]; the sums run over k
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

// Quantization of a matrix L (float or bf16) to e4m3 with one scale per tile (math/fp8.hpp has the
// recipe; the kernels are bit-identical to the CPU's). The kernels read a source matrix S with unit
// stride along its rows; L is S itself, or Sᵀ (`transposed`) for the tilings of the backward pass
// (the front-end picks whichever view of x reads rows contiguously).
struct Fp8QuantizeArgs {
  static constexpr const char* kernel = "fp8_quantize";
  static constexpr const char* header = "kiln/kernels/fp8_gemm/quantize.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;         // of S: f32 or bf16
  const void* src = nullptr;        // S [src_rows, src_cols], row stride lds, unit column stride
  std::int64_t src_rows = 0, src_cols = 0, lds = 0;
  bool transposed = false;          // L = Sᵀ [src_cols, src_rows]; false: L = S
  fp8::Tiling tiling = fp8::Tiling::row_1x128;
  std::uint8_t* q = nullptr;        // L's e4m3 bytes, contiguous row-major
  // Scale storage: 1×128 tiles [ceil(L cols/128), scale_ld], k-block major, scale_ld ≥ L rows (the
  // padding entries are set to 0); 128×128 blocks [ceil(L rows/128), ceil(L cols/128)], row stride scale_ld.
  float* scale = nullptr;
  std::int64_t scale_ld = 0;
  float amax_floor = 1e-4f;         // lower bound on a tile's amax (≥ 1e-30)
  bool power_of_two = false;        // round each scale up to a power of two
  // k-grouped (math/k_grouped.hpp; with transposed and row_1x128 only): L is the groups'
  // transposes side by side, [src_cols, k_grouped_cols], group g's rows of S (offsets[g] ..
  // offsets[g+1] − 1) at columns col_g .. of L, zeros in the columns between groups and past the
  // last one. S = X [R, C] with src_rows = R. Null offsets: L = Sᵀ as above.
  const std::int64_t* k_group_offsets = nullptr;  // [k_groups + 1] on the device, int64
  std::int64_t k_groups = 0;
  std::int64_t k_grouped_cols = 0;  // P = k_grouped_columns(R, G): L's row length
  // Batched 128×128 blocks (stacked weights [G, N, K] in one launch): `batch` matrices, the b-th
  // read from src + b·src_batch elements and written to q + b·q_batch bytes and scale +
  // b·scale_batch floats, each as described above.
  std::int64_t batch = 1, src_batch = 0, q_batch = 0, scale_batch = 0;
  // S and Sᵀ from one read (not transposed; batched with q_batch and scale_batch too): q and scale
  // get L = S as above, q_t and scale_t L = Sᵀ ([src_cols, src_rows] bytes). 1×128 tiles (bf16 S
  // only): scales [ceil(src_rows/128), scale_t_ld], k-block major, scale_t_ld ≥ src_cols, padding
  // set to 0. 128×128 blocks: scales [ceil(src_cols/128), ceil(src_rows/128)], row stride scale_t_ld.
  std::uint8_t* q_t = nullptr;
  float* scale_t = nullptr;
  std::int64_t scale_t_ld = 0;
};

}  // namespace kiln::kernels
