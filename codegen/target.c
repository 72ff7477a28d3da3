/* target.c - target machines, verification, the new pass manager, and
 * object/assembly emission. Every LLVM error becomes a diagnostic; every
 * string LLVM hands over is disposed here, where it is received. */
#include "codegen/cg.h"

#include <pthread.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_native(void) {
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  LLVMInitializeNativeAsmParser();
}

void cg_llvm_init(void) {
  pthread_once(&init_once, init_native);
}

LLVMTargetMachineRef cg_target_machine(const CgOptions *opt, LLVMRelocMode reloc, DiagEngine *de) {
  cg_llvm_init();
  char *triple = LLVMGetDefaultTargetTriple();
  LLVMTargetRef target = NULL;
  char *err = NULL;
  if (LLVMGetTargetFromTriple(triple, &target, &err)) {
    diag_error(de, (SrcLoc){0}, "LLVM has no target for %s: %s", triple, err ? err : "?");
    LLVMDisposeMessage(err);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  int host = !opt || !opt->cpu || !*opt->cpu;
  char *cpu = host ? LLVMGetHostCPUName() : NULL;
  char *feat = NULL;
  if (opt && opt->features && *opt->features)
    feat = NULL;
  else if (host)
    feat = LLVMGetHostCPUFeatures();
  const char *cpu_s = host ? cpu : opt->cpu;
  const char *feat_s = opt && opt->features && *opt->features ? opt->features : feat ? feat : "";
  int level = opt ? opt->opt_level : 2;
  LLVMCodeGenOptLevel cl = level <= 0   ? LLVMCodeGenLevelNone
                           : level == 1 ? LLVMCodeGenLevelLess
                           : level == 2 ? LLVMCodeGenLevelDefault
                                        : LLVMCodeGenLevelAggressive;
  LLVMTargetMachineRef tm =
      LLVMCreateTargetMachine(target, triple, cpu_s, feat_s, cl, reloc, LLVMCodeModelDefault);
  if (!tm) diag_error(de, (SrcLoc){0}, "LLVM cannot create a target machine for cpu '%s'", cpu_s);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(feat);
  LLVMDisposeMessage(triple);
  return tm;
}

int cg_optimize(LLVMModuleRef mod, LLVMTargetMachineRef tm, int opt_level, DiagEngine *de) {
  char *msg = NULL;
  /* A module that fails verification is a compiler bug: report it, never
   * hand it to the optimizer (which may crash on it). */
  if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg)) {
    diag_internal(de, "codegen", "LLVM module does not verify: %s", msg ? msg : "?");
    LLVMDisposeMessage(msg);
    return -1;
  }
  LLVMDisposeMessage(msg);
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(mod, td);
  LLVMDisposeTargetData(td);
  if (opt_level < 0) opt_level = 0;
  if (opt_level > 3) opt_level = 3;
  char pipeline[32];
  snprintf(pipeline, sizeof pipeline, "default<O%d>", opt_level);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(po, opt_level >= 2);
  LLVMPassBuilderOptionsSetSLPVectorization(po, opt_level >= 2);
  /* Generated loops have constant trip counts (dims are compiled in), so the
   * unroller would fully unroll every vectorized row loop and interleaving
   * would copy each body four times: for the std LSTM at H = 256 that was 60%
   * of the compile time (200 -> 120 ms) for no measurable speed, since the
   * matrix products run in the runtime's GEMM. -O3 keeps both. */
  LLVMPassBuilderOptionsSetLoopUnrolling(po, opt_level >= 3);
  LLVMPassBuilderOptionsSetLoopInterleaving(po, opt_level >= 3);
  LLVMErrorRef e = LLVMRunPasses(mod, pipeline, tm, po);
  LLVMDisposePassBuilderOptions(po);
  if (e) {
    char *m = LLVMGetErrorMessage(e); /* consumes e */
    diag_internal(de, "codegen", "LLVM optimization failed: %s", m);
    LLVMDisposeErrorMessage(m);
    return -1;
  }
  return 0;
}

int cg_emit_file(LLVMModuleRef mod, LLVMTargetMachineRef tm, LLVMCodeGenFileType kind,
                 const char *path, DiagEngine *de) {
  char *err = NULL;
  /* The C API takes a non-const path. */
  char buf[4096];
  if (strlen(path) >= sizeof buf) {
    diag_error(de, (SrcLoc){0}, "output path too long");
    return -1;
  }
  strcpy(buf, path);
  if (LLVMTargetMachineEmitToFile(tm, mod, buf, kind, &err)) {
    diag_error(de, (SrcLoc){0}, "cannot write %s: %s", path, err ? err : "?");
    LLVMDisposeMessage(err);
    return -1;
  }
  return 0;
}
