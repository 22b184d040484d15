// RMSNorm on CUDA (arguments kernels/rms_norm/args.hpp; front-end ops/rms_norm.hpp; the CPU
// reference is backend/cpu/rms_norm.hpp).
//
// x is [rows, D] with D (args.cols) the normalised dim, contiguous or rows a fixed stride apart,
// y and (backward) dx likewise: slices of wider rows are normalised in place of a copy, and their
// gradient written where they lay (g and the folded-in gradient are contiguous).
//
// Forward, per row: r = 1 / sqrt(mean(x^2) + eps), y = x * r * w. r is saved (as double, like the
// CPU op) for the backward pass. bf16/fp16 follow Hugging Face's rounding: x * r is rounded to the
// storage type, then multiplied by w and rounded again.
//
// Backward, per row, with xhat = x * r and gw = g * w:
//   dx = r * (gw - xhat * mean(gw * xhat)),   dw = sum over rows of g * xhat.
//
// Work split. A row is owned by one warp when it is short (at most 128 16-byte vectors: 1024 bf16
// or 512 floats), else by one thread block. The owner reads its row once with 16-byte vector loads
// (when D and the pointers allow it) and keeps the vectors in registers (N per thread) while the
// row's sum is reduced (warp shuffles, then across warps through shared memory), so the output pass
// needs no second read of x. Rows longer than a 512-thread block holds that way (16384 elements,
// 8192 for double: N = 4 vectors of bf16/fp16, 8 of float/double) are streamed twice instead (the
// second read mostly hits L2). D not a multiple of 16 bytes, or misaligned data, take the same
// paths with one element per "vector".
//
// Memory traffic per element (s = sizeof(T)): forward reads x (s) and writes y (s), plus w once per
// row from L1/L2; backward reads x and g and writes dx (3s; 4s when it folds in a gradient x
// received before, dx_add: one read where a separate add would cost three passes), plus the dw
// partials below. The per-row r (8 bytes) is noise.
//
// dw is fused into the backward kernel: its terms g * xhat come from the x and g already in
// registers, so dw costs no second pass over x and g, and it is summed without atomics. Each block
// handles a fixed set of rows (a warp-per-row block's warp w: rows 8 * block + w + 8 * blocks * k;
// a block-per-row block: rows block + blocks * k), and a thread always owns the same columns, so it
// adds its columns' g * xhat over its rows into a row of D sums (float; double for double) that no
// other thread touches: in shared memory, one row per row owner (warp or block), or for streamed
// rows the block's row of the partials in global memory. At the end a warp-per-row block adds its
// 8 warps' rows in warp order, and every block has written its row of a [blocks, D] partials
// buffer. dw_sum_kernel adds each column's partials over the blocks in a fixed order.
//
// The grid is a fixed function of the problem (rows, D, dtype, and whether the pointers allow
// 16-byte vectors), not of the device's SM count or occupancy, nor of timing: at least
// kRowsPerOwner rows per warp (warp-per-row) or block, at most kMaxBackwardBlocks blocks. So every
// addition happens in the same order on every run: dw has the same bits run to run, on any GPU
// running this code. The partials cost blocks * D * 4 bytes (8 for double) written, then read
// once by dw_sum_kernel (mostly from L2). With at least 32 rows a block (warp-per-row kernels, or
// block-per-row past 16384 rows) that is at most 2 * 4 / (32 * 3 * 2) = 4% of the bf16 traffic
// above (2% for float); block-per-row kernels on few rows (4 a block) pay up to a third (bf16).
// Example, [16384, 768] bf16: 512 blocks, 1.5 MB of partials each way next to 75.5 MB of x, g, dx.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/rms_norm/args.hpp"
#include "kiln/kernels/rms_norm/row_math.cuh"

