// The fused training step's block program (kernels/fused_train.hpp) through its CPU twin
// (cpu::fused_train): its loss and gradient against the CPU backend's loss_and_grad on the same
// draws, at fp32's tolerance, for every activation, time features, classes, contexts, widths up to
// the fused limit, 1 to 8 layers and ragged batches (1, 127, 129 rows, tiles of 8 to 64, runs of
// several tiles per block); bit for bit the same on a second run (each sum in an order fixed by its
// element); the refusals. The GPU runs the same program (tests/gpu/test_gpu_training.cpp holds the
// kernel to this twin).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cufm/cufm.hpp"
#include "fused_train_twin.hpp"
#include "kernels/fused_train.hpp"
#include "test_util.hpp"

namespace cufm {
namespace {

uint32_t float_bits(float x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

using test::TrainCase;

MlpConfig case_model(const TrainCase& k) {
  return test::train_case_model(k);
}

const TrainCase kCases[] = {
    {"silu", {32, 48}, Activation::SiLU, 2, 0, 0, 0},
    {"relu, time features", {64, 64, 64}, Activation::ReLU, 3, 8, 0, 0},
    {"gelu, classes", {40, 40}, Activation::GELU, 2, 0, 3, 0},
    {"silu, context, classes", {128, 96}, Activation::SiLU, 5, 4, 4, 5},
    {"silu, one hidden layer", {16}, Activation::SiLU, 3, 0, 2, 0},
    {"gelu, 8 layers of 128, D 64", {128, 128, 128, 128, 128, 128, 128}, Activation::GELU, 64, 2, 0, 0},
    {"relu, odd widths", {7, 1, 13}, Activation::ReLU, 1, 0, 0, 3},
};

TEST(FusedTrainTwin, MatchesTheCpuLossAndGradient) {
  const float sigma_min = 0.001f;
  PathConfig path;
  path.sigma_min = sigma_min;
  RunOptions cpu;
  cpu.device = Device::CPU;
  for (const TrainCase& k : kCases) {
    SCOPED_TRACE(k.name);
    const Model model(case_model(k), 23);
    for (const int64_t B : {int64_t{1}, int64_t{127}, int64_t{129}}) {
      const test::FlowRows rows = test::random_flow_rows(model.config(), B, 31);
      const LossGrad want = loss_and_grad(model, rows.batch(), path, cpu);
      const test::TwinStep got = test::run_train_twin(model, rows, sigma_min, 32);
      EXPECT_NEAR(got.loss, want.loss, 1e-5 * want.loss) << "B " << B;
      EXPECT_TRUE(test::close_to_scale(got.grad, want.grad, 1e-5, 1e-4)) << "B " << B;
      EXPECT_GT(test::norm2(got.grad), 0.0);
      // Other tiles and other runs of tiles per block: other sums, the same gradient to rounding.
      for (const int tile : {8, 64}) {
        for (const int blocks : {1, 3}) {
          if (blocks > (B + tile - 1) / tile) continue;
          const test::TwinStep other = test::run_train_twin(model, rows, sigma_min, tile, blocks);
          EXPECT_NEAR(other.loss, want.loss, 1e-5 * want.loss) << "B " << B << " tile " << tile;
          EXPECT_TRUE(test::close_to_scale(other.grad, want.grad, 1e-5, 1e-4))
              << "B " << B << " tile " << tile;
        }
      }
    }
  }
}

// TF32 and BF16: the same program with every product on the tensor cores' padded tiles, the
// operands rounded as the hardware rounds them (the twin's emulation; at bf16 it reads the bf16
// copies of the input, the gradient and the weights the kernel keeps); against the CPU's fp32
// within their rounding, the shared memory NaN-filled, so that a read of padding no phase zeroed,
// or of a copy no phase wrote, shows.
TEST(FusedTrainTwin, TensorCoresFollowTheCpuWithinTheirRounding) {
  PathConfig path;
  RunOptions cpu;
  cpu.device = Device::CPU;
  for (const Precision precision : {Precision::TF32, Precision::BF16}) {
    const bool bf16 = precision == Precision::BF16;
    double worst = 0.0, worst_loss = 0.0;
    for (const TrainCase& k : kCases) {
      SCOPED_TRACE(std::string(k.name) + ", " + to_string(precision));
      const Model model(case_model(k), 23);
      for (const int64_t B : {int64_t{1}, int64_t{127}, int64_t{129}}) {
        const test::FlowRows rows = test::random_flow_rows(model.config(), B, 31);
        const LossGrad want = loss_and_grad(model, rows.batch(), path, cpu);
        for (const int tile : {16, 64}) {
          for (const int blocks : {0, 3}) {
            if (blocks > (B + tile - 1) / tile) continue;
            const test::TwinStep got = test::run_train_twin(model, rows, 0.0f, tile, blocks, precision);
            EXPECT_NEAR(got.loss, want.loss, (bf16 ? 1e-2 : 1e-3) * want.loss)
                << "B " << B << " tile " << tile;
            EXPECT_TRUE(test::close_to_scale(got.grad, want.grad, bf16 ? 1e-1 : 2e-2, bf16 ? 1e-1 : 2e-2))
                << "B " << B << " tile " << tile;
            EXPECT_LT(test::relative_l2(got.grad, want.grad), bf16 ? 5e-2 : 1e-2)
                << "B " << B << " tile " << tile;
            worst = std::max(worst, test::relative_l2(got.grad, want.grad));
            worst_loss =
                std::max(worst_loss, static_cast<double>(std::abs(got.loss - want.loss) / want.loss));
            // Not fp32 in disguise: the operands were rounded.
            const test::TwinStep fp32 = test::run_train_twin(model, rows, 0.0f, tile, blocks);
            EXPECT_FALSE(same_bits(got.grad, fp32.grad));
          }
        }
      }
    }
    std::printf("%s twin against the CPU's fp32: worst relative L2 of the gradient %.3g, of the loss %.3g\n",
                to_string(precision), worst, worst_loss);
  }
}

// Each block's sums run in an order fixed by the batch and the tile: a second run, on however many
// threads, gives the same bits.
TEST(FusedTrainTwin, RepeatsBitForBit) {
  const Model model(case_model(kCases[3]), 5);
  const test::FlowRows rows = test::random_flow_rows(model.config(), 1000, 7);
  const test::TwinStep a = test::run_train_twin(model, rows, 0.0f, 16);
  const test::TwinStep b = test::run_train_twin(model, rows, 0.0f, 16);
  EXPECT_EQ(float_bits(a.loss), float_bits(b.loss));
  EXPECT_TRUE(same_bits(a.grad, b.grad));
  // ... and a different geometry is a different order: the check above is not vacuous.
  const test::TwinStep c = test::run_train_twin(model, rows, 0.0f, 16, 5);
  EXPECT_FALSE(same_bits(a.grad, c.grad));
}

// The weights' padding (rows ld apart) is read past and never written: the device's padded layout.
TEST(FusedTrainTwin, PaddedRowsAreSkipped) {
  const Model model(case_model(kCases[2]), 9);
  const MlpConfig& m = model.config();
  const test::FlowRows rows = test::random_flow_rows(m, 77, 3);
  const test::TwinStep want = test::run_train_twin(model, rows, 0.0f, 16);
  // The same parameters with every weight row padded by 3 NaNs and 5 NaNs after each tensor.
  const ParamLayout layout(m);
  std::vector<float> padded;
  std::vector<cuda::FusedTrainLayer> at;
  for (int l = 0; l < m.num_layers(); ++l) {
    const int in = m.layer_in(l), out = m.layer_out(l);
    at.push_back({in + 3, static_cast<int64_t>(padded.size()), 0});
    for (int o = 0; o < out; ++o) {
      for (int k = 0; k < in; ++k) padded.push_back(model.params()[layout.weight_offset(l) + o * in + k]);
      for (int k = 0; k < 3; ++k) padded.push_back(NAN);
    }
    for (int k = 0; k < 5; ++k) padded.push_back(NAN);
    at.back().b_off = static_cast<int64_t>(padded.size());
    for (int o = 0; o < out; ++o) padded.push_back(model.params()[layout.bias_offset(l) + o]);
    for (int k = 0; k < 5; ++k) padded.push_back(NAN);
  }
  cuda::FusedTrain p = cuda::fused_train_of(m, padded.data(), static_cast<int64_t>(padded.size()),
                                            [&](int l) { return at[l]; });
  p.batch = rows.size;
  const std::vector<float> input = test::flow_rows_input(m, rows, 0.0f),
                           u = test::flow_rows_targets(rows, 0.0f);
  p.input = input.data();
  p.input_ld = m.input_dim();
  p.scale = 2.0f / (static_cast<float>(rows.size) * static_cast<float>(m.data_dim));
  p.tile = 16;
  p.blocks = cuda::fused_train_blocks(rows.size, 16);
  // The partials: zeros in the padding (the trainer's memset), NaN in every layer element (a block's
  // first tile writes over them).
  std::vector<float> partial(static_cast<size_t>(p.blocks) * p.total, 0.0f), grad(padded.size(), -1.0f);
  for (int g = 0; g < p.blocks; ++g) {
    float* part = partial.data() + static_cast<size_t>(g) * p.total;
    for (int l = 0; l < m.num_layers(); ++l) {
      for (int o = 0; o < m.layer_out(l); ++o) {
        for (int k = 0; k < m.layer_in(l); ++k) part[at[l].w_off + o * (m.layer_in(l) + 3) + k] = NAN;
        part[at[l].b_off + o] = NAN;
      }
    }
  }
  std::vector<double> loss_partial(static_cast<size_t>(p.blocks));
  p.partial = partial.data();
  p.loss_partial = loss_partial.data();
  float loss = 0.0f;
  cpu::fused_train(p, u.data(), grad.data(), &loss);
  EXPECT_EQ(float_bits(loss), float_bits(want.loss));
  for (int l = 0; l < m.num_layers(); ++l) {
    const int in = m.layer_in(l), out = m.layer_out(l);
    for (int o = 0; o < out; ++o) {
      for (int k = 0; k < in + 3; ++k) {
        const float g = grad[at[l].w_off + o * (in + 3) + k];
        if (k < in) {
          EXPECT_EQ(float_bits(g), float_bits(want.grad[layout.weight_offset(l) + o * in + k]));
        } else {
          EXPECT_EQ(g, 0.0f) << "layer " << l << " padding";
        }
      }
      EXPECT_EQ(float_bits(grad[at[l].b_off + o]), float_bits(want.grad[layout.bias_offset(l) + o]));
    }
    for (int k = 0; k < 5; ++k) {  // the gaps after each tensor
      EXPECT_EQ(grad[at[l].b_off - 5 + k], 0.0f) << "layer " << l << " gap";
      EXPECT_EQ(grad[at[l].b_off + m.layer_out(l) + k], 0.0f) << "layer " << l << " gap";
    }
  }
}

TEST(FusedTrainTwin, RefusesWhatItCannotRun) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {64, 64};
  EXPECT_EQ(cuda::fused_train_refusal(m, Precision::FP32), "");
  EXPECT_EQ(cuda::fused_train_refusal(m, Precision::TF32), "");
  EXPECT_EQ(cuda::fused_train_refusal(m, Precision::BF16), "");
  m.hidden = {129};
  EXPECT_NE(cuda::fused_train_refusal(m, Precision::FP32).find("129"), std::string::npos);
  m.hidden = std::vector<int>(8, 16);
  EXPECT_NE(cuda::fused_train_refusal(m, Precision::FP32).find("9 layers"), std::string::npos);
  m.hidden = {16};
  m.data_dim = 65;
  EXPECT_NE(cuda::fused_train_refusal(m, Precision::FP32).find("D = 65"), std::string::npos);
  // A description the program cannot run is named, not run.
  m.data_dim = 2;
  const Model model(m, 1);
  cuda::FusedTrain p = test::fused_train_over(m, model.params().data(), 10, 4, 4);
  EXPECT_NE(cuda::fused_train_error(p).find("runs of tiles"), std::string::npos);  // 3 tiles, 4 blocks
  p.blocks = 3;
  EXPECT_NE(cuda::fused_train_error(p).find("partial"), std::string::npos);  // no arrays
  p.ld[0] = 1;
  EXPECT_NE(cuda::fused_train_error(p).find("layer 0"), std::string::npos);
  p.ld[0] = m.layer_in(0);
  p.precision = Precision::TF32;  // tiles of 4 rows: not the tensor cores' 16
  EXPECT_NE(cuda::fused_train_error(p).find("multiple of 16"), std::string::npos);
}

}  // namespace
}  // namespace cufm
