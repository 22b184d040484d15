// CUDA kernels of the fused SwiGLU gate (arguments kernels/elementwise/args.hpp:
// SwigluForwardArgs, SwigluBackwardArgs; front-end ops/unary.hpp, kiln::swiglu):
//   forward   out = silu(gate) * up
//   backward  d_gate and d_up from g, gate and up, both gradients in one pass
// All operands share one shape (any strides). The math is math::Swiglu / math::SwigluGrad from
// kiln/math/swiglu.hpp, shared with the CPU, evaluated in compute_t<T>.
//
// Memory traffic per element: forward reads 2 and writes 1 element (the generic map kernel);
// backward reads 3 and writes 2, against 3 + 1 reads and 2 writes (plus a temporary) for silu and
// mul run separately. The backward kernel has two outputs, which map.cuh does not do, so it is
// its own kernel with map's two shapes: 16-byte vectors of every operand when all five are
// contiguous and 16-byte aligned (V = 16 / sizeof(T) elements per thread); vectors within rows
// when every operand is contiguous along the innermost merged dim with aligned row starts (the
// halves of one projection: an MoE layer's gate|up, a stacked MLP's; until 2026-12-05 these took
// the strided path at about a third of the bandwidth, 169 µs for [32768, 512] on an H100); else
// one element per thread with strided offsets over the merged dims.
#pragma once

#include <utility>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"
#include "kiln/math/swiglu.hpp"

namespace kiln::kernels {

template <class T>
__device__ __forceinline__ void swiglu_grad_one(const T& g, const T& gate, const T& up, T& d_gate, T& d_up) {
  const auto d = math::SwigluGrad{}(load(g), load(gate), load(up));
  d_gate = store<T>(d.gate);
  d_up = store<T>(d.up);
}

template <int V, class T>
__global__ void swiglu_backward_vectorized(std::int64_t n, T* __restrict__ d_gate, T* __restrict__ d_up,
                                           const T* __restrict__ g, const T* __restrict__ gate,
                                           const T* __restrict__ up) {
  const std::int64_t n_vec = n / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec; i += stride) {
    const Vec<T, V> gv = reinterpret_cast<const Vec<T, V>*>(g)[i];
    const Vec<T, V> xv = reinterpret_cast<const Vec<T, V>*>(gate)[i];
    const Vec<T, V> uv = reinterpret_cast<const Vec<T, V>*>(up)[i];
    Vec<T, V> dx, du;
#pragma unroll
    for (int j = 0; j < V; ++j) swiglu_grad_one(gv.v[j], xv.v[j], uv.v[j], dx.v[j], du.v[j]);
    reinterpret_cast<Vec<T, V>*>(d_gate)[i] = dx;
    reinterpret_cast<Vec<T, V>*>(d_up)[i] = du;
  }
  // The last n % V elements, one per thread.
  for (std::int64_t i = n_vec * V + static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    swiglu_grad_one(g[i], gate[i], up[i], d_gate[i], d_up[i]);
}

// Rows of row_vecs vectors (V elements each) with every operand contiguous along the row: the
// gate and up halves of one [rows, 2I] projection (an MoE layer's, a stacked MLP's), which are
// views with a row stride of 2I. map.cuh's rows path with two outputs; row starts from RowStarts.
template <int V, class T>
__global__ void swiglu_backward_rows(std::int64_t rows, std::int64_t row_vecs, RowStarts<5> starts,
                                     T* __restrict__ d_gate, T* __restrict__ d_up, const T* __restrict__ g,
                                     const T* __restrict__ gate, const T* __restrict__ up) {
  const std::int64_t n = rows * row_vecs;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::int64_t row = i / row_vecs, v = i - row * row_vecs;
    std::int64_t off[5];
    starts.at(row, off);
    const Vec<T, V> gv = reinterpret_cast<const Vec<T, V>*>(g + off[2])[v];
    const Vec<T, V> xv = reinterpret_cast<const Vec<T, V>*>(gate + off[3])[v];
    const Vec<T, V> uv = reinterpret_cast<const Vec<T, V>*>(up + off[4])[v];
    Vec<T, V> dx, du;
#pragma unroll
    for (int j = 0; j < V; ++j) swiglu_grad_one(gv.v[j], xv.v[j], uv.v[j], dx.v[j], du.v[j]);
    reinterpret_cast<Vec<T, V>*>(d_gate + off[0])[v] = dx;
    reinterpret_cast<Vec<T, V>*>(d_up + off[1])[v] = du;
  }
}

template <class T>
__global__ void swiglu_backward_strided(std::int64_t n, Offsets<5> offsets, T* d_gate, T* d_up, const T* g,
                                        const T* gate, const T* up) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    std::int64_t off[5];
    offsets.at(i, off);
    swiglu_grad_one(g[off[2]], gate[off[3]], up[off[4]], d_gate[off[0]], d_up[off[1]]);
  }
}

inline void launch_swiglu_forward(const SwigluForwardArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("swiglu", a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, T, T>(math::Swiglu{}, a.launch.stream, a.out, a.gate, a.up);
  });
}

inline void launch_swiglu_backward(const SwigluBackwardArgs& a) {
  const TensorView t[5] = {a.d_gate, a.d_up, a.g, a.gate, a.up};
  const std::int64_t n = t[0].numel();
  if (n == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  constexpr int threads = 256;
  with_floating_type("swiglu", t[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    auto ptr = [&](int k) { return static_cast<T*>(t[k].data); };
    bool fast = true;
    for (const TensorView& v : t) fast = fast && v.is_contiguous() && aligned16(v.data);
    if (fast) {
      swiglu_backward_vectorized<V><<<blocks_for((n + V - 1) / V, threads), threads, 0, stream>>>(
          n, ptr(0), ptr(1), ptr(2), ptr(3), ptr(4));
      KILN_CUDA_CHECK_LAUNCH();
      return;
    }
    const Offsets<5> merged = merge_operand_dims(t);
    unsigned broadcast = 0;
    if (rows_fit<V>(merged, t, broadcast) && broadcast == 0) {  // no operand repeated along a row
      const std::int64_t row_vecs = merged.shape[merged.ndim - 1] / V;
      swiglu_backward_rows<V><<<blocks_for(n / V, threads), threads, 0, stream>>>(
          n / (row_vecs * V), row_vecs, row_starts(merged), ptr(0), ptr(1), ptr(2), ptr(3), ptr(4));
    } else {
      swiglu_backward_strided<<<blocks_for(n, threads), threads, 0, stream>>>(n, merged, ptr(0), ptr(1), ptr(2),
                                                                             ptr(3), ptr(4));
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool swiglu_registered =
    register_device_kernel(&launch_swiglu_forward) && register_device_kernel(&launch_swiglu_backward);

}  // namespace kiln::kernels
