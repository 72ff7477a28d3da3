/* sema.c - from a parsed program to an IrModule: the pipeline (load files,
 * lower cells, then models callees-first, pick the entry, verify), and the
 * declarative half of lowering a unit: dims, types, declarations, state
 * initializers and layers. Bodies (step, forward) are lowered in lower.c.
 *
 * Every user error is a diagnostic at the AST location it concerns; lowering
 * goes on after an error (with REF_ERROR standing for the broken value) so
 * that one run reports several independent mistakes.
 */
#include "frontend/sema.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- Small helpers ----------------------------------------------------------- */

void sema_oom(Sema *S) {
  if (!S->oom) diag_error(S->de, (SrcLoc){0}, "out of memory");
  S->oom = 1;
  /* diag_error counts the error even when it cannot record it, so the
   * compilation fails either way. */
}

/* Optimal string alignment distance (Levenshtein plus adjacent swaps), cut
 * off early: only distances up to 2 matter for suggestions. */
static int edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  if (n > SEQ_MAX_IDENT_LEN * 2 || m > SEQ_MAX_IDENT_LEN * 2) return 99;
  if (n > m + 2 || m > n + 2) return 3;
  int rows[3][SEQ_MAX_IDENT_LEN * 2 + 2];
  int *pp = rows[0], *prev = rows[1], *cur = rows[2];
  for (size_t j = 0; j <= m; j++) prev[j] = (int)j;
  for (size_t i = 1; i <= n; i++) {
    cur[0] = (int)i;
    for (size_t j = 1; j <= m; j++) {
      int cost = a[i - 1] != b[j - 1];
      int best = prev[j - 1] + cost;
      if (prev[j] + 1 < best) best = prev[j] + 1;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && pp[j - 2] + 1 < best)
        best = pp[j - 2] + 1;
      cur[j] = best;
    }
    int *t = pp;
    pp = prev;
    prev = cur;
    cur = t;
  }
  return prev[m];
}

/* The closest candidate within edit distance 2, or NULL. A candidate must be
 * closer than the name is long, so `x` does not suggest `y`. */
const char *sema_suggest(const char *name, const char *const *cands, int n) {
  const char *best = NULL;
  int bestd = 3;
  int len = (int)strlen(name);
  for (int i = 0; i < n; i++) {
    if (!cands[i] || strcmp(cands[i], name) == 0) continue;
    int d = edit_distance(name, cands[i]);
    if (d < bestd && d < len) {
      bestd = d;
      best = cands[i];
    }
  }
  return best;
}

char *sema_path_str(Arena *a, const AstPath *p) {
  if (p->nparts <= 0) return arena_strdup(a, "");
  char *s = arena_strdup(a, p->parts[0]);
  for (int i = 1; i < p->nparts && s; i++) s = arena_printf(a, "%s.%s", s, p->parts[i]);
  return s;
}

/* Where an expression's text begins. A binary node is located at its
 * operator (where an operand mismatch belongs); a message about the whole
 * value (its shape against a declaration) points at its first token. */
SrcLoc sema_expr_start(const AstExpr *e) {
  while (e->kind == AST_BINARY && e->lhs) e = e->lhs;
  return e->loc;
}

/* "[4*H, I]", "complex[H, N]", "int": the spelling of ir_print_type, for
 * messages that name a declared shape. */
const char *sema_type_str(Lower *L, IrType t) {
  if (t.elem == IR_INT && t.rank == 0) return "int";
  const char **names = NULL;
  if (L->f->dims.n) {
    names = arena_calloc(L->a, (size_t)L->f->dims.n, sizeof *names);
    if (!names) return "?";
    for (int i = 0; i < L->f->dims.n; i++) names[i] = L->f->dims.v[i].name;
  }
  const char *s = t.elem == IR_COMPLEX ? "complex[" : "[";
  for (int i = 0; i < t.rank && s; i++) {
    const char *d = dim_str(L->a, t.dims[i], names);
    s = arena_printf(L->a, "%s%s%s", s, i ? ", " : "", d ? d : "?");
  }
  s = s ? arena_printf(L->a, "%s]", s) : NULL;
  return s ? s : "?";
}

/* Looks a declared name up among params, inputs, states (not hidden ones),
 * outputs and layers. Returns its kind (DECL_NONE if absent). */
int sema_find_decl(const Lower *L, const char *name, int *index) {
  const IrFunc *f = L->f;
  for (int i = 0; i < f->params.n; i++)
    if (strcmp(f->params.v[i].name, name) == 0) return *index = i, DECL_PARAM;
  for (int i = 0; i < f->inputs.n; i++)
    if (strcmp(f->inputs.v[i].name, name) == 0) return *index = i, DECL_INPUT;
  for (int i = 0; i < f->states.n; i++)
    if (!f->states.v[i].hidden && strcmp(f->states.v[i].name, name) == 0)
      return *index = i, DECL_STATE;
  for (int i = 0; i < f->outputs.n; i++)
    if (strcmp(f->outputs.v[i].name, name) == 0) return *index = i, DECL_OUTPUT;
  for (int i = 0; i < L->layer_decls.n; i++)
    if (strcmp(L->layer_decls.v[i].name, name) == 0) return *index = i, DECL_LAYER;
  return DECL_NONE;
}

static SrcLoc decl_loc(const Lower *L, int kind, int i) {
  switch (kind) {
  case DECL_PARAM:
    return L->f->params.v[i].loc;
  case DECL_INPUT:
    return L->f->inputs.v[i].loc;
  case DECL_STATE:
    return L->f->states.v[i].loc;
  case DECL_OUTPUT:
    return L->f->outputs.v[i].loc;
  case DECL_LAYER:
    return L->layer_decls.v[i].loc;
  }
  return (SrcLoc){0};
}

static int find_unit(const Sema *S, const char *name) {
  for (int i = 0; i < S->units.n; i++)
    if (strcmp(S->units.v[i].ast->name, name) == 0) return i;
  return -1;
}

/* ---- Dimension expressions ---------------------------------------------------- */

static const char dim_expr_rule[] =
    "dimension expressions may only use integers, dims, +, -, * and /";

/* "NH*Dh": a dim expression over f's dims, for messages. */
static const char *fn_dim_str(Lower *L, const IrFunc *f, DimExpr e) {
  const char **names = arena_calloc(L->a, (size_t)f->dims.n + 1, sizeof *names);
  if (!names) return "?";
  for (int i = 0; i < f->dims.n; i++) names[i] = f->dims.v[i].name;
  const char *s = dim_str(L->a, e, names);
  return s ? s : "?";
}

