/* ast.h - the syntax tree the parser builds. Parser actions only construct
 * these nodes; name resolution, shapes and lowering to IR live in sema.c.
 * Every node keeps the location of its first token (a binary operation keeps
 * its operator's, where shape errors belong) so every error can point at the
 * source with a caret.
 */
#ifndef SEQ_AST_H
#define SEQ_AST_H

#include "ir/support.h"

typedef struct AstExpr AstExpr;
typedef struct AstStmt AstStmt;

/* A dotted name: `x`, `in_proj.weight`, `l.mixer`. Parts are kept separate;
 * sema decides what a path refers to (a parameter whose name contains dots, a
 * member of a layer, a dimension). */
typedef struct AstPath {
  int nparts;
  const char **parts;
  SrcLoc loc;
} AstPath;

typedef enum {
  AST_NUM,       /* number literal: num, is_int */
  AST_NAME,      /* path, primed (h' = the new value of state h) */
  AST_UNARY,     /* op ('-' or '+'), lhs */
  AST_BINARY,    /* op ('+','-','*','/','@'), lhs, rhs; loc is the operator's */
  AST_CALL,      /* callee (AST_NAME), args (AST_KWARG for name=value) */
  AST_INDEX,     /* lhs[args]; args are exprs, AST_SLICE, AST_NONE */
  AST_TRANSPOSE, /* lhs^T */
  AST_LIST,      /* [a, b, c] (split sizes, shapes) */
  AST_SLICE,     /* start:stop (either may be NULL) inside an index */
  AST_NONE,      /* `None` inside an index: insert a unit axis */
  AST_KWARG,     /* name = value inside a call's arguments: kwname, lhs */
  AST_STRING,    /* string literal (only where the grammar allows it) */
} AstExprKind;

struct AstExpr {
  AstExprKind kind;
  SrcLoc loc;
  int op;             /* AST_UNARY / AST_BINARY: the operator character */
  double num;         /* AST_NUM */
  int is_int;         /* AST_NUM: written without '.', 'e' or 'E' */
  const char *text;   /* AST_NUM: the literal as written; AST_STRING: contents */
  AstPath path;       /* AST_NAME */
  int primed;         /* AST_NAME: written with a trailing ' */
  const char *kwname; /* AST_KWARG */
  AstExpr *lhs, *rhs; /* operands; AST_SLICE: lhs = start, rhs = stop */
  AstExpr *callee;    /* AST_CALL */
  int nargs;          /* AST_CALL, AST_INDEX, AST_LIST */
  AstExpr **args;
};

typedef enum {
  AST_LET,    /* let n1, n2 = e1 [, e2]: names, values */
  AST_ASSIGN, /* target = value: target is an AST_NAME (h', y, or a rebound local) */
  AST_FOR,    /* for var in array { body } (model forward only) */
} AstStmtKind;

struct AstStmt {
  AstStmtKind kind;
  SrcLoc loc;
  int nnames; /* AST_LET */
  const char **names;
  SrcLoc *name_locs;
  int nvalues; /* AST_LET: 1 (destructured) or nnames */
  AstExpr **values;
  AstExpr *target; /* AST_ASSIGN */
  AstExpr *value;  /* AST_ASSIGN */
  const char *var; /* AST_FOR */
  AstPath array;   /* AST_FOR over a layer array */
  int nrange;      /* AST_FOR over range(...): 1 or 2 bounds (0: a layer array) */
  AstExpr **range; /* the bounds, dim expressions */
  int nbody;
  AstStmt **body;
};

/* The type written after ':' in a declaration: `[4*H, I]`, `complex[H, N]`,
 * `int`. Each dimension is an expression over dims and integer literals. */
typedef enum { AST_TY_REAL, AST_TY_COMPLEX, AST_TY_INT } AstElemType;
typedef struct AstType {
  AstElemType elem;
  int ndims;
  AstExpr **dims;
  SrcLoc loc;
} AstType;

typedef enum {
  AST_PARAM,  /* param path: type */
  AST_INPUT,  /* input name: type */
  AST_STATE,  /* state name: type [= init] */
  AST_OUTPUT, /* output name: type */
  AST_LAYER,  /* layer name[count] = [reverse] Callee(args) [prefix|suffix "..."] */
  AST_DEF,    /* def name(p1, p2) = body: a function inlined where it is called */
} AstDeclKind;

typedef struct AstDecl {
  AstDeclKind kind;
  SrcLoc loc;
  AstPath name;       /* parameters may have dotted names; others have one part */
  AstType type;       /* PARAM, INPUT, STATE, OUTPUT */
  AstExpr *init;      /* STATE: initial value (NULL means 0) */
  AstExpr *count;     /* LAYER: array length or NULL */
  int reverse;        /* LAYER: run the callee backwards in time */
  int context;        /* INPUT: a context (given once per sequence, read by every step) */
  const char *callee; /* LAYER: cell or model name */
  SrcLoc callee_loc;
  int nargs; /* LAYER: dimension arguments (AST_KWARG for D=expr) */
  AstExpr **args;
  const char *prefix; /* LAYER: name template for parameters; "{i}" is the index */
  const char *suffix;
  int nfparams; /* DEF: parameter names */
  const char **fparams;
  SrcLoc *fparam_locs;
  AstExpr *body; /* DEF: the function's value */
} AstDecl;

typedef struct AstDimParam {
  const char *name;
  AstExpr *deflt; /* default: an integer or an expression over earlier dims; or NULL */
  SrcLoc loc;
} AstDimParam;

typedef enum { AST_CELL, AST_MODEL } AstUnitKind;

/* A cell (one time step, body under `step`) or a model (sequence-level
 * composition, body under `forward`). */
typedef struct AstUnit {
  AstUnitKind kind;
  const char *name;
  SrcLoc loc;
  int ndims;
  AstDimParam *dims;
  int ndecls;
  AstDecl **decls;
  int nbody;
  AstStmt **body;
  SrcLoc body_loc;
  const char *doc;     /* the comment block directly above the unit, if any */
  const AstExpr *grid; /* step grid(Y): the row length Y; NULL for an ordinary step */
} AstUnit;

typedef struct AstImport {
  const char *path; /* as written: "std/lstm.seq" or a relative path */
  SrcLoc loc;
} AstImport;

typedef struct AstFile {
  const SrcFile *src;
  int nimports;
  AstImport *imports;
  int nunits;
  AstUnit **units;
  int ndefs; /* top-level `def`s (AST_DEF declarations) */
  AstDecl **defs;
} AstFile;

/* Parses one source file. Syntax errors go to `de` (several per run where the
 * parser can recover). Returns NULL only if allocation failed; on syntax
 * errors the returned tree holds what could be parsed and de->nerrors > 0. */
AstFile *ast_parse(Arena *a, DiagEngine *de, const SrcFile *src);

/* Prints the tree as an S-expression (stable; used by parser golden tests). */
void ast_print(FILE *out, const AstFile *f);

#endif
