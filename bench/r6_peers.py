"""PyTorch / torchcfm side of benchmark workload R6 (minibatch optimal-transport coupling).

R6: facebookresearch/flow_matching's 2D checkerboard (its examples' inf_train_gen:
x1 = U[-2, 2); x2 = U[0, 1) - 2 * randint(0, 2) + (floor(x1) mod 2); data = [x1, x2] / 0.45, i.e.
8 of the 16 squares of side 1/0.45 in [-4.44, 4.44)^2; cuFM's host/dataset.cpp draws the same
distribution). Velocity MLP 3-256-256-256-2 with SiLU (three hidden layers of width 256) on the
input [x_t (2), t (1)]; batch 512; Adam lr 1e-3; 3,000 steps; linear path with sigma = 0
(x_t = t x1 + (1 - t) x0, target u_t = x1 - x0), loss mean((v - u_t)^2); x0 ~ N(0, I).

Couplings of the minibatch pair (x0, x1), all from torchcfm (tested with 1.0.7):
  independent   ConditionalFlowMatcher(sigma=0): x0 and x1 paired as drawn.
  exact         ExactOptimalTransportConditionalFlowMatcher(sigma=0): an exact OT plan between the
                two minibatches (POT's ot.emd on the squared Euclidean cost, torchcfm's
                OTPlanSampler(method="exact")), then `batch` pairs drawn from the plan with replacement.
  sinkhorn      optional: OTPlanSampler(method="sinkhorn", reg=SINKHORN_REG) resamples the pairs
                (sample_plan), then ConditionalFlowMatcher(sigma=0).sample_location_and_conditional_flow.
                torchcfm's default reg = 0.05 fails on this data (the cost is not normalized and
                reaches ~100, so exp(-M / reg) underflows and the plan is degenerate); reg = 1.0 works
                but, on 512 x 512, is not cheaper than the exact plan.
Timed step (perf_counter around each full step, every step timed, no warm-up outside the count):
draw x1 = checkerboard(batch) and x0 = randn; coupling + t ~ U(0, 1) + x_t, u_t (torchcfm);
v = mlp(cat[x_t, t]); loss; zero_grad, backward, Adam step. Reported: the median ms per step and
the total training seconds (the wall time of the whole loop).

Evaluation: after training, eval mode and no grad; n points x ~ N(0, I) (seeded) pushed from t = 0
to t = 1 by k Euler steps (x += (1/k) v(x, i/k)), k in {1, 2, 4, 8, 32}; the sliced 2-Wasserstein
distance to n fresh checkerboard points with cuFM's own metric, cufm.sliced_wasserstein2(a, b)
(256 projections, seed 0; PYTHONPATH must reach the cufm module), so both sides share the metric.
The same noise is used for every k; the data floor is the same metric between two fresh data sets.

Peers (no cuFM import except for the metric; torch.set_num_threads(threads), torch and numpy's global
RNG seeded, numpy's because torchcfm's OTPlanSampler.sample_map draws with np.random.choice):
  torchcfm_train(coupling, steps, threads, seed) -> (model, ms_per_step_median, train_seconds, desc)
                                                    or (None, None, None, reason)
  euler_sample(model, n, k, seed) -> numpy float32 [n, 2]
  sliced_w2_row(model, ks, n, seed) -> {k: sliced W2}

  python bench/r6_peers.py --smoke [--threads N]          # tiny sizes (50 steps, n = 2000)
  python bench/r6_peers.py --threads 2                    # the R6 setting: 3,000 steps, n = 20,000
  python bench/r6_peers.py --couplings independent,exact,sinkhorn ...
"""

import argparse
import statistics
import time

import numpy as np

from bench_machine import silu_mlp

WIDTH, HIDDEN, BATCH, LR, STEPS, N_EVAL = 256, 3, 512, 1e-3, 3000, 20000
KS = (1, 2, 4, 8, 32)
COUPLINGS = ("independent", "exact", "sinkhorn")
SINKHORN_REG = 1.0
# seed offsets: the training data stream, the evaluation noise and the reference data are distinct
_DATA_SEED, _NOISE_SEED, _REF_SEED, _REF2_SEED = 0, 1_000_003, 2_000_003, 3_000_017


