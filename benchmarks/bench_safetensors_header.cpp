// Reading safetensors headers of many tensors (io/safetensors.hpp, io/json.hpp): the time must
// grow linearly with the tensor count. A DeepSeek-V3-size checkpoint in one file names tens of
// thousands of tensors; before kiln's JSON entry point (a SAX pass for depth and duplicate keys,
// then nlohmann's plain parse), a parser callback made loading quadratic: 10k tensors 0.38 s,
// 30k 9.9 s, 100k 129 s (issue 13's probe).
//
// Rows, for N tensors named like a model's ("model.layers.<i>.mlp.experts.<j>.down_proj.weight",
// one F32 element each, so the data is small and the header is what is timed):
//   kiln load      Safetensors::load of the whole file: header checks, offsets tiling the data,
//                  every tensor read (what a resume does);
//   kiln parse     io::parse_json of the header text alone (both passes);
//   plain parse    the peer: nlohmann::json::parse of the same text, no checks.
// Medians of 5 runs after one warm-up, wall clock, page cache warm (the file was just written).
//   ./benchmarks/bench_safetensors_header            (N = 10k, 30k, 100k; about 10 s)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <kiln/io/safetensors.hpp>
#include <kiln/ops/factory.hpp>

using namespace kiln;

namespace {

double median_seconds(const std::function<void()>& f) {
  f();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[2];
}

}  // namespace

int main() {
  const std::string path = (std::filesystem::temp_directory_path() / "kiln_bench_header.safetensors").string();
  std::printf("%8s %10s %14s %14s %14s %12s\n", "tensors", "header MB", "kiln load s", "kiln parse s", "plain parse s",
              "load/plain");
  for (const int n : {10000, 30000, 100000}) {
    std::vector<io::NamedTensor> tensors;
    tensors.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
      tensors.emplace_back("model.layers." + std::to_string(i / 256) + ".mlp.experts." + std::to_string(i % 256) +
                               ".down_proj.weight",
                           full<float>({1}, static_cast<float>(i)));
    io::save_safetensors(path, tensors);
    const io::Safetensors check = io::load_safetensors(path);
    if (check.size() != static_cast<std::size_t>(n)) {
      std::printf("loaded %zu tensors, expected %d\n", check.size(), n);
      return 1;
    }
    // The header text, as the file holds it (after the 8-byte length).
    std::string text;
    {
      io::InputFile f(path, "bench");
      unsigned char len[8];
      f.read_at(0, len, 8);
      std::uint64_t h = 0;
      for (int i = 7; i >= 0; --i) h = (h << 8) | len[i];
      text.resize(h);
      f.read_at(8, text.data(), h);
    }
    std::size_t sink = 0;  // uses each result, so nothing is optimised away
    const double load = median_seconds([&] { sink += io::load_safetensors(path).size(); });
    const double parse = median_seconds([&] { sink += io::parse_json(text, "bench", path).size(); });
    const double plain = median_seconds([&] { sink += io::json::parse(text).size(); });
    if (sink != 18 * static_cast<std::size_t>(n)) return 1;
    std::printf("%8d %10.2f %14.4f %14.4f %14.4f %12.2f\n", n, static_cast<double>(text.size()) / 1e6, load, parse, plain,
                load / plain);
  }
  std::filesystem::remove(path);
  return 0;
}
