// Density pictures: bins the points into a width x height histogram, maps log(1 + count) onto a
// dark-to-bright colour ramp and encodes the RGB image with libpng's simplified API.
#include "host/cli/plot.hpp"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cufm/error.hpp"
#include "host/atomic_file.hpp"

namespace cufm::cli {
namespace {

struct Rgb {
  float r, g, b;
};

// A perceptually ordered ramp from near-black through purple and orange to pale yellow, so empty
// bins recede and the densest modes stand out.
constexpr Rgb kRamp[] = {
    {0, 0, 4},     {31, 12, 72},   {85, 15, 109},  {136, 34, 106},  {186, 54, 85},
    {227, 89, 51}, {249, 140, 10}, {249, 201, 50}, {252, 255, 164},
};
constexpr int kRampStops = sizeof(kRamp) / sizeof(kRamp[0]);

Rgb ramp(float v) {
  v = std::min(std::max(v, 0.0f), 1.0f) * (kRampStops - 1);
  const int i = std::min(static_cast<int>(v), kRampStops - 2);
  const float f = v - static_cast<float>(i);
  const Rgb& a = kRamp[i];
  const Rgb& b = kRamp[i + 1];
  return {a.r + f * (b.r - a.r), a.g + f * (b.g - a.g), a.b + f * (b.b - a.b)};
}

// The [lo, hi] quantiles of one coordinate over the finite points.
void robust_extent(std::vector<float>& v, float& lo, float& hi) {
  const size_t last = v.size() - 1;
  const size_t i_lo = static_cast<size_t>(0.005 * static_cast<double>(last));
  const size_t i_hi = last - i_lo;
  std::nth_element(v.begin(), v.begin() + i_lo, v.end());
  lo = v[i_lo];
  std::nth_element(v.begin(), v.begin() + i_hi, v.end());
  hi = v[i_hi];
}

PlotRange fit_range(const float* xy, int64_t n, int dim, int dx, int dy) {
  std::vector<float> xs, ys;
  for (int64_t i = 0; i < n; ++i) {
    const float x = xy[i * dim + dx], y = xy[i * dim + dy];
    if (std::isfinite(x) && std::isfinite(y)) {
      xs.push_back(x);
      ys.push_back(y);
    }
  }
  if (xs.empty()) return PlotRange{};
  float x_lo, x_hi, y_lo, y_hi;
  robust_extent(xs, x_lo, x_hi);
  robust_extent(ys, y_lo, y_hi);
  // One scale on both axes (circles stay round), 5% margin, at least 1e-3 wide.
  const float half = std::max({x_hi - x_lo, y_hi - y_lo, 1e-3f}) * 0.55f;
  const float cx = 0.5f * (x_lo + x_hi), cy = 0.5f * (y_lo + y_hi);
  return {cx - half, cx + half, cy - half, cy + half};
}

// Encodes w x h RGB pixels with libpng and writes them through a temporary file.
void encode_png(const std::string& path, const std::vector<png_byte>& rgb, int w, int h) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(w);
  image.height = static_cast<png_uint_32>(h);
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  const png_int_32 stride = 3 * w;
  const bool sized = png_image_write_to_memory(&image, nullptr, &size, 0, rgb.data(), stride, nullptr) != 0;
  CUFM_REQUIRE(sized, "plot '" << path << "': PNG encoding failed (" << image.message << ")");
  std::vector<png_byte> encoded(size);
  const bool written =
      png_image_write_to_memory(&image, encoded.data(), &size, 0, rgb.data(), stride, nullptr) != 0;
  png_image_free(&image);
  CUFM_REQUIRE(written, "plot '" << path << "': PNG encoding failed (" << image.message << ")");

  detail::AtomicFile out(path);
  out.write(encoded.data(), size);
  out.commit();
}

void check_size(const std::string& path, const PlotOptions& options) {
  CUFM_REQUIRE(options.width >= 1 && options.width <= 16384 && options.height >= 1 && options.height <= 16384,
               "plot '" << path << "': image size " << options.width << "x" << options.height
                        << " must be within 1..16384 pixels per side");
}

}  // namespace

void check_range(const PlotRange& r) {
  CUFM_REQUIRE(std::isfinite(r.x_min) && std::isfinite(r.x_max) && std::isfinite(r.y_min) &&
                   std::isfinite(r.y_max) && r.x_min < r.x_max && r.y_min < r.y_max,
               "the plot's range x [" << r.x_min << ", " << r.x_max << "], y [" << r.y_min << ", " << r.y_max
                                      << "] must be finite with min < max");
}

