/* jit.h - compiling a bound root with ORC LLJIT and finding its entry points. */
#ifndef SEQ_CG_JIT_H
#define SEQ_CG_JIT_H

#include "codegen/cg.h"

typedef struct CgJit CgJit;

/* Lowers, verifies, optimizes and JIT-compiles `root` with concrete dims.
 * Each call has its own thread-safe LLVM context and LLJIT instance, so two
 * threads may compile two modules at once. *sig is filled (arena-owned). */
CgJit *cg_jit_compile(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *dims,
                      const CgOptions *opt, AbiSignature *sig, DiagEngine *de);
/* Address of an entry point ("lstm_forward"), NULL with a diagnostic if absent. */
void *cg_jit_lookup(CgJit *j, const char *name, DiagEngine *de);
void cg_jit_destroy(CgJit *j);

#endif
