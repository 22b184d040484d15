// The Hopper FP8 GEMM: D = A · Bᵀ with DeepSeek-V3's fine-grained scales (args.hpp has the
// function), built from TMA, mbarriers, wgmma and a persistent tile scheduler (their wrappers are in
// kernels/common/sm90/; the stage ring, the promoted k-loop and the output staging, which the grouped
// FP8 GEMM shares, are hopper_pipeline.cuh). docs/fp8-gemm.md walks through it with figures; the outline:
//
// Work. D is cut into BM × BN tiles (BM = 64 or 128 rows, BN = 64 or 128 columns). When the tiles
// are too few to fill the GPU (small M), K is split as well: each of `splits` units of a tile sums a
// run of k-blocks into an FP32 workspace, and a second kernel adds the splits in a fixed order (so
// the result is deterministic). The grid has one CTA per SM; CTA i takes units i, i + grid, ...
// (a persistent grid: no launch or tail cost per tile, and the next tile's loads start while the
// current tile's epilogue runs). Units are ordered in bands of 8 M-tiles so that CTAs running at the
// same time share A and B tiles in L2. Optionally (KILN_FP8_MULTICAST=on, 128 × 128 tiles, no split)
// a unit is two vertically adjacent tiles computed by the two CTAs of a cluster, each copying half of
// their common B tile into both by TMA multicast (Fp8GemmPlan::cluster; rules in sm90/cluster.cuh).
//
// Warp specialisation. Warpgroup 0 is the producer: one thread issues, per k-block of 128, a TMA
// copy of the A tile (BM × 128 bytes), of the B tile (BN × 128 bytes) and bulk copies of the scales
// into a ring of STAGES shared-memory buffers; it gives most of its registers back (setmaxnreg).
// Warpgroups 1..BM/64 are consumers: each owns 64 rows of the tile. Buffer s has two mbarriers:
// `full[s]` completes when the copies' bytes have landed, `empty[s]` when every consumer warp has
// finished reading it; the producer waits on empty before refilling, the consumers on full.
//
// Promotion. Hopper's tensor cores accumulate FP8 products with about 14 bits of precision
// (DeepSeek-V3 report, section 3.3.2), so a long K loses accuracy if summed there. Each k-block of
// 128 (four wgmma k32 steps) is summed in a fresh register accumulator `part`, then added on CUDA
// cores in FP32 as acc += part · a_scale(row) · b_scale: the promotion interval equals the scaling
// block, which makes the fine-grained scales free. With two consumer warpgroups the tensor cores
// work on one warpgroup's wgmmas while the other promotes.
//
// Epilogue. Each consumer warpgroup converts its fragment into a shared-memory staging tile, and
// one thread issues TMA stores of it into D (the copy engine clips rows and columns outside D);
// split units store FP32 into their slice of the workspace the same way.
//
// The k-grouped FP8 GEMM (the experts' weight gradient, kernels/grouped_fp8_gemm/k_grouped.cuh)
// runs this kernel with its split units as groups: each sums its group's own run of k-blocks
// (Params::kb_ranges) and stores into its slice of D [G, M, N] directly.
//
// Requirements (checked by the launcher; the dispatcher falls back to the plain kernel): sm_90,
// K and N multiples of 16 (TMA row strides are 16-byte multiples; wgmma N granularity), 16-byte
// aligned A/B rows, A scales k-block major with a leading dimension that is a multiple of 4.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
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
#include "kiln/kernels/common/sm90/wgmma.cuh"
#include "kiln/kernels/fp8_gemm/args.hpp"
#include "kiln/kernels/fp8_gemm/hopper_pipeline.cuh"

