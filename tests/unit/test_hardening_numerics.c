/* test_hardening_numerics.c - numerical robustness of the cells whose math is
 * stable by construction: a million steps through the reference interpreter
 * (and the CPU backend through seqc run) stay finite and bounded, and gates
 * saturated to exactly 0 and 1 (sigmoid of +-1e30, logsigmoid of -1e30 and of
 * -inf, whose log(0) = -inf must not turn into NaN) behave as the math says.
 * Dims are tiny so the long runs take seconds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "runtime/rt.h"
#include "testutil.h"

#define LONG_T 1000000

static Arena *A;
static DiagEngine DE;
static SrcMgr SM;
static IrBinding B;

static void dump_diags(void) {
  for (int i = 0; i < DE.diags.n; i++) diag_format(stderr, &DE.diags.v[i]);
}

/* Compiles `src` (a .seq text, which may import std cells), binds `entry` with
 * the given dims and seeded random weights. */
static void bind(const char *src, const char *entry, int ndims, const char *const *names,
                 const int64_t *values) {
  if (A) arena_destroy(A);
  A = arena_create();
  assert_non_null(A);
  srcmgr_init(&SM, A);
  diag_init(&DE, A, NULL);
  FrontendOptions opt = {0};
  opt.entry = entry;
  IrModule *m = seq_compile_string(A, &SM, &DE, "t.seq", src, &opt);
  if (!m) dump_diags();
  assert_non_null(m);
  assert_int_equal(ir_binding_init(&B, A, m, m->funcs.v[m->entry], &DE), 0);
  for (int i = 0; i < ndims; i++)
    assert_int_equal(ir_binding_set_dim(&B, names[i], values[i], &DE), 0);
  int rc = ir_binding_infer(&B, NULL, NULL, NULL, NULL, &DE);
  if (rc) dump_diags();
  assert_int_equal(rc, 0);
  assert_int_equal(ir_binding_random(&B, 42, &DE), 0);
}

/* The float64 storage of weight `name`. */
static double *weight(const char *name) {
  for (int i = 0; i < B.flat.params.n; i++)
    if (strcmp(B.flat.params.v[i].name, name) == 0) return B.weights[i].data;
  fail_msg("no weight '%s'", name);
  return NULL;
}

static void fill(double *w, int n, double v) {
  for (int i = 0; i < n; i++) w[i] = v;
}

/* Runs the bound root over x ([1, T, I]) with check_finite on; outputs[0] and
 * the final states come back (caller frees). Returns interp_run's status. */
static int run(RtTensor *x, RtTensor *out, RtTensor *states, int f64) {
  InterpOptions opt = {.f64 = f64, .check_finite = 1};
  int rc = interp_run(&B, x->shape[0], x->shape[1], x, NULL, NULL, out, states, &opt, &DE);
  if (rc) dump_diags();
  return rc;
}

/* x[0, t, :] = f(t) for a deterministic, bounded pseudo-random signal. */
static void make_input(RtTensor *x, int64_t T, int64_t I, double scale) {
  RtError err;
  int64_t shape[3] = {1, T, I};
  assert_int_equal(rt_tensor_alloc(x, RT_F32, 3, shape, &err), 0);
  uint64_t s = 0x9e3779b97f4a7c15u;
  for (int64_t i = 0; i < T * I; i++) {
    s = s * 6364136223846793005u + 1442695040888963407u;
    ((float *)x->data)[i] = (float)(scale * ((double)(s >> 11) / (double)(1ull << 53) * 2 - 1));
  }
}

static double max_abs(const RtTensor *t) {
  double m = 0;
  int64_t n = rt_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v = t->dtype == RT_F32 ? ((float *)t->data)[i] : ((double *)t->data)[i];
    if (!(fabs(v) <= m)) m = fabs(v);
  }
  return m;
}

/* Single-head mLSTM with the max-stabilizer (xLSTM, arXiv:2405.04517, appendix A),
 * kept here rather than imported so that the test does not move with std/mlstm.seq. */
