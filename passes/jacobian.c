/* jacobian.c - forward-mode differentiation of a cell's step, IR to IR.
 *
 * Newton-parallel evaluation of a nonlinear recurrence (docs/algorithms.md §6)
 * needs J_t = d next / d state at (state, x_t): applied to vectors for DEER,
 * or only its diagonal for quasi-DEER. Both are built here as new CELL
 * functions of the same module, so the interpreter and the backends run them
 * like any other cell:
 *
 *   jacobian_jvp_cell   "<cell>.jvp": the cell's params and inputs, plus one
 *                       input "d<state>" per state (the tangent entering the
 *                       step); outputs "<state>'" (the primal next values)
 *                       and "d<state>'" = J_t ds (all states jointly). Its
 *                       states are the cell's states with the same next, so a
 *                       run over a sequence follows the primal trajectory.
 *   jacobian_diag_cell  "<cell>.diag": same params, inputs and states;
 *                       outputs "<state>'" and, for every pair of states k, j
 *                       of equal type, "d<k>'/d<j>" = the elementwise
 *                       derivative of next_k[i] by state_j[i] (the 2x2 blocks
 *                       of diagonals of ParaLSTM are the pairs of c and h).
 *                       Only paths that keep elements apart are allowed
 *                       (keeps_diagonal): an op that mixes elements of a
 *                       state (a matrix product, a sum over the state's
 *                       axis, a norm) makes the block non-diagonal, and that
 *                       is a diagnostic, not an approximation.
 *
 * The walk: the nodes that reach a state's next (or init) are copied in
 * order (the primal step); then, in the same order, each node's tangent is
 * built from its operands' tangents by one rule per op (tangent() below, a switch with a case for
 * every op of ops.def). A tangent is IR_NONE when it is known to be zero, so
 * parameters and inputs cost nothing and the result has no dead arithmetic.
 * A tangent always has exactly its node's type (fit()). The diagonal mode is
 * the same walk with the tangent of state j seeded with ones and the other
 * states' tangents zero: for elementwise ops the chain rule on diagonals is
 * the chain rule on tangents, which is why one rule table serves both.
 *
 * The op table has no comparison or select, so kinks use an exact step
 * function built from POW: 0^y is 0 for every y > 0 and 1 for y = 0 (C99
 * pow, IEEE 754), hence step(z) = 1 - 0^relu(z) is 1 exactly where z > 0 and
 * iszero(z) = 0^|z| is 1 exactly where z == 0; a NaN stays a NaN.
 */
#include "passes/passes.h"

#include <string.h>

typedef struct Jac {
  Arena *a;
  DiagEngine *de;
  const IrFunc *src;
  IrFunc *dst;
  const char *what; /* "jvp" or "diag", for messages */
  IrRef *val;       /* src node -> its copy in dst (IR_NONE: not live) */
  IrRef *tan;       /* src node -> its tangent in dst (IR_NONE: zero) */
  char *live;       /* src node reaches a state's next or init */
  int diag;         /* diagonal mode: only elementwise paths */
  int quasi;        /* ... or the diagonal of a dense Jacobian (quasi-Newton; below) */
  char *mixed;      /* quasi: src node's tangent went through a matrix product */
  int seed;         /* diagonal mode: the state whose diagonal is taken */
  int failed;
  SrcLoc loc; /* of the node being differentiated: what emitted nodes carry */
} Jac;

/* ---- building nodes in dst ------------------------------------------------------ */

static IrNode *dn(Jac *J, IrRef r) {
  return &J->dst->nodes.v[r];
}

/* Emits after type inference; a type error here is a bug of a rule. */
static IrRef emit(Jac *J, const IrNode *proto, int nargs, const IrRef *args) {
  if (J->failed) return IR_NONE;
  for (int i = 0; i < nargs; i++)
    if (args[i] == IR_NONE) {
      J->failed = 1;
      return IR_NONE;
    }
  IrNode p = *proto;
  p.loc = J->loc;
  char msg[256];
  if (ir_infer_type(J->dst, J->a, &p, nargs, args, &p.type, msg, sizeof msg)) {
    diag_internal(J->de, "jacobian", "%s of %s: %s: %s", J->what, J->src->name,
                  ir_op_info[p.op].text, msg);
    J->failed = 1;
    return IR_NONE;
  }
  IrRef r = ir_emit(J->dst, J->a, &p, nargs, args);
  if (r == IR_NONE) {
    diag_error(J->de, J->loc, "out of memory");
    J->failed = 1;
  }
  return r;
}

static IrRef op1(Jac *J, IrOp op, IrRef x) {
  IrNode p = {0};
  p.op = op;
  return emit(J, &p, 1, &x);
}

static IrRef op2(Jac *J, IrOp op, IrRef x, IrRef y) {
  IrNode p = {0};
  p.op = op;
  IrRef args[2] = {x, y};
  return emit(J, &p, 2, args);
}

static IrRef cst(Jac *J, double v) {
  IrNode p = {0};
  p.op = IR_CONST;
  p.cval = v;
  return emit(J, &p, 0, NULL);
}

static IrRef to_type(Jac *J, IrOp op, IrRef x, IrType t) {
  if (x != IR_NONE && ir_type_eq(dn(J, x)->type, t)) return x;
  IrNode p = {0};
  p.op = op;
  p.type = t;
  return emit(J, &p, 1, &x);
}

