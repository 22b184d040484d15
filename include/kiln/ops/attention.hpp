// Fused causal attention: softmax(scale · Q·Kᵀ + causal mask) · V in one op, forward and backward,
// without the S×S score matrix in memory between the passes (the backward recomputes the
// probabilities from the saved logsumexp per query: backend/cpu/attention.hpp has the math).
// nn/attention.hpp's causal_attention composes the same function from generic ops (matmul,
// masked_fill, softmax, matmul) and stays as the reference path.
//
//   fused_causal_attention(q, k, v, scale)                 q [B, H, S, Dk], k [B, Hkv, S, Dk],
//                                                          v [B, Hkv, S, Dv] -> [B, H, S, Dv]
//   fused_causal_attention(q, k, v, scale, cu_seqlens)     packed sequences: B = 1 and cu_seqlens
//                                                          [n + 1] int64, 0 = c_0 < c_1 < ... < c_n = S:
//                                                          token i of sequence [c_s, c_{s+1}) sees
//                                                          keys c_s..i only
//
// Dk and Dv are independent (MLA: Dk = qk_nope + qk_rope, Dv = v_head_dim); H must be a multiple of
// Hkv (query head h reads kv head h / (H / Hkv), Hugging Face's repeat_kv grouping). Any strides:
// the CPU makes the inputs contiguous; the CUDA kernels read views whose rows are contiguous in
// place (e.g. [B, S, H, d] transposed, or the v columns of a wider per-head projection) and copy
// only others. The CUDA output is [B, H, S, Dv] stored as [B, S, H, Dv] (transpose(out, 1, 2) is
// contiguous: the heads of a token side by side, as an output projection reads them).
// float, double, bf16 and fp16; sums in double on the CPU.
//
// Devices: the CPU runs backend/cpu/attention.hpp (any dtype, any head dims). CUDA runs
// kernels/attention/attention.cuh (tensor cores, FlashAttention-2's algorithm, deterministic
// backward; on sm_90 the wgmma kernels of attention_hopper.cuh and attention_backward_hopper.cuh)
// for bf16 at the head dims it is compiled for (fused_attention_on_device says which); other CUDA calls get a kiln::Error, and the nn modules keep the composed path
// there. The CUDA forward saves lse in float, the CPU one in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/attention.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/core/environment.hpp"
#include "kiln/kernels/attention/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/gradient_places.hpp"

namespace kiln {

// The sequence of every token of a packed row of S tokens (cu_seqlens checked: a CPU tensor
// [n + 1], 0 = c_0 < c_1 < ... < c_n = S): begin[i] = its first token, end[i] = one past its last.
// Also used by the modules' composed path (nn/attention.hpp) for the same mask and positions.
struct PackedSequences {
  std::vector<std::int64_t> begin, end;
};

inline PackedSequences packed_sequences(const char* op, const Tensor<std::int64_t>& cu_seqlens, std::int64_t S) {
  check(cu_seqlens.device().is_cpu(), op, "cu_seqlens must be a CPU tensor, got one on ", cu_seqlens.device());
  check(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, op,
        "cu_seqlens must be [n + 1] with n >= 1 sequences, got shape ", cu_seqlens.shape());
  const std::vector<std::int64_t> cu = cu_seqlens.to_vector();
  check(cu.front() == 0 && cu.back() == S, op, "cu_seqlens must run from 0 to S = ", S, ", got ", cu.front(), "..",
        cu.back());
  // Every step checked before any is used: with 0 < c_1 > c_2 = S, filling as we check would
  // write c_1 > S entries.
  for (std::size_t s = 0; s + 1 < cu.size(); ++s)
    check(cu[s] < cu[s + 1], op, "cu_seqlens must increase strictly (no empty sequence), got ", cu[s], " then ",
          cu[s + 1], " at ", s);
  PackedSequences seqs{std::vector<std::int64_t>(static_cast<std::size_t>(S)),
                       std::vector<std::int64_t>(static_cast<std::size_t>(S))};
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    for (std::int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      seqs.begin[static_cast<std::size_t>(i)] = cu[s];
      seqs.end[static_cast<std::size_t>(i)] = cu[s + 1];
    }
  }
  return seqs;
}


