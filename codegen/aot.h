/* aot.h - ahead-of-time compilation: object, assembly or LLVM text, or a
 * shared object linked with the CPU runtime archive, plus its C header. */
#ifndef SEQ_CG_AOT_H
#define SEQ_CG_AOT_H

#include "codegen/cg.h"

typedef enum { CG_EMIT_SO, CG_EMIT_LLVM, CG_EMIT_ASM, CG_EMIT_OBJ } CgEmitKind;

/* Renders schedule s and writes it as `kind` to out_path; a shared object
 * also gets its C header (header_path, or out_path with .so replaced by .h). */
int cg_aot_build(Arena *a, const Schedule *s, const CgOptions *opt, CgEmitKind kind,
                 const char *out_path, const char *header_path, DiagEngine *de);
/* Writes the C header for a compiled signature. */
int cg_write_header(const AbiSignature *sig, const char *path, DiagEngine *de);

#endif
