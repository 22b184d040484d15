// Expert parallel MoE: the routed experts of a DeepSeek-V3 MoE layer (nn/moe.hpp) spread over the
// ranks of a communicator — rank r holds experts r·L .. r·L + L − 1 (L = n_routed_experts / W) —
// while the router and the shared experts are replicated. Each rank routes its own tokens; the
// tokens travel to the ranks of their experts and the results come back:
//
//   1. route locally with the MoE's gate, and sort the N·K routes by expert (nn::sort_routes), so
//      the routes for each rank's experts form one contiguous block, ordered by expert;
//   2. counts first: an all-to-all of the per-expert counts (L values per pair of ranks) tells each
//      rank how many rows it receives from every rank, for every one of its experts;
//   3. dispatch: all_to_all_v of the sorted token rows. Rank r receives blocks by source rank, each
//      ordered by expert; one index_select regroups them by expert, so each local expert runs once
//      on a contiguous slice (nn::run_experts), and the inverse permutation restores source order;
//   4. combine: all_to_all_v back (the counts reversed), then the same gate-weighted sum as MoE
//      (nn::combine_routes), plus the shared experts.
// Routing, sorting, expert compute and combination are MoE's own code, so the output equals the
// single-process MoE on the union of the ranks' tokens.
//
// Gradients: all_to_all_v is differentiable (its backward is the reverse all-to-all), so backward
// sends each token's expert-output gradient to the expert's rank and the input gradient home. The
// graph of every rank holds both all-to-alls of every layer, even a rank that receives no rows, so
// every rank joins every backward collective. An expert's gradient sums the contributions of every
// rank's tokens; the replicated parameters' gradients hold only local tokens and need a data
// parallel average (dist/data_parallel.hpp: the experts go in as local parameters, divided by W).
//
// Balancing: loads are counted per rank (batch_load, last_load: the local tokens); update_bias
// applies the aux-loss-free rule with the global load, the all-reduce of the ranks' counts, so
// every rank moves the same bias (collective: every rank calls it).
//
// Parameter names are the MoE's: gate.weight, gate.e_score_correction_bias, experts.<global id>.*
// (only this rank's), shared_experts.*. The constructor draws every expert's weights in MoE's
// order and keeps its own, so the same Generator seed gives the same model as nn::MoE.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/dist/collectives.hpp"
#include "kiln/dist/communicator.hpp"
#include "kiln/dist/expert_load.hpp"
#include "kiln/nn/moe.hpp"

namespace kiln::dist {

template <class T>
class ExpertParallelMoE : public nn::Module<T> {
 public:
  nn::MoEGate<T> gate;
  std::vector<std::unique_ptr<nn::SwiGLUMLP<T>>> experts;  // local expert j = global first_expert() + j
  std::unique_ptr<nn::SwiGLUMLP<T>> shared_experts;

