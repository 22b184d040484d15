// How a GEMM can read a strided matrix in place, shared by the CPU matmul (backend/cpu/matmul.hpp,
// Eigen), the front-end (ops/matmul.hpp, which copies what neither layout fits) and the cuBLASLt
// launcher (kernels/matmul/matmul.cuh). Host code; g++ compiles this header alone.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln::math {

enum class GemmLayout { row_major, col_major, unsupported };

// How a rows x cols matrix with the given element strides can be read by a GEMM, and its leading
// dimension (the outer stride). Strides of size-1 dims are irrelevant and ignored.
struct MatrixLayout {
  GemmLayout layout = GemmLayout::unsupported;
  std::int64_t leading = 0;
};

inline MatrixLayout gemm_layout(std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                                std::int64_t col_stride) {
  const std::int64_t r = std::max<std::int64_t>(rows, 1), c = std::max<std::int64_t>(cols, 1);
  if (rows == 0 || cols == 0) return {GemmLayout::row_major, c};  // nothing is read
  if ((cols <= 1 || col_stride == 1) && (rows <= 1 || row_stride >= c))
    return {GemmLayout::row_major, rows <= 1 ? c : row_stride};
  if ((rows <= 1 || row_stride == 1) && (cols <= 1 || col_stride >= r))
    return {GemmLayout::col_major, cols <= 1 ? r : col_stride};
  return {};
}

}  // namespace kiln::math
