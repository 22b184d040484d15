// DeepSeek-V3 Mixture-of-Experts layer (DeepSeek-V3 report §2.1.2; the "noaux_tc" MoEGate of the
// Hugging Face DeepseekV3 model), built from kiln ops so that it is differentiable and runs
// wherever the ops run.
//
// Routing, for a token x with N_r routed experts split into n_group groups:
//   s_i      = sigmoid(x · g_i)                   affinity to expert i (g_i = gate.weight row i)
//   c_i      = s_i + b_i                          choice score (b = e_score_correction_bias, a buffer)
//   group score = sum of the two largest c_i of the group; keep the topk_group best groups
//   chosen   = the num_experts_per_tok (K) experts of largest c_i within the kept groups
//   gate_k   = s_k / Σ_{j chosen} s_j · routed_scaling_factor    (normalised only if
//              norm_topk_prob and K > 1, as in the Hugging Face model)
//   y        = Σ_{k chosen} gate_k · expert_k(x) + shared_experts(x)
// The bias only decides which experts run; the gates, and so the gradients, use the unbiased s.
// Masked experts get choice score −∞ (the Hugging Face code writes 0 instead, which differs only
// when a kept expert's choice score is negative, i.e. for biases below −1).
//
// Dispatch (no token is dropped): the N·K (token, expert) routes are sorted by expert on the
// host; the tokens are gathered in that order (index_select), each expert runs once on its
// contiguous slice, and the outputs are gathered back into slot order [N, K, hidden] (another
// index_select: a permutation, since every token has exactly K routes) and summed with the gates.
// Gradients reach the expert weights through the experts, the gate weight through the gates, and
// x through both; the choice itself is piecewise constant.
//
// Fused dispatch (the default on a GPU in bf16; moe_dispatch_path()): the same function with no host
// synchronisation, from the kernels of kernels/moe/ and kernels/grouped_gemm/ (ops/moe.hpp,
// ops/grouped_linear.hpp):
//   scores = sigmoid(x · gateᵀ); moe_route: choices and gates in one kernel (its backward one more);
//   moe_layout: the routes sorted by expert on the device (offsets and counts stay there);
//   moe_dispatch: token rows gathered into that order [N·K, hidden];
//   grouped_swiglu_mlp (ops/grouped_swiglu_mlp.hpp): the experts' gate_proj|up_proj rows stacked
//   [E, 2I, hidden], SwiGLU, the down_proj weights stacked [E, hidden, I], the SwiGLU in the
//   grouped GEMMs' epilogues (moe_swiglu_epilogue() off: grouped_linear, swiglu, grouped_linear);
//   moe_combine: the gate-weighted sum of each token's K rows (deterministic; k order).
// With the experts' linears in FP8 mode (nn/fp8_training.hpp) the two grouped products are
// grouped_fp8_linear's (nn/fp8_linear.hpp: forward and data gradient in FP8, weight gradient in T).
// The load counts stay on the device too: batch_load()/last_load() read them when asked (logging),
// and update_bias() runs the aux-loss-free rule as a kernel on them. The composed path above stays
// the reference (the CPU default); tests compare the two.
//
// Dense dispatch (forward_dense; generation's decode step): the host sort above reads the chosen
// experts back, a device-to-host synchronisation per layer. Instead, every expert runs on every
// token and a dense gate matrix [N, E], zero off the chosen experts, weights the outputs: the same
// function up to summation order, with no index op and no host read. The experts are stacked once
// (stack_experts, a snapshot of the weights) into two matrices, so the layer is two matrix products
// plus elementwise work: U = E + n_shared units of width I = moe_intermediate_size (the shared
// expert of width n_shared·I split into n_shared units: SwiGLU acts on each intermediate unit
// separately, and a shared unit's gate is 1),
//   [g | u] = x · W_inᵀ   (W_in [2·U·I, hidden]: the units' gate_proj rows, then their up_proj rows)
//   y = (gate_unit ⊙ silu(g) ⊙ u) · W_outᵀ   (W_out [hidden, U·I]: the units' down_proj columns)
// since gate·down(a) = down(gate·a). It costs E/K times the routed FLOPs of sparse dispatch, which
// is cheap while a decode step is bound by reading the weights: with more than a few tokens per
// step every expert is chosen by some token, so sparse dispatch reads every expert's weights too.
// For many experts — DeepSeek-V3's 256, top-8 — dense dispatch would be 32 times the work: such
// models generate through forward_sparse (the fused dispatch above, sparse and sync-free too, or
// the composed path on the CPU; GenerationDispatch says which a model gets). Both leave the load
// statistics alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/core/environment.hpp"
#include "kiln/nn/balance.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/expert_exchange.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/gather.hpp"
#include "kiln/ops/grouped_linear.hpp"
#include "kiln/ops/grouped_swiglu_mlp.hpp"
#include "kiln/ops/matmul.hpp"
#include "kiln/ops/moe.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/topk.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/ops/where.hpp"

namespace kiln::nn {

// What the router decides for N tokens.
template <class T>
struct Routing {
  Tensor<std::int64_t> experts;  // [N, K] chosen experts, best choice score first
  Tensor<T> gates;               // [N, K] their gates (differentiable)
  Tensor<T> scores;              // [N, N_r] the sigmoid affinities s (differentiable)
};

// The router: `weight` [n_routed_experts, hidden] and the balancing bias (a buffer).
template <class T>
class MoEGate : public Module<T> {
 public:
  Tensor<T> weight;                   // [n_routed_experts, hidden_size]
  Tensor<T> e_score_correction_bias;  // [n_routed_experts], buffer: changed only by the balancing rule

  MoEGate(const DeepseekV3Config& c, Generator& gen)
      : experts_(checked_routing(c).n_routed_experts),
        top_k_(c.num_experts_per_tok),
        n_group_(c.n_group),
        topk_group_(c.topk_group),
        norm_topk_prob_(c.norm_topk_prob),
        scaling_(c.routed_scaling_factor) {
    weight = randn<T>({experts_, c.hidden_size}, 0.0, c.initializer_range, Device::cpu(), gen);
    e_score_correction_bias = zeros<T>({experts_});
    this->register_parameter("weight", &weight);
    this->register_buffer("e_score_correction_bias", &e_score_correction_bias);
  }

