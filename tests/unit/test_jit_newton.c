/* test_jit_newton.c - compiled Newton solves through the C API.
 *
 * Warm starts (SeqOptions.newton_warm): a module's forward starts each
 * solve from the trajectory its last forward found. Results stay the step
 * loop's (within the tolerance); what changes is the iterations, and that
 * is what these tests count: a second forward on the same input converges
 * at the first iteration of every solve only when every stored row came
 * back to the step it belongs to (in reversed layers, windows, time chunks
 * and batch slices on threads too).
 *
 * The linear recurrence split in time (runtime/cpu_newton.c, narrow states
 * with three or more threads per example): the same values as the step
 * loop, with a diagonal Jacobian and with 2x2 blocks. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "seq.h"

enum { I = 8, H = 16 };

/* ParaGRU forwards and backwards: two Newton layers, one reversed. */
static const char BI[] = "import \"%s\"\n"
                         "model BiParaGRU(I, H) {\n"
                         "  input  x: [I]\n"
                         "  output y: [2*H]\n"
                         "  layer fwd = ParaGRU(I, H)\n"
                         "  layer bwd = reverse ParaGRU(I, H)\n"
                         "  forward {\n"
                         "    y = concat(fwd(x), bwd(x))\n"
                         "  }\n"
                         "}\n";

static const char *bi_source(void) {
  static char src[2048];
  snprintf(src, sizeof src, BI, tu_src("stdlib/paragru.seq"));
  return src;
}

typedef struct Run {
  const char *strategy;
  long window;
  int threads, warm;
  const char *cell; /* a std cell alone ("stdlib/paragru.seq"), or NULL: BI */
  const char *dims; /* NULL: I=8,H=16 */
  int dense;        /* SeqOptions.newton_dense */
} Run;

static SeqModule *compile(SeqContext *cx, Run r) {
  SeqOptions opt = {0};
  opt.opt_level = 2;
  opt.dims = r.dims ? r.dims : "I=8,H=16";
  opt.newton_dense = r.dense;
  opt.strategy = r.strategy;
  opt.newton_window = r.window;
  opt.num_threads = r.threads;
  opt.newton_warm = r.warm;
  SeqModule *m = NULL;
  SeqStatus st = r.cell ? seq_module_from_file(cx, tu_src(r.cell), &opt, &m)
                        : seq_module_from_string(cx, "bi.seq", bi_source(), &opt, &m);
  if (st != SEQ_OK) fail_msg("compile: %s", seq_module_error(m));
  /* Weights of a trained scale: small recurrent diagonals, input weights
   * around 1/sqrt(I). */
  for (int i = 0; i < seq_module_count(m, SEQ_PARAM); i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_PARAM, i, &ti), SEQ_OK);
    static float w[4096];
    assert_true(ti.numel <= 4096);
    for (int64_t k = 0; k < ti.numel; k++)
      w[k] = (float)(((k * 7919 + i * 104729) % 1000) / 1000.0 - 0.5) * 0.8f;
    assert_int_equal(seq_module_bind_weight(m, ti.name, w, ti.numel), SEQ_OK);
  }
  return m;
}

static void forward(SeqModule *m, int64_t B, int64_t T, const float *x, const int32_t *len,
                    float *y) {
  const void *in[1] = {x};
  float *out[1] = {y};
  if (seq_module_forward(m, B, T, in, len, NULL, out, NULL) != SEQ_OK)
    fail_msg("forward: %s", seq_module_error(m));
}

static double max_diff(const float *a, const float *b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
  return d;
}

/* A forward of m on x against the step loop's y_ref; returns its stats. */
static int64_t out_width(SeqModule *m) {
  SeqTensorInfo ti;
  assert_int_equal(seq_module_info(m, SEQ_OUTPUT, 0, &ti), SEQ_OK);
  return ti.numel;
}

static SeqNewtonStats checked(SeqModule *m, int64_t B, int64_t T, const float *x,
                              const int32_t *len, const float *y_ref, float *y) {
  SeqNewtonStats st;
  seq_newton_stats(NULL, 1);
  forward(m, B, T, x, len, y);
  seq_newton_stats(&st, 0);
  double d = max_diff(y, y_ref, B * T * out_width(m));
  if (!(d <= 1e-4)) fail_msg("differs from the step loop by %g", d);
  assert_int_equal(st.fallbacks, 0);
  return st;
}

