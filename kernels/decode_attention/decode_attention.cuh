// decode_attention on CUDA (arguments kernels/decode_attention/args.hpp, which states the
// function and both cache layouts; front-ends ops/decode_attention.hpp (contiguous cache) and
// ops/paged_attention.hpp (paged cache); CPU reference backend/cpu/decode_attention.hpp).
// This file is the CUDA-core kernel, which takes every problem; decode_attention_mma.cuh (mma.sync)
// and decode_attention_hopper.cuh (wgmma, TMA; decode_attention_seesaw.cuh at (576, 512)) are the
// tensor-core ones for MLA's bf16 latent cache, which the launcher at the end hands the problems
// DecodeAttentionArgs::implementation gives them (args.hpp, DecodeKernel; chosen_kernel);
// split_combine.cuh holds what they share (addressing, split count, the splits' combine).
//
// Work split. One block of 256 threads (8 warps) per (batch row, kv head, chunk of the T x G
// query rows that share that kv head: T query tokens of G heads each, split) — one split, the
// whole row, unless the sequence split below applies. The split's keys are cut into tiles of 16;
// warp w takes tiles w, w + 8, w + 16, ... and keeps its OWN online softmax (running max m and sum l per head, an
// accumulator rescaled by exp(m_old - m_new)), so the key loop has no block barrier at all:
//   A. scores, two lanes per key: lanes j and j + 16 compute the dot products of key (tile + j)
//      with every head of the chunk, each over half of dk, and add the halves with one shuffle.
//      q sits in shared memory as float (double for double inputs); all lanes of a half read the
//      same q address (a broadcast, no bank conflicts), each 16-byte shared load of q serving 4
//      FMAs (2 for double); keys are read as 16-byte vectors, two pieces ahead of their use
//      (six at 4 heads a block, where registers are to spare);
//   B. softmax update per head: one warp max and one 16-lane sum (shuffles) per 16-key tile, not
//      per key; lane 0 keeps the running sum l in shared memory; the tile's probabilities go to
//      a per-warp shared buffer (__syncwarp only);
//   C. p · v: each lane owns CPL of the dv output columns (CPL = dv / 32 rounded up to a power of
//      two, at least 2) for every head of the chunk. Per key, one coalesced read of the value row
//      (a 16-byte vector per lane for bf16 at CPL 8) serves every head; the rows of 4 keys (2 for
//      double) are loaded together and their probabilities come in one 16-byte broadcast load.
//   D. once, at the end: the 8 warps' states meet in shared memory (each rescaled by
//      exp(m_w - max_w m_w); a warp that got no keys has m = -inf, l = 0, acc = 0 and weight 0),
//      are summed in a fixed warp order (deterministic: graph replays match eager steps bit for
//      bit) and written as out = acc / l; rows with no keys (length 0, or a slot outside the
//      cache) give zeros.
//
// Addressing (args.hpp). Each lane finds where its key of the tile lies — the block and the row
// in it: contiguous, (slot, j); paged, (table[j / block_tokens], j % block_tokens) — once per
// tile, and one tile ahead: the lookup of the next tile is made with its prefetch, so that the
// table read (an L1 hit after the first lane) never waits in front of a key load. The value
// rows' offsets of the tile's 16 keys go to a per-warp shared array for step C. A paged row is
// checked before its key loop: its table entries for tokens 0 .. L - 1 are read by the block's
// threads and or-ed in the barrier that follows the q staging (__syncthreads_or), and a row with
// an entry outside the pool gives zeros. With 64-token blocks a tile (16 keys, 16-aligned)
// never straddles two blocks, but nothing relies on it: any block size works.
//
// Two query tokens (MTP's speculative decode): the T x G query rows of a kv head are the
// block's heads (chunked like heads), so each key read serves both queries; query 0 of 2 attends
// one key fewer than query 1, a per-head bit masks key L - 1 to -inf for those rows in step B.
//
// FP8 latent cache (args.hpp: `latent` set; ops/latent_fp8_cache.hpp; bf16): the same kernel with
// kFp8, only where a key's numbers come from differs. A token's key is [latent ⊙ scale, rope]
// (e4m3 latent, one float scale per 128 columns, rope bf16) and its value latent ⊙ scale. Step A:
// a lane's half of the key is whole 128-column tiles (half 0 the first ceil(tiles / 2), half 1
// the rest and the rope part), read as 16-byte pieces of 16 e4m3 values, 4 or 8 in flight, each
// widened times its tile's scale (fp8_latent_scores); step C: the lane's CPL latent columns (one
// CPL-byte read) times the scale of their tile, one float read per key. The addressing is by
// token index (block * rows + row), so both layouts work unchanged; the split, softmax, combine
// and every check are shared. Bytes a token: r + 4 ceil(r / 128) + 2 dr (328 at r 256, dr 32)
// against 2 (r + dr) = 576. At 16 columns a lane (r 512) a block takes 4 heads (max_heads: 8
// spilled registers).
//
// Split along the sequence (args.hpp: splits > 1). When the rows, kv heads and head chunks give
// fewer blocks than half the SMs (few sequences, long caches: 4 rows x 32768 keys x 16 heads is
// 8 blocks for 132 SMs), each row's keys are cut into `splits` ranges of ceil(L / splits) keys
// rounded up to a tile (from the row's own length, on the device: every split of a row gets the
// same work), one block per range. Each writes its (m, l, acc) per query row to a float
// workspace (double for double inputs); decode_combine_kernel, one block per query row, reads
// the splits in order and writes out = sum_s w_s acc_s / sum_s w_s l_s, w_s = exp(m_s - max m)
// (a split without keys: m = -inf, weight 0). The split count comes from the SM count
// (decode_attention_plan, device_info.hpp): splits = SMs / blocks, at most 128 and at most
// capacity / 256 (a split keeps 2+ tiles per warp); the workspace is the front-end's tensor, so
// the kernels still allocate nothing (CUDA graphs). Bytes: the workspace adds (dv + 2) x 4 bytes
// per query row and split, written once and read once: at 4 x 32768 x 16 heads x 16 splits,
// 1 MB against the 75 MB of the cache.
// Everything accumulates in float (double for double inputs). The math functions are called as
// ::exp, ::max, ::min: inside namespace kiln the tensor ops of those names would hide them.
//
// Why this split: at the engine's MLA shape (128 rows, 1 kv head, 12 heads, dk 288, dv 256,
// L <= 320) the math is ~2.1M FMA per row and the cache ~24 MB per call, both a few microseconds
// of the GPU; what the previous kernel lost was latency (three barriers and a one-thread-per-head
// softmax per 32 keys, a warp reduction per key and head). Here a 16-key tile costs a warp
// HC x 10 shuffles and two __syncwarp; the rest is FMAs fed by broadcast shared loads. The
// kernel stays latency-bound (8 warps an SM, ~240 registers each): 16-key tiles rather than 32
// put twice as many warps to work on short rows (L 64: 4 tiles) and even out long ones (L 320:
// 20 tiles over 8 warps rather than 10). H200, bf16, the op as the engine calls it (benchmarks/
// bench_decode_cuda.cpp): 19 us at L 64, 24 at 128, 37 at 256, 45 at 320, 43 with rows spread
// over 64..318; 239 us for 32 rows x 4096 keys x 16 heads (the previous kernel: 176-837 us; the
// composed ops: 68-100 and 359 us). With the paged addressing, two query tokens and the split
// (benchmarks/bench_paged_decode_cuda.cpp, 2026-12-04, the op as called, host work included):
// paged and contiguous alike 27 / 32 / 44 / 52 / 51 us at those engine shapes (the same
// contiguous op measured 19-45 us in the earlier run above; docs/mla.md, "Decode over a paged
// latent cache", has the table and what is still open); with the split, 179 us at 32 x 4096 x 16
// heads (2 splits) and 179 us at 4 x 32768 x 16 heads (16 splits; 1738 us unsplit).
//
// Registers and sizes (templates: CPL = value columns per lane, NG = groups of 4 heads, HC = 4 NG
// heads computed a block). The head count is a template constant so that the inner loops have
// no branch on it (see the kernel). acc is HC x CPL per thread, at most 16 x 4, 12 x 8, 8 x 16
// floats and 8 x 4, 4 x 8, 4 x 16 doubles; 256 threads at up to 255 registers (one block per
// SM), no spills (checked with -Xptxas -v for every instantiation). Shared memory per block:
// static, the p buffers and per-warp m, l (8 x HC x (16 + 3) values: 7.3 KB at 12 heads); dynamic,
// max(q: HC x dk, the end's combine: 8 x heads x 32 CPL), e.g. 98 KB at the MLA shape (12 heads
// x 256 columns x 8 warps x 4 bytes), opted into per device (launch.cuh). Limits: dv <= 512;
// dk limited only by shared memory (the launcher narrows the head chunk until q fits: at 4 heads
// a block, dk up to ~14K floats); kv_heads <= 65535, rows < 2^31.
//
// Vector loads: 16-byte key reads and CPL-wide value reads need every row start 16-byte aligned
// (base pointers and all strides), dk a multiple of 16 bytes' worth of elements and dv a multiple
// of CPL; else the same kernel with element loads (odd shapes, tests; double at dv > 256 too).
// Lanes past the tile's last key read the last key (and value rows past it are zeroed after the
// load); value columns past dv read column dv - CPL (or dv - 1): always inside the cache, their
// scores masked to -inf (p = 0) and those columns never written.
//
// Head chunks: the launcher uses the fewest chunks that fit HC, then (with the sequence split
// chosen) splits further (halving the heads a block) while the grid would still fill less than
// half the GPU's SMs, e.g. the contiguous op's long-context case (32 rows x 16 heads, one split:
// 4 chunks of 4 -> 128 blocks); each chunk reads the row's keys once (again from L2 for the
// chunks after the first). Nothing synchronises with the host.
//
// Cost per block: the row's L keys and values are read once per head chunk: L (dk + dv)
// elements (for MLA the values lie inside the key rows and come from L1/L2 the second time);
// each warp asks L2 for its next tile's rows ahead of time (prefetch.L2). A Hopper version
// (tensor cores for the scores and p · v, bulk copies of the tiles) is issue 15's next step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/environment.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/decode_attention/decode_attention_hopper.cuh"
#include "kiln/kernels/decode_attention/decode_attention_mma.cuh"
#include "kiln/kernels/decode_attention/split_combine.cuh"

