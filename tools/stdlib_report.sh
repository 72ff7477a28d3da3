#!/usr/bin/env bash
# tools/stdlib_report.sh [SEQC]
#   Prints `seqc --report` for every std cell (stdlib/*.seq, sorted), each
#   headed by its file: the source of the class and strategy columns of
#   docs/stdlib.md. SEQC defaults to build/seqc (or $SEQC).
set -euo pipefail
cd "$(dirname "$0")/.."
seqc=${1:-${SEQC:-build/seqc}}
if [ ! -x "$seqc" ]; then
  echo "stdlib_report.sh: no seqc at $seqc (build it, or pass its path)" >&2
  exit 1
fi
status=0
for f in stdlib/*.seq; do
  echo "== $f"
  "$seqc" --report "$f" || status=1
done
exit $status
