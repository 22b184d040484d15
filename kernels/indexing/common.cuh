// Helpers shared by the indexing kernels (row selection and index_add, gather and scatter_add,
// topk): integer division with a 32-bit fast path, offsets of strided operands over a shape, raw
// word types for copies that never look at the element type, and the out-of-range flag.
//
// Index arithmetic is 64-bit (tensors may exceed 2^31 elements), but a 64-bit division is a long
// software sequence on the GPU (about 70 instructions) while a 32-bit one is a handful; nearly
// every real shape fits in 32 bits, so divmod() checks and takes the short path.
//
// Out-of-range indices: the forward kernels read every index anyway, so they validate it on the
// way. A bad index is skipped (never dereferenced) and its row-major position is lowered into a
// one-element flag with atomicMin; the op front-end reads the flag back after the launch and
// throws kiln::Error naming the first bad index, exactly as the CPU path does.
#pragma once

#include <cstdint>

#include "common/device_types.cuh"
#include "elementwise/map.cuh"  // Vec, with_floating_type
#include "kiln/backend/cuda/error.hpp"
#include "kiln/backend/cuda/stream.hpp"

namespace kiln::kernels::indexing {

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

// Element offsets of N operands at a row-major position of `shape` (each operand with its own
// strides; a stride of 0 leaves that dim out). Passed to kernels as a __grid_constant__ parameter,
// so at() reads it in place instead of copying it to local memory.
template <int N>
struct Strided {
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

// The dims of `shape` (from a TensorArg) except `skip` (-1: none), with each operand's strides.
template <int N>
Strided<N> strided_without(const TensorArg& shape, int skip, const TensorArg* const (&operands)[N]) {
  Strided<N> s;
  for (int d = 0; d < shape.ndim; ++d) {
    if (d == skip) continue;
    s.shape[s.ndim] = shape.shape[d];
    for (int k = 0; k < N; ++k) s.strides[k][s.ndim] = operands[k]->strides[d];
    ++s.ndim;
  }
  return s;
}

inline int element_size(DType dtype) {
  switch (dtype) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::u8:
    case DType::boolean: return 1;
  }
  return 1;
}

// Calls f(W{}) with an unsigned type of `bytes` bytes (1, 2, 4, 8 or 16): copies move raw words.
template <class F>
void with_word(int bytes, F&& f) {
  switch (bytes) {
    case 16: f(uint4{}); return;
    case 8: f(static_cast<unsigned long long>(0)); return;
    case 4: f(0u); return;
    case 2: f(static_cast<unsigned short>(0)); return;
    default: f(static_cast<unsigned char>(0)); return;
  }
}

// Records `position` as holding an out-of-range index (the flag keeps the smallest).
__device__ __forceinline__ void flag_bad_index(unsigned long long* flag, std::int64_t position) {
  if (flag) atomicMin(flag, static_cast<unsigned long long>(position));
}

inline unsigned long long* flag_pointer(const KernelCall& call, std::size_t i) {
  return call.tensors.size() > i ? static_cast<unsigned long long*>(call.tensors[i].data) : nullptr;
}

// Number of bits needed to write every value in [0, max_value].
inline int bits_for(std::uint64_t max_value) {
  int bits = 0;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

// Grid for a grid-stride loop over `items`, `per_block` of them per block.
inline unsigned grid_for(std::int64_t items, std::int64_t per_block) {
  const std::int64_t b = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));
}

}  // namespace kiln::kernels::indexing
