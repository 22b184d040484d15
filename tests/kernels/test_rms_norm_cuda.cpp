// rms_norm on CUDA (kernels/rms_norm/) against the CPU op: forward and backward, every floating
// dtype, odd and large shapes covering each kernel variant (warp per row, block per row with N
// vectors per thread, streamed rows, scalar paths for odd sizes and misaligned data),
// non-contiguous and stride-0 inputs, deterministic dw, and device mismatches. The fused backward
// kernel (dx and dw from one pass) is also called directly and checked against a float64
// reference computed here, with the same bits from run to run and with or without dx; and through
// a residual x + rms_norm(x), whose dx folds in the add's gradient.
#include <cmath>
#include <cstring>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  return 1e-2;
}

template <class T>
const char* name() {
  return dtype_name<T>;
}

// Forward and backward of rms_norm on both devices; x and w are given on both (same values).
template <class T>
void check_rms_norm(const Tensor<T>& x_cpu, const Tensor<T>& x_gpu, const Tensor<T>& w_cpu, const Tensor<T>& w_gpu,
                    double eps, const std::string& what) {
  poison_cached_memory();
  const double tol = tolerance<T>();
  auto xc = x_cpu.detach().requires_grad_(), xg = x_gpu.detach().requires_grad_();
  Tensor<T> wc, wg;
  if (w_cpu.defined()) {
    wc = w_cpu.detach().requires_grad_();
    wg = w_gpu.detach().requires_grad_();
  }
  const auto yc = rms_norm(xc, wc, eps);
  const auto yg = rms_norm(xg, wg, eps);
  ASSERT_EQ(yg.device(), gpu);
  EXPECT_LE(relative_error(on_cpu(yg), yc), tol) << what << " forward";
  const auto g = randn<T>(x_cpu.shape());
  yc.backward(g);
  yg.backward(on_gpu(g));
  EXPECT_LE(relative_error(on_cpu(xg.grad()), xc.grad()), tol) << what << " dx";
  if (w_cpu.defined()) {
    EXPECT_LE(relative_error(on_cpu(wg.grad()), wc.grad()), tol) << what << " dw";
  }
  // The residual form x + rms_norm(x): x's gradient from the add arrives first and the backward
  // kernel adds it into dx as it writes it (autograd's InputGrads::received, RmsNormBackwardArgs::dx_add).
  auto xc2 = x_cpu.detach().requires_grad_(), xg2 = x_gpu.detach().requires_grad_();
  add(xc2, rms_norm(xc2, w_cpu, eps)).backward(g);
  add(xg2, rms_norm(xg2, w_gpu, eps)).backward(on_gpu(g));
  EXPECT_LE(relative_error(on_cpu(xg2.grad()), xc2.grad()), tol) << what << " dx with a gradient folded in";
}

template <class T>
void check_rms_norm_shape(std::int64_t rows, std::int64_t D, bool misaligned = false) {
  for (bool with_weight : {true, false}) {
    const auto [xc, xg] = cpu_and_gpu<T>({rows, D}, misaligned);
    Tensor<T> wc, wg;
    if (with_weight) std::tie(wc, wg) = cpu_and_gpu<T>({D});
    // At D = 1, dx = r g w (1 - xhat^2) with 1 - xhat^2 = eps / (x^2 + eps): with eps = 1e-6 both
    // devices subtract two numbers equal to ~6 digits, so their (correct) roundings differ by up to
    // 1e5 x machine epsilon. A well-conditioned eps keeps the comparison meaningful.
    check_rms_norm(xc, xg, wc, wg, D == 1 ? 1.0 : 1e-6,
                   str(name<T>(), " [", rows, ", ", D, "] weight ", with_weight, " misaligned ", misaligned));
  }
}

template <class T>
void check_rms_norm_shapes() {
  // Row lengths that pick each kernel variant (warp per row for short rows, block per row, streamed
  // rows above 16384 elements, scalar loads when D is not a multiple of 16 bytes).
  for (std::int64_t D : {1, 7, 33, 64, 128, 256, 512, 1003, 1024, 4096})
    for (std::int64_t rows : {1, 7, 1001}) check_rms_norm_shape<T>(rows, D);
  check_rms_norm_shape<T>(10000, 33);
  check_rms_norm_shape<T>(10000, 4096);
  check_rms_norm_shape<T>(37, 12288);
  check_rms_norm_shape<T>(37, 16384);
  check_rms_norm_shape<T>(9, 20000);
  check_rms_norm_shape<T>(9, 20001);
  check_rms_norm_shape<T>(65, 1024, /*misaligned=*/true);
  check_rms_norm_shape<T>(65, 4096, /*misaligned=*/true);
}

