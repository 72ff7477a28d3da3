#!/usr/bin/env bash
# gpu-check.sh - the one prepared script for a session with a GPU (docs/cuda.md, "Checking on a
# GPU: tools/gpu-check.sh"). In order, each step saying how it ended, none stopping the next:
#   1. build: seqc, the GPU tests and bench/cuda_bench.c, Release, in build-gpu (or, where a
#      build dependency is missing, the prebuilt bundle that --bundle made, if it was carried)
#   2. the card (nvidia-smi -L), the driver, NVRTC; a smoke run on the device
#   3. the GPU tests: ctest -L gpu (every example and std cell against the interpreter on the
#      device, NVRTC, the cache, the driver layer)
#   4. benchmarks of seqc's CUDA backend (bench/cuda_bench.c), each under its own timeout,
#      beside the device's copy bandwidth and PyTorch (bench/cuda_peers.py), as a Markdown table
# It aims at about 5 minutes on a 16-core machine and stops starting steps when its budget is
# spent. Logs go to build-gpu/gpu-check-logs/ and, where $OUT is set (the device tool's), to
# $OUT too.
#
# usage: tools/gpu-check.sh [--bundle] [--no-tests] [--no-bench] [--no-peers]
#   --bundle    on a machine without a GPU, before the GPU session: build build-gpu here and pack
#               what steps 2-4 run (seqc, test_cuda_gen, test_cuda_rt, cuda_bench, the CTest
#               files) with the shared libraries they need beyond glibc and libstdc++ (libLLVM,
#               jansson, xxhash, cmocka, ...) into build-gpu-bundle/seqc-gpu.tar.xz. Carry that
#               folder to the GPU machine (the device tool's carry: ["build-gpu-bundle"]); the
#               check there uses it when it cannot build (no LLVM, flex, bison, ... on that image).
# environment:
#   GPU_CHECK_BUDGET_S   the whole check's wall-clock budget in seconds (default 540)
#   GPU_CHECK_JOBS       build jobs (default 16)
#   GPU_CHECK_EMU=1      also run test_cuda_gen_emulated, the CPU emulation of every case (CI
#                        runs it; here it is left out to leave the time to the device)
#   GPU_CHECK_USE_BUNDLE=1  use the bundle even where a build could be made
#   PYTHON               the Python with torch (default python3)
# exit status: 0 when every step that ran passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1
root=$PWD
bdir=build-gpu
bundle_dir=build-gpu-bundle
bundle=$bundle_dir/seqc-gpu.tar.xz
jobs=${GPU_CHECK_JOBS:-16}
python=${PYTHON:-python3}
ld_orig=${LD_LIBRARY_PATH:-}

mode=check tests=1 benches=1 peers=1
for a in "$@"; do
  case $a in
    --bundle) mode=bundle ;;
    --no-tests) tests=0 ;;
    --no-bench) benches=0 ;;
    --no-peers) peers=0 ;;
    -h | --help)
      sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu-check: unknown argument '$a' (--bundle, --no-tests, --no-bench, --no-peers)" >&2
      exit 1
      ;;
  esac
done

# --bundle builds on a machine of few cores: its budget is an hour.
budget=${GPU_CHECK_BUDGET_S:-$([ "$mode" = bundle ] && echo 3600 || echo 540)}
build_limit=$([ "$mode" = bundle ] && echo 3000 || echo 420)
t_start=$(date +%s)
deadline=$((t_start + budget))
logs=$bdir/gpu-check-logs
mkdir -p "$logs"
out_dir=${OUT:-}
if [ -n "$out_dir" ] && mkdir -p "$out_dir" 2>/dev/null; then
  exec > >(tee -a "$out_dir/gpu-check.log") 2>&1
else
  out_dir=
fi

failed=()
left() { echo $((deadline - $(date +%s))); }
elapsed() { echo $(($(date +%s) - t_start)); }
say() { printf '%s\n' "$*"; }
# A message fit for a table cell: one line, no '|'.
cell() { tr '\n|' ' /' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-"${2:-140}"; }

