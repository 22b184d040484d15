// rope on CUDA (kernels/rope/) against the CPU op: forward and backward, every floating dtype,
// odd and large shapes, positions shared or per batch row, non-contiguous and misaligned inputs,
// tables built on the device, and the GPU-specific behaviours (NaN tables for negative positions,
// device mismatches).
#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class T>
const char* name() {
  return dtype_name<T>;
}

}  // namespace

namespace {

template <class T>
double rope_tolerance() {
  // Same tables, same arithmetic (products rounded separately): differences only where the GPU's
  // double cos/sin round to a different float than the CPU's, which is rare.
  if constexpr (std::is_same_v<T, double>) return 1e-13;
  if constexpr (std::is_same_v<T, float>) return 1e-6;
  return 1e-2;
}

template <class T>
void check_rope(const Tensor<T>& x_cpu, const Tensor<T>& x_gpu, const Tensor<std::int64_t>& positions, double theta,
                const std::string& what) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved}) {
    poison_cached_memory();
    const std::string where = what + (layout == RopeLayout::half_split ? " half_split" : " interleaved");
    auto xc = x_cpu.detach().requires_grad_(), xg = x_gpu.detach().requires_grad_();
    const auto yc = rope(xc, positions, theta, layout);
    const auto yg = rope(xg, on_gpu(positions), theta, layout);
    ASSERT_EQ(yg.device(), gpu);
    EXPECT_LE(relative_error(on_cpu(yg), yc), rope_tolerance<T>()) << where << " forward";
    const auto g = randn<T>(x_cpu.shape());
    yc.backward(g);
    yg.backward(on_gpu(g));
    EXPECT_LE(relative_error(on_cpu(xg.grad()), xc.grad()), rope_tolerance<T>()) << where << " backward";
  }
}

template <class T>
void check_rope_shapes() {
  for (std::int64_t D : {2, 6, 16, 64, 128})
    for (std::int64_t H : {1, 3, 16})
      for (std::int64_t S : {1, 7, 33}) {
        const auto [xc, xg] = cpu_and_gpu<T>({2, S, H, D});
        const std::string what = str(name<T>(), " [2, ", S, ", ", H, ", ", D, "]");
        check_rope(xc, xg, randint<std::int64_t>(0, 4096, {S}), 10000.0, what + " positions [S]");
        check_rope(xc, xg, randint<std::int64_t>(0, 100000, {2, S}), 500000.0, what + " positions [B, S]");
      }
  // Large, the benchmark's layout, and no batch dim.
  const auto [xc, xg] = cpu_and_gpu<T>({2, 1024, 32, 128});
  check_rope(xc, xg, arange<std::int64_t>(0, 1024), 10000.0, str(name<T>(), " [2, 1024, 32, 128]"));
  const auto [sc, sg] = cpu_and_gpu<T>({33, 5, 64});
  check_rope(sc, sg, randint<std::int64_t>(0, 4096, {33}), 10000.0, str(name<T>(), " [33, 5, 64]"));
  // Misaligned data takes the scalar path.
  const auto [mc, mg] = cpu_and_gpu<T>({3, 17, 4, 64}, /*misaligned=*/true);
  check_rope(mc, mg, randint<std::int64_t>(0, 4096, {3, 17}), 10000.0, str(name<T>(), " misaligned"));
}

}  // namespace

TEST(RopeCuda, Float32MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_rope_shapes<float>();
}

TEST(RopeCuda, Float64MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_rope_shapes<double>();
}

TEST(RopeCuda, Bf16AndFp16MatchCpu) {
  KILN_REQUIRE_GPU();
  check_rope_shapes<bf16>();
  const auto [xc, xg] = cpu_and_gpu<fp16>({2, 33, 3, 64});
  check_rope(xc, xg, randint<std::int64_t>(0, 4096, {33}), 10000.0, "fp16 [2, 33, 3, 64]");
}

