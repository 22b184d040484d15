// Mixture-of-Experts building blocks as ops: DeepSeek-V3 routing (moe_route), the expert-contiguous
// layout of the routes (moe_layout), dispatch of token rows into it and the gate-weighted combine
// back (moe_dispatch, moe_combine), and the aux-loss-free bias update (moe_balance_update).
// On a GPU they run as the kernels of kernels/moe/ with no host synchronisation: the choices, the
// per-expert counts and the segment offsets stay on the device (kernels/grouped_gemm reads the
// offsets there). On the CPU they run the reference loops of backend/cpu/moe.hpp. The formulas are
// in kernels/moe/args.hpp; nn::MoE (nn/moe.hpp) puts them together.
#pragma once

#include <cstdint>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/moe.hpp"
#include "kiln/kernels/moe/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

struct MoeRouteOptions {
  std::int64_t top_k = 1;       // K experts per token
  std::int64_t n_group = 1;     // expert groups (E must be a multiple)
  std::int64_t topk_group = 1;  // groups kept per token (= n_group: no group limit)
  bool normalize = true;        // gates divided by the sum of the chosen affinities (when K > 1)
  double scaling = 1.0;         // routed_scaling_factor
  bool logits = false;          // moe_route_dense only: the scores are the router's logits, the
                                // sigmoid applied in the routing kernel (one launch fewer)
};

template <class T>
struct MoeRoute {
  Tensor<std::int64_t> experts;  // [N, K] chosen experts, best choice score first
  Tensor<T> gates;               // [N, K], differentiable in the scores
};

namespace detail {

// moe_route's forward (no graph) with its checks; with dense_units > 0 also the dense rows
// [N, dense_units] of MoeRouteArgs::dense (returned in `dense`).
template <class T>
MoeRoute<T> moe_route_forward(const char* op, const Tensor<T>& scores, const Tensor<T>& bias,
                              const MoeRouteOptions& o, std::int64_t dense_units, Tensor<T>* dense) {
  static_assert(is_floating<T>, "moe_route needs a floating element type");
  check_defined(op, scores, bias);
  check_same_device(op, scores, bias);
  check(scores.dim() == 2 && bias.dim() == 1 && bias.size(0) == scores.size(1), op,
        "needs scores [N, E] and bias [E], got shapes ", scores.shape(), " and ", bias.shape());
  const std::int64_t N = scores.size(0), E = scores.size(1);
  check(E >= 1 && E <= 1024, op, "supports 1 to 1024 experts, got scores of shape ", scores.shape());
  check(o.n_group >= 1 && E % o.n_group == 0 && o.topk_group >= 1 && o.topk_group <= o.n_group, op,
        "n_group = ", o.n_group, " must divide E = ", E, " and topk_group = ", o.topk_group, " lie in [1, n_group]");
  check(o.top_k >= 1 && o.top_k <= 32 && o.top_k <= o.topk_group * (E / o.n_group), op, "top_k = ", o.top_k,
        " must lie in [1, min(32, ", o.topk_group * (E / o.n_group), ")] (the experts of topk_group groups)");
  check(!dense || (dense_units >= E && dense_units <= (std::int64_t{1} << 30)), op, "dense rows of ", dense_units,
        " units cannot hold the ", E, " experts");
  const int K = static_cast<int>(o.top_k);
  const Tensor<T> sc = contiguous(scores.detach()), bc = contiguous(bias.detach());
  MoeRoute<T> r{Tensor<std::int64_t>({N, o.top_k}, scores.device()), Tensor<T>({N, o.top_k}, scores.device())};
  if (dense) *dense = Tensor<T>({N, dense_units}, scores.device());
  if (scores.device().is_cpu()) {
    cpu::moe_route(sc.data(), bc.data(), r.experts.data(), r.gates.data(), N, static_cast<int>(E), K,
                   static_cast<int>(o.n_group), static_cast<int>(o.topk_group), o.normalize, o.scaling, o.logits);
    if (dense)
      cpu::moe_dense_gates(r.experts.data(), r.gates.data(), dense->data(), N, static_cast<int>(E), K,
                           static_cast<int>(dense_units));
  } else {
    launch_device_kernel(op, kernels::MoeRouteArgs{.launch = launch_on(op, scores.device()),
                                                   .dtype = dtype_of<T>,
                                                   .experts = r.experts.data(),
                                                   .gates = r.gates.data(),
                                                   .dense = dense ? dense->data() : nullptr,
                                                   .scores = sc.data(),
                                                   .bias = bc.data(),
                                                   .tokens = N,
                                                   .n_experts = static_cast<int>(E),
                                                   .top_k = K,
                                                   .n_group = static_cast<int>(o.n_group),
                                                   .topk_group = static_cast<int>(o.topk_group),
                                                   .dense_units = dense ? static_cast<int>(dense_units) : 0,
                                                   .logits = o.logits,
                                                   .normalize = o.normalize,
                                                   .scaling = o.scaling});
  }
  return r;
}

}  // namespace detail

