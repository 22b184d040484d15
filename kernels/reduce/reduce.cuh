// The general reduction: sum, mean, max, min (values), argmax, argmin (index, and value) over any
// set of dims of a tensor of any strides. Serves ops/reduce.hpp and ops/reduce_max.hpp.
// Arguments: ReduceArgs (kernels/reduce/args.hpp): the op (math::ReduceOp), the outputs (either
// may be absent: null; contiguous, one element per kept position in row-major order), the input
// view and the reduced dims. The CPU reference is backend/cpu/reduce.hpp; the scalar rules both
// share (identities, NaN and ties) are in math/reduce.hpp.
//
// The host plans the walk. Input dims split into kept dims (one output each) and reduced dims,
// and neighbours that step through memory as one merge (a contiguous tensor reduced over its
// trailing dims becomes [outputs] x [n_red] with unit stride). For sums and value extrema the order
// in which elements are folded does not matter (up to rounding), so reduced dims are visited in
// memory order; argmax/argmin keep the row-major order, because their index is row-major. Then:
//   - rows (the reduced elements of one output lie closest together in memory, e.g. the last dim):
//     a group of G threads per output (4..32 lanes of a warp for short rows, a 512-thread block for
//     long ones) walks its row with 16-byte vector loads (common/row_visit.cuh) when the row is
//     unit-stride, and combines with warp shuffles / shared memory;
//   - columns (neighbouring outputs lie closest together, e.g. a sum over dim 0): threadIdx.x runs
//     over 32 consecutive outputs (coalesced), threadIdx.y over Y slices of the reduced range, and
//     the Y partial results are combined through shared memory in a fixed tree.
// Few outputs with long reductions (a full sum) would leave the GPU idle, so the reduced range is
// cut into segments (blockIdx.y); each writes a partial result and a second kernel combines each
// output's partials, a warp per output, in a fixed tree. Segment sizes depend on the shape only
// (never on the GPU), and nothing uses atomics: the same input gives the same bits on every run
// and every GPU.
//
// Accumulation: sums in double for every element type (a float sum over 2^28 elements keeps its
// last bit, as the CPU's double loop does; the extra cost is hidden under memory traffic), extrema
// in the compute type (exact). NaN propagates as on the CPU: a NaN in the range is the result, and
// argmax/argmin return the index of the first NaN; ties return the first index. The combine of
// {value, index} pairs orders them by (NaN first, then more extreme, then smaller index), which is
// associative and commutative, so any tree gives the CPU's sequential answer.
//
// Memory traffic: every input element is read once (bytes = numel * sizeof(T)), outputs written
// once; partials are a few KB.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kiln/core/shape.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/common/row_visit.cuh"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/reduce/args.hpp"
#include "kiln/math/reduce.hpp"

