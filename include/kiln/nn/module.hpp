// Module: owns named parameters, buffers and child modules, so that a model's tensors can be
// listed by their Hugging Face names ("model.layers.0.self_attn.q_a_proj.weight"), moved between
// devices, saved and loaded.
//
// A module registers pointers to its own members (`register_parameter("weight", &weight)`), so
// modules are neither copyable nor movable: build them in place (members, std::unique_ptr,
// std::vector<std::unique_ptr<...>>).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/ops/copy.hpp"

namespace kiln::nn {

template <class T>
class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  // Trainable tensors, depth first, named "child.grandchild.name".
  std::vector<std::pair<std::string, Tensor<T>>> named_parameters(const std::string& prefix = "") const {
    std::vector<std::pair<std::string, Tensor<T>>> out;
    visit(prefix, [&](const std::string& name, Tensor<T>* t, bool trainable) {
      if (trainable) out.emplace_back(name, *t);
    });
    return out;
  }

  std::vector<Tensor<T>> parameters() const {
    std::vector<Tensor<T>> out;
    for (auto& [name, t] : named_parameters()) out.push_back(t);
    return out;
  }

  // Parameters and buffers (non-trainable state such as MoE routing biases): what a checkpoint holds.
  std::vector<std::pair<std::string, Tensor<T>>> state(const std::string& prefix = "") const {
    std::vector<std::pair<std::string, Tensor<T>>> out;
    visit(prefix, [&](const std::string& name, Tensor<T>* t, bool) { out.emplace_back(name, *t); });
    return out;
  }

  // Calls f(name, tensor slot, trainable) for every parameter and buffer; f may replace the tensor.
  void visit(const std::string& prefix, const std::function<void(const std::string&, Tensor<T>*, bool)>& f) const {
    const std::string p = prefix.empty() ? "" : prefix + ".";
    for (auto& [name, t] : parameters_) f(p + name, t, true);
    for (auto& [name, t] : buffers_) f(p + name, t, false);
    for (auto& [name, m] : children_) m->visit(p + name, f);
  }

  // Moves every parameter and buffer to `device` (parameters stay leaves that require grad), then
  // lets every module of the tree lay out its moved tensors (after_move). Tensors are replaced, so
  // move a model before an optimizer takes its parameters.
  void to(Device device) {
    visit("", [&](const std::string&, Tensor<T>* t, bool trainable) {
      if (!t->defined() || t->device() == device) return;
      Tensor<T> moved = kiln::to(t->detach(), device);
      if (trainable) moved.requires_grad_();
      *t = moved;
    });
    visit_modules("", [](const std::string&, Module& m) { m.after_move(); });
  }

  // Calls f(name, module) for this module (named `prefix`) and every module below it, depth first,
  // children named "prefix.child" (the prefix of their tensors' names).
  void visit_modules(const std::string& prefix, const std::function<void(const std::string&, Module&)>& f) {
    f(prefix, *this);
    const std::string p = prefix.empty() ? "" : prefix + ".";
    for (auto& [name, m] : children_) m->visit_modules(p + name, f);
  }

  void zero_grad() {
    visit("", [](const std::string&, Tensor<T>* t, bool) {
      if (t->defined()) t->zero_grad();
    });
  }

  std::int64_t num_parameters() const {
    std::int64_t n = 0;
    for (auto& [name, t] : named_parameters()) n += t.numel();
    return n;
  }

 protected:
  void register_parameter(std::string name, Tensor<T>* t) {
    if (t->defined() && !t->requires_grad()) t->requires_grad_();
    parameters_.emplace_back(std::move(name), t);
  }
  void register_buffer(std::string name, Tensor<T>* t) { buffers_.emplace_back(std::move(name), t); }
  void register_module(std::string name, Module* m) { children_.emplace_back(std::move(name), m); }

  // Called on every module of the tree after to() moved its tensors, each one separately: a module
  // whose tensors must share one allocation (nn::MoE's expert weights) packs them again here.
  virtual void after_move() {}

 private:
  std::vector<std::pair<std::string, Tensor<T>*>> parameters_, buffers_;
  std::vector<std::pair<std::string, Module*>> children_;
};

}  // namespace kiln::nn
