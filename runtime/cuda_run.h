/* cuda_run.h - what the executor's files share (cuda_exec.c runs a
 * program's instances, cuda_newton.c a Newton layer's solve); not part of
 * the runtime's interface. */
#ifndef SEQ_RT_CUDA_RUN_H
#define SEQ_RT_CUDA_RUN_H

#include "runtime/rt_cuda.h"

/* Device memory a call keeps for reuse: what its instances free goes back
 * here, and a later request of the same size takes it (zeroed again), so
 * the instances of a call (a Newton solve evaluates its step many times)
 * allocate once; everything is freed when the call ends. */
typedef struct CuPool {
  RtDevPtr *p;
  size_t *bytes;
  char *used;
  int n, cap;
} CuPool;

/* One call of a program: its sizes, device and the program's params and
 * states (device addresses); an instance's frame adds its own. */
typedef struct CuRun {
  const RtCuProgram *p;
  const RtCuDevice *d;
  RtError *err;
  int64_t B, T;
  RtDevPtr lengths, status;
  RtDevPtr *params, *sin, *sout;
  CuPool *pool; /* NULL: allocate and free directly */
} CuRun;

/* Zeroed device memory (from the pool where there is one); freeing returns
 * it to the pool. */
int rt_cu_alloc(CuRun *r, size_t bytes, RtDevPtr *out);
void rt_cu_free(CuRun *r, RtDevPtr p);

/* Runs instance i with the given inputs and outputs (device addresses);
 * 0, or -1 with r->err set. */
int rt_cu_run_inst(CuRun *r, int i, const RtDevPtr *inputs, const RtDevPtr *outputs, int rev);

/* Step st (RT_CU_STEP_NEWTON): its arguments, the states' values over the
 * sequence (outs) and their initial values (h0), resolved in the caller's
 * frame; rev: the solve runs backwards. 0, or -1 with r->err set. */
int rt_cu_newton(CuRun *r, const RtCuStep *st, const RtDevPtr *args, const RtDevPtr *outs,
                 const RtDevPtr *h0, int rev);

#endif
