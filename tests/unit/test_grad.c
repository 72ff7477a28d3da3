/* test_grad.c - reverse-mode derivatives, `grad(loss, M)` (ir/grad.c).
 *
 * The oracle is central finite differences in the float64 interpreter: each
 * cell of tests/golden/grad/ops.seq outputs a scalar loss `l` and
 * `g = grad(l, x)` for its first input x; at two random points, every
 * element of g must match (l(x + eps e_j) - l(x - eps e_j)) / (2 eps),
 * eps = 1e-6, to a relative error of 1e-6 of the largest slope. ops.seq puts
 * every op with a rule on a path from x to the loss, and a loss that reads
 * a gradient (a second derivative). At x = 0, the slopes at kinks are
 * PyTorch's (test_kinks). Diagnostics are
 * checked in test_sema's golden files (grad.seq); here, that the gradient
 * of a linear memory's loss is recognized as the delta rule.
 */
#include "testutil.h"

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "passes/passes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 2 };
static const double EPS = 1e-6, TOL = 1e-6;

/* xorshift: the test's own random numbers, uniform in [lo, hi). */
static uint64_t rng_state = 2463534242ull;
static double uniform(double lo, double hi) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return lo + (hi - lo) * (double)(rng_state >> 11) / 9007199254740992.0;
}

/* A float64 tensor of type t with `lead` leading axes (B, and 1 step for an
 * input), uniform in [lo, hi). */
static RtTensor tensor(const IrBinding *b, IrType t, int lead, double lo, double hi) {
  int64_t shape[RT_MAX_RANK] = {B, 1};
  assert_int_equal(ir_binding_shape(b, t, shape + lead), 0);
  RtTensor x;
  RtError err;
  assert_int_equal(rt_tensor_alloc(&x, RT_F64, t.rank + lead, shape, &err), 0);
  for (int64_t k = 0; k < rt_numel(&x); k++) ((double *)x.data)[k] = uniform(lo, hi);
  return x;
}

static double *dat(const RtTensor *t) {
  return (double *)t->data;
}

typedef struct Compiled {
  Arena *a;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;
} Compiled;

static void compile(Compiled *c, const char *rel) {
  c->a = arena_create();
  assert_non_null(c->a);
  srcmgr_init(&c->sm, c->a);
  diag_init(&c->de, c->a, stderr);
  c->m = seq_compile_file(c->a, &c->sm, &c->de, tu_src(rel), NULL);
  assert_non_null(c->m);
}

/* Runs one step; outs[0] is the loss [B], outs[1] the gradient. */
static void run(const IrBinding *b, const RtTensor *ins, const RtTensor *s, RtTensor *outs,
                DiagEngine *de) {
  InterpOptions opt = {.f64 = 1};
  int ns = b->root->states.n;
  RtTensor *s_out = calloc((size_t)ns + 1, sizeof *s_out);
  assert_non_null(s_out);
  if (interp_run(b, B, 1, ins, NULL, s, outs, s_out, &opt, de))
    fail_msg("%s does not run", b->root->name);
  for (int k = 0; k < ns; k++) rt_tensor_free(&s_out[k]);
  free(s_out);
}

static void check_cell(Arena *a, const IrModule *m, const IrFunc *cell, DiagEngine *de) {
  assert_true(cell->outputs.n == 2 && cell->inputs.n >= 1);
  assert_string_equal(cell->outputs.v[0].name, "l");
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, a, m, cell, de), 0);
  for (int i = 0; i < cell->dims.n; i++)
    assert_int_equal(ir_binding_set_dim(&b, cell->dims.v[i].name, 2 + i, de), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, de), 0);
  assert_int_equal(ir_binding_random(&b, 11, de), 0);
  int ni = cell->inputs.n, ns = cell->states.n;
  double worst = 0;
  for (int trial = 0; trial < 2; trial++) {
    RtTensor ins[8], s[8], outs[2], plus[2], minus[2];
    assert_true(ni <= 8 && ns <= 8);
    for (int i = 0; i < ni; i++) ins[i] = tensor(&b, cell->inputs.v[i].type, 2, -1, 1);
    for (int k = 0; k < ns; k++) s[k] = tensor(&b, cell->states.v[k].type, 1, -0.5, 0.5);
    run(&b, ins, s, outs, de);
    int64_t n = rt_numel(&ins[0]) / B; /* elements of x per example */
    assert_int_equal(rt_numel(&outs[1]), B * n);
    double scale = 1e-3, err = 0;
    for (int64_t j = 0; j < B * n; j++) scale = fmax(scale, fabs(dat(&outs[1])[j]));
    for (int64_t j = 0; j < n; j++) {
      double keep[B];
      for (int e = 0; e < B; e++) {
        keep[e] = dat(&ins[0])[e * n + j];
        dat(&ins[0])[e * n + j] = keep[e] + EPS;
      }
      run(&b, ins, s, plus, de);
      for (int e = 0; e < B; e++) dat(&ins[0])[e * n + j] = keep[e] - EPS;
      run(&b, ins, s, minus, de);
      for (int e = 0; e < B; e++) {
        dat(&ins[0])[e * n + j] = keep[e];
        double fd = (dat(&plus[0])[e] - dat(&minus[0])[e]) / (2 * EPS);
        double got = dat(&outs[1])[e * n + j];
        if (!(fabs(got - fd) <= TOL * scale))
          fail_msg("%s: d l / d x[%d][%lld] is %.10g, finite differences %.10g", cell->name, e,
                   (long long)j, got, fd);
        err = fmax(err, fabs(got - fd) / scale);
      }
      for (int k = 0; k < 2; k++) {
        rt_tensor_free(&plus[k]);
        rt_tensor_free(&minus[k]);
      }
    }
    worst = fmax(worst, err);
    for (int i = 0; i < ni; i++) rt_tensor_free(&ins[i]);
    for (int k = 0; k < ns; k++) rt_tensor_free(&s[k]);
    for (int k = 0; k < 2; k++) rt_tensor_free(&outs[k]);
  }
  print_message("grad %-12s max rel err %.1e\n", cell->name, worst);
}

