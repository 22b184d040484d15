// FP8 GEMM with DeepSeek-V3's fine-grained scaling: quantization of float/bf16 matrices to e4m3
// with one FP32 scale per 1×128 tile or per 128×128 block, and D = A · Bᵀ on those operands.
//
// Layouts (what the kernels in kernels/fp8_gemm/ read; see kernels/fp8_gemm/args.hpp):
//   QuantizedMatrix::data   e4m3 [rows, cols], contiguous row-major (rows of K bytes).
//   QuantizedMatrix::scale  row_1x128:     logical [rows, ceil(cols/128)] with strides (1, ld),
//                                          ld = round_up(rows, 4): "k-block major" storage, allocated
//                                          as [ceil(cols/128), ld] (entries rows..ld-1 hold 0) and
//                                          viewed transposed, so the scales of one k-block for a
//                                          run of rows are contiguous and 16-byte aligned;
//                           block_128x128: [ceil(rows/128), ceil(cols/128)] contiguous.
// Bytes per element: data 1; scales 4/128 (row tiles) or 4/16384 (blocks).
//
// The scale rules both backends evaluate (tile_scale, amax_step, Tiling) are math/fp8.hpp; the CPU
// paths are backend/cpu/fp8_gemm.hpp. On the GPU, gemm fills kernels::Fp8GemmArgs with the
// operands as detail::cpu_operand reads them (row stride data.strides[0], or K for a single row;
// scale leading dimension scale.strides[1] for 1×128 tiles, scale.size(1) for 128×128 blocks), and
// quantize fills kernels::Fp8QuantizeArgs with a source matrix S [S_rows, S_cols] of strides
// (lds, 1): the matrix quantized is S itself, or Sᵀ when `transposed` (the front-end picks
// whichever view of x has unit stride along its rows, so the kernels always read 16-byte runs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kiln/backend/cpu/fp8_gemm.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/core/environment.hpp"
#include "kiln/kernels/fp8_gemm/args.hpp"
#include "kiln/math/fp8.hpp"
#include "kiln/ops/binary.hpp"  // to() of an fp8 tensor instantiates autograd accumulation, which adds
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln::fp8 {

// Tiling and tiling_name are declared in math/fp8.hpp (the kernels take them too).

struct QuantizeOptions {
  // Lower bound on a tile's amax (keeps all-zero tiles from a zero scale); at least 1e-30.
  float amax_floor = 1e-4f;
  // Round each scale up to a power of two (then scaling and unscaling are exact).
  bool power_of_two_scale = false;

  bool operator==(const QuantizeOptions&) const = default;
};

// An e4m3 matrix and its FP32 scales: value(r, c) ≈ float(data(r, c)) * scale_of(r, c / 128).
struct QuantizedMatrix {
  Tensor<fp8_e4m3> data;  // [rows, cols], contiguous row-major
  Tensor<float> scale;    // see the header comment
  Tiling tiling = Tiling::row_1x128;

  std::int64_t rows() const { return data.size(0); }
  std::int64_t cols() const { return data.size(1); }
  Device device() const { return data.device(); }
};

// Which kernel runs a GPU gemm: automatic, hopper, simt (kernels/fp8_gemm/args.hpp).
using GemmKernel = kernels::Fp8GemmKernel;

struct GemmOptions {
  // Scale and add each k-block's partial sum in FP32 (DeepSeek-V3); false keeps the whole K in the
  // tensor cores' accumulator (only the Hopper kernel honours it; see kernels/fp8_gemm/args.hpp).
  bool promote = true;
  GemmKernel kernel = GemmKernel::automatic;
  // Elements of K the Hopper kernel's tensor cores sum between promotions: 128 (one k-block,
  // DeepSeek-V3), 64 or 32 (lower error, more CUDA-core work). The same function either way; the
  // CPU and simt paths, which sum in FP32, ignore it.
  int promotion_interval = 128;

  bool operator==(const GemmOptions&) const = default;
};

namespace detail {

// The one-read quantization launches (quantize_with_transposed's: x and xᵀ, W and Wᵀ; the stacked
// expert weights in one batched launch) are the default since their tests passed on an H100
// (2026-12-05). KILN_FP8_ONE_READ=off in the environment (read at each call: the tests switch it)
// runs the per-matrix launches instead, which write the same bytes: the A/B of docs/fp8-gemm.md.
inline bool one_read_quantization() {
  return !environment_is("KILN_FP8_ONE_READ", "off");
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
inline std::int64_t scale_ld_for(std::int64_t rows) { return (rows + 3) / 4 * 4; }

// Uninitialised data and scales for a [rows, cols] matrix with the given tiling.
inline QuantizedMatrix allocate(std::int64_t rows, std::int64_t cols, Tiling tiling, Device device) {
  QuantizedMatrix q;
  q.tiling = tiling;
  q.data = Tensor<fp8_e4m3>({rows, cols}, device);
  const std::int64_t kblocks = ceil_div(cols, tile_size);
  if (tiling == Tiling::row_1x128) {
    const std::int64_t ld = scale_ld_for(rows);
    const Tensor<float> storage({kblocks, ld}, device);
    q.scale = Tensor<float>::view_of(storage.storage(), 0, {rows, kblocks}, {1, ld});
  } else {
    q.scale = Tensor<float>({ceil_div(rows, tile_size), kblocks}, device);
  }
  return q;
}

// The scale storage as allocated by `allocate` ([kblocks, ld] or the block grid), for kernels.
inline Tensor<float> scale_storage(const QuantizedMatrix& q) {
  if (q.tiling == Tiling::block_128x128) return q.scale;
  const std::int64_t kblocks = q.scale.size(1), ld = q.scale.stride(1);
  return Tensor<float>::view_of(q.scale.storage(), q.scale.offset(), {kblocks, ld}, {ld, 1});
}

// The checks of a quantization's input x (2-D, non-empty) and options.
template <class T>
void check_quantize(const char* op, const Tensor<T>& x, const QuantizeOptions& options) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "kiln::fp8::quantize takes float or bfloat16 tensors");
  check_defined(op, x);
  check(x.dim() == 2, op, "expects a 2-D tensor, got shape ", x.shape());
  check(x.size(0) >= 1 && x.size(1) >= 1, op, "expects a non-empty matrix, got shape ", x.shape());
  check(options.amax_floor >= 1e-30f && std::isfinite(options.amax_floor), op,
        "amax_floor must be finite and at least 1e-30, got ", options.amax_floor, " (tensor of shape ",
        x.shape(), ")");
}

// Quantizes the logical matrix L = x (transposed = false) or xᵀ (true), checked by check_quantize,
// into q_data (L's shape, contiguous rows) and the scale storage `storage` ([kblocks, ld] for 1×128
// tiles, the block grid for 128×128 blocks: what scale_storage gives), on x's device. The grouped
// quantization (ops/grouped_fp8_gemm.hpp) calls it on views of one group's slices.
template <class T>
void quantize_into(const char* op, const Tensor<T>& x_in, bool transposed, Tiling tiling,
                   const QuantizeOptions& options, const Tensor<fp8_e4m3>& q_data, const Tensor<float>& storage) {
  Tensor<T> x = x_in.detach();
  const std::int64_t rows = transposed ? x.size(1) : x.size(0), cols = transposed ? x.size(0) : x.size(1);
  std::int64_t s0 = transposed ? x.stride(1) : x.stride(0), s1 = transposed ? x.stride(0) : x.stride(1);
  const std::int64_t scale_ld = storage.stride(0);

  if (x.device().is_cpu()) {
    std::fill(storage.data(), storage.data() + storage.numel(), 0.0f);  // ld padding of the row tiling
    auto* bytes = reinterpret_cast<std::uint8_t*>(q_data.data());
    if (tiling == Tiling::row_1x128)
      cpu::fp8_quantize_rows(x.data(), rows, cols, s0, s1, options.amax_floor, options.power_of_two_scale, bytes,
                             storage.data(), scale_ld);
    else
      cpu::fp8_quantize_blocks(x.data(), rows, cols, s0, s1, options.amax_floor, options.power_of_two_scale, bytes,
                               storage.data(), scale_ld);
    return;
  }

  // The kernels read a source matrix S with unit stride along its rows: S = L (rows of L are
  // contiguous) or S = Lᵀ (columns of L are); anything else is copied first. A dim of size 1 has
  // no meaningful stride, so it never forces the copy.
  const bool rows_unit = cols == 1 || s1 == 1, cols_unit = rows == 1 || s0 == 1;
  if (!rows_unit && !cols_unit) {
    x = contiguous(x);
    s0 = transposed ? x.stride(1) : x.stride(0);
    s1 = transposed ? x.stride(0) : x.stride(1);
  }
  const bool read_rows = cols == 1 || s1 == 1;
  const std::int64_t src_rows = read_rows ? rows : cols, src_cols = read_rows ? cols : rows;
  std::int64_t lds = read_rows ? s0 : s1;
  if (src_rows == 1) lds = src_cols;  // unused: give it a harmless, aligned value
  launch_device_kernel(op, kernels::Fp8QuantizeArgs{.launch = launch_on(op, x.device()),
                                                    .dtype = dtype_of<T>,
                                                    .src = x.data(),
                                                    .src_rows = src_rows,
                                                    .src_cols = src_cols,
                                                    .lds = lds,
                                                    .transposed = !read_rows,
                                                    .tiling = tiling,
                                                    .q = reinterpret_cast<std::uint8_t*>(q_data.data()),
                                                    .scale = storage.data(),
                                                    .scale_ld = scale_ld,
                                                    .amax_floor = options.amax_floor,
                                                    .power_of_two = options.power_of_two_scale});
}

// Quantizes the logical matrix L = x (transposed = false) or xᵀ (true).
template <class T>
QuantizedMatrix quantize(const char* op, const Tensor<T>& x, bool transposed, Tiling tiling,
                         const QuantizeOptions& options) {
  check_quantize(op, x, options);
  const std::int64_t rows = transposed ? x.size(1) : x.size(0), cols = transposed ? x.size(0) : x.size(1);
  QuantizedMatrix q = allocate(rows, cols, tiling, x.device());
  quantize_into(op, x, transposed, tiling, options, q.data, scale_storage(q));
  return q;
}

// The checks every GEMM operand passes (`name` is "A" or "B").
inline void check_operand(const char* op, const char* name, const QuantizedMatrix& q) {
  check(q.data.defined() && q.scale.defined(), op, name, " is an undefined QuantizedMatrix");
  check(q.data.dim() == 2, op, name, " data must be 2-D [rows, K], got shape ", q.data.shape());
  const std::int64_t rows = q.data.size(0), cols = q.data.size(1);
  check(rows >= 1 && cols >= 1, op, name, " must be non-empty, got shape ", q.data.shape());
  check(cols == 1 || q.data.stride(1) == 1, op, name, " data of shape ", q.data.shape(),
        " must have contiguous rows, got strides ", q.data.strides());
  check(rows == 1 || q.data.stride(0) >= cols, op, name, " data of shape ", q.data.shape(),
        " has overlapping rows (strides ", q.data.strides(), ")");
  const std::int64_t kblocks = ceil_div(cols, tile_size);
  if (q.tiling == Tiling::row_1x128) {
    const Shape want{rows, kblocks};
    check(q.scale.shape() == want, op, name, " data of shape ", q.data.shape(), " with 1x128 tiles needs scales of shape ",
          want, ", got ", q.scale.shape());
    check(q.scale.stride(0) == 1 && q.scale.stride(1) >= rows && q.scale.stride(1) % 4 == 0, op, name,
          " scales of shape ", q.scale.shape(), " must be k-block major: strides (1, ld) with ld >= ", rows,
          " and a multiple of 4, got strides ", q.scale.strides());
  } else {
    const Shape want{ceil_div(rows, tile_size), kblocks};
    check(q.scale.shape() == want, op, name, " data of shape ", q.data.shape(),
          " with 128x128 blocks needs scales of shape ", want, ", got ", q.scale.shape());
    check(q.scale.is_contiguous(), op, name, " scales of shape ", q.scale.shape(), " must be contiguous, got strides ",
          q.scale.strides());
  }
  check(q.scale.device() == q.data.device(), op, name, " data on ", q.data.device(), " (shape ", q.data.shape(),
        ") but scales on ", q.scale.device());
}

inline void check_gemm(const char* op, const QuantizedMatrix& a, const QuantizedMatrix& b) {
  check_operand(op, "A", a);
  check_operand(op, "B", b);
  check(a.tiling == Tiling::row_1x128, op, "A must have 1x128 tiles, got 128x128 blocks (A of shape ", a.data.shape(),
        ")");
  check(a.cols() == b.cols(), op, "A of shape ", a.data.shape(), " and B of shape ", b.data.shape(),
        " differ in K (D = A·Bᵀ needs A [M, K] and B [N, K])");
  check(a.device() == b.device(), op, "A on ", a.device(), " (shape ", a.data.shape(), ") and B on ", b.device(),
        " (shape ", b.data.shape(), ")");
}

inline cpu::Fp8Operand cpu_operand(const QuantizedMatrix& q) {
  cpu::Fp8Operand o;
  o.data = reinterpret_cast<const std::uint8_t*>(q.data.data());
  o.ld = q.data.size(0) == 1 ? q.data.size(1) : q.data.stride(0);
  o.scale = q.scale.data();
  o.tile_rows = q.tiling == Tiling::row_1x128 ? 1 : 128;
  o.scale_ld = q.tiling == Tiling::row_1x128 ? q.scale.stride(1) : q.scale.size(1);
  return o;
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// A host copy with the same layout rules (for the float64 reference and dequantize).
inline QuantizedMatrix to_host(const QuantizedMatrix& q) {
  if (q.device().is_cpu()) return q;
  QuantizedMatrix h;
  h.tiling = q.tiling;
  h.data = to(contiguous(q.data), Device::cpu());
  if (q.tiling == Tiling::row_1x128) {
    // Only the [kblocks, rows] entries in use are copied (q may be a view of some rows).
    const std::int64_t rows = q.scale.size(0), kblocks = q.scale.size(1);
    const Tensor<float> by_block = Tensor<float>::view_of(q.scale.storage(), q.scale.offset(), {kblocks, rows},
                                                          {q.scale.stride(1), 1});
    const Tensor<float> host = to(contiguous(by_block), Device::cpu());
    h.scale = Tensor<float>::view_of(host.storage(), 0, {rows, kblocks}, {1, rows});
  } else {
    h.scale = to(contiguous(q.scale), Device::cpu());
  }
  return h;
}

}  // namespace detail

// x [rows, cols] float or bf16 (CPU or CUDA, any strides) -> e4m3 with one scale per tile:
// scale = max(amax(tile), amax_floor) / 448, rounded up to a power of two if asked;
// q = e4m3(x / scale), round to nearest even, saturating. Bit-identical on CPU and CUDA.
// NaN elements are ignored by amax and quantize to NaN (0x7F); an infinite element makes its
// tile's scale infinite (the tile becomes zeros and NaN).
template <class T>
QuantizedMatrix quantize(const Tensor<T>& x, Tiling tiling, QuantizeOptions options = {}) {
  return detail::quantize("fp8_quantize", x, false, tiling, options);
}

// The quantization of xᵀ ([cols, rows]) without materialising it: bit for bit
// quantize(transpose(x, 0, 1), tiling). On CUDA the kernel reads x through shared-memory tiles.
template <class T>
QuantizedMatrix quantize_transposed(const Tensor<T>& x, Tiling tiling, QuantizeOptions options = {}) {
  return detail::quantize("fp8_quantize", x, true, tiling, options);
}

// x and xᵀ quantized with the same tiling, from one read where a kernel does both: what fp8_linear
// needs of an activation (1×128 tiles: the forward's A, then the weight gradient's xᵀ), of an
// output gradient (the data gradient's A, the weight gradient's dYᵀ) and of a weight (128×128
// blocks: the forward's B, the data gradient's Wᵀ; the same scales, transposed). Bit for bit
// {quantize(x, tiling), quantize_transposed(x, tiling)}. On CUDA, for an x with contiguous rows
// (and bf16 for 1×128 tiles: rows_both_kernel in kernels/fp8_gemm/quantize.cuh, 4 bytes of
// traffic per element instead of 6) one launch writes both (KILN_FP8_ONE_READ=off: two quantizations,
// detail::one_read_quantization).
struct QuantizedPair {
  QuantizedMatrix plain;       // x [rows, cols]
  QuantizedMatrix transposed;  // xᵀ [cols, rows]
};

template <class T>
QuantizedPair quantize_with_transposed(const Tensor<T>& x, Tiling tiling, QuantizeOptions options = {}) {
  const char* op = "fp8_quantize_with_transposed";
  detail::check_quantize(op, x, options);
  const std::int64_t rows = x.size(0), cols = x.size(1);
  const bool one_read = x.device().is_cuda() && (cols == 1 || x.stride(1) == 1) &&
                        (tiling == Tiling::block_128x128 || std::is_same_v<T, bf16>) &&
                        detail::one_read_quantization();
  if (!one_read)
    return {detail::quantize(op, x, false, tiling, options), detail::quantize(op, x, true, tiling, options)};
  QuantizedPair out{detail::allocate(rows, cols, tiling, x.device()), detail::allocate(cols, rows, tiling, x.device())};
  const Tensor<float> scale = detail::scale_storage(out.plain), scale_t = detail::scale_storage(out.transposed);
  launch_device_kernel(op, kernels::Fp8QuantizeArgs{.launch = launch_on(op, x.device()),
                                                    .dtype = dtype_of<T>,
                                                    .src = x.data(),
                                                    .src_rows = rows,
                                                    .src_cols = cols,
                                                    .lds = rows == 1 ? cols : x.stride(0),
                                                    .tiling = tiling,
                                                    .q = reinterpret_cast<std::uint8_t*>(out.plain.data.data()),
                                                    .scale = scale.data(),
                                                    .scale_ld = scale.stride(0),
                                                    .amax_floor = options.amax_floor,
                                                    .power_of_two = options.power_of_two_scale,
                                                    .q_t = reinterpret_cast<std::uint8_t*>(out.transposed.data.data()),
                                                    .scale_t = scale_t.data(),
                                                    .scale_t_ld = scale_t.stride(0)});
  return out;
}

// float(data) * scale, [rows, cols] on q's device (computed on the host; for tests and debugging).
inline Tensor<float> dequantize(const QuantizedMatrix& q) {
  detail::check_operand("fp8_dequantize", "the matrix", q);
  const QuantizedMatrix h = detail::to_host(q);
  const cpu::Fp8Operand o = detail::cpu_operand(h);
  const auto& value = cpu::e4m3_values();
  const std::int64_t rows = h.rows(), cols = h.cols();
  Tensor<float> out({rows, cols});
  float* p = out.data();
  cpu::parallel_for(rows, cols, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      for (std::int64_t j = 0; j < cols; ++j) p[i * cols + j] = value[o.data[i * o.ld + j]] * o.scale_of(i, j / tile_size);
  });
  return to(out, q.device());
}

