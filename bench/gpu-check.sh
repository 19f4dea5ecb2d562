#!/usr/bin/env bash
# One command for a GPU machine: run cuFM's GPU tests (with cuBLASLt's fused epilogues and without
# them), compute-sanitizer memcheck and racecheck on small problems and every benchmark binary
# briefly, and write bench/results/<date>-<device>-gpu-check.md (copied to $OUT when set).
#
# The binaries come from bench/gpu-pack.sh's gpu-pack.tar.xz when it is there (built elsewhere: a GPU
# machine's image may have nvcc, CMake and PyTorch but none of the build's -dev packages), else
# they are built here in build-gpu/. Before anything runs, every binary must load: the CUDA
# libraries are looked for in the toolkit's usual folders and in Python's nvidia-* wheels, and a
# library still missing fails the check there and then, naming it.
#
#   bench/gpu-check.sh               the whole check
#   bench/gpu-check.sh --preflight   only find the libraries and check that every binary loads
#
# Never stops at a failure: each step is recorded. Exit 0: every step passed; 1: a step failed, a
# binary could not load or a step was cut for time; 2: none failed but one could not run on this
# machine (compute-sanitizer missing, or refusing the device as under gVisor). Budget: 8 minutes
# in all (CUFM_CHECK_BUDGET_S).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFLIGHT=0
[ "${1:-}" = "--preflight" ] && PREFLIGHT=1
ARCH="${CUFM_CUDA_ARCH:-90}"
BUDGET_S="${CUFM_CHECK_BUDGET_S:-470}"   # leaves ~10 s of the 8 minutes for the report
JOBS=$(nproc 2>/dev/null || echo 8)
START=$(date +%s)
PACK_ARCHIVE="${CUFM_GPU_PACK_ARCHIVE:-$ROOT/gpu-pack.tar.xz}"
PACK="${CUFM_GPU_PACK:-$ROOT/gpu-pack}"
LOGS="${CUFM_GPU_CHECK_LOGS:-$ROOT/build-gpu/gpu-check-logs}"
RESULTS="${CUFM_GPU_CHECK_RESULTS:-$ROOT/bench/results}"
rm -rf "$LOGS"
mkdir -p "$LOGS"

export PATH="/usr/local/cuda/bin:$PATH"
export CUFM_EXPECT_GPU=1   # a GPU test that finds no device fails here instead of skipping

FAILED=0
INCOMPLETE=0   # a step that could not run here (compute-sanitizer missing or refusing): not a pass
ROWS=()
DETAILS=()

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }
row() { ROWS+=("| $1 | $2 | ${3:-0} s |"); echo "    $1: $2"; }

# ---- the binaries: a pack, or a build here -------------------------------------------------
if [ -f "$PACK_ARCHIVE" ] && [ -z "${CUFM_GPU_REBUILD:-}" ]; then
  rm -rf "$PACK"
  mkdir -p "$(dirname "$PACK")"
  unpack_dir=$(mktemp -d "$(dirname "$PACK")/.gpu-pack.XXXXXX")
  if tar -C "$unpack_dir" -xJf "$PACK_ARCHIVE" 2>"$LOGS/unpack.log" ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$PACK_ARCHIVE" "$unpack_dir" 2>>"$LOGS/unpack.log"; then
    mv "$unpack_dir/gpu-pack" "$PACK"
  else
    row "unpack $(basename "$PACK_ARCHIVE")" "FAIL ($(tail -n1 "$LOGS/unpack.log"))"
    FAILED=1
  fi
  rm -rf "$unpack_dir"
fi
if [ -f "$PACK/.prebuilt" ] && [ -z "${CUFM_GPU_REBUILD:-}" ]; then
  BUILD="$PACK"
  PACKED_AT=$(cat "$PACK/.prebuilt")
  ARCH=$(cat "$PACK/.arch" 2>/dev/null || echo "$ARCH")
  COMMIT=${PACKED_AT:0:12}
  SOURCE="prebuilt by bench/gpu-pack.sh at ${PACKED_AT:0:12} for sm_$ARCH"
  export LD_LIBRARY_PATH="$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  BUILD="$ROOT/build-gpu"
  COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo "unknown")
  SOURCE="built here (Release, sm_$ARCH)"
fi
DIRTY=""
# Only a build here comes from this checkout; a pack's binaries are its commit's, whatever the copy
# of the checkout on this machine looks like.
if [ "$BUILD" != "$PACK" ] && git -C "$ROOT" status --porcelain 2>/dev/null | grep -v 'gpu-pack' | grep -q .; then
  DIRTY=" (the checkout has local changes)"
fi

