// The timing harness of the CUDA benchmarks (benchmarks/bench_*_cuda.cpp), namespace kiln::bench:
//
//   Runs            how one measurement is taken: untimed warm-up calls (lazy initialisation,
//                   allocator and plan caches), timed calls, and whether L2 is flushed first.
//   median(v)       the median of a sample (the mean of the two middle values for an even count).
//   L2Flush         overwrites the GPU's L2 cache (a memset of twice its size) so that the next
//                   call reads its inputs from HBM: for cases whose data would fit in L2.
//   Timer           median_us(f, runs): each timed call of f lies between two CUDA events on
//                   kiln's current stream, and the host waits for it before the next call, so the
//                   interval also holds whatever host work f does before its last launch (output
//                   allocation, checks, synchronisations), as a caller of the op sees it. The
//                   flush, when asked for, runs before the start event.
//                   interleaved_median_us(calls, runs): several calls timed in turn, every round
//                   enqueuing for each call (the flush,) a start event, the call, a stop event; the
//                   host waits only once, after the last round, so a call's host-side cost shows
//                   only where it exceeds the GPU time queued ahead of it. Median per call.
//                   graph_call_us(call, batch) and stream_call_us(call, batch): the time of one
//                   call from batches of `batch.calls` calls call(0), call(1), ... (the index lets
//                   a call rotate over copies of its operands), each batch between two events:
//                   captured once into a CUDA graph that is replayed (no host launch cost), or
//                   enqueued back to back (host cost included where it exceeds the GPU time).
//                   Median batch time / batch.calls.
//   BatchRuns       how such a batch measurement is taken: single warm-up calls first (outside
//                   any graph), calls per batch, untimed and timed batches.
//   CapturedGraph   the calls some code enqueues on a stream, captured into an instantiated CUDA
//                   graph (relaxed capture mode: an allocation that misses kiln's cache may call
//                   cudaMalloc during the capture); launch() replays it.
//   CopyBaseline    a cudaMemcpyAsync device-to-device copy moving `bytes` in all (half read, half
//                   written), the speed a memory-bound kernel is held against; its buffers are
//                   kept and grow on demand (reserve() sizes them up front).
//   BandwidthBench  the three together for memory-bound ops: times an op and a copy of the same
//                   bytes with the same Runs and prints one row
//                     case | shape | dtype | time (us) | GB/s | copy GB/s | ratio
//                   GB/s counting the bytes the op must read plus write (1 GB = 1e9 B) and
//                   ratio = GB/s / copy GB/s (1.0 = copy speed).
//   open_device()   prints the device's name and L2 size; false where no CUDA device is present.
//
// A benchmark's own comment says what its bytes count and which Runs it uses.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/kiln.hpp>