/* The constant c (real, or complex with zero imaginary part) of type t. */
static IrRef filled(Jac *J, IrType t, double c) {
  IrRef v = cst(J, c);
  if (t.elem == IR_COMPLEX) v = op2(J, IR_CPLX, v, cst(J, 0.0));
  return to_type(J, IR_BROADCAST, v, t);
}

/* A tangent made to stand for a node of type t: a real tangent of a complex
 * node gets a zero imaginary part (numpy promotion), and a smaller shape is
 * broadcast (numpy broadcasting did the same to the value). */
static IrRef fit(Jac *J, IrRef v, IrType t) {
  if (v == IR_NONE || J->failed) return v;
  IrType vt = dn(J, v)->type;
  if (vt.elem == IR_REAL && t.elem == IR_COMPLEX) v = op2(J, IR_CPLX, v, cst(J, 0.0));
  return to_type(J, IR_BROADCAST, v, t);
}

/* Sums of tangents where IR_NONE is zero. */
static IrRef tadd(Jac *J, IrRef x, IrRef y) {
  if (x == IR_NONE) return y;
  if (y == IR_NONE) return x;
  return op2(J, IR_ADD, x, y);
}

static IrRef tsub(Jac *J, IrRef x, IrRef y) {
  if (y == IR_NONE) return x;
  if (x == IR_NONE) return op1(J, IR_NEG, y);
  return op2(J, IR_SUB, x, y);
}

/* coefficient * tangent (either operand order is the same product). */
static IrRef tmul(Jac *J, IrRef coef, IrRef t) {
  return t == IR_NONE ? IR_NONE : op2(J, IR_MUL, coef, t);
}

/* 1 where z > 0, else 0 (z real). See the header comment. */
static IrRef notstep(Jac *J, IrRef z) {
  return op2(J, IR_POW, cst(J, 0.0), op1(J, IR_RELU, z));
}
static IrRef step(Jac *J, IrRef z) {
  return op2(J, IR_SUB, cst(J, 1.0), notstep(J, z));
}
/* 1 where z == 0, else 0 (z real). */
static IrRef iszero(Jac *J, IrRef z) {
  return op2(J, IR_POW, cst(J, 0.0), op1(J, IR_ABS, z));
}

/* Reduces x over its last axis and keeps that axis with size 1, so the
 * result broadcasts back against x (the normalizations' statistics). */
static IrRef lastred(Jac *J, IrOp op, IrRef x) {
  if (J->failed) return IR_NONE;
  IrType t = dn(J, x)->type;
  IrNode p = {0};
  p.op = op;
  p.axis = t.rank - 1;
  IrRef r = emit(J, &p, 1, &x);
  if (r == IR_NONE) return r;
  DimExpr dims[SEQ_MAX_RANK];
  memcpy(dims, t.dims, (size_t)t.rank * sizeof *dims);
  dims[t.rank - 1] = dim_const(1);
  return to_type(J, IR_RESHAPE, r, ir_type(J->a, t.elem, t.rank, dims));
}

/* The result m of a reduction of x over `axis`, shaped to broadcast against
 * x (the reduced axis kept with size 1; a full reduction is a scalar). */
static IrRef unreduce(Jac *J, IrRef m, IrType xt, int axis) {
  if (axis < 0 || J->failed) return m;
  DimExpr dims[SEQ_MAX_RANK];
  memcpy(dims, xt.dims, (size_t)xt.rank * sizeof *dims);
  dims[axis] = dim_const(1);
  return to_type(J, IR_RESHAPE, m, ir_type(J->a, xt.elem, xt.rank, dims));
}

static int not_differentiable(Jac *J, const IrNode *n, const char *why) {
  diag_error(J->de, n->loc, "cannot differentiate the step of '%s' (%s): %s %s", J->src->name,
             J->what, ir_op_info[n->op].text, why);
  J->failed = 1;
  return -1;
}

/* ---- the rules: one case per op ------------------------------------------------ */

/* The tangent of src node i (n), whose operands' copies are x[] and
 * tangents dx[] (at least one nonzero), and whose copy is y. */
