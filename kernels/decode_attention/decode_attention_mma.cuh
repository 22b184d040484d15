// decode_attention on tensor cores (arguments args.hpp, chosen by DecodeAttentionArgs::
// implementation: DecodeKernel::mma; the CUDA-core kernel is decode_attention.cuh, whose launcher
// calls this one). MLA's absorbed decode only: bf16, one kv head whose cache row is [latent |
// rope key] (dk 288 = 256 + 32, kiln's big config; or 576 = 512 + 64, DeepSeek-V3's), the values
// the row's first dv = 256 (512) columns (v a view of k), either cache layout, 1 or 2 query
// tokens, the sequence split and its combine (split_combine.cuh) shared with the CUDA-core kernel.
//
// Why. With one kv head every query head of a sequence reads the same keys, so a sequence's
// T x H query rows are the M dimension of two matrix products per key tile, S = Q·Kᵀ and O += P·V,
// exactly FlashAttention-2's forward with the heads in place of the query positions (FlashMLA's
// view of MLA decode). The CUDA-core kernel does those FLOPs as FMAs: 16 TFLOP/s at 128 heads x 2
// tokens (docs/mla.md), where the FLOPs per cache byte (~1.9 T H) are far above what CUDA cores
// serve. mma.sync m16n8k16 (common/mma_sm80.cuh) runs on every GPU from sm_80 on, where the
// kernel's shared memory fits the GPU's limit (mma_applies); on sm_90 at (288, 256) the Hopper
// kernel (decode_attention_hopper.cuh: wgmma, TMA) takes these problems instead.
//
// Work split. One block of 4 warps (8 at dv 512, below) per (sequence, chunk of 64 query rows,
// split). Row i of a chunk is query t = i / H of head i % H (q and out are contiguous in i). The
// block walks its split's keys in tiles of 64, double-buffered in shared memory by cp.async: each
// thread copies 16-byte pieces of key rows, finding a key's block through the table (paged) or
// its slot (contiguous), keys at or past the split's end zero-filled. The 4 warps are R row warps
// x G key groups (R G = 4): warp w owns query rows 16 (w % R) .. + 15 and, of every tile, the
// 64 / G keys of group w / R. Per tile a warp computes its 16 x 64 / G scores (18 k steps of
// 8 / G mma at dk 288), masks keys past each row's limit (lengths[a] − (T − 1 − t): query 0 of 2
// does not see its draft), updates its own online softmax in base 2 (running max m and sum l per
// row over the keys its group sees; the accumulator rescaled by exp2(m_old − m_new)), and
// accumulates O += P·V with P from its registers and V the first 256 columns of the same keys
// (4 / G k steps of 32 mma). A group whose keys of the tile all lie at or past the end skips it.
//
// Key groups, why: a warp's serial chain a tile (S 144 mma, P·V 128, their ldmatrix latencies,
// one warp a sub-partition) takes ~4.8 us on an H200 whether 1 or 4 warps run it, so a block with
// 16 real rows and one computing warp is bound by that chain, not by DRAM (32 sequences x 4096
// keys x 4 heads: 0.33 of the copy bandwidth). The common decode shapes have few rows (12-16
// heads x 1 token, 12 x 2), so the launcher takes R = ceil(rows / 16) rounded up to a power of
// two (rows = T H when they make one chunk; several chunks: R = 4) and G = 4 / R: 16 rows or
// fewer G 4 (16 keys a warp), 17-32 G 2 (32 keys), more G 1. Each group's state is exact
// softmax algebra over its keys, so after the last tile (the tiles' shared memory then free) the
// groups of 16 rows merge theirs: every warp stores O (its fragments in lane order: float4
// stores, conflict-free), m and the quad-summed l, and after a barrier warp w combines the G
// states of its rows for slice w / R of its columns (256 / G of them; every warp writes a share):
//   M = max_g m_g,  L = Σ_g l_g exp2(m_g − M),  O = Σ_g O_g exp2(m_g − M)
// (a group with m_g = −inf, no key seen, weighs 0; all −inf: the base 0, L = 0, M −inf), in order
// (the same bits every run). G 1 skips the merge. Warps whose 16 rows are all padding (33-48
// rows: the fourth; a last partial chunk: those past its rows) skip the products and only copy.
// At the end: out = O / L (rows without keys: zeros), or with a split the partial state
// (M ln 2, L, O) to the workspace, the CUDA-core kernel's layout, combined by
// decode_combine_kernel.
//
// DeepSeek-V3's dv 512: a warp's O would be 256 floats a thread, so two warps share each 16 rows
// and keys (8 warps a block: the 4 above for each half), each accumulating 256 of the output
// columns and each computing the rows' scores itself: S twice, 576 of the 1664 FLOPs a (row, key)
// spent beyond the 1088 needed, in exchange for no exchange of probabilities between warps
// (FlashMLA shares them through shared memory instead: a next step if the tensor cores turn out
// to be the limit).
//
// Registers: O 16 x 256 floats a warp = 128 a thread, S 32 / G (ptxas, sm_90a, at both head-dim
// pairs: 247 at G 1, 244 at G 2, 194 at G 4, no spills); the merge, O stored, holds 128 / G sums.
// Shared memory: Q 64 rows and two key tiles of 64 rows, bf16 rows of dk + 8 (conflict-free
// ldmatrix): 113.7 KB at dk 288, 224.3 KB at 576, opted into per device; one block a
// multiprocessor. The merge reuses it: 16 KB of O and 128 bytes of m, l a warp, 64.5 KB (129 KB at
// dv 512).
//
// Bytes and FLOPs: each key row is read once per (chunk, split) block: 576 bytes; per query row
// and key 2 (288 + 256) FLOPs. At 128 heads x 2 tokens a key byte carries ~484 FLOPs (four chunks
// read each key, the later ones mostly from L2).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "kiln/core/environment.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/decode_attention/split_combine.cuh"

