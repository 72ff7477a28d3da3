/* test_cpu_dplr.c - the chunkwise-parallel generalized delta rule kernel
 * (runtime/cpu_dplr.c) against the recurrence run token by token in
 * float64: every head count, key and value width, chunk length and sequence
 * length of the brief, with RWKV-7's inputs, DeltaNet's as a special case
 * and general low-rank terms; a nonzero initial state, sequences read
 * backwards (negative strides), rows repeated for every token (stride 0),
 * state-only calls, and decays of exactly 0 (lw = -inf) on some keys
 * mid-sequence. Also: the DeltaNet case against rt_cpu_delta itself, and
 * decays of 0 cutting the history bit for bit.
 *
 * Inputs, per kind:
 *   RWKV-7:  a = kk (unit length), b = -g kk with g in (0, 1) (a sigmoid),
 *            w = exp(-exp(x)), x in [-6, 1.1] (w in (0.05, 1)), k and q in [-1, 1)
 *   DeltaNet: w = 1 (lw = 0), k unit length, a = k, b = -beta k, v scaled by
 *            beta, beta in (0, 1) (a sigmoid); gated: one lw per head and token
 *   general: a and b in independent directions, of length 0.3 each, w in
 *            (0.05, 0.9] (so the transition's norm is under 1)
 *
 * Tolerance, as test_cpu_delta.c's: each case also runs the plain float32
 * step loop on the same inputs, and the kernel passes if its largest error
 * is within
 *   2 * (the step loop's error) + 8 eps (sqrt(K) + sqrt(C) + 2) scale,
 * sqrt(K) for the dot products over keys, sqrt(C) for the sums over a
 * chunk's tokens, 2 for exp and the last roundings. scale is the largest
 * |value| of the float64 run: its outputs, and every state entry along the
 * way (what the chunked form's sums add up).
 *
 * Measured over all the cases here (DPLR_STATS=1 prints each; with
 * DPLR_NOFAIL=1 a failure does not stop the run), on an AVX2 machine: the
 * kernel's largest error is 9.0 eps scale (DeltaNet at K = 1, where a
 * chunk's keys are all parallel and its sums cancel; the floor there is
 * 56), at most 0.16 of the bound anywhere. By kind: RWKV-7 5.1 (3.8 at
 * K >= 64), DeltaNet 9.0 (6.9 at K = 256), general 2.4. Where the step
 * loop's error is above 2 eps scale, the kernel's is at most 1.39 (RWKV-7),
 * 1.68 (DeltaNet) and 1.04 (general) times it where a chunk's keys can be
 * independent (C <= K; test_error_ratio asserts under 3), and 1.83 and 3.40
 * where they cannot. The generic (non-AVX2) copy, forced, gave 9.7 eps
 * scale at most and ratios up to 1.77 (C <= K) and 4.2 (C > K). Against rt_cpu_delta the DeltaNet
 * outputs and states agree within 3.9 eps of their scale.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_cpu.h"
#include "testutil.h"
#include "per_isa.h"

enum { KIND_RWKV, KIND_DELTA, KIND_GENERAL, NKINDS };
static const char *const kind_names[NKINDS] = {"rwkv7", "deltanet", "general"};

/* The per-token arrays, in the order of the arguments; a bit each in
 * Case.stride0. */
enum { ARR_Q, ARR_LW, ARR_A, ARR_B, ARR_V, ARR_K, NARRAYS };

typedef struct Case {
  int64_t T, H, K, V;
  int kind;
  int backwards;     /* token t stored at T-1-t, token strides negative */
  int stride0;       /* arrays (1 << ARR_*) with one row for every token (stride 0) */
  int state_only;    /* q == NULL */
  int specials;      /* decays of exactly 0 on some keys */
  const int64_t *Cs; /* chunk lengths to run, ending with -1 */
} Case;

/* A deterministic value in [-1, 1) for element i of stream `salt`. */
static double uval(uint64_t i, uint64_t salt) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + salt * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (double)(x >> 11) / (double)(1ull << 52) - 1.0;
}

static double sigmoid(double x) {
  return 1.0 / (1.0 + exp(-x));
}

/* The inputs of one case in logical order: q, lw, a, b, k [T, H, K],
 * v [T, H, V], S0 [H, V, K]. */
typedef struct Data {
  float *arr[NARRAYS];
  float *S0;
} Data;

static float *falloc(int64_t n) {
  float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  assert_non_null(p);
  return p;
}