// ---- the fused backward kernel, called directly ----

// The bytes of a tensor's elements, for bit-for-bit comparisons (== on values would count -0 and +0
// as equal, and a NaN as different from itself).
template <class T>
std::vector<std::uint8_t> bits_of(const Tensor<T>& t) {
  const std::vector<T> values = on_cpu(t).to_vector();
  std::vector<std::uint8_t> bytes(values.size() * sizeof(T));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// r = 1 / sqrt(mean(x^2) + eps) per row in float64: what the forward saves for the backward.
template <class T>
std::vector<double> rstd_reference(const std::vector<T>& x, std::int64_t rows, std::int64_t D, double eps) {
  std::vector<double> rstd(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    double squares = 0.0;
    for (std::int64_t j = 0; j < D; ++j) {
      const double v = static_cast<double>(x[static_cast<std::size_t>(r * D + j)]);
      squares += v * v;
    }
    rstd[static_cast<std::size_t>(r)] = 1.0 / std::sqrt(squares / static_cast<double>(D) + eps);
  }
  return rstd;
}

// dx and dw in float64 from the same T inputs and the same r that the kernel gets:
// dx = r * (g w - xhat * mean(g w xhat)) per row, dw = sum over rows of g * xhat, xhat = x r.
template <class T>
std::pair<std::vector<double>, std::vector<double>> backward_reference(const std::vector<T>& x, const std::vector<T>& w,
                                                                       const std::vector<T>& g,
                                                                       const std::vector<double>& rstd,
                                                                       std::int64_t rows, std::int64_t D) {
  std::vector<double> dx(static_cast<std::size_t>(rows * D)), dw(static_cast<std::size_t>(D), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t row = static_cast<std::size_t>(r * D);
    const double rs = rstd[static_cast<std::size_t>(r)];
    double dot = 0.0;
    for (std::size_t j = 0; j < static_cast<std::size_t>(D); ++j)
      dot += static_cast<double>(g[row + j]) * static_cast<double>(w[j]) * static_cast<double>(x[row + j]) * rs;
    const double mean = dot / static_cast<double>(D);
    for (std::size_t j = 0; j < static_cast<std::size_t>(D); ++j) {
      const double xhat = static_cast<double>(x[row + j]) * rs;
      dx[row + j] = rs * (static_cast<double>(g[row + j]) * static_cast<double>(w[j]) - xhat * mean);
      dw[j] += static_cast<double>(g[row + j]) * xhat;
    }
  }
  return {dx, dw};
}

// GPU operands of one backward call, and the CPU values they hold.
template <class T>
struct BackwardCase {
  std::int64_t rows = 0, D = 0;
  Tensor<T> x, w, g;      // on the GPU (x and g start one element into their allocation when misaligned)
  Tensor<double> rstd;    // on the GPU
  std::vector<T> x_host, w_host, g_host;
  std::vector<double> rstd_host;
};

template <class T>
BackwardCase<T> backward_case(std::int64_t rows, std::int64_t D, bool misaligned) {
  BackwardCase<T> c;
  c.rows = rows;
  c.D = D;
  Tensor<T> x_cpu, g_cpu, w_cpu;
  std::tie(x_cpu, c.x) = cpu_and_gpu<T>({rows, D}, misaligned);
  std::tie(g_cpu, c.g) = cpu_and_gpu<T>({rows, D}, misaligned);
  std::tie(w_cpu, c.w) = cpu_and_gpu<T>({D});
  c.x_host = x_cpu.to_vector();
  c.g_host = g_cpu.to_vector();
  c.w_host = w_cpu.to_vector();
  c.rstd_host = rstd_reference(c.x_host, rows, D, 1e-6);
  c.rstd = on_gpu(Tensor<double>::from_vector(c.rstd_host, {rows}));
  return c;
}

// One call of the backward kernel on fresh (poisoned) outputs: dx and/or dw, each on the GPU or
// undefined when not asked for.
template <class T>
std::pair<Tensor<T>, Tensor<T>> run_backward(const BackwardCase<T>& c, bool want_dx, bool want_dw) {
  poison_cached_memory();  // dx, dw and the kernel's partials start as NaN bytes
  Tensor<T> dx, dw;
  if (want_dx) dx = Tensor<T>({c.rows, c.D}, gpu);
  if (want_dw) dw = Tensor<T>({c.D}, gpu);
  launch_device_kernel("rms_norm backward test",
                       kernels::RmsNormBackwardArgs{.launch = launch_on("rms_norm backward test", gpu),
                                                    .dtype = dtype_of<T>,
                                                    .dx = want_dx ? dx.data() : nullptr,
                                                    .dw = want_dw ? dw.data() : nullptr,
                                                    .x = c.x.data(),
                                                    .w = c.w.data(),
                                                    .g = c.g.data(),
                                                    .rstd = c.rstd.data(),
                                                    .rows = c.rows,
                                                    .cols = static_cast<int>(c.D)});
  return {dx, dw};
}

// dx and dw of the fused kernel against float64 within tolerance<T>(); dw with the same bits on a
// second call and on a call that asks for dw alone (the grid, and so the order of the sums, depends
// only on the shape); dx with the same bits on the second call.
template <class T>
void check_fused_backward(std::int64_t rows, std::int64_t D, bool misaligned = false) {
  const std::string what = str(name<T>(), " [", rows, ", ", D, "] misaligned ", misaligned);
  const BackwardCase<T> c = backward_case<T>(rows, D, misaligned);
  const auto [dx_want, dw_want] = backward_reference(c.x_host, c.w_host, c.g_host, c.rstd_host, rows, D);
  const auto [dx, dw] = run_backward(c, true, true);
  EXPECT_LE(relative_error(on_cpu(dx).to_vector(), dx_want), tolerance<T>()) << what << " dx";
  EXPECT_LE(relative_error(on_cpu(dw).to_vector(), dw_want), tolerance<T>()) << what << " dw";
  const auto dx_bits = bits_of(dx), dw_bits = bits_of(dw);
  const auto [dx_again, dw_again] = run_backward(c, true, true);
  EXPECT_EQ(bits_of(dx_again), dx_bits) << what << " dx differs between two runs";
  EXPECT_EQ(bits_of(dw_again), dw_bits) << what << " dw differs between two runs";
  const Tensor<T> dw_alone = run_backward(c, false, true).second;
  EXPECT_EQ(bits_of(dw_alone), dw_bits) << what << " dw alone differs from dw with dx";
}

// Rows from 1 to past the grid's cap (16384 rows for the warp-per-row kernels, 2048 for the
// block-per-row ones: beyond, blocks take unequal numbers of rows). Hidden sizes that pick each
// variant: 33 (not a multiple of the vector width: one element a "vector", one warp a row); 256,
// 384, 768 (bf16: one warp a row with N = 1, 2, 4 vectors a thread; float: N = 2, 4, then one block
// a row); 1003 (scalar, one block a row, streamed); 7168 (one block a row, vectors in registers);
// 20000 (vectors, streamed: the partials row in global memory is the accumulator).
template <class T>
void check_fused_backward_shapes() {
  for (std::int64_t D : {33, 256, 384, 768, 1003, 7168})
    for (std::int64_t rows : {1, 7, 129, 1031}) check_fused_backward<T>(rows, D);
  check_fused_backward<T>(20000, 768);
  check_fused_backward<T>(3001, 7168);
  check_fused_backward<T>(9, 20000);
  check_fused_backward<T>(1031, 33, /*misaligned=*/true);
  check_fused_backward<T>(129, 768, /*misaligned=*/true);
}

}  // namespace

