/* scan.c - a cell's parallel form as sequence-level IR.
 *
 * A cell is one time step. When every state of a cell is solved in parallel
 * (its form, chosen by strategy.c, is not the step loop), the cell is
 * rewritten into a model of the same name, dims, parameters, inputs, outputs
 * and states, whose nodes are maps over the whole sequence plus:
 *
 *   - a linear state h' = a (.) h + b (a, b free of h; linear diagonal or
 *     matrix-state classes) becomes  H = scan(a, b, h): the values h leaves
 *     each step with, a and b computed per token;
 *   - a (max, +) state m' = max(a + m, b) becomes  M = scan_max(a, b, m);
 *   - a delta-rule state (diagonal plus low rank, delta.c) becomes
 *     H = delta_state(k, v, beta, lg, S);
 *   - a map state (h' reads no earlier h) is its next value, per token;
 *   - a carried state is its initial value throughout;
 *   - every read of h (the value entering a step) becomes delay(H, h), and
 *     every read of h' becomes H.
 *
 * a and b come from a linearization of the state's next value: a walk over
 * the nodes that depend on the state, in order, keeping for each the pair
 * (coefficient, rest) of its value as coefficient (.) state + rest. Every
 * rule is an identity of the algebra (a (.) h + b) + c = a (.) h + (b + c),
 * (a (.) h + b) * c = (a c) (.) h + b c, ..., so the rewritten form computes
 * the same values as the step, up to the order of float32 roundings where
 * the step was not written as a * h + b; the interpreter runs both and the
 * tests compare them. An op outside the rules (a product of two values that
 * depend on the state, a division by one, a nonlinear function of it, a
 * change of shape) means the state has no such form here: the caller keeps
 * the cell as it is, or reports why when the user asked for the form.
 *
 * States are solved in the order of their dependencies (classify.c's
 * `given` states): a coefficient may read another state's values, old or
 * new, once that state's sequence exists.
 */
#include "passes/passes.h"

#include <math.h>
#include <string.h>

/* A coefficient that is the identity of the semiring's product: 1 for
 * (+, x), 0 for (max, +). IR_NONE stands for its zero (0, or -inf). */
#define LIN_ID (-2)

typedef struct Lin {
  IrRef a; /* coefficient of the state (LIN_ID, IR_NONE or a node of dst) */
  IrRef b; /* the rest, free of the state (IR_NONE: the zero) */
} Lin;

typedef struct Scan {
  PassBuild b;     /* src: the cell; dst: its parallel form */
  IrRef *map;      /* per src node: its value in dst (IR_NONE: not built yet) */
  IrRef *state_in; /* per state: dst's STATE node (the value entering the sequence) */
  int *solved;     /* per state: its sequence exists (map holds its reads) */
  const char *why; /* why a state has no parallel form */
  const RecFunc *rf;
  const NewtonOptions *newton;
  IrFunc *step; /* a Newton solve's step (newton.c), or NULL */
} Scan;

static void oom(Scan *S) {
  if (!S->b.failed)
    diag_error(S->b.de, S->b.src->loc, "out of memory building the parallel form of %s",
               S->b.src->name);
  S->b.failed = 1;
}

/* ---- building nodes in dst --------------------------------------------------- */

/* x with exactly type t: broadcast (numpy rules), and for a complex t a
 * real x becomes complex(x, 0). */
static IrRef fit(Scan *S, IrRef x, IrType t, SrcLoc loc) {
  if (S->b.failed) return IR_NONE;
  IrType xt = S->b.dst->nodes.v[x].type;
  if (t.elem == IR_COMPLEX && xt.elem != IR_COMPLEX)
    x = pb_node2(&S->b, IR_CPLX, x, pb_const(&S->b, 0.0, loc), loc);
  if (S->b.failed || ir_type_eq(S->b.dst->nodes.v[x].type, t)) return x;
  IrNode bc;
  memset(&bc, 0, sizeof bc);
  bc.type = t;
  return pb_node(&S->b, IR_BROADCAST, 1, &x, &bc, loc);
}

/* ---- mapping nodes of the step to maps over the sequence ---------------------- */

/* src node r in dst: built on demand, operands first (an explicit stack, so
 * a long chain does not exhaust the C stack). Reads of a state must have
 * been given their sequence (map[] of its STATE and next nodes) first. */
