// The rows of one group of a grouped GEMM, read on the device from the group index the host never
// reads: by both bf16 grouped GEMM kernels (grouped_gemm.cuh, grouped_gemm_hopper.cuh; offsets
// int64) and the grouped FP8 GEMM (kernels/grouped_fp8_gemm/: offsets or per-group counts, int32 or
// int64).
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

// The groups of a grouped GEMM as a device-side accessor (what tile_schedule.cuh takes), in one of
// two layouts:
//   contiguous  rows sorted by group in one matrix of `rows` rows: group g owns rows
//               index[g] .. index[g+1] − 1 (index: G + 1 offsets), clamped as group_rows does;
//   masked      G blocks of `rows` (= M_max) rows each: group g owns rows g·M_max .. g·M_max +
//               min(index[g], M_max) − 1 (index: G counts; a negative count is 0).
// The index is int32 or int64 (index_is_int32), read through L2 (it is written by an earlier
// kernel of the same stream, so no read-only cache path).
struct GroupIndex {
  const void* index;
  std::int64_t rows;
  int index_is_int32;
  int masked;

  __device__ __forceinline__ std::int64_t at(int i) const {
    return index_is_int32 ? static_cast<std::int64_t>(static_cast<const std::int32_t*>(index)[i])
                          : static_cast<const std::int64_t*>(index)[i];
  }
  __device__ __forceinline__ void operator()(int g, std::int64_t& start, std::int64_t& count) const {
    const auto clamp = [this](std::int64_t v) { return v < 0 ? std::int64_t{0} : (v > rows ? rows : v); };
    if (masked) {
      start = static_cast<std::int64_t>(g) * rows;
      count = clamp(at(g));
    } else {
      start = clamp(at(g));
      const std::int64_t end = clamp(at(g + 1));
      count = end > start ? end - start : 0;
    }
  }
};

}  // namespace kiln::kernels::grouped_gemm
