/* verify.c - the IR verifier, run after every pass in debug builds.
 *
 * It checks what every pass may assume: operands precede their users (so the
 * node array is a topological order), arities and indices are in range, every
 * stored type is what ir_infer_type computes from the operands, states and
 * outputs are well-typed, STATE only appears in cells and CALL/RESULT only in
 * models, CALLs match their callee's signature, and layers bind every dim of
 * their callee. A failure is a compiler bug, reported as an internal error
 * naming the pass that ran last.
 */
#include "ir/ir.h"

#include <string.h>

typedef struct {
  const IrModule *m;
  DiagEngine *de;
  const char *pass;
  Arena *scratch; /* types re-inferred here; released when the check ends */
  int nbad;
} Verify;

static void bad(Verify *v, const IrFunc *f, IrRef r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void bad(Verify *v, const IrFunc *f, IrRef r, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  const char *fname = f && f->name ? f->name : "?";
  if (r != IR_NONE)
    diag_report(v->de, DIAG_ERROR, (SrcLoc){0}, "internal error in %s: IR of %s, v%d: %s", v->pass,
                fname, (int)r, what);
  else
    diag_report(v->de, DIAG_ERROR, (SrcLoc){0}, "internal error in %s: IR of %s: %s", v->pass,
                fname, what);
  v->nbad++;
}

static int dims_ok(DimExpr e, int ndims) {
  if (e.nterms < 0 || e.nterms > DIM_MAX_TERMS) return 0;
  for (int i = 0; i < e.nterms; i++) {
    if (e.t[i].nvars < 0 || e.t[i].nvars > DIM_MAX_DEGREE) return 0;
    for (int k = 0; k < e.t[i].nvars; k++)
      if (e.t[i].vars[k] < 0 || e.t[i].vars[k] >= ndims) return 0;
  }
  return 1;
}

static int type_ok(IrType t, int ndims) {
  if (t.rank < 0 || t.rank > SEQ_MAX_RANK || (t.rank > 0 && !t.dims)) return 0;
  if (t.elem != IR_REAL && t.elem != IR_COMPLEX && !(t.elem == IR_INT && t.rank == 0)) return 0;
  for (int i = 0; i < t.rank; i++)
    if (!dims_ok(t.dims[i], ndims)) return 0;
  return 1;
}

/* Does t equal the callee's type ct with the layer's dim bindings applied? */
static int type_eq_subst(IrType ct, const IrFunc *callee, const DimExpr *dim_args, IrType t) {
  if (!type_ok(ct, callee->dims.n) || ct.elem != t.elem || ct.rank != t.rank) return 0;
  for (int i = 0; i < ct.rank; i++) {
    DimExpr d;
    if (dim_subst(ct.dims[i], dim_args, &d) || !dim_eq(d, t.dims[i])) return 0;
  }
  return 1;
}

/* *t without its first axis, which must be the first axis of `lead` (a call
 * run over positions: its operands and results lead with them). */
static int over_type(IrType lead, IrType *t) {
  if (lead.rank < 1 || t->rank < 1 || !dim_eq(lead.dims[0], t->dims[0])) return 0;
  t->rank--;
  t->dims++;
  return 1;
}

/* The layer of a CALL node and its callee, if both are well-formed (layer
 * problems themselves are reported by verify_layers). */
static const IrFunc *call_callee(const Verify *v, const IrFunc *f, const IrNode *n,
                                 const IrLayer **layer) {
  if (n->index < 0 || n->index >= f->layers.n) return NULL;
  const IrLayer *l = &f->layers.v[n->index];
  if (l->callee < 0 || l->callee >= v->m->funcs.n) return NULL;
  const IrFunc *g = v->m->funcs.v[l->callee];
  if (g->dims.n > 0 && !l->dim_args) return NULL;
  *layer = l;
  return g;
}

static void verify_call(Verify *v, const IrFunc *f, IrRef r) {
  const IrNode *n = &f->nodes.v[r];
  const IrLayer *l = NULL;
  const IrNode *call = n->op == IR_CALL ? n : &f->nodes.v[n->args[0]];
  const IrFunc *g = call_callee(v, f, call, &l);
  if (!g) return;
  if (n->op == IR_CALL) {
    /* A dense Newton step's tangents are the solve's, not operands. */
    int own = l->newton.dense ? l->newton.states : 0;
    int extra = l->over && l->over_lengths; /* the lengths, last */
    if (n->nargs != g->inputs.n - own + extra) {
      bad(v, f, r, "call of %s passes %d operands for %d inputs", l->name, n->nargs,
          g->inputs.n - own);
      return;
    }
    if (extra) {
      IrType lt = f->nodes.v[n->args[n->nargs - 1]].type;
      if (lt.elem != IR_INT || lt.rank != 0)
        bad(v, f, r, "the lengths of the call of %s are not an int", l->name);
    }
    for (int i = 0; i < n->nargs - extra; i++) {
      IrType t = f->nodes.v[n->args[i]].type;
      /* Run over positions: a per-step input's operand has the positions first. */
      if (l->over && !g->inputs.v[i].context && !over_type(n->type, &t))
        bad(v, f, r, "operand %d of the call of %s does not lead with its positions", i, l->name);
      else if (!type_eq_subst(g->inputs.v[i].type, g, l->dim_args, t))
        bad(v, f, r, "operand %d of the call of %s does not have the type of input %s", i, l->name,
            g->inputs.v[i].name);
    }
  }
  int out = n->op == IR_CALL ? 0 : n->index;
  if (out >= g->outputs.n) {
    bad(v, f, r, "%s has no output %d", l->name, out);
    return;
  }
  IrType t = n->type;
  if (l->over) {
    const IrNode *c = n->op == IR_CALL ? n : &f->nodes.v[n->args[0]];
    if (!over_type(c->type, &t)) {
      bad(v, f, r, "the result of %s run over positions does not lead with them", l->name);
      return;
    }
  }
  if (!type_eq_subst(g->outputs.v[out].type, g, l->dim_args, t))
    bad(v, f, r, "type differs from that of output %s of %s", g->outputs.v[out].name, l->name);
}

static void verify_nodes(Verify *v, const IrFunc *f) {
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *n = &f->nodes.v[r];
    if ((unsigned)n->op >= IR_NUM_OPS) {
      bad(v, f, r, "unknown op %d", (int)n->op);
      continue;
    }
    const IrOpInfo *info = &ir_op_info[n->op];
    if (n->nargs < 0 || (n->nargs > 0 && !n->args)) {
      bad(v, f, r, "%s has a broken operand list", info->text);
      continue;
    }
    int args_ok = 1;
    for (int i = 0; i < n->nargs; i++)
      if (n->args[i] < 0 || n->args[i] >= r) {
        bad(v, f, r, "operand %d (v%d) of %s does not precede its user", i, (int)n->args[i],
            info->text);
        args_ok = 0;
      }
    if (!args_ok) continue;
    if (!type_ok(n->type, f->dims.n)) {
      bad(v, f, r, "%s has a malformed type", info->text);
      continue;
    }
    /* A model reads states only as a cell's parallel form does: the value
     * entering the sequence. Sequence-level ops need a model. */
    if (n->op == IR_STATE && f->kind != IR_FN_CELL && f->states.n == 0)
      bad(v, f, r, "state read outside a cell");
    if ((n->op == IR_CALL || n->op == IR_RESULT || (info->flags & IRF_SEQ)) &&
        f->kind != IR_FN_MODEL)
      bad(v, f, r, "%s outside a model", info->text);
    if (!dims_ok(n->dval, f->dims.n) || !dims_ok(n->start, f->dims.n) ||
        !dims_ok(n->stop, f->dims.n))
      bad(v, f, r, "%s has an attribute over dims the function does not have", info->text);

    char msg[256];
    IrType t;
    msg[0] = 0;
    if (ir_infer_type(f, v->scratch, n, n->nargs, n->args, &t, msg, sizeof msg)) {
      bad(v, f, r, "%s is ill-typed: %s", info->text, msg);
      continue;
    }
    if (!ir_type_eq(t, n->type)) {
      bad(v, f, r, "stored type of %s differs from the inferred one", info->text);
      continue;
    }
    if (n->op == IR_CALL || n->op == IR_RESULT) verify_call(v, f, r);
  }
}

