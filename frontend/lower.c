/* lower.c - lowering bodies to IR: `step` blocks of cells and `forward`
 * blocks of models, and the state initializers, which share the expression
 * language. Each expression becomes hash-consed IR nodes whose types come
 * from ir_infer_type (the one place that knows every op's shape rule); a
 * shape error there becomes a diagnostic at the expression.
 *
 * A value that failed to lower is REF_ERROR. Everything that consumes one
 * returns REF_ERROR without a further message, and a name bound to it stays
 * bound, so one mistake gives one diagnostic.
 */
#include "frontend/sema.h"

#include <string.h>

static IrType type_of(const Lower *L, IrRef r) {
  return L->f->nodes.v[r].type;
}

/* ---- Emitting nodes ---------------------------------------------------------------- */

/* Emits op over args with the attributes in `attrs` (may be NULL). `verb`
 * names an elementwise binary operation for a friendlier broadcast message
 * ("cannot add [H] and [4*H]"); other failures report ir_infer_type's
 * reason. */
static IrRef emit(Lower *L, IrOp op, SrcLoc loc, int nargs, const IrRef *args, const IrNode *attrs,
                  const char *verb) {
  for (int i = 0; i < nargs; i++)
    if (args[i] < 0) return REF_ERROR;
  IrNode proto;
  if (attrs)
    proto = *attrs;
  else
    memset(&proto, 0, sizeof proto);
  proto.op = op;
  proto.loc = loc;
  char msg[512];
  IrRef r = ir_emit_typed(L->f, L->a, &proto, nargs, args, msg, sizeof msg);
  if (r == IR_NONE && msg[0]) {
    int has_int = 0;
    for (int i = 0; i < nargs; i++) has_int |= type_of(L, args[i]).elem == IR_INT;
    if (verb && nargs == 2 && !has_int)
      diag_error(L->de, loc, "cannot %s %s and %s", verb, sema_type_str(L, type_of(L, args[0])),
                 sema_type_str(L, type_of(L, args[1])));
    else
      diag_error(L->de, loc, "%s", msg);
    return REF_ERROR;
  }
  if (r == IR_NONE) {
    sema_oom(L->S);
    return REF_ERROR;
  }
  return r;
}

static IrRef emit1(Lower *L, IrOp op, SrcLoc loc, IrRef x) {
  return emit(L, op, loc, 1, &x, NULL, NULL);
}

static IrRef emit2(Lower *L, IrOp op, SrcLoc loc, IrRef x, IrRef y, const char *verb) {
  IrRef args[2] = {x, y};
  return emit(L, op, loc, 2, args, NULL, verb);
}

IrRef lower_const(Lower *L, double v, SrcLoc loc) {
  IrNode attrs = {0};
  attrs.cval = v;
  return emit(L, IR_CONST, loc, 0, NULL, &attrs, NULL);
}

static IrRef emit_leaf(Lower *L, IrOp op, int index, SrcLoc loc) {
  IrNode attrs = {0};
  attrs.index = index;
  return emit(L, op, loc, 0, NULL, &attrs, NULL);
}

/* Emits a node whose result type is given rather than inferred from the
 * operands alone (BROADCAST, RESHAPE). */
static IrRef emit_to_type(Lower *L, IrOp op, SrcLoc loc, IrRef x, IrType t) {
  IrNode attrs = {0};
  attrs.type = t;
  return emit(L, op, loc, 1, &x, &attrs, NULL);
}

static IrRef emit_axis(Lower *L, IrOp op, SrcLoc loc, int nargs, const IrRef *args, int axis) {
  IrNode attrs = {0};
  attrs.axis = axis;
  return emit(L, op, loc, nargs, args, &attrs, NULL);
}

static IrRef emit_slice(Lower *L, SrcLoc loc, IrRef x, int axis, DimExpr start, DimExpr stop) {
  IrNode attrs = {0};
  attrs.axis = axis;
  attrs.start = start;
  attrs.stop = stop;
  return emit(L, IR_SLICE, loc, 1, &x, &attrs, NULL);
}

/* x with a unit axis inserted before axis `at` (x[:, None] has at = 1). */
static IrRef insert_unit_axis(Lower *L, SrcLoc loc, IrRef x, int at) {
  if (x < 0) return REF_ERROR;
  IrType t = type_of(L, x);
  if (t.rank + 1 > SEQ_MAX_RANK) {
    diag_error(L->de, loc, "a value may have at most %d dimensions", SEQ_MAX_RANK);
    return REF_ERROR;
  }
  DimExpr dims[SEQ_MAX_RANK];
  for (int i = 0, k = 0; i <= t.rank; i++) dims[i] = i == at ? dim_const(1) : t.dims[k++];
  IrType nt = ir_type(L->a, t.elem, t.rank + 1, dims);
  return emit_to_type(L, IR_RESHAPE, loc, x, nt);
}

/* Makes v the type t: a real value becomes complex with a zero imaginary
 * part, then NumPy broadcasting stretches it. `what` names v in errors. */
IrRef lower_broadcast_to(Lower *L, IrRef v, IrType t, SrcLoc loc, const char *what) {
  if (v < 0) return REF_ERROR;
  IrType vt = type_of(L, v);
  if (ir_type_eq(vt, t)) return v;
  if (vt.elem == IR_REAL && t.elem == IR_COMPLEX) {
    v = emit2(L, IR_CPLX, loc, v, lower_const(L, 0.0, loc), NULL);
    if (v < 0) return REF_ERROR;
    vt = type_of(L, v);
    if (ir_type_eq(vt, t)) return v;
  }
  IrNode attrs = {0};
  attrs.op = IR_BROADCAST;
  attrs.type = t;
  IrType out;
  if (ir_infer_type(L->f, L->a, &attrs, 1, &v, &out, NULL, 0)) {
    diag_error(L->de, loc, "%s has shape %s, which cannot be broadcast to %s", what,
               sema_type_str(L, vt), sema_type_str(L, t));
    return REF_ERROR;
  }
  return emit_to_type(L, IR_BROADCAST, loc, v, t);
}

/* ---- Names ----------------------------------------------------------------------- */

/* Inside a def body only the def's own parameters are bound: the caller's
 * locals (below fn_env_base) are out of sight. */
static const Binding *find_binding(const Lower *L, const char *name) {
  for (int i = L->env.n - 1; i >= L->fn_env_base; i--)
    if (strcmp(L->env.v[i].name, name) == 0) return &L->env.v[i];
  return NULL;
}

static int bind(Lower *L, const char *name, IrRef ref, int layer) {
  Binding b = {name, ref, layer, 0, 0};
  if (vec_push(L->a, &L->env, b)) {
    sema_oom(L->S);
    return -1;
  }
  return 0;
}

static IrRef state_ref(Lower *L, int i) {
  if (L->states.v[i].read < 0) {
    L->states.v[i].read = emit_leaf(L, IR_STATE, i, L->f->states.v[i].loc);
  }
  return L->states.v[i].read;
}

/* Every name a body could mean, for "did you mean" suggestions. */
static const char **visible_names(Lower *L, int *n) {
  const IrFunc *f = L->f;
  int cap = L->env.n + f->params.n + f->inputs.n + f->states.n + L->nsig + 1;
  const char **v = arena_calloc(L->a, (size_t)cap, sizeof *v);
  int k = 0;
  if (v) {
    for (int i = 0; i < L->env.n; i++) v[k++] = L->env.v[i].name;
    for (int i = 0; i < f->states.n; i++)
      if (!f->states.v[i].hidden) v[k++] = f->states.v[i].name;
    for (int i = 0; i < f->inputs.n; i++) v[k++] = f->inputs.v[i].name;
    for (int i = 0; i < f->params.n; i++) v[k++] = f->params.v[i].name;
    for (int i = 0; i < L->nsig; i++) v[k++] = f->dims.v[i].name;
  }
  *n = k;
  return v;
}

static void unknown_name(Lower *L, SrcLoc loc, const char *name, const char *hint) {
  int n;
  const char **cands = visible_names(L, &n);
  const char *s = cands ? sema_suggest(name, cands, n) : NULL;
  if (s)
    diag_error(L->de, loc, "unknown name '%s' (did you mean '%s'?)", name, s);
  else
    diag_error(L->de, loc, "unknown name '%s'%s", name, hint ? hint : "");
}

/* A state initializer runs before the first step: inputs and states do not
 * exist yet. */
static IrRef not_in_init(Lower *L, SrcLoc loc, const char *name, const char *kind) {
  diag_error(L->de, loc,
             "the initial value of state '%s' may only use params, dims and constants; '%s' is "
             "%s",
             L->init_state, name, kind);
  return REF_ERROR;
}

/* Position grid_j of a grid cell's row value r ([Y, ...] -> [...]). */
static IrRef grid_at(Lower *L, IrRef r, SrcLoc loc) {
  IrNode attrs = {0};
  attrs.axis = 0;
  attrs.start = dim_const(L->grid_j);
  return emit(L, IR_INDEX, loc, 1, &r, &attrs, NULL);
}

/* name = path ["'"]. Lookup order: let-bound locals, states, inputs, params
 * (a dotted path is one param name), then dims (a real scalar). */
