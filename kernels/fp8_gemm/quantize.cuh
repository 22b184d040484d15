// FP8 quantization on CUDA (kiln::fp8::quantize / quantize_transposed, ops/fp8_gemm.hpp; the CPU
// reference is backend/cpu/fp8_gemm.hpp). The launcher is registered for Fp8QuantizeArgs (args.hpp).
//
// The recipe, per tile (1×128 elements, or a 128×128 block):
//   scale = max(amax, amax_floor) / 448  (optionally rounded up to a power of two),
//   q     = e4m3(x / scale)              (round to nearest even, saturating at ±448).
// fp8::tile_scale and fp8::amax_step (math/fp8.hpp) are the same functions on both backends;
// x / scale is computed with IEEE rounding (fp8::ScaleDivider: the exact float quotient, from a
// per-tile reciprocal and two fused multiply-adds) and cvt.rn.satfinite.e4m3x2.f32 rounds like
// kiln::fp8_e4m3, so the bytes and scales are bit-identical to the CPU's.
//
// Input: a source matrix S [src_rows, src_cols], float or bf16, unit stride along its rows (row
// stride lds). The matrix L that gets quantized is S itself, or Sᵀ for the transposed tilings the
// backward pass needs (the front-end chose whichever view of x reads rows contiguously). Output:
// q = L's e4m3 bytes, row-major, and the scales (1×128: k-block major, scale[kb * ld + row];
// 128×128: scale[row_block * ld + kb]).
//
// Memory traffic per element: read sizeof(T) (4 or 2 bytes), write 1 byte; scales add 4/128 or
// 4/16384 bytes. Every variant reads x exactly once (amax and quantization from registers or
// shared memory), so the kernels are bandwidth-bound at 5 (float) or 3 (bf16) bytes per element.
//
// Four kernels:
//   rows_kernel (1×128, L = S): one warp per run of 32 16-byte vectors of a row, i.e. one tile of
//     floats (32 lanes × 4) or two tiles of bf16 (16 lanes × 8 each). amax by xor shuffles within
//     the lanes of a tile; each lane then writes its 4 or 8 bytes with one store.
//   blocks_kernel<Transposed = false> (128×128, L = S): one 1024-thread block per block; the 16K
//     elements stay in registers (16 per thread) while the block reduces amax (shuffles, then 32
//     warps through shared memory); each thread then writes its bytes.
//   blocks_kernel<Transposed = true> (128×128, L = Sᵀ): the same load and amax (a block of Sᵀ has
//     the same elements), then the bytes go through a shared-memory byte tile, transposed, so the
//     output rows (columns of S) are written as coalesced 4-byte words.
//   rows_transposed_kernel (1×128, L = Sᵀ): a tile of L is a 128-long column run of S. A block
//     reads a 128×64 region of S with 16-byte row loads into a float tile in shared memory (pitch
//     65: a warp reading down a column hits 32 different banks), then each warp quantizes columns:
//     lane l holds rows l, l+32, l+64, l+96, so the 32 lanes write 32 consecutive bytes per store.
//     Its KGrouped variant writes the k-grouped layout of math/k_grouped.hpp (the experts' weight
//     gradient, ops/k_grouped_fp8_gemm.hpp): a block's 128 source rows are the rows of one group
//     that fall in its k-block of L, found from the device offsets; the same bytes and scales as
//     quantize_transposed of each group's rows alone.
//   rows_both_kernel (bf16; 1×128 tiles of S and of Sᵀ at once): one block per 128×128 region of
//     S, copied into shared memory by cp.async (all of its loads in flight at once); then each
//     half-warp quantizes a row tile as rows_kernel does, and each warp 8 of the region's columns
//     at a time as rows_transposed_kernel does. One read of S for both tilings: 2 + 1 + 1 bytes
//     per element instead of 2 + 1 and 2 + 1 (fp8_linear's x and dY need both).
//   rows_transposed_kernel issues all of its loads before its shared-memory stores (fetch_run).
//   blocks_kernel takes a batch of matrices in one launch (gridDim.y; the stacked expert weights),
//     and writes the blocks of S and of Sᵀ from one read when asked (the weights' forward and
//     data-gradient operands; the same scales).
// Rows whose length or alignment does not allow 16-byte loads use the same kernels with one
// element per load (Vector = false). Elements past the matrix edge load as 0, which leaves amax
// unchanged, and are never stored.
#pragma once