namespace kiln::kernels::decode_attention {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;     // keys per warp step: two lanes per key, each half of dk
constexpr int kMaxCols = 16;  // value columns per lane: dv <= 512
constexpr int kGroup = 4;     // heads come in groups of 4: HC = 4 NG, padding heads zero-filled

// Query heads per block at most, for CPL value columns per lane: acc = heads x CPL values per
// thread stays at <= 128 floats / 64 doubles, and at 96 floats / 32 doubles for CPL 8, where
// 16 heads (8 for double) made ptxas spill under the 255-register limit.
template <class T, int CPL>
constexpr int head_chunk() {
  if constexpr (std::is_same_v<T, double>) return CPL <= 4 ? 8 : 4;
  else return CPL <= 4 ? 16 : (CPL == 8 ? 12 : 8);
}

// N consecutive elements at p, widened to C, in 16-byte accesses (or one N-element access when
// N elements are fewer bytes); p aligned to the access size.
template <int N, class T, class C>
__device__ __forceinline__ void load_cols(const T* p, C (&out)[N]) {
  constexpr int W = N * static_cast<int>(sizeof(T)) >= 16 ? 16 / static_cast<int>(sizeof(T)) : N;
#pragma unroll
  for (int b = 0; b < N; b += W) {
    const Vec<T, W> x = *reinterpret_cast<const Vec<T, W>*>(p + b);
#pragma unroll
    for (int e = 0; e < W; ++e) out[b + e] = static_cast<C>(load(x.v[e]));
  }
}

// Asks L2 for the lines of n elements at p (a hint: nothing waits for it). A warp's first key
// tile would otherwise reach DRAM one 16-byte load per lane at a time.
template <class T>
__device__ __forceinline__ void prefetch_l2(const T* p, int n) {
  const char* const c = reinterpret_cast<const char*>(p);
  const int bytes = n * static_cast<int>(sizeof(T));
  for (int o = 0; o < bytes; o += 128) asm volatile("prefetch.L2 [%0];" ::"l"(c + o));
  asm volatile("prefetch.L2 [%0];" ::"l"(c + bytes - 1));  // the last line when p is not line-aligned
}

// s[h] += q_h[0 .. N) · k[0 .. N) for the HC query rows of q_s (C [HC][dk], qd = q_s + the piece's
// first column, 16-byte aligned) and N key values k of one 16-byte piece, widened: each 16-byte
// shared load of q (a broadcast: every lane of a half reads the same address) serves 4 heads'
// FMAs with one key value each, so the heads' FMA chains interleave.
template <int HC, int N, class C>
__device__ __forceinline__ void dot_piece(const C* qd, const C* kf, int dk, C (&s)[HC]) {
  constexpr int QV = 16 / static_cast<int>(sizeof(C));
#pragma unroll
  for (int g = 0; g < HC; g += kGroup) {
#pragma unroll
    for (int b = 0; b < N; b += QV) {
      Vec<C, QV> qv[kGroup];
#pragma unroll
      for (int w = 0; w < kGroup; ++w) qv[w] = *reinterpret_cast<const Vec<C, QV>*>(qd + (g + w) * dk + b);
#pragma unroll
      for (int e = 0; e < QV; ++e)
#pragma unroll
        for (int w = 0; w < kGroup; ++w) s[g + w] += qv[w].v[e] * kf[b + e];
    }
  }
}

// Step A over one token of an FP8 latent cache (args.hpp: latent e4m3 [dv], its scales [dv/128
// rounded up], rope [dk - dv] of T): s[h] += q_h · [latent ⊙ scale, rope] over this lane's half —
// half 0 the first ceil(tiles / 2) 128-column tiles of the latent, half 1 the other tiles and the
// rope part. The pieces of 16 e4m3 values (16 bytes) are loaded kInFlight at a time and widened
// times their tile's scale; the rope part likewise in pieces of 16 bytes of T. kInFlight is 8
// where acc leaves the registers for it and 4 where it does not (ptxas -v: 8 spilled at 16 heads
// x 4 columns and 12 x 8; at 8 heads x 16 columns even 1 spilled, so the launcher gives the FP8
// kernel 4 heads a block there). q_s holds q as C [HC][dk] (dk a multiple of 4: 16-byte aligned
// rows).
template <int HC, int kInFlight, class T, class C>
__device__ __forceinline__ void fp8_latent_scores(const fp8_e4m3* lat, const float* scales, const T* rope, int dv,
                                                  int dr, int half, const C* q_s, int dk, C (&s)[HC]) {
  constexpr int RV = 16 / static_cast<int>(sizeof(T));  // rope elements per piece
  using LatentPiece = Vec<fp8_e4m3, 16>;
  using RopePiece = Vec<T, RV>;
  // Half 0: latent tiles [0, mid); half 1: tiles [mid, tiles), then the rope part. Pieces are
  // 16 latent values; 8 make a tile.
  const int pieces = dv / 16, tiles = (dv + 127) / 128, mid = (tiles + 1) / 2;
  const int c_begin = half ? ::min(mid * 8, pieces) : 0, c_end = half ? pieces : ::min(mid * 8, pieces);
  const LatentPiece* const lp = reinterpret_cast<const LatentPiece*>(lat);
  for (int c0 = c_begin; c0 < c_end; c0 += kInFlight) {
    const int n = ::min(kInFlight, c_end - c0);
    LatentPiece piece[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) piece[u] = lp[c0 + ::min(u, n - 1)];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (u < n) {
        const C scale = static_cast<C>(scales[(c0 + u) / 8]);  // an L1 hit after the first
        C kf[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) kf[e] = static_cast<C>(load(piece[u].v[e])) * scale;
        dot_piece<HC, 16>(q_s + (c0 + u) * 16, kf, dk, s);
      }
    }
  }
  if (half == 0) return;
  const RopePiece* const rp = reinterpret_cast<const RopePiece*>(rope);
  const int rope_pieces = dr / RV;
  for (int c0 = 0; c0 < rope_pieces; c0 += kInFlight) {
    const int n = ::min(kInFlight, rope_pieces - c0);
    RopePiece piece[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) piece[u] = rp[c0 + ::min(u, n - 1)];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (u < n) {
        C kf[RV];
#pragma unroll
        for (int e = 0; e < RV; ++e) kf[e] = static_cast<C>(load(piece[u].v[e]));
        dot_piece<HC, RV>(q_s + dv + (c0 + u) * RV, kf, dk, s);
      }
    }
  }
}