// Whether fused_causal_attention has a kernel for T at head dims (dk, dv) on `device`: always on
// the CPU; on CUDA for bf16 at the compiled head dims, once the kernel is registered
// (a file compiled by nvcc includes kernels/attention/attention.cuh).
template <class T>
bool fused_attention_on_device(Device device, std::int64_t dk, std::int64_t dv) {
  if (device.is_cpu()) return true;
  return std::is_same_v<T, bf16> && kernels::attention_head_dims_supported(dk, dv) &&
         has_device_kernel<kernels::AttentionForwardArgs>() && has_device_kernel<kernels::AttentionBackwardArgs>();
}

namespace detail {

template <class T>
Tensor<T> fused_causal_attention_cpu(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                     const cpu::AttentionShape& shape, double scale, std::vector<std::int64_t> key_begin) {
  // Contiguous copies of the values, outside the graph (the node records q, k, v themselves).
  const Tensor<T> qc = contiguous(q.detach()), kc = contiguous(k.detach()), vc = contiguous(v.detach());
  // The saved logsumexp in double: P = exp(s − lse) then has the accuracy of double whatever T is
  // (a float lse would put an error of |lse|·2^-24 into every P, and into gradients that should be 0).
  Tensor<T> out({shape.batch, shape.heads, shape.seq, shape.dv}, qc.device());
  Tensor<double> lse({shape.batch, shape.heads, shape.seq}, qc.device());  // log Σ_j exp(s_ij) per query
  const std::int64_t* begin = key_begin.empty() ? nullptr : key_begin.data();
  if (out.numel() > 0) cpu::attention_forward(out.data(), lse.data(), qc.data(), kc.data(), vc.data(), begin, shape, scale);
  if (!autograd::needs_grad(q, k, v)) return out;
  autograd::record(
      out, "fused_causal_attention",
      [qc, kc, vc, lse, key_begin = std::move(key_begin), shape, scale](const Tensor<T>& g,
                                                                         const autograd::InputGrads& in) {
        check_same_device("fused_causal_attention backward", qc, g);
        const Tensor<T> gc = contiguous(g);
        Tensor<T> dq(qc.shape(), qc.device()), dk(kc.shape(), kc.device()), dv(vc.shape(), vc.device());
        if (dq.numel() > 0)
          cpu::attention_backward(dq.data(), dk.data(), dv.data(), qc.data(), kc.data(), vc.data(), lse.data(),
                                  gc.data(), key_begin.empty() ? nullptr : key_begin.data(), shape, scale);
        in.add(0, dq);
        in.add(1, dk);
        in.add(2, dv);
      },
      q, k, v);
  return out;
}

// The element strides of a [B, H, S, d] tensor whose rows are contiguous (attention_operand's
// result); a size-1 dim's stride is never used and is taken as 0 (the row's as d, since a row
// stride of 0 means "contiguous").
template <class T>
kernels::HeadLayout head_layout(const Tensor<T>& t) {
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1),
          t.size(2) == 1 ? t.size(3) : t.stride(2)};
}

// Whether the CUDA kernels can address t's rows where they lie (kernels/attention/args.hpp,
// HeadLayout): rows contiguous, the strides of head_layout whole 16-byte pieces (multiples of 8
// elements), the data 16-byte aligned.
template <class T>
bool kernels_address_in_place(const Tensor<T>& t) {
  const kernels::HeadLayout l = head_layout(t);
  return (t.size(3) == 1 || t.stride(3) == 1) && l.batch >= 0 && l.head >= 0 && l.row > 0 && l.batch % 8 == 0 &&
         l.head % 8 == 0 && l.row % 8 == 0 && reinterpret_cast<std::uintptr_t>(t.data()) % 16 == 0;
}

// t itself when the CUDA kernels can read it in place (kernels_address_in_place). Else a
// contiguous aligned copy (what the kernels read before they took strides; kiln's allocator
// aligns every tensor).
template <class T>
Tensor<T> attention_operand(const Tensor<T>& t) {
  if (kernels_address_in_place(t)) return t;
  const Tensor<T> c = contiguous(t);
  return reinterpret_cast<std::uintptr_t>(c.data()) % 16 == 0 ? c : clone(c);
}

