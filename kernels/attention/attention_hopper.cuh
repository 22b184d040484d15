// Fused causal attention forward on Hopper (sm_90a), bf16: the function of attention.cuh's forward
// (same masks, same online softmax, same outputs out and lse), its two products on wgmma.
//
// Work split. A tile is 128 queries of one (batch row, head). The grid is persistent: one block of
// 3 warpgroups (384 threads) per multiprocessor, which takes tiles from a global counter until
// none is left (dynamic, as FlashAttention-3's causal scheduler: tiles differ in length by up to
// S/128 times, and a static share would leave some blocks several long ones). Warpgroup 0 is the
// producer (one thread takes the next tile, issues its TMA copies and hands the tile's index to
// the consumers in shared memory, under Q's full barrier; the others exit at once), warpgroups 1
// and 2 the consumers, each owning 64 query rows of the tile. The consumers release Q's buffer
// once a tile's last score product is done, so that the next tile's Q and first K and V tiles load
// while the last P·V and the stores of out and lse run. Against the grid of one block per tile it
// replaced (KILN_ATTENTION_PERSISTENT=off still launches that, for comparisons) the forward ran
// 1.00-1.02x in the same build (H100, 2026-12-06): a block's start and end cost less than the 3 µs
// a block estimated from the key-tile rates beforehand. The tile index must reach the consumers as
// a warp-uniform value (sm90::warp_uniform); read plainly from shared memory, it made every address
// derived from it a per-thread value and the backward up to 1.2x slower (docs/mla.md).
// Per 128-key tile a consumer computes
//   S = Q·Kᵀ   wgmma m64n128k16, A = its Q rows and B = the K tile, both from shared memory
//              (Dk/16 instructions, 64 x 128 float accumulators: 64 a thread);
//   softmax    on the accumulators, in the layout of mma.sync's C fragments (sm90/wgmma_bf16.cuh):
//              masks, base-2 online softmax (the function of the plain kernel);
//   O += P·V   wgmma m64n{Dv}k16 with A = P from registers (rounded to 16 bits, 8 instructions of
//              16 keys) and B = the V tile from shared memory, read MN-major (transposed by the
//              instruction: V's rows are keys, the reduction dimension).
// Intra-warpgroup pipelining (FlashAttention-3, Shah et al. 2024): a consumer issues S of tile n and
// then P·V of tile n - 1, waits for S alone, and runs tile n's softmax while P·V is in flight; O is
// rescaled by the new maximum only after P·V has retired. Every wgmma is waited for in the
// iteration that issues it (one carried across the loop's back edge makes ptxas serialise them).
// Ping-pong between the consumers (FlashAttention-3): they take turns issuing their products, on
// two hardware barriers, so that one's softmax runs under the other's products; left to the
// scheduler they wait for the same K tiles and reach their softmax together. Measured on an H100:
// forward 1.04-1.06x (KILN_ATTENTION_PINGPONG=off turns it off, for comparisons). Both
// compute every tile of the block, including the one wholly after the first consumer's rows (all
// masked): a branch around wgmma on the warpgroup index makes ptxas serialise every wgmma of the
// kernel (C7520, "divergent path").
//
// The softmax is what limits this kernel's issue rate, not the tensor cores: per element of S it
// takes 5 instructions where no mask is needed (scale, max, subtract, MUFU.EX2, sum). Tiles that
// need the mask (the diagonal, sequence starts) take a separately instantiated path with two
// 32-bit compares an element (key_tiles.cuh's RowBounds); before (as one predicated path with
// 64-bit compares, and exp2f's denormal range check) the kernel issued 1564 instructions a warp a
// tile, 2.1x as many, and ran 1.19-1.44x slower (docs/mla.md; with this file's pipelining).
//
// Pipeline. K and V tiles go through 2 stages each, with separate `full` mbarriers (the TMA bytes
// land) and `empty` ones (the 8 consumer warps are done reading: one arrival per warp after its
// wgmma wait): K of a tile is released as soon as its S is done, V one iteration later, after its
// P·V; one barrier pair for both would hold K's stage an iteration longer and keep the next K from
// loading ahead. Q through its own full/empty pair, once a tile; the K and V stages run on from
// tile to tile. Registers are rebalanced with setmaxnreg: 40 for the producer, 232 for the
// consumers.
//
// Layouts. wgmma reads operands in 128-byte-swizzled atoms (8 rows x 128 bytes, 1024 bytes;
// sm90/wgmma.cuh's descriptors): a tile of R rows x D elements is stored as D/64 column chunks of
// R rows x 64 elements (128 bytes a row), which is what TMA writes for a box of 64 x R with the
// 128-byte swizzle; each chunk is 1024-byte aligned. Q and K are read K-major (their rows run
// along the reduction), V MN-major (its rows are the reduction's keys): no transposed copy of V.
// Dk = 96 takes two chunks, the second half zero-filled by TMA (columns past Dk) and never read.
// The Q and K tensor maps span all heads as one [B·H·S, Dk] matrix: a tile that runs past a head's
// last row reads the next head's rows (keys there are masked to -inf before the exp, query rows
// there are never written) or zeros past the tensor's end. V's map is 3-D, [B·Hkv][S][Dv], so that
// a tile running past S reads zeros: those keys' P is 0, and 0 times another head's values could
// still be NaN where those values are not finite.
//
// Shared memory: Q 2 x ceil(Dk/64) x 8 KB, K 2 stages x ceil(Dk/64) x 16 KB, V 2 stages x
// ceil(Dv/64) x 16 KB: 208 KB at (192, 128), 128 KB at (96, 64).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kiln/core/environment.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/attention/args.hpp"
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