// The routing as dense rows [N, units] (units >= E): each token's gates at its chosen experts, 0 at
// the other experts, 1 at units E..units−1 — dense dispatch's gate matrix (nn::MoE::forward_dense,
// where those last units are the shared expert's), in the routing kernel's one launch. With
// o.logits the scores are the router's logits (the sigmoid formed there too). No graph.
template <class T>
Tensor<T> moe_route_dense(const Tensor<T>& scores, const Tensor<T>& bias, const MoeRouteOptions& o,
                          std::int64_t units) {
  Tensor<T> dense;
  (void)detail::moe_route_forward("moe_route_dense", scores, bias, o, units, &dense);
  return dense;
}

// scores [N, E] (the sigmoid affinities), bias [E] (the balancing bias: choice only) -> the
// choices and gates. Differentiable in scores through the gates.
template <class T>
MoeRoute<T> moe_route(const Tensor<T>& scores, const Tensor<T>& bias, const MoeRouteOptions& o) {
  const char* op = "moe_route";
  check(!o.logits, op, "takes the sigmoid affinities (its gradient is theirs); logits are for moe_route_dense");
  MoeRoute<T> r = detail::moe_route_forward(op, scores, bias, o, 0, static_cast<Tensor<T>*>(nullptr));
  if (autograd::needs_grad(scores)) {
    const std::int64_t N = scores.size(0), E = scores.size(1);
    const int K = static_cast<int>(o.top_k);
    const Tensor<T> sc = contiguous(scores.detach());
    const Tensor<std::int64_t> experts = r.experts;
    autograd::record(r.gates, op, [sc, experts, N, E, K, o](const Tensor<T>& g, const autograd::InputGrads& in) {
      const char* bop = "moe_route backward";
      check_same_device(bop, sc, g);
      const Tensor<T> gc = contiguous(g);
      Tensor<T> ds({N, E}, sc.device());
      if (sc.device().is_cpu()) {
        cpu::moe_route_backward(gc.data(), sc.data(), experts.data(), ds.data(), N, static_cast<int>(E), K,
                                o.normalize, o.scaling);
      } else {
        launch_device_kernel(bop, kernels::MoeRouteBackwardArgs{.launch = launch_on(bop, sc.device()),
                                                                .dtype = dtype_of<T>,
                                                                .dscores = ds.data(),
                                                                .dgates = gc.data(),
                                                                .scores = sc.data(),
                                                                .experts = experts.data(),
                                                                .tokens = N,
                                                                .n_experts = static_cast<int>(E),
                                                                .top_k = K,
                                                                .normalize = o.normalize,
                                                                .scaling = o.scaling});
      }
      in.add(0, ds);
    }, scores);
  }
  return r;
}

// The routes of N tokens sorted by expert (stably: within an expert in slot order, slot = n·K + k).
struct MoeLayout {
  Tensor<std::int64_t> slot_of_row;  // [N·K] row of the layout -> slot
  Tensor<std::int64_t> row_of_slot;  // [N·K] slot -> row
  Tensor<std::int64_t> offsets;      // [E + 1] expert e owns rows offsets[e] .. offsets[e+1] − 1
  Tensor<std::int64_t> counts;       // [E] routes per expert
  std::int64_t tokens = 0, top_k = 0;

