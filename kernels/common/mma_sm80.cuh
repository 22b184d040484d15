// Warp-level tensor-core building blocks of sm_80 and later (Ampere, Ada, Hopper): asynchronous
// global -> shared copies (cp.async), shared -> register fragment loads (ldmatrix) and the
// 16x8x16 matrix multiply-accumulate in bf16 or fp16 with float accumulation (mma.sync).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), for lane = 4 g + t:
//   A, 16 x 16, four 32-bit registers of two 16-bit values:
//     a0 = (row g, cols 2t, 2t+1)  a1 = (row g+8, cols 2t, 2t+1)
//     a2 = (row g, cols 2t+8, +9)  a3 = (row g+8, cols 2t+8, +9)
//   B, 16 x 8 (k x n): b0 = (rows 2t, 2t+1, col g), b1 = (rows 2t+8, 2t+9, col g)
//   C, 16 x 8 float: c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1)
// C's layout for two neighbouring n tiles is A's layout for one 16-wide k step: an accumulated
// product (attention's probabilities) becomes the A operand of the next product in registers,
// after rounding to 16 bits (pack_rows).
//
// ldmatrix.x4 loads four 8 x 8 matrices of 16-bit values; lanes 8i .. 8i+7 give the addresses of
// matrix i's rows; lane 4g + t receives (row g, cols 2t, 2t+1) of matrix i in register i (with
// .trans: (rows 2t, 2t+1, col g), the transpose). The warp_mm_* functions below pick the row
// addresses so that the four registers are exactly an A fragment or the B fragments of two n
// tiles.
//
// Shared-memory tiles here are row-major with a row stride of D + 8 elements: 2D + 16 bytes,
// which for D a multiple of 16 puts the 8 rows one ldmatrix reads in 8 different 16-byte bank
// groups (no conflicts), at the cost of 16 bytes a row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kiln/core/dtype.hpp"
#include "kiln/kernels/common/online_softmax.cuh"

namespace kiln::kernels::sm80 {

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without passing through registers; when !valid the destination is
// zero-filled (src-size 0) and nothing is read (gmem must still be a valid address expression).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}

// 4 bytes (one float or int), same contract.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

// d += a · b, 16 x 8 x 16, T = bf16 or fp16, float accumulation.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, "mma.sync m16n8k16 takes bf16 or fp16");
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Sets a warp's accumulator fragments (acc[n tile][4]) to zero.
template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
}

// Two floats rounded (to nearest even) into one register of two 16-bit values, lo in the low half
// (the lower column index of a fragment).
template <class T>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  }
}

