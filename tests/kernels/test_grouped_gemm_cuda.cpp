// The grouped GEMM kernels (kernels/grouped_gemm/) against float64 products of the same bf16/fp16
// inputs: forward (y = x·W_gᵀ), dgrad (dx = dy·W_g) and wgrad (dW_g = dy_gᵀ·x_g) through
// grouped_linear and its backward, with ragged groups (empty ones, groups of one row, one group
// holding every row, sizes that are not multiples of the 128-row tile), N and K from 8 to 1024.
// Outputs are poisoned first. Tolerance: the result is rounded once to the 16-bit type (2^-8
// relative for bf16, 2^-11 for fp16) from a float accumulation whose error is far smaller; the
// error is measured relative to max(|value|, sqrt(terms)), the size of a sum of that many products
// of unit normals, so near-zero sums are judged by their absolute error.
#include <cmath>
#include <limits>
#include <string>

#include "cuda_test_util.hpp"
#include "kiln/backend/cpu/grouped_gemm.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/ops/grouped_linear.hpp"
#include "kiln/ops/grouped_swiglu_mlp.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// How far apart two 16-bit results are, in units in the last place (their bit patterns as ordered
// integers; NaN or a sign change counts as far): the SwiGLU epilogues against the composed ops.
template <class T>
int max_ulps(const Tensor<T>& got, const Tensor<T>& want) {
  const std::vector<T> g = on_cpu(got).to_vector(), w = on_cpu(want).to_vector();
  int worst = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double a = static_cast<double>(g[i]), b = static_cast<double>(w[i]);
    if (!std::isfinite(a) || !std::isfinite(b) || (a < 0) != (b < 0)) return 1 << 20;
    worst = std::max(worst, std::abs(static_cast<int>(g[i].bits) - static_cast<int>(w[i].bits)));
  }
  return worst;
}

// The largest error relative to max(|want|, scale); an unwritten (poisoned: NaN) or non-finite
// output counts as an infinite error (std::max would silently drop a NaN).
double worst_error(const std::vector<double>& got, const std::vector<double>& want, double scale) {
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(got[i] - want[i]) / std::max(std::abs(want[i]), scale));
  }
  return worst;
}

// The bound on worst_error for a sum of `terms` products: the one rounding to the 16-bit type
// (half an ulp: 2^-8 relative for bf16, 2^-11 for fp16) plus the float accumulation's own error,
// which relative to the sum's size sqrt(terms) is about sqrt(terms)·2^-24 (a random walk of
// roundings on partial sums of size sqrt(terms)); 4× that covers tensor cores that truncate. It
// matters only for fp16 at thousands of terms: at N = 7168 the three kernels (plain included) all
// gave 4.93e-4 against the rounding alone, 4.88e-4; at K = 1000, 4.8838e-4 against 4.8828e-4.
template <class T>
double error_bound(double terms) {
  return (std::is_same_v<T, bf16> ? 1.0 / 256 : 1.0 / 2048) + 4.0 * std::sqrt(terms) * std::ldexp(1.0, -24);
}

template <class T>
std::vector<double> as_doubles(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T v : on_cpu(t).to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// Groups of the given sizes (rows sorted by group: offsets [G + 1]) with random inputs rounded to T:
// x [R, K], w [G, N, K], dy [R, N]; largest = the biggest group (at least 1), wgrad's reduction.
template <class T>
struct GroupedProblem {
  std::int64_t R = 0, G = 0, largest = 1;
  Tensor<std::int64_t> offsets;
  Tensor<T> x, w, dy;

  GroupedProblem(const std::vector<std::int64_t>& sizes, std::int64_t N, std::int64_t K) {
    std::vector<std::int64_t> off{0};
    for (auto s : sizes) {
      off.push_back(off.back() + s);
      largest = std::max(largest, s);
    }
    R = off.back();
    G = static_cast<std::int64_t>(sizes.size());
    offsets = Tensor<std::int64_t>::from_vector(off, {G + 1});
    x = cast<T>(randn<float>({R, K}));
    w = cast<T>(randn<float>({G, N, K}));
    dy = cast<T>(randn<float>({R, N}));
  }
};

template <class T>
void check_grouped(const std::vector<std::int64_t>& sizes, std::int64_t N, std::int64_t K) {
  const GroupedProblem<T> pb(sizes, N, K);
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " G " << pb.G << " R " << pb.R << " N " << N << " K " << K);
  const std::int64_t largest = pb.largest;
  const Tensor<std::int64_t>& offsets = pb.offsets;
  const Tensor<T> &x = pb.x, &w = pb.w, &dy = pb.dy;

  // float64 reference: the op on the CPU in double from the same rounded inputs.
  const Tensor<double> xd = cast<double>(x).requires_grad_(), wd = cast<double>(w).requires_grad_();
  const Tensor<double> yd = grouped_linear(xd, wd, offsets);
  yd.backward(cast<double>(dy));

  poison_cached_memory();
  const Tensor<T> xg = on_gpu(x).requires_grad_(), wg = on_gpu(w).requires_grad_();
  const Tensor<T> yg = grouped_linear(xg, wg, on_gpu(offsets));
  yg.backward(on_gpu(dy));

  const double k = static_cast<double>(K), n = static_cast<double>(N), rows = static_cast<double>(largest);
  EXPECT_LE(worst_error(as_doubles(yg), yd.to_vector(), std::sqrt(k)), error_bound<T>(k)) << "forward";
  EXPECT_LE(worst_error(as_doubles(xg.grad()), xd.grad().to_vector(), std::sqrt(n)), error_bound<T>(n)) << "dgrad";
  EXPECT_LE(worst_error(as_doubles(wg.grad()), wd.grad().to_vector(), std::sqrt(rows)), error_bound<T>(rows))
      << "wgrad";
}

