/* delta.c - the delta rule read off a cell's step, for its chunked (WY) form.
 *
 * classify.c proves that a state S [L..., V, K] is diagonal plus low rank
 * along K (REC_LIN_DPLR). The chunked kernel runs one family of such
 * updates, per lead slice (a head) and token:
 *
 *   S = g S;  then for each of R factors:  S = S (I - beta k k^T) + beta v k^T
 *
 * with g = exp(lg) one positive gate per head (DeltaNet: none; gated
 * DeltaNet: alpha), beta one number per head and factor, k [K] and v [V]
 * per head and factor (DeltaProduct: R Householder factors per token).
 * This file finds g, k, beta and v in the step. Where they are not there,
 * it looks for one step of the generalized rule (RWKV-7's, the dplr ops),
 *
 *   S = S diag(d) + (S a) b^T + v k^T
 *
 * with d a positive decay per key (and head), a, b and k [K], v [V]: any
 * vectors. Else it says why (the wider form's reason).
 *
 * The step's next value is read as an affine form in a value X of the
 * state's type (the state itself, or the previous factor's result):
 *
 *   D X + sum_t (X a_t) b_t^T + sum_w u_w w_w^T
 *
 * where every coefficient is a product of factors: nodes of the step free of
 * X, each aligned (numpy rules) to the state's rank or to the rank of a
 * vector [L..., V], and so varying along some of the lead axes, V and K.
 * Contractions sum(M * q, axis=K) and S @ q of the bare D X make vectors
 * c (X a); a vector spread along K and multiplied by a factor along K makes
 * low-rank terms and writes again. A factor is one form when
 * its next value has exactly one low-rank term and one write and
 *
 *   D = g (lead only), a = k, b = -beta g k, u w^T = beta v k^T,
 *
 * matched by cancelling factors: the same node (up to reshapes that only add
 * or drop unit axes) varying along the same axes. So the division is exact
 * and builds nothing; what is left over is beta and v. When the next value
 * is not one factor of the state, the factors are looked for as a chain:
 * a value X1 of the state's type in next's cone that next is one factor of,
 * and which is itself a chain down to the state (at most DELTA_MAX_R). The
 * generalized rule reads the same form, with no cancelling: D is d, the
 * term's vectors are a and b, the write's v and k.
 */
#include "passes/passes.h"

#include <string.h>

#define MAXF DELTA_MAX_FACTORS
#define MAXT 4 /* low-rank terms or writes of one form */

enum { CTX_MAT, CTX_VEC };             /* aligned to the state's rank, or to a vector's */
enum { P_LEAD = 1, P_V = 2, P_K = 4 }; /* axes a factor varies along */

typedef DeltaFac Fac;

typedef enum { A_NONE, A_MAT, A_VEC } AKind;

typedef struct AVal {
  AKind kind;
  int has_d;
  Fac d;                  /* MAT: the diagonal part D (of X) */
  Fac ta[MAXT], tb[MAXT]; /* MAT: low-rank terms (X a) b^T; VEC: c (X a) as tb = c, ta = a */
  int nt;
  Fac wu[MAXT], ww[MAXT]; /* MAT: writes u w^T; VEC: vectors e = wu (ww unused) */
  int nw;
  int spread; /* VEC reshaped to [L..., V, 1] */
} AVal;

typedef struct Ana {
  Arena *a;
  const IrFunc *f;
  int state, r, L;
  IrRef X;
  const char *why;
  AVal *val;
  char *dep, *sdep;
} Ana;

static int refuse(Ana *A, const IrNode *n, const char *what) {
  if (!A->why)
    A->why = n && n->loc.file ? arena_printf(A->a, "%s at %s:%d:%d", what, n->loc.file->name,
                                             n->loc.line, n->loc.col)
                              : what;
  return -1;
}

/* The axes a factor varies along. */
static int profile(const Ana *A, IrRef x, int ctx) {
  IrType t = A->f->nodes.v[x].type;
  int rank = ctx == CTX_MAT ? A->r : A->r - 1, p = 0;
  for (int ax = 0; ax < rank; ax++) {
    if (dim_is_one(ir_type_aligned(t, rank, ax))) continue;
    p |= ax < A->L ? P_LEAD : ax == A->L ? P_V : P_K;
  }
  return p;
}

