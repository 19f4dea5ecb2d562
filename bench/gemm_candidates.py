"""The sgemm candidates of issue 14's ceiling table, measured side by side on this machine: OpenBLAS
(what cuFM links by default), oneDNN (cuFM's provider for large products on AVX-512 CPUs), Intel MKL
(PyPI's `mkl`) and BLIS (Debian's libblis-dev), each through its C interface (ctypes), each in a
process of its own (MKL brings Intel's OpenMP runtime, the others GNU's), in alternating rounds.

  python bench/gemm_candidates.py [--threads 2] [--rounds 3] [--out FILE.md] [--json FILE.json]
  pip install mkl; apt-get install libblis-dev      # the two candidates cuFM does not link

A candidate whose library is not found is reported as such. GFLOP/s: 2 M N K / time, the median of
20 calls after 2 warm-up calls in each round, then the median over rounds.
"""

import argparse
import ctypes
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench_machine import cpu_model, emit

SHAPES = [  # (label, transA, transB, M, N, K): C [M, N] = op(A) op(B), row-major
    ("R1 forward (x W^T)", False, True, 4096, 512, 512),
    ("R1 input gradient (dz W)", False, False, 4096, 512, 512),
    ("R1 weight gradient (dz^T x)", True, False, 512, 512, 4096),
    ("R2 forward (width 64, 2^14)", False, True, 16384, 64, 64),
    ("R2 weight gradient", True, False, 64, 64, 16384),
    ("R5 forward", False, True, 4096, 256, 256),
]


def library(name):
    """The shared library to load for a candidate, or None."""
    if name == "openblas":
        paths = glob.glob("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
    elif name == "onednn":
        paths = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libdnnl.so*"))
    elif name == "mkl":
        paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    elif name == "blis":
        paths = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libblis.so*"))
    else:
        paths = []
    return paths[0] if paths else None


def measure(name, threads):
    """Runs in the child process: GFLOP/s per shape for one candidate."""
    lib = ctypes.CDLL(library(name), mode=ctypes.RTLD_GLOBAL)
    fp = ctypes.POINTER(ctypes.c_float)
    if name == "onednn":
        sgemm = lib.dnnl_sgemm
        sgemm.argtypes = [ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_float, fp, ctypes.c_int64, fp, ctypes.c_int64, ctypes.c_float, fp,
                          ctypes.c_int64]

        def call(ta, tb, M, N, K, a, lda, b, ldb, c, ldc):
            sgemm(b"T" if ta else b"N", b"T" if tb else b"N", M, N, K, 1.0, a, lda, b, ldb, 0.0, c, ldc)
    else:
        sgemm = lib.cblas_sgemm
        sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_float, fp, ctypes.c_int, fp, ctypes.c_int, ctypes.c_float, fp, ctypes.c_int]

        def call(ta, tb, M, N, K, a, lda, b, ldb, c, ldc):
            sgemm(101, 112 if ta else 111, 112 if tb else 111, M, N, K, 1.0, a, lda, b, ldb, 0.0, c, ldc)
    rows = {}
    rng = np.random.default_rng(0)
    for label, ta, tb, M, N, K in SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        c = np.zeros((M, N), dtype=np.float32)
        args = (ta, tb, M, N, K, a.ctypes.data_as(fp), a.shape[1], b.ctypes.data_as(fp), b.shape[1],
                c.ctypes.data_as(fp), N)
        for _ in range(2):
            call(*args)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            call(*args)
            times.append(time.perf_counter() - t0)
        rows[label] = 2.0 * M * N * K / statistics.median(times) / 1e9
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.threads)))
        return
    names = ["openblas", "onednn", "mkl", "blis"]
    missing = {n: "library not found" for n in names if library(n) is None}
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env["OMP_WAIT_POLICY"] = "passive"  # a child's idle threads must not spin into the next child's
    # OpenBLAS's runtime detection picks old kernels on some virtual CPUs; cuFM then names the newest
    # its CPU runs (host/cpu/cpu_blas.cpp): the same choice here, unless the caller set one.
    if not env.get("OPENBLAS_CORETYPE"):
        flags = cpu_model()
        env["OPENBLAS_CORETYPE"] = ("COOPERLAKE" if "avx512_bf16" in flags else "SKYLAKEX" if "avx512f" in flags
                                    else "HASWELL" if "avx2" in flags else "")
    results = {n: {label: [] for label, *_ in SHAPES} for n in names if n not in missing}
    for r in range(args.rounds):
        for n in results:
            out = subprocess.run([sys.executable, __file__, "--child", n, "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                missing[n] = "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
                continue
            for label, v in json.loads(out.stdout).items():
                results[n][label].append(v)
            print(f"round {r + 1}: {n} done", file=sys.stderr)
    results = {n: v for n, v in results.items() if n not in missing}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# sgemm candidates: {args.threads} threads", "",
             f"- Machine: {cpu_model()}; {os.cpu_count()} cores; {date}",
             "- Libraries: " + "; ".join(f"{n}: {library(n)}" for n in names if library(n))
             + f"; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or '(auto)'}",
             "- GFLOP/s: 2 M N K / time, median of 20 calls after 2 warm-up calls, median over "
             f"{args.rounds} alternating rounds, each candidate in its own process.", ""]
    for n, why in missing.items():
        lines.append(f"- {n}: not measured ({why})")
    header = "| Shape | M x N x K | " + " | ".join(f"{n} GFLOP/s" for n in results) + " |"
    lines += ["", header, "| --- | --- |" + " ---: |" * len(results)]
    table = {}
    for label, ta, tb, M, N, K in SHAPES:
        vals = {n: statistics.median(results[n][label]) for n in results if results[n][label]}
        table[label] = vals
        lines.append(f"| {label} | {M} x {N} x {K} | " + " | ".join(f"{vals.get(n, float('nan')):.0f}"
                                                                    for n in results) + " |")
    emit("\n".join(lines) + "\n", args.out, args.json,
         dict(date=date, cpu=cpu_model(), threads=args.threads, gflops=table, missing=missing))


if __name__ == "__main__":
    main()