#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/fp8_gemm/args.hpp"
#include "kiln/math/fp8.hpp"
#include "kiln/math/k_grouped.hpp"

namespace kiln::kernels::fp8_quantize {

constexpr int kTile = 128;    // tile edge / k-block length
constexpr int kThreads = 256;  // the 1×128 kernels: 8 warps a block
constexpr int kWarps = kThreads / 32;
// blocks_kernel: 32 warps for one 128×128 block, 16 values a thread. A weight of the big config
// is 24-48 blocks, fewer than the SMs: the kernel lasts as long as one block, and 256 threads
// (64 values each, quantized twice for both layouts) took 15-17 µs a launch (H100, Nsight Compute).
constexpr int kBlockThreads = 1024;
constexpr int kTransposedCols = 64;  // columns of S a rows_transposed_kernel block covers

struct Params {
  const void* src;  // S [src_rows, src_cols], row stride lds, unit inner stride
  std::int64_t src_rows, src_cols, lds;
  std::uint8_t* q;  // L [out_rows, out_cols] row-major, L = S or Sᵀ
  float* scale;
  std::int64_t scale_ld;
  float amax_floor;
  bool power_of_two;
  const std::int64_t* k_group_offsets;  // k-grouped L (args.hpp), or null
  std::int64_t k_groups, k_grouped_cols;
  std::int64_t batch, src_batch, q_batch, scale_batch;  // batched 128×128 blocks (args.hpp)
  std::uint8_t* q_t;                                    // rows_both_kernel's second output (args.hpp)
  float* scale_t;
  std::int64_t scale_t_ld;
};

__host__ __device__ constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// V elements of an S row starting at `col` as stored (T), zeros past the row's end. The vector
// path is one 16-byte ld.global.nc: rows_transposed_kernel issues all of a thread's fetches before
// its stores, and a load the compiler knows to be global and read-only may be moved above stores
// (a generic load may not: it could alias a shared-memory store), so the fetches overlap.
template <class T, int V, bool Vector>
__device__ __forceinline__ Vec<T, V> fetch_run(const T* __restrict__ row, std::int64_t col, std::int64_t cols) {
  static_assert(sizeof(Vec<T, V>) == sizeof(uint4), "fetch_run moves 16 bytes");
  Vec<T, V> x;
  if (Vector && col + V <= cols) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + col));
    x = *reinterpret_cast<const Vec<T, V>*>(&raw);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) x.v[e] = col + e < cols ? row[col + e] : T{};
  }
  return x;
}

// The fetched elements widened to float.
template <class T, int V>
__device__ __forceinline__ void widen(const Vec<T, V>& x, float (&v)[V]) {
#pragma unroll
  for (int e = 0; e < V; ++e) v[e] = load(x.v[e]);
}

template <class T, int V, bool Vector>
__device__ __forceinline__ void load_run(const T* __restrict__ row, std::int64_t col, std::int64_t cols,
                                         float (&v)[V]) {
  widen(fetch_run<T, V, Vector>(row, col, cols), v);
}

// x / scale with IEEE rounding, the CPU's divide_rn(x, scale) bit for bit, without a division
// (div.rn.f32 compiles to a fast path plus a call to a slow-path routine, which costs register
// spills): fp8::ScaleDivider (math/fp8.hpp) takes RN(1/scale) once per tile and corrects x·(1/scale)
// with two fused multiply-adds per element (Markstein). Until 2026-12-05 the kernels multiplied in
// double instead: two float-double conversions per element, which sm_90 issues at 16 a cycle per
// SM against 128 FP32 operations; the 1×128 kernels then ran at 29-44% of the H200's 4.8 TB/s in
// a training step (Nsight Compute). docs/fp8-gemm.md has the figures after the change.
using Divider = fp8::ScaleDivider;

