// rope: rotary position embedding (RoFormer), and rope_tables, its precomputed cos/sin tables.
//
// Layout: x is [..., S, H, D]: the sequence dim at -3, heads at -2, head features at -1, i.e.
// [B, S, H, D] or [S, H, D], the layout a query/key projection produces before heads are moved
// in front of the sequence. Feature pair i (i < D/2) at position p is rotated by the angle
//   p * inv_freq[i],   inv_freq[i] = theta^(-2i/D),
// computed in double and rounded once to the compute type (float for float/bf16/fp16). Since a
// rotation by p then the inverse rotation by q leaves a rotation by p - q, dot products of rotated
// queries and keys depend only on relative positions.
//
// Which features form pair i is the layout (backend/cpu/rope.hpp holds the kernel):
//   RopeLayout::half_split   (x[i], x[i + D/2]): Hugging Face Llama / GPT-NeoX (rotate_half);
//   RopeLayout::interleaved  (x[2i], x[2i + 1]): RoFormer, GPT-J and the DeepSeek-V3 reference code.
// The two agree up to a fixed permutation of the feature dim; a checkpoint trained with one must be
// run with the same one.
//
// CUDA tensors run kernels/rope/rope.cuh (arguments kernels/rope/args.hpp): the same tables (built
// on the device from the same double-precision formula, math/rope.hpp) and the same rotation
// arithmetic.
#pragma once

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/rope.hpp"
#include "kiln/kernels/rope/args.hpp"
#include "kiln/math/rope.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

enum class RopeLayout { half_split, interleaved };

// cos and sin of every (position, frequency) angle, shape positions.shape + [D/2], in the compute
// type C of the tensors they rotate (compute_t<T>). Building them once per forward pass and reusing
// them for every layer's queries and keys saves the trigonometry; tables built elsewhere (e.g. with
// a scaled frequency schedule) can be passed to rope() as well.
template <class C>
struct RopeTables {
  Tensor<C> cos;
  Tensor<C> sin;
};

namespace detail {

// Checks x and returns its head dim D.
template <class T>
std::int64_t rope_head_dim(const Tensor<T>& x) {
  check_defined("rope", x);
  check(x.dim() >= 3, "rope", "x must be [..., S, H, D] (at least 3 dims), got shape ", x.shape());
  const std::int64_t D = x.size(-1);
  check(D > 0 && D % 2 == 0, "rope", "the head dim D (last dim) must be even and positive, got shape ", x.shape());
  return D;
}

// Whether a per-position shape `lead` of positions or tables is x's [..., S] (one entry per batch
// row) rather than [S] (shared by the batch); fails if it is neither.
template <class T>
bool rope_per_batch(const char* what, const Shape& lead, const Shape& lead_shown, const Tensor<T>& x) {
  const Shape x_lead(x.shape().begin(), x.shape().end() - 2);
  const std::int64_t S = x.size(-3);
  if (lead == Shape{S}) return false;
  check(lead == x_lead, "rope", what, " of shape ", lead_shown, " fit neither the sequence length [", S,
        "] nor the dims [..., S] = ", x_lead, " of x of shape ", x.shape());
  return true;
}

// The tables on positions' device. On a GPU (kernels/rope/rope.cuh) the same double-precision
// formula runs in the kernel; a negative position gives NaN entries there instead of an error, as
// checking would mean waiting for the device.
template <class C>
RopeTables<C> make_rope_tables(const char* op, const Tensor<std::int64_t>& positions, std::int64_t head_dim,
                               double theta) {
  check_defined(op, positions);
  check(head_dim > 0 && head_dim % 2 == 0, op, "the head dim must be even and positive, got ", head_dim);
  check(std::isfinite(theta) && theta > 0.0, op, "theta must be finite and positive, got ", theta);
  const std::int64_t half = head_dim / 2;
  if (!positions.device().is_cpu()) {
    Shape shape = positions.shape();
    shape.push_back(half);
    RopeTables<C> t{Tensor<C>(shape, positions.device()), Tensor<C>(shape, positions.device())};
    const Tensor<std::int64_t> pos = contiguous(positions);
    launch_device_kernel(op, kernels::RopeTablesArgs{.launch = launch_on(op, positions.device()),
                                                     .dtype = dtype_of<C>,
                                                     .cos = t.cos.data(),
                                                     .sin = t.sin.data(),
                                                     .positions = pos.data(),
                                                     .n = pos.numel(),
                                                     .head_dim = static_cast<int>(head_dim),
                                                     .theta = theta});
    return t;
  }
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) inv_freq[static_cast<std::size_t>(i)] = math::rope_inv_freq(theta, i, head_dim);

