// safetensors files (Hugging Face's tensor format): read, write, and validate.
//
// Layout: an 8-byte little-endian unsigned header length N; N bytes of UTF-8 JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}                  (metadata optional, strings only)
// then the data: each tensor's elements in row-major order, little-endian, at bytes
// [begin, end) counted from the end of the header. The tensors tile the data exactly: no gaps,
// no overlaps, nothing after the last one (so nothing can hide in a file, and no two names alias
// the same bytes).
//
// Writing pads the header with spaces so the data starts at a multiple of 8 bytes, and lays the
// tensors out by decreasing element size, so every tensor is aligned to its element size (a reader
// may map the file and use the data in place). Files are written atomically (io/file.hpp).
//
// Reading treats the file as untrusted: every length and offset is checked against the file before
// it is used, and each problem is a kiln::Error naming the file and what is wrong.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/core/tensor.hpp"
#include "kiln/io/file.hpp"
#include "kiln/io/json.hpp"

namespace kiln::io {

// Element bytes are copied as they are: the host must store numbers the way the file does.
static_assert(std::endian::native == std::endian::little, "kiln::io supports little-endian hosts only");

// The biggest header accepted (the reference implementation's limit): bounds the memory a
// corrupt length can make a reader allocate.
inline constexpr std::uint64_t kMaxSafetensorsHeader = std::uint64_t(100) << 20;

// safetensors' names of the dtypes kiln holds.
inline const char* safetensors_dtype_name(DType d) {
  switch (d) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::fp8_e4m3: return "F8_E4M3";
    case DType::fp8_e5m2: return "F8_E5M2";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

inline std::optional<DType> safetensors_dtype_from_name(std::string_view s) {
  for (DType d : {DType::f64, DType::f32, DType::f16, DType::bf16, DType::fp8_e4m3, DType::fp8_e5m2, DType::i64,
                  DType::i32, DType::u8, DType::boolean})
    if (s == safetensors_dtype_name(d)) return d;
  return std::nullopt;
}

namespace detail {

template <class T>
struct type_tag {
  using type = T;
};

// Calls f(type_tag<T>{}) with the element type T of runtime tag d.
template <class F>
decltype(auto) visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f64: return f(type_tag<double>{});
    case DType::f32: return f(type_tag<float>{});
    case DType::f16: return f(type_tag<fp16>{});
    case DType::bf16: return f(type_tag<bf16>{});
    case DType::fp8_e4m3: return f(type_tag<fp8_e4m3>{});
    case DType::fp8_e5m2: return f(type_tag<fp8_e5m2>{});
    case DType::i64: return f(type_tag<std::int64_t>{});
    case DType::i32: return f(type_tag<std::int32_t>{});
    case DType::u8: return f(type_tag<std::uint8_t>{});
    case DType::boolean: return f(type_tag<bool>{});
  }
  fail("safetensors", "unknown dtype tag ", static_cast<int>(d));
}

inline void put_u64_le(char* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

inline std::uint64_t get_u64_le(const unsigned char* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return v;
}

}  // namespace detail

// A tensor to write under a name: any element type, device and strides (the file receives a
// row-major copy of its elements). Holds a reference to the tensor, not a copy of the data.
class NamedTensor {
 public:
  using Sink = std::function<void(const void*, std::uint64_t)>;

  template <class T>
  NamedTensor(std::string name, const Tensor<T>& t) : name_(std::move(name)), dtype_(dtype_of<T>) {
    if (!t.defined()) return;
    defined_ = true;
    shape_ = t.shape();
    const Tensor<T> view = t.detach();
    emit_ = [view](const Sink& sink) {
      if (view.device().is_cpu() && view.is_contiguous()) {
        sink(view.data(), static_cast<std::uint64_t>(view.numel()) * sizeof(T));
      } else if constexpr (std::is_same_v<T, bool>) {  // vector<bool> packs bits: gather bytes
        const auto bytes = Tensor<std::uint8_t>::view_of(view.storage(), view.offset(), view.shape(), view.strides())
                               .to_vector();
        sink(bytes.data(), bytes.size());
      } else {
        const std::vector<T> host = view.to_vector();  // any device, any strides
        sink(host.data(), host.size() * sizeof(T));
      }
    };
  }

  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  bool defined() const { return defined_; }
  std::uint64_t nbytes() const { return static_cast<std::uint64_t>(numel_of(shape_)) * static_cast<std::uint64_t>(kiln::dtype_size(dtype_)); }
  // Passes the row-major element bytes to `sink` (in one or more pieces).
  void emit(const Sink& sink) const { emit_(sink); }

