#!/usr/bin/env bash
# Builds the GPU check's binaries HERE (for sm_90 unless CUFM_CUDA_ARCH says otherwise) and packs
# them into gpu-pack/ with the shared libraries the GPU machine lacks (OpenBLAS, libpng, ...), so
# that a GPU machine with no package registry runs them:  bench/gpu-check.sh  finds gpu-pack/ and
# uses it instead of building. Carry gpu-pack/ (ignored by git) to the GPU machine.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCH="${CUFM_CUDA_ARCH:-90}"
BUILD="$ROOT/build-gpu-pack"
PACK="$ROOT/gpu-pack"
export PATH="/usr/local/cuda/bin:$PATH"

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCUFM_ENABLE_CUDA=ON -DCUFM_BUILD_TESTS=ON -DCUFM_BUILD_BENCH=ON >/dev/null
targets=(cufm_cli test_gpu_kernels test_gpu_mlp test_gpu_training test_gpu_sampling
         cufm_bench_train cufm_bench_sample cufm_bench_kernels)
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}"

rm -rf "$PACK"
mkdir -p "$PACK/tests/gpu" "$PACK/bench" "$PACK/lib"
for t in test_gpu_kernels test_gpu_mlp test_gpu_training test_gpu_sampling; do
  cp "$BUILD/tests/gpu/$t" "$PACK/tests/gpu/"
done
for b in cufm_bench_train cufm_bench_sample cufm_bench_kernels; do
  cp "$BUILD/bench/$b" "$PACK/bench/"
done
cp "$BUILD/cufm" "$PACK/"
strip --strip-unneeded "$PACK"/tests/gpu/* "$PACK"/bench/* "$PACK/cufm"
# The shared libraries outside glibc, the C++ runtime and the CUDA toolkit's own (which the GPU
# machine has), by their resolved paths, under their sonames.
for bin in "$PACK"/tests/gpu/* "$PACK"/bench/* "$PACK/cufm"; do
  ldd "$bin" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r soname path; do
  case "$soname" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda.so*|libcublas*|libcudart*|libnvrtc*|libnvJitLink*) ;;
    *) cp -L "$path" "$PACK/lib/$soname" ;;
  esac
done
git -C "$ROOT" rev-parse HEAD >"$PACK/.prebuilt"
echo "gpu-pack: $(du -sh "$PACK" | cut -f1) in $PACK (commit $(cut -c1-12 "$PACK/.prebuilt"), sm_$ARCH); libs: $(ls "$PACK/lib" | tr '\n' ' ')"
