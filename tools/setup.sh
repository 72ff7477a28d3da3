#!/usr/bin/env bash
# Installs the Debian packages seqc needs (only those missing), then configures
# and builds into build/ (or $SEQ_BUILD_DIR). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/apt_missing.sh
apt_missing setup build-essential cmake pkg-config flex bison libcmocka-dev libjansson-dev \
  libxxhash-dev llvm-19-dev clang-19 libclang-rt-19-dev

build="${SEQ_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE="${SEQ_BUILD_TYPE:-RelWithDebInfo}" ${SEQ_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
