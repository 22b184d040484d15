// Checks of the collectives (dist/collectives.hpp) against values computed by hand, and of the
// agreement errors; shared by the MPI tests (CPU) and the NCCL tests (each rank's GPU). Every
// rank computes what it expects from its rank and the world size alone.
#pragma once

#include <cstdint>
#include <vector>

#include <kiln/dist/collectives.hpp>

#include "dist_test.hpp"

namespace kiln::dist_test {

template <class T>
Tensor<T> values(const std::vector<double>& v, const Shape& shape, Device device) {
  std::vector<T> c;
  for (double x : v) c.push_back(convert<T>(x));
  return Tensor<T>::from_vector(c, shape, device);
}

template <class T>
std::vector<double> doubles(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& x : t.to_vector()) out.push_back(static_cast<double>(x));
  return out;
}

// Element i of rank r's input: small integers, exact in every floating type (bf16 included).
inline double element(int r, std::int64_t i) { return (r + 1) * 4 + i % 7; }

template <class T>
void check_all_reduce(dist::Communicator& comm, Device dev) {
  const int W = comm.size(), r = comm.rank();
  const Shape shape{3, 5};
  std::vector<double> mine, sum(15, 0.0), max(15, -1e9);
  for (std::int64_t i = 0; i < 15; ++i) {
    mine.push_back(element(r, i));
    for (int q = 0; q < W; ++q) {
      sum[static_cast<std::size_t>(i)] += element(q, i);
      max[static_cast<std::size_t>(i)] = std::max(max[static_cast<std::size_t>(i)], element(q, i));
    }
  }
  Tensor<T> a = values<T>(mine, shape, dev);
  dist::all_reduce(comm, a);
  EXPECT_EQ(doubles(a), sum) << dtype_name<T> << " sum";
  Tensor<T> b = values<T>(mine, shape, dev);
  dist::all_reduce(comm, b, dist::ReduceOp::max);
  EXPECT_EQ(doubles(b), max) << dtype_name<T> << " max";
}

template <class T>
void check_collectives(dist::Communicator& comm, Device dev) {
  const int W = comm.size(), r = comm.rank();

  // all_reduce of a non-contiguous view: the base tensor changes where the view lies.
  {
    std::vector<double> base(12);
    for (std::int64_t i = 0; i < 12; ++i) base[static_cast<std::size_t>(i)] = element(r, i);
    Tensor<T> t = values<T>(base, {3, 4}, dev);
    dist::all_reduce(comm, transpose(t, 0, 1));
    std::vector<double> want(12);
    for (std::int64_t i = 0; i < 12; ++i)
      for (int q = 0; q < W; ++q) want[static_cast<std::size_t>(i)] += element(q, i);
    EXPECT_EQ(doubles(t), want) << "all_reduce of a transposed view";
  }

  // reduce_scatter: [W·2, 3] -> rank r gets rows 2r, 2r+1 of the sum.
  {
    std::vector<double> in;
    for (std::int64_t i = 0; i < W * 6; ++i) in.push_back(element(r, i));
    const Tensor<T> out = dist::reduce_scatter(comm, values<T>(in, {W * 2, 3}, dev));
    EXPECT_EQ(out.shape(), (Shape{2, 3}));
    std::vector<double> want;
    for (std::int64_t i = r * 6; i < r * 6 + 6; ++i) {
      double s = 0;
      for (int q = 0; q < W; ++q) s += element(q, i);
      want.push_back(s);
    }
    EXPECT_EQ(doubles(out), want) << "reduce_scatter";
  }

  // all_gather: [2, 3] -> [W·2, 3], block q is rank q's.
  {
    std::vector<double> in;
    for (std::int64_t i = 0; i < 6; ++i) in.push_back(element(r, i));
    const Tensor<T> out = dist::all_gather(comm, values<T>(in, {2, 3}, dev));
    EXPECT_EQ(out.shape(), (Shape{W * 2, 3}));
    std::vector<double> want;
    for (int q = 0; q < W; ++q)
      for (std::int64_t i = 0; i < 6; ++i) want.push_back(element(q, i));
    EXPECT_EQ(doubles(out), want) << "all_gather";
  }

  // broadcast from the last rank.
  {
    std::vector<double> in;
    for (std::int64_t i = 0; i < 5; ++i) in.push_back(element(r, i));
    Tensor<T> t = values<T>(in, {5}, dev);
    dist::broadcast(comm, t, W - 1);
    std::vector<double> want;
    for (std::int64_t i = 0; i < 5; ++i) want.push_back(element(W - 1, i));
    EXPECT_EQ(doubles(t), want) << "broadcast";
  }

  // all_to_all_v: rank r sends r + d + 1 rows to rank d; row i of that block holds
  // (100·r + 10·d + i, −that) so the receiver can tell where each row came from.
  {
    std::vector<std::int64_t> counts;
    std::vector<double> rows;
    for (int d = 0; d < W; ++d) {
      counts.push_back(r + d + 1);
      for (std::int64_t i = 0; i < r + d + 1; ++i) {
        rows.push_back(100.0 * r + 10.0 * d + static_cast<double>(i));
        rows.push_back(-(100.0 * r + 10.0 * d + static_cast<double>(i)));
      }
    }
    const std::int64_t n = static_cast<std::int64_t>(rows.size()) / 2;
    const dist::AllToAll<T> got = dist::all_to_all_v(comm, values<T>(rows, {n, 2}, dev), counts);
    std::vector<std::int64_t> want_counts;
    std::vector<double> want;
    for (int s = 0; s < W; ++s) {
      want_counts.push_back(s + r + 1);
      for (std::int64_t i = 0; i < s + r + 1; ++i) {
        want.push_back(100.0 * s + 10.0 * r + static_cast<double>(i));
        want.push_back(-(100.0 * s + 10.0 * r + static_cast<double>(i)));
      }
    }
    EXPECT_EQ(got.recv_counts, want_counts);
    EXPECT_EQ(got.output.shape(), (Shape{static_cast<std::int64_t>(want.size()) / 2, 2}));
    EXPECT_EQ(doubles(got.output), want) << "all_to_all_v";
  }
  dist::barrier(comm);
}