/* x[0:n] = len * normal(x[0:n]) where its norm is not 0. */
static void normalize(float *x, int64_t n, double len) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  if (s > 0)
    for (int64_t i = 0; i < n; i++) x[i] = (float)(len * x[i] / sqrt(s));
}

static int64_t width(const Case *c, int arr) {
  return arr == ARR_V ? c->V : c->K;
}

static Data make_data(const Case *c) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V;
  Data d;
  for (int r = 0; r < NARRAYS; r++) d.arr[r] = falloc(T * H * width(c, r));
  float *q = d.arr[ARR_Q], *lw = d.arr[ARR_LW], *a = d.arr[ARR_A], *b = d.arr[ARR_B];
  float *v = d.arr[ARR_V], *k = d.arr[ARR_K];
  for (int64_t i = 0; i < T * H * K; i++) {
    q[i] = (float)uval((uint64_t)i, 1);
    k[i] = (float)uval((uint64_t)i, 2);
    a[i] = (float)uval((uint64_t)i, 3);
    b[i] = (float)uval((uint64_t)i, 4);
  }
  for (int64_t i = 0; i < T * H * V; i++) v[i] = (float)uval((uint64_t)i, 5);
  for (int64_t th = 0; th < T * H; th++) {
    float *ar = a + th * K, *br = b + th * K, *kr = k + th * K, *vr = v + th * V;
    float *lr = lw + th * K;
    if (c->kind == KIND_RWKV) {
      normalize(ar, K, 1.0);
      for (int64_t j = 0; j < K; j++) {
        double g = sigmoid(3.0 * uval((uint64_t)(th * K + j), 6));
        br[j] = (float)(-g * ar[j]);
        double x = -2.45 + 3.55 * uval((uint64_t)(th * K + j), 7);
        lr[j] = (float)-exp(x);
      }
    } else if (c->kind == KIND_DELTA) {
      double beta = sigmoid(3.0 * uval((uint64_t)th, 6));
      normalize(kr, K, 1.0);
      for (int64_t j = 0; j < K; j++) {
        ar[j] = kr[j];
        br[j] = (float)(-beta * kr[j]);
        lr[j] = 0.0f;
      }
      for (int64_t j = 0; j < V; j++) vr[j] = (float)(beta * vr[j]);
    } else {
      normalize(ar, K, 0.3);
      normalize(br, K, 0.3);
      for (int64_t j = 0; j < K; j++) {
        double w = 0.05 + 0.85 * (uval((uint64_t)(th * K + j), 7) + 1.0) / 2.0;
        lr[j] = (float)log(w);
      }
    }
    if (c->specials)
      for (int64_t j = 0; j < K; j++)
        if ((uint64_t)((uval((uint64_t)(th * K + j), 8) + 1.0) * 1e6) % 23 == 0) lr[j] = -INFINITY;
  }
  /* Stride 0: token 0's rows for every token. */
  for (int r = 0; r < NARRAYS; r++)
    if (c->stride0 >> r & 1) {
      int64_t n = H * width(c, r);
      for (int64_t t = 1; t < T; t++) memcpy(d.arr[r] + t * n, d.arr[r], sizeof(float) * (size_t)n);
    }
  d.S0 = falloc(H * V * K);
  for (int64_t i = 0; i < H * V * K; i++) d.S0[i] = (float)(0.5 * uval((uint64_t)i, 9));
  return d;
}

static void free_data(Data *d) {
  for (int r = 0; r < NARRAYS; r++) free(d->arr[r]);
  free(d->S0);
}

/* The recurrence token by token, in double (f64 = 1) or in float: o is
 * [T, H, V], S [H, V, K] (initialised from d->S0); smax the largest |S|
 * entry of the float64 path, after any token. */
