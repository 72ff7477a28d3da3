/* flatten.c - the instance tree under a root function, flattened: every
 * parameter and state with its full name and its type over the root's dims.
 * This is what weights are loaded by and what state tensors are named by.
 *
 * Naming: a layer's parameters are prefix + name + suffix of that layer, and
 * nesting composes from the outside in (outer_prefix + inner_full_name +
 * outer_suffix), so `layer l0 = GRU(...) suffix "_l0"` inside a model loaded
 * under prefix "enc." gives "enc.weight_ih_l0". States are named by the
 * dotted path of layers leading to them ("l0.h", "layers.1.mixer.s"),
 * independent of weight prefixes, because they are runtime values rather than
 * checkpoint entries.
 */
#include "ir/ir.h"

#include <string.h>

/* Instance trees deeper than this are certainly a recursive instantiation
 * the verifier would have reported; flattening refuses rather than recursing
 * without end. */
#define FLATTEN_MAX_DEPTH 64
/* Depth alone does not bound the tree: 30 models each holding two layers of
 * the one before is 2^30 instances. Past this many, a program is a mistake
 * (or an attack), and binding it would exhaust memory and time. */
#define FLATTEN_MAX_INSTANCES (1 << 16)

typedef struct {
  Arena *a;
  const IrModule *m;
  const IrFunc *root;
  IrFlat *out;
  DiagEngine *de;
  const char *const *root_names;
  int ninstances;
  /* Open-addressing index of out->params by name (entries are index + 1, 0 is
   * empty), so that tied weights are found without a quadratic scan. */
  int *by_name;
  int cap;
} Flatten;

static unsigned name_hash(const char *s) {
  unsigned h = 2166136261u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static int *name_slot(Flatten *cx, const char *name) {
  unsigned i = name_hash(name) & (unsigned)(cx->cap - 1);
  while (cx->by_name[i] && strcmp(cx->out->params.v[cx->by_name[i] - 1].name, name) != 0)
    i = (i + 1) & (unsigned)(cx->cap - 1);
  return &cx->by_name[i];
}

/* Keeps the index at most half full. */
static int name_index_reserve(Flatten *cx, int n) {
  if (2 * n < cx->cap) return 0;
  int cap = cx->cap ? 2 * cx->cap : 64;
  int *slots = arena_calloc(cx->a, (size_t)cap, sizeof *slots);
  if (!slots) return -1;
  cx->by_name = slots;
  cx->cap = cap;
  for (int i = 0; i < cx->out->params.n; i++) *name_slot(cx, cx->out->params.v[i].name) = i + 1;
  return 0;
}

/* "[4*H, I]" over the root's dims, for diagnostics. */
static const char *type_str(Flatten *cx, IrType t) {
  if (t.elem == IR_INT && t.rank == 0) return "int";
  const char *s = t.elem == IR_COMPLEX ? "complex[" : "[";
  for (int i = 0; i < t.rank && s; i++) {
    const char *d = dim_str(cx->a, t.dims[i], cx->root_names);
    s = d ? arena_printf(cx->a, "%s%s%s", s, i ? ", " : "", d) : NULL;
  }
  s = s ? arena_printf(cx->a, "%s]", s) : NULL;
  return s ? s : "?";
}

/* Unverified IR must not make substitution read past the bindings. */
static int vars_below(DimExpr e, int n) {
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++)
      if (e.t[i].vars[k] < 0 || e.t[i].vars[k] >= n) return 0;
  return 1;
}

/* Rewrites t, over the ndims dims of some function of the tree, to the
 * root's dims. sub == NULL means t is already over the root's dims. */
static int subst_type(Flatten *cx, IrType t, int ndims, const DimExpr *sub, IrType *out) {
  DimExpr dims[SEQ_MAX_RANK];
  if (t.rank < 0 || t.rank > SEQ_MAX_RANK || (t.rank > 0 && !t.dims)) return -1;
  for (int i = 0; i < t.rank; i++) {
    if (!vars_below(t.dims[i], ndims))
      return -1;
    else if (!sub)
      dims[i] = t.dims[i];
    else if (dim_subst(t.dims[i], sub, &dims[i]))
      return -1;
  }
  *out = ir_type(cx->a, t.elem, t.rank, dims);
  return out->rank == t.rank ? 0 : -1;
}