// Forward without a backward reads rows a fixed stride apart in place (MLA decode's latent slice),
// and rms_norm_into writes into a slice of a larger tensor, leaving the rest of it alone: against
// the CPU op on contiguous copies; aligned and misaligned slices, warp-per-row and block-per-row.
template <class T>
void check_rms_norm_row_views() {
  for (const auto& [rows, D, off] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
           {7, 256, 0}, {128, 256, 32}, {5, 40, 8}, {3, 33, 1}, {9, 2048, 16}}) {
    SCOPED_TRACE(str(name<T>(), " rows ", rows, " D ", D, " at column ", off));
    const Tensor<T> wide = cast<T>(randn<float>({rows, 1, off + D + 8}));
    const Tensor<T> w = cast<T>(rand<float>({D}, 0.5, 1.5));
    const Tensor<T> ref = rms_norm(contiguous(narrow(wide, -1, off, D)), w, 1e-6);
    {
      NoGradGuard no_grad;
      const Tensor<T> got = rms_norm(narrow(on_gpu(wide), -1, off, D), on_gpu(w), 1e-6);
      EXPECT_LE(relative_error(on_cpu(got), ref), tolerance<T>());
    }
    const Tensor<T> into = on_gpu(cast<T>(randn<float>({rows, 1, D + 24})));
    const std::vector<T> before = on_cpu(into).to_vector();
    rms_norm_into(narrow(into, -1, 16, D), narrow(on_gpu(wide), -1, off, D), on_gpu(w), 1e-6);
    EXPECT_LE(relative_error(on_cpu(narrow(into, -1, 16, D)), ref), tolerance<T>());
    const std::vector<T> after = on_cpu(into).to_vector();
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < D + 24; ++j) {
        if (j < 16 || j >= 16 + D) {
          ASSERT_EQ(after[r * (D + 24) + j], before[r * (D + 24) + j]) << r << ", " << j;
        }
      }
  }
}