# run_step <name> <max seconds> <command...>: runs with a timeout, logs, records the outcome. A
# command that cannot be started (exit 127) is a FAIL, except compute-sanitizer, whose absence
# only means this machine cannot run that step.
run_step() {
  local name="$1" cap="$2"
  shift 2
  local left log
  left=$(remaining)
  log="$LOGS/$(echo "$name" | tr -cs 'a-zA-Z0-9' '_').log"
  if [ "$left" -lt 15 ]; then
    row "$name" "FAIL (not run: the time budget is spent)"
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
  if [ $rc -eq 127 ] && [ "$tool" = compute-sanitizer ]; then
    status="NOT RUN (compute-sanitizer is not installed here)"
    INCOMPLETE=1
  elif [ $rc -ne 0 ] && [ "$tool" = compute-sanitizer ] && grep -q "Device not supported" "$log"; then
    status="NOT RUN (compute-sanitizer does not support this device or runtime)"
    INCOMPLETE=1
  elif [ $rc -eq 127 ]; then
    status="FAIL (exit 127: $tool could not be started; a missing shared library? $(grep -m1 -o 'error while loading shared libraries: [^ ]*' "$log"))"
    FAILED=1
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status="FAIL (timed out after ${limit} s)"
    FAILED=1
  elif [ $rc -ne 0 ]; then
    status="FAIL (exit $rc)"
    FAILED=1
  fi
  ROWS+=("| $name | $status | ${dt} s |")
  echo "    $status in ${dt} s"
  local summary
  if [ "$status" != pass ]; then
    summary=$(tail -n 25 "$log")
  else
    summary=$(grep -E 'PASSED|FAILED|SKIPPED \]|tests passed|tests failed|ERROR SUMMARY|error|Error|warning|Total Test time|median|[0-9] ms|GB/s|TFLOP' "$log" | tail -n 25)
  fi
  DETAILS+=("### $name: $status" "" '```' "$summary" '```' "")
}

# ---- shared libraries ---------------------------------------------------------------------
# Where a GPU machine keeps the CUDA libraries: the toolkit (lib64 in a standard install, lib in
# some images), the system folders, and PyTorch's nvidia-* wheels (nvidia/cu13/lib,
# nvidia/cublas/lib, ...) in every site-packages folder and on PYTHONPATH.
library_dirs() {
  local d
  for d in ${CUDA_HOME:+"$CUDA_HOME/lib64" "$CUDA_HOME/lib"} ${CUDA_PATH:+"$CUDA_PATH/lib64"} \
    /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -d "$d" ] && echo "$d"
  done
  if command -v python3 >/dev/null; then
    python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = list(sys.path)
try:
    roots += site.getsitepackages() + [site.getusersitepackages()]
except Exception:
    pass
seen = set()
for root in roots:
    for d in sorted(glob.glob(os.path.join(root or ".", "nvidia", "*", "lib"))):
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            print(d)
PY
  fi
}

# The libraries `ldd` cannot find for a binary (names only).
missing_libs() {
  ldd "$1" 2>&1 | awk '/=> not found/ {print $1} /version .* not found/ {print $0}' | sort -u
}

# For every binary: find what it lacks in library_dirs() and add that folder to LD_LIBRARY_PATH;
# whatever is still missing fails the binary's load row. Sets LOAD_OK[binary]=1 for those that load.
declare -A LOAD_OK
preflight() {
  local dirs=() bin lib d found
  mapfile -t dirs < <(library_dirs)
  for bin in "$@"; do
    for lib in $(missing_libs "$bin" | grep -v ' '); do
      found=""
      for d in "${dirs[@]}"; do
        if [ -e "$d/$lib" ]; then
          found="$d"
          break
        fi
      done
      if [ -n "$found" ] && [[ ":${LD_LIBRARY_PATH:-}:" != *":$found:"* ]]; then
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$found"
        row "library $lib" "found in $found"
      fi
    done
  done
  for bin in "$@"; do
    local missing
    missing=$(missing_libs "$bin" | tr '\n' ' ' | sed 's/ *$//')
    if [ -n "$missing" ]; then
      row "load $(basename "$bin")" "FAIL (cannot load: $missing not found; looked in LD_LIBRARY_PATH, the CUDA toolkit's folders and Python's nvidia-* wheels)"
      FAILED=1
    else
      LOAD_OK["$bin"]=1
    fi
  done
}

# ---- configure and build, unless a pack is here -------------------------------------------
if [ "$BUILD" = "$PACK" ]; then
  row "build" "$SOURCE"