namespace kiln::kernels::attention::hopper {

constexpr int kWarpgroups = 2;                     // consumers
constexpr int kThreads = 128 * (kWarpgroups + 1);  // and the producer
constexpr int kRows = 64 * kWarpgroups;            // queries a block
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr int kKeys = 128;  // keys a tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int chunks(int d) { return (d + 63) / 64; }

template <int DK, int DV>
struct SmemLayout {
  static constexpr int q_bytes = chunks(DK) * 64 * 128;     // one consumer's Q rows
  static constexpr int k_bytes = chunks(DK) * kKeys * 128;  // one K tile
  static constexpr int v_bytes = chunks(DV) * kKeys * 128;  // one V tile
  static constexpr int k_offset = kWarpgroups * q_bytes;
  static constexpr int v_offset = k_offset + 2 * k_bytes;
  // Q's full and empty, then full and empty for K's two stages and for V's: 8 bytes each; then the
  // index of the tile whose Q the Q buffer holds (written by the producer, read by the consumers).
  static constexpr int barrier_offset = v_offset + 2 * v_bytes;
  static constexpr int tile_offset = barrier_offset + 10 * 8;
  static constexpr std::size_t bytes = 1024 + tile_offset + 8;  // + alignment slack
};

// A work tile of the persistent grid: 128 queries of one (batch row, head). Tiles are numbered in
// the order the non-persistent grid (query blocks, heads, batch) started its blocks, the query
// block with the most keys first within each head: blocks that run together then read the K and V
// of a few heads, which L2 holds (an order that spread them over many heads ran 2-13% slower;
// docs/mla.md).
struct ForwardTile {
  std::int64_t q0;        // first query
  std::int64_t head_row;  // (b·H + h)·S: the head's first row of lse
  int b, h, kvh;          // batch row, query head, its kv head h / group
};
__device__ __forceinline__ ForwardTile forward_tile(int tile, int query_blocks, const AttentionShapeArgs& s) {
  const int x = tile % query_blocks, slice = tile / query_blocks;  // slice = b·H + h
  const int b = slice / s.heads, h = slice - b * s.heads;
  return {static_cast<std::int64_t>(query_blocks - 1 - x) * kRows, static_cast<std::int64_t>(slice) * s.seq, b, h,
          h / (s.heads / s.kv_heads)};
}

// The TMA copies of one head's rows of q or k into KC chunks of 64 columns at dst, chunk_bytes
// apart: chunks before rope_chunk0 from `map` (at head `head`), the others from `rope_map` (MLA's
// rotary part, args.hpp AttentionRopeParts, at head `rope_head`: 0 for a key shared by all heads);
// rope_chunk0 = KC without parts. Coordinates (column, row, head, batch row) of make_head_map.
template <int KC>
__device__ __forceinline__ void load_head_chunks(std::uint32_t dst, int chunk_bytes, const CUtensorMap* map,
                                                 const CUtensorMap* rope_map, int rope_chunk0, int row, int head,
                                                 int rope_head, int b, std::uint32_t bar) {
  for (int c = 0; c < KC; ++c) {
    if (c < rope_chunk0) sm90::tma_load_4d(dst + c * chunk_bytes, map, 64 * c, row, head, b, bar);
    else sm90::tma_load_4d(dst + c * chunk_bytes, rope_map, 64 * (c - rope_chunk0), row, rope_head, b, bar);
  }
}

// The first chunk of 64 columns that comes from the rotary parts (KC without them), and the head
// coordinate in a rotary part's map (its head stride 0: one head, coordinate 0).
template <int DK>
__device__ __forceinline__ int rope_chunk0(const AttentionRopeParts& p) {
  return p.dim > 0 ? (DK - p.dim) / 64 : chunks(DK);
}
__device__ __forceinline__ int rope_head(const HeadLayout& l, int head) { return l.head == 0 ? 0 : head; }

// S = Q·Kᵀ for one 64 x kKeys tile: Dk/16 wgmma from shared memory, the first overwriting S
// (scale_d = 0: no zeroing of the accumulators between products).
template <int DK>
__device__ __forceinline__ void scores(float (&sc)[kKeys / 2], std::uint32_t q_addr, std::uint32_t k_addr) {
#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) {
    // Column chunk kk / 4 (64 elements), then 16 elements (32 bytes) into its 128-byte rows.
    const std::uint32_t chunk = kk >> 2, in_row = (kk & 3) * 32;
    sm90::WgmmaBf16<kKeys>::ss(sc, sm90::smem_descriptor_k_major_sw128(q_addr + chunk * 64 * 128 + in_row),
                                sm90::smem_descriptor_k_major_sw128(k_addr + chunk * kKeys * 128 + in_row), kk > 0);
  }
}

