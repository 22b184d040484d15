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
// kernel's shared memory fits the GPU's limit (mma_applies); Hopper's wgmma would be faster still
// (issue 15's next step).
//
// Work split. One block of 4 warps (8 at dv 512, below) per (sequence, chunk of 64 query rows,
// split); warp w owns
// query rows 16 w .. 16 w + 15 of the chunk (row i = query t = i / H of head i % H: q and out are
// contiguous in i). The block walks its split's keys in tiles of 64, double-buffered in shared
// memory by cp.async: each thread copies 16-byte pieces of key rows, finding a key's block
// through the table (paged) or its slot (contiguous), keys at or past the split's end
// zero-filled. Per tile a warp computes its 16 x 64 scores (18 k steps of 8 mma), masks keys past
// each row's limit (lengths[a] − (T − 1 − t): query 0 of 2 does not see its draft), updates an
// online softmax in base 2 (running max m and sum l per row; the accumulator rescaled by
// exp2(m_old − m_new)), and accumulates O += P·V with P from its registers and V the first 256
// columns of the same key tile (4 k steps of 32 mma). Warps whose 16 rows are all padding (fewer
// than 64 query rows: 12 heads x 1 token use warp 0 only) skip the products and only copy.
// At the end: out = O / l (rows without keys: zeros), or with a split the partial state
// (m ln 2, l, O) to the workspace, the CUDA-core kernel's layout, combined by
// decode_combine_kernel.
//
// DeepSeek-V3's dv 512: a warp's O would be 256 floats a thread, so two warps share each 16 rows
// (8 warps a block), each accumulating 256 of the output columns and each computing the rows'
// scores itself: S twice, 576 of the 1664 FLOPs a (row, key) spent beyond the 1088 needed, in
// exchange for no exchange of probabilities between warps (FlashMLA shares them through shared
// memory instead: a next step if the tensor cores turn out to be the limit).
//
// Registers: O 16 x 256 floats a warp = 128 a thread, S 32 (ptxas: 247 at both head-dim pairs, no
// spills). Shared memory: Q 64 rows and two key tiles of 64 rows, bf16 rows of dk + 8
// (conflict-free ldmatrix): 113.7 KB at dk 288, 224.3 KB at 576, opted into per device; one block
// a multiprocessor.
//
// Bytes and FLOPs: each key row is read once per (chunk, split) block: 576 bytes; per query row
// and key 2 (288 + 256) FLOPs. At 128 heads x 2 tokens a key byte carries ~484 FLOPs (four chunks
// read each key, the later ones mostly from L2).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

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

constexpr int kMmaRowWarps = 4;             // warps along the query rows, 16 rows each
constexpr int kMmaRows = 16 * kMmaRowWarps;  // query rows a block
constexpr int kMmaKeys = 64;                 // keys a tile
constexpr int kMmaColumns = 256;             // output columns a warp accumulates (128 floats a thread)

// The compiled head dims: kiln's big config (latent 256 + rope 32) and DeepSeek-V3's (512 + 64).
// At dv 512 the output is split between two warps per 16 rows (8 warps a block), each computing
// the rows' scores itself (S twice: 576 of 1664 FLOPs a (row, key) more than the 1088 needed, in
// exchange for no exchange of P between warps).
template <int DV>
constexpr int mma_threads() {
  return 32 * kMmaRowWarps * (DV / kMmaColumns);
}
template <int DK>
constexpr std::size_t mma_smem_bytes() {
  return sizeof(bf16) * static_cast<std::size_t>((kMmaRows + 2 * kMmaKeys) * (DK + 8));
}