static const char *dim_expr_str(Lower *L, DimExpr e) {
  return fn_dim_str(L, L->f, e);
}

/* The quotient that has dim v as its numerator (D of Dh = D / NH), or NULL. */
static const IrDimQuotient *quotient_of_num(const IrFunc *f, int v) {
  for (int i = 0; i < f->dim_quotients.n; i++)
    if (f->dim_quotients.v[i].num == v) return &f->dim_quotients.v[i];
  return NULL;
}

/* The quotient dim v is (Dh of Dh = D / NH), or NULL. */
static const IrDimQuotient *quotient_dim(const IrFunc *f, int v) {
  for (int i = 0; i < f->dim_quotients.n; i++)
    if (f->dim_quotients.v[i].dim == v) return &f->dim_quotients.v[i];
  return NULL;
}

static int int_literal(const AstExpr *e, int64_t *out) {
  if (e->text) {
    errno = 0;
    char *end;
    long long v = strtoll(e->text, &end, 10);
    if (errno || *end) return -1;
    *out = (int64_t)v;
    return 0;
  }
  if (e->num < -9.2e18 || e->num > 9.2e18) return -1;
  *out = (int64_t)e->num;
  return 0;
}

/* x / y in a dimension expression: exact for every value of the dims
 * ((4*H) / 2, (NH*Dh) / NH, and D / NH once the header has Dh = D / NH), or
 * an error that says how to make it so. */
static int dim_quotient(Lower *L, const AstExpr *e, DimExpr x, DimExpr y, DimExpr *out) {
  int64_t k;
  if (dim_is_const(y, &k) && k <= 0) {
    diag_error(L->de, e->loc, "dimension expression divides by %lld", (long long)k);
    return -1;
  }
  if (y.nterms == 1 && y.t[0].coef > 0 && dim_div_term(x, y, out) == 0) return 0;
  const char *xs = dim_expr_str(L, x), *ys = dim_expr_str(L, y);
  if (y.nterms != 1 || y.t[0].coef <= 0)
    diag_error(L->de, e->loc,
               "a dimension can only be divided by a positive integer, a dim or a product of "
               "them, not %s",
               ys);
  else if (x.nterms == 1 && x.t[0].nvars == 1 && x.t[0].coef == 1)
    diag_error(L->de, e->loc,
               "%s / %s is not a whole number for every %s: name the quotient in the header of "
               "'%s' (e.g. `%s_per = %s / %s`), so that binding checks that %s divides %s",
               xs, ys, xs, L->unit->name, xs, xs, ys, ys, xs);
  else
    diag_error(L->de, e->loc, "%s / %s is not a whole number for every value of its dims", xs, ys);
  return -1;
}

static int dim_expr_rec(Lower *L, const AstExpr *e, DimExpr *out, int depth) {
  if (depth > SEQ_MAX_NESTING) {
    diag_error(L->de, e->loc, "dimension expression is nested too deeply");
    return -1;
  }
  switch (e->kind) {
  case AST_NUM: {
    int64_t v;
    if (!e->is_int) break;
    if (int_literal(e, &v)) {
      diag_error(L->de, e->loc, "integer %s is too large for a dimension", e->text ? e->text : "");
      return -1;
    }
    *out = dim_const(v);
    return 0;
  }
  case AST_NAME: {
    if (e->primed || e->path.nparts != 1) break;
    const char *name = e->path.parts[0];
    /* A range loop's counter is a constant here. */
    for (int i = L->env.n - 1; i >= L->fn_env_base; i--)
      if (strcmp(L->env.v[i].name, name) == 0) {
        if (!L->env.v[i].is_index) break;
        return *out = dim_const(L->env.v[i].index), 0;
      }
    for (int i = 0; i < L->nsig; i++) {
      if (strcmp(L->f->dims.v[i].name, name) != 0) continue;
      /* A divided dim is its divisor times its quotient: D is NH*Dh. */
      const IrDimQuotient *q = quotient_of_num(L->f, i);
      if (q && q->dim < L->nsig) {
        if (dim_mul(q->den, dim_var(q->dim), out)) goto too_big;
        return 0;
      }
      return *out = dim_var(i), 0;
    }
    const char **cands = arena_calloc(L->a, (size_t)L->nsig + 1, sizeof *cands);
    for (int i = 0; cands && i < L->nsig; i++) cands[i] = L->f->dims.v[i].name;
    const char *s = cands ? sema_suggest(name, cands, L->nsig) : NULL;
    if (s)
      diag_error(L->de, e->loc, "unknown dimension '%s' (did you mean '%s'?)", name, s);
    else
      diag_error(L->de, e->loc, "unknown dimension '%s'", name);
    return -1;
  }
  case AST_UNARY: {
    DimExpr x;
    if (e->op != '-' && e->op != '+') break;
    if (dim_expr_rec(L, e->lhs, &x, depth + 1)) return -1;
    if (e->op == '+') return *out = x, 0;
    if (dim_sub(dim_const(0), x, out)) goto too_big;
    return 0;
  }
  case AST_BINARY: {
    DimExpr x, y;
    if (e->op != '+' && e->op != '-' && e->op != '*' && e->op != '/') break;
    if (dim_expr_rec(L, e->lhs, &x, depth + 1) || dim_expr_rec(L, e->rhs, &y, depth + 1)) return -1;
    if (e->op == '/') return dim_quotient(L, e, x, y, out);
    int r = e->op == '+'   ? dim_add(x, y, out)
            : e->op == '-' ? dim_sub(x, y, out)
                           : dim_mul(x, y, out);
    if (r) goto too_big;
    return 0;
  }
  default:
    break;
  }
  diag_error(L->de, e->loc, "%s", dim_expr_rule);
  return -1;
too_big:
  diag_error(L->de, e->loc,
             "dimension expression is too large or too complex (at most %d terms of degree %d)",
             DIM_MAX_TERMS, DIM_MAX_DEGREE);
  return -1;
}

/* Lowers a dimension expression over the unit's header dims. Reports and
 * returns -1 on error. */
int sema_dim_expr(Lower *L, const AstExpr *e, DimExpr *out) {
  return dim_expr_rec(L, e, out, 0);
}

/* ---- Dims and declarations ---------------------------------------------------- */

