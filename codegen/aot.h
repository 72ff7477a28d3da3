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
/* Writes the C header for a compiled signature; prepared: with the
 * SYM_prepare family, which the CPU .so exports. */
int cg_write_header(const AbiSignature *sig, int prepared, const char *path, DiagEngine *de);

/* Where the runtime archive `lib` (libseqrt_cpu.a, libseqrt_cuda.a) that a
 * shared object is linked with is: the environment variable `env` when set;
 * else beside the running executable's install tree (<prefix>/bin/seqc ->
 * <prefix>/<libdir>/lib), so an installed seqc works wherever the prefix was
 * moved or --prefix put it; else build_path (seqc run from its build tree)
 * if it exists; else install_path (the configure-time install path). A path
 * made here is allocated in arena a. */
const char *cg_aot_runtime_archive(Arena *a, const char *lib, const char *env,
                                   const char *build_path, const char *install_path);
/* Runs argv (the C compiler linking a shared object) without a shell, so
 * paths with spaces or quotes stay intact: 0, or -1 with a diagnostic. */
int cg_aot_run_command(char *const *argv, DiagEngine *de);

#endif
