// cuBLASLt underneath kiln's matrix products: handles, workspaces, the plan cache, and the TF32
// switch.
//
// A cuBLASLt product needs a handle, a matmul descriptor (compute type, transposes), one layout
// descriptor per matrix (type, rows, cols, leading dimension, batch count and stride) and an
// algorithm chosen by cuBLASLt's heuristic. Building the descriptors and asking the heuristic costs
// tens of microseconds, as much as a small GEMM, so each distinct problem is planned once: the plan
// cache maps everything the heuristic looks at (device, types, transposes, sizes, leading
// dimensions, batch count and strides, pointer alignments) to the descriptors and the chosen
// algorithm. A later product of the same problem is one hash lookup and one cublasLtMatmul call.
//
// Handles: one per device. Workspaces: one per (device, stream), 32 MiB (what NVIDIA recommends for
// Hopper), taken once with cudaMalloc and kept: a workspace is scratch memory of the GEMM kernel, so
// two streams must not share one, while work queued on one stream runs in order and may reuse it.
// Workspaces are not tensors, so they stay out of the caching allocator's statistics; when the
// cudaMalloc runs out of memory the workspace is taken from kiln's caching allocator instead
// (through the core's device table: it hands out a cached block, or releases its cache and retries
// cudaMalloc), and then counts in its statistics as bytes in use. (As for the caching allocator, a
// stream destroyed while its work is still queued must not be replaced by a new stream that
// happens to get the same handle value before that work has finished.)
//
// Handles, workspaces and plans live until the program ends and are never destroyed: they may be
// used from static destructors, and the CUDA runtime may already be shut down at exit.
//
// TF32: fp32 products run in full FP32 (CUBLAS_COMPUTE_32F) unless set_allow_tf32(true) allows
// CUBLAS_COMPUTE_32F_FAST_TF32, which rounds the operands to TF32 (10 mantissa bits) on the tensor
// cores: several times faster, relative error about 3e-4 instead of 1e-6 (DESIGN.md's TF32 bound
// is 5e-4). The setting is global (all threads, all devices) and read at each product.
// (The environment variable NVIDIA_TF32_OVERRIDE=1 of the CUDA libraries can force TF32 regardless.)
//
// The matmul family's implementation (kernels/matmul/matmul.cuh launches through it). This header
// compiles with g++ too (cublasLt.h is a C header): programs compiled by g++ include it to call
// set_allow_tf32 and read the plan count; the products themselves run in the nvcc-compiled backend.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kiln/core/device.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/matmul/cublas_check.hpp"

namespace kiln::cuda {

// ---- TF32 ----

namespace detail {
inline std::atomic<bool>& allow_tf32_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace detail

// Allows (true) or forbids (false, the default) TF32 tensor cores for float32 matrix products.
inline void set_allow_tf32(bool allow) { detail::allow_tf32_flag().store(allow, std::memory_order_relaxed); }
inline bool allow_tf32() { return detail::allow_tf32_flag().load(std::memory_order_relaxed); }

// ---- handles and workspaces ----

inline constexpr std::size_t lt_workspace_bytes = std::size_t{32} << 20;

// What one cublasLtMatmul call needs besides the plan.
struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// The handle of `device` and the workspace of (`device`, `stream`), created on first use.
inline LtContext lt_context(int device, cudaStream_t stream) {
  struct Key {
    int device;
    cudaStream_t stream;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<const void*>()(k.stream) * 31 + static_cast<std::size_t>(k.device);
    }
  };
  static std::mutex mutex;
  static auto* handles = new std::unordered_map<int, cublasLtHandle_t>();
  static auto* contexts = new std::unordered_map<Key, LtContext, KeyHash>();

  std::lock_guard<std::mutex> lock(mutex);
  auto it = contexts->find(Key{device, stream});
  if (it != contexts->end()) return it->second;