  const std::vector<std::int64_t> pos = positions.to_vector();
  Shape shape = positions.shape();
  shape.push_back(half);
  RopeTables<C> t{Tensor<C>(shape), Tensor<C>(shape)};
  C* pc = t.cos.data();
  C* ps = t.sin.data();
  for (std::size_t k = 0; k < pos.size(); ++k) {
    check(pos[k] >= 0, op, "negative position ", pos[k], " in positions of shape ", positions.shape());
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos[k]) * inv_freq[static_cast<std::size_t>(i)];
      pc[static_cast<std::int64_t>(k) * half + i] = static_cast<C>(std::cos(angle));
      ps[static_cast<std::int64_t>(k) * half + i] = static_cast<C>(std::sin(angle));
    }
  }
  return t;
}

// Where x [..., S, H, D] (D contiguous) reads as rows of H heads that lie a fixed number of
// elements apart over all its leading dims (size-1 dims skipped): {row stride, head stride}. A
// slice of a wider last dim qualifies (the rope part of a projection's output); nullopt otherwise.
template <class T>
std::optional<std::pair<std::int64_t, std::int64_t>> rope_row_strides(const Tensor<T>& x) {
  const std::int64_t H = x.size(-2), D = x.size(-1);
  if (x.numel() == 0) return std::pair{H * D, D};
  const auto st = view_strides(x.shape(), x.strides(), {x.numel() / (H * D), H, D});
  if (!st || (*st)[2] != 1) return std::nullopt;
  return std::pair{(*st)[0], (*st)[1]};
}

// y = x rotated (inverse: by the negative angles); cos and sin contiguous, on one device; x and y
// contiguous too, except on a GPU, which also reads and writes the views rope_row_strides describes.
template <class T, class C>
void rope_rotate(const Tensor<T>& x, const Tensor<T>& y, const Tensor<C>& cos, const Tensor<C>& sin,
                 const cpu::RopeShape& s, bool inverse) {
  if (x.device().is_cpu()) {
    cpu::rope_rotate(x.data(), y.data(), cos.data(), sin.data(), s, inverse);
    return;
  }
  const auto strides = rope_row_strides(x), y_strides = rope_row_strides(y);
  check(strides.has_value() && y_strides.has_value(), "rope", "x (strides ", x.strides(), ") and y (strides ",
        y.strides(), ") of shape ", x.shape(), " must read as rows of heads a fixed stride apart");
  check(s.H * s.D <= 0x7fffffff, "rope", "rows of more than 2^31 - 1 elements are not supported on ", x.device(),
        ", got shape ", x.shape());
  launch_device_kernel("rope", kernels::RopeArgs{.launch = launch_on("rope", x.device()),
                                                 .dtype = dtype_of<T>,
                                                 .y = y.data(),
                                                 .x = x.data(),
                                                 .x_row_stride = strides->first,
                                                 .x_head_stride = strides->second,
                                                 .y_row_stride = y_strides->first,
                                                 .y_head_stride = y_strides->second,
                                                 .cos = cos.data(),
                                                 .sin = sin.data(),
                                                 .outer = s.outer,
                                                 .S = s.S,
                                                 .H = static_cast<int>(s.H),
                                                 .D = static_cast<int>(s.D),
                                                 .per_batch_tables = s.per_batch_tables,
                                                 .half_split = s.half_split,
                                                 .inverse = inverse});
}

// The rotation's shape for x [..., S, H, D] and its tables (checked: device, shape, layout).
template <class T>
cpu::RopeShape rope_shape(const Tensor<T>& x, const RopeTables<compute_t<T>>& tables, RopeLayout layout) {
  const std::int64_t D = rope_head_dim(x);
  check_defined("rope", tables.cos, tables.sin);
  check_same_device("rope", x, tables.cos, tables.sin);
  const Shape& ts = tables.cos.shape();
  check(tables.sin.shape() == ts && !ts.empty() && ts.back() == D / 2, "rope", "cos/sin tables of shapes ", ts,
        " and ", tables.sin.shape(), " do not fit x of shape ", x.shape(), " (expected [..., S, ", D / 2, "])");
  cpu::RopeShape s;
  s.S = x.size(-3);
  s.H = x.size(-2);
  s.D = D;
  s.outer = numel_of(Shape(x.shape().begin(), x.shape().end() - 3));
  s.per_batch_tables = rope_per_batch("tables", Shape(ts.begin(), ts.end() - 1), ts, x);
  s.half_split = layout == RopeLayout::half_split;
  return s;
}

}  // namespace detail

