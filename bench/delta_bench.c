/* delta_bench.c - the chunkwise-parallel delta rule kernel (rt_cpu_delta)
 * against the float32 step loop on one sequence: H = 4 heads, K = V = 64,
 * T = 4096, R = 1 and 2 factors per token (DeltaNet, DeltaProduct), without
 * and with a scalar gate (gated DeltaNet), chunk lengths 8 to 64 tokens. Prints
 * tokens/s, GFLOP/s and the speedup, and checks that both agree.
 *
 * usage: delta_bench [REPS]   (medians over REPS rounds, each of which runs
 *                             every method once; default 15)
 * build (from the repository root, after any build of the project; the
 * runtime as built, the step loop for this machine):
 *   gcc -O3 -march=native -I. bench/delta_bench.c BUILD/libseqrt_cpu.a -pthread -lm \
 *     -o BUILD/delta_bench
 *
 * The step loop keeps each head's state transposed, [K, V], so that its
 * operations are AXPYs over V that GCC vectorizes: y = sum_d k_d S[d, :]
 * (one pass over the state), then S[d, :] = g S[d, :] + k_d b (v - g y) with
 * the readout o += q_d S[d, :] fused into the last factor's pass: two passes
 * over the state per factor. Its gates go through libm's expf, as a plain
 * loop's would.
 *
 * GFLOP/s count 2 per multiply-add. The step loop: (4 R + 2) K V per token
 * and head, K V more with a gate. The chunked form, per chunk of C tokens
 * and N = C R micro-steps: 2 N K V + C K V for the products with the state
 * (K S0^T, Q S0^T, the update), N (N - 1) / 2 (K + V) for the keys' Gram
 * matrix and the triangular substitution, R C (C + 1) / 2 (K + V) for the
 * scores and their product with the deltas (runtime/cpu_delta.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_cpu.h"

enum { H = 4, K = 64, V = 64, T = 4096, RMAX = 2 };

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

static void normalize(float *x, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
  for (int64_t i = 0; i < n; i++) x[i] /= sqrtf(s);
}

/* The step loop over inputs laid out [T, R, H, ...] (k, v, beta) and
 * [T, H, ...] (q, lg; lg == NULL: no gate): S0 is [H, V, K] as rt_cpu_delta
 * takes it; St [H, K, V] is the loop's own copy, transposed. */
