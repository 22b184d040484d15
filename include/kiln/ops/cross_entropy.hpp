// cross_entropy over class logits with integer targets, fused with log_softmax, and the
// Reduction applied to per-element losses. CPU row kernels: backend/cpu/cross_entropy.hpp.
//
// For one row x (C logits) with target t:  loss = -log_softmax(x)_t = logsumexp(x) - x_t, and
// d loss / dx = softmax(x) - onehot(t). The fused op never materialises log_softmax: the forward
// keeps only each row's max and log-sum (two doubles per row), the backward recomputes softmax.
// CUDA: kernels/cross_entropy/cross_entropy.cuh (CrossEntropyForwardArgs, CrossEntropyBackwardArgs
// in kernels/cross_entropy/args.hpp); there the target range check runs on the device and is read
// back once per call (a stream synchronisation).
#pragma once

#include <memory>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/cross_entropy.hpp"
#include "kiln/kernels/cross_entropy/args.hpp"
#include "kiln/core/device_readback.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

// How a per-element loss is reduced: the mean over counted elements, their sum, or none (the
// per-element losses, in the targets' shape).
enum class Reduction { mean, sum, none };

namespace detail {

// cross_entropy on a device: the same contract as the CPU path below.
template <class T>
Tensor<T> cross_entropy_device(const char* op, const Tensor<T>& logits, const Tensor<std::int64_t>& targets,
                               std::int64_t ignore_index, Reduction reduction, const Shape& row_shape) {
  const Device dev = logits.device();
  const std::int64_t classes = logits.shape().back();
  // The kernels walk unit-stride rows of classes (any row starts).
  const Tensor<T> x = logits.strides().back() == 1 || classes == 1 ? logits.detach() : contiguous(logits.detach());
  const Tensor<std::int64_t> target = contiguous(targets);
  const std::int64_t rows = target.numel();
  const Tensor<double> stats({rows, 2}, dev);  // per row: max, log(sum(exp(x - max)))
  const Tensor<double> counted(Shape{}, dev);   // rows not ignored (the mean's denominator)
  const Tensor<double> loss_rows = reduction == Reduction::none ? Tensor<double>() : Tensor<double>({rows}, dev);
  const Tensor<std::int64_t> first_bad = full<std::int64_t>({}, rows, dev);  // `rows`: none
  Tensor<T> out = reduction == Reduction::none ? Tensor<T>(row_shape, dev) : Tensor<T>(Shape{}, dev);
  const bool reduced = reduction != Reduction::none;
  launch_device_kernel(op, kernels::CrossEntropyForwardArgs{.launch = launch_on(op, dev),
                                                            .logits = kernel_view(x),
                                                            .targets = target.data(),
                                                            .ignore_index = ignore_index,
                                                            .stats = stats.data(),
                                                            .losses = reduced ? nullptr : out.data(),
                                                            .loss_rows = reduced ? loss_rows.data() : nullptr,
                                                            .total = reduced ? out.data() : nullptr,
                                                            .counted = counted.data(),
                                                            .mean = reduction == Reduction::mean,
                                                            .first_bad = first_bad.data()});
  // The range check's result (a synchronisation), unless a DeviceReadbackGuard skips it.
  const std::int64_t bad = device_readbacks_enabled() ? first_bad.item() : rows;
  if (bad != rows)
    fail(op, "target ", reshape(target, {rows}).at({bad}), " (at flat position ", bad, ") is out of range for ",
         classes, " classes (logits of shape ", logits.shape(), ", ignore_index ", ignore_index, ")");

  if (autograd::needs_grad(logits)) {
    autograd::record(out, op, [x, target, ignore_index, reduction, stats, counted](const Tensor<T>& g,
                                                                                   const autograd::InputGrads& in) {
      Tensor<T> gx(x.shape(), x.device());
      const Tensor<T> gc = contiguous(g);
      const char* bop = "cross_entropy backward";
      launch_device_kernel(bop, kernels::CrossEntropyBackwardArgs{
                                    .launch = launch_on(bop, x.device()),
                                    .gx = kernel_view(gx),
                                    .logits = kernel_view(x),
                                    .targets = target.data(),
                                    .ignore_index = ignore_index,
                                    .stats = stats.data(),
                                    .g = gc.data(),
                                    .per_row_g = reduction == Reduction::none,
                                    .counted = reduction == Reduction::mean ? counted.data() : nullptr});
      in.add(0, gx);
    }, logits);
  }
  return out;
}

}  // namespace detail

