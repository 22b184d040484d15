// Gradient clipping by the global norm (as torch.nn.utils.clip_grad_norm_): the L2 norm of all
// gradients taken together, and if it exceeds max_norm, every gradient scaled by
// max_norm / (norm + 1e-6) in place, so the update keeps its direction but not its size.
//
// Deterministic on both backends: the CPU sums squares (in double) over fixed chunks and adds the
// chunk sums in order, whatever the thread count; the GPU does the same with its own fixed chunks
// (kernels/optim/grad_norm.cuh). The two agree to double rounding, not bit for bit.
#pragma once

#include <cmath>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/optim/args.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln::optim {

// Returns the global norm of the gradients of `params` (those without a gradient are skipped; 0 if
// none has one). A non-finite norm is returned as is and the gradients are left untouched, so the
// caller can skip the step. Gradients are scaled in place (a non-contiguous one is first replaced
// by a contiguous copy). On a GPU the norm is read back, which waits for the queued work.
template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm) {
  static_assert(is_floating<T>, "clip_grad_norm needs floating parameters");
  check(std::isfinite(max_norm) && max_norm > 0.0, "clip_grad_norm", "max_norm must be finite and positive, got ",
        max_norm);
  NoGradGuard no_grad;
  std::vector<Tensor<T>> grads;
  for (const Tensor<T>& p : params) {
    check_defined("clip_grad_norm", p);
    Tensor<T> g = p.grad();
    if (!g.defined()) continue;
    check_same_device("clip_grad_norm", p, g);
    if (!grads.empty()) check_same_device("clip_grad_norm", grads.front(), g);
    if (!g.is_contiguous()) {
      g = contiguous(g);
      Tensor<T>(p).set_grad(g);
    }
    grads.push_back(g);
  }
  if (grads.empty()) return 0.0;
  const Device device = grads.front().device();
  std::vector<kernels::GradTensorArgs> views;  // the gradients as the device kernels take them
  if (!device.is_cpu())
    for (const Tensor<T>& g : grads) views.push_back({.g = g.data(), .numel = g.numel()});

  double squares = 0.0;
  if (device.is_cpu()) {
    constexpr std::int64_t chunk = 1 << 16;
    for (const Tensor<T>& g : grads) {
      const T* data = g.data();
      const std::int64_t n = g.numel();
      std::vector<double> partial(static_cast<std::size_t>((n + chunk - 1) / chunk), 0.0);
      cpu::parallel_chunks(n, chunk, [&](std::int64_t b, std::int64_t e) {
        double s = 0.0;
        for (std::int64_t k = b; k < e; ++k) {
          const double x = static_cast<double>(data[k]);
          s += x * x;
        }
        partial[static_cast<std::size_t>(b / chunk)] = s;
      });
      for (double s : partial) squares += s;
    }
  } else {
    Tensor<double> out({1}, device);
    launch_device_kernel("clip_grad_norm", kernels::GradSumSquaresArgs{.launch = launch_on("clip_grad_norm", device),
                                                                       .dtype = dtype_of<T>,
                                                                       .grads = views.data(),
                                                                       .count = static_cast<int>(views.size()),
                                                                       .out = out.data()});
    squares = out.item();
  }
  const double norm = std::sqrt(squares);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;

  const double scale = max_norm / (norm + 1e-6);
  if (device.is_cpu()) {
    for (const Tensor<T>& g : grads) {
      T* data = g.data();
      cpu::parallel_for(g.numel(), 1, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t k = b; k < e; ++k) data[k] = convert<T>(static_cast<double>(data[k]) * scale);
      });
    }
  } else {
    launch_device_kernel("clip_grad_norm", kernels::GradScaleArgs{.launch = launch_on("clip_grad_norm", device),
                                                                  .dtype = dtype_of<T>,
                                                                  .grads = views.data(),
                                                                  .count = static_cast<int>(views.size()),
                                                                  .scale = scale});
  }
  return norm;
}

}  // namespace kiln::optim
