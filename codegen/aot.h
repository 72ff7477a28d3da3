/* aot.h - ahead-of-time compilation: object, assembly or LLVM text, or a
 * shared object linked with the CPU runtime archive, plus its C header. */
#ifndef SEQ_CG_AOT_H
#define SEQ_CG_AOT_H

#include "codegen/cg.h"

typedef enum { CG_EMIT_SO, CG_EMIT_LLVM, CG_EMIT_ASM, CG_EMIT_OBJ } CgEmitKind;

int cg_aot_build(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *dims,
                 const CgOptions *opt, CgEmitKind kind, const char *out_path,
                 const char *header_path, DiagEngine *de);
/* Writes the C header for a compiled signature. */
int cg_write_header(const AbiSignature *sig, const char *path, DiagEngine *de);

#endif
