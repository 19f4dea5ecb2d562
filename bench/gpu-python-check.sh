#!/usr/bin/env bash
# The Python package on a GPU machine, with that machine's own python3: the GPU image holds PyTorch,
# nanobind, scikit-build-core, CMake, ninja, pytest and nvcc, but none of Debian's -dev packages and
# no network. Run it after bench/gpu-check.sh, when the device's time allows (the build takes a few
# minutes on 16 cores):
#   1. the library search and the pack of bench/gpu-check.sh --preflight (it unpacks gpu-pack.tar.xz);
#   2. `pip install --no-build-isolation --no-index` of this checkout into a folder of its own, CUDA
#      for the pack's architecture, with the headers and libraries gpu-pack.sh carried in pydeps/
#      (cblas.h and OpenBLAS, nlohmann/json) and without oneDNN;
#   3. pytest tests/python against the pack's cufm binary: cufm.torch on CUDA tensors and
#      VelocityField on CUDA arrays among the rest.
# Writes bench/results/<date>-<device>-python-check.md (copied to $OUT when set). Exit 0: built and
# every test passed; 1: otherwise. Budget: CUFM_PYTHON_CHECK_BUDGET_S (default 420 s) in all.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACK="${CUFM_GPU_PACK:-$ROOT/gpu-pack}"
BUDGET_S="${CUFM_PYTHON_CHECK_BUDGET_S:-420}"
WORK="${CUFM_PYTHON_CHECK_WORK:-/tmp/cufm-python-check}"
RESULTS="${CUFM_GPU_CHECK_RESULTS:-$ROOT/bench/results}"
START=$(date +%s)
remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }
mkdir -p "$WORK" "$RESULTS"
ROWS=()
FAILED=0
row() { ROWS+=("| $1 | $2 | $3 s |"); echo "    $1: $2"; }

# 1. The libraries (and the pack, unpacked).
t0=$(date +%s)
bash "$ROOT/bench/gpu-check.sh" --preflight >"$WORK/preflight.log" 2>&1
pre_rc=$?
LIBS=$(sed -n 's/^LD_LIBRARY_PATH=//p' "$WORK/preflight.log" | tail -n1)
if [ $pre_rc -ne 0 ]; then
  row "preflight" "FAIL (exit $pre_rc: $(tail -n1 "$WORK/preflight.log"))" $(($(date +%s) - t0))
  FAILED=1
else
  row "preflight" "pass" $(($(date +%s) - t0))
fi
ARCH=$(cat "$PACK/.arch" 2>/dev/null || echo 90)
DEPS="$PACK/pydeps"

# 2. The build.
t0=$(date +%s)
BUILT=0
if [ ! -d "$DEPS" ]; then
  row "build" "FAIL (no $DEPS: run bench/gpu-pack.sh at this commit)" 0
  FAILED=1
else
  rm -rf "$WORK/site"
  timeout "$(remaining)" python3 -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir \
    --target "$WORK/site" \
    -C build-dir="$WORK/build" \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -C cmake.define.CMAKE_PREFIX_PATH="$DEPS" \
    -C cmake.define.CUFM_OPENBLAS_LIBRARY="$DEPS/lib/libopenblas.so" \
    -C cmake.define.CUFM_CBLAS_INCLUDE_DIR="$DEPS/include" \
    -C cmake.define.CUFM_WITH_ONEDNN=OFF \
    "$ROOT" >"$WORK/build.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    row "build (sm_$ARCH, $(python3 --version 2>&1))" "pass" $(($(date +%s) - t0))
    BUILT=1
  else
    row "build" "FAIL (exit $rc: $(grep -m1 -iE 'error' "$WORK/build.log" | cut -c1-200))" $(($(date +%s) - t0))
    FAILED=1
  fi
fi

