// Checkpoints: bit-exact round trips of configuration and state, a clear error for each kind of
// bad file, saves that replace an old checkpoint whole or not at all, and (with Python's
// safetensors installed) proof that other safetensors readers see the same tensors.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cufm/checkpoint.hpp"
#include "cufm/error.hpp"
#include "cufm/detail/philox.hpp"
#include "test_util.hpp"

namespace {

using cufm::test::error_of;
using cufm::test::read_bytes;
using cufm::test::TempDir;
using cufm::test::write_bytes;
using ::testing::HasSubstr;

cufm::MlpConfig small_model() {
  cufm::MlpConfig m;
  m.data_dim = 2;
  m.hidden = {16, 12};
  m.activation = cufm::Activation::GELU;
  m.time_features = 4;
  m.num_classes = 3;  // input 2 + 4 + 4 = 10
  return m;
}

cufm::TrainConfig unusual_train_config() {
  cufm::TrainConfig t;
  t.batch_size = 123;
  t.seed = (uint64_t{1} << 63) + 5;  // not representable as a double
  t.path.sigma_min = 0.01f;
  t.path.time_sampling = cufm::TimeSampling::LogitNormal;
  t.path.logit_mean = -0.5f;
  t.path.logit_std = 1.25f;
  t.optim.kind = cufm::Optimizer::AdamW;
  t.optim.lr = 3e-4f;
  t.optim.beta1 = 0.8f;
  t.optim.beta2 = 0.95f;
  t.optim.eps = 1e-7f;
  t.optim.weight_decay = 0.01f;
  t.optim.grad_clip = 1.5f;
  t.optim.ema_decay = 0.999f;
  t.optim.lr_schedule = cufm::LrSchedule::Cosine;
  t.optim.warmup_steps = 7;
  t.optim.decay_steps = (uint64_t{1} << 60) + 3;  // not representable as a double
  t.optim.min_lr = 1.5e-5f;
  t.label_dropout = 0.2f;
  return t;
}

// Fresh random values (never zeros) from Philox, different for each buffer.
std::vector<float> random_floats(size_t n, uint32_t which) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const cufm::Philox4x32 r = cufm::rng::draw(1234, which, static_cast<uint32_t>(i), 0);
    v[i] = cufm::hd::uniform01(r.v[0]) * 2.0f - 1.0f + static_cast<float>(r.v[1] & 1) * 1e-30f;
  }
  return v;
}

cufm::Checkpoint make_checkpoint(bool with_ema) {
  cufm::Checkpoint c;
  c.model = small_model();
  c.train = unusual_train_config();
  const size_t n = cufm::ParamLayout(c.model).total();
  c.state.step = 987654321012ull;
  c.state.params = random_floats(n, 0);
  c.state.adam_m = random_floats(n, 1);
  c.state.adam_v = random_floats(n, 2);
  for (float& v : c.state.adam_v) v = v * v;
  if (with_ema) c.state.ema = random_floats(n, 3);
  c.dataset = "checkerboard";
  return c;
}

void expect_bits_equal(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": first difference at element " << i << ": expected " << want[i] << ", got "
                    << got[i];
      return;
    }
  }
}

void expect_same_train_config(const cufm::TrainConfig& a, const cufm::TrainConfig& b) {
  EXPECT_EQ(a.batch_size, b.batch_size);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.path.sigma_min, b.path.sigma_min);
  EXPECT_EQ(a.path.time_sampling, b.path.time_sampling);
  EXPECT_EQ(a.path.logit_mean, b.path.logit_mean);
  EXPECT_EQ(a.path.logit_std, b.path.logit_std);
  EXPECT_EQ(a.optim.kind, b.optim.kind);
  EXPECT_EQ(a.optim.lr, b.optim.lr);
  EXPECT_EQ(a.optim.beta1, b.optim.beta1);
  EXPECT_EQ(a.optim.beta2, b.optim.beta2);
  EXPECT_EQ(a.optim.eps, b.optim.eps);
  EXPECT_EQ(a.optim.weight_decay, b.optim.weight_decay);
  EXPECT_EQ(a.optim.grad_clip, b.optim.grad_clip);
  EXPECT_EQ(a.optim.ema_decay, b.optim.ema_decay);
  EXPECT_EQ(a.optim.lr_schedule, b.optim.lr_schedule);
  EXPECT_EQ(a.optim.warmup_steps, b.optim.warmup_steps);
  EXPECT_EQ(a.optim.decay_steps, b.optim.decay_steps);
  EXPECT_EQ(a.optim.min_lr, b.optim.min_lr);
  EXPECT_EQ(a.label_dropout, b.label_dropout);
}

