/* test_rewrite.c - the rewriting pass (passes/rewrite.c).
 *
 * The oracle is the interpreter: every program in stdlib/ and examples/ is
 * run on the source IR and on the rewritten IR with the same random weights
 * and inputs, and the outputs and final states must agree (float32 rounding:
 * 1e-5; float64: 1e-9, where only the order of additions differs). Golden IR
 * pins what the pass makes of the ParaGRU, ParaLSTM and pLSTM contractions
 * and of a file of small cases (tests/golden/rewrite/contractions.seq),
 * including the sums that must stay sums.
 */
#include "testutil.h"

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "passes/passes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;  /* as the frontend built it */
  IrModule *rw; /* rewritten */
} Compiled;

static void compile_and_rewrite(Compiled *c, const char *path) {
  c->arena = arena_create();
  assert_non_null(c->arena);
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, stderr);
  c->m = seq_compile_file(c->arena, &c->sm, &c->de, path, NULL);
  if (!c->m) fail_msg("%s does not compile", path);
  assert_int_equal(rewrite_module(c->arena, c->m, &c->rw, &c->de), 0);
  assert_non_null(c->rw);
  assert_int_equal(c->rw->funcs.n, c->m->funcs.n);
  assert_int_equal(c->rw->entry, c->m->entry);
  if (ir_verify(c->rw, &c->de, "rewrite")) fail_msg("%s: rewritten IR does not verify", path);
}

static char *print_module(const IrModule *m) {
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  assert_non_null(out);
  ir_print_module(out, m);
  fclose(out);
  return buf;
}

/* Counts nodes of op `op` in the entry function. */
static int count_op(const IrModule *m, IrOp op) {
  const IrFunc *f = m->funcs.v[m->entry];
  int n = 0;
  for (int r = 0; r < f->nodes.n; r++) n += f->nodes.v[r].op == op;
  return n;
}

/* Sums over one axis of a product: what the contraction rule removes. */
static int count_sum_of_mul(const IrModule *m) {
  const IrFunc *f = m->funcs.v[m->entry];
  int n = 0;
  for (int r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    n += nd->op == IR_SUM && nd->axis >= 0 && f->nodes.v[nd->args[0]].op == IR_MUL;
  }
  return n;
}

/* ---- interpreter on both ------------------------------------------------- */

enum { RUN_B = 2, RUN_T = 5 };

/* Binds the root with every dim set (distinct small values first, so that
 * a transposed operand cannot hide behind equal sizes; the same value for
 * all when the program relates its dims), random weights, seed 7. */
static int bind(Compiled *c, IrBinding *b) {
  const IrFunc *root = c->m->funcs.v[c->m->entry];
  for (int attempt = 0; attempt < 2; attempt++) {
    DiagEngine quiet;
    diag_init(&quiet, c->arena, NULL);
    if (ir_binding_init(b, c->arena, c->m, root, &quiet)) return -1;
    int ok = 1;
    for (int i = 0; i < root->dims.n && ok; i++)
      ok = ir_binding_set_dim(b, root->dims.v[i].name, attempt == 0 ? 2 + i : 3, &quiet) == 0;
    if (ok && ir_binding_infer(b, NULL, NULL, NULL, NULL, &quiet) == 0 &&
        ir_binding_random(b, 7, &quiet) == 0)
      return 0;
  }
  return -1;
}

/* Runs the interpreter over the binding with root `root` of module m. */
static int run(IrBinding b, const IrModule *m, RtTensor *ins, int f64, RtTensor *outs,
               RtTensor *states, DiagEngine *de) {
  b.mod = m;
  b.root = m->funcs.v[m->entry];
  int64_t lengths[RUN_B] = {RUN_T, 3};
  InterpOptions opt = {.f64 = f64};
  return interp_run(&b, RUN_B, RUN_T, ins, lengths, NULL, outs, states, &opt, de);
}

static double max_err(const RtTensor *x, const RtTensor *y) {
  assert_int_equal(x->dtype, y->dtype);
  assert_int_equal(rt_numel(x), rt_numel(y));
  double e = 0;
  for (int64_t k = 0; k < rt_numel(x); k++) {
    double u = x->dtype == RT_F64 ? ((double *)x->data)[k] : ((float *)x->data)[k];
    double v = y->dtype == RT_F64 ? ((double *)y->data)[k] : ((float *)y->data)[k];
    if (isnan(u) != isnan(v)) return INFINITY;
    if (!isnan(u) && fabs(u - v) > e) e = fabs(u - v);
  }
  return e;
}

/* Compares the two IRs of c through the interpreter; returns 0 if the
 * program cannot be bound or run at all (reported, then skipped). */
