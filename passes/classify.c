/* classify.c - recurrence classification: for every state of every cell, how
 * the value leaving the step depends on the value entering it (ALGORITHMS.md
 * §1), and the parallel strategy that class admits.
 *
 * Three dataflow passes over the node array (a topological order):
 *   1. state dependencies: which STATE nodes each node reaches. States whose
 *      next values reach each other form a group (strongly connected
 *      component) and are analysed jointly; states of other groups are
 *      inputs ("given").
 *   2. per group, a small abstract interpretation: is each node free of the
 *      group, affine in it over (+, x), affine over (max, +), or nonlinear
 *      (and where linearity was lost)? Affine values carry the kinds of terms
 *      their linear part is made of (elementwise, projected, low rank, mixed
 *      along an axis, dense), which decides the class at `next`.
 *   3. per nonlinear group, the Jacobian's structure: does the group enter
 *      `next` only through elementwise ops (diagonal, or k x k blocks of
 *      diagonals for k coupled states), or through a contraction (dense)?
 * The op flags of ops.def (IRF_EW, IRF_LIN0/1, IRF_LINALL) say which operand
 * positions are linear; the per-op cases below say what each does to the
 * structure of a linear map.
 */
#include "passes/passes.h"

#include <string.h>

/* ---- Small helpers -------------------------------------------------------- */

static int dim_is_one(DimExpr d) {
  int64_t v;
  return dim_is_const(d, &v) && v == 1;
}

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

static const char *loc_str(Arena *a, SrcLoc l) {
  if (!l.file) return "<unknown location>";
  return arena_printf(a, "%s:%d:%d", l.file->name, l.line, l.col);
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
    return (c->vary[n->args[0]] << (t.rank - ot.rank)) & all;
  }
  case IR_RESHAPE: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    return same_nonone_dims(ot, t) ? remap_nonone(c->vary[n->args[0]], ot, t) : all;
  }
  case IR_INDEX:
    return n->axis >= 0 ? remove_axis(c->vary[n->args[0]], n->axis) & all : all;
  case IR_SLICE:
    return c->vary[n->args[0]] & all;
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    return n->axis >= 0 ? remove_axis(c->vary[n->args[0]], n->axis) & all : 0;
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
  if (!c->deps || !c->vary || !c->invariant || !c->one) return -1;
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

/* Kinds of terms in the linear part of an affine value. */
enum {
  T_DIAG = 1 << 0,    /* coefficient (.) S, positioned like S */
  T_EXPAND = 1 << 1,  /* S broadcast into more axes: S's are the trailing `srank` */
  T_SHIFT = 1 << 2,   /* S's elements moved (slice, concat, transpose) */
  T_PROJ = 1 << 3,    /* S contracted with an S-free vector: fewer elements */
  T_LOWRANK = 1 << 4, /* an outer product of a projection with an S-free vector */
  T_MIX = 1 << 5,     /* one axis of S contracted with an S-free matrix */
  T_DENSE = 1 << 6,   /* a general linear map */
  T_REAL = 1 << 7,    /* only real-linear (real, imag, conj of a complex value) */
};

/* Why linearity was lost at a node. */
enum { WHY_OP, WHY_PRODUCT, WHY_DIVISOR, WHY_MIXED };

typedef struct AVal {
  unsigned char dep;  /* reaches a state of the group */
  unsigned char aff;  /* affine over (+, x) */
  unsigned char trop; /* affine over (max, +) */
  unsigned char gone; /* the diagonal coefficient is exactly 1 */
  unsigned char ginv; /* ... and reads only params and constants */
  unsigned char cplx; /* a complex coefficient appears */
  signed char srank;  /* T_EXPAND: how many trailing axes are the state's */
  unsigned terms;
  unsigned gvary; /* axes (of this node) the diagonal coefficient varies along */
  IrRef at;       /* the node that made the most telling term (outer, contraction) */
  int gstate;     /* a state outside the group that a coefficient reads, or -1 */
  IrRef why;      /* nonlinear: where linearity was lost */
  int why_kind;
  int why_state;
} AVal;