// Checkpoints written before learning-rate schedules existed have no schedule fields: they load
// with the constant schedule they trained with.
TEST(ConfigJson, ConfigsWithoutScheduleFieldsAreConstant) {
  nlohmann::json j = nlohmann::json::parse(cufm::to_json(cufm::TrainConfig{}));
  for (const char* k : {"lr_schedule", "warmup_steps", "decay_steps", "min_lr"}) j["optim"].erase(k);
  const cufm::TrainConfig t = cufm::train_config_from_json(j.dump());
  EXPECT_EQ(t.optim.lr_schedule, cufm::LrSchedule::Constant);
  EXPECT_EQ(t.optim.warmup_steps, 0u);
  EXPECT_EQ(t.optim.min_lr, 0.0f);
}

// Checkpoints written before RunOptions also recorded where they ran: they still load (the fields
// are checked, then left out of the recipe), and the recipe written now has none of them.
TEST(ConfigJson, OldRunFieldsLoadAndAreNotWritten) {
  const std::string now = cufm::to_json(unusual_train_config());
  for (const char* k : {"device", "precision", "threads"}) EXPECT_THAT(now, ::testing::Not(HasSubstr(k)));
  nlohmann::json j = nlohmann::json::parse(now);
  j["device"] = "cuda";
  j["precision"] = "bf16";
  j["threads"] = 3;
  expect_same_train_config(cufm::train_config_from_json(j.dump()), unusual_train_config());
  j["device"] = "tpu";
  EXPECT_THAT(error_of([&] { cufm::train_config_from_json(j.dump()); }), HasSubstr("tpu"));
}

TEST(ConfigJson, RoundTripsEveryField) {
  const cufm::MlpConfig m = small_model();
  EXPECT_EQ(cufm::mlp_config_from_json(cufm::to_json(m)), m);
  const cufm::TrainConfig t = unusual_train_config();
  expect_same_train_config(cufm::train_config_from_json(cufm::to_json(t)), t);
  expect_same_train_config(cufm::train_config_from_json(cufm::to_json(cufm::TrainConfig{})),
                           cufm::TrainConfig{});
  EXPECT_THAT(cufm::to_json(t), HasSubstr("\"seed\":\"9223372036854775813\""));
  EXPECT_THAT(cufm::to_json(t), HasSubstr("\"time_sampling\":\"logit-normal\""));
  EXPECT_THAT(cufm::to_json(t), HasSubstr("\"kind\":\"adamw\""));
}

TEST(ConfigJson, RejectsBadJson) {
  const std::string m = cufm::to_json(small_model());
  EXPECT_THAT(error_of([] { cufm::mlp_config_from_json("{"); }), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_of([] { cufm::mlp_config_from_json("[1]"); }), HasSubstr("must be a JSON object"));
  EXPECT_THAT(error_of([&] { cufm::mlp_config_from_json(m.substr(0, m.size() - 1) + ",\"depth\":3}"); }),
              HasSubstr("unknown field 'depth'"));
  EXPECT_THAT(error_of([] { cufm::mlp_config_from_json(R"({"data_dim":2})"); }),
              HasSubstr("no field 'hidden'"));
  std::string t = cufm::to_json(unusual_train_config());
  t.replace(t.find("\"adamw\""), 7, "\"sgd\"");
  EXPECT_THAT(error_of([&] { cufm::train_config_from_json(t); }), HasSubstr("unknown optimizer 'sgd'"));
  t = cufm::to_json(unusual_train_config());
  t.replace(t.find("9223372036854775813"), 19, "-223372036854775813");
  EXPECT_THAT(error_of([&] { cufm::train_config_from_json(t); }), HasSubstr("unsigned 64-bit"));
  cufm::TrainConfig nan_lr;
  nan_lr.optim.lr = NAN;
  EXPECT_THAT(error_of([&] { cufm::to_json(nan_lr); }), HasSubstr("optim.lr"));
}

