#!/bin/sh
# run.sh - every CPU benchmark of issue 3 in one run, and a table of them:
# LSTM and GRU forward at T=1024, I=H=256, B in {1, 8, 64}, one thread and two,
# seqc (JIT) against PyTorch CPU, this machine's fp32 FMA peak (bench/fma_peak.c)
# and the achieved fraction of it, and compile times (seqc to .so, and JIT).
#
# usage: bench/run.sh [REPS]      (from the repository root, after a release build)
#   ROUNDS=5           rounds per shape; a round runs seqc, then PyTorch, REPS forwards
#                      each, back to back, so both sides of a pair see the same stretch
#                      of a noisy machine. The table gives the median of the rounds'
#                      medians (in brackets their range) and the median of the
#                      per-round ratios.
#   BUILD=build-perf   the release build directory (cmake -DCMAKE_BUILD_TYPE=Release)
#   TORCH_PY=python    the Python with torch (default: $BUILD/venv/bin/python if
#                      present, else /usr/bin/python3)
#   ISA=avx2           both sides as on an AVX2 machine: seqc's runtime kernels
#                      (SEQ_CPU_ISA=avx2) and generated code (-avx512f), PyTorch's
#                      ATen kernels, MKL and oneDNN (ATEN_CPU_CAPABILITY,
#                      MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA); "% of peak" is
#                      then against the AVX2 FMA peak
# Raw output goes to $BUILD/bench/raw.txt, the table to stdout.
set -eu
REPS=${1:-7}
ROUNDS=${ROUNDS:-5}
BUILD=${BUILD:-build-perf}
OUT=$BUILD/bench
mkdir -p "$OUT"
if [ -z "${TORCH_PY:-}" ]; then
  if [ -x "$BUILD/venv/bin/python" ]; then TORCH_PY=$BUILD/venv/bin/python; else TORCH_PY=/usr/bin/python3; fi
fi
CC=${CC:-gcc}
ISA=${ISA:-best}
case "$ISA" in
  best) SEQ_ENV="" TORCH_ENV="" ;;
  avx2)
    SEQ_ENV="SEQ_CPU_ISA=avx2 BENCH_TARGET_FEATURES=-avx512f"
    TORCH_ENV="ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
    ;;
  *) echo "run.sh: ISA must be best or avx2" >&2; exit 2 ;;
esac
$CC -O2 -pthread bench/fma_peak.c -o "$OUT/fma_peak"
$CC -O2 -Iinclude bench/bench_rnn.c -L"$BUILD" -lseq -Wl,-rpath,"$PWD/$BUILD" -o "$OUT/bench_rnn"
$CC -O3 -I. bench/gemm_bench.c runtime/cpu_gemm.c runtime/cpu_pool.c runtime/cpu_forward.c runtime/cpu_warm.c \
  -pthread -lm -o "$OUT/gemm_bench"
RAW=$OUT/raw.txt
: >"$RAW"
{
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs"
  echo "compiler: $($CC --version | head -1)"
  echo "seqc: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "isa: $ISA"
} >>"$RAW"

# shellcheck disable=SC2086 # the settings are words
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $TORCH_ENV "$TORCH_PY" -W ignore bench/torch_rnn.py 1 1 none 0 >>"$RAW"
"$OUT/fma_peak" 2 >>"$RAW"
for t in 1 2; do
  # shellcheck disable=SC2086
  env $SEQ_ENV "$OUT/gemm_bench" "$t" >>"$RAW"
  for m in lstm gru; do
    for b in 1 8 64; do
      for r in $(seq "$ROUNDS"); do
        # shellcheck disable=SC2086
        env $SEQ_ENV "$OUT/bench_rnn" "examples/$m.seq" "$t" "$REPS" "$b" | sed -n "s/^ *B=/seqc $m threads=$t round=$r B=/p" >>"$RAW"
        # PyTorch reads these two from the environment of this command only.
        # shellcheck disable=SC2086
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $TORCH_ENV "$TORCH_PY" -W ignore bench/torch_rnn.py "$t" "$REPS" "$m" "$b" |
          sed -n "s/^torch \([A-Z]*\) threads=\([0-9]*\) /torch \1 threads=\2 round=$r /p" >>"$RAW"
      done
    done
  done
done
"$OUT/fma_peak" 2 >>"$RAW"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"

