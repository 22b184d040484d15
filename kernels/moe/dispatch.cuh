// MoE dispatch and combine on CUDA (arguments kernels/moe/args.hpp: MoeLayoutArgs,
// MoeGatherRowsArgs, MoeSumRowsArgs, MoeCombineBackwardArgs; front-end ops/moe.hpp; CPU reference
// backend/cpu/moe.hpp). No host synchronisation anywhere: sizes that depend on the routing stay on
// the device (the grouped expert GEMMs read the offsets there).
//
// Layout. The R = N·K routes (slot s = n·K + k) are sorted by expert with the stable radix sort of
// kernels/common/radix_sort.cuh (keys: expert ids, values: slots; ceil(log2 E) key bits, one pass
// for E ≤ 256), so expert e's rows are contiguous and in slot order, the order the host sort of
// nn::sort_routes gives. One more kernel writes slot_of_row, its inverse row_of_slot, and each
// expert's first row by binary search over the sorted keys (offsets, counts). The segments are
// not padded to the GEMM tile: kernels/grouped_gemm masks the rows of partial tiles, so no
// padding rows exist to mark, fill or skip.
//
// Dispatch: out[p] = x[slot_of_row[p] / K] (gather rows; one warp per row). Combine: y[n] = Σ_k g[n,k] ·
// out[row_of_slot[n·K + k]] (a weighted sum of K rows in k order). The dispatch's gradient to x is
// the combine's kernel with weights 1 (each token's K rows summed); the combine's backward is one
// pass over the layout's rows: dy gathered and scaled by the gate, and in the same pass a warp dot
// product of the row with dy for the gate's gradient. Every output element is written by one
// thread with a fixed order of summation: deterministic without a separate variant, no atomics.
//
// Memory traffic (bf16, hidden H): dispatch reads 2·H bytes per token and writes 2·H per route;
// combine reads 2·H per route and writes 2·H per token; both at 16-byte vectors per thread. At
// 4096 tokens × top-8 × H 7168 the dispatch must read 59 MB and write 470 MB.
//
// Token order. Walked in layout order (a warp per row p, reading token slot_of_row[p] / K), the
// dispatch reads each token row K times at scattered moments: the 59 MB of tokens do not stay in
// the 50 MB L2 between their K readers, so up to 470 MB come from DRAM (measured: 0.675 of copy
// bandwidth on an H200). So, given the inverse map (row_of_slot), both the dispatch and the
// combine's backward walk the TOKENS: one warp per token n reads its row once (16-byte vectors,
// kGatherUnroll in flight per lane) and writes it to its K layout rows row_of_slot[n·K + k]; the
// combine's backward likewise reads dy[n] once and, per k, the expert row, writing g·dy and the
// gate's dot product. The K destinations are read once per warp (lane k holds route k, shuffled
// to all lanes), which bounds the token-order kernels to K ≤ 32 (dispatch) and K ≤ kTokenOrderMaxTopK
// (combine backward: per-k dot products in registers); beyond, the row-order kernels run.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/radix_sort.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/moe/args.hpp"

namespace kiln::kernels::moe {

constexpr int kRowThreads = 256;

// keys[s] = experts[s] clamped to [0, E − 1]; values[s] = s.
static __global__ void layout_keys(const std::int64_t* __restrict__ experts, std::int64_t routes, int n_experts,
                                   std::int64_t* __restrict__ keys, std::int64_t* __restrict__ values) {
  const std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= routes) return;
  const std::int64_t e = experts[s];
  keys[s] = e < 0 ? 0 : (e >= n_experts ? n_experts - 1 : e);
  values[s] = s;
}

// First position p with sorted[p] >= e (binary search).
__device__ __forceinline__ std::int64_t lower_bound(const std::int64_t* sorted, std::int64_t n, std::int64_t e) {
  std::int64_t lo = 0, hi = n;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < e) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Threads p < routes: the row maps; threads p < E + 1 also: offsets[p] (and counts[p − 1]).
static __global__ void layout_finish(const std::int64_t* __restrict__ sorted_keys,
                                     const std::int64_t* __restrict__ sorted_slots, std::int64_t routes,
                                     int n_experts, std::int64_t* __restrict__ slot_of_row,
                                     std::int64_t* __restrict__ row_of_slot, std::int64_t* __restrict__ offsets,
                                     std::int64_t* __restrict__ counts, std::int64_t* __restrict__ accumulate) {
  const std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < routes) {
    const std::int64_t s = sorted_slots[p];
    slot_of_row[p] = s;
    row_of_slot[s] = p;
  }
  if (p <= n_experts) {
    const std::int64_t start = lower_bound(sorted_keys, routes, p);
    offsets[p] = start;
    if (p < n_experts) {
      const std::int64_t count = lower_bound(sorted_keys, routes, p + 1) - start;
      counts[p] = count;
      if (accumulate) accumulate[p] += count;
    }
  }
}

