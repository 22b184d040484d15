// decode_attention on Hopper's tensor cores (sm_90a): wgmma fed by TMA, warp-specialised (arguments
// args.hpp, chosen by DecodeAttentionArgs::implementation: DecodeKernel::wgmma, and by automatic
// where it applies). The function of decode_attention_mma.cuh (MLA's absorbed decode over the bf16
// latent cache: one kv head, k = [latent | rope key], v = the latent, a view of k; 1 or 2 query
// tokens; either cache layout; the sequence split and its combine of split_combine.cuh) at kiln's
// big config's (dk, dv) = (288, 256); the host side below also launches DeepSeek-V3's (576, 512)
// on the seesaw kernel (decode_attention_seesaw.cuh: a warpgroup's O would be 256 floats a thread
// here, so there the two consumers split O's columns and hand P to each other). The pieces both
// share are hopper_common.cuh's.
//
// Why a third kernel. The mma.sync kernel is bound by each warp's serial chain per 64-key tile
// (ldmatrix, 272 mma, the softmax; one warp a sub-partition to hide it): 119 TFLOP/s at 128 heads
// x 2 tokens where the tensor cores give ~990, and 0.33-0.48 of the copy bandwidth on long caches
// with few heads, where cp.async by every thread keeps too few bytes in flight (docs/mla.md). Here
// one thread's TMA copies keep up to 3-4 tiles (37 KB each) in flight a multiprocessor, and wgmma
// runs the products asynchronously from shared memory, 64 query rows a warpgroup.
//
// Work split. One block of 3 warpgroups (384 threads) per (sequence, chunk of query rows, split):
// warpgroup 0 the producer (one thread issues every TMA copy: the chunk's Q once, then the split's
// key tiles of 64 keys into a ring of stages, each found through the block table or the slot),
// warpgroups 1 and 2 the consumers. Row i of a chunk is query t = i / H of head i % H (q and out
// are contiguous in i). Two modes, by the sequence's T x H query rows:
//   rows (T H > 64): chunks of 128 rows, each consumer owning 64 of them, both reading every key
//     tile (a tile is freed when both have done their P·V on it); the consumers take turns at
//     issuing their products (sm90::PingPong, as the training forward) so that one's softmax runs
//     under the other's wgmma;
//   shared rows (T H <= 64: 12-16 heads x 1-2 tokens, the engine's shapes): one chunk of 64 rows
//     that both consumers hold, consumer c taking tiles c, c + 2, ... with its own online-softmax
//     state; at the end consumer 1 leaves its state in shared memory and consumer 0 merges it
//     (M = max m_c, L = sum l_c 2^(m_c - M), O = sum O_c 2^(m_c - M), in that order: the same bits
//     every run). At these shapes the products are nearly free (a 64-row wgmma for 12 real rows)
//     and what matters is that the copies keep DRAM busy, which two consumers draining alternate
//     stages help.
// Per 64-key tile a consumer computes
//   S = Q·Kᵀ   18 wgmma m64n64k16, A = its Q rows, B = the key tile, both K-major from shared memory;
//   softmax    masks keys past each row's limit (lengths[a] − (T − 1 − t): query 0 of 2 does not see
//              its draft; only tiles reaching past the smallest limit take the masked path), base-2
//              online softmax (attention's scale_and_mask and exp2);
//   O += P·V   P from registers (rounded to bf16), V = the tile's first 256 columns read MN-major:
//              4 k steps of 16 keys x two m64n128k16 (O is 64 x 256 floats: 2 x 64 a thread).
// Each consumer pipelines as the training forward does (FlashAttention-3): S of tile n is issued with
// P·V of tile n − 1, the softmax of n runs while P·V is in flight.
//
// Keys past the split's end in its last tile: their scores are masked; their values are multiplied
// by p = 0, but a cache row that was never written may hold anything, NaN included, and 0 · NaN is
// NaN: each consumer zeroes those rows' value columns in shared memory before the tile's products
// (fenced to the async proxy). Bad table entries give zeros (args.hpp), checked before the roles
// split; rows past the tensor's q rows read zeros (TMA), other sequences' rows are computed and
// never stored.
//
// Layouts (attention_hopper.cuh's): a tile of R rows x D elements is ceil(D/64) column chunks of
// R rows x 128 bytes, written by TMA with the 128-byte swizzle, each chunk 1024-byte aligned; dk
// 288 takes 5 chunks, the last one's 32 columns past dk zero-filled by TMA and never read. The key
// tensor map is 3-D [blocks][rows of a block][dk] with the cache's strides (paged: the pool, a tile
// is rows n0 % block_tokens .. + 63 of block table[n0 / block_tokens], so block_tokens must be a
// multiple of 64; contiguous: [slots][capacity][dk], rows past the capacity read as zeros).
//
// Shared memory: rows mode Q 2 x 40 KB + 3 stages x 40 KB, shared rows Q 40 KB + 4 stages x 40 KB:
// 200 KB + barriers. Registers: 232 a consumer thread (O 128, S 32, P 16), 40 the producer.
//
// Bytes and FLOPs: each key row (576 bytes) is read once per (chunk, split) block; per query row and
// key 2 (288 + 256) FLOPs. At 128 heads x 2 tokens two chunks read each key (the second mostly
// from L2).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kiln/core/environment.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/attention/key_tiles.cuh"
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
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/decode_attention/decode_attention_seesaw.cuh"
#include "kiln/kernels/decode_attention/hopper_common.cuh"
#include "kiln/kernels/decode_attention/split_combine.cuh"

