/* test_cpu_linattn.c - the chunkwise-parallel linear attention kernel
 * (runtime/cpu_linattn.c) against the recurrence run token by token in
 * float64: every head count, key and value width, chunk length and sequence
 * length of the brief, scalar, per-key and no gates, inclusive and exclusive
 * readouts, a nonzero initial state, sequences read backwards (negative
 * strides), state-only calls, and gates near 0, exactly 0 and just above 1.
 *
 * Tolerance. A float32 evaluation of the recurrence cannot match float64
 * exactly: the step loop rounds once or twice per token and term, the
 * chunked form sums the same terms in another order (over K and over the
 * chunk's tokens inside its products) and builds decays as products of up
 * to C gates. So each case also runs the plain float32 step loop on the
 * same inputs, and the kernel passes if its largest error is within
 *   2 * (the step loop's error) + 8 eps (sqrt(K) + sqrt(C) + 2) scale,
 * scale = the largest |value| in float64 (outputs and state separately):
 * sqrt(K) for the dot products over keys, sqrt(C) for the sums over a
 * chunk's tokens and the products of its gates (rounding errors that add
 * up like a random walk), 2 for exp and the last roundings. The floor
 * matters where the step loop happens to be nearly exact (K = V = 1, a gate
 * of 0 shortly before the end). Measured over all the cases here (set
 * LINATTN_STATS=1 to print them): the kernel's error is at most 14 eps
 * scale (K = V = 1, C = 16, where the floor is 56), at most 5.1 eps scale
 * at K = 64 (floor 88 or more), and where the step loop's error is above
 * 2 eps scale, at most 1.72 times it (test_error_ratio). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_cpu.h"
#include "testutil.h"
#include "per_isa.h"

enum { GATE_NONE, GATE_SCALAR, GATE_KEY };
static const char *const gate_names[] = {"none", "scalar", "per-key"};

typedef struct Case {
  int64_t T, H, K, V, C;
  int gate, exclusive;
  int backwards;  /* token t stored at T-1-t, strides negative */
  int state_only; /* q == NULL */
  int specials;   /* gates of exactly 0, about e^-30 and e^0.01 mixed in */
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
 * down to -0.7), and with specials some -inf, -30 and +0.01. */
static float gate_log(uint64_t i, int specials) {
  if (specials) {
    uint64_t m = (uint64_t)((uval(i, 77) + 1.0) * 1e6);
    if (m % 41 == 0) return -INFINITY;
    if (m % 37 == 1) return -30.0f;
    if (m % 23 == 2) return 0.01f;
  }
  double u = (uval(i, 5) + 1.0) / 2.0;
  return (float)(-0.7 * u * u * u * u);
}

/* The inputs of one case in logical token order, and the outputs. */
typedef struct Data {
  int64_t Kg;
  float *q, *k, *v, *lg, *S0; /* [T, H, K], ..., [H, V, K] */
} Data;

static float *falloc(int64_t n) {
  float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  assert_non_null(p);
  return p;
}

static Data make_data(const Case *c) {
  Data d;
  d.Kg = c->gate == GATE_KEY ? c->K : 1;
  int64_t HK = c->H * c->K, HV = c->H * c->V;
  d.q = falloc(c->T * HK);
  d.k = falloc(c->T * HK);
  d.v = falloc(c->T * HV);
  d.lg = falloc(c->T * c->H * d.Kg);
  d.S0 = falloc(HV * c->K);
  for (int64_t i = 0; i < c->T * HK; i++) {
    d.q[i] = (float)uval((uint64_t)i, 1);
    d.k[i] = (float)(uval((uint64_t)i, 2) / sqrt((double)c->K));
  }
  for (int64_t i = 0; i < c->T * HV; i++) d.v[i] = (float)uval((uint64_t)i, 3);
  for (int64_t i = 0; i < c->T * c->H * d.Kg; i++) d.lg[i] = gate_log((uint64_t)i, c->specials);
  for (int64_t i = 0; i < HV * c->K; i++) d.S0[i] = (float)(0.5 * uval((uint64_t)i, 4));
  return d;
}

static void free_data(Data *d) {
  free(d->q);
  free(d->k);
  free(d->v);
  free(d->lg);
  free(d->S0);
}

/* The recurrence token by token, in double (f64 = 1) or in float: o is
 * [T, H, V], S [H, V, K] (initialised from d->S0). */
