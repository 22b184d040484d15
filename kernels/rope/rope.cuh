// Rotary position embedding on CUDA (ops/rope.hpp; the CPU reference is backend/cpu/rope.hpp).
//
// "rope_tables": cos/sin of every (position, frequency) angle. One thread per table entry computes
//   angle = position * theta^(-2i/D)
// in double and rounds cos/sin once to the compute type, exactly as the CPU tables are built, so
// both backends rotate by the same float values. The tables are tiny next to x ([S, D/2] against
// [B, S, H, D]), so their cost is a few microseconds.
//
// "rope": rotates x [outer, S, H, D] (contiguous) by the tables [S, D/2] or [outer, S, D/2]:
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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/device_types.cuh"
#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"

namespace kiln::kernels::rope {

template <class C>
__global__ void __launch_bounds__(256) tables_kernel(C* __restrict__ cos_out, C* __restrict__ sin_out,
                                                     const std::int64_t* __restrict__ positions, std::int64_t n,
                                                     int half, const double* __restrict__ inv_freqs) {
  const std::int64_t total = n * half;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const std::int64_t p = positions[k / half];
    const int i = static_cast<int>(k % half);
    const double angle = static_cast<double>(p) * inv_freqs[i];
    double s, c;
    ::sincos(angle, &s, &c);
    if (p < 0) s = c = __longlong_as_double(0x7ff8000000000000LL);  // negative positions: NaN (CPU: an error)
    cos_out[k] = static_cast<C>(c);
    sin_out[k] = static_cast<C>(s);
  }
}

// Products rounded on their own (never contracted into an FMA), as on the CPU.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

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
                                                     std::int64_t S, int H, int D, bool per_batch, bool inverse) {
  using C = compute_t<T>;
  constexpr int P = pairs_per_unit<T>(Vectorized, HalfSplit);
  const int half = D / 2;
  const int units_per_head = half / P;
  const int units_per_row = H * units_per_head;
  const std::int64_t row_stride = static_cast<std::int64_t>(gridDim.x) * blockDim.y;
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const std::int64_t t = (per_batch ? row : row % S) * half;
    const T* xr = x + row * H * D;
    T* yr = y + row * H * D;
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
      auto rotate = [&](C x0, C x1, int p, T& y0, T& y1) {
        y0 = store<T>(mul_rn(x0, c[p]) - mul_rn(x1, s[p]));
        y1 = store<T>(mul_rn(x0, s[p]) + mul_rn(x1, c[p]));
      };
      if constexpr (!Vectorized) {
        const int a = h * D + (HalfSplit ? i0 : 2 * i0);
        const int b = HalfSplit ? a + half : a + 1;
        rotate(load(xr[a]), load(xr[b]), 0, yr[a], yr[b]);
      } else if constexpr (HalfSplit) {
        const int a = h * D + i0;
        const Vec<T, P> va = *reinterpret_cast<const Vec<T, P>*>(xr + a);
        const Vec<T, P> vb = *reinterpret_cast<const Vec<T, P>*>(xr + a + half);
        Vec<T, P> oa, ob;
#pragma unroll
        for (int p = 0; p < P; ++p) rotate(load(va.v[p]), load(vb.v[p]), p, oa.v[p], ob.v[p]);
        *reinterpret_cast<Vec<T, P>*>(yr + a) = oa;
        *reinterpret_cast<Vec<T, P>*>(yr + a + half) = ob;
      } else {
        const int a = h * D + 2 * i0;
        const Vec<T, 2 * P> v = *reinterpret_cast<const Vec<T, 2 * P>*>(xr + a);
        Vec<T, 2 * P> o;
#pragma unroll
        for (int p = 0; p < P; ++p) rotate(load(v.v[2 * p]), load(v.v[2 * p + 1]), p, o.v[2 * p], o.v[2 * p + 1]);
        *reinterpret_cast<Vec<T, 2 * P>*>(yr + a) = o;
      }
    }
  }
}

// ---- host side ----

template <class F>
void with_rope_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    case DType::f16: return f(fp16{});
    default: fail("rope", "has no CUDA kernel for dtype ", dtype);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// tensors {cos, sin (f32 or f64, [n, half]), positions (i64 [n], contiguous)}; reals {theta};
// ints {half, head_dim}.
inline void tables_entry(const KernelCall& call) {
  const TensorArg &cos = call.tensors[0], &sin = call.tensors[1], &pos = call.tensors[2];
  const std::int64_t n = pos.numel();
  const int half = static_cast<int>(call.ints[0]);
  if (n == 0 || half == 0) return;
  cuda::DeviceGuard guard(cos.device);
  cudaStream_t stream = cuda::current_stream(cos.device);
  // The inverse frequencies come from the host's pow, the same values the CPU tables use: the
  // device's pow may differ in the last bit, and an angle of pos * inv_freq (pos up to 1e5+)
  // turns that bit into a visible difference in sin/cos.
  const int head_dim = static_cast<int>(call.ints[1]);
  std::vector<double> inv_freqs(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i)
    inv_freqs[static_cast<std::size_t>(i)] =
        std::pow(call.reals[0], -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  const Tensor<double> inv = Tensor<double>::from_vector(inv_freqs, {half}, Device::cuda(cos.device));
  auto launch = [&](auto tag) {
    using C = decltype(tag);
    tables_kernel<C><<<blocks_for(n * half, 256), 256, 0, stream>>>(
        static_cast<C*>(cos.data), static_cast<C*>(sin.data), static_cast<const std::int64_t*>(pos.data), n, half,
        inv.data());
    KILN_CUDA_CHECK_LAUNCH();
  };
  if (cos.dtype == DType::f64) {
    launch(double{});
  } else {
    launch(float{});
  }
}

// tensors {y, x, cos, sin} (contiguous); ints {outer, S, H, D, per_batch, half_split, inverse}.
inline void rotate_entry(const KernelCall& call) {
  const TensorArg &y = call.tensors[0], &x = call.tensors[1], &cos = call.tensors[2], &sin = call.tensors[3];
  const std::int64_t outer = call.ints[0], S = call.ints[1];
  const int H = static_cast<int>(call.ints[2]), D = static_cast<int>(call.ints[3]);
  const bool per_batch = call.ints[4] != 0, half_split = call.ints[5] != 0, inverse = call.ints[6] != 0;
  const std::int64_t rows = outer * S;
  if (rows == 0 || H == 0) return;
  cuda::DeviceGuard guard(x.device);
  cudaStream_t stream = cuda::current_stream(x.device);
  with_rope_type(x.dtype, [&](auto tag) {
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
          static_cast<const T*>(x.data), static_cast<T*>(y.data), static_cast<const C*>(cos.data),
          static_cast<const C*>(sin.data), rows, S, H, D, per_batch, inverse);
      KILN_CUDA_CHECK_LAUNCH();
    };
    // Vectors need every row, head and table row to start on a 16-byte boundary: the base pointers
    // aligned and D/2 a multiple of P (then D * sizeof(T) and (D/2) * sizeof(C) are multiples of 16).
    const bool aligned = aligned16(x.data) && aligned16(y.data) && aligned16(cos.data) && aligned16(sin.data);
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

inline const bool registered =
    register_device_kernel("rope_tables", tables_entry) && register_device_kernel("rope", rotate_entry);

}  // namespace kiln::kernels::rope
