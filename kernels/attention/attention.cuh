// Fused causal attention on CUDA, forward and backward (arguments kernels/attention/args.hpp;
// front-end ops/attention.hpp; CPU reference backend/cpu/attention.hpp; docs/mla.md).
//
// The launchers at the end pick the forward: on an sm_90 GPU in bf16 from S = 1024 on (S = 512 at
// some head dims: args.hpp, attention_hopper_wanted) or when named, the Hopper kernel of
// attention_hopper.cuh; otherwise the plain kernel here. The backward:
// on an sm_90 GPU in bf16 where its head dims allow (or when named), the Hopper dK/dV and dQ
// kernels of attention_backward_hopper.cuh after this file's delta kernel; otherwise this file's.
//
// The plain path: warp-level tensor-core products (mma.sync m16n8k16, bf16 in, float
// accumulation; common/mma_sm80.cuh), which run on every GPU from sm_80 on, Hopper included. The
// algorithm is FlashAttention-2's (Dao, 2023): scores never leave the chip.
//
// Forward. One block of 4 warps per (64 queries, head, batch row); each warp owns 16 query rows.
// The block walks the 64-key tiles its rows may see (from the tile of its first row's sequence
// start to the diagonal tile), K and V tiles double-buffered in shared memory by cp.async (the
// next tile is in flight while this one is computed). Per tile a warp computes its 16 x 64
// scores S = Q·Kᵀ (Dk/16 x 8 mma), masks (causal and sequence start; only on tiles that need
// it), and updates an online softmax in the base-2 domain (x = scale·log2(e)·s, running max m and
// per-thread partial sums l; the accumulator is rescaled by exp2(m_old − m_new)); the
// probabilities become the A operand of O += P·V in registers (Dv/8 x 4 mma per 16 keys). At the
// end out = O / l and lse = ln 2 · (m + log2 l), in float, for the backward. Blocks are issued
// diagonal-last-first (the query tiles with the most keys start first) to even out the tail.
//
// Backward (deterministic: no atomics; every gradient element is summed by one thread in a fixed
// order, so two runs give the same bits):
//   1. delta_i = dout_i·out_i, eight lanes a row (the D of docs/mla.md; equal to Σ_j P_ij dP_ij).
//   2. dK, dV: one block per (64 keys, kv head, batch row), each warp 16 keys. It keeps its K and
//      V tile in shared memory and walks every query head of its group and every query tile of
//      BQ queries that sees its keys (from the diagonal to the end of the keys' sequence), Q, dout,
//      lse, delta double-buffered. Per query tile, in the transposed orientation (keys are rows):
//      Sᵀ = K·Qᵀ, Pᵀ = exp2(x − lse_i log2 e) masked, dV += Pᵀ·dout, dPᵀ = V·doutᵀ,
//      dSᵀ = Pᵀ ∘ (dPᵀ − delta_i), dK += dSᵀ·Q; dK is scaled once at the end.
//   3. dQ: one block per (64 queries, head, batch row), as the forward: S = Q·Kᵀ, P, dP = dout·Vᵀ,
//      dS = P ∘ (dP − delta_i), dQ += dS·K.
// The two-kernel split recomputes S and dP for dQ (7 products per key-query tile instead of 5)
// but needs neither atomics nor a float dQ buffer, and grouped kv heads sum their query heads in
// a fixed order inside one block.
//
// Work and bytes (docs/mla.md): per head the forward does S²(Dk + Dv) flops (the causal half),
// the backward as run here S²(4 Dk + 3 Dv) (the minimum being S²(3 Dk + 2 Dv); benchmarks count
// the minimum). K and V are read once per query tile (S/64 times, from L2 after the first), Q
// and dout once per key tile in the dK/dV kernel; nothing of size S x S touches memory.
//
// Registers per thread (4 warps, 255 at most): forward O Dv/2 + S 32 floats; dK/dV kernel
// (Dk + Dv)/2 + BQ/2 floats (BQ = 32 when Dk + Dv > 192, else 64); dQ kernel Dk/2 + 64 (ptxas at
// 192/128: 252 for dK/dV, 248 for dQ, no spills; checked with -Xptxas -v).
// Shared memory: forward (64 (Dk+8) + 2·64 (Dk+8) + 2·64 (Dv+8))·2 bytes (111.6 KB at 192/128),
// dK/dV 86 KB, dQ 129 KB at 192/128 (opted into per device, launch.cuh).
//
// Limits: bf16 only (fp16 would double the instances and CI's compile time for a type training
// on sm_80+ hardly uses; common/mma_sm80.cuh takes both); (Dk, Dv) among attention_head_dims_supported (template instances); the
// inputs 16-byte aligned with strides of whole 16-byte pieces (args.hpp: HeadLayout; the
// front-end copies other views); S < 2^31, H and B <= 65535.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/attention/args.hpp"
#include "kiln/kernels/attention/attention_backward_hopper.cuh"
#include "kiln/kernels/attention/attention_hopper.cuh"
#include "kiln/kernels/attention/head_rows.cuh"
#include "kiln/kernels/attention/key_tiles.cuh"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/reduce.cuh"

