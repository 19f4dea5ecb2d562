#!/usr/bin/env bash
# Runs every CPU benchmark on this machine and writes bench/results/<date>-<machine>.md (+ .json):
# cuFM's CPU backend (cufm_bench_train, cufm_bench_sample) and the PyTorch baseline (eager, and
# torch.compile for R1), all with threads = nproc, then bench/compare.py merges them; then
# bench/contention.sh's rows (R1 and R2 with one core kept busy by another process).
#
#   bench/run-cpu.sh [BUILD_DIR] [--smoke]
#
# BUILD_DIR (default build-bench) is configured if needed and the two bench targets (re)built.
# Needs: python3 with torch (pip install torch). Takes about 25 minutes on 2 cores (the R1 quality
# rows train 2000 steps, in fp32 and bf16); run it on a quiet machine. --smoke: tiny sizes (a minute
# or two), results go to a temporary folder only.
# THREADS=N overrides the thread count.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-bench}"
smoke=()
if [[ "${2:-}" == "--smoke" || "${1:-}" == "--smoke" ]]; then
  smoke=(--smoke)
  [[ "${1:-}" == "--smoke" ]] && build="$root/build-bench"
fi
threads="${THREADS:-$(nproc)}"

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCUFM_BUILD_BENCH=ON
fi
cmake --build "$build" --target cufm_bench_train cufm_bench_sample cufm_bench_gemm cufm_cli -j"$threads"
# bf16 rows (R1, training and sampling, beside PyTorch's autocast) where the CPU backend runs bf16.
bf16=()
bf16_torch=()
if "$build/cufm" info | grep -q '; bf16: oneDNN'; then
  bf16=(cpu-bf16)
  bf16_torch=(--cpu-bf16 R1)
else
  echo "no cpu-bf16 rows: $("$build/cufm" info | grep -o 'bf16: no ([^)]*)')" >&2
fi
# R1's sample quality after 2000 steps (fp32, and bf16 beside it where it runs); 200 with --smoke.
quality=(--quality-steps 2000)
[[ ${#smoke[@]} -gt 0 ]] && quality=()

work="$(mktemp -d)"
out_dir="$root/bench/results"
[[ ${#smoke[@]} -gt 0 ]] && out_dir="$work"
echo "cuFM benchmarks: $threads threads, raw results in $work" >&2

"$build/bench/cufm_bench_train" --backends cpu --threads "$threads" "${smoke[@]}" "${quality[@]}" \
  --json "$work/cufm_train.json" --out "$work/cufm_train.md"
"$build/bench/cufm_bench_sample" --backends cpu --threads "$threads" "${smoke[@]}" \
  --json "$work/cufm_sample.json" --out "$work/cufm_sample.md"
bf16_json=()
if [[ ${#bf16[@]} -gt 0 ]]; then
  "$build/bench/cufm_bench_train" --backends cpu-bf16 --workloads R1 --threads "$threads" "${smoke[@]}" \
    "${quality[@]}" --json "$work/cufm_train_bf16.json" --out "$work/cufm_train_bf16.md"
  "$build/bench/cufm_bench_sample" --backends cpu-bf16 --workloads R1 --threads "$threads" "${smoke[@]}" \
    --json "$work/cufm_sample_bf16.json" --out "$work/cufm_sample_bf16.md"
  bf16_json=("$work/cufm_train_bf16.json" "$work/cufm_sample_bf16.json")
fi
# This workplace pins OpenBLAS to its Haswell kernels (OPENBLAS_CORETYPE) because older builds
# misbehave on some processors; the test suite passes with the auto-detected kernels too. R1 is
# measured once more with OpenBLAS's own choice, labelled as such.
if [[ -n "${OPENBLAS_CORETYPE:-}" ]]; then
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$build/bench/cufm_bench_train" --backends cpu --workloads R1 \
    --threads "$threads" "${smoke[@]}" --json "$work/cufm_train_auto.json" --out "$work/cufm_train_auto.md"
  python3 - "$work/cufm_train_auto.json" "$OPENBLAS_CORETYPE" <<'PY'
import json, sys
path, pinned = sys.argv[1], sys.argv[2]
j = json.load(open(path))
label = "cpu (OpenBLAS auto kernels; pinned run: " + pinned + ")"
for section in ("train", "sample", "ceilings", "quality", "skipped"):
    for r in j.get(section, []):
        if r.get("backend") == "cpu":
            r["backend"], r["torch_backend"] = label, "cpu"
j["quality"] = []
json.dump(j, open(path, "w"))
PY
  auto_json=("$work/cufm_train_auto.json")
else
  auto_json=()
fi
python3 "$root/bench/torch_baseline.py" --device cpu --threads "$threads" "${smoke[@]}" "${bf16_torch[@]}" \
  --json "$work/torch.json" --out "$work/torch.md"
machine="$(cd "$root/bench" && python3 -c 'from bench_machine import cpu_model; print(cpu_model())' |
  tr 'A-Z' 'a-z' | sed -E 's/\((r|tm)\)//g; s/ (processor|cpu) .*$| (processor|cpu)$//; s/\(.*//; s/[^a-z0-9]+/-/g; s/-+$//')"
python3 "$root/bench/compare.py" --machine "${machine}-${threads}cpu" \
  --cufm "$work/cufm_train.json" "$work/cufm_sample.json" "${auto_json[@]}" "${bf16_json[@]}" \
  --torch "$work/torch.json" --out-dir "$out_dir"
# The GEMM providers' tables and the contention rows (R1 and R2 with one core kept busy).
if [[ ${#smoke[@]} -eq 0 ]]; then
  "$build/bench/cufm_bench_gemm" --threads "$threads" --repeats 20 \
    --out "$out_dir/$(date -u +%Y-%m-%d)-${machine}-${threads}cpu-gemm-providers.md"
  # The candidates cuFM does not link, beside the two it does (MKL from `pip install mkl`, BLIS from
  # `apt-get install libblis-dev`; one not installed is reported as such).
  (cd "$root/bench" && python3 gemm_candidates.py --threads "$threads" \
    --out "$out_dir/$(date -u +%Y-%m-%d)-${machine}-${threads}cpu-gemm-candidates.md")
  BENCH_TRAIN="$build/bench/cufm_bench_train" bash "$root/bench/contention.sh" \
    "$out_dir/$(date -u +%Y-%m-%d)-${machine}-${threads}cpu-contention.md"
fi
