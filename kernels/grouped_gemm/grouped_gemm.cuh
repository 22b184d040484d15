// Grouped GEMM for Mixture-of-Experts on CUDA, plain tensor-core path (mma.sync m16n8k16, sm_80
// and later), and the launcher that picks it or the Hopper kernel (grouped_gemm_hopper.cuh, sm_90):
// arguments kernels/grouped_gemm/args.hpp; front-end ops/grouped_linear.hpp; CPU reference
// backend/cpu/grouped_gemm.hpp.
//
// The rows of x [R, K] are sorted by expert (kernels/moe/dispatch.cuh); group g owns rows
// offsets[g] .. offsets[g+1] − 1, and the offsets live on the device: nothing is read back, so the
// host knows only R and G. Three products, all C = A · B with float accumulation:
//   forward  y_g  = x_g · W_gᵀ     A = x rows (k contiguous),      B = W_g [N, K] (k contiguous)
//   dgrad    dx_g = dy_g · W_g      A = dy rows (k = n contiguous), B = W_g read as [n][k_in] (n is
//                                   the reduction: B's k rows are W's rows, ldmatrix.trans)
//   wgrad    dW_g = dy_gᵀ · x_g     A = dy_gᵀ (m = n contiguous: ldmatrix.trans), B = x_g (rows are
//                                   the reduction: ldmatrix.trans); the reduction length is the
//                                   group's row count, ragged, zero-filled past its end
// One kernel template serves all three: each operand tile is staged in shared memory as it lies in
// global memory (its contiguous dim innermost, rows padded by 8 elements so that the 8 rows an
// ldmatrix reads fall in 8 different 16-byte bank groups) and turned into mma fragments by
// ldmatrix, transposing where the contiguous dim is not the reduction.
//
// Tiles: 128 × 128 × 64 per block, 8 warps of 64 × 32 (4 × 4 mma tiles: 64 float accumulators a
// thread), a 3-stage cp.async pipeline (16-byte copies, zero-filled outside the group's rows or the
// matrix: N and K must be multiples of 8). Shared memory: 3 × (2 × 18 KB) = 108 KB a block, two
// blocks an SM. (128 × 128 × 32 with 4 stages ran at 150-245 TFLOP/s on an H200: a block barrier
// every two k16 steps.)
//
// Tile scheduler (forward, dgrad): group g needs ceil(M_g / 128) row tiles; the grid has
// ceil(R / 128) + G row-tile slots (the most any split of R rows into G groups can need) times the
// column tiles. Warp 0 of each block finds its (group, row tile) with a prefix sum of the groups'
// tile counts over the warp's lanes (G + 1 offsets read from L2), and a block past the last tile
// exits. wgrad: one block per (group, 128 × 128 tile of dW_g), looping over the group's rows; an
// empty group writes zeros. The offsets are clamped to [0, R] and made nondecreasing, so corrupt
// offsets cannot move a read or a write out of bounds.
//
// FLOPs: 2·R·N·K for each of the three. Bytes (bf16): forward reads x once per column tile (R·K·2 ·
// ceil(N/128), mostly from L2) and each W_g once per row tile, writes R·N·2. At kiln's big config
// (R 32768 routes, 8 experts, K 768, N 1024) a forward is 52 GFLOP.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/environment.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/grouped_gemm/args.hpp"
#include "kiln/kernels/grouped_gemm/group_rows.cuh"
#include "kiln/kernels/grouped_gemm/grouped_gemm_hopper.cuh"
#include "kiln/kernels/grouped_gemm/swiglu_epilogue.cuh"

