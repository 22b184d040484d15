// Multi-tensor AdamW step on CUDA (optim/adamw.hpp): every parameter of the optimizer updated in
// one launch (multi_tensor.cuh explains the descriptor list and the chunking).
//
// Per element: read p (or its FP32 master copy), g, m, v; write p, m, v (and the master copy).
// The update itself is optim::AdamWStep, the same double-precision function the CPU loop calls,
// so both backends agree to rounding (the device may fuse multiply-adds). The step is memory
// bound: float parameters move 28 bytes an element (16 read, 12 written); bf16 with master weights
// 28 (14 read: master, g, m, v; 14 written: master, p, m, v).
//
// Each thread updates 4 consecutive elements per iteration with one vector load/store per operand
// (16 bytes for float m/v, 8 for bf16 p/g) when the tensor's pointers allow it; otherwise (and for
// the last numel % 4 elements) one element at a time.
#pragma once

#include <vector>

#include "elementwise/map.cuh"
#include "kiln/optim/adamw.hpp"
#include "optim/multi_tensor.cuh"

namespace kiln::kernels::multi_tensor {

struct AdamWTensor {
  void* p;
  const void* g;
  void* m;
  void* v;
  float* master;  // null without master weights
  std::int64_t numel;
  std::int64_t first_chunk;
  int vectorized;
};

template <class T, class M, bool Master>
__device__ __forceinline__ void adamw_update(const ::kiln::optim::AdamWStep& s, T& p, const T& g, M& m, M& v,
                                             float& master) {
  const double p0 = Master ? static_cast<double>(master) : static_cast<double>(load(p));
  const double updated = s(p0, static_cast<double>(load(g)), m, v);
  if constexpr (Master) {
    master = static_cast<float>(updated);
    p = store<T>(master);
  } else {
    p = round_from_double<T>(updated);
  }
}

template <class T, class M, bool Master>
__global__ void __launch_bounds__(256) adamw_kernel(const AdamWTensor* __restrict__ tensors, int count,
                                                    std::int64_t chunks, ::kiln::optim::AdamWStep step) {
  constexpr int V = 4;
  for (std::int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const AdamWTensor& d = tensors[find_tensor(tensors, count, c)];
    T* p = static_cast<T*>(d.p);
    const T* g = static_cast<const T*>(d.g);
    M* m = static_cast<M*>(d.m);
    M* v = static_cast<M*>(d.v);
    float* master = d.master;
    const std::int64_t begin = (c - d.first_chunk) * kChunk;
    const std::int64_t end = begin + kChunk < d.numel ? begin + kChunk : d.numel;
    std::int64_t scalar_from = begin;
    if (d.vectorized) {
      const std::int64_t vec_end = begin + (end - begin) / V * V;
      for (std::int64_t k = begin + V * static_cast<std::int64_t>(threadIdx.x); k < vec_end; k += V * blockDim.x) {
        Vec<T, V> pv;
        Vec<float, V> wv;
        if constexpr (Master) {
          wv = *reinterpret_cast<const Vec<float, V>*>(master + k);
        } else {
          pv = *reinterpret_cast<const Vec<T, V>*>(p + k);
        }
        const Vec<T, V> gv = *reinterpret_cast<const Vec<T, V>*>(g + k);
        Vec<M, V> mv = *reinterpret_cast<const Vec<M, V>*>(m + k);
        Vec<M, V> vv = *reinterpret_cast<const Vec<M, V>*>(v + k);
#pragma unroll
        for (int e = 0; e < V; ++e) adamw_update<T, M, Master>(step, pv.v[e], gv.v[e], mv.v[e], vv.v[e], wv.v[e]);
        *reinterpret_cast<Vec<T, V>*>(p + k) = pv;
        *reinterpret_cast<Vec<M, V>*>(m + k) = mv;
        *reinterpret_cast<Vec<M, V>*>(v + k) = vv;
        if constexpr (Master) *reinterpret_cast<Vec<float, V>*>(master + k) = wv;
      }
      scalar_from = vec_end;
    }
    for (std::int64_t k = scalar_from + threadIdx.x; k < end; k += blockDim.x) {
      float w = Master ? master[k] : 0.0f;
      adamw_update<T, M, Master>(step, p[k], g[k], m[k], v[k], w);
      if constexpr (Master) master[k] = w;
    }
  }
}

// KernelCall (optim::AdamW::step_device): tensors {p, g, m, v[, master]} per parameter, all
// contiguous and non-empty; reals {beta1, beta2, eps, step_size, inv_sqrt_bias2, decay};
// ints {has master}.
inline void adamw_entry(const KernelCall& call) {
  const bool with_master = call.ints[0] != 0;
  const std::size_t per = with_master ? 5 : 4;
  const int device = call.tensors[0].device;
  ::kiln::optim::AdamWStep step;
  step.beta1 = call.reals[0];
  step.beta2 = call.reals[1];
  step.eps = call.reals[2];
  step.step_size = call.reals[3];
  step.inv_sqrt_bias2 = call.reals[4];
  step.decay = call.reals[5];
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  with_param_type("AdamW", call.tensors[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = std::conditional_t<std::is_same_v<T, double>, double, float>;
    constexpr std::size_t V = 4;
    std::vector<AdamWTensor> descs;
    std::int64_t chunks = 0;
    for (std::size_t i = 0; i + per <= call.tensors.size(); i += per) {
      const TensorArg* a = &call.tensors[i];
      AdamWTensor d{a[0].data, a[1].data, a[2].data, a[3].data,
                    with_master ? static_cast<float*>(a[4].data) : nullptr, a[0].numel(), chunks, 0};
      if (d.numel == 0) continue;
      d.vectorized = aligned_to(d.p, V * sizeof(T)) && aligned_to(d.g, V * sizeof(T)) &&
                     aligned_to(d.m, V * sizeof(M)) && aligned_to(d.v, V * sizeof(M)) &&
                     (!d.master || aligned_to(d.master, V * sizeof(float)));
      chunks += chunks_of(d.numel);
      descs.push_back(d);
    }
    if (descs.empty()) return;
    const Tensor<std::uint8_t> on_device = upload(descs, device, stream);
    const auto* list = reinterpret_cast<const AdamWTensor*>(on_device.data());
    const int count = static_cast<int>(descs.size());
    if (with_master) {
      if constexpr (is_low_precision<T>) {
        auto kernel = adamw_kernel<T, M, true>;
        kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(list, count, chunks, step);
      } else {
        fail("AdamW", "master weights are only kept for low-precision parameters, got ", call.tensors[0].dtype);
      }
    } else {
      auto kernel = adamw_kernel<T, M, false>;
      kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(list, count, chunks, step);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool adamw_registered = register_device_kernel("adamw", adamw_entry);

}  // namespace kiln::kernels::multi_tensor