namespace kiln::kernels {

namespace fp8_hopper {

constexpr int kGroupM = 8;      // M-tiles per band of the tile order (L2 reuse)

struct Params {
  int m, n, k, num_kb;
  const float* a_scale;
  std::int64_t a_scale_ld;
  const float* b_scale;
  std::int64_t b_scale_ld;
  int b_rowwise;  // 1: B has 1×128 tiles (one scale per column of D), 0: 128×128 blocks
  int promote;
  int pingpong;     // two consumer warpgroups issue their wgmmas in turns (promoted_mainloop)
  int out_is_fp32;  // the tensor d_map stores into: D (bf16 or FP32) or, when splits > 1, the FP32 workspace
  int m_tiles, n_tiles, splits, kb_per_split, units;
  // The k-grouped GEMM (kernels/grouped_fp8_gemm/k_grouped.cuh) reuses the split units: split g is
  // group g, its k-block run [kb_ranges[2g], kb_ranges[2g+1]) (possibly empty) read from this
  // device array, and it stores into slice g of D [G, M, N]. Null for the dense GEMM.
  const int* kb_ranges;
};

// Where unit u's work lies: tile (mt, nt) and its k-block range.
struct Unit {
  int m0, n0, kb_begin, kb_end, split;
};

template <int BM, int BN>
__device__ inline Unit unit_at(const Params& p, int u) {
  const int tile = u / p.splits;
  const int split = u % p.splits;
  const int band = tile / (kGroupM * p.n_tiles);
  const int first_m = band * kGroupM;
  const int band_rows = p.m_tiles - first_m < kGroupM ? p.m_tiles - first_m : kGroupM;
  const int in_band = tile % (kGroupM * p.n_tiles);
  Unit w;
  w.m0 = (first_m + in_band % band_rows) * BM;
  w.n0 = (in_band / band_rows) * BN;
  if (p.kb_ranges != nullptr) {
    w.kb_begin = p.kb_ranges[2 * split];
    w.kb_end = p.kb_ranges[2 * split + 1];
  } else {
    w.kb_begin = split * p.kb_per_split;
    w.kb_end = w.kb_begin + p.kb_per_split < p.num_kb ? w.kb_begin + p.kb_per_split : p.num_kb;
  }
  w.split = split;
  return w;
}

template <int BM, int BN, int INTERVAL, int CLUSTER>
__global__ void __launch_bounds__((BM / 64 + 1) * 128, 1)
    fp8_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                    const __grid_constant__ CUtensorMap d_map, const Params p) {
  using Layout = SharedLayout<BM, BN>;
  constexpr int STAGES = Layout::stages;
  extern __shared__ std::uint8_t smem_raw[];
  const std::uint32_t raw = sm90::shared_address(smem_raw);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  std::uint8_t* smem = smem_raw + (base - raw);
  const std::uint32_t full_bar = base + Layout::barrier_offset;  // full[s] at full_bar + 8 s
  const std::uint32_t empty_bar = full_bar + STAGES * 8;         // empty[s] at empty_bar + 8 s
  constexpr int kConsumers = BM / 64;

  if (threadIdx.x == 0) {
    sm90::prefetch_tensor_map(&a_map);
    sm90::prefetch_tensor_map(&b_map);
    sm90::prefetch_tensor_map(&d_map);
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbarrier_init(full_bar + 8 * s, 1);
      // One arrival per consumer warp of every CTA that this CTA's producer writes into.
      sm90::mbarrier_init(empty_bar + 8 * s, kConsumers * 4 * CLUSTER);
    }
    sm90::mbarrier_init_fence();
  }
  // In a cluster the peers' copies and arrivals name this CTA's barriers: all initialised first.
  if constexpr (CLUSTER > 1) sm90::cluster_sync();
  else __syncthreads();
  // Cluster c (CTAs CLUSTER·c .. CLUSTER·c + CLUSTER − 1, rank = blockIdx.x % CLUSTER) takes units c,
  // c + clusters, ...; a unit is CLUSTER M-tiles stacked, rank r working on the r-th.
  const int rank = CLUSTER > 1 ? static_cast<int>(sm90::cluster_rank()) : 0;
  const int first_unit = static_cast<int>(blockIdx.x) / CLUSTER, unit_stride = static_cast<int>(gridDim.x) / CLUSTER;
  const auto unit = [&](int u) {
    Unit w = unit_at<BM * CLUSTER, BN>(p, u);
    w.m0 += rank * BM;
    return w;
  };

