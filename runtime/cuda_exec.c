/* cuda_exec.c - runs a CUDA program (rt_cuda.h): the launch plan the CUDA
 * renderer made of a schedule, on any device that provides RtCuDevice's
 * callbacks (the driver's, or the tests' CPU emulation). Per call it checks
 * the arguments as the CPU entry points do, copies the host tensors in,
 * runs the root instance (and, through its CALL steps, its layers, each with
 * a frame of its own), and copies the outputs, the final states and the
 * kernels' status back. */
#include "runtime/cuda_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ABI's status codes (docs/abi.md; the compiler's sched/abi.h). */
enum { ST_OK = 0, ST_ARG = 1, ST_NOMEM = 2, ST_TOKEN = 3, ST_LENGTH = 4 };

typedef CuRun Run;

int rt_cu_alloc(Run *r, size_t bytes, RtDevPtr *out) {
  CuPool *pl = r->pool;
  for (int i = 0; pl && i < pl->n; i++)
    if (!pl->used[i] && pl->bytes[i] == bytes) {
      pl->used[i] = 1;
      *out = pl->p[i];
      return r->d->zero(r->d->ctx, r->d->stream, pl->p[i], bytes, r->err);
    }
  if (r->d->alloc(r->d->ctx, r->d->stream, bytes, out, r->err)) return -1;
  if (pl && pl->n == pl->cap) {
    int cap = pl->cap ? 2 * pl->cap : 32;
    RtDevPtr *p = realloc(pl->p, (size_t)cap * sizeof *p);
    if (p) pl->p = p;
    size_t *b = p ? realloc(pl->bytes, (size_t)cap * sizeof *b) : NULL;
    if (b) pl->bytes = b;
    char *u = b ? realloc(pl->used, (size_t)cap) : NULL;
    if (u) {
      pl->used = u;
      pl->cap = cap;
    }
  }
  if (pl && pl->n < pl->cap) { /* else (no memory to track it) freed directly */
    pl->p[pl->n] = *out;
    pl->bytes[pl->n] = bytes;
    pl->used[pl->n++] = 1;
  }
  return 0;
}

void rt_cu_free(Run *r, RtDevPtr p) {
  if (!p) return;
  CuPool *pl = r->pool;
  for (int i = 0; pl && i < pl->n; i++)
    if (pl->p[i] == p) {
      pl->used[i] = 0;
      return;
    }
  r->d->free(r->d->ctx, p);
}

/* Frees what the pool holds (all of it back by now). */
static void pool_release(Run *r, CuPool *pl) {
  for (int i = 0; i < pl->n; i++) r->d->free(r->d->ctx, pl->p[i]);
  free(pl->p);
  free(pl->bytes);
  free(pl->used);
  memset(pl, 0, sizeof *pl);
}

static int64_t rows_of(const Run *r, RtCuRows rows) {
  return rows == RT_CU_ROWS_ONE ? 1 : rows == RT_CU_ROWS_B ? r->B : r->B * r->T;
}

static uint32_t grid_of(const Run *r, const RtCuStep *st) {
  int64_t g = st->n;
  if (st->grid == RT_CU_GRID_B || st->grid == RT_CU_GRID_BMIN) g = r->B * st->n;
  if (st->grid == RT_CU_GRID_BMIN && g < st->per) g = st->per;
  if (st->grid == RT_CU_GRID_BT) {
    int64_t tok = r->B * r->T;
    /* n blocks per `per` tokens, rounded up; overflow-safe for B*T < 2^62. */
    g = tok / st->per * st->n + (tok % st->per ? st->n : 0);
  }
  if (g < 1) g = 1;
  if (g > 0x7fffffff) g = 0x7fffffff; /* every kernel strides over its grid */
  return (uint32_t)g;
}

/* Where a call's argument lives in its caller's frame. */
static RtDevPtr arg_at(const Run *r, const RtCuArg *a, const RtDevPtr *inputs,
                       const RtDevPtr *bufs) {
  return a->kind == RT_CU_ARG_PARAM   ? r->params[a->index]
         : a->kind == RT_CU_ARG_INPUT ? inputs[a->index]
                                      : bufs[a->index];
}

