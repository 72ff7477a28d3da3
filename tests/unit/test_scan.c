/* test_scan.c - the parallel form of cells as sequence-level IR
 * (passes/scan.c), checked by the interpreter: every std cell and example
 * whose states all admit a scan is rewritten under --strategy=scan, and the
 * interpreter runs the rewritten module and the source on the same random
 * batch (lengths, initial states) - outputs and final states must agree, in
 * float64 (to rounding: the rewrite only regroups a * h + b) and float32;
 * the same for --strategy=chunked on every cell with a matrix state, whose
 * readouts become linattn ops (passes/chunk.c), or delta (dplr) ops for the
 * delta rule (passes/delta.c; RWKV-7's generalized rule), which has no scan,
 * or plstm ops for a small dense transition (passes/transition.c).
 * Which cells must have the form is a table written from their classes
 * (docs/stdlib.md), not from the pass's output. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/pipeline.h"
#include "runtime/rt_cpu.h"

typedef struct Case {
  const char *file, *dims;
  const char *text; /* the source, when not the file (then file names it) */
  int parallel;     /* the entry (or its layer) must be rewritten under scan */
  int chunked;      /* ... and under chunked, with a chunked form (a matrix state) */
} Case;

static const Case CASES[] = {
    {"examples/lstm.seq", "I=3,H=4", NULL, 0, 0},
    {"examples/mingru.seq", "I=3,H=4", NULL, 1, 0},
    {"examples/lru.seq", "H=3,N=4", NULL, 1, 0},
    {"examples/s4d.seq", "H=3,N=4", NULL, 1, 0},
    {"examples/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2", NULL, 1, 0},
    {"examples/linear_attention.seq", "I=3,Dk=4,Dv=5", NULL, 1, 1},
    {"examples/mlstm.seq", "I=3,D=4", NULL, 1, 1},
    {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2", NULL, 1, 0},
    {"stdlib/mingru.seq", "I=3,H=4", NULL, 1, 0},
    {"stdlib/minlstm.seq", "I=3,H=4", NULL, 1, 0},
    {"stdlib/lru.seq", "H=3,N=4", NULL, 1, 0},
    {"stdlib/s4d.seq", "H=3,N=4", NULL, 1, 0},
    {"stdlib/s5.seq", "H=3,P=4", NULL, 1, 0},
    {"stdlib/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2", NULL, 1, 0},
    {"stdlib/linear_attention.seq", "I=3,NH=2,Dk=4,Dv=5", NULL, 1, 1},
    {"stdlib/retnet.seq", "I=3,NH=2,P=2,Dv=5", NULL, 1, 1},
    {"stdlib/gla.seq", "I=3,NH=2,Dk=4,Dv=5,R=2", NULL, 1, 1},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4", NULL, 1, 1},
    {"stdlib/mamba.seq", "d_model=4,d_inner=8,d_state=3,d_conv=4,dt_rank=2", NULL, 1, 0},
    {"stdlib/mamba2.seq", "d_model=4,ngroups=2,hpg=2,headdim=2,d_state=3,d_conv=4", NULL, 1, 1},
    {"stdlib/gam.seq", "D=3,Mem=4,K=3", NULL, 1, 0},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3", NULL, 0, 1},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2", NULL, 0, 1},
    {"tests/data/models/plstm_heads.seq", "I=3,NH=2,J=3,Dk=4,Dv=5", NULL, 0, 1},
    {"stdlib/slstm.seq", "I=3,H=4", NULL, 0, 0},
    {"stdlib/paralstm.seq", "I=3,H=4", NULL, 0, 0},
    {"stdlib/gru.seq", "I=3,H=4", NULL, 0, 0},
    {"stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", NULL, 0, 1},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", NULL, 0, 1},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5", NULL, 0, 1},
};

enum { B = 3 };

static uint64_t rng = 0x243f6a8885a308d3ull;
static double urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static int parse_dims(Arena *a, const char *spec, const char **names, int64_t *values) {
  int n = 0;
  char *s = arena_strdup(a, spec);
  for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  return n;
}

static double max_rel_err(const RtTensor *x, const RtTensor *y) {
  assert_int_equal(rt_numel(x), rt_numel(y));
  double e = 0, scale = 1e-30;
  for (int64_t k = 0; k < rt_numel(x); k++) {
    double u = x->dtype == RT_F64 ? ((double *)x->data)[k] : ((float *)x->data)[k];
    double v = y->dtype == RT_F64 ? ((double *)y->data)[k] : ((float *)y->data)[k];
    if (isnan(u) != isnan(v)) return INFINITY;
    if (!isnan(u) && fabs(u - v) > e) e = fabs(u - v);
    if (fabs(v) > scale) scale = fabs(v);
  }
  return e / (scale > 1 ? scale : 1);
}

/* Whether any function of the parallel module is a rewritten cell (a model
 * with states). */
static int rewritten(const IrModule *m) {
  for (int i = 0; i < m->funcs.n; i++)
    if (m->funcs.v[i]->kind == IR_FN_MODEL && m->funcs.v[i]->states.n > 0) return 1;
  return 0;
}

static int has_op(const IrModule *m, IrOp op) {
  for (int i = 0; i < m->funcs.n; i++)
    for (int r = 0; r < m->funcs.v[i]->nodes.n; r++)
      if (m->funcs.v[i]->nodes.v[r].op == op) return 1;
  return 0;
}