  // Through lane 0 (sm90::warp_uniform) so that the compiler knows it is warp-uniform: the
  // consumers' tile addresses and wgmma descriptors derived from it then live in uniform registers.
  const int warpgroup = sm90::warp_uniform(static_cast<int>(threadIdx.x / 128));
  if (warpgroup == 0) {
    // ---- producer ----
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    Ring ring{0, 0};
    for (int u = first_unit; u < p.units; u += unit_stride) {
      const Unit w = unit(u);
      // Scale runs are clipped to the scale arrays' leading dimension (a multiple of 4 floats, so
      // the byte count stays a multiple of 16; none for a cluster's tile wholly past M); entries past
      // M or N are never used.
      const std::int64_t a_scale_count = std::max<std::int64_t>(0, std::min<std::int64_t>(p.a_scale_ld - w.m0, BM));
      const std::int64_t b_scale_count = p.b_scale_ld - w.n0 < BN ? p.b_scale_ld - w.n0 : BN;
      StageSource s{};
      s.a_row = w.m0;
      s.a_scale_bytes = 4u * static_cast<std::uint32_t>(a_scale_count);
      s.b_scale_bytes = p.b_rowwise ? 4u * static_cast<std::uint32_t>(b_scale_count) : 0u;
      s.b_rowwise = p.b_rowwise;
      // The weight block's scale for each k-block is loaded one k-block ahead (so its latency hides
      // behind the wait for a free stage); fill_stage stores it into the stage.
      const float* b_block_scales = p.b_scale + (w.n0 / 128) * p.b_scale_ld;
      float next_b_scale = p.b_rowwise ? 0.f : __ldg(b_block_scales + w.kb_begin);
      for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
        s.b_block_scale = next_b_scale;
        if (!p.b_rowwise && kb + 1 < w.kb_end) next_b_scale = __ldg(b_block_scales + kb + 1);
        s.k = kb * kBlockK;
        s.a_scales = p.a_scale + kb * p.a_scale_ld + w.m0;
        s.b_scales = p.b_scale + kb * p.b_scale_ld + w.n0;
        fill_stage<Layout>(smem, base, full_bar, empty_bar, ring, &a_map, s, [&](std::uint32_t dst, std::uint32_t bar) {
          if constexpr (CLUSTER == 1) {
            sm90::tma_load_2d(dst, &b_map, kb * kBlockK, w.n0, bar);
          } else {
            // The cluster's CTAs share the B tile: rank r copies rows [r, r + 1) · BN / CLUSTER of it
            // into every CTA (b_map's box is BN / CLUSTER rows; whole 8-row swizzle atoms, so the
            // shares line up with the tile's swizzle).
            constexpr int kShare = BN / CLUSTER;
            sm90::tma_load_2d_multicast(dst + rank * kShare * kBlockK, &b_map, kb * kBlockK, w.n0 + rank * kShare, bar,
                                        static_cast<std::uint16_t>((1u << CLUSTER) - 1));
          }
        });
      }
    }
    await_last_releases<Layout, CLUSTER>(empty_bar, ring);
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int t = threadIdx.x % 128;
  const int lane = t % 32;
  const int row0 = consumer * 64 + (t / 32) * 16 + lane / 4;  // this thread's rows in the tile: row0, row0 + 8
  const int col_in_chunk = 2 * (lane % 4);                   // and columns 8c + col_in_chunk + {0, 1}
  constexpr int kFragment = BN / 2;
  Ring wait_ring{0, 0}, release_ring{0, 0};
  // Turns on hardware barriers 1 and 2 (the epilogue's are 3 and 4); every unit of a CTA has the
  // same k-block run for both consumers, so both take the same number of turns.
  const sm90::PingPong turns{p.promote && p.pingpong && kConsumers == 2, consumer};
  turns.start();

