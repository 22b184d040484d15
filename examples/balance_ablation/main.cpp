// MoE load-balancing ablation: the pretraining example's small DeepSeek-V3-style model trained
// three times on the same data from the same initialisation —
//   none            γ = 0,     α = 0      no balancing at all
//   auxiliary loss  γ = 0,     α = 0.01   the sequence-wise balance loss alone
//   aux-loss-free   γ = 0.001, α = 0      the bias update of DeepSeek-V3 (bias_i += γ·sign(mean − load_i))
// — and reports for each the final validation loss (next-token cross-entropy on held-out problems)
// and MaxVio = max_i load_i / mean_load − 1: over the whole validation set per MoE layer (the mean
// over layers and the worst layer), and over training batches (the last fifth of the steps).
// Writes the table, the command and the machine to docs/moe-balancing.md (--report).
//
//   balance_ablation [--steps N] [--batch N] [--seq N] [--lr X] [--gamma X] [--alpha X] [--threads N]
//                    [--seeds N] [--report FILE]
// --seeds N repeats the three runs for N seeds (initialisation and batch order; the corpus stays)
// and reports the mean and each seed's numbers, to show how much of a difference is noise.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include <kiln/kiln.hpp>
#include <kiln/train/trainer.hpp>

#include "../pretrain/task_data.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;

struct Variant {
  std::string name;
  double gamma, alpha;
};

struct Result {
  Variant variant;
  std::uint64_t seed = 0;
  double val_loss = 0, val_vio_mean = 0, val_vio_max = 0, train_vio_mean = 0, train_vio_max = 0, seconds = 0;
  std::vector<double> val_vio_per_layer;
  std::vector<std::int64_t> layers;
};

}  // namespace

