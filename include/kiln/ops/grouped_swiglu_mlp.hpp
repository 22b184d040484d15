// grouped_swiglu_mlp: the routed experts' SwiGLU MLPs over rows sorted by expert, as one op
// (nn::MoE's fused dispatch; issue 18's "GEMM1 (gate|up) -> SwiGLU -> GEMM2"):
//   x [R, H], group g owning rows offsets[g] .. offsets[g+1] − 1;
//   w_in [G, 2I, H]: expert g's gate_proj weight [I, H], then its up_proj weight [I, H];
//   w_out [G, H, I]: expert g's down_proj weight
//   -> y [R, H], y[r] = (silu(x[r]·W_gateᵀ) ⊙ x[r]·W_upᵀ) · W_outᵀ for the group g of row r.
// The same arithmetic as grouped_linear(x, w_in) -> swiglu of its halves -> grouped_linear(·,
// w_out), with the same roundings: on the CPU the two agree bit for bit.
//
// Where it differs is what moves. On a GPU the SwiGLU runs in the grouped GEMMs' epilogues
// (kernels/grouped_gemm/swiglu_epilogue.cuh): the forward's first product writes gate|up [R, 2I]
// (kept for the backward) and silu(gate)·up [R, I] from the same registers, and the backward's
// dgrad of the second product turns da = dy·W_out into d_gate | d_up in its epilogue, reading
// gate|up there: no swiglu kernel, no da tensor, no separate d_gate and d_up to copy into one
// gradient. Differentiable in x, w_in and w_out.
#pragma once

#include <cstdint>
#include <utility>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/grouped_gemm.hpp"
#include "kiln/ops/grouped_linear.hpp"

namespace kiln {

namespace detail {

// gate|up [R, 2I] and silu(gate)·up [R, I] of x [R, H] and w_in [G, 2I, H] (contiguous, aligned).
template <class T>
std::pair<Tensor<T>, Tensor<T>> grouped_swiglu_forward(const char* op, const Tensor<T>& x, const Tensor<T>& w_in,
                                                       const Tensor<std::int64_t>& offsets) {
  const std::int64_t R = x.size(0), H = x.size(1), G = w_in.size(0), I = w_in.size(1) / 2;
  if (x.device().is_cpu()) {
    const Tensor<T> gate_up = grouped_linear_forward(op, x, w_in, offsets);
    Tensor<T> act({R, I}, x.device());
    cpu::swiglu_rows(gate_up.data(), act.data(), R, I);
    return {gate_up, act};
  }
  Tensor<T> gate_up({R, 2 * I}, x.device()), act({R, I}, x.device());
  grouped_gemm_launch(op, kernels::GroupedGemmKind::forward, act, x, Tensor<T>(), w_in, offsets, R, G, 2 * I, H,
                      kernels::GroupedGemmKernel::automatic, 0, kernels::GroupedGemmEpilogue::swiglu, gate_up.data());
  return {gate_up, act};
}

// d(gate|up) [R, 2I] from dy [R, H] through w_out [G, H, I] and the SwiGLU's backward at gate_up.
template <class T>
Tensor<T> grouped_swiglu_backward(const char* op, const Tensor<T>& dy, const Tensor<T>& w_out,
                                  const Tensor<T>& gate_up, const Tensor<std::int64_t>& offsets) {
  const std::int64_t R = dy.size(0), G = w_out.size(0), H = w_out.size(1), I = w_out.size(2);
  Tensor<T> d_gate_up({R, 2 * I}, dy.device());
  if (dy.device().is_cpu()) {
    const Tensor<T> d_act = grouped_linear_dgrad(op, dy, w_out, offsets);
    cpu::swiglu_rows_backward(d_act.data(), gate_up.data(), d_gate_up.data(), R, I);
    return d_gate_up;
  }
  grouped_gemm_launch(op, kernels::GroupedGemmKind::dgrad, d_gate_up, Tensor<T>(), dy, w_out, offsets, R, G, H, I,
                      kernels::GroupedGemmKernel::automatic, 0, kernels::GroupedGemmEpilogue::swiglu_backward,
                      const_cast<T*>(gate_up.data()));
  return d_gate_up;
}

}  // namespace detail

template <class T>
Tensor<T> grouped_swiglu_mlp(const Tensor<T>& x, const Tensor<T>& w_in, const Tensor<T>& w_out,
                             const Tensor<std::int64_t>& offsets) {
  static_assert(is_floating<T>, "grouped_swiglu_mlp needs a floating element type");
  const char* op = "grouped_swiglu_mlp";
  const Tensor<std::int64_t> oc = detail::check_grouped_linear(op, x, w_in, offsets);
  check_defined(op, w_out);
  check_same_device(op, x, w_out);
  const std::int64_t G = w_in.size(0), I = w_in.size(1) / 2;
  check(w_in.size(1) % 2 == 0 && w_out.dim() == 3 && w_out.size(0) == G && w_out.size(2) == I, op,
        "needs w_in [G, 2I, H] (gate rows, then up rows) and w_out [G, H_out, I], got shapes ", w_in.shape(), " and ",
        w_out.shape());
  check(x.device().is_cpu() || (I % 8 == 0 && w_out.size(1) % 8 == 0), op, "on ", x.device(),
        " needs the expert width I and the output width multiples of 8, got w_in ", w_in.shape(), " and w_out ",
        w_out.shape());
  const std::int64_t H_out = w_out.size(1);
  const Tensor<T> xc = detail::contiguous_aligned(x.detach()), w_in_c = detail::contiguous_aligned(w_in.detach());
  const Tensor<T> w_out_c = detail::contiguous_aligned(w_out.detach());
  const std::pair<Tensor<T>, Tensor<T>> forward = detail::grouped_swiglu_forward(op, xc, w_in_c, oc);
  const Tensor<T> gate_up = forward.first, act = forward.second;  // named: lambdas capture them
  Tensor<T> y = detail::grouped_linear_forward(op, act, w_out_c, oc);

  if (autograd::needs_grad(x, w_in, w_out)) {
    autograd::record(y, op, [xc, w_in_c, w_out_c, gate_up, act, oc, G, I, H_out](
                                const Tensor<T>& g, const autograd::InputGrads& in) {
      const char* bop = "grouped_swiglu_mlp backward";
      check_same_device(bop, xc, g);
      const Tensor<T> dy = detail::contiguous_aligned(g);
      if (in.needs(2)) in.add(2, detail::grouped_linear_wgrad(bop, act, dy, oc, G, H_out));
      if (!in.needs(0) && !in.needs(1)) return;
      const Tensor<T> d_gate_up = detail::grouped_swiglu_backward(bop, dy, w_out_c, gate_up, oc);
      if (in.needs(0)) in.add(0, detail::grouped_linear_dgrad(bop, d_gate_up, w_in_c, oc));
      if (in.needs(1)) in.add(1, detail::grouped_linear_wgrad(bop, xc, d_gate_up, oc, G, 2 * I));
    }, x, w_in, w_out);
  }
  return y;
}

}  // namespace kiln
