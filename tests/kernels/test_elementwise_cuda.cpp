// Elementwise ops on CUDA against the CPU, which is the reference: unary ops and their backward,
// swiglu, comparisons and logical ops, where / masked_fill, cat / stack, the backward pieces of
// pow, maximum / minimum and slice, and the generic map kernel's three paths (contiguous,
// rows with broadcast operands, strided). Odd shapes (1, 7, 33, 1003, 4096 x 4099), transposed,
// sliced, expanded and permuted operands, float / double / bf16 (and int64 / bool where the op
// takes them), NaN positions. Each test first poisons the allocator's cached blocks, so an
// output element a kernel leaves unwritten reads as NaN (or true) instead of a stale value.
// Compiled by g++ and linked with the nvcc-built backend.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

// Relative Frobenius error against the CPU (DESIGN.md): fp32 <= 1e-5, bf16 <= 1e-2; double gets
// rounding-level agreement (the two sides' libm functions differ by an ulp or so).
template <class T>
constexpr double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else return 1e-2;
}

// Calls f(T{}) for each listed type.
template <class... Ts, class F>
void for_types(F f) {
  (f(Ts{}), ...);
}

// How an operand is laid out: the view applied to a fresh base tensor, on each device alike (a
// view moved with to() would arrive contiguous).
enum class View { none, transposed, step_slice, narrow_aligned, narrow_unaligned, expanded, permuted };

template <class T>
Tensor<T> apply_view(View v, const Tensor<T>& t) {
  switch (v) {
    case View::none: return t;
    case View::transposed: return transpose(t, 0, 1);
    case View::step_slice: return slice(t, 1, 1, t.size(1) - 1, 2);
    case View::narrow_aligned: return narrow(t, 1, 8, t.size(1) - 16);  // rows start 8 elements in
    case View::narrow_unaligned: return narrow(t, 1, 1, t.size(1) - 2);
    case View::expanded: return expand(t, {9, t.size(1)});  // base [1, C]: stride 0 over the 9 rows
    case View::permuted: return permute(t, {2, 0, 1});
  }
  return t;
}

struct Layout {
  std::string name;
  Shape base;
  View view;
};

std::vector<Layout> layouts(bool large) {
  std::vector<Layout> l = {
      {"scalar", {}, View::none},
      {"[1]", {1}, View::none},
      {"[7]", {7}, View::none},
      {"[33]", {33}, View::none},
      {"[1003]", {1003}, View::none},
      {"[3, 1, 17]", {3, 1, 17}, View::none},
      {"[0, 5]", {0, 5}, View::none},
      {"transposed [65, 33]", {65, 33}, View::transposed},
      {"step-2 slice", {6, 42}, View::step_slice},
      {"narrow, aligned rows", {8, 80}, View::narrow_aligned},
      {"narrow, unaligned rows", {8, 80}, View::narrow_unaligned},
      {"expanded [1, 67]", {1, 67}, View::expanded},
      {"expanded [1, 64]", {1, 64}, View::expanded},
      {"permuted [4, 5, 6]", {4, 5, 6}, View::permuted},
  };
  if (large) l.push_back({"[4096, 4099]", {4096, 4099}, View::none});
  return l;
}

// Uniform on [lo, hi) in T, with NaN at every 13th element (from element 5) when asked.
template <class T>
Tensor<T> random(const Shape& shape, double lo, double hi, bool nans = false) {
  std::vector<T> v = rand<T>(shape, lo, hi).to_vector();
  if (nans)
    for (std::size_t i = 5; i < v.size(); i += 13) v[i] = convert<T>(nan_v);
  return tensor<T>(v, shape);
}

// NaN at every 13th element (from element 5) of a floating tensor; other types unchanged.
template <class T>
Tensor<T> with_nans_if_floating(const Tensor<T>& t) {
  if constexpr (!is_floating<T>) {
    return t;
  } else {
    std::vector<T> v = t.to_vector();
    for (std::size_t i = 5; i < v.size(); i += 13) v[i] = convert<T>(nan_v);
    return tensor<T>(v, t.shape());
  }
}

// t in type T; for bool, whether t < 0 (about half true).
template <class T>
Tensor<T> cast_to(const Tensor<double>& t) {
  if constexpr (std::is_same_v<T, bool>) return lt(t, 0.0);
  else return cast<T>(t);
}

// Each element rounded down: small integers make ties common, so eq / le / ge see equal pairs.
Tensor<double> floor_values(const Tensor<double>& t) {
  std::vector<double> v = t.to_vector();
  for (double& e : v) e = std::floor(e);
  return tensor<double>(v, t.shape());
}

