// Rotary position embedding on CUDA (arguments kernels/rope/args.hpp: RopeTablesArgs, RopeArgs;
// front-end ops/rope.hpp; the CPU reference is backend/cpu/rope.hpp).
//
// rope_tables: cos/sin of every (position, frequency) angle. One thread per table entry computes
//   angle = position * theta^(-2i/D)
// in double and rounds cos/sin once to the compute type, exactly as the CPU tables are built, so
// both backends rotate by the same float values. The tables are tiny next to x ([S, D/2] against
// [B, S, H, D]), so their cost is a few microseconds.
//
// rope: rotates x [outer, S, H, D] by the tables [S, D/2] or [outer, S, D/2] into y; the rows and
// heads of x and y may lie apart (slices of wider rows: no copy before or after this):
//   y[a] = x[a] cos - x[b] sin,   y[b] = x[a] sin + x[b] cos,
// with (a, b) = (i, i + D/2) (half_split) or (2i, 2i + 1) (interleaved), and sin negated for the
// backward (the inverse rotation is the transpose). Products are rounded separately (no fused
// multiply-add), as the CPU computes them, so results match it bit for bit given the same tables.
//
// Memory traffic: x read once and y written once (2 sizeof(T) bytes per element); a row's D/2 cos
// and sin values are read once per head from L1 (H heads share them). Each thread handles a "unit"
// of P pairs: P = 16 / sizeof(T) for half_split (one 16-byte load from each half of the head) and
// 8 / sizeof(T) for interleaved (one 16-byte load of adjacent pairs). A block of 256 threads is
// laid out as (tx, ty): ty rows at a time, tx threads walking the units of a row, so short rows
// (few heads) still fill the block. Unaligned or odd-sized data take a scalar path (P = 1).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/rope/args.hpp"
#include "kiln/kernels/rope/rotate_pair.cuh"
#include "kiln/math/rope.hpp"

namespace kiln::kernels::rope {

// The inverse frequencies travel by value in the kernel's parameters (2 KB, under the 4 KB limit):
// no upload, so building tables is a single kernel that a CUDA graph can capture (the generation
// engine's decode step builds them every step). Wider heads fall back to an uploaded array.
constexpr int kMaxParamFrequencies = 256;  // head_dim <= 512
struct InvFreqs {
  double v[kMaxParamFrequencies];
};

template <class C>
__global__ void __launch_bounds__(256) tables_kernel(C* __restrict__ cos_out, C* __restrict__ sin_out,
                                                     const std::int64_t* __restrict__ positions, std::int64_t n,
                                                     int half, const double* __restrict__ inv_freqs,
                                                     const InvFreqs by_value) {
  const std::int64_t total = n * half;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const std::int64_t p = positions[k / half];
    const int i = static_cast<int>(k % half);
    const double angle = static_cast<double>(p) * (inv_freqs ? inv_freqs[i] : by_value.v[i]);
    double s, c;
    ::sincos(angle, &s, &c);
    if (p < 0) s = c = __longlong_as_double(0x7ff8000000000000LL);  // negative positions: NaN (CPU: an error)
    cos_out[k] = static_cast<C>(c);
    sin_out[k] = static_cast<C>(s);
  }
}


template <class T>
constexpr int pairs_per_unit(bool vectorized, bool half_split) {
  if (!vectorized) return 1;
  return half_split ? 16 / static_cast<int>(sizeof(T)) : 8 / static_cast<int>(sizeof(T));
}

// P consecutive table values (cos or sin) with 16-byte loads where P allows.
template <class C, int P>
__device__ __forceinline__ void load_table(const C* p, C (&out)[P]) {
  constexpr int Q = std::min(P, 16 / static_cast<int>(sizeof(C)));
#pragma unroll
  for (int q = 0; q < P; q += Q) {
    const Vec<C, Q> v = *reinterpret_cast<const Vec<C, Q>*>(p + q);
#pragma unroll
    for (int e = 0; e < Q; ++e) out[q + e] = v.v[e];
  }
}

