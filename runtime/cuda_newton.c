/* cuda_newton.c - a Newton layer's solve on a CUDA device (RT_CU_STEP_NEWTON,
 * rt_cuda.h): the iteration the interpreter defines (ir/interp.c,
 * newton_solve; docs/algorithms.md section 6), batched as the CPU's solve
 * (cpu_newton.c) batches it, with the host deciding and the device doing
 * every pass over the sequence:
 *
 *   guess   H = F(x, 0) at every token (one evaluation of the step);
 *   iterate the linear recurrence D[t] = F[t] + J[t] (D[t-1] - P[t]) from
 *           F and J at the guess (P: the guess one step later, h0 first);
 *           an example whose D is within atol + rtol |D| of H everywhere
 *           takes D and is done; otherwise its step D - H is taken whole
 *           when the residual max |H - F(P)| does not grow, else halved
 *           (4 halvings at most);
 *   give up after max_iter iterations or on a value that is not finite:
 *           the step loop runs from the first step that failed the last
 *           test, one token of every such example per evaluation.
 *
 * The examples are solved together (one evaluation of the step over every
 * token of the batch) but stop separately: a done example is evaluated at
 * its own result from then on. The step is the layer's instance, run over
 * B x T rows by rt_cu_run_inst; the passes are the program's solver kernels
 * (cudagen/newton.c renders them), each launched with the solve's frame
 * (RT_CU_NF_*): the linear recurrence a thread per element, or split in
 * time into segments where that is too few threads (each segment's map,
 * carried from h0 to every segment's start, each segment again from
 * there). Per iteration the host reads back a float and an int64 per
 * example. A solve covers the whole sequence at once (the CPU's
 * windows bound host memory; the device holds the sequence anyway).
 */
#include "runtime/cuda_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HALVINGS 4 /* a step is halved at most this many times */

enum { ROWS_TAKE_D, ROWS_STEP, ROWS_CANDIDATE, ROWS_TAKE_C };

typedef struct Solve {
  CuRun *r;
  const RtCuStep *st;
  const RtCuNewton *nt;
  int n, m, nout;
  int64_t w, BTw;
  int64_t *NF; /* the frame, host copy */
  int nslots;
  int64_t G; /* segments per example of the linear recurrence (1: not split) */
  RtDevPtr frame;
  RtDevPtr mem[16 + 3 * RT_CU_NT_MAX_INPUTS]; /* what the solve allocated */
  int nmem;
  const RtDevPtr *args;
  RtDevPtr one_in[RT_CU_NT_MAX_INPUTS]; /* a row per example of each per-token argument */
  /* per example, host side */
  int32_t *flag;
  float *lam, *res, *cres, *errs;
  int64_t *bad, *firstbad;
  int32_t *iters;
  char *done, *pending, *took;
} Solve;

static int dalloc(Solve *s, size_t bytes, RtDevPtr *out) {
  if (rt_cu_alloc(s->r, bytes, out)) return -1;
  s->mem[s->nmem++] = *out;
  return 0;
}

static int h2d(Solve *s, RtDevPtr dst, const void *src, size_t bytes) {
  const RtCuDevice *d = s->r->d;
  return d->copy(d->ctx, d->stream, dst, (RtDevPtr)(uintptr_t)src, bytes, RT_CU_H2D, s->r->err);
}

static int d2h(Solve *s, void *dst, RtDevPtr src, size_t bytes) {
  const RtCuDevice *d = s->r->d;
  return d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)dst, src, bytes, RT_CU_D2H, s->r->err);
}

/* Launches solver kernel k with the frame as it is now on the host. */
static int launch(Solve *s, int k, int64_t grid) {
  if (grid < 1) grid = 1;
  if (grid > 0x7fffffff) grid = 0x7fffffff; /* the kernels stride over their grid */
  if (h2d(s, s->frame, s->NF, (size_t)s->nslots * sizeof *s->NF)) return -1;
  const RtCuDevice *d = s->r->d;
  return d->launch(d->ctx, d->stream, s->nt->kernel + k, (uint32_t)grid, 128, s->frame, s->r->err);
}

