/* bind.c - binding a root function to concrete dims and weights.
 *
 * A root function's shapes are polynomials over its dims (the instance tree
 * is flattened by ir_flatten, so every parameter's type is already expressed
 * over the root's dims). Binding turns them into numbers: dims come from
 * --dims, then from the shapes of the stored weights and of the inputs, then
 * from defaults; afterwards every shape is checked against the numbers.
 *
 * Complex tensors (params, inputs, states, outputs) are stored as real
 * tensors with one trailing axis of size 2 holding (re, im), the layout of
 * torch.view_as_real.
 */
#include "ir/interp.h"

#include <math.h>
#include <string.h>

/* ---- Formatting ----------------------------------------------------------- */

static const char *const *root_dim_names(IrBinding *b) {
  const IrFunc *f = b->root;
  if (f->dims.n == 0) return NULL;
  const char **names = arena_calloc(b->arena, (size_t)f->dims.n, sizeof *names);
  if (!names) return NULL;
  for (int i = 0; i < f->dims.n; i++) names[i] = f->dims.v[i].name;
  return names;
}

/* The declared shape in the spelling of ir_print_type: "[4*H, I]",
 * "complex[N]", "int". */
static const char *decl_str(IrBinding *b, IrType t) {
  if (t.elem == IR_INT && t.rank == 0) return "int";
  const char *const *names = root_dim_names(b);
  const char *s = t.elem == IR_COMPLEX ? "complex[" : "[";
  for (int i = 0; i < t.rank && s; i++) {
    const char *d = dim_str(b->arena, t.dims[i], names);
    s = arena_printf(b->arena, "%s%s%s", s, i ? ", " : "", d ? d : "?");
  }
  s = s ? arena_printf(b->arena, "%s]", s) : NULL;
  return s ? s : "?";
}

static const char *shape_str(Arena *a, int ndim, const int64_t *shape) {
  const char *s = "[";
  for (int i = 0; i < ndim && s; i++)
    s = arena_printf(a, "%s%s%lld", s, i ? ", " : "", (long long)shape[i]);
  s = s ? arena_printf(a, "%s]", s) : NULL;
  return s ? s : "?";
}

/* ---- Setup -------------------------------------------------------------------- */

int ir_binding_init(IrBinding *b, Arena *a, const IrModule *m, const IrFunc *root, DiagEngine *de) {
  memset(b, 0, sizeof *b);
  b->arena = a;
  b->mod = m;
  b->root = root;
  if (ir_flatten(a, m, root, &b->flat, de)) return -1;
  int nd = root->dims.n;
  b->dims = arena_calloc(a, (size_t)(nd ? nd : 1), sizeof *b->dims);
  b->dim_from = arena_calloc(a, (size_t)(nd ? nd : 1), sizeof *b->dim_from);
  b->weights =
      arena_calloc(a, (size_t)(b->flat.params.n ? b->flat.params.n : 1), sizeof *b->weights);
  if (!b->dims || !b->dim_from || !b->weights) {
    diag_error(de, root->loc, "out of memory binding '%s'", root->name);
    return -1;
  }
  for (int i = 0; i < nd; i++) b->dims[i] = -1;
  /* Dims the frontend unrolled a count with are known already. */
  for (int i = 0; i < root->dim_pins.n; i++) {
    b->dims[root->dim_pins.v[i].dim] = root->dim_pins.v[i].value;
    b->dim_from[root->dim_pins.v[i].dim] = root->dim_pins.v[i].loc;
  }
  return 0;
}

