// What the two decode-attention kernels share (kernels/decode_attention/decode_attention.cuh, the
// CUDA-core kernel; decode_attention_mma.cuh, the tensor-core one; arguments args.hpp): where a
// sequence's token j lies in either cache layout, how many splits a sequence is cut into, and the
// split's second step, which combines the splits' partial softmax states.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/decode_attention/args.hpp"

namespace kiln::kernels::decode_attention {

constexpr int kSplitKeys = 256;  // keys a sequence split keeps at least (of the capacity)
constexpr int kCombineThreads = 128;

template <class T>
using compute_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct Max {
  template <class V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const {
    return ::max(a, b);
  }
};

// Where token j of one batch row's sequence lies: its block and the row in it (args.hpp).
struct TokenRows {
  const std::int64_t* table;  // the sequence's row of the block table; null: contiguous
  std::int64_t slot;
  int block_tokens;
  // Whether any table entry for tokens 0 .. L - 1 lies outside [0, num_blocks), over the block's
  // `threads` threads, or-ed into a barrier (every thread gets the answer; contiguous: false).
  __device__ __forceinline__ bool bad_entries(int L, std::int64_t num_blocks, int tid, int threads) const {
    bool bad = false;
    if (table)
      for (int b = tid; b * block_tokens < L; b += threads) bad |= table[b] < 0 || table[b] >= num_blocks;
    return __syncthreads_or(bad);
  }
  __device__ __forceinline__ void locate(int j, std::int64_t& block, int& r) const {
    if (table) {
      const int b = j / block_tokens;
      block = table[b];
      r = j - b * block_tokens;
    } else {
      block = slot;
      r = j;
    }
  }
};

// The keys of batch row `seq` that split `split` of a.splits computes, [begin, end): ceil(L /
// splits) rounded up to a tile of `tile` keys, from the row's length L clamped to [0, capacity]
// (0 for a slot outside [0, num_slots): zeros, args.hpp). Shared by the tensor-core kernels.
struct SplitKeys {
  std::int64_t slot;
  int length, begin, end;
};
__device__ __forceinline__ SplitKeys split_keys(const DecodeAttentionArgs& a, std::int64_t seq, int split, int tile) {
  const std::int64_t slot = a.slots[seq];
  std::int64_t L64 = a.lengths[seq];
  if (slot < 0 || slot >= a.num_slots) L64 = 0;
  const int L = static_cast<int>(L64 < 0 ? 0 : (L64 > a.capacity ? a.capacity : L64));
  const int span = ((L + a.splits - 1) / a.splits + tile - 1) / tile * tile;
  const int begin = ::min(split * span, L);
  return {slot, L, begin, ::min(begin + span, L)};
}

// Query rows row0 .. row0 + rows - 1 (of q and out) with no key in this split: zeros in out, or
// with a split the partial state of weight 0 (m = -inf, l = 0, acc = 0), over `threads` threads.
__device__ __forceinline__ void write_no_keys(const DecodeAttentionArgs& a, std::int64_t row0, int rows, int split,
                                              int tid, int threads) {
  const int dv = a.dv, splits = a.splits;
  if (splits > 1) {
    float* const ws = static_cast<float*>(a.workspace);
    const std::int64_t ws_acc = a.count * a.queries * a.heads * splits * 2;
    for (int i = tid; i < rows * dv; i += threads) {
      const int r = i / dv;
      ws[ws_acc + ((row0 + r) * splits + split) * dv + (i - r * dv)] = 0.f;
    }
    for (int r = tid; r < rows; r += threads) {
      float* const ml = ws + ((row0 + r) * splits + split) * 2;
      ml[0] = -INFINITY;
      ml[1] = 0.f;
    }
  } else {
    bf16* const out = static_cast<bf16*>(a.out) + row0 * dv;
    for (int i = tid; i < rows * dv; i += threads) out[i] = store<bf16>(0.f);
  }
}

// The sequence splits of a problem whose rows, kv heads and head chunks make `blocks` blocks:
// `wanted` when >= 1 (a caller's choice, clamped to kDecodeMaxSplits); else (0) enough to give
// every multiprocessor a block when `blocks` would leave more than half of them idle, each split
// keeping at least kSplitKeys keys of the capacity.
inline int sequence_splits(std::int64_t blocks, std::int64_t capacity, int sms, int wanted) {
  if (wanted >= 1) return std::min(wanted, kDecodeMaxSplits);
  const std::int64_t by_sms = blocks * 2 <= sms ? sms / std::max<std::int64_t>(blocks, 1) : 1;
  const std::int64_t by_keys = std::max<std::int64_t>(1, capacity / kSplitKeys);
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>({by_sms, by_keys, kDecodeMaxSplits})));
}

// The sequence split's second step: one block per query row (batch row, query, head) combines
// that row's `splits` partial states in split order (args.hpp: the workspace layout).
template <class T>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(DecodeAttentionArgs a) {
  using C = compute_of<T>;
  constexpr C kNegInf = -static_cast<C>(INFINITY);
  __shared__ C weight_s[kDecodeMaxSplits];
  __shared__ C total_s;
  const std::int64_t r = blockIdx.x;
  const int splits = a.splits, dv = a.dv;
  const C* const ml = static_cast<const C*>(a.workspace) + r * splits * 2;
  const C* const acc = static_cast<const C*>(a.workspace) + a.count * a.queries * a.heads * splits * 2 + r * splits * dv;
  if (threadIdx.x < 32) {  // warp 0: the weights, each lane over splits lane, lane + 32, ...
    const int lane = static_cast<int>(threadIdx.x);
    C mx = kNegInf;
    for (int s = lane; s < splits; s += 32) mx = ::max(mx, ml[2 * s]);
    mx = warp_all_reduce(mx, Max{});
    C total = 0;
    for (int s = lane; s < splits; s += 32) {
      const C w = ml[2 * s] == kNegInf ? C(0) : ::exp(ml[2 * s] - mx);
      weight_s[s] = w;
      total += w * ml[2 * s + 1];
    }
    total = warp_all_reduce(total, Plus{});  // a fixed shuffle tree: the same bits every run
    if (lane == 0) total_s = total;
  }
  __syncthreads();
  const C total = total_s;
  T* const out = static_cast<T*>(a.out) + r * dv;
  for (int c = static_cast<int>(threadIdx.x); c < dv; c += kCombineThreads) {
    C sum = 0;
    for (int s = 0; s < splits; ++s) sum += weight_s[s] * acc[static_cast<std::int64_t>(s) * dv + c];
    out[c] = store<T>(total > 0 ? sum / total : C(0));
  }
}

// The combine after a split decode (a.splits > 1) on a.launch's stream.
template <class T>
void launch_decode_combine(const DecodeAttentionArgs& a) {
  decode_combine_kernel<T><<<static_cast<unsigned>(a.count * a.queries * a.heads), kCombineThreads, 0,
                             a.launch.stream>>>(a);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels::decode_attention
