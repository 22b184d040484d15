// Data parallel training: every rank holds the whole model and runs its own part of the batch;
// after backward, every rank holds the gradient averaged over all ranks, as if one process had run
// the whole batch (whose loss is the mean of the ranks' mean losses, for equal parts).
//
//   auto comm = dist::MpiCommunicator::world();          // or an NcclCommunicator on a GPU
//   dist::DataParallel<float> dp(comm, model.parameters());
//   dp.backward(loss);                                    // gradient buckets reduce during backward
//   dp.finish();                                          // wait; p.grad() = mean over ranks
//   optimizer.step();
//
// Overlap. The parameters are grouped into buckets of ~25 MB (dist/buckets.hpp), last layers
// first. A hook on each parameter's AccumulateGrad node (autograd/node.hpp, Node::post_hooks) runs
// when that gradient is complete during backward: it copies the gradient into its bucket's flat
// buffer, and when a bucket is full, starts its all-reduce without blocking (MPI_Iallreduce; NCCL
// on a side stream), so communication runs while backward computes the earlier layers. Buckets
// start strictly in order (bucket i only after buckets 0..i−1), whatever order their gradients
// complete in: every rank issues the same collectives in the same order, which MPI and NCCL
// require. A parameter this rank's backward never reaches (an MoE expert no local token chose)
// would hold its bucket, and all later ones, until finish(): dp.backward(loss) walks the loss's
// graph first and hands such parameters over at once (as PyTorch's find_unused_parameters).
// finish() starts the buckets still waiting, waits for all, and writes the averages.
//
// A parameter no rank used keeps no gradient (.grad() undefined, so AdamW skips it, as it would in
// one process); one used by some rank gets the average with zeros from the others. finish() learns
// which through one small host all-reduce of per-parameter flags.
//
// ZeRO-1 (options.shard_gradients): buckets are reduce-scattered instead: each rank receives the
// sum over ranks of its 1/W shard of every bucket, and dist::ShardedAdamW (dist/sharded_adamw.hpp)
// updates only that shard, keeping the AdamW moments and master weights of the shard only. The
// parameters' own .grad() are dropped after finish() in this mode.
//
// Gradient accumulation: set_sync(false) for every micro-batch but the last; those backward passes
// only add up gradients locally, and the last one (sync on) reduces the total.
//
// `local_params` are parameters that differ between ranks (expert parallel experts): they are not
// communicated, their gradient (already summed over the ranks' tokens by the all-to-all's backward)
// is divided by W to match the averaged loss.
//
// The DataParallel works on its own communicator (split from the one given), so its buckets never
// interleave with other collectives. Build it after the model is on its device (Module::to replaces
// the parameter tensors, and with them the hooks); it must outlive the backward passes it serves.
// By default it copies rank 0's parameters to every rank at construction, after checking that all
// ranks have the same parameter shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/dist/buckets.hpp"
#include "kiln/dist/collectives.hpp"
#include "kiln/dist/communicator.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::dist {

struct DataParallelOptions {
  std::int64_t bucket_bytes = std::int64_t(25) << 20;
  bool shard_gradients = false;       // ZeRO-1: reduce-scatter into shards, for dist::ShardedAdamW
  bool broadcast_parameters = true;   // start every rank from rank 0's parameters
};