namespace kiln::kernels::attention {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // queries a block (forward, dQ) or keys a block (dK, dV)
constexpr int kKeys = 64;           // keys a tile (forward, dQ)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Query tile of the dK/dV kernel: the two accumulators take (Dk + Dv)/2 registers a thread.
template <int DK, int DV>
constexpr int dkdv_query_tile() {
  return DK + DV > 192 ? 32 : 64;
}


// ---------------------------------------------------------------------------------------------
// Forward.

template <int DK, int DV>
constexpr std::size_t forward_smem_elements() {
  return static_cast<std::size_t>(kRows * (DK + 8) + 2 * kKeys * (DK + 8) + 2 * kKeys * (DV + 8));
}

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(AttentionForwardArgs a) {
  constexpr int SK = DK + 8, SV = DV + 8;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  T* const sQ = reinterpret_cast<T*>(attention_smem);  // [kRows][SK]
  T* const sK = sQ + kRows * SK;                        // [2][kKeys][SK]
  T* const sV = sK + 2 * kKeys * SK;                    // [2][kKeys][SV]
  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * kRows;  // most keys first
  const int h = static_cast<int>(blockIdx.y), kvh = h / (s.heads / s.kv_heads);
  const std::int64_t b = blockIdx.z;
  const HeadLayout vl = a.v_layout;  // the layouts resolved by the launcher
  const HeadRows<T> q = q_rows<T>(a, b, h), k = k_rows<T>(a, b, kvh);
  const T* const v = static_cast<const T*>(a.v) + b * vl.batch + kvh * vl.head;

  const KeyTiles tiles = key_tiles(s, q0, kRows, kKeys);
  const std::int64_t t_first = tiles.first, t_last = tiles.last, last_begin = tiles.last_begin;

  load_head_rows_async<T, kRows, DK, kThreads>(sQ, q, q0, S);
  load_head_rows_async<T, kKeys, DK, kThreads>(sK, k, t_first, S);
  sm80::load_tile_async<T, kKeys, DV, kThreads>(sV, v, t_first, S, vl.row);
  sm80::cp_async_commit();

  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int g = lane >> 2, t = lane & 3;
  const std::int64_t warp_row0 = q0 + 16 * warp;
  std::int64_t row[2], begin[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = warp_row0 + g + 8 * r;
    begin[r] = row[r] < S ? seq_begin_of(s, row[r]) : 0;
  }
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  float o[DV / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  sm80::zero(o);

  int buf = 0;
  for (std::int64_t n0 = t_first; n0 <= t_last; n0 += kKeys, buf ^= 1) {
    if (n0 + kKeys <= t_last) {
      load_head_rows_async<T, kKeys, DK, kThreads>(sK + (buf ^ 1) * kKeys * SK, k, n0 + kKeys, S);
      sm80::load_tile_async<T, kKeys, DV, kThreads>(sV + (buf ^ 1) * kKeys * SV, v, n0 + kKeys, S, vl.row);
      sm80::cp_async_commit();
      sm80::cp_async_wait<1>();
    } else {
      sm80::cp_async_wait<0>();
    }
    __syncthreads();  // this tile (and Q) are in shared memory for every warp

    float sc[kKeys / 8][4];
    sm80::zero(sc);
    sm80::warp_mm_rows_rows<T, kKeys, DK>(sc, sQ + 16 * warp * SK, SK, sK + buf * kKeys * SK, SK);

    // Masking only where a key of the tile may be past a row of this warp or before its sequence.
    float mt[2] = {-INFINITY, -INFINITY};
    float(&flat)[kKeys / 2] = reinterpret_cast<float(&)[kKeys / 2]>(sc);  // the same order (key_tiles.cuh)
    if (n0 + kKeys > warp_row0 || n0 < last_begin)
      scale_and_mask<true, kKeys>(flat, mt, scale_log2, row_bounds(begin, row, n0, t));
    else
      scale_and_mask<false, kKeys>(flat, mt, scale_log2, RowBounds{});
    sm80::online_softmax_tile<kKeys, DV>(sc, mt, m, l, o);
    sm80::warp_mm_regs_rows<T, DV, kKeys>(o, sc, sV + buf * kKeys * SV, SV);
    __syncthreads();  // every warp is done with this buffer before the next prefetch overwrites it
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = sm80::quad_sum(l[r]);
    inv[r] = 1.f / l[r];  // l >= 1 for a real row: its own key is the maximum or below it
  }
  const HeadLayout ol = a.out_layout;
  T* const out = static_cast<T*>(a.out) + b * ol.batch + h * ol.head;
  sm80::store_rows<T, DV>(out, o, warp_row0, S, inv, ol.row);
  if (t == 0) {
    float* const lse = a.lse + (b * s.heads + h) * S;
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row[r] < S) lse[row[r]] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward 1: delta_i = dout_i·out_i.
//
// Bytes: 2·B·H·S·dv elements read (out, dout), B·H·S floats written (the big config: 51 MB, ~17 us
// at 3 TB/s).
// Eight lanes share a row and read it in 16-byte pieces (a row of dv = 64 bf16 is one piece a
// lane), four rows a warp: a lane per element read 2 bytes a load and reached about 1 TB/s
// (54 us on an H100 at the big config's shape). The launcher's checks make every row whole
// 16-byte pieces (aligned tensors, strides and dv multiples of 8 elements).

constexpr int kDeltaLanes = 8;  // lanes per row

template <class T>
__global__ void __launch_bounds__(256) attention_delta_kernel(AttentionBackwardArgs a) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kRowsPerWarp = 32 / kDeltaLanes;
  const std::int64_t rows = a.shape.batch * a.shape.heads * a.shape.seq;
  const int dv = a.shape.dv;
  const int lane = static_cast<int>(threadIdx.x & 31), part = lane % kDeltaLanes;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  const HeadLayout ol = a.out_layout, gl = a.dout_layout;  // resolved by the launcher
  const std::int64_t S = a.shape.seq, H = a.shape.heads;
  const std::int64_t first = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32 * kRowsPerWarp;
  for (std::int64_t r0 = first; r0 < rows; r0 += warps * kRowsPerWarp) {  // uniform across the warp
    // r = (b·H + h)·S + i, the row of delta (contiguous); out and dout by their layouts.
    const std::int64_t r = r0 + lane / kDeltaLanes;
    float sum = 0.f;
    if (r < rows) {
      const std::int64_t slice = r / S, i = r - slice * S, b = slice / H, h = slice - b * H;
      const T* const o = static_cast<const T*>(a.out) + b * ol.batch + h * ol.head + i * ol.row;
      const T* const g = static_cast<const T*>(a.dout) + b * gl.batch + h * gl.head + i * gl.row;
      for (int d = part * kVec; d < dv; d += kDeltaLanes * kVec) {
        const uint4 ov = *reinterpret_cast<const uint4*>(o + d), gv = *reinterpret_cast<const uint4*>(g + d);
        const T* const oe = reinterpret_cast<const T*>(&ov);
        const T* const ge = reinterpret_cast<const T*>(&gv);
#pragma unroll
        for (int e = 0; e < kVec; ++e) sum += load(oe[e]) * load(ge[e]);
      }
    }
    sum = warp_all_reduce<kDeltaLanes>(sum, Plus{});
    if (part == 0 && r < rows) a.delta[r] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward 2: dK, dV.

template <int DK, int DV>
constexpr std::size_t dkdv_smem_bytes(std::size_t element) {
  constexpr int BQ = dkdv_query_tile<DK, DV>();
  return element * static_cast<std::size_t>(kRows * (DK + 8) + kRows * (DV + 8) + 2 * BQ * (DK + 8) + 2 * BQ * (DV + 8)) +
         sizeof(float) * 3 * 2 * BQ;
}

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads) attention_dkdv_kernel(AttentionBackwardArgs a) {
  constexpr int SK = DK + 8, SV = DV + 8, BQ = dkdv_query_tile<DK, DV>();
  extern __shared__ __align__(16) unsigned char attention_smem[];
  T* const sK = reinterpret_cast<T*>(attention_smem);  // [kRows][SK]: this block's keys
  T* const sV = sK + kRows * SK;                        // [kRows][SV]
  T* const sQ = sV + kRows * SV;                        // [2][BQ][SK]
  T* const sG = sQ + 2 * BQ * SK;                       // [2][BQ][SV]: dout
  float* const sLse = reinterpret_cast<float*>(sG + 2 * BQ * SV);  // [2][BQ]
  float* const sDelta = sLse + 2 * BQ;                              // [2][BQ]
  std::int32_t* const sBegin = reinterpret_cast<std::int32_t*>(sDelta + 2 * BQ);  // [2][BQ]

  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * kRows;  // early keys see the most queries
  const int kvh = static_cast<int>(blockIdx.y), group = s.heads / s.kv_heads;
  const std::int64_t b = blockIdx.z;
  const std::int64_t k_last = (k0 + kRows < S ? k0 + kRows : S) - 1;
  const std::int64_t q_end = seq_end_of(s, k_last);  // queries k0 .. q_end - 1 see keys of this block
  const std::int64_t q_tiles = (q_end - k0 + BQ - 1) / BQ;
  const std::int64_t steps = q_tiles * group;

  const HeadLayout vl = a.v_layout, gl = a.dout_layout;  // the layouts resolved by the launcher
  const T* const vp = static_cast<const T*>(a.v) + b * vl.batch + kvh * vl.head;
  load_head_rows_async<T, kRows, DK, kThreads>(sK, k_rows<T>(a, b, kvh), k0, S);
  sm80::load_tile_async<T, kRows, DV, kThreads>(sV, vp, k0, S, vl.row);

  // Step i: query head kvh·group + i / q_tiles, query tile k0 + (i mod q_tiles)·BQ.
  auto prefetch = [&](std::int64_t step, int buf) {
    const int h = kvh * group + static_cast<int>(step / q_tiles);
    const std::int64_t qt0 = k0 + (step % q_tiles) * BQ;
    const std::int64_t head_row = (b * s.heads + h) * S;  // of lse and delta
    const T* const g_head = static_cast<const T*>(a.dout) + b * gl.batch + h * gl.head;
    load_head_rows_async<T, BQ, DK, kThreads>(sQ + buf * BQ * SK, q_rows<T>(a, b, h), qt0, S);
    sm80::load_tile_async<T, BQ, DV, kThreads>(sG + buf * BQ * SV, g_head, qt0, S, gl.row);
    for (int i = static_cast<int>(threadIdx.x); i < BQ; i += kThreads) {
      const bool valid = qt0 + i < S;
      const std::int64_t src = valid ? qt0 + i : 0;
      sm80::cp_async_4(sLse + buf * BQ + i, a.lse + head_row + src, valid);
      sm80::cp_async_4(sDelta + buf * BQ + i, a.delta + head_row + src, valid);
      if (s.seq_begin) sm80::cp_async_4(sBegin + buf * BQ + i, s.seq_begin + src, valid);
    }
  };
  prefetch(0, 0);
  sm80::cp_async_commit();

  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int g = lane >> 2, t = lane & 3;
  const std::int64_t warp_key0 = k0 + 16 * warp;
  const std::int64_t key[2] = {warp_key0 + g, warp_key0 + g + 8};
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  float dk[DK / 8][4], dv[DV / 8][4];
  sm80::zero(dk);
  sm80::zero(dv);

  int buf = 0;
  for (std::int64_t step = 0; step < steps; ++step, buf ^= 1) {
    if (step + 1 < steps) {
      prefetch(step + 1, buf ^ 1);
      sm80::cp_async_commit();
      sm80::cp_async_wait<1>();
    } else {
      sm80::cp_async_wait<0>();
    }
    __syncthreads();
    const std::int64_t qt0 = k0 + (step % q_tiles) * BQ;
    const T* const q_tile = sQ + buf * BQ * SK;
    const T* const g_tile = sG + buf * BQ * SV;
    const float* const lse = sLse + buf * BQ;
    const float* const delta = sDelta + buf * BQ;
    const std::int32_t* const qbegin = sBegin + buf * BQ;

    // Sᵀ (16 keys x BQ queries) and Pᵀ.
    float p[BQ / 8][4];
    sm80::zero(p);
    sm80::warp_mm_rows_rows<T, BQ, DK>(p, sK + 16 * warp * SK, SK, q_tile, SK);
    const bool masked = qt0 < warp_key0 + 16 || qt0 + BQ > S || s.seq_begin != nullptr;
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int il = nt * 8 + 2 * t + (e & 1);
        const std::int64_t i = qt0 + il, j = key[e >> 1];
        const bool valid = !masked || (i < S && j <= i && (s.seq_begin == nullptr || qbegin[il] <= j));
        p[nt][e] = valid ? exp2f(p[nt][e] * scale_log2 - lse[il] * kLog2e) : 0.f;
      }
    sm80::warp_mm_regs_rows<T, DV, BQ>(dv, p, g_tile, SV);  // dV += Pᵀ·dout

    float ds[BQ / 8][4];
    sm80::zero(ds);
    sm80::warp_mm_rows_rows<T, BQ, DV>(ds, sV + 16 * warp * SV, SV, g_tile, SV);  // dPᵀ = V·doutᵀ
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[nt][e] = p[nt][e] * (ds[nt][e] - delta[nt * 8 + 2 * t + (e & 1)]);
    sm80::warp_mm_regs_rows<T, DK, BQ>(dk, ds, q_tile, SK);  // dK += dSᵀ·Q
    __syncthreads();
  }

  store_gradient_rows<T, DK>(dk_rows<T>(a, b, kvh), reinterpret_cast<const float(&)[DK / 2]>(dk), warp_key0, S, DK,
                             static_cast<float>(s.scale));
  store_gradient_rows<T, DV>(dv_rows<T>(a, b, kvh), reinterpret_cast<const float(&)[DV / 2]>(dv), warp_key0, S, DV,
                             1.f);
}

// ---------------------------------------------------------------------------------------------
// Backward 3: dQ.

template <int DK, int DV>
constexpr std::size_t dq_smem_elements() {
  return static_cast<std::size_t>(kRows * (DK + 8) + kRows * (DV + 8) + 2 * kKeys * (DK + 8) + 2 * kKeys * (DV + 8));
}

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(AttentionBackwardArgs a) {
  constexpr int SK = DK + 8, SV = DV + 8;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  T* const sQ = reinterpret_cast<T*>(attention_smem);  // [kRows][SK]
  T* const sG = sQ + kRows * SK;                        // [kRows][SV]: dout
  T* const sK = sG + kRows * SV;                        // [2][kKeys][SK]
  T* const sV = sK + 2 * kKeys * SK;                    // [2][kKeys][SV]
  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * kRows;
  const int h = static_cast<int>(blockIdx.y), kvh = h / (s.heads / s.kv_heads);
  const std::int64_t b = blockIdx.z;
  const std::int64_t head_row = (b * s.heads + h) * S;  // of lse and delta
  const HeadLayout vl = a.v_layout, gl = a.dout_layout;  // the layouts resolved by the launcher
  const HeadRows<T> k = k_rows<T>(a, b, kvh);
  const T* const v = static_cast<const T*>(a.v) + b * vl.batch + kvh * vl.head;
  const KeyTiles tiles = key_tiles(s, q0, kRows, kKeys);
  const std::int64_t t_first = tiles.first, t_last = tiles.last, last_begin = tiles.last_begin;

  load_head_rows_async<T, kRows, DK, kThreads>(sQ, q_rows<T>(a, b, h), q0, S);
  sm80::load_tile_async<T, kRows, DV, kThreads>(sG, static_cast<const T*>(a.dout) + b * gl.batch + h * gl.head, q0, S,
                                                gl.row);
  load_head_rows_async<T, kKeys, DK, kThreads>(sK, k, t_first, S);
  sm80::load_tile_async<T, kKeys, DV, kThreads>(sV, v, t_first, S, vl.row);
  sm80::cp_async_commit();

  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int g = lane >> 2, t = lane & 3;
  const std::int64_t warp_row0 = q0 + 16 * warp;
  std::int64_t row[2], begin[2];
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = warp_row0 + g + 8 * r;
    const bool real = row[r] < S;
    begin[r] = real ? seq_begin_of(s, row[r]) : 0;
    lse2[r] = real ? a.lse[head_row + row[r]] * kLog2e : 0.f;
    delta[r] = real ? a.delta[head_row + row[r]] : 0.f;
  }
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  float dq[DK / 8][4];
  sm80::zero(dq);

  int buf = 0;
  for (std::int64_t n0 = t_first; n0 <= t_last; n0 += kKeys, buf ^= 1) {
    if (n0 + kKeys <= t_last) {
      load_head_rows_async<T, kKeys, DK, kThreads>(sK + (buf ^ 1) * kKeys * SK, k, n0 + kKeys, S);
      sm80::load_tile_async<T, kKeys, DV, kThreads>(sV + (buf ^ 1) * kKeys * SV, v, n0 + kKeys, S, vl.row);
      sm80::cp_async_commit();
      sm80::cp_async_wait<1>();
    } else {
      sm80::cp_async_wait<0>();
    }
    __syncthreads();
    const T* const k_tile = sK + buf * kKeys * SK;
    const T* const v_tile = sV + buf * kKeys * SV;

    float p[kKeys / 8][4];
    sm80::zero(p);
    sm80::warp_mm_rows_rows<T, kKeys, DK>(p, sQ + 16 * warp * SK, SK, k_tile, SK);
    const bool masked = n0 + kKeys > warp_row0 || n0 < last_begin;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const std::int64_t j = n0 + nt * 8 + 2 * t + (e & 1);
        const bool valid = !masked || (j <= row[r] && j >= begin[r]);
        p[nt][e] = valid ? exp2f(p[nt][e] * scale_log2 - lse2[r]) : 0.f;
      }
    float ds[kKeys / 8][4];
    sm80::zero(ds);
    sm80::warp_mm_rows_rows<T, kKeys, DV>(ds, sG + 16 * warp * SV, SV, v_tile, SV);  // dP = dout·Vᵀ
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[nt][e] = p[nt][e] * (ds[nt][e] - delta[e >> 1]);
    sm80::warp_mm_regs_rows<T, DK, kKeys>(dq, ds, k_tile, SK);  // dQ += dS·K
    __syncthreads();
  }
  store_gradient_rows<T, DK>(dq_rows<T>(a, b, h), reinterpret_cast<const float(&)[DK / 2]>(dq), warp_row0, S, DK,
                             static_cast<float>(s.scale));
}