  ExpertParallelMoE(const nn::DeepseekV3Config& c, Generator& gen, std::shared_ptr<Communicator> comm)
      : gate(c, gen), comm_(std::move(comm)), alpha_(c.seq_aux_loss_alpha), batch_load_(c.n_routed_experts),
        last_load_(c.n_routed_experts) {
    const char* op = "dist::ExpertParallelMoE";
    check(comm_ != nullptr, op, "needs a communicator");
    const std::int64_t world = comm_->size();
    // Every rank must build the same layer: a mismatch would derail the all-to-alls.
    const std::vector<std::int64_t> mine{c.n_routed_experts, c.hidden_size, c.moe_intermediate_size,
                                         c.num_experts_per_tok, c.n_shared_experts};
    const std::vector<std::int64_t> all = comm_->all_gather_host(mine);
    for (int r = 1; r < world; ++r)
      for (std::size_t k = 0; k < mine.size(); ++k)
        if (all[r * mine.size() + k] != all[k])
          fail(op, "ranks disagree on the layer (n_routed_experts, hidden_size, moe_intermediate_size, "
                   "num_experts_per_tok, n_shared_experts): rank 0 has ",
               std::vector<std::int64_t>(all.begin(), all.begin() + 5), ", rank ", r, " has ",
               std::vector<std::int64_t>(all.begin() + r * 5, all.begin() + r * 5 + 5));
    check(c.n_routed_experts % world == 0, op, "n_routed_experts = ", c.n_routed_experts,
          " must be a multiple of the ", world, " ranks");
    local_ = c.n_routed_experts / world;
    first_ = comm_->rank() * local_;
    this->register_module("gate", &gate);
    for (std::int64_t i = 0; i < c.n_routed_experts; ++i) {
      auto expert = std::make_unique<nn::SwiGLUMLP<T>>(c.hidden_size, c.moe_intermediate_size, c.initializer_range, gen);
      if (i < first_ || i >= first_ + local_) continue;  // another rank's: drawn only to keep the stream aligned
      experts.push_back(std::move(expert));
      this->register_module("experts." + std::to_string(i), experts.back().get());
    }
    if (c.n_shared_experts > 0) {
      shared_experts = std::make_unique<nn::SwiGLUMLP<T>>(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts,
                                                          c.initializer_range, gen);
      this->register_module("shared_experts", shared_experts.get());
    }
  }

  // x [..., S, hidden] (this rank's tokens) -> the layer output and, when α > 0, the sequence-wise
  // balance loss of this rank's sequences. Collective: every rank calls it, in the same order.
  nn::MoEOutput<T> forward_full(const Tensor<T>& x) {
    const char* op = "dist::ExpertParallelMoE";
    check_defined(op, x);
    const std::int64_t hidden = gate.weight.shape()[1];
    check(x.dim() >= 2 && x.shape().back() == hidden, op, "needs x [..., S, ", hidden, "], got shape ", x.shape());
    const std::int64_t n = x.numel() / hidden, k = gate.top_k(), e = gate.experts();
    check(n > 0, op, "needs at least one token, got shape ", x.shape());
    check(x.device() == comm_->device(), op, "x on ", x.device(), " for a ", comm_->engine(), " communicator on ",
          comm_->device());
    const Tensor<T> flat = reshape(x, {n, hidden});
    const nn::Routing<T> r = gate(flat);
    const nn::RouteSort order = nn::sort_routes(r.experts.to_vector(), k, e);
    const auto world = static_cast<std::size_t>(comm_->size());
    const auto L = static_cast<std::size_t>(local_);

    // Counts first: from[s·L + j] = rows rank s sends to local expert j.
    const std::vector<std::int64_t> from = comm_->all_to_all_host(order.load.counts);
    std::vector<std::int64_t> send_rows(world, 0), recv_rows(world, 0), expert_rows(L, 0);
    for (std::size_t q = 0; q < world; ++q)
      for (std::size_t j = 0; j < L; ++j) {
        send_rows[q] += order.load.counts[q * L + j];
        recv_rows[q] += from[q * L + j];
        expert_rows[j] += from[q * L + j];
      }

    // Dispatch.
    const auto token_index = Tensor<std::int64_t>::from_vector(order.tokens, {n * k}, x.device());
    const Tensor<T> sorted = index_select(flat, 0, token_index);  // [N·K, hidden], by expert
    const Tensor<T> received = all_to_all_v(*comm_, sorted, send_rows, recv_rows);

    // Regroup by local expert (received is by source rank, then expert), run, and restore.
    Tensor<T> out_by_source = received;
    if (received.shape()[0] > 0) {
      std::vector<std::int64_t> by_expert;  // expert-major position -> received row
      std::vector<std::int64_t> block(world * L + 1, 0);  // start of block (s, j) in received
      for (std::size_t q = 0; q < world; ++q)
        for (std::size_t j = 0; j < L; ++j) block[q * L + j + 1] = block[q * L + j] + from[q * L + j];
      for (std::size_t j = 0; j < L; ++j)
        for (std::size_t q = 0; q < world; ++q)
          for (std::int64_t i = 0; i < from[q * L + j]; ++i) by_expert.push_back(block[q * L + j] + i);
      std::vector<std::int64_t> back(by_expert.size());
      for (std::size_t p = 0; p < by_expert.size(); ++p)
        back[static_cast<std::size_t>(by_expert[p])] = static_cast<std::int64_t>(p);
      const auto rows = static_cast<std::int64_t>(by_expert.size());
      const Tensor<T> grouped =
          index_select(received, 0, Tensor<std::int64_t>::from_vector(by_expert, {rows}, x.device()));
      const Tensor<T> computed =
          nn::run_experts(grouped, expert_rows, [&](std::size_t j) -> nn::SwiGLUMLP<T>& { return *experts[j]; });
      out_by_source = index_select(computed, 0, Tensor<std::int64_t>::from_vector(back, {rows}, x.device()));
    }

    // Combine.
    const Tensor<T> returned = all_to_all_v(*comm_, out_by_source, recv_rows, send_rows);  // [N·K, hidden]
    Tensor<T> y = nn::combine_routes(returned, order.position, r.gates);
    if (shared_experts) y = add(y, (*shared_experts)(flat));

    last_load_ = order.load;
    if (autograd::grad_enabled()) batch_load_.add(order.load);

    nn::MoEOutput<T> out{reshape(y, x.shape()), Tensor<T>()};
    if (alpha_ != 0.0) {
      const std::int64_t s = x.shape()[x.shape().size() - 2];
      out.balance_loss = nn::sequence_balance_loss(reshape(r.scores, {n / s, s, e}), reshape(r.experts, {n / s, s, k}),
                                                   alpha_);
    }
    return out;
  }
  Tensor<T> forward(const Tensor<T>& x) { return forward_full(x).output; }
  Tensor<T> operator()(const Tensor<T>& x) { return forward(x); }

