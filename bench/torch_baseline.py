#!/usr/bin/env python3
"""PyTorch baseline for cuFM's benchmark workloads (R1-R4, R7), eager and torch.compile.

The same workloads as bench/bench_train.cpp and bench/bench_sample.cpp:
  R1: D=2, MLP 3-512-512-512-512-2 SiLU, raw t, batch 4096, Adam lr 1e-3;
      sampling 50,000 points, midpoint, 20 steps.
  R2: D=2, width 64 and 128, 5 hidden layers, batch 2^14 and 2^18.
  R3: D=64 (8-mode Gaussian mixture), width 1024, 4 hidden layers, batch 8192.
  R4: R1's model with 8 classes: input [x_t, t, one-hot of 9] (the 9th entry is the null class),
      label dropout 0.1; sampling 50,000 points, RK4, 32 steps, guidance 3
      (v = v(x, t, null) + w (v(x, t, c) - v(x, t, null)), one forward of the 2N-row batch).
  R7: sampling with R2's width-128 model (5 hidden layers), 10^6 points, midpoint, 20 steps.
The loss is the seed's: x_t = t x1 + (1 - t) eps, u = x1 - eps, F.mse_loss(v, u), t ~ U(0, 1).
The checkerboard is drawn on the fly each step (as in the flow_matching example):
  x1 = rand*4 - 2; x2_ = rand - randint(0, 2)*2; x2 = x2_ + floor(x1) % 2; data = cat([x1, x2])*2,
labelled by square as cuFM's make_toy: (floor(x1) + 2) * 2 + (1 - randint) for R4.

Timing: warm-up steps, then a fixed number of steps; CPU: each step timed with perf_counter,
median reported; CUDA: CUDA events around chunks of 10 steps, median chunk / 10 (as cuFM's GPU
rows). Sampling: one warm-up call at the full count with one solver step, then repeated full
calls (up to 3 on the CPU, 10 on CUDA, stopping once --budget seconds (60 / 10) are spent;
torch.cuda.synchronize before reading the clock); the median is reported. torch.compile rows run in a child process killed after
--compile-timeout seconds, reported as 'failed: <reason>'; their first step (the compile) is
reported separately as compile_s. On CUDA, training compiles with mode="max-autotune" and sampling
with mode="reduce-overhead" (CUDA graphs), the modes a serious PyTorch user would pick (the
Mode column says which); on the CPU, the default mode.

Setup:
  pip install torch numpy            # CUDA wheels; CPU only: add --index-url https://download.pytorch.org/whl/cpu
  python3 bench/torch_baseline.py --threads $(nproc) --json torch.json --out torch.md
Options: --device cpu|cuda|all (default all available), --workloads R1,R4, --modes eager,compile,
--compile-workloads R1 (default on the CPU: R1 only, compiling takes minutes there; on CUDA: all),
--steps N, --smoke (tiny sizes, to check the script runs).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench_machine import silu_mlp

GPU_CHUNK = 10
SAMPLE_COUNT = 50000


# ---- workloads -------------------------------------------------------------------------------
def train_workloads(smoke):
    rows = [dict(id="R1", variant="", dim=2, width=512, layers=4, classes=0, batch=4096, cpu_steps=20, data="checkerboard")]
    for width in (64, 128):
        for log_b in (14, 18):
            rows.append(dict(id="R2", variant=f"w{width}-b2^{log_b}", dim=2, width=width, layers=5, classes=0,
                             batch=1 << log_b, cpu_steps=20 if log_b == 14 else 5, data="checkerboard"))
    rows.append(dict(id="R3", variant="", dim=64, width=1024, layers=4, classes=0, batch=8192, cpu_steps=5, data="gmm64"))
    rows.append(dict(id="R4", variant="", dim=2, width=512, layers=4, classes=8, batch=4096, cpu_steps=20,
                     data="checkerboard"))
    if smoke:
        for r in rows:
            r["batch"] = min(r["batch"], 256)
    return rows


def sample_workloads():
    return [dict(id="R1", dim=2, width=512, layers=4, classes=0, solver="midpoint", steps=20, guidance=None,
                 count=SAMPLE_COUNT),
            dict(id="R4", dim=2, width=512, layers=4, classes=8, solver="rk4", steps=32, guidance=3.0,
                 count=SAMPLE_COUNT),
            dict(id="R7", dim=2, width=128, layers=5, classes=0, solver="midpoint", steps=20, guidance=None,
                 count=1_000_000)]


def compile_mode(kind, device):
    """torch.compile's mode for a row: on CUDA max-autotune for training, reduce-overhead (CUDA
    graphs) for sampling; the default elsewhere."""
    if device.type != "cuda":
        return "default"
    return "max-autotune" if kind == "train" else "reduce-overhead"


def make_mlp(w):
    in_dim = w["dim"] + 1 + (w["classes"] + 1 if w["classes"] > 0 else 0)
    return silu_mlp([in_dim] + [w["width"]] * w["layers"] + [w["dim"]])


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- data --------------------------------------------------------------------------------------
def checkerboard(n, device):
    x1 = torch.rand(n, device=device) * 4 - 2
    row = torch.randint(0, 2, (n,), device=device)
    x2_ = torch.rand(n, device=device) - row.float() * 2
    x2 = x2_ + torch.floor(x1) % 2
    data = torch.cat([x1[:, None], x2[:, None]], 1) / 0.45  # flow_matching's example, as cuFM's make_toy
    label = (torch.floor(x1).long() + 2) * 2 + (1 - row)  # cuFM's: column * 2 + (upper square ? 1 : 0)
    return data, label


class Gmm64:
    """8 centres with N(0, 2^2) coordinates, points = centre + N(0, 0.5^2 I) (cuFM's gmm64)."""

    def __init__(self, dim, device):
        g = torch.Generator().manual_seed(0)
        self.centres = (2.0 * torch.randn(8, dim, generator=g)).to(device)

    def __call__(self, n, device):
        k = torch.randint(0, 8, (n,), device=device)
        return self.centres[k] + 0.5 * torch.randn(n, self.centres.shape[1], device=device), k


# ---- precision ---------------------------------------------------------------------------------
def set_precision(backend):
    if torch.cuda.is_available():
        tf32 = backend == "cuda-tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def autocast(backend):
    if backend == "cuda-bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if backend == "cpu-bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- training ----------------------------------------------------------------------------------
def measure_train(w, backend, mode, args):
    device = torch.device("cpu" if backend.startswith("cpu") else "cuda")
    set_precision(backend)
    torch.manual_seed(0)
    model = make_mlp(w).to(device)
    params = num_params(model)
    fwd = torch.compile(model, mode=compile_mode("train", device)) if mode == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gmm = Gmm64(w["dim"], device) if w["data"] == "gmm64" else None
    B, D, C = w["batch"], w["dim"], w["classes"]

    def step():
        x1, label = gmm(B, device) if gmm else checkerboard(B, device)
        t = torch.rand(B, 1, device=device)
        eps = torch.randn_like(x1)
        xt = t * x1 + (1 - t) * eps
        u = x1 - eps
        parts = [xt, t]
        if C > 0:
            drop = torch.rand(B, device=device) < 0.1
            label = torch.where(drop, torch.full_like(label, C), label)
            parts.append(F.one_hot(label, C + 1).float())
        with autocast(backend):
            v = fwd(torch.cat(parts, 1))
            loss = F.mse_loss(v.float(), u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup >= 0 else (1 if args.smoke else (20 if gpu else 2))
    steps = args.steps or (2 if args.smoke else (300 if gpu else w["cpu_steps"]))
    t0 = time.perf_counter()
    loss = step()  # the first step (compiles in compile mode)
    sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0) + (2 if mode == "compile" else 0)):  # compile: let recompiles settle
        loss = step()
    sync(device)
    per_step = []
    if not gpu:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = step()
            per_step.append(time.perf_counter() - t0)
    else:
        chunk = 1 if args.smoke else GPU_CHUNK
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        done = 0
        while done < steps:
            k = min(chunk, steps - done)
            start.record()
            for _ in range(k):
                loss = step()
            stop.record()
            stop.synchronize()
            per_step.append(start.elapsed_time(stop) * 1e-3 / k)
            done += k
    final_loss = float(loss.detach())
    if not math.isfinite(final_loss):
        raise RuntimeError(f"training diverged (loss {final_loss})")
    med = statistics.median(per_step)
    flop = 6.0 * B * params
    return dict(status="ok", steps=len(per_step), warmup=warmup, params=params, batch=B, flop_per_step=flop,
                ms_per_step=med * 1e3, ms_per_step_min=min(per_step) * 1e3, ms_per_step_max=max(per_step) * 1e3,
                samples_per_s=B / med, tflops=flop / med * 1e-12, final_loss=final_loss,
                first_step_s=first_s, compile_s=first_s if mode == "compile" else None)