int ir_binding_set_dim(IrBinding *b, const char *name, int64_t value, DiagEngine *de) {
  const IrFunc *f = b->root;
  for (int i = 0; i < f->dims.n; i++) {
    if (strcmp(f->dims.v[i].name, name) != 0) continue;
    if (value < 0 || value > SEQ_MAX_DIM_VALUE) {
      diag_error(de, (SrcLoc){0}, "dimension %s = %lld is outside [0, %lld]", name,
                 (long long)value, (long long)SEQ_MAX_DIM_VALUE);
      return -1;
    }
    b->dims[i] = value;
    b->dim_from[i] = (SrcLoc){0};
    return 0;
  }
  /* A dim of another unit (a layer's callee) was applied by the frontend
   * when it compiled that unit (a loop's bound, a layer array's length). */
  for (int k = 0; b->mod && k < b->mod->funcs.n; k++)
    for (int i = 0; i < b->mod->funcs.v[k]->dims.n; i++)
      if (b->mod->funcs.v[k]->dims.v[i].in_signature &&
          strcmp(b->mod->funcs.v[k]->dims.v[i].name, name) == 0)
        return 0;
  const char *known = "";
  for (int i = 0; i < f->dims.n && known; i++)
    known = arena_printf(b->arena, "%s%s%s", known, i ? ", " : "", f->dims.v[i].name);
  if (f->dims.n == 0) known = "none";
  diag_error(de, (SrcLoc){0}, "'%s' has no dimension '%s' (its dimensions: %s)", f->name, name,
             known ? known : "?");
  return -1;
}

/* The default expression of dim v (d_inner = 2*d_model), or NULL. */
static const DimExpr *default_expr(const IrFunc *f, int v) {
  for (int i = 0; i < f->dim_defaults.n; i++)
    if (f->dim_defaults.v[i].dim == v) return &f->dim_defaults.v[i].expr;
  return NULL;
}

static int dims_known(const IrBinding *b, DimExpr e) {
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++) {
      int v = e.t[i].vars[k];
      if (v < 0 || v >= b->root->dims.n || b->dims[v] < 0) return 0;
    }
  return 1;
}

int ir_binding_shape(const IrBinding *b, IrType t, int64_t *shape) {
  if (t.rank < 0 || t.rank > SEQ_MAX_RANK) return -1;
  for (int i = 0; i < t.rank; i++)
    if (!dims_known(b, t.dims[i]) || dim_eval(t.dims[i], b->dims, &shape[i])) return -1;
  return 0;
}

/* The stored shape of a tensor declared with type t: its dims, plus a
 * trailing 2 when complex. Returns the rank, or -1 if it cannot be evaluated. */
static int stored_shape(const IrBinding *b, IrType t, int64_t *shape) {
  if (ir_binding_shape(b, t, shape)) return -1;
  int n = t.rank;
  if (t.elem == IR_COMPLEX) shape[n++] = 2;
  return n;
}

/* ---- Inference ---------------------------------------------------------------- */

/* A stored tensor whose shape constrains the dims: a weight or an input. */
typedef struct Given {
  const char *kind; /* "weight", "input" */
  const char *name;
  const char *from; /* " in FILE" for a stored weight, else "" */
  IrType type;
  SrcLoc loc;
  int ndim;
  int64_t shape[RT_MAX_RANK + 1];
} Given;

/* Tries to solve `e = actual` for the one dim of e not yet known. Returns 1
 * with *var, *value set when solved; 0 when e has no unknown, several, or is
 * not linear in its unknown (another equation may still fix it); -1 when the
 * equation has no non-negative integer solution. */
static int solve(const IrBinding *b, DimExpr e, int64_t actual, int *var, int64_t *value) {
  int v = -1;
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++) {
      int x = e.t[i].vars[k];
      if (b->dims[x] >= 0) continue;
      if (v >= 0 && x != v) return 0;
      v = x;
    }
  if (v < 0) return 0;
  /* e = coef*v + rest, both over known dims. */
  int64_t coef = 0, rest = 0;
  for (int i = 0; i < e.nterms; i++) {
    int64_t t = e.t[i].coef;
    int uses = 0;
    for (int k = 0; k < e.t[i].nvars; k++) {
      int x = e.t[i].vars[k];
      if (x == v) {
        uses++;
        continue;
      }
      if (__builtin_mul_overflow(t, b->dims[x], &t)) return 0;
    }
    if (uses > 1) return 0;
    if (uses ? __builtin_add_overflow(coef, t, &coef) : __builtin_add_overflow(rest, t, &rest))
      return 0;
  }
  if (coef == 0) return 0;
  int64_t num;
  if (__builtin_sub_overflow(actual, rest, &num)) return -1;
  if (num % coef != 0) return -1;
  int64_t x = num / coef;
  if (x < 0 || x > SEQ_MAX_DIM_VALUE) return -1;
  *var = v;
  *value = x;
  return 1;
}