namespace kiln::kernels::decode_attention::hopper {

constexpr int kDk = 288, kDv = 256;  // the compiled head dims (kiln's big config)
// Hardware barriers: 1 and 2 the consumers' turns (sm90::PingPong), 3 and 4 the shared-rows merge,
// 5 and 6 each consumer's own (after zeroing a tile's tail).
constexpr int kMergeDone = 3, kMergeState = 4, kTailZeroed = 5;

template <bool SHARED_ROWS>
struct Layout {
  static constexpr int rows = SHARED_ROWS ? 64 : 128;  // query rows a block
  static constexpr int q_slots = SHARED_ROWS ? 1 : 2;  // 64-row Q buffers
  static constexpr int stages = SHARED_ROWS ? 4 : 3;   // key tiles in the ring
  static constexpr int q_bytes = tile_bytes(kDk);
  static constexpr int k_bytes = tile_bytes(kDk);
  static constexpr int k_offset = q_slots * q_bytes;
  // Q's full barrier, then full[stages] and empty[stages]: 8 bytes each.
  static constexpr int barrier_offset = k_offset + stages * k_bytes;
  static constexpr std::size_t bytes = 1024 + barrier_offset + 8 * (1 + 2 * stages);  // + alignment slack
  // The shared-rows merge: consumer 1's O (64 x 256 floats, fragment order), then m and l of its rows.
  static_assert(!SHARED_ROWS || 64 * kDv * 4 + 2 * 64 * 4 <= stages * k_bytes, "the merge fits in the key ring");
};

template <bool SHARED_ROWS>
__global__ void __launch_bounds__(kThreads, 1)
    decode_attention_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                   const __grid_constant__ CUtensorMap k_map, const DecodeAttentionArgs a,
                                   bool pingpong) {
  using Lay = Layout<SHARED_ROWS>;
  constexpr int KC = chunks(kDk), VC = kDv / 64, kStages = Lay::stages;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char decode_hopper_smem[];
  const std::uint32_t raw = sm90::shared_address(decode_hopper_smem);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* const base_ptr = decode_hopper_smem + (base - raw);
  const std::uint32_t q_full = base + Lay::barrier_offset, full0 = q_full + 8, empty0 = full0 + 8 * kStages;

  const BlockRows br = block_rows(a, Lay::rows);
  const int first = br.first, hc = br.rows, split = br.split;  // hc: this block's real query rows
  const std::int64_t seq = br.seq, row0 = br.row0;
  const int tid = static_cast<int>(threadIdx.x);

  BlockKeys keys;
  if (!block_keys(a, seq, split, row0, hc, tid, keys)) return;  // the whole block leaves together
  const int L = keys.length, begin = keys.begin, end = keys.end, tiles = keys.tiles;
  // every tile is read by the consumers' 4 (shared rows) or 8 warps
  if (tid == 0) init_barriers(&q_map, &k_map, q_full, full0, empty0, kStages, SHARED_ROWS ? 4 : 8);
  __syncthreads();  // the last block-wide barrier: the producer's idle threads leave below

  const int warpgroup = sm90::warp_uniform(tid >> 7);
  const auto k_addr = [&](int st) { return base + Lay::k_offset + st * Lay::k_bytes; };
  if (warpgroup == 0) {
    // ---- producer ----
    sm90::release_registers<kProducerRegisters>();
    if (tid == 0)
      produce_tiles<KC, kStages>(&q_map, &k_map, keys, static_cast<int>(row0), Lay::q_slots, base, q_full, k_addr(0),
                                 full0, empty0);
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<kConsumerRegisters>();
  const int wg = warpgroup - 1;
  const int lane = tid & 31, warp = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
  const int wg_row0 = SHARED_ROWS ? 0 : 64 * wg;  // this consumer's first row of the chunk
  const std::uint32_t q_addr = base + (SHARED_ROWS ? 0 : wg * Lay::q_bytes);
  // This thread's two rows (g and g + 8 of its warp's 16) and the keys each sees, j < limit; the
  // tiles at or past the smallest limit of the sequence's rows take the masked softmax.
  std::int64_t key_first[2], key_last[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = wg_row0 + 16 * warp + g + 8 * r;
    const int tq = (first + i) / a.heads;
    key_first[r] = 0;
    key_last[r] = (i < hc ? ::min(end, L - (a.queries - 1 - tq)) : 0) - 1;
  }
  const int unmasked_end = ::min(end, L - (a.queries - 1));  // tiles ending at or before it need no mask
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e;

  float o0[kHalf / 2], o1[kHalf / 2], sc[kKeys / 2];
#pragma unroll
  for (int i = 0; i < kHalf / 2; ++i) o0[i] = o1[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) sc[i] = 0.f;  // overwritten (scale_d = 0); defined for the compiler
  unsigned pa[kKeys / 16][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];

  const auto release = [&](int i) {  // this warp is done with tile i's stage
    __syncwarp();
    if (lane == 0) sm90::mbarrier_arrive(empty0 + 8 * (i % kStages));
  };
  // Waits for tile i; if it reaches past the split's end, zeroes the value columns of the rows
  // past it (never-written rows may hold NaN, and 0 · NaN is NaN) and fences them to wgmma.
  const auto acquire = [&](int i) {
    const int st = i % kStages;
    sm90::mbarrier_wait(full0 + 8 * st, (i / kStages) & 1);
    const int valid = end - (begin + i * kKeys);
    if (valid < kKeys) {
      zero_tail_values<VC>(base_ptr + Lay::k_offset + st * Lay::k_bytes, valid, tid & 127, 128);
      sm90::fence_proxy_async_shared();
      sm90::named_barrier_sync(kTailZeroed + wg, 128);
    }
  };
  const auto softmax_at = [&](int i) {
    const int n0 = begin + i * kKeys;
    if (n0 + kKeys > unmasked_end)
      attention::softmax_update<true, kKeys>(sc, m, l, alpha, attention::row_bounds(key_first, key_last, n0, t),
                                                scale_log2);
    else
      attention::softmax_update<false, kKeys>(sc, m, l, alpha, attention::RowBounds{}, scale_log2);
  };

  // Rows mode: both consumers take every tile, in turns; shared rows: consumer c the tiles c, c + 2, ...
  const int step = SHARED_ROWS ? 2 : 1, i_first = SHARED_ROWS ? wg : 0;
  const sm90::PingPong turns{!SHARED_ROWS && pingpong, wg};
  turns.start();
  sm90::mbarrier_wait(q_full, 0);
  if (i_first < tiles) {
    acquire(i_first);
    turns.take_turn();
    sm90::wgmma_fence();
    scores<kDk>(sc, q_addr, k_addr(i_first % kStages));
    sm90::wgmma_commit();
    turns.pass_turn();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(sc);
    softmax_at(i_first);
    to_a_operand(pa, sc);
    int prev = i_first;
    for (int i = i_first + step; i < tiles; i += step) {
      acquire(i);
      turns.take_turn();
      sm90::wgmma_fence();
      scores<kDk>(sc, q_addr, k_addr(i % kStages));
      sm90::wgmma_commit();
      accumulate_pv(o0, o1, pa, k_addr(prev % kStages));
      sm90::wgmma_commit();
      turns.pass_turn();
      sm90::wgmma_wait<1>();  // groups complete in order: S is done, P·V may still run
      sm90::fence_registers(sc);
      softmax_at(i);
      sm90::wgmma_wait<0>();
      sm90::fence_registers(o0);
      sm90::fence_registers(o1);
      release(prev);
#pragma unroll
      for (int x = 0; x < kHalf / 2; ++x) {
        o0[x] *= alpha[(x >> 1) & 1];
        o1[x] *= alpha[(x >> 1) & 1];
      }
      to_a_operand(pa, sc);
      prev = i;
    }
    turns.take_turn();
    sm90::wgmma_fence();
    accumulate_pv(o0, o1, pa, k_addr(prev % kStages));
    sm90::wgmma_commit();
    turns.pass_turn();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(o0);
    sm90::fence_registers(o1);
    release(prev);
  }
  turns.finish();
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = sm80::quad_sum(l[r]);

  if constexpr (SHARED_ROWS) {
    // The merge: once both are past every tile (the ring is free: every copy was waited for),
    // consumer 1 stores its state, consumer 0 folds it into its own.
    float* const sO = reinterpret_cast<float*>(base_ptr + Lay::k_offset);  // [64 x 256] in fragment order
    float* const sML = sO + 64 * kDv;                                      // m of the 64 rows, then l
    const int frag = (warp * 32 + lane);  // this thread's place in fragment order
    sm90::named_barrier_sync(kMergeDone, 256);
    if (wg == 1) {
#pragma unroll
      for (int x = 0; x < kHalf / 2; x += 4) {
        reinterpret_cast<float4*>(sO)[(x / 4) * 128 + frag] = make_float4(o0[x], o0[x + 1], o0[x + 2], o0[x + 3]);
        reinterpret_cast<float4*>(sO)[(kHalf / 8 + x / 4) * 128 + frag] =
            make_float4(o1[x], o1[x + 1], o1[x + 2], o1[x + 3]);
      }
      if (t == 0)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          sML[16 * warp + g + 8 * r] = m[r];
          sML[64 + 16 * warp + g + 8 * r] = l[r];
        }
      sm90::named_barrier_arrive(kMergeState, 256);
      return;
    }
    sm90::named_barrier_sync(kMergeState, 256);
    float f_mine[2], f_theirs[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m1 = sML[16 * warp + g + 8 * r], l1 = sML[64 + 16 * warp + g + 8 * r];
      const float mx = ::fmaxf(m[r], m1);
      const float b = mx == -INFINITY ? 0.f : mx;
      f_mine[r] = exp2f(m[r] - b);  // 0 where a consumer saw no key (m −inf)
      f_theirs[r] = exp2f(m1 - b);
      l[r] = l[r] * f_mine[r] + l1 * f_theirs[r];
      m[r] = mx;
    }
#pragma unroll
    for (int x = 0; x < kHalf / 2; x += 4) {
      const float4 v0 = reinterpret_cast<const float4*>(sO)[(x / 4) * 128 + frag];
      const float4 v1 = reinterpret_cast<const float4*>(sO)[(kHalf / 8 + x / 4) * 128 + frag];
      // Elements x .. x + 3 are rows (r = 0, 0, 1, 1) of the C layout: 4c + 2r + j.
      o0[x] = o0[x] * f_mine[0] + v0.x * f_theirs[0];
      o0[x + 1] = o0[x + 1] * f_mine[0] + v0.y * f_theirs[0];
      o0[x + 2] = o0[x + 2] * f_mine[1] + v0.z * f_theirs[1];
      o0[x + 3] = o0[x + 3] * f_mine[1] + v0.w * f_theirs[1];
      o1[x] = o1[x] * f_mine[0] + v1.x * f_theirs[0];
      o1[x + 1] = o1[x + 1] * f_mine[0] + v1.y * f_theirs[0];
      o1[x + 2] = o1[x + 2] * f_mine[1] + v1.z * f_theirs[1];
      o1[x + 3] = o1[x + 3] * f_mine[1] + v1.w * f_theirs[1];
    }
  }

  store_results(a, row0, hc, split, wg_row0, 0, o0, o1, m, l, true, warp, g, t);
}