static int fac_profile(const Ana *A, const Fac *F) {
  int p = 0;
  for (int i = 0; i < F->n; i++) p |= profile(A, F->x[i], F->ctx[i]);
  return p;
}

/* The node under reshapes and broadcasts that only add or drop unit axes. */
static IrRef canon(const IrFunc *f, IrRef x) {
  for (;;) {
    const IrNode *n = &f->nodes.v[x];
    if (n->op != IR_RESHAPE && n->op != IR_BROADCAST) return x;
    IrType t = n->type, u = f->nodes.v[n->args[0]].type;
    int i = 0, j = 0;
    for (;;) {
      while (i < t.rank && dim_is_one(t.dims[i])) i++;
      while (j < u.rank && dim_is_one(u.dims[j])) j++;
      if (i == t.rank || j == u.rank) break;
      if (!dim_eq(t.dims[i], u.dims[j])) return x;
      i++, j++;
    }
    if (i != t.rank || j != u.rank) return x;
    x = n->args[0];
  }
}

static int same_factor(const Ana *A, IrRef x, int cx, IrRef y, int cy) {
  return canon(A->f, x) == canon(A->f, y) && profile(A, x, cx) == profile(A, y, cy);
}

static Fac fac_one(void) {
  Fac F;
  memset(&F, 0, sizeof F);
  F.sign = 1;
  return F;
}

static int fac_push(Ana *A, Fac *F, IrRef x, int ctx) {
  if (F->n == MAXF) return refuse(A, &A->f->nodes.v[x], "a product of too many factors");
  F->x[F->n] = x;
  F->ctx[F->n++] = (signed char)ctx;
  return 0;
}

static int fac_mul(Ana *A, Fac *F, const Fac *G) {
  F->sign *= G->sign;
  for (int i = 0; i < G->n; i++)
    if (fac_push(A, F, G->x[i], G->ctx[i])) return -1;
  return 0;
}

/* F without the factors of G (each found once); 0, or -1 if one is not in F. */
static int fac_cancel(const Ana *A, Fac *F, const Fac *G) {
  for (int i = 0; i < G->n; i++) {
    int at = -1;
    for (int j = 0; j < F->n && at < 0; j++)
      if (same_factor(A, F->x[j], F->ctx[j], G->x[i], G->ctx[i])) at = j;
    if (at < 0) return -1;
    F->x[at] = F->x[F->n - 1];
    F->ctx[at] = F->ctx[--F->n];
  }
  F->sign *= G->sign;
  return 0;
}

/* The factors of a node free of X: a tree of products, negations and unit
 * reshapes; each leaf aligned to ctx. */
static int factors_of(Ana *A, IrRef x, int ctx, Fac *F) {
  const IrNode *n = &A->f->nodes.v[x];
  if (A->sdep[x]) return refuse(A, n, "the state read other than through its previous factor");
  if (n->op == IR_MUL && n->type.rank <= (ctx == CTX_MAT ? A->r : A->r - 1))
    return factors_of(A, n->args[0], ctx, F) || factors_of(A, n->args[1], ctx, F) ? -1 : 0;
  if (n->op == IR_NEG) {
    F->sign = -F->sign;
    return factors_of(A, n->args[0], ctx, F);
  }
  if (n->op == IR_OUTER && ctx == CTX_MAT && A->r == 2) {
    /* x [V] along V, y [K] along K: as x[:, None] and y[None, :]. */
    if (fac_push(A, F, n->args[0], CTX_VEC)) return -1;
    return fac_push(A, F, n->args[1], CTX_MAT);
  }
  return fac_push(A, F, x, ctx);
}

/* Splits F into the factors along V (into *u) and the rest (*w); -1 if a
 * factor varies along both V and K. */
