/* test_jacobian.c - forward-mode derivatives of a cell's step
 * (passes/jacobian.c).
 *
 * The oracle is central finite differences of the original step in the
 * float64 interpreter: for every cell defined in stdlib/, examples/ and
 * tests/golden/jacobian/ops.seq (which puts every op with a rule on a path
 * from a state to a next value), the JVP cell's tangent outputs at a random
 * state s0, input x and direction ds must match
 *   (step(s0 + eps ds, x) - step(s0 - eps ds, x)) / (2 eps),  eps = 1e-6,
 * to a relative error of 1e-5, and its primal outputs must equal the step
 * from s0. Where the diagonal form exists, each "dk'/dj" output must match
 * the finite difference along the all-ones direction of state j (exact for
 * a diagonal block). Golden IR pins the JVP of LSTM and minGRU and the
 * diagonal of ParaLSTM; diagnostics are checked for a model, a sequence-level
 * op in a step, and a non-diagonal Jacobian.
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
static const double EPS = 1e-6, TOL = 1e-5;

typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;
} Compiled;

static void compile(Compiled *c, const char *path, FILE *diags) {
  c->arena = arena_create();
  assert_non_null(c->arena);
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, diags);
  c->m = seq_compile_file(c->arena, &c->sm, &c->de, path, NULL);
  if (!c->m) fail_msg("%s does not compile", path);
}

static char *print_func(const IrModule *m, const IrFunc *f) {
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  assert_non_null(out);
  ir_print_func(out, m, f);
  fclose(out);
  return buf;
}

/* xorshift: the test's own random numbers, uniform in [lo, hi). */
static uint64_t rng_state = 88172645463325252ull;
static double uniform(double lo, double hi) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return lo + (hi - lo) * (double)(rng_state >> 11) / 9007199254740992.0;
}

/* Binds cell with small distinct dims (or all 3 when the cell relates its
 * dims) and random weights. */
static int bind(Compiled *c, const IrFunc *cell, IrBinding *b) {
  for (int attempt = 0; attempt < 2; attempt++) {
    DiagEngine quiet;
    diag_init(&quiet, c->arena, NULL);
    if (ir_binding_init(b, c->arena, c->m, cell, &quiet)) return -1;
    int ok = 1;
    for (int i = 0; i < cell->dims.n && ok; i++)
      ok = ir_binding_set_dim(b, cell->dims.v[i].name, attempt == 0 ? 2 + i : 3, &quiet) == 0;
    if (ok && ir_binding_infer(b, NULL, NULL, NULL, NULL, &quiet) == 0 &&
        ir_binding_random(b, 7, &quiet) == 0)
      return 0;
  }
  return -1;
}

/* An f64 tensor for a value of type t with `lead` leading axes (B, or B
 * and T = 1), complex as a trailing pair; int values are tokens 0 or 1. */
static RtTensor tensor(const IrBinding *b, IrType t, int lead, double lo, double hi) {
  int64_t shape[RT_MAX_RANK] = {B, 1};
  assert_int_equal(ir_binding_shape(b, t, shape + lead), 0);
  int nd = t.rank + lead;
  if (t.elem == IR_COMPLEX) shape[nd++] = 2;
  RtTensor x;
  RtError err;
  RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F64;
  assert_int_equal(rt_tensor_alloc(&x, dt, nd, shape, &err), 0);
  for (int64_t k = 0; k < rt_numel(&x); k++) {
    if (dt == RT_I64)
      ((int64_t *)x.data)[k] = k % 2;
    else
      ((double *)x.data)[k] = uniform(lo, hi);
  }
  return x;
}

/* A copy of s with `lead` = 1 (state layout [B, ...]) turned into the
 * sequence layout [B, 1, ...] of an input. */
static RtTensor as_step_input(const RtTensor *s) {
  int64_t shape[RT_MAX_RANK];
  shape[0] = s->shape[0];
  shape[1] = 1;
  for (int i = 1; i < s->ndim; i++) shape[i + 1] = s->shape[i];
  RtTensor x;
  RtError err;
  assert_int_equal(rt_tensor_alloc(&x, RT_F64, s->ndim + 1, shape, &err), 0);
  memcpy(x.data, s->data, (size_t)rt_numel(s) * sizeof(double));
  return x;
}

