// Fused cross-entropy on CUDA (front-end ops/cross_entropy.hpp; the CPU reference is
// backend/cpu/cross_entropy.hpp): loss = logsumexp(x) - x[t] per row of logits, and its gradient
// softmax(x) - onehot(t), without ever materialising probabilities. Arguments
// (kernels/cross_entropy/args.hpp):
//
//   launch_cross_entropy_forward (CrossEntropyForwardArgs): logits [rows, C] with unit-stride
//     rows (any row starts); targets int64, contiguous, one per row. Writes stats [rows, 2]
//     (double: the row's max and log of the rescaled sum, what the backward needs), and either
//     `losses` = the per-row losses (Reduction::none, in the targets' shape) or loss_rows (double,
//     per row) which a second kernel sums into `total` (a 0-d tensor) with counted = the number
//     of non-ignored rows. first_bad (int64, filled with `rows` by the caller) receives the first
//     row whose target is neither ignore_index nor a class index.
//   launch_cross_entropy_backward (CrossEntropyBackwardArgs): gx[r] = w_r * (softmax(x[r]) -
//     onehot(t_r)), w_r = g[r] (none) or g (sum) or g / counted (mean); rows with
//     t_r = ignore_index get 0.
//
// Forward: a group of threads per row (a warp for rows up to 1024 classes, else a block) reads
// the row ONCE with 16-byte vector loads, keeping the online max and rescaled sum of exp(x - max)
// (common/online_softmax.cuh); each thread sums its few dozen terms in the compute type, the group
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

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/online_softmax.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/common/row_visit.cuh"
#include "kiln/kernels/cross_entropy/args.hpp"

namespace kiln::kernels::cross_entropy_kernels {

// What the forward kernel takes (filled from CrossEntropyForwardArgs by the launcher).
template <class T>
struct ForwardParams {
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
__global__ void __launch_bounds__(Block, kRowMinBlocks<T, Block>) forward_kernel(ForwardParams<T> a) {
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
        visit_row<G, false, false>(lane, classes, row, static_cast<T*>(nullptr),
                                              [&](std::int64_t, const C (&v)[1]) { mine.add(v[0]); });
        State st{mine.m, static_cast<double>(mine.s)};
        st = group_all_reduce<G, Block>(
            st, [](const State& x, const State& y) { return State::combine(x, y); }, State::identity());
        row_max = static_cast<double>(st.m);
        log_sum = ::log(st.s);
        if (lane == 0) loss = (row_max - static_cast<double>(load(row[0][t]))) + log_sum;
      }
    }
    if (lane == 0) {
      a.stats[2 * r] = row_max;
      a.stats[2 * r + 1] = log_sum;
      if (a.loss_out) a.loss_out[r] = round_from_double<T>(loss);
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
  acc = block_all_reduce<1024>(
      acc, [](const TotalCount& x, const TotalCount& y) { return TotalCount{x.total + y.total, x.count + y.count}; },
      TotalCount{0.0, 0.0});
  if (threadIdx.x == 0) {
    *counted = acc.count;
    *out = round_from_double<T>(mean ? acc.total / acc.count : acc.total);  // 0 / 0 = NaN, as in PyTorch
  }
}

// What the backward kernel takes (filled from CrossEntropyBackwardArgs by the launcher).
template <class T>
struct BackwardParams {
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
__global__ void __launch_bounds__(Block, kRowMinBlocks<T, Block>) backward_kernel(BackwardParams<T> a) {
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
      fill_row<G>(lane, classes, a.gx + off[0], store<T>(C(0)));
      continue;
    }
    const double gr = static_cast<double>(load(a.g[a.per_row_g ? r : 0]));
    const C w = static_cast<C>(a.counted ? gr / *a.counted : gr);
    const C m = static_cast<C>(a.stats[2 * r]), l = static_cast<C>(a.stats[2 * r + 1]);
    const T* row[1] = {a.logits + off[1]};
    visit_row<G, true, true>(lane, classes, row, a.gx + off[0], [&](std::int64_t k, const C (&v)[1]) {
      const C p = exp_c((v[0] - m) - l);
      return k == t ? w * (p - C(1)) : w * p;
    });
  }
}

template <class T, int G>
void launch_forward(const ForwardParams<T>& a, cudaStream_t stream) {
  constexpr int block = kRowBlock<G>;
  const std::int64_t blocks = (a.rows.count + block / G - 1) / (block / G);
  forward_kernel<T, G, block><<<static_cast<unsigned>(std::min<std::int64_t>(blocks, 1 << 30)), block, 0, stream>>>(a);
}

template <class T, int G>
void launch_backward(const BackwardParams<T>& a, cudaStream_t stream) {
  constexpr int block = kRowBlock<G>;
  const std::int64_t blocks = (a.rows.count + block / G - 1) / (block / G);
  backward_kernel<T, G, block><<<static_cast<unsigned>(std::min<std::int64_t>(blocks, 1 << 30)), block, 0, stream>>>(a);
}

// A single-row-dim view of [rows..., C] logits: rows along the last dim.
inline int class_dim(const TensorView& logits) { return logits.ndim - 1; }

inline void launch_cross_entropy_forward(const CrossEntropyForwardArgs& a) {
  const TensorView* const views[1] = {&a.logits};
  const Rows<1> rows = rows_along<1>("cross_entropy", views, class_dim(a.logits));
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  with_floating_type("cross_entropy", a.logits.dtype, [&](auto tag) {
    using T = decltype(tag);
    const ForwardParams<T> p{rows,
                             static_cast<const T*>(a.logits.data),
                             a.targets,
                             a.ignore_index,
                             a.stats,
                             static_cast<T*>(a.losses),
                             a.loss_rows,
                             reinterpret_cast<unsigned long long*>(a.first_bad)};
    if (rows.count > 0) {
      switch (row_threads(rows.length)) {
        case 32: launch_forward<T, 32>(p, stream); break;
        case 256: launch_forward<T, 256>(p, stream); break;
        default: launch_forward<T, 512>(p, stream); break;
      }
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (a.total) {
      reduce_kernel<T><<<1, 1024, 0, stream>>>(rows.count, p.loss_rows, p.targets, a.ignore_index, a.mean,
                                               static_cast<T*>(a.total), a.counted);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
}

inline void launch_cross_entropy_backward(const CrossEntropyBackwardArgs& a) {
  const TensorView* const pair[2] = {&a.gx, &a.logits};
  const Rows<2> rows = rows_along<2>("cross_entropy backward", pair, class_dim(a.logits));
  if (rows.count == 0 || rows.length == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  const cudaStream_t stream = a.launch.stream;
  with_floating_type("cross_entropy backward", a.gx.dtype, [&](auto tag) {
    using T = decltype(tag);
    const BackwardParams<T> p{rows,
                              static_cast<T*>(a.gx.data),
                              static_cast<const T*>(a.logits.data),
                              a.targets,
                              a.ignore_index,
                              a.stats,
                              static_cast<const T*>(a.g),
                              a.per_row_g,
                              a.counted};
    switch (row_threads(rows.length)) {
      case 32: launch_backward<T, 32>(p, stream); break;
      case 256: launch_backward<T, 256>(p, stream); break;
      default: launch_backward<T, 512>(p, stream); break;
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool registered =
    register_device_kernel(&launch_cross_entropy_forward) && register_device_kernel(&launch_cross_entropy_backward);

}  // namespace kiln::kernels::cross_entropy_kernels
