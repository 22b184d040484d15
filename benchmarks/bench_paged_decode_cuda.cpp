// Decode attention over a PAGED latent cache (ops/paged_attention.hpp; kernels/decode_attention/
// decode_attention.cuh over a block table) against a device-to-device copy of the same bytes, in
// the same process, with the contiguous cache's kernel (ops/decode_attention.hpp, same kernel, slot
// addressing) and kiln's composed ops as peers:
//   paged_decode_attention (op)     on the CUDA-core kernel (DecodeKernel::simt), T = 1 or 2 query
//                                   tokens per row (2: MTP's speculative decode), the split along
//                                   the sequence chosen from the SM count;
//   paged ... splits 1              the same with the sequence split turned off (where the choice
//                                   was to split: what the split gains);
//   paged ... tensor cores (mma)    the same op on the tensor-core kernel (DecodeKernel::mma,
//                                   decode_attention_mma.cuh; its own split choice), with its graph
//                                   replay and its output's difference from the CUDA-core kernel's
//                                   (it rounds the probabilities to bf16 before P·V: ~1e-3);
//   paged ... Hopper (wgmma)        on an sm_90 GPU, the Hopper kernel (DecodeKernel::wgmma,
//                                   decode_attention_hopper.cuh: wgmma, TMA) likewise, its output
//                                   against the mma.sync kernel's;
//   decode_attention contiguous     the contiguous cache [rows, capacity, 1, dk] holding the same
//                                   rows (T = 1; one split: the contiguous op does not split);
//   composed (ops)                  index_select of each row's cache, matmul(q, Kᵀ), × scale,
//                                   softmax, matmul(P, V) (uniform lengths, T = 1);
//   fp8_latent_decode_attention     the same rows in the FP8 latent cache (ops/latent_fp8_cache.hpp:
//                                   latent e4m3 with 1×128 scales, rope bf16; 328 bytes a token
//                                   against 576), same table, T = 1 and 2; its output's relative
//                                   difference from the bf16 cache's is FP8's rounding (~2-3%);
//   paged_cache_write (op)          one and two new latent rows per sequence into its blocks, and
//   fp8_latent_cache_write (op)     the same rows quantized into the FP8 cache.
// Under each attention row: TFLOP/s (2 (dk + dv) FLOP per query head and attended token); under
// the paged and contiguous op rows, the device time alone (graph replay: below); under the
// contiguous and composed rows the relative Frobenius difference of their output from the paged
// op's (bf16 outputs: ~1e-3 for the kernels, ~1e-2 for the composed ops' bf16 intermediates).
//
// Shapes. MLA as in kiln's "big" config: one kv head whose cache row is [latent 256 | rope key 32]
// (dk 288), values the latent (dv 256: a view of the same blocks), scale 1/sqrt(64 + 32), blocks
// of 64 tokens, each sequence's blocks scattered over the pool (a shuffled table, as an allocator
// that has served many sequences leaves it).
//   - the engine's decode: 128 rows of 12 heads, every row at length 64, 128, 256 or 320, and the
//     rows spread over 64..318; T = 1 and 2;
//   - long context: 32 rows × 4096 tokens × 16 heads (T = 1, 2) and
//     4 rows × 32768 tokens × 16 heads (the split's case: 8 blocks for 132 SMs without it);
//   - few heads (4): the same two long-context shapes, memory-bound even for CUDA-core FMAs;
//   - 128 heads, T = 2 (the FLOP target shape, at kiln's dk 288): 32 rows × 4096 tokens;
//   - and at DeepSeek-V3's sizes (latent 512 + rope 64: dk 576, dv 512; FlashMLA's shape, 660
//     TFLOP/s reported on an H800): 32 rows × 4096 tokens × 128 heads × 2 tokens, × 1 token, and
//     16 heads × 1 token (memory-bound), on the mma.sync kernel, the Hopper one (sm_90: the seesaw
//     kernel, decode_attention_seesaw.cuh) and at 2 tokens and 16 heads the CUDA-core one, each
//     with its graph replay (--deepseek: these rows alone).
//
// Bytes: what the op must move at least: q once, every row's first L cache rows once (values
// inside them: counted once), the output, slots and lengths (16 B a row), the table entries read
// (8 B per block); the split's workspace is not counted (it is the kernel's overhead). The copy
// peer moves the same bytes (cudaMemcpyAsync of half, read + written), ratio = copy time / op
// time. Target (issue 15): memory-bound shapes >= 0.90 of copy.
//
// Timing (benchmarks/cuda_bench.hpp): CUDA events around each call of the public op (output and
// workspace allocation, the host's checks and launch included: the host waits for each call), 5
// warm-up and 30 timed calls, medians; L2 flushed before every timed call (a layer's cache would
// otherwise stay in L2, where in a decode step the other layers evict it). Graph replay (the
// engine captures its decode steps): the op captured 20 times into a CUDA graph, each call on
// another copy of the cache (copies filling 120 MB: twice the L2), 15 timed replays, median / 20.
//   ./benchmarks/bench_paged_decode_cuda [--quick | --deepseek]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <kiln/kernels/common/device_info.hpp>
#include <kiln/ops/decode_attention.hpp>
#include <kiln/ops/latent_fp8_cache.hpp>
#include <kiln/ops/paged_attention.hpp>