/* A header default `Dh = D / NH` that is not exact by itself: D a dim of
 * this header, NH one term over its earlier dims. Fills *q (but for its dim)
 * and returns 0; returns 0 with q->num = -1 for any other default, which
 * lowers as an expression; -1 after reporting. From here on D is NH*Dh in
 * this unit (dim_expr_rec). */
static int header_quotient(Lower *L, const AstDimParam *p, IrDimQuotient *q) {
  const AstExpr *e = p->deflt;
  if (e->kind != AST_BINARY || e->op != '/' || e->lhs->kind != AST_NAME || e->lhs->primed ||
      e->lhs->path.nparts != 1)
    return 0;
  int num = -1;
  for (int i = 0; i < L->nsig; i++)
    if (strcmp(L->f->dims.v[i].name, e->lhs->path.parts[0]) == 0) num = i;
  if (num < 0) return 0;
  DimExpr x, y, r;
  if (sema_dim_expr(L, e->lhs, &x) || sema_dim_expr(L, e->rhs, &y)) return -1;
  if (y.nterms == 1 && y.t[0].coef > 0 && dim_div_term(x, y, &r) == 0) return 0; /* exact */
  if (y.nterms != 1 || y.t[0].coef <= 0) return 0; /* dim_quotient reports it */
  const char *name = L->f->dims.v[num].name;
  for (int k = 0; k < y.t[0].nvars; k++)
    if (y.t[0].vars[k] == num) {
      diag_error(L->de, e->loc, "'%s' divides %s by a multiple of itself", p->name, name);
      return -1;
    }
  /* One level only: D is not itself a quotient, nor divided twice, nor in
   * an earlier divisor (whose expression would then be stale). */
  for (int i = 0; i < L->f->dim_quotients.n; i++) {
    const IrDimQuotient *o = &L->f->dim_quotients.v[i];
    int in_den = 0;
    for (int k = 0; k < o->den.t[0].nvars; k++) in_den |= o->den.t[0].vars[k] == num;
    if (o->num == num || o->dim == num || in_den) {
      diag_error(L->de, e->loc,
                 "dimension '%s' is already part of the quotient '%s' (a dim takes part in one "
                 "quotient at most)",
                 name, L->f->dims.v[o->dim].name);
      return -1;
    }
  }
  /* A default between D and Dh reads D itself, which a layer passing only
   * Dh would not have yet (sema_finalize_layer): Dh must come first. */
  for (int i = 0; i < L->f->dim_defaults.n; i++) {
    const IrDimDefault *d = &L->f->dim_defaults.v[i];
    int uses = 0;
    for (int t = 0; t < d->expr.nterms; t++)
      for (int k = 0; k < d->expr.t[t].nvars; k++) uses |= d->expr.t[t].vars[k] == num;
    if (uses) {
      diag_error(L->de, e->loc,
                 "the default of '%s' reads '%s', which '%s' divides: declare '%s' before '%s'",
                 L->f->dims.v[d->dim].name, name, p->name, p->name, L->f->dims.v[d->dim].name);
      return -1;
    }
  }
  *q = (IrDimQuotient){.num = num, .den = y, .loc = e->loc};
  return 0;
}

static void declare_dims(Lower *L) {
  const AstUnit *u = L->unit;
  for (int i = 0; i < u->ndims; i++) {
    const AstDimParam *p = &u->dims[i];
    int dup = 0;
    for (int k = 0; k < L->f->dims.n && !dup; k++) {
      if (strcmp(L->f->dims.v[k].name, p->name) == 0) {
        diag_error(L->de, p->loc, "duplicate dimension '%s'", p->name);
        diag_note(L->de, L->f->dims.v[k].loc, "'%s' was first declared here", p->name);
        dup = 1;
      }
    }
    IrDim d = {0};
    /* A duplicate still takes a slot so that positional layer arguments keep
     * lining up with the header; its name cannot be looked up twice anyway. */
    d.name = dup ? arena_printf(L->a, "%s#%d", p->name, i) : p->name;
    d.loc = p->loc;
    d.in_signature = 1;
    /* A default is an integer, or a dim expression over the dims declared
     * before this one (d_inner = 2*d_model): only those are visible. */
    DimExpr e = dim_const(0);
    int64_t v = 0;
    int is_expr = 0;
    L->nsig = L->f->dims.n;
    IrDimQuotient quo = {.num = -1};
    if (p->deflt && header_quotient(L, p, &quo) < 0) {
      /* reported */
    } else if (quo.num >= 0) {
      /* Dh = D / NH: recorded below, once Dh has its index. */
    } else if (p->deflt && sema_dim_expr(L, p->deflt, &e) == 0) {
      if (!dim_is_const(e, &v))
        is_expr = 1;
      else if (v < 0 || v > SEQ_MAX_DIM_VALUE)
        diag_error(L->de, p->deflt->loc, "the default of dimension '%s' must be between 0 and %lld",
                   p->name, (long long)SEQ_MAX_DIM_VALUE);
      else
        d.has_default = 1, d.deflt = v;
    }
    if (!d.name || vec_push(L->a, &L->f->dims, d)) {
      sema_oom(L->S);
      return;
    }
    IrDimDefault dd = {L->f->dims.n - 1, e};
    if (is_expr && vec_push(L->a, &L->f->dim_defaults, dd)) {
      sema_oom(L->S);
      return;
    }
    quo.dim = L->f->dims.n - 1;
    if (quo.num >= 0 && vec_push(L->a, &L->f->dim_quotients, quo)) {
      sema_oom(L->S);
      return;
    }
  }
  L->nsig = L->f->dims.n;
}

/* The default expression of dim v of f, or NULL. */
static const DimExpr *dim_default_expr(const IrFunc *f, int v) {
  for (int i = 0; i < f->dim_defaults.n; i++)
    if (f->dim_defaults.v[i].dim == v) return &f->dim_defaults.v[i].expr;
  return NULL;
}

/* The type after ':' in a declaration. `int` is a token index and only an
 * input can carry one. */
