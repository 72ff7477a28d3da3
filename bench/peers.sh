#!/usr/bin/env bash
# bench/peers.sh [ROUNDS] [ONLY]
#   seqc's auto form against the PyTorch CPU peer written chunkwise
#   (bench/torch_chunked.py) for linear attention, GLA, mLSTM and Mamba-2 at
#   the dims of docs/stdlib.md, B=8 T=4096 and B=1 T=16384, 1 and 2 threads,
#   in paired rounds: each round one timed forward of seqc (bench/forms.c, its
#   auto side) and then of PyTorch (one forward after a warm-up), back to
#   back. Prints a Markdown table of the medians and of the per-round ratios.
#   Needs a Release build in build-perf and the venv of bench/venv.sh; run
#   under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`. Raw lines go to
#   build-perf/bench/peers.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
only=${2:-}
out=build-perf/bench
py=${PYTHON:-build-perf/venv/bin/python}
mkdir -p "$out"
raw="$out/peers.txt"
: > "$raw"
gcc -O2 -Iinclude bench/forms.c -Lbuild-perf -lseq -lm -Wl,-rpath,"$PWD/build-perf" -o "$out/forms"

cells=(
  "linear_attention LinearAttention I=256,NH=4,Dk=64,Dv=64"
  "gla GLA I=256,NH=4,Dk=64,Dv=64,R=16"
  "mlstm MLSTM I=256,NH=4,DH=64"
  "mamba2 Mamba2 d_model=256,ngroups=1,hpg=8,headdim=64,d_state=64,d_conv=4"
)
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| cell | B, T | threads | seqc auto tok/s | PyTorch chunked tok/s | seqc / PyTorch |"
echo "|---|---|---|---|---|---|"
for c in "${cells[@]}"; do
  set -- $c
  name=$1 model=$2 dims=$3
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  for shape in "8 4096" "1 16384"; do
    set -- $shape
    B=$1 T=$2
    for th in 1 2; do
      s_list=() t_list=() r_list=()
      for ((k = 0; k < rounds; k++)); do
        line=$("$out/forms" "stdlib/$name.seq" "$dims" "$B" "$T" "$th" 1)
        echo "$line" >> "$raw"
        s=$(echo "$line" | sed 's/.*auto_tokens_per_s=\([0-9.]*\).*/\1/')
        tl=$("$py" bench/torch_chunked.py "$model" "$B" "$T" "$th" 1 --dims "$dims")
        echo "$tl" >> "$raw"
        ms=$(echo "$tl" | sed 's/.*median_ms=\([0-9.]*\).*/\1/')
        t=$(awk -v ms="$ms" -v n=$((B * T)) 'BEGIN { printf "%.0f", n / (ms / 1000) }')
        s_list+=("$s") t_list+=("$t")
        r_list+=("$(awk -v a="$s" -v b="$t" 'BEGIN { printf "%.3f", a / b }')")
      done
      sm=$(printf '%s\n' "${s_list[@]}" | median)
      tm=$(printf '%s\n' "${t_list[@]}" | median)
      rm=$(printf '%s\n' "${r_list[@]}" | median)
      printf '| %s | %s, %s | %s | %.0f | %.0f | %.2fx |\n' "$name" "$B" "$T" "$th" "$sm" "$tm" "$rm"
    done
  done
done
