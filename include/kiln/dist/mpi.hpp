// The MPI engine of the communicator interface (dist/communicator.hpp), for CPU tensors, and the
// MPI start-up. Programs are launched with mpirun (OpenMPI):
//   mpirun -np 2 ./program
// and build with MPI::MPI_CXX (CMake: find_package(MPI COMPONENTS CXX)).
//
//   int main(int argc, char** argv) {
//     kiln::dist::MpiSession mpi(&argc, &argv);        // MPI_Init_thread ... MPI_Finalize
//     auto world = kiln::dist::MpiCommunicator::world();
//     ...
//   }
//
// Element types: float, double, int32, int64 map to MPI's own; bf16 and fp16 travel as 16-bit
// words and reduce through user-defined MPI operations that widen to float, add (or take the max)
// and round back to nearest even; fp8, uint8 and bool travel as bytes (uint8 also reduces).
// MPI counts are ints: all-reduces and broadcasts are cut into pieces of at most 2^30 elements;
// the other collectives fail with a clear error beyond 2^31 − 1 elements.
//
// Non-blocking collectives (MPI_Iallreduce, MPI_Ireduce_scatter_block) progress only inside MPI
// calls in OpenMPI's default build: Work::test() is such a call, and data parallel training calls
// it from each gradient hook, so the transfers move while backward runs.
//
// Threads: MPI is initialised with MPI_THREAD_FUNNELED: only the thread that initialised it makes
// MPI calls (kiln's OpenMP loops never do).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/core/low_precision.hpp"
#include "kiln/dist/communicator.hpp"

namespace kiln::dist {

namespace detail {

inline void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  fail("dist::mpi", what, " failed: ", std::string(text, static_cast<std::size_t>(length)));
}

inline bool mpi_running() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

inline int mpi_count(std::int64_t n, const char* op) {
  check(n >= 0 && n <= INT_MAX, op, "MPI counts are ints: ", n, " elements exceed ", INT_MAX,
        "; split the tensor");
  return static_cast<int>(n);
}

// Reduction of 16-bit floats (T = bf16 or fp16) through float, rounded back once per pair.
template <class T, bool Max>
void reduce_half(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    b[i] = T(Max ? (x > y || x != x ? x : y) : x + y);
  }
}

template <class T, bool Max>
MPI_Op half_op() {
  static const MPI_Op op = [] {
    MPI_Op o;
    mpi_check(MPI_Op_create(&reduce_half<T, Max>, 1, &o), "MPI_Op_create");
    return o;
  }();
  return op;
}

inline MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::u8:
    case DType::boolean: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

inline MPI_Op mpi_op(DType d, ReduceOp op, const char* name) {
  check(reducible(d), name, "cannot reduce ", d, " tensors (", reduce_op_name(op), ")");
  const bool max = op == ReduceOp::max;
  if (d == DType::bf16) return max ? half_op<bf16, true>() : half_op<bf16, false>();
  if (d == DType::f16) return max ? half_op<fp16, true>() : half_op<fp16, false>();
  return max ? MPI_MAX : MPI_SUM;
}

