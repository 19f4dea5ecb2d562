// The cuBLASLt MLP (forward and backward, every activation and precision, odd widths that need
// padding) against the CPU's OpenBLAS MLP on the same random weights, input and output gradient.
// Tolerances: atol as a fraction of the tensor's largest magnitude, plus rtol * |ref|:
// fp32 1e-5 / 1e-4, tf32 5e-3 / 1e-2, bf16 3e-2 / 5e-2 (the CPU then runs on the bf16-rounded
// weights, input and gradient, so only the device's rounding of activations remains).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "cufm/model.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "kernels/convert.hpp"

namespace cufm {
namespace {

using test::DeviceArray;

struct MlpCase {
  Activation act;
  Precision precision;
  std::vector<int> hidden;
  cuda::Epilogues epilogues;  // Unfused: bias_add, the activation kernels and column_sum instead
};

struct Tol {
  double atol_frac, rtol;
};
Tol tol_for(Precision p) {
  switch (p) {
    case Precision::TF32:
      return {5e-3, 1e-2};
    case Precision::BF16:
      return {3e-2, 5e-2};
    default:
      return {1e-5, 1e-4};
  }
}

class LtMlpTest : public ::testing::TestWithParam<MlpCase> {};

TEST_P(LtMlpTest, ForwardBackwardMatchCpu) {
  CUFM_REQUIRE_GPU();
  const MlpCase mc = GetParam();
  MlpConfig cfg;
  cfg.data_dim = 2;  // input width 3: odd, padded to 8 on the device
  cfg.hidden = mc.hidden;
  cfg.activation = mc.act;
  const int64_t rows = test::pick(1000, 64);
  const bool bf16 = mc.precision == Precision::BF16;
  Model model(cfg, 17);
  std::vector<float> params = model.params();
  const int in = cfg.input_dim(), D = cfg.data_dim;
  std::vector<float> input = test::random_floats(static_cast<size_t>(rows) * in, -2.0f, 2.0f, 51);
  std::vector<float> dout = test::random_floats(static_cast<size_t>(rows) * D, -1.0f, 1.0f, 52);
  if (bf16) {
    for (auto* v : {&params, &input, &dout}) {
      for (float& x : *v) x = test::bf16_round(x);
    }
  }

  // CPU reference forward (its backward runs once the device's forward is known, below).
  cpu::MlpWorkspace ws;
  cpu::mlp_forward(cfg, params.data(), input.data(), rows, ws);
  const std::vector<float> out_ref = ws.out;

  // GPU.
  const cuda::PaddedLayout layout(cfg);
  DeviceArray<float> p_dev(layout.pad(params)), g_dev(layout.total);
  DeviceArray<__nv_bfloat16> p16(layout.total);
  if (bf16) cuda::convert_to_bf16(p_dev.get(), p16.get(), layout.total, nullptr);
  cuda::LtMlp mlp(cfg, mc.precision, rows, cuda::MlpMode::Training, p_dev.get(), bf16 ? p16.get() : nullptr,
                  g_dev.get(), nullptr, mc.epilogues);
  const std::string plan = mlp.describe();
  std::cout << plan;
  // The plan is the policy's: unfused runs no epilogue at all; fused runs no GELU epilogue at FP32.
  if (mc.epilogues == cuda::Epilogues::Unfused) {
    EXPECT_EQ(plan.find("bias"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("relu+"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("gelu+"), std::string::npos) << plan;
  } else if (mc.epilogues == cuda::Epilogues::ForwardOnly) {
    EXPECT_EQ(plan.find("drelu"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("dgelu"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("+aux"), std::string::npos) << plan;  // every fused forward was re-planned
  } else if (mc.precision == Precision::FP32) {
    EXPECT_EQ(plan.find("gelu+"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("dgelu"), std::string::npos) << plan;
  }
  const int ld_in = mlp.input_ld(), ld_out = mlp.output_ld();
  std::vector<float> in_pad(static_cast<size_t>(rows) * ld_in, 0.0f),
      dout_pad(static_cast<size_t>(rows) * ld_out, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(input.begin() + r * in, in, in_pad.begin() + r * ld_in);
    std::copy_n(dout.begin() + r * D, D, dout_pad.begin() + r * ld_out);
  }
  auto upload_as = [&](void* dst, const std::vector<float>& src) {
    if (bf16) {
      std::vector<__nv_bfloat16> h(src.size());
      for (size_t i = 0; i < src.size(); ++i) h[i] = __float2bfloat16_rn(src[i]);
      CUFM_CUDA_CHECK(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    } else {
      CUFM_CUDA_CHECK(cudaMemcpy(dst, src.data(), src.size() * 4, cudaMemcpyHostToDevice));
    }
  };
  upload_as(mlp.input(), in_pad);
  CUFM_CUDA_CHECK(cudaMemset(const_cast<float*>(mlp.output()), 0xFF, sizeof(float) * rows * ld_out));  // NaN
  mlp.forward(nullptr);
  std::vector<float> out_pad(static_cast<size_t>(rows) * ld_out);
  CUFM_CUDA_CHECK(cudaDeviceSynchronize());
  CUFM_CUDA_CHECK(cudaMemcpy(out_pad.data(), mlp.output(), out_pad.size() * 4, cudaMemcpyDeviceToHost));
  std::vector<float> out(static_cast<size_t>(rows) * D);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(out_pad.begin() + r * ld_out, D, out.begin() + r * D);
    for (int c = D; c < ld_out; ++c) ASSERT_EQ(out_pad[r * ld_out + c], 0.0f) << "padded output column " << c;
  }
  const Tol tol = tol_for(mc.precision);
  EXPECT_TRUE(test::close_to_scale(out, out_ref, tol.atol_frac, tol.rtol)) << "forward";
  EXPECT_GT(test::norm2(out), 0.0);

  // ReLU's derivative jumps at 0. Where TF32/BF16 rounding puts a pre-activation on the other side
  // of 0 from the CPU's fp32 one, the two gradients rightly differ by that row's whole contribution
  // (seen on an H200: one such row moved a bias gradient from 0.33 to 0.03). So the CPU backward
  // takes the device forward's own decisions (activation > 0), and each place where they differ
  // must lie within the forward's tolerance of 0: a disagreement anywhere else is a bug.
  if (cfg.activation == Activation::ReLU) {
    for (int l = 0; l + 1 < layout.layers; ++l) {
      const int width = cfg.hidden[l], ld = layout.out_pad[l];
      const size_t n = static_cast<size_t>(rows) * ld;
      std::vector<float> a(n);
      CUFM_CUDA_CHECK(cudaDeviceSynchronize());
      if (bf16) {
        std::vector<__nv_bfloat16> h(n);
        CUFM_CUDA_CHECK(cudaMemcpy(h.data(), mlp.hidden_activation(l), n * 2, cudaMemcpyDeviceToHost));
        a = test::to_float(h);
      } else {
        CUFM_CUDA_CHECK(cudaMemcpy(a.data(), mlp.hidden_activation(l), n * 4, cudaMemcpyDeviceToHost));
      }
      std::vector<float>& pre = ws.pre[l];
      float scale = 0.0f;
      for (float z : pre) scale = std::max(scale, std::abs(z));
      const float band = static_cast<float>(tol.atol_frac) * scale;
      int disagreements = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int j = 0; j < width; ++j) {
          const bool on = a[r * ld + j] > 0.0f;
          float& z = pre[r * width + j];
          if (on == (z > 0.0f)) continue;
          ++disagreements;
          EXPECT_LE(std::abs(z), band)
              << "layer " << l << " row " << r << " unit " << j << ": the device's ReLU is "
              << (on ? "on" : "off") << " at pre-activation " << z;
          z = on ? std::numeric_limits<float>::min() : 0.0f;
        }
      }
      std::cout << "  layer " << l << ": " << disagreements << " ReLU decisions within " << band
                << " of 0 differ from the CPU's\n";
    }
  }
  std::vector<float> grads_ref(params.size());
  cpu::mlp_backward(cfg, params.data(), input.data(), rows, dout.data(), ws, grads_ref.data());

  upload_as(mlp.dout(), dout_pad);
  g_dev.poison();
  mlp.backward(nullptr);
  const std::vector<float> g_pad = g_dev.download();
  // Padding must get exact zeros (else Adam would move the padded weights).
  std::vector<float> zeroed = g_pad;
  for (int l = 0; l < layout.layers; ++l) {
    for (int r = 0; r < layout.out[l]; ++r) {
      for (int c = 0; c < layout.in[l]; ++c)
        zeroed[layout.w_off[l] + static_cast<size_t>(r) * layout.in_pad[l] + c] = 0.0f;
      zeroed[layout.b_off[l] + r] = 0.0f;
    }
  }
  for (int l = 0; l < layout.layers; ++l) {
    for (size_t i = layout.w_off[l];
         i < layout.w_off[l] + static_cast<size_t>(layout.in_pad[l]) * layout.out_pad[l]; ++i) {
      ASSERT_EQ(zeroed[i], 0.0f) << "padded weight gradient of layer " << l << " at " << i;
    }
    for (size_t i = layout.b_off[l]; i < layout.b_off[l] + static_cast<size_t>(layout.out_pad[l]); ++i) {
      ASSERT_EQ(zeroed[i], 0.0f) << "padded bias gradient of layer " << l << " at " << i;
    }
  }
  const std::vector<float> grads = layout.unpad(g_pad);
  const ParamLayout pl(cfg);
  for (const TensorSlot& ts : pl.tensors()) {
    const std::vector<float> got(grads.begin() + ts.offset, grads.begin() + ts.offset + ts.size);
    const std::vector<float> want(grads_ref.begin() + ts.offset, grads_ref.begin() + ts.offset + ts.size);
    EXPECT_TRUE(test::close_to_scale(got, want, tol.atol_frac, tol.rtol)) << ts.name;
    EXPECT_GT(test::norm2(got), 0.0) << ts.name;
  }
}

std::vector<MlpCase> cases() {
  std::vector<MlpCase> c;
  for (cuda::Epilogues e : {cuda::Epilogues::Fused, cuda::Epilogues::Unfused}) {
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      for (Activation a : {Activation::SiLU, Activation::ReLU, Activation::GELU}) {
        c.push_back({a, p, {64, 40}, e});
      }
      c.push_back({Activation::GELU, p, {37, 130, 5}, e});  // widths that are not multiples of 8
      c.push_back({Activation::ReLU, p, {37, 130, 5}, e});
    }
  }
  // A fused forward whose derivative epilogue is refused: the plan rebuilds that forward unfused.
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    for (Activation a : {Activation::ReLU, Activation::GELU}) {
      c.push_back({a, p, {64, 40}, cuda::Epilogues::ForwardOnly});
    }
  }
  return c;
}

INSTANTIATE_TEST_SUITE_P(Cases, LtMlpTest, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<MlpCase>& pi) {
                           const cuda::Epilogues e = pi.param.epilogues;
                           std::string name = e == cuda::Epilogues::Unfused       ? "unfused_"
                                              : e == cuda::Epilogues::ForwardOnly ? "forward_only_"
                                                                                  : "";
                           name += std::string(to_string(pi.param.precision)) + "_" + to_string(pi.param.act);
                           for (int w : pi.param.hidden) name += "_" + std::to_string(w);
                           return name;
                         });

// Host-side layout logic: runs without a GPU.
TEST(PaddedLayoutTest, RoundTripsAndAligns) {
  MlpConfig cfg;
  cfg.data_dim = 3;
  cfg.hidden = {37, 130, 5};
  cfg.time_features = 6;
  cfg.num_classes = 4;
  const cuda::PaddedLayout layout(cfg);
  const Model model(cfg, 3);
  const std::vector<float> padded = layout.pad(model.params());
  ASSERT_EQ(padded.size(), layout.total);
  EXPECT_EQ(layout.total % 128, 0u);
  for (int l = 0; l < layout.layers; ++l) {
    EXPECT_EQ(layout.in_pad[l] % 8, 0);
    EXPECT_EQ(layout.out_pad[l] % 8, 0);
    EXPECT_GE(layout.in_pad[l], layout.in[l]);
    EXPECT_EQ(layout.w_off[l] % 128, 0u);  // 256-byte aligned tensors in the bf16 copy too
    EXPECT_EQ(layout.b_off[l] % 128, 0u);
    if (l > 0) {
      EXPECT_EQ(layout.in_pad[l], layout.out_pad[l - 1]);
    }
  }
  EXPECT_EQ(layout.in[0], cfg.input_dim());
  EXPECT_EQ(layout.unpad(padded), model.params());
  // Everything outside the real tensors is zero.
  double real = 0.0, all = 0.0;
  for (float v : model.params()) real += std::abs(v);
  for (float v : padded) all += std::abs(v);
  EXPECT_DOUBLE_EQ(real, all);
}

TEST(LtMlpArguments, UnsupportedShapesThrowCufmError) {
  MlpConfig cfg;
  cfg.hidden = {8};
  float dummy = 0.0f;
  // Checked before any CUDA call: no GPU needed.
  EXPECT_THROW(
      cuda::LtMlp(cfg, Precision::FP32, 0, cuda::MlpMode::Inference, &dummy, nullptr, nullptr, nullptr),
      Error);
  EXPECT_THROW(
      cuda::LtMlp(cfg, Precision::BF16, 16, cuda::MlpMode::Inference, &dummy, nullptr, nullptr, nullptr),
      Error);  // bf16 without the bf16 weights
  EXPECT_THROW(
      cuda::LtMlp(cfg, Precision::FP32, 16, cuda::MlpMode::Training, &dummy, nullptr, nullptr, nullptr),
      Error);  // training without a gradient buffer
}

}  // namespace
}  // namespace cufm