static void step_loop(const Case *c, const Data *d, int f64, double *o, double *S, double *smax) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V;
  float *Sf = falloc(H * V * K);
  for (int64_t i = 0; i < H * V * K; i++) {
    S[i] = d->S0[i];
    Sf[i] = d->S0[i];
  }
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      const int64_t rk = (t * H + h) * K, rv = (t * H + h) * V;
      const float *q = d->arr[ARR_Q] + rk, *lw = d->arr[ARR_LW] + rk, *a = d->arr[ARR_A] + rk;
      const float *b = d->arr[ARR_B] + rk, *k = d->arr[ARR_K] + rk, *v = d->arr[ARR_V] + rv;
      for (int64_t i = 0; i < V; i++) {
        double *s = S + (h * V + i) * K;
        float *sf = Sf + (h * V + i) * K;
        double dl = 0, acc = 0;
        float dlf = 0, accf = 0;
        for (int64_t j = 0; j < K; j++) {
          dl += s[j] * a[j];
          dlf += sf[j] * a[j];
        }
        for (int64_t j = 0; j < K; j++) {
          s[j] = s[j] * exp((double)lw[j]) + dl * b[j] + (double)v[i] * k[j];
          sf[j] = sf[j] * expf(lw[j]) + dlf * b[j] + v[i] * k[j];
          acc += s[j] * q[j];
          accf += sf[j] * q[j];
          *smax = fmax(*smax, fabs(s[j]));
        }
        o[rv + i] = f64 ? acc : accf;
      }
    }
  if (!f64)
    for (int64_t i = 0; i < H * V * K; i++) S[i] = Sf[i];
  free(Sf);
}

/* A buffer holding logical rows [T, width] with `pad` floats of `fill`
 * after each: tokens reversed if backwards; one row if once (stride 0).
 * at: the pointer to pass for token 0; ld: the stride to pass. */
typedef struct Placed {
  float *buf, *at;
  int64_t ld, size;
} Placed;

static Placed place(const Case *c, const float *rows, int64_t width, int64_t pad, int once,
                    float fill) {
  const int64_t T = c->T, ld = width + pad, n = once ? 1 : T;
  Placed p;
  p.size = n * ld + 1;
  p.buf = falloc(p.size);
  for (int64_t i = 0; i < p.size; i++) p.buf[i] = fill;
  for (int64_t t = 0; t < n; t++) {
    int64_t pt = c->backwards ? n - 1 - t : t;
    if (rows) memcpy(p.buf + pt * ld, rows + t * width, sizeof(float) * (size_t)width);
  }
  p.ld = once ? 0 : c->backwards ? -ld : ld;
  p.at = c->backwards && n > 0 ? p.buf + (n - 1) * ld : p.buf;
  return p;
}

static double max_abs(const double *x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
  return m;
}

static double max_err(const double *x, const double *ref, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(x[i] - ref[i]);
    if (!(e <= m)) m = e; /* NaN wins */
  }
  return m;
}

/* The largest ratio of the kernel's error to the step loop's seen so far
 * (where the step loop's error is not tiny), where a chunk's keys can be
 * independent (C <= K, [0]) and where they cannot ([1]), and the largest
 * error in units of eps scale, per kind. Reported by test_error_ratio. */
static double worst_ratio[NKINDS][2], worst_units[NKINDS];

static const double eps = 1.1920929e-7;

/* The bound's floor: see the header comment. */
static double floor_units(int64_t K, int64_t C) {
  return 8 * eps * (sqrt((double)K) + sqrt((double)C) + 2);
}

/* Runs one case: the step loops once, then the kernel at every chunk length
 * of c->Cs, checking its outputs and final state each time. */
