/* cpu_dplr.c - the chunkwise-parallel form of the generalized delta rule
 * with a per-key decay (a diagonal-plus-low-rank transition, RWKV-7's state
 * update), for one sequence and every head, on the calling thread.
 *
 * Per head, with S: [V, K], every token t applies
 *   S <- S diag(w_t) + (S a_t) b_t^T + v_t k_t^T,     w_t = exp(lw_t) per key,
 * S a_t read from the state before the token, and o_t = S q_t after it. The
 * transition diag(w) + a b^T has no scalar gate to pull out and a low-rank
 * part that reads the state, so neither linear attention's nor the delta
 * rule's chunked form applies as is; this is their common generalization.
 *
 * Within a chunk of n tokens entering with state S0, write delta_t = S_{t-1}
 * a_t (a V-vector, the state's reading at token t) and P(t, i) for the
 * product of the decays w_{i+1} ... w_t (a K-vector; P(t, t) = 1, Gamma_t =
 * the product from the chunk's start through t, Gamma_{-1} = 1). Unrolling
 * the update, every token's low-rank part is a pair of rank-one terms that
 * then decays key by key:
 *   S_t     = S0 diag(Gamma_t) + sum_{i <= t} (delta_i b_i^T + v_i k_i^T) diag(P(t, i)),
 * and reading S_{t-1} with a_t and S_t with q_t gives, with pairwise weights
 *   Lb[t, i] = sum_c a_t[c] b_i[c] P(t-1, i)[c],   Lk[t, i] likewise with k_i    (i < t),
 *   Mb[t, i] = sum_c q_t[c] b_i[c] P(t, i)[c],     Mk[t, i] likewise with k_i    (i <= t),
 *   delta_t = (Gamma_{t-1} a_t) S0^T + sum_{i < t} (Lb[t, i] delta_i + Lk[t, i] v_i),
 *   o_t     = (Gamma_t q_t) S0^T + sum_{i <= t} (Mb[t, i] delta_i + Mk[t, i] v_i),
 *   S_end^T = diag(Gamma_{n-1}) S0^T + Bhat^T Delta + Khat^T V,
 *             Bhat[i, c] = b_i[c] P(n-1, i)[c], Khat likewise with k.
 * The deltas are the solution of a unit lower triangular system, (I - Lb)
 * Delta = A~ S0^T + Lk V, solved by blocked forward substitution as
 * cpu_delta.c solves its own (the same register tiles, cpu_tiles.h). With
 * w = 1, a = k, b = -beta k and beta v for v this is the delta rule
 * (rt_cpu_delta with R = 1; test_cpu_dplr.c runs both on it).
 *
 * The pairwise weights cannot be one matrix product: the decay between two
 * tokens differs key by key, and splitting it as Gamma_{t-1} / Gamma_i (a
 * product of A~ = Gamma a and B / Gamma) divides by products of decays,
 * which underflow within a chunk (or are exactly 0). So the weights are built token by token, in
 * O(n^2 K) per chunk (n (n - 1) / 2 pairs, each a pass over the keys),
 * little next to the n K V of each product with the state at n = 16: rows
 * bd[i] = b_i (.) P(t, i) and kd[i] = k_i (.) P(t, i) are carried from one
 * token to the next, multiplied by w_t in the same pass that reads them
 * with a_t (before) and q_t (after). Every decay is thus a product of w over
 * a span, never a ratio, and lies in [0, 1] when the w do; a decay of
 * exactly 0 (lw = -inf) on key c at token z zeroes exactly every term that
 * carries key c across z (in Lb, Lk, Mb, Mk, Gamma and the state's decay),
 * so the history on that key is cut bit for bit, with no 0 * inf.
 *
 * A chunk of a head is the pairwise pass, then five passes of register
 * tiles: A~ S0^T + Lk V; the substitution with Lb; (Gamma q) S0^T + Mk V;
 * plus Mb Delta; and the state update, S^T = diag(Gamma_{n-1}) S^T + Bhat^T
 * Delta + Khat^T V (a tile sums two products at most, so the sums of three
 * take two passes; the second of each is short, n^2 / 2 V). Per token and
 * head that is 4 K V multiply-adds with the state, as many as the step
 * loop, plus about n (3 K + 2 V) operations for the pairs and the
 * triangles: the chunked form wins by doing the products in register tiles,
 * which read the state once per 6 tokens, where the step loop streams it
 * through the caches once per token.
 *
 * As in cpu_delta.c, chunks run in order and, within a chunk, the heads;
 * every head's state is kept transposed ([K, V]) in the scratch for the
 * whole call. a, q, b, k and the decays are copied into padded rows (the
 * pairwise pass changes them: decayed copies are the products' operands);
 * values and outputs are used in place when V is a multiple of 16.
 */
