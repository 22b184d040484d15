// What the two Hopper decode kernels share (decode_attention_hopper.cuh at kiln's (288, 256),
// decode_attention_seesaw.cuh at DeepSeek-V3's (576, 512)): the block's rows, keys and early
// exits, the products of one 64-key tile, the zeroed tail of a split's last tile and the results'
// store; the barriers' setup and the producer's TMA loop are the first kernel's (the seesaw kernel
// has its own, with a barrier per column chunk). Both are blocks of 3 warpgroups (a producer, two
// consumers) over tiles of 64 keys in the layouts of attention_hopper.cuh: a tile of 64 rows x D
// elements is ceil(D / 64) column chunks of 64 rows x 128 bytes, written by TMA with the 128-byte
// swizzle, each chunk 1024-byte aligned; Q's 64-row slots have the same shape, so a Q slot and a
// key tile take the same bytes.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kiln/kernels/common/mma_sm80.cuh"
#include "kiln/kernels/common/sm90/mbarrier.cuh"
#include "kiln/kernels/common/sm90/smem.cuh"
#include "kiln/kernels/common/sm90/tma.cuh"
#include "kiln/kernels/common/sm90/wgmma.cuh"
#include "kiln/kernels/common/sm90/wgmma_bf16.cuh"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/decode_attention/split_combine.cuh"

