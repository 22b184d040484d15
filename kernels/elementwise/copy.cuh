// CUDA entries for copies and fills (ops/copy.hpp, ops/factory.hpp):
//   "cast": tensors {out, in} (any strides, same shape), converts element types (round to nearest
//           even, fp8 saturating) — also serves clone/contiguous when the types are equal.
//   "fill": tensors {out} (any strides), reals {value}.
#pragma once

#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"

namespace kiln::kernels {

template <class To>
struct ConvertTo {
  template <class C>
  __device__ auto operator()(C x) const {
    // Through the compute type of To: float for low-precision targets (store() rounds once).
    return static_cast<compute_t<To>>(x);
  }
};

// double -> low precision, rounded once from the double (the result is exact in float, so the
// store() that follows does not round again).
template <class To>
struct RoundFromDouble {
  __device__ float operator()(double x) const {
    if constexpr (std::is_same_v<To, bf16>) return __bfloat162float(__double2bfloat16(x));
    else if constexpr (std::is_same_v<To, fp16>) return __half2float(__double2half(x));
    else return static_cast<float>(To(x));
  }
};

inline void cast_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const TensorArg& in = call.tensors[1];
  with_any_type("cast", out.dtype, [&](auto out_tag) {
    using To = decltype(out_tag);
    with_any_type("cast", in.dtype, [&](auto in_tag) {
      using From = decltype(in_tag);
      if constexpr (is_low_precision<To> && std::is_same_v<From, double>) {
        // double -> bf16/fp16/fp8 must round once, from the double value (as the host types do).
        launch_map<To, From>(RoundFromDouble<To>{}, cuda::current_stream(out.device), out, in);
      } else {
        launch_map<To, From>(ConvertTo<To>{}, cuda::current_stream(out.device), out, in);
      }
    });
  });
}

template <class T>
struct Constant {
  compute_t<T> value;
  __device__ compute_t<T> operator()() const { return value; }
};

inline void fill_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  with_any_type("fill", out.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>(Constant<T>{static_cast<compute_t<T>>(call.reals[0])}, cuda::current_stream(out.device), out);
  });
}

inline const bool copy_registered = register_device_kernel("cast", cast_entry) && register_device_kernel("fill", fill_entry);

}  // namespace kiln::kernels
