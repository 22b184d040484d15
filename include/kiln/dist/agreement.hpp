// Checks that every rank passes a matching tensor to a collective, before any data moves.
//
// Each rank describes its call in a fixed-size header of int64s (the collective, dtype, shape, the
// device, an op-specific value such as the root, and any problem it found locally, e.g. counts
// that do not add up to its rows); the headers are all-gathered through the control plane, and
// every rank evaluates the same rule on the same headers. So either every rank goes on, or every
// rank throws the same kiln::Error naming the op, the ranks and their shapes, e.g.
//   kiln::dist::all_reduce: ranks disagree on the tensor: rank 0: float32 [4, 3]; rank 1: float32 [4, 5]
// — never one rank waiting forever in a collective that the others abandoned.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/shape.hpp"
#include "kiln/dist/communicator.hpp"

namespace kiln::dist {

enum class Collective : std::int64_t { all_reduce = 1, reduce_scatter, all_gather, broadcast, all_to_all_v };

inline const char* collective_name(Collective c) {
  switch (c) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::all_gather: return "all_gather";
    case Collective::broadcast: return "broadcast";
    case Collective::all_to_all_v: return "all_to_all_v";
  }
  return "?";
}

// What a rank found wrong with its own arguments (reported by every rank).
enum class Problem : std::int64_t { none = 0, wrong_device, too_many_dims, bad_counts };

// One rank's call. `extra` must agree across ranks (the reduce op, the root); `detail` backs up
// a problem's message (the rows its counts add up to).
struct CallHeader {
  static constexpr int max_dims = 8;
  static constexpr int size = 8 + max_dims;

  Collective op = Collective::all_reduce;
  DType dtype = DType::f32;
  Shape shape;
  Device device;
  std::int64_t extra = 0;
  Problem problem = Problem::none;
  std::int64_t detail = 0;

  std::vector<std::int64_t> encode() const {
    std::vector<std::int64_t> h(size, 0);
    h[0] = static_cast<std::int64_t>(op);
    h[1] = static_cast<std::int64_t>(dtype);
    h[2] = static_cast<std::int64_t>(shape.size());
    h[3] = device.is_cpu() ? 0 : 1;
    h[4] = device.index;
    h[5] = extra;
    h[6] = static_cast<std::int64_t>(shape.size() > max_dims ? Problem::too_many_dims : problem);
    h[7] = detail;
    for (std::size_t d = 0; d < shape.size() && d < max_dims; ++d) h[8 + d] = shape[d];
    return h;
  }
  static CallHeader decode(const std::int64_t* h) {
    CallHeader c;
    c.op = static_cast<Collective>(h[0]);
    c.dtype = static_cast<DType>(h[1]);
    c.device = h[3] == 0 ? Device::cpu() : Device::cuda(static_cast<int>(h[4]));
    c.extra = h[5];
    c.problem = static_cast<Problem>(h[6]);
    c.detail = h[7];
    for (std::int64_t d = 0; d < h[2] && d < max_dims; ++d) c.shape.push_back(h[8 + d]);
    return c;
  }
  std::string describe() const { return str(dtype_name_of(dtype), " ", shape); }
};

enum class ShapeRule {
  same,           // dtype and shape equal on every rank
  same_trailing,  // dtype and every dim but the first equal (all_to_all_v: rows differ)
};

namespace detail {

inline std::string list_ranks(const std::vector<CallHeader>& calls, const char* what) {
  std::string s;
  for (std::size_t r = 0; r < calls.size(); ++r) {
    if (r) s += "; ";
    if (r == 8 && calls.size() > 9) return s + "... (" + std::to_string(calls.size() - 8) + " more ranks)";
    s += str("rank ", r, ": ", what[0] == 's' ? calls[r].describe() : std::to_string(calls[r].extra));
  }
  return s;
}

}  // namespace detail

// Exchanges `mine` with every rank and throws on every rank if they do not fit together.
// `op_name` names the op in the message ("dist::all_reduce"); `extra_name` says what `extra` is.
inline void agree(Communicator& comm, const char* op_name, const CallHeader& mine, ShapeRule rule,
                  const char* extra_name) {
  const std::vector<std::int64_t> all = comm.all_gather_host(mine.encode());
  std::vector<CallHeader> calls;
  for (int r = 0; r < comm.size(); ++r)
    calls.push_back(CallHeader::decode(all.data() + static_cast<std::size_t>(r) * CallHeader::size));

  for (std::size_t r = 0; r < calls.size(); ++r) {
    if (calls[r].op != calls[0].op) {
      std::string s;
      for (std::size_t q = 0; q < calls.size(); ++q)
        s += str(q ? "; " : "", "rank ", q, ": ", collective_name(calls[q].op));
      fail(op_name, "ranks called different collectives: ", s);
    }
  }
  for (std::size_t r = 0; r < calls.size(); ++r) {
    const CallHeader& c = calls[r];
    switch (c.problem) {
      case Problem::none: break;
      case Problem::wrong_device:
        fail(op_name, "rank ", r, " passed a tensor on ", c.device, " to a ", comm.engine(), " communicator (",
             comm.engine() == std::string("mpi") ? "CPU tensors" : "each rank's own GPU", ")");
      case Problem::too_many_dims:
        fail(op_name, "rank ", r, " passed a tensor of more than ", CallHeader::max_dims, " dims");
      case Problem::bad_counts:
        fail(op_name, "rank ", r, "'s send counts ", c.detail < 0 ? "are not one non-negative count per rank" :
             str("add up to ", c.detail, " rows"), " but its tensor has shape ", c.shape);
    }
  }
  bool same = true;
  for (const CallHeader& c : calls) {
    if (c.dtype != calls[0].dtype || c.shape.size() != calls[0].shape.size()) {
      same = false;
      break;
    }
    for (std::size_t d = rule == ShapeRule::same ? 0 : 1; d < c.shape.size(); ++d)
      if (c.shape[d] != calls[0].shape[d]) same = false;
  }
  if (!same)
    fail(op_name, "ranks disagree on the tensor", rule == ShapeRule::same ? "" : " (all dims but the first must match)",
         ": ", detail::list_ranks(calls, "shape"));
  for (const CallHeader& c : calls)
    if (c.extra != calls[0].extra)
      fail(op_name, "ranks disagree on the ", extra_name, ": ", detail::list_ranks(calls, "extra"));
}

}  // namespace kiln::dist