  for (int u = first_unit; u < p.units; u += unit_stride) {
    const Unit w = unit(u);
    float acc[kFragment];
#pragma unroll
    for (int i = 0; i < kFragment; ++i) acc[i] = 0.f;

    if (!p.promote) {
      // The whole K in the tensor cores' accumulator, scaled once (the unit's first k-block scales).
      float final_scale0 = 1.f, final_scale1 = 1.f;
      for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
        sm90::mbarrier_wait(full_bar + 8 * wait_ring.stage, wait_ring.phase);
        const std::uint32_t a_tile = base + Layout::a_offset + wait_ring.stage * Layout::a_tile + consumer * 64 * kBlockK;
        const std::uint32_t b_tile = base + Layout::b_offset + wait_ring.stage * Layout::b_tile;
        const std::uint64_t a_desc = sm90::smem_descriptor_k_major_sw128(a_tile);
        const std::uint64_t b_desc = sm90::smem_descriptor_k_major_sw128(b_tile);
        sm90::fence_registers(acc);
        sm90::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBlockK / 32; ++ks) sm90::WgmmaE4m3<BN>::mma(acc, a_desc + 2 * ks, b_desc + 2 * ks, 1);
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        sm90::fence_registers(acc);
        if (kb == w.kb_begin) {
          const float* a_scales =
              reinterpret_cast<const float*>(smem + Layout::a_scale_offset + wait_ring.stage * Layout::a_scale_stride);
          const float sb = reinterpret_cast<const float*>(smem + Layout::b_scale_offset)[wait_ring.stage * BN];
          final_scale0 = a_scales[row0] * sb;
          final_scale1 = a_scales[row0 + 8] * sb;
        }
        release<CLUSTER>(empty_bar, wait_ring, lane);
        wait_ring.advance(STAGES);
        release_ring.advance(STAGES);
      }
#pragma unroll
      for (int c = 0; c < BN / 8; ++c) {
        acc[4 * c + 0] *= final_scale0;
        acc[4 * c + 1] *= final_scale0;
        acc[4 * c + 2] *= final_scale1;
        acc[4 * c + 3] *= final_scale1;
      }
    } else if (w.kb_end > w.kb_begin) {  // an empty run (a k-grouped GEMM's empty group) stores zeros
      if (p.b_rowwise)
        promoted_mainloop<Layout, INTERVAL, true, CLUSTER>(acc, w.kb_end - w.kb_begin, smem, base, full_bar, empty_bar,
                                                  wait_ring, release_ring, consumer, row0, col_in_chunk, lane, turns);
      else
        promoted_mainloop<Layout, INTERVAL, false, CLUSTER>(acc, w.kb_end - w.kb_begin, smem, base, full_bar, empty_bar,
                                                   wait_ring, release_ring, consumer, row0, col_in_chunk, lane, turns);
    }

    // ---- epilogue: registers -> shared memory -> TMA store into D (or the split's workspace slice) ----
    // The warpgroup's 64 × BN tile is staged in boxes of 64 rows × 128 bytes in the 128-byte swizzle
    // (16-byte chunk index XOR row % 8), which keeps the fragment stores free of bank conflicts; one
    // thread then issues the TMA stores, which clip rows and columns outside D, and the warpgroup
    // moves on to its next unit while they drain. The staging tile holds 64 × BN bf16 values, so
    // FP32 outputs go out in two passes of half the columns.
    const int barrier_id = 3 + consumer;  // 1 and 2 are the turns'
    const bool storer = t == 0;
    const std::uint32_t out_tile = base + Layout::out_offset + consumer * Layout::out_tile;
    const int row_local = (t / 32) * 16 + lane / 4;
    const int out_bytes = p.out_is_fp32 ? 4 : 2;
    const int box_cols = 128 / out_bytes;
    const int passes = p.out_is_fp32 ? 2 : 1;
    const int pass_cols = BN / passes;
    for (int pass = 0; pass < passes; ++pass) {
      if (storer) sm90::bulk_wait_read<0>();  // earlier stores have read the staging tile
      sm90::named_barrier_sync(barrier_id, 128);
      stage_fragment<BN>(acc, smem + (out_tile - base), row_local, col_in_chunk, pass, p.out_is_fp32);
      sm90::fence_proxy_async_shared();
      sm90::named_barrier_sync(barrier_id, 128);
      if (storer) {
        const int boxes = pass_cols * out_bytes / 128;
        for (int b = 0; b < boxes; ++b)
          sm90::tma_store_3d(&d_map, out_tile + b * 64 * 128, w.n0 + pass * pass_cols + b * box_cols,
                             w.m0 + consumer * 64, p.splits > 1 ? w.split : 0);
        sm90::bulk_commit();
      }
    }
  }
  turns.finish();
  if (t == 0) sm90::bulk_wait<0>();  // shared memory must outlive the stores that read it
}

