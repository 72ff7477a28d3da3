#!/usr/bin/env bash
# bench/roofline.sh [ROUNDS] [ONLY]
#   Every std cell, sequential against auto in paired rounds
#   (bench/forms.c), at B=8 T=4096 and B=1 T=16384, on 1 and 2 threads, and
#   each against its roofline: the cell's minimal work per token (seqc --report
#   --dims: flops of everything that varies per token; bytes of inputs and
#   outputs, plus the weights once per call) at this machine's FMA peak
#   (bench/fma_peak.c) and STREAM triad bandwidth (bench/stream.c), both
#   measured in the same run, for that many cores. Needs a Release build in
#   build-perf (cmake -S . -B build-perf -DCMAKE_BUILD_TYPE=Release). Prints a
#   Markdown table; raw lines go to build-perf/bench/roofline.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
only=${2:-}
out=build-perf/bench
mkdir -p "$out"
raw="$out/roofline.txt"
: > "$raw"
gcc -O2 -march=native -pthread bench/fma_peak.c -o "$out/fma_peak"
gcc -O3 -march=native -pthread bench/stream.c -o "$out/stream"
gcc -O2 -Iinclude bench/forms.c -Lbuild-perf -lseq -lm -Wl,-rpath,"$PWD/build-perf" -o "$out/forms"
seqc=build-perf/seqc

"$out/fma_peak" | tee -a "$raw"
"$out/stream" 2 | tee -a "$raw"
# The widest ISA's peak (fma_peak prints it first; AVX2 follows on an AVX-512
# machine), the one generated code uses.
peak1=$(awk '/fma_peak/ && /threads=1/ && !n++ {sub("gflops_median=","",$4); print $4}' "$raw")
peak2=$(awk '/fma_peak/ && /threads=2/ && !n++ {sub("gflops_median=","",$4); print $4}' "$raw")
bw1=$(awk '/^stream triad threads=1/ {sub("GB/s=","",$4); print $4}' "$raw")
bw2=$(awk '/^stream triad threads=2/ {sub("GB/s=","",$4); print $4}' "$raw")

# Every std cell at the dims of docs/stdlib.md.
cells=(
  "lstm I=256,H=256" "gru I=256,H=256" "rnn I=256,H=256" "mingru I=256,H=256"
  "minlstm I=256,H=256" "lru H=256,N=256" "s4d H=256,N=64" "lssl H=256,N=16"
  "lssl_zoh H=256,N=16" "s5 H=256,P=256"
  "mamba_ssm d_inner=512,d_state=16,dt_rank=16"
  "mamba d_model=256,d_inner=512,d_state=16,d_conv=4,dt_rank=16"
  "mamba2 d_model=256,ngroups=1,hpg=8,headdim=64,d_state=64,d_conv=4"
  "linear_attention I=256,NH=4,Dk=64,Dv=64" "retnet I=256,NH=4,P=32,Dv=64"
  "gla I=256,NH=4,Dk=64,Dv=64,R=16" "mlstm I=256,NH=4,DH=64" "slstm I=256,H=256"
  "deltanet I=256,NH=4,Dk=64,Dv=64" "gated_deltanet I=256,NH=4,Dk=64,Dv=64"
  "deltaproduct I=256,Dk=64,Dv=64" "rwkv7 C=256,D_w=64,D_a=64,D_g=128"
  "plstm I=256,Dk=64,Dv=64,J=4" "gam D=256,Mem=64,K=4" "paragru I=256,H=256"
  "paralstm I=256,H=256" "titans I=256,D=64,Dh=128" "lightnet I=256,NH=4,Dk=64,Dv=64"
)
echo
echo "FMA peak ${peak1}/${peak2} GFLOP/s, STREAM triad ${bw1}/${bw2} GB/s (1/2 threads)"
echo
echo "| cell | B, T | threads | auto's forms | sequential tok/s | auto tok/s | auto / seq | roofline tok/s | auto % of roofline |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in "${cells[@]}"; do
  set -- $c
  name=$1 dims=$2
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  for shape in "8 4096" "1 16384"; do
    set -- $shape
    B=$1 T=$2
    for th in 1 2; do
      rep=$("$seqc" --report "stdlib/$name.seq" --dims "$dims" --batch "$B" --threads "$th")
      echo "$rep" >> "$raw"
      forms=$(echo "$rep" | awk '/^  state [^ ]+: [a-z]+ \(/ {printf "%s%s=%s", sep, $2, $3; sep=","}' | tr -d ':')
      read -r fl io wb < <(echo "$rep" | awk '/per token, any form/ {print $5, $7, $13}' | tr -d ',')
      line=$("$out/forms" "stdlib/$name.seq" "$dims" "$B" "$T" "$th" "$rounds")
      echo "$line" >> "$raw"
      seqt=$(echo "$line" | sed 's/.*seq_tokens_per_s=\([0-9.]*\).*/\1/')
      autot=$(echo "$line" | sed 's/.*auto_tokens_per_s=\([0-9.]*\).*/\1/')
      ratio=$(echo "$line" | sed 's/.*ratio=\([0-9.]*\).*/\1/')
      peak=$([ "$th" = 1 ] && echo "$peak1" || echo "$peak2")
      bw=$([ "$th" = 1 ] && echo "$bw1" || echo "$bw2")
      roof=$(awk -v fl="$fl" -v io="$io" -v wb="$wb" -v B="$B" -v T="$T" -v pk="$peak" -v bw="$bw" \
        'BEGIN { t = fl / (pk * 1e9); m = (io + wb / (B * T)) / (bw * 1e9); if (m > t) t = m; printf "%.0f", 1 / t }')
      pct=$(awk -v a="$autot" -v r="$roof" 'BEGIN { printf "%.1f%%", 100 * a / r }')
      echo "| $name | $B, $T | $th | $forms | $seqt | $autot | ${ratio}x | $roof | $pct |"
    done
  done
done
