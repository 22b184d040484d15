// Tensor<T>: a typed, reference-counted view (offset, shape, strides) over a Storage on a device,
// plus the autograd fields (requires_grad, grad, the node that produced it).
//
// Copying a Tensor copies the handle, not the data: like a shared_ptr. Views (reshape, transpose,
// narrow, expand, ...) make a new handle over the same storage. Ops are free functions in
// kiln/ops/; this class only holds the metadata and gives element access.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "kiln/core/device.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/shape.hpp"
#include "kiln/core/storage.hpp"

namespace kiln {

namespace autograd {
class Node;
template <class T>
class TypedNode;
template <class T>
class AccumulateGrad;
}  // namespace autograd

template <class T>
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  std::int64_t offset = 0;  // in elements
  Shape shape;
  Strides strides;

  bool requires_grad = false;
  // The node that produced this tensor (null for leaves and for tensors outside any graph).
  std::shared_ptr<autograd::TypedNode<T>> grad_fn;
  // Leaves that require grad: the node that adds incoming gradients into `grad`.
  std::shared_ptr<autograd::AccumulateGrad<T>> accumulator;
  std::shared_ptr<TensorImpl<T>> grad;
  // A part of a gradient that a joining op's backward (cat, concat_as) carved from a tensor nothing
  // else held: its storage is shared only with the other parts, and no two parts overlap, so it
  // may become a leaf's gradient as is (autograd::sole_owner).
  bool disjoint_part = false;
};

template <class T>
class Tensor {
 public:
  using value_type = T;

  Tensor() = default;

  // An uninitialised tensor of the given shape (use kiln::zeros etc. for initialised ones).
  explicit Tensor(const Shape& shape, Device device = Device::cpu()) {
    const std::int64_t n = allocatable_numel("Tensor", shape, sizeof(T));
    impl_ = std::make_shared<TensorImpl<T>>();
    impl_->storage = std::make_shared<Storage>(sizeof(T) * static_cast<std::size_t>(n), device);
    impl_->shape = shape;
    impl_->strides = contiguous_strides(shape);
  }

  // A view over `storage` (shared with other tensors).
  static Tensor view_of(std::shared_ptr<Storage> storage, std::int64_t offset, Shape shape,
                        Strides strides) {
    Tensor t;
    t.impl_ = std::make_shared<TensorImpl<T>>();
    t.impl_->storage = std::move(storage);
    t.impl_->offset = offset;
    t.impl_->shape = std::move(shape);
    t.impl_->strides = std::move(strides);
    return t;
  }

