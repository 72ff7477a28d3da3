/* target.c - target machines, verification, the new pass manager, and
 * object/assembly emission. Every LLVM error becomes a diagnostic; every
 * string LLVM hands over is disposed here, where it is received. */
#include "codegen/cg.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/Support.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* Loop strength reduction is off in code generation. On this code (row
 * loops over several buffers at one index, x86's scaled addressing) it took
 * a quarter of llc's time (40 of 160 ms for the std LSTM at H = 256) and
 * made the loops slower, not faster: with it off, the JIT compile of that
 * LSTM went from 215-223 to 128-134 ms, GLA's chunked form ran 17% faster,
 * Mamba-2's 12% (BENCHMARKS.md, issue 15). The C API can set it only as an
 * LLVM command-line option, which is process-wide: another user of the
 * same libLLVM in the process compiles without LSR too (an optimization
 * it loses, nothing it relies on). Parse errors go nowhere; nothing exits.
 * X86's domain reassignment (general registers' work moved to AVX-512's
 * mask registers) is off the same way: it changed no instruction of any std
 * cell and took 12% of code generation for the larger ones (25 of 206 ms
 * in llc for mLSTM). */
static void init_native(void) {
  static const char *const argv[] = {"libseq", "-disable-lsr", "-disable-x86-domain-reassignment"};
  LLVMParseCommandLineOptions(3, argv, NULL);
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  LLVMInitializeNativeAsmParser();
}

void cg_llvm_init(void) {
  pthread_once(&init_once, init_native);
}

/* ---- Checking --target-cpu and --target-features --------------------------
 *
 * LLVM does not check these for us: an unknown CPU or feature only prints a
 * warning on stderr, and a CPU without 64-bit mode, a feature string that
 * removes 64-bit mode or SSE, or soft-float ends in report_fatal_error
 * (abort) or a crash inside LLVM, which kills the host program. The C API
 * cannot list a target's CPUs or features, so codegen/target_x86.def holds
 * them, generated from the same LLVM by tools/gen_x86_targets.sh, which also
 * compiled seqc's code in a child llc with every CPU and every +feature and
 * -feature and marked those that fail. Every name is checked against that
 * table before LLVM sees it. Other hosts than x86-64 have no table: their
 * names go to LLVM unchecked. */

typedef struct X86Cpu {
  const char *name;
  int usable;
} X86Cpu;
typedef struct X86Feature {
  const char *name;
  int enable_ok, disable_ok;
} X86Feature;

static const X86Cpu x86_cpus[] = {
#define X86_CPU(name, usable) {name, usable},
#define X86_FEATURE(name, enable_ok, disable_ok)
#include "codegen/target_x86.def"
#undef X86_CPU
#undef X86_FEATURE
};
static const X86Feature x86_features[] = {
#define X86_CPU(name, usable)
#define X86_FEATURE(name, enable_ok, disable_ok) {name, enable_ok, disable_ok},
#include "codegen/target_x86.def"
#undef X86_CPU
#undef X86_FEATURE
};
enum {
  N_X86_CPUS = sizeof x86_cpus / sizeof x86_cpus[0],
  N_X86_FEATURES = sizeof x86_features / sizeof x86_features[0]
};

