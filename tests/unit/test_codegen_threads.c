/* test_codegen_threads.c - threads across the batch (runtime/cpu_forward.c):
 * a forward call with several threads runs the generated root function on
 * slices of the batch, each with its own pointers into the inputs, outputs,
 * states and lengths. For models that exercise every kind of buffer (two
 * states with an initial value and a final state aliasing it, lengths, a
 * reversed layer, stacked layers, int tokens, a complex state, a convolution
 * window state), the same module compiled for 3 threads must give what it
 * gives on 1 thread, at a batch of 7 (slices of 2, 2 and 3 examples), and the
 * step function likewise. The two runs differ only in how many rows share a
 * GEMM tile (a few ulps); a slicing bug (a wrong offset, a shifted length) is
 * O(1). A bad length must fail the whole call before anything is written. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_cpu.h"
#include "jitmodel.h"

enum { B = 7, T = 60, MAXT = 16 };

static uint64_t rng;
static float uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

typedef TuModel Model;

/* Compiles file for `threads` threads; weights from a fixed seed, so two
 * opens of the same file get the same weights. */
static void model_open(Model *md, const char *file, const char *dims, int threads) {
  rng = 0x9e3779b97f4a7c15ull;
  tu_model_open(md, file, dims, threads, uniform);
}

/* One call's buffers: inputs, outputs, initial and final states. */
typedef struct Run {
  int nin, nout, nst;
  void *in[MAXT];
  float *out[MAXT], *s0[MAXT], *sf[MAXT];
  int64_t out_n[MAXT], st_n[MAXT];
} Run;

static void run_alloc(Run *r, SeqModule *m, int64_t t) {
  memset(r, 0, sizeof *r);
  r->nin = seq_module_count(m, SEQ_INPUT);
  r->nout = seq_module_count(m, SEQ_OUTPUT);
  r->nst = seq_module_count(m, SEQ_STATE);
  assert_true(r->nin <= MAXT && r->nout <= MAXT && r->nst <= MAXT);
  rng = 0x2545f4914f6cdd1dull;
  for (int i = 0; i < r->nin; i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_INPUT, i, &ti), SEQ_OK);
    int64_t n = B * t * ti.numel;
    r->in[i] = malloc(4 * (size_t)n);
    assert_non_null(r->in[i]);
    for (int64_t k = 0; k < n; k++) {
      if (ti.is_int)
        ((int32_t *)r->in[i])[k] = (int32_t)((uniform() + 1) * 5); /* vocab >= 11 */
      else
        ((float *)r->in[i])[k] = uniform();
    }
  }
  for (int i = 0; i < r->nout; i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_OUTPUT, i, &ti), SEQ_OK);
    r->out_n[i] = B * t * ti.numel;
    r->out[i] = malloc(4 * (size_t)r->out_n[i]);
    assert_non_null(r->out[i]);
    for (int64_t k = 0; k < r->out_n[i]; k++) r->out[i][k] = NAN; /* must be written */
  }
  for (int i = 0; i < r->nst; i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_STATE, i, &ti), SEQ_OK);
    r->st_n[i] = B * ti.numel;
    r->s0[i] = malloc(4 * (size_t)r->st_n[i]);
    r->sf[i] = malloc(4 * (size_t)r->st_n[i]);
    assert_true(r->s0[i] && r->sf[i]);
    for (int64_t k = 0; k < r->st_n[i]; k++) r->s0[i][k] = 0.5f * uniform();
    for (int64_t k = 0; k < r->st_n[i]; k++) r->sf[i][k] = NAN;
  }
}

static void run_free(Run *r) {
  for (int i = 0; i < r->nin; i++) free(r->in[i]);
  for (int i = 0; i < r->nout; i++) free(r->out[i]);
  for (int i = 0; i < r->nst; i++) free(r->s0[i]), free(r->sf[i]);
}

