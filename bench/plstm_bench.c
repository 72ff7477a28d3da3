/* plstm_bench.c - the chunkwise-parallel pLSTM kernel (rt_cpu_plstm) against
 * the float32 step loop on one sequence: H = 1 head of J = 4 blocks,
 * K = V = 64, T = 4096, transitions with random entries of either sign
 * whose rows of |Tr| sum to 0.9, chunk lengths 8 to 64 tokens, with
 * outputs (inclusive) and state-only. Prints tokens/s, GFLOP/s and the
 * speedup, and checks that both agree.
 *
 * usage: plstm_bench [REPS]  (medians over REPS rounds, each of which runs
 *                            every method once; default 9)
 * build (from the repository root, after any build of the project; the
 * runtime as built, the step loop for this machine):
 *   gcc -O3 -march=native -I. bench/plstm_bench.c BUILD/libseqrt_cpu.a -pthread -lm \
 *     -o BUILD/plstm_bench
 *
 * The step loop makes one pass over the state per token: for each row r
 * (of V) it reads row r of the J blocks (J K floats, in L1 while it is
 * worked on) and writes their new values, new[j] = sum_j' Tr[j, j'] old[j']
 * + (s[j] v_r) k, then o_r = sum_j m[j] (new[j] . q). Its dot products are
 * written with eight lanes of partial sums (GCC does not vectorize a float
 * reduction without -ffast-math); the rest vectorizes as written.
 *
 * GFLOP/s count 2 per multiply-add. The step loop: (J^2 + J) K V
 * multiply-adds per token for the update, J K V more for the output. The
 * chunked form, per chunk of C tokens (runtime/cpu_plstm.c), in
 * multiply-adds: J^2 K V for the mixing of the blocks and J K C V for the
 * update's rank-C part; for the outputs, C J K V (the entering state's
 * readout), C (C + 1) / 2 (K + V) (Q K^T's lower triangle and A V); not
 * counted: the transitions' products (about C J^3 + C^2 J^2 / 2) and the
 * scaled copies of the keys and queries (2 C J K multiplies). */
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

/* The step loop over inputs laid out [T, H, K] (q, k), [T, H, V] (v, o),
 * [T, H, J] (m, s) and [T, H, J, J] (tr); q == NULL: no outputs
 * (inclusive otherwise). S [H, J, V, K] is updated in place; w is J K
 * floats of scratch. */
static void step_loop(int64_t H, int64_t J, int64_t K, int64_t V, const float *q, const float *m,
                      const float *tr, const float *s, const float *v, const float *k, float *S,
                      float *o, float *w) {
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      const int64_t th = t * H + h;
      const float *kt = k + th * K, *vt = v + th * V, *st = s + th * J, *mt = m + th * J;
      const float *trt = tr + th * J * J;
      float *Sh = S + h * J * V * K;
      for (int64_t r = 0; r < V; r++) {
        for (int64_t j = 0; j < J; j++) {
          const float a = st[j] * vt[r];
          float *nw = w + j * K;
          for (int64_t x = 0; x < K; x++) nw[x] = a * kt[x];
          for (int64_t jj = 0; jj < J; jj++) {
            const float b = trt[j * J + jj], *old = Sh + (jj * V + r) * K;
            for (int64_t x = 0; x < K; x++) nw[x] += b * old[x];
          }
        }
        float acc = 0;
        for (int64_t j = 0; j < J; j++) {
          memcpy(Sh + (j * V + r) * K, w + j * K, sizeof(float) * (size_t)K);
          if (q) acc += mt[j] * dot(w + j * K, q + th * K, K);
        }
        if (q) o[th * V + r] = acc;
      }
    }
}

/* One shape: the step loop and the kernel at each chunk length, with and
 * without outputs. */
