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
#include "kiln/ops/factory.hpp"

namespace kiln::optim {

// The gradients of `params` in the form the norm and scale passes take: those without a gradient
// skipped, non-contiguous ones replaced by contiguous copies (set as the parameter's gradient), all
// on one device.
template <class T>
struct GradientSet {
  std::vector<Tensor<T>> grads;
  std::vector<kernels::GradTensorArgs> views;  // the gradients as the device kernels take them (GPU)

  explicit GradientSet(const std::vector<Tensor<T>>& params, const char* op = "clip_grad_norm") {
    static_assert(is_floating<T>, "gradient clipping needs floating parameters");
    for (const Tensor<T>& p : params) {
      check_defined(op, p);
      Tensor<T> g = p.grad();
      if (!g.defined()) continue;
      check_same_device(op, p, g);
      if (!grads.empty()) check_same_device(op, grads.front(), g);
      if (!g.is_contiguous()) {
        g = contiguous(g);
        Tensor<T>(p).set_grad(g);
      }
      grads.push_back(g);
    }
    if (!grads.empty() && !grads.front().device().is_cpu())
      for (const Tensor<T>& g : grads) views.push_back({.g = g.data(), .numel = g.numel()});
  }

  bool empty() const { return grads.empty(); }

  // Σ g² over every gradient, in double, in a fixed order. On a GPU it is read back (waits).
  double sum_squares() const { return queue_sum_squares().item(); }

  // The same as a scalar tensor on the gradients' device (a CPU scalar when there are none): on a
  // GPU queued, not read, so that its read can join others after the caller's last launch.
  Tensor<double> queue_sum_squares() const {
    if (grads.empty()) return zeros<double>({});
    const Device device = grads.front().device();
    if (device.is_cpu()) {
      double squares = 0.0;
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
      return full<double>({}, squares);
    }
    Tensor<double> out(Shape{}, device);
    launch_device_kernel("clip_grad_norm", kernels::GradSumSquaresArgs{.launch = launch_on("clip_grad_norm", device),
                                                                       .dtype = dtype_of<T>,
                                                                       .grads = views.data(),
                                                                       .count = static_cast<int>(views.size()),
                                                                       .out = out.data()});
    return out;
  }

  // Every gradient *= scale, in place.
  void scale(double scale) const {
    if (grads.empty()) return;
    const Device device = grads.front().device();
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
  }
};

// The factor clip_grad_norm scales by for a global norm (1 when no clipping is needed or the norm
// is not finite).
inline double clip_factor(double norm, double max_norm) {
  return std::isfinite(norm) && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

inline void check_max_norm(const char* op, double max_norm) {
  check(std::isfinite(max_norm) && max_norm > 0.0, op, "max_norm must be finite and positive, got ", max_norm);
}

// Returns the global norm of the gradients of `params` (those without a gradient are skipped; 0 if
// none has one). A non-finite norm is returned as is and the gradients are left untouched, so the
// caller can skip the step. Gradients are scaled in place (a non-contiguous one is first replaced
// by a contiguous copy). On a GPU the norm is read back, which waits for the queued work.
template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm) {
  check_max_norm("clip_grad_norm", max_norm);
  NoGradGuard no_grad;
  const GradientSet<T> set(params);
  const double norm = std::sqrt(set.sum_squares());
  const double factor = clip_factor(norm, max_norm);
  if (factor != 1.0) set.scale(factor);
  return norm;
}

}  // namespace kiln::optim
