// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019):
//   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   p -= lr * ( m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p )
// The decay is applied to the parameter directly, not through the gradient. Moments are kept in
// double for double parameters and in float otherwise. CPU implementation; runs under no-grad.
#pragma once

#include <cmath>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;  // DeepSeek-V3 and most LLM recipes; PyTorch's default is 0.999
  double eps = 1e-8;
  double weight_decay = 0.1;
};

template <class T>
class AdamW {
 public:
  using Moment = std::conditional_t<std::is_same_v<T, double>, double, float>;

  AdamW(std::vector<Tensor<T>> params, AdamWOptions options = {}) : params_(std::move(params)), options_(options) {
    for (const auto& p : params_) {
      check(p.defined() && p.requires_grad(), "AdamW", "every parameter must require grad");
      check(p.is_contiguous(), "AdamW", "parameters must be contiguous, got strides ", p.strides());
      check_cpu("AdamW", p);
      m_.push_back(zeros<Moment>(p.shape()));
      v_.push_back(zeros<Moment>(p.shape()));
    }
  }

  // One update from the gradients in p.grad(); parameters without a gradient are left alone.
  void step() {
    NoGradGuard no_grad;
    ++t_;
    const double c1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t_));
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Tensor<T> g = params_[i].grad();
      if (!g.defined()) continue;
      T* p = params_[i].data();
      const T* gp = g.data();
      Moment* m = m_[i].data();
      Moment* v = v_[i].data();
      const AdamWOptions o = options_;
      cpu::parallel_for(params_[i].numel(), 16, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t k = b; k < e; ++k) {
          const double gk = static_cast<double>(gp[k]);
          const double mk = o.beta1 * m[k] + (1.0 - o.beta1) * gk;
          const double vk = o.beta2 * v[k] + (1.0 - o.beta2) * gk * gk;
          m[k] = static_cast<Moment>(mk);
          v[k] = static_cast<Moment>(vk);
          const double pk = static_cast<double>(p[k]);
          p[k] = convert<T>(pk - o.lr * (mk / c1 / (std::sqrt(vk / c2) + o.eps) + o.weight_decay * pk));
        }
      });
    }
  }

  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }

  void set_lr(double lr) { options_.lr = lr; }
  const AdamWOptions& options() const { return options_; }
  std::int64_t steps() const { return t_; }

 private:
  std::vector<Tensor<T>> params_;
  AdamWOptions options_;
  std::vector<Tensor<Moment>> m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace kiln::optim