static const char *mlstm_src =
    "cell MLSTM(I, D) {\n"
    "  param W_q: [D, I]\n  param b_q: [D]\n  param W_k: [D, I]\n  param b_k: [D]\n"
    "  param W_v: [D, I]\n  param b_v: [D]\n  param W_o: [D, I]\n  param b_o: [D]\n"
    "  param w_i: [I]\n  param b_i: []\n  param w_f: [I]\n  param b_f: []\n"
    "  input  x: [I]\n  state  C: [D, D] = 0\n  state  n: [D] = 0\n  state  m: [] = 0\n"
    "  output y: [D]\n"
    "  step {\n"
    "    let q  = W_q @ x + b_q\n"
    "    let k  = (W_k @ x + b_k) / sqrt(D)\n"
    "    let v  = W_v @ x + b_v\n"
    "    let li = dot(w_i, x) + b_i\n"
    "    let lf = logsigmoid(dot(w_f, x) + b_f)\n"
    "    m' = max(lf + m, li)\n"
    "    let i_s = exp(li - m')\n"
    "    let f_s = exp(lf + m - m')\n"
    "    C' = f_s * C + i_s * outer(v, k)\n"
    "    n' = f_s * n + i_s * k\n"
    "    let h = (C' @ q) / max(abs(dot(n', q)), exp(-m'))\n"
    "    y  = sigmoid(W_o @ x + b_o) * h\n"
    "  }\n"
    "}\n";

/* ---- a million steps ------------------------------------------------------------ */

/* minGRU's update is a convex combination of h and h~: |h| never exceeds max |h~|. */
static void test_mingru_million_steps(void **state) {
  (void)state;
  bind("import \"std/mingru.seq\"\n", "MinGRU", 2, (const char *[]){"I", "H"}, (int64_t[]){2, 2});
  RtTensor x, y, st[1];
  make_input(&x, LONG_T, 2, 3.0);
  assert_int_equal(run(&x, &y, st, 0), 0);
  /* |h~| <= |W| |x| + |b| <= 2 * (1/sqrt 2) * 3 + 1/sqrt 2 < 5. */
  assert_true(max_abs(&y) < 5.0);
  assert_true(max_abs(&st[0]) < 5.0);
  rt_tensor_free(&y);
  rt_tensor_free(&st[0]);
  rt_tensor_free(&x);
}

/* mLSTM with a huge input-gate preactivation every step: exp(li) alone would
 * overflow float32 at li > 88 and float64 at li > 709; the max-stabilizer m
 * keeps every exponential <= 1, so a million steps stay finite. */
static void test_mlstm_stabilizer_million_steps(void **state) {
  (void)state;
  bind(mlstm_src, "MLSTM", 2, (const char *[]){"I", "D"}, (int64_t[]){2, 2});
  fill(weight("w_i"), 2, 0.0);
  weight("b_i")[0] = 800.0; /* exp(800) is inf even in float64 */
  fill(weight("w_f"), 2, 0.0);
  weight("b_f")[0] = 30.0; /* forget gate ~ 1 - 1e-13: memory accumulates */
  RtTensor x, y, st[3];
  make_input(&x, LONG_T, 2, 1.0);
  assert_int_equal(run(&x, &y, st, 0), 0);
  /* check_finite passed: every output finite. The stabilizer sits at the input gate's
   * log value (m' = max(lf + m, li) = li = 800), and C, n grow at most linearly:
   * |n| <= T max|k|, far from overflow. (y itself is not bounded: the
   * denominator max(|n.q|, exp(-m)) may be small when n.q crosses 0.) */
  assert_true(fabs(((float *)st[2].data)[0] - 800.0f) < 1e-3);
  assert_true(max_abs(&st[1]) < (double)LONG_T * 4);
  for (int k = 0; k < 3; k++) rt_tensor_free(&st[k]);
  rt_tensor_free(&y);
  /* The same in float64. */
  assert_int_equal(run(&x, &y, st, 1), 0);
  assert_true(fabs(((double *)st[2].data)[0] - 800.0) < 1e-9);
  for (int k = 0; k < 3; k++) rt_tensor_free(&st[k]);
  rt_tensor_free(&y);
  rt_tensor_free(&x);
}

