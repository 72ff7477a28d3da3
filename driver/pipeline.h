/* pipeline.h - the compiler, start to end, in one function (pipeline_run):
 *
 *   parse, check, lower to IR          frontend/         (the oracle's IR)
 *   rewrite, verify                    passes/rewrite.c
 *   classify                           passes/classify.c
 *   bind dims                          ir/bind.c
 *   choose forms, parallelize, verify  passes/strategy.c, scan.c, chunk.c
 *   schedule                           sched/
 *   render                             codegen/          (LLVM: JIT or a file)
 *                                      cudagen/          (CUDA C and its launch plan)
 *
 * The CLI (tools/seqc.c), the C API (driver/api.c) and the tests all go
 * through it, so what is tested is what the product runs. It stops at the
 * stage a caller asks for, and a second call with a later goal continues
 * from there (`seqc run` reads its inputs once the IR names them, then
 * compiles).
 */
#ifndef SEQ_DRIVER_PIPELINE_H
#define SEQ_DRIVER_PIPELINE_H

#include "codegen/aot.h"
#include "codegen/jit.h"
#include "cudagen/cudagen.h"
#include "frontend/frontend.h"
#include "ir/interp.h"
#include "passes/passes.h"
#include "sched/sched.h"

typedef enum {
  PIPE_NONE = 0,
  PIPE_IR,     /* the checked IR */
  PIPE_REPORT, /* + rewritten and classified */
  PIPE_BOUND,  /* + dims bound (the interpreter runs from here, once weights are loaded) */
  PIPE_FORMS,  /* + a form chosen for every state, cells rewritten into parallel forms */
  PIPE_SCHED,  /* + scheduled */
  PIPE_JIT,    /* + rendered and compiled in memory */
  PIPE_OBJECT, /* + rendered and written to a file */
  PIPE_CUDA,   /* + rendered as CUDA C kernels and their launch plan (no LLVM) */
} PipeStage;

typedef struct PipeOptions {
  PipeStage goal;
  const char *path;        /* the .seq file, or */
  const char *name, *text; /* source text, reported under name */
  const char *entry;       /* the unit to compile; NULL: the main file's last */
  /* --dims; then the stored weights' shapes and the inputs' per-token
   * shapes (input_ndims[i] < 0 or input_shapes[i] NULL: not given) fix the
   * rest (ir/bind.c). */
  int ndims;
  const char *const *dim_names;
  const int64_t *dim_values;
  IrShapeLookup weight_shape;
  void *weight_ctx;
  const char *weight_file; /* where weight_shape reads, named in errors about weights */
  const int *input_ndims;
  const int64_t *const *input_shapes;
  const StrategyRequest *strategy;    /* --strategy; NULL: auto for every state */
  int cuda;                           /* the target is CUDA: auto means the scan form where
                                         the class admits it, else the step loop */
  int threads;                        /* threads the code will run on (cost model; 0: 1) */
  int64_t batch;                      /* examples per call the cost model assumes (0: 8) */
  int64_t kernel_chunk;               /* tokens per chunk of the chunked kernels (0: the
                                         runtime's default; --chunk) */
  int64_t chunk_budget;               /* floats of a time chunk's token rows (0: the
                                         schedule's; tests make chunks short with it) */
  CgOptions cg;                       /* optimization level, target cpu and features */
  CgEmitKind emit;                    /* PIPE_OBJECT: what to write */
  const char *out_path, *header_path; /* PIPE_OBJECT */
  const char *cuda_archs;             /* PIPE_OBJECT with cuda: a shared object for the GPU
                                         with cubins for these ("sm_80,sm_90"; NULL: those) */
} PipeOptions;

typedef struct Pipeline {
  Arena *arena; /* the caller's: everything below lives in it */
  SrcMgr *sm;
  DiagEngine *de;
  PipeStage reached;
  IrModule *source;        /* the checked IR: what the interpreter runs */
  IrModule *rewritten;     /* what the backends compile (same functions, same order) */
  const IrFunc *root;      /* the entry in rewritten */
  ClassifyResult *classes; /* of rewritten */
  IrBinding bind;          /* the entry of source, dims bound; weights are the caller's to load */
  StrategyPlan *plan;      /* the form of every state */
  IrModule *parallel;      /* rewritten with cells in their parallel forms (scan.c) */
  Schedule *sched;
  RtCuProgram *cuda; /* PIPE_CUDA */
  CgJit *jit;        /* PIPE_JIT; owned (pipeline_release) */
} Pipeline;

void pipeline_init(Pipeline *p, Arena *a, SrcMgr *sm, DiagEngine *de);
/* Runs the stages up to o->goal (from where an earlier call stopped).
 * Returns 0, or -1 with diagnostics in p->de. */
int pipeline_run(Pipeline *p, const PipeOptions *o);
/* Disposes what the arena does not own (the JIT). */
void pipeline_release(Pipeline *p);

#endif
