"""PyTorch-side peer baselines for benchmark workload R5 (flow-matching posterior estimation, FMPE).

R5: theta in D = 10, observation (context) x in K = 20; velocity MLP 31-256x5-10 SiLU (5 hidden
layers of width 256) on the input [theta_t (D), t (1), x (K)]; batch 4096, Adam lr 1e-3; linear
(optimal-transport) path theta_t = t theta1 + (1 - t) eps, target theta1 - eps, F.mse_loss.

Task (Gaussian-linear SBI): theta ~ N(0, I_D), x = A theta + 0.1 n with n ~ N(0, I_K) and a fixed
A [K, D] whose entries are N(0, 1 / D) drawn once from numpy's default_rng(SEED_A) (so each entry
of x has variance about 1.01). Training batches are drawn with replacement (torch.randint) from a
pre-simulated pool of POOL pairs, inside every timed step, identically for all peers.

Peers (no cuFM import; each function sets torch.set_num_threads(threads) and seeds torch):
  torch_fm_step_ms      plain PyTorch eager loop on the R5 MLP, theta_t / dtheta_t from flow_matching's
                        AffineProbPath(CondOTScheduler()) (as in flow_matching's examples).
  sbi_fmpe_step_ms      sbi's FlowMatchingEstimator (the network FMPE trains), built by
                        sbi.neural_nets.posterior_flow_nn, .loss() in our own loop (sbi's train()
                        step without its DataLoader, validation and bookkeeping).
  lampe_fmpe_step_ms    lampe.inference.FMPE + FMPELoss, stepped by lampe.utils.GDStep.
  flow_matching_logprob_per_s
                        flow_matching's ODESolver.compute_likelihood (t = 1 -> 0) on the R5 MLP
                        (random, seeded weights) with a per-point context, as bench/likelihood_bench.py
                        does for the unconditional model.
Training times: warm-up steps, then `steps` steps each timed with perf_counter; the median in ms.
The peer functions return (ms, description) or (None, reason) when the package is unavailable.

  python bench/r5_peers.py [--threads N]      # smoke test: every peer at tiny sizes
"""

import argparse
import statistics
import time

import numpy as np

from bench_machine import silu_mlp

D, K, WIDTH, HIDDEN, BATCH, LR = 10, 20, 256, 5, 4096, 1e-3
SEED_A = 1234
POOL = 1 << 16


# ---- task ----------------------------------------------------------------------------------------
def _mixing_matrix():
    return (np.random.default_rng(SEED_A).normal(size=(K, D)) / np.sqrt(D)).astype(np.float32)


def simulate(n, seed):
    """n draws of the Gaussian-linear task: (theta [n, D], x [n, K]), float32 numpy."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, D)).astype(np.float32)
    x = theta @ _mixing_matrix().T + 0.1 * rng.normal(size=(n, K)).astype(np.float32)
    return theta, x.astype(np.float32)


def _pool(seed=0):
    import torch

    theta, x = simulate(POOL, seed)
    return torch.from_numpy(theta), torch.from_numpy(x)


def _batch(theta_pool, x_pool, batch):
    import torch

    idx = torch.randint(0, theta_pool.shape[0], (batch,))
    return theta_pool[idx], x_pool[idx]


# ---- helpers -------------------------------------------------------------------------------------
def make_r5_mlp():
    """The R5 velocity MLP: Linear(31, 256), SiLU, 4 x (Linear(256, 256), SiLU), Linear(256, 10)."""
    return silu_mlp([D + 1 + K] + [WIDTH] * HIDDEN + [D])


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def _median_step_ms(step, steps, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _setup(threads, seed=0):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)


# ---- plain PyTorch + flow_matching's path --------------------------------------------------------
def torch_fm_step_ms(threads, steps, warmup, batch=BATCH):
    """Median ms of one eager training step of the R5 MLP.

    Timed step: draw a batch (theta1, x) from the pool; eps ~ N(0, I), t ~ U(0, 1) [batch];
    path.sample(x_0=eps, x_1=theta1, t) with AffineProbPath(CondOTScheduler()) giving x_t and dx_t;
    v = mlp(cat[x_t, t, x]); F.mse_loss(v, dx_t); zero_grad, backward, Adam step (lr 1e-3).
    """
    import torch
    import torch.nn.functional as F
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    _setup(threads)
    model = make_r5_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    path = AffineProbPath(scheduler=CondOTScheduler())
    theta_pool, x_pool = _pool()

    def step():
        theta1, x = _batch(theta_pool, x_pool, batch)
        eps = torch.randn_like(theta1)
        t = torch.rand(batch)
        sample = path.sample(x_0=eps, x_1=theta1, t=t)
        v = model(torch.cat([sample.x_t, t[:, None], x], 1))
        loss = F.mse_loss(v, sample.dx_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_step_ms(step, steps, warmup)


# ---- sbi ------------------------------------------------------------------------------------------
def _r5_field_class():  # defined lazily: importing this module does not import torch
    import torch
    import torch.nn as nn

    class R5Field(nn.Module):
        """The R5 MLP behind sbi's vector-field-net signature forward(theta, condition, t)."""

        def __init__(self):
            super().__init__()
            self.mlp = make_r5_mlp()

        def forward(self, theta, condition, t):
            return self.mlp(torch.cat([theta, t.reshape(-1, 1).expand(theta.shape[0], 1), condition], 1))

    return R5Field