// O += P·V: kKeys/16 wgmma with A = P from registers and B = the V tile from shared memory, read
// MN-major: k step kk is keys 16 kk .. 16 kk + 15, two whole swizzle atoms into each chunk of 64
// value columns (chunks kKeys x 128 bytes apart).
template <int DV>
__device__ __forceinline__ void accumulate_pv(float (&o)[DV / 2], const unsigned (&pa)[kKeys / 16][4],
                                              std::uint32_t v_addr) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk)
    sm90::WgmmaBf16<DV>::rs_mn(o, pa[kk], sm90::smem_descriptor_mn_major_sw128(v_addr + kk * 16 * 128, kKeys * 128),
                               1);
}

// The softmax of the tile at n0, masked only where some row of the warpgroup (rows wg_row0 ..
// wg_row0 + 63) may not see some key of it: past the diagonal, or before the sequence start of the
// block's last row (packed sequences). The test is uniform over the warpgroup.
__device__ __forceinline__ void softmax_at(float (&sc)[kKeys / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                           const std::int64_t (&row)[2], const std::int64_t (&begin)[2], int t,
                                           std::int64_t n0, std::int64_t wg_row0, std::int64_t last_begin,
                                           float scale_log2) {
  if (n0 + kKeys > wg_row0 || n0 < last_begin) {
    softmax_update<true, kKeys>(sc, m, l, alpha, row_bounds(begin, row, n0, t), scale_log2);
  } else {
    softmax_update<false, kKeys>(sc, m, l, alpha, RowBounds{}, scale_log2);
  }
}

// P rounded to 16 bits in the A layout of all k steps at once: registers computed between two
// wgmma would make ptxas insert a warpgroup arrive before each (C7519).
template <class T>
__device__ __forceinline__ void to_a_operand(unsigned (&pa)[kKeys / 16][4], const float (&sc)[kKeys / 2]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x) pa[kk][x] = sm80::pack2<T>(sc[8 * kk + 2 * x], sc[8 * kk + 2 * x + 1]);
}

