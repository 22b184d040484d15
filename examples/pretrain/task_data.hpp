// What the pretraining examples (pretrain, balance_ablation) share: the corpus of worked task
// solutions, its tokenizer, the packed token streams, the batch functions the trainer reads, the
// model configurations and a small command-line parser.
//
// Corpus. Documents are data::training_text(problem) — prompt plus <think> worked solution </think>
// <answer>...</answer> — for arithmetic and Countdown problems (data/tasks.hpp). Training documents
// come from the train split, validation documents from the test split, so validation measures
// problems never seen in training (the format and the reasoning steps are, of course, shared).
//
// Packing. Each split is one token stream: bos, document, eos, bos, document, eos, ... A training
// micro-batch i holds B windows of S + 1 tokens at offsets drawn by Philox from (seed, i): a pure
// function of i, as the trainer's resume needs. Validation batch i holds consecutive windows of
// the validation stream, so the validation set is the same for every run.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <kiln/data/tasks.hpp>
#include <kiln/data/tokenizer.hpp>
#include <kiln/nn/config.hpp>
#include <kiln/train/trainer.hpp>

namespace example {

// ---- command line -------------------------------------------------------------------------------

// --name value flags (and --name alone for booleans listed in `switches`).
class Flags {
 public:
  Flags(int argc, char** argv, const std::vector<std::string>& switches = {}) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw kiln::Error("unexpected argument \"" + a + "\" (see --help)");
      a = a.substr(2);
      bool is_switch = false;
      for (const auto& s : switches) is_switch |= s == a;
      if (is_switch || a == "help") {
        values_[a] = "1";
        continue;
      }
      if (i + 1 >= argc) throw kiln::Error("flag --" + a + " needs a value");
      values_[a] = argv[++i];
    }
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  // A value as if given on the command line (a preset's defaults).
  void set(const std::string& name, const std::string& value) { values_[name] = value; }
  std::string str(const std::string& name, const std::string& fallback) const {
    used_[name] = true;
    return has(name) ? values_.at(name) : fallback;
  }
  std::int64_t integer(const std::string& name, std::int64_t fallback) const {
    const std::string v = str(name, std::to_string(fallback));
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end) throw kiln::Error("--" + name + " expects an integer, got \"" + v + "\"");
    return x;
  }
  double real(const std::string& name, double fallback) const {
    std::ostringstream os;
    os.precision(17);
    os << fallback;
    const std::string v = str(name, os.str());
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end) throw kiln::Error("--" + name + " expects a number, got \"" + v + "\"");
    return x;
  }
  bool flag(const std::string& name) const {
    used_[name] = true;
    return has(name);
  }
  // Every given flag must have been read.
  void check_all_used() const {
    for (const auto& [name, value] : values_)
      if (!used_.count(name)) throw kiln::Error("unknown flag --" + name + " (see --help)");
  }

 private:
  std::map<std::string, std::string> values_;
  mutable std::map<std::string, bool> used_;
};

// ---- corpus and tokenizer -----------------------------------------------------------------------

// The task mix of the corpus: arithmetic with 1..max_digits-digit operands (1-3 by default) and
// Countdown with 3-4 numbers (short enough worked solutions for a small context), Countdown making
// up `countdown_fraction` of the documents.
inline kiln::data::TaskMix task_mix(int max_digits = 3, double countdown_fraction = 0.5) {
  kiln::data::TaskMix mix;
  mix.arithmetic.min_digits = 1;
  mix.arithmetic.max_digits = max_digits;
  mix.countdown.min_numbers = 3;
  mix.countdown.max_numbers = 4;
  mix.countdown.max_target = 200;
  mix.countdown_fraction = countdown_fraction;
  return mix;
}

struct Corpus {
  std::vector<std::string> train, validation;
};

// direct_fraction: the share of documents that answer without working the steps
// (data::worked_corpus).
inline Corpus make_corpus(std::uint64_t seed, std::size_t train_docs, std::size_t validation_docs,
                          const kiln::data::TaskMix& mix = task_mix(), double direct_fraction = 0.0) {
  kiln::Generator train_gen{seed, 0}, validation_gen{seed + 1, 0};
  return {kiln::data::worked_corpus(mix, train_gen, train_docs, kiln::data::Split::train, direct_fraction),
          kiln::data::worked_corpus(mix, validation_gen, validation_docs, kiln::data::Split::test, direct_fraction)};
}

// A byte-level BPE tokenizer learned on the first `sample_docs` training documents.
inline kiln::data::Tokenizer train_tokenizer(const Corpus& corpus, std::int64_t vocab_size, std::size_t sample_docs) {
  std::string text;
  for (std::size_t i = 0; i < corpus.train.size() && i < sample_docs; ++i) text += corpus.train[i] + "\n";
  return kiln::data::Tokenizer::train(text, vocab_size);
}

