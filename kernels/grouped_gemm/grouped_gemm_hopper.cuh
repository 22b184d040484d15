// Grouped GEMM for Mixture-of-Experts on Hopper (sm_90a): the three products of
// kernels/grouped_gemm/args.hpp (forward, dgrad, wgrad) with TMA loads, mbarriers, wgmma and a
// persistent, warp-specialised grid (the structure of kernels/fp8_gemm/gemm_hopper.cuh; wrappers in
// kernels/common/sm90/). grouped_gemm.cuh's launcher picks it on sm_90 when
// grouped_gemm_hopper_supports() holds, else its mma.sync kernel runs. docs/grouped-gemm.md has the
// measured numbers.
//
// Products (C = A · B, FP32 accumulation, one rounding to the 16-bit type). wgmma reads both
// operands from shared memory, each K-major (rows of the reduction dim) or, for 16-bit types,
// MN-major (imm-trans = 1: rows of M or N, one per reduction index; sm90/wgmma.cuh:
// smem_descriptor_mn_major_sw128), so no operand is ever transposed by a copy:
//   forward  y_g  = x_g · W_gᵀ   A = x [R, K] rows: K-major; B = W_g [N, K]: K-major
//   dgrad    dx_g = dy_g · W_g    A = dy [R, N] rows: K-major (the reduction is n); B = W_g [N, K]
//                                read as N reduction rows of K output columns: MN-major
//   wgrad    dW_g = dy_gᵀ · x_g   A = dy_g [M_g, N]: M-major (n is M, rows are the reduction);
//                                B = x_g [M_g, K]: N-major; the reduction is the group's rows
//
// Work split. forward, dgrad: group g needs ceil(M_g / 128) row tiles of 128 rows; a unit is (row
// tile, column tile of BN = 128 or 256 output columns). Every CTA first reads the G + 1 device
// offsets (L2) and builds the inclusive prefix of the groups' row-tile counts in shared memory
// (warp 0, a shuffle scan); units are numbered over the global row tiles (all groups, in order) in
// bands of 8 row tiles × every column tile, so that CTAs running together share A tiles and weight
// tiles in L2; a unit's group is a binary search of the prefix (tile_schedule.cuh, which the
// grouped FP8 GEMM shares). The host never reads the offsets:
// the unit count is known on the device only, and the grid is sized for the most any split could
// need (ceil(R/128) + G row tiles). wgrad: a unit is (chunk, group, 128 rows of n, BN columns of k)
// of dW_g, the reduction running over the chunk's rows of the group (read from the offsets by the
// unit); the chunks of a tile hand their FP32 sum on in order (wgrad_chunks.cuh; one chunk a group
// unless asked for); an empty group's units store zeros. The grid
// is one CTA per SM (persistent): CTA i takes units i, i + grid, ..., so there is no tail of
// launches, and the producer loads the next unit's first stages while the consumers store the
// current one.
//
// Warp specialisation (384 threads). Warpgroup 0 is the producer: after setmaxnreg down to 40
// registers, one thread issues per k-block of 64 (128 bytes of a 16-bit row = the swizzle width)
// TMA copies of the A tile (K-major: one 128-row box; M-major: two boxes of 64 reduction rows × 64
// of n) and of the B tile (K-major: one box of BN rows of W_g; MN-major: BN/64 boxes of 64
// reduction rows × 64 columns) into a ring of stages. W is described as a 3-D tensor [G][N][K], so
// a box never crosses into the next group's weights: rows past N (forward columns, dgrad reduction
// rows) read as zero. A K-major A tile at a group's end reads the next group's rows: those only feed
// output rows that are never stored. wgrad's last k-block of a group reads reduction rows of the
// next group: the consumers zero those rows of both tiles in shared memory (an MN-major box row is
// one reduction index: its 128 bytes, the swizzle permutes 16-byte chunks only within it), make the
// writes visible to wgmma (fence.proxy.async) and meet on a named barrier before reading, so another
// group's rows add nothing, not even a NaN. Warpgroups 1 and 2 are consumers (setmaxnreg up to 232):
// each owns 64 rows of the tile and issues 4 wgmma m64nBNk16 per k-block, keeping one k-block's
// wgmmas in flight (wait_group 1) and releasing the stage before it. Barriers: full[s] (TMA bytes
// landed), empty[s] (all 8 consumer warps done reading).
//
// Epilogue: each consumer warp stages 16 rows × 64 columns at a time in 2 KB of shared memory and
// writes whole 128-byte row segments with masked 16-byte stores (rows < the group's end, columns <
// the output width). Why not a TMA store: a store box clips only at the tensor's edge, not at a
// group boundary, so a group's last tile would overwrite the first rows of the next group (which
// another CTA writes); per-group tensor maps would have to be encoded on the device (G maps,
// tensormap.replace, fences); and a staging tile for TMA costs a pipeline stage of shared memory
// (16 KB of staging for the 8 consumer warps fits beside 4 stages; a 64 KB tile would not).
// The SwiGLU epilogues (args.hpp, swiglu_epilogue.cuh) work on those row segments: the forward's
// unit takes BN / 2 gate rows and the BN / 2 up rows I below them as its B tile (two TMA boxes), so
// that each thread holds gate and up of the same columns; per 64 columns a warp stages the gate
// segment, keeps its 4 chunks a lane in registers, stages the up segment and writes gate, up and
// silu(gate)·up. The backward's dgrad stages da as usual and, per chunk, reads gate and up from
// gate_up and writes d_gate and d_up.
//
// Shared memory: stages × (A 16 KB + B BN·128 bytes) + 16 KB of epilogue staging + the row-tile
// prefix (4 B per group, up to kMaxGroups) + barriers: BN = 256: 4 stages × 48 KB = 192 KB;
// BN = 128: 6 × 32 KB = 192 KB; 213 KB in all. Why 128 × 256 tiles (the default from 512 output
// columns): per k-block a CTA loads (128 + BN) · 128 bytes for 2·128·BN·64 FLOPs, 85 FLOP per byte
// at BN = 256 against 64 at BN = 128, and it measured 2-20% faster at every DeepSeek-V3 shape (the
// 128-wide tiles remain for narrow outputs). At 989 TFLOP/s, 85 FLOP/byte still means ~11.6 TB/s
// from L2 into the SMs (an estimate, not measured); 2-CTA clusters with TMA multicast of the shared
// operand would halve it (not done). The accumulators of a 64 × 256 consumer tile are 128
// registers a thread.
//
// FLOPs 2·R·N·K per product. Bytes from DRAM at least R·K·2 + G·N·K·2 + R·N·2 (DeepSeek-V3 up
// forward, 8 groups of ~4096 rows, N 4096, K 7168: 1.92 TFLOP and 1.2 GB: 1.95 ms at the H200's
// 989 TFLOP/s dense bf16, 0.25 ms at 4.8 TB/s: compute-bound).
//
// Requirements (grouped_gemm_hopper_supports; otherwise the plain kernel runs): an sm_90 GPU,
// bf16 or fp16, N and K multiples of 8 (TMA row strides are multiples of 16 bytes), 16-byte aligned
// operands and output (TMA global addresses; 16-byte stores), 1 ≤ R < 2^31 (TMA coordinates are
// int32), 1 ≤ G ≤ kMaxGroups (the row-tile prefix lives in shared memory).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "kiln/core/environment.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/tma.cuh"
#include "kiln/kernels/common/sm90/warpgroup.cuh"
#include "kiln/kernels/common/sm90/wgmma.cuh"
#include "kiln/kernels/common/sm90/wgmma_16bit.cuh"
#include "kiln/kernels/grouped_gemm/args.hpp"
#include "kiln/kernels/grouped_gemm/group_rows.cuh"
#include "kiln/kernels/grouped_gemm/swiglu_epilogue.cuh"
#include "kiln/kernels/grouped_gemm/tile_schedule.cuh"
#include "kiln/kernels/grouped_gemm/wgrad_chunks.cuh"