/* A Newton step: its arguments resolved in the caller's frame. */
static int newton(Run *r, const RtCuStep *st, const RtDevPtr *inputs, const RtDevPtr *bufs,
                  int rev) {
  const RtCuNewton *nt = st->newton;
  int m = r->p->insts[st->inst].ninputs - nt->n * (nt->dense ? 2 : 1);
  RtDevPtr args[RT_CU_NT_MAX_INPUTS + 1], outs[RT_CU_NT_MAX_STATES], h0[RT_CU_NT_MAX_STATES];
  if (m < 0 || m > RT_CU_NT_MAX_INPUTS || nt->n < 1 || nt->n > RT_CU_NT_MAX_STATES) {
    snprintf(r->err->msg, sizeof r->err->msg, "a Newton step with %d arguments and %d states", m,
             nt->n);
    return -1;
  }
  for (int j = 0; j < m; j++) args[j] = arg_at(r, &st->args[j], inputs, bufs);
  for (int k = 0; k < nt->n; k++) {
    outs[k] = bufs[st->outs[k]];
    h0[k] = arg_at(r, &nt->h0[k], inputs, bufs);
  }
  return rt_cu_newton(r, st, args, outs, h0, nt->ordered ? 0 : rev ^ st->reverse);
}

/* A layer run over a context's positions: each example's N positions as a
 * sequence of its own, its lengths (an int context) checked as the entry
 * points check theirs; bad ones are the call's status, and the layer does
 * not run. */
static int over(Run *r, const RtCuStep *st, const RtDevPtr *cin, const RtDevPtr *cout,
                const RtDevPtr *inputs, const RtDevPtr *bufs) {
  Run sub = *r;
  sub.T = st->over;
  sub.lengths = 0;
  if (st->over_lengths.kind != RT_CU_ARG_NONE) {
    sub.lengths = arg_at(r, &st->over_lengths, inputs, bufs);
    int32_t *hl = malloc((size_t)r->B * sizeof *hl + 1);
    if (!hl) {
      snprintf(r->err->msg, sizeof r->err->msg, "out of memory for a layer's lengths");
      return -1;
    }
    int bad = 0;
    if (r->d->copy(r->d->ctx, r->d->stream, (RtDevPtr)(uintptr_t)hl, sub.lengths,
                   (size_t)r->B * sizeof *hl, RT_CU_D2H, r->err)) {
      free(hl);
      return -1;
    }
    for (int64_t b = 0; b < r->B; b++) bad |= hl[b] < 0 || hl[b] > st->over;
    free(hl);
    if (bad) {
      int32_t status = ST_LENGTH;
      return r->d->copy(r->d->ctx, r->d->stream, r->status, (RtDevPtr)(uintptr_t)&status,
                        sizeof status, RT_CU_H2D, r->err);
    }
  }
  return rt_cu_run_inst(&sub, st->inst, cin, cout, st->reverse);
}