#include "runtime/rt_cpu.h"

#include <stdint.h>
#include <string.h>

/* As in cpu_gemm.c and cpu_delta.c: under -std=c11 GCC would not contract
 * a * b + c into an FMA, and the tiles would run at half speed. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include "runtime/cpu_tiles.h"

/* ---- scratch --------------------------------------------------------------- */

/* The buffers carved from the caller's work: every head's state, then one
 * chunk of one head (the heads take turns). Kr is K rounded up to 8 (the
 * rows the pairwise pass reads a vector at a time; their padding is zero),
 * Np and Vp are C and V rounded up to 16 (rows that are the B operand or the
 * result of a product). */
typedef struct Scratch {
  int64_t Kr, Np, Vp;
  float *states; /* H x K x Vp: every head's state, transposed */
  float *st;     /* the state of the head at hand */
  float *ar;     /* C x Kr: a_t, then Gamma_{t-1} (.) a_t */
  float *qr;     /* C x Kr: q_t, then Gamma_t (.) q_t */
  float *wr;     /* C x Kr: the decays w_t */
  float *bd;     /* C x Kr: b_i, decayed token by token: b_i (.) P(t, i) */
  float *kd;     /* C x Kr: k_i, likewise */
  float *bt;     /* K x Np: Bhat^T */
  float *kt;     /* K x Np: Khat^T */
  float *lb;     /* C x Np: Lb (strictly lower) */
  float *lk;     /* C x Np: Lk (strictly lower, zero on and above the diagonal) */
  float *mb;     /* C x Np: Mb (lower, zero above the diagonal) */
  float *mk;     /* C x Np: Mk (lower, zero above the diagonal) */
  float *dl;     /* C x Vp: the deltas */
  float *vc;     /* C x Vp: values, padded (V not a multiple of 16) */
  float *oc;     /* C x Vp: outputs, padded (V not a multiple of 16) */
  float *gx;     /* Kr: Gamma, the decay from the chunk's start */
  Prefetch pf;
} Scratch;

/* Lays out the buffers from base (64-byte aligned) if base is not NULL, and
 * returns how many floats they take. */
static int64_t scratch_layout(int64_t H, int64_t K, int64_t V, int64_t C, float *base, Scratch *s) {
  int64_t Kr = round8(K), Np = round16(C), Vp = round16(V), padded = V % 16 != 0 ? C * Vp : 0;
  const int64_t sizes[] = {H * K * Vp, C * Kr, C * Kr, C * Kr, C * Kr, C * Kr, K * Np, K * Np,
                           C * Np,     C * Np, C * Np, C * Np, C * Vp, padded, padded, Kr};
  float **ptrs[] = {&s->states, &s->ar, &s->qr, &s->wr, &s->bd, &s->kd, &s->bt, &s->kt,
                    &s->lb,     &s->lk, &s->mb, &s->mk, &s->dl, &s->vc, &s->oc, &s->gx};
  _Static_assert(sizeof sizes / sizeof sizes[0] == sizeof ptrs / sizeof ptrs[0], "one size each");
  int64_t at = carve(base, sizes, ptrs, sizeof sizes / sizeof sizes[0]);
  s->Kr = Kr;
  s->Np = Np;
  s->Vp = Vp;
  return at;
}

