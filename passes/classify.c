/* classify.c - recurrence classification: for every state of every cell, how
 * the value leaving the step depends on the value entering it (docs/algorithms.md
 * §1), and the parallel strategy that class admits.
 *
 * Later passes pick parallel forms (associative scans, chunkwise-parallel
 * forms) from these classes, so a class is a precondition proved on the IR,
 * never a guess from the layout of the state: the comment above the code that
 * decides a class says exactly what it proves. Where a proof fails, the next
 * less specific class is taken, in the end "linear, dense" or "nonlinear".
 *
 * Passes over the node array (a topological order):
 *   1. state dependencies: which STATE nodes each node reaches. States whose
 *      next values reach each other form a group (strongly connected
 *      component) and are analysed jointly; states of other groups are
 *      inputs ("given").
 *   2. per group, an abstract interpretation: is each node free of the
 *      group ("S-free"), affine in it over (+, x), affine over (max, +), or
 *      nonlinear (and where linearity was lost)? The linear part of an
 *      affine value is a short list of terms, each a state of the group moved
 *      and combined axis by axis (kept in place, mapped by an S-free matrix,
 *      or contracted with an S-free vector) times S-free factors whose
 *      varying axes are known. The S-free part of every value is a sum of
 *      products of factors whose varying axes are known: rank-1 writes are
 *      read off it. A second walk follows single elements through pure data
 *      movement to recognize shift registers.
 *   3. per nonlinear group, the Jacobian's structure: does the group enter
 *      `next` only through elementwise ops (diagonal, or k x k blocks of
 *      diagonals for k coupled states), or through a contraction (dense)?
 *   4. per state of a linear group of one, whether it is a linear
 *      time-invariant system (its update and the outputs that read it
 *      linear in it and the inputs, with time-invariant coefficients), and
 *      along which axes it splits into independent channels: the
 *      convolution form, which is reported and never built.
 * Each op either has a case below saying what it does to these facts, or
 * makes a value nonlinear; an op that is surely linear but whose structure
 * the terms cannot say drops the structure ("dense"). Both can only make a
 * class less specific.
 */
#include "passes/passes.h"

#include <string.h>

/* ---- Small helpers -------------------------------------------------------- */

/* Axes of t whose size is not the constant 1 (bit k = axis k). */
static unsigned nonone_mask(IrType t) {
  unsigned m = 0;
  for (int k = 0; k < t.rank; k++)
    if (!dim_is_one(t.dims[k])) m |= 1u << k;
  return m;
}

static unsigned remove_axis(unsigned m, int a) {
  unsigned low = m & ((1u << a) - 1);
  return low | ((m >> (a + 1)) << a);
}

/* Do a and b have the same sequence of sizes other than 1? (A reshape
 * between them only inserts or removes axes of size 1.) */
static int same_nonone_dims(IrType a, IrType b) {
  int i = 0, j = 0;
  for (;;) {
    while (i < a.rank && dim_is_one(a.dims[i])) i++;
    while (j < b.rank && dim_is_one(b.dims[j])) j++;
    if (i == a.rank || j == b.rank) return i == a.rank && j == b.rank;
    if (!dim_eq(a.dims[i], b.dims[j])) return 0;
    i++, j++;
  }
}

/* Maps bit masks through such a reshape: the k-th non-1 axis of a to the
 * k-th non-1 axis of b. */
static unsigned remap_nonone(unsigned m, IrType a, IrType b) {
  unsigned out = 0;
  int j = 0;
  for (int i = 0; i < a.rank; i++) {
    if (dim_is_one(a.dims[i])) continue;
    while (j < b.rank && dim_is_one(b.dims[j])) j++;
    if (j < b.rank && (m >> i & 1)) out |= 1u << j;
    j++;
  }
  return out;
}

static int dims_equal(IrType a, IrType b) {
  if (a.rank != b.rank) return 0;
  for (int k = 0; k < a.rank; k++)
    if (!dim_eq(a.dims[k], b.dims[k])) return 0;
  return 1;
}

/* The trailing b.rank sizes of a equal b's. */
static int trailing_equal(IrType a, IrType b) {
  if (a.rank < b.rank) return 0;
  for (int k = 0; k < b.rank; k++)
    if (!dim_eq(a.dims[a.rank - b.rank + k], b.dims[k])) return 0;
  return 1;
}

/* Never NULL, so that it can be printed: out of memory shows as "?" and is
 * caught when the reason it is printed into is NULL. */
static const char *loc_str(Arena *a, SrcLoc l) {
  if (!l.file) return "<unknown location>";
  const char *s = arena_printf(a, "%s:%d:%d", l.file->name, l.line, l.col);
  return s ? s : "?";
}

/* Looks through data movement for the parameter an operand is a view of, so
 * that a reason can say "matmul with weight_hh". */
static const char *param_name(const IrFunc *f, IrRef r) {
  while (r >= 0) {
    const IrNode *n = &f->nodes.v[r];
    switch (n->op) {
    case IR_PARAM:
      return n->index >= 0 && n->index < f->params.n ? f->params.v[n->index].name : NULL;
    case IR_INDEX:
    case IR_SLICE:
    case IR_RESHAPE:
    case IR_TRANSPOSE:
    case IR_BROADCAST:
      r = n->args[0];
      break;
    default:
      return NULL;
    }
  }
  return NULL;
}

static int count_axes(unsigned m) {
  int n = 0;
  for (; m; m &= m - 1) n++;
  return n;
}

static int lowest_axis(unsigned m) {
  for (int k = 0; k < SEQ_MAX_RANK; k++)
    if (m >> k & 1) return k;
  return -1;
}

/* a <= b for every value of the dims: b - a has no negative coefficient,
 * and dims are never negative. Only a sufficient test: d_conv - 2 >= 0 holds
 * wherever such a slice is valid, but is not proved here. */
static int dim_le(DimExpr a, DimExpr b) {
  DimExpr d;
  if (dim_sub(b, a, &d)) return 0;
  for (int i = 0; i < d.nterms; i++)
    if (d.t[i].coef < 0) return 0;
  return 1;
}

/* Axis maps between a node and the node built from it: map[k] is the new
 * axis of old axis k, or -1 where an axis of size 1 disappears. Numpy
 * broadcasting aligns axes on the right. */
static void broadcast_map(IrType from, IrType to, int *map) {
  for (int k = 0; k < from.rank; k++) map[k] = k + to.rank - from.rank;
}

/* A reshape between same_nonone_dims types keeps the order of the elements:
 * the k-th axis of size other than 1 stays the k-th. */
static void reshape_map(IrType from, IrType to, int *map) {
  int j = 0;
  for (int i = 0; i < from.rank; i++) {
    map[i] = -1;
    if (dim_is_one(from.dims[i])) continue;
    while (j < to.rank && dim_is_one(to.dims[j])) j++;
    if (j < to.rank) map[i] = j++;
  }
}

static void identity_map(int rank, int *map) {
  for (int k = 0; k < rank; k++) map[k] = k;
}

static void transpose_map(int rank, int *map) {
  identity_map(rank, map);
  if (rank >= 2) map[rank - 2] = rank - 1, map[rank - 1] = rank - 2;
}

static unsigned move_mask(unsigned m, const int *map, int from_rank) {
  unsigned out = 0;
  for (int k = 0; k < from_rank; k++)
    if ((m >> k & 1) && map[k] >= 0) out |= 1u << map[k];
  return out;
}

/* Axes of `to` of size other than 1 that broadcasting `from` to it creates:
 * new leading axes and axes of size 1 stretched. */
static unsigned broadcast_new_axes(IrType from, IrType to) {
  unsigned m = 0;
  int shift = to.rank - from.rank;
  for (int k = 0; k < to.rank; k++)
    if (!dim_is_one(to.dims[k]) && (k < shift || dim_is_one(from.dims[k - shift]))) m |= 1u << k;
  return m;
}

/* A matrix or outer product as a broadcast product summed over one axis:
 * each operand's axes placed in a common index space (map[i] for operand i),
 * which of that space's axes have a size other than 1, and the summed axis
 * (-1 for outer). The result's axes are the space's but the summed one, in
 * order: [M,K]@[K,N] is the space (M, K, N) summed over K. */
typedef struct Einsum {
  int rank, sum;
  int map[2][2];
  unsigned nonone;
} Einsum;

static int einsum_of(const IrFunc *f, const IrNode *n, Einsum *e) {
  IrType a = f->nodes.v[n->args[0]].type, b = f->nodes.v[n->args[1]].type;
  DimExpr dims[3];
  if (n->op == IR_OUTER && a.rank == 1 && b.rank == 1) {
    *e = (Einsum){2, -1, {{0, 0}, {1, 0}}, 0};
    dims[0] = a.dims[0], dims[1] = b.dims[0];
  } else if (n->op != IR_MATMUL) {
    return -1;
  } else if (a.rank == 2 && b.rank == 2) {
    *e = (Einsum){3, 1, {{0, 1}, {1, 2}}, 0};
    dims[0] = a.dims[0], dims[1] = a.dims[1], dims[2] = b.dims[1];
  } else if (a.rank == 2 && b.rank == 1) {
    *e = (Einsum){2, 1, {{0, 1}, {1, 0}}, 0};
    dims[0] = a.dims[0], dims[1] = a.dims[1];
  } else if (a.rank == 1 && b.rank == 2) {
    *e = (Einsum){2, 0, {{0, 0}, {0, 1}}, 0};
    dims[0] = a.dims[0], dims[1] = b.dims[1];
  } else if (a.rank == 1 && b.rank == 1) {
    *e = (Einsum){1, 0, {{0, 0}, {0, 0}}, 0};
    dims[0] = a.dims[0];
  } else {
    return -1;
  }
  for (int k = 0; k < e->rank; k++)
    if (!dim_is_one(dims[k])) e->nonone |= 1u << k;
  return 0;
}

/* ---- Facts about single nodes, independent of the group ------------------ */

typedef struct Ctx {
  Arena *a;
  const IrFunc *f;
  int n;                    /* nodes */
  int ns;                   /* states */
  int nw;                   /* 64-bit words per state set */
  uint64_t *deps;           /* n * nw: states each node reaches */
  unsigned *vary;           /* axes along which each node's value may vary */
  unsigned char *invariant; /* reads no INPUT or STATE: constant over time */
  unsigned char *one;       /* exactly the constant 1 */
  const char **dim_names;   /* for reasons that name an axis by its size */
} Ctx;

static uint64_t *deps_of(const Ctx *c, IrRef r) {
  return c->deps + (size_t)r * (size_t)c->nw;
}

static int bit_get(const uint64_t *s, int i) {
  return (int)(s[i / 64] >> (i % 64) & 1);
}

static int sets_meet(const Ctx *c, const uint64_t *s, const uint64_t *t) {
  for (int k = 0; k < c->nw; k++)
    if (s[k] & t[k]) return 1;
  return 0;
}

/* The first state of set `g` that node r reaches, or -1. */
static int first_in(const Ctx *c, IrRef r, const uint64_t *g) {
  const uint64_t *d = deps_of(c, r);
  for (int i = 0; i < c->ns; i++)
    if (bit_get(d, i) && bit_get(g, i)) return i;
  return -1;
}

/* The first state node r reaches, or -1. */
static int first_state(const Ctx *c, IrRef r) {
  const uint64_t *d = deps_of(c, r);
  for (int i = 0; i < c->ns; i++)
    if (bit_get(d, i)) return i;
  return -1;
}

/* The axis attribute of n when it names an axis of its first operand, else
 * -1 (also for "all axes"): malformed IR gets a conservative answer. */
static int axis_of(const Ctx *c, const IrNode *n) {
  int rank = n->nargs > 0 ? c->f->nodes.v[n->args[0]].type.rank : 0;
  return n->axis >= 0 && n->axis < rank ? n->axis : -1;
}

/* Which axes a node's value may vary along. A coefficient that does not vary
 * along an axis of the state is shared by all its slices: that is the
 * difference between a matrix state's scalar or per-key gate and a full
 * elementwise gate. Conservative: all non-1 axes unless an op says less. */
static unsigned vary_of(const Ctx *c, IrRef r) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type;
  unsigned all = nonone_mask(t);
  if (t.rank == 0) return 0;
  switch (n->op) {
  case IR_CONST:
  case IR_DIMVAL:
    return 0;
  case IR_BROADCAST: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    return ot.rank <= t.rank ? (c->vary[n->args[0]] << (t.rank - ot.rank)) & all : all;
  }
  case IR_RESHAPE: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    return same_nonone_dims(ot, t) ? remap_nonone(c->vary[n->args[0]], ot, t) : all;
  }
  case IR_INDEX:
    return axis_of(c, n) >= 0 ? remove_axis(c->vary[n->args[0]], n->axis) & all : all;
  case IR_SLICE:
    return c->vary[n->args[0]] & all;
  case IR_TRANSPOSE: {
    int map[SEQ_MAX_RANK];
    transpose_map(t.rank, map);
    return move_mask(c->vary[n->args[0]], map, t.rank) & all;
  }
  case IR_MATMUL:
  case IR_OUTER: {
    /* Summing over an axis keeps the other axes' invariance. */
    Einsum e;
    if (einsum_of(c->f, n, &e)) return all;
    unsigned m = move_mask(c->vary[n->args[0]], e.map[0], c->f->nodes.v[n->args[0]].type.rank) |
                 move_mask(c->vary[n->args[1]], e.map[1], c->f->nodes.v[n->args[1]].type.rank);
    return (e.sum >= 0 ? remove_axis(m, e.sum) : m) & all;
  }
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    if (n->axis < 0) return 0;
    return axis_of(c, n) >= 0 ? remove_axis(c->vary[n->args[0]], n->axis) & all : all;
  default:
    break;
  }
  if (ir_op_info[n->op].flags & IRF_EW) {
    unsigned m = 0;
    for (int k = 0; k < n->nargs; k++) {
      IrType ot = c->f->nodes.v[n->args[k]].type;
      if (ot.rank <= t.rank)
        m |= c->vary[n->args[k]] << (t.rank - ot.rank);
      else
        m = all;
    }
    return m & all;
  }
  return all;
}

