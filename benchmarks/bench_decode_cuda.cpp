// The generation engine's kernels (infer/engine.hpp) against a device-to-device copy of the same
// bytes, in the same process:
//   sample_tokens     (ops/sampling.hpp; kernels/sampling/sampling.cuh): one token per row of
//                     logits, greedy, at temperature 1, at temperature 0.6 with top-p 0.95, and at
//                     temperature 1 with top-k 50 and top-p 0.95;
//   decode_attention  (ops/decode_attention.hpp; kernels/decode_attention/decode_attention.cuh):
//                     one query token per row over its cached past;
//   cache_write       (ops/decode_attention.hpp; kernels/decode_attention/cache_write.cuh): new
//                     latent rows into the preallocated cache.
// Every row times the public op as the engine calls it (output allocation and the kernel), bf16.
//
// Shapes. MLA as in kiln's "big" config (examples/pretrain/task_data.hpp, nn/mla.hpp's absorbed
// decode): one kv head whose cache row is [latent 256 | rope key 32] (dk 288), the values the
// latent itself (dv 256: a narrowed view of the same cache, as the model passes it), 12 query
// heads, scale 1/sqrt(64 + 32).
//   - the GRPO / generation benchmark's decode: 128 rows, a cache of capacity 320 (64 prompt +
//     256 new tokens), every row at length 64, 128, 256 or 320, and the rows spread over 64..318;
//   - long context (memory-bound, few rows): 32 rows of 4096 cached tokens, 16 heads.
// Sampling at 128 rows × vocabulary 2048 (the big config's) and 32 rows × 151936 (Qwen's).
//
// Bytes: what each op must move at least, read plus written.
//   sample_tokens     the logits once (the kernel reads a row once per pass; a row of 4-300 KB
//                     stays in L2 between passes), sample ids and positions read, tokens written
//                     (8 bytes each per row);
//   decode_attention  q, every row's first L cache rows once (the values lie inside them: counted
//                     once), the output, slots and lengths;
//   cache_write       the new rows read and written, slots and positions.
// The peer: cudaMemcpyAsync of half those bytes (a copy reads and writes each byte), so ratio =
// copy time / op time (1.0 = copy speed). Targets (docs: DESIGN.md): memory-bound kernels >= 0.85
// of copy; MLA decode over the latent cache >= 0.9.
//
// Second peer for decode_attention, at the uniform lengths: the same math through kiln ops over
// gathered cache rows — index_select of each row's slot from the cache's first L positions,
// matmul(q, Kᵀ), × scale, softmax, matmul(P, V) with V the first 256 columns of K — timed with
// the same bytes (so its GB/s is directly comparable), and the relative Frobenius difference
// between its output and the kernel's is printed under its row (bf16 intermediates: ~1e-2).
// index_select checks its ids on the device and reads a flag back: one host synchronisation per
// call, part of the composed path's cost.
//
// Timing (benchmarks/cuda_bench.hpp): CUDA events around each call, 5 warm-up and 30 timed calls,
// medians; L2 flushed (a memset of twice its size, outside the events) before every timed call —
// one layer's cache (24 MB at 128 × 320) would otherwise stay in L2, where in a real decode step
// the other layers evict it.
//   ./benchmarks/bench_decode_cuda        (22 rows; expected to take seconds: not yet run on a GPU)
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <kiln/ops/decode_attention.hpp>
#include <kiln/ops/sampling.hpp>

#include "cuda_bench.hpp"
#include "mla_decode_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

using namespace bench::mla_decode;  // kLatent, kRope, kDk, kDv, kScale, composed_attention, relative_difference

std::string shape_of(std::int64_t rows, std::int64_t cols) { return str("[", rows, ", ", cols, "]"); }

// ---- sample_tokens -----------------------------------------------------------------------------

void bench_sampling(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t vocab) {
  const Tensor<bf16> logits = randn<bf16>({rows, vocab}, 0.0, 1.0, gpu);
  const auto sample_ids = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto positions = full<std::int64_t>({rows}, 64, gpu);
  const double bytes = static_cast<double>(rows * vocab) * sizeof(bf16) + 24.0 * static_cast<double>(rows);
  struct Case {
    const char* name;
    SamplingOptions options;
  };
  const Case cases[] = {{"sample_tokens greedy", {.temperature = 0.0}},
                        {"sample_tokens T 1", {.temperature = 1.0}},
                        {"sample_tokens T 0.6, top-p 0.95", {.temperature = 0.6, .top_p = 0.95}},
                        {"sample_tokens T 1, top-k 50, p 0.95", {.temperature = 1.0, .top_k = 50, .top_p = 0.95}}};
  for (const Case& c : cases)
    meter.row(c.name, shape_of(rows, vocab), "bfloat16", bytes,
              [&] { (void)sample_tokens(logits, c.options, sample_ids, positions); }, /*flush_l2=*/true);
}

