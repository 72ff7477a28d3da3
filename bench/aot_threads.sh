#!/usr/bin/env bash
# Thread scaling of AOT-compiled std LSTM/GRU (T=1024, I=H=256) against PyTorch, for a machine
# without LLVM (the .so files need only libc): prepare here with
#   mkdir -p build-dev && gcc -O2 bench/bench_aot.c -ldl -o build-dev/bench_aot
#   gcc -O2 bench/fma_peak.c -lpthread -lm -o build-dev/fma_peak
#   gcc -O3 -I. bench/gemm_bench.c runtime/cpu_gemm.c runtime/cpu_pool.c runtime/cpu_forward.c runtime/cpu_warm.c \
#     -pthread -lm -o build-dev/gemm_bench
#   for v in x86-64-v3 x86-64-v4; do for m in lstm gru; do
#     build/seqc stdlib/$m.seq --dims I=256,H=256 --target-cpu=$v -o build-dev/lib${m}_$v.so; done; done
#   for m in lstm gru; do build/seqc stdlib/$m.seq --dims I=256,H=256 -o build-dev/lib${m}_host.so; done
# then run `bench/aot_threads.sh` there from the source tree (OUT=dir for the log).
OUT="${OUT:-.}"
exec > >(tee "$OUT/aot_threads.log") 2>&1
set -x
nproc; lscpu | grep -E "Model name|Model:|Socket|Core|Thread|NUMA node\(s\)|L2|L3"
grep -m1 '^flags' /proc/cpuinfo
uptime
V=x86-64-v3; grep -q avx512f /proc/cpuinfo && V=x86-64-v4; echo target=$V
timeout 20 build-dev/fma_peak 8 || true
# The GEMM kernel the runtime picks on this machine, and its speed at the RNN's shapes.
for th in 1 8; do timeout 60 build-dev/gemm_bench $th || true; done
grep -q avx512_fp16 /proc/cpuinfo && V=host; echo using=$V
for th in 1 2 4 8; do
  SEQ_NUM_THREADS=$th timeout 60 build-dev/bench_aot build-dev/liblstm_$V.so lstm 526336 256 256 1024 5 1 8 64
  SEQ_NUM_THREADS=$th timeout 60 build-dev/bench_aot build-dev/libgru_$V.so gru 394752 256 256 1024 5 1 8 64
done
PY=python3; $PY -c "import torch; print(torch.__version__, torch.__config__.show())" 2>&1 | head -30
for th in 1 2 4 8; do TORCH_SHAPE_BUDGET_S=10 timeout 90 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PY bench/torch_rnn.py $th 5 || true; done
uptime
