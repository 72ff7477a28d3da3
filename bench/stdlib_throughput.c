/* stdlib_throughput.c - forward throughput of every standard cell through the
 * CPU backend (JIT, include/seq.h): B=8 sequences of T=1024 tokens at a model
 * width around 256, one thread, seeded random weights of scale 1/sqrt(fan-in)
 * and inputs in [-1, 1]. Prints a Markdown table: tokens per second (median of
 * five runs after a warm-up) and the JIT compile time.
 * usage: stdlib_throughput [SRCDIR [ONLY [STRATEGY]]]   (the source tree, default "."; ONLY: a
 * comma-separated list of substrings, to run only the cells whose file names contain one, ""
 * for all; STRATEGY: the --strategy of every cell, default auto) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "seq.h"

#include "std_cells.h"

enum { B = 8, T = 1024, RUNS = 5 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Runs one cell; prints its table row. Returns 0 on success. */
static const char *strategy; /* argv[3]: --strategy for every cell (NULL: auto) */

static int bench_one(SeqContext *cx, const char *srcdir, const SeqStdCell *bn) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", srcdir, bn->file);
  SeqOptions opt = {.opt_level = 2, .dims = bn->dims, .num_threads = 1, .strategy = strategy};
  SeqModule *m = NULL;
  double t0 = now();
  if (seq_module_from_file(cx, path, &opt, &m) != SEQ_OK) {
    printf("| `%s` | `%s` | failed: %s | | |\n", bn->file, bn->dims, m ? seq_module_error(m) : "");
    seq_module_destroy(m);
    return 1;
  }
  double compile_ms = (now() - t0) * 1e3;

  int np = seq_module_count(m, SEQ_PARAM), ni = seq_module_count(m, SEQ_INPUT),
      no = seq_module_count(m, SEQ_OUTPUT);
  float **weights = calloc((size_t)np, sizeof *weights);
  void **inputs = calloc((size_t)ni, sizeof *inputs);
  float **outputs = calloc((size_t)no, sizeof *outputs);
  int ok = weights && inputs && outputs;
  for (int i = 0; ok && i < np; i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    weights[i] = malloc(sizeof(float) * (size_t)(ti.numel ? ti.numel : 1));
    if (!weights[i]) ok = 0;
    float k = ti.ndim ? 1.0f / sqrtf((float)ti.shape[ti.ndim - 1]) : 1.0f;
    for (int64_t j = 0; ok && j < ti.numel; j++) weights[i][j] = k * uniform();
    if (ok && seq_module_bind_weight(m, ti.name, weights[i], ti.numel) != SEQ_OK) ok = 0;
  }
  for (int i = 0; ok && i < ni; i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_INPUT, i, &ti);
    int64_t n = (int64_t)B * T * ti.numel;
    float *x = malloc(sizeof(float) * (size_t)n);
    if (!x) ok = 0;
    for (int64_t j = 0; ok && j < n; j++) x[j] = uniform();
    inputs[i] = x;
  }
  for (int i = 0; ok && i < no; i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_OUTPUT, i, &ti);
    outputs[i] = malloc(sizeof(float) * (size_t)((int64_t)B * T * ti.numel));
    if (!outputs[i]) ok = 0;
  }
  double times[RUNS];
  for (int r = -1; ok && r < RUNS; r++) { /* r = -1 warms up */
    double s = now();
    if (seq_module_forward(m, B, T, (const void *const *)inputs, NULL, NULL, outputs, NULL) !=
        SEQ_OK)
      ok = 0;
    if (r >= 0) times[r] = now() - s;
  }
  if (ok) {
    qsort(times, RUNS, sizeof times[0], cmp_double);
    double med = times[RUNS / 2];
    printf("| `%s` | `%s` | %.0f | %.1f | %.0f |\n", bn->file, bn->dims, (double)B * T / med,
           med * 1e3, compile_ms);
  } else {
    printf("| `%s` | `%s` | failed: %s | | |\n", bn->file, bn->dims, seq_module_error(m));
  }
  for (int i = 0; weights && i < np; i++) free(weights[i]);
  for (int i = 0; inputs && i < ni; i++) free(inputs[i]);
  for (int i = 0; outputs && i < no; i++) free(outputs[i]);
  free(weights);
  free(inputs);
  free(outputs);
  seq_module_destroy(m);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *srcdir = argc > 1 ? argv[1] : ".";
  const char *only = argc > 2 && *argv[2] ? argv[2] : NULL; /* substrings of file names */
  strategy = argc > 3 ? argv[3] : NULL;
  SeqContext *cx = seq_context_create();
  if (!cx) return 1;
  printf("| cell | dims | tokens/s | ms per forward (B=%d, T=%d) | JIT compile ms |\n", B, T);
  printf("|---|---|---|---|---|\n");
  int failures = 0;
  for (int i = 0; i < SEQ_NSTD_CELLS; i++) {
    if (only) {
      int hit = 0;
      for (const char *p = only; *p && !hit;) {
        size_t n = strcspn(p, ",");
        char want[64];
        if (n > 0 && n < sizeof want) {
          memcpy(want, p, n);
          want[n] = '\0';
          hit = strstr(SEQ_STD_CELLS[i].file, want) != NULL;
        }
        p += n + (p[n] == ',');
      }
      if (!hit) continue;
    }
    failures += bench_one(cx, srcdir, &SEQ_STD_CELLS[i]);
  }
  seq_context_destroy(cx);
  return failures ? 1 : 0;
}
