/* rewrite.c - IR-to-IR rewriting before the CPU backend's lowering.
 *
 * The language has no einsum, so a contraction over a leading axis is
 * written as a broadcast product and a sum:
 *
 *   sum(B[0] * x[:, None, None], axis=0)      B [1, I, 3, H], x [I]
 *
 * Evaluated as written, that materializes an [I, 3, H] product per token
 * (and the backend hoists it over all B*T tokens) where one matrix product
 * x @ reshape(B[0], [I, 3*H]) is meant. This pass finds such sums and turns
 * them into MATMUL with RESHAPE/TRANSPOSE around it, and applies a few exact
 * algebraic identities (x*1, reshape of reshape, ...) that the contraction
 * rule leaves behind or that the user wrote. A matrix product with the
 * identity or a rank-one term is distributed (distribute), so that updates
 * written as the papers write them, S (I - beta k k^T), take the form the
 * classifier recognizes; those are equal in real arithmetic, not bit for bit.
 *
 * The rules are data, as in tinygrad: a table of patterns over one node and
 * its operands, each with the operand that becomes the result (RULES below),
 * plus one rule whose result is derived from the shapes (contract). Nodes are
 * rebuilt in order into a fresh function through node(), which tries the
 * rules on every node it is asked to build, including the nodes a rule
 * builds, so chains such as reshape(reshape(reshape(x))) fold at once. Dead
 * nodes are then dropped, and the whole is repeated until nothing fires.
 *
 * The rewritten module is a copy: the source module is left as it is, since
 * the interpreter keeps running it as the oracle. Function indices, dims,
 * parameters, inputs, states and outputs keep their order, so a binding of
 * the source module serves the copy.
 */
#include "passes/passes.h"

#include <string.h>

/* ---- rules as data ---------------------------------------------------------- */

/* What an operand of the matched node must be. */
typedef enum {
  PAT_ANY,       /* anything */
  PAT_ZERO,      /* the real constant 0, or a broadcast of it */
  PAT_ONE,       /* the real constant 1, or a broadcast of it */
  PAT_SAME_OP,   /* a node with the matched node's op (its operand is "inner") */
  PAT_UNIT_AXIS, /* an operand whose size along the node's axis is the constant 1 */
} Pattern;

/* What the matched node becomes. The result must have the node's type
 * exactly; where the kept value has a smaller shape of the same element
 * type (x * 1 with a broadcast 1), RULE_MAY_BROADCAST allows a BROADCAST to
 * the node's type, which is what numpy broadcasting did. */
typedef enum {
  OUT_ARG0,    /* operand 0 */
  OUT_ARG1,    /* operand 1 */
  OUT_INNER,   /* the operand of operand 0 */
  OUT_REBUILD, /* the node's own op, to the node's type, applied to the operand of operand 0 */
  OUT_RESHAPE, /* operand 0 reshaped to the node's type */
} Outcome;

enum { RULE_MAY_BROADCAST = 1 };

typedef struct Rule {
  const char *text; /* the identity, for reading and for the report */
  IrOp op;
  Pattern arg[2];
  Outcome out;
  unsigned flags;
} Rule;

/* x + 0 -> x changes -0 + 0 = +0 into -0: equal values, so it is kept.
 * x * 1, x - 0 and x / 1 are exact in IEEE arithmetic, NaN and inf included. */