static void run_case(const Case *c) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V;
  Data d = make_data(c);
  int64_t nO = T * H * V, nS = H * V * K;
  double *o64 = calloc((size_t)(nO + 1), sizeof(double)), *S64 = calloc((size_t)nS, sizeof(double));
  double *o32 = calloc((size_t)(nO + 1), sizeof(double)), *S32 = calloc((size_t)nS, sizeof(double));
  double *ok = calloc((size_t)(nO + 1), sizeof(double)), *Sk = calloc((size_t)nS, sizeof(double));
  assert_true(o64 && S64 && o32 && S32 && ok && Sk);
  double smax = 0, unused = 0;
  for (int64_t i = 0; i < nS; i++) smax = fmax(smax, fabs(d.S0[i]));
  step_loop(c, &d, 1, o64, S64, &smax);
  step_loop(c, &d, 0, o32, S32, &unused);

  /* Strides wider than the rows (a different gap per array); o's padding
   * must survive. */
  const float sentinel = 12345.0f;
  Placed in[NARRAYS];
  for (int r = 0; r < NARRAYS; r++)
    in[r] = place(c, d.arr[r], H * width(c, r), 1 + r, c->stride0 >> r & 1, 0);
  float *S = falloc(nS);

  for (const int64_t *C = c->Cs; *C >= 0; C++) {
    Placed o = place(c, NULL, H * V, 5, 0, sentinel);
    memcpy(S, d.S0, sizeof(float) * (size_t)nS);
    /* Exactly the scratch asked for, one float off 64-byte alignment, with
     * a canary after it. */
    int64_t nw = rt_cpu_dplr_work(H, K, V, *C);
    assert_true(nw > 0);
    float *wb = falloc(nw + 1 + 16);
    for (int64_t i = nw + 1; i < nw + 1 + 16; i++) wb[i] = sentinel;
    rt_cpu_dplr(T, H, K, V, c->state_only ? NULL : in[ARR_Q].at, in[ARR_Q].ld, in[ARR_LW].at,
                in[ARR_LW].ld, in[ARR_A].at, in[ARR_A].ld, in[ARR_B].at, in[ARR_B].ld, in[ARR_V].at,
                in[ARR_V].ld, in[ARR_K].at, in[ARR_K].ld, S, o.at, o.ld, *C, wb + 1);
    for (int64_t i = nw + 1; i < nw + 1 + 16; i++) assert_true(wb[i] == sentinel);

    int64_t ldo = o.ld < 0 ? -o.ld : o.ld;
    for (int64_t i = 0; i < o.size; i++) {
      int64_t p = i / ldo, j = i % ldo;
      if (p >= T || j >= H * V || c->state_only)
        assert_true(o.buf[i] == sentinel);
      else
        ok[(c->backwards ? T - 1 - p : p) * H * V + j] = o.buf[i];
    }
    for (int64_t i = 0; i < nS; i++) Sk[i] = S[i];

    int64_t Ceff = *C >= 1 ? *C : RT_CPU_DPLR_CHUNK;
    double fl = floor_units(K, Ceff);
    struct {
      const char *what;
      const double *x, *x32, *ref;
      int64_t n;
    } checks[] = {{"output", ok, o32, o64, c->state_only ? 0 : nO}, {"state", Sk, S32, S64, nS}};
    for (int i = 0; i < 2; i++) {
      double scale = fmax(max_abs(checks[i].ref, checks[i].n), smax);
      double err = max_err(checks[i].x, checks[i].ref, checks[i].n);
      double err32 = max_err(checks[i].x32, checks[i].ref, checks[i].n);
      double bound = 2 * err32 + fl * scale;
      double *worst = &worst_ratio[c->kind][Ceff > K];
      if (err32 > 2 * eps * scale && err / err32 > *worst) *worst = err / err32;
      if (scale > 0 && err / eps / scale > worst_units[c->kind])
        worst_units[c->kind] = err / eps / scale;
      if (getenv("DPLR_STATS"))
        printf("STAT T=%lld H=%lld K=%lld V=%lld C=%lld %s sp=%d %s err/eps/scale=%.2f "
               "err32=%.2f ratio=%.2f floor=%.2f scale=%.3g\n",
               (long long)T, (long long)H, (long long)K, (long long)V, (long long)Ceff,
               kind_names[c->kind], c->specials, checks[i].what, err / eps / scale,
               err32 / eps / scale, err / err32, fl / eps, scale);
      if (!(err <= bound) && !getenv("DPLR_NOFAIL")) {
        print_error("T=%lld H=%lld K=%lld V=%lld C=%lld %s%s back=%d stride0=%d state_only=%d: "
                    "%s error %g > bound %g (step loop %g, scale %g)\n",
                    (long long)T, (long long)H, (long long)K, (long long)V, (long long)Ceff,
                    kind_names[c->kind], c->specials ? "+specials" : "", c->backwards, c->stride0,
                    c->state_only, checks[i].what, err, bound, err32, scale);
        fail();
      }
    }
    free(o.buf);
    free(wb);
  }
  free(o64);
  free(S64);
  free(o32);
  free(S32);
  free(ok);
  free(Sk);
  for (int r = 0; r < NARRAYS; r++) free(in[r].buf);
  free(S);
  free_data(&d);
}

/* The chunk lengths of the brief (0: the default). */
static const int64_t Cs_all[] = {1, 3, 16, 0, -1};
static const int64_t Hs[] = {1, 3}, Ds[] = {1, 5, 16, 64};

/* Every H, K, V, kind and chunk length with the short lengths (chunk edges
 * at 3 and 16); directions, stride-0 rows, state-only calls and decays of 0
 * alternate over the lengths so that each shape sees them all. */