/* " in FILE" for messages about a weight read from b->weights_from. */
static const char *in_file(const IrBinding *b) {
  if (!b->weights_from) return "";
  const char *s = arena_printf(b->arena, " in %s", b->weights_from);
  return s ? s : "";
}

static void report_mismatch(IrBinding *b, const Given *g, DiagEngine *de) {
  int64_t want[RT_MAX_RANK + 1];
  int n = stored_shape(b, g->type, want);
  const char *have = shape_str(b->arena, g->ndim, g->shape);
  if (n >= 0)
    diag_error(de, g->loc, "%s '%s'%s has shape %s but is declared %s = %s", g->kind, g->name,
               g->from, have, decl_str(b, g->type), shape_str(b->arena, n, want));
  else
    diag_error(de, g->loc, "%s '%s'%s has shape %s but is declared %s", g->kind, g->name, g->from,
               have, decl_str(b, g->type));
  /* A dim a count was unrolled with cannot follow the weights. */
  const IrFunc *f = b->root;
  for (int i = 0; i < f->dim_pins.n; i++) {
    const IrDimPin *pin = &f->dim_pins.v[i];
    int used = 0, first = 1;
    for (int j = 0; j < i; j++) first &= f->dim_pins.v[j].dim != pin->dim;
    for (int k = 0; k < g->type.rank; k++)
      for (int t = 0; t < g->type.dims[k].nterms; t++)
        for (int v = 0; v < g->type.dims[k].t[t].nvars; v++)
          used |= g->type.dims[k].t[t].vars[v] == pin->dim;
    if (used && first)
      diag_note(de, pin->loc,
                "%s = %lld was fixed when compiling, by this count (compile with --dims %s=N for "
                "another value)",
                f->dims.v[pin->dim].name, (long long)pin->value, f->dims.v[pin->dim].name);
  }
}

/* Drops the axes of size 1. Returns the new rank. */
static int squeeze(int ndim, const int64_t *shape, int64_t *out) {
  int n = 0;
  for (int i = 0; i < ndim; i++)
    if (shape[i] != 1) out[n++] = shape[i];
  return n;
}

/* Shapes that differ only by axes of size 1 ([1] and [], [1, 1, C] and [C])
 * hold the same numbers in the same order: nn.Linear(I, 1)'s bias is stored
 * [1] where a cell declares a scalar, a conv weight [C, 1, 1] where a cell
 * declares [C]. Such a stored weight loads as the declared shape. */
static int same_but_unit_axes(int na, const int64_t *a, int nb, const int64_t *b) {
  int64_t sa[RT_MAX_RANK + 1], sb[RT_MAX_RANK + 1];
  if (na > RT_MAX_RANK + 1 || nb > RT_MAX_RANK + 1) return 0;
  int ka = squeeze(na, a, sa), kb = squeeze(nb, b, sb);
  return ka == kb && memcmp(sa, sb, (size_t)ka * sizeof *sa) == 0;
}

/* A stored weight whose rank differs from the declared one: if dropping its
 * unit axes and the declared axes that are the constant 1 leaves equally many
 * axes, the weight stands in with the declared rank (1 where the declaration
 * says 1, its other axes in order), so that the dims can be solved from it.
 * The final shape check then compares the real numbers. */
static void align_unit_axes(Given *g) {
  int want = g->type.rank + (g->type.elem == IR_COMPLEX);
  if (g->ndim == want || g->ndim > RT_MAX_RANK || want > RT_MAX_RANK) return;
  int64_t sq[RT_MAX_RANK + 1];
  int ns = squeeze(g->ndim, g->shape, sq);
  int nfree = 0;
  unsigned char one[RT_MAX_RANK + 1] = {0};
  for (int k = 0; k < want; k++) {
    int64_t c;
    one[k] = k < g->type.rank && dim_is_const(g->type.dims[k], &c) && c == 1;
    nfree += !one[k];
  }
  if (ns != nfree) return;
  int j = 0;
  for (int k = 0; k < want; k++) g->shape[k] = one[k] ? 1 : sq[j++];
  g->ndim = want;
}

