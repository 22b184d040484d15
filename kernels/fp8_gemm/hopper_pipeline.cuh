// The pipeline of kiln's Hopper FP8 GEMMs, whatever their tile scheduler: the dense GEMM
// (gemm_hopper.cuh, tiles of one D) and the grouped GEMM (kernels/grouped_fp8_gemm/hopper.cuh, row
// tiles of G experts' products). Both are warp-specialised persistent kernels; this file holds the
// parts that do not depend on which tile a CTA works on:
//
//   SharedLayout      the CTA's shared memory: a ring of stages (A tile BM × 128 bytes, B tile
//                     BN × 128 bytes, their scales), each consumer warpgroup's output staging tile,
//                     the mbarriers, and room a scheduler may ask for (ExtraBytes).
//   fill_stage        the producer's work for one k-block: wait until the stage is free, announce
//                     its bytes on `full`, issue the TMA copies of A and B and the bulk copies of
//                     the scales (the caller says how B is addressed: a 2-D map for one matrix,
//                     a 3-D map [G][N][K] for stacked weights).
//   promoted_mainloop a consumer warpgroup's k-loop with DeepSeek-V3's promotion: each run of
//                     INTERVAL elements of K is summed by wgmma in a fresh FP32 register fragment
//                     (`part`), then added on CUDA cores as acc += part · a_scale(row) · b_scale.
//                     Hopper's FP8 tensor cores keep about 13-14 mantissa bits and truncate (the
//                     DeepSeek-V3 report, 3.3.2), so K is never summed there for long; promoting
//                     once per 128-element k-block makes the fine-grained scales free (one multiply
//                     per fragment element per k-block).
//   stage_fragment    the epilogue's first half: a consumer's 64 × BN fragment into its staging
//                     tile, as boxes of 64 rows × 128 bytes in the 128-byte swizzle (16-byte chunk
//                     index XOR row % 8), so that the fragment writes are free of bank conflicts and
//                     a TMA store, or 16-byte row reads, can take it out.
//   make_tensor_map   (host) the TMA map of an e4m3 operand, read as boxes of rows × 128 bytes.
//
// Hardware reasons: TMA needs 16-byte aligned global addresses and 128-byte swizzled destinations
// aligned to 1024 bytes (the layout's static_asserts); cp.async.bulk needs 16-byte aligned sources
// and sizes, which is why a scheduler whose tiles start at any row (grouped GEMM: a group starts
// at any offset) loads the A scales from the 4-float boundary below and reads them shifted
// (AScaleSlack = 4 more floats a stage); wgmma reads K-major e4m3 tiles through a descriptor whose
// address field advances 2 units (32 bytes) per k32 step.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kiln/core/environment.hpp"
#include "kiln/core/error.hpp"
#include "kiln/kernels/common/sm90/cluster.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/tma.cuh"
#include "kiln/kernels/common/sm90/warpgroup.cuh"
#include "kiln/kernels/common/sm90/wgmma.cuh"