# step NAME LIMIT LOG SHOW CMD...: CMD under `timeout`, at most LIMIT seconds and never past the
# budget (a shell function runs without one); its output in LOG (and on the console when SHOW is
# 1). Prints how it ended; returns CMD's status, 124 when it timed out, 125 when it was not
# started (budget spent).
step() {
  local name=$1 limit=$2 log=$3 show=$4
  shift 4
  local l rc t0
  l=$(left)
  if [ "$l" -lt 15 ]; then
    say "== $name: SKIPPED (the ${budget} s budget is spent)"
    echo "skipped: the ${budget} s budget was spent" >"$log"
    failed+=("$name (skipped: budget)")
    return 125
  fi
  [ "$limit" -gt "$l" ] && limit=$l
  t0=$(date +%s)
  local run=(timeout -k 10 "$limit")
  declare -F "$1" >/dev/null && run=()
  if [ "$show" = 1 ]; then
    "${run[@]}" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    "${run[@]}" "$@" >"$log" 2>&1
    rc=$?
  fi
  local dt=$(($(date +%s) - t0))
  case $rc in
    0) say "== $name: ok (${dt} s)" ;;
    124 | 137)
      say "== $name: TIMED OUT after ${limit} s"
      rc=124
      failed+=("$name (timed out)")
      ;;
    *)
      say "== $name: FAILED (exit $rc, ${dt} s); log: $log"
      failed+=("$name (exit $rc)")
      ;;
  esac
  return "$rc"
}

# ---- 1. build ---------------------------------------------------------------------------------

find_llvm() {
  local c v
  for c in llvm-config-19 llvm-config-18 llvm-config-17 llvm-config; do
    command -v "$c" >/dev/null 2>&1 || continue
    v=$("$c" --version 2>/dev/null | cut -d. -f1)
    [ -n "$v" ] && [ "$v" -ge 17 ] 2>/dev/null && return 0
  done
  return 1
}

# The build dependencies tools/setup.sh installs; prints those missing.
missing_deps() {
  local m=() c
  for c in cmake ctest cc flex bison pkg-config; do
    command -v "$c" >/dev/null 2>&1 || m+=("$c")
  done
  command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || m+=("make or ninja")
  find_llvm || m+=("llvm-config (LLVM >= 17: llvm-19-dev)")
  if command -v pkg-config >/dev/null 2>&1; then
    pkg-config --exists jansson 2>/dev/null || m+=(libjansson-dev)
    pkg-config --exists libxxhash 2>/dev/null || m+=(libxxhash-dev)
  fi
  [ -e /usr/include/cmocka.h ] || [ -e /usr/local/include/cmocka.h ] || m+=(libcmocka-dev)
  echo "${m[*]:-}"
}

# Configure and build what the check runs (a fresh build-gpu unless it is this tree's).
build_from_source() {
  local gen=() home
  if [ -f "$bdir/CMakeCache.txt" ]; then
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$bdir/CMakeCache.txt")
    if [ "$home" != "$root" ]; then
      say "gpu-check: $bdir was configured for $home; configuring it anew"
      rm -rf "$bdir"
      mkdir -p "$logs"
    fi
  fi
  command -v make >/dev/null 2>&1 || gen=(-G Ninja)
  step "configure (cmake -S . -B $bdir -DCMAKE_BUILD_TYPE=Release)" 120 "$logs/configure.log" 0 \
    cmake -S . -B "$bdir" -DCMAKE_BUILD_TYPE=Release "${gen[@]}" || {
    tail -n 25 "$logs/configure.log"
    return 1
  }
  # What ctest -L gpu and the benchmarks run, not the whole tree: the other tests are not
  # run here, and building them would only spend the budget. A test's target is its name.
  mapfile -t gpu_tests < <(ctest --test-dir "$bdir" -N -L gpu | sed -n 's/^ *Test *#[0-9]*: *//p')
  # cuda_bench (bench/cuda_bench.c) is a target of tests/CMakeLists.txt, so CI compiles it.
  step "build (cmake --build $bdir -j$jobs --target seqc seqcg cuda_bench ${gpu_tests[*]})" \
    "$build_limit" "$logs/build.log" 0 \
    cmake --build "$bdir" -j"$jobs" --target seqc seqcg cuda_bench "${gpu_tests[@]}" || {
    grep -E -m 20 'error|Error' "$logs/build.log"
    tail -n 15 "$logs/build.log"
    return 1
  }
}

