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
// the inputs are made contiguous. float, double, bf16 and fp16; sums in double on the CPU.
//
// Devices: the CPU runs backend/cpu/attention.hpp. The CUDA kernels of this op (issue 17: a Hopper
// and a plain path) are not written yet: a CUDA tensor gets a kiln::Error saying so, and
// nn::causal_attention is the GPU path meanwhile.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/attention.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

namespace detail {

// key_begin[i] for every token of a packed row of S tokens (the start of its sequence), checked.
inline std::vector<std::int64_t> attention_key_begin(const char* op, const Tensor<std::int64_t>& cu_seqlens,
                                                     std::int64_t S) {
  check(cu_seqlens.device().is_cpu(), op, "cu_seqlens must be a CPU tensor, got one on ", cu_seqlens.device());
  check(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, op,
        "cu_seqlens must be [n + 1] with n >= 1 sequences, got shape ", cu_seqlens.shape());
  const std::vector<std::int64_t> cu = cu_seqlens.to_vector();
  check(cu.front() == 0 && cu.back() == S, op, "cu_seqlens must run from 0 to S = ", S, ", got ", cu.front(), "..",
        cu.back());
  std::vector<std::int64_t> begin(static_cast<std::size_t>(S));
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    check(cu[s] < cu[s + 1], op, "cu_seqlens must increase strictly (no empty sequence), got ", cu[s], " then ",
          cu[s + 1], " at ", s);
    for (std::int64_t i = cu[s]; i < cu[s + 1]; ++i) begin[static_cast<std::size_t>(i)] = cu[s];
  }
  return begin;
}

}  // namespace detail

template <class T>
Tensor<T> fused_causal_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, double scale,
                                 const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
  static_assert(is_floating<T>, "fused_causal_attention needs a floating element type");
  // The saved logsumexp in double: P = exp(s − lse) then has the accuracy of double whatever T is
  // (a float lse would put an error of |lse|·2^-24 into every P, and into gradients that should be 0).
  using L = double;
  const char* op = "fused_causal_attention";
  check_defined(op, q, k, v);
  check_same_device(op, q, k, v);
  check(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
        "needs q [B, H, S, Dk], k [B, Hkv, S, Dk], v [B, Hkv, S, Dv]; got q ", q.shape(), ", k ", k.shape(), ", v ",
        v.shape());
  const std::int64_t B = q.size(0), H = q.size(1), S = q.size(2), Dk = q.size(3);
  const std::int64_t Hkv = k.size(1), Dv = v.size(3);
  check(k.size(0) == B && v.size(0) == B && k.size(2) == S && v.size(2) == S && k.size(3) == Dk &&
            v.size(1) == Hkv && Hkv > 0 && H % Hkv == 0 && Dk > 0 && Dv > 0,
        op, "q ", q.shape(), ", k ", k.shape(), " and v ", v.shape(),
        " do not fit [B, H, S, Dk], [B, Hkv, S, Dk], [B, Hkv, S, Dv] with Hkv dividing H and Dk, Dv > 0");
  check(std::isfinite(scale), op, "scale must be finite, got ", scale);
  std::vector<std::int64_t> key_begin;
  if (cu_seqlens.defined()) {
    check(B == 1, op, "packed sequences (cu_seqlens) need B = 1 (one packed row), got q ", q.shape());
    key_begin = detail::attention_key_begin(op, cu_seqlens, S);
  }
  check(q.device().is_cpu(), op, "has no CUDA kernel yet (q ", q.shape(), " on ", q.device(),
        "): use nn::causal_attention, the composed path, on the GPU");

  const cpu::AttentionShape shape{B, S, H, Hkv, Dk, Dv};
  const Tensor<T> qc = contiguous(q.detach()), kc = contiguous(k.detach()), vc = contiguous(v.detach());
  Tensor<T> out({B, H, S, Dv}, q.device());
  Tensor<L> lse({B, H, S}, q.device());  // log Σ_j exp(s_ij) per query, for the backward
  const std::int64_t* begin = key_begin.empty() ? nullptr : key_begin.data();
  if (out.numel() > 0) cpu::attention_forward(out.data(), lse.data(), qc.data(), kc.data(), vc.data(), begin, shape, scale);

  if (autograd::needs_grad(q, k, v)) {
    autograd::record(
        out, op,
        [qc, kc, vc, lse, key_begin, shape, scale](const Tensor<T>& g, const autograd::InputGrads& in) {
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
  }
  return out;
}

}  // namespace kiln
