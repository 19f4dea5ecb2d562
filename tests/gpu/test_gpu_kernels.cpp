// Each fused kernel against the CPU reference on fresh random inputs, outputs poisoned with NaN.
// Exact where the math is shared and rounding is pinned (Philox draws, the path, the loss gradient,
// Adam, the solver combinations); tolerances stated where the device uses its own intrinsics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/kernels.hpp"
#include "cufm/loss.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "kernels/activation.hpp"
#include "kernels/adam.hpp"
#include "kernels/convert.hpp"
#include "kernels/solver.hpp"

namespace cufm {
namespace {

using test::DeviceArray;

Dataset random_dataset(int64_t n, int dim, int classes, unsigned seed) {
  Dataset d;
  d.name = "random";
  d.n = n;
  d.dim = dim;
  d.x = test::random_floats(static_cast<size_t>(n) * dim, -3.0f, 3.0f, seed);
  if (classes > 0) {
    d.num_classes = classes;
    for (int64_t i = 0; i < n; ++i) d.labels.push_back(static_cast<int32_t>((i * 7 + seed) % classes));
  }
  return d;
}

struct PrepCase {
  int dim, time_features, classes;
  TimeSampling ts;
  float sigma_min, dropout;
  int context = 0;
  float context_dropout = 0.0f;
};

class FmPrepare : public ::testing::TestWithParam<PrepCase> {};

TEST_P(FmPrepare, MatchesCpuBitForBit) {
  CUFM_REQUIRE_GPU();
  const PrepCase pc = GetParam();
  MlpConfig model;
  model.data_dim = pc.dim;
  model.hidden = {16};
  model.time_features = pc.time_features;
  model.num_classes = pc.classes;
  model.context_dim = pc.context;
  TrainConfig cfg;
  cfg.batch_size = test::pick(1000, 67);
  cfg.seed = 1234567;
  cfg.path.time_sampling = pc.ts;
  cfg.path.sigma_min = pc.sigma_min;
  cfg.path.logit_mean = 0.3f;
  cfg.path.logit_std = 1.2f;
  cfg.label_dropout = pc.dropout;
  cfg.context_dropout = pc.context_dropout;
  Dataset data = random_dataset(523, pc.dim, pc.classes, 5);
  data.context_dim = pc.context;
  data.context = test::random_floats(static_cast<size_t>(data.n) * pc.context, -2.0f, 2.0f, 6);
  const uint64_t step = 7;
  cpu::PreparedBatch ref;
  cpu::fm_prepare(model, cfg, data, step, ref);

  const int in = model.input_dim(), ld = (in + 7) / 8 * 8, B = cfg.batch_size;
  DeviceArray<float> x(data.x), input(static_cast<size_t>(B) * ld), t(B),
      context(data.context.empty() ? std::vector<float>{0.0f} : data.context);
  DeviceArray<int32_t> labels(data.labels.empty() ? std::vector<int32_t>{0} : data.labels), label(B);
  DeviceArray<uint32_t> index(B);
  DeviceArray<uint64_t> step_dev(std::vector<uint64_t>{step});
  DeviceArray<__nv_bfloat16> input_bf16(static_cast<size_t>(B) * ld);
  kernels::FmBatch b;
  b.seed = cfg.seed;
  b.step = step_dev.get();
  b.batch = B;
  b.dim = pc.dim;
  b.data = x.get();
  b.labels = pc.classes > 0 ? labels.get() : nullptr;
  b.n_data = static_cast<uint32_t>(data.n);
  b.time_sampling = pc.ts;
  b.logit_mean = cfg.path.logit_mean;
  b.logit_std = cfg.path.logit_std;
  b.sigma_min = pc.sigma_min;
  b.label_dropout = pc.dropout;
  b.context = pc.context > 0 ? context.get() : nullptr;
  b.context_dropout = pc.context_dropout;
  kernels::FmInputLayout layout{pc.time_features, pc.classes, ld, pc.context};
  kernels::FmPrepareOutputs out;
  out.input = input.get();
  out.t = t.get();
  out.index = index.get();
  out.label = pc.classes > 0 ? label.get() : nullptr;
  kernels::fm_prepare(b, layout, out, nullptr);
  const std::vector<float> got = input.download();

  std::vector<float> want(got.size(), 0.0f);
  for (int i = 0; i < B; ++i)
    std::copy_n(ref.input.begin() + static_cast<size_t>(i) * in, in,
                want.begin() + static_cast<size_t>(i) * ld);
  EXPECT_TRUE(test::bits_equal(got.data(), want.data(), want.size()));
  EXPECT_GT(test::norm2(got), 0.0);
  const std::vector<float> t_got = t.download();
  EXPECT_TRUE(test::bits_equal(t_got.data(), ref.t.data(), B));
  EXPECT_EQ(index.download(), ref.index);
  if (pc.classes > 0) {
    EXPECT_EQ(label.download(), ref.label);
  }

  // bf16 input: the same values rounded once.
  kernels::FmPrepareOutputs out16;
  out16.input_bf16 = input_bf16.get();
  kernels::fm_prepare(b, layout, out16, nullptr);
  const std::vector<float> got16 = test::to_float(input_bf16.download());
  std::vector<float> want16(want.size());
  for (size_t i = 0; i < want.size(); ++i) want16[i] = test::bf16_round(want[i]);
  EXPECT_TRUE(test::bits_equal(got16.data(), want16.data(), want16.size()));
}

INSTANTIATE_TEST_SUITE_P(Cases, FmPrepare,
                         ::testing::Values(PrepCase{2, 0, 0, TimeSampling::Uniform, 0.0f, 0.0f},
                                           PrepCase{3, 8, 0, TimeSampling::LogitNormal, 0.01f, 0.0f},
                                           PrepCase{5, 0, 4, TimeSampling::Uniform, 0.0f, 0.3f},
                                           PrepCase{2, 16, 10, TimeSampling::LogitNormal, 0.001f, 1.0f},
                                           PrepCase{10, 0, 0, TimeSampling::Uniform, 0.0f, 0.0f, 20, 0.2f},
                                           PrepCase{3, 4, 3, TimeSampling::Uniform, 0.0f, 0.1f, 5, 1.0f}),
                         [](const ::testing::TestParamInfo<PrepCase>& pi) {
                           const PrepCase& c = pi.param;
                           return "d" + std::to_string(c.dim) + "_tf" + std::to_string(c.time_features) +
                                  "_c" + std::to_string(c.classes) + "_k" + std::to_string(c.context) +
                                  (c.ts == TimeSampling::Uniform ? "_uniform" : "_logitnormal");
                         });

// rows_in_order (the caller's own batch, Philox's draws): x_t, t and the labels after dropout equal
// cufm::prepare_flow's bit for bit, and fm_loss_grad's gradient flow_mse's, on a conditional batch
// with several reduction blocks and a partial noise group.
TEST(FmRowsInOrder, MatchPrepareFlowAndFlowMse) {
  CUFM_REQUIRE_GPU();
  const int B = test::pick(3000, 300), D = 5, classes = 3;
  const std::vector<float> x1 = test::random_floats(static_cast<size_t>(B) * D, -3.0f, 3.0f, 8);
  const std::vector<float> v = test::random_floats(x1.size(), -2.0f, 2.0f, 9);
  std::vector<int32_t> labels(B);
  for (int i = 0; i < B; ++i) labels[i] = i % (classes + 1);  // the null class too
  StepDraws draws;
  draws.seed = 31;
  draws.step = 6;
  draws.path.sigma_min = 0.02f;
  draws.path.time_sampling = TimeSampling::LogitNormal;
  draws.num_classes = classes;
  draws.label_dropout = 0.3f;
  std::vector<float> xt_ref(x1.size()), t_ref(B), grad_ref(x1.size());
  std::vector<int32_t> labels_ref(B);
  prepare_flow(draws, B, D, x1.data(), labels.data(), xt_ref.data(), t_ref.data(), labels_ref.data());
  const float loss_ref = flow_mse(draws, B, D, x1.data(), v.data(), grad_ref.data());

  DeviceArray<float> x(x1), v_dev(v), input(static_cast<size_t>(B) * (D + 1)), t(B), grad(x1.size()), loss(1);
  DeviceArray<int32_t> labels_dev(labels), label(B);
  DeviceArray<uint64_t> step_dev(std::vector<uint64_t>{draws.step});
  kernels::FmBatch b;
  b.seed = draws.seed;
  b.step = step_dev.get();
  b.batch = B;
  b.dim = D;
  b.data = x.get();
  b.labels = labels_dev.get();
  b.n_data = static_cast<uint32_t>(B);
  b.time_sampling = draws.path.time_sampling;
  b.logit_mean = draws.path.logit_mean;
  b.logit_std = draws.path.logit_std;
  b.sigma_min = draws.path.sigma_min;
  b.label_dropout = draws.label_dropout;
  b.rows_in_order = true;
  // [x_t | t]: the layout a model of one's own reads (cufm.torch.flow_matching_loss).
  kernels::FmInputLayout layout{0, 0, D + 1};
  kernels::FmPrepareOutputs out;
  out.input = input.get();
  out.t = t.get();
  kernels::fm_prepare(b, layout, out, nullptr);
  const std::vector<float> in = input.download();
  std::vector<float> xt(x1.size());
  for (int i = 0; i < B; ++i) {
    std::copy_n(in.begin() + static_cast<size_t>(i) * (D + 1), D, xt.begin() + static_cast<size_t>(i) * D);
  }
  EXPECT_TRUE(test::bits_equal(xt.data(), xt_ref.data(), xt.size()));
  const std::vector<float> t_got = t.download();
  EXPECT_TRUE(test::bits_equal(t_got.data(), t_ref.data(), B));
  // The labels after dropout, from a conditional layout's pass.
  DeviceArray<float> input_c(static_cast<size_t>(B) * (D + 1 + classes + 1));
  kernels::FmPrepareOutputs out_c;
  out_c.input = input_c.get();
  out_c.label = label.get();
  kernels::fm_prepare(b, kernels::FmInputLayout{0, classes, D + 1 + classes + 1}, out_c, nullptr);
  EXPECT_EQ(label.download(), labels_ref);

  const size_t ws_bytes = kernels::fm_loss_grad_workspace_bytes(B, D);
  DeviceArray<char> ws(ws_bytes);
  ws.zero();
  kernels::FmLossOutputs lo;
  lo.grad = grad.get();
  lo.ld = D;
  lo.loss = loss.get();
  kernels::fm_loss_grad(b, v_dev.get(), D, lo, ws.get(), ws_bytes, nullptr);
  const std::vector<float> g = grad.download();
  EXPECT_TRUE(test::bits_equal(g.data(), grad_ref.data(), g.size()));
  EXPECT_NEAR(loss.download()[0], loss_ref, 2e-7 * loss_ref);  // double sums in another order

  // n_data other than batch is refused in this mode.
  b.n_data = static_cast<uint32_t>(B - 1);
  try {
    kernels::fm_prepare(b, layout, out, nullptr);
    ADD_FAILURE() << "rows_in_order with n_data != batch was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rows_in_order, row i is data row i"), std::string::npos)
        << e.what();
  }
}