# ---- data ------------------------------------------------------------------------------------------
def checkerboard(n, generator=None):
    """n points of flow_matching's 2D checkerboard as a float32 torch tensor [n, 2].

    Drawn in the order of flow_matching's inf_train_gen (rand for x1, rand then randint for x2) from
    `generator` (a torch.Generator, or torch's global RNG when None).
    """
    import torch

    x1 = torch.rand(n, generator=generator) * 4 - 2
    lower = torch.randint(0, 2, (n,), generator=generator)
    x2 = torch.rand(n, generator=generator) - lower * 2
    x2 = x2 + torch.floor(x1) % 2
    return (torch.stack([x1, x2], dim=1) / 0.45).float()


def _generator(seed):
    import torch

    return torch.Generator().manual_seed(int(seed))


# ---- model -----------------------------------------------------------------------------------------
def make_r6_mlp():
    """The R6 velocity MLP: Linear(3, 256), SiLU, 2 x (Linear(256, 256), SiLU), Linear(256, 2)."""
    return silu_mlp([3] + [WIDTH] * HIDDEN + [2])


def _velocity(model, x, t):
    """v(x, t) for a batch x [B, 2] and t [B] (or a scalar broadcast to the batch)."""
    import torch

    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
    return model(torch.cat([x, t], dim=1))


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- training with torchcfm ------------------------------------------------------------------------
def _coupler(coupling, sinkhorn_reg):
    """A function (x0, x1) -> (t, x_t, u_t) for the named coupling, and its description."""
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    ExactOptimalTransportConditionalFlowMatcher)

    if coupling == "independent":
        fm = ConditionalFlowMatcher(sigma=0.0)
        return fm.sample_location_and_conditional_flow, "ConditionalFlowMatcher(sigma=0)"
    if coupling == "exact":
        fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
        return (fm.sample_location_and_conditional_flow,
                "ExactOptimalTransportConditionalFlowMatcher(sigma=0) (POT ot.emd plan, pairs drawn from it)")
    if coupling == "sinkhorn":
        from torchcfm.optimal_transport import OTPlanSampler

        fm = ConditionalFlowMatcher(sigma=0.0)
        plan = OTPlanSampler(method="sinkhorn", reg=sinkhorn_reg)

        def couple(x0, x1):
            x0, x1 = plan.sample_plan(x0, x1)
            return fm.sample_location_and_conditional_flow(x0, x1)

        return couple, (f"OTPlanSampler(method='sinkhorn', reg={sinkhorn_reg}).sample_plan + "
                        f"ConditionalFlowMatcher(sigma=0)")
    raise ValueError(f"unknown coupling {coupling!r}; expected one of {COUPLINGS}")