TEST(Checkpoint, RoundTripIsBitExact) {
  TempDir dir;
  for (const bool ema : {false, true}) {
    SCOPED_TRACE(ema ? "with EMA" : "without EMA");
    const cufm::Checkpoint c = make_checkpoint(ema);
    const std::string path = dir.file("c.safetensors");
    cufm::save_checkpoint(path, c);
    const cufm::Checkpoint back = cufm::load_checkpoint(path);
    EXPECT_EQ(back.model, c.model);
    expect_same_train_config(back.train, c.train);
    EXPECT_EQ(back.train.seed, (uint64_t{1} << 63) + 5);
    EXPECT_EQ(back.state.step, c.state.step);
    EXPECT_EQ(back.dataset, c.dataset);
    expect_bits_equal(back.state.params, c.state.params, "params");
    expect_bits_equal(back.state.adam_m, c.state.adam_m, "adam_m");
    expect_bits_equal(back.state.adam_v, c.state.adam_v, "adam_v");
    expect_bits_equal(back.state.ema, c.state.ema, "ema");

    expect_bits_equal(back.to_model().params(), c.state.params, "to_model()");
    if (ema) {
      expect_bits_equal(back.to_model(cufm::Weights::Ema).params(), c.state.ema, "to_model(ema)");
    } else {
      EXPECT_THAT(error_of([&] { back.to_model(cufm::Weights::Ema); }), HasSubstr("no EMA weights"));
    }
    // Saving what was loaded reproduces the file byte for byte.
    const std::string again = dir.file("again.safetensors");
    cufm::save_checkpoint(again, back);
    EXPECT_EQ(read_bytes(again), read_bytes(path));
  }
  EXPECT_EQ(dir.entries().size(), 2u);  // no temporaries left behind
}

TEST(Checkpoint, FileLayoutIsSafetensors) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  cufm::save_checkpoint(path, make_checkpoint(true));
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);  // data 8-byte aligned
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_THAT(
      header,
      HasSubstr("\"layers.0.weight\":{\"data_offsets\":[0,640],\"dtype\":\"F32\",\"shape\":[16,10]}"));
  EXPECT_THAT(header, HasSubstr("\"format\":\"cufm-checkpoint\""));
  EXPECT_THAT(header, HasSubstr("\"step\":\"987654321012\""));
  for (const char* name :
       {"layers.2.bias", "adam_m.layers.1.weight", "adam_v.layers.0.bias", "ema.layers.2.weight"}) {
    EXPECT_THAT(header, HasSubstr(std::string("\"") + name + "\""));
  }
  const size_t params = cufm::ParamLayout(small_model()).total();
  EXPECT_EQ(bytes.size(), 8 + n + 4 * 4 * params);
}

// ---- bad files ----------------------------------------------------------------------------
struct Parts {
  std::string header, data;
};

Parts split(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return {bytes.substr(8, n), bytes.substr(8 + n)};
}

