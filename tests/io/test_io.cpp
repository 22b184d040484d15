// io/: safetensors (round trips, a hand-built file, corrupt and truncated files), atomic writes,
// config.json, model and training checkpoints.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <kiln/io/checkpoint.hpp>

#include "file_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
namespace fs = std::filesystem;

// Outside the anonymous namespace (a TEST_F class derives from it: see test_hardening.cpp).
class IoTest : public kiln::testing::TempDirTest {};

namespace {

using kiln::testing::le64;
using kiln::testing::read_bytes;
using kiln::testing::write_bytes;
std::string make_file(const std::string& header, const std::string& data) {
  return kiln::testing::make_safetensors_file(header, data);
}

// The element bytes of a tensor in row-major order.
template <class T>
std::string bytes_of(const Tensor<T>& t) {
  if constexpr (std::is_same_v<T, bool>) {
    std::string s;
    for (bool b : t.to_vector()) s.push_back(b ? 1 : 0);
    return s;
  } else {
    const auto v = t.to_vector();
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
}

// A tensor of T whose elements have random bit patterns (NaNs with payloads, infinities,
// subnormals included): a round trip must preserve the bits, not only the values.
template <class T>
Tensor<T> random_bits(const Shape& shape, std::uint64_t seed) {
  Tensor<T> t(shape);
  const std::int64_t n = t.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto w = philox::at(seed, static_cast<std::uint64_t>(i));
    const std::uint64_t bits = (static_cast<std::uint64_t>(w[0]) << 32) | w[1];
    if constexpr (std::is_same_v<T, bool>) {
      t.data()[i] = (bits & 1) != 0;
    } else {
      std::memcpy(static_cast<void*>(t.data() + i), &bits, sizeof(T));
    }
  }
  return t;
}

// A device whose copies fail: tensors "on cuda:0" live in host memory, but reading them back
// throws, as a failing GPU copy would. Installed for the lifetime of the guard.
struct FailingDevice {
  DeviceBackend table;
  DeviceBackend* previous;
  FailingDevice() : previous(cuda_backend()) {
    table.allocate = [](std::size_t bytes, int) { return std::malloc(std::max<std::size_t>(bytes, 1)); };
    table.deallocate = [](void* p, std::size_t, int) { std::free(p); };
    table.copy = [](void*, Device, const void*, Device, std::size_t) { throw Error("simulated device copy failure"); };
    cuda_backend() = &table;
  }
  ~FailingDevice() { cuda_backend() = previous; }
};

// Loads `path` and reports how it went: "ok", "error" (kiln::Error), or the foreign exception.
std::string try_load(const std::string& path) {
  try {
    io::Safetensors st = io::load_safetensors(path);
    // A file that validates must give back every tensor without trouble.
    for (const auto& [name, e] : st.entries()) {
      if (static_cast<std::uint64_t>(e.bytes.size()) != static_cast<std::uint64_t>(e.numel()) * static_cast<std::uint64_t>(dtype_size(e.dtype)))
        return "inconsistent entry " + name;
    }
    return "ok";
  } catch (const Error&) {
    return "error";
  } catch (const std::exception& e) {
    return std::string("foreign exception: ") + e.what();
  }
}

}  // namespace

// ---- safetensors ---------------------------------------------------------------------------------

TEST_F(IoTest, SafetensorsRoundTripEveryDtypeBitExact) {
  const auto f64 = random_bits<double>({7, 3}, 1);
  const auto f32 = random_bits<float>({33}, 2);
  const auto f16 = random_bits<fp16>({5, 1, 3}, 3);
  const auto b16 = random_bits<bf16>({2, 9}, 4);
  const auto e4 = random_bits<fp8_e4m3>({17}, 5);
  const auto e5 = random_bits<fp8_e5m2>({3, 7}, 6);
  const auto i64 = random_bits<std::int64_t>({4}, 7);
  const auto i32 = random_bits<std::int32_t>({1, 7}, 8);
  const auto u8 = random_bits<std::uint8_t>({13}, 9);
  const auto b = random_bits<bool>({6, 2}, 10);
  const auto scalar = full<float>({}, 2.5f);
  const auto empty = zeros<double>({0, 4});
  const auto p = path("all.safetensors");
  io::save_safetensors(p,
                       {{"f64", f64}, {"f32", f32}, {"f16", f16}, {"bf16", b16}, {"e4m3", e4}, {"e5m2", e5}, {"i64", i64},
                        {"i32", i32}, {"u8", u8}, {"bool", b}, {"scalar", scalar}, {"empty", empty}},
                       {{"format", "pt"}, {"note", "ünïcode ✓"}});
  const auto st = io::load_safetensors(p);
  EXPECT_EQ(st.size(), 12u);
  EXPECT_EQ(st.metadata(), (io::Metadata{{"format", "pt"}, {"note", "ünïcode ✓"}}));
  EXPECT_EQ(bytes_of(st.get<double>("f64")), bytes_of(f64));
  EXPECT_EQ(bytes_of(st.get<float>("f32")), bytes_of(f32));
  EXPECT_EQ(bytes_of(st.get<fp16>("f16")), bytes_of(f16));
  EXPECT_EQ(bytes_of(st.get<bf16>("bf16")), bytes_of(b16));
  EXPECT_EQ(bytes_of(st.get<fp8_e4m3>("e4m3")), bytes_of(e4));
  EXPECT_EQ(bytes_of(st.get<fp8_e5m2>("e5m2")), bytes_of(e5));
  EXPECT_EQ(bytes_of(st.get<std::int64_t>("i64")), bytes_of(i64));
  EXPECT_EQ(bytes_of(st.get<std::int32_t>("i32")), bytes_of(i32));
  EXPECT_EQ(bytes_of(st.get<std::uint8_t>("u8")), bytes_of(u8));
  EXPECT_EQ(st.get<bool>("bool").to_vector(), b.to_vector());
  EXPECT_EQ(st.get<float>("scalar").shape(), Shape{});
  EXPECT_EQ(st.get<float>("scalar").item(), 2.5f);
  EXPECT_EQ(st.get<double>("empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(st.get<fp16>("f16").shape(), (Shape{5, 1, 3}));
  EXPECT_EQ(st.entry("e4m3").dtype, DType::fp8_e4m3);

  // The layout other readers rely on: data starts on 8 bytes, each tensor on its element size.
  const std::string raw = read_bytes(p);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(raw[i])) << (8 * i);
  EXPECT_EQ((8 + n) % 8, 0u);
  const auto header = io::json::parse(raw.substr(8, n));
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const auto begin = info["data_offsets"][0].get<std::uint64_t>();
    EXPECT_EQ(begin % static_cast<std::uint64_t>(dtype_size(*io::safetensors_dtype_from_name(info["dtype"].get<std::string>()))), 0u) << name;
  }
}