static IrRef map_node(Scan *S, IrRef root) {
  if (S->b.failed) return IR_NONE;
  if (S->map[root] != IR_NONE) return S->map[root];
  const IrFunc *f = S->b.src;
  IrRef *stack = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, sizeof *stack);
  int *next_arg = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, sizeof *next_arg);
  if (!stack || !next_arg) {
    oom(S);
    return IR_NONE;
  }
  int sp = 0;
  stack[sp++] = root;
  while (sp > 0 && !S->b.failed) {
    IrRef r = stack[sp - 1];
    const IrNode *n = &f->nodes.v[r];
    if (n->op == IR_STATE) {
      diag_internal(S->b.de, "scan", "%s: state %s is read before it is solved", f->name,
                    f->states.v[n->index].name);
      S->b.failed = 1;
      break;
    }
    if (next_arg[r] < n->nargs) {
      IrRef a = n->args[next_arg[r]++];
      if (S->map[a] == IR_NONE) stack[sp++] = a;
      continue;
    }
    IrRef *args = n->nargs ? arena_calloc(S->b.a, (size_t)n->nargs, sizeof *args) : NULL;
    if (n->nargs && !args) {
      oom(S);
      break;
    }
    for (int j = 0; j < n->nargs; j++) args[j] = S->map[n->args[j]];
    IrRef m = ir_emit(S->b.dst, S->b.a, n, n->nargs, args);
    if (m == IR_NONE) oom(S);
    S->map[r] = m;
    sp--;
  }
  return S->b.failed ? IR_NONE : S->map[root];
}

/* ---- linearization -------------------------------------------------------------- */

/* The semiring the state is linear over. */
typedef enum { RING_SUM_PRODUCT, RING_MAX_PLUS } Ring;

static int unsupported(Scan *S, const IrNode *n, const char *what) {
  if (!S->why)
    S->why = arena_printf(S->b.a, "%s at %s:%d:%d", what, n->loc.file ? n->loc.file->name : "?",
                          n->loc.line, n->loc.col);
  return -1;
}

/* The coefficient sum x + y (LIN_ID is 1, IR_NONE is 0). */
static IrRef coef_add(Scan *S, IrRef x, IrRef y, int negate_y, SrcLoc loc) {
  if (y == IR_NONE) return x;
  IrRef yv = y == LIN_ID ? pb_const(&S->b, 1.0, loc) : y;
  if (x == IR_NONE) return negate_y ? pb_node(&S->b, IR_NEG, 1, &yv, NULL, loc) : y;
  IrRef xv = x == LIN_ID ? pb_const(&S->b, 1.0, loc) : x;
  return pb_node2(&S->b, negate_y ? IR_SUB : IR_ADD, xv, yv, loc);
}

/* x op c for a coefficient x and a state-free c, op MUL or DIV. */
static IrRef coef_scale(Scan *S, IrOp op, IrRef x, IrRef c, SrcLoc loc) {
  if (x == IR_NONE) return IR_NONE;
  if (x == LIN_ID)
    return op == IR_MUL ? c : pb_node2(&S->b, IR_DIV, pb_const(&S->b, 1.0, loc), c, loc);
  return pb_node2(&S->b, op, x, c, loc);
}

/* (max, +): the coefficient x + c (LIN_ID is 0, IR_NONE is -inf). */
static IrRef trop_shift(Scan *S, IrRef x, IrRef c, int negate, SrcLoc loc) {
  if (x == IR_NONE) return IR_NONE;
  if (x == LIN_ID) return negate ? pb_node(&S->b, IR_NEG, 1, &c, NULL, loc) : c;
  return pb_node2(&S->b, negate ? IR_SUB : IR_ADD, x, c, loc);
}

/* (max, +): max(x, y) of two coefficients or rests. */
static IrRef trop_max(Scan *S, IrRef x, IrRef y, SrcLoc loc) {
  if (x == IR_NONE) return y;
  if (y == IR_NONE) return x;
  if (x == LIN_ID && y == LIN_ID) return LIN_ID;
  IrRef xv = x == LIN_ID ? pb_const(&S->b, 0.0, loc) : x;
  IrRef yv = y == LIN_ID ? pb_const(&S->b, 0.0, loc) : y;
  return pb_node2(&S->b, IR_MAX, xv, yv, loc);
}

/* lin[r] for node r that depends on the state; dep[] marks those nodes.
 * Every such node must have the state's type (its value is positioned like
 * the state: coefficient (.) state + rest). Returns -1 (with S->why) when a
 * node is outside the rules. */
