/* transition.c - a small dense transition read off a cell's step, for its
 * chunked form (pLSTM in 1D).
 *
 * classify.c proves that a state S is linear with a transition that mixes
 * one of its axes by an S-free matrix (REC_LIN_SMALL_DENSE). The chunked
 * kernel runs one family of such updates, per lead slice (a head) and
 * token, with S in the layout [L..., J, V, K]:
 *
 *   S[j] = sum_j' tr[j, j'] S[j'] + s[j] v k^T
 *
 * tr [L..., J, J] (row: the new j), s [L..., J], v [L..., V], k [L..., K].
 * This file finds them in the step. next must be a sum (or difference) of
 * terms of two kinds:
 *
 *   - a transition: S contracted along J with an S-free matrix, as the
 *     frontend and the rewrite spell it: reshape(T @ reshape(S, [J, V*K]))
 *     for a state without lead axes, or sum(T' * S', axis) where S' is S
 *     with a unit axis inserted next to J and the sum runs over S's J;
 *     several transitions add up, and c * S (c free of V and K) or S itself
 *     is the transition diag(c) or the identity;
 *   - one write: an S-free product of factors, each varying along the lead
 *     axes and at most one of J, V and K (outer(a, b) counts as a along V
 *     and b along K; a factor along none of them is a scalar and goes with
 *     s).
 *
 * Anything else (a diagonal term c * S, a second write, a write that is not
 * such a product, J not third from last) leaves the state to its step loop,
 * and says why. The interpreter runs the plstm ops as their definition, so
 * test_scan checks these steps; the backends run them with the chunked
 * kernel (runtime/cpu_plstm.c).
 */
#include "passes/passes.h"

#include <string.h>

enum { G_J, G_V, G_K }; /* the group of axes a factor varies along */

typedef struct Ana {
  Arena *a;
  const IrFunc *f;
  int state, r, L;
  int any_write; /* the class only: the S-free part may be anything */
  char *dep;     /* per node: reads the state */
  const char *why;
  TransitionForm *out;
  IrRef scale[TRANSITION_MAX_SCALES]; /* of the term being read: S-free factors along J */
  int nscale;
} Ana;

static int refuse(Ana *A, const IrNode *n, const char *what) {
  if (!A->why)
    A->why = n && n->loc.file ? arena_printf(A->a, "%s at %s:%d:%d", what, n->loc.file->name,
                                             n->loc.line, n->loc.col)
                              : what;
  return 1;
}

/* Which of J, V, K a type aligned to rank r varies along: a bit mask. */
static unsigned groups(IrType t, int r, int L) {
  unsigned m = 0;
  for (int g = 0; g < 3; g++)
    if (!dim_is_one(ir_type_aligned(t, r, L + g))) m |= 1u << g;
  return m;
}

static int add_factor(Ana *A, const IrNode *n, IrRef x, int group, int vec) {
  TransitionFac *F = &A->out->fac[group];
  if (F->n == TRANSITION_MAX_FACTORS) return refuse(A, n, "a write of too many factors");
  F->x[F->n] = x;
  F->vec[F->n++] = (signed char)vec;
  return 0;
}

/* The write term x (free of the state), a product of factors. */
static int write_factors(Ana *A, IrRef x) {
  const IrNode *n = &A->f->nodes.v[x];
  unsigned g = groups(n->type, A->r, A->L);
  if (n->type.rank <= A->r && (g & (g - 1)) == 0)
    return add_factor(A, n, x, g == 0 ? G_J : g == 2 ? G_V : g == 4 ? G_K : G_J, 0);
  switch (n->op) {
  case IR_MUL:
    if (n->type.rank > A->r) break;
    return write_factors(A, n->args[0]) || write_factors(A, n->args[1]);
  case IR_NEG:
    A->out->wsign = -A->out->wsign;
    return write_factors(A, n->args[0]);
  case IR_BROADCAST:
    return write_factors(A, n->args[0]);
  case IR_OUTER:
    if (n->type.elem != IR_REAL) break;
    return add_factor(A, n, n->args[0], G_V, 1) || add_factor(A, n, n->args[1], G_K, 1);
  default:
    break;
  }
  return refuse(A, n, "a write that is not a product of factors along J, V and K");
}

/* x is the state S with one unit axis inserted at position p (a reshape,
 * or S itself in a product of one more axis: numpy's alignment puts it
 * first). */
