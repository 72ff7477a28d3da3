/* test_cpu_delta.c - the chunkwise-parallel delta rule kernel
 * (runtime/cpu_delta.c) against the recurrence run token by token and factor
 * by factor in float64: every head count, key and value width, factor count
 * R, chunk length and sequence length of the brief, with and without a
 * scalar gate, gates of exactly 0 mid-sequence, a nonzero initial state,
 * sequences read backwards (negative strides), keys and values read in place
 * and copied (factors side by side, with gaps, or factor-major), state-only
 * calls, beta = 1 by default (beta == NULL) and beta = 2 (reflections).
 * Inputs as the real cells make them: keys and queries of unit length per
 * head, beta in (0, 1) (a sigmoid), gates in (0, 1].
 *
 * Tolerance. A float32 evaluation cannot match float64 exactly: the step
 * loop rounds a few times per factor and entry, the chunked form sums the
 * same terms in another order (over K inside its products, over a chunk's
 * C R micro-steps in the triangular substitution and in the products with
 * the deltas) and builds decays as products of up to C gates. So each case
 * also runs the plain float32 step loop on the same inputs, and the kernel
 * passes if its largest error is within
 *   2 * (the step loop's error) + 8 eps (sqrt(K) + sqrt(C R) + 2) scale,
 * sqrt(K) for the dot products over keys, sqrt(C R) for the sums over a
 * chunk's micro-steps (rounding errors that add up like a random walk), 2
 * for exp and the last roundings (the form of test_cpu_linattn.c's bound,
 * with micro-steps for tokens). The floor matters where the step loop
 * happens to be nearly exact. scale is the largest |value| of the float64
 * run: its outputs, its final state, and every state entry along the way.
 * The states are what the chunked form's sums add up (delta = b (v - S k),
 * and every output and final state is a sum of such terms), and they can be
 * much larger than the final state: at K = V = 1 a state of 0.5 cancels to
 * 0.01 in the last token, and the kernel's error there, a fraction of an
 * ulp of the terms, is 120 eps of the final value (the step loop's, 14).
 *
 * Measured over all the cases here (DELTA_STATS=1 prints each; with
 * DELTA_NOFAIL=1 a failure does not stop the run): with beta <= 1 the
 * kernel's error is at most 8.9 eps scale (K = 1, C R = 192, where the floor
 * is 135) and 5.7 at K = 64. Where the step loop's error is above 2 eps
 * scale, the kernel's is at most 2.11 times it where a chunk's keys can be
 * independent (C R <= K; test_error_ratio asserts under 3), and 2.68 times
 * where they cannot. beta = 2 damps nothing, and with C R much larger than
 * K the substitution's sums cancel (sum_i L[m, i] delta_i is much smaller
 * than its terms): there the kernel's error grows to 7.8 times the step
 * loop's (67 eps scale at K = 5, C R = 192, where the floor is 145).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_cpu.h"
#include "testutil.h"
#include "per_isa.h"

enum { GATE_NONE, GATE_SCALAR };
enum { BETA_SIGMOID, BETA_ONE, BETA_TWO }; /* BETA_ONE passes beta == NULL */
/* The factors of a token side by side and the tokens one after the other
 * (the kernel reads such keys and values in place), the same with a gap
 * after each token (it copies them), or factor r of every token after all of
 * factor r-1's (it copies them). */
enum { LAYOUT_PACKED, LAYOUT_GAP, LAYOUT_FACTOR_MAJOR };

