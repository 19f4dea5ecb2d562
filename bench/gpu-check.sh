#!/usr/bin/env bash
# One command for a GPU machine: build cuFM (Release, sm_90 unless CUFM_CUDA_ARCH says otherwise)
# in build-gpu/, run the GPU tests, compute-sanitizer memcheck and racecheck on small problems,
# every benchmark binary briefly, and write bench/results/<date>-<device>.md (copied to $OUT when
# set). Never stops at a failure: each step is recorded, and the script exits 1 at the end if any
# step failed or was cut for time, 2 if none failed but one could not run on this machine (no
# compute-sanitizer, or one that refuses the device, as under gVisor). Budget: 8 minutes in all
# (CUFM_CHECK_BUDGET_S).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build-gpu"
ARCH="${CUFM_CUDA_ARCH:-90}"
BUDGET_S="${CUFM_CHECK_BUDGET_S:-470}"   # leaves ~10 s of the 8 minutes for the report
JOBS=$(nproc 2>/dev/null || echo 8)
START=$(date +%s)
LOGS="$ROOT/build-gpu/gpu-check-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS" "$ROOT/bench/results"

export PATH="/usr/local/cuda/bin:$PATH"
export CUFM_EXPECT_GPU=1   # a GPU test that finds no device fails here instead of skipping
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
DEVICE=${DEVICE:-unknown-gpu}
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
SLUG=$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
DATE=$(date -u +%Y-%m-%d)
REPORT="$ROOT/bench/results/$DATE-$SLUG.md"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
DIRTY=""
if git -C "$ROOT" status --porcelain 2>/dev/null | grep -q .; then DIRTY=" (with local changes)"; fi

FAILED=0
INCOMPLETE=0   # a step that could not run here (tool missing or refusing this machine): not a pass
ROWS=()
DETAILS=()

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# run_step <name> <max seconds> <command...>: runs with a timeout, logs, records the outcome.
run_step() {
  local name="$1" cap="$2"
  shift 2
  local left
  left=$(remaining)
  local log
  log="$LOGS/$(echo "$name" | tr -cs 'a-zA-Z0-9' '_').log"
  if [ "$left" -lt 15 ]; then
    ROWS+=("| $name | SKIPPED (time budget spent) | 0 s |")
    FAILED=1
    return
  fi
  local limit=$((cap < left ? cap : left))
  local t0
  t0=$(date +%s)
  echo "==> $name (limit ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local status="pass"
  local tool="$1"   # the program run, past an `env VAR=...` prefix
  if [ "$tool" = env ]; then
    for a in "${@:2}"; do case "$a" in *=*) ;; *) tool="$a"; break ;; esac; done
  fi
  tool=$(basename "$tool")
  if [ $rc -eq 127 ]; then
    status="NOT RUN (command not found: $tool)"
    INCOMPLETE=1
  elif [ $rc -ne 0 ] && [ "$tool" = compute-sanitizer ] && grep -q "Device not supported" "$log"; then
    status="NOT RUN (compute-sanitizer does not support this device or runtime)"
    INCOMPLETE=1
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status="FAIL (timed out after ${limit} s)"
    FAILED=1
  elif [ $rc -ne 0 ]; then
    status="FAIL (exit $rc)"
    FAILED=1
  fi
  echo "    $status in ${dt} s"
  ROWS+=("| $name | $status | ${dt} s |")
  local summary
  if [ "$status" != pass ]; then
    summary=$(tail -n 25 "$log")
  else
    summary=$(grep -E 'PASSED|FAILED|SKIPPED \]|tests passed|tests failed|ERROR SUMMARY|error|Error|warning|Total Test time|median|[0-9] ms|GB/s|TFLOP' "$log" | tail -n 25)
  fi
  DETAILS+=("### $name: $status" "" '```' "$summary" '```' "")
}

# ---- configure and build, or use the binaries bench/gpu-pack.sh built elsewhere -------------
PACK="$ROOT/gpu-pack"
if [ -f "$PACK/.prebuilt" ] && [ -z "${CUFM_GPU_REBUILD:-}" ]; then
  # A GPU machine without the build's dependencies (no package registry): run the packed binaries.
  BUILD="$PACK"
  export LD_LIBRARY_PATH="$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  PACKED_AT=$(cat "$PACK/.prebuilt")
  ROWS+=("| build | prebuilt by bench/gpu-pack.sh at ${PACKED_AT:0:12} (sm_$ARCH assumed) | 0 s |")
  if [ "$PACKED_AT" != "$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo none)" ]; then
    ROWS+=("| build | note: the checkout's commit is $COMMIT (no git there: unknown) | 0 s |")
  fi
  for t in "$BUILD"/tests/gpu/test_gpu_*; do
    run_step "gpu tests $(basename "$t")" 120 "$t"
  done