static int is_one(const Ctx *c, IrRef r) {
  const IrNode *n = &c->f->nodes.v[r];
  if (n->op == IR_CONST) return n->cval == 1.0;
  if (n->op == IR_BROADCAST || n->op == IR_RESHAPE) return c->one[n->args[0]];
  return 0;
}

/* ---- Pass 1: state dependencies ------------------------------------------ */

/* Checks what the analysis indexes by (the verifier checks more), so that
 * malformed IR is an internal error rather than a read out of bounds. */
static int check_func(const IrFunc *f, DiagEngine *de) {
  for (int r = 0; r < f->nodes.n; r++) {
    const IrNode *n = &f->nodes.v[r];
    if ((unsigned)n->op >= IR_NUM_OPS || n->nargs < 0 || (n->nargs > 0 && !n->args)) {
      diag_internal(de, "classify", "%s: node v%d is malformed", f->name, r);
      return -1;
    }
    if (n->type.rank < 0 || n->type.rank > SEQ_MAX_RANK || (n->type.rank > 0 && !n->type.dims)) {
      diag_internal(de, "classify", "%s: node v%d has an invalid type", f->name, r);
      return -1;
    }
    for (int k = 0; k < n->nargs; k++)
      if (n->args[k] < 0 || n->args[k] >= r) {
        diag_internal(de, "classify", "%s: node v%d uses v%d before it", f->name, r, n->args[k]);
        return -1;
      }
    if (n->op == IR_STATE && (n->index < 0 || n->index >= f->states.n)) {
      diag_internal(de, "classify", "%s: node v%d reads no state", f->name, r);
      return -1;
    }
  }
  for (int i = 0; i < f->states.n; i++) {
    IrRef nx = f->states.v[i].next;
    if (nx < 0 || nx >= f->nodes.n) {
      diag_internal(de, "classify", "%s: state %s has no next value", f->name, f->states.v[i].name);
      return -1;
    }
  }
  return 0;
}

static int ctx_init(Ctx *c, Arena *a, const IrFunc *f) {
  memset(c, 0, sizeof *c);
  c->a = a;
  c->f = f;
  c->n = f->nodes.n;
  c->ns = f->states.n;
  c->nw = (c->ns + 63) / 64;
  if (c->nw == 0) c->nw = 1;
  c->deps = arena_calloc(a, (size_t)c->n * (size_t)c->nw + 1, sizeof *c->deps);
  c->vary = arena_calloc(a, (size_t)c->n + 1, sizeof *c->vary);
  c->invariant = arena_calloc(a, (size_t)c->n + 1, 1);
  c->one = arena_calloc(a, (size_t)c->n + 1, 1);
  c->dim_names = arena_calloc(a, (size_t)f->dims.n + 1, sizeof *c->dim_names);
  if (!c->deps || !c->vary || !c->invariant || !c->one || !c->dim_names) return -1;
  for (int i = 0; i < f->dims.n; i++) c->dim_names[i] = f->dims.v[i].name;
  for (IrRef r = 0; r < c->n; r++) {
    const IrNode *n = &f->nodes.v[r];
    uint64_t *d = deps_of(c, r);
    int inv = n->op != IR_INPUT && n->op != IR_STATE;
    if (n->op == IR_STATE) d[n->index / 64] |= (uint64_t)1 << (n->index % 64);
    for (int k = 0; k < n->nargs; k++) {
      const uint64_t *o = deps_of(c, n->args[k]);
      for (int w = 0; w < c->nw; w++) d[w] |= o[w];
      inv = inv && c->invariant[n->args[k]];
    }
    c->invariant[r] = (unsigned char)inv;
    c->vary[r] = vary_of(c, r);
    c->one[r] = (unsigned char)is_one(c, r);
  }
  return 0;
}

/* ---- Pass 2: affine analysis of one group --------------------------------- */

/* How one term treats one axis of the state it reads. */
enum {
  AX_UNIT,   /* the axis has size 1: there is nothing to move */
  AX_ID,     /* index i of the axis is index i of node axis `pos` */
  AX_MATRIX, /* node axis `pos` is an S-free linear map of the axis (selection, embedding, mix) */
  AX_PROJ,   /* the axis is contracted with an S-free vector (sum, product, index) */
};

/* Bounds on the lists below. A value needing more gives up its structure
 * (terms) or merges factors (writes): both only lose precision. */
#define MAX_TERMS 8
#define MAX_WRITES 8
#define MAX_FACTORS 6

/* One term of the linear part of a value: a state of the group, moved axis
 * by axis into the value's node, times S-free factors that vary only along
 * the node axes `cvary`. A node axis that no state axis lands on is "free":
 * the term is constant along it but for its factors. */
typedef struct Term {
  int state; /* index into IrFunc.states */
  int srank; /* its rank */
  signed char pos[SEQ_MAX_RANK];
  unsigned char ax[SEQ_MAX_RANK];
  unsigned cvary;
  unsigned char unit; /* every factor is exactly 1: a copy of the state */
  unsigned char cinv; /* the factors read only params and constants */
  IrRef at;           /* the node that last changed how the state is moved */
} Term;

/* The S-free part of a value (its value with the group's states set to
 * zero) as a sum of products; factor i of a product varies only along the
 * node axes f[i]. A product whose factors each vary along one side of a split
 * of the axes is rank 1 across that split. */
typedef struct Write {
  int nf;
  unsigned f[MAX_FACTORS];
} Write;

typedef struct Writes {
  int n;
  Write w[MAX_WRITES];
} Writes;

/* Why linearity was lost at a node. */
enum { WHY_OP, WHY_PRODUCT, WHY_DIVISOR, WHY_MIXED };

typedef struct AVal {
  unsigned char dep;       /* reaches a state of the group */
  unsigned char aff;       /* affine over (+, x) */
  unsigned char trop;      /* affine over (max, +), element by element */
  unsigned char dense;     /* affine, but the terms could not say how */
  unsigned char real_only; /* went through real, imag, conj or complex() */
  unsigned char cplx;      /* a complex factor appears */
  int nterms;
  Term t[MAX_TERMS];
  Writes off;
  IrRef at;   /* dense: where the structure was lost */
  int gstate; /* a state outside the group that a factor reads, or -1 */
  IrRef why;  /* nonlinear: where linearity was lost */
  int why_kind;
  int why_state;
} AVal;

/* ---- Writes: the S-free part ---- */

static void write_factor(Write *w, unsigned f) {
  if (w->nf < MAX_FACTORS)
    w->f[w->nf++] = f;
  else
    w->f[MAX_FACTORS - 1] |= f;
}

static unsigned writes_union(const Writes *ws) {
  unsigned m = 0;
  for (int i = 0; i < ws->n; i++)
    for (int k = 0; k < ws->w[i].nf; k++) m |= ws->w[i].f[k];
  return m;
}

/* One factor varying along `mask`: all that is known of an opaque value. */
static void writes_opaque(Writes *ws, unsigned mask) {
  ws->n = 1;
  ws->w[0].nf = 1;
  ws->w[0].f[0] = mask;
}

static void writes_append(Writes *ws, const Write *w) {
  if (ws->n < MAX_WRITES) {
    ws->w[ws->n++] = *w;
    return;
  }
  unsigned m = writes_union(ws);
  for (int k = 0; k < w->nf; k++) m |= w->f[k];
  writes_opaque(ws, m);
}

static void writes_move(Writes *ws, const int *map, int from_rank) {
  for (int i = 0; i < ws->n; i++)
    for (int k = 0; k < ws->w[i].nf; k++) ws->w[i].f[k] = move_mask(ws->w[i].f[k], map, from_rank);
}

static void writes_mask(Writes *ws, unsigned keep) {
  for (int i = 0; i < ws->n; i++)
    for (int k = 0; k < ws->w[i].nf; k++) ws->w[i].f[k] &= keep;
}

/* The product of two sums of products, both in the result's axes. */
static void writes_product(Writes *out, const Writes *x, const Writes *y) {
  out->n = 0;
  if (!x->n || !y->n) return;
  Writes a = *x, b = *y;
  if (a.n * b.n > MAX_WRITES) {
    writes_opaque(&a, writes_union(&a));
    writes_opaque(&b, writes_union(&b));
  }
  for (int i = 0; i < a.n; i++)
    for (int j = 0; j < b.n; j++) {
      Write w = a.w[i];
      for (int k = 0; k < b.w[j].nf; k++) write_factor(&w, b.w[j].f[k]);
      out->w[out->n++] = w;
    }
}

/* Summing a product over axis a: the factors that vary along a become one
 * factor (their contraction); the others only lose the axis. a < 0: over
 * all axes, leaving a scalar. */
static void writes_sum(Writes *ws, int a) {
  for (int i = 0; i < ws->n; i++) {
    Write *w = &ws->w[i], nw = {0};
    unsigned merged = 0;
    int has = 0;
    for (int k = 0; k < w->nf && a >= 0; k++) {
      if (w->f[k] >> a & 1)
        merged |= w->f[k], has = 1;
      else
        write_factor(&nw, remove_axis(w->f[k], a));
    }
    if (has) write_factor(&nw, remove_axis(merged & ~(1u << a), a));
    *w = nw;
  }
}

static void writes_drop_axis(Writes *ws, int a) {
  for (int i = 0; i < ws->n; i++)
    for (int k = 0; k < ws->w[i].nf; k++) ws->w[i].f[k] = remove_axis(ws->w[i].f[k], a);
}

/* The writes of operand `arg`, moved into the axes of `to` by numpy broadcasting. */
static int writes_broadcast(const Ctx *c, const AVal *av, IrRef arg, IrType to, Writes *out) {
  IrType from = c->f->nodes.v[arg].type;
  int map[SEQ_MAX_RANK];
  if (from.rank > to.rank) return -1;
  *out = av[arg].off;
  broadcast_map(from, to, map);
  writes_move(out, map, from.rank);
  return 0;
}

/* The S-free part of node r, for every node: an S-free value is its own
 * S-free part, a group state has none. Exact algebra for sums, products,
 * data movement and contractions; any other op is one opaque factor. */
static int writes_of_op(const Ctx *c, const uint64_t *g, const AVal *av, IrRef r, Writes *o) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type;
  int map[SEQ_MAX_RANK];
  Writes x, y;
  o->n = 0;
  switch (n->op) {
  case IR_STATE:
    return bit_get(g, n->index) ? 0 : -1;
  case IR_CONST:
    if (n->cval != 0) o->n = 1, o->w[0].nf = 0;
    return 0;
  case IR_NEG:
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
  case IR_SLICE:
    *o = av[n->args[0]].off;
    return 0;
  case IR_ADD:
  case IR_SUB:
  case IR_CPLX:
  case IR_BROADCAST:
    for (int k = 0; k < n->nargs; k++) {
      if (writes_broadcast(c, av, n->args[k], t, &x)) return -1;
      for (int i = 0; i < x.n; i++) writes_append(o, &x.w[i]);
    }
    return 0;
  case IR_MUL:
  case IR_DIV:
    if (writes_broadcast(c, av, n->args[0], t, &x) || writes_broadcast(c, av, n->args[1], t, &y))
      return -1;
    if (n->op == IR_DIV) {
      IrType dt = c->f->nodes.v[n->args[1]].type;
      broadcast_map(dt, t, map);
      writes_opaque(&y, move_mask(c->vary[n->args[1]], map, dt.rank));
    }
    writes_product(o, &x, &y);
    return 0;
  case IR_MATMUL:
  case IR_OUTER: {
    Einsum e;
    if (einsum_of(c->f, n, &e)) return -1;
    x = av[n->args[0]].off, y = av[n->args[1]].off;
    writes_move(&x, e.map[0], c->f->nodes.v[n->args[0]].type.rank);
    writes_move(&y, e.map[1], c->f->nodes.v[n->args[1]].type.rank);
    writes_product(o, &x, &y);
    if (e.sum >= 0) writes_sum(o, e.sum);
    return 0;
  }
  case IR_TRANSPOSE:
    *o = av[n->args[0]].off;
    transpose_map(t.rank, map);
    writes_move(o, map, t.rank);
    return 0;
  case IR_RESHAPE: {
    IrType from = c->f->nodes.v[n->args[0]].type;
    if (!same_nonone_dims(from, t)) return -1;
    *o = av[n->args[0]].off;
    reshape_map(from, t, map);
    writes_move(o, map, from.rank);
    return 0;
  }
  case IR_INDEX:
    if (n->axis < 0 || n->axis >= c->f->nodes.v[n->args[0]].type.rank) return -1;
    *o = av[n->args[0]].off;
    writes_drop_axis(o, n->axis);
    return 0;
  case IR_CONCAT:
    /* Each part is zero outside its range of the axis: a factor along it. */
    if (n->axis < 0 || n->axis >= t.rank) return -1;
    for (int k = 0; k < n->nargs; k++) {
      x = av[n->args[k]].off;
      for (int i = 0; i < x.n; i++) {
        if (n->nargs > 1) write_factor(&x.w[i], 1u << n->axis);
        writes_append(o, &x.w[i]);
      }
    }
    return 0;
  case IR_SUM:
  case IR_MEAN:
    if (n->axis >= 0 && axis_of(c, n) < 0) return -1;
    *o = av[n->args[0]].off;
    writes_sum(o, n->axis);
    return 0;
  default:
    return -1;
  }
}