// The same operand on both devices: `cpu` on the host and `gpu` on cuda:0, the same view of the
// same values.
template <class T>
struct Pair {
  Tensor<T> cpu, gpu;
};

template <class T>
Pair<T> pair_of(const Layout& l, double lo, double hi, bool nans = false) {
  const Tensor<T> base = random<T>(l.base, lo, hi, nans);
  return {apply_view(l.view, base), apply_view(l.view, on_gpu(base))};
}

template <class T>
Pair<T> pair_of(const Tensor<T>& cpu_value) {
  return {cpu_value, on_gpu(cpu_value)};
}

// A leaf that requires grad on each device, with the same values and layout.
template <class T>
Pair<T> leaves(const Pair<T>& p) {
  return {p.cpu.detach().requires_grad_(), p.gpu.detach().requires_grad_()};
}

void expect_same_bools(const Tensor<bool>& from_gpu, const Tensor<bool>& from_cpu) {
  EXPECT_EQ(from_gpu.device(), gpu);
  ASSERT_EQ(from_gpu.shape(), from_cpu.shape());
  const std::vector<bool> g = from_gpu.to_vector(), c = from_cpu.to_vector();
  // Compare the bytes the kernel wrote, not just their truth: a bool byte other than 0 or 1 is
  // poison the kernel never overwrote.
  const std::vector<std::uint8_t> bytes =
      Tensor<std::uint8_t>::view_of(from_gpu.storage(), from_gpu.offset(), from_gpu.shape(), from_gpu.strides()).to_vector();
  for (std::size_t i = 0; i < bytes.size(); ++i) ASSERT_LE(bytes[i], 1) << "element " << i << " unwritten";
  EXPECT_EQ(g, c);
}

template <class T>
void expect_match(const Tensor<T>& from_gpu, const Tensor<T>& from_cpu, double tol) {
  ASSERT_TRUE(from_gpu.defined());
  ASSERT_TRUE(from_cpu.defined());
  if constexpr (std::is_same_v<T, bool>) {
    expect_same_bools(from_gpu, from_cpu);
  } else {
    EXPECT_EQ(from_gpu.device(), gpu);
    ASSERT_EQ(from_gpu.shape(), from_cpu.shape());
    EXPECT_LE(relative_error(from_gpu, from_cpu), tol);
  }
}

// ---- the ops under test, by name, so one loop covers them all ----

struct UnaryCase {
  const char* name;
  double lo, hi;  // input range (log/sqrt/rsqrt reach below 0: NaN outputs are compared too)
};

const std::vector<UnaryCase> unary_cases = {
    {"neg", -3, 3},      {"exp", -5, 5},         {"log", -1, 10},   {"sqrt", -1, 10},     {"rsqrt", -1, 10},
    {"abs", -3, 3},      {"square", -3, 3},      {"tanh", -4, 4},   {"sigmoid", -8, 8},   {"relu", -3, 3},
    {"silu", -8, 8},     {"gelu", -5, 5},        {"gelu_tanh", -5, 5}, {"clamp", -2, 2},  {"clamp_min", -2, 2},
    {"clamp_max", -2, 2},
};

template <class T>
Tensor<T> run_unary(const std::string& name, const Tensor<T>& x) {
  if (name == "neg") return -x;
  if (name == "exp") return kiln::exp(x);
  if (name == "log") return kiln::log(x);
  if (name == "sqrt") return kiln::sqrt(x);
  if (name == "rsqrt") return rsqrt(x);
  if (name == "abs") return kiln::abs(x);
  if (name == "square") return square(x);
  if (name == "tanh") return kiln::tanh(x);
  if (name == "sigmoid") return sigmoid(x);
  if (name == "relu") return relu(x);
  if (name == "silu") return silu(x);
  if (name == "gelu") return gelu(x);
  if (name == "gelu_tanh") return gelu(x, GeluApprox::tanh);
  if (name == "clamp") return clamp(x, -0.5, 0.75);
  if (name == "clamp_min") return clamp_min(x, 0.25);
  if (name == "clamp_max") return clamp_max(x, -0.25);
  ADD_FAILURE() << "unknown op " << name;
  return x;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Unary ops

TEST(ElementwiseCuda, UnaryForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    for (const Layout& l : layouts(!std::is_same_v<T, double>)) {
      for (const UnaryCase& c : unary_cases) {
        SCOPED_TRACE(std::string(c.name) + " " + dtype_name<T> + " " + l.name);
        poison_cached_memory();
        const Pair<T> x = pair_of<T>(l, c.lo, c.hi, /*nans=*/true);
        const Tensor<T> y = run_unary(c.name, x.gpu);
        EXPECT_TRUE(y.is_contiguous());
        expect_match(y, run_unary(c.name, x.cpu), tolerance<T>());
      }
    }
  });
}