static IrRef lower_name(Lower *L, const AstExpr *e) {
  const char *name = sema_path_str(L->a, &e->path);
  if (!name) {
    sema_oom(L->S);
    return REF_ERROR;
  }
  int i, kind = sema_find_decl(L, name, &i);
  if (L->fn_stack.n > 0) {
    /* A function sees its parameters, and, when defined in a unit, the
     * unit's params and dims: what is the same at every call. */
    const AstDecl *fn = L->fn_stack.v[L->fn_stack.n - 1];
    const Binding *b = e->path.nparts == 1 && !e->primed ? find_binding(L, name) : NULL;
    if (!b && (e->primed || (kind != DECL_NONE && (kind != DECL_PARAM || L->fn_toplevel)))) {
      static const char *const what[] = {"",        "a param",   "an input",
                                         "a state", "an output", "a layer"};
      diag_error(L->de, e->loc, "function '%s' may only use its parameters%s; '%s%s' is %s",
                 fn->name.parts[0],
                 L->fn_toplevel ? " (it is defined outside any unit)" : ", params and dims", name,
                 e->primed ? "'" : "", e->primed ? "a new state value" : what[kind]);
      return REF_ERROR;
    }
  }
  if (e->primed) {
    if (kind != DECL_STATE) {
      diag_error(L->de, e->loc, "'%s' is not a state; only a state can be primed", name);
      return REF_ERROR;
    }
    if (L->mode == MODE_INIT) return not_in_init(L, e->loc, name, "a state");
    if (L->states.v[i].next == IR_NONE) {
      diag_error(L->de, e->loc, "%s' is read before it is assigned", name);
      return REF_ERROR;
    }
    return L->states.v[i].next;
  }
  if (e->path.nparts == 1) {
    const Binding *b = find_binding(L, name);
    if (b && b->layer >= 0) {
      diag_error(L->de, e->loc, "'%s' is a layer; call it: %s(...)", name, name);
      return REF_ERROR;
    }
    if (b && b->is_index) return lower_const(L, (double)b->index, e->loc);
    if (b) return b->ref;
  }
  switch (kind) {
  case DECL_STATE:
    if (L->mode == MODE_INIT) return not_in_init(L, e->loc, name, "a state");
    if (L->grid) {
      diag_error(L->de, e->loc,
                 "a grid cell's step reads state '%s' at a neighbour: up(%s) (the position above) "
                 "or left(%s) (the position before)",
                 name, name, name);
      return REF_ERROR;
    }
    return L->states.v[i].bad ? REF_ERROR : state_ref(L, i);
  case DECL_INPUT:
    if (L->mode == MODE_INIT) return not_in_init(L, e->loc, name, "an input");
    if (L->f->inputs.v[i].context && L->f->inputs.v[i].type.elem == IR_INT && !L->int_context_ok) {
      diag_error(L->de, e->loc,
                 "int context '%s' can only give a layer's lengths: layer(..., lengths=%s)", name,
                 name);
      return REF_ERROR;
    }
    if (L->bad_inputs.v[i]) return REF_ERROR;
    if (L->grid && !L->f->inputs.v[i].context) /* this position of the row */
      return grid_at(L, emit_leaf(L, IR_INPUT, i, e->loc), e->loc);
    return emit_leaf(L, IR_INPUT, i, e->loc);
  case DECL_PARAM:
    return L->bad_params.v[i] ? REF_ERROR : emit_leaf(L, IR_PARAM, i, e->loc);
  case DECL_OUTPUT:
    diag_error(L->de, e->loc,
               "output '%s' cannot be read; bind its value with let and assign that instead", name);
    return REF_ERROR;
  case DECL_LAYER:
    if (L->layer_decls.v[i].failed) return REF_ERROR;
    diag_error(L->de, e->loc, "'%s' is a layer; call it: %s(...)", name, name);
    return REF_ERROR;
  default:
    break;
  }
  for (int d = 0; d < L->nsig; d++) {
    if (strcmp(L->f->dims.v[d].name, name) == 0) {
      IrNode attrs = {0};
      attrs.dval = dim_var(d);
      return emit(L, IR_DIMVAL, e->loc, 0, NULL, &attrs, NULL);
    }
  }
  unknown_name(L, e->loc, name, NULL);
  return REF_ERROR;
}

/* ---- Calls ----------------------------------------------------------------------- */

/* The values of one expression: one, or several (split, a layer with several
 * outputs). */
typedef struct Tuple {
  int n;
  IrRef *refs;
} Tuple;

typedef struct CallArgs {
  const AstExpr *call;
  const char *name;
  int npos;
  const AstExpr **pos;
  const AstExpr *axis;  /* axis=k, or NULL */
  const AstExpr *eps;   /* eps=x, or NULL */
  const AstExpr *scale; /* scale=x, or NULL */
} CallArgs;

enum { KW_AXIS = 1, KW_EPS = 2, KW_SCALE = 4 };

typedef struct Builtin Builtin;
struct Builtin {
  const char *name;
  int min_args, max_args; /* max_args -1: any number */
  unsigned kwargs;
  IrOp op;
  double eps; /* default eps */
  int (*lower)(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out);
};

static int one(Lower *L, Tuple *out, IrRef r) {
  out->n = 1;
  out->refs = arena_alloc(L->a, sizeof *out->refs);
  if (!out->refs) {
    sema_oom(L->S);
    return -1;
  }
  out->refs[0] = r;
  return r < 0 ? -1 : 0;
}

/* An integer constant written as a literal, possibly negated (axis=-1). */
static int const_int(const AstExpr *e, int64_t *out) {
  int neg = 0;
  while (e->kind == AST_UNARY && (e->op == '-' || e->op == '+')) {
    neg ^= e->op == '-';
    e = e->lhs;
  }
  if (e->kind != AST_NUM || !e->is_int || e->num > 1e9) return -1;
  *out = neg ? -(int64_t)e->num : (int64_t)e->num;
  return 0;
}

/* The axis=k keyword for a value of rank `rank`; negative k counts from the
 * end. `dflt` is used when absent. Returns -2 after reporting. */
static int get_axis(Lower *L, const CallArgs *c, int rank, int dflt) {
  if (!c->axis) return dflt;
  int64_t k;
  if (const_int(c->axis, &k)) {
    diag_error(L->de, c->axis->loc, "axis must be an integer constant");
    return -2;
  }
  if (k < -rank || k >= rank) {
    diag_error(L->de, c->axis->loc, "axis %lld is out of range for a value of rank %d",
               (long long)k, rank);
    return -2;
  }
  return (int)(k < 0 ? k + rank : k);
}

static int get_eps(Lower *L, const Builtin *b, const CallArgs *c, double *out) {
  *out = b->eps;
  if (!c->eps) return 0;
  if (c->eps->kind != AST_NUM || !(c->eps->num >= 0)) {
    diag_error(L->de, c->eps->loc, "eps must be a non-negative number");
    return -1;
  }
  *out = c->eps->num;
  return 0;
}

/* Lowers the positional arguments in order; -1 if any failed. */
static int lower_args(Lower *L, const CallArgs *c, IrRef *refs) {
  int bad = 0;
  for (int i = 0; i < c->npos; i++) {
    refs[i] = lower_expr(L, c->pos[i]);
    bad |= refs[i] < 0;
  }
  return bad ? -1 : 0;
}

/* exp(x), tanh(x), real(z), transpose(A), softmax(x), ... */
static int lower_unary_fn(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrRef x = lower_expr(L, c->pos[0]);
  return one(L, out, emit1(L, b->op, c->call->loc, x));
}

/* min/max with two arguments are elementwise; with one they reduce (AMIN,
 * AMAX), like sum and mean. */
static int lower_reduce(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrRef args[2];
  if (c->npos == 2) {
    if (c->axis) {
      diag_error(L->de, c->axis->loc, "%s of two values takes no axis", b->name);
      return one(L, out, REF_ERROR);
    }
    if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
    IrOp op = strcmp(b->name, "min") == 0 ? IR_MIN : IR_MAX;
    return one(L, out, emit2(L, op, c->call->loc, args[0], args[1], NULL));
  }
  IrRef x = lower_expr(L, c->pos[0]);
  if (x < 0) return one(L, out, REF_ERROR);
  int axis = get_axis(L, c, type_of(L, x).rank, -1);
  if (axis == -2) return one(L, out, REF_ERROR);
  return one(L, out, emit_axis(L, b->op, c->call->loc, 1, &x, axis));
}

static int lower_binary_fn(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrRef args[2];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  return one(L, out, emit2(L, b->op, c->call->loc, args[0], args[1], NULL));
}

/* lt(a, b), le(a, b): 1.0 where the comparison holds, else 0.0; gt(a, b)
 * and ge(a, b) are lt(b, a) and le(b, a), so a NaN gives 0 in all four. */
static int lower_compare(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrRef args[2];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  int swap = b->name[0] == 'g';
  return one(L, out, emit2(L, b->op, c->call->loc, args[swap], args[1 - swap], "compare"));
}

/* dot(a, b) = sum(a * b) over two vectors of one shape. */
static int lower_dot(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  IrRef args[2];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  IrType x = type_of(L, args[0]), y = type_of(L, args[1]);
  if (x.rank != 1 || y.rank != 1 || !dim_eq(x.dims[0], y.dims[0])) {
    diag_error(L->de, c->call->loc, "dot needs two vectors of the same length, got %s and %s",
               sema_type_str(L, x), sema_type_str(L, y));
    return one(L, out, REF_ERROR);
  }
  IrRef prod = emit2(L, IR_MUL, c->call->loc, args[0], args[1], "multiply");
  return one(L, out, emit_axis(L, IR_SUM, c->call->loc, 1, &prod, -1));
}

/* rmsnorm(x[, w]), layernorm(x[, w, b]), l2norm(x): a missing weight is 1 and
 * a missing bias 0, so each op has a fixed arity. */
static int lower_norm(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrRef args[3];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  int arity = ir_op_info[b->op].arity;
  if (arity >= 2 && c->npos < 2) args[1] = lower_const(L, 1.0, c->call->loc);
  if (arity >= 3 && c->npos < 3) args[2] = lower_const(L, 0.0, c->call->loc);
  IrNode attrs = {0};
  if (get_eps(L, b, c, &attrs.cval)) return one(L, out, REF_ERROR);
  return one(L, out, emit(L, b->op, c->call->loc, arity, args, &attrs, NULL));
}

/* concat(a, b, ..., axis=k): along the last axis unless told. */
static int lower_concat(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  IrRef *args = arena_calloc(L->a, (size_t)c->npos, sizeof *args);
  if (!args) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  int rank = type_of(L, args[0]).rank;
  if (rank == 0) {
    diag_error(L->de, sema_expr_start(c->pos[0]),
               "concat needs values with at least one axis, not a scalar");
    return one(L, out, REF_ERROR);
  }
  int axis = get_axis(L, c, rank, rank - 1);
  if (axis == -2) return one(L, out, REF_ERROR);
  return one(L, out, emit_axis(L, IR_CONCAT, c->call->loc, c->npos, args, axis));
}

/* split(x, n) cuts an axis into n equal parts; split(x, [d1, d2, ...]) into
 * parts of the given sizes. Each part is a SLICE. */
static int lower_split(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  IrRef x = lower_expr(L, c->pos[0]);
  if (x < 0) return one(L, out, REF_ERROR);
  IrType t = type_of(L, x);
  if (t.rank == 0) {
    diag_error(L->de, sema_expr_start(c->pos[0]), "cannot split a scalar");
    return one(L, out, REF_ERROR);
  }
  int axis = get_axis(L, c, t.rank, t.rank - 1);
  if (axis == -2) return one(L, out, REF_ERROR);
  DimExpr size = t.dims[axis];
  const AstExpr *how = c->pos[1];
  int n;
  DimExpr *sizes;
  if (how->kind == AST_LIST) {
    n = how->nargs;
    sizes = arena_calloc(L->a, (size_t)n + 1, sizeof *sizes);
    if (!sizes) {
      sema_oom(L->S);
      return one(L, out, REF_ERROR);
    }
    DimExpr total = dim_const(0);
    for (int i = 0; i < n; i++) {
      if (sema_dim_expr(L, how->args[i], &sizes[i])) return one(L, out, REF_ERROR);
      if (dim_add(total, sizes[i], &total)) {
        diag_error(L->de, how->loc, "split sizes are too complex to add up");
        return one(L, out, REF_ERROR);
      }
    }
    if (n == 0 || !dim_eq(total, size)) {
      IrType tt = {IR_REAL, 1, &total};
      IrType ts = {IR_REAL, 1, &size};
      diag_error(L->de, how->loc, "split sizes add up to %s, but axis %d of %s has size %s",
                 sema_type_str(L, tt), axis, sema_type_str(L, t), sema_type_str(L, ts));
      return one(L, out, REF_ERROR);
    }
  } else {
    DimExpr ne;
    int64_t k;
    if (sema_dim_expr(L, how, &ne)) return one(L, out, REF_ERROR);
    if (!dim_is_const(ne, &k) || k < 1 || k > 4096) {
      diag_error(L->de, how->loc, "the number of parts must be an integer between 1 and 4096");
      return one(L, out, REF_ERROR);
    }
    DimExpr part;
    if (dim_div_exact(size, k, &part)) {
      diag_error(L->de, c->call->loc, "cannot split %s into %lld equal parts%s",
                 sema_type_str(L, t), (long long)k, t.rank > 1 ? " along that axis" : "");
      return one(L, out, REF_ERROR);
    }
    n = (int)k;
    sizes = arena_calloc(L->a, (size_t)n, sizeof *sizes);
    if (!sizes) {
      sema_oom(L->S);
      return one(L, out, REF_ERROR);
    }
    for (int i = 0; i < n; i++) sizes[i] = part;
  }
  out->n = n;
  out->refs = arena_calloc(L->a, (size_t)n, sizeof *out->refs);
  if (!out->refs) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  DimExpr start = dim_const(0);
  for (int i = 0; i < n; i++) {
    DimExpr stop;
    if (dim_add(start, sizes[i], &stop)) {
      diag_error(L->de, how->loc, "split sizes are too complex to add up");
      return one(L, out, REF_ERROR);
    }
    out->refs[i] = n == 1 ? x : emit_slice(L, c->call->loc, x, axis, start, stop);
    if (out->refs[i] < 0) return -1;
    start = stop;
  }
  return 0;
}

