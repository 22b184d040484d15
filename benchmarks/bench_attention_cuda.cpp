// Causal attention for training on CUDA: kiln's fused kernel (fused_causal_attention,
// kernels/attention/attention.cuh) against kiln's composed path (nn::causal_attention: matmul,
// masked_fill, softmax, matmul, with the S x S scores in memory), forward and forward+backward,
// bf16, at the shapes of issue 17 and two more ("fused": the automatic choice of both kernels;
// "plain" and "hopper": the mma.sync and the wgmma forward by name, the Hopper one needing an sm_90
// GPU, both with the plain backward; "hopper_bwd": the wgmma forward and the wgmma backward,
// attention_backward_hopper.cuh): B4 H16 S2048 and S4096 with qk 192, v 128 (DeepSeek-V3's MLA
// head dims) and kiln's big config B32 H12 S512 with qk 96, v 64. PyTorch's
// scaled_dot_product_attention, the peer, runs in the same call from scripts/bench_attention.sh
// (benchmarks/peers/sdpa_attention.py), which prints the ratios.
//
// TFLOP/s count the causal half, as the peer script does: forward B·H·S²·(Dk + Dv) flops
// (2 flops a multiply-add, S²/2 query-key pairs, Dk + Dv multiply-adds a pair); forward+backward
// 3.5 times that (the backward as 2.5 forwards, FlashAttention's convention; kiln's backward does
// S²(4 Dk + 3 Dv), more than that count: docs/mla.md).
//
// CUDA events around each call after 3 warm-up calls, median of 10 (benchmarks/cuda_bench.hpp).
// forward+backward: fresh leaves each call (no gradient accumulation), out.backward(dout).
//
//   ./benchmarks/bench_attention_cuda [--json FILE] [--paths fused,hopper_bwd,...] [--shapes B4H16S4096d192/128,...]
// (about a minute on an H200 with every path; --paths times only the named ones, e.g. to compare
// two builds of the kernels quickly; --shapes only the named shapes, e.g. under a profiler)
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <kiln/io/json.hpp>
#include <kiln/nn/attention.hpp>

#include "cuda_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

struct Shape4 {
  std::int64_t B, H, S, Dk, Dv;
  std::string name() const {
    return "B" + std::to_string(B) + "H" + std::to_string(H) + "S" + std::to_string(S) + "d" + std::to_string(Dk) + "/" +
           std::to_string(Dv);
  }
};

struct Timing {
  double fwd_ms = 0, fwdbwd_ms = 0, fwd_tflops = 0, fwdbwd_tflops = 0;
};

enum class Path { fused, fused_plain, fused_hopper, fused_hopper_bwd, composed };

Timing time_path(const Shape4& s, Path path, bench::Timer& timer) {
  const auto q = randn<bf16>({s.B, s.H, s.S, s.Dk}, 0.0, 1.0, gpu);
  const auto k = randn<bf16>({s.B, s.H, s.S, s.Dk}, 0.0, 1.0, gpu);
  const auto v = randn<bf16>({s.B, s.H, s.S, s.Dv}, 0.0, 1.0, gpu);
  const auto dout = randn<bf16>({s.B, s.H, s.S, s.Dv}, 0.0, 1.0, gpu);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.Dk));
  auto attend = [&](const Tensor<bf16>& qq, const Tensor<bf16>& kk, const Tensor<bf16>& vv) {
    if (path == Path::composed) return nn::causal_attention(qq, kk, vv, scale);
    using kernels::AttentionKernel;
    const auto kernel = path == Path::fused         ? AttentionKernel::automatic
                        : path == Path::fused_plain ? AttentionKernel::plain
                                                    : AttentionKernel::hopper;
    const auto backward = path == Path::fused              ? AttentionKernel::automatic
                          : path == Path::fused_hopper_bwd ? AttentionKernel::hopper
                                                           : AttentionKernel::plain;
    return fused_causal_attention(qq, kk, vv, scale, Tensor<std::int64_t>(), kernel, backward);
  };
  const bench::Runs runs{.warmup = 3, .timed = 10};
  Timing t;
  t.fwd_ms = timer.median_us([&] { (void)attend(q, k, v); }, runs) / 1e3;
  t.fwdbwd_ms = timer.median_us(
                    [&] {
                      const auto qq = q.detach().requires_grad_(), kk = k.detach().requires_grad_(),
                                 vv = v.detach().requires_grad_();
                      attend(qq, kk, vv).backward(dout);
                    },
                    runs) /
                1e3;
  const double flops = static_cast<double>(s.B * s.H) * static_cast<double>(s.S) * static_cast<double>(s.S) *
                       static_cast<double>(s.Dk + s.Dv);
  t.fwd_tflops = flops / (t.fwd_ms * 1e-3) / 1e12;
  t.fwdbwd_tflops = 3.5 * flops / (t.fwdbwd_ms * 1e-3) / 1e12;
  return t;
}

