// The weight gradient of an MoE layer's experts in FP8, as DeepSeek-V3 runs it (technical report
// §3.3: all three GEMMs of a linear in FP8, the weight gradient's operands in 1×128 tiles along
// the tokens). With the expert rows sorted by expert (group g owns rows offsets[g] ..
// offsets[g+1] − 1, the dispatch order of kernels/moe/), each expert's gradient sums over its own
// rows only:
//
//   dW_g = dY_gᵀ · X_g     dY [R, N], X [R, K] -> dW [G, N, K]
//
// a "k-grouped" product: the groups split the reduction dimension, where the grouped GEMM of
// ops/grouped_fp8_gemm.hpp splits the rows of the output.
//
//   quantize_k_grouped(x, offsets)  x [R, C] -> KGroupedMatrix: the groups' x_gᵀ [C, count_g] side
//                                   by side in one e4m3 matrix [C, P] with 1×128 tiles, each group
//                                   from a k-block boundary (math/k_grouped.hpp: the layout), so a
//                                   tile never mixes two experts' rows: bit for bit
//                                   quantize_transposed(x_g, row_1x128) of each group alone.
//   k_grouped_gemm<Out>(a, b)       a from dY [R, M], b from X [R, N] with the same offsets ->
//                                   D [G, M, N], D_g = dY_gᵀ · X_g in the dense recipe (per k-block
//                                   the FP32 sum of e4m3 products times both scales, accumulated in
//                                   FP32); an empty group's D_g is 0.
//
// The offsets ([G + 1], int64, from 0 to R, nondecreasing; empty groups allowed) stay on their
// device: the host never reads them on a GPU (the layout's width P = k_grouped_columns(R, G) does
// not depend on them). The CPU checks them; CUDA kernels clamp them (math/k_grouped.hpp).
//
// Backends: the CPU runs the dense CPU quantization and FP8 GEMM on each group's rows and
// columns; CUDA runs the transposed quantization kernel in its k-grouped variant
// (kernels/fp8_gemm/quantize.cuh) and the GEMM on the dense Hopper FP8 kernel with its split units
// as groups, or a plain CUDA kernel (kernels/grouped_fp8_gemm/k_grouped.cuh). docs/fp8-gemm.md has
// the algorithm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/math/k_grouped.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/grouped_fp8_gemm.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::fp8 {

// A matrix's rows grouped by expert, transposed and quantized in the k-grouped layout.
struct KGroupedMatrix {
  QuantizedMatrix q;                    // [C, P] e4m3, 1×128 tiles along P (row_1x128)
  Tensor<std::int64_t> offsets;         // [G + 1]: the groups' rows of the source, on q's device
  std::int64_t source_rows = 0;         // R

  std::int64_t groups() const { return offsets.size(0) - 1; }
  std::int64_t rows() const { return q.rows(); }  // C: the source's columns
  Device device() const { return q.device(); }
};

namespace detail {

inline void check_k_group_offsets(const char* op, const Tensor<std::int64_t>& offsets, Device device) {
  check_defined(op, offsets);
  check(offsets.dim() == 1 && offsets.size(0) >= 2, op, "offsets must be [G + 1] with G >= 1, got shape ",
        offsets.shape());
  check(offsets.device() == device, op, "offsets on ", offsets.device(), " but the rows on ", device);
  check(offsets.size(0) - 1 <= 65535, op, "takes at most 65535 groups, got offsets of shape ", offsets.shape());
}

// Group g's columns of the layout on the host, from checked host offsets.
inline std::vector<KGroup> host_k_groups(const char* op, const Tensor<std::int64_t>& offsets, std::int64_t rows) {
  const std::int64_t G = offsets.size(0) - 1;
  const std::vector<cpu::GroupSpan> spans = host_spans(op, offsets, false, G, rows);
  std::vector<KGroup> out;
  std::int64_t column = 0;
  for (const cpu::GroupSpan& s : spans) {
    out.push_back({s.start, s.count, column});
    column += k_group_round(s.count);
  }
  return out;
}

// Columns [column, ...) of a 1×128-tiled operand, as the dense CPU GEMM's operand (column a
// multiple of 128: the scales move by whole k-blocks).
inline cpu::Fp8Operand columns_from(const cpu::Fp8Operand& o, std::int64_t column) {
  cpu::Fp8Operand v = o;
  v.data += column;
  v.scale += (column / tile_size) * o.scale_ld;
  return v;
}

inline void check_k_grouped_pair(const char* op, const KGroupedMatrix& a, const KGroupedMatrix& b) {
  for (const KGroupedMatrix* m : {&a, &b}) {
    check_operand(op, m == &a ? "A" : "B", m->q);
    check(m->q.tiling == Tiling::row_1x128 && m->q.data.is_contiguous(), op,
          "operands must come from quantize_k_grouped (contiguous, 1x128 tiles), got data of shape ",
          m->q.data.shape(), " and strides ", m->q.data.strides());
    check(m->offsets.defined() && m->offsets.dim() == 1 && m->offsets.size(0) >= 2, op,
          "operand without its group offsets (shape ", m->offsets.shape(), ")");
  }
  check(a.source_rows == b.source_rows && a.offsets.size(0) == b.offsets.size(0) && a.q.cols() == b.q.cols(), op,
        "A (", a.groups(), " groups of ", a.source_rows, " rows, data of shape ", a.q.data.shape(), ") and B (",
        b.groups(), " groups of ", b.source_rows, " rows, data of shape ", b.q.data.shape(),
        ") must group the same rows");
  check(a.device() == b.device() && a.offsets.device() == a.device() && b.offsets.device() == a.device(), op,
        "A on ", a.device(), " and B on ", b.device(), ": both, and their offsets, must be on one device");
  if (a.device().is_cpu()) {
    check(a.offsets.to_vector() == b.offsets.to_vector(), op, "A and B were quantized with different group offsets");
  } else {
    // The host never reads device offsets: the two operands must share one offsets tensor.
    check(a.offsets.data() == b.offsets.data(), op,
          "A and B must be quantized with the same offsets tensor on ", a.device());
  }
}

}  // namespace detail