# --bundle: the programs and the shared libraries they need, in one archive.
make_bundle() {
  local stage bins=() libs lib t b
  bins=("$bdir/seqc" "$bdir/bench/cuda_bench")
  for t in "${gpu_tests[@]}"; do bins+=("$bdir/tests/$t"); done
  stage=$(mktemp -d)
  mkdir -p "$stage/$bdir/tests" "$stage/$bdir/bench" "$stage/$bdir/bundle-lib"
  for b in "${bins[@]}" "$bdir/CTestTestfile.cmake" "$bdir/tests/CTestTestfile.cmake"; do
    cp -p "$b" "$stage/$b" || return 1
  done
  # Beyond glibc and the C++ runtime (which the GPU machine has, newer): libLLVM and what it
  # pulls in, jansson, xxhash, cmocka. The binaries look there through LD_LIBRARY_PATH.
  libs=$(ldd "${bins[@]}" | awk '/=> \// {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libutil|libresolv|ld-linux[^/]*|libgcc_s|libstdc\+\+)\.so')
  for lib in $libs; do cp -L "$lib" "$stage/$bdir/bundle-lib/" || return 1; done
  {
    echo "src=$root"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +uncommitted)"
    echo "built=$(date -u +%Y-%m-%dT%H:%MZ) on $(uname -n), $(ldd --version | head -n 1)"
    echo "libs=$(echo "$libs" | xargs -n1 basename | tr '\n' ' ')"
  } >"$stage/$bdir/bundle-manifest.txt"
  mkdir -p "$bundle_dir"
  tar -C "$stage" -cJf "$bundle" "$bdir" || return 1
  rm -rf "$stage"
  say "gpu-check: $bundle: $(du -h "$bundle" | cut -f1) ($(wc -l <<<"$libs") libraries); manifest:"
  tar -xJOf "$bundle" "$bdir/bundle-manifest.txt" | sed 's/^/  /'
}

# Unpacks the bundle into build-gpu; the tests have this tree's path built in (SEQ_SOURCE_DIR,
# SEQC_BIN), so where it differs from here, that path is made a link to here.
use_bundle() {
  local src
  rm -rf "$bdir"
  mkdir -p "$bdir"
  # tar -J needs the xz program; Python's tarfile reads xz without it.
  tar -xJf "$bundle" 2>/dev/null || "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(".")' "$bundle" || return 1
  mkdir -p "$logs"
  say "gpu-check: using the prebuilt bundle $bundle:"
  sed 's/^/  /' "$bdir/bundle-manifest.txt"
  src=$(sed -n 's/^src=//p' "$bdir/bundle-manifest.txt")
  if [ -n "$src" ] && [ "$src" != "$root" ]; then
    if [ ! -e "$src" ]; then
      mkdir -p "$(dirname "$src")" && ln -s "$root" "$src" &&
        say "gpu-check: linked $src -> $root (the bundle's tests read the sources there)"
    elif [ ! "$src/tools/gpu-check.sh" -ef "$root/tools/gpu-check.sh" ]; then
      say "gpu-check: WARNING: $src exists and is not this tree; the tests read it"
    fi
  fi
  export LD_LIBRARY_PATH="$root/$bdir/bundle-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local nf
  nf=$(ldd "$bdir/seqc" "$bdir/tests/test_cuda_gen" "$bdir/bench/cuda_bench" 2>&1 | grep 'not found')
  if [ -n "$nf" ]; then
    say "gpu-check: the bundle's programs miss libraries here:"
    say "$nf"
    return 1
  fi
}

say "# seqc GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $(uname -n), $(nproc) CPUs)"
built=0
if [ "$mode" = bundle ]; then
  missing=$(missing_deps)
  if [ -n "$missing" ]; then
    say "gpu-check: cannot build here: missing $missing (tools/setup.sh installs them)"
    exit 1
  fi
  build_from_source && make_bundle && {
    say "gpu-check: carry $bundle_dir to the GPU machine (device run: carry [\"$bundle_dir\"])"
    exit 0
  }
  exit 1
fi

missing=$(missing_deps)
if [ "${GPU_CHECK_USE_BUNDLE:-0}" != 1 ] && [ -z "$missing" ]; then
  if build_from_source; then
    built=1
  elif [ -f "$bundle" ]; then
    say "gpu-check: the build failed; using the prebuilt bundle instead"
    use_bundle && built=1
  fi
else
  [ -n "$missing" ] && say "gpu-check: build dependencies missing here: $missing (tools/setup.sh installs them; this machine cannot download)"
  if [ -f "$bundle" ]; then
    if use_bundle; then
      built=1
    else
      say "== unpack the prebuilt bundle: FAILED"
      failed+=("bundle")
    fi
  else
    say "gpu-check: no $bundle either (make it with tools/gpu-check.sh --bundle on a machine with the dependencies, and carry $bundle_dir): seqc's steps are skipped"
    failed+=("build (dependencies missing: $missing)")
  fi
