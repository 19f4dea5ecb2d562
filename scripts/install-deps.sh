#!/usr/bin/env bash
# Installs what cuFM needs on Debian/Ubuntu, and only what is missing.
#   scripts/install-deps.sh          build dependencies
#   scripts/install-deps.sh --test   also Python's numpy + safetensors for the checkpoint interop test,
#                                    and python3-venv + python3-dev for the Python package's build
# The CUDA toolkit is optional: when nvcc is found (PATH or /usr/local/cuda), the CUDA backend is built.
set -euo pipefail

want_python=0
[[ "${1:-}" == "--test" ]] && want_python=1

pkgs=(build-essential cmake pkg-config libopenblas-openmp-dev libdnnl-dev libgtest-dev libgmock-dev
      libcli11-dev nlohmann-json3-dev libpng-dev python3)
((want_python)) && ! python3 -m pip --version >/dev/null 2>&1 && pkgs+=(python3-pip)
((want_python)) && pkgs+=(python3-venv python3-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ((want_python)); then
  if ! python3 -c "import numpy, safetensors" 2>/dev/null; then
    echo "install-deps: installing numpy and safetensors for python3"
    python3 -m pip install --quiet numpy safetensors 2>/dev/null ||
      python3 -m pip install --quiet --break-system-packages numpy safetensors ||
      echo "install-deps: could not install numpy/safetensors; the Python interop test will skip"
  fi
fi

# Make a CUDA toolkit in its default place visible to CMake.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  echo "install-deps: CUDA toolkit found at /usr/local/cuda (add /usr/local/cuda/bin to PATH)"
fi
echo "install-deps: ok"