// One kernel path: which implementation and, for the Hopper kernel, which tile width.
struct Path {
  kernels::GroupedGemmKernel implementation;
  int block_n;
  const char* variant;  // what the launcher records (core/kernel_trace.hpp)
};

// The paths to compare: the plain kernel always, the Hopper kernel at both tile widths on sm_90.
std::vector<Path> paths_to_test() {
  std::vector<Path> paths{{kernels::GroupedGemmKernel::plain, 0, "grouped_gemm/plain"}};
  if (gpu_is_hopper()) {
    paths.push_back({kernels::GroupedGemmKernel::hopper, 128, "grouped_gemm/hopper"});
    paths.push_back({kernels::GroupedGemmKernel::hopper, 256, "grouped_gemm/hopper"});
  }
  return paths;
}

// forward, dgrad and (where with_wgrad) wgrad on every path against the float64 CPU reference
// (backend/cpu/grouped_gemm.hpp in double on the same rounded inputs), into outputs filled with
// NaN first, so an unwritten element fails; the kernel trace proves which kernel ran.
template <class T>
void check_paths(const std::vector<std::int64_t>& sizes, std::int64_t N, std::int64_t K, bool with_wgrad = true) {
  const GroupedProblem<T> pb(sizes, N, K);
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " G " << pb.G << " R " << pb.R << " N " << N << " K " << K);
  const std::int64_t R = pb.R, G = pb.G, largest = pb.largest;
  const Tensor<std::int64_t>& offsets = pb.offsets;
  const Tensor<T> &x = pb.x, &w = pb.w, &dy = pb.dy;
  const Tensor<double> xd = cast<double>(x), wd = cast<double>(w), dyd = cast<double>(dy);
  Tensor<double> y_ref({R, N}), dx_ref({R, K}), dw_ref({G, N, K});
  cpu::grouped_gemm_forward(xd.data(), wd.data(), offsets.data(), y_ref.data(), static_cast<int>(G), N, K);
  cpu::grouped_gemm_dgrad(dyd.data(), wd.data(), offsets.data(), dx_ref.data(), static_cast<int>(G), N, K);
  if (with_wgrad)
    cpu::grouped_gemm_wgrad(dyd.data(), xd.data(), offsets.data(), dw_ref.data(), static_cast<int>(G), N, K);

  const Tensor<std::int64_t> offsets_gpu = on_gpu(offsets);
  const Tensor<T> x_gpu = on_gpu(x), w_gpu = on_gpu(w), dy_gpu = on_gpu(dy);
  const T nan = convert<T>(std::numeric_limits<double>::quiet_NaN());
  const auto tol = [](double terms) { return error_bound<T>(terms); };
  for (const Path& path : paths_to_test()) {
    SCOPED_TRACE(::testing::Message() << path.variant << " tile width " << path.block_n);
    Tensor<T> y = full<T>({R, N}, nan, gpu), dx = full<T>({R, K}, nan, gpu), dw = full<T>({G, N, K}, nan, gpu);
    KernelTrace trace;
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::forward, y, x_gpu, Tensor<T>(), w_gpu, offsets_gpu,
                                R, G, N, K, path.implementation, path.block_n);
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::dgrad, dx, Tensor<T>(), dy_gpu, w_gpu, offsets_gpu,
                                R, G, N, K, path.implementation, path.block_n);
    if (with_wgrad)
      detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::wgrad, dw, x_gpu, dy_gpu, Tensor<T>(), offsets_gpu,
                                  R, G, N, K, path.implementation, path.block_n);
    EXPECT_EQ(trace.count(path.variant), with_wgrad ? 3 : 2);
    const double k = static_cast<double>(K), n = static_cast<double>(N), rows = static_cast<double>(largest);
    EXPECT_LE(worst_error(as_doubles(y), y_ref.to_vector(), std::sqrt(k)), tol(k)) << "forward";
    EXPECT_LE(worst_error(as_doubles(dx), dx_ref.to_vector(), std::sqrt(n)), tol(n)) << "dgrad";
    if (with_wgrad) {
      EXPECT_LE(worst_error(as_doubles(dw), dw_ref.to_vector(), std::sqrt(rows)), tol(rows)) << "wgrad";
    }
  }
}

}  // namespace

