// The element types a Tensor<T> may hold and their runtime tags.
#pragma once

#include <cstdint>
#include <ostream>
#include <type_traits>

#include "kiln/core/low_precision.hpp"

namespace kiln {

enum class DType { f32, f64, bf16, f16, fp8_e4m3, fp8_e5m2, i32, i64, u8, boolean };

template <class T>
struct dtype_traits;  // undefined for unsupported element types

#define KILN_DTYPE(T, TAG, NAME)                          \
  template <>                                              \
  struct dtype_traits<T> {                                 \
    static constexpr DType tag = DType::TAG;               \
    static constexpr const char* name = NAME;              \
  };
KILN_DTYPE(float, f32, "float32")
KILN_DTYPE(double, f64, "float64")
KILN_DTYPE(bf16, bf16, "bfloat16")
KILN_DTYPE(fp16, f16, "float16")
KILN_DTYPE(fp8_e4m3, fp8_e4m3, "float8_e4m3")
KILN_DTYPE(fp8_e5m2, fp8_e5m2, "float8_e5m2")
KILN_DTYPE(std::int32_t, i32, "int32")
KILN_DTYPE(std::int64_t, i64, "int64")
KILN_DTYPE(std::uint8_t, u8, "uint8")
KILN_DTYPE(bool, boolean, "bool")
#undef KILN_DTYPE

template <class T>
constexpr DType dtype_of = dtype_traits<T>::tag;

template <class T>
constexpr const char* dtype_name = dtype_traits<T>::name;

// Bytes per element of a runtime dtype.
constexpr int dtype_size(DType d) {
  switch (d) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    default: return 1;  // fp8_e4m3, fp8_e5m2, u8, boolean
  }
}

// Types stored in fewer bits than they compute in: arithmetic on them goes through float.
template <class T>
constexpr bool is_low_precision =
    std::is_same_v<T, bf16> || std::is_same_v<T, fp16> || std::is_same_v<T, fp8_e4m3> ||
    std::is_same_v<T, fp8_e5m2>;

template <class T>
constexpr bool is_floating = std::is_floating_point_v<T> || is_low_precision<T>;

// The type arithmetic on T is carried out in.
template <class T>
using compute_t = std::conditional_t<is_low_precision<T>, float, T>;

// Converts between any two element types (low-precision types round to nearest even).
template <class To, class From>
To convert(const From& x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (is_low_precision<From>) {
    return convert<To>(static_cast<double>(x));
  } else if constexpr (is_low_precision<To>) {
    return To(static_cast<double>(x));
  } else {
    return static_cast<To>(x);
  }
}

inline const char* dtype_name_of(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::fp8_e4m3: return "float8_e4m3";
    case DType::fp8_e5m2: return "float8_e5m2";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::boolean: return "bool";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& os, DType d) { return os << dtype_name_of(d); }

}  // namespace kiln
