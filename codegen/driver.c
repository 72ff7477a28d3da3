/* driver.c - the CPU backend's command-line entry points (driver.h). */
#include "codegen/driver.h"

#include <string.h>

#include "codegen/aot.h"
#include "codegen/jit.h"
#include "codegen/run.h"
#include "passes/passes.h"
#include "runtime/rt_cpu.h"

int cg_driver_check_opt_level(int level) {
  return level >= 0 && level <= 3 ? 0 : -1;
}

int cg_driver_build(const IrBinding *b, const CgDriverOptions *o, DiagEngine *de) {
  CgEmitKind kind = CG_EMIT_SO;
  if (o->emit) {
    if (strcmp(o->emit, "llvm") == 0)
      kind = CG_EMIT_LLVM;
    else if (strcmp(o->emit, "asm") == 0)
      kind = CG_EMIT_ASM;
    else if (strcmp(o->emit, "obj") == 0)
      kind = CG_EMIT_OBJ;
    else if (strcmp(o->emit, "so") != 0) {
      diag_error(de, (SrcLoc){0}, "unknown --emit kind '%s' (llvm, asm, obj)", o->emit);
      return -1;
    }
  }
  if (!o->out_path) {
    diag_error(de, (SrcLoc){0}, "an output path (-o) is needed");
    return -1;
  }
  if (cg_driver_check_opt_level(o->cg.opt_level)) {
    diag_error(de, (SrcLoc){0}, "optimization level %d is not in 0..3", o->cg.opt_level);
    return -1;
  }
  /* Lowering reads the rewritten IR (contractions as matrix products); the
   * binding's dims and names serve it unchanged. */
  IrModule *rm;
  const IrFunc *root;
  if (rewrite_root(b->arena, b->mod, b->root, &rm, &root, de)) return -1;
  return cg_aot_build(b->arena, rm, root, b->dims, &o->cg, kind, o->out_path, o->header_path, de);
}

int cg_driver_run(const IrBinding *b, const CgOptions *opt, int threads, int64_t B, int64_t T,
                  const RtTensor *inputs, const int64_t *lengths, const RtTensor *state_in,
                  RtTensor *outputs, RtTensor *state_out, DiagEngine *de) {
  if (threads > 0) rt_cpu_set_num_threads(threads);
  AbiSignature sig;
  IrModule *rm;
  const IrFunc *root;
  if (rewrite_root(b->arena, b->mod, b->root, &rm, &root, de)) return -1;
  CgJit *j = cg_jit_compile(b->arena, rm, root, b->dims, opt, &sig, de);
  if (!j) return -1;
  int rc = -1;
  CgWeights w = {0};
  AbiForwardFn fn = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      j, arena_printf(b->arena, "%s_forward", sig.symbol), de);
  if (fn && cg_weights_from_binding(&sig, b, &w, de) == 0)
    rc = cg_run(&sig, fn, &w, b, B, T, inputs, lengths, state_in, outputs, state_out, de);
  cg_weights_free(&w);
  cg_jit_destroy(j);
  return rc;
}
