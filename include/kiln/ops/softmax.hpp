// softmax and log_softmax along one dim (any dim, any input strides). CPU row kernels:
// backend/cpu/softmax.hpp; CUDA: kernels/softmax/softmax.cuh (SoftmaxForwardArgs,
// SoftmaxBackwardArgs in kernels/softmax/args.hpp).
//
//   softmax(x)_i     = exp(x_i - m) / sum_j exp(x_j - m)        (m = max_j x_j: nothing overflows)
//   log_softmax(x)_i = (x_i - m) - log(sum_j exp(x_j - m))
// Backward, from the output y and the output gradient g (sums along the dim):
//   softmax:     dx = y * (g - sum(g * y))
//   log_softmax: dx = g - exp(y) * sum(g)
#pragma once

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/softmax.hpp"
#include "kiln/kernels/softmax/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

namespace detail {

// The device kernels walk rows that are unit-stride, or rows of a contiguous tensor (a non-last
// dim, coalesced across neighbouring rows); any other layout is copied contiguous first.
template <class T>
Tensor<T> device_rows_layout(const Tensor<T>& t, int d) {
  if (t.is_contiguous() || t.dim() == 0 || t.shape()[static_cast<std::size_t>(d)] == 1 ||
      t.strides()[static_cast<std::size_t>(d)] == 1)
    return t;
  return contiguous(t);
}

template <class T>
Tensor<T> softmax_impl(const char* op, const Tensor<T>& x, std::int64_t dim, bool log) {
  check_defined(op, x);
  const int d = normalize_dim(op, dim, x.shape().size());
  Tensor<T> y(x.shape(), x.device());
  if (x.device().is_cpu()) {
    cpu::softmax_rows(x.data(), cpu::Rows(x, d), y.data(), cpu::Rows(y, d), log);
  } else {
    const Tensor<T> xr = device_rows_layout(x.detach(), d);
    launch_device_kernel(op, kernels::SoftmaxForwardArgs{.launch = launch_on(op, x.device()),
                                                         .y = kernel_view(y),
                                                         .x = kernel_view(xr),
                                                         .dim = d,
                                                         .log = log});
  }
  if (autograd::needs_grad(x)) {
    autograd::record(y, op, [y_saved = y.detach(), d, log](const Tensor<T>& g, const autograd::InputGrads& in) {
      Tensor<T> gx(y_saved.shape(), y_saved.device());
      if (g.device().is_cpu()) {
        cpu::softmax_backward_rows(g.data(), cpu::Rows(g, d), y_saved.data(), cpu::Rows(y_saved, d), gx.data(),
                                   cpu::Rows(gx, d), log);
      } else {
        // y and gx are contiguous: g must share their layout (an upstream g may be expanded, from sum).
        const Tensor<T> gc = contiguous(g);
        const char* bop = log ? "log_softmax backward" : "softmax backward";
        launch_device_kernel(bop, kernels::SoftmaxBackwardArgs{.launch = launch_on(bop, gx.device()),
                                                               .gx = kernel_view(gx),
                                                               .g = kernel_view(gc),
                                                               .y = kernel_view(y_saved),
                                                               .dim = d,
                                                               .log = log});
      }
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