// kVec: 16-byte key loads and CPL-wide value loads (the launcher checked the alignment);
// otherwise element loads. NG: groups of kGroup = 4 query rows computed per block (HC = 4 NG);
// heads_per_block: the launcher's chunk of the kv head's T x G query rows (<= HC). kFp8: the
// cache is an FP8 latent cache (args.hpp; always with kVec): step A reads the token's latent
// tiles and rope part (fp8_latent_scores), step C its latent columns times their tile's scale.
//
// The head count is a template constant so that the inner loops have no branch on it: a branch
// per head (or group) splits the independent FMA chains of the heads into basic blocks that
// cannot interleave, and one warp then waits an FMA latency per FMA. q rows from hc up to HC are
// zeros: those padding heads compute finite, unused values and are never written.
template <class T, int CPL, int NG, bool kVec, bool kFp8 = false>
__global__ void __launch_bounds__(kThreads, 1) decode_attention_kernel(DecodeAttentionArgs a, int heads_per_block) {
  using C = compute_of<T>;
  constexpr int HC = kGroup * NG;
  constexpr int kCols = 32 * CPL;                       // columns of one warp's accumulator
  constexpr int VK = 16 / static_cast<int>(sizeof(T));  // key elements per 16-byte load
  constexpr int QV = 16 / static_cast<int>(sizeof(C));  // q elements per 16-byte shared load
  // Keys per step of p · v: their value rows are loaded together, their p in one shared load of
  // 16 bytes; of 8 (half the keys) with element loads, whose CPL separate loads a key need more
  // registers, and where acc alone takes 128 registers (else ptxas spills).
  constexpr int KG = kVec && HC * CPL * static_cast<int>(sizeof(C)) < 512 ? QV : QV / 2;
  // Key pieces in flight per lane in step A: 2 where acc fills the registers, 6 for 4 heads a block
  // (acc 4 x CPL <= 64 values: registers to spare), whose warps otherwise wait for L2 every 2
  // pieces (the few-heads, long-row case: memory-bound).
  constexpr int kDepth = NG == 1 ? 6 : 2;
  constexpr C kNegInf = -static_cast<C>(INFINITY);
  static_assert(HC <= head_chunk<T, CPL>(), "acc stays within the register budget");
  static_assert(HC <= 32, "one bit per query row in `drop`");
  static_assert(!kFp8 || (kVec && std::is_same_v<T, bf16>), "the FP8 latent cache takes vector loads and bf16");

  __shared__ alignas(16) C p_s[kWarps][HC][kTile];  // each warp's probabilities of its tile
  __shared__ std::int64_t voff_s[kWarps][kTile];    // and the value rows of the tile's keys
  __shared__ std::int64_t qrow_s[HC];               // each query row's index in q and out
  // l_s: each warp's running sums (lane 0 keeps them: in registers they would be live through the
  // whole key loop, next to acc); m_s: each warp's maxima at the end; w_s, total_s, max_s: the
  // combine.
  __shared__ C m_s[kWarps][HC], l_s[kWarps][HC], w_s[kWarps][HC], total_s[HC], max_s[HC];
  extern __shared__ __align__(16) unsigned char decode_attention_smem[];
  C* const q_s = reinterpret_cast<C*>(decode_attention_smem);     // [HC][dk] in the key loop
  C* const part_s = reinterpret_cast<C*>(decode_attention_smem);  // [kWarps][hc][kCols] after it

  const std::int64_t row = blockIdx.x;
  const int kv_head = static_cast<int>(blockIdx.y);
  const int group = a.heads / a.kv_heads, splits = a.splits;
  const int chunk = static_cast<int>(blockIdx.z) / splits, split = static_cast<int>(blockIdx.z) - chunk * splits;
  const int first = chunk * heads_per_block;  // within the kv head's T x G query rows
  const int hc = ::min(heads_per_block, a.queries * group - first);
  const int dk = a.dk, dv = a.dv;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int kl = lane & 15, half = lane >> 4;  // in the scores: key of the tile, half of dk
  // The block's query row h is query t = (first + h) / G of head kv_head G + (first + h) % G;
  // its index in q and out [count, T, heads]:
  auto query_row = [&](int h) -> std::int64_t {
    const int g = first + h, t = g / group;
    return (row * a.queries + t) * a.heads + kv_head * group + (g - t * group);
  };
  // Bit h: query row h attends one key fewer (query 0 of 2: the rows first + h < G).
  const int short_rows = a.queries == 2 ? ::max(0, ::min(hc, group - first)) : 0;
  const unsigned drop = (1u << short_rows) - 1u;  // short_rows <= HC <= 16

  const std::int64_t slot = a.slots[row];
  std::int64_t L64 = a.lengths[row];
  if (slot < 0 || slot >= a.num_slots) L64 = 0;
  const int L = static_cast<int>(L64 < 0 ? 0 : (L64 > a.capacity ? a.capacity : L64));
  // This split's keys [begin, end): ceil(L / splits) rounded up to a tile.
  const int span = ((L + splits - 1) / splits + kTile - 1) / kTile * kTile;
  const int begin = ::min(split * span, L), end = ::min(begin + span, L);

  // Where the results go: out (one split) or this split's partial state in the workspace.
  const bool partial = splits > 1;
  C* const ws = static_cast<C*>(a.workspace);
  const std::int64_t ws_acc = a.count * a.queries * a.heads * splits * 2;  // the accumulators' offset
  auto write_row = [&](std::int64_t r, int c, C sum, C total) {  // column c of query row r
    if (partial) ws[ws_acc + (r * splits + split) * dv + c] = sum;
    else static_cast<T*>(a.out)[r * dv + c] = store<T>(total > 0 ? sum / total : C(0));
  };
  auto write_state = [&](std::int64_t r, C m, C l) {  // the split's max and sum of query row r
    if (partial) {
      C* const ml = ws + (r * splits + split) * 2;
      ml[0] = m;
      ml[1] = l;
    }
  };
  auto write_empty = [&] {  // no keys: zeros, or a split of weight 0
    for (int i = tid; i < hc * dv; i += kThreads) write_row(query_row(i / dv), i % dv, C(0), C(0));
    if (tid < hc) write_state(query_row(tid), kNegInf, C(0));
  };
  if (begin >= end) {  // the whole block leaves together: no barrier is skipped by some threads only
    write_empty();
    return;
  }

  const TokenRows rows{a.block_table ? a.block_table + slot * a.max_blocks : nullptr, slot,
                       static_cast<int>(a.block_table ? a.block_tokens : a.capacity)};
  const std::int64_t num_blocks = a.block_table ? a.num_blocks : a.num_slots;
  const T* const k = static_cast<const T*>(a.k) + kv_head * a.k_head_stride;
  const T* const v_base = static_cast<const T*>(a.v) + kv_head * a.v_head_stride;
  // The FP8 latent cache (kFp8): token tok = block * k_slot_stride + row (k_row_stride 1) has its
  // latent at lat + tok * dv, its scales at lsc + tok * tiles, its rope part at rope + tok * dr.
  const fp8_e4m3* const lat = static_cast<const fp8_e4m3*>(a.latent);
  const float* const lsc = a.latent_scales;
  const T* const rope = static_cast<const T*>(a.rope);
  const int dr = dk - dv, tiles = (dv + 127) / 128;
  // Asks L2 for the rows of the key at (block b, row r): half 0 its keys, half 1 its values (FP8:
  // half 0 the latent, half 1 the rope part and the scales).
  auto prefetch_key = [&](std::int64_t b, int r) {
    if constexpr (kFp8) {
      const std::int64_t tok = b * a.k_slot_stride + r;
      if (half == 0) {
        prefetch_l2(lat + tok * dv, dv);
      } else {
        if (dr > 0) prefetch_l2(rope + tok * dr, dr);
        prefetch_l2(lsc + tok * tiles, tiles);
      }
    } else {
      if (half == 0) prefetch_l2(k + b * a.k_slot_stride + r * a.k_row_stride, dk);
      else prefetch_l2(v_base + b * a.v_slot_stride + r * a.v_row_stride, dv);
    }
  };
  constexpr int kStride = kWarps * kTile;  // keys between a warp's tiles
  // Where this lane's key of the warp's current tile lies (lanes past the tile's last key: that
  // key); the first tile's rows on their way to L2 while q is staged.
  std::int64_t kb = 0;
  int kr = 0;
  const int t_first = begin + warp * kTile;
  if (t_first < end) {
    rows.locate(t_first + ::min(kl, end - t_first - 1), kb, kr);
    if (t_first + kl < end && kb >= 0 && kb < num_blocks) prefetch_key(kb, kr);  // the table is checked below
  }

  // q: warp w stages query rows w, w + 8, ... (coalesced over dk; rows hc .. HC - 1 zeros).
  for (int h = warp; h < HC; h += kWarps) {
    C* const dst = q_s + h * dk;
    if (h < hc) {
      const std::int64_t r = query_row(h);
      if (lane == 0) qrow_s[h] = r;
      const T* const src = static_cast<const T*>(a.q) + r * dk;
      for (int d = lane; d < dk; d += 32) dst[d] = static_cast<C>(load(src[d]));
    } else {
      for (int d = lane; d < dk; d += 32) dst[d] = C(0);
    }
  }
  // This lane's value columns: lane * CPL + i (vector path) or lane + 32 i (element path), read
  // clamped into [0, dv) so that idle lanes stay inside the row.
  const T* const v = v_base + (kVec ? ::min(lane * CPL, dv - CPL) : 0);
  const int fp8_col = ::min(lane * CPL, dv - CPL);  // kFp8: this lane's first latent column
  const C scale = static_cast<C>(a.scale);

  C acc[HC][CPL], m[HC];
#pragma unroll
  for (int h = 0; h < HC; ++h) {
    m[h] = kNegInf;
#pragma unroll
    for (int i = 0; i < CPL; ++i) acc[h][i] = 0;
  }
  if (lane == 0)
#pragma unroll
    for (int h = 0; h < HC; ++h) l_s[warp][h] = 0;
  // A paged row's table entries for tokens 0 .. L - 1 (the whole row: every split of a row
  // agrees), or-ed in the barrier that also publishes q_s and qrow_s.
  if (rows.bad_entries(L, num_blocks, tid, kThreads)) {  // uniform: the whole block leaves
    write_empty();
    return;
  }

  for (int t0 = t_first; t0 < end; t0 += kStride) {
    const int tk = ::min(end - t0, kTile);  // >= 1: key 0 of the tile is real
    const bool valid = kl < tk;
    // This warp's next tile: where its keys lie, and their rows on their way to L2 meanwhile.
    std::int64_t nb = 0;
    int nr = 0;
    const int t1 = t0 + kStride;
    if (t1 < end) {
      rows.locate(t1 + ::min(kl, end - t1 - 1), nb, nr);
      if (t1 + kl < end) prefetch_key(nb, nr);
    }
    // A. key kl of the tile against every head of the chunk, over this lane's half of dk (the
    // two halves are added below: both lanes then hold the same bits, a + b = b + a).
    const T* const key = k + kb * a.k_slot_stride + kr * a.k_row_stride;
    C s[HC];
#pragma unroll
    for (int h = 0; h < HC; ++h) s[h] = 0;
    if constexpr (kFp8) {
      const std::int64_t tok = kb * a.k_slot_stride + kr;
      fp8_latent_scores<HC, HC * CPL >= 64 ? 4 : 8>(lat + tok * dv, lsc + tok * tiles, rope + tok * dr, dv, dr, half,
                                                    q_s, dk, s);
    } else if constexpr (kVec) {
      // 16-byte pieces, each loaded kDepth pieces ahead of its use (past the half's end the last
      // index repeats: a harmless reload of the final piece). Half 0 takes pieces [0, mid), half 1
      // the rest. The ring is indexed by compile-time constants only (the loop over it unrolled).
      using KV = Vec<T, VK>;
      const KV* const kp = reinterpret_cast<const KV*>(key);
      const int pieces = dk / VK, mid = (pieces + 1) / 2;
      const int c_begin = half ? mid : 0, c_end = half ? pieces : mid;
      KV ring[kDepth];
#pragma unroll
      for (int u = 0; u < kDepth; ++u) ring[u] = kp[::max(::min(c_begin + u, c_end - 1), 0)];
      for (int c0 = c_begin; c0 < c_end; c0 += kDepth) {
#pragma unroll
        for (int u = 0; u < kDepth; ++u) {
          const int c = c0 + u;
          if (c < c_end) {
            const KV cur = ring[u];
            ring[u] = kp[::min(c + kDepth, c_end - 1)];
            C kf[VK];
#pragma unroll
            for (int e = 0; e < VK; ++e) kf[e] = static_cast<C>(load(cur.v[e]));
            dot_piece<HC, VK>(q_s + c * VK, kf, dk, s);  // 16-byte aligned: dk is a multiple of VK
          }
        }
      }
    } else {
      const int mid = (dk + 1) / 2;
      for (int d = half ? mid : 0, d_end = half ? dk : mid; d < d_end; ++d) {
        const C kd = static_cast<C>(load(key[d]));
#pragma unroll
        for (int h = 0; h < HC; ++h) s[h] += q_s[h * dk + d] * kd;
      }
    }
#pragma unroll
    for (int h = 0; h < HC; ++h) s[h] += shfl_xor(s[h], 16);
    // B. online softmax over the tile, per head; p = 0 for the lanes past the split's end, and
    // for key L - 1 in the query rows that attend one key fewer. A head can have no key in a
    // tile (its only key masked): m stays -inf, alpha and p are 0.
    __syncwarp();  // every lane has finished reading p_s and voff_s for the previous tile
    const bool last = t0 + kl == L - 1;
#pragma unroll
    for (int h = 0; h < HC; ++h) {
      const bool on = valid && !(last && ((drop >> h) & 1u));
      const C x = on ? s[h] * scale : kNegInf;
      const C m_new = ::max(m[h], warp_all_reduce(x, Max{}));
      const C alpha = m[h] == kNegInf ? C(0) : ::exp(m[h] - m_new);
      const C p = on ? ::exp(x - m_new) : C(0);
      const C tile_sum = warp_all_reduce<16>(p, Plus{});  // each half holds the tile's keys once
      if (lane == 0) l_s[warp][h] = l_s[warp][h] * alpha + tile_sum;
      m[h] = m_new;
      if (half == 0) p_s[warp][h][kl] = p;
#pragma unroll
      for (int i = 0; i < CPL; ++i) acc[h][i] *= alpha;
    }
    if (half == 0) voff_s[warp][kl] = kb * a.v_slot_stride + kr * a.v_row_stride;
    __syncwarp();  // p_s and voff_s are written
    // C. acc += p · v over the tile, KG keys at a time. The KG rows are loaded without a branch
    // (a key past tk reads row tk - 1, which voff_s holds there, and is then zeroed, p being 0
    // too), so that their loads are in flight together.
    for (int j0 = 0; j0 < tk; j0 += KG) {
      C vf[KG][CPL];
#pragma unroll
      for (int u = 0; u < KG; ++u) {
        if constexpr (kFp8) {  // voff_s holds the token index; this lane's columns lie in one tile
          const std::int64_t tok = voff_s[warp][j0 + u];
          load_cols<CPL>(lat + tok * dv + fp8_col, vf[u]);
          const C tile_scale = static_cast<C>(lsc[tok * tiles + fp8_col / 128]);
#pragma unroll
          for (int i = 0; i < CPL; ++i) vf[u][i] *= tile_scale;
          continue;
        }
        const T* const vr = v + voff_s[warp][j0 + u];
        if constexpr (kVec) {
          load_cols<CPL>(vr, vf[u]);
        } else {
#pragma unroll
          for (int i = 0; i < CPL; ++i) vf[u][i] = static_cast<C>(load(vr[::min(lane + 32 * i, dv - 1)]));
        }
      }
#pragma unroll
      for (int u = 1; u < KG; ++u)
#pragma unroll
        for (int i = 0; i < CPL; ++i) vf[u][i] = j0 + u < tk ? vf[u][i] : C(0);
#pragma unroll
      for (int h = 0; h < HC; ++h) {
        const Vec<C, KG> p = *reinterpret_cast<const Vec<C, KG>*>(&p_s[warp][h][j0]);
#pragma unroll
        for (int u = 0; u < KG; ++u)
#pragma unroll
          for (int i = 0; i < CPL; ++i) acc[h][i] += p.v[u] * vf[u][i];
      }
    }
    kb = nb;
    kr = nr;
  }

  // D. combine the warps. Each warp's (m, l) per head; a warp without keys has m = -inf, l = 0.
  if (lane == 0)
#pragma unroll
    for (int h = 0; h < HC; ++h) m_s[warp][h] = m[h];
  __syncthreads();  // every warp has left the key loop (q_s is free) and m_s, l_s are written
  if (tid < hc) {
    const int h = tid;
    C mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = ::max(mx, m_s[w][h]);
    C total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const C weight = m_s[w][h] == kNegInf ? C(0) : ::exp(m_s[w][h] - mx);
      w_s[w][h] = weight;
      total += l_s[w][h] * weight;
    }
    total_s[h] = total;
    max_s[h] = mx;
  }
  __syncthreads();  // w_s, total_s, max_s are written