namespace kiln::kernels::grouped_gemm {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 3, kThreads = 256, kPad = 8;
static_assert(kBM == kBN, "load_operand stages A's rows and B's columns with one tile shape");

// Elements of one stage of an operand tile: rows x (reduction 64 + pad) when the reduction dim is
// contiguous, 64 x (128 + pad) when the row dim is.
template <bool KMajor>
constexpr int stage_elements() {
  return KMajor ? kBM * (kBK + kPad) : kBK * (kBM + kPad);
}

// One operand tile (128 rows of the row dim × 64 of the reduction) from global memory into shared
// memory, 16 bytes a copy, zero-filled where row ≥ row_limit or k ≥ k_limit. base points at the
// operand's (row 0, k 0); element (row, k) is base[row·ld + k] (KMajor) or base[k·ld + row].
// KMajor tiles may take their last 64 rows from further down (upper_shift: the SwiGLU forward's
// up rows, I below the gate rows of the first 64).
template <class T, bool KMajor>
__device__ __forceinline__ void load_operand(T* smem, const T* base, std::int64_t ld, std::int64_t row0,
                                             std::int64_t row_limit, std::int64_t k0, std::int64_t k_limit,
                                             std::int64_t upper_shift = 0) {
  if constexpr (KMajor) {
    constexpr int kChunks = kBK / 8;  // per row
#pragma unroll
    for (int i = static_cast<int>(threadIdx.x); i < kBM * kChunks; i += kThreads) {
      const int r = i / kChunks, c = (i % kChunks) * 8;
      const std::int64_t row = row0 + r + (r >= kBM / 2 ? upper_shift : 0), k = k0 + c;
      const bool valid = row < row_limit && k < k_limit;
      sm80::cp_async_16(smem + r * (kBK + kPad) + c, valid ? base + row * ld + k : base, valid);
    }
  } else {
    constexpr int kChunks = kBM / 8;  // per reduction row
#pragma unroll
    for (int i = static_cast<int>(threadIdx.x); i < kBK * kChunks; i += kThreads) {
      const int kk = i / kChunks, c = (i % kChunks) * 8;
      const std::int64_t row = row0 + c, k = k0 + kk;
      const bool valid = row < row_limit && k < k_limit;
      sm80::cp_async_16(smem + kk * (kBM + kPad) + c, valid ? base + k * ld + row : base, valid);
    }
  }
}

// The A fragment (16 rows from `row`, 16 of the reduction from `k`) of a stage.
template <class T, bool KMajor>
__device__ __forceinline__ void a_fragment(unsigned (&a)[4], const T* smem, int row, int k) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  if constexpr (KMajor) {
    sm80::ldmatrix_x4(a, smem + (row + (lane & 15)) * (kBK + kPad) + k + 8 * (lane >> 4));
  } else {
    const int j = lane >> 3, i = lane & 7;  // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), ...
    sm80::ldmatrix_x4_trans(a, smem + (k + i + 8 * (j >> 1)) * (kBM + kPad) + row + 8 * (j & 1));
  }
}

// The B fragments of two n8 tiles (16 columns from `col`, 16 of the reduction from `k`): b[0], b[1]
// for columns col .. col + 7, b[2], b[3] for the next 8.
template <class T, bool KMajor>
__device__ __forceinline__ void b_fragments(unsigned (&b)[4], const T* smem, int col, int k) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int j = lane >> 3, i = lane & 7;
  if constexpr (KMajor) {
    sm80::ldmatrix_x4(b, smem + (col + i + 8 * (j >> 1)) * (kBK + kPad) + k + 8 * (j & 1));
  } else {
    sm80::ldmatrix_x4_trans(b, smem + (k + i + 8 * (j & 1)) * (kBN + kPad) + col + 8 * (j >> 1));
  }
}

// What one block computes: C[row0 .., col0 ..] of C = A · B, within row_limit × col_limit, with
// reduction length k_limit. B's tile rows: b_row0 .., below b_limit, the last 64 shifted by b_shift
// (the SwiGLU forward, whose 64 output columns need 64 gate and 64 up rows of W_g; else col0,
// col_limit, 0). group_start: the group's first row of R (the SwiGLU epilogues' gate_up rows).
template <class T>
struct BlockProblem {
  const T* a;
  std::int64_t lda;
  const T* b;
  std::int64_t ldb;
  T* c;
  std::int64_t ldc;
  std::int64_t row0, row_limit, col0, col_limit, k_limit;
  std::int64_t b_row0 = 0, b_limit = 0, b_shift = 0, group_start = 0;
};

