/* bench_rnn.c - forward time of a compiled .seq RNN (JIT, include/seq.h) at
 * T=1024, I=H=256 for B in {1, 8, 64}, and the JIT compile time.
 * usage: bench_rnn FILE.seq THREADS   (prints one line per B) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "seq.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  SeqContext *cx = seq_context_create();
  SeqOptions opt = {.opt_level = 2, .dims = "I=256,H=256", .num_threads = atoi(argv[2])};
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
  const int Bs[] = {1, 8, 64};
  for (int bi = 0; bi < 3; bi++) {
    int64_t B = Bs[bi], T = 1024;
    float *x = calloc((size_t)(B * T * 256), 4), *y = calloc((size_t)(B * T * 256), 4);
    const void *in[1] = {x};
    float *out[1] = {y};
    seq_module_forward(m, B, T, in, NULL, NULL, out, NULL);
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
      double s = now();
      seq_module_forward(m, B, T, in, NULL, NULL, out, NULL);
      double e = now() - s;
      if (e < best) best = e;
    }
    printf("  B=%-3lld forward_ms=%.2f\n", (long long)B, best * 1e3);
    free(x);
    free(y);
  }
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  return 0;
}
