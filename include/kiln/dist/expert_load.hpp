// The global expert load for aux-loss-free balancing over several ranks (nn/balance.hpp).
//
// The bias rule b_i += γ·sign(mean_load − load_i) must see the load of the whole batch, i.e. of
// every rank's tokens: with a local load the ranks' biases would drift apart (and differ from a
// single process on the whole batch). global_load all-reduces the counts through the control
// plane (host int64s); update_balance does it for every MoE layer of a model in one exchange and
// applies the rule, for data parallel training of replicated MoE models.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/dist/communicator.hpp"
#include "kiln/nn/balance.hpp"

namespace kiln::dist {

// Sum over ranks of several loads at once (every rank passes loads of the same sizes).
inline std::vector<nn::ExpertLoad> global_loads(Communicator& comm, const std::vector<nn::ExpertLoad>& loads) {
  std::vector<std::int64_t> sizes;
  std::vector<std::int64_t> counts;
  for (const auto& l : loads) {
    sizes.push_back(l.experts());
    counts.insert(counts.end(), l.counts.begin(), l.counts.end());
  }
  // Agree on the layout first: a count mismatch would make the all-reduce itself invalid.
  const std::vector<std::int64_t> mine{static_cast<std::int64_t>(loads.size()), static_cast<std::int64_t>(counts.size())};
  const std::vector<std::int64_t> all = comm.all_gather_host(mine);
  for (int r = 1; r < comm.size(); ++r)
    if (all[2 * r] != all[0] || all[2 * r + 1] != all[1])
      fail("dist::global_load", "ranks disagree on the loads: rank 0 has ", all[0], " layers of ", all[1],
           " experts in all, rank ", r, " has ", all[2 * r], " layers of ", all[2 * r + 1]);
  comm.all_reduce_host(counts.data(), static_cast<std::int64_t>(counts.size()), ReduceOp::sum);
  std::vector<nn::ExpertLoad> out;
  std::size_t at = 0;
  for (auto n : sizes) {
    nn::ExpertLoad l(n);
    for (std::int64_t i = 0; i < n; ++i) l.counts[static_cast<std::size_t>(i)] = counts[at++];
    out.push_back(std::move(l));
  }
  return out;
}

inline nn::ExpertLoad global_load(Communicator& comm, const nn::ExpertLoad& load) {
  return global_loads(comm, {load}).front();
}

// For a model with moe_layers() (nn::DeepseekV3ForCausalLM) trained data parallel with replicated
// experts: the aux-loss-free update of every MoE layer from the global batch load, then the counts
// start again. Returns the global loads (for MaxVio reports). Collective: every rank calls it.
template <class Model>
std::vector<nn::ExpertLoad> update_balance(Communicator& comm, Model& model, double gamma) {
  std::vector<nn::ExpertLoad> local;
  for (auto& [index, moe] : model.moe_layers()) local.push_back(moe->batch_load());
  std::vector<nn::ExpertLoad> global = global_loads(comm, local);
  std::size_t k = 0;
  for (auto& [index, moe] : model.moe_layers()) {
    nn::update_routing_bias(moe->gate.e_score_correction_bias, global[k++], gamma);
    moe->reset_load();
  }
  return global;
}

}  // namespace kiln::dist
