// The array conversions and checks that the binding's files share (bind.hpp).
#include "bind.hpp"

#include <forward_list>

namespace cufm::python {

const char* doc(std::string text) {
  static std::forward_list<std::string> docs;  // never freed: nanobind may keep the pointers
  docs.push_front(std::move(text));
  return docs.front().c_str();
}

void require_shape(size_t ndim, const size_t* shape, const std::vector<int64_t>& want, const char* what) {
  bool ok = ndim == want.size();
  for (size_t k = 0; ok && k < ndim; ++k) ok = static_cast<int64_t>(shape[k]) == want[k];
  if (!ok) {
    std::string w, g;
    for (int64_t v : want) w += (w.empty() ? "" : ", ") + std::to_string(v);
    for (size_t k = 0; k < ndim; ++k) g += (g.empty() ? "" : ", ") + std::to_string(shape[k]);
    throw cufm::Error(std::string(what) + ": expected shape [" + w + "], got [" + g + "]");
  }
}

int64_t rows_of(const FloatIn& a, int dim, const char* what) {
  if (a.ndim() != 2 || static_cast<int64_t>(a.shape(1)) != dim) {
    throw cufm::Error(std::string(what) + ": expected a float32 array of shape [N, " + std::to_string(dim) +
                      "], got " + std::to_string(a.ndim()) + " dimension(s)" +
                      (a.ndim() == 2 ? " with " + std::to_string(a.shape(1)) + " columns" : std::string()));
  }
  return static_cast<int64_t>(a.shape(0));
}

const int32_t* labels_of(const std::optional<LabelsIn>& labels, int64_t n, const char* what) {
  if (!labels) return nullptr;
  if (static_cast<int64_t>(labels->shape(0)) != n) {
    throw cufm::Error(std::string(what) + ": " + std::to_string(labels->shape(0)) + " labels for " +
                      std::to_string(n) + " rows");
  }
  return labels->data();
}

std::vector<float> context_arg(const std::optional<FloatIn>& c, const char* who) {
  if (!c) return {};
  if (c->ndim() != 1 && c->ndim() != 2) {
    throw cufm::Error(std::string(who) + ": context must be a float32 array [K] or [N, K]");
  }
  return std::vector<float>(c->data(), c->data() + c->size());
}

const float* context_rows(const std::optional<FloatIn>& c, int64_t n, int K, const char* who) {
  if (!c) return nullptr;
  if (K == 0)
    throw cufm::Error(std::string(who) + ": a context given, but the model has none (context_dim = 0)");
  if (c->ndim() != 2 || static_cast<int64_t>(c->shape(0)) != n || static_cast<int>(c->shape(1)) != K) {
    throw cufm::Error(std::string(who) + ": context must be a float32 array of shape [" + std::to_string(n) +
                      ", " + std::to_string(K) + "]");
  }
  return c->data();
}

cufm::RunOptions run_options(const std::string& device, const std::string& precision, int threads) {
  cufm::RunOptions r;
  r.device = cufm::parse_device(device);
  r.precision = cufm::parse_precision(precision);
  r.threads = threads;
  return r;
}

cufm::StepDraws step_draws(uint64_t seed, uint64_t step, int num_classes, float label_dropout,
                           float sigma_min, const std::string& time_sampling, float logit_mean,
                           float logit_std, float context_dropout) {
  cufm::StepDraws d;
  d.seed = seed;
  d.step = step;
  d.num_classes = num_classes;
  d.label_dropout = label_dropout;
  d.context_dropout = context_dropout;
  d.path.sigma_min = sigma_min;
  d.path.time_sampling = cufm::parse_time_sampling(time_sampling);
  d.path.logit_mean = logit_mean;
  d.path.logit_std = logit_std;
  return d;
}

}  // namespace cufm::python