// The block's problem for kind: forward and dgrad through the tile scheduler over the groups
// (false: past the last tile), wgrad from blockIdx.z.
template <class T>
__device__ __forceinline__ bool block_problem(const GroupedGemmArgs& a, BlockProblem<T>& p) {
  const std::int64_t N = a.n, K = a.k;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const T* w = static_cast<const T*>(a.weight);
  T* out = static_cast<T*>(a.out);
  if (a.kind == GroupedGemmKind::wgrad) {
    const int g = static_cast<int>(blockIdx.z);
    std::int64_t start, count;
    group_rows(a.offsets, g, a.rows, start, count);
    // dW_g [N, K] = dy_gᵀ · x_g: A(m = n, k = r) = dy[r·N + n], B(k = r, n = k_in) = x[r·K + k_in].
    p = {dy + start * N, N, x + start * K, K, out + static_cast<std::int64_t>(g) * N * K, K,
         static_cast<std::int64_t>(blockIdx.y) * kBM, N, static_cast<std::int64_t>(blockIdx.x) * kBN, K, count};
    p.b_row0 = p.col0;
    p.b_limit = p.col_limit;
    return true;
  }
  __shared__ int s_group;
  __shared__ std::int64_t s_tile;
  if (threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    const int per_lane = (a.groups + 31) / 32;
    const int g_begin = ::min(a.groups, lane * per_lane), g_end = ::min(a.groups, g_begin + per_lane);
    std::int64_t mine = 0, start, count;
    for (int g = g_begin; g < g_end; ++g) {
      group_rows(a.offsets, g, a.rows, start, count);
      mine += (count + kBM - 1) / kBM;
    }
    std::int64_t inclusive = mine;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const std::int64_t v = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += v;
    }
    const std::int64_t target = blockIdx.y;
    std::int64_t first = inclusive - mine;  // the lane's first tile
    if (lane == 0) s_group = -1;
    __syncwarp();
    if (target >= first && target < inclusive) {
      for (int g = g_begin; g < g_end; ++g) {
        group_rows(a.offsets, g, a.rows, start, count);
        const std::int64_t tiles = (count + kBM - 1) / kBM;
        if (target < first + tiles) {
          s_group = g;
          s_tile = target - first;
          break;
        }
        first += tiles;
      }
    }
  }
  __syncthreads();
  if (s_group < 0) return false;
  std::int64_t start, count;
  group_rows(a.offsets, s_group, a.rows, start, count);
  const T* w_g = w + static_cast<std::int64_t>(s_group) * N * K;
  if (a.kind == GroupedGemmKind::forward)  // y_g = x_g · W_gᵀ: B(k, n) = W[n·K + k]
    p = {x + start * K, K, w_g, K, out + start * N, N, 0, count, 0, N, K};
  else  // dx_g = dy_g · W_g: A(m, k = n) = dy[m·N + n], B(k = n, n' = k_in) = W[n·K + k_in]
    p = {dy + start * N, N, w_g, K, out + start * K, K, 0, count, 0, K, N};
  p.row0 = s_tile * kBM;
  p.col0 = static_cast<std::int64_t>(blockIdx.x) * kBN;
  p.b_row0 = p.col0;
  p.b_limit = p.col_limit;
  p.group_start = start;
  if (a.epilogue == GroupedGemmEpilogue::swiglu) {  // 64 columns of silu(gate)·up: gate rows, then up rows
    const std::int64_t half = N / 2;
    p.col0 = static_cast<std::int64_t>(blockIdx.x) * (kBN / 2);
    p.col_limit = half;
    p.b_row0 = p.col0;
    p.b_shift = half - kBN / 2;
  }
  return true;
}

