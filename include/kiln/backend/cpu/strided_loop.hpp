// The N-dimensional loop under every elementwise CPU kernel: N operands (output first), each
// with its own strides over one common shape (broadcast operands have stride 0).
//
// Dimensions are first coalesced (adjacent dims merge when every operand steps through them as
// one), so contiguous and simply-broadcast tensors collapse to one long inner loop the compiler
// vectorises. The outer rows are then split into parallel chunks.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/shape.hpp"

namespace kiln::cpu {

template <std::size_t N>
struct StridedLayout {
  Shape shape;
  std::array<Strides, N> strides;
};

template <std::size_t N>
StridedLayout<N> coalesce(const Shape& shape, const std::array<Strides, N>& strides) {
  StridedLayout<N> out;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!out.shape.empty()) {
      bool mergeable = true;
      for (std::size_t k = 0; k < N; ++k)
        mergeable = mergeable && out.strides[k].back() == strides[k][d] * shape[d];
      if (mergeable) {
        out.shape.back() *= shape[d];
        for (std::size_t k = 0; k < N; ++k) out.strides[k].back() = strides[k][d];
        continue;
      }
    }
    out.shape.push_back(shape[d]);
    for (std::size_t k = 0; k < N; ++k) out.strides[k].push_back(strides[k][d]);
  }
  if (out.shape.empty()) {  // a scalar, or all dims of size 1
    out.shape.push_back(1);
    for (std::size_t k = 0; k < N; ++k) out.strides[k].push_back(0);
  }
  return out;
}

// Calls inner(offsets, count, inner_strides) for every innermost row, where offsets[k] is the
// element offset of operand k at the row's start. Rows run in parallel chunks. A row longer than
// parallel_grain is cut into segments of parallel_grain elements (one call each): a contiguous
// tensor coalesces into a single row, which would otherwise run on one thread.
template <std::size_t N, class Inner>
void strided_for(const Shape& shape, const std::array<Strides, N>& strides, Inner&& inner) {
  if (numel_of(shape) == 0) return;
  const StridedLayout<N> layout = coalesce<N>(shape, strides);
  const std::size_t nd = layout.shape.size();
  const std::int64_t row_len = layout.shape[nd - 1];
  std::array<std::int64_t, N> inner_strides;
  for (std::size_t k = 0; k < N; ++k) inner_strides[k] = layout.strides[k][nd - 1];
  const std::int64_t rows = numel_of(layout.shape) / row_len;
  const std::int64_t seg_len = std::min(row_len, parallel_grain);
  const std::int64_t segs = (row_len + seg_len - 1) / seg_len;  // per row

  parallel_for(rows * segs, seg_len, [&](std::int64_t begin, std::int64_t end) {
    // Multi-index of the row of item `begin` over the outer dims, then step it row by row.
    std::array<std::int64_t, 16> small_index{};
    std::vector<std::int64_t> big_index;
    std::int64_t* index = small_index.data();
    if (nd > small_index.size()) {
      big_index.assign(nd, 0);
      index = big_index.data();
    }
    std::array<std::int64_t, N> offsets{};
    std::int64_t r = begin / segs;
    std::int64_t seg = begin % segs;
    for (std::size_t d = nd - 1; d-- > 0;) {
      index[d] = r % layout.shape[d];
      r /= layout.shape[d];
      for (std::size_t k = 0; k < N; ++k) offsets[k] += index[d] * layout.strides[k][d];
    }
    for (std::int64_t item = begin; item < end; ++item) {
      const std::int64_t start = seg * seg_len;
      std::array<std::int64_t, N> at = offsets;
      for (std::size_t k = 0; k < N; ++k) at[k] += start * inner_strides[k];
      inner(at, std::min(seg_len, row_len - start), inner_strides);
      if (++seg < segs) continue;
      seg = 0;
      for (std::size_t d = nd - 1; d-- > 0;) {
        for (std::size_t k = 0; k < N; ++k) offsets[k] += layout.strides[k][d];
        if (++index[d] < layout.shape[d]) break;
        for (std::size_t k = 0; k < N; ++k) offsets[k] -= index[d] * layout.strides[k][d];
        index[d] = 0;
      }
    }
  });
}

}  // namespace kiln::cpu