TEST_F(IoTest, SafetensorsWritesViewsAsTheirElements) {
  const auto x = randn<float>({5, 3});
  const auto xt = transpose(x, 0, 1);                              // strides [1, 3]
  const auto col = narrow(x, 1, 1, 1);                             // [5, 1] with stride 3
  const auto row = expand(tensor<double>({1, 2, 3}, {1, 3}), {4, 3});  // stride 0
  const auto bt = transpose(random_bits<bool>({3, 4}, 11), 0, 1);
  const auto p = path("views.safetensors");
  io::save_safetensors(p, {{"xt", xt}, {"col", col}, {"row", row}, {"bt", bt}});
  const auto st = io::load_safetensors(p);
  EXPECT_EQ(st.get<float>("xt").shape(), (Shape{3, 5}));
  EXPECT_EQ(st.get<float>("xt").to_vector(), xt.to_vector());
  EXPECT_EQ(st.get<float>("col").to_vector(), col.to_vector());
  EXPECT_EQ(st.get<double>("row").to_vector(), row.to_vector());
  EXPECT_EQ(st.get<bool>("bt").to_vector(), bt.to_vector());
}

// A file built byte by byte here (an independent encoder): keys out of data order, spaces after
// the JSON, little-endian values written out by hand.
TEST_F(IoTest, SafetensorsReadsAHandBuiltFile) {
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("c":{"dtype":"I64","shape":[1,1],"data_offsets":[12,20]},)"
      R"("d":{"dtype":"BOOL","shape":[3],"data_offsets":[20,23]},)"
      R"("e":{"dtype":"F16","shape":[],"data_offsets":[23,25]},)"
      R"("f":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[25,27]},)"
      R"("g":{"dtype":"U8","shape":[0],"data_offsets":[27,27]}}   )";
  std::string data;
  data += std::string("\x00\x00\xc0\x3f", 4);  // 1.5f = 0x3FC00000
  data += std::string("\x00\x00\x00\xc0", 4);  // -2.0f = 0xC0000000
  data += std::string("\x80\x3f", 2);          // bf16 1.0 = 0x3F80
  data += std::string("\x49\x40", 2);          // bf16 3.140625 = 0x4049
  data += std::string("\xfe\xff\xff\xff\xff\xff\xff\xff", 8);  // int64 -2
  data += std::string("\x01\x00\x01", 3);
  data += std::string("\x00\x3c", 2);  // fp16 1.0 = 0x3C00
  data += std::string("\x7e\xb8", 2);  // e4m3 448 = 0x7E, -1.0 = 0xB8
  const auto p = path("hand.safetensors");
  write_bytes(p, make_file(header, data));
  const auto st = io::load_safetensors(p);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"a", "b", "c", "d", "e", "f", "g"}));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.get<float>("a").to_vector(), (std::vector<float>{1.5f, -2.0f}));
  const auto b = st.get<bf16>("b").to_vector();
  EXPECT_EQ(static_cast<float>(b[0]), 1.0f);
  EXPECT_EQ(static_cast<float>(b[1]), 3.140625f);
  EXPECT_EQ(st.get<std::int64_t>("c").shape(), (Shape{1, 1}));
  EXPECT_EQ(st.get<std::int64_t>("c").item(), -2);
  EXPECT_EQ(st.get<bool>("d").to_vector(), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(static_cast<float>(st.get<fp16>("e").item()), 1.0f);
  const auto f = st.get<fp8_e4m3>("f").to_vector();
  EXPECT_EQ(static_cast<float>(f[0]), 448.0f);
  EXPECT_EQ(static_cast<float>(f[1]), -1.0f);
  EXPECT_EQ(st.get<std::uint8_t>("g").numel(), 0);
}