static const Rule RULES[] = {
    {"x * 1 -> x", IR_MUL, {PAT_ANY, PAT_ONE}, OUT_ARG0, RULE_MAY_BROADCAST},
    {"1 * x -> x", IR_MUL, {PAT_ONE, PAT_ANY}, OUT_ARG1, RULE_MAY_BROADCAST},
    {"x + 0 -> x", IR_ADD, {PAT_ANY, PAT_ZERO}, OUT_ARG0, RULE_MAY_BROADCAST},
    {"0 + x -> x", IR_ADD, {PAT_ZERO, PAT_ANY}, OUT_ARG1, RULE_MAY_BROADCAST},
    {"x - 0 -> x", IR_SUB, {PAT_ANY, PAT_ZERO}, OUT_ARG0, RULE_MAY_BROADCAST},
    {"x / 1 -> x", IR_DIV, {PAT_ANY, PAT_ONE}, OUT_ARG0, RULE_MAY_BROADCAST},
    {"neg(neg(x)) -> x", IR_NEG, {PAT_SAME_OP}, OUT_INNER, 0},
    {"transpose(transpose(x)) -> x", IR_TRANSPOSE, {PAT_SAME_OP}, OUT_INNER, 0},
    {"reshape(reshape(x)) -> reshape(x)", IR_RESHAPE, {PAT_SAME_OP}, OUT_REBUILD, 0},
    {"broadcast(broadcast(x)) -> broadcast(x)", IR_BROADCAST, {PAT_SAME_OP}, OUT_REBUILD, 0},
    {"reshape(x) to x's own type -> x", IR_RESHAPE, {PAT_ANY}, OUT_ARG0, 0},
    {"broadcast(x) to x's own type -> x", IR_BROADCAST, {PAT_ANY}, OUT_ARG0, 0},
    {"index of an axis of size 1 -> reshape", IR_INDEX, {PAT_UNIT_AXIS}, OUT_RESHAPE, 0},
};

/* ---- the rewriter ------------------------------------------------------------- */

typedef struct Rw {
  Arena *a;
  DiagEngine *de;
  IrFunc *dst;
  int fired; /* rules applied in this round */
  int failed;
  unsigned char *kind; /* kinds(): what each of dst's first nkind nodes reads */
  int nkind;
} Rw;

static IrNode *dnode(Rw *w, IrRef r) {
  return &w->dst->nodes.v[r];
}

static int is_const_one(DimExpr d) {
  int64_t v;
  return dim_is_const(d, &v) && v == 1;
}

/* The real scalar constant c, seen through broadcasts. */
static int is_real_const(Rw *w, IrRef r, double c) {
  while (dnode(w, r)->op == IR_BROADCAST) r = dnode(w, r)->args[0];
  const IrNode *n = dnode(w, r);
  return n->op == IR_CONST && n->type.elem == IR_REAL && n->cval == c;
}

/* Builds a node in dst after type inference. A type error is not reported:
 * a rule whose result does not type-check simply does not apply (quiet = 1);
 * for the copy of a source node it is an internal error. */
static IrRef emit(Rw *w, const IrNode *proto, int nargs, const IrRef *args, int quiet) {
  IrNode p = *proto;
  char msg[256];
  if (ir_infer_type(w->dst, w->a, &p, nargs, args, &p.type, msg, sizeof msg)) {
    if (!quiet) {
      diag_internal(w->de, "rewrite", "%s: %s", w->dst->name, msg);
      w->failed = 1;
    }
    return IR_NONE;
  }
  IrRef r = ir_emit(w->dst, w->a, &p, nargs, args);
  if (r == IR_NONE) {
    diag_error(w->de, proto->loc, "out of memory");
    w->failed = 1;
  }
  return r;
}

static IrRef node(Rw *w, const IrNode *proto, int nargs, const IrRef *args);
static int distribute(Rw *w, const IrNode *proto, const IrRef *args, IrRef *out);
static int part_inside(Rw *w, const IrNode *proto, const IrRef *args, IrRef *out);
static IrRef binop(Rw *w, IrOp op, IrRef a, IrRef b, SrcLoc loc);

/* A data-movement node (RESHAPE, BROADCAST, TRANSPOSE) of x at loc. For
 * TRANSPOSE the type is inferred and `to` is ignored. */
static IrRef move(Rw *w, IrOp op, IrRef x, IrType to, SrcLoc loc) {
  IrNode p = {0};
  p.op = op;
  p.loc = loc;
  p.type = to;
  return node(w, &p, 1, &x);
}

/* The kept value v must stand for a node of type t: as itself, or broadcast. */
static IrRef fit(Rw *w, IrRef v, IrType t, unsigned flags, SrcLoc loc) {
  if (v == IR_NONE) return IR_NONE;
  IrType vt = dnode(w, v)->type;
  if (ir_type_eq(vt, t)) return v;
  if (!(flags & RULE_MAY_BROADCAST) || vt.elem != t.elem) return IR_NONE;
  IrNode p = {0};
  p.op = IR_BROADCAST;
  p.loc = loc;
  p.type = t;
  return emit(w, &p, 1, &v, 1); /* does not type-check: no rule */
}