/* LRU: |lambda| = exp(-exp(nu_log)) < 1, so the complex state is bounded by
 * max|B x| / (1 - |lambda|). */
static void test_lru_million_steps(void **state) {
  (void)state;
  bind("import \"std/lru.seq\"\n", "LRU", 2, (const char *[]){"H", "N"}, (int64_t[]){2, 2});
  fill(weight("nu_log"), 2, log(0.01)); /* |lambda| = exp(-0.01) */
  RtTensor x, y, st[1];
  make_input(&x, LONG_T, 2, 1.0);
  assert_int_equal(run(&x, &y, st, 0), 0);
  assert_true(max_abs(&y) < 1e3);
  rt_tensor_free(&st[0]);
  rt_tensor_free(&y);
  rt_tensor_free(&x);
}

/* ---- saturated gates -------------------------------------------------------------- */

static const char *gates_src = "cell Gates(D) {\n"
                               "  input x: [D]\n"
                               "  output s: [D]\n"
                               "  output ls: [D]\n"
                               "  output sp: [D]\n"
                               "  step {\n"
                               "    s = sigmoid(x)\n"
                               "    ls = logsigmoid(x)\n"
                               "    sp = softplus(x)\n"
                               "  }\n"
                               "}\n";

static void test_gate_saturation(void **state) {
  (void)state;
  static const double xs[] = {-INFINITY, -1e30, -1e4, -800, -50, 0, 50, 800, 1e4, 1e30, INFINITY};
  enum { N = sizeof xs / sizeof xs[0] };
  bind(gates_src, NULL, 1, (const char *[]){"D"}, (int64_t[]){N});
  RtTensor x, out[3];
  RtError err;
  int64_t shape[3] = {1, 1, N};
  assert_int_equal(rt_tensor_alloc(&x, RT_F64, 3, shape, &err), 0);
  memcpy(x.data, xs, sizeof xs);
  /* Infinite inputs are legal here: check_finite would (rightly) refuse them. */
  InterpOptions opt = {.f64 = 1};
  assert_int_equal(interp_run(&B, 1, 1, &x, NULL, NULL, out, NULL, &opt, &DE), 0);
  const double *s = out[0].data, *ls = out[1].data, *sp = out[2].data;
  for (int i = 0; i < N; i++) {
    double v = xs[i];
    assert_false(isnan(s[i]) || isnan(ls[i]) || isnan(sp[i]));
    assert_true(s[i] >= 0 && s[i] <= 1);
    assert_true(ls[i] <= 0);
    if (v <= -800) assert_true(s[i] == 0.0 || s[i] < 1e-300);
    if (v >= 50) assert_true(s[i] == 1.0 || s[i] > 1 - 1e-20);
    /* log sigmoid(x) = x for very negative x, exactly; not log(0) = -inf. */
    if (isfinite(v) && v <= -50) assert_true(fabs(ls[i] - v) <= 1e-12 * fabs(v) + 1e-12);
    if (v == -INFINITY) assert_true(ls[i] == -INFINITY && s[i] == 0.0 && sp[i] == 0.0);
    if (v >= 800) assert_true(ls[i] == 0.0 && sp[i] == v);
  }
  assert_true(s[5] == 0.5);
  assert_true(fabs(ls[5] + log(2.0)) < 1e-15);
  for (int k = 0; k < 3; k++) rt_tensor_free(&out[k]);
  rt_tensor_free(&x);
}

/* Complex ops with a real operand (docs/language.md section 6): the real
 * operand takes part as a real number, so an infinite part does not turn
 * the other into NaN and a -0 part stays -0; test_jit checks the compiled
 * code on the same cell. */
