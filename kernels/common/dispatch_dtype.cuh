// Launchers that dispatch on a runtime DType: with_floating_type(op, dtype, f) calls f(T{}) with
// the element type that dtype names, so a launcher instantiates its kernel once per type. A dtype
// with no kernel gets a kiln::Error naming the op. Host code (g++ compiles it too).
#pragma once

#include <cstdint>

#include "kiln/core/dtype.hpp"
#include "kiln/core/error.hpp"

namespace kiln::kernels {

// Calls f(T{}) with the element type named by `dtype` (floating types).
template <class F>
void with_floating_type(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16{}); return;
    case DType::f16: f(fp16{}); return;
    default: fail(op, "has no CUDA kernel for dtype ", dtype);
  }
}

// Same, for every element type kiln has.
template <class F>
void with_any_type(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::fp8_e4m3: f(fp8_e4m3{}); return;
    case DType::fp8_e5m2: f(fp8_e5m2{}); return;
    case DType::i32: f(std::int32_t{}); return;
    case DType::i64: f(std::int64_t{}); return;
    case DType::u8: f(std::uint8_t{}); return;
    case DType::boolean: f(bool{}); return;
    default: with_floating_type(op, dtype, f);
  }
}

}  // namespace kiln::kernels
