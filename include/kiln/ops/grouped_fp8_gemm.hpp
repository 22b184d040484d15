// Grouped FP8 GEMM for Mixture-of-Experts with DeepSeek-V3's fine-grained scaling: the G expert
// products of an MoE layer in one call, on the expert-contiguous row layout of kernels/moe/
// (dispatch), with the group bounds on the device (the host never reads them on a GPU).
//
//   grouped_gemm<Out>(A, B, offsets)        m-grouped contiguous: A e4m3 [R, K] (1×128 tiles, an
//                                           fp8::QuantizedMatrix), group g owns rows offsets[g] ..
//                                           offsets[g+1] − 1 (offsets [G + 1], int32 or int64, from 0
//                                           to R, nondecreasing; empty groups allowed) -> D [R, N]
//   grouped_gemm_masked<Out>(A, B, counts)  decode-time batches: A [G · M_max, K] (G slots of M_max
//                                           rows), group g owns the first counts[g] ≤ M_max rows of
//                                           its slot -> D [G, M_max, N]; rows past a count are
//                                           neither read into results nor written (zero in the
//                                           returned D; the _out form leaves them as they were)
//
// with D[r] = A[r] · B_gᵀ for each row r of group g, per k-block of 128 the FP32 sum of e4m3
// products scaled by a_scale(r, kb) · b_scale_g(n/128, kb), accumulated in FP32. B is a
// GroupedWeights: G stacked e4m3 matrices [G, N, K] with one scale per 128×128 block. The forward
// takes B = quantize_grouped(W) (W [G, out, in]); the data gradient dX = dY · W_g takes B =
// quantize_grouped_transposed(W) (W_gᵀ by 128×128 blocks: the same element sets, so the same
// scales, transposed) with A = the quantized dY.
//
// Backends: CPU (backend/cpu/grouped_fp8_gemm.hpp: the dense CPU FP8 GEMM on views of each group;
// offsets and counts are checked there) and CUDA (kernels/grouped_fp8_gemm/: a Hopper kernel on
// sm_90 for N and K multiples of 16 and 16-byte aligned operands; a plain CUDA kernel otherwise).
// Out = float or bf16. docs/fp8-gemm.md has the algorithm and the measured figures.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kiln/backend/cpu/grouped_fp8_gemm.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/grouped_fp8_gemm/args.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::fp8 {

// G stacked e4m3 matrices and their 128×128 block scales: value(g, r, c) ≈ float(data(g, r, c)) ·
// scale(g, r / 128, c / 128).
struct GroupedWeights {
  Tensor<fp8_e4m3> data;  // [G, rows, cols], contiguous
  Tensor<float> scale;    // [G, ceil(rows/128), ceil(cols/128)], contiguous

  std::int64_t groups() const { return data.size(0); }
  std::int64_t rows() const { return data.size(1); }
  std::int64_t cols() const { return data.size(2); }
  Device device() const { return data.device(); }
};

// Which kernel runs a GPU grouped GEMM: automatic, hopper, simt (kernels/grouped_fp8_gemm/args.hpp).
using GroupedGemmKernel = kernels::GroupedFp8GemmKernel;

struct GroupedGemmOptions {
  GroupedGemmKernel kernel = GroupedGemmKernel::automatic;
};