// Cross-entropy of `logits` [..., C] (the class dim last) against class indices `targets` [...]:
// the leading dims are flattened into rows. Rows whose target equals `ignore_index` contribute
// nothing (loss 0 under Reduction::none) and are left out of the mean's count.
// When every target is ignored the mean is 0/0 = NaN, as in PyTorch (the gradient is then zero).
// Unlike PyTorch, the class dim is always the last one (PyTorch takes dim 1 of [N, C, d1, ...]).
template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Tensor<std::int64_t>& targets,
                        std::int64_t ignore_index = -100, Reduction reduction = Reduction::mean) {
  const char* op = "cross_entropy";
  check_defined(op, logits, targets);
  check_same_device(op, logits, targets);
  check(logits.dim() >= 1, op, "logits must have a class dim, got shape ", logits.shape());
  const Shape row_shape(logits.shape().begin(), logits.shape().end() - 1);
  check(targets.shape() == row_shape, op, "logits of shape ", logits.shape(), " need targets of shape ", row_shape,
        ", got targets of shape ", targets.shape());
  if (!logits.device().is_cpu())
    return detail::cross_entropy_device(op, logits, targets, ignore_index, reduction, row_shape);

  const std::int64_t classes = logits.shape().back();
  const int class_dim = static_cast<int>(logits.dim()) - 1;
  const Tensor<std::int64_t> target = contiguous(targets);
  const std::int64_t rows = target.numel();
  const std::int64_t* pt = target.data();
  std::int64_t counted = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (pt[r] == ignore_index) continue;
    check(pt[r] >= 0 && pt[r] < classes, op, "target ", pt[r], " (at flat position ", r,
          ") is out of range for ", classes, " classes (logits of shape ", logits.shape(), ", ignore_index ",
          ignore_index, ")");
    ++counted;
  }

  // What the backward pass needs of each row: max and log(sum(exp(x - max))).
  struct Saved {
    std::vector<double> row_max, log_sum;
  };
  auto saved = std::make_shared<Saved>();
  saved->row_max.resize(static_cast<std::size_t>(rows));
  saved->log_sum.resize(static_cast<std::size_t>(rows));
  std::vector<double> loss(static_cast<std::size_t>(rows));
  const cpu::Rows x_rows(logits, class_dim);
  cpu::cross_entropy_rows(logits.data(), x_rows, pt, ignore_index, loss.data(), saved->row_max.data(),
                          saved->log_sum.data());

  Tensor<T> out;
  if (reduction == Reduction::none) {
    out = Tensor<T>(row_shape, logits.device());
    for (std::int64_t r = 0; r < rows; ++r) out.data()[r] = convert<T>(loss[static_cast<std::size_t>(r)]);
  } else {
    double total = 0.0;  // in row order: the same bits for any thread count
    for (double l : loss) total += l;
    if (reduction == Reduction::mean) total /= static_cast<double>(counted);
    out = full<T>({}, convert<T>(total), logits.device());
  }

  if (autograd::needs_grad(logits)) {
    autograd::record(out, op, [x = logits.detach(), target, ignore_index, reduction, counted,
                               saved](const Tensor<T>& g, const autograd::InputGrads& in) {
      // Each row's gradient is (softmax - onehot) times the derivative of the reduction.
      const std::vector<T> gv = g.to_vector();
      std::vector<double> scale(static_cast<std::size_t>(target.numel()));
      for (std::size_t r = 0; r < scale.size(); ++r) {
        const double gr = static_cast<double>(reduction == Reduction::none ? gv[r] : gv[0]);
        scale[r] = reduction == Reduction::mean ? gr / static_cast<double>(counted) : gr;
      }
      Tensor<T> gx(x.shape(), x.device());
      const int last = static_cast<int>(x.dim()) - 1;
      cpu::cross_entropy_backward_rows(x.data(), cpu::Rows(x, last), target.data(), ignore_index,
                                       saved->row_max.data(), saved->log_sum.data(), scale.data(), gx.data(),
                                       cpu::Rows(gx, last));
      in.add(0, gx);
    }, logits);
  }
  return out;
}

}  // namespace kiln
