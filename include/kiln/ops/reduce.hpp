// Sum and mean over dims (keepdim or not), and sum_to: the reduction that undoes broadcasting
// in backward passes. CPU kernel: backend/cpu/reduce.hpp; CUDA kernel: kernels/reduce/reduce.cuh
// (ReduceArgs, kernels/reduce/args.hpp; shared with ops/reduce_max.hpp). The scalar rules both
// sides share are in math/reduce.hpp.
#pragma once

#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/reduce.hpp"
#include "kiln/kernels/reduce/args.hpp"
#include "kiln/math/reduce.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

namespace detail {

// Marks the dims to reduce; an empty list means all dims.
inline std::vector<bool> reduce_mask(const char* op, const Shape& shape, const std::vector<std::int64_t>& dims) {
  std::vector<bool> mask(shape.size(), dims.empty());
  for (auto d : dims) {
    const int nd = normalize_dim(op, d, shape.size());
    if (shape.empty()) continue;  // a 0-d tensor: dim 0 / -1 name the tensor itself
    check(!mask[static_cast<std::size_t>(nd)], op, "dim ", d, " listed twice");
    mask[static_cast<std::size_t>(nd)] = true;
  }
  return mask;
}

// The reduced dims as the device kernel takes them (ReduceArgs::reduced_dims): bit d set when dim
// d is reduced.
inline std::uint32_t mask_bits(const std::vector<bool>& mask) {
  std::uint32_t bits = 0;
  for (std::size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) bits |= std::uint32_t{1} << d;
  return bits;
}

// Runs the device reduction `reduce_op` of t over `mask` into values and/or indices (either may be
// undefined: not wanted).
template <class T>
void reduce_on_device(const char* op, math::ReduceOp reduce_op, const Tensor<T>& t, const std::vector<bool>& mask,
                      const Tensor<T>& values, const Tensor<std::int64_t>& indices) {
  launch_device_kernel(op, kernels::ReduceArgs{.launch = launch_on(op, t.device()),
                                               .op = reduce_op,
                                               .values = values.defined() ? values.data() : nullptr,
                                               .indices = indices.defined() ? indices.data() : nullptr,
                                               .in = kernel_view(t),
                                               .reduced_dims = mask_bits(mask)});
}

inline Shape reduced_shape(const Shape& shape, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (!mask[d]) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// Accumulates in double (float inputs too): sums stay accurate to the last float bit for any
// realistic length, and the loop is memory-bound anyway.
template <class T>
struct SumReducer {
  bool mean;
  double init() const { return 0.0; }
  double step(double acc, const T& x, std::int64_t) const { return acc + static_cast<double>(x); }
  double merge(double a, double b) const { return a + b; }
  T finish(double acc, std::int64_t n) const { return convert<T>(math::sum_result(acc, n, mean)); }
};

// The gradient of a reduction seen from its input: g re-expanded over the reduced dims.
template <class T>
Tensor<T> expand_reduced(const Tensor<T>& g, const Shape& input_shape, const std::vector<bool>& mask) {
  return expand(reshape(g, reduced_shape(input_shape, mask, true)), input_shape);
}

template <class T>
Tensor<T> sum_or_mean(const char* op, const Tensor<T>& t, const std::vector<std::int64_t>& dims, bool keepdim,
                      bool mean) {
  check_defined(op, t);
  const auto mask = reduce_mask(op, t.shape(), dims);
  Tensor<T> out(reduced_shape(t.shape(), mask, keepdim), t.device());
  std::int64_t count = 1;
  for (std::size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) count *= t.shape()[d];
  if (mean) check(count > 0, op, "mean over an empty set of elements (shape ", t.shape(), ")");
  if (t.device().is_cpu()) {
    cpu::reduce(t, mask, out, SumReducer<T>{mean});
  } else {
    reduce_on_device(op, mean ? math::ReduceOp::mean : math::ReduceOp::sum, t, mask, out, Tensor<std::int64_t>());
  }
  if (autograd::needs_grad(t)) {
    autograd::record(out, op, [from = t.shape(), mask, mean, count](const Tensor<T>& g, const autograd::InputGrads& in) {
      Tensor<T> spread = expand_reduced(g, from, mask);
      in.add(0, mean ? mul(spread, 1.0 / static_cast<double>(count)) : contiguous(spread));
    }, t);
  }
  return out;
}

}  // namespace detail

// Sum over `dims` (all dims when empty).
template <class T>
Tensor<T> sum(const Tensor<T>& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false) {
  return detail::sum_or_mean("sum", t, dims, keepdim, false);
}

template <class T>
Tensor<T> mean(const Tensor<T>& t, const std::vector<std::int64_t>& dims = {}, bool keepdim = false) {
  return detail::sum_or_mean("mean", t, dims, keepdim, true);
}

// Sums a broadcast result back to `shape` (the shape it was broadcast from).
template <class T>
Tensor<T> sum_to(const Tensor<T>& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const std::size_t lead = g.shape().size() - shape.size();
  std::vector<std::int64_t> dims;
  for (std::size_t i = 0; i < g.shape().size(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(static_cast<std::int64_t>(i));
  return reshape(sum(g, dims, true), shape);
}

}  // namespace kiln