static int matches(Rw *w, const IrNode *proto, Pattern pat, IrRef x) {
  const IrNode *n = dnode(w, x);
  switch (pat) {
  case PAT_ANY:
    return 1;
  case PAT_ZERO:
    return is_real_const(w, x, 0.0);
  case PAT_ONE:
    return is_real_const(w, x, 1.0);
  case PAT_SAME_OP:
    return n->op == proto->op && n->nargs == 1;
  case PAT_UNIT_AXIS: {
    int64_t start;
    return proto->axis >= 0 && proto->axis < n->type.rank &&
           is_const_one(n->type.dims[proto->axis]) && dim_is_const(proto->start, &start) &&
           start == 0;
  }
  }
  return 0;
}

/* Tries the table on the node (op, attributes and type in proto) with
 * operands args in dst; 1 and *out if one applied. */
static int apply_rules(Rw *w, const IrNode *proto, int nargs, const IrRef *args, IrRef *out) {
  for (size_t i = 0; i < sizeof RULES / sizeof RULES[0]; i++) {
    const Rule *rl = &RULES[i];
    int arity = ir_op_info[rl->op].arity;
    if (rl->op != proto->op || arity != nargs) continue;
    int ok = 1;
    for (int j = 0; j < arity && ok; j++) ok = matches(w, proto, rl->arg[j], args[j]);
    if (!ok) continue;
    IrRef r = IR_NONE;
    switch (rl->out) {
    case OUT_ARG0:
    case OUT_ARG1:
      r = fit(w, args[rl->out == OUT_ARG1], proto->type, rl->flags, proto->loc);
      break;
    case OUT_INNER:
      r = fit(w, dnode(w, args[0])->args[0], proto->type, rl->flags, proto->loc);
      break;
    case OUT_REBUILD:
      r = move(w, proto->op, dnode(w, args[0])->args[0], proto->type, proto->loc);
      break;
    case OUT_RESHAPE:
      r = move(w, IR_RESHAPE, args[0], proto->type, proto->loc);
      break;
    }
    if (w->failed) return 0;
    if (r != IR_NONE) {
      w->fired++;
      *out = r;
      return 1;
    }
  }
  return 0;
}

/* Builds (or finds) a node in dst, trying the rules first. The proto's type
 * is the node's type as the source had it (or, for nodes a rule builds, the
 * target type of RESHAPE/BROADCAST); every rule keeps it exactly. */
static IrRef node(Rw *w, const IrNode *proto, int nargs, const IrRef *args) {
  IrRef r;
  if (proto->op != IR_CALL && proto->op != IR_RESULT && !(ir_op_info[proto->op].flags & IRF_LEAF)) {
    IrNode p = *proto;
    /* The type the rules must keep: inferred, since a rule-built proto
     * carries only data-movement targets. */
    if (ir_infer_type(w->dst, w->a, &p, nargs, args, &p.type, NULL, 0) == 0 &&
        (apply_rules(w, &p, nargs, args, &r) ||
         (p.op == IR_MATMUL && nargs == 2 && distribute(w, &p, args, &r)) ||
         ((p.op == IR_RE || p.op == IR_IM) && nargs == 1 && part_inside(w, &p, args, &r))))
      return r;
    if (w->failed) return IR_NONE;
  }
  return emit(w, proto, nargs, args, 1);
}

/* ---- contraction: sum over the shared axis of a broadcast product ---------- */

/* The operand behind any BROADCASTs: multiplying by a broadcast value is
 * multiplying by the value under numpy's rules, so the structure of the
 * product is read off the unbroadcast operand. */
static IrRef unbroadcast(Rw *w, IrRef r) {
  while (dnode(w, r)->op == IR_BROADCAST) r = dnode(w, r)->args[0];
  return r;
}

/* Whether operand type t, right-aligned in a product of rank `rank`, spans
 * product axis i of size d (has the full size there rather than 1 or nothing). */
static int spans(IrType t, int rank, int i, DimExpr d) {
  int j = i - (rank - t.rank);
  return j >= 0 && dim_eq(t.dims[j], d);
}