std::string join(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xFF);
  return out + header + data;
}

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << "test setup: '" << from << "' not in the header";
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    good_path_ = dir_.file("good.safetensors");
    cufm::save_checkpoint(good_path_, make_checkpoint(false));
    good_ = split(read_bytes(good_path_));
  }

  // Writes `bytes`, loads it, and returns the error, which must name the file.
  std::string load_error(const std::string& bytes) {
    const std::string path = dir_.file("bad.safetensors");
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { cufm::load_checkpoint(path); });
    EXPECT_THAT(msg, HasSubstr(path));
    return msg;
  }
  std::string with_header(const std::string& header) { return load_error(join(header, good_.data)); }

  TempDir dir_;
  std::string good_path_;
  Parts good_;
};

TEST_F(BadCheckpoint, MissingShortOrTruncatedFiles) {
  EXPECT_THAT(error_of([&] { cufm::load_checkpoint(dir_.file("none.safetensors")); }),
              HasSubstr("No such file"));
  EXPECT_THAT(error_of([&] { cufm::load_checkpoint(dir_.path()); }), HasSubstr("not a regular file"));
  EXPECT_THAT(load_error(""), HasSubstr("too short"));
  EXPECT_THAT(load_error("abc"), HasSubstr("too short"));
  const std::string whole = join(good_.header, good_.data);
  EXPECT_THAT(load_error(whole.substr(0, 100)), HasSubstr("is larger than the 92 bytes that follow"));
  EXPECT_THAT(load_error(whole.substr(0, whole.size() - 10)), HasSubstr("is truncated: tensor"));
  EXPECT_THAT(load_error(join(good_.header, "")), HasSubstr("is truncated"));
  EXPECT_THAT(load_error(whole + "junk"), HasSubstr("4 bytes after the last tensor"));
}

TEST_F(BadCheckpoint, CorruptHeaders) {
  EXPECT_THAT(with_header("x" + good_.header.substr(1)), HasSubstr("not valid JSON"));
  EXPECT_THAT(with_header("[1, 2, 3]"), HasSubstr("not a JSON object"));
  EXPECT_THAT(with_header(replaced(good_.header, "__metadata__", "__metadataX_")),
              HasSubstr("tensor '__metadataX_' has no dtype"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"cufm-checkpoint\"", "\"other-checkpoint\"")),
              HasSubstr("not a cuFM checkpoint"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"format_version\":\"1\"", "\"format_version\":\"2\"")),
              HasSubstr("format version 2"));
  EXPECT_THAT(with_header(replaced(good_.header, "\\\"gelu\\\"", "\\\"tanh\\\"")),
              HasSubstr("unknown activation 'tanh'"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"step\":\"987654321012\"", "\"step\":\"-1\"")),
              HasSubstr("'step'"));
}

TEST_F(BadCheckpoint, TensorsInconsistentWithTheConfig) {
  // A model config with a different width: every layer-1 shape disagrees with the file.
  EXPECT_THAT(with_header(replaced(good_.header, "\\\"hidden\\\":[16,12]", "\\\"hidden\\\":[16,13]")),
              HasSubstr("but the model configuration needs [13]"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"dtype\":\"F32\",\"shape\":[12,16]",
                                   "\"dtype\":\"F32\",\"shape\":[16,12]")),
              HasSubstr("has shape [16, 12] but the model configuration needs [12, 16]"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"dtype\":\"F32\"", "\"dtype\":\"F16\"")),
              HasSubstr("has dtype F16; cuFM stores F32"));
  EXPECT_THAT(with_header(replaced(good_.header, "\"adam_v.layers.2.bias\"", "\"adam_v.layers.9.bias\"")),
              HasSubstr("unexpected tensor 'adam_v.layers.9.bias'"));
  // Remove one tensor's entry (and leave its bytes): reported as missing.
  std::string h = good_.header;
  const size_t at = h.find("\"adam_v.layers.2.bias\"");
  h.erase(at, h.find("},", at) + 2 - at);
  EXPECT_THAT(with_header(h), HasSubstr("missing tensor 'adam_v.layers.2.bias'"));
}