static int rank_fits(const Given *g) {
  return g->ndim == g->type.rank + (g->type.elem == IR_COMPLEX);
}

/* Runs the equations to a fixed point. Returns 1 if some dim was solved,
 * 0 if none, -1 on an equation without solution (reported). */
static int solve_round(IrBinding *b, const Given *gs, int ng, DiagEngine *de) {
  int progress = 0;
  for (int i = 0; i < ng; i++) {
    const Given *g = &gs[i];
    if (!rank_fits(g)) continue;
    for (int k = 0; k < g->type.rank; k++) {
      int var;
      int64_t value;
      int r = solve(b, g->type.dims[k], g->shape[k], &var, &value);
      if (r < 0) {
        const char *e = dim_str(b->arena, g->type.dims[k], root_dim_names(b));
        diag_error(de, g->loc,
                   "%s '%s'%s has shape %s but is declared %s: %s = %lld has no integer "
                   "solution",
                   g->kind, g->name, g->from, shape_str(b->arena, g->ndim, g->shape),
                   decl_str(b, g->type), e ? e : "?", (long long)g->shape[k]);
        return -1;
      }
      if (r > 0) {
        b->dims[var] = value;
        b->dim_from[var] = g->loc;
        progress = 1;
      }
    }
  }
  return progress;
}

/* Dh = D / NH: the quotient from a known numerator (which the divisor must
 * divide), or the numerator from a known quotient. Returns 1 if some dim was
 * found, 0 if none, -1 after reporting a numerator the divisor does not
 * divide. */
static int quotient_round(IrBinding *b, DiagEngine *de) {
  const IrFunc *f = b->root;
  int progress = 0;
  for (int i = 0; i < f->dim_quotients.n; i++) {
    const IrDimQuotient *q = &f->dim_quotients.v[i];
    int64_t den;
    if (!dims_known(b, q->den) || dim_eval(q->den, b->dims, &den)) continue;
    int64_t *num = &b->dims[q->num], *quo = &b->dims[q->dim];
    if (*num >= 0 && *quo < 0) {
      if (den == 0 || *num % den != 0) {
        const char *ds = dim_str(b->arena, q->den, root_dim_names(b));
        diag_error(de, q->loc,
                   "dimension '%s' = %s / %s, but %s = %lld is not a multiple of %s = %lld",
                   f->dims.v[q->dim].name, f->dims.v[q->num].name, ds ? ds : "?",
                   f->dims.v[q->num].name, (long long)*num, ds ? ds : "?", (long long)den);
        return -1;
      }
      *quo = *num / den;
      b->dim_from[q->dim] = q->loc;
      progress = 1;
    } else if (*num < 0 && *quo >= 0) {
      int64_t v;
      if (__builtin_mul_overflow(den, *quo, &v) || v > SEQ_MAX_DIM_VALUE) continue;
      *num = v;
      b->dim_from[q->num] = q->loc;
      progress = 1;
    }
  }
  return progress;
}

/* Every quotient holds: D = NH * Dh with the values bound. */
static int check_quotients(IrBinding *b, DiagEngine *de) {
  const IrFunc *f = b->root;
  for (int i = 0; i < f->dim_quotients.n; i++) {
    const IrDimQuotient *q = &f->dim_quotients.v[i];
    int64_t den, prod;
    if (dim_eval(q->den, b->dims, &den) || __builtin_mul_overflow(den, b->dims[q->dim], &prod) ||
        prod != b->dims[q->num]) {
      const char *ds = dim_str(b->arena, q->den, root_dim_names(b));
      diag_error(de, q->loc, "dimension '%s' = %lld is not %s * %s = %lld * %lld (%s = %s / %s)",
                 f->dims.v[q->num].name, (long long)b->dims[q->num], ds ? ds : "?",
                 f->dims.v[q->dim].name, (long long)den, (long long)b->dims[q->dim],
                 f->dims.v[q->dim].name, f->dims.v[q->num].name, ds ? ds : "?");
      return -1;
    }
  }
  return 0;
}