/* causal_conv(u, w, b): a depthwise convolution over the last K steps.
 * In a model it is one op over the sequence. In a cell, which sees one step,
 * it keeps the previous K-1 inputs as a hidden state `conv<N>.window`
 * ([D, K-1], zero before the start):
 *   y       = sum(concat(window, u[:, None], axis=1) * w, axis=1) + b
 *   window' = concat(window[:, 1:], u[:, None], axis=1)
 * so the recurrence is visible to later passes like any other state. */
static int lower_causal_conv(Lower *L, const Builtin *bi, const CallArgs *c, Tuple *out) {
  (void)bi;
  SrcLoc loc = c->call->loc;
  IrRef args[3];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  if (L->mode == MODE_INIT) {
    diag_error(L->de, loc, "causal_conv cannot be used in a state's initial value");
    return one(L, out, REF_ERROR);
  }
  if (L->grid) {
    diag_error(L->de, loc, "causal_conv runs along a sequence, not in a grid cell's step");
    return one(L, out, REF_ERROR);
  }
  /* The op's own type rule checks the shapes in both cases. */
  IrNode check = {0};
  check.op = IR_CAUSAL_CONV;
  IrType yt;
  char msg[512];
  if (ir_infer_type(L->f, L->a, &check, 3, args, &yt, msg, sizeof msg)) {
    diag_error(L->de, loc, "%s", msg);
    return one(L, out, REF_ERROR);
  }
  IrRef u = args[0], w = args[1], b = args[2];
  IrType wt = type_of(L, w);
  DimExpr D = wt.dims[0], K = wt.dims[wt.rank - 1];
  if (wt.rank == 3) {
    DimExpr dk[2] = {D, K};
    w = emit_to_type(L, IR_RESHAPE, loc, w, ir_type(L->a, IR_REAL, 2, dk));
  }
  if (L->mode == MODE_FORWARD) {
    IrRef a3[3] = {u, w, b};
    return one(L, out, emit(L, IR_CAUSAL_CONV, loc, 3, a3, NULL, NULL));
  }

  IrRef ucol = insert_unit_axis(L, loc, u, 1); /* [D, 1] */
  DimExpr Km1;
  int64_t kc;
  if (dim_sub(K, dim_const(1), &Km1)) {
    diag_error(L->de, loc, "causal_conv: kernel size too complex");
    return one(L, out, REF_ERROR);
  }
  IrRef taps = ucol; /* [D, K]: the window followed by the current input */
  if (!(dim_is_const(K, &kc) && kc == 1)) {
    DimExpr wd[2] = {D, Km1};
    IrState st = {0};
    st.name = arena_printf(L->a, "conv%d.window", L->nconv++);
    st.type = ir_type(L->a, IR_REAL, 2, wd);
    st.loc = loc;
    st.init = IR_NONE;
    st.next = IR_NONE;
    st.hidden = 1;
    StateSlot slot = {IR_NONE, IR_NONE, loc, NULL, 0};
    if (!st.name || st.type.rank != 2 || vec_push(L->a, &L->f->states, st) ||
        vec_push(L->a, &L->states, slot)) {
      sema_oom(L->S);
      return one(L, out, REF_ERROR);
    }
    int si = L->f->states.n - 1;
    L->f->states.v[si].init = lower_broadcast_to(L, lower_const(L, 0.0, loc), st.type, loc, "0");
    IrRef window = state_ref(L, si);
    IrRef cat[2] = {window, ucol};
    taps = emit_axis(L, IR_CONCAT, loc, 2, cat, 1);
    IrRef next = ucol;
    if (!(dim_is_const(Km1, &kc) && kc == 1)) {
      IrRef older = emit_slice(L, loc, window, 1, dim_const(1), Km1);
      IrRef cat2[2] = {older, ucol};
      next = emit_axis(L, IR_CONCAT, loc, 2, cat2, 1);
    }
    L->states.v[si].next = next;
    L->f->states.v[si].next = next;
  }
  IrRef prod = emit2(L, IR_MUL, loc, taps, w, "multiply");
  IrRef y = emit_axis(L, IR_SUM, loc, 1, &prod, 1);
  return one(L, out, emit2(L, IR_ADD, loc, y, b, "add"));
}

/* reshape(x, [d1, d2, ...]): the same elements, in the same (row-major)
 * order, under a new shape of dim expressions. The element counts must be
 * equal as polynomials, so the check holds for every value of the dims. */
static int lower_reshape(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  IrRef x = lower_expr(L, c->pos[0]);
  const AstExpr *how = c->pos[1];
  if (how->kind != AST_LIST) {
    diag_error(L->de, how->loc, "reshape takes the new shape as a list: reshape(x, [d1, d2, ...])");
    return one(L, out, REF_ERROR);
  }
  if (x < 0) return one(L, out, REF_ERROR);
  IrType t = type_of(L, x);
  if (t.elem == IR_INT) {
    diag_error(L->de, sema_expr_start(c->pos[0]), "an int token cannot be reshaped");
    return one(L, out, REF_ERROR);
  }
  if (how->nargs > SEQ_MAX_RANK) {
    diag_error(L->de, how->loc, "a value may have at most %d dimensions", SEQ_MAX_RANK);
    return one(L, out, REF_ERROR);
  }
  DimExpr dims[SEQ_MAX_RANK], have = dim_const(1), want = dim_const(1);
  for (int i = 0; i < how->nargs; i++) {
    int64_t v;
    if (sema_dim_expr(L, how->args[i], &dims[i])) return one(L, out, REF_ERROR);
    if (dim_is_const(dims[i], &v) && (v < 0 || v > SEQ_MAX_DIM_VALUE)) {
      diag_error(L->de, how->args[i]->loc, "dimension %lld is out of range", (long long)v);
      return one(L, out, REF_ERROR);
    }
  }
  IrType nt = ir_type(L->a, t.elem, how->nargs, dims);
  if (ir_type_same_sizes(t, nt)) goto same;
  for (int i = 0; i < how->nargs; i++)
    if (dim_mul(want, dims[i], &want)) goto too_complex;
  for (int i = 0; i < t.rank; i++)
    if (dim_mul(have, t.dims[i], &have)) goto too_complex;
  if (!dim_eq(have, want)) {
    IrType th = {IR_REAL, 1, &have}, tw = {IR_REAL, 1, &want};
    const char *sh = sema_type_str(L, th), *sw = sema_type_str(L, tw);
    diag_error(L->de, c->call->loc, "cannot reshape %s to %s: they have %.*s and %.*s elements",
               sema_type_str(L, t), sema_type_str(L, nt), (int)strlen(sh) - 2, sh + 1,
               (int)strlen(sw) - 2, sw + 1);
    return one(L, out, REF_ERROR);
  }
same:
  if (ir_type_eq(nt, t)) return one(L, out, x);
  return one(L, out, emit_to_type(L, IR_RESHAPE, c->call->loc, x, nt));
too_complex:
  diag_error(L->de, c->call->loc, "reshape: element count too complex to compare");
  return one(L, out, REF_ERROR);
}

/* elu(x) with alpha 1: x for x > 0, exp(x) - 1 otherwise, written without a
 * select as max(x, 0) + exp(min(x, 0)) - 1. */
/* causal_attention(q, k, v, scale=x): over the whole sequence, so only in a
 * model's forward block (a cell's step sees one token, and what attention
 * keeps of the past grows with it). */
static int lower_attention(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  SrcLoc loc = c->call->loc;
  IrRef args[3];
  if (lower_args(L, c, args)) return one(L, out, REF_ERROR);
  if (L->mode != MODE_FORWARD) {
    diag_error(L->de, loc,
               "causal_attention reads every earlier token of the sequence: use it in a model's "
               "forward block, not in %s",
               L->mode == MODE_INIT ? "a state's initial value" : "a cell's step");
    return one(L, out, REF_ERROR);
  }
  IrNode attrs = {0};
  if (c->scale) {
    double s = 0;
    if (c->scale->kind == AST_NUM)
      s = c->scale->num;
    else if (c->scale->kind == AST_UNARY && c->scale->op == '-' && c->scale->lhs->kind == AST_NUM)
      s = -c->scale->lhs->num;
    else {
      diag_error(L->de, c->scale->loc, "scale must be a number");
      return one(L, out, REF_ERROR);
    }
    attrs.cval = s;
    attrs.index = 1;
  }
  return one(L, out, emit(L, b->op, loc, 3, args, &attrs, NULL));
}

/* grad(loss, M): the derivative of a real scalar with respect to a state
 * (its value entering the step), an input or a param, built by ir_grad as
 * ordinary nodes. M must name one of those: a let-bound value would be one
 * node among equal ones (nodes are shared), so what "holding the rest
 * fixed" means would depend on how the step was written. */
static int lower_grad(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  const AstExpr *m = c->pos[1];
  IrRef loss = lower_expr(L, c->pos[0]);
  if (m->kind != AST_NAME || m->primed) {
    diag_error(L->de, sema_expr_start(m),
               "grad differentiates with respect to a state, an input or a param: name one");
    return one(L, out, REF_ERROR);
  }
  IrRef wrt = lower_expr(L, m);
  if (loss < 0 || wrt < 0) return one(L, out, REF_ERROR);
  IrOp op = L->f->nodes.v[wrt].op;
  const char *name = sema_path_str(L->a, &m->path);
  if (!name) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  if (op != IR_STATE && op != IR_INPUT && op != IR_PARAM) {
    diag_error(L->de, m->loc,
               "grad differentiates with respect to a state, an input or a param, and '%s' is a "
               "computed value",
               name);
    return one(L, out, REF_ERROR);
  }
  IrRef r = ir_grad(L->f, L->a, loss, wrt, name, c->call->loc, L->de);
  return one(L, out, r == IR_NONE ? REF_ERROR : r);
}

