/* cg.h - the LLVM CPU backend: rendering a schedule (sched/sched.h) as LLVM
 * IR (codegen/llvm.h lists the renderer's files), target machines,
 * verification, optimization and object emission (target.c), the ORC JIT
 * (jit.c) and shared objects with a C header (aot.c).
 *
 * The backend renders after binding: every dim has a concrete value, so loop
 * trip counts are constants. The generated entry points, their argument order
 * and the status codes are the ABI documented in docs/abi.md (sched/abi.h).
 */
#ifndef SEQ_CG_H
#define SEQ_CG_H

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>

#include "ir/ir.h"
#include "sched/abi.h"
#include "sched/sched.h"

/* Renders schedule s into a new module in ctx (codegen/llvm.h). Defines the
 * entry points
 *   int32 SYM_forward(params, B, T, inputs, lengths, state_in, outputs, state_out)
 *   int32 SYM_forward_blob(blob, blob_floats, B, T, inputs, lengths, state_in, outputs, state_out)
 *   int32 SYM_step(params, B, inputs, state_in, outputs, state_out)   (if sig.has_step)
 *   int32 SYM_dims(int64 *out)
 *   int64 SYM_prepared_floats(void), int32 SYM_prepare(params, prepared), and
 *   SYM_forward_prepared / SYM_step_prepared: SYM_forward / SYM_step with
 *   the weights SYM_prepare packed (prepared after params)
 * Complex values are (re, im) float pairs, in buffers and at the interface
 * (a trailing axis of 2). Returns 0 and *out (owned by the caller). */
/* tm: the machine the module is for (its vector registers shape a few
 * loops, cg_target_vectors); NULL: an AVX-512-sized register file. */
int cg_lower(Arena *a, const Schedule *s, LLVMContextRef ctx, LLVMTargetMachineRef tm,
             LLVMModuleRef *out, DiagEngine *de);

/* ---- target.c ---- */
typedef struct CgOptions {
  int opt_level;        /* 0..3 */
  const char *cpu;      /* NULL or "": the host's */
  const char *features; /* NULL or "": the host's (only with the host cpu) */
} CgOptions;

/* Initializes the native target once (thread-safe). */
void cg_llvm_init(void);
/* Checks a target CPU ("native" or NULL/"" = the host's) and feature list
 * ("+avx2,-fma") against what this LLVM's x86-64 target supports and seqc's
 * code compiles with (codegen/target_x86.def): 0, or -1 with msg set.
 * LLVM itself would abort on some. Other targets: always 0. */
int cg_target_check(const char *cpu, const char *features, char *msg, size_t n);
/* A target machine for the host triple; NULL with a diagnostic on failure
 * (including every value cg_target_check refuses). */
LLVMTargetMachineRef cg_target_machine(const CgOptions *opt, LLVMRelocMode reloc, DiagEngine *de);
/* The vector registers of tm's target: floats per register and how many
 * (x86-64 with AVX-512F 16 and 32, with AVX 8 and 16, else 4 and 16;
 * AArch64 4 and 32; others 4 and 16). */
void cg_target_vectors(LLVMTargetMachineRef tm, int *floats, int *regs);
/* Routes ctx's LLVM diagnostics into de (never to stderr). */
void cg_capture_diagnostics(LLVMContextRef ctx, DiagEngine *de);
/* Verifies, then runs the default<On> pipeline. 0 on success. */
int cg_optimize(LLVMModuleRef mod, LLVMTargetMachineRef tm, int opt_level, DiagEngine *de);
/* Writes an object or assembly file. */
int cg_emit_file(LLVMModuleRef mod, LLVMTargetMachineRef tm, LLVMCodeGenFileType kind,
                 const char *path, DiagEngine *de);

#endif