static void test_finite_differences(void **state) {
  (void)state;
  Compiled c;
  compile(&c, "tests/golden/grad/ops.seq");
  for (int i = 0; i < c.m->funcs.n; i++) check_cell(c.a, c.m, c.m->funcs.v[i], &c.de);
  assert_true(c.m->funcs.n >= 8);
  arena_destroy(c.a);
}

/* At x = 0 the Kinks cell's slopes are PyTorch's: relu and abs 0, half of
 * max(x, 0) and of min(x, 0), max(x) split among the N tied elements (the
 * loss sums it N times, so 16 N / N), and gelu's 1/2 (its guarded
 * quotient): 0 + 0 + 4/2 + 8/2 + 16 + 32/2. */
static void test_kinks(void **state) {
  (void)state;
  Compiled c;
  compile(&c, "tests/golden/grad/ops.seq");
  int fi = ir_func_index(c.m, "Kinks");
  assert_true(fi >= 0);
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, c.a, c.m, c.m->funcs.v[fi], &c.de), 0);
  assert_int_equal(ir_binding_set_dim(&b, "N", 4, &c.de), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &c.de), 0);
  RtTensor x = tensor(&b, c.m->funcs.v[fi]->inputs.v[0].type, 2, 0, 0), outs[2];
  run(&b, &x, NULL, outs, &c.de);
  for (int64_t j = 0; j < rt_numel(&outs[1]); j++)
    assert_float_equal(dat(&outs[1])[j], 2.0 + 4.0 + 16.0 + 16.0, 1e-12);
  rt_tensor_free(&x);
  rt_tensor_free(&outs[0]);
  rt_tensor_free(&outs[1]);
  arena_destroy(c.a);
}

/* The gradient step of a linear memory's squared error is the delta rule,
 * and the classifier finds it so (chunked WY form). */
static void test_delta_rule(void **state) {
  (void)state;
  Compiled c;
  compile(&c, "tests/golden/ir/grad.seq");
  IrModule *rw = NULL;
  ClassifyResult *cls = NULL;
  assert_int_equal(rewrite_module(c.a, c.m, &rw, &c.de), 0);
  assert_int_equal(classify_module(c.a, rw, &cls, &c.de), 0);
  assert_int_equal(cls->funcs[0].states[0].cls, REC_LIN_DPLR);
  arena_destroy(c.a);
}

/* Every allocation of compiling the grad and grid cells may fail: the
 * result is NULL with an error, never a crash (ASan builds check the rest). */
static void test_allocation_failure(void **state) {
  (void)state;
  const char *files[] = {"tests/golden/grad/ops.seq", "stdlib/titans.seq", "stdlib/lightnet2d.seq"};
  for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
    long n = 0;
    for (;; n += n < 300 ? 1 : 97) {
      Arena *a = arena_create();
      assert_non_null(a);
      SrcMgr sm;
      DiagEngine de;
      srcmgr_init(&sm, a);
      diag_init(&de, a, NULL);
      seq_alloc_fail_after(n);
      IrModule *m = seq_compile_file(a, &sm, &de, tu_src(files[fi]), NULL);
      seq_alloc_fail_after(-1);
      int ok = m != NULL;
      if (!ok) assert_true(de.nerrors > 0);
      arena_destroy(a);
      if (ok) break;
    }
    print_message("%s compiles after %ld failed allocations\n", files[fi], n);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_finite_differences),
      cmocka_unit_test(test_kinks),
      cmocka_unit_test(test_delta_rule),
      cmocka_unit_test(test_allocation_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
