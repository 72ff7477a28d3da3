/* cpu_newton.c - a Newton layer's solve (rt_cpu_newton, rt_cpu.h): the
 * iteration the reference interpreter defines (ir/interp.c newton_solve),
 * over a batch, calling the compiled step for every token of every sequence
 * at once. docs/algorithms.md section 6 has the math.
 *
 * Layout: every per-token buffer has B*T rows of w floats, row b*T + p for
 * example b at physical position p; a layer run backwards (rev) takes its
 * logical step tau at p = len_b - 1 - tau. The solve keeps, per solved
 * state, the guess H, the step's values F, the previous values P it was
 * evaluated at, a candidate C and a step D (the new guess, then the step
 * from H to it), and the Jacobian's blocks J_kj: (4n + n^2) * B*T*w floats.
 *
 * Windows: past a memory budget (or when the caller asks), each sequence is
 * solved Tw logical steps at a time, window after window, each from the
 * last value of the one before; then those buffers have B*Tw rows (the
 * guess too, copied to the caller's outputs after each window) and a
 * window's rows are laid out as a sequence of its own steps would be, so
 * the passes below see a batch of B sequences of at most Tw steps. ext0
 * maps a row here to the caller's (its per-token inputs and outputs).
 *
 * The examples of the batch are solved together (one call of the step per
 * evaluation) but stop separately: an example that has converged, or failed,
 * is evaluated at its own result from then on, so the last evaluation's F and
 * J are always those of every example's current guess.
 */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define HALVINGS 4 /* a step is halved at most this many times */

typedef struct Solve {
  RtNewtonStep step;
  void *const *params;
  int64_t B, T, w;
  int n, m;
  const int32_t *lengths;
  int rev;
  float *const *outs; /* the caller's H_k */
  const float *h0[RT_NEWTON_MAX_STATES];
  float *H[RT_NEWTON_MAX_STATES]; /* the guess: the caller's outputs, or the window's */
  float *J[RT_NEWTON_MAX_STATES * RT_NEWTON_MAX_STATES];
  float *F[RT_NEWTON_MAX_STATES], *P[RT_NEWTON_MAX_STATES];
  float *C[RT_NEWTON_MAX_STATES], *D[RT_NEWTON_MAX_STATES];
  const int64_t *ext0; /* per example: its row in the caller's buffers less its row here */
  int dense;           /* the step gives J times tangents TG; Jd holds J whole, [rows, nw, nw] */
  float *TG[RT_NEWTON_MAX_STATES], *dF[RT_NEWTON_MAX_STATES], *Jd;
  float *diff;              /* dense: per example, nw floats (the recurrence's prev - P) */
  const int64_t *in_floats; /* per input of the caller's m: floats per row */
  const int32_t *in_kind;   /* and its layout (RT_NEWTON_PER_TOKEN, ...) */
  void **ins;               /* the step's inputs: the caller's m, then P */
  void **souts;             /* the step's outputs: F, then J */
  float *part;              /* per piece of work: its maximum (B * RT_CPU_MAX_THREADS) */
  int64_t *bad;             /* per piece of the recurrence: the first step failing the test */
  const char *active;       /* the examples a pass works on (NULL: every one) */
  int64_t t0, Tcall;        /* the caller's first step here and rows per example */
  int64_t site;             /* the call site's number in the warm store (cpu_warm.c) */
  int64_t G;                /* segments per example of the linear recurrence split in time */
  float *seg_M, *seg_start; /* per example and segment: M (seg_floats), its start (n*w) */
  float *seg_tmp;           /* dense: per example and segment, nw*nw + nw floats of scratch */
  float *seg_zero;          /* a zero start (n rows of w) */
} Solve;

static int64_t len_of(const Solve *s, int64_t b) {
  return s->lengths ? s->lengths[b] : s->T;
}

/* The physical row of logical step tau of example b. */
static int64_t row(const Solve *s, int64_t b, int64_t len, int64_t tau) {
  return b * s->T + (s->rev ? len - 1 - tau : tau);
}

/* Tokens per call of the step: the step keeps every value it computes for
 * each of its rows, so a call over one example's chunk of tokens keeps them
 * in cache (and the memory bounded) where a call over all B*T rows would
 * not; a few tens of KiB of each state-sized value per call. */
static int64_t chunk_tokens(const Solve *s) {
  int64_t tc = 32768 / s->w;
  return tc < 16 ? 16 : tc;
}

typedef struct EvalJob {
  Solve *s;
  int64_t tc, nchunks;
  int status; /* a failing call's */
} EvalJob;

/* One example's chunk of tokens through the step: its rows of every buffer
 * are contiguous, so the step sees a batch of one sequence of tc tokens. */
static void eval_item(void *ctx, int item) {
  EvalJob *job = ctx;
  Solve *s = job->s;
  int64_t b = item / job->nchunks, t0 = (item % job->nchunks) * job->tc;
  int64_t len = len_of(s, b);
  if (t0 >= len) return;
  int64_t n = len - t0 < job->tc ? len - t0 : job->tc, at = b * s->T + t0;
  void *in[RT_NEWTON_MAX_INPUTS + 2 * RT_NEWTON_MAX_STATES];
  void *out[RT_NEWTON_MAX_STATES * (RT_NEWTON_MAX_STATES + 1)];
  for (int i = 0; i < s->m; i++) {
    float *base = s->ins[i];
    in[i] = s->in_kind[i] == RT_NEWTON_PER_TOKEN     ? base + (at + s->ext0[b]) * s->in_floats[i]
            : s->in_kind[i] == RT_NEWTON_PER_EXAMPLE ? base + b * s->in_floats[i]
                                                     : base;
  }
  for (int k = 0; k < s->n; k++) in[s->m + k] = s->P[k] + at * s->w;
  for (int k = 0; s->dense && k < s->n; k++) in[s->m + s->n + k] = s->TG[k] + at * s->w;
  int nout = s->dense ? 2 * s->n : s->n + s->n * s->n;
  for (int j = 0; j < nout; j++) out[j] = (float *)s->souts[j] + at * s->w;
  int st = s->step(s->params, 1, n, in, NULL, NULL, out, NULL, 0);
  if (st) __atomic_store_n(&job->status, st, __ATOMIC_RELAXED);
}

