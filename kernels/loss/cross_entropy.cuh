// Fused cross-entropy on CUDA (ops/loss.hpp): loss = logsumexp(x) - x[t] per row of logits, and
// its gradient softmax(x) - onehot(t), without ever materialising probabilities.
//
//   "cross_entropy": tensors {out, stats, loss_rows, counted, first_bad, logits, targets},
//     ints {ignore_index, Reduction}. logits [rows, C] with unit-stride rows (any row starts);
//     targets int64, contiguous, one per row. Writes stats [rows, 2] (double: the row's max and
//     log of the rescaled sum, what the backward needs), and either out = the per-row losses
//     (Reduction::none, in the targets' shape) or loss_rows (double, per row) which a second
//     kernel sums into out (a 0-d tensor) with counted = the number of non-ignored rows.
//     first_bad (int64, filled with `rows` by the caller) receives the first row whose target is
//     neither ignore_index nor a class index.
//   "cross_entropy_backward": tensors {gx, logits, targets, stats, g, counted}, ints as above.
//     gx[r] = w_r * (softmax(x[r]) - onehot(t_r)), w_r = g[r] (none) or g (sum) or g / counted
//     (mean); rows with t_r = ignore_index get 0.
//
// Forward: a group of threads per row (a warp for rows up to 1024 classes, else a block) reads
// the row ONCE with 16-byte vector loads, keeping the online max and rescaled sum of exp(x - max)
// (softmax/softmax.cuh); each thread sums its few dozen terms in the compute type, the group
// combines them in double, and the loss is computed in double as (max - x[t]) + log(sum).
// Bytes per logit: sizeof(T) read; per row 16 B of stats and 8 B of loss written. The mean/sum
// over rows is one block folding the per-row losses in a fixed order (deterministic, no atomics).
// Backward: one pass, recomputing each probability from the saved stats: sizeof(T) read and
// sizeof(T) written per logit.
//
// Out-of-range targets are found on the device: a row records itself with atomicMin (an integer
// atomic: the first bad row wins whatever the order, so the report is deterministic), and the
// op reads the 8-byte flag back after the forward kernels, which synchronises the stream once per
// call (the wait for the queued work, plus ~10 us). Validating on the host would synchronise too
// and copy every target.
#pragma once

#include <cmath>

#include "common/device_types.cuh"
#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/ops/loss.hpp"
#include "reduce/block_reduce.cuh"
#include "reduce/reduce.cuh"
#include "reduce/row_visit.cuh"
#include "softmax/softmax.cuh"

namespace kiln::kernels::cross_entropy_kernels {

using reduction::Rows;
using softmax_kernels::OnlineMaxSum;

template <class T>
struct ForwardArgs {
  Rows<1> rows;  // logits rows
  const T* logits;
  const std::int64_t* targets;
  std::int64_t ignore_index;
  double* stats;           // [rows, 2]: max, log(sum)
  T* loss_out;             // Reduction::none: per-row losses; else null
  double* loss_rows;       // mean/sum: per-row losses; else null
  unsigned long long* first_bad;
};

template <class T, int G, int Block>
__global__ void __launch_bounds__(Block, reduction::kRowMinBlocks<T, Block>) forward_kernel(ForwardArgs<T> a) {
  using C = compute_t<T>;
  using Thread = OnlineMaxSum<C, C>;     // each thread's share of the row (tens of elements)
  using State = OnlineMaxSum<C, double>;  // combined across the group in double
  constexpr int per_block = Block / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const std::int64_t classes = a.rows.length;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * per_block + threadIdx.x / G; r < a.rows.count;
       r += static_cast<std::int64_t>(gridDim.x) * per_block) {
    const std::int64_t t = a.targets[r];
    double loss = 0.0, row_max = 0.0, log_sum = 0.0;
    if (t != a.ignore_index) {
      if (t < 0 || t >= classes) {
        if (lane == 0) atomicMin(a.first_bad, static_cast<unsigned long long>(r));
        loss = NAN;
      } else {
        std::int64_t off[1];
        a.rows.starts.at(r, off);
        const T* row[1] = {a.logits + off[0]};
        Thread mine = Thread::identity();
        reduction::visit_row<G, false, false>(lane, classes, row, static_cast<T*>(nullptr),
                                              [&](std::int64_t, const C (&v)[1]) { mine.add(v[0]); });
        State st{mine.m, static_cast<double>(mine.s)};
        st = reduction::group_all_reduce<G, Block>(
            st, [](const State& x, const State& y) { return State::combine(x, y); }, State::identity());
        row_max = static_cast<double>(st.m);
        log_sum = ::log(st.s);
        if (lane == 0) loss = (row_max - static_cast<double>(load(row[0][t]))) + log_sum;
      }
    }
    if (lane == 0) {
      a.stats[2 * r] = row_max;
      a.stats[2 * r + 1] = log_sum;
      if (a.loss_out) a.loss_out[r] = reduction::round_from_double<T>(loss);
      if (a.loss_rows) a.loss_rows[r] = loss;
    }
  }
}

