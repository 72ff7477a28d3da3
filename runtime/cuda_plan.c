/* cuda_plan.c - a CUDA program (rt_cuda.h) as bytes and back: what a shared
 * object for the GPU embeds (docs/cuda.md, "Shared objects for the GPU").
 *
 * Little-endian throughout. A 32-byte header: the magic "SEQCUPLN", the
 * format version (u32), zero (u32), the body's size (u64) and its FNV-1a
 * 64-bit hash (u64). The body: the CUDA C source and the kernel names
 * (strings: a u32 length, then the bytes, no NUL), the interface (counts,
 * then floats per tensor as i64, int flags as i32), then per instance its
 * counts, buffers and state buffers, then every instance's steps. Every
 * step is written whole (kind, kernel, grid, n, per, block, inst, reverse,
 * then its arguments and outputs with their counts, the positions a call
 * runs over and its lengths' argument; a Newton step then its
 * solve's sizes, tolerances, the states' initial values and its arguments'
 * rows), so the format has no optional parts beyond what the kind says.
 *
 * Reading checks every length against the bytes left before it allocates,
 * the hash, and every index the executor follows (kernels, instances, a
 * layer's arguments and outputs, enum values, block sizes): a damaged or
 * crafted blob is RT_ERR_FORMAT with a message, never a crash or a program
 * the executor would run out of bounds. */
#include "runtime/rt_cuda.h"
#include "runtime/rt_internal.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2: inputs' context flags; 3: Newton steps, calls over a context's positions */
enum { PLAN_HEADER = 32, PLAN_VERSION = 3 };
static const char plan_magic[8] = {'S', 'E', 'Q', 'C', 'U', 'P', 'L', 'N'};

/* Bounds a reader applies to sizes (a row of 2^40 floats is beyond any
 * device) and counts (beyond any program seqc renders). */
#define PLAN_MAX_FLOATS ((int64_t)1 << 40)
#define PLAN_MAX_COUNT (1 << 24)

static uint64_t fnv1a(const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* ---- writing ----------------------------------------------------------------- */

typedef struct Out {
  unsigned char *p;
  size_t n, cap;
  int oom;
} Out;

static void put(Out *o, const void *src, size_t n) {
  if (o->oom) return;
  if (o->n + n > o->cap) {
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->n + n) cap *= 2;
    unsigned char *q = realloc(o->p, cap);
    if (!q) {
      o->oom = 1;
      return;
    }
    o->p = q;
    o->cap = cap;
  }
  memcpy(o->p + o->n, src, n);
  o->n += n;
}

static void put_u64(Out *o, uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
  put(o, b, 8);
}

static void put_u32(Out *o, uint32_t v) {
  unsigned char b[4];
  for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
  put(o, b, 4);
}

static void put_i32(Out *o, int v) {
  put_u32(o, (uint32_t)v);
}

static void put_i64(Out *o, int64_t v) {
  put_u64(o, (uint64_t)v);
}

static void put_str(Out *o, const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n > UINT32_MAX) {
    o->oom = 1;
    return;
  }
  put_u32(o, (uint32_t)n);
  put(o, s, n);
}

static void put_f32(Out *o, float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  put_u32(o, u);
}

/* A Newton step's solve (after its arguments and outputs). */
static void put_newton(Out *o, const RtCuNewton *nt, int nargs) {
  put_i32(o, nt->n);
  put_i32(o, nt->dense);
  put_i32(o, nt->max_iter);
  put_f32(o, nt->rtol);
  put_f32(o, nt->atol);
  put_i64(o, nt->w);
  put_i32(o, nt->kernel);
  put_i32(o, nt->ordered);
  for (int k = 0; k < nt->n; k++) {
    put_i32(o, (int)nt->h0[k].kind);
    put_i32(o, nt->h0[k].index);
    put_i32(o, nt->h0_per_example[k]);
  }
  for (int j = 0; j < nargs; j++) {
    put_i32(o, (int)nt->in_rows[j]);
    put_i64(o, nt->in_floats[j]);
  }
}

