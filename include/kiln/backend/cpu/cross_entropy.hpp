// Row kernels of the fused cross-entropy on the CPU (front-end ops/cross_entropy.hpp): the
// reference of kernels/cross_entropy/. Rows of logits are walked with backend/cpu/softmax.hpp's
// for_each_row (any layout, one thread per row start to end: the same results for any thread
// count) and reduced with its one-pass online max/sum (online_max_sum): sums in double,
// exponentials in the element's compute type.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/backend/cpu/softmax.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::cpu {

// Cross-entropy rows: loss[r] = logsumexp(x[r]) - x[r][target[r]] = (max - x[t]) + log(sum).
// The row's max and log(sum) are saved for the backward pass. Rows whose target is
// `ignore_index` get loss 0 and are skipped. Targets must already lie in [0, length) or equal
// ignore_index.
template <class T>
void cross_entropy_rows(const T* x, const Rows& xr, const std::int64_t* target, std::int64_t ignore_index,
                        double* loss, double* row_max, double* log_sum) {
  const std::int64_t n = xr.length;
  for_each_row<T, 1, 0>({RowOperand<const T>{x, xr}}, {}, [&](std::int64_t r, const auto& in, const auto&) {
    const std::int64_t t = target[r];
    if (t == ignore_index) {
      loss[r] = row_max[r] = log_sum[r] = 0.0;
      return;
    }
    const MaxSum<T> ms = online_max_sum(in[0], n);
    row_max[r] = static_cast<double>(ms.max);
    log_sum[r] = std::log(ms.sum);
    loss[r] = (row_max[r] - static_cast<double>(in[0][t])) + log_sum[r];
  });
}

// Gradient of cross-entropy rows: gx[r] = scale[r] * (softmax(x[r]) - onehot(target[r])), with
// softmax(x[r]) = exp((x[r] - max) - log(sum)); zero for ignored rows.
template <class T>
void cross_entropy_backward_rows(const T* x, const Rows& xr, const std::int64_t* target,
                                 std::int64_t ignore_index, const double* row_max, const double* log_sum,
                                 const double* scale, T* gx, const Rows& gxr) {
  using C = compute_t<T>;
  const std::int64_t n = xr.length;
  for_each_row<T, 1, 1>({RowOperand<const T>{x, xr}}, {RowOperand<T>{gx, gxr}},
                        [&](std::int64_t r, const auto& in, const auto& out) {
    const T* xi = in[0];
    T* gi = out[0];
    const std::int64_t t = target[r];
    if (t == ignore_index) {
      for (std::int64_t i = 0; i < n; ++i) gi[i] = convert<T>(0.0);
      return;
    }
    const C m = static_cast<C>(row_max[r]), l = static_cast<C>(log_sum[r]), w = static_cast<C>(scale[r]);
    auto p = [&](std::int64_t i) { return std::exp((static_cast<C>(xi[i]) - m) - l); };
    for (std::int64_t i = 0; i < n; ++i) gi[i] = convert<T>(w * p(i));
    gi[t] = convert<T>(w * (p(t) - C(1)));
  });
}

}  // namespace kiln::cpu
