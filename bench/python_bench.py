"""R1 training from Python, in one run on one machine: what the binding adds to cuFM's step, and how
cuFM compares with facebookresearch's flow_matching package's own training loop.

R1: D = 2, MLP 3-512-512-512-512-2 SiLU, raw t, batch 4096, Adam lr 1e-3, checkerboard data.
Rows (ms/step, the median of individually timed steps after warm-up; the rounds alternate the rows
so that a machine's drift hits all of them alike):
  cufm C++          cufm_bench_train (the C++ binary) --workloads R1: Trainer::step()
  cufm Python       cufm.Trainer.step() through the binding: the same step plus the call
  cufm Python x1    cufm.Trainer.step(x1) on a batch the caller drew (numpy), through the binding
  flow_matching     flow_matching's AffineProbPath(CondOTScheduler) loop on the same MLP in PyTorch
  cufm.torch        the same PyTorch MLP, its loss from cufm.torch.flow_matching_loss

  python bench/python_bench.py --cli-bench build/bench/cufm_bench_train [--device cpu|cuda]
      [--threads N] [--steps N] [--rounds N] [--out FILE.md] [--json FILE] [--smoke]

Needs the cufm package (pip install .), torch and flow_matching (pip install torch flow_matching).
Build the binary and the package from the same commit, both Release (scripts/build.sh, pip install .).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import cufm
from bench_machine import cpu_model

R1 = dict(dim=2, width=512, layers=4, batch=4096, lr=1e-3)


def median_ms(times):
    return statistics.median(times) * 1e3


def time_steps(step, warmup, steps, sync=lambda: None):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


class Rows:
    def __init__(self, args, torch):
        self.args, self.torch = args, torch
        self.device = args.device
        self.data = cufm.make_toy("checkerboard", 1 << 20 if not args.smoke else 1 << 14, seed=0)
        self.config = cufm.MlpConfig(data_dim=2, hidden=[R1["width"]] * R1["layers"], activation="silu")
        self.train = cufm.TrainConfig(batch_size=R1["batch"], lr=R1["lr"], seed=0)
        self.rng = np.random.default_rng(0)
        self.data_t = torch.from_numpy(self.data.x).to("cuda" if self.device == "cuda" else "cpu")

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def cufm_cpp(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r1.json")
            cmd = [self.args.cli_bench, "--backends", "cpu" if self.device == "cpu" else "cuda-fp32",
                   "--workloads", "R1", "--threads", str(self.args.threads), "--steps", str(self.args.steps),
                   "--warmup", str(self.args.warmup), "--quality-steps", "0", "--json", out, "--out",
                   os.path.join(d, "r1.md")]
            if self.args.smoke:
                cmd.append("--smoke")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows = [r for r in json.load(open(out))["train"] if r["workload"] == "R1"]
            return rows[0]["ms_per_step"]

    def cufm_python(self):
        trainer = cufm.Trainer(cufm.Model(self.config, 0), self.data, self.train, device=self.device,
                               threads=self.args.threads)
        if self.device == "cuda":  # the GPU trainer queues steps: time chunks of 10, as the C++ bench does
            trainer.run(self.args.warmup)
            trainer.loss()
            times = []
            for _ in range(max(1, self.args.steps // 10)):
                t0 = time.perf_counter()
                trainer.run(10)
                trainer.loss()
                times.append((time.perf_counter() - t0) / 10)
            return median_ms(times)
        return median_ms(time_steps(trainer.step, self.args.warmup, self.args.steps))

    def cufm_python_batch(self):
        trainer = cufm.Trainer(cufm.Model(self.config, 0), config=self.train, device=self.device,
                               threads=self.args.threads)
        x = self.data.x

        def step():
            trainer.step(x[self.rng.integers(0, len(x), R1["batch"])])
            if self.device == "cuda":
                trainer.loss()

        return median_ms(time_steps(step, self.args.warmup, self.args.steps))

    def torch_mlp(self):
        nn = self.torch.nn
        self.torch.manual_seed(0)
        layers, width = [], 3
        for _ in range(R1["layers"]):
            layers += [nn.Linear(width, R1["width"]), nn.SiLU()]
            width = R1["width"]
        net = nn.Sequential(*layers, nn.Linear(width, 2)).to(self.data_t.device)
        return net, self.torch.optim.Adam(net.parameters(), lr=R1["lr"])

    def batch(self):
        idx = self.torch.randint(0, self.data_t.shape[0], (R1["batch"],), device=self.data_t.device)
        return self.data_t[idx]

    def flow_matching(self):
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        torch = self.torch
        net, opt = self.torch_mlp()
        path = AffineProbPath(scheduler=CondOTScheduler())

        def step():
            x_1 = self.batch()
            x_0 = torch.randn_like(x_1)
            t = torch.rand(x_1.shape[0], device=x_1.device)
            s = path.sample(t=t, x_0=x_0, x_1=x_1)
            loss = torch.pow(net(torch.cat([s.x_t, s.t[:, None]], dim=1)) - s.dx_t, 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return median_ms(time_steps(step, self.args.warmup, self.args.steps, self.sync))

    def cufm_torch(self):
        import cufm.torch as ct

        torch = self.torch
        net, opt = self.torch_mlp()
        counter = [0]

        def step():
            loss = ct.flow_matching_loss(lambda x, t: net(torch.cat([x, t[:, None]], dim=1)), self.batch(),
                                         step=counter[0])
            counter[0] += 1
            opt.zero_grad()
            loss.backward()
            opt.step()

        return median_ms(time_steps(step, self.args.warmup, self.args.steps, self.sync))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli-bench", required=True, help="the cufm_bench_train binary")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny: checks the script, measures nothing")
    ap.add_argument("--out", help="markdown table")
    ap.add_argument("--json", help="the numbers")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.warmup, args.rounds = 2, 1, 1
    rows = Rows(args, torch)
    names = [("cufm C++ (Trainer::step)", rows.cufm_cpp), ("cufm Python (Trainer.step)", rows.cufm_python),
             ("cufm Python (Trainer.step(x1), numpy batch)", rows.cufm_python_batch),
             ("flow_matching 1.0 loop (PyTorch eager)", rows.flow_matching),
             ("PyTorch MLP + cufm.torch.flow_matching_loss", rows.cufm_torch)]
    results = {n: [] for n, _ in names}
    for r in range(args.rounds):
        for name, fn in names:
            results[name].append(fn())
            print(f"round {r + 1}: {name}: {results[name][-1]:.2f} ms/step", file=sys.stderr)
    med = {n: statistics.median(v) for n, v in results.items()}
    base = med["cufm C++ (Trainer::step)"]
    import flow_matching

    machine = dict(cpu=cpu_model(), threads=args.threads, device=args.device, python=platform.python_version(),
                   torch=torch.__version__, flow_matching=getattr(flow_matching, "__version__", "?"),
                   cufm=cufm.version(), build=cufm.build_summary(),
                   date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    lines = [f"# R1 training from Python ({args.device}, {args.threads} threads)", "",
             f"- Machine: {machine['cpu']}; {args.threads} threads; {machine['date']}",
             f"- Python {machine['python']}, PyTorch {machine['torch']}, flow_matching {machine['flow_matching']}",
             f"- cuFM {machine['cufm']}: {machine['build']}",
             f"- R1: MLP 3-512x4-2 SiLU, batch 4096, Adam 1e-3. Per row and round: the median of {args.steps} "
             f"timed steps after {args.warmup} warm-up; {args.rounds} rounds alternating the rows; the table "
             "gives the median of the rounds' medians and every round's value.", "",
             "| Row | ms/step | vs cufm C++ | rounds (ms/step) |", "| --- | ---: | ---: | --- |"]
    for name, _ in names:
        lines.append(f"| {name} | {med[name]:.2f} | {med[name] / base:.3f}x | "
                     f"{', '.join(f'{v:.2f}' for v in results[name])} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.smoke:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json and not args.smoke:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, rows={n: dict(median_ms=med[n], rounds_ms=results[n]) for n in med}), f,
                      indent=1)


if __name__ == "__main__":
    main()