else
  if [ $PREFLIGHT -eq 1 ]; then
    echo "gpu-check --preflight: no pack at $PACK_ARCHIVE or $PACK; build first or run bench/gpu-pack.sh" >&2
    exit 1
  fi
  run_step "configure (Release, sm_$ARCH)" 90 \
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DCUFM_ENABLE_CUDA=ON -DCUFM_BUILD_TESTS=ON -DCUFM_BUILD_BENCH=ON -DCUFM_BUILD_CLI=OFF
  run_step "build" 300 cmake --build "$BUILD" -j "$JOBS"
fi

shopt -s nullglob
TESTS=("$BUILD"/tests/gpu/test_gpu_*)
BENCHES=("$BUILD"/bench/cufm_bench_*)
BINARIES=("${TESTS[@]}" "${BENCHES[@]}")
if [ ${#TESTS[@]} -eq 0 ]; then
  row "gpu test binaries" "FAIL (none in $BUILD/tests/gpu)"
  FAILED=1
fi
preflight "${BINARIES[@]}"
if [ $PREFLIGHT -eq 1 ]; then
  printf '%s\n' "${ROWS[@]}"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  if [ $FAILED -ne 0 ]; then
    echo "gpu-check --preflight: FAIL (a binary cannot load)"
    exit 1
  fi
  echo "gpu-check --preflight: every binary loads"
  exit 0
fi

# Every gpu test in the source must have its binary here: a pack or build without one would
# otherwise pass without running it.
for src in "$ROOT"/tests/gpu/test_gpu_*.cpp; do
  name=$(basename "$src" .cpp)
  if [ ! -e "$BUILD/tests/gpu/$name" ]; then
    row "gpu tests $name" "FAIL (no binary in $SOURCE)"
    FAILED=1
  fi
done

DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
DEVICE=${DEVICE:-unknown-gpu}
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
SLUG=$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
DATE=$(date -u +%Y-%m-%d)
mkdir -p "$RESULTS"
REPORT="$RESULTS/$DATE-$SLUG-gpu-check.md"

# ---- the GPU tests, with cuBLASLt's epilogues and without ---------------------------------
for t in "${TESTS[@]}"; do
  [ -n "${LOAD_OK[$t]:-}" ] || continue
  name=$(basename "$t")
  run_step "gpu tests $name" 150 "$t"
  case "$name" in
    test_gpu_training | test_gpu_sampling)
      # The unfused path (plain GEMMs, cuFM's bias_add, activation kernels and column_sum);
      # test_gpu_mlp runs both plans in its own cases. The fused sampler's tests set their own path.
      # Sampling on the layered path there: the fused sampler would take the fixed-step cases.
      # Training likewise: fp32 models up to 128 wide take the fused step by default, so the layered
      # one runs here, and once more with the epilogues on.
      run_step "gpu tests $name, CUFM_LT_EPILOGUES=unfused" 150 env CUFM_LT_EPILOGUES=unfused CUFM_GPU_MLP=layered \
        "$t" --gtest_filter='-GpuFusedSampler.*:GpuFusedTrain.*'
      if [ "$name" = test_gpu_training ]; then
        run_step "gpu tests $name, CUFM_GPU_MLP=layered" 90 env CUFM_GPU_MLP=layered "$t" \
          --gtest_filter='Cases/GpuVsCpu.*:Precisions/Determinism.*:GpuTrainBatch.*'
      fi ;;
    test_gpu_likelihood)
      # log_prob end to end on the layered path too (the fused flow takes the fixed steps by default).
      run_step "gpu tests $name, CUFM_GPU_MLP=layered" 90 env CUFM_GPU_MLP=layered "$t" \
        --gtest_filter='GpuLogProb.*' ;;
  esac
done

# ---- compute-sanitizer on small problems ------------------------------------------------
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# A subset per binary keeps cuBLASLt's many kernels from dominating the sanitizer's time.
filter_for() {
  case "$(basename "$1")" in
    test_gpu_mlp) echo 'Cases/LtMlpTest.ForwardBackwardMatchCpu/fp32_*_64_40:Cases/LtMlpTest.ForwardBackwardMatchCpu/unfused_fp32_*_64_40:Cases/LtMlpTest.ForwardBackwardMatchCpu/bf16_silu_64_40' ;;
    test_gpu_training) echo 'Cases/GpuVsCpu.LossesAndWeightsAgree/fp32_silu_*:Precisions/Determinism.GraphEqualsEagerAndRunsRepeat/fp32:GpuTraining.OversizeDatasetThrowsCufmError:GpuFusedTrain.KernelMatchesItsTwin' ;;
    test_gpu_sampling) echo 'Solvers/GpuSampling.MatchesCpu/rk4_guided:Solvers/GpuSampling.MatchesCpu/dopri5_guided:GpuFusedSampler.ChoiceIsAutomaticVisibleAndOverridable' ;;
    test_gpu_likelihood) echo 'Cases/GpuDivergence.MatchesTheCpu/*:GpuDivergenceFlow.*:GpuFusedDivergence.ChoiceIsAutomaticVisibleAndOverridable' ;;
    *) echo '*' ;;
  esac
}
for b in "${TESTS[@]}"; do
  [ -n "${LOAD_OK[$b]:-}" ] || continue
  run_step "memcheck $(basename "$b")" 45 env CUFM_TEST_SMALL=1 "$SAN" --tool memcheck --error-exitcode 1 \
    "$b" --gtest_filter="$(filter_for "$b")"