// ---------------------------------------------------------------------------------------------
// Launchers.

inline void check_attention_args(const char* op, DType dtype, const AttentionShapeArgs& s,
                                 std::initializer_list<const void*> pointers) {
  check(dtype == DType::bf16, op, "CUDA kernels take bf16, got ", dtype);
  check(attention_head_dims_supported(s.dk, s.dv), op, "has no CUDA kernel for head dims (dk ", s.dk, ", dv ", s.dv,
        "): compiled for (48, 32), (64, 64), (96, 64), (128, 128), (192, 128)");
  check(s.seq < 0x7fffffff && s.heads <= 65535 && s.batch <= 65535 && s.kv_heads >= 1 && s.heads % s.kv_heads == 0,
        op, "sizes out of the kernels' range: B ", s.batch, ", H ", s.heads, ", Hkv ", s.kv_heads, ", S ", s.seq);
  for (const void* p : pointers) check(aligned16(p), op, "needs 16-byte aligned tensors (contiguous, from kiln's allocator)");
}

// The layout of one operand with the default made explicit (args.hpp: resolved_layout), checked:
// strides of whole 16-byte pieces, as the kernels' row copies and TMA need.
inline HeadLayout checked_layout(const char* op, const char* name, HeadLayout l, std::int64_t heads,
                                 std::int64_t seq, std::int64_t d) {
  l = resolved_layout(l, heads, seq, d);
  check(l.batch >= 0 && l.head >= 0 && l.row > 0 && l.batch % 8 == 0 && l.head % 8 == 0 && l.row % 8 == 0, op, name,
        "'s strides (batch ", l.batch, ", head ", l.head, ", row ", l.row,
        " elements) must be non-negative multiples of 8 (16 bytes), the row's positive");
  return l;
}

