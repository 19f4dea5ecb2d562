// NumPy .npy files (format versions 1.0, 2.0 and 3.0): little-endian numeric arrays in C order.
//
// Layout: "\x93NUMPY", major, minor, the header length (2 bytes in 1.0, 4 bytes after), a Python
// dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (N, D), } padded with spaces and
// a newline, then the raw array bytes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/error.hpp"
#include "host/atomic_file.hpp"
#include "host/memory.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "cuFM's file formats assume a little-endian host");

namespace cufm {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

enum class Kind { Float, Signed, Unsigned, Bool };

struct DType {
  Kind kind;
  int size;  // bytes per element
};

// The header's dict values: a string, a bool or a tuple of integers.
struct HeaderValue {
  enum class Type { String, Bool, Tuple } type = Type::String;
  std::string text;
  bool flag = false;
  std::vector<int64_t> tuple;
};

// A recursive-descent reader for the small subset of Python literals that .npy headers use.
class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  std::map<std::string, HeaderValue> parse_dict() {
    std::map<std::string, HeaderValue> out;
    expect('{');
    skip_space();
    while (peek() != '}') {
      const std::string key = parse_string();
      expect(':');
      skip_space();
      HeaderValue v;
      const char c = peek();
      if (c == '\'' || c == '"') {
        v.type = HeaderValue::Type::String;
        v.text = parse_string();
      } else if (c == '(') {
        v.type = HeaderValue::Type::Tuple;
        v.tuple = parse_tuple();
      } else if (s_.compare(pos_, 4, "True") == 0) {
        v.type = HeaderValue::Type::Bool;
        v.flag = true;
        pos_ += 4;
      } else if (s_.compare(pos_, 5, "False") == 0) {
        v.type = HeaderValue::Type::Bool;
        v.flag = false;
        pos_ += 5;
      } else {
        fail("unexpected value for key '" + key + "'");
      }
      out[key] = v;
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the closing '}'");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    CUFM_FAIL("'" << path_ << "' is not a valid .npy file: malformed header (" << what << " at character "
                  << pos_ << " of \"" << s_ << "\")");
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }

  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  std::string parse_string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    const size_t end = s_.find(quote, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }

  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> out;
    expect('(');
    skip_space();
    while (peek() != ')') {
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        fail("expected a non-negative integer in the shape");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("shape entry too large");
        v = v * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;  // Python 2's long suffix
      out.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in the shape");
      }
    }
    ++pos_;
    return out;
  }

  const std::string& path_;
  const std::string& s_;
  size_t pos_ = 0;
};

DType parse_descr(const std::string& path, const std::string& descr) {
  const auto unsupported = [&]() {
    CUFM_FAIL("'" << path << "': unsupported dtype '" << descr
                  << "'; cuFM reads little-endian float32/float64 ('<f4', '<f8'), integers ('<i1'..'<i8', "
                     "'<u1'..'<u8') and bool ('|b1'); convert with arr.astype(np.float32)");
  };
  if (descr.size() < 3) unsupported();
  const char order = descr[0];
  const char kind = descr[1];
  const std::string size_text = descr.substr(2);
  if (size_text != "1" && size_text != "2" && size_text != "4" && size_text != "8") unsupported();
  const int size = size_text[0] - '0';
  if (order == '>' && size > 1) {
    CUFM_FAIL("'" << path << "': big-endian data ('" << descr
                  << "') is not supported; convert with arr.astype(arr.dtype.newbyteorder('<'))");
  }
  // One-byte types have no byte order; NumPy writes them with '|'.
  const bool order_ok = order == '<' || (size == 1 && (order == '|' || order == '>' || order == '='));
  if (!order_ok) unsupported();
  switch (kind) {
    case 'f':
      if (size != 4 && size != 8) unsupported();
      return {Kind::Float, size};
    case 'i':
      return {Kind::Signed, size};
    case 'u':
      return {Kind::Unsigned, size};
    case 'b':
      if (size != 1) unsupported();
      return {Kind::Bool, 1};
    default:
      unsupported();
  }
  return {Kind::Float, 4};  // unreachable
}