// Where the CUDA backward writes the gradient of each input of the node (kernels/attention/
// args.hpp: dq_layout and the others): where the input lay (ops/gradient_places.hpp), so that MLA's
// k_nope and v, column ranges of one projection's output, get their gradients as that output's
// gradient without copies, and q_nope its part of q_b's. An input the kernels cannot address in
// place (kernels_address_in_place: 16-byte pieces) gets a contiguous gradient.
struct AttentionPlaceable {
  template <class T>
  bool operator()(const Tensor<T>& t) const {
    return t.dim() == 4 && kernels_address_in_place(t);
  }
};

// MLA's rotary parts of q and k (fused_causal_attention_parts): q_pe [B, H, S, dr], k_pe
// [B, Hkv, S, dr] (a key shared by the heads: an expand view, head stride 0).
template <class T>
struct RopeParts {
  Tensor<T> q_pe, k_pe;
};

// The CUDA op. With `rope`, q and k hold the first dk − dr columns and the kernels read the last
// dr from rope->q_pe and rope->k_pe (kernels/attention/args.hpp, AttentionRopeParts); the node's
// inputs are then q, q_pe, k, k_pe, v and its gradients the parts of dq and dk.
template <class T>
Tensor<T> fused_causal_attention_cuda(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                      const cpu::AttentionShape& shape, double scale, const PackedSequences* seqs,
                                      kernels::AttentionKernel implementation,
                                      kernels::AttentionKernel backward_implementation,
                                      const RopeParts<T>* rope = nullptr) {
  const char* op = "fused_causal_attention";
  check(fused_attention_on_device<T>(q.device(), shape.dk, shape.dv), op, "has no CUDA kernel for ", dtype_of<T>,
        " at head dims (dk ", shape.dk, ", dv ", shape.dv, "), q ", q.shape(), ", v ", v.shape(),
        ": CUDA takes bf16 at (dk, dv) = (48, 32), (64, 64), (96, 64), (128, 128), (192, 128)",
        has_device_kernel<kernels::AttentionForwardArgs>() ? "" : ", from a file compiled by nvcc that includes "
                                                                 "kiln/kernels/attention/attention.cuh");
  // The operands as the kernels read them: in place where their strides allow, else a
  // contiguous, 16-byte aligned copy (attention_operand).
  const Tensor<T> qc = attention_operand(q.detach()), kc = attention_operand(k.detach()),
                  vc = attention_operand(v.detach());
  const Tensor<T> q_pe = rope ? attention_operand(rope->q_pe.detach()) : Tensor<T>(),
                  k_pe = rope ? attention_operand(rope->k_pe.detach()) : Tensor<T>();
  const kernels::AttentionRopeParts parts =
      rope ? kernels::AttentionRopeParts{.dim = static_cast<int>(q_pe.size(3)),
                                         .q_rope = q_pe.data(),
                                         .k_rope = k_pe.data(),
                                         .q_layout = head_layout(q_pe),
                                         .k_layout = head_layout(k_pe)}
           : kernels::AttentionRopeParts{};
  const Device device = qc.device();
  // Per-token sequence bounds as int32 [2, S] on the device (packed rows only).
  Tensor<std::int32_t> bounds;
  if (seqs) {
    std::vector<std::int32_t> host(seqs->begin.begin(), seqs->begin.end());
    host.insert(host.end(), seqs->end.begin(), seqs->end.end());
    bounds = Tensor<std::int32_t>::from_vector(host, {2, shape.seq}, device);
  }
  const kernels::AttentionShapeArgs args_shape{
      .batch = shape.batch,
      .seq = shape.seq,
      .heads = static_cast<int>(shape.heads),
      .kv_heads = static_cast<int>(shape.kv_heads),
      .dk = static_cast<int>(shape.dk),
      .dv = static_cast<int>(shape.dv),
      .scale = scale,
      .seq_begin = seqs ? bounds.data() : nullptr,
      .seq_end = seqs ? bounds.data() + shape.seq : nullptr};
  // out [B, H, S, Dv] stored token-major, [B, S, H, Dv] in memory: the heads of a token side by
  // side, so that the usual next step (heads concatenated per token, then the output
  // projection: transpose(out, 1, 2) and reshape) is a view, not a copy.
  Tensor<T> out = transpose(Tensor<T>({shape.batch, shape.seq, shape.heads, shape.dv}, device), 1, 2);
  Tensor<float> lse({shape.batch, shape.heads, shape.seq}, device);
  launch_device_kernel(op, kernels::AttentionForwardArgs{.launch = launch_on(op, device),
                                                         .dtype = dtype_of<T>,
                                                         .shape = args_shape,
                                                         .out = out.data(),
                                                         .lse = lse.data(),
                                                         .q = qc.data(),
                                                         .k = kc.data(),
                                                         .v = vc.data(),
                                                         .q_layout = head_layout(qc),
                                                         .k_layout = head_layout(kc),
                                                         .v_layout = head_layout(vc),
                                                         .out_layout = head_layout(out),
                                                         .rope = parts,
                                                         .implementation = implementation});
  const bool grads = rope ? autograd::needs_grad(q, rope->q_pe, k, rope->k_pe, v) : autograd::needs_grad(q, k, v);
  if (!grads) return out;
  // The node's inputs, in its order, and where their gradients will lie (plan_gradient_places).
  const std::vector<Tensor<T>> inputs = rope ? std::vector<Tensor<T>>{q, rope->q_pe, k, rope->k_pe, v}
                                             : std::vector<Tensor<T>>{q, k, v};
  std::vector<Shape> input_shapes;
  for (const Tensor<T>& t : inputs) input_shapes.push_back(t.shape());
  // The backward needs the forward's output (delta = dout·out): a detached view, so that the
  // node does not hold its own output's graph. It holds the parts (q_pe, k_pe) as well, since
  // parts.q_rope and parts.k_rope point into them.
  auto backward = [qc, kc, vc, q_pe, k_pe, parts, o = out.detach(), lse, bounds, args_shape, backward_implementation,
                   plan = plan_gradient_places(inputs, AttentionPlaceable{}),
                   input_shapes = std::move(input_shapes)](const Tensor<T>& g, const autograd::InputGrads& in) {
    const char* bop = "fused_causal_attention backward";
    check_same_device(bop, qc, g);
    const Tensor<T> gc = attention_operand(g);
    const Device dev = qc.device();
    // dq, dk, dv (with parts: dq, dq_rope, dk, dk_rope, dv), each where its input lay or contiguous.
    const std::vector<Tensor<T>> grads = gradient_tensors<T>(plan, input_shapes, dev);
    const bool with_parts = parts.dim > 0;
    const Tensor<T>& dq = grads[0];
    const Tensor<T>& dk = grads[with_parts ? 2 : 1];
    const Tensor<T>& dv = grads.back();
    Tensor<float> delta(lse.shape(), lse.device());
    launch_device_kernel(bop, kernels::AttentionBackwardArgs{.launch = launch_on(bop, dev),
                                                             .dtype = dtype_of<T>,
                                                             .shape = args_shape,
                                                             .dq = dq.data(),
                                                             .dk = dk.data(),
                                                             .dv = dv.data(),
                                                             .delta = delta.data(),
                                                             .q = qc.data(),
                                                             .k = kc.data(),
                                                             .v = vc.data(),
                                                             .out = o.data(),
                                                             .dout = gc.data(),
                                                             .lse = lse.data(),
                                                             .q_layout = head_layout(qc),
                                                             .k_layout = head_layout(kc),
                                                             .v_layout = head_layout(vc),
                                                             .out_layout = head_layout(o),
                                                             .dout_layout = head_layout(gc),
                                                             .rope = parts,
                                                             .dq_layout = head_layout(dq),
                                                             .dk_layout = head_layout(dk),
                                                             .dv_layout = head_layout(dv),
                                                             .dq_rope = with_parts ? grads[1].data() : nullptr,
                                                             .dk_rope = with_parts ? grads[3].data() : nullptr,
                                                             .dq_rope_layout = with_parts ? head_layout(grads[1])
                                                                                          : kernels::HeadLayout{},
                                                             .dk_rope_layout = with_parts ? head_layout(grads[3])
                                                                                          : kernels::HeadLayout{},
                                                             .implementation = backward_implementation});
    // With parts, k_pe's gradient is one per head: the sum over the heads it was expanded to is
    // its own view's backward.
    for (std::size_t i = 0; i < grads.size(); ++i) in.add(i, grads[i]);
  };
  if (rope) autograd::record(out, op, std::move(backward), q, rope->q_pe, k, rope->k_pe, v);
  else autograd::record(out, op, std::move(backward), q, k, v);
  return out;
}

