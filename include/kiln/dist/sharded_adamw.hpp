// ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
// Models", SC 2020): AdamW whose state is sharded over the ranks of a data parallel group.
//
// With DataParallelOptions::shard_gradients, each gradient bucket (a flat buffer, padded to a
// multiple of W elements) is reduce-scattered: rank r receives the sum over ranks of elements
// [r·S, (r+1)·S) of the bucket, S = padded / W. This optimizer then, per step:
//   1. copies the current parameter values of that range into the rank's part of a flat copy of
//      the bucket's parameters;
//   2. runs an ordinary optim::AdamW (optim/adamw.hpp, the same per-element update, CPU loop or
//      multi-tensor kernel) over the range, cut into one piece per parameter it overlaps, with the
//      averaged gradient shard as gradients. The AdamW moments and (bf16/fp16) FP32 master weights
//      exist for these pieces only: 1/W of the model each;
//   3. all-gathers the updated ranges of every bucket (in place) and copies them back into the
//      parameters, so every rank holds the whole updated model again.
// AdamW is elementwise, so sharding changes no arithmetic: for the same averaged gradients the
// parameters equal those of an unsharded AdamW bit for bit (dist tests check this), and a piece
// of a parameter that no rank used keeps no gradient and is skipped, as AdamW skips the parameter.
//
// Clipping: clip_grad_norm(max) takes the global norm from the squares of every rank's shards
// (one all-reduce of one double) and scales this rank's shards, as optim::clip_grad_norm would
// scale the full gradients.
//
// Cost: the flat parameter copies are one extra copy of the parameters (the all-gather's target);
// the gradients live in the bucket buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/dist/collectives.hpp"
#include "kiln/dist/data_parallel.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/optim/adamw.hpp"

namespace kiln::dist {

template <class T>
class ShardedAdamW {
 public:
  ShardedAdamW(DataParallel<T>& dp, optim::AdamWOptions options = {}) : dp_(dp) {
    check(dp.options().shard_gradients, "dist::ShardedAdamW",
          "needs a DataParallel built with DataParallelOptions::shard_gradients = true");
    NoGradGuard no_grad;
    const auto& comm = *dp.communicator();
    const std::int64_t world = comm.size(), rank = comm.rank();
    std::vector<Tensor<T>> pieces;
    for (std::size_t b = 0; b < dp.buckets(); ++b) {
      const Bucket& layout = dp.layout(b);
      const std::int64_t shard = layout.padded / world, lo = rank * shard, hi = lo + shard;
      Tensor<T> flat = zeros<T>({layout.padded}, comm.device());
      for (const BucketEntry& e : layout.entries) {
        detail::copy_into(narrow(flat, 0, e.offset, e.numel), reshape(dp.parameters()[e.param].detach(), {e.numel}));
        const std::int64_t a = std::max(lo, e.offset), z = std::min(hi, e.offset + e.numel);
        if (a >= z) continue;
        Piece piece{b, e.param, a, z - a, a - e.offset};
        Tensor<T> view = narrow(flat, 0, a, z - a);
        view.requires_grad_();
        pieces.push_back(view);
        pieces_.push_back(piece);
      }
      flats_.push_back(flat);
    }
    views_ = pieces;
    adamw_ = std::make_unique<optim::AdamW<T>>(pieces, options);
  }

  // The global gradient norm over all ranks' shards (of the averaged gradients); scales them by
  // max_norm / (norm + 1e-6) when the norm exceeds max_norm. Call after DataParallel::finish(),
  // on every rank. A non-finite norm is returned and nothing is scaled (skip the step).
  double clip_grad_norm(double max_norm) {
    check(std::isfinite(max_norm) && max_norm > 0.0, "dist::ShardedAdamW::clip_grad_norm",
          "max_norm must be finite and positive, got ", max_norm);
    check_finished("clip_grad_norm");
    NoGradGuard no_grad;
    Communicator& comm = *dp_.communicator();
    Tensor<double> squares = zeros<double>({1}, comm.device());
    for (std::size_t b = 0; b < dp_.buckets(); ++b) {
      const Tensor<double> g = cast<double>(dp_.shard(b));
      if (g.numel() > 0) squares = add(squares, sum(mul(g, g)));
    }
    comm.all_reduce(squares.data(), 1, DType::f64, ReduceOp::sum);
    const double norm = std::sqrt(squares.item()) / static_cast<double>(comm.size());
    if (std::isfinite(norm) && norm > max_norm) scale_ *= max_norm / (norm + 1e-6);
    return norm;
  }

  // One AdamW update of this rank's shards, then every rank gets the whole updated parameters.
  void step() {
    check_finished("step");
    NoGradGuard no_grad;
    Communicator& comm = *dp_.communicator();
    const auto& params = dp_.parameters();
    const double factor = scale_ / static_cast<double>(comm.size());
    std::vector<Tensor<T>> grads;
    for (std::size_t b = 0; b < dp_.buckets(); ++b) grads.push_back(mul(dp_.shard(b), factor));
    const std::int64_t rank = comm.rank();
    for (std::size_t k = 0; k < pieces_.size(); ++k) {
      const Piece& p = pieces_[k];
      const std::int64_t lo = rank * (dp_.layout(p.bucket).padded / comm.size());
      // The parameter is the source of truth (it may have been loaded or changed since).
      detail::copy_into(views_[k].detach(), narrow(reshape(params[p.param].detach(), {-1}), 0, p.param_offset, p.numel));
      if (dp_.used(p.param))
        views_[k].set_grad(narrow(grads[p.bucket], 0, p.offset - lo, p.numel));
      else
        views_[k].zero_grad();
    }
    adamw_->step();
    for (std::size_t b = 0; b < dp_.buckets(); ++b) {
      const Bucket& layout = dp_.layout(b);
      const std::int64_t shard = layout.padded / comm.size();
      comm.all_gather(flats_[b].data() + rank * shard, flats_[b].data(), shard, dtype_of<T>);
      for (const BucketEntry& e : layout.entries)
        detail::copy_into(params[e.param].detach(), reshape(narrow(flats_[b], 0, e.offset, e.numel),
                                                            params[e.param].shape()));
    }
    for (auto& v : views_) v.zero_grad();
    scale_ = 1.0;
    stepped_ = dp_.steps();
  }

  void set_lr(double lr) { adamw_->set_lr(lr); }
  const optim::AdamWOptions& options() const { return adamw_->options(); }
  std::int64_t steps() const { return adamw_->steps(); }
  // The AdamW over this rank's pieces (its state is this rank's shard of the optimizer state).
  optim::AdamW<T>& local() { return *adamw_; }

 private:
  struct Piece {
    std::size_t bucket = 0, param = 0;
    std::int64_t offset = 0;        // first element in the bucket
    std::int64_t numel = 0;
    std::int64_t param_offset = 0;  // first element in the parameter
  };

  void check_finished(const char* what) const {
    check(dp_.steps() > stepped_, "dist::ShardedAdamW", what,
          " needs the gradients of a new step: call DataParallel::finish() after backward");
  }

  DataParallel<T>& dp_;
  std::vector<Tensor<T>> flats_;  // per bucket: the parameters, flat [padded]
  std::vector<Piece> pieces_;
  std::vector<Tensor<T>> views_;  // per piece: its elements of flats_, the AdamW parameters
  std::unique_ptr<optim::AdamW<T>> adamw_;
  double scale_ = 1.0;            // clipping factor for the next step
  std::int64_t stepped_ = 0;
};

}  // namespace kiln::dist
