// Collectives on kiln tensors, over any communicator (dist/communicator.hpp): the tensors live on
// the communicator's device (CPU for MPI, this rank's GPU for NCCL). Every call first checks that
// all ranks pass matching tensors (dist/agreement.hpp) and throws the same kiln::Error on every
// rank otherwise.
//
//   all_reduce(comm, t, op)            in place: t = op over ranks of t          (same shape everywhere)
//   reduce_scatter(comm, t, op)        t [W·n, ...] -> [n, ...]: rank r gets block r of the reduction
//   all_gather(comm, t)                t [n, ...]   -> [W·n, ...]: block r is rank r's t
//   broadcast(comm, t, root)           in place: t = root's t
//   all_to_all_v(comm, t, counts)      rows counts[r] of t go to rank r; returns the rows received
//                                      (in rank order) and how many came from each rank. The
//                                      counts are exchanged first. Differentiable: the gradient
//                                      goes back through the reverse all-to-all.
//   barrier(comm)
// (W = comm.size()). In-place ops accept non-contiguous tensors (through a contiguous copy). On a
// GPU the data moves on kiln's stream: the calls return before it is done, later kiln work waits.
// Only all_to_all_v records a gradient; the in-place ops change data and are not differentiable.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/dist/agreement.hpp"
#include "kiln/dist/communicator.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln::dist {

namespace detail {

// dst <- src (same shape, any strides), queued on the device's stream (no host synchronisation,
// unlike copy_bytes between device buffers).
template <class T>
void copy_into(const Tensor<T>& dst, const Tensor<T>& src) {
  check(dst.shape() == src.shape() && dst.device() == src.device(), "dist::copy_into", "shapes ", dst.shape(), " and ",
        src.shape(), " on ", dst.device(), " and ", src.device());
  if (dst.numel() == 0) return;
  if (!dst.device().is_cpu()) {
    launch_device_kernel("dist::copy_into", kernels::CastArgs{.launch = launch_on("dist::copy_into", dst.device()),
                                                              .out = kernel_view(dst),
                                                              .in = kernel_view(src)});
  } else if (dst.is_contiguous() && src.is_contiguous()) {
    std::memcpy(static_cast<void*>(dst.data()), src.data(), static_cast<std::size_t>(dst.numel()) * sizeof(T));
  } else {
    cpu::map(dst, src, [](const T& x) { return x; });
  }
}

template <class T>
void fill_zero(const Tensor<T>& dst) {
  if (dst.numel() == 0) return;
  if (!dst.device().is_cpu()) {
    launch_device_kernel("dist::fill_zero", kernels::FillArgs{.launch = launch_on("dist::fill_zero", dst.device()),
                                                              .out = kernel_view(dst),
                                                              .value = 0.0});
  } else {
    cpu::fill(dst, convert<T>(0.0));
  }
}

template <class T>
CallHeader header(Communicator& comm, Collective op, const Tensor<T>& t, std::int64_t extra = 0) {
  CallHeader h;
  h.op = op;
  h.dtype = dtype_of<T>;
  h.shape = t.shape();
  h.device = t.device();
  h.extra = extra;
  if (t.device() != comm.device()) h.problem = Problem::wrong_device;
  return h;
}

template <class T>
void check_reducible(const char* op_name, ReduceOp op) {
  check(reducible(dtype_of<T>), op_name, "cannot reduce ", dtype_name<T>, " tensors (", reduce_op_name(op),
        "): only move them (all_gather, broadcast, all_to_all_v)");
}

// The data of an all-to-all with known counts (no check, no graph).
template <class T>
Tensor<T> all_to_all_rows(Communicator& comm, const Tensor<T>& t, const std::vector<std::int64_t>& send_rows,
                          const std::vector<std::int64_t>& recv_rows) {
  const Tensor<T> src = contiguous(t.detach());
  std::int64_t row = 1;
  for (std::size_t d = 1; d < t.shape().size(); ++d) row *= t.shape()[d];
  std::vector<std::int64_t> send(send_rows.size()), recv(recv_rows.size());
  for (std::size_t r = 0; r < send.size(); ++r) send[r] = send_rows[r] * row;
  for (std::size_t r = 0; r < recv.size(); ++r) recv[r] = recv_rows[r] * row;
  Shape shape = t.shape();
  shape[0] = std::accumulate(recv_rows.begin(), recv_rows.end(), std::int64_t(0));
  Tensor<T> out(shape, t.device());
  comm.all_to_all_v(src.data(), send, out.data(), recv, dtype_of<T>);
  return out;
}

}  // namespace detail

template <class T>
void all_reduce(Communicator& comm, const Tensor<T>& t, ReduceOp op = ReduceOp::sum) {
  const char* name = "dist::all_reduce";
  check_defined(name, t);
  agree(comm, name, detail::header(comm, Collective::all_reduce, t, static_cast<std::int64_t>(op)), ShapeRule::same,
        "reduce op (0 = sum, 1 = max)");
  detail::check_reducible<T>(name, op);
  NoGradGuard no_grad;
  const Tensor<T> work = t.is_contiguous() ? t.detach() : contiguous(t.detach());
  comm.all_reduce(work.data(), work.numel(), dtype_of<T>, op);
  if (!t.is_contiguous()) detail::copy_into(t.detach(), work);
}