  // The routing fields of a config (also checked by DeepseekV3Model before any layer exists).
  static const DeepseekV3Config& checked_routing(const DeepseekV3Config& c) {
    const char* op = "MoEGate";
    const std::int64_t experts = c.n_routed_experts, n_group = c.n_group, topk_group = c.topk_group,
                       top_k = c.num_experts_per_tok;
    check(c.topk_method == "noaux_tc", op, "only topk_method \"noaux_tc\" is implemented, got \"", c.topk_method, "\"");
    check(c.scoring_func == "sigmoid", op, "only scoring_func \"sigmoid\" is implemented, got \"", c.scoring_func,
          "\"");
    check(experts > 0 && n_group > 0 && experts % n_group == 0, op, "n_routed_experts = ", experts,
          " must be a positive multiple of n_group = ", n_group);
    check(topk_group >= 1 && topk_group <= n_group, op, "topk_group = ", topk_group, " must lie in [1, n_group = ",
          n_group, "]");
    check(top_k >= 1 && top_k <= topk_group * (experts / n_group), op, "num_experts_per_tok = ", top_k,
          " must lie in [1, ", topk_group * (experts / n_group), "] (the experts of topk_group = ", topk_group,
          " groups)");
    return c;
  }

  // x [N, hidden] -> the routing of each token.
  Routing<T> forward(const Tensor<T>& x) const {
    const Tensor<T> scores = affinities(x);
    const Tensor<std::int64_t> chosen = choose(scores);
    Tensor<T> gates = gather(scores, 1, chosen);
    if (norm_topk_prob_ && top_k_ > 1) gates = div(gates, add(sum(gates, {-1}, true), 1e-20));
    gates = mul(gates, scaling_);
    return {chosen, gates, scores};
  }

  // The same routing as a dense gate matrix [N, units] (dense dispatch, MoE::forward_dense; units
  // >= E): forward()'s gates at each token's chosen experts, 0 at the other experts, 1 at units
  // E..units−1 (the shared expert's units, always on). From moe_route_dense over the router's
  // logits: the fused routing kernel on a GPU (sigmoid included: one launch after the router's
  // product, nothing read back), its reference loops on the CPU; choices equal forward()'s, gates
  // rounded once. No graph (generation's path).
  Tensor<T> dense_gates(const Tensor<T>& x, std::int64_t units) const {
    NoGradGuard no_grad;
    MoeRouteOptions o = route_options();
    o.logits = true;  // the sigmoid in the routing kernel
    return moe_route_dense(logits(x), e_score_correction_bias, o, units);
  }

  Routing<T> operator()(const Tensor<T>& x) const { return forward(x); }

  // The same routing through the fused kernel (ops/moe.hpp, moe_route): no index ops, no host
  // read. Equal choices wherever forward() sees the same choice scores (ties included); gates
  // rounded once instead of op by op.
  Routing<T> forward_fused(const Tensor<T>& x) const {
    const Tensor<T> scores = affinities(x);
    const MoeRoute<T> r = moe_route(scores, e_score_correction_bias, route_options());
    return {r.experts, r.gates, scores};
  }

  MoeRouteOptions route_options() const {
    return {.top_k = top_k_, .n_group = n_group_, .topk_group = topk_group_, .normalize = norm_topk_prob_,
            .scaling = scaling_};
  }

  std::int64_t experts() const { return experts_; }
  std::int64_t top_k() const { return top_k_; }
  std::int64_t groups() const { return n_group_; }

 private:
  // The sigmoid affinities s [N, E] of x [N, hidden], and the logits they come from.
  Tensor<T> affinities(const Tensor<T>& x) const { return sigmoid(logits(x)); }
  Tensor<T> logits(const Tensor<T>& x) const {
    check_defined("MoEGate", x);
    check(x.dim() == 2 && x.shape()[1] == weight.shape()[1], "MoEGate", "needs x [N, ", weight.shape()[1],
          "], got shape ", x.shape());
    return matmul(x, transpose(weight, 0, 1));
  }

  // The K chosen experts [N, K] (best choice score first) for affinities [N, E]: the bias shifts
  // the choice scores, groups outside the topk_group best are masked out. No graph.
  Tensor<std::int64_t> choose(const Tensor<T>& scores) const {
    NoGradGuard no_grad;  // the choice is piecewise constant: no graph
    const std::int64_t n = scores.shape()[0];
    Tensor<T> choice = add(scores.detach(), e_score_correction_bias.detach());
    if (topk_group_ < n_group_) {
      const std::int64_t per_group = experts_ / n_group_;
      const Tensor<T> grouped = reshape(choice, {n, n_group_, per_group});
      const Tensor<T> group_scores = sum(topk(grouped, std::min<std::int64_t>(2, per_group), -1).values, {-1});
      const Tensor<std::int64_t> kept = topk(group_scores, topk_group_, -1).indices;  // [N, topk_group]
      const Tensor<std::int64_t> group_ids =
          arange<std::int64_t>(0.0, static_cast<double>(n_group_), 1.0, scores.device());
      const Tensor<bool> dropped = unsqueeze(eq(one_hot(kept, group_ids), 0.0), 2);  // [N, n_group, 1]
      choice = reshape(masked_fill(grouped, dropped, -std::numeric_limits<double>::infinity()), {n, experts_});
    }
    return topk(choice, top_k_, -1).indices;  // [N, K]
  }

  // Rows of distinct indices [N, k] -> [N, C] marks (1 at each listed index, else 0), ids = 0..C−1:
  // Σ_k (indices[n, k] == ids[c]). Elementwise and a sum, so nothing is read back to the host.
  static Tensor<T> one_hot(const Tensor<std::int64_t>& indices, const Tensor<std::int64_t>& ids) {
    return sum(cast<T>(eq(unsqueeze(indices, 2), ids)), {1});
  }

