/* jit.c - ORC LLJIT, as PostgreSQL's llvmjit.c uses it: one LLJIT per
 * compiled module, the runtime's functions defined as absolute symbols (so
 * lookup works even when the host executable does not export them), and a
 * process symbol generator for libm (the real functions are inline
 * polynomials, but pow, and complex values' hypotf, atan2f and log, call
 * it). */
#include "codegen/jit.h"

#include <string.h>

#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>

#include "runtime/rt_cpu.h"

struct CgJit {
  LLVMOrcLLJITRef jit;
};

static void report(DiagEngine *de, const char *what, LLVMErrorRef e) {
  char *m = LLVMGetErrorMessage(e); /* consumes e */
  diag_error(de, (SrcLoc){0}, "JIT: %s: %s", what, m);
  LLVMDisposeErrorMessage(m);
}

static int define_runtime(LLVMOrcLLJITRef jit, DiagEngine *de) {
  struct {
    const char *name;
    uintptr_t addr;
  } fns[] = {
      {"rt_cpu_sgemm", (uintptr_t)rt_cpu_sgemm},
      {"rt_cpu_transpose", (uintptr_t)rt_cpu_transpose},
      {"rt_cpu_pack_b", (uintptr_t)rt_cpu_pack_b},
      {"rt_cpu_sgemm_packed", (uintptr_t)rt_cpu_sgemm_packed},
      {"rt_cpu_sgemm_w", (uintptr_t)rt_cpu_sgemm_w},
      {"rt_cpu_alloc", (uintptr_t)rt_cpu_alloc},
      {"rt_cpu_alloc_uninit", (uintptr_t)rt_cpu_alloc_uninit},
      {"rt_cpu_free", (uintptr_t)rt_cpu_free},
      {"rt_cpu_forward_batched", (uintptr_t)rt_cpu_forward_batched},
      {"rt_cpu_linattn", (uintptr_t)rt_cpu_linattn},
      {"rt_cpu_attention", (uintptr_t)rt_cpu_attention},
      {"rt_cpu_delta", (uintptr_t)rt_cpu_delta},
      {"rt_cpu_dplr", (uintptr_t)rt_cpu_dplr},
      {"rt_cpu_plstm_ld", (uintptr_t)rt_cpu_plstm_ld},
      {"rt_cpu_inv", (uintptr_t)rt_cpu_inv},
      {"rt_cpu_expm", (uintptr_t)rt_cpu_expm},
      {"rt_cpu_newton", (uintptr_t)rt_cpu_newton},
      {"rt_cpu_parallel_for_nowait", (uintptr_t)rt_cpu_parallel_for_nowait},
      {"rt_cpu_get_num_threads", (uintptr_t)rt_cpu_get_num_threads},
      {"rt_cpu_in_parallel", (uintptr_t)rt_cpu_in_parallel},
  };
  enum { N = sizeof fns / sizeof fns[0] };
  LLVMOrcCSymbolMapPair pairs[N];
  for (int i = 0; i < N; i++) {
    pairs[i].Name = LLVMOrcLLJITMangleAndIntern(jit, fns[i].name);
    pairs[i].Sym.Address = (LLVMOrcExecutorAddress)fns[i].addr;
    pairs[i].Sym.Flags.GenericFlags =
        LLVMJITSymbolGenericFlagsExported | LLVMJITSymbolGenericFlagsCallable;
    pairs[i].Sym.Flags.TargetFlags = 0;
  }
  /* The materialization unit takes ownership of the interned names. */
  LLVMOrcMaterializationUnitRef mu = LLVMOrcAbsoluteSymbols(pairs, N);
  LLVMErrorRef e = LLVMOrcJITDylibDefine(LLVMOrcLLJITGetMainJITDylib(jit), mu);
  if (e) {
    report(de, "defining runtime symbols", e);
    return -1;
  }
  LLVMOrcDefinitionGeneratorRef gen = NULL;
  e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(jit),
                                                           NULL, NULL);
  if (e) {
    report(de, "process symbol search", e);
    return -1;
  }
  /* The dylib takes ownership of the generator. */
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(jit), gen);
  return 0;
}

CgJit *cg_jit_compile(Arena *a, const Schedule *s, const CgOptions *opt, DiagEngine *de) {
  cg_llvm_init();
  LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
  LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
  cg_capture_diagnostics(ctx, de);
  LLVMModuleRef mod = NULL;
  CgJit *j = NULL;
  LLVMTargetMachineRef tm = NULL;
  tm = cg_target_machine(opt, LLVMRelocDefault, de);
  if (!tm) goto fail;
  if (cg_lower(a, s, ctx, tm, &mod, de)) goto fail;
  if (cg_optimize(mod, tm, opt ? opt->opt_level : 2, de)) goto fail;
  LLVMDisposeTargetMachine(tm);
  tm = NULL;
  j = seq_malloc(sizeof *j);
  if (!j) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    goto fail;
  }
  memset(j, 0, sizeof *j);
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&j->jit, NULL);
  if (e) {
    report(de, "creating LLJIT", e);
    goto fail;
  }
  if (define_runtime(j->jit, de)) goto fail;
  /* The thread-safe module takes the module; LLJIT then takes the TSM. */
  LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, tsc);
  mod = NULL;
  e = LLVMOrcLLJITAddLLVMIRModule(j->jit, LLVMOrcLLJITGetMainJITDylib(j->jit), tsm);
  if (e) {
    LLVMOrcDisposeThreadSafeModule(tsm);
    report(de, "adding the module", e);
    goto fail;
  }
  /* Our reference to the context can go: the module keeps it alive. */
  LLVMOrcDisposeThreadSafeContext(tsc);
  return j;
fail:
  if (tm) LLVMDisposeTargetMachine(tm);
  if (mod) LLVMDisposeModule(mod);
  if (j) {
    if (j->jit) LLVMOrcDisposeLLJIT(j->jit);
    seq_free(j);
  }
  LLVMOrcDisposeThreadSafeContext(tsc);
  return NULL;
}

void *cg_jit_lookup(CgJit *j, const char *name, DiagEngine *de) {
  LLVMOrcExecutorAddress addr = 0;
  int errors = de->nerrors;
  LLVMErrorRef e = LLVMOrcLLJITLookup(j->jit, &addr, name);
  if (e) {
    report(de, name, e);
    return NULL;
  }
  /* The lookup compiled the module: an error LLVM reported meanwhile
   * (cg_capture_diagnostics) means the code is not to be run. */
  return de->nerrors > errors ? NULL : (void *)(uintptr_t)addr;
}

void cg_jit_destroy(CgJit *j) {
  if (!j) return;
  LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->jit);
  if (e) LLVMConsumeError(e);
  seq_free(j);
}
