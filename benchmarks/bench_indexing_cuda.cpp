// The CUDA indexing kernels against a device-to-device copy of the same bytes, in the same process.
//
// Cases (DeepSeek-V3 sizes): embedding forward and backward for a [129280, 7168] bf16 table and
// 16384 ids; MoE routing topk (8 of 256 experts) over 65536 tokens in bf16 and float; topk 50 of a
// 129280 vocabulary for 64 rows (sampling); gather of the 8 routed scores per token.
//   - "op" rows time the public op as a user calls it: output allocation, the kernel(s) and, for
//     the forwards that take indices, the range check's flag read back (one host synchronisation;
//     the host's wait shows up as GPU idle time between the events).
//   - "kernel" rows time run_device_kernel alone on preallocated outputs, without the range check:
//     the kernel's own cost.
// Bytes: what must move at least — rows/elements read plus written, indices included. The
// embedding backward writes the whole [vocab, dim] gradient (a dense gradient) and reads the
// 16384 output-gradient rows. The peer: cudaMemcpyAsync of half those bytes (a copy reads and
// writes each byte), so "vs copy" = copy time / kernel time (1.0 = copy speed).
//
// Timing: CUDA events around each call, 3 warm-up and 25 timed calls, medians; L2 flushed (a
// memset of twice its size, outside the events) before every timed call of the cases whose data
// would fit in L2. Run: ./benchmarks/bench_indexing_cuda (about 15 s on an H100, mostly filling
// the 1.85 GB table).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/kiln.hpp>

namespace {

using kiln::Shape;
using kiln::Tensor;
namespace cuda = kiln::cuda;

const kiln::Device gpu = kiln::Device::cuda(0);

class Timer {
 public:
  Timer() {
    int l2 = 0;
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    junk_ = Tensor<std::uint8_t>({2 * static_cast<std::int64_t>(l2)}, gpu);
  }

  // Median microseconds of f() over 25 calls.
  double median_us(const std::function<void()>& f, bool flush) {
    cudaStream_t stream = cuda::current_stream(0);
    for (int i = 0; i < 3; ++i) f();
    std::vector<double> times;
    for (int i = 0; i < 25; ++i) {
      if (flush)
        KILN_CUDA_CHECK(cudaMemsetAsync(junk_.data(), i, static_cast<std::size_t>(junk_.numel()), stream));
      start_.record(stream);
      f();
      stop_.record(stream);
      stop_.synchronize();
      times.push_back(1000.0 * stop_.elapsed_since(start_));
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

  // A device-to-device copy that reads and writes `bytes` in total.
  double copy_us(double bytes, bool flush) {
    const auto half = static_cast<std::int64_t>(bytes / 2);
    Tensor<std::uint8_t> a({half}, gpu), b({half}, gpu);
    return median_us([&] {
      KILN_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<std::size_t>(half), cudaMemcpyDeviceToDevice,
                                      cuda::current_stream(0)));
    }, flush);
  }

 private:
  Tensor<std::uint8_t> junk_;
  cuda::Event start_, stop_;
};

void row(Timer& timer, const char* name, const std::string& shape, const char* dtype, double bytes, bool flush,
         const std::function<void()>& f) {
  const double us = timer.median_us(f, flush);
  const double copy = timer.copy_us(bytes, flush);
  std::printf("%-36s %-30s %-6s %10.1f %9.1f %8.2f\n", name, shape.c_str(), dtype, us, bytes / us / 1e3, copy / us);
}

template <class T>
Tensor<T> random_on_gpu(const Shape& shape) {
  return kiln::to(kiln::cast<T>(kiln::randn<float>(shape)), gpu);
}

}  // namespace

int main() {
  if (!cuda::available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  Timer timer;
  std::printf("%-36s %-30s %-6s %10s %9s %8s\n", "case", "shape", "dtype", "time (us)", "GB/s", "vs copy");

  {  // embedding, DeepSeek-V3 vocabulary and width
    const std::int64_t vocab = 129280, dim = 7168, n = 16384;
    const Tensor<kiln::bf16> table = kiln::full<kiln::bf16>({vocab, dim}, kiln::bf16(0.5), gpu);
    const Tensor<std::int64_t> ids = kiln::to(kiln::randint<std::int64_t>(0, vocab, {n}), gpu);
    const std::string shape = "[129280, 7168] x 16384 ids";
    const double fwd_bytes = 2.0 * n * dim * 2 + n * 8.0;
    Tensor<kiln::bf16> out({n, dim}, gpu);
    row(timer, "embedding fwd (op)", shape, "bf16", fwd_bytes, false, [&] { (void)kiln::embedding(table, ids); });
    row(timer, "embedding fwd (kernel)", shape, "bf16", fwd_bytes, false, [&] {
      kiln::run_device_kernel("bench", "index_select_rows",
                              {{kiln::tensor_arg(out), kiln::tensor_arg(table), kiln::tensor_arg(ids)}, {}, {1, vocab, dim, n}});
    });
    const Tensor<kiln::bf16> grad_out = random_on_gpu<kiln::bf16>({n, dim});
    Tensor<kiln::bf16> grad({vocab, dim}, gpu);
    const double bwd_bytes = 2.0 * vocab * dim + 2.0 * n * dim + n * 8.0;
    row(timer, "embedding bwd (kernel: sort + sums)", shape, "bf16", bwd_bytes, false, [&] {
      kiln::run_device_kernel("bench", "index_add_rows",
                              {{kiln::tensor_arg(grad), kiln::tensor_arg(grad_out), kiln::tensor_arg(ids)}, {},
                               {1, vocab, dim, n, -1, 0}});
    });
    auto weight = table.detach().requires_grad_();
    row(timer, "embedding fwd + bwd (op)", shape, "bf16", fwd_bytes + bwd_bytes, false, [&] {
      weight.zero_grad();
      kiln::embedding(weight, ids).backward(grad_out);
    });
  }

  {  // MoE routing: 8 of 256 experts per token
    const std::int64_t tokens = 65536, experts = 256, k = 8;
    const std::string shape = "[65536, 256] k 8";
    auto topk_case = [&](auto tag, const char* dtype) {
      using T = decltype(tag);
      const Tensor<T> scores = random_on_gpu<T>({tokens, experts});
      const double bytes = static_cast<double>(tokens) * (experts * sizeof(T) + k * (sizeof(T) + 8));
      row(timer, "topk (op)", shape, dtype, bytes, true, [&] { (void)kiln::topk(scores, k); });
      const auto [values, indices] = kiln::topk(scores, k);
      const double gather_bytes = static_cast<double>(tokens) * k * (8 + 2 * sizeof(T));
      row(timer, "gather routed scores (op)", "[65536, 256] at [65536, 8]", dtype, gather_bytes, true,
          [&] { (void)kiln::gather(scores, 1, indices); });
    };
    topk_case(kiln::bf16{}, "bf16");
    topk_case(float{}, "f32");
  }

  {  // sampling: top 50 of the vocabulary
    const Tensor<float> logits = random_on_gpu<float>({64, 129280});
    const double bytes = 64.0 * 129280 * 4 + 64.0 * 50 * 12;
    row(timer, "topk (op)", "[64, 129280] k 50", "f32", bytes, true, [&] { (void)kiln::topk(logits, 50); });
  }
  return 0;
}
