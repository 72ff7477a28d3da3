/* cpu_plstm.c - the chunkwise-parallel form of the linear recurrence of
 * pLSTM 1D (a matrix state per head made of J blocks, mixed at every token
 * by a small dense J x J transition), for one sequence and every head, on
 * the calling thread.
 *
 * Per head the state is J matrices C[j]: [V, K], and every token t applies
 *   C[j] <- sum_{j'} Tr_t[j, j'] C[j'] + s_t[j] v_t k_t^T     (every j from the old C),
 *   o_t  = sum_j m_t[j] C[j] q_t,
 * reading C either before the token's update (exclusive) or after it. With
 * J = 1 this is linear attention with a scalar gate of either sign; the
 * step loop costs (J^2 + 2 J) K V multiply-adds per token and head, and it
 * streams the whole state (J K V floats) through the caches for each token.
 *
 * The block index j is only ever mixed linearly, by J x J matrices, so
 * unrolling a chunk of n tokens that enters with state C0 gives, with
 * P(b, a) = Tr_b ... Tr_{a+1} the transition carried from just after token
 * a to the end of token b (P(a, a) = I) and L_t = P(t, -1) the one from
 * the chunk's start (L_{-1} = I):
 *   C_t[j] = sum_{j'} L_t[j, j'] C0[j'] + sum_{i <= t} (P(t, i) s_i)[j] v_i k_i^T.
 * Reading that with m_t and q_t (C_{t-1} for an exclusive readout) splits
 * each output into a part from the chunk's entering state and a causal,
 * attention-like part inside the chunk:
 *   o_t = sum_{j''} mu_t[j''] C0[j''] q_t + sum_i A[t, i] v_i,
 *   mu_t = L_t^T m_t,   A[t, i] = (m_t . P(t, i) s_i) (k_i . q_t)    for i <= t,
 * (exclusive: L_{t-1} and P(t-1, i), for i < t), and the state leaving
 * the chunk is
 *   C_end[j] = sum_{j'} L_{n-1}[j, j'] C0[j'] + sum_i sigma_i[j] v_i k_i^T,
 *   sigma_i = P(n-1, i) s_i.
 * So a chunk of a head is: the small J-dimensional quantities mu_t, the
 * pair weights G[t, i] = m_t . P(t, i) s_i and sigma_i (from the
 * transitions alone, no keys or values), then four passes of register
 * tiles (cpu_tiles.h, as cpu_delta.c and cpu_dplr.c use them):
 *   Q K^T (its lower triangle), masked by G into A;
 *   O = Q~ C0^T + A V, where row t of Q~ is (mu_t[0] q_t, ..., mu_t[J-1] q_t)
 *       and the J transposed blocks of C0 are stacked into one [J K, V]
 *       operand, so the entering state's part is a single product;
 *   X = L_{n-1} C0 (the J blocks mixed: a product of J rows by J K V columns);
 *   C = X + Sk^T V, Sk^T the [J K, n] matrix of the keys scaled by sigma,
 *       row (j, c) holding sigma_i[j] k_i[c].
 * When L_{n-1} is diagonal (J = 1 or diagonal transitions) the mixing is a
 * scale of each row, folded into the last product, and X is not formed.
 *
 * The J-dimensional quantities are carried token by token, never through
 * inverses of the transitions (they may be singular, or have zero rows), in
 * one J x (J + n) matrix U (its J columns padded to Jr, a multiple of 8)
 * whose first J columns hold L_t and whose column Jr + i holds P(t, i) s_i
 * for the tokens i seen so far: token t multiplies U by Tr_t (rows mixed,
 * O(J^2 t) per token, a vector along the columns), then sets column
 * Jr + t to s_t; reading U with m_t, before the token's
 * multiply for an exclusive readout or after it, gives mu_t and the row
 * G[t, :] in one pass. At the chunk's end U holds L_{n-1} and every sigma_i.
 * That is O(n^2 J^2 + n J^3) per chunk, small next to the products, which
 * per token and head do about 2 J K V multiply-adds (the entering state's
 * readout and the update's rank-n part), J^2 K V / n for the mixing and
 * about n (K + V) / 2 for the triangles: at J = 4 and n = 32 (the default),
 * 8.5 K V against the step loop's 24 K V, and in register tiles.
 *
 * Entries of Tr may be of either sign; nothing is divided or taken a
 * logarithm of, so singular transitions and zero rows are exact: every
 * term carried across a zero entry is an exact 0, and a transition of all
 * zeros cuts the history bit for bit (test_cpu_plstm.c checks it). Where
 * the rows of |Tr| sum to less than 1, every product of transitions is a
 * contraction, as the step loop's are.
 *
 * As in cpu_dplr.c, chunks run in order and, within a chunk, the heads;
 * every head's state is kept transposed, [J, K, Vp], in the scratch for the
 * whole call. Queries and keys are read in place (keys through one
 * transposed copy), values and outputs too when V is a multiple of 16, else
 * through padded copies.
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
 * chunk of one head (the heads take turns). Jr is J rounded up to 8 (the
 * columns of U before its pair columns); W = Jr + Np is U's row; Np and Vp
 * are C and V rounded up to 16 (rows that are the B operand or the result
 * of a product). */
