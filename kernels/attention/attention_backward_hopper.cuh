// Fused causal attention backward on Hopper (sm_90a), bf16: the function of attention.cuh's
// backward (the same gradients dq, dk, dv from the forward's out and lse, the same roundings), its
// five products per key-query tile on wgmma. Deterministic like the plain backward: every gradient
// element is summed by one thread in a fixed order (no atomics), so two runs give the same bits.
//
// Kernels (after attention.cuh's delta kernel, D_i = dout_i·out_i), both on persistent grids as
// the forward (attention_hopper.cuh): one block per multiprocessor takes tiles from a global counter
// (its own for each kernel, zeroed on the stream by the launcher) in the order the former grids
// started their blocks, and releases a tile's resident operands once its last product that reads
// them is done, so that the next tile's load overlaps the last products and the stores. The
// accumulators are overwritten by a tile's first product (scale_d = 0), not zeroed by stores.
//   dK, dV  a tile is (128 keys, kv head, batch row). The block keeps its K and V rows in shared
//           memory and walks every query head of its group and every query tile of BQ queries
//           that sees its keys (from the diagonal to the end of the keys' sequence), Q, dout and
//           the tile's lse and D streamed through 4 stages. Each consumer warpgroup owns 64 keys
//           and computes, in the transposed orientation (keys are the rows):
//             Sᵀ  = K·Qᵀ          m64n{BQ}k16, A = its K rows, B = the Q tile, both K-major in smem
//             dPᵀ = V·doutᵀ       m64n{BQ}k16, A = its V rows, B = the dout tile, K-major
//             Pᵀ  = exp2(Sᵀ·scale·log2 e − lse_i·log2 e) masked, dSᵀ = Pᵀ ∘ (dPᵀ − D_i)
//             dV += Pᵀ·dout       m64n{Dv}k16, A = Pᵀ from registers (16-bit), B = the dout tile
//                                 read MN-major (its rows are the reduction: queries)
//             dK += dSᵀ·Q         m64n{64⌈Dk/64⌉}k16, A = dSᵀ from registers, B = the Q tile MN-major
//           and at the end writes dK·scale and dV. The mask in this orientation is per key row:
//           query i sees key j iff j <= i < seq_end(j) (equivalent to seq_begin(i) <= j <= i).
//   dQ      a tile is (128 queries, head, batch row), the forward's tile, shaped like the forward
//           (attention_hopper.cuh): Q and dout resident, K and V tiles of BN keys streamed (3
//           stages at (192, 128), else 4):
//             S = Q·Kᵀ, dP = dout·Vᵀ (both K-major), P, dS = P ∘ (dP − D_i),
//             dQ += dS·K          A = dS from registers, B = the K tile MN-major.
// No operand is transposed by a copy: the tile TMA writes (rows of a row-major matrix, 64 columns
// a 128-byte-swizzled box) is read K-major by one product and MN-major by another
// (sm90/wgmma.cuh's two descriptors). dK and dQ accumulate 64⌈Dk/64⌉ columns (128 at Dk = 96): an
// MN-major B operand is read in whole 64-element swizzle rows, and the box's columns past Dk are
// TMA's zero fill; the extra columns are never stored.
//
// Per consumer, software-pipelined by one tile: iteration i issues tile i−1's register-A products
// (dV and dK, or dQ; their 16-bit A operands waited in registers) and then tile i's Sᵀ and dPᵀ,
// back to back (three commit groups), so the warpgroup's tensor-core queue does not drain at the
// tile boundary; the first wait retires tile i−1's products and Sᵀ, and tile i−1's stage is
// released there; the exp and mask run on Sᵀ while dPᵀ is still in flight; then dSᵀ, and both A
// operands are packed for the next iteration. Every wgmma is waited for inside the iteration that
// issues it: a wgmma still running across the loop's back edge made ptxas serialise every wgmma of
// the kernel (C7514 / C7515 in the variants tried), as does an ordinary instruction writing an
// accumulator register while wgmma run (so the score accumulators are written by wgmma only).
// Measured: forward+backward 0.3-3% faster than the same kernels without it (docs/mla.md).
// Ping-pong (as in the forward, sm90::PingPong): the two consumers take turns issuing an
// iteration's products, so that one's exp and dS run under the other's products rather than both
// waiting for the same stage and reaching their exp together. Measured on an H100: the backward
// 1.07-1.09x at S 2048-4096, 1.01-1.04x at S 512 (docs/mla.md); KILN_ATTENTION_PINGPONG=off turns
// it off (comparisons).
// The mask runs only on tiles that need it, instantiated apart (probabilities<MASKED>), with
// 32-bit compares (key_tiles.cuh's RowBounds), and the exp is one MUFU.EX2: with the mask as one
// predicated 64-bit path in every tile and exp2f, both kernels issued 1.4-1.6x the instructions
// and took 1.5x (dK/dV) and 1.8x (dQ) the time at B4 H16 S4096 (192, 128) on an H100.
//
// Numerics as the plain backward: P in float from the saved lse; Pᵀ rounded to 16 bits before dV,
// dS (from the float P) rounded before dK and dQ; float accumulation; dK and dQ scaled once at the
// end, every output rounded once.
//
// Warp specialisation (384 threads, as attention_hopper.cuh): warpgroup 0 the producer (setmaxnreg
// down to 24; in the dK/dV kernel its first warp works: lane 0 issues the tile's TMA copies first,
// then all 32 lanes copy the tile's lse·log2 e and D into the stage (plain loads, whose latency the
// copies do not wait for) and arrive on its full barrier: 33 arrivals with lane 0's expect-bytes;
// the other warps exit), warpgroups 1 and 2 the consumers (240 registers). Barriers: a full/empty
// pair for the resident tiles (whose index the producer writes to shared memory before the full
// arrival), full[] and empty[] per stage (one arrival per consumer warp on empty). At (192, 128)
// the dK/dV consumers keep only the tile's index and its first key across the tile (32-bit step
// counts): holding the tile's row offsets too made ptxas spill 104 bytes.
//
// Registers per consumer thread (accumulators): dK/dV kernel 32⌈Dk/64⌉ + Dv/2 (dK, dV) + BQ (Sᵀ
// and dPᵀ) + BQ/2 (the 16-bit Pᵀ and dSᵀ waiting for the next iteration), with BQ = 64 where dK and
// dV take at most 96 ((64, 64): 160 in all, (96, 64): 192), else BQ = 32 ((128, 128): 176,
// (192, 128): 208); dQ kernel 32⌈Dk/64⌉ + BN + BN/4 with BN = 64 (176 at Dk 192). The consumers get
// 240 registers (setmaxnreg; at 232 ptxas serialises the (192, 128) dK/dV kernel's wgmma, C7512);
// BQ = 64 at (128, 128) does not fit either (C7512). ptxas -v: no spills, no serialisation at any
// compiled pair. BQ = 32 narrows the two shared-memory products to m64n32k16, whose operands (3 KB
// of shared memory for 32K multiply-adds) may outrun shared memory's bandwidth (an estimate from
// the datasheet, not measured): wider query tiles there need registers freed first (docs/mla.md,
// what is next).
//
// Shared memory (bytes; a tile of R rows x D columns takes ⌈D/64⌉ boxes of R x 128):
//   dK/dV  K 128·128⌈Dk/64⌉ + V 128·128⌈Dv/64⌉ + 4 stages x (BQ·128 (⌈Dk/64⌉ + ⌈Dv/64⌉) + 8 BQ):
//          162 KB at (192, 128), 147 KB at (96, 64);
//   dQ     Q, dout 128·128 (⌈Dk/64⌉ + ⌈Dv/64⌉) + 3-4 stages x BN·128 (⌈Dk/64⌉ + ⌈Dv/64⌉):
//          201 KB at (192, 128) (3 stages), 145 KB at (96, 64) (4).
// (stages_for: as many as fit in 227 KB, at most 4; one block a multiprocessor either way, its
// registers allow no second one.)
//
// Work (docs/mla.md): per head and causal half, the dK/dV kernel does S²(2 Dk + 2 Dv) flops and the
// dQ kernel S²(2 Dk + Dv) (the split recomputes S and dP: S²(4 Dk + 3 Dv) in all against the
// minimum S²(3 Dk + 2 Dv) that benchmarks count). Bytes: K, V read once per key block; Q, dout,
// lse, D once per (key block, query tile), from L2 after the first key block of a head.
//
// Measured (H200, bf16, causal; benchmarks/bench_attention_cuda.cpp, docs/mla.md): the backward
// alone at 168-202 TFLOP/s at (192, 128), S 2048-4096 (the plain one 94-106), 113 at (96, 64),
// S 2048 (86), 72 at the big config's B32 H12 S512 (63); cuDNN's backward 131-415 there.
//
// Requirements (attention_hopper_backward_supports; otherwise the plain backward runs): an sm_90
// GPU, bf16, Dk a multiple of 32 up to 192, Dv 64 or 128, fewer than 2^31 rows in every tensor.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/attention/args.hpp"
#include "kiln/kernels/attention/attention_hopper.cuh"
#include "kiln/kernels/attention/head_rows.cuh"
#include "kiln/kernels/attention/key_tiles.cuh"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/online_softmax.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/tma.cuh"
#include "kiln/kernels/common/sm90/warpgroup.cuh"
#include "kiln/kernels/common/sm90/wgmma.cuh"
#include "kiln/kernels/common/sm90/wgmma_bf16.cuh"