// e4m3(x / scale): the CPU's fp8_e4m3(divide_rn(x, scale)) bit for bit. cvt.rn.satfinite
// rounds to nearest even and saturates like kiln::fp8_e4m3; NaN is mapped to kiln's 0x7F
// explicitly rather than trusting the instruction's NaN encoding.
__device__ __forceinline__ std::uint8_t to_e4m3(float x, const Divider& divide) {
  const float v = divide(x);
  const std::uint8_t b = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
  return v != v ? std::uint8_t{0x7F} : b;
}

// Stores V e4m3 bytes at dst[0, V) (dst + V may pass `valid` elements: only the first `valid` are
// written). `words`: dst is 4-byte aligned, store whole 32-bit words.
template <int V>
__device__ __forceinline__ void store_bytes(std::uint8_t* __restrict__ dst, const std::uint8_t (&b)[V],
                                            std::int64_t valid, bool words) {
  if (words && valid >= V) {
    std::uint32_t w[V / 4];
#pragma unroll
    for (int i = 0; i < V / 4; ++i) {
      w[i] = 0;
#pragma unroll
      for (int e = 0; e < 4; ++e) w[i] |= static_cast<std::uint32_t>(b[4 * i + e]) << (8 * e);
    }
    if constexpr (V == 4) {
      *reinterpret_cast<std::uint32_t*>(dst) = w[0];
    } else {
      *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e)
      if (e < valid) dst[e] = b[e];
  }
}

// Quantizes V values and stores them as store_bytes does.
template <int V>
__device__ __forceinline__ void store_run(std::uint8_t* __restrict__ dst, const float (&v)[V], const Divider& divide,
                                          std::int64_t valid, bool words) {
  std::uint8_t b[V];
#pragma unroll
  for (int e = 0; e < V; ++e) b[e] = to_e4m3(v[e], divide);
  store_bytes<V>(dst, b, valid, words);
}

// amax_step as a combine function of the common warp reductions (kernels/common/reduce.cuh).
struct Amax {
  __device__ __forceinline__ float operator()(float a, float b) const { return fp8::amax_step(a, b); }
};

// amax over groups of `Lanes` consecutive lanes (a power of two ≤ 32), the result in every lane.
template <int Lanes>
__device__ __forceinline__ float group_amax(float m) {
  return warp_all_reduce<Lanes>(m, Amax{});
}

// amax over a block of Warps warps, the result in every thread.
template <int Warps>
__device__ __forceinline__ float block_amax(float m, float* scratch) {
  m = group_amax<32>(m);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = m;
  __syncthreads();
  float r = 0.0f;
#pragma unroll
  for (int w = 0; w < Warps; ++w) r = fp8::amax_step(r, scratch[w]);
  return r;
}

// One 1×128 tile of Sᵀ (a 128-long column run of S) held by a warp, lane l holding its elements l,
// l+32, l+64 and l+96: lane 0 stores its scale at *scale_slot, and the lanes store its first
// `valid` bytes at dst (32 consecutive bytes per store). The column phase of rows_transposed_kernel
// and rows_both_kernel.
__device__ __forceinline__ void store_column_tile(const Params& p, const float (&x)[4], float* scale_slot,
                                                  std::uint8_t* dst, std::int64_t valid) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j) amax = fp8::amax_step(amax, x[j]);
  const float s = fp8::tile_scale(group_amax<32>(amax), p.amax_floor, p.power_of_two);
  if (lane == 0) *scale_slot = s;
  const Divider divide(s);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (lane + 32 * j < valid) dst[lane + 32 * j] = to_e4m3(x[j], divide);
}

