/* step_c.c - the C side of python/bench/overhead.py: seq_module_step of
 * examples/lstm.seq at B=1 called straight from C, prebuilt buffers, state
 * fed back in place. Prints the median over REPS of the mean time per call
 * (ns) of CALLS calls. Usage: step_c LSTM_SEQ I H REPS CALLS */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "seq.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 6) return 2;
  int I = atoi(argv[2]), H = atoi(argv[3]), reps = atoi(argv[4]), calls = atoi(argv[5]);
  char dims[64];
  snprintf(dims, sizeof dims, "I=%d,H=%d", I, H);
  SeqContext *cx = seq_context_create();
  SeqOptions opt = {.opt_level = 2, .dims = dims, .num_threads = 1};
  SeqModule *m = NULL;
  if (seq_module_from_file(cx, argv[1], &opt, &m) != SEQ_OK) {
    fprintf(stderr, "%s\n", seq_module_error(m));
    return 1;
  }
  float *w[4];
  for (int i = 0; i < seq_module_count(m, SEQ_PARAM); i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    w[i] = malloc(sizeof(float) * (size_t)ti.numel);
    for (int64_t k = 0; k < ti.numel; k++) w[i][k] = (float)((k % 17) - 8) * 0.01f;
    seq_module_bind_weight(m, ti.name, w[i], ti.numel);
  }
  float *x = calloc((size_t)I, sizeof(float)), *y = calloc((size_t)H, sizeof(float));
  float *h = calloc((size_t)H, sizeof(float)), *c = calloc((size_t)H, sizeof(float));
  const void *in[] = {x};
  const float *si[] = {h, c};
  float *out[] = {y};
  float *so[] = {h, c};
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
    double t0 = now_ns();
    for (int k = 0; k < calls; k++)
      if (seq_module_step(m, 1, in, si, out, so) != SEQ_OK) return 1;
    if (r >= 0) t[r] = (now_ns() - t0) / calls;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp);
  printf("%.1f\n", t[reps / 2]);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  return 0;
}
