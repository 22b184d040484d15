// Max and min reductions: max/min along one dim (values and the index of the extremum), amax/amin
// over several dims, argmax/argmin. CPU kernel: cpu::reduce (backend/cpu/reduce.hpp); CUDA: the
// reduction kernel (ReduceArgs, kernels/reduce/reduce.cuh) and, for the backward passes,
// ScatterAlongDimArgs and ExtremumHitArgs (kernels/reduce/max_backward.cuh). The NaN and tie rules
// both sides share are in math/reduce.hpp.
//
// Gradients follow PyTorch: max/min along a dim send the whole gradient to the one index they
// return (the first on ties); amax/amin, and max/min over the whole tensor, split it evenly among
// all elements equal to the extremum. NaN propagates: a NaN in the reduced range is the result,
// and its index (the first NaN's) is the index returned.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/reduce.hpp"
#include "kiln/backend/cpu/strided_loop.hpp"
#include "kiln/kernels/reduce/args.hpp"
#include "kiln/math/reduce.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

// What max(t, dim) and min(t, dim) return: the extreme values and their indices along dim.
// Works with structured bindings: auto [values, indices] = max(x, 1);
template <class T>
struct MaxMinResult {
  Tensor<T> values;
  Tensor<std::int64_t> indices;
};

namespace detail {

// x is better than the current best when best is not NaN and x is NaN or strictly more extreme:
// the first NaN wins for good, and on ties the earlier element stays (math/reduce.hpp).
using math::more_extreme;

// Folds a range to the index of its extremum (index in the reduced range, row-major).
template <class T, bool IsMax>
struct ArgExtremumReducer {
  using C = compute_t<T>;
  struct Acc {
    C value;
    std::int64_t index;  // -1: nothing folded yet
  };
  Acc init() const { return {C(0), -1}; }
  Acc step(Acc acc, const T& x, std::int64_t k) const {
    const C v = static_cast<C>(x);
    return (acc.index < 0 || more_extreme<C, IsMax>(v, acc.value)) ? Acc{v, k} : acc;
  }
  // `a` holds elements before `b`'s, so b replaces it only when strictly more extreme.
  Acc merge(Acc a, Acc b) const {
    return (b.index >= 0 && (a.index < 0 || more_extreme<C, IsMax>(b.value, a.value))) ? b : a;
  }
  std::int64_t finish(Acc acc, std::int64_t) const { return acc.index; }
};

// Folds a range to its extreme value; starting from -inf (+inf for min) makes every element win
// over the start, infinities included.
template <class T, bool IsMax>
struct ExtremumReducer {
  using C = compute_t<T>;
  C init() const { return math::extremum_identity<C, IsMax>(); }
  C step(C acc, const T& x, std::int64_t) const {
    math::extremum_step<C, IsMax>(acc, static_cast<C>(x));
    return acc;
  }
  C merge(C a, C b) const { return math::extremum_combine<C, IsMax>(a, b); }
  T finish(C acc, std::int64_t) const { return convert<T>(acc); }
};

// Shape t would have with dim `d` removed.
inline Shape without_dim(const Shape& shape, int d) {
  Shape out = shape;
  out.erase(out.begin() + d);
  return out;
}

// For every position p over t's dims other than `d`: f(t's element at index idx[p] along d,
// other[p]). idx and other have t's shape without d (any strides); distinct p never meet the same
// element of t, so the loop may run in parallel.
template <class T, class U, class F>
void along_indices(const Tensor<T>& t, int d, const Tensor<std::int64_t>& idx, const Tensor<U>& other, F f) {
  Strides t_strides = t.strides();
  const std::int64_t step = t_strides[static_cast<std::size_t>(d)];
  t_strides.erase(t_strides.begin() + d);
  const std::array<Strides, 3> strides{t_strides, idx.strides(), other.strides()};
  T* pt = t.data();
  const std::int64_t* pi = idx.data();
  U* po = other.data();
  cpu::strided_for<3>(idx.shape(), strides, [&](const auto& off, std::int64_t n, const auto& st) {
    for (std::int64_t i = 0; i < n; ++i)
      f(pt[off[0] + i * st[0] + pi[off[1] + i * st[1]] * step], po[off[2] + i * st[2]]);
  });
}

inline void check_nonempty_reduction(const char* op, const Shape& shape, const std::vector<bool>& mask) {
  for (std::size_t d = 0; d < mask.size(); ++d)
    check(!mask[d] || shape[d] > 0, op, "cannot reduce over dim ", d, " of size 0 (shape ", shape,
          "): the result has no identity");
}

// Index of the extremum along dim `d` (t's shape without d), no graph.
template <bool IsMax, class T>
Tensor<std::int64_t> arg_extremum_along(const char* op, const Tensor<T>& t, int d) {
  std::vector<bool> mask(t.shape().size(), false);
  mask[static_cast<std::size_t>(d)] = true;
  check_nonempty_reduction(op, t.shape(), mask);
  Tensor<std::int64_t> idx(without_dim(t.shape(), d), t.device());
  cpu::reduce(t, mask, idx, ArgExtremumReducer<T, IsMax>{});
  return idx;
}

// On a device: the values and their indices in one pass of the reduction kernel.
template <bool IsMax, class T>
MaxMinResult<T> max_min_along_device(const char* op, const Tensor<T>& t, int d) {
  std::vector<bool> mask(t.shape().size(), false);
  mask[static_cast<std::size_t>(d)] = true;
  check_nonempty_reduction(op, t.shape(), mask);
  MaxMinResult<T> r{Tensor<T>(without_dim(t.shape(), d), t.device()),
                    Tensor<std::int64_t>(without_dim(t.shape(), d), t.device())};
  reduce_on_device(op, IsMax ? math::ReduceOp::argmax : math::ReduceOp::argmin, t, mask, r.values, r.indices);
  return r;
}

// A tensor of t's shape without dim d (idx, g), seen with t's shape and stride 0 along d.
template <class U>
kernels::TensorView along_dim_view(const Tensor<U>& t, const Shape& full, int d) {
  Strides strides = t.strides();
  strides.insert(strides.begin() + d, 0);
  return kernel_view_as(t, full, strides);
}

template <bool IsMax, class T>
MaxMinResult<T> max_min_along(const char* op, const Tensor<T>& t, std::int64_t dim, bool keepdim) {
  check_defined(op, t);
  const int d = normalize_dim(op, dim, t.shape().size());
  if (t.dim() == 0)  // a scalar is its own extremum, at index 0
    return {clone(t), zeros<std::int64_t>({}, t.device())};
  Tensor<std::int64_t> idx;
  Tensor<T> values;
  if (t.device().is_cpu()) {
    idx = arg_extremum_along<IsMax>(op, t, d);
    values = Tensor<T>(idx.shape(), t.device());
    along_indices(t, d, idx, values, [](const T& src, T& dst) { dst = src; });
  } else {
    auto r = max_min_along_device<IsMax>(op, t, d);
    idx = r.indices;
    values = r.values;
  }
  if (autograd::needs_grad(t)) {
    autograd::record(values, op, [from = t.shape(), d, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
      if (g.device().is_cpu()) {
        Tensor<T> grad = zeros<T>(from, g.device());
        along_indices(grad, d, idx, g, [](T& dst, const T& src) { dst = src; });
        in.add(0, grad);
      } else {
        Tensor<T> grad(from, g.device());
        const char* bop = "max/min backward";
        launch_device_kernel(bop, kernels::ScatterAlongDimArgs{.launch = launch_on(bop, grad.device()),
                                                               .grad = kernel_view(grad),
                                                               .idx = along_dim_view(idx, from, d),
                                                               .g = along_dim_view(g, from, d),
                                                               .dim = d});
        in.add(0, grad);
      }
    }, t);
  }
  if (keepdim) {
    Shape kept = t.shape();
    kept[static_cast<std::size_t>(d)] = 1;
    return {reshape(values, kept), reshape(idx, kept)};
  }
  return {values, idx};
}

template <bool IsMax, class T>
Tensor<T> amax_amin(const char* op, const Tensor<T>& t, const std::vector<std::int64_t>& dims, bool keepdim) {
  check_defined(op, t);
  if (t.dim() == 0) {  // only dim 0 / -1 name the single element's (absent) dim
    for (auto dim : dims) normalize_dim(op, dim, 0);
    return clone(t);
  }
  const auto mask = reduce_mask(op, t.shape(), dims);
  check_nonempty_reduction(op, t.shape(), mask);
  Tensor<T> out(reduced_shape(t.shape(), mask, keepdim), t.device());
  if (t.device().is_cpu()) {
    cpu::reduce(t, mask, out, ExtremumReducer<T, IsMax>{});
  } else {
    reduce_on_device(op, IsMax ? math::ReduceOp::max : math::ReduceOp::min, t, mask, out, Tensor<std::int64_t>());
  }
  if (autograd::needs_grad(t)) {
    autograd::record(out, op, [x = t.detach(), y = out.detach(), mask](const Tensor<T>& g,
                                                                          const autograd::InputGrads& in) {
      // Every element equal to the result (NaN counts as equal to a NaN result) gets g / count.
      const Shape kept = reduced_shape(x.shape(), mask, true);
      Tensor<T> hit(x.shape(), x.device());
      if (x.device().is_cpu()) {
        cpu::map(hit, x, reshape(y, kept), [](const T& a, const T& b) {
          using C = compute_t<T>;
          return convert<T>(math::ExtremumHit{}(static_cast<C>(a), static_cast<C>(b)));
        });
      } else {
        const char* bop = "amax/amin backward";
        launch_device_kernel(bop, kernels::ExtremumHitArgs{.launch = launch_on(bop, x.device()),
                                                           .hit = kernel_view(hit),
                                                           .x = kernel_view(x),
                                                           .y = kernel_broadcast_view(reshape(y, kept), x.shape())});
      }
      std::vector<std::int64_t> reduced_dims;
      for (std::size_t i = 0; i < mask.size(); ++i)
        if (mask[i]) reduced_dims.push_back(static_cast<std::int64_t>(i));
      const Tensor<T> count = sum(hit, reduced_dims, true);
      in.add(0, mul(hit, div(reshape(g, kept), count)));
    }, t);
  }
  return out;
}

}  // namespace detail