namespace kiln::kernels::attention::hopper_backward {

// wgmma m64nNk16, bf16 in, float accumulators (sm90/wgmma_bf16.cuh): ss, both operands K-major
// from shared memory; rs_mn, A from registers and B MN-major.
using sm90::WgmmaBf16;

// ---- kernels ---------------------------------------------------------------------------------------

constexpr int kConsumers = 2;                    // consumer warpgroups
constexpr int kThreads = 128 * (kConsumers + 1);  // and the producer
constexpr int kBlock = 64 * kConsumers;           // keys (dK/dV) or queries (dQ) a block
// Registers a thread (setmaxnreg): 128 · (24 + 2 · 240) = 64,512 of the block's 65,536. The
// consumers need 240 at (192, 128) (at 232 ptxas serialises the wgmma there, C7512).
constexpr int kProducerRegisters = 24;
constexpr int kConsumerRegisters = 240;
constexpr float kLog2e = 1.4426950408889634f;

constexpr int chunks(int d) { return (d + 63) / 64; }

// Pipeline depth: as many stages as fit beside the resident tiles in the 227 KB a block may opt in
// to (less the 1 KB alignment slack and the barriers), at most 4. The consumers release a stage one
// tile late (the loops below), so 2 stages would leave the producer nothing to load ahead.
constexpr int kMaxStages = 4;
constexpr int kSharedBytes = 227 * 1024 - 1024 - 256;
constexpr int stages_for(int resident_bytes, int stage_bytes) {
  const int n = (kSharedBytes - resident_bytes) / stage_bytes;
  return n > kMaxStages ? kMaxStages : n;
}

// Query tile of the dK/dV kernel and key tile of the dQ kernel: the widest that keeps the
// accumulators (header comment) within the consumers' registers.
template <int DK, int DV>
constexpr int dkdv_query_tile() {
  return 32 * chunks(DK) + DV / 2 > 96 ? 32 : 64;
}
template <int DK, int DV>
constexpr int dq_key_tile() {
  return 64;
}

// Descriptors: a K-major 16-wide k step `kk` of a tile of `rows` rows stored as 64-column boxes;
// an MN-major 16-row k step of a tile of `rows` reduction rows (boxes of rows x 128 bytes).
__device__ __forceinline__ std::uint64_t k_major(std::uint32_t tile, int rows, int kk) {
  return sm90::smem_descriptor_k_major_sw128(tile + (kk >> 2) * rows * 128 + (kk & 3) * 32);
}
__device__ __forceinline__ std::uint64_t mn_major(std::uint32_t tile, int rows, int kk) {
  return sm90::smem_descriptor_mn_major_sw128(tile + kk * 16 * 128, rows * 128);
}

// Packs a 64 x N accumulator (N = 16 K steps) into wgmma's register A operand, 16 columns a step.
template <class T, int N>
__device__ __forceinline__ void pack_a(unsigned (&a)[N / 16][4], const float (&d)[N / 2]) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x) a[kk][x] = sm80::pack2<T>(d[8 * kk + 2 * x], d[8 * kk + 2 * x + 1]);
}

