#!/usr/bin/env bash
# Builds longseq against a current LibTorch 2.x and runs the default test suite on it (docs/torch2.md).
# LibTorch comes from the torch wheel of the Python package registry (it carries the headers, the libraries and
# the CMake config), installed into a virtual environment; the build goes to ./build-torch2. Not part of .ci/run:
# the wheel and its CUDA runtime are about 2.5 GiB.
#   LONGSEQ_TORCH2_VENV     the virtual environment (default /opt/longseq-torch2)
#   LONGSEQ_TORCH2_VERSION  the torch version to install (default: the newest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${LONGSEQ_TORCH2_VENV:-/opt/longseq-torch2}"
version="${LONGSEQ_TORCH2_VERSION:-}"
if ! /usr/bin/python3 -m venv --help >/dev/null 2>&1 || ! /usr/bin/python3 -c "import ensurepip" >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "torch2: python3-venv is missing; run as root or install it" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
[ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch${version:+==$version}"
prefix="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
echo "torch2: LibTorch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null) at $prefix"
cmake -S . -B build-torch2 -DCMAKE_BUILD_TYPE=Release -DLONGSEQ_TORCH="$prefix" -DLONGSEQ_FUZZ=OFF >/dev/null
cmake --build build-torch2 -j"$(nproc)"
OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE-$(./build-torch2/longseq info --blas-core)}"
[ -n "$OPENBLAS_CORETYPE" ] && export OPENBLAS_CORETYPE || unset OPENBLAS_CORETYPE
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build-torch2 -LE slow -j"$(nproc)" --output-on-failure --timeout 600
