// The communicator interface: a group of processes ("ranks", one per device) that run collective
// operations together. Two engines implement it:
//   - MpiCommunicator (dist/mpi.hpp): CPU tensors, through MPI (launched with mpirun);
//   - NcclCommunicator (dist/nccl.hpp): CUDA tensors, through NCCL, one process per GPU, with an
//     MPI communicator beside it for the bootstrap and the host-side exchanges.
//
// Two planes:
//   - the data plane moves tensor data: raw buffers in the engine's device memory, counted in
//     elements of a DType. Blocking calls are done when they return on the CPU; on a GPU they are
//     queued on kiln's stream (kiln::cuda::current_stream), so later kiln work sees their results.
//     start_all_reduce / start_reduce_scatter return a Work to wait for later: communication that
//     overlaps computation (MPI_Iallreduce; NCCL on a side stream);
//   - the control plane exchanges small int64 arrays in host memory, blocking: shape headers for
//     the agreement checks (dist/agreement.hpp), all-to-all counts, expert loads.
// Every rank must call the same collectives in the same order (MPI's and NCCL's rule). The typed
// front-ends on kiln tensors are in dist/collectives.hpp; they check that ranks agree first.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/core/device.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/core/error.hpp"

namespace kiln::dist {

enum class ReduceOp { sum, max };

inline const char* reduce_op_name(ReduceOp op) { return op == ReduceOp::sum ? "sum" : "max"; }

// Bytes per element of a DType.
inline std::size_t element_size(DType d) {
  switch (d) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::u8:
    case DType::boolean: return 1;
  }
  return 1;
}

// Whether sum and max are defined for a DType in both engines (fp8 and bool only move).
inline bool reducible(DType d) {
  return d != DType::fp8_e4m3 && d != DType::fp8_e5m2 && d != DType::boolean;
}

// A non-blocking collective in flight. Its buffers must stay alive and untouched until wait().
class Work {
 public:
  virtual ~Work() = default;
  // Lets the operation progress (MPI moves data only inside MPI calls); true once it is done.
  virtual bool test() = 0;
  // CPU: blocks until done. GPU: makes kiln's stream wait for it (the host does not block).
  virtual void wait() = 0;
};

// Held by std::shared_ptr (the engines' factories return one): differentiable collectives keep
// their communicator alive for the backward pass through shared_from_this().
class Communicator : public std::enable_shared_from_this<Communicator> {
 public:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Where the tensors of this communicator live: the CPU (MPI) or this rank's GPU (NCCL).
  virtual Device device() const = 0;
  virtual const char* engine() const = 0;

  // ---- data plane: raw buffers on device(), counts in elements ----
  // In place: every rank ends with the reduction of all ranks' `count` elements.
  virtual void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  // send holds size()·recv_count elements; rank r receives the reduction of block r.
  virtual void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DType dtype, ReduceOp op) = 0;
  // recv holds size()·send_count elements: block r is rank r's send. send may be recv's own block
  // (send == recv + rank·send_count, in place).
  virtual void all_gather(const void* send, void* recv, std::int64_t send_count, DType dtype) = 0;
  // send_counts[r] elements go to rank r (consecutive blocks of send, in rank order); recv gets
  // recv_counts[r] elements from rank r (consecutive blocks in rank order). The counts must match
  // pairwise (rank a's send_counts[b] == rank b's recv_counts[a]): exchange them first.
  virtual void all_to_all_v(const void* send, const std::vector<std::int64_t>& send_counts, void* recv,
                            const std::vector<std::int64_t>& recv_counts, DType dtype) = 0;
  virtual void broadcast(void* data, std::int64_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;

  // Non-blocking forms of all_reduce and reduce_scatter, for overlap with computation.
  virtual std::unique_ptr<Work> start_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> start_reduce_scatter(const void* send, void* recv, std::int64_t recv_count,
                                                     DType dtype, ReduceOp op) = 0;

  // ---- control plane: host memory, blocking ----
  // recv (size()·n values) gets every rank's n values, in rank order.
  virtual void all_gather_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) = 0;
  // send and recv hold size()·n values: block r of send goes to rank r, block r of recv came from it.
  virtual void all_to_all_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) = 0;
  // In place, over n values.
  virtual void all_reduce_host(std::int64_t* data, std::int64_t n, ReduceOp op) = 0;

  // A new communicator over the ranks that pass the same color, ordered by key (collective over
  // this one). Use split(0, rank()) for a duplicate whose collectives never interleave with this
  // one's (data parallel keeps its own, so its bucket all-reduces cannot mismatch other calls).
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // Host vectors through the control plane.
  std::vector<std::int64_t> all_gather_host(const std::vector<std::int64_t>& values) {
    std::vector<std::int64_t> out(values.size() * static_cast<std::size_t>(size_));
    all_gather_host(values.data(), out.data(), static_cast<std::int64_t>(values.size()));
    return out;
  }
  std::vector<std::int64_t> all_to_all_host(const std::vector<std::int64_t>& values) {
    check(values.size() % static_cast<std::size_t>(size_) == 0, "dist::all_to_all_host", values.size(),
          " values do not split into ", size_, " equal blocks");
    std::vector<std::int64_t> out(values.size());
    all_to_all_host(values.data(), out.data(), static_cast<std::int64_t>(values.size()) / size_);
    return out;
  }

 private:
  int rank_, size_;
};

}  // namespace kiln::dist