  std::int64_t experts_, top_k_, n_group_, topk_group_;
  bool norm_topk_prob_;
  double scaling_;
};

// The N·K routes of a batch (slot s = n·K + k: token n's k-th choice) sorted by expert, stably, on
// the host: sorted position p holds token tokens[p]; slot s sits at sorted position position[s];
// expert i's routes are sorted positions start[i] .. start[i + 1] − 1. MoE runs each expert on
// its slice; expert parallelism (dist/expert_parallel.hpp) sends each rank the slices of its experts.
struct RouteSort {
  ExpertLoad load;                     // routes per expert
  std::vector<std::int64_t> start;     // [experts + 1]
  std::vector<std::int64_t> tokens;    // [N·K] sorted position -> token
  std::vector<std::int64_t> position;  // [N·K] slot -> sorted position
};

inline RouteSort sort_routes(const std::vector<std::int64_t>& chosen, std::int64_t k, std::int64_t experts) {
  RouteSort o;
  o.load = ExpertLoad(experts);
  o.load.add_routes(chosen);
  o.start.assign(static_cast<std::size_t>(experts) + 1, 0);
  for (std::size_t i = 0; i < static_cast<std::size_t>(experts); ++i) o.start[i + 1] = o.start[i] + o.load.counts[i];
  o.tokens.resize(chosen.size());
  o.position.resize(chosen.size());
  std::vector<std::int64_t> next(o.start.begin(), o.start.end() - 1);
  for (std::size_t s = 0; s < chosen.size(); ++s) {
    const std::int64_t p = next[static_cast<std::size_t>(chosen[s])]++;
    o.tokens[static_cast<std::size_t>(p)] = static_cast<std::int64_t>(s) / k;
    o.position[s] = p;
  }
  return o;
}

// Runs expert(i) once on its contiguous slice of `sorted` (counts[i] rows, slices in order) and
// returns the outputs in the same order; experts without rows are skipped. With no rows at all it
// returns `sorted` itself (an empty tensor that keeps the graph connected).
template <class T, class ExpertFn>
Tensor<T> run_experts(const Tensor<T>& sorted, const std::vector<std::int64_t>& counts, ExpertFn&& expert) {
  std::vector<Tensor<T>> outputs;
  std::int64_t start = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    outputs.push_back(expert(i)(narrow(sorted, 0, start, counts[i])));
    start += counts[i];
  }
  return outputs.empty() ? sorted : cat(outputs, 0);
}

// Expert outputs in sorted order [N·K, hidden] -> back to slot order (every token has exactly K
// slots: nothing is dropped, so this is a permutation) and the gate-weighted sum over each
// token's K slots: [N, hidden].
template <class T>
Tensor<T> combine_routes(const Tensor<T>& sorted_out, const std::vector<std::int64_t>& position, const Tensor<T>& gates) {
  const std::int64_t n = gates.shape()[0], k = gates.shape()[1], hidden = sorted_out.shape().back();
  const auto position_index = Tensor<std::int64_t>::from_vector(position, {n * k}, sorted_out.device());
  const Tensor<T> per_slot = reshape(index_select(sorted_out, 0, position_index), {n, k, hidden});
  return sum(mul(per_slot, unsqueeze(gates, 2)), {1});
}

// An MoE layer's experts stacked for dense dispatch (MoE::forward_dense): a snapshot of the weights
// made by MoE::stack_experts(), to be made again after the weights change. Units 0..E−1 are the
// routed experts, E..U−1 the n_shared width-I chunks of the shared expert.
template <class T>
struct DenseExperts {
  Tensor<T> w_in;                   // [2·U·I, hidden]: gate_proj rows of every unit, then up_proj rows
  Tensor<T> w_out;                  // [hidden, U·I]: down_proj columns of every unit
  std::int64_t routed = 0, shared = 0, width = 0;  // E, n_shared, I

  bool defined() const { return w_in.defined(); }
};

// How MoE::forward runs the routed experts, process-wide (benchmarks and pretrain's --moe compare
// them): composed (host sort, one set of launches per expert: the reference), fused (the sync-free
// kernels, on any device: the CPU runs their reference loops), or automatic: fused on a GPU in
// bf16/fp16 at sizes the grouped GEMM runs (hidden and expert width multiples of 8), composed
// otherwise.
enum class MoEDispatch { automatic, composed, fused };

inline MoEDispatch& moe_dispatch_path() {
  static MoEDispatch path = MoEDispatch::automatic;
  return path;
}

// Whether the fused dispatch runs the experts' SwiGLU in the grouped GEMMs' epilogues
// (grouped_swiglu_mlp; the default) or as grouped_linear, swiglu, grouped_linear (for comparisons;
// KILN_MOE_SWIGLU_EPILOGUE=off in the environment sets the default off). Process-wide.
inline bool& moe_swiglu_epilogue() {
  static bool on = !environment_is("KILN_MOE_SWIGLU_EPILOGUE", "off");
  return on;
}

// Sets moe_dispatch_path() for the lifetime of the scope, then restores it (tests and benchmarks
// compare the paths).
class MoEDispatchScope {
 public:
  explicit MoEDispatchScope(MoEDispatch path) : saved_(moe_dispatch_path()) { moe_dispatch_path() = path; }
  ~MoEDispatchScope() { moe_dispatch_path() = saved_; }
  MoEDispatchScope(const MoEDispatchScope&) = delete;
  MoEDispatchScope& operator=(const MoEDispatchScope&) = delete;

 private:
  MoEDispatch saved_;
};

// Whether the fused kernels run a layer of this hidden size and expert width in T on a GPU: what
// the grouped GEMM takes there (bf16/fp16, N and K multiples of 8).
template <class T>
constexpr bool fused_moe_fits_gpu(std::int64_t hidden, std::int64_t width) {
  return (std::is_same_v<T, bf16> || std::is_same_v<T, fp16>) && hidden % 8 == 0 && width % 8 == 0;
}

// Whether a layer of this hidden size and expert width in T on `device` takes the fused path.
template <class T>
bool use_fused_moe(Device device, std::int64_t hidden, std::int64_t width) {
  switch (moe_dispatch_path()) {
    case MoEDispatch::fused: return true;
    case MoEDispatch::composed: return false;
    default: return device.is_cuda() && fused_moe_fits_gpu<T>(hidden, width);
  }
}

