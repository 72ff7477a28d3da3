#!/usr/bin/env bash
# The main job on a bundled example: set up, build, compile examples/lstm.seq
# and run it on bundled PyTorch weights and input, printing the output's shape
# and checksum (and comparing it with PyTorch's own output).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build="${SEQ_BUILD_DIR:-build}"
out="$(mktemp -d)"
"$build/seqc" run examples/lstm.seq \
  --weights examples/data/lstm_weights.safetensors \
  --in x=examples/data/lstm_x.npy --out y="$out/y.npy" \
  --expect y=examples/data/lstm_y.npy
rm -rf "$out"
