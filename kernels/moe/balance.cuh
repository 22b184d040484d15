// The aux-loss-free bias update on CUDA (arguments kernels/moe/args.hpp: MoeBalanceUpdateArgs;
// front-end ops/moe.hpp, kiln::moe_balance_update; the host rule is nn::update_routing_bias).
//
//   bias_e += γ·sign(mean − counts_e),  mean = Σ counts / E,  sign(0) = 0,
// in double and rounded once to the bias dtype (round_from_double), the host rule's arithmetic, so
// the two give the same bits. Nothing changes when no route was counted.
//
// One block: each thread sums the E counts itself (E ≤ a few hundred int64 loads from L1) rather
// than reducing across the block, then updates its experts. Nothing is read back to the host, so
// a training step's balancing costs one tiny launch per MoE layer.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/moe/args.hpp"

namespace kiln::kernels::moe {

constexpr int kBalanceThreads = 256;

template <class T>
__global__ void __launch_bounds__(kBalanceThreads) balance_update(MoeBalanceUpdateArgs a) {
  std::int64_t total = 0;
  for (int e = 0; e < a.n_experts; ++e) total += a.counts[e];
  if (total == 0) return;
  const double mean = static_cast<double>(total) / static_cast<double>(a.n_experts);
  T* bias = static_cast<T*>(a.bias);
  for (int e = threadIdx.x; e < a.n_experts; e += blockDim.x) {
    const double c = static_cast<double>(a.counts[e]);
    const double sign = c < mean ? 1.0 : (c > mean ? -1.0 : 0.0);
    bias[e] = round_from_double<T>(static_cast<double>(load(bias[e])) + a.gamma * sign);
  }
}

inline void launch_moe_balance_update(const MoeBalanceUpdateArgs& a) {
  if (a.n_experts == 0 || a.gamma == 0.0) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_balance_update", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    balance_update<T><<<1, kBalanceThreads, 0, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool moe_balance_registered = register_device_kernel(&launch_moe_balance_update);

}  // namespace kiln::kernels::moe