namespace kiln::kernels::rms_norm {

constexpr int kWarpRowThreads = 256;   // block size of the warp-per-row kernels (8 rows at a time)
constexpr int kMaxBlockThreads = 512;  // block-per-row kernels
constexpr int kMaxWarpVectors = 128;   // rows of at most this many vectors go to one warp

// Blocks per SM the register allocation must allow (__launch_bounds__): 64 registers a thread when
// the row data a thread holds (x and g widened to the compute type) takes at most half of them
// (a quarter for the warp kernels, which need more for their indexing), else 128 (large N).
template <class T, int V, int N, bool WarpRow>
constexpr int min_blocks() {
  constexpr int row_registers = 2 * N * V * static_cast<int>(sizeof(compute_t<T>)) / 4;
  if constexpr (WarpRow) return row_registers <= 16 ? 4 : 2;
  return row_registers <= 32 ? 2 : 1;
}

// Which rows a thread works on, and which vectors of a row: WarpRow = one warp per row.
template <bool WarpRow>
struct RowOwner {
  std::int64_t first, stride;  // rows first, first + stride, ...
  std::int64_t id, count;      // this owner's index among all owners, and their number
  int lane, width;             // this thread's place in the owner, and the owner's thread count

  __device__ __forceinline__ RowOwner() {
    if constexpr (WarpRow) {
      const int warps = static_cast<int>(blockDim.x >> 5);
      id = static_cast<std::int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5);
      count = static_cast<std::int64_t>(gridDim.x) * warps;
      lane = static_cast<int>(threadIdx.x & 31);
      width = 32;
    } else {
      id = blockIdx.x;
      count = gridDim.x;
      lane = static_cast<int>(threadIdx.x);
      width = static_cast<int>(blockDim.x);
    }
    first = id;
    stride = count;
  }
};

template <bool WarpRow, class C>
__device__ __forceinline__ C row_sum(C v, C* scratch, int parity) {
  if constexpr (WarpRow) {
    return warp_sum(v);
  } else {
    return block_sum(v, scratch, parity);
  }
}

// V: elements per vector (16 bytes, or 1 when D or the pointers do not allow vectors).
// N: vectors per thread kept in registers; 0 = stream the row twice (very long rows).
template <class T, int V, int N, bool WarpRow>
__global__ void __launch_bounds__(WarpRow ? kWarpRowThreads : kMaxBlockThreads, min_blocks<T, V, N, WarpRow>())
    forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, double* __restrict__ rstd,
                   std::int64_t rows, int D, std::int64_t x_stride, std::int64_t y_stride, compute_t<T> inv_d,
                   compute_t<T> eps) {
  using C = compute_t<T>;
  using VecT = Vec<T, V>;
  __shared__ C scratch[64];
  const RowOwner<WarpRow> own;
  const int nvec = D / V;
  int parity = 0;
  for (std::int64_t r = own.first; r < rows; r += own.stride, parity ^= 1) {
    const VecT* xr = reinterpret_cast<const VecT*>(x + r * x_stride);
    VecT* yr = reinterpret_cast<VecT*>(y + r * y_stride);
    const VecT* wv = reinterpret_cast<const VecT*>(w);
    C squares = 0;
    if constexpr (N > 0) {
      VecT xv[N];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int j = own.lane + k * own.width;
        if (j < nvec) {
          xv[k] = xr[j];
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const C a = load(xv[k].v[e]);
            squares += a * a;
          }
        }
      }
      const C rs = inverse_rms(row_sum<WarpRow>(squares, scratch, parity), inv_d, eps);
      if (own.lane == 0 && rstd) rstd[r] = static_cast<double>(rs);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int j = own.lane + k * own.width;
        if (j < nvec) {
          VecT o;
          VecT wj;
          if (w) wj = wv[j];
#pragma unroll
          for (int e = 0; e < V; ++e) o.v[e] = normalized<T>(load(xv[k].v[e]), rs, w != nullptr, w ? load(wj.v[e]) : C(1));
          yr[j] = o;
        }
      }
    } else {
      for (int j = own.lane; j < nvec; j += own.width) {
        const VecT xv = xr[j];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const C a = load(xv.v[e]);
          squares += a * a;
        }
      }
      const C rs = inverse_rms(row_sum<WarpRow>(squares, scratch, parity), inv_d, eps);
      if (own.lane == 0 && rstd) rstd[r] = static_cast<double>(rs);
      for (int j = own.lane; j < nvec; j += own.width) {
        const VecT xv = xr[j];
        VecT o;
        VecT wj;
        if (w) wj = wv[j];
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = normalized<T>(load(xv.v[e]), rs, w != nullptr, w ? load(wj.v[e]) : C(1));
        yr[j] = o;
      }
    }
  }
}