// ---- 1×128 tiles along S's rows (L = S) ----
// One run (32 lanes × 16 bytes of one row) per warp and loop iteration. Taking 4 runs a warp with
// their loads issued first was slower on an H100 (bench_fp8_quantize_cuda, 2026-12-05: 29.2 µs
// against 24.2 at [16384, 768] bf16): a quarter of the blocks, 1.45 waves of them, and the
// second wave half empty.
template <class T, bool Vector>
__global__ void __launch_bounds__(kThreads) rows_kernel(const Params p) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  constexpr int kLanesPerTile = kTile / V;
  constexpr int kColsPerWarp = 32 * V;
  const T* src = static_cast<const T*>(p.src);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const bool words = p.src_cols % V == 0;  // every output row start is V-byte aligned
  const std::int64_t groups = ceil_div(p.src_cols, kColsPerWarp);
  const std::int64_t total = p.src_rows * groups;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  for (std::int64_t w = static_cast<std::int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); w < total; w += warps) {
    const std::int64_t r = w / groups, col = (w % groups) * kColsPerWarp + lane * V;
    float v[V];
    load_run<T, V, Vector>(src + r * p.lds, col, p.src_cols, v);
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < V; ++e) amax = fp8::amax_step(amax, v[e]);
    amax = group_amax<kLanesPerTile>(amax);
    if (col >= p.src_cols) continue;  // after the shuffles, which need every lane
    const float s = fp8::tile_scale(amax, p.amax_floor, p.power_of_two);
    if (lane % kLanesPerTile == 0) p.scale[(col / kTile) * p.scale_ld + r] = s;
    store_run<V>(p.q + r * p.src_cols + col, v, Divider(s), p.src_cols - col, words);
  }
}

// ---- 128×128 blocks (L = S, or L = Sᵀ when Transposed) ----
// Plain: write L = S (q, scale). Transposed: write L = Sᵀ (q, scale; or q_t, scale_t when Plain
// too: both from one read, the weights' forward and data-gradient operands).
template <class T, bool Vector, bool Plain, bool Transposed>
__global__ void __launch_bounds__(kBlockThreads) blocks_kernel(const Params p) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  constexpr int kBlockWarps = kBlockThreads / 32;
  constexpr int kLanesPerRow = kTile / V;              // threads that read one 128-wide row
  constexpr int kRowsPerPass = kBlockThreads / kLanesPerRow;
  constexpr int kPasses = kTile / kRowsPerPass;        // kPasses * V = 16 values a thread
  __shared__ float scratch[kBlockWarps];
  const T* src = static_cast<const T*>(p.src) + blockIdx.y * p.src_batch;  // batch member blockIdx.y
  std::uint8_t* q = p.q + blockIdx.y * p.q_batch;
  float* scale = p.scale + blockIdx.y * p.scale_batch;
  const std::int64_t col_blocks = ceil_div(p.src_cols, kTile);
  const std::int64_t ib = blockIdx.x / col_blocks, jb = blockIdx.x % col_blocks;
  const std::int64_t r0 = ib * kTile, c0 = jb * kTile;
  const int tr = static_cast<int>(threadIdx.x) / kLanesPerRow, tc = static_cast<int>(threadIdx.x) % kLanesPerRow;
  const std::int64_t col = c0 + tc * V;

  float v[kPasses][V];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const std::int64_t r = r0 + i * kRowsPerPass + tr;
    if (r < p.src_rows) {
      load_run<T, V, Vector>(src + r * p.lds, col, p.src_cols, v[i]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) v[i][e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < V; ++e) amax = fp8::amax_step(amax, v[i][e]);
  }
  const float s = fp8::tile_scale(block_amax<kBlockWarps>(amax, scratch), p.amax_floor, p.power_of_two);
  const Divider divide(s);
  std::uint8_t b[kPasses][V];  // each value quantized once, for one layout or both
