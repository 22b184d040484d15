// The grouped FP8 GEMM on Hopper (sm_90a): the G expert products of args.hpp (contiguous or masked
// rows, 1×128 activation scales, 128×128 weight-block scales) in one persistent, warp-specialised
// kernel. It is the dense FP8 kernel's pipeline (kernels/fp8_gemm/hopper_pipeline.cuh: TMA into a
// ring of stages, wgmma on e4m3 with promotion into FP32 every 128 of K, scales applied at the
// promotion) driven by the bf16 grouped GEMM's tile scheduler (kernels/grouped_gemm/
// tile_schedule.cuh: row tiles of each group, found on the device), with a masked epilogue.
//
// Work split. A unit is 128 rows of one group × 128 columns of N. Group g needs ceil(M_g / 128) row
// tiles; every CTA builds the prefix of the row-tile counts from the device index (offsets or
// counts; the host never reads it) in shared memory, and units go in bands of 8 row tiles × every
// column tile. The grid is one CTA per SM (persistent), sized on the host for the most units any
// split could give ((ceil(R/128) + G) · ceil(N/128) contiguous, G · ceil(M_max/128) · ceil(N/128)
// masked); a CTA with no unit left exits. Clusters (grouped_fp8_multicast: contiguous layouts
// whose groups average 1024 rows or more): a unit is two row tiles of one group (the prefix counts
// 256-row tiles), computed by the two CTAs of a cluster, each copying half of the group's weight
// tile into both (TMA multicast, as the dense kernel: kernels/fp8_gemm/gemm_hopper.cuh).
//
// Warp specialisation (384 threads). Warpgroup 0 is the producer (setmaxnreg down to 40): one
// thread issues, per k-block of 128, a TMA copy of the A tile (128 rows × 128 bytes from row0, the
// group's tile start: any row, TMA coordinates are elements), of the B tile from a 3-D tensor map
// [G][N][K] (box 128 bytes × 128 rows × 1 group: a load never crosses into the next expert's
// weights, and rows past N read as zero), a bulk copy of the tile's A scales, and stores the
// weight block's scale (read one k-block ahead). The A scale run of a tile starting at any row is
// copied from the 16-byte boundary below it (row0 & ~3, 132 floats, clipped to the scale array's
// leading dimension) and read shifted by row0 % 4. Warpgroups 1 and 2 are consumers (setmaxnreg up
// to 232): each owns 64 rows of the tile and runs promoted_mainloop (4 wgmma m64n128k32 per k-block
// into a fresh partial fragment, then acc += part · a_scale(row) · b_scale_g).
//
// Rows of other groups. An A tile at a group's end holds the next group's rows (or, masked, the
// group's padding rows; past A's end TMA reads zeros): each output row depends on its own A row
// only, so they feed output rows that are never stored. Nothing of another group reaches a stored
// value, not even a NaN.
//
// Epilogue. Each consumer converts its 64 × 128 fragment into its staging tile (stage_fragment: the
// 128-byte swizzle, conflict-free), then its 128 threads copy the tile out as 16-byte chunks, 8
// threads per 128-byte row segment (coalesced), storing a chunk only when its row is below the
// group's end and its columns below N (N is a multiple of 16, so a chunk of 8 bf16 or 4 floats is
// wholly in or out). A TMA store cannot be used: its box clips only at the tensor's edge, not at a
// group boundary, so a group's last tile would overwrite the next group's first rows, which
// another CTA writes. FP32 outputs go out in two passes of 64 columns.
//
// Shared memory: stages × (A 16 KB + B 16 KB + 528 + 512 + 16 bytes of scales) + 32 KB of output
// staging + the row-tile prefix (4 KB: up to kMaxGroups groups) + barriers: 5 stages, 206 KB.
//
// FLOPs 2 · R · N · K. Bytes from DRAM at least R · K (A) + G · N · K (B) + R · N · 2 (bf16 D) plus
// the scales (R · K/32 + G · N · K/4096): DeepGEMM's contiguous shape of 8 groups × 8192 rows, N 4096,
// K 7168: 3.85 TFLOP, 0.47 + 0.23 + 0.54 GB = 1.24 GB (0.26 ms at 4.8 TB/s; 1.95 ms at 1979
// TFLOP/s dense FP8): compute-bound. Each A tile is read from L2 ceil(N/128) times and each weight
// tile once per row tile of its group (the band order keeps both in L2).
//
// Requirements (grouped_fp8_gemm_hopper_supports; the automatic choice falls back to the plain
// kernel): an sm_90 GPU, N and K multiples of 16 (TMA row strides of 16-byte multiples; whole
// 16-byte output chunks), 16-byte aligned A, B, scales and D, A scales' leading dimension a
// multiple of 4, 1 ≤ G ≤ kMaxGroups, fewer than 2^31 rows, bf16 or float output.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/tma.cuh"
#include "kiln/kernels/common/sm90/warpgroup.cuh"
#include "kiln/kernels/fp8_gemm/hopper_pipeline.cuh"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/kernels/grouped_fp8_gemm/group_index.cuh"
#include "kiln/kernels/grouped_gemm/group_rows.cuh"
#include "kiln/kernels/grouped_gemm/tile_schedule.cuh"

