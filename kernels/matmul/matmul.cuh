// matmul on CUDA (arguments kernels/matmul/args.hpp: MatmulArgs; front-end ops/matmul.hpp; CPU
// reference backend/cpu/matmul.hpp): the product runs in cuBLASLt (kernels/matmul/cublaslt.hpp).
//
// With an addend (same shape and strides as out) the product is out = addend + a·b: cuBLASLt's
// beta = 1 with C = the addend, a residual connection added in the GEMM's epilogue.
//
// out [batch..., m, n] has row-major matrices (unit column stride; contiguous, or rows spaced
// wider: a slice of wider rows, e.g. per-head products written straight into their places in a
// [tokens, heads, dims] tensor; the batch dims any distinct strides); a [batch..., m, k] and b
// [batch..., k, n] come already
// broadcast to out's batch dims (stride 0 there) and with matrices that are row-major or
// transposed (unit column or unit row stride, math/matmul.hpp; the front-end copies any other
// layout first). Types: float (FP32 compute, or TF32 when kiln::cuda::set_allow_tf32(true)), double
// (FP64 compute), bf16 and fp16 (FP32 accumulation, output rounded once to the operand type).
//
// Layout: cuBLASLt is column-major, kiln row-major. A row-major m x n matrix C read column-major is
// Cᵀ, so C = A·B is computed as Cᵀ = Bᵀ·Aᵀ with no copies: cuBLASLt's first operand is kiln's B and
// its second kiln's A. A row-major kiln operand read column-major is already the transpose that
// equation needs (op N); a transposed kiln operand (unit row stride) is the operand itself read
// column-major, so cuBLASLt transposes it (op T). Leading dimensions are the kiln row (or column)
// strides, so narrowed matrices are read in place too.
//
// Batches, in order of preference:
//   - right operand shared by the whole batch (stride 0 on every batch dim) and the left operand's
//     batch and row dims forming one run of rows (a linear layer over [batch, tokens, features]):
//     one tall GEMM with batch·m rows, which tiles better than many short ones;
//   - otherwise the batch dims (size-1 dims dropped) whose strides are uniform in all three
//     operands, the innermost ones first, become one strided-batched call (a stride of 0 broadcasts
//     an operand); any outer batch dims left over are looped on the host, one strided-batched call
//     per index. Example: [B,1,M,K]·[H,K,N] -> [B,H,M,N] has a-strides (M·K, 0) and b-strides (0, K·N):
//     the H dim is uniform for all three, the B dim is not (a steps, b does not), so it runs as B
//     calls of a batch of H. All iterations share one cached plan.
//
// Memory traffic: a GEMM reads A and B and writes C (beta = 0, C is not read); it is compute-bound
// for large m, n, k and cuBLASLt's kernels are the peer (benchmarks/bench_matmul_cuda.cpp). The
// host cost per call is the plan lookup (kernels/matmul/cublaslt.hpp) and cublasLtMatmul itself.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/tensor_view.hpp"
#include "kiln/kernels/matmul/args.hpp"
#include "kiln/kernels/matmul/cublaslt.hpp"
#include "kiln/math/matmul.hpp"

namespace kiln::kernels {

namespace matmul_detail {

// The cuBLASLt types of one kiln element type.
struct LtTypes {
  cudaDataType_t type;
  cublasComputeType_t compute;
  cudaDataType_t scale;
  std::int64_t element_bytes;
};

inline LtTypes lt_types(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return {CUDA_R_32F, cuda::allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F, 4};
    case DType::f64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F, 8};
    case DType::bf16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F, 2};
    case DType::f16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F, 2};
    default: fail("matmul", "has no CUDA kernel for dtype ", dtype, " (float32, float64, bfloat16, float16 only)");
  }
}

// One batch dim of the product: its size and the element strides of out, a and b along it.
struct BatchDim {
  std::int64_t size;
  std::int64_t stride[3];  // out, a, b
};

// Whether operand `o`'s matrices over dims[begin, end) are evenly spaced: flat index i (row-major
// over those dims) at element offset i * step. Sets `step`. Every dim has size > 1.
inline bool evenly_spaced(const std::vector<BatchDim>& dims, std::size_t begin, std::size_t end, int o,
                          std::int64_t& step) {
  step = dims[end - 1].stride[o];
  std::int64_t inner = 1;
  for (std::size_t d = end; d-- > begin;) {
    if (dims[d].stride[o] != step * inner) return false;
    inner *= dims[d].size;
  }
  return true;
}