static int split_vk(Ana *A, const Fac *F, Fac *u, Fac *w, const IrNode *at) {
  *u = fac_one();
  *w = fac_one();
  u->sign = F->sign;
  for (int i = 0; i < F->n; i++) {
    int p = profile(A, F->x[i], F->ctx[i]);
    if ((p & P_V) && (p & P_K)) return refuse(A, at, "a write that is not rank one");
    if (fac_push(A, p & P_V ? u : w, F->x[i], F->ctx[i])) return -1;
  }
  return 0;
}

static void negate(AVal *v) {
  v->d.sign = -v->d.sign;
  for (int i = 0; i < v->nt; i++) v->tb[i].sign = -v->tb[i].sign;
  for (int i = 0; i < v->nw; i++) v->wu[i].sign = -v->wu[i].sign;
}

/* x + sign * y for forms of one kind. */
static int add_forms(Ana *A, AVal *o, const AVal *x, const AVal *y, int sign, const IrNode *n) {
  *o = *x;
  AVal yy = *y;
  if (sign < 0) negate(&yy);
  if (yy.has_d) {
    if (o->has_d) return refuse(A, n, "a sum of two multiples of the state");
    o->has_d = 1;
    o->d = yy.d;
  }
  if (o->nt + yy.nt > MAXT || o->nw + yy.nw > MAXT) return refuse(A, n, "too many low-rank terms");
  for (int i = 0; i < yy.nt; i++) {
    o->ta[o->nt] = yy.ta[i];
    o->tb[o->nt++] = yy.tb[i];
  }
  for (int i = 0; i < yy.nw; i++) {
    o->wu[o->nw] = yy.wu[i];
    o->ww[o->nw++] = yy.ww[i];
  }
  return 0;
}

/* The form of a node free of X, as a write (state-shaped) or a vector. */
static int free_form(Ana *A, IrRef x, AKind kind, AVal *o, const IrNode *at) {
  memset(o, 0, sizeof *o);
  o->kind = kind;
  Fac F = fac_one();
  if (factors_of(A, x, at->type.rank == A->r ? CTX_MAT : CTX_VEC, &F)) return -1;
  if (kind == A_MAT) {
    if (split_vk(A, &F, &o->wu[0], &o->ww[0], at)) return -1;
  } else {
    if (fac_profile(A, &F) & P_K) return refuse(A, at, "a vector term along the key axis");
    o->wu[0] = F;
    o->ww[0] = fac_one();
  }
  o->nw = 1;
  return 0;
}

/* form * c, c free of X (factors aligned to the product's rank). */
static int scale_form(Ana *A, AVal *o, const AVal *x, IrRef c, const IrNode *n) {
  int ctx = n->type.rank == A->r ? CTX_MAT : CTX_VEC;
  Fac F = fac_one();
  if (factors_of(A, c, ctx, &F)) return -1;
  int p = fac_profile(A, &F);
  *o = *x;
  if (x->kind == A_VEC && x->spread && (p & P_K)) {
    /* A vector spread along K times a factor along K: terms and writes. */
    if (p & P_V) return refuse(A, n, "a write that is not rank one");
    o->kind = A_MAT;
    o->spread = 0;
    for (int i = 0; i < o->nt; i++)
      if (fac_mul(A, &o->tb[i], &F)) return -1;
    for (int i = 0; i < o->nw; i++) o->ww[i] = F;
    return 0;
  }
  if (p & P_V) {
    /* Along the value axis: only the writes (vectors) can take it. */
    if (o->has_d || o->nt) return refuse(A, n, "the state scaled along its value axis");
    for (int i = 0; i < o->nw; i++)
      if (fac_mul(A, &o->wu[i], &F)) return -1;
    return 0;
  }
  if (o->has_d && fac_mul(A, &o->d, &F)) return -1;
  for (int i = 0; i < o->nt; i++)
    if (fac_mul(A, &o->tb[i], &F)) return -1;
  for (int i = 0; i < o->nw; i++) {
    Fac u, w;
    if (split_vk(A, &F, &u, &w, n) || fac_mul(A, &o->wu[i], &u) ||
        (o->kind == A_MAT && fac_mul(A, &o->ww[i], &w)) ||
        (o->kind == A_VEC && fac_mul(A, &o->wu[i], &w)))
      return -1;
  }
  return 0;
}

