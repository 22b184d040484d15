// cuBLASLt as the peer of kiln's FP8 GEMM benchmarks (bench_fp8_gemm_cuda.cpp,
// bench_grouped_fp8_gemm_cuda.cpp): one planned cublasLtMatmul D [M, N] (row-major) = A [M, K] ·
// B [N, K]ᵀ, FP8 e4m3 operands with per-tensor scales (the device scalar `one`: NVIDIA's coarser
// recipe, the same function as kiln's when every fine-grained scale is 1) or bf16, FP32
// accumulation, bf16 or FP32 output; the heuristic's first algorithm with a 32 MiB workspace.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/core/error.hpp>

namespace kiln::bench {

#define LT_CHECK(x)                                                                              \
  do {                                                                                           \
    cublasStatus_t s_ = (x);                                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) throw kiln::Error(std::string("cuBLASLt: ") + #x + " -> " + \
                                                       std::to_string(static_cast<int>(s_)));    \
  } while (0)

// cuBLASLt D[M,N] (row-major) = A[M,K]·B[N,K]ᵀ: column-major Dᵀ = op_T(B)·op_N(A), the TN layout FP8 needs.
class LtGemm {
 public:
  LtGemm(cudaDataType_t in, cudaDataType_t out, std::int64_t m, std::int64_t n, std::int64_t k, const float* one,
         bool fast_accum)
      : in_(in) {
    LT_CHECK(cublasLtCreate(&handle_));
    KILN_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace));
    LT_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn)));
    if (in == CUDA_R_8F_E4M3) {
      LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &one, sizeof(one)));
      LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &one, sizeof(one)));
      const std::int8_t fast = fast_accum ? 1 : 0;
      LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
    }
    LT_CHECK(cublasLtMatrixLayoutCreate(&la_, in, k, n, k));
    LT_CHECK(cublasLtMatrixLayoutCreate(&lb_, in, k, m, k));
    LT_CHECK(cublasLtMatrixLayoutCreate(&ld_, out, n, m, n));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace,
                                                  sizeof(kWorkspace)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, la_, lb_, ld_, ld_, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    ok_ = found > 0;
    algo_ = result.algo;
  }
  ~LtGemm() {
    cublasLtMatrixLayoutDestroy(ld_);
    cublasLtMatrixLayoutDestroy(lb_);
    cublasLtMatrixLayoutDestroy(la_);
    cublasLtMatmulDescDestroy(desc_);
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  bool ok() const { return ok_; }
  void run(const void* a, const void* b, void* d, cudaStream_t stream) const {
    const float alpha = 1.f, beta = 0.f;
    LT_CHECK(cublasLtMatmul(handle_, desc_, &alpha, b, la_, a, lb_, &beta, d, ld_, d, ld_, &algo_, workspace_,
                            kWorkspace, stream));
  }

 private:
  static constexpr std::uint64_t kWorkspace = 32u << 20;
  cudaDataType_t in_;
  cublasLtHandle_t handle_{};
  cublasLtMatmulDesc_t desc_{};
  cublasLtMatrixLayout_t la_{}, lb_{}, ld_{};
  cublasLtMatmulAlgo_t algo_{};
  void* workspace_ = nullptr;
  bool ok_ = false;
};

}  // namespace kiln::bench
