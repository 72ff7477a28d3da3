#!/usr/bin/env bash
# tools/fuzz.sh TARGET SECONDS [libFuzzer args...]
#   TARGET is frontend, run, forms, npy or safetensors (fuzz/fuzz_TARGET.c).
# Builds the libFuzzer targets with clang-19 in build-fuzz (once; rebuilt when
# sources change) and runs one for SECONDS. The working corpus grows in
# build-fuzz/corpus/TARGET (not committed); it is seeded from the committed
# tests/fuzz/TARGET/ (small malformed inputs and every regression input) and
# from the repository's own fixtures, read in place. Crashes are written to
# build-fuzz/crashes/TARGET/; the exit status is nonzero if one was found.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: tools/fuzz.sh frontend|run|forms|npy|safetensors SECONDS [libFuzzer args]}"
seconds="${2:?usage: tools/fuzz.sh TARGET SECONDS}"
shift 2
case "$target" in
  frontend | run | forms | npy | safetensors) ;;
  *) echo "fuzz.sh: unknown target '$target' (frontend, run, forms, npy, safetensors)" >&2; exit 2 ;;
esac

cc="${SEQ_FUZZ_CC:-clang-19}"
build="${SEQ_FUZZ_BUILD_DIR:-build-fuzz}"
if ! command -v "$cc" >/dev/null; then
  echo "fuzz.sh: $cc not found (tools/setup.sh installs clang-19 and libclang-rt-19-dev)" >&2
  exit 2
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC="$cc" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSEQ_FUZZ=ON >/dev/null
fi
cmake --build "$build" --target "fuzz_$target" -j"${SEQ_FUZZ_JOBS:-2}" >/dev/null

# Read-only seed directories: the committed corpus first, then fixtures in place.
seeds=("tests/fuzz/$target")
case "$target" in
  frontend | run) seeds+=(examples stdlib tests/golden/parse tests/golden/diag) ;;
  forms) seeds+=(examples stdlib tests/data/models) ;;
  npy) seeds+=(tests/data/io/npy/good tests/data/io/npy/bad examples/data) ;;
  safetensors) seeds+=(tests/data/io/st/good tests/data/io/st/bad examples/data) ;;
esac
existing=()
for d in "${seeds[@]}"; do [ -d "$d" ] && existing+=("$d"); done

corpus="$build/corpus/$target"
crashes="$build/crashes/$target"
mkdir -p "$corpus" "$crashes"
dict=()
dictname="$target"
[ "$target" = run ] || [ "$target" = forms ] && dictname=frontend
[ -f "fuzz/$dictname.dict" ] && dict=(-dict="$(pwd)/fuzz/$dictname.dict")
# Imports in fuzzed sources resolve relative to the working directory: run in
# an empty one so the fuzzer cannot read or depend on arbitrary repository files.
work="$build/work/$target"
mkdir -p "$work"
root="$(pwd)"
cd "$work"
abs=()
for d in "${existing[@]}"; do abs+=("$root/$d"); done
exec "$root/$build/fuzz_$target" "$root/$corpus" "${abs[@]}" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$root/$crashes/" -print_final_stats=1 "${dict[@]}" "$@"