/* sum over K of D X times q (q free of X, aligned to the state's rank): the
 * vector c (X a), a the factors along K. */
static int contract(Ana *A, AVal *o, const AVal *x, const Fac *q, const IrNode *n) {
  if (x->kind != A_MAT || !x->has_d || x->nt || x->nw)
    return refuse(A, n, "a contraction of more than a multiple of the state");
  memset(o, 0, sizeof *o);
  o->kind = A_VEC;
  Fac all = x->d;
  if (fac_mul(A, &all, q)) return -1;
  Fac c = fac_one(), k = fac_one();
  c.sign = all.sign;
  for (int i = 0; i < all.n; i++) {
    int p = profile(A, all.x[i], all.ctx[i]);
    if (p & P_V) return refuse(A, n, "a contraction with a vector along the value axis");
    if (fac_push(A, p & P_K ? &k : &c, all.x[i], all.ctx[i])) return -1;
  }
  o->ta[0] = k;
  o->tb[0] = c;
  o->nt = 1;
  return 0;
}

/* The form of node r from its operands' forms. */
static int rule(Ana *A, IrRef r) {
  const IrFunc *f = A->f;
  const IrNode *n = &f->nodes.v[r];
  AVal *o = &A->val[r];
  const IrType *st = &f->states.v[A->state].type;
  if (r == A->X) {
    memset(o, 0, sizeof *o);
    o->kind = A_MAT;
    o->has_d = 1;
    o->d = fac_one();
    return 0;
  }
  if (n->op == IR_STATE)
    return refuse(A, n, "the state read other than through its previous factor");
  int d0 = n->nargs > 0 && A->dep[n->args[0]], d1 = n->nargs > 1 && A->dep[n->args[1]];
  const AVal *x = d0 ? &A->val[n->args[0]] : d1 ? &A->val[n->args[1]] : NULL;
  IrRef c = n->nargs == 2 ? n->args[d0 ? 1 : 0] : IR_NONE;
  int vec_type = n->type.rank == A->r - 1, mat_type = ir_type_eq(n->type, *st);
  for (int i = 0; vec_type && i < A->r - 1; i++) vec_type = dim_eq(n->type.dims[i], st->dims[i]);
  switch (n->op) {
  case IR_RESHAPE:
  case IR_BROADCAST:
    *o = *x;
    if (x->kind == A_MAT && mat_type) return 0;
    if (x->kind == A_VEC && vec_type) return 0;
    if (x->kind == A_VEC && n->op == IR_RESHAPE && n->type.rank == A->r &&
        dim_is_one(n->type.dims[A->r - 1])) {
      o->spread = 1;
      return 0;
    }
    return refuse(A, n, "the state's value changes shape");
  case IR_NEG:
    *o = *x;
    negate(o);
    return 0;
  case IR_ADD:
  case IR_SUB: {
    int sign = n->op == IR_SUB ? -1 : 1;
    if (d0 && d1) {
      const AVal *y = &A->val[n->args[1]];
      if (x->kind != y->kind || x->spread != y->spread)
        return refuse(A, n, "a sum of values of different forms");
      return add_forms(A, o, x, y, sign, n);
    }
    AVal fr;
    if (free_form(A, c, x->kind, &fr, n)) return -1;
    fr.spread = x->spread;
    if (d0) return add_forms(A, o, x, &fr, sign, n);
    return add_forms(A, o, &fr, x, sign, n);
  }
  case IR_MUL:
    if (d0 && d1) return refuse(A, n, "a product of two values that depend on the state");
    return scale_form(A, o, x, c, n);
  case IR_SUM: {
    /* sum(P * q, axis=K): the product's form is D X with q among D's factors. */
    if (x->kind != A_MAT || n->axis != A->r - 1)
      return refuse(A, n, "a sum that is not over the key axis");
    Fac none = fac_one();
    return contract(A, o, x, &none, n);
  }
  case IR_MATMUL: {
    /* S @ q for a [V, K] state. */
    if (!d0 || d1 || A->r != 2 || f->nodes.v[n->args[1]].type.rank != 1)
      return refuse(A, n, "a matrix product with the state other than S @ q");
    Fac q = fac_one();
    if (factors_of(A, n->args[1], CTX_MAT, &q)) return -1;
    return contract(A, o, x, &q, n);
  }
  case IR_OUTER: {
    /* outer(x, y) with x the vector form: x spread, times y along K. */
    if (!d0 || d1 || A->r != 2 || x->kind != A_VEC)
      return refuse(A, n, "an outer product with the state other than outer(S @ q - v, k)");
    AVal sp = *x;
    sp.spread = 1;
    return scale_form(A, o, &sp, n->args[1], n);
  }
  default:
    return refuse(
        A, n, arena_printf(A->a, "%s of the state (not the delta rule)", ir_op_info[n->op].text));
  }
}

