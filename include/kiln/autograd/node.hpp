// The autograd graph: nodes recorded as ops run, and the helpers ops use to record themselves.
//
// Every tensor that requires grad points at a node that receives its gradient:
//   - a tensor made by an op points at that op's FunctionNode (its grad_fn);
//   - a leaf (a parameter) points at an AccumulateGrad node that adds into leaf.grad().
// A FunctionNode holds the op's backward as a closure plus `next`: the nodes of the op's inputs,
// in argument order (null for inputs that need no gradient). The engine (engine.hpp) runs nodes
// in reverse topological order; each node's closure turns its output gradient into input
// gradients and hands them to `next[i]`. Adding an op therefore never touches the engine: the op
// calls autograd::record(out, "name", backward, inputs...).
//
// Ownership: output tensor -> its node -> input nodes (shared); nodes never own tensors that hold
// them, so there are no cycles. Saved tensors must be detach()ed copies of the handles.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::autograd {

class Node {
 public:
  explicit Node(std::string name) : name_(std::move(name)) {}
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Frees long chains iteratively: a recursive chain of shared_ptr destructors would overflow the
  // stack on graphs tens of thousands of ops deep.
  virtual ~Node() {
    std::vector<std::shared_ptr<Node>> pending = std::move(next);
    while (!pending.empty()) {
      std::shared_ptr<Node> n = std::move(pending.back());
      pending.pop_back();
      if (n && n.use_count() == 1) {
        for (auto& child : n->next) pending.push_back(std::move(child));
        n->next.clear();
      }
    }
  }

  const std::string& name() const { return name_; }

  // Turns the accumulated output gradient into input gradients, passed on to `next`.
  virtual void apply() = 0;
  // Frees what backward needed (saved tensors, edges, the gradient) once it has run.
  virtual void release() = 0;
  // True once release() has freed the graph behind this node.
  virtual bool released() const { return false; }

  std::vector<std::shared_ptr<Node>> next;

  // Run by the engine right after apply(), in the order added, and kept by release(): hooks on a
  // leaf's AccumulateGrad (which lives as long as the leaf) run in every backward, once the leaf's
  // gradient is complete. Data parallel training starts gradient communication from them
  // (dist/data_parallel.hpp); the owner removes its hook by pointer when done.
  using Hook = std::function<void()>;
  std::vector<std::shared_ptr<const Hook>> post_hooks;

 private:
  std::string name_;
};

// A node whose output (the gradient it receives) is a Tensor<T>.
template <class T>
class TypedNode : public Node {
 public:
  TypedNode(std::string name, Shape output_shape)
      : Node(std::move(name)), output_shape_(std::move(output_shape)) {}

  // Adds `g` to the gradient this node has received so far.
  void accumulate(const Tensor<T>& g) {
    if (g.shape() != output_shape_)
      fail("backward", "the backward of another op sent a gradient of shape ", g.shape(), " to ",
           name(), ", whose output has shape ", output_shape_);
    // Only floating tensors ever require grad: views of bool/int tensors compile their backward
    // but never run it, and must not instantiate arithmetic on those types.
    if constexpr (is_floating<T>) {
      settle_parts();
      NoGradGuard no_grad;
      // kiln::add, found by argument-dependent lookup. The sum is a new tensor this node alone
      // holds; g itself may be held by another node too (an op may pass one tensor to several).
      grad_private_ = grad_.has_value();
      grad_ = grad_ ? add(*grad_, g) : g;
    }
  }

  // The gradient received so far when it is one contiguous tensor of the output's shape (no parts
  // waiting), for a backward that folds it into the gradient it makes (received_gradient below);
  // undefined otherwise.
  Tensor<T> received_gradient() const {
    if (!parts_.empty() || !grad_ || !grad_->is_contiguous()) return Tensor<T>();
    return *grad_;
  }
  // The gradient becomes `total`, made by the caller as received_gradient() + its own gradient.
  void set_total_gradient(const Tensor<T>& total) {
    if (total.shape() != output_shape_)
      fail("backward", "the backward of another op sent a total gradient of shape ", total.shape(), " to ", name(),
           ", whose output has shape ", output_shape_);
    grad_ = total;
    grad_private_ = false;  // the caller may hold it too
  }

