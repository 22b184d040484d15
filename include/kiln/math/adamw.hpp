// The AdamW update of one element, shared by the CPU loop (optim/adamw.hpp) and the multi-tensor
// CUDA kernel (kernels/optim/adamw.cuh), so both backends evaluate the same double-precision
// function and agree to rounding (the compilers may contract multiply-adds differently).
//
//   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   p -= lr * ( m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p )
//
// Host and device (KILN_HD); g++ compiles it.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD

namespace kiln::optim {

// One step's update of one element. The bias corrections are folded into constants computed once
// per step:
//   p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) - lr * wd * p
// (the formula above rearranged), one square root and one division per element.
struct AdamWStep {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double step_size = 0.0;       // lr / (1 - beta1^t)
  double inv_sqrt_bias2 = 1.0;  // 1 / sqrt(1 - beta2^t)
  double decay = 0.0;           // lr * weight_decay

  // The constants of step t (t >= 1) for learning rate lr and decay weight_decay.
  static AdamWStep at(double lr, double beta1, double beta2, double eps, double weight_decay, std::int64_t t) {
    AdamWStep s;
    s.beta1 = beta1;
    s.beta2 = beta2;
    s.eps = eps;
    s.step_size = lr / (1.0 - std::pow(beta1, static_cast<double>(t)));
    s.inv_sqrt_bias2 = 1.0 / std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
    s.decay = lr * weight_decay;
    return s;
  }

  // Updates the moments m and v (stored as M) and returns the new parameter value.
  template <class M>
  KILN_HD double operator()(double p, double g, M& m, M& v) const {
    const double mk = beta1 * static_cast<double>(m) + (1.0 - beta1) * g;
    const double vk = beta2 * static_cast<double>(v) + (1.0 - beta2) * (g * g);
    m = static_cast<M>(mk);
    v = static_cast<M>(vk);
    return p - step_size * mk / (::sqrt(vk) * inv_sqrt_bias2 + eps) - decay * p;
  }
};

}  // namespace kiln::optim
