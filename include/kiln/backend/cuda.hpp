// The CUDA backend. Include this header from at least one translation unit compiled by nvcc; it
// registers device memory (the caching allocator), copies, streams, graphs and every CUDA kernel
// with the core's registries at static-initialisation time. Files compiled by g++ can then run
// kiln ops on Device::cuda(n) tensors too: the core reaches the kernels through the registries
// only (core/storage.hpp's backend table, core/device_kernel.hpp's registry keyed by argument type).
//
// Every kernel header that registers a launcher is listed here (scripts/check_layering.sh checks
// that none is missing). kiln's own build compiles the same headers as one nvcc file per kernel
// family instead (cmake/CudaBackend.cmake), which parallelises the build.
#pragma once

#ifndef __CUDACC__
#error "kiln/backend/cuda.hpp must be compiled by nvcc"
#endif

#include "kiln/backend/cuda/runtime_registration.hpp"

#include "kiln/kernels/attention/attention.cuh"
#include "kiln/kernels/cross_entropy/cross_entropy.cuh"
#include "kiln/kernels/decode_attention/cache_write.cuh"
#include "kiln/kernels/decode_attention/decode_attention.cuh"
#include "kiln/kernels/decode_attention/latent_write.cuh"
#include "kiln/kernels/elementwise/binary.cuh"
#include "kiln/kernels/elementwise/compare.cuh"
#include "kiln/kernels/elementwise/copy.cuh"
#include "kiln/kernels/elementwise/swiglu.cuh"
#include "kiln/kernels/elementwise/unary.cuh"
#include "kiln/kernels/elementwise/where.cuh"
#include "kiln/kernels/fp8_gemm/gemm.cuh"
#include "kiln/kernels/fp8_gemm/quantize.cuh"
#include "kiln/kernels/gather/gather.cuh"
#include "kiln/kernels/gather/index_rows.cuh"
#include "kiln/kernels/grouped_fp8_gemm/grouped_fp8_gemm.cuh"
#include "kiln/kernels/grouped_fp8_gemm/k_grouped.cuh"
#include "kiln/kernels/grouped_gemm/grouped_gemm.cuh"
#include "kiln/kernels/matmul/matmul.cuh"
#include "kiln/kernels/moe/balance.cuh"
#include "kiln/kernels/moe/dispatch.cuh"
#include "kiln/kernels/moe/routing.cuh"
#include "kiln/kernels/optim/adamw.cuh"
#include "kiln/kernels/optim/grad_norm.cuh"
#include "kiln/kernels/reduce/max_backward.cuh"
#include "kiln/kernels/reduce/reduce.cuh"
#include "kiln/kernels/rms_norm/rms_norm.cuh"
#include "kiln/kernels/rope/rope.cuh"
#include "kiln/kernels/sampling/sampling.cuh"
#include "kiln/kernels/softmax/softmax.cuh"
#include "kiln/kernels/topk/topk.cuh"