TEST(RmsNormCuda, RowStridedViewsAndInto) {
  KILN_REQUIRE_GPU();
  check_rms_norm_row_views<float>();
  check_rms_norm_row_views<bf16>();
  EXPECT_KILN_ERROR(rms_norm_into(on_gpu(zeros<float>({3, 5})), on_gpu(zeros<float>({3, 4}))), "rms_norm", "[3, 5]",
                    "[3, 4]");
}

// With a backward too, a GPU reads a slice of wider rows in place and writes its dx where the slice
// lay (ops/rms_norm.hpp, gradient_where_rows_lay): MLA's q_a and latent, column ranges of one
// projection's output. wide = [left | x | right]; z = [left | rms_norm(x, w) | right] and
// z.backward(G), so that wide's gradient is settled from the three parts (autograd/node.hpp); y,
// wide's gradient and dw against the CPU op. Slices at aligned and misaligned columns, warp- and
// block-per-row rows, a slice at column 0, and x's gradient folded into one received before (x
// used twice: dx contiguous then).
template <class T>
void check_rms_norm_slices_with_backward() {
  for (const auto& [rows, D, off] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
           {7, 256, 0}, {128, 256, 384}, {5, 40, 8}, {3, 33, 1}, {9, 2048, 16}, {1001, 384, 0}, {65, 4096, 24}}) {
    for (const bool twice : {false, true}) {
      SCOPED_TRACE(str(name<T>(), " rows ", rows, " D ", D, " at column ", off, twice ? ", x used twice" : ""));
      const Tensor<T> wide = cast<T>(randn<float>({rows, off + D + 8}));
      const Tensor<T> w = cast<T>(rand<float>({D}, 0.5, 1.5));
      const Tensor<T> G = cast<T>(randn<float>({rows, off + D + 8}));
      struct Result {
        Tensor<T> z, dwide, dw;
      };
      const auto run = [&](Device device) {
        poison_cached_memory();
        const Tensor<T> leaf = to(wide, device).detach().requires_grad_();
        const Tensor<T> wl = to(w, device).detach().requires_grad_();
        const Tensor<T> x = narrow(leaf, -1, off, D);
        Tensor<T> y = rms_norm(x, wl, 1e-6);
        if (twice) y = add(y, x);  // x's gradient from the add arrives first: folded into dx
        std::vector<Tensor<T>> parts;
        if (off > 0) parts.push_back(narrow(leaf, -1, 0, off));
        parts.push_back(y);
        parts.push_back(narrow(leaf, -1, off + D, 8));
        const Tensor<T> z = cat(parts, -1);
        z.backward(to(G, device));
        return Result{on_cpu(z), on_cpu(leaf.grad()), on_cpu(wl.grad())};
      };
      const Result want = run(Device::cpu()), got = run(gpu);
      EXPECT_LE(relative_error(got.z, want.z), tolerance<T>()) << "forward";
      EXPECT_LE(relative_error(got.dwide, want.dwide), tolerance<T>()) << "the wide tensor's gradient";
      EXPECT_LE(relative_error(got.dw, want.dw), tolerance<T>()) << "dw";
    }
  }
}

TEST(RmsNormCuda, SlicesOfWiderRowsWithBackward) {
  KILN_REQUIRE_GPU();
  check_rms_norm_slices_with_backward<float>();
  check_rms_norm_slices_with_backward<bf16>();
}

TEST(RmsNormCuda, FusedBackwardFloat32MatchesFloat64) {
  KILN_REQUIRE_GPU();
  check_fused_backward_shapes<float>();
}

TEST(RmsNormCuda, FusedBackwardBf16MatchesFloat64) {
  KILN_REQUIRE_GPU();
  check_fused_backward_shapes<bf16>();
}

// The double (float64 sums) and fp16 instances of the fused kernel at a few shapes.
TEST(RmsNormCuda, FusedBackwardFloat64AndFp16MatchFloat64) {
  KILN_REQUIRE_GPU();
  for (std::int64_t D : {33, 768, 7168}) {
    check_fused_backward<double>(1031, D);
    check_fused_backward<fp16>(1031, D);
  }
  check_fused_backward<double>(7, 20000);
}

