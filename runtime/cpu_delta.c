/* cpu_delta.c - the chunkwise-parallel (WY / UT) form of the delta rule
 * (docs/algorithms.md, section 4; Yang et al. 2024, "Parallelizing Linear
 * Transformers with the Delta Rule over Sequence Length"), for one sequence
 * and every head, on the calling thread.
 *
 * Per head, with S: [V, K], every token t scales the state by its gate g_t
 * and then applies its R rank-one factors in order,
 *   S <- S (I - b k k^T) + b v k^T = S + b (v - S k) k^T,
 * and o_t = S q_t is read after the last. Write the R factors of a token as
 * R consecutive micro-steps m, the gate at its first (gamma_m = g_t there,
 * 1 at the others). Within a chunk of n tokens (N = n R micro-steps) let
 * Gamma_m be the product of gamma up to m and D(m, i) that over i < j <= m
 * (so D(m, m) = 1). Each micro-step adds one rank-one term, and by
 * induction
 *   S_m = Gamma_m S0 + sum_{i <= m} D(m, i) delta_i k_i^T,
 *   delta_m = b_m (v_m - Gamma_m S0 k_m - sum_{i < m} D(m, i) (k_i . k_m) delta_i),
 * S0 the state entering the chunk. The deltas (the corrected pseudo-values
 * U' = U - W S0^T of the UT transform) are the solution of one unit lower
 * triangular system,
 *   (I + L) Delta = diag(b) V - diag(b Gamma) K S0^T,   L[m, i] = b_m D(m, i) (k_m . k_i), i < m,
 * solved by blocked forward substitution: rows of MR micro-steps at a time,
 * the rows before them through a register tile (a matrix product), the small
 * triangle inside the block in registers. That is the same arithmetic as
 * forming A = (I + L)^-1 diag(b) and then W = A diag(Gamma) K and U = A V,
 * minus the products by A: the forward pass needs only U', and the
 * substitution is the backward-stable way to apply an inverse. Then
 *   O     = diag(Gamma_q) Q S0^T + ((Q K^T) (.) M) Delta   (M[t, i] = D(m_t, i) for i <= m_t,
 *                                                          m_t token t's last micro-step)
 *   S_end = Gamma_N S0 + Delta^T diag(D(N-1, .)) K
 * All matrix products with rows of 16 floats, as in cpu_linattn.c.
 *
 * The decays are products of gates over spans of tokens, never ratios of
 * cumulative products, so every factor lies in [0, 1] when the gates do. A
 * gate of exactly 0 (lg = -inf) at token z then zeroes L[m, i] for i before
 * z <= m exactly, so the substitution gives the rows from z on without a
 * trace of the earlier ones (every term they contribute is an exact zero),
 * and likewise Gamma, M and the state's decays: history is cut bit for bit.
 *
 * A chunk of a head is four passes of register tiles: the keys' Gram matrix
 * K K^T; the deltas (K S0^T, the right-hand side and the substitution in one
 * pass); the scores Q K^T; the outputs (Q S0^T plus the scores times the
 * deltas, in one pass); and the state update. Per token and head that is
 * (2 R + 1) K V multiply-adds with the state, as many as the step loop does,
 * plus about C R (R + 1) / 2 (K + V) inside the chunk: the chunked form wins
 * only by doing them in register tiles, near the FMA peak, where the step
 * loop streams the state through the caches once or twice per factor.
 *
 * Chunks run in order and, within a chunk, the heads; every head's state is
 * kept transposed ([K, V]) in the scratch for the whole call, so that the
 * products that read it (K S0^T, Q S0^T) and the one that updates it stream
 * rows of V floats. Queries and outputs are read and written in place (the
 * outputs through a padded copy when V is not a multiple of 16), keys and
 * values too when a micro-step's rows are one stride apart (R = 1, or a
 * token's factors side by side; values also only when V is a multiple of
 * 16), else through copies.
 */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* As in cpu_gemm.c and cpu_linattn.c: under -std=c11 GCC would not contract
 * a * b + c into an FMA, and the tiles would run at half speed. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* The register tiles, the transpose and the prefetch cursor, shared with
 * cpu_dplr.c. */
#include "runtime/cpu_tiles.h"

/* ---- prefetching the next head ------------------------------------------------ */