static int expanded_state(Ana *A, IrRef x, int *p) {
  const IrNode *n = &A->f->nodes.v[x];
  if (n->op == IR_STATE && n->index == A->state) {
    *p = 0;
    return 1;
  }
  if (n->op != IR_RESHAPE || A->f->nodes.v[n->args[0]].op != IR_STATE ||
      A->f->nodes.v[n->args[0]].index != A->state || n->type.rank != A->r + 1)
    return 0;
  IrType s = A->f->nodes.v[n->args[0]].type;
  for (int q = 0; q <= A->r; q++) {
    int ok = dim_is_one(n->type.dims[q]);
    for (int i = 0, j = 0; ok && i <= A->r; i++)
      if (i != q) ok = dim_eq(n->type.dims[i], s.dims[j++]);
    if (ok) {
      *p = q;
      return 1;
    }
  }
  return 0;
}

/* One term of next that reads the state, with sign `sign`: a transition. */
static int transition_term(Ana *A, IrRef x, int sign) {
  const IrFunc *f = A->f;
  const IrNode *n = &f->nodes.v[x];
  TransitionForm *F = A->out;
  if (F->nt == TRANSITION_MAX_TERMS) return refuse(A, n, "too many transition terms");
  TransitionTerm *t = &F->t[F->nt];
  t->sign = sign;
  t->nscale = A->nscale;
  memcpy(t->scale, A->scale, sizeof(IrRef) * (size_t)A->nscale);
  /* reshape(T @ reshape(S, [J, V*K])), a state without lead axes. */
  if (n->op == IR_RESHAPE && A->L == 0 && ir_type_eq(n->type, A->f->states.v[A->state].type)) {
    const IrNode *mm = &f->nodes.v[n->args[0]];
    if (mm->op == IR_MATMUL && !A->dep[mm->args[0]] && mm->type.rank == 2) {
      const IrNode *rs = &f->nodes.v[mm->args[1]];
      const IrNode *st = &f->nodes.v[rs->args[0]];
      if (rs->op == IR_RESHAPE && st->op == IR_STATE && st->index == A->state &&
          rs->type.rank == 2 && dim_eq(rs->type.dims[0], st->type.dims[0]) &&
          f->nodes.v[mm->args[0]].type.rank == 2) {
        t->x = mm->args[0];
        t->form = TRANSITION_MATMUL;
        F->nt++;
        return 0;
      }
    }
  }
  /* sum(T' * S', axis) with S' the state and a unit axis next to J. */
  if (n->op == IR_SUM && n->axis >= 0) {
    const IrNode *m = &f->nodes.v[n->args[0]];
    int p = -1, L = A->L;
    if (m->op == IR_MUL && m->type.rank == A->r + 1) {
      int side = expanded_state(A, m->args[0], &p) ? 0 : expanded_state(A, m->args[1], &p) ? 1 : -1;
      IrRef T = side < 0 ? IR_NONE : m->args[1 - side];
      if (T != IR_NONE && !A->dep[T] &&
          ((p == L && n->axis == L + 1) || (p == L + 1 && n->axis == L))) {
        IrType tt = f->nodes.v[T].type;
        if (!dim_is_one(ir_type_aligned(tt, A->r + 1, L + 2)) ||
            !dim_is_one(ir_type_aligned(tt, A->r + 1, L + 3)))
          return refuse(A, n, "a transition that varies along V or K");
        t->x = T;
        t->form = p == L ? TRANSITION_ROWS_FIRST : TRANSITION_COLS_FIRST;
        F->nt++;
        return 0;
      }
    }
  }
  IrRef c = IR_NONE;
  if (n->op == IR_STATE && n->index == A->state) {
    t->x = IR_NONE;
    t->form = TRANSITION_DIAG;
    F->nt++;
    return 0;
  }
  if (n->op == IR_MUL && n->type.rank == A->r) {
    const IrNode *a0 = &f->nodes.v[n->args[0]], *a1 = &f->nodes.v[n->args[1]];
    if (a1->op == IR_STATE && a1->index == A->state) c = n->args[0];
    if (a0->op == IR_STATE && a0->index == A->state) c = n->args[1];
  }
  if (c != IR_NONE && !A->dep[c] && f->nodes.v[c].type.rank <= A->r) {
    if (groups(f->nodes.v[c].type, A->r, A->L) & ~1u)
      return refuse(A, n, "a coefficient of the state that varies along V or K");
    t->x = c;
    t->form = TRANSITION_DIAG;
    F->nt++;
    return 0;
  }
  return refuse(A, n, "a term of the state other than a transition along J");
}