// Tables for integer positions (any shape; typically [S] or [B, S]) and head dim D.
template <class C>
RopeTables<C> rope_tables(const Tensor<std::int64_t>& positions, std::int64_t head_dim, double theta = 10000.0) {
  return detail::make_rope_tables<C>("rope_tables", positions, head_dim, theta);
}

// Rotates x [..., S, H, D] with precomputed tables of shape [S, D/2] (shared by the batch) or
// [..., S, D/2] (x's leading dims). Differentiable in x: the backward rotates by the negative angle.
template <class T>
Tensor<T> rope(const Tensor<T>& x, const RopeTables<compute_t<T>>& tables, RopeLayout layout = RopeLayout::half_split) {
  using C = compute_t<T>;
  const cpu::RopeShape s = detail::rope_shape(x, tables, layout);
  const Tensor<C> cos = contiguous(tables.cos.detach());
  const Tensor<C> sin = contiguous(tables.sin.detach());
  // A GPU reads row-strided views in place (decode's q_pe and k_pe are slices of the projections).
  const Tensor<T> xc = !x.device().is_cpu() && detail::rope_row_strides(x) ? x.detach() : contiguous(x.detach());
  Tensor<T> out(x.shape(), x.device());
  detail::rope_rotate(xc, out, cos, sin, s, false);

  if (autograd::needs_grad(x)) {
    autograd::record(out, "rope", [cos, sin, s](const Tensor<T>& g, const autograd::InputGrads& in) {
      check_same_device("rope backward", cos, g);
      const Tensor<T> gc = contiguous(g);
      Tensor<T> dx(gc.shape(), gc.device());
      detail::rope_rotate(gc, dx, cos, sin, s, true);
      in.add(0, dx);
    }, x);
  }
  return out;
}

// rope(x, tables, layout) written into `out` (x's shape, distinct elements; e.g. the rope part of a
// tensor being assembled), no graph. On a GPU rows and heads a fixed stride apart in x and out
// (rope_row_strides) are read and written in place; otherwise through contiguous copies.
template <class T>
void rope_into(const Tensor<T>& out, const Tensor<T>& x, const RopeTables<compute_t<T>>& tables,
               RopeLayout layout = RopeLayout::half_split) {
  using C = compute_t<T>;
  check_defined("rope", out, x);
  check_same_device("rope", out, x);
  check(out.shape() == x.shape(), "rope", "out of shape ", out.shape(), " does not match x of shape ", x.shape());
  const cpu::RopeShape s = detail::rope_shape(x, tables, layout);
  if (out.numel() == 0) return;
  const Tensor<C> cos = contiguous(tables.cos.detach()), sin = contiguous(tables.sin.detach());
  if (!x.device().is_cpu() && detail::rope_row_strides(x) && detail::rope_row_strides(out)) {
    detail::rope_rotate(x.detach(), out, cos, sin, s, false);
    return;
  }
  const Tensor<T> y(x.shape(), x.device());
  detail::rope_rotate(contiguous(x.detach()), y, cos, sin, s, false);
  copy_into(out, y);
}

// Rotates x [..., S, H, D] by the angles of `positions`: [S] (shared by the batch) or x's [..., S]
// (e.g. [B, S] for x [B, S, H, D]); positions must be >= 0.
template <class T>
Tensor<T> rope(const Tensor<T>& x, const Tensor<std::int64_t>& positions, double theta = 10000.0,
               RopeLayout layout = RopeLayout::half_split) {
  const std::int64_t D = detail::rope_head_dim(x);
  check_defined("rope", positions);
  check_same_device("rope", x, positions);
  detail::rope_per_batch("positions", positions.shape(), positions.shape(), x);
  return rope(x, detail::make_rope_tables<compute_t<T>>("rope", positions, D, theta), layout);
}

}  // namespace kiln