/* The product of dims[i] over the axes with role[i] == which. */
static int dims_product(const IrType *s, const int *role, int which, DimExpr *out) {
  DimExpr p = dim_const(1);
  for (int i = 0; i < s->rank; i++)
    if (role[i] == which && dim_mul(p, s->dims[i], &p)) return -1;
  *out = p;
  return 0;
}

/* Where the contracted axis k lies among operand `which`'s own axes:
 * -1 before all of them, 1 after all, 0 in between (no matrix layout). */
static int k_side(const int *role, int rank, int k, int which) {
  int before = 0, after = 0;
  for (int i = 0; i < rank; i++)
    if (role[i] == which) {
      if (i < k)
        before++;
      else
        after++;
    }
  if (before && after) return 0;
  return before ? 1 : -1;
}

/* Operand x as a matrix [rows, cols] (or the vector [cols] when rows is
 * empty); its data is laid out [k_first ? cols : rows, ...] so a transpose
 * may be needed. */
static IrRef as_matrix(Rw *w, IrRef x, DimExpr outer, int has_outer, DimExpr kdim, int k_first,
                       int k_is_row, SrcLoc loc) {
  IrElem elem = dnode(w, x)->type.elem;
  DimExpr d[2];
  if (!has_outer) {
    d[0] = kdim;
    return move(w, IR_RESHAPE, x, ir_type(w->a, elem, 1, d), loc);
  }
  /* Stored order: k first gives [K, outer], else [outer, K]. */
  d[0] = k_first ? kdim : outer;
  d[1] = k_first ? outer : kdim;
  IrRef m = move(w, IR_RESHAPE, x, ir_type(w->a, elem, 2, d), loc);
  if (m == IR_NONE || k_first == k_is_row) return m;
  return move(w, IR_TRANSPOSE, m, (IrType){0}, loc);
}

/* sum(a * b, axis=k) is a matrix product when, among the product's axes of
 * size other than 1, both operands span k, and every other axis is spanned
 * by exactly one of them: a's own axes M, b's own axes N. Then
 *   sum_k a[m, k] b[k, n] = (A @ B)[m, n],  A = a as [M, K], B = b as [K, N]
 * where M, N, K are the products of the sizes. The axes of M and N must each
 * be contiguous in the result (all of one operand's before the other's)
 * and k must lie before or after all of an operand's own axes, so that
 * every operand is a matrix by reshape and at most one transpose; otherwise
 * (and for batched products, where some axis is spanned by both) the sum
 * stays. With no M and no N it is a dot product, which also stays. */
static int contract(Rw *w, const IrNode *sum, IrRef prod, IrRef *out) {
  const IrNode *mul = dnode(w, prod);
  if (sum->op != IR_SUM || mul->op != IR_MUL || sum->axis < 0) return 0;
  IrType s = mul->type;
  int rank = s.rank, k = sum->axis;
  IrRef opnd[2] = {unbroadcast(w, mul->args[0]), unbroadcast(w, mul->args[1])};
  IrType ot[2] = {dnode(w, opnd[0])->type, dnode(w, opnd[1])->type};
  /* role: 0 size 1 (ignored), 1 only operand 0, 2 only operand 1, 3 both */
  int role[SEQ_MAX_RANK], count[4] = {0};
  for (int i = 0; i < rank; i++) {
    role[i] = spans(ot[0], rank, i, s.dims[i]) | spans(ot[1], rank, i, s.dims[i]) << 1;
    if (is_const_one(s.dims[i])) role[i] = 0;
    /* Both operands broadcast along an axis of size other than 1 (two
     * BROADCAST nodes stretched them): the sum would replicate values. */
    else if (role[i] == 0)
      return 0;
    if (i != k) count[role[i]]++;
  }
  if (role[k] != 3 || count[3] > 0 || (count[1] == 0 && count[2] == 0)) return 0;

  /* Choose the left operand (its own axes come first in the result). */
  int left;
  int side[2] = {k_side(role, rank, k, 1), k_side(role, rank, k, 2)};
  if (count[1] && count[2]) {
    int last1 = -1, first2 = rank;
    for (int i = 0; i < rank; i++) {
      if (role[i] == 1) last1 = i;
      if (role[i] == 2 && first2 == rank) first2 = i;
    }
    left = last1 < first2 ? 0 : 1;
    for (int i = 0, seen_right = 0; i < rank; i++) {
      if (role[i] == 2 - left) seen_right = 1;
      if (role[i] == 1 + left && seen_right) return 0; /* interleaved */
    }
  } else {
    /* One operand is a vector along k: put the matrix where its layout
     * needs no transpose ([M, K] on the left, [K, N] on the right). */
    int mat = count[1] ? 0 : 1;
    left = side[mat] == 1 ? mat : 1 - mat;
  }
  int right = 1 - left;
  if (side[left] == 0 || side[right] == 0) return 0; /* k amid an operand's axes */

  DimExpr kdim = s.dims[k], m, n;
  if (dims_product(&s, role, 1 + left, &m) || dims_product(&s, role, 1 + right, &n)) return 0;
  IrRef A = as_matrix(w, opnd[left], m, count[1 + left] > 0, kdim, side[left] == -1, 0, sum->loc);
  if (A == IR_NONE) return 0;
  IrRef B =
      as_matrix(w, opnd[right], n, count[1 + right] > 0, kdim, side[right] == -1, 1, sum->loc);
  if (B == IR_NONE) return 0;
  IrNode p = {0};
  p.op = IR_MATMUL;
  p.loc = sum->loc;
  IrRef ab[2] = {A, B};
  IrRef mm = node(w, &p, 2, ab);
  if (mm == IR_NONE) return 0;
  IrRef r = move(w, IR_RESHAPE, mm, sum->type, sum->loc);
  if (r == IR_NONE) return 0;
  w->fired++;
  *out = r;
  return 1;
}

