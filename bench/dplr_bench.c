/* dplr_bench.c - the chunkwise-parallel generalized delta rule kernel
 * (rt_cpu_dplr) against the float32 step loop on one sequence of RWKV-7's
 * inputs (a = kk of unit length, b = -g kk, w = exp(-exp(x)) per key),
 * T = 4096: H = 1 head of K = V = 256 and H = 4 heads of 64, chunk lengths
 * 8 to 64 tokens, with outputs and state-only. Prints tokens/s, GFLOP/s and
 * the speedup, and checks that both agree.
 *
 * usage: dplr_bench [REPS]   (medians over REPS rounds, each of which runs
 *                            every method once; default 9)
 * build (from the repository root, after any build of the project; the
 * runtime as built, the step loop for this machine):
 *   gcc -O3 -march=native -I. bench/dplr_bench.c BUILD/libseqrt_cpu.a -pthread -lm \
 *     -o BUILD/dplr_bench
 *
 * The step loop makes one pass over the state per token and head: for each
 * row s of S ([V, K], as rt_cpu_dplr takes it, 1 KB at K = 256, in L1 while
 * it is worked on) d = s . a, s = s (.) w + d b + v_r k, o_r = s . q. Its dot
 * products are written with eight lanes of partial sums (GCC does not
 * vectorize a float reduction without -ffast-math, and the loop would run
 * at a quarter of the speed); its decays go through libm's expf, as a plain
 * loop's would.
 *
 * GFLOP/s count 2 per multiply-add and 1 per multiply. The step loop: 3 K V
 * multiply-adds per token and head (the reading S a and the update's two)
 * plus a multiply (the decay), K V more multiply-adds for the output. The
 * chunked form, per chunk of C tokens, in multiply-adds: 3 C K V for the
 * products with the state (A~ S0^T and the update's two), C (C + 1) / 2 V
 * for the triangles (Lk V, Lb Delta), and 2 C (C - 1) K for the pairwise
 * weights (two dot products and two decays a pair); for the outputs,
 * C K V (Q~ S0^T), C (C + 1) / 2 V (Mk V, Mb Delta) and C (C - 1) / 2 K
 * (runtime/cpu_dplr.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_cpu.h"

enum { T = 4096 };

typedef float v8 __attribute__((vector_size(32)));

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

static float dot(const float *x, const float *y, int64_t n) {
  v8 acc = {0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8 a, b;
    memcpy(&a, x + j, sizeof a);
    memcpy(&b, y + j, sizeof b);
    acc += a * b;
  }
  float s = 0;
  for (int l = 0; l < 8; l++) s += acc[l];
  for (; j < n; j++) s += x[j] * y[j];
  return s;
}

/* The step loop over inputs laid out [T, H, K] (q, lw, a, b, k) and
 * [T, H, V] (v, o); q == NULL: no outputs. S [H, V, K] is updated in place;
 * w is K floats of scratch. */
static void step_loop(int64_t H, int64_t K, int64_t V, const float *q, const float *lw,
                      const float *a, const float *b, const float *v, const float *k, float *S,
                      float *o, float *w) {
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      const int64_t rk = (t * H + h) * K, rv = (t * H + h) * V;
      const float *at = a + rk, *bt = b + rk, *kt = k + rk, *vt = v + rv;
      for (int64_t j = 0; j < K; j++) w[j] = expf(lw[rk + j]);
      for (int64_t r = 0; r < V; r++) {
        float *s = S + (h * V + r) * K;
        const float d = dot(s, at, K), vr = vt[r];
        for (int64_t j = 0; j < K; j++) s[j] = s[j] * w[j] + d * bt[j] + vr * kt[j];
        if (q) o[rv + r] = dot(s, q + rk, K);
      }
    }
}

/* One shape: the step loop and the kernel at each chunk length, with and
 * without outputs. */