TEST(ElementwiseCuda, UnaryBackwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    for (const Layout& l : layouts(false)) {
      if (l.view == View::expanded) continue;  // a leaf cannot be an expanded view of itself
      for (const UnaryCase& c : unary_cases) {
        SCOPED_TRACE(std::string(c.name) + " " + dtype_name<T> + " " + l.name);
        poison_cached_memory();
        const Pair<T> x = leaves(pair_of<T>(l, c.lo, c.hi, /*nans=*/true));
        const Pair<T> g = pair_of(random<T>(x.cpu.shape(), -1, 1));
        run_unary(c.name, x.cpu).backward(g.cpu);
        run_unary(c.name, x.gpu).backward(g.gpu);
        expect_match(x.gpu.grad(), x.cpu.grad(), tolerance<T>());
      }
    }
  });
}

TEST(ElementwiseCuda, UnaryBackwardWithBroadcastGradient) {
  // The output gradient of a sum is one value expanded (stride 0 everywhere): the backward kernel
  // reads it through the rows path (length a multiple of the vector) or the strided one.
  KILN_REQUIRE_GPU();
  for (const Shape& shape : std::vector<Shape>{{64, 32}, {7, 33}, {4096, 4099}}) {
    for (const UnaryCase& c : unary_cases) {
      SCOPED_TRACE(std::string(c.name) + " " + kiln::str(shape));
      poison_cached_memory();
      const Pair<float> x = leaves(pair_of(random<float>(shape, c.lo, c.hi, true)));
      const Tensor<float> g = full<float>({}, 0.75f);
      run_unary(c.name, x.cpu).backward(expand(g, shape));
      run_unary(c.name, x.gpu).backward(expand(on_gpu(g), shape));
      expect_match(x.gpu.grad(), x.cpu.grad(), tolerance<float>());
    }
  }
}

TEST(ElementwiseCuda, UnarySpecialValues) {
  KILN_REQUIRE_GPU();
  const double inf = std::numeric_limits<double>::infinity();
  const auto x = tensor<float>({1000.0f, -1000.0f, 100.0f, -100.0f, 0.0f, -0.0f, static_cast<float>(inf),
                                static_cast<float>(-inf), static_cast<float>(nan_v), 1e-30f, -1e-30f});
  const auto xd = cast<double>(x);
  for (const UnaryCase& c : unary_cases) {
    SCOPED_TRACE(c.name);
    // Saturation, infinities, signed zeros and NaN give what the CPU gives (inf and NaN must
    // match exactly: relative_error is infinite otherwise).
    expect_match(run_unary(c.name, on_gpu(x)), run_unary(c.name, x), 1e-6);
    expect_match(run_unary(c.name, on_gpu(xd)), run_unary(c.name, xd), 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu

TEST(ElementwiseCuda, SwigluMatchesCpu) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    for (const Layout& l : layouts(!std::is_same_v<T, double>)) {
      if (l.view == View::expanded) continue;  // leaves below; the forward-only broadcast case follows
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + l.name);
      poison_cached_memory();
      const Pair<T> gate = leaves(pair_of<T>(l, -8, 8, true)), up = leaves(pair_of<T>(l, -2, 2));
      const Tensor<T> y_gpu = swiglu(gate.gpu, up.gpu), y_cpu = swiglu(gate.cpu, up.cpu);
      expect_match(y_gpu, y_cpu, tolerance<T>());
      const Pair<T> g = pair_of(random<T>(y_cpu.shape(), -1, 1));
      y_cpu.backward(g.cpu);
      y_gpu.backward(g.gpu);
      expect_match(gate.gpu.grad(), gate.cpu.grad(), tolerance<T>());
      expect_match(up.gpu.grad(), up.cpu.grad(), tolerance<T>());
    }
  });
}

