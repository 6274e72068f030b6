#!/usr/bin/env bash
# Installs what longseq needs from Debian 12's packages; idempotent: it asks
# apt only when a package is missing. Nothing is downloaded from elsewhere.
set -euo pipefail
packages=(
  g++ cmake make pkg-config ccache git
  libtorch-dev             # LibTorch: tensors, autograd
  libopenblas0-openmp      # fast BLAS for LibTorch (else the reference BLAS, ~20x slower)
  libopenblas-openmp-dev   # libblas.so for the fused kernels' cblas_sgemm
  nlohmann-json3-dev       # configs, metrics, safetensors headers
  libcli11-dev             # command line
  libsentencepiece-dev     # subword tokenizers
  libpugixml-dev           # XML parser for WMT >= 2021 test sets
  libpng-dev               # Pathfinder's grayscale PNG images (LRA)
  libgloo-dev              # c10d's Gloo headers: data-parallel training (docs/distributed.md)
  libgtest-dev             # tests
  libbenchmark-dev         # micro-benchmarks
  clang-14                 # the fuzz targets (fuzz/): libFuzzer comes with clang
  libclang-rt-14-dev       # libFuzzer and the sanitizer runtimes
  python3.11-doc           # the embedded default corpus (Python's documentation sources)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