static void test_mixed_complex_operands(void **state) {
  (void)state;
  char *mixed_src = tu_read_file(tu_src("tests/data/models/mixed_complex.seq"), NULL);
  assert_non_null(mixed_src);
  bind(mixed_src, NULL, 1, (const char *[]){"N"}, (int64_t[]){2});
  RtTensor in[3], out[5];
  RtError err;
  int64_t shape[3] = {1, 1, 2};
  const double v[3][2] = {{INFINITY, 1.0}, {1.0, -0.0}, {2.0, 2.0}};
  for (int k = 0; k < 3; k++) {
    assert_int_equal(rt_tensor_alloc(&in[k], RT_F64, 3, shape, &err), 0);
    memcpy(in[k].data, v[k], sizeof v[k]);
  }
  InterpOptions opt = {.f64 = 1};
  assert_int_equal(interp_run(&B, 1, 1, in, NULL, NULL, out, NULL, &opt, &DE), 0);
  const double *p = out[0].data, *q = out[1].data, *s = out[2].data, *u = out[3].data,
               *d = out[4].data;
  assert_true(isinf(p[0]) && p[1] == 2.0 && isinf(q[0]) && q[1] == 2.0);
  assert_true(p[2] == 2.0 && p[3] == 0.0 && signbit(p[3]));
  assert_true(isinf(s[0]) && s[1] == 1.0 && s[2] == 3.0 && s[3] == 0.0 && signbit(s[3]));
  assert_true(isinf(u[0]) && u[0] < 0 && u[1] == -1.0 && u[2] == 1.0 && u[3] == 0.0 &&
              !signbit(u[3]));
  assert_true(isinf(d[0]) && d[1] == 0.5 && d[2] == 0.5 && signbit(d[3]));
  for (int k = 0; k < 5; k++) rt_tensor_free(&out[k]);
  for (int k = 0; k < 3; k++) rt_tensor_free(&in[k]);
  free(mixed_src);
}

/* minGRU with z exactly 0 keeps h bit-for-bit for a million steps; with z
 * exactly 1 it copies h~. mLSTM with a forget preactivation of -1e30
 * (logsigmoid = -1e30, f = exp(-1e30) = 0) forgets everything each step and
 * stays finite; with -inf it must too (m' = max(-inf, li) = li). */
static void test_gates_exactly_zero_and_one(void **state) {
  (void)state;
  bind("import \"std/mingru.seq\"\n", "MinGRU", 2, (const char *[]){"I", "H"}, (int64_t[]){2, 2});
  fill(weight("linear_z.weight"), 4, 0.0);
  fill(weight("linear_z.bias"), 2, -1e30); /* z = 0 exactly */
  RtTensor x, y, st[1];
  make_input(&x, LONG_T, 2, 1.0);
  assert_int_equal(run(&x, &y, st, 0), 0);
  assert_true(max_abs(&y) == 0.0); /* h stays at its initial 0, exactly */
  rt_tensor_free(&y);
  rt_tensor_free(&st[0]);
  fill(weight("linear_z.bias"), 2, 1e30); /* z = 1 exactly: h' = h~ */
  double *wh = weight("linear_h.weight"), *bh = weight("linear_h.bias");
  assert_int_equal(run(&x, &y, st, 1), 0);
  const float *xd = x.data;
  const double *yd = y.data;
  for (int64_t t = LONG_T - 3; t < LONG_T; t++)
    for (int j = 0; j < 2; j++) {
      double want = wh[j * 2] * xd[t * 2] + wh[j * 2 + 1] * xd[t * 2 + 1] + bh[j];
      assert_true(fabs(yd[t * 2 + j] - want) < 1e-12);
    }
  rt_tensor_free(&y);
  rt_tensor_free(&st[0]);
  rt_tensor_free(&x);

  bind(mlstm_src, "MLSTM", 2, (const char *[]){"I", "D"}, (int64_t[]){2, 2});
  fill(weight("w_f"), 2, 0.0);
  weight("b_f")[0] = -1e30;
  make_input(&x, 1000, 2, 1.0);
  RtTensor sts[3];
  assert_int_equal(run(&x, &y, sts, 0), 0);
  for (int k = 0; k < 3; k++) rt_tensor_free(&sts[k]);
  rt_tensor_free(&y);
  weight("b_f")[0] = -INFINITY;
  assert_int_equal(run(&x, &y, sts, 1), 0);
  for (int k = 0; k < 3; k++) rt_tensor_free(&sts[k]);
  rt_tensor_free(&y);
  rt_tensor_free(&x);
}