  std::int64_t routes() const { return tokens * top_k; }
};

// experts [N, K] (ids in [0, n_experts); on a GPU out-of-range ids are clamped rather than checked,
// which would need a host read) -> the layout, on the same device. accumulate: an optional
// contiguous [n_experts] tensor on that device to which the counts are added (a batch's load,
// with no extra launch). No graph.
inline MoeLayout moe_layout(const Tensor<std::int64_t>& experts, std::int64_t n_experts,
                            const Tensor<std::int64_t>& accumulate = Tensor<std::int64_t>()) {
  const char* op = "moe_layout";
  check_defined(op, experts);
  check(experts.dim() == 2, op, "needs experts [N, K], got shape ", experts.shape());
  check(n_experts >= 1 && n_experts <= 1024, op, "supports 1 to 1024 experts, got ", n_experts);
  if (accumulate.defined()) {
    check_same_device(op, experts, accumulate);
    check(accumulate.shape() == Shape{n_experts} && accumulate.is_contiguous(), op,
          "accumulate must be a contiguous [", n_experts, "], got shape ", accumulate.shape());
  }
  const Tensor<std::int64_t> ec = contiguous(experts.detach());
  const Device d = experts.device();
  MoeLayout l;
  l.tokens = experts.size(0);
  l.top_k = experts.size(1);
  const std::int64_t R = l.routes();
  check(R < (std::int64_t{1} << 31), op, "supports fewer than 2^31 routes, got experts of shape ", experts.shape());
  l.slot_of_row = Tensor<std::int64_t>({R}, d);
  l.row_of_slot = Tensor<std::int64_t>({R}, d);
  l.offsets = Tensor<std::int64_t>({n_experts + 1}, d);
  l.counts = Tensor<std::int64_t>({n_experts}, d);
  if (d.is_cpu()) {
    const std::int64_t* e = ec.data();
    for (std::int64_t s = 0; s < R; ++s)
      check(e[s] >= 0 && e[s] < n_experts, op, "expert id ", e[s], " at slot ", s, " is outside [0, ", n_experts, ")");
    cpu::moe_layout(e, R, static_cast<int>(n_experts), l.slot_of_row.data(), l.row_of_slot.data(), l.offsets.data(),
                    l.counts.data(), accumulate.defined() ? accumulate.data() : nullptr);
  } else {
    launch_device_kernel(op, kernels::MoeLayoutArgs{.launch = launch_on(op, d),
                                                    .slot_of_row = l.slot_of_row.data(),
                                                    .row_of_slot = l.row_of_slot.data(),
                                                    .offsets = l.offsets.data(),
                                                    .counts = l.counts.data(),
                                                    .accumulate = accumulate.defined() ? accumulate.data() : nullptr,
                                                    .experts = ec.data(),
                                                    .routes = R,
                                                    .n_experts = static_cast<int>(n_experts)});
  }
  return l;
}