static void run_case(const Case *c, const char *form, int parallel) {
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, stderr);
  Pipeline p;
  pipeline_init(&p, a, &sm, &de);
  const char *names[16];
  int64_t values[16];
  StrategyRequest req;
  char err[256];
  assert_int_equal(strategy_parse(a, form, &req, err, sizeof err), 0);
  PipeOptions po = {0};
  if (c->text) {
    po.name = c->file;
    po.text = c->text;
  } else {
    po.path = tu_src(c->file);
  }
  po.ndims = parse_dims(a, c->dims, names, values);
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = &req;
  po.goal = PIPE_FORMS;
  DiagEngine quiet;
  diag_init(&quiet, a, NULL);
  p.de = parallel ? &de : &quiet;
  int rc = pipeline_run(&p, &po);
  if (!parallel) {
    assert_true(rc != 0 || !rewritten(p.parallel));
    arena_destroy(a);
    return;
  }
  if (rc) fail_msg("%s does not compile under --strategy=%s", c->file, form);
  if (!rewritten(p.parallel)) fail_msg("%s has no parallel form", c->file);
  if (strcmp(form, "chunked") == 0 && !has_op(p.parallel, IR_LINATTN_STATE) &&
      !has_op(p.parallel, IR_DELTA_STATE) && !has_op(p.parallel, IR_DPLR_STATE) &&
      !has_op(p.parallel, IR_PLSTM_STATE))
    fail_msg("%s has no chunked form", c->file);
  IrBinding b = p.bind;
  assert_int_equal(ir_binding_random(&b, 11, &de), 0);
  const IrFunc *root = b.root;
  int ni = root->inputs.n, no = root->outputs.n, ns = b.flat.states.n;
  static const int64_t Ts[] = {1, 2, 7, 33};
  for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
    int64_t T = Ts[ti];
    RtTensor *ins = arena_calloc(a, (size_t)ni + 1, sizeof *ins);
    RtTensor *sin = arena_calloc(a, (size_t)ns + 1, sizeof *sin);
    RtError e;
    for (int i = 0; i < ni; i++) {
      IrType t = root->inputs.v[i].type;
      int64_t shape[RT_MAX_RANK] = {B, T};
      assert_int_equal(ir_binding_shape(&b, t, shape + 2), 0);
      int nd = t.rank + 2;
      RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F64;
      assert_int_equal(rt_tensor_alloc(&ins[i], dt, nd, shape, &e), 0);
      for (int64_t k = 0; k < rt_numel(&ins[i]); k++) {
        if (dt == RT_I64)
          ((int64_t *)ins[i].data)[k] = k % 5;
        else
          ((double *)ins[i].data)[k] = urand();
      }
    }
    for (int s = 0; s < ns; s++) {
      const IrFlatVar *v = &b.flat.states.v[s];
      int64_t shape[RT_MAX_RANK] = {B};
      assert_int_equal(ir_binding_shape(&b, v->type, shape + 1), 0);
      int rank = v->type.rank + 1;
      if (v->type.elem == IR_COMPLEX) shape[rank++] = 2;
      assert_int_equal(rt_tensor_alloc(&sin[s], RT_F64, rank, shape, &e), 0);
      for (int64_t k = 0; k < rt_numel(&sin[s]); k++) ((double *)sin[s].data)[k] = 0.5 * urand();
    }
    int64_t lengths[B] = {T, T / 2, T > 1 ? T - 1 : 0};
    for (int variant = 0; variant < 4; variant++) {
      int use_len = variant & 1, use_state = variant & 2;
      for (int f64 = 0; f64 < 2; f64++) {
        InterpOptions io = {.f64 = f64};
        RtTensor o1[8], o2[8], s1[16], s2[16];
        assert_true(no <= 8 && ns <= 16);
        IrBinding bs = b, bp = b;
        bp.mod = p.parallel;
        bp.root = p.parallel->funcs.v[p.parallel->entry];
        assert_int_equal(interp_run(&bs, B, T, ins, use_len ? lengths : NULL,
                                    use_state ? sin : NULL, o1, s1, &io, &de),
                         0);
        if (interp_run(&bp, B, T, ins, use_len ? lengths : NULL, use_state ? sin : NULL, o2, s2,
                       &io, &de))
          fail_msg("%s: the %s form does not run in the interpreter", c->file, form);
        double tol = f64 ? 1e-9 : 1e-5;
        for (int k = 0; k < no; k++) {
          double d = max_rel_err(&o2[k], &o1[k]);
          if (!(d <= tol))
            fail_msg("%s --strategy=%s: output %s differs by %g (T=%lld len=%d state=%d f64=%d)",
                     c->file, form, root->outputs.v[k].name, d, (long long)T, use_len, use_state,
                     f64);
          rt_tensor_free(&o1[k]);
          rt_tensor_free(&o2[k]);
        }
        for (int k = 0; k < ns; k++) {
          double d = max_rel_err(&s2[k], &s1[k]);
          if (!(d <= tol))
            fail_msg("%s: final state %s differs by %g (T=%lld len=%d state=%d f64=%d)", c->file,
                     b.flat.states.v[k].name, d, (long long)T, use_len, use_state, f64);
          rt_tensor_free(&s1[k]);
          rt_tensor_free(&s2[k]);
        }
      }
    }
    for (int i = 0; i < ni; i++) rt_tensor_free(&ins[i]);
    for (int s = 0; s < ns; s++) rt_tensor_free(&sin[s]);
  }
  for (int i = 0; i < b.flat.params.n; i++) rt_tensor_free(&b.weights[i]);
  pipeline_release(&p);
  arena_destroy(a);
}