static void test_shapes(void **st) {
  (void)st;
  const int64_t Ts[] = {1, 2, 15, 16, 17, 63, 100};
  for (int hi = 0; hi < 2; hi++)
    for (int ki = 0; ki < 4; ki++)
      for (int vi = 0; vi < 4; vi++)
        for (int kind = 0; kind < NKINDS; kind++)
          for (int ti = 0; ti < 7; ti++) {
            int back = ti % 2, only = ti % 4 == 2, sp = kind != KIND_DELTA && ti % 3 != 0;
            /* Stride 0 for one array or two, in turn (not all: a sequence
             * of one token repeated is a narrower test). */
            int s0 = ti % 3 == 1 ? 1 << ((ti + kind) % NARRAYS) | 1 << ((ti + 3) % NARRAYS) : 0;
            Case c = {Ts[ti], Hs[hi], Ds[ki], Ds[vi], kind, back, s0, only, sp, Cs_all};
            run_case(&c);
          }
}

/* Long sequences: many chunks; RWKV-7's head sizes. */
static void test_long(void **st) {
  (void)st;
  static const int64_t Cs[] = {16, 0, 32, -1};
  for (int kind = 0; kind < NKINDS; kind++)
    for (int sp = 0; sp <= (kind != KIND_DELTA); sp++) {
      Case a = {1000, 2, 64, 64, kind, sp, 0, 0, sp, Cs};
      run_case(&a);
      Case b = {1000, 3, 64, 5, kind, !sp, 0, 1, sp, Cs};
      run_case(&b);
      Case e = {1000, 1, 5, 64, kind, sp, 1 << ARR_LW, 0, sp, Cs};
      run_case(&e);
    }
  for (int kind = 0; kind < NKINDS; kind++) {
    Case c = {200, 1, 256, 256, kind, kind == 1, 0, 0, kind != KIND_DELTA, Cs};
    run_case(&c);
  }
}

/* Chunk lengths off the register tiles' 6 rows and the 16-float panels. */
static void test_odd_chunks(void **st) {
  (void)st;
  static const int64_t Cs[] = {2, 5, 7, 11, 17, 33, 100, -1};
  for (int kind = 0; kind < NKINDS; kind++) {
    Case c = {263, 2, 20, 32, kind, kind % 2, 0, 0, kind != KIND_DELTA, Cs};
    run_case(&c);
    Case e = {263, 1, 24, 13, kind, !(kind % 2), 1 << ARR_A, 0, kind != KIND_DELTA, Cs};
    run_case(&e);
  }
}

/* DeltaNet, plain and gated, through both kernels: rt_cpu_dplr with w = g
 * on every key, a = k, b = -g beta k (rt_cpu_delta's gate scales the state
 * before it is read) and beta v, and rt_cpu_delta with R = 1.
 * Two float32 evaluations of the same recurrence in different orders: they
 * agree to a few eps of the outputs' scale. */
