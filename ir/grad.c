/* grad.c - reverse-mode derivatives inside one function: `grad(loss, M)`.
 *
 * The derivative of a real scalar node `loss` with respect to a leaf `wrt`
 * (a state entering the step, an input or a param) is built as ordinary IR
 * nodes of the same function, so every later stage (the interpreter, the
 * classifier, the Jacobians of Newton's method, both backends) sees plain
 * arithmetic. The nodes between wrt and loss are walked once in reverse
 * topological order (the node array is one), each accumulating into its
 * operands' adjoints the vector-Jacobian product of its op: the rules below,
 * one case per op, each a few lines of the usual calculus. docs/language.md
 * ("Derivatives") lists what has a rule. An op without one on a path from
 * wrt to loss is an error at that op's location.
 */
#include "ir/ir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Grad {
  IrFunc *f;
  Arena *a;
  DiagEngine *de;
  SrcLoc loc;   /* the grad call: every node built here carries it */
  IrRef lo, hi; /* wrt and loss: only nodes between them can be on a path */
  IrRef *adj;   /* adjoint of node lo + i; IR_NONE: zero so far */
  char *dep;    /* node lo + i depends on wrt */
  int failed;
} Grad;

/* Whether node x depends on wrt (nodes outside [lo, hi] do not). */
static int on_path(const Grad *g, IrRef x) {
  return x >= g->lo && x <= g->hi && g->dep[x - g->lo];
}

static IrType ty(const Grad *g, IrRef r) {
  return r >= 0 ? g->f->nodes.v[r].type : ir_scalar(IR_REAL); /* a failed node: g->failed */
}

static IrRef mk(Grad *g, IrOp op, int n, const IrRef *args, const IrNode *attrs) {
  if (g->failed) return IR_NONE;
  for (int i = 0; i < n; i++)
    if (args[i] < 0) return IR_NONE;
  IrNode proto;
  if (attrs)
    proto = *attrs;
  else
    memset(&proto, 0, sizeof proto);
  proto.op = op;
  proto.loc = g->loc;
  char msg[256];
  IrRef r = ir_emit_typed(g->f, g->a, &proto, n, args, msg, sizeof msg);
  if (r == IR_NONE) {
    if (msg[0])
      diag_internal(g->de, "grad", "%s", msg);
    else
      diag_error(g->de, g->loc, "out of memory");
    g->failed = 1;
  }
  return r;
}

static IrRef un(Grad *g, IrOp op, IrRef x) {
  return mk(g, op, 1, &x, NULL);
}

static IrRef bin(Grad *g, IrOp op, IrRef x, IrRef y) {
  IrRef args[2] = {x, y};
  return mk(g, op, 2, args, NULL);
}

static IrRef cst(Grad *g, double v) {
  IrNode attrs = {0};
  attrs.cval = v;
  return mk(g, IR_CONST, 0, NULL, &attrs);
}

static IrRef along(Grad *g, IrOp op, IrRef x, int axis) {
  IrNode attrs = {0};
  attrs.axis = axis;
  return mk(g, op, 1, &x, &attrs);
}

/* x as type t by op (RESHAPE or BROADCAST); x itself where it has t. */
static IrRef as(Grad *g, IrOp op, IrRef x, IrType t) {
  if (x < 0 || ir_type_eq(ty(g, x), t)) return x;
  IrNode attrs = {0};
  attrs.type = t;
  return mk(g, op, 1, &x, &attrs);
}

static IrRef zeros(Grad *g, IrType t) {
  return as(g, IR_BROADCAST, cst(g, 0.0), t);
}

/* t with axis `axis` of size d. */
static IrType with_axis(Grad *g, IrType t, int axis, DimExpr d) {
  DimExpr dims[SEQ_MAX_RANK];
  memcpy(dims, t.dims, (size_t)t.rank * sizeof *dims);
  dims[axis] = d;
  return ir_type(g->a, t.elem, t.rank, dims);
}

/* A value of x's type reduced over `axis` (or every axis: -1) stretched
 * back to x's type t. */