namespace kiln::kernels::decode_attention::hopper {

constexpr int kKeys = 64;          // keys a tile
constexpr int kThreads = 3 * 128;  // the producer warpgroup and two consumers
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr int kHalf = 128;  // output columns of one m64n128 product: a consumer's O is two of them

constexpr int chunks(int d) { return (d + 63) / 64; }
// Bytes of a 64-row tile of d columns (a Q slot or a key tile).
constexpr int tile_bytes(int d) { return chunks(d) * 64 * 128; }

// Which rows a (sequence, chunk of `rows_per_block` query rows, split) block computes: grid x the
// sequence, z chunk x splits + split. Row i of a chunk is query t = i / H of head i % H (q and out
// are contiguous in i); `rows` of them are real (the sequence's last chunk may hold fewer).
struct BlockRows {
  std::int64_t seq, row0;  // row0: the block's first query row in q and out
  int split, first, rows;  // first: the chunk's first row of the sequence's T x H
};
__device__ __forceinline__ BlockRows block_rows(const DecodeAttentionArgs& a, int rows_per_block) {
  const int splits = a.splits;
  const int chunk = static_cast<int>(blockIdx.z) / splits, split = static_cast<int>(blockIdx.z) - chunk * splits;
  const int rows_per_seq = a.queries * a.heads, first = chunk * rows_per_block;
  const std::int64_t seq = blockIdx.x;
  return {seq, seq * rows_per_seq + first, split, first, ::min(rows_per_block, rows_per_seq - first)};
}

// Thread 0: the tensor maps prefetched, Q's full barrier and the ring's full (one arrival: the
// producer's, with the bytes) and empty (`readers` arrivals: one per reading warp) barriers.
__device__ __forceinline__ void init_barriers(const CUtensorMap* q_map, const CUtensorMap* k_map,
                                              std::uint32_t q_full, std::uint32_t full0, std::uint32_t empty0,
                                              int stages, int readers) {
  sm90::prefetch_tensor_map(q_map);
  sm90::prefetch_tensor_map(k_map);
  sm90::mbarrier_init(q_full, 1);
  for (int st = 0; st < stages; ++st) {
    sm90::mbarrier_init(full0 + 8 * st, 1);
    sm90::mbarrier_init(empty0 + 8 * st, readers);
  }
  sm90::mbarrier_init_fence();
}

// The keys of one (sequence, chunk, split) block, or false when it has none to compute: a split
// past the sequence's end, or a table entry out of range (args.hpp: zeros). Then the block's rows
// are written as "no keys" here, by every thread, and the whole block leaves together.
struct BlockKeys {
  int length, begin, end, tiles;
  TokenRows token_rows;
};
__device__ __forceinline__ bool block_keys(const DecodeAttentionArgs& a, std::int64_t seq, int split,
                                           std::int64_t row0, int rows, int tid, BlockKeys& out) {
  const SplitKeys keys = split_keys(a, seq, split, kKeys);
  if (keys.begin >= keys.end) {
    write_no_keys(a, row0, rows, split, tid, kThreads);
    return false;
  }
  const TokenRows token_rows{a.block_table ? a.block_table + keys.slot * a.max_blocks : nullptr, keys.slot,
                             static_cast<int>(a.block_table ? a.block_tokens : a.capacity)};
  if (token_rows.bad_entries(keys.length, a.block_table ? a.num_blocks : a.num_slots, tid, kThreads)) {
    write_no_keys(a, row0, rows, split, tid, kThreads);
    return false;
  }
  out = {keys.length, keys.begin, keys.end, (keys.end - keys.begin + kKeys - 1) / kKeys, token_rows};
  return true;
}

// The producer (one thread): Q's `q_slots` 64-row slots from query row q_row once (q_full), then
// the block's key tiles into a ring of STAGES, each stage's full barrier expecting its bytes, each
// copy waiting for the stage's empty barrier (its last readers' arrivals). A tile lies in one
// paged block (block_tokens % 64 == 0); its table entry is read before the wait for its stage, so
// that the load's latency hides under it. KC column chunks a row (Q and keys alike).
template <int KC, int STAGES>
__device__ __forceinline__ void produce_tiles(const CUtensorMap* q_map, const CUtensorMap* k_map, const BlockKeys& keys,
                                              int q_row, int q_slots, std::uint32_t q_dst, std::uint32_t q_full,
                                              std::uint32_t k_dst, std::uint32_t full0, std::uint32_t empty0) {
  constexpr std::uint32_t kTile = KC * 64 * 128;
  sm90::mbarrier_arrive_expect_bytes(q_full, q_slots * kTile);
  for (int s = 0; s < q_slots; ++s)
    for (int c = 0; c < KC; ++c)
      sm90::tma_load_2d(q_dst + s * kTile + c * 64 * 128, q_map, 64 * c, q_row + 64 * s, q_full);
  for (int i = 0; i < keys.tiles; ++i) {
    const int st = i % STAGES;
    std::int64_t block = 0;
    int row = 0;
    keys.token_rows.locate(keys.begin + i * kKeys, block, row);
    sm90::mbarrier_wait(empty0 + 8 * st, ((i / STAGES) & 1) ^ 1);
    sm90::mbarrier_arrive_expect_bytes(full0 + 8 * st, kTile);
    for (int c = 0; c < KC; ++c)
      sm90::tma_load_3d(k_dst + st * kTile + c * kKeys * 128, k_map, 64 * c, row, static_cast<int>(block),
                        full0 + 8 * st);
  }
}

// S = Q·Kᵀ for one 64 x kKeys tile over DK columns: DK / 16 wgmma m64n64k16, the first
// overwriting S; A = 64 Q rows, B = the key tile, both K-major from shared memory, in column
// chunks of 64 (4 k steps each; dk 288's last chunk has 2). before_chunk(c) runs before chunk c's
// products (the seesaw kernel waits there for the chunk's copy: decode_attention_seesaw.cuh).
template <int DK, class BeforeChunk>
__device__ __forceinline__ void scores(float (&sc)[kKeys / 2], std::uint32_t q_addr, std::uint32_t k_addr,
                                       BeforeChunk&& before_chunk) {
#pragma unroll
  for (int c = 0; c < chunks(DK); ++c) {
    before_chunk(c);
#pragma unroll
    for (int x = 0; x < 4 && 4 * c + x < DK / 16; ++x) {
      const std::uint32_t in_row = x * 32;  // 16 columns into the chunk's 128-byte rows
      sm90::WgmmaBf16<kKeys>::ss(sc, sm90::smem_descriptor_k_major_sw128(q_addr + c * 64 * 128 + in_row),
                                  sm90::smem_descriptor_k_major_sw128(k_addr + c * kKeys * 128 + in_row), c + x > 0);
    }
  }
}
template <int DK>
__device__ __forceinline__ void scores(float (&sc)[kKeys / 2], std::uint32_t q_addr, std::uint32_t k_addr) {
  scores<DK>(sc, q_addr, k_addr, [](int) {});
}

// O += P·V over 256 value columns from v_addr (four chunks: two m64n128k16 a k step of 16 keys,
// chunks 0-1 into o0 and 2-3 into o1, kKeys x 128 bytes apart), V read MN-major; P from registers
// (each warp's 16 rows as mma.sync A fragments).
__device__ __forceinline__ void accumulate_pv(float (&o0)[kHalf / 2], float (&o1)[kHalf / 2],
                                              const unsigned (&pa)[kKeys / 16][4], std::uint32_t v_addr) {
  constexpr std::uint32_t chunk_bytes = kKeys * 128;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const std::uint32_t at = v_addr + kk * 16 * 128;
    sm90::WgmmaBf16<kHalf>::rs_mn(o0, pa[kk], sm90::smem_descriptor_mn_major_sw128(at, chunk_bytes), 1);
    sm90::WgmmaBf16<kHalf>::rs_mn(o1, pa[kk], sm90::smem_descriptor_mn_major_sw128(at + 2 * chunk_bytes, chunk_bytes),
                                  1);
  }
}

