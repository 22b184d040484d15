// rms_norm on CUDA (kernels/rms_norm/) against the CPU op: forward and backward, every floating
// dtype, odd and large shapes covering each kernel variant (warp per row, block per row with N
// vectors per thread, streamed rows, scalar paths for odd sizes and misaligned data),
// non-contiguous and stride-0 inputs, deterministic dw, and device mismatches.
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

}  // namespace

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

// dw sums per-owner partials in a fixed order: the same bits every run.
TEST(RmsNormCuda, WeightGradientIsDeterministic) {
  KILN_REQUIRE_GPU();
  for (std::int64_t D : {96, 7168}) {
    const auto x = on_gpu(randn<float>({4099, D}));
    const auto g = on_gpu(randn<float>({4099, D}));
    auto run = [&] {
      auto wd = on_gpu(ones<float>({D})).detach().requires_grad_();
      rms_norm(x, wd).backward(g);
      return on_cpu(wd.grad()).to_vector();
    };
    const auto first = run();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(run(), first) << D;
  }
}

TEST(RmsNormCuda, Errors) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR(rms_norm(on_gpu(randn<float>({2, 3})), randn<float>({3})), "rms_norm", "cpu", "cuda:0");
  EXPECT_KILN_ERROR(rms_norm(on_gpu(randn<float>({2, 3})), on_gpu(randn<float>({4}))), "rms_norm", "[4]", "[2, 3]");
}

