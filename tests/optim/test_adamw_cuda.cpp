// The multi-tensor AdamW step and clip_grad_norm on CUDA against the CPU implementations: several
// steps over parameters of odd sizes (chunk edges, misaligned data, many tensors), float, double,
// bf16 and fp16 with and without FP32 master weights; the global norm, the scaling, determinism.
#include "cuda_test_util.hpp"

#include <kiln/optim/clip.hpp>

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class T>
double tolerance() {
  // Both devices evaluate the same double-precision update; only fused multiply-adds on the device
  // can move a result by a rounding step.
  if constexpr (std::is_same_v<T, double>) return 1e-13;
  if constexpr (std::is_same_v<T, float>) return 1e-6;
  return 1e-2;
}

// Parameters on both devices with the same values. Sizes straddle the 4096-element chunks; the
// last one is a contiguous view one element into its allocation (no vector loads possible).
template <class T>
std::pair<std::vector<Tensor<T>>, std::vector<Tensor<T>>> make_params(const std::vector<std::int64_t>& sizes,
                                                                      bool with_misaligned = true) {
  std::vector<Tensor<T>> cpu, dev;
  for (std::int64_t n : sizes) {
    const auto p = randn<T>({n});
    cpu.push_back(p.detach().requires_grad_());
    dev.push_back(on_gpu(p).detach().requires_grad_());
  }
  if (with_misaligned) {
    const auto flat = randn<T>({1004});
    const auto gflat = on_gpu(flat);
    cpu.push_back(reshape(slice(flat, 0, 1, 1004), {59, 17}).detach().requires_grad_());
    dev.push_back(reshape(slice(gflat, 0, 1, 1004), {59, 17}).detach().requires_grad_());
  }
  return {cpu, dev};
}

template <class T>
void check_steps(const std::vector<std::int64_t>& sizes, optim::AdamWOptions options, int steps, const std::string& what) {
  poison_cached_memory();
  auto [pc, pg] = make_params<T>(sizes);
  // One parameter never gets a gradient and must stay as it is.
  const auto idle = randn<T>({5});
  pc.push_back(idle.detach().requires_grad_());
  pg.push_back(on_gpu(idle).detach().requires_grad_());
  optim::AdamW<T> oc(pc, options), og(pg, options);
  for (int step = 0; step < steps; ++step) {
    for (std::size_t i = 0; i + 1 < pc.size(); ++i) {
      const auto g = mul(randn<T>(pc[i].shape()), step % 2 ? 1e-3 : 2.0);
      pc[i].set_grad(g);
      pg[i].set_grad(on_gpu(g));
    }
    oc.step();
    og.step();
    for (std::size_t i = 0; i < pc.size(); ++i)
      EXPECT_LE(relative_error(on_cpu(pg[i]), pc[i]), tolerance<T>()) << what << " param " << i << " step " << step;
    ASSERT_EQ(og.master_weights().size(), oc.master_weights().size());
    for (std::size_t i = 0; i < oc.master_weights().size(); ++i)
      EXPECT_LE(relative_error(on_cpu(og.master_weights()[i]), oc.master_weights()[i]), 1e-6)
          << what << " master " << i << " step " << step;
  }
  EXPECT_EQ(on_cpu(pg.back()).to_vector(), idle.to_vector()) << what;
}

const std::vector<std::int64_t> kSizes = {1, 7, 33, 1003, 4095, 4096, 4097, 3 * 4096 + 5, (1 << 20) + 3};

}  // namespace

TEST(AdamWCuda, Float32MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_steps<float>(kSizes, {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1}, 5, "float");
}

TEST(AdamWCuda, Float64MatchesCpu) {
  KILN_REQUIRE_GPU();
  check_steps<double>(kSizes, {.lr = 1e-2, .weight_decay = 0.05}, 5, "double");
}

TEST(AdamWCuda, LowPrecisionWithAndWithoutMasterWeights) {
  KILN_REQUIRE_GPU();
  for (bool master : {true, false}) {
    optim::AdamWOptions o{.lr = 1e-3, .weight_decay = 0.1};
    o.master_weights = master;
    check_steps<bf16>(kSizes, o, 5, str("bf16 master ", master));
    check_steps<fp16>({7, 4097}, o, 3, str("fp16 master ", master));
  }
}

