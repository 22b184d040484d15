// The NCCL engine of the communicator interface (dist/communicator.hpp), for CUDA tensors: one
// process per GPU, launched with mpirun; MPI bootstraps NCCL and carries the control plane.
//
//   kiln::dist::MpiSession mpi(&argc, &argv);
//   auto host = kiln::dist::MpiCommunicator::world();
//   const int gpu = host->local_rank() % kiln::cuda::device_count();
//   auto comm = kiln::dist::NcclCommunicator::create(host, gpu);   // collective over host's ranks
//   model.to(kiln::Device::cuda(gpu));  ... dist::DataParallel<bf16> dp(comm, model.parameters());
//
// Compiled by g++ or nvcc (needs the CUDA include path); link libnccl and cudart, plus kiln's
// CUDA backend for the tensors themselves.
//
// - Bootstrap: rank 0 of `host` makes the ncclUniqueId, `host` broadcasts it, every rank calls
//   ncclCommInitRank on its GPU.
// - NVLink multicast (NVLS) is switched off: NCCL_NVLS_ENABLE=0 is set before NCCL initialises
//   unless the environment already says otherwise (the lent multi-GPU machines must keep it off).
//   kiln never calls cuMulticastCreate itself.
// - Data plane: collectives are queued on kiln's stream of the GPU (cuda::current_stream), so
//   they are ordered with the kiln ops around them and return at once. start_all_reduce and
//   start_reduce_scatter run on a side stream after an event on kiln's stream, so they overlap
//   the kernels queued after them; Work::wait() makes kiln's stream wait for them (the host does
//   not block). Buffers given to them must stay allocated until then: kiln's caching allocator
//   only knows kiln's stream (data parallel keeps its bucket buffers for its whole life).
// - Control plane (shape headers, counts, loads): through `host` (MPI, host memory), so checks
//   never wait for the GPU.
// - bf16 and fp16 reduce in NCCL's own types; fp8, uint8 and bool travel as bytes.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "kiln/backend/cuda/error.hpp"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/dist/communicator.hpp"

namespace kiln::dist {

namespace detail {

inline void nccl_check(ncclResult_t rc, const char* what, ncclComm_t comm = nullptr) {
  if (rc == ncclSuccess) return;
  const char* last = comm ? ncclGetLastError(comm) : nullptr;
  fail("dist::nccl", what, " failed: ", ncclGetErrorString(rc), last && *last ? str(" (", last, ")") : std::string());
}

inline ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::u8:
    case DType::boolean: return ncclUint8;
  }
  return ncclUint8;
}

inline ncclRedOp_t nccl_op(DType d, ReduceOp op, const char* name) {
  check(reducible(d), name, "cannot reduce ", d, " tensors (", reduce_op_name(op), ")");
  return op == ReduceOp::max ? ncclMax : ncclSum;
}

// A collective on the side stream; `done` is recorded after it.
class NcclWork final : public Work {
 public:
  NcclWork(cudaEvent_t done, int device) : done_(done), device_(device) {}
  ~NcclWork() override { cudaEventDestroy(done_); }  // released once the event completes
  bool test() override {
    const cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaErrorNotReady) return false;
    KILN_CUDA_CHECK(rc);
    return true;
  }
  void wait() override {
    cuda::DeviceGuard g(device_);
    KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(device_), done_, 0));
  }

 private:
  cudaEvent_t done_;
  int device_;
};

}  // namespace detail

