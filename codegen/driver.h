/* driver.h - what the seqc command line calls for the CPU backend.
 *
 *   seqc FILE.seq --dims I=256,H=256 -o liblstm.so [-H lstm.h] [-O2]
 *        [--emit=llvm|asm|obj] [--target-cpu=CPU] [--target-features=+a,-b]
 *     -> bind dims (and weights, if --weights was given, to infer dims), then
 *        cg_driver_build(&binding, &opts, &de).
 *   seqc run FILE.seq --backend=cpu [--threads N] ...
 *     -> exactly where interp_run is called today, call cg_driver_run with the
 *        same arguments plus the options (SEQ_NUM_THREADS is the default for
 *        N when --threads is absent: pass threads = 0).
 * Both return 0 on success; errors are diagnostics in de.
 */
#ifndef SEQ_CG_DRIVER_H
#define SEQ_CG_DRIVER_H

#include "codegen/cg.h"
#include "ir/interp.h"

typedef struct CgDriverOptions {
  CgOptions cg;            /* opt_level (default 2), cpu, features */
  const char *out_path;    /* -o: the .so (or the --emit file) */
  const char *header_path; /* -H: NULL = out_path with .so replaced by .h */
  const char *emit;        /* NULL (shared object), "llvm", "asm" or "obj" */
} CgDriverOptions;

/* Compiles the bound root ahead of time (dims only are needed from b). */
int cg_driver_build(const IrBinding *b, const CgDriverOptions *o, DiagEngine *de);

/* JIT-compiles and runs, with interp_run's contract (docs/cli.md): outputs
 * and state_out are allocated here as RT_F32. threads <= 0: $SEQ_NUM_THREADS
 * or 1. */
int cg_driver_run(const IrBinding *b, const CgOptions *opt, int threads, int64_t B, int64_t T,
                  const RtTensor *inputs, const int64_t *lengths, const RtTensor *state_in,
                  RtTensor *outputs, RtTensor *state_out, DiagEngine *de);

/* Parses "-O2"-style levels and "--target-cpu=..." etc. is left to the CLI;
 * this checks a level: 0 if 0..3, else -1. */
int cg_driver_check_opt_level(int level);

#endif
