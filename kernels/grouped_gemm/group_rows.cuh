// The rows of one group of a grouped GEMM (kernels/grouped_gemm/args.hpp), read from the device
// offsets by both grouped GEMM kernels (grouped_gemm.cuh, grouped_gemm_hopper.cuh).
#pragma once

#include <cstdint>

namespace kiln::kernels::grouped_gemm {

// Rows [start, start + count) of group g, with the offsets clamped to [0, R] and a negative count
// read as 0: corrupt offsets (the host never checks device offsets) cannot move a read or a write
// out of bounds.
__device__ __forceinline__ void group_rows(const std::int64_t* offsets, int g, std::int64_t R, std::int64_t& start,
                                           std::int64_t& count) {
  auto clamp = [R](std::int64_t v) { return v < 0 ? std::int64_t{0} : (v > R ? R : v); };
  start = clamp(offsets[g]);
  const std::int64_t end = clamp(offsets[g + 1]);
  count = end > start ? end - start : 0;
}

}  // namespace kiln::kernels::grouped_gemm
