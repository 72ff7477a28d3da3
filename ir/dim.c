/* dim.c - dimension polynomials: the symbolic shapes of the IR.
 *
 * A DimExpr is a small polynomial with int64 coefficients over a function's
 * dims. Every operation returns the canonical form, so two shapes are equal
 * exactly when their polynomials are structurally equal:
 *   - variables inside a term are sorted by index (H*I, never I*H);
 *   - terms are sorted by their variable lists, compared lexicographically;
 *     when one list is a proper prefix of the other the longer one comes
 *     first, so H*H precedes H and the constant term (the empty list) comes
 *     last: "H*H + 2*H + 1";
 *   - like terms are combined and zero coefficients dropped.
 * Arithmetic is overflow-checked; anything that does not fit the fixed-size
 * representation is reported as -1 rather than silently truncated.
 */
#include "ir/ir.h"

#include <inttypes.h>
#include <string.h>

DimExpr dim_const(int64_t c) {
  DimExpr e;
  memset(&e, 0, sizeof e);
  if (c != 0) {
    e.nterms = 1;
    e.t[0].coef = c;
  }
  return e;
}

DimExpr dim_var(int v) {
  DimExpr e;
  memset(&e, 0, sizeof e);
  e.nterms = 1;
  e.t[0].coef = 1;
  e.t[0].nvars = 1;
  e.t[0].vars[0] = (int16_t)v;
  return e;
}

/* Orders two terms by variable list; a list that is a proper prefix of the
 * other sorts after it (higher degree first, constant last). */
static int term_cmp(const DimTerm *a, const DimTerm *b) {
  int n = a->nvars < b->nvars ? a->nvars : b->nvars;
  for (int i = 0; i < n; i++)
    if (a->vars[i] != b->vars[i]) return a->vars[i] < b->vars[i] ? -1 : 1;
  if (a->nvars == b->nvars) return 0;
  return a->nvars > b->nvars ? -1 : 1;
}

/* Brings n raw terms (vars unsorted, duplicates, zeros allowed) into
 * canonical form in *out. */
static int normalize(DimTerm *terms, int n, DimExpr *out) {
  for (int k = 0; k < n; k++) {
    DimTerm *t = &terms[k];
    for (int i = 1; i < t->nvars; i++)
      for (int j = i; j > 0 && t->vars[j - 1] > t->vars[j]; j--) {
        int16_t tmp = t->vars[j];
        t->vars[j] = t->vars[j - 1];
        t->vars[j - 1] = tmp;
      }
    for (int i = t->nvars; i < DIM_MAX_DEGREE; i++) t->vars[i] = 0;
  }
  /* Insertion sort: n is at most DIM_MAX_TERMS squared. */
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && term_cmp(&terms[j - 1], &terms[j]) > 0; j--) {
      DimTerm tmp = terms[j];
      terms[j] = terms[j - 1];
      terms[j - 1] = tmp;
    }
  DimExpr r;
  memset(&r, 0, sizeof r);
  int i = 0;
  while (i < n) {
    DimTerm acc = terms[i];
    int j = i + 1;
    for (; j < n && term_cmp(&terms[j], &acc) == 0; j++)
      if (__builtin_add_overflow(acc.coef, terms[j].coef, &acc.coef)) return -1;
    i = j;
    if (acc.coef == 0) continue;
    if (r.nterms == DIM_MAX_TERMS) return -1;
    r.t[r.nterms++] = acc;
  }
  *out = r;
  return 0;
}

int dim_add(DimExpr a, DimExpr b, DimExpr *out) {
  DimTerm terms[2 * DIM_MAX_TERMS];
  int n = 0;
  for (int i = 0; i < a.nterms; i++) terms[n++] = a.t[i];
  for (int i = 0; i < b.nterms; i++) terms[n++] = b.t[i];
  return normalize(terms, n, out);
}