/* up(h), left(h): in a grid cell's step, state h at the position above
 * (the previous row's value, the state entering the step) or at the one
 * before in the row (its value there, h's initial value at the row's
 * start). */
static int lower_grid_read(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  const AstExpr *e = c->pos[0];
  int up = strcmp(b->name, "up") == 0, i;
  if (L->mode == MODE_INIT) {
    diag_error(L->de, c->call->loc,
               "%s() reads a neighbour's state in a grid cell's step; the initial value of state "
               "'%s' may only use params, dims and constants",
               b->name, L->init_state);
    return one(L, out, REF_ERROR);
  }
  if (!L->grid) {
    diag_error(L->de, c->call->loc, "%s() reads a neighbour's state, in a grid cell's step only",
               b->name);
    return one(L, out, REF_ERROR);
  }
  const char *name = e->kind == AST_NAME && !e->primed ? sema_path_str(L->a, &e->path) : NULL;
  if (!name || sema_find_decl(L, name, &i) != DECL_STATE ||
      (e->path.nparts == 1 && find_binding(L, name))) {
    diag_error(L->de, sema_expr_start(e), "%s() takes a state's name", b->name);
    return one(L, out, REF_ERROR);
  }
  if (L->states.v[i].bad) return one(L, out, REF_ERROR);
  if (up) return one(L, out, grid_at(L, state_ref(L, i), c->call->loc));
  if (L->grid_j == 0) return one(L, out, L->grid_border[i]);
  if (L->grid_left[i] == IR_NONE) {
    diag_error(L->de, c->call->loc,
               "left(%s) reads %s' at the position before, and the step never assigns %s'", name,
               name, name);
    return one(L, out, REF_ERROR);
  }
  return one(L, out, L->grid_left[i]);
}

/* eye(n): the n x n identity, n a dim expression. */
static int lower_eye(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  IrNode attrs = {0};
  if (sema_dim_expr(L, c->pos[0], &attrs.dval)) return one(L, out, REF_ERROR);
  return one(L, out, emit(L, b->op, c->call->loc, 0, NULL, &attrs, NULL));
}

static int lower_elu(Lower *L, const Builtin *b, const CallArgs *c, Tuple *out) {
  (void)b;
  SrcLoc loc = c->call->loc;
  IrRef x = lower_expr(L, c->pos[0]);
  if (x < 0) return one(L, out, REF_ERROR);
  IrRef zero = lower_const(L, 0.0, loc);
  IrRef pos = emit2(L, IR_MAX, loc, x, zero, NULL);
  IrRef neg = emit1(L, IR_EXP, loc, emit2(L, IR_MIN, loc, x, zero, NULL));
  IrRef sum = emit2(L, IR_ADD, loc, pos, neg, "add");
  return one(L, out, emit2(L, IR_SUB, loc, sum, lower_const(L, 1.0, loc), "subtract"));
}

static const Builtin builtins[] = {
    {"exp", 1, 1, 0, IR_EXP, 0, lower_unary_fn},
    {"log", 1, 1, 0, IR_LOG, 0, lower_unary_fn},
    {"tanh", 1, 1, 0, IR_TANH, 0, lower_unary_fn},
    {"sigmoid", 1, 1, 0, IR_SIGMOID, 0, lower_unary_fn},
    {"logsigmoid", 1, 1, 0, IR_LOGSIGMOID, 0, lower_unary_fn},
    {"softplus", 1, 1, 0, IR_SOFTPLUS, 0, lower_unary_fn},
    {"relu", 1, 1, 0, IR_RELU, 0, lower_unary_fn},
    {"silu", 1, 1, 0, IR_SILU, 0, lower_unary_fn},
    {"gelu", 1, 1, 0, IR_GELU, 0, lower_unary_fn},
    {"sqrt", 1, 1, 0, IR_SQRT, 0, lower_unary_fn},
    {"rsqrt", 1, 1, 0, IR_RSQRT, 0, lower_unary_fn},
    {"abs", 1, 1, 0, IR_ABS, 0, lower_unary_fn},
    {"sin", 1, 1, 0, IR_SIN, 0, lower_unary_fn},
    {"cos", 1, 1, 0, IR_COS, 0, lower_unary_fn},
    {"real", 1, 1, 0, IR_RE, 0, lower_unary_fn},
    {"imag", 1, 1, 0, IR_IM, 0, lower_unary_fn},
    {"conj", 1, 1, 0, IR_CONJ, 0, lower_unary_fn},
    {"transpose", 1, 1, 0, IR_TRANSPOSE, 0, lower_unary_fn},
    {"softmax", 1, 1, 0, IR_SOFTMAX, 0, lower_unary_fn},
    {"pow", 2, 2, 0, IR_POW, 0, lower_binary_fn},
    {"lt", 2, 2, 0, IR_LT, 0, lower_compare},
    {"le", 2, 2, 0, IR_LE, 0, lower_compare},
    {"gt", 2, 2, 0, IR_LT, 0, lower_compare},
    {"ge", 2, 2, 0, IR_LE, 0, lower_compare},
    {"complex", 2, 2, 0, IR_CPLX, 0, lower_binary_fn},
    {"outer", 2, 2, 0, IR_OUTER, 0, lower_binary_fn},
    {"dot", 2, 2, 0, IR_SUM, 0, lower_dot},
    {"sum", 1, 1, KW_AXIS, IR_SUM, 0, lower_reduce},
    {"mean", 1, 1, KW_AXIS, IR_MEAN, 0, lower_reduce},
    {"max", 1, 2, KW_AXIS, IR_AMAX, 0, lower_reduce},
    {"min", 1, 2, KW_AXIS, IR_AMIN, 0, lower_reduce},
    {"rmsnorm", 1, 2, KW_EPS, IR_RMSNORM, 1e-5, lower_norm},
    {"layernorm", 1, 3, KW_EPS, IR_LAYERNORM, 1e-5, lower_norm},
    {"l2norm", 1, 1, KW_EPS, IR_L2NORM, 1e-6, lower_norm},
    {"split", 2, 2, KW_AXIS, IR_SLICE, 0, lower_split},
    {"concat", 1, -1, KW_AXIS, IR_CONCAT, 0, lower_concat},
    {"causal_conv", 3, 3, 0, IR_CAUSAL_CONV, 0, lower_causal_conv},
    {"causal_attention", 3, 3, KW_SCALE, IR_ATTN, 0, lower_attention},
    {"reshape", 2, 2, 0, IR_RESHAPE, 0, lower_reshape},
    {"elu", 1, 1, 0, IR_MAX, 0, lower_elu},
    {"eye", 1, 1, 0, IR_EYE, 0, lower_eye},
    {"inv", 1, 1, 0, IR_INV, 0, lower_unary_fn},
    {"expm", 1, 1, 0, IR_EXPM, 0, lower_unary_fn},
    {"grad", 2, 2, 0, IR_CONST, 0, lower_grad},
    {"up", 1, 1, 0, IR_INDEX, 0, lower_grid_read},
    {"left", 1, 1, 0, IR_INDEX, 0, lower_grid_read},
};
#define NBUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

int lower_is_builtin(const char *name) {
  for (int i = 0; i < NBUILTINS; i++)
    if (strcmp(builtins[i].name, name) == 0) return 1;
  return 0;
}

static void arity_error(Lower *L, const Builtin *b, SrcLoc loc, int got) {
  if (b->min_args == b->max_args)
    diag_error(L->de, loc, "%s takes %d argument%s, got %d", b->name, b->min_args,
               b->min_args == 1 ? "" : "s", got);
  else if (b->max_args < 0)
    diag_error(L->de, loc, "%s takes at least %d argument%s, got %d", b->name, b->min_args,
               b->min_args == 1 ? "" : "s", got);
  else if (b->max_args == b->min_args + 1)
    diag_error(L->de, loc, "%s takes %d or %d arguments, got %d", b->name, b->min_args, b->max_args,
               got);
  else
    diag_error(L->de, loc, "%s takes %d to %d arguments, got %d", b->name, b->min_args, b->max_args,
               got);
}

/* Separates positional and keyword arguments and checks the keywords
 * against what the builtin accepts. */
