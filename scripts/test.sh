#!/usr/bin/env bash
# The tests, as the README's test command and CI run them:
#  1. the default build (build/, the CUDA backend when nvcc is found: its gpu tests skip without a
#     GPU, each naming why) and its whole suite;
#  2. the CPU backend under AddressSanitizer and UndefinedBehaviorSanitizer (build-sanitize/, the
#     `sanitize` preset) and its suite, at the smaller sizes CUFM_TEST_SMALL=1 selects;
#  3. the Python package: `pip install .` into a fresh virtual environment (build-python/venv), then
#     its pytest suite (tests/python): against the cufm binary of step 1, a leak check, the examples
#     at their tiny sizes. The cufm.torch tests need PyTorch (a 5 GB download from PyPI), so they
#     are reported as skipped unless CUFM_TEST_TORCH=1 installs it into the environment too.
# Stops at the first failure. About 15 minutes on 2 cores from a clean checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$JOBS"
cmake --preset sanitize >/dev/null
cmake --build --preset sanitize -j"$JOBS"
ctest --preset sanitize -j"$JOBS"
rm -rf build-python/venv
python3 -m venv build-python/venv
extras=(pytest matplotlib)
[[ "${CUFM_TEST_TORCH:-0}" == "1" ]] && extras+=(torch)
build-python/venv/bin/python -m pip install --quiet . "${extras[@]}"
CUFM_CLI="$PWD/build/cufm" build-python/venv/bin/python -m pytest -ra tests/python
