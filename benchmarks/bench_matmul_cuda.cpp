// kiln::matmul on CUDA against a raw cublasLtMatmul on the same input buffers, in the same process.
//
// The peer is the call kiln's kernel makes, minus kiln: a cuBLASLt handle, descriptors, 32 MiB
// workspace and the heuristic's first algorithm prepared once before timing, then one
// cublasLtMatmul per iteration into a preallocated output. kiln additionally checks shapes,
// allocates its output through the caching allocator on every call (no cudaMalloc after warm-up:
// counted and printed), dispatches to the registered kernel and looks the plan up in its cache.
// Row-major C = A·B is computed by both as the column-major Cᵀ = Bᵀ·Aᵀ (no copies).
//
// Timing (benchmarks/cuda_bench.hpp, Timer::interleaved_median_us): CUDA events around each call,
// the two sides interleaved, L2 flushed (a memset of twice its size) before every timed call,
// outside the events; 5 warm-up and 30 timed calls per side, medians.
// The host does not wait between iterations, so kiln's host-side cost shows only when it exceeds
// the GPU time of a call. Columns: median µs, TFLOP/s (2·batch·M·N·K / time), kiln/raw = raw
// time / kiln time (target >= 0.98), cudaMalloc calls made by kiln during the timed calls, and
// whether both outputs are bit-identical (they are when kiln picked the same algorithm).
// Run: ./benchmarks/bench_matmul_cuda   (a few seconds on an H100)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <kiln/kernels/matmul/cublaslt.hpp>

#include "cuda_bench.hpp"

namespace {

using kiln::Shape;
using kiln::Tensor;
namespace cuda = kiln::cuda;

struct Case {
  const char* name;
  std::int64_t batch, m, k, n;  // batch 0: plain 2-D operands
  bool tf32;
};

// The same product through cuBLASLt directly: descriptors and algorithm chosen once.
class RawGemm {
 public:
  RawGemm(cudaDataType_t type, cublasComputeType_t compute, cudaDataType_t scale, const Case& c, const void* a,
          const void* b, void* d)
      : a_(a), b_(b), d_(d), wide_(scale == CUDA_R_64F) {
    KILN_CUBLAS_CHECK(cublasLtCreate(&handle_));
    KILN_CUDA_CHECK(cudaMalloc(&workspace_, cuda::lt_workspace_bytes));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, compute, scale));
    // Column-major: first operand kiln's B read as Bᵀ (n x k), second kiln's A read as Aᵀ (k x m).
    layout(&la_, type, c.n, c.k, c.n, c.k * c.n, c.batch);
    layout(&lb_, type, c.k, c.m, c.k, c.m * c.k, c.batch);
    layout(&ld_, type, c.n, c.m, c.n, c.m * c.n, c.batch);
    cublasLtMatmulPreference_t pref;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t max_workspace = cuda::lt_workspace_bytes;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &max_workspace, sizeof(max_workspace)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, la_, lb_, ld_, ld_, pref, 1, &result, &found));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (found == 0) throw kiln::Error("raw cuBLASLt: no algorithm");
    algo_ = result.algo;
  }
  ~RawGemm() {
    cublasLtMatrixLayoutDestroy(ld_);
    cublasLtMatrixLayoutDestroy(lb_);
    cublasLtMatrixLayoutDestroy(la_);
    cublasLtMatmulDescDestroy(desc_);
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }
  RawGemm(const RawGemm&) = delete;
  RawGemm& operator=(const RawGemm&) = delete;

  void run(cudaStream_t stream) const {
    const double one64 = 1.0, zero64 = 0.0;
    const float one32 = 1.0f, zero32 = 0.0f;
    const void* alpha = wide_ ? static_cast<const void*>(&one64) : &one32;
    const void* beta = wide_ ? static_cast<const void*>(&zero64) : &zero32;
    KILN_CUBLAS_CHECK(cublasLtMatmul(handle_, desc_, alpha, b_, la_, a_, lb_, beta, d_, ld_, d_, ld_, &algo_,
                                     workspace_, cuda::lt_workspace_bytes, stream));
  }

 private:
  static void layout(cublasLtMatrixLayout_t* l, cudaDataType_t type, std::int64_t rows, std::int64_t cols,
                     std::int64_t ld, std::int64_t stride, std::int64_t batch) {
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, type, static_cast<std::uint64_t>(rows),
                                                 static_cast<std::uint64_t>(cols), ld));
    if (batch > 1) {
      const auto count = static_cast<std::int32_t>(batch);
      KILN_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      KILN_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }

  const void* a_;
  const void* b_;
  void* d_;
  bool wide_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t la_ = nullptr, lb_ = nullptr, ld_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