static double *dat(const RtTensor *t) {
  assert_int_equal(t->dtype, RT_F64);
  return (double *)t->data;
}

static int run(const IrBinding *b, const IrFunc *root, const RtTensor *ins, const RtTensor *s_in,
               RtTensor *outs, RtTensor *s_out, DiagEngine *de) {
  IrBinding rb = *b;
  rb.root = root;
  InterpOptions opt = {.f64 = 1};
  return interp_run(&rb, B, 1, ins, NULL, s_in, outs, s_out, &opt, de);
}

/* The next states from s0 + h ds (ds == NULL: from s0), into next[]. */
static void step_from(Compiled *c, const IrBinding *b, const RtTensor *ins, const RtTensor *s0,
                      const RtTensor *ds, double h, RtTensor *next) {
  const IrFunc *cell = b->root;
  int ns = cell->states.n, no = cell->outputs.n;
  RtTensor *s = arena_calloc(c->arena, (size_t)ns + 1, sizeof *s);
  RtTensor *outs = arena_calloc(c->arena, (size_t)no + 1, sizeof *outs);
  assert_true(s && outs);
  for (int k = 0; k < ns; k++) {
    RtError err;
    assert_int_equal(rt_tensor_alloc(&s[k], RT_F64, s0[k].ndim, s0[k].shape, &err), 0);
    for (int64_t j = 0; j < rt_numel(&s0[k]); j++)
      dat(&s[k])[j] = dat(&s0[k])[j] + (ds ? h * dat(&ds[k])[j] : 0.0);
  }
  if (run(b, cell, ins, s, outs, next, &c->de)) fail_msg("%s does not run", cell->name);
  for (int k = 0; k < ns; k++) rt_tensor_free(&s[k]);
  for (int k = 0; k < no; k++) rt_tensor_free(&outs[k]);
}

/* max |x - y| / max(max |y|, 1e-6): y is the finite difference. */
static double rel_err(const RtTensor *x, const RtTensor *y) {
  assert_int_equal(rt_numel(x), rt_numel(y));
  double e = 0, scale = 1e-6;
  for (int64_t k = 0; k < rt_numel(y); k++) {
    double u = dat(x)[k], v = dat(y)[k];
    if (isnan(u) || isnan(v)) return INFINITY;
    if (fabs(u - v) > e) e = fabs(u - v);
    if (fabs(v) > scale) scale = fabs(v);
  }
  return e / scale;
}

static void free_all(RtTensor *t, int n) {
  for (int k = 0; k < n; k++) rt_tensor_free(&t[k]);
}

/* Central differences along ds of next state k: into fd[k]. */
static void finite_difference(Compiled *c, const IrBinding *b, const RtTensor *ins,
                              const RtTensor *s0, const RtTensor *ds, RtTensor *fd) {
  int ns = b->root->states.n;
  RtTensor *plus = arena_calloc(c->arena, (size_t)ns + 1, sizeof *plus);
  assert_non_null(plus);
  step_from(c, b, ins, s0, ds, EPS, plus);
  step_from(c, b, ins, s0, ds, -EPS, fd);
  for (int k = 0; k < ns; k++)
    for (int64_t j = 0; j < rt_numel(&fd[k]); j++)
      dat(&fd[k])[j] = (dat(&plus[k])[j] - dat(&fd[k])[j]) / (2 * EPS);
  free_all(plus, ns);
}

/* Compares the JVP of `cell` with finite differences at two random points
 * and directions; prints the worst relative error. */