// How generation runs an MoE layer (DeepseekV3ForCausalLM::make_decode_cache, the engine's
// GenerateOptions::moe_dispatch):
//   dense   every expert on every token over a stacked copy of the experts (MoE::forward_dense):
//           two GEMMs, no index op; E/K times the routed FLOPs and a copy of every expert's weights;
//   sparse  the chosen experts only (MoE::forward_sparse): on a GPU the fused kernels (no host
//           read, so CUDA graphs capture it), on the CPU the composed path;
//   automatic  sparse where dense would do at least 8 times the routed work (E ≥ 8 K: DeepSeek-V3's
//           256 experts top-8 run 32 times the FLOPs densely, and dense stops being bound by reading
//           the weights, which both read, once a step has more than ~200 tokens on an H200), and
//           where the GPU's kernels take the layer; dense otherwise (kiln's big config, 8 experts
//           top-2: dense is two GEMMs against the sparse path's routing, layout and gather launches).
enum class GenerationDispatch { automatic, dense, sparse };

inline const char* generation_dispatch_name(GenerationDispatch d) {
  return d == GenerationDispatch::dense ? "dense" : d == GenerationDispatch::sparse ? "sparse" : "automatic";
}

template <class T>
struct MoEOutput {
  Tensor<T> output;        // x's shape
  Tensor<T> balance_loss;  // the sequence-wise balance loss (scalar); undefined when α = 0
};

// mlp of a DeepSeek-V3 MoE layer: gate, experts.N (SwiGLU, moe_intermediate_size) and
// shared_experts (one SwiGLU of moe_intermediate_size · n_shared_experts; absent when 0).
//
// Expert parallelism (built with an ExpertExchange of W ranks, nn/expert_exchange.hpp): rank r
// holds routed experts r·L .. r·L + L − 1 (L = n_routed_experts / W) under their global names
// (experts.<i>); the router and the shared experts are replicated. Each rank routes its own tokens
// and sorts the routes by expert (either dispatch path above), so the routes for each rank's
// experts form one contiguous block, ordered by expert. Then:
//   1. counts: an all-to-all of the per-expert counts (L values per pair of ranks) tells each rank
//      how many rows it receives from every rank for each of its experts (with the fused path this
//      reads the layout's counts back to the host: the one synchronisation per layer that sizing
//      the exchange needs);
//   2. dispatch: the sorted rows go to their experts' ranks (all_to_all_rows). A rank receives
//      blocks by source rank, each ordered by expert; one index_select regroups them by expert, so
//      each local expert runs once on a contiguous slice (the composed loop or the grouped GEMM),
//      and the inverse permutation restores the source order;
//   3. combine: the rows go back (the counts reversed) and the same gate-weighted sum as above
//      (combine_routes or moe_combine) gives each token its output, plus the shared experts.
// Routing, sorting, expert compute and combination are the local layer's own code, so the output
// equals one process's layer on the union of the ranks' tokens. Gradients: the exchange is
// differentiable (its backward is the reverse exchange), so an expert's gradient sums the
// contributions of every rank's tokens; the replicated parameters' gradients hold only local tokens
// and need a data-parallel average (dist::DataParallel with the experts as local parameters,
// dist/expert_parallel.hpp). Loads are counted per rank (batch_load, last_load: this rank's tokens,
// every expert); update_bias applies the aux-loss-free rule with the global load, the sum over
// ranks, so every rank moves the same bias. Dense dispatch (generation) needs every expert in one
// process and is refused.
template <class T>
class MoE : public Module<T> {
 public:
  MoEGate<T> gate;
  // The routed experts held here: all of them (experts[i] is expert i) or, expert parallel, this
  // rank's local_experts() (experts[j] is expert first_expert() + j).
  std::vector<std::unique_ptr<SwiGLUMLP<T>>> experts;
  std::unique_ptr<SwiGLUMLP<T>> shared_experts;

  // Every expert's weights are drawn from gen in order whatever the placement (a rank keeps only
  // its own), so one seed gives the same layer with and without expert parallelism.
  MoE(const DeepseekV3Config& c, Generator& gen, std::shared_ptr<ExpertExchange<T>> exchange = nullptr)
      : gate(c, gen), alpha_(c.seq_aux_loss_alpha), exchange_(std::move(exchange)), local_(c.n_routed_experts) {
    if (exchange_) place_experts(c);
    this->register_module("gate", &gate);
    for (std::int64_t i = 0; i < c.n_routed_experts; ++i) {
      auto expert = std::make_unique<SwiGLUMLP<T>>(c.hidden_size, c.moe_intermediate_size, c.initializer_range, gen);
      if (i < first_ || i >= first_ + local_) continue;  // another rank's: drawn only to keep the stream aligned
      experts.push_back(std::move(expert));
      this->register_module("experts." + std::to_string(i), experts.back().get());
    }
    if (c.n_shared_experts > 0) {
      shared_experts = std::make_unique<SwiGLUMLP<T>>(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts,
                                                      c.initializer_range, gen);
      this->register_module("shared_experts", shared_experts.get());
    }
    pack_experts();
  }