def sbi_fmpe_step_ms(threads, steps, warmup, batch=BATCH, variant="builtin", clip_max_norm=5.0):
    """Median ms of one training step of sbi's FMPE network, or (None, reason).

    Network: sbi.neural_nets.posterior_flow_nn(...)(theta_pool, x_pool), i.e. the builder that
    sbi.inference.FMPE calls, giving a FlowMatchingEstimator with its default z-scoring
    (time-dependent z-scoring of theta, a standardizing layer in front of x: both from the pool).
      variant="builtin": sbi's own "mlp" (VectorFieldMLP) with hidden_features=256, num_layers=4
        (the merge layer + 4 blocks = 5 hidden layers of width 256, as R5), activation=nn.SiLU,
        its defaults otherwise: separate input (10->256) and condition (20->256) layers, merge
        (512->256), sinusoidal time embedding (32) projected to 256 and added in every block,
        residual connections and LayerNorm in every block, output 256->10 (zero-initialized).
      variant="r5": the exact R5 MLP (31-256x5-10 SiLU) passed to posterior_flow_nn as model=.
    Timed step (the body of sbi's _train_epoch without the DataLoader and loss bookkeeping): draw
    a batch from the pool; zero_grad; estimator.loss(theta, x).mean() (sbi's loss: t ~ U(0, 1),
    theta_t = (1 - t) theta + (t + 1e-3) eps, normalized target, MSE over D); backward;
    clip_grad_norm_(max_norm=clip_max_norm) (5.0 is sbi train()'s default; None skips it); Adam
    step (lr 1e-3; sbi's default is 5e-4, which does not change the time).
    """
    try:
        import sbi
        from sbi.neural_nets import posterior_flow_nn
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, f"sbi unavailable: {type(e).__name__}: {e}"
    import torch
    import torch.nn as nn

    _setup(threads)
    theta_pool, x_pool = _pool()
    if variant == "builtin":
        # num_layers counts the blocks after the merge layer: merge + 4 blocks = R5's 5 hidden layers
        build = posterior_flow_nn(model="mlp", hidden_features=WIDTH, num_layers=HIDDEN - 1,
                                  activation=nn.SiLU)
        arch = ("sbi VectorFieldMLP: in 10->256, cond 20->256, merge 512->256, 4 x [Linear 256->256, "
                "SiLU, + time emb (sinusoidal 32 -> Linear 256), residual, LayerNorm], out 256->10")
    elif variant == "r5":
        build = posterior_flow_nn(model=_r5_field_class()())
        arch = "R5 MLP 31-256x5-10 SiLU as sbi's vector-field net"
    else:
        raise ValueError(f"unknown sbi variant {variant!r}")
    estimator = build(theta_pool, x_pool)
    opt = torch.optim.Adam(estimator.parameters(), lr=LR)

    def step():
        theta, x = _batch(theta_pool, x_pool, batch)
        opt.zero_grad()
        loss = estimator.loss(theta, x).mean()
        loss.backward()
        if clip_max_norm is not None:
            nn.utils.clip_grad_norm_(estimator.parameters(), max_norm=clip_max_norm)
        opt.step()

    ms = _median_step_ms(step, steps, warmup)
    desc = (f"sbi {sbi.__version__} FlowMatchingEstimator ({variant}): {arch}; {num_params(estimator):,} "
            f"parameters; z-scored theta (time-dependent) and x; loss().mean + backward + "
            f"clip_grad_norm_({clip_max_norm}) + Adam; batch {batch}")
    return ms, desc