int ir_binding_infer(IrBinding *b, IrShapeLookup lookup, void *ctx, const int *input_ndims,
                     const int64_t *const *input_shapes, DiagEngine *de) {
  const IrFunc *root = b->root;
  int np = b->flat.params.n, ni = root->inputs.n;
  Given *gs = arena_calloc(b->arena, (size_t)(np + ni + 1), sizeof *gs);
  if (!gs) {
    diag_error(de, root->loc, "out of memory binding '%s'", root->name);
    return -1;
  }
  /* missing[i]: flat param i has no stored weight (only meaningful with a lookup). */
  char *missing = arena_calloc(b->arena, (size_t)(np + 1), 1);
  if (!missing) return -1;
  int ng = 0, errors = 0;
  for (int i = 0; i < np && lookup; i++) {
    const IrFlatVar *p = &b->flat.params.v[i];
    Given *g = &gs[ng];
    *g = (Given){"weight", p->name, in_file(b), p->type, p->loc, 0, {0}};
    if (!lookup(ctx, p->name, &g->ndim, g->shape)) {
      missing[i] = 1;
      continue;
    }
    if (g->ndim < 0 || g->ndim > RT_MAX_RANK) {
      diag_error(de, p->loc, "weight '%s'%s has an invalid rank %d", p->name, g->from, g->ndim);
      errors++;
      continue;
    }
    align_unit_axes(g);
    ng++;
  }
  for (int i = 0; i < ni && input_ndims && input_shapes; i++) {
    if (!input_shapes[i]) continue;
    const IrInput *in = &root->inputs.v[i];
    Given *g = &gs[ng];
    *g = (Given){"input", in->name, "", in->type, in->loc, input_ndims[i], {0}};
    if (g->ndim < 0 || g->ndim > RT_MAX_RANK) {
      diag_error(de, in->loc, "input '%s' has an invalid rank %d", in->name, g->ndim);
      errors++;
      continue;
    }
    memcpy(g->shape, input_shapes[i], (size_t)g->ndim * sizeof *g->shape);
    ng++;
  }
  if (errors) return -1;

  /* Equations first; a default only when they stall, one at a time, so that
   * a dim the weights determine is never overridden by its default. */
  for (;;) {
    int r;
    while ((r = solve_round(b, gs, ng, de)) > 0 || (r == 0 && (r = quotient_round(b, de)) > 0)) {
    }
    if (r < 0) return -1;
    int d = -1;
    int64_t value = 0;
    for (int i = 0; i < root->dims.n && d < 0; i++) {
      if (b->dims[i] >= 0) continue;
      const DimExpr *e = default_expr(root, i);
      if (root->dims.v[i].has_default) {
        d = i;
        value = root->dims.v[i].deflt;
      } else if (e && dims_known(b, *e)) {
        /* d_inner = 2*d_model: only once d_model is known, however. */
        if (dim_eval(*e, b->dims, &value)) {
          const char *es = dim_str(b->arena, *e, root_dim_names(b));
          diag_error(de, root->dims.v[i].loc,
                     "the default of dimension '%s' (%s) is outside [0, %lld] with these "
                     "dimensions",
                     root->dims.v[i].name, es ? es : "?", (long long)SEQ_MAX_DIM_VALUE);
          return -1;
        }
        d = i;
      }
    }
    if (d < 0) break;
    b->dims[d] = value;
    b->dim_from[d] = root->dims.v[d].loc;
  }
  for (int i = 0; i < root->dims.n; i++)
    if (b->dims[i] < 0) {
      diag_error(de, root->dims.v[i].loc, "cannot infer dimension '%s': pass --dims %s=N",
                 root->dims.v[i].name, root->dims.v[i].name);
      errors++;
    }
  /* Missing weights and wrong ranks are reported even when some dim is
   * unknown: they are often the reason it is. */
  for (int i = 0; i < np; i++)
    if (missing[i]) {
      const IrFlatVar *p = &b->flat.params.v[i];
      diag_error(de, p->loc, "missing weight '%s' (declared %s)%s", p->name, decl_str(b, p->type),
                 in_file(b));
      errors++;
    }
  for (int i = 0; i < ng; i++)
    if (!rank_fits(&gs[i])) {
      report_mismatch(b, &gs[i], de);
      errors++;
    }
  if (errors || check_quotients(b, de)) return -1;

  /* Every dim is known: check every shape against it. */
  for (int i = 0; i < ng; i++) {
    const Given *g = &gs[i];
    int64_t want[RT_MAX_RANK + 1];
    int n = stored_shape(b, g->type, want);
    if (n < 0) {
      diag_error(de, g->loc, "shape %s of %s '%s' overflows with the given dimensions",
                 decl_str(b, g->type), g->kind, g->name);
      errors++;
      continue;
    }
    if (n != g->ndim || memcmp(want, g->shape, (size_t)n * sizeof *want) != 0) {
      report_mismatch(b, g, de);
      errors++;
    }
  }
  /* Parameters and states neither stored nor input-shaped must still have
   * evaluable shapes, or the interpreter could not allocate them. */
  for (int i = 0; i < np; i++) {
    int64_t s[RT_MAX_RANK + 1];
    const IrFlatVar *p = &b->flat.params.v[i];
    if (stored_shape(b, p->type, s) < 0 && (missing[i] || !lookup)) {
      diag_error(de, p->loc, "shape %s of weight '%s' overflows with the given dimensions",
                 decl_str(b, p->type), p->name);
      errors++;
    }
  }
  for (int i = 0; i < b->flat.states.n; i++) {
    int64_t s[RT_MAX_RANK + 1];
    const IrFlatVar *v = &b->flat.states.v[i];
    if (stored_shape(b, v->type, s) < 0) {
      diag_error(de, v->loc, "shape %s of state '%s' overflows with the given dimensions",
                 decl_str(b, v->type), v->name);
      errors++;
    }
  }
  return errors ? -1 : 0;
}