#pragma unroll
  for (int i = 0; i < kPasses; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) b[i][e] = to_e4m3(v[i][e], divide);

  if constexpr (Plain) {
    if (threadIdx.x == 0) scale[ib * p.scale_ld + jb] = s;
    const bool words = p.src_cols % V == 0;
    if (col < p.src_cols) {
#pragma unroll
      for (int i = 0; i < kPasses; ++i) {
        const std::int64_t r = r0 + i * kRowsPerPass + tr;
        if (r < p.src_rows) store_bytes<V>(q + r * p.src_cols + col, b[i], p.src_cols - col, words);
      }
    }
  }
  if constexpr (Transposed) {
    // L = Sᵀ: this is L's block (jb, ib); L has src_cols rows of src_rows bytes.
    std::uint8_t* qt = Plain ? p.q_t + blockIdx.y * p.q_batch : q;
    float* st = Plain ? p.scale_t + blockIdx.y * p.scale_batch : scale;
    if (threadIdx.x == 0) st[jb * (Plain ? p.scale_t_ld : p.scale_ld) + ib] = s;
    constexpr int kPitch = kTile + 4;  // bytes; a multiple of 4 for the word reads below
    __shared__ __align__(16) std::uint8_t t[kTile * kPitch];  // t[c][r] = q(S[r0 + r][c0 + c])
#pragma unroll
    for (int i = 0; i < kPasses; ++i)
#pragma unroll
      for (int e = 0; e < V; ++e) t[(tc * V + e) * kPitch + i * kRowsPerPass + tr] = b[i][e];
    __syncthreads();
    const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
    const std::int64_t lcol = r0 + 4 * lane;  // the 4 bytes of L's row this lane writes
    const bool words = p.src_rows % 4 == 0;
    for (int c = warp; c < kTile; c += kBlockWarps) {
      const std::int64_t lrow = c0 + c;
      if (lrow >= p.src_cols || lcol >= p.src_rows) continue;
      const std::uint8_t* from = t + c * kPitch + 4 * lane;
      std::uint8_t* dst = qt + lrow * p.src_rows + lcol;
      if (words && lcol + 4 <= p.src_rows) {
        *reinterpret_cast<std::uint32_t*>(dst) = *reinterpret_cast<const std::uint32_t*>(from);
      } else {
        for (int e = 0; e < 4 && lcol + e < p.src_rows; ++e) dst[e] = from[e];
      }
    }
  }
}

// ---- 1×128 tiles along S's columns (L = Sᵀ, or k-grouped: the groups' Sᵀ side by side) ----
// KGrouped: L's k-block kb lies in one group g (math/k_grouped.hpp); its 128 source rows start at
// offsets[g] + (kb·128 − col_g), and those past the group's end (or every row, for a k-block past
// the last group) load as zeros, so the tile's scale is that of the group's own elements and its
// padding bytes are e4m3(0) = 0. All 128 bytes of the tile are written.
template <class T, bool Vector, bool KGrouped>
__global__ void __launch_bounds__(kThreads) rows_transposed_kernel(const Params p) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  constexpr int kLanesPerRow = kTransposedCols / V;
  constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  constexpr int kPasses = kTile / kRowsPerPass;
  __shared__ float tile[kTile][kTransposedCols + 1];
  const T* src = static_cast<const T*>(p.src);
  const std::int64_t col_blocks = ceil_div(p.src_cols, kTransposedCols);
  const std::int64_t kb = blockIdx.x / col_blocks;  // the k-block of L
  const std::int64_t c0 = (blockIdx.x % col_blocks) * kTransposedCols;
  // Source rows [r0, r_end) feed this k-block; L's rows are out_len bytes long, the block writes
  // `valid` bytes of each from column kb·128.
  std::int64_t r0 = kb * kTile, r_end = p.src_rows, out_len = p.src_rows, valid = p.src_rows - kb * kTile;
  if constexpr (KGrouped) {
    fp8::KGroup g;
    fp8::k_group_of_column(p.k_group_offsets, p.src_rows, p.k_groups, kb * kTile, g);
    r0 = g.row + (kb * kTile - g.column);
    r_end = g.row + g.count;
    out_len = p.k_grouped_cols;
    valid = kTile;
  }
  const int tr = static_cast<int>(threadIdx.x) / kLanesPerRow, tc = static_cast<int>(threadIdx.x) % kLanesPerRow;

  // Every pass's load is issued before the first shared-memory store (fetch_run).
  Vec<T, V> raw[kPasses];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRowsPerPass + tr;
    raw[i] = r0 + r < r_end ? fetch_run<T, V, Vector>(src + (r0 + r) * p.lds, c0 + tc * V, p.src_cols) : Vec<T, V>{};
  }
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    float v[V];
    widen(raw[i], v);
#pragma unroll
    for (int e = 0; e < V; ++e) tile[i * kRowsPerPass + tr][tc * V + e] = v[e];
  }
  __syncthreads();

  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int c = warp; c < kTransposedCols; c += kWarps) {
    const std::int64_t lrow = c0 + c;  // L's row = S's column
    if (lrow >= p.src_cols) break;     // warp-uniform
    float x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = tile[lane + 32 * j][c];
    store_column_tile(p, x, p.scale + kb * p.scale_ld + lrow, p.q + lrow * out_len + kb * kTile, valid);
  }
}