// ---- decode_attention --------------------------------------------------------------------------



// `lengths`: one per row (each in 1..capacity); the composed peer runs when they are all equal.
void bench_attention(bench::BandwidthBench& meter, std::int64_t heads, std::int64_t capacity,
                     const std::vector<std::int64_t>& lengths, const std::string& length_label) {
  const auto rows = static_cast<std::int64_t>(lengths.size());
  const Tensor<bf16> k_cache = randn<bf16>({rows, capacity, 1, kDk}, 0.0, 1.0, gpu);
  const Tensor<bf16> v_cache = narrow(k_cache, 3, 0, kDv);  // the latent: a view of the same rows
  const Tensor<bf16> q = randn<bf16>({rows, heads, kDk}, 0.0, 1.0, gpu);
  const auto slots = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto len = Tensor<std::int64_t>::from_vector(lengths, {rows}, gpu);
  double cached = 0;
  bool uniform = true;
  for (const std::int64_t L : lengths) {
    cached += static_cast<double>(L);
    uniform = uniform && L == lengths.front();
  }
  const double s = sizeof(bf16);
  const double bytes = s * (static_cast<double>(rows * heads * kDk) + cached * kDk +
                            static_cast<double>(rows * heads * kDv)) +
                       16.0 * static_cast<double>(rows);
  const std::string shape = str("[", rows, ", ", heads, ", ", kDk, "] L ", length_label);
  meter.row("decode_attention (op)", shape, "bfloat16", bytes,
            [&] { (void)decode_attention(q, k_cache, v_cache, slots, len, kScale); }, /*flush_l2=*/true);
  if (!uniform) return;
  const std::int64_t L = lengths.front();
  meter.row("decode_attention composed (ops)", shape, "bfloat16", bytes,
            [&] { (void)composed_attention(q, k_cache, slots, L); }, /*flush_l2=*/true);
  const double diff =
      relative_difference(composed_attention(q, k_cache, slots, L), decode_attention(q, k_cache, v_cache, slots, len, kScale));
  std::printf("  (composed vs kernel output: relative Frobenius difference %.2e)\n", diff);
  std::fflush(stdout);
}

// ---- cache_write -------------------------------------------------------------------------------

void bench_cache_write(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t capacity, std::int64_t steps,
                       std::int64_t position, const char* name) {
  const Tensor<bf16> cache = zeros<bf16>({rows, capacity, 1, kDk}, gpu);
  const Tensor<bf16> values = randn<bf16>({rows, steps, 1, kDk}, 0.0, 1.0, gpu);
  const auto slots = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto positions = full<std::int64_t>({rows}, position, gpu);
  const double bytes = 2.0 * sizeof(bf16) * static_cast<double>(rows * steps * kDk) + 16.0 * static_cast<double>(rows);
  meter.row(name, str("[", rows, ", ", steps, ", 1, ", kDk, "] cap ", capacity), "bfloat16", bytes,
            [&] { cache_write(cache, slots, positions, values); }, /*flush_l2=*/true);
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 36, .shape = 30, .dtype = 9});
  meter.print_header();

  bench_sampling(meter, 128, 2048);
  bench_sampling(meter, 32, 151936);

  // The big config's decode: 128 rows, capacity 64 + 256.
  for (const std::int64_t L : {64, 128, 256, 320})
    bench_attention(meter, 12, 320, std::vector<std::int64_t>(128, L), std::to_string(L));
  std::vector<std::int64_t> spread;
  for (std::int64_t a = 0; a < 128; ++a) spread.push_back(64 + 2 * a);
  bench_attention(meter, 12, 320, spread, "64..318");
  // Long context.
  bench_attention(meter, 16, 4096, std::vector<std::int64_t>(32, 4096), "4096");

  bench_cache_write(meter, 128, 320, 1, 200, "cache_write decode step (op)");
  bench_cache_write(meter, 128, 320, 64, 0, "cache_write 64 tokens (op)");
  bench_cache_write(meter, 32, 4096, 4096, 0, "cache_write 4096 tokens (op)");
  return 0;
}