namespace kiln::kernels::decode_attention {

constexpr int kMmaRowWarps = 4;             // warps a column range: R row warps x G key groups, R G = 4
constexpr int kMmaRows = 16 * kMmaRowWarps;  // query rows a block (a chunk)
constexpr int kMmaKeys = 64;                 // keys a tile
constexpr int kMmaColumns = 256;             // output columns a warp accumulates (128 floats a thread)

// The compiled head dims: kiln's big config (latent 256 + rope 32) and DeepSeek-V3's (512 + 64).
// At dv 512 the output is split between two warps per 16 rows and keys (8 warps a block), each
// computing the rows' scores itself (S twice: 576 of 1664 FLOPs a (row, key) more than the 1088
// needed, in exchange for no exchange of P between warps).
template <int DV>
constexpr int mma_threads() {
  return 32 * kMmaRowWarps * (DV / kMmaColumns);
}
template <int DK>
constexpr std::size_t mma_smem_bytes() {
  return sizeof(bf16) * static_cast<std::size_t>((kMmaRows + 2 * kMmaKeys) * (DK + 8));
}
// The key groups' merge, in the same shared memory once the tiles are done: each warp's 16 x 256
// accumulator (float, fragment order), then its 16 rows' m and l.
template <int DV>
constexpr std::size_t mma_merge_bytes() {
  return sizeof(float) * static_cast<std::size_t>(mma_threads<DV>() / 32 * (16 * kMmaColumns + 2 * 16));
}

// G key groups (1, 2 or 4; the launcher's rule: mma_key_groups): G warps compute each 16 query rows,
// each over 64 / G keys of every tile, their states merged at the end (header).
template <int DK, int DV, int G>
__global__ void __launch_bounds__(mma_threads<DV>()) decode_attention_mma_kernel(DecodeAttentionArgs a) {
  using T = bf16;
  constexpr int SK = DK + 8;
  constexpr int kThreadsHere = mma_threads<DV>();
  constexpr int DW = kMmaColumns;    // this warp's output columns
  constexpr int R = kMmaRowWarps / G;  // row warps (16 rows each) a column range
  constexpr int KG = kMmaKeys / G;     // keys of a tile a key group computes
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  static_assert(DK % 16 == 0 && DV % kMmaColumns == 0 && DV <= DK, "k steps of 16; v is a prefix of k");
  static_assert(G == 1 || G == 2 || G == 4, "key groups of 64, 32 or 16 keys: P·V's k steps of 16");
  static_assert(mma_merge_bytes<DV>() <= mma_smem_bytes<DK>(), "the merge fits in the tiles' shared memory");
  extern __shared__ __align__(16) unsigned char decode_mma_smem[];
  T* const sQ = reinterpret_cast<T*>(decode_mma_smem);  // [kMmaRows][SK]
  T* const sK = sQ + kMmaRows * SK;                      // [2][kMmaKeys][SK]; the values: its first DV columns

  const std::int64_t seq = blockIdx.x;  // the batch row
  const int splits = a.splits;
  const int chunk = static_cast<int>(blockIdx.z) / splits, split = static_cast<int>(blockIdx.z) - chunk * splits;
  const int rows_per_seq = a.queries * a.heads;  // one kv head: every query row of the sequence
  const int first = chunk * kMmaRows;
  const int hc = ::min(kMmaRows, rows_per_seq - first);  // this block's real query rows (<= 16 R)
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp_id = tid >> 5;
  const int w = warp_id % kMmaRowWarps, column0 = warp_id / kMmaRowWarps * DW;  // within the column range; columns
  const int warp = w % R, group = w / R;  // the row warp (rows 16 warp ..) and the key group
  const int g = lane >> 2, t = lane & 3;

  const SplitKeys keys = split_keys(a, seq, split, kMmaKeys);
  const std::int64_t slot = keys.slot;
  const int L = keys.length, begin = keys.begin, end = keys.end;

  const bool partial = splits > 1;
  float* const ws = static_cast<float*>(a.workspace);
  const std::int64_t ws_acc = a.count * a.queries * a.heads * splits * 2;  // the accumulators' offset
  const std::int64_t row0 = seq * rows_per_seq + first;  // the block's first query row in q and out
  T* const out = static_cast<T*>(a.out) + row0 * DV;
  if (begin >= end) {  // the whole block leaves together
    write_no_keys(a, row0, hc, split, tid, kThreadsHere);
    return;
  }
  const TokenRows rows{a.block_table ? a.block_table + slot * a.max_blocks : nullptr, slot,
                       static_cast<int>(a.block_table ? a.block_tokens : a.capacity)};
  const std::int64_t num_blocks = a.block_table ? a.num_blocks : a.num_slots;
  // A paged row's table entries for tokens 0 .. L - 1 (every split of a row agrees).
  if (rows.bad_entries(L, num_blocks, tid, kThreadsHere)) {
    write_no_keys(a, row0, hc, split, tid, kThreadsHere);
    return;
  }

  const T* const k = static_cast<const T*>(a.k);
  // Keys [n0, n0 + kMmaKeys) of the sequence into a shared tile; keys at or past `end` zero-filled.
  auto load_keys = [&](T* dst, int n0) {
    constexpr int kPieces = DK / 8;  // 16-byte pieces a key row
    for (int i = tid; i < kMmaKeys * kPieces; i += kThreadsHere) {
      const int r = i / kPieces, c = (i - r * kPieces) * 8;
      const int j = n0 + r;
      const bool valid = j < end;
      std::int64_t block = 0;
      int row = 0;
      if (valid) rows.locate(j, block, row);
      sm80::cp_async_16(dst + r * SK + c, k + (valid ? block * a.k_slot_stride + row * a.k_row_stride + c : 0), valid);
    }
  };
  sm80::load_tile_async<T, kMmaRows, DK, kThreadsHere>(sQ, static_cast<const T*>(a.q) + row0 * DK, 0, hc);
  load_keys(sK, begin);
  sm80::cp_async_commit();

  // This thread's two rows (g and g + 8 of its warp's 16) and the keys each may see: j < limit.
  const bool active = 16 * warp < hc;  // the same for every warp of a row warp's key groups
  int limit[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = 16 * warp + g + 8 * r;  // within the chunk
    const int tq = (first + i) / a.heads;  // its query token
    limit[r] = i < hc ? ::min(end, L - (a.queries - 1 - tq)) : 0;
  }
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e;
  float o[DW / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  sm80::zero(o);

  int buf = 0;
  for (int n0 = begin; n0 < end; n0 += kMmaKeys, buf ^= 1) {
    if (n0 + kMmaKeys < end) {
      load_keys(sK + (buf ^ 1) * kMmaKeys * SK, n0 + kMmaKeys);
      sm80::cp_async_commit();
      sm80::cp_async_wait<1>();
    } else {
      sm80::cp_async_wait<0>();
    }
    __syncthreads();  // this tile (and Q) are in shared memory for every warp
    const int j0 = n0 + group * KG;  // this group's keys of the tile: j0 .. j0 + KG - 1
    if (active && j0 < end) {        // (keys at or past the end would add p = 0 and leave m, l, O as they are)
      const T* const keys = sK + (buf * kMmaKeys + group * KG) * SK;
      float sc[KG / 8][4];
      sm80::zero(sc);
      sm80::warp_mm_rows_rows<T, KG, DK>(sc, sQ + 16 * warp * SK, SK, keys, SK);
      float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < KG / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1, j = j0 + nt * 8 + 2 * t + (e & 1);
          const float x = j < limit[r] ? sc[nt][e] * scale_log2 : -INFINITY;
          sc[nt][e] = x;
          mt[r] = ::fmaxf(mt[r], x);
        }
      sm80::online_softmax_tile<KG, DW>(sc, mt, m, l, o);
      sm80::warp_mm_regs_rows<T, DW, KG>(o, sc, keys + column0, SK);
    }
    __syncthreads();  // every warp is done with this buffer before the next copy overwrites it
  }
  // (The last tile waited for every copy, and the barrier above: Q and the tiles are free.)

  // The result of this warp's rows for columns column0 + c0 .. + N − 1 from acc (N / 8 C fragments),
  // their max mm and quad-summed sum ll: out = acc / ll, or the split's partial state.
  auto finish = [&](const auto& acc, const float (&mm)[2], const float (&ll)[2], int c0) {
    constexpr int N = 8 * static_cast<int>(std::extent_v<std::remove_reference_t<decltype(acc)>>);
    if (!partial) {
      const float inv[2] = {ll[0] > 0.f ? 1.f / ll[0] : 0.f, ll[1] > 0.f ? 1.f / ll[1] : 0.f};
      sm80::store_rows<T, N>(out + column0 + c0, acc, 16 * warp, hc, inv, DV);
      return;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = 16 * warp + g + 8 * r;
      if (i >= hc) continue;
      const std::int64_t q_row = row0 + i;
      float* const dst = ws + ws_acc + (q_row * splits + split) * DV + column0 + c0 + 2 * t;
#pragma unroll
      for (int nt = 0; nt < N / 8; ++nt) {
        dst[nt * 8] = acc[nt][2 * r];
        dst[nt * 8 + 1] = acc[nt][2 * r + 1];
      }
      if (t == 0 && column0 + c0 == 0) {  // the row's state, once (every warp of the row holds the same)
        float* const ml = ws + (q_row * splits + split) * 2;
        ml[0] = mm[r] * kLn2;  // the natural-log state the combine expects: m = max_j scale · s_j
        ml[1] = ll[r];
      }
    }
  };

  if constexpr (G == 1) {
    if (!active) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = sm80::quad_sum(l[r]);
    finish(o, m, l, 0);
  } else {
    // The merge (header): warp warp_id's state at sO + warp_id 16 DW, O as float4 per (n tile,
    // lane), then m and l of its 16 rows at sML + 32 warp_id. Key group h of the same rows and
    // columns is warp warp_id + (h − group) R.
    float* const sO = reinterpret_cast<float*>(decode_mma_smem);
    float* const sML = sO + kThreadsHere / 32 * 16 * DW;
    if (active) {
#pragma unroll
      for (int r = 0; r < 2; ++r) l[r] = sm80::quad_sum(l[r]);
      float4* const mine = reinterpret_cast<float4*>(sO + warp_id * 16 * DW) + lane;
#pragma unroll
      for (int nt = 0; nt < DW / 8; ++nt) mine[nt * 32] = make_float4(o[nt][0], o[nt][1], o[nt][2], o[nt][3]);
      if (t == 0)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          sML[32 * warp_id + g + 8 * r] = m[r];
          sML[32 * warp_id + 16 + g + 8 * r] = l[r];
        }
    }
    __syncthreads();  // every group's state is in shared memory (reached by every thread)
    if (!active) return;
    constexpr int NS = DW / G;  // the columns this warp merges: its group's share of the column range
    const int warp0 = warp_id - group * R;  // key group 0 of these rows and columns
    float mg[G][2], mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mg[h][r] = sML[32 * (warp0 + h * R) + g + 8 * r];
        mx[r] = ::fmaxf(mx[r], mg[h][r]);
      }
    const float base[2] = {mx[0] == -INFINITY ? 0.f : mx[0], mx[1] == -INFINITY ? 0.f : mx[1]};
    float os[NS / 8][4], ls[2] = {0.f, 0.f};
    sm80::zero(os);
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const int from = warp0 + h * R;
      float f[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        f[r] = exp2f(mg[h][r] - base[r]);  // 0 where the group saw no key (m −inf)
        ls[r] += sML[32 * from + 16 + g + 8 * r] * f[r];
      }
      const float4* const theirs = reinterpret_cast<const float4*>(sO + from * 16 * DW) + group * (NS / 8) * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < NS / 8; ++nt) {
        const float4 v = theirs[nt * 32];
        os[nt][0] += v.x * f[0];
        os[nt][1] += v.y * f[0];
        os[nt][2] += v.z * f[1];
        os[nt][3] += v.w * f[1];
      }
    }
    finish(os, mx, ls, group * NS);
  }
}