def torchcfm_train(coupling, steps=STEPS, threads=2, seed=0, batch=BATCH, lr=LR, sinkhorn_reg=SINKHORN_REG):
    """Train the R6 MLP with torchcfm's coupling; (model, ms_per_step_median, train_seconds, desc).

    Returns (None, None, None, reason) when torchcfm (or POT, which it imports) is unavailable.
    Every one of the `steps` steps is timed with perf_counter (data draw, coupling, forward, loss,
    backward, Adam step); train_seconds is the wall time of the whole loop.
    """
    try:
        import ot
        import torchcfm
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, None, None, f"torchcfm/POT unavailable: {type(e).__name__}: {e}"
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    couple, how = _coupler(coupling, sinkhorn_reg)
    model = make_r6_mlp()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data_gen = _generator(seed + _DATA_SEED)

    times = []
    loss = None
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        x1 = checkerboard(batch, data_gen)
        x0 = torch.randn_like(x1)
        t, xt, ut = couple(x0, x1)
        v = _velocity(model, xt, t)
        loss = torch.mean((v - ut) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    train_s = time.perf_counter() - start

    ms = statistics.median(times) * 1e3 if times else float("nan")
    final = float(loss.detach()) if loss is not None else float("nan")
    desc = (f"torchcfm {torchcfm.__version__} + POT {ot.__version__}, torch {torch.__version__}: {how}; "
            f"MLP 3-256-256-256-2 SiLU ({num_params(model):,} parameters); batch {batch}, Adam lr {lr}, "
            f"{steps} steps, {threads} threads, seed {seed}; final loss {final:.4f}")
    return model.eval(), ms, train_s, desc


# ---- evaluation ------------------------------------------------------------------------------------
def euler_sample(model, n=N_EVAL, k=1, seed=0):
    """n samples pushed from x ~ N(0, I) at t = 0 to t = 1 by k Euler steps; numpy float32 [n, 2].

    The noise comes from torch.Generator(seed + offset), so a given seed gives the same start
    points for every k. Eval mode, no grad.
    """
    import torch

    was_training = model.training
    model.eval()
    x = torch.randn(n, 2, generator=_generator(seed + _NOISE_SEED))
    h = 1.0 / k
    with torch.no_grad():
        for i in range(k):
            x = x + h * _velocity(model, x, i * h)
    model.train(was_training)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def _sliced_w2(a, b):
    try:
        import cufm
    except Exception as e:  # noqa: BLE001
        raise ImportError(f"cufm (cuFM's Python module, for its sliced_wasserstein2) is not importable: "
                          f"{type(e).__name__}: {e}; put its directory on PYTHONPATH") from e
    return float(cufm.sliced_wasserstein2(np.ascontiguousarray(a, dtype=np.float32),
                                          np.ascontiguousarray(b, dtype=np.float32)))


def reference_points(n=N_EVAL, seed=0, which=0):
    """n fresh checkerboard points (numpy float32 [n, 2]), independent of training and of the noise."""
    offset = _REF_SEED if which == 0 else _REF2_SEED
    return np.ascontiguousarray(checkerboard(n, _generator(seed + offset)).numpy(), dtype=np.float32)


def sliced_w2_row(model, ks=KS, n=N_EVAL, seed=0):
    """{k: cufm.sliced_wasserstein2(euler_sample(model, n, k, seed), n fresh checkerboard points)}."""
    ref = reference_points(n, seed)
    return {k: _sliced_w2(euler_sample(model, n, k, seed), ref) for k in ks}


def data_floor(n=N_EVAL, seed=0):
    """The metric between two independent sets of n checkerboard points (the noise floor)."""
    return _sliced_w2(reference_points(n, seed, 1), reference_points(n, seed, 0))


# ---- main ------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description="R6 torchcfm peers: train each coupling, then sliced W2 at k steps.")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=N_EVAL, help="points sampled (and reference points) per W2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--couplings", default=None,
                    help=f"comma-separated subset of {','.join(COUPLINGS)} (default: independent,exact; "
                         f"all three with --smoke)")
    ap.add_argument("--sinkhorn-reg", type=float, default=SINKHORN_REG)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (50 steps, n = 2000) and all three couplings unless --couplings is given")
    args = ap.parse_args()
    couplings = args.couplings
    if args.smoke:
        args.steps, args.n = min(args.steps, 50), min(args.n, 2000)
    if couplings is None:
        couplings = ",".join(COUPLINGS) if args.smoke else "independent,exact"
    couplings = [c.strip() for c in couplings.split(",") if c.strip()]
    import torch

    print(f"torch {torch.__version__}, threads {args.threads}, steps {args.steps}, batch {BATCH}, "
          f"n {args.n}, seed {args.seed}")
    try:
        floor = data_floor(args.n, args.seed)
        print(f"data floor (two fresh data sets of {args.n}): sliced W2 {floor:.4f}")
    except ImportError as e:
        print(f"no metric: {e}")
        floor = None

    rows, descs = [], []
    for c in couplings:
        model, ms, train_s, desc = torchcfm_train(c, args.steps, args.threads, args.seed,
                                                  sinkhorn_reg=args.sinkhorn_reg)
        descs.append(f"{c}: {desc}")
        if model is None:
            rows.append((c, None, None, None))
            continue
        w2 = sliced_w2_row(model, KS, args.n, args.seed) if floor is not None else None
        rows.append((c, ms, train_s, w2))
        print(f"  {c}: {ms:.2f} ms/step, {train_s:.1f} s" +
              ("" if w2 is None else ", W2 " + " ".join(f"k={k}:{w:.4f}" for k, w in w2.items())), flush=True)

    print()
    print("| coupling | ms/step | train s | " + " | ".join(f"W2 k={k}" for k in KS) + " |")
    print("|---|---:|---:|" + "---:|" * len(KS))
    for c, ms, train_s, w2 in rows:
        if ms is None:
            print(f"| {c} | n/a | n/a | " + " | ".join("n/a" for _ in KS) + " |")
            continue
        cells = [f"{w2[k]:.4f}" if w2 is not None else "n/a" for k in KS]
        print(f"| {c} | {ms:.2f} | {train_s:.1f} | " + " | ".join(cells) + " |")
    print()
    for d in descs:
        print(f"- {d}")


if __name__ == "__main__":
    main()