// Both kernels (plain mma.sync; Hopper at 128- and 256-column tiles on sm_90), all three products,
// at odd group sizes: empty groups, single rows, 127 and 129 (one row either side of a tile; for
// wgrad a reduction ending 63 rows or 1 row into a 64-row k-block), 1000; one group with
// every row; 64 groups; N and K at the smallest legal sizes (8, 16), not multiples of the 64-wide
// k-block or the tile widths, and DeepSeek-V3's expert shapes.
TEST(GroupedGemmCuda, BothPathsEqualFloat64) {
  KILN_REQUIRE_GPU();
  const std::vector<std::int64_t> odd{0, 1, 127, 129, 1000};
  check_paths<bf16>(odd, 8, 8);
  check_paths<bf16>(odd, 16, 8);
  check_paths<bf16>(odd, 8, 16);
  check_paths<bf16>(odd, 136, 200);   // partial k-blocks and partial column tiles of 128 and 256
  check_paths<bf16>(odd, 264, 584);
  check_paths<fp16>(odd, 136, 200);
  check_paths<fp16>({3, 0, 257}, 520, 72);
  check_paths<bf16>({2000}, 256, 128);               // one group takes everything
  check_paths<bf16>({0, 0, 1500, 0}, 128, 256);      // one group among empty ones
  std::vector<std::int64_t> many;
  for (int g = 0; g < 64; ++g) many.push_back((g * 37) % 150);
  check_paths<bf16>(many, 128, 64);                  // 64 groups: two a lane in the prefix scan
  check_paths<fp16>(many, 72, 96);
  // DeepSeek-V3 expert shapes, few rows (the float64 reference runs on the CPU).
  check_paths<bf16>({130, 0, 1}, 4096, 7168);
  check_paths<bf16>({1, 129, 0}, 7168, 2048);
  check_paths<fp16>({65}, 7168, 2048, false);
}