#pragma unroll
  for (int h = 0; h < HC; ++h) {
    if (h < hc) {
      const C weight = w_s[warp][h];
      C* const dst = part_s + (warp * hc + h) * kCols;
      if constexpr (kVec) {
        constexpr int W = CPL < QV ? CPL : QV;  // one 16-byte store, or all CPL values at once
#pragma unroll
        for (int b = 0; b < CPL; b += W) {
          Vec<C, W> x;
#pragma unroll
          for (int e = 0; e < W; ++e) x.v[e] = acc[h][b + e] * weight;
          *reinterpret_cast<Vec<C, W>*>(dst + lane * CPL + b) = x;
        }
      } else {
#pragma unroll
        for (int i = 0; i < CPL; ++i) dst[lane + 32 * i] = acc[h][i] * weight;
      }
    }
  }
  __syncthreads();  // part_s is written
  for (int i = tid; i < hc * dv; i += kThreads) {
    const int h = i / dv, c = i - h * dv;
    C sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += part_s[(w * hc + h) * kCols + c];
    write_row(qrow_s[h], c, sum, total_s[h]);
  }
  if (tid < hc) write_state(qrow_s[tid], max_s[tid], total_s[tid]);
}

// Query rows a block computes at most: head_chunk's register budget; for the FP8 latent cache at
// 16 value columns a lane, one group of 4 (its extra pointers and scales made 8 heads spill).
template <class T, int CPL>
int max_heads(const DecodeAttentionArgs& a) {
  return a.latent && CPL >= 16 ? kGroup : head_chunk<T, CPL>();
}

