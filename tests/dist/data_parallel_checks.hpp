// Data parallel checks, shared by the MPI (CPU) and NCCL (GPU) tests: a few AdamW steps of data
// parallel training (bucketed all-reduce, and ZeRO-1) against one process training on the whole
// batch, with the same initial weights and data. Every rank also runs the single-process
// reference itself (deterministic), so each compares locally.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <kiln/dist/data_parallel.hpp>
#include <kiln/dist/expert_load.hpp>
#include <kiln/dist/sharded_adamw.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/optim/adamw.hpp>
#include <kiln/optim/clip.hpp>

#include "nn_test_util.hpp"
#include "dist_test.hpp"

namespace kiln::dist_test {

// A small network with a parameter that only rank 0's rows use (`first_rows_bias`: added to the
// first `biased` rows) and one that no rank uses (`unused`).
template <class T>
class TinyNet : public nn::Module<T> {
 public:
  nn::Linear<T> in, out, unused;
  nn::SwiGLUMLP<T> mlp;
  Tensor<T> first_rows_bias;

  explicit TinyNet(Generator& gen)
      : in(7, 16, true, 0.3, gen), out(16, 5, true, 0.3, gen), unused(3, 3, false, 0.3, gen), mlp(16, 24, 0.3, gen) {
    first_rows_bias = randn<T>({16}, 0.0, 0.5, Device::cpu(), gen);
    this->register_module("in", &in);
    this->register_module("mlp", &mlp);
    this->register_module("out", &out);
    this->register_module("unused", &unused);
    this->register_parameter("first_rows_bias", &first_rows_bias);
  }

  Tensor<T> forward(const Tensor<T>& x, std::int64_t biased) const {
    Tensor<T> h = in(x);
    if (biased > 0)
      h = cat(std::vector<Tensor<T>>{add(narrow(h, 0, 0, biased), first_rows_bias),
                                     narrow(h, 0, biased, h.shape()[0] - biased)},
              0);
    h = add(h, mlp(h));
    return out(h);
  }
};

enum class Mode { single, all_reduce, zero };

struct DpRun {
  Mode mode = Mode::all_reduce;
  int steps = 3;
  int micro_batches = 1;         // gradient accumulation (set_sync(false) for all but the last)
  double clip = 0.0;             // > 0: global-norm clipping
  std::int64_t bucket_bytes = 0;  // 0: a few hundred bytes (several buckets)
  bool plain_backward = false;    // loss.backward() instead of DataParallel::backward(loss)
};

// The parameters after `run.steps` AdamW steps on batches of B rows (rank r takes rows
// [r·B/W, (r+1)·B/W) in the data parallel modes).
// AdamW's update m / (sqrt(v) + eps) barely depends on the gradients' scale when eps is tiny: the
// checks use an eps near the gradients' size, so that a wrongly scaled average shows.
template <class T>
std::vector<Tensor<T>> train_tiny_net(const std::shared_ptr<dist::Communicator>& comm, Device dev, const DpRun& run) {
  const int W = comm->size(), r = comm->rank();
  const std::int64_t B = 4 * W * run.micro_batches;
  Generator gen{11, 0};
  TinyNet<T> net(gen);
  net.to(dev);
  const optim::AdamWOptions adamw{.lr = 2e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-2, .weight_decay = 0.1};
  const bool distributed = run.mode != Mode::single;
  dist::DataParallelOptions o;
  o.bucket_bytes = run.bucket_bytes > 0 ? run.bucket_bytes : 96 * static_cast<std::int64_t>(sizeof(T));
  o.shard_gradients = run.mode == Mode::zero;
  std::unique_ptr<dist::DataParallel<T>> dp;
  std::unique_ptr<dist::ShardedAdamW<T>> zero;
  std::unique_ptr<optim::AdamW<T>> adam;
  if (distributed) dp = std::make_unique<dist::DataParallel<T>>(comm, net.parameters(), o);
  if (run.mode == Mode::zero)
    zero = std::make_unique<dist::ShardedAdamW<T>>(*dp, adamw);
  else
    adam = std::make_unique<optim::AdamW<T>>(net.parameters(), adamw);

  for (int step = 0; step < run.steps; ++step) {
    Generator data{100 + static_cast<std::uint64_t>(step), 0};
    const Tensor<T> x_all = randn<T>({B, 7}, 0.0, 1.0, Device::cpu(), data);
    const Tensor<T> y_all = randn<T>({B, 5}, 0.0, 1.0, Device::cpu(), data);
    const std::int64_t rows = distributed ? B / W : B;
    const std::int64_t first = distributed ? r * rows : 0;
    // Rank 0's rows, or with accumulation those of its first micro-batch only: a parameter that
    // gets gradient in an early micro-batch and none in the synced one.
    const std::int64_t biased_rows = B / W / run.micro_batches;
    const std::int64_t micro = rows / run.micro_batches;
    for (int k = 0; k < run.micro_batches; ++k) {
      const std::int64_t row0 = first + k * micro;
      const Tensor<T> x = to(narrow(x_all, 0, row0, micro), dev), y = to(narrow(y_all, 0, row0, micro), dev);
      const std::int64_t biased = std::clamp<std::int64_t>(biased_rows - row0, 0, micro);
      const Tensor<T> diff = sub(net.forward(x, biased), y);
      Tensor<T> loss = mean(mul(diff, diff));
      if (run.micro_batches > 1) loss = mul(loss, 1.0 / run.micro_batches);
      if (dp) {
        dp->set_sync(k == run.micro_batches - 1);
        if (run.plain_backward)
          loss.backward();
        else
          dp->backward(loss);
      } else {
        loss.backward();
      }
    }
    if (dp) dp->finish();
    if (zero) {
      if (run.clip > 0) zero->clip_grad_norm(run.clip);
      zero->step();
    } else {
      if (run.clip > 0) optim::clip_grad_norm(net.parameters(), run.clip);
      adam->step();
    }
    net.zero_grad();
  }
  std::vector<Tensor<T>> out;
  for (const auto& p : net.parameters()) out.push_back(p.detach());
  return out;
}

template <class T>
double max_relative_error(const std::vector<Tensor<T>>& a, const std::vector<Tensor<T>>& b, std::string* which = nullptr) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double e = kiln::testing::relative_error(a[i], b[i]);
    if (e > worst) {
      worst = e;
      if (which) *which = "parameter " + std::to_string(i) + " of shape " + str(a[i].shape());
    }
  }
  return worst;
}