/* The form of `target` as an affine form in X. */
static int analyze(Ana *A, IrRef target, IrRef X) {
  const IrFunc *f = A->f;
  A->X = X;
  memset(A->dep, 0, (size_t)f->nodes.n + 1);
  char *cone = arena_calloc(A->a, (size_t)f->nodes.n + 1, 1);
  if (!cone) return refuse(A, NULL, "out of memory");
  cone[target] = 1;
  for (IrRef r = target; r >= 0; r--)
    if (cone[r] && r != X)
      for (int j = 0; j < f->nodes.v[r].nargs; j++) cone[f->nodes.v[r].args[j]] = 1;
  for (IrRef r = 0; r <= target; r++) {
    const IrNode *n = &f->nodes.v[r];
    A->dep[r] = r == X;
    for (int j = 0; j < n->nargs && !A->dep[r] && r != X; j++) A->dep[r] = A->dep[n->args[j]];
    if (cone[r] && A->dep[r] && rule(A, r)) return -1;
  }
  if (!A->dep[target] || A->val[target].kind != A_MAT)
    return refuse(A, &f->nodes.v[target], "the next value is not a multiple of the state");
  return 0;
}

/* The factor form of `target` in X (one low-rank term, one write), cancelled
 * into g, k, beta, v. */
static int one_factor(Ana *A, IrRef target, IrRef X, DeltaFactor *out) {
  if (analyze(A, target, X)) return -1;
  const IrNode *n = &A->f->nodes.v[target];
  const AVal *v = &A->val[target];
  if (!v->has_d || v->nt != 1 || v->nw != 1)
    return refuse(A, n,
                  v->nt != 1 ? "not one low-rank term (S k) k^T per factor"
                             : "not one rank-one write per factor");
  if (fac_profile(A, &v->d) & ~P_LEAD)
    return refuse(A, n, "a decay along the state's axes (the delta form takes one gate per head)");
  if (v->d.sign < 0) return refuse(A, n, "a negative gate");
  if (fac_profile(A, &v->ta[0]) & P_V) return refuse(A, n, "a low-rank term along the value axis");
  /* b = -beta g k: cancel g and k; beta is what is left, along heads only. */
  Fac beta = v->tb[0];
  if (fac_cancel(A, &beta, &v->d) || fac_cancel(A, &beta, &v->ta[0]))
    return refuse(A, n, "a low-rank term that is not gate * beta * (S k) k^T");
  if (fac_profile(A, &beta) & ~P_LEAD)
    return refuse(A, n, "a low-rank term with different vectors on either side (not k k^T)");
  beta.sign = -beta.sign;
  /* u w^T = beta v k^T: cancel beta and k from the write; v is the rest. */
  Fac all = v->wu[0], vv;
  if (fac_mul(A, &all, &v->ww[0])) return -1;
  Fac bk = beta;
  if (fac_mul(A, &bk, &v->ta[0])) return -1;
  bk.sign = beta.sign; /* k is a's nodes, unsigned */
  vv = all;
  if (fac_cancel(A, &vv, &bk)) return refuse(A, n, "a write that is not beta v k^T");
  if (fac_profile(A, &vv) & P_K) return refuse(A, n, "a write that is not beta v k^T");
  Fac k = v->ta[0];
  k.sign = 1;
  out->gate = v->d;
  out->k = k;
  out->beta = beta;
  out->v = vv;
  return 0;
}