// KILN_ATTENTION_FORWARD=plain and KILN_ATTENTION_BACKWARD=plain in the environment turn an
// automatic forward or backward into the plain one, KILN_ATTENTION_FORWARD=hopper an automatic
// forward into the Hopper one where its head dims allow (on a GPU other than sm_90 that is the
// launcher's error); read once per process, for comparisons (e.g. whole training runs on either
// kernel: scripts/pretrain_ab.sh) and as an escape hatch, like KILN_GROUPED_GEMM=plain.
inline kernels::AttentionKernel forward_from_environment(kernels::AttentionKernel requested, bool hopper_fits) {
  static const bool plain = environment_is("KILN_ATTENTION_FORWARD", "plain");
  static const bool hopper = environment_is("KILN_ATTENTION_FORWARD", "hopper");
  if (requested != kernels::AttentionKernel::automatic) return requested;
  if (plain) return kernels::AttentionKernel::plain;
  return hopper && hopper_fits ? kernels::AttentionKernel::hopper : requested;
}
inline kernels::AttentionKernel backward_from_environment(kernels::AttentionKernel requested) {
  static const bool plain = environment_is("KILN_ATTENTION_BACKWARD", "plain");
  return requested == kernels::AttentionKernel::automatic && plain ? kernels::AttentionKernel::plain : requested;
}