inline void launch_moe_layout(const MoeLayoutArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  const int device = a.launch.device;
  const std::int64_t R = a.routes;
  Tensor<std::int64_t> keys({R}, Device::cuda(device)), values({R}, Device::cuda(device));
  if (R > 0) {
    layout_keys<<<blocks_for(R, kRowThreads), kRowThreads, 0, stream>>>(a.experts, R, a.n_experts, keys.data(),
                                                                         values.data());
    KILN_CUDA_CHECK_LAUNCH();
    radix_sort_pairs(keys, values, R, bits_for(static_cast<std::uint64_t>(a.n_experts - 1)), device, stream);
  }
  const std::int64_t threads = R > a.n_experts + 1 ? R : a.n_experts + 1;
  layout_finish<<<blocks_for(threads, kRowThreads), kRowThreads, 0, stream>>>(
      keys.data(), values.data(), R, a.n_experts, a.slot_of_row, a.row_of_slot, a.offsets, a.counts, a.accumulate);
  KILN_CUDA_CHECK_LAUNCH();
}

// 16-byte vectors of V elements when cols and every pointer allow, else single elements.
template <class T>
constexpr int kVector = 16 / static_cast<int>(sizeof(T));

// One warp per output row (rows strided over the grid's warps), lanes over the row's vectors:
// coalesced 16-byte accesses, and the row index read once per row.
__device__ __forceinline__ std::int64_t warp_id() {
  return (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ std::int64_t warp_count() { return (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5; }

// Each lane keeps kGatherUnroll 16-byte loads in flight before it stores them (the loads are
// independent, and __restrict__ lets the compiler issue them ahead of the stores): with one load
// at a time a warp had 512 bytes in flight, too few to cover DRAM latency at the copy rate.
constexpr int kGatherUnroll = 4;

template <class T, int V>
__global__ void __launch_bounds__(kRowThreads) gather_rows(MoeGatherRowsArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31;
  const std::int64_t vecs = a.cols / V;
  const T* __restrict__ scale = static_cast<const T*>(a.scale);
  for (std::int64_t p = warp_id(); p < a.rows; p += warp_count()) {
    const std::int64_t src = a.index[p];
    // 32-bit division (the front-end keeps index values below 2^31): the 64-bit one is a
    // subroutine that spills.
    const std::int64_t row = static_cast<unsigned>(src) / static_cast<unsigned>(a.divisor);
    const auto* __restrict__ x = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.x) + row * a.cols);
    auto* __restrict__ out = reinterpret_cast<Vec<T, V>*>(static_cast<T*>(a.out) + p * a.cols);
    const C w = scale ? load(scale[src]) : C(1);
    for (std::int64_t v0 = lane; v0 < vecs; v0 += 32 * kGatherUnroll) {
      Vec<T, V> r[kGatherUnroll];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u)
        if (v0 + 32 * u < vecs) r[u] = x[v0 + 32 * u];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u) {
        if (v0 + 32 * u >= vecs) break;
        if (scale) {
#pragma unroll
          for (int j = 0; j < V; ++j) r[u].v[j] = store<T>(load(r[u].v[j]) * w);
        }
        out[v0 + 32 * u] = r[u];
      }
    }
  }
}