/* The generalized rule: next = D S + (S a) b^T + v k^T with D a decay that
 * may vary along K (and the lead axes) and a, b any vectors along K. */
static int general(Ana *A, IrRef target, IrRef S, DeltaForm *out) {
  if (analyze(A, target, S)) return -1;
  const IrNode *n = &A->f->nodes.v[target];
  const AVal *v = &A->val[target];
  if (!v->has_d || v->nt != 1 || v->nw != 1)
    return refuse(A, n,
                  v->nt != 1 ? "not one low-rank term (S a) b^T per step"
                             : "not one rank-one write per step");
  if (fac_profile(A, &v->d) & P_V) return refuse(A, n, "a decay along the value axis");
  if (v->d.sign < 0) return refuse(A, n, "a negative decay");
  if ((fac_profile(A, &v->ta[0]) | fac_profile(A, &v->tb[0])) & P_V)
    return refuse(A, n, "a low-rank term along the value axis");
  out->general = 1;
  out->R = 1;
  out->d = v->d;
  out->a = v->ta[0];
  out->b = v->tb[0];
  out->v = v->wu[0];
  out->k = v->ww[0];
  return 0;
}

/* The node reading the state (IR_NONE if the step never reads it). */
static IrRef state_node(const Ana *A) {
  for (IrRef r = 0; r < A->f->nodes.n; r++)
    if (A->f->nodes.v[r].op == IR_STATE && A->f->nodes.v[r].index == A->state) return r;
  return IR_NONE;
}

static int chain(Ana *A, IrRef target, DeltaForm *out, int depth) {
  IrRef S = state_node(A);
  const IrFunc *f = A->f;
  A->why = NULL;
  if (S != IR_NONE && one_factor(A, target, S, &out->f[0]) == 0) {
    out->R = 1;
    return 0;
  }
  /* Why target is not one factor of the state, said if no chain is either. */
  const char *why = A->why;
  if (depth + 1 < DELTA_MAX_R) {
    /* Values of the state's type between the state and target, nearest first. */
    const IrType *st = &f->states.v[A->state].type;
    for (IrRef X = target - 1; X >= 0; X--) {
      if (!A->sdep[X] || !ir_type_eq(f->nodes.v[X].type, *st) || f->nodes.v[X].op == IR_STATE)
        continue;
      A->why = NULL;
      DeltaFactor last;
      if (one_factor(A, target, X, &last)) continue;
      if (last.gate.n || last.gate.sign < 0) continue; /* a gate comes with the first factor */
      DeltaForm sub;
      memset(&sub, 0, sizeof sub); /* chain sets R and f only; general stays 0 */
      if (chain(A, X, &sub, depth + 1)) continue;
      *out = sub;
      out->f[out->R++] = last;
      return 0;
    }
  }
  A->why = why;
  return -1;
}

int delta_analyze(Arena *a, const IrFunc *cell, int state, DeltaForm *out, const char **why) {
  memset(out, 0, sizeof *out);
  *why = NULL;
  const IrState *st = &cell->states.v[state];
  Ana A;
  memset(&A, 0, sizeof A);
  A.a = a;
  A.f = cell;
  A.state = state;
  A.r = st->type.rank;
  A.L = A.r - 2;
  if (A.r < 2 || st->type.elem != IR_REAL) {
    *why = "the state is not a real matrix";
    return 1;
  }
  A.val = arena_calloc(a, (size_t)cell->nodes.n + 1, sizeof *A.val);
  A.dep = arena_calloc(a, (size_t)cell->nodes.n + 1, 1);
  A.sdep = arena_calloc(a, (size_t)cell->nodes.n + 1, 1);
  if (!A.val || !A.dep || !A.sdep) return -1;
  for (IrRef r = 0; r < cell->nodes.n; r++) {
    const IrNode *n = &cell->nodes.v[r];
    A.sdep[r] = n->op == IR_STATE && n->index == state;
    for (int j = 0; j < n->nargs && !A.sdep[r]; j++) A.sdep[r] = A.sdep[n->args[j]];
  }
  if (chain(&A, st->next, out, 0)) {
    /* Not DeltaNet's form: the generalized rule, or why not (the reason the
     * wider form gives, which says more). */
    const char *first = A.why;
    IrRef S = state_node(&A);
    A.why = NULL;
    memset(out, 0, sizeof *out);
    if (S == IR_NONE || general(&A, st->next, S, out)) {
      *why = A.why ? A.why : first ? first : "not the delta rule";
      return 1;
    }
  }
  out->rank = A.r;
  return 0;
}