namespace kiln::kernels::grouped_gemm_hopper {

constexpr int kBlockM = 128;            // rows of a tile: two consumer warpgroups of 64
constexpr int kBlockK = 64;             // reduction elements per k-block: 128 bytes, the swizzle width
constexpr int kRowBytes = kBlockK * 2;  // one 16-bit row of a k-block
constexpr int kBand = 8;                // row tiles per band of the unit order (L2 reuse)
constexpr int kMaxGroups = 1024;        // the row-tile prefix lives in shared memory
constexpr int kThreads = 384;           // producer + 2 consumer warpgroups
constexpr int kStagingBytesPerWarp = 16 * 128;  // epilogue: a warp's 16 rows × 64 columns of 16-bit outputs
constexpr int kChunkBarrier = 2;  // the consumers' hardware barrier of wgrad's chunk hand-off (1: the zeroed tails)
// setmaxnreg budget: 40 + 2 · 232 = 504 ≤ 512 registers per lane of a warpgroup (64K per CTA).
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;

// Shared memory of one CTA (offsets from a 1024-byte aligned base: swizzle atoms must be aligned).
template <int BN>
struct SharedLayout {
  static constexpr int kLimit = 227 * 1024;  // opt-in dynamic shared memory per block on sm_90
  static constexpr int a_tile = kBlockM * kRowBytes;
  static constexpr int b_tile = BN * kRowBytes;
  static constexpr int stage_bytes = a_tile + b_tile;
  static constexpr int table_bytes = kMaxGroups * 4;
  static constexpr int staging_bytes = 8 * kStagingBytesPerWarp;  // the 8 consumer warps' epilogue staging
  static constexpr int fixed = 1024 + table_bytes + staging_bytes + 2 * 8 * 8;
  static constexpr int stages = (kLimit - fixed) / stage_bytes < 8 ? (kLimit - fixed) / stage_bytes : 8;
  static constexpr int a_offset = 0;
  static constexpr int b_offset = a_offset + stages * a_tile;
  static constexpr int staging_offset = b_offset + stages * b_tile;
  static constexpr int table_offset = staging_offset + staging_bytes;
  static constexpr int barrier_offset = table_offset + table_bytes;
  static constexpr int bytes_with_alignment = barrier_offset + 2 * stages * 8 + 1024;
  static_assert(a_tile % 1024 == 0 && b_tile % 1024 == 0, "tiles must keep 1024-byte alignment");
  static_assert(stages >= 3 && bytes_with_alignment <= kLimit, "shared memory budget");
};

// The three products (args.hpp's GroupedGemmKind): which operand is where (header comment).
enum class Product { forward, dgrad, wgrad };

struct Params {
  const std::int64_t* offsets;
  void* out;
  void* gate_up;        // the SwiGLU epilogues' [R, 2I] (args.hpp)
  int half;             // I: the SwiGLU epilogues' expert width
  std::int64_t rows;    // R
  std::int64_t ldc;     // output row stride: N (forward), K (dgrad, wgrad)
  int groups;
  int n;                // N (wgrad: the rows of each dW_g)
  int out_cols;         // output width: N (forward; I with the SwiGLU epilogue), K (dgrad, wgrad)
  int reduction;        // K (forward), N (dgrad); wgrad: each group's row count, read on the device
  int col_tiles;        // ceil(out_cols / BN) (ceil(I / (BN / 2)) with the SwiGLU epilogue)
  int row_tiles;        // wgrad: ceil(N / 128) row tiles of each dW_g
  // wgrad's chunks (wgrad_chunks.cuh): rows per chunk (a multiple of 64; R: one chunk a group), the
  // FP32 running sums of the tiles (G · row_tiles · col_tiles tiles of 128 · BN floats) and a flag
  // per tile (zero at launch); both null when no group can have two chunks.
  std::int64_t chunk_rows;
  float* partial;
  int* chunks_added;
};

// One unit of work: output rows [row0, row_end) ∩ the tile's 128, columns [col0, col0 + BN) of
// group g, summed over the reduction [red_begin, red_begin + red_count) (wgrad: the group's rows;
// else 0 .. K or N). a_index: the first A row (forward, dgrad: row0) or column (wgrad: n, in dy).
struct Unit {
  int group;
  std::int64_t row0, row_end;
  int col0;
  int a_index;
  std::int64_t red_begin, red_count;
  // wgrad: chunk `chunk` of the group's `chunks` (wgrad_chunks.cuh) of output tile `tile` (of all
  // groups' tiles); a unit past the group's chunks is empty. Else one chunk, always active.
  int chunk = 0, chunks = 1, tile = 0;
  bool active = true;
};

// forward, dgrad: unit u in the band order of tile_schedule.cuh, from the row-tile prefix tile_end.
template <int BN>
__device__ inline Unit unit_at(const Params& p, const int* tile_end, int total_row_tiles, int u) {
  const grouped_gemm::GroupIndex groups{p.offsets, p.rows, 0, 0};
  const grouped_gemm::RowTile tile =
      grouped_gemm::row_tile_at<kBlockM>(groups, p.groups, tile_end, total_row_tiles, p.col_tiles, u);
  Unit w;
  w.group = tile.group;
  w.row0 = tile.row0;
  w.row_end = tile.row_end;
  w.col0 = tile.col_tile * BN;
  w.a_index = static_cast<int>(w.row0);
  w.red_begin = 0;
  w.red_count = p.reduction;
  return w;
}

// wgrad unit u, level-major (wgrad_chunks.cuh): level j = u / (G · tiles) is the chunk, then the
// group, then the same band order over that dW_g's tiles (128 rows of n × BN columns of k). Without
// chunks (one level) the unit count G · tiles is known on the host.
template <int BN>
__device__ inline Unit wgrad_unit_at(const Params& p, int u) {
  const int per_group = p.row_tiles * p.col_tiles;
  const int level = u / (p.groups * per_group);
  const int in_level = u - level * p.groups * per_group;
  const int g = in_level / per_group;
  const int t = in_level - g * per_group;
  const int per_band = kBand * p.col_tiles;
  const int band = t / per_band;
  const int first = band * kBand;
  const int band_rows = p.row_tiles - first < kBand ? p.row_tiles - first : kBand;
  const int in_band = t - band * per_band;
  const int m0 = (first + in_band % band_rows) * kBlockM;
  Unit w;
  w.group = g;
  w.row0 = static_cast<std::int64_t>(g) * p.n + m0;
  w.row_end = static_cast<std::int64_t>(g) * p.n + p.n;
  w.col0 = (in_band / band_rows) * BN;
  w.a_index = m0;
  std::int64_t start, count;
  grouped_gemm::group_rows(p.offsets, g, p.rows, start, count);
  const std::int64_t chunks = count == 0 ? 1 : (count + p.chunk_rows - 1) / p.chunk_rows;
  const std::int64_t chunk_start = static_cast<std::int64_t>(level) * p.chunk_rows;
  w.chunk = level;
  w.chunks = static_cast<int>(chunks);
  w.tile = in_level;
  w.active = level < chunks;
  w.red_begin = start + chunk_start;
  w.red_count = w.active ? (count - chunk_start < p.chunk_rows ? count - chunk_start : p.chunk_rows) : 0;
  return w;
}

// wgrad: the most chunks any group has (1 without chunks), by warp 0 from the G + 1 offsets.
__device__ inline int most_chunks(const Params& p) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  std::int64_t most = 1;
  for (int g = lane; g < p.groups; g += 32) {
    std::int64_t start, count;
    grouped_gemm::group_rows(p.offsets, g, p.rows, start, count);
    const std::int64_t chunks = (count + p.chunk_rows - 1) / p.chunk_rows;
    most = chunks > most ? chunks : most;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const std::int64_t other = __shfl_xor_sync(0xffffffffu, most, off);
    most = other > most ? other : most;
  }
  return static_cast<int>(most);
}