  // x [..., S, hidden] (the second-last dim is the sequence for the balance loss; a 2-D x is one
  // sequence) -> the layer output and, when α > 0, the sequence-wise balance loss. With
  // `residual` (x's shape), residual + the output: on the fused path the combine's sum starts from
  // the shared expert's output, the residual added in its down_proj product (no adds); on the
  // composed one added after. Expert parallel: collective (every rank calls it, in the same
  // order, with at least one token).
  MoEOutput<T> forward_full(const Tensor<T>& x, const Tensor<T>& residual = Tensor<T>()) {
    const char* op = "MoE";
    check_defined(op, x);
    const std::int64_t hidden = gate.weight.shape()[1];
    check(x.dim() >= 2 && x.shape().back() == hidden, op, "needs x [..., S, ", hidden, "], got shape ", x.shape());
    const std::int64_t n = x.numel() / hidden, k = gate.top_k(), e = gate.experts();
    check(n > 0, op, "needs at least one token, got shape ", x.shape());
    check(!exchange_ || x.device() == exchange_->device(), op, "x on ", x.device(),
          " for an expert exchange on ", exchange_ ? exchange_->device() : x.device());
    check(!residual.defined() || residual.shape() == x.shape(), op, "residual of shape ",
          residual.defined() ? residual.shape() : Shape{}, " is not x's ", x.shape());
    const Tensor<T> flat = reshape(x, {n, hidden});
    const Tensor<T> residual_flat = residual.defined() ? reshape(residual, {n, hidden}) : Tensor<T>();
    const bool training = autograd::grad_enabled();
    Tensor<T> y;
    Routing<T> r;
    if (use_fused_moe<T>(x.device(), hidden, expert_width())) {
      // Sync-free kernels; training forwards add their counts to the batch load in the layout kernel.
      r = gate.forward_fused(flat);
      const MoeLayout layout =
          moe_layout(r.experts, e, training ? batch_counts_on(x.device()) : Tensor<std::int64_t>());
      const Tensor<T> rows = moe_dispatch(flat, layout);  // [N·K, hidden] sorted by expert
      const Tensor<T> out = exchange_ ? run_spread(rows, layout.counts.to_vector(), true)
                                      : run_grouped(rows, layout.offsets);
      Tensor<T> base = residual_flat;  // where the combine's sum starts
      if (shared_experts)
        base = residual_flat.defined() ? shared_experts->forward_add(flat, residual_flat) : (*shared_experts)(flat);
      y = moe_combine(out, r.gates, layout, base);
      last_counts_ = layout.counts;
    } else {
      // Composed: the routes sorted on the host, each expert once on its contiguous slice.
      r = gate(flat);
      const RouteSort order = sort_routes(r.experts.to_vector(), k, e);
      const auto token_index = Tensor<std::int64_t>::from_vector(order.tokens, {n * k}, x.device());
      const Tensor<T> rows = index_select(flat, 0, token_index);  // [N·K, hidden]
      const Tensor<T> out =
          exchange_ ? run_spread(rows, order.load.counts, false)
                    : run_experts(rows, order.load.counts, [&](std::size_t i) -> SwiGLUMLP<T>& { return *experts[i]; });
      y = combine_routes(out, order.position, r.gates);
      last_counts_ = Tensor<std::int64_t>::from_vector(order.load.counts, {e});  // on the host, where they were counted
      if (training) {
        std::int64_t* batch = batch_counts_on(Device::cpu()).data();
        for (std::size_t i = 0; i < order.load.counts.size(); ++i) batch[i] += order.load.counts[i];
      }
      if (shared_experts) y = add(y, (*shared_experts)(flat));
      if (residual_flat.defined()) y = add(residual_flat, y);
    }
    return finish(x, y, r);
  }
  Tensor<T> forward(const Tensor<T>& x) { return forward_full(x).output; }
  Tensor<T> operator()(const Tensor<T>& x) { return forward(x); }

  // The experts stacked for forward_dense (a copy of the current weights, without a graph).
  DenseExperts<T> stack_experts() const {
    NoGradGuard no_grad;
    const char* op = "MoE::stack_experts";
    check_all_experts_here(op);
    DenseExperts<T> w;
    w.routed = gate.experts();
    w.width = expert_width();
    std::vector<const SwiGLUMLP<T>*> units;
    for (const auto& e : experts) units.push_back(e.get());
    if (shared_experts) {
      const std::int64_t shared_width = shared_experts->gate_proj.out_features;
      check(shared_width % w.width == 0, op, "the shared expert's width ", shared_width,
            " is not a multiple of the routed experts' ", w.width);
      w.shared = shared_width / w.width;
      units.push_back(shared_experts.get());
    }
    std::vector<Tensor<T>> in_rows, up_rows, out_cols;
    for (const SwiGLUMLP<T>* u : units) {
      check(!u->gate_proj.bias.defined() && !u->up_proj.bias.defined() && !u->down_proj.bias.defined(), op,
            "experts with biases are not supported");
      check(u == shared_experts.get() || u->gate_proj.out_features == w.width, op,
            "routed experts of different widths (", u->gate_proj.out_features, " and ", w.width, ")");
      in_rows.push_back(u->gate_proj.weight.detach());
      up_rows.push_back(u->up_proj.weight.detach());
      out_cols.push_back(u->down_proj.weight.detach());
    }
    in_rows.insert(in_rows.end(), up_rows.begin(), up_rows.end());
    w.w_in = cat(in_rows, 0);
    w.w_out = cat(out_cols, 1);
    return w;
  }

  // Sparse dispatch for generation: x [..., hidden] -> forward(x)'s output, the chosen experts
  // only, with no load statistics and no balance loss. On a GPU through the fused kernels (no host
  // read: CUDA graphs capture it; fused_moe_fits_gpu must hold), elsewhere through the path
  // moe_dispatch_path() picks (composed by default). Every routed expert must be here.
  Tensor<T> forward_sparse(const Tensor<T>& x) const {
    const char* op = "MoE::forward_sparse";
    check_defined(op, x);
    check_all_experts_here(op);
    const std::int64_t hidden = gate.weight.shape()[1], width = expert_width();
    check(x.dim() >= 1 && x.shape().back() == hidden, op, "needs x [..., ", hidden, "], got shape ", x.shape());
    const std::int64_t n = x.numel() / hidden, k = gate.top_k(), e = gate.experts();
    const Tensor<T> flat = reshape(x, {n, hidden});
    Tensor<T> y;
    if (x.device().is_cuda() || use_fused_moe<T>(x.device(), hidden, width)) {
      check_sparse_dispatch_runs(op, x.device());
      const Routing<T> r = gate.forward_fused(flat);
      const MoeLayout layout = moe_layout(r.experts, e, Tensor<std::int64_t>());
      // The combine's sum starts from the shared expert's output, as in forward_full.
      y = moe_combine(run_grouped(moe_dispatch(flat, layout), layout.offsets), r.gates, layout,
                      shared_experts ? (*shared_experts)(flat) : Tensor<T>());
    } else {
      const Routing<T> r = gate(flat);
      const RouteSort order = sort_routes(r.experts.to_vector(), k, e);
      const auto token_index = Tensor<std::int64_t>::from_vector(order.tokens, {n * k}, x.device());
      const Tensor<T> out = run_experts(index_select(flat, 0, token_index), order.load.counts,
                                        [&](std::size_t i) -> const SwiGLUMLP<T>& { return *experts[i]; });
      y = combine_routes(out, order.position, r.gates);
      if (shared_experts) y = add(y, (*shared_experts)(flat));
    }
    return reshape(y, x.shape());
  }