static void step_loop(int64_t R, const float *q, const float *k, const float *v, const float *beta,
                      const float *lg, const float *S0, float *St, float *o) {
  for (int64_t h = 0; h < H; h++)
    for (int64_t r = 0; r < V; r++)
      for (int64_t d = 0; d < K; d++) St[(h * K + d) * V + r] = S0[(h * V + r) * K + d];
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      float *S = St + h * K * V;
      float g = lg ? expf(lg[t * H + h]) : 1.0f;
      for (int64_t f = 0; f < R; f++) {
        const float *kt = k + ((t * R + f) * H + h) * K, *vt = v + ((t * R + f) * H + h) * V;
        const float b = beta[(t * R + f) * H + h];
        float y[V] = {0}, u[V];
        for (int64_t d = 0; d < K; d++)
          for (int64_t r = 0; r < V; r++) y[r] += kt[d] * S[d * V + r];
        for (int64_t r = 0; r < V; r++) u[r] = b * (vt[r] - g * y[r]);
        if (f < R - 1) {
          for (int64_t d = 0; d < K; d++)
            for (int64_t r = 0; r < V; r++) S[d * V + r] = g * S[d * V + r] + kt[d] * u[r];
        } else {
          const float *qt = q + (t * H + h) * K;
          float acc[V] = {0};
          for (int64_t d = 0; d < K; d++)
            for (int64_t r = 0; r < V; r++) {
              S[d * V + r] = g * S[d * V + r] + kt[d] * u[r];
              acc[r] += qt[d] * S[d * V + r];
            }
          memcpy(o + (t * H + h) * V, acc, sizeof acc);
        }
        g = 1.0f; /* the gate applies at a token's first factor */
      }
    }
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 15;
  if (reps < 1) reps = 1;
  enum { NC = 4 };
  const int64_t Cs[NC] = {8, 16, 32, 64};
  float *q = malloc(sizeof(float) * T * H * K), *k = malloc(sizeof(float) * T * RMAX * H * K);
  float *v = malloc(sizeof(float) * T * RMAX * H * V), *b = malloc(sizeof(float) * T * RMAX * H);
  float *lg = malloc(sizeof(float) * T * H);
  float *S0 = malloc(sizeof(float) * H * V * K), *S = malloc(sizeof(float) * H * V * K);
  float *St = malloc(sizeof(float) * H * K * V);
  float *o_ref = malloc(sizeof(float) * T * H * V), *o = malloc(sizeof(float) * T * H * V);
  /* times[m][r]: method m (0 the step loop, 1 + ci the kernel at Cs[ci]). */
  double *times[1 + NC];
  for (int m = 0; m <= NC; m++) times[m] = malloc(sizeof(double) * (size_t)reps);
  for (int64_t i = 0; i < T * H * K; i++) q[i] = uval((uint64_t)i, 1);
  for (int64_t i = 0; i < T * RMAX * H * K; i++) k[i] = uval((uint64_t)i, 2);
  for (int64_t i = 0; i < T * H; i++) normalize(q + i * K, K);
  for (int64_t i = 0; i < T * RMAX * H; i++) {
    normalize(k + i * K, K);
    b[i] = 1.0f / (1.0f + expf(-3.0f * uval((uint64_t)i, 6))); /* a sigmoid */
  }
  for (int64_t i = 0; i < T * RMAX * H * V; i++) v[i] = uval((uint64_t)i, 3);
  for (int64_t i = 0; i < T * H; i++) {
    float u = (uval((uint64_t)i, 5) + 1.0f) / 2.0f;
    lg[i] = -0.7f * u * u * u * u; /* gates in (0.5, 1], most near 1 */
  }
  for (int64_t i = 0; i < H * V * K; i++) S0[i] = 0.5f * uval((uint64_t)i, 4);

  printf("delta H=%d K=%d V=%d T=%d, median of %d rounds\n", H, K, V, T, reps);
  printf("%-3s %-6s %6s %12s %9s %8s %10s\n", "R", "gate", "C", "tokens/s", "GFLOP/s", "speedup",
         "max err");
  for (int64_t R = 1; R <= RMAX; R++)
    for (int gated = 0; gated < 2; gated++) {
      const float *gl = gated ? lg : NULL;
      float *work[NC];
      double err[NC] = {0};
      for (int ci = 0; ci < NC; ci++)
        work[ci] = malloc(sizeof(float) * (size_t)rt_cpu_delta_work(H, K, V, R, Cs[ci]));
      /* A round runs every method once, so that a slow stretch of a shared
       * machine slows all of them alike. */
      for (int r = 0; r < reps; r++) {
        double t0 = now();
        step_loop(R, q, k, v, b, gl, S0, St, o_ref);
        times[0][r] = now() - t0;
        double scale = 0;
        for (int64_t i = 0; i < T * H * V; i++) scale = fmax(scale, fabs(o_ref[i]));
        for (int ci = 0; ci < NC; ci++) {
          memcpy(S, S0, sizeof(float) * H * V * K);
          t0 = now();
          rt_cpu_delta(T, H, K, V, R, q, H * K, k, R * H * K, H * K, v, R * H * V, H * V, b, R * H,
                       H, gl, H, S, o, H * V, Cs[ci], work[ci]);
          times[1 + ci][r] = now() - t0;
          for (int64_t i = 0; i < T * H * V; i++)
            err[ci] = fmax(err[ci], fabs(o[i] - o_ref[i]) / scale);
        }
      }
      for (int m = 0; m <= NC; m++) qsort(times[m], (size_t)reps, sizeof(double), cmp);
      const char *name = gated ? "scalar" : "none";
      double t_step = times[0][reps / 2];
      double step_flops = (double)H * T * K * V * (4.0 * R + 2 + gated);
      printf("%-3lld %-6s %6s %12.0f %9.1f %8s %10s\n", (long long)R, name, "step", T / t_step,
             step_flops / t_step * 1e-9, "1.00", "-");
      for (int ci = 0; ci < NC; ci++) {
        double t = times[1 + ci][reps / 2];
        double C = (double)Cs[ci], N = C * R;
        double per_chunk =
            2 * N * K * V + C * K * V + N * (N - 1) / 2 * (K + V) + R * C * (C + 1) / 2 * (K + V);
        double flops = 2.0 * H * T / C * per_chunk;
        printf("%-3lld %-6s %6lld %12.0f %9.1f %8.2f %10.2e\n", (long long)R, name,
               (long long)Cs[ci], T / t, flops / t * 1e-9, t_step / t, err[ci]);
        free(work[ci]);
      }
    }
  free(q);
  free(k);
  free(v);
  free(b);
  free(lg);
  free(S0);
  free(S);
  free(St);
  free(o_ref);
  free(o);
  for (int m = 0; m <= NC; m++) free(times[m]);
  return 0;
}
