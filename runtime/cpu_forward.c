/* cpu_forward.c - threads across the batch for generated forward functions.
 *
 * Every example of a batch is an independent recurrence, so the cheapest way
 * to use N threads is to give each a slice of the batch and let it run the
 * whole forward pass (hoisted GEMMs, time loop, element loops) on its slice:
 * no synchronization per time step, each thread's packed weights stay in its
 * own core's caches, and a slice of B/T rows still makes a GEMM that the
 * 12-row kernel runs at full speed for B/T >= 4. The alternative, splitting
 * each step's GEMM (what rt_cpu_sgemm_packed does at batch 1), pays a
 * hand-off per step and leaves the element loops on one thread.
 */
#include "runtime/rt_cpu.h"

#include <stdlib.h>

/* A slice should have at least this much work (multiply-adds and element
 * operations, roughly 10-20 us), or the hand-off costs more than it saves. */
#define MIN_SLICE_WORK 1048576.0

typedef struct Slices {
  rt_cpu_root_fn fn;
  const int64_t *layout;
  void *const *params;
  int64_t B, T;
  void *const *inputs;
  const int32_t *lengths;
  void *const *state_in, *const *outputs, *const *state_out;
  int nslices;
  RtNewtonWarm *warm; /* the caller's store of Newton trajectories (cpu_warm.c) */
  void **ptrs;        /* per slice: inputs, state_in, outputs, state_out arrays */
  int32_t *status;    /* per slice */
} Slices;

int rt_cpu_batch_slices(int64_t B, int64_t T, int64_t work_per_token, int threads) {
  if (threads <= 1 || B <= 1 || T <= 0 || B > ((int64_t)1 << 31) || T > ((int64_t)1 << 31))
    return 1;
  int64_t n = threads < B ? threads : B;
  double fit =
      (double)B * (double)T * (double)(work_per_token > 0 ? work_per_token : 1) / MIN_SLICE_WORK;
  if (fit < (double)n) n = fit < 1.0 ? 1 : (int64_t)fit;
  return (int)n;
}

static void *offset(void *p, int64_t elems) {
  return p ? (char *)p + 4 * elems : NULL;
}

static void run_slice(void *ctx, int i) {
  const Slices *s = ctx;
  int64_t nin = s->layout[0], nst = s->layout[1], nout = s->layout[2];
  const int64_t *in_w = s->layout + 4, *st_w = in_w + nin, *out_w = st_w + nst;
  int64_t b0 = s->B * i / s->nslices, b1 = s->B * (i + 1) / s->nslices;
  void **in = s->ptrs + (size_t)i * (size_t)(nin + 2 * nst + nout);
  void **sin = in + nin, **out = sin + nst, **sout = out + nout;
  for (int64_t k = 0; k < nin; k++) /* a context (negative width): per example */
    in[k] = offset(s->inputs[k], in_w[k] < 0 ? b0 * -in_w[k] : b0 * s->T * in_w[k]);
  for (int64_t k = 0; k < nout; k++) out[k] = offset(s->outputs[k], b0 * s->T * out_w[k]);
  for (int64_t k = 0; k < nst; k++) {
    sin[k] = s->state_in ? offset(s->state_in[k], b0 * st_w[k]) : NULL;
    sout[k] = s->state_out ? offset(s->state_out[k], b0 * st_w[k]) : NULL;
  }
  RtWarmCtx wc;
  rt_cpu_warm_enter(&wc, s->warm, b0, s->B, s->T);
  s->status[i] = s->fn(s->params, b1 - b0, s->T, in, s->lengths ? s->lengths + b0 : NULL,
                       s->state_in ? sin : NULL, out, s->state_out ? sout : NULL, 0);
  rt_cpu_warm_leave(&wc);
}

int32_t rt_cpu_forward_batched(rt_cpu_root_fn fn, const int64_t *layout, void *const *params,
                               int64_t B, int64_t T, void *const *inputs, const int32_t *lengths,
                               void *const *state_in, void *const *outputs,
                               void *const *state_out) {
  int nt = rt_cpu_in_parallel() ? 1 : rt_cpu_get_num_threads();
  /* B, T and the pointers are fn's to check (docs/abi.md): only arguments
   * that are plainly valid split, anything else goes to fn whole. */
  int64_t n = inputs && outputs ? rt_cpu_batch_slices(B, T, layout[3], nt) : 1;
  /* Buffers beyond 2^40 elements are fn's to reject; the slices' pointers
   * into them are not even formed. */
  if (n > 1) {
    int64_t nbuf = layout[0] + layout[1] + layout[2];
    for (int64_t k = 0; k < nbuf; k++)
      if ((double)B * (double)T * (double)layout[4 + k] > 1099511627776.0) n = 1;
  }
  /* A bad length fails the call before any slice writes anything, as it
   * does without threads. */
  if (n > 1 && lengths)
    for (int64_t b = 0; b < B; b++)
      if (lengths[b] < 0 || lengths[b] > T) n = 1;
  /* The caller's store of Newton trajectories (cpu_warm.c) goes with each
   * slice, with the slice's first example. */
  RtNewtonWarm *warm = rt_cpu_warm_current();
  if (n <= 1) {
    RtWarmCtx wc;
    rt_cpu_warm_enter(&wc, warm, 0, B, T);
    int32_t rc = fn(params, B, T, inputs, lengths, state_in, outputs, state_out, 0);
    rt_cpu_warm_leave(&wc);
    return rc;
  }
  int64_t per = layout[0] + 2 * layout[1] + layout[2];
  Slices s = {fn,       layout,  params,    B,      T,    inputs, lengths,
              state_in, outputs, state_out, (int)n, warm, NULL,   NULL};
  s.ptrs = malloc(sizeof(void *) * (size_t)(n * (per > 0 ? per : 1)));
  s.status = malloc(sizeof(int32_t) * (size_t)n);
  int32_t rc = 2; /* ABI_ERR_NOMEM, docs/abi.md */
  if (s.ptrs && s.status) {
    /* A whole forward pass holds the pool for its duration: a second host
     * thread's call runs its slices on its own thread rather than waiting. */
    rt_cpu_parallel_for_nowait((int)n, run_slice, &s);
    rc = 0;
    for (int64_t i = 0; i < n && rc == 0; i++) rc = s.status[i];
  }
  free(s.ptrs);
  free(s.status);
  return rc;
}