/* The terms of next, a tree of adds, subtracts, negations and products by
 * S-free factors along J (which scale the rows of the transitions and the
 * write below them). */
static int terms(Ana *A, IrRef x, int sign) {
  const IrFunc *f = A->f;
  const IrNode *n = &f->nodes.v[x];
  if (!A->dep[x]) {
    if (A->any_write) return 0;
    if (A->out->has_write) return refuse(A, n, "two writes");
    A->out->has_write = 1;
    A->out->wsign = sign;
    for (int i = 0; i < A->nscale; i++)
      if (add_factor(A, n, A->scale[i], G_J, 0)) return 1;
    return write_factors(A, x);
  }
  if ((n->op == IR_ADD || n->op == IR_SUB) && n->type.rank == A->r)
    return terms(A, n->args[0], sign) || terms(A, n->args[1], n->op == IR_SUB ? -sign : sign);
  if (n->op == IR_NEG) return terms(A, n->args[0], -sign);
  if (n->op == IR_MUL && n->type.rank == A->r && A->dep[n->args[0]] != A->dep[n->args[1]]) {
    IrRef d = n->args[A->dep[n->args[0]] ? 0 : 1], c = n->args[A->dep[n->args[0]] ? 1 : 0];
    const IrNode *dn = &f->nodes.v[d];
    IrType ct = f->nodes.v[c].type;
    if (!(dn->op == IR_STATE && dn->index == A->state) && ct.rank <= A->r &&
        !(groups(ct, A->r, A->L) & ~1u)) {
      if (A->nscale == TRANSITION_MAX_SCALES) return refuse(A, n, "too many factors of a term");
      A->scale[A->nscale++] = c;
      int rc = terms(A, d, sign);
      A->nscale--;
      return rc;
    }
  }
  return transition_term(A, x, sign);
}

int transition_analyze(Arena *a, const IrFunc *cell, int state, int class_only, TransitionForm *out,
                       const char **why) {
  const IrState *st = &cell->states.v[state];
  memset(out, 0, sizeof *out);
  *why = NULL;
  Ana A;
  memset(&A, 0, sizeof A);
  A.a = a, A.f = cell, A.state = state, A.r = st->type.rank, A.L = A.r - 3;
  A.any_write = class_only;
  A.out = out;
  out->rank = A.r;
  if (st->type.elem != IR_REAL || A.r < 3) {
    *why = "the chunked form needs a real state [..., J, V, K]";
    return 1;
  }
  A.dep = arena_calloc(a, (size_t)cell->nodes.n + 1, 1);
  if (!A.dep) return -1;
  for (IrRef r = 0; r < cell->nodes.n; r++) {
    const IrNode *n = &cell->nodes.v[r];
    A.dep[r] = n->op == IR_STATE && n->index == state;
    for (int j = 0; j < n->nargs && !A.dep[r]; j++) A.dep[r] = A.dep[n->args[j]];
  }
  int rc = terms(&A, st->next, 1);
  if (!rc && !out->nt) rc = refuse(&A, &cell->nodes.v[st->next], "no transition term");
  if (rc) *why = A.why;
  return rc;
}

/* The factors F as one value of type t ([L..., G]): each reshaped to its
 * lead axes and group axis (dropping the others, of size 1), multiplied. */
static IrRef product(PassBuild *B, int r, int L, const TransitionFac *F, int group, IrType t,
                     SrcLoc loc) {
  IrRef p = IR_NONE;
  for (int i = 0; i < F->n; i++) {
    IrRef x = B->map(B->ctx, F->x[i]);
    IrType tx = B->dst->nodes.v[x].type;
    DimExpr dims[SEQ_MAX_RANK];
    for (int j = 0; j < L; j++) dims[j] = F->vec[i] ? dim_const(1) : ir_type_aligned(tx, r, j);
    dims[L] = F->vec[i] ? tx.dims[0] : ir_type_aligned(tx, r, L + group);
    x = pb_shape(B, IR_RESHAPE, x, ir_type(B->a, IR_REAL, L + 1, dims), loc);
    p = p == IR_NONE ? x : pb_node2(B, IR_MUL, p, x, loc);
  }
  if (p == IR_NONE) p = pb_const(B, 1.0, loc);
  return pb_shape(B, IR_BROADCAST, p, t, loc);
}