// Zeroes rows [valid, 64) of a 64-row MN-major box (row i of a box is bytes [128 i, 128 i + 128):
// the swizzle permutes 16-byte chunks only within a row), with the 128 threads of a warpgroup.
__device__ inline void zero_box_tail(std::uint8_t* box, int valid, int t) {
  for (int i = valid * 8 + t; i < 64 * 8; i += 128) reinterpret_cast<uint4*>(box)[i] = make_uint4(0, 0, 0, 0);
}

template <class T, int BN, Product P, GroupedGemmEpilogue E>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_hopper_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                               const Params p) {
  using Layout = SharedLayout<BN>;
  constexpr int STAGES = Layout::stages;
  constexpr bool kTransA = P == Product::wgrad;   // A tile holds rows of M (n), one per reduction row
  constexpr bool kTransB = P != Product::forward;  // B tile holds rows of N, one per reduction index
  constexpr int kBox = 64 * kRowBytes;              // one 64 × 64 box of an MN-major tile
  // The SwiGLU forward: a unit's B tile is BN / 2 gate rows of W_g and the BN / 2 up rows I below
  // them, so that its accumulators hold gate column j and up column j of the same thread (columns
  // j and j + BN / 2 of the wgmma); the unit covers BN / 2 columns of silu(gate)·up.
  constexpr bool kSwiglu = E == GroupedGemmEpilogue::swiglu;
  constexpr int kUnitCols = kSwiglu ? BN / 2 : BN;
  static_assert(!kSwiglu || P == Product::forward, "the SwiGLU epilogue follows the forward product");
  static_assert(E != GroupedGemmEpilogue::swiglu_backward || P == Product::dgrad,
                "the SwiGLU backward epilogue follows the dgrad product");
  extern __shared__ std::uint8_t smem_raw[];
  const std::uint32_t raw = sm90::shared_address(smem_raw);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  std::uint8_t* smem = smem_raw + (base - raw);
  int* const tile_end = reinterpret_cast<int*>(smem + Layout::table_offset);
  const std::uint32_t full_bar = base + Layout::barrier_offset;  // full[s] at full_bar + 8 s
  const std::uint32_t empty_bar = full_bar + STAGES * 8;         // empty[s] at empty_bar + 8 s

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&a_map);
    sm90::prefetch_tensor_map(&b_map);
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbarrier_init(full_bar + 8 * s, 1);
      sm90::mbarrier_init(empty_bar + 8 * s, 2 * 4);  // one arrival per consumer warp
    }
    sm90::mbarrier_init_fence();
  }
  if (threadIdx.x < 32) {
    if constexpr (P == Product::wgrad) {
      const int levels = p.partial != nullptr ? most_chunks(p) : 1;  // tile_end[0]: wgrad's chunk levels
      if (threadIdx.x == 0) tile_end[0] = levels;
    } else {
      grouped_gemm::build_row_tile_prefix<kBlockM>(grouped_gemm::GroupIndex{p.offsets, p.rows, 0, 0}, p.groups,
                                                   tile_end);
    }
  }
  __syncthreads();
  const int total_row_tiles = P == Product::wgrad ? 0 : tile_end[p.groups - 1];
  const int units = P == Product::wgrad ? tile_end[0] * p.groups * p.row_tiles * p.col_tiles
                                        : total_row_tiles * p.col_tiles;
  const auto unit = [&](int u) {
    if constexpr (P == Product::wgrad) return wgrad_unit_at<BN>(p, u);
    else return unit_at<kUnitCols>(p, tile_end, total_row_tiles, u);
  };

  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x / 128));  // uniform: see warp_uniform
  if (warpgroup == 0) {
    // ---- producer ----
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    int stage = 0;
    std::uint32_t phase = 0;
    for (int u = static_cast<int>(blockIdx.x); u < units; u += static_cast<int>(gridDim.x)) {
      const Unit w = unit(u);
      if (!w.active) continue;
      const int num_kb = static_cast<int>((w.red_count + kBlockK - 1) / kBlockK);
      // MN-major operands come as 64-column boxes; boxes wholly past the matrix are skipped (their
      // output rows or columns are never stored; the stale shared memory they leave feeds only those).
      int b_boxes = 1, a_boxes = 1;
      if constexpr (kTransB) b_boxes = ::min(BN / 64, (p.out_cols - w.col0 + 63) / 64);
      if constexpr (kTransA) a_boxes = ::min(kBlockM / 64, (p.n - w.a_index + 63) / 64);
      const std::uint32_t a_bytes = kTransA ? static_cast<std::uint32_t>(a_boxes) * kBox : Layout::a_tile;
      const std::uint32_t b_bytes = kTransB ? static_cast<std::uint32_t>(b_boxes) * kBox : Layout::b_tile;
      for (int kb = 0; kb < num_kb; ++kb) {
        sm90::mbarrier_wait(empty_bar + 8 * stage, phase ^ 1);
        const std::uint32_t full = full_bar + 8 * stage;
        sm90::mbarrier_arrive_expect_bytes(full, a_bytes + b_bytes);
        const std::uint32_t a_dst = base + Layout::a_offset + stage * Layout::a_tile;
        const std::uint32_t b_dst = base + Layout::b_offset + stage * Layout::b_tile;
        const int red = static_cast<int>(w.red_begin) + kb * kBlockK;  // reduction coordinate
        if constexpr (!kTransA) {
          sm90::tma_load_2d(a_dst, &a_map, red, w.a_index, full);  // 128 rows × 64 of the reduction
        } else {
          for (int j = 0; j < a_boxes; ++j)  // 64 reduction rows (r) × 64 values of n each, dy [R, N]
            sm90::tma_load_2d(a_dst + j * kBox, &a_map, w.a_index + 64 * j, red, full);
        }
        if constexpr (kSwiglu) {  // BN / 2 gate rows, then the same up rows (boxes of BN / 2 rows)
          sm90::tma_load_3d(b_dst, &b_map, red, w.col0, w.group, full);
          sm90::tma_load_3d(b_dst + (BN / 2) * kRowBytes, &b_map, red, p.half + w.col0, w.group, full);
        } else if constexpr (P == Product::forward) {
          sm90::tma_load_3d(b_dst, &b_map, red, w.col0, w.group, full);  // BN rows of W_g, k-block kb
        } else if constexpr (P == Product::dgrad) {
          for (int j = 0; j < b_boxes; ++j)  // 64 reduction rows (n) × 64 output columns (k_in) of W_g
            sm90::tma_load_3d(b_dst + j * kBox, &b_map, w.col0 + 64 * j, red, w.group, full);
        } else {
          for (int j = 0; j < b_boxes; ++j)  // 64 reduction rows (r) × 64 output columns (k) of x [R, K]
            sm90::tma_load_2d(b_dst + j * kBox, &b_map, w.col0 + 64 * j, red, full);
        }
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int t = static_cast<int>(threadIdx.x % 128);
  const int lane = t % 32;
  T* const out = static_cast<T*>(p.out);
  // Descriptor steps per k16: K-major tiles advance 32 bytes inside the 128-byte row; MN-major
  // tiles advance 16 rows of 128 bytes (two whole swizzle atoms).
  constexpr std::uint64_t kAStep = kTransA ? (16 * kRowBytes) >> 4 : 32 >> 4;
  constexpr std::uint64_t kBStep = kTransB ? (16 * kRowBytes) >> 4 : 32 >> 4;
  int stage = 0;
  std::uint32_t phase = 0;
  float acc[BN / 2];

  for (int u = static_cast<int>(blockIdx.x); u < units; u += static_cast<int>(gridDim.x)) {
    const Unit w = unit(u);
    if (!w.active) continue;
    const int num_kb = static_cast<int>((w.red_count + kBlockK - 1) / kBlockK);
    if constexpr (P == Product::wgrad) {
      if (num_kb == 0) {  // an empty group: dW_g = 0
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
      }
    }
    int previous = -1;
    for (int kb = 0; kb < num_kb; ++kb) {
      sm90::mbarrier_wait(full_bar + 8 * stage, phase);
      const std::uint32_t a_tile = base + Layout::a_offset + stage * Layout::a_tile;
      const std::uint32_t b_tile = base + Layout::b_offset + stage * Layout::b_tile;
      if constexpr (P == Product::wgrad) {
        // The group's last k-block may run past its rows into the next group's (or TMA's zero
        // fill): those reduction rows of both tiles are zeroed, so they add nothing (not even a
        // NaN of another group). Each consumer zeroes its own A box and half of the B boxes, then
        // both make the writes visible to wgmma (the async proxy) and meet before reading B.
        const int valid = static_cast<int>(w.red_count - static_cast<std::int64_t>(kb) * kBlockK);
        if (valid < kBlockK) {
          std::uint8_t* const a_smem = smem + (a_tile - base);
          std::uint8_t* const b_smem = smem + (b_tile - base);
          zero_box_tail(a_smem + consumer * kBox, valid, t);
          for (int j = consumer; j < BN / 64; j += 2) zero_box_tail(b_smem + j * kBox, valid, t);
          sm90::fence_proxy_async_shared();
          sm90::named_barrier_sync(1, 256);
        }
      }
      const std::uint32_t a_consumer = kTransA ? a_tile + consumer * kBox : a_tile + consumer * 64 * kRowBytes;
      const std::uint64_t a_desc = kTransA ? sm90::smem_descriptor_mn_major_sw128(a_consumer, kBox)
                                           : sm90::smem_descriptor_k_major_sw128(a_consumer);
      const std::uint64_t b_desc = kTransB ? sm90::smem_descriptor_mn_major_sw128(b_tile, kBox)
                                           : sm90::smem_descriptor_k_major_sw128(b_tile);
      sm90::fence_registers(acc);
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBlockK / 16; ++ks)
        sm90::Wgmma16<T, BN, kTransA, kTransB>::ss(acc, a_desc + kAStep * ks, b_desc + kBStep * ks, (kb | ks) != 0);
      sm90::wgmma_commit();
      // The previous k-block's wgmmas are done: its stage can be refilled.
      sm90::wgmma_wait<1>();
      sm90::fence_registers(acc);
      if (previous >= 0) {
        __syncwarp();
        if (lane == 0) sm90::mbarrier_arrive(empty_bar + 8 * previous);
      }
      previous = stage;
      if (++stage == STAGES) {
        stage = 0;
        phase ^= 1;
      }
    }
    sm90::wgmma_wait<0>();
    sm90::fence_registers(acc);
    if (previous >= 0) {
      __syncwarp();
      if (lane == 0) sm90::mbarrier_arrive(empty_bar + 8 * previous);
    }

    // ---- wgrad chunks (wgrad_chunks.cuh): add the chunks before this one, or hand the sum on ----
    if constexpr (P == Product::wgrad) {
      if (w.chunks > 1) {
        float4* const partial = reinterpret_cast<float4*>(p.partial + static_cast<std::int64_t>(w.tile) * kBlockM * BN);
        int* const flag = p.chunks_added + w.tile;
        const int thread = consumer * 128 + t;
        if (w.chunk > 0)
          grouped_gemm::add_previous_chunks(acc, partial, flag, w.chunk, thread, 256, thread == 0, kChunkBarrier);
        if (w.chunk + 1 < w.chunks) {
          grouped_gemm::hand_on_chunks(acc, partial, flag, w.chunk + 1, thread, 256, thread == 0, kChunkBarrier);
          continue;
        }
      }
    }

    // ---- epilogue: registers -> this warp's staging buffer -> 16-byte masked global stores ----
    // d[4c + 2h + j] = C[16·warp + lane/4 + 8h][8c + 2·(lane%4) + j] of this warpgroup's 64 rows.
    // The accumulator layout gives a warp instruction 8 rows × 16 bytes: stored directly, that is 8
    // partial-line requests per 128 bytes, and at a reduction of 2048 the stores of a 128 × 256
    // tile took ~10% of the tile's time (measured: 0.87× cuBLASLt against 0.96× at K = 7168). So
    // each warp passes its 16 × 64 slices through 2 KB of shared memory (16-byte chunks XOR-swizzled
    // by row % 8: the fragment writes and the row reads are free of bank conflicts) and writes whole
    // 128-byte row segments, 8 columns a thread, masked by the group's end and the output width
    // (a multiple of 8, so a chunk is wholly inside or outside).
    const int warp = t / 32, quad = lane % 4, quad_row = lane / 4;
    std::uint8_t* const staging = smem + Layout::staging_offset + (consumer * 4 + warp) * kStagingBytesPerWarp;
    const std::int64_t warp_row0 = w.row0 + consumer * 64 + warp * 16;
    // Accumulator columns 8·c0 .. 8·c0 + 63 into this warp's staging buffer, rounded to T.
    const auto stage_columns = [&](int c0) {
      __syncwarp();  // the previous reads of the staging buffer are done
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = c0 + j;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = quad_row + 8 * h;  // row % 8 == quad_row
          *reinterpret_cast<unsigned*>(staging + row * 128 + ((j ^ quad_row) * 16) + quad * 4) =
              sm80::pack2<T>(acc[4 * c + 2 * h], acc[4 * c + 2 * h + 1]);
        }
      }
      __syncwarp();
    };
    // This lane's i-th 16-byte chunk of the staged 16 × 64: row index / 8, chunk index % 8.
    const auto staged = [&](int i, int& row, int& chunk) {
      const int index = i * 32 + lane;
      row = index / 8;
      chunk = index % 8;
      return *reinterpret_cast<const uint4*>(staging + row * 128 + ((chunk ^ (row % 8)) * 16));
    };
    if constexpr (kSwiglu) {
      // Per 64 output columns: the gate columns staged and kept (4 chunks a lane), then the up
      // columns; both stored to gate_up, silu(gate)·up to out.
      T* const gate_up = static_cast<T*>(p.gate_up);
#pragma unroll
      for (int pass = 0; pass < BN / 128; ++pass) {
        uint4 gate[4];
        int row, chunk;
        stage_columns(8 * pass);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          gate[i] = staged(i, row, chunk);
          const std::int64_t out_row = warp_row0 + row;
          const int col = w.col0 + 64 * pass + 8 * chunk;
          if (out_row < w.row_end && col < p.half)
            *reinterpret_cast<uint4*>(gate_up + out_row * 2 * p.half + col) = gate[i];
        }
        stage_columns(BN / 16 + 8 * pass);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint4 up = staged(i, row, chunk);
          const std::int64_t out_row = warp_row0 + row;
          const int col = w.col0 + 64 * pass + 8 * chunk;
          if (out_row < w.row_end && col < p.half) {
            *reinterpret_cast<uint4*>(gate_up + out_row * 2 * p.half + p.half + col) = up;
            *reinterpret_cast<uint4*>(out + out_row * p.ldc + col) = grouped_gemm::swiglu_chunk<T>(gate[i], up);
          }
        }
      }
    } else {
#pragma unroll
      for (int pass = 0; pass < BN / 64; ++pass) {
        stage_columns(8 * pass);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          int row, chunk;
          const uint4 v = staged(i, row, chunk);
          const std::int64_t out_row = warp_row0 + row;
          const int col = w.col0 + 64 * pass + 8 * chunk;
          if (out_row >= w.row_end || col >= p.out_cols) continue;
          if constexpr (E == GroupedGemmEpilogue::swiglu_backward)
            grouped_gemm::store_swiglu_backward<T>(v, static_cast<const T*>(p.gate_up), out, out_row, col, p.half);
          else
            *reinterpret_cast<uint4*>(out + out_row * p.ldc + col) = v;
        }
      }
    }
  }
}