// A gradient's layout, resolved and checked as an operand's, and every row its own place: a
// stride-0 batch or head (a view read by several heads) would make their stores collide.
inline HeadLayout checked_gradient_layout(const char* op, const char* name, HeadLayout l, std::int64_t batch,
                                          std::int64_t heads, std::int64_t seq, std::int64_t d) {
  l = checked_layout(op, name, l, heads, seq, d);
  check((batch == 1 || l.batch > 0) && (heads == 1 || l.head > 0), op, name, "'s batch and head strides (", l.batch,
        ", ", l.head, ") must be positive: each gradient row is written once, to its own place");
  return l;
}

// MLA's parts (args.hpp: AttentionRopeParts) with their layouts resolved and checked: the rotary
// part the last dim of the dk columns, the columns before it whole 64-column boxes.
inline AttentionRopeParts checked_rope(const char* op, AttentionRopeParts p, const AttentionShapeArgs& s) {
  if (p.dim == 0) return p;
  check(p.dim > 0 && p.dim < s.dk && (s.dk - p.dim) % 64 == 0 && p.dim % 8 == 0, op, "rotary parts of ", p.dim,
        " of the ", s.dk, " qk columns: the columns before them must be a positive multiple of 64");
  check(p.q_rope != nullptr && p.k_rope != nullptr && aligned16(p.q_rope) && aligned16(p.k_rope), op,
        "rotary parts need 16-byte aligned q_rope and k_rope");
  p.q_layout = checked_layout(op, "q's rotary part", p.q_layout, s.heads, s.seq, p.dim);
  p.k_layout = checked_layout(op, "k's rotary part", p.k_layout, s.kv_heads, s.seq, p.dim);
  return p;
}

