/* pipeline.c - the compiler in one function (pipeline.h). Each step is a
 * call into the stage's own directory; this file only orders them and
 * verifies the IR between passes that change it. */
#include "driver/pipeline.h"

#include <string.h>

#include "codegen/aot_cuda.h"
#include "runtime/rt_cpu.h"

void pipeline_init(Pipeline *p, Arena *a, SrcMgr *sm, DiagEngine *de) {
  memset(p, 0, sizeof *p);
  p->arena = a;
  p->sm = sm;
  p->de = de;
}

void pipeline_release(Pipeline *p) {
  cg_jit_destroy(p->jit);
  p->jit = NULL;
}

/* In SEQ_VERIFY_IR builds, the IR is checked after every pass that makes
 * it; a violation is an internal error naming the pass. */
static int verify(const Pipeline *p, const IrModule *m, const char *after) {
#ifdef SEQ_VERIFY_IR
  return ir_verify(m, p->de, after);
#else
  (void)p, (void)m, (void)after;
  return 0;
#endif
}

/* Parse, check and lower the source (frontend/). */
static int front(Pipeline *p, const PipeOptions *o) {
  FrontendOptions fo = {0};
  fo.entry = o->entry;
  fo.ndim_overrides = o->ndims;
  fo.dim_override_names = o->dim_names;
  fo.dim_override_values = o->dim_values;
  p->source = o->path ? seq_compile_file(p->arena, p->sm, p->de, o->path, &fo)
                      : seq_compile_string(p->arena, p->sm, p->de, o->name ? o->name : "<string>",
                                           o->text ? o->text : "", &fo);
  return p->source && p->de->nerrors == 0 ? 0 : -1;
}

/* Dims from --dims, the stored weights' shapes, the inputs' shapes and the
 * defaults (ir/bind.c). */
static int bind_dims(Pipeline *p, const PipeOptions *o) {
  const IrFunc *entry = p->source->funcs.v[p->source->entry];
  if (ir_binding_init(&p->bind, p->arena, p->source, entry, p->de)) return -1;
  p->bind.weights_from = o->weight_shape ? o->weight_file : NULL;
  for (int i = 0; i < o->ndims; i++)
    if (ir_binding_set_dim(&p->bind, o->dim_names[i], o->dim_values[i], p->de)) return -1;
  return ir_binding_infer(&p->bind, o->weight_shape, o->weight_ctx, o->input_ndims, o->input_shapes,
                          p->de);
}

/* The cost model's machine: this one's speed (measured once per process,
 * runtime/cpu_machine.c) and the call's threads and batch. */
static const CostMachine *cost_machine(const PipeOptions *o) {
  static __thread CostMachine mc;
  const RtCpuMachine *rm = rt_cpu_machine();
  mc.flops = rm->flops;
  mc.dram_bw = rm->dram_bw;
  mc.l2_bw = rm->l2_bw;
  mc.lanes = strcmp(rm->isa, "avx512f") == 0 ? 16 : strcmp(rm->isa, "avx2+fma") == 0 ? 8 : 4;
  mc.threads = o->threads > 0 ? o->threads : rt_cpu_get_num_threads();
  mc.batch = o->batch > 0 ? o->batch : 8;
  return &mc;
}

/* Whether some state could run in parallel (only then is the machine
 * measured, which takes a moment once per process). A nonlinear state's
 * Newton form evaluates the step several times per token and splits it
 * over every thread, where the step loop splits the batch: it can only win
 * with more threads than that many times the examples (those run on). */
static int needs_costs(const Pipeline *p, const PipeOptions *o) {
  int threads = o->threads > 0 ? o->threads : rt_cpu_get_num_threads();
  int64_t batch = o->batch > 0 ? o->batch : 8, busy = batch < threads ? batch : threads;
  for (int i = 0; i < p->classes->nfuncs; i++)
    for (int k = 0; k < p->classes->funcs[i].nstates; k++) {
      RecClass c = p->classes->funcs[i].states[k].cls;
      if (c == REC_NONLINEAR && threads > (COST_NEWTON_ITERS_EXACT + 2) * busy) return 1;
      if (c == REC_LIN_DIAG || c == REC_LIN_MATRIX || c == REC_LIN_DPLR || c == REC_MAXPLUS ||
          c == REC_LIN_SMALL_DENSE || c == REC_SHIFT)
        return 1;
    }
  return 0;
}

