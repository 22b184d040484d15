// Walking one unit-stride row with a group of threads, 16 bytes per load where alignment allows,
// and the row bookkeeping around it (where each row of several operands starts, how many threads
// share a row). Used by the row reductions (kernels/reduce/), softmax (kernels/softmax/) and
// cross-entropy (kernels/cross_entropy/).
//
// A row of n elements may start anywhere (rows of odd length, slices), so it is cut into a scalar
// head (up to the first 16-byte boundary), a body of 16-byte vectors, and a scalar tail. The G
// threads of the group take head elements lane, lane + G, ...; body vectors lane, lane + G, ... (so
// a warp reads 512 consecutive bytes per load instruction: fully coalesced); then tail elements.
// Several operands (inputs and at most one output, all of one element type) are walked together
// when their starts have the same alignment within 16 bytes; otherwise the whole row goes through
// the scalar path (still coalesced, one element per thread per step).
//
// Memory-level parallelism: each thread first issues U independent 16-byte loads per operand, then
// computes on them, so U * (threads per SM) loads are in flight per SM — enough to cover DRAM
// latency at full bandwidth. U keeps about 16 elements (4 doubles) per operand in flight, halved
// for two operands: the kernels run 1024 threads per SM with at most 64 registers each.
//
// Loads of a second pass over data that was just read (kStream = true) carry the "streaming"
// cache hint (evict first), and so do all stores of this walk: lines read once more and then dead,
// and outputs nobody reads soon, leave L2 first, so the rows that other blocks are about to read a
// second time stay resident.
#pragma once

#include <cstdint>
#include <cstring>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

template <class T>
inline constexpr int kVecElems = static_cast<int>(16 / sizeof(T));

// Rows walked by visit_row and fill_row are shorter than this (32-bit element indices).
inline constexpr std::int64_t kMaxRowLength = std::int64_t{1} << 31;

template <class T, int NIN>
constexpr int default_unroll() {
  constexpr int elements = sizeof(T) == 8 ? 4 : 16;
  constexpr int u = elements / (kVecElems<T> * NIN);
  return u < 1 ? 1 : u;
}

// One 16-byte vector of a row.
template <class T>
using RowVec = Vec<T, kVecElems<T>>;

template <bool kStream, class T>
__device__ __forceinline__ RowVec<T> load_vec(const RowVec<T>* p) {
  if constexpr (kStream) {
    const uint4 u = __ldcs(reinterpret_cast<const uint4*>(p));
    RowVec<T> r;
    std::memcpy(&r, &u, sizeof(r));
    return r;
  } else {
    return *p;
  }
}

template <class T>
__device__ __forceinline__ void store_vec(RowVec<T>* p, const RowVec<T>& r) {
  uint4 u;
  std::memcpy(&u, &r, sizeof(u));
  __stcs(reinterpret_cast<uint4*>(p), u);
}

// Position of p within its 16-byte line, in elements (p is aligned to its element size).
template <class T>
__device__ __forceinline__ int misalignment(const void* p) {
  return static_cast<int>((reinterpret_cast<std::uintptr_t>(p) / sizeof(T)) % kVecElems<T>);
}