static void bench(int64_t H, int64_t K, int64_t V, int reps) {
  enum { NC = 4 };
  const int64_t Cs[NC] = {8, 16, 32, 64};
  const int64_t nk = T * H * K, nv = T * H * V, ns = H * V * K;
  float *q = malloc(sizeof(float) * nk), *lw = malloc(sizeof(float) * nk);
  float *a = malloc(sizeof(float) * nk), *b = malloc(sizeof(float) * nk);
  float *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nv);
  float *S0 = malloc(sizeof(float) * ns), *S = malloc(sizeof(float) * ns);
  float *S_ref = malloc(sizeof(float) * ns), *w = malloc(sizeof(float) * K);
  float *o_ref = malloc(sizeof(float) * nv), *o = malloc(sizeof(float) * nv);
  double *times[1 + NC];
  for (int m = 0; m <= NC; m++) times[m] = malloc(sizeof(double) * (size_t)reps);
  for (int64_t i = 0; i < nk; i++) {
    q[i] = uval((uint64_t)i, 1);
    k[i] = uval((uint64_t)i, 2);
    a[i] = uval((uint64_t)i, 3);
    lw[i] = -expf(-2.45f + 3.55f * uval((uint64_t)i, 5)); /* w in (0.05, 1) */
  }
  for (int64_t th = 0; th < T * H; th++) {
    float *kk = a + th * K, n2 = 0;
    for (int64_t j = 0; j < K; j++) n2 += kk[j] * kk[j];
    for (int64_t j = 0; j < K; j++) {
      kk[j] /= sqrtf(n2);
      float g = 1.0f / (1.0f + expf(-3.0f * uval((uint64_t)(th * K + j), 6)));
      b[th * K + j] = -g * kk[j];
    }
  }
  for (int64_t i = 0; i < nv; i++) v[i] = uval((uint64_t)i, 4);
  for (int64_t i = 0; i < ns; i++) S0[i] = 0.5f * uval((uint64_t)i, 7);

  printf("dplr H=%lld K=%lld V=%lld T=%d, median of %d rounds\n", (long long)H, (long long)K,
         (long long)V, T, reps);
  printf("%-7s %6s %12s %9s %8s %10s\n", "outputs", "C", "tokens/s", "GFLOP/s", "speedup",
         "max err");
  for (int outs = 0; outs <= 1; outs++) {
    const float *qq = outs ? q : NULL;
    float *work[NC];
    double err[NC] = {0};
    for (int ci = 0; ci < NC; ci++)
      work[ci] = malloc(sizeof(float) * (size_t)rt_cpu_dplr_work(H, K, V, Cs[ci]));
    /* A round runs every method once, so that a slow stretch of a shared
     * machine slows all of them alike. */
    for (int r = 0; r < reps; r++) {
      memcpy(S_ref, S0, sizeof(float) * ns);
      double t0 = now();
      step_loop(H, K, V, qq, lw, a, b, v, k, S_ref, o_ref, w);
      times[0][r] = now() - t0;
      double scale = 0;
      for (int64_t i = 0; i < ns; i++) scale = fmax(scale, fabs(S_ref[i]));
      if (outs)
        for (int64_t i = 0; i < nv; i++) scale = fmax(scale, fabs(o_ref[i]));
      for (int ci = 0; ci < NC; ci++) {
        memcpy(S, S0, sizeof(float) * ns);
        t0 = now();
        rt_cpu_dplr(T, H, K, V, qq, H * K, lw, H * K, a, H * K, b, H * K, v, H * V, k, H * K, S, o,
                    H * V, Cs[ci], work[ci]);
        times[1 + ci][r] = now() - t0;
        for (int64_t i = 0; i < ns; i++) err[ci] = fmax(err[ci], fabs(S[i] - S_ref[i]) / scale);
        if (outs)
          for (int64_t i = 0; i < nv; i++) err[ci] = fmax(err[ci], fabs(o[i] - o_ref[i]) / scale);
      }
    }
    for (int m = 0; m <= NC; m++) qsort(times[m], (size_t)reps, sizeof(double), cmp);
    const char *name = outs ? "yes" : "no";
    double t_step = times[0][reps / 2];
    double step_flops = (double)H * T * K * V * (2.0 * (3 + outs) + 1);
    printf("%-7s %6s %12.0f %9.1f %8s %10s\n", name, "step", T / t_step, step_flops / t_step * 1e-9,
           "1.00", "-");
    for (int ci = 0; ci < NC; ci++) {
      double t = times[1 + ci][reps / 2], C = (double)Cs[ci];
      double per_chunk = (3.0 + outs) * C * K * V + (1 + outs) * C * (C + 1) / 2 * V +
                         (2 + outs) * C * (C - 1) * K;
      double flops = 2.0 * H * T / C * per_chunk;
      printf("%-7s %6lld %12.0f %9.1f %8.2f %10.2e\n", name, (long long)Cs[ci], T / t,
             flops / t * 1e-9, t_step / t, err[ci]);
      free(work[ci]);
    }
  }
  float *bufs[] = {q, lw, a, b, k, v, S0, S, S_ref, w, o_ref, o};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  for (int m = 0; m <= NC; m++) free(times[m]);
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 9;
  if (reps < 1) reps = 1;
  bench(1, 256, 256, reps);
  bench(4, 64, 64, reps);
  return 0;
}