template <class T>
bool bitwise_equal(const std::vector<Tensor<T>>& a, const std::vector<Tensor<T>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto x = a[i].to_vector(), y = b[i].to_vector();
    for (std::size_t k = 0; k < x.size(); ++k)
      if (!(x[k] == y[k])) return false;
  }
  return true;
}

template <class T>
void expect_replicas_in_sync(dist::Communicator& comm, const std::vector<Tensor<T>>& params) {
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(same_on_all_ranks(comm, params[i])) << "parameter " << i << " differs between ranks";
}

// Data parallel (bucketed all-reduce, and ZeRO-1) equals the single process on the whole batch.
template <class T>
void check_data_parallel_equals_single(const std::shared_ptr<dist::Communicator>& comm, Device dev, double tol,
                                       const DpRun& base) {
  DpRun single = base, ddp = base, zero = base;
  single.mode = Mode::single;
  ddp.mode = Mode::all_reduce;
  zero.mode = Mode::zero;
  const auto ref = train_tiny_net<T>(comm, dev, single);
  const auto a = train_tiny_net<T>(comm, dev, ddp);
  const auto z = train_tiny_net<T>(comm, dev, zero);
  std::string which;
  EXPECT_LE(max_relative_error(a, ref, &which), tol) << "data parallel vs one process, worst " << which;
  EXPECT_LE(max_relative_error(z, ref, &which), tol) << "ZeRO-1 vs one process, worst " << which;
  if (base.clip == 0.0) {
    EXPECT_TRUE(bitwise_equal(a, z)) << "ZeRO-1 must update exactly as the unsharded AdamW";
  }
  expect_replicas_in_sync(*comm, a);
  expect_replicas_in_sync(*comm, z);
  // The parameter no rank used never changed (AdamW skipped it: no weight decay either); the
  // one only rank 0 used did. (Parameter order: the module's own first, then its children's.)
  Generator gen{11, 0};
  TinyNet<T> fresh(gen);
  EXPECT_EQ(a.back().to_vector(), fresh.unused.weight.to_vector());
  EXPECT_EQ(z.back().to_vector(), fresh.unused.weight.to_vector());
  EXPECT_NE(a.front().to_vector(), fresh.first_rows_bias.to_vector());
}