// Visits the n elements of a row split among the G threads of a group (this thread is `lane`).
// `in` holds NIN operands; f(k, v) gets the element index k and the NIN elements at k widened to
// compute_t<T>. With kWrite, f returns the value to store at out[k] (rounded to T); otherwise f
// returns nothing and out is ignored. Each thread visits its elements in increasing k.
// Loads in flight per operand and thread: Unroll, or default_unroll().
template <int G, bool kStream, bool kWrite, int Unroll = 0, int NIN, class T, class F>
__device__ __forceinline__ void visit_row(int lane, std::int64_t length, const T* const (&in)[NIN], T* out, F&& f) {
  using C = compute_t<T>;
  constexpr int V = kVecElems<T>;
  constexpr int U = Unroll > 0 ? Unroll : default_unroll<T, NIN>();
  const auto n = static_cast<int>(length);  // the host keeps rows below 2^31 elements (kMaxRowLength)

  const int mis = misalignment<T>(in[0]);
  bool together = true;
#pragma unroll
  for (int i = 1; i < NIN; ++i) together = together && misalignment<T>(in[i]) == mis;
  if constexpr (kWrite) together = together && misalignment<T>(out) == mis;
  const int to_boundary = (V - mis) % V;
  const int head = together ? (to_boundary < n ? to_boundary : n) : n;
  const int nvec = (n - head) / V;

  auto scalar = [&](int k) {
    C v[NIN];
#pragma unroll
    for (int i = 0; i < NIN; ++i) v[i] = load(in[i][k]);
    if constexpr (kWrite) {
      const C r = f(k, v);
      out[k] = store<T>(r);
    } else {
      f(k, v);
    }
  };
  for (int k = lane; k < head; k += G) scalar(k);

  const RowVec<T>* body[NIN];
#pragma unroll
  for (int i = 0; i < NIN; ++i) body[i] = reinterpret_cast<const RowVec<T>*>(in[i] + head);
  for (int j0 = lane; j0 < nvec; j0 += U * G) {
    RowVec<T> buf[U][NIN];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (j0 + u * G < nvec) {
#pragma unroll
        for (int i = 0; i < NIN; ++i) buf[u][i] = load_vec<kStream>(body[i] + j0 + u * G);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * G;
      if (j < nvec) {
        RowVec<T> o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          C v[NIN];
#pragma unroll
          for (int i = 0; i < NIN; ++i) v[i] = load(buf[u][i].v[e]);
          const int k = head + j * V + e;
          if constexpr (kWrite) {
            o.v[e] = store<T>(f(k, v));
          } else {
            f(k, v);
          }
        }
        if constexpr (kWrite) store_vec(reinterpret_cast<RowVec<T>*>(out + head) + j, o);
      }
    }
  }

  for (int k = head + nvec * V + lane; k < n; k += G) scalar(k);
}

// Stores `value` into the n elements of a unit-stride row (the G threads of a group share it).
template <int G, class T>
__device__ __forceinline__ void fill_row(int lane, std::int64_t length, T* out, T value) {
  constexpr int V = kVecElems<T>;
  const auto n = static_cast<int>(length);
  const int to_boundary = (V - misalignment<T>(out)) % V;
  const int head = to_boundary < n ? to_boundary : n;
  const int nvec = (n - head) / V;
  for (int k = lane; k < head; k += G) out[k] = value;
  RowVec<T> o;
#pragma unroll
  for (int e = 0; e < V; ++e) o.v[e] = value;
  for (int j = lane; j < nvec; j += G) store_vec(reinterpret_cast<RowVec<T>*>(out + head) + j, o);
  for (int k = head + nvec * V + lane; k < n; k += G) out[k] = value;
}

// Element offsets in N operands of position r, row-major over a few dims (the rows of a row
// kernel, or the kept and the reduced positions of a reduction). Unlike Offsets (offsets.cuh),
// the host guarantees fewer than 2^32 positions whenever there is more than one dim, so the
// position always splits with 32-bit divisions, and a single dim needs none at all.
template <int N>
struct Offsets32 {
  int ndim;
  std::int64_t shape[kMaxDims];
  std::int64_t strides[N][kMaxDims];

  __device__ __forceinline__ void at(std::int64_t r, std::int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = ndim == 1 ? r * strides[k][0] : 0;
    if (ndim <= 1) return;
    auto j = static_cast<std::uint32_t>(r);
    for (int d = ndim - 1; d >= 0; --d) {
      const auto n = static_cast<std::uint32_t>(shape[d]);
      const std::uint32_t q = j / n;
      const auto i = static_cast<std::int64_t>(j - q * n);
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
      j = q;
    }
  }