  // What generation runs for `asked` (GenerationDispatch's rule) on `device`: dense or sparse.
  // Sparse: every routed expert must be here (checked now, before any prompt is run).
  GenerationDispatch generation_dispatch(GenerationDispatch asked, Device device) const {
    const char* op = "MoE::generation_dispatch";
    GenerationDispatch chosen = asked;
    if (asked == GenerationDispatch::automatic)
      chosen = sparse_dispatch_runs_on(device) && gate.experts() >= 8 * gate.top_k() ? GenerationDispatch::sparse
                                                                                      : GenerationDispatch::dense;
    if (chosen == GenerationDispatch::sparse) {
      check_sparse_dispatch_runs(op, device);
      check_all_experts_here(op);
    }
    return chosen;
  }

  // Whether forward_sparse runs on `device`: anywhere on the CPU; on a GPU through the fused
  // kernels, which take one expert width and no biases, with sizes that fit their vector loads.
  bool sparse_dispatch_runs_on(Device device) const {
    return !device.is_cuda() || (fused_moe_fits_gpu<T>(gate.weight.shape()[1], expert_width()) && uniform_experts());
  }
  void check_sparse_dispatch_runs(const char* op, Device device) const {
    check(sparse_dispatch_runs_on(device), op, "sparse dispatch on a GPU takes bf16 or fp16 layers with hidden size "
          "and expert width multiples of 8 and routed experts of one width without biases, got ", dtype_of<T>,
          ", hidden ", gate.weight.shape()[1], ", width ", expert_width());
  }

  // Dense dispatch: x [..., hidden] -> forward(x) up to summation order, from the experts stacked
  // by stack_experts(). Every expert runs on every token, weighted by the dense gates (zero off the
  // chosen experts); no index op, no host read, load statistics untouched. With `residual` (x's
  // shape) the result is residual + forward(x), the residual added in the last product.
  Tensor<T> forward_dense(const Tensor<T>& x, const DenseExperts<T>& w, const Tensor<T>& residual = Tensor<T>()) const {
    const char* op = "MoE::forward_dense";
    check_defined(op, x);
    check_all_experts_here(op);
    const std::int64_t hidden = gate.weight.shape()[1];
    check(x.dim() >= 1 && x.shape().back() == hidden, op, "needs x [..., ", hidden, "], got shape ", x.shape());
    // This layer's units: its routed experts and its shared expert's width-I chunks.
    const std::int64_t width = expert_width();
    const std::int64_t shared = shared_experts ? shared_experts->gate_proj.out_features / width : 0;
    const std::int64_t units = gate.experts() + shared;
    check(w.defined() && w.routed == gate.experts() && w.shared == shared && w.width == width &&
              w.w_in.shape() == Shape{2 * units * width, hidden} && w.w_out.shape() == Shape{hidden, units * width},
          op, "stacked experts (", w.routed, " routed + ", w.shared, " shared units of width ", w.width,
          ") do not fit this layer (", gate.experts(), " + ", shared, " of width ", width,
          "): make them with its stack_experts()");
    const std::int64_t n = x.numel() / hidden;
    const Tensor<T> flat = reshape(x, {n, hidden});
    const Tensor<T> gates = gate.dense_gates(flat, units);  // [N, U], the shared units' gates 1
    const Tensor<T> gu = linear(flat, w.w_in);                      // [N, 2·U·I]
    const Tensor<T> a = swiglu(narrow(gu, 1, 0, units * width), narrow(gu, 1, units * width, units * width));
    const Tensor<T> weighted = reshape(mul(reshape(a, {n, units, width}), unsqueeze(gates, 2)), {n, units * width});
    if (!residual.defined()) return reshape(linear(weighted, w.w_out), x.shape());
    check(residual.shape() == x.shape(), op, "residual of shape ", residual.shape(), " must have x's shape ", x.shape());
    return reshape(matmul_add(weighted, transpose(w.w_out, 0, 1), reshape(residual, {n, hidden})), x.shape());
  }

  // Routes per expert accumulated over the forwards run with gradients enabled (training) since
  // the last update_bias / reset_load: the whole batch's load, gradient accumulation included.
  // Forwards under NoGradGuard (evaluation, generation) are not counted here. The counts live on
  // the device of the forwards; reading them here waits for it. Expert parallel: this rank's
  // tokens (update_bias sums the ranks).
  ExpertLoad batch_load() const { return read_load(batch_counts_); }
  // Routes per expert of the most recent forward, whatever the grad mode.
  ExpertLoad last_load() const { return read_load(last_counts_); }
  void reset_load() { batch_counts_ = Tensor<std::int64_t>(); }

  // The aux-loss-free rule with the batch load, then starts a new batch. On the counts' device:
  // a GPU layer updates its bias with one kernel and reads nothing back. Expert parallel: with the
  // global load (the sum over ranks, read through the host; collective), the same bias everywhere.
  void update_bias(double gamma) {
    const Tensor<T>& bias = gate.e_score_correction_bias;
    if (exchange_) {
      ExpertLoad global = batch_load();
      global.counts = exchange_->sum(global.counts);
      update_routing_bias(bias, global, gamma);
    } else if (batch_counts_.defined() && batch_counts_.device() == bias.device()) {
      moe_balance_update(bias, batch_counts_, gamma);
    } else if (batch_counts_.defined()) {
      update_routing_bias(bias, batch_load(), gamma);
    }
    reset_load();
  }

  double seq_aux_loss_alpha() const { return alpha_; }
  void set_seq_aux_loss_alpha(double alpha) { alpha_ = alpha; }

  // The placement: experts first_expert() .. first_expert() + local_experts() − 1 are held here
  // (all of them without an exchange).
  std::int64_t first_expert() const { return first_; }
  std::int64_t local_experts() const { return local_; }
  const std::shared_ptr<ExpertExchange<T>>& exchange() const { return exchange_; }

  // The routed experts' parameters held here (expert parallel: pass them to data parallelism as
  // local parameters), and the rest: the router and the shared experts, which every rank holds.
  std::vector<Tensor<T>> expert_parameters() const {
    std::vector<Tensor<T>> out;
    for (const auto& ex : experts)
      for (const auto& p : ex->parameters()) out.push_back(p);
    return out;
  }
  std::vector<Tensor<T>> replicated_parameters() const {
    std::vector<Tensor<T>> out = gate.parameters();
    if (shared_experts)
      for (const auto& p : shared_experts->parameters()) out.push_back(p);
    return out;
  }

