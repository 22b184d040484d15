// The scalar math of kiln::swiglu (front-end ops/unary.hpp, CUDA kernels
// kernels/elementwise/swiglu.cuh): silu(gate) * up, and both partial derivatives in one
// evaluation. KILN_HD, shared by the CPU loops and the CUDA kernels; g++ compiles this header.
#pragma once

#include "kiln/core/low_precision.hpp"
#include "kiln/math/unary.hpp"

namespace kiln::math {

// Evaluated as (gate * s) * up with s = sigmoid(gate): in float and double this is bit for bit
// what silu(gate) followed by mul(., up) computes, only without the intermediate tensor.
struct Swiglu {
  template <class C>
  KILN_HD C operator()(C gate, C up) const {
    return gate * sigmoid_of(gate) * up;
  }
};
template <class C>
struct SwigluGrads {
  C gate, up;
};
// d/dgate = dy * up * silu'(gate) = SiluGrad at (dy * up, gate); d/dup = dy * silu(gate).
struct SwigluGrad {
  template <class C>
  KILN_HD SwigluGrads<C> operator()(C dy, C gate, C up) const {
    const C s = sigmoid_of(gate);
    return {dy * up * s * (C(1) + gate * (C(1) - s)), dy * (gate * s)};
  }
};

}  // namespace kiln::math
