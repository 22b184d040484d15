// Files from a hostile user (issue 13): JSON nested deep enough to overflow any recursion,
// duplicate keys, huge values quoted in error messages, strings that are not UTF-8 on save,
// destinations that are not what a save replaces, and saves killed midway.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <kiln/data/tokenizer.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/nn/llama.hpp>

#include "file_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;

// Outside the anonymous namespace: a TEST_F class derives from its fixture, and in the unity build
// (tests/CMakeLists.txt) that class lives in a named namespace, where a base from an anonymous one
// draws -Wsubobject-linkage.
class Hardening : public kiln::testing::TempDirTest {};

namespace {

namespace fsys = std::filesystem;

using kiln::testing::read_bytes;
using kiln::testing::write_bytes;

// `depth` nested arrays: 200 KB at depth 100k, the size that crashed every reader.
std::string nested_arrays(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// A safetensors file from a header text (no data).
std::string safetensors_bytes(const std::string& header) { return kiln::testing::make_safetensors_file(header, ""); }

// The message of the kiln::Error that f throws ("" if it does not throw one).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A pid that no process has: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return child;
}

}  // namespace

TEST_F(Hardening, JsonDepthIsLimitedAtSixtyFourLevels) {
  EXPECT_EQ(io::parse_json(nested_arrays(io::kMaxJsonDepth), "test", "text").dump().size(), 2 * io::kMaxJsonDepth);
  EXPECT_KILN_ERROR((void)io::parse_json(nested_arrays(io::kMaxJsonDepth + 1), "test", "text"), "kiln::test", "text",
                    "nested deeper than 64 levels");
  EXPECT_KILN_ERROR((void)io::parse_json(R"({"a": {"b": 1, "b": 2}})", "test", "text"), "the key \"b\" appears twice");
  EXPECT_KILN_ERROR((void)io::parse_json(R"({"a": 1} trailing)", "test", "text"), "not valid JSON at byte");
  // The same key in different objects is no duplicate.
  EXPECT_EQ(io::parse_json(R"({"a": {"k": 1}, "b": {"k": 2}})", "test", "text")["b"]["k"], 2);
}

// Every reader of a file meets a 200 KB file nested 100k deep with an error, not a stack overflow
// (before, error paths dumped or copied the value recursively and the process died).
TEST_F(Hardening, DeeplyNestedJsonIsAnErrorForEveryReader) {
  const std::string deep = nested_arrays(100000);
  const std::string config = path("config.json"), tok = path("tokenizer.json"), st = path("x.safetensors");
  write_bytes(config, R"({"hidden_size": )" + deep + "}");
  EXPECT_KILN_ERROR((void)io::load_config<nn::LlamaConfig>(config), config, "nested deeper than 64 levels");
  EXPECT_KILN_ERROR((void)io::load_config<nn::DeepseekV3Config>(config), config, "nested deeper than 64 levels");
  EXPECT_KILN_ERROR((void)io::config_model_type(config), config, "nested deeper than 64 levels");
  write_bytes(tok, R"({"format": )" + deep + "}");
  EXPECT_KILN_ERROR((void)data::Tokenizer::load(tok), tok, "nested deeper than 64 levels");
  write_bytes(st, safetensors_bytes(R"({"a": )" + deep + "}"));
  EXPECT_KILN_ERROR((void)io::load_safetensors(st), st, "nested deeper than 64 levels");
}

// A value from a file appears in an error by kind and size, or cut short: never dumped whole.
TEST_F(Hardening, ErrorMessagesDoNotQuoteHugeValues) {
  const std::string huge(1 << 20, 'x');
  const std::string st = path("x.safetensors"), config = path("config.json");
  write_bytes(st, safetensors_bytes(R"({"a": {"dtype": ")" + huge + R"(", "shape": [0], "data_offsets": [0, 0]}})"));
  std::string message = error_of([&] { (void)io::load_safetensors(st); });
  EXPECT_NE(message.find("unknown or unsupported dtype \"xxxx"), std::string::npos) << message.substr(0, 300);
  EXPECT_LT(message.size(), 1000u);
  std::string big_array = "[1";
  for (int i = 0; i < 100000; ++i) big_array += ",1";
  big_array += "]";
  write_bytes(st, safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": )" + big_array + "}}"));
  message = error_of([&] { (void)io::load_safetensors(st); });
  EXPECT_NE(message.find("data_offsets must be [begin, end], got an array of 100001 values"), std::string::npos) << message;
  write_bytes(config, R"({"hidden_size": ")" + huge + R"("})");
  message = error_of([&] { (void)io::load_config<nn::LlamaConfig>(config); });
  EXPECT_NE(message.find("'hidden_size' must be an integer, got \"xxx"), std::string::npos) << message.substr(0, 300);
  EXPECT_LT(message.size(), 1000u);
}

TEST_F(Hardening, DuplicateKeysInAConfigAreAnError) {
  const std::string config = path("config.json");
  write_bytes(config, R"({"hidden_size": 64, "num_attention_heads": 4, "hidden_size": 128})");
  EXPECT_KILN_ERROR((void)io::load_config<nn::LlamaConfig>(config), config, "the key \"hidden_size\" appears twice");
}

