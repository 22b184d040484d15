// decode_attention on CUDA (arguments kernels/decode_attention/args.hpp, which states the
// function; front-end ops/decode_attention.hpp; CPU reference backend/cpu/decode_attention.hpp).
//
// Work split. One block of 128 threads per (batch row, kv head, chunk of up to 16 of the G query
// heads that share that kv head). The block walks the row's keys in tiles of 32 with an online
// softmax (running max m and sum l per head, the accumulator rescaled by exp(m_old - m_new)):
//   A. scores: each warp takes 8 keys of the tile; its lanes split the key's dk elements, so one
//      read of a key element serves every head of the chunk (q sits in shared memory as float);
//      warp sums give the 16 dot products;
//   B. the softmax update, one thread per head;
//   C. p · v: each thread owns up to 4 of the dv output columns for every head of the chunk, and
//      reads each value element once for all of them.
// Everything accumulates in float (double for double inputs). The math functions are called as
// ::exp, ::max, ::min: inside namespace kiln the tensor ops of those names would hide them.
//
// Cost per block: the row's L keys and values are read once per head chunk: L (dk + dv) elements.
// For MLA (kv_heads = 1, k = [latent, rope key], v = the latent) with up to 16 heads that is the
// whole point: the latent is read once for all heads. This kernel is the generation engine's
// first, simple decode path; the paged, split-K Hopper version is the MLA decode issue's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/decode_attention/args.hpp"

namespace kiln::kernels::decode_attention {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadChunk = 16;  // query heads per block
constexpr int kTile = 32;       // keys per tile

template <class T, int DPT>
__global__ void __launch_bounds__(kThreads, std::is_same_v<T, double> ? 1 : 4) decode_attention_kernel(DecodeAttentionArgs a) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  extern __shared__ unsigned char smem_raw[];
  C* q_s = reinterpret_cast<C*>(smem_raw);  // [kHeadChunk][dk]
  __shared__ C p_s[kHeadChunk][kTile];
  __shared__ C alpha_s[kHeadChunk];
  __shared__ C m_s[kHeadChunk], l_s[kHeadChunk];

  const std::int64_t row = blockIdx.x;
  const int kv_head = static_cast<int>(blockIdx.y);
  const int group = a.heads / a.kv_heads;
  const int head0 = kv_head * group + static_cast<int>(blockIdx.z) * kHeadChunk;
  const int hc = ::min(kHeadChunk, kv_head * group + group - head0);
  const int dk = a.dk, dv = a.dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  const std::int64_t slot = a.slots[row];
  std::int64_t L = a.lengths[row];
  if (slot < 0 || slot >= a.num_slots) L = 0;
  L = L < 0 ? 0 : (L > a.capacity ? a.capacity : L);

  const T* q = static_cast<const T*>(a.q) + (row * a.heads + head0) * dk;
  for (int i = threadIdx.x; i < hc * dk; i += kThreads) q_s[i] = static_cast<C>(load(q[i]));
  if (threadIdx.x < kHeadChunk) {
    m_s[threadIdx.x] = -INFINITY;
    l_s[threadIdx.x] = 0;
  }
  const T* k = static_cast<const T*>(a.k) + slot * a.k_slot_stride + kv_head * a.k_head_stride;
  const T* v = static_cast<const T*>(a.v) + slot * a.v_slot_stride + kv_head * a.v_head_stride;

  C acc[kHeadChunk][DPT];
#pragma unroll
  for (int h = 0; h < kHeadChunk; ++h)
#pragma unroll
    for (int i = 0; i < DPT; ++i) acc[h][i] = 0;
  __syncthreads();