// ---- host side ------------------------------------------------------------------------------------

template <class T>
constexpr CUtensorMapDataType tensor_map_type() {
  return std::is_same_v<T, bf16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// A row-major [rows, cols] 16-bit matrix read as boxes of box_rows × 64 elements (128 bytes) in the
// 128-byte swizzle; out-of-range elements read as zero.
template <class T>
CUtensorMap make_rows_map(const void* data, std::int64_t rows, std::int64_t cols, int box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * 2)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBlockK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = sm90::encode_tiled()(&map, tensor_map_type<T>(), 2, const_cast<void*>(data), dims, strides, box,
                                          element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "grouped_gemm", "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a [",
        rows, ", ", cols, "] operand");
  return map;
}

// The weights W [G, N, K] as a 3-D tensor (x = k, y = n, z = g), boxes of box_rows rows of n × 64
// elements of k in the 128-byte swizzle: a box stays inside one group's matrix and zero-fills past N.
template <class T>
CUtensorMap make_weight_map(const void* data, std::int64_t groups, std::int64_t n, std::int64_t k, int box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(n), static_cast<cuuint64_t>(groups)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(k * 2), static_cast<cuuint64_t>(n * k * 2)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(kBlockK), static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r = sm90::encode_tiled()(&map, tensor_map_type<T>(), 3, const_cast<void*>(data), dims, strides, box,
                                          element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "grouped_gemm", "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r),
        ") for weights [", groups, ", ", n, ", ", k, "]");
  return map;
}