// ---- 1×128 tiles of S and of Sᵀ from one read (bf16) ----
// The row tiles as rows_kernel writes them (q, scale), the column tiles as rows_transposed_kernel
// writes them (q_t, scale_t): the same bytes and scales, since each tile's amax and quotients are
// the same functions of the same elements. One block per 128×128 region of S, staged in shared
// memory by cp.async: every 16-byte load of the region is in flight at once and holds no
// register. (A version that kept 4 row passes' loads in registers needed 80 registers a thread, 3
// blocks an SM on an H100, and ran 1.13-1.28× slower: bench_fp8_quantize_cuda, 2026-12-05, 53.0
// against 46.9 µs at [16384, 768].) A block is 34,816 bytes of shared memory and 48 registers a
// thread (the launch bound of 5 blocks; 6 would spill), so 5 blocks an SM, each with its 32 KiB
// read in flight. Then both phases read the tile with 16-byte shared loads, free of bank conflicts:
//   tile rows are 136 bf16 = 272 bytes = 68 words apart, so the 8 lanes of a quarter-warp
//   (one shared-memory wavefront of 16-byte accesses) reading the same 16 bytes of 8 rows start
//   at banks 4r mod 32: 8 different groups of 4 banks; reading 8 consecutive 16-byte pieces of
//   one row (the row phase) is one 128-byte line.
//   Row phase: a half-warp per row, as rows_kernel (tile row r from 16 lanes × 16 bytes).
//   Column phase: a warp takes 8 columns at once: lane l loads the 16 bytes of those columns in
//   rows l, l+32, l+64, l+96, then quantizes each of the 8 columns as rows_transposed_kernel does.
template <bool Vector>
__global__ void __launch_bounds__(kThreads, 5) rows_both_kernel(const Params p) {
  constexpr int V = 8;                                   // bf16 elements per 16 bytes
  constexpr int kLanesPerRow = kTile / V;                // 16: a half-warp per row of the region
  constexpr int kRowsPerPass = kThreads / kLanesPerRow;  // 16
  constexpr int kPasses = kTile / kRowsPerPass;          // 8
  constexpr int kPitch = kTile + 8;                      // bf16 elements: 272-byte rows
  __shared__ __align__(16) bf16 tile[kTile * kPitch];    // 34,816 bytes
  const bf16* src = static_cast<const bf16*>(p.src);
  const std::int64_t col_blocks = ceil_div(p.src_cols, kTile);
  const std::int64_t rb = blockIdx.x / col_blocks, cb = blockIdx.x % col_blocks;
  const std::int64_t r0 = rb * kTile, c0 = cb * kTile;
  const int tr = static_cast<int>(threadIdx.x) / kLanesPerRow, tc = static_cast<int>(threadIdx.x) % kLanesPerRow;
  const std::int64_t col = c0 + tc * V;
  const bool words = p.src_cols % V == 0;
  using Vector8 = Vec<bf16, V>;

  // Stage: elements past the matrix's edge are zeros (cp.async's zero fill, or the element-wise
  // fetch of a row's last partial vector and of unaligned rows).
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRowsPerPass + tr;
    bf16* to = tile + r * kPitch + tc * V;
    const bool row_in = r0 + r < p.src_rows;
    const bf16* row = src + (row_in ? (r0 + r) * p.lds : 0);
    if (Vector && (!row_in || col + V <= p.src_cols))
      sm80::cp_async_16(to, row + (row_in ? col : 0), row_in);
    else
      *reinterpret_cast<Vector8*>(to) = row_in ? fetch_run<bf16, V, false>(row, col, p.src_cols) : Vector8{};
  }
  sm80::cp_async_commit();
  sm80::cp_async_wait<0>();
  __syncthreads();

  // Row tiles (L = S).