namespace kiln::kernels::fp8_hopper {

constexpr int kBlockK = 128;  // bytes of one A or B row per k-block = the swizzle width = the scaling block
// Registers per thread after setmaxnreg: the block's 64K registers split between one producer
// warpgroup and two consumers (40 + 2 · 232 = 504 per lane of a warpgroup ≤ 512). (Three consumers
// of 64 × 128 would get 160 each, which spills: measured by ptxas, not used.)
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;

// Shared memory of one CTA: STAGES buffers of A and B tiles (each 1024-byte aligned for the
// swizzle), their scales (A: BM + AScaleSlack floats a stage; B: BN floats, or the block scale in
// the first), the output staging tile of each consumer warpgroup (64 × BN × 2 bytes, written in
// the 128-byte swizzle), the barriers, then ExtraBytes for the scheduler. STAGES is as many as
// fit, up to 8.
template <int BM, int BN, int ExtraBytes = 0, int AScaleSlack = 0>
struct SharedLayout {
  static constexpr int bm = BM, bn = BN;
  static constexpr int kLimit = 227 * 1024;  // opt-in dynamic shared memory per block on sm_90
  static constexpr int a_tile = BM * kBlockK;
  static constexpr int b_tile = BN * kBlockK;
  static constexpr int a_scale_stride = (BM + AScaleSlack) * 4;
  static constexpr int out_tile = 64 * BN * 2;  // per consumer warpgroup: 64 × BN bf16 (FP32 in two passes)
  static constexpr int out_bytes = (BM / 64) * out_tile;
  static constexpr int stage_bytes = a_tile + b_tile + a_scale_stride + BN * 4 + 16;
  static constexpr int room = kLimit - 1024 - out_bytes - ExtraBytes;
  static constexpr int stages = room / stage_bytes < 8 ? room / stage_bytes : 8;
  static constexpr int out_offset = 0;
  static constexpr int a_offset = out_offset + out_bytes;
  static constexpr int b_offset = a_offset + stages * a_tile;
  static constexpr int a_scale_offset = b_offset + stages * b_tile;
  static constexpr int b_scale_offset = a_scale_offset + stages * a_scale_stride;
  static constexpr int barrier_offset = b_scale_offset + stages * BN * 4;
  static constexpr int extra_offset = barrier_offset + 2 * stages * 8;
  static constexpr int bytes = extra_offset + ExtraBytes;
  static constexpr int bytes_with_alignment = bytes + 1024;  // the dynamic buffer is aligned by hand
  static_assert(a_tile % 1024 == 0 && b_tile % 1024 == 0 && out_tile % 1024 == 0, "tiles must keep 1024-byte alignment");
  static_assert(a_scale_stride % 16 == 0, "bulk copies of the A scales need 16-byte aligned destinations");
  static_assert(stages >= 3 && bytes_with_alignment <= kLimit, "shared memory budget");
};

// A position in the ring of stage buffers, and the parity of the barrier phase it is in.
struct Ring {
  int stage;
  std::uint32_t phase;
  __device__ void advance(int stages) {
    if (++stage == stages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// A consumer warp is done reading a stage: one arrival per warp on its `empty` barrier. In a
// cluster of CLUSTER CTAs whose producers multicast into each other's stages, lane r arrives on
// the barrier of rank r, so that each producer hears from the consumers of every CTA it writes into.
template <int CLUSTER = 1>
__device__ inline void release(std::uint32_t empty_bar, const Ring& ring, int lane) {
  __syncwarp();
  if constexpr (CLUSTER == 1) {
    if (lane == 0) sm90::mbarrier_arrive(empty_bar + 8 * ring.stage);
  } else {
    if (lane < CLUSTER) sm90::mbarrier_arrive_remote(empty_bar + 8 * ring.stage, static_cast<std::uint32_t>(lane));
  }
}

// What the producer copies into a stage for one k-block.
struct StageSource {
  int k;                        // first element of K of the k-block (kb · 128)
  int a_row;                    // first row of the A tile (TMA zero-fills rows past A)
  const float* a_scales;        // bulk-copy source of the A scales: 16-byte aligned
  std::uint32_t a_scale_bytes;  // a multiple of 16
  const float* b_scales;        // b_rowwise: bulk-copy source of BN B scales
  std::uint32_t b_scale_bytes;  // b_rowwise: a multiple of 16; else 0
  float b_block_scale;          // !b_rowwise: the 128×128 block's scale, stored into the stage
  bool b_rowwise;
};

// The producer thread fills ring.stage with one k-block and advances the ring. load_b(dst, full)
// issues the TMA copy of the B tile (BN rows × 128 bytes) into dst, completing on barrier `full`
// (in a cluster, this CTA's share of it, multicast: the peers' shares complete on the same barrier).
// The block scale is written by this thread before the arrival on `full` (release semantics), so
// consumers read it from shared memory after their wait instead of a global load per k-block.
// An A tile wholly past M (a cluster's spare CTA) has no scales to copy: a_scale_bytes 0.
template <class Layout, class LoadB>
__device__ inline void fill_stage(std::uint8_t* smem, std::uint32_t base, std::uint32_t full_bar, std::uint32_t empty_bar,
                                  Ring& ring, const CUtensorMap* a_map, const StageSource& s, LoadB&& load_b) {
  sm90::mbarrier_wait(empty_bar + 8 * ring.stage, ring.phase ^ 1);
  if (!s.b_rowwise) reinterpret_cast<float*>(smem + Layout::b_scale_offset)[ring.stage * Layout::bn] = s.b_block_scale;
  const std::uint32_t full = full_bar + 8 * ring.stage;
  sm90::mbarrier_arrive_expect_bytes(full, Layout::a_tile + Layout::b_tile + s.a_scale_bytes + s.b_scale_bytes);
  sm90::tma_load_2d(base + Layout::a_offset + ring.stage * Layout::a_tile, a_map, s.k, s.a_row, full);
  load_b(base + Layout::b_offset + ring.stage * Layout::b_tile, full);
  if (s.a_scale_bytes > 0)
    sm90::bulk_load(base + Layout::a_scale_offset + ring.stage * Layout::a_scale_stride, s.a_scales, s.a_scale_bytes,
                    full);
  if (s.b_rowwise)
    sm90::bulk_load(base + Layout::b_scale_offset + ring.stage * Layout::bn * 4, s.b_scales, s.b_scale_bytes, full);
  ring.advance(Layout::stages);
}

// The producer's last act in a cluster: wait for the release of each stage's last fill (the ring's
// next STAGES positions, as fill_stage would), so that its CTA outlives the peers' arrivals on its
// `empty` barriers (kernels/common/sm90/cluster.cuh). Nothing to wait for outside a cluster.
template <class Layout, int CLUSTER>
__device__ inline void await_last_releases(std::uint32_t empty_bar, Ring ring) {
  if constexpr (CLUSTER > 1) {
    for (int s = 0; s < Layout::stages; ++s) {
      sm90::mbarrier_wait(empty_bar + 8 * ring.stage, ring.phase ^ 1);
      ring.advance(Layout::stages);
    }
  }
}

// One consumer warpgroup's k-loop over num_kb ≥ 1 k-blocks with promotion every INTERVAL (32, 64 or
// 128) elements of K: acc (this thread's 64 × BN fragment, zeroed by the caller) += Σ part · a_scale
// · b_scale. scale_row: this thread's first row (of row, row + 8) in the stage's A-scale run (the
// tile row plus the run's shift, see AScaleSlack); col_in_chunk: its first column in each 8-column
// chunk of the fragment.
//
// Groups of INTERVAL / 32 wgmmas, numbered g = 0 .. groups-1 over the k-blocks. With a second
// partial accumulator (BN ≤ 64: 3 · BN/2 registers of fragments fit), group g is issued into one
// while group g-1, in the other, finishes and is promoted (wait_group<1> leaves exactly the newest
// group in flight). At BN = 128 that does not fit beside the rest (ptxas spills, and then
// serialises the wgmmas), so those tiles wait for each group before promoting, and the other
// consumer warpgroup has to keep the tensor cores busy meanwhile. (Splitting the 128 columns into
// two 64-column halves with a partial accumulator each fits the registers, but ptxas serialises
// every wgmma of that loop (C7514): measured 642 against 955 TFLOP/s, so it is not used.)
//
// Turns (`turns`, sm90::PingPong over the two consumer warpgroups; off for one): each group's
// wgmmas are issued in a turn, so the tensor cores receive warpgroup 0's group g, then warpgroup
// 1's group g, then 0's group g + 1, ... . Left to themselves the two warpgroups can drift into
// step: issue at the same time, finish together and both promote while the tensor cores idle. In
// turns, a warpgroup's promotion (64 × BN FMAs, a quarter of the time its four wgmmas take at
// BN = 128) runs while the other's wgmmas execute. Measured on an H100: 1-4% faster at M = 4096,
// the same at M <= 128 (docs/fp8-gemm.md), so drifting into step was not the main cost. The order
// of every warpgroup's own sums is unchanged: the same bits either way (KILN_FP8_PINGPONG=off).
//
// RowwiseB: B's scales per column (1×128 tiles) or one per 128×128 block, a compile-time choice: with
// a runtime flag ptxas merged the two promotion loops into one over per-element scales, so the
// block-scaled loop first copied its two scales into 62 registers (62 moves a k-block, SASS).
//
// CLUSTER: the CTAs whose producers multicast into this CTA's stages (release).
template <class Layout, int INTERVAL, bool RowwiseB, int CLUSTER = 1>
__device__ __forceinline__ void promoted_mainloop(float (&acc)[Layout::bn / 2], int num_kb, const std::uint8_t* smem,
                                                  std::uint32_t base, std::uint32_t full_bar, std::uint32_t empty_bar,
                                                  Ring& wait_ring, Ring& release_ring, int consumer, int scale_row,
                                                  int col_in_chunk, int lane, const sm90::PingPong& turns) {
  constexpr int BN = Layout::bn;
  constexpr int STAGES = Layout::stages;
  constexpr int kFragment = BN / 2;
  constexpr int kStepsPerGroup = INTERVAL / 32;        // wgmma k32 steps summed in the tensor cores per promotion
  constexpr int kGroupsPerBlock = kBlockK / INTERVAL;  // promotions per k-block
  constexpr bool kOverlapPromotion = BN <= 64;
  float part_even[kFragment], part_odd[kFragment];
#pragma unroll
  for (int i = 0; i < kFragment; ++i) part_even[i] = part_odd[i] = 0.f;
  const int groups = num_kb * kGroupsPerBlock;
  const auto issue = [&](int g, float(&part)[kFragment]) {
    const int j = g % kGroupsPerBlock;
    if (j == 0) sm90::mbarrier_wait(full_bar + 8 * wait_ring.stage, wait_ring.phase);
    const std::uint32_t a_tile = base + Layout::a_offset + wait_ring.stage * Layout::a_tile + consumer * 64 * kBlockK;
    const std::uint32_t b_tile = base + Layout::b_offset + wait_ring.stage * Layout::b_tile;
    const std::uint64_t a_desc = sm90::smem_descriptor_k_major_sw128(a_tile);
    const std::uint64_t b_desc = sm90::smem_descriptor_k_major_sw128(b_tile);
    sm90::fence_registers(part);
    turns.take_turn();
    sm90::wgmma_fence();
#pragma unroll
    for (int s = 0; s < kStepsPerGroup; ++s) {
      const int ks = j * kStepsPerGroup + s;  // 32 bytes along K = 2 units of the descriptor's address field
      sm90::WgmmaE4m3<BN>::mma(part, a_desc + 2 * ks, b_desc + 2 * ks, s > 0);
    }
    sm90::wgmma_commit();
    turns.pass_turn();
    if (j == kGroupsPerBlock - 1) wait_ring.advance(STAGES);
  };
  // acc += part · a_scale(row) · b_scale, with group g's k-block scales, then frees the stage after
  // the k-block's last group.
  const auto promote = [&](int g, float(&part)[kFragment]) {
    sm90::fence_registers(part);
    const float* a_scales =
        reinterpret_cast<const float*>(smem + Layout::a_scale_offset + release_ring.stage * Layout::a_scale_stride);
    const float* b_scales = reinterpret_cast<const float*>(smem + Layout::b_scale_offset + release_ring.stage * BN * 4);
    const float sa0 = a_scales[scale_row], sa1 = a_scales[scale_row + 8];
    if constexpr (RowwiseB) {
#pragma unroll
      for (int c = 0; c < BN / 8; ++c) {
        const float sb0 = b_scales[8 * c + col_in_chunk], sb1 = b_scales[8 * c + col_in_chunk + 1];
        acc[4 * c + 0] += part[4 * c + 0] * (sa0 * sb0);
        acc[4 * c + 1] += part[4 * c + 1] * (sa0 * sb1);
        acc[4 * c + 2] += part[4 * c + 2] * (sa1 * sb0);
        acc[4 * c + 3] += part[4 * c + 3] * (sa1 * sb1);
      }
    } else {
      const float sb = b_scales[0];  // the block scale the producer stored
      const float s0 = sa0 * sb, s1 = sa1 * sb;
#pragma unroll
      for (int c = 0; c < BN / 8; ++c) {
        acc[4 * c + 0] += part[4 * c + 0] * s0;
        acc[4 * c + 1] += part[4 * c + 1] * s0;
        acc[4 * c + 2] += part[4 * c + 2] * s1;
        acc[4 * c + 3] += part[4 * c + 3] * s1;
      }
    }
    if (g % kGroupsPerBlock == kGroupsPerBlock - 1) {
      release<CLUSTER>(empty_bar, release_ring, lane);
      release_ring.advance(STAGES);
    }
  };
  if constexpr (!kOverlapPromotion) {
    for (int g = 0; g < groups; ++g) {
      issue(g, part_even);
      sm90::wgmma_wait<0>();
      promote(g, part_even);
    }
  } else {
    issue(0, part_even);
    int g = 1;
    for (; g + 1 < groups; g += 2) {
      issue(g, part_odd);
      sm90::wgmma_wait<1>();
      promote(g - 1, part_even);
      issue(g + 1, part_even);
      sm90::wgmma_wait<1>();
      promote(g, part_odd);
    }
    if (g < groups) {  // an even number of groups: one left to issue
      issue(g, part_odd);
      sm90::wgmma_wait<1>();
      promote(g - 1, part_even);
      sm90::wgmma_wait<0>();
      promote(g, part_odd);
    } else {
      sm90::wgmma_wait<0>();
      promote(g - 1, part_even);
    }
  }
}

// The epilogue's staging: this thread's fragment values of pass `pass` (columns [pass · BN/passes,
// (pass + 1) · BN/passes) of the 64 × BN tile; passes = 2 for FP32 outputs, whose 64 × BN values
// take twice the bytes of the staging tile) into out_tile (shared memory, a consumer's 64 × BN × 2
// bytes), as boxes of 64 rows × 128 bytes in the 128-byte swizzle. row_local: the thread's first row
// (of row, row + 8) in the 64-row tile.
template <int BN>
__device__ __forceinline__ void stage_fragment(const float (&acc)[BN / 2], std::uint8_t* out_tile, int row_local,
                                               int col_in_chunk, int pass, bool fp32) {
  const int out_bytes = fp32 ? 4 : 2;
  const int box_cols = 128 / out_bytes;
  const int pass_cols = fp32 ? BN / 2 : BN;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row_local + 8 * h;
#pragma unroll
    for (int c = 0; c < BN / 8; ++c) {
      const int col = 8 * c + col_in_chunk;
      if (col / pass_cols != pass) continue;
      const int local = col - pass * pass_cols;
      const float v0 = acc[4 * c + 2 * h], v1 = acc[4 * c + 2 * h + 1];
      const int box = local / box_cols;
      const int byte_in_row = (local % box_cols) * out_bytes;
      const std::uint32_t offset =
          box * (64 * 128) + r * 128 + (((byte_in_row / 16) ^ (r % 8)) * 16) + byte_in_row % 16;
      std::uint8_t* dst = out_tile + offset;
      if (fp32) {
        *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(v0, v1);
      }
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

// Whether the two consumer warpgroups issue in turns (promoted_mainloop); KILN_FP8_PINGPONG=off in
// the environment, read at each launch (the tests switch it), lets them issue freely.
inline bool fp8_pingpong_enabled() { return !environment_is("KILN_FP8_PINGPONG", "off"); }

// Whether 128 × 128 tiles may run in 2-CTA clusters sharing their B tile by TMA multicast (the dense
// and grouped launchers say when they do): KILN_FP8_MULTICAST=on in the environment, read at each
// launch (the tests switch it). Opt-in until it has been measured on a GPU (docs/fp8-gemm.md).
inline bool fp8_multicast_enabled() { return environment_is("KILN_FP8_MULTICAST", "on"); }

// A row-major [rows, k] e4m3 matrix with row stride ld bytes, read as boxes of box_rows × 128 bytes
// with the 128-byte swizzle; out-of-range rows and columns read as zero.
inline CUtensorMap make_tensor_map(const std::uint8_t* data, std::int64_t rows, std::int64_t k, std::int64_t ld,
                                   int box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBlockK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = sm90::encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<std::uint8_t*>(data),
                                          dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "fp8_gemm", "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a [", rows,
        ", ", k, "] operand with row stride ", ld);
  return map;
}

}  // namespace kiln::kernels::fp8_hopper
