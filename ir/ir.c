/* ir.c - building the IR: the op table, types, modules and functions,
 * hash-consed node construction (ir_emit) and the result-type rule of every
 * op (ir_infer_type). Printing, verification and flattening live in print.c,
 * verify.c and flatten.c.
 */
#include "ir/ir.h"

#include <stdarg.h>
#include <string.h>

const IrOpInfo ir_op_info[IR_NUM_OPS] = {
#define IR_OP(name, text, arity, flags) [IR_##name] = {text, arity, flags},
#include "ir/ops.def"
#undef IR_OP
};

/* ---- Types ----------------------------------------------------------------- */

IrType ir_scalar(IrElem elem) {
  IrType t = {elem, 0, NULL};
  return t;
}

/* The dims are copied so a caller may build them on its stack. An invalid
 * rank or a failed allocation gives rank -1, which no valid type has, so
 * ir_type_eq never mistakes it for a real type and the verifier rejects it. */
IrType ir_type(Arena *a, IrElem elem, int rank, const DimExpr *dims) {
  IrType t = {elem, rank, NULL};
  if (rank < 0 || rank > SEQ_MAX_RANK) {
    t.rank = -1;
    return t;
  }
  if (rank == 0) return t;
  if (!dims) {
    t.rank = -1;
    return t;
  }
  DimExpr *d = arena_calloc(a, (size_t)rank, sizeof *d);
  if (!d) {
    t.rank = -1;
    return t;
  }
  memcpy(d, dims, (size_t)rank * sizeof *d);
  t.dims = d;
  return t;
}

DimExpr ir_type_aligned(IrType t, int r, int ax) {
  int i = ax - (r - t.rank);
  return i >= 0 ? t.dims[i] : dim_const(1);
}

int ir_type_eq(IrType a, IrType b) {
  if (a.elem != b.elem || a.rank != b.rank) return 0;
  for (int i = 0; i < a.rank; i++)
    if (!dim_eq(a.dims[i], b.dims[i])) return 0;
  return 1;
}

/* ---- Modules and functions ---------------------------------------------- */

IrModule *ir_module_new(Arena *a) {
  IrModule *m = arena_alloc(a, sizeof *m);
  if (!m) return NULL;
  m->arena = a;
  m->entry = -1;
  return m;
}

IrFunc *ir_func_new(IrModule *m, const char *name, IrFuncKind kind, SrcLoc loc) {
  IrFunc *f = arena_alloc(m->arena, sizeof *f);
  if (!f) return NULL;
  f->name = arena_strdup(m->arena, name);
  f->kind = kind;
  f->loc = loc;
  if (!f->name || vec_push(m->arena, &m->funcs, f)) return NULL;
  return f;
}

int ir_func_index(const IrModule *m, const char *name) {
  for (int i = 0; i < m->funcs.n; i++)
    if (strcmp(m->funcs.v[i]->name, name) == 0) return i;
  return -1;
}

void ir_func_share_header(IrFunc *f, const IrFunc *src) {
  f->doc = src->doc;
  f->grid = src->grid;
  f->dims = src->dims;
  f->params = src->params;
  f->dim_defaults = src->dim_defaults;
  f->dim_pins = src->dim_pins;
  f->dim_quotients = src->dim_quotients;
  /* Shared with src, so never grown in place. */
  f->dims.cap = f->dims.n;
  f->params.cap = f->params.n;
  f->dim_defaults.cap = f->dim_defaults.n;
  f->dim_pins.cap = f->dim_pins.n;
  f->dim_quotients.cap = f->dim_quotients.n;
}

IrRef ir_emit_typed(IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args,
                    char *msg, size_t msglen) {
  IrNode p = *proto;
  if (msglen) msg[0] = 0;
  if (ir_infer_type(f, a, &p, nargs, args, &p.type, msg, msglen)) {
    if (msglen && !msg[0]) snprintf(msg, msglen, "%s does not type", ir_op_info[p.op].text);
    return IR_NONE;
  }
  return ir_emit(f, a, &p, nargs, args);
}

IrFunc *ir_func_reorder(IrModule *m, const IrFunc *f, const IrRef *order, int n) {
  Arena *a = m->arena;
  IrFunc *g = ir_func_new(m, f->name, f->kind, f->loc);
  IrRef *map = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *map);
  if (!g || !map) return NULL;
  ir_func_share_header(g, f);
  g->inputs = f->inputs;
  g->layers = f->layers;
  g->inputs.cap = g->inputs.n;
  g->layers.cap = g->layers.n;
  for (IrRef r = 0; r < f->nodes.n; r++) map[r] = IR_NONE;
  for (int i = 0; i < n; i++) {
    const IrNode *nd = &f->nodes.v[order[i]];
    IrRef *args = nd->nargs ? arena_calloc(a, (size_t)nd->nargs, sizeof *args) : NULL;
    if (nd->nargs && !args) return NULL;
    for (int j = 0; j < nd->nargs; j++) args[j] = map[nd->args[j]];
    if ((map[order[i]] = ir_emit(g, a, nd, nd->nargs, args)) == IR_NONE) return NULL;
  }
  for (int i = 0; i < f->states.n; i++) {
    IrState s = f->states.v[i];
    s.init = s.init >= 0 ? map[s.init] : IR_NONE;
    s.next = s.next >= 0 ? map[s.next] : IR_NONE;
    if (vec_push(a, &g->states, s)) return NULL;
  }
  for (int i = 0; i < f->outputs.n; i++) {
    IrOutput o = f->outputs.v[i];
    o.value = o.value >= 0 ? map[o.value] : IR_NONE;
    if (vec_push(a, &g->outputs, o)) return NULL;
  }
  return g;
}

