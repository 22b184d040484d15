// Scalar math of the rotary position embedding shared by the CPU tables (ops/rope.hpp) and the CUDA
// tables kernel (kernels/rope/rope.cuh): the inverse frequency of each feature pair. Host code;
// g++ compiles this header alone.
#pragma once

#include <cmath>
#include <cstdint>

namespace kiln::math {

// inv_freq[i] = theta^(-2i/D) for feature pair i of a head of D features, in double. Both devices
// compute it on the host with the same pow: the device's pow may differ in the last bit, and an
// angle of position * inv_freq (positions up to 1e5 and more) turns that bit into a visible
// difference in sin/cos.
inline double rope_inv_freq(double theta, std::int64_t i, std::int64_t head_dim) {
  return std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}

}  // namespace kiln::math