// P = 2^(S·scale·log2 e − lse) for a thread's elements of a 64 x N score tile, 0 where the column is
// not visible (MASKED: instantiated apart, so that the compiler does not if-convert the mask into
// every tile). lse(i): the base-2 logsumexp of element i's query.
template <bool MASKED, int N, class Lse>
__device__ __forceinline__ void probabilities(float (&p)[N / 2], const float (&sc)[N / 2], float scale_log2,
                                              const RowBounds& bounds, Lse lse) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float e = exp2_approx(sc[i] * scale_log2 - lse(i));
    p[i] = (!MASKED || bounds.visible(i)) ? e : 0.f;
  }
}

// X = A1·B1ᵀ (a reduction over DK) and Y = A2·B2ᵀ (over DV), m64n{N}k16 with every operand K-major
// in shared memory: the A tiles of kBlock rows (a warpgroup's 64 of them at a1, a2), the B tiles of N
// rows. Two commit groups, so that the caller can wait for X alone.
template <int N, int DK, int DV>
__device__ __forceinline__ void issue_score_products(float (&x)[N / 2], float (&y)[N / 2], std::uint32_t a1,
                                                     std::uint32_t b1, std::uint32_t a2, std::uint32_t b2) {
  sm90::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) WgmmaBf16<N>::ss(x, k_major(a1, kBlock, kk), k_major(b1, N, kk), kk > 0);
  sm90::wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < DV / 16; ++kk) WgmmaBf16<N>::ss(y, k_major(a2, kBlock, kk), k_major(b2, N, kk), kk > 0);
  sm90::wgmma_commit();
}

template <int DK, int DV>
struct DkdvLayout {
  static constexpr int BQ = dkdv_query_tile<DK, DV>();
  static constexpr int k_bytes = chunks(DK) * kBlock * 128;  // the block's keys
  static constexpr int v_bytes = chunks(DV) * kBlock * 128;
  static constexpr int q_bytes = chunks(DK) * BQ * 128;  // a stage's Q tile
  static constexpr int g_bytes = chunks(DV) * BQ * 128;  // a stage's dout tile
  static constexpr int stages = stages_for(k_bytes + v_bytes, q_bytes + g_bytes + 2 * BQ * 4);
  static constexpr int v_offset = k_bytes;
  static constexpr int q_offset = v_offset + v_bytes;
  static constexpr int g_offset = q_offset + stages * q_bytes;
  static constexpr int stats_offset = g_offset + stages * g_bytes;  // per stage: lse·log2 e [BQ], D [BQ]
  // K and V's full and empty, full[] and empty[]; then the index of the tile whose K and V the
  // block holds (written by the producer, read by the consumers)
  static constexpr int barrier_offset = stats_offset + stages * 2 * BQ * 4;
  static constexpr int tile_offset = barrier_offset + (2 + 2 * stages) * 8;
  static constexpr std::size_t bytes = 1024 + tile_offset + 8;  // + alignment slack
  static_assert(stages >= 3, "the one-tile software pipeline wants a stage to load ahead");
};