static int lin_rule(Scan *S, Ring ring, const char *dep, Lin *lin, IrRef r, IrType st) {
  const IrNode *n = &S->b.src->nodes.v[r];
  SrcLoc loc = n->loc;
  Lin *o = &lin[r];
  if (n->op == IR_STATE) {
    o->a = LIN_ID;
    o->b = IR_NONE;
    return 0;
  }
  if (!ir_type_eq(n->type, st))
    return unsupported(S, n, "the state's value changes shape or element type");
  int d0 = n->nargs > 0 && dep[n->args[0]], d1 = n->nargs > 1 && dep[n->args[1]];
  /* The state-free operand of a binary op, in dst. */
  IrRef c = IR_NONE;
  if (n->nargs == 2 && d0 != d1) c = map_node(S, n->args[d0 ? 1 : 0]);
  if (S->b.failed) return -1;
  const Lin *x = d0 ? &lin[n->args[0]] : NULL, *y = d1 ? &lin[n->args[1]] : NULL;
  switch (n->op) {
  case IR_BROADCAST:
  case IR_RESHAPE: /* to the state's own type: nothing moves */
    *o = *x;
    return 0;
  default:
    break;
  }
  if (ring == RING_MAX_PLUS) {
    switch (n->op) {
    case IR_ADD:
      if (d0 && d1) return unsupported(S, n, "a sum of two values that depend on the state");
      *o = d0 ? *x : *y;
      o->a = trop_shift(S, o->a, c, 0, loc);
      o->b = o->b == IR_NONE ? IR_NONE : pb_node2(&S->b, IR_ADD, o->b, c, loc);
      return 0;
    case IR_SUB:
      if (d1) return unsupported(S, n, "the state subtracted (not linear over (max, +))");
      *o = *x;
      o->a = trop_shift(S, o->a, c, 1, loc);
      o->b = o->b == IR_NONE ? IR_NONE : pb_node2(&S->b, IR_SUB, o->b, c, loc);
      return 0;
    case IR_MAX: {
      Lin u = d0 ? *x : (Lin){IR_NONE, c}, v = d1 ? *y : (Lin){IR_NONE, c};
      o->a = trop_max(S, u.a, v.a, loc);
      o->b = trop_max(S, u.b, v.b, loc);
      return 0;
    }
    default:
      return unsupported(S, n,
                         arena_printf(S->b.a, "%s of the state (not linear over (max, +))",
                                      ir_op_info[n->op].text));
    }
  }
  switch (n->op) {
  case IR_NEG:
    o->a = x->a == IR_NONE  ? IR_NONE
           : x->a == LIN_ID ? pb_const(&S->b, -1.0, loc)
                            : pb_node(&S->b, IR_NEG, 1, &x->a, NULL, loc);
    o->b = x->b == IR_NONE ? IR_NONE : pb_node(&S->b, IR_NEG, 1, &x->b, NULL, loc);
    return 0;
  case IR_ADD:
  case IR_SUB: {
    int neg = n->op == IR_SUB;
    Lin u = d0 ? *x : (Lin){IR_NONE, c}, v = d1 ? *y : (Lin){IR_NONE, c};
    o->a = coef_add(S, u.a, v.a, neg, loc);
    if (v.b == IR_NONE)
      o->b = u.b;
    else if (u.b == IR_NONE)
      o->b = neg ? pb_node(&S->b, IR_NEG, 1, &v.b, NULL, loc) : v.b;
    else
      o->b = pb_node2(&S->b, n->op, u.b, v.b, loc);
    return 0;
  }
  case IR_MUL:
  case IR_DIV:
    if (d0 && d1) return unsupported(S, n, "a product of two values that depend on the state");
    if (n->op == IR_DIV && d1) return unsupported(S, n, "a division by the state");
    *o = d0 ? *x : *y;
    o->a = coef_scale(S, n->op, o->a, c, loc);
    o->b = o->b == IR_NONE ? IR_NONE : pb_node2(&S->b, n->op, o->b, c, loc);
    return 0;
  default:
    return unsupported(S, n,
                       arena_printf(S->b.a, "%s of the state (not a linear diagonal map)",
                                    ir_op_info[n->op].text));
  }
}

/* The pair (a, b) of state k's next value, in dst; 0, or -1 with S->why
 * (no such form) or S->b.failed. */
static int linearize(Scan *S, int k, Ring ring, Lin *out) {
  const IrFunc *f = S->b.src;
  const IrState *st = &f->states.v[k];
  char *dep = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, 1);
  Lin *lin = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, sizeof *lin);
  if (!dep || !lin) {
    oom(S);
    return -1;
  }
  /* Only the nodes the next value is made of: other reads of the state
   * (outputs, other states' coefficients) are maps of its sequence. */
  char *cone = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, 1);
  if (!cone) {
    oom(S);
    return -1;
  }
  cone[st->next] = 1;
  for (IrRef r = st->next; r >= 0; r--)
    if (cone[r])
      for (int j = 0; j < f->nodes.v[r].nargs; j++) cone[f->nodes.v[r].args[j]] = 1;
  for (IrRef r = 0; r <= st->next; r++) {
    const IrNode *n = &f->nodes.v[r];
    dep[r] = n->op == IR_STATE && n->index == k;
    for (int j = 0; j < n->nargs && !dep[r]; j++) dep[r] = dep[n->args[j]];
    if (dep[r] && cone[r] && lin_rule(S, ring, dep, lin, r, st->type)) return -1;
    if (S->b.failed) return -1;
  }
  if (!dep[st->next]) {
    *out = (Lin){IR_NONE, map_node(S, st->next)};
    return S->b.failed ? -1 : 0;
  }
  *out = lin[st->next];
  return 0;
}