static IrRef tangent(Jac *J, const IrNode *n, const IrRef *x, const IrRef *dx, IrRef y) {
  IrRef one = IR_NONE;
  switch (n->op) {
  case IR_CONST:
  case IR_DIMVAL:
  case IR_EYE:
  case IR_PARAM:
  case IR_INPUT:
  case IR_STATE:
    return IR_NONE; /* leaves: handled by the caller */

  /* Unary elementwise: f'(x) dx, with f' written through y = f(x) where
   * that is cheaper and as accurate. */
  case IR_NEG:
    return op1(J, IR_NEG, dx[0]);
  case IR_EXP: /* holomorphic: exp(z) dz */
    return tmul(J, y, dx[0]);
  case IR_LOG: /* holomorphic: dz / z */
    return op2(J, IR_DIV, dx[0], x[0]);
  case IR_TANH:
    one = cst(J, 1.0);
    return tmul(J, op2(J, IR_SUB, one, op2(J, IR_MUL, y, y)), dx[0]);
  case IR_SIGMOID:
    return tmul(J, op2(J, IR_MUL, y, op2(J, IR_SUB, cst(J, 1.0), y)), dx[0]);
  /* softplus' = sigmoid. The interpreter's softplus is x itself above 20
   * (torch's threshold), where the slope is 1 and sigmoid is 1 - 2e-9. */
  case IR_LOGSIGMOID:
    return tmul(J, op1(J, IR_SIGMOID, op1(J, IR_NEG, x[0])), dx[0]);
  case IR_SOFTPLUS:
    return tmul(J, op1(J, IR_SIGMOID, x[0]), dx[0]);
  case IR_RELU: /* slope 0 at 0, the value relu takes there */
    return tmul(J, step(J, x[0]), dx[0]);
  case IR_SILU: { /* s + x s (1 - s) */
    IrRef s = op1(J, IR_SIGMOID, x[0]);
    IrRef c = op2(J, IR_ADD, cst(J, 1.0), op2(J, IR_MUL, x[0], op2(J, IR_SUB, cst(J, 1.0), s)));
    return tmul(J, op2(J, IR_MUL, s, c), dx[0]);
  }
  case IR_GELU: {
    /* Phi(x) + x phi(x). There is no erf op, but Phi(x) = gelu(x) / x for
     * x != 0; at x == 0 the guard makes it (0 + 1/2) / (0 + 1). */
    IrRef z = iszero(J, x[0]);
    IrRef Phi =
        op2(J, IR_DIV, op2(J, IR_ADD, y, op2(J, IR_MUL, cst(J, 0.5), z)), op2(J, IR_ADD, x[0], z));
    IrRef e = op1(J, IR_EXP, op2(J, IR_MUL, cst(J, -0.5), op2(J, IR_MUL, x[0], x[0])));
    IrRef phi = op2(J, IR_MUL, cst(J, 0.39894228040143267794), e); /* 1/sqrt(2 pi) */
    return tmul(J, op2(J, IR_ADD, Phi, op2(J, IR_MUL, x[0], phi)), dx[0]);
  }
  case IR_SQRT: /* dx / (2 sqrt(x)) */
    return op2(J, IR_DIV, dx[0], op2(J, IR_MUL, cst(J, 2.0), y));
  case IR_RSQRT: /* -x^(-3/2) / 2 = -y^3 / 2 */
    return tmul(J, op2(J, IR_MUL, op2(J, IR_MUL, cst(J, -0.5), y), op2(J, IR_MUL, y, y)), dx[0]);
  case IR_ABS: {
    /* Real: sign(x) dx, with slope 0 at 0. Complex (real-linear, not
     * holomorphic): d|z| = re(conj(z) dz) / |z|, 0 at z == 0. The guard
     * |z| + [z == 0] keeps both exact away from 0. */
    IrRef den = op2(J, IR_ADD, y, iszero(J, y));
    if (dn(J, x[0])->type.elem == IR_COMPLEX)
      return op2(J, IR_DIV, op1(J, IR_RE, op2(J, IR_MUL, op1(J, IR_CONJ, x[0]), dx[0])), den);
    return tmul(J, op2(J, IR_DIV, x[0], den), dx[0]);
  }
  case IR_SIN:
    return tmul(J, op1(J, IR_COS, x[0]), dx[0]);
  case IR_COS:
    return op1(J, IR_NEG, tmul(J, op1(J, IR_SIN, x[0]), dx[0]));

  /* Binary elementwise (the result is fitted to the node's type after). */
  case IR_ADD:
    return tadd(J, fit(J, dx[0], n->type), fit(J, dx[1], n->type));
  case IR_SUB:
    return tsub(J, fit(J, dx[0], n->type), fit(J, dx[1], n->type));
  case IR_MUL: /* holomorphic for complex operands */
    return tadd(J, tmul(J, x[1], dx[0]), tmul(J, x[0], dx[1]));
  case IR_DIV: /* (da - (a/b) db) / b */
    return op2(J, IR_DIV, tsub(J, dx[0], tmul(J, y, dx[1])), x[1]);
  case IR_LT: /* piecewise constant: slope 0 (a step's jump has none to give) */
  case IR_LE:
    return IR_NONE;
  case IR_MIN:
  case IR_MAX: {
    /* The subgradient of the branch the value took: the interpreter keeps
     * a where a > b (max) or a < b (min), and b on a tie, so a tie
     * differentiates b. */
    IrRef z = n->op == IR_MAX ? op2(J, IR_SUB, x[0], x[1]) : op2(J, IR_SUB, x[1], x[0]);
    return tadd(J, tmul(J, step(J, z), dx[0]), tmul(J, notstep(J, z), dx[1]));
  }
  case IR_POW: { /* b a^(b-1) da + a^b log(a) db */
    IrRef t = IR_NONE;
    if (dx[0] != IR_NONE) {
      IrRef p = op2(J, IR_POW, x[0], op2(J, IR_SUB, x[1], cst(J, 1.0)));
      t = tmul(J, op2(J, IR_MUL, x[1], p), dx[0]);
    }
    if (dx[1] != IR_NONE) t = tadd(J, t, tmul(J, op2(J, IR_MUL, y, op1(J, IR_LOG, x[0])), dx[1]));
    return t;
  }

  /* Complex parts: linear (over the reals). */
  case IR_CPLX:
    return op2(J, IR_CPLX, dx[0] != IR_NONE ? dx[0] : cst(J, 0.0),
               dx[1] != IR_NONE ? dx[1] : cst(J, 0.0));
  case IR_RE:
  case IR_IM:
  case IR_CONJ:
    return op1(J, n->op, dx[0]);

  /* Bilinear products. */
  case IR_MATMUL:
  case IR_OUTER: {
    IrRef t = dx[0] != IR_NONE ? op2(J, n->op, dx[0], x[1]) : IR_NONE;
    return tadd(J, t, dx[1] != IR_NONE ? op2(J, n->op, x[0], dx[1]) : IR_NONE);
  }

  /* d(A^-1) = -A^-1 dA A^-1, y the inverse. */
  case IR_INV:
    return op1(J, IR_NEG, op2(J, IR_MATMUL, op2(J, IR_MATMUL, y, dx[0]), y));

  /* d exp(A)[E] is the top-right block of exp([[A, E], [0, A]]) (the
   * exponential of a block upper-triangular matrix, Van Loan's identity). */
  case IR_EXPM: {
    IrType t = dn(J, x[0])->type;
    int r = t.rank;
    DimExpr N = t.dims[r - 1], N2;
    if (dim_add(N, N, &N2)) {
      diag_error(J->de, J->loc, "%s of %s: expm's matrices are too large to differentiate", J->what,
                 J->src->name);
      J->failed = 1;
      return IR_NONE;
    }
    IrRef e = fit(J, dx[0], t), z = filled(J, t, 0.0);
    IrNode cat = {0};
    cat.op = IR_CONCAT;
    cat.axis = r - 1;
    IrRef top[2] = {x[0], e}, bot[2] = {z, x[0]}, rows[2];
    rows[0] = emit(J, &cat, 2, top);
    rows[1] = emit(J, &cat, 2, bot);
    cat.axis = r - 2;
    IrRef big = op1(J, IR_EXPM, emit(J, &cat, 2, rows));
    IrNode sl = {0};
    sl.op = IR_SLICE;
    sl.axis = r - 2;
    sl.start = dim_const(0);
    sl.stop = N;
    IrRef upper = emit(J, &sl, 1, &big);
    sl.axis = r - 1;
    sl.start = N;
    sl.stop = N2;
    return emit(J, &sl, 1, &upper);
  }

  /* Linear data movement and sums: the same op on the tangent. */
  case IR_DIAG:
  case IR_TRANSPOSE:
  case IR_BROADCAST:
  case IR_RESHAPE:
  case IR_SLICE:
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN: {
    IrNode p = *n;
    return emit(J, &p, 1, &dx[0]);
  }
  case IR_CONCAT: {
    IrRef *args = arena_calloc(J->a, (size_t)n->nargs, sizeof *args);
    if (!args) return IR_NONE;
    for (int k = 0; k < n->nargs; k++)
      args[k] = dx[k] != IR_NONE ? dx[k] : filled(J, dn(J, x[k])->type, 0.0);
    IrNode p = *n;
    return emit(J, &p, n->nargs, args);
  }
  case IR_GATHER: {
    /* Linear in the table; the index is an int, which no tangent reaches. */
    if (dx[1] != IR_NONE) {
      not_differentiable(J, n, "is not differentiable in its token index");
      return IR_NONE;
    }
    IrNode p = *n;
    IrRef args[2] = {dx[0], x[1]};
    return emit(J, &p, 2, args);
  }

  case IR_AMAX:
  case IR_AMIN: {
    /* The tangent of the elements equal to the extremum; on a tie their
     * mean (as torch.amax's gradient spreads evenly over ties). */
    IrType xt = dn(J, x[0])->type;
    IrRef hit = iszero(J, op2(J, IR_SUB, x[0], unreduce(J, y, xt, n->axis)));
    IrNode p = {0};
    p.op = IR_SUM;
    p.axis = n->axis;
    IrRef prod = op2(J, IR_MUL, hit, dx[0]);
    return op2(J, IR_DIV, emit(J, &p, 1, &prod), emit(J, &p, 1, &hit));
  }

  /* Normalizations over the last axis: exact JVPs written with other ops
   * (s below is the inverse scale, always kept as [..., 1]). */
  case IR_RMSNORM: { /* y = w x s, s = (mean(x^2) + eps)^-1/2 */
    IrRef s = op1(J, IR_RSQRT,
                  op2(J, IR_ADD, lastred(J, IR_MEAN, op2(J, IR_MUL, x[0], x[0])), cst(J, n->cval)));
    IrRef xs = op2(J, IR_MUL, x[0], s);
    IrRef t = IR_NONE;
    if (dx[0] != IR_NONE) { /* d(x s) = s (dx - xs mean(xs dx)) */
      IrRef m = lastred(J, IR_MEAN, op2(J, IR_MUL, xs, dx[0]));
      IrRef dxs = op2(J, IR_MUL, s, op2(J, IR_SUB, dx[0], op2(J, IR_MUL, xs, m)));
      t = op2(J, IR_MUL, x[1], dxs);
    }
    return tadd(J, t, tmul(J, xs, dx[1]));
  }
  case IR_LAYERNORM: { /* y = w xh + b, xh = (x - mean x) s, s = (var + eps)^-1/2 */
    IrRef xc = op2(J, IR_SUB, x[0], lastred(J, IR_MEAN, x[0]));
    IrRef var = lastred(J, IR_MEAN, op2(J, IR_MUL, xc, xc));
    IrRef s = op1(J, IR_RSQRT, op2(J, IR_ADD, var, cst(J, n->cval)));
    IrRef xh = op2(J, IR_MUL, xc, s);
    IrRef t = IR_NONE;
    if (dx[0] != IR_NONE) { /* dxh = s (dxc - xh mean(xh dxc)), dxc = dx - mean(dx) */
      IrRef dxc = op2(J, IR_SUB, dx[0], lastred(J, IR_MEAN, dx[0]));
      IrRef m = lastred(J, IR_MEAN, op2(J, IR_MUL, xh, dxc));
      IrRef dxh = op2(J, IR_MUL, s, op2(J, IR_SUB, dxc, op2(J, IR_MUL, xh, m)));
      t = op2(J, IR_MUL, x[1], dxh);
    }
    t = tadd(J, t, tmul(J, xh, dx[1]));
    return tadd(J, fit(J, t, n->type), fit(J, dx[2], n->type));
  }
  case IR_L2NORM: { /* y = x / r, r = sqrt(sum x^2 + eps): dy = (dx - y sum(y dx)) / r */
    IrRef r = op1(J, IR_SQRT,
                  op2(J, IR_ADD, lastred(J, IR_SUM, op2(J, IR_MUL, x[0], x[0])), cst(J, n->cval)));
    IrRef m = lastred(J, IR_SUM, op2(J, IR_MUL, y, dx[0]));
    return op2(J, IR_DIV, op2(J, IR_SUB, dx[0], op2(J, IR_MUL, y, m)), r);
  }
  case IR_SOFTMAX: /* dy = y (dx - sum(y dx)) */
    return op2(J, IR_MUL, y, op2(J, IR_SUB, dx[0], lastred(J, IR_SUM, op2(J, IR_MUL, y, dx[0]))));

  /* Sequence-level ops run a whole sequence; a step has no derivative
   * through them (the lowering never leaves them in a cell). */
  case IR_CALL:
  case IR_RESULT:
  case IR_CAUSAL_CONV:
  case IR_SCAN:
  case IR_SCAN_MAX:
  case IR_DELAY:
  case IR_WINDOW:
  case IR_LINATTN:
  case IR_LINATTN_STATE:
  case IR_DELTA:
  case IR_DELTA_STATE:
  case IR_DPLR:
  case IR_DPLR_STATE:
  case IR_PLSTM:
  case IR_PLSTM_STATE:
  case IR_ATTN:
    not_differentiable(J, n, "is a sequence-level op, not part of a step");
    return IR_NONE;
  case IR_NUM_OPS:
    break;
  }
  diag_internal(J->de, "jacobian", "no rule for op %d", (int)n->op);
  J->failed = 1;
  return IR_NONE;
}

