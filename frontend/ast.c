/* ast.c - printing the syntax tree.
 *
 * The dump is an S-expression, one declaration or statement per line, with
 * expressions on one line in prefix form: `(+ (@ W x) b)`, `(call sigmoid f)`,
 * `(index x (slice _ _) None)`. It is stable on purpose: parser golden tests
 * diff it, so it carries everything the parser decided (operators, primes,
 * kwargs, defaults, layer options) and no locations except each unit's.
 */
#include "frontend/ast.h"

static void print_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p == '\n')
      fputs("\\n", out);
    else if (*p < 0x20 || *p == 0x7f)
      fprintf(out, "\\x%02x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

static void print_path(FILE *out, const AstPath *p) {
  for (int i = 0; i < p->nparts; i++) fprintf(out, "%s%s", i ? "." : "", p->parts[i]);
}

static void print_expr(FILE *out, const AstExpr *e);

static void print_args(FILE *out, int n, AstExpr *const *args) {
  for (int i = 0; i < n; i++) {
    fputc(' ', out);
    print_expr(out, args[i]);
  }
}

static void print_expr(FILE *out, const AstExpr *e) {
  if (!e) {
    fputc('_', out);
    return;
  }
  switch (e->kind) {
  case AST_NUM:
    fputs(e->text ? e->text : "?", out);
    break;
  case AST_NAME:
    print_path(out, &e->path);
    if (e->primed) fputc('\'', out);
    break;
  case AST_UNARY:
    fprintf(out, "(%c ", e->op);
    print_expr(out, e->lhs);
    fputc(')', out);
    break;
  case AST_BINARY:
    fprintf(out, "(%c ", e->op);
    print_expr(out, e->lhs);
    fputc(' ', out);
    print_expr(out, e->rhs);
    fputc(')', out);
    break;
  case AST_CALL:
    fputs("(call ", out);
    print_expr(out, e->callee);
    print_args(out, e->nargs, e->args);
    fputc(')', out);
    break;
  case AST_INDEX:
    fputs("(index ", out);
    print_expr(out, e->lhs);
    print_args(out, e->nargs, e->args);
    fputc(')', out);
    break;
  case AST_TRANSPOSE:
    fputs("(T ", out);
    print_expr(out, e->lhs);
    fputc(')', out);
    break;
  case AST_LIST:
    fputs("(list", out);
    print_args(out, e->nargs, e->args);
    fputc(')', out);
    break;
  case AST_SLICE:
    fputs("(slice ", out);
    print_expr(out, e->lhs);
    fputc(' ', out);
    print_expr(out, e->rhs);
    fputc(')', out);
    break;
  case AST_NONE:
    fputs("None", out);
    break;
  case AST_KWARG:
    fprintf(out, "(kw %s ", e->kwname);
    print_expr(out, e->lhs);
    fputc(')', out);
    break;
  case AST_STRING:
    print_string(out, e->text ? e->text : "");
    break;
  }
}

static void print_type(FILE *out, const AstType *t) {
  switch (t->elem) {
  case AST_TY_INT:
    fputs("int", out);
    return;
  case AST_TY_REAL:
    fputs("(real", out);
    break;
  case AST_TY_COMPLEX:
    fputs("(complex", out);
    break;
  }
  print_args(out, t->ndims, t->dims);
  fputc(')', out);
}

static void indent(FILE *out, int depth) {
  fprintf(out, "\n%*s", 2 * depth, "");
}

static void print_decl(FILE *out, const AstDecl *d) {
  static const char *const kinds[] = {"param", "input", "state", "output", "layer", "def"};
  fprintf(out, "(%s ", d->context ? "context" : kinds[d->kind]);
  print_path(out, &d->name);
  if (d->kind == AST_DEF) {
    fputs(" (", out);
    for (int i = 0; i < d->nfparams; i++) fprintf(out, "%s%s", i ? " " : "", d->fparams[i]);
    fputs(") ", out);
    print_expr(out, d->body);
  } else if (d->kind != AST_LAYER) {
    fputc(' ', out);
    print_type(out, &d->type);
    if (d->init) {
      fputc(' ', out);
      print_expr(out, d->init);
    }
  } else {
    if (d->count) {
      fputs(" (count ", out);
      print_expr(out, d->count);
      fputc(')', out);
    }
    if (d->reverse) fputs(" reverse", out);
    fprintf(out, " (%s", d->callee);
    print_args(out, d->nargs, d->args);
    fputc(')', out);
    if (d->prefix) {
      fputs(" (prefix ", out);
      print_string(out, d->prefix);
      fputc(')', out);
    }
    if (d->suffix) {
      fputs(" (suffix ", out);
      print_string(out, d->suffix);
      fputc(')', out);
    }
  }
  fputc(')', out);
}

static void print_stmts(FILE *out, int n, AstStmt *const *body, int depth);

static void print_stmt(FILE *out, const AstStmt *s, int depth) {
  switch (s->kind) {
  case AST_LET:
    fputs("(let (", out);
    for (int i = 0; i < s->nnames; i++) fprintf(out, "%s%s", i ? " " : "", s->names[i]);
    fputc(')', out);
    print_args(out, s->nvalues, s->values);
    fputc(')', out);
    break;
  case AST_ASSIGN:
    fputs("(= ", out);
    print_expr(out, s->target);
    fputc(' ', out);
    print_expr(out, s->value);
    fputc(')', out);
    break;
  case AST_FOR:
    fprintf(out, "(for %s ", s->var);
    print_path(out, &s->array);
    if (s->nrange) {
      fputc('(', out);
      for (int i = 0; i < s->nrange; i++) {
        if (i) fputc(' ', out);
        print_expr(out, s->range[i]);
      }
      fputc(')', out);
    }
    print_stmts(out, s->nbody, s->body, depth + 1);
    fputc(')', out);
    break;
  }
}

static void print_stmts(FILE *out, int n, AstStmt *const *body, int depth) {
  for (int i = 0; i < n; i++) {
    indent(out, depth);
    print_stmt(out, body[i], depth);
  }
}

static void print_unit(FILE *out, const AstUnit *u) {
  fprintf(out, "(%s %s %d:%d", u->kind == AST_CELL ? "cell" : "model", u->name, u->loc.line,
          u->loc.col);
  if (u->doc) {
    indent(out, 1);
    fputs("(doc ", out);
    print_string(out, u->doc);
    fputc(')', out);
  }
  indent(out, 1);
  fputs("(dims", out);
  for (int i = 0; i < u->ndims; i++) {
    if (u->dims[i].deflt) {
      fprintf(out, " (%s ", u->dims[i].name);
      print_expr(out, u->dims[i].deflt);
      fputc(')', out);
    } else {
      fprintf(out, " %s", u->dims[i].name);
    }
  }
  fputc(')', out);
  for (int i = 0; i < u->ndecls; i++) {
    indent(out, 1);
    print_decl(out, u->decls[i]);
  }
  indent(out, 1);
  fputs(u->kind == AST_CELL ? "(step" : "(forward", out);
  if (u->grid) {
    fputs(" (grid ", out);
    print_expr(out, u->grid);
    fputc(')', out);
  }
  print_stmts(out, u->nbody, u->body, 2);
  fputs("))\n", out);
}

void ast_print(FILE *out, const AstFile *f) {
  if (!f) return;
  for (int i = 0; i < f->nimports; i++) {
    fputs("(import ", out);
    print_string(out, f->imports[i].path);
    fputs(")\n", out);
  }
  for (int i = 0; i < f->ndefs; i++) {
    print_decl(out, f->defs[i]);
    fputc('\n', out);
  }
  for (int i = 0; i < f->nunits; i++) print_unit(out, f->units[i]);
}
