// Arguments of the Mixture-of-Experts kernels (kernels/moe/routing.cuh, dispatch.cuh, balance.cuh;
// front-end ops/moe.hpp; CPU reference backend/cpu/moe.hpp). Every buffer is contiguous. N tokens,
// E routed experts, K experts per token; a route is a (token, choice) pair, slot s = n·K + k.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// DeepSeek-V3 routing of each token from its sigmoid affinities s [N, E]:
//   c_e = s_e + b_e (rounded to the dtype), group score = sum of the group's two largest c,
//   keep the topk_group best groups, choose the K largest c among their experts (ties: lower
//   index first, for groups and experts), gate_k = s_k / (Σ_chosen s + 1e-20) · scaling when
//   normalize (and K > 1), else s_k · scaling.
struct MoeRouteArgs {
  static constexpr const char* kernel = "moe_route";
  static constexpr const char* header = "kiln/kernels/moe/routing.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;        // of scores, bias and gates
  std::int64_t* experts = nullptr; // [N, K] chosen experts, best choice score first
  void* gates = nullptr;           // [N, K]
  void* dense = nullptr;           // optional [N, dense_units]: the gates at the chosen experts, 0 at the other
                                   // experts, 1 at units E .. dense_units − 1 (dense dispatch's shared units)
  const void* scores = nullptr;    // [N, E]
  const void* bias = nullptr;      // [E] choice bias (e_score_correction_bias)
  std::int64_t tokens = 0;
  int n_experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  int dense_units = 0;             // >= n_experts when dense is given
  bool logits = false;             // scores hold the router's logits: s = T(sigmoid(logit)) is formed here
  bool normalize = true;
  double scaling = 1.0;
};

// The gradient of the gates with respect to the affinities: dscores [N, E], zero off the chosen
// experts; with S = Σ_chosen s + 1e-20 and normalisation, ds_k = scaling/S · (dg_k − Σ_j dg_j s_j / S).
struct MoeRouteBackwardArgs {
  static constexpr const char* kernel = "moe_route backward";
  static constexpr const char* header = "kiln/kernels/moe/routing.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;              // of scores, dgates and dscores
  void* dscores = nullptr;               // [N, E]
  const void* dgates = nullptr;          // [N, K]
  const void* scores = nullptr;          // [N, E]
  const std::int64_t* experts = nullptr; // [N, K]
  std::int64_t tokens = 0;
  int n_experts = 0, top_k = 0;
  bool normalize = true;
  double scaling = 1.0;
};

// The expert-contiguous layout of R = N·K routes: the routes sorted by expert, stably (so within an
// expert in slot order). Row p of the layout holds slot slot_of_row[p]; row_of_slot is its inverse;
// expert e owns rows offsets[e] .. offsets[e+1] − 1 and counts[e] = offsets[e+1] − offsets[e];
// when `accumulate` is given the counts are also added to it (a training batch's load).
// Out-of-range expert ids (a corrupt input) are clamped to [0, E − 1] so that nothing is written
// out of bounds.
struct MoeLayoutArgs {
  static constexpr const char* kernel = "moe_layout";
  static constexpr const char* header = "kiln/kernels/moe/dispatch.cuh";
  DeviceLaunch launch;
  std::int64_t* slot_of_row = nullptr;    // [R]
  std::int64_t* row_of_slot = nullptr;    // [R]
  std::int64_t* offsets = nullptr;        // [E + 1]
  std::int64_t* counts = nullptr;         // [E]
  std::int64_t* accumulate = nullptr;     // [E] or null
  const std::int64_t* experts = nullptr;  // [R] (the [N, K] choices in slot order)
  std::int64_t routes = 0;
  int n_experts = 0;
};

// Row gather: out[p] = x[index[p] / divisor] · (scale ? scale[index[p]] : 1), p < rows, rows of
// `cols` elements. The dispatch (x: tokens, index: slot_of_row, divisor K) and the combine's
// backward to the expert outputs (x: dy, scale: the gates).
struct MoeGatherRowsArgs {
  static constexpr const char* kernel = "moe_gather_rows";
  static constexpr const char* header = "kiln/kernels/moe/dispatch.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;            // of out, x and scale
  void* out = nullptr;                 // [rows, cols]
  const void* x = nullptr;             // [*, cols]
  const std::int64_t* index = nullptr; // [rows]
  const void* scale = nullptr;         // [*] or null
  std::int64_t rows = 0, cols = 0, divisor = 1;
  // index's inverse (row_of_slot: inverse[index[p]] = p) when index is a permutation of
  // [0, rows) with rows = tokens·divisor, x holding the tokens; or null. With it the kernel walks
  // the tokens instead of the rows (dispatch.cuh: each x row read once, written divisor times).
  const std::int64_t* inverse = nullptr;
};

// Weighted row sum: y[n] = Σ_{k<K} (weights ? weights[n·K + k] : 1) · in[index[n·K + k]], summed in
// k order in the compute type (deterministic). The combine (in: the expert outputs, index:
// row_of_slot, weights: the gates) and the dispatch's backward to the tokens.
struct MoeSumRowsArgs {
  static constexpr const char* kernel = "moe_sum_rows";
  static constexpr const char* header = "kiln/kernels/moe/dispatch.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;            // of y, in and weights
  void* y = nullptr;                   // [N, cols]
  const void* in = nullptr;            // [*, cols]
  const std::int64_t* index = nullptr; // [N·K]
  const void* weights = nullptr;       // [N·K] or null
  // [N, cols] or null: y = add + the sum, the sum started from it (a gradient x received before,
  // folded into the dispatch's backward: autograd's InputGrads::received); never y itself
  const void* add = nullptr;
  std::int64_t tokens = 0, cols = 0;
  int top_k = 1;
};

// The combine's backward in one pass over the layout's rows p (slot s = slot_of_row[p], token
// n = s / K): d_rows[p] = gates[s] · dy[n] and dgates[s] = <rows[p], dy[n]>; either output may be null.
struct MoeCombineBackwardArgs {
  static constexpr const char* kernel = "moe_combine backward";
  static constexpr const char* header = "kiln/kernels/moe/dispatch.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;                  // of d_rows, dgates, rows, gates and dy
  void* d_rows = nullptr;                    // [N·K, cols] or null
  void* dgates = nullptr;                    // [N·K] or null
  const void* rows = nullptr;                // [N·K, cols] the combine's input (expert outputs)
  const void* gates = nullptr;               // [N·K]
  const void* dy = nullptr;                  // [N, cols]
  const std::int64_t* slot_of_row = nullptr; // [N·K]
  const std::int64_t* row_of_slot = nullptr; // [N·K] its inverse, or null (dispatch.cuh: token order)
  std::int64_t routes = 0, cols = 0;
  int top_k = 1;
};

// The aux-loss-free update (DeepSeek-V3 §2.1.2) on the device, in place:
// bias_e += γ·sign(mean − counts_e) with mean = Σ counts / E and sign(0) = 0, computed in double
// and rounded to the dtype as nn::update_routing_bias does on the host; nothing when Σ counts = 0.
struct MoeBalanceUpdateArgs {
  static constexpr const char* kernel = "moe_balance_update";
  static constexpr const char* header = "kiln/kernels/moe/balance.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;             // of bias
  void* bias = nullptr;                 // [E]
  const std::int64_t* counts = nullptr; // [E]
  int n_experts = 0;
  double gamma = 0.0;
};

}  // namespace kiln::kernels
