// Arguments of the topk kernels (kernels/topk/topk.cuh; front-end ops/topk.hpp, CPU reference
// backend/cpu/topk.hpp).
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// The k best entries of every line of src along `dim` and their positions, in the CPU kernel's
// ranking (better value first, equal values lower position first, NaN above every number).
// Floating dtypes; lines of at most 2^31 - 1 elements.
struct TopkArgs {
  static constexpr const char* kernel = "topk";
  static constexpr const char* header = "kiln/kernels/topk/topk.cuh";
  DeviceLaunch launch;
  TensorView values;       // src's shape with dim resized to k, src's dtype, any strides
  TensorView indices;      // int64, values' shape, any strides: positions along dim
  TensorView src;          // any strides; src.dtype is the element type
  int dim = 0;             // the dim lines run along
  std::int64_t k = 0;      // entries chosen per line (<= src.shape[dim])
  bool largest = true;     // the largest entries (false: the smallest)
  bool sorted = true;      // best first (false: in position order)
};

}  // namespace kiln::kernels
