// decode_attention on Hopper's tensor cores at DeepSeek-V3's (dk, dv) = (576, 512): the seesaw
// kernel (DecodeKernel::wgmma, launched by decode_attention_hopper.cuh, which takes kiln's (288,
// 256)). The problem is that kernel's: MLA's absorbed decode over the bf16 latent cache (one kv
// head, k = [latent 512 | rope key 64], v = the latent, a view of k), 1 or 2 query tokens, either
// cache layout, the sequence split and its combine (split_combine.cuh).
//
// Why another kernel. At dv 512 a warpgroup holding 64 query rows' O would need 256 floats a
// thread: O is split over the two consumer warpgroups by columns (consumer 0 the values 0-255,
// consumer 1 256-511: 128 floats each), so both need every tile's P. The schedule is FlashMLA's
// "seesaw" (DeepSeek, "A Deep-Dive Into the New Flash MLA Kernel", 2025-04-22): each consumer
// computes S and the softmax of alternate tiles and hands its P to the other through shared
// memory, so that both do the same work and one's softmax runs under the other's products.
//
// Work split. One block of 3 warpgroups (producer, consumers 0 and 1) per (sequence, chunk of 64
// query rows, split); row i of a chunk is query t = i / H of head i % H. The producer (one thread)
// loads the chunk's Q once and the split's key tiles of 64 keys into 2 stages, each of a tile's 9
// column chunks (64 x 64) on its own barrier: S issues each chunk's 4 products as soon as it lands
// (as FlashMLA does), and a tile's left half (chunks 0-3) is freed apart from its right half, so
// that the next even tile's first chunks are copied while this pair still runs (the even tiles'
// left half is read by consumer 0 alone: S and its P·V, done early in the pair;
// KILN_DECODE_SEESAW_CHUNKS=off waits for and frees whole tiles, for comparisons). Per pair of tiles
// (a = 2p, b = 2p + 1), with m the rows' running maximum, shared by both consumers:
//   consumer 0                                   consumer 1
//   S_a = Q·K_aᵀ                                 S_b = Q·K_bᵀ (issued at once: both in flight)
//   m_a = max(m, rowmax S_a) -> shared memory    (waits for m_a) O_R, l_1 *= 2^(m - m_a)
//   P_a = 2^(S_a - m_a), O_L, l_0 *= 2^(m - m_a) m_b = max(m_a, rowmax S_b) -> shared memory
//   O_L += P_a·V_a,L  (P from registers)         P_b = 2^(S_b - m_b) -> shared memory,
//   (waits for m_b) P_a 2^(m_a - m_b) -> shared     O_R, l_1 *= 2^(m_a - m_b), O_R += P_b·V_b,R
//   O_L, l_0 *= 2^(m_a - m_b)                    (waits for P_a) O_R += P_a·V_a,R
//   (waits for P_b) O_L += P_b·V_b,L
// After the pair both hold O and their l relative to m = m_b; at the end l = l_0 + l_1 and each
// consumer writes its 256 columns. A last tile without a partner (an odd count) is a pair whose
// m_b = m_a. The row sums count each tile once (l_0 tile a's, l_1 tile b's). P lands in the tile's
// own rope columns (the 64 columns 512-575: 64 rows x 128 bytes, one swizzled chunk, like the
// A operand's), which no one reads once the tile's S is done: Q (72 KB) and two stages (144 KB)
// leave no room for separate P buffers.
//
// Products a tile: S 36 wgmma m64n64k16 (A = Q, B = the tile, K-major from shared memory), each
// consumer's P·V 4 k steps x two m64n128k16 (V the tile's value columns read MN-major; P from
// registers for its own tile, from shared memory, K-major, for the other's). Its own tile's keys
// past the split's end: the owner zeroes their value rows (all 512 columns) before handing P on
// (never-written rows may hold NaN, and 0 · NaN is NaN; the masked scores ignore them).
//
// Shared memory: Q 72 KB + 2 stages x 72 KB + the maxima and sums exchanged (1 KB) + barriers:
// 218 KB. Registers: 232 a consumer thread (O 128, S 32, P 16), 40 the producer.
//
// Bytes and FLOPs: each key row (1152 bytes) is read once per (chunk, split) block; per query row
// and key 2 (576 + 512) FLOPs. At 128 heads x 2 tokens four chunks read each key (the later ones
// mostly from L2).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kiln/kernels/attention/key_tiles.cuh"
#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/online_softmax.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/warpgroup.cuh"
#include "kiln/kernels/common/sm90/wgmma.cuh"
#include "kiln/kernels/common/sm90/wgmma_16bit.cuh"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/decode_attention/hopper_common.cuh"

