/* test_jit_shared.c - one module run from several threads at once (the
 * Python package's threads share a module): every thread's forwards and
 * steps equal a single thread's, each thread reads back its own failure's
 * message; and the data the Python package reads: the diagnostics as the
 * CLI prints them, and the report as JSON. */
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "seq.h"

enum { B = 3, T = 40, I = 8, H = 16, ROUNDS = 30 };

static SeqModule *compile_lstm(SeqContext *cx, const char *strategy) {
  SeqOptions opt = {0};
  opt.opt_level = 2;
  opt.dims = "I=8,H=16";
  opt.strategy = strategy;
  SeqModule *m = NULL;
  SeqStatus st = seq_module_from_file(cx, tu_src("examples/lstm.seq"), &opt, &m);
  if (st != SEQ_OK) fail_msg("compile: %s", seq_module_error(m));
  return m;
}

static float *bind_weights(SeqModule *m) {
  float *blob = malloc(sizeof(float) * 4 * H * (I + H + 2));
  int64_t off = 0;
  for (int i = 0; i < seq_module_count(m, SEQ_PARAM); i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_PARAM, i, &ti), SEQ_OK);
    for (int64_t k = 0; k < ti.numel; k++)
      blob[off + k] = (float)(((off + k) * 7919 % 1000) / 1000.0 - 0.5) * 0.4f;
    assert_int_equal(seq_module_bind_weight(m, ti.name, blob + off, ti.numel), SEQ_OK);
    off += ti.numel;
  }
  return blob;
}

typedef struct Job {
  SeqModule *m;
  int seed;
  float x[B * T * I];
  float want_y[B * T * H], want_h[B * H], y[B * T * H];
  float want_steps[5 * B * H]; /* the outputs of 5 steps, single-threaded */
  int mismatches, failures;
  char bad_msg[512]; /* the message this thread read after its own failed call */
} Job;

static void fill_x(Job *j) {
  for (int k = 0; k < B * T * I; k++)
    j->x[k] = (float)(((k + 1) * (j->seed * 31 + 17) % 997) / 997.0 - 0.5);
}

static SeqStatus run(Job *j, float *y, float *h, float *c) {
  const void *in[] = {j->x};
  float *out[] = {y};
  float *so[] = {h, c};
  return seq_module_forward(j->m, B, T, in, NULL, NULL, out, so);
}

/* Steps over the first 5 tokens of every example, state fed back. */
static SeqStatus steps(Job *j, float *ys) {
  float hs[B * H] = {0}, cs[B * H] = {0}, xt[B * I];
  for (int t = 0; t < 5; t++) {
    for (int b = 0; b < B; b++) memcpy(xt + b * I, j->x + (b * T + t) * I, sizeof(float) * I);
    const void *in[] = {xt};
    const float *si[] = {hs, cs};
    float *out[] = {ys + t * B * H};
    float *so[] = {hs, cs};
    SeqStatus st = seq_module_step(j->m, B, in, si, out, so);
    if (st != SEQ_OK) return st;
  }
  return SEQ_OK;
}

/* ROUNDS forwards, and as many step loops over the first 5 tokens; every
 * result must be bitwise the single-threaded one. Between rounds, a call
 * with bad lengths whose message this thread reads back. */
static void *worker(void *arg) {
  Job *j = arg;
  float *yy = j->y;
  for (int r = 0; r < ROUNDS; r++) {
    float h[B * H], c[B * H];
    if (run(j, yy, h, c) != SEQ_OK) {
      j->failures++;
      continue;
    }
    if (memcmp(yy, j->want_y, sizeof j->want_y) || memcmp(h, j->want_h, sizeof h)) j->mismatches++;
    float ys[5 * B * H];
    if (steps(j, ys) != SEQ_OK) j->failures++;
    if (memcmp(ys, j->want_steps, sizeof ys)) j->mismatches++;
    /* A failure of its own: bad lengths in thread 1, a negative batch in 2. */
    int32_t lengths[B] = {1, T + 1, 2};
    const void *in[] = {j->x};
    float *out[] = {yy};
    SeqStatus bad = j->seed == 1 ? seq_module_forward(j->m, B, T, in, lengths, NULL, out, NULL)
                                 : seq_module_forward(j->m, -1, T, in, NULL, NULL, out, NULL);
    if (bad == SEQ_OK) j->failures++;
    const char *msg = seq_module_error(j->m);
    if ((j->seed == 1) != (strstr(msg, "length") != NULL)) j->mismatches++;
    snprintf(j->bad_msg, sizeof j->bad_msg, "%s", msg);
  }
  return NULL;
}

