// Where an MoE layer's routed experts live (nn/moe.hpp): all in this process (no exchange, the
// default), or spread over the ranks of a group, expert parallel, with the token rows travelling to
// their experts' ranks and back. The layer runs the same code either way; the exchange is the part
// that differs, so it is a strategy the layer is built with:
//
//   nn::MoE<T> local(config, gen);                    // every expert here
//   nn::MoE<T> spread(config, gen, exchange);         // experts r·L .. r·L + L − 1 on rank r
//
// This header states what the layer needs from a group of ranks; dist/expert_parallel.hpp
// implements it over a dist::Communicator (MPI between CPU ranks, NCCL between GPUs). nn does not
// depend on dist: any transport that keeps these contracts works.
//
// Contracts. Every call is collective: every rank of the group makes the same calls in the same
// order (an MoE forward is one collective; so is a training step's update_bias). Host vectors are
// the control plane (counts, a few hundred int64s); rows are the data plane (tensors on device()).
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/device.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::nn {

template <class T>
class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  virtual int ranks() const = 0;
  virtual int rank() const = 0;
  // Where the rows travel from and to: the layer's tensors must be there.
  virtual Device device() const = 0;

  // Every rank's `values` (the same length everywhere), concatenated in rank order.
  virtual std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& values) = 0;
  // The sum over ranks of `values`, element by element.
  virtual std::vector<std::int64_t> sum(const std::vector<std::int64_t>& values) = 0;
  // values holds ranks() equal blocks: block q goes to rank q; the result's block s came from rank s.
  virtual std::vector<std::int64_t> all_to_all(const std::vector<std::int64_t>& values) = 0;
  // rows [Σ send, width]: send[q] consecutive rows go to rank q (blocks in rank order). Returns
  // [Σ recv, width]: recv[s] rows from rank s, blocks in rank order. The counts must match pairwise
  // (exchange them first with all_to_all). Differentiable: the backward is the reverse exchange.
  virtual Tensor<T> all_to_all_rows(const Tensor<T>& rows, const std::vector<std::int64_t>& send,
                                    const std::vector<std::int64_t>& recv) = 0;
};

}  // namespace kiln::nn
