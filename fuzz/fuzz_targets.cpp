// libFuzzer targets for every reader of untrusted input (issue 13). One binary, so CI compiles
// once; KILN_FUZZ_TARGET picks the target:
//   safetensors  a whole .safetensors file (header and data)     io::load_safetensors
//   config       a config.json as Llama and as DeepSeek-V3        io::config_from_json + model checks
//   tokenizer    a tokenizer.json (kiln's or Hugging Face's)      data::Tokenizer::from_json, encode/decode
//   trainer      a checkpoint's trainer.json                      io::trainer_state_from_json
//   reward       a model completion, graded on two problems       rl::grade, rl::format_score
// Each target may throw kiln::Error (a clean refusal); any other exception escapes and libFuzzer
// reports it as a crash, as it does a sanitizer finding. scripts/fuzz.sh builds and runs them.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <kiln/data/tokenizer.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/llama.hpp>
#include <kiln/rl/rewards.hpp>

using namespace kiln;

namespace {

enum class Target { safetensors, config, tokenizer, trainer, reward };
Target target = Target::safetensors;

// The bytes as a file: a memfd (a regular file in memory), opened by its /proc path as a user's
// file would be.
void fuzz_safetensors(const std::uint8_t* data, std::size_t size) {
  const int fd = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  for (std::size_t done = 0; done < size;) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
  try {
    const io::Safetensors st = io::load_safetensors("/proc/self/fd/" + std::to_string(fd));
    for (const auto& name : st.names()) (void)st.get<double>(name, io::Conversion::convert);
  } catch (const Error&) {
  }
  ::close(fd);
}

void fuzz_config(std::string_view text) {
  const io::json j = io::parse_json(text, "fuzz", "config.json");
  try {
    (void)nn::LlamaModel<float>::checked_config(io::config_from_json<nn::LlamaConfig>(j));
  } catch (const Error&) {
  }
  try {
    (void)nn::DeepseekV3Model<float>::checked_config(io::config_from_json<nn::DeepseekV3Config>(j));
  } catch (const Error&) {
  }
}

void fuzz_tokenizer(std::string_view text) {
  const data::Tokenizer tok = data::Tokenizer::from_json(io::parse_json(text, "fuzz", "tokenizer.json"), "tokenizer.json");
  const std::vector<std::int64_t> ids = tok.encode("<think>12 + 7</think> <answer>19</answer>");
  (void)tok.decode(ids);
}

void fuzz_trainer(std::string_view text) {
  (void)io::trainer_state_from_json(io::parse_json(text, "fuzz", "trainer.json"), "trainer.json");
}

void fuzz_reward(std::string_view text) {
  static const data::Problem arithmetic = data::make_arithmetic({}, 1, 0);
  static const data::Problem countdown = data::make_countdown({}, 1, 0);
  for (const data::Problem* p : {&arithmetic, &countdown}) {
    const rl::Grade g = rl::grade(*p, text);
    const double f = rl::format_score(text);
    if (!(g.score >= 0.0 && g.score <= 1.0) || !(f == 0.0 || f == 1.0)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("KILN_FUZZ_TARGET");
  const std::string t = name ? name : "";
  if (t == "safetensors") target = Target::safetensors;
  else if (t == "config") target = Target::config;
  else if (t == "tokenizer") target = Target::tokenizer;
  else if (t == "trainer") target = Target::trainer;
  else if (t == "reward") target = Target::reward;
  else {
    std::fprintf(stderr, "set KILN_FUZZ_TARGET to safetensors, config, tokenizer, trainer or reward (got \"%s\")\n", t.c_str());
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    switch (target) {
      case Target::safetensors: fuzz_safetensors(data, size); break;
      case Target::config: fuzz_config(text); break;
      case Target::tokenizer: fuzz_tokenizer(text); break;
      case Target::trainer: fuzz_trainer(text); break;
      case Target::reward: fuzz_reward(text); break;
    }
  } catch (const Error&) {
    // A clean refusal of bad input: what every reader must do.
  }
  return 0;
}