// After one synced backward, the averaged gradients (all-reduce mode) and this rank's shards
// (ZeRO-1 mode, divided by W) equal the gradients of one process on the whole batch.
template <class T>
void check_gradients_equal_single(const std::shared_ptr<dist::Communicator>& comm, Device dev, double tol) {
  const int W = comm->size(), r = comm->rank();
  const std::int64_t B = 4 * W;
  Generator data{100, 0};
  const Tensor<T> x_all = randn<T>({B, 7}, 0.0, 1.0, Device::cpu(), data);
  const Tensor<T> y_all = randn<T>({B, 5}, 0.0, 1.0, Device::cpu(), data);
  auto loss_of = [&](TinyNet<T>& net, std::int64_t first, std::int64_t rows) {
    const Tensor<T> x = to(narrow(x_all, 0, first, rows), dev), y = to(narrow(y_all, 0, first, rows), dev);
    const Tensor<T> diff = sub(net.forward(x, std::clamp<std::int64_t>(B / W - first, 0, rows)), y);
    return mean(mul(diff, diff));
  };
  Generator g0{11, 0};
  TinyNet<T> single(g0);
  single.to(dev);
  loss_of(single, 0, B).backward();
  const std::vector<Tensor<T>> ref = single.parameters();
  for (const int variant : {0, 1, 2}) {
    // 0: all-reduce with dp.backward(loss); 1: ZeRO-1 with dp.backward(loss); 2: all-reduce with a
    // plain loss.backward().
    const bool shard = variant == 1, plain = variant == 2;
    Generator g1{11, 0};
    TinyNet<T> net(g1);
    net.to(dev);
    dist::DataParallelOptions o;
    o.bucket_bytes = 96 * static_cast<std::int64_t>(sizeof(T));
    o.shard_gradients = shard;
    dist::DataParallel<T> dp(comm, net.parameters(), o);
    const Tensor<T> loss = loss_of(net, r * (B / W), B / W);
    if (plain)
      loss.backward();
    else
      dp.backward(loss);
    dp.finish();
    EXPECT_GT(dp.buckets(), 3u);
    if (plain)  // the first bucket holds `unused`, which no backward reaches: it blocks them all
      EXPECT_EQ(dp.buckets_started_early(), 0);
    else  // unreached parameters are handed over before backward: every bucket starts during it
      EXPECT_EQ(dp.buckets_started_early(), static_cast<std::int64_t>(dp.buckets()));
    const std::vector<Tensor<T>> params = net.parameters();
    if (!shard) {
      for (std::size_t i = 0; i + 1 < params.size(); ++i) {
        ASSERT_TRUE(params[i].grad().defined()) << "parameter " << i;
        EXPECT_LE(kiln::testing::relative_error(params[i].grad(), ref[i].grad()), tol) << "parameter " << i;
      }
      EXPECT_FALSE(params.back().grad().defined()) << "no rank used `unused`: no gradient";
      EXPECT_FALSE(ref.back().grad().defined());
      continue;
    }
    // ZeRO-1: shard b of rank r holds elements [r·S, (r+1)·S) of bucket b, summed over ranks.
    for (std::size_t b = 0; b < dp.buckets(); ++b) {
      const dist::Bucket& layout = dp.layout(b);
      const std::int64_t S = layout.padded / W;
      std::vector<double> want(static_cast<std::size_t>(layout.padded), 0.0);
      for (const dist::BucketEntry& e : layout.entries) {
        if (!ref[e.param].grad().defined()) continue;
        const auto g = ref[e.param].grad().to_vector();
        for (std::int64_t k = 0; k < e.numel; ++k)
          want[static_cast<std::size_t>(e.offset + k)] = static_cast<double>(g[static_cast<std::size_t>(k)]);
      }
      const auto got = dp.shard(b).to_vector();
      std::vector<double> got_avg, want_mine;
      for (std::int64_t k = 0; k < S; ++k) {
        got_avg.push_back(static_cast<double>(got[static_cast<std::size_t>(k)]) / W);
        want_mine.push_back(want[static_cast<std::size_t>(r * S + k)]);
      }
      EXPECT_LE(kiln::testing::relative_error(got_avg, want_mine), tol) << "bucket " << b;
    }
    for (const auto& p : params) EXPECT_FALSE(p.grad().defined()) << "shard mode drops the parameters' gradients";
  }
}

// ZeRO-1 in bf16 (FP32 master weights sharded) matches the unsharded AdamW bit for bit.
inline void check_zero_bf16(const std::shared_ptr<dist::Communicator>& comm, Device dev) {
  DpRun ddp, zero;
  ddp.mode = Mode::all_reduce;
  zero.mode = Mode::zero;
  const auto a = train_tiny_net<bf16>(comm, dev, ddp);
  const auto z = train_tiny_net<bf16>(comm, dev, zero);
  EXPECT_TRUE(bitwise_equal(a, z));
  expect_replicas_in_sync(*comm, z);
}