IrFunc *ir_func_prune(IrModule *m, const IrFunc *f) {
  Arena *a = m->arena;
  char *live = arena_calloc(a, (size_t)f->nodes.n + 1, 1);
  IrRef *order = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *order);
  if (!live || !order) return NULL;
  for (int i = 0; i < f->states.n; i++) {
    if (f->states.v[i].init >= 0) live[f->states.v[i].init] = 1;
    if (f->states.v[i].next >= 0) live[f->states.v[i].next] = 1;
  }
  for (int i = 0; i < f->outputs.n; i++)
    if (f->outputs.v[i].value >= 0) live[f->outputs.v[i].value] = 1;
  for (IrRef r = f->nodes.n - 1; r >= 0; r--) {
    const IrNode *n = &f->nodes.v[r];
    if (n->op == IR_CALL) live[r] = 1;
    if (live[r])
      for (int j = 0; j < n->nargs; j++) live[n->args[j]] = 1;
  }
  int n = 0;
  for (IrRef r = 0; r < f->nodes.n; r++)
    if (live[r]) order[n++] = r;
  return ir_func_reorder(m, f, order, n);
}

/* ---- Hash-consing ------------------------------------------------------------ */

/* Open addressing with linear probing over node indices; the table lives in
 * the arena, and growing it abandons the old slots there. */
struct IrHash {
  int cap; /* a power of two */
  int count;
  IrRef *slots; /* IR_NONE = empty */
};

static uint64_t mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

static uint64_t hash_dim(uint64_t h, const DimExpr *e) {
  h = mix(h, (uint64_t)e->nterms);
  for (int i = 0; i < e->nterms; i++) {
    h = mix(h, (uint64_t)e->t[i].coef);
    for (int k = 0; k < e->t[i].nvars; k++) h = mix(h, (uint64_t)e->t[i].vars[k]);
  }
  return h;
}

static uint64_t double_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

/* Everything but the location: two nodes that differ only in where they were
 * written are the same value, and the first one's location is kept. */
static uint64_t hash_node(const IrNode *n, int nargs, const IrRef *args) {
  uint64_t h = mix(0, (uint64_t)n->op);
  h = mix(h, (uint64_t)n->type.elem);
  h = mix(h, (uint64_t)(int64_t)n->type.rank);
  for (int i = 0; i < n->type.rank; i++) h = hash_dim(h, &n->type.dims[i]);
  h = mix(h, double_bits(n->cval));
  h = hash_dim(h, &n->dval);
  h = mix(h, (uint64_t)(int64_t)n->index);
  h = mix(h, (uint64_t)(int64_t)n->axis);
  h = hash_dim(h, &n->start);
  h = hash_dim(h, &n->stop);
  h = mix(h, (uint64_t)nargs);
  for (int i = 0; i < nargs; i++) h = mix(h, (uint64_t)(int64_t)args[i]);
  return h;
}

static int same_node(const IrNode *x, const IrNode *proto, int nargs, const IrRef *args) {
  if (x->op != proto->op || !ir_type_eq(x->type, proto->type)) return 0;
  if (double_bits(x->cval) != double_bits(proto->cval)) return 0;
  if (!dim_eq(x->dval, proto->dval) || x->index != proto->index || x->axis != proto->axis) return 0;
  if (!dim_eq(x->start, proto->start) || !dim_eq(x->stop, proto->stop)) return 0;
  if (x->nargs != nargs) return 0;
  for (int i = 0; i < nargs; i++)
    if (x->args[i] != args[i]) return 0;
  return 1;
}

static int hash_grow(IrFunc *f, Arena *a) {
  struct IrHash *h = f->cse;
  int ncap = h && h->cap ? h->cap * 2 : 64;
  if (ncap > (1 << 28)) return -1;
  IrRef *slots = arena_calloc(a, (size_t)ncap, sizeof *slots);
  if (!slots) return -1;
  for (int i = 0; i < ncap; i++) slots[i] = IR_NONE;
  int count = 0;
  /* Rehash from the node array rather than the old table, which also drops
   * entries that a pass may have invalidated by truncating the array. */
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *n = &f->nodes.v[r];
    if (n->op == IR_CALL) continue;
    uint64_t hv = hash_node(n, n->nargs, n->args);
    int i = (int)(hv & (uint64_t)(ncap - 1));
    while (slots[i] != IR_NONE) i = (i + 1) & (ncap - 1);
    slots[i] = r;
    count++;
  }
  if (!h) {
    h = arena_alloc(a, sizeof *h);
    if (!h) return -1;
    f->cse = h;
  }
  h->cap = ncap;
  h->count = count;
  h->slots = slots;
  return 0;
}

IrRef ir_emit(IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args) {
  if (nargs < 0 || (nargs > 0 && !args)) return IR_NONE;
  /* A CALL runs a layer over the sequence; two calls with equal operands are
   * equal in value, but each is kept as its own run so that the states of
   * the instance are threaded once per call the user wrote. */
  int dedup = proto->op != IR_CALL;
  uint64_t hv = 0;
  if (dedup) {
    if ((!f->cse || (f->cse->count + 1) * 2 > f->cse->cap) && hash_grow(f, a)) return IR_NONE;
    struct IrHash *h = f->cse;
    hv = hash_node(proto, nargs, args);
    int i = (int)(hv & (uint64_t)(h->cap - 1));
    for (; h->slots[i] != IR_NONE; i = (i + 1) & (h->cap - 1)) {
      IrRef r = h->slots[i];
      if (r < f->nodes.n && same_node(&f->nodes.v[r], proto, nargs, args)) return r;
    }
  }
  IrNode n = *proto;
  n.nargs = nargs;
  n.args = NULL;
  if (nargs > 0) {
    n.args = arena_calloc(a, (size_t)nargs, sizeof *n.args);
    if (!n.args) return IR_NONE;
    memcpy(n.args, args, (size_t)nargs * sizeof *args);
  }
  /* The proto's dims may live on the caller's stack. */
  n.type = ir_type(a, proto->type.elem, proto->type.rank, proto->type.dims);
  if (n.type.rank != proto->type.rank) return IR_NONE;
  IrRef r = f->nodes.n;
  if (vec_push(a, &f->nodes, n)) return IR_NONE;
  if (dedup) {
    struct IrHash *h = f->cse;
    int i = (int)(hv & (uint64_t)(h->cap - 1));
    while (h->slots[i] != IR_NONE) i = (i + 1) & (h->cap - 1);
    h->slots[i] = r;
    h->count++;
  }
  return r;
}