static void test_interpreter_agrees(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
    run_case(&CASES[k], "scan", CASES[k].parallel);
    if (CASES[k].chunked) run_case(&CASES[k], "chunked", 1);
  }
}

/* The delta rule written other ways than the std cells do: each must be
 * found and agree with the step in the interpreter. */
static const Case DELTA_SPELLINGS[] = {
    {"spread.seq", "K=4,V=3", /* S + (v - S k) (b k)^T, the write first */
     "cell D(K, V) {\n  input x: [K]\n  input u: [V]\n  input z: []\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    let k = l2norm(x)\n    let b = sigmoid(z)\n"
     "    S' = S + outer(u - S @ k, k * b)\n    y = S' @ k\n  }\n}\n",
     0, 1},
    {"gated.seq", "H=2,K=4,V=3", /* exp gate per head, beta on the left, minus a negation */
     "cell G(H, K, V) {\n  input x: [H, K]\n  input u: [H, V]\n  input z: [H]\n"
     "  state S: [H, V, K] = 0\n  output y: [H, V]\n  step {\n    let k = l2norm(x)\n"
     "    let g = exp(-softplus(z))\n    let b = sigmoid(z)\n"
     "    let P = g[:, None, None] * S\n"
     "    S' = P - b[:, None, None] * (sum(P * k[:, None, :], axis=-1) - u)[:, :, None] * k[:, "
     "None, :]\n"
     "    y = sum(S' * k[:, None, :], axis=-1)\n  }\n}\n",
     0, 1},
    /* The generalized rule S diag(d) + (S a) b^T + v k^T (RWKV-7's, the dplr
     * ops): two different vectors in the low-rank term, a decay per key, a
     * write that is not beta v k^T. */
    {"two_vectors.seq", "K=4,V=3", /* (S k) q^T */
     "cell F(K, V) {\n  input x: [K]\n  input q: [K]\n  input u: [V]\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    S' = S - 0.5 * outer(S @ x - u, q)\n    y = S' @ q\n  }\n}\n",
     0, 1},
    {"key_decay.seq", "H=2,K=4,V=3", /* a decay per key and heads */
     "cell F(H, K, V) {\n  input x: [H, K]\n  input w: [H, K]\n  input u: [H, V]\n"
     "  state S: [H, V, K] = 0\n  output y: [H, V]\n  step {\n    let k = l2norm(x)\n"
     "    S' = S * exp(-softplus(w))[:, None, :] - sum(S * k[:, None, :], axis=-1)[:, :, None] * "
     "k[:, None, :] + u[:, :, None] * k[:, None, :]\n"
     "    y = sum(S' * x[:, None, :], axis=-1)\n  }\n}\n",
     0, 1},
    {"unscaled_write.seq", "K=4,V=3", /* beta on the transition only */
     "cell F(K, V) {\n  input x: [K]\n  input u: [V]\n  input z: []\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    let b = sigmoid(z)\n"
     "    S' = S - b * outer(S @ x, x) + outer(u, x)\n    y = S' @ x\n  }\n}\n",
     0, 1},
};

/* Look-alikes of the delta rule that are not it: each must be refused
 * with its reason, never rewritten. */
typedef struct Fake {
  const char *name, *text, *why;
} Fake;

static const Fake DELTA_FAKES[] = {
    {"negative_gate.seq",
     "cell F(K, V) {\n  input x: [K]\n  input u: [V]\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    S' = -(S - outer(S @ x - u, x))\n    y = S' @ x\n  }\n}\n",
     "negative decay"},
    {"value_decay.seq", /* a decay along the value axis: S diag(w) is per key only */
     "cell F(K, V) {\n  input x: [K]\n  input w: [V]\n  input u: [V]\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    S' = S * exp(w)[:, None] - outer(S @ x - u, x)\n"
     "    y = S' @ x\n  }\n}\n",
     "value axis"},
    {"two_terms.seq", /* rank two: (S x) x^T and (S q) q^T */
     "cell F(K, V) {\n  input x: [K]\n  input q: [K]\n  input u: [V]\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  step {\n    S' = S - outer(S @ x - u, x) - outer(S @ q, q)\n"
     "    y = S' @ x\n  }\n}\n",
     "not one low-rank term"},
    {"output_state.seq", /* the state itself is an output: the form never forms it per step
                            (compiled, it crashed before it was refused) */
     "cell F(K, V) {\n  input x: [K]\n  input u: [V]\n  state S: [V, K] = 0\n"
     "  output y: [V]\n  output z: [V, K]\n  step {\n"
     "    S' = S - 0.5 * outer(S @ x - u, x)\n    y = S' @ x\n    z = S'\n  }\n}\n",
     "an output is the state itself"},
    {"two_writes.seq", /* rank-two writes: u x^T and u2 q^T */
     "cell F(K, V) {\n  input x: [K]\n  input q: [K]\n  input u: [V]\n  input u2: [V]\n"
     "  state S: [V, K] = 0\n  output y: [V]\n  step {\n"
     "    S' = S - outer(S @ x - u, x) + outer(u2, q)\n    y = S' @ x\n  }\n}\n",
     "not one rank-one write"},
};

/* Small dense transitions (pLSTM's form, passes/transition.c) spelled
 * otherwise: a diagonal term beside the mixing, the state itself (the
 * identity), marks of 1 and a negated write. */