/* As in cpu_linattn.c, the inputs are prefetched a few lines at a time from
 * between the register tiles of the products, where the misses overlap the
 * arithmetic (without, H = 4, K = V = 64, C = 16 ran 15% slower); but one
 * head's slices of a chunk at a time: while head h of a chunk is computed,
 * head h + 1's (or the first head's of the next chunk), which fit in L1
 * next to the working set, where a whole chunk of every head (50 KB there)
 * does not. (Measured, the two ran at the same speed.) The cursor walks
 * token by token over the arrays present: q, lg, o (to be written), and the
 * keys, values and betas of the first PREFETCH_FACTORS factors. */
#define PREFETCH_FACTORS 3
#define PREFETCH_ARRAYS (3 + 3 * PREFETCH_FACTORS)
_Static_assert(PREFETCH_ARRAYS <= PREFETCH_MAX_ARRAYS, "the cursor holds them all");

/* ---- scratch --------------------------------------------------------------- */

/* The buffers carved from the caller's work: every head's state, then one
 * chunk of one head (the heads take turns). N = C R micro-steps at most; Np,
 * Vp are N and V rounded up to 16 (rows that are the B operand or the result
 * of a product). The padding of dl and of the states is zero; that of kt is
 * zeroed where a product reads it. */
typedef struct Scratch {
  int64_t Np, Vp;
  float *states; /* H x K x Vp: every head's state, transposed */
  float *st;     /* the state of the head at hand */
  float *kc;     /* N x K: keys, one row per micro-step (when they have no common stride) */
  float *kt;     /* K x Np: keys transposed; then times the decay to the chunk's end */
  float *dl;     /* N x Vp: values (padded, or without a common stride), then the deltas */
  float *lm;     /* N x Np: K K^T, then -L (strictly lower part) */
  float *sc;     /* C x Np: decayed scores */
  float *oc;     /* C x Vp: outputs, padded (V not a multiple of 16) */
  float *bt;     /* N: betas */
  float *fs;     /* N: -b Gamma */
  float *gt;     /* C: gates */
  float *gam;    /* C: products of the gates from the chunk start */
  float *dr;     /* Np: one row of decays */
  float *gx;     /* K: the chunk's whole decay, once per row of the state */
  Prefetch pf;
} Scratch;

/* Lays out the buffers from base (64-byte aligned) if base is not NULL, and
 * returns how many floats they take. */
static int64_t scratch_layout(int64_t H, int64_t K, int64_t V, int64_t R, int64_t C, float *base,
                              Scratch *s) {
  int64_t N = C * R, Np = round16(N), Vp = round16(V), padded = V % 16 != 0 ? C * Vp : 0;
  const int64_t sizes[] = {H * K * Vp, N * K, K * Np, N * Vp, N * Np, C * Np, padded,
                           N,          N,     C,      C,      Np,     K};
  float **ptrs[] = {&s->states, &s->kc, &s->kt, &s->dl,  &s->lm, &s->sc, &s->oc,
                    &s->bt,     &s->fs, &s->gt, &s->gam, &s->dr, &s->gx};
  _Static_assert(sizeof sizes / sizeof sizes[0] == sizeof ptrs / sizeof ptrs[0], "one size each");
  int64_t at = carve(base, sizes, ptrs, sizeof sizes / sizeof sizes[0]);
  s->Np = Np;
  s->Vp = Vp;
  return at;
}

/* The bounds keep every size far from overflow: a chunk of 2^14 micro-steps
 * already asks for a gigabyte of scratch. */
static int valid_shape(int64_t H, int64_t K, int64_t V, int64_t R, int64_t C) {
  return H >= 1 && K >= 1 && V >= 1 && R >= 1 && K <= (1 << 20) && V <= (1 << 20) &&
         H <= (1 << 20) && R <= (1 << 14) && C <= (1 << 14) && C * R <= (1 << 14);
}

/* The chunk length C < 1 stands for: RT_CPU_DELTA_CHUNK micro-steps. */
static int64_t default_chunk(int64_t C, int64_t R) {
  if (C >= 1) return C;
  return R >= 1 && R < RT_CPU_DELTA_CHUNK ? RT_CPU_DELTA_CHUNK / R : 1;
}

int64_t rt_cpu_delta_work(int64_t H, int64_t K, int64_t V, int64_t R, int64_t C) {
  C = default_chunk(C, R);
  if (!valid_shape(H, K, V, R, C)) return 0;
  Scratch s;
  /* 16 more floats let the call align its base to 64 bytes. */
  return scratch_layout(H, K, V, R, C, NULL, &s) + 16;
}