static void expect_close(const char *what, const float *a, const float *b, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    double d = fabs((double)a[k] - (double)b[k]);
    if (!(d <= 1e-5 * (1 + fabs((double)b[k]))))
      fail_msg("%s: element %lld is %.9g with 3 threads, %.9g with 1", what, (long long)k,
               (double)a[k], (double)b[k]);
  }
}

static const int32_t lengths[B] = {60, 1, 33, 0, 59, 12, 60};

/* Forward with lengths and initial states, final states into separate
 * buffers; when `alias`, the first state's final value is written over its
 * initial one (the ABI allows it). */
static void forward(SeqModule *m, Run *r, int use_states, int use_lengths, int alias) {
  float *sf[MAXT];
  for (int i = 0; i < r->nst; i++) sf[i] = r->sf[i];
  if (alias && r->nst > 0) sf[0] = r->s0[0];
  SeqStatus st =
      seq_module_forward(m, B, T, (const void *const *)r->in, use_lengths ? lengths : NULL,
                         use_states ? (const float *const *)r->s0 : NULL, r->out, sf);
  if (st != SEQ_OK) fail_msg("forward: %s", seq_module_error(m));
  if (alias && r->nst > 0) memcpy(r->sf[0], r->s0[0], 4 * (size_t)r->st_n[0]);
}

static void compare(const char *file, const char *dims, int use_states, int use_lengths,
                    int alias) {
  Model one, three;
  model_open(&one, file, dims, 1);
  model_open(&three, file, dims, 3);
  Run a, b;
  run_alloc(&a, one.m, T);
  run_alloc(&b, three.m, T);
  forward(one.m, &a, use_states, use_lengths, alias);
  forward(three.m, &b, use_states, use_lengths, alias);
  for (int i = 0; i < a.nout; i++) expect_close(file, b.out[i], a.out[i], a.out_n[i]);
  for (int i = 0; i < a.nst; i++) expect_close(file, b.sf[i], a.sf[i], a.st_n[i]);
  run_free(&a);
  run_free(&b);
  tu_model_close(&one);
  tu_model_close(&three);
}

static void test_lstm(void **st) {
  (void)st;
  compare("examples/lstm.seq", "I=32,H=48", 1, 1, 0);
  compare("examples/lstm.seq", "I=32,H=48", 1, 0, 1);
  compare("examples/lstm.seq", "I=32,H=48", 0, 0, 0);
}

static void test_layers_reverse_lengths(void **st) {
  (void)st;
  compare("examples/bigru.seq", "I=32,H=48", 0, 1, 0);
  compare("examples/lstm2.seq", "I=32,H=48", 1, 1, 0);
}

static void test_tokens_conv_complex(void **st) {
  (void)st;
  compare("examples/lm.seq", "vocab=11,d_model=32,d_ff=64,dt_rank=4", 1, 1, 0);
  compare("stdlib/mamba.seq", "d_model=32,d_inner=64,d_state=8,d_conv=4,dt_rank=4", 1, 1, 0);
  compare("stdlib/lru.seq", "H=32,N=32", 1, 1, 0);
}

/* The step function (T = 1) over a batch of 7 with 3 threads. */
static void test_step(void **st) {
  (void)st;
  Model one, three;
  model_open(&one, "examples/lstm.seq", "I=256,H=256", 1);
  model_open(&three, "examples/lstm.seq", "I=256,H=256", 3);
  Run a, b;
  run_alloc(&a, one.m, 1);
  run_alloc(&b, three.m, 1);
  assert_int_equal(
      seq_module_step(one.m, B, (const void *const *)a.in, (const float *const *)a.s0, a.out, a.sf),
      SEQ_OK);
  assert_int_equal(seq_module_step(three.m, B, (const void *const *)b.in,
                                   (const float *const *)b.s0, b.out, b.sf),
                   SEQ_OK);
  expect_close("step output", b.out[0], a.out[0], a.out_n[0]);
  for (int i = 0; i < a.nst; i++) expect_close("step state", b.sf[i], a.sf[i], a.st_n[i]);
  run_free(&a);
  run_free(&b);
  tu_model_close(&one);
  tu_model_close(&three);
}