// A work tile of the persistent dK/dV grid: 128 keys of one (batch row, kv head), numbered in the
// order the former grid (key blocks, kv heads, batch) started its blocks: the first key block, which
// the most queries see, first within each kv head.
struct DkdvTile {
  std::int64_t k0;      // first key
  std::int64_t kv_row;  // (b·Hkv + kvh)·S: the kv head's first row (of its keys' slice)
  std::int64_t q_row;   // (b·H + kvh·group)·S: the first row of lse and D of its group's first query head
  int b, kvh;           // batch row and kv head (the coordinates of q, k, v and dout's tensor maps)
};
__device__ __forceinline__ DkdvTile dkdv_tile(int tile, int key_blocks, const AttentionShapeArgs& s) {
  const int x = tile % key_blocks, slice = tile / key_blocks;  // slice = b·Hkv + kvh
  const std::int64_t kv_row = static_cast<std::int64_t>(slice) * s.seq;
  const int b = slice / s.kv_heads;
  return {static_cast<std::int64_t>(x) * kBlock, kv_row, kv_row * (s.heads / s.kv_heads), b, slice - b * s.kv_heads};
}

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    attention_dkdv_hopper_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap g_map,
                                 const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map,
                                 const __grid_constant__ CUtensorMap q_rope_map,
                                 const __grid_constant__ CUtensorMap k_rope_map, const AttentionBackwardArgs a,
                                 int* tile_counter) {
  using L = DkdvLayout<DK, DV>;
  constexpr int BQ = L::BQ, KC = chunks(DK), VC = chunks(DV), NK = 64 * KC, kStages = L::stages;
  extern __shared__ __align__(16) unsigned char attention_bwd_smem[];
  const std::uint32_t raw = sm90::shared_address(attention_bwd_smem);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  float* const stats = reinterpret_cast<float*>(attention_bwd_smem + (base - raw) + L::stats_offset);
  volatile int* const tile_slot = reinterpret_cast<volatile int*>(attention_bwd_smem + (base - raw) + L::tile_offset);
  const std::uint32_t kv_full = base + L::barrier_offset, kv_empty = kv_full + 8, full_bar = kv_empty + 8;
  const std::uint32_t empty_bar = full_bar + 8 * kStages;

  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const int group = s.heads / s.kv_heads;
  const int key_blocks = static_cast<int>((S + kBlock - 1) / kBlock);
  const int tiles = key_blocks * s.kv_heads * static_cast<int>(s.batch);
  // The query tiles of BQ queries that see keys of the tile at k0 (queries k0 .. q_end - 1, with
  // q_end the end of the last key's sequence); a tile walks them for every query head of its group.
  const auto query_tiles = [&](std::int64_t k0) {
    const std::int64_t k_last = (k0 + kBlock < S ? k0 + kBlock : S) - 1;
    return (seq_end_of(s, k_last) - k0 + BQ - 1) / BQ;
  };

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&q_map);
    sm90::prefetch_tensor_map(&g_map);
    sm90::prefetch_tensor_map(&k_map);
    sm90::prefetch_tensor_map(&v_map);
    sm90::mbarrier_init(kv_full, 1);
    sm90::mbarrier_init(kv_empty, kConsumers * 4);  // one arrival per consumer warp
    for (int st = 0; st < kStages; ++st) {
      sm90::mbarrier_init(full_bar + 8 * st, 33);  // lane 0's expect-bytes, then every lane's stats
      sm90::mbarrier_init(empty_bar + 8 * st, kConsumers * 4);
    }
    sm90::mbarrier_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the producer's idle warps leave below

  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x >> 7));  // uniform: see warp_uniform
  if (warpgroup == 0) {
    // ---- producer: warp 0, taking tiles from the global counter (lane 0) ----
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x >= 32) return;
    const int lane = static_cast<int>(threadIdx.x);
    const int rope0 = hopper::rope_chunk0<DK>(a.rope);
    int stage = 0;
    std::uint32_t phase = 0, kv_phase = 0;
    int tile = lane == 0 ? atomicAdd(tile_counter, 1) : 0;
    for (;;) {
      tile = __shfl_sync(0xffffffffu, tile, 0);
      // The consumers have read the previous tile's index and finished with its K and V.
      sm90::mbarrier_wait(kv_empty, kv_phase ^ 1);
      if (lane == 0) *tile_slot = tile < tiles ? tile : -1;
      if (tile >= tiles) {
        if (lane == 0) sm90::mbarrier_arrive(kv_full);  // releases the -1: the consumers stop
        break;
      }
      const DkdvTile w = dkdv_tile(tile, key_blocks, s);
      const std::int64_t q_tiles = query_tiles(w.k0);
      const std::int64_t steps = q_tiles * group;  // step i: query head kvh·group + i / q_tiles, tile i mod q_tiles
      int next = 0;
      if (lane == 0) {
        // The maps are 4-D, (column, row, head, batch row): rows past S read as zero.
        const int k0 = static_cast<int>(w.k0);
        sm90::mbarrier_arrive_expect_bytes(kv_full, L::k_bytes + L::v_bytes);  // also releases the index
        hopper::load_head_chunks<KC>(base, kBlock * 128, &k_map, &k_rope_map, rope0, k0, w.kvh,
                                     hopper::rope_head(a.rope.k_layout, w.kvh), w.b, kv_full);
        for (int c = 0; c < VC; ++c)
          sm90::tma_load_4d(base + L::v_offset + c * kBlock * 128, &v_map, 64 * c, k0, w.kvh, w.b, kv_full);
        next = atomicAdd(tile_counter, 1);  // in flight while this tile's Q and dout load
      }
      for (std::int64_t step = 0; step < steps; ++step) {
        const std::int64_t qt0 = w.k0 + (step % q_tiles) * BQ;
        const int head_in_group = static_cast<int>(step / q_tiles);
        const std::int64_t head_row = w.q_row + head_in_group * S;  // of lse and D
        sm90::mbarrier_wait(empty_bar + 8 * stage, phase ^ 1);
        // The tiles' copies first: the loads of lse and D below take a global-memory latency that
        // the copies need not wait for.
        const std::uint32_t full = full_bar + 8 * stage;
        if (lane == 0) {
          const int row = static_cast<int>(qt0), h = w.kvh * group + head_in_group;
          sm90::mbarrier_arrive_expect_bytes(full, L::q_bytes + L::g_bytes);
          hopper::load_head_chunks<KC>(base + L::q_offset + stage * L::q_bytes, BQ * 128, &q_map, &q_rope_map, rope0,
                                       row, h, hopper::rope_head(a.rope.q_layout, h), w.b, full);
          for (int c = 0; c < VC; ++c)
            sm90::tma_load_4d(base + L::g_offset + stage * L::g_bytes + c * BQ * 128, &g_map, 64 * c, row, h, w.b,
                              full);
        }
        // lse (in the base-2 domain) and D of the tile's queries; 0 past S (those columns are masked).
        float* const st = stats + stage * 2 * BQ;
        for (int i = lane; i < BQ; i += 32) {
          const bool real = qt0 + i < S;
          st[i] = real ? a.lse[head_row + qt0 + i] * kLog2e : 0.f;
          st[BQ + i] = real ? a.delta[head_row + qt0 + i] : 0.f;
        }
        sm90::mbarrier_arrive(full);  // releases this lane's lse and D stores
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      tile = next;
      kv_phase ^= 1;
    }
    return;
  }

  // ---- consumers: 64 keys each ----
  sm90::claim_registers<kConsumerRegisters>();
  const int wg = warpgroup - 1;
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>((threadIdx.x >> 5) & 3);
  const int t = lane & 3;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  const std::uint32_t k_addr = base + wg * 64 * 128;  // this consumer's 64 rows of each box
  const std::uint32_t v_addr = base + L::v_offset + wg * 64 * 128;
  float dk[NK / 2], dv[DV / 2];  // after this, written by wgmma only (a tile's first product overwrites)
