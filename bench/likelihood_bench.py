"""Log-likelihoods, cuFM against facebookresearch's flow_matching (ODESolver.compute_likelihood), in
one run on one machine, on the same weights.

Workload: R5's shape without its context (cuFM cannot condition on vectors yet): D = 10, MLP
11-256x5-10 SiLU (input [x, t]), trained briefly by cuFM on a 10-D two-cluster mixture, then
log p(x) at 10,000 held-out points. Rows: exact divergence with midpoint (20 steps) and dopri5
(atol = rtol = 1e-5), and Hutchinson with one probe per point (midpoint 20). flow_matching runs the
same weights through cufm.torch.Velocity (an nn.Module); its exact divergence takes D autograd
passes per evaluation, cuFM's D forward-mode tangents in one GEMM per layer.
Reported: points/s (the median of --rounds alternating runs) and, for the exact rows, the largest
|log p| difference between the two implementations (Hutchinson's estimates differ by their probes).
Then sampling the same model from noise with midpoint 20: cufm.sample against ODESolver.sample.
--device cuda runs both on the GPU (cuFM's log_prob and sample with device="cuda", flow_matching's
ODESolver on CUDA tensors, PyTorch's MLP with the same weights); bench/gpu-python-check.sh runs it
there with the wheel of flow_matching that bench/gpu-pack.sh packs.

  python bench/likelihood_bench.py [--device cpu|cuda] [--threads N] [--points N] [--rounds N]
                                   [--out F.md] [--json F]
"""

import argparse
import datetime
import os
import statistics

import numpy as np

import cufm
from bench_machine import alternate, cpu_model, emit


def mixture(n, seed):
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(77).normal(size=(10, 10)) / np.sqrt(10)
    centres = np.stack([np.full(10, -1.0), np.full(10, 1.0)])
    return (centres[rng.integers(0, 2, n)] + 0.6 * rng.normal(size=(n, 10)) @ mix).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--points", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=2)
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
    config = cufm.MlpConfig(data_dim=10, hidden=[256] * 5, activation="silu")
    dev = args.device
    trainer = cufm.Trainer(cufm.Model(config, 0), cufm.Dataset(mixture(200_000, 0)),
                           cufm.TrainConfig(batch_size=1024, lr=1e-3), device=dev, threads=args.threads)
    trainer.fit(args.train_steps)
    model = trainer.model()
    x = mixture(args.points, 1)
    velocity = ct.Velocity(model).eval().to(dev)

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return velocity(x, t.reshape(()).expand(x.shape[0]))

    solver = ODESolver(velocity_model=Wrapped(velocity))
    normal = Independent(Normal(torch.zeros(10, device=dev), torch.ones(10, device=dev)), 1)
    xt = torch.from_numpy(x).to(dev)
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=x.shape).astype(np.float32)).to(dev)
    paths = {}  # cuFM's MLP path per row ("cuda fused divergence", ...)

    def fm(method, exact):
        kw = dict(step_size=0.05) if method == "midpoint" else dict(step_size=None, atol=1e-5, rtol=1e-5)
        _, lp = solver.compute_likelihood(x_1=xt, log_p0=normal.log_prob, method=method, exact_divergence=exact, **kw)
        return lp.detach().cpu().numpy()  # waits for the GPU

    def cu(name, solver_name, divergence):
        r = cufm.log_prob(model, x, solver=solver_name, steps=20, divergence=divergence, probes=1, device=dev,
                          threads=args.threads)
        paths[name] = r.get("mlp", dev)
        return r["log_prob"]

    def fm_sample():
        with torch.no_grad():
            return solver.sample(x_init=noise, method="midpoint", step_size=0.05).cpu().numpy()

    def cu_sample(name):
        r = cufm.sample(model, count=args.points, solver="midpoint", steps=20, device=dev, threads=args.threads)
        paths[name] = r.get("mlp", dev)
        return r["x"]

    rows = [("exact, midpoint 20", lambda: cu("exact, midpoint 20", "midpoint", "exact"), lambda: fm("midpoint", True)),
            ("exact, dopri5 1e-5", lambda: cu("exact, dopri5 1e-5", "dopri5", "exact"), lambda: fm("dopri5", True)),
            ("hutchinson (1 probe), midpoint 20", lambda: cu("hutchinson (1 probe), midpoint 20", "midpoint", "hutchinson"),
             lambda: fm("midpoint", False)),
            ("sampling, midpoint 20", lambda: cu_sample("sampling, midpoint 20"), fm_sample)]
    times, values = alternate(rows, args.rounds)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (f"{torch.cuda.get_device_name()}" if dev == "cuda" else f"{args.threads} threads, CPU")
    lines = [f"# Log-likelihoods and sampling: cuFM against flow_matching ({where})", "",
             f"- Machine: {cpu_model()}; {args.threads} threads; {where}; {date}",
             f"- PyTorch {torch.__version__}; cuFM {cufm.version()}: {cufm.build_summary()}".replace("\n", "; "),
             f"- Model: D = 10, MLP 11-256x5-10 SiLU, trained {args.train_steps} steps by cuFM; {args.points} "
             "held-out points of the same mixture. Times: the median of "
             f"{args.rounds} alternating rounds (each the whole batch).", "",
             "| Divergence, solver | cuFM points/s | cuFM MLP | flow_matching points/s | cuFM / flow_matching "
             "| mean log p (cuFM) | max abs diff of log p |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    result = {}
    for name, _, _ in rows:
        tc, tf = statistics.median(times[(name, "cufm")]), statistics.median(times[(name, "flow_matching")])
        a, b = values[(name, "cufm")], values[(name, "flow_matching")]
        diff = float(np.max(np.abs(a - b))) if name.startswith("exact") else None
        sampling = name.startswith("sampling")
        lines.append(f"| {name} | {args.points / tc:,.0f} | {paths.get(name, '-')} | {args.points / tf:,.0f} | "
                     f"{tf / tc:.1f}x | {'-' if sampling else '%.4f' % float(np.mean(a))} | "
                     f"{'%.2e' % diff if diff is not None else ('(other noise)' if sampling else '(other probes)')} |")
        result[name] = dict(cufm_s=times[(name, "cufm")], flow_matching_s=times[(name, "flow_matching")],
                            mean_log_p_cufm=None if sampling else float(np.mean(a)),
                            mean_log_p_flow_matching=None if sampling else float(np.mean(b)),
                            max_abs_diff=diff, cufm_mlp=paths.get(name))
    text = "\n".join(lines) + "\n"
    emit(text, args.out, args.json, dict(date=date, cpu=cpu_model(), threads=args.threads, device=where,
                                         rows=result))


if __name__ == "__main__":
    main()