/* What broadcasting an operand of type `from` to `to` does to its terms:
 * new leading axes or expanded size-1 axes turn a positioned term into an
 * expanded one, and a projection spread over the state is low rank. */
static AVal av_broadcast(AVal v, IrType from, IrType to) {
  if (dims_equal(from, to)) return v;
  if (to.rank >= from.rank) v.gvary <<= (to.rank - from.rank);
  if (v.terms & (T_DIAG | T_EXPAND)) {
    int srank = (v.terms & T_EXPAND) ? v.srank : from.rank;
    if (trailing_equal(to, from)) {
      v.terms = (v.terms & ~(unsigned)T_DIAG) | T_EXPAND;
      v.srank = (signed char)srank;
    } else {
      v.terms = (v.terms & ~(unsigned)(T_DIAG | T_EXPAND)) | T_SHIFT;
    }
  }
  if (v.terms & T_PROJ) v.terms = (v.terms & ~(unsigned)T_PROJ) | T_LOWRANK;
  return v;
}

/* A contraction: S's elements are combined (matmul, outer, sum). */
enum { C_PROJ, C_MIX, C_DENSE };
static unsigned contract(unsigned t, int kind) {
  unsigned out = t & T_REAL;
  t &= ~(unsigned)T_REAL;
  switch (kind) {
  case C_PROJ:
    if (t) out |= T_PROJ;
    break;
  case C_MIX:
    if (t & (T_DIAG | T_EXPAND | T_SHIFT | T_MIX)) out |= T_MIX;
    out |= t & (T_PROJ | T_LOWRANK | T_DENSE);
    break;
  default:
    if (t & ~(unsigned)(T_PROJ | T_LOWRANK)) out |= T_DENSE;
    out |= t & (T_PROJ | T_LOWRANK);
    break;
  }
  return out;
}

/* Positioned terms moved around (concat, transpose, a partial slice). */
static unsigned moved(unsigned t) {
  if (t & (T_DIAG | T_EXPAND)) t = (t & ~(unsigned)(T_DIAG | T_EXPAND)) | T_SHIFT;
  return t;
}

/* Combines two affine operands of a sum (already broadcast to the result). */
static void av_join(AVal *o, const AVal *v, int *ndiag) {
  if (v->terms & (T_DIAG | T_EXPAND)) {
    if (++*ndiag > 1)
      o->gone = 0;
    else
      o->gone = v->gone;
    o->ginv = o->ginv && v->ginv;
    if (v->terms & T_EXPAND) o->srank = v->srank;
  }
  o->terms |= v->terms;
  o->gvary |= v->gvary;
  o->cplx |= v->cplx;
  if (o->at == IR_NONE) o->at = v->at;
  if (o->gstate < 0) o->gstate = v->gstate;
}

/* Affine over (+, x): fills the structure of the result's linear part and
 * returns 1, or returns 0 (with *why_kind) if the op is not linear in its
 * group-dependent operands. Operands that depend on the group are all affine
 * when this is called. */