static void check_jvp(Compiled *c, const IrFunc *cell, const IrBinding *b, const char *path) {
  IrFunc *jvp = NULL;
  if (jacobian_jvp_cell(c->arena, c->m, cell, &jvp, &c->de))
    fail_msg("%s: no JVP of %s", path, cell->name);
  int ns = cell->states.n, ni = cell->inputs.n;
  assert_int_equal(jvp->inputs.n, ni + ns);
  assert_int_equal(jvp->outputs.n, 2 * ns);
  double worst = 0, primal = 0;
  for (int trial = 0; trial < 2; trial++) {
    RtTensor *ins = arena_calloc(c->arena, (size_t)(ni + ns) + 1, sizeof *ins);
    RtTensor *s0 = arena_calloc(c->arena, (size_t)ns + 1, sizeof *s0);
    RtTensor *ds = arena_calloc(c->arena, (size_t)ns + 1, sizeof *ds);
    RtTensor *fd = arena_calloc(c->arena, (size_t)ns + 1, sizeof *fd);
    RtTensor *next = arena_calloc(c->arena, (size_t)ns + 1, sizeof *next);
    RtTensor *outs = arena_calloc(c->arena, (size_t)(2 * ns) + 1, sizeof *outs);
    assert_true(ins && s0 && ds && fd && next && outs);
    for (int i = 0; i < ni; i++) /* a context has no time axis */
      ins[i] = tensor(b, cell->inputs.v[i].type, cell->inputs.v[i].context ? 1 : 2, -1, 1);
    /* Positive states: some cells take logs or square roots of theirs
     * (normalizers), which a random sign would make NaN. */
    for (int k = 0; k < ns; k++) {
      s0[k] = tensor(b, cell->states.v[k].type, 1, 0.2, 1.0);
      ds[k] = tensor(b, cell->states.v[k].type, 1, -1, 1);
      ins[ni + k] = as_step_input(&ds[k]);
    }
    finite_difference(c, b, ins, s0, ds, fd);
    step_from(c, b, ins, s0, NULL, 0, next);
    if (run(b, jvp, ins, s0, outs, NULL, &c->de)) fail_msg("%s: %s does not run", path, jvp->name);
    for (int k = 0; k < ns; k++) {
      double ep = rel_err(&outs[k], &next[k]);
      double et = rel_err(&outs[ns + k], &fd[k]);
      if (!(et <= TOL) || !(ep <= 1e-12))
        fail_msg("%s: %s, state %s: tangent error %g, primal error %g", path, cell->name,
                 cell->states.v[k].name, et, ep);
      worst = et > worst ? et : worst;
      primal = ep > primal ? ep : primal;
    }
    free_all(ins, ni + ns);
    free_all(s0, ns);
    free_all(ds, ns);
    free_all(fd, ns);
    free_all(next, ns);
    free_all(outs, 2 * ns);
  }
  print_message("jvp  %-24s %-16s states %d  max rel err %.1e\n", path, cell->name, ns, worst);
}

/* Where the diagonal form exists: each block against the finite difference
 * along ones on state j. Returns 1 if it exists. */
static int check_diag(Compiled *c, const IrFunc *cell, const IrBinding *b, const char *path) {
  DiagEngine quiet;
  diag_init(&quiet, c->arena, NULL);
  IrFunc *dg = NULL;
  if (jacobian_diag_cell(c->arena, c->m, cell, &dg, &quiet)) {
    assert_true(quiet.nerrors > 0); /* refused with a reason, never silently */
    return 0;
  }
  int ns = cell->states.n, ni = cell->inputs.n;
  RtTensor *ins = arena_calloc(c->arena, (size_t)ni + 1, sizeof *ins);
  RtTensor *s0 = arena_calloc(c->arena, (size_t)ns + 1, sizeof *s0);
  RtTensor *ds = arena_calloc(c->arena, (size_t)ns + 1, sizeof *ds);
  RtTensor *fd = arena_calloc(c->arena, (size_t)ns + 1, sizeof *fd);
  RtTensor *outs = arena_calloc(c->arena, (size_t)dg->outputs.n + 1, sizeof *outs);
  assert_true(ins && s0 && ds && fd && outs);
  for (int i = 0; i < ni; i++) /* a context has no time axis */
    ins[i] = tensor(b, cell->inputs.v[i].type, cell->inputs.v[i].context ? 1 : 2, -1, 1);
  for (int k = 0; k < ns; k++) s0[k] = tensor(b, cell->states.v[k].type, 1, 0.2, 1.0);
  if (run(b, dg, ins, s0, outs, NULL, &c->de)) fail_msg("%s: %s does not run", path, dg->name);
  double worst = 0;
  int o = ns; /* the blocks follow the next values, grouped by state j */
  for (int j = 0; j < ns; j++) {
    for (int k = 0; k < ns; k++) {
      ds[k] = tensor(b, cell->states.v[k].type, 1, 0, 0);
      if (k == j) /* ones: the real direction for a complex state */
        for (int64_t e = 0; e < rt_numel(&ds[k]); e++)
          dat(&ds[k])[e] = cell->states.v[k].type.elem == IR_COMPLEX && e % 2 ? 0.0 : 1.0;
    }
    finite_difference(c, b, ins, s0, ds, fd);
    for (int k = 0; k < ns; k++) {
      if (!ir_type_eq(cell->states.v[k].type, cell->states.v[j].type)) continue;
      assert_true(o < dg->outputs.n);
      double e = rel_err(&outs[o], &fd[k]);
      if (!(e <= TOL))
        fail_msg("%s: %s: %s differs from finite differences by %g", path, cell->name,
                 dg->outputs.v[o].name, e);
      worst = e > worst ? e : worst;
      o++;
    }
    free_all(ds, ns);
    free_all(fd, ns);
  }
  assert_int_equal(o, dg->outputs.n);
  print_message("diag %-24s %-16s outputs %d  max rel err %.1e\n", path, cell->name, dg->outputs.n,
                worst);
  free_all(ins, ni);
  free_all(s0, ns);
  free_all(outs, dg->outputs.n);
  return 1;
}