#pragma unroll
  for (int i = 0; i < NK / 2; ++i) dk[i] = 0.f;
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) dv[i] = 0.f;
  const auto release = [&](std::uint32_t empty) {  // this warp is done reading the stage
    __syncwarp();
    if (lane == 0) sm90::mbarrier_arrive(empty);
  };
  const sm90::PingPong turns{a.pingpong, wg};  // as in the forward: every issue below is one turn
  turns.start();
  int stage = 0, previous = 0;  // Q and dout stages run on from tile to tile, as the producer's do
  std::uint32_t phase = 0, kv_phase = 0;
  for (;;) {
    sm90::mbarrier_wait(kv_full, kv_phase);
    const int tile = sm90::warp_uniform(*tile_slot);  // uniform: see warp_uniform
    if (tile < 0) break;
    // 32-bit step counts (q_tiles·group < H·S < 2^31) and only the tile's index kept: this
    // consumer's registers are full at (192, 128) (dK and dV take 160 of them).
    const std::int64_t k0 = static_cast<std::int64_t>(tile % key_blocks) * kBlock;
    const int q_tiles = static_cast<int>(query_tiles(k0)), steps = q_tiles * group;
    const std::int64_t warp_key0 = k0 + 64 * wg + 16 * warp;
    std::int64_t key[2], end[2], last_query[2];  // key[r] is seen by queries key[r] .. end[r] - 1
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      key[r] = warp_key0 + (lane >> 2) + 8 * r;
      end[r] = key[r] < S ? seq_end_of(s, key[r]) : 0;  // a key past S: every query masked
      last_query[r] = end[r] - 1;
    }
    const std::int64_t end_min = end[0] < end[1] ? end[0] : end[1];

    // Software-pipelined by one tile: an iteration issues the previous tile's dV and dK products
    // and then this tile's Sᵀ and dPᵀ, back to back, so that this warpgroup's tensor-core work has
    // no gap at the tile boundary; Pᵀ and dSᵀ (as 16-bit A registers) wait in registers for the
    // next iteration, and the previous tile's stage is released once its products have retired.
    // Every wgmma of an iteration is waited for within it: a wgmma still running across the loop's
    // back edge makes ptxas serialise every wgmma of the kernel (C7514, C7515), and so would an
    // ordinary instruction writing an accumulator while wgmma run (hence sc and dp, written by wgmma
    // only, and dk and dv zeroed by their first product's scale_d = 0 rather than by stores).
    unsigned pa[BQ / 16][4], da[BQ / 16][4];
    for (int step = 0; step < steps; ++step) {
      const std::int64_t qt0 = k0 + (step % q_tiles) * BQ;
      const std::uint32_t q_addr = base + L::q_offset + stage * L::q_bytes;
      const std::uint32_t g_addr = base + L::g_offset + stage * L::g_bytes;
      const float* const lse2 = stats + stage * 2 * BQ;
      const float* const delta = lse2 + BQ;
      sm90::mbarrier_wait(full_bar + 8 * stage, phase);
      turns.take_turn();
      if (step > 0) {
        const std::uint32_t pq_addr = base + L::q_offset + previous * L::q_bytes;
        const std::uint32_t pg_addr = base + L::g_offset + previous * L::g_bytes;
        sm90::wgmma_fence();
        // dV += Pᵀ·dout, dK += dSᵀ·Q
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk)
          WgmmaBf16<DV>::rs_mn(dv, pa[kk], mn_major(pg_addr, BQ, kk), kk > 0 || step > 1);  // step 1: the first
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk)
          WgmmaBf16<NK>::rs_mn(dk, da[kk], mn_major(pq_addr, BQ, kk), kk > 0 || step > 1);
        sm90::wgmma_commit();
      }
      float sc[BQ / 2], dp[BQ / 2];
      issue_score_products<BQ, DK, DV>(sc, dp, k_addr, q_addr, v_addr, g_addr);
      turns.pass_turn();
      sm90::wgmma_wait<1>();  // the previous tile's dV and dK, and Sᵀ
      sm90::fence_registers(sc);
      if (step > 0) release(empty_bar + 8 * previous);

      // Pᵀ while dPᵀ is in flight. Masking only where a query of the tile may precede a key of
      // this thread's rows or lie past the end of their sequence (or past S).
      float p[BQ / 2];
      const auto lse_of = [&](int i) { return lse2[8 * (i >> 2) + 2 * t + (i & 1)]; };
      if (qt0 < warp_key0 + 16 || qt0 + BQ > end_min)
        probabilities<true, BQ>(p, sc, scale_log2, row_bounds(key, last_query, qt0, t), lse_of);
      else
        probabilities<false, BQ>(p, sc, scale_log2, RowBounds{}, lse_of);
      pack_a<T, BQ>(pa, p);
      sm90::wgmma_wait<0>();  // dPᵀ
      sm90::fence_registers(dp);
      float ds[BQ / 2];
