// The summation order of index_add_rows (the adjoint of selecting rows: embedding's backward,
// gather along a dim), shared by the CPU loop (backend/cpu/gather.hpp) and the CUDA kernels
// (kernels/gather/index_rows.cuh) so that both give the same bits.
//
// A destination row r receives the source rows j with index[j] == r, in ascending j: x_0, x_1, ...
// They are summed in compute precision (float for bf16/fp16/float, double for double) in chunks
// of kIndexAddChunk consecutive sources,
//   P_c = (((0 + x_{cK}) + x_{cK+1}) + ... + x_{cK+K-1}),
// and the chunks in order onto the row's previous value d (0 for a fresh gradient):
//   dst[r] = ((d + P_0) + P_1) + ...
// A row with at most K sources is d + P_0, which for d = 0 is the plain running sum.
//
// Why chunks: on a GPU one thread group sums one destination row, so a row that many sources
// name (a frequent token: thousands of positions in a batch) was one serial chain of dependent
// adds and loads, hundreds of microseconds while the rest of the GPU idled (0.48 ms of a 30 ms
// step of pretrain's big config on an H100). With chunks, the chunks of every row are summed in
// parallel and a row adds only its count / K partial sums. The result depends on the data alone,
// not on the thread count or the device.
#pragma once

#include <cstdint>

namespace kiln::math {

inline constexpr std::int64_t kIndexAddChunk = 32;

// Chunks of a row with `count` sources that are summed apart from the row (the long rows); a row
// with at most one chunk is summed in place.
constexpr std::int64_t index_add_chunks(std::int64_t count) {
  return count > kIndexAddChunk ? (count + kIndexAddChunk - 1) / kIndexAddChunk : 0;
}

}  // namespace kiln::math
