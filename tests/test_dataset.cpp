// The toy datasets (shape, labels, determinism, geometry), Dataset::validate's errors and loading
// datasets from .npy files.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/error.hpp"
#include "test_util.hpp"

namespace {

using cufm::test::error_of;
using cufm::test::TempDir;
using ::testing::HasSubstr;

int expected_classes(const std::string& name) {
  if (name == "checkerboard" || name == "8gaussians") return 8;
  if (name == "rings") return 4;
  return 2;
}

TEST(Toys, NamesAreTheFiveDocumented) {
  EXPECT_EQ(cufm::toy_names(),
            (std::vector<std::string>{"checkerboard", "8gaussians", "moons", "spirals", "rings"}));
}

TEST(Toys, ShapeLabelsAndRange) {
  const int64_t n = 20000;
  for (const std::string& name : cufm::toy_names()) {
    SCOPED_TRACE(name);
    const cufm::Dataset d = cufm::make_toy(name, n, 7);
    EXPECT_EQ(d.name, name);
    EXPECT_EQ(d.n, n);
    EXPECT_EQ(d.dim, 2);
    ASSERT_EQ(d.x.size(), static_cast<size_t>(2 * n));
    ASSERT_EQ(d.labels.size(), static_cast<size_t>(n));
    EXPECT_EQ(d.num_classes, expected_classes(name));
    EXPECT_NO_THROW(d.validate());
    // Every class is used, and the points fill the plot's default frame without leaving it.
    std::vector<int64_t> per_class(d.num_classes, 0);
    for (const int32_t l : d.labels) ++per_class[l];
    for (int c = 0; c < d.num_classes; ++c) {
      EXPECT_GT(per_class[c], n / d.num_classes / 2) << "class " << c;
    }
    float lo = 0.0f, hi = 0.0f;
    for (const float v : d.x) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    EXPECT_GT(lo, -4.5f);
    EXPECT_LT(hi, 4.5f);
    EXPECT_GT(hi - lo, 4.0f);
  }
}

TEST(Toys, DeterministicInSeedAndPrefixStable) {
  for (const std::string& name : cufm::toy_names()) {
    SCOPED_TRACE(name);
    const cufm::Dataset a = cufm::make_toy(name, 1000, 42);
    const cufm::Dataset b = cufm::make_toy(name, 1000, 42);
    const cufm::Dataset c = cufm::make_toy(name, 1000, 43);
    const cufm::Dataset prefix = cufm::make_toy(name, 10, 42);
    EXPECT_EQ(0, std::memcmp(a.x.data(), b.x.data(), a.x.size() * sizeof(float)));
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_NE(0, std::memcmp(a.x.data(), c.x.data(), a.x.size() * sizeof(float)));
    // Point i depends on (seed, i) only.
    EXPECT_EQ(0, std::memcmp(a.x.data(), prefix.x.data(), prefix.x.size() * sizeof(float)));
  }
}

// flow_matching's checkerboard: its unscaled coordinates divided by 0.45 (one rounding, which keeps
// their order), so each point lies in the square of side 1/0.45 its unscaled cell names.
TEST(Toys, CheckerboardOccupiesExactlyTheEightSquares) {
  const cufm::Dataset d = cufm::make_toy("checkerboard", 50000, 3);
  // The square boundaries k / 0.45 for k = -2..2, rounded as the data is.
  float edge[5];
  for (int k = -2; k <= 2; ++k) edge[k + 2] = static_cast<float>(k) / 0.45f;
  const auto cell = [&](float v) {  // -2..1: the unscaled floor
    int c = -2;
    for (int k = 1; k <= 3; ++k) c += v >= edge[k] ? 1 : 0;
    return c;
  };
  std::set<std::pair<int, int>> cells;
  std::set<int> labels_seen;
  for (int64_t i = 0; i < d.n; ++i) {
    const float x = d.x[2 * i], y = d.x[2 * i + 1];
    ASSERT_GE(x, edge[0]);
    ASSERT_LT(x, edge[4]);
    ASSERT_GE(y, edge[0]);
    ASSERT_LT(y, edge[4]);
    const int col = cell(x), row = cell(y);
    ASSERT_EQ(((col + row) % 2 + 2) % 2, 0)
        << "point " << i << " (" << x << ", " << y << ") in an empty square";
    // Label: column * 2 + (upper of the column's two squares).
    const int upper = row >= (col % 2 == 0 ? 0 : 1) ? 1 : 0;
    ASSERT_EQ(d.labels[i], (col + 2) * 2 + upper) << "point " << i;
    cells.insert({col, row});
    labels_seen.insert(d.labels[i]);
  }
  EXPECT_EQ(cells.size(), 8u);
  EXPECT_EQ(labels_seen.size(), 8u);
  // The extent flow_matching's plots show: +-2 / 0.45 = +-4.44.
  EXPECT_NEAR(edge[4], 4.4444f, 1e-4f);
}

TEST(Toys, LabelsMatchGeometry) {
  // 8gaussians: the label is the nearest mode; rings: the label is the nearest radius.
  const cufm::Dataset g = cufm::make_toy("8gaussians", 5000, 1);
  int wrong = 0;
  for (int64_t i = 0; i < g.n; ++i) {
    const double angle = std::atan2(g.x[2 * i + 1], g.x[2 * i]);
    const int nearest = static_cast<int>(std::lround(angle / (M_PI / 4.0)) + 8) % 8;
    wrong += nearest != g.labels[i];
  }
  EXPECT_LT(wrong, g.n / 100);
  const cufm::Dataset r = cufm::make_toy("rings", 5000, 1);
  wrong = 0;
  for (int64_t i = 0; i < r.n; ++i) {
    const double radius = std::hypot(r.x[2 * i], r.x[2 * i + 1]);
    wrong += static_cast<int>(std::lround(radius / 0.75)) - 1 != r.labels[i];
  }
  EXPECT_LT(wrong, r.n / 100);
}

TEST(Toys, BadArgumentsThrow) {
  const std::string unknown = error_of([] { cufm::make_toy("swissroll", 10, 0); });
  EXPECT_THAT(unknown, HasSubstr("swissroll"));
  EXPECT_THAT(unknown, HasSubstr("checkerboard, 8gaussians, moons, spirals, rings"));
  EXPECT_THAT(error_of([] { cufm::make_toy("moons", 0, 0); }), HasSubstr("n must be"));
  EXPECT_THAT(error_of([] { cufm::make_toy("moons", -5, 0); }), HasSubstr("got -5"));
}

cufm::Dataset small_set() {
  cufm::Dataset d;
  d.name = "small";
  d.n = 3;
  d.dim = 2;
  d.x = {0.f, 1.f, 2.f, 3.f, 4.f, 5.f};
  d.labels = {0, 1, 2};
  d.num_classes = 3;
  return d;
}

TEST(Validate, AcceptsAGoodSet) {
  EXPECT_NO_THROW(small_set().validate());
  cufm::Dataset unlabelled = small_set();
  unlabelled.labels.clear();
  unlabelled.num_classes = 0;
  EXPECT_NO_THROW(unlabelled.validate());
}

TEST(Validate, NamesEachProblem) {
  cufm::Dataset d = small_set();
  d.n = 0;
  d.x.clear();
  d.labels.clear();
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("is empty"));