  // A CPU tensor holding a copy of `values` (row-major), moved to `device`.
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            Device device = Device::cpu()) {
    check(numel_of(shape) == static_cast<std::int64_t>(values.size()), "from_vector", "shape ", shape,
          " has ", numel_of(shape), " elements but ", values.size(), " values were given");
    Tensor t(shape, device);
    if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> packs bits: go through bytes
      const std::vector<std::uint8_t> bytes(values.begin(), values.end());
      copy_bytes(t.data(), device, bytes.data(), Device::cpu(), bytes.size());
    } else {
      copy_bytes(t.data(), device, values.data(), Device::cpu(), values.size() * sizeof(T));
    }
    return t;
  }

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  std::int64_t dim() const { return static_cast<std::int64_t>(impl().shape.size()); }
  std::int64_t size(std::int64_t d) const { return shape()[normalize_dim("size", d, shape().size())]; }
  std::int64_t stride(std::int64_t d) const {
    return strides()[normalize_dim("stride", d, shape().size())];
  }
  std::int64_t numel() const { return numel_of(shape()); }
  std::int64_t offset() const { return impl().offset; }
  Device device() const { return impl().storage->device(); }
  static constexpr DType dtype() { return dtype_of<T>; }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }

  // Row-major contiguous (size-1 dimensions may have any stride).
  bool is_contiguous() const {
    if (numel() == 0) return true;
    std::int64_t expected = 1;
    for (std::size_t i = shape().size(); i-- > 0;) {
      if (shape()[i] == 1) continue;
      if (strides()[i] != expected) return false;
      expected *= shape()[i];
    }
    return true;
  }

  // Pointer to the first element, in the tensor's own device memory.
  T* data() const { return static_cast<T*>(impl().storage->data()) + impl().offset; }

  // Element access by index (any device; copies one element for GPU tensors). For tests, debugging
  // and small host-side code, not for loops over large tensors.
  T at(std::initializer_list<std::int64_t> index) const {
    check(static_cast<std::int64_t>(index.size()) == dim(), "at", "index of ", index.size(),
          " coordinates for a tensor of shape ", shape());
    std::int64_t off = 0;
    std::size_t d = 0;
    for (auto i : index) {
      check(i >= -shape()[d] && i < shape()[d], "at", "index ", i, " out of range for dim ", d,
            " of shape ", shape());
      off += (i < 0 ? i + shape()[d] : i) * strides()[d];
      ++d;
    }
    T value;
    copy_bytes(&value, Device::cpu(), data() + off, device(), sizeof(T));
    return value;
  }

  T item() const {
    check(numel() == 1, "item", "expected a tensor with one element, got shape ", shape());
    T value;
    copy_bytes(&value, Device::cpu(), data(), device(), sizeof(T));
    return value;
  }

  // The elements in row-major order (a copy; works for any strides and device).
  std::vector<T> to_vector() const;

  // ---- autograd ----
  bool requires_grad() const { return impl().requires_grad; }
  // Marks a leaf as a parameter to differentiate with respect to.
  Tensor& requires_grad_(bool value = true) {
    check(!impl().grad_fn || value, "requires_grad_",
          "cannot turn off requires_grad on a non-leaf tensor; use detach()");
    if (value) check(is_floating<T>, "requires_grad_", "only floating tensors can require grad, got ", dtype());
    impl().requires_grad = value;
    return *this;
  }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<autograd::TypedNode<T>>& grad_fn() const { return impl().grad_fn; }

  // The accumulated gradient (undefined until a backward pass reached this leaf).
  Tensor grad() const {
    Tensor g;
    g.impl_ = impl().grad;
    return g;
  }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  // Drops the accumulated gradient (the next backward starts from nothing).
  void zero_grad() { impl().grad.reset(); }

  // The same data, cut from the graph: no grad_fn, requires_grad false.
  Tensor detach() const {
    return view_of(impl().storage, impl().offset, impl().shape, impl().strides);
  }

  // Back-propagates from this scalar (gradient 1) or with an explicit output gradient.
  void backward() const;
  void backward(const Tensor& grad_output) const;

  const std::shared_ptr<TensorImpl<T>>& impl_ptr() const { return impl_; }
  TensorImpl<T>& impl() const {
    if (!impl_) throw Error("kiln::Tensor: use of an undefined (default-constructed) tensor");
    return *impl_;
  }

 private:
  std::shared_ptr<TensorImpl<T>> impl_;
};

template <class T>
std::vector<T> Tensor<T>::to_vector() const {
  if constexpr (std::is_same_v<T, bool>) {
    // std::vector<bool> packs bits and has no data(): read the one-byte bools as bytes.
    static_assert(sizeof(bool) == 1);
    const std::vector<std::uint8_t> bytes =
        Tensor<std::uint8_t>::view_of(impl().storage, impl().offset, impl().shape, impl().strides).to_vector();
    return std::vector<bool>(bytes.begin(), bytes.end());
  } else {
    std::vector<T> out(static_cast<std::size_t>(numel()));
    if (out.empty()) return out;
    if (is_contiguous()) {
      copy_bytes(out.data(), Device::cpu(), data(), device(), out.size() * sizeof(T));
      return out;
    }
    // Copy the whole span the view touches to the host, then gather with the strides.
    std::int64_t lo = 0, hi = 0;
    for (std::size_t d = 0; d < shape().size(); ++d) {
      const std::int64_t extent = (shape()[d] - 1) * strides()[d];
      (extent < 0 ? lo : hi) += extent;
    }
    std::vector<T> span(static_cast<std::size_t>(hi - lo + 1));
    copy_bytes(span.data(), Device::cpu(), data() + lo, device(), span.size() * sizeof(T));
    std::vector<std::int64_t> index(shape().size(), 0);
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::int64_t off = -lo;
      for (std::size_t d = 0; d < index.size(); ++d) off += index[d] * strides()[d];
      out[i] = span[static_cast<std::size_t>(off)];
      for (std::size_t d = index.size(); d-- > 0;) {
        if (++index[d] < shape()[d]) break;
        index[d] = 0;
      }
    }
    return out;
  }
}

}  // namespace kiln

#include "kiln/autograd/node.hpp"
