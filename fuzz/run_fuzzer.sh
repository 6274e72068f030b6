#!/usr/bin/env bash
# run_fuzzer.sh FUZZER NAME WORKDIR RUNS [libFuzzer flags...]: runs a fuzz target
# from fuzz/ for RUNS inputs, starting from its seed corpus (fuzz/seeds/NAME) with
# its dictionary (fuzz/NAME.dict). New inputs and any crash go to WORKDIR, never
# into the source tree. Exits non-zero on any finding.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fuzzer=${1:?fuzzer program}; name=${2:?target name}; work=${3:?work directory}; runs=${4:?number of runs}
shift 4
rm -rf "$work" && mkdir -p "$work/corpus"
# Leaks are findings too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
exec "$fuzzer" -runs="$runs" -dict="$here/$name.dict" -max_len=8192 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$work/" -print_final_stats=1 "$@" "$work/corpus" "$here/seeds/$name"