// The largest element along `dim` and its index (the first one on ties).
template <class T>
MaxMinResult<T> max(const Tensor<T>& t, std::int64_t dim, bool keepdim = false) {
  return detail::max_min_along<true>("max", t, dim, keepdim);
}

// The smallest element along `dim` and its index (the first one on ties).
template <class T>
MaxMinResult<T> min(const Tensor<T>& t, std::int64_t dim, bool keepdim = false) {
  return detail::max_min_along<false>("min", t, dim, keepdim);
}

// The largest element over `dims` (all dims when empty); ties share the gradient evenly.
template <class T>
Tensor<T> amax(const Tensor<T>& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false) {
  return detail::amax_amin<true>("amax", t, dims, keepdim);
}

template <class T>
Tensor<T> amin(const Tensor<T>& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false) {
  return detail::amax_amin<false>("amin", t, dims, keepdim);
}

// The largest (smallest) element of the whole tensor, a 0-d tensor; ties share the gradient.
template <class T>
Tensor<T> max(const Tensor<T>& t) {
  return detail::amax_amin<true>("max", t, {}, false);
}

template <class T>
Tensor<T> min(const Tensor<T>& t) {
  return detail::amax_amin<false>("min", t, {}, false);
}

// Index of the largest element along `dim` (the first on ties, the first NaN if any).
template <class T>
Tensor<std::int64_t> argmax(const Tensor<T>& t, std::int64_t dim, bool keepdim = false) {
  return detail::max_min_along<true>("argmax", t.detach(), dim, keepdim).indices;
}