template <typename T>
double load_as_double(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return static_cast<double>(v);
}

double element_to_double(const DType& t, const char* p) {
  switch (t.kind) {
    case Kind::Float:
      return t.size == 4 ? load_as_double<float>(p) : load_as_double<double>(p);
    case Kind::Bool:
      return *p != 0 ? 1.0 : 0.0;
    case Kind::Signed:
      switch (t.size) {
        case 1:
          return load_as_double<int8_t>(p);
        case 2:
          return load_as_double<int16_t>(p);
        case 4:
          return load_as_double<int32_t>(p);
        default:
          return load_as_double<int64_t>(p);
      }
    default:
      switch (t.size) {
        case 1:
          return load_as_double<uint8_t>(p);
        case 2:
          return load_as_double<uint16_t>(p);
        case 4:
          return load_as_double<uint32_t>(p);
        default:
          return load_as_double<uint64_t>(p);
      }
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) s += ",";
    if (i + 1 < shape.size()) s += " ";
  }
  return s + ")";
}

void write_npy_bytes(const std::string& path, const char* descr, const void* data, size_t item_size,
                     const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (const int64_t d : shape) {
    CUFM_REQUIRE(d >= 0, "write_npy '" << path << "': shape entries must be >= 0, got " << d);
    CUFM_REQUIRE(d == 0 || count <= std::numeric_limits<size_t>::max() / item_size / static_cast<size_t>(d),
                 "write_npy '" << path << "': shape " << shape_text(shape) << " is too large");
    count *= static_cast<size_t>(d);
  }
  CUFM_REQUIRE(count == 0 || data != nullptr, "write_npy '" << path << "': data is null");

  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Pad so that magic + version + length + header is a multiple of 64 (NumPy's alignment).
  const bool v2 = header.size() + 1 + kMagicSize + 4 > 65535;
  const size_t prefix = kMagicSize + 2 + (v2 ? 4 : 2);
  const size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');

  std::string head(kMagic, kMagicSize);
  head.push_back(static_cast<char>(v2 ? 2 : 1));
  head.push_back('\0');
  const uint32_t len = static_cast<uint32_t>(header.size());
  head.push_back(static_cast<char>(len & 0xFF));
  head.push_back(static_cast<char>((len >> 8) & 0xFF));
  if (v2) {
    head.push_back(static_cast<char>((len >> 16) & 0xFF));
    head.push_back(static_cast<char>((len >> 24) & 0xFF));
  }
  head += header;

  detail::AtomicFile out(path);
  out.write(head.data(), head.size());
  out.write(data, count * item_size);
  out.commit();
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  // Opened once, without blocking (a FIFO would block a plain open), and checked through the
  // descriptor: no gap between the check and the read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  CUFM_REQUIRE(fd >= 0, "cannot open .npy file '" << path << "': " << std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  CUFM_REQUIRE(::fstat(fd, &st) == 0, "cannot read .npy file '" << path << "': " << std::strerror(errno));
  CUFM_REQUIRE(S_ISREG(st.st_mode), "cannot read .npy file '" << path << "': not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  uint64_t offset = 0;
  const auto read_bytes = [&](char* dst, uint64_t bytes, const char* what) {
    while (bytes > 0) {
      const ssize_t n = ::pread(fd, dst, static_cast<size_t>(std::min<uint64_t>(bytes, uint64_t{1} << 30)),
                                static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      CUFM_REQUIRE(n > 0, "'" << path << "' is truncated: it ends inside the " << what);
      dst += n;
      offset += static_cast<uint64_t>(n);
      bytes -= static_cast<uint64_t>(n);
    }
  };

  CUFM_REQUIRE(file_size >= kMagicSize + 4,
               "'" << path << "' is not a .npy file: only " << file_size << " bytes");
  char prefix[kMagicSize + 2];
  read_bytes(prefix, sizeof prefix, "magic string");
  CUFM_REQUIRE(std::memcmp(prefix, kMagic, kMagicSize) == 0,
               "'" << path << "' is not a .npy file: bad magic string (expected \\x93NUMPY)");
  const int major = static_cast<unsigned char>(prefix[kMagicSize]);
  const int minor = static_cast<unsigned char>(prefix[kMagicSize + 1]);
  CUFM_REQUIRE(major >= 1 && major <= 3 && minor == 0, "'" << path << "': unsupported .npy format version "
                                                           << major << "." << minor
                                                           << " (cuFM reads 1.0, 2.0 and 3.0)");

  unsigned char len_bytes[4] = {0, 0, 0, 0};
  const int len_size = major == 1 ? 2 : 4;
  read_bytes(reinterpret_cast<char*>(len_bytes), len_size, "header length");
  uint64_t header_len = 0;
  for (int i = len_size - 1; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  const uint64_t data_begin = kMagicSize + 2 + len_size + header_len;
  CUFM_REQUIRE(data_begin <= file_size, "'" << path << "' is truncated: the header claims " << header_len
                                            << " bytes but the file has only " << file_size << " bytes");
  std::string header(header_len, '\0');
  read_bytes(header.data(), header_len, "header");

  const auto dict = HeaderParser(path, header).parse_dict();
  const auto field = [&](const char* key, HeaderValue::Type type) -> const HeaderValue& {
    const auto it = dict.find(key);
    CUFM_REQUIRE(it != dict.end(),
                 "'" << path << "': malformed header: no '" << key << "' key in \"" << header << "\"");
    CUFM_REQUIRE(it->second.type == type, "'" << path << "': malformed header: '" << key
                                              << "' has the wrong type in \"" << header << "\"");
    return it->second;
  };
  const std::string descr = field("descr", HeaderValue::Type::String).text;
  const bool fortran = field("fortran_order", HeaderValue::Type::Bool).flag;
  const std::vector<int64_t> shape = field("shape", HeaderValue::Type::Tuple).tuple;

  const DType type = parse_descr(path, descr);
  CUFM_REQUIRE(!fortran, "'" << path
                             << "': Fortran-order arrays are not supported; save with "
                                "np.save(path, np.ascontiguousarray(arr))");

  uint64_t count = 1;
  for (const int64_t d : shape) {
    CUFM_REQUIRE(d == 0 || count <= (uint64_t{1} << 40) / static_cast<uint64_t>(d),
                 "'" << path << "': shape " << shape_text(shape) << " is too large");
    count *= static_cast<uint64_t>(d);
  }
  const uint64_t data_bytes = count * static_cast<uint64_t>(type.size);
  const uint64_t available = file_size - data_begin;
  CUFM_REQUIRE(available >= data_bytes, "'" << path << "' is truncated: shape " << shape_text(shape)
                                            << " of '" << descr << "' needs " << data_bytes
                                            << " bytes of data, the file has " << available);
  CUFM_REQUIRE(available == data_bytes, "'" << path << "' is corrupt: " << available - data_bytes
                                            << " unexpected bytes after the array data");

  detail::require_memory(detail::add_sat(data_bytes, detail::mul_sat(count, sizeof(double))),
                         "reading '" + path + "' (shape " + shape_text(shape) + ")",
                         "use a smaller file or a machine with more memory");
  std::vector<char> raw(data_bytes);
  read_bytes(raw.data(), data_bytes, "array data");

  NpyArray out;
  out.shape = shape;
  out.dtype = descr;
  out.values.resize(count);
  for (uint64_t i = 0; i < count; ++i) out.values[i] = element_to_double(type, raw.data() + i * type.size);
  return out;
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, "<f4", data, sizeof(float), shape);
}

void write_npy(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, "<i4", data, sizeof(int32_t), shape);
}

}  // namespace cufm
