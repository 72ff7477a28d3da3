/* jit.h - compiling a bound root with ORC LLJIT and finding its entry points. */
#ifndef SEQ_CG_JIT_H
#define SEQ_CG_JIT_H

#include "codegen/cg.h"

typedef struct CgJit CgJit;

/* Renders, verifies, optimizes and JIT-compiles schedule s. Each call has
 * its own thread-safe LLVM context and LLJIT instance, so two threads may
 * compile two modules at once. */
CgJit *cg_jit_compile(Arena *a, const Schedule *s, const CgOptions *opt, DiagEngine *de);
/* Address of an entry point ("lstm_forward"), NULL with a diagnostic if absent. */
void *cg_jit_lookup(CgJit *j, const char *name, DiagEngine *de);
void cg_jit_destroy(CgJit *j);

#endif
