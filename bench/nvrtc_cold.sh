#!/usr/bin/env bash
# Cold NVRTC time per std cell (issue: "cold NVRTC time per model is
# reported"): for each cell at the dims of docs/stdlib.md, the wall time of
# `seqc --emit=ptx` (render + NVRTC to PTX, cache off) minus that of
# `seqc --emit=cuda` (render only), median of 3 each, and the cubin time
# (`--emit=ptx` cannot make one: measured through test_cuda_gen's average).
# Usage: bench/nvrtc_cold.sh [SEQC] [ARCH]
set -euo pipefail
cd "$(dirname "$0")/.."
seqc=${1:-build-perf/seqc}
arch=${2:-sm_90}
cells=(
  "lstm I=256,H=256" "gru I=256,H=256" "rnn I=256,H=256" "mingru I=256,H=256"
  "minlstm I=256,H=256" "lru H=256,N=256" "s4d H=256,N=64" "s5 H=256,P=256"
  "mamba_ssm d_inner=512,d_state=16,dt_rank=16"
  "mamba d_model=256,d_inner=512,d_state=16,d_conv=4,dt_rank=16"
  "mamba2 d_model=256,ngroups=1,hpg=8,headdim=64,d_state=64,d_conv=4"
  "linear_attention I=256,NH=4,Dk=64,Dv=64" "retnet I=256,NH=4,P=32,Dv=64"
  "gla I=256,NH=4,Dk=64,Dv=64,R=16" "mlstm I=256,NH=4,DH=64" "slstm I=256,H=256"
  "deltanet I=256,NH=4,Dk=64,Dv=64" "gated_deltanet I=256,NH=4,Dk=64,Dv=64"
  "deltaproduct I=256,Dk=64,Dv=64" "rwkv7 C=256,D_w=64,D_a=64,D_g=128"
  "plstm I=256,Dk=64,Dv=64,J=4" "gam D=256,Mem=64,K=4" "paragru I=256,H=256"
  "paralstm I=256,H=256"
)
med3() { sort -g | sed -n 2p; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'; }
echo "| cell | kernels | render s | NVRTC to PTX ($arch) s |"
echo "|---|---|---|---|"
for c in "${cells[@]}"; do
  set -- $c
  f="stdlib/$1.seq"
  k=$("$seqc" --emit=cuda "$f" --dims "$2" | grep -c '__global__')
  r=$(for i in 1 2 3; do secs "$seqc" --emit=cuda "$f" --dims "$2"; done | med3)
  p=$(for i in 1 2 3; do SEQ_CUDA_CACHE=off secs "$seqc" --emit=ptx --cuda-arch="$arch" "$f" --dims "$2"; done | med3)
  printf "| %s | %d | %.3f | %.3f |\n" "$1" "$k" "$r" "$(awk -v p="$p" -v r="$r" 'BEGIN { print p - r }')"
done
