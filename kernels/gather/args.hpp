// Arguments of the gather family's kernels: gather and scatter_add along one dim
// (kernels/gather/gather.cuh), and row selection with its adjoint for index_select and embedding
// (kernels/gather/index_rows.cuh). Front-ends: ops/gather.hpp, ops/embedding.hpp; CPU reference:
// backend/cpu/gather.hpp.
//
// Indices are contiguous int64. Out-of-range indices: the forward kernels validate every index
// they read, skip a bad one and lower `first_bad` (when given: a one-element buffer the front-end
// fills with the index count) with atomicMin to the bad index's row-major position in `index`;
// the front-end reads it back after the launch (see ops/gather.hpp, DeviceIndexCheck).
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// out[p] = src[p with p[dim] replaced by index[p]], p over index's shape. Any dtype (a raw copy of
// each element).
struct GatherArgs {
  static constexpr const char* kernel = "gather";
  static constexpr const char* header = "kiln/kernels/gather/gather.cuh";
  DeviceLaunch launch;
  void* out = nullptr;                // contiguous, index's shape, src's dtype
  TensorView src;                     // any strides; src.dtype is the element type
  TensorView index;                   // int64, contiguous; its shape is the output's
  std::int64_t* first_bad = nullptr;  // [1], optional: lowered to the first out-of-range position
  int dim = 0;                        // the dim index replaces (of src and index)
};

// dst[p with p[dim] replaced by index[p]] += src[p], p over index's shape, in place; every
// destination adds its sources in ascending position (deterministic, bit-identical to the CPU).
// Floating dtypes.
struct ScatterAddArgs {
  static constexpr const char* kernel = "scatter_add";
  static constexpr const char* header = "kiln/kernels/gather/gather.cuh";
  DeviceLaunch launch;
  TensorView dst;                     // contiguous, modified in place; dst.dtype is the element type
  TensorView src;                     // index's shape, any strides, dst's dtype
  TensorView index;                   // int64, contiguous
  std::int64_t* first_bad = nullptr;  // [1], optional: lowered to the first out-of-range position
  int dim = 0;                        // the dim index replaces (of dst, src and index)
};

// out[o][j][:] = src[o][index[j]][:], tensors seen as contiguous [outer, rows, inner] blocks.
// Any dtype (raw words).
struct IndexSelectRowsArgs {
  static constexpr const char* kernel = "index_select_rows";
  static constexpr const char* header = "kiln/kernels/gather/index_rows.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;             // of out and src
  void* out = nullptr;                  // [outer, n, inner]
  const void* src = nullptr;            // [outer, size, inner]
  const std::int64_t* index = nullptr;  // [n], values in [0, size)
  std::int64_t* first_bad = nullptr;    // [1], optional: lowered to the first out-of-range position
  std::int64_t outer = 1;               // product of the dims before the selected one
  std::int64_t size = 0;                // rows of src along the selected dim
  std::int64_t inner = 1;               // product of the dims after it (elements per row)
  std::int64_t n = 0;                   // indices (rows of out along the selected dim)
};

// dst[o][r][:] = (accumulate ? dst[o][r][:] : 0) + the sum of src[o][j][:] over the j with
// index[j] == r, in ascending j; row `skip` gets nothing. Every row of dst is written. Floating
// dtypes. The indices must be valid (they were checked by the forward).
struct IndexAddRowsArgs {
  static constexpr const char* kernel = "index_add_rows";
  static constexpr const char* header = "kiln/kernels/gather/index_rows.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;             // of dst and src
  void* dst = nullptr;                  // [outer, size, inner]
  const void* src = nullptr;            // [outer, n, inner]
  const std::int64_t* index = nullptr;  // [n], values in [0, size)
  std::int64_t outer = 1;               // product of the dims before the indexed one
  std::int64_t size = 0;                // rows of dst along the indexed dim
  std::int64_t inner = 1;               // product of the dims after it (elements per row)
  std::int64_t n = 0;                   // indices (rows of src along the indexed dim)
  std::int64_t skip = -1;               // a row that gets no sum (embedding's padding_idx); -1: none
  bool accumulate = false;              // add to dst's contents rather than overwrite them
};

}  // namespace kiln::kernels