/* ---- Type inference ---------------------------------------------------------- */

/* Context for one ir_infer_type call: error messages are formatted with the
 * function's dim names. */
typedef struct {
  const IrFunc *f;
  Arena *a;
  char *msg;
  size_t msglen;
} Infer;

static int fail(Infer *cx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Infer *cx, const char *fmt, ...) {
  if (cx->msg && cx->msglen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cx->msg, cx->msglen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int dim_vars_below(DimExpr e, int n) {
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++)
      if (e.t[i].vars[k] < 0 || e.t[i].vars[k] >= n) return 0;
  return 1;
}

/* Names for dim_print; variables outside the function's dims print as $N
 * (such a type is a compiler bug the verifier reports). */
static const char *const *dim_names(Arena *a, const IrFunc *f) {
  if (f->dims.n == 0) return NULL;
  const char **names = arena_calloc(a, (size_t)f->dims.n, sizeof *names);
  if (!names) return NULL;
  for (int i = 0; i < f->dims.n; i++) names[i] = f->dims.v[i].name;
  return names;
}

static const char *dstr(Infer *cx, DimExpr e) {
  const char *const *names = dim_vars_below(e, cx->f->dims.n) ? dim_names(cx->a, cx->f) : NULL;
  const char *s = dim_str(cx->a, e, names);
  return s ? s : "?";
}

/* "[4*H, I]", "complex[H, N]", "int" - the same spelling as ir_print_type. */
static const char *tstr(Infer *cx, IrType t) {
  if (t.elem == IR_INT && t.rank == 0) return "int";
  const char *s = t.elem == IR_COMPLEX ? "complex[" : t.elem == IR_INT ? "int[" : "[";
  for (int i = 0; i < t.rank && s; i++)
    s = arena_printf(cx->a, "%s%s%s", s, i ? ", " : "", dstr(cx, t.dims[i]));
  s = s ? arena_printf(cx->a, "%s]", s) : NULL;
  return s ? s : "?";
}

/* NumPy broadcasting over symbolic dims: right-aligned, and a dim equal to
 * the constant 1 stretches to the other. The result's dims are written into
 * dims (SEQ_MAX_RANK entries) and its rank into *rank. */
static int broadcast_shape(Infer *cx, IrType x, IrType y, DimExpr *dims, int *rank) {
  int r = x.rank > y.rank ? x.rank : y.rank;
  for (int i = 0; i < r; i++) {
    int xi = x.rank - r + i, yi = y.rank - r + i;
    if (xi < 0) {
      dims[i] = y.dims[yi];
    } else if (yi < 0) {
      dims[i] = x.dims[xi];
    } else if (dim_eq(x.dims[xi], y.dims[yi]) || dim_is_one(y.dims[yi])) {
      dims[i] = x.dims[xi];
    } else if (dim_is_one(x.dims[xi])) {
      dims[i] = y.dims[yi];
    } else {
      return fail(cx, "cannot broadcast %s with %s", tstr(cx, x), tstr(cx, y));
    }
  }
  *rank = r;
  return 0;
}

static int result(Infer *cx, IrElem elem, int rank, const DimExpr *dims, IrType *out) {
  *out = ir_type(cx->a, elem, rank, dims);
  if (out->rank != rank) return fail(cx, "out of memory");
  return 0;
}

static int need_real(Infer *cx, const char *op, IrType t) {
  if (t.elem == IR_REAL) return 0;
  return fail(cx, "%s needs a real operand, not %s", op, tstr(cx, t));
}

static int need_rank(Infer *cx, const char *op, IrType t, int minrank) {
  if (t.rank >= minrank) return 0;
  return fail(cx, "%s needs an operand of rank at least %d, not %s", op, minrank, tstr(cx, t));
}

/* An element count that the polynomial representation cannot hold makes
 * RESHAPE uncheckable; that is reported rather than accepted. */
static int elem_count(IrType t, DimExpr *out) {
  DimExpr n = dim_const(1);
  for (int i = 0; i < t.rank; i++)
    if (dim_mul(n, t.dims[i], &n)) return -1;
  *out = n;
  return 0;
}

/* A dim expression that must not be negative: checked when it is constant,
 * accepted when symbolic (dims are only known at run time). */
static int nonneg(DimExpr e) {
  int64_t v;
  return !dim_is_const(e, &v) || v >= 0;
}

static int valid_type(IrType t) {
  return t.rank >= 0 && t.rank <= SEQ_MAX_RANK && (t.rank == 0 || t.dims) &&
         (t.elem == IR_REAL || t.elem == IR_COMPLEX || (t.elem == IR_INT && t.rank == 0));
}

static int infer_ew(Infer *cx, IrOp op, int nargs, const IrType *ts, IrType *out) {
  const char *name = ir_op_info[op].text;
  for (int i = 0; i < nargs; i++)
    if (ts[i].elem == IR_INT)
      return fail(cx, "%s cannot take an int operand (ints are only token indices)", name);
  IrElem elem = IR_REAL;
  for (int i = 0; i < nargs; i++)
    if (ts[i].elem == IR_COMPLEX) elem = IR_COMPLEX;
  switch (op) {
  case IR_NEG:
  case IR_EXP:
  case IR_LOG:
  case IR_ADD:
  case IR_SUB:
  case IR_MUL:
  case IR_DIV:
    break; /* real or complex */
  case IR_ABS:
    elem = IR_REAL;
    break;
  case IR_CPLX:
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, name, ts[i])) return -1;
    elem = IR_COMPLEX;
    break;
  case IR_RE:
  case IR_IM:
  case IR_CONJ:
    if (ts[0].elem != IR_COMPLEX)
      return fail(cx, "%s needs a complex operand, not %s", name, tstr(cx, ts[0]));
    elem = op == IR_CONJ ? IR_COMPLEX : IR_REAL;
    break;
  default:
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, name, ts[i])) return -1;
    break;
  }
  DimExpr dims[SEQ_MAX_RANK];
  int rank = ts[0].rank;
  if (nargs == 1) {
    if (rank > 0) memcpy(dims, ts[0].dims, (size_t)rank * sizeof *dims);
  } else if (broadcast_shape(cx, ts[0], ts[1], dims, &rank)) {
    return -1;
  }
  return result(cx, elem, rank, dims, out);
}