/* A state's initial value is computed once, before the first step: it may
 * read parameters and constants but nothing of the step. */
static void verify_init(Verify *v, const IrFunc *f, int si, IrRef init) {
  char *seen = arena_calloc(v->scratch, (size_t)f->nodes.n, 1);
  IrRef *stack = arena_calloc(v->scratch, (size_t)f->nodes.n, sizeof *stack);
  if (!seen || !stack) {
    bad(v, f, IR_NONE, "out of memory while checking state %s", f->states.v[si].name);
    return;
  }
  int sp = 0;
  stack[sp++] = init;
  seen[init] = 1;
  while (sp > 0) {
    const IrNode *n = &f->nodes.v[stack[--sp]];
    if (n->op == IR_INPUT || n->op == IR_STATE || n->op == IR_CALL) {
      bad(v, f, IR_NONE, "initial value of state %s depends on %s", f->states.v[si].name,
          ir_op_info[n->op].text);
      return;
    }
    for (int i = 0; i < n->nargs; i++) {
      IrRef a = n->args[i];
      if (a >= 0 && a < f->nodes.n && !seen[a]) {
        seen[a] = 1;
        stack[sp++] = a;
      }
    }
  }
}

static int ref_ok(const IrFunc *f, IrRef r) {
  return r >= 0 && r < f->nodes.n;
}