/* ---- one chunk ------------------------------------------------------------------ */

/* The arguments of rt_cpu_delta. */
typedef struct Delta {
  int64_t T, H, K, V, R, C;
  const float *q, *k, *v, *beta, *lg;
  int64_t ldq, ldk, ldkr, ldv, ldvr, ldb, ldbr, ldg, ldo;
  float *S, *o;
} Delta;

/* One chunk of one head: n tokens, N = n R micro-steps. */
typedef struct Chunk {
  int64_t n, N;
  const float *q, *k, *v; /* k, v: a row per micro-step */
  float *o;
  int64_t ldq, ldk, ldv, ldo;
} Chunk;

/* Sets up tokens t0 .. t0+n-1 of head h: the views of q and o, the gates
 * and their prefix products, the betas, the keys (a row per micro-step, and
 * transposed) and the values. Keys and values are read in place when a
 * micro-step's rows are one stride apart (R = 1, or the factors of a token
 * side by side and the tokens one after the other), values also only when
 * V is a multiple of 16; else they are copied. */
INLINE void load_chunk(const Delta *a, Scratch *s, int64_t h, int64_t t0, int64_t n, Chunk *c) {
  const int64_t K = a->K, V = a->V, R = a->R, Vp = s->Vp, Np = s->Np, N = n * R;
  c->n = n;
  c->N = N;
  c->q = a->q ? a->q + t0 * a->ldq + h * K : NULL;
  c->ldq = a->ldq;
  if (V % 16 == 0) {
    c->o = a->q ? a->o + t0 * a->ldo + h * V : NULL;
    c->ldo = a->ldo;
  } else {
    c->o = s->oc;
    c->ldo = Vp;
  }
  c->k = a->k + t0 * a->ldk + h * K;
  c->ldk = R == 1 ? a->ldk : a->ldkr;
  if (R > 1 && a->ldk != R * a->ldkr) {
    for (int64_t t = 0; t < n; t++)
      for (int64_t r = 0; r < R; r++)
        memcpy(s->kc + (t * R + r) * K, a->k + (t0 + t) * a->ldk + r * a->ldkr + h * K,
               sizeof(float) * (size_t)K);
    c->k = s->kc;
    c->ldk = K;
  }
  c->v = a->v + t0 * a->ldv + h * V;
  c->ldv = R == 1 ? a->ldv : a->ldvr;
  if (V % 16 != 0 || (R > 1 && a->ldv != R * a->ldvr)) {
    for (int64_t t = 0; t < n; t++)
      for (int64_t r = 0; r < R; r++) {
        float *d = s->dl + (t * R + r) * Vp;
        memcpy(d, a->v + (t0 + t) * a->ldv + r * a->ldvr + h * V, sizeof(float) * (size_t)V);
        for (int64_t j = V; j < Vp; j++) d[j] = 0.0f;
      }
    c->v = s->dl;
    c->ldv = Vp;
  }
  for (int64_t t = 0; t < n; t++)
    for (int64_t r = 0; r < R; r++)
      s->bt[t * R + r] = a->beta ? a->beta[(t0 + t) * a->ldb + r * a->ldbr + h] : 1.0f;
  transpose(N, K, c->k, c->ldk, s->kt, Np);
  /* The products read keys up to the next multiple of 16. */
  for (int64_t d = 0; d < K; d++)
    for (int64_t i = N; i < Np; i++) s->kt[d * Np + i] = 0.0f;
  if (!a->lg) return;
  float gamma = 1.0f;
  for (int64_t t = 0; t < n; t++) {
    float l = a->lg[(t0 + t) * a->ldg + h];
    /* Capped as cpu_linattn.c's exp is (NaN stays NaN). */
    s->gt[t] = expf(l > 88.0f ? 88.0f : l);
    gamma *= s->gt[t];
    s->gam[t] = gamma;
  }
}

/* One chunk of one head; the state s->st (transposed) is S0 on entry and
 * the chunk's final state on return. */