// Whether the tensor-core kernel computes this problem (args.hpp, DecodeKernel::mma).
inline bool mma_applies(const DecodeAttentionArgs& a) {
  const bool dims = (a.dk == 288 && a.dv == 256) || (a.dk == 576 && a.dv == 512);
  if (!dims) return false;
  // Its shared memory (113.7 KB at 288, 224.3 KB at 576) must fit the GPU's opt-in limit: the A100
  // takes 164 KB, sm_86/89 99 KB; there the CUDA-core kernel computes the problem.
  const std::size_t smem = a.dk == 288 ? mma_smem_bytes<288>() : mma_smem_bytes<576>();
  if (smem > static_cast<std::size_t>(device_info(a.launch.device).smem_per_block_optin)) return false;
  return a.dtype == DType::bf16 && !a.latent && a.kv_heads == 1 && a.v == a.k &&
         a.v_slot_stride == a.k_slot_stride && a.v_row_stride == a.k_row_stride && a.k_slot_stride % 8 == 0 &&
         a.k_row_stride % 8 == 0 && aligned16(a.k) && aligned16(a.q) && aligned16(a.out);
}

// Query-row chunks of 64 a sequence, and the splits (`wanted` >= 1: that many; 0: chosen).
inline int mma_chunks(const DecodeAttentionArgs& a) { return (a.queries * a.heads + kMmaRows - 1) / kMmaRows; }
inline int mma_splits(const DecodeAttentionArgs& a, const DeviceInfo& info, int wanted) {
  return sequence_splits(a.count * mma_chunks(a), a.capacity, info.sms, wanted);
}