static const Case TRANSITION_SPELLINGS[] = {
    {"diag.seq", "J=2,V=3,K=4",
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = 0.5 * C + sum(t[:, :, None, None] * C, axis=1) + outer(u, x)\n"
     "    y = sum(C, axis=0) @ x\n  }\n}\n",
     0, 1},
    {"identity.seq", "J=3,V=3,K=4",
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J]\n  input g: [J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = C - 0.5 * sum(t[:, :, None, None] * C, axis=1) - sigmoid(g)[:, None, None] * "
     "outer(u, x)\n"
     "    y = sum(sum(g[:, None, None] * C', axis=0) * x[None, :], axis=-1)\n  }\n}\n",
     0, 1},
};

/* Look-alikes of a small dense transition that the chunked form cannot
 * take: each must be refused with its reason. */
static const Fake TRANSITION_FAKES[] = {
    {"two_writes.seq", /* rank two per j: u x^T and u^2 x^2^T */
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = sum(t[:, :, None, None] * C, axis=1) + outer(u, x) + outer(u * u, x * x)\n"
     "    y = sum(C, axis=0) @ x\n  }\n}\n",
     "two writes"},
    {"value_transition.seq", /* the mixing differs per row of V */
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J, V]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = sum(t[:, :, :, None] * C, axis=1) + outer(u, x)\n"
     "    y = sum(C, axis=0) @ x\n  }\n}\n",
     "varies along V or K"},
    {"full_write.seq", /* a write of full rank per j */
     "cell F(J, V, K) {\n  input x: [K]\n  input w: [J, V, K]\n  input t: [J, J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = sum(t[:, :, None, None] * C, axis=1) + w * exp(w)\n"
     "    y = sum(C, axis=0) @ x\n  }\n}\n",
     "not a product of factors along J, V and K"},
    {"output_state.seq", /* the state itself is an output */
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  output z: [J, V, K]\n  step {\n"
     "    C' = sum(t[:, :, None, None] * C, axis=1) + outer(u, x)\n"
     "    y = sum(C', axis=0) @ x\n    z = C'\n  }\n}\n",
     "an output is the state itself"},
    {"indexed_read.seq", /* one block of the state read alone */
     "cell F(J, V, K) {\n  input x: [K]\n  input u: [V]\n  input t: [J, J]\n"
     "  state C: [J, V, K] = 0\n  output y: [V]\n  step {\n"
     "    C' = sum(t[:, :, None, None] * C, axis=1) + outer(u, x)\n"
     "    y = C[0] @ x\n  }\n}\n",
     "read other than through a mark over J"},
};

static void test_delta_spellings(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof DELTA_SPELLINGS / sizeof DELTA_SPELLINGS[0]; k++)
    run_case(&DELTA_SPELLINGS[k], "chunked", 1);
}

/* The chunked form of `text` (dims `dims`) must be refused, with a
 * diagnostic saying `why`. */
static void expect_refused(const Fake *f, const char *dims) {
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, NULL);
  Pipeline p;
  pipeline_init(&p, a, &sm, &de);
  StrategyRequest req;
  char err[256];
  assert_int_equal(strategy_parse(a, "chunked", &req, err, sizeof err), 0);
  const char *names[8];
  int64_t values[8];
  PipeOptions po = {0};
  po.name = f->name;
  po.text = f->text;
  po.ndims = parse_dims(a, dims, names, values);
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = &req;
  po.goal = PIPE_FORMS;
  int rc = pipeline_run(&p, &po);
  int found = 0;
  for (int i = 0; i < de.diags.n; i++) found |= strstr(de.diags.v[i].message, f->why) != NULL;
  if (rc == 0 || !found) {
    for (int i = 0; i < de.diags.n; i++) print_error("%s\n", de.diags.v[i].message);
    fail_msg("%s: %s, not refused with '%s'", f->name, rc == 0 ? "rewritten" : "refused otherwise",
             f->why);
  }
  pipeline_release(&p);
  arena_destroy(a);
}

static void test_delta_fakes(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof DELTA_FAKES / sizeof DELTA_FAKES[0]; k++)
    expect_refused(&DELTA_FAKES[k], "K=4,V=3");
}

static void test_transition_spellings(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof TRANSITION_SPELLINGS / sizeof TRANSITION_SPELLINGS[0]; k++)
    run_case(&TRANSITION_SPELLINGS[k], "chunked", 1);
}

static void test_transition_fakes(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof TRANSITION_FAKES / sizeof TRANSITION_FAKES[0]; k++)
    expect_refused(&TRANSITION_FAKES[k], "J=2,V=3,K=4");
}

/* ---- Newton (passes/newton.c, interp.c newton_solve) ------------------------- */

/* A cell whose Newton iteration diverges: the logistic map at r = 3.9 is
 * chaotic, so the linearized recurrence multiplies errors by up to 3.9 per
 * step; the step loop stays in [0, 1]. */
static const char LOGISTIC[] =
    "cell Logistic(H) {\n  input x: [H]\n  state h: [H] = 0.3\n  output y: [H]\n"
    "  step {\n    h' = 3.9 * h * (1 - h) + 0 * x\n    y = h'\n  }\n}\n";
/* ParaGRU's step run backwards and forwards in one model. */
static const char REVERSED_GRU[] =
    "import \"std/paragru.seq\"\n"
    "model R(I, H) {\n  input x: [I]\n  output y: [2*H]\n"
    "  layer a = ParaGRU(I, H) suffix \"_a\"\n  layer b = reverse ParaGRU(I, H) suffix \"_b\"\n"
    "  forward {\n    y = concat(a(x), b(x))\n  }\n}\n";

