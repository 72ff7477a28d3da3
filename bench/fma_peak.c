/* fma_peak.c - this machine's fp32 FMA peak, measured: every thread runs
 * independent chains of vfmadd on full vectors (AVX-512: 24 chains of 16
 * floats, AVX2: 12 of 8), enough chains to cover FMA latency times the number of FMA ports,
 * so the loop is bound by FMA throughput alone. Reports GFLOP/s (an FMA is
 * two flops) for 1..N threads.
 *
 * usage: fma_peak [MAX_THREADS]   (one line per ISA and thread count) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The loop body is written in asm so that the count of independent chains
 * is exact and the accumulators stay in registers (a C array of vectors is
 * easily kept in memory, which measures loads and stores instead). Twenty-
 * four chains (as many as the GEMM kernel keeps) cover 4-cycle FMA latency
 * on two ports three times over; AVX2 has registers for twelve. Every
 * register starts at zero: garbage could hold denormals, whose microcode
 * assists would measure something else entirely. */
#define Z(R, n) "vpxord %%" R #n ", %%" R #n ", %%" R #n "\n\t"
#define F(R, n) "vfmadd231ps %%" R "30, %%" R "31, %%" R #n "\n\t"
#define X12(M, R, a, b, c, d, e, f, g, h, i, j, k, l)                                              \
  M(R, a) M(R, b) M(R, c) M(R, d) M(R, e) M(R, f) M(R, g) M(R, h) M(R, i) M(R, j) M(R, k) M(R, l)
#define LO(M, R) X12(M, R, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
#define HI(M, R) X12(M, R, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)

__attribute__((target("avx512f"))) static void fma512(long iters) {
  __asm__ volatile(LO(Z, "zmm") HI(Z, "zmm") Z("zmm", 30) Z("zmm", 31) "1:\n\t" LO(F, "zmm")
                       HI(F, "zmm") "dec %0\n\t"
                                    "jnz 1b\n\t"
                   : "+r"(iters)
                   :
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                     "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17",
                     "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31", "cc");
}

/* AVX2 has sixteen registers: twelve chains, the operands in 14 and 15. */
#define F2(R, n) "vfmadd231ps %%" R "14, %%" R "15, %%" R #n "\n\t"
#define Z2(R, n) "vxorps %%" R #n ", %%" R #n ", %%" R #n "\n\t"
__attribute__((target("avx2,fma"))) static void fma256(long iters) {
  __asm__ volatile(LO(Z2, "ymm") Z2("ymm", 14) Z2("ymm", 15) "1:\n\t" LO(F2, "ymm") "dec %0\n\t"
                                                                                    "jnz 1b\n\t"
                   : "+r"(iters)
                   :
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                     "xmm10", "xmm11", "xmm14", "xmm15", "cc");
}

/* The machine is shared, so long runs measure other people's time slices
 * as well: each thread count is measured as many short bursts (about a
 * millisecond), started together by a barrier, and the median and best
 * bursts are reported. */
#define BURST_ITERS 100000L /* 2.4M FMAs per thread: about 1 ms */
#define BURSTS 301

typedef struct Job {
  int wide, nt;
  pthread_barrier_t *start, *stop;
  double t[BURSTS + 10]; /* this thread's own burst times */
} Job;

static void *run(void *arg) {
  Job *j = arg;
  for (int b = 0; b < BURSTS + 10; b++) {
    pthread_barrier_wait(j->start);
    double t0 = now();
    if (j->wide)
      fma512(BURST_ITERS);
    else
      fma256(BURST_ITERS);
    j->t[b] = now() - t0;
    pthread_barrier_wait(j->stop);
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median and best GFLOP/s of nt threads together. Each thread times its own
 * burst (a timer in the caller would also count its own descheduling); a
 * burst of nt threads lasts as long as its slowest thread. */
static void measure(int wide, int nt, double *median, double *best) {
  pthread_t th[64];
  pthread_barrier_t start, stop;
  static double t[BURSTS];
  static Job jobs[64];
  pthread_barrier_init(&start, NULL, (unsigned)nt + 1);
  pthread_barrier_init(&stop, NULL, (unsigned)nt + 1);
  for (int i = 0; i < nt; i++) {
    jobs[i] = (Job){.wide = wide, .nt = nt, .start = &start, .stop = &stop};
    pthread_create(&th[i], NULL, run, &jobs[i]);
  }
  for (int b = 0; b < BURSTS + 10; b++) { /* the first ten warm up */
    pthread_barrier_wait(&start);
    pthread_barrier_wait(&stop);
  }
  for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
  for (int b = 0; b < BURSTS; b++) {
    t[b] = 0;
    for (int i = 0; i < nt; i++)
      if (jobs[i].t[b + 10] > t[b]) t[b] = jobs[i].t[b + 10];
  }
  pthread_barrier_destroy(&start);
  pthread_barrier_destroy(&stop);
  qsort(t, BURSTS, sizeof(double), cmp);
  double flops = 2.0 * (wide ? 24 * 16 : 12 * 8) * (double)BURST_ITERS * nt * 1e-9;
  *median = flops / t[BURSTS / 2];
  *best = flops / t[0];
}

int main(int argc, char **argv) {
  int maxt = argc > 1 ? atoi(argv[1]) : 2;
  if (maxt < 1 || maxt > 64) maxt = 2;
  __builtin_cpu_init();
  int has512 = __builtin_cpu_supports("avx512f") != 0;
  for (int wide = has512; wide >= 0; wide--)
    for (int nt = 1; nt <= maxt; nt++) {
      double med, best;
      measure(wide, nt, &med, &best);
      printf("fma_peak isa=%s threads=%d gflops_median=%.1f gflops_best=%.1f\n",
             wide ? "avx512" : "avx2", nt, med, best);
    }
  return 0;
}
