// The probability path: x_t = t*x1 + (1 - (1 - s)*t)*eps, target u = x1 - (1 - s)*eps
// (s = sigma_min; 0 is the linear, optimal-transport path), and how training draws its times
// (uniform or logit-normal). The arithmetic is in cufm/detail/path.hpp.
#pragma once

#include <string>

namespace cufm {

enum class TimeSampling : int { Uniform = 0, LogitNormal = 1 };
// "uniform", "logit-normal" (the names' table: cufm/names.hpp).
const char* to_string(TimeSampling t);
TimeSampling parse_time_sampling(const std::string& s);

// The probability path and how training draws its times.
struct PathConfig {
  float sigma_min = 0.0f;  // 0: the linear (optimal-transport) path
  TimeSampling time_sampling = TimeSampling::Uniform;
  float logit_mean = 0.0f, logit_std = 1.0f;  // t = sigmoid(mean + std * z)
};

}  // namespace cufm