// The shape and the packed sequences of a call with q of shape `q` [B, H, S, Dk], k [B, Hkv, S,
// Dk], v [B, Hkv, S, Dv], checked.
inline std::pair<cpu::AttentionShape, std::optional<PackedSequences>> attention_call(
    const char* op, const Shape& q, const Shape& k, const Shape& v, double scale,
    const Tensor<std::int64_t>& cu_seqlens) {
  check(q.size() == 4 && k.size() == 4 && v.size() == 4, op,
        "needs q [B, H, S, Dk], k [B, Hkv, S, Dk], v [B, Hkv, S, Dv]; got q ", q, ", k ", k, ", v ", v);
  const std::int64_t B = q[0], H = q[1], S = q[2], Dk = q[3], Hkv = k[1], Dv = v[3];
  check(k[0] == B && v[0] == B && k[2] == S && v[2] == S && k[3] == Dk && v[1] == Hkv && Hkv > 0 && H % Hkv == 0 &&
            Dk > 0 && Dv > 0,
        op, "q ", q, ", k ", k, " and v ", v,
        " do not fit [B, H, S, Dk], [B, Hkv, S, Dk], [B, Hkv, S, Dv] with Hkv dividing H and Dk, Dv > 0");
  check(std::isfinite(scale), op, "scale must be finite, got ", scale);
  std::optional<PackedSequences> seqs;
  if (cu_seqlens.defined()) {
    check(B == 1, op, "packed sequences (cu_seqlens) need B = 1 (one packed row), got q ", q);
    seqs = packed_sequences(op, cu_seqlens, S);
  }
  return {cpu::AttentionShape{B, S, H, Hkv, Dk, Dv}, std::move(seqs)};
}

}  // namespace detail

// `implementation` picks the CUDA forward kernel and `backward_implementation` the backward's
// (automatic: see kernels/attention/args.hpp, unless KILN_ATTENTION_FORWARD=plain or hopper or
// KILN_ATTENTION_BACKWARD=plain; tests and benchmarks name one); the CPU ignores both.
template <class T>
Tensor<T> fused_causal_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, double scale,
                                 const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>(),
                                 kernels::AttentionKernel implementation = kernels::AttentionKernel::automatic,
                                 kernels::AttentionKernel backward_implementation = kernels::AttentionKernel::automatic) {
  static_assert(is_floating<T>, "fused_causal_attention needs a floating element type");
  const char* op = "fused_causal_attention";
  check_defined(op, q, k, v);
  check_same_device(op, q, k, v);
  const auto [shape, seqs] = detail::attention_call(op, q.shape(), k.shape(), v.shape(), scale, cu_seqlens);
  if (q.device().is_cpu())
    return detail::fused_causal_attention_cpu(q, k, v, shape, scale, seqs ? seqs->begin : std::vector<std::int64_t>());
  return detail::fused_causal_attention_cuda(
      q, k, v, shape, scale, seqs ? &*seqs : nullptr,
      detail::forward_from_environment(implementation,
                                       kernels::attention_hopper_supports(dtype_of<T>, shape.dk, shape.dv)),
      detail::backward_from_environment(backward_implementation));
}