// Every rank must bring the same parameters.
inline void check_parameter_mismatch(const std::shared_ptr<dist::Communicator>& comm, Device dev) {
  Tensor<float> a = zeros<float>({3, 4}, dev), b = zeros<float>({5}, dev);
  a.requires_grad_();
  b.requires_grad_();
  std::vector<Tensor<float>> params{a};
  if (comm->rank() == 1) params.push_back(b);
  EXPECT_KILN_ERROR({ dist::DataParallel<float> dp(comm, params); }, "dist::DataParallel",
                    "ranks disagree on the parameters", "rank 0 has 1 parameters (12 elements",
                    "rank 1 has 2 (17 elements");
  // Same count and size, in another order.
  const std::vector<Tensor<float>> swapped = comm->rank() == 1 ? std::vector<Tensor<float>>{b, a}
                                                               : std::vector<Tensor<float>>{a, b};
  EXPECT_KILN_ERROR({ dist::DataParallel<float> dp(comm, swapped); }, "dist::DataParallel",
                    "ranks disagree on parameter 0: rank 0 has 12 elements, rank 1 has 5");
  // A problem one rank finds with its own arguments is reported by every rank.
  const std::vector<Tensor<float>> frozen{comm->rank() == 1 ? zeros<float>({3, 4}, dev) : a};
  EXPECT_KILN_ERROR({ dist::DataParallel<float> dp(comm, frozen); }, "dist::DataParallel",
                    "rank 1's parameter 0 is not a leaf that requires grad");
  Tensor<float> transposed = transpose(zeros<float>({4, 3}, dev), 0, 1).detach();
  transposed.requires_grad_();
  const std::vector<Tensor<float>> strided{comm->rank() == 0 ? transposed : a};
  EXPECT_KILN_ERROR({ dist::DataParallel<float> dp(comm, strided); }, "dist::DataParallel",
                    "rank 0's parameter 0 is not contiguous");
}

// A tiny DeepSeek-V3 (MLA, MoE with replicated experts, MTP, balance loss) trained data parallel
// equals one process on the whole batch, aux-loss-free biases included (global expert load).
template <class T>
void check_deepseek_data_parallel(const std::shared_ptr<dist::Communicator>& comm, Device dev, double tol, bool zero) {
  const int W = comm->size(), r = comm->rank();
  nn::DeepseekV3Config c = kiln::testing::tiny_deepseek_config(0.2);
  c.seq_aux_loss_alpha = 0.01;
  c.aux_loss_free_gamma = 0.01;
  const std::int64_t B = 2 * W, S = 6;
  const optim::AdamWOptions adamw{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-3, .weight_decay = 0.1};
  auto run = [&](bool distributed) {
    Generator gen{5, 0};
    nn::DeepseekV3ForCausalLM<T> model(c, gen);
    model.to(dev);
    dist::DataParallelOptions o;
    o.bucket_bytes = 4096;
    o.shard_gradients = zero;
    std::unique_ptr<dist::DataParallel<T>> dp;
    std::unique_ptr<dist::ShardedAdamW<T>> sharded;
    std::unique_ptr<optim::AdamW<T>> adam;
    if (distributed) dp = std::make_unique<dist::DataParallel<T>>(comm, model.parameters(), o);
    if (distributed && zero)
      sharded = std::make_unique<dist::ShardedAdamW<T>>(*dp, adamw);
    else
      adam = std::make_unique<optim::AdamW<T>>(model.parameters(), adamw);
    for (int step = 0; step < 3; ++step) {
      std::vector<std::int64_t> ids, targets;
      Generator g{77, static_cast<std::uint64_t>(step) * 1000};
      const auto tokens = randint<std::int64_t>(0, c.vocab_size, {B, S + 1}, Device::cpu(), g).to_vector();
      const std::int64_t rows = distributed ? B / W : B, first = distributed ? r * rows : 0;
      for (std::int64_t b = first; b < first + rows; ++b)
        for (std::int64_t s = 0; s < S; ++s) {
          ids.push_back(tokens[static_cast<std::size_t>(b * (S + 1) + s)]);
          targets.push_back(tokens[static_cast<std::size_t>(b * (S + 1) + s + 1)]);
        }
      const auto out = model.forward_with_loss(to(Tensor<std::int64_t>::from_vector(ids, {rows, S}), dev),
                                               to(Tensor<std::int64_t>::from_vector(targets, {rows, S}), dev));
      out.loss.backward();
      if (dp) dp->finish();
      if (sharded)
        sharded->step();
      else
        adam->step();
      if (distributed)
        dist::update_balance(*comm, model, c.aux_loss_free_gamma);
      else
        model.update_balance();
      model.zero_grad();
    }
    std::vector<Tensor<T>> state;
    for (const auto& [name, t] : model.state()) state.push_back(t.detach());
    return state;
  };
  const auto ref = run(false);
  const auto got = run(true);
  std::string which;
  EXPECT_LE(max_relative_error(got, ref, &which), tol) << which;
  expect_replicas_in_sync(*comm, got);
}

}  // namespace kiln::dist_test
