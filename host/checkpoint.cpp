// Checkpoints as safetensors files.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON (padded with spaces so the data
// starts 8-byte aligned) mapping each tensor name to {dtype, shape, data_offsets} plus a
// "__metadata__" map of strings, then the tensors' bytes back to back. Loading checks every claim
// the header makes against the configuration and the file's size before copying a byte.
#include "cufm/checkpoint.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "host/atomic_file.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "cuFM's file formats assume a little-endian host");

namespace cufm {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "cufm-checkpoint";
constexpr const char* kFormatVersion = "1";
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // safetensors' own limit

// ---- enum names that have no public to_string -------------------------------------------------
const char* time_sampling_name(TimeSampling t) {
  return t == TimeSampling::LogitNormal ? "logit-normal" : "uniform";
}

TimeSampling parse_time_sampling(const std::string& s) {
  if (s == "uniform") return TimeSampling::Uniform;
  if (s == "logit-normal") return TimeSampling::LogitNormal;
  CUFM_FAIL("unknown time sampling '" << s << "': expected uniform or logit-normal");
}

const char* optimizer_name(Optimizer o) {
  return o == Optimizer::AdamW ? "adamw" : "adam";
}

Optimizer parse_optimizer(const std::string& s) {
  if (s == "adam") return Optimizer::Adam;
  if (s == "adamw") return Optimizer::AdamW;
  CUFM_FAIL("unknown optimizer '" << s << "': expected adam or adamw");
}

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

// ---- strict reading of a JSON object: every field present, no unknown field ------------------
class Fields {
 public:
  Fields(const json& j, std::string what) : j_(j), what_(std::move(what)) {
    CUFM_REQUIRE(j_.is_object(), what_ << " must be a JSON object, got " << j_.type_name());
  }

  const json& get(const char* key) {
    const auto it = j_.find(key);
    CUFM_REQUIRE(it != j_.end(), what_ << " has no field '" << key << "'");
    seen_.push_back(key);
    return *it;
  }

  int get_int(const char* key, int lo, int hi) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_number_integer(),
                 what_ << " field '" << key << "' must be an integer, got " << v.dump());
    const int64_t x = v.get<int64_t>();
    CUFM_REQUIRE(x >= lo && x <= hi,
                 what_ << " field '" << key << "' = " << x << " is outside [" << lo << ", " << hi << "]");
    return static_cast<int>(x);
  }

  float get_float(const char* key) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_number(), what_ << " field '" << key << "' must be a number, got " << v.dump());
    const double x = v.get<double>();
    const float f = static_cast<float>(x);
    CUFM_REQUIRE(std::isfinite(f), what_ << " field '" << key << "' = " << x << " is not a finite float");
    return f;
  }

  std::string get_string(const char* key) {
    const json& v = get(key);
    CUFM_REQUIRE(v.is_string(), what_ << " field '" << key << "' must be a string, got " << v.dump());
    return v.get<std::string>();
  }

  // Seeds are 64-bit: stored as a decimal string so that JSON readers with doubles keep them exact.
  uint64_t get_u64(const char* key) {
    const json& v = get(key);
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    uint64_t x = 0;
    CUFM_REQUIRE(v.is_string() && parse_u64(v.get<std::string>(), x),
                 what_ << " field '" << key
                       << "' must be an unsigned 64-bit integer as a decimal string, got " << v.dump());
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
    return json::parse(s);
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
  return j.dump();
}

std::string to_json(const TrainConfig& c) {
  json j;
  j["batch_size"] = c.batch_size;
  j["seed"] = std::to_string(c.seed);
  j["path"] = {{"sigma_min", finite(c.path.sigma_min, "path.sigma_min")},
               {"time_sampling", time_sampling_name(c.path.time_sampling)},
               {"logit_mean", finite(c.path.logit_mean, "path.logit_mean")},
               {"logit_std", finite(c.path.logit_std, "path.logit_std")}};
  j["optim"] = {{"kind", optimizer_name(c.optim.kind)},
                {"lr", finite(c.optim.lr, "optim.lr")},
                {"beta1", finite(c.optim.beta1, "optim.beta1")},
                {"beta2", finite(c.optim.beta2, "optim.beta2")},
                {"eps", finite(c.optim.eps, "optim.eps")},
                {"weight_decay", finite(c.optim.weight_decay, "optim.weight_decay")},
                {"grad_clip", finite(c.optim.grad_clip, "optim.grad_clip")},
                {"ema_decay", finite(c.optim.ema_decay, "optim.ema_decay")}};
  j["label_dropout"] = finite(c.label_dropout, "label_dropout");
  j["device"] = to_string(c.device);
  j["precision"] = to_string(c.precision);
  j["threads"] = c.threads;
  return j.dump();
}

