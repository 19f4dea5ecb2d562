// Checkpoints: the schema inside a safetensors container (host/safetensors.hpp). The metadata holds
// the format, the model and training configuration, the step and the dataset's descriptor; the
// tensors are the parameters in nn.Linear's layout, then Adam's moments and the EMA under the
// prefixes "adam_m.", "adam_v." and "ema.". Loading checks every claim the header makes against the
// configuration and the file's size before allocating or reading a tensor.
#include "cufm/checkpoint.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "host/memory.hpp"
#include "host/safetensors.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "cuFM's file formats assume a little-endian host");

namespace cufm {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "cufm-checkpoint";
constexpr const char* kFormatVersion = "1";

bool parse_u64(const std::string& s, uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    v = v * 10 + digit;
  }
  out = v;
  return true;
}

// An untrusted value in a message: a scalar as written (at most 64 characters), a container by its
// type alone. (nlohmann's dump() recurses: a crafted header nested 100,000 deep would overflow the
// stack while the message was being built.)
std::string describe(const json& v) {
  if (v.is_structured()) return std::string("a JSON ") + v.type_name();
  std::string text = v.dump();
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

// ---- strict reading of a JSON object: every field present, no unknown field ------------------
class Fields {
 public:
  Fields(const json& j, std::string what) : j_(j), what_(std::move(what)) {
    CUFM_REQUIRE(j_.is_object(), what_ << " must be a JSON object, got " << j_.type_name());
  }

  bool has(const char* key) const { return j_.contains(key); }

  const json& get(const char* key) {
    const auto it = j_.find(key);
    CUFM_REQUIRE(it != j_.end(), what_ << " has no field '" << key << "'");
    seen_.push_back(key);
    return *it;
  }

  int get_int(const char* key, int lo, int hi) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_number_integer(),
                 what_ << " field '" << key << "' must be an integer, got " << describe(v));
    const int64_t x = v.get<int64_t>();
    CUFM_REQUIRE(x >= lo && x <= hi,
                 what_ << " field '" << key << "' = " << x << " is outside [" << lo << ", " << hi << "]");
    return static_cast<int>(x);
  }

  float get_float(const char* key) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_number(), what_ << " field '" << key << "' must be a number, got " << describe(v));
    const double x = v.get<double>();
    const float f = static_cast<float>(x);
    CUFM_REQUIRE(std::isfinite(f), what_ << " field '" << key << "' = " << x << " is not a finite float");
    return f;
  }

  std::string get_string(const char* key) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_string(), what_ << " field '" << key << "' must be a string, got " << describe(v));
    return v.get<std::string>();
  }

  // Seeds are 64-bit: stored as a decimal string so that JSON readers with doubles keep them exact.
  uint64_t get_u64(const char* key) {
    const json& v = get(key);
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    uint64_t x = 0;
    CUFM_REQUIRE(v.is_string() && parse_u64(v.get<std::string>(), x),
                 what_ << " field '" << key
                       << "' must be an unsigned 64-bit integer as a decimal string, got " << describe(v));
    return x;
  }

  void finish() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      CUFM_REQUIRE(std::find(seen_.begin(), seen_.end(), it.key()) != seen_.end(),
                   what_ << " has an unknown field '" << it.key() << "'");
    }
  }

 private:
  const json& j_;
  std::string what_;
  std::vector<std::string> seen_;
};

json parse_json(const std::string& s, const char* what) {
  try {
    return detail::parse_json_bounded(s);
  } catch (const json::exception& e) {
    CUFM_FAIL(what << " is not valid JSON: " << e.what());
  }
}

float finite(float v, const char* field) {
  CUFM_REQUIRE(std::isfinite(v), "config field '" << field << "' = " << v << " is not finite");
  return v;
}

// ---- the tensors of a checkpoint --------------------------------------------------------------
enum class Buffer : int { Params, AdamM, AdamV, Ema };

template <typename State>
auto& buffer_of(State& state, Buffer b) {
  switch (b) {
    case Buffer::AdamM:
      return state.adam_m;
    case Buffer::AdamV:
      return state.adam_v;
    case Buffer::Ema:
      return state.ema;
    default:
      return state.params;
  }
}

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  size_t size;    // floats
  Buffer buffer;  // the state buffer it belongs to
  size_t offset;  // in floats, in that buffer
};

enum class WithEma : bool { No = false, Yes = true };

