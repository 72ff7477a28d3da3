/* test_jit.c - the public JIT API (include/seq.h) and AOT shared objects:
 * compile errors as located diagnostics, binding from caller memory, forward
 * and step, two threads compiling at once, and a generated .so (loaded with
 * dlopen) equal to the JIT. */
#include "testutil.h"

#include <dirent.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "driver/pipeline.h"
#include "seq.h"

static SeqModule *compile_lstm(SeqContext *cx, const char *dims) {
  SeqOptions opt = {0};
  opt.opt_level = 2;
  opt.dims = dims;
  SeqModule *m = NULL;
  SeqStatus st = seq_module_from_file(cx, tu_src("examples/lstm.seq"), &opt, &m);
  if (st != SEQ_OK) fail_msg("compile: %s", seq_module_error(m));
  return m;
}

static float *bind_random(SeqModule *m) {
  int np = seq_module_count(m, SEQ_PARAM);
  int64_t total = 0;
  for (int i = 0; i < np; i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(m, SEQ_PARAM, i, &ti), SEQ_OK);
    total += ti.numel;
  }
  float *blob = malloc(sizeof(float) * (size_t)total);
  for (int64_t k = 0; k < total; k++) blob[k] = (float)((k * 7919 % 1000) / 1000.0 - 0.5) * 0.3f;
  int64_t off = 0;
  for (int i = 0; i < np; i++) {
    SeqTensorInfo ti;
    seq_module_info(m, SEQ_PARAM, i, &ti);
    assert_int_equal(seq_module_bind_weight(m, ti.name, blob + off, ti.numel), SEQ_OK);
    off += ti.numel;
  }
  return blob;
}

/* Steps chained over the T tokens of x [B, T, I] equal the forward's y
 * [B, T, H] (within rounding: a step may multiply unpacked). */
static void check_steps(SeqModule *m, int B, int T, int I, int H, const float *x, const float *y) {
  float *xt = malloc(sizeof(float) * (size_t)(B * I)),
        *ys = malloc(sizeof(float) * (size_t)(B * H));
  float *h = malloc(sizeof(float) * (size_t)(B * H)), *c = malloc(sizeof(float) * (size_t)(B * H));
  float *states[2] = {h, c};
  const void *tin[1] = {xt};
  float *tout[1] = {ys};
  for (int t = 0; t < T; t++) {
    for (int b = 0; b < B; b++) memcpy(xt + b * I, x + (b * T + t) * I, sizeof(float) * I);
    assert_int_equal(
        seq_module_step(m, B, tin, t ? (const float *const *)states : NULL, tout, states), SEQ_OK);
    for (int b = 0; b < B; b++)
      for (int k = 0; k < H; k++)
        assert_true(fabsf(ys[b * H + k] - y[(b * T + t) * H + k]) < 1e-5f);
  }
  free(xt);
  free(ys);
  free(h);
  free(c);
}

static void test_compile_error_diagnostics(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = NULL;
  const char *src =
      "cell C(H) {\n  input x: [H]\n  output y: [H]\n  step {\n    y = x + zz\n  }\n}\n";
  assert_int_equal(seq_module_from_string(cx, "bad.seq", src, NULL, &m), SEQ_ERR_COMPILE);
  assert_non_null(m);
  assert_true(seq_module_diag_count(m) >= 1);
  const SeqDiagnostic *d = seq_module_diag(m, 0);
  assert_non_null(d);
  assert_int_equal(d->severity, SEQ_SEVERITY_ERROR);
  assert_string_equal(d->file, "bad.seq");
  assert_int_equal(d->line, 5);
  assert_true(strlen(seq_module_error(m)) > 0);
  seq_module_destroy(m);
  /* Missing dims are a bind error, not a crash. */
  assert_int_equal(seq_module_from_file(cx, tu_src("examples/lstm.seq"), NULL, &m), SEQ_ERR_BIND);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

static void test_forward_step_and_binding(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, "I=5,H=7");
  const char *names[4];
  int64_t vals[4];
  assert_int_equal(seq_module_dims(m, names, vals), 2);
  assert_string_equal(names[0], "I");
  assert_int_equal(vals[1], 7);
  enum { B = 2, T = 9, I = 5, H = 7 };
  float x[B * T * I], y[B * T * H];
  for (int k = 0; k < B * T * I; k++) x[k] = sinf((float)k);
  const void *in[1] = {x};
  float *out[1] = {y};
  /* Unbound weights: a status and a message. */
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, out, NULL), SEQ_ERR_BIND);
  float *blob = bind_random(m);
  assert_int_equal(seq_module_bind_weight(m, "weight_ih", blob, 3), SEQ_ERR_BIND);
  assert_int_equal(seq_module_bind_weight(m, "nope", blob, 3), SEQ_ERR_BIND);
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, out, NULL), SEQ_OK);
  check_steps(m, B, T, I, H, x, y);
  int32_t bad[B] = {1, 99};
  assert_int_equal(seq_module_forward(m, B, T, in, bad, NULL, out, NULL), SEQ_ERR_RUN);
  assert_non_null(seq_module_entry(m, "forward_blob"));
  assert_null(seq_module_entry(m, "nonexistent"));
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