static int eval_chunks(Solve *s) {
  EvalJob job = {s, chunk_tokens(s), 0, 0};
  job.nchunks = (s->T + job.tc - 1) / job.tc;
  int64_t items = s->B * job.nchunks;
  if (items > INT32_MAX) return 1;
  rt_cpu_parallel_for_nowait((int)items, eval_item, &job);
  return job.status;
}

/* ---- work split over the pool --------------------------------------------------- */

/* The elementwise passes over an example's rows (building P, residuals,
 * candidates) and the linear recurrence run on the pool: items are the
 * examples' pieces, of rows (logical steps [tau0, tau1)) or of a row's
 * elements [e0, e1) (the recurrence is elementwise across them). With
 * fewer examples than threads an example splits; a piece is at least
 * PIECE_FLOATS of work, so a small solve stays on one thread. */
#ifndef PIECE_FLOATS
#define PIECE_FLOATS 16384
#endif

typedef struct Pieces {
  Solve *s;
  int64_t per; /* pieces per example */
  void (*fn)(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int piece);
  void *arg;
  int by_elements; /* pieces of a row's elements, not of its steps */
} Pieces;

static void piece_item(void *ctx, int item) {
  Pieces *pc = ctx;
  Solve *s = pc->s;
  int64_t b = item / pc->per, g = item % pc->per;
  int64_t n = pc->by_elements ? s->w : len_of(s, b);
  int64_t size = (n + pc->per - 1) / pc->per;
  if (pc->by_elements) size = (size + 15) / 16 * 16; /* whole vectors */
  int64_t lo = g * size, hi = lo + size < n ? lo + size : n;
  if (lo < hi && (!s->active || s->active[b])) pc->fn(s, b, lo, hi, pc->arg, item);
}

/* fn over every example's rows (or elements), split as above; items
 * receive their index (< pieces_of(s) * B) for per-item results. */
static int64_t pieces_of(const Solve *s, int by_elements) {
  int threads = rt_cpu_in_parallel() ? 1 : rt_cpu_get_num_threads();
  if (threads <= 1 || s->B >= threads) return 1;
  int64_t per = (threads + s->B - 1) / s->B;
  int64_t work = by_elements ? s->w * s->T : s->T * s->w; /* floats of an example */
  int64_t most = by_elements ? s->w / 16 : s->T;
  if (per > work / PIECE_FLOATS) per = work / PIECE_FLOATS;
  if (per > most) per = most;
  return per < 1 ? 1 : per;
}

static void run_pieces(Solve *s, int by_elements,
                       void (*fn)(Solve *, int64_t, int64_t, int64_t, void *, int), void *arg) {
  Pieces pc = {s, pieces_of(s, by_elements), fn, arg, by_elements};
  int64_t items = s->B * pc.per;
  if (items <= 1) {
    for (int64_t i = 0; i < items; i++) piece_item(&pc, (int)i);
    return;
  }
  rt_cpu_parallel_for_nowait((int)items, piece_item, &pc);
}

/* A per-item maximum (residuals, relative steps), NaN as infinite. */
static float max_of(const float *v, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; i++) m = v[i] != v[i] ? INFINITY : v[i] > m ? v[i] : m;
  return m;
}

typedef struct EvalArg {
  float *const *X;
  float *part; /* per item: the largest |X - F| of its rows */
} EvalArg;

static void build_p(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int item) {
  (void)item;
  float *const *X = ((EvalArg *)arg)->X;
  int64_t w = s->w, len = len_of(s, b);
  for (int k = 0; k < s->n; k++)
    for (int64_t tau = lo; tau < hi; tau++) {
      float *p = s->P[k] + row(s, b, len, tau) * w;
      if (!X) {
        memset(p, 0, (size_t)w * sizeof(float));
        continue;
      }
      const float *prev = tau ? X[k] + row(s, b, len, tau - 1) * w : s->h0[k] + b * w;
      memcpy(p, prev, (size_t)w * sizeof(float));
    }
}

static void residual(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int item) {
  EvalArg *ea = arg;
  int64_t w = s->w, len = len_of(s, b);
  float r = 0;
  int nan = 0;
  for (int k = 0; k < s->n; k++)
    for (int64_t tau = lo; tau < hi; tau++) {
      int64_t at = row(s, b, len, tau) * w;
      const float *x = ea->X[k] + at, *f = s->F[k] + at;
      for (int64_t i = 0; i < w; i++) {
        float d = fabsf(x[i] - f[i]);
        nan |= d != d;
        r = d > r ? d : r;
      }
    }
  ea->part[item] = nan ? INFINITY : r;
}

/* Dense: the tangents of column c (the unit vector e_c of every row), or
 * the step's J e_c into column c of J. */
typedef struct ColArg {
  int64_t c;
  int scatter;
} ColArg;

static void column_pass(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int item) {
  (void)item;
  const ColArg *ca = arg;
  int64_t w = s->w, nw = s->n * w, len = len_of(s, b);
  for (int64_t tau = lo; tau < hi; tau++) {
    int64_t r = row(s, b, len, tau);
    for (int k = 0; k < s->n; k++) {
      if (ca->scatter) {
        float *J = s->Jd + r * nw * nw + k * w * nw + ca->c;
        const float *d = s->dF[k] + r * w;
        for (int64_t i = 0; i < w; i++) J[i * nw] = d[i];
      } else {
        float *t = s->TG[k] + r * w;
        memset(t, 0, (size_t)w * sizeof(float));
        if (ca->c / w == k) t[ca->c % w] = 1;
      }
    }
  }
}