static void bench(int64_t H, int64_t J, int64_t K, int64_t V, int reps) {
  enum { NC = 4 };
  const int64_t Cs[NC] = {8, 16, 32, 64};
  const int64_t nk = T * H * K, nv = T * H * V, nj = T * H * J, ns = H * J * V * K;
  float *q = malloc(sizeof(float) * nk), *k = malloc(sizeof(float) * nk);
  float *v = malloc(sizeof(float) * nv), *m = malloc(sizeof(float) * nj);
  float *s = malloc(sizeof(float) * nj), *tr = malloc(sizeof(float) * nj * J);
  float *S0 = malloc(sizeof(float) * ns), *S = malloc(sizeof(float) * ns);
  float *S_ref = malloc(sizeof(float) * ns), *w = malloc(sizeof(float) * J * K);
  float *o_ref = malloc(sizeof(float) * nv), *o = malloc(sizeof(float) * nv);
  double *times[1 + NC];
  for (int i = 0; i <= NC; i++) times[i] = malloc(sizeof(double) * (size_t)reps);
  for (int64_t i = 0; i < nk; i++) {
    q[i] = uval((uint64_t)i, 1);
    k[i] = uval((uint64_t)i, 2) / sqrtf((float)K);
  }
  for (int64_t i = 0; i < nv; i++) v[i] = uval((uint64_t)i, 3);
  for (int64_t i = 0; i < nj; i++) {
    m[i] = uval((uint64_t)i, 4);
    s[i] = uval((uint64_t)i, 5);
  }
  /* Rows of |Tr| summing to 0.9. */
  for (int64_t row = 0; row < nj; row++) {
    float *r = tr + row * J, sum = 0;
    for (int64_t j = 0; j < J; j++) {
      r[j] = uval((uint64_t)(row * J + j), 6);
      sum += fabsf(r[j]);
    }
    for (int64_t j = 0; j < J; j++) r[j] *= 0.9f / sum;
  }
  for (int64_t i = 0; i < ns; i++) S0[i] = 0.5f * uval((uint64_t)i, 7);

  printf("plstm H=%lld J=%lld K=%lld V=%lld T=%d, median of %d rounds\n", (long long)H,
         (long long)J, (long long)K, (long long)V, T, reps);
  printf("%-7s %6s %12s %9s %8s %10s\n", "outputs", "C", "tokens/s", "GFLOP/s", "speedup",
         "max err");
  for (int outs = 1; outs >= 0; outs--) {
    const float *qq = outs ? q : NULL;
    float *work[NC];
    double err[NC] = {0};
    for (int ci = 0; ci < NC; ci++)
      work[ci] = malloc(sizeof(float) * (size_t)rt_cpu_plstm_work(H, J, K, V, Cs[ci]));
    /* A round runs every method once, so that a slow stretch of a shared
     * machine slows all of them alike. */
    for (int r = 0; r < reps; r++) {
      memcpy(S_ref, S0, sizeof(float) * ns);
      double t0 = now();
      step_loop(H, J, K, V, qq, m, tr, s, v, k, S_ref, o_ref, w);
      times[0][r] = now() - t0;
      double scale = 0;
      for (int64_t i = 0; i < ns; i++) scale = fmax(scale, fabs(S_ref[i]));
      if (outs)
        for (int64_t i = 0; i < nv; i++) scale = fmax(scale, fabs(o_ref[i]));
      for (int ci = 0; ci < NC; ci++) {
        memcpy(S, S0, sizeof(float) * ns);
        t0 = now();
        rt_cpu_plstm(T, H, J, K, V, qq, H * K, m, H * J, 0, tr, H * J * J, s, H * J, v, H * V, k,
                     H * K, S, o, H * V, Cs[ci], work[ci]);
        times[1 + ci][r] = now() - t0;
        for (int64_t i = 0; i < ns; i++) err[ci] = fmax(err[ci], fabs(S[i] - S_ref[i]) / scale);
        if (outs)
          for (int64_t i = 0; i < nv; i++) err[ci] = fmax(err[ci], fabs(o[i] - o_ref[i]) / scale);
      }
    }
    for (int i = 0; i <= NC; i++) qsort(times[i], (size_t)reps, sizeof(double), cmp);
    const char *name = outs ? "yes" : "no";
    double t_step = times[0][reps / 2];
    double step_flops = 2.0 * H * T * K * V * (double)(J * J + J + outs * J);
    printf("%-7s %6s %12.0f %9.1f %8s %10s\n", name, "step", T / t_step, step_flops / t_step * 1e-9,
           "1.00", "-");
    for (int ci = 0; ci < NC; ci++) {
      double t = times[1 + ci][reps / 2], C = (double)Cs[ci];
      double per_chunk = (double)(J * J) * K * V + J * K * C * V +
                         outs * (C * J * K * V + C * (C + 1) / 2 * (K + V));
      double flops = 2.0 * H * T / C * per_chunk;
      printf("%-7s %6lld %12.0f %9.1f %8.2f %10.2e\n", name, (long long)Cs[ci], T / t,
             flops / t * 1e-9, t_step / t, err[ci]);
      free(work[ci]);
    }
  }
  float *bufs[] = {q, k, v, m, s, tr, S0, S, S_ref, w, o_ref, o};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  for (int i = 0; i <= NC; i++) free(times[i]);
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 9;
  if (reps < 1) reps = 1;
  bench(1, 4, 64, 64, reps);
  return 0;
}