namespace detail {

// out[p] = x[index[p] / divisor] · (scale ? scale[index[p]] : 1): [rows, cols]. inverse: index's
// inverse permutation where known (the CUDA kernel then walks x's rows, reading each once).
template <class T>
Tensor<T> moe_gather_rows(const char* op, const Tensor<T>& x, const Tensor<std::int64_t>& index, const Tensor<T>& scale,
                          std::int64_t divisor, const Tensor<std::int64_t>& inverse = {}) {
  const std::int64_t rows = index.numel(), cols = x.size(1);
  Tensor<T> out({rows, cols}, x.device());
  if (x.device().is_cpu()) {
    cpu::moe_gather_rows(x.data(), index.data(), scale.defined() ? scale.data() : nullptr, out.data(), rows, cols,
                         divisor);
  } else {
    launch_device_kernel(op, kernels::MoeGatherRowsArgs{.launch = launch_on(op, x.device()),
                                                        .dtype = dtype_of<T>,
                                                        .out = out.data(),
                                                        .x = x.data(),
                                                        .index = index.data(),
                                                        .scale = scale.defined() ? scale.data() : nullptr,
                                                        .rows = rows,
                                                        .cols = cols,
                                                        .divisor = divisor,
                                                        .inverse = inverse.defined() ? inverse.data() : nullptr});
  }
  return out;
}

// y[n] = Σ_k (weights ? weights[n·K + k] : 1) · in[index[n·K + k]]: [tokens, cols]; with `add`
// ([tokens, cols] contiguous) the sum starts from add[n].
template <class T>
Tensor<T> moe_sum_rows(const char* op, const Tensor<T>& in, const Tensor<std::int64_t>& index, const Tensor<T>& weights,
                       std::int64_t tokens, std::int64_t K, const Tensor<T>& add = Tensor<T>()) {
  const std::int64_t cols = in.size(1);
  Tensor<T> y({tokens, cols}, in.device());
  if (in.device().is_cpu()) {
    cpu::moe_sum_rows(in.data(), index.data(), weights.defined() ? weights.data() : nullptr, y.data(), tokens, cols,
                      static_cast<int>(K), add.defined() ? add.data() : nullptr);
  } else {
    launch_device_kernel(op, kernels::MoeSumRowsArgs{.launch = launch_on(op, in.device()),
                                                     .dtype = dtype_of<T>,
                                                     .y = y.data(),
                                                     .in = in.data(),
                                                     .index = index.data(),
                                                     .weights = weights.defined() ? weights.data() : nullptr,
                                                     .add = add.defined() ? add.data() : nullptr,
                                                     .tokens = tokens,
                                                     .cols = cols,
                                                     .top_k = static_cast<int>(K)});
  }
  return y;
}

inline void check_layout(const char* op, const MoeLayout& l, Device device) {
  check(l.slot_of_row.defined() && l.row_of_slot.defined() && l.offsets.defined(), op,
        "needs a layout made by moe_layout");
  check(l.slot_of_row.device() == device, op, "the layout is on ", l.slot_of_row.device(), ", the rows on ", device);
}

}  // namespace detail

// Token rows x [N, H] -> the routes' rows in layout order [N·K, H] (row p holds token
// slot_of_row[p] / K). Differentiable in x: dx[n] = Σ_k d[row_of_slot[n·K + k]].
template <class T>
Tensor<T> moe_dispatch(const Tensor<T>& x, const MoeLayout& layout) {
  const char* op = "moe_dispatch";
  check_defined(op, x);
  detail::check_layout(op, layout, x.device());
  check(x.dim() == 2 && x.size(0) == layout.tokens, op, "needs x [", layout.tokens, ", H] (the layout's tokens), got ",
        x.shape());
  const Tensor<T> xc = contiguous(x.detach());
  Tensor<T> out = detail::moe_gather_rows(op, xc, layout.slot_of_row, Tensor<T>(), layout.top_k, layout.row_of_slot);
  if (autograd::needs_grad(x)) {
    autograd::record(out, op, [layout](const Tensor<T>& g, const autograd::InputGrads& in) {
      const Tensor<T> gc = contiguous(g);
      // A gradient x received before (the MoE input's, from the router or the shared expert) is
      // where the sum starts: one read instead of a separate add's three passes.
      const Tensor<T> received = in.received<T>(0);
      const Tensor<T> dx = detail::moe_sum_rows("moe_dispatch backward", gc, layout.row_of_slot, Tensor<T>(),
                                                layout.tokens, layout.top_k, received);
      received.defined() ? in.set_total(0, dx) : in.add(0, dx);
    }, x);
  }
  return out;
}

