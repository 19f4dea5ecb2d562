// fm_couple against the CPU backend's coupling: the exact auction's permutation bit for bit (and
// the model input built from it), Sinkhorn's pairs within groups at the CPU's cost, and whole
// training runs with coupling on the GPU (reproducible, and straighter than without).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cufm/cufm.hpp"
#include "cufm/kernels.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm {
namespace {

using test::DeviceArray;

struct CoupleCase {
  int batch, dim, classes;
  Coupling kind;
};

class FmCouple : public ::testing::TestWithParam<CoupleCase> {};

// The batch's mean |x1 - eps|^2 over its pairs, as PreparedBatch's draws give x1 and eps.
double pair_cost(const cpu::PreparedBatch& ref, const Dataset& data, const TrainConfig& cfg, uint64_t step,
                 int D, const std::vector<uint32_t>& pairs) {
  double total = 0.0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    for (int g = 0; g < (D + 3) / 4; ++g) {
      float eps[4];
      rng::normal4(cfg.seed, step, pairs[i], static_cast<uint32_t>(g), eps);
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) {
        const double diff =
            static_cast<double>(data.x[static_cast<size_t>(ref.index[i]) * D + 4 * g + k]) - eps[k];
        total += diff * diff;
      }
    }
  }
  return total / static_cast<double>(pairs.size());
}

TEST_P(FmCouple, MatchesTheCpu) {
  CUFM_REQUIRE_GPU();
  const CoupleCase cc = GetParam();
  MlpConfig model;
  model.data_dim = cc.dim;
  model.hidden = {16};
  model.num_classes = cc.classes;
  TrainConfig cfg;
  cfg.batch_size = test::pick(cc.batch, std::min(cc.batch, 64));
  cfg.seed = 77;
  cfg.label_dropout = cc.classes > 0 ? 0.2f : 0.0f;
  cfg.coupling = cc.kind;
  Dataset data;
  data.n = 3000;
  data.dim = cc.dim;
  data.x = test::random_floats(static_cast<size_t>(data.n) * cc.dim, -4.0f, 4.0f, 3);
  if (cc.classes > 0) {
    data.num_classes = cc.classes;
    for (int64_t i = 0; i < data.n; ++i) data.labels.push_back(static_cast<int32_t>((i * 5) % cc.classes));
  }
  const uint64_t step = 11;
  cpu::PreparedBatch ref;
  cpu::fm_prepare(model, cfg, data, step, ref);

  const int B = cfg.batch_size;
  DeviceArray<float> x(data.x);
  DeviceArray<int32_t> labels(data.labels.empty() ? std::vector<int32_t>{0} : data.labels);
  DeviceArray<uint64_t> step_dev(std::vector<uint64_t>{step});
  DeviceArray<uint32_t> noise_row(B);
  kernels::FmBatch b;
  b.seed = cfg.seed;
  b.step = step_dev.get();
  b.batch = B;
  b.dim = cc.dim;
  b.data = x.get();
  b.labels = cc.classes > 0 ? labels.get() : nullptr;
  b.n_data = static_cast<uint32_t>(data.n);
  b.label_dropout = cfg.label_dropout;
  kernels::FmCoupling c;
  c.kind = cc.kind;
  c.reg = cfg.ot_reg;
  c.num_classes = cc.classes;
  DeviceArray<char> ws(kernels::fm_couple_workspace_bytes(B, cc.dim, c));
  kernels::fm_couple(b, c, noise_row.get(), ws.get(), ws.size(), nullptr);
  const std::vector<uint32_t> got = noise_row.download();
  ASSERT_EQ(got.size(), ref.noise_row.size());
  for (int i = 0; i < B; ++i) {
    ASSERT_LT(got[i], static_cast<uint32_t>(B));
    if (cc.classes > 0) {
      ASSERT_EQ(ref.label[got[i]], ref.label[i]) << "row " << i << " left its group";
    }
  }
  if (cc.kind == Coupling::Exact) {
    // An optimal permutation, as the CPU's (whose Gauss-Seidel bids may settle a near-tie otherwise).
    std::vector<uint32_t> sorted = got;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < B; ++i) ASSERT_EQ(sorted[i], static_cast<uint32_t>(i));
    // Each is within m kAuctionFinalEps c of the optimum in total (c: the mean independent pair
    // cost), so their means differ by at most twice kAuctionFinalEps c.
    std::vector<uint32_t> identity(B);
    for (int i = 0; i < B; ++i) identity[i] = static_cast<uint32_t>(i);
    const double scale = pair_cost(ref, data, cfg, step, cc.dim, identity);
    const double cpu_cost = pair_cost(ref, data, cfg, step, cc.dim, ref.noise_row);
    EXPECT_NEAR(pair_cost(ref, data, cfg, step, cc.dim, got), cpu_cost, 2.0 * kAuctionFinalEps * scale);
    int same = 0;
    for (int i = 0; i < B; ++i) same += got[i] == ref.noise_row[i];
    EXPECT_GE(same, 0.9 * B);  // they settle near-ties their own ways
    // fm_prepare with the CPU's pairs builds the CPU's model input, bit for bit.
    const int in = model.input_dim(), ld = (in + 7) / 8 * 8;
    DeviceArray<float> input(static_cast<size_t>(B) * ld);
    DeviceArray<uint32_t> cpu_pairs(ref.noise_row);
    kernels::FmBatch paired = b;
    paired.noise_row = cpu_pairs.get();
    kernels::FmInputLayout layout{model.time_features, cc.classes, ld, 0};
    kernels::FmPrepareOutputs out;
    out.input = input.get();
    kernels::fm_prepare(paired, layout, out, nullptr);
    const std::vector<float> in_got = input.download();
    for (int i = 0; i < B; ++i) {
      ASSERT_TRUE(test::bits_equal(in_got.data() + static_cast<size_t>(i) * ld,
                                   ref.input.data() + static_cast<size_t>(i) * in, in))
          << "row " << i;
    }
  } else {
    // Sinkhorn: the same algorithm with its sums in another order, so the draws may differ where
    // a row's draw falls near a boundary of its plan's cumulative weights.
    int same = 0;
    for (int i = 0; i < B; ++i) same += got[i] == ref.noise_row[i];
    EXPECT_GE(same, 0.9 * B);
    const double cpu_cost = pair_cost(ref, data, cfg, step, cc.dim, ref.noise_row);
    const double gpu_cost = pair_cost(ref, data, cfg, step, cc.dim, got);
    EXPECT_NEAR(gpu_cost, cpu_cost, 0.02 * cpu_cost);
  }
  // Repeated calls give the same pairs.
  kernels::fm_couple(b, c, noise_row.get(), ws.get(), ws.size(), nullptr);
  EXPECT_EQ(noise_row.download(), got);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FmCouple,
    ::testing::Values(CoupleCase{7, 2, 0, Coupling::Exact}, CoupleCase{512, 2, 0, Coupling::Exact},
                      CoupleCase{1000, 5, 3, Coupling::Exact}, CoupleCase{2048, 2, 0, Coupling::Exact},
                      CoupleCase{512, 2, 0, Coupling::Sinkhorn}, CoupleCase{1000, 3, 4, Coupling::Sinkhorn}));