// P rounded to bf16 in wgmma's A-from-registers layout, all k steps at once.
__device__ __forceinline__ void to_a_operand(unsigned (&pa)[kKeys / 16][4], const float (&sc)[kKeys / 2]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x) pa[kk][x] = sm80::pack2<bf16>(sc[8 * kk + 2 * x], sc[8 * kk + 2 * x + 1]);
}

// Zeroes the value columns (chunks 0 .. VC - 1) of rows valid .. kKeys - 1 of the tile at `tile`
// over `threads` threads from `thread`: the keys past a split's end in its last tile are masked,
// but their rows may never have been written (NaN), and P·V multiplies them by p = 0. The caller
// fences to the async proxy and synchronises its readers.
template <int VC>
__device__ __forceinline__ void zero_tail_values(unsigned char* tile, int valid, int thread, int threads) {
  const int pieces = (kKeys - valid) * VC * 8;  // 16-byte pieces: rows x value chunks x 8
  for (int x = thread; x < pieces; x += threads) {
    const int row = valid + x / (VC * 8), c = (x / 8) % VC, piece = x % 8;
    *reinterpret_cast<uint4*>(tile + c * kKeys * 128 + row * 128 + piece * 16) = make_uint4(0, 0, 0, 0);
  }
}

// This thread's two rows of a consumer's results: out = O / l (rows without keys: zeros), or with
// a split the partial state (m ln 2: the natural-log maximum the combine expects, l, O) in the
// workspace. O holds value columns col0 .. col0 + 255 of each row (o0 the first 128, o1 the next,
// in the accumulator layout); rows i of the block at rows0 + 16 warp + g + 8 r, i < rows real; m
// and l are the rows' (l summed over the quad). `write_ml`: this consumer writes the split's m, l.
__device__ __forceinline__ void store_results(const DecodeAttentionArgs& a, std::int64_t row0, int rows, int split,
                                              int first_row, int col0, const float (&o0)[kHalf / 2],
                                              const float (&o1)[kHalf / 2], const float (&m)[2], const float (&l)[2],
                                              bool write_ml, int warp, int g, int t) {
  constexpr float kLn2 = 0.6931471805599453f;
  const int splits = a.splits, dv = static_cast<int>(a.dv);
  float* const ws = static_cast<float*>(a.workspace);
  const std::int64_t ws_acc = a.count * a.queries * a.heads * splits * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = first_row + 16 * warp + g + 8 * r;
    if (i >= rows) continue;
    const std::int64_t q_row = row0 + i;
    if (splits > 1) {
      float* const dst = ws + ws_acc + (q_row * splits + split) * dv + col0 + 2 * t;
#pragma unroll
      for (int c = 0; c < kHalf / 8; ++c) {
        dst[8 * c] = o0[4 * c + 2 * r];
        dst[8 * c + 1] = o0[4 * c + 2 * r + 1];
        dst[kHalf + 8 * c] = o1[4 * c + 2 * r];
        dst[kHalf + 8 * c + 1] = o1[4 * c + 2 * r + 1];
      }
      if (write_ml && t == 0) {
        float* const ml = ws + (q_row * splits + split) * 2;
        ml[0] = m[r] * kLn2;
        ml[1] = l[r];
      }
    } else {
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      unsigned* const dst = reinterpret_cast<unsigned*>(static_cast<bf16*>(a.out) + q_row * dv + col0 + 2 * t);
#pragma unroll
      for (int c = 0; c < kHalf / 8; ++c) {
        dst[4 * c] = sm80::pack2<bf16>(o0[4 * c + 2 * r] * inv, o0[4 * c + 2 * r + 1] * inv);
        dst[kHalf / 2 + 4 * c] = sm80::pack2<bf16>(o1[4 * c + 2 * r] * inv, o1[4 * c + 2 * r + 1] * inv);
      }
    }
  }
}

}  // namespace kiln::kernels::decode_attention::hopper
