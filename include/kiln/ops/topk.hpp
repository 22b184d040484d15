// topk: the k largest (or smallest) entries along a dim and their positions. CPU kernel:
// backend/cpu/topk.hpp; CUDA kernels: kernels/topk/topk.cuh (arguments kernels/topk/args.hpp; the
// same ranking, so the same selection and order on both devices).
//
// The values are a selection of the input, so their gradient flows back to the chosen positions
// only: a scatter of the output gradient into zeros (positions within a line are distinct).
#pragma once

#include <cstdint>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/topk.hpp"
#include "kiln/kernels/topk/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/gather.hpp"

namespace kiln {

template <class T>
struct TopK {
  Tensor<T> values;                // t's shape with dim resized to k; differentiable
  Tensor<std::int64_t> indices;    // positions along dim
};

// The k largest (largest = true) or smallest entries of t along dim. sorted = true orders them
// best first, ties (equal values) lower position first; sorted = false keeps them in position
// order. NaN counts as larger than every number. Use as `auto [values, indices] = topk(t, k);`.
template <class T>
TopK<T> topk(const Tensor<T>& t, std::int64_t k, std::int64_t dim = -1, bool largest = true, bool sorted = true) {
  check_defined("topk", t);
  check(t.dim() >= 1, "topk", "needs an input with at least one dim, got shape ", t.shape());
  const int d = normalize_dim("topk", dim, t.shape().size());
  const std::int64_t size = t.shape()[static_cast<std::size_t>(d)];
  check(k >= 0 && k <= size, "topk", "k = ", k, " is out of range for dim ", d, " of size ", size, " (shape ",
        t.shape(), ")");
  Shape shape = t.shape();
  shape[static_cast<std::size_t>(d)] = k;
  TopK<T> out{Tensor<T>(shape, t.device()), Tensor<std::int64_t>(shape, t.device())};
  if (t.device().is_cpu()) {
    cpu::topk(t.detach(), d, k, largest, sorted, out.values, out.indices);
  } else {
    launch_device_kernel("topk", kernels::TopkArgs{.launch = launch_on("topk", t.device()),
                                                   .values = kernel_view(out.values),
                                                   .indices = kernel_view(out.indices),
                                                   .src = kernel_view(t),
                                                   .dim = d,
                                                   .k = k,
                                                   .largest = largest,
                                                   .sorted = sorted});
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out.values, "topk", [from = t.shape(), d, idx = out.indices](const Tensor<T>& g,
                                                                                 const autograd::InputGrads& in) {
        in.add(0, detail::scatter_add_into_zeros(from, d, idx, g));
      }, t);
    }
  }
  return out;
}

}  // namespace kiln
