/* cpu_attention.c - causal softmax attention over one sequence (the IR's
 * attn, a model's causal_attention), per head, on the calling thread,
 * without materializing the T x T score matrix.
 *
 * Token t's output is sum_{s <= t} p_s v_s with p = softmax_s(scale q_t . k_s).
 * Queries are taken in tiles of QT tokens and keys in blocks of KB; for each
 * (tile, block) the scores are QT x KB dot products, and each query keeps a
 * running maximum m, a running sum l of exp(score - m) and an accumulator
 * of exp(score - m) v (the online softmax): when a block raises m, the sum
 * and the accumulator are rescaled by exp(m_old - m_new), so every exponent
 * is at most 0 and nothing overflows. A tile reads each key and value once
 * for all its queries. Blocks past a tile's last query are skipped; in a
 * block that a tile's queries straddle, the scores of keys after a query
 * are computed with the rest but get weight 0 (about QT*KB/2 wasted dot
 * products per tile, next to T*QT/2 useful ones).
 *
 * The two products of a (tile, block) pair, the scores Q K^T and the
 * weights times the values, are the runtime's GEMM (rt_cpu_sgemm_w, on the
 * calling thread) over contiguous copies of the tile's queries and the
 * block's keys and values (a reversed sequence has negative strides); the
 * weights' exponentials are a polynomial (exp_poly) rather than libm calls,
 * so the softmax loops vectorize.
 */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* As in cpu_gemm.c: under -std=c11 GCC would not contract a * b + c. And
 * nothing here reads floating-point exception flags, so a comparison that
 * could raise one may become a vector select (if-conversion). */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast", "no-trapping-math")
#endif

enum { QT = 64, KB = 128 };

int64_t rt_cpu_attention_work(int64_t K, int64_t V) {
  if (K < 0 || V < 1) return 0;
  return (int64_t)QT * (2 * V + KB + 2 + K) + KB * (K + V);
}

/* e^x for x <= 0 (the online softmax's exponents): x = n ln2 + r with
 * |r| <= ln2/2, e^r by a degree-6 polynomial (relative error about 2e-7),
 * 2^n built in the exponent bits. Below -87 (and for -inf) it returns
 * e^-87, about 1.6e-38: a weight that vanishes beside the block's largest,
 * which is 1; a NaN stays NaN. Branch-free and call-free, so the loops
 * over a block's scores vectorize: n is rounded by adding and subtracting
 * 1.5 * 2^23. */
static inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : x;
  float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693145751953125f - n * 1.428606765330187e-6f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = ((int32_t)n + 127) * (1 << 23);
  float b;
  memcpy(&b, &e, sizeof b);
  return p * b;
}

/* x[j] = e^(x[j] - shift) for j < n. */
static inline void exp_shifted(float *restrict x, int64_t n, float shift) {
  for (int64_t j = 0; j < n; j++) x[j] = exp_poly(x[j] - shift);
}

/* The largest and the sum of x[0..n), in 8 lanes (a float reduction in
 * one accumulator would not vectorize: its order is part of its value). */
#define LANES 8
static inline float lane_max(const float *x, int64_t n) {
  float p[LANES];
  for (int u = 0; u < LANES; u++) p[u] = -INFINITY;
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int u = 0; u < LANES; u++) p[u] = x[j + u] > p[u] ? x[j + u] : p[u];
  for (; j < n; j++) p[0] = x[j] > p[0] ? x[j] : p[0];
  float r = p[0];
  for (int u = 1; u < LANES; u++) r = p[u] > r ? p[u] : r;
  return r;
}
static inline float lane_sum(const float *x, int64_t n) {
  float p[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int u = 0; u < LANES; u++) p[u] += x[j + u];
  for (; j < n; j++) p[0] += x[j];
  float r = 0;
  for (int u = 0; u < LANES; u++) r += p[u];
  return r;
}

typedef struct Attn {
  int64_t T, H, K, V;
  const float *q, *k, *v;
  int64_t ldq, ldk, ldv, ldo;
  float *o;
  float scale;
  float *work;
} Attn;

/* The online-softmax update of one tile's rows from a block of scores
 * S[nq, KB] (row i valid for its first upto_i keys): rescales the
 * accumulators, turns the scores into weights in place (0 past upto_i). */
