// .npy reading and writing: round trips, every supported dtype from hand-made files, and a clear
// error for each kind of bad file; a failed write never leaves a damaged or partial target.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/error.hpp"
#include "test_util.hpp"

namespace {

using cufm::test::error_of;
using cufm::test::read_bytes;
using cufm::test::TempDir;
using cufm::test::write_bytes;
using ::testing::HasSubstr;

// A .npy file built byte by byte: magic, version, header length (2 bytes in 1.0, 4 after), header.
std::string npy_bytes(int major, const std::string& dict, const std::string& data) {
  std::string header = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  const uint32_t len = static_cast<uint32_t>(header.size());
  for (size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((len >> (8 * i)) & 0xFF);
  return out + header + data;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string dict(const std::string& descr, const std::string& shape, const char* fortran = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

TEST(Npy, FloatRoundTripIsExact) {
  TempDir dir;
  std::vector<float> x(3 * 5);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = std::ldexp(static_cast<float>(i) - 7.3f, static_cast<int>(i) - 8);
  x[4] = -0.0f;
  x[5] = 1e-40f;  // subnormal
  cufm::write_npy(dir.file("a.npy"), x.data(), {3, 5});
  const cufm::NpyArray a = cufm::read_npy(dir.file("a.npy"));
  EXPECT_EQ(a.dtype, "<f4");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 5}));
  ASSERT_EQ(a.values.size(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float back = static_cast<float>(a.values[i]);
    EXPECT_EQ(0, std::memcmp(&back, &x[i], sizeof back)) << "element " << i;
  }
  // NumPy aligns the data to 64 bytes.
  EXPECT_EQ((read_bytes(dir.file("a.npy")).size() - x.size() * 4) % 64, 0u);
}

TEST(Npy, IntRoundTripAndShapes) {
  TempDir dir;
  const std::vector<int32_t> v = {0, -1, 2147483647, -2147483647 - 1, 42, 7};
  cufm::write_npy(dir.file("v.npy"), v.data(), {6});
  cufm::NpyArray a = cufm::read_npy(dir.file("v.npy"));
  EXPECT_EQ(a.dtype, "<i4");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{6}));
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(a.values[i], static_cast<double>(v[i]));
  EXPECT_THAT(read_bytes(dir.file("v.npy")), HasSubstr("'shape': (6,)"));

  cufm::write_npy(dir.file("m.npy"), v.data(), {1, 2, 3});
  EXPECT_EQ(cufm::read_npy(dir.file("m.npy")).shape, (std::vector<int64_t>{1, 2, 3}));
  cufm::write_npy(dir.file("e.npy"), static_cast<const float*>(nullptr), {0, 2});
  a = cufm::read_npy(dir.file("e.npy"));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{0, 2}));
  EXPECT_TRUE(a.values.empty());
}

TEST(Npy, ReadsEveryDtypeFromHandMadeFiles) {
  TempDir dir;
  const auto check = [&](const std::string& descr, const std::string& data, const std::vector<double>& want,
                         int major = 1) {
    SCOPED_TRACE(descr + " v" + std::to_string(major));
    const std::string path = dir.file("t.npy");
    write_bytes(path, npy_bytes(major, dict(descr, "(" + std::to_string(want.size()) + ",)"), data));
    const cufm::NpyArray a = cufm::read_npy(path);
    EXPECT_EQ(a.dtype, descr);
    EXPECT_EQ(a.values, want);
  };
  check("<f8", raw(std::vector<double>{0.1, -1e300, 3.5}), {0.1, -1e300, 3.5});
  check("<f8", raw(std::vector<double>{2.5}), {2.5}, 2);
  check("<f8", raw(std::vector<double>{-2.5}), {-2.5}, 3);
  check("<f4", raw(std::vector<float>{0.5f, -3.f}), {0.5, -3.0});
  check("|i1", raw(std::vector<int8_t>{-128, 127}), {-128, 127});
  check("<i1", raw(std::vector<int8_t>{-3}), {-3});
  check("|u1", raw(std::vector<uint8_t>{0, 255}), {0, 255});
  check("<u1", raw(std::vector<uint8_t>{9}), {9});
  check("<i2", raw(std::vector<int16_t>{-32768, 5}), {-32768, 5});
  check("<u2", raw(std::vector<uint16_t>{65535}), {65535});
  check("<i4", raw(std::vector<int32_t>{-70000}), {-70000});
  check("<u4", raw(std::vector<uint32_t>{4000000000u}), {4000000000.0});
  check("<i8", raw(std::vector<int64_t>{-(int64_t{1} << 40), 3}), {-1099511627776.0, 3});
  check("<u8", raw(std::vector<uint64_t>{uint64_t{1} << 63}), {9223372036854775808.0});
  check("|b1", std::string("\x01\x00\x01", 3), {1, 0, 1});

  // A 2-D float64 array with a double-quoted, comma-free header as other writers produce.
  write_bytes(dir.file("q.npy"), npy_bytes(1, "{\"descr\":\"<f8\",\"shape\":(2,2),\"fortran_order\":False}",
                                           raw(std::vector<double>{1, 2, 3, 4})));
  const cufm::NpyArray q = cufm::read_npy(dir.file("q.npy"));
  EXPECT_EQ(q.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(q.values, (std::vector<double>{1, 2, 3, 4}));

  // A scalar: shape ().
  write_bytes(dir.file("s.npy"), npy_bytes(1, dict("<f4", "()"), raw(std::vector<float>{6.f})));
  const cufm::NpyArray s = cufm::read_npy(dir.file("s.npy"));
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.values, std::vector<double>{6.0});
}

