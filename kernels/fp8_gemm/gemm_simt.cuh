// The plain CUDA FP8 GEMM: the same function as the Hopper kernel (gemm_hopper.cuh), written with
// ordinary FP32 instructions so that it runs on any GPU and reads as a statement of the math.
//
//   D[m, n] = Σ_kb a_scale(m, kb) · b_scale(n, kb) · Σ_{k in kb} A[m, k] · B[n, k]
//
// A is e4m3 [M, K] with 1×128 scales, B e4m3 [N, K] with 128×128 or 1×128 scales (args.hpp).
//
// Tiling. A 256-thread block computes a 64×64 tile of D. K is walked in chunks of 32: the block
// stages A[m0:m0+64, k:k+32] and B[n0:n0+64, k:k+32] in shared memory, decoded to float (each
// thread decodes 8 bytes of each operand, with one 8-byte load when aligned), stored k-major
// (tile[k][row], pitch 65 so that the staging writes of a warp hit 32 different banks). Thread
// (tx, ty) of the 16×16 grid owns outputs (ty + 16i, tx + 16j), i, j < 4: per k it reads 4 values
// of A and 4 of B from shared memory (broadcasts / consecutive words: no bank conflicts) and does
// 16 FMAs into `part`.
//
// Promotion. `part` holds the FP32 sum over the current k-block only. When the walk leaves a
// k-block (every 4 chunks, or at K's end for a partial last block), each output adds
// part · (a_scale · b_scale) into its FP32 accumulator and `part` restarts from zero: exactly
// DeepSeek-V3's recipe, with the k-block sums in FP32 rather than in a tensor core's narrower
// accumulator. The `promote` flag (which only changes the Hopper kernel) is ignored here.
//
// Any M, N, K ≥ 1: rows past M or N and k past K are staged as zeros and never stored, so K need
// not be a multiple of 128 or 32 and N may be odd. Output float or bf16 (rounded once at the end).
// Throughput is modest (FP32 CUDA cores, no software pipelining): it exists for other GPUs, for
// odd shapes and for study, and the tests compare it with the float64 reference.
#pragma once

#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/fp8_gemm/args.hpp"
#include "kiln/math/fp8.hpp"

namespace kiln::kernels {

namespace fp8_simt {

// What the kernel reads of Fp8GemmArgs (args.hpp documents the fields), in the same order. The
// kernel takes this block of parameters rather than the whole Fp8GemmArgs (its launch and
// kernel-choice fields make it larger than 128 bytes, and nvcc then addresses the parameters
// differently: two more registers and another branch layout, measured on the PTX).
struct Problem {
  void* d;
  DType d_dtype;
  std::int64_t ldd;
  const std::uint8_t* a;
  std::int64_t lda;
  const float* a_scale;
  std::int64_t a_scale_ld;
  const std::uint8_t* b;
  std::int64_t ldb;
  const float* b_scale;
  std::int64_t b_scale_ld;
  int b_tile_rows;
  std::int64_t m, n, k;

