// Joining and splitting along a dim: cat, stack (copies), concat_as (a view where the parts already
// lie back to back, else a copy) and split, chunk (views).
//
// cat's output is the inputs laid end to end along dim, so the gradient of input i is the slice
// of the output gradient that input filled. stack is cat of the inputs each given a new size-1
// dim. split and chunk return narrow() views, which are differentiable on their own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

namespace detail {

template <class T>
void check_list(const char* op, const std::vector<Tensor<T>>& ts) {
  check(!ts.empty(), op, "needs at least one tensor, got an empty list");
  for (std::size_t i = 0; i < ts.size(); ++i) {
    check(ts[i].defined(), op, "tensor ", i, " is undefined (default-constructed)");
    check(ts[i].device() == ts[0].device(), op, "tensor ", i, " of shape ", ts[i].shape(), " is on ", ts[i].device(),
          " but tensor 0 of shape ", ts[0].shape(), " is on ", ts[0].device());
  }
}

// Concatenation along the (normalised) dim d of shape-checked inputs; `op` names the node.
template <class T>
Tensor<T> concat(const char* op, const std::vector<Tensor<T>>& ts, int d) {
  Shape shape = ts[0].shape();
  std::vector<std::int64_t> sizes;
  shape[static_cast<std::size_t>(d)] = 0;
  for (const auto& t : ts) {
    sizes.push_back(t.shape()[static_cast<std::size_t>(d)]);
    shape[static_cast<std::size_t>(d)] += sizes.back();
  }
  Tensor<T> out(shape, ts[0].device());
  // Each input is copied into its slab of out: the view out[..., offset : offset + size, ...].
  const std::int64_t step = out.strides()[static_cast<std::size_t>(d)];
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    copy_into(restride(out, out.offset() + offset * step, ts[i].shape(), out.strides()), ts[i]);
    offset += sizes[i];
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad_list(ts)) {
      autograd::record_list(out, op, [d, sizes](const Tensor<T>& g, const autograd::InputGrads& in) {
        const bool private_gradient = autograd::sole_owner(g);  // before any view of g exists
        std::int64_t start = 0;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          if (in.needs(i)) in.add(i, autograd::gradient_part(narrow(g, d, start, sizes[i]), private_gradient));
          start += sizes[i];
        }
      }, ts);
    }
  }
  return out;
}

}  // namespace detail

// The tensors laid end to end along dim; all other dims must match. Differentiable.
template <class T>
Tensor<T> cat(const std::vector<Tensor<T>>& ts, std::int64_t dim = 0) {
  detail::check_list("cat", ts);
  const Shape& first = ts[0].shape();
  check(!first.empty(), "cat", "cannot concatenate zero-dimensional tensors (tensor 0 has shape [])");
  const int d = normalize_dim("cat", dim, first.size());
  for (std::size_t i = 1; i < ts.size(); ++i) {
    const Shape& s = ts[i].shape();
    bool match = s.size() == first.size();
    for (std::size_t j = 0; match && j < s.size(); ++j) match = static_cast<int>(j) == d || s[j] == first[j];
    check(match, "cat", "tensor ", i, " has shape ", s, " but tensor 0 has shape ", first,
          ": all dims except dim ", d, " must match");
  }
  return detail::concat("cat", ts, d);
}

// The tensors (all of one shape) along a new dim at position dim (in [-(n+1), n]). Differentiable.
template <class T>
Tensor<T> stack(const std::vector<Tensor<T>>& ts, std::int64_t dim = 0) {
  detail::check_list("stack", ts);
  const int d = normalize_dim("stack", dim, ts[0].shape().size() + 1);
  std::vector<Tensor<T>> expanded;
  expanded.reserve(ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    check(ts[i].shape() == ts[0].shape(), "stack", "tensor ", i, " has shape ", ts[i].shape(), " but tensor 0 has shape ",
          ts[0].shape(), ": stack needs equal shapes");
    expanded.push_back(unsqueeze(ts[i], d));
  }
  return detail::concat("stack", expanded, d);
}

// The parts' elements in order (each part row-major) as one tensor of `shape`: the value of
// reshape(cat(flattened parts), shape). When the parts are contiguous and lie back to back in one
// storage (part i + 1 starting where part i ends), the result is a view of that storage and
// nothing is copied: e.g. an MoE layer's expert weights, allocated as one block and used by the
// grouped GEMM as [E, 2I, H] (nn/moe.hpp). Otherwise the parts are copied. Differentiable: part
// i's gradient is its slice of the output gradient (a view). lie_back_to_back says whether the
// parts are laid out so.
template <class T>
bool lie_back_to_back(const std::vector<Tensor<T>>& parts) {
  std::int64_t next = parts.empty() ? 0 : parts[0].offset();
  for (const auto& p : parts) {
    if (!p.defined() || !p.is_contiguous() || p.storage() != parts[0].storage() || p.offset() != next) return false;
    next += p.numel();
  }
  return true;
}