// A group's results must not depend on another group's rows, even where a tile or a k-block reaches
// into them: group 1's x and dy rows are NaN, group 0 (100 rows: a partial 128-row tile and a
// partial 64-row k-block) must come out finite and right in all three products on every path.
TEST(GroupedGemmCuda, GroupsDoNotSeeTheirNeighbours) {
  KILN_REQUIRE_GPU();
  const std::int64_t N = 64, K = 96, first = 100, R = 150;
  const Tensor<std::int64_t> offsets = Tensor<std::int64_t>::from_vector({0, first, R}, {3});
  std::vector<float> xv = randn<float>({R, K}).to_vector(), dyv = randn<float>({R, N}).to_vector();
  for (std::int64_t i = first * K; i < R * K; ++i) xv[static_cast<std::size_t>(i)] = std::nanf("");
  for (std::int64_t i = first * N; i < R * N; ++i) dyv[static_cast<std::size_t>(i)] = std::nanf("");
  const Tensor<bf16> x = cast<bf16>(Tensor<float>::from_vector(xv, {R, K}));
  const Tensor<bf16> dy = cast<bf16>(Tensor<float>::from_vector(dyv, {R, N}));
  const Tensor<bf16> w = cast<bf16>(randn<float>({2, N, K}));
  const Tensor<double> xd = cast<double>(x), wd = cast<double>(w), dyd = cast<double>(dy);
  Tensor<double> y_ref({R, N}), dx_ref({R, K}), dw_ref({2, N, K});
  cpu::grouped_gemm_forward(xd.data(), wd.data(), offsets.data(), y_ref.data(), 2, N, K);
  cpu::grouped_gemm_dgrad(dyd.data(), wd.data(), offsets.data(), dx_ref.data(), 2, N, K);
  cpu::grouped_gemm_wgrad(dyd.data(), xd.data(), offsets.data(), dw_ref.data(), 2, N, K);
  // Group 0's part of each output: the first `first` rows of y and dx, the first N·K values of dW.
  auto group0 = [](const std::vector<double>& v, std::int64_t count) {
    return std::vector<double>(v.begin(), v.begin() + count);
  };
  const Tensor<std::int64_t> offsets_gpu = on_gpu(offsets);
  const Tensor<bf16> x_gpu = on_gpu(x), w_gpu = on_gpu(w), dy_gpu = on_gpu(dy);
  for (const Path& path : paths_to_test()) {
    SCOPED_TRACE(::testing::Message() << path.variant << " tile width " << path.block_n);
    Tensor<bf16> y({R, N}, gpu), dx({R, K}, gpu), dw({2, N, K}, gpu);
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::forward, y, x_gpu, Tensor<bf16>(), w_gpu,
                                offsets_gpu, R, 2, N, K, path.implementation, path.block_n);
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::dgrad, dx, Tensor<bf16>(), dy_gpu, w_gpu,
                                offsets_gpu, R, 2, N, K, path.implementation, path.block_n);
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::wgrad, dw, x_gpu, dy_gpu, Tensor<bf16>(),
                                offsets_gpu, R, 2, N, K, path.implementation, path.block_n);
    const double tol = error_bound<bf16>(static_cast<double>(K));
    EXPECT_LE(worst_error(group0(as_doubles(y), first * N), group0(y_ref.to_vector(), first * N), std::sqrt(96.0)), tol)
        << "forward";
    EXPECT_LE(worst_error(group0(as_doubles(dx), first * K), group0(dx_ref.to_vector(), first * K), std::sqrt(64.0)),
              tol)
        << "dgrad";
    EXPECT_LE(worst_error(group0(as_doubles(dw), N * K), group0(dw_ref.to_vector(), N * K), std::sqrt(100.0)), tol)
        << "wgrad";
  }
}

// wgrad's chunks on the Hopper kernel (kernels/grouped_gemm/wgrad_chunks.cuh): each group's rows
// summed in chunks of 64, 128 and 320 rows, handed from CTA to CTA through the FP32 workspace, at
// odd group sizes (empty groups, one row, a chunk and one row, a group of 16 chunks of 64, a last
// chunk of 1 row), both tile widths, into poisoned memory: against float64, and bit for bit the
// same in a second run (the chunks of a tile are added in a fixed order).
TEST(GroupedGemmCuda, WgradChunksEqualFloat64AndRepeat) {
  KILN_REQUIRE_GPU();
  if (!gpu_is_hopper()) GTEST_SKIP() << "wgrad's chunks are the Hopper kernel's";
  const std::int64_t N = 136, K = 264;
  const GroupedProblem<bf16> pb({0, 1, 65, 1000, 129, 0, 1024, 321}, N, K);
  const std::int64_t R = pb.R, G = pb.G;
  const Tensor<double> xd = cast<double>(pb.x), dyd = cast<double>(pb.dy);
  Tensor<double> dw_ref({G, N, K});
  cpu::grouped_gemm_wgrad(dyd.data(), xd.data(), pb.offsets.data(), dw_ref.data(), static_cast<int>(G), N, K);
  const Tensor<std::int64_t> offsets_gpu = on_gpu(pb.offsets);
  const Tensor<bf16> x_gpu = on_gpu(pb.x), dy_gpu = on_gpu(pb.dy);
  const bf16 nan = convert<bf16>(std::numeric_limits<double>::quiet_NaN());
  const auto wgrad = [&](int block_n, std::int64_t chunk_rows) {
    Tensor<bf16> dw = full<bf16>({G, N, K}, nan, gpu);
    poison_cached_memory();
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::wgrad, dw, x_gpu, dy_gpu, Tensor<bf16>(),
                                offsets_gpu, R, G, N, K, kernels::GroupedGemmKernel::hopper, block_n,
                                kernels::GroupedGemmEpilogue::none, nullptr, chunk_rows);
    return dw;
  };
  const double rows = static_cast<double>(pb.largest);
  for (const int block_n : {128, 256}) {
    for (const std::int64_t chunk_rows : {64, 128, 320}) {
      SCOPED_TRACE(::testing::Message() << "tile width " << block_n << ", chunks of " << chunk_rows << " rows");
      const Tensor<bf16> first = wgrad(block_n, chunk_rows), second = wgrad(block_n, chunk_rows);
      EXPECT_LE(worst_error(as_doubles(first), dw_ref.to_vector(), std::sqrt(rows)), error_bound<bf16>(rows));
      EXPECT_EQ(max_ulps(first, second), 0) << "two runs differ";
    }
  }
  // A chunk size that is not a multiple of the 64-row k-block is refused.
  EXPECT_THROW(wgrad(256, 100), Error);
}

