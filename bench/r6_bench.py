"""Workload R6, minibatch optimal-transport coupling: cuFM against torchcfm in one run on one machine.

The task is r6_peers.py's: flow_matching's 2D checkerboard, velocity MLP 3-256-256-256-2 SiLU on
[x_t, t] (raw t on both sides), batch 512, Adam lr 1e-3, --steps steps, linear path with sigma = 0.
Rows (each trained from scratch, cuFM and torchcfm interleaved coupling by coupling so that both
see the same machine state):
- cuFM (CPU backend, `threads` threads): a Trainer on a fixed pool of 4,000,000 checkerboard points
  (cufm.make_toy("checkerboard", 4000000, 0); cuFM trains from a dataset, and a pool this large is
  nearly fresh data for 3,000 steps of 512), model seed 1, TrainConfig
  seed 0, coupling "independent", "exact" (minibatch OT) or "sinkhorn" (ot_reg relative to the
  mean pair cost, --ot-reg, cuFM's default 0.05). Timed in chunks of --chunk steps (perf_counter
  around trainer.run(chunk), which blocks on the CPU); ms/step is the median over the chunks of
  chunk time / chunk steps, train s the wall time of the whole loop.
- torchcfm (r6_peers.torchcfm_train): a fresh checkerboard batch each step; independent
  (ConditionalFlowMatcher), exact (ExactOptimalTransportConditionalFlowMatcher, POT's ot.emd) and,
  with --torchcfm-sinkhorn, OTPlanSampler(method="sinkhorn", reg=--sinkhorn-reg) (slow, off by
  default). ms/step is the median over every timed step, train s the wall time of the loop.
Evaluation on both sides: --n samples pushed from noise by k Euler steps, k in {1, 2, 4, 8, 32}
(cuFM: cufm.sample(solver="euler", steps=k, seed=3); torchcfm: r6_peers.euler_sample), and the
sliced W2 (cufm.sliced_wasserstein2, 256 projections) against the same --n fresh checkerboard points
(r6_peers.reference_points). The data floor is that metric between two fresh data sets.

  python bench/r6_bench.py [--steps 3000] [--threads 2] [--n 20000] [--out FILE.md] [--json F]
                           [--torchcfm-sinkhorn] [--smoke]
(PYTHONPATH must reach the cufm module; torch, torchcfm and POT must be importable for the peers.)
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np

import cufm
import r6_peers as peers
from bench_machine import cpu_model, emit

# torchcfm draws a fresh batch every step; cuFM trains from a dataset, so its pool is large enough
# that a 3,000-step run sees almost every point once (with 200,000 points each was seen about 8
# times, and cuFM's exact-coupling W2 at k = 1 was 0.128 instead of 0.113).
POOL, MODEL_SEED, TRAIN_SEED, SAMPLE_SEED = 4_000_000, 1, 0, 3
W2_GOAL_KS = (1, 2, 4)


def cufm_train(coupling, steps, threads, chunk, ot_reg):
    """Trains cuFM's R6 model; (model, ms_per_step_median, train_seconds, desc)."""
    data = cufm.make_toy("checkerboard", POOL, 0)
    config = cufm.MlpConfig(data_dim=2, hidden=[peers.WIDTH] * peers.HIDDEN, activation="silu", time_features=0)
    model = cufm.Model(config, seed=MODEL_SEED)
    tc = cufm.TrainConfig(batch_size=peers.BATCH, seed=TRAIN_SEED, lr=peers.LR, coupling=coupling, ot_reg=ot_reg)
    trainer = cufm.Trainer(model, data, tc, device="cpu", threads=threads)
    per_step = []
    done = 0
    start = time.perf_counter()
    while done < steps:
        n = min(chunk, steps - done)
        t0 = time.perf_counter()
        trainer.run(n)
        per_step.append((time.perf_counter() - t0) / n)
        done += n
    train_s = time.perf_counter() - start
    ms = statistics.median(per_step) * 1e3 if per_step else float("nan")
    how = {"independent": "independent pairs", "exact": "exact minibatch OT plan",
           "sinkhorn": f"Sinkhorn plan, ot_reg {ot_reg} (relative to the mean pair cost)"}[coupling]
    desc = (f"cuFM {cufm.version()} CPU backend: TrainConfig(coupling={coupling!r}): {how}; "
            f"pool of {POOL:,} checkerboard points (make_toy seed 0); MLP 3-256-256-256-2 SiLU, raw t; "
            f"batch {peers.BATCH}, Adam lr {peers.LR}, {steps} steps in chunks of {chunk}, {threads} threads, "
            f"model seed {MODEL_SEED}, train seed {TRAIN_SEED}; final loss {trainer.loss():.4f}")
    return trainer.model(), ms, train_s, desc


