"""What the Python benchmarks share: the machine line of their tables (the CPU's model name and the
instruction sets that decide its GEMM kernels), their alternating timing rounds, the PyTorch
velocity MLP and the writing of a table."""

import json
import platform
import sys
import time


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
        return f"{name} ({', '.join(isa)})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def alternate(rows, rounds):
    """Runs each row's cuFM and flow_matching callables in turn, `rounds` times over, so that both see
    the same machine state. rows: [(name, run_cufm, run_flow_matching)]. Returns (seconds, values):
    seconds[(name, who)] the list of each round's wall time, values[(name, who)] the last result."""
    seconds = {(name, who): [] for name, _, _ in rows for who in ("cufm", "flow_matching")}
    values = {}
    for r in range(rounds):
        for name, run_cu, run_fm in rows:
            for who, fn in (("cufm", run_cu), ("flow_matching", run_fm)):
                t0 = time.perf_counter()
                values[(name, who)] = fn()
                seconds[(name, who)].append(time.perf_counter() - t0)
                print(f"round {r + 1}: {name}, {who}: {seconds[(name, who)][-1]:.2f} s", file=sys.stderr)
    return seconds, values


def silu_mlp(dims):
    """PyTorch's version of a cuFM MLP: Linear layers over dims with SiLU between them."""
    import torch.nn as nn

    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def emit(text, out=None, json_path=None, result=None):
    """Prints a benchmark's markdown, and writes it to `out` and `result` as JSON to `json_path`."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
