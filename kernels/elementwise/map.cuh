// The generic elementwise kernel: out[i] = f(in_1[i], ..., in_n[i]) for any arity, any mix of
// element types, inputs broadcast to the output's shape.
//
// Memory traffic: each input element is read once and each output element written once, so the
// kernel is bandwidth-bound at (sum of element sizes) bytes per element. Broadcast inputs are read
// from L1/L2 after their first touch, so they add almost nothing. Before choosing a path the host
// merges dims that every operand walks contiguously and drops size-1 dims (merge_operand_dims):
// the same elements in the same order, described with as few dims as possible. Three paths:
//   - every operand contiguous and 16-byte aligned: each thread moves V elements per operand with
//     one 16-byte load/store (V = 16 / widest element size), the widest access the memory
//     system serves per instruction;
//   - rows: the innermost merged dim is unit-stride for the output and unit-stride or broadcast
//     (stride 0) for every input, its length a multiple of V, and every row starts 16-byte
//     aligned. Each thread still moves one 16-byte vector per operand; a broadcast input
//     contributes one element repeated V times. One 64-bit division per vector finds the row,
//     instead of one per dim per element. This covers a bias or scale row ([R, C] * [C]), a
//     column ([R, C] * [R, 1]), a gradient expanded from a scalar, and copies into a slab of a
//     wider tensor (cat, slice backward);
//   - otherwise: one element per thread, with each operand's offset computed from the linear
//     index and its strides (stride 0 for broadcast dims).
// All use grid-stride loops, so any size runs with a bounded grid.
//
// Operands arrive as TensorViews (kernels/common/tensor_view.hpp), out first, then the inputs.
// Other families use launch_map for their own elementwise steps; the dtype dispatch helpers
// (with_floating_type, with_any_type) come with this header from kernels/common/dispatch_dtype.cuh.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/offsets.cuh"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

template <int V, class F, class Out, class... In>
__global__ void map_vectorized(F f, std::int64_t n, Out* __restrict__ out, const In* __restrict__... in) {
  const std::int64_t n_vec = n / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec; i += stride) {
    Vec<Out, V> o;
    auto compute = [&](const Vec<In, V>&... x) {
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = store<Out>(f(load(x.v[j])...));
    };
    compute(reinterpret_cast<const Vec<In, V>*>(in)[i]...);
    reinterpret_cast<Vec<Out, V>*>(out)[i] = o;
  }
  // The last n % V elements, one per thread.
  for (std::int64_t i = n_vec * V + static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = store<Out>(f(load(in[i])...));
}

// Element offsets of the first element of each operand's row, from the row index: the outer dims
// of the merged layout. Like Offsets, except that the outermost coordinate is what remains of the
// index after the inner ones are divided out, so a 2-D problem needs no division here at all.
template <int N>
struct RowStarts {
  int ndim;  // outer dims (the merged dims above the row)
  std::int64_t shape[kMaxDims];
  std::int64_t strides[N][kMaxDims];

  __device__ __forceinline__ void at(std::int64_t row, std::int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d > 0; --d) {
      const std::int64_t i = row % shape[d];
      row /= shape[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
    if (ndim > 0) {
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += row * strides[k][0];
    }
  }
};

// V consecutive elements of a row starting at vector v, or (broadcast) the row's one element
// repeated.
template <int V, class T>
__device__ __forceinline__ Vec<T, V> row_vector(const T* __restrict__ row, std::int64_t v, bool broadcast) {
  if (broadcast) {
    Vec<T, V> r;
    const T x = row[0];
#pragma unroll
    for (int j = 0; j < V; ++j) r.v[j] = x;
    return r;
  }
  return reinterpret_cast<const Vec<T, V>*>(row)[v];
}

template <int V, class F, class Out, class... In, std::size_t... K>
__device__ __forceinline__ void map_row_vector(F f, const RowStarts<1 + sizeof...(In)>& starts, unsigned broadcast,
                                               std::int64_t row, std::int64_t v, Out* __restrict__ out,
                                               std::index_sequence<K...>, const In* __restrict__... in) {
  std::int64_t off[1 + sizeof...(In)];
  starts.at(row, off);
  Vec<Out, V> o;
  auto compute = [&](const Vec<In, V>&... x) {
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = store<Out>(f(load(x.v[j])...));
  };
  compute(row_vector<V>(in + off[K + 1], v, (broadcast >> (K + 1)) & 1u)...);
  reinterpret_cast<Vec<Out, V>*>(out + off[0])[v] = o;
}

// `rows` rows of row_vecs vectors of V elements; bit k of `broadcast` marks operand k (0 = out)
// as one element repeated along the row.
template <int V, class F, class Out, class... In>
__global__ void map_rows(F f, std::int64_t rows, std::int64_t row_vecs, RowStarts<1 + sizeof...(In)> starts,
                         unsigned broadcast, Out* __restrict__ out, const In* __restrict__... in) {
  const std::int64_t n = rows * row_vecs;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::int64_t row = i / row_vecs;
    map_row_vector<V>(f, starts, broadcast, row, i - row * row_vecs, out, std::index_sequence_for<In...>{}, in...);
  }
}