typedef struct NewtonRun {
  double err;              /* largest relative difference from the step loop, outputs and states */
  InterpNewtonStats stats; /* of the Newton form's run */
  int warned;              /* the run warned that a solve fell back */
} NewtonRun;

/* Runs `file` (or `text`) under --strategy=newton in the interpreter against
 * its step loop over a batch of nb sequences of T tokens. */
static NewtonRun newton_run(const char *file, const char *text, const char *dims, int64_t nb,
                            int64_t T, int lengths, int state, int f64, NewtonOptions no) {
  NewtonRun out;
  memset(&out, 0, sizeof out);
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, NULL);
  Pipeline p;
  pipeline_init(&p, a, &sm, &de);
  StrategyRequest req;
  char err[256];
  assert_int_equal(strategy_parse(a, "newton", &req, err, sizeof err), 0);
  req.newton = no;
  const char *names[8];
  int64_t values[8];
  PipeOptions po = {0};
  if (text) {
    po.name = file;
    po.text = text;
  } else {
    po.path = tu_src(file);
  }
  po.ndims = parse_dims(a, dims, names, values);
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = &req;
  po.goal = PIPE_FORMS;
  if (pipeline_run(&p, &po)) {
    for (int i = 0; i < de.diags.n; i++) diag_format(stderr, &de.diags.v[i]);
    fail_msg("%s does not compile under --strategy=newton", file);
  }
  if (!rewritten(p.parallel)) fail_msg("%s has no Newton form", file);
  IrBinding b = p.bind;
  assert_int_equal(ir_binding_random(&b, 5, &de), 0);
  const IrFunc *root = b.root;
  int ni = root->inputs.n, no_ = root->outputs.n, ns = b.flat.states.n;
  assert_true(no_ <= 8 && ns <= 8);
  RtTensor ins[8], sin[8], o1[8], o2[8], s1[8], s2[8];
  RtError e;
  for (int i = 0; i < ni; i++) {
    int64_t shape[RT_MAX_RANK] = {nb, T};
    assert_int_equal(ir_binding_shape(&b, root->inputs.v[i].type, shape + 2), 0);
    assert_int_equal(rt_tensor_alloc(&ins[i], RT_F64, root->inputs.v[i].type.rank + 2, shape, &e),
                     0);
    for (int64_t k = 0; k < rt_numel(&ins[i]); k++) ((double *)ins[i].data)[k] = urand();
  }
  for (int s = 0; s < ns; s++) {
    int64_t shape[RT_MAX_RANK] = {nb};
    assert_int_equal(ir_binding_shape(&b, b.flat.states.v[s].type, shape + 1), 0);
    assert_int_equal(rt_tensor_alloc(&sin[s], RT_F64, b.flat.states.v[s].type.rank + 1, shape, &e),
                     0);
    for (int64_t k = 0; k < rt_numel(&sin[s]); k++) ((double *)sin[s].data)[k] = 0.5 * urand();
  }
  int64_t *len = arena_calloc(a, (size_t)nb, sizeof *len);
  for (int64_t i = 0; i < nb; i++) len[i] = i == 0 ? T : (T * (i + 1)) / (nb + 1);
  InterpOptions io = {.f64 = f64};
  assert_int_equal(
      interp_run(&b, nb, T, ins, lengths ? len : NULL, state ? sin : NULL, o1, s1, &io, &de), 0);
  IrBinding bp = b;
  bp.mod = p.parallel;
  bp.root = p.parallel->funcs.v[p.parallel->entry];
  io.newton = &out.stats;
  int nd = de.diags.n;
  if (interp_run(&bp, nb, T, ins, lengths ? len : NULL, state ? sin : NULL, o2, s2, &io, &de))
    fail_msg("%s: the Newton form does not run in the interpreter", file);
  for (int i = nd; i < de.diags.n; i++)
    out.warned |= de.diags.v[i].severity == DIAG_WARNING &&
                  strstr(de.diags.v[i].message, "Newton did not converge") != NULL;
  for (int k = 0; k < no_; k++) {
    double d = max_rel_err(&o2[k], &o1[k]);
    if (!(d <= out.err)) out.err = d;
    rt_tensor_free(&o1[k]);
    rt_tensor_free(&o2[k]);
  }
  for (int k = 0; k < ns; k++) {
    double d = max_rel_err(&s2[k], &s1[k]);
    if (!(d <= out.err)) out.err = d;
    rt_tensor_free(&s1[k]);
    rt_tensor_free(&s2[k]);
  }
  for (int i = 0; i < ni; i++) rt_tensor_free(&ins[i]);
  for (int s = 0; s < ns; s++) rt_tensor_free(&sin[s]);
  for (int i = 0; i < b.flat.params.n; i++) rt_tensor_free(&b.weights[i]);
  pipeline_release(&p);
  arena_destroy(a);
  return out;
}

static const struct {
  const char *file, *text, *dims;
} NEWTON_CASES[] = {
    {"stdlib/paragru.seq", NULL, "I=3,H=4"},
    {"stdlib/paralstm.seq", NULL, "I=3,H=4"},
    {"reversed_gru.seq", REVERSED_GRU, "I=3,H=4"},
    /* Dense Jacobians: quasi-Newton with their diagonals. */
    {"stdlib/gru.seq", NULL, "I=3,H=4"},
    {"stdlib/lstm.seq", NULL, "I=3,H=4"},
    {"stdlib/rnn.seq", NULL, "I=3,H=4"},
    {"stdlib/slstm.seq", NULL, "I=3,H=4"},
};