  // This rank's routes per expert (all experts, local tokens), as nn::MoE counts them.
  const nn::ExpertLoad& batch_load() const { return batch_load_; }
  const nn::ExpertLoad& last_load() const { return last_load_; }
  void reset_load() { batch_load_.reset(); }

  // The aux-loss-free rule with the global batch load (all ranks' counts), then a new batch.
  // Collective. Returns the global load.
  nn::ExpertLoad update_bias(double gamma) {
    nn::ExpertLoad global = global_load(*comm_, batch_load_);
    nn::update_routing_bias(gate.e_score_correction_bias, global, gamma);
    batch_load_.reset();
    return global;
  }

  std::int64_t first_expert() const { return first_; }
  std::int64_t local_experts() const { return local_; }
  const std::shared_ptr<Communicator>& communicator() const { return comm_; }

  // The parameters every rank holds a copy of (router, shared experts): average them with data
  // parallelism. And this rank's experts' parameters (pass them as DataParallel's local_params).
  std::vector<Tensor<T>> replicated_parameters() const {
    std::vector<Tensor<T>> out = gate.parameters();
    if (shared_experts)
      for (const auto& p : shared_experts->parameters()) out.push_back(p);
    return out;
  }
  std::vector<Tensor<T>> expert_parameters() const {
    std::vector<Tensor<T>> out;
    for (const auto& ex : experts)
      for (const auto& p : ex->parameters()) out.push_back(p);
    return out;
  }

  double seq_aux_loss_alpha() const { return alpha_; }
  void set_seq_aux_loss_alpha(double alpha) { alpha_ = alpha; }

 private:
  std::shared_ptr<Communicator> comm_;
  double alpha_;
  nn::ExpertLoad batch_load_, last_load_;
  std::int64_t local_ = 0, first_ = 0;
};

}  // namespace kiln::dist
