#!/usr/bin/env bash
# The unit tests compile as a unity build (tests/CMakeLists.txt): a test file's helpers live in
# a namespace named after the file, `namespace <stem>_test {`, never in an anonymous namespace,
# which all files of one batch would share.
set -euo pipefail
cd "$1"
status=0
for f in test_*.cpp; do
  [ "$f" = test_main.cpp ] && continue
  stem=${f#test_}
  stem=${stem%.cpp}
  if grep -qn '^namespace {' "$f"; then
    echo "$f: an anonymous namespace; use \`namespace ${stem}_test {\` (unity build, tests/CMakeLists.txt)"
    status=1
  fi
  if ! grep -q "^namespace ${stem}_test {" "$f"; then
    echo "$f: its helpers and tests belong in \`namespace ${stem}_test {\`"
    status=1
  fi
done
exit $status