static void test_matches_delta_kernel(void **st) {
  (void)st;
  const int64_t H = 2, K = 32, V = 48, T = 77, C = 16;
  for (int gated = 0; gated < 2; gated++) {
    float *q = falloc(T * H * K), *k = falloc(T * H * K), *v = falloc(T * H * V);
    float *beta = falloc(T * H), *lg = falloc(T * H), *a = falloc(T * H * K);
    float *b = falloc(T * H * K), *vb = falloc(T * H * V), *lw = falloc(T * H * K);
    float *S[2] = {falloc(H * V * K), falloc(H * V * K)};
    float *o[2] = {falloc(T * H * V), falloc(T * H * V)};
    for (int64_t i = 0; i < T * H * K; i++) {
      q[i] = (float)uval((uint64_t)i, 31);
      k[i] = (float)uval((uint64_t)i, 32);
    }
    for (int64_t i = 0; i < T * H * V; i++) v[i] = (float)uval((uint64_t)i, 33);
    for (int64_t th = 0; th < T * H; th++) {
      normalize(k + th * K, K, 1.0);
      beta[th] = (float)sigmoid(3.0 * uval((uint64_t)th, 34));
      lg[th] = gated ? (float)(-0.7 * (uval((uint64_t)th, 35) + 1.0) / 2.0) : 0.0f;
      for (int64_t j = 0; j < K; j++) {
        a[th * K + j] = k[th * K + j];
        b[th * K + j] = -expf(lg[th]) * beta[th] * k[th * K + j];
        lw[th * K + j] = lg[th];
      }
      for (int64_t j = 0; j < V; j++) vb[th * V + j] = beta[th] * v[th * V + j];
    }
    for (int r = 0; r < 2; r++)
      for (int64_t i = 0; i < H * V * K; i++) S[r][i] = (float)(0.5 * uval((uint64_t)i, 36));
    float *w0 = falloc(rt_cpu_delta_work(H, K, V, 1, C)),
          *w1 = falloc(rt_cpu_dplr_work(H, K, V, C));
    rt_cpu_delta(T, H, K, V, 1, q, H * K, k, H * K, 0, v, H * V, 0, beta, H, 0, gated ? lg : NULL,
                 H, S[0], o[0], H * V, C, w0);
    rt_cpu_dplr(T, H, K, V, q, H * K, lw, H * K, a, H * K, b, H * K, vb, H * V, k, H * K, S[1],
                o[1], H * V, C, w1);
    for (int which = 0; which < 2; which++) {
      const float *x = which ? S[0] : o[0], *y = which ? S[1] : o[1];
      double scale = 0, err = 0;
      for (int64_t i = 0; i < (which ? H * V * K : T * H * V); i++) {
        scale = fmax(scale, fabs(x[i]));
        err = fmax(err, fabs((double)x[i] - y[i]));
      }
      if (getenv("DPLR_STATS"))
        printf("STAT vs rt_cpu_delta gated=%d %s: %.2f eps scale\n", gated,
               which ? "state" : "output", err / eps / scale);
      assert_true(err <= 16 * eps * scale);
    }
    float *bufs[] = {q, k, v, beta, lg, a, b, vb, lw, S[0], S[1], o[0], o[1], w0, w1};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  }
}

/* A decay of exactly 0 cuts the history bit for bit, with no NaN though
 * what is cut is huge. Two runs differ in the initial state and in the
 * tokens before z; everything from z on is the same in both.
 * all keys: every decay of token z is 0 and b_z = 0, so S_z = v_z k_z^T
 * whatever came before: the outputs from z on and the final state must
 * agree exactly.
 * some keys (a set D): decays of 0 at z on D only, and a_t = 0 on D up to
 * z, so the state's columns D are never read before they are cut; the runs
 * differ only there (the initial state's columns D, and b and k on D before
 * z). Outputs from z on and the final state must agree exactly.
 * For z inside a chunk and on a chunk's first token. */
static void test_zero_decay_cuts_history(void **st) {
  (void)st;
  const int64_t H = 2, K = 24, V = 16, T = 150, C = 16;
  for (int all = 0; all < 2; all++)
    for (int zi = 0; zi < 2; zi++) {
      const int64_t z = zi ? 64 : 70;
      float *in[2][NARRAYS], *S[2], *o[2];
      for (int r = 0; r < 2; r++) {
        for (int x = 0; x < NARRAYS; x++) {
          int64_t w = x == ARR_V ? V : K;
          in[r][x] = falloc(T * H * w);
          for (int64_t i = 0; i < T * H * w; i++) {
            /* Before z, the second run's rows differ where allowed. */
            int64_t t = i / (H * w), j = i % w;
            int differs = r == 1 && t < z && (all || ((x == ARR_B || x == ARR_K) && j % 3 == 0));
            in[r][x][i] = (float)(0.5 * uval((uint64_t)i, differs ? 50 + x : 40 + x));
          }
        }
        for (int64_t t = 0; t < T; t++)
          for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < K; j++) {
              int64_t i = (t * H + h) * K + j;
              float *lw = in[r][ARR_LW] + i;
              *lw = (float)(-0.5 * (uval((uint64_t)i, 45) + 1.0));
              if (t == z && (all || j % 3 == 0)) *lw = -INFINITY;
              if (all && t == z) in[r][ARR_B][i] = 0.0f;
              if (!all && t <= z && j % 3 == 0) in[r][ARR_A][i] = 0.0f;
            }
        S[r] = falloc(H * V * K);
        for (int64_t i = 0; i < H * V * K; i++) {
          int differs = r == 1 && (all || i % K % 3 == 0);
          S[r][i] = differs ? 1e20f * (float)uval((uint64_t)i, 46) : 0.0f;
        }
        o[r] = falloc(T * H * V);
        float *work = falloc(rt_cpu_dplr_work(H, K, V, C));
        rt_cpu_dplr(T, H, K, V, in[r][ARR_Q], H * K, in[r][ARR_LW], H * K, in[r][ARR_A], H * K,
                    in[r][ARR_B], H * K, in[r][ARR_V], H * V, in[r][ARR_K], H * K, S[r], o[r],
                    H * V, C, work);
        free(work);
      }
      for (int64_t i = 0; i < T * H * V; i++) {
        assert_true(isfinite(o[0][i]));
        if (i >= z * H * V) assert_true(o[0][i] == o[1][i]);
      }
      for (int64_t i = 0; i < H * V * K; i++) assert_true(S[0][i] == S[1][i]);
      for (int r = 0; r < 2; r++) {
        for (int x = 0; x < NARRAYS; x++) free(in[r][x]);
        free(S[r]);
        free(o[r]);
      }
    }
}