int main(int argc, char** argv) try {
  example::Flags f(argc, argv);
  if (f.has("help")) {
    std::puts("balance_ablation [--steps N=300] [--batch N=16] [--seq N=128] [--lr X=3e-3] [--gamma X=0.001] "
              "[--alpha X=0.01] [--docs N=6000] [--seed N=1] [--seeds N=1] [--threads N=1] [--log-every N=50] "
              "[--report FILE=docs/moe-balancing.md]");
    return 0;
  }
  const std::int64_t steps = f.integer("steps", 300), batch = f.integer("batch", 16), seq = f.integer("seq", 128);
  const double lr = f.real("lr", 3e-3), gamma = f.real("gamma", 0.001), alpha = f.real("alpha", 0.01);
  const std::int64_t docs = f.integer("docs", 6000), threads = f.integer("threads", 1);
  const std::int64_t log_every = f.integer("log-every", 50);
  const auto seed = static_cast<std::uint64_t>(f.integer("seed", 1));
  const std::int64_t seeds = f.integer("seeds", 1);
  const std::string report = f.str("report", "docs/moe-balancing.md");
  f.check_all_used();
  if (steps < 1 || batch < 1 || seq < 2 || docs < 10 || threads < 1 || seeds < 1 || !(lr > 0))
    throw Error("steps, batch, docs, threads, seeds must be positive, seq >= 2, lr > 0");
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(threads));
#endif
  const auto start = Clock::now();

  // The pretraining example's data, tokenizer and small model.
  const example::Corpus corpus =
      example::make_corpus(seed, static_cast<std::size_t>(docs), static_cast<std::size_t>(std::max<std::int64_t>(docs / 20, 200)));
  const data::Tokenizer tok = example::train_tokenizer(corpus, 512, 1500);
  const auto train_stream = example::pack(tok, corpus.train);
  const auto validation_stream = example::pack(tok, corpus.validation);
  const std::int64_t eval_batches = 8;

  const std::vector<Variant> variants = {
      {"none", 0.0, 0.0}, {"auxiliary loss", 0.0, alpha}, {"aux-loss-free", gamma, 0.0}};
  // One training run of variant v from seed run_seed.
  auto run_one = [&](const Variant& v, std::uint64_t run_seed) {
    std::printf("=== %s (gamma %g, alpha %g), seed %llu\n", v.name.c_str(), v.gamma, v.alpha,
                static_cast<unsigned long long>(run_seed));
    nn::DeepseekV3Config config = example::small_config(example::padded_vocab(tok.vocab_size()));
    config.aux_loss_free_gamma = v.gamma;
    config.seq_aux_loss_alpha = v.alpha;
    Generator init{run_seed, 0};
    nn::DeepseekV3ForCausalLM<float> model(config, init);
    train::TrainerOptions o;
    o.steps = steps;
    o.schedule = {.peak_lr = lr, .min_lr = lr / 10, .warmup_steps = steps / 20, .total_steps = steps};
    o.log_every = log_every;
    o.eval_batches = eval_batches;
    o.data_seed = run_seed;
    train::Trainer trainer(model, o, example::train_batches(train_stream, batch, seq, run_seed * 1000003ull + 17),
                           example::validation_batches(validation_stream, batch, seq));
    const auto t0 = Clock::now();
    trainer.run();
    Result r;
    r.variant = v;
    r.seed = run_seed;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const train::EvalRecord& e = trainer.eval_history().back();
    r.val_loss = e.loss;
    r.val_vio_mean = e.max_vio_mean;
    r.val_vio_max = e.max_vio_max;
    r.val_vio_per_layer = e.max_vio;
    for (const auto& l : model.load_stats()) r.layers.push_back(l.layer);
    // Training MaxVio_batch over the last fifth of the steps.
    const auto& h = trainer.history();
    const std::size_t from = h.size() - std::max<std::size_t>(h.size() / 5, 1);
    for (std::size_t i = from; i < h.size(); ++i) {
      r.train_vio_mean += h[i].max_vio_mean / static_cast<double>(h.size() - from);
      r.train_vio_max = std::max(r.train_vio_max, h[i].max_vio_max);
    }
    return r;
  };
  std::vector<Result> results;  // seed-major: results[s * 3 + variant]
  for (std::int64_t k = 0; k < seeds; ++k)
    for (const Variant& v : variants) results.push_back(run_one(v, seed + static_cast<std::uint64_t>(k)));
  const double total = std::chrono::duration<double>(Clock::now() - start).count();

  // The report.
  std::string command = "balance_ablation";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  std::string md;
  md += "# MoE load balancing: none vs auxiliary loss vs aux-loss-free\n\n";
  md += "Generated by `examples/balance_ablation` (do not edit by hand; rerun it).\n\n";
  md += "The pretraining example's small DeepSeek-V3-style model (hidden 128, MLA, 1 dense + 1 MoE layer of 8 routed\n"
        "experts, top-2 in 2 groups with 1 kept, 1 shared expert, and an MTP block whose MLP is MoE too: 2 MoE layers,\n"
        "`model.layers.1` and `model.layers.2`) trained three times from the same initialisation on the same batches of\n"
        "worked arithmetic / Countdown solutions (docs/training.md):\n\n"
        "- **none**: γ = 0, α = 0. The router's bias stays 0 and nothing pushes toward balance.\n"
        "- **auxiliary loss**: γ = 0, sequence-wise balance loss with weight α (DeepSeek-V3 eq. 17-20).\n"
        "- **aux-loss-free**: after each optimizer step bias_i += γ·sign(mean load − load_i) over the step's\n"
        "  expert counts; the bias only affects which experts are chosen, not the gates (DeepSeek-V3 §2.1.2).\n\n";
  md += "MaxVio = max_i load_i / mean load − 1 (0 = perfectly balanced; with 8 experts the worst case, all routes\n"
        "on 2 experts, is 3). *val MaxVio* counts the routes of the whole validation set (the final model on\n"
        "held-out problems) per MoE layer: the mean over the layers and the worst layer. *train MaxVio* is the\n"
        "per-step batch MaxVio averaged over the last fifth of training (mean over layers), and its largest\n"
        "single-layer value there. *val loss* is the next-token cross-entropy (nats/token) on held-out problems, so\n"
        "it is comparable across the variants (the balance loss is not included).\n\n";
  md += str("Command: `", command, "` (", steps, " steps of ", batch, " x ", seq, " tokens, peak lr ", lr, ", ", seeds,
            " seed(s), ", threads, " thread(s))  \nMachine: ", example::cpu_description(), "; ", date, "; total ",
            static_cast<long long>(total + 0.5), " s\n\n");
  std::vector<Result> means;
  md += "| variant | γ | α | val loss | val MaxVio (mean) | val MaxVio (max) | train MaxVio (mean) | train MaxVio (max) | time |\n";
  md += "|---|---|---|---|---|---|---|---|---|\n";
  // Means over the seeds (time: per run).
  for (std::size_t k = 0; k < variants.size(); ++k) {
    Result m;
    m.variant = variants[k];
    m.val_vio_per_layer.assign(results[k].val_vio_per_layer.size(), 0.0);
    for (std::size_t i = k; i < results.size(); i += variants.size()) {
      const Result& r = results[i];
      const double w = 1.0 / static_cast<double>(seeds);
      m.val_loss += w * r.val_loss;
      m.val_vio_mean += w * r.val_vio_mean;
      m.val_vio_max += w * r.val_vio_max;
      m.train_vio_mean += w * r.train_vio_mean;
      m.train_vio_max += w * r.train_vio_max;
      m.seconds += w * r.seconds;
      for (std::size_t l = 0; l < m.val_vio_per_layer.size(); ++l) m.val_vio_per_layer[l] += w * r.val_vio_per_layer[l];
    }
    means.push_back(m);
    char row[512];
    std::snprintf(row, sizeof row, "| %s | %g | %g | %.4f | %.3f | %.3f | %.3f | %.3f | %.0f s |\n",
                  m.variant.name.c_str(), m.variant.gamma, m.variant.alpha, m.val_loss, m.val_vio_mean, m.val_vio_max,
                  m.train_vio_mean, m.train_vio_max, m.seconds);
    md += row;
  }
  if (seeds > 1) {
    md += "\nThe table holds means over seeds " + std::to_string(seed) + ".." + std::to_string(seed + seeds - 1) +
          "; each seed:\n\n| variant | seed | val loss | val MaxVio (mean) | val MaxVio (max) | train MaxVio (mean) |\n"
          "|---|---|---|---|---|---|\n";
    for (const Result& r : results) {
      char row[256];
      std::snprintf(row, sizeof row, "| %s | %llu | %.4f | %.3f | %.3f | %.3f |\n", r.variant.name.c_str(),
                    static_cast<unsigned long long>(r.seed), r.val_loss, r.val_vio_mean, r.val_vio_max, r.train_vio_mean);
      md += row;
    }
  }
  md += "\nPer layer, val MaxVio" + std::string(seeds > 1 ? " (mean over seeds)" : "") + ":\n\n| variant |";
  for (auto l : results.front().layers) md += str(" layer ", l, " |");
  md += "\n|---|";
  for (std::size_t i = 0; i < results.front().layers.size(); ++i) md += "---|";
  md += "\n";
  for (const Result& r : means) {
    md += "| " + r.variant.name + " |";
    for (double x : r.val_vio_per_layer) {
      char cell[32];
      std::snprintf(cell, sizeof cell, " %.3f |", x);
      md += cell;
    }
    md += "\n";
  }
  io::write_file_atomically(report, md, "balance_ablation");
  std::fputs(md.c_str(), stdout);
  std::printf("\nwrote %s\n", report.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "balance_ablation: %s\n", e.what());
  return 1;
}
