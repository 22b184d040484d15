// A strided tensor as a kernel sees it: data pointer, element type, shape and strides (in
// elements). Kernel argument structs use it for operands whose layout the kernel handles itself
// (elementwise maps over broadcast or transposed operands, reductions over any set of dims);
// kernels that need a fixed layout take plain pointers and sizes instead.
//
// Broadcast operands arrive already expanded to the output's shape (stride 0 on broadcast dims),
// so a kernel indexes every operand with one shape. Plain data: g++ and nvcc both compile it.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.hpp"

namespace kiln {

inline constexpr int kMaxDims = 8;

namespace kernels {

struct TensorView {
  void* data = nullptr;  // null: the operand is absent (optional inputs and outputs)
  DType dtype = DType::f32;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[kMaxDims] = {};

  bool present() const { return data != nullptr; }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }

  bool is_contiguous() const {
    if (numel() == 0) return true;
    std::int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] == 1) continue;
      if (strides[d] != expected) return false;
      expected *= shape[d];
    }
    return true;
  }

  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

}  // namespace kernels
}  // namespace kiln