static int infer_matmul(Infer *cx, IrType x, IrType y, IrType *out) {
  if (x.elem == IR_INT || y.elem == IR_INT)
    return fail(cx, "matmul cannot take an int operand (ints are only token indices)");
  if (x.rank < 1 || x.rank > 2 || y.rank < 1 || y.rank > 2)
    return fail(cx, "matrix product of %s and %s: operands must be vectors or matrices",
                tstr(cx, x), tstr(cx, y));
  DimExpr kx = x.dims[x.rank - 1], ky = y.dims[0];
  if (!dim_eq(kx, ky))
    return fail(cx, "matrix product of %s and %s: inner dimensions %s and %s differ", tstr(cx, x),
                tstr(cx, y), dstr(cx, kx), dstr(cx, ky));
  DimExpr dims[2];
  int rank = 0;
  if (x.rank == 2) dims[rank++] = x.dims[0];
  if (y.rank == 2) dims[rank++] = y.dims[1];
  IrElem elem = x.elem == IR_COMPLEX || y.elem == IR_COMPLEX ? IR_COMPLEX : IR_REAL;
  return result(cx, elem, rank, dims, out);
}

/* BROADCAST's target is the node's own type: the operand must stretch to it
 * by NumPy's rules, without changing the element type. */
static int check_broadcast(Infer *cx, IrType x, IrType to) {
  if (x.elem != to.elem || x.rank > to.rank)
    return fail(cx, "cannot broadcast %s to %s", tstr(cx, x), tstr(cx, to));
  for (int i = 0; i < x.rank; i++) {
    DimExpr d = x.dims[i], t = to.dims[to.rank - x.rank + i];
    if (!dim_eq(d, t) && !dim_is_one(d))
      return fail(cx, "cannot broadcast %s to %s", tstr(cx, x), tstr(cx, to));
  }
  return 0;
}

int ir_type_same_sizes(IrType x, IrType to) {
  int used[SEQ_MAX_RANK] = {0}, n = 0;
  for (int i = 0; i < x.rank; i++) {
    if (dim_is_one(x.dims[i])) continue;
    int j = 0;
    while (j < to.rank && (used[j] || dim_is_one(to.dims[j]) || !dim_eq(x.dims[i], to.dims[j])))
      j++;
    if (j == to.rank) return 0;
    used[j] = 1;
    n++;
  }
  for (int j = 0; j < to.rank; j++) n -= !dim_is_one(to.dims[j]);
  return n == 0;
}

static int check_reshape(Infer *cx, IrType x, IrType to) {
  if (x.elem != to.elem)
    return fail(cx, "cannot reshape %s to %s: element types differ", tstr(cx, x), tstr(cx, to));
  if (ir_type_same_sizes(x, to)) return 0;
  DimExpr nx, nt;
  if (elem_count(x, &nx) || elem_count(to, &nt))
    return fail(cx, "cannot reshape %s to %s: element count too complex to compare", tstr(cx, x),
                tstr(cx, to));
  if (!dim_eq(nx, nt))
    return fail(cx, "cannot reshape %s to %s: element counts %s and %s differ", tstr(cx, x),
                tstr(cx, to), dstr(cx, nx), dstr(cx, nt));
  return 0;
}

static int check_axis(Infer *cx, const char *op, IrType t, int axis) {
  if (axis >= 0 && axis < t.rank) return 0;
  return fail(cx, "%s: axis %d out of range for %s", op, axis, tstr(cx, t));
}

/* The last axis of x carries a weight or bias of the normalization: it must
 * broadcast against x without growing it. */
static int check_norm_operand(Infer *cx, const char *op, IrType x, IrType w) {
  if (need_real(cx, op, w)) return -1;
  DimExpr dims[SEQ_MAX_RANK];
  int rank;
  if (broadcast_shape(cx, x, w, dims, &rank)) return -1;
  IrType b = {IR_REAL, rank, dims};
  if (!ir_type_eq(b, x))
    return fail(cx, "%s: %s does not broadcast to the shape of %s", op, tstr(cx, w), tstr(cx, x));
  return 0;
}