static int check_equivalent(Compiled *c, const char *path) {
  IrBinding b;
  if (bind(c, &b)) {
    print_message("skipped (dims cannot be bound): %s\n", path);
    return 0;
  }
  const IrFunc *root = b.root;
  int ni = root->inputs.n;
  RtTensor *ins = arena_calloc(c->arena, (size_t)ni + 1, sizeof *ins);
  assert_non_null(ins);
  RtError err;
  for (int i = 0; i < ni; i++) {
    IrType t = root->inputs.v[i].type;
    int lead = root->inputs.v[i].context ? 1 : 2; /* a context has no time axis */
    int64_t shape[RT_MAX_RANK] = {RUN_B, RUN_T};
    assert_int_equal(ir_binding_shape(&b, t, shape + lead), 0);
    int nd = t.rank + lead;
    if (t.elem == IR_COMPLEX) shape[nd++] = 2;
    RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F32;
    assert_int_equal(rt_tensor_alloc(&ins[i], dt, nd, shape, &err), 0);
    for (int64_t k = 0; k < rt_numel(&ins[i]); k++) {
      if (dt == RT_I64)
        ((int64_t *)ins[i].data)[k] = k % 2;
      else
        ((float *)ins[i].data)[k] = (float)((k * 5 % 11) - 5) * 0.17f;
    }
  }
  int no = root->outputs.n, ns = b.flat.states.n;
  for (int f64 = 0; f64 < 2; f64++) {
    RtTensor *o1 = arena_calloc(c->arena, (size_t)no + 1, sizeof *o1);
    RtTensor *o2 = arena_calloc(c->arena, (size_t)no + 1, sizeof *o2);
    RtTensor *s1 = arena_calloc(c->arena, (size_t)ns + 1, sizeof *s1);
    RtTensor *s2 = arena_calloc(c->arena, (size_t)ns + 1, sizeof *s2);
    assert_true(o1 && o2 && s1 && s2);
    if (run(b, c->m, ins, f64, o1, s1, &c->de)) fail_msg("%s: the source IR does not run", path);
    if (run(b, c->rw, ins, f64, o2, s2, &c->de))
      fail_msg("%s: the rewritten IR does not run", path);
    double tol = f64 ? 1e-9 : 1e-5;
    for (int k = 0; k < no; k++) {
      double e = max_err(&o1[k], &o2[k]);
      if (!(e <= tol))
        fail_msg("%s: output %s differs by %g (f64=%d)", path, root->outputs.v[k].name, e, f64);
      rt_tensor_free(&o1[k]);
      rt_tensor_free(&o2[k]);
    }
    for (int k = 0; k < ns; k++) {
      double e = max_err(&s1[k], &s2[k]);
      if (!(e <= tol))
        fail_msg("%s: state %s differs by %g (f64=%d)", path, b.flat.states.v[k].name, e, f64);
      rt_tensor_free(&s1[k]);
      rt_tensor_free(&s2[k]);
    }
  }
  for (int i = 0; i < ni; i++) rt_tensor_free(&ins[i]);
  return 1;
}

/* Every .seq in stdlib/ and examples/, and the golden cases. */
static void test_interpreter_agrees(void **state) {
  (void)state;
  const char *dirs[] = {"stdlib", "examples", "tests/golden/rewrite"};
  int compared = 0, contracted = 0;
  for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
    char **names = tu_list_dir(tu_src(dirs[d]), ".seq", NULL);
    for (char **name = names; *name; name++) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", tu_src(dirs[d]), *name);
      Compiled c;
      compile_and_rewrite(&c, path);
      contracted += count_op(c.rw, IR_MATMUL) > count_op(c.m, IR_MATMUL);
      compared += check_equivalent(&c, path);
      arena_destroy(c.arena);
    }
    tu_free_list(names);
  }
  assert_true(compared >= 35);
  assert_true(contracted >= 4); /* ParaGRU, ParaLSTM, pLSTM, the golden cases */
}

/* ---- what the contractions become ---------------------------------------- */

static void check_golden(const char *seq, const char *ir) {
  Compiled c;
  compile_and_rewrite(&c, tu_src(seq));
  char *before = print_module(c.m);
  char *text = print_module(c.rw);
  tu_check_golden(text, ir);
  /* The source module is the interpreter's oracle: it must not change. */
  Compiled again;
  compile_and_rewrite(&again, tu_src(seq));
  char *fresh = print_module(again.m);
  assert_string_equal(before, fresh);
  free(before);
  free(fresh);
  free(text);
  arena_destroy(again.arena);
  arena_destroy(c.arena);
}

/* B x over a leading axis becomes one product with a [I, 3*H] view of B:
 * no sum of a product is left, no [I, 3, H] intermediate. */
static void test_paragru_paralstm(void **state) {
  (void)state;
  const char *cells[][2] = {{"stdlib/paragru.seq", "tests/golden/rewrite/paragru.ir"},
                            {"stdlib/paralstm.seq", "tests/golden/rewrite/paralstm.ir"}};
  for (int i = 0; i < 2; i++) {
    Compiled c;
    compile_and_rewrite(&c, tu_src(cells[i][0]));
    assert_int_equal(count_sum_of_mul(c.m), 1);
    assert_int_equal(count_sum_of_mul(c.rw), 0);
    assert_int_equal(count_op(c.rw, IR_MATMUL), 1);
    assert_int_equal(count_op(c.rw, IR_TRANSPOSE), 0);
    arena_destroy(c.arena);
    check_golden(cells[i][0], cells[i][1]);
  }
}