typedef struct Scratch {
  int64_t Jr, W, Np, Vp;
  float *states; /* H x J x K x Vp: every head's state, its blocks transposed */
  float *st;     /* the state of the head at hand */
  float *mx;     /* J x K x Vp: the state mixed by L_{n-1} */
  float *kt;     /* K x Np: the keys transposed */
  float *qx;     /* C x J K: Q~, row t = mu_t (x) q_t */
  float *qk;     /* C x Np: Q K^T (its lower triangle) */
  float *gw;     /* C x W: per token, mu_t (columns < J), then G[t, i] (column Jr + i) */
  float *am;     /* C x Np: A (lower, zero above the diagonal) */
  float *u;      /* J x W: U (see the head comment) */
  float *u2;     /* J x W: U times the next transition */
  float *sk;     /* J K x Np: Sk^T, row j K + c holding sigma_i[j] k_i[c] */
  float *dg;     /* J K: the diagonal of L_{n-1}, once per row of a block */
  float *vc;     /* C x Vp: values, padded (V not a multiple of 16) */
  float *oc;     /* C x Vp: outputs, padded (V not a multiple of 16) */
  Prefetch pf;
} Scratch;

/* Lays out the buffers from base (64-byte aligned) if base is not NULL, and
 * returns how many floats they take. */
static int64_t scratch_layout(int64_t H, int64_t J, int64_t K, int64_t V, int64_t C, float *base,
                              Scratch *s) {
  int64_t Jr = round8(J), Np = round16(C), Vp = round16(V), W = Jr + Np;
  int64_t padded = V % 16 != 0 ? C * Vp : 0;
  const int64_t sizes[] = {H * J * K * Vp, J * K * Vp, K * Np,     C * J * K, C * Np, C * W, C * Np,
                           J * W,          J * W,      J * K * Np, J * K,     padded, padded};
  float **ptrs[] = {&s->states, &s->mx, &s->kt, &s->qx, &s->qk, &s->gw, &s->am,
                    &s->u,      &s->u2, &s->sk, &s->dg, &s->vc, &s->oc};
  _Static_assert(sizeof sizes / sizeof sizes[0] == sizeof ptrs / sizeof ptrs[0], "one size each");
  int64_t at = carve(base, sizes, ptrs, sizeof sizes / sizeof sizes[0]);
  s->Jr = Jr;
  s->W = W;
  s->Np = Np;
  s->Vp = Vp;
  return at;
}

/* The bounds keep every size from overflow (as in cpu_dplr.c); the last
 * one, which only shapes whose state alone would take more than 2^62 bytes
 * fail, keeps H J K Vp (the states' copy) within int64_t. */
static int valid_shape(int64_t H, int64_t J, int64_t K, int64_t V, int64_t C) {
  return H >= 1 && J >= 1 && K >= 1 && V >= 1 && H <= (1 << 20) && J <= 64 && K <= (1 << 20) &&
         V <= (1 << 20) && C >= 1 && C <= (1 << 14) &&
         H * J <= ((int64_t)1 << 60) / (K * round16(V));
}

int64_t rt_cpu_plstm_work(int64_t H, int64_t J, int64_t K, int64_t V, int64_t C) {
  if (C < 1) C = RT_CPU_PLSTM_CHUNK;
  if (!valid_shape(H, J, K, V, C)) return 0;
  Scratch s;
  /* 16 more floats let the call align its base to 64 bytes. */
  return scratch_layout(H, J, K, V, C, NULL, &s) + 16;
}

/* ---- one chunk ------------------------------------------------------------------ */