int ir_infer_type(const IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args,
                  IrType *out, char *msg, size_t msglen) {
  Infer cxs = {f, a, msg, msglen}, *cx = &cxs;
  IrOp op = proto->op;
  if ((unsigned)op >= IR_NUM_OPS) return fail(cx, "unknown op %d", (int)op);
  const IrOpInfo *info = &ir_op_info[op];
  if (nargs < 0 || (nargs > 0 && !args)) return fail(cx, "%s: bad operand list", info->text);
  if (info->arity >= 0 && nargs != info->arity)
    return fail(cx, "%s takes %d operand%s, not %d", info->text, info->arity,
                info->arity == 1 ? "" : "s", nargs);
  IrType ts[4] = {{IR_REAL, 0, NULL}, {IR_REAL, 0, NULL}, {IR_REAL, 0, NULL}, {IR_REAL, 0, NULL}};
  for (int i = 0; i < nargs; i++) {
    if (args[i] < 0 || args[i] >= f->nodes.n)
      return fail(cx, "%s: operand %d refers to node %d, which does not exist", info->text, i,
                  (int)args[i]);
    if (!valid_type(f->nodes.v[args[i]].type))
      return fail(cx, "%s: operand %d has an invalid type", info->text, i);
    if (i < 4) ts[i] = f->nodes.v[args[i]].type;
  }

  switch (op) {
  case IR_CONST:
  case IR_DIMVAL:
    if (op == IR_DIMVAL && !dim_vars_below(proto->dval, f->dims.n))
      return fail(cx, "dimval refers to a dim the function does not have");
    *out = ir_scalar(IR_REAL);
    return 0;
  case IR_EYE: {
    if (!dim_vars_below(proto->dval, f->dims.n))
      return fail(cx, "eye refers to a dim the function does not have");
    DimExpr d[2] = {proto->dval, proto->dval};
    return result(cx, IR_REAL, 2, d, out);
  }
  case IR_PARAM:
    if (proto->index < 0 || proto->index >= f->params.n)
      return fail(cx, "param %d does not exist", proto->index);
    *out = f->params.v[proto->index].type;
    return 0;
  case IR_INPUT:
    if (proto->index < 0 || proto->index >= f->inputs.n)
      return fail(cx, "input %d does not exist", proto->index);
    *out = f->inputs.v[proto->index].type;
    return 0;
  case IR_STATE:
    if (proto->index < 0 || proto->index >= f->states.n)
      return fail(cx, "state %d does not exist", proto->index);
    *out = f->states.v[proto->index].type;
    return 0;

  case IR_MATMUL:
    return infer_matmul(cx, ts[0], ts[1], out);
  case IR_OUTER: {
    if (ts[0].elem == IR_INT || ts[1].elem == IR_INT)
      return fail(cx, "outer cannot take an int operand (ints are only token indices)");
    if (ts[0].rank != 1 || ts[1].rank != 1)
      return fail(cx, "outer product of %s and %s: operands must be vectors", tstr(cx, ts[0]),
                  tstr(cx, ts[1]));
    DimExpr dims[2] = {ts[0].dims[0], ts[1].dims[0]};
    IrElem elem = ts[0].elem == IR_COMPLEX || ts[1].elem == IR_COMPLEX ? IR_COMPLEX : IR_REAL;
    return result(cx, elem, 2, dims, out);
  }
  case IR_DIAG: {
    if (ts[0].elem == IR_INT) return fail(cx, "diag cannot take an int operand");
    if (need_rank(cx, "diag", ts[0], 2)) return -1;
    int r = ts[0].rank;
    if (!dim_eq(ts[0].dims[r - 1], ts[0].dims[r - 2]))
      return fail(cx, "diag needs a square matrix, not %s", tstr(cx, ts[0]));
    return result(cx, ts[0].elem, r - 1, ts[0].dims, out);
  }
  case IR_INV:
  case IR_EXPM: {
    const char *name = ir_op_info[proto->op].text;
    if (ts[0].elem != IR_REAL)
      return fail(cx, "%s takes a real matrix, not %s", name, tstr(cx, ts[0]));
    if (need_rank(cx, name, ts[0], 2)) return -1;
    int r = ts[0].rank;
    if (!dim_eq(ts[0].dims[r - 1], ts[0].dims[r - 2]))
      return fail(cx, "%s needs square matrices, not %s", name, tstr(cx, ts[0]));
    return result(cx, IR_REAL, r, ts[0].dims, out);
  }
  case IR_TRANSPOSE: {
    if (ts[0].elem == IR_INT) return fail(cx, "transpose cannot take an int operand");
    if (need_rank(cx, "transpose", ts[0], 2)) return -1;
    DimExpr dims[SEQ_MAX_RANK];
    int r = ts[0].rank;
    memcpy(dims, ts[0].dims, (size_t)r * sizeof *dims);
    dims[r - 2] = ts[0].dims[r - 1];
    dims[r - 1] = ts[0].dims[r - 2];
    return result(cx, ts[0].elem, r, dims, out);
  }

  case IR_BROADCAST:
  case IR_RESHAPE: {
    IrType to = proto->type;
    if (!valid_type(to) || to.elem == IR_INT)
      return fail(cx, "%s: invalid target type", info->text);
    for (int i = 0; i < to.rank; i++)
      if (!dim_vars_below(to.dims[i], f->dims.n))
        return fail(cx, "%s: target type refers to a dim the function does not have", info->text);
    if (op == IR_BROADCAST ? check_broadcast(cx, ts[0], to) : check_reshape(cx, ts[0], to))
      return -1;
    return result(cx, to.elem, to.rank, to.dims, out);
  }

  case IR_SLICE: {
    IrType x = ts[0];
    if (x.elem == IR_INT) return fail(cx, "slice cannot take an int operand");
    if (check_axis(cx, "slice", x, proto->axis)) return -1;
    DimExpr d = x.dims[proto->axis], len, rest;
    if (dim_sub(proto->stop, proto->start, &len) || dim_sub(d, proto->stop, &rest))
      return fail(cx, "slice bounds too complex");
    if (!nonneg(proto->start) || !nonneg(len) || !nonneg(rest))
      return fail(cx, "slice [%s, %s) out of range for axis %d of %s", dstr(cx, proto->start),
                  dstr(cx, proto->stop), proto->axis, tstr(cx, x));
    DimExpr dims[SEQ_MAX_RANK];
    memcpy(dims, x.dims, (size_t)x.rank * sizeof *dims);
    dims[proto->axis] = len;
    return result(cx, x.elem, x.rank, dims, out);
  }
  case IR_INDEX: {
    IrType x = ts[0];
    if (x.elem == IR_INT) return fail(cx, "index cannot take an int operand");
    if (check_axis(cx, "index", x, proto->axis)) return -1;
    DimExpr rest, one = dim_const(1);
    /* start must satisfy 0 <= start <= dim - 1 */
    if (dim_sub(x.dims[proto->axis], proto->start, &rest) || dim_sub(rest, one, &rest))
      return fail(cx, "index too complex");
    if (!nonneg(proto->start) || !nonneg(rest))
      return fail(cx, "index %s out of range for axis %d of %s", dstr(cx, proto->start),
                  proto->axis, tstr(cx, x));
    DimExpr dims[SEQ_MAX_RANK];
    int r = 0;
    for (int i = 0; i < x.rank; i++)
      if (i != proto->axis) dims[r++] = x.dims[i];
    return result(cx, x.elem, r, dims, out);
  }
  case IR_CONCAT: {
    if (nargs < 1) return fail(cx, "concat needs at least one operand");
    IrType x = f->nodes.v[args[0]].type;
    if (x.elem == IR_INT) return fail(cx, "concat cannot take an int operand");
    if (check_axis(cx, "concat", x, proto->axis)) return -1;
    DimExpr dims[SEQ_MAX_RANK];
    memcpy(dims, x.dims, (size_t)x.rank * sizeof *dims);
    for (int k = 1; k < nargs; k++) {
      IrType y = f->nodes.v[args[k]].type;
      int ok = y.elem == x.elem && y.rank == x.rank;
      for (int i = 0; ok && i < x.rank; i++)
        if (i != proto->axis && !dim_eq(x.dims[i], y.dims[i])) ok = 0;
      if (!ok)
        return fail(cx, "cannot concatenate %s and %s along axis %d", tstr(cx, x), tstr(cx, y),
                    proto->axis);
      if (dim_add(dims[proto->axis], y.dims[proto->axis], &dims[proto->axis]))
        return fail(cx, "concat: size along axis %d too complex", proto->axis);
    }
    return result(cx, x.elem, x.rank, dims, out);
  }
  case IR_GATHER: {
    IrType tab = ts[0], idx = ts[1];
    if (tab.elem != IR_REAL || tab.rank < 1)
      return fail(cx, "gather needs a real table of rank at least 1, not %s", tstr(cx, tab));
    if (idx.elem != IR_INT || idx.rank != 0)
      return fail(cx, "gather needs an int index, not %s", tstr(cx, idx));
    return result(cx, IR_REAL, tab.rank - 1, tab.dims + 1, out);
  }

  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN: {
    IrType x = ts[0];
    if (x.elem == IR_INT) return fail(cx, "%s cannot take an int operand", info->text);
    if ((op == IR_AMAX || op == IR_AMIN) && need_real(cx, info->text, x)) return -1;
    if (proto->axis == -1) return result(cx, x.elem, 0, NULL, out);
    if (check_axis(cx, info->text, x, proto->axis)) return -1;
    DimExpr dims[SEQ_MAX_RANK];
    int r = 0;
    for (int i = 0; i < x.rank; i++)
      if (i != proto->axis) dims[r++] = x.dims[i];
    return result(cx, x.elem, r, dims, out);
  }

  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
  case IR_SOFTMAX: {
    IrType x = ts[0];
    if (need_real(cx, info->text, x) || need_rank(cx, info->text, x, 1)) return -1;
    for (int i = 1; i < nargs; i++)
      if (check_norm_operand(cx, info->text, x, ts[i])) return -1;
    return result(cx, x.elem, x.rank, x.dims, out);
  }

  case IR_CALL:
  case IR_RESULT: {
    /* The caller knows the callee (the module is not at hand here) and gives
     * the result type; ir_verify checks it against the callee's signature. */
    if (op == IR_CALL && (proto->index < 0 || proto->index >= f->layers.n))
      return fail(cx, "call of layer %d, which does not exist", proto->index);
    if (op == IR_RESULT) {
      if (f->nodes.v[args[0]].op != IR_CALL) return fail(cx, "result of a node that is not a call");
      if (proto->index < 0) return fail(cx, "result %d does not exist", proto->index);
    }
    IrType to = proto->type;
    if (!valid_type(to)) return fail(cx, "%s: invalid result type", info->text);
    return result(cx, to.elem, to.rank, to.dims, out);
  }

  case IR_CAUSAL_CONV: {
    if (nargs != 3 && nargs != 4)
      return fail(cx, "causal_conv takes 3 or 4 operands, not %d", nargs);
    IrType u = ts[0], w = ts[1], b = ts[2];
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, "causal_conv", ts[i])) return -1;
    int ok = u.rank == 1 && b.rank == 1 && dim_eq(b.dims[0], u.dims[0]) &&
             (w.rank == 2 || (w.rank == 3 && dim_is_one(w.dims[1]))) &&
             dim_eq(w.dims[0], u.dims[0]);
    if (!ok)
      return fail(cx, "causal_conv needs u: [D], w: [D, K] or [D, 1, K], b: [D]; got %s, %s, %s",
                  tstr(cx, u), tstr(cx, w), tstr(cx, b));
    if (nargs == 4) {
      /* The window entering the first step: the K-1 inputs before it. */
      IrType s0 = ts[3];
      DimExpr km1;
      if (w.rank != 2 || s0.rank != 2 || !dim_eq(s0.dims[0], u.dims[0]) ||
          dim_sub(w.dims[1], dim_const(1), &km1) || !dim_eq(s0.dims[1], km1))
        return fail(cx, "causal_conv's initial window must be [D, K-1] for w: [D, K]; got %s, %s",
                    tstr(cx, s0), tstr(cx, w));
    }
    return result(cx, IR_REAL, 1, u.dims, out);
  }

  case IR_SCAN:
  case IR_SCAN_MAX: {
    /* The coefficient a broadcasts to the value b (numpy rules); the initial
     * value has the result's type. A complex coefficient needs a complex b. */
    IrType a = ts[0], b = ts[1], h0 = ts[2];
    if (a.elem == IR_INT || b.elem == IR_INT) return fail(cx, "%s cannot take ints", info->text);
    if (op == IR_SCAN_MAX && (need_real(cx, info->text, a) || need_real(cx, info->text, b)))
      return -1;
    if (a.elem == IR_COMPLEX && b.elem != IR_COMPLEX)
      return fail(cx, "%s: a complex coefficient %s needs a complex value, not %s", info->text,
                  tstr(cx, a), tstr(cx, b));
    IrType as_b = a;
    as_b.elem = b.elem;
    if (check_broadcast(cx, as_b, b)) return -1;
    if (!ir_type_eq(h0, b))
      return fail(cx, "%s: the initial value %s is not of the value's type %s", info->text,
                  tstr(cx, h0), tstr(cx, b));
    return result(cx, b.elem, b.rank, b.dims, out);
  }
  case IR_WINDOW: {
    IrType v = ts[0], w = ts[1];
    if (check_axis(cx, "window", w, proto->axis)) return -1;
    int ok = v.elem == w.elem && v.elem != IR_INT && v.rank == w.rank;
    for (int i = 0; ok && i < w.rank; i++)
      if (i != proto->axis && !dim_eq(v.dims[i], w.dims[i])) ok = 0;
    if (!ok)
      return fail(cx, "window: %s does not extend %s along axis %d", tstr(cx, v), tstr(cx, w),
                  proto->axis);
    return result(cx, w.elem, w.rank, w.dims, out);
  }
  case IR_LINATTN:
  case IR_LINATTN_STATE: {
    /* Operands: [q,] k, v, lg, S0; every one real, with the lead axes of S0. */
    int off = op == IR_LINATTN ? 1 : 0;
    IrType S = f->nodes.v[args[off + 3]].type, k = ts[off], v = ts[off + 1],
           lg = f->nodes.v[args[off + 2]].type;
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, info->text, f->nodes.v[args[i]].type)) return -1;
    if (S.rank < 2) return fail(cx, "%s: the state %s is not a matrix", info->text, tstr(cx, S));
    int L = S.rank - 2;
    DimExpr V = S.dims[L], K = S.dims[L + 1];
    int ok = k.rank == L + 1 && v.rank == L + 1 && lg.rank == L + 1 && dim_eq(k.dims[L], K) &&
             dim_eq(v.dims[L], V) && (dim_is_one(lg.dims[L]) || dim_eq(lg.dims[L], K));
    if (op == IR_LINATTN) ok = ok && ts[0].rank == L + 1 && dim_eq(ts[0].dims[L], K);
    for (int i = 0; ok && i < L; i++) {
      ok = dim_eq(k.dims[i], S.dims[i]) && dim_eq(v.dims[i], S.dims[i]) &&
           dim_eq(lg.dims[i], S.dims[i]);
      if (op == IR_LINATTN) ok = ok && dim_eq(ts[0].dims[i], S.dims[i]);
    }
    if (!ok)
      return fail(cx,
                  "%s: operands do not fit the state %s ([..., V, K]: q, k [..., K], v [..., "
                  "V], lg [..., 1 or K])",
                  info->text, tstr(cx, S));
    if (op == IR_LINATTN_STATE) return result(cx, IR_REAL, S.rank, S.dims, out);
    return result(cx, IR_REAL, L + 1, S.dims, out);
  }
  case IR_DELTA:
  case IR_DELTA_STATE: {
    /* Operands: [q,] k, v, beta, lg, S0; every one real. */
    int off = op == IR_DELTA ? 1 : 0;
    IrType S = f->nodes.v[args[off + 4]].type, k = f->nodes.v[args[off]].type,
           v = f->nodes.v[args[off + 1]].type, b = f->nodes.v[args[off + 2]].type,
           lg = f->nodes.v[args[off + 3]].type, q = f->nodes.v[args[0]].type;
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, info->text, f->nodes.v[args[i]].type)) return -1;
    if (S.rank < 2) return fail(cx, "%s: the state %s is not a matrix", info->text, tstr(cx, S));
    int L = S.rank - 2;
    DimExpr V = S.dims[L], K = S.dims[L + 1];
    int ok = k.rank == L + 2 && v.rank == L + 2 && b.rank == L + 1 && lg.rank == L &&
             dim_eq(k.dims[L + 1], K) && dim_eq(v.dims[L + 1], V) && dim_eq(v.dims[0], k.dims[0]) &&
             dim_eq(b.dims[0], k.dims[0]);
    if (op == IR_DELTA) ok = ok && q.rank == L + 1 && dim_eq(q.dims[L], K);
    for (int i = 0; ok && i < L; i++) {
      ok = dim_eq(k.dims[i + 1], S.dims[i]) && dim_eq(v.dims[i + 1], S.dims[i]) &&
           dim_eq(b.dims[i + 1], S.dims[i]) && dim_eq(lg.dims[i], S.dims[i]);
      if (op == IR_DELTA) ok = ok && dim_eq(q.dims[i], S.dims[i]);
    }
    if (!ok)
      return fail(cx,
                  "%s: operands do not fit the state %s ([..., V, K]: q [..., K], k [R, ..., "
                  "K], v [R, ..., V], beta [R, ...], lg [...])",
                  info->text, tstr(cx, S));
    if (op == IR_DELTA_STATE) return result(cx, IR_REAL, S.rank, S.dims, out);
    return result(cx, IR_REAL, L + 1, S.dims, out);
  }
  case IR_DPLR:
  case IR_DPLR_STATE: {
    /* Operands: [q,] lw, a, b, v, k, S0; every one real, with the lead axes
     * of S0; v along V, the others along K. */
    int off = op == IR_DPLR ? 1 : 0;
    IrType S = f->nodes.v[args[off + 5]].type;
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, info->text, f->nodes.v[args[i]].type)) return -1;
    if (S.rank < 2) return fail(cx, "%s: the state %s is not a matrix", info->text, tstr(cx, S));
    int L = S.rank - 2, ok = 1;
    for (int j = 0; j < off + 5 && ok; j++) {
      IrType t = f->nodes.v[args[j]].type;
      DimExpr last = j == off + 3 ? S.dims[L] : S.dims[L + 1];
      ok = t.rank == L + 1 && dim_eq(t.dims[L], last);
      for (int i = 0; ok && i < L; i++) ok = dim_eq(t.dims[i], S.dims[i]);
    }
    if (!ok)
      return fail(cx,
                  "%s: operands do not fit the state %s ([..., V, K]: q, lw, a, b, k [..., K], "
                  "v [..., V])",
                  info->text, tstr(cx, S));
    if (op == IR_DPLR_STATE) return result(cx, IR_REAL, S.rank, S.dims, out);
    return result(cx, IR_REAL, L + 1, S.dims, out);
  }
  case IR_PLSTM:
  case IR_PLSTM_STATE: {
    /* Operands: [q, m,] tr, s, v, k, S0; every one real, with the lead axes
     * of S0 [..., J, V, K]: q and k along K, m and s along J, tr [..., J, J],
     * v along V. */
    int off = op == IR_PLSTM ? 2 : 0;
    IrType S = f->nodes.v[args[off + 4]].type;
    for (int i = 0; i < nargs; i++)
      if (need_real(cx, info->text, f->nodes.v[args[i]].type)) return -1;
    if (S.rank < 3)
      return fail(cx, "%s: the state %s has no transition axis", info->text, tstr(cx, S));
    int L = S.rank - 3, ok = 1;
    DimExpr J = S.dims[L], V = S.dims[L + 1], K = S.dims[L + 2];
    for (int j = 0; j < off + 4 && ok; j++) {
      IrType t = f->nodes.v[args[j]].type;
      int w = j - off; /* -2 q, -1 m, 0 tr, 1 s, 2 v, 3 k */
      int rank = w == 0 ? L + 2 : L + 1;
      DimExpr last = w == -2 || w == 3 ? K : w == 2 ? V : J;
      ok = t.rank == rank && dim_eq(t.dims[rank - 1], last) && (w != 0 || dim_eq(t.dims[L], J));
      for (int i = 0; ok && i < L; i++) ok = dim_eq(t.dims[i], S.dims[i]);
    }
    if (!ok)
      return fail(cx,
                  "%s: operands do not fit the state %s ([..., J, V, K]: q, k [..., K], m, s "
                  "[..., J], tr [..., J, J], v [..., V])",
                  info->text, tstr(cx, S));
    if (op == IR_PLSTM_STATE) return result(cx, IR_REAL, S.rank, S.dims, out);
    DimExpr o[SEQ_MAX_RANK];
    memcpy(o, S.dims, sizeof(DimExpr) * (size_t)L);
    o[L] = V;
    return result(cx, IR_REAL, L + 1, o, out);
  }
  case IR_ATTN: {
    IrType q = ts[0], k = ts[1], v = ts[2];
    for (int i = 0; i < 3; i++)
      if (need_real(cx, "causal_attention", ts[i])) return -1;
    int L = q.rank - 1;
    int ok = q.rank >= 1 && k.rank == q.rank && v.rank == q.rank && dim_eq(k.dims[L], q.dims[L]);
    for (int i = 0; ok && i < L; i++)
      ok = dim_eq(k.dims[i], q.dims[i]) && dim_eq(v.dims[i], q.dims[i]);
    if (!ok)
      return fail(cx,
                  "causal_attention needs q, k: [..., K] and v: [..., V] with the same leading "
                  "(head) axes; got %s, %s, %s",
                  tstr(cx, q), tstr(cx, k), tstr(cx, v));
    return result(cx, IR_REAL, v.rank, v.dims, out);
  }
  case IR_DELAY:
    if (ts[0].elem == IR_INT || !ir_type_eq(ts[0], ts[1]))
      return fail(cx, "delay: the first value %s is not of the sequence's type %s", tstr(cx, ts[1]),
                  tstr(cx, ts[0]));
    return result(cx, ts[0].elem, ts[0].rank, ts[0].dims, out);

  default:
    if (info->flags & IRF_EW) return infer_ew(cx, op, nargs, ts, out);
    return fail(cx, "no type rule for %s", info->text);
  }
}