/* ---- a recurrent product against a time-invariant matrix, by columns ------- */

/* Per node of dst: 1 if it reads a STATE (through its operands), 2 if it
 * reads no STATE, INPUT, layer or sequence op (time-invariant: the schedule
 * computes it once per call), 0 otherwise. dst only grows, so what is known
 * stays true and the table is extended on demand. */
static unsigned char *kinds(Rw *w) {
  int n = w->dst->nodes.n;
  if (n > w->nkind) {
    unsigned char *k = arena_calloc(w->a, (size_t)n + 1, 1);
    if (!k) return NULL;
    if (w->nkind) memcpy(k, w->kind, (size_t)w->nkind);
    for (IrRef r = w->nkind; r < n; r++) {
      const IrNode *nd = dnode(w, r);
      int st = nd->op == IR_STATE;
      int inv = !st && nd->op != IR_INPUT && nd->op != IR_CALL && nd->op != IR_RESULT &&
                !(ir_op_info[nd->op].flags & IRF_SEQ);
      for (int j = 0; j < nd->nargs; j++) {
        st |= k[nd->args[j]] == 1;
        inv = inv && k[nd->args[j]] == 2;
      }
      k[r] = (unsigned char)(st ? 1 : inv ? 2 : 0);
    }
    w->kind = k;
    w->nkind = n;
  }
  return w->kind;
}

/* sum(W * v, axis=-1) with W [..., I, J] time-invariant and v [..., 1, J]
 * (or [J]) read from the state, a matrix-vector product per leading index
 * that contract leaves (LSSL's dA @ s, [H, N, N] by [H, N]), becomes
 *   sum(transpose(W) * v', axis=-2),  v' = v as [..., J, 1]:
 * the same terms in the same order. Made row by row, each output is a sum
 * along a matrix row, a reduction across vector lanes per output; made by
 * columns, the outputs of a row are the lanes and each term is one
 * multiply-add of a column of W^T, contiguous, with an element of v
 * (codegen/rows.c, emit_reduce_lanes; on the GPU, neighbouring threads then
 * read neighbouring addresses). The transpose is time-invariant too, so it is
 * made once per call. */
