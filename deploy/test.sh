#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine (as root): installs what is missing, builds
# iovirt (warnings as errors) and an ASan+UBSan build, then runs
#   unit tests   (both builds)                      ctest -L unit
#   KVM tests    (tiny guests on this host's KVM)   ctest -L kvm
#   lab tests    (real Linux guests, nested lab)    ctest -L lab
# Exit status is non-zero if anything failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - START ))s)"; }

step "installing dependencies"
"$ROOT/deploy/install-deps.sh"

step "building (release, -Werror)"
"$ROOT/deploy/build.sh" "$ROOT/build"
step "building (ASan+UBSan)"
"$ROOT/deploy/build.sh" "$ROOT/build-asan" -DIOVIRT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DIOVIRT_BUILD_BENCH=OFF

step "setting up the nested lab"
"$ROOT/deploy/lab/lab.sh" setup

fail=0
step "unit + KVM + lab tests (release build)"
ctest --test-dir "$ROOT/build" --output-on-failure -j2 -L 'unit|kvm' || fail=1
ctest --test-dir "$ROOT/build" --output-on-failure -L lab || fail=1
step "unit tests (ASan+UBSan build)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$ROOT/build-asan" --output-on-failure -j2 -L unit || fail=1

step "done"
if ((fail)); then echo "test: FAILED"; exit 1; fi
echo "test: all passed"
