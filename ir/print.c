/* print.c - the stable text form of the IR (seqc --emit=ir, --dump-after).
 *
 *   cell LSTM(I, H) {
 *     param %0 weight_ih: [4*H, I]
 *     input %0 x: [I]
 *     state %0 h: [H] init=v1 next=v30
 *     output %0 y: [H] = v30
 *     v0: [] = const 0
 *     v5: [4*H] = matmul v2, v4
 *     v9: [H] = slice v8 axis=0 [0, H)
 *   }
 *
 * One line per node, `vN: TYPE = op operands attributes`, in node order.
 * Nothing that varies between runs (addresses, hash order, locations) is
 * printed, so golden tests can diff the text.
 */
#include "ir/ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Shortest %g form that reads back as the same double, so constants
 * round-trip without printing 17 digits for 0.1. */
static void fmt_double(char *buf, size_t n, double v) {
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, n, "%.*g", prec, v);
    if (isnan(v) || strtod(buf, NULL) == v) return;
  }
}

static void print_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p < 0x20 || *p >= 0x7f)
      fprintf(out, "\\x%02x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* A name array for dim_print, from the function's dims (caller frees). */
static const char **dim_names_new(const IrFunc *f) {
  if (f->dims.n == 0) return NULL;
  const char **names = seq_malloc((size_t)f->dims.n * sizeof *names);
  if (!names) return NULL;
  for (int i = 0; i < f->dims.n; i++) names[i] = f->dims.v[i].name;
  return names;
}

/* Variables the function does not have (a compiler bug the verifier
 * reports) print as $N instead of reading past the name array. */
static void print_dim(FILE *out, const IrFunc *f, const char **names, DimExpr e) {
  for (int i = 0; i < e.nterms; i++)
    for (int k = 0; k < e.t[i].nvars; k++)
      if (e.t[i].vars[k] < 0 || e.t[i].vars[k] >= f->dims.n) names = NULL;
  dim_print(out, e, names);
}

static void print_type(FILE *out, const IrFunc *f, const char **names, IrType t) {
  if (t.rank < 0 || t.rank > SEQ_MAX_RANK || (t.rank > 0 && !t.dims)) {
    fputs("<invalid type>", out);
    return;
  }
  if (t.elem == IR_INT && t.rank == 0) {
    fputs("int", out);
    return;
  }
  fputs(t.elem == IR_COMPLEX ? "complex[" : t.elem == IR_INT ? "int[" : "[", out);
  for (int i = 0; i < t.rank; i++) {
    if (i) fputs(", ", out);
    print_dim(out, f, names, t.dims[i]);
  }
  fputc(']', out);
}

void ir_print_type(FILE *out, const IrFunc *f, IrType t) {
  const char **names = dim_names_new(f);
  print_type(out, f, names, t);
  seq_free(names);
}

static void print_ref(FILE *out, IrRef r) {
  if (r == IR_NONE)
    fputs("none", out);
  else
    fprintf(out, "v%d", (int)r);
}

static void print_node(FILE *out, const IrFunc *f, const char **names, IrRef r) {
  const IrNode *n = &f->nodes.v[r];
  char num[40];
  fprintf(out, "  v%d: ", (int)r);
  print_type(out, f, names, n->type);
  if ((unsigned)n->op >= IR_NUM_OPS) {
    fprintf(out, " = <op %d>\n", (int)n->op);
    return;
  }
  fprintf(out, " = %s", ir_op_info[n->op].text);
  if (n->op == IR_CALL) {
    if (n->index >= 0 && n->index < f->layers.n)
      fprintf(out, " %s", f->layers.v[n->index].name);
    else
      fprintf(out, " <layer %d>", n->index);
  }
  for (int i = 0; i < n->nargs; i++) {
    fputs(i ? ", " : " ", out);
    print_ref(out, n->args[i]);
  }
  switch (n->op) {
  case IR_CONST:
    fmt_double(num, sizeof num, n->cval);
    fprintf(out, " %s", num);
    break;
  case IR_DIMVAL:
  case IR_EYE:
    fputc(' ', out);
    print_dim(out, f, names, n->dval);
    break;
  case IR_PARAM:
  case IR_INPUT:
  case IR_STATE: {
    const char *name = NULL;
    if (n->op == IR_PARAM && n->index >= 0 && n->index < f->params.n)
      name = f->params.v[n->index].name;
    if (n->op == IR_INPUT && n->index >= 0 && n->index < f->inputs.n)
      name = f->inputs.v[n->index].name;
    if (n->op == IR_STATE && n->index >= 0 && n->index < f->states.n)
      name = f->states.v[n->index].name;
    fprintf(out, " %d", n->index);
    if (name) fprintf(out, "  # %s", name);
    break;
  }
  case IR_SLICE:
    fprintf(out, " axis=%d [", n->axis);
    print_dim(out, f, names, n->start);
    fputs(", ", out);
    print_dim(out, f, names, n->stop);
    fputc(')', out);
    break;
  case IR_INDEX:
    fprintf(out, " axis=%d [", n->axis);
    print_dim(out, f, names, n->start);
    fputc(']', out);
    break;
  case IR_CONCAT:
    fprintf(out, " axis=%d", n->axis);
    break;
  case IR_WINDOW:
    fprintf(out, " axis=%d%s", n->axis, n->index ? " after" : "");
    break;
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    if (n->axis == -1)
      fputs(" axis=all", out);
    else
      fprintf(out, " axis=%d", n->axis);
    break;
  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
    fmt_double(num, sizeof num, n->cval);
    fprintf(out, " eps=%s", num);
    break;
  case IR_RESULT:
    fprintf(out, " out=%d", n->index);
    break;
  default:
    break;
  }
  fputc('\n', out);
}

static void print_header(FILE *out, const IrModule *m, const IrFunc *f) {
  if (f->doc)
    for (const char *p = f->doc; *p;) {
      const char *e = strchr(p, '\n');
      size_t len = e ? (size_t)(e - p) : strlen(p);
      fprintf(out, "# %.*s\n", (int)len, p);
      p += len + (e ? 1 : 0);
    }
  int entry = m && m->entry >= 0 && m->entry < m->funcs.n && m->funcs.v[m->entry] == f;
  fprintf(out, "%s%s %s(", entry ? "entry " : "", f->kind == IR_FN_CELL ? "cell" : "model",
          f->name);
  /* Signature dims first, in declaration order, then the fresh ones. */
  const char **names = dim_names_new(f);
  int first = 1;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < f->dims.n; i++) {
      const IrDim *d = &f->dims.v[i];
      if ((pass == 0) != (d->in_signature != 0)) continue;
      fprintf(out, "%s%s%s", first ? "" : ", ", pass ? "fresh " : "", d->name);
      if (d->has_default) fprintf(out, "=%lld", (long long)d->deflt);
      for (int k = 0; k < f->dim_defaults.n; k++)
        if (f->dim_defaults.v[k].dim == i) {
          fputc('=', out);
          print_dim(out, f, names, f->dim_defaults.v[k].expr);
        }
      for (int k = 0; k < f->dim_quotients.n; k++)
        if (f->dim_quotients.v[k].dim == i) {
          DimExpr den = f->dim_quotients.v[k].den;
          int bare = den.t[0].nvars + (den.t[0].coef != 1) <= 1;
          fprintf(out, "=%s/%s", f->dims.v[f->dim_quotients.v[k].num].name, bare ? "" : "(");
          print_dim(out, f, names, den);
          if (!bare) fputc(')', out);
        }
      for (int k = 0; k < f->dim_pins.n; k++)
        if (f->dim_pins.v[k].dim == i) {
          fprintf(out, " (fixed at %lld)", (long long)f->dim_pins.v[k].value);
          break;
        }
      first = 0;
    }
  seq_free(names);
  fputs(")", out);
  if (f->grid) fprintf(out, " grid %lld", (long long)f->grid);
  fputs(" {\n", out);
}

