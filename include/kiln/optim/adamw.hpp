// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019):
//   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   p -= lr * ( m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p )
// The decay is applied to the parameter directly, not through the gradient. Moments are kept in
// double for double parameters and in float otherwise; the update is computed in double.
//
// Low-precision parameters (bf16, fp16) lose small updates to rounding, so by default the
// optimizer keeps an FP32 master copy of each, updates the master copy and writes the parameter as
// its rounded copy (AdamWOptions::master_weights).
//
// Parameters on the CPU are updated by a parallel loop; parameters on a GPU by one multi-tensor
// kernel launch per step for all of them (kernels/optim/adamw.cuh). Both evaluate AdamWStep
// (math/adamw.hpp), so they agree to the last bit up to the compilers' contraction of multiply-adds.
// Runs under no-grad.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/optim/args.hpp"
#include "kiln/math/adamw.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;  // DeepSeek-V3 and most LLM recipes; PyTorch's default is 0.999
  double eps = 1e-8;
  double weight_decay = 0.1;
  // bf16/fp16 parameters: update an FP32 master copy and write the parameter rounded from it.
  // Ignored for float and double parameters.
  bool master_weights = true;
};

template <class T>
class AdamW {
 public:
  using Moment = std::conditional_t<std::is_same_v<T, double>, double, float>;

  AdamW(std::vector<Tensor<T>> params, AdamWOptions options = {}) : params_(std::move(params)), options_(options) {
    NoGradGuard no_grad;
    for (const auto& p : params_) {
      check(p.defined() && p.requires_grad(), "AdamW", "every parameter must require grad");
      check(p.is_contiguous(), "AdamW", "parameters must be contiguous, got strides ", p.strides(), " for shape ",
            p.shape());
      check_same_device("AdamW", params_.front(), p);
      m_.push_back(zeros<Moment>(p.shape(), p.device()));
      v_.push_back(zeros<Moment>(p.shape(), p.device()));
    }
    sync_master_weights();
  }

  // One update from the gradients in p.grad(); parameters without a gradient are left alone.
  void step() {
    NoGradGuard no_grad;
    ++t_;
    const AdamWStep s =
        AdamWStep::at(options_.lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, t_);
    if (params_.empty()) return;
    if (!params_.front().device().is_cpu()) return step_device(s);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Tensor<T> grad = params_[i].grad();
      if (!grad.defined()) continue;
      check_grad(params_[i], grad);
      const Tensor<T> g = contiguous(grad);
      T* p = params_[i].data();
      const T* gp = g.data();
      Moment* m = m_[i].data();
      Moment* v = v_[i].data();
      float* master = master_.empty() ? nullptr : master_[i].data();
      cpu::parallel_for(params_[i].numel(), 16, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t k = b; k < e; ++k) {
          const double pk = master ? static_cast<double>(master[k]) : static_cast<double>(p[k]);
          const double updated = s(pk, static_cast<double>(gp[k]), m[k], v[k]);
          if (master) {
            master[k] = static_cast<float>(updated);
            p[k] = convert<T>(master[k]);
          } else {
            p[k] = convert<T>(updated);
          }
        }
      });
    }
  }

  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }

  // Re-reads the FP32 master weights from the parameters, e.g. after loading a checkpoint into
  // them (the master copy is otherwise the source of truth between steps). No-op without them.
  void sync_master_weights() {
    NoGradGuard no_grad;
    master_.clear();
    if constexpr (is_low_precision<T>) {
      if (options_.master_weights)
        for (const auto& p : params_) master_.push_back(cast<float>(p.detach()));
    }
  }

  void set_lr(double lr) { options_.lr = lr; }
  const AdamWOptions& options() const { return options_; }
  std::int64_t steps() const { return t_; }
  // The FP32 master weights (one per parameter), empty when not kept.
  const std::vector<Tensor<float>>& master_weights() const { return master_; }

 private:
  static void check_grad(const Tensor<T>& p, const Tensor<T>& g) {
    check(g.shape() == p.shape(), "AdamW", "gradient of shape ", g.shape(), " for a parameter of shape ", p.shape());
    check_same_device("AdamW", p, g);
  }

  // Every parameter with a gradient in one launch (kernels/optim/args.hpp: AdamWArgs).
  void step_device(const AdamWStep& s) {
    std::vector<Tensor<T>> grads;  // contiguous copies must outlive the launch call
    std::vector<kernels::AdamWTensorArgs> tensors;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Tensor<T> grad = params_[i].grad();
      if (!grad.defined() || params_[i].numel() == 0) continue;
      check_grad(params_[i], grad);
      grads.push_back(contiguous(grad));
      tensors.push_back({.p = params_[i].data(),
                         .g = grads.back().data(),
                         .m = m_[i].data(),
                         .v = v_[i].data(),
                         .master = master_.empty() ? nullptr : master_[i].data(),
                         .numel = params_[i].numel()});
    }
    if (tensors.empty()) return;
    launch_device_kernel("AdamW", kernels::AdamWArgs{.launch = launch_on("AdamW", params_.front().device()),
                                                     .dtype = dtype_of<T>,
                                                     .tensors = tensors.data(),
                                                     .count = static_cast<int>(tensors.size()),
                                                     .master_weights = !master_.empty(),
                                                     .step = s});
  }

  std::vector<Tensor<T>> params_;
  AdamWOptions options_;
  std::vector<Tensor<Moment>> m_, v_;
  std::vector<Tensor<float>> master_;
  std::int64_t t_ = 0;

 public:
  // ---- checkpointing (io/checkpoint.hpp) ----
  // The step count, the moments m, v and the FP32 master weights (empty when not kept): one per
  // parameter, in the order params() lists them. state() shares the live tensors; load_state()
  // copies into them (counts and shapes must match), so a resumed run continues bit for bit.
  struct State {
    std::int64_t step = 0;
    std::vector<Tensor<Moment>> m, v;
    std::vector<Tensor<float>> master;
  };
  const std::vector<Tensor<T>>& params() const { return params_; }
  State state() const { return {t_, m_, v_, master_}; }
  void load_state(const State& s) {
    check(s.m.size() == m_.size() && s.v.size() == v_.size(), "AdamW::load_state", "state for ", s.m.size(),
          " parameters, optimizer has ", m_.size());
    check(s.master.size() == master_.size(), "AdamW::load_state", s.master.size(), " master weights, optimizer keeps ",
          master_.size());
    auto copy_into = [](const auto& dst, const auto& src, std::size_t i) {
      using E = typename std::decay_t<decltype(dst)>::value_type;
      check(src.defined() && src.shape() == dst.shape() && src.is_contiguous(), "AdamW::load_state", "tensor ", i,
            " must be contiguous with shape ", dst.shape());
      copy_bytes(dst.data(), dst.device(), src.data(), src.device(), static_cast<std::size_t>(dst.numel()) * sizeof(E));
    };
    for (std::size_t i = 0; i < m_.size(); ++i) {
      copy_into(m_[i], s.m[i], i);
      copy_into(v_[i], s.v[i], i);
      if (!master_.empty()) copy_into(master_[i], s.master[i], i);
    }
    t_ = s.step;
  }
};

}  // namespace kiln::optim