// Calls f(T{}, DK, DV as integral constants) for the instance of (dtype, dk, dv).
template <class F>
void dispatch_attention(DType dtype, int dk, int dv, F&& f) {
  auto with_type = [&](auto tag) {
    if (dk == 48 && dv == 32) return f(tag, std::integral_constant<int, 48>{}, std::integral_constant<int, 32>{});
    if (dk == 64 && dv == 64) return f(tag, std::integral_constant<int, 64>{}, std::integral_constant<int, 64>{});
    if (dk == 96 && dv == 64) return f(tag, std::integral_constant<int, 96>{}, std::integral_constant<int, 64>{});
    if (dk == 128 && dv == 128) return f(tag, std::integral_constant<int, 128>{}, std::integral_constant<int, 128>{});
    return f(tag, std::integral_constant<int, 192>{}, std::integral_constant<int, 128>{});
  };
  (void)dtype;  // bf16, checked by check_attention_args
  with_type(bf16{});
}

inline void launch_attention_forward(const AttentionForwardArgs& given) {
  const char* op = "fused_causal_attention";
  const AttentionShapeArgs& s = given.shape;
  if (s.batch == 0 || s.seq == 0 || s.heads == 0) return;
  check_attention_args(op, given.dtype, s, {given.q, given.k, given.v, given.out});
  AttentionForwardArgs a = given;  // the kernels read resolved layouts
  a.q_layout = checked_layout(op, "q", a.q_layout, s.heads, s.seq, s.dk);
  a.k_layout = checked_layout(op, "k", a.k_layout, s.kv_heads, s.seq, s.dk);
  a.v_layout = checked_layout(op, "v", a.v_layout, s.kv_heads, s.seq, s.dv);
  a.out_layout = checked_layout(op, "out", a.out_layout, s.heads, s.seq, s.dv);
  a.rope = checked_rope(op, a.rope, s);
  cuda::DeviceGuard guard(a.launch.device);
  const bool hopper_fits = device_info(a.launch.device).major == 9 && attention_hopper_supports(a.dtype, s.dk, s.dv) &&
                          s.batch * s.kv_heads <= 65535 && s.batch * s.heads * s.seq < 0x7fffffff;
  check(a.implementation != AttentionKernel::hopper || hopper_fits, op,
        "the Hopper kernel needs bf16, an sm_90 GPU, dk a multiple of 32 up to 256, dv 64 or 128 and "
        "fewer than 2^31 rows; got ", a.dtype, ", dk ",
        s.dk, ", dv ", s.dv, " on a GPU of compute capability ", device_info(a.launch.device).major, ".",
        device_info(a.launch.device).minor);
  const bool use_hopper = hopper_fits && attention_hopper_wanted(a.implementation, a.dtype, s.dk, s.dv, s.seq);
  dispatch_attention(a.dtype, s.dk, s.dv, [&](auto tag, auto dk, auto dv) {
    using T = decltype(tag);
    constexpr int DK = decltype(dk)::value, DV = decltype(dv)::value;
    if constexpr (attention_hopper_supports(dtype_of<T>, DK, DV)) {
      if (use_hopper) {
        hopper::launch_forward<T, DK, DV>(a);
        record_kernel_variant("attention_forward", "hopper");
        return;
      }
    }
    const std::size_t smem = forward_smem_elements<DK, DV>() * sizeof(T);
    const dim3 grid(static_cast<unsigned>((s.seq + kRows - 1) / kRows), static_cast<unsigned>(s.heads),
                    static_cast<unsigned>(s.batch));
    opt_in_shared_memory(attention_forward_kernel<T, DK, DV>, smem, a.launch.device);
    attention_forward_kernel<T, DK, DV><<<grid, kThreads, smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
    record_kernel_variant("attention_forward", "mma_sm80");
  });
}