TEST(RmsNormCuda, Float32MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_rms_norm_shapes<float>();
}

TEST(RmsNormCuda, Float64MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_rms_norm_shapes<double>();
}

TEST(RmsNormCuda, Bf16MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_rms_norm_shapes<bf16>();
  // Large eps and a leading batch dim.
  const auto x = randn<bf16>({3, 5, 7168});
  const auto w = randn<bf16>({7168});
  check_rms_norm(x, on_gpu(x), w, on_gpu(w), 0.5, "bf16 [3, 5, 7168] eps 0.5");
}

TEST(RmsNormCuda, Fp16MatchesCpu) {
  KILN_REQUIRE_GPU();
  for (std::int64_t D : {7, 512, 4096}) check_rms_norm_shape<fp16>(129, D);
}

TEST(RmsNormCuda, NonContiguousAndBroadcastInputs) {
  KILN_REQUIRE_GPU();
  for (std::int64_t D : {7, 33, 1024}) {
    const auto xt = randn<float>({D, 40});  // transposed: rows strided
    const auto w = randn<float>({2 * D});   // every other element
    check_rms_norm(transpose(xt, 0, 1), transpose(on_gpu(xt), 0, 1), slice(w, 0, 0, 2 * D, 2),
                   slice(on_gpu(w), 0, 0, 2 * D, 2), 1e-6, str("transposed x, strided w, D ", D));
    const auto row = randn<double>({1, D});  // stride-0 rows
    check_rms_norm(expand(row, {6, D}), expand(on_gpu(row), {6, D}), Tensor<double>(), Tensor<double>(), 1e-6,
                   str("expanded x, D ", D));
  }
}

TEST(RmsNormCuda, GradientsOnlyWhereAskedAndEmptyInput) {
  KILN_REQUIRE_GPU();
  const auto x = randn<float>({300, 129});
  const auto w = randn<float>({129});
  const auto g = randn<float>({300, 129});
  // dx only.
  auto xc = x.detach().requires_grad_(), xg = on_gpu(x).detach().requires_grad_();
  rms_norm(xc, w).backward(g);
  rms_norm(xg, on_gpu(w)).backward(on_gpu(g));
  EXPECT_LE(relative_error(on_cpu(xg.grad()), xc.grad()), 1e-5);
  // dw only.
  auto wc = w.detach().requires_grad_(), wg = on_gpu(w).detach().requires_grad_();
  rms_norm(x, wc).backward(g);
  rms_norm(on_gpu(x), wg).backward(on_gpu(g));
  EXPECT_LE(relative_error(on_cpu(wg.grad()), wc.grad()), 1e-5);
  // No rows: an empty output and a zero dw.
  poison_cached_memory();
  auto we = on_gpu(w).detach().requires_grad_();
  const auto ye = rms_norm(zeros<float>({0, 129}, gpu), we);
  EXPECT_EQ(ye.shape(), (Shape{0, 129}));
  ye.backward(zeros<float>({0, 129}, gpu));
  EXPECT_EQ(on_cpu(we.grad()).to_vector(), std::vector<float>(129, 0.0f));
}

// dw sums per-block partials in a fixed order: the same bits every run, through the op and autograd.
template <class T>
void check_weight_gradient_deterministic() {
  for (std::int64_t D : {33, 96, 768, 7168}) {
    const auto x = on_gpu(randn<T>({4099, D}));
    const auto g = on_gpu(randn<T>({4099, D}));
    auto run = [&] {
      poison_cached_memory();
      auto wd = on_gpu(ones<T>({D})).detach().requires_grad_();
      rms_norm(x, wd).backward(g);
      return bits_of(wd.grad());
    };
    const auto first = run();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(run(), first) << name<T>() << " D " << D;
  }
}

TEST(RmsNormCuda, WeightGradientIsDeterministic) {
  KILN_REQUIRE_GPU();
  check_weight_gradient_deterministic<float>();
  check_weight_gradient_deterministic<bf16>();
}

TEST(RmsNormCuda, Errors) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR(rms_norm(on_gpu(randn<float>({2, 3})), randn<float>({3})), "rms_norm", "cpu", "cuda:0");
  EXPECT_KILN_ERROR(rms_norm(on_gpu(randn<float>({2, 3})), on_gpu(randn<float>({4}))), "rms_norm", "[4]", "[2, 3]");
}