template <class T, bool Vectorized, bool HalfSplit>
__global__ void __launch_bounds__(256) rotate_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                     const compute_t<T>* __restrict__ cos,
                                                     const compute_t<T>* __restrict__ sin, std::int64_t rows,
                                                     std::int64_t S, int H, int D, std::int64_t x_row_stride,
                                                     std::int64_t x_head_stride, std::int64_t y_row_stride,
                                                     std::int64_t y_head_stride, bool per_batch, bool inverse) {
  using C = compute_t<T>;
  constexpr int P = pairs_per_unit<T>(Vectorized, HalfSplit);
  const int half = D / 2;
  const int units_per_head = half / P;
  const int units_per_row = H * units_per_head;
  const std::int64_t row_stride = static_cast<std::int64_t>(gridDim.x) * blockDim.y;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const std::int64_t t = (per_batch ? row : row % S) * half;
    const T* xr = x + row * x_row_stride;
    T* yr = y + row * y_row_stride;
    for (int u = static_cast<int>(threadIdx.x); u < units_per_row; u += static_cast<int>(blockDim.x)) {
      const int h = u / units_per_head;
      const int i0 = (u - h * units_per_head) * P;  // first pair of the unit
      C c[P], s[P];
      if constexpr (Vectorized) {
        load_table<C, P>(cos + t + i0, c);
        load_table<C, P>(sin + t + i0, s);
      } else {
        c[0] = cos[t + i0];
        s[0] = sin[t + i0];
      }
      if (inverse)
#pragma unroll
        for (int p = 0; p < P; ++p) s[p] = -s[p];
      auto rotate = [&](C x0, C x1, int p, T& y0, T& y1) { rotate_pair<T>(x0, x1, c[p], s[p], y0, y1); };
      const T* xh = xr + h * x_head_stride;  // head h of x and of y
      T* yh = yr + h * y_head_stride;
      if constexpr (!Vectorized) {
        const int a = HalfSplit ? i0 : 2 * i0;
        const int b = HalfSplit ? a + half : a + 1;
        rotate(load(xh[a]), load(xh[b]), 0, yh[a], yh[b]);
      } else if constexpr (HalfSplit) {
        const Vec<T, P> va = *reinterpret_cast<const Vec<T, P>*>(xh + i0);
        const Vec<T, P> vb = *reinterpret_cast<const Vec<T, P>*>(xh + i0 + half);
        Vec<T, P> oa, ob;
#pragma unroll
        for (int p = 0; p < P; ++p) rotate(load(va.v[p]), load(vb.v[p]), p, oa.v[p], ob.v[p]);
        *reinterpret_cast<Vec<T, P>*>(yh + i0) = oa;
        *reinterpret_cast<Vec<T, P>*>(yh + i0 + half) = ob;
      } else {
        const Vec<T, 2 * P> v = *reinterpret_cast<const Vec<T, 2 * P>*>(xh + 2 * i0);
        Vec<T, 2 * P> o;
#pragma unroll
        for (int p = 0; p < P; ++p) rotate(load(v.v[2 * p]), load(v.v[2 * p + 1]), p, o.v[2 * p], o.v[2 * p + 1]);
        *reinterpret_cast<Vec<T, 2 * P>*>(yh + 2 * i0) = o;
      }
    }
  }
}

// ---- host side ----