template <int DK, int DV>
__global__ void __launch_bounds__(mma_threads<DV>()) decode_attention_mma_kernel(DecodeAttentionArgs a) {
  using T = bf16;
  constexpr int SK = DK + 8;
  constexpr int kThreadsHere = mma_threads<DV>();
  constexpr int DW = kMmaColumns;  // this warp's output columns
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  static_assert(DK % 16 == 0 && DV % kMmaColumns == 0 && DV <= DK, "k steps of 16; v is a prefix of k");
  extern __shared__ __align__(16) unsigned char decode_mma_smem[];
  T* const sQ = reinterpret_cast<T*>(decode_mma_smem);  // [kMmaRows][SK]
  T* const sK = sQ + kMmaRows * SK;                      // [2][kMmaKeys][SK]; the values: its first DV columns

  const std::int64_t seq = blockIdx.x;  // the batch row
  const int splits = a.splits;
  const int chunk = static_cast<int>(blockIdx.z) / splits, split = static_cast<int>(blockIdx.z) - chunk * splits;
  const int rows_per_seq = a.queries * a.heads;  // one kv head: every query row of the sequence
  const int first = chunk * kMmaRows;
  const int hc = ::min(kMmaRows, rows_per_seq - first);  // this block's real query rows
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31;
  const int warp = (tid >> 5) % kMmaRowWarps, column0 = (tid >> 5) / kMmaRowWarps * DW;  // rows, columns
  const int g = lane >> 2, t = lane & 3;

  const std::int64_t slot = a.slots[seq];
  std::int64_t L64 = a.lengths[seq];
  if (slot < 0 || slot >= a.num_slots) L64 = 0;
  const int L = static_cast<int>(L64 < 0 ? 0 : (L64 > a.capacity ? a.capacity : L64));
  // This split's keys [begin, end): ceil(L / splits) rounded up to a tile.
  const int span = ((L + splits - 1) / splits + kMmaKeys - 1) / kMmaKeys * kMmaKeys;
  const int begin = ::min(split * span, L), end = ::min(begin + span, L);

  const bool partial = splits > 1;
  float* const ws = static_cast<float*>(a.workspace);
  const std::int64_t ws_acc = a.count * a.queries * a.heads * splits * 2;  // the accumulators' offset
  const std::int64_t row0 = seq * rows_per_seq + first;  // the block's first query row in q and out
  T* const out = static_cast<T*>(a.out) + row0 * DV;
  auto write_empty = [&] {  // no keys: zeros, or a split of weight 0
    for (int i = tid; i < hc * DV; i += kThreadsHere) {
      const int r = i / DV, c = i - r * DV;
      if (partial) ws[ws_acc + ((row0 + r) * splits + split) * DV + c] = 0.f;
      else out[i] = store<T>(0.f);
    }
    if (partial)
      for (int r = tid; r < hc; r += kThreadsHere) {
        float* const ml = ws + ((row0 + r) * splits + split) * 2;
        ml[0] = -INFINITY;
        ml[1] = 0.f;
      }
  };
  if (begin >= end) {  // the whole block leaves together
    write_empty();
    return;
  }
  const TokenRows rows{a.block_table ? a.block_table + slot * a.max_blocks : nullptr, slot,
                       static_cast<int>(a.block_table ? a.block_tokens : a.capacity)};
  const std::int64_t num_blocks = a.block_table ? a.num_blocks : a.num_slots;
  // A paged row's table entries for tokens 0 .. L - 1 (every split of a row agrees).
  if (rows.bad_entries(L, num_blocks, tid, kThreadsHere)) {
    write_empty();
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
  const bool active = 16 * warp < hc;
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
    if (active) {
      const T* const tile = sK + buf * kMmaKeys * SK;
      float sc[kMmaKeys / 8][4];
      sm80::zero(sc);
      sm80::warp_mm_rows_rows<T, kMmaKeys, DK>(sc, sQ + 16 * warp * SK, SK, tile, SK);
      float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < kMmaKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1, j = n0 + nt * 8 + 2 * t + (e & 1);
          const float x = j < limit[r] ? sc[nt][e] * scale_log2 : -INFINITY;
          sc[nt][e] = x;
          mt[r] = ::fmaxf(mt[r], x);
        }
      sm80::online_softmax_tile<kMmaKeys, DW>(sc, mt, m, l, o);
      sm80::warp_mm_regs_rows<T, DW, kMmaKeys>(o, sc, tile + column0, SK);
    }
    __syncthreads();  // every warp is done with this buffer before the next copy overwrites it
  }
  if (!active) return;

