// Indexing along one dimension: gather (an index per output element), scatter_add (its adjoint),
// and index_select (one index list applied to every row). CPU kernels: backend/cpu/gather.hpp;
// CUDA kernels: kernels/gather/gather.cuh and index_rows.cuh (arguments kernels/gather/args.hpp).
//
// gather's gradient is a scatter-add of the output gradient into zeros, and scatter_add's
// gradient for src is a gather: the two are adjoint linear maps. index_select's gradient is an
// index-add that sums the rows picked more than once. Both scatters run in a fixed order (see the
// kernels) on either device — each destination adds its sources in ascending position, the same
// order on the CPU and the GPU — so gradients are deterministic, and equal across the two.
//
// Out-of-range indices are an error on both devices. The CPU checks before computing; on a GPU the
// kernels check every index as they read it and lower a flag to the first bad position, which the
// op reads back after the launch (DeviceIndexCheck). That read synchronises the host with the
// stream once per forward call — a few microseconds plus waiting for the work already queued — in
// exchange for an error that names the bad index. Backward passes reuse validated indices and skip
// it.
#pragma once

#include <cstdint>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/gather.hpp"
#include "kiln/kernels/gather/args.hpp"
#include "kiln/core/device_readback.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln {

namespace detail {

[[noreturn]] inline void fail_index_range(const char* op, std::int64_t value, int dim, const Shape& shape) {
  fail(op, "index ", value, " is out of range for dim ", dim, " of size ", shape[static_cast<std::size_t>(dim)],
       " (input of shape ", shape, ")");
}

// Throws unless every value of `index` (contiguous, on the CPU) lies in [0, size): `size` is dim
// `dim` of a tensor of shape `shape`.
inline void check_index_range(const char* op, const Tensor<std::int64_t>& index, int dim, const Shape& shape) {
  const std::int64_t size = shape[static_cast<std::size_t>(dim)];
  const std::int64_t* p = index.data();
  for (std::int64_t i = 0; i < index.numel(); ++i)
    if (p[i] < 0 || p[i] >= size) fail_index_range(op, p[i], dim, shape);
}

// The device side of the range check: a one-element flag, set to index.numel(), that the kernel
// lowers (atomicMin) to the row-major position of each out-of-range index it meets. flag() goes
// into the kernel's arguments (first_bad); bad_value() reads the flag back after the launch
// (synchronising with the stream) and returns the first bad index value, if any.
class DeviceIndexCheck {
 public:
  explicit DeviceIndexCheck(const Tensor<std::int64_t>& index)
      : index_(index), flag_(full<std::int64_t>({1}, index.numel(), index.device())) {}

  std::int64_t* flag() const { return flag_.data(); }

  // Skipped (nullopt) while a DeviceReadbackGuard lives (core/device_readback.hpp): the kernel still
  // skips bad indices, but nothing waits for the device.
  std::optional<std::int64_t> bad_value() const {
    if (!device_readbacks_enabled()) return std::nullopt;
    const std::int64_t position = flag_.item();
    if (position >= index_.numel()) return std::nullopt;
    // index_ is contiguous: its element `position` in row-major order is at offset `position`.
    return Tensor<std::int64_t>::view_of(index_.storage(), index_.offset() + position, {}, {}).item();
  }

