// scripts/bit-identity.sh's probe: an FNV-1a hash of each result of the public API on the CPU
// backend (training, step(batch), loss_and_grad, sampling with its trajectory and log-densities,
// log_prob, the field, Model::forward, prepare_flow, flow_mse, couple) over four models that reach
// the fused step, the layered step, classes, contexts, guidance, both couplings and Hutchinson. Two
// builds that print the same lines computed the same bits.
#include <cufm/cufm.hpp>
#include <cstdio>
#include <cstring>
#include <vector>
static uint64_t h = 1469598103934665603ull;
static void mix(const void* p, size_t n, const char* what) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  uint64_t x = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) { x ^= c[i]; x *= 1099511628211ull; h ^= c[i]; h *= 1099511628211ull; }
  std::printf("%-40s %016llx\n", what, (unsigned long long)x);
}
template <class T> static void mixv(const std::vector<T>& v, const char* w) { mix(v.data(), v.size() * sizeof(T), w); }
int main() {
  using namespace cufm;
  for (int variant = 0; variant < 4; ++variant) {
    MlpConfig m;
    m.data_dim = 3;
    m.hidden = variant == 3 ? std::vector<int>{300, 300} : std::vector<int>{32, 48};
    m.activation = variant == 1 ? Activation::GELU : Activation::SiLU;
    m.time_features = variant == 2 ? 8 : 0;
    m.num_classes = variant == 1 ? 3 : 0;
    m.context_dim = variant == 2 ? 2 : 0;
    TrainConfig tc;
    tc.batch_size = 200;
    tc.seed = 7 + variant;
    tc.label_dropout = 0.2f;
    tc.context_dropout = variant == 2 ? 0.3f : 0.0f;
    tc.coupling = variant == 0 ? Coupling::Exact : variant == 1 ? Coupling::Sinkhorn : Coupling::Independent;
    tc.optim.ema_decay = 0.9f;
    RunOptions run; run.device = Device::CPU;
    Dataset data = make_toy("8gaussians", 1000, 3);
    data.dim = 3;
    std::vector<float> x3(data.n * 3);
    for (int64_t i = 0; i < data.n; ++i) { x3[i*3] = data.x[i*2]; x3[i*3+1] = data.x[i*2+1]; x3[i*3+2] = 0.1f * i / data.n; }
    data.x = x3;
    std::vector<int32_t> labels(data.n); for (int64_t i = 0; i < data.n; ++i) labels[i] = i % 3;
    std::vector<float> ctx(data.n * 2); for (size_t i = 0; i < ctx.size(); ++i) ctx[i] = 0.01f * (i % 17);
    if (m.num_classes) { data.labels = labels; data.num_classes = 3; }
    if (m.context_dim) { data.context = ctx; data.context_dim = 2; }
    Model model(m, 11);
    { Trainer tr(model, data, tc, run); tr.run(5); mixv(tr.state().params, "trainer.run params"); mixv(tr.state().ema, "trainer.run ema");
      float l = tr.loss(); mix(&l, 4, "trainer.run loss"); }
    { Trainer tr(model, tc, run);
      for (int s = 0; s < 3; ++s) {
        DataBatch b; b.size = 200; b.x1 = data.x.data() + s * 600;
        b.labels = m.num_classes ? labels.data() + s * 200 : nullptr;
        b.context = m.context_dim ? ctx.data() + s * 400 : nullptr;
        float l = tr.step(b); mix(&l, 4, "step(batch) loss"); }
      mixv(tr.state().params, "step(batch) params"); model = tr.model(); }
    { std::vector<float> t(200), eps(600); for (int i = 0; i < 200; ++i) t[i] = (i % 10) / 9.0f;
      for (int i = 0; i < 600; ++i) eps[i] = 0.01f * ((i * 37) % 101) - 0.5f;
      FlowBatch fb; fb.size = 200; fb.x1 = data.x.data(); fb.t = t.data(); fb.eps = eps.data();
      fb.labels = m.num_classes ? labels.data() : nullptr; fb.context = m.context_dim ? ctx.data() : nullptr;
      LossGrad g = loss_and_grad(model, fb, tc.path, run); mix(&g.loss, 4, "loss_and_grad loss"); mixv(g.grad, "loss_and_grad grad"); }
    { SampleConfig sc; sc.count = 300; sc.device = Device::CPU; sc.solver = variant == 3 ? Solver::Dopri5 : Solver::Midpoint;
      sc.keep_trajectory = true;
      if (m.num_classes) { sc.labels = {1}; sc.guidance = 1.5f; }
      if (m.context_dim) { sc.context = {0.1f, 0.2f}; sc.guidance = 2.0f; }
      SampleResult r = sample(model, sc); mixv(r.x, "sample x"); mixv(r.trajectory, "sample trajectory");
      sc.with_log_prob = true; sc.keep_trajectory = false; SampleResult r2 = sample(model, sc); mixv(r2.log_prob, "sample log_prob");
      LogProbConfig lc; lc.device = Device::CPU; lc.solver = Solver::RK4; lc.steps = 8;
      if (variant == 2) { lc.divergence = Divergence::Hutchinson; lc.probes = 3; lc.context = {0.1f, 0.2f}; }
      if (m.num_classes) lc.labels = {2};
      LogProbResult lp = log_prob(model, std::vector<float>(data.x.begin(), data.x.begin() + 150), lc);
      mixv(lp.log_prob, "log_prob");
      FieldOptions fo; fo.device = Device::CPU; VelocityField f(model, fo); std::vector<float> v(600);
      f.evaluate(0.3f, data.x.data(), m.num_classes ? labels.data() : nullptr, m.context_dim ? ctx.data() : nullptr, 200, v.data());
      mixv(v, "VelocityField");
      std::vector<float> tt(200, 0.7f); model.forward(data.x.data(), tt.data(), m.num_classes ? labels.data() : nullptr, m.context_dim ? ctx.data() : nullptr, 200, v.data());
      mixv(v, "Model::forward");
      StepDraws d; d.seed = 5; d.step = 2; d.num_classes = m.num_classes; d.label_dropout = 0.3f;
      std::vector<float> xt(600), tv(200), e(600); std::vector<int32_t> lo(200);
      prepare_flow(d, 200, 3, data.x.data(), m.num_classes ? labels.data() : nullptr, xt.data(), tv.data(), m.num_classes ? lo.data() : nullptr, e.data(), nullptr);
      mixv(xt, "prepare_flow"); float mse = flow_mse(d, 200, 3, data.x.data(), v.data(), e.data(), 0); mix(&mse, 4, "flow_mse");
      CouplingConfig cc; cc.kind = Coupling::Sinkhorn; auto nr = couple(cc, 200, 3, data.x.data(), e.data()); mixv(nr, "couple");
    }
  }
  std::printf("TOTAL %016llx\n", (unsigned long long)h);
}