  // The one operand's offset (N == 1): at() for a single operand, written as a plain return so
  // that the reduction's per-element walks keep their lean code.
  __device__ __forceinline__ std::int64_t offset(std::int64_t r) const {
    static_assert(N == 1, "offset() is for one operand; at() gives N");
    if (ndim == 1) return r * strides[0][0];
    std::int64_t off = 0;
    auto j = static_cast<std::uint32_t>(r);
    for (int d = ndim - 1; d >= 0; --d) {
      const auto n = static_cast<std::uint32_t>(shape[d]);
      const std::uint32_t q = j / n;
      off += static_cast<std::int64_t>(j - q * n) * strides[0][d];
      j = q;
    }
    return off;
  }
};

// The most positions an Offsets32 over several dims may have.
inline constexpr std::int64_t kMaxMultiDimPositions = std::int64_t{1} << 32;

// The rows of N operands of one shape along dim `d`: their count, length, starts, and the stride
// of each operand along d.
template <int N>
struct Rows {
  std::int64_t count = 0, length = 1;
  Offsets32<N> starts{};
  std::int64_t step[N] = {};

  bool unit_stride() const {
    for (int k = 0; k < N; ++k)
      if (step[k] != 1 && length > 1) return false;
    return true;
  }
};

// Rows of `views` (N operands of one shape) along d; a 0-d tensor is one row of one element.
template <int N>
Rows<N> rows_along(const char* op, const TensorView* const (&views)[N], int d) {
  Rows<N> rows;
  const TensorView& a = *views[0];
  rows.count = 1;
  int nd = 0;
  for (int i = 0; i < a.ndim; ++i) {
    if (i == d) {
      rows.length = a.shape[i];
      for (int k = 0; k < N; ++k) rows.step[k] = views[k]->strides[i];
      continue;
    }
    rows.count *= a.shape[i];
    if (a.shape[i] == 1) continue;
    // Merge with the previous kept dim when every operand steps through both as one.
    bool merge = nd > 0;
    for (int k = 0; k < N && merge; ++k)
      merge = rows.starts.strides[k][nd - 1] == views[k]->strides[i] * a.shape[i];
    if (merge) {
      rows.starts.shape[nd - 1] *= a.shape[i];
      for (int k = 0; k < N; ++k) rows.starts.strides[k][nd - 1] = views[k]->strides[i];
    } else {
      rows.starts.shape[nd] = a.shape[i];
      for (int k = 0; k < N; ++k) rows.starts.strides[k][nd] = views[k]->strides[i];
      ++nd;
    }
  }
  if (a.ndim == 0) {
    rows.length = 1;
    for (int k = 0; k < N; ++k) rows.step[k] = 1;
  }
  rows.starts.ndim = nd;
  check(nd <= 1 || rows.count < kMaxMultiDimPositions, op, "more than 2^32 rows over several dims (",
        rows.count, " rows) are not supported on CUDA; make the tensor contiguous first");
  check(rows.length < kMaxRowLength, op, "rows of ", rows.length, " elements (2^31 or more) are not supported on CUDA");
  return rows;
}

// Threads that share one row: a warp for short rows, a block for long ones. Row kernels run
// 1024 threads per SM (at most 64 registers each), so two 512-thread blocks share an SM and one's
// reduction step overlaps the other's streaming.
inline int row_threads(std::int64_t n) { return n <= 1024 ? 32 : (n <= 4096 ? 256 : 512); }
template <int G>
inline constexpr int kRowBlock = G <= 32 ? 256 : G;
// Blocks per SM the row kernels are compiled for (__launch_bounds__' second argument): 1024
// threads, or 512 for 8-byte elements (double math needs more than 64 registers; double is not
// the bandwidth-critical case).
template <class T, int Block>
inline constexpr int kRowMinBlocks = (sizeof(T) == 8 ? 512 : 1024) / Block;

}  // namespace kiln::kernels