// ---- host side ------------------------------------------------------------------------------------

// Whether a Hopper kernel computes the problem (args.hpp, DecodeKernel::wgmma): an sm_90 GPU, bf16,
// MLA's latent cache at (288, 256) (this file's kernel) or (576, 512) (the seesaw kernel,
// decode_attention_seesaw.cuh) with v a view of k, 16-byte aligned rows and blocks, paged blocks
// of a multiple of 64 tokens, and row counts that fit TMA's 32-bit coordinates.
inline bool hopper_seesaw(const DecodeAttentionArgs& a) { return a.dk == kSeesawDk && a.dv == kSeesawDv; }
inline bool hopper_applies_to_device(int device) { return device_info(device).major == 9; }
inline bool hopper_applies(const DecodeAttentionArgs& a) {
  const bool dims = (a.dk == kDk && a.dv == kDv) || hopper_seesaw(a);
  if (a.dtype != DType::bf16 || a.latent || !dims || a.kv_heads != 1 || a.v != a.k) return false;
  if (!hopper_applies_to_device(a.launch.device)) return false;
  constexpr std::int64_t kInt = (std::int64_t(1) << 31) - 1;
  const bool paged = a.block_table != nullptr;
  return a.v_slot_stride == a.k_slot_stride && a.v_row_stride == a.k_row_stride && a.k_slot_stride % 8 == 0 &&
         a.k_row_stride % 8 == 0 && a.k_row_stride >= a.dk && aligned16(a.k) && aligned16(a.q) && aligned16(a.out) &&
         (!paged || a.block_tokens % kKeys == 0) && a.count * a.queries * a.heads <= kInt &&
         (paged ? a.num_blocks : a.num_slots) <= kInt && a.capacity <= kInt;
}