static void writes_rule(const Ctx *c, const uint64_t *g, AVal *av, IrRef r) {
  Writes *o = &av[r].off;
  if (writes_of_op(c, g, av, r, o)) writes_opaque(o, c->vary[r]);
  writes_mask(o, nonone_mask(c->f->nodes.v[r].type));
}

/* ---- Terms: the linear part ---- */

/* Node axes that some state axis lands on. */
static unsigned term_images(const Term *t) {
  unsigned m = 0;
  for (int s = 0; s < t->srank; s++)
    if (t->ax[s] == AX_ID || t->ax[s] == AX_MATRIX) m |= 1u << t->pos[s];
  return m;
}

static int term_projects(const Term *t) {
  for (int s = 0; s < t->srank; s++)
    if (t->ax[s] == AX_PROJ) return 1;
  return 0;
}

static int term_same_motion(const Term *a, const Term *b) {
  if (a->state != b->state || a->srank != b->srank) return 0;
  for (int s = 0; s < a->srank; s++)
    if (a->ax[s] != b->ax[s] || a->pos[s] != b->pos[s]) return 0;
  return 1;
}

/* Moves a term to a node whose axis map[k] is the term's node axis k. A
 * state axis mapped onto an axis of size 1 that disappears keeps one row of
 * its matrix: a projection. */
static void term_move(Term *t, const int *map, int from_rank) {
  for (int s = 0; s < t->srank; s++) {
    if (t->ax[s] != AX_ID && t->ax[s] != AX_MATRIX) continue;
    int p = map[t->pos[s]];
    if (p < 0)
      t->ax[s] = AX_PROJ, t->pos[s] = -1;
    else
      t->pos[s] = (signed char)p;
  }
  t->cvary = move_mask(t->cvary, map, from_rank);
}

/* Adds a term to o's linear part. Terms that move the same state the same
 * way add up into one (the sum of their factors): two diagonal terms are
 * one diagonal term, two rank-1 maps along an axis are a rank-2 map. */
static void av_add_term(AVal *o, const Term *t, IrRef r) {
  for (int i = 0; i < o->nterms; i++) {
    Term *u = &o->t[i];
    if (!term_same_motion(u, t)) continue;
    u->cvary |= t->cvary;
    u->unit = 0;
    u->cinv = u->cinv && t->cinv;
    if (u->at == IR_NONE) u->at = t->at;
    return;
  }
  if (o->nterms == MAX_TERMS) {
    o->dense = 1;
    if (o->at == IR_NONE) o->at = r;
    return;
  }
  o->t[o->nterms++] = *t;
}

static void av_flags(AVal *o, const AVal *v) {
  o->dense |= v->dense;
  o->real_only |= v->real_only;
  o->cplx |= v->cplx;
  if (o->at == IR_NONE) o->at = v->at;
  if (o->gstate < 0) o->gstate = v->gstate;
}

/* Adds operand v's terms to o, moved by `map` into o's node. `fresh` are the
 * node axes v's node did not have (with a size other than 1): a projected
 * term spread along one of them becomes a rank-1 map, made here. `keep_unit`
 * is 0 where the operand is scaled (negated, subtracted, times i). */
static void av_take(AVal *o, const AVal *v, const int *map, int from_rank, unsigned fresh,
                    int keep_unit, IrRef r) {
  av_flags(o, v);
  for (int i = 0; i < v->nterms; i++) {
    Term t = v->t[i];
    term_move(&t, map, from_rank);
    if ((fresh & ~term_images(&t)) && term_projects(&t)) t.at = r;
    if (!keep_unit) t.unit = 0;
    av_add_term(o, &t, r);
  }
}

/* Adds operand `arg`'s terms broadcast to node r's type. */
static int av_take_broadcast(const Ctx *c, AVal *o, const AVal *av, IrRef arg, int keep_unit,
                             IrRef r) {
  IrType from = c->f->nodes.v[arg].type, to = c->f->nodes.v[r].type;
  int map[SEQ_MAX_RANK];
  if (from.rank > to.rank) return -1;
  broadcast_map(from, to, map);
  av_take(o, &av[arg], map, from.rank, broadcast_new_axes(from, to), keep_unit, r);
  return 0;
}

/* Multiplies every term by an S-free coefficient varying along `cvary`. */
static void av_scale(const Ctx *c, AVal *o, IrRef coef, unsigned cvary) {
  for (int i = 0; i < o->nterms; i++) {
    o->t[i].cvary |= cvary;
    o->t[i].unit = o->t[i].unit && c->one[coef];
    o->t[i].cinv = o->t[i].cinv && c->invariant[coef];
  }
  o->cplx |= c->f->nodes.v[coef].type.elem == IR_COMPLEX;
  if (o->gstate < 0) o->gstate = first_state(c, coef);
}

/* Merges terms that a contraction left moving their state the same way. */
static void av_remerge(AVal *o, IrRef r) {
  Term t[MAX_TERMS];
  int n = o->nterms;
  memcpy(t, o->t, (size_t)n * sizeof *t);
  o->nterms = 0;
  for (int i = 0; i < n; i++) av_add_term(o, &t[i], r);
}

static int term_axis_on(const Term *t, int a) {
  for (int s = 0; s < t->srank; s++)
    if ((t->ax[s] == AX_ID || t->ax[s] == AX_MATRIX) && t->pos[s] == a) return s;
  return -1;
}

static void term_close_axis(Term *t, int a) {
  for (int s = 0; s < t->srank; s++)
    if ((t->ax[s] == AX_ID || t->ax[s] == AX_MATRIX) && t->pos[s] > a) t->pos[s]--;
  t->cvary = remove_axis(t->cvary, a);
}

/* Sums a term over axis a of its node (`nonone`: the node's axes of size
 * other than 1). A free axis adds up the factors. The image of a state axis
 * contracts that axis: with an S-free vector (a projection) unless the
 * factors also vary along the summed axis (or already map it by a matrix)
 * and along a free axis, which then receives an S-free matrix applied to the
 * state axis (pLSTM's sum over j of T[i, j] C[j]). A matrix onto two or more
 * free axes is not a form the terms have: -1. */
static int term_sum(Term *t, int a, unsigned nonone, IrRef r) {
  int s = term_axis_on(t, a);
  if (nonone >> a & 1) t->unit = 0;
  if (s >= 0) {
    unsigned onto = t->cvary & nonone & ~term_images(t);
    int mixes = t->ax[s] == AX_MATRIX || (t->cvary >> a & 1);
    if (!mixes || !onto)
      t->ax[s] = AX_PROJ, t->pos[s] = -1;
    else if (count_axes(onto) == 1)
      t->ax[s] = AX_MATRIX, t->pos[s] = (signed char)lowest_axis(onto);
    else
      return -1;
    t->at = r;
  }
  term_close_axis(t, a);
  return 0;
}

/* Picks one index of axis a (index, gather): a state axis landing there is
 * projected on one element. */
static void term_index(Term *t, int a, IrRef r) {
  int s = term_axis_on(t, a);
  if (s >= 0) {
    t->ax[s] = AX_PROJ, t->pos[s] = -1;
    t->unit = 0, t->at = r;
  }
  term_close_axis(t, a);
}

/* Keeps part of axis a (a slice) or places the term in part of it (one
 * operand of a concat): a state axis landing on a is now selected or
 * embedded by an S-free matrix; on a free axis, a concat's part is zero
 * outside its range (a factor varying along a), a slice changes nothing. */
static void term_part(Term *t, int a, int is_concat, unsigned nonone, IrRef r) {
  int s = term_axis_on(t, a);
  if (s >= 0) {
    if (t->ax[s] == AX_ID) t->ax[s] = AX_MATRIX, t->at = r;
    t->unit = 0;
  } else if (is_concat && (nonone >> a & 1)) {
    t->cvary |= 1u << a;
    t->unit = 0;
  }
}

static void av_lose_structure(AVal *o, IrRef r) {
  o->dense = 1;
  if (o->at == IR_NONE) o->at = r;
}

/* Matrix and outer products with one S-free operand: the other operand's
 * terms placed in the einsum space, scaled by the S-free operand, summed. */
static int aff_product(const Ctx *c, const AVal *av, IrRef r, int d, AVal *o) {
  const IrNode *n = &c->f->nodes.v[r];
  IrRef x = n->args[d], coef = n->args[1 - d];
  IrType xt = c->f->nodes.v[x].type, ct = c->f->nodes.v[coef].type;
  Einsum e;
  if (einsum_of(c->f, n, &e)) {
    av_flags(o, &av[x]);
    av_lose_structure(o, r);
    return 1;
  }
  unsigned fresh = e.nonone & ~move_mask(nonone_mask(xt), e.map[d], xt.rank);
  av_take(o, &av[x], e.map[d], xt.rank, fresh, 1, r);
  av_scale(c, o, coef, move_mask(c->vary[coef], e.map[1 - d], ct.rank) & e.nonone);
  if (e.sum >= 0) {
    for (int i = 0; i < o->nterms; i++)
      if (term_sum(&o->t[i], e.sum, e.nonone, r)) av_lose_structure(o, r);
    av_remerge(o, r);
  }
  return 1;
}

static int aff_sum(const Ctx *c, const AVal *av, IrRef r, AVal *o) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType xt = c->f->nodes.v[n->args[0]].type;
  int map[SEQ_MAX_RANK];
  identity_map(xt.rank, map);
  av_take(o, &av[n->args[0]], map, xt.rank, 0, 1, r);
  if (n->axis >= xt.rank) return 0;
  for (int i = 0; i < o->nterms; i++) {
    Term *t = &o->t[i];
    if (n->axis >= 0) {
      if (term_sum(t, n->axis, nonone_mask(xt), r)) av_lose_structure(o, r);
      continue;
    }
    for (int s = 0; s < t->srank; s++)
      if (t->ax[s] == AX_ID || t->ax[s] == AX_MATRIX) t->ax[s] = AX_PROJ, t->pos[s] = -1;
    t->cvary = 0, t->unit = 0, t->at = r;
  }
  av_remerge(o, r);
  return 1;
}

/* Data movement along one axis: index, gather (axis 0 of the table), slice
 * and concat. */
static int aff_along_axis(const Ctx *c, const AVal *av, IrRef r, int d, AVal *o) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type, xt = c->f->nodes.v[n->args[d]].type;
  int a = n->op == IR_GATHER ? 0 : n->axis;
  int map[SEQ_MAX_RANK];
  if (a < 0 || a >= xt.rank) return 0;
  identity_map(xt.rank, map);
  if (n->op == IR_CONCAT) {
    for (int k = 0; k < n->nargs; k++) {
      if (!av[n->args[k]].dep) continue;
      AVal part = av[n->args[k]];
      for (int i = 0; i < part.nterms && n->nargs > 1; i++)
        term_part(&part.t[i], a, 1, nonone_mask(t), r);
      av_take(o, &part, map, xt.rank, 0, 1, r);
    }
    return 1;
  }
  av_take(o, &av[n->args[d]], map, xt.rank, 0, 1, r);
  for (int i = 0; i < o->nterms; i++) {
    if (n->op == IR_SLICE) {
      int full = dim_eq(n->start, dim_const(0)) && dim_eq(n->stop, xt.dims[a]);
      if (!full) term_part(&o->t[i], a, 0, nonone_mask(xt), r);
    } else {
      term_index(&o->t[i], a, r);
    }
  }
  av_remerge(o, r);
  return 1;
}

/* Affine over (+, x): fills o's linear part and returns 1, or returns 0
 * (with *why_kind) if the op is not linear in its group-dependent operands.
 * Operands that depend on the group are all affine when this is called. */
static int aff_rule(const Ctx *c, const AVal *av, IrRef r, AVal *o, int *why_kind) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type;
  int ndep = 0, d = -1;
  int map[SEQ_MAX_RANK];
  for (int k = 0; k < n->nargs; k++)
    if (av[n->args[k]].dep) ndep++, d = d < 0 ? k : d;
  *why_kind = WHY_OP;

  switch (n->op) {
  case IR_NEG:
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
  case IR_BROADCAST:
  case IR_ADD:
  case IR_SUB:
  case IR_CPLX:
    /* Sums and signs: the terms of each operand, the second of a SUB and
     * the imaginary part of complex() scaled. conj, real, imag and complex()
     * are linear over the reals only. */
    for (int k = 0; k < n->nargs; k++) {
      if (!av[n->args[k]].dep) continue;
      int keep_unit = n->op != IR_NEG && !(k == 1 && (n->op == IR_SUB || n->op == IR_CPLX));
      if (av_take_broadcast(c, o, av, n->args[k], keep_unit, r)) return 0;
    }
    if (n->op == IR_CONJ || n->op == IR_RE || n->op == IR_IM || n->op == IR_CPLX) o->real_only = 1;
    break;
  case IR_MUL:
  case IR_DIV: {
    if (ndep > 1) {
      *why_kind = WHY_PRODUCT;
      return 0;
    }
    if (n->op == IR_DIV && d == 1) {
      *why_kind = WHY_DIVISOR;
      return 0;
    }
    IrRef coef = n->args[1 - d];
    IrType ct = c->f->nodes.v[coef].type;
    if (ct.rank > t.rank || av_take_broadcast(c, o, av, n->args[d], 1, r)) return 0;
    broadcast_map(ct, t, map);
    av_scale(c, o, coef, move_mask(c->vary[coef], map, ct.rank) & nonone_mask(t));
    break;
  }
  case IR_MATMUL:
  case IR_OUTER:
    if (ndep > 1) {
      *why_kind = WHY_PRODUCT;
      return 0;
    }
    return aff_product(c, av, r, d, o);
  case IR_TRANSPOSE:
    transpose_map(t.rank, map);
    av_take(o, &av[n->args[0]], map, t.rank, 0, 1, r);
    break;
  case IR_RESHAPE: {
    IrType from = c->f->nodes.v[n->args[0]].type;
    if (!same_nonone_dims(from, t)) {
      av_flags(o, &av[n->args[0]]);
      av_lose_structure(o, r);
      return 1;
    }
    reshape_map(from, t, map);
    av_take(o, &av[n->args[0]], map, from.rank, 0, 1, r);
    break;
  }
  case IR_GATHER:
    if (d != 0) return 0;
    return aff_along_axis(c, av, r, d, o);
  case IR_INDEX:
  case IR_SLICE:
  case IR_CONCAT:
    return aff_along_axis(c, av, r, d, o);
  case IR_SUM:
  case IR_MEAN:
    return aff_sum(c, av, r, o);
  default:
    return 0;
  }
  return 1;
}

