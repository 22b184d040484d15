// Record once, replay many times: a CUDA graph of the kiln work a function queues on a device.
//
// A generation engine's decode step is a few hundred small kernels; launched one by one from the
// host they cost more than they compute. Captured into a graph, one cudaGraphLaunch replays them
// all. The capture records kernels with the pointers they were given, so a graph is only valid
// while those pointers are: the function must read its inputs from, and write its outputs to,
// tensors that live as long as the graph (allocate them before capturing and copy fresh values
// into them before each replay), and must not synchronise with the host (item(), to_vector(), a
// copy to the CPU, or an op that reads a result back: see DeviceReadbackGuard in
// core/device_readback.hpp, which the capture turns on).
//
// Memory: the capture runs on a stream of the graph's own; tensors the function allocates come
// from the caching allocator's pool for that stream, which no other work uses, so the blocks the
// graph's kernels write stay reserved for it between replays (backend/cuda/graph.hpp). A warm-up
// run on the same stream before the capture fills that pool, so the capture itself makes no
// cudaMalloc.
//
// Replays are ordered with the device's current kiln stream on both sides: a replay starts after
// the work queued before it and the work queued after it waits for the replay.
//
// Reached through the backend table, so g++-compiled code can capture and replay too; a CPU
// device has no graphs (capture simply runs the function, replay runs it again).
#pragma once

#include <functional>
#include <utility>

#include "kiln/core/device.hpp"
#include "kiln/core/device_readback.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/storage.hpp"

namespace kiln {

class DeviceGraph {
 public:
  DeviceGraph() = default;
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;
  DeviceGraph(DeviceGraph&& o) noexcept { *this = std::move(o); }
  DeviceGraph& operator=(DeviceGraph&& o) noexcept {
    if (this != &o) {
      reset();
      device_ = o.device_;
      graph_ = std::exchange(o.graph_, nullptr);
      fn_ = std::move(o.fn_);
    }
    return *this;
  }
  ~DeviceGraph() { reset(); }

  // Runs fn once for real (the warm-up: it fills the graph stream's allocator pool), records it
  // (a second call of fn, which only queues: the tensors it assigns are allocated but not yet
  // computed), then replays the graph once, so that after capture() those tensors hold fn's
  // results as after an eager call. On the CPU: runs fn, and replay() runs it again.
  void capture(Device device, std::function<void()> fn) {
    reset();
    device_ = device;
    if (device.is_cpu()) {
      fn_ = std::move(fn);
      fn_();
      return;
    }
    DeviceBackend& b = backend_for("DeviceGraph", device);
    check(b.graph_begin && b.graph_record && b.graph_end && b.graph_replay && b.graph_destroy, "DeviceGraph",
          "the registered backend has no graph support");
    DeviceReadbackGuard no_readbacks;
    void* graph = b.graph_begin(device.index);
    bool recording = false;
    try {
      fn();
      b.graph_record(graph);
      recording = true;
      fn();
      b.graph_end(graph);
    } catch (const Error& e) {
      b.graph_destroy(graph);
      if (!recording) throw;
      fail("DeviceGraph", "capture failed (a captured function must not synchronise with the host, copy to the CPU ",
           "or read a result back): ", e.what());
    } catch (...) {
      b.graph_destroy(graph);
      throw;
    }
    graph_ = graph;
    b.graph_replay(graph_);  // fill what the recording's fn assigned
  }

  void replay() const {
    check(device_.is_cpu() ? static_cast<bool>(fn_) : graph_ != nullptr, "DeviceGraph", "replay before capture");
    if (device_.is_cpu()) {
      fn_();
      return;
    }
    backend_for("DeviceGraph", device_).graph_replay(graph_);
  }

  bool captured() const { return graph_ != nullptr || static_cast<bool>(fn_); }

  void reset() {
    if (graph_ && cuda_backend()) cuda_backend()->graph_destroy(graph_);
    graph_ = nullptr;
    fn_ = nullptr;
  }

 private:
  Device device_ = Device::cpu();
  void* graph_ = nullptr;
  std::function<void()> fn_;  // CPU: the function itself
};

}  // namespace kiln
