// Arguments of the grouped FP8 GEMM kernels (launcher grouped_fp8_gemm.cuh; front-end
// ops/grouped_fp8_gemm.hpp; CPU reference backend/cpu/grouped_fp8_gemm.hpp). Plain structs: g++
// compiles this file.
//
// The G products of a Mixture-of-Experts layer's expert linears, in DeepSeek-V3's FP8 recipe:
//
//   D[r, n] = Σ_kb a_scale(r, kb) · b_scale_g(n / 128, kb) · Σ_{k in kb} A[r, k] · B_g[n, k]
//
// for every row r of group g. A is e4m3 [rows_total, K] row-major with one FP32 scale per 1×128
// tile (k-block major: scale(r, kb) = a_scale[kb · a_scale_ld + r], the layout of
// fp8::QuantizedMatrix's row_1x128); B is G stacked e4m3 matrices [G, N, K] row-major, one FP32
// scale per 128×128 block: b_scale [G, ceil(N/128), ceil(K/128)] contiguous; D is [rows_total, N]
// row-major, bf16 or float. The same kernel serves the forward (A = tokens, B_g = W_g [out, in])
// and the data gradient (A = dY, B_g = W_gᵀ quantized by 128×128 blocks: the same element sets as
// W_g's blocks, so its scales are W_g's, transposed).
//
// Which rows belong to which group (`index`, int32 or int64, on the device: the host never reads it):
//   contiguous  rows_total = rows; index = offsets [G + 1]: group g owns rows offsets[g] ..
//               offsets[g+1] − 1 (the dispatch order of kernels/moe/; empty groups allowed);
//   masked      rows_total = G · rows (rows = M_max, A viewed as [G, M_max, K]); index = counts [G]:
//               group g owns rows g·M_max .. g·M_max + min(counts[g], M_max) − 1 (decode-time batches,
//               where each expert gets a padded slot of M_max rows). Rows past a group's count are
//               neither read into any result nor written.
// Offsets and counts are clamped on the device (kernels/grouped_gemm/group_rows.cuh: GroupIndex),
// so corrupt values cannot move a read or a write out of bounds.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

enum class GroupedFp8Layout {
  contiguous,  // index = offsets [G + 1] into A's rows
  masked,      // A [G, M_max, K]; index = counts [G]
};

// Which kernel runs (the launcher in grouped_fp8_gemm.cuh; the front-end's fp8::GroupedGemmKernel).
enum class GroupedFp8GemmKernel {
  automatic,  // the Hopper kernel where the GPU and the arguments allow it, else the plain kernel
  hopper,     // the Hopper kernel (hopper.cuh); arguments it cannot take are an error
  simt,       // the plain CUDA kernel (simt.cuh)
};

struct GroupedFp8GemmArgs {
  static constexpr const char* kernel = "grouped_fp8_gemm";
  static constexpr const char* header = "kiln/kernels/grouped_fp8_gemm/grouped_fp8_gemm.cuh";
  DeviceLaunch launch;
  GroupedFp8GemmKernel implementation = GroupedFp8GemmKernel::automatic;
  GroupedFp8Layout layout = GroupedFp8Layout::contiguous;
  void* d = nullptr;                 // [rows_total, N] contiguous, bf16 or f32
  DType d_dtype = DType::bf16;
  const std::uint8_t* a = nullptr;   // e4m3 [rows_total, K] contiguous
  const float* a_scale = nullptr;    // 1×128 tiles, k-block major
  std::int64_t a_scale_ld = 0;       // ≥ rows_total, a multiple of 4
  const std::uint8_t* b = nullptr;   // e4m3 [G, N, K] contiguous
  const float* b_scale = nullptr;    // [G, ceil(N/128), ceil(K/128)] contiguous
  const void* index = nullptr;       // contiguous: offsets [G + 1]; masked: counts [G]
  DType index_dtype = DType::i64;    // i32 or i64
  std::int64_t rows = 0;             // contiguous: rows_total; masked: M_max
  int groups = 0;                    // G ≥ 1
  std::int64_t n = 0, k = 0;         // N, K ≥ 1
};

// The k-grouped product: the experts' weight gradient in FP8 (ops/k_grouped_fp8_gemm.hpp,
// launcher k_grouped.cuh). A [M, P] and B [N, P] are e4m3 in the k-grouped layout of
// math/k_grouped.hpp (group g's rows of the source at columns col_g .. col_g + count_g − 1, each
// group starting on a k-block), both with 1×128 tiles (k-block major scales over P's k-blocks, as
// fp8::QuantizedMatrix's row_1x128). For each group g:
//
//   D_g[m, n] = Σ_kb a_scale(m, c_g + kb) · b_scale(n, c_g + kb) · Σ_{k in kb} A[m, col_g + k] · B[n, col_g + k]
//
// over the group's count_g columns (c_g = col_g / 128: the group's first k-block); D [G, M, N]
// contiguous, bf16 or f32; an empty group's D_g is 0.
struct KGroupedFp8GemmArgs {
  static constexpr const char* kernel = "k_grouped_fp8_gemm";
  static constexpr const char* header = "kiln/kernels/grouped_fp8_gemm/k_grouped.cuh";
  DeviceLaunch launch;
  GroupedFp8GemmKernel implementation = GroupedFp8GemmKernel::automatic;  // hopper, simt or automatic
  void* d = nullptr;                 // [G, M, N] contiguous
  DType d_dtype = DType::bf16;
  const std::uint8_t* a = nullptr;   // e4m3 [M, P], row stride P
  const float* a_scale = nullptr;    // [P/128, a_scale_ld], k-block major
  std::int64_t a_scale_ld = 0;       // ≥ M, a multiple of 4
  const std::uint8_t* b = nullptr;   // e4m3 [N, P], row stride P
  const float* b_scale = nullptr;    // [P/128, b_scale_ld], k-block major
  std::int64_t b_scale_ld = 0;       // ≥ N, a multiple of 4
  std::int64_t columns = 0;          // P, a multiple of 128
  const std::int64_t* offsets = nullptr;  // [G + 1] on the device: the source rows of each group
  std::int64_t rows = 0;             // R: the source's rows (offsets are clamped to [0, R])
  int groups = 0;                    // G ≥ 1
  std::int64_t m = 0, n = 0;         // M, N ≥ 1
};

}  // namespace kiln::kernels