// D = sum over splits of the workspace, in split order (deterministic), rounded once to D's type.
// Four consecutive elements per thread (N is a multiple of 16, so rows hold whole quads).
static __global__ void reduce_splits_kernel(const float* workspace, int splits, int m, int n, void* d, std::int64_t ldd,
                                     int d_is_bf16) {
  const std::int64_t quads = static_cast<std::int64_t>(m) * n / 4;
  const std::int64_t slice = static_cast<std::int64_t>(m) * n;
  for (std::int64_t q = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; q < quads;
       q += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float4 sum = reinterpret_cast<const float4*>(workspace)[q];
    for (int s = 1; s < splits; ++s) {
      const float4 v = reinterpret_cast<const float4*>(workspace + s * slice)[q];
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    const std::int64_t row = 4 * q / n, col = 4 * q % n;
    if (d_is_bf16) {
      auto* out = static_cast<__nv_bfloat16*>(d) + row * ldd + col;
      reinterpret_cast<__nv_bfloat162*>(out)[0] = __floats2bfloat162_rn(sum.x, sum.y);
      reinterpret_cast<__nv_bfloat162*>(out)[1] = __floats2bfloat162_rn(sum.z, sum.w);
    } else {
      auto* out = static_cast<float*>(d) + row * ldd + col;
      reinterpret_cast<float2*>(out)[0] = make_float2(sum.x, sum.y);
      reinterpret_cast<float2*>(out)[1] = make_float2(sum.z, sum.w);
    }
  }
}

// ---- host side ------------------------------------------------------------------------------------

// The output as a 3-D tensor [z, rows, cols] (z: the split of a split-K workspace, 1 for D), written
// as boxes of 64 rows × 128 bytes in the 128-byte swizzle from the consumers' staging tiles.
inline CUtensorMap make_output_map(void* data, bool fp32, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                   std::int64_t slices) {
  CUtensorMap map{};
  const int bytes = fp32 ? 4 : 2;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(slices)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(ld * bytes), static_cast<cuuint64_t>(ld * bytes * rows)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(128 / bytes), 64, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r =
      sm90::encode_tiled()(&map, fp32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, data,
                           dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, "fp8_gemm", "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a [", rows,
        ", ", cols, "] output with row stride ", ld);
  return map;
}

// Persistent (kernels/common/launch.cuh, launch_persistent: one CTA an SM or as many clusters of
// CLUSTER as fit, never more than the units; the shared memory past the 48 KiB default opted into
// per device, so every GPU of the process can run it).
template <int BM, int BN, int INTERVAL, int CLUSTER>
void launch(const CUtensorMap& a_map, const CUtensorMap& b_map, const CUtensorMap& d_map, const Params& p, int device,
            cudaStream_t stream) {
  launch_persistent(fp8_gemm_kernel<BM, BN, INTERVAL, CLUSTER>, p.units, (BM / 64 + 1) * 128,
                    SharedLayout<BM, BN>::bytes_with_alignment, stream, device, CLUSTER, a_map, b_map, d_map, p);
}

template <int BM, int BN, int CLUSTER = 1>
void launch_with_interval(int interval, const CUtensorMap& a_map, const CUtensorMap& b_map, const CUtensorMap& d_map,
                          const Params& p, int device, cudaStream_t stream) {
  if (interval == 32) launch<BM, BN, 32, CLUSTER>(a_map, b_map, d_map, p, device, stream);
  else if (interval == 64) launch<BM, BN, 64, CLUSTER>(a_map, b_map, d_map, p, device, stream);
  else launch<BM, BN, 128, CLUSTER>(a_map, b_map, d_map, p, device, stream);
}

}  // namespace fp8_hopper