/* In the diagonal mode a derivative value D of node v stands for
 * dv[e, i] / dstate[i]: v's trailing axes are the seed state's axes i
 * (numpy broadcasting aligns them on the right) and its leading axes e, if
 * any, are extra (ParaLSTM's A * h, [4, H] from h [H], split by index
 * along the 4). An op keeps that form if it acts on the extra axes only:
 * elementwise ops, data movement and reductions along extra axes. Anything
 * touching the state's axes themselves (products, transposes, norms, slices
 * of them, broadcasting a derivative along them) mixes elements, so the
 * block is not diagonal. A scalar state has no axes to mix. */
static int trailing_is_state(Jac *J, IrType t) {
  IrType st = J->src->states.v[J->seed].type;
  if (t.rank < st.rank) return 0;
  for (int d = 0; d < st.rank; d++)
    if (!dim_eq(t.dims[t.rank - st.rank + d], st.dims[d])) return 0;
  return 1;
}

static int keeps_diagonal(Jac *J, const IrNode *n, const IrRef *dx) {
  IrType st = J->src->states.v[J->seed].type;
  /* The diagonal of a complex state is the complex derivative d next_i /
   * d state_i; real-linear maps (parts, conjugate, magnitude) have none. */
  if (st.elem == IR_COMPLEX &&
      (n->op == IR_RE || n->op == IR_IM || n->op == IR_CONJ || n->op == IR_ABS))
    return 0;
  if (st.rank == 0) return 1;
  if (!trailing_is_state(J, n->type)) return 0;
  int extra = -1; /* leading axes of the (first) operand */
  for (int k = 0; k < n->nargs; k++) {
    if (dx[k] == IR_NONE) continue;
    IrType t = dn(J, dx[k])->type;
    if (!trailing_is_state(J, t)) return 0;
    if (extra < 0) extra = t.rank - st.rank;
  }
  if (ir_op_info[n->op].flags & IRF_EW) return 1;
  switch (n->op) {
  case IR_BROADCAST:
  case IR_RESHAPE: /* the trailing block is contiguous: only leading axes move */
    return 1;
  case IR_CONCAT:
    return n->axis >= 0 && n->axis < n->type.rank - st.rank;
  case IR_SLICE:
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    return n->axis >= 0 && n->axis < extra;
  case IR_GATHER: /* a row of a table whose rows are extra */
    return extra >= 1 && dx[1] == IR_NONE;
  default:
    return 0;
  }
}