static void step_loop(const Case *c, const Data *d, int f64, double *o, double *S) {
  const int64_t H = c->H, K = c->K, V = c->V, Kg = d->Kg;
  float *Sf = falloc(H * V * K);
  for (int64_t i = 0; i < H * V * K; i++) {
    S[i] = d->S0[i];
    Sf[i] = d->S0[i];
  }
  for (int64_t t = 0; t < c->T; t++)
    for (int64_t h = 0; h < H; h++) {
      const float *q = d->q + (t * H + h) * K, *k = d->k + (t * H + h) * K;
      const float *v = d->v + (t * H + h) * V, *lg = d->lg + (t * H + h) * Kg;
      for (int64_t r = 0; r < V; r++) {
        double *s = S + (h * V + r) * K;
        float *sf = Sf + (h * V + r) * K;
        double acc = 0;
        float accf = 0;
        if (c->exclusive)
          for (int64_t j = 0; j < K; j++) {
            acc += s[j] * q[j];
            accf += sf[j] * q[j];
          }
        for (int64_t j = 0; j < K; j++) {
          float l = c->gate == GATE_NONE ? 0.0f : lg[Kg == 1 ? 0 : j];
          s[j] = s[j] * exp((double)l) + (double)v[r] * k[j];
          sf[j] = sf[j] * expf(l) + v[r] * k[j];
        }
        if (!c->exclusive)
          for (int64_t j = 0; j < K; j++) {
            acc += s[j] * q[j];
            accf += sf[j] * q[j];
          }
        o[(t * H + h) * V + r] = f64 ? acc : accf;
      }
    }
  if (!f64)
    for (int64_t i = 0; i < H * V * K; i++) S[i] = Sf[i];
  free(Sf);
}

/* Places logical rows [T, width] into a buffer with row stride ld (padding
 * between rows set to `fill`), reversed if backwards; returns the pointer
 * and stride to pass for token 0. */