TEST_F(IoTest, SafetensorsConversions) {
  const auto w = randn<bf16>({4, 3});
  const auto ids = tensor<std::int64_t>({5, -7, 1ll << 40}, {3});
  const auto small = tensor<std::int32_t>({5, -7}, {2});
  const auto mask = tensor<bool>({true, false}, {2});
  const auto p = path("conv.safetensors");
  io::save_safetensors(p, {{"w", w}, {"ids", ids}, {"small", small}, {"mask", mask}});
  const auto st = io::load_safetensors(p);
  // Exact by default: the dtype must match.
  EXPECT_KILN_ERROR(st.get<float>("w"), "safetensors", p, "'w'", "BF16", "F32", "Conversion::convert");
  // bf16 -> float/double is exact; the values are the bf16 values.
  const auto wf = st.get<float>("w", io::Conversion::convert).to_vector();
  const auto wv = w.to_vector();
  for (std::size_t i = 0; i < wv.size(); ++i) ASSERT_EQ(wf[i], static_cast<float>(wv[i]));
  // float -> bf16 rounds to nearest even, like convert<bf16>.
  const auto back = st.get<fp16>("w", io::Conversion::convert).to_vector();
  for (std::size_t i = 0; i < wv.size(); ++i) ASSERT_EQ(back[i].bits, convert<fp16>(wv[i]).bits);
  // Integers widen, narrow with a range check, convert to floating; never floating -> integer.
  EXPECT_EQ(st.get<std::int64_t>("small", io::Conversion::convert).to_vector(), (std::vector<std::int64_t>{5, -7}));
  EXPECT_EQ(st.get<double>("ids", io::Conversion::convert).to_vector(), (std::vector<double>{5, -7, 1099511627776.0}));
  EXPECT_KILN_ERROR(st.get<std::int32_t>("ids", io::Conversion::convert), "'ids'", "1099511627776", "int32");
  EXPECT_KILN_ERROR(st.get<std::uint8_t>("small", io::Conversion::convert), "'small'", "-7");
  EXPECT_KILN_ERROR(st.get<std::int32_t>("w", io::Conversion::convert), "'w'", "BF16", "I32");
  EXPECT_KILN_ERROR(st.get<bool>("small", io::Conversion::convert), "'small'", "BOOL");
  EXPECT_EQ(st.get<float>("mask", io::Conversion::convert).to_vector(), (std::vector<float>{1.0f, 0.0f}));
  EXPECT_KILN_ERROR(st.get<float>("nope"), p, "no tensor named 'nope'");
}