// The A fragment of k step kk (columns 16 kk .. 16 kk + 15) from C fragments c[n tile][4] of a
// 16 x N product: n tiles 2 kk and 2 kk + 1.
template <class T, int NT>
__device__ __forceinline__ void a_from_c(unsigned (&a)[4], const float (&c)[NT][4], int kk) {
  a[0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// acc[N/8][4] += A · Bᵀ for one warp: A = 16 rows x K at a (row-major, stride sa elements),
// B = N rows x K at b (row-major [n][k], stride sb): the product of rows with rows, as Q·Kᵀ.
// K and N multiples of 16.
template <class T, int N, int K>
__device__ __forceinline__ void warp_mm_rows_rows(float (&acc)[N / 8][4], const T* a, int sa, const T* b, int sb) {
  static_assert(N % 16 == 0 && K % 16 == 0, "N and K are multiples of 16");
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int mi = lane >> 3, r = lane & 7;
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
  const T* const a_lane = a + (lane & 15) * sa + 8 * (lane >> 4);
  // B from [n][k]: matrices (n 0-7, k 0-7) = b0 and (n 0-7, k 8-15) = b1 of n tile 0, then the
  // same for n 8-15.
  const T* const b_lane = b + (r + 8 * (mi >> 1)) * sb + 8 * (mi & 1);
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    unsigned af[4];
    ldmatrix_x4(af, a_lane + kk * 16);
#pragma unroll
    for (int n2 = 0; n2 < N / 16; ++n2) {
      unsigned bf[4];
      ldmatrix_x4(bf, b_lane + n2 * 16 * sb + kk * 16);
      mma_16816<T>(acc[2 * n2], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * n2 + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[N/8][4] += P · B for one warp: P = 16 x K held as C fragments p[K/8][4] (float, rounded to
// T here), B = K rows x N at b (row-major [k][n], stride sb): probabilities times values.
template <class T, int N, int K>
__device__ __forceinline__ void warp_mm_regs_rows(float (&acc)[N / 8][4], const float (&p)[K / 8][4], const T* b,
                                                  int sb) {
  static_assert(N % 16 == 0 && K % 16 == 0, "N and K are multiples of 16");
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int mi = lane >> 3, r = lane & 7;
  // B from [k][n], transposed by ldmatrix: matrices (k 0-7, n 0-7) = b0 and (k 8-15, n 0-7) = b1
  // of n tile 0, then the same for n 8-15.
  const T* const b_lane = b + (r + 8 * (mi & 1)) * sb + 8 * (mi >> 1);
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    unsigned af[4];
    a_from_c<T>(af, p, kk);
#pragma unroll
    for (int n2 = 0; n2 < N / 16; ++n2) {
      unsigned bf[4];
      ldmatrix_x4_trans(bf, b_lane + kk * 16 * sb + n2 * 16);
      mma_16816<T>(acc[2 * n2], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * n2 + 1], af, bf[2], bf[3]);
    }
  }
}

// Copies rows [row0, row0 + ROWS) of a row-major [*, D] global matrix of row stride ld (default
// D) into a shared tile of stride D + 8, with all THREADS threads of the block; rows at or past
// `rows` are zero-filled. D and ld multiples of 8 (16-byte pieces), gmem 16-byte aligned.
template <class T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, std::int64_t row0, std::int64_t rows,
                                                std::int64_t ld = D) {
  static_assert(D % 8 == 0, "rows are copied in 16-byte pieces");
  constexpr int kPieces = D / 8;
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * kPieces; i += THREADS) {
    const int r = i / kPieces, c = (i - r * kPieces) * 8;
    const bool valid = row0 + r < rows;
    cp_async_16(smem + r * (D + 8) + c, gmem + (valid ? (row0 + r) * ld + c : 0), valid);
  }
}

// The max and the sum over the 4 lanes of a quad (lanes 4g .. 4g + 3: the threads that hold one
// row of a C fragment).
__device__ __forceinline__ float quad_max(float x) {
  x = ::fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return ::fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// One tile's online-softmax step for a warp's 16 rows in base 2 (FlashAttention-2): sc holds the
// tile's scores already scaled by scale · log2(e) and masked (−inf), mt this thread's max of
// them for each of its two rows (g and g + 8); m are the rows' running maxima, l this thread's
// partial sums, o the accumulator (C fragments). Rescales l and o by exp2(m_old − m_new), turns sc
// into the probabilities exp2(x − m_new) and adds them to l. A row with no key yet keeps m = −inf
// and gets p = 0 (its base is taken as 0).
template <int KEYS, int DV>
__device__ __forceinline__ void online_softmax_tile(float (&sc)[KEYS / 8][4], const float (&mt)[2], float (&m)[2],
                                                    float (&l)[2], float (&o)[DV / 8][4]) {
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = ::fmaxf(m[r], quad_max(mt[r]));
    base[r] = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2_approx(m[r] - base[r]);
    m[r] = m_new;
    l[r] *= alpha;
#pragma unroll
    for (int nt = 0; nt < DV / 8; ++nt) {
      o[nt][2 * r] *= alpha;
      o[nt][2 * r + 1] *= alpha;
    }
  }
#pragma unroll
  for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float p = exp2_approx(sc[nt][e] - base[e >> 1]);
      sc[nt][e] = p;
      l[e >> 1] += p;
    }
}

// Writes a warp's 16 x N float accumulator (C fragments) times per-row factors f[2] as T into rows
// row0 + (0..15) of a row-major matrix of row stride ld (default N), rows at or past `rows` skipped.
template <class T, int N>
__device__ __forceinline__ void store_rows(T* dst, const float (&acc)[N / 8][4], std::int64_t row0, std::int64_t rows,
                                           const float (&f)[2], std::int64_t ld = N) {
  const int lane = static_cast<int>(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = row0 + g + 8 * r;
    if (row >= rows) continue;
    unsigned* const out = reinterpret_cast<unsigned*>(dst + row * ld + 2 * t);
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) out[nt * 4] = pack2<T>(acc[nt][2 * r] * f[r], acc[nt][2 * r + 1] * f[r]);
  }
}

}  // namespace kiln::kernels::sm80