  // Adds g to the part of this node's gradient that slice(gradient, dim, start, end, step) views
  // (the backward of a view op). While no whole gradient has arrived the parts wait (settle_parts
  // turns them into one tensor when the gradient is needed); after one has, g is added into its
  // part in place, the gradient copied first when it is a tensor accumulate() took as is, so no
  // tensor outside this node ever changes.
  void accumulate_part(const Tensor<T>& g, int dim, std::int64_t start, std::int64_t end, std::int64_t step) {
    if constexpr (is_floating<T>) {
      if (!grad_) {
        parts_.push_back({g, dim, start, end, step});
        return;
      }
      NoGradGuard no_grad;
      if (!grad_private_) grad_ = clone(*grad_);  // kiln's ops, found by argument-dependent lookup
      grad_private_ = true;
      add_in_place(part_view(*grad_, Part{g, dim, start, end, step}), g);
    }
  }

 protected:
  // The waiting parts become the gradient. A split (step-1 slices along one dim that tile it:
  // disjoint, together the whole) is copied into an uninitialised tensor, part by part: no zero
  // fill and no adds, where zeros plus an add per part read and wrote the whole three times. When
  // some parts already lie where the whole would put them (in_place_gradient), that whole is the
  // gradient and only the other parts are copied into it. Anything else (overlapping, strided or
  // partial slices) is added into zeros.
  void settle_parts() {
    if constexpr (is_floating<T>) {
      if (parts_.empty()) return;
      NoGradGuard no_grad;
      const bool tiling = parts_tile_the_output();
      const Device device = parts_.front().grad.device();
      std::optional<Tensor<T>> in_place = tiling ? in_place_gradient() : std::nullopt;
      grad_ = in_place ? *in_place : tiling ? Tensor<T>(output_shape_, device) : zeros<T>(output_shape_, device);
      grad_private_ = true;
      for (const Part& part : parts_) {
        if (in_place && part.grad.storage() == in_place->storage()) continue;  // already in its place
        const Tensor<T> view = part_view(*grad_, part);
        tiling ? copy_into(view, part.grad) : add_in_place(view, part.grad);
      }
      parts_.clear();
    }
  }

  // Drops the gradient received (and any waiting parts).
  void clear_gradient() {
    grad_.reset();
    parts_.clear();
  }

  Shape output_shape_;
  std::optional<Tensor<T>> grad_;
  bool grad_private_ = false;  // grad_ is a tensor no one else holds (see accumulate_part)

 private:
  struct Part {
    Tensor<T> grad;
    int dim;
    std::int64_t start, end, step;
  };

  Tensor<T> part_view(const Tensor<T>& full, const Part& part) const {
    Tensor<T> view = slice(full, part.dim, part.start, part.end, part.step);
    if (view.shape() != part.grad.shape())
      fail("backward", "the backward of a view op sent a gradient of shape ", part.grad.shape(),
           " for a part of shape ", view.shape(), " of ", name(), "'s output (shape ", output_shape_, ")");
    return view;
  }

  // Whether the parts are step-1 ranges of one dim that cover [0, size) exactly once.
  bool parts_tile_the_output() const {
    const int dim = parts_.front().dim;
    std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
    for (const Part& part : parts_) {
      if (part.dim != dim || part.step != 1) return false;
      ranges.emplace_back(part.start, part.end);
    }
    std::sort(ranges.begin(), ranges.end());
    std::int64_t next = 0;
    for (const auto& [start, end] : ranges) {
      if (start != next) return false;  // a gap or an overlap
      next = end;
    }
    return next == output_shape_[static_cast<std::size_t>(dim)];
  }

  // For tiling parts: the whole gradient as a view of a storage that some parts already fill in
  // their places, if there is one. Backward kernels that write gradients where the forward's
  // inputs lay (ops/attention.hpp) make such parts, so that the split those inputs came from needs
  // no copies but those of the parts made elsewhere. A part's storage qualifies when
  //   - nothing but this node's parts holds it (each such part's handle held only here), so the
  //     whole view may be written: the parts not in place are copied into it;
  //   - the part's position (its offset less start times the split dim's stride, its strides)
  //     makes a view of the output's shape inside the storage whose elements are all distinct;
  //   - every part on that storage sits exactly where that view puts it.
  std::optional<Tensor<T>> in_place_gradient() const {
    const std::size_t dim = static_cast<std::size_t>(parts_.front().dim);
    for (const Part& candidate : parts_) {
      const Tensor<T>& c = candidate.grad;
      const Strides& strides = c.strides();
      const std::int64_t offset = c.offset() - candidate.start * strides[dim];
      const std::int64_t extent = distinct_elements_extent(output_shape_, strides);
      if (offset < 0 || extent == 0 ||
          static_cast<std::size_t>(offset + extent) > c.storage()->nbytes() / sizeof(T))
        continue;
      long holders = 0;
      bool placed = true;
      for (const Part& part : parts_) {
        if (part.grad.storage() != c.storage()) continue;
        ++holders;
        placed = placed && part.grad.impl_ptr().use_count() == 1 &&
                 part.grad.offset() == offset + part.start * strides[dim] && same_strides(part.grad.strides(), strides);
      }
      if (placed && c.storage().use_count() == holders)
        return Tensor<T>::view_of(c.storage(), offset, output_shape_, strides);
    }
    return std::nullopt;
  }