static int collect_args(Lower *L, const AstExpr *e, const Builtin *b, CallArgs *c) {
  c->call = e;
  c->pos = arena_calloc(L->a, (size_t)e->nargs + 1, sizeof *c->pos);
  if (!c->pos) {
    sema_oom(L->S);
    return -1;
  }
  int bad = 0;
  for (int i = 0; i < e->nargs; i++) {
    const AstExpr *a = e->args[i];
    if (a->kind != AST_KWARG) {
      c->pos[c->npos++] = a;
      continue;
    }
    const AstExpr **slot = NULL;
    if (strcmp(a->kwname, "axis") == 0 && (b->kwargs & KW_AXIS)) slot = &c->axis;
    if (strcmp(a->kwname, "eps") == 0 && (b->kwargs & KW_EPS)) slot = &c->eps;
    if (strcmp(a->kwname, "scale") == 0 && (b->kwargs & KW_SCALE)) slot = &c->scale;
    if (!slot) {
      const char *kws[3];
      int nk = 0;
      if (b->kwargs & KW_AXIS) kws[nk++] = "axis";
      if (b->kwargs & KW_EPS) kws[nk++] = "eps";
      if (b->kwargs & KW_SCALE) kws[nk++] = "scale";
      const char *s = sema_suggest(a->kwname, kws, nk);
      diag_error(L->de, a->loc, "%s has no keyword argument '%s'%s%s%s", b->name, a->kwname,
                 s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
      bad = 1;
    } else if (*slot) {
      diag_error(L->de, a->loc, "keyword argument '%s' is given twice", a->kwname);
      bad = 1;
    } else {
      *slot = a->lhs;
    }
  }
  if (c->npos < b->min_args || (b->max_args >= 0 && c->npos > b->max_args)) {
    arity_error(L, b, e->loc, c->npos);
    bad = 1;
  }
  return bad ? -1 : 0;
}

/* Substitutes a callee type's dims with a layer's bindings. */
static int subst_type(Lower *L, IrType t, const DimExpr *sub, IrType *out, SrcLoc loc) {
  DimExpr dims[SEQ_MAX_RANK];
  for (int i = 0; i < t.rank; i++) {
    if (dim_subst(t.dims[i], sub, &dims[i])) {
      diag_error(L->de, loc, "the layer's shapes are too complex once its dims are substituted");
      return -1;
    }
  }
  *out = ir_type(L->a, t.elem, t.rank, dims);
  if (out->rank != t.rank) {
    sema_oom(L->S);
    return -1;
  }
  return 0;
}

/* Whether node r is the same at every step: it reads contexts, params,
 * dims and constants only (no per-step input, state or layer output but
 * that of a layer run over a context's positions). */
static int per_sequence(const Lower *L, IrRef r, unsigned char *seen) {
  if (seen[r]) return seen[r] == 1;
  const IrNode *nd = &L->f->nodes.v[r];
  const IrNode *call = nd->op == IR_RESULT ? &L->f->nodes.v[nd->args[0]] : nd;
  int over = (nd->op == IR_CALL || nd->op == IR_RESULT) && L->f->layers.v[call->index].over;
  int ok = !(nd->op == IR_INPUT && !L->f->inputs.v[nd->index].context) && nd->op != IR_STATE &&
           ((nd->op != IR_CALL && nd->op != IR_RESULT) || over) &&
           !(ir_op_info[nd->op].flags & IRF_SEQ);
  for (int j = 0; j < nd->nargs && ok; j++) ok = per_sequence(L, nd->args[j], seen);
  seen[r] = ok ? 1 : 2;
  return ok;
}

/* Whether node r reads a context (directly or through what it computes);
 * seen[r]: 0 not yet known, 1 yes, 2 no. */
static int reads_context(const Lower *L, IrRef r, unsigned char *seen) {
  if (seen[r]) return seen[r] == 1;
  const IrNode *nd = &L->f->nodes.v[r];
  int yes = nd->op == IR_INPUT && L->f->inputs.v[nd->index].context;
  for (int j = 0; j < nd->nargs && !yes; j++) yes = reads_context(L, nd->args[j], seen);
  seen[r] = yes ? 1 : 2;
  return yes;
}

/* t with the axis n put first. */
static IrType lead_with(Lower *L, DimExpr n, IrType t) {
  DimExpr *d = arena_calloc(L->a, (size_t)t.rank + 2, sizeof *d);
  if (!d) {
    sema_oom(L->S);
    return t;
  }
  d[0] = n;
  for (int i = 0; i < t.rank; i++) d[i + 1] = t.dims[i];
  t.dims = d;
  t.rank++;
  return t;
}

/* Whether a layer call of a model runs over a context's positions
 * (IrLayer.over): every per-step input of the callee is given a value read
 * from contexts (the same at every step) with one more leading axis, the
 * same one for all, *npos. 1 if so, 0 if not (a mixed call is left to the
 * per-argument type checks to report), -1 out of memory. */
static int runs_over_positions(Lower *L, const IrFunc *cf, const IrLayer *lay, const IrRef *args,
                               const AstExpr **pos, int nargs, DimExpr *npos) {
  if (L->f->kind != IR_FN_MODEL) return 0;
  unsigned char *seq = arena_calloc(L->a, (size_t)L->f->nodes.n + 1, 1);
  unsigned char *ctx = arena_calloc(L->a, (size_t)L->f->nodes.n + 1, 1);
  if (!seq || !ctx) {
    sema_oom(L->S);
    return -1;
  }
  int over = 0, direct = 0;
  for (int i = 0; i < nargs; i++) {
    const IrInput *in = &cf->inputs.v[i];
    IrType want, got = type_of(L, args[i]);
    if (in->context || subst_type(L, in->type, lay->dim_args, &want, pos[i]->loc)) continue;
    int fits =
        got.rank == want.rank + 1 && got.elem == want.elem && (!over || dim_eq(*npos, got.dims[0]));
    for (int d = 0; fits && d < want.rank; d++) fits = dim_eq(want.dims[d], got.dims[d + 1]);
    if (fits && per_sequence(L, args[i], seq) && reads_context(L, args[i], ctx)) {
      *npos = got.dims[0];
      over = 1;
    } else {
      direct = 1;
    }
  }
  return over && !direct;
}

/* l(a, b): runs layer `li` over the sequence. The arguments are the callee's
 * inputs in declaration order (then lengths=, for a layer run over a
 * context's positions); the CALL node is output 0 and RESULT nodes give the
 * others. */
static int lower_layer_call(Lower *L, const AstExpr *e, int li, Tuple *out) {
  const IrLayer *lay = &L->f->layers.v[li];
  const IrFunc *cf = L->layers.v[li].callee;
  IrRef *args = arena_calloc(L->a, (size_t)e->nargs + 1, sizeof *args);
  const AstExpr **pos = arena_calloc(L->a, (size_t)e->nargs + 1, sizeof *pos);
  if (!args || !pos) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  int bad = 0, nargs = 0;
  IrRef lengths = IR_NONE; /* lengths=, for a call run over a context's positions */
  const AstExpr *len_expr = NULL;
  for (int i = 0; i < e->nargs; i++) {
    if (e->args[i]->kind == AST_KWARG) {
      if (strcmp(e->args[i]->kwname, "lengths") != 0 || len_expr) {
        diag_error(L->de, e->args[i]->loc,
                   "a layer call takes one keyword argument, lengths= (for a layer run over a "
                   "context's positions)");
        bad = 1;
        continue;
      }
      len_expr = e->args[i]->lhs;
      L->int_context_ok = 1;
      lengths = lower_expr(L, len_expr);
      L->int_context_ok = 0;
      bad |= lengths < 0;
      continue;
    }
    pos[nargs] = e->args[i];
    args[nargs] = lower_expr(L, e->args[i]);
    bad |= args[nargs++] < 0;
  }
  if (nargs != cf->inputs.n) {
    diag_error(L->de, e->loc, "layer '%s' (%s) takes %d input%s, got %d", lay->name, cf->name,
               cf->inputs.n, cf->inputs.n == 1 ? "" : "s", nargs);
    return one(L, out, REF_ERROR);
  }
  if (cf->outputs.n == 0) {
    diag_error(L->de, e->loc, "'%s' has no outputs", cf->name);
    return one(L, out, REF_ERROR);
  }
  if (bad) return one(L, out, REF_ERROR);
  if (sema_finalize_layer(L, li, args, nargs)) return one(L, out, REF_ERROR);
  lay = &L->f->layers.v[li];
  DimExpr npos = {0};
  int over = runs_over_positions(L, cf, lay, args, pos, nargs, &npos);
  if (over < 0) return one(L, out, REF_ERROR);
  LayerSlot *ls = &L->layers.v[li];
  if (ls->called && (ls->called > 1) != over) {
    diag_error(L->de, e->loc,
               over ? "layer '%s' runs over the positions of a context here but per step elsewhere"
                    : "layer '%s' runs per step here but over the positions of a context elsewhere",
               lay->name);
    return one(L, out, REF_ERROR);
  }
  if (len_expr && !over) {
    diag_error(L->de, sema_expr_start(len_expr),
               "lengths= is for a layer run over a context's positions (its inputs given values "
               "read from contexts, with one more leading axis)");
    return one(L, out, REF_ERROR);
  }
  if (len_expr && (type_of(L, lengths).elem != IR_INT || type_of(L, lengths).rank != 0)) {
    diag_error(L->de, sema_expr_start(len_expr),
               "lengths= takes an int context (context n: int), one length per example");
    return one(L, out, REF_ERROR);
  }
  int mode = over ? (len_expr ? 3 : 2) : 1;
  if (ls->called && ls->called != mode && ls->called > 1 && mode > 1) {
    diag_error(L->de, e->loc, "layer '%s' is run over a context's positions %s lengths elsewhere",
               lay->name, len_expr ? "without" : "with");
    return one(L, out, REF_ERROR);
  }
  ls->called = mode;
  L->f->layers.v[li].over = over;
  L->f->layers.v[li].over_lengths = len_expr != NULL;
  for (int i = 0; i < nargs; i++) {
    const IrInput *in = &cf->inputs.v[i];
    IrType want, got = type_of(L, args[i]);
    if (subst_type(L, in->type, lay->dim_args, &want, pos[i]->loc)) return one(L, out, REF_ERROR);
    if (over && !in->context) want = lead_with(L, npos, want);
    if (!ir_type_eq(want, got)) {
      diag_error(L->de, sema_expr_start(pos[i]),
                 "argument %d of layer '%s' is %s, but input '%s' of %s is %s here", i + 1,
                 lay->name, sema_type_str(L, got), in->name, cf->name, sema_type_str(L, want));
      bad = 1;
      continue;
    }
    unsigned char *seen = in->context ? arena_calloc(L->a, (size_t)L->f->nodes.n + 1, 1) : NULL;
    if (in->context && !seen) {
      sema_oom(L->S);
      return one(L, out, REF_ERROR);
    }
    if (in->context && !per_sequence(L, args[i], seen)) {
      diag_error(L->de, sema_expr_start(pos[i]),
                 "argument %d of layer '%s' is context '%s' of %s, so it must be the same at "
                 "every step: computed from contexts, params and dims only",
                 i + 1, lay->name, in->name, cf->name);
      bad = 1;
    }
  }
  if (bad) return one(L, out, REF_ERROR);
  out->n = cf->outputs.n;
  out->refs = arena_calloc(L->a, (size_t)out->n, sizeof *out->refs);
  if (!out->refs) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  IrNode attrs = {0};
  attrs.index = li;
  if (subst_type(L, cf->outputs.v[0].type, lay->dim_args, &attrs.type, e->loc))
    return one(L, out, REF_ERROR);
  if (over) attrs.type = lead_with(L, npos, attrs.type);
  if (len_expr) args[nargs] = lengths; /* the last operand (IrLayer.over_lengths) */
  IrRef call = emit(L, IR_CALL, e->loc, nargs + (len_expr != NULL), args, &attrs, NULL);
  out->refs[0] = call;
  for (int k = 1; k < out->n; k++) {
    IrNode ra = {0};
    ra.index = k;
    if (subst_type(L, cf->outputs.v[k].type, lay->dim_args, &ra.type, e->loc))
      return one(L, out, REF_ERROR);
    if (over) ra.type = lead_with(L, npos, ra.type);
    out->refs[k] = emit(L, IR_RESULT, e->loc, 1, &call, &ra, NULL);
  }
  for (int k = 0; k < out->n; k++)
    if (out->refs[k] < 0) return -1;
  return 0;
}

/* Which layer a callee names: a `for` variable, a single layer, or an
 * element L[i] of a layer array. Returns the layer index, -1 if the callee
 * is not a layer, -2 after reporting (or for a layer whose declaration
 * failed, already reported). */
static int callee_layer(Lower *L, const AstExpr *callee) {
  if (callee->kind == AST_INDEX && callee->lhs->kind == AST_NAME && callee->nargs == 1 &&
      callee->lhs->path.nparts == 1) {
    int i;
    if (sema_find_decl(L, callee->lhs->path.parts[0], &i) != DECL_LAYER) return -1;
    const LayerDecl *ld = &L->layer_decls.v[i];
    if (ld->failed) return -2;
    int64_t k;
    if (ld->count < 0 || const_int(callee->args[0], &k) || k < 0 || k >= ld->count) {
      diag_error(L->de, callee->loc, "'%s[...]' needs a layer array and a constant index in range",
                 ld->name);
      return -2;
    }
    return ld->first + (int)k;
  }
  if (callee->kind != AST_NAME || callee->primed || callee->path.nparts != 1) return -1;
  const char *name = callee->path.parts[0];
  const Binding *b = find_binding(L, name);
  if (b) return b->layer >= 0 ? b->layer : -1;
  int i;
  if (sema_find_decl(L, name, &i) != DECL_LAYER) return -1;
  const LayerDecl *ld = &L->layer_decls.v[i];
  if (ld->failed) return -2;
  if (ld->count >= 0) {
    diag_error(L->de, callee->loc,
               "'%s' is a layer array; loop over it (for l in %s { ... }) or call one element "
               "(%s[0](...))",
               name, name, name);
    return -2;
  }
  return ld->first;
}

/* The `def` a call names: the unit's own first (unless we are inside a
 * top-level def, which cannot see them), then the top-level ones. */
static const AstDecl *find_def(const Lower *L, const char *name, int *toplevel) {
  for (int i = 0; !L->fn_toplevel && i < L->defs.n; i++)
    if (strcmp(L->defs.v[i]->name.parts[0], name) == 0) return *toplevel = 0, L->defs.v[i];
  for (int i = 0; i < L->S->defs.n; i++)
    if (strcmp(L->S->defs.v[i]->name.parts[0], name) == 0) return *toplevel = 1, L->S->defs.v[i];
  return NULL;
}

/* Bounds the work of inlining: hash-consing shares the nodes, but a chain of
 * functions each calling the next twice would still be lowered 2^n times. */
#define MAX_INLINED 100000

/* f(a, b) for `def f(x, y) = body`: the arguments are lowered here, in the
 * caller's scope, then the body is lowered with x, y bound to them and
 * nothing else of the caller in sight. The result is ordinary IR, as if the
 * body had been written at the call. */
static int lower_def_call(Lower *L, const AstExpr *e, const AstDecl *fn, int toplevel, Tuple *out) {
  const char *name = fn->name.parts[0];
  for (int i = 0; i < L->fn_stack.n; i++) {
    if (L->fn_stack.v[i] != fn) continue;
    char *chain = arena_strdup(L->a, "");
    for (int k = i; k < L->fn_stack.n && chain; k++)
      chain = arena_printf(L->a, "%s%s -> ", chain, L->fn_stack.v[k]->name.parts[0]);
    diag_error(L->de, e->callee->loc, "function '%s' calls itself: %s%s (recursion is not allowed)",
               name, chain ? chain : "", name);
    return one(L, out, REF_ERROR);
  }
  if (++L->ninlined > MAX_INLINED) {
    if (L->ninlined == MAX_INLINED + 1)
      diag_error(L->de, e->loc, "more than %d function calls to inline in '%s'", MAX_INLINED,
                 L->f->name);
    return one(L, out, REF_ERROR);
  }
  IrRef *args = arena_calloc(L->a, (size_t)e->nargs + 1, sizeof *args);
  if (!args) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  int bad = 0;
  for (int i = 0; i < e->nargs; i++) {
    if (e->args[i]->kind == AST_KWARG) {
      diag_error(L->de, e->args[i]->loc, "function '%s' takes no keyword arguments", name);
      return one(L, out, REF_ERROR);
    }
    args[i] = lower_expr(L, e->args[i]);
    bad |= args[i] < 0;
  }
  if (e->nargs != fn->nfparams) {
    diag_error(L->de, e->loc, "function '%s' takes %d argument%s, got %d", name, fn->nfparams,
               fn->nfparams == 1 ? "" : "s", e->nargs);
    return one(L, out, REF_ERROR);
  }
  if (bad) return one(L, out, REF_ERROR);
  int mark = L->env.n, base = L->fn_env_base, top = L->fn_toplevel, nsig = L->nsig;
  int errors = L->de->nerrors;
  if (vec_push(L->a, &L->fn_stack, fn)) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  L->fn_env_base = L->env.n;
  L->fn_toplevel = toplevel;
  /* A top-level function has no dims: hide the unit's. */
  if (toplevel) L->nsig = 0;
  IrRef v = REF_ERROR;
  int ok = 1;
  for (int i = 0; i < fn->nfparams && ok; i++) ok = bind(L, fn->fparams[i], args[i], -1) == 0;
  if (ok) v = lower_expr(L, fn->body);
  L->fn_stack.n--;
  L->env.n = mark;
  L->fn_env_base = base;
  L->fn_toplevel = top;
  L->nsig = nsig;
  /* The body's error points into the function; say which call led there. */
  if (L->de->nerrors > errors) diag_note(L->de, e->loc, "in this call of '%s'", name);
  return one(L, out, v);
}

static int lower_call(Lower *L, const AstExpr *e, Tuple *out) {
  int li = callee_layer(L, e->callee);
  if (li >= 0 && L->fn_stack.n > 0) {
    diag_error(L->de, e->callee->loc, "a function cannot call a layer");
    return one(L, out, REF_ERROR);
  }
  if (li >= 0) return lower_layer_call(L, e, li, out);
  if (li == -2) return one(L, out, REF_ERROR);
  if (e->callee->kind != AST_NAME || e->callee->primed) {
    diag_error(L->de, e->callee->loc, "only builtins and layers can be called");
    return one(L, out, REF_ERROR);
  }
  const char *name = sema_path_str(L->a, &e->callee->path);
  if (!name) {
    sema_oom(L->S);
    return one(L, out, REF_ERROR);
  }
  int toplevel;
  const AstDecl *fn = e->callee->path.nparts == 1 ? find_def(L, name, &toplevel) : NULL;
  if (fn) return lower_def_call(L, e, fn, toplevel, out);
  const Builtin *b = NULL;
  for (int i = 0; i < NBUILTINS; i++)
    if (strcmp(builtins[i].name, name) == 0) b = &builtins[i];
  if (!b) {
    for (int i = 0; i < L->S->units.n; i++) {
      if (strcmp(L->S->units.v[i].ast->name, name) == 0) {
        diag_error(L->de, e->callee->loc,
                   "'%s' is a %s; to run it, declare a layer in a model (layer l = %s(...)) and "
                   "call l(...)",
                   name, L->S->units.v[i].ast->kind == AST_CELL ? "cell" : "model", name);
        return one(L, out, REF_ERROR);
      }
    }
    const char *cands[NBUILTINS];
    for (int i = 0; i < NBUILTINS; i++) cands[i] = builtins[i].name;
    const char *s = sema_suggest(name, cands, NBUILTINS);
    for (int i = 0; !s && i < L->layer_decls.n; i++)
      if (sema_suggest(name, &L->layer_decls.v[i].name, 1)) s = L->layer_decls.v[i].name;
    if (s)
      diag_error(L->de, e->callee->loc, "unknown function '%s' (did you mean '%s'?)", name, s);
    else
      diag_error(L->de, e->callee->loc, "unknown function '%s'", name);
    return one(L, out, REF_ERROR);
  }
  CallArgs c = {0};
  c.name = name;
  if (collect_args(L, e, b, &c)) return one(L, out, REF_ERROR);
  return b->lower(L, b, &c, out);
}

/* ---- Indexing ---------------------------------------------------------------------- */

/* An index or slice bound: a dim expression; a negative constant counts from
 * the end of the axis (x[-1] is x[size - 1]). */
static int index_bound(Lower *L, const AstExpr *e, DimExpr size, DimExpr *out) {
  if (e->kind == AST_NAME && !e->primed) {
    const char *name = sema_path_str(L->a, &e->path);
    int i;
    const Binding *b = name ? find_binding(L, name) : NULL;
    if (name && !(b && b->is_index) && (b || sema_find_decl(L, name, &i) != DECL_NONE)) {
      diag_error(L->de, e->loc,
                 "index '%s' must be an integer constant, a dim expression or an int token", name);
      return -1;
    }
  }
  if (sema_dim_expr(L, e, out)) return -1;
  int64_t c;
  if (dim_is_const(*out, &c) && c < 0 && dim_add(size, *out, out)) {
    diag_error(L->de, e->loc, "index too complex");
    return -1;
  }
  return 0;
}

/* A polynomial whose every coefficient is negative is negative for all dims
 * >= 1. ir_infer_type accepts any symbolic bound (dims are unknown until run
 * time); this catches the bounds that no dims can make valid, like x[0:2*H]
 * on an axis of size H. */
static int surely_negative(DimExpr e) {
  if (e.nterms == 0) return 0;
  for (int i = 0; i < e.nterms; i++)
    if (e.t[i].coef >= 0) return 0;
  return 1;
}

/* Checks 0 <= start <= stop <= size (stop == NULL: an index, start < size). */
static int check_bounds(Lower *L, SrcLoc loc, DimExpr start, const DimExpr *stop, DimExpr size,
                        int axis, IrType t) {
  DimExpr a, b;
  int bad = surely_negative(start);
  if (stop)
    bad |= (!dim_sub(*stop, start, &a) && surely_negative(a)) ||
           (!dim_sub(size, *stop, &b) && surely_negative(b));
  else
    bad |= !dim_sub(size, start, &a) && !dim_sub(a, dim_const(1), &b) && surely_negative(b);
  if (!bad) return 0;
  IrType ts = {IR_REAL, 1, &start};
  const char *s0 = sema_type_str(L, ts);
  if (stop) {
    IrType te = {IR_REAL, 1, (DimExpr *)stop};
    const char *s1 = sema_type_str(L, te);
    diag_error(L->de, loc, "slice [%.*s, %.*s) is out of range for axis %d of %s",
               (int)strlen(s0) - 2, s0 + 1, (int)strlen(s1) - 2, s1 + 1, axis, sema_type_str(L, t));
  } else {
    diag_error(L->de, loc, "index %.*s is out of range for axis %d of %s", (int)strlen(s0) - 2,
               s0 + 1, axis, sema_type_str(L, t));
  }
  return -1;
}

/* Is this index item an int value (a token)? Then W[t] is a GATHER. */
static int is_int_value(Lower *L, const AstExpr *e) {
  if (e->kind != AST_NAME || e->primed || e->path.nparts != 1) return 0;
  const Binding *b = find_binding(L, e->path.parts[0]);
  if (b) return b->ref >= 0 && type_of(L, b->ref).elem == IR_INT;
  int i;
  return sema_find_decl(L, e->path.parts[0], &i) == DECL_INPUT &&
         L->f->inputs.v[i].type.elem == IR_INT;
}

/* x[item, item, ...]: items apply to successive axes. An integer removes its
 * axis (INDEX), a:b keeps it (SLICE), None inserts a unit axis, and an int
 * token selects a row of a table (GATHER). */
static IrRef lower_index(Lower *L, const AstExpr *e) {
  IrRef x = lower_expr(L, e->lhs);
  if (x < 0) return REF_ERROR;
  if (type_of(L, x).elem == IR_INT) {
    diag_error(L->de, e->loc, "an int token cannot be indexed");
    return REF_ERROR;
  }
  int ax = 0;
  for (int i = 0; i < e->nargs && x >= 0; i++) {
    const AstExpr *it = e->args[i];
    IrType t = type_of(L, x);
    if (it->kind == AST_NONE) {
      x = insert_unit_axis(L, it->loc, x, ax++);
      continue;
    }
    if (ax >= t.rank) {
      diag_error(L->de, it->loc, "too many indices for a value of shape %s", sema_type_str(L, t));
      return REF_ERROR;
    }
    DimExpr size = t.dims[ax];
    if (it->kind == AST_SLICE) {
      DimExpr start = dim_const(0), stop = size;
      if (it->lhs && index_bound(L, it->lhs, size, &start)) return REF_ERROR;
      if (it->rhs && index_bound(L, it->rhs, size, &stop)) return REF_ERROR;
      int64_t s0;
      if (check_bounds(L, it->loc, start, &stop, size, ax, t)) return REF_ERROR;
      if (!(dim_is_const(start, &s0) && s0 == 0 && dim_eq(stop, size)))
        x = emit_slice(L, it->loc, x, ax, start, stop);
      ax++;
      continue;
    }
    if (is_int_value(L, it)) {
      if (ax != 0) {
        diag_error(L->de, it->loc, "an int token can only index the first axis");
        return REF_ERROR;
      }
      x = emit2(L, IR_GATHER, it->loc, x, lower_expr(L, it), NULL);
      continue;
    }
    IrNode attrs = {0};
    attrs.axis = ax;
    if (index_bound(L, it, size, &attrs.start) ||
        check_bounds(L, it->loc, attrs.start, NULL, size, ax, t))
      return REF_ERROR;
    x = emit(L, IR_INDEX, it->loc, 1, &x, &attrs, NULL);
  }
  return x;
}

/* ---- Expressions ------------------------------------------------------------------- */

static const char *binary_verb(int op) {
  switch (op) {
  case '+':
    return "add";
  case '-':
    return "subtract";
  case '*':
    return "multiply";
  case '/':
    return "divide";
  }
  return NULL;
}

/* x @ y with an operand of rank > 2, as NumPy's matmul: the leading axes
 * are a batch (broadcast), each pair of trailing matrices multiplied; a
 * vector operand is one matrix for the whole batch ([..., M, K] @ [K] is
 * [..., M]). Written as a broadcast product and a sum over K, which the
 * schedule fuses, so the matrix product of one head is what every backend
 * and every pass already handles. */
static IrRef lower_batched_matmul(Lower *L, SrcLoc loc, IrRef x, IrRef y) {
  IrType xt = type_of(L, x), yt = type_of(L, y);
  if (xt.rank == 0 || yt.rank == 0) {
    diag_error(L->de, loc, "cannot multiply %s and %s as matrices: a scalar operand",
               sema_type_str(L, xt), sema_type_str(L, yt));
    return REF_ERROR;
  }
  /* The contracted axes: x's last, y's second to last (its only one if a vector). */
  DimExpr kx = xt.dims[xt.rank - 1], ky = yt.dims[yt.rank >= 2 ? yt.rank - 2 : 0];
  if (xt.elem == IR_INT || yt.elem == IR_INT || !dim_eq(kx, ky)) {
    diag_error(L->de, loc, "cannot multiply %s and %s as matrices: %s", sema_type_str(L, xt),
               sema_type_str(L, yt),
               xt.elem == IR_INT || yt.elem == IR_INT ? "an int operand"
                                                      : "inner dims that differ");
    return REF_ERROR;
  }
  IrRef p;
  if (xt.rank >= 2 && yt.rank >= 2 && dim_is_one(yt.dims[yt.rank - 1])) {
    /* A batch of column vectors, S @ q[..., None]: [..., M, K] * [..., 1, K]
     * summed over K (a contraction the passes read as a readout of S), the
     * unit axis put back. */
    DimExpr qd[SEQ_MAX_RANK];
    for (int i = 0; i < yt.rank - 1; i++) qd[i] = yt.dims[i];
    IrRef q = emit_to_type(L, IR_RESHAPE, loc, y, ir_type(L->a, yt.elem, yt.rank - 1, qd));
    p = emit2(L, IR_MUL, loc, x, insert_unit_axis(L, loc, q, yt.rank - 2), NULL);
    if (p < 0) return REF_ERROR;
    IrRef s = emit_axis(L, IR_SUM, loc, 1, &p, type_of(L, p).rank - 1);
    return s < 0 ? REF_ERROR : insert_unit_axis(L, loc, s, type_of(L, s).rank);
  }
  int axis = -2;
  if (xt.rank >= 2 && yt.rank >= 2) { /* [..., M, K, 1] * [..., 1, K, N], summed over K */
    p = emit2(L, IR_MUL, loc, insert_unit_axis(L, loc, x, xt.rank),
              insert_unit_axis(L, loc, y, yt.rank - 2), NULL);
  } else if (yt.rank == 1) { /* [..., M, K] * [K], summed over K */
    p = emit2(L, IR_MUL, loc, x, y, NULL);
    axis = -1;
  } else { /* [K, 1] * [..., K, N], summed over K */
    p = emit2(L, IR_MUL, loc, insert_unit_axis(L, loc, x, 1), y, NULL);
  }
  if (p < 0) return REF_ERROR;
  return emit_axis(L, IR_SUM, loc, 1, &p, type_of(L, p).rank + axis);
}

IrRef lower_expr(Lower *L, const AstExpr *e) {
  switch (e->kind) {
  case AST_NUM:
    return lower_const(L, e->num, e->loc);
  case AST_NAME:
    return lower_name(L, e);
  case AST_UNARY:
    /* -2 is the constant -2, not neg(2). */
    if (e->op == '-' && e->lhs->kind == AST_NUM) return lower_const(L, -e->lhs->num, e->loc);
    if (e->op == '+') return lower_expr(L, e->lhs);
    return emit1(L, IR_NEG, e->loc, lower_expr(L, e->lhs));
  case AST_BINARY: {
    IrRef x = lower_expr(L, e->lhs), y = lower_expr(L, e->rhs);
    IrOp op = e->op == '+'   ? IR_ADD
              : e->op == '-' ? IR_SUB
              : e->op == '*' ? IR_MUL
              : e->op == '/' ? IR_DIV
                             : IR_MATMUL;
    if (op == IR_MATMUL && x >= 0 && y >= 0 && (type_of(L, x).rank > 2 || type_of(L, y).rank > 2))
      return lower_batched_matmul(L, e->loc, x, y);
    return emit2(L, op, e->loc, x, y, binary_verb(e->op));
  }
  case AST_TRANSPOSE:
    return emit1(L, IR_TRANSPOSE, e->loc, lower_expr(L, e->lhs));
  case AST_CALL: {
    Tuple t = {0, NULL};
    if (lower_call(L, e, &t) || t.n == 0) return REF_ERROR;
    if (t.n != 1) {
      diag_error(L->de, e->loc, "this call gives %d values; bind them with let a, b, ... = ...",
                 t.n);
      return REF_ERROR;
    }
    return t.refs[0];
  }
  case AST_INDEX:
    return lower_index(L, e);
  case AST_LIST:
    diag_error(L->de, e->loc, "a list [...] can only give the sizes in split(x, [...])");
    return REF_ERROR;
  case AST_SLICE:
  case AST_NONE:
    diag_error(L->de, e->loc, "':' and None can only appear inside an index x[...]");
    return REF_ERROR;
  case AST_KWARG:
    diag_error(L->de, e->loc, "'%s=' can only appear in a call's arguments", e->kwname);
    return REF_ERROR;
  case AST_STRING:
    diag_error(L->de, e->loc, "a string is not a value");
    return REF_ERROR;
  }
  return REF_ERROR;
}

/* ---- Statements ---------------------------------------------------------------------- */

/* let a, b = e1, e2 binds pairwise (all values are computed first); let a, b
 * = f(...) takes apart a call that gives several values. */
static void lower_let(Lower *L, const AstStmt *s) {
  IrRef *vals = arena_calloc(L->a, (size_t)s->nnames + 1, sizeof *vals);
  if (!vals) {
    sema_oom(L->S);
    return;
  }
  for (int i = 0; i < s->nnames; i++) vals[i] = REF_ERROR;
  if (s->nvalues == s->nnames) {
    for (int i = 0; i < s->nnames; i++) vals[i] = lower_expr(L, s->values[i]);
  } else if (s->nvalues == 1) {
    const AstExpr *v = s->values[0];
    if (v->kind == AST_CALL) {
      Tuple t = {0, NULL};
      if (lower_call(L, v, &t) == 0) {
        if (t.n != s->nnames)
          diag_error(L->de, s->loc, "this call gives %d value%s, but %d names are bound", t.n,
                     t.n == 1 ? "" : "s", s->nnames);
        else
          memcpy(vals, t.refs, (size_t)t.n * sizeof *vals);
      }
    } else if (lower_expr(L, v) >= 0) {
      diag_error(L->de, s->loc, "cannot bind %d names to a single value", s->nnames);
    }
  } else {
    diag_error(L->de, s->loc, "let binds %d names but gives %d values", s->nnames, s->nvalues);
  }
  for (int i = 0; i < s->nnames; i++) {
    const char *name = s->names[i];
    SrcLoc at = s->name_locs ? s->name_locs[i] : s->loc;
    int k;
    if (sema_find_decl(L, name, &k) == DECL_OUTPUT) {
      diag_error(L->de, at, "'%s' is an output; assign it with %s = ..., not let", name, name);
      continue;
    }
    for (int j = 0; j < i; j++)
      if (strcmp(s->names[j], name) == 0)
        diag_error(L->de, at, "'%s' is bound twice in one let", name);
    if (bind(L, name, vals[i], -1)) return;
  }
}

/* h' = e, y = e, or x = e rebinding a let-bound local. */
static void lower_assign(Lower *L, const AstStmt *s) {
  const AstExpr *t = s->target;
  IrRef v = lower_expr(L, s->value);
  if (t->kind != AST_NAME) {
    diag_error(L->de, t->loc, "only a name can be assigned");
    return;
  }
  const char *name = sema_path_str(L->a, &t->path);
  if (!name) {
    sema_oom(L->S);
    return;
  }
  int i, kind = sema_find_decl(L, name, &i);
  if (t->primed) {
    if (kind != DECL_STATE) {
      diag_error(L->de, t->loc, "'%s' is not a state; only a state can be primed", name);
      return;
    }
    StateSlot *slot = &L->states.v[i];
    const IrState *st = &L->f->states.v[i];
    if (slot->next != IR_NONE) {
      diag_error(L->de, t->loc, "%s' is assigned twice", name);
      diag_note(L->de, slot->assigned_at, "first assigned here");
      return;
    }
    if (slot->bad) v = REF_ERROR; /* its type was already reported */
    IrType want = L->grid ? sema_grid_pos_type(st->type) : st->type;
    if (v >= 0 && !ir_type_eq(type_of(L, v), want)) {
      diag_error(L->de, sema_expr_start(s->value), "%s' has shape %s but state '%s' is declared %s",
                 name, sema_type_str(L, type_of(L, v)), name, sema_type_str(L, want));
      v = REF_ERROR;
    }
    slot->next = v;
    slot->assigned_at = t->loc;
    if (v >= 0) L->f->states.v[i].next = v;
    return;
  }
  if (t->path.nparts == 1) {
    for (int k = L->env.n - 1; k >= 0; k--) {
      if (strcmp(L->env.v[k].name, name) != 0) continue;
      if (L->env.v[k].layer >= 0) {
        diag_error(L->de, t->loc, "'%s' is a layer and cannot be assigned", name);
        return;
      }
      if (L->env.v[k].is_index) {
        diag_error(L->de, t->loc, "'%s' is the loop's counter and cannot be assigned", name);
        return;
      }
      L->env.v[k].ref = v;
      return;
    }
  }
  switch (kind) {
  case DECL_OUTPUT: {
    OutputSlot *slot = &L->outputs.v[i];
    const IrOutput *o = &L->f->outputs.v[i];
    if (slot->assigned) {
      diag_error(L->de, t->loc, "output '%s' is assigned twice", name);
      diag_note(L->de, slot->assigned_at, "first assigned here");
      return;
    }
    slot->assigned = 1;
    slot->assigned_at = t->loc;
    if (slot->bad) return; /* its type was already reported */
    IrType want = L->grid ? sema_grid_pos_type(o->type) : o->type;
    if (v >= 0 && !ir_type_eq(type_of(L, v), want)) {
      diag_error(L->de, sema_expr_start(s->value), "%s has shape %s but output '%s' is declared %s",
                 name, sema_type_str(L, type_of(L, v)), name, sema_type_str(L, want));
      return;
    }
    if (v >= 0) L->f->outputs.v[i].value = v;
    return;
  }
  case DECL_STATE:
    diag_error(L->de, t->loc,
               "cannot assign to state '%s' itself; assign %s' (its value leaving the step)", name,
               name);
    return;
  case DECL_INPUT:
  case DECL_PARAM:
  case DECL_LAYER:
    diag_error(L->de, t->loc, "cannot assign to %s '%s'",
               kind == DECL_INPUT   ? (L->f->inputs.v[i].context ? "context" : "input")
               : kind == DECL_PARAM ? "param"
                                    : "layer",
               name);
    return;
  default:
    unknown_name(L, t->loc, name, "; bind a new name with let");
    return;
  }
}

static void lower_stmt(Lower *L, const AstStmt *s);

/* Most statements the loops of one body may unroll to (nested loops
 * included): a bound on the IR a few lines can make. */
#define MAX_UNROLLED_STMTS 65536

/* One iteration: v bound to the layer (layer >= 0) or to the counter's
 * value, then the body. Names bound by let inside the body end with the
 * iteration; rebinding an outer local carries over. Returns -1 when the body
 * reported errors (the same mistake would be reported once per iteration). */
static int unroll_once(Lower *L, const AstStmt *s, int layer, int64_t index) {
  int mark = L->env.n, errors = L->de->nerrors;
  L->unrolled += s->nbody;
  if (L->unrolled > MAX_UNROLLED_STMTS) {
    diag_error(L->de, s->loc,
               "the loops of this body unroll to more than %d statements (loops are unrolled "
               "when compiling)",
               MAX_UNROLLED_STMTS);
    return -1;
  }
  /* A counter's value node is made where it is read (lower_name). */
  Binding b = {s->var, REF_ERROR, layer, layer < 0, index};
  if (vec_push(L->a, &L->env, b)) {
    sema_oom(L->S);
    return -1;
  }
  for (int j = 0; j < s->nbody; j++) lower_stmt(L, s->body[j]);
  L->env.n = mark;
  return L->de->nerrors > errors ? -1 : 0;
}

/* for j in range(a, b) { ... }: the body is unrolled once per value of j, a
 * and b dim expressions whose values are known when compiling (fixing the
 * dims they use). */
static void lower_range_for(Lower *L, const AstStmt *s) {
  int64_t lo = 0, hi;
  const AstExpr *last = s->range[s->nrange - 1];
  if (s->nrange == 2 &&
      sema_known_value(L, s->range[0], "a loop's start", 0, SEQ_MAX_DIM_VALUE, &lo))
    return;
  if (sema_known_value(L, last, "a loop's bound", 0, SEQ_MAX_DIM_VALUE, &hi)) return;
  /* The counter is read where dims are: it may not hide one, nor a
   * declaration the body could mean instead. */
  int k;
  for (int i = 0; i < L->nsig; i++)
    if (strcmp(L->f->dims.v[i].name, s->var) == 0) {
      diag_error(L->de, s->loc, "the loop's counter '%s' would hide the dimension '%s'", s->var,
                 s->var);
      return;
    }
  if (sema_find_decl(L, s->var, &k) != DECL_NONE) {
    diag_error(L->de, s->loc, "the loop's counter '%s' would hide a declaration of that name",
               s->var);
    return;
  }
  for (int64_t j = lo; j < hi; j++)
    if (unroll_once(L, s, -1, j)) return;
}

/* for l in L { ... }: the body is unrolled once per element of the layer
 * array, with l naming that element. */
static void lower_for(Lower *L, const AstStmt *s) {
  if (s->nrange) {
    lower_range_for(L, s);
    return;
  }
  if (L->mode != MODE_FORWARD) {
    diag_error(L->de, s->loc,
               "a step loops over range(n), not a layer array (layers are a model's)");
    return;
  }
  const char *name = sema_path_str(L->a, &s->array);
  int i;
  if (!name || sema_find_decl(L, name, &i) != DECL_LAYER) {
    diag_error(L->de, s->array.loc, "'%s' is not a layer array", name ? name : "");
    return;
  }
  const LayerDecl *ld = &L->layer_decls.v[i];
  if (ld->failed) return;
  if (ld->count < 0) {
    diag_error(L->de, s->array.loc, "'%s' is a single layer, not a layer array", name);
    return;
  }
  for (int k = 0; k < ld->count; k++)
    if (unroll_once(L, s, ld->first + k, 0)) return;
}

static void lower_stmt(Lower *L, const AstStmt *s) {
  switch (s->kind) {
  case AST_LET:
    lower_let(L, s);
    break;
  case AST_ASSIGN:
    lower_assign(L, s);
    break;
  case AST_FOR:
    lower_for(L, s);
    break;
  }
}

/* Lowers the step or forward block, then settles what it must define:
 * states never assigned carry over (next = the state itself), and every
 * output must have been assigned. */
/* Values vs[0..n) of one position each, [...], as the row [n, ...]. */
static IrRef grid_row(Lower *L, const IrRef *vs, int64_t n, IrType row, SrcLoc loc) {
  IrRef *parts = arena_calloc(L->a, (size_t)n, sizeof *parts);
  if (!parts) {
    sema_oom(L->S);
    return REF_ERROR;
  }
  DimExpr dims[SEQ_MAX_RANK];
  memcpy(dims, row.dims, (size_t)row.rank * sizeof *dims);
  dims[0] = dim_const(1);
  IrType unit = ir_type(L->a, row.elem, row.rank, dims);
  for (int64_t j = 0; j < n; j++) {
    if (vs[j] < 0) return REF_ERROR;
    parts[j] = emit_to_type(L, IR_RESHAPE, loc, vs[j], unit);
  }
  IrRef r = n == 1 ? parts[0] : emit_axis(L, IR_CONCAT, loc, (int)n, parts, 0);
  /* The concatenation's length is the sum n * 1; the row's is Y. */
  return r >= 0 && !ir_type_eq(type_of(L, r), row) ? emit_to_type(L, IR_RESHAPE, loc, r, row) : r;
}

/* A grid cell's step: the body lowered once per position j of the row, its
 * states' and outputs' values there gathered into rows. */
static void lower_grid_body(Lower *L) {
  int ns = L->states.n, no = L->outputs.n;
  int64_t Y = L->grid;
  IrRef *vals = arena_calloc(L->a, (size_t)((ns + no) * Y) + 1, sizeof *vals);
  char *assigned = arena_calloc(L->a, (size_t)ns + 1, 1);
  if (!vals || !assigned) {
    sema_oom(L->S);
    return;
  }
  for (int64_t j = 0; j < Y; j++) {
    int mark = L->env.n, errors = L->de->nerrors;
    L->grid_j = j;
    L->unrolled += L->unit->nbody;
    if (L->unrolled > MAX_UNROLLED_STMTS) {
      diag_error(L->de, L->unit->body_loc,
                 "the grid's row of %lld positions unrolls this step to more than %d statements",
                 (long long)Y, MAX_UNROLLED_STMTS);
      return;
    }
    for (int i = 0; i < ns; i++) L->states.v[i].next = IR_NONE;
    for (int i = 0; i < no; i++) L->outputs.v[i].assigned = 0;
    for (int i = 0; i < L->unit->nbody; i++) {
      if (L->S->oom) return;
      if (L->unit->body[i]) lower_stmt(L, L->unit->body[i]);
    }
    L->env.n = mark;
    for (int i = 0; i < ns; i++) {
      IrRef v = L->states.v[i].next;
      vals[i * Y + j] = v;
      L->grid_left[i] = v;
      assigned[i] |= v != IR_NONE;
    }
    for (int i = 0; i < no; i++)
      vals[(ns + i) * Y + j] = L->outputs.v[i].assigned ? L->f->outputs.v[i].value : REF_ERROR;
    if (L->de->nerrors > errors) return; /* the same mistake at every position */
  }
  for (int i = 0; i < ns; i++) {
    IrRef r = !assigned[i] ? state_ref(L, i)
                           : grid_row(L, vals + i * Y, Y, L->f->states.v[i].type,
                                      L->states.v[i].assigned_at);
    L->states.v[i].next = r;
    if (r >= 0) L->f->states.v[i].next = r;
  }
  for (int i = 0; i < no; i++) {
    if (!L->outputs.v[i].assigned) continue;
    IrRef r =
        grid_row(L, vals + (ns + i) * Y, Y, L->f->outputs.v[i].type, L->outputs.v[i].assigned_at);
    L->f->outputs.v[i].value = r >= 0 ? r : IR_NONE;
  }
}

void lower_body(Lower *L) {
  if (L->grid)
    lower_grid_body(L);
  else
    for (int i = 0; i < L->unit->nbody; i++) {
      if (L->S->oom) return;
      if (L->unit->body[i]) lower_stmt(L, L->unit->body[i]);
    }
  for (int i = 0; i < L->states.n; i++) {
    if (L->states.v[i].next == IR_NONE) {
      IrRef r = state_ref(L, i);
      L->states.v[i].next = r;
      if (r >= 0) L->f->states.v[i].next = r;
    }
  }
  for (int i = 0; i < L->outputs.n; i++)
    if (!L->outputs.v[i].assigned)
      diag_error(L->de, L->f->outputs.v[i].loc, "output '%s' is never assigned",
                 L->f->outputs.v[i].name);
}
