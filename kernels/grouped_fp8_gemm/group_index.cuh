// The device-side view of a grouped FP8 GEMM's group index (args.hpp: offsets or counts, int32 or
// int64), for both kernels of the family (hopper.cuh, simt.cuh).
#pragma once

#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/kernels/grouped_gemm/group_rows.cuh"

namespace kiln::kernels {

inline grouped_gemm::GroupIndex grouped_fp8_group_index(const GroupedFp8GemmArgs& a) {
  return {a.index, a.rows, a.index_dtype == DType::i32 ? 1 : 0, a.layout == GroupedFp8Layout::masked ? 1 : 0};
}

}  // namespace kiln::kernels
