// Elementwise CPU kernels: out[i] = f(a[i], ...) with the inputs broadcast to out's shape.
// `out` must be freshly allocated (contiguous); inputs may have any strides.
//
// The inner loop has a unit-stride fast path (every operand contiguous along the row), which
// gcc vectorises; other rows take the strided path.
#pragma once

#include <array>

#include "kiln/backend/cpu/strided_loop.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::cpu {

template <class Out, class A, class F>
void map(const Tensor<Out>& out, const Tensor<A>& a, F f) {
  const std::array<Strides, 2> strides{out.strides(), broadcast_strides(a.shape(), a.strides(), out.shape())};
  Out* po = out.data();
  const A* pa = a.data();
  strided_for<2>(out.shape(), strides, [&](const auto& off, std::int64_t n, const auto& st) {
    Out* o = po + off[0];
    const A* x = pa + off[1];
    if (st[0] == 1 && st[1] == 1) {
      for (std::int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
    } else {
      for (std::int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]]);
    }
  });
}

template <class Out, class A, class B, class F>
void map(const Tensor<Out>& out, const Tensor<A>& a, const Tensor<B>& b, F f) {
  const std::array<Strides, 3> strides{out.strides(), broadcast_strides(a.shape(), a.strides(), out.shape()),
                                       broadcast_strides(b.shape(), b.strides(), out.shape())};
  Out* po = out.data();
  const A* pa = a.data();
  const B* pb = b.data();
  strided_for<3>(out.shape(), strides, [&](const auto& off, std::int64_t n, const auto& st) {
    Out* o = po + off[0];
    const A* x = pa + off[1];
    const B* y = pb + off[2];
    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
      for (std::int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
    } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {  // row times a broadcast scalar
      const B y0 = y[0];
      for (std::int64_t i = 0; i < n; ++i) o[i] = f(x[i], y0);
    } else {
      for (std::int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]]);
    }
  });
}

template <class Out, class A, class B, class C, class F>
void map(const Tensor<Out>& out, const Tensor<A>& a, const Tensor<B>& b, const Tensor<C>& c, F f) {
  const std::array<Strides, 4> strides{out.strides(), broadcast_strides(a.shape(), a.strides(), out.shape()),
                                       broadcast_strides(b.shape(), b.strides(), out.shape()),
                                       broadcast_strides(c.shape(), c.strides(), out.shape())};
  Out* po = out.data();
  const A* pa = a.data();
  const B* pb = b.data();
  const C* pc = c.data();
  strided_for<4>(out.shape(), strides, [&](const auto& off, std::int64_t n, const auto& st) {
    Out* o = po + off[0];
    const A* x = pa + off[1];
    const B* y = pb + off[2];
    const C* z = pc + off[3];
    for (std::int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]], z[i * st[3]]);
  });
}

// Writes `value` into every element of `out` (any strides).
template <class T>
void fill(const Tensor<T>& out, T value) {
  const std::array<Strides, 1> strides{out.strides()};
  T* po = out.data();
  strided_for<1>(out.shape(), strides, [&](const auto& off, std::int64_t n, const auto& st) {
    T* o = po + off[0];
    for (std::int64_t i = 0; i < n; ++i) o[i * st[0]] = value;
  });
}

}  // namespace kiln::cpu
