/* fuzz_frontend.c - libFuzzer target for the whole frontend: bytes are a .seq
 * source compiled from a string (lexer, parser, imports, sema, lowering to IR);
 * a module that compiles must also pass the verifier, print, and flatten every
 * function's instance tree. Any crash, sanitizer report, leak or verifier
 * complaint about accepted input is a bug. Built only with -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "ir/support.h"

static FILE *devnull;

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
    if (ir_verify(m, &de, "frontend") != 0) {
      for (int i = 0; i < de.diags.n; i++) diag_format(stderr, &de.diags.v[i]);
      __builtin_trap();
    }
    if (devnull) ir_print_module(devnull, m);
    for (int i = 0; i < m->funcs.n; i++) {
      IrFlat flat;
      (void)ir_flatten(a, m, m->funcs.v[i], &flat, &de);
    }
  }
  for (int i = 0; i < de.diags.n; i++)
    if (devnull) diag_format(devnull, &de.diags.v[i]);
  arena_destroy(a);
  return 0;
}
