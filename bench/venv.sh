#!/bin/sh
# venv.sh - the Python environment for the PyTorch peers (bench/torch_*.py):
# torch, numpy and safetensors from PyPI in a virtual environment, because
# Debian's python3-torch (1.13) links the reference BLAS and would be a weak
# baseline (BENCHMARKS.md, "Machine and versions").
#
# usage: bench/venv.sh [VENV]     (default build-perf/venv, from the repository root)
# Idempotent: an environment that already imports all three is left alone.
# Prints torch's version, the BLAS and oneDNN it was built with, and the CPU
# capability it dispatches to, so a benchmark run can record what it measured.
set -eu
VENV=${1:-build-perf/venv}
PY=$VENV/bin/python

if [ -x "$PY" ] && "$PY" -c 'import torch, numpy, safetensors' 2>/dev/null; then
  echo "venv.sh: $VENV already has torch, numpy and safetensors"
else
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install --upgrade pip
  "$PY" -m pip install torch numpy safetensors
fi

# The OpenBLAS variables some environments set are for Debian's numpy; they
# must not steer the wheels' own BLAS in the report either.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" - <<'EOF'
import numpy, safetensors, torch
print(f"torch {torch.__version__}, numpy {numpy.__version__}, safetensors {safetensors.__version__}")
# MKL calls itself "oneAPI Math Kernel Library" and oneDNN "MKL-DNN" here; the
# build-settings line is kilobytes of compiler flags, of which the BLAS and
# oneDNN switches are the part that says what the matrix products run on.
for line in torch.__config__.show().splitlines():
    line = line.strip()
    if line.startswith("- Build settings:"):
        keep = [f.strip() for f in line[len("- Build settings:"):].split(",")
                if f.strip().startswith(("BLAS_INFO=", "LAPACK_INFO=", "USE_MKL=", "USE_MKLDNN="))]
        print("  - build settings: " + ", ".join(keep))
    elif any(w in line for w in ("MKL", "Math Kernel", "oneDNN", "BLAS", "CPU capability")):
        print("  " + line)
print(f"  cpu capability: {torch.backends.cpu.get_cpu_capability()}")
EOF