template <class T>
Tensor<T> reduce_scatter(Communicator& comm, const Tensor<T>& t, ReduceOp op = ReduceOp::sum) {
  const char* name = "dist::reduce_scatter";
  check_defined(name, t);
  agree(comm, name, detail::header(comm, Collective::reduce_scatter, t, static_cast<std::int64_t>(op)),
        ShapeRule::same, "reduce op (0 = sum, 1 = max)");
  detail::check_reducible<T>(name, op);
  check(t.dim() >= 1 && t.shape()[0] % comm.size() == 0, name, "needs a first dim divisible by the ", comm.size(),
        " ranks, got shape ", t.shape());
  NoGradGuard no_grad;
  const Tensor<T> src = contiguous(t.detach());
  Shape shape = t.shape();
  shape[0] /= comm.size();
  Tensor<T> out(shape, t.device());
  comm.reduce_scatter(src.data(), out.data(), out.numel(), dtype_of<T>, op);
  return out;
}

template <class T>
Tensor<T> all_gather(Communicator& comm, const Tensor<T>& t) {
  const char* name = "dist::all_gather";
  check_defined(name, t);
  CallHeader h = detail::header(comm, Collective::all_gather, t);
  if (t.dim() == 0 && h.problem == Problem::none) h.shape = {1};  // a scalar gathers into [W]
  agree(comm, name, h, ShapeRule::same, "");
  NoGradGuard no_grad;
  const Tensor<T> src = contiguous(t.detach());
  Shape shape = t.dim() == 0 ? Shape{1} : t.shape();
  shape[0] *= comm.size();
  Tensor<T> out(shape, t.device());
  comm.all_gather(src.data(), out.data(), src.numel(), dtype_of<T>);
  return out;
}

template <class T>
void broadcast(Communicator& comm, const Tensor<T>& t, int root = 0) {
  const char* name = "dist::broadcast";
  check_defined(name, t);
  CallHeader h = detail::header(comm, Collective::broadcast, t, root);
  agree(comm, name, h, ShapeRule::same, "root");
  check(root >= 0 && root < comm.size(), name, "root ", root, " is not a rank of ", comm.size());
  NoGradGuard no_grad;
  const Tensor<T> work = t.is_contiguous() ? t.detach() : contiguous(t.detach());
  comm.broadcast(work.data(), work.numel(), dtype_of<T>, root);
  if (!t.is_contiguous()) detail::copy_into(t.detach(), work);
}

inline void barrier(Communicator& comm) { comm.barrier(); }

// The rows an all-to-all delivered, and how many came from each rank.
template <class T>
struct AllToAll {
  Tensor<T> output;
  std::vector<std::int64_t> recv_counts;
};

// All-to-all with counts known on both sides (the caller exchanged them, e.g. per expert): no
// check and no exchange. recv_counts[r] must equal rank r's send_counts[this rank].
// Differentiable. The communicator must be held by a std::shared_ptr (the backward keeps it).
template <class T>
Tensor<T> all_to_all_v(Communicator& comm, const Tensor<T>& t, const std::vector<std::int64_t>& send_counts,
                       const std::vector<std::int64_t>& recv_counts) {
  const char* name = "dist::all_to_all_v";
  check_defined(name, t);
  check(t.dim() >= 1, name, "needs rows (dim 0) to send, got a scalar");
  check(t.device() == comm.device(), name, "a tensor on ", t.device(), " for a ", comm.engine(), " communicator on ",
        comm.device());
  check(send_counts.size() == static_cast<std::size_t>(comm.size()) &&
            recv_counts.size() == static_cast<std::size_t>(comm.size()),
        name, "needs one send and one receive count per rank (", comm.size(), "), got ", send_counts.size(), " and ",
        recv_counts.size());
  std::int64_t rows = 0;
  for (auto c : send_counts) rows += c;
  check(rows == t.shape()[0], name, "send counts add up to ", rows, " rows but the tensor has shape ", t.shape());
  Tensor<T> out = detail::all_to_all_rows(comm, t, send_counts, recv_counts);
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      std::shared_ptr<Communicator> keep = comm.shared_from_this();
      autograd::record(out, "all_to_all_v", [keep, send_counts, recv_counts](const Tensor<T>& g,
                                                                             const autograd::InputGrads& in) {
        // The rows go back where they came from: the reverse all-to-all.
        in.add(0, detail::all_to_all_rows(*keep, g, recv_counts, send_counts));
      }, t);
    }
  }
  return out;
}

// All-to-all whose counts are exchanged first (with the agreement check on dtype and trailing dims).
template <class T>
AllToAll<T> all_to_all_v(Communicator& comm, const Tensor<T>& t, const std::vector<std::int64_t>& send_counts) {
  const char* name = "dist::all_to_all_v";
  check_defined(name, t);
  CallHeader h = detail::header(comm, Collective::all_to_all_v, t);
  std::int64_t rows = 0;
  bool valid = send_counts.size() == static_cast<std::size_t>(comm.size());
  for (auto c : send_counts) {
    valid = valid && c >= 0;
    rows += c;
  }
  if (h.problem == Problem::none && (!valid || t.dim() == 0 || rows != t.shape()[0])) {
    h.problem = Problem::bad_counts;
    h.detail = valid ? rows : -1;
  }
  agree(comm, name, h, ShapeRule::same_trailing, "");
  std::vector<std::int64_t> recv_counts = comm.all_to_all_host(send_counts);
  Tensor<T> out = all_to_all_v(comm, t, send_counts, recv_counts);
  return {out, std::move(recv_counts)};
}

}  // namespace kiln::dist