namespace detail {

// Quantizes each w[g] (transposed = false) or w[g]ᵀ by 128×128 blocks into stacked outputs; with
// `also_transposed`, w[g]ᵀ into it as well (transposed must be false). On CUDA a contiguous w is
// one launch of the dense kernels of kernels/fp8_gemm/quantize.cuh (their batch; both layouts from
// one read; KILN_FP8_ONE_READ=off turns it off: detail::one_read_quantization in
// ops/fp8_gemm.hpp); otherwise the dense quantization runs on each group's slices (CPU loops, or
// a launch per group).
template <class T>
GroupedWeights quantize_grouped(const char* op, const Tensor<T>& w_in, bool transposed, const QuantizeOptions& options,
                                GroupedWeights* also_transposed = nullptr) {
  check_defined(op, w_in);
  check(w_in.dim() == 3 && w_in.size(0) >= 1 && w_in.size(1) >= 1 && w_in.size(2) >= 1, op,
        "expects stacked weights [G, N, K] with G, N, K >= 1, got shape ", w_in.shape());
  const Tensor<T> w = w_in.detach();
  const std::int64_t G = w.size(0), N = w.size(1), K = w.size(2);
  auto allocate_stacked = [&](bool t) {
    const std::int64_t rows = t ? K : N, cols = t ? N : K;
    GroupedWeights q;
    q.data = Tensor<fp8_e4m3>({G, rows, cols}, w.device());
    q.scale = Tensor<float>({G, ceil_div(rows, tile_size), ceil_div(cols, tile_size)}, w.device());
    return q;
  };
  GroupedWeights q = allocate_stacked(transposed);
  if (also_transposed) *also_transposed = allocate_stacked(true);
  check_quantize(op, squeeze(narrow(w, 0, 0, 1), 0), options);
  if (w.device().is_cuda() && w.is_contiguous() && G <= 65535 && one_read_quantization()) {
    // One launch for the G weights: per expert, the source quantize_into below would pass
    // (S = w[g] [N, K], L = S or Sᵀ).
    launch_device_kernel(
        op, kernels::Fp8QuantizeArgs{
                .launch = launch_on(op, w.device()),
                .dtype = dtype_of<T>,
                .src = w.data(),
                .src_rows = N,
                .src_cols = K,
                .lds = K,
                .transposed = transposed,
                .tiling = Tiling::block_128x128,
                .q = reinterpret_cast<std::uint8_t*>(q.data.data()),
                .scale = q.scale.data(),
                .scale_ld = q.scale.size(2),
                .amax_floor = options.amax_floor,
                .power_of_two = options.power_of_two_scale,
                .batch = G,
                .src_batch = N * K,
                .q_batch = N * K,
                .scale_batch = q.scale.size(1) * q.scale.size(2),
                .q_t = also_transposed ? reinterpret_cast<std::uint8_t*>(also_transposed->data.data()) : nullptr,
                .scale_t = also_transposed ? also_transposed->scale.data() : nullptr,
                .scale_t_ld = also_transposed ? also_transposed->scale.size(2) : 0});
    return q;
  }
  auto slice = [](const auto& t, std::int64_t g) { return squeeze(narrow(t, 0, g, 1), 0); };
  for (std::int64_t g = 0; g < G; ++g) {
    quantize_into(op, slice(w, g), transposed, Tiling::block_128x128, options, slice(q.data, g), slice(q.scale, g));
    if (also_transposed)
      quantize_into(op, slice(w, g), true, Tiling::block_128x128, options, slice(also_transposed->data, g),
                    slice(also_transposed->scale, g));
  }
  return q;
}

inline void check_grouped_weights(const char* op, const GroupedWeights& b) {
  check(b.data.defined() && b.scale.defined(), op, "B is an undefined GroupedWeights");
  check(b.data.dim() == 3 && b.data.is_contiguous() && b.groups() >= 1 && b.rows() >= 1 && b.cols() >= 1, op,
        "B data must be contiguous stacked weights [G, N, K] with G, N, K >= 1, got shape ", b.data.shape(),
        " and strides ", b.data.strides());
  const Shape want{b.groups(), ceil_div(b.rows(), tile_size), ceil_div(b.cols(), tile_size)};
  check(b.scale.shape() == want && b.scale.is_contiguous(), op, "B data of shape ", b.data.shape(),
        " needs contiguous 128x128 block scales of shape ", want, ", got shape ", b.scale.shape(), " and strides ",
        b.scale.strides());
  check(b.scale.device() == b.data.device(), op, "B data on ", b.data.device(), " but its scales on ",
        b.scale.device());
}

// The checks of a grouped product: A [rows, K] with 1×128 tiles and contiguous rows, B [G, N, K],
// the index (offsets [G + 1] or, masked, counts [G]) 1-D on the same device; masked: G divides A's
// rows.
template <class Index>
void check_grouped(const char* op, const QuantizedMatrix& a, const GroupedWeights& b, const Tensor<Index>& index,
                   bool masked) {
  static_assert(std::is_same_v<Index, std::int32_t> || std::is_same_v<Index, std::int64_t>,
                "grouped FP8 GEMM group indices are int32 or int64 tensors");
  check_operand(op, "A", a);
  check_grouped_weights(op, b);
  check_defined(op, index);
  check(a.tiling == Tiling::row_1x128, op, "A must have 1x128 tiles, got 128x128 blocks (A of shape ", a.data.shape(),
        ")");
  check(a.rows() == 1 || a.data.stride(0) == a.cols(), op, "A data of shape ", a.data.shape(),
        " must be contiguous (row stride K), got strides ", a.data.strides());
  check(a.cols() == b.cols(), op, "A of shape ", a.data.shape(), " and B of shape ", b.data.shape(),
        " differ in K (D_g = A_g · B_gᵀ needs A [rows, K] and B [G, N, K])");
  check(a.device() == b.device() && index.device() == a.device(), op, "A on ", a.device(), ", B on ", b.device(),
        " and the ", masked ? "counts" : "offsets", " on ", index.device(), ": all must be on one device");
  const std::int64_t G = b.groups();
  check(index.dim() == 1 && index.size(0) == (masked ? G : G + 1), op, masked ? "counts" : "offsets", " must be [",
        masked ? G : G + 1, "] for B of shape ", b.data.shape(), " (", G, " groups), got shape ", index.shape());
  if (masked)
    check(a.rows() % G == 0, op, "the masked layout needs A [G * M_max, K], got A of shape ", a.data.shape(),
          " for ", G, " groups");
}

// The groups' rows on the host (CPU tensors only), checked: offsets from 0 to R, nondecreasing;
// counts in [0, M_max].
template <class Index>
std::vector<cpu::GroupSpan> host_spans(const char* op, const Tensor<Index>& index, bool masked, std::int64_t groups,
                                       std::int64_t rows) {
  const std::vector<Index> v = contiguous(index).to_vector();
  std::vector<cpu::GroupSpan> spans(static_cast<std::size_t>(groups));
  if (masked) {
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t c = v[static_cast<std::size_t>(g)];
      check(c >= 0 && c <= rows, op, "counts[", g, "] = ", c, " is outside [0, M_max = ", rows, "]");
      spans[static_cast<std::size_t>(g)] = {g * rows, c};
    }
    return spans;
  }
  check(v.front() == 0 && v.back() == rows, op, "offsets must run from 0 to R = ", rows, ", got offsets[0] = ",
        static_cast<std::int64_t>(v.front()), " and offsets[", groups, "] = ", static_cast<std::int64_t>(v.back()));
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t s = v[static_cast<std::size_t>(g)], e = v[static_cast<std::size_t>(g + 1)];
    check(s <= e, op, "offsets must not decrease, got offsets[", g, "] = ", s, " > offsets[", g + 1, "] = ", e);
    spans[static_cast<std::size_t>(g)] = {s, e - s};
  }
  return spans;
}