# 3. The tests.
if [ $BUILT -eq 1 ]; then
  t0=$(date +%s)
  left=$(remaining)
  if [ "$left" -lt 30 ]; then
    row "pytest tests/python" "FAIL (not run: the time budget is spent)" 0
    FAILED=1
  else
    (cd "$WORK" && timeout "$left" env PYTHONPATH="$WORK/site" \
      LD_LIBRARY_PATH="$PACK/lib${LIBS:+:$LIBS}" CUFM_CLI="$PACK/cufm" \
      python3 -m pytest -q -ra -p no:cacheprovider "$ROOT/tests/python") >"$WORK/pytest.log" 2>&1
    rc=$?
    summary=$(tail -n1 "$WORK/pytest.log")
    if [ $rc -eq 0 ]; then
      row "pytest tests/python" "pass ($summary)" $(($(date +%s) - t0))
    else
      row "pytest tests/python" "FAIL (exit $rc: $summary)" $(($(date +%s) - t0))
      FAILED=1
    fi
  fi
fi

DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
DEVICE=${DEVICE:-unknown-gpu}
SLUG=$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')

# 4. The peers on this GPU, when the time allows: log-likelihoods and sampling against
# flow_matching's ODESolver (bench/likelihood_bench.py --device cuda), its wheel from the pack.
PEERS_REPORT="$RESULTS/$(date -u +%Y-%m-%d)-$SLUG-likelihood-peers.md"
if [ $BUILT -eq 1 ]; then
  t0=$(date +%s)
  left=$(remaining)
  wheel=$(ls "$PACK"/pywheels/flow_matching-*.whl 2>/dev/null | head -n1)
  if [ -z "$wheel" ]; then
    row "likelihood_bench.py --device cuda" "NOT RUN (no flow_matching wheel in the pack)" 0
  elif [ "$left" -lt 60 ]; then
    row "likelihood_bench.py --device cuda" "NOT RUN (the time budget is spent)" 0
  else
    rm -rf "$WORK/peers"
    python3 -m pip install --quiet --no-deps --no-index --target "$WORK/peers" "$wheel" >"$WORK/peers.log" 2>&1 &&
      (cd "$WORK" && timeout "$((left - 10))" env PYTHONPATH="$WORK/site:$WORK/peers:$ROOT/bench" \
        LD_LIBRARY_PATH="$PACK/lib${LIBS:+:$LIBS}" \
        python3 "$ROOT/bench/likelihood_bench.py" --device cuda --points 100000 --rounds 2 \
        --out "$PEERS_REPORT" --json "$WORK/likelihood-peers.json") >>"$WORK/peers.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
      row "likelihood_bench.py --device cuda" "pass ($(basename "$PEERS_REPORT"))" $(($(date +%s) - t0))
    else
      row "likelihood_bench.py --device cuda" "FAIL (exit $rc: $(tail -n1 "$WORK/peers.log" | cut -c1-200))" \
        $(($(date +%s) - t0))
      FAILED=1
    fi
  fi
fi
REPORT="$RESULTS/$(date -u +%Y-%m-%d)-$SLUG-python-check.md"
RESULT=PASS
[ $FAILED -ne 0 ] && RESULT=FAIL
{
  echo "# Python package check $(date -u +%Y-%m-%d) on $DEVICE"
  echo
  echo "- commit: \`$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)\` (the checkout built);" \
    "pack: \`$(cut -c1-12 "$PACK/.prebuilt" 2>/dev/null || echo none)\`"
  echo "- python: $(python3 --version 2>&1); torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')"
  echo "- total: $(($(date +%s) - START)) s; result: $RESULT"
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## pytest"
  echo
  echo '```'
  tail -n 40 "$WORK/pytest.log" 2>/dev/null || echo "(not run)"
  echo '```'
  if [ $BUILT -eq 0 ]; then
    echo
    echo "## build log (end)"
    echo
    echo '```'
    tail -n 40 "$WORK/build.log" 2>/dev/null || true
    echo '```'
  fi
} >"$REPORT"
echo "report: $REPORT ($RESULT)"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$REPORT" "$OUT/"
  [ -f "$PEERS_REPORT" ] && cp "$PEERS_REPORT" "$OUT/"
  tar -C "$WORK" -czf "$OUT/python-check-logs.tar.gz" preflight.log build.log pytest.log peers.log 2>/dev/null || true
fi
[ $FAILED -eq 0 ]