// The SwiGLU epilogues (args.hpp, swiglu_epilogue.cuh): the block's 128 × 128 tile of products,
// rounded to T, goes through shared memory (the stages' space, free once every warp is past the
// k loop; rows padded by 8 elements: the fragment writes fall in distinct banks), then each thread
// takes 16-byte row chunks. swiglu: tile columns 0-63 are gate columns col0 .., 64-127 the same up
// columns; gate_up receives both, out silu(gate)·up. swiglu_backward: the tile is da; gate and up
// are read from gate_up and out receives d_gate | d_up.
template <class T, GroupedGemmEpilogue E>
__device__ __forceinline__ void staged_epilogue(const GroupedGemmArgs& args, const BlockProblem<T>& p,
                                                const float (&acc)[4][4][4], T* tile) {
  constexpr int kLd = kBN + kPad;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int warp_row = (warp >> 2) * 64, warp_col = (warp & 3) * 32, g = lane >> 2, t = lane & 3;
  __syncthreads();  // every warp is done reading the stages
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<unsigned*>(tile + (warp_row + 16 * i + g + 8 * h) * kLd + warp_col + 8 * j + 2 * t) =
            sm80::pack2<T>(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
  __syncthreads();
  T* const out = static_cast<T*>(args.out);
  T* const gate_up = static_cast<T*>(args.gate_up);
  if constexpr (E == GroupedGemmEpilogue::swiglu) {
    const int half = args.n / 2;
    for (int i = static_cast<int>(threadIdx.x); i < kBM * 8; i += kThreads) {
      const int row = i / 8, chunk = i % 8;
      const std::int64_t r = p.row0 + row, col = p.col0 + 8 * chunk;
      if (r >= p.row_limit || col >= half) continue;
      const std::int64_t at = (p.group_start + r) * 2 * half + col;
      const uint4 gate = *reinterpret_cast<const uint4*>(tile + row * kLd + 8 * chunk);
      const uint4 up = *reinterpret_cast<const uint4*>(tile + row * kLd + kBN / 2 + 8 * chunk);
      *reinterpret_cast<uint4*>(gate_up + at) = gate;
      *reinterpret_cast<uint4*>(gate_up + at + half) = up;
      *reinterpret_cast<uint4*>(out + (p.group_start + r) * half + col) = swiglu_chunk<T>(gate, up);
    }
  } else {
    const int half = args.k;
    for (int i = static_cast<int>(threadIdx.x); i < kBM * (kBN / 8); i += kThreads) {
      const int row = i / (kBN / 8), chunk = i % (kBN / 8);
      const std::int64_t r = p.row0 + row, col = p.col0 + 8 * chunk;
      if (r >= p.row_limit || col >= half) continue;
      store_swiglu_backward<T>(*reinterpret_cast<const uint4*>(tile + row * kLd + 8 * chunk), gate_up, out,
                               p.group_start + r, static_cast<int>(col), half);
    }
  }
}

template <class T, bool AKMajor, bool BKMajor, GroupedGemmEpilogue E>
__global__ void __launch_bounds__(kThreads) grouped_gemm_kernel(GroupedGemmArgs args) {
  BlockProblem<T> p;
  if (!block_problem<T>(args, p)) return;  // the whole block leaves together
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  T* const a_smem = reinterpret_cast<T*>(smem_bytes);
  T* const b_smem = a_smem + kStages * stage_elements<AKMajor>();
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int warp_row = (warp >> 2) * 64, warp_col = (warp & 3) * 32;
  const int k_tiles = static_cast<int>((p.k_limit + kBK - 1) / kBK);

  auto load_stage = [&](int stage, int kt) {
    load_operand<T, AKMajor>(a_smem + stage * stage_elements<AKMajor>(), p.a, p.lda, p.row0, p.row_limit,
                             static_cast<std::int64_t>(kt) * kBK, p.k_limit);
    load_operand<T, BKMajor>(b_smem + stage * stage_elements<BKMajor>(), p.b, p.ldb, p.b_row0, p.b_limit,
                             static_cast<std::int64_t>(kt) * kBK, p.k_limit, p.b_shift);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    sm80::cp_async_commit();
  }

  float acc[4][4][4];  // [16-row tile][8-column tile][fragment]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    sm80::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt has landed for every thread; stage kt − 1 is free again
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next);
    sm80::cp_async_commit();
    const T* a_stage = a_smem + (kt % kStages) * stage_elements<AKMajor>();
    const T* b_stage = b_smem + (kt % kStages) * stage_elements<BKMajor>();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      unsigned af[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a_fragment<T, AKMajor>(af[i], a_stage, warp_row + 16 * i, ks);
#pragma unroll
      for (int j2 = 0; j2 < 2; ++j2) {
        unsigned bf[4];
        b_fragments<T, BKMajor>(bf, b_stage, warp_col + 16 * j2, ks);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          sm80::mma_16816<T>(acc[i][2 * j2], af[i], bf[0], bf[1]);
          sm80::mma_16816<T>(acc[i][2 * j2 + 1], af[i], bf[2], bf[3]);
        }
      }
    }
  }
  sm80::cp_async_wait<0>();
  if constexpr (E != GroupedGemmEpilogue::none) {
    staged_epilogue<T, E>(args, p, acc, reinterpret_cast<T*>(smem_bytes));
  } else {
    // Epilogue: fragment (row g, columns 2t, 2t + 1) and (row g + 8, same columns), rounded once.
    // Column limits are multiples of 8, so a column pair is either inside or outside.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t col = p.col0 + warp_col + 8 * j + 2 * t;
        if (col >= p.col_limit) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const std::int64_t row = p.row0 + warp_row + 16 * i + g + 8 * half;
          if (row < p.row_limit)
            *reinterpret_cast<unsigned*>(p.c + row * p.ldc + col) =
                sm80::pack2<T>(acc[i][j][2 * half], acc[i][j][2 * half + 1]);
        }
      }
  }
}

template <class T, bool AKMajor, bool BKMajor, GroupedGemmEpilogue E = GroupedGemmEpilogue::none>
void launch_variant(const GroupedGemmArgs& a, dim3 grid) {
  auto* kernel = &grouped_gemm_kernel<T, AKMajor, BKMajor, E>;
  const std::size_t bytes =
      static_cast<std::size_t>(kStages) * (stage_elements<AKMajor>() + stage_elements<BKMajor>()) * sizeof(T);
  opt_in_shared_memory(kernel, bytes, a.launch.device);
  kernel<<<grid, kThreads, bytes, a.launch.stream>>>(a);
  KILN_CUDA_CHECK_LAUNCH();
}