 private:
  std::string name_;
  DType dtype_;
  Shape shape_;
  bool defined_ = false;
  std::function<void(const Sink&)> emit_;
};

using Metadata = std::map<std::string, std::string>;

// Writes `tensors` (names unique, not "__metadata__") and optional string metadata to `path`,
// atomically: if anything throws midway (a device copy, a full disk), the previous file at `path`
// is left as it was.
inline void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                             const Metadata& metadata = {}) {
  constexpr const char* op = "safetensors";
  std::set<std::string> names;
  for (const auto& t : tensors) {
    check(!t.name().empty(), op, path, ": a tensor has an empty name");
    check(t.name() != "__metadata__", op, path, ": \"__metadata__\" is reserved and cannot name a tensor");
    check(t.defined(), op, path, ": tensor '", t.name(), "' is undefined");
    check(names.insert(t.name()).second, op, path, ": duplicate tensor name '", t.name(), "'");
  }

  // Larger elements first: with the data 8-byte aligned, every tensor starts on a multiple of its
  // element size. stable_sort keeps the caller's order among equal sizes.
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return kiln::dtype_size(tensors[a].dtype()) > kiln::dtype_size(tensors[b].dtype());
  });

  json header = json::object();
  std::uint64_t offset = 0;
  for (std::size_t i : order) {
    const NamedTensor& t = tensors[i];
    const std::uint64_t end = offset + t.nbytes();
    header[t.name()] = {{"dtype", safetensors_dtype_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::string text = dump_json(header, op, path);  // fails on a name that is not valid UTF-8
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  char length[8];
  detail::put_u64_le(length, text.size());

  AtomicFileWriter out(path, op);
  out.write(length, 8);
  out.write(text);
  for (std::size_t i : order) {
    const NamedTensor& t = tensors[i];
    const std::uint64_t start = out.bytes_written();
    t.emit([&](const void* data, std::uint64_t n) { out.write(data, n); });
    check(out.bytes_written() - start == t.nbytes(), op, path, ": tensor '", t.name(), "' produced ",
          out.bytes_written() - start, " bytes, expected ", t.nbytes());
  }
  out.commit();
}

// One tensor read from a file: its dtype, shape and row-major little-endian element bytes.
struct SafetensorsEntry {
  DType dtype = DType::f32;
  Shape shape;
  std::vector<std::uint8_t> bytes;

  std::int64_t numel() const { return numel_of(shape); }
};

// How get<T>() treats a file dtype that is not T.
//   exact:   an error (the default: what you get is bit for bit what the file holds).
//   convert: floating <- floating, floating <- integer/bool, and integer <- integer (each value
//            range-checked) convert, rounding to nearest even; floating -> integer and anything
//            -> bool stay errors (they would truncate or lose values silently).
enum class Conversion { exact, convert };

// The tensors and metadata of a safetensors file, read and validated whole.
class Safetensors {
 public:
  Safetensors() = default;

  static Safetensors load(const std::string& path);

  const std::string& path() const { return path_; }
  const Metadata& metadata() const { return metadata_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  std::size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  const SafetensorsEntry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("safetensors", path_, ": no tensor named '", name, "'");
    return it->second;
  }

  // A fresh CPU tensor holding tensor `name` as T (see Conversion).
  template <class T>
  Tensor<T> get(const std::string& name, Conversion conversion = Conversion::exact) const;

 private:
  std::string path_;
  Metadata metadata_;
  std::map<std::string, SafetensorsEntry> entries_;
};

inline Safetensors load_safetensors(const std::string& path) { return Safetensors::load(path); }

namespace detail {

// Whether safetensors may convert file dtype `from` into T (see Conversion).
template <class T>
bool convertible_from(DType from) {
  const bool from_floating = from == DType::f64 || from == DType::f32 || from == DType::f16 ||
                             from == DType::bf16 || from == DType::fp8_e4m3 || from == DType::fp8_e5m2;
  if constexpr (std::is_same_v<T, bool>) {
    return from == DType::boolean;
  } else if constexpr (is_floating<T>) {
    return true;
  } else {
    return !from_floating && from != DType::boolean;
  }
}

// Decodes `n` elements of type S from bytes into T (already known to be allowed).
template <class T, class S>
void convert_elements(const std::uint8_t* in, T* out, std::int64_t n, const std::string& path,
                      const std::string& name) {
  for (std::int64_t i = 0; i < n; ++i) {
    S s;
    std::memcpy(&s, in + i * static_cast<std::int64_t>(sizeof(S)), sizeof(S));
    if constexpr (std::is_same_v<S, bool>) {
      out[i] = convert<T>(s ? 1.0 : 0.0);
    } else if constexpr (std::is_integral_v<S> && std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (!std::in_range<T>(s))
        fail("safetensors", path, ": tensor '", name, "' value ", static_cast<std::int64_t>(s), " at element ", i,
             " does not fit in ", dtype_name<T>);
      out[i] = static_cast<T>(s);
    } else {
      out[i] = convert<T>(s);
    }
  }
}

inline std::uint64_t header_uint(const json& v, const std::string& path, const std::string& name, const char* what) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("safetensors", path, ": tensor '", name, "': ", what, " must hold non-negative integers, got ", describe_json(v));
  return v.get<std::uint64_t>();
}

}  // namespace detail

inline Safetensors Safetensors::load(const std::string& path) {
  constexpr const char* op = "safetensors";
  InputFile file(path, op);
  const std::uint64_t size = file.size();
  if (size < 8) fail(op, path, ": file is ", size, " bytes, shorter than the 8-byte header length (truncated?)");
  unsigned char length_bytes[8];
  file.read_at(0, length_bytes, 8);
  const std::uint64_t n = detail::get_u64_le(length_bytes);
  if (n > size - 8)
    fail(op, path, ": header length ", n, " exceeds the ", size - 8, " bytes after the length field (truncated or not a safetensors file?)");
  if (n > kMaxSafetensorsHeader) fail(op, path, ": header length ", n, " exceeds the limit of ", kMaxSafetensorsHeader, " bytes");
  if (n < 2) fail(op, path, ": header length ", n, " is too short for a JSON object");
  std::string text(static_cast<std::size_t>(n), '\0');
  file.read_at(8, text.data(), n);
  if (text[0] != '{') fail(op, path, ": header does not start with '{' (not a safetensors file?)");
  // Depth-limited, duplicate names refused (two names could otherwise claim different bytes, and
  // one reader see a different model than another), in linear time (io/json.hpp).
  const json header = parse_json(text, op, path);
  if (!header.is_object()) fail(op, path, ": header is not a JSON object");

  const std::uint64_t data_start = 8 + n, data_size = size - data_start;
  Safetensors st;
  st.path_ = path;
  struct Range {
    std::uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail(op, path, ": __metadata__ must be an object of strings, got ", info.type_name());
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) fail(op, path, ": __metadata__ value of '", key, "' is a ", value.type_name(), ", not a string");
        st.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!info.is_object()) fail(op, path, ": tensor '", name, "': expected an object, got ", info.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!info.contains(field)) fail(op, path, ": tensor '", name, "' lacks \"", field, "\"");
    const json& dt = info["dtype"];
    if (!dt.is_string()) fail(op, path, ": tensor '", name, "': dtype must be a string, got ", describe_json(dt));
    const auto dtype = safetensors_dtype_from_name(dt.get<std::string>());
    if (!dtype)
      fail(op, path, ": tensor '", name, "': unknown or unsupported dtype ", describe_json(dt),
           " (kiln reads F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, U8, BOOL)");
    const json& sh = info["shape"];
    if (!sh.is_array()) fail(op, path, ": tensor '", name, "': shape must be an array, got ", describe_json(sh));
    SafetensorsEntry e;
    e.dtype = *dtype;
    // Element count without overflow: the product of the non-zero dims must fit in int64 (so
    // numel_of never overflows, even for shapes with a zero dim).
    std::uint64_t product = 1;
    bool has_zero = false;
    for (const json& d : sh) {
      const std::uint64_t dim = detail::header_uint(d, path, name, "shape");
      e.shape.push_back(static_cast<std::int64_t>(dim));
      if (dim == 0) {
        has_zero = true;
      } else if (product > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / dim) {
        fail(op, path, ": tensor '", name, "': shape ", sh.dump(), " has more elements than fit in int64");
      } else {
        product *= dim;
      }
    }
    const std::uint64_t numel = has_zero ? 0 : product;
    const bool too_big = numel > std::numeric_limits<std::uint64_t>::max() / static_cast<std::uint64_t>(kiln::dtype_size(e.dtype));
    const std::uint64_t nbytes = too_big ? 0 : numel * static_cast<std::uint64_t>(kiln::dtype_size(e.dtype));
    const json& off = info["data_offsets"];
    if (!off.is_array() || off.size() != 2)
      fail(op, path, ": tensor '", name, "': data_offsets must be [begin, end], got ", describe_json(off));
    const std::uint64_t begin = detail::header_uint(off[0], path, name, "data_offsets");
    const std::uint64_t end = detail::header_uint(off[1], path, name, "data_offsets");
    if (begin > end) fail(op, path, ": tensor '", name, "': data_offsets [", begin, ", ", end, "] end before they begin");
    if (end > data_size)
      fail(op, path, ": tensor '", name, "': data_offsets [", begin, ", ", end, "] reach beyond the ", data_size,
           " bytes of data (truncated?)");
    if (too_big || nbytes != end - begin)
      fail(op, path, ": tensor '", name, "': shape ", e.shape, " of ", safetensors_dtype_name(e.dtype), " needs ",
           too_big ? std::string("more than 2^64") : std::to_string(nbytes), " bytes but data_offsets [", begin,
           ", ", end, "] hold ", end - begin);
    const auto placed = st.entries_.emplace(name, std::move(e)).first;
    ranges.push_back({begin, end, &placed->first});
  }

  // The ranges must tile [0, data_size): sorted by start, each begins where the previous ended.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  std::uint64_t covered = 0;
  const std::string* previous = nullptr;
  for (const Range& r : ranges) {
    if (r.begin < covered)
      fail(op, path, ": tensors '", *previous, "' and '", *r.name, "' overlap (bytes ", r.begin, " to ", covered, ")");
    if (r.begin > covered)
      fail(op, path, ": bytes ", covered, " to ", r.begin, " of the data belong to no tensor (before '", *r.name, "')");
    covered = r.end;
    previous = r.name;
  }
  if (covered != data_size)
    fail(op, path, ": the last ", data_size - covered, " bytes of data (from byte ", covered, ") belong to no tensor");

  for (const Range& r : ranges) {
    SafetensorsEntry& e = st.entries_.at(*r.name);
    e.bytes.resize(static_cast<std::size_t>(r.end - r.begin));
    file.read_at(data_start + r.begin, e.bytes.data(), r.end - r.begin);
    if (e.dtype == DType::boolean)  // any other byte is not a C++ bool: reading it is undefined
      for (std::size_t i = 0; i < e.bytes.size(); ++i)
        if (e.bytes[i] > 1)
          fail(op, path, ": tensor '", *r.name, "': BOOL element ", i, " is byte ", int(e.bytes[i]), ", not 0 or 1");
  }
  return st;
}

template <class T>
Tensor<T> Safetensors::get(const std::string& name, Conversion conversion) const {
  const SafetensorsEntry& e = entry(name);
  Tensor<T> out(e.shape);
  if (e.dtype == dtype_of<T>) {
    if (!e.bytes.empty()) std::memcpy(static_cast<void*>(out.data()), e.bytes.data(), e.bytes.size());
    return out;
  }
  if (conversion == Conversion::exact)
    fail("safetensors", path_, ": tensor '", name, "' is ", safetensors_dtype_name(e.dtype), " in the file, not ",
         safetensors_dtype_name(dtype_of<T>), " (ask for Conversion::convert to convert)");
  if (!detail::convertible_from<T>(e.dtype))
    fail("safetensors", path_, ": tensor '", name, "' is ", safetensors_dtype_name(e.dtype), " in the file and does not convert to ",
         safetensors_dtype_name(dtype_of<T>), " without losing values");
  detail::visit_dtype(e.dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    detail::convert_elements<T, S>(e.bytes.data(), out.data(), e.numel(), path_, name);
  });
  return out;
}

}  // namespace kiln::io