#include "cuda_bench.hpp"
#include "mla_decode_bench.hpp"

using namespace kiln;

namespace {

const Device gpu = Device::cuda(0);

using namespace bench::mla_decode;  // kLatent, kRope, kDk, kDv, kScale, composed_attention, relative_difference
constexpr std::int64_t kBlock = 64;
bool quick = false;  // --quick: fewer shapes, the kernels' rows only (main)

void print_tflops(double flops, double us) {
  std::printf("  (%.1f TFLOP/s)\n", flops / us / 1e6);
  std::fflush(stdout);
}

// The device time alone: call(i) captured 20 times into a CUDA graph and replayed (no host cost),
// call i reading copy i % copies of the cache so that the copies do not stay in L2 between calls;
// printed beside the copy of the same bytes (L2 flushed) and the FLOP rate.
void print_graph_time(bench::BandwidthBench& meter, const std::function<void(int)>& call, std::size_t copies,
                      double bytes, double flops) {
  try {
    const double us = meter.timer().graph_call_us(call, bench::BatchRuns{});
    const double copy_us = meter.copy().median_us(bytes, meter.timer(), bench::Runs{.warmup = 5, .timed = 30, .flush_l2 = true});
    std::printf("  (graph replay, %zu cache copies: %.1f us a call, %.0f GB/s, ratio %.3f of copy, %.1f TFLOP/s)\n",
                copies, us, bytes / us / 1e3, copy_us / us, flops / us / 1e6);
  } catch (const Error& e) {
    std::printf("  (graph replay not run: %s)\n", e.what());
  }
  std::fflush(stdout);
}

// Copies of a cache, enough that they fill more than twice a 60 MB L2 together.
template <class T>
std::vector<Tensor<T>> cache_copies(const Tensor<T>& cache) {
  const double bytes = static_cast<double>(cache.numel()) * sizeof(T);
  std::vector<Tensor<T>> pool{cache};
  while (static_cast<double>(pool.size()) * bytes < 120e6) pool.push_back(clone(cache));
  return pool;
}


// Copies of an FP8 latent cache, enough that they fill more than twice a 60 MB L2 together.
std::vector<Fp8LatentCache<bf16>> cache_copies(const Fp8LatentCache<bf16>& cache) {
  std::vector<Fp8LatentCache<bf16>> pool{cache};
  while (static_cast<double>(pool.size() * cache.bytes()) < 120e6)
    pool.push_back({clone(cache.latent), clone(cache.scales), clone(cache.rope)});
  return pool;
}

// One shape: `lengths` one per row, `heads` query heads, T query tokens.
void bench_attention(bench::BandwidthBench& meter, std::int64_t heads, int queries,
                     const std::vector<std::int64_t>& lengths, const std::string& length_label) {
  const auto rows = static_cast<std::int64_t>(lengths.size());
  const std::int64_t capacity = *std::max_element(lengths.begin(), lengths.end());
  const std::int64_t max_blocks = (capacity + kBlock - 1) / kBlock;
  // The paged cache: every row's blocks, shuffled over the pool.
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows * max_blocks));
  std::iota(ids.begin(), ids.end(), std::int64_t{0});
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(5));
  const Tensor<bf16> blocks = randn<bf16>({rows * max_blocks, kBlock, 1, kDk}, 0.0, 1.0, gpu);
  const Tensor<bf16> v_blocks = narrow(blocks, 3, 0, kDv);  // the latent: a view of the same rows
  const auto table = Tensor<std::int64_t>::from_vector(ids, {rows, max_blocks}, gpu);
  const Tensor<bf16> q = randn<bf16>({rows, queries, heads, kDk}, 0.0, 1.0, gpu);
  const auto slots = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto len = Tensor<std::int64_t>::from_vector(lengths, {rows}, gpu);
  double cached = 0, attended = 0, table_entries = 0;
  bool uniform = true;
  for (const std::int64_t L : lengths) {
    cached += static_cast<double>(L);
    attended += static_cast<double>(queries * L - (queries - 1));  // query 0 of 2 sees one token fewer
    table_entries += static_cast<double>((L + kBlock - 1) / kBlock);
    uniform = uniform && L == lengths.front();
  }
  const double s = sizeof(bf16);
  const double bytes = s * (static_cast<double>(rows * queries * heads) * (kDk + kDv) + cached * kDk) +
                       16.0 * static_cast<double>(rows) + 8.0 * table_entries;
  const double flops = 2.0 * static_cast<double>(heads) * attended * (kDk + kDv);
  const std::string shape = str("[", rows, ", ", queries, ", ", heads, ", ", kDk, "] L ", length_label);

  auto paged = [&](int splits) { return paged_decode_attention(q, blocks, v_blocks, table, slots, len, kScale, splits); };
  print_tflops(flops, meter.row("paged_decode_attention (op)", shape, "bfloat16", bytes, [&] { (void)paged(0); }, true));
  {
    const std::vector<Tensor<bf16>> pool = cache_copies(blocks);
    print_graph_time(
        meter,
        [&](int i) {
          const Tensor<bf16>& b = pool[static_cast<std::size_t>(i) % pool.size()];
          (void)paged_decode_attention(q, b, narrow(b, 3, 0, kDv), table, slots, len, kScale);
        },
        pool.size(), bytes, flops);
  }
  // Where the automatic count splits, the same without the split.
  kernels::DecodeAttentionArgs probe{.launch = launch_on("bench", gpu), .dtype = DType::bf16, .count = rows,
                                     .queries = queries, .heads = static_cast<int>(heads), .kv_heads = 1,
                                     .dk = static_cast<int>(kDk), .dv = static_cast<int>(kDv), .num_slots = rows,
                                     .capacity = max_blocks * kBlock, .block_table = table.data(),
                                     .max_blocks = max_blocks, .block_tokens = kBlock,
                                     .num_blocks = rows * max_blocks, .splits = 0};
  int chosen = 1;
  launch_device_kernel("bench", kernels::DecodeAttentionPlanArgs{.launch = probe.launch, .problem = &probe, .splits = &chosen});
  std::printf("  (sequence splits chosen: %d)\n", chosen);
  if (chosen > 1)
    print_tflops(flops, meter.row("paged ... splits 1", shape, "bfloat16", bytes, [&] { (void)paged(1); }, true));

  // The tensor-core kernels on the same op: mma.sync, and on an sm_90 GPU the Hopper one (wgmma).
  const Tensor<bf16> mma_out = paged_decode_attention(q, blocks, v_blocks, table, slots, len, kScale, 0,
                                                      kernels::DecodeKernel::mma);
  for (const auto kernel : {kernels::DecodeKernel::mma, kernels::DecodeKernel::wgmma}) {
    const bool hopper = kernel == kernels::DecodeKernel::wgmma;
    if (hopper && kernels::device_info(0).major != 9) continue;
    auto run = [&] { return paged_decode_attention(q, blocks, v_blocks, table, slots, len, kScale, 0, kernel); };
    print_tflops(flops, meter.row(hopper ? "paged ... Hopper (wgmma)" : "paged ... tensor cores (mma)", shape,
                                  "bfloat16", bytes, [&] { (void)run(); }, true));
    const std::vector<Tensor<bf16>> pool = cache_copies(blocks);
    print_graph_time(
        meter,
        [&](int i) {
          const Tensor<bf16>& b = pool[static_cast<std::size_t>(i) % pool.size()];
          (void)paged_decode_attention(q, b, narrow(b, 3, 0, kDv), table, slots, len, kScale, 0, kernel);
        },
        pool.size(), bytes, flops);
    if (hopper)
      std::printf("  (Hopper vs mma.sync kernel output: relative Frobenius difference %.2e)\n",
                  relative_difference(run(), mma_out));
    else
      std::printf("  (tensor-core vs CUDA-core kernel output: relative Frobenius difference %.2e)\n",
                  relative_difference(mma_out, paged(0)));
  }

  if (quick) return;  // the FP8 cache, the contiguous cache and the composed ops: the full run only

  // The contiguous cache holding the same rows: row j of slot a = row j % 64 of block table[a, j / 64].
  const Tensor<bf16> k_cache = zeros<bf16>({rows, max_blocks * kBlock, 1, kDk}, gpu);
  {
    const std::vector<std::int64_t> host_ids = ids;
    for (std::int64_t a = 0; a < rows; ++a)
      for (std::int64_t b = 0; b < max_blocks; ++b)
        copy_bytes(k_cache.data() + (a * max_blocks + b) * kBlock * kDk, gpu,
                   blocks.data() + host_ids[static_cast<std::size_t>(a * max_blocks + b)] * kBlock * kDk, gpu,
                   static_cast<std::size_t>(kBlock * kDk) * sizeof(bf16));
  }

  // The FP8 latent cache holding the same rows, quantized (each row's tokens in one write).
  {
    const auto fp8 = Fp8LatentCache<bf16>::zeros(rows * max_blocks, kBlock, kLatent, kRope, gpu);
    fp8_latent_cache_write(fp8, table, slots, zeros<std::int64_t>({rows}, gpu), k_cache);
    const double token_bytes = static_cast<double>(kLatent + 4 * ((kLatent + 127) / 128)) + s * kRope;
    const double fp8_bytes = s * static_cast<double>(rows * queries * heads) * (kDk + kDv) + cached * token_bytes +
                             16.0 * static_cast<double>(rows) + 8.0 * table_entries;
    print_tflops(flops, meter.row("fp8_latent_decode_attention (op)", shape, "fp8/bf16", fp8_bytes,
                                  [&] { (void)fp8_latent_decode_attention(q, fp8, table, slots, len, kScale); }, true));
    const std::vector<Fp8LatentCache<bf16>> pool = cache_copies(fp8);
    print_graph_time(
        meter,
        [&](int i) {
          const Fp8LatentCache<bf16>& c = pool[static_cast<std::size_t>(i) % pool.size()];
          (void)fp8_latent_decode_attention(q, c, table, slots, len, kScale);
        },
        pool.size(), fp8_bytes, flops);
    std::printf("  (FP8 vs bf16 cache output: relative Frobenius difference %.2e; %.0f%% of the bf16 op's bytes)\n",
                relative_difference(fp8_latent_decode_attention(q, fp8, table, slots, len, kScale), paged(0)),
                100.0 * fp8_bytes / bytes);
  }
  if (queries != 1) return;
  const Tensor<bf16> v_cache = narrow(k_cache, 3, 0, kDv);
  const Tensor<bf16> q3 = reshape(q, {rows, heads, kDk});
  print_tflops(flops, meter.row("decode_attention contiguous (op)", shape, "bfloat16", bytes,
                                [&] { (void)decode_attention(q3, k_cache, v_cache, slots, len, kScale); }, true));
  {
    const std::vector<Tensor<bf16>> pool = cache_copies(k_cache);
    print_graph_time(
        meter,
        [&](int i) {
          const Tensor<bf16>& c = pool[static_cast<std::size_t>(i) % pool.size()];
          (void)decode_attention(q3, c, narrow(c, 3, 0, kDv), slots, len, kScale);
        },
        pool.size(), bytes, flops);
  }
  const Tensor<bf16> reference = reshape(paged(0), {rows, heads, kDv});
  std::printf("  (contiguous vs paged output: relative Frobenius difference %.2e)\n",
              relative_difference(decode_attention(q3, k_cache, v_cache, slots, len, kScale), reference));
  if (!uniform) return;
  const std::int64_t L = lengths.front();
  try {
    print_tflops(flops, meter.row("composed (ops)", shape, "bfloat16", bytes,
                                  [&] { (void)composed_attention(q3, k_cache, slots, L); }, true));
    std::printf("  (composed vs paged output: relative Frobenius difference %.2e)\n",
                relative_difference(composed_attention(q3, k_cache, slots, L), reference));
  } catch (const Error& e) {
    std::printf("  (composed peer not run: %s)\n", e.what());
  }
  std::fflush(stdout);
}