TEST_F(BadCheckpoint, BadDataOffsets) {
  // layers.0.weight is [0, 640], layers.0.bias [640, 704].
  EXPECT_THAT(with_header(replaced(good_.header, "[640,704]", "[636,700]")), HasSubstr("overlaps"));
  EXPECT_THAT(with_header(replaced(good_.header, "[640,704]", "[640,708]")), HasSubstr("needs 64 bytes"));
  EXPECT_THAT(with_header(replaced(good_.header, "[640,704]", "[704,640]")),
              HasSubstr("data_offsets [704, 640]"));
  EXPECT_THAT(with_header(replaced(good_.header, "[640,704]", "[640,\"x\"]")),
              HasSubstr("malformed data_offsets"));
  EXPECT_THAT(with_header(replaced(good_.header, "[640,704]", "[9999999,10000063]")),
              HasSubstr("is truncated"));
}

TEST_F(BadCheckpoint, NonFiniteParameters) {
  std::string data = good_.data;
  const float nan = NAN;
  std::memcpy(&data[4 * 5], &nan, sizeof nan);  // params[5]: layers.0.weight is stored first
  EXPECT_THAT(load_error(join(good_.header, data)), HasSubstr("params[5] = nan is not finite"));
}

// ---- saving never damages an existing checkpoint ----------------------------------------------
TEST(CheckpointSave, FailedSaveLeavesOldFileIntact) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  cufm::save_checkpoint(path, make_checkpoint(false));
  const std::string old_bytes = read_bytes(path);

  // Invalid state: rejected before anything is written.
  cufm::Checkpoint bad = make_checkpoint(true);
  bad.state.adam_m.pop_back();
  EXPECT_THAT(error_of([&] { cufm::save_checkpoint(path, bad); }), HasSubstr("adam_m holds"));
  bad = make_checkpoint(true);
  bad.state.params[3] = INFINITY;
  EXPECT_THAT(error_of([&] { cufm::save_checkpoint(path, bad); }), HasSubstr("params[3] = inf"));
  EXPECT_EQ(read_bytes(path), old_bytes);

  // The disk fills up part-way through the write (a file-size limit stands in for a full disk,
  // and works even as root, which ignores permissions).
  struct sigaction ignore_xfsz, old_action;
  std::memset(&ignore_xfsz, 0, sizeof ignore_xfsz);
  ignore_xfsz.sa_handler = SIG_IGN;
  ASSERT_EQ(0, sigaction(SIGXFSZ, &ignore_xfsz, &old_action));
  rlimit old_limit;
  ASSERT_EQ(0, getrlimit(RLIMIT_FSIZE, &old_limit));
  rlimit small = old_limit;
  small.rlim_cur = 4096;
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &small));
  const std::string msg = error_of([&] { cufm::save_checkpoint(path, make_checkpoint(true)); });
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &old_limit));
  ASSERT_EQ(0, sigaction(SIGXFSZ, &old_action, nullptr));
  EXPECT_THAT(msg, HasSubstr("unchanged"));
  EXPECT_EQ(read_bytes(path), old_bytes);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"c.safetensors"});

  // A successful save replaces it.
  cufm::save_checkpoint(path, make_checkpoint(true));
  EXPECT_FALSE(cufm::load_checkpoint(path).state.ema.empty());
}

TEST(CheckpointSave, UnwritableTargets) {
  TempDir dir;
  // The target is a folder: refused before anything is written; the folder and its contents stay.
  const std::string sub = dir.file("sub");
  ASSERT_EQ(0, mkdir(sub.c_str(), 0755));
  write_bytes(sub + "/keep", "keep");
  EXPECT_THAT(error_of([&] { cufm::save_checkpoint(sub, make_checkpoint(false)); }),
              HasSubstr("exists and is a folder"));
  EXPECT_EQ(read_bytes(sub + "/keep"), "keep");
  // The folder does not exist: nothing is created.
  EXPECT_THAT(
      error_of([&] { cufm::save_checkpoint(dir.file("nope/c.safetensors"), make_checkpoint(false)); }),
      HasSubstr("nope/c.safetensors"));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"sub"});
}