// fp32 and bf16 gradients, bit for bit against the CPU's (rounded to bf16 for the latter). The
// last case has more work items (B x (noise groups + tail chunks) = 300,000) than the launch has
// threads (1024 x 256), so the grid-stride loop and its per-thread partial sums run several rounds.
TEST(FmLossGrad, MatchesCpu) {
  CUFM_REQUIRE_GPU();
  struct Case {
    int dim, batch;
  };
  for (const Case lc : {Case{2, 3000}, Case{3, 3000}, Case{6, 3000}, Case{2, 100000}}) {
    const int dim = lc.dim;
    MlpConfig model;
    model.data_dim = dim;
    model.hidden = {16};
    TrainConfig cfg;
    cfg.batch_size = test::pick(lc.batch, 300);  // several blocks of the reduction
    cfg.seed = 99;
    cfg.path.sigma_min = 0.01f;
    const Dataset data = random_dataset(777, dim, 0, 11);
    const uint64_t step = 3;
    cpu::PreparedBatch batch;
    cpu::fm_prepare(model, cfg, data, step, batch);
    const int B = cfg.batch_size, ldv = dim + 5, ld = (dim + 7) / 8 * 8;
    SCOPED_TRACE("dim " + std::to_string(dim) + " batch " + std::to_string(B));
    const std::vector<float> v = test::random_floats(static_cast<size_t>(B) * ldv, -2.0f, 2.0f, 3);
    std::vector<float> v_dense(static_cast<size_t>(B) * dim), grad_ref(v_dense.size());
    for (int i = 0; i < B; ++i)
      std::copy_n(v.begin() + static_cast<size_t>(i) * ldv, dim,
                  v_dense.begin() + static_cast<size_t>(i) * dim);
    const float loss_ref = cpu::fm_loss_grad(model, cfg, data, step, batch, v_dense.data(), grad_ref.data());

    DeviceArray<float> x(data.x), v_dev(v), grad(static_cast<size_t>(B) * ld), loss(1);
    DeviceArray<__nv_bfloat16> grad16(static_cast<size_t>(B) * ld);
    DeviceArray<uint64_t> step_dev(std::vector<uint64_t>{step});
    const size_t ws_bytes = kernels::fm_loss_grad_workspace_bytes(B, dim);
    DeviceArray<char> ws(ws_bytes);
    ws.zero();
    kernels::FmBatch b;
    b.seed = cfg.seed;
    b.step = step_dev.get();
    b.batch = B;
    b.dim = dim;
    b.data = x.get();
    b.n_data = static_cast<uint32_t>(data.n);
    b.sigma_min = cfg.path.sigma_min;
    kernels::FmLossOutputs out;
    out.grad = grad.get();
    out.ld = ld;
    out.loss = loss.get();
    kernels::fm_loss_grad(b, v_dev.get(), ldv, out, ws.get(), ws_bytes, nullptr);
    const std::vector<float> g = grad.download();
    std::vector<float> want(g.size(), 0.0f);
    for (int i = 0; i < B; ++i)
      std::copy_n(grad_ref.begin() + static_cast<size_t>(i) * dim, dim,
                  want.begin() + static_cast<size_t>(i) * ld);
    EXPECT_TRUE(test::bits_equal(g.data(), want.data(), want.size()));
    EXPECT_GT(test::norm2(g), 0.0);
    const float l1 = loss.download()[0];
    // Double sums in another order, rounded to float: equal or one ulp apart.
    EXPECT_NEAR(l1, loss_ref, 2e-7 * std::abs(loss_ref));
    // Fixed-order reduction: a second call gives the same bits (and the workspace was reset).
    loss.poison();
    kernels::fm_loss_grad(b, v_dev.get(), ldv, out, ws.get(), ws_bytes, nullptr);
    const float l2 = loss.download()[0];
    EXPECT_EQ(std::memcmp(&l1, &l2, sizeof(float)), 0);
    // The bf16 gradient: the fp32 one rounded once; the loss does not depend on the output type.
    out.grad = nullptr;
    out.grad_bf16 = grad16.get();
    loss.poison();
    kernels::fm_loss_grad(b, v_dev.get(), ldv, out, ws.get(), ws_bytes, nullptr);
    std::vector<float> want16(want.size());
    for (size_t i = 0; i < want.size(); ++i) want16[i] = test::bf16_round(want[i]);
    EXPECT_TRUE(test::bits_equal(test::to_float(grad16.download()).data(), want16.data(), want16.size()));
    const float l3 = loss.download()[0];
    EXPECT_EQ(std::memcmp(&l1, &l3, sizeof(float)), 0);
  }
}