// Every tensor the configuration implies, in file order: parameters, Adam's moments, the EMA.
std::vector<TensorRef> tensor_list(const ParamLayout& layout, WithEma ema) {
  std::vector<TensorRef> out;
  const auto add = [&](const std::string& prefix, Buffer buffer) {
    for (const TensorSlot& slot : layout.tensors()) {
      out.push_back({prefix + slot.name, slot.shape, slot.size, buffer, slot.offset});
    }
  };
  add("", Buffer::Params);
  add("adam_m.", Buffer::AdamM);
  add("adam_v.", Buffer::AdamV);
  if (ema == WithEma::Yes) add("ema.", Buffer::Ema);
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void check_state(const ParamLayout& layout, const TrainState& state, const std::string& where) {
  const size_t total = layout.total();
  const auto check = [&](const std::vector<float>& v, const char* name, bool may_be_empty) {
    CUFM_REQUIRE(v.size() == total || (may_be_empty && v.empty()),
                 where << ": " << name << " holds " << v.size() << " floats but the model has " << total
                       << " parameters");
    for (size_t k = 0; k < v.size(); ++k) {
      CUFM_REQUIRE(std::isfinite(v[k]),
                   where << ": " << name << "[" << k << "] = " << v[k]
                         << " is not finite (did training diverge? lower the learning rate)");
    }
  };
  check(state.params, "params", false);
  check(state.adam_m, "adam_m", false);
  check(state.adam_v, "adam_v", false);
  check(state.ema, "ema", true);
}

}  // namespace

// ---- configuration serialisation ------------------------------------------------------------
std::string to_json(const MlpConfig& c) {
  json j;
  j["data_dim"] = c.data_dim;
  j["hidden"] = c.hidden;
  j["activation"] = to_string(c.activation);
  j["time_features"] = c.time_features;
  j["num_classes"] = c.num_classes;
  // Only when set: a checkpoint of a model without a context stays readable by earlier versions.
  if (c.context_dim > 0) j["context_dim"] = c.context_dim;
  return j.dump();
}

std::string to_json(const TrainConfig& c) {
  json j;
  j["batch_size"] = c.batch_size;
  j["seed"] = std::to_string(c.seed);
  j["path"] = {{"sigma_min", finite(c.path.sigma_min, "path.sigma_min")},
               {"time_sampling", to_string(c.path.time_sampling)},
               {"logit_mean", finite(c.path.logit_mean, "path.logit_mean")},
               {"logit_std", finite(c.path.logit_std, "path.logit_std")}};
  j["optim"] = {{"kind", to_string(c.optim.kind)},
                {"lr", finite(c.optim.lr, "optim.lr")},
                {"beta1", finite(c.optim.beta1, "optim.beta1")},
                {"beta2", finite(c.optim.beta2, "optim.beta2")},
                {"eps", finite(c.optim.eps, "optim.eps")},
                {"weight_decay", finite(c.optim.weight_decay, "optim.weight_decay")},
                {"grad_clip", finite(c.optim.grad_clip, "optim.grad_clip")},
                {"ema_decay", finite(c.optim.ema_decay, "optim.ema_decay")},
                {"lr_schedule", to_string(c.optim.lr_schedule)},
                {"warmup_steps", std::to_string(c.optim.warmup_steps)},
                {"decay_steps", std::to_string(c.optim.decay_steps)},
                {"min_lr", finite(c.optim.min_lr, "optim.min_lr")}};
  j["label_dropout"] = finite(c.label_dropout, "label_dropout");
  if (c.context_dropout != 0.0f) j["context_dropout"] = finite(c.context_dropout, "context_dropout");
  if (c.coupling != Coupling::Independent) {  // only when set: earlier readers keep reading the rest
    j["coupling"] = to_string(c.coupling);
    j["ot_reg"] = finite(c.ot_reg, "ot_reg");
  }
  return j.dump();  // the recipe only: where a run goes (RunOptions) is not the checkpoint's
}