// kiln operand X (rows x cols, strides rs, cs) as the cuBLASLt operand whose op() is Xᵀ.
inline void as_transposed_operand(std::int64_t rows, std::int64_t cols, std::int64_t rs, std::int64_t cs,
                                  cublasOperation_t& op, cuda::LtMatrix& m) {
  const math::MatrixLayout l = math::gemm_layout(rows, cols, rs, cs);
  check(l.layout != math::GemmLayout::unsupported, "matmul", "operand layout not supported (", rows, " x ", cols,
        " with strides ", rs, ", ", cs, ")");
  if (l.layout == math::GemmLayout::row_major) {
    op = CUBLAS_OP_N;  // row-major X read column-major is Xᵀ (cols x rows)
    m.rows = cols;
    m.cols = rows;
  } else {
    op = CUBLAS_OP_T;  // column-major X read column-major is X (rows x cols)
    m.rows = rows;
    m.cols = cols;
  }
  m.ld = l.leading;
}

inline void check_int32(const char* what, std::int64_t v) {
  check(v <= INT32_MAX, "matmul", what, " of ", v, " exceeds cuBLASLt's 32-bit limit");
}

}  // namespace matmul_detail

inline void launch_matmul(const MatmulArgs& args) {
  using namespace matmul_detail;
  const TensorView& out = args.out;
  const TensorView& a = args.a;
  const TensorView& b = args.b;
  const int nd = out.ndim;
  const std::int64_t m = out.shape[nd - 2], n = out.shape[nd - 1], k = a.shape[nd - 1];
  const LtTypes types = lt_types(out.dtype);
  if (out.numel() == 0) return;

  const int device = args.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = args.launch.stream;
  // out's row stride, the cuBLASLt leading dimension of every output matrix (n where m is 1).
  const std::int64_t out_ld = m > 1 ? out.strides[nd - 2] : n;
  check((n == 1 || out.strides[nd - 1] == 1) && out_ld >= n, "matmul", "the output's matrices must be row-major ",
        "(unit column stride, row stride >= n = ", n, "), got strides ", out.strides[nd - 2], " and ",
        out.strides[nd - 1]);
  // The addend (out = addend + a·b) is read at out's offsets: the same shape and strides.
  const TensorView& addend = args.addend;
  if (addend.present()) {
    bool same = addend.ndim == nd && addend.dtype == out.dtype;
    for (int d = 0; same && d < nd; ++d) same = addend.shape[d] == out.shape[d] && addend.strides[d] == out.strides[d];
    check(same && k > 0, "matmul", "an addend needs the output's shape, strides and dtype, and k > 0");
  }
  if (k == 0) {  // sums of nothing; all-zero bytes are 0.0 in every floating type
    check(out.is_contiguous(), "matmul", "an empty inner dim (k = 0) needs a contiguous output");
    KILN_CUDA_CHECK(cudaMemsetAsync(out.data, 0, static_cast<std::size_t>(out.numel() * types.element_bytes), stream));
    return;
  }

  // Batch dims of size > 1, outermost first.
  std::vector<BatchDim> dims;
  for (int d = 0; d < nd - 2; ++d)
    if (out.shape[d] > 1) dims.push_back({out.shape[d], {out.strides[d], a.strides[d], b.strides[d]}});

  cuda::LtGemm g;
  g.device = device;
  g.type = types.type;
  g.compute = types.compute;
  g.scale = types.scale;
  const auto bytes = [&](std::int64_t elements) { return static_cast<std::uintptr_t>(elements * types.element_bytes); };
  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };

  // Shared right operand: fold the batch into the rows of one GEMM when a's batch and row dims are
  // one evenly spaced run of rows with unit column stride, and out's too.
  bool shared_b = !dims.empty();
  for (const BatchDim& d : dims) shared_b = shared_b && d.stride[2] == 0;
  if (shared_b && (k == 1 || a.strides[nd - 1] == 1)) {
    std::vector<BatchDim> rows = dims;
    if (m > 1) rows.push_back({m, {out_ld, a.strides[nd - 2], 0}});
    std::int64_t row_stride = 0, out_row_stride = 0;
    if (evenly_spaced(rows, 0, rows.size(), 1, row_stride) && row_stride >= k &&
        evenly_spaced(rows, 0, rows.size(), 0, out_row_stride) && out_row_stride >= n) {
      std::int64_t total_rows = 1;
      for (const BatchDim& d : rows) total_rows *= d.size;
      check_int32("a row count", total_rows);
      check_int32("n", n);
      check_int32("k", k);
      as_transposed_operand(k, n, b.strides[nd - 2], b.strides[nd - 1], g.op_a, g.a);  // Bᵀ
      g.op_b = CUBLAS_OP_N;  // row-major A (total_rows x k) read column-major is Aᵀ
      g.b = {k, total_rows, row_stride, 0, 256};
      g.d = {n, total_rows, out_row_stride, 0, 256};
      g.a.alignment = cuda::alignment_of(address(b.data));
      g.b.alignment = cuda::alignment_of(address(a.data));
      g.d.alignment = cuda::alignment_of(address(out.data) | address(addend.data));
      cuda::lt_matmul(g, b.data, a.data, out.data, stream, addend.data);
      return;
    }
  }

  check_int32("m", m);
  check_int32("n", n);
  check_int32("k", k);
  as_transposed_operand(k, n, b.strides[nd - 2], b.strides[nd - 1], g.op_a, g.a);  // Bᵀ
  as_transposed_operand(m, k, a.strides[nd - 2], a.strides[nd - 1], g.op_b, g.b);  // Aᵀ
  g.d = {n, m, out_ld, 0, 256};

  // The innermost batch dims evenly spaced in all three operands run as one strided batch.
  std::size_t first = dims.size();
  std::int64_t step[3] = {0, 0, 0};
  while (first > 0) {
    std::int64_t s[3];
    bool ok = true;
    for (int o = 0; o < 3; ++o) ok = ok && evenly_spaced(dims, first - 1, dims.size(), o, s[o]);
    if (!ok) break;
    --first;
    for (int o = 0; o < 3; ++o) step[o] = s[o];
  }
  std::int64_t batch = 1;
  for (std::size_t d = first; d < dims.size(); ++d) batch *= dims[d].size;
  check_int32("batch count", batch);
  g.batch_count = batch;
  g.d.batch_stride = step[0];
  g.b.batch_stride = step[1];
  g.a.batch_stride = step[2];

  // Alignment every matrix the plan runs on is guaranteed: the base address, the batch stride and
  // the strides of the looped dims all keep it.
  std::uintptr_t align_bits[3] = {address(out.data) | address(addend.data), address(a.data), address(b.data)};
  for (int o = 0; o < 3; ++o) {
    if (batch > 1) align_bits[o] |= bytes(step[o]);
    for (std::size_t d = 0; d < first; ++d) align_bits[o] |= bytes(dims[d].stride[o]);
  }
  g.d.alignment = cuda::alignment_of(align_bits[0]);
  g.b.alignment = cuda::alignment_of(align_bits[1]);
  g.a.alignment = cuda::alignment_of(align_bits[2]);

  // Loop over the outer batch dims that did not fit the strided batch (none in the common cases).
  std::int64_t loops = 1;
  for (std::size_t d = 0; d < first; ++d) loops *= dims[d].size;
  std::vector<std::int64_t> index(first, 0);
  for (std::int64_t i = 0; i < loops; ++i) {
    std::int64_t off[3] = {0, 0, 0};
    for (std::size_t d = 0; d < first; ++d)
      for (int o = 0; o < 3; ++o) off[o] += index[d] * dims[d].stride[o];
    auto at = [&](const TensorView& t, int o) { return static_cast<char*>(t.data) + bytes(off[o]); };
    cuda::lt_matmul(g, at(b, 2), at(a, 1), at(out, 0), stream, addend.present() ? at(addend, 0) : nullptr);
    for (std::size_t d = first; d-- > 0;) {
      if (++index[d] < dims[d].size) break;
      index[d] = 0;
    }
  }
}

inline const bool matmul_registered = register_device_kernel(&launch_matmul);

}  // namespace kiln::kernels