/* ---- building the operands ------------------------------------------------------ */

/* What a product is built as: [L..., K], [L..., V] or [L...]. */
enum { AS_K, AS_V, AS_LEAD };

/* Factor x (a dst node, aligned to ctx for a state of rank r) reshaped to
 * the rank of `as`: the lead axes, then K or V (size 1 where x has none). */
static IrRef shaped(PassBuild *B, int r, IrRef x, int ctx, int as, SrcLoc loc) {
  if (B->failed) return IR_NONE;
  IrType t = B->dst->nodes.v[x].type;
  int rank = ctx == CTX_MAT ? r : r - 1, L = r - 2;
  DimExpr dims[SEQ_MAX_RANK];
  int n = 0;
  for (int ax = 0; ax < L; ax++) dims[n++] = ir_type_aligned(t, rank, ax);
  if (as == AS_V) dims[n++] = ir_type_aligned(t, rank, L);
  if (as == AS_K) dims[n++] = ctx == CTX_MAT ? ir_type_aligned(t, rank, L + 1) : dim_const(1);
  return pb_shape(B, IR_RESHAPE, x, ir_type(B->a, IR_REAL, n, dims), loc);
}

/* The product F as a value of type `t` (its rank that of `as`). */
static IrRef product(PassBuild *B, int r, const Fac *F, int as, IrType t, SrcLoc loc) {
  IrRef p = IR_NONE;
  for (int i = 0; i < F->n; i++) {
    IrRef x = shaped(B, r, B->map(B->ctx, F->x[i]), F->ctx[i], as, loc);
    if (p == IR_NONE) {
      p = x;
    } else {
      IrRef args[2] = {p, x};
      p = pb_node(B, IR_MUL, 2, args, NULL, loc);
    }
  }
  if (p == IR_NONE) p = pb_const(B, 1.0, loc);
  if (F->sign < 0) p = pb_node(B, IR_NEG, 1, &p, NULL, loc);
  return pb_shape(B, IR_BROADCAST, p, t, loc);
}

/* The logarithm of the product g, a sum of its factors' logarithms (0: no
 * factor), built as `as`; IR_NONE with *why for a factor not provably
 * positive, or on failure. */
static IrRef log_of(PassBuild *B, int r, const Fac *g, int as, SrcLoc loc, const char **why) {
  IrRef lg = IR_NONE;
  for (int i = 0; i < g->n && !B->failed; i++) {
    IrRef l = pb_log(B, g->x[i], why);
    if (l == IR_NONE) return IR_NONE;
    l = shaped(B, r, l, g->ctx[i], as, loc);
    if (lg == IR_NONE) {
      lg = l;
    } else {
      IrRef args[2] = {lg, l};
      lg = pb_node(B, IR_ADD, 2, args, NULL, loc);
    }
  }
  return lg == IR_NONE ? pb_const(B, 0.0, loc) : lg;
}

/* dplr_state's operands lw, a, b, v, k: the decay's logarithm and the
 * vectors along K, v along V. */
