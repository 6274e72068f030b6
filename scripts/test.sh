#!/usr/bin/env bash
# Install, build, and run the default test suite (slow learning tests excluded;
# run those with: ctest --test-dir build -L slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# Passive OpenMP waiting: two test processes on two cores would otherwise spin
# against each other's threads (measured: a finite-difference test 1 s alone, 33 s paired).
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build -LE slow -j"$(nproc)" --output-on-failure --timeout 600