namespace kiln::kernels::decode_attention::hopper {

constexpr int kSeesawDk = 576, kSeesawDv = 512;  // the compiled head dims (DeepSeek-V3)

struct SeesawLayout {
  static constexpr int stages = 2;
  static constexpr int tile = tile_bytes(kSeesawDk);  // Q's 64 rows, or a key tile: 72 KB
  static constexpr int k_offset = tile;
  // m after tile a (consumer 0's) and after tile b (consumer 1's), then each consumer's l: 64 floats each.
  static constexpr int exchange_offset = k_offset + stages * tile;
  // Barriers, 8 bytes each: Q's full one; full[stage][chunk] (each of a tile's 9 column chunks
  // lands on its own: S starts on the first); empty[stage][half] (a tile's left half, chunks 0-3,
  // and its right half, chunks 4-8, are freed apart: the left one of an even tile early).
  static constexpr int chunks = 9, left_chunks = 4;
  static constexpr int barrier_offset = exchange_offset + 4 * 64 * 4;
  static constexpr int full_offset = barrier_offset + 8, empty_offset = full_offset + 8 * stages * chunks;
  static constexpr std::size_t bytes = 1024 + empty_offset + 8 * 2 * stages;  // + alignment slack
  static constexpr int p_offset = 8 * kKeys * 128;  // a tile's rope chunk: its P once its S is done
};
// Hardware barriers between the consumers (bar.arrive by the one that writes, bar.sync by the one
// that reads): m_a, m_b, P_a, P_b; the sums at the end; 6 and 7 each consumer's own (a tail zeroed).
constexpr int kMaxA = 1, kMaxB = 2, kProbsA = 3, kProbsB = 4, kSums = 5, kSeesawTail = 6;

// P x scale[row] (the accumulator layout: this thread's rows 16 warp + g + 8 h, columns 8 c + 2 t
// + j) rounded to bf16 into a 64 x 64 K-major tile with the 128-byte swizzle, the layout TMA
// writes and the A descriptor reads: 16-byte unit c of row r at r·128 + ((c ^ r % 8) << 4). Row %
// 8 is g, so a warp's 32 stores of one (h, c) hit 32 different banks.
__device__ __forceinline__ void store_probabilities(unsigned char* tile, const float (&sc)[kKeys / 2],
                                                    const float (&scale)[2], int warp, int g, int t) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = 16 * warp + g + 8 * h;
#pragma unroll
    for (int c = 0; c < kKeys / 8; ++c)
      *reinterpret_cast<unsigned*>(tile + row * 128 + ((c ^ g) << 4) + 4 * t) =
          sm80::pack2<bf16>(sc[4 * c + 2 * h] * scale[h], sc[4 * c + 2 * h + 1] * scale[h]);
  }
}

