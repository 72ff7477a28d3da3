#!/usr/bin/env bash
# The whole test suite, as CI runs it (see docs/testing.md):
#   1. build seqc with warnings as errors and the IR verifier on (Debug) in
#      build-test and run every test under CTest;
#   2. build again with ASan + UBSan (-DSEQ_SANITIZE=ON) in build-asan and run
#      every test there with LeakSanitizer on: any report fails the run
#      (SEQ_TEST_SANITIZE=0 skips this stage);
#   3. run each libFuzzer target for 30 s (tools/fuzz.sh), when clang-19 with
#      libFuzzer is installed (SEQ_TEST_FUZZ=0 skips; SEQ_FUZZ_SECONDS changes
#      the time per target).
#   2b. the Python package (python/, docs/python.md): pytest on build-test's
#      libseq, then `pip install .` (a wheel built by scikit-build-core) and the
#      torch tests again on the installed wheel, outside the source tree
#      (SEQ_TEST_PYTHON=0 skips both, SEQ_TEST_WHEEL=0 the wheel). Installs
#      Debian's python3-torch, -numpy, -pytest and -venv where missing, and a venv
#      in build-py/venv (system packages visible) for scikit-build-core.
#   4. build (no tests) with Debian's default clang (14, build-clang14) and
#      clang-19 (build-clang), warnings as errors, where installed, so code GCC
#      accepts and clang rejects fails here (SEQ_TEST_CLANG=0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."

SEQ_BUILD_DIR="${SEQ_BUILD_DIR:-build-test}" SEQ_BUILD_TYPE=Debug \
  SEQ_CMAKE_ARGS="-DSEQ_WERROR=ON ${SEQ_CMAKE_ARGS:-}" tools/setup.sh
# Every ctest run's summary is kept so the last line of this script can count
# all of them ("N passed, N failed").
summaries="$(mktemp)"
trap 'rm -f "$summaries"' EXIT
ctest --test-dir "${SEQ_BUILD_DIR:-build-test}" --output-on-failure -j2 | tee -a "$summaries"

# ---- the Python package ------------------------------------------------------------
if [ "${SEQ_TEST_PYTHON:-1}" != 0 ]; then
  . tools/apt_missing.sh
  apt_missing --no-recommends test.sh python3-torch python3-numpy python3-pytest python3-venv python3-pip
  # Debian's torch is built for Debian's python3: the venv is made from it.
  [ -x build-py/venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages build-py/venv
  echo "test.sh: pytest python/tests on ${SEQ_BUILD_DIR:-build-test}/libseq.so"
  SEQC_LIBRARY="$(pwd)/${SEQ_BUILD_DIR:-build-test}/libseq.so" SEQC_BIN="$(pwd)/${SEQ_BUILD_DIR:-build-test}/seqc" \
    PYTHONPATH="$(pwd)/python:$(pwd)/python/tests" \
    build-py/venv/bin/python -m pytest -q -p no:cacheprovider python/tests | tee -a "$summaries"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "test.sh: python tests failed" >&2; exit 1; }
  if [ "${SEQ_TEST_WHEEL:-1}" != 0 ]; then
    echo "test.sh: pip install . (the wheel) into build-py/venv-wheel"
    [ -x build-py/venv-wheel/bin/python ] ||
      /usr/bin/python3 -m venv --system-site-packages build-py/venv-wheel
    CMAKE_BUILD_PARALLEL_LEVEL=2 build-py/venv-wheel/bin/pip install -q --no-deps . >/dev/null
    # From another directory, without the source tree's python/ on the path:
    # the installed package, its own libseq and stdlib.
    (cd build-py && env -u SEQC_LIBRARY PYTHONPATH="$(pwd)/../python/tests" \
      venv-wheel/bin/python -m pytest -q -p no:cacheprovider --rootdir=../python/tests \
      ../python/tests/test_torch.py ../python/tests/test_docs.py) | tee -a "$summaries"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "test.sh: the installed wheel failed its tests" >&2; exit 1; }
  fi
fi

# ---- sanitizers ----------------------------------------------------------------
if [ "${SEQ_TEST_SANITIZE:-1}" != 0 ]; then
  echo "test.sh: ASan + UBSan + LeakSanitizer build in build-asan"
  asan="${SEQ_ASAN_BUILD_DIR:-build-asan}"
  cmake -S . -B "$asan" -DCMAKE_BUILD_TYPE=Debug -DSEQ_WERROR=ON -DSEQ_SANITIZE=ON >/dev/null
  cmake --build "$asan" -j2
  # Tests run seqc as a subprocess: it inherits these, so the CLI is checked too.
  # UBSan does not recover (-fno-sanitize-recover), so UB fails the test.
  # allocator_may_return_null: a failed malloc is NULL, as in production, so the
  # tests of out-of-memory diagnostics test those and not ASan's own abort.
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:strict_string_checks=1:check_initialization_order=1" \
    LSAN_OPTIONS="suppressions=$(pwd)/tools/lsan.supp:print_suppressions=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir "$asan" --output-on-failure -j2 --timeout 900 | tee -a "$summaries"
fi

# ---- fuzzing ----------------------------------------------------------------------
if [ "${SEQ_TEST_FUZZ:-1}" != 0 ]; then
  if command -v clang-19 >/dev/null &&
    [ -n "$(ls /usr/lib/llvm-19/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ]; then
    for t in frontend run forms npy safetensors; do
      echo "test.sh: fuzzing $t for ${SEQ_FUZZ_SECONDS:-30} s"
      log="$(mktemp)"
      if ! tools/fuzz.sh "$t" "${SEQ_FUZZ_SECONDS:-30}" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "test.sh: fuzz_$t failed (a crash is saved under build-fuzz/crashes/$t/)" >&2
        exit 1
      fi
      grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
      rm -f "$log"
    done
  else
    echo "test.sh: clang-19 with libFuzzer not installed; skipping the fuzz stage"
  fi
fi

# ---- other compilers ---------------------------------------------------------------
if [ "${SEQ_TEST_CLANG:-1}" != 0 ]; then
  for c in clang-14:build-clang14 clang-19:build-clang; do
    cc="${c%%:*}" dir="${c#*:}"
    if ! command -v "$cc" >/dev/null; then
      echo "test.sh: $cc not installed; skipping its build"
      continue
    fi
    echo "test.sh: building with $cc -Werror in $dir"
    CC="$cc" cmake -S . -B "$dir" -DSEQ_WERROR=ON >/dev/null
    cmake --build "$dir" -j2 >/dev/null
  done
fi

# ---- summary --------------------------------------------------------------------
# ctest prints "100% tests passed, 0 tests failed out of 24" per run, pytest
# "70 passed in 30.1s"; add them up.
awk '/tests passed, [0-9]+ tests? failed out of/ {
       for (i = 1; i <= NF; i++) if ($i == "of") total += $(i + 1)
       for (i = 1; i <= NF; i++) if ($i ~ /^failed$/) failed += $(i - 2)
     }
     # pytest: "12 passed, 1 failed in 3.2s" (possibly between "=" rules)
     / (passed|failed)(,| in )/ && / in [0-9.]+s/ {
       for (i = 2; i <= NF; i++) {
         if ($i ~ /^passed,?$/) total += $(i - 1)
         if ($i ~ /^failed,?$/) { total += $(i - 1); failed += $(i - 1) }
       }
     }
     END { printf "tests: %d passed, %d failed\n", total - failed, failed }' "$summaries"