// Expert outputs in layout order rows [N·K, H] and gates [N, K] -> y [N, H],
// y[n] = base[n] + Σ_k gates[n, k] · rows[row_of_slot[n·K + k]] (in k order, the sum started from
// base [N, H] when given: the MoE's shared expert and residual, with no separate adds).
// Differentiable in rows, gates and base.
template <class T>
Tensor<T> moe_combine(const Tensor<T>& rows, const Tensor<T>& gates, const MoeLayout& layout,
                      const Tensor<T>& base = Tensor<T>()) {
  const char* op = "moe_combine";
  check_defined(op, rows, gates);
  check_same_device(op, rows, gates);
  detail::check_layout(op, layout, rows.device());
  check(rows.dim() == 2 && rows.size(0) == layout.routes() && gates.shape() == Shape{layout.tokens, layout.top_k}, op,
        "needs rows [", layout.routes(), ", H] and gates [", layout.tokens, ", ", layout.top_k, "], got shapes ",
        rows.shape(), " and ", gates.shape());
  if (base.defined()) {
    check_same_device(op, rows, base);
    check(base.shape() == Shape{layout.tokens, rows.size(1)}, op, "base of shape ", base.shape(), " is not [",
          layout.tokens, ", ", rows.size(1), "] (the output's)");
  }
  const Tensor<T> rc = contiguous(rows.detach()), gc = contiguous(gates.detach());
  Tensor<T> y = detail::moe_sum_rows(op, rc, layout.row_of_slot, gc, layout.tokens, layout.top_k,
                                     base.defined() ? contiguous(base.detach()) : Tensor<T>());
  if (autograd::needs_grad(rows, gates, base)) {
    autograd::record(y, op, [rc, gc, layout](const Tensor<T>& g, const autograd::InputGrads& in) {
      const char* bop = "moe_combine backward";
      const Tensor<T> dy = contiguous(g);
      Tensor<T> drows = in.needs(0) ? Tensor<T>(rc.shape(), dy.device()) : Tensor<T>();
      Tensor<T> dg = in.needs(1) ? Tensor<T>({layout.tokens, layout.top_k}, dy.device()) : Tensor<T>();
      const std::int64_t cols = dy.size(1);
      if (dy.device().is_cpu()) {
        if (drows.defined())
          cpu::moe_gather_rows(dy.data(), layout.slot_of_row.data(), gc.data(), drows.data(), layout.routes(), cols,
                               layout.top_k);
        if (dg.defined())
          cpu::moe_gate_grad(rc.data(), dy.data(), layout.row_of_slot.data(), dg.data(), layout.tokens, cols,
                             static_cast<int>(layout.top_k));
      } else {  // both in one pass over the rows
        launch_device_kernel(bop, kernels::MoeCombineBackwardArgs{.launch = launch_on(bop, dy.device()),
                                                                  .dtype = dtype_of<T>,
                                                                  .d_rows = drows.defined() ? drows.data() : nullptr,
                                                                  .dgates = dg.defined() ? dg.data() : nullptr,
                                                                  .rows = rc.data(),
                                                                  .gates = gc.data(),
                                                                  .dy = dy.data(),
                                                                  .slot_of_row = layout.slot_of_row.data(),
                                                                  .row_of_slot = layout.row_of_slot.data(),
                                                                  .routes = layout.routes(),
                                                                  .cols = cols,
                                                                  .top_k = static_cast<int>(layout.top_k)});
      }
      if (drows.defined()) in.add(0, drows);
      if (dg.defined()) in.add(1, dg);
      in.add(2, g);  // the base's (needs(2) false without one)
    }, rows, gates, base);
  }
  return y;
}

// The aux-loss-free update in place: bias_e += γ·sign(mean − counts_e) (kernels/moe/args.hpp),
// on the bias's device; the same bits as nn::update_routing_bias's host rule. No graph.
template <class T>
void moe_balance_update(const Tensor<T>& bias, const Tensor<std::int64_t>& counts, double gamma) {
  static_assert(is_floating<T>, "moe_balance_update needs a floating bias");
  const char* op = "moe_balance_update";
  check_defined(op, bias, counts);
  check_same_device(op, bias, counts);
  check(bias.dim() == 1 && counts.shape() == bias.shape() && bias.is_contiguous() && counts.is_contiguous(), op,
        "needs a contiguous bias [E] and counts [E], got shapes ", bias.shape(), " and ", counts.shape());
  const int E = static_cast<int>(bias.size(0));
  if (bias.device().is_cpu()) {
    cpu::moe_balance_update(bias.data(), counts.data(), E, gamma);
  } else {
    launch_device_kernel(op, kernels::MoeBalanceUpdateArgs{.launch = launch_on(op, bias.device()),
                                                           .dtype = dtype_of<T>,
                                                           .bias = bias.data(),
                                                           .counts = counts.data(),
                                                           .n_experts = E,
                                                           .gamma = gamma});
  }
}

}  // namespace kiln