/* Every cell defined in stdlib/, examples/ and the golden op file. */
static void test_finite_differences(void **state) {
  (void)state;
  const char *dirs[] = {"stdlib", "examples", "tests/golden/jacobian"};
  int checked = 0, diagonal = 0;
  for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
    char **names = tu_list_dir(tu_src(dirs[d]), ".seq", NULL);
    for (char **name = names; *name; name++) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", tu_src(dirs[d]), *name);
      Compiled c;
      compile(&c, path, stderr);
      int nf = c.m->funcs.n; /* the pass appends functions */
      for (int i = 0; i < nf; i++) {
        const IrFunc *f = c.m->funcs.v[i];
        /* Cells of this file only: imported ones are checked in theirs. */
        if (f->kind != IR_FN_CELL || f->states.n == 0 || !f->loc.file ||
            (strcmp(f->loc.file->path, path) != 0 && strcmp(f->loc.file->name, path) != 0))
          continue;
        IrBinding b;
        if (bind(&c, f, &b)) {
          print_message("skipped (dims cannot be bound): %s %s\n", path, f->name);
          continue;
        }
        check_jvp(&c, f, &b, *name);
        diagonal += check_diag(&c, f, &b, *name);
        checked++;
      }
      arena_destroy(c.arena);
    }
    tu_free_list(names);
  }
  print_message("%d cells checked, %d with a diagonal form\n", checked, diagonal);
  assert_true(checked >= 30);
  assert_true(diagonal >= 3); /* at least minGRU, ParaGRU, ParaLSTM */
}

/* ---- golden IR ------------------------------------------------------------- */

static void golden(const char *seq, const char *ir, int diag) {
  Compiled c;
  compile(&c, tu_src(seq), stderr);
  IrFunc *f = NULL;
  const IrFunc *cell = c.m->funcs.v[c.m->entry];
  int rc = diag ? jacobian_diag_cell(c.arena, c.m, cell, &f, &c.de)
                : jacobian_jvp_cell(c.arena, c.m, cell, &f, &c.de);
  assert_int_equal(rc, 0);
  char *text = print_func(c.m, f);
  tu_check_golden(text, ir);
  free(text);
  arena_destroy(c.arena);
}

static void test_golden(void **state) {
  (void)state;
  golden("examples/lstm.seq", "tests/golden/jacobian/lstm.jvp.ir", 0);
  golden("examples/mingru.seq", "tests/golden/jacobian/mingru.jvp.ir", 0);
  golden("stdlib/paralstm.seq", "tests/golden/jacobian/paralstm.diag.ir", 1);
}

/* ---- diagnostics ------------------------------------------------------------ */

static int has_diag(const DiagEngine *de, const char *text) {
  for (int i = 0; i < de->diags.n; i++)
    if (de->diags.v[i].severity == DIAG_ERROR && strstr(de->diags.v[i].message, text)) return 1;
  return 0;
}

/* LSTM's h' reads h through W_hh @ h: its diagonal form is refused at the
 * product, and a model has no step to differentiate. */
