"""What the Python benchmarks share: the machine line of their tables (the CPU's model name and the
instruction sets that decide its GEMM kernels), and their alternating timing rounds."""

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