# ---- sampling ----------------------------------------------------------------------------------
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


def measure_sample(w, backend, mode, args):
    device = torch.device("cpu" if backend.startswith("cpu") else "cuda")
    set_precision(backend)
    torch.manual_seed(0)
    model = make_mlp(w).to(device).eval()
    params = num_params(model)
    fwd = torch.compile(model, mode=compile_mode("sample", device)) if mode == "compile" else model
    n = 200 if args.smoke else w["count"]
    C = w["classes"]
    g = w["guidance"]
    if C > 0:
        labels = torch.arange(n, device=device) % C
        cond = F.one_hot(torch.cat([labels, torch.full_like(labels, C)]), C + 1).float()

    def velocity(x, t):
        tt = torch.full((x.shape[0], 1), t, device=device)
        with autocast(backend):
            if C == 0:
                # A copy: CUDA graphs (reduce-overhead) overwrite a graph's output at its next replay,
                # and RK4 keeps k1..k3 across calls.
                return fwd(torch.cat([x, tt], 1)).float().clone()
            # one forward of [conditional; null] rows, then v = v_null + g (v_cond - v_null)
            v = fwd(torch.cat([torch.cat([x, x]), torch.cat([tt, tt]), cond], 1)).float()
            v_c, v_u = v[:n], v[n:]
            return v_u + g * (v_c - v_u)

    def run(steps):
        with torch.inference_mode():
            x = torch.randn(n, w["dim"], device=device)
            h = 1.0 / steps
            for i in range(steps):
                t = i * h
                if w["solver"] == "midpoint":
                    k1 = velocity(x, t)
                    x = x + h * velocity(x + 0.5 * h * k1, t + 0.5 * h)
                else:
                    k1 = velocity(x, t)
                    k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
                    k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
                    k4 = velocity(x + h * k3, t + h)
                    x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
            return x.cpu()

    gpu = device.type == "cuda"
    t0 = time.perf_counter()
    run(1)  # warm-up at the full count (compiles in compile mode)
    first_s = time.perf_counter() - t0
    repeats = args.steps or (1 if args.smoke else (10 if gpu else 3))
    times = []
    spent = 0.0
    budget = args.budget or (10.0 if gpu else 60.0)
    while len(times) < repeats and (not times or spent < budget):
        sync(device)
        t0 = time.perf_counter()
        x = run(w["steps"])
        sync(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    if not torch.isfinite(x).all():
        raise RuntimeError("sampling produced non-finite points")
    med = statistics.median(times)
    evals = STAGES[w["solver"]] * w["steps"] * (2 if g else 1)
    flop = 2.0 * params * n * evals
    return dict(status="ok", count=n, solver=w["solver"], steps=w["steps"], guidance=g, params=params,
                model_evals=evals, flop=flop, repeats=len(times), seconds=med, seconds_min=min(times),
                seconds_max=max(times), samples_per_s=n / med, tflops=flop / med * 1e-12,
                compile_s=first_s if mode == "compile" else None)


def cpu_mm_ceiling(args):
    a, b = torch.randn(4096, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b.T
    times = []
    for _ in range(3 if args.smoke else 20):
        t0 = time.perf_counter()
        a @ b.T
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return dict(backend="cpu", what=f"torch.mm fp32 4096x512x512 ({torch.get_num_threads()} threads)", m=4096, n=512,
                k=512, ok=True, median_s=med, tflops=2.0 * 4096 * 512 * 512 / med * 1e-12)


# ---- rows and child processes ------------------------------------------------------------------
def run_row(kind, w, backend, mode, args):
    try:
        if kind == "train":
            return measure_train(w, backend, mode, args)
        return measure_sample(w, backend, mode, args)
    except Exception as e:  # report, keep going
        msg = str(e).strip().splitlines()
        return dict(status="failed", reason=f"{type(e).__name__}: {msg[-1] if msg else ''}"[:300])


def run_compiled_in_child(kind, w, backend, args):
    """torch.compile in a child process, so a hang or a crash is time-boxed and reported."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(dict(kind=kind, w=w, backend=backend)),
           "--child-out", out, "--threads", str(args.threads), "--budget", str(args.budget),
           "--warmup", str(args.warmup)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.smoke:
        cmd.append("--smoke")
    try:
        p = subprocess.run(cmd, timeout=args.compile_timeout, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            return dict(status="failed", reason=f"child exited {p.returncode}: {tail}"[:300])
        with open(out) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        return dict(status="failed", reason=f"timed out after {args.compile_timeout:.0f} s (compile + measurement)")
    finally:
        if os.path.exists(out):
            os.unlink(out)


def backends(args):
    out = []
    if args.device in ("cpu", "all"):
        out.append("cpu")
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            out += ["cuda-fp32", "cuda-tf32", "cuda-bf16"]
        elif args.device == "cuda":
            sys.exit("torch_baseline: --device cuda but torch.cuda.is_available() is False")
    return out


def fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def mode_of(r):
    return r["mode"] + (f" ({r['compile_mode']})" if r.get("compile_mode") else "")


def markdown(result):
    lines = ["## PyTorch baseline", ""]
    m = result["machine"]
    lines += [f"- torch {m['torch']} ({m['torch_cuda'] or 'no CUDA'}), Python {m['python']}",
              f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads used",
              f"- GPU: {m['gpu'] or 'none'}", ""]
    if result["smoke"]:
        lines += ["- SMOKE RUN: tiny sizes, the timings mean nothing", ""]
    lines += ["### Training", "",
              "| Workload | Batch | Backend | Mode | Steps | ms/step median [min, max] | samples/s | TFLOP/s | compile s | Final loss |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["train"]:
        name = (r["workload"] + " " + r["variant"]).strip()
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['batch']} | {r['backend']} | {mode_of(r)} | - | {r['status']}: {r.get('reason', '')} | - | - | - | - |")
            continue
        lines.append(f"| {name} | {r['batch']} | {r['backend']} | {mode_of(r)} | {r['steps']} ({r['warmup']}) | "
                     f"{fmt(r['ms_per_step'])} [{fmt(r['ms_per_step_min'])}, {fmt(r['ms_per_step_max'])}] | "
                     f"{fmt(r['samples_per_s'], 3)} | {fmt(r['tflops'], 3)} | {fmt(r['compile_s'], 3)} | {fmt(r['final_loss'])} |")
    lines += ["", "### Sampling", "",
              "| Workload | Solver | Backend | Mode | Repeats | s median [min, max] | samples/s | TFLOP/s | compile s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["sample"]:
        if r["status"] != "ok":
            lines.append(f"| {r['workload']} | - | {r['backend']} | {mode_of(r)} | - | {r['status']}: {r.get('reason', '')} | - | - | - |")
            continue
        solver = f"{r['solver']} {r['steps']}" + (f", guidance {r['guidance']:g}" if r["guidance"] else "")
        lines.append(f"| {r['workload']} | {solver} | {r['backend']} | {mode_of(r)} | {r['repeats']} | "
                     f"{fmt(r['seconds'])} [{fmt(r['seconds_min'])}, {fmt(r['seconds_max'])}] | {fmt(r['samples_per_s'], 3)} | "
                     f"{fmt(r['tflops'], 3)} | {fmt(r['compile_s'], 3)} |")
    return "\n".join(lines) + "\n"


def machine(args):
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(cpu_model=model, logical_cpus=os.cpu_count(), threads=args.threads, torch=torch.__version__,
                torch_cuda=torch.version.cuda, python=platform.python_version(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--workloads", default="R1,R2,R3,R4")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--compile-workloads", default=None,
                    help="workloads run with torch.compile (default: R1 on the CPU, all on CUDA)")
    ap.add_argument("--compile-timeout", type=float, default=600.0, help="seconds per compiled row")
    ap.add_argument("--steps", type=int, default=0, help="measured steps / sampling repeats per row")
    ap.add_argument("--warmup", type=int, default=-1)
    ap.add_argument("--budget", type=float, default=0.0,
                    help="sampling: stop repeating a row after this many s (default: CPU 60, CUDA 10)")
    ap.add_argument("--cpu-bf16", default="",
                    help="workloads also run as cpu-bf16, eager, under torch.autocast('cpu', bfloat16) (default: none)")
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.child:
        spec = json.loads(args.child)
        r = run_row(spec["kind"], spec["w"], spec["backend"], "compile", args)
        with open(args.child_out, "w") as f:
            json.dump(r, f)
        return

    wanted = args.workloads.split(",")
    modes = args.modes.split(",")
    result = dict(tool="torch_baseline", source="pytorch", smoke=args.smoke, machine=machine(args), train=[],
                  sample=[], ceilings=[cpu_mm_ceiling(args)] if args.device != "cuda" else [])

    def compiled(wid, backend):
        if args.compile_workloads is not None:
            return args.compile_workloads == "all" or wid in args.compile_workloads.split(",")
        return backend != "cpu" or wid == "R1"

    jobs = []
    if not args.no_train:
        jobs += [("train", w) for w in train_workloads(args.smoke) if w["id"] in wanted]
    if not args.no_sample:
        jobs += [("sample", w) for w in sample_workloads() if w["id"] in wanted]
    bf16_wanted = [x for x in args.cpu_bf16.split(",") if x]
    for kind, w in jobs:
        for backend in backends(args) + (["cpu-bf16"] if w["id"] in bf16_wanted and args.device != "cuda" else []):
            for mode in (["eager"] if backend == "cpu-bf16" else modes):
                base = dict(workload=w["id"], backend=backend, mode=mode)
                if mode == "compile":
                    base["compile_mode"] = compile_mode(kind, torch.device("cuda" if backend.startswith("cuda") else "cpu"))
                if kind == "train":
                    base.update(variant=w["variant"], batch=w["batch"], dim=w["dim"], width=w["width"],
                                hidden_layers=w["layers"], num_classes=w["classes"])
                label = f"[{kind}] {w['id']} {w.get('variant', '')} {backend} {mode}"
                print(label + " ...", end="", file=sys.stderr, flush=True)
                if mode == "compile" and not compiled(w["id"], backend):
                    r = dict(status="skipped", reason="not in --compile-workloads")
                elif mode == "compile":
                    r = run_compiled_in_child(kind, w, backend, args)
                else:
                    r = run_row(kind, w, backend, mode, args)
                base.update(r)
                summary = (f" {fmt(r['ms_per_step'])} ms/step" if kind == "train" else f" {fmt(r['seconds'])} s") \
                    if r["status"] == "ok" else f" {r['status']}: {r.get('reason', '')}"
                print(summary, file=sys.stderr, flush=True)
                result[kind].append(base)

    md = markdown(result)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