  DeviceGuard guard(device);
  cublasLtHandle_t& handle = (*handles)[device];
  if (!handle) KILN_CUBLAS_CHECK(cublasLtCreate(&handle));
  void* workspace = nullptr;
  const cudaError_t e = cudaMalloc(&workspace, lt_workspace_bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    try {  // from kiln's caching allocator (see the top of the file); never given back
      workspace = backend_for("matmul", Device::cuda(device)).allocate(lt_workspace_bytes, device);
    } catch (const Error& error) {
      fail("matmul", "cannot allocate the ", lt_workspace_bytes, "-byte cuBLASLt workspace on cuda:", device, ": ",
           error.what());
    }
  } else if (e != cudaSuccess) {
    cudaGetLastError();
    fail("matmul", "cannot allocate the ", lt_workspace_bytes, "-byte cuBLASLt workspace on cuda:", device, ": ",
         cudaGetErrorString(e));
  }
  const LtContext context{handle, workspace};
  contexts->emplace(Key{device, stream}, context);
  return context;
}

// ---- problems and plans ----

// One matrix operand as cuBLASLt sees it: column-major, `rows` x `cols` with leading dimension
// `ld`, matrix i of a batch at element offset i * batch_stride; `alignment` is the largest power of
// two (at most 256) that divides the byte address of every matrix the plan will be run on.
struct LtMatrix {
  std::int64_t rows = 0, cols = 0, ld = 0, batch_stride = 0, alignment = 256;
};

// D = op_a(A) · op_b(B), batch_count times, in cuBLASLt's column-major terms; C (lt_matmul's
// optional addend) has D's layout.
struct LtGemm {
  int device = 0;
  cudaDataType_t type = CUDA_R_32F;           // of A, B and D
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;          // of alpha and beta
  cublasOperation_t op_a = CUBLAS_OP_N, op_b = CUBLAS_OP_N;
  LtMatrix a, b, d;
  std::int64_t batch_count = 1;

  // Everything the descriptors and the heuristic depend on, as the plan cache's key.
  using Key = std::array<std::int64_t, 22>;
  Key key() const {
    return {device, type, compute, scale, op_a, op_b, batch_count,
            a.rows, a.cols, a.ld, a.batch_stride, a.alignment,
            b.rows, b.cols, b.ld, b.batch_stride, b.alignment,
            d.rows, d.cols, d.ld, d.batch_stride, d.alignment};
  }
};

// The largest power of two dividing `bytes` (an address or a byte stride), at most 256.
inline std::int64_t alignment_of(std::uintptr_t bytes) {
  if (bytes == 0) return 256;
  return static_cast<std::int64_t>(std::min<std::uintptr_t>(bytes & (~bytes + 1), 256));
}

// Descriptors and the chosen algorithm of one problem. Owns the descriptors (destroyed only when
// planning fails; cached plans live until the program ends).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};

  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

namespace detail {

inline void lt_layout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, const LtMatrix& m,
                      std::int64_t batch_count) {
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(layout, type, static_cast<std::uint64_t>(m.rows),
                                               static_cast<std::uint64_t>(m.cols), m.ld));
  if (batch_count > 1) {
    const auto count = static_cast<std::int32_t>(batch_count);
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                       sizeof(count)));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                       &m.batch_stride, sizeof(m.batch_stride)));
  }
}