/* ---- the CPU backend, through seqc run ------------------------------------------ */

/* A million minGRU steps through `seqc run --backend=cpu` and the interpreter
 * agree and stay finite; exit status 0 with a finite sum. */
static void test_cpu_backend_million_steps(void **state) {
  (void)state;
  char dir[256], path[1024], cmd[4096];
  snprintf(dir, sizeof dir, "%s", tu_tmpdir());
  RtTensor x;
  RtError err;
  make_input(&x, LONG_T, 2, 3.0);
  snprintf(path, sizeof path, "%s/x_long.npy", dir);
  assert_int_equal(rt_npy_write(path, &x, &err), 0);
  rt_tensor_free(&x);
  snprintf(path, sizeof path, "%s/mlstm.seq", dir);
  assert_int_equal(tu_write_file(path, mlstm_src), 0);
  char mlstm_arg[sizeof path + 32];
  snprintf(mlstm_arg, sizeof mlstm_arg, "%s --dims I=2,D=2", path);
  const char *cells[] = {"stdlib/mingru.seq --dims I=2,H=2", mlstm_arg};
  snprintf(path, sizeof path, "%s/x_long.npy", dir);
  for (int c = 0; c < 2; c++) {
    char *outs[2] = {NULL, NULL};
    const char *backends[2] = {"cpu", "interp"};
    for (int k = 0; k < 2; k++) {
      snprintf(cmd, sizeof cmd,
               "cd %s && %s run %s --random-weights --seed 5 --in x=%s --out y=%s/y_%s.npy "
               "--backend=%s",
               SEQ_SOURCE_DIR, SEQC_BIN, cells[c], path, dir, backends[k], backends[k]);
      int rc = tu_run(cmd, &outs[k]);
      if (rc != 0) print_error("%s\n-> %d\n%s\n", cmd, rc, outs[k] ? outs[k] : "");
      assert_int_equal(rc, 0);
      assert_null(strstr(outs[k], "nan"));
      assert_null(strstr(outs[k], "inf"));
      free(outs[k]);
    }
    RtTensor a, b;
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/y_cpu.npy", dir);
    snprintf(pb, sizeof pb, "%s/y_interp.npy", dir);
    assert_int_equal(rt_npy_read(pa, &a, &err), 0);
    assert_int_equal(rt_npy_read(pb, &b, &err), 0);
    assert_int_equal(rt_numel(&a), rt_numel(&b));
    double worst = 0;
    for (int64_t i = 0; i < rt_numel(&a); i++) {
      double d = fabs((double)((float *)a.data)[i] - ((float *)b.data)[i]);
      if (!(d <= worst)) worst = d;
    }
    if (!(worst < 1e-3)) print_error("%s: cpu vs interp max abs diff %g\n", cells[c], worst);
    assert_true(worst < 1e-3);
    rt_tensor_free(&a);
    rt_tensor_free(&b);
  }
}

static int teardown(void **state) {
  (void)state;
  if (A) arena_destroy(A);
  A = NULL;
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gate_saturation),
      cmocka_unit_test(test_mixed_complex_operands),
      cmocka_unit_test(test_gates_exactly_zero_and_one),
      cmocka_unit_test(test_mingru_million_steps),
      cmocka_unit_test(test_mlstm_stabilizer_million_steps),
      cmocka_unit_test(test_lru_million_steps),
      cmocka_unit_test(test_cpu_backend_million_steps),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
