// CUDA kernels of copies and fills (arguments kernels/elementwise/args.hpp: CastArgs, FillArgs;
// front-ends ops/copy.hpp, ops/factory.hpp, and the strided copies of ops/concat.hpp,
// ops/view.hpp and dist/collectives.hpp), on the generic map kernel:
//   cast  out = in (same shape, any strides) converted to out's type (round to nearest even, fp8
//         saturating); also clone/contiguous and strided copies when the types are equal.
//   fill  every element of out (any strides) = value.
#pragma once

#include <type_traits>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"

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

inline void launch_cast(const CastArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type("cast", a.out.dtype, [&](auto out_tag) {
    using To = decltype(out_tag);
    with_any_type("cast", a.in.dtype, [&](auto in_tag) {
      using From = decltype(in_tag);
      if constexpr (is_low_precision<To> && std::is_same_v<From, double>) {
        // double -> bf16/fp16/fp8 must round once, from the double value (as the host types do).
        launch_map<To, From>(RoundFromDouble<To>{}, a.launch.stream, a.out, a.in);
      } else {
        launch_map<To, From>(ConvertTo<To>{}, a.launch.stream, a.out, a.in);
      }
    });
  });
}

template <class T>
struct Constant {
  compute_t<T> value;
  __device__ compute_t<T> operator()() const { return value; }
};

inline void launch_fill(const FillArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type("fill", a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T>(Constant<T>{static_cast<compute_t<T>>(a.value)}, a.launch.stream, a.out);
  });
}

inline const bool copy_registered = register_device_kernel(&launch_cast) && register_device_kernel(&launch_fill);

}  // namespace kiln::kernels
