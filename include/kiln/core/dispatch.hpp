// How op front-ends reach device kernels without the core depending on CUDA.
//
// An op whose tensors live on a GPU packs them as TensorArg (pointer, dtype, shape, strides) into
// a KernelCall and runs the device kernel registered under a name ("binary", "softmax", ...).
// The CUDA backend (include/kiln/backend/cuda.hpp, compiled by nvcc) registers its kernels at
// static-initialisation time. The registry is an inline function's static, so every translation
// unit — g++ or nvcc — sees one registry and the same definitions (the One Definition Rule).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln {


// A tensor as a kernel sees it. Broadcast operands are passed already expanded to the output's
// shape (stride 0 on broadcast dims), so a kernel indexes every operand with one shape.
struct TensorArg {
  void* data = nullptr;
  DType dtype = DType::f32;
  int device = 0;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[kMaxDims] = {};

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  bool is_contiguous() const {
    if (numel() == 0) return true;
    std::int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] == 1) continue;
      if (strides[d] != expected) return false;
      expected *= shape[d];
    }
    return true;
  }
};

template <class T>
TensorArg tensor_arg(const Tensor<T>& t, const Shape& shape, const Strides& strides) {
  check(shape.size() <= static_cast<std::size_t>(kMaxDims), "device kernel", "tensors of more than ", kMaxDims,
        " dims are not supported on ", t.device(), ", got shape ", shape);
  TensorArg a;
  a.data = t.data();
  a.dtype = dtype_of<T>;
  a.device = t.device().index;
  a.ndim = static_cast<int>(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d) {
    a.shape[d] = shape[d];
    a.strides[d] = strides[d];
  }
  return a;
}

// t as it is.
template <class T>
TensorArg tensor_arg(const Tensor<T>& t) {
  return tensor_arg(t, t.shape(), t.strides());
}

// t broadcast to `shape` (stride 0 on broadcast dims).
template <class T>
TensorArg broadcast_arg(const Tensor<T>& t, const Shape& shape) {
  return tensor_arg(t, shape, broadcast_strides(t.shape(), t.strides(), shape));
}

struct KernelCall {
  std::vector<TensorArg> tensors;  // outputs first, then inputs; each kernel documents its order
  std::vector<double> reals;       // scalar parameters
  std::vector<std::int64_t> ints;  // integer parameters (op codes, dims, flags)
};

using NamedDeviceKernel = void (*)(const KernelCall&);

inline std::unordered_map<std::string, NamedDeviceKernel>& device_kernels() {
  static std::unordered_map<std::string, NamedDeviceKernel> registry;
  return registry;
}

inline bool register_device_kernel(const std::string& name, NamedDeviceKernel kernel) {
  device_kernels()[name] = kernel;
  return true;
}

// Runs the device kernel `kernel` for op `op`; a clear error when no backend provides it.
inline void run_device_kernel(const char* op, const std::string& kernel, const KernelCall& call) {
  auto& registry = device_kernels();
  auto it = registry.find(kernel);
  if (it == registry.end()) {
    if (!cuda_backend())
      fail(op, "got a CUDA tensor but no CUDA backend is registered: include <kiln/backend/cuda.hpp> in a file compiled by nvcc");
    fail(op, "has no CUDA kernel '", kernel, "'");
  }
  it->second(call);
}

}  // namespace kiln
