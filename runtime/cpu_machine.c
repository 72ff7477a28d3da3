/* cpu_machine.c - this machine's speed, as the compiler's cost model uses
 * it (passes/strategy.c): the single-precision FMA peak of one core with the
 * widest vectors the GEMM kernel uses, the bandwidth of one core to memory
 * (a STREAM triad over arrays well past the last-level cache) and to its L2,
 * and the number of cores. Measured once per process, on first use, in
 * about 50 ms; $SEQ_MACHINE ("flops=83e9,dram=14e9,l2=90e9,cores=2") gives
 * the numbers instead, so a report can be reproduced on another machine and
 * tests do not depend on this one's speed.
 */
#define _DEFAULT_SOURCE
#include "runtime/rt_cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Twelve independent chains of vector FMAs: enough to cover the latency of
 * two FMA units (4-5 cycles each), so the loop runs at the issue rate. The
 * result is kept so the chains are not removed. MADD(a, b, c) is a * b + c
 * as one fused instruction: written as a multiply and an add, ISO C (this
 * project's -std=c11) keeps them two, and the loop timed half the peak. */
#define FMA_CHAINS 12
#define FMA_BODY(vec, lanes, MADD)                                                                 \
  vec acc[FMA_CHAINS], x, y;                                                                       \
  for (int i = 0; i < lanes; i++) {                                                                \
    x[i] = 1.0f + 1e-7f * (float)i;                                                                \
    y[i] = 0.999999f;                                                                              \
  }                                                                                                \
  for (int c = 0; c < FMA_CHAINS; c++) acc[c] = x * (float)(c + 1);                                \
  for (long it = 0; it < iters; it++)                                                              \
    for (int c = 0; c < FMA_CHAINS; c++) acc[c] = MADD(acc[c], y, x);                              \
  float s = 0;                                                                                     \
  for (int c = 0; c < FMA_CHAINS; c++)                                                             \
    for (int i = 0; i < lanes; i++) s += acc[c][i];                                                \
  return s;

typedef float v4 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

/* Without FMA (SSE2): a multiply and an add, which is what such a core runs. */
#define MUL_ADD(a, b, c) ((a) * (b) + (c))
static float fma_generic(long iters) {
  FMA_BODY(v4, 4, MUL_ADD)
}
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MADD8(a, b, c) ((v8)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define MADD16(a, b, c) ((v16)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
  FMA_BODY(v8, 8, MADD8)
}
__attribute__((target("avx512f,fma"))) static float fma_avx512(long iters) {
  FMA_BODY(v16, 16, MADD16)
}
#endif

/* Flop/s of one core: the best of five bursts of 2.4M multiply-adds (about
 * 0.4 ms with AVX-512: shorter ones ran before the core had raised its
 * clock for wide vectors, and varied by 10%). */
static double measure_flops(void) {
  const char *isa = rt_cpu_gemm_isa();
  int lanes = strcmp(isa, "avx512f") == 0 ? 16 : strcmp(isa, "avx2+fma") == 0 ? 8 : 4;
  long iters = 200000;
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t = now();
#if defined(__x86_64__) && defined(__GNUC__)
    sink = lanes == 16 ? fma_avx512(iters) : lanes == 8 ? fma_avx2(iters) : fma_generic(iters);
#else
    sink = fma_generic(iters);
#endif
    t = now() - t;
    double flops = 2.0 * FMA_CHAINS * lanes * (double)iters / t;
    if (flops > best) best = flops;
  }
  (void)sink;
  return best;
}

/* Bytes/s of a triad a = b + s*c over arrays of n floats (3 x 4 bytes per
 * element, counting no write-allocate): the best of three passes. */
static double triad(float *a, const float *b, const float *c, size_t n, int passes) {
  double best = 0;
  for (int p = 0; p < passes; p++) {
    double t = now();
    for (size_t i = 0; i < n; i++) a[i] = b[i] + 0.5f * c[i];
    t = now() - t;
    double bw = 12.0 * (double)n / t;
    if (bw > best) best = bw;
  }
  return best;
}

/* Sums of n floats from b (n a multiple of 64) in four vector accumulators,
 * so the adds do not limit the loads, with the widest vectors the code uses
 * (b 64-byte aligned): with 16-byte loads this core read its L2 at a third
 * of what it can (47.9 against 141 GB/s), with 64-byte loads split across
 * cache lines at half (74.8). */
#define READ_BODY(vec, lanes)                                                                      \
  vec s[4] = {{0}}, v;                                                                             \
  for (size_t i = 0; i + 4 * lanes <= n; i += 4 * lanes)                                           \
    for (int a = 0; a < 4; a++) {                                                                  \
      memcpy(&v, b + i + (size_t)a * lanes, sizeof v);                                             \
      s[a] += v;                                                                                   \
    }                                                                                              \
  float t = 0;                                                                                     \
  for (int a = 0; a < 4; a++)                                                                      \
    for (int l = 0; l < lanes; l++) t += s[a][l];                                                  \
  return t;

static float read_generic(const float *b, size_t n) {
  READ_BODY(v4, 4)
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static float read_avx2(const float *b, size_t n) {
  READ_BODY(v8, 8)
}
__attribute__((target("avx512f"))) static float read_avx512(const float *b, size_t n) {
  READ_BODY(v16, 16)
}
#endif

/* Bytes/s of reading a buffer of n floats that stays in L2. */
static double l2_read(const float *b, size_t n, int passes) {
  const char *isa = rt_cpu_gemm_isa();
  int lanes = strcmp(isa, "avx512f") == 0 ? 16 : strcmp(isa, "avx2+fma") == 0 ? 8 : 4;
  double best = 0;
  volatile float sink = 0;
  for (int p = 0; p < passes; p++) {
    double t = now();
    for (int rep = 0; rep < 16; rep++) {
#if defined(__x86_64__) && defined(__GNUC__)
      sink += lanes == 16 ? read_avx512(b, n) : lanes == 8 ? read_avx2(b, n) : read_generic(b, n);
#else
      sink += read_generic(b, n);
#endif
    }
    t = now() - t;
    double bw = 16.0 * 4.0 * (double)n / t;
    if (bw > best) best = bw;
  }
  (void)sink;
  return best;
}

static RtCpuMachine machine;
static pthread_once_t machine_once = PTHREAD_ONCE_INIT;

static int from_env(RtCpuMachine *m) {
  const char *e = getenv("SEQ_MACHINE");
  if (!e || !*e) return 0;
  RtCpuMachine got = *m;
  int seen = 0;
  for (const char *p = e; *p;) {
    const char *eq = strchr(p, '='), *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    if (!eq || eq > end) return 0;
    double v = strtod(eq + 1, NULL);
    size_t k = (size_t)(eq - p);
    if (k == 5 && strncmp(p, "flops", 5) == 0)
      got.flops = v, seen |= 1;
    else if (k == 4 && strncmp(p, "dram", 4) == 0)
      got.dram_bw = v, seen |= 2;
    else if (k == 2 && strncmp(p, "l2", 2) == 0)
      got.l2_bw = v, seen |= 4;
    else if (k == 5 && strncmp(p, "cores", 5) == 0)
      got.cores = (int)v, seen |= 8;
    else
      return 0;
    p = *end ? end + 1 : end;
  }
  if (seen != 15 || !(got.flops > 0) || !(got.dram_bw > 0) || !(got.l2_bw > 0) || got.cores < 1)
    return 0;
  *m = got;
  m->measured = 0;
  return 1;
}

static void measure(void) {
  machine.isa = rt_cpu_gemm_isa();
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  machine.cores = cores > 0 ? (int)cores : 1;
  if (from_env(&machine)) return;
  machine.measured = 1;
  machine.flops = measure_flops();
  /* 3 x 24 MiB: past the last-level cache of the machines seqc runs on. */
  size_t n = (size_t)6 << 20;
  float *buf = aligned_alloc(64, 3 * n * sizeof(float)); /* whole vectors per cache line */
  if (buf) {
    for (size_t i = 0; i < 3 * n; i++) buf[i] = (float)(i & 7);
    machine.dram_bw = triad(buf, buf + n, buf + 2 * n, n, 3);
    /* 256 KiB: inside the L2 of every x86-64 core since 2008. */
    machine.l2_bw = l2_read(buf, (size_t)64 << 10, 3);
    free(buf);
  }
  /* Without a measurement: a conservative guess (one channel of DDR4). */
  if (!(machine.dram_bw > 0)) machine.dram_bw = 10e9;
  if (!(machine.l2_bw > 0)) machine.l2_bw = 50e9;
}

const RtCpuMachine *rt_cpu_machine(void) {
  pthread_once(&machine_once, measure);
  return &machine;
}