#pragma unroll
      for (int i = 0; i < BQ / 2; ++i) ds[i] = p[i] * (dp[i] - delta[8 * (i >> 2) + 2 * t + (i & 1)]);
      pack_a<T, BQ>(da, ds);
      previous = stage;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    // Every product that reads K and V is done: the producer may load the next tile's (and write
    // its index) while the last dV and dK products and the stores run.
    release(kv_empty);
    kv_phase ^= 1;
    {  // the last query tile's dV and dK (every tile has at least one query tile)
      const std::uint32_t pq_addr = base + L::q_offset + previous * L::q_bytes;
      const std::uint32_t pg_addr = base + L::g_offset + previous * L::g_bytes;
      turns.take_turn();
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk)
        WgmmaBf16<DV>::rs_mn(dv, pa[kk], mn_major(pg_addr, BQ, kk), kk > 0 || steps > 1);
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk)
        WgmmaBf16<NK>::rs_mn(dk, da[kk], mn_major(pq_addr, BQ, kk), kk > 0 || steps > 1);
      sm90::wgmma_commit();
      turns.pass_turn();
      sm90::wgmma_wait<0>();
      release(empty_bar + 8 * previous);  // the producer's ring runs on into the next tile
    }
    sm90::fence_registers(dv);
    sm90::fence_registers(dk);
    const DkdvTile w = dkdv_tile(tile, key_blocks, s);
    store_gradient_rows<T, NK>(dk_rows<T>(a, w.b, w.kvh), dk, warp_key0, S, DK, static_cast<float>(s.scale));
    store_gradient_rows<T, DV>(dv_rows<T>(a, w.b, w.kvh), dv, warp_key0, S, DV, 1.f);
  }
  turns.finish();
}

