// softmax and log_softmax along one dim, forward and backward, on CUDA (front-end ops/softmax.hpp;
// the CPU reference is backend/cpu/softmax.hpp). Arguments (kernels/softmax/args.hpp):
//   launch_softmax_forward (SoftmaxForwardArgs):   y from x, along dim, log or not
//   launch_softmax_backward (SoftmaxBackwardArgs): gx from g and y, along dim, log or not
// All operands have one shape; any strides (the op passes rows that are unit-stride or a
// contiguous tensor, see below).
//
// Every row needs one reduction before anything can be written: for the forward, the row's max m
// and s = sum exp(x - m); for the backward, sum(g * y) (softmax) or sum(g) (log_softmax). Then
//   softmax:      y = exp(x - m) / s           backward: gx = y * (g - sum(g * y))
//   log_softmax:  y = (x - m) - log(s)         backward: gx = g - exp(y) * sum(g)
// The forward finds m and s in ONE pass with the online rule: each thread keeps a running max and
// a sum rescaled whenever the max grows (s <- s * exp(m_old - m_new) + exp(x - m_new)); two such
// partial states combine the same way. So each kernel makes two passes over its row: a reading
// pass, and a writing pass that reads the row again. In bytes from DRAM per element:
//   forward:  sizeof(T) read + sizeof(T) written        backward: 2 sizeof(T) read + sizeof(T) written
// provided the second read hits L2. It does because rows are re-read shortly after being read:
// the number of rows in flight is capped so that they fit in about 60% of L2 (a grid-stride loop
// over rows), and the second pass and the stores carry evict-first hints (common/row_visit.cuh).
//
// Two layouts:
//   - unit-stride rows (the last dim, or any row with stride 1): a warp per row for rows up to
//     1024 elements, a block of 256 or 512 threads for longer ones (1024 threads per SM, so one
//     block's reduction step overlaps another's streaming); 16-byte vector loads and stores
//     (head/tail peeled for unaligned rows); the row state combines through warp shuffles and
//     shared memory.
//   - strided rows (softmax over a non-last dim of a contiguous tensor): rows whose starts are
//     neighbours in memory go to the 32 lanes of a warp (coalesced), and blockDim.y threads split
//     each row's length; their states combine through shared memory in a fixed tree.
// Sums accumulate in the compute type (float for float/bf16/fp16, double for double); the row is
// reduced in a fixed pattern, so results are bit-identical run to run. Exponentials of floats use
// the hardware exp2 (exp_c, in common/online_softmax.cuh with the online max/sum rule that the
// fused cross-entropy shares); relative error against the double CPU reference stays ~1e-7.
//
// Stability and special values, as on the CPU: every exponent is x - max <= 0; the max element
// contributes exp(0) = 1 so s >= 1; -inf entries get probability 0 (log-probability -inf); a row
// with a NaN is NaN throughout; a row of only -inf has no distribution and gives NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/device_info.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/online_softmax.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/common/row_visit.cuh"
#include "kiln/kernels/softmax/args.hpp"