static void verify_signature(Verify *v, const IrFunc *f) {
  int nd = f->dims.n;
  for (int i = 0; i < nd; i++)
    if (!f->dims.v[i].name) bad(v, f, IR_NONE, "dim %d has no name", i);
  /* A default expression uses only earlier dims, so defaults resolve in dim
   * order; a dim has one default at most. */
  for (int i = 0; i < f->dim_defaults.n; i++) {
    const IrDimDefault *d = &f->dim_defaults.v[i];
    if (d->dim < 0 || d->dim >= nd || !dims_ok(d->expr, d->dim) || f->dims.v[d->dim].has_default)
      bad(v, f, IR_NONE, "default expression %d is malformed", i);
    for (int k = 0; k < i; k++)
      if (f->dim_defaults.v[k].dim == d->dim)
        bad(v, f, IR_NONE, "dim %d has two default expressions", d->dim);
  }
  /* A quotient's numerator and divisor are earlier dims; a dim is one
   * quotient at most, and a numerator divided once. */
  for (int i = 0; i < f->dim_quotients.n; i++) {
    const IrDimQuotient *q = &f->dim_quotients.v[i];
    if (q->dim < 0 || q->dim >= nd || q->num < 0 || q->num >= q->dim || q->den.nterms != 1 ||
        !dims_ok(q->den, q->dim))
      bad(v, f, IR_NONE, "dim quotient %d is malformed", i);
    for (int k = 0; k < i; k++)
      if (f->dim_quotients.v[k].dim == q->dim || f->dim_quotients.v[k].num == q->num)
        bad(v, f, IR_NONE, "dim quotient %d repeats a dim or a numerator", i);
  }
  for (int i = 0; i < f->params.n; i++)
    if (!f->params.v[i].name || !type_ok(f->params.v[i].type, nd) ||
        f->params.v[i].type.elem == IR_INT)
      bad(v, f, IR_NONE, "parameter %d is malformed", i);
  for (int i = 0; i < f->inputs.n; i++)
    if (!f->inputs.v[i].name || !type_ok(f->inputs.v[i].type, nd))
      bad(v, f, IR_NONE, "input %d is malformed", i);
  /* A model has states only as a cell's parallel form (passes/scan.c),
   * whose only layers are Newton layers (its own instance). */
  for (int i = 0; f->kind == IR_FN_MODEL && f->states.n > 0 && i < f->layers.n; i++)
    if (!f->layers.v[i].newton.states)
      bad(v, f, IR_NONE, "a model has states of its own and layers");
  for (int i = 0; i < f->states.n; i++) {
    const IrState *s = &f->states.v[i];
    if (!s->name || !type_ok(s->type, nd) || s->type.elem == IR_INT) {
      bad(v, f, IR_NONE, "state %d is malformed", i);
      continue;
    }
    if (!ref_ok(f, s->init) || !ir_type_eq(f->nodes.v[s->init].type, s->type))
      bad(v, f, IR_NONE, "initial value of state %s is missing or not of its type", s->name);
    else
      verify_init(v, f, i, s->init);
    if (!ref_ok(f, s->next) || !ir_type_eq(f->nodes.v[s->next].type, s->type))
      bad(v, f, IR_NONE, "next value of state %s is missing or not of its type", s->name);
  }
  for (int i = 0; i < f->outputs.n; i++) {
    const IrOutput *o = &f->outputs.v[i];
    if (!o->name || !type_ok(o->type, nd)) {
      bad(v, f, IR_NONE, "output %d is malformed", i);
      continue;
    }
    if (!ref_ok(f, o->value) || !ir_type_eq(f->nodes.v[o->value].type, o->type))
      bad(v, f, IR_NONE, "value of output %s is missing or not of its type", o->name);
  }
}