/* NEWTON_CASES[c0..] over every T of Ts[0..nt), with and without lengths
 * and initial states, in float32 (options f32) and float64 (options f64):
 * converged, and equal to the step loop within 1e-5 and 1e-9 of the
 * values' scale. */
static void check_agrees(size_t c0, const int64_t *Ts, size_t nt, NewtonOptions f32,
                         NewtonOptions f64o) {
  for (size_t c = c0; c < sizeof NEWTON_CASES / sizeof NEWTON_CASES[0]; c++)
    for (size_t ti = 0; ti < nt; ti++)
      for (int variant = 0; variant < 4; variant++)
        for (int f64 = 0; f64 < 2; f64++) {
          NewtonRun r = newton_run(NEWTON_CASES[c].file, NEWTON_CASES[c].text, NEWTON_CASES[c].dims,
                                   3, Ts[ti], variant & 1, variant & 2, f64, f64 ? f64o : f32);
          double tol = f64 ? 1e-9 : 1e-5;
          if (!(r.err <= tol) || r.stats.fallbacks || r.warned)
            fail_msg("%s%s T=%lld lengths=%d state=%d f64=%d: differs by %g, %lld fallbacks",
                     NEWTON_CASES[c].file, f32.dense ? " dense" : "", (long long)Ts[ti],
                     variant & 1, variant & 2, f64, r.err, (long long)r.stats.fallbacks);
        }
}

/* Converged Newton solves agree with the step loop: float32 within 1e-5 of
 * the values' scale at the default tolerances, float64 within 1e-9 at
 * rtol 1e-11; with lengths, initial states and reversed layers. */
static void test_newton_agrees(void **st) {
  (void)st;
  static const int64_t Ts[] = {1, 2, 7, 33, 500};
  NewtonOptions dflt = {0}, tight = {1e-11, 1e-13, 200, 0, 0};
  check_agrees(0, Ts, sizeof Ts / sizeof Ts[0], dflt, tight);
}

/* Long sequences, and how many iterations the std cells take with random
 * weights of the scale of trained ones (recurrent gains below 1), at rtol
 * 1e-5; the distribution is printed. Exact Newton (diagonal and
 * block-diagonal Jacobians) takes at most 10; quasi-Newton (dense ones,
 * linear convergence) more, but none falls back. */
static void test_newton_long(void **st) {
  (void)st;
  NewtonOptions dflt = {0};
  NewtonRun r = newton_run("stdlib/paragru.seq", NULL, "I=3,H=4", 1, 65536, 0, 1, 0, dflt);
  assert_true(r.err <= 1e-5);
  assert_int_equal(r.stats.fallbacks, 0);
  const char *cells[] = {"stdlib/paragru.seq", "stdlib/paralstm.seq", "stdlib/gru.seq",
                         "stdlib/lstm.seq",    "stdlib/rnn.seq",      "stdlib/slstm.seq"};
  for (int c = 0; c < 6; c++) {
    r = newton_run(cells[c], NULL, "I=16,H=16", 4, 4096, 1, 1, 0, dflt);
    printf("%s, T=4096, 4 examples: iterations", cells[c]);
    for (int i = 0; i < INTERP_NEWTON_HIST; i++)
      if (r.stats.hist[i]) printf(" %d: %lld", i, (long long)r.stats.hist[i]);
    printf(", halved steps %lld, error %.3g\n", (long long)r.stats.damped, r.err);
    assert_int_equal(r.stats.fallbacks, 0);
    assert_true(r.stats.max_iter <= (c < 2 ? 10 : NEWTON_MAX_ITER));
    assert_true(r.err <= 1e-5);
  }
}

/* Exact Newton with a dense Jacobian (IrNewton.dense: the step applied to
 * unit tangents forms J) agrees with the step loop like the other forms,
 * and converges quadratically: in far fewer iterations than quasi-Newton. */
static void test_newton_dense(void **st) {
  (void)st;
  static const int64_t Ts[] = {1, 7, 33, 200};
  NewtonOptions dense = {0, 0, 0, 0, 1}, tight = {1e-11, 1e-13, 200, 0, 1};
  check_agrees(3, Ts, sizeof Ts / sizeof Ts[0], dense, tight); /* the dense ones */
  const char *cells[] = {"stdlib/gru.seq", "stdlib/lstm.seq", "stdlib/rnn.seq", "stdlib/slstm.seq"};
  for (int c = 0; c < 4; c++) {
    NewtonRun r = newton_run(cells[c], NULL, "I=16,H=16", 2, 512, 1, 1, 0, dense);
    printf("%s dense, T=512, 2 examples: iterations", cells[c]);
    for (int i = 0; i < INTERP_NEWTON_HIST; i++)
      if (r.stats.hist[i]) printf(" %d: %lld", i, (long long)r.stats.hist[i]);
    printf(", halved steps %lld, error %.3g\n", (long long)r.stats.damped, r.err);
    assert_int_equal(r.stats.fallbacks, 0);
    assert_true(r.stats.max_iter <= 10);
    assert_true(r.err <= 1e-5);
  }
}

/* Windows (IrNewton.window): each sequence solved a few steps at a time,
 * every window from the last value of the one before, agrees with the step
 * loop as the whole-sequence solve does, one solve per example and window;
 * a window that cannot converge falls back alone, warned. The runtime's
 * automatic window keeps the solve within its budget. */
