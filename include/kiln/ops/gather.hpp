// Indexing along one dimension: gather (an index per output element), scatter_add (its adjoint),
// and index_select (one index list applied to every row). CPU kernels: backend/cpu/gather.hpp.
//
// gather's gradient is a scatter-add of the output gradient into zeros, and scatter_add's
// gradient for src is a gather: the two are adjoint linear maps. index_select's gradient is an
// index-add that sums the rows picked more than once. Both scatters run in a fixed order (see the
// kernels), so gradients are deterministic on the CPU.
#pragma once

#include <cstdint>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/gather.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln {

namespace detail {

// Throws unless every value of `index` (contiguous) lies in [0, size): `size` is dim `dim` of a
// tensor of shape `shape`.
inline void check_index_range(const char* op, const Tensor<std::int64_t>& index, int dim, const Shape& shape) {
  const std::int64_t size = shape[static_cast<std::size_t>(dim)];
  const std::int64_t* p = index.data();
  for (std::int64_t i = 0; i < index.numel(); ++i)
    if (p[i] < 0 || p[i] >= size)
      fail(op, "index ", p[i], " is out of range for dim ", dim, " of size ", size, " (input of shape ", shape, ")");
}

// The shape rules gather and scatter_add share with PyTorch: index has the input's rank and is
// no larger than it in any dim other than `dim`. Returns the normalised dim.
template <class T>
int check_gather_shapes(const char* op, const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index) {
  check(t.dim() >= 1, op, "needs an input with at least one dim, got shape ", t.shape());
  const int d = normalize_dim(op, dim, t.shape().size());
  check(index.dim() == t.dim(), op, "index of shape ", index.shape(), " must have as many dims as the input of shape ",
        t.shape());
  for (std::size_t i = 0; i < t.shape().size(); ++i)
    check(static_cast<int>(i) == d || index.shape()[i] <= t.shape()[i], op, "index of shape ", index.shape(),
          " is larger than the input of shape ", t.shape(), " in dim ", i, " (only dim ", d, " may differ freely)");
  return d;
}

// zeros(shape) with src scatter-added along dim at index (no graph).
template <class T>
Tensor<T> scatter_add_into_zeros(const Shape& shape, int dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  Tensor<T> out = zeros<T>(shape, src.device());
  cpu::scatter_add(out, dim, index, src);
  return out;
}

// A contiguous tensor seen as [outer, shape[dim], inner]: the element counts before and after dim.
inline std::int64_t outer_size(const Shape& shape, int dim) {
  std::int64_t n = 1;
  for (std::size_t i = 0; i < static_cast<std::size_t>(dim); ++i) n *= shape[i];
  return n;
}
inline std::int64_t inner_size(const Shape& shape, int dim) {
  std::int64_t n = 1;
  for (std::size_t i = static_cast<std::size_t>(dim) + 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

}  // namespace detail

// out[p] = t[p with p[dim] replaced by index[p]] (PyTorch's torch.gather): for dim = 1,
// out[i][j] = t[i][index[i][j]]. index has t's rank and is no larger than t in the other dims;
// out has index's shape. Differentiable in t.
template <class T>
Tensor<T> gather(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index) {
  check_defined("gather", t, index);
  check_same_device("gather", t, index);
  check_cpu("gather", t);
  const int d = detail::check_gather_shapes("gather", t, dim, index);
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  detail::check_index_range("gather", idx, d, t.shape());
  Tensor<T> out(index.shape(), t.device());
  cpu::gather(out, t.detach(), d, idx);
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out, "gather", [shape = t.shape(), d, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
        in.add(0, detail::scatter_add_into_zeros(shape, d, idx, g));
      }, t);
    }
  }
  return out;
}

// t with src added at the positions index names along dim: out = t, then
// out[p with p[dim] replaced by index[p]] += src[p] for every position p of index (repeated
// positions add up). src has index's shape. Differentiable in t (identity) and src (a gather).
template <class T>
Tensor<T> scatter_add(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  check_defined("scatter_add", t, index, src);
  check_same_device("scatter_add", t, index, src);
  check_cpu("scatter_add", t);
  const int d = detail::check_gather_shapes("scatter_add", t, dim, index);
  check(src.shape() == index.shape(), "scatter_add", "src of shape ", src.shape(), " must have the index's shape ",
        index.shape());
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  detail::check_index_range("scatter_add", idx, d, t.shape());
  Tensor<T> out = clone(t.detach());
  cpu::scatter_add(out, d, idx, src.detach());
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t, src)) {
      autograd::record(out, "scatter_add", [d, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
        if (in.needs(0)) in.add(0, g);
        if (in.needs(1)) in.add(1, gather(g, d, idx));
      }, t, src);
    }
  }
  return out;
}

// The slices of t at the positions `index` (1-D) lists along dim, in that order (repeats
// allowed): out has t's shape with dim resized to index.numel(). Differentiable in t.
template <class T>
Tensor<T> index_select(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index) {
  check_defined("index_select", t, index);
  check_same_device("index_select", t, index);
  check_cpu("index_select", t);
  check(t.dim() >= 1, "index_select", "needs an input with at least one dim, got shape ", t.shape());
  const int d = normalize_dim("index_select", dim, t.shape().size());
  check(index.dim() == 1, "index_select", "index must be 1-D, got shape ", index.shape());
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  detail::check_index_range("index_select", idx, d, t.shape());
  const Tensor<T> src = contiguous(t.detach());
  Shape shape = t.shape();
  const std::int64_t n = idx.numel(), size = shape[static_cast<std::size_t>(d)];
  shape[static_cast<std::size_t>(d)] = n;
  const std::int64_t outer = detail::outer_size(shape, d), inner = detail::inner_size(shape, d);
  Tensor<T> out(shape, t.device());
  cpu::index_select_rows(src.data(), out.data(), outer, size, inner, idx.data(), n);
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out, "index_select", [from = t.shape(), outer, size, inner, idx](
                                                const Tensor<T>& g, const autograd::InputGrads& in) {
        Tensor<T> grad = zeros<T>(from, g.device());
        const Tensor<T> gc = contiguous(g);
        cpu::index_add_rows(grad.data(), gc.data(), outer, size, inner, idx.data(), idx.numel());
        in.add(0, grad);
      }, t);
    }
  }
  return out;
}

}  // namespace kiln