template <class T>
Tensor<T> concat_as(const std::vector<Tensor<T>>& parts, const Shape& shape) {
  const char* op = "concat_as";
  detail::check_list(op, parts);
  check_shape(op, shape);
  std::int64_t total = 0;
  for (const auto& p : parts) total += p.numel();
  check(numel_of(shape) == total, op, "the parts hold ", total, " elements, shape ", shape, " holds ",
        numel_of(shape));
  if (!lie_back_to_back(parts)) {
    std::vector<Tensor<T>> flat;
    for (const auto& p : parts) flat.push_back(reshape(p, {p.numel()}));
    return reshape(cat(flat, 0), shape);
  }
  Tensor<T> out = Tensor<T>::view_of(parts[0].storage(), parts[0].offset(), shape, contiguous_strides(shape));
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad_list(parts)) {
      std::vector<Shape> shapes;
      for (const auto& p : parts) shapes.push_back(p.shape());
      autograd::record_list(out, op, [shapes, total](const Tensor<T>& g, const autograd::InputGrads& in) {
        const bool private_gradient = autograd::sole_owner(g);  // before any view of g exists
        const Tensor<T> flat = reshape(g, {total});
        std::int64_t start = 0;
        for (std::size_t i = 0; i < shapes.size(); ++i) {
          const std::int64_t n = numel_of(shapes[i]);
          if (in.needs(i))
            in.add(i, autograd::gradient_part(reshape(narrow(flat, 0, start, n), shapes[i]), private_gradient));
          start += n;
        }
      }, parts);
    }
  }
  return out;
}

// Views of consecutive pieces of split_size along dim (the last one may be shorter). A dim of
// size 0 gives one empty piece. Note split(t, {3}) picks this overload (a braced single integer);
// spell the list as std::vector<std::int64_t>{3} for the other.
template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& t, std::int64_t split_size, std::int64_t dim = 0) {
  check_defined("split", t);
  const int d = normalize_dim("split", dim, t.shape().size());
  check(t.dim() >= 1, "split", "cannot split a zero-dimensional tensor");
  check(split_size > 0, "split", "split_size must be positive, got ", split_size, " (shape ", t.shape(), ")");
  const std::int64_t size = t.shape()[static_cast<std::size_t>(d)];
  std::vector<Tensor<T>> pieces;
  std::int64_t start = 0;
  do {
    const std::int64_t length = std::min(split_size, size - start);
    pieces.push_back(narrow(t, d, start, length));
    start += length;
  } while (start < size);
  return pieces;
}

// Views of consecutive pieces of the given sizes along dim; the sizes must add up to its size.
template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& t, const std::vector<std::int64_t>& sizes, std::int64_t dim = 0) {
  check_defined("split", t);
  const int d = normalize_dim("split", dim, t.shape().size());
  check(t.dim() >= 1, "split", "cannot split a zero-dimensional tensor");
  const std::int64_t size = t.shape()[static_cast<std::size_t>(d)];
  std::int64_t total = 0;
  for (auto s : sizes) {
    check(s >= 0, "split", "negative size ", s, " in sizes ", sizes);
    total += s;
  }
  check(total == size, "split", "sizes ", sizes, " add up to ", total, " but dim ", d, " of shape ", t.shape(),
        " has size ", size);
  std::vector<Tensor<T>> pieces;
  std::int64_t start = 0;
  for (auto s : sizes) {
    pieces.push_back(narrow(t, d, start, s));
    start += s;
  }
  return pieces;
}

// `chunks` views of about equal size along dim: pieces of ceil(size / chunks), as in PyTorch, so
// fewer pieces come back when the size does not allow that many (7 in 4 chunks: 2, 2, 2, 1;
// 6 in 4 chunks: 2, 2, 2).
template <class T>
std::vector<Tensor<T>> chunk(const Tensor<T>& t, std::int64_t chunks, std::int64_t dim = 0) {
  check_defined("chunk", t);
  check(chunks > 0, "chunk", "number of chunks must be positive, got ", chunks, " (shape ", t.shape(), ")");
  check(t.dim() >= 1, "chunk", "cannot split a zero-dimensional tensor");
  const std::int64_t size = t.shape()[static_cast<std::size_t>(normalize_dim("chunk", dim, t.shape().size()))];
  return split(t, std::max<std::int64_t>((size + chunks - 1) / chunks, 1), dim);
}

}  // namespace kiln