static void test_refusals(void **state) {
  (void)state;
  Compiled c;
  compile(&c, tu_src("examples/lstm.seq"), stderr);
  DiagEngine de;
  diag_init(&de, c.arena, NULL);
  IrFunc *f = (IrFunc *)1;
  int nf = c.m->funcs.n;
  assert_int_equal(jacobian_diag_cell(c.arena, c.m, c.m->funcs.v[c.m->entry], &f, &de), -1);
  assert_null(f);
  assert_true(has_diag(&de, "is not diagonal: matmul mixes its elements"));
  assert_int_equal(c.m->funcs.n, nf); /* no half-built function left behind */
  /* The JVP exists; asking twice gives the same function. */
  IrFunc *j1 = NULL, *j2 = NULL;
  assert_int_equal(jacobian_jvp_cell(c.arena, c.m, c.m->funcs.v[c.m->entry], &j1, &de), 0);
  assert_int_equal(jacobian_jvp_cell(c.arena, c.m, c.m->funcs.v[c.m->entry], &j2, &de), 0);
  assert_ptr_equal(j1, j2);
  assert_int_equal(c.m->funcs.n, nf + 1);
  arena_destroy(c.arena);

  compile(&c, tu_src("examples/lm.seq"), stderr);
  const IrFunc *model = c.m->funcs.v[c.m->entry];
  assert_int_equal(model->kind, IR_FN_MODEL);
  diag_init(&de, c.arena, NULL);
  assert_int_equal(jacobian_jvp_cell(c.arena, c.m, model, &f, &de), -1);
  assert_true(has_diag(&de, "it is a model"));
  arena_destroy(c.arena);
}

/* A sequence-level op in a step (which the frontend never builds) is a
 * diagnostic at the op, not a crash or a silent zero. */
static void test_sequence_op_in_step(void **state) {
  (void)state;
  Arena *a = arena_create();
  assert_non_null(a);
  IrModule *m = ir_module_new(a);
  IrFunc *f = ir_func_new(m, "Conv", IR_FN_CELL, (SrcLoc){0});
  assert_non_null(f);
  IrDim dim = {"D", {0}, 1, 0, 0};
  assert_int_equal(vec_push(a, &f->dims, dim), 0);
  DimExpr d[2] = {dim_var(0), dim_const(4)};
  IrType vec = ir_type(a, IR_REAL, 1, d), mat = ir_type(a, IR_REAL, 2, d);
  IrParam w = {"w", mat, {0}}, bias = {"b", vec, {0}};
  assert_int_equal(vec_push(a, &f->params, w), 0);
  assert_int_equal(vec_push(a, &f->params, bias), 0);
  IrState st = {"h", vec, {0}, IR_NONE, IR_NONE, 0};
  assert_int_equal(vec_push(a, &f->states, st), 0);
  IrNode p = {0};
  p.op = IR_CONST;
  IrRef zero = ir_emit(f, a, &p, 0, NULL);
  p.op = IR_BROADCAST;
  p.type = vec;
  IrRef init = ir_emit(f, a, &p, 1, &zero);
  IrNode leaf = {0};
  leaf.op = IR_STATE;
  leaf.type = vec;
  IrRef h = ir_emit(f, a, &leaf, 0, NULL);
  leaf.op = IR_PARAM;
  leaf.type = mat;
  IrRef wr = ir_emit(f, a, &leaf, 0, NULL);
  leaf.index = 1;
  leaf.type = vec;
  IrRef br = ir_emit(f, a, &leaf, 0, NULL);
  IrNode conv = {0};
  conv.op = IR_CAUSAL_CONV;
  conv.type = vec;
  IrRef args[3] = {h, wr, br};
  IrRef next = ir_emit(f, a, &conv, 3, args);
  f->states.v[0].init = init;
  f->states.v[0].next = next;
  DiagEngine de;
  diag_init(&de, a, NULL);
  IrFunc *out = NULL;
  assert_int_equal(jacobian_jvp_cell(a, m, f, &out, &de), -1);
  assert_true(has_diag(&de, "causal_conv is a sequence-level op"));
  arena_destroy(a);
}

/* ---- kinks: the documented subgradients, exactly ---------------------------- */

/* At points where finite differences cannot judge: relu, |x| and max/min
 * at 0 and on ties, amax on a tie, gelu at 0, |z| of a complex 0. */