TEST(Activation, ForwardBackwardMatchCpu) {
  CUFM_REQUIRE_GPU();
  const int rows = test::pick(513, 37), width = 72;
  const size_t n = static_cast<size_t>(rows) * width;
  for (Activation act : {Activation::SiLU, Activation::ReLU, Activation::GELU}) {
    const std::vector<float> z = test::random_floats(n, -4.0f, 4.0f, 21);
    const std::vector<float> bias = test::random_floats(width, -1.0f, 1.0f, 22);
    const std::vector<float> g = test::random_floats(n, -1.0f, 1.0f, 23);
    std::vector<float> z_ref(n), a_ref(n), g_ref(n);
    for (size_t i = 0; i < n; ++i) {
      z_ref[i] = z[i] + bias[i % width];
      a_ref[i] = hd::activate(act, z_ref[i]);
      g_ref[i] = g[i] * hd::activate_grad(act, z_ref[i]);
    }
    DeviceArray<float> zd(z), ad(n), bd(bias), gd(g);
    cuda::activation_forward(act, cuda::DType::F32, zd.get(), ad.get(), bd.get(), rows, width, nullptr);
    // fp32: the device's __expf/tanhf differ from the host's by a few ulp: atol 1e-6, rtol 1e-5.
    EXPECT_TRUE(test::all_close(zd.download().data(), z_ref.data(), n, 0.0, 0.0)) << to_string(act);
    const std::vector<float> a = ad.download();
    EXPECT_TRUE(test::all_close(a.data(), a_ref.data(), n, 1e-6, 1e-5)) << to_string(act);
    EXPECT_GT(test::norm2(a), 0.0);
    cuda::activation_backward(act, cuda::DType::F32, gd.get(), zd.get(), rows, width, nullptr);
    EXPECT_TRUE(test::all_close(gd.download().data(), g_ref.data(), n, 1e-6, 1e-5)) << to_string(act);

    // bf16 storage: one rounding of the inputs and of the outputs (rtol 1e-2).
    std::vector<__nv_bfloat16> z16(n);
    for (size_t i = 0; i < n; ++i) z16[i] = __float2bfloat16_rn(z_ref[i]);
    DeviceArray<__nv_bfloat16> zb(z16), ab(n);
    cuda::activation_forward(act, cuda::DType::BF16, zb.get(), ab.get(), nullptr, rows, width, nullptr);
    EXPECT_TRUE(test::all_close(test::to_float(ab.download()).data(), a_ref.data(), n, 2e-2, 1e-2))
        << to_string(act);
    // bf16 backward: g (bf16) *= act'(z (bf16)), computed in fp32 and rounded once.
    std::vector<__nv_bfloat16> g16(n);
    std::vector<float> g16_ref(n);
    for (size_t i = 0; i < n; ++i) {
      g16[i] = __float2bfloat16_rn(g[i]);
      g16_ref[i] = __bfloat162float(g16[i]) * hd::activate_grad(act, __bfloat162float(z16[i]));
    }
    DeviceArray<__nv_bfloat16> gb(g16);
    cuda::activation_backward(act, cuda::DType::BF16, gb.get(), zb.get(), rows, width, nullptr);
    const std::vector<float> gb_got = test::to_float(gb.download());
    EXPECT_TRUE(test::all_close(gb_got.data(), g16_ref.data(), n, 1e-2, 1e-2)) << to_string(act);
    EXPECT_GT(test::norm2(gb_got), 0.0);
    // bf16 forward with the fp32 bias: z + b in fp32, written back rounded (exact), a from the
    // unrounded sum.
    std::vector<__nv_bfloat16> zr16(n);
    std::vector<float> zb_want(n), ab_want(n);
    for (size_t i = 0; i < n; ++i) {
      zr16[i] = __float2bfloat16_rn(z[i]);
      const float sum = __bfloat162float(zr16[i]) + bias[i % width];
      zb_want[i] = test::bf16_round(sum);
      ab_want[i] = hd::activate(act, sum);
    }
    DeviceArray<__nv_bfloat16> zbb(zr16), abb(n);
    cuda::activation_forward(act, cuda::DType::BF16, zbb.get(), abb.get(), bd.get(), rows, width, nullptr);
    EXPECT_TRUE(test::bits_equal(test::to_float(zbb.download()).data(), zb_want.data(), n)) << to_string(act);
    EXPECT_TRUE(test::all_close(test::to_float(abb.download()).data(), ab_want.data(), n, 2e-2, 1e-2))
        << to_string(act);
  }
}

