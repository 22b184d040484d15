// CUDA kernels of selection by a mask (arguments kernels/elementwise/args.hpp: WhereArgs,
// MaskedFillArgs; front-end ops/where.hpp), on the generic map kernel:
//   where        out = cond ? a : b (cond, a, b broadcast to out's shape)
//   masked_fill  out = mask ? value : t (mask broadcast)
// Element types: every kiln type (where also selects int64 indices); masks are one-byte bools.
//
// Memory traffic per element: one byte of mask plus sizeof(T) for each value operand read and
// for the output. The vector width follows the widest operand (map.cuh): for float a thread reads
// 4 mask bytes and 16 bytes of each value operand. Values go through load()/store(), which is
// exact for every value of every type (only NaN payloads become the canonical NaN).
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"

namespace kiln::kernels {

struct Select {
  template <class C>
  __device__ C operator()(bool c, C x, C y) const {
    return c ? x : y;
  }
};

template <class C>
struct FillWhere {
  C value;
  __device__ C operator()(C x, bool m) const { return m ? value : x; }
};

inline void launch_where(const WhereArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type("where", a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, bool, T, T>(Select{}, a.launch.stream, a.out, a.cond, a.a, a.b);
  });
}

inline void launch_masked_fill(const MaskedFillArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type("masked_fill", a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    launch_map<T, T, bool>(FillWhere<C>{static_cast<C>(a.value)}, a.launch.stream, a.out, a.t, a.mask);
  });
}

inline const bool where_registered =
    register_device_kernel(&launch_where) && register_device_kernel(&launch_masked_fill);

}  // namespace kiln::kernels
