// RMSNorm on CUDA (arguments kernels/rms_norm/args.hpp; front-end ops/rms_norm.hpp; the CPU
// reference is backend/cpu/rms_norm.hpp).
//
// x is a contiguous [rows, D] buffer; D (args.cols) is the normalised dim.
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
// row from L1/L2; backward reads x and g and writes dx (3s). The per-row r (8 bytes) is noise.
//
// dw without atomics: each row owner (block or warp) handles a fixed set of rows (row = owner,
// owner + owners, ...) and its threads always own the same columns, so each thread accumulates its
// columns' g * xhat in registers and writes them once into row `owner` of a [owners, D] partials
// buffer. A second kernel sums the partials of each column in a fixed order. The number of owners
// depends only on the problem size and the device (SM count and occupancy), so dw is bit-identical
// from run to run on a given GPU. Sums are in float (double for double inputs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/rms_norm/args.hpp"

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
  std::int64_t id, count;      // this owner's index among all owners (row of the dw partials)
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

// 1 / sqrt(mean + eps) from the row's sum of squares; IEEE-rounded sqrt and division. (The mean
// multiplies by 1 / D rather than dividing: a division's slow path is a call that costs spills.)
template <class C>
__device__ __forceinline__ C inverse_rms(C squares, C inv_d, C eps) {
  const C ms = squares * inv_d + eps;
  if constexpr (std::is_same_v<C, float>) {
    return 1.0f / sqrtf(ms);
  } else {
    return 1.0 / ::sqrt(ms);
  }
}

// y for one element: as the CPU op, low-precision types round x * r before the weight.
template <class T>
__device__ __forceinline__ T normalized(compute_t<T> x, compute_t<T> r, bool has_w, compute_t<T> w) {
  if constexpr (is_low_precision<T>) {
    const T n = store<T>(x * r);
    return has_w ? store<T>(load(n) * w) : n;
  } else {
    return has_w ? x * r * w : x * r;
  }
}

// V: elements per vector (16 bytes, or 1 when D or the pointers do not allow vectors).
// N: vectors per thread kept in registers; 0 = stream the row twice (very long rows).
template <class T, int V, int N, bool WarpRow>
__global__ void __launch_bounds__(WarpRow ? kWarpRowThreads : kMaxBlockThreads, min_blocks<T, V, N, WarpRow>())
    forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, double* __restrict__ rstd,
                   std::int64_t rows, int D, compute_t<T> inv_d, compute_t<T> eps) {
  using C = compute_t<T>;
  using VecT = Vec<T, V>;
  __shared__ C scratch[64];
  const RowOwner<WarpRow> own;
  const int nvec = D / V;
  int parity = 0;
  for (std::int64_t r = own.first; r < rows; r += own.stride, parity ^= 1) {
    const VecT* xr = reinterpret_cast<const VecT*>(x + r * D);
    VecT* yr = reinterpret_cast<VecT*>(y + r * D);
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
      if (own.lane == 0) rstd[r] = static_cast<double>(rs);
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
      if (own.lane == 0) rstd[r] = static_cast<double>(rs);
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

// dx (may be null) and this owner's row of the dw partials (may be null).
//
// dw sums: a thread adds g * xhat of its own columns into `acc`, a row of D sums in shared memory
// (one per owner; in global memory, the partials row itself, when the row is streamed). Column
// j * V + e (vector j, element e) is kept at e * nvec + j, so the threads of a warp touch
// consecutive words (no bank conflicts, coalesced). Nothing but the owning thread ever touches a
// column, so no synchronisation is needed.
template <class T, int V, int N, bool WarpRow>
__global__ void __launch_bounds__(WarpRow ? kWarpRowThreads : kMaxBlockThreads, min_blocks<T, V, N, WarpRow>())
    backward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,
                    const double* __restrict__ rstd, T* __restrict__ dx, compute_t<T>* __restrict__ partial,
                    std::int64_t rows, int D, compute_t<T> inv_d) {
  using C = compute_t<T>;
  using VecT = Vec<T, V>;
  __shared__ C scratch[64];
  extern __shared__ __align__(16) unsigned char rms_norm_dw_smem[];
  const RowOwner<WarpRow> own;
  const int nvec = D / V;
  const VecT* wv = reinterpret_cast<const VecT*>(w);
  C* const my_partial = partial ? partial + own.id * D : nullptr;
  C* const acc = !partial                  ? nullptr
                 : N == 0                  ? my_partial
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
      VecT o;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const C xhat = load(xv.v[e]) * rs;
        o.v[e] = store<T>(rs * (load(gv.v[e]) * (w ? load(wj.v[e]) : C(1)) - xhat * mean));
      }
      reinterpret_cast<VecT*>(dx + r * D)[j] = o;
    }
    if (acc)
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e * nvec + j] += load(gv.v[e]) * (load(xv.v[e]) * rs);
  };

  int parity = 0;
  for (std::int64_t r = own.first; r < rows; r += own.stride, parity ^= 1) {
    const VecT* xr = reinterpret_cast<const VecT*>(x + r * D);
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
  if (N > 0 && acc)
    for (int j = own.lane; j < nvec; j += own.width)
#pragma unroll
      for (int e = 0; e < V; ++e) my_partial[e * nvec + j] = acc[e * nvec + j];
}