def cufm_w2_row(model, ks, ref, threads):
    n = ref.shape[0]
    row = {}
    for k in ks:
        s = cufm.sample(model, count=n, solver="euler", steps=k, seed=SAMPLE_SEED, device="cpu", threads=threads)["x"]
        row[k] = float(cufm.sliced_wasserstein2(np.ascontiguousarray(s, dtype=np.float32), ref))
    return row


def torchcfm_w2_row(model, ks, ref, seed):
    return {k: float(cufm.sliced_wasserstein2(peers.euler_sample(model, ref.shape[0], k, seed), ref)) for k in ks}


def version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return "not installed"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=peers.STEPS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=peers.N_EVAL, help="samples (and fresh reference points) per W2")
    ap.add_argument("--chunk", type=int, default=100, help="cuFM steps per timed chunk")
    ap.add_argument("--seed", type=int, default=0, help="torchcfm's seed and the reference points' seed")
    ap.add_argument("--ot-reg", type=float, default=0.05, help="cuFM's Sinkhorn regularisation (relative)")
    ap.add_argument("--torchcfm-sinkhorn", action="store_true", help="also train torchcfm's Sinkhorn row (slow)")
    ap.add_argument("--sinkhorn-reg", type=float, default=peers.SINKHORN_REG, help="torchcfm's Sinkhorn reg")
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 60 steps in chunks of 10, n = 2000")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.n, args.chunk = min(args.steps, 60), min(args.n, 2000), min(args.chunk, 10)
    import torch

    ks = peers.KS
    ref = peers.reference_points(args.n, args.seed)
    floor = peers.data_floor(args.n, args.seed)
    print(f"R6: steps {args.steps}, threads {args.threads}, n {args.n}; data floor {floor:.4f}", file=sys.stderr)

    couplings = ["independent", "exact", "sinkhorn"]
    plan = []  # (implementation, coupling), cuFM and torchcfm interleaved
    for c in couplings:
        plan.append(("cuFM", c))
        if c != "sinkhorn" or args.torchcfm_sinkhorn:
            plan.append(("torchcfm", c))

    rows, descs = {}, []
    for impl, c in plan:
        if impl == "cuFM":
            model, ms, train_s, desc = cufm_train(c, args.steps, args.threads, args.chunk, args.ot_reg)
            w2 = cufm_w2_row(model, ks, ref, args.threads)
        else:
            model, ms, train_s, desc = peers.torchcfm_train(c, args.steps, args.threads, args.seed,
                                                            sinkhorn_reg=args.sinkhorn_reg)
            w2 = torchcfm_w2_row(model, ks, ref, args.seed) if model is not None else None
        descs.append(f"{impl} {c}: {desc}")
        rows[(impl, c)] = (ms, train_s, w2)
        if ms is None:
            print(f"{impl} {c}: unavailable: {desc}", file=sys.stderr)
        else:
            print(f"{impl} {c}: {ms:.2f} ms/step, {train_s:.1f} s, W2 " +
                  " ".join(f"k={k}:{w:.4f}" for k, w in w2.items()), file=sys.stderr, flush=True)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# R6 (minibatch OT coupling: checkerboard, MLP 3-256-256-256-2 SiLU, batch {peers.BATCH}, "
             f"{args.steps} steps): cuFM against torchcfm ({args.threads} threads, CPU)", "",
             f"- Machine: {cpu_model()}; {os.cpu_count()} cores; {args.threads} threads; {date}",
             f"- PyTorch {torch.__version__}, torchcfm {version('torchcfm')}, POT {version('ot')}, "
             f"NumPy {np.__version__}; cuFM {cufm.version()}: {cufm.build_summary()}".replace("\n", "; "),
             f"- Sliced W2 (cufm.sliced_wasserstein2, 256 projections) of {args.n:,} Euler samples against the "
             f"same {args.n:,} fresh checkerboard points for every row; data floor (two fresh data sets) "
             f"{floor:.4f}.",
             f"- ms/step: cuFM the median over chunks of {args.chunk} steps of chunk time / steps; torchcfm the "
             f"median over every step. train s: the wall time of the training loop.", "",
             "| implementation | coupling | ms/step (median) | train s | " +
             " | ".join(f"W2 k={k}" for k in ks) + " |",
             "| --- | --- | ---: | ---: |" + " ---: |" * len(ks)]
    for (impl, c), (ms, train_s, w2) in rows.items():
        if ms is None:
            lines.append(f"| {impl} | {c} | n/a | n/a |" + " n/a |" * len(ks))
            continue
        lines.append(f"| {impl} | {c} | {ms:.2f} | {train_s:.1f} | " + " | ".join(f"{w2[k]:.4f}" for k in ks) + " |")

    lines += ["", "Ratios:", ""]
    ratios = {}
    cu_ind = rows[("cuFM", "independent")][0]
    for c in ("exact", "sinkhorn"):
        r = rows[("cuFM", c)][0] / cu_ind
        ratios[f"cufm_{c}_over_independent_ms"] = r
        lines.append(f"- cuFM {c} / cuFM independent, ms/step: {r:.2f}x (goal <= 1.5x at batch {peers.BATCH}: "
                     f"{'met' if r <= 1.5 else 'NOT met'})")
    tx = rows.get(("torchcfm", "exact"))
    cx = rows[("cuFM", "exact")]
    if tx is None or tx[0] is None:
        lines.append("- torchcfm exact unavailable: no cuFM / torchcfm comparison")
    else:
        for k in W2_GOAL_KS:
            r = cx[2][k] / tx[2][k]
            ratios[f"w2_exact_k{k}_cufm_over_torchcfm"] = r
            lines.append(f"- exact, W2 at k={k}: cuFM {cx[2][k]:.4f} vs torchcfm {tx[2][k]:.4f}, cuFM / torchcfm "
                         f"{r:.2f}x (goal: no worse, <= 1: {'met' if r <= 1.0 else 'NOT met'})")
        r = cx[0] / tx[0]
        ratios["exact_ms_cufm_over_torchcfm"] = r
        lines.append(f"- exact, ms/step: cuFM {cx[0]:.2f} vs torchcfm {tx[0]:.2f}, cuFM / torchcfm {r:.2f}x "
                     f"(torchcfm / cuFM {1 / r:.1f}x)")
        ti = rows.get(("torchcfm", "independent"))
        if ti is not None and ti[0] is not None:
            r = tx[0] / ti[0]
            ratios["torchcfm_exact_over_independent_ms"] = r
            lines.append(f"- for reference, torchcfm exact / torchcfm independent, ms/step: {r:.2f}x")
    lines += ["", "What each row ran:", ""] + [f"- {d}" for d in descs]
    text = "\n".join(lines) + "\n"
    result = dict(date=date, cpu=cpu_model(), cores=os.cpu_count(), threads=args.threads, steps=args.steps,
                  n=args.n, chunk=args.chunk, floor=floor, ratios=ratios,
                  rows=[dict(implementation=impl, coupling=c, ms_per_step=ms, train_s=train_s,
                             w2={str(k): v for k, v in (w2 or {}).items()})
                        for (impl, c), (ms, train_s, w2) in rows.items()],
                  descs=descs)
    emit(text, args.out, args.json, result)

if __name__ == "__main__":
    main()