// The gather in token order (a.inverse given; see the file comment): warp per token n, lane k < K
// holding route n·K + k's layout row and scale. The vector loop runs the same trip count on every
// lane (bounds checked per vector), so the shuffles see the whole warp.
template <class T, int V>
__global__ void __launch_bounds__(kRowThreads) scatter_rows(MoeGatherRowsArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31;
  const int K = static_cast<int>(a.divisor);
  const std::int64_t tokens = a.rows / K, vecs = a.cols / V;
  const T* __restrict__ scale = static_cast<const T*>(a.scale);
  for (std::int64_t n = warp_id(); n < tokens; n += warp_count()) {
    const std::int64_t my_row = lane < K ? a.inverse[n * K + lane] : 0;
    const C my_w = scale && lane < K ? load(scale[n * K + lane]) : C(1);
    const auto* __restrict__ x = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.x) + n * a.cols);
    for (std::int64_t base = 0; base < vecs; base += 32 * kGatherUnroll) {
      Vec<T, V> r[kGatherUnroll];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u)
        if (base + lane + 32 * u < vecs) r[u] = x[base + lane + 32 * u];
      for (int k = 0; k < K; ++k) {
        const std::int64_t p = __shfl_sync(0xffffffffu, my_row, k);
        const C w = __shfl_sync(0xffffffffu, my_w, k);
        auto* __restrict__ out = reinterpret_cast<Vec<T, V>*>(static_cast<T*>(a.out) + p * a.cols);
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          const std::int64_t v = base + lane + 32 * u;
          if (v >= vecs) break;
          Vec<T, V> o = r[u];
          if (scale) {
#pragma unroll
            for (int j = 0; j < V; ++j) o.v[j] = store<T>(load(o.v[j]) * w);
          }
          out[v] = o;
        }
      }
    }
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kRowThreads) sum_rows(MoeSumRowsArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31;
  const std::int64_t vecs = a.cols / V;
  const T* weights = static_cast<const T*>(a.weights);
  for (std::int64_t n = warp_id(); n < a.tokens; n += warp_count()) {
    for (std::int64_t v = lane; v < vecs; v += 32) {
      C acc[V];
      if (a.add) {  // the sum starts from the gradient folded in
        const Vec<T, V> b = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.add) + n * a.cols)[v];
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = load(b.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = C(0);
      }
      for (int k = 0; k < a.top_k; ++k) {
        const std::int64_t s = n * a.top_k + k;
        const C w = weights ? load(weights[s]) : C(1);
        const Vec<T, V> x = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.in) + a.index[s] * a.cols)[v];
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += w * load(x.v[j]);
      }
      Vec<T, V> y;
#pragma unroll
      for (int j = 0; j < V; ++j) y.v[j] = store<T>(acc[j]);
      reinterpret_cast<Vec<T, V>*>(static_cast<T*>(a.y) + n * a.cols)[v] = y;
    }
  }
}

// The combine's backward, one warp per layout row p: d_rows[p] = g·dy[n] and dgates[s] =
// <rows[p], dy[n]> from one read of dy[n] and rows[p] (the gather and the dot fused).
template <class T, int V>
__global__ void __launch_bounds__(kRowThreads) combine_backward(MoeCombineBackwardArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31;
  const std::int64_t vecs = a.cols / V;
  for (std::int64_t p = warp_id(); p < a.routes; p += warp_count()) {
    const std::int64_t s = a.slot_of_row[p];
    const std::int64_t n = static_cast<unsigned>(s) / static_cast<unsigned>(a.top_k);  // s < 2^31
    const C g = load(static_cast<const T*>(a.gates)[s]);
    const auto* dy = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.dy) + n * a.cols);
    const auto* rows = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.rows) + p * a.cols);
    auto* d_rows = reinterpret_cast<Vec<T, V>*>(static_cast<T*>(a.d_rows) + p * a.cols);
    C acc = 0;
    for (std::int64_t v = lane; v < vecs; v += 32) {
      const Vec<T, V> d = dy[v];
      if (a.d_rows) {
        Vec<T, V> out;
#pragma unroll
        for (int j = 0; j < V; ++j) out.v[j] = store<T>(g * load(d.v[j]));
        d_rows[v] = out;
      }
      if (a.dgates) {
        const Vec<T, V> r = rows[v];
#pragma unroll
        for (int j = 0; j < V; ++j) acc += load(r.v[j]) * load(d.v[j]);
      }
    }
    if (a.dgates) {
      acc = warp_sum(acc);
      if (lane == 0) static_cast<T*>(a.dgates)[s] = store<T>(acc);
    }
  }
}

// The combine's backward in token order (a.row_of_slot given, top_k <= kTokenOrderMaxTopK; see the file
// comment): warp per token n; per chunk of kGatherUnroll vectors, dy[n] is loaded once and each
// of the K expert rows once; the K dot products stay in registers (acc[k], the loop over k
// unrolled to kTokenOrderMaxTopK with a bound check) and are reduced once per token. Each lane sums its
// vectors in the row-order kernel's order (v = lane, lane + 32, ...): deterministic.
constexpr int kTokenOrderMaxTopK = 8;

template <class T, int V>
__global__ void __launch_bounds__(kRowThreads, 2) combine_backward_tokens(MoeCombineBackwardArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31;
  const int K = a.top_k;
  const std::int64_t tokens = a.routes / K, vecs = a.cols / V;
  for (std::int64_t n = warp_id(); n < tokens; n += warp_count()) {
    const std::int64_t my_row = lane < K ? a.row_of_slot[n * K + lane] : 0;
    const C my_g = lane < K ? load(static_cast<const T*>(a.gates)[n * K + lane]) : C(0);
    C acc[kTokenOrderMaxTopK];
#pragma unroll
    for (int k = 0; k < kTokenOrderMaxTopK; ++k) acc[k] = C(0);
    const auto* __restrict__ dy = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.dy) + n * a.cols);
    for (std::int64_t base = 0; base < vecs; base += 32 * kGatherUnroll) {
      Vec<T, V> d[kGatherUnroll];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u)
        if (base + lane + 32 * u < vecs) d[u] = dy[base + lane + 32 * u];