TEST(Npy, BadFilesThrowClearErrors) {
  TempDir dir;
  const std::string good = npy_bytes(1, dict("<f4", "(4,)"), raw(std::vector<float>{1, 2, 3, 4}));
  const auto error_for = [&](const std::string& bytes) {
    const std::string path = dir.file("bad.npy");
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { cufm::read_npy(path); });
    EXPECT_THAT(msg, HasSubstr(path));  // every message names the file
    return msg;
  };

  EXPECT_THAT(error_of([&] { cufm::read_npy(dir.file("none.npy")); }), HasSubstr("No such file"));
  EXPECT_THAT(error_of([&] { cufm::read_npy(dir.path()); }), HasSubstr("not a regular file"));
  EXPECT_THAT(error_for(""), HasSubstr("only 0 bytes"));
  EXPECT_THAT(error_for("PK\x03\x04 this is a zip file, not npy"), HasSubstr("bad magic"));
  std::string v4 = good;
  v4[6] = 4;
  EXPECT_THAT(error_for(v4), HasSubstr("version 4.0"));
  EXPECT_THAT(error_for(good.substr(0, good.size() - 1)), HasSubstr("truncated"));
  EXPECT_THAT(error_for(good.substr(0, good.size() - 16)),
              HasSubstr("needs 16 bytes of data, the file has 0"));
  EXPECT_THAT(error_for(good.substr(0, 40)), HasSubstr("truncated"));
  EXPECT_THAT(error_for(good + "xx"), HasSubstr("2 unexpected bytes"));
  EXPECT_THAT(error_for(npy_bytes(1, dict("<f4", "(2, 2)", "True"), raw(std::vector<float>{1, 2, 3, 4}))),
              HasSubstr("Fortran-order"));
  EXPECT_THAT(error_for(npy_bytes(1, dict(">f4", "(1,)"), "\x3f\x80\x00\x00")), HasSubstr("big-endian"));
  EXPECT_THAT(error_for(npy_bytes(1, dict(">i8", "(1,)"), std::string(8, '\0'))), HasSubstr("big-endian"));
  EXPECT_THAT(error_for(npy_bytes(1, dict("<c8", "(1,)"), std::string(8, '\0'))),
              HasSubstr("unsupported dtype '<c8'"));
  EXPECT_THAT(error_for(npy_bytes(1, dict("<U3", "(1,)"), std::string(12, '\0'))),
              HasSubstr("unsupported dtype"));
  EXPECT_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'shape': (1,), }", std::string(4, '\0'))),
              HasSubstr("no 'fortran_order' key"));
  EXPECT_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), ",
                                  std::string(4, '\0'))),
              HasSubstr("malformed header"));
  EXPECT_THAT(error_for(npy_bytes(1, "not a dict at all", "")), HasSubstr("malformed header"));
  EXPECT_THAT(error_for(npy_bytes(1, dict("<f4", "(-1,)"), "")), HasSubstr("malformed header"));
  EXPECT_THAT(
      error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", std::string(4, '\0'))),
      HasSubstr("malformed header"));
  EXPECT_THAT(error_for(npy_bytes(1, dict("<f4", "'(1,)'"), std::string(4, '\0'))), HasSubstr("wrong type"));
  // A header length that points past the end of the file.
  std::string long_header = good;
  long_header[8] = '\xff';
  long_header[9] = '\xff';
  EXPECT_THAT(error_for(long_header), HasSubstr("truncated"));
}

TEST(Npy, WriteReplacesWholeOrNotAtAll) {
  TempDir dir;
  const std::vector<float> x = {1.f, 2.f};
  const std::string target = dir.file("t.npy");

  // Into a folder that does not exist: throws, creates nothing.
  const std::string missing = dir.file("no/such/dir/t.npy");
  EXPECT_THAT(error_of([&] { cufm::write_npy(missing, x.data(), {2}); }), HasSubstr("no/such/dir/t.npy"));
  EXPECT_TRUE(dir.entries().empty());

  // Over an existing file: replaced whole, no temporary left behind.
  write_bytes(target, "old contents");
  cufm::write_npy(target, x.data(), {2});
  EXPECT_EQ(cufm::read_npy(target).values, (std::vector<double>{1.0, 2.0}));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"t.npy"});

  // Onto a path that is a folder: refused before anything is written; the folder and its contents stay.
  const std::string sub = dir.file("sub");
  ASSERT_EQ(0, mkdir(sub.c_str(), 0755));
  write_bytes(sub + "/keep", "keep");
  EXPECT_THAT(error_of([&] { cufm::write_npy(sub, x.data(), {2}); }), HasSubstr("exists and is a folder"));
  EXPECT_EQ(read_bytes(sub + "/keep"), "keep");
  EXPECT_EQ(dir.entries().size(), 2u);

  // Bad arguments are rejected before the file is touched.
  const std::string before = read_bytes(target);
  EXPECT_THAT(error_of([&] { cufm::write_npy(target, x.data(), {-2}); }), HasSubstr("must be >= 0"));
  EXPECT_THAT(error_of([&] { cufm::write_npy(target, static_cast<const float*>(nullptr), {2}); }),
              HasSubstr("null"));
  EXPECT_EQ(read_bytes(target), before);
  EXPECT_EQ(dir.entries().size(), 2u);
}

}  // namespace