  d = small_set();
  d.x.pop_back();
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("x holds 5 floats but n * dim = 3 * 2 = 6"));

  d = small_set();
  d.x[3] = std::nanf("");
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("(row 1, col 1) is nan"));
  d.x[3] = INFINITY;
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("(row 1, col 1) is inf"));

  d = small_set();
  d.labels[2] = 3;
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("label 3 at row 2 is outside [0, 3)"));
  d.labels[2] = -1;
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("label -1 at row 2"));

  d = small_set();
  d.labels.pop_back();
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("2 labels for 3 points"));

  d = small_set();
  d.labels.clear();
  EXPECT_THAT(error_of([&] { d.validate(); }), HasSubstr("no labels"));
}

TEST(NpyDataset, LoadsDataAndLabels) {
  TempDir dir;
  const std::vector<float> x = {1.5f, -2.f, 0.25f, 3.f, 7.f, -8.f};
  const std::vector<int32_t> labels = {2, 0, 1};
  cufm::write_npy(dir.file("x.npy"), x.data(), {3, 2});
  cufm::write_npy(dir.file("y.npy"), labels.data(), {3});

  const cufm::Dataset d = cufm::load_npy_dataset(dir.file("x.npy"), dir.file("y.npy"));
  EXPECT_EQ(d.n, 3);
  EXPECT_EQ(d.dim, 2);
  EXPECT_EQ(d.x, x);
  EXPECT_EQ(d.labels, labels);
  EXPECT_EQ(d.num_classes, 3);

  EXPECT_EQ(cufm::load_npy_dataset(dir.file("x.npy"), dir.file("y.npy"), 10).num_classes, 10);
  const cufm::Dataset unlabelled = cufm::load_npy_dataset(dir.file("x.npy"));
  EXPECT_FALSE(unlabelled.labelled());
  EXPECT_EQ(unlabelled.num_classes, 0);
}

TEST(NpyDataset, RejectsBadInput) {
  TempDir dir;
  const std::vector<float> x = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  const std::vector<int32_t> labels = {0, 1, 2};
  cufm::write_npy(dir.file("x.npy"), x.data(), {3, 2});
  cufm::write_npy(dir.file("x1d.npy"), x.data(), {6});
  cufm::write_npy(dir.file("y.npy"), labels.data(), {3});
  cufm::write_npy(dir.file("y2.npy"), labels.data(), {2});
  cufm::write_npy(dir.file("int_x.npy"), labels.data(), {3, 1});
  const std::vector<float> nan_x = {1.f, NAN, 3.f, 4.f};
  cufm::write_npy(dir.file("nan.npy"), nan_x.data(), {2, 2});
  const std::vector<int32_t> negative = {0, -1, 2};
  cufm::write_npy(dir.file("neg.npy"), negative.data(), {3});

  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("missing.npy")); }), HasSubstr("missing.npy"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x1d.npy")); }), HasSubstr("2-D array"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("int_x.npy")); }),
              HasSubstr("float32 or float64"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("nan.npy")); }),
              HasSubstr("(row 0, col 1) is nan"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x.npy"), dir.file("y2.npy")); }),
              HasSubstr("got (2,)"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x.npy"), dir.file("x.npy")); }),
              HasSubstr("labels must be integers"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x.npy"), dir.file("neg.npy")); }),
              HasSubstr("label -1 at row 1"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x.npy"), dir.file("y.npy"), 2); }),
              HasSubstr("label 2 at row 2 is outside [0, 2)"));
  EXPECT_THAT(error_of([&] { cufm::load_npy_dataset(dir.file("x.npy"), "", 4); }),
              HasSubstr("without a labels"));
}

}  // namespace