# Compile times of the std LSTM: seqc to a shared object (the whole CLI run,
# linking included) and the JIT (seq_module_from_file), five runs each.
for i in 1 2 3 4 5; do
  s=$(date +%s%N)
  "$BUILD/seqc" stdlib/lstm.seq --dims I=256,H=256 -o "$OUT/liblstm.so"
  e=$(date +%s%N)
  echo "compile aot_so_ms=$(((e - s) / 1000000))" >>"$RAW"
  "$OUT/bench_rnn" stdlib/lstm.seq 1 1 1 | sed -n 's/.*jit_compile_ms=\([0-9.]*\).*/compile jit_ms=\1/p' >>"$RAW"
done

/usr/bin/python3 - "$RAW" <<'EOF'
import re, statistics, sys
raw = open(sys.argv[1]).read().splitlines()
# The peak the fractions are of: the widest ISA fma_peak measured (it prints
# that one first: AVX-512's, or AVX2's on a machine without AVX-512), or
# AVX2's under ISA=avx2.
isa = next((m[1] for m in (re.match(r"fma_peak isa=(\w+)", l) for l in raw) if m), "avx512")
for line in raw:
    if line == "isa: avx2": isa = "avx2"
peak = {}      # threads -> max over the runs of the median-burst GFLOP/s of that ISA
ours, torch = {}, {}
aot, jit = [], []
model = None
for line in raw:
    m = re.match(rf"fma_peak isa={isa} threads=(\d+) gflops_median=([\d.]+)", line)
    if m:
        t = int(m[1]); peak[t] = max(peak.get(t, 0), float(m[2]))
    m = re.match(r"seqc (\w+) threads=(\d+) round=(\d+) B=(\d+)\s+forward_ms=([\d.]+)", line)
    if m:
        ours.setdefault((m[1].upper(), int(m[2]), int(m[4])), {})[int(m[3])] = float(m[5])
    m = re.match(r"torch (\w+) threads=(\d+) round=(\d+) B=(\d+) forward_ms=([\d.]+)", line)
    if m:
        torch.setdefault((m[1], int(m[2]), int(m[4])), {})[int(m[3])] = float(m[5])
    m = re.match(r"compile aot_so_ms=(\d+)", line)
    if m: aot.append(float(m[1]))
    m = re.match(r"compile jit_ms=([\d.]+)", line)
    if m: jit.append(float(m[1]))
for line in raw:
    if line.startswith(("machine", "compiler", "seqc:", "isa:", "torch version", "load average", "gemm")):
        print(line)
print(f"fp32 FMA peak ({'AVX2' if isa == 'avx2' else 'AVX-512'}, median 1 ms burst, best of two runs): "
      + ", ".join(f"{t} thread{'s' if t > 1 else ''} {p:.0f} GFLOP/s" for t, p in sorted(peak.items())))
print()
print("| model | threads | B | seqc ms | PyTorch ms | PyTorch / seqc (rounds) | seqc GFLOP/s | seqc % of peak | PyTorch % of peak |")
print("|---|---|---|---|---|---|---|---|---|")
T, I, H = 1024, 256, 256
for name, gates in (("LSTM", 4), ("GRU", 3)):
    for t in (1, 2):
        for b in (1, 8, 64):
            so, po = ours.get((name, t, b)), torch.get((name, t, b))
            if not so or not po:
                continue
            ss, ps = list(so.values()), list(po.values())
            s, p = statistics.median(ss), statistics.median(ps)
            # Ratio per round (seqc and PyTorch back to back), then their median.
            ratios = [po[r] / so[r] for r in so if r in po]
            rr = statistics.median(ratios)
            rng = lambda v: f" [{min(v):.1f}-{max(v):.1f}]" if len(v) > 1 else ""
            rrng = f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""
            gf = 2.0 * b * T * (I + H) * gates * H * 1e-9
            pk = peak.get(t, float("nan"))
            print(f"| {name} | {t} | {b} | {s:.1f}{rng(ss)} | {p:.1f}{rng(ps)} | {rr:.2f}{rrng} | "
                  f"{gf / s * 1e3:.0f} | {100 * gf / s * 1e3 / pk:.0f}% | {100 * gf / p * 1e3 / pk:.0f}% |")
print()
if aot: print(f"std LSTM compile, seqc to .so (whole CLI run): median {statistics.median(aot):.0f} ms of {len(aot)}")
if jit: print(f"std LSTM compile, JIT (seq_module_from_file): median {statistics.median(jit):.0f} ms of {len(jit)}")
EOF
