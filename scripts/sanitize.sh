#!/usr/bin/env bash
# Builds longseq and its tests with AddressSanitizer + UndefinedBehaviorSanitizer
# in ./build-asan and runs the default test suite (slow tests excluded) under them.
# Extra arguments go to ctest, e.g.: bash scripts/sanitize.sh -R 'Reversible'
# Any report fails its test. Reports from inside LibTorch and the system
# libraries it loads are suppressed by scripts/sanitize/*.supp (third-party frames only).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DLONGSEQ_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
supp=$root/scripts/sanitize
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:check_initialization_order=1:suppressions=$supp/asan.supp"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
# Passive OpenMP waiting, as in scripts/test.sh.
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build-asan -LE slow -j"$(nproc)" --output-on-failure --timeout 1800 "$@"