// How a problem is cut: query rows per block (per) and their chunks, sequence splits, the dynamic
// shared memory of the main kernel.
struct Layout {
  int per = 1, chunks = 1, splits = 1;
  std::size_t smem = 0;
};

// splits_wanted >= 1: that many (clamped to kDecodeMaxSplits); 0: chosen here (args.hpp,
// DecodeAttentionPlanArgs). The launcher and the plan call this with the same problem, so the
// plan's count is what the launch uses.
template <class T, int CPL>
Layout layout_of(const DecodeAttentionArgs& a, const DeviceInfo& info, int splits_wanted) {
  using C = compute_of<T>;
  const char* op = "decode_attention";
  const int max_rows = max_heads<T, CPL>(a);
  const int rows = a.queries * (a.heads / a.kv_heads);  // query rows per kv head
  const std::int64_t blocks_per_chunk = a.count * a.kv_heads;
  Layout l;
  // Heads a block: the fewest chunks of <= max_rows; then the sequence split; then more chunks
  // (fewer heads a block) while the grid fills less than half the SMs.
  l.chunks = (rows + max_rows - 1) / max_rows;
  l.splits = sequence_splits(blocks_per_chunk * l.chunks, a.capacity, info.sms, splits_wanted);
  while (l.chunks < rows && blocks_per_chunk * l.chunks * l.splits * 2 <= info.sms) l.chunks = std::min(rows, l.chunks * 2);
  l.per = (rows + l.chunks - 1) / l.chunks;
  // Shared memory: q [HC][dk] in the key loop (HC = per rounded up to whole groups of 4), the
  // combine [8][per][32 CPL] after it, and the static part (p buffers, value offsets and query
  // rows, per-warp m, l, weights). Fewer heads a block when a large dk needs it.
  auto padded = [](int heads) { return (heads + kGroup - 1) / kGroup * kGroup; };
  auto static_bytes = [&](int heads) {
    return sizeof(C) * static_cast<std::size_t>(kWarps * padded(heads) * kTile + 3 * kWarps * padded(heads) +
                                                2 * padded(heads)) +
           sizeof(std::int64_t) * static_cast<std::size_t>(kWarps * kTile + padded(heads));
  };
  auto dynamic_bytes = [&](int heads) {
    return sizeof(C) * std::max<std::size_t>(static_cast<std::size_t>(padded(heads)) * static_cast<std::size_t>(a.dk),
                                             static_cast<std::size_t>(kWarps) * heads * 32 * CPL);
  };
  const std::size_t limit = static_cast<std::size_t>(info.smem_per_block_optin);
  while (l.per > 1 && dynamic_bytes(l.per) + static_bytes(l.per) > limit) l.per = (l.per + 1) / 2;
  l.smem = dynamic_bytes(l.per);
  check(l.smem + static_bytes(l.per) <= limit, op, "dk ", a.dk, " (dv ", a.dv, ") needs ", l.smem + static_bytes(l.per),
        " bytes of shared memory per block even at one head a block; cuda:", a.launch.device, " allows ", limit);
  l.chunks = (rows + l.per - 1) / l.per;
  check(static_cast<std::int64_t>(l.chunks) * l.splits <= 65535, op, "too many query rows per kv head (", rows,
        ") for ", l.splits, " sequence splits");
  return l;
}