static int by_columns(Rw *w, const IrNode *sum, IrRef prod, IrRef *out) {
  const IrNode *mul = dnode(w, prod);
  IrType s = mul->type;
  int rank = s.rank;
  if (sum->op != IR_SUM || mul->op != IR_MUL || rank < 2 || sum->axis != rank - 1 ||
      s.elem != IR_REAL || is_const_one(s.dims[rank - 2]) || is_const_one(s.dims[rank - 1]))
    return 0;
  unsigned char *k = kinds(w);
  if (!k) return 0;
  for (int m = 0; m < 2; m++) {
    IrRef W = mul->args[m], v = mul->args[1 - m];
    IrType wt = dnode(w, W)->type, vt = dnode(w, v)->type;
    if (k[W] != 2 || k[v] != 1 || wt.rank < 2 || vt.rank < 1 ||
        !dim_eq(wt.dims[wt.rank - 2], s.dims[rank - 2]) ||
        !dim_eq(wt.dims[wt.rank - 1], s.dims[rank - 1]) ||
        !dim_eq(vt.dims[vt.rank - 1], s.dims[rank - 1]) ||
        (vt.rank >= 2 && !is_const_one(vt.dims[vt.rank - 2])))
      continue;
    /* v' = v with its last axis moved before an axis of 1. */
    DimExpr d[SEQ_MAX_RANK];
    int vr = vt.rank >= 2 ? vt.rank : 2;
    if (vr > SEQ_MAX_RANK) continue;
    for (int i = 0; i < vr - 2; i++) d[i] = vt.dims[i];
    d[vr - 2] = vt.dims[vt.rank - 1];
    d[vr - 1] = dim_const(1);
    SrcLoc loc = sum->loc;
    IrRef wT = move(w, IR_TRANSPOSE, W, (IrType){0}, loc);
    IrRef v2 = wT != IR_NONE ? move(w, IR_RESHAPE, v, ir_type(w->a, vt.elem, vr, d), loc) : IR_NONE;
    IrRef p = v2 != IR_NONE ? binop(w, IR_MUL, wT, v2, loc) : IR_NONE;
    if (p == IR_NONE) return 0;
    IrNode sp = *sum;
    sp.axis = dnode(w, p)->type.rank - 2;
    IrRef r = node(w, &sp, 1, &p);
    if (r == IR_NONE || !ir_type_eq(dnode(w, r)->type, sum->type)) return 0;
    w->fired++;
    *out = r;
    return 1;
  }
  return 0;
}

/* ---- products with the identity: the papers' S (I - beta k k^T) ------------- */

/* A value of one element ([] or all axes 1), seen through broadcasts. */
static int is_scalar(Rw *w, IrRef r) {
  IrType t = dnode(w, unbroadcast(w, r))->type;
  for (int i = 0; i < t.rank; i++)
    if (!is_const_one(t.dims[i])) return 0;
  return 1;
}

static IrRef binop(Rw *w, IrOp op, IrRef a, IrRef b, SrcLoc loc) {
  IrNode p = {0};
  p.op = op;
  p.loc = loc;
  IrRef ab[2] = {a, b};
  return node(w, &p, 2, ab);
}

/* x @ y for matrices x, y, distributed over the identity and rank-one
 * terms of y, so that the delta rule written as the papers write it,
 * S' = S (I - beta k k^T) + beta v k^T, reads as the form the classifier
 * knows (S - beta (S k) k^T + ...):
 *   x @ I                 -> x
 *   x @ (I - Y)           -> x - x @ Y
 *   x @ outer(a, b)       -> outer(x @ a, b)
 *   x @ (s * outer(a, b)) -> s * outer(x @ a, b)      (s one element)
 * Equal in real arithmetic; in floating point they round differently (as
 * every parallel form does), and x @ I also drops the NaN that an infinity
 * in x times a 0 of I would make. */