// DeepSeek-V3's latent (dk 576, dv 512): `rows` sequences of L tokens, `heads` x `queries` query
// rows each; the kernels on one cache (the CUDA-core one where `simt`), each as graph replays;
// FLOPs 2 (dk + dv) per query row and attended token. The cache (rows x L x 1152 bytes: 151 MB at
// 32 x 4096) is larger than L2, so one copy serves the replays.
void bench_deepseek_v3_sizes(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t queries, std::int64_t heads,
                             std::int64_t L, bool simt) {
  constexpr std::int64_t dk = 576, dv = 512;
  const std::int64_t max_blocks = L / kBlock;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows * max_blocks));
  std::iota(ids.begin(), ids.end(), std::int64_t{0});
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(7));
  const Tensor<bf16> blocks = randn<bf16>({rows * max_blocks, kBlock, 1, dk}, 0.0, 1.0, gpu);
  const auto table = Tensor<std::int64_t>::from_vector(ids, {rows, max_blocks}, gpu);
  const Tensor<bf16> q = randn<bf16>({rows, queries, heads, dk}, 0.0, 1.0, gpu);
  const auto slots = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto len = full<std::int64_t>({rows}, L, gpu);
  const double scale = 1.0 / std::sqrt(128.0 + 64.0);
  const double bytes = sizeof(bf16) * (static_cast<double>(rows * queries * heads) * (dk + dv) +
                                       static_cast<double>(rows * L) * dk) +
                       16.0 * rows + 8.0 * static_cast<double>(rows * max_blocks);
  const double flops = 2.0 * heads * static_cast<double>(rows * (queries * L - (queries - 1))) * (dk + dv);
  const std::string shape = str("[", rows, ", ", queries, ", ", heads, ", ", dk, "] L ", L);
  auto run = [&](kernels::DecodeKernel kernel) {
    return paged_decode_attention(q, blocks, narrow(blocks, 3, 0, dv), table, slots, len, scale, 0, kernel);
  };
  struct Kernel {
    kernels::DecodeKernel kernel;
    const char* name;
  };
  const bool hopper = kernels::device_info(0).major == 9;
  for (const Kernel& k : {Kernel{kernels::DecodeKernel::simt, "DeepSeek-V3 latent, CUDA cores"},
                          Kernel{kernels::DecodeKernel::mma, "DeepSeek-V3 latent, mma.sync"},
                          Kernel{kernels::DecodeKernel::wgmma, "DeepSeek-V3 latent, Hopper"}}) {
    if ((k.kernel == kernels::DecodeKernel::simt && !simt) || (k.kernel == kernels::DecodeKernel::wgmma && !hopper))
      continue;
    print_tflops(flops, meter.row(k.name, shape, "bfloat16", bytes, [&] { (void)run(k.kernel); }, true));
    print_graph_time(meter, [&](int) { (void)run(k.kernel); }, 1, bytes, flops);
  }
  const Tensor<bf16> mma_out = run(kernels::DecodeKernel::mma);
  if (simt)
    std::printf("  (mma.sync vs CUDA-core output: relative Frobenius difference %.2e)\n",
                relative_difference(mma_out, run(kernels::DecodeKernel::simt)));
  if (hopper)
    std::printf("  (Hopper vs mma.sync output: relative Frobenius difference %.2e)\n",
                relative_difference(run(kernels::DecodeKernel::wgmma), mma_out));
  std::fflush(stdout);
}