// dw = the sum over owners p of partial[p], in a fixed order: block (32, 8) takes 32 columns; row
// y of the block sums owners y, y + 8, ..., then row 0 adds the 8 sums in order. Position q of a
// partials row holds column (q % nvec) * V + q / nvec (see backward_kernel).
template <class T>
__global__ void __launch_bounds__(256) dw_kernel(const compute_t<T>* __restrict__ partial, T* __restrict__ dw,
                                                 std::int64_t owners, int D, int nvec) {
  using C = compute_t<T>;
  __shared__ C sums[8][33];
  const int q = static_cast<int>(blockIdx.x) * 32 + static_cast<int>(threadIdx.x);
  C s = 0;
  if (q < D)
    for (std::int64_t p = threadIdx.y; p < owners; p += 8) s += partial[p * D + q];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && q < D) {
    C total = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) total += sums[k][threadIdx.x];
    dw[(q % nvec) * (D / nvec) + q / nvec] = store<T>(total);
  }
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
  const bool aligned = aligned16(a.x) && aligned16(a.y) && (!a.w || aligned16(a.w));
  with_norm_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    with_plan<T>(D, aligned, [&](auto plan) {
      using P = decltype(plan);
      const int threads = block_threads<P>(D);
      const std::int64_t per_block = P::warp_row ? threads / 32 : 1;
      const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((rows + per_block - 1) / per_block, 1 << 20));
      forward_kernel<T, P::vector, P::per_thread, P::warp_row><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<T*>(a.y), a.rstd, rows, D,
          static_cast<C>(1.0 / D), static_cast<C>(a.eps));
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

inline void launch_rms_norm_backward(const RmsNormBackwardArgs& a) {
  const std::int64_t rows = a.rows;
  const int D = a.cols;
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  const bool aligned = aligned16(a.x) && aligned16(a.g) && (!a.dx || aligned16(a.dx)) && (!a.w || aligned16(a.w));
  with_norm_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    with_plan<T>(D, aligned, [&](auto plan) {
      using P = decltype(plan);
      auto kernel = backward_kernel<T, P::vector, P::per_thread, P::warp_row>;
      const int threads = block_threads<P>(D);
      const std::int64_t per_block = P::warp_row ? threads / 32 : 1;
      // Shared memory for the dw sums: one row of D per owner in the block (streamed rows sum into
      // the partials in global memory instead). Past 48 KiB with the static scratch (D = 12288
      // float is exactly 48 KiB dynamic) the launch needs the opt-in.
      const std::size_t smem = a.dw && P::per_thread > 0 ? static_cast<std::size_t>(per_block * D) * sizeof(C) : 0;
      opt_in_shared_memory(kernel, smem, device);
      // As many owners as fit on the device at once (each then loops over its rows), but at least
      // a few rows each so the partials stay small next to x.
      const std::int64_t resident =
          static_cast<std::int64_t>(resident_blocks(kernel, threads, smem)) * device_info(device).sms;
      const std::int64_t wanted = (rows + 4 * per_block - 1) / (4 * per_block);
      const std::int64_t blocks = std::max<std::int64_t>(1, std::min(resident, wanted));
      const std::int64_t owners = blocks * per_block;
      Tensor<C> partial;
      if (a.dw) partial = Tensor<C>({owners, D}, Device::cuda(device));
      if (rows > 0) {
        kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
            static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.g), a.rstd,
            static_cast<T*>(a.dx), a.dw ? partial.data() : nullptr, rows, D, static_cast<C>(1.0 / D));
        KILN_CUDA_CHECK_LAUNCH();
      } else if (a.dw) {
        KILN_CUDA_CHECK(cudaMemsetAsync(partial.data(), 0, sizeof(C) * static_cast<std::size_t>(owners * D), stream));
      }
      if (a.dw) {
        dw_kernel<T><<<static_cast<unsigned>((D + 31) / 32), dim3(32, 8), 0, stream>>>(
            partial.data(), static_cast<T*>(a.dw), owners, D, D / P::vector);
        KILN_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

inline const bool rms_norm_registered =
    register_device_kernel(&launch_rms_norm_forward) && register_device_kernel(&launch_rms_norm_backward);

}  // namespace kiln::kernels::rms_norm
