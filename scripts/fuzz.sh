#!/usr/bin/env bash
# Runs cuFM's libFuzzer targets (the .npy reader, the checkpoint loader, the command line's parsing)
# for N minutes each, with ASan and UBSan, from the committed corpus and dictionaries.
#   scripts/fuzz.sh [minutes per target (default 5)] [target ...]   targets: npy checkpoint cli
# Builds the CPU backend with clang in build-fuzz/ (installing clang, its fuzzer runtime and
# OpenMP when missing). New inputs that reach new code go to build-fuzz/corpus-<target>/; a crash
# leaves its input as build-fuzz/crash-<hash> and exits non-zero. Add an input that found a bug to
# tests/fuzz/corpus/<target>/ with its fix: the `fuzz` ctests replay that corpus in every build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MINUTES="${1:-5}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(npy checkpoint cli)

missing=()
command -v clang++ >/dev/null || missing+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || missing+=(libclang-rt-dev)
ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1 || missing+=(libomp-dev)
if ((${#missing[@]})); then
  echo "fuzz: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash "$ROOT/scripts/install-deps.sh" >/dev/null

BUILD="$ROOT/build-fuzz"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCUFM_ENABLE_CUDA=OFF -DCUFM_FUZZ=ON -DCUFM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]/#/fuzz_}"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:malloc_limit_mb=2048"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus-$t"
  mkdir -p "$corpus"
  echo "==> fuzz_$t for $MINUTES minute(s)"
  # -rss_limit_mb: an input that makes cuFM allocate more than its file justifies is a bug too.
  (cd "$BUILD" && ./tests/fuzz/fuzz_"$t" "$corpus" "$ROOT/tests/fuzz/corpus/$t" -dict="$ROOT/tests/fuzz/$t.dict" \
    -max_total_time=$((MINUTES * 60)) -rss_limit_mb=2048 -max_len=65536 -timeout=20 -print_final_stats=1) ||
    status=1
done
exit $status
