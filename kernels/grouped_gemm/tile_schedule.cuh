// The persistent tile scheduler of kiln's grouped GEMMs on Hopper (the bf16 kernel,
// grouped_gemm_hopper.cuh, and the FP8 kernel, kernels/grouped_fp8_gemm/hopper.cuh): which output
// tile a CTA computes for unit u, when the group sizes live on the device only.
//
// Group g of M_g rows needs ceil(M_g / TileRows) row tiles; a unit is (row tile, column tile).
// Every CTA first reads the G group bounds (through a GroupIndex-like accessor, group_rows.cuh)
// and builds the inclusive prefix of the groups' row-tile counts in shared memory: warp 0, lane l
// summing a run of ceil(G/32) groups, a shuffle scan adding the runs (G + 1 loads from L2 per CTA,
// a few microseconds at G ≤ 1024, overlapped with the barrier initialisation). The unit count is
// then total_row_tiles · col_tiles, known on the device only: the host sizes the grid for the most
// any split of the rows could need (one CTA per SM, persistent: CTA i takes units i, i + grid, ...)
// and never reads the offsets back.
//
// Order: units go in bands of kBandRows row tiles (across all groups, in order) × every column
// tile, down the band's row tiles first, so that the CTAs running at the same time (one per SM)
// share a few column tiles of the weights and a band of A rows in L2. A unit's group is a binary
// search of the prefix (log2 G shared-memory reads).
#pragma once

#include <cstdint>

namespace kiln::kernels::grouped_gemm {

constexpr int kBandRows = 8;  // row tiles per band of the unit order (L2 reuse)

// Warp 0 writes tile_end[g] = Σ_{h ≤ g} ceil(M_h / TileRows) for g < num_groups. groups(g, start,
// count) gives group g's rows.
template <int TileRows, class Groups>
__device__ inline void build_row_tile_prefix(const Groups& groups, int num_groups, int* tile_end) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int per_lane = (num_groups + 31) / 32;
  const int g_begin = ::min(num_groups, lane * per_lane), g_end = ::min(num_groups, g_begin + per_lane);
  int mine = 0;
  std::int64_t start, count;
  for (int g = g_begin; g < g_end; ++g) {
    groups(g, start, count);
    mine += static_cast<int>((count + TileRows - 1) / TileRows);
  }
  int inclusive = mine;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  int running = inclusive - mine;
  for (int g = g_begin; g < g_end; ++g) {
    groups(g, start, count);
    running += static_cast<int>((count + TileRows - 1) / TileRows);
    tile_end[g] = running;
  }
}

// One output tile: rows [row0, min(row0 + TileRows, row_end)) of the output (row_end: the group's
// end), column tile col_tile, of group `group`.
struct RowTile {
  int group;
  std::int64_t row0, row_end;
  int col_tile;
};

// Unit u (< total_row_tiles · col_tiles) in the band order, from the prefix tile_end.
template <int TileRows, class Groups>
__device__ inline RowTile row_tile_at(const Groups& groups, int num_groups, const int* tile_end, int total_row_tiles,
                                      int col_tiles, int u) {
  const int per_band = kBandRows * col_tiles;
  const int band = u / per_band;
  const int first = band * kBandRows;
  const int band_rows = total_row_tiles - first < kBandRows ? total_row_tiles - first : kBandRows;
  const int in_band = u - band * per_band;
  const int tile = first + in_band % band_rows;
  int lo = 0, hi = num_groups - 1;  // the first group whose tiles end past `tile`
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (tile_end[mid] > tile) hi = mid;
    else lo = mid + 1;
  }
  std::int64_t start, count;
  groups(lo, start, count);
  const int tile_begin = lo > 0 ? tile_end[lo - 1] : 0;
  RowTile r;
  r.group = lo;
  r.row0 = start + static_cast<std::int64_t>(tile - tile_begin) * TileRows;
  r.row_end = start + count;
  r.col_tile = in_band / band_rows;
  return r;
}

}  // namespace kiln::kernels::grouped_gemm
