// The backward pass: runs every node reachable from the root once, consumers before producers
// (Kahn's algorithm on the graph's edges), so that each node has received its whole gradient
// before it runs. Each node's saved tensors and edges are freed as soon as it has run.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "kiln/autograd/node.hpp"

namespace kiln::autograd {

inline void run_backward(const std::shared_ptr<Node>& root) {
  // Count, for every reachable node, how many reachable nodes feed gradient into it.
  std::unordered_map<Node*, int> pending_inputs;
  std::vector<Node*> stack{root.get()};
  pending_inputs[root.get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (n->released())
      fail("backward", "the graph behind ", n->name(),
           " was already freed by an earlier backward(); run the forward pass again");
    for (const auto& child : n->next) {
      if (!child) continue;
      auto [it, inserted] = pending_inputs.try_emplace(child.get(), 0);
      ++it->second;
      if (inserted) stack.push_back(child.get());
    }
  }

  // Keep every node alive while running: releasing a node drops its edges.
  std::vector<std::shared_ptr<Node>> ready{root};
  while (!ready.empty()) {
    std::shared_ptr<Node> n = std::move(ready.back());
    ready.pop_back();
    n->apply();
    if (!n->post_hooks.empty()) {
      const auto hooks = n->post_hooks;  // a hook may remove itself
      for (const auto& hook : hooks) (*hook)();
    }
    std::vector<std::shared_ptr<Node>> children = n->next;
    n->release();
    for (auto& child : children) {
      if (child && --pending_inputs[child.get()] == 0) ready.push_back(std::move(child));
    }
  }
}

}  // namespace kiln::autograd

namespace kiln {

template <class T>
void Tensor<T>::backward(const Tensor<T>& grad_output) const {
  check(requires_grad(), "backward", "tensor of shape ", shape(),
        " does not require grad (no parameter upstream has requires_grad_())");
  check(grad_output.shape() == shape(), "backward", "gradient of shape ", grad_output.shape(),
        " for a tensor of shape ", shape());
  check(grad_output.device() == device(), "backward", "gradient on ", grad_output.device(),
        " for a tensor on ", device());
  auto root = autograd::edge_of(*this);
  static_cast<autograd::TypedNode<T>*>(root.get())->accumulate(grad_output.detach());
  autograd::run_backward(root);
}

template <class T>
void Tensor<T>::backward() const {
  check(numel() == 1, "backward", "called without a gradient on a tensor of shape ", shape(),
        "; only a one-element tensor (a loss) has an implied gradient of 1");
  backward(full_like(*this, T(1.0)));
}

}  // namespace kiln
