#!/usr/bin/env bash
# Install, build, and run the default test suite (slow learning tests excluded;
# run those with: ctest --test-dir build -L slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# OpenBLAS's kernels for this CPU as longseq chooses them (docs/performance.md), set once here so that the
# test processes do not each re-execute themselves to set it.
OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE-$(./build/longseq info --blas-core)}"
[ -n "$OPENBLAS_CORETYPE" ] && export OPENBLAS_CORETYPE || unset OPENBLAS_CORETYPE
# Passive OpenMP waiting: two test processes on two cores would otherwise spin
# against each other's threads (measured: a finite-difference test 1 s alone, 33 s paired).
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build -LE slow -j"$(nproc)" --output-on-failure --timeout 600
