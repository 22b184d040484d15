// What the two decode-attention kernels share (kernels/decode_attention/decode_attention.cuh, the
// CUDA-core kernel; decode_attention_mma.cuh, the tensor-core one; arguments args.hpp): where a
// sequence's token j lies in either cache layout, how many splits a sequence is cut into, and the
// split's second step, which combines the splits' partial softmax states.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

}  // namespace kiln::kernels::decode_attention