# ---- lampe ----------------------------------------------------------------------------------------
def lampe_fmpe_step_ms(threads, steps, warmup, batch=BATCH, clip=None):
    """Median ms of one training step of lampe's FMPE, or (None, reason).

    Network: lampe.inference.FMPE(10, 20, hidden_features=[256] * 5, activation=nn.SiLU), i.e.
    lampe.nn.MLP 36-256x5-10 SiLU on [theta_t, x, cos(k pi t), sin(k pi t) for k = 1..3] (lampe's
    default freqs = 3 replaces R5's raw t by 6 time features; no z-scoring).
    Timed step: draw a batch from the pool; FMPELoss(estimator)(theta, x) (t ~ U(0, 1),
    theta_t = (1 - t) theta + (t + 1e-3) eps, target eps - theta, mean squared error); then
    lampe.utils.GDStep(Adam lr 1e-3, clip): isfinite check, zero_grad, backward, optional
    clip_grad_norm_, Adam step.
    """
    try:
        import lampe
        from lampe.inference import FMPE, FMPELoss
        from lampe.utils import GDStep
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, f"lampe unavailable: {type(e).__name__}: {e}"
    import importlib.metadata

    import torch
    import torch.nn as nn

    _setup(threads)
    theta_pool, x_pool = _pool()
    estimator = FMPE(D, K, hidden_features=[WIDTH] * HIDDEN, activation=nn.SiLU)
    loss_fn = FMPELoss(estimator)
    gd_step = GDStep(torch.optim.Adam(estimator.parameters(), lr=LR), clip=clip)

    def step():
        theta, x = _batch(theta_pool, x_pool, batch)
        gd_step(loss_fn(theta, x))

    ms = _median_step_ms(step, steps, warmup)
    version = getattr(lampe, "__version__", None) or importlib.metadata.version("lampe")
    desc = (f"lampe {version} FMPE: MLP {D + K + 6}-256x5-10 SiLU on [theta_t, x, 3 cos/sin time freqs]; "
            f"{num_params(estimator):,} parameters; FMPELoss + GDStep(Adam, clip={clip}); batch {batch}")
    return ms, desc


# ---- log-likelihoods with flow_matching ----------------------------------------------------------
def flow_matching_logprob_per_s(threads, points, solver_method="midpoint", step_size=0.05, exact=True,
                                rounds=1, return_log_prob=False):
    """Points/s of flow_matching's ODESolver.compute_likelihood on the R5 MLP with per-point context.

    Model: the R5 MLP (torch.manual_seed(0) init, untrained), wrapped in a flow_matching ModelWrapper
    whose forward(x, t, context=...) evaluates mlp(cat[x, t, context]) (t broadcast to the batch);
    the context is passed as a model extra (compute_likelihood's **model_extras). Points: theta and x
    from simulate(points, seed=1); log p(theta | x) integrates t = 1 -> 0 with
    exact_divergence=exact (D autograd passes per evaluation) or Hutchinson (one Rademacher probe);
    solver_method="midpoint" with step_size (0.05: 20 steps) or "dopri5" (step_size None,
    atol = rtol = 1e-5); log_p0 the standard normal. The median of `rounds` whole-batch calls.
    """
    import torch
    from torch.distributions import Independent, Normal
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    _setup(threads)
    mlp = make_r5_mlp().eval()

    class Conditioned(ModelWrapper):
        def forward(self, x, t, **extras):
            t = t.reshape(-1, 1).expand(x.shape[0], 1)
            return self.model(torch.cat([x, t, extras["context"]], 1))

    solver = ODESolver(velocity_model=Conditioned(mlp))
    normal = Independent(Normal(torch.zeros(D), torch.ones(D)), 1)
    theta, x = (torch.from_numpy(a) for a in simulate(points, seed=1))
    if solver_method == "dopri5":
        kw = dict(step_size=None, atol=1e-5, rtol=1e-5)
    else:
        kw = dict(step_size=step_size)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        _, log_p = solver.compute_likelihood(x_1=theta, log_p0=normal.log_prob, method=solver_method,
                                             exact_divergence=exact, context=x, **kw)
        times.append(time.perf_counter() - t0)
    rate = points / statistics.median(times)
    return (rate, log_p.detach().numpy()) if return_log_prob else rate


# ---- smoke test ----------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description="Smoke test of the R5 peer baselines (tiny sizes).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--points", type=int, default=50)
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {args.threads}, steps {args.steps}, batch {args.batch}")
    theta, x = simulate(4, 0)
    print(f"simulate: theta {theta.shape} {theta.dtype}, x {x.shape} {x.dtype}")
    _setup(args.threads)
    print(f"R5 MLP: {num_params(make_r5_mlp()):,} parameters")
    common = dict(threads=args.threads, steps=args.steps, warmup=args.warmup, batch=args.batch)
    print(f"torch + flow_matching path: {torch_fm_step_ms(**common):.2f} ms/step")
    for name, fn in (("sbi builtin", lambda: sbi_fmpe_step_ms(**common)),
                     ("sbi r5", lambda: sbi_fmpe_step_ms(**common, variant="r5")),
                     ("lampe", lambda: lampe_fmpe_step_ms(**common))):
        ms, desc = fn()
        print(f"{name}: {'%.2f ms/step' % ms if ms is not None else 'n/a'}  [{desc}]")
    for method, exact in (("midpoint", True), ("dopri5", True), ("midpoint", False)):
        rate, log_p = flow_matching_logprob_per_s(args.threads, args.points, method, 0.05, exact,
                                                  return_log_prob=True)
        print(f"flow_matching log p, {method}, {'exact' if exact else 'hutchinson'}: {rate:,.0f} points/s, "
              f"mean log p {float(np.mean(log_p)):.3f}")


if __name__ == "__main__":
    main()