TEST_F(IoTest, SafetensorsRejectsMalformedHeaders) {
  const auto p = path("bad.safetensors");
  const std::string f32x2 = std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);  // 1.0f, 2.0f
  auto expect = [&](const std::string& header, const std::string& data, std::vector<std::string> parts) {
    write_bytes(p, make_file(header, data));
    parts.push_back(p);
    parts.push_back("kiln::safetensors");
    bool thrown = false;
    try {
      io::load_safetensors(p);
    } catch (const Error& e) {
      thrown = true;
      for (const auto& part : parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what() << " lacks " << part << "\n" << header;
    }
    EXPECT_TRUE(thrown) << header;
  };
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write_bytes(p, make_file(ok, f32x2));
  EXPECT_EQ(io::load_safetensors(p).get<float>("a").to_vector(), (std::vector<float>{1.0f, 2.0f}));

  expect(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f32x2, {"'a'", "[3]", "needs 12 bytes", "hold 8"});
  expect(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", f32x2, {"'a'", "needs 16 bytes"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", f32x2, {"'a'", "[0, 12]", "beyond", "8 bytes"});
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", f32x2, {"'a'", "end before they begin"});
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
         f32x2, {"overlap", "'a'", "'b'"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
         f32x2, {"overlap"});
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2, {"bytes 0 to 4", "belong to no tensor"});
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32x2, {"last 4 bytes", "belong to no tensor"});
  expect(R"({"a":{"dtype":"I16","shape":[4],"data_offsets":[0,8]}})", f32x2, {"'a'", "unknown or unsupported dtype \"I16\""});
  expect(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", f32x2, {"'a'", "dtype must be a string"});
  expect(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2, {"'a'", "shape", "non-negative"});
  expect(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", f32x2, {"'a'", "non-negative integers"});
  expect(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", f32x2, {"'a'", "shape must be an array"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", f32x2, {"'a'", "data_offsets must be [begin, end]"});
  expect(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", f32x2, {"'a'", "lacks \"shape\""});
  expect(R"({"a":[1,2]})", f32x2, {"'a'", "expected an object"});
  expect(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", f32x2,
         {"'a'", "more elements than fit in int64"});
  expect(R"({"a":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,8]}})", f32x2,
         {"'a'", "needs more than 2^64 bytes"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
         f32x2, {"the key \"a\" appears twice"});
  expect(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"__metadata__":{"k":"x","k":"y"}})", f32x2,
         {"the key \"k\" appears twice"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":1}})", f32x2,
         {"__metadata__", "'k'", "not a string"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":[]})", f32x2, {"__metadata__"});
  expect(R"({"a":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", f32x2, {"'a'", "BOOL element 2", "not 0 or 1"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", f32x2, {"not valid JSON"});
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x)", f32x2, {"not valid JSON"});
  expect("{\"\xff\":1}", f32x2, {"not valid JSON"});
  expect(R"([1,2])", f32x2, {"does not start with '{'"});
  expect("", f32x2, {"header length 0"});

  // Lengths that do not fit the file.
  write_bytes(p, le64(1000) + ok + f32x2);
  EXPECT_KILN_ERROR(io::load_safetensors(p), p, "header length 1000 exceeds the ", "truncated");
  write_bytes(p, le64(~0ull) + ok);
  EXPECT_KILN_ERROR(io::load_safetensors(p), p, "header length 18446744073709551615");
  write_bytes(p, std::string("\x10\x00\x00", 3));
  EXPECT_KILN_ERROR(io::load_safetensors(p), p, "3 bytes", "shorter than the 8-byte header length");
  EXPECT_KILN_ERROR(io::load_safetensors(path("missing.safetensors")), "missing.safetensors", "cannot open");
  EXPECT_KILN_ERROR(io::load_safetensors(dir_), dir_, "not a regular file");
}

// Every prefix of a valid file and every single-byte corruption of its header either loads
// consistently or raises kiln::Error: no crash, no other exception (ASan checks the reads).
TEST_F(IoTest, SafetensorsTruncatedAndCorruptFilesRaiseErrors) {
  const auto good = path("good.safetensors");
  io::save_safetensors(good, {{"w", randn<float>({3, 4})}, {"ids", tensor<std::int64_t>({1, 2}, {2})},
                              {"m", tensor<bool>({true}, {1})}, {"h", randn<bf16>({5})}},
                       {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  const auto p = path("cut.safetensors");
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    write_bytes(p, bytes.substr(0, cut));
    ASSERT_EQ(try_load(p), "error") << "cut at " << cut << " of " << bytes.size();
  }
  write_bytes(p, bytes + "x");
  EXPECT_KILN_ERROR(io::load_safetensors(p), p, "belong to no tensor");

  int loaded = 0, errors = 0;
  for (std::size_t i = 0; i < 8 + n; ++i) {
    for (unsigned char mask : {0x01, 0x02, 0x10, 0x20, 0x80, 0xFF}) {
      std::string corrupt = bytes;
      corrupt[i] = static_cast<char>(static_cast<unsigned char>(corrupt[i]) ^ mask);
      write_bytes(p, corrupt);
      const std::string r = try_load(p);
      ASSERT_TRUE(r == "ok" || r == "error") << "byte " << i << " ^ " << int(mask) << ": " << r;
      (r == "ok" ? loaded : errors) += 1;
    }
  }
  EXPECT_GT(errors, loaded);  // most flips break the header; some (in a name, in metadata) do not
}

TEST_F(IoTest, SafetensorsWriterChecksItsInput) {
  const auto p = path("w.safetensors");
  const auto x = zeros<float>({2});
  EXPECT_KILN_ERROR(io::save_safetensors(p, {{"a", x}, {"a", x}}), p, "duplicate tensor name 'a'");
  EXPECT_KILN_ERROR(io::save_safetensors(p, {{"__metadata__", x}}), p, "reserved");
  EXPECT_KILN_ERROR(io::save_safetensors(p, {{"", x}}), p, "empty name");
  EXPECT_KILN_ERROR(io::save_safetensors(p, {{"u", Tensor<float>()}}), p, "'u' is undefined");
  EXPECT_KILN_ERROR(io::save_safetensors(path("no/such/dir/w.safetensors"), {{"a", x}}), "no/such/dir/w.safetensors",
                    "cannot create");
  EXPECT_FALSE(fs::exists(p));
}

// A write that throws midway (a device copy fails after the header and the first tensor are
// written) leaves the previous file byte for byte, and no temporary file behind.
TEST_F(IoTest, SafetensorsAtomicWriteKeepsTheOldFile) {
  const auto p = path("model.safetensors");
  io::save_safetensors(p, {{"a", randn<float>({64})}});
  const std::string before = read_bytes(p);
  {
    FailingDevice device;
    const Tensor<float> on_device({8}, Device::cuda(0));
    EXPECT_KILN_ERROR(io::save_safetensors(p, {{"a", randn<float>({64})}, {"b", on_device}}),
                      "simulated device copy failure");
  }
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(try_load(p), "ok");
}

// ---- config.json ---------------------------------------------------------------------------------

TEST_F(IoTest, DeepseekV3ConfigRoundTrip) {
  nn::DeepseekV3Config c;
  c.vocab_size = 1000;
  c.hidden_size = 96;
  c.num_hidden_layers = 5;
  c.q_lora_rank = std::nullopt;
  c.pad_token_id = 2;
  c.routed_scaling_factor = 0.1 + 0.2;  // not representable in a short decimal
  c.rms_norm_eps = 1e-5;
  c.norm_topk_prob = false;
  c.topk_method = "greedy";
  c.aux_loss_free_gamma = 0.003;
  c.mtp_loss_weight = 0.25;
  const auto p = path("config.json");
  io::save_config(p, c, "bfloat16");
  const auto j = io::json::parse(read_bytes(p));
  EXPECT_EQ(j["architectures"], io::json::array({"DeepseekV3ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_TRUE(j["q_lora_rank"].is_null());
  EXPECT_EQ(j["kiln_aux_loss_free_gamma"], 0.003);
  EXPECT_FALSE(j.contains("aux_loss_free_gamma"));
  EXPECT_EQ(io::config_model_type(p), "deepseek_v3");

  const auto r = io::load_config<nn::DeepseekV3Config>(p);
  EXPECT_EQ(io::config_to_json(r), io::config_to_json(c));
  EXPECT_EQ(r.vocab_size, 1000);
  EXPECT_FALSE(r.q_lora_rank.has_value());
  EXPECT_EQ(r.pad_token_id, std::optional<std::int64_t>(2));
  EXPECT_EQ(r.routed_scaling_factor, 0.1 + 0.2);
  EXPECT_EQ(r.topk_method, "greedy");
  EXPECT_FALSE(r.norm_topk_prob);
  EXPECT_EQ(r.aux_loss_free_gamma, 0.003);
  EXPECT_EQ(r.mtp_loss_weight, 0.25);
}

TEST_F(IoTest, LlamaConfigRoundTripAndHuggingFaceFiles) {
  nn::LlamaConfig c;
  c.num_key_value_heads = 1;
  c.head_dim = 48;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = true;
  const auto p = path("config.json");
  io::save_config(p, c);
  const auto r = io::load_config<nn::LlamaConfig>(p);
  EXPECT_EQ(io::config_to_json(r), io::config_to_json(c));
  EXPECT_EQ(r.head_dim, std::optional<std::int64_t>(48));
  EXPECT_TRUE(r.tie_word_embeddings);

  // A config as transformers writes it: unknown fields ignored, absent fields keep the defaults,
  // null optional fields absent, a list of eos ids takes the first.
  write_bytes(p, R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "transformers_version": "4.45.0",
    "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": null, "head_dim": null, "pretraining_tp": 1, "use_cache": true,
    "eos_token_id": [128001, 128008], "pad_token_id": null, "torch_dtype": "bfloat16"})");
  const auto h = io::load_config<nn::LlamaConfig>(p);
  EXPECT_EQ(h.hidden_size, 64);
  EXPECT_EQ(h.num_attention_heads, 8);
  EXPECT_EQ(h.rms_norm_eps, 1e-5);
  EXPECT_FALSE(h.head_dim.has_value());
  EXPECT_EQ(h.resolved_head_dim(), 8);
  EXPECT_EQ(h.eos_token_id, 128001);
  EXPECT_FALSE(h.pad_token_id.has_value());
  EXPECT_EQ(h.vocab_size, nn::LlamaConfig{}.vocab_size);
  EXPECT_EQ(h.intermediate_size, nn::LlamaConfig{}.intermediate_size);
}

TEST_F(IoTest, ConfigErrorsNameFileAndField) {
  const auto p = path("config.json");
  auto expect = [&](const std::string& text, const std::vector<std::string>& parts) {
    write_bytes(p, text);
    bool thrown = false;
    try {
      io::load_config<nn::LlamaConfig>(p);
    } catch (const Error& e) {
      thrown = true;
      for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
    EXPECT_TRUE(thrown) << text;
  };
  expect(R"({"hidden_size": "128"})", {"'hidden_size'", "must be an integer", "\"128\""});
  expect(R"({"hidden_size": 12.5})", {"'hidden_size'", "must be an integer"});
  expect(R"({"hidden_size": -4})", {"'hidden_size'", "must not be negative"});
  expect(R"({"rms_norm_eps": "small"})", {"'rms_norm_eps'", "must be a number"});
  expect(R"({"tie_word_embeddings": 1})", {"'tie_word_embeddings'", "true or false"});
  expect(R"({"hidden_act": 3})", {"'hidden_act'", "must be a string"});
  expect(R"({"head_dim": "64"})", {"'head_dim'", "must be an integer"});
  expect(R"({"vocab_size": 18446744073709551615})", {"'vocab_size'", "does not fit in int64"});
  expect(R"({"model_type": "deepseek_v3"})", {"model_type is \"deepseek_v3\"", "expected \"llama\""});
  expect(R"({"architectures": ["MistralForCausalLM"]})", {"MistralForCausalLM", "LlamaForCausalLM"});
  expect(R"({"rope_scaling": {"type": "llama3", "factor": 8.0}})", {"rope_scaling", "not supported"});
  expect(R"([1, 2])", {"expected a JSON object"});
  expect(R"({"hidden_size": 12)", {"not valid JSON"});
  EXPECT_KILN_ERROR(io::load_config<nn::LlamaConfig>(path("none.json")), "none.json", "cannot open");
}

// ---- checkpoints -----------------------------------------------------------------------------------

namespace {

// A small module tree: parameters, a buffer, a nested child (dotted names).
template <class T>
class TinyBlock : public nn::Module<T> {
 public:
  TinyBlock(std::int64_t in, std::int64_t out, Generator& gen)
      : weight(randn<T>({out, in}, 0.0, 0.5, Device::cpu(), gen)), bias(randn<T>({out}, 0.0, 0.1, Device::cpu(), gen)) {
    this->register_parameter("weight", &weight);
    this->register_parameter("bias", &bias);
  }
  Tensor<T> forward(const Tensor<T>& x) const { return matmul(x, transpose(weight, 0, 1)) + bias; }
  Tensor<T> weight, bias;
};

template <class T>
class TinyModel : public nn::Module<T> {
 public:
  // extra / hidden_out vary the tensor set and shapes, to make files that do not fit.
  TinyModel(Generator& gen, std::int64_t hidden_out = 5, bool extra = false)
      : embed(randn<T>({7, 4}, 0.0, 1.0, Device::cpu(), gen)),
        counts(zeros<T>({3})),
        block(4, hidden_out, gen),
        head(hidden_out, 2, gen) {
    this->register_parameter("embed.weight", &embed);
    this->register_buffer("counts", &counts);
    this->register_module("block", &block);
    this->register_module("head", &head);
    if (extra) {
      scale = ones<T>({2});
      this->register_parameter("scale", &scale);
    }
  }
  Tensor<T> forward(const Tensor<T>& x) const { return head.forward(tanh(block.forward(x))); }
  Tensor<T> embed, counts, scale;
  TinyBlock<T> block, head;
};

template <class T>
std::map<std::string, std::string> state_bytes(const nn::Module<T>& m) {
  std::map<std::string, std::string> out;
  for (auto& [name, t] : m.state()) out[name] = bytes_of(t);
  return out;
}

}  // namespace

TEST_F(IoTest, ModelCheckpointRoundTripIsBitExact) {
  Generator g1{1, 0}, g2{2, 0};
  TinyModel<float> a(g1), b(g2);
  a.counts = tensor<float>({1, 2, 3}, {3});
  nn::LlamaConfig config;
  config.vocab_size = 7;
  const auto d = path("model");
  io::save_model(d, a, config);
  EXPECT_TRUE(fs::exists(d + "/model.safetensors"));
  EXPECT_EQ(io::load_model_config<nn::LlamaConfig>(d).vocab_size, 7);
  EXPECT_EQ(io::load_model_type(d), "llama");  // which model to build before loading
  io::save_model(path("model-v3"), a, nn::DeepseekV3Config{});
  EXPECT_EQ(io::load_model_type(path("model-v3")), "deepseek_v3");
  EXPECT_KILN_ERROR(io::load_model_type(path("absent")), "absent");
  EXPECT_EQ(io::json::parse(read_bytes(d + "/config.json"))["torch_dtype"], "float32");
  EXPECT_EQ(io::load_safetensors(d + "/model.safetensors").metadata().at("format"), "pt");
  EXPECT_EQ(io::load_safetensors(d + "/model.safetensors").names(),
            (std::vector<std::string>{"block.bias", "block.weight", "counts", "embed.weight", "head.bias", "head.weight"}));
  ASSERT_NE(state_bytes(a), state_bytes(b));

  const Tensor<float> held = b.block.weight;  // e.g. an optimizer's handle
  const auto report = io::load_model(d, b);
  EXPECT_EQ(report.loaded.size(), 6u);
  EXPECT_TRUE(report.missing.empty() && report.unknown.empty());
  EXPECT_EQ(state_bytes(b), state_bytes(a));
  EXPECT_EQ(held.data(), b.block.weight.data());  // loaded in place
  EXPECT_TRUE(b.block.weight.requires_grad());
  EXPECT_FALSE(b.counts.requires_grad());
}

TEST_F(IoTest, ModelCheckpointErrorsLeaveTheModelUnchanged) {
  Generator g{3, 0};
  TinyModel<float> saved(g);
  const auto p = path("m.safetensors");
  io::save_state(p, saved);

  TinyModel<float> wider(g, 6);
  const auto before = state_bytes(wider);
  EXPECT_KILN_ERROR(io::load_state(p, wider), "load_state", p, "'block.weight': file has [5, 4], model has [6, 4]",
                    "'block.bias': file has [5], model has [6]", "'head.weight': file has [2, 5], model has [2, 6]");
  EXPECT_EQ(state_bytes(wider), before);

  TinyModel<float> more(g, 5, true);
  EXPECT_KILN_ERROR(io::load_state(p, more), p, "1 model tensor(s) are missing from the file: scale");
  const auto report = io::load_state(p, more, {true, true, false});
  EXPECT_EQ(report.missing, std::vector<std::string>{"scale"});
  EXPECT_EQ(more.scale.to_vector(), (std::vector<float>{1, 1}));
  EXPECT_EQ(state_bytes(more).at("head.weight"), state_bytes(saved).at("head.weight"));

  io::save_state(p, more);
  TinyModel<float> fewer(g);
  const auto fewer_before = state_bytes(fewer);
  EXPECT_KILN_ERROR(io::load_state(p, fewer), p, "1 tensor(s) in the file are not in the model: scale");
  EXPECT_EQ(state_bytes(fewer), fewer_before);
  EXPECT_EQ(io::load_state(p, fewer, {true, false, true}).unknown, std::vector<std::string>{"scale"});
}

// A bf16 checkpoint loads into a float model (values converted exactly), unless conversion is off.
TEST_F(IoTest, ModelCheckpointDtypeConversion) {
  Generator g{4, 0};
  TinyModel<bf16> half(g);
  const auto p = path("half.safetensors");
  io::save_state(p, half);
  TinyModel<float> full_model(g);
  EXPECT_KILN_ERROR(io::load_state(p, full_model, {false, false, false}), p, "'block.weight': file dtype BF16",
                    "model dtype F32", "conversion not allowed");
  io::load_state(p, full_model);
  const auto h = half.block.weight.to_vector();
  const auto f = full_model.block.weight.to_vector();
  for (std::size_t i = 0; i < h.size(); ++i) ASSERT_EQ(f[i], static_cast<float>(h[i]));
}

namespace {

// Deterministic training: every step draws a batch from `gen`, so resuming needs its state.
template <class T>
struct BasicTrainRun {
  Generator gen{99, 0};
  TinyModel<T> model;
  optim::AdamW<T> opt;
  BasicTrainRun() : model(gen), opt(model.parameters(), {0.05, 0.9, 0.95, 1e-8, 0.1}) {}
  T step() {
    const auto x = randn<T>({6, 4}, 0.0, 1.0, Device::cpu(), gen);
    const auto y = randn<T>({6, 2}, 0.0, 1.0, Device::cpu(), gen);
    auto loss = mean(pow(model.forward(x) - y, 2.0));
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss.item();
  }
};
using TrainRun = BasicTrainRun<float>;

// Trains `run` one step and saves its checkpoint (step 1) to `dir`.
void train_one_step_and_save(TrainRun& run, const std::string& dir, const nn::LlamaConfig& config) {
  run.step();
  io::TrainerState s;
  s.step = 1;
  io::save_training_checkpoint(dir, run.model, config, run.opt, s);
}

}  // namespace

TEST_F(IoTest, TrainingCheckpointResumesBitForBit) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  TrainRun a;
  for (int i = 0; i < 3; ++i) a.step();
  io::TrainerState saved;
  saved.step = 3;
  saved.rng = a.gen;
  saved.data_position = 1234567;
  saved.lr = 0.1 + 0.2;
  saved.lr_schedule = {{"warmup", 10}, {"total", 100}, {"min_lr", 3e-5}};
  saved.extra = {{"tokens_seen", 4096}};
  io::save_training_checkpoint(d, a.model, config, a.opt, saved);
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer.json"})
    EXPECT_TRUE(fs::exists(d + "/" + f)) << f;
  EXPECT_EQ(io::load_safetensors(d + "/optimizer.safetensors").metadata().at("step"), "3");
  EXPECT_TRUE(io::load_safetensors(d + "/optimizer.safetensors").contains("block.weight.exp_avg_sq"));
  std::vector<float> uninterrupted;
  for (int i = 0; i < 4; ++i) uninterrupted.push_back(a.step());

  TrainRun b;  // different state until the checkpoint is loaded
  b.step();
  const io::TrainerState st = io::load_training_checkpoint(d, b.model, config, b.opt);
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.rng.seed, saved.rng.seed);
  EXPECT_EQ(st.rng.offset, saved.rng.offset);
  EXPECT_EQ(st.data_position, 1234567);
  EXPECT_EQ(st.lr, 0.1 + 0.2);
  EXPECT_EQ(st.lr_schedule, saved.lr_schedule);
  EXPECT_EQ(st.extra, saved.extra);
  EXPECT_EQ(b.opt.steps(), 3);
  b.gen = st.rng;
  std::vector<float> resumed;
  for (int i = 0; i < 4; ++i) resumed.push_back(b.step());
  EXPECT_EQ(bytes_of(tensor<float>(resumed, {4})), bytes_of(tensor<float>(uninterrupted, {4})));
  EXPECT_EQ(state_bytes(b.model), state_bytes(a.model));
}

// bf16 parameters train through FP32 master weights: the checkpoint keeps them, so the resumed
// run matches even where the bf16 parameters alone would not.
TEST_F(IoTest, TrainingCheckpointKeepsMasterWeights) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  BasicTrainRun<bf16> a;
  ASSERT_FALSE(a.opt.master_weights().empty());
  for (int i = 0; i < 2; ++i) a.step();
  io::TrainerState saved;
  saved.rng = a.gen;
  io::save_training_checkpoint(d, a.model, config, a.opt, saved);
  EXPECT_EQ(io::load_safetensors(d + "/optimizer.safetensors").entry("block.weight.master").dtype, DType::f32);
  EXPECT_EQ(io::load_safetensors(d + "/model.safetensors").entry("block.weight").dtype, DType::bf16);
  std::vector<bf16> uninterrupted;
  for (int i = 0; i < 3; ++i) uninterrupted.push_back(a.step());

  BasicTrainRun<bf16> b;
  b.gen = io::load_training_checkpoint(d, b.model, config, b.opt).rng;
  std::vector<bf16> resumed;
  for (int i = 0; i < 3; ++i) resumed.push_back(b.step());
  EXPECT_EQ(bytes_of(tensor<bf16>(resumed, {3})), bytes_of(tensor<bf16>(uninterrupted, {3})));
  EXPECT_EQ(state_bytes(b.model), state_bytes(a.model));
  EXPECT_EQ(bytes_of(b.opt.master_weights()[0]), bytes_of(a.opt.master_weights()[0]));

  // An optimizer without master weights does not expect them.
  BasicTrainRun<bf16> c;
  optim::AdamW<bf16> plain(c.model.parameters(), {0.05, 0.9, 0.95, 1e-8, 0.1, false});
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, c.model, config, plain), "optimizer.safetensors", "block.weight.master",
                    "match no optimizer parameter");
}

TEST_F(IoTest, TrainingCheckpointWriteIsAtomic) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  TrainRun a;
  train_one_step_and_save(a, d, config);
  const std::string model1 = read_bytes(d + "/model.safetensors");

  // A second save replaces the first as a whole; the temporary directory is gone.
  a.step();
  io::TrainerState s2;
  s2.step = 2;
  io::save_training_checkpoint(d, a.model, config, a.opt, s2);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt"});
  const std::string model2 = read_bytes(d + "/model.safetensors");
  EXPECT_NE(model2, model1);

  // A save that fails midway (a tensor's device copy throws after other files were written)
  // leaves the last good checkpoint as it was.
  {
    FailingDevice device;
    Generator g{5, 0};
    TinyModel<float> broken(g);
    broken.counts = Tensor<float>({3}, Device::cuda(0));
    EXPECT_KILN_ERROR(io::save_model(d, broken, config), "simulated device copy failure");
  }
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt"});
  EXPECT_EQ(read_bytes(d + "/model.safetensors"), model2);
  TrainRun c;
  EXPECT_EQ(io::load_training_checkpoint(d, c.model, config, c.opt).step, 2);

  // A crash between the two renames of the fallback swap leaves the previous directory as
  // "<dir>.old": loading finds it, and the next save cleans up.
  fs::rename(d, d + ".old");
  TrainRun e;
  EXPECT_EQ(io::load_training_checkpoint(d, e.model, config, e.opt).step, 2);
  io::save_training_checkpoint(d, a.model, config, a.opt, s2);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt"});
}

