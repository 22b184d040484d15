// softmax and log_softmax along one dim (any dim, any input strides). CPU row kernels:
// backend/cpu/softmax.hpp.
//
//   softmax(x)_i     = exp(x_i - m) / sum_j exp(x_j - m)        (m = max_j x_j: nothing overflows)
//   log_softmax(x)_i = (x_i - m) - log(sum_j exp(x_j - m))
// Backward, from the output y and the output gradient g (sums along the dim):
//   softmax:     dx = y * (g - sum(g * y))
//   log_softmax: dx = g - exp(y) * sum(g)
#pragma once

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/softmax.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

namespace detail {

template <class T>
Tensor<T> softmax_impl(const char* op, const Tensor<T>& x, std::int64_t dim, bool log) {
  check_defined(op, x);
  check_cpu(op, x);
  const int d = normalize_dim(op, dim, x.shape().size());
  Tensor<T> y(x.shape(), x.device());
  cpu::softmax_rows(x.data(), cpu::Rows(x, d), y.data(), cpu::Rows(y, d), log);
  if (autograd::needs_grad(x)) {
    autograd::record(y, op, [y_saved = y.detach(), d, log](const Tensor<T>& g, const autograd::InputGrads& in) {
      check_cpu(log ? "log_softmax backward" : "softmax backward", g);
      Tensor<T> gx(y_saved.shape(), y_saved.device());
      cpu::softmax_backward_rows(g.data(), cpu::Rows(g, d), y_saved.data(), cpu::Rows(y_saved, d), gx.data(),
                                 cpu::Rows(gx, d), log);
      in.add(0, gx);
    }, x);
  }
  return y;
}

}  // namespace detail

// exp(x) / sum(exp(x)) along `dim`.
template <class T>
Tensor<T> softmax(const Tensor<T>& x, std::int64_t dim = -1) {
  return detail::softmax_impl("softmax", x, dim, false);
}

// log(softmax(x)) along `dim`, computed directly (accurate where softmax underflows to 0).
template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, std::int64_t dim = -1) {
  return detail::softmax_impl("log_softmax", x, dim, true);
}

}  // namespace kiln
