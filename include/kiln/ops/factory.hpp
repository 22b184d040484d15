// Tensor factories: empty, zeros, ones, full, arange, rand, randn, tensor (from values).
#pragma once

#include <cmath>
#include <initializer_list>

#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/core/random.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

template <class T>
Tensor<T> empty(const Shape& shape, Device device = Device::cpu()) {
  return Tensor<T>(shape, device);
}

template <class T>
Tensor<T> full(const Shape& shape, T value, Device device = Device::cpu()) {
  Tensor<T> t(shape, device);
  if (device.is_cpu()) {
    cpu::fill(t, value);
  } else {
    launch_device_kernel("full", kernels::FillArgs{.launch = launch_on("full", device),
                                                   .out = kernel_view(t),
                                                   .value = static_cast<double>(value)});
  }
  return t;
}

template <class T>
Tensor<T> zeros(const Shape& shape, Device device = Device::cpu()) {
  return full<T>(shape, convert<T>(0.0), device);
}

template <class T>
Tensor<T> ones(const Shape& shape, Device device = Device::cpu()) {
  return full<T>(shape, convert<T>(1.0), device);
}

template <class T>
Tensor<T> full_like(const Tensor<T>& t, T value) {
  return full<T>(t.shape(), value, t.device());
}
template <class T>
Tensor<T> zeros_like(const Tensor<T>& t) {
  return zeros<T>(t.shape(), t.device());
}
template <class T>
Tensor<T> ones_like(const Tensor<T>& t) {
  return ones<T>(t.shape(), t.device());
}

// A 1-D or n-D tensor from values given row-major: kiln::tensor<float>({1, 2, 3, 4}, {2, 2}).
template <class T>
Tensor<T> tensor(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu()) {
  return Tensor<T>::from_vector(values, shape, device);
}
template <class T>
Tensor<T> tensor(const std::vector<T>& values) {
  return Tensor<T>::from_vector(values, {static_cast<std::int64_t>(values.size())});
}

// [start, start + step, ...) up to but excluding `end`.
template <class T>
Tensor<T> arange(double start, double end, double step = 1.0, Device device = Device::cpu()) {
  check(step != 0.0, "arange", "step must be non-zero");
  const double count = std::ceil((end - start) / step);
  const std::int64_t n = count > 0 ? static_cast<std::int64_t>(count) : 0;
  std::vector<T> values(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) values[static_cast<std::size_t>(i)] = convert<T>(start + static_cast<double>(i) * step);
  return Tensor<T>::from_vector(values, {n}, device);
}
template <class T>
Tensor<T> arange(double end) {
  return arange<T>(0.0, end);
}

namespace detail {
template <class T, class Draw>
Tensor<T> random_tensor(const Shape& shape, Device device, Generator& gen, Draw draw) {
  check_shape("random", shape);
  const std::int64_t n = numel_of(shape);
  const std::uint64_t first = gen.take(static_cast<std::uint64_t>(n));
  Tensor<T> host(shape);
  T* p = host.data();
  cpu::parallel_for(n, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) p[i] = convert<T>(draw(gen.seed, first + static_cast<std::uint64_t>(i)));
  });
  if (device.is_cpu()) return host;
  Tensor<T> t(shape, device);
  copy_bytes(t.data(), device, host.data(), Device::cpu(), static_cast<std::size_t>(n) * sizeof(T));
  return t;
}
}  // namespace detail

// Uniform on [low, high).
template <class T>
Tensor<T> rand(const Shape& shape, double low = 0.0, double high = 1.0, Device device = Device::cpu(),
               Generator& gen = default_generator()) {
  return detail::random_tensor<T>(shape, device, gen, [low, high](std::uint64_t seed, std::uint64_t i) {
    return low + (high - low) * uniform_at(seed, i);
  });
}

// Normal with the given mean and standard deviation.
template <class T>
Tensor<T> randn(const Shape& shape, double mean = 0.0, double stddev = 1.0, Device device = Device::cpu(),
                Generator& gen = default_generator()) {
  return detail::random_tensor<T>(shape, device, gen, [mean, stddev](std::uint64_t seed, std::uint64_t i) {
    return mean + stddev * normal_at(seed, i);
  });
}

// Integers uniform on [low, high).
template <class T>
Tensor<T> randint(std::int64_t low, std::int64_t high, const Shape& shape, Device device = Device::cpu(),
                  Generator& gen = default_generator()) {
  check(high > low, "randint", "empty range [", low, ", ", high, ")");
  return detail::random_tensor<T>(shape, device, gen, [low, high](std::uint64_t seed, std::uint64_t i) {
    const auto span = static_cast<double>(high - low);
    return static_cast<double>(low + static_cast<std::int64_t>(std::floor(uniform_at(seed, i) * span)));
  });
}

}  // namespace kiln