/* seq_module_prepare: forwards and steps read the weights packed once and
 * give what they gave without (a forward of enough tokens packs the same
 * way; a step otherwise reads the weights unpacked, so within rounding);
 * the packed copy is a snapshot (caller memory changed later is not seen),
 * binding again drops it, and every weight must be bound first. Odd sizes
 * (4H = 132: a partial panel of the packed form). */
static void test_prepared_weights(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, "I=20,H=33");
  enum { B = 3, T = 40, I = 20, H = 33 };
  assert_int_equal(seq_module_prepare(m), SEQ_ERR_BIND);
  float *blob = bind_random(m);
  static float x[B * T * I], y1[B * T * H], y2[B * T * H];
  for (int k = 0; k < B * T * I; k++) x[k] = sinf((float)k * 0.7f);
  const void *in[1] = {x};
  float *o1[1] = {y1}, *o2[1] = {y2};
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, o1, NULL), SEQ_OK);
  assert_int_equal(seq_module_prepare(m), SEQ_OK);
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, o2, NULL), SEQ_OK);
  for (int k = 0; k < B * T * H; k++) assert_true(fabsf(y1[k] - y2[k]) < 1e-6f);
  /* Steps on the packed copy, chained, against the forward. */
  check_steps(m, B, T, I, H, x, y1);
  /* A snapshot: the caller's weights changed in place are not seen ... */
  float *w = blob + 4 * H * I; /* weight_hh */
  for (int k = 0; k < 4 * H * H; k++) w[k] *= -1.5f;
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, o2, NULL), SEQ_OK);
  for (int k = 0; k < B * T * H; k++) assert_true(fabsf(y1[k] - y2[k]) < 1e-6f);
  /* ... until prepared again (the result changes), or bound again, which
   * drops the copy: the forward then packs per call, as it did first. */
  assert_int_equal(seq_module_prepare(m), SEQ_OK);
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, o2, NULL), SEQ_OK);
  int differs = 0;
  for (int k = 0; k < B * T * H; k++) differs |= fabsf(y1[k] - y2[k]) > 1e-3f;
  assert_true(differs);
  assert_int_equal(seq_module_bind_weight(m, "weight_hh", w, 4 * H * H), SEQ_OK);
  assert_int_equal(seq_module_forward(m, B, T, in, NULL, NULL, o1, NULL), SEQ_OK);
  for (int k = 0; k < B * T * H; k++) assert_true(fabsf(y1[k] - y2[k]) < 1e-6f);
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

/* Distance in float32 units in the last place (both finite, same sign). */
static double ulps(float a, double ref) {
  float r = (float)ref;
  if (a == r) return 0;
  float step = nextafterf(fabsf(r), INFINITY) - fabsf(r);
  return fabs((double)a - ref) / step;
}

/* A cell of elementwise outputs of one input x [N], compiled at -O2 for
 * this machine, or with `features` (SeqOptions.target_features) when given. */
static SeqModule *compile_for(SeqContext *cx, const char *file, const char *src, int n,
                              const char *features) {
  SeqOptions opt = {0};
  opt.opt_level = 2;
  opt.target_features = features;
  char dims[32];
  snprintf(dims, sizeof dims, "N=%d", n);
  opt.dims = dims;
  SeqModule *m = NULL;
  if (seq_module_from_string(cx, file, src, &opt, &m) != SEQ_OK)
    fail_msg("compile: %s", seq_module_error(m));
  return m;
}

static SeqModule *compile_elementwise(SeqContext *cx, const char *file, const char *src, int n) {
  return compile_for(cx, file, src, n, NULL);
}

/* log, softplus and logsigmoid as generated (codegen/math.c: an inline
 * polynomial log, not a libm call per element) against float64 libm: within
 * 2 ulps of log over normal and subnormal inputs, and every edge as libm has
 * it (log 0 = -inf, log inf = inf, NaN for x < 0 and for NaN). */