// Whether the Hopper kernel can run these arguments on their device (else use the plain kernel).
inline bool fp8_gemm_hopper_supports(const Fp8GemmArgs& g) {
  return device_info(g.launch.device).major == 9 && g.k % 16 == 0 && g.n % 16 == 0 && g.lda % 16 == 0 &&
         g.ldb % 16 == 0 && g.a_scale_ld % 4 == 0 && (g.b_tile_rows == 128 || g.b_scale_ld % 4 == 0) &&
         (g.ldd * (g.d_dtype == DType::f32 ? 4 : 2)) % 16 == 0 && aligned16(g.a) && aligned16(g.b) && aligned16(g.a_scale) && aligned16(g.b_scale) &&
         aligned16(g.d) && g.m <= 0x7fffffff && g.n <= 0x7fffffff && g.k <= 0x7fffffff;
}

// The tile configuration. Large problems: 128 × 128 tiles (two consumer warpgroups), one unit per
// tile. Small M: 64-row tiles, narrower N tiles when that alone fills the SMs, then K split into
// runs of at least 4 k-blocks until the units cover the SMs. cluster: 2 when 128 × 128 tiles
// without split run as pairs of vertically adjacent tiles in 2-CTA clusters, each CTA copying half
// of the pair's shared B tile into both (TMA multicast): a k-block then reads 24 KiB from L2 a CTA
// instead of 32 KiB (the 128 × 128 tile's 128 FLOP a byte would need about 15 TB/s of L2 at the
// tensor cores' FP8 peak). Set by the launcher (fp8_multicast_enabled).
struct Fp8GemmPlan {
  int bm, bn, splits, kb_per_split, cluster = 1;
};

inline Fp8GemmPlan fp8_gemm_hopper_plan(std::int64_t m, std::int64_t n, std::int64_t k, int sms) {
  const std::int64_t num_kb = (k + 127) / 128;
  Fp8GemmPlan plan{m <= 64 ? 64 : 128, 128, 1, static_cast<int>(num_kb)};
  const auto tiles = [&](int bn) { return ((m + plan.bm - 1) / plan.bm) * ((n + bn - 1) / bn); };
  if (tiles(128) < sms && tiles(64) <= sms) plan.bn = 64;
  const std::int64_t t = tiles(plan.bn);
  if (t < sms) {
    const std::int64_t want = std::max<std::int64_t>(1, std::min<std::int64_t>(sms / t, num_kb / 4));
    plan.kb_per_split = static_cast<int>((num_kb + want - 1) / want);
    plan.splits = static_cast<int>((num_kb + plan.kb_per_split - 1) / plan.kb_per_split);
  }
  return plan;
}

// Launches D = A · Bᵀ (args.hpp) on g.launch. workspace: splits · M · N floats when the plan splits K
// (fp8_gemm_hopper_workspace tells how many), else unused.
inline std::int64_t fp8_gemm_hopper_workspace(const Fp8GemmArgs& g) {
  const Fp8GemmPlan plan = fp8_gemm_hopper_plan(g.m, g.n, g.k, device_info(g.launch.device).sms);
  return plan.splits > 1 ? static_cast<std::int64_t>(plan.splits) * g.m * g.n : 0;
}