// The mean or sum over rows: one block, each thread folding rows tid, tid + 1024, ... in order,
// then a fixed tree. Also counts the rows that are not ignored (the mean's denominator, kept for
// the backward).
struct TotalCount {
  double total, count;
};

template <class T>
__global__ void __launch_bounds__(1024)
    reduce_kernel(std::int64_t rows, const double* __restrict__ loss_rows, const std::int64_t* __restrict__ targets,
                  std::int64_t ignore_index, bool mean, T* out, double* counted) {
  TotalCount acc{0.0, 0.0};
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    acc.total += loss_rows[r];
    acc.count += targets[r] != ignore_index ? 1.0 : 0.0;
  }
  acc = reduction::block_all_reduce<1024>(
      acc, [](const TotalCount& x, const TotalCount& y) { return TotalCount{x.total + y.total, x.count + y.count}; },
      TotalCount{0.0, 0.0});
  if (threadIdx.x == 0) {
    *counted = acc.count;
    *out = reduction::round_from_double<T>(mean ? acc.total / acc.count : acc.total);  // 0 / 0 = NaN, as in PyTorch
  }
}

template <class T>
struct BackwardArgs {
  Rows<2> rows;  // gx rows, logits rows
  T* gx;
  const T* logits;
  const std::int64_t* targets;
  std::int64_t ignore_index;
  const double* stats;
  const T* g;               // per row (Reduction::none) or one value
  bool per_row_g;
  const double* counted;    // Reduction::mean: divide by it; else null
};

template <class T, int G, int Block>
__global__ void __launch_bounds__(Block, reduction::kRowMinBlocks<T, Block>) backward_kernel(BackwardArgs<T> a) {
  using C = compute_t<T>;
  constexpr int per_block = Block / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const std::int64_t classes = a.rows.length;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * per_block + threadIdx.x / G; r < a.rows.count;
       r += static_cast<std::int64_t>(gridDim.x) * per_block) {
    std::int64_t off[2];
    a.rows.starts.at(r, off);
    const std::int64_t t = a.targets[r];
    if (t == a.ignore_index) {
      reduction::fill_row<G>(lane, classes, a.gx + off[0], store<T>(C(0)));
      continue;
    }
    const double gr = static_cast<double>(load(a.g[a.per_row_g ? r : 0]));
    const C w = static_cast<C>(a.counted ? gr / *a.counted : gr);
    const C m = static_cast<C>(a.stats[2 * r]), l = static_cast<C>(a.stats[2 * r + 1]);
    const T* row[1] = {a.logits + off[1]};
    reduction::visit_row<G, true, true>(lane, classes, row, a.gx + off[0], [&](std::int64_t k, const C (&v)[1]) {
      const C p = softmax_kernels::exp_c((v[0] - m) - l);
      return k == t ? w * (p - C(1)) : w * p;
    });
  }
}

