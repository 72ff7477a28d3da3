/* linattn_bench.c - the chunkwise-parallel linear attention kernel
 * (rt_cpu_linattn) against the float32 step loop on one sequence: H = 4
 * heads, K = V = 64, T = 4096, chunk lengths 16 to 128, scalar and per-key
 * gates, inclusive readout. Prints tokens/s, GFLOP/s and the speedup, and
 * checks that both agree.
 *
 * usage: linattn_bench [REPS]   (medians over REPS rounds, each of which runs
 *                               every method once; default 15)
 * build (from the repository root, after any build of the project; the
 * runtime as built, the step loop for this machine):
 *   gcc -O3 -march=native -I. bench/linattn_bench.c BUILD/libseqrt_cpu.a -pthread -lm \
 *     -o BUILD/linattn_bench
 *
 * The step loop keeps each head's state transposed, [K, V], so that both of
 * its operations per key are AXPYs over V that GCC vectorizes (the [V, K]
 * orientation needs a dot product per row, which -O3 without -ffast-math
 * leaves scalar): S[d, :] = g_d S[d, :] + k_d v, then o += q_d S[d, :], one
 * pass over the state per token and head. Its gates go through libm's expf,
 * as a plain loop's would.
 *
 * GFLOP/s count 2 per multiply-add: the step loop does about 5 K V per
 * token and head (the gate multiply, the update, the readout); the chunked
 * form 4 K V (the readout from the chunk's entering state and the state
 * update) plus C (K + V) inside the chunk (half of Q K^T and of its product
 * with V), docs/algorithms.md section 3. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_cpu.h"

enum { H = 4, K = 64, V = 64, T = 4096 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static float uval(uint64_t i, uint64_t salt) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + salt * 0xD1B54A32D192ED03ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (float)((double)(x >> 11) / (double)(1ull << 52) - 1.0);
}

/* The step loop: S0 is [H, V, K] as rt_cpu_linattn takes it; St [H, K, V]
 * is the loop's own copy, transposed. */
static void step_loop(const float *q, const float *k, const float *v, const float *lg, int64_t Kg,
                      const float *S0, float *St, float *o) {
  for (int64_t h = 0; h < H; h++)
    for (int64_t r = 0; r < V; r++)
      for (int64_t d = 0; d < K; d++) St[(h * K + d) * V + r] = S0[(h * V + r) * K + d];
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      const float *qt = q + (t * H + h) * K, *kt = k + (t * H + h) * K;
      const float *vt = v + (t * H + h) * V, *gt = lg + (t * H + h) * Kg;
      float *ot = o + (t * H + h) * V;
      float acc[V] = {0}, g = expf(gt[0]);
      for (int64_t d = 0; d < K; d++) {
        float *s = St + (h * K + d) * V;
        if (Kg > 1) g = expf(gt[d]);
        for (int64_t r = 0; r < V; r++) {
          s[r] = s[r] * g + kt[d] * vt[r];
          acc[r] += qt[d] * s[r];
        }
      }
      memcpy(ot, acc, sizeof acc);
    }
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 15;
  if (reps < 1) reps = 1;
  enum { NC = 4 };
  const int64_t Cs[NC] = {16, 32, 64, 128};
  float *q = malloc(sizeof(float) * T * H * K), *k = malloc(sizeof(float) * T * H * K);
  float *v = malloc(sizeof(float) * T * H * V), *lg = malloc(sizeof(float) * T * H * K);
  float *S0 = malloc(sizeof(float) * H * V * K), *S = malloc(sizeof(float) * H * V * K);
  float *St = malloc(sizeof(float) * H * K * V);
  float *o_ref = malloc(sizeof(float) * T * H * V), *o = malloc(sizeof(float) * T * H * V);
  /* times[m][r]: method m (0 the step loop, 1 + ci the kernel at Cs[ci]). */
  double *times[1 + NC];
  for (int m = 0; m <= NC; m++) times[m] = malloc(sizeof(double) * (size_t)reps);
  for (int64_t i = 0; i < T * H * K; i++) {
    q[i] = uval((uint64_t)i, 1);
    k[i] = uval((uint64_t)i, 2) / 8.0f; /* |k| about 1/sqrt(3) */
    float u = (uval((uint64_t)i, 5) + 1.0f) / 2.0f;
    lg[i] = -0.7f * u * u * u * u; /* gates in (0.5, 1], most near 1 */
  }
  for (int64_t i = 0; i < T * H * V; i++) v[i] = uval((uint64_t)i, 3);
  for (int64_t i = 0; i < H * V * K; i++) S0[i] = 0.5f * uval((uint64_t)i, 4);

  printf("linattn H=%d K=%d V=%d T=%d, median of %d rounds\n", H, K, V, T, reps);
  printf("%-8s %6s %12s %9s %8s %10s\n", "gate", "C", "tokens/s", "GFLOP/s", "speedup", "max err");
  for (int per_key = 0; per_key < 2; per_key++) {
    int64_t Kg = per_key ? K : 1;
    const char *name = per_key ? "per-key" : "scalar";
    float *work[NC];
    double err[NC] = {0};
    for (int ci = 0; ci < NC; ci++)
      work[ci] = malloc(sizeof(float) * (size_t)rt_cpu_linattn_work(H, K, V, Kg, Cs[ci]));
    /* A round runs every method once, so that a slow stretch of a shared
     * machine slows all of them alike. */
    for (int r = 0; r < reps; r++) {
      double t0 = now();
      step_loop(q, k, v, lg, Kg, S0, St, o_ref);
      times[0][r] = now() - t0;
      double scale = 0;
      for (int64_t i = 0; i < T * H * V; i++) scale = fmax(scale, fabs(o_ref[i]));
      for (int ci = 0; ci < NC; ci++) {
        memcpy(S, S0, sizeof(float) * H * V * K);
        t0 = now();
        rt_cpu_linattn(T, H, K, V, q, H * K, k, H * K, v, H * V, lg, H * Kg, Kg, S, o, H * V,
                       Cs[ci], 0, work[ci]);
        times[1 + ci][r] = now() - t0;
        for (int64_t i = 0; i < T * H * V; i++)
          err[ci] = fmax(err[ci], fabs(o[i] - o_ref[i]) / scale);
      }
    }
    for (int m = 0; m <= NC; m++) qsort(times[m], (size_t)reps, sizeof(double), cmp);
    double t_step = times[0][reps / 2];
    printf("%-8s %6s %12.0f %9.1f %8s %10s\n", name, "step", T / t_step,
           5.0 * H * K * V * T / t_step * 1e-9, "1.00", "-");
    for (int ci = 0; ci < NC; ci++) {
      double t = times[1 + ci][reps / 2];
      double flops = (double)H * T * (4.0 * K * V + (double)Cs[ci] * (K + V));
      printf("%-8s %6lld %12.0f %9.1f %8.2f %10.2e\n", name, (long long)Cs[ci], T / t,
             flops / t * 1e-9, t_step / t, err[ci]);
      free(work[ci]);
    }
  }
  free(q);
  free(k);
  free(v);
  free(lg);
  free(S0);
  free(S);
  free(St);
  free(o_ref);
  free(o);
  for (int m = 0; m <= NC; m++) free(times[m]);
  return 0;
}
