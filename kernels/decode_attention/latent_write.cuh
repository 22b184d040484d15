// latent_cache_write on CUDA (arguments kernels/decode_attention/args.hpp, LatentWriteArgs; front-end
// ops/latent_cache_write.hpp): MLA's decode step turns kv_a's output rows [c | k_pe] into cache rows
// [rms_norm(c) * weight | rope(k_pe)] and writes them where the token lives in the cache, in one
// launch. The composed step took three (RMSNorm into a temporary row, rope into its tail, the cache
// write): at B = 128 each is a few microseconds of launch for 74 KB of data (big config), so a step
// of 7 layers spent 21 launches on what is now 7.
//
// Work split: one warp per token row (8 rows a block). The warp reads c as 16-byte vectors, lane l
// holding vectors l, l + 32, ... in registers, exactly as RMSNorm's one-warp-per-row kernel
// (kernels/rms_norm/rms_norm.cuh) does for a row of r values: the same per-lane sums in the same
// order, the same warp reduction and the same row arithmetic (kernels/rms_norm/row_math.cuh), so
// the normalised values are RMSNorm's bit for bit. Then lanes 0 .. dr/2 - 1 rotate one interleaved
// pair of k_pe each by the row's table entry (kernels/rope/rotate_pair.cuh, the rope kernel's
// arithmetic). Bytes: (r + dr) values read and written per row, r weights and dr cos/sin from L1/L2.
//
// Addressing as cache_write.cuh: contiguous [slots, capacity, row] or paged blocks through the
// table; rows whose slot, position or block falls outside the cache are skipped (indices stay on
// the device, so the front-end cannot check them).
#pragma once

#include <cstdint>

#include "kiln/core/kernel_trace.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/kernels/rms_norm/row_math.cuh"
#include "kiln/kernels/rope/rotate_pair.cuh"

namespace kiln::kernels::decode_attention {

constexpr int kLatentRowsPerBlock = 8;  // one warp a row
constexpr int kLatentMaxVectors = 4;    // per lane: r up to 128 vectors (RMSNorm's warp-row limit)

template <class T>
__global__ void __launch_bounds__(32 * kLatentRowsPerBlock)
    latent_write_kernel(LatentWriteArgs a, compute_t<T> inv_r, compute_t<T> eps) {
  using C = compute_t<T>;
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  using VecT = Vec<T, V>;
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * kLatentRowsPerBlock + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (item >= a.count * a.steps) return;  // whole warps leave together
  const std::int64_t b = item / a.steps, s = item - b * a.steps;
  const std::int64_t slot = a.slots[b], position = a.positions[b] + s;
  if (slot < 0 || slot >= a.num_slots || position < 0 || position >= a.capacity) return;
  std::int64_t at = slot * a.capacity + position;  // the token's row in the cache
  if (a.block_table) {
    const std::int64_t block = a.block_table[slot * a.max_blocks + position / a.block_tokens];
    if (block < 0 || block >= a.num_blocks) return;
    at = block * a.block_tokens + position % a.block_tokens;
  }
  const T* x = static_cast<const T*>(a.x) + item * a.x_row_stride;
  T* out = static_cast<T*>(a.cache) + at * (a.r + a.dr);

  // c: RMSNorm's warp-row kernel, vector for vector.
  const int nvec = a.r / V;
  const VecT* xv = reinterpret_cast<const VecT*>(x);
  const VecT* wv = reinterpret_cast<const VecT*>(a.weight);
  VecT held[kLatentMaxVectors];
  C squares = 0;
#pragma unroll
  for (int k = 0; k < kLatentMaxVectors; ++k) {
    const int j = lane + 32 * k;
    if (j < nvec) {
      held[k] = xv[j];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const C v = load(held[k].v[e]);
        squares += v * v;
      }
    }
  }
  const C rs = rms_norm::inverse_rms(warp_sum(squares), inv_r, eps);
  VecT* ov = reinterpret_cast<VecT*>(out);
#pragma unroll
  for (int k = 0; k < kLatentMaxVectors; ++k) {
    const int j = lane + 32 * k;
    if (j < nvec) {
      const VecT w = wv[j];
      VecT o;
#pragma unroll
      for (int e = 0; e < V; ++e) o.v[e] = rms_norm::normalized<T>(load(held[k].v[e]), rs, true, load(w.v[e]));
      ov[j] = o;
    }
  }

  // k_pe: one interleaved pair (2i, 2i + 1) a lane, by the row's angles.
  const int half = a.dr / 2;
  const C* cos = static_cast<const C*>(a.cos) + item * half;
  const C* sin = static_cast<const C*>(a.sin) + item * half;
  for (int i = lane; i < half; i += 32)
    rope::rotate_pair<T>(load(x[a.r + 2 * i]), load(x[a.r + 2 * i + 1]), cos[i], sin[i], out[a.r + 2 * i],
                         out[a.r + 2 * i + 1]);
}

inline void launch_latent_write(const LatentWriteArgs& a) {
  const std::int64_t rows = a.count * a.steps;
  if (rows == 0) return;
  check(!a.block_table || (a.block_tokens >= 1 && a.max_blocks >= 1 && a.capacity == a.max_blocks * a.block_tokens),
        "latent_cache_write", "a paged cache needs block_tokens, max_blocks >= 1 and capacity = max_blocks x ",
        "block_tokens, got ", a.block_tokens, ", ", a.max_blocks, ", ", a.capacity);
  cuda::DeviceGuard guard(a.launch.device);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    check(latent_write_supported(sizeof(T), a.r, a.dr, a.x_row_stride, reinterpret_cast<std::uintptr_t>(a.x),
                                 reinterpret_cast<std::uintptr_t>(a.cache), reinterpret_cast<std::uintptr_t>(a.weight)),
          "latent_cache_write", "rows of r = ", a.r, " and dr = ", a.dr, " values (row stride ", a.x_row_stride,
          ") that the kernel does not take (see latent_write_supported)");
    record_kernel_variant(LatentWriteArgs::kernel, "fused");
    const auto blocks = static_cast<unsigned>((rows + kLatentRowsPerBlock - 1) / kLatentRowsPerBlock);
    // inv_r and eps rounded to the compute type as RMSNorm's launcher rounds them.
    latent_write_kernel<T><<<blocks, 32 * kLatentRowsPerBlock, 0, a.launch.stream>>>(a, static_cast<C>(1.0 / a.r),
                                                                                      static_cast<C>(a.eps));
    KILN_CUDA_CHECK_LAUNCH();
  };
  switch (a.dtype) {
    case DType::bf16: return run(bf16{});
    case DType::f16: return run(fp16{});
    case DType::f32: return run(float{});
    case DType::f64: return run(double{});
    default: fail("latent_cache_write", "has no CUDA kernel for dtype ", a.dtype);
  }
}

inline const bool latent_write_registered = register_device_kernel(&launch_latent_write);

}  // namespace kiln::kernels::decode_attention