TEST(RopeCuda, NonContiguousInputs) {
  KILN_REQUIRE_GPU();
  // Heads-first data moved to [B, S, H, D] by a transpose, as attention code produces it.
  const auto x = randn<float>({2, 8, 33, 64});
  check_rope(transpose(x, 1, 2), transpose(on_gpu(x), 1, 2), randint<std::int64_t>(0, 4096, {33}), 10000.0,
             "transposed");
  const auto row = randn<double>({1, 5, 1, 16});
  const auto positions = slice(arange<std::int64_t>(0, 20), 0, 0, 20, 4);  // non-contiguous positions
  check_rope(expand(row, {3, 5, 2, 16}), expand(on_gpu(row), {3, 5, 2, 16}), positions, 10000.0, "expanded");
}

// Views the GPU reads in place, rows and heads a fixed stride apart (ops/rope.hpp rope_row_strides):
// the rope part of a projection's output, sliced off its last dim with heads inside (MLA's q_pe)
// or one head (its shared k_pe), aligned for 16-byte vectors or not, heads broadcast (stride 0),
// one row; the CPU rotates contiguous copies.
template <class T>
void check_rope_row_views() {
  const auto positions = randint<std::int64_t>(0, 4096, {7});
  const auto wide = randn<T>({2, 7, 3, 24});  // [B, S, H, 8 + 16]
  check_rope(narrow(wide, -1, 8, 16), narrow(on_gpu(wide), -1, 8, 16), positions, 10000.0,
             str(name<T>(), " heads sliced from wider rows"));
  check_rope(narrow(wide, -1, 1, 16), narrow(on_gpu(wide), -1, 1, 16), positions, 10000.0,
             str(name<T>(), " sliced at an odd offset"));
  const auto latent = randn<T>({2, 7, 40});  // [B, S, 8 + 32]: one shared head
  check_rope(unsqueeze(narrow(latent, -1, 8, 32), 2), unsqueeze(narrow(on_gpu(latent), -1, 8, 32), 2), positions,
             10000.0, str(name<T>(), " one head sliced from the latent"));
  const auto one = randn<T>({2, 7, 1, 16});
  check_rope(expand(one, {2, 7, 3, 16}), expand(on_gpu(one), {2, 7, 3, 16}), positions, 10000.0,
             str(name<T>(), " heads broadcast"));
  const auto single = randn<T>({1, 1, 2, 40});
  check_rope(narrow(single, -1, 8, 32), narrow(on_gpu(single), -1, 8, 32), randint<std::int64_t>(0, 4096, {1}),
             10000.0, str(name<T>(), " one row"));
}