  for (std::int64_t tile = 0; tile < L; tile += kTile) {
    const int tk = static_cast<int>(L - tile < kTile ? L - tile : kTile);
    // A. scores of this tile's keys for every head of the chunk.
    for (int j = warp; j < tk; j += kWarps) {
      const T* key = k + (tile + j) * a.k_row_stride;
      C part[kHeadChunk];
#pragma unroll
      for (int h = 0; h < kHeadChunk; ++h) part[h] = 0;
      for (int d = lane; d < dk; d += 32) {
        const C kd = static_cast<C>(load(key[d]));
#pragma unroll
        for (int h = 0; h < kHeadChunk; ++h)
          if (h < hc) part[h] += q_s[h * dk + d] * kd;
      }
#pragma unroll
      for (int h = 0; h < kHeadChunk; ++h) {
        if (h < hc) {
          const C s = warp_sum(part[h]);
          if (lane == 0) p_s[h][j] = s * static_cast<C>(a.scale);
        }
      }
    }
    __syncthreads();
    // B. online softmax update, one thread per head.
    if (threadIdx.x < hc) {
      const int h = threadIdx.x;
      C tile_max = -INFINITY;
      for (int j = 0; j < tk; ++j) tile_max = ::max(tile_max, p_s[h][j]);
      const C m_new = ::max(m_s[h], tile_max);
      const C alpha = m_s[h] == -INFINITY ? C(0) : ::exp(m_s[h] - m_new);
      C sum = 0;
      for (int j = 0; j < tk; ++j) {
        const C p = ::exp(p_s[h][j] - m_new);
        p_s[h][j] = p;
        sum += p;
      }
      l_s[h] = l_s[h] * alpha + sum;
      m_s[h] = m_new;
      alpha_s[h] = alpha;
    }
    __syncthreads();
    // C. acc = acc * alpha + p · v over the tile.
#pragma unroll
    for (int i = 0; i < DPT; ++i) {
      const int d = threadIdx.x + i * kThreads;
      if (d >= dv) continue;
#pragma unroll
      for (int h = 0; h < kHeadChunk; ++h) acc[h][i] *= h < hc ? alpha_s[h] : C(0);
      for (int j = 0; j < tk; ++j) {
        const C vd = static_cast<C>(load(v[(tile + j) * a.v_row_stride + d]));
#pragma unroll
        for (int h = 0; h < kHeadChunk; ++h) acc[h][i] += p_s[h][j] * vd;
      }
    }
    __syncthreads();  // the next tile rewrites p_s and alpha_s
  }

  T* out = static_cast<T*>(a.out) + (row * a.heads + head0) * dv;
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    const int d = threadIdx.x + i * kThreads;
    if (d >= dv) continue;
#pragma unroll
    for (int h = 0; h < kHeadChunk; ++h)
      if (h < hc) out[h * dv + d] = store<T>(l_s[h] > 0 ? acc[h][i] / l_s[h] : C(0));
  }
}

inline void launch_decode_attention(const DecodeAttentionArgs& a) {
  if (a.count == 0) return;
  const char* op = "decode_attention";
  check(a.dv <= 4 * kThreads, op, "value head dims over ", 4 * kThreads, " are not supported on CUDA, got ", a.dv);
  check(a.count <= 0x7fffffff && a.kv_heads <= 65535, op, "too many rows (", a.count, ") or kv heads (", a.kv_heads,
        ")");
  const int group = a.heads / a.kv_heads;
  const dim3 grid(static_cast<unsigned>(a.count), static_cast<unsigned>(a.kv_heads),
                  static_cast<unsigned>((group + kHeadChunk - 1) / kHeadChunk));
  cuda::DeviceGuard guard(a.launch.device);
  auto run = [&](auto tag, auto dpt) {
    using T = decltype(tag);
    using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
    auto kernel = decode_attention_kernel<T, decltype(dpt)::value>;
    const std::size_t smem = sizeof(C) * kHeadChunk * static_cast<std::size_t>(a.dk);
    opt_in_shared_memory(kernel, smem, a.launch.device);
    kernel<<<grid, kThreads, smem, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  };
  auto with_dpt = [&](auto tag) {
    if (a.dv <= kThreads) return run(tag, std::integral_constant<int, 1>{});
    if (a.dv <= 2 * kThreads) return run(tag, std::integral_constant<int, 2>{});
    return run(tag, std::integral_constant<int, 4>{});
  };
  switch (a.dtype) {
    case DType::f32: return with_dpt(float{});
    case DType::f64: return with_dpt(double{});
    case DType::bf16: return with_dpt(bf16{});
    case DType::f16: return with_dpt(fp16{});
    default: fail(op, "has no CUDA kernel for dtype ", a.dtype);
  }
}

inline const bool decode_attention_registered = register_device_kernel(&launch_decode_attention);

}  // namespace kiln::kernels::decode_attention