template <class F, class Out, class... In, std::size_t... K>
__device__ __forceinline__ void map_one(F f, const Offsets<1 + sizeof...(In)>& offsets, std::int64_t i, Out* out,
                                        std::index_sequence<K...>, const In*... in) {
  std::int64_t off[1 + sizeof...(In)];
  offsets.at(i, off);
  out[off[0]] = store<Out>(f(load(in[off[K + 1]])...));
}

template <class F, class Out, class... In>
__global__ void map_strided(F f, std::int64_t n, Offsets<1 + sizeof...(In)> offsets, Out* out, const In*... in) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    map_one(f, offsets, i, out, std::index_sequence_for<In...>{}, in...);
}

template <class T>
constexpr int size_of() {
  return static_cast<int>(sizeof(T));
}

// The operands' common shape with size-1 dims dropped and neighbouring dims merged wherever every
// operand steps through them contiguously (stride[d] == stride[d + 1] * shape[d + 1], stride 0
// included): the same elements in the same row-major order, in as few dims as possible. (The
// one-operand version on Shape/Strides is kiln::merge_dims, core/shape.hpp.)
template <int N>
Offsets<N> merge_operand_dims(const TensorView (&args)[N]) {
  Offsets<N> m;
  for (int d = 0; d < args[0].ndim; ++d) {
    const std::int64_t size = args[0].shape[d];
    if (size == 1) continue;
    bool merge = m.ndim > 0;
    for (int k = 0; k < N && merge; ++k) merge = m.strides[k][m.ndim - 1] == args[k].strides[d] * size;
    if (merge) {
      m.shape[m.ndim - 1] *= size;
      for (int k = 0; k < N; ++k) m.strides[k][m.ndim - 1] = args[k].strides[d];
    } else {
      m.shape[m.ndim] = size;
      for (int k = 0; k < N; ++k) m.strides[k][m.ndim] = args[k].strides[d];
      ++m.ndim;
    }
  }
  return m;
}

// Whether the merged layout `m` of `args` (out first) fits the rows path with vectors of V: see
// the file comment. Sets bit k of `broadcast` for each input repeated along the row.
template <int V, int N>
bool rows_fit(const Offsets<N>& m, const TensorView (&args)[N], unsigned& broadcast) {
  broadcast = 0;
  if (m.ndim == 0) return false;
  const int last = m.ndim - 1;
  if (m.shape[last] % V != 0 || m.strides[0][last] != 1) return false;
  for (int k = 0; k < N; ++k) {
    if (!aligned16(args[k].data)) return false;
    const std::int64_t inner = m.strides[k][last];
    if (inner == 0) {
      broadcast |= 1u << k;
    } else if (inner != 1) {
      return false;
    } else {
      // Row starts stay aligned to the V-element vector when every outer step is a multiple of V.
      for (int d = 0; d < last; ++d)
        if (m.strides[k][d] % V != 0) return false;
    }
  }
  return true;
}

// The outer dims of a merged layout (all but the innermost), where each row starts.
template <int N>
RowStarts<N> row_starts(const Offsets<N>& m) {
  RowStarts<N> s{};
  s.ndim = m.ndim - 1;
  for (int d = 0; d < s.ndim; ++d) {
    s.shape[d] = m.shape[d];
    for (int k = 0; k < N; ++k) s.strides[k][d] = m.strides[k][d];
  }
  return s;
}

// Launches out = f(in...) on `stream` (of the current device). Views: out first, then the inputs
// (already broadcast to out's shape). Out and In are the element types.
template <class Out, class... In, class F, class... Views>
void launch_map(F f, cudaStream_t stream, const TensorView& out, const Views&... in) {
  static_assert(sizeof...(In) == sizeof...(Views), "one view per input type");
  const std::int64_t n = out.numel();
  if (n == 0) return;
  constexpr int widest = std::max({size_of<Out>(), size_of<In>()...});
  constexpr int V = 16 / widest > 0 ? 16 / widest : 1;
  constexpr int threads = 256;
  const bool aligned = aligned16(out.data) && (... && aligned16(in.data));
  const bool contiguous = out.is_contiguous() && (... && in.is_contiguous());
  if (contiguous && aligned) {
    map_vectorized<V><<<blocks_for((n + V - 1) / V, threads), threads, 0, stream>>>(
        f, n, static_cast<Out*>(out.data), static_cast<const In*>(in.data)...);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  const TensorView all[] = {out, in...};
  const Offsets<1 + sizeof...(In)> merged = merge_operand_dims(all);
  unsigned broadcast = 0;
  if (rows_fit<V>(merged, all, broadcast)) {
    const std::int64_t row_vecs = merged.shape[merged.ndim - 1] / V;
    const std::int64_t rows = n / merged.shape[merged.ndim - 1];
    map_rows<V><<<blocks_for(rows * row_vecs, threads), threads, 0, stream>>>(
        f, rows, row_vecs, row_starts(merged), broadcast, static_cast<Out*>(out.data), static_cast<const In*>(in.data)...);
  } else {
    map_strided<<<blocks_for(n, threads), threads, 0, stream>>>(f, n, merged, static_cast<Out*>(out.data),
                                                                 static_cast<const In*>(in.data)...);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::kernels