  static Problem of(const Fp8GemmArgs& g) {
    return {g.d,   g.d_dtype, g.ldd,        g.a,           g.lda, g.a_scale, g.a_scale_ld, g.b,
            g.ldb, g.b_scale, g.b_scale_ld, g.b_tile_rows, g.m,   g.n,       g.k};
  }
};

// The scale of A's row m in k-block kb, and of B's row n in k-block kb (math/fp8.hpp: scale_index).
__device__ __forceinline__ float fp8_a_scale(const Problem& g, std::int64_t m, std::int64_t kb) {
  return g.a_scale[fp8::scale_index(1, g.a_scale_ld, m, kb)];
}
__device__ __forceinline__ float fp8_b_scale(const Problem& g, std::int64_t n, std::int64_t kb) {
  return g.b_scale[fp8::scale_index(g.b_tile_rows, g.b_scale_ld, n, kb)];
}

constexpr int kBlockM = 64, kBlockN = 64;  // output tile
constexpr int kChunk = 32;                 // k staged per step; 128 / kChunk steps per k-block
constexpr int kThreads = 256;
constexpr int kPitch = kBlockM + 1;        // shared-memory row pitch (floats)
static_assert(kBlockM == kBlockN && kThreads == kBlockM * kChunk / 8 && 128 % kChunk == 0);

// Stages rows [row0, row0 + 64) × k [k0, k0 + 32) of an e4m3 operand (row stride ld bytes) into
// tile[k - k0][row - row0] as floats, zeros outside [rows) × [K). Thread t takes row t / 4 and the
// 8 bytes at k0 + 8 (t % 4): consecutive threads read consecutive 8-byte pieces of a row.
__device__ __forceinline__ void stage(const std::uint8_t* __restrict__ x, std::int64_t ld, std::int64_t rows,
                                      std::int64_t K, std::int64_t row0, std::int64_t k0, bool aligned8,
                                      float (*tile)[kPitch]) {
  const int r = static_cast<int>(threadIdx.x) / 4, kq = (static_cast<int>(threadIdx.x) % 4) * 8;
  const std::int64_t row = row0 + r, k = k0 + kq;
  std::uint8_t b[8];
  if (row < rows && aligned8 && k + 8 <= K) {
    const uint2 w = *reinterpret_cast<const uint2*>(x + row * ld + k);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      b[j] = static_cast<std::uint8_t>(w.x >> (8 * j));
      b[j + 4] = static_cast<std::uint8_t>(w.y >> (8 * j));
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) b[j] = row < rows && k + j < K ? x[row * ld + k + j] : std::uint8_t{0};
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) tile[kq + j][r] = load(fp8_e4m3::from_bits(b[j]));
}

// The block's 64 × 64 tile of D at (m0, n0): every thread of the block calls it (it synchronises
// the block), with the same arguments. as, bs: the block's staging tiles in shared memory. The
// grouped FP8 GEMM's plain kernel (kernels/grouped_fp8_gemm/simt.cuh) calls it with one group's
// operands.
template <class Out>
__device__ __forceinline__ void gemm_tile(const Problem& g, std::int64_t m0, std::int64_t n0, bool a_aligned8,
                                          bool b_aligned8, float (*as)[kPitch], float (*bs)[kPitch]) {
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;

  float acc[4][4], part[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = part[i][j] = 0.0f;

  for (std::int64_t k0 = 0; k0 < g.k; k0 += kChunk) {
    stage(g.a, g.lda, g.m, g.k, m0, k0, a_aligned8, as);
    stage(g.b, g.ldb, g.n, g.k, n0, k0, b_aligned8, bs);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kChunk; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fmaf(a[i], b[j], part[i][j]);
    }
    __syncthreads();  // before the next chunk overwrites the tiles

    // Promotion at the end of each k-block (128 k) and at the end of K.
    const std::int64_t k_next = k0 + kChunk;
    if (k_next % 128 == 0 || k_next >= g.k) {
      const std::int64_t kb = k0 / 128;
      float sa[4], sb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const std::int64_t m = m0 + ty + 16 * i;
        sa[i] = m < g.m ? fp8_a_scale(g, m, kb) : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t n = n0 + tx + 16 * j;
        sb[j] = n < g.n ? fp8_b_scale(g, n, kb) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[i][j] = fmaf(part[i][j], sa[i] * sb[j], acc[i][j]);
          part[i][j] = 0.0f;
        }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t m = m0 + ty + 16 * i;
    if (m >= g.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t n = n0 + tx + 16 * j;
      if (n < g.n) static_cast<Out*>(g.d)[m * g.ldd + n] = store<Out>(acc[i][j]);
    }
  }
}

template <class Out>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const Problem g, bool a_aligned8, bool b_aligned8) {
  __shared__ float as[kChunk][kPitch], bs[kChunk][kPitch];
  gemm_tile<Out>(g, static_cast<std::int64_t>(blockIdx.y) * kBlockM, static_cast<std::int64_t>(blockIdx.x) * kBlockN,
                 a_aligned8, b_aligned8, as, bs);
}

}  // namespace fp8_simt

// Launches the plain CUDA kernel for D = A · Bᵀ described by `g` on g.launch.
inline void launch_fp8_gemm_simt(const Fp8GemmArgs& g) {
  using namespace fp8_simt;
  check(g.m >= 1 && g.n >= 1 && g.k >= 1, "fp8_gemm", "M, N, K must be at least 1, got ", g.m, ", ", g.n, ", ", g.k);
  const std::int64_t grid_x = (g.n + kBlockN - 1) / kBlockN, grid_y = (g.m + kBlockM - 1) / kBlockM;
  check(grid_y <= 65535 && grid_x <= 0x7FFFFFFF, "fp8_gemm", "the simt kernel takes M up to ", 65535 * kBlockM,
        ", got M = ", g.m, " (N = ", g.n, ")");
  const bool a_aligned8 = g.lda % 8 == 0 && reinterpret_cast<std::uintptr_t>(g.a) % 8 == 0;
  const bool b_aligned8 = g.ldb % 8 == 0 && reinterpret_cast<std::uintptr_t>(g.b) % 8 == 0;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  cuda::DeviceGuard guard(g.launch.device);
  const cudaStream_t stream = g.launch.stream;
  const Problem problem = Problem::of(g);
  switch (g.d_dtype) {
    case DType::f32: gemm_kernel<float><<<grid, kThreads, 0, stream>>>(problem, a_aligned8, b_aligned8); break;
    case DType::bf16: gemm_kernel<bf16><<<grid, kThreads, 0, stream>>>(problem, a_aligned8, b_aligned8); break;
    default: fail("fp8_gemm", "the simt kernel writes float32 or bfloat16, got ", g.d_dtype);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels
