/* bench_rnn.c - forward time of a compiled .seq RNN (JIT, include/seq.h) at
 * T=1024, I=H=256 for B in {1, 8, 64}, and the JIT compile time.
 * usage: bench_rnn FILE.seq THREADS [REPS [B...]]
 * Prints the compile time and one line per B with the median of REPS timed
 * runs (after one warm-up run); the machine is shared, so medians, not bests. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "seq.h"

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  SeqContext *cx = seq_context_create();
  SeqOptions opt = {.opt_level = 2, .dims = "I=256,H=256", .num_threads = atoi(argv[2])};
  /* bench/run.sh's ISA=avx2: the generated code without AVX-512 too. */
  opt.target_features = getenv("BENCH_TARGET_FEATURES");
  SeqModule *m = NULL;
  double t0 = now();
  if (seq_module_from_file(cx, argv[1], &opt, &m) != SEQ_OK) {
    fprintf(stderr, "%s\n", seq_module_error(m));
    return 1;
  }
  double tc = now() - t0;
  int64_t total = 0;
  for (int i = 0; i < seq_module_count(m, SEQ_PARAM); i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    total += ti.numel;
  }
  float *blob = malloc(sizeof(float) * (size_t)total);
  for (int64_t k = 0; k < total; k++) blob[k] = (float)((k * 7919 % 1000) / 1000.0 - 0.5) * 0.1f;
  for (int i = 0, off = 0; i < seq_module_count(m, SEQ_PARAM); i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    seq_module_bind_weight(m, ti.name, blob + off, ti.numel);
    off += (int)ti.numel;
  }
  printf("%s threads=%s jit_compile_ms=%.1f\n", argv[1], argv[2], tc * 1e3);
  int reps = argc > 3 ? atoi(argv[3]) : 5;
  if (reps < 1 || reps > 1000) reps = 5;
  int Bs[16] = {1, 8, 64}, nb = 3;
  if (argc > 4)
    for (nb = 0; nb < 16 && 4 + nb < argc; nb++) Bs[nb] = atoi(argv[4 + nb]);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int bi = 0; bi < nb; bi++) {
    int64_t B = Bs[bi], T = 1024;
    float *x = calloc((size_t)(B * T * 256), 4), *y = calloc((size_t)(B * T * 256), 4);
    const void *in[1] = {x};
    float *out[1] = {y};
    seq_module_forward(m, B, T, in, NULL, NULL, out, NULL);
    for (int r = 0; r < reps; r++) {
      double s = now();
      if (seq_module_forward(m, B, T, in, NULL, NULL, out, NULL) != SEQ_OK) {
        fprintf(stderr, "%s\n", seq_module_error(m));
        return 1;
      }
      t[r] = now() - s;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp);
    printf("  B=%-3lld forward_ms=%.2f min_ms=%.2f\n", (long long)B, t[reps / 2] * 1e3, t[0] * 1e3);
    fflush(stdout);
    free(x);
    free(y);
  }
  free(t);
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  return 0;
}