class NcclCommunicator final : public Communicator {
 public:
  // Collective over the ranks of `host` (a CPU communicator, MPI): this process drives GPU `device`.
  static std::shared_ptr<NcclCommunicator> create(std::shared_ptr<Communicator> host, int device) {
    const char* op = "dist::NcclCommunicator";
    check(host != nullptr && host->device().is_cpu(), op, "needs a host (CPU, MPI) communicator for the bootstrap");
    check(device >= 0 && device < cuda::device_count(), op, "rank ", host->rank(), ": GPU ", device,
          " does not exist (", cuda::device_count(), " GPUs)");
    setenv("NCCL_NVLS_ENABLE", "0", 0);  // keep NVLink multicast off unless told otherwise
    ncclUniqueId id{};
    if (host->rank() == 0) detail::nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host->broadcast(&id, static_cast<std::int64_t>(sizeof(id)), DType::u8, 0);
    cuda::DeviceGuard g(device);
    ncclComm_t comm = nullptr;
    detail::nccl_check(ncclCommInitRank(&comm, host->size(), id, host->rank()), "ncclCommInitRank");
    return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(std::move(host), device, comm));
  }

  ~NcclCommunicator() override {
    cuda::DeviceGuard g(device_);
    if (side_) cudaStreamDestroy(side_);
    if (comm_) ncclCommDestroy(comm_);
  }

  Device device() const override { return Device::cuda(device_); }
  const char* engine() const override { return "nccl"; }
  ncclComm_t handle() const { return comm_; }
  const std::shared_ptr<Communicator>& host() const { return host_; }

  // ---- data plane ----

  void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    const ncclRedOp_t o = detail::nccl_op(dtype, op, "dist::all_reduce");
    cuda::DeviceGuard g(device_);
    detail::nccl_check(ncclAllReduce(data, data, static_cast<std::size_t>(count), detail::nccl_type(dtype), o, comm_,
                                     stream()),
                       "ncclAllReduce", comm_);
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DType dtype, ReduceOp op) override {
    const ncclRedOp_t o = detail::nccl_op(dtype, op, "dist::reduce_scatter");
    cuda::DeviceGuard g(device_);
    detail::nccl_check(ncclReduceScatter(send, recv, static_cast<std::size_t>(recv_count), detail::nccl_type(dtype), o,
                                         comm_, stream()),
                       "ncclReduceScatter", comm_);
  }

  void all_gather(const void* send, void* recv, std::int64_t send_count, DType dtype) override {
    cuda::DeviceGuard g(device_);
    detail::nccl_check(ncclAllGather(send, recv, static_cast<std::size_t>(send_count), detail::nccl_type(dtype), comm_,
                                     stream()),
                       "ncclAllGather", comm_);
  }

  // Point-to-point sends and receives in one group (NCCL has no all-to-all-v collective).
  void all_to_all_v(const void* send, const std::vector<std::int64_t>& send_counts, void* recv,
                    const std::vector<std::int64_t>& recv_counts, DType dtype) override {
    const std::size_t w = static_cast<std::size_t>(size());
    check(send_counts.size() == w && recv_counts.size() == w, "dist::all_to_all_v", "needs one count per rank (",
          w, "), got ", send_counts.size(), " send and ", recv_counts.size(), " receive counts");
    cuda::DeviceGuard g(device_);
    const cudaStream_t s = stream();
    const ncclDataType_t t = detail::nccl_type(dtype);
    const std::size_t bytes = element_size(dtype);
    const char* src = static_cast<const char*>(send);
    char* dst = static_cast<char*>(recv);
    detail::nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (std::size_t peer = 0; peer < w; ++peer) {
      if (send_counts[peer] > 0)
        detail::nccl_check(ncclSend(src, static_cast<std::size_t>(send_counts[peer]), t, static_cast<int>(peer), comm_, s),
                           "ncclSend", comm_);
      if (recv_counts[peer] > 0)
        detail::nccl_check(ncclRecv(dst, static_cast<std::size_t>(recv_counts[peer]), t, static_cast<int>(peer), comm_, s),
                           "ncclRecv", comm_);
      src += static_cast<std::size_t>(send_counts[peer]) * bytes;
      dst += static_cast<std::size_t>(recv_counts[peer]) * bytes;
    }
    detail::nccl_check(ncclGroupEnd(), "ncclGroupEnd", comm_);
  }

  void broadcast(void* data, std::int64_t count, DType dtype, int root) override {
    cuda::DeviceGuard g(device_);
    detail::nccl_check(ncclBroadcast(data, data, static_cast<std::size_t>(count), detail::nccl_type(dtype), root,
                                     comm_, stream()),
                       "ncclBroadcast", comm_);
  }

  // Every rank's queued GPU work is done and every rank got here.
  void barrier() override {
    cuda::DeviceGuard g(device_);
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
    host_->barrier();
  }

  std::unique_ptr<Work> start_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    const ncclRedOp_t o = detail::nccl_op(dtype, op, "dist::all_reduce");
    return on_side_stream([&](cudaStream_t s) {
      detail::nccl_check(ncclAllReduce(data, data, static_cast<std::size_t>(count), detail::nccl_type(dtype), o, comm_, s),
                         "ncclAllReduce", comm_);
    });
  }

  std::unique_ptr<Work> start_reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DType dtype,
                                             ReduceOp op) override {
    const ncclRedOp_t o = detail::nccl_op(dtype, op, "dist::reduce_scatter");
    return on_side_stream([&](cudaStream_t s) {
      detail::nccl_check(ncclReduceScatter(send, recv, static_cast<std::size_t>(recv_count), detail::nccl_type(dtype),
                                           o, comm_, s),
                         "ncclReduceScatter", comm_);
    });
  }

  // ---- control plane: the host communicator's ----
  using Communicator::all_gather_host;
  using Communicator::all_to_all_host;
  void all_gather_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) override {
    host_->all_gather_host(send, recv, n);
  }
  void all_to_all_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) override {
    host_->all_to_all_host(send, recv, n);
  }
  void all_reduce_host(std::int64_t* data, std::int64_t n, ReduceOp op) override { host_->all_reduce_host(data, n, op); }

  std::shared_ptr<Communicator> split(int color, int key) override {
    std::shared_ptr<Communicator> host = host_->split(color, key);
    cuda::DeviceGuard g(device_);
    ncclComm_t c = nullptr;
    detail::nccl_check(ncclCommSplit(comm_, color, key, &c, nullptr), "ncclCommSplit", comm_);
    return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(std::move(host), device_, c));
  }

 private:
  NcclCommunicator(std::shared_ptr<Communicator> host, int device, ncclComm_t comm)
      : Communicator(host->rank(), host->size()), host_(std::move(host)), device_(device), comm_(comm) {}

  cudaStream_t stream() const { return cuda::current_stream(device_); }

  // Runs `launch(side stream)` after the work queued so far on kiln's stream; returns its Work.
  template <class F>
  std::unique_ptr<Work> on_side_stream(F&& launch) {
    cuda::DeviceGuard g(device_);
    if (!side_) KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    cudaEvent_t ready = nullptr, done = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaEventRecord(ready, stream()));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(side_, ready, 0));
    cudaEventDestroy(ready);
    launch(side_);
    KILN_CUDA_CHECK(cudaEventRecord(done, side_));
    return std::make_unique<detail::NcclWork>(done, device_);
  }

  std::shared_ptr<Communicator> host_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t side_ = nullptr;
};

}  // namespace kiln::dist