static int distribute(Rw *w, const IrNode *proto, const IrRef *args, IrRef *out) {
  IrRef x = args[0], y = args[1];
  const IrNode *yn = dnode(w, y);
  if (dnode(w, x)->type.rank != 2 || yn->type.rank != 2 || dnode(w, x)->type.elem != IR_REAL ||
      yn->type.elem != IR_REAL)
    return 0;
  SrcLoc loc = proto->loc;
  IrRef r = IR_NONE;
  if (yn->op == IR_EYE) {
    r = x;
  } else if (yn->op == IR_SUB && dnode(w, yn->args[0])->op == IR_EYE &&
             ir_type_eq(dnode(w, yn->args[1])->type, yn->type)) {
    IrRef xy = binop(w, IR_MATMUL, x, yn->args[1], loc);
    if (xy != IR_NONE) r = binop(w, IR_SUB, x, xy, loc);
  } else if (yn->op == IR_OUTER) {
    IrRef xa = binop(w, IR_MATMUL, x, yn->args[0], loc);
    if (xa != IR_NONE) r = binop(w, IR_OUTER, xa, yn->args[1], loc);
  } else if (yn->op == IR_MUL && dnode(w, yn->args[1])->op == IR_OUTER &&
             is_scalar(w, yn->args[0])) {
    const IrNode *o = dnode(w, yn->args[1]);
    IrRef xa = binop(w, IR_MATMUL, x, o->args[0], loc);
    IrRef xo = xa != IR_NONE ? binop(w, IR_OUTER, xa, o->args[1], loc) : IR_NONE;
    if (xo != IR_NONE) r = binop(w, IR_MUL, yn->args[0], xo, loc);
  }
  if (r == IR_NONE || !ir_type_eq(dnode(w, r)->type, proto->type)) return 0;
  w->fired++;
  *out = r;
  return 1;
}

/* The real or imaginary part of a sum (or mean) of complex values is the
 * sum of their parts: re(sum(x)) -> sum(re(x)), bit for bit, since complex
 * addition adds the parts apart. S4D's readout, 2 re(sum(C s', axis=-1)),
 * then sums one real value per element, and the imaginary half of C s'
 * that nothing reads is left for the backend to drop. */
static int part_inside(Rw *w, const IrNode *proto, const IrRef *args, IrRef *out) {
  const IrNode *sn = dnode(w, args[0]);
  if (sn->op != IR_SUM && sn->op != IR_MEAN) return 0;
  IrNode part = {0};
  part.op = proto->op;
  part.loc = proto->loc;
  IrNode sum = *sn;
  IrRef inner = sn->args[0]; /* node() may move dst's nodes */
  IrRef x = node(w, &part, 1, &inner);
  IrRef r = x != IR_NONE ? node(w, &sum, 1, &x) : IR_NONE;
  if (r == IR_NONE || !ir_type_eq(dnode(w, r)->type, proto->type)) return 0;
  w->fired++;
  *out = r;
  return 1;
}

/* ---- one round over a function ----------------------------------------------- */

/* Uses of every node of f: operands, states' init and next, outputs. A CALL
 * threads its layer's states, so it counts as used even when its results
 * are not. */
static int *count_uses(Arena *a, const IrFunc *f) {
  int *uses = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *uses);
  if (!uses) return NULL;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *n = &f->nodes.v[r];
    for (int j = 0; j < n->nargs; j++) uses[n->args[j]]++;
    if (n->op == IR_CALL) uses[r]++;
  }
  for (int i = 0; i < f->states.n; i++) {
    uses[f->states.v[i].init]++;
    uses[f->states.v[i].next]++;
  }
  for (int i = 0; i < f->outputs.n; i++) uses[f->outputs.v[i].value]++;
  return uses;
}

/* A function with src's signature and no nodes; its states still point into src. */
static IrFunc *copy_signature(IrModule *m, const IrFunc *src) {
  IrFunc *f = ir_func_new(m, src->name, src->kind, src->loc);
  if (!f) return NULL;
  ir_func_share_header(f, src);
  f->inputs = src->inputs;
  f->layers = src->layers;
  /* Shared with src, so never grown in place. */
  f->inputs.cap = f->inputs.n;
  f->layers.cap = f->layers.n;
  /* States and outputs name nodes, so they get their own arrays. */
  for (int i = 0; i < src->states.n; i++)
    if (vec_push(m->arena, &f->states, src->states.v[i])) return NULL;
  for (int i = 0; i < src->outputs.n; i++)
    if (vec_push(m->arena, &f->outputs, src->outputs.v[i])) return NULL;
  return f;
}

/* Copies src into dst (a fresh copy_signature of it): with rules when
 * `rewrite`, else only the nodes that are used (dead code removal). */