int dim_sub(DimExpr a, DimExpr b, DimExpr *out) {
  DimTerm terms[2 * DIM_MAX_TERMS];
  int n = 0;
  for (int i = 0; i < a.nterms; i++) terms[n++] = a.t[i];
  for (int i = 0; i < b.nterms; i++) {
    terms[n] = b.t[i];
    if (__builtin_sub_overflow((int64_t)0, b.t[i].coef, &terms[n].coef)) return -1;
    n++;
  }
  return normalize(terms, n, out);
}

int dim_mul(DimExpr a, DimExpr b, DimExpr *out) {
  DimTerm terms[DIM_MAX_TERMS * DIM_MAX_TERMS];
  int n = 0;
  for (int i = 0; i < a.nterms; i++)
    for (int j = 0; j < b.nterms; j++) {
      const DimTerm *x = &a.t[i], *y = &b.t[j];
      DimTerm t;
      memset(&t, 0, sizeof t);
      if (x->nvars + y->nvars > DIM_MAX_DEGREE) return -1;
      if (__builtin_mul_overflow(x->coef, y->coef, &t.coef)) return -1;
      for (int k = 0; k < x->nvars; k++) t.vars[t.nvars++] = x->vars[k];
      for (int k = 0; k < y->nvars; k++) t.vars[t.nvars++] = y->vars[k];
      terms[n++] = t;
    }
  return normalize(terms, n, out);
}

int dim_div_exact(DimExpr a, int64_t k, DimExpr *out) {
  if (k == 0) return -1;
  DimExpr r = a;
  for (int i = 0; i < a.nterms; i++) {
    /* INT64_MIN / -1 is the one quotient that overflows. */
    if (k == -1 && a.t[i].coef == INT64_MIN) return -1;
    if (a.t[i].coef % k != 0) return -1;
    r.t[i].coef = a.t[i].coef / k;
  }
  /* Dividing by a negative k keeps the order of terms: order depends on
   * variables only. */
  *out = r;
  return 0;
}

int dim_div_term(DimExpr a, DimExpr d, DimExpr *out) {
  if (d.nterms != 1) return -1;
  const DimTerm *q = &d.t[0];
  DimTerm terms[DIM_MAX_TERMS];
  for (int i = 0; i < a.nterms; i++) {
    DimTerm t = a.t[i];
    if (q->coef == 0 || (q->coef == -1 && t.coef == INT64_MIN) || t.coef % q->coef != 0) return -1;
    t.coef /= q->coef;
    /* Remove each of q's variables once from t's (both sorted lists). */
    for (int k = 0; k < q->nvars; k++) {
      int at = -1;
      for (int j = 0; j < t.nvars && at < 0; j++)
        if (t.vars[j] == q->vars[k]) at = j;
      if (at < 0) return -1;
      for (int j = at; j + 1 < t.nvars; j++) t.vars[j] = t.vars[j + 1];
      t.nvars--;
    }
    terms[i] = t;
  }
  return normalize(terms, a.nterms, out);
}

int dim_eq(DimExpr a, DimExpr b) {
  if (a.nterms != b.nterms) return 0;
  for (int i = 0; i < a.nterms; i++) {
    const DimTerm *x = &a.t[i], *y = &b.t[i];
    if (x->coef != y->coef || x->nvars != y->nvars) return 0;
    for (int k = 0; k < x->nvars; k++)
      if (x->vars[k] != y->vars[k]) return 0;
  }
  return 1;
}

int dim_is_const(DimExpr a, int64_t *value) {
  if (a.nterms == 0) {
    if (value) *value = 0;
    return 1;
  }
  if (a.nterms == 1 && a.t[0].nvars == 0) {
    if (value) *value = a.t[0].coef;
    return 1;
  }
  return 0;
}

int dim_is_one(DimExpr a) {
  int64_t v;
  return dim_is_const(a, &v) && v == 1;
}

