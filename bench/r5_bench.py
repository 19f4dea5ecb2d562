"""Workload R5, flow-matching posterior estimation (FMPE), cuFM against PyTorch peers in one run on
one machine: D = 10 parameters conditioned on K = 20 context dims (the observation), MLP 5 x 256
SiLU over [theta_t, t, x] (cuFM adds the context's null indicator: 32 inputs against 31), batch 4096,
Adam 1e-3; the task is r5_peers.simulate's linear-Gaussian simulator.

Rows:
- training ms/step: cuFM's CPU backend (its Trainer on a Dataset with the context); a plain PyTorch
  eager loop with flow_matching's AffineProbPath; sbi 0.27's FMPE loss on the same R5 MLP and on its
  own default network; lampe's FMPE (its MLP 5 x 256 SiLU). r5_peers.py says what each times.
- log-probabilities per second of --points held-out (theta, x) pairs, each under its own context,
  on the same weights (cuFM's, trained --train-steps steps by cuFM, run in PyTorch through
  cufm.torch.Velocity): cuFM's log_prob against flow_matching's ODESolver.compute_likelihood, exact
  divergence with midpoint 20 and dopri5 (atol = rtol = 1e-5), and Hutchinson (1 probe, midpoint 20).
Times: medians of --rounds alternating rounds.

  python bench/r5_bench.py [--threads N] [--points N] [--rounds N] [--out F.md] [--json F]
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np

import cufm
import r5_peers as peers
from bench_machine import alternate, cpu_model, emit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--out")
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch
    from torch.distributions import Independent, Normal

    import cufm.torch as ct
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    torch.set_num_threads(args.threads)
    D, K = peers.D, peers.K
    theta, x = peers.simulate(200_000, 0)
    config = cufm.MlpConfig(data_dim=D, context_dim=K, hidden=[peers.WIDTH] * peers.HIDDEN, activation="silu")
    trainer = cufm.Trainer(cufm.Model(config, 0), cufm.Dataset(theta, context=x),
                           cufm.TrainConfig(batch_size=peers.BATCH, lr=peers.LR), device="cpu", threads=args.threads)
    trainer.fit(args.train_steps)  # the weights the log-probabilities are computed on
    model = trainer.model()

    def cufm_step_ms():
        trainer.run(1)  # warm
        t0 = time.perf_counter()
        trainer.run(args.steps)
        return (time.perf_counter() - t0) / args.steps * 1e3

    train_rows = [("cuFM (CPU backend)", cufm_step_ms),
                  ("PyTorch eager + flow_matching path", lambda: peers.torch_fm_step_ms(args.threads, args.steps, 2)),
                  ("sbi FMPE loss, R5 MLP", lambda: peers.sbi_fmpe_step_ms(args.threads, args.steps, 2, variant="r5")),
                  ("sbi FMPE loss, sbi's default net", lambda: peers.sbi_fmpe_step_ms(args.threads, args.steps, 2)),
                  ("lampe FMPE", lambda: peers.lampe_fmpe_step_ms(args.threads, args.steps, 2))]
    train_ms = {name: [] for name, _ in train_rows}
    train_note = {}
    for r in range(args.rounds):
        for name, fn in train_rows:
            got = fn()
            if isinstance(got, tuple):
                got, train_note[name] = got
            train_ms[name].append(got)
            print(f"round {r + 1}: {name}: {got} ms/step", file=sys.stderr)
    torch.set_num_threads(args.threads)  # the peers set it too; keep it for the rows below

    theta_h, x_h = peers.simulate(args.points, 1)
    velocity = ct.Velocity(model).eval()

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return velocity(x, t.reshape(()).expand(x.shape[0]), context=extras["context"])

    solver = ODESolver(velocity_model=Wrapped(velocity))
    normal = Independent(Normal(torch.zeros(D), torch.ones(D)), 1)
    th, xc = torch.from_numpy(theta_h), torch.from_numpy(x_h)

    def fm(method, exact):
        kw = dict(step_size=0.05) if method == "midpoint" else dict(step_size=None, atol=1e-5, rtol=1e-5)
        _, lp = solver.compute_likelihood(x_1=th, log_p0=normal.log_prob, method=method, exact_divergence=exact,
                                          context=xc, **kw)
        return lp.detach().numpy()

    def cu(solver_name, divergence):
        return cufm.log_prob(model, theta_h, solver=solver_name, steps=20, divergence=divergence, probes=1,
                             context=x_h, device="cpu", threads=args.threads)["log_prob"]

    lp_rows = [("exact, midpoint 20", lambda: cu("midpoint", "exact"), lambda: fm("midpoint", True)),
               ("exact, dopri5 1e-5", lambda: cu("dopri5", "exact"), lambda: fm("dopri5", True)),
               ("hutchinson (1 probe), midpoint 20", lambda: cu("midpoint", "hutchinson"),
                lambda: fm("midpoint", False))]
    lp_s, values = alternate(lp_rows, args.rounds)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:  # noqa: BLE001
            return "not installed"

    lines = [f"# R5 (FMPE: D = 10, K = 20, MLP 5 x 256 SiLU, batch 4096): cuFM against PyTorch peers "
             f"({args.threads} threads, CPU)", "",
             f"- Machine: {cpu_model()}; {args.threads} threads; {date}",
             f"- PyTorch {torch.__version__}, flow_matching {version('flow_matching')}, sbi {version('sbi')}, "
             f"lampe {version('lampe')}; cuFM {cufm.version()}: {cufm.build_summary()}".replace("\n", "; "),
             f"- Medians of {args.rounds} alternating rounds; training: {args.steps} timed steps per round.", "",
             "| Training step | ms/step | its time / cuFM's (above 1: cuFM faster) |", "| --- | ---: | ---: |"]
    cu_ms = statistics.median(train_ms["cuFM (CPU backend)"])
    result = dict(date=date, cpu=cpu_model(), threads=args.threads, training={}, log_prob={})
    for name, _ in train_rows:
        vals = [v for v in train_ms[name] if v is not None]
        if not vals:
            lines.append(f"| {name} | n/a ({train_note.get(name, 'unavailable')}) | |")
            continue
        ms = statistics.median(vals)
        lines.append(f"| {name} | {ms:.1f} | {ms / cu_ms:.2f}x |")
        result["training"][name] = dict(ms=train_ms[name], note=train_note.get(name))
    lines += ["", f"Log-probabilities of {args.points} held-out pairs, each under its own context, on the same "
              f"weights (cuFM's after {args.train_steps} steps):", "",
              "| Divergence, solver | cuFM points/s | flow_matching points/s | cuFM / flow_matching | "
              "max abs diff of log p |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, _, _ in lp_rows:
        tc, tf = statistics.median(lp_s[(name, "cufm")]), statistics.median(lp_s[(name, "flow_matching")])
        a, b = values[(name, "cufm")], values[(name, "flow_matching")]
        diff = float(np.max(np.abs(a - b))) if name.startswith("exact") else None
        lines.append(f"| {name} | {args.points / tc:,.0f} | {args.points / tf:,.0f} | {tf / tc:.1f}x | "
                     f"{'%.2e' % diff if diff is not None else '(other probes)'} |")
        result["log_prob"][name] = dict(cufm_s=lp_s[(name, "cufm")], flow_matching_s=lp_s[(name, "flow_matching")],
                                        max_abs_diff=diff)
    notes = [f"- {name}: {note}" for name, note in train_note.items() if note]
    if notes:
        lines += ["", "What the peers' rows time (r5_peers.py):"] + notes
    text = "\n".join(lines) + "\n"
    emit(text, args.out, args.json, result)


if __name__ == "__main__":
    main()