namespace kiln::kernels::grouped_fp8_hopper {

using fp8_hopper::kBlockK;
constexpr int kBlockM = 128;     // rows of a unit: two consumer warpgroups of 64
constexpr int kBlockN = 128;     // columns of a unit
constexpr int kMaxGroups = 1024;  // the row-tile prefix lives in shared memory
constexpr int kAScaleSlack = 4;   // A scale runs start at the 16-byte boundary below the tile's first row
constexpr int kThreads = 384;
using Layout = fp8_hopper::SharedLayout<kBlockM, kBlockN, kMaxGroups * 4, kAScaleSlack>;

struct Params {
  grouped_gemm::GroupIndex groups;
  int num_groups;
  int n, num_kb, col_tiles;
  const float* a_scale;
  std::int64_t a_scale_ld;
  const float* b_scale;             // group g's blocks at b_scale + g · b_scale_group
  std::int64_t b_scale_group;       // ceil(N/128) · num_kb
  std::uint8_t* d;
  std::int64_t d_row_bytes;         // N · (2 or 4)
  int out_is_fp32;
  int pingpong;  // the two consumer warpgroups issue their wgmmas in turns (fp8_hopper::promoted_mainloop)
};

template <int CLUSTER>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_fp8_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                            const Params p) {
  using fp8_hopper::Ring;
  constexpr int STAGES = Layout::stages;
  extern __shared__ std::uint8_t smem_raw[];
  const std::uint32_t raw = sm90::shared_address(smem_raw);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  std::uint8_t* smem = smem_raw + (base - raw);
  int* const tile_end = reinterpret_cast<int*>(smem + Layout::extra_offset);
  const std::uint32_t full_bar = base + Layout::barrier_offset;  // full[s] at full_bar + 8 s
  const std::uint32_t empty_bar = full_bar + STAGES * 8;         // empty[s] at empty_bar + 8 s

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&a_map);
    sm90::prefetch_tensor_map(&b_map);
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbarrier_init(full_bar + 8 * s, 1);
      // One arrival per consumer warp of every CTA that this CTA's producer writes into.
      sm90::mbarrier_init(empty_bar + 8 * s, 2 * 4 * CLUSTER);
    }
    sm90::mbarrier_init_fence();
  }
  // In clusters (multicast of the weight tile) a unit is CLUSTER row tiles of one group: the
  // prefix counts tiles of CLUSTER · 128 rows, and rank r takes the r-th 128 rows of one (none of
  // the group's when it ends sooner: that CTA's rows are never stored).
  constexpr int kUnitRows = kBlockM * CLUSTER;
  if (threadIdx.x < 32) grouped_gemm::build_row_tile_prefix<kUnitRows>(p.groups, p.num_groups, tile_end);
  // In a cluster the peers' copies and arrivals name this CTA's barriers: all initialised first.
  if constexpr (CLUSTER > 1) sm90::cluster_sync();
  else __syncthreads();
  const int rank = CLUSTER > 1 ? static_cast<int>(sm90::cluster_rank()) : 0;
  const int first_unit = static_cast<int>(blockIdx.x) / CLUSTER, unit_stride = static_cast<int>(gridDim.x) / CLUSTER;
  const int total_row_tiles = tile_end[p.num_groups - 1];
  const int units = total_row_tiles * p.col_tiles;
  const auto tile_of = [&](int u) {
    grouped_gemm::RowTile tile =
        grouped_gemm::row_tile_at<kUnitRows>(p.groups, p.num_groups, tile_end, total_row_tiles, p.col_tiles, u);
    tile.row0 += rank * kBlockM;
    return tile;
  };

  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x / 128));  // uniform: see warp_uniform
  if (warpgroup == 0) {
    // ---- producer ----
    sm90::release_registers<fp8_hopper::kProducerRegisters>();
    if (threadIdx.x != 0) return;
    Ring ring{0, 0};
    for (int u = first_unit; u < units; u += unit_stride) {
      const grouped_gemm::RowTile tile = tile_of(u);
      const int m0 = static_cast<int>(tile.row0), n0 = tile.col_tile * kBlockN;
      const std::int64_t m_aligned = tile.row0 & ~std::int64_t{3};
      // None past the scale array (a cluster's second tile beyond the last group: no scales to read).
      const std::int64_t a_scale_count =
          std::max<std::int64_t>(0, std::min<std::int64_t>(p.a_scale_ld - m_aligned, kBlockM + kAScaleSlack));
      fp8_hopper::StageSource s{};
      s.a_row = m0;
      s.a_scale_bytes = 4u * static_cast<std::uint32_t>(a_scale_count);
      s.b_scale_bytes = 0;
      s.b_rowwise = false;
      const float* b_block_scales = p.b_scale + tile.group * p.b_scale_group + (n0 / 128) * p.num_kb;
      float next_b_scale = __ldg(b_block_scales);
      for (int kb = 0; kb < p.num_kb; ++kb) {
        s.b_block_scale = next_b_scale;
        if (kb + 1 < p.num_kb) next_b_scale = __ldg(b_block_scales + kb + 1);
        s.k = kb * kBlockK;
        s.a_scales = p.a_scale + kb * p.a_scale_ld + m_aligned;
        fp8_hopper::fill_stage<Layout>(smem, base, full_bar, empty_bar, ring, &a_map, s,
                                       [&](std::uint32_t dst, std::uint32_t full) {
          if constexpr (CLUSTER == 1) {
            sm90::tma_load_3d(dst, &b_map, kb * kBlockK, n0, tile.group, full);
          } else {
            // The cluster's tiles share the group's weight tile: rank r copies its r-th share of
            // the rows into every CTA (b_map's box: kBlockN / CLUSTER rows, whole swizzle atoms).
            constexpr int kShare = kBlockN / CLUSTER;
            sm90::tma_load_3d_multicast(dst + rank * kShare * kBlockK, &b_map, kb * kBlockK, n0 + rank * kShare,
                                        tile.group, full, static_cast<std::uint16_t>((1u << CLUSTER) - 1));
          }
        });
      }
    }
    fp8_hopper::await_last_releases<Layout, CLUSTER>(empty_bar, ring);
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<fp8_hopper::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int t = static_cast<int>(threadIdx.x % 128);
  const int lane = t % 32;
  const int row_local = (t / 32) * 16 + lane / 4;  // this thread's rows in its warpgroup's 64: row_local, + 8
  const int col_in_chunk = 2 * (lane % 4);         // and columns 8c + col_in_chunk + {0, 1}
  constexpr int kFragment = kBlockN / 2;
  std::uint8_t* const staging = smem + Layout::out_offset + consumer * Layout::out_tile;
  const int out_bytes = p.out_is_fp32 ? 4 : 2;
  const int passes = p.out_is_fp32 ? 2 : 1;
  const int pass_cols = kBlockN / passes;
  const int box_cols = 128 / out_bytes;
  Ring wait_ring{0, 0}, release_ring{0, 0};
  // Turns on hardware barriers 1 and 2 (the epilogue's are 3 and 4); both consumers run every unit.
  const sm90::PingPong turns{p.pingpong != 0, consumer};
  turns.start();

  for (int u = first_unit; u < units; u += unit_stride) {
    const grouped_gemm::RowTile tile = tile_of(u);
    const int shift = static_cast<int>(tile.row0 & 3);  // of the A scale run (see the producer)
    float acc[kFragment];
#pragma unroll
    for (int i = 0; i < kFragment; ++i) acc[i] = 0.f;
    fp8_hopper::promoted_mainloop<Layout, 128, false, CLUSTER>(acc, p.num_kb, smem, base, full_bar, empty_bar,
                                                               wait_ring, release_ring, consumer,
                                                               consumer * 64 + row_local + shift, col_in_chunk, lane,
                                                               turns);

    // ---- epilogue: fragment -> staging tile -> masked 16-byte stores ----
    const std::int64_t tile_row0 = tile.row0 + consumer * 64;
    const int n0 = tile.col_tile * kBlockN;
    for (int pass = 0; pass < passes; ++pass) {
      sm90::named_barrier_sync(3 + consumer, 128);  // the previous copy-out has read the staging tile
      fp8_hopper::stage_fragment<kBlockN>(acc, staging, row_local, col_in_chunk, pass, p.out_is_fp32);
      sm90::named_barrier_sync(3 + consumer, 128);
      // pass_cols · out_bytes = 256 bytes a row: 2 boxes × 64 rows × 8 chunks of 16 bytes.
#pragma unroll 4
      for (int i = t; i < 2 * 64 * 8; i += 128) {
        const int box = i / 512, r = (i / 8) % 64, chunk = i % 8;
        const std::int64_t row = tile_row0 + r;
        const int col = n0 + pass * pass_cols + box * box_cols + chunk * (16 / out_bytes);
        if (row < tile.row_end && col < p.n) {
          const uint4 v = *reinterpret_cast<const uint4*>(staging + box * (64 * 128) + r * 128 + ((chunk ^ (r % 8)) * 16));
          *reinterpret_cast<uint4*>(p.d + row * p.d_row_bytes + static_cast<std::int64_t>(col) * out_bytes) = v;
        }
      }
    }
  }
}