#pragma unroll 2
  for (int i = 0; i < kPasses; ++i) {
    const int r = i * kRowsPerPass + tr;
    float v[V];
    widen(*reinterpret_cast<const Vector8*>(tile + r * kPitch + tc * V), v);
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < V; ++e) amax = fp8::amax_step(amax, v[e]);
    amax = group_amax<kLanesPerRow>(amax);  // over the row tile's 16 lanes
    if (r0 + r < p.src_rows && col < p.src_cols) {
      const float s = fp8::tile_scale(amax, p.amax_floor, p.power_of_two);
      if (tc == 0) p.scale[cb * p.scale_ld + r0 + r] = s;
      store_run<V>(p.q + (r0 + r) * p.src_cols + col, v, Divider(s), p.src_cols - col, words);
    }
  }

  // Column tiles (L = Sᵀ): warp w takes column groups w and w + 8 of the region's 16.
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const std::int64_t valid = p.src_rows - r0;  // bytes of each Sᵀ row this block writes
  for (int group = warp; group < kTile / V; group += kWarps) {
    if (c0 + group * V >= p.src_cols) break;  // warp-uniform
    Vector8 x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = *reinterpret_cast<const Vector8*>(tile + (lane + 32 * j) * kPitch + group * V);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const std::int64_t lrow = c0 + group * V + e;  // Sᵀ's row = S's column
      if (lrow >= p.src_cols) break;                 // warp-uniform
      float column[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) column[j] = load(x[j].v[e]);
      store_column_tile(p, column, p.scale_t + rb * p.scale_t_ld + lrow, p.q_t + lrow * p.src_rows + r0, valid);
    }
  }
}

// ---- host side ----

inline unsigned grid_size(std::int64_t blocks) {
  check(blocks <= 0x7FFFFFFF, "fp8_quantize", "matrix too large: ", blocks, " thread blocks");
  return static_cast<unsigned>(std::max<std::int64_t>(blocks, 1));
}