fi
bench=$root/$bdir/bench/cuda_bench

# ---- 2. the card, the driver, NVRTC ---------------------------------------------------------

say ""
say "## The device"
card="(no card)"
driver="?"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 30 nvidia-smi -L || say "nvidia-smi -L failed"
  q=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
  [ -n "$q" ] && card=$(cut -d, -f1 <<<"$q" | sed 's/^ *//') && driver=$(cut -d, -f2 <<<"$q" | sed 's/^ *//')
  cuda_drv=$(timeout 30 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1)
  say "driver $driver${cuda_drv:+, $cuda_drv}${q:+, memory$(cut -d, -f3 <<<"$q")}"
else
  say "nvidia-smi: not found"
fi

# NVRTC: where the runtime's own search (docs/cuda.md) finds none, a toolkit's or a Python
# wheel's (nvidia-cuda-nvrtc) copy.
nvrtc_candidates() {
  {
    ls -1 /usr/local/cuda*/lib64/libnvrtc.so.* /usr/local/cuda*/targets/*/lib/libnvrtc.so.* 2>/dev/null
    local s
    for s in $("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
      find "$s/nvidia" -maxdepth 4 -name 'libnvrtc.so.*' 2>/dev/null
    done
  } | grep -v -e builtins -e '\.alt\.' | sort -u
}
use_nvrtc() {
  export SEQ_NVRTC_LIB=$1
  local d
  d=$(dirname "$1")
  export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "gpu-check: SEQ_NVRTC_LIB=$1"
}
nvrtc_line="?"
device_ok=0
if [ "$built" = 1 ]; then
  # The kernel cache of this check, fresh: the benchmarks' NVRTC times are cold.
  export SEQ_CUDA_CACHE=$root/$bdir/cuda-cache
  rm -rf "$SEQ_CUDA_CACHE"
  info=$("$bench" --info 2>&1)
  if grep -q '^NVRTC:' <<<"$info"; then
    for c in $(nvrtc_candidates); do
      use_nvrtc "$c"
      info=$("$bench" --info 2>&1)
      grep -q '^NVRTC [0-9]' <<<"$info" && break
    done
  fi
  say "$info"
  nvrtc_line=$(sed -n 's/^\(NVRTC [0-9.]*\).*/\1/p' <<<"$info")
  smoke=(stdlib/mingru.seq "I=3,H=4" 2 16 1)
  if step "smoke: cuda_bench ${smoke[*]}" 90 "$logs/smoke.log" 1 "$bench" "${smoke[@]}"; then
    device_ok=1
  elif ! grep -q 'CUDA driver not found\|no CUDA device' "$logs/smoke.log"; then
    # A cubin this driver cannot load (an NVRTC newer than the driver): try the other NVRTCs.
    for c in $(nvrtc_candidates); do
      [ "$c" = "${SEQ_NVRTC_LIB:-}" ] && continue
      use_nvrtc "$c"
      rm -rf "$SEQ_CUDA_CACHE"
      step "smoke again with $c" 90 "$logs/smoke.log" 1 "$bench" "${smoke[@]}" && {
        device_ok=1
        break
      }
    done
  fi
fi
[ "$device_ok" = 1 ] || say "gpu-check: the device does not run seqc's kernels; the benchmarks will fail too (the tests say more)"

# ---- 3. the GPU tests ---------------------------------------------------------------------

if [ "$built" = 1 ] && [ "$tests" = 1 ]; then
  say ""
  say "## ctest -L gpu"
  labels=gpu
  if [ "${GPU_CHECK_EMU:-0}" = 1 ]; then
    labels='gpu|emu'
  else
    say "(test_cuda_gen_emulated, the CPU emulation of each case, is left out here: CI runs it; GPU_CHECK_EMU=1 runs it)"
  fi
  # The tests may take what the benchmarks do not need (about 150 s of them).
  tl=$(($(left) - 150))
  [ "$tl" -gt 360 ] && tl=360
  [ "$tl" -lt 150 ] && tl=150
  step "ctest --test-dir $bdir -L '$labels' --output-on-failure" "$((tl + 20))" "$logs/ctest.log" 1 \
    ctest --test-dir "$bdir" -L "$labels" --output-on-failure --timeout "$tl"
  # Whether the device part ran, or was skipped (ctest counts a skip as a pass).
  if [ -f "$bdir/Testing/Temporary/LastTest.log" ]; then
    say "-- what the tests said about the device:"
    grep -E 'NVRTC: [0-9]+ cubins|^device: |no GPU|SKIPPED|skipped|FAILED|^\[  FAILED' \
      "$bdir/Testing/Temporary/LastTest.log" | sort | uniq -c | sed 's/^ */  /' | head -n 30
    cp "$bdir/Testing/Temporary/LastTest.log" "$logs/ctest-LastTest.log"
  fi
fi

# ---- 4. benchmarks ------------------------------------------------------------------------

declare -A rc_of log_of
# row KEY LIMIT ARGS...: one cuda_bench run, its status and log kept for the table.
row() {
  local key=$1 limit=$2
  shift 2
  log_of[$key]=$logs/bench-$key.log
  if [ "$built" != 1 ]; then
    echo "not built" >"${log_of[$key]}"
    rc_of[$key]=126
    return
  fi
  step "bench $key: cuda_bench $*" "$limit" "${log_of[$key]}" 1 "$bench" "$@"
  rc_of[$key]=$?
}
# A build without the chunked GPU form refuses it by name: expected there, not a failure.
chunked_refused() {
  if [ "${rc_of[$1]}" != 0 ] && grep -q 'cannot run the chunked form' "${log_of[$1]}"; then
    unset 'failed[${#failed[@]}-1]'
    say "   (refused by name: this build has no chunked GPU form for it)"
  fi
}
get() { sed -n "s/^$2 .* $3=\([^ ]*\).*/\1/p" "$1" 2>/dev/null | tail -n 1; }

scan_bytes=$((8 * 65536 * 1536 * 4))
if [ "$benches" = 1 ]; then
  say ""
  say "## Benchmarks (raw)"
  row scan 120 stdlib/s4d.seq H=1536,N=4 8 65536 5
  row scan_bf16 120 --io=bf16 stdlib/s4d.seq H=1536,N=4 8 65536 5
  row copy 60 --copy-bw "$scan_bytes"
  row lstm 90 stdlib/lstm.seq I=256,H=256 64 1024 10
  row gru 90 stdlib/gru.seq I=256,H=256 64 1024 10
  row paragru 150 stdlib/paragru.seq I=256,H=256 1 65536 3 sequential
  row paragru_newton 120 stdlib/paragru.seq I=256,H=256 1 65536 3 newton
  row paragru_b16 60 stdlib/paragru.seq I=256,H=256 16 4096 3 sequential
  row paragru_b16_newton 60 stdlib/paragru.seq I=256,H=256 16 4096 3 newton
  row mamba 120 stdlib/mamba_ssm.seq d_inner=4096,d_state=16,dt_rank=256 1 65536 5
  row gla 90 stdlib/gla.seq I=2048,NH=16,Dk=128,Dv=256,R=16 1 4096 5
  row gla_chunked 90 stdlib/gla.seq I=2048,NH=16,Dk=128,Dv=256,R=16 1 4096 5 chunked
  chunked_refused gla_chunked
  row mlstm 90 stdlib/mlstm.seq I=2048,NH=16,DH=128 1 4096 5
  row mlstm_chunked 90 stdlib/mlstm.seq I=2048,NH=16,DH=128 1 4096 5 chunked
  chunked_refused mlstm_chunked
  row attn 120 bench/attention.seq NH=16,DH=64 1 8192 5
fi
peers_log=$logs/peers.log
: >"$peers_log"
if [ "$peers" = 1 ]; then
  say ""
  say "## PyTorch peers (bench/cuda_peers.py, $python)"
  # The peers run without the bundle's libraries (torch brings its own).
  penv=(env -u CUDA_CASE -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1)
  [ -n "$ld_orig" ] && penv+=(LD_LIBRARY_PATH="$ld_orig")
  step "peers: $python bench/cuda_peers.py 10" 180 "$peers_log" 1 "${penv[@]}" \
    "$python" bench/cuda_peers.py 10
fi

# ---- the table ----------------------------------------------------------------------------

# Why a row has no number: its status and the last message of its log.
why() {
  local key=$1 rc=${rc_of[$1]:-125} log=${log_of[$1]:-/dev/null}
  case $rc in
    124) echo "timed out" ;;
    125) echo "not run (budget or --no-bench)" ;;
    126) echo "not built" ;;
    *) echo "failed (exit $rc): $(grep -E 'cuda_bench: |error: ' "$log" | tail -n 1 | sed 's/^cuda_bench: //' | cell)" ;;
  esac
}
num() { [ -n "$1" ] && echo "$1" || echo "-"; }
# seqc's columns: form, median / min ms, tok/s, in+out GB/s.
seqc_cols() {
  local key=$1 log=${log_of[$1]:-/dev/null}
  if [ "${rc_of[$key]:-125}" = 0 ]; then
    local forms
    forms=$(sed -n 's/^compile: .*: forms \([^;]*\);.*/\1/p' "$log" | tail -n 1)
    printf '%s | %s / %s | %s | %s' "$(num "$forms")" "$(get "$log" result median_ms)" \
      "$(get "$log" result min_ms)" "$(get "$log" result tok_s)" "$(get "$log" result io_GBps)"
  else
    printf '%s | - | - | -' "$(why "$key")"
  fi
}
# seqc's step loop as the peer of its Newton form: label | its ms and tok/s | Newton's speedup.
seq_peer_cols() {
  local key=$1 log=${log_of[$1]:-/dev/null}
  if [ "${rc_of[$key]:-125}" = 0 ]; then
    printf '%s | %s ms, %s tok/s | %s' "seqc's step loop (--strategy=sequential)" \
      "$(get "$log" result median_ms)" "$(get "$log" result tok_s)" \
      "$(ratio "$(get "${log_of[$2]:-/dev/null}" result tok_s)" "$(get "$log" result tok_s)")"
  else
    printf "%s | %s | -" "seqc's step loop" "$(why "$key")"
  fi
}
# A peer's median ms and tok/s from cuda_peers.py's table (column 2 is the case).
peer() {
  awk -F'|' -v k="$1" -v c="$2" '{ g = $2; gsub(/^ +| +$/, "", g); v = $c; gsub(/^ +| +$/, "", v) }
    g == k { print v }' "$peers_log" | tail -n 1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-" }'; }