static void test_newton_windows(void **st) {
  (void)st;
  static const int64_t Ts[] = {7, 33, 500};
  static const int64_t wins[] = {5, 64};
  for (size_t c = 0; c < 4; c++)
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
      for (size_t wi = 0; wi < sizeof wins / sizeof wins[0]; wi++)
        for (int variant = 0; variant < 4; variant++) {
          NewtonOptions no = {0, 0, 0, wins[wi], 0};
          int64_t T = Ts[ti], win = wins[wi], nb = 3, solves = 0;
          for (int64_t i = 0; i < nb; i++) {
            int64_t len = (variant & 1) && i ? (T * (i + 1)) / (nb + 1) : T;
            solves += (len + win - 1) / win;
          }
          if (c == 2) solves *= 2; /* two layers */
          NewtonRun r = newton_run(NEWTON_CASES[c].file, NEWTON_CASES[c].text, NEWTON_CASES[c].dims,
                                   nb, T, variant & 1, variant & 2, 0, no);
          if (!(r.err <= 1e-5) || r.stats.fallbacks || r.warned || r.stats.solves != solves)
            fail_msg("%s T=%lld window %lld lengths=%d state=%d: differs by %g, %lld of %lld "
                     "solves (%lld expected) fell back",
                     NEWTON_CASES[c].file, (long long)T, (long long)win, variant & 1, variant & 2,
                     r.err, (long long)r.stats.fallbacks, (long long)r.stats.solves,
                     (long long)solves);
        }
  /* The logistic map diverges in every window; each falls back alone. */
  NewtonOptions w20 = {0, 0, 0, 20, 0};
  NewtonRun r = newton_run("logistic.seq", LOGISTIC, "H=5", 3, 100, 1, 0, 0, w20);
  assert_int_equal(r.stats.solves, 5 + 3 + 4); /* lengths 100, 50, 75 */
  assert_int_equal(r.stats.fallbacks, r.stats.solves);
  assert_true(r.warned);
  assert_true(r.err == 0);
  /* The runtime's window: the whole sequence while its buffers fit the
   * budget, else as many steps as do. */
  assert_int_equal(rt_cpu_newton_window(4, 4096, 1, 16, 0, 0), 4096);
  int64_t tw = rt_cpu_newton_window(1, 65536, 2, 256, 0, 0);
  assert_true(tw < 65536 && tw >= RT_NEWTON_MIN_WINDOW);
  assert_true(tw * (5 * 2 + 2 * 2) * 256 <= RT_NEWTON_BUDGET);
  assert_int_equal(rt_cpu_newton_window(1 << 20, 100, 4, 4096, 0, 0), RT_NEWTON_MIN_WINDOW);
  assert_int_equal(rt_cpu_newton_window(2, 100, 1, 16, 0, 7), 7);
  assert_int_equal(rt_cpu_newton_window(2, 100, 1, 16, 0, 700), 100);
  /* A window asked for is a most: a dense Jacobian's stays within budget. */
  tw = rt_cpu_newton_window(1, 65536, 1, 256, 1, 65536);
  assert_true(tw < 65536 && tw * (256 * 256 + 7 * 256) <= RT_NEWTON_BUDGET);
}

/* A solve that cannot converge is never silent: it falls back to the step
 * loop (whose values it then has exactly) and warns, every time. */
static void test_newton_fallback(void **st) {
  (void)st;
  NewtonOptions dflt = {0}, one = {0, 0, 1, 0, 0};
  for (int64_t T = 50; T <= 400; T *= 2) {
    NewtonRun r = newton_run("logistic.seq", LOGISTIC, "H=5", 3, T, 1, 0, 0, dflt);
    assert_int_equal(r.stats.solves, 3);
    assert_int_equal(r.stats.fallbacks, 3);
    assert_true(r.warned);
    assert_true(r.err == 0);
  }
  /* An iteration cap below what a sequence needs. (The step of the
   * rewritten cell sums B x as a matrix product, the source as a sum of a
   * broadcast: equal up to the order of the additions.) */
  NewtonRun r = newton_run("stdlib/paragru.seq", NULL, "I=3,H=4", 2, 300, 0, 1, 0, one);
  assert_int_equal(r.stats.fallbacks, 2);
  assert_true(r.warned);
  if (!(r.err <= 1e-6)) fail_msg("the fallback differs from the step loop by %g", r.err);
  /* Steps that passed the last test are kept: after k exact Newton steps
   * the first k are exact, and the first k - 1 did not move in the last one
   * (so passed its test): the step loop runs from step k - 1 or later. */
  NewtonOptions three = {0, 0, 3, 0, 0};
  r = newton_run("stdlib/paragru.seq", NULL, "I=3,H=4", 2, 300, 0, 1, 0, three);
  assert_int_equal(r.stats.fallbacks, 2);
  if (!(r.stats.fallback_steps > 0 && r.stats.fallback_steps <= 2 * (300 - 2)))
    fail_msg("the fallbacks ran %lld steps of 600 (the first 2 of each passed)",
             (long long)r.stats.fallback_steps);
  if (!(r.err <= 1e-6)) fail_msg("the partial fallback differs from the step loop by %g", r.err);
}

