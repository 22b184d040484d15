// Multi-tensor AdamW step on CUDA (arguments kernels/optim/args.hpp; front-end optim/adamw.hpp):
// every parameter of the optimizer updated in one launch (multi_tensor.cuh explains the
// descriptor list and the chunking).
//
// Per element: read p (or its FP32 master copy), g, m, v; write p, m, v (and the master copy).
// The update itself is optim::AdamWStep (math/adamw.hpp), the same double-precision function the
// CPU loop calls, so both backends agree to rounding (the device may fuse multiply-adds). The step
// is memory bound: float parameters move 28 bytes an element (16 read, 12 written); bf16 with
// master weights 28 (14 read: master, g, m, v; 14 written: master, p, m, v).
//
// Each thread updates 4 consecutive elements per iteration with one vector load/store per operand
// (16 bytes for float m/v, 8 for bf16 p/g) when the tensor's pointers allow it; otherwise (and for
// the last numel % 4 elements) one element at a time.
#pragma once

#include <type_traits>
#include <vector>

#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/optim/args.hpp"
#include "kiln/kernels/optim/multi_tensor.cuh"
#include "kiln/math/adamw.hpp"

namespace kiln::kernels::multi_tensor {

// The device-side descriptor of one parameter: AdamWTensorArgs plus its place in the chunk
// numbering and whether its pointers allow vector accesses.
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

inline void launch_adamw(const AdamWArgs& a) {
  const bool with_master = a.master_weights;
  const int device = a.launch.device;
  const ::kiln::optim::AdamWStep step = a.step;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  with_floating_type("AdamW", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = std::conditional_t<std::is_same_v<T, double>, double, float>;
    constexpr std::size_t V = 4;
    std::vector<AdamWTensor> descs;
    std::int64_t chunks = 0;
    for (int i = 0; i < a.count; ++i) {
      const AdamWTensorArgs& t = a.tensors[i];
      AdamWTensor d{t.p, t.g, t.m, t.v, with_master ? t.master : nullptr, t.numel, chunks, 0};
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
        fail("AdamW", "master weights are only kept for low-precision parameters, got ", a.dtype);
      }
    } else {
      auto kernel = adamw_kernel<T, M, false>;
      kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(list, count, chunks, step);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool adamw_registered = register_device_kernel(&launch_adamw);

}  // namespace kiln::kernels::multi_tensor
