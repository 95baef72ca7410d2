#!/usr/bin/env bash
# Configures and builds iovirt. Usage: deploy/build.sh [BUILD_DIR] [extra cmake args...]
# Default BUILD_DIR is build/. Warnings are errors (the CI setting).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
shift || true
echo "build: configuring $BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIOVIRT_WERROR=ON "$@" >/dev/null
echo "build: compiling ($(nproc) jobs)"
ninja -C "$BUILD" | grep -E "^FAILED|error|warning" || true
ninja -C "$BUILD" >/dev/null  # fails loudly if the build is broken
echo "build: done: $BUILD/vmm/iovirt"
