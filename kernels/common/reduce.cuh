// Warp and block reductions of any small trivially copyable value (a float, a double, a
// {value, index} pair, a {max, sum} pair) with a caller-given combine function: the one copy that
// every kernel family uses (reductions, softmax, cross-entropy, rms_norm, gradient norms, ...).
//
// Determinism: the shuffles combine values in a fixed butterfly pattern, so the same inputs in the
// same threads give the same bits on every run (no atomics anywhere). Every combine function used
// with them is symmetric (combine(a, b) and combine(b, a) give the same bits), so after the
// butterfly every lane holds the same result, and a block reduction can let each warp finish the
// reduction of the per-warp results on its own (no broadcast through shared memory needed).
#pragma once

#include <cstring>

namespace kiln::kernels {

struct Plus {
  template <class V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const {
    return a + b;
  }
};

// One lane's value of v from lane (this lane ^ mask), for any value whose size is a multiple of 4
// bytes: moved as 32-bit words (padding words go along harmlessly).
template <class V>
__device__ __forceinline__ V shfl_xor(const V& v, int mask) {
  static_assert(sizeof(V) % 4 == 0, "shuffled values are moved as 32-bit words");
  constexpr int words = static_cast<int>(sizeof(V) / 4);
  unsigned w[words];
  std::memcpy(w, &v, sizeof(V));
#pragma unroll
  for (int i = 0; i < words; ++i) w[i] = __shfl_xor_sync(0xffffffffu, w[i], mask);
  V out;
  std::memcpy(&out, w, sizeof(V));
  return out;
}

// Every lane gets combine over the values of its aligned group of Width lanes (Width a power of
// two up to 32; the whole warp by default).
template <int Width = 32, class V, class Combine>
__device__ __forceinline__ V warp_all_reduce(V v, Combine combine) {
  static_assert(Width >= 1 && Width <= 32 && (Width & (Width - 1)) == 0, "a power of two up to 32");
#pragma unroll
  for (int mask = Width / 2; mask > 0; mask /= 2) v = combine(v, shfl_xor(v, mask));
  return v;
}

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
  return warp_all_reduce(v, Plus{});
}

// Every thread of the block (Block threads, a multiple of 32) gets combine over all threads'
// values. `identity` fills the lanes beyond the block's warp count. Every thread must call it.
template <int Block, class V, class Combine>
__device__ __forceinline__ V block_all_reduce(V v, Combine combine, V identity) {
  static_assert(Block % 32 == 0 && Block <= 1024, "whole warps, at most 32 of them");
  constexpr int warps = Block / 32;
  if constexpr (warps == 1) {
    return warp_all_reduce(v, combine);
  } else {
    __shared__ V partial[warps];
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    v = warp_all_reduce(v, combine);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = warp_all_reduce(lane < warps ? partial[lane] : identity, combine);
    __syncthreads();  // the next call may overwrite `partial`
    return v;
  }
}

// The sum over a block of any size (blockDim.x a multiple of 32), the same value in every thread,
// in a fixed order. `scratch` holds two 32-entry buffers used alternately (parity 0, 1, 0, ...):
// consecutive calls then need only the one __syncthreads inside, because a buffer is rewritten
// only after the call that follows its readers has passed its barrier.
template <class V>
__device__ __forceinline__ V block_sum(V v, V* scratch, int parity) {
  v = warp_sum(v);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  V* buf = scratch + 32 * parity;
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  return warp_sum(lane < static_cast<int>(blockDim.x >> 5) ? buf[lane] : V(0));
}

// The reduction over a group of G threads that own one row: an aligned part of a warp (G <= 32)
// or the whole block (G = Block).
template <int G, int Block, class V, class Combine>
__device__ __forceinline__ V group_all_reduce(V v, Combine combine, V identity) {
  static_assert(G <= 32 || G == Block, "a row belongs to (part of) one warp or to the whole block");
  if constexpr (G <= 32) return warp_all_reduce<G>(v, combine);
  else return block_all_reduce<Block>(v, combine, identity);
}

}  // namespace kiln::kernels