TEST(Activation, ColumnSumAndBiasAddAreExactOnIntegers) {
  CUFM_REQUIRE_GPU();
  const int rows = test::pick(4099, 70), width = 40;
  std::vector<float> g(static_cast<size_t>(rows) * width);
  for (size_t i = 0; i < g.size(); ++i)
    g[i] = static_cast<float>(static_cast<int>((i * 2654435761u) % 17) - 8);
  std::vector<float> want(width, 0.0f);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < width; ++c) want[c] += g[static_cast<size_t>(r) * width + c];
  }
  DeviceArray<float> gd(g), db(width),
      ws(std::max<size_t>(1, cuda::column_sum_workspace_floats(rows, width)));
  cuda::column_sum(cuda::DType::F32, gd.get(), rows, width, db.get(), ws.get(), nullptr);
  const std::vector<float> got = db.download();
  EXPECT_TRUE(test::bits_equal(got.data(), want.data(), width));
  EXPECT_GT(test::norm2(got), 0.0);
  // The same small integers in bf16 are exact too.
  std::vector<__nv_bfloat16> g16(g.size());
  for (size_t i = 0; i < g.size(); ++i) g16[i] = __float2bfloat16_rn(g[i]);
  DeviceArray<__nv_bfloat16> gd16(g16);
  db.poison();
  cuda::column_sum(cuda::DType::BF16, gd16.get(), rows, width, db.get(), ws.get(), nullptr);
  EXPECT_TRUE(test::bits_equal(db.download().data(), want.data(), width));

  // bias_add (the output layer without cuBLASLt's bias epilogue): z += bias, exact on integers.
  std::vector<float> bias(width), z_want(g.size());
  for (int c = 0; c < width; ++c) bias[c] = static_cast<float>(c % 7 - 3);
  for (size_t i = 0; i < g.size(); ++i) z_want[i] = g[i] + bias[i % width];
  DeviceArray<float> bias_d(bias);
  cuda::bias_add(cuda::DType::F32, gd.get(), bias_d.get(), rows, width, nullptr);
  EXPECT_TRUE(test::bits_equal(gd.download().data(), z_want.data(), z_want.size()));
  cuda::bias_add(cuda::DType::BF16, gd16.get(), bias_d.get(), rows, width, nullptr);
  EXPECT_TRUE(test::bits_equal(test::to_float(gd16.download()).data(), z_want.data(), z_want.size()));
}