/* F and J at P = delay(X, h0) for every example (X == NULL: P = 0); then,
 * per example, the residual max |X - F| (NaN counts as infinite). A dense
 * J takes a call of the step per column. */
static int evaluate(Solve *s, float *const *X, float *resid) {
  EvalArg ea = {X, s->part};
  run_pieces(s, 0, build_p, &ea);
  int st = 0;
  /* The guess (X NULL) needs no J. */
  for (int64_t c = 0; c < (s->dense && X ? s->n * s->w : 1) && !st; c++) {
    ColArg ca = {c, 0};
    if (s->dense && X) run_pieces(s, 0, column_pass, &ca);
    st = eval_chunks(s);
    ca.scatter = 1;
    if (s->dense && X && !st) run_pieces(s, 0, column_pass, &ca);
  }
  if (st) return st;
  if (!X) return 0;
  int64_t per = pieces_of(s, 0);
  for (int64_t i = 0; i < s->B * per; i++) ea.part[i] = 0;
  run_pieces(s, 0, residual, &ea);
  for (int64_t b = 0; b < s->B; b++) resid[b] = max_of(ea.part + b * per, per);
  return 0;
}

typedef struct StepArg {
  float rtol, atol;
  float *part; /* per item: its largest step relative to the tolerance */
} StepArg;

/* The largest of err and the steps D - H of elements [e0, e1) of the row at
 * float `at` relative to the tolerance (*nan set by a NaN). */
static float test_row(const Solve *s, int64_t at, int64_t e0, int64_t e1, float rtol, float atol,
                      float err, int *nan) {
  for (int k = 0; k < s->n; k++) {
    const float *d = s->D[k] + at, *h = s->H[k] + at;
    for (int64_t i = e0; i < e1; i++) {
      float e = fabsf(d[i] - h[i]) / (atol + rtol * fabsf(d[i]));
      *nan |= e != e;
      err = e > err ? e : err;
    }
  }
  return err;
}

/* Steps [t0, t1) of example b's linear recurrence, elements [e0, e1), into
 * D: N[tau] = F + sum_j J_kj (N_j[tau-1] - P_j), the value before t0 being
 * `start` (n rows of w floats) when given, else N[t0-1] (h0 at step 0).
 * The blocks are elementwise, so elements are independent; the loops over
 * elements are innermost, so they vectorize. With M (n*n rows of w floats,
 * the identity on entry) the product J[t1-1] ... J[t0] of the blocks is
 * accumulated into it: the steps' map from their start to their end is
 * N = M start + N0, N0 their values from a zero start. With sa the steps
 * are tested: their largest step relative to the tolerance into
 * sa->part[item], the first that fails into s->bad[item]. */
static void recur(Solve *s, int64_t b, int64_t e0, int64_t e1, int64_t t0, int64_t t1,
                  const float *start, float *M, StepArg *sa, int item) {
  int n = s->n;
  int64_t w = s->w, len = len_of(s, b);
  float err = 0;
  int nan = 0;
  int64_t bad = len;
  for (int64_t tau = t0; tau < t1; tau++) {
    int64_t at = row(s, b, len, tau) * w, pv = tau ? row(s, b, len, tau - 1) * w : -1;
    for (int k = 0; k < n; k++) {
      float *d = s->D[k] + at;
      const float *f = s->F[k] + at;
      for (int64_t i = e0; i < e1; i++) d[i] = f[i];
      for (int j = 0; j < n; j++) {
        const float *J = s->J[k * n + j] + at, *p = s->P[j] + at;
        const float *prev = tau == t0 && start ? start + j * w
                            : pv >= 0          ? s->D[j] + pv
                                               : s->h0[j] + b * w;
        for (int64_t i = e0; i < e1; i++) d[i] += J[i] * (prev[i] - p[i]);
      }
    }
    if (M && n == 1) {
      const float *J = s->J[0] + at;
      for (int64_t i = e0; i < e1; i++) M[i] *= J[i];
    } else if (M) {
      for (int j = 0; j < n; j++)
        for (int64_t i = e0; i < e1; i++) {
          float c[RT_NEWTON_MAX_STATES];
          for (int k = 0; k < n; k++) {
            c[k] = 0;
            for (int l = 0; l < n; l++) c[k] += s->J[k * n + l][at + i] * M[(l * n + j) * w + i];
          }
          for (int k = 0; k < n; k++) M[(k * n + j) * w + i] = c[k];
        }
    }
    if (sa) {
      err = test_row(s, at, e0, e1, sa->rtol, sa->atol, err, &nan);
      if (bad == len && (nan || err > 1)) bad = tau;
    }
  }
  if (sa) {
    sa->part[item] = nan ? INFINITY : err;
    s->bad[item] = bad;
  }
}

/* Elements [e0, e1) of example b's new guess into D, all its steps in
 * order, and their test. */
static void linear_piece(Solve *s, int64_t b, int64_t e0, int64_t e1, void *arg, int item) {
  recur(s, b, e0, e1, 0, len_of(s, b), NULL, NULL, arg, item);
}

/* Dense: steps [t0, t1) of example b's new guess, N[tau] = F + J (N[tau-1]
 * - P) with J whole (every element of a step reads every element of the
 * step before, so an example is not split by elements), from `start` or
 * N[t0-1] as recur's; v: nw floats of scratch. With M (nw*nw, the identity
 * on entry, and tmp as large) the product of the Jacobians is accumulated,
 * with sa the steps tested, as recur's. */