/* ---- quasi mode: the diagonal of a dense Jacobian ---------------------------------
 *
 * For quasi-Newton (newton.c) the diagonal of J_t is wanted even where J_t is
 * dense. For a state h [S] read by a matrix product W h (W [c S, S], as a
 * GRU's weight_hh [3H, H] is) and elementwise ops, it is still exact and
 * cheap: d (W v)_j / d h_i = W_ji d v_i / d h_i when v depends on h
 * elementwise, so where j = i mod S the tangent of W v is the diagonals of
 * W's c square blocks times v's. A value of c S elements along its last axis
 * then holds in element j the derivative by h[j mod S]; slices along that
 * axis at multiples of S keep that meaning. A second product over a value
 * that went through one already mixes elements the diagonal cannot follow:
 * that is refused (W2 f(W1 h) has diag(J) = sum_k W2_ik f'_k W1_ki). */

/* c if the last axis of t is c * S (1 <= c <= 16), else 0. */
static int stacks(IrType t, DimExpr S) {
  if (t.rank < 1) return 0;
  for (int c = 1; c <= 16; c++) {
    DimExpr cs;
    if (!dim_mul(dim_const(c), S, &cs) && dim_eq(t.dims[t.rank - 1], cs)) return c;
  }
  return 0;
}

/* Whether x is k * S for some 0 <= k <= 16. */
static int multiple_of(DimExpr x, DimExpr S) {
  for (int k = 0; k <= 16; k++) {
    DimExpr ks;
    if (!dim_mul(dim_const(k), S, &ks) && dim_eq(x, ks)) return 1;
  }
  return 0;
}