/* Adds (or finds, for a tied weight) the flat parameter `name`; *index is
 * its position in out->params. */
static int add_param(Flatten *cx, const char *name, IrType t, SrcLoc loc, int *index) {
  if (name_index_reserve(cx, cx->out->params.n + 1)) {
    diag_error(cx->de, loc, "out of memory flattening parameters");
    return -1;
  }
  int *slot = name_slot(cx, name);
  if (*slot) {
    IrFlatVar *p = &cx->out->params.v[*slot - 1];
    *index = *slot - 1;
    /* Two instances that name the same weight share it (tied embeddings);
     * that only makes sense if they agree on its shape. */
    if (ir_type_eq(p->type, t)) return 0;
    diag_error(cx->de, loc, "parameter %s declared with two shapes, %s and %s", name,
               type_str(cx, p->type), type_str(cx, t));
    if (p->loc.file) diag_note(cx->de, p->loc, "first declared here");
    return -1;
  }
  IrFlatVar v = {name, t, loc, 0};
  if (vec_push(cx->a, &cx->out->params, v)) {
    diag_error(cx->de, loc, "out of memory flattening parameters");
    return -1;
  }
  *slot = cx->out->params.n;
  *index = cx->out->params.n - 1;
  return 0;
}

/* The identity substitution: the root's dims over themselves. */
static DimExpr *root_dims(Flatten *cx, const IrFunc *f) {
  DimExpr *d = arena_calloc(cx->a, (size_t)f->dims.n + 1, sizeof *d);
  if (d)
    for (int i = 0; i < f->dims.n; i++) d[i] = dim_var(i);
  return d;
}

/* Appends the instance of f (dims `sub` over the root's; NULL for the root
 * itself) and, depth first, its layers'. *index is its place in out->insts. */