/* A Newton layer (ir.h, IrNewton): its step is the caller's own instance
 * (the caller's dims and parameters, in order, no states), with n previous
 * values as its last inputs (dense: then n tangents) and n values then n^2
 * blocks (dense: n products) of one type as its first outputs; tolerances
 * that stop. */
static void verify_newton(Verify *v, const IrFunc *f, const IrLayer *l, const IrFunc *g) {
  int n = l->newton.states, dense = l->newton.dense != 0;
  int extra = dense ? n : 0, nout = dense ? 2 * n : n + n * n;
  if (n < 0 || n > 4 || g->kind != IR_FN_CELL || g->states.n || g->inputs.n < n + extra ||
      g->outputs.n < nout || (dense && l->newton.quasi)) {
    bad(v, f, IR_NONE, "Newton layer %s: %s is not a step of %d states", l->name, g->name, n);
    return;
  }
  if (!(l->newton.max_iter > 0 && l->newton.rtol >= 0 && l->newton.atol >= 0 &&
        l->newton.rtol + l->newton.atol > 0 && l->newton.window >= 0))
    bad(v, f, IR_NONE, "Newton layer %s has no tolerance or iteration limit", l->name);
  if (g->dims.n != f->dims.n || g->params.n != f->params.n)
    bad(v, f, IR_NONE, "Newton layer %s: %s does not have the caller's dims and parameters",
        l->name, g->name);
  for (int k = 0; k < g->dims.n && k < f->dims.n; k++)
    if (!dim_eq(l->dim_args[k], dim_var(k)))
      bad(v, f, IR_NONE, "Newton layer %s binds dim %s to another", l->name, g->dims.v[k].name);
  for (int k = 0; k < g->params.n && k < f->params.n; k++)
    if (strcmp(g->params.v[k].name, f->params.v[k].name) ||
        !ir_type_eq(g->params.v[k].type, f->params.v[k].type))
      bad(v, f, IR_NONE, "Newton layer %s: parameter %s is not the caller's", l->name,
          g->params.v[k].name);
  IrType t = g->outputs.v[0].type;
  for (int k = 0; k < nout; k++)
    if (!ir_type_eq(g->outputs.v[k].type, t) || t.elem != IR_REAL)
      bad(v, f, IR_NONE, "Newton layer %s: output %s is not real and of the first's type", l->name,
          g->outputs.v[k].name);
  for (int k = 0; k < n + extra; k++)
    if (!ir_type_eq(g->inputs.v[g->inputs.n - n - extra + k].type, t))
      bad(v, f, IR_NONE, "Newton layer %s: input %s is not of its state's type", l->name,
          g->inputs.v[g->inputs.n - n - extra + k].name);
}

