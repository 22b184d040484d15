// Arguments of the elementwise kernels, one struct per kernel (kernels/elementwise/<file>.cuh;
// front-ends ops/unary.hpp, binary.hpp, compare.hpp, where.hpp, copy.hpp, factory.hpp; the scalar
// math they share with the CPU is in kiln/math/).
//
// Every operand is a TensorView: any strides, already broadcast to the output's shape (stride 0
// on broadcast dims), so one shape indexes them all. All run on the generic map kernel (map.cuh)
// except swiglu's backward, which has two outputs. The element type is each view's dtype.
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"
#include "kiln/math/binary.hpp"
#include "kiln/math/compare.hpp"
#include "kiln/math/unary.hpp"

namespace kiln::kernels {

// out = op(x), computed in compute_t of the (floating) dtype of out and x.
struct UnaryForwardArgs {
  static constexpr const char* kernel = "unary forward";
  static constexpr const char* header = "kiln/kernels/elementwise/unary.cuh";
  DeviceLaunch launch;
  UnaryOp op = UnaryOp::neg;
  UnaryArgs params;  // clamp's bounds (ignored by the other ops)
  TensorView out;
  TensorView x;      // out's shape and dtype
};

// dx = g * op'(saved), saved being the forward's output y or input x (math/unary.hpp says which).
struct UnaryBackwardArgs {
  static constexpr const char* kernel = "unary backward";
  static constexpr const char* header = "kiln/kernels/elementwise/unary.cuh";
  DeviceLaunch launch;
  UnaryOp op = UnaryOp::neg;
  UnaryArgs params;  // clamp's bounds (ignored by the other ops)
  TensorView dx;
  TensorView g;      // dx's shape and dtype
  TensorView saved;  // dx's shape and dtype
};

// out = a (op) b, floating dtypes; a and b broadcast to out's shape.
struct BinaryArgs {
  static constexpr const char* kernel = "binary";
  static constexpr const char* header = "kiln/kernels/elementwise/binary.cuh";
  DeviceLaunch launch;
  BinaryOp op = BinaryOp::add;
  TensorView out;
  TensorView a;  // out's dtype, broadcast to out's shape
  TensorView b;  // out's dtype, broadcast to out's shape
};

// out (bool) = a (op) b, any dtype of a and b (the same one); a and b broadcast to out's shape.
struct CompareArgs {
  static constexpr const char* kernel = "compare";
  static constexpr const char* header = "kiln/kernels/elementwise/compare.cuh";
  DeviceLaunch launch;
  CompareOp op = CompareOp::eq;
  TensorView out;  // bool
  TensorView a;    // broadcast to out's shape
  TensorView b;    // a's dtype, broadcast to out's shape
};

// out (bool) = a (op) s: a floating a compares in its compute type with s (already rounded to a's
// type by the front-end), an integer or bool a in double.
struct CompareScalarArgs {
  static constexpr const char* kernel = "compare scalar";
  static constexpr const char* header = "kiln/kernels/elementwise/compare.cuh";
  DeviceLaunch launch;
  CompareOp op = CompareOp::eq;
  TensorView out;  // bool
  TensorView a;    // out's shape
  double s = 0;    // the scalar
};

// out = a (op) b over bools; logical_not reads a only.
struct LogicalArgs {
  static constexpr const char* kernel = "logical";
  static constexpr const char* header = "kiln/kernels/elementwise/compare.cuh";
  DeviceLaunch launch;
  LogicalOp op = LogicalOp::logical_not;
  TensorView out;  // bool
  TensorView a;    // bool, broadcast to out's shape
  TensorView b;    // bool, broadcast to out's shape; absent for logical_not
};

// out = in converted to out's dtype (round to nearest even, fp8 saturating), between any two
// layouts of one shape: also the strided copy of clone, contiguous, cat and slice backward.
struct CastArgs {
  static constexpr const char* kernel = "cast";
  static constexpr const char* header = "kiln/kernels/elementwise/copy.cuh";
  DeviceLaunch launch;
  TensorView out;
  TensorView in;  // out's shape, any dtype
};

// Every element of out (any strides) = value.
struct FillArgs {
  static constexpr const char* kernel = "fill";
  static constexpr const char* header = "kiln/kernels/elementwise/copy.cuh";
  DeviceLaunch launch;
  TensorView out;
  double value = 0;  // exactly representable in out's dtype (the front-end converts it)
};

// out = cond ? a : b, any dtype; cond, a and b broadcast to out's shape.
struct WhereArgs {
  static constexpr const char* kernel = "where";
  static constexpr const char* header = "kiln/kernels/elementwise/where.cuh";
  DeviceLaunch launch;
  TensorView out;
  TensorView cond;  // bool, broadcast to out's shape
  TensorView a;     // out's dtype, broadcast to out's shape
  TensorView b;     // out's dtype, broadcast to out's shape
};

// out = mask ? value : t, any dtype; mask broadcast to out's shape.
struct MaskedFillArgs {
  static constexpr const char* kernel = "masked_fill";
  static constexpr const char* header = "kiln/kernels/elementwise/where.cuh";
  DeviceLaunch launch;
  TensorView out;
  TensorView t;      // out's shape and dtype
  TensorView mask;   // bool, broadcast to out's shape
  double value = 0;  // already rounded to out's dtype
};

// out = silu(gate) * up, floating dtypes, all three of one shape (any strides).
struct SwigluForwardArgs {
  static constexpr const char* kernel = "swiglu forward";
  static constexpr const char* header = "kiln/kernels/elementwise/swiglu.cuh";
  DeviceLaunch launch;
  TensorView out;
  TensorView gate;  // out's shape and dtype
  TensorView up;    // out's shape and dtype
};

// Both gradients of swiglu in one pass; all five operands of one shape and dtype (any strides).
struct SwigluBackwardArgs {
  static constexpr const char* kernel = "swiglu backward";
  static constexpr const char* header = "kiln/kernels/elementwise/swiglu.cuh";
  DeviceLaunch launch;
  TensorView d_gate;  // dL/dgate
  TensorView d_up;    // dL/dup
  TensorView g;       // dL/dout
  TensorView gate;
  TensorView up;
};

}  // namespace kiln::kernels
