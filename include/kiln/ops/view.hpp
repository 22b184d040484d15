// Views: new shape/strides over the same storage, no copy. Each is differentiable; its backward
// maps the gradient back to the input's shape (reshape back, inverse permutation, scatter into
// zeros for slices, sum over broadcast dims for expand).
#pragma once

#include <algorithm>
#include <numeric>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln {

template <class T>
Tensor<T> sum_to(const Tensor<T>& g, const Shape& shape);  // reduce.hpp

namespace detail {

template <class T>
Tensor<T> restride(const Tensor<T>& t, std::int64_t offset, Shape shape, Strides strides) {
  return Tensor<T>::view_of(t.storage(), offset, std::move(shape), std::move(strides));
}

// Resolves one -1 entry and checks the element count.
inline Shape infer_shape(const char* op, const Shape& from, Shape to) {
  std::int64_t known = 1, infer_at = -1;
  for (std::size_t i = 0; i < to.size(); ++i) {
    if (to[i] == -1) {
      check(infer_at < 0, op, "only one dimension may be -1, got ", to);
      infer_at = static_cast<std::int64_t>(i);
    } else {
      check(to[i] >= 0, op, "invalid dimension in shape ", to);
      known *= to[i];
    }
  }
  const std::int64_t n = numel_of(from);
  if (infer_at >= 0) {
    check(known != 0 && n % known == 0, op, "cannot reshape ", from, " into ", to);
    to[static_cast<std::size_t>(infer_at)] = n / known;
  }
  check(numel_of(to) == n, op, "cannot reshape ", from, " (", n, " elements) into ", to, " (", numel_of(to),
        " elements)");
  return to;
}

// Strides that read (shape, strides) as `to` without copying, if possible: every group of input
// dims that is contiguous in memory may be split or merged freely. Empty result: not possible.
inline std::optional<Strides> view_strides(const Shape& shape, const Strides& strides, const Shape& to) {
  Strides out(to.size());
  if (numel_of(shape) == 0 || shape.empty()) {
    out = contiguous_strides(to);
    return out;
  }
  std::int64_t view_d = static_cast<std::int64_t>(to.size()) - 1;
  std::int64_t chunk_base_stride = strides.back();
  std::int64_t tensor_numel = 1, view_numel = 1;
  for (std::int64_t d = static_cast<std::int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[static_cast<std::size_t>(d)];
    // End of a contiguous chunk: the next (outer) dim does not continue this one in memory.
    if (d == 0 || (shape[static_cast<std::size_t>(d - 1)] != 1 &&
                   strides[static_cast<std::size_t>(d - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || to[static_cast<std::size_t>(view_d)] == 1)) {
        out[static_cast<std::size_t>(view_d)] = view_numel * chunk_base_stride;
        view_numel *= to[static_cast<std::size_t>(view_d)];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[static_cast<std::size_t>(d - 1)];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

}  // namespace detail

// Reinterprets t with a new shape without copying; throws when t's strides do not allow it
// (use reshape, which copies then).
template <class T>
Tensor<T> view(const Tensor<T>& t, const Shape& shape) {
  check_defined("view", t);
  const Shape to = detail::infer_shape("view", t.shape(), shape);
  auto strides = detail::view_strides(t.shape(), t.strides(), to);
  check(strides.has_value(), "view", "a tensor of shape ", t.shape(), " and strides ", t.strides(),
        " cannot be viewed as ", to, " without a copy; use reshape()");
  Tensor<T> out = detail::restride(t, t.offset(), to, *strides);
  if (autograd::needs_grad(t)) {
    autograd::record(out, "view", [from = t.shape()](const Tensor<T>& g, const autograd::InputGrads& in) {
      in.add(0, reshape(g, from));
    }, t);
  }
  return out;
}

// A view when the strides allow one, otherwise a contiguous copy.
template <class T>
Tensor<T> reshape(const Tensor<T>& t, const Shape& shape) {
  check_defined("reshape", t);
  const Shape to = detail::infer_shape("reshape", t.shape(), shape);
  if (detail::view_strides(t.shape(), t.strides(), to)) return view(t, to);
  return view(clone(t), to);
}

template <class T>
Tensor<T> flatten(const Tensor<T>& t) {
  return reshape(t, {t.numel()});
}

template <class T>
Tensor<T> permute(const Tensor<T>& t, const std::vector<std::int64_t>& dims) {
  check_defined("permute", t);
  check(dims.size() == t.shape().size(), "permute", "got ", dims.size(), " dims for a tensor of shape ", t.shape());
  Shape shape(dims.size());
  Strides strides(dims.size());
  std::vector<std::int64_t> inverse(dims.size(), -1);
  for (std::size_t i = 0; i < dims.size(); ++i) {
    const int d = normalize_dim("permute", dims[i], dims.size());
    check(inverse[static_cast<std::size_t>(d)] < 0, "permute", "dim ", d, " repeated in the permutation");
    inverse[static_cast<std::size_t>(d)] = static_cast<std::int64_t>(i);
    shape[i] = t.shape()[static_cast<std::size_t>(d)];
    strides[i] = t.strides()[static_cast<std::size_t>(d)];
  }
  Tensor<T> out = detail::restride(t, t.offset(), shape, strides);
  if (autograd::needs_grad(t)) {
    autograd::record(out, "permute", [inverse](const Tensor<T>& g, const autograd::InputGrads& in) {
      in.add(0, permute(g, inverse));
    }, t);
  }
  return out;
}

template <class T>
Tensor<T> transpose(const Tensor<T>& t, std::int64_t dim0, std::int64_t dim1) {
  check_defined("transpose", t);
  std::vector<std::int64_t> dims(t.shape().size());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[static_cast<std::size_t>(normalize_dim("transpose", dim0, dims.size()))],
            dims[static_cast<std::size_t>(normalize_dim("transpose", dim1, dims.size()))]);
  return permute(t, dims);
}

// The elements start, start+step, ... (< end) along `dim`. Negative start/end count from the end.
template <class T>
Tensor<T> slice(const Tensor<T>& t, std::int64_t dim, std::int64_t start, std::int64_t end, std::int64_t step = 1) {
  check_defined("slice", t);
  const int d = normalize_dim("slice", dim, t.shape().size());
  const std::int64_t size = t.shape()[static_cast<std::size_t>(d)];
  check(step > 0, "slice", "step must be positive, got ", step);
  if (start < 0) start += size;
  if (end < 0) end += size;
  start = std::clamp<std::int64_t>(start, 0, size);
  end = std::clamp<std::int64_t>(end, start, size);
  Shape shape = t.shape();
  Strides strides = t.strides();
  shape[static_cast<std::size_t>(d)] = (end - start + step - 1) / step;
  strides[static_cast<std::size_t>(d)] *= step;
  Tensor<T> out = detail::restride(t, t.offset() + start * t.strides()[static_cast<std::size_t>(d)], shape, strides);
  if (autograd::needs_grad(t)) {
    // g goes into its part of t's gradient (autograd's accumulate_part): the views of a split
    // become one gradient tensor, copied part by part, instead of a full-size tensor each.
    autograd::record(out, "slice", [d, start, end, step](const Tensor<T>& g, const autograd::InputGrads& in) {
      in.add_part(0, g, d, start, end, step);
    }, t);
  }
  return out;
}

// `length` elements of `dim` from `start` (which must lie in range).
template <class T>
Tensor<T> narrow(const Tensor<T>& t, std::int64_t dim, std::int64_t start, std::int64_t length) {
  check_defined("narrow", t);
  const int d = normalize_dim("narrow", dim, t.shape().size());
  const std::int64_t size = t.shape()[static_cast<std::size_t>(d)];
  if (start < 0) start += size;
  check(start >= 0 && length >= 0 && start + length <= size, "narrow", "range [", start, ", ", start + length,
        ") out of bounds for dim ", d, " of shape ", t.shape());
  return slice(t, d, start, start + length);
}

// Broadcasts size-1 dims (and new leading dims) to `shape` with stride 0: no copy. -1 keeps a size.
template <class T>
Tensor<T> expand(const Tensor<T>& t, Shape shape) {
  check_defined("expand", t);
  check(shape.size() >= t.shape().size(), "expand", "cannot expand shape ", t.shape(), " to fewer dims ", shape);
  const std::size_t lead = shape.size() - t.shape().size();
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i >= lead && shape[i] == -1) shape[i] = t.shape()[i - lead];
    check(i < lead ? shape[i] >= 0 : (t.shape()[i - lead] == shape[i] || t.shape()[i - lead] == 1), "expand",
          "cannot expand shape ", t.shape(), " to ", shape);
  }
  Tensor<T> out = detail::restride(t, t.offset(), shape, broadcast_strides(t.shape(), t.strides(), shape));
  if (autograd::needs_grad(t)) {
    autograd::record(out, "expand", [from = t.shape()](const Tensor<T>& g, const autograd::InputGrads& in) {
      in.add(0, sum_to(g, from));
    }, t);
  }
  return out;
}

// Inserts a size-1 dim at `dim` (in [-(n+1), n]).
template <class T>
Tensor<T> unsqueeze(const Tensor<T>& t, std::int64_t dim) {
  check_defined("unsqueeze", t);
  const int d = normalize_dim("unsqueeze", dim, t.shape().size() + 1);
  Shape shape = t.shape();
  shape.insert(shape.begin() + d, 1);
  return view(t, shape);
}

// Removes `dim`, which must have size 1.
template <class T>
Tensor<T> squeeze(const Tensor<T>& t, std::int64_t dim) {
  check_defined("squeeze", t);
  const int d = normalize_dim("squeeze", dim, t.shape().size());
  check(t.shape()[static_cast<std::size_t>(d)] == 1, "squeeze", "dim ", d, " of shape ", t.shape(),
        " has size ", t.shape()[static_cast<std::size_t>(d)], ", not 1");
  Shape shape = t.shape();
  shape.erase(shape.begin() + d);
  return view(t, shape);
}

// Removes every size-1 dim.
template <class T>
Tensor<T> squeeze(const Tensor<T>& t) {
  check_defined("squeeze", t);
  Shape shape;
  for (auto s : t.shape())
    if (s != 1) shape.push_back(s);
  return view(t, shape);
}

}  // namespace kiln