/* T = 0 leaves the state and the outputs alone; rejected shapes ask for no
 * scratch and do nothing; C < 1 is the default chunk length; one token by
 * hand. */
static void test_empty_and_invalid(void **st) {
  (void)st;
  /* S = [[1, 2], [3, 4]] (V = K = 2); w = (0, 1), a = e0, b = e1, k = e0, v = (1, 1),
   * q = e1: S a = (1, 3), S diag(w) = [[0, 2], [0, 4]], plus (S a) b^T = [[0, 1], [0, 3]],
   * plus v k^T = [[1, 0], [1, 0]]: [[1, 3], [1, 7]], and o = S q = (3, 7). */
  float S[4] = {1, 2, 3, 4}, o[2] = {7, 7}, q[2] = {0, 1}, a[2] = {1, 0}, b[2] = {0, 1};
  float k[2] = {1, 0}, v[2] = {1, 1}, lw[2] = {-INFINITY, 0};
  float *work = falloc(rt_cpu_dplr_work(1, 2, 2, 0));
  rt_cpu_dplr(0, 1, 2, 2, q, 2, lw, 2, a, 2, b, 2, v, 2, k, 2, S, o, 2, 4, work);
  assert_true(S[0] == 1 && S[1] == 2 && S[2] == 3 && S[3] == 4 && o[0] == 7);
  assert_int_equal(rt_cpu_dplr_work(0, 4, 4, 16), 0);
  assert_int_equal(rt_cpu_dplr_work(1, 0, 4, 16), 0);
  assert_int_equal(rt_cpu_dplr_work(1, 4, 0, 16), 0);
  assert_int_equal(rt_cpu_dplr_work(1, (1 << 20) + 1, 4, 16), 0);
  assert_int_equal(rt_cpu_dplr_work(1, 4, 4, (1 << 14) + 1), 0);
  rt_cpu_dplr(1, 1, 0, 2, q, 2, lw, 2, a, 2, b, 2, v, 2, k, 2, S, o, 2, 4, work);
  assert_true(S[0] == 1 && o[0] == 7);
  assert_int_equal(rt_cpu_dplr_work(1, 2, 2, 0), rt_cpu_dplr_work(1, 2, 2, RT_CPU_DPLR_CHUNK));
  assert_int_equal(rt_cpu_dplr_work(1, 2, 2, -3), rt_cpu_dplr_work(1, 2, 2, RT_CPU_DPLR_CHUNK));
  rt_cpu_dplr(1, 1, 2, 2, q, 2, lw, 2, a, 2, b, 2, v, 2, k, 2, S, o, 2, 0, work);
  assert_true(S[0] == 1 && S[1] == 3 && S[2] == 1 && S[3] == 7 && o[0] == 3 && o[1] == 7);
  free(work);
}

/* Prints how close the kernel came to the step loop's own error over all
 * the cases above (run last). */
static void test_error_ratio(void **st) {
  (void)st;
  for (int kind = 0; kind < NKINDS; kind++) {
    printf("%-8s: largest error ratio, chunked / float32 step loop, %.2f where C <= K, %.2f "
           "where C > K; largest error %.2f eps scale\n",
           kind_names[kind], worst_ratio[kind][0], worst_ratio[kind][1], worst_units[kind]);
    assert_true(worst_ratio[kind][0] < 3.0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_invalid),
      cmocka_unit_test(test_zero_decay_cuts_history),
      cmocka_unit_test(test_matches_delta_kernel),
      cmocka_unit_test(test_shapes),
      cmocka_unit_test(test_long),
      cmocka_unit_test(test_odd_chunks),
      cmocka_unit_test(test_error_ratio),
  };
  return TU_RUN_PER_ISA(tests);
}