inline void launch_attention_backward(const AttentionBackwardArgs& given) {
  const char* op = "fused_causal_attention backward";
  const AttentionShapeArgs& s = given.shape;
  if (s.batch == 0 || s.seq == 0 || s.heads == 0) return;
  check_attention_args(op, given.dtype, s,
                       {given.q, given.k, given.v, given.out, given.dout, given.dq, given.dk, given.dv});
  AttentionBackwardArgs a = given;  // the kernels read resolved layouts
  a.q_layout = checked_layout(op, "q", a.q_layout, s.heads, s.seq, s.dk);
  a.k_layout = checked_layout(op, "k", a.k_layout, s.kv_heads, s.seq, s.dk);
  a.v_layout = checked_layout(op, "v", a.v_layout, s.kv_heads, s.seq, s.dv);
  a.out_layout = checked_layout(op, "out", a.out_layout, s.heads, s.seq, s.dv);
  a.dout_layout = checked_layout(op, "dout", a.dout_layout, s.heads, s.seq, s.dv);
  a.rope = checked_rope(op, a.rope, s);
  const int main_dk = s.dk - a.rope.dim;  // dq's and dk's columns (all dk without parts)
  a.dq_layout = checked_gradient_layout(op, "dq", a.dq_layout, s.batch, s.heads, s.seq, main_dk);
  a.dk_layout = checked_gradient_layout(op, "dk", a.dk_layout, s.batch, s.kv_heads, s.seq, main_dk);
  a.dv_layout = checked_gradient_layout(op, "dv", a.dv_layout, s.batch, s.kv_heads, s.seq, s.dv);
  if (a.rope.dim > 0) {
    check(a.dq_rope != nullptr && a.dk_rope != nullptr && aligned16(a.dq_rope) && aligned16(a.dk_rope), op,
          "rotary parts need their gradients' places: 16-byte aligned dq_rope and dk_rope");
    a.dq_rope_layout = checked_gradient_layout(op, "dq_rope", a.dq_rope_layout, s.batch, s.heads, s.seq, a.rope.dim);
    a.dk_rope_layout = checked_gradient_layout(op, "dk_rope", a.dk_rope_layout, s.batch, s.kv_heads, s.seq,
                                               a.rope.dim);
  }
  cuda::DeviceGuard guard(a.launch.device);
  const bool hopper_fits = device_info(a.launch.device).major == 9 &&
                           attention_hopper_backward_supports(a.dtype, s.dk, s.dv) && s.batch * s.kv_heads <= 65535 &&
                           s.batch * s.heads * (s.seq + 256) < 0x7fffffff;
  check(a.implementation != AttentionKernel::hopper || hopper_fits, op,
        "the Hopper backward needs bf16, an sm_90 GPU, dk a multiple of 32 up to 192, dv 64 or 128 and fewer than "
        "2^31 rows; got ", a.dtype, ", dk ", s.dk, ", dv ", s.dv, " on a GPU of compute capability ",
        device_info(a.launch.device).major, ".", device_info(a.launch.device).minor);
  const bool use_hopper = hopper_fits && a.implementation != AttentionKernel::plain;
  dispatch_attention(a.dtype, s.dk, s.dv, [&](auto tag, auto dk, auto dv) {
    using T = decltype(tag);
    constexpr int DK = decltype(dk)::value, DV = decltype(dv)::value;
    const std::int64_t rows = s.batch * s.heads * s.seq;
    attention_delta_kernel<T><<<blocks_for(rows * kDeltaLanes, 256), 256, 0, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
    if constexpr (attention_hopper_backward_supports(dtype_of<T>, DK, DV)) {
      if (use_hopper) {
        hopper_backward::launch_backward<T, DK, DV>(a);
        record_kernel_variant("attention_backward", "hopper");
        return;
      }
    }

    const unsigned tiles = static_cast<unsigned>((s.seq + kRows - 1) / kRows);
    const std::size_t kv_smem = dkdv_smem_bytes<DK, DV>(sizeof(T));
    opt_in_shared_memory(attention_dkdv_kernel<T, DK, DV>, kv_smem, a.launch.device);
    attention_dkdv_kernel<T, DK, DV><<<dim3(tiles, static_cast<unsigned>(s.kv_heads), static_cast<unsigned>(s.batch)),
                                       kThreads, kv_smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();

    const std::size_t q_smem = dq_smem_elements<DK, DV>() * sizeof(T);
    opt_in_shared_memory(attention_dq_kernel<T, DK, DV>, q_smem, a.launch.device);
    attention_dq_kernel<T, DK, DV><<<dim3(tiles, static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch)),
                                     kThreads, q_smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
    record_kernel_variant("attention_backward", "mma_sm80");
  });
}

inline const bool attention_forward_registered = register_device_kernel(&launch_attention_forward);
inline const bool attention_backward_registered = register_device_kernel(&launch_attention_backward);

}  // namespace kiln::kernels::attention
