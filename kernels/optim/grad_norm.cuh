// Global gradient norm and in-place gradient scaling on CUDA, over a list of tensors in one launch
// each (optim/clip.hpp: clip_grad_norm; multi_tensor.cuh explains the descriptors and chunks).
//
// "multi_tensor_sum_squares": the sum over every element of every tensor of g^2, in double.
//   Pass 1: each chunk's sum (each thread accumulates in double, then a fixed-shape tree over the
//   block) goes to partial[chunk]; pass 2, one block, adds the partials in a fixed order. The chunk
//   layout depends only on the tensor sizes, so the result is the same bits on every run (and on
//   every GPU). Memory traffic: each gradient element read once.
// "multi_tensor_scale": g = g * scale in place (the product in double, rounded once to T, as the
//   CPU path does). Each element read and written once.
// Both read 16 bytes per thread and iteration where the tensor's pointer allows it.
#pragma once

#include <vector>

#include "elementwise/map.cuh"
#include "optim/multi_tensor.cuh"

namespace kiln::kernels::multi_tensor {

struct GradTensor {
  void* g;
  std::int64_t numel;
  std::int64_t first_chunk;
  int vectorized;
};

__device__ __forceinline__ double warp_sum_double(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block-wide sum in a fixed order, valid in thread 0; `scratch` holds 32 doubles. Ends with a
// barrier so scratch can be reused at once.
__device__ __forceinline__ double block_sum_double(double v, double* scratch) {
  v = warp_sum_double(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0) total = warp_sum_double(lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.0);
  __syncthreads();
  return total;
}

template <class T>
__global__ void __launch_bounds__(256) sum_squares_kernel(const GradTensor* __restrict__ tensors, int count,
                                                          std::int64_t chunks, double* __restrict__ partial) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  __shared__ double scratch[32];
  for (std::int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const GradTensor& d = tensors[find_tensor(tensors, count, c)];
    const T* g = static_cast<const T*>(d.g);
    const std::int64_t begin = (c - d.first_chunk) * kChunk;
    const std::int64_t end = begin + kChunk < d.numel ? begin + kChunk : d.numel;
    double s = 0.0;
    std::int64_t scalar_from = begin;
    if (d.vectorized) {
      const std::int64_t vec_end = begin + (end - begin) / V * V;
      for (std::int64_t k = begin + V * static_cast<std::int64_t>(threadIdx.x); k < vec_end; k += V * blockDim.x) {
        const Vec<T, V> gv = *reinterpret_cast<const Vec<T, V>*>(g + k);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const double x = static_cast<double>(load(gv.v[e]));
          s += x * x;
        }
      }
      scalar_from = vec_end;
    }
    for (std::int64_t k = scalar_from + threadIdx.x; k < end; k += blockDim.x) {
      const double x = static_cast<double>(load(g[k]));
      s += x * x;
    }
    s = block_sum_double(s, scratch);
    if (threadIdx.x == 0) partial[c] = s;
  }
}

__global__ void __launch_bounds__(1024) sum_partials_kernel(const double* __restrict__ partial, std::int64_t n,
                                                            double* __restrict__ out) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (std::int64_t k = threadIdx.x; k < n; k += blockDim.x) s += partial[k];
  s = block_sum_double(s, scratch);
  if (threadIdx.x == 0) out[0] = s;
}

template <class T>
__global__ void __launch_bounds__(256) scale_kernel(const GradTensor* __restrict__ tensors, int count,
                                                    std::int64_t chunks, double scale) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  for (std::int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const GradTensor& d = tensors[find_tensor(tensors, count, c)];
    T* g = static_cast<T*>(d.g);
    const std::int64_t begin = (c - d.first_chunk) * kChunk;
    const std::int64_t end = begin + kChunk < d.numel ? begin + kChunk : d.numel;
    std::int64_t scalar_from = begin;
    if (d.vectorized) {
      const std::int64_t vec_end = begin + (end - begin) / V * V;
      for (std::int64_t k = begin + V * static_cast<std::int64_t>(threadIdx.x); k < vec_end; k += V * blockDim.x) {
        Vec<T, V> gv = *reinterpret_cast<const Vec<T, V>*>(g + k);
#pragma unroll
        for (int e = 0; e < V; ++e) gv.v[e] = round_from_double<T>(static_cast<double>(load(gv.v[e])) * scale);
        *reinterpret_cast<Vec<T, V>*>(g + k) = gv;
      }
      scalar_from = vec_end;
    }
    for (std::int64_t k = scalar_from + threadIdx.x; k < end; k += blockDim.x)
      g[k] = round_from_double<T>(static_cast<double>(load(g[k])) * scale);
  }
}

// The descriptors of tensors[first..] (contiguous, one element type), empty ones left out.
inline std::vector<GradTensor> grad_descriptors(const KernelCall& call, std::size_t first, std::int64_t& chunks) {
  std::vector<GradTensor> descs;
  chunks = 0;
  for (std::size_t i = first; i < call.tensors.size(); ++i) {
    const TensorArg& a = call.tensors[i];
    GradTensor d{a.data, a.numel(), chunks, aligned_to(a.data, 16) ? 1 : 0};
    if (d.numel == 0) continue;
    chunks += chunks_of(d.numel);
    descs.push_back(d);
  }
  return descs;
}

// tensors {out (f64 [1]), g...}: out[0] = sum of g^2 over all g.
inline void sum_squares_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const int device = out.device;
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  std::int64_t chunks = 0;
  const std::vector<GradTensor> descs = grad_descriptors(call, 1, chunks);
  if (descs.empty()) {
    KILN_CUDA_CHECK(cudaMemsetAsync(out.data, 0, sizeof(double), stream));
    return;
  }
  with_param_type("clip_grad_norm", call.tensors[1].dtype, [&](auto tag) {
    using T = decltype(tag);
    const Tensor<std::uint8_t> on_device = upload(descs, device, stream);
    Tensor<double> partial({chunks}, Device::cuda(device));
    auto kernel = sum_squares_kernel<T>;
    kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(
        reinterpret_cast<const GradTensor*>(on_device.data()), static_cast<int>(descs.size()), chunks, partial.data());
    KILN_CUDA_CHECK_LAUNCH();
    sum_partials_kernel<<<1, 1024, 0, stream>>>(partial.data(), chunks, static_cast<double*>(out.data));
    KILN_CUDA_CHECK_LAUNCH();
  });
}

// tensors {g...}; reals {scale}: every g *= scale in place.
inline void scale_entry(const KernelCall& call) {
  if (call.tensors.empty()) return;
  const int device = call.tensors[0].device;
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  std::int64_t chunks = 0;
  const std::vector<GradTensor> descs = grad_descriptors(call, 0, chunks);
  if (descs.empty()) return;
  with_param_type("clip_grad_norm", call.tensors[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    const Tensor<std::uint8_t> on_device = upload(descs, device, stream);
    auto kernel = scale_kernel<T>;
    kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(
        reinterpret_cast<const GradTensor*>(on_device.data()), static_cast<int>(descs.size()), chunks, call.reals[0]);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool grad_norm_registered = register_device_kernel("multi_tensor_sum_squares", sum_squares_entry) &&
                                         register_device_kernel("multi_tensor_scale", scale_entry);

}  // namespace kiln::kernels::multi_tensor