// rope_into: the rotation written into a slice of a larger tensor (MLA decode's q and latent rows),
// the rest untouched, equal to rope's result bit for bit (the same kernel arithmetic).
template <class T>
void check_rope_into() {
  const auto positions = randint<std::int64_t>(0, 4096, {7, 1});  // per row, as a decode step's
  const auto tables = rope_tables<compute_t<T>>(on_gpu(positions), 16);
  const auto wide = on_gpu(randn<T>({7, 1, 3, 24}));
  for (const RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
    for (const std::int64_t at : {8, 3}) {  // 16-byte aligned slice, then not
      SCOPED_TRACE(str(name<T>(), " into column ", at, layout == RopeLayout::half_split ? " half_split" : " interleaved"));
      const auto out = on_gpu(randn<T>({7, 1, 3, 30}));
      const std::vector<T> before = on_cpu(out).to_vector();
      rope_into(narrow(out, -1, at, 16), narrow(wide, -1, 8, 16), tables, layout);
      EXPECT_EQ(on_cpu(narrow(out, -1, at, 16)).to_vector(), on_cpu(rope(narrow(wide, -1, 8, 16), tables, layout)).to_vector());
      const std::vector<T> after = on_cpu(out).to_vector();
      for (std::size_t i = 0; i < after.size(); ++i) {
        const auto j = static_cast<std::int64_t>(i % 30);
        if (j < at || j >= at + 16) {
          ASSERT_EQ(after[i], before[i]) << i;
        }
      }
    }
}

TEST(RopeCuda, IntoSlicesOfALargerTensor) {
  KILN_REQUIRE_GPU();
  check_rope_into<float>();
  check_rope_into<bf16>();
}

TEST(RopeCuda, RowStridedViewsReadInPlace) {
  KILN_REQUIRE_GPU();
  check_rope_row_views<float>();
  check_rope_row_views<bf16>();
  const auto wide = on_gpu(randn<float>({2, 7, 3, 24}));
  const auto view = narrow(wide, -1, 8, 16);
  EXPECT_TRUE(detail::rope_row_strides(view).has_value());
  EXPECT_EQ(detail::rope_row_strides(view)->first, 72);
  EXPECT_EQ(detail::rope_row_strides(view)->second, 24);
  EXPECT_FALSE(detail::rope_row_strides(transpose(on_gpu(randn<float>({2, 8, 33, 64})), 1, 2)).has_value());
}

TEST(RopeCuda, TablesMatchCpuAndFeedRope) {
  KILN_REQUIRE_GPU();
  const auto positions = randint<std::int64_t>(0, 100000, {2, 37});
  const auto tc = rope_tables<double>(positions, 128, 10000.0);
  const auto tg = rope_tables<double>(on_gpu(positions), 128, 10000.0);
  ASSERT_EQ(tg.cos.device(), gpu);
  EXPECT_LE(relative_error(on_cpu(tg.cos), tc.cos), 1e-15);
  EXPECT_LE(relative_error(on_cpu(tg.sin), tc.sin), 1e-15);
  const auto fc = rope_tables<float>(positions, 128, 10000.0);
  const auto fg = rope_tables<float>(on_gpu(positions), 128, 10000.0);
  EXPECT_LE(relative_error(on_cpu(fg.cos), fc.cos), 1e-7);
  EXPECT_LE(relative_error(on_cpu(fg.sin), fc.sin), 1e-7);
  // Tables built once give the same result as positions, for either layout.
  const auto x = on_gpu(randn<float>({2, 37, 4, 128}));
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
    EXPECT_EQ(on_cpu(rope(x, fg, layout)).to_vector(), on_cpu(rope(x, on_gpu(positions), 10000.0, layout)).to_vector());
  // CPU tables moved to the GPU rotate as the CPU does.
  const auto xc = randn<float>({2, 37, 4, 128});
  const RopeTables<float> moved{on_gpu(fc.cos), on_gpu(fc.sin)};
  EXPECT_LE(relative_error(on_cpu(rope(on_gpu(xc), moved)), rope(xc, fc)), 1e-7);
}

// The device does not check positions (that would wait for it): a negative one gives NaN.
TEST(RopeCuda, NegativePositionGivesNan) {
  KILN_REQUIRE_GPU();
  const auto t = rope_tables<float>(on_gpu(tensor<std::int64_t>({3, -1})), 4);
  const auto c = on_cpu(t.cos).to_vector();
  EXPECT_FALSE(std::isnan(c[0]));
  EXPECT_TRUE(std::isnan(c[2]));
  EXPECT_TRUE(std::isnan(c[3]));
}

TEST(RopeCuda, Errors) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR(rope(on_gpu(randn<float>({4, 2, 8})), arange<std::int64_t>(0, 4)), "rope", "cpu", "cuda:0");
  EXPECT_KILN_ERROR(rope(on_gpu(randn<float>({4, 2, 8})), rope_tables<float>(arange<std::int64_t>(0, 4), 8)), "rope",
                    "cpu", "cuda:0");
  EXPECT_KILN_ERROR(rope(on_gpu(randn<float>({4, 2, 8})), on_gpu(arange<std::int64_t>(0, 5))), "rope", "[5]",
                    "[4, 2, 8]");
}