/* Two host threads run forwards on one module at once, with 2 pool threads:
 * the pool is held by one whole forward at a time, so the other runs its
 * slices on its own thread (rt_cpu_parallel_for_nowait) instead of waiting.
 * Both must finish and match the serial results. */
typedef struct Concurrent {
  SeqModule *m;
  Run *r;
  int ok;
} Concurrent;

static void *concurrent_forward(void *arg) {
  Concurrent *c = arg;
  c->ok = 1;
  for (int k = 0; k < 5 && c->ok; k++)
    c->ok = seq_module_forward(c->m, B, T, (const void *const *)c->r->in, lengths,
                               (const float *const *)c->r->s0, c->r->out, c->r->sf) == SEQ_OK;
  return NULL;
}

static void test_two_host_threads(void **st) {
  (void)st;
  Model one, two;
  model_open(&one, "examples/lstm.seq", "I=32,H=48", 1);
  model_open(&two, "examples/lstm.seq", "I=32,H=48", 2);
  Run ref, a, b;
  run_alloc(&ref, one.m, T);
  run_alloc(&a, two.m, T);
  run_alloc(&b, two.m, T);
  forward(one.m, &ref, 1, 1, 0);
  Concurrent ca = {two.m, &a, 0}, cb = {two.m, &b, 0};
  pthread_t ta, tb;
  assert_int_equal(pthread_create(&ta, NULL, concurrent_forward, &ca), 0);
  assert_int_equal(pthread_create(&tb, NULL, concurrent_forward, &cb), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  assert_true(ca.ok && cb.ok);
  for (int i = 0; i < ref.nout; i++) {
    expect_close("thread a", a.out[i], ref.out[i], ref.out_n[i]);
    expect_close("thread b", b.out[i], ref.out[i], ref.out_n[i]);
  }
  for (int i = 0; i < ref.nst; i++) {
    expect_close("thread a state", a.sf[i], ref.sf[i], ref.st_n[i]);
    expect_close("thread b state", b.sf[i], ref.sf[i], ref.st_n[i]);
  }
  run_free(&ref);
  run_free(&a);
  run_free(&b);
  tu_model_close(&one);
  tu_model_close(&two);
}

/* A length outside [0, T] in the last slice fails the call with 3 threads as
 * with 1, and no slice has written its outputs. */
static void test_bad_length(void **st) {
  (void)st;
  Model md;
  model_open(&md, "examples/lstm.seq", "I=32,H=48", 3);
  Run r;
  run_alloc(&r, md.m, T);
  int32_t bad[B] = {60, 60, 60, 60, 60, 60, 61};
  assert_int_not_equal(
      seq_module_forward(md.m, B, T, (const void *const *)r.in, bad, NULL, r.out, NULL), SEQ_OK);
  assert_non_null(strstr(seq_module_error(md.m), "length"));
  for (int64_t k = 0; k < r.out_n[0]; k++)
    if (!isnan(r.out[0][k])) fail_msg("output %lld was written", (long long)k);
  run_free(&r);
  tu_model_close(&md);
}

/* The decision the tests above rely on: their dims give at least 6M
 * operations per call at B = 7 (LSTM I=32,H=48: 15K per token, 420 tokens;
 * the step at I=H=256: 524K per token), so 3 threads make 3 slices. */
/* The caller's floating-point controls hold on every thread of a call: with
 * flush-to-zero and denormals-are-zero set by the host, a product that would
 * be subnormal (1e-20 * 1e-20) is 0 in every slice of the batch, not only in
 * those the calling thread runs (the pool's workers kept their own controls:
 * half the batch got 1e-40). x86-64 only, where MXCSR holds them. */
static void test_caller_fp_controls(void **st) {
  (void)st;
#if defined(__x86_64__)
  enum { D = 8192, NB = 4, NT = 64 };
  static const char src[] = "cell Tiny(D) {\n"
                            "  param w: [D]\n"
                            "  input x: [D]\n"
                            "  state s: [D] = 0\n"
                            "  output y: [D]\n"
                            "  step {\n"
                            "    s' = s + x\n"
                            "    y = x * w\n"
                            "  }\n"
                            "}\n";
  SeqContext *cx = seq_context_create();
  SeqOptions o = {.opt_level = 2, .dims = "D=8192", .num_threads = 2};
  SeqModule *m = NULL;
  assert_int_equal(seq_module_from_string(cx, "tiny.seq", src, &o, &m), SEQ_OK);
  float *w = malloc(sizeof(float) * D), *x = malloc(sizeof(float) * NB * NT * D),
        *y = malloc(sizeof(float) * NB * NT * D);
  for (int i = 0; i < D; i++) w[i] = 1e-20f;
  for (int64_t i = 0; i < (int64_t)NB * NT * D; i++) x[i] = 1e-20f;
  assert_int_equal(seq_module_bind_weight(m, "w", w, D), SEQ_OK);
  assert_true(rt_cpu_batch_slices(NB, NT, 2 * D, 2) == 2);
  const void *in[1] = {x};
  float *out[1] = {y};
  for (int flush = 0; flush < 2; flush++) {
    unsigned saved = __builtin_ia32_stmxcsr();
    if (flush) __builtin_ia32_ldmxcsr(saved | 0x8040); /* FTZ | DAZ */
    SeqStatus rc = seq_module_forward(m, NB, NT, in, NULL, NULL, out, NULL);
    __builtin_ia32_ldmxcsr(saved);
    assert_int_equal(rc, SEQ_OK);
    int64_t zeros = 0;
    for (int64_t i = 0; i < (int64_t)NB * NT * D; i++) zeros += y[i] == 0.0f;
    if (flush && zeros != (int64_t)NB * NT * D)
      fail_msg("flush-to-zero set: %lld of %lld outputs subnormal",
               (long long)(NB * NT * D - zeros), (long long)NB * NT * D);
    if (!flush && zeros != 0) fail_msg("without flush-to-zero: %lld outputs 0", (long long)zeros);
  }
  free(w);
  free(x);
  free(y);
  seq_module_destroy(m);
  seq_context_destroy(cx);
#else
  skip();
#endif
}

static void test_slices(void **st) {
  (void)st;
  assert_int_equal(rt_cpu_batch_slices(7, 60, 15360, 3), 3);
  assert_int_equal(rt_cpu_batch_slices(7, 1, 524288, 3), 3);
  assert_int_equal(rt_cpu_batch_slices(7, 60, 15360, 1), 1);
  assert_int_equal(rt_cpu_batch_slices(1, 1000, 1 << 20, 8), 1);
  assert_int_equal(rt_cpu_batch_slices(2, 1000, 1 << 20, 8), 2);
  assert_int_equal(rt_cpu_batch_slices(64, 1, 1024, 8), 1);  /* 64K operations: not worth it */
  assert_int_equal(rt_cpu_batch_slices(64, 1, 49152, 8), 3); /* 3M: three slices of 1M */
  assert_int_equal(rt_cpu_batch_slices(-1, 10, 1 << 20, 4), 1);
  assert_int_equal(rt_cpu_batch_slices(8, 0, 1 << 20, 4), 1);
  assert_int_equal(rt_cpu_batch_slices((int64_t)1 << 40, 10, 1, 4), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slices),
      cmocka_unit_test(test_lstm),
      cmocka_unit_test(test_layers_reverse_lengths),
      cmocka_unit_test(test_tokens_conv_complex),
      cmocka_unit_test(test_step),
      cmocka_unit_test(test_bad_length),
      cmocka_unit_test(test_two_host_threads),
      cmocka_unit_test(test_caller_fp_controls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
