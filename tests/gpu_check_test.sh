#!/usr/bin/env bash
# bench/gpu-check.sh's own failure handling, on this machine with fake packs (no GPU needed):
#  1. a binary whose shared library is missing fails the preflight (exit 1), naming the library;
#  2. the same library in a Python wheel's nvidia/<name>/lib folder is found and the binary loads;
#  3. a packed gpu-pack.tar.xz is unpacked and checked the same way;
#  4. a whole run where a project binary exits 127 (the loader's code for a missing library) is a
#     FAIL with exit 1, never "not run"; a binary that cannot load is not run at all; and a gpu test
#     of the source (tests/gpu/test_gpu_*.cpp) with no binary in the pack is a FAIL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
fail() {
  echo "gpu_check_test: FAIL: $*" >&2
  exit 1
}

# A library and a binary that needs it, found by no search path of its own.
mkdir -p "$WORK/src" "$WORK/stage/gpu-pack/tests/gpu" "$WORK/stage/gpu-pack/bench" "$WORK/stage/gpu-pack/lib"
echo 'int cufm_fake_dep(void) { return 0; }' >"$WORK/src/dep.c"
echo 'int cufm_fake_dep(void); int main(void) { return cufm_fake_dep(); }' >"$WORK/src/main.c"
cc -shared -fPIC -Wl,-soname,libcufm_fake_dep.so.13 -o "$WORK/src/libcufm_fake_dep.so.13" "$WORK/src/dep.c"
PACK_SRC="$WORK/stage/gpu-pack"
cc -o "$PACK_SRC/tests/gpu/test_gpu_fake" "$WORK/src/main.c" "$WORK/src/libcufm_fake_dep.so.13"
cp "$PACK_SRC/tests/gpu/test_gpu_fake" "$PACK_SRC/bench/cufm_bench_fake"
echo 0123456789abcdef0123456789abcdef01234567 >"$PACK_SRC/.prebuilt"
echo 90 >"$PACK_SRC/.arch"

check() {  # check <expected exit> <output file> <gpu-check args...>
  local want="$1" out="$2"
  shift 2
  set +e
  env CUFM_GPU_CHECK_LOGS="$WORK/logs" CUFM_GPU_CHECK_RESULTS="$WORK/results" bash "$ROOT/bench/gpu-check.sh" "$@" \
    >"$out" 2>&1
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || {
    cat "$out"
    fail "gpu-check $* exited $rc, expected $want"
  }
}

# 1. Missing: the preflight fails and names the library.
cp -r "$PACK_SRC" "$WORK/pack1"
CUFM_GPU_PACK="$WORK/pack1" CUFM_GPU_PACK_ARCHIVE="$WORK/none.tar.xz" PYTHONPATH="" \
  check 1 "$WORK/out1" --preflight
grep -q "load test_gpu_fake: FAIL (cannot load: libcufm_fake_dep.so.13 not found" "$WORK/out1" ||
  { cat "$WORK/out1"; fail "the missing library is not named"; }

# 2. In a wheel's nvidia/*/lib folder on PYTHONPATH: found, and every binary loads.
mkdir -p "$WORK/site/nvidia/fake/lib"
cp "$WORK/src/libcufm_fake_dep.so.13" "$WORK/site/nvidia/fake/lib/"
CUFM_GPU_PACK="$WORK/pack1" CUFM_GPU_PACK_ARCHIVE="$WORK/none.tar.xz" PYTHONPATH="$WORK/site" \
  check 0 "$WORK/out2" --preflight
grep -q "library libcufm_fake_dep.so.13: found in $WORK/site/nvidia/fake/lib" "$WORK/out2" ||
  { cat "$WORK/out2"; fail "the wheel's folder was not reported"; }

# 3. From the archive, with the library packed in lib/.
cp "$WORK/src/libcufm_fake_dep.so.13" "$PACK_SRC/lib/"
tar -C "$WORK/stage" -cJf "$WORK/gpu-pack.tar.xz" gpu-pack
CUFM_GPU_PACK="$WORK/unpacked/gpu-pack" CUFM_GPU_PACK_ARCHIVE="$WORK/gpu-pack.tar.xz" PYTHONPATH="" \
  check 0 "$WORK/out3" --preflight
[ -x "$WORK/unpacked/gpu-pack/tests/gpu/test_gpu_fake" ] || fail "the archive was not unpacked"

# 4. A whole run: one test binary exits 127, one cannot load (its library is missing and not
#    searched for), the bench binary runs. Exit 1, the 127 is a FAIL, the unloadable one never ran.
cp -r "$PACK_SRC" "$WORK/pack4"
rm "$WORK/pack4/lib/libcufm_fake_dep.so.13"
printf '#!/bin/sh\necho "error while loading shared libraries: libcublasLt.so.13: cannot open shared object file" >&2\nexit 127\n' \
  >"$WORK/pack4/tests/gpu/test_gpu_exits127"
chmod +x "$WORK/pack4/tests/gpu/test_gpu_exits127"
printf '#!/bin/sh\necho "fake bench ran"\n' >"$WORK/pack4/bench/cufm_bench_fake"
CUFM_GPU_PACK="$WORK/pack4" CUFM_GPU_PACK_ARCHIVE="$WORK/none.tar.xz" PYTHONPATH="" CUFM_CHECK_BUDGET_S=120 \
  check 1 "$WORK/out4"
report=$(ls "$WORK"/results/*.md)
grep -q "| gpu tests test_gpu_exits127 | FAIL (exit 127" "$report" || { cat "$report"; fail "exit 127 is not a FAIL"; }
grep -q "| load test_gpu_fake | FAIL (cannot load" "$report" || { cat "$report"; fail "the unloadable binary is not a FAIL"; }
if grep -q "| gpu tests test_gpu_fake |" "$report"; then cat "$report"; fail "a binary that cannot load was run"; fi
grep -q "result: FAIL" "$report" || { cat "$report"; fail "the report's result is not FAIL"; }
grep -q "| bench cufm_bench_fake | pass" "$report" || { cat "$report"; fail "the bench row is missing"; }
grep -q "| gpu tests test_gpu_likelihood | FAIL (no binary" "$report" ||
  { cat "$report"; fail "a gpu test of the source missing from the pack is not a FAIL"; }
echo "gpu_check_test: all four cases behave"
