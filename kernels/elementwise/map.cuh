// The generic elementwise kernel: out[i] = f(in_1[i], ..., in_n[i]) for any arity, any mix of
// element types, inputs broadcast to the output's shape.
//
// Memory traffic: each input element is read once and each output element written once, so the
// kernel is bandwidth-bound at (sum of element sizes) bytes per element. Two paths:
//   - every operand contiguous and 16-byte aligned: each thread moves V elements per operand with
//     one 16-byte load/store (V = 16 / widest element size), the widest access the memory
//     system serves per instruction;
//   - otherwise: one element per thread, with each operand's offset computed from the linear
//     index and its strides (stride 0 for broadcast dims).
// Both use grid-stride loops, so any size runs with a bounded grid.
#pragma once

#include <utility>

#include "common/device_types.cuh"
#include "kiln/backend/cuda/error.hpp"

namespace kiln::kernels {

template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

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

// Launches out = f(in...) on `stream`. TensorArgs: out first, then the inputs (already broadcast to
// out's shape). Out and In are the element types.
template <class Out, class... In, class F, class... Args>
void launch_map(F f, cudaStream_t stream, const TensorArg& out, const Args&... in) {
  static_assert(sizeof...(In) == sizeof...(Args), "one TensorArg per input type");
  const std::int64_t n = out.numel();
  if (n == 0) return;
  constexpr int widest = std::max({size_of<Out>(), size_of<In>()...});
  constexpr int V = 16 / widest > 0 ? 16 / widest : 1;
  constexpr int threads = 256;
  const bool aligned = ((reinterpret_cast<std::uintptr_t>(out.data) % 16 == 0) && ... &&
                        (reinterpret_cast<std::uintptr_t>(in.data) % 16 == 0));
  const bool contiguous = out.is_contiguous() && (... && in.is_contiguous());
  if (contiguous && aligned) {
    map_vectorized<V><<<blocks_for((n + V - 1) / V, threads), threads, 0, stream>>>(
        f, n, static_cast<Out*>(out.data), static_cast<const In*>(in.data)...);
  } else {
    const TensorArg all[] = {out, in...};
    map_strided<<<blocks_for(n, threads), threads, 0, stream>>>(f, n, make_offsets(all), static_cast<Out*>(out.data),
                                                                 static_cast<const In*>(in.data)...);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

// Calls f(T{}) with the element type named by `dtype` (floating types).
template <class F>
void with_floating_type(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16{}); return;
    case DType::f16: f(fp16{}); return;
    default: fail(op, "has no CUDA kernel for dtype ", dtype);
  }
}

// Same, for every element type kiln has.
template <class F>
void with_any_type(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::fp8_e4m3: f(fp8_e4m3{}); return;
    case DType::fp8_e5m2: f(fp8_e5m2{}); return;
    case DType::i32: f(std::int32_t{}); return;
    case DType::i64: f(std::int64_t{}); return;
    case DType::u8: f(std::uint8_t{}); return;
    case DType::boolean: f(bool{}); return;
    default: with_floating_type(op, dtype, f);
  }
}

}  // namespace kiln::kernels