/* Affine over (max, +), element by element: every group-dependent operand
 * is the state in place (no data movement other than reshapes that only add
 * or drop axes of size 1, which keep the order of the elements) plus S-free
 * amounts, and max combines such values. What REC_MAXPLUS needs. */
static int trop_rule(const Ctx *c, const AVal *av, IrRef r) {
  const IrNode *n = &c->f->nodes.v[r];
  int ndep = 0;
  for (int k = 0; k < n->nargs; k++) {
    const AVal *v = &av[n->args[k]];
    if (!v->dep) continue;
    if (!v->trop) return 0;
    ndep++;
    IrType ot = c->f->nodes.v[n->args[k]].type;
    if (n->op == IR_RESHAPE || n->op == IR_BROADCAST) {
      if (!same_nonone_dims(ot, n->type)) return 0;
    } else if (!dims_equal(ot, n->type)) {
      return 0;
    }
  }
  switch (n->op) {
  case IR_ADD:
    return ndep == 1;
  case IR_SUB:
    return av[n->args[0]].dep && !av[n->args[1]].dep;
  case IR_MAX:
  case IR_BROADCAST:
  case IR_RESHAPE:
    return 1;
  default:
    return 0;
  }
}

static void state_term(const Ctx *c, IrRef r, AVal *o) {
  const IrNode *n = &c->f->nodes.v[r];
  Term *t = &o->t[0];
  o->nterms = 1;
  t->state = n->index;
  t->srank = n->type.rank;
  for (int s = 0; s < n->type.rank; s++) {
    t->ax[s] = dim_is_one(n->type.dims[s]) ? AX_UNIT : AX_ID;
    t->pos[s] = (signed char)s;
  }
  t->cvary = 0;
  t->unit = t->cinv = 1;
  t->at = IR_NONE;
  o->cplx = n->type.elem == IR_COMPLEX;
}

static void analyse_group(const Ctx *c, const uint64_t *g, AVal *av) {
  for (IrRef r = 0; r < c->n; r++) {
    const IrNode *n = &c->f->nodes.v[r];
    AVal *o = &av[r];
    memset(o, 0, sizeof *o);
    o->at = o->why = IR_NONE;
    o->why_state = o->gstate = -1;
    writes_rule(c, g, av, r);
    if (!sets_meet(c, deps_of(c, r), g)) continue;
    o->dep = 1;
    if (n->op == IR_STATE) {
      o->aff = o->trop = 1;
      state_term(c, r, o);
      continue;
    }
    /* Nonlinearity is inherited from the first operand that has it. */
    int lost = 0;
    for (int k = 0; k < n->nargs && !lost; k++) {
      const AVal *v = &av[n->args[k]];
      if (v->dep && !v->aff && !v->trop) {
        o->why = v->why, o->why_kind = v->why_kind, o->why_state = v->why_state;
        lost = 1;
      }
    }
    if (lost) continue;
    int all_aff = 1, why_kind = WHY_OP;
    for (int k = 0; k < n->nargs; k++)
      if (av[n->args[k]].dep && !av[n->args[k]].aff) all_aff = 0;
    if (all_aff && aff_rule(c, av, r, o, &why_kind)) {
      unsigned keep = nonone_mask(n->type);
      for (int i = 0; i < o->nterms; i++) o->t[i].cvary &= keep;
      o->aff = 1;
    } else if (!all_aff && (n->op == IR_ADD || n->op == IR_SUB || n->op == IR_MUL)) {
      why_kind = WHY_MIXED;
    }
    o->trop = (unsigned char)trop_rule(c, av, r);
    if (!o->aff && !o->trop) {
      o->why = r;
      o->why_kind = why_kind;
      for (int k = 0; k < n->nargs; k++)
        if (av[n->args[k]].dep) {
          o->why_state = first_in(c, n->args[k], g);
          break;
        }
    }
  }
}

/* ---- Shift registers: following elements through data movement ------------ */

/* A box of a value built from the state by data movement alone: a region of
 * the node's index space (per axis [lo, hi)) holding either S-free values
 * or copies of state elements. For a copy, the state index along state axis
 * s is o[pos[s]] + off[s] for the node index o, or the constant off[s] where
 * pos[s] < 0. */
typedef struct Box {
  unsigned char fresh;
  signed char pos[SEQ_MAX_RANK];
  DimExpr off[SEQ_MAX_RANK];
  DimExpr lo[SEQ_MAX_RANK], hi[SEQ_MAX_RANK];
} Box;

#define MAX_BOXES 16

typedef struct BoxList {
  int n;
  Box *v;
} BoxList;

typedef struct ShiftWalk {
  const Ctx *c;
  const uint64_t *g;
  int state;  /* the one state of the group */
  int budget; /* nodes left to visit: the walk follows a DAG as a tree */
  int oom;
} ShiftWalk;

static int boxes_alloc(ShiftWalk *w, int n, BoxList *out) {
  out->n = 0;
  out->v = arena_calloc(w->c->a, (size_t)n + 1, sizeof *out->v);
  if (!out->v) w->oom = 1;
  return out->v ? 0 : -1;
}

/* The whole of a node of type t: S-free, or the state itself. */
static int box_whole(ShiftWalk *w, IrType t, int fresh, BoxList *out) {
  if (boxes_alloc(w, 1, out)) return -1;
  Box *b = &out->v[out->n++];
  b->fresh = (unsigned char)fresh;
  for (int k = 0; k < t.rank; k++) {
    b->lo[k] = dim_const(0), b->hi[k] = t.dims[k];
    b->pos[k] = (signed char)k, b->off[k] = dim_const(0);
  }
  return 0;
}

/* The larger (want_max) or smaller of a and b, where that is provable. */
static int dim_pick(DimExpr a, DimExpr b, int want_max, DimExpr *out) {
  if (dim_le(a, b))
    *out = want_max ? b : a;
  else if (dim_le(b, a))
    *out = want_max ? a : b;
  else
    return -1;
  return 0;
}

/* Moves the copies of a box by `delta` along node axis a: the node index
 * grows by delta, so the state index is o + off - delta. */
static int box_shift(Box *b, int a, DimExpr delta, int srank) {
  if (dim_add(b->lo[a], delta, &b->lo[a]) || dim_add(b->hi[a], delta, &b->hi[a])) return -1;
  for (int s = 0; s < srank && !b->fresh; s++)
    if (b->pos[s] == a && dim_sub(b->off[s], delta, &b->off[s])) return -1;
  return 0;
}

/* Removes node axis a, where the node index is the constant `at`. */
static int box_drop_axis(Box *b, int a, DimExpr at, int rank, int srank) {
  for (int s = 0; s < srank && !b->fresh; s++) {
    if (b->pos[s] == a) {
      if (dim_add(b->off[s], at, &b->off[s])) return -1;
      b->pos[s] = -1;
    } else if (b->pos[s] > a) {
      b->pos[s]--;
    }
  }
  for (int k = a; k + 1 < rank; k++) b->lo[k] = b->lo[k + 1], b->hi[k] = b->hi[k + 1];
  return 0;
}

/* Maps node axes by map (old axis k to map[k], -1: an axis of size 1
 * dropped, where the index is 0); new axes of `to` hold the whole range. */
static void box_remap(Box *b, const int *map, IrType from, IrType to, int srank) {
  Box nb = *b;
  for (int k = 0; k < to.rank; k++) nb.lo[k] = dim_const(0), nb.hi[k] = to.dims[k];
  for (int k = 0; k < from.rank; k++)
    if (map[k] >= 0 && !(dim_is_one(from.dims[k]) && !dim_is_one(to.dims[map[k]])))
      nb.lo[map[k]] = b->lo[k], nb.hi[map[k]] = b->hi[k];
  for (int s = 0; s < srank && !b->fresh; s++) {
    if (b->pos[s] < 0) continue;
    int p = map[b->pos[s]];
    /* A stretched axis of size 1 reads index 0 of the old one everywhere. */
    if (p >= 0 && dim_is_one(from.dims[b->pos[s]]) && !dim_is_one(to.dims[p])) p = -1;
    nb.pos[s] = (signed char)p;
  }
  *b = nb;
}

static int box_walk(ShiftWalk *w, IrRef r, BoxList *out);

/* slice, index: keeps the boxes that meet the kept range, clipped. */
static int box_slice(ShiftWalk *w, const IrNode *n, const BoxList *in, BoxList *out) {
  int a = n->axis, srank = w->c->f->states.v[w->state].type.rank;
  IrType from = w->c->f->nodes.v[n->args[0]].type;
  DimExpr start = n->start, stop;
  if (a < 0 || a >= from.rank) return -1;
  if (n->op == IR_INDEX ? dim_add(start, dim_const(1), &stop) : (stop = n->stop, 0)) return -1;
  if (boxes_alloc(w, in->n, out)) return -1;
  for (int i = 0; i < in->n; i++) {
    Box b = in->v[i];
    DimExpr lo, hi;
    if (dim_le(b.hi[a], start) || dim_le(stop, b.lo[a])) continue; /* surely outside */
    if (n->op == IR_INDEX) {
      if (!dim_le(b.lo[a], start) || !dim_le(stop, b.hi[a])) return -1;
      if (box_drop_axis(&b, a, start, from.rank, srank)) return -1;
    } else {
      if (dim_pick(b.lo[a], start, 1, &lo) || dim_pick(b.hi[a], stop, 0, &hi)) return -1;
      if (dim_le(hi, lo)) continue; /* surely empty */
      if (dim_sub(lo, start, &b.lo[a]) || dim_sub(hi, start, &b.hi[a])) return -1;
      for (int s = 0; s < srank && !b.fresh; s++)
        if (b.pos[s] == a && dim_add(b.off[s], start, &b.off[s])) return -1;
    }
    out->v[out->n++] = b;
  }
  return 0;
}

static int box_concat(ShiftWalk *w, const IrNode *n, BoxList *out) {
  int a = n->axis, srank = w->c->f->states.v[w->state].type.rank;
  DimExpr base = dim_const(0);
  BoxList part;
  if (a < 0 || a >= n->type.rank || boxes_alloc(w, MAX_BOXES, out)) return -1;
  for (int k = 0; k < n->nargs; k++) {
    if (box_walk(w, n->args[k], &part) || out->n + part.n > MAX_BOXES) return -1;
    for (int i = 0; i < part.n; i++) {
      Box b = part.v[i];
      if (box_shift(&b, a, base, srank)) return -1;
      out->v[out->n++] = b;
    }
    if (dim_add(base, w->c->f->nodes.v[n->args[k]].type.dims[a], &base)) return -1;
  }
  return 0;
}

/* Returns 0 and the boxes of node r if r is built from the state by data
 * movement alone, else -1. */
static int box_walk(ShiftWalk *w, IrRef r, BoxList *out) {
  const IrNode *n = &w->c->f->nodes.v[r];
  int map[SEQ_MAX_RANK], srank = w->c->f->states.v[w->state].type.rank;
  BoxList in;
  if (--w->budget < 0) return -1;
  if (!sets_meet(w->c, deps_of(w->c, r), w->g)) return box_whole(w, n->type, 1, out);
  switch (n->op) {
  case IR_STATE:
    return n->index == w->state ? box_whole(w, n->type, 0, out) : -1;
  case IR_CONCAT:
    return box_concat(w, n, out);
  case IR_SLICE:
  case IR_INDEX:
    if (box_walk(w, n->args[0], &in)) return -1;
    return box_slice(w, n, &in, out);
  case IR_TRANSPOSE:
  case IR_RESHAPE:
  case IR_BROADCAST: {
    IrType from = w->c->f->nodes.v[n->args[0]].type;
    if (from.rank > n->type.rank && n->op == IR_BROADCAST) return -1;
    if (n->op == IR_RESHAPE && !same_nonone_dims(from, n->type)) return -1;
    if (n->op == IR_TRANSPOSE)
      transpose_map(from.rank, map);
    else if (n->op == IR_RESHAPE)
      reshape_map(from, n->type, map);
    else
      broadcast_map(from, n->type, map);
    if (box_walk(w, n->args[0], &in)) return -1;
    for (int i = 0; i < in.n; i++) box_remap(&in.v[i], map, from, n->type, srank);
    *out = in;
    return 0;
  }
  default:
    return -1;
  }
}

/* REC_SHIFT. Precondition: next is built from S by data movement alone
 * (slice, index, concat, reshape, transpose, broadcast; no arithmetic on
 * any value that reads S), so every element of next is either an element of
 * S, copied, or an S-free value; and along some axis a of S every copied
 * element moves the same way, strictly: its index along a grows by at least
 * one (or shrinks by at least one) in every step. Then an element of S
 * leaves within size(a) steps, and next is a function of the S-free values
 * of a window of the last size(a) steps. Returns that axis, or -1. */