PlotStats write_density_png(const std::string& path, const float* xy, int64_t n, int dim,
                            const PlotOptions& options) {
  check_size(path, options);
  CUFM_REQUIRE(dim >= 2, "plot '" << path << "': samples have " << dim
                                  << " dimension(s); a density plot needs at least 2");
  CUFM_REQUIRE(options.dim_x >= 0 && options.dim_x < dim && options.dim_y >= 0 && options.dim_y < dim,
               "plot '" << path << "': axes (" << options.dim_x << ", " << options.dim_y
                        << ") must be dimensions of the " << dim << "-D samples");
  CUFM_REQUIRE(n >= 1, "plot '" << path << "': no samples to plot (n = " << n << ")");
  CUFM_REQUIRE(xy != nullptr, "plot '" << path << "': samples pointer is null");

  PlotStats stats;
  stats.range = options.range ? *options.range : fit_range(xy, n, dim, options.dim_x, options.dim_y);
  const PlotRange& r = stats.range;
  check_range(r);

  const int w = options.width, h = options.height;
  std::vector<uint32_t> counts(static_cast<size_t>(w) * h, 0);
  const double sx = w / (static_cast<double>(r.x_max) - r.x_min);
  const double sy = h / (static_cast<double>(r.y_max) - r.y_min);
  for (int64_t i = 0; i < n; ++i) {
    const float x = xy[i * dim + options.dim_x], y = xy[i * dim + options.dim_y];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      ++stats.non_finite;
      continue;
    }
    const double col = std::floor((x - static_cast<double>(r.x_min)) * sx);
    const double row = std::floor((static_cast<double>(r.y_max) - y) * sy);  // row 0 is the top
    if (col < 0 || col >= w || row < 0 || row >= h) {
      ++stats.outside;
      continue;
    }
    ++counts[static_cast<size_t>(row) * w + static_cast<size_t>(col)];
    ++stats.plotted;
  }

  // log(1 + count) keeps thin tails visible next to dense modes.
  const uint32_t max_count = *std::max_element(counts.begin(), counts.end());
  const float scale = max_count > 0 ? 1.0f / std::log1p(static_cast<float>(max_count)) : 0.0f;
  std::vector<png_byte> rgb(counts.size() * 3);
  for (size_t k = 0; k < counts.size(); ++k) {
    const Rgb c = ramp(std::log1p(static_cast<float>(counts[k])) * scale);
    rgb[3 * k] = static_cast<png_byte>(std::lround(c.r));
    rgb[3 * k + 1] = static_cast<png_byte>(std::lround(c.g));
    rgb[3 * k + 2] = static_cast<png_byte>(std::lround(c.b));
  }

  encode_png(path, rgb, w, h);
  return stats;
}

PlotStats write_histogram_png(const std::string& path, const float* x, int64_t n,
                              const PlotOptions& options) {
  check_size(path, options);
  CUFM_REQUIRE(n >= 1, "plot '" << path << "': no samples to plot (n = " << n << ")");
  CUFM_REQUIRE(x != nullptr, "plot '" << path << "': samples pointer is null");
  PlotStats stats;
  if (options.range) {
    stats.range = *options.range;
  } else {
    std::vector<float> xs;
    for (int64_t i = 0; i < n; ++i) {
      if (std::isfinite(x[i])) xs.push_back(x[i]);
    }
    stats.range = PlotRange{};
    if (!xs.empty()) {
      float lo, hi;
      robust_extent(xs, lo, hi);
      const float half = std::max(hi - lo, 1e-3f) * 0.55f, c = 0.5f * (lo + hi);
      stats.range.x_min = c - half;
      stats.range.x_max = c + half;
    }
  }
  check_range(stats.range);
  const int w = options.width, h = options.height;
  std::vector<uint64_t> counts(static_cast<size_t>(w), 0);
  const double sx = w / (static_cast<double>(stats.range.x_max) - stats.range.x_min);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      ++stats.non_finite;
      continue;
    }
    const double col = std::floor((x[i] - static_cast<double>(stats.range.x_min)) * sx);
    if (col < 0 || col >= w) {
      ++stats.outside;
      continue;
    }
    ++counts[static_cast<size_t>(col)];
    ++stats.plotted;
  }
  // One bar per column, its height proportional to the count (linear: a histogram's shape), on
  // the ramp's dark end; the bar's colour runs up the ramp with the height.
  const uint64_t max_count = *std::max_element(counts.begin(), counts.end());
  std::vector<png_byte> rgb(static_cast<size_t>(w) * h * 3);
  for (int row = 0; row < h; ++row) {
    const double level = static_cast<double>(h - row) / h;  // 1 at the top row
    for (int col = 0; col < w; ++col) {
      const double height =
          max_count > 0 ? static_cast<double>(counts[col]) / static_cast<double>(max_count) : 0.0;
      const Rgb c =
          height >= level && height > 0 ? ramp(static_cast<float>(0.35 + 0.65 * level)) : ramp(0.0f);
      const size_t k = (static_cast<size_t>(row) * w + col) * 3;
      rgb[k] = static_cast<png_byte>(std::lround(c.r));
      rgb[k + 1] = static_cast<png_byte>(std::lround(c.g));
      rgb[k + 2] = static_cast<png_byte>(std::lround(c.b));
    }
  }
  encode_png(path, rgb, w, h);
  return stats;
}

}  // namespace cufm::cli
