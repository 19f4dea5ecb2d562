"""The machine line of the Python benchmarks' tables: the CPU's model name and the instruction sets
that decide its GEMM kernels."""

import platform


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