static void test_kinks(void **state) {
  (void)state;
  const char *src = "cell Kinks() {\n"
                    "  state h: [4] = 0\n"
                    "  state z: complex [4] = 0\n"
                    "  state r: [4] = 0\n  state a: [4] = 0\n  state g: [4] = 0\n"
                    "  state mx: [4] = 0\n  state mn: [4] = 0\n  state k: [] = 0\n"
                    "  state q: [4] = 0\n"
                    "  step {\n"
                    "    h' = h\n    z' = z\n"
                    "    r' = relu(h)\n    a' = abs(h)\n    g' = gelu(h)\n"
                    "    mx' = max(h, 0.0)\n    mn' = min(h, 0.0)\n    k' = max(h)\n"
                    "    q' = abs(z)\n"
                    "  }\n}\n";
  Compiled c;
  c.arena = arena_create();
  assert_non_null(c.arena);
  srcmgr_init(&c.sm, c.arena);
  diag_init(&c.de, c.arena, stderr);
  c.m = seq_compile_string(c.arena, &c.sm, &c.de, "kinks.seq", src, NULL);
  assert_non_null(c.m);
  const IrFunc *cell = c.m->funcs.v[c.m->entry];
  IrFunc *jvp = NULL;
  assert_int_equal(jacobian_jvp_cell(c.arena, c.m, cell, &jvp, &c.de), 0);
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, c.arena, c.m, cell, &c.de), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &c.de), 0);
  int ns = cell->states.n;
  assert_int_equal(ns, 9);
  RtTensor *s0 = arena_calloc(c.arena, (size_t)ns, sizeof *s0);
  RtTensor *ins = arena_calloc(c.arena, (size_t)ns, sizeof *ins);
  RtTensor *outs = arena_calloc(c.arena, (size_t)(2 * ns), sizeof *outs);
  assert_true(s0 && ins && outs);
  for (int k = 0; k < ns; k++) {
    s0[k] = tensor(&b, cell->states.v[k].type, 1, 0, 0);
    RtTensor ds = tensor(&b, cell->states.v[k].type, 1, 0, 0);
    ins[k] = as_step_input(&ds);
    rt_tensor_free(&ds);
  }
  const double h[4] = {0, 1, 1, -1}, dh[4] = {1, 2, 4, 8};
  const double z[8] = {0, 0, 3, 4, 0, 0, 0, 0}, dz[8] = {1, 1, 1, 0, 0, 0, 0, 0};
  for (int i = 0; i < B * 4; i++) {
    dat(&s0[0])[i] = h[i % 4];
    dat(&ins[0])[i] = dh[i % 4];
  }
  for (int i = 0; i < B * 8; i++) {
    dat(&s0[1])[i] = z[i % 8];
    dat(&ins[1])[i] = dz[i % 8];
  }
  assert_int_equal(run(&b, jvp, ins, s0, outs, NULL, &c.de), 0);
  const double Phi1 = 0.84134474606854293, phi1 = 0.24197072451914337;
  const struct {
    int state;
    double want[4];
  } cases[] = {
      {2, {0, 2, 4, 0}},  /* relu: slope 0 at 0 */
      {3, {0, 2, 4, -8}}, /* |x|: slope 0 at 0 */
      {4, {0.5, 2 * (Phi1 + phi1), 4 * (Phi1 + phi1), 8 * (1 - Phi1 - phi1)}}, /* gelu */
      {5, {0, 2, 4, 0}},   /* max(h, 0): a tie takes 0's branch */
      {6, {0, 0, 0, 8}},   /* min(h, 0): likewise */
      {8, {0, 0.6, 0, 0}}, /* |z|: re(conj(z) dz) / |z|, 0 at z = 0 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const double *got = dat(&outs[ns + cases[i].state]);
    for (int e = 0; e < 4; e++)
      if (!(fabs(got[e] - cases[i].want[e]) <= 1e-12))
        fail_msg("%s: element %d is %.17g, not %.17g", jvp->outputs.v[ns + cases[i].state].name, e,
                 got[e], cases[i].want[e]);
  }
  /* amax with two maxima: the mean of their tangents. */
  assert_true(fabs(dat(&outs[ns + 7])[0] - 3.0) <= 1e-12);
  free_all(s0, ns);
  free_all(ins, ns);
  free_all(outs, 2 * ns);
  arena_destroy(c.arena);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_finite_differences),
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_sequence_op_in_step),
      cmocka_unit_test(test_kinks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