// x [R, C] (float or bf16, any strides) with rows grouped by offsets [G + 1] -> the k-grouped
// layout [C, P] of the groups' transposes (see the header comment). Columns between and after the
// groups hold zeros; their tiles' scales are those of an all-zero tile. R may be 0.
template <class T>
KGroupedMatrix quantize_k_grouped(const Tensor<T>& x_in, const Tensor<std::int64_t>& offsets,
                                  QuantizeOptions options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "kiln::fp8::quantize_k_grouped takes float or bfloat16");
  const char* op = "fp8_quantize_k_grouped";
  check_defined(op, x_in);
  check(x_in.dim() == 2 && x_in.size(1) >= 1, op, "expects rows [R, C] with C >= 1, got shape ", x_in.shape());
  check(options.amax_floor >= 1e-30f && std::isfinite(options.amax_floor), op,
        "amax_floor must be finite and at least 1e-30, got ", options.amax_floor);
  detail::check_k_group_offsets(op, offsets, x_in.device());
  const std::int64_t R = x_in.size(0), C = x_in.size(1), G = offsets.size(0) - 1;
  const std::int64_t P = k_grouped_columns(R, G);
  KGroupedMatrix out;
  out.q = detail::allocate(C, P, Tiling::row_1x128, x_in.device());
  out.offsets = offsets;
  out.source_rows = R;
  const Tensor<float> storage = detail::scale_storage(out.q);

  if (x_in.device().is_cpu()) {
    const std::vector<KGroup> groups = detail::host_k_groups(op, offsets, R);
    auto* bytes = reinterpret_cast<std::uint8_t*>(out.q.data.data());
    std::fill(bytes, bytes + C * P, std::uint8_t{0});
    // Every tile's scale that of an all-zero tile, the ld padding 0; the groups' tiles overwrite theirs.
    const float zero_scale = fp8::tile_scale(0.0f, options.amax_floor, options.power_of_two_scale);
    const std::int64_t ld = storage.stride(0);
    float* s = storage.data();
    for (std::int64_t kb = 0; kb < P / tile_size; ++kb)
      for (std::int64_t i = 0; i < ld; ++i) s[kb * ld + i] = i < C ? zero_scale : 0.0f;
    for (const KGroup& g : groups) {
      if (g.count == 0) continue;
      const QuantizedMatrix part = quantize_transposed(narrow(x_in, 0, g.row, g.count), Tiling::row_1x128, options);
      const cpu::Fp8Operand from = detail::cpu_operand(part);
      for (std::int64_t c = 0; c < C; ++c)
        std::copy_n(from.data + c * from.ld, g.count, bytes + c * P + g.column);
      for (std::int64_t kb = 0; kb < detail::ceil_div(g.count, tile_size); ++kb)
        for (std::int64_t c = 0; c < C; ++c) s[(g.column / tile_size + kb) * ld + c] = from.scale_of(c, kb);
    }
    return out;
  }

  // The kernel reads x with unit stride along its rows.
  const Tensor<T> x = x_in.stride(1) == 1 || C == 1 ? x_in.detach() : contiguous(x_in.detach());
  const Tensor<std::int64_t> oc = contiguous(offsets);
  out.offsets = oc;
  launch_device_kernel(op, kernels::Fp8QuantizeArgs{.launch = launch_on(op, x.device()),
                                                    .dtype = dtype_of<T>,
                                                    .src = x.data(),
                                                    .src_rows = R,
                                                    .src_cols = C,
                                                    .lds = R <= 1 ? C : x.stride(0),
                                                    .transposed = true,
                                                    .tiling = Tiling::row_1x128,
                                                    .q = reinterpret_cast<std::uint8_t*>(out.q.data.data()),
                                                    .scale = storage.data(),
                                                    .scale_ld = storage.stride(0),
                                                    .amax_floor = options.amax_floor,
                                                    .power_of_two = options.power_of_two_scale,
                                                    .k_group_offsets = oc.data(),
                                                    .k_groups = G,
                                                    .k_grouped_cols = P});
  return out;
}