MlpConfig mlp_config_from_json(const std::string& s) {
  const json j = parse_json(s, "model config");
  Fields f(j, "model config");
  MlpConfig c;
  c.data_dim = f.get_int("data_dim", 1, 65536);
  const json& hidden = f.get("hidden");
  CUFM_REQUIRE(hidden.is_array(),
               "model config field 'hidden' must be an array of widths, got " << hidden.dump());
  c.hidden.clear();
  for (const json& w : hidden) {
    CUFM_REQUIRE(w.is_number_integer() && w.get<int64_t>() >= 1 && w.get<int64_t>() <= 65536,
                 "model config field 'hidden' has a bad width " << w.dump() << "; widths are in [1, 65536]");
    c.hidden.push_back(w.get<int>());
  }
  c.activation = parse_activation(f.get_string("activation"));
  c.time_features = f.get_int("time_features", 0, 64);
  c.num_classes = f.get_int("num_classes", 0, 100000);
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
  optim.finish();
  c.label_dropout = f.get_float("label_dropout");
  c.device = parse_device(f.get_string("device"));
  c.precision = parse_precision(f.get_string("precision"));
  c.threads = f.get_int("threads", 0, std::numeric_limits<int>::max());
  f.finish();
  return c;
}

// ---- save -----------------------------------------------------------------------------------
void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  const ParamLayout layout(ckpt.model);
  check_state(layout, ckpt.state, "save_checkpoint '" + path + "'");

  json header = json::object();
  header["__metadata__"] = {{"format", kFormat},
                            {"format_version", kFormatVersion},
                            {"model", to_json(ckpt.model)},
                            {"train", to_json(ckpt.train)},
                            {"step", std::to_string(ckpt.state.step)},
                            {"dataset", ckpt.dataset}};
  const std::vector<TensorRef> tensors =
      tensor_list(layout, ckpt.state.ema.empty() ? WithEma::No : WithEma::Yes);
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    const uint64_t bytes = t.size * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  // Invalid UTF-8 in the dataset name is replaced rather than failing the save.
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');

  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  detail::AtomicFile out(path);
  out.write(len, sizeof len);
  out.write(text.data(), text.size());
  for (const TensorRef& t : tensors)
    out.write(buffer_of(ckpt.state, t.buffer).data() + t.offset, t.size * sizeof(float));
  out.commit();
}