static int flatten_func(Flatten *cx, const IrFunc *f, const DimExpr *sub, const char *prefix,
                        const char *suffix, const char *state_path, SrcLoc at, int depth,
                        int parent, int reverse, int *index) {
  if (depth > FLATTEN_MAX_DEPTH) {
    diag_error(cx->de, at, "layers nested more than %d deep (does %s instantiate itself?)",
               FLATTEN_MAX_DEPTH, f->name);
    return -1;
  }
  if (++cx->ninstances > FLATTEN_MAX_INSTANCES) {
    /* Once, not once per pending layer; at the root, whose tree is too
     * large, not at the layer deep inside it where the count ran out. */
    if (cx->ninstances == FLATTEN_MAX_INSTANCES + 1)
      diag_error(cx->de, cx->root->loc, "%s holds more than %d layer instances in all",
                 cx->root->name, FLATTEN_MAX_INSTANCES);
    return -1;
  }
  IrFlatInst inst = {f, NULL, NULL, NULL, NULL, parent, reverse};
  inst.dims = sub ? (DimExpr *)sub : root_dims(cx, f);
  inst.params = arena_calloc(cx->a, (size_t)f->params.n + 1, sizeof(int));
  inst.states = arena_calloc(cx->a, (size_t)f->states.n + 1, sizeof(int));
  inst.layers = arena_calloc(cx->a, (size_t)f->layers.n + 1, sizeof(int));
  int me = cx->out->insts.n;
  if (!inst.dims || !inst.params || !inst.states || !inst.layers ||
      vec_push(cx->a, &cx->out->insts, inst)) {
    diag_error(cx->de, at, "out of memory flattening %s", f->name);
    return -1;
  }
  *index = me;
  int rc = 0;
  for (int i = 0; i < f->params.n; i++) {
    const IrParam *p = &f->params.v[i];
    const char *name = arena_printf(cx->a, "%s%s%s", prefix, p->name, suffix);
    IrType t;
    if (!name) {
      diag_error(cx->de, p->loc, "out of memory flattening parameters");
      return -1;
    }
    if (subst_type(cx, p->type, f->dims.n, sub, &t)) {
      diag_error(cx->de, at, "shape of parameter %s is too complex once the dims of %s are bound",
                 name, f->name);
      rc = -1;
      continue;
    }
    if (add_param(cx, name, t, p->loc, &cx->out->insts.v[me].params[i])) rc = -1;
  }
  for (int i = 0; i < f->states.n; i++) {
    const IrState *s = &f->states.v[i];
    IrFlatVar v = {
        arena_printf(cx->a, "%s%s", state_path, s->name), {IR_REAL, 0, NULL}, s->loc, s->hidden};
    if (!v.name) {
      diag_error(cx->de, s->loc, "out of memory flattening states");
      return -1;
    }
    if (subst_type(cx, s->type, f->dims.n, sub, &v.type)) {
      diag_error(cx->de, at, "shape of state %s is too complex once the dims of %s are bound",
                 v.name, f->name);
      rc = -1;
      continue;
    }
    cx->out->insts.v[me].states[i] = cx->out->states.n;
    if (vec_push(cx->a, &cx->out->states, v)) {
      diag_error(cx->de, s->loc, "out of memory flattening states");
      return -1;
    }
  }
  for (int i = 0; i < f->layers.n; i++) {
    const IrLayer *l = &f->layers.v[i];
    if (l->callee < 0 || l->callee >= cx->m->funcs.n || !l->name) {
      diag_error(cx->de, l->loc, "layer %d of %s instantiates no function", i, f->name);
      rc = -1;
      continue;
    }
    const IrFunc *g = cx->m->funcs.v[l->callee];
    /* A Newton layer's step is the caller's own (its parameters are the
     * caller's, in order, and it has no states: ir_verify checks): it is
     * the same instance. */
    if (l->newton.states > 0) {
      cx->out->insts.v[me].layers[i] = me;
      continue;
    }
    if (g->dims.n > 0 && !l->dim_args) {
      diag_error(cx->de, l->loc, "layer %s binds none of the dims of %s", l->name, g->name);
      rc = -1;
      continue;
    }
    /* The callee's dims over the root's: compose the layer's bindings with
     * the bindings that brought us to f. */
    DimExpr *gsub = g->dims.n ? arena_calloc(cx->a, (size_t)g->dims.n, sizeof *gsub) : NULL;
    if (g->dims.n && !gsub) {
      diag_error(cx->de, l->loc, "out of memory flattening layer %s", l->name);
      return -1;
    }
    int ok = 1;
    for (int k = 0; k < g->dims.n; k++) {
      if (!vars_below(l->dim_args[k], f->dims.n))
        ok = 0;
      else if (!sub)
        gsub[k] = l->dim_args[k];
      else if (dim_subst(l->dim_args[k], sub, &gsub[k]))
        ok = 0;
    }
    if (!ok) {
      diag_error(cx->de, l->loc, "dims of layer %s are too complex to express over those of %s",
                 l->name, cx->root->name);
      rc = -1;
      continue;
    }
    const char *lp = arena_printf(cx->a, "%s%s", prefix, l->prefix ? l->prefix : "");
    const char *ls = arena_printf(cx->a, "%s%s", l->suffix ? l->suffix : "", suffix);
    const char *path = arena_printf(cx->a, "%s%s.", state_path, l->name);
    if (!lp || !ls || !path) {
      diag_error(cx->de, l->loc, "out of memory flattening layer %s", l->name);
      return -1;
    }
    int child = -1;
    if (flatten_func(cx, g, gsub, lp, ls, path, l->loc, depth + 1, me, l->reverse, &child)) rc = -1;
    cx->out->insts.v[me].layers[i] = child;
  }
  return rc;
}

int ir_flatten(Arena *a, const IrModule *m, const IrFunc *root, IrFlat *out, DiagEngine *de) {
  memset(out, 0, sizeof *out);
  const char **names = NULL;
  if (root->dims.n) {
    names = arena_calloc(a, (size_t)root->dims.n, sizeof *names);
    if (!names) {
      diag_error(de, root->loc, "out of memory flattening %s", root->name);
      return -1;
    }
    for (int i = 0; i < root->dims.n; i++) names[i] = root->dims.v[i].name;
  }
  Flatten cx = {a, m, root, out, de, names, 0, NULL, 0};
  int index;
  return flatten_func(&cx, root, NULL, "", "", "", root->loc, 0, -1, 0, &index);
}