template <class T, int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    attention_forward_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                    const __grid_constant__ CUtensorMap k_map,
                                    const __grid_constant__ CUtensorMap v_map,
                                    const __grid_constant__ CUtensorMap q_rope_map,
                                    const __grid_constant__ CUtensorMap k_rope_map, const AttentionForwardArgs a,
                                    int* tile_counter) {
  using L = SmemLayout<DK, DV>;
  constexpr int KC = chunks(DK);
  extern __shared__ __align__(16) unsigned char attention_hopper_smem[];
  const std::uint32_t raw = sm90::shared_address(attention_hopper_smem);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  const std::uint32_t q_full = base + L::barrier_offset, q_empty = q_full + 8, full_k = q_empty + 8;
  const std::uint32_t empty_k = full_k + 16, full_v = empty_k + 16, empty_v = full_v + 16;
  volatile int* const tile_slot =
      reinterpret_cast<volatile int*>(attention_hopper_smem + (base - raw) + L::tile_offset);

  const AttentionShapeArgs& s = a.shape;
  const std::int64_t S = s.seq;
  const int query_blocks = static_cast<int>((S + kRows - 1) / kRows);
  const int tiles = query_blocks * s.heads * static_cast<int>(s.batch);

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&q_map);
    sm90::prefetch_tensor_map(&k_map);
    sm90::prefetch_tensor_map(&v_map);
    sm90::mbarrier_init(q_full, 1);
    sm90::mbarrier_init(q_empty, kWarpgroups * 4);  // one arrival per consumer warp
    for (int st = 0; st < 2; ++st) {
      sm90::mbarrier_init(full_k + 8 * st, 1);
      sm90::mbarrier_init(full_v + 8 * st, 1);
      sm90::mbarrier_init(empty_k + 8 * st, kWarpgroups * 4);
      sm90::mbarrier_init(empty_v + 8 * st, kWarpgroups * 4);
    }
    sm90::mbarrier_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the producer's idle threads leave below

  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x >> 7));  // uniform: see warp_uniform
  if (warpgroup == 0) {
    // ---- producer: takes tiles from the global counter until it runs past the last ----
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    const int rope0 = rope_chunk0<DK>(a.rope);
    int stage = 0;
    std::uint32_t phase = 0, q_phase = 0;
    int tile = atomicAdd(tile_counter, 1);
    for (;;) {
      // The consumers have read the previous tile's index and finished with its Q.
      sm90::mbarrier_wait(q_empty, q_phase ^ 1);
      *tile_slot = tile < tiles ? tile : -1;
      if (tile >= tiles) {
        sm90::mbarrier_arrive(q_full);  // releases the -1: the consumers stop
        break;
      }
      const ForwardTile w = forward_tile(tile, query_blocks, s);
      const KeyTiles keys = key_tiles(s, w.q0, kRows, kKeys);
      // The maps are 4-D, (column, row, head, batch row): a box never crosses a head, and rows past
      // S read as zero.
      const int q0 = static_cast<int>(w.q0);
      sm90::mbarrier_arrive_expect_bytes(q_full, kWarpgroups * L::q_bytes);  // also releases the index
      for (int wg = 0; wg < kWarpgroups; ++wg)
        load_head_chunks<KC>(base + wg * L::q_bytes, 64 * 128, &q_map, &q_rope_map, rope0, q0 + 64 * wg, w.h,
                             rope_head(a.rope.q_layout, w.h), w.b, q_full);
      const int next = atomicAdd(tile_counter, 1);  // in flight while this tile's K and V load
      for (std::int64_t n0 = keys.first; n0 <= keys.last; n0 += kKeys) {
        // K of tile i is freed when its scores are done, V one tile later (after its P·V, which
        // runs during the next tile's softmax): two barrier pairs, so that K of tile i + 2 loads
        // while V of tile i is still read.
        sm90::mbarrier_wait(empty_k + 8 * stage, phase ^ 1);
        sm90::mbarrier_arrive_expect_bytes(full_k + 8 * stage, L::k_bytes);
        load_head_chunks<KC>(base + L::k_offset + stage * L::k_bytes, kKeys * 128, &k_map, &k_rope_map, rope0,
                             static_cast<int>(n0), w.kvh, rope_head(a.rope.k_layout, w.kvh), w.b, full_k + 8 * stage);
        sm90::mbarrier_wait(empty_v + 8 * stage, phase ^ 1);
        sm90::mbarrier_arrive_expect_bytes(full_v + 8 * stage, L::v_bytes);
        for (int c = 0; c < chunks(DV); ++c)
          sm90::tma_load_4d(base + L::v_offset + stage * L::v_bytes + c * kKeys * 128, &v_map, 64 * c,
                            static_cast<int>(n0), w.kvh, w.b, full_v + 8 * stage);
        if (++stage == 2) {
          stage = 0;
          phase ^= 1;
        }
      }
      tile = next;
      q_phase ^= 1;
    }
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<kConsumerRegisters>();
  const int wg = warpgroup - 1;
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>((threadIdx.x >> 5) & 3);
  const int g = lane >> 2, t = lane & 3;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  float o[DV / 2], sc[kKeys / 2];
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) sc[i] = 0.f;  // overwritten (scale_d = 0); defined for the compiler
  unsigned pa[kKeys / 16][4];
  const std::uint32_t q_addr = base + wg * L::q_bytes;
  const auto k_addr = [&](int st) { return base + L::k_offset + st * L::k_bytes; };
  const auto v_addr = [&](int st) { return base + L::v_offset + st * L::v_bytes; };
  const auto release = [&](std::uint32_t empty, int st) {  // this warp is done reading the stage
    __syncwarp();
    if (lane == 0) sm90::mbarrier_arrive(empty + 8 * st);
  };

  // Ping-pong: a consumer issues a tile's products only after the other has issued its own, so
  // that one's softmax runs under the other's products (they wait for the same K tiles, which
  // would keep them in step). Every issue below is one turn; both consumers take the same turns,
  // tile after tile.
  const sm90::PingPong turns{a.pingpong, wg};
  turns.start();
  int stage = 0;  // the K and V stages run on from tile to tile, as the producer's do
  std::uint32_t phase = 0, q_phase = 0;
  for (;;) {
    sm90::mbarrier_wait(q_full, q_phase);
    const int tile = sm90::warp_uniform(*tile_slot);  // uniform: see warp_uniform
    if (tile < 0) break;
    const ForwardTile w = forward_tile(tile, query_blocks, s);
    const KeyTiles keys = key_tiles(s, w.q0, kRows, kKeys);
    const std::int64_t t_first = keys.first, t_last = keys.last, last_begin = keys.last_begin;
    const std::int64_t warp_row0 = w.q0 + 64 * wg + 16 * warp;
    const std::int64_t wg_row0 = w.q0 + 64 * wg;
    std::int64_t row[2], begin[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row[r] = warp_row0 + g + 8 * r;
      begin[r] = row[r] < S ? seq_begin_of(s, row[r]) : 0;
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
#pragma unroll
    for (int i = 0; i < DV / 2; ++i) o[i] = 0.f;

    // The first key tile: its scores and probabilities (O is still zero: nothing to rescale).
    sm90::mbarrier_wait(full_k + 8 * stage, phase);
    turns.take_turn();
    sm90::wgmma_fence();
    scores<DK>(sc, q_addr, k_addr(stage));
    sm90::wgmma_commit();
    turns.pass_turn();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(sc);
    release(empty_k, stage);
    softmax_at(sc, m, l, alpha, row, begin, t, t_first, wg_row0, last_begin, scale_log2);
    to_a_operand<T>(pa, sc);

    // Each later key tile overlaps its softmax with the previous tile's P·V (FlashAttention-3's
    // intra-warpgroup pipelining): issue S = Q·Kᵀ of tile n, then O += P·V of tile n - 1; wait for
    // S only; mask and exponentiate S while P·V runs; wait for P·V; rescale O by the new maximum (O
    // must not be touched while its product is in flight); pack the new P.
    for (std::int64_t n0 = t_first + kKeys; n0 <= t_last; n0 += kKeys) {
      const int prev = stage;
      const std::uint32_t prev_phase = phase;
      if (++stage == 2) {
        stage = 0;
        phase ^= 1;
      }
      sm90::mbarrier_wait(full_k + 8 * stage, phase);
      sm90::mbarrier_wait(full_v + 8 * prev, prev_phase);
      turns.take_turn();
      sm90::wgmma_fence();
      scores<DK>(sc, q_addr, k_addr(stage));
      sm90::wgmma_commit();
      accumulate_pv<DV>(o, pa, v_addr(prev));
      sm90::wgmma_commit();
      turns.pass_turn();
      sm90::wgmma_wait<1>();  // groups complete in order: S is done, P·V may still run
      sm90::fence_registers(sc);
      release(empty_k, stage);
      softmax_at(sc, m, l, alpha, row, begin, t, n0, wg_row0, last_begin, scale_log2);
      sm90::wgmma_wait<0>();
      sm90::fence_registers(o);
      release(empty_v, prev);
#pragma unroll
      for (int c = 0; c < DV / 8; ++c)
#pragma unroll
        for (int x = 0; x < 4; ++x) o[4 * c + x] *= alpha[x >> 1];
      to_a_operand<T>(pa, sc);
    }
    // Every score product of the tile is done: the producer may load the next tile's Q (and write
    // its index) while this tile's last P·V and stores run.
    release(q_empty, 0);

    // The last key tile's P·V.
    sm90::mbarrier_wait(full_v + 8 * stage, phase);
    turns.take_turn();
    sm90::wgmma_fence();
    accumulate_pv<DV>(o, pa, v_addr(stage));
    sm90::wgmma_commit();
    turns.pass_turn();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(o);
    release(empty_v, stage);
    if (++stage == 2) {  // the next tile's first key tile takes the next stage
      stage = 0;
      phase ^= 1;
    }
    q_phase ^= 1;

    const HeadLayout ol = a.out_layout;  // resolved by the launcher
    T* const out = static_cast<T*>(a.out) + w.b * ol.batch + w.h * ol.head;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      if (row[r] >= S) continue;
      const float inv = 1.f / l[r];
      unsigned* const dst = reinterpret_cast<unsigned*>(out + row[r] * ol.row + 2 * t);
#pragma unroll
      for (int c = 0; c < DV / 8; ++c) dst[c * 4] = sm80::pack2<T>(o[4 * c + 2 * r] * inv, o[4 * c + 2 * r + 1] * inv);
      if (t == 0) a.lse[w.head_row + row[r]] = (m[r] + log2f(l[r])) * kLn2;
    }
  }
  turns.finish();
}

