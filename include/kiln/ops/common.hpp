// Checks shared by the op front-ends.
#pragma once

#include "kiln/core/tensor.hpp"

namespace kiln {

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