typedef struct Case {
  int64_t T, H, K, V, R;
  int gate, beta;
  int backwards;     /* token t stored at T-1-t, token strides negative */
  int layout;        /* of k, v, beta: LAYOUT_* */
  int state_only;    /* q == NULL */
  int specials;      /* gates of exactly 0 and about e^-30 mixed in */
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

/* Gate logarithm for element i: mostly slow decays (many near 0, a few
 * down to -0.7), and with specials some -inf and -30. */
static float gate_log(uint64_t i, int specials) {
  if (specials) {
    uint64_t m = (uint64_t)((uval(i, 77) + 1.0) * 1e6);
    if (m % 29 == 0) return -INFINITY;
    if (m % 31 == 1) return -30.0f;
  }
  double u = (uval(i, 5) + 1.0) / 2.0;
  return (float)(-0.7 * u * u * u * u);
}

/* The inputs of one case in logical order: q [T, H, K], k [T, R, H, K],
 * v [T, R, H, V], beta [T, R, H], lg [T, H], S0 [H, V, K]. */
typedef struct Data {
  float *q, *k, *v, *beta, *lg, *S0;
} Data;

static float *falloc(int64_t n) {
  float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  assert_non_null(p);
  return p;
}

/* x[0:n] = normal(x[0:n]) where its norm is not 0. */
static void normalize(float *x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  if (s > 0)
    for (int64_t i = 0; i < n; i++) x[i] = (float)(x[i] / sqrt(s));
}

static Data make_data(const Case *c) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V, R = c->R;
  Data d;
  d.q = falloc(T * H * K);
  d.k = falloc(T * R * H * K);
  d.v = falloc(T * R * H * V);
  d.beta = falloc(T * R * H);
  d.lg = falloc(T * H);
  d.S0 = falloc(H * V * K);
  for (int64_t i = 0; i < T * H * K; i++) d.q[i] = (float)uval((uint64_t)i, 1);
  for (int64_t i = 0; i < T * R * H * K; i++) d.k[i] = (float)uval((uint64_t)i, 2);
  for (int64_t i = 0; i < T * H; i++) normalize(d.q + i * K, K);
  for (int64_t i = 0; i < T * R * H; i++) normalize(d.k + i * K, K);
  for (int64_t i = 0; i < T * R * H * V; i++) d.v[i] = (float)uval((uint64_t)i, 3);
  for (int64_t i = 0; i < T * R * H; i++)
    d.beta[i] = c->beta == BETA_TWO   ? 2.0f
                : c->beta == BETA_ONE ? 1.0f
                                      : (float)(1.0 / (1.0 + exp(-3.0 * uval((uint64_t)i, 6))));
  for (int64_t i = 0; i < T * H; i++) d.lg[i] = gate_log((uint64_t)i, c->specials);
  for (int64_t i = 0; i < H * V * K; i++) d.S0[i] = (float)(0.5 * uval((uint64_t)i, 4));
  return d;
}

static void free_data(Data *d) {
  free(d->q);
  free(d->k);
  free(d->v);
  free(d->beta);
  free(d->lg);
  free(d->S0);
}

/* The recurrence token by token and factor by factor, in double (f64 = 1)
 * or in float: o is [T, H, V], S [H, V, K] (initialised from d->S0); smax
 * the largest |S| entry of the float64 path, after any factor. */
static void step_loop(const Case *c, const Data *d, int f64, double *o, double *S, double *smax) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V, R = c->R;
  float *Sf = falloc(H * V * K), *yf = falloc(V);
  double *y = malloc(sizeof(double) * (size_t)V);
  assert_non_null(y);
  for (int64_t i = 0; i < H * V * K; i++) {
    S[i] = d->S0[i];
    Sf[i] = d->S0[i];
  }
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      double *s = S + h * V * K;
      float *sf = Sf + h * V * K;
      if (c->gate == GATE_SCALAR) {
        float l = d->lg[t * H + h];
        double g = exp((double)l);
        float gf = expf(l);
        for (int64_t i = 0; i < V * K; i++) {
          s[i] *= g;
          sf[i] *= gf;
        }
      }
      for (int64_t r = 0; r < R; r++) {
        const float *k = d->k + ((t * R + r) * H + h) * K, *v = d->v + ((t * R + r) * H + h) * V;
        const float b = d->beta[(t * R + r) * H + h];
        for (int64_t i = 0; i < V; i++) {
          double acc = 0;
          float accf = 0;
          for (int64_t j = 0; j < K; j++) {
            acc += s[i * K + j] * k[j];
            accf += sf[i * K + j] * k[j];
          }
          y[i] = b * (v[i] - acc);
          yf[i] = b * (v[i] - accf);
        }
        for (int64_t i = 0; i < V; i++)
          for (int64_t j = 0; j < K; j++) {
            s[i * K + j] += y[i] * k[j];
            sf[i * K + j] += yf[i] * k[j];
            *smax = fmax(*smax, fabs(s[i * K + j]));
          }
      }
      const float *q = d->q + (t * H + h) * K;
      for (int64_t i = 0; i < V; i++) {
        double acc = 0;
        float accf = 0;
        for (int64_t j = 0; j < K; j++) {
          acc += s[i * K + j] * q[j];
          accf += sf[i * K + j] * q[j];
        }
        o[(t * H + h) * V + i] = f64 ? acc : accf;
      }
    }
  if (!f64)
    for (int64_t i = 0; i < H * V * K; i++) S[i] = Sf[i];
  free(Sf);
  free(yf);
  free(y);
}