  // Equal strides along the output's dims of size > 1 (the others never move an index).
  bool same_strides(const Strides& a, const Strides& b) const {
    for (std::size_t d = 0; d < output_shape_.size(); ++d)
      if (output_shape_[d] > 1 && a[d] != b[d]) return false;
    return true;
  }

  std::vector<Part> parts_;  // view gradients waiting for settle_parts (none once grad_ exists)
};

// Input gradients of one op, handed to its backward closure.
class InputGrads {
 public:
  explicit InputGrads(const std::vector<std::shared_ptr<Node>>& next) : next_(next) {}

  // Whether input i wants a gradient (skip computing it otherwise).
  bool needs(std::size_t i) const { return i < next_.size() && next_[i] != nullptr; }

  template <class U>
  void add(std::size_t i, const Tensor<U>& g) const {
    if (needs(i)) typed<U>(i).accumulate(g);
  }

  // The gradient input i has received so far, for a backward whose kernel can add it while it
  // writes its own gradient (a GEMM's epilogue, the RMSNorm backward): the sum then reads it once,
  // where handing over a separate gradient costs a second pass (accumulate's add reads both and
  // writes the sum). A contiguous tensor of input i's shape, or undefined when input i wants no
  // gradient, has received none yet, or holds parts or a strided one: then add(i, g) as usual.
  // After folding it, hand the sum to set_total(i, sum).
  template <class U>
  Tensor<U> received(std::size_t i) const {
    return needs(i) ? typed<U>(i).received_gradient() : Tensor<U>();
  }
  // Input i's gradient becomes `total` = received(i) + this backward's gradient (see received).
  template <class U>
  void set_total(std::size_t i, const Tensor<U>& total) const {
    if (needs(i)) typed<U>(i).set_total_gradient(total);
  }

  // Adds g to the part slice(gradient, dim, start, end, step) of input i's gradient
  // (TypedNode::accumulate_part): the backward of slice, and so of narrow, split and chunk.
  template <class U>
  void add_part(std::size_t i, const Tensor<U>& g, int dim, std::int64_t start, std::int64_t end,
                std::int64_t step) const {
    if (needs(i)) typed<U>(i).accumulate_part(g, dim, start, end, step);
  }

 private:
  template <class U>
  TypedNode<U>& typed(std::size_t i) const {
    auto* node = dynamic_cast<TypedNode<U>*>(next_[i].get());
    if (!node)
      fail("backward", "gradient of dtype ", dtype_of<U>, " sent to input ", i, " (", next_[i]->name(),
           ") of another dtype");
    return *node;
  }

  const std::vector<std::shared_ptr<Node>>& next_;
};

template <class T>
class FunctionNode final : public TypedNode<T> {
 public:
  using Backward = std::function<void(const Tensor<T>& grad_output, const InputGrads& inputs)>;

  FunctionNode(std::string name, Shape output_shape, Backward backward)
      : TypedNode<T>(std::move(name), std::move(output_shape)), backward_(std::move(backward)) {}

  void apply() override {
    this->settle_parts();
    if (!this->grad_) return;  // no gradient reached this node (e.g. an unused output)
    InputGrads inputs(this->next);
    backward_(*this->grad_, inputs);
  }
  void release() override {
    backward_ = nullptr;
    this->clear_gradient();
    this->next.clear();
    released_ = true;
  }
  bool released() const override { return released_; }

 private:
  Backward backward_;
  bool released_ = false;
};