static int lower_type(Lower *L, const AstType *t, int kind, IrType *out) {
  if (t->elem == AST_TY_INT) {
    if (kind != DECL_INPUT) {
      diag_error(L->de, t->loc, "only inputs can have type int (a token index)");
      return -1;
    }
    *out = ir_scalar(IR_INT);
    return 0;
  }
  if (t->ndims > SEQ_MAX_RANK) {
    diag_error(L->de, t->loc, "a type may have at most %d dimensions, not %d", SEQ_MAX_RANK,
               t->ndims);
    return -1;
  }
  DimExpr dims[SEQ_MAX_RANK];
  int bad = 0;
  for (int i = 0; i < t->ndims; i++) {
    int64_t v;
    if (sema_dim_expr(L, t->dims[i], &dims[i])) {
      bad = 1;
    } else if (dim_is_const(dims[i], &v) && (v < 0 || v > SEQ_MAX_DIM_VALUE)) {
      diag_error(L->de, t->dims[i]->loc, "dimension %lld is out of range", (long long)v);
      bad = 1;
    }
  }
  if (bad) return -1;
  *out = ir_type(L->a, t->elem == AST_TY_COMPLEX ? IR_COMPLEX : IR_REAL, t->ndims, dims);
  if (out->rank != t->ndims) {
    sema_oom(L->S);
    return -1;
  }
  return 0;
}

static const char *const decl_kind_name[] = {"", "param", "input", "state", "output", "layer"};

/* def NAME(p1, ...) = body: the name may not be a builtin's (a call would be
 * ambiguous) nor repeat one of `earlier`; parameters must be distinct.
 * Returns 0 if the definition is usable. */
static int check_def(Sema *S, const AstDecl *d, const AstDecl *const *earlier, int nearlier) {
  const char *name = d->name.parts[0];
  if (lower_is_builtin(name)) {
    diag_error(S->de, d->name.loc, "function '%s' has the name of a builtin", name);
    return -1;
  }
  for (int i = 0; i < nearlier; i++)
    if (strcmp(earlier[i]->name.parts[0], name) == 0) {
      diag_error(S->de, d->name.loc, "duplicate function '%s'", name);
      diag_note(S->de, earlier[i]->name.loc, "'%s' was first defined here", name);
      return -1;
    }
  for (int i = 0; i < d->nfparams; i++)
    for (int k = 0; k < i; k++)
      if (strcmp(d->fparams[i], d->fparams[k]) == 0) {
        diag_error(S->de, d->fparam_locs[i], "function '%s' has two parameters named '%s'", name,
                   d->fparams[i]);
        return -1;
      }
  return 0;
}

static void lower_layer_decl(Lower *L, const AstDecl *d, const char *name);

static void declare_decls(Lower *L) {
  const AstUnit *u = L->unit;
  for (int i = 0; i < u->ndecls; i++) {
    const AstDecl *d = u->decls[i];
    if (!d) continue;
    char *name = sema_path_str(L->a, &d->name);
    if (!name) {
      sema_oom(L->S);
      return;
    }
    if (d->kind == AST_DEF) {
      if (check_def(L->S, d, L->defs.v, L->defs.n) == 0 && vec_push(L->a, &L->defs, d))
        sema_oom(L->S);
      continue;
    }
    if (d->kind != AST_PARAM && d->name.nparts > 1) {
      diag_error(L->de, d->name.loc, "only parameter names may contain dots");
      continue;
    }
    int prev, pk = sema_find_decl(L, name, &prev);
    if (pk != DECL_NONE) {
      diag_error(L->de, d->name.loc, "duplicate declaration '%s'", name);
      diag_note(L->de, decl_loc(L, pk, prev), "'%s' was first declared here (as a %s)", name,
                decl_kind_name[pk]);
      continue;
    }
    if (d->kind == AST_STATE && u->kind == AST_MODEL) {
      diag_error(L->de, d->loc, "models have no states; put the recurrence in a cell");
      continue;
    }
    if (d->kind == AST_LAYER) {
      if (u->kind == AST_CELL)
        diag_error(L->de, d->loc, "cells cannot contain layers; compose cells in a model");
      else
        lower_layer_decl(L, d, name);
      continue;
    }
    static const int kinds[] = {[AST_PARAM] = DECL_PARAM,
                                [AST_INPUT] = DECL_INPUT,
                                [AST_STATE] = DECL_STATE,
                                [AST_OUTPUT] = DECL_OUTPUT};
    IrType t;
    unsigned char bad = 0;
    if (lower_type(L, &d->type, kinds[d->kind], &t)) {
      /* Declare it anyway, as a scalar, so uses report no "unknown name";
       * marked bad, so its uses report nothing more (one mistake, one
       * diagnostic: no "matrix product of [] and [H]" after it). */
      t = ir_scalar(IR_REAL);
      bad = 1;
    }
    /* A grid cell's per-step values are rows of Y positions. */
    if (L->grid &&
        (d->kind == AST_STATE || d->kind == AST_OUTPUT || (d->kind == AST_INPUT && !d->context))) {
      DimExpr dims[SEQ_MAX_RANK];
      if (t.rank + 1 > SEQ_MAX_RANK) {
        diag_error(L->de, d->type.loc, "a grid cell's values have at most %d dimensions",
                   SEQ_MAX_RANK - 1);
        t = ir_scalar(IR_REAL);
        bad = 1;
      }
      dims[0] = L->grid_dim;
      for (int k = 0; k < t.rank; k++) dims[k + 1] = t.dims[k];
      t = ir_type(L->a, t.elem, t.rank + 1, dims);
      if (t.elem == IR_INT && !bad) {
        diag_error(L->de, d->type.loc, "a grid cell takes no int tokens");
        bad = 1;
      }
    }
    int err = 0;
    switch (d->kind) {
    case AST_PARAM: {
      IrParam p = {name, t, d->name.loc};
      err = vec_push(L->a, &L->f->params, p) || vec_push(L->a, &L->bad_params, bad);
      break;
    }
    case AST_INPUT: {
      if (d->context && !bad && t.elem == IR_INT && u->kind == AST_CELL) {
        diag_error(L->de, d->type.loc,
                   "an int context gives lengths to a layer run over a context's positions, "
                   "so only a model declares one");
        bad = 1;
      }
      IrInput in = {name, t, d->name.loc, d->context};
      err = vec_push(L->a, &L->f->inputs, in) || vec_push(L->a, &L->bad_inputs, bad);
      break;
    }
    case AST_STATE: {
      IrState s = {name, t, d->name.loc, IR_NONE, IR_NONE, 0};
      StateSlot slot = {IR_NONE, IR_NONE, {0}, d, bad};
      err = vec_push(L->a, &L->f->states, s) || vec_push(L->a, &L->states, slot);
      break;
    }
    case AST_OUTPUT: {
      IrOutput o = {name, t, d->name.loc, IR_NONE};
      OutputSlot slot = {0, {0}, bad};
      err = vec_push(L->a, &L->f->outputs, o) || vec_push(L->a, &L->outputs, slot);
      break;
    }
    default:
      break;
    }
    if (err) {
      sema_oom(L->S);
      return;
    }
  }
}