// ---- host side ------------------------------------------------------------------------------------

// An operand [batch][heads][seq][d] of layout l (args.hpp: any strides, rows contiguous) read as
// boxes of 64 columns x box_rows rows of one head, with the 128-byte swizzle; rows past seq and
// columns past d read as zero. Coordinates (column, row, head, batch row).
inline CUtensorMap make_head_map(const void* data, HeadLayout l, std::int64_t batch, std::int64_t heads,
                                 std::int64_t seq, std::int64_t d, int box_rows) {
  // A size-1 dim's stride is 0 in the op's layouts (never used); the map gets a nonzero one, as
  // the driver may not take 0 for a stride.
  const auto bytes = [](std::int64_t elements) { return elements == 0 ? std::int64_t{16} : elements * 2; };
  const std::int64_t dims[4] = {d, seq, heads, batch}, strides[3] = {bytes(l.row), bytes(l.head), bytes(l.batch)};
  return sm90::tensor_map_bf16_sw128(data, 4, dims, strides, box_rows, "fused_causal_attention");
}

// A rotary part of q or k (AttentionRopeParts) as make_head_map reads it; with head stride 0 (one
// rotary key shared by all heads) the map has one head, which rope_head's coordinate 0 picks.
inline CUtensorMap make_rope_map(const void* data, HeadLayout l, std::int64_t batch, std::int64_t heads,
                                 std::int64_t seq, std::int64_t dim, int box_rows) {
  return make_head_map(data, l, batch, l.head == 0 ? 1 : heads, seq, dim, box_rows);
}