namespace kiln::kernels::reduction {

// A set of dims: the element at row-major position i sits at offset(i) (elements). Several dims
// are only walked below 2^32 positions (the host makes larger inputs contiguous first,
// kMaxMultiDimPositions), so the position splits with 32-bit divisions: 64-bit ones are long
// subroutine calls.
using Dims = Offsets32<1>;

// What the kernels need to know about the walk.
struct Plan {
  std::int64_t n_out, n_red;
  Dims kept, red;
  std::int64_t seg_len, segments;  // the reduced range is cut into `segments` pieces of seg_len
};

template <class T>
struct Outputs {
  T* values;                // null when not wanted
  std::int64_t* indices;    // null when not wanted
};

// ---- the reducers: init, step (fold one element), combine (symmetric), write ----
// (the scalar rules are math/reduce.hpp's, shared with the CPU reducers of ops/reduce.hpp and
// ops/reduce_max.hpp)

template <class T>
struct SumReducer {
  using Acc = double;
  bool mean;
  __device__ Acc init() const { return 0.0; }
  __device__ void step(Acc& a, compute_t<T> v, std::int64_t) const { a += static_cast<double>(v); }
  __device__ Acc combine(Acc a, Acc b) const { return a + b; }
  __device__ void write(const Outputs<T>& out, std::int64_t o, Acc a, std::int64_t n) const {
    out.values[o] = round_from_double<T>(math::sum_result(a, n, mean));
  }
};

// The extreme value (NaN sticks).
template <class T, bool IsMax>
struct ExtremumReducer {
  using C = compute_t<T>;
  using Acc = C;
  __device__ Acc init() const { return math::extremum_identity<C, IsMax>(); }
  __device__ void step(Acc& a, C v, std::int64_t) const {
    math::extremum_step<C, IsMax>(a, v);
  }
  __device__ Acc combine(Acc a, Acc b) const { return math::extremum_combine<C, IsMax>(a, b); }
  __device__ void write(const Outputs<T>& out, std::int64_t o, Acc a, std::int64_t) const {
    out.values[o] = store<T>(a);
  }
};

// The extreme value and its row-major index in the reduced range. Pairs are ordered by
// math::arg_before (NaN first, then the more extreme, then the smaller index): a strict total
// order on distinct indices, so combining in any order picks the same one.
template <class T, bool IsMax>
struct ArgReducer {
  using C = compute_t<T>;
  struct Acc {
    C value;
    std::int64_t index;  // INT64_MAX: nothing folded yet (loses to every element)
  };
  __device__ Acc init() const {
    return {math::extremum_identity<C, IsMax>(), std::numeric_limits<std::int64_t>::max()};
  }
  __device__ void step(Acc& a, C v, std::int64_t k) const {
    if (math::arg_before<C, IsMax>(v, k, a.value, a.index)) a = Acc{v, k};
  }
  __device__ Acc combine(Acc a, Acc b) const {
    return math::arg_before<C, IsMax>(b.value, b.index, a.value, a.index) ? b : a;
  }
  __device__ void write(const Outputs<T>& out, std::int64_t o, Acc a, std::int64_t) const {
    if (out.values) out.values[o] = store<T>(a.value);
    if (out.indices) out.indices[o] = a.index;
  }
};

// ---- kernels ----

// Folds elements [k0, k1) of the reduced range at `base` into acc; this thread takes its share
// (lane of G).
template <int G, class T, class R>
__device__ __forceinline__ void fold_range(const R& r, typename R::Acc& acc, const T* base, const Dims& red,
                                           std::int64_t k0, std::int64_t k1, int lane) {
  using C = compute_t<T>;
  if (red.ndim == 1 && red.strides[0][0] == 1) {
    const T* row[1] = {base + k0};
    visit_row<G, false, false>(lane, k1 - k0, row, static_cast<T*>(nullptr),
                               [&](std::int64_t j, const C (&v)[1]) { r.step(acc, v[0], k0 + j); });
    return;
  }
  constexpr int U = 4;  // independent loads in flight per thread
  for (std::int64_t k = k0 + lane; k < k1; k += static_cast<std::int64_t>(U) * G) {
    C v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const std::int64_t kk = k + static_cast<std::int64_t>(u) * G;
      if (kk < k1) v[u] = load(base[red.offset(kk)]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const std::int64_t kk = k + static_cast<std::int64_t>(u) * G;
      if (kk < k1) r.step(acc, v[u], kk);
    }
  }
}

// Rows: G threads per output, Block / G outputs per block, segment blockIdx.y.
template <int G, int Block, class T, class R>
__global__ void __launch_bounds__(Block, kRowMinBlocks<T, Block>)
    reduce_rows_kernel(R r, Plan p, const T* __restrict__ in, Outputs<T> out, typename R::Acc* __restrict__ partial) {
  using Acc = typename R::Acc;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * (Block / G) + threadIdx.x / G;
  const std::int64_t seg = blockIdx.y;
  Acc acc = r.init();
  if (o < p.n_out) {
    const std::int64_t k0 = seg * p.seg_len, k1 = std::min(p.n_red, k0 + p.seg_len);
    fold_range<G>(r, acc, in + p.kept.offset(o), p.red, k0, k1, lane);
  }
  acc = group_all_reduce<G, Block>(acc, [&r](const Acc& a, const Acc& b) { return r.combine(a, b); }, r.init());
  if (lane == 0 && o < p.n_out) {
    if (p.segments == 1) r.write(out, o, acc, p.n_red);
    else partial[o * p.segments + seg] = acc;
  }
}

inline constexpr int kMaxColumnSlices = 16;
inline constexpr int kColumnBatch = 8;  // loads a column thread keeps in flight (4 for wide accumulators)

// Columns: threadIdx.x over 32 consecutive outputs, threadIdx.y over blockDim.y (a power of two)
// interleaved slices of segment blockIdx.y.
template <class T, class R>
__global__ void __launch_bounds__(32 * kMaxColumnSlices, 2)
    reduce_cols_kernel(R r, Plan p, const T* __restrict__ in, Outputs<T> out, typename R::Acc* __restrict__ partial) {
  using Acc = typename R::Acc;
  __shared__ Acc slices[kMaxColumnSlices][32];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y), Y = static_cast<int>(blockDim.y);
  const std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * 32 + tx;
  const std::int64_t seg = blockIdx.y;
  Acc acc = r.init();
  if (o < p.n_out) {
    const std::int64_t k0 = seg * p.seg_len, k1 = std::min(p.n_red, k0 + p.seg_len);
    const T* base = in + p.kept.offset(o);
    // Each load is one element per thread: keep many in flight (fewer for wide accumulators).
    constexpr int U = sizeof(T) <= 4 && sizeof(typename R::Acc) <= 8 ? kColumnBatch : kColumnBatch / 2;
    for (std::int64_t k = k0 + ty; k < k1; k += static_cast<std::int64_t>(U) * Y) {
      compute_t<T> v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::int64_t kk = k + static_cast<std::int64_t>(u) * Y;
        if (kk < k1) v[u] = load(base[p.red.offset(kk)]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::int64_t kk = k + static_cast<std::int64_t>(u) * Y;
        if (kk < k1) r.step(acc, v[u], kk);
      }
    }
  }
  slices[ty][tx] = acc;
  __syncthreads();
  for (int half = Y / 2; half > 0; half /= 2) {
    if (ty < half) slices[ty][tx] = r.combine(slices[ty][tx], slices[ty + half][tx]);
    __syncthreads();
  }
  if (ty == 0 && o < p.n_out) {
    if (p.segments == 1) r.write(out, o, slices[0][tx], p.n_red);
    else partial[o * p.segments + seg] = slices[0][tx];
  }
}