/* The form is named in errors where it does not apply. */
static void test_newton_refused(void **st) {
  (void)st;
  const char *dir = tu_tmpdir();
  char cmd[1024];
  /* A product of a product: the diagonal of the Jacobian cannot be
   * followed elementwise. */
  char path[512];
  snprintf(path, sizeof path, "%s/deep.seq", dir);
  assert_int_equal(tu_write_file(path, "cell Deep(H) {\n  param W1: [H, H]\n  param W2: [H, H]\n"
                                       "  input x: [H]\n  state h: [H] = 0\n  output y: [H]\n"
                                       "  step {\n    h' = tanh(W2 @ tanh(W1 @ h) + x)\n"
                                       "    y = h'\n  }\n}\n"),
                   0);
  snprintf(cmd, sizeof cmd, "--report %s --dims H=4 --strategy=h=newton", path);
  tu_expect_seqc(dir, cmd, 1, "cannot be followed through this matmul");
  snprintf(cmd, sizeof cmd, "--report %s --dims I=3,H=4 --strategy=h=newton",
           tu_src("stdlib/mingru.seq"));
  tu_expect_seqc(dir, cmd, 1, "which has no newton form");
}

/* auto takes the Newton form where the cost model says it wins: with many
 * more threads than examples (the step loop splits only the batch), not
 * with two threads and eight examples; --report says which and why. */
static void test_newton_auto(void **st) {
  (void)st;
  const char *dir = tu_tmpdir();
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "--report %s --dims I=16,H=16 --threads 64 --batch 1",
           tu_src("stdlib/paragru.seq"));
  tu_expect_seqc(dir, cmd, 0, "state h: newton (auto: the cell's recurrences in parallel forms");
  snprintf(cmd, sizeof cmd, "--report %s --dims I=16,H=16 --threads 64 --batch 1",
           tu_src("stdlib/gru.seq"));
  tu_expect_seqc(dir, cmd, 0, "state h: newton (auto:");
  snprintf(cmd, sizeof cmd, "--report %s --dims I=16,H=16 --threads 2 --batch 8",
           tu_src("stdlib/paragru.seq"));
  tu_expect_seqc(dir, cmd, 0, "pays only with more than 6 times as many threads as examples");
  snprintf(cmd, sizeof cmd, "--report %s --dims I=16,H=16 --threads 4 --batch 1",
           tu_src("stdlib/gru.seq"));
  tu_expect_seqc(dir, cmd, 0, "about 13 times per token (quasi-Newton)");
}

/* Compiled code tells its caller too: the CLI warns, and its counts say how
 * many sequences fell back (the C API: seq_newton_stats). */
static void test_newton_compiled_tells(void **st) {
  (void)st;
  const char *dir = tu_tmpdir();
  char path[512], cmd[1024];
  snprintf(path, sizeof path, "%s/logistic.seq", dir);
  assert_int_equal(tu_write_file(path, LOGISTIC), 0);
  snprintf(cmd, sizeof cmd, "--emit=sched %s --dims H=3 --strategy=newton", path);
  tu_expect_seqc(dir, cmd, 0, "newton solve");
  snprintf(cmd, sizeof cmd, "run %s --random-weights --dims H=3 --strategy=newton --in x=%s", path,
           tu_src("tests/data/newton_x.npy"));
  tu_expect_seqc(dir, cmd, 0, "2 of 2 Newton solves did not converge");
  tu_expect_seqc(dir, cmd, 0, "newton: 2 solves, 2 fell back");
  /* Three steps of ParaGRU's exact Newton leave at least its first three
   * steps exact: the step loop runs from a later one. */
  snprintf(cmd, sizeof cmd,
           "run %s --random-weights --dims I=3,H=3 --strategy=newton --newton-max-iter 3 --in "
           "x=%s",
           tu_src("stdlib/paragru.seq"), tu_src("tests/data/newton_x.npy"));
  tu_expect_seqc(dir, cmd, 0, "ran as the step loop from their first unconverged step");
  /* Windows of 3 steps (34 per sequence of 100): short enough that even
   * the chaotic map converges in each (with halved steps), where the whole
   * sequence falls back; the schedule names them. */
  snprintf(cmd, sizeof cmd,
           "run %s --random-weights --dims H=3 --strategy=newton --newton-window 3 --in x=%s", path,
           tu_src("tests/data/newton_x.npy"));
  tu_expect_seqc(dir, cmd, 0, "newton: 68 solves, 0 fell back");
  snprintf(cmd, sizeof cmd, "--emit=sched %s --dims H=3 --strategy=newton --newton-window 3", path);
  tu_expect_seqc(dir, cmd, 0, "windows of 3 steps");
  snprintf(cmd, sizeof cmd,
           "--emit=sched %s --dims I=3,H=3 --strategy=newton --newton-jacobian dense",
           tu_src("stdlib/gru.seq"));
  tu_expect_seqc(dir, cmd, 0, "dense-Jacobian newton solve");
  /* Bad values are usage errors that name the option. */
  snprintf(cmd, sizeof cmd, "--report %s --dims H=3 --strategy=newton --newton-window 0", path);
  tu_expect_seqc(dir, cmd, 2, "--newton-window takes a number of steps");
  snprintf(cmd, sizeof cmd, "--report %s --dims H=3 --strategy=newton --newton-jacobian full",
           path);
  tu_expect_seqc(dir, cmd, 2, "--newton-jacobian takes 'quasi' or 'dense', got 'full'");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_interpreter_agrees),    cmocka_unit_test(test_delta_spellings),
      cmocka_unit_test(test_delta_fakes),           cmocka_unit_test(test_transition_spellings),
      cmocka_unit_test(test_transition_fakes),      cmocka_unit_test(test_newton_agrees),
      cmocka_unit_test(test_newton_long),           cmocka_unit_test(test_newton_dense),
      cmocka_unit_test(test_newton_windows),        cmocka_unit_test(test_newton_fallback),
      cmocka_unit_test(test_newton_refused),        cmocka_unit_test(test_newton_auto),
      cmocka_unit_test(test_newton_compiled_tells),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