template <class T, int G>
void launch_forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  constexpr int block = reduction::kRowBlock<G>;
  const std::int64_t blocks = (a.rows.count + block / G - 1) / (block / G);
  forward_kernel<T, G, block><<<static_cast<unsigned>(std::min<std::int64_t>(blocks, 1 << 30)), block, 0, stream>>>(a);
}

template <class T, int G>
void launch_backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  constexpr int block = reduction::kRowBlock<G>;
  const std::int64_t blocks = (a.rows.count + block / G - 1) / (block / G);
  backward_kernel<T, G, block><<<static_cast<unsigned>(std::min<std::int64_t>(blocks, 1 << 30)), block, 0, stream>>>(a);
}

// A single-row-dim view of [rows..., C] logits: rows along the last dim.
inline int class_dim(const TensorArg& logits) { return logits.ndim - 1; }

inline void forward_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const TensorArg& logits = call.tensors[5];
  const std::int64_t ignore_index = call.ints[0];
  const auto reduction_kind = static_cast<Reduction>(call.ints[1]);
  const Rows<1> rows = reduction::rows_along<1>("cross_entropy", &logits, class_dim(logits));
  const int device = logits.device;
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  with_floating_type("cross_entropy", logits.dtype, [&](auto tag) {
    using T = decltype(tag);
    ForwardArgs<T> a{rows,
                     static_cast<const T*>(logits.data),
                     static_cast<const std::int64_t*>(call.tensors[6].data),
                     ignore_index,
                     static_cast<double*>(call.tensors[1].data),
                     reduction_kind == Reduction::none ? static_cast<T*>(out.data) : nullptr,
                     reduction_kind == Reduction::none ? nullptr : static_cast<double*>(call.tensors[2].data),
                     static_cast<unsigned long long*>(call.tensors[4].data)};
    if (rows.count > 0) {
      switch (reduction::row_threads(rows.length)) {
        case 32: launch_forward<T, 32>(a, stream); break;
        case 256: launch_forward<T, 256>(a, stream); break;
        default: launch_forward<T, 512>(a, stream); break;
      }
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (reduction_kind != Reduction::none) {
      reduce_kernel<T><<<1, 1024, 0, stream>>>(rows.count, a.loss_rows, a.targets, ignore_index,
                                               reduction_kind == Reduction::mean, static_cast<T*>(out.data),
                                               static_cast<double*>(call.tensors[3].data));
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
}

inline void backward_entry(const KernelCall& call) {
  const TensorArg& gx = call.tensors[0];
  const TensorArg& logits = call.tensors[1];
  const auto reduction_kind = static_cast<Reduction>(call.ints[1]);
  const TensorArg pair[2] = {gx, logits};
  const Rows<2> rows = reduction::rows_along<2>("cross_entropy backward", pair, class_dim(logits));
  if (rows.count == 0 || rows.length == 0) return;
  const int device = gx.device;
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  with_floating_type("cross_entropy backward", gx.dtype, [&](auto tag) {
    using T = decltype(tag);
    const BackwardArgs<T> a{rows,
                            static_cast<T*>(gx.data),
                            static_cast<const T*>(logits.data),
                            static_cast<const std::int64_t*>(call.tensors[2].data),
                            call.ints[0],
                            static_cast<const double*>(call.tensors[3].data),
                            static_cast<const T*>(call.tensors[4].data),
                            reduction_kind == Reduction::none,
                            reduction_kind == Reduction::mean ? static_cast<const double*>(call.tensors[5].data)
                                                              : nullptr};
    switch (reduction::row_threads(rows.length)) {
      case 32: launch_backward<T, 32>(a, stream); break;
      case 256: launch_backward<T, 256>(a, stream); break;
      default: launch_backward<T, 512>(a, stream); break;
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool registered = register_device_kernel("cross_entropy", forward_entry) &&
                               register_device_kernel("cross_entropy_backward", backward_entry);

}  // namespace kiln::kernels::cross_entropy_kernels