inline void launch_rope_tables(const RopeTablesArgs& a) {
  const std::int64_t n = a.n;
  const int half = a.head_dim / 2;
  if (n == 0 || half == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  // The inverse frequencies come from the host's pow, the same values the CPU tables use (see
  // math/rope.hpp). Up to kMaxParamFrequencies of them go by value; more are uploaded (a host
  // copy, which a graph capture refuses).
  InvFreqs by_value{};
  std::vector<double> inv_freqs(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i) inv_freqs[static_cast<std::size_t>(i)] = math::rope_inv_freq(a.theta, i, a.head_dim);
  Tensor<double> uploaded;
  if (half <= kMaxParamFrequencies) {
    std::copy(inv_freqs.begin(), inv_freqs.end(), by_value.v);
  } else {
    uploaded = Tensor<double>::from_vector(inv_freqs, {half}, Device::cuda(a.launch.device));
  }
  auto launch = [&](auto tag) {
    using C = decltype(tag);
    tables_kernel<C><<<blocks_for(n * half, 256), 256, 0, stream>>>(static_cast<C*>(a.cos), static_cast<C*>(a.sin),
                                                                    a.positions, n, half,
                                                                    uploaded.defined() ? uploaded.data() : nullptr,
                                                                    by_value);
    KILN_CUDA_CHECK_LAUNCH();
  };
  if (a.dtype == DType::f64) {
    launch(double{});
  } else {
    launch(float{});
  }
}

inline void launch_rope(const RopeArgs& a) {
  const std::int64_t outer = a.outer, S = a.S;
  const int H = a.H, D = a.D;
  const bool per_batch = a.per_batch_tables, half_split = a.half_split, inverse = a.inverse;
  const std::int64_t rows = outer * S;
  if (rows == 0 || H == 0) return;
  // Negative strides (the arguments' defaults): x contiguous.
  const std::int64_t x_row_stride = a.x_row_stride >= 0 ? a.x_row_stride : static_cast<std::int64_t>(H) * D;
  const std::int64_t x_head_stride = a.x_head_stride >= 0 ? a.x_head_stride : D;
  const std::int64_t y_row_stride = a.y_row_stride >= 0 ? a.y_row_stride : static_cast<std::int64_t>(H) * D;
  const std::int64_t y_head_stride = a.y_head_stride >= 0 ? a.y_head_stride : D;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  with_floating_type("rope", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    auto launch = [&](auto vectorized, auto layout) {
      constexpr bool Vectorized = decltype(vectorized)::value, HalfSplit = decltype(layout)::value;
      constexpr int P = pairs_per_unit<T>(Vectorized, HalfSplit);
      const int units_per_row = H * (D / 2 / P);
      int tx = 32;
      while (tx < units_per_row && tx < 256) tx *= 2;
      const int ty = 256 / tx;
      const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((rows + ty - 1) / ty, 1 << 20));
      rotate_kernel<T, Vectorized, HalfSplit><<<blocks, dim3(tx, ty), 0, stream>>>(
          static_cast<const T*>(a.x), static_cast<T*>(a.y), static_cast<const C*>(a.cos),
          static_cast<const C*>(a.sin), rows, S, H, D, x_row_stride, x_head_stride, y_row_stride, y_head_stride,
          per_batch, inverse);
      KILN_CUDA_CHECK_LAUNCH();
    };
    // Vectors need every row, head and table row to start on a 16-byte boundary: the base pointers
    // aligned and D/2 a multiple of P (then D * sizeof(T) and (D/2) * sizeof(C) are multiples of 16),
    // and the row and head strides of x and y multiples of 16 bytes.
    const bool aligned = aligned16(a.x) && aligned16(a.y) && aligned16(a.cos) && aligned16(a.sin) &&
                         (x_row_stride * static_cast<std::int64_t>(sizeof(T))) % 16 == 0 &&
                         (x_head_stride * static_cast<std::int64_t>(sizeof(T))) % 16 == 0 &&
                         (y_row_stride * static_cast<std::int64_t>(sizeof(T))) % 16 == 0 &&
                         (y_head_stride * static_cast<std::int64_t>(sizeof(T))) % 16 == 0;
    using Yes = std::true_type;
    using No = std::false_type;
    if (half_split) {
      if (aligned && (D / 2) % pairs_per_unit<T>(true, true) == 0) return launch(Yes{}, Yes{});
      return launch(No{}, Yes{});
    }
    if (aligned && (D / 2) % pairs_per_unit<T>(true, false) == 0) return launch(Yes{}, No{});
    return launch(No{}, No{});
  });
}

inline const bool registered = register_device_kernel(&launch_rope_tables) && register_device_kernel(&launch_rope);

}  // namespace kiln::kernels::rope