// KILN_ATTENTION_PINGPONG=off in the environment turns the consumers' ping-pong off in the Hopper
// forward and backward kernels (read once per process; for comparisons).
inline bool pingpong_enabled() {
  static const bool on = !environment_is("KILN_ATTENTION_PINGPONG", "off");
  return on;
}

// Blocks of a grid over `tiles` work tiles: one a multiprocessor (persistent; their shared memory
// allows no second), or, with KILN_ATTENTION_PERSISTENT=off in the environment (read once per
// process; for comparisons), one a tile as before 2026-12-06: each block then takes one tile from
// the counter and finds the next one past the last.
inline int grid_blocks(std::int64_t tiles, int device) {
  static const bool persistent = !environment_is("KILN_ATTENTION_PERSISTENT", "off");
  return static_cast<int>(persistent ? std::min<std::int64_t>(tiles, device_info(device).sms) : tiles);
}

// The kernel (the launcher in attention.cuh has checked supports(dk, dv), the device and that
// every row index fits in int).
template <class T, int DK, int DV>
void launch_forward(const AttentionForwardArgs& a) {
  const AttentionShapeArgs& s = a.shape;
  const int main_dk = DK - a.rope.dim;  // q's and k's own columns (all DK without parts)
  const CUtensorMap q_map = make_head_map(a.q, a.q_layout, s.batch, s.heads, s.seq, main_dk, 64);
  const CUtensorMap k_map = make_head_map(a.k, a.k_layout, s.batch, s.kv_heads, s.seq, main_dk, kKeys);
  const CUtensorMap v_map = make_head_map(a.v, a.v_layout, s.batch, s.kv_heads, s.seq, DV, kKeys);
  const CUtensorMap q_rope_map = a.rope.dim > 0 ? make_rope_map(a.rope.q_rope, a.rope.q_layout, s.batch, s.heads,
                                                                s.seq, a.rope.dim, 64)
                                                : q_map;  // unused
  const CUtensorMap k_rope_map = a.rope.dim > 0 ? make_rope_map(a.rope.k_rope, a.rope.k_layout, s.batch, s.kv_heads,
                                                                s.seq, a.rope.dim, kKeys)
                                                : k_map;  // unused
  const std::size_t smem = SmemLayout<DK, DV>::bytes;
  // Persistent: one block per multiprocessor (its shared memory allows no second), taking tiles
  // from a counter that starts at 0 on the stream (the caching allocator hands the int back in
  // stream order once the kernel has run).
  const std::int64_t tiles = (s.seq + kRows - 1) / kRows * s.heads * s.batch;
  const int blocks = grid_blocks(tiles, a.launch.device);
  Tensor<std::int32_t> tile_counter({1}, Device::cuda(a.launch.device));
  KILN_CUDA_CHECK(cudaMemsetAsync(tile_counter.data(), 0, sizeof(std::int32_t), a.launch.stream));
  opt_in_shared_memory(attention_forward_hopper_kernel<T, DK, DV>, smem, a.launch.device);
  AttentionForwardArgs args = a;
  args.pingpong = a.pingpong && pingpong_enabled();
  attention_forward_hopper_kernel<T, DK, DV>
      <<<blocks, kThreads, smem, a.launch.stream>>>(q_map, k_map, v_map, q_rope_map, k_rope_map, args,
                                                    tile_counter.data());
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels::attention::hopper