// On random floats the order matters: the device must add in column_sum_host's order, bit for bit,
// with one split (no second pass), several, and the capped split count (longer splits).
TEST(Activation, ColumnSumFollowsItsHostOrderBitForBit) {
  CUFM_REQUIRE_GPU();
  for (const int rows : {200, 4096, test::pick(100003, 9000)}) {
    for (const int width : {8, 520}) {
      const std::vector<float> g = test::random_floats(static_cast<size_t>(rows) * width, -1.0f, 1.0f, 77);
      std::vector<float> want(width);
      cuda::column_sum_host(g.data(), rows, width, want.data());
      DeviceArray<float> gd(g), db(width),
          ws(std::max<size_t>(1, cuda::column_sum_workspace_floats(rows, width)));
      db.poison();
      cuda::column_sum(cuda::DType::F32, gd.get(), rows, width, db.get(), ws.get(), nullptr);
      EXPECT_TRUE(test::bits_equal(db.download().data(), want.data(), width)) << rows << " x " << width;
      // bf16 input: the host order on the exactly converted values.
      std::vector<__nv_bfloat16> g16(g.size());
      std::vector<float> g16f(g.size());
      for (size_t i = 0; i < g.size(); ++i) {
        g16[i] = __float2bfloat16_rn(g[i]);
        g16f[i] = __bfloat162float(g16[i]);
      }
      cuda::column_sum_host(g16f.data(), rows, width, want.data());
      DeviceArray<__nv_bfloat16> gd16(g16);
      db.poison();
      cuda::column_sum(cuda::DType::BF16, gd16.get(), rows, width, db.get(), ws.get(), nullptr);
      EXPECT_TRUE(test::bits_equal(db.download().data(), want.data(), width))
          << "bf16 " << rows << " x " << width;
    }
  }
}

TEST(Adam, MatchesCpuBitForBit) {
  CUFM_REQUIRE_GPU();
  const size_t n = static_cast<size_t>(test::pick(100000, 4096));
  struct Case {
    Optimizer kind;
    float grad_clip, weight_decay;
    LrSchedule schedule;
    uint64_t warmup;
  };
  // Clipping active (the norm of these gradients is ~180) and off (the default: adam_prepare's
  // other branch, no norm reduction), with and without weight decay; and the learning rate from
  // each schedule, in its warm-up (step 5 of 8) and in its decay (steps 1..).
  for (const Case ac : {Case{Optimizer::Adam, 1.0f, 0.01f, LrSchedule::Constant, 0},
                        Case{Optimizer::AdamW, 1.0f, 0.01f, LrSchedule::Constant, 0},
                        Case{Optimizer::Adam, 0.0f, 0.0f, LrSchedule::Constant, 0},
                        Case{Optimizer::AdamW, 0.0f, 0.01f, LrSchedule::Constant, 0},
                        Case{Optimizer::Adam, 0.0f, 0.0f, LrSchedule::Cosine, 8},
                        Case{Optimizer::AdamW, 1.0f, 0.0f, LrSchedule::Cosine, 1},
                        Case{Optimizer::Adam, 0.0f, 0.0f, LrSchedule::Linear, 2}}) {
    SCOPED_TRACE(std::string(ac.kind == Optimizer::Adam ? "adam" : "adamw") + " clip " +
                 std::to_string(ac.grad_clip) + " wd " + std::to_string(ac.weight_decay) + " " +
                 to_string(ac.schedule) + " warm-up " + std::to_string(ac.warmup));
    OptimConfig o;
    o.lr_schedule = ac.schedule;
    o.warmup_steps = ac.warmup;
    o.decay_steps = 7;
    o.min_lr = 1e-4f;
    o.kind = ac.kind;
    o.lr = 3e-3f;
    o.weight_decay = ac.weight_decay;
    o.grad_clip = ac.grad_clip;
    o.ema_decay = 0.99f;
    std::vector<float> p = test::random_floats(n, -1.0f, 1.0f, 31),
                       g = test::random_floats(n, -1.0f, 1.0f, 32);
    std::vector<float> m = test::random_floats(n, -0.1f, 0.1f, 33),
                       v = test::random_floats(n, 0.0f, 0.01f, 34);
    std::vector<float> ema = test::random_floats(n, -1.0f, 1.0f, 35);
    DeviceArray<float> pd(p), gd(g), md(m), vd(v), ed(ema);
    DeviceArray<__nv_bfloat16> p16(n);
    const uint64_t done = 4;
    cuda::AdamDeviceState st{};
    st.step = done;
    DeviceArray<cuda::AdamDeviceState> sd(std::vector<cuda::AdamDeviceState>{st});
    DeviceArray<char> ws(cuda::adam_workspace_bytes());
    ws.zero();
    cuda::adam_prepare(o, gd.get(), n, sd.get(), ws.get(), nullptr);
    cuda::adam_update(sd.get(), gd.get(), n, pd.get(), md.get(), vd.get(), ed.get(), p16.get(), nullptr);

    // The norm is a double sum in another order on each side (the CPU's chunks, the device's
    // strided blocks), rounded to float: equal to within one float ulp, not always to the bit. The
    // update is then checked exactly from the device's own norm, so a sum that lands on the other
    // side of a float rounding boundary cannot fail every later comparison at once.
    const float norm = o.grad_clip > 0.0f ? static_cast<float>(cpu::l2_norm(g.data(), n)) : 0.0f;
    const cuda::AdamDeviceState after = sd.download()[0];
    EXPECT_EQ(after.step, done + 1);
    EXPECT_LE(std::fabs(after.grad_norm - norm), std::nextafter(norm, INFINITY) - norm) << after.grad_norm;
    const hd::AdamCoeffs c = cpu::adam_coeffs(o, done + 1, after.grad_norm);
    cpu::adam_step(c, g.data(), n, p.data(), m.data(), v.data(), ema.data());
    EXPECT_EQ(after.coeffs.grad_scale, c.grad_scale);
    EXPECT_EQ(after.coeffs.lr, c.lr);
    EXPECT_EQ(after.coeffs.bias_corr1, c.bias_corr1);
    EXPECT_EQ(after.coeffs.bias_corr2_sqrt, c.bias_corr2_sqrt);
    const std::vector<float> pg = pd.download();
    EXPECT_TRUE(test::bits_equal(pg.data(), p.data(), n));
    EXPECT_TRUE(test::bits_equal(md.download().data(), m.data(), n));
    EXPECT_TRUE(test::bits_equal(vd.download().data(), v.data(), n));
    EXPECT_TRUE(test::bits_equal(ed.download().data(), ema.data(), n));
    std::vector<float> p16_want(n);
    for (size_t i = 0; i < n; ++i) p16_want[i] = test::bf16_round(p[i]);
    EXPECT_TRUE(test::bits_equal(test::to_float(p16.download()).data(), p16_want.data(), n));
    EXPECT_GT(test::norm2(pg), 0.0);
  }
}