class MpiWork final : public Work {
 public:
  explicit MpiWork(std::vector<MPI_Request> requests) : requests_(std::move(requests)) {}
  ~MpiWork() override {
    if (!requests_.empty() && mpi_running())
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  bool test() override {
    if (requests_.empty()) return true;
    int done = 0;
    mpi_check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (done) requests_.clear();
    return done != 0;
  }
  void wait() override {
    if (requests_.empty()) return;
    mpi_check(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    requests_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
};

}  // namespace detail

// Initialises MPI (if nothing else did) for the lifetime of the object; finalises it at the end if
// it initialised it. Create one at the top of main, before any communicator.
class MpiSession {
 public:
  MpiSession() : MpiSession(nullptr, nullptr) {}
  MpiSession(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owned_ = true;
  }
  ~MpiSession() {
    if (owned_ && detail::mpi_running()) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owned_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  // All the processes of the job (MPI_COMM_WORLD). MPI must be initialised (MpiSession).
  static std::shared_ptr<MpiCommunicator> world() {
    check(detail::mpi_running(), "dist::MpiCommunicator", "MPI is not initialised: create a dist::MpiSession first");
    return std::shared_ptr<MpiCommunicator>(new MpiCommunicator(MPI_COMM_WORLD, false));
  }

  ~MpiCommunicator() override {
    if (owned_ && detail::mpi_running()) MPI_Comm_free(&comm_);
  }

  Device device() const override { return Device::cpu(); }
  const char* engine() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }

  // This process's index among the processes of its host (to pick a GPU: one per process).
  int local_rank() const {
    MPI_Comm local;
    detail::mpi_check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &local),
                      "MPI_Comm_split_type");
    int r = 0;
    MPI_Comm_rank(local, &r);
    MPI_Comm_free(&local);
    return r;
  }

  // ---- data plane ----