TEST(ElementwiseCuda, SwigluOnHalvesOfOneProjection) {
  // The usual layout: gate and up are the two halves of one [tokens, 2 * hidden] projection, so
  // both are row-strided views; the gradient comes from a sum (expanded).
  KILN_REQUIRE_GPU();
  for (std::int64_t hidden : {64, 33}) {
    SCOPED_TRACE(hidden);
    poison_cached_memory();
    const Pair<float> h = leaves(pair_of(random<float>({37, 2 * hidden}, -4, 4)));
    auto halves_cpu = chunk(h.cpu, 2, -1), halves_gpu = chunk(h.gpu, 2, -1);
    const Tensor<float> y_cpu = swiglu(halves_cpu[0], halves_cpu[1]), y_gpu = swiglu(halves_gpu[0], halves_gpu[1]);
    expect_match(y_gpu, y_cpu, 1e-5);
    const Tensor<float> g = full<float>({}, -1.5f);
    y_cpu.backward(expand(g, y_cpu.shape()));
    y_gpu.backward(expand(on_gpu(g), y_gpu.shape()));
    expect_match(h.gpu.grad(), h.cpu.grad(), 1e-5);
  }
  // A gradient of its own (not a broadcast): with hidden a multiple of the 16-byte vector the
  // backward takes the rows path (vectors within each row of the halves), otherwise the strided one.
  for_types<float, bf16>([](auto tag) {
    using T = decltype(tag);
    for (std::int64_t hidden : {64, 512, 40, 33}) {
      SCOPED_TRACE(kiln::str(dtype_name<T>, " hidden ", hidden));
      poison_cached_memory();
      const Pair<T> h = leaves(pair_of(random<T>({37, 2 * hidden}, -4, 4)));
      auto halves_cpu = chunk(h.cpu, 2, -1), halves_gpu = chunk(h.gpu, 2, -1);
      const Tensor<T> y_cpu = swiglu(halves_cpu[0], halves_cpu[1]), y_gpu = swiglu(halves_gpu[0], halves_gpu[1]);
      const Pair<T> g = pair_of(random<T>(y_cpu.shape(), -1, 1));
      y_cpu.backward(g.cpu);
      y_gpu.backward(g.gpu);
      expect_match(h.gpu.grad(), h.cpu.grad(), tolerance<T>());
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The generic map kernel's paths, through binary ops (exact: one rounding on either device)

TEST(ElementwiseCuda, MapPathsMatchCpu) {
  KILN_REQUIRE_GPU();
  struct Case {
    std::string name;
    Shape a, b;
    View view_a;
  };
  const std::vector<Case> cases = {
      {"row broadcast", {64, 128}, {128}, View::none},
      {"row broadcast, odd row", {63, 129}, {129}, View::none},
      {"column broadcast", {64, 128}, {64, 1}, View::none},
      {"scalar broadcast", {64, 128}, {}, View::none},
      {"scalar broadcast, odd", {7, 33}, {}, View::none},
      {"3-d row broadcast", {4, 8, 32}, {8, 32}, View::none},
      {"3-d middle broadcast", {4, 8, 32}, {4, 1, 32}, View::none},
      {"3-d outer broadcast", {4, 8, 32}, {4, 8, 1}, View::none},
      {"both broadcast", {5, 1, 48}, {1, 6, 48}, View::none},
      {"narrow aligned + row", {8, 80}, {64}, View::narrow_aligned},
      {"narrow unaligned + row", {8, 80}, {78}, View::narrow_unaligned},
      {"transposed + row", {65, 33}, {65}, View::transposed},
      {"permuted + broadcast", {4, 5, 6}, {1, 4, 5}, View::permuted},
      {"large row broadcast", {4096, 4099}, {4099}, View::none},
      {"large column broadcast", {4096, 4100}, {4096, 1}, View::none},
  };
  for_types<float, double, bf16>([&](auto tag) {
    using T = decltype(tag);
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + c.name);
      poison_cached_memory();
      const Pair<T> a = pair_of<T>({c.name, c.a, c.view_a}, -2, 2, true);
      const Pair<T> b = pair_of(random<T>(c.b, 0.5, 2));
      expect_match(add(a.gpu, b.gpu), add(a.cpu, b.cpu), 0.0);
      expect_match(mul(b.gpu, a.gpu), mul(b.cpu, a.cpu), 0.0);
      expect_match(maximum(a.gpu, b.gpu), maximum(a.cpu, b.cpu), 0.0);
      // The cast kernel (clone) reads the view through the same paths.
      expect_match(clone(a.gpu), a.cpu, 0.0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Comparisons and logical ops

TEST(ElementwiseCuda, CompareMatchesCpu) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16, std::int64_t>([](auto tag) {
    using T = decltype(tag);
    struct Case {
      Shape a, b;
      View view_a;
    };
    std::vector<Case> cases{{{1}, {1}, View::none},
                            {{1003}, {1003}, View::none},
                            {{33, 65}, {65}, View::none},
                            {{1003, 1}, {3, 1, 129}, View::none},
                            {{65, 33}, {33, 1}, View::transposed},
                            {{8, 80}, {64}, View::narrow_aligned}};
    const bool large = std::is_same_v<T, float>;  // the CPU reference is the slow side
    if (large) cases.push_back({{4096, 4099}, {4096, 4099}, View::none});
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + kiln::str(c.a) + " vs " + kiln::str(c.b));
      poison_cached_memory();
      // Small integers (ties are common); floats get NaNs too.
      auto ints = [](const Shape& s) { return floor_values(rand<double>(s, -2, 3)); };
      const Tensor<T> base_a = with_nans_if_floating(cast_to<T>(ints(c.a)));
      const Pair<T> a{apply_view(c.view_a, base_a), apply_view(c.view_a, on_gpu(base_a))};
      const Pair<T> b = pair_of(with_nans_if_floating(cast_to<T>(ints(c.b))));
      expect_same_bools(eq(a.gpu, b.gpu), eq(a.cpu, b.cpu));
      expect_same_bools(ne(a.gpu, b.gpu), ne(a.cpu, b.cpu));
      expect_same_bools(lt(a.gpu, b.gpu), lt(a.cpu, b.cpu));
      expect_same_bools(le(a.gpu, b.gpu), le(a.cpu, b.cpu));
      expect_same_bools(gt(a.gpu, b.gpu), gt(a.cpu, b.cpu));
      expect_same_bools(ge(a.gpu, b.gpu), ge(a.cpu, b.cpu));
      for (double s : c.a == Shape{4096, 4099} ? std::vector<double>{0.5} : std::vector<double>{0.0, 1.0, 0.1, 2.5, -1.5}) {
        SCOPED_TRACE(s);
        expect_same_bools(eq(a.gpu, s), eq(a.cpu, s));
        expect_same_bools(ne(a.gpu, s), ne(a.cpu, s));
        expect_same_bools(lt(a.gpu, s), lt(a.cpu, s));
        expect_same_bools(le(a.gpu, s), le(a.cpu, s));
        expect_same_bools(gt(a.gpu, s), gt(a.cpu, s));
        expect_same_bools(ge(a.gpu, s), ge(a.cpu, s));
      }
    }
  });
}

TEST(ElementwiseCuda, CompareScalarRoundsToTheTensorType) {
  KILN_REQUIRE_GPU();
  // float(0.1) == 0.1 rounded to float; bf16 likewise; int64 compares with 2.5 exactly.
  const auto f = on_gpu(tensor<float>({0.1f, 0.2f, -1.0f}));
  EXPECT_EQ(eq(f, 0.1).to_vector(), (std::vector<bool>{true, false, false}));
  const auto h = on_gpu(tensor<bf16>({bf16(0.1), bf16(0.3)}));
  EXPECT_EQ(eq(h, 0.1).to_vector(), (std::vector<bool>{true, false}));
  const auto ids = on_gpu(tensor<std::int64_t>({1, 2, 3, 4}));
  EXPECT_EQ(lt(ids, 2.5).to_vector(), (std::vector<bool>{true, true, false, false}));
  EXPECT_EQ(ge(ids, 3).to_vector(), (std::vector<bool>{false, false, true, true}));
  const auto n = on_gpu(tensor<double>({nan_v, 1.0}));
  EXPECT_EQ(eq(n, n).to_vector(), (std::vector<bool>{false, true}));
  EXPECT_EQ(ne(n, 1.0).to_vector(), (std::vector<bool>{true, false}));
}

TEST(ElementwiseCuda, LogicalMatchesCpu) {
  KILN_REQUIRE_GPU();
  auto mask = [](const Shape& s) { return lt(rand<float>(s), 0.5); };
  for (const auto& [sa, sb] : std::vector<std::pair<Shape, Shape>>{
           {{1}, {1}}, {{33}, {33}}, {{4, 1, 5}, {3, 1}}, {{1003, 1}, {1, 129}}, {{4096, 4099}, {4099}}}) {
    SCOPED_TRACE(kiln::str(sa) + " " + kiln::str(sb));
    poison_cached_memory();
    const Pair<bool> a = pair_of(mask(sa)), b = pair_of(mask(sb));
    expect_same_bools(logical_and(a.gpu, b.gpu), logical_and(a.cpu, b.cpu));
    expect_same_bools(logical_or(a.gpu, b.gpu), logical_or(a.cpu, b.cpu));
    expect_same_bools(logical_xor(a.gpu, b.gpu), logical_xor(a.cpu, b.cpu));
    expect_same_bools(logical_not(a.gpu), logical_not(a.cpu));
  }
  const Tensor<bool> m = mask({5, 37});
  expect_same_bools(logical_not(transpose(on_gpu(m), 0, 1)), logical_not(transpose(m, 0, 1)));
}

// ---------------------------------------------------------------------------------------------
// where and masked_fill

TEST(ElementwiseCuda, WhereAndMaskedFillMatchCpu) {
  KILN_REQUIRE_GPU();
  struct Case {
    Shape cond, a, b;
  };
  const std::vector<Case> cases = {{{1}, {1}, {1}},
                                   {{7}, {7}, {7}},
                                   {{33, 1}, {33, 65}, {65}},
                                   {{1003}, {3, 1}, {}},
                                   {{64, 128}, {64, 128}, {64, 128}},
                                   {{1, 128}, {64, 128}, {64, 1}},
                                   {{4096, 4099}, {4096, 4099}, {4096, 4099}}};
  for_types<float, double, bf16, std::int64_t>([&](auto tag) {
    using T = decltype(tag);
    for (const Case& c : cases) {
      if (c.a == Shape{4096, 4099} && !std::is_same_v<T, float> && !std::is_same_v<T, bf16>) continue;
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + kiln::str(c.cond) + " " + kiln::str(c.a) + " " + kiln::str(c.b));
      poison_cached_memory();
      const Pair<bool> cond = pair_of(lt(rand<float>(c.cond), 0.5));
      const Pair<T> a = pair_of(with_nans_if_floating(cast_to<T>(rand<double>(c.a, -5, 5)))),
                    b = pair_of(cast_to<T>(rand<double>(c.b, -5, 5)));
      expect_match(where(cond.gpu, a.gpu, b.gpu), where(cond.cpu, a.cpu, b.cpu), 0.0);
      expect_match(where(cond.gpu, a.gpu, -7.0), where(cond.cpu, a.cpu, -7.0), 0.0);
      expect_match(where(cond.gpu, 3.0, b.gpu), where(cond.cpu, 3.0, b.cpu), 0.0);
      // masked_fill: the mask broadcasts to the tensor's shape.
      const Shape out_shape = where(cond.cpu, a.cpu, b.cpu).shape();
      const Pair<T> t = pair_of(cast_to<T>(rand<double>(out_shape, -5, 5)));
      expect_match(masked_fill(t.gpu, cond.gpu, -1e9), masked_fill(t.cpu, cond.cpu, -1e9), 0.0);
    }
    // Non-contiguous operands.
    const Tensor<T> base = cast_to<T>(rand<double>({65, 33}, -5, 5));
    const Tensor<bool> m = lt(rand<float>({33, 65}), 0.5);
    expect_match(where(on_gpu(m), transpose(on_gpu(base), 0, 1), 0.0), where(m, transpose(base, 0, 1), 0.0), 0.0);
    expect_match(masked_fill(transpose(on_gpu(base), 0, 1), on_gpu(m), 2.0), masked_fill(transpose(base, 0, 1), m, 2.0), 0.0);
  });
}

TEST(ElementwiseCuda, WhereAndMaskedFillBackward) {
  // Same shapes: the gradients are where / masked_fill of g, no reduction.
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    for (const Shape& s : std::vector<Shape>{{7}, {33, 65}, {1003}}) {
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + kiln::str(s));
      poison_cached_memory();
      const Pair<bool> cond = pair_of(lt(rand<float>(s), 0.5));
      const Pair<T> a = leaves(pair_of(random<T>(s, -3, 3))), b = leaves(pair_of(random<T>(s, -3, 3)));
      const Pair<T> g = pair_of(random<T>(s, -1, 1));
      where(cond.cpu, a.cpu, b.cpu).backward(g.cpu);
      where(cond.gpu, a.gpu, b.gpu).backward(g.gpu);
      expect_match(a.gpu.grad(), a.cpu.grad(), 0.0);
      expect_match(b.gpu.grad(), b.cpu.grad(), 0.0);
      const Pair<T> t = leaves(pair_of(random<T>(s, -3, 3)));
      masked_fill(t.cpu, cond.cpu, 5.0).backward(g.cpu);
      masked_fill(t.gpu, cond.gpu, 5.0).backward(g.gpu);
      expect_match(t.gpu.grad(), t.cpu.grad(), 0.0);
    }
  });
}