// bos doc eos bos doc eos ...
inline std::vector<std::int64_t> pack(const kiln::data::Tokenizer& tok, const std::vector<std::string>& docs) {
  const std::int64_t bos = tok.bos_id().value(), eos = tok.eos_id().value();
  std::vector<std::int64_t> stream;
  for (const auto& d : docs) {
    stream.push_back(bos);
    const auto ids = tok.encode(d);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(eos);
  }
  return stream;
}

// ---- batches ------------------------------------------------------------------------------------

inline kiln::train::Batch window_batch(const std::vector<std::int64_t>& stream, const std::vector<std::int64_t>& starts,
                                       std::int64_t S) {
  std::vector<std::int64_t> ids, targets;
  ids.reserve(starts.size() * static_cast<std::size_t>(S));
  targets.reserve(starts.size() * static_cast<std::size_t>(S));
  for (const std::int64_t s : starts) {
    ids.insert(ids.end(), stream.begin() + s, stream.begin() + s + S);
    targets.insert(targets.end(), stream.begin() + s + 1, stream.begin() + s + S + 1);
  }
  const std::int64_t B = static_cast<std::int64_t>(starts.size());
  return {kiln::Tensor<std::int64_t>::from_vector(ids, {B, S}), kiln::Tensor<std::int64_t>::from_vector(targets, {B, S})};
}

// Training micro-batch i: B windows at Philox-drawn offsets (counters i·B .. i·B + B − 1).
inline kiln::train::BatchFn train_batches(const std::vector<std::int64_t>& stream, std::int64_t B, std::int64_t S,
                                          std::uint64_t seed) {
  const std::int64_t n = static_cast<std::int64_t>(stream.size());
  if (n < S + 2) throw kiln::Error("the training stream has " + std::to_string(n) + " tokens, fewer than seq + 2");
  return [&stream, B, S, seed, n](std::int64_t i) {
    std::vector<std::int64_t> starts;
    for (std::int64_t b = 0; b < B; ++b) {
      const double u = kiln::uniform_at(seed, static_cast<std::uint64_t>(i * B + b));
      starts.push_back(static_cast<std::int64_t>(u * static_cast<double>(n - S - 1)));
    }
    return window_batch(stream, starts, S);
  };
}

// Validation batch i: windows i·B .. i·B + B − 1 of the stream cut into consecutive windows.
inline kiln::train::BatchFn validation_batches(const std::vector<std::int64_t>& stream, std::int64_t B,
                                               std::int64_t S) {
  const std::int64_t windows = (static_cast<std::int64_t>(stream.size()) - 1) / S;
  if (windows < 1) throw kiln::Error("the validation stream is shorter than one window");
  return [&stream, B, S, windows](std::int64_t i) {
    std::vector<std::int64_t> starts;
    for (std::int64_t b = 0; b < B; ++b) starts.push_back(((i * B + b) % windows) * S);
    return window_batch(stream, starts, S);
  };
}

// ---- model configurations -----------------------------------------------------------------------

// The CPU default: nn::DeepseekV3Config's defaults (MLA, 1 dense + 1 MoE layer of 8 routed experts
// top-2 in 2 groups, 1 shared expert, 1 MTP depth), hidden 128, with the tokenizer's vocabulary.
inline kiln::nn::DeepseekV3Config small_config(std::int64_t vocab) {
  kiln::nn::DeepseekV3Config c;
  c.vocab_size = vocab;
  c.max_position_embeddings = 1024;
  return c;
}

// About 100M parameters for a GPU: hidden 768, 7 layers (1 dense + 6 MoE of 8 routed experts top-2
// in 4 groups, 1 shared expert), MLA with 12 heads, 1 MTP depth.
inline kiln::nn::DeepseekV3Config big_config(std::int64_t vocab) {
  kiln::nn::DeepseekV3Config c;
  c.vocab_size = vocab;
  c.hidden_size = 768;
  c.intermediate_size = 2048;
  c.moe_intermediate_size = 512;
  c.num_hidden_layers = 7;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 12;
  c.num_key_value_heads = 12;
  c.n_shared_experts = 1;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.kv_lora_rank = 256;
  c.q_lora_rank = 384;
  c.qk_rope_head_dim = 32;
  c.qk_nope_head_dim = 64;
  c.v_head_dim = 64;
  c.first_k_dense_replace = 1;
  c.max_position_embeddings = 4096;
  return c;
}