/* ---- Weights ------------------------------------------------------------------ */

/* Weights live in the binding's arena (owned = 0), so the binding needs no
 * destructor: releasing the arena releases them. */
static int weight_alloc(IrBinding *b, int i, int ndim, const int64_t *shape, DiagEngine *de) {
  RtTensor *w = &b->weights[i];
  int64_t n = 1;
  for (int k = 0; k < ndim && n >= 0; k++)
    if (shape[k] < 0 || __builtin_mul_overflow(n, shape[k], &n)) n = -1;
  /* Weights are held in float64; the same bound as a weight file keeps a
   * --dims typo ([H, H] with H = 2e9) a clear error rather than an attempt to
   * allocate and fill exabytes. */
  if (n < 0 || n > RT_MAX_FILE_BYTES / (int64_t)sizeof(double)) {
    char dims[RT_MAX_RANK * 24 + 4] = "";
    size_t len = 0;
    for (int k = 0; k < ndim && len < sizeof dims; k++)
      len += (size_t)snprintf(dims + len, sizeof dims - len, "%s%lld", k ? ", " : "",
                              (long long)shape[k]);
    diag_error(de, b->flat.params.v[i].loc,
               "weight '%s' of shape [%s] is too large (more than %lld bytes as float64)",
               b->flat.params.v[i].name, dims, (long long)RT_MAX_FILE_BYTES);
    return -1;
  }
  double *d = arena_calloc(b->arena, (size_t)n, sizeof(double));
  if (!d) {
    diag_error(de, b->flat.params.v[i].loc, "out of memory for weight '%s'",
               b->flat.params.v[i].name);
    return -1;
  }
  memset(w, 0, sizeof *w);
  w->dtype = RT_F64;
  w->ndim = ndim;
  memcpy(w->shape, shape, (size_t)ndim * sizeof *shape);
  w->data = d;
  w->owned = 0;
  return 0;
}

static int check_dims_known(const IrBinding *b, DiagEngine *de) {
  for (int i = 0; i < b->root->dims.n; i++)
    if (b->dims[i] < 0) {
      diag_error(de, b->root->dims.v[i].loc, "cannot infer dimension '%s': pass --dims %s=N",
                 b->root->dims.v[i].name, b->root->dims.v[i].name);
      return -1;
    }
  return 0;
}

