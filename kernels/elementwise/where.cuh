// CUDA entries for selection by a mask (ops/where.hpp), on the generic map kernel:
//   "where"       tensors {out, cond, a, b} (broadcast to out's shape): out = cond ? a : b
//   "masked_fill" tensors {out, t, mask} (mask broadcast), reals {value}: out = mask ? value : t
// Element types: every kiln type (where also selects int64 indices); masks are one-byte bools.
//
// Memory traffic per element: one byte of mask plus sizeof(T) for each value operand read and
// for the output. The vector width follows the widest operand (map.cuh): for float a thread reads
// 4 mask bytes and 16 bytes of each value operand. Values go through load()/store(), which is
// exact for every value of every type (only NaN payloads become the canonical NaN).
#pragma once

#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"

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

inline void where_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  with_any_type("where", out.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, bool, T, T>(Select{}, cuda::current_stream(out.device), out, call.tensors[1], call.tensors[2],
                              call.tensors[3]);
  });
}

inline void masked_fill_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  with_any_type("masked_fill", out.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    launch_map<T, T, bool>(FillWhere<C>{static_cast<C>(call.reals[0])}, cuda::current_stream(out.device), out,
                           call.tensors[1], call.tensors[2]);
  });
}

inline const bool where_registered =
    register_device_kernel("where", where_entry) && register_device_kernel("masked_fill", masked_fill_entry);

}  // namespace kiln::kernels
