// Arguments of the reduction kernels: the general reduction (kernels/reduce/reduce.cuh; front-ends
// ops/reduce.hpp and ops/reduce_max.hpp, CPU reference backend/cpu/reduce.hpp) and the backward
// pieces of max/min/amax/amin (kernels/reduce/max_backward.cuh; front-end ops/reduce_max.hpp).
// The scalar rules both sides share are in math/reduce.hpp.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"
#include "kiln/math/reduce.hpp"

namespace kiln::kernels {

// sum, mean, max, min (values) and argmax, argmin (index, and the value where wanted) of `in` over
// the dims marked in `reduced_dims`. Outputs are contiguous, one element per kept position in
// row-major order. Sums and means run on every floating type and on int32/int64 (accumulated in
// double); the extrema on floating types.
struct ReduceArgs {
  static constexpr const char* kernel = "reduce";
  static constexpr const char* header = "kiln/kernels/reduce/reduce.cuh";
  DeviceLaunch launch;
  math::ReduceOp op = math::ReduceOp::sum;
  void* values = nullptr;           // in.dtype; null: not wanted (argmax/argmin only)
  std::int64_t* indices = nullptr;  // argmax/argmin: the row-major index in the reduced range; null: not wanted
  TensorView in;                    // any strides (broadcast included)
  std::uint32_t reduced_dims = 0;   // bit d set: dim d of `in` is reduced
};

// The backward of max(t, dim) / min(t, dim): grad[i] = g[i] where i's coordinate along `dim`
// equals idx[i], else 0 (each output gradient goes to the one element whose index was returned).
// grad is written whole (no zero fill needed).
struct ScatterAlongDimArgs {
  static constexpr const char* kernel = "max/min backward";
  static constexpr const char* header = "kiln/kernels/reduce/max_backward.cuh";
  DeviceLaunch launch;
  TensorView grad;  // the input's shape and a floating dtype; any strides
  TensorView idx;   // int64, seen with grad's shape and stride 0 along dim
  TensorView g;     // grad's dtype, seen with grad's shape and stride 0 along dim
  int dim = 0;      // the reduced dim, in [0, grad.ndim)
};

// The elements that share amax/amin's gradient: hit = 1 where x equals y (a NaN equals a NaN
// result), else 0 (math::ExtremumHit).
struct ExtremumHitArgs {
  static constexpr const char* kernel = "amax/amin backward";
  static constexpr const char* header = "kiln/kernels/reduce/max_backward.cuh";
  DeviceLaunch launch;
  TensorView hit;  // x's shape and dtype (a floating one)
  TensorView x;
  TensorView y;    // the reduction's result, broadcast to x's shape
};

}  // namespace kiln::kernels