static int aff_rule(const Ctx *c, const AVal *av, IrRef r, AVal *o, int *why_kind) {
  const IrNode *n = &c->f->nodes.v[r];
  IrType t = n->type;
  int ndep = 0, d = -1;
  for (int k = 0; k < n->nargs; k++)
    if (av[n->args[k]].dep) ndep++, d = d < 0 ? k : d;
  *why_kind = WHY_OP;
  o->gone = 1, o->ginv = 1, o->at = IR_NONE, o->terms = 0, o->gvary = 0, o->gstate = -1;

  switch (n->op) {
  case IR_NEG:
  case IR_BROADCAST: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    AVal v = av_broadcast(av[n->args[0]], ot, t);
    *o = v;
    return 1;
  }
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
    *o = av[n->args[0]];
    o->terms |= T_REAL;
    return 1;
  case IR_ADD:
  case IR_SUB:
  case IR_CPLX: {
    int ndiag = 0;
    for (int k = 0; k < n->nargs; k++) {
      if (!av[n->args[k]].dep) continue;
      AVal v = av_broadcast(av[n->args[k]], c->f->nodes.v[n->args[k]].type, t);
      av_join(o, &v, &ndiag);
    }
    if (n->op == IR_CPLX) o->terms |= T_REAL;
    return 1;
  }
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
    *o = av_broadcast(av[n->args[d]], c->f->nodes.v[n->args[d]].type, t);
    /* Scaling a term with no positioned part (a low-rank write beta (S k) k^T
     * spelled as a broadcast product) is not a diagonal coefficient. */
    if (!(o->terms & (T_DIAG | T_EXPAND | T_SHIFT)))
      ;
    else if (ct.rank <= t.rank)
      o->gvary |= (c->vary[coef] << (t.rank - ct.rank)) & nonone_mask(t);
    else
      o->gvary = nonone_mask(t);
    o->gone = o->gone && c->one[coef];
    o->ginv = o->ginv && c->invariant[coef];
    o->cplx |= ct.elem == IR_COMPLEX;
    if (o->gstate < 0) o->gstate = first_state(c, coef);
    return 1;
  }
  case IR_MATMUL:
  case IR_OUTER: {
    if (ndep > 1) {
      *why_kind = WHY_PRODUCT;
      return 0;
    }
    const AVal *v = &av[n->args[d]];
    int rd = c->f->nodes.v[n->args[d]].type.rank;
    int ro = c->f->nodes.v[n->args[1 - d]].type.rank;
    *o = *v;
    o->gvary = 0, o->gone = 0;
    o->cplx |= c->f->nodes.v[n->args[1 - d]].type.elem == IR_COMPLEX;
    if (o->gstate < 0) o->gstate = first_state(c, n->args[1 - d]);
    if (n->op == IR_OUTER) {
      unsigned t0 = v->terms & ~(unsigned)T_REAL;
      o->terms = (v->terms & T_REAL) | ((t0 & (T_PROJ | T_LOWRANK)) ? T_LOWRANK : 0) |
                 ((t0 & ~(unsigned)(T_PROJ | T_LOWRANK)) ? T_DENSE : 0);
    } else {
      o->terms = contract(v->terms, ro == 1 ? C_PROJ : rd >= 2 ? C_MIX : C_DENSE);
    }
    if (o->terms & (T_LOWRANK | T_MIX | T_DENSE)) o->at = r;
    return 1;
  }
  case IR_TRANSPOSE:
  case IR_CONCAT:
  case IR_GATHER: {
    if (n->op == IR_GATHER && d != 0) return 0;
    int ndiag = 0;
    for (int k = 0; k < n->nargs; k++) {
      if (!av[n->args[k]].dep) continue;
      AVal v = av[n->args[k]];
      v.terms = moved(v.terms);
      v.gvary = 0;
      av_join(o, &v, &ndiag);
    }
    return 1;
  }
  case IR_RESHAPE: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    *o = av[n->args[0]];
    if (!(o->terms & T_EXPAND) && same_nonone_dims(ot, t)) {
      o->gvary = remap_nonone(o->gvary, ot, t);
    } else {
      o->terms = moved(o->terms);
      o->gvary = 0;
    }
    return 1;
  }
  case IR_INDEX:
  case IR_SLICE: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    *o = av[n->args[0]];
    int lead = (o->terms & T_EXPAND) ? ot.rank - o->srank : 0;
    if (n->axis < 0 || n->axis >= ot.rank) return 0;
    if (n->op == IR_SLICE) {
      DimExpr zero = dim_const(0);
      int full = dim_eq(n->start, zero) && dim_eq(n->stop, ot.dims[n->axis]);
      if (!full && n->axis >= lead) o->terms = moved(o->terms);
      return 1;
    }
    /* An index on a broadcast axis picks one copy: still positioned. */
    if (n->axis < lead) {
      o->gvary = remove_axis(o->gvary, n->axis);
      if (t.rank == o->srank) o->terms = (o->terms & ~(unsigned)T_EXPAND) | T_DIAG;
    } else {
      o->terms = moved(o->terms);
      o->gvary = 0;
    }
    return 1;
  }
  case IR_SUM:
  case IR_MEAN: {
    IrType ot = c->f->nodes.v[n->args[0]].type;
    const AVal *v = &av[n->args[0]];
    *o = *v;
    int lead = (v->terms & T_EXPAND) ? ot.rank - v->srank : 0;
    unsigned rest = v->terms & ~(unsigned)(T_DIAG | T_EXPAND | T_REAL);
    o->terms = (v->terms & T_REAL) | (rest ? T_PROJ : 0);
    o->gvary = 0;
    if (!(v->terms & (T_DIAG | T_EXPAND))) return 1;
    if (n->axis < 0) {
      /* Sum over all axes: positioned only if every axis was a broadcast copy. */
      o->terms |= (v->terms & T_EXPAND) && v->srank == 0 ? T_DIAG : T_PROJ;
    } else if (n->axis < lead) {
      /* Summing broadcast copies, each scaled: still a coefficient per element. */
      o->gvary = remove_axis(v->gvary, n->axis);
      o->terms |= lead - 1 > 0 ? T_EXPAND : T_DIAG;
    } else if ((v->terms & T_EXPAND) && (v->gvary >> n->axis & 1) &&
               (v->gvary & ((1u << lead) - 1))) {
      /* The coefficient varies along the summed state axis and along a new
       * leading axis: a matrix applied along that axis (pLSTM's T C). */
      o->terms |= T_MIX;
      o->at = r;
    } else {
      o->terms |= T_PROJ;
    }
    return 1;
  }
  default:
    return 0;
  }
}