// Calls f(T{}, integral_constant<CPL>) for the problem's dtype and value columns per lane (an
// FP8 latent cache: bf16, at least 4 columns a lane, its smallest instantiation).
template <class F>
void dispatch(const DecodeAttentionArgs& a, F&& f) {
  auto with_cols = [&](auto tag) {
    if (a.dv <= 64 && !a.latent) return f(tag, std::integral_constant<int, 2>{});
    if (a.dv <= 128) return f(tag, std::integral_constant<int, 4>{});
    if (a.dv <= 256) return f(tag, std::integral_constant<int, 8>{});
    return f(tag, std::integral_constant<int, 16>{});
  };
  if (a.latent) return with_cols(bf16{});  // check_problem: dtype bf16
  switch (a.dtype) {
    case DType::f32: return with_cols(float{});
    case DType::f64: return with_cols(double{});
    case DType::bf16: return with_cols(bf16{});
    case DType::f16: return with_cols(fp16{});
    default: fail("decode_attention", "has no CUDA kernel for dtype ", a.dtype);
  }
}

inline void check_problem(const DecodeAttentionArgs& a) {
  const char* op = "decode_attention";
  check(a.dv >= 1 && a.dv <= 32 * kMaxCols && a.dk >= 1, op, "value head dims over ", 32 * kMaxCols,
        " are not supported on CUDA, got dk ", a.dk, ", dv ", a.dv);
  check(a.count <= 0x7fffffff && a.kv_heads >= 1 && a.kv_heads <= 65535, op, "too many rows (", a.count,
        ") or kv heads (", a.kv_heads, ")");
  check(a.queries == 1 || a.queries == 2, op, "takes 1 or 2 query tokens per row, got ", a.queries);
  check(a.capacity >= 0 && a.capacity <= (std::int64_t{1} << 30), op, "a sequence of up to ", a.capacity,
        " tokens is over the kernel's 2^30");
  check(!a.block_table || (a.block_tokens >= 1 && a.max_blocks >= 1 && a.capacity == a.max_blocks * a.block_tokens),
        op, "a paged cache needs block_tokens, max_blocks >= 1 and capacity = max_blocks x block_tokens, got ",
        a.block_tokens, ", ", a.max_blocks, ", ", a.capacity);
  if (a.latent) {
    const int dr = a.dk - a.dv;
    check(a.dtype == DType::bf16 && a.kv_heads == 1 && a.dv % 16 == 0 && dr >= 0 && dr % 8 == 0 &&
              a.k_row_stride == 1 && a.v_slot_stride == a.k_slot_stride && a.v_row_stride == 1 && a.latent_scales &&
              (a.rope || dr == 0) && aligned16(a.latent) && aligned16(a.latent_scales) && aligned16(a.rope),
          op, "an FP8 latent cache takes bf16, one kv head, a latent of a multiple of 16 values and a rope part of a ",
          "multiple of 8, 16-byte aligned, addressed by token index; got dtype ", a.dtype, ", kv_heads ", a.kv_heads,
          ", dk ", a.dk, ", dv ", a.dv);
  }
}