static void dense_recur(Solve *s, int64_t b, int64_t t0, int64_t t1, const float *start, float *M,
                        float *tmp, float *v, StepArg *sa, int item) {
  int n = s->n;
  int64_t w = s->w, nw = n * w, len = len_of(s, b);
  float err = 0;
  int nan = 0;
  int64_t bad = len;
  for (int64_t tau = t0; tau < t1; tau++) {
    int64_t r = row(s, b, len, tau), at = r * w, pv = tau ? row(s, b, len, tau - 1) * w : -1;
    for (int j = 0; j < n; j++) {
      const float *prev = tau == t0 && start ? start + j * w
                          : pv >= 0          ? s->D[j] + pv
                                             : s->h0[j] + b * w;
      const float *p = s->P[j] + at;
      for (int64_t c = 0; c < w; c++) v[j * w + c] = prev[c] - p[c];
    }
    const float *Jr = s->Jd + r * nw * nw;
    for (int k = 0; k < n; k++) {
      float *d = s->D[k] + at;
      const float *f = s->F[k] + at, *J = Jr + k * w * nw;
      for (int64_t i = 0; i < w; i++) {
        float acc = 0;
        for (int64_t c = 0; c < nw; c++) acc += J[i * nw + c] * v[c];
        d[i] = f[i] + acc;
      }
    }
    if (M) { /* M = J M */
      for (int64_t i = 0; i < nw; i++) {
        float *t = tmp + i * nw;
        for (int64_t c = 0; c < nw; c++) t[c] = 0;
        for (int64_t l = 0; l < nw; l++) {
          float a = Jr[i * nw + l];
          const float *m = M + l * nw;
          for (int64_t c = 0; c < nw; c++) t[c] += a * m[c];
        }
      }
      memcpy(M, tmp, sizeof(float) * (size_t)(nw * nw));
    }
    if (sa) {
      err = test_row(s, at, 0, w, sa->rtol, sa->atol, err, &nan);
      if (bad == len && (nan || err > 1)) bad = tau;
    }
  }
  if (sa) {
    sa->part[item] = nan ? INFINITY : err;
    s->bad[item] = bad;
  }
}

/* Dense: example b's new guess, all its steps in order, and their test. */
static void dense_piece(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int item) {
  (void)lo, (void)hi;
  dense_recur(s, b, 0, len_of(s, b), NULL, NULL, NULL, s->diff + b * s->n * s->w, arg, item);
}

/* ---- the linear recurrence split in time ------------------------------------------ */

/* A narrow state (too few elements to split) of fewer examples than threads
 * splits each example's steps into G segments instead, a scan in three
 * passes: (1) every segment but the first runs from a zero start, keeping
 * the product M of its Jacobians (its values are then its part N0 of the
 * affine map from its start), while the first runs from h0; (2) per
 * example in order, each segment's start is the previous one's end, M
 * times its start plus its N0; (3) every segment but the first runs again
 * from its start, and is tested. That is about 2.3 times the work of the
 * recurrence in order (3 with 2x2 blocks), so it pays from 3 threads per
 * example; a dense Jacobian's products cost nw times its recurrence, so
 * it splits only with more than nw + 2 threads per example
 * (docs/algorithms.md section 6). */
#define MIN_SEGMENT 256 /* steps */

static int64_t time_segments(const Solve *s) {
  int threads = rt_cpu_in_parallel() ? 1 : rt_cpu_get_num_threads();
  int64_t nw = s->n * s->w;
  if (s->B < 1 || threads < (s->dense ? nw + 2 : 3) * s->B || (!s->dense && pieces_of(s, 1) > 1))
    return 1;
  int64_t g = threads / s->B;
  return g > RT_CPU_MAX_THREADS ? RT_CPU_MAX_THREADS : g;
}

/* Example b's segments: G, fewer when it is short. */
static int64_t segments_of(const Solve *s, int64_t b) {
  int64_t g = len_of(s, b) / MIN_SEGMENT;
  return g < 1 ? 1 : g < s->G ? g : s->G;
}

/* Floats of a segment's product of Jacobians: n*n blocks of w, or J whole. */
static int64_t seg_floats(const Solve *s) {
  int64_t nw = s->n * s->w;
  return s->dense ? nw * nw : s->n * nw;
}

typedef struct SplitArg {
  Solve *s;
  StepArg *sa;
  int pass; /* 1 or 3 */
} SplitArg;

static void split_item(void *ctx, int item) {
  SplitArg *a = ctx;
  Solve *s = a->s;
  int64_t G = s->G, b = item / G, g = item % G, n = s->n, w = s->w;
  int64_t len = len_of(s, b), gb = segments_of(s, b);
  if (g >= gb || len == 0 || (s->active && !s->active[b])) return;
  int64_t lo = len * g / gb, hi = len * (g + 1) / gb, nw = n * w, mf = seg_floats(s);
  float *M = s->seg_M + (b * G + g) * mf, *start = s->seg_start + (b * G + g) * nw;
  float *tmp = s->dense ? s->seg_tmp + (b * G + g) * (nw * nw + nw) : NULL;
  float *v = tmp ? tmp + nw * nw : NULL;
  if (a->pass == 1 && g > 0) { /* M = I */
    memset(M, 0, sizeof(float) * (size_t)mf);
    for (int64_t r = 0; r < (s->dense ? nw : n); r++)
      for (int64_t i = 0; i < (s->dense ? 1 : w); i++)
        M[s->dense ? r * nw + r : (r * n + r) * w + i] = 1;
  }
  const float *from = a->pass == 1 ? (g ? s->seg_zero : NULL) : start;
  float *prod = a->pass == 1 && g ? M : NULL;
  StepArg *sa = a->pass == 1 && g ? NULL : a->sa;
  if (a->pass == 3 && g == 0) return;
  if (s->dense)
    dense_recur(s, b, lo, hi, from, prod, tmp, v, sa, item);
  else
    recur(s, b, 0, w, lo, hi, from, prod, sa, item);
}

