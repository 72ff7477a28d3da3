/* fuzz_frontend.c - libFuzzer target for the whole frontend and the passes:
 * bytes are a .seq source compiled from a string (lexer, parser, imports,
 * sema, lowering to IR); a module that compiles must also pass the verifier,
 * print, flatten every function's instance tree, classify (passes/classify.c)
 * and rewrite (passes/rewrite.c) into a module that verifies, and every cell
 * goes through passes/jacobian.c (which may refuse an op with a diagnostic).
 * Any crash, sanitizer report, leak, verifier complaint about accepted input,
 * or pass failure on valid IR is a bug. Built only with -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "ir/support.h"
#include "passes/passes.h"

static FILE *devnull;

static void fail(const DiagEngine *de, const char *what) {
  fprintf(stderr, "fuzz_frontend: %s failed on a module that compiled\n", what);
  for (int i = 0; i < de->diags.n; i++) diag_format(stderr, &de->diags.v[i]);
  __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!devnull) devnull = fopen("/dev/null", "w");
  Arena *a = arena_create();
  if (!a) return 0;
  /* The source text must be NUL-terminated; embedded NULs stay (SrcFile.len is the truth). */
  char *text = arena_alloc(a, size + 1);
  if (!text) {
    arena_destroy(a);
    return 0;
  }
  memcpy(text, data, size);
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, NULL);
  IrModule *m = seq_compile_string(a, &sm, &de, "fuzz.seq", text, NULL);
  if (m) {
    /* Accepted input must give valid IR: the verifier's report is a bug, so crash on it. */
    if (ir_verify(m, &de, "frontend") != 0) fail(&de, "ir_verify");
    if (devnull) ir_print_module(devnull, m);
    for (int i = 0; i < m->funcs.n; i++) {
      IrFlat flat;
      (void)ir_flatten(a, m, m->funcs.v[i], &flat, &de);
    }
    ClassifyResult *cr = NULL;
    if (classify_module(a, m, &cr, &de) != 0) fail(&de, "classify_module");
    if (devnull) classify_print_report(devnull, m, cr);
    IrModule *rw = NULL;
    if (rewrite_module(a, m, &rw, &de) != 0) fail(&de, "rewrite_module");
    if (ir_verify(rw, &de, "rewrite") != 0) fail(&de, "ir_verify after rewrite");
    /* Derivatives add functions to m: only the cells that were there before. */
    int nfuncs = m->funcs.n;
    for (int i = 0; i < nfuncs; i++) {
      if (m->funcs.v[i]->kind != IR_FN_CELL) continue;
      IrFunc *out = NULL;
      (void)jacobian_jvp_cell(a, m, m->funcs.v[i], &out, &de);
      (void)jacobian_diag_cell(a, m, m->funcs.v[i], &out, &de);
    }
    if (ir_verify(m, &de, "jacobian") != 0) fail(&de, "ir_verify after jacobian");
  }
  for (int i = 0; i < de.diags.n; i++)
    if (devnull) diag_format(devnull, &de.diags.v[i]);
  arena_destroy(a);
  return 0;
}