// D's rows of every group (d contiguous [rows_total, N] in memory) on a's device. rows: R
// (contiguous) or M_max (masked).
template <class Out, class Index>
void grouped_gemm_run(const char* op, const Tensor<Out>& d, const QuantizedMatrix& a, const GroupedWeights& b,
                      const Tensor<Index>& index, bool masked, std::int64_t rows, const GroupedGemmOptions& options) {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16>,
                "kiln::fp8::grouped_gemm writes float or bfloat16 outputs");
  const std::int64_t G = b.groups(), N = b.rows(), K = b.cols();
  const cpu::Fp8Operand ca = cpu_operand(a);
  if (a.device().is_cpu()) {
    const std::vector<cpu::GroupSpan> spans = host_spans(op, index, masked, G, rows);
    cpu::grouped_fp8_gemm(ca, reinterpret_cast<const std::uint8_t*>(b.data.data()), b.scale.data(), spans, N, K,
                          d.data());
    return;
  }
  check(G <= 65535, op, "on ", a.device(), " takes at most 65535 groups, got B of shape ", b.data.shape());
  const Tensor<Index> ic = contiguous(index);
  launch_device_kernel(op, kernels::GroupedFp8GemmArgs{
                               .launch = launch_on(op, a.device()),
                               .implementation = options.kernel,
                               .layout = masked ? kernels::GroupedFp8Layout::masked : kernels::GroupedFp8Layout::contiguous,
                               .d = d.data(),
                               .d_dtype = dtype_of<Out>,
                               .a = ca.data,
                               .a_scale = ca.scale,
                               .a_scale_ld = ca.scale_ld,
                               .b = reinterpret_cast<const std::uint8_t*>(b.data.data()),
                               .b_scale = b.scale.data(),
                               .index = ic.data(),
                               .index_dtype = dtype_of<Index>,
                               .rows = rows,
                               .groups = static_cast<int>(G),
                               .n = N,
                               .k = K});
}