static int64_t len_of(const Solve *s, int64_t b, const int32_t *lens) {
  return lens ? lens[b] : s->r->T;
}

/* Per-example flags and step factors to the device. */
static int put_flags(Solve *s, const char *on) {
  for (int64_t b = 0; b < s->r->B; b++) s->flag[b] = on ? on[b] != 0 : 1;
  return h2d(s, (RtDevPtr)s->NF[RT_CU_NF_FLAG], s->flag, (size_t)s->r->B * sizeof *s->flag);
}

static int rows(Solve *s, int op, const char *on) {
  if (put_flags(s, on)) return -1;
  if (op == ROWS_CANDIDATE &&
      h2d(s, (RtDevPtr)s->NF[RT_CU_NF_LAM], s->lam, (size_t)s->r->B * sizeof *s->lam))
    return -1;
  s->NF[RT_CU_NF_OP] = op;
  return launch(s, RT_CU_NT_K_ROWS, s->r->B * s->r->T);
}

/* The step at every token, its previous states the guess xsel (0: zero,
 * 1: H, 2: C) one step later; with xsel, each example's residual
 * max |X - F| into res. */
static int evaluate(Solve *s, int xsel, float *res) {
  CuRun *r = s->r;
  const RtCuNewton *nt = s->nt;
  RtDevPtr cin[RT_CU_NT_MAX_INPUTS + 2 * RT_CU_NT_MAX_STATES],
      cout[RT_CU_NT_MAX_STATES * (RT_CU_NT_MAX_STATES + 1)];
  s->NF[RT_CU_NF_XSEL] = xsel;
  if (launch(s, RT_CU_NT_K_DELAY, r->B * r->T)) return -1;
  for (int j = 0; j < s->m; j++) cin[j] = s->args[j];
  for (int k = 0; k < s->n; k++) {
    cin[s->m + k] = (RtDevPtr)s->NF[RT_CU_NF_P + k];
    if (nt->dense) cin[s->m + s->n + k] = (RtDevPtr)s->NF[RT_CU_NF_TG + k];
    cout[k] = (RtDevPtr)s->NF[RT_CU_NF_F + k];
  }
  for (int j = s->n; j < s->nout; j++)
    cout[j] = (RtDevPtr)s->NF[nt->dense ? RT_CU_NF_DF + j - s->n : RT_CU_NF_J + j - s->n];
  if (!nt->dense || !xsel) { /* the guess needs no J (its tangents are zero) */
    if (rt_cu_run_inst(r, s->st->inst, cin, cout, 0)) return -1;
  } else {
    /* J column by column: the step applied to each unit tangent. */
    for (int64_t col = 0; col < s->n * s->w; col++) {
      s->NF[RT_CU_NF_OP] = col;
      if (launch(s, RT_CU_NT_K_TANGENT, r->B * r->T) ||
          rt_cu_run_inst(r, s->st->inst, cin, cout, 0) || launch(s, RT_CU_NT_K_JCOL, r->B * r->T))
        return -1;
    }
  }
  if (!xsel) return 0;
  if (launch(s, RT_CU_NT_K_RESID, r->B)) return -1;
  return d2h(s, res, (RtDevPtr)s->NF[RT_CU_NF_RES], (size_t)r->B * sizeof *res);
}

/* Example b's steps from BAD[b] to its length by the step loop, for every
 * example whose flag is set: one evaluation of the step per token, over a
 * row per example. */