/* State initializers run once, before the first step, so they may read only
 * what exists then: params, dims and constants. They are lowered into the
 * cell's own node array and broadcast to the state's type. */
static void lower_state_inits(Lower *L) {
  for (int si = 0; si < L->states.n; si++) {
    const AstDecl *d = L->states.v[si].decl;
    if (!d || L->states.v[si].bad) continue;
    const char *name = L->f->states.v[si].name;
    IrRef v;
    SrcLoc at = d->init ? sema_expr_start(d->init) : d->name.loc;
    if (d->init) {
      L->mode = MODE_INIT;
      L->init_state = name;
      v = lower_expr(L, d->init);
      L->mode = MODE_STEP;
    } else {
      v = lower_const(L, 0.0, at);
    }
    char *what = arena_printf(L->a, "the initial value of state '%s'", name);
    IrType t = L->f->states.v[si].type;
    if (L->grid) { /* one position's value: the left border; the row of them */
      v = lower_broadcast_to(L, v, sema_grid_pos_type(t), at, what ? what : "");
      L->grid_border[si] = v;
    }
    L->f->states.v[si].init = lower_broadcast_to(L, v, t, at, what ? what : "");
  }
}

IrType sema_grid_pos_type(IrType t) {
  IrType p = t;
  if (t.rank > 0) {
    p.rank = t.rank - 1;
    p.dims = t.rank > 1 ? t.dims + 1 : NULL;
  }
  return p;
}

/* step grid(Y): Y must be known when compiling (the step is lowered once per
 * position of a row). */
static void declare_grid(Lower *L) {
  const AstExpr *g = L->unit->grid;
  if (!g) return;
  int64_t y;
  if (sema_known_value(L, g, "a grid's row length", 1, SEQ_MAX_DIM_VALUE, &y)) return;
  /* Its value, fixed now: the row is Y values gathered one by one. */
  L->grid_dim = dim_const(y);
  L->grid = y;
  L->f->grid = y;
}

/* ---- Layers --------------------------------------------------------------------- */

/* Replaces every "{i}" in a prefix or suffix template by the array index. */
static char *subst_index(Arena *a, const char *tmpl, int index) {
  char *s = arena_strdup(a, "");
  const char *p = tmpl;
  while (s && *p) {
    const char *hit = strstr(p, "{i}");
    if (!hit) {
      s = arena_printf(a, "%s%s", s, p);
      break;
    }
    s = arena_printf(a, "%s%.*s%d", s, (int)(hit - p), p, index);
    p = hit + 3;
  }
  return s;
}

/* The value of a count the compiler unrolls (a layer array's length, a
 * loop's bound): an integer, or an expression over dims whose values are
 * known now (FrontendOptions overrides, else defaults). `what` names it in
 * errors ("the length of layer array 'l'"). The dims it uses are then fixed
 * for this unit: a caller may not rebind them to another value, and binding
 * the unit (weights, --dims) starts from these values, so weights of another
 * size are an error rather than a count that no longer matches. Returns -1
 * after reporting. */
int sema_known_value(Lower *L, const AstExpr *x, const char *what, int64_t lo, int64_t hi,
                     int64_t *out) {
  DimExpr e;
  if (sema_dim_expr(L, x, &e)) return -1;
  const FrontendOptions *opt = L->S->opt;
  int64_t *vals = arena_calloc(L->a, (size_t)L->nsig + 1, sizeof *vals);
  if (!vals) {
    sema_oom(L->S);
    return -1;
  }
  /* Header dims in order, so that a default expression finds the dims it
   * uses (always earlier ones) already valued. */
  unsigned char *known = arena_calloc(L->a, (size_t)L->nsig + 1, 1);
  if (!known) {
    sema_oom(L->S);
    return -1;
  }
  for (int v = 0; v < L->nsig; v++) {
    const IrDim *dim = &L->f->dims.v[v];
    for (int j = 0; opt && j < opt->ndim_overrides; j++) {
      if (opt->dim_override_names && opt->dim_override_values &&
          strcmp(opt->dim_override_names[j], dim->name) == 0) {
        vals[v] = opt->dim_override_values[j];
        known[v] = 1;
      }
    }
    const DimExpr *de = dim_default_expr(L->f, v);
    const IrDimQuotient *q = quotient_dim(L->f, v);
    if (!known[v] && dim->has_default) {
      vals[v] = dim->deflt;
      known[v] = 1;
    } else if (!known[v] && q) {
      int all = known[q->num];
      for (int k = 0; k < q->den.t[0].nvars; k++) all &= known[q->den.t[0].vars[k]];
      int64_t den;
      if (all && dim_eval(q->den, vals, &den) == 0) {
        if (den == 0 || vals[q->num] % den != 0) {
          diag_error(L->de, x->loc,
                     "%s needs dimension '%s' = %s / %s, but %s = %lld is not a multiple of "
                     "%lld",
                     what, dim->name, L->f->dims.v[q->num].name, dim_expr_str(L, q->den),
                     L->f->dims.v[q->num].name, (long long)vals[q->num], (long long)den);
          return -1;
        }
        vals[v] = vals[q->num] / den;
        known[v] = 1;
      }
    } else if (!known[v] && de) {
      int all = 1;
      for (int t = 0; t < de->nterms; t++)
        for (int k = 0; k < de->t[t].nvars; k++) all &= known[de->t[t].vars[k]];
      known[v] = all && dim_eval(*de, vals, &vals[v]) == 0;
    }
  }
  for (int t = 0; t < e.nterms; t++) {
    for (int k = 0; k < e.t[t].nvars; k++) {
      int v = e.t[t].vars[k];
      const IrDim *dim = &L->f->dims.v[v];
      if (!known[v]) {
        diag_error(L->de, x->loc,
                   "%s must be known when compiling, but dimension '%s' has no default (give it "
                   "one, or set it with --dims %s=...)",
                   what, dim->name, dim->name);
        return -1;
      }
    }
  }
  int64_t n;
  if (dim_eval(e, vals, &n) || n < lo || n > hi) {
    diag_error(L->de, x->loc, "%s must be between %lld and %lld", what, (long long)lo,
               (long long)hi);
    return -1;
  }
  SemaUnit *su = &L->S->units.v[L->unit_index];
  for (int t = 0; t < e.nterms; t++)
    for (int k = 0; k < e.t[t].nvars; k++) {
      int v = e.t[t].vars[k];
      IrDimPin pin = {v, vals[v], x->loc};
      if (vec_push(L->a, &su->count_dims, v) || vec_push(L->a, &su->count_values, vals[v]) ||
          vec_push(L->a, &L->f->dim_pins, pin))
        sema_oom(L->S);
    }
  *out = n;
  return 0;
}

