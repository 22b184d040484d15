// CUDA graphs behind core/device_graph.hpp (the backend table's graph_* entries; the semantics
// and the rules for the captured function are documented there).
//
// Each graph owns a stream. Between graph_begin and graph_end that stream is this thread's kiln
// stream for the device (a StreamGuard-like override), so the warm-up run and the capture both
// allocate from the caching allocator's pool for that stream: the blocks freed during the
// capture are reused within it and by no other work, so the recorded pointers stay valid. The
// graph stream waits for the device's kiln stream at begin and at every replay, and the kiln
// stream waits for the graph stream after the warm-up and after every replay: a replay is ordered
// like any other kiln op. Capture uses cudaStreamCaptureModeRelaxed, so that an allocation that
// misses the pool (a cudaMalloc) during capture is legal.
#pragma once

#include <cuda_runtime.h>

#include "kiln/backend/cuda/allocator.hpp"
#include "kiln/backend/cuda/stream.hpp"

namespace kiln::cuda {

struct Graph {
  int device = 0;
  cudaStream_t stream = nullptr;      // the graph's own stream
  cudaStream_t kiln_stream = nullptr; // the thread's kiln stream when the graph began
  cudaStream_t saved_override = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool capturing = false, stream_installed = false;
};

namespace graph_detail {

inline void restore_stream(Graph& g) {
  if (g.stream_installed) {
    detail::thread_stream_override(g.device) = g.saved_override;
    g.stream_installed = false;
  }
}

// `waiter` continues after the work queued on `signaller` so far.
inline void order_after(cudaStream_t waiter, cudaStream_t signaller, cudaEvent_t event) {
  KILN_CUDA_CHECK(cudaEventRecord(event, signaller));
  KILN_CUDA_CHECK(cudaStreamWaitEvent(waiter, event, 0));
}

}  // namespace graph_detail

inline void* graph_begin(int device) {
  DeviceGuard guard(device);
  auto* g = new Graph;
  g->device = device;
  g->kiln_stream = current_stream(device);
  try {
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&g->ready, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&g->done, cudaEventDisableTiming));
    graph_detail::order_after(g->stream, g->kiln_stream, g->ready);
  } catch (...) {
    if (g->stream) cudaStreamDestroy(g->stream);
    if (g->ready) cudaEventDestroy(g->ready);
    if (g->done) cudaEventDestroy(g->done);
    delete g;
    throw;
  }
  g->saved_override = detail::thread_stream_override(device);
  detail::thread_stream_override(device) = g->stream;
  g->stream_installed = true;
  return g;
}

inline void graph_record(void* handle) {
  auto* g = static_cast<Graph*>(handle);
  // The warm-up's results must be visible to the kiln stream whatever happens to the capture.
  graph_detail::order_after(g->kiln_stream, g->stream, g->done);
  KILN_CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeRelaxed));
  g->capturing = true;
}

inline void graph_end(void* handle) {
  auto* g = static_cast<Graph*>(handle);
  DeviceGuard guard(g->device);
  cudaGraph_t graph = nullptr;
  g->capturing = false;
  const cudaError_t e = cudaStreamEndCapture(g->stream, &graph);
  graph_detail::restore_stream(*g);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("DeviceGraph", "capture failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e),
         " (a captured function must not synchronise with the host or use another stream)");
  }
  const cudaError_t i = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  if (i != cudaSuccess) {
    cudaGetLastError();
    fail("DeviceGraph", "instantiating the captured graph failed: ", cudaGetErrorString(i));
  }
}

inline void graph_replay(void* handle) {
  auto* g = static_cast<Graph*>(handle);
  DeviceGuard guard(g->device);
  const cudaStream_t kiln_stream = current_stream(g->device);
  graph_detail::order_after(g->stream, kiln_stream, g->ready);
  KILN_CUDA_CHECK(cudaGraphLaunch(g->exec, g->stream));
  graph_detail::order_after(kiln_stream, g->stream, g->done);
}

inline void graph_destroy(void* handle) {
  auto* g = static_cast<Graph*>(handle);
  DeviceGuard guard(g->device);
  if (g->capturing) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(g->stream, &partial);
    if (partial) cudaGraphDestroy(partial);
    cudaGetLastError();
  }
  graph_detail::restore_stream(*g);
  cudaStreamSynchronize(g->stream);
  if (g->exec) cudaGraphExecDestroy(g->exec);
  // Blocks cached for the graph's stream go back to the kiln stream's pool; blocks of tensors
  // still alive are returned there when they are freed.
  CachingAllocator::instance().retire_stream(g->device, g->stream, g->kiln_stream);
  cudaStreamDestroy(g->stream);
  cudaEventDestroy(g->ready);
  cudaEventDestroy(g->done);
  delete g;
}

}  // namespace kiln::cuda
