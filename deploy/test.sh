#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine (as root): installs what is missing, builds
# iovirt (warnings as errors) and an ASan+UBSan build, then runs
#   unit tests   (both builds)                      ctest -L unit
#   KVM tests    (tiny guests on this host's KVM)   ctest -L kvm
#   interop      (real peers: qemu-storage-daemon)  ctest -L interop
#   lab tests    (real Linux guests, nested lab)    ctest -L lab
#   fuzzing      (libFuzzer, every target of FUZZ_TARGETS for its bounded time; needs clang++ >= 17
#                 for std::expected)
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
step "unit + KVM + interop + lab tests (release build)"
ctest --test-dir "$ROOT/build" --output-on-failure -j2 -L 'unit|kvm|interop' || fail=1
ctest --test-dir "$ROOT/build" --output-on-failure -L lab || fail=1
step "unit tests (ASan+UBSan build)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$ROOT/build-asan" --output-on-failure -j2 -L 'unit|interop' || fail=1

# Fuzzing: a clang build (libFuzzer + ASan + UBSan; no -Werror, clang warns differently) runs
# each target for a bounded time on a scratch copy of its seed corpus (tests/fuzz/corpus/NAME for
# fuzz_NAME), so the tree is not modified. Crashing inputs are kept in build-fuzz/crashes/.
# Debian 12's default clang (14) lacks std::expected support, so the newest clang++-NN is used.
declare -A FUZZ_TARGETS=(
  [fuzz_split_queue]=45
  [fuzz_packed_queue]=45
  [fuzz_blk_request]=30
  [fuzz_net_header]=30
  [fuzz_vhost_user_msg]=30
  [fuzz_passthrough_config]=30
  [fuzz_vhost_user_backend]=30
)
FUZZ_CXX=""
for c in clang++-19 clang++-18 clang++-17 clang++; do
  if command -v "$c" >/dev/null && echo '#include <expected>
std::expected<int, int> e;' | "$c" -std=c++23 -fsyntax-only -x c++ - 2>/dev/null; then
    FUZZ_CXX=$c
    break
  fi
done
if [[ -n $FUZZ_CXX ]]; then
  step "fuzz build ($FUZZ_CXX)"
  FUZZ_BUILD=$ROOT/build-fuzz
  if CC=${FUZZ_CXX/clang++/clang} CXX=$FUZZ_CXX cmake -S "$ROOT" -B "$FUZZ_BUILD" -G Ninja \
       -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIOVIRT_FUZZ=ON -DIOVIRT_BUILD_TESTS=ON \
       -DIOVIRT_WERROR=OFF -DIOVIRT_BUILD_BENCH=OFF >/dev/null &&
     ninja -C "$FUZZ_BUILD" "${!FUZZ_TARGETS[@]}" >/dev/null; then
    mkdir -p "$FUZZ_BUILD/crashes"
    for t in $(printf '%s\n' "${!FUZZ_TARGETS[@]}" | sort); do
      secs=${FUZZ_TARGETS[$t]}
      step "fuzzing ${t#fuzz_} for $secs s"
      corpus=$FUZZ_BUILD/corpus-${t#fuzz_}
      rm -rf "$corpus" && mkdir -p "$corpus"
      cp "$ROOT/tests/fuzz/corpus/${t#fuzz_}"/* "$corpus/"
      "$FUZZ_BUILD/tests/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$FUZZ_BUILD/crashes/" "$corpus" 2>&1 | tail -n 25 ||
        { echo "fuzz: $t crashed, input saved in $FUZZ_BUILD/crashes/"; fail=1; }
    done
  else
    echo "fuzz: clang build failed"; fail=1
  fi
else
  step "fuzzing skipped (no clang++ with std::expected; apt-get install clang-19 libclang-rt-19-dev)"
fi

step "done"
if ((fail)); then echo "test: FAILED"; exit 1; fi
echo "test: all passed"
