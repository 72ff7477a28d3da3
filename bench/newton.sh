#!/usr/bin/env bash
# bench/newton.sh [ROUNDS]
#   The Newton form (--strategy=newton) against the step loop, in paired
#   rounds (bench/forms.c): ParaGRU (a diagonal Jacobian) and ParaLSTM (2x2
#   blocks), exact Newton, and GRU (dense: quasi-Newton, and exact Newton
#   with the Jacobian formed whole; at D = 256 that is 256 evaluations of the
#   step per iteration, about a minute for T = 4096 on one core, so T = 65536
#   is left out there) at B=1, D = I = H in {16, 256}, T
#   in {4096, 65536}, on 1 and 2 threads: throughput of each, their ratio,
#   the Newton iterations, and the process's peak memory (both modules).
#   Needs a Release build in build-perf. Prints a Markdown table; raw lines
#   go to build-perf/bench/newton.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=build-perf/bench
mkdir -p "$out"
raw="$out/newton.txt"
: > "$raw"
gcc -O2 -Iinclude bench/forms.c -Lbuild-perf -lseq -lm -Wl,-rpath,"$PWD/build-perf" -o "$out/forms"
echo "| cell | D | T | threads | step loop tok/s | newton tok/s | newton / step loop (median of rounds) | iterations (mean, max) | fallbacks | peak memory |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for form in paragru:newton paralstm:newton gru:newton gru:newton-dense; do
  cell=${form%%:*} strategy=${form#*:}
  for D in 16 256; do
    for T in 4096 65536; do
      [ "$strategy" = newton-dense ] && [ "$D" -gt 16 ] && [ "$T" -gt 4096 ] && continue
      for th in 1 2; do
        log=$( { /usr/bin/time -f "maxrss_kb=%M" "$out/forms" "stdlib/$cell.seq" "I=$D,H=$D" 1 "$T" \
          "$th" "$rounds" "$strategy"; } 2>&1 )
        echo "$log" >> "$raw"
        line=$(echo "$log" | grep '^forms ')
        nl=$(echo "$log" | grep '^newton ' || true)
        seqt=$(echo "$line" | sed 's/.*seq_tokens_per_s=\([0-9.]*\).*/\1/')
        newt=$(echo "$line" | sed 's/.*newton[-a-z]*_tokens_per_s=\([0-9.]*\).*/\1/')
        ratio=$(echo "$line" | sed 's/.*ratio=\([0-9.]*\).*/\1/')
        im=$(echo "$nl" | sed 's/.*iterations_mean=\([0-9.]*\).*/\1/')
        ix=$(echo "$nl" | sed 's/.*iterations_max=\([0-9]*\).*/\1/')
        fb=$(echo "$nl" | sed 's/.*fallbacks=\([0-9]*\).*/\1/')
        rss=$(echo "$log" | sed -n 's/.*maxrss_kb=\([0-9]*\).*/\1/p')
        name=$cell
        [ "$strategy" = newton-dense ] && name="$cell (dense J)"
        echo "| $name | $D | $T | $th | $seqt | $newt | ${ratio}x | $im, $ix | $fb | $((rss / 1024)) MiB |"
      done
    done
  done
done
# Warm starts (SeqOptions.newton_warm) against cold Newton solves, at D = 256,
# T = 4096, B = 1: the same input every forward (each solve starts at its
# answer), and an input that moves by 1% of its scale before each forward.
echo
echo "| cell | threads | warm starts | cold newton tok/s | warm newton tok/s | warm / cold (median of rounds) | iterations (mean, max) |"
echo "|---|---|---|---|---|---|---|"
for cell in paragru paralstm; do
  for th in 1 2; do
    for strategy in newton-warm newton-drift; do
      log=$("$out/forms" "stdlib/$cell.seq" "I=256,H=256" 1 4096 "$th" "$rounds" "$strategy" \
        newton "$th" 2>&1)
      echo "$log" >> "$raw"
      line=$(echo "$log" | grep 'forms ')
      nl=$(echo "$log" | grep '^newton ' || true)
      cold=$(echo "$line" | sed 's/.*seq_tokens_per_s=\([0-9.]*\).*/\1/')
      warm=$(echo "$line" | sed 's/.*newton-[a-z]*_tokens_per_s=\([0-9.]*\).*/\1/')
      ratio=$(echo "$line" | sed 's/.*ratio=\([0-9.]*\).*/\1/')
      im=$(echo "$nl" | sed 's/.*iterations_mean=\([0-9.]*\).*/\1/')
      ix=$(echo "$nl" | sed 's/.*iterations_max=\([0-9]*\).*/\1/')
      what="same input"
      [ "$strategy" = newton-drift ] && what="input moved 1%"
      echo "| $cell | $th | $what | $cold | $warm | ${ratio}x | $im, $ix |"
    done
  done
done