#define SOFTMAX_BODY                                                                               \
  for (int64_t i = 0; i < nq; i++) {                                                               \
    int64_t upto = t0 + i - j0 + 1;                                                                \
    if (upto > nk) upto = nk;                                                                      \
    float *si = S + i * KB;                                                                        \
    if (upto <= 0) {                                                                               \
      for (int64_t j = 0; j < nk; j++) si[j] = 0;                                                  \
      continue;                                                                                    \
    }                                                                                              \
    float mb = lane_max(si, upto), mn = mb > m[i] ? mb : m[i];                                     \
    float alpha = exp_poly(m[i] - mn);                                                             \
    float *ai = acc + i * V;                                                                       \
    if (alpha != 1.0f)                                                                             \
      for (int64_t c = 0; c < V; c++) ai[c] *= alpha;                                              \
    exp_shifted(si, upto, mn);                                                                     \
    for (int64_t j = upto; j < nk; j++) si[j] = 0;                                                 \
    float sum = lane_sum(si, upto);                                                                \
    l[i] = l[i] * alpha + sum;                                                                     \
    m[i] = mn;                                                                                     \
  }

#define BODY                                                                                       \
  const int64_t T = a->T, K = a->K, V = a->V;                                                      \
  float *acc = a->work;    /* [QT, V] running sums of weights times values */                      \
  float *S = acc + QT * V; /* [QT, KB] scores, then weights */                                     \
  float *m = S + QT * KB, *l = m + QT;                                                             \
  float *Qs = l + QT;      /* [QT, K] the tile's queries, scaled */                                \
  float *Kb = Qs + QT * K; /* [KB, K] the key block */                                             \
  float *Vb = Kb + KB * K; /* [KB, V] the value block */                                           \
  float *P = Vb + KB * V;  /* [QT, V] this block's weights times values */                         \
  for (int64_t h = 0; h < a->H; h++) {                                                             \
    const float *qh = a->q + h * K, *kh = a->k + h * K, *vh = a->v + h * V;                        \
    float *oh = a->o + h * V;                                                                      \
    for (int64_t t0 = 0; t0 < T; t0 += QT) {                                                       \
      int64_t nq = T - t0 < QT ? T - t0 : QT;                                                      \
      for (int64_t i = 0; i < nq; i++) {                                                           \
        m[i] = -INFINITY;                                                                          \
        l[i] = 0;                                                                                  \
        for (int64_t c = 0; c < K; c++) Qs[i * K + c] = qh[(t0 + i) * a->ldq + c] * a->scale;      \
      }                                                                                            \
      memset(acc, 0, sizeof(float) * (size_t)(nq * V));                                            \
      int64_t tlast = t0 + nq - 1;                                                                 \
      for (int64_t j0 = 0; j0 <= tlast; j0 += KB) {                                                \
        int64_t nk = tlast + 1 - j0 < KB ? tlast + 1 - j0 : KB;                                    \
        for (int64_t j = 0; j < nk; j++) {                                                         \
          memcpy(Kb + j * K, kh + (j0 + j) * a->ldk, sizeof(float) * (size_t)K);                   \
          memcpy(Vb + j * V, vh + (j0 + j) * a->ldv, sizeof(float) * (size_t)V);                   \
        }                                                                                          \
        if (K > 0)                                                                                 \
          rt_cpu_sgemm_w(nq, nk, K, Qs, K, Kb, K, 1, NULL, S, KB);                                 \
        else                                                                                       \
          memset(S, 0, sizeof(float) * (size_t)(QT * KB));                                         \
        SOFTMAX_BODY                                                                               \
        rt_cpu_sgemm_w(nq, V, nk, S, KB, Vb, V, 0, NULL, P, V);                                    \
        for (int64_t e = 0; e < nq * V; e++) acc[e] += P[e];                                       \
      }                                                                                            \
      for (int64_t i = 0; i < nq; i++) {                                                           \
        float *ot = oh + (t0 + i) * a->ldo;                                                        \
        float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;                                                 \
        for (int64_t c = 0; c < V; c++) ot[c] = acc[i * V + c] * inv;                              \
      }                                                                                            \
    }                                                                                              \
  }

static void run_generic(const Attn *a) {
  BODY
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void run_avx2(const Attn *a) {
  BODY
}
#endif

void rt_cpu_attention(int64_t T, int64_t H, int64_t K, int64_t V, const float *q, int64_t ldq,
                      const float *k, int64_t ldk, const float *v, int64_t ldv, float *o,
                      int64_t ldo, float scale, float *work) {
  if (T < 1 || H < 1 || K < 0 || V < 1) return;
  Attn a = {T, H, K, V, q, k, v, ldq, ldk, ldv, ldo, o, scale, work};
  void (*run)(const Attn *) = run_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  /* As cpu_linattn.c: the CPU's own answer, XCR0 included. */
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) run = run_avx2;
#endif
  run(&a);
}