// Hundreds of tensors in one launch: every block finds its tensor by binary search.
TEST(AdamWCuda, ManyTensorsInOneLaunch) {
  KILN_REQUIRE_GPU();
  std::vector<std::int64_t> sizes;
  const auto r = randint<std::int64_t>(1, 9000, {300}).to_vector();
  for (std::int64_t n : r) sizes.push_back(n);
  check_steps<float>(sizes, {.lr = 1e-2}, 3, "300 tensors");
}

TEST(AdamWCuda, NonContiguousGradient) {
  KILN_REQUIRE_GPU();
  const auto p = randn<float>({33, 17});
  const auto g = randn<float>({17, 33});
  auto pc = p.detach().requires_grad_(), pg = on_gpu(p).detach().requires_grad_();
  pc.set_grad(transpose(g, 0, 1));
  pg.set_grad(transpose(on_gpu(g), 0, 1));
  optim::AdamW<float> oc({pc}), og({pg});
  oc.step();
  og.step();
  EXPECT_LE(relative_error(on_cpu(pg), pc), 1e-6);
}

TEST(AdamWCuda, Errors) {
  KILN_REQUIRE_GPU();
  auto a = randn<float>({3}).requires_grad_();
  auto b = on_gpu(randn<float>({3})).detach().requires_grad_();
  EXPECT_KILN_ERROR(optim::AdamW<float>({a, b}), "AdamW", "cpu", "cuda:0");
  b.set_grad(randn<float>({3}));  // a gradient on the wrong device
  optim::AdamW<float> opt({b});
  EXPECT_KILN_ERROR(opt.step(), "AdamW", "cpu", "cuda:0");
}

// ---- clip_grad_norm ----

namespace {

template <class T>
void check_clip(const std::vector<std::int64_t>& sizes, double grad_scale) {
  poison_cached_memory();
  auto [pc, pg] = make_params<T>(sizes);
  for (std::size_t i = 0; i < pc.size(); ++i) {
    const auto g = mul(randn<T>(pc[i].shape()), grad_scale);
    pc[i].set_grad(g);
    pg[i].set_grad(on_gpu(g));
  }
  const double norm_cpu = optim::clip_grad_norm(pc, 1.0);
  const double norm_gpu = optim::clip_grad_norm(pg, 1.0);
  EXPECT_NEAR(norm_gpu, norm_cpu, 1e-12 * norm_cpu) << dtype_name<T>;
  for (std::size_t i = 0; i < pc.size(); ++i)
    EXPECT_LE(relative_error(on_cpu(pg[i].grad()), pc[i].grad()), tolerance<T>()) << dtype_name<T> << " grad " << i;
}

}  // namespace

TEST(ClipGradNormCuda, MatchesCpu) {
  KILN_REQUIRE_GPU();
  for (double grad_scale : {1e-4, 10.0}) {  // below and above max_norm = 1
    check_clip<float>(kSizes, grad_scale);
    check_clip<double>(kSizes, grad_scale);
    check_clip<bf16>(kSizes, grad_scale);
  }
}

// The chunk layout depends only on the sizes: the same norm, to the bit, every run.
TEST(ClipGradNormCuda, Deterministic) {
  KILN_REQUIRE_GPU();
  auto params = make_params<float>(kSizes);
  std::vector<Tensor<float>>& pg = params.second;
  std::vector<Tensor<float>> grads;
  for (const auto& p : pg) grads.push_back(on_gpu(randn<float>(p.shape())));
  auto run = [&] {
    for (std::size_t i = 0; i < pg.size(); ++i) pg[i].set_grad(clone(grads[i]));
    return optim::clip_grad_norm(pg, 1e30);
  };
  const double first = run();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(run(), first);
  // No gradients at all.
  EXPECT_EQ(optim::clip_grad_norm(std::vector<Tensor<float>>{on_gpu(zeros<float>({3})).requires_grad_()}, 1.0), 0.0);
}