namespace kiln::kernels::softmax_kernels {

// The forward: state (m, s); per row m and log(s) (log_softmax) or 1 / s (softmax).
template <class T, bool kLog>
struct Forward {
  using C = compute_t<T>;
  using State = OnlineMaxSum<C, C>;
  static constexpr int kInputs = 1;
  struct Row {
    C m, a;
  };
  __device__ static State identity() { return State::identity(); }
  __device__ static void add(State& st, const C (&v)[1]) { st.add(v[0]); }
  __device__ static State combine(const State& a, const State& b) { return State::combine(a, b); }
  __device__ static Row finish(const State& st) { return {st.m, kLog ? log_c(st.s) : C(1) / st.s}; }
  // (x - m) - log(s), not x - (m + log(s)): m + log(s) rounded would carry m's rounding into
  // outputs that may be small.
  __device__ static C out(const Row& r, const C (&v)[1]) { return kLog ? (v[0] - r.m) - r.a : exp_c(v[0] - r.m) * r.a; }
};

// The backward from g (v[0]) and the forward output y (v[1]).
template <class T, bool kLog>
struct Backward {
  using C = compute_t<T>;
  using State = C;
  static constexpr int kInputs = 2;
  using Row = C;
  __device__ static State identity() { return C(0); }
  __device__ static void add(State& st, const C (&v)[2]) { st += kLog ? v[0] : v[0] * v[1]; }
  __device__ static State combine(const State& a, const State& b) { return a + b; }
  __device__ static Row finish(const State& st) { return st; }
  __device__ static C out(const Row& a, const C (&v)[2]) { return kLog ? v[0] - exp_c(v[1]) * a : v[1] * (v[0] - a); }
};

template <class T, int K>
struct Inputs {
  const T* p[K];
};

// Unit-stride rows: G threads per row (a warp, or the whole block), grid-stride over rows.
template <class Op, int G, int Block, class T>
__global__ void __launch_bounds__(Block, kRowMinBlocks<T, Block>)
    rows_kernel(Rows<Op::kInputs + 1> rows, T* __restrict__ out, Inputs<T, Op::kInputs> in) {
  using C = compute_t<T>;
  using State = typename Op::State;
  constexpr int K = Op::kInputs;
  constexpr int per_block = Block / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const std::int64_t n = rows.length;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * per_block + threadIdx.x / G; r < rows.count;
       r += static_cast<std::int64_t>(gridDim.x) * per_block) {
    std::int64_t off[K + 1];
    rows.starts.at(r, off);
    const T* row[K];
#pragma unroll
    for (int i = 0; i < K; ++i) row[i] = in.p[i] + off[i + 1];
    State st = Op::identity();
    visit_row<G, false, false>(lane, n, row, static_cast<T*>(nullptr),
                                          [&](std::int64_t, const C (&v)[K]) { Op::add(st, v); });
    st = group_all_reduce<G, Block>(st, [](const State& x, const State& y) { return Op::combine(x, y); },
                                    Op::identity());
    const typename Op::Row fin = Op::finish(st);
    visit_row<G, true, true>(lane, n, row, out + off[0],
                                        [&](std::int64_t, const C (&v)[K]) { return Op::out(fin, v); });
  }
}

inline constexpr int kMaxSlices = 16;

// The share of L2 that rows between their first and second read may occupy.
inline constexpr double kL2Share = 0.6;

// Strided rows: lanes over 32 neighbouring rows, blockDim.y (a power of two) slices per row.
template <class Op, class T>
__global__ void __launch_bounds__(32 * kMaxSlices, 2)
    strided_rows_kernel(Rows<Op::kInputs + 1> rows, T* __restrict__ out, Inputs<T, Op::kInputs> in) {
  using C = compute_t<T>;
  using State = typename Op::State;
  constexpr int K = Op::kInputs;
  constexpr int U = 4;  // loads in flight per operand and thread
  __shared__ State slices[kMaxSlices][32];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y), Y = static_cast<int>(blockDim.y);
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * 32 + tx;
  const std::int64_t n = rows.length;
  const bool valid = r < rows.count;
  std::int64_t off[K + 1] = {};
  if (valid) rows.starts.at(r, off);

  auto element = [&](std::int64_t k, C (&v)[K]) {
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = load(in.p[i][off[i + 1] + k * rows.step[i + 1]]);
  };
  State st = Op::identity();
  if (valid) {
    for (std::int64_t k0 = ty; k0 < n; k0 += static_cast<std::int64_t>(U) * Y) {
      C v[U][K];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (k0 + u * Y < n) element(k0 + u * Y, v[u]);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (k0 + u * Y < n) Op::add(st, v[u]);
    }
  }
  slices[ty][tx] = st;
  __syncthreads();
  for (int half = Y / 2; half > 0; half /= 2) {
    if (ty < half) slices[ty][tx] = Op::combine(slices[ty][tx], slices[ty + half][tx]);
    __syncthreads();
  }
  if (!valid) return;
  const typename Op::Row fin = Op::finish(slices[0][tx]);
  for (std::int64_t k0 = ty; k0 < n; k0 += static_cast<std::int64_t>(U) * Y) {
    C v[U][K];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (k0 + u * Y < n) element(k0 + u * Y, v[u]);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (k0 + u * Y < n) out[off[0] + (k0 + u * Y) * rows.step[0]] = store<T>(Op::out(fin, v[u]));
  }
}

