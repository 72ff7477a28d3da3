#!/usr/bin/env bash
# Builds seqc with warnings as errors and the IR verifier on (Debug), then runs
# the whole test suite under CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ_BUILD_DIR="${SEQ_BUILD_DIR:-build-test}" SEQ_BUILD_TYPE=Debug \
  SEQ_CMAKE_ARGS="-DSEQ_WERROR=ON ${SEQ_CMAKE_ARGS:-}" tools/setup.sh
ctest --test-dir "${SEQ_BUILD_DIR:-build-test}" --output-on-failure -j2