// Combines each output's segment partials: a warp per output, a fixed tree.
template <class T, class R>
__global__ void __launch_bounds__(256)
    reduce_finish_kernel(R r, Plan p, Outputs<T> out, const typename R::Acc* __restrict__ partial) {
  using Acc = typename R::Acc;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  Acc acc = r.init();
  if (o < p.n_out)
    for (std::int64_t s = lane; s < p.segments; s += 32) acc = r.combine(acc, partial[o * p.segments + s]);
  acc = warp_all_reduce(acc, [&r](const Acc& a, const Acc& b) { return r.combine(a, b); });
  if (lane == 0 && o < p.n_out) r.write(out, o, acc, p.n_red);
}

// ---- host side: planning and launch ----

// Shape-only constants (the same split on every GPU keeps results identical across GPUs): about
// 1024 blocks fill any current GPU several times over; a segment is at least this many elements.
inline constexpr std::int64_t kTargetBlocks = 1024;
inline constexpr std::int64_t kMinRowSegment = 16384;
inline constexpr std::int64_t kMinColumnSegment = 1024;
inline constexpr std::int64_t kLongRow = 4096;  // rows at least this long get a whole block

struct Launch {
  Plan plan;
  bool rows;
  int group;  // rows: threads per output (4, 8, 16, 32 or 512)
  int slices; // columns: blockDim.y
  dim3 grid;
};