TEST(GroupedGemmCuda, EqualsFloat64) {
  KILN_REQUIRE_GPU();
  // Ragged groups: empty first, middle and last groups, single rows, partial tiles, more than
  // one row tile, one group with everything.
  const std::vector<std::vector<std::int64_t>> splits{
      {1}, {300}, {0, 1, 0, 129, 7, 0}, {4097, 0}, {0, 0, 0, 513}, {64, 128, 192, 1, 255, 256, 0, 300}};
  for (const auto& s : splits) {
    check_grouped<bf16>(s, 64, 96);
    check_grouped<bf16>(s, 8, 40);
  }
  check_grouped<bf16>({1000, 3000, 0, 2000}, 1024, 768);   // kiln's big config, GEMM1
  check_grouped<bf16>({1000, 3000, 0, 2000}, 768, 512);    // and GEMM2
  check_grouped<fp16>({5, 700, 0, 130}, 96, 1000);
  // 40 groups: the scheduler's prefix sum spans two groups a lane.
  std::vector<std::int64_t> many;
  for (int g = 0; g < 40; ++g) many.push_back((g * 37) % 150);
  check_grouped<bf16>(many, 128, 64);
}

// The SwiGLU epilogues (kernels/grouped_gemm/swiglu_epilogue.cuh) on every path against the same
// path's plain product followed by kiln::swiglu and its backward on the GPU (the composition
// grouped_swiglu_mlp promises): gate|up bit for bit (the same accumulation), silu(gate)·up and the
// gradients within one unit in the last place (the same formula, compiled into another kernel),
// into outputs poisoned with NaN; widths I that are not multiples of the 64- and 128-column
// halves, ragged groups. Then the op with its autograd against the composed ops' on the GPU.
template <class T>
void check_swiglu_epilogues(const std::vector<std::int64_t>& sizes, std::int64_t H, std::int64_t I) {
  const GroupedProblem<T> pb(sizes, 2 * I, H);  // x [R, H], w_in [G, 2I, H], dy [R, 2I] (unused)
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " G " << pb.G << " R " << pb.R << " H " << H << " I " << I);
  const std::int64_t R = pb.R, G = pb.G;
  const Tensor<std::int64_t> offsets = on_gpu(pb.offsets);
  const Tensor<T> x = on_gpu(pb.x), w_in = on_gpu(cast<T>(randn<float>({G, 2 * I, H}, 0.0, 0.3)));
  const Tensor<T> w_out = on_gpu(cast<T>(randn<float>({G, H, I}, 0.0, 0.3)));
  const Tensor<T> dy = on_gpu(cast<T>(randn<float>({R, H})));
  const T nan = convert<T>(std::numeric_limits<double>::quiet_NaN());
  for (const Path& path : paths_to_test()) {
    SCOPED_TRACE(::testing::Message() << path.variant << " tile width " << path.block_n);
    // Forward: the epilogue, then the composition on the same path.
    Tensor<T> act = full<T>({R, I}, nan, gpu), gate_up = full<T>({R, 2 * I}, nan, gpu);
    Tensor<T> gate_up_ref = full<T>({R, 2 * I}, nan, gpu);
    KernelTrace trace;
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::forward, act, x, Tensor<T>(), w_in, offsets, R, G,
                                2 * I, H, path.implementation, path.block_n, kernels::GroupedGemmEpilogue::swiglu,
                                gate_up.data());
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::forward, gate_up_ref, x, Tensor<T>(), w_in, offsets,
                                R, G, 2 * I, H, path.implementation, path.block_n);
    const Tensor<T> act_ref = swiglu(narrow(gate_up_ref, 1, 0, I), narrow(gate_up_ref, 1, I, I));
    EXPECT_EQ(max_ulps(gate_up, gate_up_ref), 0) << "gate|up";
    EXPECT_LE(max_ulps(act, act_ref), 1) << "silu(gate)·up";
    // Backward: da = dy·W_out and the SwiGLU's gradients at gate_up, fused and composed.
    Tensor<T> d_gate_up = full<T>({R, 2 * I}, nan, gpu), da = full<T>({R, I}, nan, gpu);
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::dgrad, d_gate_up, Tensor<T>(), dy, w_out, offsets, R,
                                G, H, I, path.implementation, path.block_n,
                                kernels::GroupedGemmEpilogue::swiglu_backward, gate_up_ref.data());
    detail::grouped_gemm_launch("test", kernels::GroupedGemmKind::dgrad, da, Tensor<T>(), dy, w_out, offsets, R, G, H,
                                I, path.implementation, path.block_n);
    EXPECT_EQ(trace.count(path.variant), 4);
    const auto [d_gate, d_up] =
        detail::swiglu_backward_kernel(da, narrow(gate_up_ref, 1, 0, I), narrow(gate_up_ref, 1, I, I));
    EXPECT_LE(max_ulps(contiguous(narrow(d_gate_up, 1, 0, I)), d_gate), 1) << "d_gate";
    EXPECT_LE(max_ulps(contiguous(narrow(d_gate_up, 1, I, I)), d_up), 1) << "d_up";
  }
  // The op and its autograd (automatic kernel choice) against the composed ops on the GPU.
  const Tensor<T> xa = clone(x).requires_grad_(), wia = clone(w_in).requires_grad_();
  const Tensor<T> woa = clone(w_out).requires_grad_(), xb = clone(x).requires_grad_();
  const Tensor<T> wib = clone(w_in).requires_grad_(), wob = clone(w_out).requires_grad_();
  const Tensor<T> y = grouped_swiglu_mlp(xa, wia, woa, offsets);
  const Tensor<T> gu = grouped_linear(xb, wib, offsets);
  const Tensor<T> y_ref = grouped_linear(swiglu(narrow(gu, 1, 0, I), narrow(gu, 1, I, I)), wob, offsets);
  y.backward(dy);
  y_ref.backward(dy);
  // Products of inputs at most one ulp apart: within two roundings of each other.
  const auto near = [](const Tensor<T>& got, const Tensor<T>& want, double terms, const char* what) {
    EXPECT_LE(worst_error(as_doubles(got), as_doubles(want), std::sqrt(terms)), 2 * error_bound<T>(terms)) << what;
  };
  near(y, y_ref, static_cast<double>(I), "y");
  near(xa.grad(), xb.grad(), static_cast<double>(2 * I), "dx");
  near(wia.grad(), wib.grad(), static_cast<double>(std::max<std::int64_t>(R, 1)), "dw_in");
  near(woa.grad(), wob.grad(), static_cast<double>(std::max<std::int64_t>(R, 1)), "dw_out");
}