const char* path_name(Path p) {
  return p == Path::fused              ? "fused"
         : p == Path::fused_plain      ? "plain"
         : p == Path::fused_hopper     ? "hopper"
         : p == Path::fused_hopper_bwd ? "hopper_bwd"
                                       : "composed";
}

constexpr Path kPaths[] = {Path::fused, Path::fused_plain, Path::fused_hopper, Path::fused_hopper_bwd, Path::composed};

// Whether every name of a ",a,b," filter list is known; prints the unknown ones and the known
// ones otherwise (a typo in --paths or --shapes would otherwise time nothing, silently).
bool names_known(const char* what, const std::string& list, const std::vector<std::string>& known) {
  std::string unknown;
  for (std::size_t begin = 1, end; begin < list.size(); begin = end + 1) {
    end = list.find(',', begin);
    const std::string name = list.substr(begin, end - begin);
    if (name.empty() || std::find(known.begin(), known.end(), name) != known.end()) continue;
    unknown += unknown.empty() ? name : ", " + name;
  }
  if (unknown.empty()) return true;
  std::string names;
  for (const std::string& n : known) names += names.empty() ? n : ", " + n;
  std::fprintf(stderr, "bench_attention_cuda: unknown %s name(s): %s (known: %s)\n", what, unknown.c_str(),
               names.c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, only, only_shapes;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--paths") == 0 && i + 1 < argc) {
      only = "," + std::string(argv[++i]) + ",";
    } else if (std::strcmp(argv[i], "--shapes") == 0 && i + 1 < argc) {
      only_shapes = "," + std::string(argv[++i]) + ",";
    } else {
      std::fprintf(stderr,
                   "usage: bench_attention_cuda [--json FILE] [--paths fused,plain,hopper,hopper_bwd,composed] "
                   "[--shapes B4H16S2048d192/128,...]\n");
      return 2;
    }
  }
  // The three shapes, then two that locate the automatic choice's crossover (Hopper forward
  // from S 1024 on): the big config's heads at S 2048, DeepSeek-V3's head dims at S 512.
  const Shape4 shapes[] = {{4, 16, 2048, 192, 128}, {4, 16, 4096, 192, 128}, {32, 12, 512, 96, 64},
                           {8, 12, 2048, 96, 64}, {32, 16, 512, 192, 128}};
  std::vector<std::string> shape_names, path_names;
  for (const Shape4& s : shapes) shape_names.push_back(s.name());
  for (Path p : kPaths) path_names.push_back(path_name(p));
  if (!names_known("shape", only_shapes, shape_names) || !names_known("path", only, path_names)) return 2;
  if (!bench::open_device()) return 0;
  bench::Timer timer;
  std::printf("%-22s %-9s %10s %12s %14s %12s\n", "shape", "path", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms",
              "TFLOP/s");
  io::ordered_json out;
  for (const Shape4& s : shapes) {
    if (!only_shapes.empty() && only_shapes.find("," + s.name() + ",") == std::string::npos) continue;
    for (Path p : kPaths) {
      const char* path = path_name(p);
      if (!only.empty() && only.find("," + std::string(path) + ",") == std::string::npos) continue;
      const Timing t = time_path(s, p, timer);
      std::printf("%-22s %-9s %10.3f %12.1f %14.3f %12.1f\n", s.name().c_str(), path, t.fwd_ms, t.fwd_tflops,
                  t.fwdbwd_ms, t.fwdbwd_tflops);
      std::fflush(stdout);
      out[s.name()][path] = {{"fwd_ms", t.fwd_ms},
                             {"fwdbwd_ms", t.fwdbwd_ms},
                             {"fwd_tflops", t.fwd_tflops},
                             {"fwdbwd_tflops", t.fwdbwd_tflops}};
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
  return 0;
}