void bench_cache_write(bench::BandwidthBench& meter, std::int64_t rows, std::int64_t steps, std::int64_t position) {
  const std::int64_t max_blocks = 5;  // 320 tokens a sequence
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows * max_blocks));
  std::iota(ids.begin(), ids.end(), std::int64_t{0});
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(6));
  const Tensor<bf16> blocks = zeros<bf16>({rows * max_blocks, kBlock, 1, kDk}, gpu);
  const auto table = Tensor<std::int64_t>::from_vector(ids, {rows, max_blocks}, gpu);
  const Tensor<bf16> values = randn<bf16>({rows, steps, 1, kDk}, 0.0, 1.0, gpu);
  const auto slots = arange<std::int64_t>(0, static_cast<double>(rows), 1.0, gpu);
  const auto positions = full<std::int64_t>({rows}, position, gpu);
  const double bytes = 2.0 * sizeof(bf16) * static_cast<double>(rows * steps * kDk) + 24.0 * static_cast<double>(rows);
  meter.row(str("paged_cache_write ", steps, " token(s) (op)"), str("[", rows, ", ", steps, ", 1, ", kDk, "]"),
            "bfloat16", bytes, [&] { paged_cache_write(blocks, table, slots, positions, values); }, true);
  // The FP8 write reads the bf16 rows and writes bytes, scales and rope (its quantize and three
  // writes are separate launches: the bytes counted are the minimum, read once, written once).
  const auto fp8 = Fp8LatentCache<bf16>::zeros(rows * max_blocks, kBlock, kLatent, kRope, gpu);
  const double fp8_token = sizeof(bf16) * kDk + kLatent + 8.0 + sizeof(bf16) * kRope;  // read, then written
  const double fp8_bytes = static_cast<double>(rows * steps) * fp8_token + 24.0 * static_cast<double>(rows);
  meter.row(str("fp8_latent_cache_write ", steps, " token(s)"), str("[", rows, ", ", steps, ", 1, ", kDk, "]"),
            "bf16>fp8", fp8_bytes, [&] { fp8_latent_cache_write(fp8, table, slots, positions, values); }, true);
}

}  // namespace