// D [M, N] = A [M, K] · B [N, K]ᵀ with the scales: per output, per k-block, the FP32 partial sum
// of the e4m3 products times a_scale · b_scale, accumulated in FP32. A must have 1×128 tiles; B
// 1×128 tiles or 128×128 blocks. Out = float or bf16. On CUDA the Hopper kernel needs N and K
// multiples of 16 and 16-byte aligned operands: `automatic` falls back to the plain CUDA kernel
// otherwise, while asking for `hopper` explicitly is an error.
template <class Out>
Tensor<Out> gemm(const QuantizedMatrix& a, const QuantizedMatrix& b, GemmOptions options = {}) {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16>,
                "kiln::fp8::gemm writes float or bfloat16 outputs");
  const char* op = "fp8_gemm";
  detail::check_gemm(op, a, b);
  check(options.promotion_interval == 32 || options.promotion_interval == 64 || options.promotion_interval == 128, op,
        "promotion_interval must be 32, 64 or 128, got ", options.promotion_interval, " (A of shape ", a.data.shape(),
        ", B of shape ", b.data.shape(), ")");
  const std::int64_t m = a.rows(), n = b.rows(), k = a.cols();
  Tensor<Out> d({m, n}, a.device());
  if (a.device().is_cpu()) {
    cpu::fp8_gemm(detail::cpu_operand(a), detail::cpu_operand(b), m, n, k, d.data(), n);
    return d;
  }
  const cpu::Fp8Operand ca = detail::cpu_operand(a), cb = detail::cpu_operand(b);
  const bool hopper_shapes = n % 16 == 0 && k % 16 == 0 && ca.ld % 16 == 0 && cb.ld % 16 == 0;
  const bool hopper_aligned = detail::aligned16(ca.data) && detail::aligned16(cb.data) &&
                              detail::aligned16(ca.scale) && detail::aligned16(cb.scale);
  const bool hopper_ok = hopper_shapes && hopper_aligned;
  if (options.kernel == GemmKernel::hopper)
    check(hopper_ok, op, "the Hopper kernel needs N and K multiples of 16 and 16-byte aligned operands, got A of shape ",
          a.data.shape(), " (row stride ", ca.ld, ") and B of shape ", b.data.shape(), " (row stride ", cb.ld,
          "); use GemmKernel::simt or automatic");
  const GemmKernel kernel = options.kernel == GemmKernel::hopper                 ? GemmKernel::hopper
                            : options.kernel == GemmKernel::simt || !hopper_ok ? GemmKernel::simt
                                                                               : GemmKernel::automatic;
  launch_device_kernel(op, kernels::Fp8GemmArgs{.launch = launch_on(op, a.device()),
                                                .implementation = kernel,
                                                .d = d.data(),
                                                .d_dtype = dtype_of<Out>,
                                                .ldd = n,
                                                .a = ca.data,
                                                .lda = ca.ld,
                                                .a_scale = ca.scale,
                                                .a_scale_ld = ca.scale_ld,
                                                .b = cb.data,
                                                .ldb = cb.ld,
                                                .b_scale = cb.scale,
                                                .b_scale_ld = cb.scale_ld,
                                                .b_tile_rows = cb.tile_rows,
                                                .m = m,
                                                .n = n,
                                                .k = k,
                                                .promote = options.promote,
                                                .promotion_interval = options.promotion_interval});
  return d;
}

