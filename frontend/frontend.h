/* frontend.h - the frontend's one entry point: source text in, checked IR out.
 * Parsing (lexer.l, parser.y) builds the AST; sema.c resolves names and
 * imports, infers and checks shapes, and lowers to IR. Errors are diagnostics
 * in `de`; nothing here exits.
 */
#ifndef SEQ_FRONTEND_H
#define SEQ_FRONTEND_H

#include "frontend/ast.h"
#include "ir/ir.h"

typedef struct FrontendOptions {
  /* Directories searched for `import "std/NAME.seq"` (the "std/" prefix maps to
   * each of these). NULL-terminated; when NULL the built-in defaults are used:
   * $SEQ_STDLIB, the source tree's stdlib/ and the install prefix's. */
  const char *const *stdlib_dirs;
  /* Name of the unit to make the module's entry; NULL = the last unit of the
   * main file. */
  const char *entry;
  /* Dims given on the command line (--dims). Only structural uses read them at
   * compile time: the length of a layer array `layer L[n] = ...`. */
  int ndim_overrides;
  const char *const *dim_override_names;
  const int64_t *dim_override_values;
} FrontendOptions;

/* Returns NULL (with diagnostics in de) on any error. */
IrModule *seq_compile_file(Arena *a, SrcMgr *sm, DiagEngine *de, const char *path,
                           const FrontendOptions *opt);
IrModule *seq_compile_string(Arena *a, SrcMgr *sm, DiagEngine *de, const char *name,
                             const char *text, const FrontendOptions *opt);

#endif