// KILN_GROUPED_WGRAD_CHUNKS=on in the environment: wgrad's chunks planned by shape
// (plan_wgrad_chunks) where GroupedGemmArgs::wgrad_chunk_rows leaves them to the kernel; otherwise
// one chunk a group. Off by default: on an H100 (2026-12-07) the big config's training step ran
// 1.01x with them (within run-to-run spread) while the grouped GEMM benchmark's wgrad rows ran
// slower than the unchunked kernel's on an H200 earlier (docs/grouped-gemm.md); a same-call A/B
// of the benchmark is pending. Read once per process.
inline bool wgrad_chunks_enabled_by_environment() {
  static const bool enabled = environment_is("KILN_GROUPED_WGRAD_CHUNKS", "on");
  return enabled;
}

template <class T, int BN, Product P, GroupedGemmEpilogue E>
void launch(const GroupedGemmArgs& a) {
  constexpr bool kSwiglu = E == GroupedGemmEpilogue::swiglu;
  Params p{};
  p.offsets = a.offsets;
  p.out = a.out;
  p.gate_up = a.gate_up;
  p.half = kSwiglu ? a.n / 2 : a.k;  // I (read by the SwiGLU epilogues only)
  p.rows = a.rows;
  p.groups = a.groups;
  p.n = a.n;
  p.out_cols = P == Product::forward ? (kSwiglu ? a.n / 2 : a.n) : a.k;
  p.reduction = P == Product::forward ? a.k : (P == Product::dgrad ? a.n : 0);
  p.ldc = p.out_cols;
  p.col_tiles = kSwiglu ? (p.out_cols + BN / 2 - 1) / (BN / 2) : (p.out_cols + BN - 1) / BN;
  p.row_tiles = (a.n + kBlockM - 1) / kBlockM;
  std::int64_t max_units = 0;
  CUtensorMap a_map, b_map;
  Tensor<float> partial;  // wgrad's chunk sums and flags: freed after the launch, reused in stream order
  if constexpr (P == Product::wgrad) {
    // A = dy_gᵀ and B = x_g, both read as boxes of 64 rows (the reduction) × 64 columns.
    a_map = make_rows_map<T>(a.dy, a.rows, a.n, 64);
    b_map = make_rows_map<T>(a.x, a.rows, a.k, 64);
    const int tiles = p.row_tiles * p.col_tiles;
    const std::int64_t tile_floats = static_cast<std::int64_t>(a.groups) * tiles * kBlockM * BN;
    const DeviceInfo& info = device_info(a.launch.device);
    p.chunk_rows = a.wgrad_chunk_rows > 0 ? a.wgrad_chunk_rows
                   : !wgrad_chunks_enabled_by_environment()
                       ? a.rows
                       : grouped_gemm::plan_wgrad_chunks(a.rows, a.groups, tiles, info.sms,
                                                         tile_floats * 4 <= std::int64_t{info.l2_bytes} * 3 / 4);
    const std::int64_t levels = (a.rows + p.chunk_rows - 1) / p.chunk_rows;
    if (levels > 1) {
      const std::int64_t flags = static_cast<std::int64_t>(a.groups) * tiles;
      partial = Tensor<float>({tile_floats + flags}, Device::cuda(a.launch.device));
      p.partial = partial.data();
      p.chunks_added = reinterpret_cast<int*>(partial.data() + tile_floats);
      KILN_CUDA_CHECK(cudaMemsetAsync(p.chunks_added, 0, static_cast<std::size_t>(flags) * sizeof(int),
                                      a.launch.stream));
    } else {
      p.chunk_rows = a.rows;  // one chunk a group
    }
    max_units = levels * a.groups * tiles;
  } else {
    a_map = make_rows_map<T>(P == Product::forward ? a.x : a.dy, a.rows, p.reduction, kBlockM);
    b_map = make_weight_map<T>(a.weight, a.groups, a.n, a.k, P == Product::forward ? (kSwiglu ? BN / 2 : BN) : 64);
    // The most units any split of R rows into G groups can give: every group may end in a partial tile.
    max_units = ((a.rows + kBlockM - 1) / kBlockM + a.groups) * p.col_tiles;
  }
  check(max_units < (std::int64_t{1} << 31), "grouped_gemm", "too many tiles for the Hopper kernel: ", max_units);
  const int grid = static_cast<int>(std::min<std::int64_t>(max_units, device_info(a.launch.device).sms));
  auto* kernel = &grouped_gemm_hopper_kernel<T, BN, P, E>;
  constexpr int smem = SharedLayout<BN>::bytes_with_alignment;
  opt_in_shared_memory(kernel, smem, a.launch.device);
  kernel<<<grid, kThreads, smem, a.launch.stream>>>(a_map, b_map, p);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels::grouped_gemm_hopper

namespace kiln::kernels {

// Whether the Hopper kernel can run these arguments on their device (else the plain kernel runs).
inline bool grouped_gemm_hopper_supports(const GroupedGemmArgs& a) {
  using namespace grouped_gemm_hopper;
  const bool operands_aligned = a.kind == GroupedGemmKind::forward ? aligned16(a.x) && aligned16(a.weight)
                                : a.kind == GroupedGemmKind::dgrad ? aligned16(a.dy) && aligned16(a.weight)
                                                                   : aligned16(a.dy) && aligned16(a.x);
  return (a.dtype == DType::bf16 || a.dtype == DType::f16) && device_info(a.launch.device).major == 9 &&
         a.n % 8 == 0 && a.k % 8 == 0 && a.groups >= 1 && a.groups <= kMaxGroups && a.rows >= 1 &&
         a.rows < (std::int64_t{1} << 31) && operands_aligned && aligned16(a.out) &&
         (a.hopper_block_n == 0 || a.hopper_block_n == 128 || a.hopper_block_n == 256) && a.wgrad_chunk_rows >= 0 &&
         a.wgrad_chunk_rows % 64 == 0;
}

// The tile width: 256 columns (85 FLOP per loaded byte) where the output is wide enough that the
// last column tile wastes little, else 128.
inline int grouped_gemm_hopper_block_n(const GroupedGemmArgs& a) {
  if (a.hopper_block_n != 0) return a.hopper_block_n;
  const int cols = a.kind == GroupedGemmKind::forward ? a.n : a.k;
  return cols >= 512 ? 256 : 128;
}

// Launches a product (args.hpp) on a.launch with the Hopper kernel.
inline void launch_grouped_gemm_hopper(const GroupedGemmArgs& a) {
  using namespace grouped_gemm_hopper;
  check(grouped_gemm_hopper_supports(a), "grouped_gemm",
        "the Hopper kernel runs bf16 or fp16 on an sm_90 GPU with N and K multiples of 8, 16-byte aligned "
        "operands, 1 <= R < 2^31, 1 to ",
        kMaxGroups, " groups, a tile width of 0, 128 or 256 and wgrad chunks of a multiple of 64 rows (0: chosen); ",
        "got ", a.dtype, ", G=", a.groups, ", R=", a.rows, ", N=", a.n, ", K=", a.k, ", tile width ", a.hopper_block_n,
        ", chunk rows ", a.wgrad_chunk_rows);
  cuda::DeviceGuard guard(a.launch.device);
  const bool wide = grouped_gemm_hopper_block_n(a) == 256;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using Ep = GroupedGemmEpilogue;
    switch (a.kind) {
      case GroupedGemmKind::forward:
        if (a.epilogue == Ep::swiglu)
          wide ? launch<T, 256, Product::forward, Ep::swiglu>(a) : launch<T, 128, Product::forward, Ep::swiglu>(a);
        else
          wide ? launch<T, 256, Product::forward, Ep::none>(a) : launch<T, 128, Product::forward, Ep::none>(a);
        break;
      case GroupedGemmKind::dgrad:
        if (a.epilogue == Ep::swiglu_backward)
          wide ? launch<T, 256, Product::dgrad, Ep::swiglu_backward>(a)
               : launch<T, 128, Product::dgrad, Ep::swiglu_backward>(a);
        else
          wide ? launch<T, 256, Product::dgrad, Ep::none>(a) : launch<T, 128, Product::dgrad, Ep::none>(a);
        break;
      case GroupedGemmKind::wgrad:
        wide ? launch<T, 256, Product::wgrad, Ep::none>(a) : launch<T, 128, Product::wgrad, Ep::none>(a);
        break;
    }
  };
  if (a.dtype == DType::bf16) run(bf16{});
  else run(fp16{});
}

}  // namespace kiln::kernels