// dx (may be null) and this block's row of the dw partials (may be null).
//
// dw sums: a thread adds g * xhat of its own columns into `acc`, a row of D sums in shared memory
// (one per row owner: a warp's own row in the warp kernels, one for the whole block otherwise); when
// the row is streamed, the block's partials row in global memory is the accumulator. Column
// j * V + e (vector j, element e) is kept at e * nvec + j, so the threads of a warp touch
// consecutive words (no bank conflicts, coalesced). Nothing but the owning thread touches a column
// while rows are processed, so the only synchronisation is the one before the warp kernels add
// their warps' rows, in warp order, into the block's partials row.
template <class T, int V, int N, bool WarpRow, bool Fold>
__global__ void __launch_bounds__(WarpRow ? kWarpRowThreads : kMaxBlockThreads, min_blocks<T, V, N, WarpRow>())
    backward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,
                    const double* __restrict__ rstd, T* __restrict__ dx, const T* __restrict__ dx_add,
                    compute_t<T>* __restrict__ partial, std::int64_t rows, int D, std::int64_t x_stride,
                    std::int64_t dx_stride, compute_t<T> inv_d) {
  static_assert(N > 0 || !WarpRow, "a warp-per-row kernel keeps its row in registers");
  using C = compute_t<T>;
  using VecT = Vec<T, V>;
  __shared__ C scratch[64];
  extern __shared__ __align__(16) unsigned char rms_norm_dw_smem[];
  const RowOwner<WarpRow> own;
  const int nvec = D / V;
  const VecT* wv = reinterpret_cast<const VecT*>(w);
  C* const block_partial = partial ? partial + static_cast<std::int64_t>(blockIdx.x) * D : nullptr;
  C* const acc = !partial                  ? nullptr
                 : N == 0                  ? block_partial
                 : WarpRow                 ? reinterpret_cast<C*>(rms_norm_dw_smem) + (threadIdx.x >> 5) * D
                                           : reinterpret_cast<C*>(rms_norm_dw_smem);
  if (acc)
    for (int j = own.lane; j < nvec; j += own.width)
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e * nvec + j] = 0;

  // One vector of the row: the dot-product term, then dx and the dw terms once `mean` is known.
  auto weights = [&](int j) {
    VecT wj;
    if (w) wj = wv[j];
    return wj;
  };
  auto dot_terms = [&](const VecT& xv, const VecT& gv, int j, C rs) {
    const VecT wj = weights(j);
    C s = 0;
#pragma unroll
    for (int e = 0; e < V; ++e) s += load(gv.v[e]) * (w ? load(wj.v[e]) : C(1)) * (load(xv.v[e]) * rs);
    return s;
  };
  auto finish = [&](const VecT& xv, const VecT& gv, int j, C rs, C mean, std::int64_t r) {
    if (dx) {
      const VecT wj = weights(j);
      // Fold: the gradient received before, added (rounded once with this one). Loaded here, not
      // hoisted with the row's other vectors (the compiler barrier): N more vectors live at once
      // spilled the warp-row kernels that keep the row in registers. A separate instance, so that
      // the kernels without it keep their registers.
      VecT add;
      if constexpr (Fold) {
        asm volatile("" ::: "memory");
        add = reinterpret_cast<const VecT*>(dx_add + r * D)[j];
      }
      VecT o;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const C xhat = load(xv.v[e]) * rs;
        const C d = rs * (load(gv.v[e]) * (w ? load(wj.v[e]) : C(1)) - xhat * mean);
        if constexpr (Fold) o.v[e] = store<T>(d + load(add.v[e]));
        else o.v[e] = store<T>(d);
      }
      reinterpret_cast<VecT*>(dx + r * dx_stride)[j] = o;
    }
    if (acc)
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e * nvec + j] += load(gv.v[e]) * (load(xv.v[e]) * rs);
  };

  int parity = 0;
  for (std::int64_t r = own.first; r < rows; r += own.stride, parity ^= 1) {
    const VecT* xr = reinterpret_cast<const VecT*>(x + r * x_stride);
    const VecT* gr = reinterpret_cast<const VecT*>(g + r * D);
    const C rs = static_cast<C>(rstd[r]);
    C dot = 0;  // sum of gw * xhat
    if constexpr (N > 0) {
      VecT xv[N], gv[N];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int j = own.lane + k * own.width;
        if (j < nvec) {
          xv[k] = xr[j];
          gv[k] = gr[j];
        }
      }
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int j = own.lane + k * own.width;
        if (j < nvec) dot += dot_terms(xv[k], gv[k], j, rs);
      }
      const C mean = row_sum<WarpRow>(dot, scratch, parity) * inv_d;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int j = own.lane + k * own.width;
        if (j < nvec) finish(xv[k], gv[k], j, rs, mean, r);
      }
    } else {
      for (int j = own.lane; j < nvec; j += own.width) dot += dot_terms(xr[j], gr[j], j, rs);
      const C mean = row_sum<WarpRow>(dot, scratch, parity) * inv_d;
      for (int j = own.lane; j < nvec; j += own.width) finish(xr[j], gr[j], j, rs, mean, r);
    }
  }

  if (!partial) return;  // the same for every thread of the block: no barrier is skipped by some only
  if constexpr (WarpRow) {
    // The block's partials row: position q summed over the warps' rows in warp order. Every warp
    // must have finished its rows first; consecutive threads then read consecutive words.
    constexpr int warps = kWarpRowThreads / 32;
    __syncthreads();
    const C* const warp_sums = reinterpret_cast<const C*>(rms_norm_dw_smem);
    for (int q = static_cast<int>(threadIdx.x); q < D; q += kWarpRowThreads) {
      C s = warp_sums[q];
#pragma unroll
      for (int k = 1; k < warps; ++k) s += warp_sums[k * D + q];
      block_partial[q] = s;
    }
  } else if constexpr (N > 0) {
    for (int j = own.lane; j < nvec; j += own.width)
#pragma unroll
      for (int e = 0; e < V; ++e) block_partial[e * nvec + j] = acc[e * nvec + j];
  }
}