/* ---- solving one state ---------------------------------------------------------- */

static IrRef build_state_in(Scan *S, int k) {
  IrNode leaf;
  memset(&leaf, 0, sizeof leaf);
  leaf.op = IR_STATE;
  leaf.index = k;
  leaf.type = S->b.src->states.v[k].type;
  leaf.loc = S->b.src->states.v[k].loc;
  IrRef r = ir_emit(S->b.dst, S->b.a, &leaf, 0, NULL);
  if (r == IR_NONE) oom(S);
  return r;
}

/* Records state k's values entering each step (reads of the state). */
static void reads_are(Scan *S, int k, IrRef old) {
  const IrFunc *f = S->b.src;
  for (IrRef r = 0; r < f->nodes.n; r++)
    if (f->nodes.v[r].op == IR_STATE && f->nodes.v[r].index == k) S->map[r] = old;
}

/* Records that state k's values leaving each step are `seq` (IR_NONE: the
 * state is carried, its initial value throughout); those entering a step
 * are then the previous step's. */
static void solved_state(Scan *S, int k, IrRef seq) {
  IrRef h0 = S->state_in[k];
  if (seq != IR_NONE)
    reads_are(S, k, pb_node2(&S->b, IR_DELAY, seq, h0, S->b.src->states.v[k].loc));
  else
    reads_are(S, k, h0);
  S->b.dst->states.v[k].next = seq != IR_NONE ? seq : h0;
  S->solved[k] = 1;
}

/* Whether node r of the cell is a parameter (through reshapes): the same
 * for every token. */
static int is_param(const IrFunc *f, IrRef r) {
  while (f->nodes.v[r].op == IR_RESHAPE) r = f->nodes.v[r].args[0];
  return f->nodes.v[r].op == IR_PARAM;
}

/* causal_conv's step form over the window state k [D, K-1] whose new entry
 * is v [D, 1]: sum(concat(w, v) * W, axis=1) with W [D, K] a parameter.
 * Each such sum becomes one causal_conv over the sequence of v with the
 * window's initial value (IR_CAUSAL_CONV's fourth operand), which reads the
 * inputs in place instead of copying a [D, K] window per token. */
static void window_convs(Scan *S, int k, IrRef v) {
  const IrFunc *f = S->b.src;
  const IrState *st = &f->states.v[k];
  if (st->type.rank != 2 || f->nodes.v[v].type.rank != 2) return;
  for (IrRef c = 0; c < f->nodes.n && !S->b.failed; c++) {
    const IrNode *cat = &f->nodes.v[c];
    if (cat->op != IR_CONCAT || cat->nargs != 2 || cat->axis != 1 || cat->args[1] != v ||
        f->nodes.v[cat->args[0]].op != IR_STATE || f->nodes.v[cat->args[0]].index != k)
      continue;
    for (IrRef m = c + 1; m < f->nodes.n && !S->b.failed; m++) {
      const IrNode *mul = &f->nodes.v[m];
      if (mul->op != IR_MUL || mul->nargs != 2 || (mul->args[0] != c && mul->args[1] != c))
        continue;
      IrRef w = mul->args[0] == c ? mul->args[1] : mul->args[0];
      if (w == c || !ir_type_eq(f->nodes.v[w].type, cat->type) || !is_param(f, w)) continue;
      for (IrRef q = m + 1; q < f->nodes.n && !S->b.failed; q++) {
        const IrNode *sum = &f->nodes.v[q];
        if (sum->op != IR_SUM || sum->nargs != 1 || sum->args[0] != m || sum->axis != 1 ||
            sum->type.rank != 1 || S->map[q] != IR_NONE)
          continue;
        IrRef u = pb_shape(&S->b, IR_RESHAPE, map_node(S, v), sum->type, sum->loc);
        IrRef a[4] = {u, map_node(S, w),
                      fit(S, pb_const(&S->b, 0.0, sum->loc), sum->type, sum->loc), S->state_in[k]};
        S->map[q] = pb_node(&S->b, IR_CAUSAL_CONV, 4, a, NULL, sum->loc);
      }
    }
  }
}

/* A shift register, w' = concat(w[m:], v) along an axis with v free of w
 * (causal_conv's window): the values entering each step are a window over
 * [w0, v_0, v_1, ...], and those leaving it the step's own concat. Other
 * data movement has no form here. */