static int sequential(Solve *s, const int32_t *lens, const char *failed) {
  CuRun *r = s->r;
  const RtCuNewton *nt = s->nt;
  int64_t lo = INT64_MAX, hi = 0;
  for (int64_t b = 0; b < r->B; b++) {
    if (!failed[b]) continue;
    int64_t len = len_of(s, b, lens);
    s->bad[b] = s->firstbad[b] < len ? s->firstbad[b] : len;
    if (s->bad[b] < lo) lo = s->bad[b];
    if (len > hi) hi = len;
  }
  if (lo >= hi) return 0;
  if (put_flags(s, failed) ||
      h2d(s, (RtDevPtr)s->NF[RT_CU_NF_BAD], s->bad, (size_t)r->B * sizeof *s->bad))
    return -1;
  RtDevPtr cin[RT_CU_NT_MAX_INPUTS + 2 * RT_CU_NT_MAX_STATES],
      cout[RT_CU_NT_MAX_STATES * (RT_CU_NT_MAX_STATES + 1)];
  RtDevPtr tg = 0, extra = 0;
  int64_t Bw = r->B * s->w;
  /* A zero tangent per state (dense), and room for J's blocks or J TG. */
  if ((nt->dense && dalloc(s, (size_t)(s->n * Bw) * sizeof(float), &tg)) ||
      dalloc(s, (size_t)((s->nout - s->n) * Bw) * sizeof(float) + 4, &extra))
    return -1;
  for (int j = 0; j < s->m; j++) cin[j] = s->one_in[j] ? s->one_in[j] : s->args[j];
  for (int k = 0; k < s->n; k++) {
    cin[s->m + k] = (RtDevPtr)s->NF[RT_CU_NF_P1 + k];
    if (nt->dense) cin[s->m + s->n + k] = tg + (RtDevPtr)(k * Bw) * sizeof(float);
    cout[k] = (RtDevPtr)s->NF[RT_CU_NF_F1 + k];
  }
  for (int j = s->n; j < s->nout; j++)
    cout[j] = extra + (RtDevPtr)((j - s->n) * Bw) * sizeof(float);
  CuRun one = *r;
  one.T = 1;
  one.lengths = 0;
  for (int64_t tau = lo; tau < hi; tau++) {
    s->NF[RT_CU_NF_OP] = tau;
    if (launch(s, RT_CU_NT_K_GATHER, r->B) || rt_cu_run_inst(&one, s->st->inst, cin, cout, 0) ||
        launch(s, RT_CU_NT_K_SCATTER, r->B))
      return -1;
  }
  return 0;
}

/* Blocks for one thread per item. */
static int64_t blocks(int64_t items) {
  return (items + 127) / 128;
}

/* The new guess D from F and J at the guess: per example with J whole, per
 * element with its diagonal blocks, split in time where a thread per
 * element is too few (s->G segments). */
static int linear(Solve *s) {
  int64_t B = s->r->B, w = s->w;
  if (s->nt->dense) return launch(s, RT_CU_NT_K_DENSE, B);
  if (s->G > 1 && (launch(s, RT_CU_NT_K_SEG_REDUCE, blocks(B * s->G * w)) ||
                   launch(s, RT_CU_NT_K_SEG_CARRY, blocks(B * w))))
    return -1;
  return launch(s, RT_CU_NT_K_LINEAR, blocks(B * s->G * w));
}

/* What the solves did since the last reset, across threads. */
static RtCuNewtonStats tally;

static void add(int64_t *x, int64_t v) {
  __atomic_fetch_add(x, v, __ATOMIC_RELAXED);
}

void rt_cu_newton_stats(RtCuNewtonStats *out, int reset) {
  if (out) {
    out->solves = __atomic_load_n(&tally.solves, __ATOMIC_RELAXED);
    out->fallbacks = __atomic_load_n(&tally.fallbacks, __ATOMIC_RELAXED);
    out->damped = __atomic_load_n(&tally.damped, __ATOMIC_RELAXED);
    out->iterations = __atomic_load_n(&tally.iterations, __ATOMIC_RELAXED);
    out->max_iter = __atomic_load_n(&tally.max_iter, __ATOMIC_RELAXED);
    out->fallback_steps = __atomic_load_n(&tally.fallback_steps, __ATOMIC_RELAXED);
  }
  if (reset) {
    __atomic_store_n(&tally.solves, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.fallbacks, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.damped, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.iterations, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.max_iter, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.fallback_steps, 0, __ATOMIC_RELAXED);
  }
}