TEST_F(IoTest, CorruptTrainingCheckpointsAreErrors) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  TrainRun a;
  train_one_step_and_save(a, d, config);
  const std::string opt_bytes = read_bytes(d + "/optimizer.safetensors");
  const std::string trainer_text = read_bytes(d + "/trainer.json");

  TrainRun b;
  const auto before = state_bytes(b.model);
  write_bytes(d + "/optimizer.safetensors", opt_bytes.substr(0, opt_bytes.size() - 5));
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, b.model, config, b.opt), "optimizer.safetensors");
  EXPECT_EQ(state_bytes(b.model), before);  // nothing loaded
  EXPECT_EQ(b.opt.steps(), 0);
  write_bytes(d + "/optimizer.safetensors", opt_bytes);

  write_bytes(d + "/trainer.json", trainer_text.substr(0, trainer_text.size() / 2));
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, b.model, config, b.opt), "trainer.json", "not valid JSON");
  write_bytes(d + "/trainer.json", R"({"kiln_checkpoint_version": 1, "step": -1})");
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, b.model, config, b.opt), "trainer.json", "\"step\"", "non-negative");
  write_bytes(d + "/trainer.json", R"({"kiln_checkpoint_version": 1, "step": 1, "rng": {"seed": 1}})");
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, b.model, config, b.opt), "trainer.json", "missing \"rng.offset\"");
  write_bytes(d + "/trainer.json", trainer_text);

  // A model of another shape: the error names the tensor and both shapes.
  Generator g{6, 0};
  TinyModel<float> wider(g, 6);
  optim::AdamW<float> opt(wider.parameters());
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, wider, config, opt), "'block.weight': file has [5, 4], model has [6, 4]");
  EXPECT_EQ(state_bytes(b.model), before);
  EXPECT_EQ(io::load_training_checkpoint(d, b.model, config, b.opt).step, 1);
  EXPECT_EQ(state_bytes(b.model), state_bytes(a.model));
}