static int solve_shift(Scan *S, int k) {
  const IrFunc *f = S->b.src;
  const IrState *st = &f->states.v[k];
  const IrNode *nx = &f->nodes.v[st->next];
  if (nx->op != IR_CONCAT || nx->nargs != 2) return unsupported(S, nx, "a shift of another shape");
  const IrNode *kept = &f->nodes.v[nx->args[0]];
  const IrNode *in = &f->nodes.v[nx->args[1]];
  int ax = nx->axis;
  if (kept->op != IR_SLICE || kept->axis != ax || f->nodes.v[kept->args[0]].op != IR_STATE ||
      f->nodes.v[kept->args[0]].index != k || !dim_eq(kept->stop, st->type.dims[ax]) ||
      !dim_eq(kept->start, in->type.dims[ax]))
    return unsupported(S, nx, "a shift of another shape");
  /* The new entries must not read the register itself. */
  char *dep = arena_calloc(S->b.a, (size_t)f->nodes.n + 1, 1);
  if (!dep) {
    oom(S);
    return -1;
  }
  for (IrRef r = 0; r <= nx->args[1]; r++) {
    const IrNode *n = &f->nodes.v[r];
    dep[r] = n->op == IR_STATE && n->index == k;
    for (int j = 0; j < n->nargs && !dep[r]; j++) dep[r] = dep[n->args[j]];
  }
  if (dep[nx->args[1]]) return unsupported(S, in, "a shift whose new entries read the register");
  IrRef v = map_node(S, nx->args[1]);
  if (S->b.failed) return -1;
  IrNode attrs;
  memset(&attrs, 0, sizeof attrs);
  attrs.axis = ax;
  IrRef args[2] = {v, S->state_in[k]};
  reads_are(S, k, pb_node(&S->b, IR_WINDOW, 2, args, &attrs, st->loc));
  window_convs(S, k, nx->args[1]);
  /* Leaving step t the register holds the window entering step t + 1: the
   * same op one step on, not the step's slice and concat per token. */
  attrs.index = 1;
  IrRef seq = pb_node(&S->b, IR_WINDOW, 2, args, &attrs, st->loc);
  if (S->b.failed) return -1;
  if (S->map[st->next] == IR_NONE) S->map[st->next] = seq;
  S->b.dst->states.v[k].next = seq;
  S->solved[k] = 1;
  return 0;
}

static IrRef map_cb(void *ctx, IrRef src) {
  return map_node(ctx, src);
}

/* The end of a state solved by one sequence op whose operands a pass read
 * off the step (rc: 0, 1 with why, -1): H = op(args[0..nargs), S0), the
 * state after every step (args has room for S0). */
static int solve_by_op(Scan *S, int k, int rc, const char *why, IrOp op, IrRef *args, int nargs) {
  const IrState *st = &S->b.src->states.v[k];
  if (rc < 0) {
    if (!S->b.failed) oom(S);
    S->b.failed = 1;
    return -1;
  }
  if (rc > 0) {
    if (!S->why) S->why = arena_printf(S->b.a, "state %s: %s", st->name, why);
    return -1;
  }
  args[nargs] = S->state_in[k];
  IrNode attrs;
  memset(&attrs, 0, sizeof attrs);
  attrs.index = k;
  IrRef seq = pb_node(&S->b, op, nargs + 1, args, &attrs, st->loc);
  if (S->b.failed) return -1;
  solved_state(S, k, seq);
  S->map[st->next] = seq;
  return S->b.failed ? -1 : 0;
}

/* The delta rule (delta.c): H = delta_state(k, v, beta, lg, S0) or
 * dplr_state(lw, a, b, v, k, S0), the state after every step, with the
 * operands computed per token. */
static int solve_delta(Scan *S, int k) {
  DeltaForm form;
  DeltaOps ops;
  memset(&ops, 0, sizeof ops);
  const char *why = NULL;
  int rc = delta_analyze(S->b.a, S->b.src, k, &form, &why);
  if (rc == 0)
    rc = delta_build(S->b.a, S->b.src, k, &form, S->b.dst, map_cb, S, &ops, &why, S->b.de);
  IrRef args[6];
  if (rc == 0) memcpy(args, ops.args, sizeof(IrRef) * (size_t)ops.nargs);
  return solve_by_op(S, k, rc, why, ops.op, args, ops.nargs);
}

/* A small dense transition (transition.c): H = plstm_state(tr, s, v, k, S0),
 * the state after every step, with the operands computed per token. */
static int solve_transition(Scan *S, int k) {
  TransitionForm form;
  const char *why = NULL;
  IrRef args[5];
  int rc = transition_analyze(S->b.a, S->b.src, k, 0, &form, &why);
  if (rc == 0)
    rc = transition_build(S->b.a, S->b.src, k, &form, S->b.dst, map_cb, S, args, S->b.de);
  return solve_by_op(S, k, rc, why, IR_PLSTM_STATE, args, 4);
}