else
  BENCH=OFF
  [ -f "$ROOT/bench/CMakeLists.txt" ] && BENCH=ON
  run_step "configure (Release, sm_$ARCH)" 90 \
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DCUFM_ENABLE_CUDA=ON -DCUFM_BUILD_TESTS=ON -DCUFM_BUILD_BENCH=$BENCH -DCUFM_BUILD_CLI=OFF
  run_step "build" 240 cmake --build "$BUILD" -j "$JOBS"
  run_step "ctest -L gpu" 150 ctest --test-dir "$BUILD" -L gpu --output-on-failure -j 2
fi

# ---- compute-sanitizer on small problems ------------------------------------------------
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
GPU_TESTS=()
for t in test_gpu_kernels test_gpu_mlp test_gpu_training test_gpu_sampling; do
  [ -x "$BUILD/tests/gpu/$t" ] && GPU_TESTS+=("$BUILD/tests/gpu/$t")
done
# A subset per binary keeps cuBLASLt's many kernels from dominating the sanitizer's time.
filter_for() {
  case "$(basename "$1")" in
    test_gpu_mlp) echo 'Cases/LtMlpTest.ForwardBackwardMatchCpu/fp32_*_64_40:Cases/LtMlpTest.ForwardBackwardMatchCpu/bf16_silu_64_40' ;;
    test_gpu_training) echo 'Cases/GpuVsCpu.LossesAndWeightsAgree/fp32_silu_*:Precisions/Determinism.GraphEqualsEagerAndRunsRepeat/fp32:GpuTraining.OversizeDatasetThrowsCufmError' ;;
    test_gpu_sampling) echo 'Solvers/GpuSampling.MatchesCpu/rk4_guided:Solvers/GpuSampling.MatchesCpu/dopri5_guided' ;;
    *) echo '*' ;;
  esac
}
if [ ${#GPU_TESTS[@]} -eq 0 ]; then
  ROWS+=("| compute-sanitizer | FAIL (no GPU test binaries built) | 0 s |")
  FAILED=1
else
  for b in "${GPU_TESTS[@]}"; do
    run_step "memcheck $(basename "$b")" 45 env CUFM_TEST_SMALL=1 "$SAN" --tool memcheck --error-exitcode 1 \
      "$b" --gtest_filter="$(filter_for "$b")"
  done
  # racecheck: shared-memory hazards, which only cuFM's own reduction kernels have.
  run_step "racecheck test_gpu_kernels" 45 env CUFM_TEST_SMALL=1 "$SAN" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/gpu/test_gpu_kernels"
fi

# ---- benchmarks (written separately; run whatever exists, briefly) -------------------------
shopt -s nullglob
BENCHES=("$BUILD"/bench/cufm_bench_*)
if [ ${#BENCHES[@]} -eq 0 ]; then
  ROWS+=("| benchmarks | none built (bench/ absent or not yet written) | 0 s |")
else
  # GPU rows only and no long quality run: the CPU rows belong to bench/run-cpu.sh.
  for b in "${BENCHES[@]}"; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    case "$name" in
      cufm_bench_kernels) args=(--repeats 20) ;;
      cufm_bench_train) args=(--backends "cuda-fp32,cuda-tf32,cuda-bf16" --quality-steps 0) ;;
      *) args=(--backends "cuda-fp32,cuda-tf32,cuda-bf16") ;;
    esac
    run_step "bench $name" 45 "$b" "${args[@]}" --json "$LOGS/$name.json" --out "$LOGS/$name.md"
  done
fi

# ---- the report -----------------------------------------------------------------------------
TOTAL=$(($(date +%s) - START))
{
  echo "# GPU check $DATE on $DEVICE"
  echo
  echo "- commit: \`$COMMIT\`$DIRTY"
  echo "- device: $DEVICE (driver ${DRIVER:-?}), built for sm_$ARCH"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -n1)"
  if [ $FAILED -ne 0 ]; then
    RESULT=FAIL
  elif [ $INCOMPLETE -ne 0 ]; then
    RESULT="INCOMPLETE (every step that ran passed; some could not run here: see NOT RUN)"
  else
    RESULT=PASS
  fi
  echo "- total: ${TOTAL} s; result: $RESULT"
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Output summaries"
  echo
  printf '%s\n' "${DETAILS[@]}"
  for md in "$LOGS"/cufm_bench_*.md; do
    [ -f "$md" ] || continue
    echo
    sed 's/^## /## Benchmark: /' "$md"
  done
  echo "Full logs: \`build-gpu/gpu-check-logs/\`."
} >"$REPORT"
echo "report: $REPORT"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$REPORT" "$OUT/"
  mkdir -p "$OUT/gpu-check-logs"
  cp "$LOGS"/*.log "$LOGS"/*.json "$LOGS"/*.md "$OUT/gpu-check-logs/" 2>/dev/null || true
fi
# 0: every step passed; 1: a step failed; 2: none failed but some could not run here.
if [ $FAILED -ne 0 ]; then exit 1; fi
if [ $INCOMPLETE -ne 0 ]; then exit 2; fi
exit 0