// Returns the variant that ran: "hopper", "hopper_split_k" or "hopper_multicast" (2-CTA clusters).
inline const char* launch_fp8_gemm_hopper(const Fp8GemmArgs& g, float* workspace) {
  using namespace fp8_hopper;
  const int device = g.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = g.launch.stream;
  check(fp8_gemm_hopper_supports(g), "fp8_gemm",
        "the Hopper kernel needs an sm_90 GPU, K and N multiples of 16 (got M=", g.m, ", N=", g.n, ", K=", g.k,
        "), 16-byte aligned operands and scale leading dimensions that are multiples of 4");
  check(g.d_dtype == DType::bf16 || g.d_dtype == DType::f32, "fp8_gemm", "output must be bfloat16 or float32, got ",
        g.d_dtype);
  check(g.promotion_interval == 32 || g.promotion_interval == 64 || g.promotion_interval == 128, "fp8_gemm",
        "promotion interval must be 32, 64 or 128 elements of K, got ", g.promotion_interval);
  check(g.promote || g.b_tile_rows == 128, "fp8_gemm",
        "accumulating without promotion is implemented for 128x128 weight blocks only");
  const int sms = device_info(device).sms;
  Fp8GemmPlan plan = fp8_gemm_hopper_plan(g.m, g.n, g.k, sms);
  if (plan.bm == 128 && plan.bn == 128 && plan.splits == 1 && g.m > 128 && fp8_multicast_enabled()) plan.cluster = 2;
  Params p{};
  p.m = static_cast<int>(g.m);
  p.n = static_cast<int>(g.n);
  p.k = static_cast<int>(g.k);
  p.num_kb = static_cast<int>((g.k + 127) / 128);
  p.a_scale = g.a_scale;
  p.a_scale_ld = g.a_scale_ld;
  p.b_scale = g.b_scale;
  p.b_scale_ld = g.b_scale_ld;
  p.b_rowwise = g.b_tile_rows == 1;
  p.promote = g.promote;
  p.pingpong = fp8_pingpong_enabled();
  p.out_is_fp32 = plan.splits > 1 || g.d_dtype == DType::f32;
  // With clusters, m_tiles and units count the clusters' stacks of plan.cluster M-tiles.
  p.m_tiles = static_cast<int>((g.m + plan.bm * plan.cluster - 1) / (plan.bm * plan.cluster));
  p.n_tiles = static_cast<int>((g.n + plan.bn - 1) / plan.bn);
  p.splits = plan.splits;
  p.kb_per_split = plan.kb_per_split;
  p.units = p.m_tiles * p.n_tiles * p.splits;
  check(plan.splits == 1 || workspace != nullptr, "fp8_gemm", "the split-K plan needs a workspace");
  const CUtensorMap a_map = make_tensor_map(g.a, g.m, g.k, g.lda, plan.bm);
  const CUtensorMap b_map = make_tensor_map(g.b, g.n, g.k, g.ldb, plan.bn / plan.cluster);
  const CUtensorMap d_map = plan.splits > 1
                                ? make_output_map(workspace, true, g.m, g.n, g.n, plan.splits)
                                : make_output_map(g.d, g.d_dtype == DType::f32, g.m, g.n, g.ldd, 1);
  const int interval = g.promotion_interval;
  if (plan.cluster == 2) launch_with_interval<128, 128, 2>(interval, a_map, b_map, d_map, p, device, stream);
  else if (plan.bm == 128 && plan.bn == 128)
    launch_with_interval<128, 128>(interval, a_map, b_map, d_map, p, device, stream);
  else if (plan.bm == 128) launch_with_interval<128, 64>(interval, a_map, b_map, d_map, p, device, stream);
  else if (plan.bn == 128) launch_with_interval<64, 128>(interval, a_map, b_map, d_map, p, device, stream);
  else launch_with_interval<64, 64>(interval, a_map, b_map, d_map, p, device, stream);
  if (plan.splits > 1) {
    const std::int64_t quads = g.m * g.n / 4;
    const int blocks = static_cast<int>(std::min<std::int64_t>((quads + 255) / 256, 4 * sms));
    reduce_splits_kernel<<<blocks, 256, 0, stream>>>(workspace, plan.splits, p.m, p.n, g.d, g.ldd,
                                                     g.d_dtype == DType::bf16);
    KILN_CUDA_CHECK_LAUNCH();
  }
  return plan.splits > 1 ? "hopper_split_k" : plan.cluster > 1 ? "hopper_multicast" : "hopper";
}

}  // namespace kiln::kernels