/* The solve's outcome per example into the tally. */
static void count(const Solve *s, const int32_t *lens, const int32_t *iters, int64_t damped) {
  add(&tally.damped, damped);
  for (int64_t b = 0; b < s->r->B; b++) {
    int64_t len = len_of(s, b, lens);
    if (len == 0) continue;
    add(&tally.solves, 1);
    if (s->done[b] == 1) {
      int32_t it = iters[b];
      add(&tally.iterations, it);
      int32_t seen = __atomic_load_n(&tally.max_iter, __ATOMIC_RELAXED);
      while (it > seen && !__atomic_compare_exchange_n(&tally.max_iter, &seen, it, 1,
                                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      }
    } else {
      add(&tally.fallbacks, 1);
      add(&tally.fallback_steps, len - (s->firstbad[b] < len ? s->firstbad[b] : len));
    }
  }
}

/* The iteration (the file's comment), into H. */
static int iterate(Solve *s, const int32_t *lens) {
  CuRun *r = s->r;
  int64_t B = r->B;
  const RtCuNewton *nt = s->nt;
  if (evaluate(s, 0, NULL)) return -1;
  for (int k = 0; k < s->n; k++)
    if (r->d->copy(r->d->ctx, r->d->stream, (RtDevPtr)s->NF[RT_CU_NF_H + k],
                   (RtDevPtr)s->NF[RT_CU_NF_F + k], (size_t)s->BTw * sizeof(float), RT_CU_D2D,
                   r->err))
      return -1;
  if (evaluate(s, 1, s->res)) return -1;
  for (int64_t b = 0; b < B; b++) {
    /* 1: converged (or empty), 2: failed, 0: iterating */
    s->done[b] = len_of(s, b, lens) == 0 ? 1 : isfinite(s->res[b]) ? 0 : 2;
    s->firstbad[b] = 0;
    s->iters[b] = 0;
  }
  int64_t damped = 0;
  for (int it = 1; it <= nt->max_iter; it++) {
    int active = 0;
    for (int64_t b = 0; b < B; b++) s->pending[b] = !s->done[b];
    if (put_flags(s, s->pending) || linear(s) || launch(s, RT_CU_NT_K_TEST, B) ||
        d2h(s, s->errs, (RtDevPtr)s->NF[RT_CU_NF_RES], (size_t)B * sizeof *s->errs) ||
        d2h(s, s->bad, (RtDevPtr)s->NF[RT_CU_NF_BAD], (size_t)B * sizeof *s->bad))
      return -1;
    for (int64_t b = 0; b < B; b++) {
      int iterating = s->pending[b];
      s->pending[b] = s->took[b] = 0;
      if (!iterating) continue;
      s->iters[b] = it;
      s->firstbad[b] = s->bad[b];
      if (s->errs[b] <= 1) { /* the new guess is the result */
        s->took[b] = 1;
        s->done[b] = 1;
      } else if (!isfinite(s->errs[b])) {
        s->done[b] = 2;
      } else {
        s->pending[b] = 1;
        s->lam[b] = 1;
        active = 1;
      }
    }
    if (rows(s, ROWS_TAKE_D, s->took)) return -1;
    if (!active) break;
    if (rows(s, ROWS_STEP, s->pending)) return -1;
    /* Each example at its candidate, H + lam D while its step is pending
     * and H otherwise, until every pending step is taken. */
    for (int h = 0; active; h++) {
      if (rows(s, ROWS_CANDIDATE, s->pending) || evaluate(s, 2, s->cres)) return -1;
      active = 0;
      for (int64_t b = 0; b < B; b++) {
        s->took[b] = 0;
        if (!s->pending[b]) continue;
        if ((isfinite(s->cres[b]) && s->cres[b] <= s->res[b]) || h == HALVINGS) {
          s->took[b] = 1;
          s->res[b] = s->cres[b];
          if (!isfinite(s->cres[b])) s->done[b] = 2;
        } else {
          s->lam[b] *= 0.5f;
          damped++;
          active = 1;
        }
      }
      if (rows(s, ROWS_TAKE_C, s->took)) return -1;
      for (int64_t b = 0; b < B; b++)
        if (s->took[b]) s->pending[b] = 0;
    }
  }
  /* What did not converge runs as the step loop from the first step that
   * failed the last test (the steps before it passed). */
  count(s, lens, s->iters, damped);
  int any = 0;
  for (int64_t b = 0; b < B; b++) {
    s->took[b] = s->done[b] != 1 && len_of(s, b, lens) > 0;
    any |= s->took[b];
  }
  return any ? sequential(s, lens, s->took) : 0;
}

int rt_cu_newton(CuRun *r, const RtCuStep *st, const RtDevPtr *args, const RtDevPtr *outs,
                 const RtDevPtr *h0, int rev) {
  const RtCuNewton *nt = st->newton;
  const RtCuInst *step = &r->p->insts[st->inst];
  int64_t B = r->B, T = r->T;
  if (B == 0 || T == 0) return 0;
  Solve s;
  memset(&s, 0, sizeof s);
  s.r = r;
  s.st = st;
  s.nt = nt;
  s.n = nt->n;
  s.m = step->ninputs - nt->n * (nt->dense ? 2 : 1);
  s.nout = step->noutputs;
  s.w = nt->w;
  s.BTw = B * T * nt->w;
  s.args = args;
  int64_t nw = s.n * s.w;
  if (s.nout != s.n + (nt->dense ? s.n : s.n * s.n)) {
    snprintf(r->err->msg, sizeof r->err->msg,
             "a Newton step with %d outputs for %d states (%s Jacobian)", s.nout, s.n,
             nt->dense ? "a dense" : "a diagonal");
    return -1;
  }
  int ng = 0;
  for (int j = 0; j < s.m; j++) ng += nt->in_rows[j] == RT_CU_ROWS_BT;
  s.nslots = RT_CU_NF_G + 3 * ng;
  s.NF = calloc((size_t)s.nslots, sizeof *s.NF);
  int32_t *lens = r->lengths ? malloc((size_t)B * sizeof *lens) : NULL;
  /* per example: bad, firstbad; lam, res, cres, errs; flag, iters; done, pending, took */
  char *host = malloc((size_t)B * (2 * 8 + 4 * 4 + 2 * 4 + 3));
  int rc = -1;
  if (!s.NF || !host || (r->lengths && !lens)) {
    snprintf(r->err->msg, sizeof r->err->msg, "out of memory for a Newton solve");
    goto done;
  }
  s.bad = (int64_t *)host;
  s.firstbad = s.bad + B;
  s.lam = (float *)(s.firstbad + B);
  s.res = s.lam + B;
  s.cres = s.res + B;
  s.errs = s.cres + B;
  s.flag = (int32_t *)(s.errs + B);
  s.iters = s.flag + B;
  s.done = (char *)(s.iters + B);
  s.pending = s.done + B;
  s.took = s.pending + B;
  if (lens && d2h(&s, lens, r->lengths, (size_t)B * sizeof *lens)) goto done;
  int64_t *NF = s.NF;
  NF[RT_CU_NF_B] = B;
  NF[RT_CU_NF_T] = T;
  NF[RT_CU_NF_REV] = rev;
  NF[RT_CU_NF_LENS] = (int64_t)r->lengths;
  NF[RT_CU_NF_N] = s.n;
  NF[RT_CU_NF_W] = s.w;
  double tol[2] = {nt->rtol, nt->atol};
  memcpy(&NF[RT_CU_NF_RTOL], &tol[0], sizeof tol[0]);
  memcpy(&NF[RT_CU_NF_ATOL], &tol[1], sizeof tol[1]);
  size_t seq = (size_t)s.BTw * sizeof(float), one = (size_t)(B * s.w) * sizeof(float);
  RtDevPtr p;
  if (dalloc(&s, (size_t)s.nslots * sizeof *NF, &s.frame) ||
      dalloc(&s, (size_t)B * sizeof(int32_t), &p))
    goto done;
  NF[RT_CU_NF_FLAG] = (int64_t)p;
  if (dalloc(&s, (size_t)B * sizeof(float), &p)) goto done;
  NF[RT_CU_NF_LAM] = (int64_t)p;
  if (dalloc(&s, (size_t)B * sizeof(float), &p)) goto done;
  NF[RT_CU_NF_RES] = (int64_t)p;
  if (dalloc(&s, (size_t)B * sizeof(int64_t), &p)) goto done;
  NF[RT_CU_NF_BAD] = (int64_t)p;
  /* Per state: F, P, D, C over the sequence, F and P for one step; H is the
   * caller's. One allocation each kind, sliced per state. */
  RtDevPtr f, pp, dd, cc, f1, p1, jj, tg = 0, df = 0;
  if (dalloc(&s, seq * s.n, &f) || dalloc(&s, seq * s.n, &pp) || dalloc(&s, seq * s.n, &dd) ||
      dalloc(&s, seq * s.n, &cc) || dalloc(&s, one * s.n, &f1) || dalloc(&s, one * s.n, &p1) ||
      dalloc(&s, nt->dense ? seq * (size_t)(nw * s.n) : seq * (size_t)(s.n * s.n), &jj) ||
      (nt->dense && (dalloc(&s, seq * s.n, &tg) || dalloc(&s, seq * s.n, &df))))
    goto done;
  for (int k = 0; k < s.n; k++) {
    NF[RT_CU_NF_H + k] = (int64_t)outs[k];
    NF[RT_CU_NF_F + k] = (int64_t)(f + k * seq);
    NF[RT_CU_NF_P + k] = (int64_t)(pp + k * seq);
    NF[RT_CU_NF_D + k] = (int64_t)(dd + k * seq);
    NF[RT_CU_NF_C + k] = (int64_t)(cc + k * seq);
    NF[RT_CU_NF_H0 + k] = (int64_t)h0[k];
    NF[RT_CU_NF_H0S + k] = nt->h0_per_example[k] ? s.w : 0;
    NF[RT_CU_NF_F1 + k] = (int64_t)(f1 + k * one);
    NF[RT_CU_NF_P1 + k] = (int64_t)(p1 + k * one);
    if (nt->dense) {
      NF[RT_CU_NF_TG + k] = (int64_t)(tg + k * seq);
      NF[RT_CU_NF_DF + k] = (int64_t)(df + k * seq);
    }
  }
  /* The linear recurrence split in time where a thread per element is too
   * few for a device (RT_CU_SPLIT_*: the fused scans' rule). */
  s.G = 1;
  if (!nt->dense) {
    int64_t want = (RT_CU_SPLIT_THREADS + B * s.w - 1) / (B * s.w),
            most = (T + RT_CU_SPLIT_STEPS - 1) / RT_CU_SPLIT_STEPS;
    s.G = want < most ? want : most;
    if (s.G < 1) s.G = 1;
  }
  NF[RT_CU_NF_NSEG] = s.G;
  if (s.G > 1) {
    RtDevPtr seg;
    if (dalloc(&s, (size_t)(B * s.G * s.w * (s.n * s.n + 2 * s.n)) * sizeof(float), &seg))
      goto done;
    NF[RT_CU_NF_SEG] = (int64_t)seg;
  }
  if (nt->dense)
    NF[RT_CU_NF_J] = (int64_t)jj;
  else
    for (int j = 0; j < s.n * s.n; j++) NF[RT_CU_NF_J + j] = (int64_t)(jj + j * seq);
  /* The per-token arguments the fallback takes a step of. */
  NF[RT_CU_NF_NG] = ng;
  for (int j = 0, g = 0; j < s.m; j++) {
    if (nt->in_rows[j] != RT_CU_ROWS_BT) continue;
    if (dalloc(&s, (size_t)(B * nt->in_floats[j]) * sizeof(float) + 4, &s.one_in[j])) goto done;
    NF[RT_CU_NF_G + 3 * g] = (int64_t)args[j];
    NF[RT_CU_NF_G + 3 * g + 1] = (int64_t)s.one_in[j];
    NF[RT_CU_NF_G + 3 * g + 2] = nt->in_floats[j];
    g++;
  }
  rc = iterate(&s, lens);
done:
  for (int i = 0; i < s.nmem; i++) rt_cu_free(r, s.mem[i]);
  free(s.NF);
  free(lens);
  free(host);
  return rc;
}
