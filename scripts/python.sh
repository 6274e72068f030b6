#!/usr/bin/env bash
# Builds the Python extension module `import longseq` (docs/python.md) and runs its tests (ctest label `python`):
# against Debian's python3-torch (LibTorch 1.13, the system's) in ./build-python, and with --torch2 also against
# the torch wheel in scripts/torch2.sh's virtual environment in ./build-python-torch2. Not part of .ci/run: the
# default build and suite need no Python. Extra arguments after the options go to ctest.
#   LONGSEQ_TORCH2_VENV  the virtual environment holding the wheel (default /opt/longseq-torch2)
set -euo pipefail
cd "$(dirname "$0")/.."
torch2=0
if [ "${1:-}" = "--torch2" ]; then torch2=1; shift; fi
bash scripts/setup.sh
missing=()
for p in python3-torch python3-dev pybind11-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "python: missing packages: ${missing[*]}; run as root" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_and_test() {
  local dir="$1"
  shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DLONGSEQ_PYTHON=ON -DLONGSEQ_BUILD_TESTS=OFF -DLONGSEQ_FUZZ=OFF \
    "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
  # OpenBLAS's kernels for this CPU (docs/performance.md): a Python process cannot re-execute itself to set them.
  local core="${OPENBLAS_CORETYPE-$("./$dir/longseq" info --blas-core)}"
  OPENBLAS_CORETYPE="$core" OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$dir" -L python --no-tests=error \
    --output-on-failure "${ctest_args[@]}"
}
ctest_args=("$@")
build_and_test build-python -DLONGSEQ_PYTHON_EXECUTABLE=/usr/bin/python3
if [ "$torch2" = 1 ]; then
  venv="${LONGSEQ_TORCH2_VENV:-/opt/longseq-torch2}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "python: no virtual environment at $venv (scripts/torch2.sh makes it)" >&2
    exit 1
  fi
  prefix="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
  build_and_test build-python-torch2 -DLONGSEQ_TORCH="$prefix" -DLONGSEQ_PYTHON_EXECUTABLE="$venv/bin/python"
fi