// Resuming with another config would train a different model silently: every differing field is
// named, and nothing is loaded.
TEST_F(IoTest, ResumeRefusesACheckpointOfAnotherConfig) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  TrainRun a;
  train_one_step_and_save(a, d, config);
  TrainRun b;
  const auto before = state_bytes(b.model);
  nn::LlamaConfig other = config;
  other.rope_theta = 500000.0;
  other.rms_norm_eps = 1e-5;
  EXPECT_KILN_ERROR(io::load_training_checkpoint(d, b.model, other, b.opt), "load_training_checkpoint", "config.json",
                    "differs from the model's in 2 field(s)", "rope_theta (checkpoint 10000.0, model 500000.0)",
                    "rms_norm_eps (checkpoint 1e-06, model 1e-05)");
  EXPECT_EQ(state_bytes(b.model), before);
  EXPECT_EQ(b.opt.steps(), 0);
  EXPECT_EQ(io::load_training_checkpoint(d, b.model, config, b.opt).step, 1);
}

// trainer.json's free-form fields are written as JSON: a string that is not UTF-8 fails the save
// with a kiln::Error (not nlohmann's exception), and the previous checkpoint stays.
TEST_F(IoTest, TrainingCheckpointWithInvalidUtf8FailsCleanly) {
  nn::LlamaConfig config;
  const auto d = path("ckpt");
  TrainRun a;
  train_one_step_and_save(a, d, config);
  io::TrainerState s;
  s.step = 2;
  s.extra = {{"note", "caf\xe9"}};  // Latin-1, not UTF-8
  EXPECT_KILN_ERROR(io::save_training_checkpoint(d, a.model, config, a.opt, s), "trainer.json", "valid UTF-8");
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt"});
  TrainRun b;
  EXPECT_EQ(io::load_training_checkpoint(d, b.model, config, b.opt).step, 1);
}