TEST(ElementwiseCuda, WhereBackwardWithBroadcastOperands) {
  // Broadcast a and b: their gradients are summed back with sum_to (the reduction kernels).
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const Pair<bool> cond = pair_of(lt(rand<float>({33, 1}), 0.5));
  const Pair<float> a = leaves(pair_of(random<float>({33, 65}, -3, 3))), b = leaves(pair_of(random<float>({65}, -3, 3)));
  const Pair<float> g = pair_of(random<float>({33, 65}, -1, 1));
  where(cond.cpu, a.cpu, b.cpu).backward(g.cpu);
  where(cond.gpu, a.gpu, b.gpu).backward(g.gpu);
  expect_match(a.gpu.grad(), a.cpu.grad(), 1e-6);
  expect_match(b.gpu.grad(), b.cpu.grad(), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// cat, stack, slice backward

TEST(ElementwiseCuda, CatAndStackMatchCpu) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16, std::int64_t, bool>([](auto tag) {
    using T = decltype(tag);
    auto values = [](const Shape& s) { return cast_to<T>(rand<double>(s, -5, 5)); };
    SCOPED_TRACE(dtype_name<T>);
    poison_cached_memory();
    // Along dim 0 (contiguous slabs), dim 1 (strided slabs), the last dim of 3-d inputs.
    const std::vector<std::pair<std::vector<Shape>, std::int64_t>> cases = {
        {{{3, 5}, {4, 5}, {1, 5}}, 0},
        {{{4, 3}, {4, 8}, {4, 1}}, 1},
        {{{4, 8}, {4, 16}, {4, 8}}, -1},
        {{{2, 3, 7}, {2, 3, 1}, {2, 3, 33}}, 2},
        {{{7}}, 0},
        {{{4096, 2049}, {4096, 2050}}, 1},
    };
    for (const auto& [shapes, dim] : cases) {
      std::vector<Tensor<T>> cpu_in, gpu_in;
      for (const Shape& s : shapes) {
        cpu_in.push_back(values(s));
        gpu_in.push_back(on_gpu(cpu_in.back()));
      }
      expect_match(cat(gpu_in, dim), cat(cpu_in, dim), 0.0);
    }
    // Non-contiguous inputs, and stack along each dim.
    const Tensor<T> base = values({9, 13});
    const Tensor<T> other = values({13, 9});
    const Tensor<T> base_gpu = on_gpu(base), other_gpu = on_gpu(other);
    for (std::int64_t dim : {0, 1}) {
      expect_match(cat(std::vector<Tensor<T>>{transpose(base_gpu, 0, 1), other_gpu}, dim),
                   cat(std::vector<Tensor<T>>{transpose(base, 0, 1), other}, dim), 0.0);
    }
    for (std::int64_t dim : {0, 1, 2, -1}) {
      expect_match(stack(std::vector<Tensor<T>>{transpose(base_gpu, 0, 1), other_gpu, other_gpu}, dim),
                   stack(std::vector<Tensor<T>>{transpose(base, 0, 1), other, other}, dim), 0.0);
    }
  });
}

TEST(ElementwiseCuda, CatStackAndSliceBackward) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    SCOPED_TRACE(dtype_name<T>);
    poison_cached_memory();
    const Pair<T> a = leaves(pair_of(random<T>({4, 3}, -1, 1))), b = leaves(pair_of(random<T>({4, 9}, -1, 1)));
    for (std::int64_t dim : {1, -1}) {
      const Tensor<T> y_cpu = cat(std::vector<Tensor<T>>{a.cpu, b.cpu}, dim);
      const Pair<T> g = pair_of(random<T>(y_cpu.shape(), -1, 1));
      y_cpu.backward(g.cpu);
      cat(std::vector<Tensor<T>>{a.gpu, b.gpu}, dim).backward(g.gpu);
    }
    expect_match(a.gpu.grad(), a.cpu.grad(), 0.0);
    expect_match(b.gpu.grad(), b.cpu.grad(), 0.0);

    const Pair<T> c = leaves(pair_of(random<T>({5, 7}, -1, 1))), d = leaves(pair_of(random<T>({5, 7}, -1, 1)));
    const Tensor<T> s_cpu = stack(std::vector<Tensor<T>>{c.cpu, d.cpu}, 1);
    const Pair<T> gs = pair_of(random<T>(s_cpu.shape(), -1, 1));
    s_cpu.backward(gs.cpu);
    stack(std::vector<Tensor<T>>{c.gpu, d.gpu}, 1).backward(gs.gpu);
    expect_match(c.gpu.grad(), c.cpu.grad(), 0.0);
    expect_match(d.gpu.grad(), d.cpu.grad(), 0.0);

    // slice backward writes g into zeros through the slice's strides.
    const Pair<T> x = leaves(pair_of(random<T>({7, 33}, -1, 1)));
    struct Slice {
      std::int64_t dim, start, end, step;
    };
    for (const Slice& sl : std::vector<Slice>{{1, 2, 30, 3}, {1, 8, 24, 1}, {0, 1, 6, 2}, {1, -5, 33, 1}}) {
      const Tensor<T> y_cpu = slice(x.cpu, sl.dim, sl.start, sl.end, sl.step);
      const Pair<T> g = pair_of(random<T>(y_cpu.shape(), -1, 1));
      y_cpu.backward(g.cpu);
      slice(x.gpu, sl.dim, sl.start, sl.end, sl.step).backward(g.gpu);
    }
    expect_match(x.gpu.grad(), x.cpu.grad(), 0.0);
  });
}