/* pLSTM: W_T x, the mark's sum over J and T_t C all become products; the
 * dot products (w_D . x, q . k) stay sums over all axes. */
static void test_plstm(void **state) {
  (void)state;
  Compiled c;
  compile_and_rewrite(&c, tu_src("stdlib/plstm.seq"));
  assert_int_equal(count_sum_of_mul(c.m), 3);
  assert_int_equal(count_sum_of_mul(c.rw), 0);
  assert_int_equal(count_op(c.rw, IR_MATMUL), count_op(c.m, IR_MATMUL) + 3);
  assert_int_equal(count_op(c.rw, IR_SUM), 2);
  arena_destroy(c.arena);
  check_golden("stdlib/plstm.seq", "tests/golden/rewrite/plstm.ir");
}

static void test_small_cases(void **state) {
  (void)state;
  check_golden("tests/golden/rewrite/contractions.seq", "tests/golden/rewrite/contractions.ir");
  check_golden("tests/golden/rewrite/algebra.seq", "tests/golden/rewrite/algebra.ir");
  check_golden("tests/golden/rewrite/identity.seq", "tests/golden/rewrite/identity.ir");
  check_golden("tests/golden/rewrite/columns.seq", "tests/golden/rewrite/columns.ir");
}

/* The CPU backend lowers the rewritten IR: the small cases, whose products
 * put transposes on constant and state operands, must agree with the
 * interpreter on the source IR through the command line. */
static void test_cpu_backend_agrees(void **state) {
  (void)state;
  const char *dir = tu_tmpdir();
  const char *outs[] = {"a", "b", "c", "g", "m", "n", "k", "d", "e", "f", "w"};
  const char *names[] = {"x", "z"};
  int64_t widths[] = {3, 4};
  for (int i = 0; i < 2; i++) {
    RtTensor t;
    RtError err;
    int64_t shape[3] = {2, 6, widths[i]};
    assert_int_equal(rt_tensor_alloc(&t, RT_F32, 3, shape, &err), 0);
    for (int64_t k = 0; k < rt_numel(&t); k++)
      ((float *)t.data)[k] = (float)((k * 7 % 13) - 6) * 0.13f;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", dir, names[i]);
    assert_int_equal(rt_npy_write(path, &t, &err), 0);
    rt_tensor_free(&t);
  }
  char cmd[8192], *out = NULL;
  for (int be = 0; be < 2; be++) {
    int n = snprintf(cmd, sizeof cmd,
                     "%s run %s --backend=%s --random-weights --seed 3 --dims I=3,H=4,J=5 "
                     "--in x=%s/x.npy --in z=%s/z.npy --quiet",
                     SEQC_BIN, tu_src("tests/golden/rewrite/contractions.seq"),
                     be ? "cpu --tol 1e-5" : "interp", dir, dir);
    for (size_t k = 0; k < sizeof outs / sizeof outs[0]; k++)
      n += snprintf(cmd + n, sizeof cmd - (size_t)n, " --%s %s=%s/%s.npy", be ? "expect" : "out",
                    outs[k], dir, outs[k]);
    int rc = tu_run(cmd, &out);
    if (rc) print_error("%s\n%s", cmd, out);
    assert_int_equal(rc, 0);
    free(out);
  }
}

/* A module with nothing to rewrite comes back with the same text. */
static void test_nothing_to_do(void **state) {
  (void)state;
  Compiled c;
  compile_and_rewrite(&c, tu_src("stdlib/lstm.seq"));
  char *x = print_module(c.m), *y = print_module(c.rw);
  assert_string_equal(x, y);
  free(x);
  free(y);
  arena_destroy(c.arena);
}

/* Running out of memory anywhere in the pass is an error, never a crash. */
static void test_allocation_failure(void **state) {
  (void)state;
  int failures = 0;
  for (long n = 0; n < 4000; n += 7) {
    Arena *a = arena_create();
    assert_non_null(a);
    SrcMgr sm;
    DiagEngine de;
    srcmgr_init(&sm, a);
    diag_init(&de, a, NULL);
    IrModule *m = seq_compile_file(a, &sm, &de, tu_src("stdlib/plstm.seq"), NULL);
    assert_non_null(m);
    IrModule *rw = NULL;
    seq_alloc_fail_after(n);
    int rc = rewrite_module(a, m, &rw, &de);
    seq_alloc_fail_after(-1);
    if (rc) {
      failures++;
      assert_true(de.nerrors > 0 || de.diags.n == 0); /* the diagnostic itself may not fit */
    } else {
      assert_non_null(rw);
    }
    arena_destroy(a);
    if (rc == 0 && n > 0) break;
  }
  assert_true(failures > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paragru_paralstm),   cmocka_unit_test(test_plstm),
      cmocka_unit_test(test_small_cases),        cmocka_unit_test(test_cpu_backend_agrees),
      cmocka_unit_test(test_nothing_to_do),      cmocka_unit_test(test_interpreter_agrees),
      cmocka_unit_test(test_allocation_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