/* Pass 2: each segment's start from the end of the one before. */
static void split_starts(Solve *s, int64_t b) {
  int64_t G = s->G, n = s->n, w = s->w, nw = n * w, len = len_of(s, b), gb = segments_of(s, b);
  for (int64_t g = 1; g < gb; g++) {
    int64_t end = row(s, b, len, len * g / gb - 1) * w; /* the end of segment g - 1 */
    float *start = s->seg_start + (b * G + g) * nw;
    const float *prev = s->seg_start + (b * G + g - 1) * nw;
    const float *M = s->seg_M + (b * G + g - 1) * seg_floats(s);
    for (int64_t k = 0; k < n; k++)
      for (int64_t i = 0; i < w; i++) {
        float v = s->D[k][end + i]; /* segment 0's value, or the others' N0 */
        if (g > 1 && s->dense)
          for (int64_t c = 0; c < nw; c++) v += M[(k * w + i) * nw + c] * prev[c];
        else if (g > 1)
          for (int64_t j = 0; j < n; j++) v += M[(k * n + j) * w + i] * prev[j * w + i];
        start[k * w + i] = v;
      }
  }
}

static void linear_split(Solve *s, StepArg *sa) {
  SplitArg a = {s, sa, 1};
  int items = (int)(s->B * s->G);
  rt_cpu_parallel_for_nowait(items, split_item, &a);
  for (int64_t b = 0; b < s->B; b++)
    if (!s->active || s->active[b]) split_starts(s, b);
  a.pass = 3;
  rt_cpu_parallel_for_nowait(items, split_item, &a);
}

/* The new guess of every example still iterating (active[b]) into D, and
 * per example its largest relative step into err and the first step whose
 * test fails into bad (its length if none). */
static void linear_step(Solve *s, const char *active, float rtol, float atol, float *err,
                        int64_t *bad) {
  StepArg sa = {rtol, atol, s->part};
  int64_t per = s->G > 1 ? s->G : s->dense ? 1 : pieces_of(s, 1);
  for (int64_t i = 0; i < s->B * per; i++) s->part[i] = 0, s->bad[i] = INT64_MAX;
  s->active = active;
  if (s->G > 1) {
    linear_split(s, &sa);
  } else if (s->dense) {
    Pieces pc = {s, 1, dense_piece, &sa, 0};
    if (s->B <= 1)
      for (int64_t i = 0; i < s->B; i++) piece_item(&pc, (int)i);
    else
      rt_cpu_parallel_for_nowait((int)s->B, piece_item, &pc);
  } else {
    run_pieces(s, 1, linear_piece, &sa);
  }
  s->active = NULL;
  for (int64_t b = 0; b < s->B; b++) {
    if (!active[b]) continue;
    err[b] = max_of(s->part + b * per, per);
    bad[b] = len_of(s, b);
    for (int64_t i = 0; i < per; i++)
      if (s->bad[b * per + i] < bad[b]) bad[b] = s->bad[b * per + i];
  }
}

/* Row passes between iterations, per example as flags[b] says. */
enum { ROWS_TAKE_D, ROWS_STEP, ROWS_CANDIDATE, ROWS_TAKE_C, ROWS_STORE };
typedef struct RowsArg {
  int op;
  const char *flag; /* the examples the op changes (CANDIDATE: those whose step is pending) */
  const float *lam;
} RowsArg;

static void rows_pass(Solve *s, int64_t b, int64_t lo, int64_t hi, void *arg, int item) {
  (void)item;
  RowsArg *ra = arg;
  int64_t w = s->w, len = len_of(s, b);
  if (ra->op != ROWS_CANDIDATE && !ra->flag[b]) return;
  for (int k = 0; k < s->n; k++)
    for (int64_t tau = lo; tau < hi; tau++) {
      int64_t at = row(s, b, len, tau) * w;
      float *h = s->H[k] + at, *d = s->D[k] + at, *c = s->C[k] + at;
      switch (ra->op) {
      case ROWS_TAKE_D: /* H = D: the new guess is the result */
        memcpy(h, d, (size_t)w * sizeof(float));
        break;
      case ROWS_STEP: /* D = D - H: the step */
        for (int64_t i = 0; i < w; i++) d[i] -= h[i];
        break;
      case ROWS_CANDIDATE: /* C = H + lam D while the step is pending, else H */
        if (ra->flag[b]) {
          float l = ra->lam[b];
          for (int64_t i = 0; i < w; i++) c[i] = h[i] + l * d[i];
        } else {
          memcpy(c, h, (size_t)w * sizeof(float));
        }
        break;
      case ROWS_TAKE_C: /* H = C: the candidate is taken */
        memcpy(h, c, (size_t)w * sizeof(float));
        break;
      case ROWS_STORE: /* the window's H into the caller's outputs */
        memcpy(s->outs[k] + at + s->ext0[b] * w, h, (size_t)w * sizeof(float));
        break;
      }
    }
}

static void rows(Solve *s, int op, const char *flag, const float *lam) {
  RowsArg ra = {op, flag, lam};
  run_pieces(s, 0, rows_pass, &ra);
}

/* Example b's steps [t0, len) by the step loop, from its values before t0:
 * one call of the step per token. */
static int sequential(Solve *s, int64_t b, int64_t t0, float *const *one_out) {
  int n = s->n, m = s->m;
  int64_t w = s->w, len = len_of(s, b);
  void *one_in[RT_NEWTON_MAX_INPUTS + 2 * RT_NEWTON_MAX_STATES];
  for (int64_t tau = t0; tau < len; tau++) {
    int64_t r = row(s, b, len, tau);
    for (int i = 0; i < m; i++) {
      float *base = s->ins[i];
      int64_t at = s->in_kind[i] == RT_NEWTON_PER_TOKEN     ? r + s->ext0[b]
                   : s->in_kind[i] == RT_NEWTON_PER_EXAMPLE ? b
                                                            : 0;
      one_in[i] = base + at * s->in_floats[i];
    }
    for (int k = 0; k < n; k++)
      one_in[m + k] = tau ? s->H[k] + row(s, b, len, tau - 1) * w : (float *)s->h0[k] + b * w;
    for (int k = 0; s->dense && k < n; k++) one_in[m + n + k] = s->TG[k]; /* any tangent */
    int st = s->step(s->params, 1, 1, one_in, NULL, NULL, (void *const *)one_out, NULL, 0);
    if (st) return st;
    for (int k = 0; k < n; k++) memcpy(s->H[k] + r * w, one_out[k], (size_t)w * sizeof(float));
  }
  return 0;
}