void ir_print_func(FILE *out, const IrModule *m, const IrFunc *f) {
  const char **names = dim_names_new(f);
  print_header(out, m, f);
  for (int i = 0; i < f->params.n; i++) {
    fprintf(out, "  param %%%d %s: ", i, f->params.v[i].name);
    print_type(out, f, names, f->params.v[i].type);
    fputc('\n', out);
  }
  for (int i = 0; i < f->inputs.n; i++) {
    fprintf(out, "  %s %%%d %s: ", f->inputs.v[i].context ? "context" : "input", i,
            f->inputs.v[i].name);
    print_type(out, f, names, f->inputs.v[i].type);
    fputc('\n', out);
  }
  for (int i = 0; i < f->states.n; i++) {
    const IrState *s = &f->states.v[i];
    fprintf(out, "  state %%%d %s: ", i, s->name);
    print_type(out, f, names, s->type);
    fputs(" init=", out);
    print_ref(out, s->init);
    fputs(" next=", out);
    print_ref(out, s->next);
    if (s->hidden) fputs(" hidden", out);
    fputc('\n', out);
  }
  for (int i = 0; i < f->outputs.n; i++) {
    fprintf(out, "  output %%%d %s: ", i, f->outputs.v[i].name);
    print_type(out, f, names, f->outputs.v[i].type);
    fputs(" = ", out);
    print_ref(out, f->outputs.v[i].value);
    fputc('\n', out);
  }
  for (int i = 0; i < f->layers.n; i++) {
    const IrLayer *l = &f->layers.v[i];
    const IrFunc *callee =
        m && l->callee >= 0 && l->callee < m->funcs.n ? m->funcs.v[l->callee] : NULL;
    fprintf(out, "  layer %s = ", l->name);
    if (!callee) {
      fprintf(out, "<func %d>()", l->callee);
    } else {
      fprintf(out, "%s(", callee->name);
      for (int k = 0; k < callee->dims.n; k++) {
        fprintf(out, "%s%s=", k ? ", " : "", callee->dims.v[k].name);
        if (l->dim_args)
          print_dim(out, f, names, l->dim_args[k]);
        else
          fputs("?", out);
      }
      fputc(')', out);
    }
    fputs(" prefix ", out);
    print_string(out, l->prefix);
    fputs(" suffix ", out);
    print_string(out, l->suffix);
    if (l->reverse) fputs(" reverse", out);
    if (l->over) fputs(l->over_lengths ? " over, lengths last" : " over", out);
    if (l->newton.states)
      fprintf(out, " newton(states=%d, rtol=%g, atol=%g, max_iter=%d, window=%lld%s)",
              l->newton.states, l->newton.rtol, l->newton.atol, l->newton.max_iter,
              (long long)l->newton.window,
              l->newton.quasi   ? ", quasi"
              : l->newton.dense ? ", dense"
                                : "");
    fputc('\n', out);
  }
  for (IrRef r = 0; r < f->nodes.n; r++) print_node(out, f, names, r);
  fputs("}\n", out);
  seq_free(names);
}

void ir_print_module(FILE *out, const IrModule *m) {
  for (int i = 0; i < m->funcs.n; i++) {
    if (i) fputc('\n', out);
    ir_print_func(out, m, m->funcs.v[i]);
  }
}