// The stacked weights [G, N, K] as a 3-D map (x = k, y = n, z = g), read as boxes of box_rows rows
// of one group × 128 bytes in the 128-byte swizzle. (A's map is the dense kernel's: make_tensor_map.)
inline CUtensorMap make_weight_map(const std::uint8_t* b, std::int64_t groups, std::int64_t n, std::int64_t k,
                                   int box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(n), static_cast<cuuint64_t>(groups)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(n * k)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(kBlockK), static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r = sm90::encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<std::uint8_t*>(b), dims,
                                          strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "grouped_fp8_gemm", "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r),
        ") for weights [", groups, ", ", n, ", ", k, "]");
  return map;
}

}  // namespace kiln::kernels::grouped_fp8_hopper

namespace kiln::kernels {

// Whether the Hopper kernel can run these arguments on their device (else the plain kernel runs).
inline bool grouped_fp8_gemm_hopper_supports(const GroupedFp8GemmArgs& a) {
  const std::int64_t rows_total = a.layout == GroupedFp8Layout::masked ? a.rows * a.groups : a.rows;
  return device_info(a.launch.device).major == 9 && a.n % 16 == 0 && a.k % 16 == 0 && a.groups >= 1 &&
         a.groups <= grouped_fp8_hopper::kMaxGroups && rows_total >= 1 && rows_total < (std::int64_t{1} << 31) &&
         a.n < (std::int64_t{1} << 31) && a.k < (std::int64_t{1} << 31) && a.a_scale_ld % 4 == 0 &&
         (a.d_dtype == DType::bf16 || a.d_dtype == DType::f32) && aligned16(a.a) && aligned16(a.b) &&
         aligned16(a.a_scale) && aligned16(a.b_scale) && aligned16(a.d);
}

// Whether the groups' row tiles run in pairs in 2-CTA clusters sharing the weight tile by TMA
// multicast, as the dense kernel's 128 × 128 tiles (kernels/fp8_gemm/gemm_hopper.cuh): contiguous
// layouts whose groups average at least 1024 rows (a group of an odd number of row tiles leaves one
// CTA of its last pair idle, at most 1/16 of the work there; masked decode-time slots are small),
// with KILN_FP8_MULTICAST=on (fp8_hopper::fp8_multicast_enabled).
inline bool grouped_fp8_multicast(const GroupedFp8GemmArgs& a) {
  return a.layout == GroupedFp8Layout::contiguous && a.rows >= 1024 * a.groups &&
         fp8_hopper::fp8_multicast_enabled();
}

// Launches the grouped product (args.hpp) on a.launch with the Hopper kernel; returns the variant
// that ran ("hopper", or "hopper_multicast" in 2-CTA clusters).
inline const char* launch_grouped_fp8_gemm_hopper(const GroupedFp8GemmArgs& a) {
  using namespace grouped_fp8_hopper;
  check(grouped_fp8_gemm_hopper_supports(a), "grouped_fp8_gemm",
        "the Hopper kernel needs an sm_90 GPU, N and K multiples of 16, 1 to ", kMaxGroups,
        " groups, 16-byte aligned operands and a bf16 or float output; got G=", a.groups, ", rows=", a.rows,
        ", N=", a.n, ", K=", a.k, ", output ", a.d_dtype);
  cuda::DeviceGuard guard(a.launch.device);
  const bool masked = a.layout == GroupedFp8Layout::masked;
  const std::int64_t rows_total = masked ? a.rows * a.groups : a.rows;
  Params p{};
  p.groups = grouped_fp8_group_index(a);
  p.num_groups = a.groups;
  p.n = static_cast<int>(a.n);
  p.num_kb = static_cast<int>((a.k + 127) / 128);
  p.col_tiles = static_cast<int>((a.n + kBlockN - 1) / kBlockN);
  p.a_scale = a.a_scale;
  p.a_scale_ld = a.a_scale_ld;
  p.b_scale = a.b_scale;
  p.b_scale_group = ((a.n + 127) / 128) * p.num_kb;
  p.d = static_cast<std::uint8_t*>(a.d);
  p.out_is_fp32 = a.d_dtype == DType::f32;
  p.pingpong = fp8_hopper::fp8_pingpong_enabled();
  p.d_row_bytes = a.n * (p.out_is_fp32 ? 4 : 2);
  const int cluster = grouped_fp8_multicast(a) ? 2 : 1;
  const std::int64_t unit_rows = kBlockM * cluster;
  const std::int64_t row_tiles = masked ? a.groups * ((a.rows + unit_rows - 1) / unit_rows)
                                        : (a.rows + unit_rows - 1) / unit_rows + a.groups;
  const std::int64_t max_units = row_tiles * p.col_tiles;
  check(max_units < (std::int64_t{1} << 31), "grouped_fp8_gemm", "too many tiles for the Hopper kernel: ", max_units);
  const CUtensorMap a_map = fp8_hopper::make_tensor_map(a.a, rows_total, a.k, a.k, kBlockM);
  const CUtensorMap b_map = make_weight_map(a.b, a.groups, a.n, a.k, kBlockN / cluster);
  launch_persistent(cluster > 1 ? grouped_fp8_gemm_kernel<2> : grouped_fp8_gemm_kernel<1>, max_units, kThreads,
                    Layout::bytes_with_alignment, a.launch.stream, a.launch.device, cluster, a_map, b_map, p);
  return cluster > 1 ? "hopper_multicast" : "hopper";
}

}  // namespace kiln::kernels