int transition_build(Arena *a, const IrFunc *cell, int state, const TransitionForm *form,
                     IrFunc *dst, IrRef (*map)(void *ctx, IrRef src), void *ctx, IrRef ops[4],
                     DiagEngine *de) {
  const IrState *st = &cell->states.v[state];
  PassBuild B = {a, de, "transition", cell, dst, map, ctx, 0};
  SrcLoc loc = st->loc;
  int r = form->rank, L = r - 3;
  DimExpr d[SEQ_MAX_RANK + 1];
  for (int i = 0; i < L; i++) d[i] = st->type.dims[i];
  DimExpr J = st->type.dims[L];
  d[L] = d[L + 1] = J;
  IrType ttr = ir_type(a, IR_REAL, L + 2, d);
  IrRef tr = IR_NONE;
  for (int i = 0; i < form->nt; i++) {
    const TransitionTerm *t = &form->t[i];
    IrRef x = t->x == IR_NONE ? IR_NONE : map(ctx, t->x);
    if (t->form == TRANSITION_DIAG) { /* diag(c): c as [L..., J, 1] times the identity */
      IrNode eye;
      memset(&eye, 0, sizeof eye);
      eye.dval = J;
      IrRef I = pb_node(&B, IR_EYE, 0, NULL, &eye, loc);
      if (x != IR_NONE) {
        IrType tx = dst->nodes.v[x].type;
        DimExpr e[SEQ_MAX_RANK + 1];
        for (int j = 0; j <= L; j++) e[j] = ir_type_aligned(tx, r, j);
        e[L + 1] = dim_const(1);
        x = pb_shape(&B, IR_RESHAPE, x, ir_type(a, IR_REAL, L + 2, e), loc);
        I = pb_node2(&B, IR_MUL, x, I, loc);
      }
      x = pb_shape(&B, IR_BROADCAST, I, ttr, loc);
    } else if (t->form != TRANSITION_MATMUL) { /* T' aligned to rank r + 1: [L..., a, b, 1, 1] */
      IrType tx = dst->nodes.v[x].type;
      DimExpr e[SEQ_MAX_RANK + 1];
      for (int j = 0; j < L + 2; j++) e[j] = ir_type_aligned(tx, r + 1, j);
      x = pb_shape(&B, IR_RESHAPE, x, ir_type(a, IR_REAL, L + 2, e), loc);
      x = pb_shape(&B, IR_BROADCAST, x, ttr, loc);
      if (t->form == TRANSITION_COLS_FIRST) x = pb_node(&B, IR_TRANSPOSE, 1, &x, NULL, loc);
    }
    for (int j = 0; j < t->nscale; j++) { /* row factors: c as [L..., J, 1] */
      IrRef c = map(ctx, t->scale[j]);
      IrType tc = dst->nodes.v[c].type;
      DimExpr e[SEQ_MAX_RANK + 1];
      for (int i2 = 0; i2 <= L; i2++) e[i2] = ir_type_aligned(tc, r, i2);
      e[L + 1] = dim_const(1);
      c = pb_shape(&B, IR_RESHAPE, c, ir_type(a, IR_REAL, L + 2, e), loc);
      x = pb_node2(&B, IR_MUL, c, x, loc);
    }
    if (t->sign < 0) x = pb_node(&B, IR_NEG, 1, &x, NULL, loc);
    tr = tr == IR_NONE ? x : pb_node2(&B, IR_ADD, tr, x, loc);
  }
  d[L] = J;
  IrType tj = ir_type(a, IR_REAL, L + 1, d);
  d[L] = st->type.dims[L + 1];
  IrType tv = ir_type(a, IR_REAL, L + 1, d);
  d[L] = st->type.dims[L + 2];
  IrType tk = ir_type(a, IR_REAL, L + 1, d);
  IrRef s = product(&B, r, L, &form->fac[G_J], G_J, tj, loc);
  if (!form->has_write) s = pb_shape(&B, IR_BROADCAST, pb_const(&B, 0.0, loc), tj, loc);
  if (form->wsign < 0) s = pb_node(&B, IR_NEG, 1, &s, NULL, loc);
  ops[0] = tr;
  ops[1] = s;
  ops[2] = product(&B, r, L, &form->fac[G_V], G_V, tv, loc);
  ops[3] = product(&B, r, L, &form->fac[G_K], G_K, tk, loc);
  return B.failed ? -1 : 0;
}