static int shift_axis(ShiftWalk *w, IrRef next) {
  IrType st = w->c->f->states.v[w->state].type;
  BoxList bl;
  if (box_walk(w, next, &bl)) return -1;
  int copies = 0;
  for (int i = 0; i < bl.n; i++) copies += !bl.v[i].fresh;
  if (!copies) return -1;
  for (int a = 0; a < st.rank; a++) {
    if (dim_is_one(st.dims[a])) continue;
    for (int dir = 1; dir >= -1; dir -= 2) {
      int ok = 1;
      for (int i = 0; i < bl.n && ok; i++) {
        const Box *b = &bl.v[i];
        DimExpr lo1;
        if (b->fresh) continue;
        if (b->pos[a] == a) /* index o + off: off >= 1, or off <= -1 */
          ok = dir > 0 ? dim_le(dim_const(1), b->off[a]) : dim_le(b->off[a], dim_const(-1));
        else if (b->pos[a] < 0) /* a constant index past the box's range */
          ok = dir > 0 ? dim_le(b->hi[a], b->off[a])
                       : !dim_add(b->off[a], dim_const(1), &lo1) && dim_le(lo1, b->lo[a]);
        else
          ok = 0;
      }
      if (ok) return a;
    }
  }
  return -1;
}

/* ---- Pass 3: Jacobian structure of a nonlinear group ---------------------- */

/* A node is "aligned" when each element depends on the group only through
 * the same element of every state: the state's axes are its trailing axes
 * and nothing combined elements along them. Then d next / d state is
 * diagonal per pair of states. */
enum { J_NONE, J_ALIGNED, J_DENSE };

static int jac_rule(const Ctx *c, const unsigned char *jd, IrRef r, IrType st) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type;
  int lead = t.rank - st.rank;
  if (!trailing_equal(t, st)) return 0;
  for (int k = 0; k < n->nargs; k++)
    if (jd[n->args[k]] == J_ALIGNED && !trailing_equal(c->f->nodes.v[n->args[k]].type, st))
      return 0;
  if (ir_op_info[n->op].flags & IRF_EW) return 1;
  switch (n->op) {
  case IR_BROADCAST:
  case IR_RESHAPE:
    return 1;
  case IR_INDEX:
  case IR_SLICE:
  case IR_CONCAT:
    return n->axis >= 0 && n->axis < lead + (n->op == IR_INDEX ? 1 : 0);
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    return n->axis >= 0 && n->axis < lead + 1;
  default:
    return 0;
  }
}

static void jacobian(const Ctx *c, const uint64_t *g, IrType st, unsigned char *jd, IrRef *jwhy) {
  for (IrRef r = 0; r < c->n; r++) {
    const IrNode *n = &c->f->nodes.v[r];
    jd[r] = J_NONE, jwhy[r] = IR_NONE;
    if (!sets_meet(c, deps_of(c, r), g)) continue;
    if (n->op == IR_STATE) {
      jd[r] = J_ALIGNED;
      continue;
    }
    for (int k = 0; k < n->nargs; k++)
      if (jd[n->args[k]] == J_DENSE) {
        jd[r] = J_DENSE, jwhy[r] = jwhy[n->args[k]];
        break;
      }
    if (jd[r] == J_DENSE) continue;
    if (jac_rule(c, jd, r, st)) {
      jd[r] = J_ALIGNED;
    } else {
      jd[r] = J_DENSE, jwhy[r] = r;
    }
  }
}

/* ---- Deciding the class of a linear state ---------------------------------- */

static const char *gate_words(const RecState *rs) {
  switch (rs->gate) {
  case REC_GATE_NONE:
    return "no gate";
  case REC_GATE_SCALAR:
    return rs->gate_invariant ? "scalar gate, time-invariant" : "scalar gate";
  case REC_GATE_DIAG:
    return rs->gate_invariant ? "diagonal gate, time-invariant" : "diagonal gate";
  default:
    return rs->gate_invariant ? "elementwise gate, time-invariant" : "elementwise gate";
  }
}

static const char *why_words(const Ctx *c, const AVal *v, const char *sname) {
  const IrFunc *f = c->f;
  const IrNode *n = &f->nodes.v[v->why];
  const char *dep = v->why_state >= 0 ? f->states.v[v->why_state].name : "the state";
  const char *at = loc_str(c->a, n->loc);
  switch (v->why_kind) {
  case WHY_PRODUCT:
    return arena_printf(c->a,
                        "%s' depends on %s through a product of two values that read it (%s at %s)",
                        sname, dep, ir_op_info[n->op].text, at);
  case WHY_DIVISOR:
    return arena_printf(c->a, "%s' depends on %s through division by a value that reads it at %s",
                        sname, dep, at);
  case WHY_MIXED:
    return arena_printf(c->a, "%s' depends on %s through %s mixing (max, +) and (+, x) at %s",
                        sname, dep, ir_op_info[n->op].text, at);
  default:
    return arena_printf(c->a, "%s' depends on %s through %s at %s", sname, dep,
                        ir_op_info[n->op].text, at);
  }
}

/* "axis 2 (Dk)": an axis of a state, by position and size. */
static const char *axis_words(const Ctx *c, IrType t, int a) {
  DimExpr e = t.dims[a];
  int named = 1;
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++)
      if (e.t[i].vars[k] < 0 || e.t[i].vars[k] >= c->f->dims.n) named = 0;
  const char *size = dim_str(c->a, e, named ? c->dim_names : NULL);
  const char *s = arena_printf(c->a, "axis %d (%s)", a, size ? size : "?");
  return s ? s : "?";
}

/* The terms of a state's next value (a node of the state's type), sorted by
 * what they do to the state: a diagonal term keeps every axis in place; a
 * low-rank or mixing term keeps all but one, which it contracts with a
 * vector and spreads back (rank 1), or maps by a matrix. */
enum { TS_DIAG, TS_LOWRANK, TS_MIX, TS_OTHER };

static int term_shape(const Term *t, int *axis) {
  int kind = TS_DIAG;
  *axis = -1;
  for (int s = 0; s < t->srank; s++) {
    if (t->ax[s] == AX_UNIT || (t->ax[s] == AX_ID && t->pos[s] == s)) continue;
    if (*axis >= 0) return TS_OTHER;
    *axis = s;
    if (t->ax[s] == AX_MATRIX && t->pos[s] == s)
      kind = TS_MIX;
    else if (t->ax[s] == AX_PROJ) /* node axis s is free: every other axis is in place */
      kind = TS_LOWRANK;
    else
      return TS_OTHER;
  }
  return kind;
}

typedef struct NextShape {
  int ndiag, nlow, nmix, nother;
  unsigned gvary; /* where the diagonal terms' factors (the gate g) may vary */
  int gunit;      /* g is exactly 1 */
  int ginv;       /* g reads only params and constants */
  int axis;       /* the one axis all low-rank and mixing terms act on, or -1 */
  unsigned tvary; /* where any factor of the transition may vary */
  IrRef at;       /* the node that made the first term that is not diagonal */
} NextShape;

static void next_shape(const AVal *v, NextShape *ns) {
  memset(ns, 0, sizeof *ns);
  ns->gunit = ns->ginv = 1;
  ns->axis = -1;
  ns->at = IR_NONE;
  for (int i = 0; i < v->nterms; i++) {
    const Term *t = &v->t[i];
    int a, kind = term_shape(t, &a);
    ns->tvary |= t->cvary;
    if (kind == TS_DIAG) {
      ns->ndiag++;
      ns->gunit = ns->gunit && t->unit && ns->ndiag == 1;
      ns->gvary |= t->cvary;
      ns->ginv = ns->ginv && t->cinv;
      continue;
    }
    if (ns->at == IR_NONE) ns->at = t->at;
    if (kind == TS_OTHER || (ns->axis >= 0 && ns->axis != a)) {
      ns->nother++;
      continue;
    }
    ns->axis = a;
    if (kind == TS_LOWRANK)
      ns->nlow++;
    else
      ns->nmix++;
  }
}

/* Does every product of `b` split across (H + V | H + K): each factor
 * varying along heads and values only, or along heads and the key only, and
 * some product varying along both a value axis and the key? */
static int writes_split(const Writes *b, unsigned H, unsigned V, unsigned K) {
  int spans = 0;
  for (int i = 0; i < b->n; i++) {
    unsigned all = 0;
    for (int k = 0; k < b->w[i].nf; k++) {
      unsigned f = b->w[i].f[k];
      if ((f & ~(H | V)) && (f & ~(H | K))) return 0;
      all |= f;
    }
    if ((all & V) && (all & K)) spans = 1;
  }
  return spans;
}

/* REC_LIN_MATRIX. Precondition: next = g (.) S + sum_r u_r (x) w_r with g,
 * u_r, w_r S-free, where S's axes of size other than 1 split into heads H,
 * values V (at least one) and one key axis K such that g varies only along
 * H and K, every u_r only along H and V, every w_r only along H and K, and
 * some write varies along both V and K. Per slice along H, S is then a
 * matrix (V by K) updated by rank-1 writes, and its gate is shared by all
 * values: a scalar, or a diagonal along K. The writes are read as products
 * of factors, each on one side of the split, in any layout and operand
 * order (outer, broadcast products, matrix products of a column and a row).
 * Readouts are not part of it. Fewest heads first; the key is the axis the
 * gate varies along, else the last one that works. Returns 1 and H, K. */
static int matrix_split(unsigned A, unsigned gate, const Writes *b, unsigned *H, int *K) {
  for (int nh = 0; nh + 2 <= count_axes(A); nh++)
    for (unsigned h = 0; h < 1u << SEQ_MAX_RANK; h++) {
      if ((h & ~A) || count_axes(h) != nh) continue;
      for (int k = SEQ_MAX_RANK - 1; k >= 0; k--) {
        unsigned kb = 1u << k, v = A & ~h & ~kb;
        if (!(A & kb) || (h & kb) || !v || (gate & ~(h | kb))) continue;
        if (writes_split(b, h, v, kb)) {
          *H = h, *K = k;
          return 1;
        }
      }
    }
  return 0;
}

static void set_gate(RecState *rs, const NextShape *ns, unsigned along) {
  rs->gate_invariant = ns->ginv;
  if (ns->gunit)
    rs->gate = REC_GATE_NONE;
  else if (!along)
    rs->gate = REC_GATE_SCALAR;
  else
    rs->gate = REC_GATE_DIAG;
}

static void decide_matrix(const Ctx *c, RecState *rs, const NextShape *ns, unsigned H, int K) {
  const IrState *s = &c->f->states.v[rs->state];
  unsigned g = ns->gunit ? 0 : ns->gvary & nonone_mask(s->type);
  rs->cls = REC_LIN_MATRIX;
  rs->axis = K;
  rs->heads = H;
  set_gate(rs, ns, g & (1u << K));
  int per_head = rs->gate != REC_GATE_NONE && (g & H);
  rs->reason = arena_printf(c->a, "%s' = gate * %s + b, %s%s%s%s", s->name, s->name, gate_words(rs),
                            per_head ? " per head" : "", rs->gate == REC_GATE_DIAG ? " along " : "",
                            rs->gate == REC_GATE_DIAG ? axis_words(c, s->type, K) : "");
}

/* REC_LIN_DIAG. Precondition: next = a (.) S + b with a and b S-free and
 * (.) elementwise with numpy broadcasting of a to S's shape: the linear
 * part is diagonal terms only, each keeping every axis of S in place. The
 * gate is how a varies over S's axes; every element being independent, the
 * axes a varies along are heads when it does not vary along all of them. */
static void decide_diag(const Ctx *c, RecState *rs, const NextShape *ns) {
  const IrState *s = &c->f->states.v[rs->state];
  unsigned A = nonone_mask(s->type), g = ns->gunit ? 0 : ns->gvary & A;
  rs->cls = REC_LIN_DIAG;
  set_gate(rs, ns, 0);
  if (rs->gate != REC_GATE_NONE && g == A && A) rs->gate = REC_GATE_FULL;
  if (rs->gate == REC_GATE_SCALAR) rs->heads = g;
  rs->reason = arena_printf(
      c->a, "%s' = a * %s + b%s, %s%s", s->name, s->name, rs->is_complex ? ", complex" : "",
      rs->gate == REC_GATE_NONE ? "a = 1" : gate_words(rs), rs->heads ? " per head" : "");
}

/* REC_LIN_DPLR. Precondition: next = g (.) S + sum_r spread_K(b_r, S x_K a_r)
 * + B: every term keeps every axis of S in place but at most one, K, which
 * the low-rank terms contract with an S-free vector a_r and spread back
 * along K by an S-free vector b_r; g, a_r, b_r vary only along K and heads
 * H (the other axes they vary along). Per slice along H, the transition
 * along K is diag(g) - sum_r a_r b_r^T, shared by the remaining axes (the
 * values, rows of the delta rule's S); B is S-free. */
static void decide_dplr(const Ctx *c, RecState *rs, const NextShape *ns) {
  const IrState *s = &c->f->states.v[rs->state];
  unsigned A = nonone_mask(s->type), kb = 1u << ns->axis;
  unsigned g = ns->gunit ? 0 : ns->gvary & A;
  rs->cls = REC_LIN_DPLR;
  rs->axis = ns->axis;
  rs->heads = ns->tvary & A & ~kb;
  set_gate(rs, ns, g & kb);
  const char *gate = ns->ndiag ? gate_words(rs) : "no diagonal part";
  if (!ns->ndiag) rs->gate = REC_GATE_SCALAR, rs->gate_invariant = 1;
  int per_head = ns->ndiag && rs->gate != REC_GATE_NONE && (g & rs->heads);
  rs->reason =
      arena_printf(c->a, "%s' = gate * %s - (%s k) w^T + ... along %s, %s%s; low-rank term at %s",
                   s->name, s->name, s->name, axis_words(c, s->type, ns->axis), gate,
                   per_head ? " per head" : "", loc_str(c->a, c->f->nodes.v[ns->at].loc));
}

