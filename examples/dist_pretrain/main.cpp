// Data parallel pretraining of the pretrain example's DeepSeek-V3-style model (examples/pretrain),
// for scaling measurements: one process per GPU (NCCL) or per CPU rank (MPI), each on its own
// micro-batches, gradients averaged in buckets during backward (dist/data_parallel.hpp),
// optionally ZeRO-1 (dist/sharded_adamw.hpp) or expert parallel (--expert-parallel: each rank
// holds n_routed_experts / W experts of every MoE layer and the tokens travel to them,
// dist/expert_parallel.hpp); the MoE biases follow the global expert load (dist/expert_load.hpp).
// Rank 0 prints progress and, at the end, tokens/s for this world size:
//
//   mpirun -np 1 dist_pretrain --device cuda --config big --steps 60
//   mpirun -np 8 dist_pretrain --device cuda --config big --steps 60          (8 GPUs, one host)
//   mpirun -np 2 --oversubscribe dist_pretrain --steps 20 --threads 1         (CPU ranks)
//   mpirun -np 2 --oversubscribe dist_pretrain --steps 20 --expert-parallel   (4 of 8 experts a rank)
//
// The per-rank batch is fixed (weak scaling: the global batch grows with the world size). Steps
// before --timed-from are warm-up and not timed. The last line is machine-readable:
//   RESULT world=8 device=cuda config=big dtype=bf16 zero=0 bucket_mb=25 tokens_per_s=... ...
// See docs/distributed.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <kiln/dist/collectives.hpp>
#include <kiln/dist/data_parallel.hpp>
#include <kiln/dist/expert_load.hpp>
#include <kiln/dist/expert_parallel.hpp>
#include <kiln/dist/mpi.hpp>
#include <kiln/dist/sharded_adamw.hpp>
#include <kiln/kiln.hpp>
#include <kiln/optim/clip.hpp>
#include <kiln/optim/schedule.hpp>
#include <kiln/train/trainer.hpp>

#include "../pretrain/task_data.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef KILN_EXAMPLE_CUDA
#include <cuda_runtime.h>

#include <kiln/backend/cuda/stream.hpp>
#include <kiln/dist/nccl.hpp>
#include <kiln/kernels/matmul/cublaslt.hpp>
#endif

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;

const char* kUsage = R"(dist_pretrain: data parallel pretraining (mpirun -np N dist_pretrain ...), tokens/s per world size

  --device cpu|cuda     cpu: MPI between CPU ranks; cuda: NCCL, one GPU per rank   [cpu]
  --config small|big    the pretrain example's configurations                      [small]
  --dtype float32|bf16  parameter dtype (bf16: FP32 master weights)    [cpu: float32, cuda: bf16]
  --steps N             optimizer steps                                            [small 40, big 60]
  --timed-from N        first timed step (earlier ones warm up)                    [small 5, big 10]
  --batch N             sequences per rank and step                                [small 8, big 16]
  --seq N               tokens per sequence                                        [small 128, big 512]
  --lr X                peak learning rate (warmup, cosine to lr/10)               [small 3e-3, big 6e-4]
  --clip X              global gradient-norm clipping                              [1.0]
  --zero                ZeRO-1: AdamW state sharded over the ranks
  --expert-parallel     the routed experts spread over the ranks (n_routed_experts / W each)
  --bucket-mb X         gradient bucket size in MB (huge: one bucket, no overlap)  [25]
  --docs N              training documents generated                               [small 6000, big 50000]
  --vocab N             BPE vocabulary size                                        [small 512, big 2048]
  --seed N              seed of corpus, model and batches                          [1]
  --log-every N         progress line every N steps (rank 0)                       [10]
  --tf32                float32 on a GPU: allow TF32 tensor cores
  --peak TFLOPS         one GPU's dense peak for MFU (default: from a table by GPU name)
  --threads N           CPU threads per rank (OpenMP, Eigen)                        [1]
)";