static int keeps_quasi(Jac *J, const IrNode *n, const IrRef *dx) {
  IrType st = J->src->states.v[J->seed].type;
  if (st.rank != 1 || st.elem == IR_COMPLEX) return 0;
  DimExpr S = st.dims[0];
  int c = stacks(n->type, S);
  if (!c) return 0;
  for (int k = 0; k < n->nargs; k++)
    if (dx[k] != IR_NONE && !stacks(dn(J, dx[k])->type, S)) return 0;
  int last = n->type.rank - 1;
  if (ir_op_info[n->op].flags & IRF_EW) {
    for (int k = 0; k < n->nargs; k++)
      if (dx[k] != IR_NONE && stacks(dn(J, dx[k])->type, S) != c) return 0;
    return 1;
  }
  switch (n->op) {
  case IR_BROADCAST:
  case IR_RESHAPE: /* only leading axes may move */
    return stacks(dn(J, dx[0])->type, S) == c;
  case IR_SLICE:
    return n->axis != last || (multiple_of(n->start, S) && multiple_of(n->stop, S));
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    return n->axis >= 0 && n->axis != last && n->axis < n->type.rank;
  case IR_CONCAT:
    for (int k = 0; k < n->nargs; k++)
      if (!stacks(J->src->nodes.v[n->args[k]].type, S)) return 0;
    return 1;
  case IR_MATMUL: { /* W [c S, S] @ v [S], W free of the state, v not mixed yet */
    const IrNode *w = &J->src->nodes.v[n->args[0]];
    const IrNode *v = &J->src->nodes.v[n->args[1]];
    return dx[0] == IR_NONE && dx[1] != IR_NONE && !J->mixed[n->args[1]] && w->type.rank == 2 &&
           v->type.rank == 1 && dim_eq(v->type.dims[0], S) && dim_eq(w->type.dims[1], S);
  }
  default:
    return 0;
  }
}

/* The tangent of W v in quasi mode: the diagonals of W's c blocks times v's
 * tangent, repeated c times. */
static IrRef quasi_matmul(Jac *J, const IrNode *n, const IrRef *x, const IrRef *dx) {
  IrType st = J->src->states.v[J->seed].type;
  DimExpr S = st.dims[0], c = dim_const(stacks(n->type, S));
  DimExpr blocks[3] = {c, S, S}, rows[2] = {c, S}, one[2] = {dim_const(1), S};
  IrRef wb = to_type(J, IR_RESHAPE, x[0], ir_type(J->a, IR_REAL, 3, blocks));
  IrRef d = op1(J, IR_DIAG, wb);
  IrRef v = to_type(J, IR_RESHAPE, dx[1], ir_type(J->a, IR_REAL, 2, one));
  v = to_type(J, IR_BROADCAST, v, ir_type(J->a, IR_REAL, 2, rows));
  return to_type(J, IR_RESHAPE, op2(J, IR_MUL, d, v), n->type);
}

/* ---- the walk --------------------------------------------------------------------- */

/* Marks the nodes that reach some state's next or init. */
static void mark_live(Jac *J) {
  const IrFunc *f = J->src;
  for (int k = 0; k < f->states.n; k++) {
    IrRef r[2] = {f->states.v[k].next, f->states.v[k].init};
    for (int j = 0; j < 2; j++)
      if (r[j] >= 0 && r[j] < f->nodes.n) J->live[r[j]] = 1;
  }
  for (IrRef i = f->nodes.n - 1; i >= 0; i--)
    if (J->live[i])
      for (int k = 0; k < f->nodes.v[i].nargs; k++) J->live[f->nodes.v[i].args[k]] = 1;
}

/* Copies the live nodes of src into dst in order (once per function: the
 * primal trajectory). */
static int copy_primal(Jac *J, IrRef i) {
  const IrNode *n = &J->src->nodes.v[i];
  IrRef args[64], *ap = args;
  if (n->nargs > 64 && !(ap = arena_calloc(J->a, (size_t)n->nargs, sizeof *ap))) {
    J->failed = 1;
    return -1;
  }
  for (int k = 0; k < n->nargs; k++) ap[k] = J->val[n->args[k]];
  J->loc = n->loc;
  IrNode p = *n;
  J->val[i] = emit(J, &p, n->nargs, ap);
  return J->failed ? -1 : 0;
}