 private:
  Tensor<std::int64_t> index_;  // contiguous
  Tensor<std::int64_t> flag_;
};

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

// dst (contiguous) += src scattered along dim at index (contiguous, values already validated), in
// place, on either device.
template <class T>
void scatter_add_into(const Tensor<T>& dst, int dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  if (dst.device().is_cpu()) {
    cpu::scatter_add(dst, dim, index, src);
  } else {
    launch_device_kernel("scatter_add", kernels::ScatterAddArgs{.launch = launch_on("scatter_add", dst.device()),
                                                                .dst = kernel_view(dst),
                                                                .src = kernel_view(src),
                                                                .index = kernel_view(index),
                                                                .dim = dim});
  }
}

// t gathered along dim at index (contiguous), no graph. With `check`, out-of-range indices throw
// (on a GPU through the device flag); without, the indices must already be valid.
template <class T>
Tensor<T> gather_values(const Tensor<T>& t, int dim, const Tensor<std::int64_t>& index, bool check) {
  Tensor<T> out(index.shape(), t.device());
  if (t.device().is_cpu()) {
    if (check) check_index_range("gather", index, dim, t.shape());
    cpu::gather(out, t, dim, index);
  } else if (index.numel() > 0) {
    std::optional<DeviceIndexCheck> range;
    if (check) range.emplace(index);
    launch_device_kernel("gather", kernels::GatherArgs{.launch = launch_on("gather", t.device()),
                                                       .out = out.data(),
                                                       .src = kernel_view(t),
                                                       .index = kernel_view(index),
                                                       .first_bad = range ? range->flag() : nullptr,
                                                       .dim = dim});
    if (range)
      if (const auto bad = range->bad_value()) fail_index_range("gather", *bad, dim, t.shape());
  }
  return out;
}

// zeros(shape) with src scatter-added along dim at index (no graph).
template <class T>
Tensor<T> scatter_add_into_zeros(const Shape& shape, int dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  Tensor<T> out = zeros<T>(shape, src.device());
  scatter_add_into(out, dim, contiguous(index), src);
  return out;
}

// The gradient of selecting rows: a [outer, size, inner] tensor of shape `shape` (zeros, plus
// src [outer, n, inner] (contiguous) added at the rows index names; row `skip_row` (>= 0) gets
// nothing). Every destination row sums its sources in ascending position, on either device.
template <class T>
Tensor<T> index_add_rows_into_zeros(const Shape& shape, const Tensor<T>& src, std::int64_t outer, std::int64_t size,
                                    std::int64_t inner, const Tensor<std::int64_t>& index, std::int64_t skip_row = -1) {
  if (src.device().is_cpu()) {
    Tensor<T> grad = zeros<T>(shape);
    cpu::index_add_rows(grad.data(), src.data(), outer, size, inner, index.data(), index.numel(), skip_row);
    return grad;
  }
  Tensor<T> grad(shape, src.device());  // the kernel writes every row (zeros where nothing lands)
  launch_device_kernel("index_add", kernels::IndexAddRowsArgs{.launch = launch_on("index_add", src.device()),
                                                              .dtype = dtype_of<T>,
                                                              .dst = grad.data(),
                                                              .src = src.data(),
                                                              .index = index.data(),
                                                              .outer = outer,
                                                              .size = size,
                                                              .inner = inner,
                                                              .n = index.numel(),
                                                              .skip = skip_row,
                                                              .accumulate = false});
  return grad;
}

// out [outer, n, inner] = the rows of src [outer, size, inner] (contiguous) that index (contiguous)
// names, on either device. On a GPU the ids are checked by the kernel: returns the first bad one.
template <class T>
std::optional<std::int64_t> index_select_rows(const Tensor<T>& src, const Tensor<T>& out, std::int64_t outer,
                                              std::int64_t size, std::int64_t inner,
                                              const Tensor<std::int64_t>& index) {
  if (src.device().is_cpu()) {
    cpu::index_select_rows(src.data(), out.data(), outer, size, inner, index.data(), index.numel());
    return std::nullopt;
  }
  if (index.numel() == 0) return std::nullopt;
  const DeviceIndexCheck range(index);
  launch_device_kernel("index_select",
                       kernels::IndexSelectRowsArgs{.launch = launch_on("index_select", src.device()),
                                                    .dtype = dtype_of<T>,
                                                    .out = out.data(),
                                                    .src = src.data(),
                                                    .index = index.data(),
                                                    .first_bad = range.flag(),
                                                    .outer = outer,
                                                    .size = size,
                                                    .inner = inner,
                                                    .n = index.numel()});
  return range.bad_value();
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
  const int d = detail::check_gather_shapes("gather", t, dim, index);
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  Tensor<T> out = detail::gather_values(t.detach(), d, idx, /*check=*/true);
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
  const int d = detail::check_gather_shapes("scatter_add", t, dim, index);
  check(src.shape() == index.shape(), "scatter_add", "src of shape ", src.shape(), " must have the index's shape ",
        index.shape());
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  Tensor<T> out = clone(t.detach());
  if (t.device().is_cpu()) {
    detail::check_index_range("scatter_add", idx, d, t.shape());
    cpu::scatter_add(out, d, idx, src.detach());
  } else if (idx.numel() > 0) {
    const detail::DeviceIndexCheck range(idx);
    launch_device_kernel("scatter_add", kernels::ScatterAddArgs{.launch = launch_on("scatter_add", t.device()),
                                                                .dst = kernel_view(out),
                                                                .src = kernel_view(src.detach()),
                                                                .index = kernel_view(idx),
                                                                .first_bad = range.flag(),
                                                                .dim = d});
    if (const auto bad = range.bad_value()) detail::fail_index_range("scatter_add", *bad, d, t.shape());
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t, src)) {
      autograd::record(out, "scatter_add", [d, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
        if (in.needs(0)) in.add(0, g);
        if (in.needs(1)) in.add(1, detail::gather_values(g, d, idx, /*check=*/false));
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
  check(t.dim() >= 1, "index_select", "needs an input with at least one dim, got shape ", t.shape());
  const int d = normalize_dim("index_select", dim, t.shape().size());
  check(index.dim() == 1, "index_select", "index must be 1-D, got shape ", index.shape());
  const Tensor<std::int64_t> idx = contiguous(index.detach());
  if (t.device().is_cpu()) detail::check_index_range("index_select", idx, d, t.shape());
  const Tensor<T> src = contiguous(t.detach());
  Shape shape = t.shape();
  const std::int64_t n = idx.numel(), size = shape[static_cast<std::size_t>(d)];
  shape[static_cast<std::size_t>(d)] = n;
  const std::int64_t outer = detail::outer_size(shape, d), inner = detail::inner_size(shape, d);
  Tensor<T> out(shape, t.device());
  if (const auto bad = detail::index_select_rows(src, out, outer, size, inner, idx))
    detail::fail_index_range("index_select", *bad, d, t.shape());
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out, "index_select", [from = t.shape(), outer, size, inner, idx](
                                                const Tensor<T>& g, const autograd::InputGrads& in) {
        in.add(0, detail::index_add_rows_into_zeros(from, contiguous(g), outer, size, inner, idx));
      }, t);
    }
  }
  return out;
}

}  // namespace kiln