static void test_log_functions(void **st) {
  (void)st;
  enum { N = 4096 + 12 };
  static const char src[] = "cell Logs(N) {\n"
                            "  input  x: [N]\n"
                            "  output y: [N]\n"
                            "  output sp: [N]\n"
                            "  output ls: [N]\n"
                            "  step {\n"
                            "    y  = log(x)\n"
                            "    sp = softplus(x)\n"
                            "    ls = logsigmoid(x)\n"
                            "  }\n"
                            "}\n";
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_elementwise(cx, "logs.seq", src, N);
  static float x[N], y[N], sp[N], ls[N];
  const float edges[12] = {0.0f, -0.0f,  INFINITY, -INFINITY, NAN,     -1.0f,
                           1.0f, 1e-45f, 1e-39f,   FLT_MIN,   FLT_MAX, 0.70710677f};
  memcpy(x, edges, sizeof edges);
  /* Every binade from the subnormals to the top, and the range softplus
   * and logsigmoid see, [-100, 100]. */
  for (int k = 0; k < 2048; k++)
    x[12 + k] = ldexpf(1.0f + (float)k / 2048.0f, -149 + k * 277 / 2048);
  for (int k = 0; k < 2048; k++) x[12 + 2048 + k] = -100.0f + 200.0f * (float)k / 2047.0f;
  const void *in[1] = {x};
  float *out[3] = {y, sp, ls};
  assert_int_equal(seq_module_forward(m, 1, 1, in, NULL, NULL, out, NULL), SEQ_OK);
  assert_true(isinf(y[0]) && y[0] < 0 && isinf(y[1]) && y[1] < 0);
  assert_true(isinf(y[2]) && y[2] > 0);
  assert_true(isnan(y[3]) && isnan(y[4]) && isnan(y[5]));
  assert_true(y[6] == 0.0f);
  double worst = 0;
  for (int k = 7; k < N; k++) {
    if (!(x[k] > 0)) continue;
    double u = ulps(y[k], log((double)x[k]));
    if (u > worst) worst = u;
    if (u > 2) fail_msg("log(%a) = %a, libm %a: %.1f ulps", x[k], y[k], log((double)x[k]), u);
  }
  for (int k = 12; k < N; k++) {
    if (!isfinite(x[k]) || fabsf(x[k]) > 100) continue;
    double xd = x[k], spd = xd > 0 ? xd + log1p(exp(-xd)) : log1p(exp(xd)),
           lsd = -(-xd > 0 ? -xd + log1p(exp(xd)) : log1p(exp(-xd)));
    if (fabs(sp[k] - spd) > 4e-7 * fmax(1.0, fabs(spd)) ||
        fabs(ls[k] - lsd) > 4e-7 * fmax(1.0, fabs(lsd)))
      fail_msg("x = %g: softplus %g (ref %g), logsigmoid %g (ref %g)", x[k], sp[k], spd, ls[k],
               lsd);
  }
  print_message("log: largest error %.2f ulps over %d inputs\n", worst, N - 7);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

/* A real operand of a complex op takes part as a real number
 * (docs/language.md section 6), as in the interpreter: (inf + 1i) * 2 is
 * (inf, 2), not (inf, NaN) as (inf + 1i) * (2 + 0i) would be, and
 * (1 - 0i) + 2 keeps the -0. */
static void test_mixed_complex_operands(void **st) {
  (void)st;
  char *mixed_src = tu_read_file(tu_src("tests/data/models/mixed_complex.seq"), NULL);
  assert_non_null(mixed_src);
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_elementwise(cx, "mixed.seq", mixed_src, 2);
  const float a[2] = {INFINITY, 1.0f}, b[2] = {1.0f, -0.0f}, x[2] = {2.0f, 2.0f};
  float p[4], q[4], s[4], u[4], d[4];
  const void *in[3] = {a, b, x};
  float *out[5] = {p, q, s, u, d};
  assert_int_equal(seq_module_forward(m, 1, 1, in, NULL, NULL, out, NULL), SEQ_OK);
  assert_true(isinf(p[0]) && p[1] == 2.0f && isinf(q[0]) && q[1] == 2.0f);
  assert_true(p[2] == 2.0f && p[3] == 0.0f && signbit(p[3]));
  assert_true(isinf(s[0]) && s[1] == 1.0f && s[2] == 3.0f && s[3] == 0.0f && signbit(s[3]));
  assert_true(isinf(u[0]) && u[0] < 0 && u[1] == -1.0f && u[2] == 1.0f && u[3] == 0.0f &&
              !signbit(u[3]));
  assert_true(isinf(d[0]) && d[1] == 0.5f && d[2] == 0.5f && signbit(d[3]));
  seq_module_destroy(m);
  seq_context_destroy(cx);
  free(mixed_src);
}

/* exp, sigmoid and tanh as generated (codegen/math.c: a polynomial with
 * no selects for its edges) against float64 libm: exp within 2 ulps
 * wherever its result is at least 2.4e-38, flushed to 0 (or exact) below
 * that, +inf past float32's overflow threshold and not before it, NaN for
 * NaN; sigmoid and tanh within 4e-7 everywhere, and where their results
 * are 2.4e-38 or more sigmoid within 3 ulps and tanh within 6 (its 1 - e
 * cancels near 0), their limits exact. Twice: with the machine's own
 * features and without AVX-512. */
static void check_exp_functions(const char *features) {
  enum { N = 4096 + 12 };
  static const char src[] = "cell Exps(N) {\n"
                            "  input  x: [N]\n"
                            "  output y: [N]\n"
                            "  output sg: [N]\n"
                            "  output th: [N]\n"
                            "  step {\n"
                            "    y  = exp(x)\n"
                            "    sg = sigmoid(x)\n"
                            "    th = tanh(x)\n"
                            "  }\n"
                            "}\n";
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_for(cx, "exps.seq", src, N, features);
  static float x[N], y[N], sg[N], th[N];
  const float edges[12] = {0.0f,      -0.0f, INFINITY, -INFINITY, NAN,    88.72283f,
                           88.72284f, 89.0f, 1000.0f,  -87.33f,   -104.f, -1e30f};
  memcpy(x, edges, sizeof edges);
  /* The whole range exp returns, its edges, and the range gates see. */
  for (int k = 0; k < 2048; k++) x[12 + k] = -105.0f + 195.0f * (float)k / 2047.0f;
  for (int k = 0; k < 2048; k++) x[12 + 2048 + k] = -20.0f + 40.0f * (float)k / 2047.0f;
  const void *in[1] = {x};
  float *out[3] = {y, sg, th};
  assert_int_equal(seq_module_forward(m, 1, 1, in, NULL, NULL, out, NULL), SEQ_OK);
  assert_true(y[0] == 1.0f && y[1] == 1.0f);
  assert_true(isinf(y[2]) && y[2] > 0 && y[3] == 0.0f && isnan(y[4]));
  assert_true(isfinite(y[5]) && y[5] > 3.4e38f);
  assert_true(isinf(y[6]) && isinf(y[7]) && isinf(y[8]));
  assert_true(y[10] == 0.0f && y[11] == 0.0f);
  assert_true(isnan(sg[4]) && isnan(th[4]));
  assert_true(sg[2] == 1.0f && sg[3] == 0.0f && th[2] == 1.0f && th[3] == -1.0f);
  double worst = 0;
  for (int k = 9; k < N; k++) {
    double e = exp((double)x[k]);
    if (e < 2.4e-38) {
      if (y[k] != 0.0f && ulps(y[k], e) > 2)
        fail_msg("exp(%a) = %a, libm %a: neither flushed nor within 2 ulps", x[k], y[k], e);
      continue;
    }
    double u = e > 3.4028234e38 ? (isinf(y[k]) ? 0 : 99) : ulps(y[k], e);
    if (u > worst) worst = u;
    if (u > 2) fail_msg("exp(%a) = %a, libm %a: %.1f ulps", x[k], y[k], e, u);
  }
  double worst_s = 0, worst_t = 0;
  for (int k = 9; k < N; k++) {
    double xd = x[k], sgd = 1.0 / (1.0 + exp(-xd)), thd = tanh(xd);
    if (fabs(sg[k] - sgd) > 4e-7 || fabs(th[k] - thd) > 4e-7)
      fail_msg("x = %g: sigmoid %g (ref %g), tanh %g (ref %g)", x[k], sg[k], sgd, th[k], thd);
    double us = sgd >= 2.4e-38 ? ulps(sg[k], sgd) : 0; /* exp flushes below */
    double ut = fabs(thd) >= 2.4e-38 ? ulps(fabsf(th[k]), fabs(thd)) : 0;
    if (us > 3 || ut > 6)
      fail_msg("x = %a: sigmoid %a (ref %a, %.1f ulps), tanh %a (ref %a, %.1f ulps)", x[k], sg[k],
               sgd, us, th[k], thd, ut);
    worst_s = fmax(worst_s, us);
    worst_t = fmax(worst_t, ut);
  }
  assert_true(sg[0] == 0.5f && th[0] == 0.0f && !signbit(th[0]) && signbit(th[1]));
  print_message("features '%s': largest errors in ulps: exp %.2f, sigmoid %.2f, tanh %.2f\n",
                features ? features : "", worst, worst_s, worst_t);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

static void test_exp_functions(void **st) {
  (void)st;
  check_exp_functions(NULL);
  check_exp_functions("-avx512f");
}

/* GELU as generated: its erf is a pair of polynomials (codegen/math.c,
 * emit_erf), not a call of libm's erff per element. Against float64's
 * 0.5 x (1 + erf(x / sqrt 2)): within 3 ulps for x >= -0.5 (below, 1 + erf
 * cancels, in float64's formula as in float32's) and within 1e-7 (1 + |x|)
 * everywhere; gelu(0) = 0, gelu(inf) = inf, NaN for NaN. */
static void test_gelu(void **st) {
  (void)st;
  enum { N = 8192 + 4 };
  static const char src[] = "cell Gelu(N) {\n"
                            "  input  x: [N]\n"
                            "  output y: [N]\n"
                            "  step {\n"
                            "    y = gelu(x)\n"
                            "  }\n"
                            "}\n";
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_elementwise(cx, "gelu.seq", src, N);
  static float x[N], y[N];
  x[0] = 0.0f;
  x[1] = INFINITY;
  x[2] = NAN;
  x[3] = 1e-30f;
  for (int k = 0; k < 4096; k++) x[4 + k] = -10.0f + 20.0f * (float)k / 4095.0f;
  for (int k = 0; k < 4096; k++) x[4 + 4096 + k] = -3.0f + 6.0f * (float)k / 4095.0f;
  const void *in[1] = {x};
  float *out[1] = {y};
  assert_int_equal(seq_module_forward(m, 1, 1, in, NULL, NULL, out, NULL), SEQ_OK);
  assert_true(y[0] == 0.0f && isinf(y[1]) && y[1] > 0 && isnan(y[2]));
  double worst = 0;
  for (int k = 3; k < N; k++) {
    double xd = x[k], ref = 0.5 * xd * (1.0 + erf(xd * 0.70710678118654752440));
    if (fabs(y[k] - ref) > 1e-7 * (1 + fabs(xd)))
      fail_msg("gelu(%a) = %a, float64 %a", x[k], y[k], ref);
    if (xd >= -0.5 && ref != 0) {
      double u = ref > 0 ? ulps(y[k], ref) : ulps(-y[k], -ref);
      if (u > 3) fail_msg("gelu(%a) = %a, float64 %a: %.1f ulps", x[k], y[k], ref, u);
      if (u > worst) worst = u;
    }
  }
  print_message("gelu: largest error %.2f ulps for x >= -0.5\n", worst);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

/* sin and cos as generated (codegen/math.c: reduced in double, a float
 * polynomial, not a libm call per element) against float64 libm: within 2
 * ulps of the result over [-20000, 20000] (rotary positions times their
 * frequencies) and finely over [-4, 4], sin(-0) = -0, NaN for infinities
 * and NaN. */
static void test_sin_cos(void **st) {
  (void)st;
  enum { N = 8192 + 4096 + 8 };
  static const char src[] = "cell Trig(N) {\n"
                            "  input  x: [N]\n"
                            "  output s: [N]\n"
                            "  output c: [N]\n"
                            "  step {\n"
                            "    s = sin(x)\n"
                            "    c = cos(x)\n"
                            "  }\n"
                            "}\n";
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_elementwise(cx, "trig.seq", src, N);
  static float x[N], sn[N], cs[N];
  const float edges[8] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-20f, 1.5707964f, 3.1415927f};
  memcpy(x, edges, sizeof edges);
  for (int k = 0; k < 8192; k++) x[8 + k] = -20000.0f + 40000.0f * (float)k / 8191.0f;
  for (int k = 0; k < 4096; k++) x[8 + 8192 + k] = -4.0f + 8.0f * (float)k / 4095.0f;
  const void *in[1] = {x};
  float *out[2] = {sn, cs};
  assert_int_equal(seq_module_forward(m, 1, 1, in, NULL, NULL, out, NULL), SEQ_OK);
  assert_true(sn[0] == 0.0f && !signbit(sn[0]) && sn[1] == 0.0f && signbit(sn[1]));
  assert_true(cs[0] == 1.0f && cs[1] == 1.0f);
  for (int k = 2; k < 5; k++) assert_true(isnan(sn[k]) && isnan(cs[k]));
  assert_true(sn[5] == 1e-20f);
  double worst = 0;
  for (int k = 5; k < N; k++) {
    double us = ulps(sn[k], sin((double)x[k])), uc = ulps(cs[k], cos((double)x[k]));
    if (us > worst) worst = us;
    if (uc > worst) worst = uc;
    if (us > 2 || uc > 2)
      fail_msg("x = %a: sin %a (libm %a), cos %a (libm %a): %.1f, %.1f ulps", x[k], sn[k],
               sin((double)x[k]), cs[k], cos((double)x[k]), us, uc);
  }
  print_message("sin, cos: largest error %.2f ulps over %d inputs\n", worst, N - 5);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

/* expm on matrices whose exponentials are known in closed form, compiled
 * (runtime/cpu_smallmat.c): y = expm(A) @ x for each unit vector x gives the
 * columns. A rotation generator, a nilpotent matrix (the series ends), a
 * diagonal one with a large norm (many squarings; e^-40 must not flush
 * to 0 in float64), and NaN for a non-finite entry. */
static void test_expm(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  SeqOptions opt = {0};
  opt.opt_level = 2;
  opt.dims = "N=2";
  const char *src = "cell E(N) {\n  param A: [N, N]\n  input x: [N]\n  output y: [N]\n"
                    "  step {\n    y = expm(A) @ x\n  }\n}\n";
  SeqModule *m = NULL;
  if (seq_module_from_string(cx, "e.seq", src, &opt, &m) != SEQ_OK)
    fail_msg("compile: %s", seq_module_error(m));
  const double th = 3.0;
  const float cases[4][4] = {
      {0, (float)-th, (float)th, 0}, {0, 5, 0, 0}, {-40, 0, 0, 2}, {1, INFINITY, 0, 1}};
  const double want[3][4] = {
      {cos(th), -sin(th), sin(th), cos(th)}, {1, 5, 0, 1}, {exp(-40.0), 0, 0, exp(2.0)}};
  for (int c = 0; c < 4; c++) {
    assert_int_equal(seq_module_bind_weight(m, "A", cases[c], 4), SEQ_OK);
    float x[4] = {1, 0, 0, 1}, y[4]; /* two examples: e_0 and e_1 */
    const void *in[1] = {x};
    float *out[1] = {y};
    assert_int_equal(seq_module_forward(m, 2, 1, in, NULL, NULL, out, NULL), SEQ_OK);
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++) {
        double got = y[j * 2 + i]; /* example j is column j */
        if (c == 3) {
          assert_true(isnan(got));
          continue;
        }
        double w = want[c][i * 2 + j], err = fabs(got - w) / fmax(fabs(w), 1e-30);
        if (!(err <= 1e-6 || fabs(got - w) <= 1e-6))
          fail_msg("case %d: expm(A)[%d][%d] = %.9g, want %.9g", c, i, j, got, w);
      }
  }
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

static SeqContext *shared_cx;
static void *compile_thread(void *arg) {
  SeqModule *m = compile_lstm(shared_cx, arg);
  int ok = seq_module_count(m, SEQ_PARAM) == 4;
  seq_module_destroy(m);
  return ok ? arg : NULL;
}

static void test_two_threads(void **st) {
  (void)st;
  shared_cx = seq_context_create();
  pthread_t a, b;
  char da[] = "I=4,H=8", db[] = "I=3,H=16";
  assert_int_equal(pthread_create(&a, NULL, compile_thread, da), 0);
  assert_int_equal(pthread_create(&b, NULL, compile_thread, db), 0);
  void *ra, *rb;
  pthread_join(a, &ra);
  pthread_join(b, &rb);
  assert_ptr_equal(ra, da);
  assert_ptr_equal(rb, db);
  seq_context_destroy(shared_cx);
}

/* Compiles `file` (in the source tree) with dims I, H or H, N (names[0..1]
 * = values) ahead of time through the pipeline into `out`. */
static int build_object(const char *file, const char *const *names, const int64_t *values,
                        int opt_level, CgEmitKind kind, const char *out, const char *hdr) {
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, stderr);
  Pipeline p;
  pipeline_init(&p, a, &sm, &de);
  PipeOptions po = {0};
  po.path = tu_src(file);
  po.ndims = 2;
  po.dim_names = names;
  po.dim_values = values;
  po.cg = (CgOptions){opt_level, NULL, NULL};
  po.goal = PIPE_OBJECT;
  po.emit = kind;
  po.out_path = out;
  po.header_path = hdr;
  int rc = pipeline_run(&p, &po);
  pipeline_release(&p);
  arena_destroy(a);
  return rc;
}

typedef int32_t (*BlobFn)(const float *, int64_t, int64_t, int64_t, const void *const *,
                          const int32_t *, const float *const *, float *const *, float *const *);

/* An AOT .so equals the JIT, checks its blob size, and needs no libLLVM. */
static void test_aot_shared_object(void **st) {
  (void)st;
  const char *names[2] = {"I", "H"};
  int64_t dims[2] = {5, 7};
  char so[512], hdr[512], cmd[1200];
  snprintf(so, sizeof so, "%s/liblstm.so", tu_tmpdir());
  snprintf(hdr, sizeof hdr, "%s/lstm.h", tu_tmpdir());
  assert_int_equal(build_object("examples/lstm.seq", names, dims, 2, CG_EMIT_SO, so, hdr), 0);
  /* The header compiles. */
  snprintf(cmd, sizeof cmd,
           "echo '#include \"%s\"' | cc -std=c11 -Wall -Werror -fsyntax-only -x c -", hdr);
  char *outp = NULL;
  assert_int_equal(tu_run(cmd, &outp), 0);
  free(outp);
  snprintf(cmd, sizeof cmd, "ldd %s", so);
  assert_int_equal(tu_run(cmd, &outp), 0);
  assert_null(strstr(outp, "libLLVM"));
  free(outp);
  void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  assert_non_null(h);
  BlobFn fb = (BlobFn)(uintptr_t)dlsym(h, "lstm_forward_blob");
  assert_non_null(fb);
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, "I=5,H=7");
  float *blob = bind_random(m);
  enum { B = 3, T = 11 };
  float x[B * T * 5], y1[B * T * 7], y2[B * T * 7];
  for (int k = 0; k < B * T * 5; k++) x[k] = cosf((float)k * 0.3f);
  const void *in[1] = {x};
  float *o1[1] = {y1}, *o2[1] = {y2};
  int32_t lengths[B] = {11, 4, 0};
  assert_int_equal(seq_module_forward(m, B, T, in, lengths, NULL, o1, NULL), SEQ_OK);
  int64_t total = 4 * 7 * 5 + 4 * 7 * 7 + 4 * 7 + 4 * 7;
  assert_int_equal(fb(blob, total, B, T, in, lengths, NULL, o2, NULL), 0);
  for (int k = 0; k < B * T * 7; k++) assert_true(fabsf(y1[k] - y2[k]) < 1e-6f);
  assert_int_equal(fb(blob, total - 1, B, T, in, lengths, NULL, o2, NULL), 1);
  /* The weights packed once by the host: the same result. */
  typedef int64_t (*FloatsFn)(void);
  typedef int32_t (*PrepareFn)(const float *const *, float *);
  typedef int32_t (*PreparedFn)(const float *const *, const float *, int64_t, int64_t,
                                const void *const *, const int32_t *, const float *const *,
                                float *const *, float *const *);
  FloatsFn pf = (FloatsFn)(uintptr_t)dlsym(h, "lstm_prepared_floats");
  PrepareFn prep = (PrepareFn)(uintptr_t)dlsym(h, "lstm_prepare");
  PreparedFn fp = (PreparedFn)(uintptr_t)dlsym(h, "lstm_forward_prepared");
  assert_non_null(pf);
  assert_non_null(prep);
  assert_non_null(fp);
  assert_non_null(dlsym(h, "lstm_step_prepared"));
  /* A header of 16 floats, then both weights, their 28 rows padded to a
   * panel of 32: (5 + 7) * 32. */
  assert_int_equal(pf(), 16 + 12 * 32);
  float *packed = calloc((size_t)pf(), sizeof(float));
  const float *params[4] = {blob, blob + 140, blob + 140 + 196, blob + 140 + 196 + 28};
  assert_int_equal(prep(params, NULL), 1);
  /* A block never prepared is refused, not read as weights. */
  assert_int_equal(fp(params, packed, B, T, in, lengths, NULL, o2, NULL), 1);
  assert_int_equal(prep(params, packed), 0);
  for (int k = 0; k < B * T * 7; k++) y2[k] = NAN;
  assert_int_equal(fp(params, packed, B, T, in, lengths, NULL, o2, NULL), 0);
  for (int k = 0; k < B * T * 7; k++) assert_true(fabsf(y1[k] - y2[k]) < 1e-6f);
  assert_int_equal(fp(params, NULL, B, T, in, lengths, NULL, o2, NULL), 1);
  /* So is one whose layout hash is another model's. */
  uint32_t word;
  memcpy(&word, (char *)packed + 4, 4);
  word ^= 1;
  memcpy((char *)packed + 4, &word, 4);
  assert_int_equal(fp(params, packed, B, T, in, lengths, NULL, o2, NULL), 1);
  free(packed);
  dlclose(h);
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  /* --emit=llvm and asm write text. */
  snprintf(so, sizeof so, "%s/lstm.ll", tu_tmpdir());
  assert_int_equal(build_object("examples/lstm.seq", names, dims, 2, CG_EMIT_LLVM, so, NULL), 0);
  char *text = tu_read_file(so, NULL);
  assert_non_null(text);
  assert_non_null(strstr(text, "@lstm_forward("));
  /* The step's fused element loops are claimed free of dependences between
   * iterations, so they vectorize without runtime overlap checks between
   * their buffers (LoopVectorize names those checks "found.conflict" and
   * "diff.check") or the scalar copy of the loop those would guard. */
  assert_non_null(strstr(text, "llvm.loop.parallel_accesses"));
  assert_non_null(strstr(text, "vector.body"));
  assert_null(strstr(text, "found.conflict"));
  assert_null(strstr(text, "diff.check"));
  free(text);
}

/* The generated header names itself (liblru.h, the default beside liblru.so),
 * and a complex tensor's trailing 2 is marked as (re, im). */
/* Threads of this process (/proc/self/task), -1 where that cannot be read. */
static int count_threads(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* An AOT library has a thread pool of its own (it links the runtime in).
 * Unloading it must stop that pool's workers: they would be left spinning
 * or asleep in unmapped code (and a leak checker walking them at exit read
 * garbage). The workers start on a forward large enough to split across
 * two threads; dlclose joins them, also one that had not started running
 * yet (it once waited for a job forever, and dlclose for it). */
static void test_aot_unload_stops_workers(void **st) {
  (void)st;
  const char *names[2] = {"I", "H"};
  int64_t dims[2] = {8, 64};
  char so[512];
  snprintf(so, sizeof so, "%s/liblstm_pool.so", tu_tmpdir());
  assert_int_equal(build_object("examples/lstm.seq", names, dims, 2, CG_EMIT_SO, so, NULL), 0);
  SeqContext *cx = seq_context_create();
  SeqModule *m = compile_lstm(cx, "I=8,H=64");
  float *blob = bind_random(m);
  int64_t total = 4 * 64 * 8 + 4 * 64 * 64 + 4 * 64 + 4 * 64;
  enum { B = 4, T = 600 };
  float *x = calloc(B * T * 8, sizeof(float)), *y = calloc(B * T * 64, sizeof(float));
  for (int k = 0; k < B * T * 8; k++) x[k] = sinf((float)k * 0.1f);
  const void *in[1] = {x};
  float *o[1] = {y};
  /* The library's pool reads the count at its first call. */
  char *old = getenv("SEQ_NUM_THREADS") ? strdup(getenv("SEQ_NUM_THREADS")) : NULL;
  setenv("SEQ_NUM_THREADS", "2", 1);
  /* Several rounds, some unloading at once: a worker created by the
   * forward may start running only after the unload began. */
  for (int round = 0; round < 12; round++) {
    int before = count_threads();
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(h);
    BlobFn fb = (BlobFn)(uintptr_t)dlsym(h, "lstm_forward_blob");
    assert_non_null(fb);
    assert_int_equal(fb(blob, total, B, round % 2 ? 16 : T, in, NULL, NULL, o, NULL), 0);
    int during = count_threads();
    dlclose(h);
    int after = count_threads();
    if (before >= 0) {
      if (round % 2 == 0) assert_true(during > before); /* the library started a worker */
      assert_int_equal(after, before);
    }
  }
  if (old) {
    setenv("SEQ_NUM_THREADS", old, 1);
    free(old);
  } else {
    unsetenv("SEQ_NUM_THREADS");
  }
  free(x);
  free(y);
  free(blob);
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

static void test_aot_header_names_and_complex(void **st) {
  (void)st;
  const char *names[2] = {"H", "N"};
  int64_t dims[2] = {8, 6};
  char so[512], hdr[512];
  snprintf(so, sizeof so, "%s/liblru.so", tu_tmpdir());
  snprintf(hdr, sizeof hdr, "%s/liblru.h", tu_tmpdir());
  assert_int_equal(build_object("examples/lru.seq", names, dims, 1, CG_EMIT_SO, so, NULL), 0);
  char *text = tu_read_file(hdr, NULL);
  assert_non_null(text);
  assert_true(strncmp(text, "/* liblru.h - ", 14) == 0);
  assert_non_null(strstr(text, "[B, 6, 2] complex: last axis (re, im) */"));
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_compile_error_diagnostics),
      cmocka_unit_test(test_log_functions),
      cmocka_unit_test(test_exp_functions),
      cmocka_unit_test(test_gelu),
      cmocka_unit_test(test_mixed_complex_operands),
      cmocka_unit_test(test_sin_cos),
      cmocka_unit_test(test_expm),
      cmocka_unit_test(test_forward_step_and_binding),
      cmocka_unit_test(test_prepared_weights),
      cmocka_unit_test(test_two_threads),
      cmocka_unit_test(test_aot_shared_object),
      cmocka_unit_test(test_aot_unload_stops_workers),
      cmocka_unit_test(test_aot_header_names_and_complex),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