/* Affine over (max, +): the state shifted by S-free amounts, maxed. */
static int trop_rule(const Ctx *c, const AVal *av, IrRef r) {
  const IrNode *n = &c->f->nodes.v[r];
  int ndep = 0;
  for (int k = 0; k < n->nargs; k++)
    if (av[n->args[k]].dep) {
      if (!av[n->args[k]].trop) return 0;
      ndep++;
    }
  switch (n->op) {
  case IR_ADD:
    return ndep == 1;
  case IR_SUB:
    return av[n->args[0]].dep && !av[n->args[1]].dep;
  case IR_MAX:
  case IR_BROADCAST:
  case IR_RESHAPE:
  case IR_INDEX:
  case IR_SLICE:
  case IR_CONCAT:
  case IR_TRANSPOSE:
    return 1;
  default:
    return 0;
  }
}

static void analyse_group(const Ctx *c, const uint64_t *g, AVal *av) {
  for (IrRef r = 0; r < c->n; r++) {
    const IrNode *n = &c->f->nodes.v[r];
    AVal *o = &av[r];
    memset(o, 0, sizeof *o);
    o->at = o->why = IR_NONE;
    o->why_state = o->gstate = -1;
    if (!sets_meet(c, deps_of(c, r), g)) continue;
    o->dep = 1;
    if (n->op == IR_STATE) {
      o->aff = o->trop = o->gone = o->ginv = 1;
      o->terms = T_DIAG;
      o->cplx = n->type.elem == IR_COMPLEX;
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
    AVal tmp;
    memset(&tmp, 0, sizeof tmp);
    if (all_aff && aff_rule(c, av, r, &tmp, &why_kind)) {
      *o = tmp;
      o->dep = 1, o->aff = 1;
      o->why = IR_NONE, o->why_state = -1;
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

/* ---- Putting it together -------------------------------------------------- */

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

static void classify_linear_shape(const Ctx *c, RecState *rs, const AVal *v, int group_size,
                                  unsigned t, unsigned axes, int naxes, const char *at);

/* The class of one state of an affine group, from its next value's terms. */
static void classify_linear(const Ctx *c, RecState *rs, const AVal *v, int group_size) {
  const IrFunc *f = c->f;
  const IrState *s = &f->states.v[rs->state];
  unsigned t = v->terms & ~(unsigned)T_REAL;
  unsigned axes = nonone_mask(s->type);
  int naxes = 0;
  for (int k = 0; k < s->type.rank; k++) naxes += axes >> k & 1;
  const char *at = loc_str(c->a, v->at >= 0 ? f->nodes.v[v->at].loc : f->nodes.v[s->next].loc);
  rs->reason_loc = v->at >= 0 ? f->nodes.v[v->at].loc : f->nodes.v[s->next].loc;
  rs->is_complex = s->type.elem == IR_COMPLEX || v->cplx;
  classify_linear_shape(c, rs, v, group_size, t, axes, naxes, at);
  if (v->gstate >= 0 && rs->reason)
    rs->reason =
        arena_printf(c->a, "%s; its coefficient reads %s", rs->reason, f->states.v[v->gstate].name);
}

/* Is r, an S-free value with the state's trailing axes, an outer product
 * over its last two axes (a rank-1 write v k^T, per head)? A product of two
 * factors where one varies only along the second-to-last of those axes and
 * the other only along the last, times factors constant on both. */
static int is_outer_write(const Ctx *c, IrRef r, int depth) {
  const IrNode *n = &c->f->nodes.v[r];
  int rank = n->type.rank;
  if (rank < 2 || depth > 16) return 0;
  unsigned last2 = 3u << (rank - 2), row = 1u << (rank - 2), col = 1u << (rank - 1);
  if (n->op == IR_OUTER) return 1;
  if (n->op == IR_NEG || n->op == IR_BROADCAST) {
    const IrNode *a = &c->f->nodes.v[n->args[0]];
    return a->type.rank == rank && is_outer_write(c, n->args[0], depth + 1);
  }
  if (n->op != IR_MUL) return 0;
  unsigned m[2];
  for (int k = 0; k < 2; k++) {
    IrType ot = c->f->nodes.v[n->args[k]].type;
    m[k] = ot.rank <= rank ? (c->vary[n->args[k]] << (rank - ot.rank)) & last2 : last2;
  }
  if ((m[0] == row && m[1] == col) || (m[0] == col && m[1] == row)) return 1;
  for (int k = 0; k < 2; k++)
    if (!m[1 - k] && c->f->nodes.v[n->args[k]].type.rank == rank &&
        is_outer_write(c, n->args[k], depth + 1))
      return 1;
  return 0;
}

/* Does the S-free part of `next` (its addends through + and -) consist of
 * rank-1 writes? That, with a gate shared along an axis, is what makes a
 * state with two or more axes a matrix state (ALGORITHMS.md §1); a vector per
 * head written with a vector (mLSTM's n, linear attention's z) is diagonal. */
static int writes_outer(const Ctx *c, IrRef r, int st, int depth) {
  const IrNode *n = &c->f->nodes.v[r];
  if (depth > 16) return 0;
  if (!bit_get(deps_of(c, r), st)) return is_outer_write(c, r, 0);
  if (n->op == IR_ADD || n->op == IR_SUB) {
    int found = 0;
    for (int k = 0; k < 2; k++) {
      if (!bit_get(deps_of(c, n->args[k]), st) && !is_outer_write(c, n->args[k], 0)) return 0;
      if (!bit_get(deps_of(c, n->args[k]), st))
        found = 1;
      else if (c->f->nodes.v[n->args[k]].op == IR_ADD || c->f->nodes.v[n->args[k]].op == IR_SUB)
        found |= writes_outer(c, n->args[k], st, depth + 1);
    }
    return found;
  }
  return 0;
}

static void classify_linear_shape(const Ctx *c, RecState *rs, const AVal *v, int group_size,
                                  unsigned t, unsigned axes, int naxes, const char *at) {
  const IrFunc *f = c->f;
  const IrState *s = &f->states.v[rs->state];
  const char *sn = s->name;
  rs->gate_invariant = v->ginv;
  /* Heads: leading axes of a multi-head state ([NH, Dv, Dk], [NH, DH]) along
   * which the gate varies, with the gate shared along some later axis. Each
   * head is an independent recurrence of the same class, so the gate is read
   * off the axes after the heads: Mamba-2's exp(dt A) per head is a scalar
   * gate, GLA's per-head per-key gate a diagonal one. Only for elementwise
   * and low-rank terms, which never mix heads. */
  unsigned heads = 0;
  if (!(t & ~(unsigned)(T_DIAG | T_LOWRANK)) && !v->gone) {
    for (int k = 0; k + 1 < s->type.rank; k++) {
      if (!(axes >> k & 1)) continue;
      if (!(v->gvary >> k & 1)) break;
      heads |= 1u << k;
    }
    unsigned rest = axes & ~heads;
    if (!rest || (v->gvary & rest) == rest) heads = 0;
  }
  if (heads) {
    axes &= ~heads;
    naxes = 0;
    for (int k = 0; k < s->type.rank; k++) naxes += axes >> k & 1;
  }
  if (v->gone)
    rs->gate = REC_GATE_NONE;
  else if (!(v->gvary & axes))
    rs->gate = REC_GATE_SCALAR;
  else if ((v->gvary & axes) == axes)
    rs->gate = REC_GATE_FULL;
  else
    rs->gate = REC_GATE_DIAG;

  if (group_size > 1) {
    rs->cls = REC_LIN_DENSE;
    rs->reason = arena_printf(c->a, "%s' is linear in its group jointly: a coupled transition", sn);
    return;
  }
  if (v->terms & T_REAL && rs->is_complex) {
    rs->cls = REC_LIN_DENSE;
    rs->reason = arena_printf(c->a, "%s' is linear over the reals only (real, imag or conj)", sn);
    return;
  }
  const char *per_head = heads ? " per head" : "";
  if (t == T_DIAG) {
    if (naxes >= 2 && rs->gate != REC_GATE_FULL && writes_outer(c, s->next, rs->state, 0)) {
      rs->cls = REC_LIN_MATRIX;
      rs->reason =
          arena_printf(c->a, "%s' = gate * %s + b, %s%s", sn, sn, gate_words(rs), per_head);
    } else {
      rs->cls = REC_LIN_DIAG;
      rs->reason =
          arena_printf(c->a, "%s' = a * %s + b%s, %s%s", sn, sn, rs->is_complex ? ", complex" : "",
                       rs->gate == REC_GATE_NONE ? "a = 1" : gate_words(rs), per_head);
    }
  } else if (t == T_SHIFT) {
    rs->cls = REC_SHIFT;
    rs->reason = arena_printf(c->a, "%s' only moves elements of %s: a sliding window", sn, sn);
  } else if ((t & T_LOWRANK) && !(t & ~(unsigned)(T_DIAG | T_LOWRANK))) {
    rs->cls = REC_LIN_DPLR;
    rs->reason = arena_printf(c->a, "%s' = gate * %s - (%s k) w^T + ..., %s%s; low-rank term at %s",
                              sn, sn, sn, t & T_DIAG ? gate_words(rs) : "no diagonal part",
                              t & T_DIAG ? per_head : "", at);
  } else if ((t & T_MIX) && !(t & ~(unsigned)(T_DIAG | T_MIX | T_LOWRANK))) {
    rs->cls = REC_LIN_SMALL_DENSE;
    rs->reason = arena_printf(c->a, "%s' contracts one axis of %s with a %s-free matrix at %s", sn,
                              sn, sn, at);
  } else {
    rs->cls = REC_LIN_DENSE;
    rs->reason = arena_printf(c->a, "%s' is a general linear map of %s (at %s)", sn, sn, at);
  }
}

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

int classify_func(Arena *a, const IrFunc *f, RecFunc *out, DiagEngine *de) {
  memset(out, 0, sizeof *out);
  out->func = f;
  if (check_func(f, de)) return -1;
  if (f->states.n == 0) return 0;
  Ctx c;
  int ns = f->states.n;
  if (ctx_init(&c, a, f)) goto oom;
  int ngroups = 0;
  int *group = find_groups(&c, &ngroups);
  RecState *st = arena_calloc(a, (size_t)ns, sizeof *st);
  uint64_t *gset = arena_calloc(a, (size_t)c.nw, sizeof *gset);
  AVal *av = arena_calloc(a, (size_t)c.n + 1, sizeof *av);
  unsigned char *jd = arena_calloc(a, (size_t)c.n + 1, 1);
  IrRef *jwhy = arena_calloc(a, (size_t)c.n + 1, sizeof *jwhy);
  if (!group || !st || !gset || !av || !jd || !jwhy) goto oom;
  out->states = st, out->nstates = ns, out->ngroups = ngroups;

  for (int i = 0; i < ns; i++) {
    const uint64_t *d = deps_of(&c, f->states.v[i].next);
    RecState *rs = &st[i];
    rs->state = i;
    rs->group = group[i];
    rs->deps = arena_calloc(a, (size_t)ns, sizeof *rs->deps);
    rs->given = arena_calloc(a, (size_t)ns, sizeof *rs->given);
    if (!rs->deps || !rs->given) goto oom;
    for (int j = 0; j < ns; j++)
      if (bit_get(d, j)) {
        rs->deps[rs->ndeps++] = j;
        if (group[j] != group[i]) rs->given[rs->ngiven++] = j;
      }
  }

  for (int gi = 0; gi < ngroups; gi++) {
    memset(gset, 0, (size_t)c.nw * sizeof *gset);
    int gsize = 0, self = 0, first = -1;
    for (int i = 0; i < ns; i++)
      if (group[i] == gi) {
        gset[i / 64] |= (uint64_t)1 << (i % 64);
        gsize++;
        if (first < 0) first = i;
      }
    for (int i = 0; i < ns; i++)
      if (group[i] == gi && sets_meet(&c, deps_of(&c, f->states.v[i].next), gset)) self = 1;

    if (!self) { /* one state, reading no earlier value of itself */
      RecState *rs = &st[first];
      rs->cls = REC_MAP;
      rs->reason_loc = f->nodes.v[f->states.v[first].next].loc;
      rs->reason = arena_printf(a, "%s' reads no earlier value of %s", f->states.v[first].name,
                                f->states.v[first].name);
      rs->strategy = REC_STRAT_MAP;
      continue;
    }
    const IrNode *nx = &f->nodes.v[f->states.v[first].next];
    if (gsize == 1 && nx->op == IR_STATE && nx->index == first) {
      RecState *rs = &st[first];
      rs->cls = REC_CARRIED;
      rs->reason_loc = f->states.v[first].loc;
      rs->reason = arena_printf(a, "%s' is %s: it keeps its initial value", f->states.v[first].name,
                                f->states.v[first].name);
      rs->strategy = REC_STRAT_KEEP;
      continue;
    }

    analyse_group(&c, gset, av);
    const AVal *nonlin = NULL;
    int all_aff = 1;
    for (int i = 0; i < ns; i++) {
      if (group[i] != gi) continue;
      const AVal *v = &av[f->states.v[i].next];
      if (!v->aff && !v->trop && !nonlin) nonlin = v;
      if (!v->aff) all_aff = 0;
    }
    if (!nonlin) {
      for (int i = 0; i < ns; i++) {
        if (group[i] != gi) continue;
        RecState *rs = &st[i];
        const AVal *v = &av[f->states.v[i].next];
        if (all_aff) {
          classify_linear(&c, rs, v, gsize);
        } else if (gsize == 1) {
          rs->cls = REC_MAXPLUS;
          rs->reason_loc = f->nodes.v[f->states.v[i].next].loc;
          rs->reason =
              arena_printf(a, "%s' = max(%s + a, b), a and b %s-free, at %s", f->states.v[i].name,
                           f->states.v[i].name, f->states.v[i].name, loc_str(a, rs->reason_loc));
        } else {
          rs->cls = REC_LIN_DENSE;
          rs->reason_loc = f->nodes.v[f->states.v[i].next].loc;
          rs->reason = arena_printf(a, "%s' is linear over (max, +) jointly with its group",
                                    f->states.v[i].name);
          rs->strategy = REC_STRAT_SCAN_MAXPLUS;
          continue;
        }
        rs->strategy = strategy_of(rs->cls);
      }
      continue;
    }

    /* Nonlinear group: every member is solved jointly by Newton. */
    IrType stype = f->states.v[first].type;
    int same = 1;
    for (int i = 0; i < ns; i++)
      if (group[i] == gi && !dims_equal(f->states.v[i].type, stype)) same = 0;
    jacobian(&c, gset, stype, jd, jwhy);
    IrRef dense_at = IR_NONE;
    for (int i = 0; i < ns && dense_at == IR_NONE; i++)
      if (group[i] == gi && jd[f->states.v[i].next] == J_DENSE)
        dense_at = jwhy[f->states.v[i].next];
    const char *coupled_names = NULL;
    for (int i = 0; i < ns; i++) {
      if (group[i] != gi) continue;
      RecState *rs = &st[i];
      const AVal *v = &av[f->states.v[i].next];
      const char *sn = f->states.v[i].name;
      rs->cls = REC_NONLINEAR;
      rs->strategy = REC_STRAT_NEWTON;
      if (!v->aff && !v->trop) {
        rs->reason = why_words(&c, v, sn);
        rs->reason_loc = f->nodes.v[v->why].loc;
      } else {
        coupled_names = NULL;
        for (int j = 0; j < ns; j++)
          if (group[j] == gi && j != i &&
              !(av[f->states.v[j].next].aff || av[f->states.v[j].next].trop))
            coupled_names = coupled_names
                                ? arena_printf(a, "%s, %s", coupled_names, f->states.v[j].name)
                                : f->states.v[j].name;
        rs->reason = arena_printf(a,
                                  "%s' is linear in its own group's values but coupled with %s, "
                                  "which is nonlinear",
                                  sn, coupled_names ? coupled_names : "?");
        rs->reason_loc = f->nodes.v[f->states.v[i].next].loc;
      }
      if (!same) {
        rs->jacobian = REC_JAC_DENSE;
        rs->jacobian_reason = "coupled states of different shapes";
      } else if (dense_at != IR_NONE) {
        const IrNode *dn = &f->nodes.v[dense_at];
        int sidx = -1;
        const char *with = NULL;
        for (int k = 0; k < dn->nargs; k++)
          if (jd[dn->args[k]] != J_NONE && sidx < 0)
            sidx = first_in(&c, dn->args[k], gset);
          else if (!with && jd[dn->args[k]] == J_NONE)
            with = param_name(f, dn->args[k]);
        rs->jacobian = REC_JAC_DENSE;
        rs->jacobian_reason = arena_printf(
            a, "%s enters through %s%s%s at %s", sidx >= 0 ? f->states.v[sidx].name : "the state",
            ir_op_info[dn->op].text, with ? " with " : "", with ? with : "", loc_str(a, dn->loc));
      } else if (gsize == 1) {
        rs->jacobian = REC_JAC_DIAG;
        rs->jacobian_reason = arena_printf(a, "%s enters only through elementwise ops", sn);
      } else {
        rs->jacobian = REC_JAC_BLOCK_DIAG;
        rs->block = gsize;
        rs->jacobian_reason = arena_printf(
            a, "the %d states enter only through elementwise ops: %dx%d blocks of diagonals", gsize,
            gsize, gsize);
      }
    }
  }
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
    return "chunked with tree products";
  case REC_STRAT_SCAN_MAXPLUS:
    return "associative scan over (max, +)";
  case REC_STRAT_NEWTON:
    return "newton (DEER / ParaRNN)";
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
      fprintf(out, "    strategy: %s", classify_strategy_name(rs->strategy));
      if (rs->strategy == REC_STRAT_NEWTON) {
        fprintf(out, ", jacobian %s", jacobian_name(rs->jacobian));
        if (rs->jacobian == REC_JAC_BLOCK_DIAG) fprintf(out, " %dx%d", rs->block, rs->block);
        fprintf(out, " (%s); fallback sequential", rs->jacobian_reason);
      }
      fputc('\n', out);
    }
  }
}