/* A nonlinear group (every state of k's group) by Newton's method: a call
 * of a Newton layer whose step (newton.c) reads the cell's inputs, the
 * other states' values entering each step and, for the solved states, their
 * initial values; its results are the solved states' values. */
static int solve_newton(Scan *S, int k) {
  const IrFunc *f = S->b.src;
  int solved[NEWTON_MAX_STATES + 1], n = 0;
  for (int j = 0; j < f->states.n; j++)
    if (S->rf->states[j].group == S->rf->states[k].group) {
      if (n == NEWTON_MAX_STATES) {
        S->why = arena_printf(S->b.a, "more than %d states are coupled with %s", NEWTON_MAX_STATES,
                              f->states.v[k].name);
        return -1;
      }
      solved[n++] = j;
    }
  if (S->step) {
    S->why = arena_printf(S->b.a, "%s has two nonlinear groups (Newton solves one)", f->name);
    return -1;
  }
  const char *why;
  IrRefs hoisted = {0};
  int quasi = 0, dense = 0;
  int rc = newton_step_cell(S->b.a, f, solved, n, S->newton && S->newton->dense, &S->step, &hoisted,
                            &quasi, &dense, &why, S->b.de);
  if (rc) {
    if (rc > 0)
      S->why = arena_printf(S->b.a, "state %s: %s", f->states.v[k].name, why);
    else
      S->b.failed = 1;
    return -1;
  }
  /* The layer, then its call. */
  IrLayer l;
  memset(&l, 0, sizeof l);
  l.name = "newton";
  l.loc = f->states.v[k].loc;
  l.callee = -1; /* the caller's to set */
  l.prefix = l.suffix = "";
  l.dim_args = arena_calloc(S->b.a, (size_t)f->dims.n + 1, sizeof *l.dim_args);
  if (!l.dim_args) {
    oom(S);
    return -1;
  }
  for (int d = 0; d < f->dims.n; d++) l.dim_args[d] = dim_var(d);
  l.newton.states = n;
  l.newton.quasi = quasi;
  l.newton.dense = dense;
  l.newton.rtol = S->newton && S->newton->rtol > 0 ? S->newton->rtol : NEWTON_RTOL;
  l.newton.atol = S->newton && S->newton->atol > 0 ? S->newton->atol : NEWTON_ATOL;
  l.newton.max_iter = S->newton && S->newton->max_iter > 0 ? S->newton->max_iter : NEWTON_MAX_ITER;
  l.newton.window = S->newton && S->newton->window > 0 ? S->newton->window : 0;
  if (vec_push(S->b.a, &S->b.dst->layers, l)) {
    oom(S);
    return -1;
  }
  const IrFunc *st = S->step;
  IrRef *args = arena_calloc(S->b.a, (size_t)st->inputs.n + 1, sizeof *args);
  if (!args) {
    oom(S);
    return -1;
  }
  SrcLoc loc = f->states.v[k].loc;
  for (int i = 0; i < f->inputs.n; i++) {
    IrNode in;
    memset(&in, 0, sizeof in);
    in.op = IR_INPUT;
    in.index = i;
    in.type = f->inputs.v[i].type;
    in.loc = f->inputs.v[i].loc;
    if ((args[i] = ir_emit(S->b.dst, S->b.a, &in, 0, NULL)) == IR_NONE) oom(S);
  }
  /* The values hoisted out of the step, once per token. */
  int at = f->inputs.n;
  for (int h = 0; h < hoisted.n; h++) args[at++] = map_node(S, hoisted.v[h]);
  /* The other states, as they are read: their values entering each step. */
  for (int j = 0; j < f->states.n; j++) {
    int mine = 0;
    for (int q = 0; q < n; q++) mine |= solved[q] == j;
    if (mine) continue;
    /* A state the group does not read (or reads only its initial value
     * of) passes that; the group's `given` states are solved already. */
    const RecState *rs = &S->rf->states[k];
    int given = 0;
    for (int g = 0; g < rs->ngiven; g++) given |= rs->given[g] == j;
    IrRef read = IR_NONE;
    for (IrRef r = 0; given && r < f->nodes.n && read == IR_NONE; r++)
      if (f->nodes.v[r].op == IR_STATE && f->nodes.v[r].index == j) read = map_node(S, r);
    args[at++] = read != IR_NONE ? read : S->state_in[j];
  }
  for (int q = 0; q < n; q++) args[at++] = S->state_in[solved[q]];
  IrNode call;
  memset(&call, 0, sizeof call);
  call.index = S->b.dst->layers.n - 1;
  call.type = f->states.v[solved[0]].type;
  IrRef c = pb_node(&S->b, IR_CALL, at, args, &call, loc);
  for (int q = 0; q < n && !S->b.failed; q++) {
    IrNode res;
    memset(&res, 0, sizeof res);
    res.index = q;
    res.type = call.type;
    IrRef seq = q == 0 ? c : pb_node(&S->b, IR_RESULT, 1, &c, &res, loc);
    if (S->b.failed) return -1;
    solved_state(S, solved[q], seq);
    S->map[f->states.v[solved[q]].next] = seq;
  }
  return S->b.failed ? -1 : 0;
}

