// Element offsets of N strided operands that share one shape (broadcast operands carry stride 0),
// from a row-major linear index: the indexing of every kernel that walks arbitrary layouts.
//
// Index arithmetic is 64-bit (tensors may exceed 2^31 elements), but a 64-bit division is a long
// software sequence on the GPU (about 70 instructions) while a 32-bit one is a handful; nearly
// every real shape fits in 32 bits, so divmod() checks and takes the short path.
#pragma once

#include <cstdint>

#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// a / b, and a % b in `rem`, for a >= 0, b > 0.
__device__ __forceinline__ std::int64_t divmod(std::int64_t a, std::int64_t b, std::int64_t& rem) {
  if (((static_cast<std::uint64_t>(a) | static_cast<std::uint64_t>(b)) >> 32) == 0) {
    const std::uint32_t q = static_cast<std::uint32_t>(a) / static_cast<std::uint32_t>(b);
    rem = a - static_cast<std::int64_t>(q) * b;
    return q;
  }
  const std::int64_t q = a / b;
  rem = a - q * b;
  return q;
}

// Passed by value as a kernel argument (mark the parameter __grid_constant__ where the kernel
// only reads it, so at() reads it in place instead of copying it to local memory).
template <int N>
struct Offsets {
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[N][kMaxDims] = {};

  __device__ __forceinline__ void at(std::int64_t linear, std::int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      std::int64_t i;
      linear = divmod(linear, shape[d], i);
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
  }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
};

// The shape of views[0] and every view's strides (all views share that shape).
template <int N>
Offsets<N> make_offsets(const TensorView (&views)[N]) {
  Offsets<N> o;
  o.ndim = views[0].ndim;
  for (int d = 0; d < o.ndim; ++d) {
    o.shape[d] = views[0].shape[d];
    for (int k = 0; k < N; ++k) o.strides[k][d] = views[k].strides[d];
  }
  return o;
}

// The dims of `shape` except `skip` (-1: none), with each operand's strides.
template <int N>
Offsets<N> offsets_without(const TensorView& shape, int skip, const TensorView* const (&operands)[N]) {
  Offsets<N> o;
  for (int d = 0; d < shape.ndim; ++d) {
    if (d == skip) continue;
    o.shape[o.ndim] = shape.shape[d];
    for (int k = 0; k < N; ++k) o.strides[k][o.ndim] = operands[k]->strides[d];
    ++o.ndim;
  }
  return o;
}

}  // namespace kiln::kernels