/* What the solves did since the last reset, across every thread (a batch
 * may be split over the pool, each slice solving on its worker). */
static RtNewtonStats tally;

static void add(int64_t *x, int64_t v) {
  __atomic_fetch_add(x, v, __ATOMIC_RELAXED);
}

void rt_cpu_newton_stats(RtNewtonStats *out, int reset) {
  if (out) {
    out->solves = __atomic_load_n(&tally.solves, __ATOMIC_RELAXED);
    out->fallbacks = __atomic_load_n(&tally.fallbacks, __ATOMIC_RELAXED);
    out->damped = __atomic_load_n(&tally.damped, __ATOMIC_RELAXED);
    out->iterations = __atomic_load_n(&tally.iterations, __ATOMIC_RELAXED);
    out->fallback_steps = __atomic_load_n(&tally.fallback_steps, __ATOMIC_RELAXED);
    out->max_iter = __atomic_load_n(&tally.max_iter, __ATOMIC_RELAXED);
    out->warm = __atomic_load_n(&tally.warm, __ATOMIC_RELAXED);
  }
  if (reset) {
    __atomic_store_n(&tally.solves, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.fallbacks, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.damped, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.iterations, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.fallback_steps, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.max_iter, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tally.warm, 0, __ATOMIC_RELAXED);
  }
}

/* ---- warm starts ----------------------------------------------------------------- */

/* Example b's rows of the window in the store's trajectory v: the first
 * one's index, or -1 when they are not all inside it. The window's
 * physical rows [b*T, b*T + len) are the caller's rows from b*T + ext0[b],
 * i.e. positions from t0 + b*T + ext0[b] - b*Tcall of the sequence. */
static int64_t store_row(const Solve *s, const RtWarmView *v, int64_t b, int64_t len) {
  int64_t g0 = s->t0 + b * s->T + s->ext0[b] - b * s->Tcall;
  if (g0 < 0 || g0 + len > v->T || v->b0 + b >= v->B) return -1;
  return (v->b0 + b) * v->T + g0;
}

/* The guess of every example whose window the store holds whole (every
 * row written) into H, warm[b] set; returns how many examples with steps
 * are left cold. */
static int64_t warm_guess(Solve *s, char *warm) {
  RtWarmView v;
  int open = rt_cpu_warm_open(s->site, s->n * s->w, &v);
  int64_t cold = 0, w = s->w;
  for (int64_t b = 0; b < s->B; b++) {
    int64_t len = len_of(s, b), at = open ? store_row(s, &v, b, len) : -1;
    warm[b] = at >= 0 && len > 0;
    for (int64_t p = 0; warm[b] && p < len; p++) warm[b] = v.valid[at + p] != 0;
    for (int64_t p = 0; warm[b] && p < len; p++)
      for (int k = 0; k < s->n; k++)
        memcpy(s->H[k] + (b * s->T + p) * w, v.traj + (at + p) * v.nw + k * w,
               (size_t)w * sizeof(float));
    cold += len > 0 && !warm[b];
  }
  if (open) rt_cpu_warm_close(&v);
  return cold;
}

/* Every example's result of the window into the store, for the next call. */
static void warm_save(Solve *s) {
  RtWarmView v;
  if (!rt_cpu_warm_open(s->site, s->n * s->w, &v)) return;
  int64_t w = s->w;
  for (int64_t b = 0; b < s->B; b++) {
    int64_t len = len_of(s, b), at = store_row(s, &v, b, len);
    if (at < 0) continue;
    for (int64_t p = 0; p < len; p++) {
      for (int k = 0; k < s->n; k++)
        memcpy(v.traj + (at + p) * v.nw + k * w, s->H[k] + (b * s->T + p) * w,
               (size_t)w * sizeof(float));
      v.valid[at + p] = 1;
    }
  }
  rt_cpu_warm_close(&v);
}

/* Per example, what a window's iteration keeps. */
typedef struct Work {
  float *res, *cres, *lam,
      *errs; /* residuals of the guess and the candidate, step factor and size */
  int64_t *firstbad;
  int32_t *iters;
  char *done, *pending, *iterating, *took, *warm;
  float *const *one_out; /* one token's outputs (the fallback) */
} Work;