// The kernel that computes the problem (args.hpp, DecodeKernel): simt, mma or wgmma. Named, it
// must apply; prefer_mma and automatic take the Hopper kernel where it applies, then the mma.sync
// one (KILN_DECODE_KERNEL=simt or =mma in the environment, read once per process, stop automatic
// earlier: comparisons).
inline DecodeKernel chosen_kernel(const DecodeAttentionArgs& a) {
  const char* op = "decode_attention";
  switch (a.implementation) {
    case DecodeKernel::simt:
      return DecodeKernel::simt;
    case DecodeKernel::mma:
      check(mma_applies(a), op,
            "the tensor-core kernel takes MLA's latent cache in bf16: one kv head, (dk, dv) = (288, 256) or (576, ",
            "512), the values a view of the keys' first columns, 16-byte aligned rows, its shared memory within the "
            "GPU's; got dtype ", a.dtype, ", kv_heads ", a.kv_heads, ", dk ", a.dk, ", dv ", a.dv,
            a.latent ? ", an FP8 cache" : "");
      return DecodeKernel::mma;
    case DecodeKernel::wgmma:
      check(hopper::hopper_applies(a), op,
            "the Hopper kernel takes MLA's latent cache in bf16 on an sm_90 GPU: one kv head, (dk, dv) = (288, 256) ",
            "or (576, 512), ",
            "the values a view of the keys' first columns, 16-byte aligned rows, paged blocks of a multiple of 64 ",
            "tokens; got dtype ", a.dtype, ", kv_heads ", a.kv_heads, ", dk ", a.dk, ", dv ", a.dv,
            a.block_table ? ", blocks of " : "", a.block_table ? a.block_tokens : 0, a.latent ? ", an FP8 cache" : "");
      return DecodeKernel::wgmma;
    case DecodeKernel::automatic: {
      static const bool simt_only = environment_is("KILN_DECODE_KERNEL", "simt");
      static const bool mma_only = environment_is("KILN_DECODE_KERNEL", "mma");
      if (simt_only) return DecodeKernel::simt;
      if (mma_only) return mma_applies(a) ? DecodeKernel::mma : DecodeKernel::simt;
      break;
    }
    case DecodeKernel::prefer_mma:
      break;
  }
  if (hopper::hopper_applies(a)) return DecodeKernel::wgmma;
  return mma_applies(a) ? DecodeKernel::mma : DecodeKernel::simt;
}