template <class T>
class DataParallel {
 public:
  DataParallel(std::shared_ptr<Communicator> comm, std::vector<Tensor<T>> params, DataParallelOptions options = {},
               std::vector<Tensor<T>> local_params = {})
      : params_(std::move(params)), local_params_(std::move(local_params)), options_(options) {
    const char* op = "dist::DataParallel";
    check(comm != nullptr, op, "needs a communicator");
    // What is wrong with this rank's own arguments is reported by every rank, after the exchange
    // in check_same_layout, so that no rank is left waiting in a collective.
    std::int64_t bad = -1, reason = 0;
    for (std::size_t i = 0; i < params_.size() + local_params_.size() && bad < 0; ++i) {
      const Tensor<T>& p = i < params_.size() ? params_[i] : local_params_[i - params_.size()];
      if (!p.defined() || !p.requires_grad() || !p.is_leaf())
        reason = 1;
      else if (i < params_.size() && !p.is_contiguous())
        reason = 2;
      else if (p.device() != comm->device())
        reason = 3;
      if (reason) bad = static_cast<std::int64_t>(i);
    }
    comm_ = comm->split(0, comm->rank());
    world_ = comm_->size();
    check_same_layout(op, bad, reason);
    check(options_.bucket_bytes > 0, op, "bucket_bytes must be positive, got ", options_.bucket_bytes);

    std::vector<std::int64_t> numels;
    for (const auto& p : params_) numels.push_back(p.numel());
    const std::int64_t bucket_elems =
        std::max<std::int64_t>(1, options_.bucket_bytes / static_cast<std::int64_t>(sizeof(T)));
    const std::int64_t align = options_.shard_gradients ? world_ : 1;
    bucket_of_.assign(params_.size(), 0);
    entry_of_.assign(params_.size(), 0);
    for (Bucket& layout : make_buckets(numels, bucket_elems, align)) {
      State s;
      s.layout = std::move(layout);
      s.flat = zeros<T>({s.layout.padded}, comm_->device());
      if (options_.shard_gradients) s.shard = zeros<T>({s.layout.padded / world_}, comm_->device());
      for (std::size_t k = 0; k < s.layout.entries.size(); ++k) {
        bucket_of_[s.layout.entries[k].param] = buckets_.size();
        entry_of_[s.layout.entries[k].param] = k;
      }
      buckets_.push_back(std::move(s));
    }
    fired_.assign(params_.size(), 0);
    used_.assign(params_.size(), 0);
    reset_pass();

    if (options_.broadcast_parameters)
      for (const auto& p : params_) comm_->broadcast(p.data(), p.numel(), dtype_of<T>, 0);

    // With one rank and no shards there is nothing to communicate: no hooks.
    if (world_ == 1 && !options_.shard_gradients) return;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      std::shared_ptr<autograd::Node> node = autograd::edge_of(params_[i]);
      auto hook = std::make_shared<const autograd::Node::Hook>([this, i] { on_gradient(i); });
      node->post_hooks.push_back(hook);
      hooks_.emplace_back(node, hook);
    }
  }

  ~DataParallel() {
    for (auto& [node, hook] : hooks_) std::erase(node->post_hooks, hook);
    for (auto& b : buckets_) b.work.reset();  // waits for anything still in flight
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Whether the next backward passes reduce gradients (off: they only accumulate locally).
  void set_sync(bool sync) {
    check(!pass_started(), "dist::DataParallel::set_sync", "called during a synced pass: call finish() first");
    sync_ = sync;
  }
  bool sync() const { return sync_; }

  // loss.backward(), after marking at once the parameters the loss does not depend on (found by
  // walking its graph): their gradients are final already, so their buckets need not wait for
  // finish(). With a plain loss.backward() the results are the same, but a bucket holding such a
  // parameter (an MoE expert no local token chose, a layer skipped) and every later bucket start
  // only in finish(), after backward: no overlap for them.
  template <class L>
  void backward(const Tensor<L>& loss) {
    if (sync_ && (world_ > 1 || options_.shard_gradients)) {
      std::unordered_set<const autograd::Node*> reached;
      std::vector<const autograd::Node*> stack;
      if (loss.requires_grad()) stack.push_back(autograd::edge_of(loss).get());
      while (!stack.empty()) {
        const autograd::Node* n = stack.back();
        stack.pop_back();
        if (!n || !reached.insert(n).second) continue;
        for (const auto& child : n->next) stack.push_back(child.get());
      }
      NoGradGuard no_grad;
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (!fired_[i] && !reached.count(hooks_[i].first.get())) take(i, params_[i].grad());
    }
    loss.backward();
  }

  // After the backward pass of a synced step: every rank must call it (even one whose backward
  // reached no parameter). Waits for every bucket and writes the averaged gradients.
  void finish() {
    if (!sync_) return;
    NoGradGuard no_grad;
    started_early_ = static_cast<std::int64_t>(next_launch_);
    const double inv = 1.0 / static_cast<double>(world_);
    if (world_ > 1 || options_.shard_gradients) {
      // Parameters this pass never reached: their gradient (from earlier micro-batches, or none)
      // is final.
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (!fired_[i]) take(i, params_[i].grad());
      for (auto& b : buckets_) b.work->wait();
      used_global_ = used_;
      comm_->all_reduce_host(used_global_.data(), static_cast<std::int64_t>(used_global_.size()), ReduceOp::max);
      for (std::size_t i = 0; i < params_.size(); ++i) {
        Tensor<T> p = params_[i];
        if (options_.shard_gradients || !used_global_[i]) {
          p.zero_grad();
          continue;
        }
        p.set_grad(mul(grad_view(i), inv));
      }
      reset_pass();
    } else {
      used_global_.assign(params_.size(), 1);
      for (std::size_t i = 0; i < params_.size(); ++i) used_global_[i] = params_[i].grad().defined();
    }
    for (const auto& p : local_params_) {
      Tensor<T> q = p;
      if (world_ > 1 && q.grad().defined()) q.set_grad(mul(q.grad(), inv));
    }
    ++finished_;
  }

  // ---- what ShardedAdamW reads ----
  const std::shared_ptr<Communicator>& communicator() const { return comm_; }
  const std::vector<Tensor<T>>& parameters() const { return params_; }
  std::size_t buckets() const { return buckets_.size(); }
  const Bucket& layout(std::size_t b) const { return buckets_[b].layout; }
  // Shard mode, after finish(): this rank's shard of bucket b, summed (not averaged) over ranks.
  const Tensor<T>& shard(std::size_t b) const { return buckets_[b].shard; }
  // After finish(): whether some rank's backward gave parameter i a gradient.
  bool used(std::size_t i) const { return used_global_.at(i) != 0; }
  // Buckets of the last synced pass whose reduction started during backward, before finish():
  // the overlap actually obtained.
  std::int64_t buckets_started_early() const { return started_early_; }
  // How many synced steps finish() completed.
  std::int64_t steps() const { return finished_; }
  const DataParallelOptions& options() const { return options_; }

 private:
  struct State {
    Bucket layout;
    Tensor<T> flat;   // [padded] the gradients, then (all-reduce mode) their sum over ranks
    Tensor<T> shard;  // [padded / W] shard mode: this rank's block of the sum
    std::size_t pending = 0;
    std::unique_ptr<Work> work;
  };

  Tensor<T> grad_view(std::size_t i) const {
    const State& b = buckets_[bucket_of_[i]];
    const BucketEntry& e = b.layout.entries[entry_of_[i]];
    return reshape(narrow(b.flat, 0, e.offset, e.numel), params_[i].shape());
  }

  bool pass_started() const {
    for (char f : fired_)
      if (f) return true;
    return false;
  }

  void reset_pass() {
    for (auto& b : buckets_) {
      b.pending = b.layout.entries.size();
      b.work.reset();
    }
    std::fill(fired_.begin(), fired_.end(), 0);
    std::fill(used_.begin(), used_.end(), 0);
    next_launch_ = 0;
  }

  void on_gradient(std::size_t i) {
    if (!sync_) return;
    NoGradGuard no_grad;
    check(!fired_[i], "dist::DataParallel", "a second synced backward reached parameter ", i,
          " before finish(): call finish() after each synced backward, or set_sync(false) to accumulate");
    take(i, params_[i].grad());
    for (std::size_t b = 0; b < next_launch_; ++b) buckets_[b].work->test();  // let MPI move data
  }

  // Parameter i's gradient for this pass (undefined: zero) goes into its bucket; full buckets start.
  void take(std::size_t i, const Tensor<T>& grad) {
    fired_[i] = 1;
    const Tensor<T> view = grad_view(i);
    if (grad.defined()) {
      detail::copy_into(view, grad);
      used_[i] = 1;
    } else {
      detail::fill_zero(view);
    }
    --buckets_[bucket_of_[i]].pending;
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) launch(buckets_[next_launch_++]);
  }

  void launch(State& b) {
    if (options_.shard_gradients)
      b.work = comm_->start_reduce_scatter(b.flat.data(), b.shard.data(), b.layout.padded / world_, dtype_of<T>,
                                           ReduceOp::sum);
    else
      b.work = comm_->start_all_reduce(b.flat.data(), b.layout.padded, dtype_of<T>, ReduceOp::sum);
  }

  // Every rank must bucket the same parameters the same way; `bad` is the index of a parameter
  // (then of a local parameter) this rank found unusable, for `reason`.
  void check_same_layout(const char* op, std::int64_t bad, std::int64_t reason) {
    std::int64_t total = 0;
    for (const auto& p : params_) total += p.defined() ? p.numel() : 0;
    const std::vector<std::int64_t> mine{static_cast<std::int64_t>(params_.size()), total,
                                         options_.shard_gradients ? 1 : 0, options_.bucket_bytes, bad, reason};
    const std::vector<std::int64_t> all = comm_->all_gather_host(mine);
    const char* reasons[] = {"", "is not a leaf that requires grad", "is not contiguous",
                             "is not on the communicator's device"};
    for (int r = 0; r < world_; ++r) {
      const std::int64_t i = all[r * mine.size() + 4], why = all[r * mine.size() + 5];
      if (i < 0) continue;
      const std::int64_t n = all[r * mine.size()];
      fail(op, "rank ", r, "'s ", i < n ? "parameter " : "local parameter ", i < n ? i : i - n, " ", reasons[why]);
    }
    for (int r = 1; r < world_; ++r)
      for (std::size_t k = 0; k < 4; ++k)
        if (all[r * mine.size() + k] != all[k])
          fail(op, "ranks disagree on the parameters or options: rank 0 has ", all[0], " parameters (", all[1],
               " elements, shard_gradients ", all[2], ", bucket_bytes ", all[3], "), rank ", r, " has ",
               all[r * mine.size()], " (", all[r * mine.size() + 1], " elements, shard_gradients ",
               all[r * mine.size() + 2], ", bucket_bytes ", all[r * mine.size() + 3], ")");
    std::vector<std::int64_t> numels;
    for (const auto& p : params_) numels.push_back(p.numel());
    const std::vector<std::int64_t> every = comm_->all_gather_host(numels);
    for (int r = 1; r < world_; ++r)
      for (std::size_t i = 0; i < numels.size(); ++i)
        if (every[r * numels.size() + i] != every[i])
          fail(op, "ranks disagree on parameter ", i, ": rank 0 has ", every[i], " elements, rank ", r, " has ",
               every[r * numels.size() + i], " (this rank's shape ", params_[i].shape(), ")");
  }

  std::vector<Tensor<T>> params_, local_params_;
  DataParallelOptions options_;
  std::shared_ptr<Communicator> comm_;
  int world_ = 1;
  std::vector<State> buckets_;
  std::vector<std::size_t> bucket_of_, entry_of_;
  std::vector<char> fired_;
  std::vector<std::int64_t> used_, used_global_;
  std::size_t next_launch_ = 0;
  bool sync_ = true;
  std::int64_t finished_ = 0, started_early_ = 0;
  std::vector<std::pair<std::shared_ptr<autograd::Node>, std::shared_ptr<const autograd::Node::Hook>>> hooks_;
};

}  // namespace kiln::dist