 private:
  std::int64_t expert_width() const { return experts.front()->gate_proj.out_features; }

  // Expert parallel construction: every rank must build the same layer (a mismatch would derail
  // the all-to-alls), and the experts must split evenly.
  void place_experts(const DeepseekV3Config& c) {
    const char* op = "MoE";
    const int world = exchange_->ranks();
    const std::vector<std::int64_t> mine{c.n_routed_experts, c.hidden_size, c.moe_intermediate_size,
                                         c.num_experts_per_tok, c.n_shared_experts};
    const std::vector<std::int64_t> all = exchange_->all_gather(mine);
    const std::size_t m = mine.size();
    for (std::size_t r = 1; r < static_cast<std::size_t>(world); ++r)
      for (std::size_t k = 0; k < m; ++k)
        if (all[r * m + k] != all[k])
          fail(op, "expert parallel ranks disagree on the layer (n_routed_experts, hidden_size, "
                   "moe_intermediate_size, num_experts_per_tok, n_shared_experts): rank 0 has ",
               std::vector<std::int64_t>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(m)), ", rank ", r,
               " has ",
               std::vector<std::int64_t>(all.begin() + static_cast<std::ptrdiff_t>(r * m),
                                         all.begin() + static_cast<std::ptrdiff_t>((r + 1) * m)));
    check(c.n_routed_experts % world == 0, op, "n_routed_experts = ", c.n_routed_experts,
          " must be a multiple of the ", world, " expert parallel ranks");
    local_ = c.n_routed_experts / world;
    first_ = exchange_->rank() * local_;
  }

  void check_all_experts_here(const char* op) const {
    check(!exchange_, op, "generation (dense or sparse dispatch) needs every routed expert in this process; this "
          "layer holds experts ", first_, "..", first_ + local_ - 1, " of ", gate.experts(), " (expert parallel)");
  }

  // Whether the routed experts held here have one width and no biases (what the grouped GEMMs and
  // pack_experts take).
  bool uniform_experts() const {
    const std::int64_t width = expert_width();
    for (const auto& ex : experts)
      if (ex->gate_proj.out_features != width || ex->gate_proj.bias.defined() || ex->up_proj.bias.defined() ||
          ex->down_proj.bias.defined())
        return false;
    return true;
  }

  // Lays the routed experts' weights out as the grouped GEMMs read them, in two allocations:
  // [L][gate_proj | up_proj][I][hidden] and [L][hidden][I]; each expert's weights become views of
  // them (leaves, as before). The fused path then hands the grouped GEMMs views of these blocks
  // (concat_as) instead of copying every expert's weights in each forward and splitting their
  // gradients in each backward — at DeepSeek-V3's 256 experts that copy would be every expert of
  // the layer, twice a step. Run at construction and after to() (which moves each tensor
  // separately); checkpoint loading copies into the tensors in place and keeps the layout. A layer
  // whose experts differ in width or have biases is left as it is (its fused path refuses it).
  void pack_experts() {
    if (experts.empty() || !uniform_experts() || packed()) return;  // packed: nothing to move, no tensor replaced
    const std::int64_t L = static_cast<std::int64_t>(experts.size()), width = expert_width();
    const std::int64_t hidden = experts.front()->gate_proj.in_features;
    const Device device = experts.front()->gate_proj.weight.device();
    const Tensor<T> in_block({L, 2, width, hidden}, device), out_block({L, hidden, width}, device);
    const std::int64_t piece = width * hidden;
    auto place = [](Tensor<T>& weight, const Tensor<T>& block, std::int64_t offset, const Shape& shape) {
      const Tensor<T> src = contiguous(weight.detach());
      copy_bytes(block.data() + offset, block.device(), src.data(), src.device(),
                 static_cast<std::size_t>(src.numel()) * sizeof(T));
      weight = Tensor<T>::view_of(block.storage(), block.offset() + offset, shape, contiguous_strides(shape));
      weight.requires_grad_();
    };
    for (std::int64_t j = 0; j < L; ++j) {
      SwiGLUMLP<T>& ex = *experts[static_cast<std::size_t>(j)];
      place(ex.gate_proj.weight, in_block, 2 * j * piece, {width, hidden});
      place(ex.up_proj.weight, in_block, (2 * j + 1) * piece, {width, hidden});
      place(ex.down_proj.weight, out_block, j * piece, {hidden, width});
    }
  }

  void after_move() override { pack_experts(); }

  // The experts' weights in pack_experts' layout, gate and up rows in one block, down in another.
  bool packed() const {
    std::vector<Tensor<T>> in, out;
    for (const auto& ex : experts) {
      in.push_back(ex->gate_proj.weight);
      in.push_back(ex->up_proj.weight);
      out.push_back(ex->down_proj.weight);
    }
    return lie_back_to_back(in) && lie_back_to_back(out);
  }

  // The local experts on rows sorted by expert (local expert j: rows offsets[j] .. offsets[j+1] − 1,
  // offsets [L + 1] on the rows' device) through the grouped GEMMs: gate_proj|up_proj rows stacked
  // [L, 2I, hidden], SwiGLU, down_proj stacked [L, hidden, I] (views of pack_experts' blocks).
  Tensor<T> run_grouped(const Tensor<T>& rows, const Tensor<std::int64_t>& offsets) const {
    const char* op = "MoE";
    const std::int64_t width = expert_width(), hidden = rows.shape()[1];
    check(uniform_experts(), op, "fused dispatch needs routed experts of one width without biases");
    std::vector<Tensor<T>> in_rows, out_weights;
    for (const auto& ex : experts) {
      in_rows.push_back(ex->gate_proj.weight);
      in_rows.push_back(ex->up_proj.weight);
      out_weights.push_back(ex->down_proj.weight);
    }
    const std::int64_t groups = static_cast<std::int64_t>(experts.size());
    const Tensor<T> w_in = concat_as(in_rows, {groups, 2 * width, hidden});  // expert j: gate rows, then up rows
    const Tensor<T> w_out = concat_as(out_weights, {groups, hidden, width});
    // FP8 mode (nn/fp8_training.hpp) is the experts' linears' own, all of them or none.
    const std::optional<Fp8LinearOptions> fp8 = experts.front()->gate_proj.fp8;
    for (const auto& ex : experts)
      check(ex->gate_proj.fp8.has_value() == fp8.has_value() && ex->up_proj.fp8.has_value() == fp8.has_value() &&
                ex->down_proj.fp8.has_value() == fp8.has_value(),
            op, "fused dispatch needs the routed experts' linears all in FP8 mode or none");
    if (!fp8 && moe_swiglu_epilogue()) return grouped_swiglu_mlp(rows, w_in, w_out, offsets);
    auto product = [&](const Tensor<T>& x, const Tensor<T>& w) {
      if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {
        if (fp8) return grouped_fp8_linear(x, w, offsets, *fp8);
      }
      return grouped_linear(x, w, offsets);
    };
    const Tensor<T> gu = product(rows, w_in);  // [rows, 2I]
    const Tensor<T> a = swiglu(narrow(gu, 1, 0, width), narrow(gu, 1, width, width));
    return product(a, w_out);  // [rows, hidden]
  }

  // Expert parallel: rows [N·K, hidden] sorted by expert with counts[i] rows for global expert i
  // -> the expert outputs in the same order, computed on the experts' ranks (the header's steps 1-3).
  Tensor<T> run_spread(const Tensor<T>& rows, const std::vector<std::int64_t>& counts, bool grouped) {
    const auto world = static_cast<std::size_t>(exchange_->ranks());
    const auto L = static_cast<std::size_t>(local_);
    // Counts first: from[s·L + j] = rows rank s sends to local expert j.
    const std::vector<std::int64_t> from = exchange_->all_to_all(counts);
    std::vector<std::int64_t> send(world, 0), recv(world, 0), expert_rows(L, 0);
    for (std::size_t q = 0; q < world; ++q)
      for (std::size_t j = 0; j < L; ++j) {
        send[q] += counts[q * L + j];
        recv[q] += from[q * L + j];
        expert_rows[j] += from[q * L + j];
      }
    const Tensor<T> received = exchange_->all_to_all_rows(rows, send, recv);  // by source rank, then expert
    // No rows: the composed loop has nothing to run (computed stays the empty received rows, which
    // keeps the graph connected); the grouped GEMMs still run, so the experts' gradients are
    // zeros as in one process's fused path.
    Tensor<T> computed = received;
    if (grouped || received.shape()[0] > 0) {
      // Regroup by local expert, run, restore the source order. by_expert[p]: the received row at
      // expert-major position p (identity with one rank or one local expert).
      std::vector<std::int64_t> block(world * L + 1, 0);  // start of block (s, j) in received
      for (std::size_t b = 0; b < world * L; ++b) block[b + 1] = block[b] + from[b];
      std::vector<std::int64_t> by_expert, back(static_cast<std::size_t>(received.shape()[0]));
      for (std::size_t j = 0; j < L; ++j)
        for (std::size_t q = 0; q < world; ++q)
          for (std::int64_t i = 0; i < from[q * L + j]; ++i) by_expert.push_back(block[q * L + j] + i);
      bool identity = true;
      for (std::size_t p = 0; p < by_expert.size(); ++p) {
        back[static_cast<std::size_t>(by_expert[p])] = static_cast<std::int64_t>(p);
        identity = identity && by_expert[p] == static_cast<std::int64_t>(p);
      }
      const auto total = static_cast<std::int64_t>(by_expert.size());
      const Device device = received.device();
      const Tensor<T> sorted =
          identity ? received
                   : index_select(received, 0, Tensor<std::int64_t>::from_vector(by_expert, {total}, device));
      Tensor<T> out;
      if (grouped) {
        std::vector<std::int64_t> offsets(L + 1, 0);
        for (std::size_t j = 0; j < L; ++j) offsets[j + 1] = offsets[j] + expert_rows[j];
        out = run_grouped(sorted, Tensor<std::int64_t>::from_vector(offsets, {static_cast<std::int64_t>(L) + 1}, device));
      } else {
        out = run_experts(sorted, expert_rows, [&](std::size_t j) -> SwiGLUMLP<T>& { return *experts[j]; });
      }
      computed = identity ? out : index_select(out, 0, Tensor<std::int64_t>::from_vector(back, {total}, device));
    }
    return exchange_->all_to_all_rows(computed, recv, send);  // [N·K, hidden], back in sorted order
  }

  // The output in x's shape, and the balance loss when α > 0.
  MoEOutput<T> finish(const Tensor<T>& x, const Tensor<T>& y, const Routing<T>& r) const {
    MoEOutput<T> out{reshape(y, x.shape()), Tensor<T>()};
    if (alpha_ != 0.0) {
      const std::int64_t n = r.experts.shape()[0], k = gate.top_k(), e = gate.experts();
      const std::int64_t s = x.shape()[x.shape().size() - 2];
      const std::int64_t b = n / s;
      out.balance_loss = sequence_balance_loss(reshape(r.scores, {b, s, e}), reshape(r.experts, {b, s, k}), alpha_);
    }
    return out;
  }

  // The batch counts on `device`: zeros at a batch's start, carried over (through the host) when
  // the batch so far was counted elsewhere (the composed path counts on the host, the fused one on
  // the layer's device).
  const Tensor<std::int64_t>& batch_counts_on(Device device) {
    if (!batch_counts_.defined())
      batch_counts_ = zeros<std::int64_t>({gate.experts()}, device);
    else if (batch_counts_.device() != device)
      batch_counts_ = Tensor<std::int64_t>::from_vector(batch_load().counts, {gate.experts()}, device);
    return batch_counts_;
  }

  ExpertLoad read_load(const Tensor<std::int64_t>& counts) const {
    ExpertLoad load(gate.experts());
    if (counts.defined()) load.counts = counts.to_vector();
    return load;
  }

  double alpha_;
  std::shared_ptr<ExpertExchange<T>> exchange_;  // null: every expert here
  std::int64_t first_ = 0, local_;
  Tensor<std::int64_t> batch_counts_, last_counts_;  // [E]: on the layer's device (fused) or the host (composed)
};

}  // namespace kiln::nn