static void test_warm(Run r, int64_t B, int64_t T, const int32_t *len) {
  SeqContext *cx = seq_context_create();
  SeqModule *seq = compile(cx, (Run){"sequential", 0, 1, 0, r.cell, r.dims, 0});
  SeqModule *cold = compile(cx, (Run){"newton", r.window, r.threads, 0, r.cell, r.dims, r.dense});
  SeqModule *m = compile(cx, r);
  int64_t n = B * T * I, ny = B * T * out_width(m);
  float *x = malloc(sizeof(float) * (size_t)n), *x2 = malloc(sizeof(float) * (size_t)n);
  float *y_ref = malloc(sizeof(float) * (size_t)ny), *y_ref2 = malloc(sizeof(float) * (size_t)ny);
  float *y = malloc(sizeof(float) * (size_t)ny);
  for (int64_t i = 0; i < n; i++) {
    x[i] = (float)sin(0.37 * (double)i) * 1.5f;
    x2[i] = x[i] + 0.01f * (float)cos(1.3 * (double)i); /* a nearby input */
  }
  forward(seq, B, T, x, len, y_ref);
  forward(seq, B, T, x2, len, y_ref2);

  /* The first forward has nothing stored: as a cold module's. */
  SeqNewtonStats c = checked(cold, B, T, x, len, y_ref, y);
  SeqNewtonStats s = checked(m, B, T, x, len, y_ref, y);
  assert_true(c.solves > 0);
  assert_int_equal(s.warm_starts, 0);
  assert_int_equal(s.solves, c.solves);
  assert_int_equal(s.iterations, c.iterations);
  /* The same input again: every solve starts at its answer. */
  s = checked(m, B, T, x, len, y_ref, y);
  assert_int_equal(s.solves, c.solves);
  assert_int_equal(s.warm_starts, s.solves);
  assert_int_equal(s.iterations, s.solves);
  /* A nearby input: warm, and fewer iterations than from cold. */
  SeqNewtonStats c2 = checked(cold, B, T, x2, len, y_ref2, y);
  s = checked(m, B, T, x2, len, y_ref2, y);
  assert_int_equal(s.warm_starts, s.solves);
  printf("%s, window %ld, %d threads, B=%lld T=%lld: %lld solves, iterations %lld cold, %lld "
         "warm on a nearby input\n",
         r.cell ? r.cell : "BiParaGRU", r.window, r.threads, (long long)B, (long long)T,
         (long long)s.solves, (long long)c2.iterations, (long long)s.iterations);
  assert_true(s.iterations < c2.iterations);
  /* A call of another length starts afresh. */
  forward(seq, B, T - 1, x, NULL, y_ref);
  s = checked(m, B, T - 1, x, NULL, y_ref, y);
  assert_int_equal(s.warm_starts, 0);
  assert_true(s.solves > 0);
  seq_module_destroy(seq);
  seq_module_destroy(cold);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  free(x), free(x2), free(y_ref), free(y_ref2), free(y);
}

static void test_whole(void **st) {
  (void)st;
  static const int32_t len[3] = {300, 217, 0};
  test_warm((Run){"newton", 0, 1, 1, NULL, NULL, 0}, 3, 300, len);
}

/* Windows of 40 steps, whose time chunks start past step 0. */
static void test_windows(void **st) {
  (void)st;
  static const int32_t len[3] = {300, 217, 1};
  test_warm((Run){"newton", 40, 1, 1, NULL, NULL, 0}, 3, 300, len);
}

/* Slices of the batch on two threads, each from its own examples' rows. */
static void test_threads(void **st) {
  (void)st;
  static const int32_t len[6] = {400, 399, 13, 400, 250, 400};
  test_warm((Run){"newton", 0, 2, 1, NULL, NULL, 0}, 6, 400, len);
  test_warm((Run){"newton", 64, 2, 1, NULL, NULL, 0}, 6, 400, len);
}

/* Narrow states on four threads per example: the linear recurrence runs
 * split in time (segments of at least 256 steps), with a diagonal Jacobian
 * (ParaGRU, also reversed and in windows), 2x2 blocks (ParaLSTM) and a
 * dense one (GRU with its Jacobian formed whole). */
static void test_time_split(void **st) {
  (void)st;
  static const int32_t len[2] = {3000, 1100};
  test_warm((Run){"newton", 0, 4, 1, "stdlib/paragru.seq", NULL, 0}, 1, 3000, NULL);
  test_warm((Run){"newton", 0, 4, 1, "stdlib/paralstm.seq", NULL, 0}, 1, 3000, NULL);
  test_warm((Run){"newton", 0, 8, 1, "stdlib/paralstm.seq", NULL, 0}, 2, 3000, len);
  test_warm((Run){"newton", 0, 8, 1, NULL, NULL, 0}, 2, 3000, len);
  test_warm((Run){"newton", 700, 4, 1, NULL, NULL, 0}, 1, 3000, NULL);
  /* A dense Jacobian (exact Newton on GRU, n*w = 4) splits from 6 threads. */
  test_warm((Run){"newton", 0, 8, 1, "stdlib/gru.seq", "I=8,H=4", 1}, 1, 2000, NULL);
}

/* Token by token: the store holds each example's last step, which is the
 * next step's guess; the steps give the step loop's values. */
static void test_steps(void **st) {
  (void)st;
  enum { B = 2, STEPS = 30 };
  SeqContext *cx = seq_context_create();
  SeqModule *seq = compile(cx, (Run){"sequential", 0, 1, 0, "stdlib/paragru.seq", NULL, 0});
  SeqModule *m = compile(cx, (Run){"newton", 0, 1, 1, "stdlib/paragru.seq", NULL, 0});
  float x[B * I], h[2][B * H], y[B * H], y_ref[B * H], h_ref[2][B * H];
  memset(h, 0, sizeof h);
  memset(h_ref, 0, sizeof h_ref);
  for (int t = 0; t < STEPS; t++) {
    for (int i = 0; i < B * I; i++) x[i] = (float)sin(0.7 * (t * B * I + i));
    const void *in[1] = {x};
    const float *sin_ref[1] = {h_ref[t & 1]}, *sin_m[1] = {h[t & 1]};
    float *out_ref[1] = {y_ref}, *out_m[1] = {y};
    float *sout_ref[1] = {h_ref[(t + 1) & 1]}, *sout_m[1] = {h[(t + 1) & 1]};
    assert_int_equal(seq_module_step(seq, B, in, sin_ref, out_ref, sout_ref), SEQ_OK);
    SeqNewtonStats s;
    seq_newton_stats(NULL, 1);
    assert_int_equal(seq_module_step(m, B, in, sin_m, out_m, sout_m), SEQ_OK);
    seq_newton_stats(&s, 0);
    assert_true(max_diff(y, y_ref, B * H) <= 1e-4);
    assert_int_equal(s.solves, B);
    assert_int_equal(s.warm_starts, t ? B : 0);
  }
  seq_module_destroy(seq);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_whole),      cmocka_unit_test(test_windows),
      cmocka_unit_test(test_threads),    cmocka_unit_test(test_steps),
      cmocka_unit_test(test_time_split),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
