#!/usr/bin/env bash
# Installs the Debian packages seqc needs (only those missing), then configures
# and builds into build/ (or $SEQ_BUILD_DIR). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config flex bison libcmocka-dev libjansson-dev libxxhash-dev
          llvm-19-dev clang-19 libclang-rt-19-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build="${SEQ_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE="${SEQ_BUILD_TYPE:-RelWithDebInfo}" ${SEQ_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
