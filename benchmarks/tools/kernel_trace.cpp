// A timeline of every kernel, copy and memset a CUDA program runs, as the GPU ran them (start and
// end in ns), for machines without Nsight Systems. Nsight Compute times each kernel alone (it
// serialises them and replays each); this records the run as it happens, so the gaps between
// kernels show: a training step whose kernels take 16.6 ms under ncu takes 20.8 ms on the GPU
// (docs/training.md), and the difference is in those gaps.
//
// Built as a shared library that the CUDA driver loads into any program at its first CUDA call
// (CUPTI's injection: the driver calls InitializeInjection), so nothing in the program changes:
//
//   export CUDA_INJECTION64_PATH=build/benchmarks/libkernel_trace.so KILN_TRACE_OUT=trace.csv
//   build/examples/pretrain --device cuda --config big --steps 20
//   scripts/kernel_gaps.py trace.csv --boundary adamw_kernel
//
// Output (written at exit): one line per activity, `start_ns,end_ns,stream,kind,grid,name` with
// kind kernel, memcpy or memset and the kernel's demangled name (quoted). CUPTI's activity API
// buffers the records and hands them over in batches, so the tracing itself adds little to the
// GPU's timeline (a few percent of the host's launch time).
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  unsigned long long start, end;
  unsigned stream;
  const char* kind;
  std::string grid, name;
};

std::mutex records_mutex;
std::vector<Record>& records() {
  static auto* r = new std::vector<Record>();  // never destroyed: the exit handler still reads it
  return *r;
}

void check(CUptiResult r, const char* call) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel_trace: %s failed: %s\n", call, text ? text : "unknown error");
}

std::string demangled(const char* name) {
  if (!name) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  return out;
}

constexpr std::size_t kBufferBytes = 8u << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = kBufferBytes;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Record> batch;
  CUpti_Activity* a = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &a) == CUPTI_SUCCESS) {
    if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
      batch.push_back({k->start, k->end, k->streamId, "kernel",
                       std::to_string(k->gridX) + "x" + std::to_string(k->gridY) + "x" + std::to_string(k->gridZ),
                       demangled(k->name)});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(a);
      batch.push_back({m->start, m->end, m->streamId, "memcpy", std::to_string(m->bytes) + "B",
                       "memcpy kind " + std::to_string(m->copyKind)});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(a);
      batch.push_back({m->start, m->end, m->streamId, "memset", std::to_string(m->bytes) + "B", "memset"});
    }
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  if (dropped) std::fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
  std::free(buffer);
  std::lock_guard<std::mutex> lock(records_mutex);
  for (Record& r : batch) records().push_back(std::move(r));
}

void write_trace() {
  check(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
  const char* path = std::getenv("KILN_TRACE_OUT");
  std::FILE* f = std::fopen(path && *path ? path : "kernel_trace.csv", "w");
  if (!f) {
    std::perror("kernel_trace: cannot write the trace");
    return;
  }
  std::lock_guard<std::mutex> lock(records_mutex);
  std::fprintf(f, "start_ns,end_ns,stream,kind,grid,name\n");
  for (const Record& r : records()) {
    std::string name = r.name;
    for (char& c : name)
      if (c == '"') c = '\'';
    std::fprintf(f, "%llu,%llu,%u,%s,%s,\"%s\"\n", r.start, r.end, r.stream, r.kind, r.grid.c_str(), name.c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu activities written to %s\n", records().size(),
               path && *path ? path : "kernel_trace.csv");
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection(void) {
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable(kernel)");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityEnable(memcpy)");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "cuptiActivityEnable(memset)");
  std::atexit(write_trace);
  return 1;
}
