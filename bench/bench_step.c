/* bench_step.c - token-by-token inference: the time of one call of the step
 * function (include/seq.h, seq_module_step: state in, one token in, output
 * and state out) of a compiled .seq RNN at I=H=256, for B in {1, 8, 64} by
 * default. Each timed run chains 256 steps (the state out fed back in); the
 * median over REPS runs of the mean step time is printed, with the weights as
 * bound (step_us) and packed once by seq_module_prepare (prepared_us), the
 * two alternating run by run.
 * usage: bench_step FILE.seq THREADS [REPS [B...]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "seq.h"

enum { STEPS = 256, MAXS = 8 };

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
  if (argc < 3) {
    fprintf(stderr, "usage: %s FILE.seq THREADS [REPS [B...]]\n", argv[0]);
    return 2;
  }
  SeqContext *cx = seq_context_create();
  SeqOptions opt = {.opt_level = 2, .dims = "I=256,H=256", .num_threads = atoi(argv[2])};
  SeqModule *m = NULL;
  if (seq_module_from_file(cx, argv[1], &opt, &m) != SEQ_OK) {
    fprintf(stderr, "%s\n", m ? seq_module_error(m) : "out of memory");
    return 1;
  }
  int np = seq_module_count(m, SEQ_PARAM), ns = seq_module_count(m, SEQ_STATE);
  if (ns > MAXS || seq_module_count(m, SEQ_INPUT) != 1 || seq_module_count(m, SEQ_OUTPUT) != 1) {
    fprintf(stderr, "%s: one input, one output and at most %d states expected\n", argv[1], MAXS);
    return 1;
  }
  float **w = calloc((size_t)np, sizeof *w);
  for (int i = 0; i < np; i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    w[i] = malloc(sizeof(float) * (size_t)ti.numel);
    for (int64_t k = 0; k < ti.numel; k++)
      w[i][k] = (float)((k * 7919 % 1000) / 1000.0 - 0.5) * 0.1f;
    seq_module_bind_weight(m, ti.name, w[i], ti.numel);
  }
  SeqTensorInfo w0;
  seq_module_info(m, SEQ_PARAM, 0, &w0);
  SeqTensorInfo xi, yi, si[MAXS];
  seq_module_info(m, SEQ_INPUT, 0, &xi);
  seq_module_info(m, SEQ_OUTPUT, 0, &yi);
  for (int s = 0; s < ns; s++) seq_module_info(m, SEQ_STATE, s, &si[s]);
  int reps = argc > 3 ? atoi(argv[3]) : 7;
  if (reps < 1 || reps > 1000) reps = 7;
  int Bs[16] = {1, 8, 64}, nb = 3;
  if (argc > 4)
    for (nb = 0; nb < 16 && 4 + nb < argc; nb++) Bs[nb] = atoi(argv[4 + nb]);
  double *t = malloc(sizeof(double) * (size_t)reps), *tp = malloc(sizeof(double) * (size_t)reps);
  for (int bi = 0; bi < nb; bi++) {
    int64_t B = Bs[bi];
    float *x = calloc((size_t)(B * xi.numel), 4), *y = calloc((size_t)(B * yi.numel), 4);
    for (int64_t k = 0; k < B * xi.numel; k++) x[k] = (float)((k * 104729 % 1000) / 500.0 - 1.0);
    float *st[MAXS];
    for (int s = 0; s < ns; s++) st[s] = calloc((size_t)(B * si[s].numel), 4);
    const void *in[1] = {x};
    float *out[1] = {y};
    for (int r = -1; r < reps; r++) /* r = -1: warm-up */
      for (int prep = 0; prep < 2; prep++) {
        /* Binding again drops the packed copy. */
        if (prep ? seq_module_prepare(m) : seq_module_bind_weight(m, w0.name, w[0], w0.numel)) {
          fprintf(stderr, "%s\n", seq_module_error(m));
          return 1;
        }
        double s0 = now();
        for (int k = 0; k < STEPS; k++)
          if (seq_module_step(m, B, in, (const float *const *)st, out, st) != SEQ_OK) {
            fprintf(stderr, "%s\n", seq_module_error(m));
            return 1;
          }
        if (r >= 0) (prep ? tp : t)[r] = (now() - s0) / STEPS;
      }
    qsort(t, (size_t)reps, sizeof(double), cmp);
    qsort(tp, (size_t)reps, sizeof(double), cmp);
    printf("  B=%-3lld step_us=%.1f min_us=%.1f prepared_us=%.1f prepared_min_us=%.1f\n",
           (long long)B, t[reps / 2] * 1e6, t[0] * 1e6, tp[reps / 2] * 1e6, tp[0] * 1e6);
    fflush(stdout);
    free(x);
    free(y);
    for (int s = 0; s < ns; s++) free(st[s]);
  }
  free(t);
  free(tp);
  for (int i = 0; i < np; i++) free(w[i]);
  free(w);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  return 0;
}