static void test_one_module_two_threads(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, NULL);
  float *w = bind_weights(m);
  Job *jobs = calloc(2, sizeof *jobs);
  for (int t = 0; t < 2; t++) {
    jobs[t].m = m;
    jobs[t].seed = t + 1;
    fill_x(&jobs[t]);
    float c[B * H];
    float y[B * T * H];
    assert_int_equal(run(&jobs[t], y, jobs[t].want_h, c), SEQ_OK);
    memcpy(jobs[t].want_y, y, sizeof y);
    assert_int_equal(steps(&jobs[t], jobs[t].want_steps), SEQ_OK);
  }
  pthread_t th[2];
  for (int t = 0; t < 2; t++) assert_int_equal(pthread_create(&th[t], NULL, worker, &jobs[t]), 0);
  for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
  for (int t = 0; t < 2; t++) {
    assert_int_equal(jobs[t].failures, 0);
    assert_int_equal(jobs[t].mismatches, 0); /* results, and each thread's own message */
    assert_true(jobs[t].bad_msg[0] != 0);
  }
  /* This thread had no failure on m: the module's last one, from a worker. */
  assert_true(seq_module_error(m)[0] != 0);
  free(jobs);
  seq_module_destroy(m);
  free(w);
  seq_context_destroy(cx);
}

static void test_diag_text(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = NULL;
  const char *src =
      "cell C(H) {\n  input x: [H]\n  output y: [H]\n  step {\n    y = x + zz\n  }\n}\n";
  assert_int_equal(seq_module_from_string(cx, "bad.seq", src, NULL, &m), SEQ_ERR_COMPILE);
  const char *text = seq_module_diag_text(m);
  assert_non_null(strstr(text, "bad.seq:5:13: error: "));
  assert_non_null(strstr(text, "\n      y = x + zz\n"));
  assert_non_null(strstr(text, "\n              ^"));
  assert_null(seq_module_report(m));
  seq_module_destroy(m);
  /* A module that compiled has no diagnostics. */
  m = compile_lstm(cx, NULL);
  assert_string_equal(seq_module_diag_text(m), "");
  seq_module_destroy(m);
  assert_string_equal(seq_module_diag_text(NULL), "");
  seq_context_destroy(cx);
}

static void test_report_json(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, "sequential");
  const char *text = seq_module_report(m);
  assert_non_null(text);
  assert_ptr_equal(seq_module_report(m), text); /* made once */
  json_error_t err;
  json_t *r = json_loads(text, 0, &err);
  if (!r) fail_msg("report is not JSON: %s", err.text);
  assert_string_equal(json_string_value(json_object_get(r, "unit")), "LSTM");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "dims"), "H")), H);
  json_t *cells = json_object_get(r, "cells");
  assert_int_equal(json_array_size(cells), 1);
  json_t *cell = json_array_get(cells, 0);
  assert_string_equal(json_string_value(json_object_get(cell, "name")), "LSTM");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(cell, "loc"), "line")), 10);
  json_t *states = json_object_get(cell, "states");
  assert_int_equal(json_array_size(states), 2);
  json_t *h = json_array_get(states, 0);
  assert_string_equal(json_string_value(json_object_get(h, "name")), "h");
  assert_string_equal(json_string_value(json_object_get(h, "class")), "nonlinear");
  assert_string_equal(json_string_value(json_object_get(h, "form")), "sequential");
  assert_string_equal(json_string_value(json_array_get(json_object_get(h, "coupled_with"), 0)),
                      "c");
  assert_non_null(json_object_get(json_object_get(h, "admitted"), "newton"));
  /* The text is the CLI's. */
  const char *t = json_string_value(json_object_get(r, "text"));
  assert_non_null(strstr(t, "cell LSTM ("));
  assert_non_null(strstr(t, "  state h [H]: nonlinear"));
  assert_non_null(strstr(t, "forms of LSTM:"));
  json_decref(r);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_module_two_threads),
      cmocka_unit_test(test_diag_text),
      cmocka_unit_test(test_report_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