// dw from the [blocks, D] partials. A block of kSumColumns x kSumSlices threads takes 32 positions
// of the partials rows: thread (c, y) adds rows y, y + kSumSlices, ... of position c in that order
// (a warp reads 32 consecutive words of one row: one 128-byte line for float), and warp y then adds
// the kSumSlices slice sums of position y with a fixed butterfly of shuffles (warp_sum). Every
// addition happens in the same order on every run: no atomics, no dependence on timing. Position q
// of a partials row holds column (q % nvec) * V + q / nvec (see backward_kernel); V = D / nvec.
constexpr int kSumColumns = 32;  // one warp's worth of consecutive positions
constexpr int kSumSlices = 32;   // the rows of partials are split over this many threads per column
constexpr int kSumLoads = 8;     // loads a thread has in flight

template <class T>
__global__ void __launch_bounds__(kSumColumns * kSumSlices)
    dw_sum_kernel(const compute_t<T>* __restrict__ partial, T* __restrict__ dw, int partial_rows, int D, int nvec) {
  using C = compute_t<T>;
  static_assert(kSumSlices == 32, "one warp adds the slice sums of a column");
  __shared__ C slice_sums[kSumSlices][kSumColumns + 1];  // + 1: the transposed read below is conflict-free
  const int first = static_cast<int>(blockIdx.x) * kSumColumns;
  const int q = first + static_cast<int>(threadIdx.x);
  C s = 0;
  if (q < D) {
    // Rows p = y, y + kSumSlices, ... added in that order; kSumLoads loads issued before their adds
    // so that a thread waits for one memory latency per kSumLoads rows, not per row (512 partials
    // rows: 16 a thread, two waits).
    auto at = [&](int p) { return partial[static_cast<std::int64_t>(p) * D + q]; };
    int p = static_cast<int>(threadIdx.y);
    for (; p + (kSumLoads - 1) * kSumSlices < partial_rows; p += kSumLoads * kSumSlices) {
      C v[kSumLoads];
#pragma unroll
      for (int i = 0; i < kSumLoads; ++i) v[i] = at(p + i * kSumSlices);
#pragma unroll
      for (int i = 0; i < kSumLoads; ++i) s += v[i];
    }
    for (; p < partial_rows; p += kSumSlices) s += at(p);
  }
  slice_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  const int column = first + static_cast<int>(threadIdx.y);
  const C total = warp_sum(slice_sums[threadIdx.x][threadIdx.y]);
  if (threadIdx.x == 0 && column < D) dw[(column % nvec) * (D / nvec) + column / nvec] = store<T>(total);
}