// ---- load -----------------------------------------------------------------------------------
Checkpoint load_checkpoint(const std::string& path) {
  const std::string where = "checkpoint '" + path + "'";
  struct stat st;
  CUFM_REQUIRE(::stat(path.c_str(), &st) == 0, "cannot open " << where << ": " << std::strerror(errno));
  CUFM_REQUIRE(S_ISREG(st.st_mode), "cannot read " << where << ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  CUFM_REQUIRE(in.good(), "cannot open " << where << ": " << std::strerror(errno));
  std::vector<char> file(static_cast<size_t>(st.st_size));
  in.read(file.data(), static_cast<std::streamsize>(file.size()));
  CUFM_REQUIRE(in.gcount() == static_cast<std::streamsize>(file.size()),
               "cannot read " << where << ": read " << in.gcount() << " of " << file.size() << " bytes");

  CUFM_REQUIRE(file.size() >= 8,
               where << " is too short to be a safetensors file (" << file.size() << " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(file[i]);
  CUFM_REQUIRE(header_len <= file.size() - 8, where << " is truncated or corrupt: its header length "
                                                    << header_len << " is larger than the " << file.size() - 8
                                                    << " bytes that follow");
  CUFM_REQUIRE(header_len <= kMaxHeaderBytes, where << ": header length " << header_len << " exceeds the "
                                                    << kMaxHeaderBytes << "-byte limit");
  const std::string header_text(file.data() + 8, header_len);
  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = file.size() - data_begin;

  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::exception& e) {
    CUFM_FAIL(where << " is corrupt: its header is not valid JSON (" << e.what() << ")");
  }
  CUFM_REQUIRE(header.is_object(), where << " is corrupt: its header is not a JSON object");

  // Metadata: the configuration, which determines every tensor the file must hold.
  const auto meta_it = header.find("__metadata__");
  CUFM_REQUIRE(meta_it != header.end() && meta_it->is_object(),
               where << " is not a cuFM checkpoint: its header has no __metadata__ map");
  const json& meta = *meta_it;
  const auto meta_string = [&](const char* key) {
    const auto it = meta.find(key);
    CUFM_REQUIRE(it != meta.end() && it->is_string(), where << ": metadata '" << key << "' is missing");
    return it->get<std::string>();
  };
  CUFM_REQUIRE(meta_string("format") == kFormat,
               where << " is not a cuFM checkpoint (metadata format '" << meta_string("format") << "')");
  CUFM_REQUIRE(meta_string("format_version") == kFormatVersion,
               where << " has format version " << meta_string("format_version")
                     << "; this build reads version " << kFormatVersion);

  Checkpoint ckpt;
  try {
    ckpt.model = mlp_config_from_json(meta_string("model"));
    ckpt.train = train_config_from_json(meta_string("train"));
  } catch (const Error& e) {
    CUFM_FAIL(where << " has a bad configuration: " << e.what());
  }
  CUFM_REQUIRE(parse_u64(meta_string("step"), ckpt.state.step),
               where << ": metadata 'step' = '" << meta_string("step") << "' is not an unsigned integer");
  const auto dataset_it = meta.find("dataset");
  if (dataset_it != meta.end() && dataset_it->is_string()) ckpt.dataset = dataset_it->get<std::string>();

  const ParamLayout layout(ckpt.model);
  const bool with_ema = header.contains("ema." + layout.tensors().front().name);
  const std::vector<TensorRef> expected = tensor_list(layout, with_ema ? WithEma::Yes : WithEma::No);
  for (std::vector<float>* v : {&ckpt.state.params, &ckpt.state.adam_m, &ckpt.state.adam_v})
    v->resize(layout.total());
  if (with_ema) ckpt.state.ema.resize(layout.total());

  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : expected) by_name[t.name] = &t;

  // Each header entry must be one of the expected tensors with the expected dtype and shape.
  struct Extent {
    uint64_t begin, end;
    const TensorRef* tensor;
  };
  std::vector<Extent> extents;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto found = by_name.find(it.key());
    CUFM_REQUIRE(found != by_name.end(), where << " holds an unexpected tensor '" << it.key()
                                               << "' for its model configuration " << to_json(ckpt.model));
    const TensorRef& t = *found->second;
    const json& entry = it.value();
    const std::string what = where + " tensor '" + t.name + "'";
    CUFM_REQUIRE(entry.is_object(), what << " has a malformed header entry");
    const auto dtype = entry.find("dtype");
    CUFM_REQUIRE(dtype != entry.end() && dtype->is_string() && *dtype == "F32",
                 what << " has dtype " << (dtype == entry.end() ? std::string("(none)") : dtype->dump())
                      << "; cuFM stores F32");
    const auto shape = entry.find("shape");
    std::vector<int64_t> got_shape;
    bool shape_ok = shape != entry.end() && shape->is_array();
    if (shape_ok) {
      for (const json& d : *shape) {
        shape_ok = shape_ok && d.is_number_integer();
        if (shape_ok) got_shape.push_back(d.get<int64_t>());
      }
    }
    CUFM_REQUIRE(shape_ok && got_shape == t.shape,
                 what << " has shape " << (shape_ok ? shape_text(got_shape) : std::string("(malformed)"))
                      << " but the model configuration needs " << shape_text(t.shape));
    const auto offsets = entry.find("data_offsets");
    CUFM_REQUIRE(offsets != entry.end() && offsets->is_array() && offsets->size() == 2 &&
                     (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                 what << " has malformed data_offsets; expected [begin, end]");
    const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
    CUFM_REQUIRE(begin <= end && end - begin == t.size * sizeof(float),
                 what << " has data_offsets [" << begin << ", " << end << "] but shape "
                      << shape_text(t.shape) << " of F32 needs " << t.size * sizeof(float) << " bytes");
    CUFM_REQUIRE(end <= data_size, where << " is truncated: tensor '" << t.name << "' ends at byte " << end
                                         << " of the data section, which has only " << data_size << " bytes");
    extents.push_back({begin, end, &t});
  }
  for (const TensorRef& t : expected) {
    const bool present =
        std::any_of(extents.begin(), extents.end(), [&](const Extent& e) { return e.tensor == &t; });
    CUFM_REQUIRE(present, where << " is missing tensor '" << t.name << "'");
  }

  // The tensors must tile the data section exactly: no overlap, no gap, nothing after.
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  uint64_t cursor = 0;
  for (const Extent& e : extents) {
    CUFM_REQUIRE(e.begin >= cursor, where << " is corrupt: tensor '" << e.tensor->name
                                          << "' at data_offsets [" << e.begin << ", " << e.end
                                          << "] overlaps the tensor before it");
    CUFM_REQUIRE(e.begin == cursor, where << " is corrupt: a gap of " << e.begin - cursor
                                          << " bytes before tensor '" << e.tensor->name << "'");
    cursor = e.end;
  }
  CUFM_REQUIRE(cursor == data_size,
               where << " is corrupt: " << data_size - cursor << " bytes after the last tensor");

  for (const Extent& e : extents) {
    std::memcpy(buffer_of(ckpt.state, e.tensor->buffer).data() + e.tensor->offset,
                file.data() + data_begin + e.begin, e.end - e.begin);
  }
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