int rt_cu_run_inst(Run *r, int i, const RtDevPtr *inputs, const RtDevPtr *outputs, int rev) {
  const RtCuProgram *p = r->p;
  const RtCuInst *in = &p->insts[i];
  int nslots =
      RT_CU_F_FIXED + p->nparams + in->ninputs + p->nstates + in->noutputs + p->nstates + in->nbufs;
  int64_t *F = calloc((size_t)nslots, sizeof *F);
  RtDevPtr *bufs = calloc((size_t)in->nbufs + 1, sizeof *bufs);
  RtDevPtr frame = 0;
  int rc = -1;
  if (!F || !bufs) {
    snprintf(r->err->msg, sizeof r->err->msg, "out of memory for a CUDA frame");
    goto done;
  }
  for (int b = 0; b < in->nbufs; b++) {
    int64_t n = rows_of(r, in->bufs[b].rows) * in->bufs[b].row_floats;
    if (rt_cu_alloc(r, (size_t)n * sizeof(float), &bufs[b])) goto done;
  }
  int k = 0;
  F[k++] = r->B;
  F[k++] = r->T;
  F[k++] = rev;
  F[k++] = (int64_t)r->lengths;
  F[k++] = (int64_t)r->status;
  for (int j = 0; j < p->nparams; j++) F[k++] = (int64_t)r->params[j];
  for (int j = 0; j < in->ninputs; j++) F[k++] = (int64_t)inputs[j];
  for (int j = 0; j < p->nstates; j++) F[k++] = (int64_t)r->sin[j];
  for (int j = 0; j < in->noutputs; j++) F[k++] = (int64_t)outputs[j];
  for (int j = 0; j < p->nstates; j++) F[k++] = (int64_t)r->sout[j];
  for (int j = 0; j < in->nbufs; j++) F[k++] = (int64_t)bufs[j];
  if (rt_cu_alloc(r, (size_t)nslots * sizeof *F, &frame) ||
      r->d->copy(r->d->ctx, r->d->stream, frame, (RtDevPtr)(uintptr_t)F, (size_t)nslots * sizeof *F,
                 RT_CU_H2D, r->err))
    goto done;
  for (int s = 0; s < in->nsteps; s++) {
    const RtCuStep *st = &in->steps[s];
    if (st->kind == RT_CU_STEP_LAUNCH) {
      if (r->d->launch(r->d->ctx, r->d->stream, st->kernel, grid_of(r, st), (uint32_t)st->block,
                       frame, r->err))
        goto done;
      continue;
    }
    if (st->kind == RT_CU_STEP_NEWTON) {
      if (newton(r, st, inputs, bufs, rev)) goto done;
      continue;
    }
    const RtCuInst *ci = &p->insts[st->inst];
    RtDevPtr *cin = calloc((size_t)ci->ninputs + 1, sizeof *cin);
    RtDevPtr *cout = calloc((size_t)ci->noutputs + 1, sizeof *cout);
    if (!cin || !cout) {
      free(cin);
      free(cout);
      snprintf(r->err->msg, sizeof r->err->msg, "out of memory for a CUDA layer call");
      goto done;
    }
    for (int j = 0; j < ci->ninputs; j++) cin[j] = arg_at(r, &st->args[j], inputs, bufs);
    for (int j = 0; j < ci->noutputs; j++) cout[j] = bufs[st->outs[j]];
    int crc = st->over ? over(r, st, cin, cout, inputs, bufs)
                       : rt_cu_run_inst(r, st->inst, cin, cout, rev ^ st->reverse);
    free(cin);
    free(cout);
    if (crc) goto done;
  }
  /* The frame and the buffers outlive the launches that read them. */
  if (r->d->sync(r->d->ctx, r->d->stream, r->err)) goto done;
  rc = 0;
done:
  rt_cu_free(r, frame);
  if (bufs)
    for (int b = 0; b < in->nbufs; b++) rt_cu_free(r, bufs[b]);
  free(bufs);
  free(F);
  return rc;
}

static int upload(Run *r, const void *host, size_t bytes, RtDevPtr *out) {
  if (rt_cu_alloc(r, bytes, out)) return -1;
  if (!bytes || !host) return 0;
  return r->d->copy(r->d->ctx, r->d->stream, *out, (RtDevPtr)(uintptr_t)host, bytes, RT_CU_H2D,
                    r->err);
}

/* Checks lengths (host copies) and runs the root; status from the kernels. */
static int run_root(Run *r, const int32_t *host_lengths, RtDevPtr *din, RtDevPtr *dout) {
  if (host_lengths)
    for (int64_t b = 0; b < r->B; b++)
      if (host_lengths[b] < 0 || host_lengths[b] > r->T) return ST_LENGTH;
  CuPool pool = {0};
  r->pool = &pool;
  int rc = -1;
  int32_t status = 0;
  if (rt_cu_alloc(r, sizeof(int32_t), &r->status) == 0 && rt_cu_run_inst(r, 0, din, dout, 0) == 0 &&
      r->d->copy(r->d->ctx, r->d->stream, (RtDevPtr)(uintptr_t)&status, r->status, sizeof status,
                 RT_CU_D2H, r->err) == 0)
    rc = status;
  rt_cu_free(r, r->status);
  r->status = 0;
  r->pool = NULL;
  pool_release(r, &pool);
  return rc;
}

