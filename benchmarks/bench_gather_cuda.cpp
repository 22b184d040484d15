// The CUDA kernels of the gather family (kernels/gather/: embedding, gather) and of topk
// (kernels/topk/) against a device-to-device copy of the same bytes, in the same process.
//
// Cases (DeepSeek-V3 sizes): embedding forward and backward for a [129280, 7168] bf16 table and
// 16384 ids, and for pretrain's big config ([2048, 768], 16384 ids of Zipf-distributed
// frequency: long rows for the backward, math/index_add.hpp); MoE routing topk (8 of 256 experts) over 65536 tokens in bf16 and float; topk 50 of a
// 129280 vocabulary for 64 rows (sampling); gather of the 8 routed scores per token.
// topk's rows live here rather than in a bench_topk_cuda of their own: MoE routing is topk then a
// gather at its indices, one setup for both, and a separate binary would add a build for 3 rows.
//   - "op" rows time the public op as a user calls it: output allocation, the kernel(s) and, for
//     the forwards that take indices, the range check's flag read back (one host synchronisation;
//     the host's wait shows up as GPU idle time between the events).
//   - "kernel" rows time launch_device_kernel alone on preallocated outputs, without the range
//     check: the kernel's own cost.
// Bytes: what must move at least — rows/elements read plus written, indices included. The
// embedding backward writes the whole [vocab, dim] gradient (a dense gradient) and reads the
// 16384 output-gradient rows. The peer: cudaMemcpyAsync of half those bytes (a copy reads and
// writes each byte), so ratio = copy time / kernel time (1.0 = copy speed).
//
// Timing (benchmarks/cuda_bench.hpp): CUDA events around each call, 3 warm-up and 25 timed calls,
// medians; L2 flushed (a memset of twice its size, outside the events) before every timed call of
// the cases whose data would fit in L2. Run: ./benchmarks/bench_gather_cuda (about 15 s on an H100, mostly filling
// the 1.85 GB table).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <kiln/kernels/gather/args.hpp>

#include "cuda_bench.hpp"

namespace {

using kiln::Shape;
using kiln::Tensor;
namespace bench = kiln::bench;
namespace cuda = kiln::cuda;

const kiln::Device gpu = kiln::Device::cuda(0);

template <class T>
Tensor<T> random_on_gpu(const Shape& shape) {
  return kiln::to(kiln::cast<T>(kiln::randn<float>(shape)), gpu);
}

}  // namespace

int main() {
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 3, .timed = 25}, {.name = 36, .shape = 30, .dtype = 6});
  meter.print_header();

  // Embedding forward and backward for a table [vocab, dim] and n ids drawn from `ids`.
  const auto embedding_case = [&](std::int64_t vocab, std::int64_t dim, const Tensor<std::int64_t>& ids,
                                  const std::string& shape) {
    const std::int64_t n = ids.numel();
    const Tensor<kiln::bf16> table = kiln::full<kiln::bf16>({vocab, dim}, kiln::bf16(0.5), gpu);
    const double fwd_bytes = 2.0 * n * dim * 2 + n * 8.0;
    Tensor<kiln::bf16> out({n, dim}, gpu);
    meter.row("embedding fwd (op)", shape, "bf16", fwd_bytes, [&] { (void)kiln::embedding(table, ids); });
    const kiln::kernels::IndexSelectRowsArgs select{.launch = kiln::launch_on("bench", gpu),
                                                    .dtype = kiln::DType::bf16,
                                                    .out = out.data(),
                                                    .src = table.data(),
                                                    .index = ids.data(),
                                                    .outer = 1,
                                                    .size = vocab,
                                                    .inner = dim,
                                                    .n = n};
    meter.row("embedding fwd (kernel)", shape, "bf16", fwd_bytes,
              [&] { kiln::launch_device_kernel("bench", select); });
    const Tensor<kiln::bf16> grad_out = random_on_gpu<kiln::bf16>({n, dim});
    Tensor<kiln::bf16> grad({vocab, dim}, gpu);
    const double bwd_bytes = 2.0 * vocab * dim + 2.0 * n * dim + n * 8.0;
    const kiln::kernels::IndexAddRowsArgs add{.launch = kiln::launch_on("bench", gpu),
                                              .dtype = kiln::DType::bf16,
                                              .dst = grad.data(),
                                              .src = grad_out.data(),
                                              .index = ids.data(),
                                              .outer = 1,
                                              .size = vocab,
                                              .inner = dim,
                                              .n = n,
                                              .skip = -1,
                                              .accumulate = false};
    meter.row("embedding bwd (kernel: sort + sums)", shape, "bf16", bwd_bytes,
              [&] { kiln::launch_device_kernel("bench", add); });
    auto weight = table.detach().requires_grad_();
    meter.row("embedding fwd + bwd (op)", shape, "bf16", fwd_bytes + bwd_bytes, [&] {
      weight.zero_grad();
      kiln::embedding(weight, ids).backward(grad_out);
    });
  };
  // DeepSeek-V3's vocabulary and width, uniform ids: few repeats.
  embedding_case(129280, 7168, kiln::to(kiln::randint<std::int64_t>(0, 129280, {16384}), gpu),
                 "[129280, 7168] x 16384 ids");
  {  // pretrain's big config: vocabulary 2048, width 768, one batch of 32 x 512 tokens whose ids
     // follow Zipf's law (probability ~ 1/rank, as token frequencies roughly do): the most
     // frequent id takes about 12% of the positions, ~2000 of them, a long row for the backward.
    const std::int64_t vocab = 2048, n = 16384;
    std::vector<double> cumulative(static_cast<std::size_t>(vocab));
    double total = 0.0;
    for (std::int64_t k = 0; k < vocab; ++k) cumulative[static_cast<std::size_t>(k)] = total += 1.0 / (k + 1.0);
    const auto u = kiln::rand<double>({n}).to_vector();
    std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < ids.size(); ++i)
      ids[i] = std::min<std::int64_t>(
          vocab - 1, std::lower_bound(cumulative.begin(), cumulative.end(), u[i] * total) - cumulative.begin());
    embedding_case(vocab, 768, kiln::to(kiln::tensor<std::int64_t>(ids), gpu), "[2048, 768] x 16384 Zipf ids");
  }

  {  // MoE routing: 8 of 256 experts per token
    const std::int64_t tokens = 65536, experts = 256, k = 8;
    const std::string shape = "[65536, 256] k 8";
    auto topk_case = [&](auto tag, const char* dtype) {
      using T = decltype(tag);
      const Tensor<T> scores = random_on_gpu<T>({tokens, experts});
      const double bytes = static_cast<double>(tokens) * (experts * sizeof(T) + k * (sizeof(T) + 8));
      meter.row("topk (op)", shape, dtype, bytes, [&] { (void)kiln::topk(scores, k); }, true);
      const auto [values, indices] = kiln::topk(scores, k);
      const double gather_bytes = static_cast<double>(tokens) * k * (8 + 2 * sizeof(T));
      meter.row("gather routed scores (op)", "[65536, 256] at [65536, 8]", dtype, gather_bytes,
                [&] { (void)kiln::gather(scores, 1, indices); }, true);
    };
    topk_case(kiln::bf16{}, "bf16");
    topk_case(float{}, "f32");
  }

  {  // sampling: top 50 of the vocabulary
    const Tensor<float> logits = random_on_gpu<float>({64, 129280});
    const double bytes = 64.0 * 129280 * 4 + 64.0 * 50 * 12;
    meter.row("topk (op)", "[64, 129280] k 50", "f32", bytes, [&] { (void)kiln::topk(logits, 50); }, true);
  }
  return 0;
}