/* REC_LIN_SMALL_DENSE. Precondition: next = T x_a S + b: every term keeps
 * every axis of S in place but one, a, which it maps by an S-free matrix
 * (it may differ from slice to slice along the other axes), and S has at
 * least two axes of size other than 1, so T acts along one axis, never on
 * all of S at once (that is REC_LIN_DENSE). */
static void decide_small_dense(const Ctx *c, RecState *rs, const NextShape *ns) {
  const IrState *s = &c->f->states.v[rs->state];
  rs->cls = REC_LIN_SMALL_DENSE;
  rs->axis = ns->axis;
  rs->reason = arena_printf(c->a, "%s' contracts %s of %s with a %s-free matrix at %s", s->name,
                            axis_words(c, s->type, ns->axis), s->name, s->name,
                            loc_str(c->a, c->f->nodes.v[ns->at].loc));
}

/* REC_LIN_SMALL_DENSE where the affine walk lost the structure (a
 * contraction the rewrite turned into T @ reshape(S, [J, V*K])): 1 when
 * transition.c reads next as transitions along S's third-last axis plus
 * an S-free write, a proof of the class by itself; 0 when it does not, -1
 * out of memory. */
static int small_dense_by_form(const Ctx *c, RecState *rs) {
  const IrState *s = &c->f->states.v[rs->state];
  TransitionForm form;
  const char *why;
  int rc = transition_analyze(c->a, c->f, rs->state, 1, &form, &why);
  if (rc) return rc < 0 ? -1 : 0;
  rs->cls = REC_LIN_SMALL_DENSE;
  rs->axis = s->type.rank - 3;
  rs->reason = arena_printf(c->a, "%s' contracts %s of %s with a %s-free matrix at %s", s->name,
                            axis_words(c, s->type, rs->axis), s->name, s->name,
                            loc_str(c->a, c->f->nodes.v[s->next].loc));
  return 1;
}

/* REC_LIN_DENSE. Precondition: next is affine in the group over (+, x),
 * next = M S + b with M S-free; nothing is claimed about M, so any
 * associative scan must combine it as a dense matrix. Also the class of a
 * complex state that passes through real, imag, conj or complex(), which
 * is linear over the reals only (`why` says so). */
static void decide_dense(const Ctx *c, RecState *rs, IrRef at, const char *why) {
  const IrState *s = &c->f->states.v[rs->state];
  rs->cls = REC_LIN_DENSE;
  if (at == IR_NONE) at = s->next;
  rs->reason_loc = c->f->nodes.v[at].loc;
  rs->reason = why ? arena_printf(c->a, "%s' is linear over the reals only (%s)", s->name, why)
                   : arena_printf(c->a, "%s' is a general linear map of %s (at %s)", s->name,
                                  s->name, loc_str(c->a, rs->reason_loc));
}

/* The class of the one state of an affine group. */
static void classify_single(const Ctx *c, RecState *rs, const AVal *av, const uint64_t *g,
                            int *oom) {
  const IrState *s = &c->f->states.v[rs->state];
  const AVal *v = &av[s->next];
  unsigned A = nonone_mask(s->type);
  ShiftWalk w = {c, g, rs->state, 256, 0};
  rs->is_complex = s->type.elem == IR_COMPLEX || v->cplx;
  rs->reason_loc = c->f->nodes.v[s->next].loc;
  int shift = shift_axis(&w, s->next);
  if (w.oom) {
    *oom = 1;
    return;
  }
  if (shift >= 0) {
    rs->cls = REC_SHIFT;
    rs->axis = shift;
    rs->reason = arena_printf(c->a, "%s' only moves elements of %s: a sliding window along %s",
                              s->name, s->name, axis_words(c, s->type, shift));
    return;
  }
  NextShape ns;
  next_shape(v, &ns);
  if (ns.at != IR_NONE) rs->reason_loc = c->f->nodes.v[ns.at].loc;
  unsigned H = 0;
  int K = -1;
  if (s->type.elem == IR_COMPLEX && v->real_only)
    decide_dense(c, rs, IR_NONE, "real, imag or conj");
  else if (v->dense || !v->nterms || !dims_equal(c->f->nodes.v[s->next].type, s->type)) {
    int rc = s->type.rank >= 3 ? small_dense_by_form(c, rs) : 0;
    if (rc < 0) *oom = 1;
    if (rc <= 0) decide_dense(c, rs, v->at, NULL);
  } else if (ns.nother)
    decide_dense(c, rs, ns.at, NULL);
  else if (!ns.nlow && !ns.nmix && matrix_split(A, ns.gunit ? 0 : ns.gvary & A, &v->off, &H, &K))
    decide_matrix(c, rs, &ns, H, K);
  else if (!ns.nlow && !ns.nmix)
    decide_diag(c, rs, &ns);
  else if (!ns.nmix)
    decide_dplr(c, rs, &ns);
  else if (count_axes(A) >= 2)
    decide_small_dense(c, rs, &ns);
  else
    decide_dense(c, rs, ns.at, NULL);
  if (v->gstate >= 0 && rs->reason)
    rs->reason = arena_printf(c->a, "%s; its coefficient reads %s", rs->reason,
                              c->f->states.v[v->gstate].name);
}

/* REC_LIN_BLOCK_DIAG. Precondition: the group's k >= 2 states have one
 * shape, and each next_i = sum_j a_ij (.) S_j + b_i with a_ij and b_i
 * S-free and (.) elementwise with numpy broadcasting to that shape: element
 * by element, a k x k transition, so a scan combines k x k blocks of
 * diagonals. Coupling through anything else (a contraction, data movement)
 * is REC_LIN_DENSE. Returns the node that breaks it, or IR_NONE. */
static IrRef block_diag_breaker(const Ctx *c, const int *group, int gi, const AVal *av, int *ok) {
  const IrFunc *f = c->f;
  IrType shape = {IR_REAL, -1, NULL};
  *ok = 1;
  for (int i = 0; i < c->ns; i++) {
    if (group[i] != gi) continue;
    const AVal *v = &av[f->states.v[i].next];
    if (shape.rank < 0) shape = f->states.v[i].type;
    if (!dims_equal(f->states.v[i].type, shape) || v->dense ||
        (f->states.v[i].type.elem == IR_COMPLEX && v->real_only)) {
      *ok = 0;
      return v->dense ? v->at : f->states.v[i].next;
    }
    for (int k = 0; k < v->nterms; k++) {
      int a;
      if (term_shape(&v->t[k], &a) != TS_DIAG) {
        *ok = 0;
        return v->t[k].at != IR_NONE ? v->t[k].at : f->states.v[i].next;
      }
    }
  }
  return IR_NONE;
}

static void classify_linear_group(const Ctx *c, RecState *st, const int *group, int gi, int gsize,
                                  const AVal *av) {
  const IrFunc *f = c->f;
  int ok;
  IrRef at = block_diag_breaker(c, group, gi, av, &ok);
  for (int i = 0; i < c->ns; i++) {
    if (group[i] != gi) continue;
    RecState *rs = &st[i];
    const AVal *v = &av[f->states.v[i].next];
    const char *sn = f->states.v[i].name;
    rs->is_complex = f->states.v[i].type.elem == IR_COMPLEX || v->cplx;
    rs->reason_loc = f->nodes.v[at != IR_NONE ? at : f->states.v[i].next].loc;
    if (ok) {
      rs->cls = REC_LIN_BLOCK_DIAG;
      rs->block = gsize;
      rs->reason = arena_printf(c->a,
                                "%s' is linear in its group jointly and elementwise: %dx%d blocks "
                                "of diagonals",
                                sn, gsize, gsize);
    } else {
      rs->cls = REC_LIN_DENSE;
      rs->reason =
          arena_printf(c->a, "%s' is linear in its group jointly: a coupled transition (at %s)", sn,
                       loc_str(c->a, rs->reason_loc));
    }
  }
}

/* ---- Time-invariant systems: the convolution form ------------------------ */

/* What a node is to the system of state s: time-invariant (it reads no input
 * and no state), and then possibly exactly zero; linear in s and the inputs
 * jointly, with time-invariant coefficients and no constant part; or
 * neither. */
enum { LTI_INV, LTI_ZERO, LTI_LIN, LTI_BAD };

static int lti_kind(const Ctx *c, const unsigned char *kind, IrRef r, int s) {
  const IrNode *n = &c->f->nodes.v[r];
  if (c->invariant[r]) {
    int zero = n->op == IR_CONST
                   ? n->cval == 0
                   : (n->op == IR_BROADCAST || n->op == IR_RESHAPE) && kind[n->args[0]] == LTI_ZERO;
    return zero ? LTI_ZERO : LTI_INV;
  }
  /* Not time-invariant: a leaf that varies, or an op with an operand that
   * does, which is then linear or nothing. */
  int nlin = 0, nzero = 0;
  for (int k = 0; k < n->nargs; k++) {
    if (kind[n->args[k]] == LTI_BAD) return LTI_BAD;
    nlin += kind[n->args[k]] == LTI_LIN;
    nzero += kind[n->args[k]] == LTI_ZERO;
  }
  switch (n->op) {
  case IR_STATE:
    return n->index == s ? LTI_LIN : LTI_BAD;
  case IR_INPUT:
    return n->type.elem == IR_INT ? LTI_BAD : LTI_LIN;
  case IR_NEG:
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
  case IR_BROADCAST:
  case IR_RESHAPE:
  case IR_TRANSPOSE:
  case IR_INDEX:
  case IR_SLICE:
  case IR_SUM:
  case IR_MEAN:
    return LTI_LIN;
  case IR_ADD:
  case IR_SUB:
  case IR_CPLX:
  case IR_CONCAT:
    /* A time-invariant addend other than zero is an offset: affine. */
    return nlin + nzero == n->nargs ? LTI_LIN : LTI_BAD;
  case IR_MUL:
  case IR_MATMUL:
  case IR_OUTER:
    return nlin == 1 ? LTI_LIN : LTI_BAD;
  case IR_DIV:
    return kind[n->args[1]] != LTI_LIN ? LTI_LIN : LTI_BAD;
  default:
    return LTI_BAD;
  }
}

/* A walk for one candidate channel axis of state s: chan[r] is the axis of
 * node r that carries the channel index (its value at index h along that
 * axis reads the state and the inputs only at index h along theirs),
 * CH_FREE where the node is no part of the system (time-invariant, or a
 * feedthrough: linear in the inputs alone, outside the update), CH_MIXED
 * where channels meet or the index is lost. */
enum { CH_MIXED = -1, CH_FREE = -2 };

typedef struct LtiWalk {
  const Ctx *c;
  int s;
  int axis;     /* the candidate axis of the state */
  DimExpr size; /* its size: an input's or output's channel axis has it */
  const unsigned char *kind, *cone;
  signed char *chan;
} LtiWalk;

/* The one axis of t of size d, or CH_MIXED when none or several have it. */
static int unique_axis(IrType t, DimExpr d) {
  int a = CH_MIXED;
  for (int k = 0; k < t.rank; k++) {
    if (!dim_eq(t.dims[k], d)) continue;
    if (a != CH_MIXED) return CH_MIXED;
    a = k;
  }
  return a;
}

/* Elementwise ops and concat: every operand that carries the channel
 * carries it onto the same axis of the result (numpy broadcasting), and a
 * concat does not join along it. */
static int chan_merge(const LtiWalk *w, const IrNode *n) {
  int out = CH_FREE, map[SEQ_MAX_RANK];
  for (int k = 0; k < n->nargs; k++) {
    int ch = w->chan[n->args[k]];
    IrType from = w->c->f->nodes.v[n->args[k]].type;
    if (ch == CH_FREE) continue;
    if (ch == CH_MIXED || from.rank > n->type.rank) return CH_MIXED;
    broadcast_map(from, n->type, map);
    if (out != CH_FREE && out != map[ch]) return CH_MIXED;
    out = map[ch];
  }
  return n->op == IR_CONCAT && out == n->axis ? CH_MIXED : out;
}

/* A matrix or outer product of the system's operand with a time-invariant
 * one: contracting the channel axis mixes the channels. */
static int chan_product(const LtiWalk *w, const IrNode *n) {
  Einsum e;
  int d = w->kind[n->args[0]] == LTI_LIN ? 0 : 1, ch = w->chan[n->args[d]];
  if (ch < 0) return ch;
  if (einsum_of(w->c->f, n, &e)) return CH_MIXED;
  int p = e.map[d][ch];
  if (p == e.sum) return CH_MIXED;
  return e.sum >= 0 && p > e.sum ? p - 1 : p;
}

static int chan_rule(const LtiWalk *w, IrRef r) {
  const IrFunc *f = w->c->f;
  const IrNode *n = &f->nodes.v[r];
  if (w->kind[r] != LTI_LIN || (!w->cone[r] && !bit_get(deps_of(w->c, r), w->s))) return CH_FREE;
  if (n->op == IR_STATE) return w->axis;
  if (n->op == IR_INPUT) return unique_axis(n->type, w->size);
  if ((ir_op_info[n->op].flags & IRF_EW) || n->op == IR_CONCAT) return chan_merge(w, n);
  if (n->op == IR_MATMUL || n->op == IR_OUTER) return chan_product(w, n);
  int ch = w->chan[n->args[0]], map[SEQ_MAX_RANK];
  IrType from = f->nodes.v[n->args[0]].type;
  if (ch < 0) return ch;
  switch (n->op) {
  case IR_BROADCAST:
    if (from.rank > n->type.rank) return CH_MIXED;
    broadcast_map(from, n->type, map);
    return map[ch];
  case IR_RESHAPE:
    if (!same_nonone_dims(from, n->type)) return CH_MIXED;
    reshape_map(from, n->type, map);
    return map[ch];
  case IR_TRANSPOSE:
    transpose_map(from.rank, map);
    return map[ch];
  case IR_SLICE:
    return n->axis == ch ? CH_MIXED : ch;
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN:
    return n->axis < 0 || n->axis == ch ? CH_MIXED : ch - (n->axis < ch);
  default:
    return CH_MIXED;
  }
}