// x + h * a * k (x nullptr: zeros), the one-term stage combination.
cuda::StageCombination one_term(const float* x, const float* k, float a, float h) {
  cuda::StageCombination c;
  c.x = x;
  c.k[0] = k;
  c.a[0] = a;
  c.terms = 1;
  c.h = h;
  return c;
}

TEST(Sampler, NoiseMatchesCpuBitForBit) {
  CUFM_REQUIRE_GPU();
  const int64_t count = test::pick(5000, 100);
  for (int dim : {1, 2, 7}) {
    std::vector<float> want(static_cast<size_t>(count) * dim);
    sampler_noise(42, 0, count, dim, want.data());
    DeviceArray<float> x(want.size());
    cuda::sampler_noise(42, count, dim, x.get(), nullptr);
    const std::vector<float> got = x.download();
    EXPECT_TRUE(test::bits_equal(got.data(), want.data(), want.size())) << "dim " << dim;
    EXPECT_GT(test::norm2(got), 0.0);
  }
}

TEST(Sampler, StageInputCollectAndUpdateMatchCpu) {
  CUFM_REQUIRE_GPU();
  MlpConfig model;
  model.data_dim = 3;
  model.hidden = {8};
  model.time_features = 4;
  model.num_classes = 5;
  model.context_dim = 3;
  const int64_t n = test::pick(700, 50);
  const int dim = 3, in = model.input_dim(), ld = (in + 7) / 8 * 8;
  const size_t e = static_cast<size_t>(n) * dim;
  const std::vector<float> x = test::random_floats(e, -2.0f, 2.0f, 41);
  const std::vector<float> k0 = test::random_floats(e, -1.0f, 1.0f, 42),
                           k1 = test::random_floats(e, -1.0f, 1.0f, 43);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 5);
  const std::vector<float> context = test::random_floats(static_cast<size_t>(n) * 3, -1.0f, 1.0f, 44);
  DeviceArray<float> xd(x), k0d(k0), k1d(k1), yd(e), input(static_cast<size_t>(2 * n) * ld), cd(context);
  DeviceArray<int32_t> ld_labels(labels);
  cuda::StageCombination c;
  c.x = xd.get();
  c.k[0] = k0d.get();
  c.k[1] = k1d.get();
  c.a[0] = 0.3f;
  c.a[1] = -0.7f;
  c.terms = 2;
  c.h = 0.125f;
  cuda::ModelInput mi;
  mi.n = n;
  mi.dim = dim;
  mi.time_features = 4;
  mi.num_classes = 5;
  mi.labels = ld_labels.get();
  mi.context_dim = 3;
  mi.context = cd.get();
  mi.copies = 2;
  mi.input = input.get();
  mi.ld = ld;
  const float t = 0.3125f;
  cuda::stage_input(c, t, mi, yd.get(), nullptr);
  // The CPU twin: the same combination over the host arrays (hd::combine_at, the CPU solvers' own).
  cuda::StageCombination host_c = c;
  host_c.x = x.data();
  host_c.k[0] = k0.data();
  host_c.k[1] = k1.data();
  std::vector<float> y(e), want(static_cast<size_t>(2 * n) * ld, 0.0f);
  for (size_t i = 0; i < e; ++i) y[i] = hd::combine_at(host_c, static_cast<int64_t>(i));
  for (int64_t i = 0; i < n; ++i) {
    cpu::write_input_row(model, y.data() + i * dim, t, labels[i], context.data() + i * 3,
                         want.data() + i * ld);
    cpu::write_input_row(model, y.data() + i * dim, t, model.null_class(), nullptr,
                         want.data() + (n + i) * ld);
  }
  EXPECT_TRUE(test::bits_equal(yd.download().data(), y.data(), e));
  const std::vector<float> got = input.download();
  EXPECT_TRUE(test::bits_equal(got.data(), want.data(), want.size()));
  // The same input in bf16: the fp32 values rounded once.
  DeviceArray<__nv_bfloat16> input16(static_cast<size_t>(2 * n) * ld);
  cuda::ModelInput mi16 = mi;
  mi16.type = cuda::DType::BF16;
  mi16.input = input16.get();
  cuda::stage_input(c, t, mi16, nullptr, nullptr);
  std::vector<float> want16(want.size());
  for (size_t i = 0; i < want.size(); ++i) want16[i] = test::bf16_round(want[i]);
  EXPECT_TRUE(test::bits_equal(test::to_float(input16.download()).data(), want16.data(), want16.size()));

  // Guidance combine from a [2n, ldv] output.
  const int ldv = 8;
  const std::vector<float> v = test::random_floats(static_cast<size_t>(2 * n) * ldv, -1.0f, 1.0f, 44);
  DeviceArray<float> vd(v), kd(e);
  cuda::collect_velocity(vd.get(), ldv, n, dim, 2, 1.5f, kd.get(), nullptr);
  std::vector<float> kw(e);
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) kw[i * dim + d] = hd::guided(v[(n + i) * ldv + d], v[i * ldv + d], 1.5f);
  }
  EXPECT_TRUE(test::bits_equal(kd.download().data(), kw.data(), e));

  // Step update with an error estimate: x_new exact, the scaled error sum to double rounding.
  const cuda::StageCombination err = one_term(nullptr, k1d.get(), 0.01f, 0.125f);
  DeviceArray<double> sum(1);
  DeviceArray<char> ws(cuda::solver_workspace_bytes());
  ws.zero();
  DeviceArray<float> xn(e);
  cuda::solver_update(c, static_cast<int64_t>(e), xn.get(), &err, 1e-3f, 1e-3f, sum.get(), ws.get(), nullptr);
  double sum_ref = 0.0;
  const cuda::StageCombination host_err = one_term(nullptr, k1.data(), 0.01f, 0.125f);
  for (size_t i = 0; i < e; ++i) {
    sum_ref +=
        hd::scaled_error_sq(hd::combine_at(host_err, static_cast<int64_t>(i)), x[i], y[i], 1e-3f, 1e-3f);
  }
  EXPECT_TRUE(test::bits_equal(xn.download().data(), y.data(), e));
  EXPECT_NEAR(sum.download()[0], sum_ref, 1e-12 * sum_ref);
  EXPECT_GT(sum_ref, 0.0);
}