template <class T>
void run_case(const Case& c, cudaDataType_t type, cublasComputeType_t compute, const char* dtype) {
  constexpr int warmup = 5, iters = 30;
  const kiln::Device gpu = kiln::Device::cuda(0);
  cudaStream_t stream = cuda::current_stream(0);
  cuda::set_allow_tf32(c.tf32);

  Shape sa{c.m, c.k}, sb{c.k, c.n}, sc{c.m, c.n};
  if (c.batch > 0) {
    sa.insert(sa.begin(), c.batch);
    sb.insert(sb.begin(), c.batch);
    sc.insert(sc.begin(), c.batch);
  }
  const Tensor<T> a = kiln::randn<T>(sa, 0.0, 1.0, gpu), b = kiln::randn<T>(sb, 0.0, 1.0, gpu);
  Tensor<T> c_raw(sc, gpu);
  const RawGemm raw(type, compute, type == CUDA_R_64F ? CUDA_R_64F : CUDA_R_32F, c, a.data(), b.data(), c_raw.data());

  // kiln's cudaMalloc calls are counted over the timed calls only (after the warm-up).
  kiln::bench::Timer timer;
  std::size_t mallocs_before = 0;
  const std::vector<double> us = timer.interleaved_median_us(
      {[&] {
         const Tensor<T> out = kiln::matmul(a, b);  // allocated by kiln, back to the cache at the end of the scope
       },
       [&] { raw.run(stream); }},
      {.warmup = warmup, .timed = iters, .flush_l2 = true},
      [&] { mallocs_before = cuda::memory_stats().device_allocations; });
  const std::size_t mallocs = cuda::memory_stats().device_allocations - mallocs_before;
  const double tk = us[0], tr = us[1];

  // Same algorithm, same bits.
  const Tensor<T> out = kiln::matmul(a, b);
  raw.run(stream);
  const std::vector<T> vk = out.to_vector(), vr = c_raw.to_vector();
  const bool identical = std::memcmp(vk.data(), vr.data(), vk.size() * sizeof(T)) == 0;

  const double flops = 2.0 * static_cast<double>(std::max<std::int64_t>(c.batch, 1)) * static_cast<double>(c.m) *
                       static_cast<double>(c.n) * static_cast<double>(c.k);
  const std::string shape = c.batch > 0
                                ? kiln::str("[", c.batch, ",", c.m, ",", c.k, "]x[", c.batch, ",", c.k, ",", c.n, "]")
                                : kiln::str(c.m, "x", c.k, "x", c.n);
  std::printf("%-14s %-28s %-9s %10.1f %10.1f %9.1f %9.1f %9.3f %8zu %10s\n", c.name, shape.c_str(), dtype, tk, tr,
              flops / tk * 1e-6, flops / tr * 1e-6, tr / tk, mallocs, identical ? "yes" : "no");
  cuda::set_allow_tf32(false);
}

}  // namespace

int main() {
  if (!kiln::bench::open_device()) return 0;
  std::printf("kiln::matmul vs raw cublasLtMatmul (medians of 30, L2 flushed)\n");
  std::printf("%-14s %-28s %-9s %10s %10s %9s %9s %9s %8s %10s\n", "case", "shape (MxKxN)", "dtype", "kiln_us",
              "raw_us", "kiln_TF/s", "raw_TF/s", "kiln/raw", "mallocs", "identical");
  run_case<kiln::bf16>({"gemm", 0, 8192, 8192, 8192, false}, CUDA_R_16BF, CUBLAS_COMPUTE_32F, "bf16");
  run_case<kiln::fp16>({"gemm", 0, 4096, 4096, 4096, false}, CUDA_R_16F, CUBLAS_COMPUTE_32F, "fp16");
  run_case<float>({"gemm", 0, 4096, 4096, 4096, false}, CUDA_R_32F, CUBLAS_COMPUTE_32F, "fp32");
  run_case<float>({"gemm", 0, 4096, 4096, 4096, true}, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, "tf32");
  run_case<kiln::bf16>({"batched", 64, 2048, 128, 2048, false}, CUDA_R_16BF, CUBLAS_COMPUTE_32F, "bf16");
  return 0;
}