int pipeline_run(Pipeline *p, const PipeOptions *o) {
  /* 1. Parse, check, lower to IR: the interpreter's oracle. */
  if (p->reached < PIPE_IR) {
    if (front(p, o)) return -1;
    p->reached = PIPE_IR;
  }
  if (o->goal <= PIPE_IR) return 0;

  /* 2. Rewrite (contractions to matrix products, identities) and classify
   *    every recurrence of the rewritten module. */
  if (p->reached < PIPE_REPORT) {
    if (rewrite_module(p->arena, p->source, &p->rewritten, p->de) ||
        verify(p, p->rewritten, "rewrite") ||
        classify_module(p->arena, p->rewritten, &p->classes, p->de))
      return -1;
    /* The rewrite keeps every function at its index. */
    p->root = p->rewritten->funcs.v[p->source->entry];
    p->reached = PIPE_REPORT;
  }
  if (o->goal <= PIPE_REPORT) return 0;

  /* 3. Bind the entry's dims. */
  if (p->reached < PIPE_BOUND) {
    if (bind_dims(p, o)) return -1;
    p->reached = PIPE_BOUND;
  }
  if (o->goal <= PIPE_BOUND) return 0;

  /* 4. Choose the form of every state (the request, or the cost model at
   *    these dims), rewrite cells into their parallel forms, and order each
   *    cell's nodes for fusion. */
  if (p->reached < PIPE_FORMS) {
    /* On the GPU the cost model has no numbers yet: auto is the scan form
     * (a thread per state row walking the sequence) wherever the class
     * admits it, the step loop elsewhere (docs/cuda.md). */
    const StrategyRequest *req = o->strategy;
    StrategyRequest gpu = {{0}, FORM_SCAN, 0, NULL, NULL, 1};
    if (o->cuda && (!req || (req->all == FORM_AUTO && req->n == 0))) {
      if (req) gpu.newton = req->newton;
      req = &gpu;
    }
    if (strategy_choose(p->arena, p->rewritten, p->root, p->bind.dims, p->classes, req,
                        needs_costs(p, o) ? cost_machine(o) : NULL, &p->plan, p->de) ||
        scan_module(p->arena, p->rewritten, p->classes, p->plan, &p->parallel, p->de) ||
        verify(p, p->parallel, "scan") ||
        chunk_module(p->arena, p->parallel, p->plan, &p->parallel, p->de) ||
        verify(p, p->parallel, "chunk") ||
        order_module(p->arena, p->parallel, &p->parallel, p->de) || verify(p, p->parallel, "order"))
      return -1;
    p->reached = PIPE_FORMS;
  }
  if (o->goal <= PIPE_FORMS) return 0;

  /* 5. Schedule kernels, buffers and stages for the bound root. */
  if (p->reached < PIPE_SCHED) {
    const IrFunc *root = p->parallel->funcs.v[p->parallel->entry];
    const char *symbol = abi_c_identifier(p->arena, root->name);
    if (!symbol || sched_build(p->arena, p->parallel, root, p->bind.dims, symbol, o->kernel_chunk,
                               &p->sched, p->de))
      return -1;
    if (o->chunk_budget > 0)
      p->sched->chunk_budget = p->sched->chunk_budget_threads = o->chunk_budget;
    p->reached = PIPE_SCHED;
  }
  if (o->goal <= PIPE_SCHED) return 0;

  /* 6. Render: CUDA C and its launch plan, or LLVM, compiled in memory or
   *    written to a file. */
  if (o->goal == PIPE_CUDA) {
    if (!p->cuda && cuda_render(p->arena, p->sched, &p->cuda, p->de)) return -1;
    p->reached = PIPE_CUDA;
    return 0;
  }
  if (o->goal == PIPE_JIT) {
    if (!p->jit && !(p->jit = cg_jit_compile(p->arena, p->sched, &o->cg, p->de))) return -1;
    p->reached = PIPE_JIT;
    return 0;
  }
  if (o->cuda) {
    /* A shared object for the GPU: the CUDA program, compiled ahead of time. */
    if (o->emit != CG_EMIT_SO) {
      diag_error(p->de, (SrcLoc){0}, "the CUDA target writes shared objects, CUDA C or PTX");
      return -1;
    }
    if ((!p->cuda && cuda_render(p->arena, p->sched, &p->cuda, p->de)) ||
        cg_aot_cuda_build(p->arena, p->sched, p->cuda, o->cuda_archs, &o->cg, o->out_path,
                          o->header_path, p->de))
      return -1;
  } else if (cg_aot_build(p->arena, p->sched, &o->cg, o->emit, o->out_path, o->header_path,
                          p->de)) {
    return -1;
  }
  p->reached = PIPE_OBJECT;
  return 0;
}