/* The bounds keep every size far from overflow (as in cpu_delta.c). */
static int valid_shape(int64_t H, int64_t K, int64_t V, int64_t C) {
  return H >= 1 && K >= 1 && V >= 1 && K <= (1 << 20) && V <= (1 << 20) && H <= (1 << 20) &&
         C >= 1 && C <= (1 << 14);
}

int64_t rt_cpu_dplr_work(int64_t H, int64_t K, int64_t V, int64_t C) {
  if (C < 1) C = RT_CPU_DPLR_CHUNK;
  if (!valid_shape(H, K, V, C)) return 0;
  Scratch s;
  /* 16 more floats let the call align its base to 64 bytes. */
  return scratch_layout(H, K, V, C, NULL, &s) + 16;
}

/* ---- one chunk ------------------------------------------------------------------ */

/* The arguments of rt_cpu_dplr. */
typedef struct Dplr {
  int64_t T, H, K, V, C;
  const float *q, *lw, *a, *b, *v, *k;
  int64_t ldq, ldw, lda, ldb, ldv, ldk, ldo;
  float *S, *o;
} Dplr;

/* One chunk of one head: n tokens; values and outputs in place or padded
 * copies (o NULL: no outputs). */
typedef struct Chunk {
  int64_t n;
  const float *v;
  float *o;
  int64_t ldv, ldo;
} Chunk;

/* Sets up tokens t0 .. t0+n-1 of head h: padded rows of a, q, b, k and the
 * decays, and the views of the values and outputs. */
INLINE void load_chunk(const Dplr *a, Scratch *s, int64_t h, int64_t t0, int64_t n, Chunk *c) {
  const int64_t K = a->K, V = a->V, Kr = s->Kr, Vp = s->Vp;
  c->n = n;
  for (int64_t t = 0; t < n; t++) {
    const int64_t tt = t0 + t;
    copy_row(s->ar + t * Kr, a->a + tt * a->lda + h * K, K, Kr);
    copy_row(s->bd + t * Kr, a->b + tt * a->ldb + h * K, K, Kr);
    copy_row(s->kd + t * Kr, a->k + tt * a->ldk + h * K, K, Kr);
    if (a->q) copy_row(s->qr + t * Kr, a->q + tt * a->ldq + h * K, K, Kr);
    /* exp8 caps lw at 88 as cpu_delta.c caps its gate; -inf gives 0, NaN
     * stays NaN. The padding is 0 after it too. */
    float *w = s->wr + t * Kr;
    copy_row(w, a->lw + tt * a->ldw + h * K, K, Kr);
    for (int64_t d = 0; d < Kr; d += 8) {
      v8 x;
      LOAD8(x, w + d);
      exp8(&x);
      STORE8(w + d, x);
    }
    for (int64_t d = K; d < Kr; d++) w[d] = 0.0f;
  }
  c->v = a->v + t0 * a->ldv + h * V;
  c->ldv = a->ldv;
  if (V % 16 != 0) {
    for (int64_t t = 0; t < n; t++)
      copy_row(s->vc + t * Vp, a->v + (t0 + t) * a->ldv + h * V, V, Vp);
    c->v = s->vc;
    c->ldv = Vp;
  }
  c->o = NULL;
  c->ldo = 0;
  if (a->q) {
    c->o = V % 16 == 0 ? a->o + t0 * a->ldo + h * V : s->oc;
    c->ldo = V % 16 == 0 ? a->ldo : Vp;
  }
}

/* The lanes of x and y added in pairs: [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5,
 * x6+x7, y4+y5, y6+y7] (AVX's hadd; a macro, since a function returning a v8
 * would change the ABI of the generic copy). */
#define HADD8(x, y)                                                                                \
  (__builtin_shufflevector((x), (y), 0, 2, 8, 10, 4, 6, 12, 14) +                                  \
   __builtin_shufflevector((x), (y), 1, 3, 9, 11, 5, 7, 13, 15))