// O += P·V over 256 value columns from v_addr, as accumulate_pv, with P from shared memory
// (store_probabilities' tile at p_addr, K-major: k step kk is 32 bytes into its rows).
__device__ __forceinline__ void accumulate_pv_shared(float (&o0)[kHalf / 2], float (&o1)[kHalf / 2],
                                                     std::uint32_t p_addr, std::uint32_t v_addr) {
  constexpr std::uint32_t chunk_bytes = kKeys * 128;
  using Mma = sm90::Wgmma16<bf16, kHalf, false, true>;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const std::uint64_t pa = sm90::smem_descriptor_k_major_sw128(p_addr + kk * 32);
    const std::uint32_t at = v_addr + kk * 16 * 128;
    Mma::ss(o0, pa, sm90::smem_descriptor_mn_major_sw128(at, chunk_bytes), 1);
    Mma::ss(o1, pa, sm90::smem_descriptor_mn_major_sw128(at + 2 * chunk_bytes, chunk_bytes), 1);
  }
}

// The producer (one thread): Q's 64 rows once, then the key tiles into the 2 stages, each of a
// tile's 9 column chunks on its own full barrier (8 KB each); the left half (chunks 0-3) waits for
// its stage's left empty barrier, the right half (4-8) for the right one.
__device__ __forceinline__ void produce_chunks(const CUtensorMap* q_map, const CUtensorMap* k_map,
                                               const BlockKeys& keys, int q_row, std::uint32_t base) {
  using Lay = SeesawLayout;
  constexpr std::uint32_t kChunk = kKeys * 128;
  const std::uint32_t q_full = base + Lay::barrier_offset;
  sm90::mbarrier_arrive_expect_bytes(q_full, Lay::tile);
  for (int c = 0; c < Lay::chunks; ++c) sm90::tma_load_2d(base + c * kChunk, q_map, 64 * c, q_row, q_full);
  for (int i = 0; i < keys.tiles; ++i) {
    const int st = i & 1;
    const std::uint32_t parity = ((i >> 1) & 1) ^ 1;
    std::int64_t block = 0;
    int row = 0;
    keys.token_rows.locate(keys.begin + i * kKeys, block, row);
    for (int c = 0; c < Lay::chunks; ++c) {
      if (c == 0 || c == Lay::left_chunks)
        sm90::mbarrier_wait(base + Lay::empty_offset + 8 * (2 * st + (c == 0 ? 0 : 1)), parity);
      const std::uint32_t full = base + Lay::full_offset + 8 * (st * Lay::chunks + c);
      sm90::mbarrier_arrive_expect_bytes(full, kChunk);
      sm90::tma_load_3d(base + Lay::k_offset + st * Lay::tile + c * kChunk, k_map, 64 * c, row,
                        static_cast<int>(block), full);
    }
  }
}