#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = sm80::quad_sum(l[r]);
  if (!partial) {
    const float inv[2] = {l[0] > 0.f ? 1.f / l[0] : 0.f, l[1] > 0.f ? 1.f / l[1] : 0.f};
    sm80::store_rows<T, DW>(out + column0, o, 16 * warp, hc, inv, DV);
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = 16 * warp + g + 8 * r;
    if (i >= hc) continue;
    const std::int64_t q_row = row0 + i;
    float* const acc = ws + ws_acc + (q_row * splits + split) * DV + column0 + 2 * t;
#pragma unroll
    for (int nt = 0; nt < DW / 8; ++nt) {
      acc[nt * 8] = o[nt][2 * r];
      acc[nt * 8 + 1] = o[nt][2 * r + 1];
    }
    if (t == 0 && column0 == 0) {  // the row's state, once (every column warp holds the same)
      float* const ml = ws + (q_row * splits + split) * 2;
      ml[0] = m[r] * kLn2;  // the natural-log state the combine expects: m = max_j scale · s_j
      ml[1] = l[r];
    }
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

// Whether decode_attention runs the tensor-core kernel: asked for (and then it must apply),
// preferred where it applies, or automatic with KILN_DECODE_KERNEL=mma in the environment where it
// applies.
inline bool use_mma(const DecodeAttentionArgs& a) {
  if (a.implementation == DecodeKernel::simt) return false;
  if (a.implementation == DecodeKernel::prefer_mma) return mma_applies(a);
  if (a.implementation == DecodeKernel::mma) {
    check(mma_applies(a), "decode_attention",
          "the tensor-core kernel takes MLA's latent cache in bf16: one kv head, (dk, dv) = (288, 256) or (576, ",
          "512), the values a view of the keys' first columns, 16-byte aligned rows, its shared memory within the GPU's; "
          "got dtype ", a.dtype, ", kv_heads ",
          a.kv_heads, ", dk ", a.dk, ", dv ", a.dv, a.latent ? ", an FP8 cache" : "");
    return true;
  }
  static const bool from_environment = [] {
    const char* v = std::getenv("KILN_DECODE_KERNEL");
    return v != nullptr && std::string(v) == "mma";
  }();
  return from_environment && mma_applies(a);
}

// Query-row chunks of 64 a sequence, and the splits (`wanted` >= 1: that many; 0: chosen).
inline int mma_chunks(const DecodeAttentionArgs& a) { return (a.queries * a.heads + kMmaRows - 1) / kMmaRows; }
inline int mma_splits(const DecodeAttentionArgs& a, const DeviceInfo& info, int wanted) {
  return sequence_splits(a.count * mma_chunks(a), a.capacity, info.sms, wanted);
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
  auto launch = [&](auto dk, auto dv) {
    constexpr int DK = decltype(dk)::value, DV = decltype(dv)::value;
    constexpr std::size_t smem = mma_smem_bytes<DK>();
    auto* kernel = decode_attention_mma_kernel<DK, DV>;
    opt_in_shared_memory(kernel, smem, a.launch.device);
    kernel<<<grid, mma_threads<DV>(), smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  };
  if (a.dk == 576) launch(std::integral_constant<int, 576>{}, std::integral_constant<int, 512>{});
  else launch(std::integral_constant<int, 288>{}, std::integral_constant<int, 256>{});
  record_kernel_variant("decode_attention", "mma");
  if (a.splits > 1) {
    decode_combine_kernel<bf16><<<static_cast<unsigned>(a.count * a.queries * a.heads), kCombineThreads, 0,
                                  a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace kiln::kernels::decode_attention