static int check_sizes(int64_t B, int64_t T) {
  if (B < 0 || T < 0) return ST_ARG;
  if (B > ((int64_t)1 << 31) || T > ((int64_t)1 << 31)) return ST_NOMEM;
  return ST_OK;
}

/* rt_cu_run's and rt_cu_run_io's arguments: sizes, and every device address
 * given. */
static int check_device_args(const RtCuProgram *p, int64_t B, int64_t T, const RtDevPtr *params,
                             const RtDevPtr *inputs, const RtDevPtr *outputs) {
  int rc = check_sizes(B, T);
  if (rc) return rc;
  if (!params || (p->ninputs && !inputs) || (p->noutputs && !outputs)) return ST_ARG;
  for (int j = 0; j < p->nparams; j++)
    if (!params[j]) return ST_ARG;
  for (int j = 0; j < p->ninputs; j++)
    if (!inputs[j]) return ST_ARG;
  for (int j = 0; j < p->noutputs; j++)
    if (!outputs[j]) return ST_ARG;
  return ST_OK;
}

int rt_cu_run(const RtCuProgram *p, const RtCuDevice *d, const RtDevPtr *params, int64_t B,
              int64_t T, const RtDevPtr *inputs, RtDevPtr lengths, const RtDevPtr *state_in,
              const RtDevPtr *outputs, const RtDevPtr *state_out, RtError *err) {
  int rc = check_device_args(p, B, T, params, inputs, outputs);
  if (rc) return rc;
  int ns = p->nstates;
  Run r = {p, d, err, B, T, lengths, 0, (RtDevPtr *)params, NULL, NULL, NULL};
  int32_t *hl = lengths ? malloc((size_t)B * sizeof *hl + 1) : NULL;
  r.sin = calloc((size_t)ns + 1, sizeof *r.sin);
  r.sout = calloc((size_t)ns + 1, sizeof *r.sout);
  rc = ST_NOMEM;
  if ((!lengths || hl) && r.sin && r.sout) {
    for (int j = 0; j < ns; j++) {
      r.sin[j] = state_in ? state_in[j] : 0;
      r.sout[j] = state_out ? state_out[j] : 0;
    }
    rc = -1;
    if (!lengths || d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)hl, lengths,
                            (size_t)B * sizeof *hl, RT_CU_D2H, err) == 0)
      rc = run_root(&r, hl, (RtDevPtr *)inputs, (RtDevPtr *)outputs);
  }
  free(hl);
  free(r.sin);
  free(r.sout);
  return rc;
}

static int kernel_named(const RtCuProgram *p, const char *name) {
  for (int k = 0; k < p->nkernels; k++)
    if (strcmp(p->kernels[k], name) == 0) return k;
  return -1;
}

/* Launches `kernel` (seq_io_in or seq_io_out) over n elements with the
 * frame at `frame`, whose four slots *host holds. */
static int convert(const RtCuDevice *d, int kernel, RtDevPtr frame, const int64_t *host, int64_t n,
                   RtError *err) {
  if (n <= 0) return 0;
  int64_t grid = (n + 255) / 256;
  if (d->copy(d->ctx, d->stream, frame, (RtDevPtr)(uintptr_t)host, 4 * sizeof *host, RT_CU_H2D,
              err))
    return -1;
  return d->launch(d->ctx, d->stream, kernel, (uint32_t)(grid < 4096 ? grid : 4096), 256, frame,
                   err);
}