// Builds the descriptors of `g` and asks the heuristic for its best algorithm within the workspace.
inline std::unique_ptr<LtPlan> make_plan(const LtGemm& g, cublasLtHandle_t handle) {
  auto plan = std::make_unique<LtPlan>();
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, g.compute, g.scale));
  const std::int32_t op_a = g.op_a, op_b = g.op_b;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  lt_layout(&plan->a, g.type, g.a, g.batch_count);
  lt_layout(&plan->b, g.type, g.b, g.batch_count);
  lt_layout(&plan->d, g.type, g.d, g.batch_count);

  struct Preference {  // destroyed on every path out of here
    cublasLtMatmulPreference_t p = nullptr;
    ~Preference() {
      if (p) cublasLtMatmulPreferenceDestroy(p);
    }
  } owner;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&owner.p));
  const cublasLtMatmulPreference_t pref = owner.p;
  const std::uint64_t max_workspace = lt_workspace_bytes;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &max_workspace, sizeof(max_workspace)));
  const std::uint32_t align_a = static_cast<std::uint32_t>(g.a.alignment),
                      align_b = static_cast<std::uint32_t>(g.b.alignment),
                      align_d = static_cast<std::uint32_t>(g.d.alignment);
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                         sizeof(align_a)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                         sizeof(align_b)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                         sizeof(align_d)));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                         sizeof(align_d)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                                          pref, 1, &result, &found);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && found == 0)) {
    fail("matmul", "cuBLASLt has no algorithm for this product (column-major D ", g.d.rows, " x ", g.d.cols,
         ", inner dimension ", g.op_a == CUBLAS_OP_N ? g.a.cols : g.a.rows, ", batch ", g.batch_count,
         ", leading dims ", g.a.ld, "/",
         g.b.ld, "/", g.d.ld, ", alignments ", g.a.alignment, "/", g.b.alignment, "/", g.d.alignment, " bytes)");
  }
  if (s != CUBLAS_STATUS_SUCCESS) throw_cublas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  plan->algo = result.algo;  // needs at most max_workspace bytes: lt_matmul passes the whole workspace
  return plan;
}

struct KeyHash {
  std::size_t operator()(const LtGemm::Key& k) const {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (std::int64_t v : k) {
      h ^= static_cast<std::uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
  }
};

struct PlanCache {
  std::mutex mutex;
  std::unordered_map<LtGemm::Key, std::unique_ptr<LtPlan>, KeyHash> plans;
};

inline PlanCache& plan_cache() {
  static auto* cache = new PlanCache();  // never destroyed (see the top of the file)
  return *cache;
}

}  // namespace detail

// The cached plan of `g`, planned on first use. The reference stays valid (plans are never removed).
inline const LtPlan& lt_plan(const LtGemm& g, cublasLtHandle_t handle) {
  detail::PlanCache& cache = detail::plan_cache();
  const LtGemm::Key key = g.key();
  std::lock_guard<std::mutex> lock(cache.mutex);
  auto it = cache.plans.find(key);
  if (it == cache.plans.end()) it = cache.plans.emplace(key, detail::make_plan(g, handle)).first;
  return *it->second;
}

// The number of cached plans (distinct problems run so far), for tests.
inline std::size_t lt_plan_count() {
  detail::PlanCache& cache = detail::plan_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.plans.size();
}

// Runs D = op_a(A) · op_b(B) for the problem `g` on `stream` (the caller has made g.device current),
// or D = C + op_a(A) · op_b(B) when c is given (beta = 1: C read in D's layout, its address within
// g.d.alignment; a residual added in the GEMM's epilogue instead of by one more kernel).
// a, b, d (and c) point at the first matrix of each operand.
inline void lt_matmul(const LtGemm& g, const void* a, const void* b, void* d, cudaStream_t stream,
                      const void* c = nullptr) {
  const LtContext context = lt_context(g.device, stream);
  const LtPlan& plan = lt_plan(g, context.handle);
  // alpha = 1, beta = 0 (or 1 with c) in the scale type.
  const double one64 = 1.0, zero64 = 0.0;
  const float one32 = 1.0f, zero32 = 0.0f;
  const bool wide = g.scale == CUDA_R_64F;
  const void* alpha = wide ? static_cast<const void*>(&one64) : &one32;
  const void* beta = c ? alpha : wide ? static_cast<const void*>(&zero64) : &zero32;
  KILN_CUBLAS_CHECK(cublasLtMatmul(context.handle, plan.desc, alpha, a, plan.a, b, plan.b, beta, c ? c : d, plan.d, d,
                                   plan.d, &plan.algo, context.workspace, lt_workspace_bytes, stream));
}

}  // namespace kiln::cuda