namespace kiln::bench {

struct Runs {
  int warmup = 3;         // untimed calls before the timed ones
  int timed = 25;         // timed calls; their median is reported
  bool flush_l2 = false;  // flush L2 before every timed call (outside the events)
};

// How a batch measurement (Timer::graph_call_us, stream_call_us) is taken.
struct BatchRuns {
  int warmup_calls = 3;                    // single calls first, untimed, outside any graph
  int calls = 20;                          // calls per batch (per graph)
  Runs batches{.warmup = 1, .timed = 15};  // untimed and timed batches (graph replays)
};

inline double median(std::vector<double> v) {
  check(!v.empty(), "bench::median", "empty sample");
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

class L2Flush {
 public:
  explicit L2Flush(int device = 0) {
    int l2 = 0;
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    junk_ = Tensor<std::uint8_t>({2 * static_cast<std::int64_t>(l2)}, Device::cuda(device));
  }

  // Enqueues the flush on `stream` (a different byte each time, so no write is a no-op).
  void operator()(cudaStream_t stream) {
    KILN_CUDA_CHECK(cudaMemsetAsync(junk_.data(), value_++ & 0xff, static_cast<std::size_t>(junk_.numel()), stream));
  }

 private:
  Tensor<std::uint8_t> junk_;
  int value_ = 0;
};

class Timer {
 public:
  explicit Timer(int device = 0) : device_(device) {}

  // Median microseconds of f() (see the file comment).
  double median_us(const std::function<void()>& f, const Runs& runs = {}) {
    const cudaStream_t stream = cuda::current_stream(device_);
    for (int i = 0; i < runs.warmup; ++i) f();
    std::vector<double> us;
    for (int i = 0; i < runs.timed; ++i) {
      if (runs.flush_l2) flush()(stream);
      start_.record(stream);
      f();
      stop_.record(stream);
      stop_.synchronize();
      us.push_back(1000.0 * stop_.elapsed_since(start_));
    }
    return median(us);
  }

  // Median microseconds of each of `calls`, interleaved (see the file comment): runs.warmup
  // untimed rounds of all the calls, a synchronisation, after_warmup() (when given: e.g. reading a
  // counter that the timed rounds should be measured against), then runs.timed timed rounds.
  std::vector<double> interleaved_median_us(const std::vector<std::function<void()>>& calls, const Runs& runs,
                                            const std::function<void()>& after_warmup = {}) {
    const cudaStream_t stream = cuda::current_stream(device_);
    if (runs.flush_l2) (void)flush();  // its buffer is allocated now, not among the timed calls
    for (int i = 0; i < runs.warmup; ++i)
      for (const auto& f : calls) f();
    cuda::synchronize(device_);
    if (after_warmup) after_warmup();
    const std::size_t n = calls.size(), rounds = static_cast<std::size_t>(runs.timed);
    std::unique_ptr<cuda::Event[]> events(new cuda::Event[2 * n * rounds]);
    for (std::size_t i = 0; i < rounds; ++i)
      for (std::size_t c = 0; c < n; ++c) {
        if (runs.flush_l2) flush()(stream);
        events[2 * (i * n + c)].record(stream);
        calls[c]();
        events[2 * (i * n + c) + 1].record(stream);
      }
    cuda::synchronize(device_);
    std::vector<double> medians;
    for (std::size_t c = 0; c < n; ++c) {
      std::vector<double> us;
      for (std::size_t i = 0; i < rounds; ++i)
        us.push_back(1000.0 * events[2 * (i * n + c) + 1].elapsed_since(events[2 * (i * n + c)]));
      medians.push_back(median(us));
    }
    return medians;
  }

  // Median microseconds of one call, from replays of a CUDA graph of batch.calls calls (see the
  // file comment). batch.warmup_calls single calls run first, outside the graph (plans, allocator
  // cache, kernel attributes), then the capture; batch.batches says how many replays are untimed
  // and timed (its flush_l2 is ignored: the calls rotate over their own operands instead).
  double graph_call_us(const std::function<void(int)>& call, const BatchRuns& batch);

  // The same for batch.calls calls enqueued back to back, without a graph.
  double stream_call_us(const std::function<void(int)>& call, const BatchRuns& batch);

  // The flush buffer, made on first use.
  L2Flush& flush() {
    if (!flush_) flush_ = std::make_unique<L2Flush>(device_);
    return *flush_;
  }

 private:
  int device_;
  cuda::Event start_, stop_;
  std::unique_ptr<L2Flush> flush_;
};

class CapturedGraph {
 public:
  // Captures what enqueue() enqueues on `stream` and instantiates the graph.
  CapturedGraph(cudaStream_t stream, const std::function<void()>& enqueue) {
    KILN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    try {
      enqueue();
    } catch (...) {
      cudaGraph_t partial = nullptr;  // end the capture so that the stream is usable again
      if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial) cudaGraphDestroy(partial);
      throw;
    }
    KILN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
    try {
      KILN_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
    } catch (...) {
      cudaGraphDestroy(graph_);
      throw;
    }
  }
  ~CapturedGraph() {
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  void launch(cudaStream_t stream) const { KILN_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

inline double Timer::graph_call_us(const std::function<void(int)>& call, const BatchRuns& batch) {
  const cudaStream_t stream = cuda::current_stream(device_);
  for (int i = 0; i < batch.warmup_calls; ++i) call(i);
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  const CapturedGraph graph(stream, [&] {
    for (int i = 0; i < batch.calls; ++i) call(i);
  });
  Runs replays = batch.batches;
  replays.flush_l2 = false;
  return median_us([&] { graph.launch(stream); }, replays) / batch.calls;
}

inline double Timer::stream_call_us(const std::function<void(int)>& call, const BatchRuns& batch) {
  for (int i = 0; i < batch.warmup_calls; ++i) call(i);
  Runs runs = batch.batches;
  runs.flush_l2 = false;
  return median_us(
             [&] {
               for (int i = 0; i < batch.calls; ++i) call(i);
             },
             runs) /
         batch.calls;
}

class CopyBaseline {
 public:
  explicit CopyBaseline(int device = 0) : device_(device) {}

  // Makes the buffers large enough for copies moving up to `bytes` in all.
  void reserve(double bytes) {
    const auto half = static_cast<std::int64_t>(bytes / 2);
    if (src_.defined() && src_.numel() >= half) return;
    src_ = dst_ = Tensor<std::uint8_t>();  // back to the allocator before the larger pair is made
    src_ = Tensor<std::uint8_t>({half}, Device::cuda(device_));
    dst_ = Tensor<std::uint8_t>({half}, Device::cuda(device_));
  }

  // Enqueues one copy moving `bytes` in all on kiln's current stream.
  void enqueue(double bytes) {
    reserve(bytes);
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst_.data(), src_.data(), static_cast<std::size_t>(bytes / 2),
                                    cudaMemcpyDeviceToDevice, cuda::current_stream(device_)));
  }

  double median_us(double bytes, Timer& timer, const Runs& runs) {
    reserve(bytes);
    return timer.median_us([&] { enqueue(bytes); }, runs);
  }

 private:
  int device_;
  Tensor<std::uint8_t> src_, dst_;
};

// Widths of BandwidthBench's case, shape and dtype columns.
struct Columns {
  int name = 30, shape = 22, dtype = 9;
};

class BandwidthBench {
 public:
  explicit BandwidthBench(Runs runs = {}, Columns columns = {}, int device = 0)
      : runs_(runs), columns_(columns), timer_(device), copy_(device) {}

  void print_header() const {
    std::printf("%-*s %-*s %-*s %10s %10s %10s %7s\n", columns_.name, "case", columns_.shape, "shape", columns_.dtype,
                "dtype", "time (us)", "GB/s", "copy GB/s", "ratio");
    std::fflush(stdout);
  }

  // Median microseconds of f() with this bench's Runs (flush_l2 as given).
  double time_us(const std::function<void()>& f, bool flush_l2 = false) {
    return timer_.median_us(f, with_flush(flush_l2));
  }

  // Prints the row of an op that took `us` moving `bytes`, next to a copy of the same bytes timed now.
  void print_row(const std::string& name, const std::string& shape, const std::string& dtype, double us,
                 double bytes, bool flush_l2 = false) {
    const double copy_us = copy_.median_us(bytes, timer_, with_flush(flush_l2));
    const double gbs = bytes / us / 1e3, copy_gbs = bytes / copy_us / 1e3;  // bytes per µs / 1e3 = GB/s
    std::printf("%-*s %-*s %-*s %10.1f %10.1f %10.1f %7.3f\n", columns_.name, name.c_str(), columns_.shape,
                shape.c_str(), columns_.dtype, dtype.c_str(), us, gbs, copy_gbs, gbs / copy_gbs);
    std::fflush(stdout);
  }

  // time_us + print_row; returns the op's microseconds.
  double row(const std::string& name, const std::string& shape, const std::string& dtype, double bytes,
             const std::function<void()>& f, bool flush_l2 = false) {
    const double us = time_us(f, flush_l2);
    print_row(name, shape, dtype, us, bytes, flush_l2);
    return us;
  }

  CopyBaseline& copy() { return copy_; }
  Timer& timer() { return timer_; }

 private:
  Runs with_flush(bool flush_l2) const {
    Runs r = runs_;
    r.flush_l2 = flush_l2;
    return r;
  }

  Runs runs_;
  Columns columns_;
  Timer timer_;
  CopyBaseline copy_;
};

// Prints the device's name and L2 size and returns true, or prints "no CUDA device" and returns
// false where there is none (a benchmark then exits 0).
inline bool open_device(int device = 0) {
  if (!cuda::available()) {
    std::puts("no CUDA device");
    return false;
  }
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s, L2 %d MB\n", prop.name, prop.l2CacheSize >> 20);
  return true;
}

}  // namespace kiln::bench
