#!/usr/bin/env bash
# The CPU backend on a machine busy with other work: R1 and R2 (batch 2^14) training ms/step on
# all cores, quiet and with one core kept busy by another process (`yes`), with cuFM's bounded
# spinning (GOMP_SPINCOUNT=1000, what the cufm programs and the Python package set) and with GNU
# OpenMP's default (300,000 spins). Writes a markdown table to stdout (and to $1 when given).
#
#   bench/contention.sh [OUT.md]      (BENCH_TRAIN=path/to/cufm_bench_train, default build-bench's)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${BENCH_TRAIN:-$root/build-bench/bench/cufm_bench_train}"
threads="$(nproc)"
[[ -x "$bin" ]] || { echo "contention.sh: no $bin (build the cufm_bench_train target)" >&2; exit 1; }

# One row's median ms/step from the bench's markdown table (column 7: "median [min, max]").
row_ms() {  # row_ms <workload prefix> <env...>
  local prefix="$1"
  shift
  env "$@" "$bin" --backends cpu --threads "$threads" --workloads R1,R2 --steps 8 --warmup 2 --quality-steps 0 \
    2>/dev/null | awk -F'|' -v p="$prefix" '$2 ~ "^ "p" " {split($8, a, " "); print a[1]; exit}'
}

declare -A ms
for spin in 1000 300000; do
  for load in quiet busy; do
    busy_pid=""
    if [[ $load == busy ]]; then
      yes >/dev/null &
      busy_pid=$!
    fi
    ms[R1,$spin,$load]=$(row_ms "R1" GOMP_SPINCOUNT=$spin)
    ms[R2,$spin,$load]=$(row_ms "R2 w64-b2\\^14" GOMP_SPINCOUNT=$spin)
    [[ -n "$busy_pid" ]] && kill "$busy_pid"
  done
done

cpu="$(cd "$root/bench" && python3 -c 'from bench_machine import cpu_model; print(cpu_model())')"
{
  echo "# The CPU backend with one core busy ($threads threads; $(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- Machine: ${cpu}; another process (\`yes\`) keeps one core busy in the busy columns."
  echo "- ms/step: the median of 8 individually timed steps after 2 warm-up steps (cufm_bench_train)."
  echo
  echo "| Workload | Spin count | Quiet (ms/step) | One core busy (ms/step) | Slowdown |"
  echo "| --- | --- | ---: | ---: | ---: |"
  for w in R1 R2; do
    for spin in 1000 300000; do
      label="$spin (cuFM's programs)"
      [[ $spin == 300000 ]] && label="300000 (GNU OpenMP's default)"
      q="${ms[$w,$spin,quiet]}" b="${ms[$w,$spin,busy]}"
      echo "| $w$([[ $w == R2 ]] && echo ' (width 64, batch 2^14)') | $label | $q | $b | $(awk -v q="$q" -v b="$b" 'BEGIN {printf "%.1fx", b / q}') |"
    done
  done
} | tee "${1:-/dev/null}"