int rt_cu_run_io(const RtCuProgram *p, const RtCuDevice *d, int io, const RtDevPtr *params,
                 int64_t B, int64_t T, const RtDevPtr *inputs, RtDevPtr lengths,
                 const RtDevPtr *state_in, const RtDevPtr *outputs, const RtDevPtr *state_out,
                 RtError *err) {
  if (io == RT_CU_IO_F32)
    return rt_cu_run(p, d, params, B, T, inputs, lengths, state_in, outputs, state_out, err);
  if (io != RT_CU_IO_BF16 && io != RT_CU_IO_F16) return ST_ARG;
  int rc = check_device_args(p, B, T, params, inputs, outputs);
  if (rc) return rc;
  int kin = kernel_named(p, "seq_io_in"), kout = kernel_named(p, "seq_io_out");
  if (kin < 0 || kout < 0) {
    snprintf(err->msg, sizeof err->msg,
             "this CUDA program has no kernels for 16-bit inputs and outputs (rendered by an "
             "older seqc)");
    return -1;
  }
  /* The float32 copies, and a frame of four slots per conversion: the
   * frames are device memory the launches read, so each has its own and
   * all live until the stream has run them. */
  int ni = p->ninputs, no = p->noutputs;
  RtDevPtr *fin = calloc((size_t)(ni + no) + 1, sizeof *fin), *fout = fin ? fin + ni : NULL;
  int64_t *host = calloc(4 * (size_t)(ni + no) + 1, sizeof *host);
  RtDevPtr frames = 0;
  rc = -1;
  if (!fin || !host) {
    rc = ST_NOMEM;
    goto done;
  }
  if (d->alloc(d->ctx, d->stream, 4 * (size_t)(ni + no) * sizeof *host, &frames, err)) goto done;
  for (int j = 0; j < ni + no; j++) {
    int in = j < ni, k = in ? j : j - ni;
    if (in && p->input_is_int[k]) {
      fin[j] = inputs[k];
      continue;
    }
    int64_t rows = in && p->input_context && p->input_context[k] ? B : B * T;
    int64_t n = rows * (in ? p->input_floats[k] : p->output_floats[k]);
    if (d->alloc(d->ctx, d->stream, (size_t)n * sizeof(float), &fin[j], err)) goto done;
    int64_t *f = host + 4 * j;
    f[0] = n;
    f[1] = (int64_t)(in ? inputs[k] : fin[j]);
    f[2] = (int64_t)(in ? fin[j] : outputs[k]);
    f[3] = io;
    if (in && convert(d, kin, frames + (RtDevPtr)(4 * j * sizeof *host), f, n, err)) goto done;
  }
  rc = rt_cu_run(p, d, params, B, T, fin, lengths, state_in, fout, state_out, err);
  /* Outputs only from a run that wrote them (not after a bad length). */
  for (int j = 0; rc == ST_OK && j < no; j++)
    if (convert(d, kout, frames + (RtDevPtr)(4 * (ni + j) * sizeof *host), host + 4 * (ni + j),
                host[4 * (ni + j)], err))
      rc = -1;
  if (rc == ST_OK && d->sync(d->ctx, d->stream, err)) rc = -1;
done:
  if (rc != ST_OK && frames) { /* what was queued reads the memory freed below */
    RtError ignored;
    d->sync(d->ctx, d->stream, &ignored);
  }
  for (int j = 0; fin && j < ni + no; j++)
    if (fin[j] && !(j < ni && p->input_is_int[j])) d->free(d->ctx, fin[j]);
  if (frames) d->free(d->ctx, frames);
  free(fin);
  free(host);
  return rc;
}

/* Host inputs and outputs; params from the host (uploaded for this call) or
 * already on the device (dparams). */