struct Settings {
  std::string device, config, dtype;
  std::int64_t steps, timed_from, batch, seq, docs, vocab, log_every, threads;
  double lr, clip, bucket_mb, peak_tflops;
  std::uint64_t seed;
  bool zero, tf32, expert_parallel;
};

Settings parse(int argc, char** argv) {
  example::Flags f(argc, argv, {"zero", "tf32", "expert-parallel"});
  if (f.has("help")) {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  Settings s;
  s.device = f.str("device", "cpu");
  s.config = f.str("config", "small");
  if (s.device != "cpu" && s.device != "cuda") throw Error("--device must be cpu or cuda, got " + s.device);
  if (s.config != "small" && s.config != "big") throw Error("--config must be small or big, got " + s.config);
  const bool big = s.config == "big";
  s.dtype = f.str("dtype", s.device == "cuda" ? "bf16" : "float32");
  s.steps = f.integer("steps", big ? 60 : 40);
  s.timed_from = f.integer("timed-from", big ? 10 : 5);
  s.batch = f.integer("batch", big ? 16 : 8);
  s.seq = f.integer("seq", big ? 512 : 128);
  s.lr = f.real("lr", big ? 6e-4 : 3e-3);
  s.clip = f.real("clip", 1.0);
  s.zero = f.flag("zero");
  s.expert_parallel = f.flag("expert-parallel");
  s.bucket_mb = f.real("bucket-mb", 25.0);
  s.docs = f.integer("docs", big ? 50000 : 6000);
  s.vocab = f.integer("vocab", big ? 2048 : 512);
  s.seed = static_cast<std::uint64_t>(f.integer("seed", 1));
  s.log_every = f.integer("log-every", 10);
  s.tf32 = f.flag("tf32");
  s.peak_tflops = f.real("peak", 0.0);
  s.threads = f.integer("threads", 1);
  f.check_all_used();
  if (s.steps < 1 || s.batch < 1 || s.seq < 2 || s.docs < 10 || s.vocab < 300 || !(s.lr > 0) || s.threads < 1 ||
      !(s.bucket_mb > 0) || s.timed_from < 0 || s.timed_from >= s.steps)
    throw Error("steps, batch, docs, threads, bucket-mb must be positive, seq >= 2, vocab >= 300, lr > 0, "
                "0 <= timed-from < steps");
  if (s.dtype != "float32" && s.dtype != "bf16") throw Error("--dtype must be float32 or bf16, got " + s.dtype);
  if (s.zero && s.expert_parallel)
    throw Error("--zero and --expert-parallel together are not supported yet (ZeRO-1 shards only the replicated "
                "parameters; the experts would need their own optimizer state)");
  return s;
}

std::string gpu_name(int device) {
#ifdef KILN_EXAMPLE_CUDA
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) == cudaSuccess) return p.name;
#endif
  (void)device;
  return "";
}

// Waits for the queued GPU work (step timing).
void synchronize(Device device) {
#ifdef KILN_EXAMPLE_CUDA
  if (device.is_cuda()) cuda::synchronize(device.index);
#endif
  (void)device;
}