template <class Out>
void check_output(const char* op, const Tensor<Out>& d, const Shape& want, Device device) {
  check_defined(op, d);
  check(d.shape() == want && d.is_contiguous(), op, "the output must be a contiguous tensor of shape ", want,
        ", got shape ", d.shape(), " and strides ", d.strides());
  check(d.device() == device, op, "the output is on ", d.device(), ", the operands on ", device);
}

}  // namespace detail

// w [G, N, K] float or bf16 (any strides) -> e4m3 [G, N, K] with one scale per 128×128 block of
// each w[g]: the forward's B. Bit for bit quantize(w[g], block_128x128) for every g.
template <class T>
GroupedWeights quantize_grouped(const Tensor<T>& w, QuantizeOptions options = {}) {
  return detail::quantize_grouped("fp8_quantize_grouped", w, false, options);
}

// w [G, N, K] -> e4m3 [G, K, N] holding each w[g]ᵀ by 128×128 blocks: the data gradient's B (dX_g =
// dY_g · W_g = dY_g · (W_gᵀ)ᵀ). Bit for bit quantize_transposed(w[g], block_128x128).
template <class T>
GroupedWeights quantize_grouped_transposed(const Tensor<T>& w, QuantizeOptions options = {}) {
  return detail::quantize_grouped("fp8_quantize_grouped", w, true, options);
}

// Both of the above from one read of w (on CUDA; two passes elsewhere): the forward's B and the
// data gradient's.
struct GroupedWeightsPair {
  GroupedWeights plain;       // quantize_grouped(w)
  GroupedWeights transposed;  // quantize_grouped_transposed(w)
};

template <class T>
GroupedWeightsPair quantize_grouped_with_transposed(const Tensor<T>& w, QuantizeOptions options = {}) {
  GroupedWeightsPair out;
  out.plain = detail::quantize_grouped("fp8_quantize_grouped", w, false, options, &out.transposed);
  return out;
}

// float(data) · scale, [G, rows, cols] on the weights' device (computed on the host; for tests).
inline Tensor<float> dequantize(const GroupedWeights& b) {
  detail::check_grouped_weights("fp8_dequantize", b);
  const std::int64_t G = b.groups(), rows = b.rows(), cols = b.cols();
  const std::vector<fp8_e4m3> data = b.data.to_vector();
  const std::vector<float> scale = b.scale.to_vector();
  const auto& value = cpu::e4m3_values();
  const std::int64_t rb = detail::ceil_div(rows, tile_size), cb = detail::ceil_div(cols, tile_size);
  std::vector<float> out(data.size());
  cpu::parallel_for(G * rows, cols, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t gr = begin; gr < end; ++gr) {
      const std::int64_t g = gr / rows, r = gr % rows;
      for (std::int64_t c = 0; c < cols; ++c) {
        const auto i = static_cast<std::size_t>(gr * cols + c);
        out[i] = value[data[i].bits] * scale[static_cast<std::size_t>((g * rb + r / tile_size) * cb + c / tile_size)];
      }
    }
  });
  return to(Tensor<float>::from_vector(out, {G, rows, cols}), b.device());
}

