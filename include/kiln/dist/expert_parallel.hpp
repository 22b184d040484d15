// Expert parallelism over a communicator: the routed experts of every DeepSeek-V3 MoE layer spread
// over the ranks (rank r holds experts r·L .. r·L + L − 1 of each layer, L = n_routed_experts / W),
// the router, the shared experts and everything else replicated. The MoE layer (nn/moe.hpp) does
// the work, the same code as in one process; this header gives it the exchange it is built with,
// an nn::ExpertExchange over a dist::Communicator:
//
//   auto experts = dist::expert_exchange<T>(comm);
//   nn::DeepseekV3ForCausalLM<T> model(config, gen, experts);   // or nn::MoE<T>(config, gen, experts)
//   dist::DataParallel<T> dp(comm, model.replicated_parameters(), options, model.expert_parameters());
//
// The counts travel through the control plane (host int64s), the token rows through all_to_all_v
// (MPI between CPU ranks; NCCL send/receive groups between GPUs), which is differentiable: backward
// sends each token's expert-output gradient to the expert's rank and the input gradient home.
// Every rank's graph holds both exchanges of every layer, even a rank that receives no rows, so
// every rank joins every backward collective.
//
// Gradients: an expert's gradient sums the contributions of every rank's tokens, so it is already
// the whole batch's; the replicated parameters' gradients hold only local tokens. DataParallel
// averages the replicated ones and divides the local ones by W, so both become the mean over
// ranks, as in data parallel training of a replicated model (docs/distributed.md).
//
// Clipping: the global gradient norm of such a model counts the replicated gradients once (equal on
// every rank after DataParallel) and every rank's experts: clip_grad_norm below.
//
// Balancing: each layer's update_bias sums the ranks' counts, so every rank moves the same bias
// (dist::update_balance does the same for all layers in one exchange).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/dist/collectives.hpp"
#include "kiln/dist/communicator.hpp"
#include "kiln/nn/expert_exchange.hpp"
#include "kiln/optim/clip.hpp"

namespace kiln::dist {

template <class T>
class CommunicatorExchange final : public nn::ExpertExchange<T> {
 public:
  explicit CommunicatorExchange(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {
    check(comm_ != nullptr, "dist::expert_exchange", "needs a communicator");
  }

  int ranks() const override { return comm_->size(); }
  int rank() const override { return comm_->rank(); }
  Device device() const override { return comm_->device(); }

  std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& values) override {
    return comm_->all_gather_host(values);
  }
  std::vector<std::int64_t> sum(const std::vector<std::int64_t>& values) override {
    std::vector<std::int64_t> out = values;
    comm_->all_reduce_host(out.data(), static_cast<std::int64_t>(out.size()), ReduceOp::sum);
    return out;
  }
  std::vector<std::int64_t> all_to_all(const std::vector<std::int64_t>& values) override {
    return comm_->all_to_all_host(values);
  }
  Tensor<T> all_to_all_rows(const Tensor<T>& rows, const std::vector<std::int64_t>& send,
                            const std::vector<std::int64_t>& recv) override {
    return all_to_all_v(*comm_, rows, send, recv);
  }

  const std::shared_ptr<Communicator>& communicator() const { return comm_; }

 private:
  std::shared_ptr<Communicator> comm_;
};

// The exchange that spreads MoE layers' experts over comm's ranks.
template <class T>
std::shared_ptr<nn::ExpertExchange<T>> expert_exchange(std::shared_ptr<Communicator> comm) {
  return std::make_shared<CommunicatorExchange<T>>(std::move(comm));
}

// Gradient clipping by the global norm of a model whose `replicated` parameters hold the same
// gradient on every rank (averaged by DataParallel) and whose `local` ones (this rank's experts)
// differ: norm² = Σ_replicated g² + Σ_ranks Σ_local g², one all-reduce of a double; every gradient
// then scaled as optim::clip_grad_norm would scale the whole model's. Returns the norm (every rank
// the same). Collective.
template <class T>
double clip_grad_norm(Communicator& comm, const std::vector<Tensor<T>>& replicated, const std::vector<Tensor<T>>& local,
                      double max_norm) {
  const char* op = "dist::clip_grad_norm";
  optim::check_max_norm(op, max_norm);
  NoGradGuard no_grad;
  const optim::GradientSet<T> shared(replicated, op), mine(local, op);
  Tensor<double> squares = Tensor<double>::from_vector({mine.sum_squares()}, {1}, comm.device());
  comm.all_reduce(squares.data(), 1, DType::f64, ReduceOp::sum);
  const double norm = std::sqrt(shared.sum_squares() + squares.item());
  const double factor = optim::clip_factor(norm, max_norm);
  if (factor != 1.0) {
    shared.scale(factor);
    mine.scale(factor);
  }
  return norm;
}

}  // namespace kiln::dist