static int forward_host(const RtCuProgram *p, const RtCuDevice *d, const float *const *params,
                        const RtDevPtr *dparams, int64_t B, int64_t T, const void *const *inputs,
                        const int32_t *lengths, const float *const *state_in, float *const *outputs,
                        float *const *state_out, RtError *err) {
  int rc = check_sizes(B, T);
  if (rc) return rc;
  if ((!params && !dparams) || (p->ninputs && !inputs) || (p->noutputs && !outputs)) return ST_ARG;
  for (int j = 0; j < p->nparams; j++)
    if (params ? !params[j] : !dparams[j]) return ST_ARG;
  for (int j = 0; j < p->ninputs; j++)
    if (!inputs[j]) return ST_ARG;
  for (int j = 0; j < p->noutputs; j++)
    if (!outputs[j]) return ST_ARG;
  if (lengths)
    for (int64_t b = 0; b < B; b++)
      if (lengths[b] < 0 || lengths[b] > T) return ST_LENGTH;
  Run r = {p, d, err, B, T, 0, 0, NULL, NULL, NULL, NULL};
  int ns = p->nstates;
  RtDevPtr *din = calloc((size_t)p->ninputs + 1, sizeof *din);
  RtDevPtr *dout = calloc((size_t)p->noutputs + 1, sizeof *dout);
  r.params = calloc((size_t)p->nparams + 1, sizeof *r.params);
  r.sin = calloc((size_t)ns + 1, sizeof *r.sin);
  r.sout = calloc((size_t)ns + 1, sizeof *r.sout);
  rc = -1;
  if (!din || !dout || !r.params || !r.sin || !r.sout) {
    rc = ST_NOMEM;
    goto done;
  }
  const int64_t BT = B * T;
  for (int j = 0; j < p->nparams; j++) {
    if (!params) {
      r.params[j] = dparams[j];
    } else if (upload(&r, params[j], (size_t)p->param_floats[j] * sizeof(float), &r.params[j])) {
      goto done;
    }
  }
  for (int j = 0; j < p->ninputs; j++)
    if (upload(&r, inputs[j],
               (size_t)((p->input_context && p->input_context[j] ? B : BT) * p->input_floats[j]) *
                   4,
               &din[j]))
      goto done;
  for (int j = 0; j < p->noutputs; j++)
    if (rt_cu_alloc(&r, (size_t)(BT * p->output_floats[j]) * sizeof(float), &dout[j])) goto done;
  for (int j = 0; j < ns; j++) {
    size_t bytes = (size_t)(B * p->state_floats[j]) * sizeof(float);
    if (state_in && state_in[j] && upload(&r, state_in[j], bytes, &r.sin[j])) goto done;
    if (state_out && state_out[j] && rt_cu_alloc(&r, bytes, &r.sout[j])) goto done;
  }
  if (lengths && upload(&r, lengths, (size_t)B * sizeof(int32_t), &r.lengths)) goto done;
  int st = run_root(&r, lengths, din, dout);
  if (st < 0) goto done;
  for (int j = 0; j < p->noutputs; j++)
    if (d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)outputs[j], dout[j],
                (size_t)(BT * p->output_floats[j]) * sizeof(float), RT_CU_D2H, err))
      goto done;
  for (int j = 0; j < ns; j++)
    if (r.sout[j] && d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)state_out[j], r.sout[j],
                             (size_t)(B * p->state_floats[j]) * sizeof(float), RT_CU_D2H, err))
      goto done;
  rc = st;
done:
  if (din)
    for (int j = 0; j < p->ninputs; j++) rt_cu_free(&r, din[j]);
  if (dout)
    for (int j = 0; j < p->noutputs; j++) rt_cu_free(&r, dout[j]);
  if (r.params && params)
    for (int j = 0; j < p->nparams; j++) rt_cu_free(&r, r.params[j]);
  for (int j = 0; r.sin && j < ns; j++) rt_cu_free(&r, r.sin[j]);
  for (int j = 0; r.sout && j < ns; j++) rt_cu_free(&r, r.sout[j]);
  rt_cu_free(&r, r.lengths);
  free(din);
  free(dout);
  free(r.params);
  free(r.sin);
  free(r.sout);
  return rc;
}

int rt_cu_forward(const RtCuProgram *p, const RtCuDevice *d, const float *const *params, int64_t B,
                  int64_t T, const void *const *inputs, const int32_t *lengths,
                  const float *const *state_in, float *const *outputs, float *const *state_out,
                  RtError *err) {
  return forward_host(p, d, params, NULL, B, T, inputs, lengths, state_in, outputs, state_out, err);
}

int rt_cu_forward_bound(const RtCuProgram *p, const RtCuDevice *d, const RtDevPtr *params,
                        int64_t B, int64_t T, const void *const *inputs, const int32_t *lengths,
                        const float *const *state_in, float *const *outputs,
                        float *const *state_out, RtError *err) {
  if (!params) return ST_ARG;
  return forward_host(p, d, NULL, params, B, T, inputs, lengths, state_in, outputs, state_out, err);
}