/* A buffer holding logical rows [T, F, width] (F factors per token) with
 * padding between rows set to `fill`: tokens reversed if backwards, factors
 * placed as `layout` says. at: the pointer to pass for token 0, factor 0;
 * ldt, ldf: the token and factor strides to pass. */
typedef struct Placed {
  float *buf, *at;
  int64_t ldt, ldf, size;
} Placed;

static Placed place(const Case *c, const float *rows, int64_t F, int64_t width, int64_t pad,
                    int layout, float fill) {
  const int64_t T = c->T;
  Placed p;
  int64_t ldt, ldf;
  if (layout == LAYOUT_FACTOR_MAJOR) {
    ldt = width + pad;
    ldf = T * ldt + 1;
  } else {
    ldf = width + pad;
    ldt = F * ldf + (layout == LAYOUT_GAP);
  }
  p.size = T * F * (width + pad) + F + T + 1;
  p.buf = falloc(p.size);
  for (int64_t i = 0; i < p.size; i++) p.buf[i] = fill;
  for (int64_t t = 0; t < T; t++) {
    int64_t pt = c->backwards ? T - 1 - t : t;
    for (int64_t r = 0; r < F; r++)
      if (rows)
        memcpy(p.buf + pt * ldt + r * ldf, rows + (t * F + r) * width,
               sizeof(float) * (size_t)width);
  }
  p.ldt = c->backwards ? -ldt : ldt;
  p.ldf = ldf;
  p.at = c->backwards && T > 0 ? p.buf + (T - 1) * ldt : p.buf;
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
 * (where the step loop's error is not tiny): where a chunk's keys can be
 * independent (C R <= K), and where they cannot (C R > K) with beta <= 1
 * and with beta = 2; and the largest error in units of eps scale. Reported
 * by test_error_ratio. */
static double worst_ratio, worst_ratio_dep, worst_ratio_dep_reflect, worst_units;

static const double eps = 1.1920929e-7;

/* The bound on the kernel's error: see the header comment. */
static double floor_units(int64_t K, int64_t C, int64_t R) {
  return 8 * eps * (sqrt((double)K) + sqrt((double)(C * R)) + 2);
}

/* Runs one case: the step loops once, then the kernel at every chunk length
 * of c->Cs, checking its outputs and final state each time. */
static void run_case(const Case *c) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V, R = c->R;
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

  /* Strides wider than the rows; o's padding must survive. */
  const float sentinel = 12345.0f;
  Placed q = place(c, d.q, 1, H * K, 3, LAYOUT_GAP, 0);
  Placed k = place(c, d.k, R, H * K, 1, c->layout, 0);
  Placed v = place(c, d.v, R, H * V, 2, c->layout, 0);
  Placed b = place(c, d.beta, R, H, 1, (c->layout + 1) % 3, 0);
  Placed lg = place(c, d.lg, 1, H, 2, LAYOUT_GAP, 0);
  float *S = falloc(nS);

  for (const int64_t *C = c->Cs; *C >= 0; C++) {
    Placed o = place(c, NULL, 1, H * V, 5, LAYOUT_GAP, sentinel);
    memcpy(S, d.S0, sizeof(float) * (size_t)nS);
    /* Exactly the scratch asked for, one float off 64-byte alignment, with
     * a canary after it. */
    int64_t nw = rt_cpu_delta_work(H, K, V, R, *C);
    assert_true(nw > 0);
    float *wb = falloc(nw + 1 + 16);
    for (int64_t i = nw + 1; i < nw + 1 + 16; i++) wb[i] = sentinel;
    rt_cpu_delta(T, H, K, V, R, c->state_only ? NULL : q.at, q.ldt, k.at, k.ldt, k.ldf, v.at, v.ldt,
                 v.ldf, c->beta == BETA_ONE ? NULL : b.at, b.ldt, b.ldf,
                 c->gate == GATE_NONE ? NULL : lg.at, lg.ldt, S, o.at, o.ldt, *C, wb + 1);
    for (int64_t i = nw + 1; i < nw + 1 + 16; i++) assert_true(wb[i] == sentinel);

    int64_t ldo = o.ldt < 0 ? -o.ldt : o.ldt;
    for (int64_t i = 0; i < o.size; i++) {
      int64_t p = i / ldo, j = i % ldo;
      if (p >= T || j >= H * V || c->state_only)
        assert_true(o.buf[i] == sentinel);
      else
        ok[(c->backwards ? T - 1 - p : p) * H * V + j] = o.buf[i];
    }
    for (int64_t i = 0; i < nS; i++) Sk[i] = S[i];

    int64_t Ceff = *C >= 1 ? *C : R < RT_CPU_DELTA_CHUNK ? RT_CPU_DELTA_CHUNK / R : 1;
    double fl = floor_units(K, Ceff, R);
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
      double *worst = Ceff * R <= K         ? &worst_ratio
                      : c->beta == BETA_TWO ? &worst_ratio_dep_reflect
                                            : &worst_ratio_dep;
      if (err32 > 2 * eps * scale && err / err32 > *worst) *worst = err / err32;
      if (scale > 0 && err / eps / scale > worst_units) worst_units = err / eps / scale;
      if (getenv("DELTA_STATS"))
        printf("STAT T=%lld H=%lld K=%lld V=%lld R=%lld C=%lld g=%d b=%d sp=%d %s "
               "err/eps/scale=%.2f err32=%.2f ratio=%.2f floor=%.2f\n",
               (long long)T, (long long)H, (long long)K, (long long)V, (long long)R,
               (long long)Ceff, c->gate, c->beta, c->specials, checks[i].what, err / eps / scale,
               err32 / eps / scale, err / err32, fl / eps);
      if (!(err <= bound) && !getenv("DELTA_NOFAIL")) {
        print_error("T=%lld H=%lld K=%lld V=%lld R=%lld C=%lld gate=%d%s beta=%d back=%d "
                    "layout=%d state_only=%d: %s error %g > bound %g (step loop %g, scale %g)\n",
                    (long long)T, (long long)H, (long long)K, (long long)V, (long long)R,
                    (long long)Ceff, c->gate, c->specials ? "+specials" : "", c->beta, c->backwards,
                    c->layout, c->state_only, checks[i].what, err, bound, err32, scale);
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
  free(q.buf);
  free(k.buf);
  free(v.buf);
  free(b.buf);
  free(lg.buf);
  free(S);
  free_data(&d);
}

/* The chunk lengths of the brief (0: the default). */
static const int64_t Cs_all[] = {1, 16, 64, 0, -1};
static const int64_t Hs[] = {1, 3}, Ds[] = {1, 5, 16, 64};

/* Every H, K, V, R and chunk length with the short lengths (chunk edges at
 * C = 16 and 64), with and without a gate; directions, layouts, state-only
 * calls, specials and beta == NULL alternate over the lengths so that each
 * shape sees them all. */
static void test_shapes(void **st) {
  (void)st;
  const int64_t Ts[] = {0, 1, 2, 15, 16, 17, 63, 64, 65};
  for (int hi = 0; hi < 2; hi++)
    for (int ki = 0; ki < 4; ki++)
      for (int vi = 0; vi < 4; vi++)
        for (int64_t R = 1; R <= 3; R++)
          for (int gate = 0; gate < 2; gate++)
            for (int ti = 0; ti < 9; ti++) {
              int beta = ti % 5 == 3 ? BETA_ONE : BETA_SIGMOID, back = ti % 2;
              int layout = ti % 3, only = ti % 4 == 2, sp = gate && ti % 3 != 0;
              Case c = {Ts[ti], Hs[hi], Ds[ki], Ds[vi], R,  gate,
                        beta,   back,   layout, only,   sp, Cs_all};
              run_case(&c);
            }
}

/* Long sequences: many chunks. */
static void test_long(void **st) {
  (void)st;
  for (int64_t R = 1; R <= 3; R++)
    for (int gate = 0; gate < 2; gate++)
      for (int sp = 0; sp <= gate; sp++) {
        Case a = {1000, 3, 16, 16, R, gate, BETA_SIGMOID, sp, (int)R % 3, 0, sp, Cs_all};
        run_case(&a);
        Case b = {1000, 1, 64, 64, R, gate, BETA_SIGMOID, !sp, (int)(R + 1) % 3, 0, sp, Cs_all};
        run_case(&b);
        Case e = {1000, 3, 64, 5, R, gate, BETA_SIGMOID, sp, LAYOUT_PACKED, 1, sp, Cs_all};
        run_case(&e);
        Case f = {1000, 1, 5, 64, R, gate, BETA_SIGMOID, !sp, LAYOUT_GAP, !sp, sp, Cs_all};
        run_case(&f);
      }
}

/* beta = 2: every factor a reflection (orthogonal for unit keys), so
 * nothing decays without a gate and errors are not damped. */
static void test_reflections(void **st) {
  (void)st;
  for (int64_t R = 1; R <= 3; R++)
    for (int gate = 0; gate < 2; gate++) {
      Case a = {1000, 1, 64, 64, R, gate, BETA_TWO, gate, LAYOUT_PACKED, 0, 0, Cs_all};
      run_case(&a);
      Case b = {300, 3, 5, 16, R, gate, BETA_TWO, !gate, LAYOUT_FACTOR_MAJOR, 0, gate, Cs_all};
      run_case(&b);
    }
}

/* Chunk lengths off the register tiles' 6 rows and the 16-float panels. */
static void test_odd_chunks(void **st) {
  (void)st;
  static const int64_t Cs[] = {2, 3, 5, 7, 11, 17, 33, 100, -1};
  for (int64_t R = 1; R <= 3; R++)
    for (int gate = 0; gate < 2; gate++) {
      Case c = {263, 2, 20, 32, R, gate, BETA_SIGMOID, gate, (int)R % 3, 0, gate, Cs};
      run_case(&c);
    }
}

/* Every gate exactly 0 and R = 1: the state is b v k^T of the last token,
 * and the output b_t v_t (q_t . k_t), whatever came before (the initial
 * state is huge and must vanish). */
static void test_all_gates_zero(void **st) {
  (void)st;
  const int64_t H = 2, K = 8, V = 3, T = 40;
  float *q = falloc(T * H * K), *k = falloc(T * H * K), *v = falloc(T * H * V);
  float *b = falloc(T * H), *lg = falloc(T * H), *S = falloc(H * V * K), *o = falloc(T * H * V);
  float *work = falloc(rt_cpu_delta_work(H, K, V, 1, 16));
  for (int64_t i = 0; i < T * H * K; i++) {
    q[i] = (float)uval((uint64_t)i, 11);
    k[i] = (float)uval((uint64_t)i, 12);
  }
  for (int64_t i = 0; i < T * H; i++) {
    normalize(k + i * K, K);
    b[i] = (float)(0.5 + 0.4 * uval((uint64_t)i, 14));
    lg[i] = -INFINITY;
  }
  for (int64_t i = 0; i < T * H * V; i++) v[i] = (float)uval((uint64_t)i, 13);
  for (int64_t i = 0; i < H * V * K; i++) S[i] = 1e30f;
  rt_cpu_delta(T, H, K, V, 1, q, H * K, k, H * K, 0, v, H * V, 0, b, H, 0, lg, H, S, o, H * V, 16,
               work);
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      double dot = 0;
      for (int64_t j = 0; j < K; j++)
        dot += (double)q[(t * H + h) * K + j] * k[(t * H + h) * K + j];
      for (int64_t r = 0; r < V; r++)
        assert_true(fabs(o[(t * H + h) * V + r] - b[t * H + h] * v[(t * H + h) * V + r] * dot) <=
                    1e-5);
    }
  for (int64_t h = 0; h < H; h++)
    for (int64_t r = 0; r < V; r++)
      for (int64_t j = 0; j < K; j++) {
        double want = (double)b[(T - 1) * H + h] * v[((T - 1) * H + h) * V + r] *
                      k[((T - 1) * H + h) * K + j];
        assert_true(fabs(S[(h * V + r) * K + j] - want) <= 1e-6);
      }
  free(q);
  free(k);
  free(v);
  free(b);
  free(lg);
  free(S);
  free(o);
  free(work);
}

/* A gate of exactly 0 at token z cuts the history: outputs from z on do not
 * depend on the initial state or on the tokens before z, bit for bit (the
 * cut terms are exact zeros), and nothing is NaN although the cut state was
 * huge. For R = 1, 2, 3, z inside a chunk and on a chunk's first token. */
static void test_zero_gate_cuts_history(void **st) {
  (void)st;
  const int64_t H = 2, K = 32, V = 16, T = 150, C = 16;
  for (int64_t R = 1; R <= 3; R++)
    for (int zi = 0; zi < 2; zi++) {
      const int64_t z = zi ? 64 : 70;
      float *q = falloc(T * H * K), *k[2] = {falloc(T * R * H * K), falloc(T * R * H * K)};
      float *v[2] = {falloc(T * R * H * V), falloc(T * R * H * V)}, *b = falloc(T * R * H);
      float *lg = falloc(T * H), *o[2] = {falloc(T * H * V), falloc(T * H * V)}, *S[2];
      for (int64_t i = 0; i < T * H * K; i++) q[i] = (float)uval((uint64_t)i, 21);
      for (int64_t i = 0; i < T * R * H * K; i++) {
        k[0][i] = (float)uval((uint64_t)i, 22);
        k[1][i] = i < z * R * H * K ? (float)uval((uint64_t)i, 23) : k[0][i];
      }
      for (int64_t i = 0; i < T * R * H; i++) {
        normalize(k[0] + i * K, K);
        normalize(k[1] + i * K, K);
        b[i] = (float)(1.0 / (1.0 + exp(-3.0 * uval((uint64_t)i, 26))));
      }
      for (int64_t i = 0; i < T * R * H * V; i++) {
        v[0][i] = (float)uval((uint64_t)i, 24);
        v[1][i] = i < z * R * H * V ? (float)uval((uint64_t)i, 27) : v[0][i];
      }
      for (int64_t i = 0; i < T * H; i++) lg[i] = i / H == z ? -INFINITY : gate_log((uint64_t)i, 0);
      float *work = falloc(rt_cpu_delta_work(H, K, V, R, C));
      for (int r = 0; r < 2; r++) {
        S[r] = falloc(H * V * K);
        for (int64_t i = 0; i < H * V * K; i++)
          S[r][i] = r ? 1e20f * (float)uval((uint64_t)i, 25) : 0.0f;
        rt_cpu_delta(T, H, K, V, R, q, H * K, k[r], R * H * K, H * K, v[r], R * H * V, H * V, b,
                     R * H, H, lg, H, S[r], o[r], H * V, C, work);
      }
      for (int64_t i = 0; i < T * H * V; i++) {
        assert_true(isfinite(o[0][i]) && isfinite(o[1][i]));
        if (i >= z * H * V) assert_true(o[0][i] == o[1][i]);
      }
      for (int64_t i = 0; i < H * V * K; i++) assert_true(S[0][i] == S[1][i]);
      free(q);
      free(b);
      free(lg);
      free(work);
      for (int r = 0; r < 2; r++) {
        free(k[r]);
        free(v[r]);
        free(o[r]);
        free(S[r]);
      }
    }
}

/* T = 0 leaves the state and the outputs alone; rejected shapes ask for no
 * scratch and do nothing; C < 1 is the default chunk length. */
static void test_empty_and_invalid(void **st) {
  (void)st;
  float S[4] = {1, 2, 3, 4}, o[2] = {7, 7}, q[2] = {1, 0}, k[2] = {1, 0}, v[2] = {1, 1};
  float b[1] = {0.5f};
  float *work = falloc(rt_cpu_delta_work(1, 2, 2, 1, 0));
  rt_cpu_delta(0, 1, 2, 2, 1, q, 2, k, 2, 0, v, 2, 0, b, 1, 0, NULL, 0, S, o, 2, 4, work);
  assert_true(S[0] == 1 && S[1] == 2 && S[2] == 3 && S[3] == 4 && o[0] == 7);
  assert_int_equal(rt_cpu_delta_work(0, 4, 4, 1, 16), 0);
  assert_int_equal(rt_cpu_delta_work(1, 0, 4, 1, 16), 0);
  assert_int_equal(rt_cpu_delta_work(1, 4, 0, 1, 16), 0);
  assert_int_equal(rt_cpu_delta_work(1, 4, 4, 0, 16), 0);
  assert_int_equal(rt_cpu_delta_work(1, 4, 4, 4, 1 << 13), 0); /* C R over 2^14 */
  rt_cpu_delta(1, 1, 2, 2, 0, q, 2, k, 2, 0, v, 2, 0, b, 1, 0, NULL, 0, S, o, 2, 4, work);
  assert_true(S[0] == 1 && o[0] == 7);
  /* C < 1: RT_CPU_DELTA_CHUNK micro-steps, R of them per token. */
  assert_int_equal(rt_cpu_delta_work(1, 2, 2, 1, 0),
                   rt_cpu_delta_work(1, 2, 2, 1, RT_CPU_DELTA_CHUNK));
  assert_int_equal(rt_cpu_delta_work(1, 2, 2, 2, -1),
                   rt_cpu_delta_work(1, 2, 2, 2, RT_CPU_DELTA_CHUNK / 2));
  assert_int_equal(rt_cpu_delta_work(1, 2, 2, 100, 0), rt_cpu_delta_work(1, 2, 2, 100, 1));
  /* One token, k = e0, b = 1/2: column 0 of S becomes (S e0 + v) / 2, and
   * o = S q its column 0. */
  rt_cpu_delta(1, 1, 2, 2, 1, q, 2, k, 2, 0, v, 2, 0, b, 1, 0, NULL, 0, S, o, 2, 0, work);
  assert_true(S[0] == 1 && S[1] == 2 && S[2] == 2 && S[3] == 4 && o[0] == 1 && o[1] == 2);
  free(work);
}

/* Prints how close the kernel came to the step loop's own error over all
 * the cases above (run last). */
static void test_error_ratio(void **st) {
  (void)st;
  printf("largest error ratio, chunked / float32 step loop: %.2f where C R <= K; where C R > K "
         "%.2f, and %.2f with beta = 2; largest error: %.2f eps scale\n",
         worst_ratio, worst_ratio_dep, worst_ratio_dep_reflect, worst_units);
  assert_true(worst_ratio < 3.0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_invalid),
      cmocka_unit_test(test_all_gates_zero),
      cmocka_unit_test(test_zero_gate_cuts_history),
      cmocka_unit_test(test_shapes),
      cmocka_unit_test(test_long),
      cmocka_unit_test(test_reflections),
      cmocka_unit_test(test_odd_chunks),
      cmocka_unit_test(test_error_ratio),
  };
  return TU_RUN_PER_ISA(tests);
}