  void all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    const MPI_Op mop = detail::mpi_op(dtype, op, "dist::all_reduce");
    for_pieces(data, count, dtype, [&](void* p, int n) {
      detail::mpi_check(MPI_Allreduce(MPI_IN_PLACE, p, n, detail::mpi_type(dtype), mop, comm_), "MPI_Allreduce");
    });
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DType dtype, ReduceOp op) override {
    const MPI_Op mop = detail::mpi_op(dtype, op, "dist::reduce_scatter");
    detail::mpi_count(recv_count * size(), "dist::reduce_scatter");
    detail::mpi_check(MPI_Reduce_scatter_block(send, recv, static_cast<int>(recv_count), detail::mpi_type(dtype), mop,
                                               comm_),
                      "MPI_Reduce_scatter_block");
  }

  void all_gather(const void* send, void* recv, std::int64_t send_count, DType dtype) override {
    const int n = detail::mpi_count(send_count, "dist::all_gather");
    detail::mpi_count(send_count * size(), "dist::all_gather");
    const MPI_Datatype t = detail::mpi_type(dtype);
    const bool in_place = send == static_cast<const char*>(recv) + static_cast<std::size_t>(send_count) *
                                                                     static_cast<std::size_t>(rank()) *
                                                                     element_size(dtype);
    detail::mpi_check(MPI_Allgather(in_place ? MPI_IN_PLACE : send, n, t, recv, n, t, comm_), "MPI_Allgather");
  }

  void all_to_all_v(const void* send, const std::vector<std::int64_t>& send_counts, void* recv,
                    const std::vector<std::int64_t>& recv_counts, DType dtype) override {
    const std::size_t w = static_cast<std::size_t>(size());
    check(send_counts.size() == w && recv_counts.size() == w, "dist::all_to_all_v", "needs one count per rank (",
          w, "), got ", send_counts.size(), " send and ", recv_counts.size(), " receive counts");
    std::vector<int> sc(w), sd(w), rc(w), rd(w);
    std::int64_t so = 0, ro = 0;
    for (std::size_t r = 0; r < w; ++r) {
      sc[r] = detail::mpi_count(send_counts[r], "dist::all_to_all_v");
      rc[r] = detail::mpi_count(recv_counts[r], "dist::all_to_all_v");
      sd[r] = detail::mpi_count(so, "dist::all_to_all_v");
      rd[r] = detail::mpi_count(ro, "dist::all_to_all_v");
      so += send_counts[r];
      ro += recv_counts[r];
    }
    const MPI_Datatype t = detail::mpi_type(dtype);
    detail::mpi_check(MPI_Alltoallv(send, sc.data(), sd.data(), t, recv, rc.data(), rd.data(), t, comm_),
                      "MPI_Alltoallv");
  }

  void broadcast(void* data, std::int64_t count, DType dtype, int root) override {
    for_pieces(data, count, dtype, [&](void* p, int n) {
      detail::mpi_check(MPI_Bcast(p, n, detail::mpi_type(dtype), root, comm_), "MPI_Bcast");
    });
  }

  void barrier() override { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }

  std::unique_ptr<Work> start_all_reduce(void* data, std::int64_t count, DType dtype, ReduceOp op) override {
    const MPI_Op mop = detail::mpi_op(dtype, op, "dist::all_reduce");
    std::vector<MPI_Request> requests;
    for_pieces(data, count, dtype, [&](void* p, int n) {
      requests.emplace_back();
      detail::mpi_check(MPI_Iallreduce(MPI_IN_PLACE, p, n, detail::mpi_type(dtype), mop, comm_, &requests.back()),
                        "MPI_Iallreduce");
    });
    return std::make_unique<detail::MpiWork>(std::move(requests));
  }

  std::unique_ptr<Work> start_reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DType dtype,
                                             ReduceOp op) override {
    const MPI_Op mop = detail::mpi_op(dtype, op, "dist::reduce_scatter");
    detail::mpi_count(recv_count * size(), "dist::reduce_scatter");
    std::vector<MPI_Request> requests(1);
    detail::mpi_check(MPI_Ireduce_scatter_block(send, recv, static_cast<int>(recv_count), detail::mpi_type(dtype), mop,
                                                comm_, &requests[0]),
                      "MPI_Ireduce_scatter_block");
    return std::make_unique<detail::MpiWork>(std::move(requests));
  }

  // ---- control plane ----
  using Communicator::all_gather_host;  // the std::vector forms
  using Communicator::all_to_all_host;

  void all_gather_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) override {
    const int c = detail::mpi_count(n, "dist::all_gather_host");
    detail::mpi_check(MPI_Allgather(send, c, MPI_INT64_T, recv, c, MPI_INT64_T, comm_), "MPI_Allgather");
  }
  void all_to_all_host(const std::int64_t* send, std::int64_t* recv, std::int64_t n) override {
    const int c = detail::mpi_count(n, "dist::all_to_all_host");
    detail::mpi_check(MPI_Alltoall(send, c, MPI_INT64_T, recv, c, MPI_INT64_T, comm_), "MPI_Alltoall");
  }
  void all_reduce_host(std::int64_t* data, std::int64_t n, ReduceOp op) override {
    detail::mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, detail::mpi_count(n, "dist::all_reduce_host"), MPI_INT64_T,
                                    op == ReduceOp::max ? MPI_MAX : MPI_SUM, comm_),
                      "MPI_Allreduce");
  }

  std::shared_ptr<Communicator> split(int color, int key) override { return split_mpi(color, key); }
  std::shared_ptr<MpiCommunicator> split_mpi(int color, int key) {
    MPI_Comm c;
    detail::mpi_check(MPI_Comm_split(comm_, color, key, &c), "MPI_Comm_split");
    return std::shared_ptr<MpiCommunicator>(new MpiCommunicator(c, true));
  }

 private:
  MpiCommunicator(MPI_Comm comm, bool owned) : Communicator(rank_of(comm), size_of(comm)), comm_(comm), owned_(owned) {
    // Errors come back as return codes (turned into kiln::Error) instead of aborting the job.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  static int rank_of(MPI_Comm c) {
    int r = 0;
    MPI_Comm_rank(c, &r);
    return r;
  }
  static int size_of(MPI_Comm c) {
    int s = 0;
    MPI_Comm_size(c, &s);
    return s;
  }

  // Calls f(pointer, count) over pieces of at most 2^30 elements (MPI counts are ints).
  template <class F>
  static void for_pieces(void* data, std::int64_t count, DType dtype, F&& f) {
    constexpr std::int64_t piece = std::int64_t(1) << 30;
    auto* p = static_cast<char*>(data);
    if (count == 0) return f(data, 0);
    for (std::int64_t done = 0; done < count; done += piece)
      f(p + static_cast<std::size_t>(done) * element_size(dtype), static_cast<int>(std::min(piece, count - done)));
  }

  MPI_Comm comm_;
  bool owned_;
};

}  // namespace kiln::dist
