// Checks shared by the op front-ends, and the views of tensors that they hand to device kernels.
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln {

// t's data, dtype, and the given shape and strides, as a kernel argument.
template <class T>
kernels::TensorView kernel_view_as(const Tensor<T>& t, const Shape& shape, const Strides& strides) {
  check(shape.size() <= static_cast<std::size_t>(kMaxDims), "device kernel", "tensors of more than ", kMaxDims,
        " dims are not supported on ", t.device(), ", got shape ", shape);
  kernels::TensorView v;
  v.data = t.data();
  v.dtype = dtype_of<T>;
  v.ndim = static_cast<int>(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d) {
    v.shape[d] = shape[d];
    v.strides[d] = strides[d];
  }
  return v;
}

// t as it is; an undefined t gives an absent view (null data).
template <class T>
kernels::TensorView kernel_view(const Tensor<T>& t) {
  if (!t.defined()) return {};
  return kernel_view_as(t, t.shape(), t.strides());
}

// t broadcast to `shape` (stride 0 on broadcast dims).
template <class T>
kernels::TensorView kernel_broadcast_view(const Tensor<T>& t, const Shape& shape) {
  return kernel_view_as(t, shape, broadcast_strides(t.shape(), t.strides(), shape));
}

template <class T, class... Rest>
void check_same_device(const char* op, const Tensor<T>& first, const Rest&... rest) {
  const Device d = first.device();
  ((rest.device() == d ? void() : fail(op, "tensors on different devices: ", d, " (shape ", first.shape(),
                                       ") and ", rest.device(), " (shape ", rest.shape(), ")")),
   ...);
}

template <class... Ts>
void check_defined(const char* op, const Ts&... ts) {
  ((ts.defined() ? void() : fail(op, "undefined (default-constructed) tensor argument")), ...);
}

// Until a device has a kernel for an op, the op says so instead of computing garbage.
template <class T>
void check_cpu(const char* op, const Tensor<T>& t) {
  if (!t.device().is_cpu()) fail(op, "has no kernel for ", t.device(), " yet (tensor of shape ", t.shape(), ")");
}

}  // namespace kiln