static IrRef expand(Grad *g, IrRef r, IrType t, int axis) {
  if (axis >= 0) r = as(g, IR_RESHAPE, r, with_axis(g, t, axis, dim_const(1)));
  return as(g, IR_BROADCAST, r, t);
}

/* The reduction over the last axis of x, kept as an axis of size 1 (so it
 * broadcasts against x). */
static IrRef sum_last(Grad *g, IrRef x) {
  if (x < 0) return IR_NONE;
  IrType t = ty(g, x);
  return as(g, IR_RESHAPE, along(g, IR_SUM, x, t.rank - 1),
            with_axis(g, t, t.rank - 1, dim_const(1)));
}

static IrRef mean_last(Grad *g, IrRef x) {
  if (x < 0) return IR_NONE;
  IrType t = ty(g, x);
  IrNode attrs = {0};
  attrs.dval = t.dims[t.rank - 1];
  return bin(g, IR_DIV, sum_last(g, x), mk(g, IR_DIMVAL, 0, NULL, &attrs));
}

/* The adjoint of a broadcast operand: gy summed over the axes that
 * broadcasting stretched (those it lacks and those of size 1), as type t. */
static IrRef unbroadcast(Grad *g, IrRef gy, IrType t) {
  if (gy < 0) return gy;
  IrType gt = ty(g, gy);
  for (int ax = gt.rank - 1; ax >= 0; ax--) {
    int xi = t.rank - gt.rank + ax;
    if (xi < 0 || (dim_is_one(t.dims[xi]) && !dim_is_one(gt.dims[ax])))
      gy = along(g, IR_SUM, gy, ax);
  }
  return as(g, IR_RESHAPE, gy, t);
}

/* gy placed at [start, stop) of axis `axis` of a zero value of type t. */
static IrRef pad(Grad *g, IrRef gy, IrType t, int axis, DimExpr start, DimExpr stop) {
  DimExpr rest;
  if (dim_sub(t.dims[axis], stop, &rest)) {
    diag_error(g->de, g->loc, "grad: a slice's bounds are too complex to differentiate");
    g->failed = 1;
    return IR_NONE;
  }
  IrRef parts[3];
  int n = 0;
  if (start.nterms > 0) parts[n++] = zeros(g, with_axis(g, t, axis, start));
  parts[n++] = gy;
  if (rest.nterms > 0) parts[n++] = zeros(g, with_axis(g, t, axis, rest));
  if (n == 1) return gy;
  IrNode attrs = {0};
  attrs.axis = axis;
  return mk(g, IR_CONCAT, n, parts, &attrs);
}

/* Adds contribution c (of x's type) to x's adjoint, where x depends on wrt. */
static void acc(Grad *g, IrRef x, IrRef c) {
  if (!on_path(g, x) || g->failed) return;
  if (c < 0) {
    g->failed = 1;
    return;
  }
  IrRef *slot = &g->adj[x - g->lo];
  *slot = *slot == IR_NONE ? c : bin(g, IR_ADD, *slot, c);
}

static int refuse(Grad *g, const IrNode *nd, const char *why) {
  diag_error(g->de, nd->loc, "grad cannot differentiate %s: %s", ir_op_info[nd->op].text, why);
  diag_note(g->de, g->loc, "in this grad");
  g->failed = 1;
  return -1;
}