INLINE void chunk(const Delta *a, Scratch *s, const Chunk *c, ProductFn product) {
  const int64_t K = a->K, R = a->R, Np = s->Np, Vp = s->Vp, n = c->n, N = c->N;
  const int gated = a->lg != NULL;
  const float *gt = s->gt, *gam = s->gam;
  float *lm = s->lm, *dr = s->dr, *kt = s->kt;

  /* L: the Gram matrix of the keys (its lower triangle), then
   *   lm[m, i] = -b_m D(m, i) (k_m . k_i)   for i < m,
   * the row of decays D(m, .) carried from one micro-step to the next in dr
   * (a gate enters at a token's first micro-step). The substitution reads
   * nothing on or above the diagonal. */
  // clang-format off
  const Prod gram = {.M = N, .N = Np, .a1 = c->k, .lda1 = c->ldk, .b1 = kt, .ldb1 = Np, .k1 = K,
                     .c = lm, .ldc = Np, .mode = PROD_SET, .tri = TRI_N, .step = 1};
  // clang-format on
  product(&gram, &s->pf);
  for (int64_t m = 0; m < N; m++) {
    float *row = lm + m * Np;
    const float nb = -s->bt[m];
    if (gated) {
      if (m % R == 0)
        for (int64_t i = 0; i < m; i++) dr[i] *= gt[m / R];
      dr[m] = 1.0f;
      for (int64_t i = 0; i < m; i++) row[i] *= nb * dr[i];
    } else {
      for (int64_t i = 0; i < m; i++) row[i] *= nb;
    }
  }

  /* The deltas: the right-hand side b v - b Gamma (S0 k) and the
   * substitution, in one pass. */
  for (int64_t m = 0; m < N; m++) s->fs[m] = -s->bt[m] * (gated ? gam[m / R] : 1.0f);
  // clang-format off
  const Prod deltas = {.M = N, .N = Vp, .a1 = c->k, .lda1 = c->ldk, .b1 = s->st, .ldb1 = Vp,
                       .k1 = K, .scale1 = s->fs, .a2 = lm, .lda2 = Np, .b2 = s->dl, .ldb2 = Vp,
                       .c = s->dl, .ldc = Vp, .c0 = c->v, .ldc0 = c->ldv, .mode = PROD_SCALE,
                       .beta = s->bt, .tri = TRI_SOLVE, .step = 1};
  // clang-format on
  product(&deltas, &s->pf);

  if (c->q) {
    /* The scores of token t against the micro-steps up to its last,
     * (t + 1) R - 1, times the decays D, which for a micro-step of token
     * t' <= t are g[t'+1] ... g[t] (carried from token to token in dr).
     * Entries past (t + 1) R that the output's product reads (up to its row
     * block's end) are zeroed. */
    // clang-format off
    const Prod scores = {.M = n, .N = Np, .a1 = c->q, .lda1 = c->ldq, .b1 = kt, .ldb1 = Np,
                         .k1 = K, .c = s->sc, .ldc = Np, .mode = PROD_SET, .tri = TRI_N, .step = R};
    // clang-format on
    product(&scores, &s->pf);
    for (int64_t t = 0; t < n; t++) {
      float *row = s->sc + t * Np;
      int64_t end = min64((t / MR * MR + MR) * R, N);
      if (gated) {
        for (int64_t i = 0; i < t * R; i++) dr[i] *= gt[t];
        for (int64_t i = t * R; i < (t + 1) * R; i++) dr[i] = 1.0f;
        for (int64_t i = 0; i < t * R; i++) row[i] *= dr[i];
      }
      for (int64_t i = (t + 1) * R; i < end; i++) row[i] = 0.0f;
    }
    /* O = (Q (.) Gamma) S0^T + scores Delta, in one pass. */
    // clang-format off
    const Prod out = {.M = n, .N = Vp, .a1 = c->q, .lda1 = c->ldq, .b1 = s->st, .ldb1 = Vp,
                      .k1 = K, .scale1 = gated ? gam : NULL, .a2 = s->sc, .lda2 = Np,
                      .b2 = s->dl, .ldb2 = Vp, .k2 = N, .c = c->o, .ldc = c->ldo,
                      .mode = PROD_SET, .tri = TRI_K2, .step = R};
    // clang-format on
    product(&out, &s->pf);
  }

  /* The state: S^T = Gamma_N S0^T + (K^T diag(w)) Delta, w_i = D(N-1, i),
   * the products of the gates after micro-step i's token, from the end. */
  // clang-format off
  Prod state = {.M = K, .N = Vp, .a1 = kt, .lda1 = Np, .b1 = s->dl, .ldb1 = Vp, .k1 = N,
                .c = s->st, .ldc = Vp, .mode = PROD_ADD, .tri = TRI_NONE, .step = 1};
  // clang-format on
  if (gated) {
    float w = 1.0f;
    for (int64_t t = n - 1; t >= 0; t--) {
      for (int64_t r = 0; r < R; r++) dr[t * R + r] = w;
      w *= gt[t];
    }
    for (int64_t d = 0; d < K; d++) {
      for (int64_t i = 0; i < N; i++) kt[d * Np + i] *= dr[i];
      s->gx[d] = w;
    }
    state.mode = PROD_SCALE;
    state.beta = s->gx;
  }
  product(&state, &s->pf);
}