inline Dims to_dims(const Shape& shape, const Strides& strides) {
  Dims d{};
  d.ndim = static_cast<int>(shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) {
    d.shape[i] = shape[i];
    d.strides[0][i] = strides[i];
  }
  return d;
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

inline int row_group(std::int64_t len) {
  if (len >= kLongRow) return 512;
  int g = 4;
  while (g < 32 && 2 * g <= len) g *= 2;
  return g;
}

inline Launch plan_reduction(const TensorView& in, std::uint32_t reduced_dims, bool row_major_index) {
  Shape kept_shape, red_shape;
  Strides kept_strides, red_strides;
  std::vector<int> red_dims;
  for (int d = 0; d < in.ndim; ++d) {
    if ((reduced_dims >> d) & 1u) {
      red_dims.push_back(d);
    } else {
      kept_shape.push_back(in.shape[d]);
      kept_strides.push_back(in.strides[d]);
    }
  }
  if (!row_major_index)  // memory order: the largest stride outermost
    std::stable_sort(red_dims.begin(), red_dims.end(),
                     [&](int a, int b) { return std::abs(in.strides[a]) > std::abs(in.strides[b]); });
  for (int d : red_dims) {
    red_shape.push_back(in.shape[d]);
    red_strides.push_back(in.strides[d]);
  }
  Launch l{};
  l.plan.n_out = numel_of(kept_shape);
  l.plan.n_red = numel_of(red_shape);
  merge_dims(kept_shape, kept_strides);  // core/shape.hpp
  merge_dims(red_shape, red_strides);
  l.plan.kept = to_dims(kept_shape, kept_strides);
  l.plan.red = to_dims(red_shape, red_strides);
  const std::int64_t n_out = l.plan.n_out, n_red = l.plan.n_red;
  l.plan.seg_len = n_red;
  l.plan.segments = 1;

  // Rows when the reduced elements of an output are closer together than neighbouring outputs.
  const bool has_red = !red_shape.empty(), has_kept = !kept_shape.empty();
  l.rows = has_red && (!has_kept || std::abs(red_strides.back()) <= std::abs(kept_strides.back()));
  if (l.rows) {
    l.group = row_group(n_red);
    std::int64_t per_block = l.group == 512 ? 1 : 256 / l.group;
    std::int64_t blocks = ceil_div(n_out, per_block);
    if (blocks < kTargetBlocks && n_red >= 2 * kMinRowSegment) {
      const std::int64_t want = std::min(ceil_div(kTargetBlocks, blocks), n_red / kMinRowSegment);
      l.plan.seg_len = ceil_div(ceil_div(n_red, want), 256) * 256;  // keeps segment starts 16-byte aligned
      l.plan.segments = ceil_div(n_red, l.plan.seg_len);
      l.group = row_group(l.plan.seg_len);
      per_block = l.group == 512 ? 1 : 256 / l.group;
      blocks = ceil_div(n_out, per_block);
    }
    if (l.plan.seg_len >= kMaxRowLength) {  // rows walk with 32-bit indices (never seen in practice)
      l.plan.seg_len = kMaxRowLength / 2;
      l.plan.segments = ceil_div(n_red, l.plan.seg_len);
    }
    l.grid = dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(l.plan.segments));
  } else {
    // Enough slices that each thread's walk is at least one batch of kColumnBatch loads: a short
    // reduction (the sum over 12 heads of MLA's shared rope key, [32, 12, 512, 32] -> [32, 1, 512,
    // 32]) then runs a slice or two of full batches instead of 16 slices of one load each and a
    // four-step tree (115 µs for 12.6 MB on an H100, 2026-12-05).
    l.slices = 1;
    while (l.slices < kMaxColumnSlices && l.slices * kColumnBatch < n_red) l.slices *= 2;
    const std::int64_t blocks = ceil_div(n_out, 32);
    if (blocks < kTargetBlocks && n_red >= 2 * kMinColumnSegment) {
      const std::int64_t want = std::min(ceil_div(kTargetBlocks, blocks), n_red / kMinColumnSegment);
      l.plan.seg_len = ceil_div(n_red, want);
      l.plan.segments = ceil_div(n_red, l.plan.seg_len);
    }
    l.grid = dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(l.plan.segments));
  }
  return l;
}

template <int G, class T, class R>
void launch_rows(const R& r, const Launch& l, const T* in, const Outputs<T>& out, typename R::Acc* partial,
                 cudaStream_t stream) {
  constexpr int block = G == 512 ? 512 : 256;
  reduce_rows_kernel<G, block><<<l.grid, block, 0, stream>>>(r, l.plan, in, out, partial);
}

template <class T, class R>
void run_reduction(const R& r, const Launch& l, const TensorView& in, const Outputs<T>& out, const DeviceLaunch& on) {
  using Acc = typename R::Acc;
  const cudaStream_t stream = on.stream;
  Tensor<std::uint8_t> workspace;
  Acc* partial = nullptr;
  if (l.plan.segments > 1) {
    workspace = Tensor<std::uint8_t>({l.plan.n_out * l.plan.segments * static_cast<std::int64_t>(sizeof(Acc))},
                                     Device::cuda(on.device));
    partial = reinterpret_cast<Acc*>(workspace.data());
  }
  const T* x = static_cast<const T*>(in.data);
  if (l.rows) {
    switch (l.group) {
      case 4: launch_rows<4>(r, l, x, out, partial, stream); break;
      case 8: launch_rows<8>(r, l, x, out, partial, stream); break;
      case 16: launch_rows<16>(r, l, x, out, partial, stream); break;
      case 32: launch_rows<32>(r, l, x, out, partial, stream); break;
      default: launch_rows<512>(r, l, x, out, partial, stream); break;
    }
  } else {
    reduce_cols_kernel<<<l.grid, dim3(32, static_cast<unsigned>(l.slices)), 0, stream>>>(r, l.plan, x, out, partial);
  }
  KILN_CUDA_CHECK_LAUNCH();
  if (l.plan.segments > 1) {
    reduce_finish_kernel<<<static_cast<unsigned>(ceil_div(l.plan.n_out, 8)), 256, 0, stream>>>(r, l.plan, out, partial);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

// Sums run on every floating type and on int32/int64 (accumulated in double, like the CPU).
template <class F>
void with_sum_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::i32: f(std::int32_t{}); return;
    case DType::i64: f(std::int64_t{}); return;
    default: with_floating_type("sum", dtype, f);
  }
}

