// PNG pictures of samples for the CLI: a log-scaled 2D histogram of the first two (or two chosen)
// dimensions, or a histogram of 1-D samples, so a trained model's samples can be compared with its
// data at a glance.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cufm::cli {

struct PlotRange {
  float x_min = -4.5f, x_max = 4.5f;
  float y_min = -4.5f, y_max = 4.5f;
};

struct PlotOptions {
  int width = 512, height = 512;  // pixels; one histogram bin per pixel
  // The region shown. The default frames the toy datasets; nullopt fits the data (the 0.5th to
  // 99.5th percentile of each axis, with a margin), so a few outliers do not shrink the picture.
  std::optional<PlotRange> range = PlotRange{};
  int dim_x = 0, dim_y = 1;  // which dimensions go on the axes
};

struct PlotStats {
  int64_t plotted = 0;     // points inside the range
  int64_t outside = 0;     // finite points outside the range
  int64_t non_finite = 0;  // points with a NaN or Inf coordinate, skipped
  PlotRange range;         // the range used
};

// Writes `n` points of dimension `dim` (row-major xy [n, dim]) as a density image to `path`,
// through a temporary file renamed into place. Throws cufm::Error on bad arguments or I/O failure.
PlotStats write_density_png(const std::string& path, const float* xy, int64_t n, int dim,
                            const PlotOptions& options = {});

// 1-D samples x [n] as a histogram (one bar per pixel column over [x_min, x_max]; y_min/y_max unused).
PlotStats write_histogram_png(const std::string& path, const float* x, int64_t n,
                              const PlotOptions& options = {});

// Throws cufm::Error unless the range is finite with min < max on both axes: the CLI checks it
// before any work.
void check_range(const PlotRange& range);

}  // namespace cufm::cli