// S = Q·Kᵀ for one tile (scores<DK> of hopper_common.cuh), issued chunk by chunk as each of the
// tile's chunks lands (`fine`; else after all of them: KILN_DECODE_SEESAW_CHUNKS=off, to compare).
// A fence before each chunk's products: the accumulators are in flight across the wait's branch,
// and ptxas would insert it otherwise (CUTLASS's main loops fence every k block too).
template <int DK>
__device__ __forceinline__ void scores_by_chunk(float (&sc)[kKeys / 2], std::uint32_t q_addr, std::uint32_t k_addr,
                                                std::uint32_t full_chunks, std::uint32_t parity, bool fine) {
  if (!fine)
    for (int c = 0; c < chunks(DK); ++c) sm90::mbarrier_wait(full_chunks + 8 * c, parity);
  scores<DK>(sc, q_addr, k_addr, [&](int c) {
    if (fine) sm90::mbarrier_wait(full_chunks + 8 * c, parity);
    sm90::wgmma_fence();
  });
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    decode_attention_seesaw_kernel(const __grid_constant__ CUtensorMap q_map,
                                   const __grid_constant__ CUtensorMap k_map, const DecodeAttentionArgs a,
                                   bool fine) {
  static_assert(DK == kSeesawDk && DV == kSeesawDv, "the seesaw kernel's layout is DeepSeek-V3's (576, 512)");
  using Lay = SeesawLayout;
  static_assert(chunks(DK) == SeesawLayout::chunks, "a barrier per column chunk");
  constexpr int VC = DV / 64;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char decode_seesaw_smem[];
  const std::uint32_t raw = sm90::shared_address(decode_seesaw_smem);
  const std::uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* const base_ptr = decode_seesaw_smem + (base - raw);
  const std::uint32_t q_full = base + Lay::barrier_offset, full0 = base + Lay::full_offset,
                      empty0 = base + Lay::empty_offset;

  const BlockRows br = block_rows(a, 64);
  const int first = br.first, hc = br.rows, split = br.split;  // hc: this block's real query rows
  const std::int64_t seq = br.seq, row0 = br.row0;
  const int tid = static_cast<int>(threadIdx.x);

  BlockKeys keys;
  if (!block_keys(a, seq, split, row0, hc, tid, keys)) return;  // the whole block leaves together
  const int L = keys.length, begin = keys.begin, end = keys.end, tiles = keys.tiles;
  // Readers of each half: stage 0 holds the even tiles (consumer 0's): its left half is read by
  // consumer 0 alone (S, its P·V), its right half by both (consumer 1's P·V reads V_R and P); stage
  // 1 holds the odd tiles (consumer 1's), both halves read by both. One arrival per reading warp.
  if (tid == 0) {
    sm90::prefetch_tensor_map(&q_map);
    sm90::prefetch_tensor_map(&k_map);
    sm90::mbarrier_init(q_full, 1);
    for (int c = 0; c < Lay::stages * Lay::chunks; ++c) sm90::mbarrier_init(full0 + 8 * c, 1);
    for (int h = 0; h < 2 * Lay::stages; ++h) sm90::mbarrier_init(empty0 + 8 * h, h == 0 ? 4 : 8);
    sm90::mbarrier_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the producer's idle threads leave below

  const int warpgroup = sm90::warp_uniform(tid >> 7);
  const auto stage = [&](int j) { return base + Lay::k_offset + (j & 1) * Lay::tile; };  // tile j's
  if (warpgroup == 0) {
    // ---- producer ----
    sm90::release_registers<kProducerRegisters>();
    if (tid == 0) produce_chunks(&q_map, &k_map, keys, static_cast<int>(row0), base);
    return;
  }

  // ---- consumers ----
  sm90::claim_registers<kConsumerRegisters>();
  const int wg = warpgroup - 1;
  const int lane = tid & 31, warp = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
  const int row_of[2] = {16 * warp + g, 16 * warp + g + 8};  // this thread's two rows of the chunk
  // The keys each row sees, j < limit; the tiles at or past the smallest limit take the masked softmax.
  std::int64_t key_first[2], key_last[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int tq = (first + row_of[r]) / a.heads;
    key_first[r] = 0;
    key_last[r] = (row_of[r] < hc ? ::min(end, L - (a.queries - 1 - tq)) : 0) - 1;
  }
  const int unmasked_end = ::min(end, L - (a.queries - 1));  // tiles ending at or before it need no mask
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e;
  const std::uint32_t v_offset = 4 * wg * kKeys * 128;  // this consumer's value columns: chunks 4 wg .. 4 wg + 3
  float* const exchange = reinterpret_cast<float*>(base_ptr + Lay::exchange_offset);

  float o0[kHalf / 2], o1[kHalf / 2], sc[kKeys / 2];
#pragma unroll
  for (int i = 0; i < kHalf / 2; ++i) o0[i] = o1[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) sc[i] = 0.f;  // overwritten (scale_d = 0); defined for the compiler
  unsigned pa[kKeys / 16][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const auto full_chunks = [&](int j) { return full0 + 8 * (j & 1) * Lay::chunks; };
  // Waits for chunks c0 .. c1 - 1 of tile j (landed long ago where the owner handed P over: the
  // wait makes the copy visible to this consumer).
  const auto wait_chunks = [&](int j, int c0, int c1) {
    for (int c = c0; c < c1; ++c) sm90::mbarrier_wait(full_chunks(j) + 8 * c, (j >> 1) & 1);
  };
  // This warp is done with a half of tile j's stage (0 left, 1 right).
  const auto release = [&](int j, int half) {
    __syncwarp();
    if (lane == 0) sm90::mbarrier_arrive(empty0 + 8 * (2 * (j & 1) + half));
  };
  // The owner's softmax of tile j (its S waited for): m raised over it, l scaled, base for the exponentials.
  const auto maxima = [&](int j, float (&alpha)[2], float (&bases)[2]) {
    const int n0 = begin + j * kKeys;
    if (n0 + kKeys > unmasked_end)
      attention::softmax_maxima<true, kKeys>(sc, m, l, alpha, bases, attention::row_bounds(key_first, key_last, n0, t),
                                             scale_log2);
    else
      attention::softmax_maxima<false, kKeys>(sc, m, l, alpha, bases, attention::RowBounds{}, scale_log2);
  };
  // The owner of tile j zeroes the values of its rows past the split's end (all 512 columns: the
  // other consumer reads the tile only after the owner's P, handed over behind a barrier).
  const auto zero_tail = [&](int j) {
    const int valid = end - (begin + j * kKeys);
    if (valid < kKeys) {
      zero_tail_values<VC>(base_ptr + (stage(j) - base), valid, tid & 127, 128);
      sm90::fence_proxy_async_shared();
      sm90::named_barrier_sync(kSeesawTail + wg, 128);
    }
  };
  const auto publish_max = [&](int which) {  // 0: m_a, 1: m_b
    if (t == 0)
#pragma unroll
      for (int r = 0; r < 2; ++r) exchange[64 * which + row_of[r]] = m[r];
  };
  // 2^(m_old - m_new) for a maximum m_new read from the other consumer (rows without keys: 0).
  const auto factor_to = [&](float m_old, float m_new) {
    return exp2_approx(m_old - (m_new == -INFINITY ? 0.f : m_new));
  };
  const auto scale_o = [&](const float (&f)[2]) {
#pragma unroll
    for (int x = 0; x < kHalf / 2; ++x) {
      o0[x] *= f[(x >> 1) & 1];
      o1[x] *= f[(x >> 1) & 1];
    }
  };

  sm90::mbarrier_wait(q_full, 0);
  const int pairs = (tiles + 1) / 2;
  for (int p = 0; p < pairs; ++p) {
    const int ja = 2 * p, jb = ja + 1;
    const bool has_b = jb < tiles;
    if (wg == 0) {
      scores_by_chunk<DK>(sc, base, stage(ja), full_chunks(ja), (ja >> 1) & 1, fine);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_registers(sc);
      float alpha[2], bases[2];
      maxima(ja, alpha, bases);
      publish_max(0);
      sm90::named_barrier_arrive(kMaxA, 256);
      attention::softmax_exponentials<kKeys>(sc, l, bases);
      scale_o(alpha);
      zero_tail(ja);
      to_a_operand(pa, sc);
      sm90::wgmma_fence();
      accumulate_pv(o0, o1, pa, stage(ja) + v_offset);
      sm90::wgmma_commit();
      float beta[2] = {1.f, 1.f};
      if (has_b) {
        sm90::named_barrier_sync(kMaxB, 256);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float mb = exchange[64 + row_of[r]];
          beta[r] = factor_to(m[r], mb);
          m[r] = mb;
          l[r] *= beta[r];
        }
      }
      // P_a relative to m_b for consumer 1 (its own P·V above used P_a relative to m_a; O_L follows).
      store_probabilities(base_ptr + (stage(ja) - base) + Lay::p_offset, sc, beta, warp, g, t);
      sm90::fence_proxy_async_shared();
      sm90::named_barrier_arrive(kProbsA, 256);
      if (fine) release(ja, 1);  // done with the right half: S, the tail, P_a written
      sm90::wgmma_wait<0>();
      sm90::fence_registers(o0);
      sm90::fence_registers(o1);
      release(ja, 0);  // the left half's last reader: the next even tile's first chunks may land
      if (!fine) release(ja, 1);
      scale_o(beta);
      if (has_b) {
        sm90::named_barrier_sync(kProbsB, 256);
        wait_chunks(jb, 0, Lay::left_chunks);
        wait_chunks(jb, Lay::chunks - 1, Lay::chunks);
        sm90::wgmma_fence();
        accumulate_pv_shared(o0, o1, stage(jb) + Lay::p_offset, stage(jb) + v_offset);
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        sm90::fence_registers(o0);
        sm90::fence_registers(o1);
        release(jb, 0);  // at once: the producer's next copy into it overlaps the next pair's S_a
        release(jb, 1);
      }
    } else {
      if (has_b) {
        scores_by_chunk<DK>(sc, base, stage(jb), full_chunks(jb), (jb >> 1) & 1, fine);
        sm90::wgmma_commit();
      }
      sm90::named_barrier_sync(kMaxA, 256);
      float gamma[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float ma = exchange[row_of[r]];
        gamma[r] = factor_to(m[r], ma);
        m[r] = ma;
        l[r] *= gamma[r];
      }
      if (has_b) {
        sm90::wgmma_wait<0>();
        sm90::fence_registers(sc);
        float alpha[2], bases[2];
        maxima(jb, alpha, bases);
        publish_max(1);
        sm90::named_barrier_arrive(kMaxB, 256);
        attention::softmax_exponentials<kKeys>(sc, l, bases);
#pragma unroll
        for (int r = 0; r < 2; ++r) gamma[r] *= alpha[r];
        zero_tail(jb);
        if (fine) release(jb, 0);  // done with the left half: S, the tail (consumer 0's P·V reads it still)
        to_a_operand(pa, sc);
        const float one[2] = {1.f, 1.f};
        store_probabilities(base_ptr + (stage(jb) - base) + Lay::p_offset, sc, one, warp, g, t);
        sm90::fence_proxy_async_shared();
        sm90::named_barrier_arrive(kProbsB, 256);
      }
      scale_o(gamma);  // no product in flight: the previous pair's were waited for
      sm90::named_barrier_sync(kProbsA, 256);
      wait_chunks(ja, Lay::left_chunks, Lay::chunks);  // the right half: V_R and P_a
      if (has_b) {
        // P_b's registers are final before the fence (else the compiler may sink their packing
        // past it, and ptxas then fences again before the product that reads them).
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
          for (int x = 0; x < 4; ++x) asm volatile("" : "+r"(pa[kk][x])::"memory");
        sm90::wgmma_fence();
        accumulate_pv_shared(o0, o1, stage(ja) + Lay::p_offset, stage(ja) + v_offset);
        sm90::wgmma_commit();
        accumulate_pv(o0, o1, pa, stage(jb) + v_offset);
        sm90::wgmma_commit();
        sm90::wgmma_wait<1>();  // groups complete in order: P_a·V_a is done
        release(ja, 1);         // (the even tiles' left half is consumer 0's alone)
        sm90::wgmma_wait<0>();
        sm90::fence_registers(o0);
        sm90::fence_registers(o1);
        if (!fine) release(jb, 0);
        release(jb, 1);
      } else {
        sm90::wgmma_fence();
        accumulate_pv_shared(o0, o1, stage(ja) + Lay::p_offset, stage(ja) + v_offset);
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        sm90::fence_registers(o0);
        sm90::fence_registers(o1);
        release(ja, 1);
      }
    }
  }

  // Both hold O and l relative to the same final m; l = l_0 + l_1, added in that order by both.
  float* const sums = exchange + 128;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = sm80::quad_sum(l[r]);
    if (t == 0) sums[64 * wg + row_of[r]] = l[r];
  }
  sm90::named_barrier_sync(kSums, 256);
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = sums[row_of[r]] + sums[64 + row_of[r]];
  store_results(a, row0, hc, split, 0, kHalf * 2 * wg, o0, o1, m, l, wg == 0, warp, g, t);
}

}  // namespace kiln::kernels::decode_attention::hopper