// ---- other readers ------------------------------------------------------------------------
// Two checksums of a float tensor's bits, wrapping mod 2^64: sum(bits) and sum((i + 1) * bits).
std::string checksum_line(const std::string& name, const std::vector<int64_t>& shape, const float* v,
                          size_t n) {
  uint64_t plain = 0, weighted = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    plain += bits;
    weighted += (i + 1) * static_cast<uint64_t>(bits);
  }
  std::ostringstream os;
  os << name << " (";
  for (size_t d = 0; d < shape.size(); ++d) os << (d ? ", " : "") << shape[d];
  os << (shape.size() == 1 ? ",)" : ")") << " " << plain << " " << weighted << "\n";
  return os.str();
}

std::string run(const std::string& command, int& status) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    status = -1;
    return out;
  }
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  status = pclose(p);
  return out;
}

TEST(CheckpointInterop, PythonSafetensorsReadsEveryTensor) {
#if defined(CUFM_PYTHON)
  const std::string python = CUFM_PYTHON;
#else
  const std::string python;
#endif
  if (python.empty()) GTEST_SKIP() << "no Python interpreter configured (CUFM_PYTHON is empty)";
  int status = 0;
  const std::string probe = run("'" + python + "' -c 'import numpy, safetensors.numpy' 2>&1", status);
  if (status != 0) GTEST_SKIP() << python << " cannot import numpy and safetensors: " << probe;

  TempDir dir;
  const cufm::Checkpoint c = make_checkpoint(true);
  const std::string path = dir.file("c.safetensors");
  cufm::save_checkpoint(path, c);

  const std::string script = dir.file("read.py");
  write_bytes(script,
              "import sys, json, numpy as np\n"
              "from safetensors import safe_open\n"
              "from safetensors.numpy import load_file\n"
              "tensors = load_file(sys.argv[1])\n"
              "for name in sorted(tensors):\n"
              "    a = tensors[name]\n"
              "    assert a.dtype == np.float32, (name, a.dtype)\n"
              "    bits = np.ascontiguousarray(a).reshape(-1).view(np.uint32).astype(np.uint64)\n"
              "    w = np.arange(1, bits.size + 1, dtype=np.uint64)\n"
              "    print(name, tuple(a.shape), int(bits.sum()), int((w * bits).sum()))\n"
              "with safe_open(sys.argv[1], 'np') as f:\n"
              "    meta = f.metadata()\n"
              "print(meta['format'], meta['step'], json.loads(meta['train'])['seed'])\n");
  const std::string got = run("'" + python + "' '" + script + "' '" + path + "' 2>&1", status);
  ASSERT_EQ(status, 0) << got;

  std::vector<std::string> lines;
  const cufm::ParamLayout layout(c.model);
  for (const auto& [prefix, buffer] :
       std::vector<std::pair<std::string, const std::vector<float>*>>{{"", &c.state.params},
                                                                      {"adam_m.", &c.state.adam_m},
                                                                      {"adam_v.", &c.state.adam_v},
                                                                      {"ema.", &c.state.ema}}) {
    for (const cufm::TensorSlot& slot : layout.tensors()) {
      lines.push_back(checksum_line(prefix + slot.name, slot.shape, buffer->data() + slot.offset, slot.size));
    }
  }
  std::sort(lines.begin(), lines.end());
  std::string want;
  for (const std::string& l : lines) want += l;
  want += "cufm-checkpoint 987654321012 9223372036854775813\n";
  EXPECT_EQ(got, want);
}

}  // namespace

