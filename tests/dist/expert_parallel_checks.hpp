// Expert parallel MoE checks, shared by the MPI (CPU) and NCCL (GPU) tests: nn::MoE built with an
// exchange over the ranks (its experts spread over them) against nn::MoE in one process on the
// union of the ranks' tokens (same seed, so the same weights): outputs, input gradients, expert and
// router gradients, the balance loss, the loads and the aux-loss-free bias update (global load),
// through either dispatch path; and a whole DeepseekV3ForCausalLM built expert parallel (MTP block
// included) against the one-process model: loss, every gradient, the balance update.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <kiln/dist/data_parallel.hpp>
#include <kiln/dist/expert_load.hpp>
#include <kiln/dist/expert_parallel.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/moe.hpp>
#include <kiln/optim/clip.hpp>

#include "dist_test.hpp"

namespace kiln::dist_test {

// 4 experts per rank in groups of 2, top-2 of the best 2 groups: tokens cross ranks.
inline nn::DeepseekV3Config ep_config(int world) {
  nn::DeepseekV3Config c;
  c.hidden_size = 6;
  c.moe_intermediate_size = 5;
  c.n_routed_experts = 4 * world;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 2 * world;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  c.initializer_range = 0.5;
  c.seq_aux_loss_alpha = 0.01;
  return c;
}

enum class EpVariant {
  plain,          // gradients compared directly (replicated ones summed over ranks by hand)
  data_parallel,  // replicated parameters averaged by DataParallel, experts as its local parameters
  all_to_rank0,   // every token chooses rank 0's experts: the other ranks receive no rows
};

template <class T>
void check_expert_parallel(const std::shared_ptr<dist::Communicator>& comm, Device dev, double tol, EpVariant variant,
                           nn::MoEDispatch path = nn::MoEDispatch::composed) {
  const nn::MoEDispatchScope dispatch(path);
  const int W = comm->size(), r = comm->rank();
  const nn::DeepseekV3Config c = ep_config(W);
  Generator g1{21, 0}, g2{21, 0};
  nn::MoE<T> moe(c, g1);
  nn::MoE<T> ep(c, g2, dist::expert_exchange<T>(comm));
  moe.to(dev);
  ep.to(dev);
  ASSERT_EQ(ep.local_experts(), 4);
  if (variant == EpVariant::all_to_rank0) {
    std::vector<T> bias(static_cast<std::size_t>(c.n_routed_experts), convert<T>(0.0));
    for (std::size_t i = 0; i < 4; ++i) bias[i] = convert<T>(10.0);
    moe.gate.e_score_correction_bias = Tensor<T>::from_vector(bias, {c.n_routed_experts}, dev);
    ep.gate.e_score_correction_bias = Tensor<T>::from_vector(bias, {c.n_routed_experts}, dev);
  }
  const Tensor<T> bias0 = clone(ep.gate.e_score_correction_bias);
  std::unique_ptr<dist::DataParallel<T>> dp;
  if (variant == EpVariant::data_parallel)
    dp = std::make_unique<dist::DataParallel<T>>(comm, ep.replicated_parameters(), dist::DataParallelOptions{},
                                                 ep.expert_parameters());

  const std::int64_t B = 2 * W, S = 5, H = c.hidden_size, rows = B / W;
  Generator data{31, 0};
  const Tensor<T> x_all = randn<T>({B, S, H}, 0.0, 1.0, Device::cpu(), data);
  const Tensor<T> w_all = randn<T>({B, S, H}, 0.0, 1.0, Device::cpu(), data);

  // One process, every token: L = Σ y ⊙ w + balance loss (mean over all sequences).
  Tensor<T> x1 = to(x_all, dev);
  x1.requires_grad_();
  const nn::MoEOutput<T> o1 = moe.forward_full(x1);
  add(sum(mul(o1.output, to(w_all, dev))), o1.balance_loss).backward();

  // Expert parallel, this rank's sequences: Σ_r L_r = L with L_r = Σ y_r ⊙ w_r + balance_r / W.
  Tensor<T> x2 = to(narrow(x_all, 0, r * rows, rows), dev).detach();
  x2.requires_grad_();
  const nn::MoEOutput<T> o2 = ep.forward_full(x2);
  const Tensor<T> loss = add(sum(mul(o2.output, to(narrow(w_all, 0, r * rows, rows), dev))),
                             mul(o2.balance_loss, 1.0 / W));
  if (dp) {
    dp->backward(loss);
    dp->finish();
  } else {
    loss.backward();
  }
  // With DataParallel every gradient is the mean over ranks: the one-process gradient / W.
  const double scale = dp ? 1.0 / W : 1.0;

  EXPECT_LE(kiln::testing::relative_error(o2.output, narrow(o1.output.detach(), 0, r * rows, rows)), tol) << "output";
  EXPECT_LE(kiln::testing::relative_error(x2.grad(), narrow(x1.grad(), 0, r * rows, rows)), tol) << "input gradient";
  Tensor<T> balance = clone(mul(o2.balance_loss.detach(), 1.0 / W));
  dist::all_reduce(*comm, balance);
  EXPECT_LE(kiln::testing::relative_error(balance, o1.balance_loss.detach()), tol) << "balance loss";

  // Expert gradients: the owner's equal the one-process ones (every rank's tokens contributed).
  for (std::int64_t j = 0; j < ep.local_experts(); ++j) {
    const auto mine = ep.experts[static_cast<std::size_t>(j)]->parameters();
    const auto ref = moe.experts[static_cast<std::size_t>(ep.first_expert() + j)]->parameters();
    for (std::size_t p = 0; p < mine.size(); ++p) {
      EXPECT_EQ(mine[p].grad().defined(), ref[p].grad().defined()) << "expert " << ep.first_expert() + j;
      if (mine[p].grad().defined() && ref[p].grad().defined()) {
        EXPECT_LE(kiln::testing::relative_error(mine[p].grad(), mul(ref[p].grad(), scale)), tol)
            << "expert " << ep.first_expert() + j << " parameter " << p;
      }
    }
  }
  // Router and shared experts: their gradients hold local tokens only; summed over ranks (by
  // hand, or averaged by DataParallel) they are the one-process ones.
  const auto mine = ep.replicated_parameters();
  std::vector<Tensor<T>> ref = moe.gate.parameters();
  for (const auto& p : moe.shared_experts->parameters()) ref.push_back(p);
  ASSERT_EQ(mine.size(), ref.size());
  for (std::size_t p = 0; p < mine.size(); ++p) {
    Tensor<T> g = clone(mine[p].grad());
    if (!dp) dist::all_reduce(*comm, g);
    EXPECT_LE(kiln::testing::relative_error(g, mul(ref[p].grad(), scale)), tol) << "replicated parameter " << p;
  }

  // Loads: the ranks' local counts add up to the one-process counts; tokens crossed ranks (or,
  // when all go to rank 0, no other rank's expert got any).
  std::vector<std::int64_t> local = ep.last_load().counts;
  std::int64_t elsewhere = 0;
  for (std::size_t e = 0; e < local.size(); ++e)
    if (static_cast<std::int64_t>(e) / ep.local_experts() != r) elsewhere += local[e];
  if (variant == EpVariant::all_to_rank0)
    EXPECT_EQ(elsewhere, r == 0 ? 0 : static_cast<std::int64_t>(S * rows * c.num_experts_per_tok));
  else
    EXPECT_GT(elsewhere, 0) << "no token of this rank went to another rank's experts";
  const nn::ExpertLoad local_batch = ep.batch_load();
  comm->all_reduce_host(local.data(), static_cast<std::int64_t>(local.size()), dist::ReduceOp::sum);
  EXPECT_EQ(local, moe.last_load().counts);

  // The bias rule with the global load gives the one-process bias; the local load would not.
  const nn::ExpertLoad global = dist::global_load(*comm, ep.batch_load());
  ep.update_bias(0.01);
  moe.update_bias(0.01);
  EXPECT_EQ(global.counts, moe.last_load().counts);
  EXPECT_EQ(ep.gate.e_score_correction_bias.to_vector(), moe.gate.e_score_correction_bias.to_vector());
  EXPECT_TRUE(same_on_all_ranks(*comm, ep.gate.e_score_correction_bias));
  const Tensor<T> local_rule = clone(bias0);
  nn::update_routing_bias(local_rule, local_batch, 0.01);
  std::int64_t differs = local_rule.to_vector() != ep.gate.e_score_correction_bias.to_vector() ? 1 : 0;
  comm->all_reduce_host(&differs, 1, dist::ReduceOp::max);
  if (variant != EpVariant::all_to_rank0) {  // there every rank's load has the global pattern
    EXPECT_EQ(differs, 1) << "the data should make some rank's local load rule differ from the global one";
  }
}

// A whole model expert parallel: DeepseekV3ForCausalLM with every MoE layer's experts spread over
// the ranks (a main layer and the MTP block's), trained one step data parallel (replicated
// parameters averaged, experts as local parameters), against the one-process model on the union of
// the ranks' sequences. With equal token counts per rank the one-process loss is the mean of the
// ranks' losses, so every gradient (a mean over ranks after DataParallel) equals the one-process
// gradient; the balance update moves every rank's biases like the one-process model's.
template <class T>
void check_expert_parallel_model(const std::shared_ptr<dist::Communicator>& comm, Device dev, double tol,
                                 nn::MoEDispatch path) {
  const nn::MoEDispatchScope dispatch(path);
  const int W = comm->size(), r = comm->rank();
  nn::DeepseekV3Config c;
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 8;
  c.num_hidden_layers = 2;  // layer 0 dense, layer 1 MoE, MTP block (layer 2) MoE
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.kv_lora_rank = 8;
  c.q_lora_rank = 12;
  c.qk_rope_head_dim = 4;
  c.qk_nope_head_dim = 8;
  c.v_head_dim = 8;
  c.n_routed_experts = 4 * W;
  c.n_group = 2 * W;
  c.topk_group = 2;
  c.num_experts_per_tok = 3;
  c.initializer_range = 0.3;
  c.seq_aux_loss_alpha = 0.01;
  c.mtp_loss_weight = 0.3;
  Generator g1{5, 0}, g2{5, 0};
  nn::DeepseekV3ForCausalLM<T> one(c, g1);
  nn::DeepseekV3ForCausalLM<T> ep(c, g2, dist::expert_exchange<T>(comm));
  one.to(dev);
  ep.to(dev);
  EXPECT_EQ(ep.moe_layers().size(), 2u);
  for (auto& [index, moe] : ep.moe_layers()) EXPECT_EQ(moe->first_expert(), 4 * r) << "layer " << index;

  const std::int64_t B = 2 * W, S = 7, rows = B / W;
  Generator data{8, 0};
  const Tensor<std::int64_t> ids = randint<std::int64_t>(0, c.vocab_size, {B, S}, Device::cpu(), data);
  const Tensor<std::int64_t> targets = randint<std::int64_t>(0, c.vocab_size, {B, S}, Device::cpu(), data);

  const auto o1 = one.forward_with_loss(to(ids, dev), to(targets, dev));
  o1.loss.backward();

  dist::DataParallel<T> dp(comm, ep.replicated_parameters(), dist::DataParallelOptions{}, ep.expert_parameters());
  const auto o2 = ep.forward_with_loss(to(narrow(ids, 0, r * rows, rows), dev), to(narrow(targets, 0, r * rows, rows), dev));
  dp.backward(o2.loss);
  dp.finish();

  // Clipping by the global norm (the replicated gradients once, every rank's experts): the same
  // norm, and below the same clipped gradients, as one process.
  const double max_norm = 0.05;
  const double n1 = optim::clip_grad_norm(one.parameters(), max_norm);
  const double n2 = dist::clip_grad_norm(*comm, ep.replicated_parameters(), ep.expert_parameters(), max_norm);
  EXPECT_GT(n1, max_norm) << "the data should make the clipping act";
  EXPECT_NEAR(n2, n1, tol * n1) << "global gradient norm";

  Tensor<T> loss = clone(mul(o2.loss.detach(), 1.0 / W));
  dist::all_reduce(*comm, loss);
  EXPECT_LE(kiln::testing::relative_error(loss, o1.loss.detach()), tol) << "loss";

  // Every parameter held here by name against the one-process model's (experts by global id).
  std::map<std::string, Tensor<T>> reference;
  for (const auto& [name, p] : one.named_parameters()) reference[name] = p;
  std::int64_t experts_here = 0;
  for (const auto& [name, p] : ep.named_parameters()) {
    ASSERT_TRUE(reference.count(name)) << name;
    const Tensor<T>& ref = reference[name];
    EXPECT_EQ(p.to_vector(), ref.to_vector()) << name << ": same seed, same weights";
    EXPECT_EQ(p.grad().defined(), ref.grad().defined()) << name;
    if (p.grad().defined() && ref.grad().defined()) {
      EXPECT_LE(kiln::testing::relative_error(p.grad(), ref.grad()), tol) << name;
    }
    experts_here += name.find(".mlp.experts.") != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(experts_here, 2 * 4 * 3) << "2 MoE layers x 4 local experts x 3 weights";
  EXPECT_EQ(ep.parameters().size(), ep.replicated_parameters().size() + ep.expert_parameters().size());

  // Balance: each layer sums the ranks' counts; the biases follow the one-process model's.
  ep.update_balance(0.01);
  one.update_balance(0.01);
  for (std::size_t l = 0; l < 2; ++l) {
    const auto& mine = ep.moe_layers()[l].second->gate.e_score_correction_bias;
    EXPECT_EQ(mine.to_vector(), one.moe_layers()[l].second->gate.e_score_correction_bias.to_vector()) << "layer " << l;
    EXPECT_TRUE(same_on_all_ranks(*comm, mine));
  }
  // Generation needs every expert in one process.
  EXPECT_KILN_ERROR(ep.make_decode_cache(1, 4), "MoE::stack_experts", "needs every routed expert in this process");
  EXPECT_KILN_ERROR(ep.make_decode_cache(infer::CacheLayout::contiguous(1, 4), false, infer::CacheFormat::model,
                                         nn::GenerationDispatch::sparse),
                    "MoE::generation_dispatch", "needs every routed expert in this process");
}

// Ranks built with different layers get one error everywhere.
inline void check_expert_parallel_mismatch(const std::shared_ptr<dist::Communicator>& comm) {
  nn::DeepseekV3Config c = ep_config(comm->size());
  if (comm->rank() == 1) c.moe_intermediate_size = 7;
  Generator g{1, 0};
  EXPECT_KILN_ERROR({ nn::MoE<double> ep(c, g, dist::expert_exchange<double>(comm)); }, "MoE",
                    "expert parallel ranks disagree on the layer", "rank 0 has [8, 6, 5, 2, 1], rank 1 has [8, 6, 7, 2, 1]");
  nn::DeepseekV3Config odd = ep_config(comm->size());
  odd.n_routed_experts = 3;
  odd.n_group = 1;
  odd.topk_group = 1;
  EXPECT_KILN_ERROR({ nn::MoE<double> ep(odd, g, dist::expert_exchange<double>(comm)); }, "MoE",
                    "n_routed_experts = 3 must be a multiple of the 2 expert parallel ranks");
}

}  // namespace kiln::dist_test