/* The vector-Jacobian product of node y (adjoint gy) into its operands. */
static int backward(Grad *g, IrRef y, IrRef gy) {
  const IrNode nd = g->f->nodes.v[y];
  const IrRef *x = nd.args;
  IrType t0 = nd.nargs > 0 ? ty(g, x[0]) : ir_scalar(IR_REAL);
  IrRef one = IR_NONE;
  switch (nd.op) {
  case IR_NEG:
    acc(g, x[0], un(g, IR_NEG, gy));
    break;
  case IR_EXP:
    acc(g, x[0], bin(g, IR_MUL, gy, y));
    break;
  case IR_LOG:
    acc(g, x[0], bin(g, IR_DIV, gy, x[0]));
    break;
  case IR_TANH:
    one = cst(g, 1.0);
    acc(g, x[0], bin(g, IR_MUL, gy, bin(g, IR_SUB, one, bin(g, IR_MUL, y, y))));
    break;
  case IR_SIGMOID:
    one = cst(g, 1.0);
    acc(g, x[0], bin(g, IR_MUL, gy, bin(g, IR_MUL, y, bin(g, IR_SUB, one, y))));
    break;
  case IR_LOGSIGMOID:
    acc(g, x[0], bin(g, IR_MUL, gy, un(g, IR_SIGMOID, un(g, IR_NEG, x[0]))));
    break;
  case IR_SOFTPLUS:
    acc(g, x[0], bin(g, IR_MUL, gy, un(g, IR_SIGMOID, x[0])));
    break;
  case IR_RELU:
    acc(g, x[0], bin(g, IR_MUL, gy, bin(g, IR_LT, cst(g, 0.0), x[0])));
    break;
  case IR_SILU: { /* s (1 + x (1 - s)) */
    IrRef s = un(g, IR_SIGMOID, x[0]);
    one = cst(g, 1.0);
    IrRef d = bin(g, IR_MUL, s, bin(g, IR_ADD, one, bin(g, IR_MUL, x[0], bin(g, IR_SUB, one, s))));
    acc(g, x[0], bin(g, IR_MUL, gy, d));
    break;
  }
  case IR_SQRT:
    acc(g, x[0], bin(g, IR_DIV, bin(g, IR_MUL, gy, cst(g, 0.5)), y));
    break;
  case IR_RSQRT: /* -x^(-3/2) / 2 = -y^3 / 2 */
    acc(g, x[0],
        bin(g, IR_MUL, gy, bin(g, IR_MUL, cst(g, -0.5), bin(g, IR_MUL, y, bin(g, IR_MUL, y, y)))));
    break;
  case IR_ABS: {
    IrRef zero = cst(g, 0.0);
    IrRef sign = bin(g, IR_SUB, bin(g, IR_LT, zero, x[0]), bin(g, IR_LT, x[0], zero));
    acc(g, x[0], bin(g, IR_MUL, gy, sign));
    break;
  }
  case IR_SIN:
    acc(g, x[0], bin(g, IR_MUL, gy, un(g, IR_COS, x[0])));
    break;
  case IR_COS:
    acc(g, x[0], un(g, IR_NEG, bin(g, IR_MUL, gy, un(g, IR_SIN, x[0]))));
    break;
  case IR_ADD:
  case IR_SUB:
    if (on_path(g, x[0])) acc(g, x[0], unbroadcast(g, gy, t0));
    if (on_path(g, x[1]))
      acc(g, x[1], unbroadcast(g, nd.op == IR_SUB ? un(g, IR_NEG, gy) : gy, ty(g, x[1])));
    break;
  case IR_MUL:
    if (on_path(g, x[0])) acc(g, x[0], unbroadcast(g, bin(g, IR_MUL, gy, x[1]), t0));
    if (on_path(g, x[1])) acc(g, x[1], unbroadcast(g, bin(g, IR_MUL, gy, x[0]), ty(g, x[1])));
    break;
  case IR_DIV: /* d(a/b) = da/b - y db/b */
    if (on_path(g, x[0])) acc(g, x[0], unbroadcast(g, bin(g, IR_DIV, gy, x[1]), t0));
    if (on_path(g, x[1]))
      acc(g, x[1],
          unbroadcast(g, un(g, IR_NEG, bin(g, IR_DIV, bin(g, IR_MUL, gy, y), x[1])), ty(g, x[1])));
    break;
  case IR_MAX:
  case IR_MIN: { /* to the chosen operand, half to each at a tie (as torch.maximum) */
    IrRef half = cst(g, 0.5);
    IrRef a_wins = nd.op == IR_MAX
                       ? bin(g, IR_ADD, bin(g, IR_LE, x[1], x[0]), bin(g, IR_LT, x[1], x[0]))
                       : bin(g, IR_ADD, bin(g, IR_LE, x[0], x[1]), bin(g, IR_LT, x[0], x[1]));
    IrRef b_wins = nd.op == IR_MAX
                       ? bin(g, IR_ADD, bin(g, IR_LE, x[0], x[1]), bin(g, IR_LT, x[0], x[1]))
                       : bin(g, IR_ADD, bin(g, IR_LE, x[1], x[0]), bin(g, IR_LT, x[1], x[0]));
    if (on_path(g, x[0]))
      acc(g, x[0], unbroadcast(g, bin(g, IR_MUL, gy, bin(g, IR_MUL, half, a_wins)), t0));
    if (on_path(g, x[1]))
      acc(g, x[1], unbroadcast(g, bin(g, IR_MUL, gy, bin(g, IR_MUL, half, b_wins)), ty(g, x[1])));
    break;
  }
  case IR_LT:
  case IR_LE: /* a step function: slope 0 */
    break;
  case IR_POW: /* d(a^b) = b a^(b-1) da + y log(a) db */
    if (on_path(g, x[0])) {
      IrRef d = bin(g, IR_MUL, x[1], bin(g, IR_POW, x[0], bin(g, IR_SUB, x[1], cst(g, 1.0))));
      acc(g, x[0], unbroadcast(g, bin(g, IR_MUL, gy, d), t0));
    }
    if (on_path(g, x[1]))
      acc(g, x[1],
          unbroadcast(g, bin(g, IR_MUL, gy, bin(g, IR_MUL, y, un(g, IR_LOG, x[0]))), ty(g, x[1])));
    break;
  case IR_MATMUL: {
    IrType t1 = ty(g, x[1]);
    int d0 = on_path(g, x[0]), d1 = on_path(g, x[1]);
    if (t0.rank == 2 && t1.rank == 2) { /* A [M,K] @ B [K,N] */
      if (d0) acc(g, x[0], bin(g, IR_MATMUL, gy, un(g, IR_TRANSPOSE, x[1])));
      if (d1) acc(g, x[1], bin(g, IR_MATMUL, un(g, IR_TRANSPOSE, x[0]), gy));
    } else if (t0.rank == 2) { /* A [M,K] @ b [K] */
      if (d0) acc(g, x[0], bin(g, IR_OUTER, gy, x[1]));
      if (d1) acc(g, x[1], bin(g, IR_MATMUL, gy, x[0]));
    } else if (t1.rank == 2) { /* a [K] @ B [K,N] */
      if (d0) acc(g, x[0], bin(g, IR_MATMUL, x[1], gy));
      if (d1) acc(g, x[1], bin(g, IR_OUTER, x[0], gy));
    } else { /* a [K] @ b [K] */
      if (d0) acc(g, x[0], bin(g, IR_MUL, gy, x[1]));
      if (d1) acc(g, x[1], bin(g, IR_MUL, gy, x[0]));
    }
    break;
  }
  case IR_OUTER:
    if (on_path(g, x[0])) acc(g, x[0], bin(g, IR_MATMUL, gy, x[1]));
    if (on_path(g, x[1])) acc(g, x[1], bin(g, IR_MATMUL, x[0], gy));
    break;
  case IR_TRANSPOSE:
    acc(g, x[0], un(g, IR_TRANSPOSE, gy));
    break;
  case IR_INV: { /* d(A^-1) = -Y dA Y: the adjoint is -Y^T gy Y^T */
    if (t0.rank != 2) return refuse(g, &nd, "only of a single matrix, not of a batch of them");
    IrRef yt = un(g, IR_TRANSPOSE, y);
    acc(g, x[0], un(g, IR_NEG, bin(g, IR_MATMUL, bin(g, IR_MATMUL, yt, gy), yt)));
    break;
  }
  case IR_BROADCAST:
    acc(g, x[0], unbroadcast(g, gy, t0));
    break;
  case IR_RESHAPE:
    acc(g, x[0], as(g, IR_RESHAPE, gy, t0));
    break;
  case IR_SLICE:
    acc(g, x[0], pad(g, gy, t0, nd.axis, nd.start, nd.stop));
    break;
  case IR_INDEX: {
    DimExpr stop;
    if (dim_add(nd.start, dim_const(1), &stop)) return refuse(g, &nd, "the index is too complex");
    IrRef unit = as(g, IR_RESHAPE, gy, with_axis(g, t0, nd.axis, dim_const(1)));
    acc(g, x[0], pad(g, unit, t0, nd.axis, nd.start, stop));
    break;
  }
  case IR_CONCAT: {
    DimExpr off = dim_const(0);
    for (int k = 0; k < nd.nargs; k++) {
      DimExpr end;
      if (dim_add(off, ty(g, x[k]).dims[nd.axis], &end))
        return refuse(g, &nd, "the sizes are too complex");
      if (on_path(g, x[k])) {
        IrNode attrs = {0};
        attrs.axis = nd.axis;
        attrs.start = off;
        attrs.stop = end;
        acc(g, x[k], mk(g, IR_SLICE, 1, &gy, &attrs));
      }
      off = end;
    }
    break;
  }
  case IR_SUM:
  case IR_MEAN: {
    IrRef d = expand(g, gy, t0, nd.axis);
    if (nd.op == IR_MEAN) {
      DimExpr n = dim_const(1);
      for (int i = 0; i < t0.rank; i++)
        if ((nd.axis < 0 || i == nd.axis) && dim_mul(n, t0.dims[i], &n))
          return refuse(g, &nd, "the element count is too complex");
      IrNode attrs = {0};
      attrs.dval = n;
      d = bin(g, IR_DIV, d, mk(g, IR_DIMVAL, 0, NULL, &attrs));
    }
    acc(g, x[0], d);
    break;
  }
  case IR_AMAX:
  case IR_AMIN: { /* split evenly among the elements at the extremum, as torch.amax */
    IrRef ext = expand(g, y, t0, nd.axis);
    IrRef hit = bin(g, IR_MUL, bin(g, IR_LE, x[0], ext), bin(g, IR_LE, ext, x[0]));
    IrRef count = expand(g, along(g, IR_SUM, hit, nd.axis), t0, nd.axis);
    acc(g, x[0], bin(g, IR_DIV, bin(g, IR_MUL, expand(g, gy, t0, nd.axis), hit), count));
    break;
  }
  case IR_SOFTMAX: /* y (gy - sum(gy y)) */
    acc(g, x[0], bin(g, IR_MUL, y, bin(g, IR_SUB, gy, sum_last(g, bin(g, IR_MUL, gy, y)))));
    break;
  case IR_L2NORM: { /* (gy - y sum(gy y)) / sqrt(sum(x^2) + eps) */
    IrRef n =
        un(g, IR_SQRT, bin(g, IR_ADD, sum_last(g, bin(g, IR_MUL, x[0], x[0])), cst(g, nd.cval)));
    IrRef d = bin(g, IR_SUB, gy, bin(g, IR_MUL, y, sum_last(g, bin(g, IR_MUL, gy, y))));
    acc(g, x[0], bin(g, IR_DIV, d, n));
    break;
  }
  case IR_RMSNORM:
  case IR_LAYERNORM: {
    /* u = (x - mean) r with r = rsqrt(mean((x - mean)^2) + eps) (rmsnorm: no
     * centring); y = u w + b. dx = r (gu - mean(gu) - u mean(gu u)), gu = gy w,
     * without the mean(gu) term for rmsnorm. */
    IrRef xc = nd.op == IR_LAYERNORM ? bin(g, IR_SUB, x[0], mean_last(g, x[0])) : x[0];
    IrRef r =
        un(g, IR_RSQRT, bin(g, IR_ADD, mean_last(g, bin(g, IR_MUL, xc, xc)), cst(g, nd.cval)));
    IrRef u = bin(g, IR_MUL, xc, r);
    IrRef gu = bin(g, IR_MUL, gy, x[1]);
    IrRef d = bin(g, IR_SUB, gu, bin(g, IR_MUL, u, mean_last(g, bin(g, IR_MUL, gu, u))));
    if (nd.op == IR_LAYERNORM) d = bin(g, IR_SUB, d, mean_last(g, gu));
    if (on_path(g, x[0])) acc(g, x[0], bin(g, IR_MUL, r, d));
    if (on_path(g, x[1])) acc(g, x[1], unbroadcast(g, bin(g, IR_MUL, gy, u), ty(g, x[1])));
    if (nd.op == IR_LAYERNORM && on_path(g, x[2])) acc(g, x[2], unbroadcast(g, gy, ty(g, x[2])));
    break;
  }
  case IR_GELU: { /* Phi(x) + x phi(x); Phi(x) = gelu(x) / x, guarded at x == 0 as (0 + 1/2) / (0 +
                     1) */
    IrRef zero = cst(g, 0.0);
    IrRef z = bin(g, IR_MUL, bin(g, IR_LE, x[0], zero), bin(g, IR_LE, zero, x[0]));
    IrRef Phi =
        bin(g, IR_DIV, bin(g, IR_ADD, y, bin(g, IR_MUL, cst(g, 0.5), z)), bin(g, IR_ADD, x[0], z));
    IrRef e = un(g, IR_EXP, bin(g, IR_MUL, cst(g, -0.5), bin(g, IR_MUL, x[0], x[0])));
    IrRef phi = bin(g, IR_MUL, cst(g, 0.39894228040143267794), e); /* 1/sqrt(2 pi) */
    acc(g, x[0], bin(g, IR_MUL, gy, bin(g, IR_ADD, Phi, bin(g, IR_MUL, x[0], phi))));
    break;
  }
  case IR_GATHER:
    return refuse(g, &nd, "an embedding lookup has no derivative rule");
  case IR_EXPM:
  case IR_DIAG:
    return refuse(g, &nd, "it has no derivative rule");
  default:
    if (ir_op_info[nd.op].flags & IRF_SEQ || nd.op == IR_CALL || nd.op == IR_RESULT ||
        nd.op == IR_CAUSAL_CONV || nd.op == IR_ATTN)
      return refuse(g, &nd, "it is a sequence-level operation");
    return refuse(g, &nd, "it has no derivative rule");
  }
  return g->failed ? -1 : 0;
}