/* Points the cursor at head h's slices of tokens t0 .. t0+n-1 (the outputs
 * too, to be written). */
static void prefetch_start(const Delta *a, Prefetch *p, int64_t h, int64_t t0, int64_t n) {
  p->tokens = n;
  if (n <= 0) return;
  p->narrays = 0;
  const int64_t nf = min64(a->R, PREFETCH_FACTORS);
  for (int i = 0; i < PREFETCH_ARRAYS; i++) {
    const float *base = NULL;
    int64_t ld = 0, width = 0;
    if (i == 0) {
      base = a->q, ld = a->ldq, width = a->K;
    } else if (i == 1) {
      base = a->lg, ld = a->ldg, width = 1;
    } else if (i == 2) {
      base = a->q ? a->o : NULL, ld = a->ldo, width = a->V;
    } else {
      int64_t f = (i - 3) / 3, which = (i - 3) % 3;
      if (f >= nf) continue;
      if (which == 0)
        base = a->k + f * a->ldkr, ld = a->ldk, width = a->K;
      else if (which == 1)
        base = a->v + f * a->ldvr, ld = a->ldv, width = a->V;
      else
        base = a->beta ? a->beta + f * a->ldbr : NULL, ld = a->ldb, width = 1;
    }
    prefetch_add(p, base, ld, h * width, width, t0);
  }
  p->arr = 0;
}

/* ---- all chunks, all heads -------------------------------------------------------------- */

/* Chunks in order and, within a chunk, the heads (as in cpu_linattn.c: the
 * heads' slices of a token's rows lie side by side, so a chunk reads its
 * rows whole). Every head's state stays in the scratch. */
INLINE void run_body(const Delta *a, Scratch *s, ProductFn product) {
  const int64_t H = a->H, K = a->K, V = a->V, Vp = s->Vp;
  states_in(H, K, V, Vp, a->S, s->states);
  for (int64_t t0 = 0; t0 < a->T; t0 += a->C) {
    int64_t n = min64(a->C, a->T - t0);
    for (int64_t h = 0; h < H; h++) {
      /* The next head's slices of this chunk, or the first head's of the
       * next chunk, come in while this one is computed. */
      if (h + 1 < H)
        prefetch_start(a, &s->pf, h + 1, t0, n);
      else
        prefetch_start(a, &s->pf, 0, t0 + n, min64(a->C, a->T - t0 - n));
      Chunk c;
      load_chunk(a, s, h, t0, n, &c);
      s->st = s->states + h * K * Vp;
      chunk(a, s, &c, product);
      if (a->q && c.o == s->oc)
        for (int64_t i = 0; i < n; i++)
          memcpy(a->o + (t0 + i) * a->ldo + h * V, s->oc + i * Vp, sizeof(float) * (size_t)V);
    }
  }
  states_out(H, K, V, Vp, s->states, a->S);
}

TILES_VARIANTS(Delta)

void rt_cpu_delta(int64_t T, int64_t H, int64_t K, int64_t V, int64_t R, const float *q,
                  int64_t ldq, const float *k, int64_t ldk, int64_t ldkr, const float *v,
                  int64_t ldv, int64_t ldvr, const float *beta, int64_t ldb, int64_t ldbr,
                  const float *lg, int64_t ldg, float *S, float *o, int64_t ldo, int64_t C,
                  float *work) {
  C = default_chunk(C, R);
  if (T <= 0 || !valid_shape(H, K, V, R, C)) return;
  Delta a = {T,   H,   K,    V,   R,    C,   q,    k,   v,   beta, lg,
             ldq, ldk, ldkr, ldv, ldvr, ldb, ldbr, ldg, ldo, S,    o};
  Scratch s;
  float *base = align_work(work);
  scratch_layout(H, K, V, R, C, base, &s);
  TILES_RUN(&a, &s);
}
