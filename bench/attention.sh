#!/usr/bin/env bash
# attention.sh - causal softmax attention (bench/attention.seq) against PyTorch's
# scaled_dot_product_attention(is_causal=True), paired rounds: each round one
# timed forward of seqc (bench/forms.c, JIT) then one of PyTorch, same shapes and
# threads; prints the medians and the median of the per-round ratios, and the
# GFLOP/s of seqc's kernel (2 (K + V) multiply-adds per (query, key) pair with
# key <= query, T (T + 1) / 2 pairs per head).
#
# usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE bench/attention.sh [ROUNDS] [PY]
#   PY: a python with torch (default build-perf/venv/bin/python, see bench/venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
py=${2:-build-perf/venv/bin/python}
out=build-perf/bench
mkdir -p "$out"
gcc -O2 -Iinclude bench/forms.c -Lbuild-perf -lseq -lm -Wl,-rpath,"$PWD/build-perf" -o "$out/forms"
echo "| B | NH | T | DH | threads | seqc ms | PyTorch ms | seqc / PyTorch time | seqc GFLOP/s |"
echo "|---|---|---|---|---|---|---|---|---|"
for shape in "1 4 4096 64" "4 4 2048 64" "1 16 2048 128"; do
  set -- $shape
  B=$1 NH=$2 T=$3 DH=$4
  for th in 1 2; do
    s=() p=() r=()
    for ((i = 0; i < rounds; i++)); do
      line=$("$out/forms" bench/attention.seq "NH=$NH,DH=$DH" "$B" "$T" "$th" 1)
      ms=$(echo "$line" | sed 's/.*auto_ms=\([0-9.]*\).*/\1/')
      tms=$("$py" bench/torch_attention.py "$B" "$NH" "$T" "$DH" "$th" | sed 's/torch_ms=//')
      s+=("$ms") p+=("$tms") r+=("$(awk -v a="$ms" -v b="$tms" 'BEGIN { printf "%.4f", a / b }')")
    done
    med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    sm=$(med "${s[@]}") pm=$(med "${p[@]}") rm=$(med "${r[@]}")
    gf=$(awk -v B="$B" -v H="$NH" -v T="$T" -v D="$DH" -v ms="$sm" \
      'BEGIN { printf "%.1f", B * H * T * (T + 1) / 2 * 4 * D / (ms * 1e6) }')
    echo "| $B | $NH | $T | $DH | $th | $sm | $pm | ${rm}x | $gf |"
  done
done