int main(int argc, char** argv) {
  // --quick: one shape of each kind (the engine's at L 320 and 64..318, T 1 and 2; long context at 16
  // and 4 heads; 128 heads x 2 tokens), the kernels' rows only (no FP8 cache, contiguous cache or
  // composed peer), no DeepSeek-V3 sizes or cache writes: a short GPU call.
  quick = argc > 1 && std::string(argv[1]) == "--quick";
  const bool deepseek_only = argc > 1 && std::string(argv[1]) == "--deepseek";
  // --long: the long-context shapes only (the memory-bound target's), both head-dim sets.
  const bool long_only = argc > 1 && std::string(argv[1]) == "--long";
  if (argc > 1 && !quick && !deepseek_only && !long_only) {
    std::printf("usage: bench_paged_decode_cuda [--quick | --deepseek | --long]\n");
    return 2;
  }
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 5, .timed = 30}, {.name = 34, .shape = 34, .dtype = 9});
  meter.print_header();
  // The rows that name no kernel run the CUDA-core one (automatic would pick a tensor-core kernel
  // at these head dims; their rows name them).
  const DecodeKernelScope cuda_cores(kernels::DecodeKernel::simt);

  if (deepseek_only) {
    bench_deepseek_v3_sizes(meter, 32, 2, 128, 4096, false);
    bench_deepseek_v3_sizes(meter, 32, 1, 128, 4096, false);
    bench_deepseek_v3_sizes(meter, 32, 1, 16, 4096, false);
    return 0;
  }
  if (long_only) {
    quick = true;  // the kernels' rows only
    bench_attention(meter, 16, 1, std::vector<std::int64_t>(32, 4096), "4096");
    bench_attention(meter, 16, 2, std::vector<std::int64_t>(32, 4096), "4096");
    bench_attention(meter, 16, 1, std::vector<std::int64_t>(4, 32768), "32768");
    bench_attention(meter, 4, 1, std::vector<std::int64_t>(32, 4096), "4096");
    bench_attention(meter, 4, 1, std::vector<std::int64_t>(4, 32768), "32768");
    bench_deepseek_v3_sizes(meter, 32, 1, 16, 4096, false);
    return 0;
  }
  // The engine's decode: 128 rows, 12 heads, up to 320 tokens.
  std::vector<std::int64_t> spread;
  for (std::int64_t a = 0; a < 128; ++a) spread.push_back(64 + 2 * a);
  for (const int T : {1, 2}) {
    for (const std::int64_t L : {64, 128, 256, 320})
      if (!quick || L == 320) bench_attention(meter, 12, T, std::vector<std::int64_t>(128, L), std::to_string(L));
    bench_attention(meter, 12, T, spread, "64..318");
  }
  // Long context.
  bench_attention(meter, 16, 1, std::vector<std::int64_t>(32, 4096), "4096");
  if (!quick) {
    bench_attention(meter, 16, 2, std::vector<std::int64_t>(32, 4096), "4096");
    bench_attention(meter, 16, 1, std::vector<std::int64_t>(4, 32768), "32768");
  }
  // Few heads: memory-bound even for CUDA-core FMAs (4 heads: ~8 FLOP per cache byte).
  bench_attention(meter, 4, 1, std::vector<std::int64_t>(32, 4096), "4096");
  bench_attention(meter, 4, 1, std::vector<std::int64_t>(4, 32768), "32768");
  // 128 heads, two query tokens.
  bench_attention(meter, 128, 2, std::vector<std::int64_t>(32, 4096), "4096");
  if (quick) return 0;
  // DeepSeek-V3's sizes: 128 heads x 2 tokens (the FLOP target), x 1 token, and 16 heads x 1
  // (memory-bound).
  bench_deepseek_v3_sizes(meter, 32, 2, 128, 4096, true);
  bench_deepseek_v3_sizes(meter, 32, 1, 128, 4096, false);
  bench_deepseek_v3_sizes(meter, 32, 1, 16, 4096, true);

  bench_cache_write(meter, 128, 1, 200);
  bench_cache_write(meter, 128, 2, 200);
  return 0;
}