/* out[j] = the sum of the lanes of x[j], j < 8 (by pointer, as above). */
INLINE void hsum8(const v8 x[8], float *out) {
  const v8 x01 = HADD8(x[0], x[1]), x23 = HADD8(x[2], x[3]);
  const v8 x45 = HADD8(x[4], x[5]), x67 = HADD8(x[6], x[7]);
  const v8 u = HADD8(x01, x23), w = HADD8(x45, x67);
  v8 r = __builtin_shufflevector(u, w, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u, w, 4, 5, 6, 7, 12, 13, 14, 15);
  STORE8(out, r);
}

/* The pairwise weights of token t against ni = 1 or 2 earlier tokens i0,
 * i0 + 1 (ni a constant after inlining; two share the loads of a_t, w_t and
 * q_t): one pass over the keys reads bd[i] and kd[i] with a_t (Lb, Lk),
 * decays them by w_t and reads them with q_t (Mb, Mk). */
INLINE void pair_block(Scratch *s, int64_t t, int64_t i0, int ni, int with_q) {
  const int64_t Kr = s->Kr, Np = s->Np;
  const float *at = s->ar + t * Kr, *qt = s->qr + t * Kr, *wt = s->wr + t * Kr;
  /* Separate accumulators (GCC 12 keeps an array of them in memory). */
  v8 xb0 = {0}, xk0 = {0}, yb0 = {0}, yk0 = {0}, xb1 = {0}, xk1 = {0}, yb1 = {0}, yk1 = {0};
  float *b0 = s->bd + i0 * Kr, *k0 = s->kd + i0 * Kr, *b1 = b0 + Kr, *k1 = k0 + Kr;
  for (int64_t d = 0; d < Kr; d += 8) {
    v8 av, wv, qv = {0}, bv, kv;
    LOAD8(av, at + d);
    LOAD8(wv, wt + d);
    if (with_q) LOAD8(qv, qt + d);
    LOAD8(bv, b0 + d);
    LOAD8(kv, k0 + d);
    xb0 += av * bv;
    xk0 += av * kv;
    bv *= wv;
    kv *= wv;
    STORE8(b0 + d, bv);
    STORE8(k0 + d, kv);
    if (with_q) {
      yb0 += qv * bv;
      yk0 += qv * kv;
    }
    if (ni == 2) {
      LOAD8(bv, b1 + d);
      LOAD8(kv, k1 + d);
      xb1 += av * bv;
      xk1 += av * kv;
      bv *= wv;
      kv *= wv;
      STORE8(b1 + d, bv);
      STORE8(k1 + d, kv);
      if (with_q) {
        yb1 += qv * bv;
        yk1 += qv * kv;
      }
    }
  }
  const v8 acc[8] = {xb0, xk0, yb0, yk0, xb1, xk1, yb1, yk1};
  float r[8];
  hsum8(acc, r);
  for (int u = 0; u < ni; u++) {
    s->lb[t * Np + i0 + u] = r[4 * u];
    s->lk[t * Np + i0 + u] = r[4 * u + 1];
    s->mb[t * Np + i0 + u] = r[4 * u + 2];
    s->mk[t * Np + i0 + u] = r[4 * u + 3];
  }
}

/* Row t of the pairwise weights, and the carried rows one token on. On
 * entry bd[i] = b_i (.) P(t-1, i) for i < t (likewise kd) and bd[t] = b_t;
 * on return bd[i] = b_i (.) P(t, i) for i <= t. Then the entries on and
 * above the diagonal that the products read are set, and the rows of a_t
 * and q_t become A~ and Q~ (Gamma before and after the token; gx carries
 * it). with_q is a constant after inlining. */
