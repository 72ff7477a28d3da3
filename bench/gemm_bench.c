/* gemm_bench.c - GFLOP/s of the runtime's packed sgemm at the shapes an RNN
 * forward pass uses (K = 256, N = 1024: the recurrent step at M = B and the
 * hoisted input projection at M = B*T), checked against a plain loop; then
 * the same weight read in place (rt_cpu_sgemm_w without packing, what a step
 * function with few tokens runs), as W @ x and as x @ W.
 * usage: gemm_bench THREADS [ISA]   (build: see bench/run.sh)
 * ISA is avx512, avx2 or generic (default: $SEQ_CPU_ISA, else the best this
 * machine runs); one above the machine falls back to the best it has. The
 * first line names the kernels that ran. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "runtime/rt_cpu.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of reps timed calls of rt_cpu_sgemm_w (Bp NULL: unpacked). */
static double time_w(int reps, int64_t M, int64_t N, int64_t K, const float *A, const float *W,
                     int trans, float *C) {
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int r = 0; r < reps; r++) {
    double s = now();
    rt_cpu_sgemm_w(M, N, K, A, K, W, trans ? K : N, trans, NULL, C, N);
    t[r] = now() - s;
  }
  qsort(t, (size_t)reps, sizeof(double), cmp);
  double med = t[reps / 2];
  free(t);
  return med;
}

int main(int argc, char **argv) {
  rt_cpu_set_num_threads(argc > 1 ? atoi(argv[1]) : 1);
  const char *asked = argc > 2 ? argv[2] : getenv("SEQ_CPU_ISA");
  if (argc > 2) rt_cpu_gemm_set_isa(argv[2]);
  printf("gemm kernel=%s threads=%d", rt_cpu_gemm_isa(), rt_cpu_get_num_threads());
  printf(asked ? " asked=%s\n" : "\n", asked);
  const int64_t K = 256, N = 1024, Ms[] = {1, 8, 64, 1024, 8192};
  float *W = malloc(sizeof(float) * K * N), *Bp = rt_cpu_alloc(4 * rt_cpu_packed_floats(K, N));
  for (int64_t i = 0; i < K * N; i++) W[i] = (float)((i * 7919 % 1000) / 1000.0 - 0.5);
  rt_cpu_pack_b(K, N, W, N, 0, Bp);
  int bad = 0;
  for (int mi = 0; mi < 5; mi++) {
    int64_t M = Ms[mi];
    float *A = malloc(sizeof(float) * M * K), *C = malloc(sizeof(float) * M * N);
    for (int64_t i = 0; i < M * K; i++) A[i] = (float)((i * 104729 % 1000) / 1000.0 - 0.5);
    rt_cpu_sgemm_packed(M, N, K, A, K, Bp, C, N);
    for (int64_t i = 0; i < M; i += (M > 16 ? 7 : 1))
      for (int64_t j = 0; j < N; j += 3) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += (double)A[i * K + k] * W[k * N + j];
        if (fabs(s - C[i * N + j]) > 1e-3) bad++;
      }
    int reps = (int)(4096 / M) + 5;
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < reps; r++) {
      double s = now();
      rt_cpu_sgemm_packed(M, N, K, A, K, Bp, C, N);
      t[r] = now() - s;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp);
    printf("gemm M=%-5lld N=%lld K=%lld median_us=%.1f gflops=%.1f\n", (long long)M, (long long)N,
           (long long)K, t[reps / 2] * 1e6, 2.0 * M * N * K / t[reps / 2] * 1e-9);
    free(t);
    /* Unpacked, for the step functions' token counts: W @ x reads W as
     * [N, K] (from 32 rows by way of (x W^T)^T), x @ W as [K, N]. */
    for (int trans = 1; M <= 64 && trans >= 0; trans--) {
      double s = time_w(reps, M, N, K, A, W, trans, C);
      printf("gemm_w %s M=%-5lld N=%lld K=%lld median_us=%.1f gflops=%.1f\n", trans ? "W@x" : "x@W",
             (long long)M, (long long)N, (long long)K, s * 1e6, 2.0 * M * N * K / s * 1e-9);
    }
    free(A);
    free(C);
  }
  free(W);
  rt_cpu_free(Bp);
  if (bad) printf("gemm WRONG: %d mismatches\n", bad);
  return bad != 0;
}
