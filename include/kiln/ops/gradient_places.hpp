// Gradients where their inputs lay. When an op's input is a view of a larger tensor (a column
// range of one projection's output: MLA's q_nope, k_nope and v, its q_a and latent, a SwiGLU MLP's
// gate and up halves), its backward can write that input's gradient at the input's own offset
// and strides in a fresh storage the size of the input's storage. The view ops between the input
// and the tensor it was cut from (narrow, split, transpose, reshape) then hand that tensor's node
// its gradient as parts already in their places, and the split takes them without copying
// (autograd/node.hpp, in_place_gradient). Inputs on one storage share one gradient storage, so a
// split whose parts all come from one backward (gate | up) costs no copy at all; one whose parts
// come from several backwards (q_a | latent) keeps one storage and copies the others' parts in.
//
// An input gets a contiguous gradient of its own instead when its place cannot be reused:
//   - inputs of one storage that are not disjoint column ranges of the same rows (the same tensor
//     twice; an expanded view, stride 0, whose gradient has one value per broadcast element);
//   - a last dim that is not contiguous;
//   - a storage more than 8 times the size of its inputs (a view into something much larger: the
//     fresh storage would cost more than the copy it saves);
//   - what the op's kernels cannot write (the `placeable` predicate: attention's 16-byte rules).
// The elements of the fresh storage outside the inputs are left unwritten: the settle copies the
// split's other parts over them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/core/shape.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::detail {

struct GradientPlace {
  int storage = -1;  // the plan's storage it lies in; -1: a contiguous tensor of its own
  std::int64_t offset = 0;
  Strides strides;
};
struct GradientPlan {
  std::vector<std::size_t> storage_bytes;
  std::vector<GradientPlace> places;  // one per input
};

struct AnyPlace {
  template <class T>
  bool operator()(const Tensor<T>&) const {
    return true;
  }
};

// Whether inputs `group` (all on one storage, in increasing offset) can have their gradients where
// they lie: the same rank, sizes and strides but for the last dim, which is contiguous; disjoint
// column ranges of each row; rows ("slots" from the first input's first column to the last one's
// last) that do not overlap and stay inside the storage; the storage at most 8 times the inputs.
template <class T, class Placeable>
bool gradients_fit_in_place(const std::vector<Tensor<T>>& inputs, const std::vector<std::size_t>& group,
                            const Placeable& placeable) {
  const Tensor<T>& first = inputs[group.front()];
  const Tensor<T>& last = inputs[group.back()];
  const std::size_t rank = first.shape().size();
  if (rank == 0) return false;
  std::int64_t elements = 0;
  for (std::size_t k = 0; k < group.size(); ++k) {
    const Tensor<T>& t = inputs[group[k]];
    if (!placeable(t) || t.shape().size() != rank || (t.shape().back() > 1 && t.strides().back() != 1)) return false;
    for (std::size_t d = 0; d + 1 < rank; ++d)
      if (t.shape()[d] != first.shape()[d] || (t.shape()[d] > 1 && t.strides()[d] != first.strides()[d])) return false;
    if (k > 0) {
      const Tensor<T>& previous = inputs[group[k - 1]];
      if (previous.offset() + previous.shape().back() > t.offset()) return false;  // overlapping columns
    }
    elements += t.numel();
  }
  Shape slot_shape = first.shape();
  Strides slot_strides = first.strides();
  slot_shape.back() = last.offset() + last.shape().back() - first.offset();
  slot_strides.back() = 1;
  const std::int64_t extent = distinct_elements_extent(slot_shape, slot_strides);
  const auto storage_elements = static_cast<std::int64_t>(first.storage()->nbytes() / sizeof(T));
  return extent > 0 && first.offset() + extent <= storage_elements && storage_elements <= 8 * elements;
}

// Where each input's gradient will lie: inputs on one storage that fit (above) share a fresh
// storage of that storage's size, each at its input's offset and strides.
template <class T, class Placeable = AnyPlace>
GradientPlan plan_gradient_places(const std::vector<Tensor<T>>& inputs, const Placeable& placeable = {}) {
  GradientPlan plan;
  plan.places.resize(inputs.size());
  std::vector<bool> grouped(inputs.size(), false);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (grouped[i]) continue;
    std::vector<std::size_t> group;  // the inputs on i's storage
    for (std::size_t j = i; j < inputs.size(); ++j) {
      if (inputs[j].storage() != inputs[i].storage()) continue;
      group.push_back(j);
      grouped[j] = true;
    }
    std::sort(group.begin(), group.end(),
              [&](std::size_t a, std::size_t b) { return inputs[a].offset() < inputs[b].offset(); });
    if (!gradients_fit_in_place(inputs, group, placeable)) continue;
    const int storage = static_cast<int>(plan.storage_bytes.size());
    plan.storage_bytes.push_back(inputs[i].storage()->nbytes());
    for (const std::size_t j : group) plan.places[j] = {storage, inputs[j].offset(), inputs[j].strides()};
  }
  return plan;
}

// The gradient tensors of a plan, of the inputs' shapes, on `device` (uninitialised: the kernels
// write every element of each).
template <class T>
std::vector<Tensor<T>> gradient_tensors(const GradientPlan& plan, const std::vector<Shape>& shapes, Device device) {
  std::vector<std::shared_ptr<Storage>> storages;
  for (const std::size_t bytes : plan.storage_bytes) storages.push_back(std::make_shared<Storage>(bytes, device));
  std::vector<Tensor<T>> grads;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const GradientPlace& p = plan.places[i];
    grads.push_back(p.storage < 0 ? Tensor<T>(shapes[i], device)
                                  : Tensor<T>::view_of(storages[static_cast<std::size_t>(p.storage)], p.offset,
                                                       shapes[i], p.strides));
  }
  return grads;
}

// Both steps for inputs whose gradients have their shapes, on their device.
template <class T, class Placeable = AnyPlace>
std::vector<Tensor<T>> gradients_where_inputs_lay(const std::vector<Tensor<T>>& inputs,
                                                  const Placeable& placeable = {}) {
  std::vector<Shape> shapes;
  for (const Tensor<T>& t : inputs) shapes.push_back(t.shape());
  return gradient_tensors<T>(plan_gradient_places(inputs, placeable), shapes, inputs.front().device());
}

}  // namespace kiln::detail