INLINE void pair_row(Scratch *s, int64_t t, int64_t n, int with_q) {
  const int64_t Kr = s->Kr, Np = s->Np;
  float *at = s->ar + t * Kr, *qt = s->qr + t * Kr, *gx = s->gx;
  const float *wt = s->wr + t * Kr;
  float *lb = s->lb + t * Np, *lk = s->lk + t * Np, *mb = s->mb + t * Np, *mk = s->mk + t * Np;
  int64_t i = 0;
  for (; i + 2 <= t; i += 2) pair_block(s, t, i, 2, with_q);
  if (i < t) pair_block(s, t, i, 1, with_q);
  /* Zeros where the products' row blocks read past the triangle (up to n). */
  for (i = t; i < n; i++) lb[i] = lk[i] = mb[i] = mk[i] = 0.0f;
  if (with_q) {
    const float *bt = s->bd + t * Kr, *kt = s->kd + t * Kr;
    v8 yb = {0}, yk = {0};
    for (int64_t d = 0; d < Kr; d += 8) {
      v8 qv, bv, kv;
      LOAD8(qv, qt + d);
      LOAD8(bv, bt + d);
      LOAD8(kv, kt + d);
      yb += qv * bv;
      yk += qv * kv;
    }
    const v8 acc[8] = {yb, yk, yb, yk, yb, yk, yb, yk};
    float r[8];
    hsum8(acc, r);
    mb[t] = r[0];
    mk[t] = r[1];
  }
  for (int64_t d = 0; d < Kr; d++) {
    at[d] *= gx[d];
    gx[d] *= wt[d];
  }
  if (with_q)
    for (int64_t d = 0; d < Kr; d++) qt[d] *= gx[d];
}

/* One chunk of one head; the state s->st (transposed) is S0 on entry and
 * the chunk's final state on return. */
INLINE void chunk(const Dplr *a, Scratch *s, const Chunk *c, ProductFn product) {
  const int64_t K = a->K, Kr = s->Kr, Np = s->Np, Vp = s->Vp, n = c->n;
  for (int64_t d = 0; d < Kr; d++) s->gx[d] = 1.0f;
  if (c->o)
    for (int64_t t = 0; t < n; t++) pair_row(s, t, n, 1);
  else
    for (int64_t t = 0; t < n; t++) pair_row(s, t, n, 0);
  /* bd, kd now hold Bhat, Khat; the state update wants them transposed. */
  transpose(n, K, s->bd, Kr, s->bt, Np);
  transpose(n, K, s->kd, Kr, s->kt, Np);

  /* The deltas: the right-hand side A~ S0^T + Lk V, then the substitution
   * Delta += Lb Delta (no first sum: k1 = 0). */
  // clang-format off
  const Prod rhs = {.M = n, .N = Vp, .a1 = s->ar, .lda1 = Kr, .b1 = s->st, .ldb1 = Vp, .k1 = K,
                    .a2 = s->lk, .lda2 = Np, .b2 = c->v, .ldb2 = c->ldv, .k2 = n,
                    .c = s->dl, .ldc = Vp, .mode = PROD_SET, .tri = TRI_K2, .step = 1};
  const Prod solve = {.M = n, .N = Vp, .a1 = s->lb, .lda1 = Np, .b1 = s->dl, .ldb1 = Vp, .k1 = 0,
                      .a2 = s->lb, .lda2 = Np, .b2 = s->dl, .ldb2 = Vp, .c = s->dl, .ldc = Vp,
                      .mode = PROD_ADD, .tri = TRI_SOLVE, .step = 1};
  // clang-format on
  product(&rhs, &s->pf);
  product(&solve, &s->pf);

  if (c->o) {
    /* O = Q~ S0^T + Mk V, then O += Mb Delta. */
    // clang-format off
    const Prod out = {.M = n, .N = Vp, .a1 = s->qr, .lda1 = Kr, .b1 = s->st, .ldb1 = Vp, .k1 = K,
                      .a2 = s->mk, .lda2 = Np, .b2 = c->v, .ldb2 = c->ldv, .k2 = n,
                      .c = c->o, .ldc = c->ldo, .mode = PROD_SET, .tri = TRI_K2, .step = 1};
    const Prod out2 = {.M = n, .N = Vp, .a1 = s->mb, .lda1 = Np, .b1 = s->dl, .ldb1 = Vp, .k1 = 0,
                       .a2 = s->mb, .lda2 = Np, .b2 = s->dl, .ldb2 = Vp, .k2 = n,
                       .c = c->o, .ldc = c->ldo, .mode = PROD_ADD, .tri = TRI_K2, .step = 1};
    // clang-format on
    product(&out, &s->pf);
    product(&out2, &s->pf);
  }

  /* The state: S^T = diag(Gamma_{n-1}) S0^T + Bhat^T Delta + Khat^T V. */
  // clang-format off
  const Prod state = {.M = K, .N = Vp, .a1 = s->bt, .lda1 = Np, .b1 = s->dl, .ldb1 = Vp, .k1 = n,
                      .a2 = s->kt, .lda2 = Np, .b2 = c->v, .ldb2 = c->ldv, .k2 = n,
                      .c = s->st, .ldc = Vp, .mode = PROD_SCALE, .beta = s->gx,
                      .tri = TRI_NONE, .step = 1};
  // clang-format on
  product(&state, &s->pf);
}