/* The tangents of all live nodes, given the leaves' tangents in J->tan. */
static int differentiate(Jac *J) {
  const IrFunc *f = J->src;
  IrRef xs[64], dxs[64];
  for (IrRef i = 0; i < f->nodes.n && !J->failed; i++) {
    const IrNode *n = &f->nodes.v[i];
    if (!J->live[i] || (ir_op_info[n->op].flags & IRF_LEAF)) continue;
    IrRef *x = xs, *dx = dxs;
    if (n->nargs > 64) {
      x = arena_calloc(J->a, (size_t)n->nargs, sizeof *x);
      dx = arena_calloc(J->a, (size_t)n->nargs, sizeof *dx);
      if (!x || !dx) return -1;
    }
    int any = 0;
    for (int k = 0; k < n->nargs; k++) {
      x[k] = J->val[n->args[k]];
      dx[k] = J->tan[n->args[k]];
      any |= dx[k] != IR_NONE;
    }
    J->tan[i] = IR_NONE;
    if (!any) continue;
    J->loc = n->loc;
    if (J->quasi && !keeps_diagonal(J, n, dx)) {
      if (!keeps_quasi(J, n, dx)) {
        diag_error(J->de, n->loc,
                   "the diagonal of the Jacobian of '%s' by state '%s' cannot be followed "
                   "through this %s",
                   f->name, f->states.v[J->seed].name, ir_op_info[n->op].text);
        J->failed = 1;
        return -1;
      }
      IrRef t = n->op == IR_MATMUL ? quasi_matmul(J, n, x, dx) : tangent(J, n, x, dx, J->val[i]);
      if (J->failed) return -1;
      J->tan[i] = fit(J, t, n->type);
      for (int k = 0; k < n->nargs; k++) J->mixed[i] |= dx[k] != IR_NONE && J->mixed[n->args[k]];
      J->mixed[i] |= n->op == IR_MATMUL;
      continue;
    }
    if (J->quasi)
      for (int k = 0; k < n->nargs; k++) J->mixed[i] |= dx[k] != IR_NONE && J->mixed[n->args[k]];
    if (J->diag && !keeps_diagonal(J, n, dx)) {
      diag_error(J->de, n->loc,
                 "the Jacobian of '%s' by state '%s' is not diagonal: %s mixes its elements "
                 "(use the full JVP, jacobian_jvp_cell)",
                 f->name, f->states.v[J->seed].name, ir_op_info[n->op].text);
      J->failed = 1;
      return -1;
    }
    IrRef t = tangent(J, n, x, dx, J->val[i]);
    if (J->failed) return -1;
    t = fit(J, t, n->type);
    if (t != IR_NONE && !ir_type_eq(dn(J, t)->type, n->type)) {
      diag_internal(J->de, "jacobian", "%s of %s: the tangent of a %s has the wrong type", J->what,
                    f->name, ir_op_info[n->op].text);
      J->failed = 1;
    }
    J->tan[i] = t;
  }
  return J->failed ? -1 : 0;
}

/* A fresh cell with src's dims, params, inputs and states (next and init
 * copied), every live node copied. */
static int start(Jac *J, Arena *a, IrModule *m, const IrFunc *src, const char *suffix,
                 DiagEngine *de) {
  memset(J, 0, sizeof *J);
  J->a = a;
  J->de = de;
  J->src = src;
  J->what = suffix;
  if (src->kind != IR_FN_CELL) {
    diag_error(de, src->loc,
               "cannot differentiate '%s' (%s): it is a model; only a cell's step has "
               "a Jacobian",
               src->name, suffix);
    return -1;
  }
  const char *name = arena_printf(a, "%s.%s", src->name, suffix);
  int nn = src->nodes.n;
  J->val = arena_calloc(a, (size_t)nn + 1, sizeof *J->val);
  J->tan = arena_calloc(a, (size_t)nn + 1, sizeof *J->tan);
  J->live = arena_calloc(a, (size_t)nn + 1, 1);
  IrFunc *f = name ? ir_func_new(m, name, IR_FN_CELL, src->loc) : NULL;
  J->dst = f;
  if (!J->val || !J->tan || !J->live || !f) goto oom;
  f->doc = src->doc;
  for (int i = 0; i < src->dims.n; i++)
    if (vec_push(a, &f->dims, src->dims.v[i])) goto oom;
  for (int i = 0; i < src->dim_defaults.n; i++)
    if (vec_push(a, &f->dim_defaults, src->dim_defaults.v[i])) goto oom;
  for (int i = 0; i < src->params.n; i++)
    if (vec_push(a, &f->params, src->params.v[i])) goto oom;
  for (int i = 0; i < src->inputs.n; i++)
    if (vec_push(a, &f->inputs, src->inputs.v[i])) goto oom;
  for (int i = 0; i < src->states.n; i++)
    if (vec_push(a, &f->states, src->states.v[i])) goto oom;
  for (int i = 0; i < nn; i++) J->val[i] = J->tan[i] = IR_NONE;
  mark_live(J);
  for (IrRef i = 0; i < nn; i++)
    if (J->live[i] && copy_primal(J, i)) return -1;
  for (int k = 0; k < src->states.n; k++) {
    IrState *st = &f->states.v[k];
    st->init = st->init >= 0 && st->init < nn ? J->val[st->init] : IR_NONE;
    st->next = st->next >= 0 && st->next < nn ? J->val[st->next] : IR_NONE;
    if (st->next == IR_NONE) {
      diag_internal(de, "jacobian", "%s: state %s has no next value", src->name, st->name);
      return -1;
    }
  }
  return 0;
oom:
  diag_error(de, src->loc, "out of memory");
  return -1;
}

static int add_output(Jac *J, const char *name, IrRef value, SrcLoc loc) {
  IrOutput o = {0};
  o.name = name;
  o.loc = loc;
  o.value = value;
  if (!name || value == IR_NONE) return -1;
  o.type = dn(J, value)->type;
  return vec_push(J->a, &J->dst->outputs, o);
}

/* Adds "<state>'" for every state: the primal next values. */
static int add_next_outputs(Jac *J) {
  for (int k = 0; k < J->dst->states.n; k++) {
    const IrState *st = &J->dst->states.v[k];
    if (add_output(J, arena_printf(J->a, "%s'", st->name), st->next, st->loc)) return -1;
  }
  return 0;
}

/* Verifies a finished function; a failed build leaves no half-built
 * function in the module. */