// The gradient of all_to_all_v is the reverse all-to-all: with loss = Σ out ⊙ w, the gradient of
// a sent row is the weight row its receiver multiplied it with.
inline void check_all_to_all_gradient(dist::Communicator& comm, Device dev) {
  const int W = comm.size(), r = comm.rank();
  std::vector<std::int64_t> counts;
  std::int64_t n = 0;
  for (int d = 0; d < W; ++d) {
    counts.push_back((r + 2 * d) % 3 + (d == r ? 0 : 1));  // includes a zero count to self for rank 0
    n += counts.back();
  }
  Tensor<double> x = randn<double>({n, 3}, 0.0, 1.0, dev);
  x.requires_grad_();
  const dist::AllToAll<double> a = dist::all_to_all_v(comm, x, counts);
  // Receiver r weights row i of the block from s by 1000·s + 10·r + i + 0.5 (every column).
  std::vector<double> w;
  for (int s = 0; s < W; ++s)
    for (std::int64_t i = 0; i < a.recv_counts[static_cast<std::size_t>(s)]; ++i)
      for (int c = 0; c < 3; ++c) w.push_back(1000.0 * s + 10.0 * r + static_cast<double>(i) + 0.5);
  const std::int64_t m = a.output.shape()[0];
  sum(mul(a.output, Tensor<double>::from_vector(w, {m, 3}, dev))).backward();
  std::vector<double> want;
  for (int d = 0; d < W; ++d)
    for (std::int64_t i = 0; i < counts[static_cast<std::size_t>(d)]; ++i)
      for (int c = 0; c < 3; ++c) want.push_back(1000.0 * r + 10.0 * d + static_cast<double>(i) + 0.5);
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().to_vector(), want);
}

// Ranks that disagree get the same kiln::Error on every rank, and the communicator stays usable.
inline void check_disagreements(dist::Communicator& comm, Device dev) {
  const int r = comm.rank();
  EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<float>({4, 3 + r}, dev)), "dist::all_reduce",
                    "ranks disagree on the tensor", "rank 0: float32 [4, 3]", "rank 1: float32 [4, 4]");
  if (r == 0)
    EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<float>({3}, dev)), "dist::all_reduce", "rank 0: float32 [3]",
                      "rank 1: float64 [3]");
  else
    EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<double>({3}, dev)), "dist::all_reduce", "rank 0: float32 [3]",
                      "rank 1: float64 [3]");
  if (r == 0)
    EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<float>({3}, dev)), "ranks called different collectives",
                      "rank 0: all_reduce", "rank 1: broadcast");
  else
    EXPECT_KILN_ERROR(dist::broadcast(comm, zeros<float>({3}, dev), 0), "ranks called different collectives",
                      "rank 0: all_reduce", "rank 1: broadcast");
  EXPECT_KILN_ERROR(dist::broadcast(comm, zeros<float>({2}, dev), r), "dist::broadcast",
                    "ranks disagree on the root", "rank 0: 0", "rank 1: 1");
  EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<float>({2}, dev), r == 0 ? dist::ReduceOp::sum : dist::ReduceOp::max),
                    "dist::all_reduce", "ranks disagree on the reduce op");
  EXPECT_KILN_ERROR(dist::reduce_scatter(comm, zeros<float>({comm.size() + 1, 2}, dev)), "dist::reduce_scatter",
                    "divisible", "[3, 2]");
  EXPECT_KILN_ERROR(dist::all_reduce(comm, zeros<fp8_e4m3>({2}, dev)), "dist::all_reduce", "cannot reduce",
                    "float8_e4m3");
  {
    // Rank 1 claims one row more than it has.
    std::vector<std::int64_t> counts(static_cast<std::size_t>(comm.size()), 1);
    counts[0] += r == 1 ? 1 : 0;
    EXPECT_KILN_ERROR(dist::all_to_all_v(comm, zeros<float>({comm.size(), 2}, dev), counts), "dist::all_to_all_v",
                      "rank 1's send counts add up to 3 rows", "[2, 2]");
  }
  EXPECT_KILN_ERROR(dist::all_to_all_v(comm, zeros<float>({comm.size(), 2 + r}, dev),
                                       std::vector<std::int64_t>(static_cast<std::size_t>(comm.size()), 1)),
                    "dist::all_to_all_v", "all dims but the first", "rank 0: float32 [2, 2]", "rank 1: float32 [2, 3]");
  // Still in step: a correct call works.
  Tensor<float> ok = ones<float>({2}, dev);
  dist::all_reduce(comm, ok);
  EXPECT_EQ(ok.to_vector(), (std::vector<float>{static_cast<float>(comm.size()), static_cast<float>(comm.size())}));
}

}  // namespace kiln::dist_test