template <class T>
Tensor<std::int64_t> argmin(const Tensor<T>& t, std::int64_t dim, bool keepdim = false) {
  return detail::max_min_along<false>("argmin", t.detach(), dim, keepdim).indices;
}

// Row-major index of the largest element of the whole tensor (a 0-d tensor), as in PyTorch.
template <class T>
Tensor<std::int64_t> argmax(const Tensor<T>& t) {
  check_defined("argmax", t);
  const std::vector<bool> mask(t.shape().size(), true);
  detail::check_nonempty_reduction("argmax", t.shape(), mask);
  Tensor<std::int64_t> idx(Shape{}, t.device());
  if (t.device().is_cpu()) {
    cpu::reduce(t, mask, idx, detail::ArgExtremumReducer<T, true>{});
  } else {
    detail::reduce_on_device("argmax", math::ReduceOp::argmax, t, mask, Tensor<T>(), idx);
  }
  return idx;
}

template <class T>
Tensor<std::int64_t> argmin(const Tensor<T>& t) {
  check_defined("argmin", t);
  const std::vector<bool> mask(t.shape().size(), true);
  detail::check_nonempty_reduction("argmin", t.shape(), mask);
  Tensor<std::int64_t> idx(Shape{}, t.device());
  if (t.device().is_cpu()) {
    cpu::reduce(t, mask, idx, detail::ArgExtremumReducer<T, false>{});
  } else {
    detail::reduce_on_device("argmin", math::ReduceOp::argmin, t, mask, Tensor<T>(), idx);
  }
  return idx;
}

}  // namespace kiln