static int settle(Jac *J, IrModule *m, int rc, IrFunc **out) {
  if (rc == 0 && !J->failed &&
      ir_verify(m, J->de, J->diag ? "jacobian (diag)" : "jacobian (jvp)") == 0) {
    if (out) *out = J->dst;
    return 0;
  }
  if (J->dst && m->funcs.n > 0 && m->funcs.v[m->funcs.n - 1] == J->dst) m->funcs.n--;
  return -1;
}

/* Building twice gives the function built the first time. */
static int built_before(IrModule *m, const IrFunc *cell, const char *suffix, IrFunc **out) {
  if (!cell || cell->kind != IR_FN_CELL) return 0;
  for (int i = 0; i < m->funcs.n; i++) {
    const char *n = m->funcs.v[i]->name;
    size_t len = strlen(cell->name);
    if (strncmp(n, cell->name, len) == 0 && n[len] == '.' && strcmp(n + len + 1, suffix) == 0) {
      if (out) *out = m->funcs.v[i];
      return 1;
    }
  }
  return 0;
}

int jacobian_jvp_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de) {
  Jac J;
  if (out) *out = NULL;
  if (built_before(m, cell, "jvp", out)) return 0;
  if (start(&J, a, m, cell, "jvp", de)) return settle(&J, m, -1, out);
  IrFunc *f = J.dst;
  int ns = f->states.n;
  /* One tangent input per state, after the cell's own inputs. */
  for (int k = 0; k < ns; k++) {
    const IrState *st = &f->states.v[k];
    IrInput in = {arena_printf(a, "d%s", st->name), st->type, st->loc, 0};
    if (!in.name || vec_push(a, &f->inputs, in)) {
      diag_error(de, cell->loc, "out of memory");
      return settle(&J, m, -1, out);
    }
    IrNode p = {0};
    p.op = IR_INPUT;
    p.index = f->inputs.n - 1;
    J.loc = st->loc;
    for (IrRef i = 0; i < cell->nodes.n; i++)
      if (cell->nodes.v[i].op == IR_STATE && cell->nodes.v[i].index == k && J.live[i])
        J.tan[i] = emit(&J, &p, 0, NULL);
  }
  if (J.failed || differentiate(&J)) return settle(&J, m, -1, out);
  if (add_next_outputs(&J)) goto oom;
  for (int k = 0; k < ns; k++) {
    const IrState *st = &f->states.v[k];
    IrRef t = J.tan[cell->states.v[k].next];
    J.loc = st->loc;
    if (t == IR_NONE) t = filled(&J, st->type, 0.0);
    if (add_output(&J, arena_printf(a, "d%s'", st->name), t, st->loc)) goto oom;
  }
  return settle(&J, m, 0, out);
oom:
  if (!J.failed) diag_error(de, cell->loc, "out of memory");
  return settle(&J, m, -1, out);
}

static int diag_cell(Arena *a, IrModule *m, const IrFunc *cell, int quasi, IrFunc **out,
                     DiagEngine *de) {
  Jac J;
  const char *what = quasi ? "quasi" : "diag";
  if (out) *out = NULL;
  if (built_before(m, cell, what, out)) return 0;
  if (start(&J, a, m, cell, what, de)) return settle(&J, m, -1, out);
  IrFunc *f = J.dst;
  int ns = f->states.n;
  J.diag = 1;
  J.quasi = quasi;
  if (quasi && !(J.mixed = arena_calloc(a, (size_t)cell->nodes.n + 1, 1))) goto oom;
  if (add_next_outputs(&J)) goto oom;
  /* A state read by a next of another type couples elements of different
   * index spaces: no block of that pair is a diagonal. */
  for (int j = 0; j < ns && !J.failed; j++) {
    J.seed = j;
    for (IrRef i = 0; i < cell->nodes.n; i++) J.tan[i] = IR_NONE;
    if (J.mixed) memset(J.mixed, 0, (size_t)cell->nodes.n);
    J.loc = f->states.v[j].loc;
    IrRef ones = filled(&J, f->states.v[j].type, 1.0);
    for (IrRef i = 0; i < cell->nodes.n; i++)
      if (cell->nodes.v[i].op == IR_STATE && cell->nodes.v[i].index == j && J.live[i])
        J.tan[i] = ones;
    if (J.failed || differentiate(&J)) return settle(&J, m, -1, out);
    for (int k = 0; k < ns; k++) {
      const IrState *sk = &f->states.v[k], *sj = &f->states.v[j];
      IrRef t = J.tan[cell->states.v[k].next];
      if (!ir_type_eq(sk->type, sj->type)) {
        if (t == IR_NONE) continue;
        diag_error(de, sk->loc,
                   "the Jacobian of '%s' is not block-diagonal: the next value of state '%s' "
                   "reads state '%s' of another shape",
                   cell->name, sk->name, sj->name);
        return settle(&J, m, -1, out);
      }
      J.loc = sk->loc;
      if (t == IR_NONE) t = filled(&J, sk->type, 0.0);
      if (add_output(&J, arena_printf(a, "d%s'/d%s", sk->name, sj->name), t, sk->loc)) goto oom;
    }
  }
  return settle(&J, m, 0, out);
oom:
  if (!J.failed) diag_error(de, cell->loc, "out of memory");
  return settle(&J, m, -1, out);
}

int jacobian_diag_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de) {
  return diag_cell(a, m, cell, 0, out, de);
}

int jacobian_quasi_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de) {
  return diag_cell(a, m, cell, 1, out, de);
}