// MLA's attention with its queries and keys in two parts each, [q_nope | q_pe] and [k_nope |
// k_pe] per head: the function of
//   fused_causal_attention(cat({q_nope, q_pe}, -1), cat({k_nope, k_pe}, -1), v, scale, ...)
// with q_nope [B, H, S, dn], q_pe [B, H, S, dr], k_nope [B, Hkv, S, dn], k_pe [B, Hkv, S, dr] (MLA's
// one rotary key expanded over the heads is a view of head stride 0, and stays one), v [B, Hkv,
// S, Dv]. On CUDA, where dn is a multiple of 64 and dr of 8 (MLA's (64, 32) and (128, 64)), the
// kernels read the parts where they lie, so neither concatenation is made; elsewhere (the CPU,
// other head dims) the op computes through the concatenations. Gradients flow to all five.
template <class T>
Tensor<T> fused_causal_attention_parts(const Tensor<T>& q_nope, const Tensor<T>& q_pe, const Tensor<T>& k_nope,
                                       const Tensor<T>& k_pe, const Tensor<T>& v, double scale,
                                       const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>(),
                                       kernels::AttentionKernel implementation = kernels::AttentionKernel::automatic,
                                       kernels::AttentionKernel backward_implementation =
                                           kernels::AttentionKernel::automatic) {
  static_assert(is_floating<T>, "fused_causal_attention_parts needs a floating element type");
  const char* op = "fused_causal_attention_parts";
  check_defined(op, q_nope, q_pe, k_nope, k_pe, v);
  check_same_device(op, q_nope, q_pe, k_nope, k_pe, v);
  check(q_nope.dim() == 4 && q_pe.dim() == 4 && k_nope.dim() == 4 && k_pe.dim() == 4, op,
        "needs q_nope [B, H, S, dn], q_pe [B, H, S, dr], k_nope [B, Hkv, S, dn], k_pe [B, Hkv, S, dr]; got ",
        q_nope.shape(), ", ", q_pe.shape(), ", ", k_nope.shape(), ", ", k_pe.shape());
  const std::int64_t dn = q_nope.size(3), dr = q_pe.size(3);
  auto widened = [&](const Shape& nope, const Shape& pe) {  // the concatenation's shape, when the parts fit
    check(pe[0] == nope[0] && pe[1] == nope[1] && pe[2] == nope[2] && nope[3] == dn && pe[3] == dr && dn > 0 &&
              dr > 0,
          op, "parts ", nope, " and ", pe, " are not [B, heads, S, dn] and [B, heads, S, dr] with dn ", dn, " and dr ",
          dr);
    return Shape{nope[0], nope[1], nope[2], dn + dr};
  };
  const Shape q_shape = widened(q_nope.shape(), q_pe.shape()), k_shape = widened(k_nope.shape(), k_pe.shape());
  const auto [shape, seqs] = detail::attention_call(op, q_shape, k_shape, v.shape(), scale, cu_seqlens);
  const bool kernels_read_parts = !q_nope.device().is_cpu() && dn % 64 == 0 && dr % 8 == 0 &&
                                  fused_attention_on_device<T>(q_nope.device(), dn + dr, shape.dv);
  if (!kernels_read_parts) {
    return fused_causal_attention(cat(std::vector<Tensor<T>>{q_nope, q_pe}, -1),
                                  cat(std::vector<Tensor<T>>{k_nope, k_pe}, -1), v, scale, cu_seqlens, implementation,
                                  backward_implementation);
  }
  const detail::RopeParts<T> rope{q_pe, k_pe};
  return detail::fused_causal_attention_cuda(
      q_nope, k_nope, v, shape, scale, seqs ? &*seqs : nullptr,
      detail::forward_from_environment(implementation,
                                       kernels::attention_hopper_supports(dtype_of<T>, shape.dk, shape.dv)),
      detail::backward_from_environment(backward_implementation), &rope);
}

}  // namespace kiln