inline unsigned tiles(std::int64_t n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

// KILN_GROUPED_GEMM=plain in the environment keeps automatic launches on the plain kernel (read
// once per process; for comparisons and as an escape hatch).
inline bool grouped_gemm_hopper_disabled_by_environment() {
  static const bool disabled = environment_is("KILN_GROUPED_GEMM", "plain");
  return disabled;
}

// The launcher registered for GroupedGemmArgs: the Hopper kernel (grouped_gemm_hopper.cuh) when
// a.implementation asks for it, or is automatic and the GPU and the arguments
// allow it (grouped_gemm_hopper_supports: sm_90, bf16/fp16, N and K multiples of 8, 16-byte aligned
// operands, R < 2^31, G ≤ 1024); else this file's mma.sync kernel. Each launch records which ran
// (core/kernel_trace.hpp: "grouped_gemm/hopper" or "grouped_gemm/plain").
inline void launch_grouped_gemm(const GroupedGemmArgs& a) {
  if (a.groups == 0 || a.n == 0 || a.k == 0) return;
  if (a.rows == 0 && a.kind != GroupedGemmKind::wgrad) return;
  if (a.epilogue != GroupedGemmEpilogue::none) {
    const bool swiglu = a.epilogue == GroupedGemmEpilogue::swiglu;
    check(a.kind == (swiglu ? GroupedGemmKind::forward : GroupedGemmKind::dgrad) && a.gate_up != nullptr &&
              aligned16(a.gate_up) && aligned16(a.out) && (!swiglu || a.n % 16 == 0),
          "grouped_gemm", "the SwiGLU epilogues follow the forward (N = 2I, I a multiple of 8) or the dgrad, with a ",
          "16-byte aligned gate_up [R, 2I] and output; got kind ", static_cast<int>(a.kind), ", epilogue ",
          static_cast<int>(a.epilogue), ", N ", a.n, ", K ", a.k);
  }
  cuda::DeviceGuard guard(a.launch.device);
  // (R = 0 reaches here for wgrad only: every dW_g is zero, which the plain kernel writes.)
  const bool automatic_hopper = a.implementation == GroupedGemmKernel::automatic &&
                                !grouped_gemm_hopper_disabled_by_environment() && grouped_gemm_hopper_supports(a);
  const bool hopper = a.rows > 0 && (a.implementation == GroupedGemmKernel::hopper || automatic_hopper);
  if (hopper) {
    launch_grouped_gemm_hopper(a);
    record_kernel_variant(GroupedGemmArgs::kernel, "hopper");
    return;
  }
  record_kernel_variant(GroupedGemmArgs::kernel, "plain");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    // Row-tile slots: every group may end in a partial tile.
    const unsigned row_slots = tiles(a.rows, kBM) + static_cast<unsigned>(a.groups);
    switch (a.kind) {
      case GroupedGemmKind::forward:
        if (a.epilogue == GroupedGemmEpilogue::swiglu)
          launch_variant<T, true, true, GroupedGemmEpilogue::swiglu>(a, dim3(tiles(a.n / 2, kBN / 2), row_slots));
        else
          launch_variant<T, true, true>(a, dim3(tiles(a.n, kBN), row_slots));
        break;
      case GroupedGemmKind::dgrad:
        if (a.epilogue == GroupedGemmEpilogue::swiglu_backward)
          launch_variant<T, true, false, GroupedGemmEpilogue::swiglu_backward>(a, dim3(tiles(a.k, kBN), row_slots));
        else
          launch_variant<T, true, false>(a, dim3(tiles(a.k, kBN), row_slots));
        break;
      case GroupedGemmKind::wgrad:
        launch_variant<T, false, false>(a, dim3(tiles(a.k, kBN), tiles(a.n, kBM), static_cast<unsigned>(a.groups)));
        break;
    }
  };
  switch (a.dtype) {
    case DType::bf16: run(bf16{}); break;
    case DType::f16: run(fp16{}); break;
    default: fail("grouped_gemm", "runs in bf16 or fp16 on CUDA, got ", a.dtype);
  }
}

inline const bool grouped_gemm_registered = register_device_kernel(&launch_grouped_gemm);

}  // namespace kiln::kernels::grouped_gemm