#pragma unroll
      for (int k = 0; k < kTokenOrderMaxTopK; ++k) {
        if (k >= K) break;  // K is the same for the whole warp: every lane reaches the shuffles
        const std::int64_t row = __shfl_sync(0xffffffffu, my_row, k);
        const C g = __shfl_sync(0xffffffffu, my_g, k);
        const auto* __restrict__ rows = reinterpret_cast<const Vec<T, V>*>(static_cast<const T*>(a.rows) + row * a.cols);
        auto* __restrict__ d_rows = reinterpret_cast<Vec<T, V>*>(static_cast<T*>(a.d_rows) + row * a.cols);
        Vec<T, V> r[kGatherUnroll];
        if (a.dgates) {
#pragma unroll
          for (int u = 0; u < kGatherUnroll; ++u)
            if (base + lane + 32 * u < vecs) r[u] = rows[base + lane + 32 * u];
        }
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          const std::int64_t v = base + lane + 32 * u;
          if (v >= vecs) break;
          if (a.d_rows) {
            Vec<T, V> out;
#pragma unroll
            for (int j = 0; j < V; ++j) out.v[j] = store<T>(g * load(d[u].v[j]));
            d_rows[v] = out;
          }
          if (a.dgates) {
#pragma unroll
            for (int j = 0; j < V; ++j) acc[k] += load(r[u].v[j]) * load(d[u].v[j]);
          }
        }
      }
    }
    if (a.dgates) {
#pragma unroll
      for (int k = 0; k < kTokenOrderMaxTopK; ++k) {
        if (k >= K) break;
        const C total = warp_sum(acc[k]);
        if (lane == 0) static_cast<T*>(a.dgates)[n * K + k] = store<T>(total);
      }
    }
  }
}

inline unsigned row_blocks(std::int64_t work) {
  const std::int64_t b = (work + kRowThreads - 1) / kRowThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

// Calls f with V = the vector width that cols and the pointers allow.
template <class T, class F>
void with_vector(std::int64_t cols, bool aligned, F&& f) {
  if (aligned && cols % kVector<T> == 0) f(std::integral_constant<int, kVector<T>>{});
  else f(std::integral_constant<int, 1>{});
}

inline void launch_moe_gather_rows(const MoeGatherRowsArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_gather_rows", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_vector<T>(a.cols, aligned16(a.out) && aligned16(a.x), [&](auto vector) {
      constexpr int V = decltype(vector)::value;
      if (a.inverse && a.divisor >= 1 && a.divisor <= 32 && a.rows % a.divisor == 0) {
        scatter_rows<T, V><<<row_blocks(a.rows / a.divisor * 32), kRowThreads, 0, a.launch.stream>>>(a);
      } else {
        gather_rows<T, V><<<row_blocks(a.rows * 32), kRowThreads, 0, a.launch.stream>>>(a);
      }
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

inline void launch_moe_sum_rows(const MoeSumRowsArgs& a) {
  if (a.tokens == 0 || a.cols == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_sum_rows", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_vector<T>(a.cols, aligned16(a.y) && aligned16(a.in) && (!a.add || aligned16(a.add)), [&](auto vector) {
      constexpr int V = decltype(vector)::value;
      sum_rows<T, V><<<row_blocks(a.tokens * 32), kRowThreads, 0, a.launch.stream>>>(a);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

inline void launch_moe_combine_backward(const MoeCombineBackwardArgs& a) {
  if (a.routes == 0 || a.cols == 0 || (!a.d_rows && !a.dgates)) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_combine backward", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool aligned = aligned16(a.dy) && aligned16(a.rows) && (!a.d_rows || aligned16(a.d_rows));
    with_vector<T>(a.cols, aligned, [&](auto vector) {
      constexpr int V = decltype(vector)::value;
      if (a.row_of_slot && a.top_k >= 1 && a.top_k <= kTokenOrderMaxTopK && a.routes % a.top_k == 0) {
        combine_backward_tokens<T, V><<<row_blocks(a.routes / a.top_k * 32), kRowThreads, 0, a.launch.stream>>>(a);
      } else {
        combine_backward<T, V><<<row_blocks(a.routes * 32), kRowThreads, 0, a.launch.stream>>>(a);
      }
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

inline const bool moe_dispatch_registered =
    register_device_kernel(&launch_moe_layout) && register_device_kernel(&launch_moe_gather_rows) &&
    register_device_kernel(&launch_moe_sum_rows) && register_device_kernel(&launch_moe_combine_backward);

}  // namespace kiln::kernels::moe