inline void launch_decode_attention(const DecodeAttentionArgs& a) {
  if (a.count == 0) return;
  const char* op = "decode_attention";
  check_problem(a);
  check(a.splits >= 1 && a.splits <= kDecodeMaxSplits && (a.splits == 1 || a.workspace), op, "splits ", a.splits,
        " must be in [1, ", kDecodeMaxSplits, "], with a workspace when over 1");
  const DecodeKernel kernel = chosen_kernel(a);
  if (kernel == DecodeKernel::wgmma) return hopper::launch_decode_attention_hopper(a);  // decode_attention_hopper.cuh
  if (kernel == DecodeKernel::mma) return launch_decode_attention_mma(a);  // decode_attention_mma.cuh
  const DeviceInfo& info = device_info(a.launch.device);
  cuda::DeviceGuard guard(a.launch.device);
  dispatch(a, [&](auto tag, auto cols) {
    using T = decltype(tag);
    constexpr int CPL = decltype(cols)::value;
    constexpr int VK = 16 / static_cast<int>(sizeof(T));
    const Layout l = layout_of<T, CPL>(a, info, a.splits);
    const dim3 grid(static_cast<unsigned>(a.count), static_cast<unsigned>(a.kv_heads),
                    static_cast<unsigned>(l.chunks * l.splits));
    auto multiple = [](std::int64_t x) { return x % VK == 0; };
    const bool vec = aligned16(a.k) && aligned16(a.v) && multiple(a.k_slot_stride) && multiple(a.k_row_stride) &&
                     multiple(a.k_head_stride) && multiple(a.v_slot_stride) && multiple(a.v_row_stride) &&
                     multiple(a.v_head_stride) && a.dk % VK == 0 && a.dv % CPL == 0;
    auto go = [&](auto groups) {
      constexpr int NG = decltype(groups)::value;
      auto launch = [&](auto kernel) {
        opt_in_shared_memory(kernel, l.smem, a.launch.device);
        kernel<<<grid, kThreads, l.smem, a.launch.stream>>>(a, l.per);
        KILN_CUDA_CHECK_LAUNCH();
        record_kernel_variant("decode_attention", a.latent ? "simt_fp8" : "simt");
      };
      if (a.latent) {  // check_problem: bf16, the FP8 rows aligned; dispatch: CPL >= 4; max_heads: 4 at CPL 16
        if constexpr (std::is_same_v<T, bf16> && CPL >= 4 && (CPL < 16 || NG == 1))
          return launch(decode_attention_kernel<T, CPL, NG, true, true>);
        fail(op, "internal: no FP8 latent kernel for this dtype, value width and head count");
      }
      // double at dv > 256: 64 doubles of acc leave no room for 16-column vector loads (ptxas
      // spills); element loads there.
      if constexpr (!(std::is_same_v<T, double> && CPL == 16)) {
        if (vec) return launch(decode_attention_kernel<T, CPL, NG, true>);
      }
      launch(decode_attention_kernel<T, CPL, NG, false>);
    };
    constexpr int kMaxHeads = head_chunk<T, CPL>();
    const int groups = (l.per + kGroup - 1) / kGroup;  // <= kMaxHeads / kGroup
    static_assert(kMaxHeads % kGroup == 0 && kMaxHeads <= 16, "head groups dispatched below");
    [&] {
      if constexpr (kMaxHeads >= 16) {
        if (groups == 4) return go(std::integral_constant<int, 4>{});
      }
      if constexpr (kMaxHeads >= 12) {
        if (groups == 3) return go(std::integral_constant<int, 3>{});
      }
      if constexpr (kMaxHeads >= 8) {
        if (groups == 2) return go(std::integral_constant<int, 2>{});
      }
      return go(std::integral_constant<int, 1>{});
    }();
    if (l.splits > 1) launch_decode_combine<T>(a);
  });
}

inline void plan_decode_attention(const DecodeAttentionPlanArgs& p) {
  const char* op = "decode_attention_plan";
  check(p.problem && p.splits, op, "needs a problem and somewhere to write the split count");
  const DecodeAttentionArgs& a = *p.problem;
  *p.splits = 1;
  if (a.count == 0) return;
  check_problem(a);
  const DeviceInfo& info = device_info(a.launch.device);
  const DecodeKernel kernel = chosen_kernel(a);
  if (kernel == DecodeKernel::wgmma) {
    *p.splits = hopper::hopper_splits(a, info, a.splits >= 1 ? a.splits : 0);
    return;
  }
  if (kernel == DecodeKernel::mma) {
    *p.splits = mma_splits(a, info, a.splits >= 1 ? a.splits : 0);
    return;
  }
  dispatch(a, [&](auto tag, auto cols) {
    *p.splits = layout_of<decltype(tag), decltype(cols)::value>(a, info, a.splits >= 1 ? a.splits : 0).splits;
  });
}

inline const bool decode_attention_registered = register_device_kernel(&launch_decode_attention);
inline const bool decode_attention_plan_registered = register_device_kernel(&plan_decode_attention);

}  // namespace kiln::kernels::decode_attention