// The step update with its error reduction over more elements than the launch has threads, so that
// each thread's partial sum carries over several grid-stride rounds.
// The unguided paths: one copy of the rows with one label for all (and with no classes at all),
// no stage-point output, collect_velocity's plain copy, and the scaled norm against zeros.
TEST(Sampler, UnguidedInputsAndNormsMatchCpu) {
  CUFM_REQUIRE_GPU();
  const int64_t n = test::pick(513, 33);
  const int dim = 5;
  const size_t e = static_cast<size_t>(n) * dim;
  const std::vector<float> x = test::random_floats(e, -2.0f, 2.0f, 81),
                           k = test::random_floats(e, -1.0f, 1.0f, 82);
  DeviceArray<float> xd(x), kd(k);
  const cuda::StageCombination c = one_term(xd.get(), kd.get(), 0.5f, 0.25f);
  std::vector<float> y(e);
  for (size_t i = 0; i < e; ++i) y[i] = x[i] + 0.25f * (0.0f + 0.5f * k[i]);
  for (const int classes : {0, 4}) {
    MlpConfig model;
    model.data_dim = dim;
    model.hidden = {8};
    model.time_features = 0;
    model.num_classes = classes;
    const int in = model.input_dim(), ld = (in + 7) / 8 * 8;
    DeviceArray<float> input(static_cast<size_t>(n) * ld);
    input.poison();
    cuda::ModelInput mi;
    mi.n = n;
    mi.dim = dim;
    mi.time_features = 0;
    mi.num_classes = classes;
    mi.label_all = classes > 0 ? 2 : -1;
    mi.copies = 1;
    mi.input = input.get();
    mi.ld = ld;
    const float t = 0.75f;
    cuda::stage_input(c, t, mi, nullptr, nullptr);
    std::vector<float> want(static_cast<size_t>(n) * ld, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      cpu::write_input_row(model, y.data() + i * dim, t, classes > 0 ? 2 : -1, nullptr, want.data() + i * ld);
    }
    EXPECT_TRUE(test::bits_equal(input.download().data(), want.data(), want.size())) << classes << " classes";
  }
  // collect_velocity without guidance: the first dim columns of each row, as they are.
  const int ldv = 8;
  const std::vector<float> v = test::random_floats(static_cast<size_t>(n) * ldv, -1.0f, 1.0f, 83);
  DeviceArray<float> vd(v), out(e);
  out.poison();
  cuda::collect_velocity(vd.get(), ldv, n, dim, 1, 0.0f, out.get(), nullptr);
  std::vector<float> vw(e);
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) vw[i * dim + d] = v[i * ldv + d];
  }
  EXPECT_TRUE(test::bits_equal(out.download().data(), vw.data(), e));
  // The scaled norm of k against x and against zeros (xn nullptr: the initial step's norms).
  DeviceArray<double> sum(1);
  DeviceArray<char> ws(cuda::solver_workspace_bytes());
  ws.zero();
  for (const bool with_xn : {true, false}) {
    DeviceArray<float> yd(y);
    cuda::scaled_norm_sq(kd.get(), xd.get(), with_xn ? yd.get() : nullptr, static_cast<int64_t>(e), 1e-3f,
                         1e-2f, sum.get(), ws.get(), nullptr);
    double want = 0.0;
    for (size_t i = 0; i < e; ++i)
      want += hd::scaled_error_sq(k[i], x[i], with_xn ? y[i] : 0.0f, 1e-3f, 1e-2f);
    EXPECT_NEAR(sum.download()[0], want, 1e-12 * want) << (with_xn ? "with x_new" : "against zeros");
    EXPECT_GT(want, 0.0);
  }
}