/* The arguments of rt_cpu_plstm. */
typedef struct Plstm {
  int64_t T, H, J, K, V, C;
  int exclusive;
  const float *q, *m, *tr, *s, *v, *k;
  int64_t ldq, ldm, ldt, lds, ldv, ldk, ldo;
  float *S, *o;
  int64_t ldS; /* floats from one [V, K] block of S to the next */
} Plstm;

/* One chunk of one head: tokens t0 .. t0+n-1; queries and keys in place,
 * values and outputs in place or padded copies (o NULL: no outputs). */
typedef struct Chunk {
  int64_t t0, n;
  const float *q, *k, *v;
  float *o;
  int64_t ldv, ldo;
} Chunk;

/* Sets up tokens t0 .. t0+n-1 of head h: the views of the queries, keys,
 * values and outputs, the keys transposed, padded values. */
INLINE void load_chunk(const Plstm *a, Scratch *s, int64_t h, int64_t t0, int64_t n, Chunk *c) {
  const int64_t K = a->K, V = a->V, Vp = s->Vp;
  c->t0 = t0;
  c->n = n;
  c->q = a->q ? a->q + t0 * a->ldq + h * K : NULL;
  c->k = a->k + t0 * a->ldk + h * K;
  transpose(n, K, c->k, a->ldk, s->kt, s->Np);
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

/* Row t of gw: m_t read against U's first wa columns (mu_t, then G[t, :]). */
INLINE void read_u(Scratch *s, const float *mt, int64_t J, int64_t t, int64_t wa) {
  const int64_t W = s->W;
  float *row = s->gw + t * W;
  for (int64_t b = 0; b < wa; b += 8) {
    v8 acc = {0};
    for (int64_t j = 0; j < J; j++) {
      v8 x;
      LOAD8(x, s->u + j * W + b);
      acc += mt[j] * x;
    }
    STORE8(row + b, acc);
  }
}

/* Token t of the chunk (tt in the sequence) against U: its readout (with_q;
 * before its transition if exclusive, after it if not), U <- Tr_t U on the
 * columns in use, and column Jr + t = s_t. U's columns past those in use
 * are zero, in both copies, and stay so. */
INLINE void pair_token(const Plstm *a, Scratch *s, int64_t h, int64_t tt, int64_t t, int with_q) {
  const int64_t J = a->J, W = s->W, wa = s->Jr + round8(t + 1);
  const float *tr = a->tr + tt * a->ldt + h * J * J, *sv = a->s + tt * a->lds + h * J;
  const float *mt = with_q ? a->m + tt * a->ldm + h * J : NULL;
  if (with_q && a->exclusive) read_u(s, mt, J, t, wa);
  for (int64_t j = 0; j < J; j++) {
    const float *trj = tr + j * J;
    for (int64_t b = 0; b < wa; b += 8) {
      v8 acc = {0};
      for (int64_t jj = 0; jj < J; jj++) {
        v8 x;
        LOAD8(x, s->u + jj * W + b);
        acc += trj[jj] * x;
      }
      STORE8(s->u2 + j * W + b, acc);
    }
  }
  float *u = s->u;
  s->u = s->u2;
  s->u2 = u;
  for (int64_t j = 0; j < J; j++) s->u[j * W + s->Jr + t] = sv[j];
  if (with_q && !a->exclusive) read_u(s, mt, J, t, wa);
}

/* One chunk of one head; the state s->st (its blocks transposed) is C0 on
 * entry and the chunk's final state on return. */
INLINE void chunk(const Plstm *a, Scratch *s, int64_t h, const Chunk *c, ProductFn product) {
  const int64_t J = a->J, K = a->K, JK = J * K, Jr = s->Jr, W = s->W, Np = s->Np, Vp = s->Vp;
  const int64_t n = c->n;
  /* U = [L_{-1} = I | no pairs yet]. */
  memset(s->u, 0, sizeof(float) * (size_t)(J * W));
  memset(s->u2, 0, sizeof(float) * (size_t)(J * W));
  for (int64_t j = 0; j < J; j++) s->u[j * W + j] = 1.0f;
  if (c->o)
    for (int64_t t = 0; t < n; t++) pair_token(a, s, h, c->t0 + t, t, 1);
  else
    for (int64_t t = 0; t < n; t++) pair_token(a, s, h, c->t0 + t, t, 0);

  if (c->o) {
    /* Q K^T's lower triangle, then A = G (.) Q K^T, zero above the
     * diagonal (on it too if exclusive) up to the n columns O's tiles read. */
    // clang-format off
    const Prod qk = {.M = n, .N = Np, .a1 = c->q, .lda1 = a->ldq, .b1 = s->kt, .ldb1 = Np, .k1 = K,
                     .c = s->qk, .ldc = Np, .mode = PROD_SET, .tri = TRI_N, .step = 1};
    // clang-format on
    product(&qk, &s->pf);
    for (int64_t t = 0; t < n; t++) {
      const int64_t lim = a->exclusive ? t : t + 1;
      const float *g = s->gw + t * W + Jr, *x = s->qk + t * Np;
      float *ar = s->am + t * Np;
      for (int64_t i = 0; i < lim; i++) ar[i] = g[i] * x[i];
      for (int64_t i = lim; i < n; i++) ar[i] = 0.0f;
      /* Q~: row t is (mu_t[0] q_t, ..., mu_t[J-1] q_t). */
      const float *mu = s->gw + t * W, *qt = c->q + t * a->ldq;
      float *qx = s->qx + t * JK;
      for (int64_t j = 0; j < J; j++)
        for (int64_t d = 0; d < K; d++) qx[j * K + d] = mu[j] * qt[d];
    }
    /* O = Q~ C0^T + A V. */
    // clang-format off
    const Prod out = {.M = n, .N = Vp, .a1 = s->qx, .lda1 = JK, .b1 = s->st, .ldb1 = Vp, .k1 = JK,
                      .a2 = s->am, .lda2 = Np, .b2 = c->v, .ldb2 = c->ldv, .k2 = n,
                      .c = c->o, .ldc = c->ldo, .mode = PROD_SET, .tri = TRI_K2, .step = 1};
    // clang-format on
    product(&out, &s->pf);
  }

  /* Sk^T: row j K + d is sigma[j] (.) (the keys' column d). */
  for (int64_t j = 0; j < J; j++) {
    const float *sig = s->u + j * W + Jr;
    for (int64_t d = 0; d < K; d++) {
      const float *kd = s->kt + d * Np;
      float *row = s->sk + (j * K + d) * Np;
      for (int64_t i = 0; i < n; i++) row[i] = sig[i] * kd[i];
    }
  }
  /* L_{n-1} = U's first J columns: diagonal, it scales the rows of the
   * blocks in place; otherwise the blocks are mixed into mx first. */
  int diagonal = 1;
  for (int64_t j = 0; j < J; j++)
    for (int64_t jj = 0; jj < J; jj++)
      if (jj != j && s->u[j * W + jj] != 0.0f) diagonal = 0;
  if (diagonal) {
    for (int64_t j = 0; j < J; j++)
      for (int64_t d = 0; d < K; d++) s->dg[j * K + d] = s->u[j * W + j];
    // clang-format off
    const Prod state = {.M = JK, .N = Vp, .a1 = s->sk, .lda1 = Np, .b1 = c->v, .ldb1 = c->ldv,
                        .k1 = n, .c = s->st, .ldc = Vp, .mode = PROD_SCALE, .beta = s->dg,
                        .tri = TRI_NONE, .step = 1};
    // clang-format on
    product(&state, &s->pf);
  } else {
    /* X = L_{n-1} C0 (J rows of J K Vp floats), then C = X + Sk^T V. */
    // clang-format off
    const Prod mix = {.M = J, .N = K * Vp, .a1 = s->u, .lda1 = W, .b1 = s->st, .ldb1 = K * Vp,
                      .k1 = J, .c = s->mx, .ldc = K * Vp, .mode = PROD_SET, .tri = TRI_NONE,
                      .step = 1};
    const Prod state = {.M = JK, .N = Vp, .a1 = s->sk, .lda1 = Np, .b1 = c->v, .ldb1 = c->ldv,
                        .k1 = n, .c = s->st, .ldc = Vp, .mode = PROD_ADD, .c0 = s->mx, .ldc0 = Vp,
                        .tri = TRI_NONE, .step = 1};
    // clang-format on
    product(&mix, &s->pf);
    product(&state, &s->pf);
  }
}

/* Points the cursor at head h's slices of tokens t0 .. t0+n-1 (the outputs
 * too, to be written). As in cpu_dplr.c: one head at a time, the next
 * one's while this one is computed. */
static void prefetch_start(const Plstm *a, Prefetch *p, int64_t h, int64_t t0, int64_t n) {
  const int64_t J = a->J, K = a->K, V = a->V;
  p->tokens = n;
  if (n <= 0) return;
  p->narrays = 0;
  prefetch_add(p, a->q, a->ldq, h * K, K, t0);
  prefetch_add(p, a->q ? a->m : NULL, a->ldm, h * J, J, t0);
  prefetch_add(p, a->q ? a->o : NULL, a->ldo, h * V, V, t0);
  prefetch_add(p, a->tr, a->ldt, h * J * J, J * J, t0);
  prefetch_add(p, a->s, a->lds, h * J, J, t0);
  prefetch_add(p, a->k, a->ldk, h * K, K, t0);
  prefetch_add(p, a->v, a->ldv, h * V, V, t0);
  p->arr = 0;
}

/* ---- all chunks, all heads -------------------------------------------------------------- */

/* Chunks in order and, within a chunk, the heads (their slices of a
 * token's rows lie side by side). Every head's state stays in the scratch. */
INLINE void run_body(const Plstm *a, Scratch *s, ProductFn product) {
  const int64_t H = a->H, J = a->J, K = a->K, V = a->V, Vp = s->Vp;
  /* The blocks of every head, [H J, V, K], transposed to [H J, K, Vp]. */
  for (int64_t b = 0; b < H * J; b++)
    states_in(1, K, V, Vp, a->S + b * a->ldS, s->states + b * K * Vp);
  /* Q K^T's tiles read the keys' columns up to Np, past a chunk's n: zeros
   * at first, then an earlier chunk's keys, whose products are never read
   * (not uninitialized scratch). */
  memset(s->kt, 0, sizeof(float) * (size_t)(K * s->Np));
  for (int64_t t0 = 0; t0 < a->T; t0 += a->C) {
    int64_t n = min64(a->C, a->T - t0);
    for (int64_t h = 0; h < H; h++) {
      if (h + 1 < H)
        prefetch_start(a, &s->pf, h + 1, t0, n);
      else
        prefetch_start(a, &s->pf, 0, t0 + n, min64(a->C, a->T - t0 - n));
      Chunk c;
      load_chunk(a, s, h, t0, n, &c);
      s->st = s->states + h * J * K * Vp;
      chunk(a, s, h, &c, product);
      if (c.o == s->oc)
        for (int64_t i = 0; i < n; i++)
          memcpy(a->o + (t0 + i) * a->ldo + h * V, s->oc + i * Vp, sizeof(float) * (size_t)V);
    }
  }
  for (int64_t b = 0; b < H * J; b++)
    states_out(1, K, V, Vp, s->states + b * K * Vp, a->S + b * a->ldS);
}

TILES_VARIANTS(Plstm)

void rt_cpu_plstm(int64_t T, int64_t H, int64_t J, int64_t K, int64_t V, const float *q,
                  int64_t ldq, const float *m, int64_t ldm, int32_t exclusive, const float *tr,
                  int64_t ldt, const float *s, int64_t lds, const float *v, int64_t ldv,
                  const float *k, int64_t ldk, float *S, float *o, int64_t ldo, int64_t C,
                  float *work) {
  rt_cpu_plstm_ld(T, H, J, K, V, q, ldq, m, ldm, exclusive, tr, ldt, s, lds, v, ldv, k, ldk, S,
                  V * K, o, ldo, C, work);
}

void rt_cpu_plstm_ld(int64_t T, int64_t H, int64_t J, int64_t K, int64_t V, const float *q,
                     int64_t ldq, const float *m, int64_t ldm, int32_t exclusive, const float *tr,
                     int64_t ldt, const float *s, int64_t lds, const float *v, int64_t ldv,
                     const float *k, int64_t ldk, float *S, int64_t ldS, float *o, int64_t ldo,
                     int64_t C, float *work) {
  if (C < 1) C = RT_CPU_PLSTM_CHUNK;
  if (T <= 0 || !valid_shape(H, J, K, V, C) || ldS < V * K) return;
  Plstm args = {T,   H,   J,   K, V, C,  exclusive != 0, q, m, tr, s, v, k, ldq, ldm, ldt, lds,
                ldv, ldk, ldo, S, o, ldS};
  Scratch sc;
  float *base = align_work(work);
  scratch_layout(H, J, K, V, C, base, &sc);
  TILES_RUN(&args, &sc);
}
