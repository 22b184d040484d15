// The token-grouped ("k-grouped") layout of the FP8 weight gradient of an MoE layer's experts
// (ops/k_grouped_fp8_gemm.hpp), shared by the CPU front-end and the CUDA kernels. Host and device
// (KILN_HD); g++ compiles it.
//
// The experts' rows are sorted by expert: group g owns rows offsets[g] .. offsets[g+1] − 1 of X
// [R, C] (offsets [G + 1]). Its weight gradient dW_g = dY_gᵀ · X_g sums over the group's own rows,
// so the FP8 operands are X_gᵀ and dY_gᵀ with 1×128 tiles along those rows, and a tile must not
// mix two groups (each group's scales are its own). The layout puts the groups' transposes side by
// side in one matrix [C, P]: group g's rows become columns col_g .. col_g + count_g − 1, where
//
//   col_g = Σ_{h<g} round_up(count_h, 128)
//
// so every group starts on a k-block boundary and its tiles are the 1×128 tiles of an ordinary
// QuantizedMatrix. The columns between a group's end and the next 128-multiple, and those past the
// last group, hold zeros. P = k_grouped_columns(R, G) ≥ Σ_g round_up(count_g, 128) for any
// offsets, known without reading them (the host never reads device offsets).
//
// Offsets are read clamped to [0, R] with a negative count read as 0 (as the grouped GEMMs read
// theirs, kernels/grouped_gemm/group_rows.cuh), so corrupt device offsets cannot move a read or a
// write out of bounds; the CPU front-end checks them instead.
#pragma once

#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD

namespace kiln::fp8 {

constexpr std::int64_t k_group_align = 128;  // one k-block of the FP8 GEMM

KILN_HD inline std::int64_t k_group_round(std::int64_t count) {
  return (count + k_group_align - 1) / k_group_align * k_group_align;
}

// Columns of the layout for R rows in G groups: Σ round_up(count_g, 128) ≤ R + 127·G, rounded up
// to a whole k-block (at least one).
KILN_HD inline std::int64_t k_grouped_columns(std::int64_t rows, std::int64_t groups) {
  const std::int64_t c = k_group_round(rows + (k_group_align - 1) * groups);
  return c > 0 ? c : k_group_align;
}

// One group of the layout: its source rows and its first column.
struct KGroup {
  std::int64_t row = 0;     // first source row
  std::int64_t count = 0;   // rows
  std::int64_t column = 0;  // first column of the layout (a multiple of 128)
};

// Group g's rows of offsets[g] .. offsets[g+1], clamped to [0, rows].
KILN_HD inline void k_group_rows(const std::int64_t* offsets, std::int64_t rows, std::int64_t g, std::int64_t& start,
                                 std::int64_t& count) {
  const std::int64_t s = offsets[g], e = offsets[g + 1];
  start = s < 0 ? 0 : (s > rows ? rows : s);
  const std::int64_t end = e < 0 ? 0 : (e > rows ? rows : e);
  count = end > start ? end - start : 0;
}

// Group g of the layout (O(g): the columns of the groups before it are summed).
KILN_HD inline KGroup k_group(const std::int64_t* offsets, std::int64_t rows, std::int64_t g) {
  KGroup k;
  for (std::int64_t h = 0; h < g; ++h) {
    k_group_rows(offsets, rows, h, k.row, k.count);
    k.column += k_group_round(k.count);
  }
  k_group_rows(offsets, rows, g, k.row, k.count);
  return k;
}

// The group whose columns [column_g, column_g + round_up(count_g, 128)) hold `column`, or `groups`
// for a column past the last group (then `k` is an empty group starting at the groups' end).
KILN_HD inline std::int64_t k_group_of_column(const std::int64_t* offsets, std::int64_t rows, std::int64_t groups,
                                              std::int64_t column, KGroup& k) {
  k = KGroup{};
  for (std::int64_t g = 0; g < groups; ++g) {
    k_group_rows(offsets, rows, g, k.row, k.count);
    const std::int64_t width = k_group_round(k.count);
    if (column < k.column + width) return g;
    k.column += width;
  }
  k.row = rows;
  k.count = 0;
  return groups;
}

}  // namespace kiln::fp8