/* ---- Index bounds at concrete dims ---------------------------------------- */

/* e at `dims`, signed (dim_eval refuses negatives); -1 on overflow. */
static int eval_signed(DimExpr e, const int64_t *dims, int64_t *out) {
  int64_t acc = 0;
  for (int i = 0; i < e.nterms; i++) {
    int64_t t = e.t[i].coef;
    for (int k = 0; k < e.t[i].nvars; k++)
      if (__builtin_mul_overflow(t, dims[e.t[i].vars[k]], &t)) return -1;
    if (__builtin_add_overflow(acc, t, &acc)) return -1;
  }
  *out = acc;
  return 0;
}

/* A bound as the source wrote it: lowering turned a negative constant c
 * into `size + c` (frontend/lower.c), so that form gives c back. */
static int64_t as_written(DimExpr bound, DimExpr size, int64_t value) {
  DimExpr d;
  int64_t c;
  if (dim_sub(bound, size, &d) == 0 && dim_is_const(d, &c) && c < 0) return c;
  return value;
}

int ir_check_index_bounds(const IrFunc *f, const IrNode *nd, const int64_t *dims, int64_t size,
                          DiagEngine *de) {
  const IrNode *x = &f->nodes.v[nd->args[0]];
  DimExpr sz = x->type.dims[nd->axis];
  int slice = nd->op == IR_SLICE;
  int64_t start = 0, stop = 0;
  int over = eval_signed(nd->start, dims, &start) || (slice && eval_signed(nd->stop, dims, &stop));
  if (!over && start >= 0 && (slice ? start <= stop && stop <= size : start < size)) return 0;
  if (over) {
    diag_error(de, nd->loc, "%s bounds overflow with these dimensions", slice ? "slice" : "index");
  } else if (slice) {
    diag_error(de, nd->loc,
               "slice [%lld, %lld) is out of range for axis %d of size %lld (a negative bound "
               "counts from the end)",
               (long long)as_written(nd->start, sz, start),
               (long long)as_written(nd->stop, sz, stop), nd->axis, (long long)size);
  } else {
    diag_error(de, nd->loc,
               "index %lld is out of range for axis %d of size %lld (valid: %lld to %lld; a "
               "negative index counts from the end)",
               (long long)as_written(nd->start, sz, start), nd->axis, (long long)size,
               (long long)-size, (long long)size - 1);
  }
  return -1;
}