static void verify_layers(Verify *v, const IrFunc *f, int fi) {
  if (f->kind == IR_FN_CELL && f->layers.n > 0) bad(v, f, IR_NONE, "a cell has layers");
  for (int i = 0; i < f->layers.n; i++) {
    const IrLayer *l = &f->layers.v[i];
    const char *name = l->name ? l->name : "?";
    if (!l->name || !l->prefix || !l->suffix)
      bad(v, f, IR_NONE, "layer %d lacks a name, prefix or suffix", i);
    if (l->callee < 0 || l->callee >= v->m->funcs.n || l->callee == fi) {
      bad(v, f, IR_NONE, "layer %s instantiates function %d", name, l->callee);
      continue;
    }
    const IrFunc *g = v->m->funcs.v[l->callee];
    if (g->dims.n > 0 && !l->dim_args) {
      bad(v, f, IR_NONE, "layer %s binds none of the dims of %s", name, g->name);
      continue;
    }
    for (int k = 0; k < g->dims.n; k++)
      if (!dims_ok(l->dim_args[k], f->dims.n))
        bad(v, f, IR_NONE, "layer %s binds dim %s of %s to dims the caller does not have", name,
            g->dims.v[k].name, g->name);
    if (l->newton.states) verify_newton(v, f, l, g);
  }
}

/* Layers must not instantiate, directly or not, the function they are in:
 * the instance tree would be infinite. Depth-first search with colors. */
static int cyclic_from(const IrModule *m, int fi, char *color) {
  if (color[fi] == 1) return 1;
  if (color[fi] == 2) return 0;
  const IrFunc *f = m->funcs.v[fi];
  if (!f) return 0;
  color[fi] = 1;
  for (int i = 0; i < f->layers.n; i++) {
    int c = f->layers.v[i].callee;
    if (c >= 0 && c < m->funcs.n && cyclic_from(m, c, color)) return 1;
  }
  color[fi] = 2;
  return 0;
}

int ir_verify(const IrModule *m, DiagEngine *de, const char *after_pass) {
  Verify v = {m, de, after_pass ? after_pass : "?", arena_create(), 0};
  if (!v.scratch) {
    diag_report(de, DIAG_ERROR, (SrcLoc){0}, "internal error in %s: out of memory in the verifier",
                v.pass);
    return -1;
  }
  if (m->funcs.n > 0 && (m->entry < 0 || m->entry >= m->funcs.n))
    bad(&v, NULL, IR_NONE, "entry %d is not a function of the module", m->entry);
  for (int fi = 0; fi < m->funcs.n; fi++) {
    const IrFunc *f = m->funcs.v[fi];
    if (!f || !f->name) {
      bad(&v, NULL, IR_NONE, "function %d is missing or unnamed", fi);
      continue;
    }
    verify_layers(&v, f, fi);
    verify_nodes(&v, f);
    verify_signature(&v, f);
  }
  char *color = m->funcs.n ? arena_calloc(v.scratch, (size_t)m->funcs.n, 1) : NULL;
  for (int fi = 0; color && fi < m->funcs.n; fi++)
    if (m->funcs.v[fi] && cyclic_from(m, fi, color)) {
      bad(&v, m->funcs.v[fi], IR_NONE, "instantiates itself through its layers");
      break;
    }
  arena_destroy(v.scratch);
  return v.nbad ? -1 : 0;
}