int ir_binding_load(IrBinding *b, IrWeightLoad load, void *ctx, DiagEngine *de) {
  if (check_dims_known(b, de)) return -1;
  int errors = 0;
  for (int i = 0; i < b->flat.params.n; i++) {
    const IrFlatVar *p = &b->flat.params.v[i];
    int64_t want[RT_MAX_RANK + 1];
    int n = stored_shape(b, p->type, want);
    if (n < 0 || n > RT_MAX_RANK) {
      diag_error(de, p->loc, "shape %s of weight '%s' cannot be stored", decl_str(b, p->type),
                 p->name);
      errors++;
      continue;
    }
    RtTensor got, conv;
    RtError err;
    memset(&got, 0, sizeof got);
    memset(&conv, 0, sizeof conv);
    err.msg[0] = 0;
    if (load(ctx, p->name, &got, &err)) {
      rt_tensor_free(&got);
      diag_error(de, p->loc, "cannot load weight '%s': %s", p->name,
                 err.msg[0] ? err.msg : "not found");
      errors++;
      continue;
    }
    const RtTensor *src = &got;
    if (got.dtype != RT_F64) {
      if (rt_tensor_convert(&got, RT_F64, &conv, &err)) {
        diag_error(de, p->loc, "cannot convert weight '%s'%s: %s", p->name, in_file(b), err.msg);
        rt_tensor_free(&got);
        errors++;
        continue;
      }
      src = &conv;
    }
    int same = src->ndim == n && memcmp(src->shape, want, (size_t)n * sizeof *want) == 0;
    if (!same && !same_but_unit_axes(src->ndim, src->shape, n, want)) {
      Given g = {"weight", p->name, in_file(b), p->type, p->loc, src->ndim, {0}};
      memcpy(g.shape, src->shape, (size_t)src->ndim * sizeof *g.shape);
      report_mismatch(b, &g, de);
      errors++;
    } else if (weight_alloc(b, i, n, want, de)) {
      errors++;
    } else {
      int64_t cnt = rt_numel(src);
      if (cnt > 0) memcpy(b->weights[i].data, src->data, (size_t)cnt * sizeof(double));
    }
    rt_tensor_free(&conv);
    rt_tensor_free(&got);
  }
  return errors ? -1 : 0;
}

/* xoshiro256** seeded through splitmix64 (Blackman & Vigna): small, fast and
 * identical on every platform, so a seed names the same weights everywhere. */
typedef struct Rng {
  uint64_t s[4];
} Rng;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(Rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(Rng *r) {
  return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

int ir_binding_random(IrBinding *b, uint64_t seed, DiagEngine *de) {
  if (check_dims_known(b, de)) return -1;
  Rng rng;
  uint64_t x = seed;
  for (int k = 0; k < 4; k++) rng.s[k] = splitmix64(&x);
  for (int i = 0; i < b->flat.params.n; i++) {
    const IrFlatVar *p = &b->flat.params.v[i];
    int64_t shape[RT_MAX_RANK + 1];
    int n = stored_shape(b, p->type, shape);
    if (n < 0 || n > RT_MAX_RANK) {
      diag_error(de, p->loc, "shape %s of weight '%s' cannot be stored", decl_str(b, p->type),
                 p->name);
      return -1;
    }
    if (weight_alloc(b, i, n, shape, de)) return -1;
    /* PyTorch's default for Linear and RNN weights: U(-k, k), k = 1/sqrt(fan_in). */
    int64_t fan_in = p->type.rank > 0 ? shape[p->type.rank - 1] : 0;
    double k = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 1.0;
    double *d = b->weights[i].data;
    int64_t cnt = rt_numel(&b->weights[i]);
    /* Rounded to float32 so that float32 and float64 runs see the same weights. */
    for (int64_t j = 0; j < cnt; j++) d[j] = (double)(float)((2.0 * rng_uniform(&rng) - 1.0) * k);
  }
  return 0;
}