// D [G, M, N], D_g = A_g · B_gᵀ over group g's columns: with a = quantize_k_grouped(dY) and b =
// quantize_k_grouped(X) (the same offsets tensor), D_g = dY_gᵀ · X_g. Out = float or bf16. On CUDA
// options.kernel picks the Hopper kernel (sm_90, M and N multiples of 16, G ≤ 1024; automatic
// takes it where it applies) or the plain one; the CPU ignores it.
template <class Out>
Tensor<Out> k_grouped_gemm(const KGroupedMatrix& a, const KGroupedMatrix& b, GroupedGemmOptions options = {}) {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16>,
                "kiln::fp8::k_grouped_gemm writes float or bfloat16 outputs");
  const char* op = "fp8_k_grouped_gemm";
  detail::check_k_grouped_pair(op, a, b);
  const std::int64_t G = a.groups(), M = a.rows(), N = b.rows();
  const cpu::Fp8Operand ca = detail::cpu_operand(a.q), cb = detail::cpu_operand(b.q);
  if (a.device().is_cpu()) {
    Tensor<Out> d = zeros<Out>({G, M, N});
    const std::vector<KGroup> groups = detail::host_k_groups(op, a.offsets, a.source_rows);
    for (std::int64_t g = 0; g < G; ++g) {
      const KGroup& k = groups[static_cast<std::size_t>(g)];
      if (k.count == 0) continue;
      cpu::fp8_gemm(detail::columns_from(ca, k.column), detail::columns_from(cb, k.column), M, N, k.count,
                    d.data() + g * M * N, N);
    }
    return d;
  }
  Tensor<Out> d({G, M, N}, a.device());
  launch_device_kernel(op, kernels::KGroupedFp8GemmArgs{.launch = launch_on(op, a.device()),
                                                        .implementation = options.kernel,
                                                        .d = d.data(),
                                                        .d_dtype = dtype_of<Out>,
                                                        .a = ca.data,
                                                        .a_scale = ca.scale,
                                                        .a_scale_ld = ca.scale_ld,
                                                        .b = cb.data,
                                                        .b_scale = cb.scale,
                                                        .b_scale_ld = cb.scale_ld,
                                                        .columns = a.q.cols(),
                                                        .offsets = a.offsets.data(),
                                                        .rows = a.source_rows,
                                                        .groups = static_cast<int>(G),
                                                        .m = M,
                                                        .n = N});
  return d;
}

// The float64 value of the same products (CPU; device operands are copied to the host), [G, M, N].
inline Tensor<double> k_grouped_gemm_reference(const KGroupedMatrix& a, const KGroupedMatrix& b) {
  const char* op = "fp8_k_grouped_gemm_reference";
  detail::check_k_grouped_pair(op, a, b);
  const QuantizedMatrix ha = detail::to_host(a.q), hb = detail::to_host(b.q);
  const cpu::Fp8Operand ca = detail::cpu_operand(ha), cb = detail::cpu_operand(hb);
  const std::int64_t G = a.groups(), M = a.rows(), N = b.rows();
  const std::vector<KGroup> groups = detail::host_k_groups(op, to(a.offsets, Device::cpu()), a.source_rows);
  Tensor<double> out = zeros<double>({G, M, N});
  std::vector<std::int64_t> rows(static_cast<std::size_t>(M));
  for (std::int64_t i = 0; i < M; ++i) rows[static_cast<std::size_t>(i)] = i;
  for (std::int64_t g = 0; g < G; ++g) {
    const KGroup& k = groups[static_cast<std::size_t>(g)];
    if (k.count == 0) continue;
    cpu::fp8_gemm_reference(detail::columns_from(ca, k.column), detail::columns_from(cb, k.column), rows, N, k.count,
                            out.data() + g * M * N);
  }
  return out;
}

}  // namespace kiln::fp8