/* Does the candidate axis split the system into independent channels? The
 * state's next value carries it on the same axis, and every output that
 * reads the state on its one axis of that size. */
static int lti_channel(const LtiWalk *w) {
  const IrFunc *f = w->c->f;
  for (IrRef r = 0; r < w->c->n; r++) w->chan[r] = (signed char)chan_rule(w, r);
  if (w->chan[f->states.v[w->s].next] != w->axis) return 0;
  for (int i = 0; i < f->outputs.n; i++) {
    IrRef v = f->outputs.v[i].value;
    int a = unique_axis(f->outputs.v[i].type, w->size);
    if (bit_get(deps_of(w->c, v), w->s) && (a < 0 || w->chan[v] != a)) return 0;
  }
  return 1;
}

/* "x -> y": names of the inputs (or outputs) listed in idx. */
static const char *lti_names(const Ctx *c, const int *idx, int n, int outputs) {
  const char *s = "";
  for (int i = 0; i < n && s; i++)
    s = arena_printf(c->a, "%s%s%s", s, i ? ", " : "",
                     outputs ? c->f->outputs.v[idx[i]].name : c->f->inputs.v[idx[i]].name);
  return s;
}

static const char *lti_words(const Ctx *c, const RecState *rs) {
  IrType st = c->f->states.v[rs->state].type;
  const char *ch = "";
  for (int k = 0; k < st.rank && ch; k++)
    if (rs->lti_channels >> k & 1)
      ch = arena_printf(c->a, "%s%s%s", ch, *ch ? ", " : " per channel along ",
                        axis_words(c, st, k));
  const char *in = lti_names(c, rs->lti_inputs, rs->nlti_inputs, 0);
  const char *out = lti_names(c, rs->lti_outputs, rs->nlti_outputs, 1);
  if (!ch || !in || !out) return NULL;
  return arena_printf(c->a, "time-invariant from %s to %s; K_l = C A^l B%s", in, out,
                      rs->lti_channels ? ch
                                       : ", one multi-input multi-output system (a matrix "
                                         "per lag)");
}

/* The inputs state s's update reads (its cone), and the outputs that read
 * s; 0, or -1 out of memory. */
static int lti_ends(const Ctx *c, RecState *rs, const unsigned char *cone) {
  const IrFunc *f = c->f;
  rs->lti_inputs = arena_calloc(c->a, (size_t)f->inputs.n + 1, sizeof *rs->lti_inputs);
  rs->lti_outputs = arena_calloc(c->a, (size_t)f->outputs.n + 1, sizeof *rs->lti_outputs);
  if (!rs->lti_inputs || !rs->lti_outputs) return -1;
  for (int i = 0; i < f->inputs.n; i++)
    for (IrRef r = 0; r < c->n; r++)
      if (cone[r] && f->nodes.v[r].op == IR_INPUT && f->nodes.v[r].index == i) {
        rs->lti_inputs[rs->nlti_inputs++] = i;
        break;
      }
  for (int i = 0; i < f->outputs.n; i++)
    if (bit_get(deps_of(c, f->outputs.v[i].value), rs->state))
      rs->lti_outputs[rs->nlti_outputs++] = i;
  return 0;
}

/* RecState.lti. Precondition: s is the one state of its group, of a linear
 * class with a recurrence (diagonal, matrix state, diagonal plus low rank,
 * small dense or dense; a shift register is a convolution already); next(s)
 * is linear in s and the inputs jointly with coefficients that read only
 * params, dims and constants, and no constant part (lti_kind: sums, signs,
 * real, imag, conj, data movement, reductions, and products and quotients
 * by time-invariant values; no other state, no token input); it reads at
 * least one input; at least one output reads s, and every output that does
 * is linear in the same sense (in s, next(s) and the inputs: C s + D x);
 * no other state's next reads s. Then from a zero state the outputs are the
 * inputs convolved with K_l = C A^l B plus the feedthrough D x. Channels: an
 * axis of s (its size unique among s's axes) along which next, the inputs it
 * reads and the outputs that read s each carry the same index, every node
 * between reading only that index (chan_rule): per channel, an independent
 * system. Returns -1 out of memory. */
static int detect_lti(const Ctx *c, RecState *rs, unsigned char *kind, unsigned char *cone,
                      signed char *chan) {
  const IrFunc *f = c->f;
  int s = rs->state;
  IrRef nx = f->states.v[s].next;
  IrType st = f->states.v[s].type;
  if (rs->cls != REC_LIN_DIAG && rs->cls != REC_LIN_MATRIX && rs->cls != REC_LIN_DPLR &&
      rs->cls != REC_LIN_SMALL_DENSE && rs->cls != REC_LIN_DENSE)
    return 0;
  for (IrRef r = 0; r < c->n; r++) kind[r] = (unsigned char)lti_kind(c, kind, r, s);
  if (kind[nx] != LTI_LIN) return 0;
  for (int j = 0; j < c->ns; j++)
    if (j != s && bit_get(deps_of(c, f->states.v[j].next), s)) return 0;
  for (int i = 0; i < f->outputs.n; i++) {
    IrRef v = f->outputs.v[i].value;
    if (bit_get(deps_of(c, v), s) && kind[v] != LTI_LIN) return 0;
  }
  memset(cone, 0, (size_t)c->n);
  cone[nx] = 1;
  for (IrRef r = nx; r >= 0; r--)
    for (int k = 0; k < f->nodes.v[r].nargs && cone[r]; k++) cone[f->nodes.v[r].args[k]] = 1;
  if (lti_ends(c, rs, cone)) return -1;
  if (!rs->nlti_inputs || !rs->nlti_outputs) return 0;
  LtiWalk w = {c, s, 0, dim_const(1), kind, cone, chan};
  for (int k = 0; k < st.rank; k++) {
    w.axis = k, w.size = st.dims[k];
    if (!dim_is_one(st.dims[k]) && unique_axis(st, st.dims[k]) == k && lti_channel(&w))
      rs->lti_channels |= 1u << k;
  }
  rs->lti = 1;
  rs->lti_reason = lti_words(c, rs);
  return rs->lti_reason ? 0 : -1;
}

/* ---- Putting it together -------------------------------------------------- */

static RecStrategy strategy_of(RecClass k) {
  switch (k) {
  case REC_MAP:
    return REC_STRAT_MAP;
  case REC_CARRIED:
    return REC_STRAT_KEEP;
  case REC_SHIFT:
    return REC_STRAT_WINDOW;
  case REC_LIN_DIAG:
    return REC_STRAT_SCAN;
  case REC_LIN_MATRIX:
    return REC_STRAT_CHUNKED;
  case REC_LIN_DPLR:
    return REC_STRAT_CHUNKED_WY;
  case REC_LIN_SMALL_DENSE:
    return REC_STRAT_CHUNKED_TREE;
  case REC_LIN_DENSE:
    return REC_STRAT_SCAN_DENSE;
  case REC_LIN_BLOCK_DIAG:
    return REC_STRAT_SCAN_BLOCK;
  case REC_MAXPLUS:
    return REC_STRAT_SCAN_MAXPLUS;
  default:
    return REC_STRAT_NEWTON;
  }
}

/* Strongly connected groups from the transitive closure of "next of i reads
 * state j"; cells have a handful of states, so the cubic closure is cheap. */
static int *find_groups(const Ctx *c, int *ngroups) {
  int ns = c->ns;
  unsigned char *reach = arena_calloc(c->a, (size_t)ns * (size_t)ns + 1, 1);
  int *group = arena_calloc(c->a, (size_t)ns + 1, sizeof *group);
  if (!reach || !group) return NULL;
  for (int i = 0; i < ns; i++) {
    const uint64_t *d = deps_of(c, c->f->states.v[i].next);
    for (int j = 0; j < ns; j++) reach[i * ns + j] = (unsigned char)bit_get(d, j);
  }
  for (int k = 0; k < ns; k++)
    for (int i = 0; i < ns; i++)
      if (reach[i * ns + k])
        for (int j = 0; j < ns; j++)
          if (reach[k * ns + j]) reach[i * ns + j] = 1;
  *ngroups = 0;
  for (int i = 0; i < ns; i++) group[i] = -1;
  for (int i = 0; i < ns; i++) {
    if (group[i] >= 0) continue;
    group[i] = (*ngroups)++;
    for (int j = i + 1; j < ns; j++)
      if (group[j] < 0 && reach[i * ns + j] && reach[j * ns + i]) group[j] = group[i];
  }
  return group;
}

/* The per-group scratch of classify_func, allocated once. */
typedef struct Work {
  const int *group;
  uint64_t *gset;    /* the group's states */
  AVal *av;          /* pass 2, per node */
  unsigned char *jd; /* pass 3, per node */
  IrRef *jwhy;       /* pass 3: where the Jacobian became dense */
  /* detect_lti's, per node */
  unsigned char *lkind, *lcone;
  signed char *lchan;
} Work;

/* REC_MAXPLUS. Precondition: every next of the group is affine over
 * (max, +) element by element (trop_rule): next = max_i(S_j + a_i) with the
 * states in place and a_i S-free. One state is REC_MAXPLUS; coupled states
 * are one (max, +) system, scanned with (max, +) matrix products. A group
 * where some next is affine over (+, x) only is not one: it is nonlinear. */
static void classify_maxplus_group(const Ctx *c, RecState *st, int gi, int gsize, const Work *w) {
  const IrFunc *f = c->f;
  for (int i = 0; i < c->ns; i++) {
    if (w->group[i] != gi) continue;
    RecState *rs = &st[i];
    const char *sn = f->states.v[i].name;
    rs->reason_loc = f->nodes.v[f->states.v[i].next].loc;
    if (gsize == 1) {
      rs->cls = REC_MAXPLUS;
      rs->reason = arena_printf(c->a, "%s' = max(%s + a, b), a and b %s-free, at %s", sn, sn, sn,
                                loc_str(c->a, rs->reason_loc));
      rs->strategy = REC_STRAT_SCAN_MAXPLUS;
    } else {
      rs->cls = REC_LIN_DENSE;
      rs->reason = arena_printf(c->a, "%s' is linear over (max, +) jointly with its group", sn);
      rs->strategy = REC_STRAT_SCAN_MAXPLUS;
    }
  }
}

/* The other states of group gi whose next is not affine over (+, x)
 * (want_aff) or not over (max, +), in words, or NULL. */
static const char *partners_without(const Ctx *c, int gi, int i, const Work *w, int want_aff,
                                    int want_trop) {
  const char *names = NULL;
  for (int j = 0; j < c->ns; j++) {
    const AVal *v = &w->av[c->f->states.v[j].next];
    if (w->group[j] != gi || j == i || (want_aff && v->aff) || (want_trop && v->trop)) continue;
    names = names ? arena_printf(c->a, "%s, %s", names, c->f->states.v[j].name)
                  : c->f->states.v[j].name;
  }
  return names;
}

/* Why a state that is affine by itself is solved with its group by Newton:
 * a partner is nonlinear, or is affine over the other semiring only (an
 * update over (+, x) and one over (max, +) do not compose into either). */
static const char *coupling_words(const Ctx *c, int gi, int i, const Work *w) {
  const char *sn = c->f->states.v[i].name, *other;
  if ((other = partners_without(c, gi, i, w, 1, 1)))
    return arena_printf(c->a,
                        "%s' is linear in its own group's values but coupled with %s, "
                        "which is nonlinear",
                        sn, other);
  if (w->av[c->f->states.v[i].next].aff) {
    other = partners_without(c, gi, i, w, 1, 0);
    return arena_printf(c->a,
                        "%s' is linear over (+, x) but coupled with %s, linear over (max, +) only",
                        sn, other ? other : "?");
  }
  other = partners_without(c, gi, i, w, 0, 1);
  return arena_printf(c->a,
                      "%s' is linear over (max, +) but coupled with %s, linear over (+, x) only",
                      sn, other ? other : "?");
}

static const char *dense_jacobian_words(const Ctx *c, IrRef dense_at, const Work *w) {
  const IrNode *dn = &c->f->nodes.v[dense_at];
  int sidx = -1;
  const char *with = NULL;
  for (int k = 0; k < dn->nargs; k++)
    if (w->jd[dn->args[k]] != J_NONE && sidx < 0)
      sidx = first_in(c, dn->args[k], w->gset);
    else if (!with && w->jd[dn->args[k]] == J_NONE)
      with = param_name(c->f, dn->args[k]);
  return arena_printf(c->a, "%s enters through %s%s%s at %s",
                      sidx >= 0 ? c->f->states.v[sidx].name : "the state", ir_op_info[dn->op].text,
                      with ? " with " : "", with ? with : "", loc_str(c->a, dn->loc));
}

/* REC_NONLINEAR: some next of the group is neither affine over (+, x) nor
 * over (max, +) in the group (analyse_group says where linearity was lost);
 * every member is solved jointly by Newton, with the Jacobian structure of
 * pass 3, and no scan is ever claimed. */