// ---- claims against the file and the machine ----------------------------------------------------
namespace {

// A checkpoint header for `model` whose tensors are all there, with a sparse data section of the
// right size: a file of a few KB on disk that claims a huge model.
std::string write_claiming_checkpoint(const TempDir& dir, const cufm::MlpConfig& model) {
  nlohmann::json header;
  header["__metadata__"] = {{"format", "cufm-checkpoint"},
                            {"format_version", "1"},
                            {"model", cufm::to_json(model)},
                            {"train", cufm::to_json(cufm::TrainConfig{})},
                            {"step", "1"},
                            {"dataset", "toy:moons:100:0"}};
  uint64_t offset = 0;
  for (const char* prefix : {"", "adam_m.", "adam_v."}) {
    for (int l = 0; l < model.num_layers(); ++l) {
      const int64_t in = model.layer_in(l), out = model.layer_out(l);
      const std::string name = std::string(prefix) + "layers." + std::to_string(l);
      header[name + ".weight"] = {
          {"dtype", "F32"}, {"shape", {out, in}}, {"data_offsets", {offset, offset + 4 * out * in}}};
      offset += 4 * out * in;
      header[name + ".bias"] = {
          {"dtype", "F32"}, {"shape", {out}}, {"data_offsets", {offset, offset + 4 * out}}};
      offset += 4 * out;
    }
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::string path = dir.file("claims.safetensors");
  write_bytes(path, join(text, ""));
  EXPECT_EQ(0, ::truncate(path.c_str(), static_cast<off_t>(8 + text.size() + offset)));
  return path;
}

}  // namespace

// A header that claims a huge model in a small file fails on the first tensor whose shape the
// claim contradicts, before anything is allocated: run under a 256 MiB address-space limit, where
// allocating the claimed 1.7 GB first would end in std::bad_alloc.
TEST_F(BadCheckpoint, AHugeClaimInASmallFileAllocatesNothing) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "an address-space limit and AddressSanitizer's shadow memory do not mix";
#else
  const std::string path = dir_.file("bad.safetensors");
  write_bytes(path, join(replaced(good_.header, "\\\"hidden\\\":[16,12]", "\\\"hidden\\\":[12000,12000]"),
                         good_.data));
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const rlimit lim{size_t{256} << 20, size_t{256} << 20};
    ::setrlimit(RLIMIT_AS, &lim);
    try {
      cufm::load_checkpoint(path);
    } catch (const cufm::Error& e) {
      ::_exit(std::string(e.what()).find("has shape") != std::string::npos ? 0 : 3);
    } catch (const std::bad_alloc&) {
      ::_exit(2);
    }
    ::_exit(4);
  }
  int status = 0;
  ASSERT_EQ(child, ::waitpid(child, &status, 0));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "2: bad_alloc (allocated before checking), 3: another error, 4: loaded";
#endif
}

// A sparse file whose header is consistent and whose size matches: the claim is checked against
// the memory there is before anything is allocated, and the file is never read whole.
TEST(CheckpointLoad, AClaimBeyondTheMachinesMemoryIsRefused) {
  TempDir dir;
  cufm::MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8192, 8192};  // 67M parameters: 805 MB for the weights and Adam's moments
  const std::string path = write_claiming_checkpoint(dir, m);
  ::setenv("CUFM_MEMORY_LIMIT", "256M", 1);
  const std::string msg = error_of([&] { cufm::load_checkpoint(path); });
  ::unsetenv("CUFM_MEMORY_LIMIT");
  EXPECT_THAT(msg, HasSubstr("needs about 769 MiB of memory but only 256 MiB are available"));
}

// JSON nested 100,000 deep (200 KB, in the header itself or in the model's configuration) is
// refused as it is parsed: nothing recursive ever walks it (a stack overflow before).
TEST_F(BadCheckpoint, DeeplyNestedJsonIsRefused) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THAT(
      with_header(replaced(good_.header, "\"__metadata__\"", "\"deep\":" + deep + ",\"__metadata__\"")),
      HasSubstr("nested deeper than 16 levels, which cuFM never writes"));
  EXPECT_THAT(with_header(replaced(good_.header, "\\\"hidden\\\":[16,12]", "\\\"hidden\\\":" + deep)),
              HasSubstr("nested deeper than 16 levels, which cuFM never writes"));
}