/* One window: every example's steps [0, len_of) from s->h0 into s->H. */
static int solve_window(Solve *s, Work *wk, float rtol, float atol, int32_t max_iter) {
  int64_t B = s->B;
  float *res = wk->res, *cres = wk->cres, *lam = wk->lam, *errs = wk->errs;
  char *done = wk->done, *pending = wk->pending, *iterating = wk->iterating, *took = wk->took;
  int64_t damped = 0;
  int rc;
  /* The guess: the store's trajectory (a warm start) where it holds the
   * example's whole window, F(x, 0) otherwise; then F and J at it. */
  int64_t cold = warm_guess(s, wk->warm);
  if (cold) {
    if ((rc = evaluate(s, NULL, res))) return rc;
    for (int64_t b = 0; b < B; b++)
      for (int k = 0; k < s->n && !wk->warm[b]; k++)
        memcpy(s->H[k] + b * s->T * s->w, s->F[k] + b * s->T * s->w,
               (size_t)(len_of(s, b) * s->w) * sizeof(float));
  }
  if ((rc = evaluate(s, s->H, res))) return rc;
  for (int64_t b = 0; b < B; b++) {
    /* 1: converged (or empty), 2: failed, 0: iterating */
    done[b] = len_of(s, b) == 0 ? 1 : isfinite(res[b]) ? 0 : 2;
    wk->iters[b] = 0;
    wk->firstbad[b] = 0;
  }
  for (int it = 1; it <= max_iter; it++) {
    int active = 0;
    for (int64_t b = 0; b < B; b++) iterating[b] = !done[b];
    linear_step(s, iterating, rtol, atol, errs, wk->firstbad);
    for (int64_t b = 0; b < B; b++) {
      pending[b] = took[b] = 0;
      if (done[b]) continue;
      wk->iters[b] = it;
      if (errs[b] <= 1) { /* the new guess is the result */
        took[b] = 1;
        done[b] = 1;
      } else if (!isfinite(errs[b])) {
        done[b] = 2;
      } else {
        pending[b] = 1;
        lam[b] = 1;
        active = 1;
      }
    }
    rows(s, ROWS_TAKE_D, took, NULL);
    if (!active) break;
    rows(s, ROWS_STEP, pending, NULL);
    /* Each example at its candidate, H + lam D while its step is pending
     * and H otherwise, until every pending step is taken. */
    for (int h = 0; active; h++) {
      rows(s, ROWS_CANDIDATE, pending, lam);
      if ((rc = evaluate(s, s->C, cres))) return rc;
      active = 0;
      for (int64_t b = 0; b < B; b++) {
        took[b] = 0;
        if (!pending[b]) continue;
        if ((isfinite(cres[b]) && cres[b] <= res[b]) || h == HALVINGS) {
          took[b] = 1;
          res[b] = cres[b];
          if (!isfinite(cres[b])) done[b] = 2;
        } else {
          lam[b] *= 0.5f;
          damped++;
          active = 1;
        }
      }
      rows(s, ROWS_TAKE_C, took, NULL);
      for (int64_t b = 0; b < B; b++)
        if (took[b]) pending[b] = 0;
    }
  }
  /* What did not converge runs as the step loop. */
  add(&tally.damped, damped);
  for (int64_t b = 0; b < B; b++) {
    if (len_of(s, b) == 0) continue;
    add(&tally.solves, 1);
    add(&tally.warm, wk->warm[b]);
    if (done[b] == 1) {
      int32_t it = wk->iters[b];
      add(&tally.iterations, it);
      int32_t seen = __atomic_load_n(&tally.max_iter, __ATOMIC_RELAXED);
      while (it > seen && !__atomic_compare_exchange_n(&tally.max_iter, &seen, it, 1,
                                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      }
      continue;
    }
    /* The steps before the first that failed the last test passed it: they
     * are kept, and the step loop runs from there to the window's end. */
    int64_t t0 = wk->firstbad[b] < len_of(s, b) ? wk->firstbad[b] : len_of(s, b);
    add(&tally.fallbacks, 1);
    add(&tally.fallback_steps, len_of(s, b) - t0);
    if ((rc = sequential(s, b, t0, wk->one_out))) return rc;
  }
  return 0;
}

/* Steps per window when the caller leaves it open: the whole sequence while
 * the solve's buffers stay within RT_NEWTON_BUDGET floats, else as many as
 * do (never fewer than RT_NEWTON_MIN_WINDOW). */
int64_t rt_cpu_newton_window(int64_t B, int64_t T, int32_t n, int64_t w, int32_t dense,
                             int64_t window) {
  /* Window lengths are int32 (as sequence lengths are). */
  int64_t most = T < ((int64_t)1 << 30) ? T : (int64_t)1 << 30;
  if (most < 1) return 1;
  int64_t per_token = dense ? 7 * n * w + (n * w) * (n * w) : (5 * n + (int64_t)n * n) * w;
  int64_t Bm = B > 1 ? B : 1;
  int64_t tw = RT_NEWTON_BUDGET / per_token / Bm;
  if (tw < RT_NEWTON_MIN_WINDOW) tw = RT_NEWTON_MIN_WINDOW;
  /* A window asked for is a most: never past the budget either (a dense
   * Jacobian over a long window would take the machine's memory). */
  if (window > 0 && window < tw) tw = window;
  return tw < most ? tw : most;
}

int rt_cpu_newton(RtNewtonStep step, void *const *params, int64_t B, int64_t T, int64_t t0,
                  int64_t tn, void *const *ins, const int32_t *lengths, int32_t rev,
                  float *const *outs, int32_t n, int32_t m, int64_t w, float rtol, float atol,
                  int32_t max_iter, int64_t window, int32_t dense, const int64_t *in_floats,
                  const int32_t *in_kind, int64_t site) {
  if (n < 1 || n > RT_NEWTON_MAX_STATES || m < 0 || m > RT_NEWTON_MAX_INPUTS || w < 1 || B < 0 ||
      T < 0 || t0 < 0 || tn < 0 || tn > T || window < 0)
    return 1;
  if (B == 0 || tn == 0) return 0;
  int64_t tw = rt_cpu_newton_window(B, tn, n, w, dense, window);
  int windowed = tw < T;
  Solve s;
  memset(&s, 0, sizeof s);
  s.step = step;
  s.params = params;
  s.B = B, s.T = tw, s.w = w, s.n = n, s.m = m;
  s.rev = rev != 0;
  s.outs = outs;
  s.in_floats = in_floats;
  s.in_kind = in_kind;
  s.dense = dense != 0;
  s.t0 = t0, s.Tcall = T, s.site = site;
  int64_t per = B * tw * w, nw = n * w, nout = s.dense ? 2 * n : n + n * n;
  int nin = m + n + (s.dense ? n : 0);
  /* F, P, C, D (and a window's H) per state, and J's blocks (dense: J,
   * then the tangents, the step's J times them and a row of differences per
   * example); each window's initial values; one token's outputs (the
   * fallback); per example the guess's and the candidate's residuals, the
   * step's factor and its size; per piece of work its maximum; the step's
   * argument lists; per example its rows' offset, first failing step,
   * iterations, steps here, window length and flags. */
  int64_t jfloats = s.dense ? per * n * nw + 2 * n * per + B * nw : n * n * per;
  s.G = time_segments(&s);
  int64_t nwf = (int64_t)n * w;
  int64_t segf =
      s.G > 1 ? B * s.G * (seg_floats(&s) + nwf + (s.dense ? nwf * nwf + nwf : 0)) + nwf : 0;
  int64_t floats = (4 * n + (windowed ? n : 0)) * per + jfloats + (windowed ? n * B * w : 0) +
                   nout * w + 4 * (B + 1) + B * RT_CPU_MAX_THREADS + segf;
  int64_t bytes = floats * (int64_t)sizeof(float) + (nin + nout + 2) * (int64_t)sizeof(void *) +
                  (2 * (B + 1) + B * RT_CPU_MAX_THREADS) * (int64_t)sizeof(int64_t) +
                  3 * (B + 1) * (int64_t)sizeof(int32_t) + 5 * (B + 1);
  char *mem = rt_cpu_alloc_uninit(bytes + 64);
  if (!mem) return 2;
  float *f = (float *)mem;
  for (int k = 0; k < n; k++) {
    s.F[k] = f, f += per;
    s.P[k] = f, f += per;
    s.C[k] = f, f += per;
    s.D[k] = f, f += per;
    if (windowed)
      s.H[k] = f, f += per;
    else
      s.H[k] = outs[k];
  }
  if (s.dense) {
    s.Jd = f, f += per * n * nw; /* (nw)^2 per row */
    for (int k = 0; k < n; k++) s.TG[k] = f, f += per;
    memset(s.TG[0], 0, (size_t)(n * per) * sizeof(float)); /* the guess's tangents */
    for (int k = 0; k < n; k++) s.dF[k] = f, f += per;
    s.diff = f, f += B * nw;
  } else {
    for (int j = 0; j < n * n; j++) s.J[j] = f, f += per;
  }
  float *h0w = f;
  if (windowed) f += n * B * w;
  float *one_out[RT_NEWTON_MAX_STATES * (RT_NEWTON_MAX_STATES + 1)];
  for (int64_t j = 0; j < nout; j++) one_out[j] = f + j * w;
  f += nout * w;
  Work wk;
  wk.one_out = one_out;
  wk.res = f, wk.cres = f + B + 1, wk.lam = f + 2 * (B + 1), wk.errs = f + 3 * (B + 1);
  f += 4 * (B + 1);
  s.part = f;
  f += B * RT_CPU_MAX_THREADS;
  if (s.G > 1) {
    s.seg_M = f, f += B * s.G * seg_floats(&s);
    s.seg_start = f, f += B * s.G * nwf;
    if (s.dense) s.seg_tmp = f, f += B * s.G * (nwf * nwf + nwf);
    s.seg_zero = f, f += n * w;
    memset(s.seg_zero, 0, sizeof(float) * (size_t)(n * w));
  }
  void **ptrs = (void **)(((uintptr_t)f + 7) & ~(uintptr_t)7);
  s.ins = ptrs;
  s.souts = ptrs + nin;
  int64_t *ext0 = (int64_t *)(s.souts + nout);
  wk.firstbad = ext0 + B + 1;
  s.bad = wk.firstbad + B + 1;
  s.ext0 = ext0;
  wk.iters = (int32_t *)(s.bad + B * RT_CPU_MAX_THREADS);
  int32_t *wlen = wk.iters + B + 1, *steps = wlen + B + 1;
  wk.done = (char *)(steps + B + 1), wk.pending = wk.done + B + 1,
  wk.iterating = wk.pending + B + 1, wk.took = wk.iterating + B + 1, wk.warm = wk.took + B + 1;
  for (int i = 0; i < m; i++) s.ins[i] = ins[i];
  for (int k = 0; k < n; k++) {
    s.ins[m + k] = s.P[k];
    s.souts[k] = s.F[k];
  }
  for (int k = 0; s.dense && k < n; k++) s.ins[m + n + k] = s.TG[k]; /* dense: the tangents */
  for (int j = 0; j < (s.dense ? n : n * n); j++) s.souts[n + j] = s.dense ? s.dF[j] : s.J[j];
  s.lengths = windowed ? wlen : steps;
  /* Example b's steps here: [t0, t0 + tn) of its sequence, as far as it
   * goes. */
  for (int64_t b = 0; b < B; b++) {
    int64_t len = (lengths ? lengths[b] : t0 + tn) - t0;
    steps[b] = (int32_t)(len < 0 ? 0 : len > tn ? tn : len);
  }

  int rc = 0;
  for (int64_t u0 = 0; u0 < tn; u0 += tw) {
    /* The window [u0, u0 + tw) of every example's steps here. */
    int any = 0;
    for (int64_t b = 0; b < B; b++) {
      int64_t len = steps[b], wl = len - u0;
      wl = wl < 0 ? 0 : wl > tw ? tw : wl;
      wlen[b] = (int32_t)wl;
      ext0[b] = windowed ? b * T + (s.rev ? len - u0 - wl : u0) - b * tw : 0;
      any |= wl > 0;
      /* It starts from the last value of the window before. */
      for (int k = 0; k < n && u0 && wl; k++)
        memcpy(h0w + (k * B + b) * w, outs[k] + (b * T + (s.rev ? len - u0 : u0 - 1)) * w,
               (size_t)w * sizeof(float));
    }
    if (!any) break;
    for (int k = 0; k < n; k++) s.h0[k] = u0 ? h0w + k * B * w : (const float *)ins[m + k];
    if ((rc = solve_window(&s, &wk, rtol, atol, max_iter))) break;
    warm_save(&s);
    if (windowed) {
      char *all = wk.took;
      memset(all, 1, (size_t)B);
      rows(&s, ROWS_STORE, all, NULL);
    }
  }
  rt_cpu_free(mem);
  return rc;
}