// D [R, N]: the rows of group g (offsets[g] .. offsets[g+1] − 1) times B_gᵀ. Every row of D belongs
// to some group when the offsets run from 0 to R (checked on the CPU; on a GPU the offsets are not
// read by the host, and out-of-range values are clamped to [0, R]).
template <class Out, class Index>
Tensor<Out> grouped_gemm(const QuantizedMatrix& a, const GroupedWeights& b, const Tensor<Index>& offsets,
                         GroupedGemmOptions options = {}) {
  const char* op = "fp8_grouped_gemm";
  detail::check_grouped(op, a, b, offsets, false);
  Tensor<Out> d({a.rows(), b.rows()}, a.device());
  detail::grouped_gemm_run(op, d, a, b, offsets, false, a.rows(), options);
  return d;
}

// The same into d [R, N] (contiguous): only the rows of the groups are written.
template <class Out, class Index>
void grouped_gemm_out(Tensor<Out>& d, const QuantizedMatrix& a, const GroupedWeights& b, const Tensor<Index>& offsets,
                      GroupedGemmOptions options = {}) {
  const char* op = "fp8_grouped_gemm";
  detail::check_grouped(op, a, b, offsets, false);
  detail::check_output(op, d, Shape{a.rows(), b.rows()}, a.device());
  detail::grouped_gemm_run(op, d, a, b, offsets, false, a.rows(), options);
}

// Masked: A [G · M_max, K] (G slots of M_max rows: quantize the activations [G, M_max, K] viewed as
// [G · M_max, K]), counts [G] (0 ≤ counts[g] ≤ M_max; on a GPU clamped, not read by the host) ->
// D [G, M_max, N], row i of slot g = A[g · M_max + i] · B_gᵀ for i < counts[g], zero past it.
template <class Out, class Index>
Tensor<Out> grouped_gemm_masked(const QuantizedMatrix& a, const GroupedWeights& b, const Tensor<Index>& counts,
                                GroupedGemmOptions options = {}) {
  const char* op = "fp8_grouped_gemm_masked";
  detail::check_grouped(op, a, b, counts, true);
  const std::int64_t G = b.groups(), m_max = a.rows() / G;
  Tensor<Out> d = zeros<Out>({G, m_max, b.rows()}, a.device());
  detail::grouped_gemm_run(op, d, a, b, counts, true, m_max, options);
  return d;
}

// The same into d [G, M_max, N] (contiguous): rows past a group's count are not written.
template <class Out, class Index>
void grouped_gemm_masked_out(Tensor<Out>& d, const QuantizedMatrix& a, const GroupedWeights& b,
                             const Tensor<Index>& counts, GroupedGemmOptions options = {}) {
  const char* op = "fp8_grouped_gemm_masked";
  detail::check_grouped(op, a, b, counts, true);
  const std::int64_t G = b.groups(), m_max = a.rows() / G;
  detail::check_output(op, d, Shape{G, m_max, b.rows()}, a.device());
  detail::grouped_gemm_run(op, d, a, b, counts, true, m_max, options);
}

// The float64 value of the same products (CPU; device operands are copied to the host): [R, N] for
// offsets, [G, M_max, N] for counts (masked = true); rows outside every group are 0.
template <class Index>
Tensor<double> grouped_gemm_reference(const QuantizedMatrix& a, const GroupedWeights& b, const Tensor<Index>& index,
                                      bool masked = false) {
  const char* op = "fp8_grouped_gemm_reference";
  detail::check_grouped(op, a, b, index, masked);
  const QuantizedMatrix ha = detail::to_host(a);
  const Tensor<fp8_e4m3> bd = to(b.data, Device::cpu());
  const Tensor<float> bs = to(b.scale, Device::cpu());
  const std::int64_t G = b.groups(), N = b.rows(), K = b.cols();
  const std::int64_t rows = masked ? a.rows() / G : a.rows();
  const std::vector<cpu::GroupSpan> spans = detail::host_spans(op, to(index, Device::cpu()), masked, G, rows);
  Tensor<double> out = zeros<double>(masked ? Shape{G, rows, N} : Shape{rows, N});
  cpu::grouped_fp8_gemm_reference(detail::cpu_operand(ha), reinterpret_cast<const std::uint8_t*>(bd.data()), bs.data(),
                                  spans, N, K, out.data());
  return out;
}

}  // namespace kiln::fp8