done
# racecheck: shared-memory hazards, which only cuFM's own kernels have (the reductions here).
if [ -n "${LOAD_OK[$BUILD/tests/gpu/test_gpu_kernels]:-}" ]; then
  run_step "racecheck test_gpu_kernels" 45 env CUFM_TEST_SMALL=1 "$SAN" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/gpu/test_gpu_kernels"
fi
# ... and the fused sampler's block program, whose phases share their tile's memory (sampling, and
# log-likelihoods with the divergence's tangents).
if [ -n "${LOAD_OK[$BUILD/tests/gpu/test_gpu_likelihood]:-}" ]; then
  run_step "racecheck the fused flow" 60 env CUFM_TEST_SMALL=1 "$SAN" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/gpu/test_gpu_likelihood" --gtest_filter='GpuFusedDivergence.ChoiceIsAutomaticVisibleAndOverridable'
fi
# ... and the fused training step's (forward, loss, backward; 1 to 8 layers, ragged tiles).
if [ -n "${LOAD_OK[$BUILD/tests/gpu/test_gpu_training]:-}" ]; then
  run_step "racecheck the fused training step" 60 env CUFM_TEST_SMALL=1 "$SAN" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/gpu/test_gpu_training" --gtest_filter='GpuFusedTrain.KernelMatchesItsTwin'
fi
if [ -n "${LOAD_OK[$BUILD/tests/gpu/test_gpu_sampling]:-}" ]; then  # fp32 and tf32 (the tensor cores)
  run_step "racecheck the fused sampler" 60 env CUFM_TEST_SMALL=1 "$SAN" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/gpu/test_gpu_sampling" --gtest_filter='GpuFusedSampler.ChoiceIsAutomaticVisibleAndOverridable'
fi

# ---- benchmarks, briefly: GPU rows only (the CPU rows belong to bench/run-cpu.sh) -----------
if [ ${#BENCHES[@]} -eq 0 ]; then
  row "benchmarks" "FAIL (none in $BUILD/bench)"
  FAILED=1
fi
for b in "${BENCHES[@]}"; do
  [ -n "${LOAD_OK[$b]:-}" ] || continue
  name=$(basename "$b")
  case "$name" in
    cufm_bench_kernels) args=(--repeats 20) ;;
    cufm_bench_train) args=(--backends "cuda-fp32,cuda-tf32,cuda-bf16" --quality-steps 0) ;;
    # Three precisions of sampling (R1, R4, R7) and fp32 log-likelihoods (R5, R7): 4 s a row at most.
    cufm_bench_sample) args=(--backends "cuda-fp32,cuda-tf32,cuda-bf16" --budget 4) ;;
    *) args=(--backends "cuda-fp32,cuda-tf32,cuda-bf16") ;;
  esac
  cap=45
  [ "$name" = cufm_bench_train ] && cap=75  # its narrow rows run twice: fused, then layered
  run_step "bench $name" "$cap" "$b" "${args[@]}" --json "$LOGS/$name.json" --out "$LOGS/$name.md"
done

# ---- the report -----------------------------------------------------------------------------
TOTAL=$(($(date +%s) - START))
{
  echo "# GPU check $DATE on $DEVICE"
  echo
  echo "- commit: \`$COMMIT\`$DIRTY"
  echo "- binaries: $SOURCE"
  echo "- device: $DEVICE (driver ${DRIVER:-?})"
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
  echo "Full logs: \`$LOGS\`."
} >"$REPORT"
echo "report: $REPORT ($RESULT)"
if [ -n "${OUT:-}" ]; then
  # Two files: the report and every log in one archive.
  mkdir -p "$OUT"
  cp "$REPORT" "$OUT/"
  tar -C "$(dirname "$LOGS")" -czf "$OUT/gpu-check-logs.tar.gz" "$(basename "$LOGS")" 2>/dev/null || true
fi
if [ $FAILED -ne 0 ]; then exit 1; fi
if [ $INCOMPLETE -ne 0 ]; then exit 2; fi
exit 0