/* Solves state k of class cls; 0, or -1 with S->why or S->b.failed. */
static int solve(Scan *S, int k, RecClass cls) {
  const IrFunc *f = S->b.src;
  const IrState *st = &f->states.v[k];
  SrcLoc loc = st->loc;
  switch (cls) {
  case REC_CARRIED:
    solved_state(S, k, IR_NONE);
    return S->b.failed ? -1 : 0;
  case REC_MAP: {
    IrRef seq = map_node(S, st->next);
    if (S->b.failed) return -1;
    solved_state(S, k, seq);
    S->map[st->next] = seq;
    return S->b.failed ? -1 : 0;
  }
  case REC_LIN_DIAG:
  case REC_LIN_MATRIX:
  case REC_MAXPLUS: {
    Ring ring = cls == REC_MAXPLUS ? RING_MAX_PLUS : RING_SUM_PRODUCT;
    Lin l;
    if (linearize(S, k, ring, &l)) return -1;
    IrRef seq;
    if (l.a == IR_NONE) { /* no term in the state after all: a map */
      seq = fit(S, l.b, st->type, loc);
    } else {
      IrRef a = l.a == LIN_ID ? pb_const(&S->b, ring == RING_MAX_PLUS ? 0.0 : 1.0, loc) : l.a;
      IrRef b =
          l.b != IR_NONE ? l.b : pb_const(&S->b, ring == RING_MAX_PLUS ? -INFINITY : 0.0, loc);
      IrRef args[3] = {a, fit(S, b, st->type, loc), S->state_in[k]};
      IrNode attrs;
      memset(&attrs, 0, sizeof attrs);
      attrs.index = k;
      seq = pb_node(&S->b, ring == RING_MAX_PLUS ? IR_SCAN_MAX : IR_SCAN, 3, args, &attrs, loc);
    }
    if (S->b.failed) return -1;
    solved_state(S, k, seq);
    S->map[st->next] = seq;
    return S->b.failed ? -1 : 0;
  }
  case REC_SHIFT:
    return solve_shift(S, k);
  case REC_LIN_DPLR:
    return solve_delta(S, k);
  case REC_LIN_SMALL_DENSE:
    return solve_transition(S, k);
  case REC_NONLINEAR:
    return solve_newton(S, k);
  default:
    S->why = arena_printf(S->b.a, "state %s is %s", st->name, classify_class_name(cls));
    return -1;
  }
}

/* ---- the cell ------------------------------------------------------------------ */

/* A model with src's signature (dims, params, inputs, outputs, states) and
 * no nodes yet. */
static IrFunc *new_model(IrModule *m, const IrFunc *src) {
  IrFunc *f = ir_func_new(m, src->name, IR_FN_MODEL, src->loc);
  if (!f) return NULL;
  ir_func_share_header(f, src);
  f->inputs = src->inputs;
  f->inputs.cap = f->inputs.n; /* shared with src, so never grown in place */
  for (int i = 0; i < src->states.n; i++)
    if (vec_push(m->arena, &f->states, src->states.v[i])) return NULL;
  for (int i = 0; i < src->outputs.n; i++)
    if (vec_push(m->arena, &f->outputs, src->outputs.v[i])) return NULL;
  return f;
}

