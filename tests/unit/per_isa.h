/* per_isa.h - runs a cmocka group once per instruction set of the runtime's
 * hand-tiled kernels that this machine has: the AVX-512 copy (sixteen-lane
 * tiles) and the AVX2 copy, chosen through rt_cpu_gemm_set_isa as
 * SEQ_CPU_ISA would (runtime/cpu_tiles.h), so that an AVX-512 machine still
 * tests the copy an AVX2 machine runs. Where the machine lacks AVX-512 the
 * group runs once. */
#ifndef SEQ_TESTS_PER_ISA_H
#define SEQ_TESTS_PER_ISA_H

#include <string.h>

#include "runtime/rt_cpu.h"

#define TU_RUN_PER_ISA(tests) tu_run_per_isa((tests), sizeof(tests) / sizeof((tests)[0]))

static inline int tu_run_per_isa(const struct CMUnitTest *tests, size_t n) {
  static const char *const asked[] = {"avx512", "avx2"};
  const char *last = NULL;
  int failed = 0;
  for (size_t i = 0; i < sizeof asked / sizeof asked[0]; i++) {
    const char *isa = rt_cpu_gemm_set_isa(asked[i]);
    if (last && strcmp(isa, last) == 0) continue; /* capped at what the machine runs */
    failed |= _cmocka_run_group_tests(isa, tests, n, NULL, NULL);
    last = isa;
  }
  rt_cpu_gemm_set_isa(NULL);
  return failed;
}

#endif