// The input permuted to [kept dims..., reduced dims...] (row-major order kept within each group)
// and copied contiguous (by the elementwise "cast" kernel, kernels/elementwise/copy.cuh): then
// each group merges into one dim.
inline TensorView kept_then_reduced_copy(const TensorView& in, std::uint32_t& reduced_dims,
                                         Tensor<std::uint8_t>& storage, const DeviceLaunch& on) {
  TensorView view = in, out{};
  int n = 0;
  for (std::uint32_t pass = 0; pass < 2; ++pass)
    for (int d = 0; d < in.ndim; ++d)
      if (((reduced_dims >> d) & 1u) == pass) {
        view.shape[n] = in.shape[d];
        view.strides[n] = in.strides[d];
        ++n;
      }
  const int reduced = std::popcount(reduced_dims);
  reduced_dims = ((std::uint32_t{1} << reduced) - 1) << (in.ndim - reduced);
  out = view;
  std::int64_t stride = 1;
  for (int d = in.ndim - 1; d >= 0; --d) {
    out.strides[d] = stride;
    stride *= out.shape[d];
  }
  storage = Tensor<std::uint8_t>({view.numel() * dtype_size(in.dtype)}, Device::cuda(on.device));
  out.data = storage.data();
  launch_device_kernel("reduce", CastArgs{.launch = on, .out = out, .in = view});
  return out;
}

inline void launch_reduce(const ReduceArgs& a) {
  using math::ReduceOp;
  TensorView in = a.in;
  const ReduceOp kind = a.op;
  const bool arg = kind == ReduceOp::argmax || kind == ReduceOp::argmin;
  std::uint32_t reduced_dims = a.reduced_dims;
  Launch l = plan_reduction(in, reduced_dims, arg);
  if (l.plan.n_out == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  Tensor<std::uint8_t> copy;
  if ((l.plan.kept.ndim > 1 && l.plan.n_out >= kMaxMultiDimPositions) ||
      (l.plan.red.ndim > 1 && l.plan.n_red >= kMaxMultiDimPositions)) {
    in = kept_then_reduced_copy(in, reduced_dims, copy, a.launch);
    l = plan_reduction(in, reduced_dims, arg);
  }
  auto outputs = [&](auto tag) {
    using T = decltype(tag);
    return Outputs<T>{static_cast<T*>(a.values), a.indices};
  };
  switch (kind) {
    case ReduceOp::sum:
    case ReduceOp::mean:
      with_sum_type(in.dtype, [&](auto tag) {
        using T = decltype(tag);
        run_reduction<T>(SumReducer<T>{kind == ReduceOp::mean}, l, in, outputs(tag), a.launch);
      });
      return;
    case ReduceOp::max:
    case ReduceOp::min:
      with_floating_type("amax/amin", in.dtype, [&](auto tag) {
        using T = decltype(tag);
        if (kind == ReduceOp::max) run_reduction<T>(ExtremumReducer<T, true>{}, l, in, outputs(tag), a.launch);
        else run_reduction<T>(ExtremumReducer<T, false>{}, l, in, outputs(tag), a.launch);
      });
      return;
    case ReduceOp::argmax:
    case ReduceOp::argmin:
      with_floating_type("argmax/argmin", in.dtype, [&](auto tag) {
        using T = decltype(tag);
        if (kind == ReduceOp::argmax) run_reduction<T>(ArgReducer<T, true>{}, l, in, outputs(tag), a.launch);
        else run_reduction<T>(ArgReducer<T, false>{}, l, in, outputs(tag), a.launch);
      });
      return;
  }
}

inline const bool reduce_registered = register_device_kernel(&launch_reduce);

}  // namespace kiln::kernels::reduction
