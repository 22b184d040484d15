// Arguments of the softmax kernels (kernels/softmax/softmax.cuh; front-end ops/softmax.hpp, CPU
// reference backend/cpu/softmax.hpp). All operands have one shape and one floating dtype (f32,
// f64, bf16, f16); rows run along `dim`. The kernels take rows that are unit-stride, or the rows
// of a contiguous tensor along a non-last dim (the front-end copies any other layout first).
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// y = softmax(x) = exp(x - max) / sum(exp(x - max)), or log_softmax(x) = (x - max) - log(sum(...)).
struct SoftmaxForwardArgs {
  static constexpr const char* kernel = "softmax forward";
  static constexpr const char* header = "kiln/kernels/softmax/softmax.cuh";
  DeviceLaunch launch;
  TensorView y;      // written
  TensorView x;
  int dim = 0;       // the softmax dim, in [0, x.ndim) (0 for a 0-d tensor)
  bool log = false;  // log_softmax
};

// gx = y * (g - sum(g * y)) (softmax), or gx = g - exp(y) * sum(g) (log_softmax), sums along dim.
struct SoftmaxBackwardArgs {
  static constexpr const char* kernel = "softmax backward";
  static constexpr const char* header = "kiln/kernels/softmax/softmax.cuh";
  DeviceLaunch launch;
  TensorView gx;     // written
  TensorView g;      // the output gradient
  TensorView y;      // the forward's output
  int dim = 0;
  bool log = false;  // log_softmax
};

}  // namespace kiln::kernels