template <class T>
void launch(const Params& p, bool row_tiles, bool transposed, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const bool vector = reinterpret_cast<std::uintptr_t>(p.src) % 16 == 0 && (p.src_rows == 1 || p.lds % V == 0) &&
                      p.src_batch % V == 0;
  auto go = [&](auto kernel, std::int64_t blocks, int threads = kThreads) {
    kernel<<<dim3(grid_size(blocks), static_cast<unsigned>(p.batch)), threads, 0, stream>>>(p);
  };
  if (p.q_t != nullptr && row_tiles) {
    if constexpr (std::is_same_v<T, bf16>) {
      const std::int64_t blocks = ceil_div(p.src_rows, kTile) * ceil_div(p.src_cols, kTile);
      vector ? go(rows_both_kernel<true>, blocks) : go(rows_both_kernel<false>, blocks);
    }
  } else if (row_tiles && !transposed) {
    // One warp per run of 32 vectors; a grid-stride loop beyond 2^20 blocks.
    const std::int64_t runs = p.src_rows * ceil_div(p.src_cols, 32 * V);
    const std::int64_t blocks = std::min<std::int64_t>(ceil_div(runs, kWarps), std::int64_t{1} << 20);
    vector ? go(rows_kernel<T, true>, blocks) : go(rows_kernel<T, false>, blocks);
  } else if (row_tiles && p.k_group_offsets != nullptr) {
    const std::int64_t blocks = ceil_div(p.k_grouped_cols, kTile) * ceil_div(p.src_cols, kTransposedCols);
    vector ? go(rows_transposed_kernel<T, true, true>, blocks) : go(rows_transposed_kernel<T, false, true>, blocks);
  } else if (row_tiles) {
    const std::int64_t blocks = ceil_div(p.src_rows, kTile) * ceil_div(p.src_cols, kTransposedCols);
    vector ? go(rows_transposed_kernel<T, true, false>, blocks) : go(rows_transposed_kernel<T, false, false>, blocks);
  } else {
    const std::int64_t blocks = ceil_div(p.src_rows, kTile) * ceil_div(p.src_cols, kTile);
    const int t = kBlockThreads;
    if (p.q_t != nullptr)
      vector ? go(blocks_kernel<T, true, true, true>, blocks, t) : go(blocks_kernel<T, false, true, true>, blocks, t);
    else if (transposed)
      vector ? go(blocks_kernel<T, true, false, true>, blocks, t) : go(blocks_kernel<T, false, false, true>, blocks, t);
    else
      vector ? go(blocks_kernel<T, true, true, false>, blocks, t) : go(blocks_kernel<T, false, true, false>, blocks, t);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

inline void launch_fp8_quantize(const Fp8QuantizeArgs& a) {
  Params p{};
  p.src = a.src;
  p.src_rows = a.src_rows;
  p.src_cols = a.src_cols;
  p.lds = a.lds;
  p.q = a.q;
  p.scale = a.scale;
  p.scale_ld = a.scale_ld;
  p.amax_floor = a.amax_floor;
  p.power_of_two = a.power_of_two;
  p.k_group_offsets = a.k_group_offsets;
  p.k_groups = a.k_groups;
  p.k_grouped_cols = a.k_grouped_cols;
  p.batch = a.batch;
  p.src_batch = a.src_batch;
  p.q_batch = a.q_batch;
  p.scale_batch = a.scale_batch;
  p.q_t = a.q_t;
  p.scale_t = a.scale_t;
  p.scale_t_ld = a.scale_t_ld;
  const bool row_tiles = a.tiling == fp8::Tiling::row_1x128, transposed = a.transposed;
  const bool k_grouped = a.k_group_offsets != nullptr;
  const bool both = a.q_t != nullptr;
  check(a.batch >= 1 && a.batch <= 65535 && (a.batch == 1 || (!row_tiles && !k_grouped)), "fp8_quantize",
        "takes a batch of 1 to 65535 matrices, above 1 only for 128x128 blocks; got ", a.batch, " of shape [",
        a.src_rows, ", ", a.src_cols, "] with ", fp8::tiling_name(a.tiling), " tiles");
  // Both L = S and L = Sᵀ: 1×128 tiles from a bf16 S (scale_t k-block major, ld ≥ src_cols, a
  // multiple of 4), or 128×128 blocks (scale_t the transposed block grid, ld ≥ its columns).
  const bool both_ok = row_tiles ? a.dtype == DType::bf16 && a.scale_t_ld >= a.src_cols && a.scale_t_ld % 4 == 0
                                 : a.scale_t_ld >= ceil_div(a.src_rows, kTile);
  check(!both || (!transposed && !k_grouped && a.scale_t != nullptr && both_ok), "fp8_quantize",
        "both tilings at once take S quantized as itself (1x128 tiles: bf16) and scales for its transpose; got dtype ",
        a.dtype, ", ", fp8::tiling_name(a.tiling), " tiles, transposed ", a.transposed, " and scale ld ", a.scale_t_ld,
        " for S of shape [", a.src_rows, ", ", a.src_cols, "]");
  check(!k_grouped || (row_tiles && transposed && a.k_groups >= 1 && a.k_grouped_cols % kTile == 0), "fp8_quantize",
        "the k-grouped layout takes 1x128 tiles of the transposed source, G >= 1 and a multiple of 128 columns, got ",
        a.k_groups, " groups and ", a.k_grouped_cols, " columns");
  if (p.src_cols == 0 || (p.src_rows == 0 && !k_grouped)) return;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  // The 1×128 scale storage pads each k-block's run of rows to a multiple of 4: zero the padding.
  const std::int64_t out_rows = transposed ? p.src_cols : p.src_rows;
  const std::int64_t out_cols = k_grouped ? p.k_grouped_cols : (transposed ? p.src_rows : p.src_cols);
  if (row_tiles && p.scale_ld > out_rows)
    KILN_CUDA_CHECK(cudaMemsetAsync(
        p.scale, 0, static_cast<std::size_t>(ceil_div(out_cols, kTile) * p.scale_ld) * sizeof(float), stream));
  if (both && row_tiles && p.scale_t_ld > p.src_cols)
    KILN_CUDA_CHECK(cudaMemsetAsync(
        p.scale_t, 0, static_cast<std::size_t>(ceil_div(p.src_rows, kTile) * p.scale_t_ld) * sizeof(float), stream));
  switch (a.dtype) {
    case DType::f32: return launch<float>(p, row_tiles, transposed, stream);
    case DType::bf16: return launch<bf16>(p, row_tiles, transposed, stream);
    default: fail("fp8_quantize", "has no CUDA kernel for dtype ", a.dtype, " (shape [", p.src_rows, ", ", p.src_cols, "])");
  }
}

inline const bool quantize_registered = register_device_kernel(&launch_fp8_quantize);

}  // namespace kiln::kernels::fp8_quantize
