// Arguments of the rope kernels (kernels/rope/rope.cuh; front-end ops/rope.hpp, CPU reference
// backend/cpu/rope.hpp). All buffers contiguous.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// cos/sin tables [n, head_dim / 2] of the angles positions[p] * theta^(-2i/head_dim), computed in
// double and rounded once to the table type. A negative position gives NaN entries.
struct RopeTablesArgs {
  static constexpr const char* kernel = "rope_tables";
  static constexpr const char* header = "kiln/kernels/rope/rope.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;                 // of cos and sin: f32 or f64 (the compute type of x)
  void* cos = nullptr;                      // [n, head_dim / 2]
  void* sin = nullptr;                      // [n, head_dim / 2]
  const std::int64_t* positions = nullptr;  // [n]
  std::int64_t n = 0;                       // positions
  int head_dim = 0;                         // D, even
  double theta = 10000.0;                   // the frequency base
};

// y = x [outer, S, H, D] rotated pairwise by the tables [S, D/2] or [outer, S, D/2] (x and y may be
// views whose heads are slices of wider rows, e.g. the rope part of a projection's output, or its
// place in the tensor a decode step assembles):
// y[a] = x[a] cos - x[b] sin, y[b] = x[a] sin + x[b] cos (sin negated when inverse).
struct RopeArgs {
  static constexpr const char* kernel = "rope";
  static constexpr const char* header = "kiln/kernels/rope/rope.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;        // of x and y (f32, f64, bf16, f16); the tables hold its compute type
  void* y = nullptr;               // [outer, S, H, D]: rows y_row_stride apart, heads y_head_stride
  const void* x = nullptr;         // [outer, S, H, D]: rows x_row_stride apart, heads x_head_stride
  std::int64_t x_row_stride = -1;   // elements between consecutive (outer, S) rows of x (< 0: H * D, contiguous)
  std::int64_t x_head_stride = -1;  // elements between the heads of a row of x (< 0: D, contiguous)
  std::int64_t y_row_stride = -1;   // the same for y (< 0: contiguous)
  std::int64_t y_head_stride = -1;
  const void* cos = nullptr;       // [S, D/2], or [outer, S, D/2] with per_batch_tables
  const void* sin = nullptr;       // same shape as cos
  std::int64_t outer = 1;          // product of the batch dims
  std::int64_t S = 0;              // sequence length
  int H = 0;                       // heads
  int D = 0;                       // head dim, even
  bool per_batch_tables = false;   // tables [outer, S, D/2] rather than [S, D/2]
  bool half_split = true;          // pairs (i, i + D/2); false: interleaved pairs (2i, 2i + 1)
  bool inverse = false;            // rotate by the negative angles (the backward)
};

}  // namespace kiln::kernels