static int copy_nodes(Rw *w, const IrFunc *src, int rewrite) {
  IrRef *map = arena_calloc(w->a, (size_t)src->nodes.n + 1, sizeof *map);
  int *uses = count_uses(w->a, src);
  IrRef *args = arena_calloc(w->a, 64, sizeof *args);
  int args_cap = 64;
  if (!map || !uses || !args) {
    diag_error(w->de, src->loc, "out of memory");
    return -1;
  }
  /* Live nodes, walking back from the roots (operands precede users). */
  char *live = arena_calloc(w->a, (size_t)src->nodes.n + 1, 1);
  if (!live) {
    diag_error(w->de, src->loc, "out of memory");
    return -1;
  }
  for (IrRef r = src->nodes.n - 1; r >= 0; r--) {
    const IrNode *n = &src->nodes.v[r];
    if (n->op == IR_CALL) live[r] = 1;
    for (int i = 0; i < src->states.n; i++)
      if (src->states.v[i].init == r || src->states.v[i].next == r) live[r] = 1;
    for (int i = 0; i < src->outputs.n; i++)
      if (src->outputs.v[i].value == r) live[r] = 1;
    if (live[r])
      for (int j = 0; j < n->nargs; j++) live[n->args[j]] = 1;
  }
  for (IrRef r = 0; r < src->nodes.n; r++) {
    map[r] = IR_NONE;
    if (!live[r]) continue;
    const IrNode *n = &src->nodes.v[r];
    if (n->nargs > args_cap) {
      args_cap = n->nargs;
      args = arena_calloc(w->a, (size_t)args_cap, sizeof *args);
      if (!args) {
        diag_error(w->de, src->loc, "out of memory");
        return -1;
      }
    }
    for (int j = 0; j < n->nargs; j++) args[j] = map[n->args[j]];
    IrRef out = IR_NONE;
    /* The contraction rule needs the product to have no other user, or the
     * product would be computed anyway and the matrix product on top. */
    if (rewrite && n->op == IR_SUM && uses[n->args[0]] == 1 &&
        (contract(w, n, args[0], &out) || by_columns(w, n, args[0], &out))) {
      map[r] = out;
      continue;
    }
    if (w->failed) return -1;
    map[r] = rewrite ? node(w, n, n->nargs, args) : IR_NONE;
    if (map[r] == IR_NONE && !w->failed) map[r] = emit(w, n, n->nargs, args, 0);
    if (map[r] == IR_NONE) return -1;
    /* Every rule keeps the type: anything else is a bug in a rule. */
    if (!ir_type_eq(dnode(w, map[r])->type, n->type)) {
      diag_internal(w->de, "rewrite", "%s: node v%d changed type", src->name, (int)r);
      return -1;
    }
  }
  for (int i = 0; i < w->dst->states.n; i++) {
    IrState *s = &w->dst->states.v[i];
    s->init = map[s->init];
    s->next = map[s->next];
  }
  for (int i = 0; i < w->dst->outputs.n; i++)
    w->dst->outputs.v[i].value = map[w->dst->outputs.v[i].value];
  return 0;
}

/* Rounds of rewriting and dead code removal until no rule fires (a round
 * count bounds it: every rule shrinks the graph, so a few suffice). */
int rewrite_module(Arena *a, const IrModule *m, IrModule **out, DiagEngine *de) {
  *out = NULL;
  const IrModule *cur = m;
  for (int round = 0; round < 8; round++) {
    int fired = 0;
    IrModule *rw = ir_module_new(a), *dce = ir_module_new(a);
    if (!rw || !dce) {
      diag_error(de, (SrcLoc){0}, "out of memory");
      return -1;
    }
    rw->entry = dce->entry = cur->entry;
    for (int i = 0; i < cur->funcs.n; i++) {
      const IrFunc *src = cur->funcs.v[i];
      Rw w = {a, de, copy_signature(rw, src), 0, 0, NULL, 0};
      if (!w.dst) {
        diag_error(de, src->loc, "out of memory");
        return -1;
      }
      if (copy_nodes(&w, src, 1)) return -1;
      Rw d = {a, de, copy_signature(dce, w.dst), 0, 0, NULL, 0};
      if (!d.dst) {
        diag_error(de, src->loc, "out of memory");
        return -1;
      }
      if (copy_nodes(&d, w.dst, 0)) return -1;
      fired += w.fired;
    }
    cur = dce;
    *out = dce;
    if (!fired) break;
  }
  return 0;
}