static int build_general(PassBuild *B, const IrState *st, const DeltaForm *form, DeltaOps *out,
                         const char **why) {
  int r0 = form->rank, L = r0 - 2;
  SrcLoc loc = st->loc;
  DimExpr dk[SEQ_MAX_RANK], dv[SEQ_MAX_RANK];
  for (int i = 0; i < L; i++) dk[i] = dv[i] = st->type.dims[i];
  dv[L] = st->type.dims[L];
  dk[L] = st->type.dims[L + 1];
  IrType tk = ir_type(B->a, IR_REAL, L + 1, dk), tv = ir_type(B->a, IR_REAL, L + 1, dv);
  IrRef lw = log_of(B, r0, &form->d, AS_K, loc, why);
  if (lw == IR_NONE) return B->failed ? -1 : 1;
  out->op = IR_DPLR_STATE;
  out->nargs = 5;
  out->args[0] = pb_shape(B, IR_BROADCAST, lw, tk, loc);
  out->args[1] = product(B, r0, &form->a, AS_K, tk, loc);
  out->args[2] = product(B, r0, &form->b, AS_K, tk, loc);
  out->args[3] = product(B, r0, &form->v, AS_V, tv, loc);
  out->args[4] = product(B, r0, &form->k, AS_K, tk, loc);
  return B->failed ? -1 : 0;
}

int delta_build(Arena *a, const IrFunc *cell, int state, const DeltaForm *form, IrFunc *dst,
                IrRef (*map)(void *ctx, IrRef src), void *ctx, DeltaOps *out, const char **why,
                DiagEngine *de) {
  const IrState *st = &cell->states.v[state];
  PassBuild B = {a, de, "delta", cell, dst, map, ctx, 0};
  SrcLoc loc = st->loc;
  int r0 = form->rank, L = r0 - 2;
  if (form->general) return build_general(&B, st, form, out, why);
  DimExpr dk[SEQ_MAX_RANK], dv[SEQ_MAX_RANK], dl[SEQ_MAX_RANK];
  for (int i = 0; i < L; i++) dk[i + 1] = dv[i + 1] = dl[i + 1] = st->type.dims[i];
  dk[0] = dv[0] = dl[0] = dim_const(1);
  dv[L + 1] = st->type.dims[L];
  dk[L + 1] = st->type.dims[L + 1];
  IrType tk1 = ir_type(a, IR_REAL, L + 2, dk), tv1 = ir_type(a, IR_REAL, L + 2, dv),
         tb1 = ir_type(a, IR_REAL, L + 1, dl), tk = ir_type(a, IR_REAL, L + 1, dk + 1),
         tv = ir_type(a, IR_REAL, L + 1, dv + 1), tl = ir_type(a, IR_REAL, L, dl + 1);
  IrRef ks[DELTA_MAX_R], vs[DELTA_MAX_R], bs[DELTA_MAX_R];
  for (int r = 0; r < form->R; r++) {
    const DeltaFactor *fr = &form->f[r];
    ks[r] = pb_shape(&B, IR_RESHAPE, product(&B, r0, &fr->k, AS_K, tk, loc), tk1, loc);
    vs[r] = pb_shape(&B, IR_RESHAPE, product(&B, r0, &fr->v, AS_V, tv, loc), tv1, loc);
    bs[r] = pb_shape(&B, IR_RESHAPE, product(&B, r0, &fr->beta, AS_LEAD, tl, loc), tb1, loc);
  }
  IrNode cat;
  memset(&cat, 0, sizeof cat);
  cat.axis = 0;
  out->op = IR_DELTA_STATE;
  out->nargs = 4;
  out->args[0] = form->R == 1 ? ks[0] : pb_node(&B, IR_CONCAT, form->R, ks, &cat, loc);
  out->args[1] = form->R == 1 ? vs[0] : pb_node(&B, IR_CONCAT, form->R, vs, &cat, loc);
  out->args[2] = form->R == 1 ? bs[0] : pb_node(&B, IR_CONCAT, form->R, bs, &cat, loc);
  IrRef lg = log_of(&B, r0, &form->f[0].gate, AS_LEAD, loc, why);
  if (lg == IR_NONE) return B.failed ? -1 : 1;
  out->args[3] = pb_shape(&B, IR_BROADCAST, lg, tl, loc);
  return B.failed ? -1 : 0;
}