MlpConfig mlp_config_from_json(const std::string& s) {
  const json j = parse_json(s, "model config");
  Fields f(j, "model config");
  MlpConfig c;
  c.data_dim = f.get_int("data_dim", 1, 65536);
  const json& hidden = f.get("hidden");
  CUFM_REQUIRE(hidden.is_array(),
               "model config field 'hidden' must be an array of widths, got " << describe(hidden));
  c.hidden.clear();
  for (const json& w : hidden) {
    CUFM_REQUIRE(
        w.is_number_integer() && w.get<int64_t>() >= 1 && w.get<int64_t>() <= 65536,
        "model config field 'hidden' has a bad width " << describe(w) << "; widths are in [1, 65536]");
    c.hidden.push_back(w.get<int>());
  }
  c.activation = parse_activation(f.get_string("activation"));
  c.time_features = f.get_int("time_features", 0, 64);
  c.num_classes = f.get_int("num_classes", 0, 100000);
  if (f.has("context_dim")) c.context_dim = f.get_int("context_dim", 0, 65536);  // absent: none
  f.finish();
  c.validate();
  return c;
}

TrainConfig train_config_from_json(const std::string& s) {
  const json j = parse_json(s, "training config");
  Fields f(j, "training config");
  TrainConfig c;
  c.batch_size = f.get_int("batch_size", 1, std::numeric_limits<int>::max());
  c.seed = f.get_u64("seed");
  Fields path(f.get("path"), "training config 'path'");
  c.path.sigma_min = path.get_float("sigma_min");
  c.path.time_sampling = parse_time_sampling(path.get_string("time_sampling"));
  c.path.logit_mean = path.get_float("logit_mean");
  c.path.logit_std = path.get_float("logit_std");
  path.finish();
  Fields optim(f.get("optim"), "training config 'optim'");
  c.optim.kind = parse_optimizer(optim.get_string("kind"));
  c.optim.lr = optim.get_float("lr");
  c.optim.beta1 = optim.get_float("beta1");
  c.optim.beta2 = optim.get_float("beta2");
  c.optim.eps = optim.get_float("eps");
  c.optim.weight_decay = optim.get_float("weight_decay");
  c.optim.grad_clip = optim.get_float("grad_clip");
  c.optim.ema_decay = optim.get_float("ema_decay");
  if (optim.has("lr_schedule")) {  // absent in checkpoints from before schedules: constant
    c.optim.lr_schedule = parse_lr_schedule(optim.get_string("lr_schedule"));
    c.optim.warmup_steps = optim.get_u64("warmup_steps");
    c.optim.decay_steps = optim.get_u64("decay_steps");
    c.optim.min_lr = optim.get_float("min_lr");
  }
  optim.finish();
  c.label_dropout = f.get_float("label_dropout");
  if (f.has("context_dropout")) c.context_dropout = f.get_float("context_dropout");  // absent: 0
  if (f.has("coupling")) {                                                           // absent: independent
    c.coupling = parse_coupling(f.get_string("coupling"));
    c.ot_reg = f.get_float("ot_reg");
  }
  // Checkpoints before RunOptions also recorded where they ran: still checked, no longer kept.
  if (f.has("device")) (void)parse_device(f.get_string("device"));
  if (f.has("precision")) (void)parse_precision(f.get_string("precision"));
  if (f.has("threads")) (void)f.get_int("threads", 0, std::numeric_limits<int>::max());
  f.finish();
  return c;
}

// ---- save -----------------------------------------------------------------------------------
void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  const ParamLayout layout(ckpt.model);
  check_state(layout, ckpt.state, "save_checkpoint '" + path + "'");
  const json metadata = {{"format", kFormat},
                         {"format_version", kFormatVersion},
                         {"model", to_json(ckpt.model)},
                         {"train", to_json(ckpt.train)},
                         {"step", std::to_string(ckpt.state.step)},
                         {"dataset", ckpt.dataset}};
  std::vector<detail::SafetensorsTensor> tensors;
  for (const TensorRef& t : tensor_list(layout, ckpt.state.ema.empty() ? WithEma::No : WithEma::Yes)) {
    tensors.push_back(
        {t.name, "F32", t.shape, buffer_of(ckpt.state, t.buffer).data() + t.offset, t.size * sizeof(float)});
  }
  detail::write_safetensors(path, metadata, tensors);
}