int rt_cu_program_write(const RtCuProgram *p, RtBlob *out) {
  if (!out) return RT_ERR_ARG;
  out->data = NULL;
  out->size = 0;
  if (!p || p->nkernels < 0 || p->ninsts < 1 || p->nparams < 0 || p->ninputs < 0 ||
      p->noutputs < 0 || p->nstates < 0 || !p->insts)
    return RT_ERR_ARG;
  Out o = {0};
  unsigned char zero[PLAN_HEADER] = {0};
  put(&o, zero, sizeof zero);
  put_str(&o, p->source);
  put_i32(&o, p->nkernels);
  for (int k = 0; k < p->nkernels; k++) put_str(&o, p->kernels[k]);
  put_i32(&o, p->nparams);
  put_i32(&o, p->ninputs);
  put_i32(&o, p->noutputs);
  put_i32(&o, p->nstates);
  for (int j = 0; j < p->nparams; j++) put_i64(&o, p->param_floats[j]);
  for (int j = 0; j < p->ninputs; j++) put_i64(&o, p->input_floats[j]);
  for (int j = 0; j < p->noutputs; j++) put_i64(&o, p->output_floats[j]);
  for (int j = 0; j < p->nstates; j++) put_i64(&o, p->state_floats[j]);
  for (int j = 0; j < p->ninputs; j++) put_i32(&o, p->input_is_int ? p->input_is_int[j] : 0);
  for (int j = 0; j < p->ninputs; j++) put_i32(&o, p->input_context ? p->input_context[j] : 0);
  put_i32(&o, p->ninsts);
  for (int i = 0; i < p->ninsts; i++) {
    const RtCuInst *in = &p->insts[i];
    put_i32(&o, in->ninputs);
    put_i32(&o, in->nstates);
    put_i32(&o, in->noutputs);
    put_i32(&o, in->nbufs);
    put_i32(&o, in->nsteps);
    for (int b = 0; b < in->nbufs; b++) {
      put_i32(&o, (int)in->bufs[b].rows);
      put_i64(&o, in->bufs[b].row_floats);
    }
    for (int s = 0; s < in->nstates; s++) put_i32(&o, in->state_buf[s]);
  }
  /* The steps after every instance's counts: a call's arguments and outputs
   * are as many as its callee's inputs and outputs. */
  for (int i = 0; i < p->ninsts; i++) {
    const RtCuInst *in = &p->insts[i];
    for (int s = 0; s < in->nsteps; s++) {
      const RtCuStep *st = &in->steps[s];
      int call = st->kind != RT_CU_STEP_LAUNCH && st->inst > 0 && st->inst < p->ninsts;
      const RtCuNewton *nt = st->kind == RT_CU_STEP_NEWTON ? st->newton : NULL;
      if (st->kind == RT_CU_STEP_NEWTON && (!call || !nt)) return RT_ERR_ARG;
      int nargs = !call ? 0
                  : nt  ? p->insts[st->inst].ninputs - nt->n * (nt->dense ? 2 : 1)
                        : p->insts[st->inst].ninputs;
      int nouts = !call ? 0 : nt ? nt->n : p->insts[st->inst].noutputs;
      if (nargs < 0) return RT_ERR_ARG;
      put_i32(&o, (int)st->kind);
      put_i32(&o, st->kernel);
      put_i32(&o, (int)st->grid);
      put_i64(&o, st->n);
      put_i64(&o, st->per);
      put_i32(&o, st->block);
      put_i32(&o, st->inst);
      put_i32(&o, st->reverse);
      put_i32(&o, nargs);
      for (int j = 0; j < nargs; j++) {
        put_i32(&o, (int)st->args[j].kind);
        put_i32(&o, st->args[j].index);
      }
      put_i32(&o, nouts);
      for (int j = 0; j < nouts; j++) put_i32(&o, st->outs[j]);
      put_i64(&o, st->over);
      put_i32(&o, st->over ? (int)st->over_lengths.kind : RT_CU_ARG_NONE);
      put_i32(&o, st->over ? st->over_lengths.index : 0);
      if (nt) put_newton(&o, nt, nargs);
    }
  }
  if (o.oom) {
    free(o.p);
    return RT_ERR_NOMEM;
  }
  Out h = {o.p, 0, o.cap, 0};
  put(&h, plan_magic, sizeof plan_magic);
  put_u32(&h, PLAN_VERSION);
  put_u32(&h, 0);
  put_u64(&h, (uint64_t)(o.n - PLAN_HEADER));
  put_u64(&h, fnv1a(o.p + PLAN_HEADER, o.n - PLAN_HEADER));
  out->data = o.p;
  out->size = o.n;
  return RT_OK;
}