// The key groups G (header): the row warps a sequence's T H query rows need, R = ceil(T H / 16)
// rounded up to a power of two (several chunks: 4), leave G = 4 / R warps to each 16 rows: 16 rows
// or fewer 4 (12 or 16 heads x 1 token), 17-32 rows 2 (12 or 16 heads x 2 tokens), more 1.
// G = 2 and 4 pass their tests (H100, 2026-12-05) and were faster than G = 1 at every shape but
// one on an H200, two rounds each (docs/mla.md); the H100's one 3× slower figure did not repeat.
// KILN_DECODE_KEY_GROUPS=off in the environment (read at each launch: the tests switch it) keeps
// G = 1 everywhere.
inline int mma_key_groups(const DecodeAttentionArgs& a) {
  if (environment_is("KILN_DECODE_KEY_GROUPS", "off")) return 1;
  const std::int64_t rows = static_cast<std::int64_t>(a.queries) * a.heads;
  return rows <= 16 ? 4 : rows <= 32 ? 2 : 1;
}

// The kernel and, with a split (a.splits > 1, its workspace allocated by the front-end), the combine.
inline void launch_decode_attention_mma(const DecodeAttentionArgs& a) {
  const char* op = "decode_attention";
  const int chunks = mma_chunks(a);
  check(a.splits >= 1 && a.splits <= kDecodeMaxSplits && (a.splits == 1 || a.workspace) &&
            static_cast<std::int64_t>(chunks) * a.splits <= 65535,
        op, "splits ", a.splits, " must be in [1, ", kDecodeMaxSplits, "], with a workspace when over 1, for ", chunks,
        " chunks of query rows");
  cuda::DeviceGuard guard(a.launch.device);
  const dim3 grid(static_cast<unsigned>(a.count), 1, static_cast<unsigned>(chunks * a.splits));
  auto launch = [&](auto dk, auto dv, auto groups) {
    constexpr int DK = decltype(dk)::value, DV = decltype(dv)::value, G = decltype(groups)::value;
    constexpr std::size_t smem = mma_smem_bytes<DK>();
    auto* kernel = decode_attention_mma_kernel<DK, DV, G>;
    opt_in_shared_memory(kernel, smem, a.launch.device);
    kernel<<<grid, mma_threads<DV>(), smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  };
  auto with_groups = [&](auto dk, auto dv) {
    const int groups = mma_key_groups(a);
    if (groups == 4) launch(dk, dv, std::integral_constant<int, 4>{});
    else if (groups == 2) launch(dk, dv, std::integral_constant<int, 2>{});
    else launch(dk, dv, std::integral_constant<int, 1>{});
  };
  if (a.dk == 576) with_groups(std::integral_constant<int, 576>{}, std::integral_constant<int, 512>{});
  else with_groups(std::integral_constant<int, 288>{}, std::integral_constant<int, 256>{});
  record_kernel_variant("decode_attention", "mma");
  if (a.splits > 1) launch_decode_combine<bf16>(a);
}

}  // namespace kiln::kernels::decode_attention