// The students of the R1 pipeline (examples/r1_pipeline), a fraction of small's and big's size
// with the same architecture (MLA, MoE, MTP), as R1-Distill's students are smaller than the teacher.
// tiny (CPU): hidden 64, 2 heads, experts of width 32; 0.26M parameters, between a third and a quarter of small.
inline kiln::nn::DeepseekV3Config tiny_config(std::int64_t vocab) {
  kiln::nn::DeepseekV3Config c = small_config(vocab);
  c.hidden_size = 64;
  c.intermediate_size = 192;
  c.moe_intermediate_size = 32;
  c.num_attention_heads = c.num_key_value_heads = 2;
  c.kv_lora_rank = 16;
  c.q_lora_rank = 24;
  return c;
}

// medium (GPU): hidden 384, 4 layers (1 dense + 3 MoE), 6 heads; 16M parameters, a sixth of big.
inline kiln::nn::DeepseekV3Config medium_config(std::int64_t vocab) {
  kiln::nn::DeepseekV3Config c = big_config(vocab);
  c.hidden_size = 384;
  c.intermediate_size = 1024;
  c.moe_intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = c.num_key_value_heads = 6;
  c.kv_lora_rank = 128;
  c.q_lora_rank = 192;
  return c;
}

// Dense students of another family (R1-Distill's students were Qwen2.5 and Llama models, dense
// and of other architectures than the MoE teacher): Llama with grouped-query attention (3 query
// heads to a key-value head, as Llama 3), SwiGLU MLPs, no MoE, no MTP. Each has about the
// parameters of the DeepSeek-V3-style student of its size, all of them active for every token.
// llama-tiny (CPU): hidden 64, 2 layers, 3 query heads of 32 over 1 kv head (the attention width,
// 96, is not the hidden size: head_dim is set), SwiGLU 384; 0.25M parameters at the CPU's
// vocabulary of 512 (tiny: 0.26M).
inline kiln::nn::LlamaConfig llama_tiny_config(std::int64_t vocab) {
  kiln::nn::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 384;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 1;
  c.head_dim = 32;
  c.max_position_embeddings = 1024;
  return c;
}

// llama-medium (GPU): hidden 384, 6 layers, 6 query heads of 64 over 2 kv heads, SwiGLU 1536;
// 14.6M parameters at the GPU's vocabulary of 2048 (medium: 16.1M, its routed experts a quarter
// active).
inline kiln::nn::LlamaConfig llama_medium_config(std::int64_t vocab) {
  kiln::nn::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 384;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 4096;
  return c;
}

// The --config names: DeepSeek-V3-style small, big, tiny, medium; Llama llama-tiny, llama-medium.
inline const std::vector<std::string>& config_names() {
  static const std::vector<std::string> names{"small", "big", "tiny", "medium", "llama-tiny", "llama-medium"};
  return names;
}
inline bool is_config_name(const std::string& name) {
  for (const std::string& n : config_names())
    if (n == name) return true;
  return false;
}
inline bool is_llama_config(const std::string& name) { return name.rfind("llama-", 0) == 0; }

// The model of a DeepSeek-V3-style --config name (small, big, tiny, medium).
inline kiln::nn::DeepseekV3Config named_config(const std::string& name, std::int64_t vocab) {
  if (name == "big") return big_config(vocab);
  if (name == "tiny") return tiny_config(vocab);
  if (name == "medium") return medium_config(vocab);
  return small_config(vocab);
}

// The model of a Llama --config name (llama-tiny, llama-medium).
inline kiln::nn::LlamaConfig named_llama_config(const std::string& name, std::int64_t vocab) {
  return name == "llama-medium" ? llama_medium_config(vocab) : llama_tiny_config(vocab);
}

// Whether a --config name is a GPU-sized one (big, medium, llama-medium): it picks the GPU defaults.
inline bool gpu_sized(const std::string& name) { return name == "big" || name == "medium" || name == "llama-medium"; }

// The vocabulary rounded up to a multiple of 64 (ids beyond the tokenizer's are never seen).
inline std::int64_t padded_vocab(std::int64_t n) { return (n + 63) / 64 * 64; }

// Runs `python3 SCRIPT ARGS` with the first Python for which it succeeds: Debian's /usr/bin/python3
// (where scripts/install-deps.sh installs matplotlib), then the python3 on PATH (a virtual
// environment or pyenv may shadow it without matplotlib). ARGS are passed as written (quote them).
inline bool run_python(const std::string& script, const std::string& args) {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(python) + " '" + script + "' " + args;
    if (std::system(cmd.c_str()) == 0) return true;
  }
  return false;
}

// "model name @ N cores" from /proc/cpuinfo (Linux), for reports.
inline std::string cpu_description() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model;
  int cores = 0;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0 && model.empty()) model = line.substr(line.find(':') + 2);
    if (line.rfind("processor", 0) == 0) ++cores;
  }
  if (model.empty()) model = "unknown CPU";
  return model + ", " + std::to_string(cores) + " logical cores";
}

}  // namespace example