// ---- host side ----

template <int V, int N, bool WarpRow>
struct Plan {
  static constexpr int vector = V, per_thread = N;
  static constexpr bool warp_row = WarpRow;
};

// Calls f(Plan<...>{}) with the work split for rows of D elements (see the header comment): the
// fewest vectors per thread that let at most 512 threads hold the row. The backward keeps N
// vectors of x and of g a thread, so N stops at 4 for 2-byte types (their widened values need
// twice the registers) and at 8 otherwise.
template <class T, class F>
void with_plan(int D, bool aligned, F&& f) {
  constexpr int VV = 16 / static_cast<int>(sizeof(T));
  constexpr int max_n = VV == 8 ? 4 : 8;
  if (aligned && D % VV == 0) {
    const int nvec = D / VV;
    if (nvec <= 32) return f(Plan<VV, 1, true>{});
    if (nvec <= 64) return f(Plan<VV, 2, true>{});
    if (nvec <= kMaxWarpVectors) return f(Plan<VV, 4, true>{});
    if (nvec <= 2 * kMaxBlockThreads) return f(Plan<VV, 2, false>{});
    if (nvec <= 4 * kMaxBlockThreads) return f(Plan<VV, 4, false>{});
    if constexpr (max_n >= 8)
      if (nvec <= 8 * kMaxBlockThreads) return f(Plan<VV, 8, false>{});
    return f(Plan<VV, 0, false>{});
  }
  if (D <= kMaxWarpVectors) return f(Plan<1, 4, true>{});
  return f(Plan<1, 0, false>{});
}

template <class P>
int block_threads(int D) {
  if constexpr (P::warp_row) {
    return kWarpRowThreads;
  } else {
    const int nvec = D / P::vector;
    const int per_thread = P::per_thread > 0 ? P::per_thread : 1;
    const int needed = (nvec + per_thread - 1) / per_thread;
    return std::min(kMaxBlockThreads, std::max(32, (needed + 31) / 32 * 32));
  }
}

template <class F>
void with_norm_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    case DType::f16: return f(fp16{});
    default: fail("rms_norm", "has no CUDA kernel for dtype ", dtype);
  }
}