static void classify_nonlinear_group(const Ctx *c, RecState *st, int gi, int gsize, int first,
                                     const Work *w) {
  const IrFunc *f = c->f;
  IrType stype = f->states.v[first].type;
  int same = 1;
  for (int i = 0; i < c->ns; i++)
    if (w->group[i] == gi && !dims_equal(f->states.v[i].type, stype)) same = 0;
  jacobian(c, w->gset, stype, w->jd, w->jwhy);
  IrRef dense_at = IR_NONE;
  for (int i = 0; i < c->ns && dense_at == IR_NONE; i++)
    if (w->group[i] == gi && w->jd[f->states.v[i].next] == J_DENSE)
      dense_at = w->jwhy[f->states.v[i].next];
  for (int i = 0; i < c->ns; i++) {
    if (w->group[i] != gi) continue;
    RecState *rs = &st[i];
    const AVal *v = &w->av[f->states.v[i].next];
    const char *sn = f->states.v[i].name;
    rs->cls = REC_NONLINEAR;
    rs->strategy = REC_STRAT_NEWTON;
    if (!v->aff && !v->trop) {
      rs->reason = why_words(c, v, sn);
      rs->reason_loc = f->nodes.v[v->why].loc;
    } else {
      rs->reason = coupling_words(c, gi, i, w);
      rs->reason_loc = f->nodes.v[f->states.v[i].next].loc;
    }
    if (!same) { /* newton.c solves states of one shape */
      rs->jacobian = REC_JAC_NONE;
      rs->jacobian_reason = "no Newton form: coupled states of different shapes";
    } else if (dense_at != IR_NONE) {
      rs->jacobian = REC_JAC_DENSE;
      rs->jacobian_reason = dense_jacobian_words(c, dense_at, w);
    } else if (gsize == 1) {
      rs->jacobian = REC_JAC_DIAG;
      rs->jacobian_reason = arena_printf(c->a, "%s enters only through elementwise ops", sn);
    } else {
      rs->jacobian = REC_JAC_BLOCK_DIAG;
      rs->block = gsize;
      rs->jacobian_reason = arena_printf(
          c->a, "the %d states enter only through elementwise ops: %dx%d blocks of diagonals",
          gsize, gsize, gsize);
    }
  }
}

/* One group: a map, a carried state, or the class its analysis proves.
 * Returns -1 when memory ran out. */
static int classify_group(const Ctx *c, RecState *st, int gi, const Work *w) {
  const IrFunc *f = c->f;
  int gsize = 0, self = 0, first = -1;
  memset(w->gset, 0, (size_t)c->nw * sizeof *w->gset);
  for (int i = 0; i < c->ns; i++)
    if (w->group[i] == gi) {
      w->gset[i / 64] |= (uint64_t)1 << (i % 64);
      gsize++;
      if (first < 0) first = i;
    }
  for (int i = 0; i < c->ns; i++)
    if (w->group[i] == gi && sets_meet(c, deps_of(c, f->states.v[i].next), w->gset)) self = 1;

  /* REC_MAP: next reads no state of its own group (then the group is one
   * state), so every step is computed from given values alone. */
  RecState *rs = &st[first];
  const char *sn = f->states.v[first].name;
  if (!self) {
    rs->cls = REC_MAP;
    rs->reason_loc = f->nodes.v[f->states.v[first].next].loc;
    rs->reason = arena_printf(c->a, "%s' reads no earlier value of %s", sn, sn);
    rs->strategy = REC_STRAT_MAP;
    return 0;
  }
  /* REC_CARRIED: next is the state's own STATE node. */
  const IrNode *nx = &f->nodes.v[f->states.v[first].next];
  if (gsize == 1 && nx->op == IR_STATE && nx->index == first) {
    rs->cls = REC_CARRIED;
    rs->reason_loc = f->states.v[first].loc;
    rs->reason = arena_printf(c->a, "%s' is %s: it keeps its initial value", sn, sn);
    rs->strategy = REC_STRAT_KEEP;
    return 0;
  }

  analyse_group(c, w->gset, w->av);
  int all_aff = 1, all_trop = 1;
  for (int i = 0; i < c->ns; i++) {
    if (w->group[i] != gi) continue;
    const AVal *v = &w->av[f->states.v[i].next];
    all_aff = all_aff && v->aff;
    all_trop = all_trop && v->trop;
  }
  if (!all_aff && !all_trop) {
    classify_nonlinear_group(c, st, gi, gsize, first, w);
  } else if (!all_aff) {
    classify_maxplus_group(c, st, gi, gsize, w);
  } else if (gsize == 1) {
    int oom = 0;
    classify_single(c, rs, w->av, w->gset, &oom);
    if (oom || detect_lti(c, rs, w->lkind, w->lcone, w->lchan)) return -1;
    rs->strategy = strategy_of(rs->cls);
  } else {
    classify_linear_group(c, st, w->group, gi, gsize, w->av);
    for (int i = 0; i < c->ns; i++)
      if (w->group[i] == gi) st[i].strategy = strategy_of(st[i].cls);
  }
  return 0;
}

static int init_states(const Ctx *c, RecState *st, const int *group) {
  for (int i = 0; i < c->ns; i++) {
    const uint64_t *d = deps_of(c, c->f->states.v[i].next);
    RecState *rs = &st[i];
    rs->state = i;
    rs->group = group[i];
    rs->axis = -1;
    rs->deps = arena_calloc(c->a, (size_t)c->ns, sizeof *rs->deps);
    rs->given = arena_calloc(c->a, (size_t)c->ns, sizeof *rs->given);
    if (!rs->deps || !rs->given) return -1;
    for (int j = 0; j < c->ns; j++)
      if (bit_get(d, j)) {
        rs->deps[rs->ndeps++] = j;
        if (group[j] != group[i]) rs->given[rs->ngiven++] = j;
      }
  }
  return 0;
}

int classify_func(Arena *a, const IrFunc *f, RecFunc *out, DiagEngine *de) {
  memset(out, 0, sizeof *out);
  out->func = f;
  if (check_func(f, de)) return -1;
  if (f->states.n == 0) return 0;
  Ctx c;
  int ns = f->states.n, ngroups = 0;
  if (ctx_init(&c, a, f)) goto oom;
  int *group = find_groups(&c, &ngroups);
  RecState *st = arena_calloc(a, (size_t)ns, sizeof *st);
  Work w = {group,
            arena_calloc(a, (size_t)c.nw, sizeof(uint64_t)),
            arena_calloc(a, (size_t)c.n + 1, sizeof(AVal)),
            arena_calloc(a, (size_t)c.n + 1, 1),
            arena_calloc(a, (size_t)c.n + 1, sizeof(IrRef)),
            arena_calloc(a, (size_t)c.n + 1, 1),
            arena_calloc(a, (size_t)c.n + 1, 1),
            arena_calloc(a, (size_t)c.n + 1, 1)};
  if (!group || !st || !w.gset || !w.av || !w.jd || !w.jwhy || !w.lkind || !w.lcone || !w.lchan)
    goto oom;
  out->states = st, out->nstates = ns, out->ngroups = ngroups;
  if (init_states(&c, st, group)) goto oom;
  for (int gi = 0; gi < ngroups; gi++)
    if (classify_group(&c, st, gi, &w)) goto oom;
  for (int i = 0; i < ns; i++)
    if (!st[i].reason) goto oom;
  return 0;
oom:
  diag_error(de, (SrcLoc){0}, "out of memory classifying %s", f->name);
  return -1;
}

int classify_module(Arena *a, const IrModule *m, ClassifyResult **out, DiagEngine *de) {
  *out = NULL;
  ClassifyResult *r = arena_alloc(a, sizeof *r);
  RecFunc *fs = arena_calloc(a, (size_t)m->funcs.n + 1, sizeof *fs);
  if (!r || !fs) {
    diag_error(de, (SrcLoc){0}, "out of memory classifying recurrences");
    return -1;
  }
  r->funcs = fs, r->nfuncs = m->funcs.n;
  for (int i = 0; i < m->funcs.n; i++)
    if (classify_func(a, m->funcs.v[i], &fs[i], de)) return -1;
  *out = r;
  return 0;
}

/* ---- Report --------------------------------------------------------------- */

const char *classify_class_name(RecClass k) {
  switch (k) {
  case REC_MAP:
    return "map";
  case REC_CARRIED:
    return "carried";
  case REC_SHIFT:
    return "linear, shift";
  case REC_LIN_DIAG:
    return "linear diagonal";
  case REC_LIN_MATRIX:
    return "linear, matrix state";
  case REC_LIN_DPLR:
    return "linear, diagonal plus low rank";
  case REC_LIN_SMALL_DENSE:
    return "linear, small dense transition";
  case REC_LIN_DENSE:
    return "linear, dense";
  case REC_MAXPLUS:
    return "linear over (max, +)";
  case REC_NONLINEAR:
    return "nonlinear";
  case REC_LIN_BLOCK_DIAG:
    return "linear, block-diagonal";
  }
  return "?";
}

const char *classify_strategy_name(RecStrategy s) {
  switch (s) {
  case REC_STRAT_KEEP:
    return "none (keeps its initial value)";
  case REC_STRAT_MAP:
    return "parallel map";
  case REC_STRAT_WINDOW:
    return "parallel map over a window of earlier inputs";
  case REC_STRAT_SCAN:
    return "associative scan";
  case REC_STRAT_SCAN_DENSE:
    return "associative scan with dense combine";
  case REC_STRAT_CHUNKED:
    return "chunked (chunkwise-parallel)";
  case REC_STRAT_CHUNKED_WY:
    return "chunked WY (delta rule)";
  case REC_STRAT_CHUNKED_TREE:
    return "chunked with transition products";
  case REC_STRAT_SCAN_MAXPLUS:
    return "associative scan over (max, +)";
  case REC_STRAT_NEWTON:
    return "newton (DEER / ParaRNN)";
  case REC_STRAT_SCAN_BLOCK:
    return "associative scan with kxk blocks of diagonals";
  }
  return "?";
}

static const char *jacobian_name(RecJacobian j) {
  switch (j) {
  case REC_JAC_DIAG:
    return "diagonal";
  case REC_JAC_BLOCK_DIAG:
    return "block-diagonal";
  case REC_JAC_DENSE:
    return "dense";
  default:
    return "none";
  }
}

static void print_loc(FILE *out, SrcLoc l) {
  if (l.file)
    fprintf(out, "%s:%d:%d", l.file->name, l.line, l.col);
  else
    fputs("<unknown location>", out);
}

static void print_states(FILE *out, const IrFunc *f, const int *v, int n) {
  for (int i = 0; i < n; i++) fprintf(out, "%s%s", i ? ", " : "", f->states.v[v[i]].name);
}

void classify_print_report(FILE *out, const IrModule *m, const ClassifyResult *r) {
  for (int fi = 0; fi < r->nfuncs && fi < m->funcs.n; fi++) {
    const RecFunc *rf = &r->funcs[fi];
    const IrFunc *f = m->funcs.v[fi];
    if (f->kind != IR_FN_CELL) continue;
    fprintf(out, "cell %s (", f->name);
    print_loc(out, f->loc);
    fputs(")\n", out);
    if (f->grid) {
      /* A grid cell's IR is its row step; what that means for its forms. */
      int linear = 1;
      for (int i = 0; i < rf->nstates; i++) linear &= rf->states[i].cls != REC_NONLINEAR;
      fprintf(out,
              "  grid: rows of %lld positions, each reading the position before it and the one "
              "above; a step is a row, its positions left to right (row-major order). Parallel "
              "form: the positions of an anti-diagonal are independent (the wavefront)%s; not "
              "built: the classes below are of the row step\n",
              (long long)f->grid,
              linear && rf->nstates ? ", and, the grid being linear, the blocked form of 2D pLSTM "
                                      "(block transitions merged by doubling, then a wavefront "
                                      "over blocks)"
                                    : "");
    }
    if (rf->nstates == 0) fputs("  no state: every step is a map\n", out);
    for (int i = 0; i < rf->nstates; i++) {
      const RecState *rs = &rf->states[i];
      const IrState *s = &f->states.v[rs->state];
      fprintf(out, "  state %s ", s->name);
      ir_print_type(out, f, s->type);
      fprintf(out, "%s: %s", s->hidden ? " (hidden)" : "", classify_class_name(rs->cls));
      fprintf(out, " (%s)", rs->reason);
      int coupled = 0;
      for (int j = 0; j < rf->nstates; j++)
        if (j != i && rf->states[j].group == rs->group)
          fprintf(out, "%s%s", coupled++ ? ", " : "; coupled with ", f->states.v[j].name);
      if (rs->ngiven) {
        int linear = rs->cls != REC_MAP && rs->cls != REC_NONLINEAR && rs->cls != REC_CARRIED;
        fputs(linear ? "; linear given " : "; given ", out);
        print_states(out, f, rs->given, rs->ngiven);
      }
      fputs("\n    reads: ", out);
      if (rs->ndeps == 0) fputs("no state", out);
      print_states(out, f, rs->deps, rs->ndeps);
      fputc('\n', out);
      /* The block size is per state: "kxk" in the name is spelled out. */
      if (rs->strategy == REC_STRAT_SCAN_BLOCK)
        fprintf(out, "    strategy: associative scan with %dx%d blocks of diagonals", rs->block,
                rs->block);
      else if (rs->strategy == REC_STRAT_NEWTON && rs->jacobian == REC_JAC_NONE)
        fprintf(out, "    strategy: sequential (%s)", rs->jacobian_reason);
      else
        fprintf(out, "    strategy: %s", classify_strategy_name(rs->strategy));
      if (rs->strategy == REC_STRAT_NEWTON && rs->jacobian != REC_JAC_NONE) {
        fprintf(out, ", jacobian %s", jacobian_name(rs->jacobian));
        if (rs->jacobian == REC_JAC_BLOCK_DIAG) fprintf(out, " %dx%d", rs->block, rs->block);
        fprintf(out, " (%s); fallback sequential", rs->jacobian_reason);
      }
      fputc('\n', out);
      if (rs->lti) fprintf(out, "    convolution (reported, not built): %s\n", rs->lti_reason);
    }
  }
}