TEST(Sampler, UpdateOverManyGridRounds) {
  CUFM_REQUIRE_GPU();
  const size_t e = static_cast<size_t>(test::pick(600000, 3000));
  const std::vector<float> x = test::random_floats(e, -2.0f, 2.0f, 51);
  const std::vector<float> k = test::random_floats(e, -1.0f, 1.0f, 52);
  DeviceArray<float> xd(x), kd(k), xn(e);
  const cuda::StageCombination c = one_term(xd.get(), kd.get(), 1.0f, 0.05f);
  const cuda::StageCombination err = one_term(nullptr, kd.get(), 0.02f, 0.05f);
  DeviceArray<double> sum(1);
  DeviceArray<char> ws(cuda::solver_workspace_bytes());
  ws.zero();
  cuda::solver_update(c, static_cast<int64_t>(e), xn.get(), &err, 1e-3f, 1e-3f, sum.get(), ws.get(), nullptr);
  std::vector<float> want(e);
  double sum_ref = 0.0;
  const cuda::StageCombination host_c = one_term(x.data(), k.data(), 1.0f, 0.05f),
                               host_err = one_term(nullptr, k.data(), 0.02f, 0.05f);
  for (size_t i = 0; i < e; ++i) {  // the CPU twin: hd::combine_at over the host arrays
    want[i] = hd::combine_at(host_c, static_cast<int64_t>(i));
    sum_ref +=
        hd::scaled_error_sq(hd::combine_at(host_err, static_cast<int64_t>(i)), x[i], want[i], 1e-3f, 1e-3f);
  }
  EXPECT_TRUE(test::bits_equal(xn.download().data(), want.data(), e));
  const double s1 = sum.download()[0];
  EXPECT_NEAR(s1, sum_ref, 1e-12 * sum_ref);
  EXPECT_GT(sum_ref, 0.0);
  // The same bits again: the reduction's order is fixed and its workspace was reset.
  sum.poison();
  cuda::solver_update(c, static_cast<int64_t>(e), xn.get(), &err, 1e-3f, 1e-3f, sum.get(), ws.get(), nullptr);
  const double s2 = sum.download()[0];
  EXPECT_EQ(std::memcmp(&s1, &s2, sizeof(double)), 0);
}

// Argument checks happen before any CUDA call: these run without a GPU.
TEST(KernelArguments, BadShapesThrowCufmError) {
  kernels::FmBatch b;
  kernels::FmInputLayout layout{0, 0, 8};
  kernels::FmPrepareOutputs out;
  EXPECT_THROW(kernels::fm_prepare(b, layout, out, nullptr), Error);  // batch 0
  float dummy = 0.0f;
  uint64_t step = 0;
  b.batch = 4;
  b.dim = 3;
  b.data = &dummy;
  b.n_data = 1;
  b.step = &step;
  out.input = &dummy;
  layout.ld = 3;  // below the input width 4
  EXPECT_THROW(kernels::fm_prepare(b, layout, out, nullptr), Error);
  layout.ld = 8;
  __nv_bfloat16 h{};
  out.input_bf16 = &h;  // both outputs set
  EXPECT_THROW(kernels::fm_prepare(b, layout, out, nullptr), Error);
  kernels::FmLossOutputs lo;
  lo.grad = &dummy;
  lo.ld = 4;
  lo.loss = &dummy;
  char ws[16];
  EXPECT_THROW(kernels::fm_loss_grad(b, &dummy, 3, lo, ws, sizeof ws, nullptr),
               Error);  // workspace too small
  // ldv < dim, with a workspace large enough that only ldv is wrong.
  std::vector<char> big(kernels::fm_loss_grad_workspace_bytes(b.batch, b.dim));
  EXPECT_NE(test::error_of([&] {
              kernels::fm_loss_grad(b, &dummy, 2, lo, big.data(), big.size(), nullptr);
            }).find("ldv"),
            std::string::npos);
  EXPECT_THROW(
      cuda::activation_forward(Activation::SiLU, cuda::DType::F32, &dummy, &dummy, nullptr, 4, 6, nullptr),
      Error);  // width not a multiple of 4
  EXPECT_THROW(cuda::adam_update(nullptr, &dummy, 6, &dummy, &dummy, &dummy, nullptr, nullptr, nullptr),
               Error);
}

}  // namespace
}  // namespace cufm