// Whether t is a plain contiguous tensor that nothing else refers to: the only handle on its
// TensorImpl, and either the only TensorImpl on its storage, which holds exactly its elements, or
// a disjoint part of a gradient (TensorImpl::disjoint_part: the storage shared only with parts it
// does not overlap); outside any graph. Such a tensor may become a leaf's gradient without a copy.
template <class T>
bool sole_owner(const Tensor<T>& t) {
  const auto& impl = t.impl_ptr();
  const bool whole = impl->storage.use_count() == 1 && impl->offset == 0 &&
                     impl->storage->nbytes() == static_cast<std::size_t>(t.numel()) * sizeof(T);
  return impl.use_count() == 1 && (whole || impl->disjoint_part) && t.is_contiguous() && !impl->requires_grad &&
         !impl->grad_fn && !impl->accumulator && !impl->grad;
}

// The backward of a joining op (cat, concat_as) hands each input the view of its part of the
// gradient g. When g was a tensor nothing else held (sole_owner, asked before any view of it was
// made), the views are disjoint parts of it: marked so, a leaf keeps its part as its gradient
// without a copy (the stacked expert weights of an MoE layer: one part per expert and matrix).
template <class T>
Tensor<T> gradient_part(Tensor<T> view, bool of_private_gradient) {
  if (of_private_gradient) view.impl().disjoint_part = true;
  return view;
}

template <class T>
class AccumulateGrad final : public TypedNode<T> {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl<T>>& leaf)
      : TypedNode<T>("AccumulateGrad", leaf->shape), leaf_(leaf) {}

  void apply() override {
    this->settle_parts();
    auto leaf = leaf_.lock();
    if (!leaf || !this->grad_) return;
    NoGradGuard no_grad;
    Tensor<T> current;  // the gradient accumulated so far (undefined before the first backward)
    if (leaf->grad) current = Tensor<T>::view_of(leaf->grad->storage, leaf->grad->offset, leaf->grad->shape, leaf->grad->strides);
    // The stored gradient is always a fresh contiguous tensor owned by the leaf, so optimizers may
    // update it in place without touching any other tensor. A gradient that already is one (no
    // other tensor holds its storage, which it fills exactly) is kept as is: most parameters'
    // gradients arrive as one product's output, and copying them cost a pass over every
    // parameter's gradient a step.
    Tensor<T> updated = current.defined() ? add(current, *this->grad_)
                        : sole_owner(*this->grad_) ? *this->grad_
                                                   : clone(*this->grad_);
    this->grad_.reset();
    leaf->grad = updated.impl_ptr();
  }
  void release() override { this->clear_gradient(); }

 private:
  std::weak_ptr<TensorImpl<T>> leaf_;
};

// The node that receives the gradient of `t`, or null if t does not require grad.
template <class T>
std::shared_ptr<Node> edge_of(const Tensor<T>& t) {
  if constexpr (!is_floating<T>) {
    return nullptr;  // never requires grad (see accumulate)
  } else {
    if (!t.defined() || !t.requires_grad()) return nullptr;
    auto& impl = t.impl();
    if (impl.grad_fn) return impl.grad_fn;
    if (!impl.accumulator) impl.accumulator = std::make_shared<AccumulateGrad<T>>(t.impl_ptr());
    return impl.accumulator;
  }
}

// Whether an op on these inputs must record a node.
template <class... Inputs>
bool needs_grad(const Inputs&... inputs) {
  return grad_enabled() && ((inputs.defined() && inputs.requires_grad()) || ...);
}

// Records `out` as produced by an op named `name` from `inputs` (any tensor types), with
// `backward(grad_out, InputGrads&)` computing input gradients. Call only when needs_grad(inputs).
template <class T, class F, class... Inputs>
void record(Tensor<T>& out, const char* name, F&& backward, const Inputs&... inputs) {
  auto node = std::make_shared<FunctionNode<T>>(name, out.shape(),
                                                typename FunctionNode<T>::Backward(std::forward<F>(backward)));
  node->next = {edge_of(inputs)...};
  out.impl().grad_fn = std::move(node);
  out.impl().requires_grad = true;
}

// Same, for ops whose inputs are a list of tensors of one type (cat, stack).
template <class T, class F, class U>
void record_list(Tensor<T>& out, const char* name, F&& backward, const std::vector<Tensor<U>>& inputs) {
  auto node = std::make_shared<FunctionNode<T>>(name, out.shape(),
                                                typename FunctionNode<T>::Backward(std::forward<F>(backward)));
  for (const auto& in : inputs) node->next.push_back(edge_of(in));
  out.impl().grad_fn = std::move(node);
  out.impl().requires_grad = true;
}

template <class U>
bool needs_grad_list(const std::vector<Tensor<U>>& inputs) {
  if (!grad_enabled()) return false;
  for (const auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace kiln::autograd

#include "kiln/autograd/engine.hpp"