static float *place(const Case *c, const float *rows, int64_t width, int64_t ld, float fill,
                    float **buf, int64_t *ld_out) {
  int64_t T = c->T;
  *buf = falloc(T * ld + 1);
  for (int64_t i = 0; i < T * ld + 1; i++) (*buf)[i] = fill;
  for (int64_t t = 0; t < T; t++) {
    int64_t p = c->backwards ? T - 1 - t : t;
    if (rows) memcpy(*buf + p * ld, rows + t * width, sizeof(float) * (size_t)width);
  }
  *ld_out = c->backwards ? -ld : ld;
  return c->backwards && T > 0 ? *buf + (T - 1) * ld : *buf;
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
 * (where the step loop's error is not tiny), reported by test_error_ratio. */
static double worst_ratio;

/* Runs one case and checks its outputs and final state. */
static void run_case(const Case *c) {
  const int64_t T = c->T, H = c->H, K = c->K, V = c->V;
  Data d = make_data(c);
  int64_t nO = T * H * V, nS = H * V * K;
  double *o64 = calloc((size_t)(nO + 1), sizeof(double)), *S64 = calloc((size_t)nS, sizeof(double));
  double *o32 = calloc((size_t)(nO + 1), sizeof(double)), *S32 = calloc((size_t)nS, sizeof(double));
  double *ok = calloc((size_t)(nO + 1), sizeof(double)), *Sk = calloc((size_t)nS, sizeof(double));
  assert_true(o64 && S64 && o32 && S32 && ok && Sk);
  step_loop(c, &d, 1, o64, S64);
  step_loop(c, &d, 0, o32, S32);

  /* Strides wider than the rows; o's padding must survive. */
  const float sentinel = 12345.0f;
  float *qb, *kb, *vb, *gb, *ob;
  int64_t ldq, ldk, ldv, ldg, ldo;
  const float *q = place(c, d.q, H * K, H * K + 3, 0, &qb, &ldq);
  const float *k = place(c, d.k, H * K, H * K + 1, 0, &kb, &ldk);
  const float *v = place(c, d.v, H * V, H * V + 2, 0, &vb, &ldv);
  const float *lg = place(c, d.lg, H * d.Kg, H * d.Kg + 1, 0, &gb, &ldg);
  float *o = place(c, NULL, H * V, H * V + 5, sentinel, &ob, &ldo);
  float *S = falloc(nS);
  memcpy(S, d.S0, sizeof(float) * (size_t)nS);
  /* Exactly the scratch asked for, one float off 64-byte alignment, with a
   * canary after it. */
  int64_t nw = rt_cpu_linattn_work(H, K, V, d.Kg, c->C);
  assert_true(nw > 0);
  float *wb = falloc(nw + 1 + 16);
  for (int64_t i = nw + 1; i < nw + 1 + 16; i++) wb[i] = sentinel;
  rt_cpu_linattn(T, H, K, V, c->state_only ? NULL : q, ldq, k, ldk, v, ldv,
                 c->gate == GATE_NONE ? NULL : lg, ldg, d.Kg, S, o, ldo, c->C, c->exclusive,
                 wb + 1);
  for (int64_t i = nw + 1; i < nw + 1 + 16; i++) assert_true(wb[i] == sentinel);

  for (int64_t t = 0; t < T; t++) {
    int64_t p = c->backwards ? T - 1 - t : t;
    for (int64_t j = 0; j < H * V + 5; j++) {
      float x = ob[p * (H * V + 5) + j];
      if (j >= H * V || c->state_only)
        assert_true(x == sentinel);
      else
        ok[t * H * V + j] = x;
    }
  }
  for (int64_t i = 0; i < nS; i++) Sk[i] = S[i];

  const double eps = 1.1920929e-7;
  double floor_units = 8 * eps * (sqrt((double)K) + sqrt((double)c->C) + 2);
  struct {
    const char *what;
    const double *x, *x32, *ref;
    int64_t n;
  } checks[] = {{"output", ok, o32, o64, c->state_only ? 0 : nO}, {"state", Sk, S32, S64, nS}};
  for (int i = 0; i < 2; i++) {
    double scale = max_abs(checks[i].ref, checks[i].n);
    double err = max_err(checks[i].x, checks[i].ref, checks[i].n);
    double err32 = max_err(checks[i].x32, checks[i].ref, checks[i].n);
    double bound = 2 * err32 + floor_units * scale;
    if (err32 > 2 * eps * scale && err / err32 > worst_ratio) worst_ratio = err / err32;
    if (getenv("LINATTN_STATS"))
      printf("STAT T=%lld H=%lld K=%lld V=%lld C=%lld g=%d sp=%d ex=%d %s err/eps/scale=%.2f "
             "err32=%.2f ratio=%.2f floor=%.2f\n",
             (long long)T, (long long)H, (long long)K, (long long)V, (long long)c->C, c->gate,
             c->specials, c->exclusive, checks[i].what, err / eps / scale, err32 / eps / scale,
             err / err32, floor_units / eps);
    if (!(err <= bound)) {
      print_error("T=%lld H=%lld K=%lld V=%lld C=%lld gate=%s%s excl=%d back=%d state_only=%d: "
                  "%s error %g > bound %g (step loop %g, scale %g)\n",
                  (long long)T, (long long)H, (long long)K, (long long)V, (long long)c->C,
                  gate_names[c->gate], c->specials ? "+specials" : "", c->exclusive, c->backwards,
                  c->state_only, checks[i].what, err, bound, err32, scale);
      fail();
    }
  }
  free(o64);
  free(S64);
  free(o32);
  free(S32);
  free(ok);
  free(Sk);
  free(qb);
  free(kb);
  free(vb);
  free(gb);
  free(ob);
  free(S);
  free(wb);
  free_data(&d);
}

static const int64_t Hs[] = {1, 3}, Ds[] = {1, 5, 16, 64}, Cs[] = {1, 4, 16, 64};

/* Every H, K, V and C with the short lengths (chunk edges at C = 64), every
 * gate kind and readout; directions and state-only calls alternate over
 * the lengths so that each shape sees both. */
static void test_shapes(void **st) {
  (void)st;
  const int64_t Ts[] = {0, 1, 2, 3, 7, 63, 64, 65};
  for (int hi = 0; hi < 2; hi++)
    for (int ki = 0; ki < 4; ki++)
      for (int vi = 0; vi < 4; vi++)
        for (int ci = 0; ci < 4; ci++)
          for (int gate = 0; gate < 3; gate++)
            for (int ex = 0; ex < 2; ex++)
              for (int ti = 0; ti < 8; ti++) {
                Case c = {Ts[ti], Hs[hi], Ds[ki], Ds[vi],      Cs[ci],
                          gate,   ex,     ti % 2, ti % 4 == 2, gate != GATE_NONE && ti % 3 != 0};
                run_case(&c);
              }
}

/* Long sequences: many chunks (and many sub-chunks of the per-key form). */
static void test_long(void **st) {
  (void)st;
  const int64_t Ts[] = {200, 1000};
  for (int ci = 0; ci < 4; ci++)
    for (int gate = 0; gate < 3; gate++)
      for (int ex = 0; ex < 2; ex++)
        for (int sp = 0; sp < 2; sp++) {
          if (gate == GATE_NONE && sp) continue;
          Case a = {Ts[1], 3, 16, 16, Cs[ci], gate, ex, sp, 0, sp};
          run_case(&a);
          Case b = {Ts[0], 3, 64, 64, Cs[ci], gate, ex, !sp, 0, sp};
          run_case(&b);
          Case e = {Ts[0], 1, 64, 5, Cs[ci], gate, ex, 0, sp, sp};
          run_case(&e);
          Case f = {Ts[1], 1, 5, 64, Cs[ci], gate, ex, sp, !sp, sp};
          run_case(&f);
        }
}

/* Chunk lengths off the 16-token sub-chunk grid and the register tiles. */
static void test_odd_chunks(void **st) {
  (void)st;
  const int64_t Cs2[] = {2, 3, 6, 7, 15, 17, 31, 33, 100, 128};
  for (int ci = 0; ci < 10; ci++)
    for (int gate = 0; gate < 3; gate++)
      for (int ex = 0; ex < 2; ex++) {
        Case c = {263, 2, 20, 24, Cs2[ci], gate, ex, ex, 0, gate != GATE_NONE};
        run_case(&c);
      }
}

/* Every gate exactly 0: the state is v k^T of the last token, and the output
 * v_t (q_t . k_t), or v_{t-1} (q_t . k_{t-1}) when exclusive, whatever came
 * before (the initial state is huge and must vanish). */
static void test_all_gates_zero(void **st) {
  (void)st;
  const int64_t H = 2, K = 8, V = 3, T = 40;
  for (int per_key = 0; per_key < 2; per_key++)
    for (int ex = 0; ex < 2; ex++) {
      int64_t Kg = per_key ? K : 1;
      float *q = falloc(T * H * K), *k = falloc(T * H * K), *v = falloc(T * H * V);
      float *lg = falloc(T * H * Kg), *S = falloc(H * V * K), *o = falloc(T * H * V);
      float *work = falloc(rt_cpu_linattn_work(H, K, V, Kg, 16));
      for (int64_t i = 0; i < T * H * K; i++) {
        q[i] = (float)uval((uint64_t)i, 11);
        k[i] = (float)uval((uint64_t)i, 12);
      }
      for (int64_t i = 0; i < T * H * Kg; i++) lg[i] = -INFINITY;
      for (int64_t i = 0; i < T * H * V; i++) v[i] = (float)uval((uint64_t)i, 13);
      for (int64_t i = 0; i < H * V * K; i++) S[i] = 1e30f;
      rt_cpu_linattn(T, H, K, V, q, H * K, k, H * K, v, H * V, lg, H * Kg, Kg, S, o, H * V, 16, ex,
                     work);
      for (int64_t t = ex; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
          int64_t u = ex ? t - 1 : t; /* the token whose key and value are read */
          double dot = 0;
          for (int64_t j = 0; j < K; j++)
            dot += (double)q[(t * H + h) * K + j] * k[(u * H + h) * K + j];
          for (int64_t r = 0; r < V; r++)
            assert_true(fabs(o[(t * H + h) * V + r] - v[(u * H + h) * V + r] * dot) <= 1e-5);
        }
      for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < V; r++)
          for (int64_t j = 0; j < K; j++)
            assert_true(S[(h * V + r) * K + j] ==
                        v[((T - 1) * H + h) * V + r] * k[((T - 1) * H + h) * K + j]);
      free(q);
      free(k);
      free(v);
      free(lg);
      free(S);
      free(o);
      free(work);
    }
}

/* A gate of exactly 0 on every key at token z cuts the history: outputs
 * from z on (inclusive readout) do not depend on the initial state or on the
 * tokens before z, bit for bit (the cut terms are exact zeros), and nothing
 * is NaN although the cut state was huge. */
static void test_zero_gate_cuts_history(void **st) {
  (void)st;
  const int64_t H = 1, K = 32, V = 16, T = 150, z = 70;
  for (int per_key = 0; per_key < 2; per_key++) {
    int64_t Kg = per_key ? K : 1;
    float *q = falloc(T * K), *k[2] = {falloc(T * K), falloc(T * K)}, *v = falloc(T * V);
    float *lg = falloc(T * Kg), *o[2] = {falloc(T * V), falloc(T * V)}, *S[2];
    for (int64_t i = 0; i < T * K; i++) {
      q[i] = (float)uval((uint64_t)i, 21);
      k[0][i] = (float)uval((uint64_t)i, 22);
      k[1][i] = i < z * K ? (float)uval((uint64_t)i, 23) : k[0][i];
    }
    for (int64_t i = 0; i < T * V; i++) v[i] = (float)uval((uint64_t)i, 24);
    for (int64_t i = 0; i < T * Kg; i++) lg[i] = i / Kg == z ? -INFINITY : gate_log((uint64_t)i, 0);
    float *work = falloc(rt_cpu_linattn_work(H, K, V, Kg, 64));
    for (int r = 0; r < 2; r++) {
      S[r] = falloc(V * K);
      for (int64_t i = 0; i < V * K; i++) S[r][i] = r ? 1e20f * (float)uval((uint64_t)i, 25) : 0.0f;
      rt_cpu_linattn(T, H, K, V, q, K, k[r], K, v, V, lg, Kg, Kg, S[r], o[r], V, 64, 0, work);
    }
    for (int64_t i = 0; i < T * V; i++) {
      assert_true(isfinite(o[0][i]) && isfinite(o[1][i]));
      if (i >= z * V) assert_true(o[0][i] == o[1][i]);
    }
    for (int64_t i = 0; i < V * K; i++) assert_true(S[0][i] == S[1][i]);
    free(q);
    free(v);
    free(lg);
    free(work);
    for (int r = 0; r < 2; r++) {
      free(k[r]);
      free(o[r]);
      free(S[r]);
    }
  }
}

/* T = 0 leaves the state and the outputs alone; rejected shapes ask for no
 * scratch and do nothing. */
static void test_empty_and_invalid(void **st) {
  (void)st;
  float S[4] = {1, 2, 3, 4}, o[2] = {7, 7}, q[2] = {1, 1}, k[2] = {1, 1}, v[2] = {1, 1};
  float *work = falloc(rt_cpu_linattn_work(1, 2, 2, 1, 0));
  rt_cpu_linattn(0, 1, 2, 2, q, 2, k, 2, v, 2, NULL, 0, 1, S, o, 2, 4, 0, work);
  assert_true(S[0] == 1 && S[1] == 2 && S[2] == 3 && S[3] == 4 && o[0] == 7);
  assert_int_equal(rt_cpu_linattn_work(1, 4, 4, 2, 16), 0); /* Kg neither 1 nor K */
  assert_int_equal(rt_cpu_linattn_work(0, 4, 4, 1, 16), 0);
  rt_cpu_linattn(1, 1, 2, 2, q, 2, k, 2, v, 2, NULL, 0, 3, S, o, 2, 4, 0, work);
  assert_true(S[0] == 1 && o[0] == 7);
  /* C < 1 means the default chunk length, in the work size and the call. */
  assert_int_equal(rt_cpu_linattn_work(1, 2, 2, 1, 0),
                   rt_cpu_linattn_work(1, 2, 2, 1, RT_CPU_LINATTN_CHUNK));
  rt_cpu_linattn(1, 1, 2, 2, q, 2, k, 2, v, 2, NULL, 0, 1, S, o, 2, 0, 0, work);
  assert_true(S[0] == 2 && S[3] == 5 && o[0] == 5 && o[1] == 9);
  free(work);
}

/* Prints how close the kernel came to the step loop's own error over all
 * the cases above (run last). */
static void test_error_ratio(void **st) {
  (void)st;
  printf("largest error ratio, chunked / float32 step loop: %.2f\n", worst_ratio);
  assert_true(worst_ratio < 3.0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_invalid),
      cmocka_unit_test(test_all_gates_zero),
      cmocka_unit_test(test_zero_gate_cuts_history),
      cmocka_unit_test(test_shapes),
      cmocka_unit_test(test_long),
      cmocka_unit_test(test_odd_chunks),
      cmocka_unit_test(test_error_ratio),
  };
  return TU_RUN_PER_ISA(tests);
}
