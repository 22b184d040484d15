// Arguments of the rms_norm kernels (kernels/rms_norm/rms_norm.cuh; front-end ops/rms_norm.hpp,
// CPU reference backend/cpu/rms_norm.hpp). Rows are contiguous [rows, cols] buffers of one
// floating dtype (f32, f64, bf16, f16); cols is the normalised dim.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// Per row: r = 1 / sqrt(mean(x^2) + eps), y = x * r * w. r is kept for the backward.
struct RmsNormForwardArgs {
  static constexpr const char* kernel = "rms_norm forward";
  static constexpr const char* header = "kiln/kernels/rms_norm/rms_norm.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;  // of x, w and y
  void* y = nullptr;
  double* rstd = nullptr;    // [rows]; null: not wanted (no backward follows)
  const void* x = nullptr;
  const void* w = nullptr;   // [cols]; null: no weight (y = x * r)
  std::int64_t rows = 0;
  int cols = 0;
  double eps = 1e-6;
  // Elements between consecutive rows (< 0: cols, contiguous): rows that are slices of wider rows
  // (a projection's output split in parts) are read, and written, in place.
  std::int64_t x_row_stride = -1, y_row_stride = -1;
};

// Per row, with xhat = x * r and gw = g * w: dx = r * (gw - xhat * mean(gw * xhat)); and
// dw = sum over rows of g * xhat, from the same pass over x and g (bit-identical from run to run:
// the order of its sums depends only on the shape, dtype and alignment, not on the GPU).
struct RmsNormBackwardArgs {
  static constexpr const char* kernel = "rms_norm backward";
  static constexpr const char* header = "kiln/kernels/rms_norm/rms_norm.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;  // of x, w, g, dx and dw
  void* dx = nullptr;        // null: not wanted
  // [rows, cols] or null: a gradient x received before, added into dx (dx = dx_add + the rms_norm
  // gradient, rounded once: autograd's InputGrads::received); never dx itself
  const void* dx_add = nullptr;
  void* dw = nullptr;        // [cols]; null: not wanted (or no weight)
  const void* x = nullptr;
  const void* w = nullptr;   // null: no weight
  const void* g = nullptr;
  const double* rstd = nullptr;
  std::int64_t rows = 0;
  int cols = 0;
  // Elements between consecutive rows of x and of dx (< 0: cols, contiguous): x a slice of wider
  // rows read in place (as the forward read it), dx written where x lay in a buffer of the wider
  // rows (ops/rms_norm.hpp). g and dx_add are contiguous.
  std::int64_t x_row_stride = -1, dx_row_stride = -1;
};

}  // namespace kiln::kernels
