#!/usr/bin/env bash
# Checks that the working tree computes the same CPU bits as an earlier commit (a refactor's
# promise): builds the CPU library of REV (default HEAD) in a temporary worktree and of the working
# tree in build-bits/, links scripts/bit_identity.cpp to each, runs both on 1 and on 2 threads and
# compares their hashes line by line.   usage: scripts/bit-identity.sh [REV]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/base" "$rev" >/dev/null
build_lib() {  # build_lib <source dir> <build dir>
  cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=Release -DCUFM_ENABLE_CUDA=OFF -DCUFM_BUILD_TESTS=OFF \
    -DCUFM_BUILD_BENCH=OFF -DCUFM_BUILD_CLI=OFF >/dev/null
  cmake --build "$2" -j"$(nproc)" --target cufm >/dev/null
}
probe() {  # probe <source dir> <build dir> <binary>
  g++ -O2 -std=c++17 -I"$1/include" -I"$2/include" scripts/bit_identity.cpp "$2/libcufm.a" \
    $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -ldnnl -fopenmp -o "$3"
}
build_lib "$work/base" "$work/build"
build_lib . build-bits
probe "$work/base" "$work/build" "$work/before"
probe . build-bits "$work/after"
status=0
for threads in 1 2; do
  OMP_NUM_THREADS=$threads "$work/before" >"$work/before-$threads.txt"
  OMP_NUM_THREADS=$threads "$work/after" >"$work/after-$threads.txt"
  if diff "$work/before-$threads.txt" "$work/after-$threads.txt"; then
    echo "bit-identity: $threads thread(s): the same $(wc -l <"$work/after-$threads.txt") hashes as $rev"
  else
    echo "bit-identity: $threads thread(s): the bits differ from $rev (lines above: < $rev, > working tree)"
    status=1
  fi
done
exit $status