inline void launch_rms_norm_forward(const RmsNormForwardArgs& a) {
  const std::int64_t rows = a.rows;
  const int D = a.cols;
  if (rows == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  const std::int64_t x_stride = a.x_row_stride >= 0 ? a.x_row_stride : D;
  const std::int64_t y_stride = a.y_row_stride >= 0 ? a.y_row_stride : D;
  with_norm_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const auto size = static_cast<std::int64_t>(sizeof(T));
    const bool aligned = aligned16(a.x) && aligned16(a.y) && (!a.w || aligned16(a.w)) && (x_stride * size) % 16 == 0 &&
                         (y_stride * size) % 16 == 0;
    with_plan<T>(D, aligned, [&](auto plan) {
      using P = decltype(plan);
      const int threads = block_threads<P>(D);
      const std::int64_t per_block = P::warp_row ? threads / 32 : 1;
      const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((rows + per_block - 1) / per_block, 1 << 20));
      forward_kernel<T, P::vector, P::per_thread, P::warp_row><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<T*>(a.y), a.rstd, rows, D, x_stride,
          y_stride, static_cast<C>(1.0 / D), static_cast<C>(a.eps));
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

// The backward grid: a fixed function of the problem (never of the device or of timing), so the
// rows each block sums into its dw partials row, and so dw's bits, are the same on every run and
// every GPU. At least kRowsPerOwner rows per row owner keeps the partials (D sums a block) small
// next to the rows a block reads; kMaxBackwardBlocks is about 4 blocks on each of an H100's or
// H200's 132 SMs, enough warps to keep the loads in flight, each block then looping over its rows
// (the bf16 warp kernel with N = 4 takes 119 registers a thread, 2 blocks an SM: its 512 blocks run
// as two nearly full waves). A tuning choice, not yet measured against others.
constexpr std::int64_t kRowsPerOwner = 4;
constexpr std::int64_t kMaxBackwardBlocks = 512;

template <class P>
std::int64_t backward_blocks(std::int64_t rows) {
  const std::int64_t owners_per_block = P::warp_row ? kWarpRowThreads / 32 : 1;
  const std::int64_t rows_per_block = kRowsPerOwner * owners_per_block;
  return std::clamp<std::int64_t>((rows + rows_per_block - 1) / rows_per_block, 1, kMaxBackwardBlocks);
}

inline void launch_rms_norm_backward(const RmsNormBackwardArgs& a) {
  const std::int64_t rows = a.rows;
  const int D = a.cols;
  check(D > 0 && rows >= 0, "rms_norm backward", "needs rows >= 0 and cols > 0, got [", rows, ", ", D, "]");
  if (!a.dx && !a.dw) return;  // nothing asked for
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  const std::int64_t x_stride = a.x_row_stride >= 0 ? a.x_row_stride : D;
  const std::int64_t dx_stride = a.dx_row_stride >= 0 ? a.dx_row_stride : D;
  with_norm_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const auto size = static_cast<std::int64_t>(sizeof(T));
    const bool aligned = aligned16(a.x) && aligned16(a.g) && (!a.dx || aligned16(a.dx)) && (!a.w || aligned16(a.w)) &&
                         (!a.dx_add || aligned16(a.dx_add)) && (x_stride * size) % 16 == 0 &&
                         (dx_stride * size) % 16 == 0;
    if (rows == 0) {
      // No rows: no dx, and dw is an empty sum (all-zero bits are +0 in every floating type).
      if (a.dw) KILN_CUDA_CHECK(cudaMemsetAsync(a.dw, 0, sizeof(T) * static_cast<std::size_t>(D), stream));
      return;
    }
    with_plan<T>(D, aligned, [&](auto plan) {
      using P = decltype(plan);
      const bool fold = a.dx && a.dx_add;
      auto kernel = fold ? backward_kernel<T, P::vector, P::per_thread, P::warp_row, true>
                         : backward_kernel<T, P::vector, P::per_thread, P::warp_row, false>;
      const int threads = block_threads<P>(D);
      const std::int64_t owners_per_block = P::warp_row ? threads / 32 : 1;
      // Shared memory for the dw sums: one row of D per owner in the block (streamed rows sum into
      // the partials in global memory instead). Past 48 KiB with the static scratch (D = 12288
      // float is exactly 48 KiB dynamic) the launch needs the opt-in.
      const std::size_t smem =
          a.dw && P::per_thread > 0 ? static_cast<std::size_t>(owners_per_block * D) * sizeof(C) : 0;
      opt_in_shared_memory(kernel, smem, device);
      const std::int64_t blocks = backward_blocks<P>(rows);
      Tensor<C> partial;  // [blocks, D], from the caching allocator: no cudaMalloc in steady state
      if (a.dw) partial = Tensor<C>({blocks, D}, Device::cuda(device));
      kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.g), a.rstd,
          static_cast<T*>(a.dx), a.dx ? static_cast<const T*>(a.dx_add) : nullptr, a.dw ? partial.data() : nullptr,
          rows, D, x_stride, dx_stride, static_cast<C>(1.0 / D));
      KILN_CUDA_CHECK_LAUNCH();
      if (a.dw) {
        dw_sum_kernel<T><<<static_cast<unsigned>((D + kSumColumns - 1) / kSumColumns), dim3(kSumColumns, kSumSlices),
                           0, stream>>>(partial.data(), static_cast<T*>(a.dw), static_cast<int>(blocks), D,
                                        D / P::vector);
        KILN_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

inline const bool rms_norm_registered =
    register_device_kernel(&launch_rms_norm_forward) && register_device_kernel(&launch_rms_norm_backward);

}  // namespace kiln::kernels::rms_norm