/* ---- reading ----------------------------------------------------------------- */

/* A program read from bytes owns its memory: the allocations hang off the
 * program (the first member, so rt_cu_program_free finds the list). */
typedef struct Mem {
  struct Mem *next;
  max_align_t data[];
} Mem;

typedef struct Owned {
  RtCuProgram p;
  Mem *mem;
} Owned;

typedef struct In {
  const unsigned char *p;
  size_t n, at;
  Owned *own;
  RtError *err;
  int failed, status;
} In;

static int bad(In *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(In *r, const char *fmt, ...) {
  if (r->failed) return -1;
  r->failed = 1;
  r->status = RT_ERR_FORMAT;
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  rt_fail(r->err, RT_ERR_FORMAT, "CUDA plan: %s", msg);
  return -1;
}

static void *get_mem(In *r, size_t bytes) {
  if (r->failed) return NULL;
  Mem *m = calloc(1, sizeof *m + (bytes ? bytes : 1));
  if (!m) {
    r->failed = 1;
    r->status = RT_ERR_NOMEM;
    rt_fail(r->err, RT_ERR_NOMEM, "CUDA plan: out of memory");
    return NULL;
  }
  m->next = r->own->mem;
  r->own->mem = m;
  return m->data;
}

static const unsigned char *take(In *r, size_t n, const char *what) {
  if (r->failed) return NULL;
  if (n > r->n - r->at) {
    bad(r, "truncated at byte %zu of %zu (reading %s)", r->at, r->n, what);
    return NULL;
  }
  const unsigned char *q = r->p + r->at;
  r->at += n;
  return q;
}

static uint64_t get_u64(In *r, const char *what) {
  const unsigned char *b = take(r, 8, what);
  uint64_t v = 0;
  for (int i = 0; b && i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
  return v;
}

static uint32_t get_u32(In *r, const char *what) {
  const unsigned char *b = take(r, 4, what);
  uint32_t v = 0;
  for (int i = 0; b && i < 4; i++) v |= (uint32_t)b[i] << (8 * i);
  return v;
}

static int get_i32(In *r, const char *what) {
  uint32_t u = get_u32(r, what);
  int32_t v;
  memcpy(&v, &u, sizeof v);
  return v;
}

static int64_t get_i64(In *r, const char *what) {
  uint64_t u = get_u64(r, what);
  int64_t v;
  memcpy(&v, &u, sizeof v);
  return v;
}

/* A value in [lo, hi]. */
static int get_range(In *r, const char *what, int lo, int hi) {
  int v = get_i32(r, what);
  if (!r->failed && (v < lo || v > hi)) bad(r, "%s is %d (want %d to %d)", what, v, lo, hi);
  return r->failed ? lo : v;
}

/* A count of items of at least `each` bytes: no more than the bytes left
 * could hold, so no allocation is larger than the blob. */
static int get_count(In *r, const char *what, size_t each) {
  int v = get_i32(r, what);
  if (r->failed) return 0;
  if (v < 0 || v > PLAN_MAX_COUNT || (size_t)v * each > r->n - r->at) {
    bad(r, "%s is %d, more than the %zu bytes left can hold", what, v, r->n - r->at);
    return 0;
  }
  return v;
}

static const char *get_str(In *r, const char *what) {
  uint32_t n = get_u32(r, what);
  const unsigned char *b = take(r, n, what);
  char *s = b ? get_mem(r, (size_t)n + 1) : NULL;
  if (!s) return NULL;
  if (memchr(b, 0, n)) {
    bad(r, "%s holds a NUL byte", what);
    return NULL;
  }
  memcpy(s, b, n);
  s[n] = 0;
  return s;
}

static int64_t *get_floats(In *r, int n, const char *what) {
  int64_t *v = get_mem(r, (size_t)n * sizeof *v);
  for (int j = 0; v && j < n; j++) {
    v[j] = get_i64(r, what);
    if (!r->failed && (v[j] < 0 || v[j] > PLAN_MAX_FLOATS))
      bad(r, "%s %d has %lld floats", what, j, (long long)v[j]);
  }
  return r->failed ? NULL : v;
}

static float get_f32(In *r, const char *what) {
  uint32_t u = get_u32(r, what);
  float v;
  memcpy(&v, &u, sizeof v);
  return v;
}

/* Where an argument of instance i's call lives: an index in range. */
static int check_arg(In *r, const RtCuProgram *p, int i, const RtCuArg *a, const char *what,
                     int j) {
  const RtCuInst *in = &p->insts[i];
  int lim = a->kind == RT_CU_ARG_PARAM   ? p->nparams
            : a->kind == RT_CU_ARG_INPUT ? in->ninputs
                                         : in->nbufs;
  if (a->index < 0 || a->index >= lim)
    return bad(r, "instance %d passes %s %d from index %d of %d", i, what, j, a->index, lim);
  return 0;
}

/* A Newton step's solve, checked against its step's counts. */
static int read_newton(In *r, const RtCuProgram *p, int i, RtCuStep *st, int nargs, int nouts) {
  RtCuNewton *nt = get_mem(r, sizeof *nt);
  if (!nt) return -1;
  st->newton = nt;
  nt->n = get_range(r, "a Newton step's states", 1, RT_CU_NT_MAX_STATES);
  nt->dense = get_range(r, "a Newton step's Jacobian kind", 0, 1);
  nt->max_iter = get_range(r, "a Newton step's iterations", 0, 1 << 20);
  nt->rtol = get_f32(r, "a Newton step's rtol");
  nt->atol = get_f32(r, "a Newton step's atol");
  nt->w = get_i64(r, "a Newton step's row");
  nt->kernel = get_i32(r, "a Newton step's kernels");
  nt->ordered = get_range(r, "a Newton step's row order", 0, 1);
  for (int k = 0; k < nt->n && !r->failed; k++) {
    nt->h0[k].kind = (RtCuArgKind)get_range(r, "an initial value's kind", 0, RT_CU_ARG_BUF);
    nt->h0[k].index = get_i32(r, "an initial value's index");
    nt->h0_per_example[k] = get_range(r, "an initial value's rows", 0, 1);
  }
  nt->in_rows = get_mem(r, (size_t)nargs * sizeof *nt->in_rows);
  nt->in_floats = get_mem(r, (size_t)nargs * sizeof *nt->in_floats);
  for (int j = 0; nt->in_rows && nt->in_floats && j < nargs && !r->failed; j++) {
    nt->in_rows[j] = (RtCuRows)get_range(r, "an argument's rows", RT_CU_ROWS_B, RT_CU_ROWS_BT);
    nt->in_floats[j] = get_i64(r, "an argument's floats per row");
    if (!r->failed && (nt->in_floats[j] < 0 || nt->in_floats[j] > PLAN_MAX_FLOATS))
      bad(r, "argument %d of a Newton step has %lld floats per row", j,
          (long long)nt->in_floats[j]);
  }
  if (r->failed) return -1;
  const RtCuInst *ci = &p->insts[st->inst];
  if (nt->w < 1 || nt->w > PLAN_MAX_FLOATS)
    return bad(r, "a Newton step's states have %lld floats per row", (long long)nt->w);
  if (nt->kernel < 0 || nt->kernel > p->nkernels - RT_CU_NT_NKERNELS)
    return bad(r, "a Newton step's kernels start at %d of %d", nt->kernel, p->nkernels);
  if (nouts != nt->n || nargs + nt->n * (nt->dense ? 2 : 1) != ci->ninputs ||
      ci->noutputs != nt->n + (nt->dense ? nt->n : nt->n * nt->n) || nargs > RT_CU_NT_MAX_INPUTS)
    return bad(r,
               "instance %d solves instance %d (%d inputs, %d outputs) with %d arguments for %d "
               "states",
               i, st->inst, ci->ninputs, ci->noutputs, nargs, nt->n);
  for (int k = 0; k < nt->n; k++)
    if (check_arg(r, p, i, &nt->h0[k], "initial value", k)) return -1;
  return 0;
}

static int read_step(In *r, const RtCuProgram *p, int i, RtCuStep *st) {
  st->kind = (RtCuStepKind)get_range(r, "a step's kind", RT_CU_STEP_LAUNCH, RT_CU_STEP_NEWTON);
  st->kernel = get_i32(r, "a step's kernel");
  st->grid = (RtCuGridKind)get_range(r, "a step's grid", RT_CU_GRID_FIXED, RT_CU_GRID_BMIN);
  st->n = get_i64(r, "a step's blocks");
  st->per = get_i64(r, "a step's tokens per blocks");
  st->block = get_i32(r, "a step's threads");
  st->inst = get_i32(r, "a step's instance");
  st->reverse = get_range(r, "a step's direction", 0, 1);
  int nargs = get_count(r, "a step's arguments", 8);
  st->args = get_mem(r, (size_t)nargs * sizeof *st->args);
  for (int j = 0; st->args && j < nargs; j++) {
    st->args[j].kind = (RtCuArgKind)get_range(r, "an argument's kind", 0, RT_CU_ARG_BUF);
    st->args[j].index = get_i32(r, "an argument's index");
  }
  int nouts = get_count(r, "a step's outputs", 4);
  st->outs = get_mem(r, (size_t)nouts * sizeof *st->outs);
  for (int j = 0; st->outs && j < nouts; j++) st->outs[j] = get_i32(r, "a step's output");
  st->over = get_i64(r, "a step's positions");
  st->over_lengths.kind =
      (RtCuArgKind)get_range(r, "a step's lengths' kind", RT_CU_ARG_NONE, RT_CU_ARG_BUF);
  st->over_lengths.index = get_i32(r, "a step's lengths' index");
  if (r->failed) return -1;
  if (st->over < 0 || st->over > ((int64_t)1 << 31) || (st->over && st->kind != RT_CU_STEP_CALL) ||
      (st->over_lengths.kind != RT_CU_ARG_NONE && !st->over))
    return bad(r, "instance %d has a step over %lld positions", i, (long long)st->over);
  if (st->kind == RT_CU_STEP_LAUNCH) {
    if (st->kernel < 0 || st->kernel >= p->nkernels)
      return bad(r, "instance %d launches kernel %d of %d", i, st->kernel, p->nkernels);
    if (st->n < 1 || st->n > ((int64_t)1 << 31) || st->per < 1)
      return bad(r, "instance %d launches %lld blocks per %lld", i, (long long)st->n,
                 (long long)st->per);
    if (st->block < 1 || st->block > 1024)
      return bad(r, "instance %d launches blocks of %d threads", i, st->block);
    if (nargs || nouts) return bad(r, "instance %d has a launch with arguments", i);
    return 0;
  }
  /* A layer comes after its caller, so calls never recurse. */
  if (st->inst <= i || st->inst >= p->ninsts)
    return bad(r, "instance %d calls instance %d (of %d)", i, st->inst, p->ninsts);
  const RtCuInst *ci = &p->insts[st->inst], *in = &p->insts[i];
  if (st->kind == RT_CU_STEP_NEWTON) {
    if (read_newton(r, p, i, st, nargs, nouts)) return -1;
  } else if (nargs != ci->ninputs || nouts != ci->noutputs) {
    return bad(r, "instance %d calls instance %d with %d inputs and %d outputs (it has %d and %d)",
               i, st->inst, nargs, nouts, ci->ninputs, ci->noutputs);
  }
  for (int j = 0; j < nargs; j++)
    if (check_arg(r, p, i, &st->args[j], "argument", j)) return -1;
  if (st->over_lengths.kind != RT_CU_ARG_NONE &&
      check_arg(r, p, i, &st->over_lengths, "lengths", 0))
    return -1;
  for (int j = 0; j < nouts; j++)
    if (st->outs[j] < 0 || st->outs[j] >= in->nbufs)
      return bad(r, "instance %d takes output %d into buffer %d of %d", i, j, st->outs[j],
                 in->nbufs);
  return 0;
}

/* Every instance's counts and buffers, then every instance's steps (a step
 * is checked against its callee's counts). */
static int read_insts(In *r, RtCuProgram *p) {
  p->ninsts = get_count(r, "the instances", 20);
  if (!r->failed && p->ninsts < 1) return bad(r, "no instances");
  RtCuInst *insts = get_mem(r, (size_t)p->ninsts * sizeof *insts);
  if (!insts) return -1;
  p->insts = insts;
  for (int i = 0; i < p->ninsts && !r->failed; i++) {
    RtCuInst *in = &insts[i];
    in->ninputs = get_count(r, "an instance's inputs", 0);
    in->nstates = get_count(r, "an instance's states", 4);
    in->noutputs = get_count(r, "an instance's outputs", 0);
    in->nbufs = get_count(r, "an instance's buffers", 12);
    in->nsteps = get_count(r, "an instance's steps", 48);
    in->bufs = get_mem(r, (size_t)in->nbufs * sizeof *in->bufs);
    for (int b = 0; in->bufs && b < in->nbufs; b++) {
      in->bufs[b].rows = (RtCuRows)get_range(r, "a buffer's rows", RT_CU_ROWS_ONE, RT_CU_ROWS_BT);
      in->bufs[b].row_floats = get_i64(r, "a buffer's floats per row");
      if (!r->failed && (in->bufs[b].row_floats < 0 || in->bufs[b].row_floats > PLAN_MAX_FLOATS))
        bad(r, "buffer %d of instance %d has %lld floats per row", b, i,
            (long long)in->bufs[b].row_floats);
    }
    in->state_buf = get_mem(r, (size_t)in->nstates * sizeof *in->state_buf);
    for (int s = 0; in->state_buf && s < in->nstates; s++)
      in->state_buf[s] = get_range(r, "a state's buffer", -1, in->nbufs - 1);
    in->steps = get_mem(r, (size_t)in->nsteps * sizeof *in->steps);
  }
  for (int i = 0; i < p->ninsts && !r->failed; i++)
    for (int s = 0; s < insts[i].nsteps && !r->failed; s++) read_step(r, p, i, &insts[i].steps[s]);
  return r->failed ? -1 : 0;
}

int rt_cu_program_read(const void *data, size_t size, RtCuProgram **out, RtError *err) {
  if (!out) return rt_fail(err, RT_ERR_ARG, "rt_cu_program_read: no output");
  *out = NULL;
  if (!data && size) return rt_fail(err, RT_ERR_ARG, "rt_cu_program_read: no data");
  const unsigned char *b = data;
  if (size < PLAN_HEADER)
    return rt_fail(err, RT_ERR_FORMAT, "CUDA plan: truncated (%zu bytes, the header alone is %d)",
                   size, PLAN_HEADER);
  if (memcmp(b, plan_magic, sizeof plan_magic) != 0)
    return rt_fail(err, RT_ERR_FORMAT, "CUDA plan: not a seqc CUDA plan (no SEQCUPLN magic)");
  In h = {b, PLAN_HEADER, 8, NULL, err, 0, 0};
  uint32_t version = get_u32(&h, "the version");
  uint32_t zero = get_u32(&h, "the header");
  uint64_t body = get_u64(&h, "the size");
  uint64_t hash = get_u64(&h, "the hash");
  if (version != PLAN_VERSION)
    return rt_fail(err, RT_ERR_FORMAT,
                   "CUDA plan: format version %u (this runtime reads version %d)", version,
                   PLAN_VERSION);
  if (zero != 0)
    return rt_fail(err, RT_ERR_FORMAT, "CUDA plan: unknown flags 0x%x in the header", zero);
  if (body != size - PLAN_HEADER)
    return rt_fail(err, RT_ERR_FORMAT,
                   "CUDA plan: the header says %llu bytes follow it, %zu do (truncated or padded)",
                   (unsigned long long)body, size - PLAN_HEADER);
  if (fnv1a(b + PLAN_HEADER, size - PLAN_HEADER) != hash)
    return rt_fail(err, RT_ERR_FORMAT, "CUDA plan: the contents do not match their hash");

  Owned *own = calloc(1, sizeof *own);
  if (!own) return rt_fail(err, RT_ERR_NOMEM, "CUDA plan: out of memory");
  In r = {b, size, PLAN_HEADER, own, err, 0, 0};
  RtCuProgram *p = &own->p;
  p->source = get_str(&r, "the source");
  p->nkernels = get_count(&r, "the kernels", 4);
  const char **names = get_mem(&r, (size_t)p->nkernels * sizeof *names);
  for (int k = 0; names && k < p->nkernels && !r.failed; k++) {
    names[k] = get_str(&r, "a kernel's name");
    if (names[k] && !names[k][0]) bad(&r, "kernel %d has no name", k);
  }
  p->kernels = names;
  p->nparams = get_count(&r, "the parameters", 8);
  p->ninputs = get_count(&r, "the inputs", 12);
  p->noutputs = get_count(&r, "the outputs", 8);
  p->nstates = get_count(&r, "the states", 8);
  p->param_floats = get_floats(&r, p->nparams, "parameter");
  p->input_floats = get_floats(&r, p->ninputs, "input");
  p->output_floats = get_floats(&r, p->noutputs, "output");
  p->state_floats = get_floats(&r, p->nstates, "state");
  p->input_is_int = get_mem(&r, (size_t)p->ninputs * sizeof *p->input_is_int);
  for (int j = 0; p->input_is_int && j < p->ninputs; j++)
    p->input_is_int[j] = get_range(&r, "an input's int flag", 0, 1);
  p->input_context = get_mem(&r, (size_t)p->ninputs * sizeof *p->input_context);
  for (int j = 0; p->input_context && j < p->ninputs; j++)
    p->input_context[j] = get_range(&r, "an input's context flag", 0, 1);
  read_insts(&r, p);
  if (!r.failed) {
    const RtCuInst *root = &p->insts[0];
    if (root->ninputs != p->ninputs || root->noutputs != p->noutputs)
      bad(&r, "the root has %d inputs and %d outputs, the program %d and %d", root->ninputs,
          root->noutputs, p->ninputs, p->noutputs);
    else if (r.at != r.n)
      bad(&r, "%zu bytes left over after the plan", r.n - r.at);
  }
  if (r.failed) {
    rt_cu_program_free(p);
    return r.status;
  }
  *out = p;
  return RT_OK;
}

void rt_cu_program_free(RtCuProgram *p) {
  if (!p) return;
  Owned *own = (Owned *)p;
  for (Mem *m = own->mem; m;) {
    Mem *next = m->next;
    free(m);
    m = next;
  }
  free(own);
}