TEST(GpuCouplingTraining, ReproducibleAndStraighterThanIndependent) {
  CUFM_REQUIRE_GPU();
  const Dataset data = make_toy("checkerboard", 20000, 0);
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {128, 128, 128};
  const Model init(m, 3);
  RunOptions gpu;
  gpu.device = Device::CUDA;
  double w2[2];
  for (int k = 0; k < 2; ++k) {
    TrainConfig tc;
    tc.batch_size = 256;
    tc.seed = 5;
    tc.optim.lr = 2e-3f;
    tc.coupling = k == 0 ? Coupling::Independent : Coupling::Exact;
    Trainer a(init, data, tc, gpu);
    a.run(test::pick(1200, 20));
    if (k == 1) {  // the same run again: the same bits (the pairs are deterministic)
      Trainer b(init, data, tc, gpu);
      b.run(test::pick(1200, 20));
      EXPECT_EQ(a.state().params, b.state().params);
    }
    SampleConfig sc;
    sc.count = 4000;
    sc.solver = Solver::Euler;
    sc.steps = 1;
    sc.device = Device::CPU;
    const SampleResult r = sample(a.model(), sc);
    w2[k] = sliced_wasserstein2(r.x.data(), r.count, data.x.data(), data.n, 2, 128, 1);
  }
  if (!test::small_run()) {
    EXPECT_LT(5.0 * w2[1], w2[0]) << "independent " << w2[0] << ", exact " << w2[1];
  }
}

}  // namespace
}  // namespace cufm