int dim_subst(DimExpr a, const DimExpr *sub, DimExpr *out) {
  DimExpr acc = dim_const(0);
  for (int i = 0; i < a.nterms; i++) {
    DimExpr term = dim_const(a.t[i].coef);
    for (int k = 0; k < a.t[i].nvars; k++)
      if (dim_mul(term, sub[a.t[i].vars[k]], &term)) return -1;
    if (dim_add(acc, term, &acc)) return -1;
  }
  *out = acc;
  return 0;
}

int dim_eval(DimExpr a, const int64_t *values, int64_t *out) {
  int64_t acc = 0;
  for (int i = 0; i < a.nterms; i++) {
    int64_t t = a.t[i].coef;
    for (int k = 0; k < a.t[i].nvars; k++)
      if (__builtin_mul_overflow(t, values[a.t[i].vars[k]], &t)) return -1;
    if (__builtin_add_overflow(acc, t, &acc)) return -1;
  }
  if (acc < 0 || acc > SEQ_MAX_DIM_VALUE) return -1;
  *out = acc;
  return 0;
}

/* ---- Printing ------------------------------------------------------------ */

/* A bounded writer shared by dim_print and dim_str: counts what it would
 * write, like snprintf, so a caller can size a buffer with a first pass. */
typedef struct {
  char *buf;
  size_t cap, len;
} Out;

static void out_str(Out *o, const char *s) {
  size_t n = strlen(s);
  if (o->len < o->cap) {
    size_t room = o->cap - o->len;
    memcpy(o->buf + o->len, s, n < room ? n : room);
  }
  o->len += n;
}

static void out_var(Out *o, int v, const char *const *names) {
  if (names && names[v]) {
    out_str(o, names[v]);
  } else {
    char tmp[16];
    snprintf(tmp, sizeof tmp, "$%d", v);
    out_str(o, tmp);
  }
}

/* Writes the polynomial into o; the caller terminates the string. */
static void dim_format(Out *o, DimExpr a, const char *const *names) {
  if (a.nterms == 0) {
    out_str(o, "0");
    return;
  }
  for (int i = 0; i < a.nterms; i++) {
    const DimTerm *t = &a.t[i];
    int neg = t->coef < 0;
    /* Magnitude as unsigned so that INT64_MIN prints correctly. */
    uint64_t mag = neg ? (uint64_t)0 - (uint64_t)t->coef : (uint64_t)t->coef;
    if (i == 0)
      out_str(o, neg ? "-" : "");
    else
      out_str(o, neg ? " - " : " + ");
    char num[32];
    snprintf(num, sizeof num, "%" PRIu64, mag);
    if (t->nvars == 0) {
      out_str(o, num);
      continue;
    }
    if (mag != 1) {
      out_str(o, num);
      out_str(o, "*");
    }
    for (int k = 0; k < t->nvars; k++) {
      if (k) out_str(o, "*");
      out_var(o, t->vars[k], names);
    }
  }
}

void dim_print(FILE *out, DimExpr a, const char *const *names) {
  char small[256];
  Out o = {small, sizeof small, 0};
  dim_format(&o, a, names);
  if (o.len < sizeof small) {
    fwrite(small, 1, o.len, out);
    return;
  }
  char *big = seq_malloc(o.len);
  if (!big) {
    fwrite(small, 1, sizeof small, out); /* truncated rather than lost */
    return;
  }
  Out o2 = {big, o.len, 0};
  dim_format(&o2, a, names);
  fwrite(big, 1, o.len, out);
  seq_free(big);
}

char *dim_str(Arena *a, DimExpr e, const char *const *names) {
  Out o = {NULL, 0, 0};
  dim_format(&o, e, names);
  char *s = arena_alloc(a, o.len + 1);
  if (!s) return NULL;
  Out o2 = {s, o.len, 0};
  dim_format(&o2, e, names);
  s[o.len] = 0;
  return s;
}