// Query-row chunks a sequence and whether they are the shared-rows mode (header); the seesaw
// kernel takes chunks of 64 rows.
inline bool hopper_shared_rows(const DecodeAttentionArgs& a) { return a.queries * a.heads <= 64; }
inline int hopper_chunks(const DecodeAttentionArgs& a) {
  if (hopper_seesaw(a)) return (a.queries * a.heads + 63) / 64;
  return hopper_shared_rows(a) ? 1 : (a.queries * a.heads + 127) / 128;
}
inline int hopper_splits(const DecodeAttentionArgs& a, const DeviceInfo& info, int wanted) {
  return sequence_splits(a.count * hopper_chunks(a), a.capacity, info.sms, wanted);
}

// KILN_DECODE_PINGPONG=off in the environment turns the rows mode's turns off, and
// KILN_DECODE_SEESAW_CHUNKS=off makes the seesaw kernel wait for whole tiles and free them whole
// (for comparisons).
inline bool decode_pingpong_enabled() {
  static const bool on = !environment_is("KILN_DECODE_PINGPONG", "off");
  return on;
}
inline bool decode_seesaw_chunks_enabled() {
  static const bool on = !environment_is("KILN_DECODE_SEESAW_CHUNKS", "off");
  return on;
}

// The kernel and, with a split (a.splits > 1, its workspace allocated by the front-end), the combine.
inline void launch_decode_attention_hopper(const DecodeAttentionArgs& a) {
  const char* op = "decode_attention";
  const int chunks_per_seq = hopper_chunks(a);
  check(a.splits >= 1 && a.splits <= kDecodeMaxSplits && (a.splits == 1 || a.workspace) &&
            static_cast<std::int64_t>(chunks_per_seq) * a.splits <= 65535 && a.count <= 2147483647,
        op, "splits ", a.splits, " must be in [1, ", kDecodeMaxSplits, "], with a workspace when over 1, for ",
        chunks_per_seq, " chunks of query rows");
  cuda::DeviceGuard guard(a.launch.device);
  const std::int64_t q_dims[2] = {a.dk, a.count * a.queries * a.heads}, q_strides[1] = {a.dk * 2};
  const CUtensorMap q_map = sm90::tensor_map_bf16_sw128(a.q, 2, q_dims, q_strides, 64, op);
  const bool paged = a.block_table != nullptr;
  const std::int64_t k_dims[3] = {a.dk, paged ? a.block_tokens : a.capacity, paged ? a.num_blocks : a.num_slots};
  const std::int64_t k_strides[2] = {a.k_row_stride * 2, a.k_slot_stride * 2};
  const CUtensorMap k_map = sm90::tensor_map_bf16_sw128(a.k, 3, k_dims, k_strides, kKeys, op);
  const dim3 grid(static_cast<unsigned>(a.count), 1, static_cast<unsigned>(chunks_per_seq * a.splits));
  const bool pingpong = decode_pingpong_enabled();
  auto launch = [&](auto kernel, std::size_t smem) {
    opt_in_shared_memory(kernel, smem, a.launch.device);
    kernel<<<grid, kThreads, smem, a.launch.stream>>>(q_map, k_map, a, pingpong);
    KILN_CUDA_CHECK_LAUNCH();
  };
  if (hopper_seesaw(a)) {
    constexpr auto kernel = decode_attention_seesaw_kernel<kSeesawDk, kSeesawDv>;
    opt_in_shared_memory(kernel, SeesawLayout::bytes, a.launch.device);
    kernel<<<grid, kThreads, SeesawLayout::bytes, a.launch.stream>>>(q_map, k_map, a, decode_seesaw_chunks_enabled());
    KILN_CUDA_CHECK_LAUNCH();
  } else if (hopper_shared_rows(a)) {
    launch(decode_attention_hopper_kernel<true>, Layout<true>::bytes);
  } else {
    launch(decode_attention_hopper_kernel<false>, Layout<false>::bytes);
  }
  record_kernel_variant("decode_attention", "wgmma");
  if (a.splits > 1) launch_decode_combine<bf16>(a);
}

}  // namespace kiln::kernels::decode_attention::hopper