// The float64 value of the same quantized product for the rows `rows` of A ([rows.size(), N],
// on the CPU; device operands are copied to the host): per k-block exact sums, scaled by
// a_scale · b_scale, summed in double. Tests and benchmarks measure errors against it; a subset
// of rows keeps it affordable for large M.
inline Tensor<double> gemm_reference(const QuantizedMatrix& a, const QuantizedMatrix& b,
                                     const std::vector<std::int64_t>& rows) {
  const char* op = "fp8_gemm_reference";
  detail::check_gemm(op, a, b);
  for (std::int64_t r : rows)
    check(r >= 0 && r < a.rows(), op, "row ", r, " is out of range for A of shape ", a.data.shape());
  const QuantizedMatrix ha = detail::to_host(a), hb = detail::to_host(b);
  Tensor<double> out({static_cast<std::int64_t>(rows.size()), b.rows()});
  cpu::fp8_gemm_reference(detail::cpu_operand(ha), detail::cpu_operand(hb), rows, b.rows(), a.cols(), out.data());
  return out;
}

// The float64 value of the whole product [M, N].
inline Tensor<double> gemm_reference(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(a.data.defined() && a.data.dim() == 2 ? a.rows() : 0));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<std::int64_t>(i);
  return gemm_reference(a, b, rows);
}

}  // namespace kiln::fp8
