// Shapes and strides: plain vectors of int64 with the helpers that views and broadcasting need.
// Strides are in elements, not bytes. A stride of 0 marks a broadcast (expanded) dimension.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"

namespace kiln {

using Shape = std::vector<std::int64_t>;
using Strides = std::vector<std::int64_t>;

// The element count of a shape. Overflow-checked: a shape whose count does not fit in int64 (e.g.
// {2^62 + 1, 4}, which wrapped to 4) is an error, not a small number. A zero dimension makes the
// count 0 whatever the others are. (Negative dimensions are multiplied as given: callers check
// them, e.g. check_shape, or use the sign to find an unresolved -1.)
inline std::int64_t numel_of(const Shape& shape) {
  for (auto s : shape)
    if (s == 0) return 0;
  std::int64_t n = 1;
  for (auto s : shape)
    if (__builtin_mul_overflow(n, s, &n)) fail("shape", "shape ", shape, " has more elements than an int64 can count");
  return n;
}

// Row-major (C order) strides: the last dimension is contiguous.
inline Strides contiguous_strides(const Shape& shape) {
  Strides strides(shape.size());
  std::int64_t s = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
  return strides;
}

// Whether (shape, strides) addresses distinct elements, and one past the largest offset it
// reaches (0: not distinct, or empty). Sufficient, not necessary: no negative strides, and the dims
// of size > 1, in increasing stride order, each step past everything the smaller ones span (true
// of every layout a contiguous tensor's views keep, permuted or sliced; false of expanded ones).
inline std::int64_t distinct_elements_extent(const Shape& shape, const Strides& strides) {
  std::vector<std::pair<std::int64_t, std::int64_t>> dims;  // (stride, size) of the dims of size > 1
  std::int64_t last = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] <= 0) return 0;
    if (shape[d] == 1) continue;
    if (strides[d] <= 0) return 0;
    dims.emplace_back(strides[d], shape[d]);
    last += (shape[d] - 1) * strides[d];
  }
  std::sort(dims.begin(), dims.end());
  std::int64_t span = 1;  // elements one step of the next dim must clear
  for (const auto& [stride, size] : dims) {
    if (stride < span) return 0;
    span = stride * size;
  }
  return last + 1;
}

inline void check_shape(const char* op, const Shape& shape) {
  for (auto s : shape) check(s >= 0, op, "negative dimension in shape ", shape);
}

// The most bytes one tensor may take: 2^48 (256 TiB), what a 48-bit virtual address space can
// hold. Sizes above it come from corrupt or hostile inputs (a config with vocab 2^62), and their
// byte counts could wrap size_t; they are refused before anything is allocated.
inline constexpr std::uint64_t kMaxTensorBytes = std::uint64_t{1} << 48;

// numel_of(shape) for a tensor of `element_size`-byte elements that will be allocated: checks the
// dimensions (>= 0) and the size (<= kMaxTensorBytes).
inline std::int64_t allocatable_numel(const char* op, const Shape& shape, std::size_t element_size) {
  check_shape(op, shape);
  const std::int64_t n = numel_of(shape);
  check(static_cast<std::uint64_t>(n) <= kMaxTensorBytes / element_size, op, "shape ", shape, " has ", n,
        " elements of ", element_size, " bytes: more than the ", kMaxTensorBytes, " bytes one tensor may take");
  return n;
}

// Maps a possibly negative dimension index into [0, ndim).
inline int normalize_dim(const char* op, std::int64_t dim, std::size_t ndim) {
  const auto n = static_cast<std::int64_t>(ndim);
  check((dim >= -n && dim < n) || (n == 0 && (dim == 0 || dim == -1)), op, "dim ", dim,
        " is out of range for a tensor of ", n, " dimensions");
  return static_cast<int>(dim < 0 ? dim + n : dim);
}

// NumPy broadcasting: align from the right; sizes must match or one of them must be 1.
inline Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const std::size_t n = a.size() > b.size() ? a.size() : b.size();
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const std::int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail(op, "shapes ", a, " and ", b, " cannot be broadcast (dim ",
           static_cast<std::int64_t>(i) - static_cast<std::int64_t>(n), ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides that read a tensor of (shape, strides) as if it had shape `target` (which it must
// broadcast to): missing leading dims and size-1 dims get stride 0.
inline Strides broadcast_strides(const Shape& shape, const Strides& strides, const Shape& target) {
  Strides out(target.size(), 0);
  const std::size_t lead = target.size() - shape.size();
  for (std::size_t i = 0; i < shape.size(); ++i)
    out[lead + i] = (shape[i] == 1 && target[lead + i] != 1) ? 0 : strides[i];
  return out;
}

// Merges neighbouring dims that step through memory as one (stride[i] == stride[i+1] * size[i+1])
// and drops size-1 dims: row-major order is unchanged, and the common cases (a contiguous tensor
// reduced over its trailing dims) become one dim with unit stride, with no div/mod per element.
// Used by the CPU reductions (backend/cpu/reduce.hpp) and by the CUDA reduction's planner
// (kernels/reduce/reduce.cuh).
inline void merge_dims(Shape& shape, Strides& strides) {
  Shape s;
  Strides t;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!s.empty() && t.back() == strides[d] * shape[d]) {
      s.back() *= shape[d];
      t.back() = strides[d];
    } else {
      s.push_back(shape[d]);
      t.push_back(strides[d]);
    }
  }
  shape = std::move(s);
  strides = std::move(t);
}

}  // namespace kiln