/* Binds the callee's header dims from the layer's arguments: positional in
 * header order, or D=expr by name; each is an expression over the caller's
 * dims. Returns -1 after reporting. */
static int bind_layer_dims(Lower *L, const AstDecl *d, const IrFunc *cf, const SemaUnit *cu,
                           DimExpr *args, unsigned char *bound) {
  int ncsig = 0;
  while (ncsig < cf->dims.n && cf->dims.v[ncsig].in_signature) ncsig++;
  int npos = 0, bad = 0;
  for (int i = 0; i < d->nargs; i++) {
    const AstExpr *a = d->args[i];
    int v = -1;
    const AstExpr *val = a;
    if (a->kind == AST_KWARG) {
      for (int k = 0; k < ncsig; k++)
        if (strcmp(cf->dims.v[k].name, a->kwname) == 0) v = k;
      if (v < 0) {
        const char **cands = arena_calloc(L->a, (size_t)ncsig + 1, sizeof *cands);
        for (int k = 0; cands && k < ncsig; k++) cands[k] = cf->dims.v[k].name;
        const char *s = cands ? sema_suggest(a->kwname, cands, ncsig) : NULL;
        diag_error(L->de, a->loc, "'%s' has no dimension '%s'%s%s%s", cf->name, a->kwname,
                   s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
        bad = 1;
        continue;
      }
      val = a->lhs;
    } else {
      if (npos >= ncsig) {
        int total = 0;
        for (int k = 0; k < d->nargs; k++) total += d->args[k]->kind != AST_KWARG;
        diag_error(L->de, a->loc, "'%s' takes %d dimension argument%s, got %d", cf->name, ncsig,
                   ncsig == 1 ? "" : "s", total);
        return -1;
      }
      v = npos++;
    }
    if (bound[v]) {
      diag_error(L->de, a->loc, "dimension '%s' of '%s' is given twice", cf->dims.v[v].name,
                 cf->name);
      bad = 1;
      continue;
    }
    if (sema_dim_expr(L, val, &args[v])) {
      bad = 1;
      continue;
    }
    bound[v] = 1;
    for (int k = 0; k < cu->count_dims.n; k++) {
      int64_t c;
      if (cu->count_dims.v[k] == v && (!dim_is_const(args[v], &c) || c != cu->count_values.v[k])) {
        diag_error(L->de, val->loc,
                   "dimension '%s' of '%s' sets a count unrolled when compiling (a layer "
                   "array's length or a loop's bound), fixed at %lld when '%s' was compiled; it "
                   "cannot be rebound here (set it for the whole program with --dims %s=...)",
                   cf->dims.v[v].name, cf->name, (long long)cu->count_values.v[k], cf->name,
                   cf->dims.v[v].name);
        bad = 1;
        break;
      }
    }
  }
  return bad ? -1 : 0;
}

/* layer NAME[n] = [reverse] Callee(dims...) [prefix|suffix "..."]
 * Adds one IrLayer per instance ("NAME", or "NAME.0", "NAME.1", ...). Callee
 * dims not passed stay unbound until the layer is first called (see
 * sema_finalize_layer). */
static void lower_layer_decl(Lower *L, const AstDecl *d, const char *name) {
  Sema *S = L->S;
  LayerDecl ld = {name, d->name.loc, -1, d->count ? 0 : -1, 1};
  int ci = find_unit(S, d->callee);
  if (ci < 0) {
    const char **cands = arena_calloc(L->a, (size_t)S->units.n + 1, sizeof *cands);
    for (int k = 0; cands && k < S->units.n; k++) cands[k] = S->units.v[k].ast->name;
    const char *s = cands ? sema_suggest(d->callee, cands, S->units.n) : NULL;
    diag_error(L->de, d->callee_loc, "unknown cell or model '%s'%s%s%s", d->callee,
               s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
    goto done;
  }
  const SemaUnit *cu = &S->units.v[ci];
  /* Recursion or a broken callee: already reported. A callee still being
   * visited is a model containing itself (directly, its function already
   * exists but is the one being built: binding its dims would grow them
   * while iterating over them). */
  if (cu->func < 0 || cu->failed || cu->visiting) goto done;
  const IrFunc *cf = S->m->funcs.v[cu->func];

  int64_t count = 1;
  if (d->count && sema_known_value(L, d->count,
                                   arena_printf(L->a, "the length of layer array '%s'",
                                                sema_path_str(L->a, &d->name)),
                                   0, 4096, &count))
    goto done;
  if (!d->count &&
      ((d->prefix && strstr(d->prefix, "{i}")) || (d->suffix && strstr(d->suffix, "{i}")))) {
    diag_error(L->de, d->loc, "'{i}' in a prefix or suffix needs a layer array (layer %s[n] = ...)",
               name);
    goto done;
  }

  int nd = cf->dims.n;
  DimExpr *args = arena_calloc(L->a, (size_t)nd + 1, sizeof *args);
  unsigned char *bound = arena_calloc(L->a, (size_t)nd + 1, 1);
  if (!args || !bound) {
    sema_oom(S);
    goto done;
  }
  if (bind_layer_dims(L, d, cf, cu, args, bound)) goto done;

  /* Default names: "NAME." + callee names; one of prefix/suffix given
   * replaces that scheme entirely (the other becomes ""). */
  const char *prefix = d->prefix, *suffix = d->suffix;
  if (!prefix && !suffix)
    prefix = d->count ? arena_printf(L->a, "%s.{i}.", name) : arena_printf(L->a, "%s.", name);
  if (!prefix) prefix = "";
  if (!suffix) suffix = "";

  ld.first = L->f->layers.n;
  ld.count = d->count ? (int)count : -1;
  for (int64_t k = 0; k < count; k++) {
    IrLayer lay = {0};
    lay.name = d->count ? arena_printf(L->a, "%s.%lld", name, (long long)k) : name;
    lay.loc = d->name.loc;
    lay.callee = cu->func;
    lay.dim_args = arena_calloc(L->a, (size_t)nd + 1, sizeof *lay.dim_args);
    lay.prefix = subst_index(L->a, prefix, (int)k);
    lay.suffix = subst_index(L->a, suffix, (int)k);
    lay.reverse = d->reverse;
    LayerSlot slot = {0};
    slot.callee = cf;
    slot.callee_unit = ci;
    slot.bound = arena_calloc(L->a, (size_t)nd + 1, 1);
    if (!lay.name || !lay.dim_args || !lay.prefix || !lay.suffix || !slot.bound) {
      sema_oom(S);
      goto done;
    }
    memcpy(lay.dim_args, args, (size_t)nd * sizeof *args);
    memcpy(slot.bound, bound, (size_t)nd);
    if (vec_push(L->a, &L->f->layers, lay) || vec_push(L->a, &L->layers, slot)) {
      sema_oom(S);
      goto done;
    }
  }
  ld.failed = 0;
done:
  if (vec_push(L->a, &L->layer_decls, ld)) sema_oom(S);
}

/* Completes a layer's dim bindings, once: callee dims still unbound are first
 * unified with the shapes of the call's arguments (an input declared [I]
 * receiving a [D] value binds I = D), and the rest become fresh dims of the
 * caller, "<layer>.<dim>", inferred later from the weights. Returns -1 after
 * reporting. */
int sema_finalize_layer(Lower *L, int li, const IrRef *args, int nargs) {
  LayerSlot *slot = &L->layers.v[li];
  IrLayer *lay = &L->f->layers.v[li];
  if (slot->final) return slot->failed ? -1 : 0;
  /* Once, even when it fails: the error is reported once, later calls fail. */
  slot->final = slot->failed = 1;
  const IrFunc *cf = slot->callee;
  for (int i = 0; args && i < nargs && i < cf->inputs.n; i++) {
    if (args[i] < 0) continue;
    IrType want = cf->inputs.v[i].type, got = L->f->nodes.v[args[i]].type;
    /* One axis more: a call run over positions (lower_layer_call decides). */
    int off = got.rank == want.rank + 1 && !cf->inputs.v[i].context;
    if (want.rank + off != got.rank) continue;
    for (int k = 0; k < want.rank; k++) {
      DimExpr w = want.dims[k];
      if (w.nterms == 1 && w.t[0].coef == 1 && w.t[0].nvars == 1 && !slot->bound[w.t[0].vars[0]]) {
        int v = w.t[0].vars[0];
        lay->dim_args[v] = got.dims[k + off];
        slot->bound[v] = 1;
      }
    }
  }
  unsigned char *deferred = arena_calloc(L->a, (size_t)cf->dims.n + 1, 1);
  if (!deferred) {
    sema_oom(L->S);
    return -1;
  }
  for (int v = 0; v < cf->dims.n; v++) {
    if (slot->bound[v]) continue;
    const IrDim *cd = &cf->dims.v[v];
    /* A divided dim (D of Dh = D / NH) not passed follows its quotient. */
    if (quotient_of_num(cf, v)) {
      deferred[v] = 1;
      continue;
    }
    /* A quotient of a dim passed divides what was passed: exactly, or the
     * caller must name the quotient itself. */
    const IrDimQuotient *q = quotient_dim(cf, v);
    if (q && !deferred[q->num]) {
      DimExpr den;
      const char *ns = dim_expr_str(L, lay->dim_args[q->num]);
      if (dim_subst(q->den, lay->dim_args, &den) ||
          dim_div_term(lay->dim_args[q->num], den, &lay->dim_args[v])) {
        const char *ds = dim_expr_str(L, den);
        diag_error(L->de, lay->loc,
                   "dimension '%s' of '%s' is %s / %s, here %s / %s, which is not a whole "
                   "number for every value of the dims of '%s': pass %s, or name the quotient "
                   "in the header of '%s' (e.g. `%s = %s / %s`)",
                   cd->name, cf->name, cf->dims.v[q->num].name, fn_dim_str(L, cf, q->den), ns, ds,
                   L->unit->name, cd->name, L->unit->name, cd->name, ns, ds);
        return -1;
      }
      slot->bound[v] = 1;
      continue;
    }
    /* A default expression follows the dims it uses (earlier ones, bound by
     * now): d_inner = 2*d_model becomes 2*(whatever d_model is here). */
    const DimExpr *de = dim_default_expr(cf, v);
    if (de) {
      if (dim_subst(*de, lay->dim_args, &lay->dim_args[v])) {
        diag_error(L->de, lay->loc,
                   "the default of dimension '%s' of '%s' is too complex once substituted",
                   cd->name, cf->name);
        return -1;
      }
      slot->bound[v] = 1;
      continue;
    }
    IrDim nd = {0};
    nd.name = arena_printf(L->a, "%s.%s", lay->name, cd->name);
    nd.loc = lay->loc;
    nd.has_default = cd->has_default;
    nd.deflt = cd->deflt;
    if (!nd.name || vec_push(L->a, &L->f->dims, nd)) {
      sema_oom(L->S);
      return -1;
    }
    lay->dim_args[v] = dim_var(L->f->dims.n - 1);
    slot->bound[v] = 1;
  }
  /* Every quotient now has its dim: a divided dim not passed is its divisor
   * times it; one passed must be that product. */
  for (int i = 0; i < cf->dim_quotients.n; i++) {
    const IrDimQuotient *q = &cf->dim_quotients.v[i];
    DimExpr den, prod;
    if (dim_subst(q->den, lay->dim_args, &den) || dim_mul(den, lay->dim_args[q->dim], &prod)) {
      diag_error(L->de, lay->loc, "the dims of '%s' are too complex once substituted", cf->name);
      return -1;
    }
    if (deferred[q->num]) {
      lay->dim_args[q->num] = prod;
      slot->bound[q->num] = 1;
    } else if (!dim_eq(lay->dim_args[q->num], prod)) {
      diag_error(L->de, lay->loc,
                 "dimension '%s' of '%s' is %s here, but %s * %s is %s (%s = %s / %s): the "
                 "dims passed disagree",
                 cf->dims.v[q->num].name, cf->name, dim_expr_str(L, lay->dim_args[q->num]),
                 fn_dim_str(L, cf, q->den), cf->dims.v[q->dim].name, dim_expr_str(L, prod),
                 cf->dims.v[q->dim].name, cf->dims.v[q->num].name, fn_dim_str(L, cf, q->den));
      return -1;
    }
  }
  slot->failed = 0;
  return 0;
}

/* ---- Units ------------------------------------------------------------------------ */

static void lower_unit(Sema *S, int ui) {
  SemaUnit *su = &S->units.v[ui];
  const AstUnit *u = su->ast;
  IrFunc *f = ir_func_new(S->m, u->name, u->kind == AST_CELL ? IR_FN_CELL : IR_FN_MODEL, u->loc);
  if (!f) {
    sema_oom(S);
    su->failed = 1;
    return;
  }
  f->doc = u->doc;
  su->func = S->m->funcs.n - 1;
  Lower L = {0};
  L.S = S;
  L.a = S->a;
  L.de = S->de;
  L.f = f;
  L.unit = u;
  L.unit_index = ui;
  L.mode = u->kind == AST_CELL ? MODE_STEP : MODE_FORWARD;
  declare_dims(&L);
  declare_grid(&L);
  if (u->grid && !L.grid) { /* its row length was reported: one mistake, one diagnostic */
    su->failed = 1;
    return;
  }
  declare_decls(&L);
  if (L.grid) {
    L.grid_left = arena_calloc(L.a, (size_t)L.states.n + 1, sizeof *L.grid_left);
    L.grid_border = arena_calloc(L.a, (size_t)L.states.n + 1, sizeof *L.grid_border);
    if (!L.grid_left || !L.grid_border) {
      sema_oom(S);
      return;
    }
    for (int i = 0; i < L.states.n; i++) L.grid_left[i] = L.grid_border[i] = REF_ERROR;
  }
  lower_state_inits(&L);
  lower_body(&L);
  /* Layers never called still need complete bindings: all fresh. */
  for (int i = 0; i < L.layers.n; i++) sema_finalize_layer(&L, i, NULL, 0);
}

/* Lowers model `ui` after the models its layers instantiate (cells are all
 * lowered before any model). A model met again while on the stack contains
 * itself. */
static void lower_model(Sema *S, int ui) {
  SemaUnit *su = &S->units.v[ui];
  su->visiting = 1;
  if (vec_push(S->a, &S->stack, ui)) {
    sema_oom(S);
    return;
  }
  const AstUnit *u = su->ast;
  for (int i = 0; i < u->ndecls; i++) {
    const AstDecl *d = u->decls[i];
    if (!d || d->kind != AST_LAYER || !d->callee) continue;
    int ci = find_unit(S, d->callee);
    if (ci < 0 || S->units.v[ci].ast->kind != AST_MODEL) continue;
    if (S->units.v[ci].visiting) {
      char *chain = arena_strdup(S->a, "");
      int start = 0;
      for (int k = 0; k < S->stack.n; k++)
        if (S->stack.v[k] == ci) start = k;
      for (int k = start; k < S->stack.n && chain; k++)
        chain = arena_printf(S->a, "%s%s -> ", chain, S->units.v[S->stack.v[k]].ast->name);
      diag_error(S->de, d->callee_loc, "model '%s' contains itself: %s%s", d->callee,
                 chain ? chain : "", d->callee);
    } else if (S->units.v[ci].func < 0) {
      lower_model(S, ci);
    }
  }
  S->stack.n--;
  lower_unit(S, ui);
  S->units.v[ui].visiting = 0;
}

/* The module's entry: the unit named by FrontendOptions.entry, else the last
 * unit of the main file. */
static void choose_entry(Sema *S) {
  const char *want = S->opt ? S->opt->entry : NULL;
  if (want) {
    int ui = find_unit(S, want);
    if (ui >= 0) {
      S->m->entry = S->units.v[ui].func;
      return;
    }
    const char **cands = arena_calloc(S->a, (size_t)S->units.n + 1, sizeof *cands);
    for (int k = 0; cands && k < S->units.n; k++) cands[k] = S->units.v[k].ast->name;
    const char *s = cands ? sema_suggest(want, cands, S->units.n) : NULL;
    diag_error(S->de, (SrcLoc){0}, "no cell or model named '%s'%s%s%s", want,
               s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
    return;
  }
  const AstFile *mf = S->main->ast;
  for (int k = mf->nunits - 1; k >= 0; k--) {
    for (int i = 0; i < S->units.n; i++) {
      if (S->units.v[i].ast == mf->units[k]) {
        S->m->entry = S->units.v[i].func;
        return;
      }
    }
  }
  diag_error(S->de, (SrcLoc){0}, "'%s' defines no cell or model", S->main->src->name);
}

static IrModule *compile(Arena *a, SrcMgr *sm, DiagEngine *de, const SrcFile *src, int is_file,
                         const FrontendOptions *opt) {
  Sema S = {0};
  S.a = a;
  S.de = de;
  S.sm = sm;
  S.opt = opt;
  S.m = ir_module_new(a);
  if (!S.m) {
    sema_oom(&S);
    return NULL;
  }
  if (sema_load_program(&S, src, is_file)) return NULL;
  /* Top-level functions share one namespace across files, like units. */
  for (int i = 0; i < S.files.n; i++) {
    const AstFile *af = S.files.v[i]->ast;
    for (int k = 0; af && k < af->ndefs; k++)
      if (check_def(&S, af->defs[k], S.defs.v, S.defs.n) == 0 && vec_push(a, &S.defs, af->defs[k]))
        sema_oom(&S);
  }

  /* Cells first (they instantiate nothing), then models callees-first, so a
   * layer's callee always has a lower function index than its caller. */
  for (int i = 0; i < S.units.n && !S.oom; i++)
    if (S.units.v[i].ast->kind == AST_CELL) lower_unit(&S, i);
  for (int i = 0; i < S.units.n && !S.oom; i++)
    if (S.units.v[i].ast->kind == AST_MODEL && S.units.v[i].func < 0) lower_model(&S, i);
  if (S.oom) return NULL;
  choose_entry(&S);
  if (de->nerrors > 0) return NULL;
#ifdef SEQ_VERIFY_IR
  if (ir_verify(S.m, de, "sema")) return NULL;
#endif
  return de->nerrors > 0 ? NULL : S.m;
}

IrModule *seq_compile_file(Arena *a, SrcMgr *sm, DiagEngine *de, const char *path,
                           const FrontendOptions *opt) {
  const SrcFile *src = srcmgr_load(sm, de, (SrcLoc){0}, path, path);
  if (!src) return NULL;
  return compile(a, sm, de, src, 1, opt);
}

IrModule *seq_compile_string(Arena *a, SrcMgr *sm, DiagEngine *de, const char *name,
                             const char *text, const FrontendOptions *opt) {
  const SrcFile *src = srcmgr_add_string(sm, name, text, strlen(text));
  if (!src) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    return NULL;
  }
  return compile(a, sm, de, src, 0, opt);
}