/* Points the cursor at head h's slices of tokens t0 .. t0+n-1 (the outputs
 * too, to be written). As in cpu_delta.c: one head at a time, the next
 * one's while this one is computed. */
static void prefetch_start(const Dplr *a, Prefetch *p, int64_t h, int64_t t0, int64_t n) {
  const int64_t K = a->K, V = a->V;
  p->tokens = n;
  if (n <= 0) return;
  p->narrays = 0;
  prefetch_add(p, a->q, a->ldq, h * K, K, t0);
  prefetch_add(p, a->lw, a->ldw, h * K, K, t0);
  prefetch_add(p, a->q ? a->o : NULL, a->ldo, h * V, V, t0);
  prefetch_add(p, a->a, a->lda, h * K, K, t0);
  prefetch_add(p, a->b, a->ldb, h * K, K, t0);
  prefetch_add(p, a->k, a->ldk, h * K, K, t0);
  prefetch_add(p, a->v, a->ldv, h * V, V, t0);
  p->arr = 0;
}

/* ---- all chunks, all heads -------------------------------------------------------------- */

/* Chunks in order and, within a chunk, the heads (their slices of a
 * token's rows lie side by side). Every head's state stays in the scratch. */
INLINE void run_body(const Dplr *a, Scratch *s, ProductFn product) {
  const int64_t H = a->H, K = a->K, V = a->V, Vp = s->Vp;
  states_in(H, K, V, Vp, a->S, s->states);
  for (int64_t t0 = 0; t0 < a->T; t0 += a->C) {
    int64_t n = min64(a->C, a->T - t0);
    for (int64_t h = 0; h < H; h++) {
      if (h + 1 < H)
        prefetch_start(a, &s->pf, h + 1, t0, n);
      else
        prefetch_start(a, &s->pf, 0, t0 + n, min64(a->C, a->T - t0 - n));
      Chunk c;
      load_chunk(a, s, h, t0, n, &c);
      s->st = s->states + h * K * Vp;
      chunk(a, s, &c, product);
      if (c.o == s->oc)
        for (int64_t i = 0; i < n; i++)
          memcpy(a->o + (t0 + i) * a->ldo + h * V, s->oc + i * Vp, sizeof(float) * (size_t)V);
    }
  }
  states_out(H, K, V, Vp, s->states, a->S);
}

TILES_VARIANTS(Dplr)

void rt_cpu_dplr(int64_t T, int64_t H, int64_t K, int64_t V, const float *q, int64_t ldq,
                 const float *lw, int64_t ldw, const float *a, int64_t lda, const float *b,
                 int64_t ldb, const float *v, int64_t ldv, const float *k, int64_t ldk, float *S,
                 float *o, int64_t ldo, int64_t C, float *work) {
  if (C < 1) C = RT_CPU_DPLR_CHUNK;
  if (T <= 0 || !valid_shape(H, K, V, C)) return;
  Dplr args = {T, H, K, V, C, q, lw, a, b, v, k, ldq, ldw, lda, ldb, ldv, ldk, ldo, S, o};
  Scratch s;
  float *base = align_work(work);
  scratch_layout(H, K, V, C, base, &s);
  TILES_RUN(&args, &s);
}