// nlohmann refuses to write a string that is not UTF-8 with its own exception; saves turn it into
// a kiln::Error and leave nothing behind.
TEST_F(Hardening, SavingInvalidUtf8IsAKilnError) {
  nn::LlamaConfig c;
  c.hidden_act = "silu\xff";
  const std::string config = path("config.json");
  EXPECT_KILN_ERROR(io::save_config(config, c), "kiln::config", config, "valid UTF-8");
  EXPECT_KILN_ERROR(io::save_safetensors(path("x.safetensors"), {io::NamedTensor("bad\xfe", zeros<float>({2}))}),
                    "valid UTF-8");
  EXPECT_TRUE(listing().empty());
}

// A save replaces only what it would write: another kind of entry at the destination is an error
// and stays as it was (before, a regular file or a symbolic link was deleted and a directory put
// in its place).
TEST_F(Hardening, SavesRefuseDestinationsOfAnotherKind) {
  Generator gen{3, 0};
  nn::LlamaConfig c;
  c.vocab_size = 8;
  c.hidden_size = 8;
  c.intermediate_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  nn::LlamaForCausalLM<float> model(c, gen);

  const std::string file = path("notes.txt");
  write_bytes(file, "keep me");
  EXPECT_KILN_ERROR(io::save_model(file, model, c), file, "exists and is a regular file, not a directory");
  EXPECT_EQ(read_bytes(file), "keep me");

  const std::string target = path("real_checkpoint"), link = path("latest");
  io::save_model(target, model, c);
  const std::string weights = read_bytes(target + "/model.safetensors");
  fsys::create_directory_symlink(target, link);
  EXPECT_KILN_ERROR(io::save_model(link, model, c), link, "exists and is a symbolic link");
  EXPECT_TRUE(fsys::is_symlink(link));
  EXPECT_EQ(read_bytes(target + "/model.safetensors"), weights);

  // Files: a directory or a symbolic link where a file would go.
  const std::string file_link = path("weights.safetensors");
  fsys::create_symlink(target + "/model.safetensors", file_link);
  const std::vector<io::NamedTensor> one = {io::NamedTensor("w", zeros<float>({2}))};
  EXPECT_KILN_ERROR(io::save_safetensors(file_link, one), file_link, "exists and is a symbolic link, not a regular file");
  EXPECT_EQ(read_bytes(target + "/model.safetensors"), weights);
  EXPECT_KILN_ERROR(io::save_safetensors(target, one), target, "exists and is a directory, not a regular file");
  EXPECT_EQ(read_bytes(target + "/model.safetensors"), weights);
}

// A save killed midway leaves no temporary file: it is written unnamed (O_TMPFILE) and named only
// once complete (before, 4 of 5 kills left "<file>.tmp.<pid>"). On a file system without
// O_TMPFILE (overlayfs before Linux 6.6, some network file systems) the named temporary stays,
// and the next save of the file removes it.
TEST_F(Hardening, AKilledSaveLeavesNoTemporaryFile) {
  const std::string file = path("big.safetensors");
  write_bytes(file, "the previous file");
  bool unnamed_files = false;
#if defined(O_TMPFILE)
  if (const int fd = ::open(dir_.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644); fd >= 0) {
    unnamed_files = true;
    ::close(fd);
  }
#endif
  const std::string chunk(1 << 20, 'x');
  const pid_t child = ::fork();
  if (child == 0) {
    io::AtomicFileWriter out(file, "test");
    for (int i = 0; i < 8; ++i) out.write(chunk);
    ::kill(::getpid(), SIGKILL);  // as a kill from outside, midway through the save
    ::_exit(1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  if (unnamed_files) {
    EXPECT_EQ(listing(), std::vector<std::string>{"big.safetensors"});
  }
  EXPECT_EQ(read_bytes(file), "the previous file");
  io::save_safetensors(file, {io::NamedTensor("w", zeros<float>({2}))});
  EXPECT_EQ(listing(), std::vector<std::string>{"big.safetensors"});
}

// Where temporaries have names (no O_TMPFILE, or a kill in the instant between naming and the
// rename), the next save of the same file removes those of processes that are gone, and only those.
TEST_F(Hardening, SavesRemoveStaleTemporariesOfTheirFile) {
  const std::string file = path("w.safetensors");
  const std::string stale = file + ".tmp." + std::to_string(dead_pid());
  const std::string live = file + ".tmp.1";  // init: alive
  const std::string not_ours = path("other.safetensors.tmp." + std::to_string(dead_pid()));
  const std::string not_a_pid = file + ".tmp.backup";
  for (const auto& p : {stale, live, not_ours, not_a_pid}) write_bytes(p, "leftover");
  io::save_safetensors(file, {io::NamedTensor("w", zeros<float>({2}))});
  EXPECT_FALSE(fsys::exists(stale));
  for (const auto& p : {live, not_ours, not_a_pid}) EXPECT_TRUE(fsys::exists(p)) << p;
  EXPECT_EQ(io::load_safetensors(file).size(), 1u);
}

// Headers of many tensors load (linear time: benchmarks/bench_safetensors_header.cpp times 100k).
TEST_F(Hardening, ManyTensorsRoundTrip) {
  const std::string file = path("many.safetensors");
  std::vector<io::NamedTensor> tensors;
  constexpr int n = 20000;
  for (int i = 0; i < n; ++i) tensors.emplace_back("layers." + std::to_string(i) + ".w", full<float>({1}, float(i)));
  io::save_safetensors(file, tensors);
  const io::Safetensors loaded = io::load_safetensors(file);
  ASSERT_EQ(loaded.size(), std::size_t(n));
  EXPECT_EQ(loaded.get<float>("layers.12345.w").item(), 12345.0f);
}
