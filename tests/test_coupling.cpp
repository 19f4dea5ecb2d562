// Minibatch optimal-transport coupling on the CPU: the exact solver against brute force and an
// independent Hungarian reference, Sinkhorn's marginals and its limit, groups, determinism, the
// training step's use of the pairs, and training quality in one Euler step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "cufm/cufm.hpp"
#include "host/cpu/cpu_coupling.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;

struct Points {
  std::vector<float> x, e;
};

// Data from a uniform square (scaled like the checkerboard) and standard normal noise.
Points random_points(int64_t B, int D, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  std::normal_distribution<float> n;
  Points p;
  p.x.resize(B * D);
  p.e.resize(B * D);
  for (float& v : p.x) v = u(rng);
  for (float& v : p.e) v = n(rng);
  return p;
}

double cost_of(const Points& p, int64_t B, int D, const std::vector<uint32_t>& pairs) {
  return coupling_cost(B, D, p.x.data(), p.e.data(), pairs.data());
}

bool is_permutation(std::vector<uint32_t> v) {
  std::sort(v.begin(), v.end());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != i) return false;
  }
  return true;
}

// The least mean cost over all permutations (m <= 8).
double brute_force(const Points& p, int m, int D) {
  std::vector<uint32_t> perm(m);
  std::iota(perm.begin(), perm.end(), 0u);
  double best = INFINITY;
  do {
    best = std::min(best, cost_of(p, m, D, perm));
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

// An independent reference: the Hungarian method with potentials (O(m^3), double), written from
// the textbook's shortest-augmenting-path form; returns the least mean cost.
double hungarian(const Points& p, int m, int D) {
  auto c = [&](int i, int j) {
    double s = 0.0;
    for (int d = 0; d < D; ++d) {
      const double diff = static_cast<double>(p.x[i * D + d]) - p.e[j * D + d];
      s += diff * diff;
    }
    return s;
  };
  std::vector<double> u(m + 1, 0.0), v(m + 1, 0.0);
  std::vector<int> match(m + 1, 0), way(m + 1, 0);  // 1-based columns; match[j]: row (1-based)
  for (int i = 1; i <= m; ++i) {
    match[0] = i;
    int j0 = 0;
    std::vector<double> minv(m + 1, INFINITY);
    std::vector<char> used(m + 1, 0);
    do {
      used[j0] = 1;
      const int i0 = match[j0];
      double delta = INFINITY;
      int j1 = 0;
      for (int j = 1; j <= m; ++j) {
        if (used[j]) continue;
        const double cur = c(i0 - 1, j - 1) - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= m; ++j) {
        if (used[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (match[j0] != 0);
    do {
      const int j1 = way[j0];
      match[j0] = match[j1];
      j0 = j1;
    } while (j0);
  }
  double total = 0.0;
  for (int j = 1; j <= m; ++j) total += c(match[j] - 1, j - 1);
  return total / m;
}

CouplingConfig exact() {
  CouplingConfig c;
  c.kind = Coupling::Exact;
  return c;
}

CouplingConfig sinkhorn(float reg) {
  CouplingConfig c;
  c.kind = Coupling::Sinkhorn;
  c.reg = reg;
  c.seed = 3;
  c.step = 7;
  return c;
}

TEST(Coupling, ExactEqualsBruteForceOnSmallBatches) {
  for (int D : {1, 2, 5}) {
    for (int m = 1; m <= 8; ++m) {
      for (uint32_t seed = 0; seed < 4; ++seed) {
        const Points p = random_points(m, D, seed * 31 + m);
        const std::vector<uint32_t> pairs = couple(exact(), m, D, p.x.data(), p.e.data());
        ASSERT_TRUE(is_permutation(pairs));
        const double best = brute_force(p, m, D);
        EXPECT_NEAR(cost_of(p, m, D, pairs), best, 1e-5 * best + 1e-9) << "D " << D << " m " << m;
      }
    }
  }
}

TEST(Coupling, ExactEqualsTheHungarianReference) {
  for (int D : {2, 3, 16}) {
    for (int m : {64, 200, 513}) {
      const Points p = random_points(m, D, 100 + m + D);
      const std::vector<uint32_t> pairs = couple(exact(), m, D, p.x.data(), p.e.data(), nullptr, 2);
      ASSERT_TRUE(is_permutation(pairs));
      const double ref = hungarian(p, m, D);
      const std::vector<uint32_t> identity = [&] {
        std::vector<uint32_t> v(m);
        std::iota(v.begin(), v.end(), 0u);
        return v;
      }();
      EXPECT_LT(ref, 0.8 * cost_of(p, m, D, identity));  // coupling does something here
      EXPECT_NEAR(cost_of(p, m, D, pairs), ref, 1e-5 * ref) << "D " << D << " m " << m;
    }
  }
}

TEST(Coupling, ExactIsInvariantToTheBatchOrder) {
  const int m = 300, D = 2;
  const Points p = random_points(m, D, 5);
  const std::vector<uint32_t> pairs = couple(exact(), m, D, p.x.data(), p.e.data());
  // The same points, data and noise each in another order.
  std::vector<uint32_t> px(m), pe(m);
  std::iota(px.begin(), px.end(), 0u);
  std::iota(pe.begin(), pe.end(), 0u);
  std::mt19937 rng(9);
  std::shuffle(px.begin(), px.end(), rng);
  std::shuffle(pe.begin(), pe.end(), rng);
  Points q;
  q.x.resize(m * D);
  q.e.resize(m * D);
  for (int i = 0; i < m; ++i) {
    for (int d = 0; d < D; ++d) {
      q.x[i * D + d] = p.x[px[i] * D + d];
      q.e[i * D + d] = p.e[pe[i] * D + d];
    }
  }
  const std::vector<uint32_t> shuffled = couple(exact(), m, D, q.x.data(), q.e.data());
  int same = 0;
  for (int i = 0; i < m; ++i) same += pe[shuffled[i]] == pairs[px[i]];
  const double c0 = cost_of(p, m, D, pairs), c1 = cost_of(q, m, D, shuffled);
  // The auction's optimum is exact to m * kAuctionFinalEps of the scale, and the scale is measured
  // on the batch's own order: the costs agree to that, and the pairs but for near-ties.
  EXPECT_NEAR(c1, c0, 1e-6 * c0);
  EXPECT_GE(same, m - 6) << "pairs that differ after reordering the batch";
}

TEST(Coupling, PairsStayWithinGroupsAndSolveEachGroup) {
  const int m = 240, D = 2;
  const Points p = random_points(m, D, 17);
  std::vector<int32_t> groups(m);
  for (int i = 0; i < m; ++i) groups[i] = (i * 7) % 5 == 0 ? 4 : i % 3;  // uneven groups, one "null"
  for (const CouplingConfig& c : {exact(), sinkhorn(0.05f)}) {
    const std::vector<uint32_t> pairs = couple(c, m, D, p.x.data(), p.e.data(), groups.data());
    for (int i = 0; i < m; ++i) ASSERT_EQ(groups[pairs[i]], groups[i]) << to_string(c.kind) << " row " << i;
    if (c.kind != Coupling::Exact) continue;
    ASSERT_TRUE(is_permutation(pairs));
    for (int32_t gid : {0, 1, 2, 4}) {  // each group's pairs cost what solving it alone costs
      Points sub;
      std::vector<int> rows;
      for (int i = 0; i < m; ++i) {
        if (groups[i] != gid) continue;
        rows.push_back(i);
        sub.x.insert(sub.x.end(), p.x.begin() + i * D, p.x.begin() + (i + 1) * D);
        sub.e.insert(sub.e.end(), p.e.begin() + i * D, p.e.begin() + (i + 1) * D);
      }
      double within = 0.0;
      for (int i : rows) {
        for (int d = 0; d < D; ++d) {
          const double diff = static_cast<double>(p.x[i * D + d]) - p.e[pairs[i] * D + d];
          within += diff * diff;
        }
      }
      const int n = static_cast<int>(rows.size());
      const double ref = hungarian(sub, n, D);
      EXPECT_NEAR(within / n, ref, 1e-5 * ref) << "group " << gid;
    }
  }
}

TEST(Coupling, BidScansEqualTheSequentialScan) {
  std::mt19937 rng(41);
  std::uniform_int_distribution<int> level(0, 6);  // few distinct values: many ties
  for (int m : {2, 3, 15, 16, 17, 31, 32, 33, 100, 512, 1000}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> cost(m), price(m);
      for (int b = 0; b < m; ++b) {
        cost[b] = static_cast<float>(level(rng)) * 0.5f;
        price[b] = rep % 2 ? 0.0f : static_cast<float>(level(rng)) * 0.25f;
      }
      hd::BidScan want = hd::bid_scan_empty();
      for (int b = 0; b < m; ++b)
        hd::bid_consider(want, hd::bid_value(cost[b], price[b]), static_cast<uint32_t>(b));
      for (bool generic : {false, true}) {
        const hd::BidScan got = cpu::bid_scan(cost.data(), price.data(), m, generic);
        ASSERT_EQ(got.j1, want.j1) << "m " << m << (generic ? " generic" : " dispatched");
        ASSERT_EQ(got.w1, want.w1);
        ASSERT_EQ(got.w2, want.w2);
      }
    }
  }
}

TEST(Coupling, TinyBatchesAndSingletonGroups) {
  const Points one = random_points(1, 3, 2);
  for (const CouplingConfig& c : {exact(), sinkhorn(0.05f)}) {
    EXPECT_EQ(couple(c, 1, 3, one.x.data(), one.e.data()), std::vector<uint32_t>{0});
  }
  const Points p = random_points(9, 2, 3);
  const std::vector<int32_t> groups = {5, 1, 1, 7, 1, 2, 2, 1, 9};  // 5, 7 and 9 alone
  for (const CouplingConfig& c : {exact(), sinkhorn(0.05f)}) {
    const std::vector<uint32_t> pairs = couple(c, 9, 2, p.x.data(), p.e.data(), groups.data());
    EXPECT_EQ(pairs[0], 0u);
    EXPECT_EQ(pairs[3], 3u);
    EXPECT_EQ(pairs[8], 8u);
    for (int i = 0; i < 9; ++i) EXPECT_EQ(groups[pairs[i]], groups[i]);
  }
}

// The plan exp((f_a + g_b - C_ab) / eps) / m from the CPU's potentials, in double.
std::vector<double> plan_of(const std::vector<float>& cost, int m, float eps, const cpu::CouplingScratch& s) {
  std::vector<double> plan(static_cast<size_t>(m) * m);
  for (int a = 0; a < m; ++a) {
    for (int b = 0; b < m; ++b) {
      plan[a * m + b] =
          std::exp((static_cast<double>(s.f[a]) + s.g[b] - cost[a * m + b]) / static_cast<double>(eps)) / m;
    }
  }
  return plan;
}

std::vector<float> cost_matrix(const Points& p, int m, int D) {
  std::vector<float> c(static_cast<size_t>(m) * m);
  for (int a = 0; a < m; ++a) {
    for (int b = 0; b < m; ++b) {
      float s = 0.0f;
      for (int d = 0; d < D; ++d) s += (p.x[a * D + d] - p.e[b * D + d]) * (p.x[a * D + d] - p.e[b * D + d]);
      c[a * m + b] = s;
    }
  }
  return c;
}

TEST(Coupling, SinkhornMeetsBothMarginalsToItsTolerance) {
  const int m = 256, D = 2;
  const Points p = random_points(m, D, 23);
  const std::vector<float> cost = cost_matrix(p, m, D);
  const float scale = cpu::group_scale(p.x.data(), p.e.data(), m, D);
  for (float reg : {0.5f, 0.1f, 0.05f}) {
    cpu::CouplingScratch s;
    const float eps = reg * scale;
    const int iterations = cpu::sinkhorn_potentials(cost.data(), m, eps, s);
    ASSERT_LT(iterations, kSinkhornMaxIterations) << "reg " << reg << " did not converge";
    const std::vector<double> plan = plan_of(cost, m, eps, s);
    double worst_row = 0.0, worst_col = 0.0;
    for (int a = 0; a < m; ++a) {
      double row = 0.0, col = 0.0;
      for (int b = 0; b < m; ++b) {
        row += plan[a * m + b];
        col += plan[b * m + a];
      }
      worst_row = std::max(worst_row, std::fabs(row * m - 1.0));
      worst_col = std::max(worst_col, std::fabs(col * m - 1.0));
    }
    // Columns are exact after the last update (float rounding); rows within the stopping rule's
    // tolerance, measured on the columns one update earlier.
    EXPECT_LT(worst_col, 1e-4) << "reg " << reg;
    EXPECT_LT(worst_row, 2 * kSinkhornTolerance) << "reg " << reg;
  }
}

TEST(Coupling, SinkhornApproachesTheExactCostAsTheRegularisationShrinks) {
  const int m = 200, D = 2;
  const Points p = random_points(m, D, 29);
  const std::vector<float> cost = cost_matrix(p, m, D);
  const float scale = cpu::group_scale(p.x.data(), p.e.data(), m, D);
  const double best = hungarian(p, m, D);
  double previous = INFINITY;
  for (float reg : {1.0f, 0.3f, 0.1f, 0.03f, 0.01f}) {
    cpu::CouplingScratch s;
    cpu::sinkhorn_potentials(cost.data(), m, reg * scale, s);
    const std::vector<double> plan = plan_of(cost, m, reg * scale, s);
    double expected = 0.0;  // the plan's transport cost, per unit of mass
    for (int k = 0; k < m * m; ++k) expected += plan[k] * cost[k];
    EXPECT_GE(expected, best * (1 - 1e-3)) << "reg " << reg;
    EXPECT_LT(expected, previous) << "reg " << reg;
    previous = expected;
  }
  EXPECT_LT(previous, 1.05 * best);
}

TEST(Coupling, ResultsAreReproducibleAndIndependentOfThreads) {
  const int m = 700, D = 3;
  const Points p = random_points(m, D, 31);
  for (const CouplingConfig& c : {exact(), sinkhorn(0.05f)}) {
    const auto one = couple(c, m, D, p.x.data(), p.e.data(), nullptr, 1);
    const auto two = couple(c, m, D, p.x.data(), p.e.data(), nullptr, 2);
    EXPECT_EQ(one, two) << to_string(c.kind);
  }
  // Sinkhorn's draws follow the step's counter.
  CouplingConfig other = sinkhorn(0.05f);
  other.step += 1;
  EXPECT_NE(couple(sinkhorn(0.05f), m, D, p.x.data(), p.e.data()),
            couple(other, m, D, p.x.data(), p.e.data()));
}

TEST(Coupling, BadInputGetsClearErrors) {
  const Points p = random_points(4, 2, 1);
  EXPECT_NE(test::error_of([] { (void)parse_coupling("hungarian"); }).find("unknown coupling 'hungarian'"),
            std::string::npos);
  CouplingConfig c = sinkhorn(0.0f);
  EXPECT_NE(test::error_of([&] { (void)couple(c, 4, 2, p.x.data(), p.e.data()); }).find("ot_reg"),
            std::string::npos);
  Points bad = p;
  bad.e[3] = NAN;
  EXPECT_NE(test::error_of([&] {
              (void)couple(exact(), 4, 2, bad.x.data(), bad.e.data());
            }).find("eps has a non-finite"),
            std::string::npos);
  TrainConfig tc;
  tc.coupling = Coupling::Exact;
  tc.batch_size = static_cast<int>(kMaxCouplingGroup) + 1;
  EXPECT_NE(test::error_of([&] { tc.validate(); }).find("batch_size must be at most"), std::string::npos);
  tc.batch_size = 64;
  MlpConfig with_context;
  with_context.data_dim = 2;
  with_context.hidden = {16};
  with_context.context_dim = 3;
  EXPECT_NE(test::error_of([&] {
              Trainer t(Model(with_context, 1), tc, test::on_cpu(1));
            }).find("not available for a model with a context"),
            std::string::npos);
}

// ---- training --------------------------------------------------------------------------------------

MlpConfig toy_model(int classes = 0) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {128, 128, 128};
  m.activation = Activation::SiLU;
  m.time_features = 0;  // raw t, as torchcfm's models take it
  m.num_classes = classes;
  return m;
}

TrainConfig toy_train(Coupling coupling) {
  TrainConfig tc;
  tc.batch_size = 256;
  tc.seed = 5;
  tc.optim.lr = 2e-3f;
  tc.coupling = coupling;
  return tc;
}

double one_step_w2(const Model& model, const Dataset& data) {
  SampleConfig sc;
  sc.count = 4000;
  sc.solver = Solver::Euler;
  sc.steps = 1;
  sc.device = Device::CPU;
  const SampleResult r = sample(model, sc);
  return sliced_wasserstein2(r.x.data(), r.count, data.x.data(), data.n, 2, 128, 1);
}

TEST(CouplingTraining, ExactCouplingSamplesInOneStepFiveTimesCloser) {
  const Dataset data = make_toy("checkerboard", 20000, 0);
  const Model init(toy_model(), 3);
  double w2[2];
  for (int k = 0; k < 2; ++k) {
    Trainer trainer(init, data, toy_train(k == 0 ? Coupling::Independent : Coupling::Exact), test::on_cpu(2));
    trainer.run(1200);
    w2[k] = one_step_w2(trainer.model(), data);
  }
  EXPECT_LT(5.0 * w2[1], w2[0]) << "independent " << w2[0] << ", exact " << w2[1];
  std::printf("sliced W2 after one Euler step: independent %.3f, exact %.3f\n", w2[0], w2[1]);
}

TEST(CouplingTraining, ResumeFromCheckpointIsBitExactWithEachCoupling) {
  const Dataset data = make_toy("moons", 4000, 1);
  const test::TempDir dir;
  for (Coupling c : {Coupling::Exact, Coupling::Sinkhorn}) {
    TrainConfig tc = toy_train(c);
    tc.batch_size = 128;
    const Model init(toy_model(2), 4);
    Dataset labelled = data;
    Trainer whole(init, labelled, tc, test::on_cpu(2));
    whole.run(30);
    Trainer first(init, labelled, tc, test::on_cpu(1));
    first.run(12);
    const std::string path = dir.path() + "/ckpt-" + to_string(c) + ".cufm";
    save_checkpoint(path, Checkpoint{first.model_config(), tc, first.state(), "moons"});
    const Checkpoint back = load_checkpoint(path);
    EXPECT_EQ(back.train.coupling, c);
    EXPECT_EQ(back.train.ot_reg, tc.ot_reg);
    Trainer second(back.model, back.state, labelled, back.train, test::on_cpu(2));
    second.run(18);
    EXPECT_EQ(second.state().params, whole.state().params) << to_string(c);
    // And coupling changes the run: the same recipe without it trains other weights.
    TrainConfig plain = tc;
    plain.coupling = Coupling::Independent;
    Trainer independent(init, labelled, plain, test::on_cpu(2));
    independent.run(30);
    EXPECT_NE(independent.state().params, whole.state().params);
  }
}

TEST(CouplingTraining, StepOnTheCallersBatchTrainsOnThePairsCoupleGives) {
  const Dataset data = make_toy("8gaussians", 512, 2);
  TrainConfig tc = toy_train(Coupling::Exact);
  tc.batch_size = 512;
  const Model init(toy_model(), 6);
  Trainer trainer(init, tc, test::on_cpu(2));
  DataBatch batch;
  batch.size = 512;
  batch.x1 = data.x.data();
  const float loss = trainer.step(batch);
  // The same step by hand: the step's draws, the pairs, the loss on the paired noise.
  StepDraws draws;
  draws.seed = tc.seed;
  draws.step = 0;
  std::vector<float> x_t(512 * 2), t(512), eps(512 * 2);
  prepare_flow(draws, 512, 2, data.x.data(), nullptr, x_t.data(), t.data(), nullptr, eps.data());
  CouplingConfig c = exact();
  const std::vector<uint32_t> pairs = couple(c, 512, 2, data.x.data(), eps.data());
  std::vector<float> paired(eps.size());
  for (int i = 0; i < 512; ++i) {
    paired[2 * i] = eps[2 * pairs[i]];
    paired[2 * i + 1] = eps[2 * pairs[i] + 1];
  }
  FlowBatch fb;
  fb.size = 512;
  fb.x1 = data.x.data();
  fb.t = t.data();
  fb.eps = paired.data();
  const LossGrad lg = loss_and_grad(init, fb, {}, test::on_cpu(2));
  EXPECT_EQ(loss, lg.loss);
}

}  // namespace