template <class Op, int G, class T>
void launch_rows(const Rows<Op::kInputs + 1>& rows, T* out, const Inputs<T, Op::kInputs>& in, int device,
                 cudaStream_t stream) {
  constexpr int block = kRowBlock<G>;
  constexpr int per_block = block / G;
  const std::int64_t needed = (rows.count + per_block - 1) / per_block;
  // Rows in flight: enough to fill the GPU, few enough that their second read hits L2.
  const DeviceInfo& info = device_info(device);
  const std::int64_t row_bytes = rows.length * static_cast<std::int64_t>(sizeof(T)) * Op::kInputs;
  const std::int64_t resident =
      static_cast<std::int64_t>(kL2Share * info.l2_bytes) / std::max<std::int64_t>(1, row_bytes * per_block);
  const std::int64_t cap = std::max<std::int64_t>(info.sms, resident);
  const auto blocks = static_cast<unsigned>(std::min({needed, cap, std::int64_t{1} << 30}));
  rows_kernel<Op, G, block><<<blocks, block, 0, stream>>>(rows, out, in);
}

template <class Op, class T>
void run(const char* op, const TensorView* const (&views)[Op::kInputs + 1], int dim, const DeviceLaunch& on) {
  constexpr int N = Op::kInputs + 1;
  const Rows<N> rows = rows_along<N>(op, views, dim);
  if (rows.count == 0 || rows.length == 0) return;
  const int device = on.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = on.stream;
  T* out = static_cast<T*>(views[0]->data);
  Inputs<T, Op::kInputs> in{};
  for (int i = 0; i < Op::kInputs; ++i) in.p[i] = static_cast<const T*>(views[i + 1]->data);
  if (rows.unit_stride()) {
    switch (row_threads(rows.length)) {
      case 32: launch_rows<Op, 32>(rows, out, in, device, stream); break;
      case 256: launch_rows<Op, 256>(rows, out, in, device, stream); break;
      default: launch_rows<Op, 512>(rows, out, in, device, stream); break;
    }
  } else {
    int slices = 1;
    while (slices < kMaxSlices && 8 * slices < rows.length) slices *= 2;
    const auto blocks = static_cast<unsigned>((rows.count + 31) / 32);
    strided_rows_kernel<Op><<<blocks, dim3(32, static_cast<unsigned>(slices)), 0, stream>>>(rows, out, in);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

inline void launch_softmax_forward(const SoftmaxForwardArgs& a) {
  const char* op = a.log ? "log_softmax" : "softmax";
  const TensorView* const views[2] = {&a.y, &a.x};
  with_floating_type(op, a.y.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.log) run<Forward<T, true>, T>(op, views, a.dim, a.launch);
    else run<Forward<T, false>, T>(op, views, a.dim, a.launch);
  });
}

inline void launch_softmax_backward(const SoftmaxBackwardArgs& a) {
  const char* op = a.log ? "log_softmax backward" : "softmax backward";
  const TensorView* const views[3] = {&a.gx, &a.g, &a.y};
  with_floating_type(op, a.gx.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.log) run<Backward<T, true>, T>(op, views, a.dim, a.launch);
    else run<Backward<T, false>, T>(op, views, a.dim, a.launch);
  });
}

inline const bool softmax_registered =
    register_device_kernel(&launch_softmax_forward) && register_device_kernel(&launch_softmax_backward);

}  // namespace kiln::kernels::softmax_kernels