IrRef ir_grad(IrFunc *f, Arena *a, IrRef loss, IrRef wrt, const char *name, SrcLoc loc,
              DiagEngine *de) {
  IrType lt = f->nodes.v[loss].type, wt = f->nodes.v[wrt].type; /* nodes.v moves as it grows */
  if (lt.elem != IR_REAL || lt.rank != 0) {
    char *t = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&t, &len);
    if (out) {
      ir_print_type(out, f, lt);
      fclose(out);
    }
    diag_error(de, loc, "grad needs a real scalar loss (sum it first), not %s",
               t ? t : "this value");
    free(t);
    return IR_NONE;
  }
  if (wt.elem != IR_REAL) {
    diag_error(de, loc, "grad differentiates with respect to real values only");
    return IR_NONE;
  }
  if (wrt > loss) {
    diag_error(de, loc, "the loss does not depend on '%s'", name);
    return IR_NONE;
  }
  size_t n = (size_t)(loss - wrt) + 1;
  Grad g = {f, a, de, loc, wrt, loss, malloc(n * sizeof(IrRef)), calloc(n, 1), 0};
  IrRef out = IR_NONE;
  if (!g.adj || !g.dep) {
    diag_error(de, loc, "out of memory");
    goto done;
  }
  g.dep[0] = 1;
  for (IrRef i = wrt + 1; i <= loss; i++) {
    const IrNode *nd = &f->nodes.v[i];
    for (int k = 0; k < nd->nargs && !g.dep[i - wrt]; k++)
      g.dep[i - wrt] = (char)on_path(&g, nd->args[k]);
    if (g.dep[i - wrt] && nd->type.elem == IR_COMPLEX) {
      diag_error(de, nd->loc, "grad: cannot differentiate through a complex value");
      diag_note(de, loc, "in this grad");
      goto done;
    }
  }
  if (!g.dep[loss - wrt]) {
    diag_error(de, loc, "the loss does not depend on '%s'", name);
    goto done;
  }
  for (size_t i = 0; i < n; i++) g.adj[i] = IR_NONE;
  g.adj[loss - wrt] = cst(&g, 1.0);
  for (IrRef i = loss; i > wrt && !g.failed; i--)
    if (g.dep[i - wrt] && g.adj[i - wrt] != IR_NONE && backward(&g, i, g.adj[i - wrt])) break;
  if (!g.failed) out = g.adj[0] != IR_NONE ? g.adj[0] : zeros(&g, wt);
done:
  free(g.adj);
  free(g.dep);
  return out;
}