// ---- load -----------------------------------------------------------------------------------
namespace {

// The metadata's configuration, which determines every tensor the file must hold.
void read_metadata(const json& meta, const std::string& where, Checkpoint& ckpt) {
  const auto meta_string = [&](const char* key) {
    const auto it = meta.find(key);
    CUFM_REQUIRE(it != meta.end() && it->is_string(), where << ": metadata '" << key << "' is missing");
    return it->get<std::string>();
  };
  CUFM_REQUIRE(!meta.empty(), where << " is not a cuFM checkpoint: its header has no __metadata__ map");
  CUFM_REQUIRE(meta_string("format") == kFormat,
               where << " is not a cuFM checkpoint (metadata format '" << meta_string("format") << "')");
  CUFM_REQUIRE(meta_string("format_version") == kFormatVersion,
               where << " has format version " << meta_string("format_version")
                     << "; this build reads version " << kFormatVersion);
  try {
    ckpt.model = mlp_config_from_json(meta_string("model"));
    ckpt.train = train_config_from_json(meta_string("train"));
  } catch (const Error& e) {
    CUFM_FAIL(where << " has a bad configuration: " << e.message());
  }
  CUFM_REQUIRE(parse_u64(meta_string("step"), ckpt.state.step),
               where << ": metadata 'step' = '" << meta_string("step") << "' is not an unsigned integer");
  const auto dataset_it = meta.find("dataset");
  if (dataset_it != meta.end() && dataset_it->is_string()) ckpt.dataset = dataset_it->get<std::string>();
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  const std::string where = "checkpoint '" + path + "'";
  const detail::SafetensorsReader file(path, where);  // the container, checked against the file
  Checkpoint ckpt;
  read_metadata(file.metadata(), where, ckpt);

  // Every entry must be one of the tensors the configuration implies, with its dtype and shape,
  // and each of those must be present: checked before anything is allocated.
  const ParamLayout layout(ckpt.model);
  bool with_ema = false;
  for (const detail::SafetensorsEntry& e : file.entries())
    with_ema = with_ema || e.name.rfind("ema.", 0) == 0;
  const std::vector<TensorRef> expected = tensor_list(layout, with_ema ? WithEma::Yes : WithEma::No);
  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : expected) by_name[t.name] = &t;
  std::vector<std::pair<const detail::SafetensorsEntry*, const TensorRef*>> reads;
  for (const detail::SafetensorsEntry& e : file.entries()) {
    const auto found = by_name.find(e.name);
    CUFM_REQUIRE(found != by_name.end(), where << " holds an unexpected tensor '" << e.name
                                               << "' for its model configuration " << to_json(ckpt.model));
    const TensorRef& t = *found->second;
    const std::string what = where + " tensor '" + t.name + "'";
    CUFM_REQUIRE(e.dtype == "F32", what << " has dtype " << e.dtype << "; cuFM stores F32");
    CUFM_REQUIRE(e.shape == t.shape, what << " has shape " << shape_text(e.shape)
                                          << " but the model configuration needs " << shape_text(t.shape));
    CUFM_REQUIRE(e.end - e.begin == t.size * sizeof(float),
                 what << " has data_offsets [" << e.begin << ", " << e.end << "] but shape "
                      << shape_text(t.shape) << " of F32 needs " << t.size * sizeof(float) << " bytes");
    by_name.erase(found);  // a name twice is caught here too
    reads.emplace_back(&e, &t);
  }
  CUFM_REQUIRE(by_name.empty(), where << " is missing tensor '" << by_name.begin()->first << "'");
  file.require_tiled();

  // The file holds every byte the configuration claims (the container tiles its data section), so
  // the allocation below is bounded by the file's real size, and by the memory there is.
  const uint64_t buffers = with_ema ? 4 : 3;
  detail::require_memory(detail::mul_sat(layout.total(), buffers * sizeof(float)),
                         "loading " + where + " (" + std::to_string(layout.total()) + " parameters)",
                         "load it on a machine with more memory");
  for (std::vector<float>* v : {&ckpt.state.params, &ckpt.state.adam_m, &ckpt.state.adam_v})
    v->resize(layout.total());
  if (with_ema) ckpt.state.ema.resize(layout.total());
  for (const auto& [entry, tensor] : reads)
    file.read(*entry, buffer_of(ckpt.state, tensor->buffer).data() + tensor->offset);
  check_state(layout, ckpt.state, where);
  return ckpt;
}

Model Checkpoint::to_model(Weights which) const {
  const bool use_ema = which == Weights::Ema;
  if (use_ema) {
    CUFM_REQUIRE(
        !state.ema.empty(),
        "this checkpoint has no EMA weights (it was trained with ema_decay = 0); load it without EMA");
    return Model(model, state.ema);
  }
  return Model(model, state.params);
}

}  // namespace cufm