peer_cols() {
  local key=$1 label=$2 seqc_tok ms tok shape
  seqc_tok=$(get "${log_of[$3]:-/dev/null}" result tok_s)
  ms=$(peer "$key" 6)
  tok=$(peer "$key" 8)
  shape=$(peer "$key" 5)
  if [ -z "$ms" ]; then
    local w
    w=$(grep -m 1 -E 'cuda_peers: (PyTorch|torch .* no)' "$peers_log" | sed 's/^cuda_peers: //' | cell 80)
    printf '%s | no result (%s) | -' "$label" "${w:-not run}"
  elif [[ ! $ms =~ ^[0-9.]+$ ]]; then
    printf '%s | %s | -' "$label" "$(cell <<<"$ms")"
  else
    printf '%s | %s ms, %s tok/s (%s) | %s' "$label" "$ms" "$tok" "$shape" "$(ratio "$seqc_tok" "$tok")"
  fi
}

copy_gbps=$(get "${log_of[copy]:-/dev/null}" copy_bw GBps)
scan_gbps=$(get "${log_of[scan]:-/dev/null}" result io_GBps)
scan_vs=$(awk -v a="$scan_gbps" -v b="$copy_gbps" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.1f%% of the copy", 100 * a / b; else print "-" }')
if [ -n "$copy_gbps" ]; then copy_cell="$copy_gbps GB/s"; else copy_cell=$(why copy); fi
commit=$(git rev-parse --short HEAD 2>/dev/null || sed -n 's/^commit=//p' "$bdir/bundle-manifest.txt" 2>/dev/null)
torch_line=$(grep -m 1 '^cuda_peers: torch' "$peers_log" | sed 's/;.*//; s/^cuda_peers: //')

table() {
  say "## seqc's CUDA backend on ${card} (driver ${driver}, ${nvrtc_line:-NVRTC ?}, commit ${commit:-unknown}); $(date -u +%Y-%m-%d)"
  say ""
  say "fp32 throughout but row 1b. seqc: bench/cuda_bench.c, median and min of timed rt_cu_run calls over device buffers after a warm-up (each call allocates and zeroes its intermediate buffers, launches, synchronizes). GB/s: the inputs' and outputs' bytes per call over the median, an achieved-traffic lower bound. Peers: ${torch_line:-PyTorch: not run}; bench/cuda_peers.py (TF32 off). 'seqc vs peer': seqc's tok/s over the peer's."
  say ""
  say "| # | case | shape | seqc form | seqc ms (median / min) | seqc tok/s | in+out GB/s (lower bound) | set against | its value | seqc vs it |"
  say "|---|---|---|---|---|---|---|---|---|---|"
  say "| 1 | diagonal scan: S4D (stdlib/s4d.seq, H=1536 N=4; the fused scan, no GEMM: x and y [8, 65536, 1536] are its traffic) | B=8 T=65536 | $(seqc_cols scan) | device copy (cuMemcpyDtoD of one [8, 65536, 1536] fp32 tensor, read+write) | $copy_cell | $scan_vs |"
  say "| 1b | the same scan with x and y in bfloat16 (--io=bf16: converted to and from float32 around the run, so its kernels move float32 plus the conversions' traffic) | B=8 T=65536 | $(seqc_cols scan_bf16) | row 1's fp32 call | $(num "$(get "${log_of[scan]:-/dev/null}" result median_ms)") ms | $(ratio "$(get "${log_of[scan_bf16]:-/dev/null}" result tok_s)" "$(get "${log_of[scan]:-/dev/null}" result tok_s)") |"
  say "| 2 | LSTM (stdlib/lstm.seq) | B=64 T=1024 I=H=256 | $(seqc_cols lstm) | $(peer_cols lstm "nn.LSTM, cuDNN" lstm) |"
  say "| 2b | GRU (stdlib/gru.seq) | B=64 T=1024 I=H=256 | $(seqc_cols gru) | $(peer_cols gru "nn.GRU, cuDNN" gru) |"
  say "| 3 | ParaGRU (stdlib/paragru.seq), --strategy=newton (target: >= 10x the step loop) | B=1 T=65536 I=H=256 | $(seqc_cols paragru_newton) | $(seq_peer_cols paragru paragru_newton) |"
  say "| 3b | ParaGRU, --strategy=newton, a wider batch (toward the crossover) | B=16 T=4096 I=H=256 | $(seqc_cols paragru_b16_newton) | $(seq_peer_cols paragru_b16 paragru_b16_newton) |"
  say "| 4 | Mamba selective scan (stdlib/mamba_ssm.seq) | B=1 T=65536 d_inner=4096 d_state=16 dt_rank=256 | $(seqc_cols mamba) | $(peer_cols mamba-ssm "torch, chunked cumsum of log-decays" mamba) |"
  say "| 5 | GLA (stdlib/gla.seq), scan form (a thread per state row: FLA's fused_recurrent) | B=1 T=4096 NH=16 Dk=128 Dv=256 I=2048 R=16 | $(seqc_cols gla) | - | - | - |"
  say "| 5b | GLA, --strategy=chunked (a block per example and head walks chunks; a build without it refuses it by name) | B=1 T=4096, same | $(seqc_cols gla_chunked) | - | - | - |"
  say "| 5c | mLSTM (stdlib/mlstm.seq; one head dim, dk = dv = 128), scan form | B=1 T=4096 NH=16 DH=128 I=2048 | $(seqc_cols mlstm) | - | - | - |"
  say "| 5d | mLSTM, --strategy=chunked | B=1 T=4096, same | $(seqc_cols mlstm_chunked) | - | - | - |"
  say "| 6 | causal softmax attention (bench/attention.seq: q, k, v given; fp32, no tensor cores) | B=1 T=8192 NH=16 DH=64 | $(seqc_cols attn) | $(peer_cols attn "torch SDPA, is_causal" attn) |"
  say ""
  [ -n "$scan_gbps" ] && say "Row 1 counts x and y only; the scan's kernels (compile line in the raw output) also write and read per-token intermediates (today the complex readout, [B*T, 2H], and [B*T, H] before the output copy), so the traffic they move is several times that lower bound."
  say "Peers' rows with TF32 allowed (cuDNN's default) are in the raw output above."
}
say ""
table
if [ -n "$out_dir" ]; then
  table >"$out_dir/gpu-check-table.md" 2>/dev/null
  tar -C "$bdir" -czf "$out_dir/gpu-check-logs.tar.gz" gpu-check-logs 2>/dev/null
fi
say ""
say "total wall time: $(elapsed) s (budget ${budget} s)"
if [ ${#failed[@]} -gt 0 ]; then
  say "steps that did not pass:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
say "every step passed"
