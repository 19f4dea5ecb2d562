#!/usr/bin/env bash
# Builds the GPU check's binaries HERE (for sm_90 unless CUFM_CUDA_ARCH says otherwise) and packs
# them, with the shared libraries a GPU machine's image lacks (OpenBLAS and its Fortran runtime,
# libgomp, libpng), into gpu-pack.tar.xz at the repository root: what bench/gpu-check.sh runs on a
# GPU machine that has the CUDA toolkit (or PyTorch's nvidia-* wheels) but none of Debian's -dev
# packages. Carry gpu-pack.tar.xz (ignored by git) to the GPU machine; gpu-check.sh unpacks it.
# pydeps/ inside it is what bench/gpu-python-check.sh's build of the Python package needs there.
#
# What can travel to a GPU machine is 64 MiB in all, the checkout included, so the pack is refused
# above 48 MiB. cuBLAS/cuBLASLt are not packed (hundreds of MB): gpu-check.sh finds them there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCH="${CUFM_CUDA_ARCH:-90}"
BUILD="$ROOT/build-gpu-pack"
STAGE="$ROOT/build-gpu-pack/stage/gpu-pack"
ARCHIVE="$ROOT/gpu-pack.tar.xz"
MAX_BYTES=$((48 * 1024 * 1024))
export PATH="/usr/local/cuda/bin:$PATH"

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCUFM_ENABLE_CUDA=ON -DCUFM_BUILD_TESTS=ON -DCUFM_BUILD_BENCH=ON >/dev/null
# Every gpu test the source has (gpu-check.sh fails a run whose pack lacks one).
mapfile -t tests < <(cd "$ROOT/tests/gpu" && ls test_gpu_*.cpp | sed 's/\.cpp$//')
benches=(cufm_bench_train cufm_bench_sample cufm_bench_kernels)
cmake --build "$BUILD" -j"$(nproc)" --target cufm_cli "${tests[@]}" "${benches[@]}"

rm -rf "$STAGE"
mkdir -p "$STAGE/tests/gpu" "$STAGE/bench" "$STAGE/lib"
for t in "${tests[@]}"; do cp "$BUILD/tests/gpu/$t" "$STAGE/tests/gpu/"; done
for b in "${benches[@]}"; do cp "$BUILD/bench/$b" "$STAGE/bench/"; done
cp "$BUILD/cufm" "$STAGE/"
strip --strip-unneeded "$STAGE"/tests/gpu/* "$STAGE"/bench/* "$STAGE/cufm"

# The shared libraries outside glibc, the C++ runtime and the CUDA libraries, by their resolved
# paths, under their sonames.
for bin in "$STAGE"/tests/gpu/* "$STAGE"/bench/* "$STAGE/cufm"; do
  ldd "$bin" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r soname path; do
  case "$soname" in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libstdc++.so* | libgcc_s.so*) ;;
    libcuda.so* | libcublas* | libcudart* | libnvrtc* | libnvJitLink*) ;;
    *) cp -L "$path" "$STAGE/lib/$soname" && strip --strip-unneeded "$STAGE/lib/$soname" ;;
  esac
done
# What bench/gpu-python-check.sh's build of the Python package needs there beside the image's
# python3, nanobind, scikit-build-core, CMake and nvcc: the CBLAS headers and OpenBLAS this build
# found, and nlohmann/json with its CMake package (pydeps/ is a CMake prefix).
cache() { sed -n "s/^$1:[A-Z]*=//p" "$BUILD/CMakeCache.txt"; }
mkdir -p "$STAGE/pydeps/include" "$STAGE/pydeps/lib" "$STAGE/pydeps/share/cmake"
cp "$(cache CUFM_CBLAS_INCLUDE_DIR)"/*.h "$STAGE/pydeps/include/"
ln -s ../../lib/libopenblas.so.0 "$STAGE/pydeps/lib/libopenblas.so"  # the packed runtime library
json_dir=$(cache nlohmann_json_DIR)
json_inc=$(dirname "$(find /usr/include /usr/local/include -maxdepth 2 -name json.hpp -path '*nlohmann*' | head -n1)")
cp -r "$json_inc" "$STAGE/pydeps/include/nlohmann"
cp -r "$json_dir" "$STAGE/pydeps/share/cmake/nlohmann_json"

# The peers' Python packages the GPU image lacks, as wheels (its python3 has torch, scipy and
# torchdiffeq, and no network): flow_matching, for bench/likelihood_bench.py --device cuda. Without a
# network here the pack goes without it, and gpu-python-check says its rows did not run.
mkdir -p "$STAGE/pywheels"
if ! timeout 120 python3 -m pip download --quiet --no-deps --dest "$STAGE/pywheels" flow_matching==1.0.10; then
  echo "gpu-pack: warning: could not download the flow_matching wheel; the GPU peer rows will not run" >&2
fi

git -C "$ROOT" rev-parse HEAD >"$STAGE/.prebuilt"
echo "$ARCH" >"$STAGE/.arch"

rm -f "$ARCHIVE"
XZ_OPT=-9e tar -C "$(dirname "$STAGE")" -cJf "$ARCHIVE.tmp" gpu-pack
size=$(stat -c %s "$ARCHIVE.tmp")
unpacked=$(du -sb "$STAGE" | cut -f1)
if [ "$size" -gt "$MAX_BYTES" ]; then
  rm -f "$ARCHIVE.tmp"
  echo "gpu-pack: REFUSED: the pack is $((size / 1024 / 1024)) MiB compressed, over the 48 MiB that leaves room for" \
    "the checkout in the 64 MiB a GPU machine receives" >&2
  exit 1
fi
mv "$ARCHIVE.tmp" "$ARCHIVE"
echo "gpu-pack: $ARCHIVE: $((size / 1024)) KiB ($((unpacked / 1024 / 1024)) MiB unpacked; limit 48 MiB)," \
  "commit $(cut -c1-12 "$STAGE/.prebuilt"), sm_$ARCH; libs: $(ls "$STAGE/lib" | tr '\n' ' ')"