int scan_cell(Arena *a, const IrFunc *cell, const RecFunc *rf, const NewtonOptions *no,
              IrFunc **out, IrFunc **step, const char **why, DiagEngine *de) {
  *out = NULL;
  *why = NULL;
  if (step) *step = NULL;
  Scan S;
  memset(&S, 0, sizeof S);
  S.rf = rf;
  S.newton = no;
  S.b.a = a;
  S.b.de = de;
  S.b.pass = "scan";
  S.b.src = cell;
  S.b.map = map_cb;
  S.b.ctx = &S;
  int nn = cell->nodes.n, ns = cell->states.n;
  S.map = arena_calloc(a, (size_t)nn + 1, sizeof *S.map);
  S.state_in = arena_calloc(a, (size_t)ns + 1, sizeof *S.state_in);
  S.solved = arena_calloc(a, (size_t)ns + 1, sizeof *S.solved);
  /* The model is built in a module of its own; scan_module takes it from
   * there into the module it makes. */
  IrModule *scratch = ir_module_new(a);
  if (!S.map || !S.state_in || !S.solved || !scratch || !(S.b.dst = new_model(scratch, cell))) {
    diag_error(de, cell->loc, "out of memory building the parallel form of %s", cell->name);
    return -1;
  }
  for (int i = 0; i < nn; i++) S.map[i] = IR_NONE;
  for (int k = 0; k < ns; k++) S.state_in[k] = build_state_in(&S, k);
  /* States in the order of their dependencies: a state is solved once the
   * states its update reads from other groups are. */
  for (int done = 0; done < ns && !S.b.failed;) {
    int progress = 0;
    for (int k = 0; k < ns; k++) {
      const RecState *rs = &rf->states[k];
      if (S.solved[k]) continue;
      int ready = 1;
      for (int g = 0; g < rs->ngiven; g++) ready &= S.solved[rs->given[g]];
      if (!ready) continue;
      if (rs->cls == REC_NONLINEAR) { /* the whole group at once */
        if (solve(&S, k, rs->cls)) goto fail;
        for (int j = 0; j < ns; j++) done += rf->states[j].group == rs->group;
        progress = 1;
        continue;
      }
      for (int j = 0; j < ns; j++)
        if (j != k && rf->states[j].group == rs->group) {
          S.why = arena_printf(a, "state %s is coupled with %s", cell->states.v[k].name,
                               cell->states.v[j].name);
          goto fail;
        }
      if (solve(&S, k, rs->cls)) goto fail;
      done++;
      progress = 1;
    }
    if (!progress) {
      diag_internal(de, "scan", "%s: the states' dependencies form a cycle", cell->name);
      return -1;
    }
  }
  for (int k = 0; k < ns && !S.b.failed; k++) {
    IrState *st = &S.b.dst->states.v[k];
    st->init = st->init >= 0 ? map_node(&S, cell->states.v[k].init) : IR_NONE;
  }
  for (int i = 0; i < cell->outputs.n && !S.b.failed; i++)
    S.b.dst->outputs.v[i].value = map_node(&S, cell->outputs.v[i].value);
  if (S.b.failed) return -1;
  *out = S.b.dst;
  if (step) *step = S.step;
  return 0;
fail:
  if (S.b.failed) return -1;
  *why = S.why ? S.why : "no parallel form";
  return 1;
}

/* Whether the plan runs every state of function fi in parallel. */
static int all_parallel(const StrategyPlan *plan, const IrFunc *f, int fi) {
  if (f->kind != IR_FN_CELL || f->states.n == 0) return 0;
  for (int k = 0; k < f->states.n; k++)
    if (plan->funcs[fi][k].form == FORM_SEQUENTIAL || plan->funcs[fi][k].form == FORM_AUTO)
      return 0;
  return 1;
}

int scan_module(Arena *a, const IrModule *m, const ClassifyResult *cr, const StrategyPlan *plan,
                IrModule **out, DiagEngine *de) {
  *out = NULL;
  IrModule *pm = ir_module_new(a), *scratch = ir_module_new(a);
  if (!pm || !scratch) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    return -1;
  }
  pm->entry = m->entry;
  /* Newton steps go after m's functions, so those keep their indices. */
  VEC(IrFunc *) steps = {0};
  for (int i = 0; i < m->funcs.n; i++) {
    IrFunc *f = m->funcs.v[i];
    if (all_parallel(plan, f, i)) {
      const char *why = NULL;
      IrFunc *par = NULL, *step = NULL;
      int rc = scan_cell(a, f, &cr->funcs[i], &plan->newton, &par, &step, &why, de);
      if (rc < 0) return -1;
      if (rc > 0) {
        diag_error(de, f->loc, "%s has no parallel form: %s", f->name, why);
        return -1;
      }
      /* Reads a state's form does not need (a delay of a scan only its
       * own next reads) go. */
      if (!(f = ir_func_prune(scratch, par))) {
        diag_error(de, (SrcLoc){0}, "out of memory");
        return -1;
      }
      if (step) {
        f->layers.v[0].callee = m->funcs.n + steps.n; /* layers are shared with par */
        if (vec_push(a, &steps, step)) {
          diag_error(de, (SrcLoc){0}, "out of memory");
          return -1;
        }
      }
    }
    if (vec_push(a, &pm->funcs, f)) {
      diag_error(de, (SrcLoc){0}, "out of memory");
      return -1;
    }
  }
  for (int i = 0; i < steps.n; i++)
    if (vec_push(a, &pm->funcs, steps.v[i])) {
      diag_error(de, (SrcLoc){0}, "out of memory");
      return -1;
    }
  *out = pm;
  return 0;
}