TEST(GroupedGemmCuda, SwigluEpiloguesEqualTheComposedOps) {
  KILN_REQUIRE_GPU();
  const std::vector<std::int64_t> odd{0, 1, 127, 129, 1000};
  check_swiglu_epilogues<bf16>(odd, 64, 8);
  check_swiglu_epilogues<bf16>(odd, 136, 40);    // I 40: partial 64- and 128-column halves
  check_swiglu_epilogues<bf16>(odd, 96, 200);
  check_swiglu_epilogues<fp16>({3, 0, 257}, 72, 72);
  check_swiglu_epilogues<bf16>({1000, 3000, 0, 2000}, 768, 512);  // kiln's big config's experts
  check_swiglu_epilogues<bf16>({130, 0, 1}, 1024, 512);
}

TEST(GroupedGemmCuda, RejectsWhatItCannotRun) {
  KILN_REQUIRE_GPU();
  const Tensor<std::int64_t> off = on_gpu(Tensor<std::int64_t>::from_vector({0, 3, 5}, {3}));
  EXPECT_THROW(grouped_linear(on_gpu(randn<float>({5, 16})), on_gpu(randn<float>({2, 8, 16})), off), Error);  // float
  EXPECT_THROW(grouped_linear(on_gpu(randn<bf16>({5, 12})), on_gpu(randn<bf16>({2, 8, 12})), off), Error);    // K 12
  EXPECT_THROW(grouped_linear(on_gpu(randn<bf16>({5, 16})), on_gpu(randn<bf16>({2, 8, 16})),
                              Tensor<std::int64_t>::from_vector({0, 3, 5}, {3})),
               Error);  // offsets on the host
}