// ---------------------------------------------------------------------------------------------
// Binary ops' backward pieces that used to be CPU loops

TEST(ElementwiseCuda, PowMaximumMinimumBackward) {
  KILN_REQUIRE_GPU();
  for_types<float, double, bf16>([](auto tag) {
    using T = decltype(tag);
    for (const Shape& s : std::vector<Shape>{{7}, {33, 65}, {1003}}) {
      SCOPED_TRACE(std::string(dtype_name<T>) + " " + kiln::str(s));
      poison_cached_memory();
      // pow: a > 0 with a few exact zeros (d/db there is taken as 0), b > 0.
      std::vector<T> av = random<T>(s, 0.1, 2).to_vector();
      for (std::size_t i = 3; i < av.size(); i += 11) av[i] = convert<T>(0.0);
      const Pair<T> a = leaves(pair_of(tensor<T>(av, s))), b = leaves(pair_of(random<T>(s, 0.5, 2)));
      const Pair<T> g = pair_of(random<T>(s, -1, 1));
      pow(a.cpu, b.cpu).backward(g.cpu);
      pow(a.gpu, b.gpu).backward(g.gpu);
      expect_match(a.gpu.grad(), a.cpu.grad(), tolerance<T>());
      expect_match(b.gpu.grad(), b.cpu.grad(), tolerance<T>());

      // maximum / minimum with ties (the gradient splits evenly) and NaN.
      std::vector<T> xv = random<T>(s, -1, 1).to_vector(), yv = random<T>(s, -1, 1).to_vector();
      for (std::size_t i = 0; i < xv.size(); i += 3) yv[i] = xv[i];
      for (std::size_t i = 4; i < xv.size(); i += 17) xv[i] = convert<T>(nan_v);
      for (bool is_max : {true, false}) {
        const Pair<T> x = leaves(pair_of(tensor<T>(xv, s))), y = leaves(pair_of(tensor<T>(yv, s)));
        (is_max ? maximum(x.cpu, y.cpu) : minimum(x.cpu, y.cpu)).backward(g.cpu);
        (is_max ? maximum(x.gpu, y.gpu) : minimum(x.gpu, y.gpu)).backward(g.gpu);
        expect_match(x.gpu.grad(), x.cpu.grad(), 0.0);
        expect_match(y.gpu.grad(), y.cpu.grad(), 0.0);
      }
    }
  });
}

TEST(ElementwiseCuda, ErrorsNameTheOp) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR(swiglu(randn<float>({2, 3}), on_gpu(randn<float>({2, 3}))), "swiglu", "cpu", "cuda:0");
  EXPECT_KILN_ERROR(swiglu(on_gpu(randn<float>({2, 3})), on_gpu(randn<float>({3, 2}))), "swiglu", "[2, 3]", "[3, 2]");
  EXPECT_KILN_ERROR(where(lt(randn<float>({3}), 0.0), on_gpu(randn<float>({3})), on_gpu(randn<float>({3}))), "where",
                    "cpu", "cuda:0");
  EXPECT_KILN_ERROR(lt(on_gpu(randn<float>({2, 3})), on_gpu(randn<float>({4}))), "lt", "[2, 3]", "[4]");
  EXPECT_KILN_ERROR(cat(std::vector<Tensor<float>>{on_gpu(randn<float>({2})), randn<float>({2})}), "cat", "cuda:0", "cpu");
}
