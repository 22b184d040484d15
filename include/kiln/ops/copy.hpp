// Copies: clone, contiguous, to(device), and the differentiable dtype cast.
#pragma once

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

namespace detail {
// A fresh contiguous copy of t's elements converted to U (no graph).
template <class U, class T>
Tensor<U> copy_as(const char* op, const Tensor<T>& t) {
  Tensor<U> out(t.shape(), t.device());
  if (t.device().is_cpu()) {
    cpu::map(out, t, [](const T& x) { return convert<U>(x); });
  } else {
    launch_device_kernel(op, kernels::CastArgs{.launch = launch_on(op, out.device()), .out = kernel_view(out), .in = kernel_view(t)});
  }
  return out;
}
}  // namespace detail

// dst = src element by element, dst any view whose elements are distinct (a part of a larger
// tensor: cat's slabs, autograd's gradient parts), src of the same shape, not overlapping it. Not
// recorded in the graph.
template <class T>
void copy_into(const Tensor<T>& dst, const Tensor<T>& src) {
  const char* op = "copy_into";
  check_defined(op, dst, src);
  check_same_device(op, dst, src);
  check(dst.shape() == src.shape(), op, "cannot copy a tensor of shape ", src.shape(), " into one of shape ",
        dst.shape());
  for (std::size_t i = 0; i < dst.shape().size(); ++i)
    check(dst.shape()[i] <= 1 || dst.strides()[i] != 0, op, "the destination of shape ", dst.shape(),
          " and strides ", dst.strides(), " repeats elements (a broadcast view)");
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu()) {
    cpu::map(dst, src, [](const T& x) { return x; });
  } else {
    // The cast kernel copies between any two layouts (same type: a plain strided copy).
    launch_device_kernel(op, kernels::CastArgs{.launch = launch_on(op, dst.device()), .out = kernel_view(dst),
                                               .in = kernel_view(src)});
  }
}

// Casts to element type U (rounding to nearest even into low-precision types). Differentiable:
// the gradient is cast back to T; a copy's (U = T: clone, contiguous) is the gradient itself,
// passed on without copying it (the autograd never changes a gradient it did not make: a tensor
// one backward hands to another may be held by several nodes, autograd/node.hpp). On a GPU that
// saves a copy kernel in the backward of every contiguous() of a view.
template <class U, class T>
Tensor<U> cast(const Tensor<T>& t) {
  check_defined("cast", t);
  Tensor<U> out = detail::copy_as<U>("cast", t);
  if constexpr (is_floating<U> && is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out, "cast", [](const Tensor<U>& g, const autograd::InputGrads& in) {
        if constexpr (std::is_same_v<U, T>) in.add(0, g);
        else in.add(0, detail::copy_as<T>("cast backward", g));
      }, t);
    }
  }
  return out;
}

// A contiguous copy that shares nothing with t. Differentiable.
template <class T>
Tensor<T> clone(const Tensor<T>& t) {
  return cast<T>(t);
}

// t itself when already contiguous, else a contiguous copy. Differentiable.
template <class T>
Tensor<T> contiguous(const Tensor<T>& t) {
  check_defined("contiguous", t);
  return t.is_contiguous() ? t : clone(t);
}

// A copy on `device` (t itself when already there). Differentiable: the gradient moves back.
template <class T>
Tensor<T> to(const Tensor<T>& t, Device device) {
  check_defined("to", t);
  if (t.device() == device) return t;
  const Tensor<T> src = t.device().is_cpu() ? contiguous(t.detach()) : t.detach();
  Tensor<T> out(t.shape(), device);
  if (src.is_contiguous()) {
    copy_bytes(out.data(), device, src.data(), src.device(), static_cast<std::size_t>(t.numel()) * sizeof(T));
  } else {
    // Gathered on the host; bool as bytes (std::vector<bool> packs bits and has no data()).
    using Elem = std::conditional_t<std::is_same_v<T, bool>, std::uint8_t, T>;
    const std::vector<Elem> host =
        Tensor<Elem>::view_of(src.storage(), src.offset(), src.shape(), src.strides()).to_vector();
    copy_bytes(out.data(), device, host.data(), Device::cpu(), host.size() * sizeof(Elem));
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      const Device from = t.device();
      autograd::record(out, "to", [from](const Tensor<T>& g, const autograd::InputGrads& in) {
        in.add(0, to(g, from));
      }, t);
    }
  }
  return out;
}

}  // namespace kiln

namespace kiln {
// The same data outside the graph (free-function form of Tensor::detach).
template <class T>
Tensor<T> detach(const Tensor<T>& t) {
  return t.detach();
}
}  // namespace kiln
