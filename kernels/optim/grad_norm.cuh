// Global gradient norm and in-place gradient scaling on CUDA, over a list of tensors in one launch
// each (arguments kernels/optim/args.hpp; front-end optim/clip.hpp: clip_grad_norm;
// multi_tensor.cuh explains the descriptors and chunks).
//
// GradSumSquaresArgs: the sum over every element of every tensor of g^2, in double.
//   Pass 1: each chunk's sum (each thread accumulates in double, then a fixed-shape tree over the
//   block) goes to partial[chunk]; pass 2, one block, adds the partials in a fixed order. The chunk
//   layout depends only on the tensor sizes, so the result is the same bits on every run (and on
//   every GPU). Memory traffic: each gradient element read once.
// GradScaleArgs: g = g * scale in place (the product in double, rounded once to T, as the
//   CPU path does). Each element read and written once.
// Both read 16 bytes per thread and iteration where the tensor's pointer allows it.
#pragma once

#include <vector>

#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/optim/args.hpp"
#include "kiln/kernels/optim/multi_tensor.cuh"

namespace kiln::kernels::multi_tensor {

// The device-side descriptor of one gradient: GradTensorArgs plus its place in the chunk numbering
// and whether it allows 16-byte accesses.
struct GradTensor {
  void* g;
  std::int64_t numel;
  std::int64_t first_chunk;
  int vectorized;
};

template <class T>
__global__ void __launch_bounds__(256) sum_squares_kernel(const GradTensor* __restrict__ tensors, int count,
                                                          std::int64_t chunks, double* __restrict__ partial) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  __shared__ double scratch[64];  // block_sum's two buffers, used alternately
  int parity = 0;
  for (std::int64_t c = blockIdx.x; c < chunks; c += gridDim.x, parity ^= 1) {
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
    s = block_sum(s, scratch, parity);  // a fixed-shape tree over the block
    if (threadIdx.x == 0) partial[c] = s;
  }
}

static __global__ void __launch_bounds__(1024) sum_partials_kernel(const double* __restrict__ partial, std::int64_t n,
                                                            double* __restrict__ out) {
  __shared__ double scratch[64];
  double s = 0.0;
  for (std::int64_t k = threadIdx.x; k < n; k += blockDim.x) s += partial[k];
  s = block_sum(s, scratch, 0);
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

// The descriptors of the listed gradients (contiguous, one element type), empty ones left out.
inline std::vector<GradTensor> grad_descriptors(const GradTensorArgs* grads, int count, std::int64_t& chunks) {
  std::vector<GradTensor> descs;
  chunks = 0;
  for (int i = 0; i < count; ++i) {
    GradTensor d{grads[i].g, grads[i].numel, chunks, aligned16(grads[i].g) ? 1 : 0};
    if (d.numel == 0) continue;
    chunks += chunks_of(d.numel);
    descs.push_back(d);
  }
  return descs;
}

inline void launch_grad_sum_squares(const GradSumSquaresArgs& a) {
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  std::int64_t chunks = 0;
  const std::vector<GradTensor> descs = grad_descriptors(a.grads, a.count, chunks);
  if (descs.empty()) {
    KILN_CUDA_CHECK(cudaMemsetAsync(a.out, 0, sizeof(double), stream));
    return;
  }
  with_floating_type("clip_grad_norm", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const Tensor<std::uint8_t> on_device = upload(descs, device, stream);
    Tensor<double> partial({chunks}, Device::cuda(device));
    auto kernel = sum_squares_kernel<T>;
    kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(
        reinterpret_cast<const GradTensor*>(on_device.data()), static_cast<int>(descs.size()), chunks, partial.data());
    KILN_CUDA_CHECK_LAUNCH();
    sum_partials_kernel<<<1, 1024, 0, stream>>>(partial.data(), chunks, a.out);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline void launch_grad_scale(const GradScaleArgs& a) {
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  std::int64_t chunks = 0;
  const std::vector<GradTensor> descs = grad_descriptors(a.grads, a.count, chunks);
  if (descs.empty()) return;
  with_floating_type("clip_grad_norm", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const Tensor<std::uint8_t> on_device = upload(descs, device, stream);
    auto kernel = scale_kernel<T>;
    kernel<<<grid_for(kernel, 256, chunks, device), 256, 0, stream>>>(
        reinterpret_cast<const GradTensor*>(on_device.data()), static_cast<int>(descs.size()), chunks, a.scale);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool grad_norm_registered =
    register_device_kernel(&launch_grad_sum_squares) && register_device_kernel(&launch_grad_scale);

}  // namespace kiln::kernels::multi_tensor
