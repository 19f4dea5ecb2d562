#!/usr/bin/env python3
"""Merges the cuFM benchmark JSONs (cufm_bench_train / _sample / _kernels --json) with the PyTorch
baseline's (bench/torch_baseline.py --json) into one markdown report with cuFM / PyTorch ratios.

  python3 bench/compare.py --cufm train.json sample.json [kernels.json] --torch torch.json \
      [--out-dir bench/results] [--machine NAME]

Writes <out-dir>/<UTC date>-<machine>.md and the merged inputs as <...>.json beside it, and prints
the path. "speedup" = PyTorch time / cuFM time on the same backend (> 1: cuFM is faster).
"""

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys


def fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)  # counts (batch, points, steps) in full
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def commit_line():
    head = git("rev-parse", "HEAD")
    if not head:
        return "none (git rev-parse HEAD failed: no commit yet, or not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" (with uncommitted changes)" if dirty else "")


def lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def index(rows, keys):
    out = {}
    for r in rows:
        out[tuple(r.get(k, "") or "" for k in keys)] = r
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cufm", nargs="+", required=True, help="cuFM bench JSON files")
    ap.add_argument("--torch", help="torch_baseline.py JSON")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--machine", help="machine name for the file name (default: from the CPU/GPU model)")
    args = ap.parse_args()

    cufm = {"train": [], "sample": [], "quality": [], "ceilings": [], "kernels": [], "gemm": [], "skipped": []}
    machine, smoke, extra = None, False, {}
    for path in args.cufm:
        with open(path) as f:
            j = json.load(f)
        machine = machine or j.get("machine")
        smoke = smoke or j.get("smoke", False)
        for k in cufm:
            for r in j.get(k, []):
                if k == "ceilings":
                    r = dict(r, what=f"{r['what']} [{j.get('tool', '?')}]")
                if r not in cufm[k]:
                    cufm[k].append(r)
        for k in ("quality_floor", "memcpy_d2d"):
            if k in j:
                extra[k] = j[k]
    torch_j = {"train": [], "sample": [], "ceilings": [], "machine": {}}
    if args.torch:
        with open(args.torch) as f:
            torch_j = json.load(f)
        smoke = smoke or torch_j.get("smoke", False)
    machine = machine or {}

    cpu = lscpu()
    cpu_model = cpu.get("Model name", machine.get("cpu_model", "unknown"))
    gpus = machine.get("gpus", [])
    name = args.machine or slug((gpus[0]["name"] if gpus else cpu_model) + f"-{machine.get('logical_cpus', os.cpu_count())}cpu")
    now = datetime.datetime.now(datetime.timezone.utc)
    stem = f"{now:%Y-%m-%d}-{name}" + ("-smoke" if smoke else "")
    os.makedirs(args.out_dir, exist_ok=True)
    md_path = os.path.join(args.out_dir, stem + ".md")

    L = [f"# cuFM benchmarks, {now:%Y-%m-%d %H:%M} UTC", ""]
    if smoke:
        L += ["**SMOKE RUN: tiny sizes and repeat counts; the timings mean nothing.**", ""]
    L += [f"- Machine: {cpu_model}; {cpu.get('Socket(s)', '?')} socket(s), {cpu.get('Core(s) per socket', '?')} "
          f"core(s) per socket, {cpu.get('Thread(s) per core', '?')} thread(s) per core, "
          f"{machine.get('logical_cpus', os.cpu_count())} logical CPUs",
          f"- Threads used: cuFM {machine.get('threads', '?')}, PyTorch {torch_j['machine'].get('threads', 'n/a')}",
          f"- GPU: {', '.join(g['name'] for g in gpus) if gpus else 'none'}",
          f"- Commit of the checkout this report was written in: {commit_line()} (the binaries' own commit is in"
          " the cuFM build line)",
          f"- cuFM build: {' '.join(str(machine.get('build', '?')).split())}",
          f"- PyTorch: {torch_j['machine'].get('torch', 'not run')}",
          ""]
    for s in cufm["skipped"]:
        L.append(f"- cuFM {s['backend']}: skipped, {s['reason']}")
    L += ["", "\"speedup\" = PyTorch time / cuFM time on the same backend and precision, measured in the same "
          "session (> 1: cuFM is faster). TFLOP/s counts 6·B·P per training step and 2·P per point per model "
          "evaluation when sampling (P = parameters).", ""]

    # ---- ceilings
    rows = [[c["backend"], c["what"], f"{c['m']}x{c['n']}x{c['k']}", c["median_s"] * 1e3 if c.get("ok") else None,
             c["tflops"] if c.get("ok") else f"failed: {c.get('reason', '')}"] for c in cufm["ceilings"]]
    rows += [[c["backend"], c["what"], f"{c['m']}x{c['n']}x{c['k']}", c["median_s"] * 1e3, c["tflops"]]
             for c in torch_j.get("ceilings", [])]
    L += ["## GEMM ceilings (same session)", "", table(["Backend", "GEMM", "MxNxK", "ms median", "TFLOP/s"], rows), ""]

    # ---- training
    tidx = index(torch_j["train"], ["workload", "variant", "backend", "mode"])
    rows = []
    for r in cufm["train"]:
        # A cuFM row may name the PyTorch backend it is compared with (an OpenBLAS variant of "cpu").
        key = (r["workload"], r.get("variant", "") or "", r.get("torch_backend", r["backend"]))
        te, tc = tidx.get(key + ("eager",)), tidx.get(key + ("compile",))
        ok = r.get("status") == "ok"
        ms = r.get("ms_per_step") if ok else None
        te_ms = te.get("ms_per_step") if te and te.get("status") == "ok" else None
        tc_ms = tc.get("ms_per_step") if tc and tc.get("status") == "ok" else None
        tc_cell = tc_ms if tc_ms is not None else (f"{tc['status']}: {tc.get('reason', '')}" if tc else "not run")
        for t in (te, tc):  # a smoke JSON mixed with a full one, say
            if t and t.get("batch") != r["batch"]:
                sys.exit(f"compare: {key}: cuFM batch {r['batch']} but PyTorch batch {t.get('batch')}")
        rows.append([(r["workload"] + " " + (r.get("variant") or "")).strip(), r["batch"], r["backend"],
                     r.get("mlp", "-"), ms if ok else f"failed: {r.get('reason', '')}", te_ms if te else "not run", tc_cell,
                     ratio(te_ms, ms), ratio(tc_ms, ms), r.get("tflops"),
                     None if r.get("ceiling_fraction") is None else f"{100 * r['ceiling_fraction']:.3g}%",
                     r.get("speedup_vs_cpu")])
    L += ["## Training: ms/step (median)", "",
          table(["Workload", "Batch", "Backend", "cuFM MLP", "cuFM", "PyTorch eager", "PyTorch compile",
                 "speedup vs eager",
                 "speedup vs compile", "cuFM TFLOP/s", "cuFM % of ceiling", "cuFM vs own CPU"], rows), ""]

    # ---- sampling
    sidx = index(torch_j["sample"], ["workload", "backend", "mode"])
    rows = []
    for r in cufm["sample"]:
        key = (r["workload"], r.get("torch_backend", r["backend"]))
        te, tc = sidx.get(key + ("eager",)), sidx.get(key + ("compile",))
        ok = r.get("status") == "ok"
        s = r.get("seconds") if ok else None
        te_s = te.get("seconds") if te and te.get("status") == "ok" else None
        tc_s = tc.get("seconds") if tc and tc.get("status") == "ok" else None
        tc_cell = tc_s if tc_s is not None else (f"{tc['status']}: {tc.get('reason', '')}" if tc else "not run")
        for t in (te, tc):
            if t and t.get("status") == "ok" and t.get("count") != r["count"]:
                sys.exit(f"compare: {key}: cuFM sampled {r['count']} points but PyTorch {t.get('count')}")
        solver = f"{r['solver']} {r['steps']}" + (f", w={r['guidance']:g}" if r.get("guidance") else "")
        rows.append([r["workload"], solver, r["count"], r["backend"], r.get("mlp", "-"),
                     s if ok else f"failed: {r.get('reason', '')}",
                     r.get("repeats"), te_s if te else "not run", tc_cell, ratio(te_s, s), ratio(tc_s, s),
                     r.get("tflops"), r.get("speedup_vs_cpu")])
    L += ["## Sampling: seconds (median)", "",
          table(["Workload", "Solver", "Points", "Backend", "cuFM MLP", "cuFM s", "cuFM repeats", "PyTorch eager s",
                 "PyTorch compile s", "speedup vs eager", "speedup vs compile", "cuFM TFLOP/s", "cuFM vs own CPU"],
                rows), ""]

    # ---- quality
    if cufm["quality"]:
        rows = [[q["backend"], q["train_steps"], q.get("train_s"), q.get("final_loss"),
                 (fmt(q["time_20k_s"]) + f" ({q.get('time_20k_kind')})") if q.get("time_20k_s") is not None else "n/a",
                 q.get("sliced_w2"), q.get("energy_distance")] for q in cufm["quality"]]
        L += ["## R1: time to 20,000 steps and sample quality after N steps (cuFM)", "",
              table(["Backend", "N steps", "train s", "final loss", "20,000 steps s", "sliced W2", "energy distance"],
                    rows), ""]
        fl = extra.get("quality_floor")
        if fl:
            L += [f"Data-vs-data floor ({fl['count']} points each): sliced W2 {fmt(fl['sliced_w2'])}, energy distance "
                  f"{fmt(fl['energy_distance'])}. 'extrapolated' = 20,000 x the median ms/step above.", ""]

    # ---- kernels
    if cufm["kernels"]:
        mc = extra.get("memcpy_d2d", {})
        rows = [[k["kernel"], k["case"], k["batch"], k["dim"], "bf16" if k["bf16"] else "fp32", k["median_s"] * 1e6,
                 k["gbs"], f"{100 * k['memcpy_fraction']:.3g}%"] for k in cufm["kernels"]]
        L += ["## Fused kernels vs cudaMemcpy D2D " + (f"({fmt(mc.get('gbs'))} GB/s)" if mc else ""), "",
              table(["Kernel", "Case", "B", "D", "Output", "us median", "GB/s", "% of memcpy"], rows), ""]
    if cufm["gemm"]:
        rows = [[g["where"], f"{g['m']}x{g['n']}x{g['k']}", g["precision"], g["tflops"] if g["ok"] else g["reason"]]
                for g in cufm["gemm"]]
        L += ["## cuBLAS GEMM ceilings", "", table(["Shape", "MxNxK", "Precision", "TFLOP/s"], rows), ""]

    with open(md_path, "w") as f:
        f.write("\n".join(L))
    with open(os.path.join(args.out_dir, stem + ".json"), "w") as f:
        json.dump(dict(cufm=cufm, cufm_extra=extra, cufm_machine=machine, torch=torch_j, commit=commit_line()), f,
                  indent=1)
    print("\n".join(L))
    print(f"wrote {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