template <int DK, int DV>
struct DqLayout {
  static constexpr int BN = dq_key_tile<DK, DV>();
  static constexpr int q_bytes = chunks(DK) * kBlock * 128;  // the block's queries
  static constexpr int g_bytes = chunks(DV) * kBlock * 128;  // and their dout rows
  static constexpr int k_bytes = chunks(DK) * BN * 128;      // a stage's K tile
  static constexpr int v_bytes = chunks(DV) * BN * 128;      // a stage's V tile
  static constexpr int stages = stages_for(q_bytes + g_bytes, k_bytes + v_bytes);
  static constexpr int g_offset = q_bytes;
  static constexpr int k_offset = g_offset + g_bytes;
  static constexpr int v_offset = k_offset + stages * k_bytes;
  // Q and dout's full and empty, full[] and empty[]; then the index of the tile whose Q and dout
  // the block holds
  static constexpr int barrier_offset = v_offset + stages * v_bytes;
  static constexpr int tile_offset = barrier_offset + (2 + 2 * stages) * 8;
  static constexpr std::size_t bytes = 1024 + tile_offset + 8;
  static_assert(stages >= 3, "the one-tile software pipeline wants a stage to load ahead");
};

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    attention_dq_hopper_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap g_map,
                               const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map,
                               const __grid_constant__ CUtensorMap q_rope_map,
                               const __grid_constant__ CUtensorMap k_rope_map, const AttentionBackwardArgs a,
                               int* tile_counter) {
  using L = DqLayout<DK, DV>;
  constexpr int BN = L::BN, KC = chunks(DK), VC = chunks(DV), NK = 64 * KC, kStages = L::stages;
  extern __shared__ __align__(16) unsigned char attention_bwd_smem[];
  const std::uint32_t raw = sm90::shared_address(attention_bwd_smem);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  volatile int* const tile_slot = reinterpret_cast<volatile int*>(attention_bwd_smem + (base - raw) + L::tile_offset);
  const std::uint32_t q_full = base + L::barrier_offset, q_empty = q_full + 8, full_bar = q_empty + 8;
  const std::uint32_t empty_bar = full_bar + 8 * kStages;

  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const int query_blocks = static_cast<int>((S + kBlock - 1) / kBlock);
  const int tiles = query_blocks * s.heads * static_cast<int>(s.batch);

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&q_map);
    sm90::prefetch_tensor_map(&g_map);
    sm90::prefetch_tensor_map(&k_map);
    sm90::prefetch_tensor_map(&v_map);
    sm90::mbarrier_init(q_full, 1);
    sm90::mbarrier_init(q_empty, kConsumers * 4);  // one arrival per consumer warp
    for (int st = 0; st < kStages; ++st) {
      sm90::mbarrier_init(full_bar + 8 * st, 1);
      sm90::mbarrier_init(empty_bar + 8 * st, kConsumers * 4);
    }
    sm90::mbarrier_init_fence();
  }
  __syncthreads();

  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x >> 7));  // uniform: see warp_uniform
  if (warpgroup == 0) {
    // ---- producer: one thread, taking tiles (the forward's, in its order) from the global counter ----
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    const int rope0 = hopper::rope_chunk0<DK>(a.rope);
    int stage = 0;
    std::uint32_t phase = 0, q_phase = 0;
    int tile = atomicAdd(tile_counter, 1);
    for (;;) {
      sm90::mbarrier_wait(q_empty, q_phase ^ 1);  // the consumers are done with the previous tile's Q, dout
      *tile_slot = tile < tiles ? tile : -1;
      if (tile >= tiles) {
        sm90::mbarrier_arrive(q_full);  // releases the -1: the consumers stop
        break;
      }
      const hopper::ForwardTile w = hopper::forward_tile(tile, query_blocks, s);
      const KeyTiles keys = key_tiles(s, w.q0, kBlock, BN);
      // The maps are 4-D, (column, row, head, batch row): rows past S read as zero.
      const int q0 = static_cast<int>(w.q0);
      sm90::mbarrier_arrive_expect_bytes(q_full, L::q_bytes + L::g_bytes);  // also releases the index
      hopper::load_head_chunks<KC>(base, kBlock * 128, &q_map, &q_rope_map, rope0, q0, w.h,
                                   hopper::rope_head(a.rope.q_layout, w.h), w.b, q_full);
      for (int c = 0; c < VC; ++c)
        sm90::tma_load_4d(base + L::g_offset + c * kBlock * 128, &g_map, 64 * c, q0, w.h, w.b, q_full);
      const int next = atomicAdd(tile_counter, 1);  // in flight while this tile's K and V load
      for (std::int64_t n0 = keys.first; n0 <= keys.last; n0 += BN) {
        sm90::mbarrier_wait(empty_bar + 8 * stage, phase ^ 1);
        const std::uint32_t full = full_bar + 8 * stage;
        sm90::mbarrier_arrive_expect_bytes(full, L::k_bytes + L::v_bytes);
        hopper::load_head_chunks<KC>(base + L::k_offset + stage * L::k_bytes, BN * 128, &k_map, &k_rope_map, rope0,
                                     static_cast<int>(n0), w.kvh, hopper::rope_head(a.rope.k_layout, w.kvh), w.b,
                                     full);
        for (int c = 0; c < VC; ++c)
          sm90::tma_load_4d(base + L::v_offset + stage * L::v_bytes + c * BN * 128, &v_map, 64 * c,
                            static_cast<int>(n0), w.kvh, w.b, full);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      tile = next;
      q_phase ^= 1;
    }
    return;
  }

  // ---- consumers: 64 queries each ----
  sm90::claim_registers<kConsumerRegisters>();
  const int wg = warpgroup - 1;
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>((threadIdx.x >> 5) & 3);
  const int t = lane & 3;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  const std::uint32_t q_addr = base + wg * 64 * 128;
  const std::uint32_t g_addr = base + L::g_offset + wg * 64 * 128;
  float dq[NK / 2];  // after this, written by wgmma only (a tile's first product overwrites)
#pragma unroll
  for (int i = 0; i < NK / 2; ++i) dq[i] = 0.f;
  const auto release = [&](std::uint32_t empty) {  // this warp is done reading the stage
    __syncwarp();
    if (lane == 0) sm90::mbarrier_arrive(empty);
  };
  const sm90::PingPong turns{a.pingpong, wg};
  turns.start();
  int stage = 0, previous = 0;  // K and V stages run on from tile to tile, as the producer's do
  std::uint32_t phase = 0, q_phase = 0;
  for (;;) {
    sm90::mbarrier_wait(q_full, q_phase);
    const int tile = sm90::warp_uniform(*tile_slot);  // uniform: see warp_uniform
    if (tile < 0) break;
    const hopper::ForwardTile w = hopper::forward_tile(tile, query_blocks, s);
    const KeyTiles keys = key_tiles(s, w.q0, kBlock, BN);
    const std::int64_t t_first = keys.first, t_last = keys.last, last_begin = keys.last_begin;
    const std::int64_t warp_row0 = w.q0 + 64 * wg + 16 * warp;
    std::int64_t row[2], begin[2];
    float lse2[2], delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row[r] = warp_row0 + (lane >> 2) + 8 * r;
      const bool real = row[r] < S;
      begin[r] = real ? seq_begin_of(s, row[r]) : 0;
      lse2[r] = real ? a.lse[w.head_row + row[r]] * kLog2e : 0.f;
      delta[r] = real ? a.delta[w.head_row + row[r]] : 0.f;
    }

    // Software-pipelined as the dK/dV kernel: an iteration issues the previous tile's dQ product
    // (dS waiting in registers; the tile's first overwrites dq, scale_d = 0) and then this tile's S
    // and dP.
    unsigned da[BN / 16][4];
    for (std::int64_t n0 = t_first; n0 <= t_last; n0 += BN) {
      const std::uint32_t k_addr = base + L::k_offset + stage * L::k_bytes;
      const std::uint32_t v_addr = base + L::v_offset + stage * L::v_bytes;
      sm90::mbarrier_wait(full_bar + 8 * stage, phase);
      turns.take_turn();
      if (n0 > t_first) {
        const std::uint32_t pk_addr = base + L::k_offset + previous * L::k_bytes;
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          WgmmaBf16<NK>::rs_mn(dq, da[kk], mn_major(pk_addr, BN, kk), kk > 0 || n0 > t_first + BN);  // dQ += dS·K
        }
        sm90::wgmma_commit();
      }
      float sc[BN / 2], dp[BN / 2];  // written by wgmma only (as in the dK/dV kernel)
      issue_score_products<BN, DK, DV>(sc, dp, q_addr, k_addr, g_addr, v_addr);
      turns.pass_turn();
      sm90::wgmma_wait<1>();  // the previous tile's dQ, and S
      sm90::fence_registers(sc);
      if (n0 > t_first) release(empty_bar + 8 * previous);

      float p[BN / 2];
      const auto lse_of = [&](int i) { return lse2[(i >> 1) & 1]; };
      if (n0 + BN > warp_row0 || n0 < last_begin)
        probabilities<true, BN>(p, sc, scale_log2, row_bounds(begin, row, n0, t), lse_of);
      else
        probabilities<false, BN>(p, sc, scale_log2, RowBounds{}, lse_of);
      sm90::wgmma_wait<0>();  // dP
      sm90::fence_registers(dp);
      float ds[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) ds[i] = p[i] * (dp[i] - delta[(i >> 1) & 1]);
      pack_a<T, BN>(da, ds);
      previous = stage;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    // Every product that reads Q and dout is done: the producer may load the next tile's (and
    // write its index) while the last dQ product and the stores run.
    release(q_empty);
    q_phase ^= 1;
    {  // the last key tile's dQ (every tile has at least one key tile)
      const std::uint32_t pk_addr = base + L::k_offset + previous * L::k_bytes;
      turns.take_turn();
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
        WgmmaBf16<NK>::rs_mn(dq, da[kk], mn_major(pk_addr, BN, kk), kk > 0 || t_last > t_first);
      sm90::wgmma_commit();
      turns.pass_turn();
      sm90::wgmma_wait<0>();
      release(empty_bar + 8 * previous);  // the producer's ring runs on into the next tile
    }
    sm90::fence_registers(dq);
    store_gradient_rows<T, NK>(dq_rows<T>(a, w.b, w.h), dq, warp_row0, S, DK, static_cast<float>(s.scale));
  }
  turns.finish();
}