/* Edit distance of a and b[0..nb) (both short), for "did you mean". */
static int edit_distance(const char *a, const char *b, size_t nb) {
  size_t na = strlen(a);
  if (na > 63 || nb > 63) return 64;
  int row[64];
  for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= na; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= nb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

/* ", did you mean 'x'?" for the closest of names (stride bytes apart), or "". */
static void suggest(char *buf, size_t n, const char *got, size_t ngot, const void *names,
                    size_t stride, int count) {
  const char *best = NULL;
  int bestd = 3; /* suggest only close names */
  for (int i = 0; i < count; i++) {
    const char *name = *(const char *const *)((const char *)names + (size_t)i * stride);
    int d = edit_distance(name, got, ngot);
    if (d < bestd) bestd = d, best = name;
  }
  if (best)
    snprintf(buf, n, "; did you mean '%s'?", best);
  else
    buf[0] = 0;
}

static int is_x86_64(const char *triple) {
  return strncmp(triple, "x86_64", 6) == 0;
}

/* Whether feature list f names +name (exactly: "+avx" is not "+avx2"). */
static int has_feature(const char *f, const char *name) {
  size_t n = strlen(name);
  for (const char *p = f; (p = strstr(p, name)); p++)
    if (p > f && p[-1] == '+' && (p[n] == ',' || p[n] == 0)) return 1;
  return 0;
}

void cg_target_vectors(LLVMTargetMachineRef tm, int *floats, int *regs) {
  char *triple = LLVMGetTargetMachineTriple(tm);
  char *f = LLVMGetTargetMachineFeatureString(tm);
  const char *fs = f ? f : "";
  *floats = 4, *regs = 16;
  if (is_x86_64(triple)) {
    /* A feature list that names no AVX level comes with a named CPU: AVX2
     * then, what nearly every x86-64 CPU in use has. */
    int any = strstr(fs, "avx") != NULL;
    if (has_feature(fs, "avx512f"))
      *floats = 16, *regs = 32;
    else if (has_feature(fs, "avx") || has_feature(fs, "avx2") || !any)
      *floats = 8;
  } else if (strncmp(triple, "aarch64", 7) == 0 || strncmp(triple, "arm64", 5) == 0) {
    *regs = 32;
  }
  LLVMDisposeMessage(f);
  LLVMDisposeMessage(triple);
}

static int check_cpu(const char *cpu, char *msg, size_t n) {
  for (int i = 0; i < N_X86_CPUS; i++)
    if (strcmp(x86_cpus[i].name, cpu) == 0) {
      if (x86_cpus[i].usable) return 0;
      snprintf(msg, n,
               "target CPU '%s' cannot run x86-64 code (it has no 64-bit mode or no SSE2); "
               "choose an x86-64 CPU such as x86-64, x86-64-v3 or native",
               cpu);
      return -1;
    }
  char hint[96];
  suggest(hint, sizeof hint, cpu, strlen(cpu), x86_cpus, sizeof x86_cpus[0], N_X86_CPUS);
  snprintf(msg, n,
           "unknown target CPU '%.64s'%s (LLVM's x86-64 names, as `llc -mcpu=help` lists them, "
           "or native)",
           cpu, hint);
  return -1;
}

/* One item of a feature list, "+name" or "-name" (a bare name enables). */
static int check_feature(const char *item, size_t len, char *msg, size_t n) {
  int on = *item != '-';
  const char *name = item + (*item == '+' || *item == '-');
  size_t nlen = len - (size_t)(name - item);
  for (int i = 0; i < N_X86_FEATURES; i++) {
    const X86Feature *f = &x86_features[i];
    if (strlen(f->name) != nlen || strncmp(f->name, name, nlen) != 0) continue;
    /* 16bit-mode, 32bit-mode, 64bit-mode are the triple's to set: +16bit-mode
     * compiles without a word, into 16-bit code, so no probe can catch it. */
    if (nlen > 5 && strncmp(name + nlen - 5, "-mode", 5) == 0) {
      snprintf(msg, n, "target feature '%c%s' cannot be used: the code mode is x86-64's",
               on ? '+' : '-', f->name);
      return -1;
    }
    if (on ? f->enable_ok : f->disable_ok) return 0;
    snprintf(msg, n,
             on ? "target feature '+%s' cannot be used: LLVM cannot compile seqc's code with it"
                : "target feature '-%s' cannot be used: x86-64 code needs it",
             f->name);
    return -1;
  }
  char hint[96];
  suggest(hint, sizeof hint, name, nlen, x86_features, sizeof x86_features[0], N_X86_FEATURES);
  snprintf(msg, n,
           "unknown target feature '%.*s'%s (features are +name or -name, comma-separated, with "
           "LLVM's x86-64 names as `llc -mattr=help` lists them)",
           (int)(len > 64 ? 64 : len), item, hint);
  return -1;
}

int cg_target_check(const char *cpu, const char *features, char *msg, size_t n) {
  cg_llvm_init();
  char *triple = LLVMGetDefaultTargetTriple();
  int x86 = is_x86_64(triple);
  LLVMDisposeMessage(triple);
  if (!x86) return 0;
  if (cpu && *cpu && strcmp(cpu, "native") != 0 && check_cpu(cpu, msg, n)) return -1;
  for (const char *p = features; p && *p;) {
    size_t len = strcspn(p, ",");
    if (len && check_feature(p, len, msg, n)) return -1;
    p += len + (p[len] == ',');
  }
  return 0;
}

/* The feature string LLVM gets: the user's, with +evex512 added after any
 * +avx512* unless evex512 is named (as clang does; LLVM 19 aborts selecting
 * 512-bit vectors for +avx512f on a CPU without AVX-512 otherwise). */
static char *x86_features_for(const char *features) {
  size_t n = strlen(features);
  int avx512 = 0, evex = strstr(features, "evex512") != NULL;
  for (const char *p = features; (p = strstr(p, "avx512")); p++)
    avx512 |= p == features || p[-1] == '+' || p[-1] == ',';
  char *out = seq_malloc(n + 10);
  if (!out) return NULL;
  memcpy(out, features, n + 1);
  if (avx512 && !evex) strcat(out, ",+evex512");
  return out;
}

LLVMTargetMachineRef cg_target_machine(const CgOptions *opt, LLVMRelocMode reloc, DiagEngine *de) {
  cg_llvm_init();
  char msg[512];
  if (opt && cg_target_check(opt->cpu, opt->features, msg, sizeof msg)) {
    diag_error(de, (SrcLoc){0}, "%s", msg);
    return NULL;
  }
  char *triple = LLVMGetDefaultTargetTriple();
  LLVMTargetRef target = NULL;
  char *err = NULL;
  if (LLVMGetTargetFromTriple(triple, &target, &err)) {
    diag_error(de, (SrcLoc){0}, "LLVM has no target for %s: %s", triple, err ? err : "?");
    LLVMDisposeMessage(err);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  int host = !opt || !opt->cpu || !*opt->cpu || strcmp(opt->cpu, "native") == 0;
  char *cpu = host ? LLVMGetHostCPUName() : NULL;
  char *feat = NULL;
  if (opt && opt->features && *opt->features)
    feat = NULL;
  else if (host)
    feat = LLVMGetHostCPUFeatures();
  const char *cpu_s = host ? cpu : opt->cpu;
  char *user_feat = opt && opt->features && *opt->features && is_x86_64(triple)
                        ? x86_features_for(opt->features)
                        : NULL;
  const char *feat_s = user_feat                                ? user_feat
                       : opt && opt->features && *opt->features ? opt->features
                       : feat                                   ? feat
                                                                : "";
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
  seq_free(user_feat);
  return tm;
}

/* LLVM's diagnostics (an unsupported construct met in instruction
 * selection, a warning from a pass) would go to stderr through LLVM's
 * default handler; they go to the compilation's DiagEngine instead. */
static void llvm_diagnostic(LLVMDiagnosticInfoRef di, void *ctx) {
  DiagEngine *de = ctx;
  LLVMDiagnosticSeverity sev = LLVMGetDiagInfoSeverity(di);
  if (sev != LLVMDSError && sev != LLVMDSWarning) return; /* remarks and notes */
  char *m = LLVMGetDiagInfoDescription(di);
  diag_report(de, sev == LLVMDSError ? DIAG_ERROR : DIAG_WARNING, (SrcLoc){0}, "LLVM: %s",
              m ? m : "?");
  LLVMDisposeMessage(m);
}

void cg_capture_diagnostics(LLVMContextRef ctx, DiagEngine *de) {
  LLVMContextSetDiagnosticHandler(ctx, llvm_diagnostic, de);
}

/* -O2, the default, runs a pipeline of its own instead of LLVM's
 * default<O2>. Generated code is a few functions of flat loops over
 * buffers whose sizes are compiled in, and its matrix products run in the
 * runtime: it needs its values promoted and simplified, loop invariants
 * hoisted, redundant loads removed and the loops vectorized, not
 * default<O2>'s inliner, its eight rounds of InstCombine or its function
 * simplification repeated per call-graph node. This one compiles the std
 * LSTM (I = H = 256) through the JIT in 63-66 ms against 72-75, to a .so
 * in 93 against 101-106, and the forward passes of the std cells ran as
 * fast as under default<O2> within the noise, but for GAM's step loop,
 * 7-10% slower (BENCHMARKS.md, issue 15). InstCombine runs without
 * its fixpoint check, as inside default<O2>: named alone, LLVM 19 checks
 * that it reached a fixpoint in one run and, where it did not, ends the
 * process. */
static const char O2_PIPELINE[] =
    "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,"
    "loop-mssa(loop-rotate,licm),gvn,loop(indvars),instcombine<no-verify-fixpoint>,"
    "loop-mssa(licm),loop-vectorize,loop-load-elim,"
    "slp-vectorizer,instcombine<no-verify-fixpoint>,simplifycfg)";

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
  LLVMErrorRef e = NULL;
  if (opt_level == 2) {
    e = LLVMRunPasses(mod, O2_PIPELINE, tm, po);
    /* Only a pipeline LLVM cannot parse fails here (passes do not return
     * errors), before any pass ran: an LLVM that names a pass otherwise
     * gets its own -O2. */
    if (e) {
      LLVMConsumeError(e);
      e = LLVMRunPasses(mod, pipeline, tm, po);
    }
  } else {
    e = LLVMRunPasses(mod, pipeline, tm, po);
  }
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
  int errors = de->nerrors;
  if (LLVMTargetMachineEmitToFile(tm, mod, buf, kind, &err)) {
    diag_error(de, (SrcLoc){0}, "cannot write %s: %s", path, err ? err : "?");
    LLVMDisposeMessage(err);
    return -1;
  }
  /* An error LLVM reported through cg_capture_diagnostics. */
  return de->nerrors > errors ? -1 : 0;
}