template <class T>
int run(const Settings& s, const std::shared_ptr<dist::Communicator>& comm) {
  const int rank = comm->rank(), world = comm->size();
  const Device device = comm->device();
  const bool big = s.config == "big";
  auto say = [&](const std::string& line) {
    if (rank == 0) std::fputs(line.c_str(), stdout), std::fflush(stdout);
  };

  // Every rank builds the same corpus and tokenizer (deterministic), then draws its own batches.
  const auto t0 = Clock::now();
  const example::Corpus corpus = example::make_corpus(s.seed, static_cast<std::size_t>(s.docs),
                                                      static_cast<std::size_t>(std::max<std::int64_t>(s.docs / 20, 200)));
  const data::Tokenizer tok = example::train_tokenizer(corpus, s.vocab, big ? 4000 : 1500);
  const auto stream = example::pack(tok, corpus.train);
  const train::BatchFn batches = example::train_batches(stream, s.batch, s.seq, s.seed * 1000003ull + 17);
  say(str("data: ", stream.size(), " training tokens, vocabulary ", tok.vocab_size(), ", ",
          std::chrono::duration<double>(Clock::now() - t0).count(), " s\n"));

  const std::int64_t vocab = example::padded_vocab(tok.vocab_size());
  nn::DeepseekV3Config config = big ? example::big_config(vocab) : example::small_config(vocab);
  if (s.expert_parallel && config.n_routed_experts % world != 0)
    throw Error(str("--expert-parallel: the ", s.config, " config's ", config.n_routed_experts,
                    " routed experts do not split over ", world, " ranks"));
  Generator init{s.seed, 0};
  // Expert parallel: the same seed gives every rank the same model, each keeping its experts.
  nn::DeepseekV3ForCausalLM<T> model(config, init, s.expert_parallel ? dist::expert_exchange<T>(comm) : nullptr);
  model.to(device);

  dist::DataParallelOptions o;
  o.bucket_bytes = static_cast<std::int64_t>(s.bucket_mb * 1024 * 1024);
  o.shard_gradients = s.zero;
  // Expert parallel: the replicated parameters are averaged, this rank's experts divided by W.
  const std::vector<Tensor<T>> replicated = s.expert_parallel ? model.replicated_parameters() : model.parameters();
  const std::vector<Tensor<T>> experts = s.expert_parallel ? model.expert_parameters() : std::vector<Tensor<T>>{};
  dist::DataParallel<T> dp(comm, replicated, o, experts);
  optim::AdamWOptions adamw;
  std::unique_ptr<optim::AdamW<T>> plain;
  std::unique_ptr<dist::ShardedAdamW<T>> sharded;
  if (s.zero)
    sharded = std::make_unique<dist::ShardedAdamW<T>>(dp, adamw);
  else
    plain = std::make_unique<optim::AdamW<T>>(model.parameters(), adamw);
  const optim::CosineSchedule schedule{.peak_lr = s.lr, .min_lr = s.lr / 10,
                                       .warmup_steps = std::max<std::int64_t>(1, s.steps / 20), .total_steps = s.steps};

  const train::FlopsModel flops = train::flops_model(model);
  double peak = 0.0;
  const std::string name = gpu_name(device.index);
  if (device.is_cuda()) {
    const std::string compute = std::is_same_v<T, float> ? (s.tf32 ? "tf32" : "fp32") : "bf16";
    peak = s.peak_tflops > 0 ? s.peak_tflops * 1e12 : train::peak_flops(name, compute);
  }
  say(str("model: ", s.config, " config, ", model.num_parameters(), s.expert_parallel ? " parameters on rank 0, " : " parameters, ",
          dtype_name<T>, "; ", world,
          " rank(s) on ", device.is_cuda() ? name + " (NCCL)" : std::string("CPU (MPI)"), "; per rank ", s.batch, " x ",
          s.seq, " tokens per step; ", dp.buckets(), " gradient bucket(s) of <= ", s.bucket_mb, " MB",
          s.zero ? "; ZeRO-1" : "",
          s.expert_parallel ? str("; expert parallel, ", config.n_routed_experts / world, " of ",
                                  config.n_routed_experts, " experts per rank")
                            : std::string(),
          "\n"));

  double timed_seconds = 0.0;
  std::int64_t timed_steps = 0, early = 0, buckets = 0;
  for (std::int64_t step = 0; step < s.steps; ++step) {
    synchronize(device);
    const auto start = Clock::now();
    // Global micro-batch step·W + rank: every rank different data, a pure function of the indices.
    const train::Batch b = batches(step * world + rank);
    const auto out = model.forward_with_loss(to(b.ids, device), to(b.targets, device));
    dp.backward(out.loss);
    dp.finish();
    const double lr = schedule(step);
    double norm = 0.0;
    if (sharded) {
      norm = s.clip > 0 ? sharded->clip_grad_norm(s.clip) : 0.0;
      sharded->set_lr(lr);
      sharded->step();
    } else if (s.expert_parallel) {  // the global norm counts every rank's experts
      norm = dist::clip_grad_norm(*comm, replicated, experts, s.clip > 0 ? s.clip : 1e300);
      plain->set_lr(lr);
      plain->step();
    } else {
      norm = optim::clip_grad_norm(model.parameters(), s.clip > 0 ? s.clip : 1e300);
      plain->set_lr(lr);
      plain->step();
    }
    dist::update_balance(*comm, model, config.aux_loss_free_gamma);
    model.zero_grad();
    synchronize(device);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (step >= s.timed_from) {
      timed_seconds += seconds;
      ++timed_steps;
      early += dp.buckets_started_early();
      buckets += static_cast<std::int64_t>(dp.buckets());
    }
    if (s.log_every > 0 && (step % s.log_every == 0 || step + 1 == s.steps)) {
      Tensor<float> loss = Tensor<float>::from_vector({static_cast<float>(out.main_loss.item())}, {1}, device);
      dist::all_reduce(*comm, loss);
      const double tokens = static_cast<double>(world * s.batch * s.seq);
      say(str("step ", step + 1, "/", s.steps, " | loss ", loss.item() / world, " | lr ", lr, " | grad ", norm, " | ",
              static_cast<long long>(tokens / seconds), " tok/s\n"));
    }
  }

  // Rank 0 reports the slowest rank's time (the step is as slow as it).
  std::int64_t micros = static_cast<std::int64_t>(timed_seconds * 1e6);
  comm->all_reduce_host(&micros, 1, dist::ReduceOp::max);
  const double seconds = static_cast<double>(micros) / 1e6;
  const double tokens = static_cast<double>(timed_steps * world * s.batch * s.seq);
  const double tps = tokens / seconds, per_rank = tps / world;
  const double flops_per_rank = per_rank * flops.per_token(s.seq);
  std::string mfu = peak > 0 ? str(" | MFU ", 100.0 * flops_per_rank / peak, "%") : std::string();
  say(str("world ", world, ": ", static_cast<long long>(tps), " tokens/s (", static_cast<long long>(per_rank),
          " per rank) | step ", 1000.0 * seconds / static_cast<double>(timed_steps), " ms over ", timed_steps,
          " timed steps | ", flops_per_rank / 1e12, " TFLOP/s per rank", mfu, " | buckets started during backward ",
          early, "/", buckets, "\n"));
  say(str("RESULT world=", world, " device=", s.device, " config=", s.config, " dtype=", dtype_name<T>, " zero=",
          s.zero ? 1 : 0, " expert_parallel=", s.expert_parallel ? 1 : 0, " bucket_mb=", s.bucket_mb, " batch_per_rank=", s.batch, " seq=", s.seq,
          " tokens_per_s=", static_cast<long long>(tps), " tokens_per_s_per_rank=", static_cast<long long>(per_rank),
          " step_ms=", 1000.0 * seconds / static_cast<double>(timed_steps), "\n"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiSession mpi(&argc, &argv);
  try {
    const Settings s = parse(argc, argv);
#ifdef _OPENMP
    omp_set_num_threads(static_cast<int>(s.threads));
#endif
    auto world = dist::MpiCommunicator::world();
    std::shared_ptr<dist::Communicator> comm = world;
    if (s.device == "cuda") {
#ifdef KILN_EXAMPLE_CUDA
      const int gpus = cuda::device_count();
      if (gpus < 1) throw Error("--device cuda: no GPU found");
      comm = dist::NcclCommunicator::create(world, world->local_rank() % gpus);
      cuda::set_allow_tf32(s.tf32);
#else
      throw Error("--device cuda needs a build with the CUDA backend and NCCL (cmake -DKILN_CUDA=ON)");
#endif
    }
    const int rc = s.dtype == "bf16" ? run<bf16>(s, comm) : run<float>(s, comm);
    comm->barrier();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dist_pretrain: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);  // the other ranks may be waiting in a collective
    return 1;
  }
}