// ---- host side ------------------------------------------------------------------------------------

// The dK/dV and the dQ kernel (attention.cuh's launcher has run the delta kernel and checked
// attention_hopper_backward_supports, the device and that every row index fits in int).
template <class T, int DK, int DV>
void launch_backward(const AttentionBackwardArgs& a) {
  const AttentionShapeArgs& s = a.shape;
  // q, dout [B, H, S, d] and k, v [B, Hkv, S, d] in their layouts (resolved by the launcher).
  const int main_dk = DK - a.rope.dim;  // q's and k's own columns (all DK without parts)
  const auto q_map = [&](int box_rows) {
    return hopper::make_head_map(a.q, a.q_layout, s.batch, s.heads, s.seq, main_dk, box_rows);
  };
  const auto g_map = [&](int box_rows) {
    return hopper::make_head_map(a.dout, a.dout_layout, s.batch, s.heads, s.seq, DV, box_rows);
  };
  const auto k_map = [&](int box_rows) {
    return hopper::make_head_map(a.k, a.k_layout, s.batch, s.kv_heads, s.seq, main_dk, box_rows);
  };
  // MLA's rotary parts (unused without them: the main maps stand in).
  const auto q_rope_map = [&](int box_rows) {
    return a.rope.dim > 0
               ? hopper::make_rope_map(a.rope.q_rope, a.rope.q_layout, s.batch, s.heads, s.seq, a.rope.dim, box_rows)
               : q_map(box_rows);
  };
  const auto k_rope_map = [&](int box_rows) {
    return a.rope.dim > 0
               ? hopper::make_rope_map(a.rope.k_rope, a.rope.k_layout, s.batch, s.kv_heads, s.seq, a.rope.dim, box_rows)
               : k_map(box_rows);
  };
  const auto v_map = [&](int box_rows) {
    return hopper::make_head_map(a.v, a.v_layout, s.batch, s.kv_heads, s.seq, DV, box_rows);
  };
  const std::int64_t blocks_a_row = (s.seq + kBlock - 1) / kBlock;
  // Persistent grids (one block a multiprocessor: their shared memory allows no second), each
  // taking tiles from its own counter, both zeroed on the stream first.
  Tensor<std::int32_t> tile_counters({2}, Device::cuda(a.launch.device));
  KILN_CUDA_CHECK(cudaMemsetAsync(tile_counters.data(), 0, 2 * sizeof(std::int32_t), a.launch.stream));
  AttentionBackwardArgs args = a;
  args.pingpong = a.pingpong && hopper::pingpong_enabled();
  {
    using L = DkdvLayout<DK, DV>;
    const int blocks = hopper::grid_blocks(blocks_a_row * s.kv_heads * s.batch, a.launch.device);
    opt_in_shared_memory(attention_dkdv_hopper_kernel<T, DK, DV>, L::bytes, a.launch.device);
    attention_dkdv_hopper_kernel<T, DK, DV><<<blocks, kThreads, L::bytes, a.launch.stream>>>(
        q_map(L::BQ), g_map(L::BQ), k_map(kBlock), v_map(kBlock), q_rope_map(L::BQ), k_rope_map(kBlock), args,
        tile_counters.data());
    KILN_CUDA_CHECK_LAUNCH();
  }
  {
    using L = DqLayout<DK, DV>;
    const int blocks = hopper::grid_blocks(blocks_a_row * s.heads * s.batch, a.launch.device);
    opt_in_shared_memory(attention_dq_hopper_kernel<T, DK, DV>, L::bytes, a.launch.device);
    attention_dq_hopper_kernel<T, DK, DV><<<blocks, kThreads, L::bytes, a.launch.stream>>>(
        q_map(kBlock), g_map(kBlock), k_map(L::BN), v_map(L::BN), q_rope_map(kBlock), k_rope_map(L::BN), args,
        tile_counters.data() + 1);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace kiln::kernels::attention::hopper_backward
