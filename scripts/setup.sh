#!/usr/bin/env bash
# setup.sh — everything kvsieve needs on a fresh Debian machine (run as root, or with sudo
# available): apt packages, a Python venv with the reference/fixture packages, the default
# model, and a build in ./build. Idempotent; safe to re-run.
#   KVS_BUILD_TYPE=Release|Debug   (default Release)
#   KVS_CUDA=AUTO|ON|OFF           (default AUTO: CUDA parts are built when nvcc is found)
#   KVS_SKIP_APT=1                 skip apt-get (packages already installed)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

say() { echo "[setup] $*" >&2; }

if [ "${KVS_SKIP_APT:-0}" != 1 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  pkgs=(build-essential cmake pkg-config git ca-certificates
        python3 python3-venv python3-pip
        libopenblas-openmp-dev libjemalloc-dev libcunit1-dev
        # gRPC server: C core, protobuf-c, health/reflection protos, metrics HTTP, tenants YAML,
        # key hashing; Debian's grpcio for the Python integration tests (/usr/bin/python3)
        libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler grpc-proto
        libmicrohttpd-dev libyaml-dev libssl-dev libjansson-dev
        python3-grpcio python3-grpc-tools python3-protobuf
        # public-domain texts: calibration (King James Bible) and evaluation (US Constitution)
        bible-kjv bible-kjv-text miscfiles)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "apt packages present"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "creating Python venv in .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import gguf, numpy, tokenizers, matplotlib" 2>/dev/null; then
  say "installing Python packages (gguf, numpy, tokenizers, matplotlib) into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi

PYTHON="$root/.venv/bin/python" scripts/fetch-model

say "building (build/, ${KVS_BUILD_TYPE:-Release}, CUDA ${KVS_CUDA:-AUTO})"
cmake -S . -B build -DCMAKE_BUILD_TYPE="${KVS_BUILD_TYPE:-Release}" -DKVS_CUDA="${KVS_CUDA:-AUTO}" \
      ${KVS_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
# Q-Filters for the default model (calibrated on a public-domain text; ~3 min on 2 cores).
# The test command skips this (KVS_SKIP_FILTERS=1): its tests calibrate their own small filters.
if [ "${KVS_SKIP_FILTERS:-0}" != 1 ]; then
  scripts/make-filters
fi
say "ready: build/kvsieve"
