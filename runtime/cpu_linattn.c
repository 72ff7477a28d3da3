/* cpu_linattn.c - the chunkwise-parallel form of linear attention with a
 * matrix state (docs/algorithms.md, section 3), for one sequence and every
 * head, on the calling thread.
 *
 * Per head, S_t = S_{t-1} diag(g_t) + v_t k_t^T and o_t = S_t q_t (or
 * S_{t-1} q_t). The step loop reads and writes the whole [V, K] state for
 * every token: rank-one updates and matrix-vector products, bound by moving
 * the state through the caches. Cut into chunks of C tokens, the same
 * arithmetic becomes a handful of small matrix products per chunk, and the
 * state is read and written once per chunk:
 *
 *   O   = (Q (.) Gamma) S0^T + ((Q K^T) (.) M) V      (M: causal decay mask)
 *   S_C = S0 diag(Gamma_C) + V^T (K (.) Gamma_C / Gamma)
 *
 * Decay factors are formed as products of gates, never as ratios of
 * cumulative products (1/Gamma overflows once the gates have decayed far):
 * every factor used below is a product of the gates over a span of tokens,
 * and so lies in [0, 1] when the gates do. A gate of exactly 0 (lg = -inf)
 * then zeroes exactly the terms it should, with no -inf - -inf or 0 * inf
 * on the way.
 *
 * Scalar gates (one per head) make the mask a C x C matrix of such products,
 * built row by row. Per-key gates do not factor out of Q K^T, so the chunk
 * is cut into sub-chunks of SUB tokens, each with a reference point at the
 * token before it (section 3, "Per-key (diagonal) gate"): for a key in an
 * earlier sub-chunk, the decay to a query splits into the key's decay up to
 * the reference point and the query's decay from it, both products of gates,
 * and those blocks are one matrix product. Within a sub-chunk's diagonal
 * block the decays are carried token by token on the keys themselves.
 *
 * Chunks run in order and, within a chunk, the heads. Every head's state is
 * kept transposed ([K, V]) in the scratch for the whole call, so that both
 * of its products (Q S^T and the update K^T V) stream rows of V floats.
 * Queries, keys, values and outputs are read and written in place; the B
 * operands and results of the products have rows of a multiple of 16 floats
 * (with copies of V and O in the scratch when V is not one), so that the
 * register tiles never need column tails.
 */
#include "runtime/rt_cpu.h"

#include <stdint.h>
#include <string.h>

/* As in cpu_gemm.c: under -std=c11 GCC would not contract a * b + c into an
 * FMA, and the tiles would run at half speed. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include "runtime/cpu_vec.h"

/* A register tile is MR rows by one 16-float panel (two vectors): 12
 * accumulators, enough independent FMA chains for two pipes of latency 4,
 * and with the two B vectors and a broadcast within AVX2's 16 registers. */
#define MR 6
/* Sub-chunk length for per-key gates: one panel of scores per query in the
 * diagonal block, and sub-chunk boundaries on the 16-float panel grid. */
#define SUB 16

/* ---- prefetching the next chunk ------------------------------------------------ */

/* A chunk's inputs come from memory, and fetched when the chunk starts they
 * stall it (H = 4, K = V = 64, C = 16, scalar gates: 655 K tokens/s at
 * T = 4096, 845 K at T = 256, in cache). A burst of software prefetches
 * stalls just the same once the miss buffers are full, so the next chunk's
 * rows are prefetched a few lines at a time from between the register tiles
 * of this chunk's products, where the misses overlap the arithmetic (755 K
 * tokens/s). The cursor walks token by token over the arrays present. */
typedef struct Prefetch {
  const char *at[4]; /* the current token's row of each array, 64-byte aligned */
  int64_t ld[4];     /* bytes from one token to the next */
  int64_t len[4];    /* bytes to fetch per token */
  int narrays, arr;
  int64_t tokens; /* tokens left, the current one included */
} Prefetch;

/* Lines handed to the prefetcher after each register tile, at least (whole
 * rows at a time): the next chunk's rows, about 50 lines per token at H = 4,
 * K = V = 64, are then all requested within the first half of the chunk's
 * tiles (about 18 per token at C = 16). */
#define PREFETCH_LINES 8

INLINE void prefetch_lines(Prefetch *p) {
  for (int64_t lines = 0; lines < PREFETCH_LINES && p->tokens > 0;) {
    const char *row = p->at[p->arr];
    int64_t len = p->len[p->arr];
    for (int64_t off = 0; off < len; off += 64) __builtin_prefetch(row + off);
    lines += (len + 63) / 64;
    p->at[p->arr] += p->ld[p->arr];
    if (++p->arr == p->narrays) {
      p->arr = 0;
      p->tokens--;
    }
  }
}

/* ---- scratch --------------------------------------------------------------- */

/* The buffers carved from the caller's work, in this order: every head's
 * state, then one chunk of one head (the heads take turns). Rows that are
 * the B operand or the result of a product have 16-float padding (Cp, Vp);
 * the padding of vc and st is zero, that of kt is zeroed where a product
 * reads it. */
typedef struct Scratch {
  int64_t Cp, Vp;
  float *states; /* H x K x Vp: every head's state, transposed */
  float *st;     /* the state of the head at hand */
  float *qs;     /* C x K: queries times the decay since the chunk start */
  float *qr;     /* SUB x K: queries times the decay since the sub-chunk start */
  float *kt;     /* K x Cp: keys transposed; per-key gates: decayed to a reference */
  float *vc;     /* C x Vp: values, padded (V not a multiple of 16) */
  float *gc;     /* C x Kg: gates */
  float *sc;     /* C x Cp: decayed scores */
  float *oc;     /* C x Vp: outputs, padded (V not a multiple of 16) */
  float *pv;     /* K: product of the gates since the sub-chunk start */
  float *gx;     /* K: product of the gates since the chunk start */
  float *dr;     /* Cp: one row of the scalar decay mask */
  Prefetch pf;
} Scratch;

/* Lays out the buffers from base (64-byte aligned) if base is not NULL, and
 * returns how many floats they take. */
static int64_t scratch_layout(int64_t H, int64_t K, int64_t V, int64_t Kg, int64_t C, float *base,
                              Scratch *s) {
  int64_t Cp = round16(C), Vp = round16(V), padded = V % 16 != 0 ? C * Vp : 0;
  const int64_t sizes[] = {H * K * Vp, C * K,  SUB * K, K * Cp, padded, C * Kg,
                           C * Cp,     padded, K,       K,      Cp};
  float **ptrs[] = {&s->states, &s->qs, &s->qr, &s->kt, &s->vc, &s->gc,
                    &s->sc,     &s->oc, &s->pv, &s->gx, &s->dr};
  _Static_assert(sizeof sizes / sizeof sizes[0] == sizeof ptrs / sizeof ptrs[0], "one size each");
  int64_t at = carve(base, sizes, ptrs, sizeof sizes / sizeof sizes[0]);
  s->Cp = Cp;
  s->Vp = Vp;
  return at;
}

static int valid_shape(int64_t H, int64_t K, int64_t V, int64_t Kg) {
  return H >= 1 && K >= 1 && V >= 1 && (Kg == 1 || Kg == K) && K <= (1 << 20) && V <= (1 << 20);
}

int64_t rt_cpu_linattn_work(int64_t H, int64_t K, int64_t V, int64_t Kg, int64_t C) {
  if (!valid_shape(H, K, V, Kg)) return 0;
  if (C < 1) C = RT_CPU_LINATTN_CHUNK;
  Scratch s;
  /* 16 more floats let the call align its base to 64 bytes. */
  return scratch_layout(H, K, V, Kg, C, NULL, &s) + 16;
}

/* ---- exp ------------------------------------------------------------------- */

/* x[0:n] = exp(x[0:n]) (cpu_vec.h's exp8: libm's expf is a call per element). */
INLINE void exp_inplace(float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8 a;
    LOAD8(a, x + i);
    exp8(&a);
    STORE8(x + i, a);
  }
  if (i < n) {
    float tmp[8] = {0};
    memcpy(tmp, x + i, sizeof(float) * (size_t)(n - i));
    v8 a;
    LOAD8(a, tmp);
    exp8(&a);
    STORE8(tmp, a);
    memcpy(x + i, tmp, sizeof(float) * (size_t)(n - i));
  }
}

/* ---- small matrix products --------------------------------------------------- */

enum { PROD_SET, PROD_ADD, PROD_SCALE };
enum { TRI_NONE, TRI_N, TRI_K };

/* One register tile: for rows r < mr and nv vectors of columns,
 *   C[r, j] = (mode: 0 | C[r, j] | beta[r] C[r, j]) + sum_k A[r*lda + k] B[k*ldb + j].
 * mr and nv are constants after inlining, so acc lives in registers. The
 * accumulators start from (beta) C rather than adding it at the end: for the
 * state update's short sums (16 terms at C = 16) that took it from 52 to 65
 * GFLOP/s. One body, two vector widths: tile8 covers one 16-float panel
 * with two eight-lane vectors (12 accumulators, with the two B vectors and a
 * broadcast within AVX2's 16 registers); tile16, for the AVX-512 variant
 * only, one or two panels with sixteen-lane vectors (two keep the 12
 * accumulators, each twice as wide; the last panel of an odd count runs
 * alone with 6). The loops over rows are unrolled by request: GCC 12 kept
 * them (and acc) in memory, and its 16-byte copies into acc then stalled
 * the 32-byte loads. */
#define DEFINE_TILE(name, vec, lanes, load, store)                                                 \
  INLINE void name(int mr, int nv, int64_t kk, const float *A, int64_t lda, const float *B,        \
                   int64_t ldb, float *C, int64_t ldc, int mode, const float *beta) {              \
    vec acc[MR][2];                                                                                \
    _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) for (int h = 0; h < nv; h++) {            \
      vec c = {0};                                                                                 \
      if (mode != PROD_SET) load(c, C + r * ldc + lanes * h);                                      \
      if (mode == PROD_SCALE) c *= beta[r];                                                        \
      acc[r][h] = c;                                                                               \
    }                                                                                              \
    for (int64_t k = 0; k < kk; k++) {                                                             \
      vec b[2];                                                                                    \
      for (int h = 0; h < nv; h++) load(b[h], B + k * ldb + lanes * h);                            \
      _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) {                                       \
        float a = A[r * lda + k];                                                                  \
        for (int h = 0; h < nv; h++) acc[r][h] += a * b[h];                                        \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) for (int h = 0; h < nv; h++)              \
        store(C + r * ldc + lanes * h, acc[r][h]);                                                 \
  }
DEFINE_TILE(tile8, v8, 8, LOAD8, STORE8)
DEFINE_TILE(tile16, v16, 16, LOAD16, STORE16)

/* C[M, N] (op)= A[M, Kk] @ B[Kk, N], N a multiple of 16, in tiles of MR rows
 * by one panel (two with wide, the AVX-512 variant's tiles). tri == TRI_N:
 * the rows of block i need only the columns below round16(i + MR) (the
 * lower triangle of Q K^T); TRI_K: only the first i + MR terms of the sum
 * (a lower-triangular A). */
INLINE void product_body(int64_t M, int64_t N, int64_t Kk, const float *A, int64_t lda,
                         const float *B, int64_t ldb, float *C, int64_t ldc, int mode,
                         const float *beta, int tri, Prefetch *pf, int wide) {
  for (int64_t i = 0; i < M; i += MR) {
    int mr = M - i < MR ? (int)(M - i) : MR;
    int64_t n = tri == TRI_N ? min64(N, round16(i + mr)) : N;
    int64_t kk = tri == TRI_K ? min64(Kk, i + mr) : Kk;
    const float *a = A + i * lda, *bt = beta ? beta + i : NULL;
    float *c = C + i * ldc;
    for (int64_t j = 0; j < n;) {
      int np = wide && j + 32 <= n ? 2 : 1;
      if (!wide)
        TILE_CASES(tile8, 2, kk, a, lda, B + j, ldb, c + j, ldc, mode, bt)
      else if (np == 2)
        TILE_CASES(tile16, 2, kk, a, lda, B + j, ldb, c + j, ldc, mode, bt)
      else
        TILE_CASES(tile16, 1, kk, a, lda, B + j, ldb, c + j, ldc, mode, bt)
      j += 16 * np;
      prefetch_lines(pf);
    }
  }
}

typedef void (*ProductFn)(int64_t M, int64_t N, int64_t Kk, const float *A, int64_t lda,
                          const float *B, int64_t ldb, float *C, int64_t ldc, int mode,
                          const float *beta, int tri, Prefetch *pf);

/* ---- one chunk ------------------------------------------------------------------ */

/* The arguments of rt_cpu_linattn. */
typedef struct LinAttn {
  int64_t T, H, K, V, Kg, C;
  const float *q, *k, *v, *lg;
  int64_t ldq, ldk, ldv, ldg, ldo;
  float *S, *o;
  int exclusive;
} LinAttn;

/* One chunk of one head: n tokens, token i's slice of each array at
 * x + i * ldx. Queries and keys are read in place (the products take any
 * row stride for their A operand, and Q K^T reads a transposed copy of the
 * keys); values and outputs too when V is a multiple of 16, else through
 * padded copies in the scratch. */
typedef struct Chunk {
  int64_t n;
  const float *q, *k, *v;
  float *o;
  int64_t ldq, ldk, ldv, ldo;
  const float *g; /* the gates, exponentiated: n x Kg in the scratch */
} Chunk;

/* Sets up tokens t0 .. t0+n-1 of head h: the views, the gates (1 without a
 * gate), the transposed keys for scalar gates, the padded copy of V. */
INLINE void load_chunk(const LinAttn *a, Scratch *s, int64_t h, int64_t t0, int64_t n, int per_key,
                       Chunk *c) {
  const int64_t K = a->K, V = a->V, Kg = a->Kg;
  c->n = n;
  c->q = a->q ? a->q + t0 * a->ldq + h * K : NULL;
  c->ldq = a->ldq;
  c->k = a->k + t0 * a->ldk + h * K;
  c->ldk = a->ldk;
  if (V % 16 == 0) {
    c->v = a->v + t0 * a->ldv + h * V;
    c->ldv = a->ldv;
    c->o = a->q ? a->o + t0 * a->ldo + h * V : NULL;
    c->ldo = a->ldo;
  } else {
    for (int64_t i = 0; i < n; i++)
      memcpy(s->vc + i * s->Vp, a->v + (t0 + i) * a->ldv + h * V, sizeof(float) * (size_t)V);
    c->v = s->vc;
    c->o = s->oc;
    c->ldv = c->ldo = s->Vp;
  }
  if (!per_key) {
    transpose(n, K, c->k, c->ldk, s->kt, s->Cp);
    /* Q K^T reads keys up to the next multiple of 16. */
    for (int64_t d = 0; d < K; d++)
      for (int64_t i = n; i < round16(n); i++) s->kt[d * s->Cp + i] = 0.0f;
  }
  c->g = s->gc;
  if (!a->lg) {
    for (int64_t i = 0; i < n * Kg; i++) s->gc[i] = 1.0f;
    return;
  }
  for (int64_t i = 0; i < n; i++)
    memcpy(s->gc + i * Kg, a->lg + (t0 + i) * a->ldg + h * Kg, sizeof(float) * (size_t)Kg);
  exp_inplace(s->gc, n * Kg);
}

/* One chunk with a scalar gate g[i] per token. */
INLINE void chunk_scalar(const LinAttn *a, Scratch *s, const Chunk *c, ProductFn product) {
  const int64_t K = a->K, Cp = s->Cp, Vp = s->Vp, n = c->n;
  const float *g = c->g;
  float *dr = s->dr;
  if (c->q) {
    /* Between chunks: O = (Q (.) Gamma) S0^T, Gamma_i the product of the
     * gates up to token i (exclusive: before it). */
    float gamma = 1.0f;
    for (int64_t i = 0; i < n; i++) {
      if (!a->exclusive) gamma *= g[i];
      for (int64_t d = 0; d < K; d++) s->qs[i * K + d] = c->q[i * c->ldq + d] * gamma;
      if (a->exclusive) gamma *= g[i];
    }
    product(n, Vp, K, s->qs, K, s->st, Vp, c->o, c->ldo, PROD_SET, NULL, TRI_NONE, &s->pf);
    /* Inside: the lower triangle of Q K^T, times the decay mask
     * M[i, j] = g[j+1] ... g[i] (exclusive: ... g[i-1], and j < i). The
     * row of M is carried from token to token in dr. Entries above the
     * diagonal that the next product reads (up to its row block's end) are
     * zeroed. */
    product(n, round16(n), K, c->q, c->ldq, s->kt, Cp, s->sc, Cp, PROD_SET, NULL, TRI_N, &s->pf);
    for (int64_t i = 0; i < n; i++) {
      float *row = s->sc + i * Cp;
      int64_t end = min64(i / MR * MR + MR, n);
      if (a->exclusive) {
        for (int64_t j = 0; j < i; j++) row[j] *= dr[j];
        for (int64_t j = i; j < end; j++) row[j] = 0.0f;
      }
      for (int64_t j = 0; j < i; j++) dr[j] *= g[i];
      dr[i] = 1.0f;
      if (!a->exclusive) {
        for (int64_t j = 0; j <= i; j++) row[j] *= dr[j];
        for (int64_t j = i + 1; j < end; j++) row[j] = 0.0f;
      }
    }
    product(n, Vp, n, s->sc, Cp, c->v, c->ldv, c->o, c->ldo, PROD_ADD, NULL, TRI_K, &s->pf);
  }
  /* The state: S^T = Gamma_n S0^T + (K^T diag(w)) V, w_j = g[j+1] ... g[n-1],
   * the suffix products, formed from the end. */
  float w = 1.0f;
  for (int64_t j = n - 1; j >= 0; j--) {
    dr[j] = w;
    w *= g[j];
  }
  for (int64_t d = 0; d < K; d++) {
    for (int64_t j = 0; j < n; j++) s->kt[d * Cp + j] *= dr[j];
    s->gx[d] = w;
  }
  product(K, Vp, n, s->kt, Cp, c->v, c->ldv, s->st, Vp, PROD_SCALE, s->gx, TRI_NONE, &s->pf);
}

/* A one in lane SUB - 1: the SUB floats from unit_lane + SUB - 1 - i are
 * the unit vector of lane i. */
static const float unit_lane[2 * SUB - 1] = {[SUB - 1] = 1.0f};

/* The diagonal block of the sub-chunk of ni tokens at j0, for keys d0 ..
 * d0+nk-1: for its tokens i and j (j <= i; j < i when exclusive), adds
 *   sum_d q[i, d] k[j, d] g[j+1, d] ... g[i, d]
 * (the product up to g[i-1, d] when exclusive) to sc[i, j0 + j] (sets it
 * when d0 == 0), and sets kt[d, j0 + j] = k[j, d] times the gates after j
 * to the sub-chunk's end, for the next reference point. The decayed keys
 * w (one lane per token of the sub-chunk) stay in registers while the
 * tokens pass, each decaying them by its gate and adding its key in its own
 * lane; nk is a constant after inlining, which keeps them there. */
INLINE void diag_keys(int nk, const Chunk *c, Scratch *s, int64_t K, int64_t d0, int64_t j0,
                      int64_t ni, int exclusive) {
  const int64_t Cp = s->Cp;
  v8 w[4][2];
#pragma GCC unroll 4
  for (int u = 0; u < nk; u++) w[u][0] = w[u][1] = (v8){0};
  for (int64_t i = 0; i < ni; i++) {
    const float *qi = c->q + (j0 + i) * c->ldq + d0, *ki = c->k + (j0 + i) * c->ldk + d0;
    const float *gi = c->g + (j0 + i) * K + d0;
    v8 e0, e1, acc0 = {0}, acc1 = {0};
    LOAD8(e0, unit_lane + SUB - 1 - i);
    LOAD8(e1, unit_lane + SUB - 1 - i + 8);
#pragma GCC unroll 4
    for (int u = 0; u < nk; u++) {
      if (exclusive) {
        acc0 += qi[u] * w[u][0];
        acc1 += qi[u] * w[u][1];
      }
      w[u][0] = w[u][0] * gi[u] + ki[u] * e0;
      w[u][1] = w[u][1] * gi[u] + ki[u] * e1;
      if (!exclusive) {
        acc0 += qi[u] * w[u][0];
        acc1 += qi[u] * w[u][1];
      }
    }
    float *row = s->sc + i * Cp + j0;
    if (d0 > 0) {
      v8 old0, old1;
      LOAD8(old0, row);
      LOAD8(old1, row + 8);
      acc0 += old0;
      acc1 += old1;
    }
    STORE8(row, acc0);
    STORE8(row + 8, acc1);
  }
#pragma GCC unroll 4
  for (int u = 0; u < nk; u++) {
    STORE8(s->kt + (d0 + u) * Cp + j0, w[u][0]);
    STORE8(s->kt + (d0 + u) * Cp + j0 + 8, w[u][1]);
  }
}

INLINE void diag_block(const Chunk *c, Scratch *s, int64_t K, int64_t j0, int64_t ni,
                       int exclusive) {
  int64_t d0 = 0;
  for (; d0 + 4 <= K; d0 += 4) diag_keys(4, c, s, K, d0, j0, ni, exclusive);
  for (; d0 < K; d0++) diag_keys(1, c, s, K, d0, j0, ni, exclusive);
}

/* One chunk with per-key gates g[i*K + d]. */
INLINE void chunk_per_key(const LinAttn *a, Scratch *s, const Chunk *c, ProductFn product) {
  const int64_t K = a->K, Cp = s->Cp, Vp = s->Vp, n = c->n;
  const float *g = c->g;
  float *pv = s->pv, *gx = s->gx, *kt = s->kt;
  if (!c->q) {
    /* Only the state: kt[d, j] = k[j, d] times the gates after j. */
    for (int64_t d = 0; d < K; d++) pv[d] = 1.0f;
    for (int64_t j = n - 1; j >= 0; j--)
      for (int64_t d = 0; d < K; d++) {
        kt[d * Cp + j] = c->k[j * c->ldk + d] * pv[d];
        pv[d] *= g[j * K + d];
      }
    product(K, Vp, n, kt, Cp, c->v, c->ldv, s->st, Vp, PROD_SCALE, pv, TRI_NONE, &s->pf);
    return;
  }
  for (int64_t d = 0; d < K; d++) gx[d] = 1.0f;
  for (int64_t j0 = 0; j0 < n; j0 += SUB) {
    int64_t ni = min64(SUB, n - j0);
    /* Invariant: kt[d, j] for j < j0 is k[j, d] times the gates after j up
     * to token j0 - 1, the reference point; gx the gates up to j0 - 1.
     * Queries decayed from the reference point (qr, against the earlier
     * sub-chunks' keys) and from the chunk start (qs, against S0). */
    for (int64_t d = 0; d < K; d++) pv[d] = 1.0f;
    for (int64_t i = 0; i < ni; i++) {
      const float *gi = g + (j0 + i) * K, *qi = c->q + (j0 + i) * c->ldq;
      float *qr = s->qr + i * K, *qs = s->qs + (j0 + i) * K;
      if (!a->exclusive)
        for (int64_t d = 0; d < K; d++) pv[d] *= gi[d];
      for (int64_t d = 0; d < K; d++) {
        qr[d] = qi[d] * pv[d];
        qs[d] = qr[d] * gx[d];
      }
      if (a->exclusive)
        for (int64_t d = 0; d < K; d++) pv[d] *= gi[d];
    }
    diag_block(c, s, K, j0, ni, a->exclusive);
    /* Scores against the earlier sub-chunks: one product of bounded
     * factors; then these rows of the output, the scores times V. */
    if (j0 > 0) product(ni, j0, K, s->qr, K, kt, Cp, s->sc, Cp, PROD_SET, NULL, TRI_NONE, &s->pf);
    float *o = c->o + j0 * c->ldo;
    product(ni, Vp, j0 + ni, s->sc, Cp, c->v, c->ldv, o, c->ldo, PROD_SET, NULL, TRI_NONE, &s->pf);
    /* Move the reference point to the sub-chunk's last token: the earlier
     * keys decay by its gates (its own are in place, from diag_block). */
    for (int64_t d = 0; d < K; d++) {
      float *kr = kt + d * Cp;
      for (int64_t j = 0; j < j0; j++) kr[j] *= pv[d];
      gx[d] *= pv[d];
    }
  }
  /* Between chunks, all rows at once: O += (Q (.) Gamma) S0^T. Then the
   * state: S^T = diag(gx) S0^T + kt V, kt decayed to the last token. */
  product(n, Vp, K, s->qs, K, s->st, Vp, c->o, c->ldo, PROD_ADD, NULL, TRI_NONE, &s->pf);
  product(K, Vp, n, kt, Cp, c->v, c->ldv, s->st, Vp, PROD_SCALE, gx, TRI_NONE, &s->pf);
}

/* Points the cursor at tokens t0 .. t0+n-1, every head. */
static void prefetch_start(const LinAttn *a, Prefetch *p, int64_t t0, int64_t n) {
  p->tokens = n;
  if (n <= 0) return;
  const float *base[4] = {a->q, a->k, a->v, a->lg};
  const int64_t ld[4] = {a->ldq, a->ldk, a->ldv, a->ldg};
  const int64_t width[4] = {a->H * a->K, a->H * a->K, a->H * a->V, a->H * a->Kg};
  p->narrays = 0;
  for (int i = 0; i < 4; i++) {
    if (!base[i]) continue;
    const float *row = base[i] + t0 * ld[i];
    uintptr_t start = (uintptr_t)row & ~(uintptr_t)63;
    p->at[p->narrays] = (const char *)start;
    p->ld[p->narrays] = ld[i] * (int64_t)sizeof(float);
    p->len[p->narrays] = (int64_t)((uintptr_t)(row + width[i]) - start);
    p->narrays++;
  }
  p->arr = 0;
}

/* ---- all chunks, all heads -------------------------------------------------------------- */

/* Chunks in order and, within a chunk, the heads: the heads' slices of a
 * token's rows lie side by side, so a chunk reads its rows whole. Head by
 * head over the whole sequence (one 256-byte slice of each 1 KiB row at a
 * time) ran at two thirds of the speed, at T = 4096 and H = 4, of one head
 * whose rows are contiguous. Every head's state stays in the scratch. */
INLINE void run_body(const LinAttn *a, Scratch *s, ProductFn product) {
  const int64_t H = a->H, K = a->K, V = a->V, Vp = s->Vp;
  const int per_key = a->Kg == K && K > 1;
  for (int64_t h = 0; h < H; h++) {
    float *st = s->states + h * K * Vp;
    transpose(V, K, a->S + h * V * K, K, st, Vp);
    for (int64_t d = 0; d < K; d++)
      for (int64_t j = V; j < Vp; j++) st[d * Vp + j] = 0.0f;
  }
  if (V % 16 != 0)
    for (int64_t i = 0; i < a->C; i++)
      for (int64_t j = V; j < Vp; j++) s->vc[i * Vp + j] = 0.0f;
  for (int64_t t0 = 0; t0 < a->T; t0 += a->C) {
    int64_t n = min64(a->C, a->T - t0);
    /* The next chunk's rows, all heads, come in while this one is
     * computed. */
    prefetch_start(a, &s->pf, t0 + n, min64(a->C, a->T - t0 - n));
    for (int64_t h = 0; h < H; h++) {
      Chunk c;
      load_chunk(a, s, h, t0, n, per_key, &c);
      s->st = s->states + h * K * Vp;
      if (per_key)
        chunk_per_key(a, s, &c, product);
      else
        chunk_scalar(a, s, &c, product);
      if (a->q && c.o == s->oc)
        for (int64_t i = 0; i < n; i++)
          memcpy(a->o + (t0 + i) * a->ldo + h * V, s->oc + i * Vp, sizeof(float) * (size_t)V);
    }
  }
  for (int64_t h = 0; h < H; h++) transpose(K, V, s->states + h * K * Vp, Vp, a->S + h * V * K, K);
}

/* One copy of the products and of the driver per instruction set, as in
 * cpu_gemm.c: the AVX-512 copy's products use sixteen-lane tiles (wide), the
 * rest of its driver is the eight-lane code compiled for AVX-512. */
#define LINATTN_VARIANT(suffix, attr, wide)                                                        \
  attr static void product_##suffix(int64_t M, int64_t N, int64_t Kk, const float *A, int64_t lda, \
                                    const float *B, int64_t ldb, float *C, int64_t ldc, int mode,  \
                                    const float *beta, int tri, Prefetch *pf) {                    \
    product_body(M, N, Kk, A, lda, B, ldb, C, ldc, mode, beta, tri, pf, wide);                     \
  }                                                                                                \
  attr static void run_##suffix(const LinAttn *a, Scratch *s) {                                    \
    run_body(a, s, product_##suffix);                                                              \
  }

LINATTN_VARIANT(generic, , 0)
#if defined(__x86_64__) && defined(__GNUC__)
LINATTN_VARIANT(avx2, __attribute__((target("avx2,fma"))), 0)
LINATTN_VARIANT(avx512, __attribute__((target("avx512f,avx2,fma"))), 1)
#endif

void rt_cpu_linattn(int64_t T, int64_t H, int64_t K, int64_t V, const float *q, int64_t ldq,
                    const float *k, int64_t ldk, const float *v, int64_t ldv, const float *lg,
                    int64_t ldg, int64_t Kg, float *S, float *o, int64_t ldo, int64_t C,
                    int exclusive, float *work) {
  if (T <= 0 || !valid_shape(H, K, V, Kg)) return;
  if (C < 1) C = RT_CPU_LINATTN_CHUNK;
  LinAttn a = {T, H, K, V, Kg, C, q, k, v, lg, ldq, ldk, ldv, ldg, ldo, S, o, exclusive != 0};
  Scratch s;
  float *base = work + (16 - (int64_t)((uintptr_t)work / sizeof(float) % 16)) % 16;
  scratch_layout(H, K, V, Kg, C, base, &s);
  void (*run)(const LinAttn *, Scratch *) = run_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  /* Checked here rather than through rt_cpu_gemm_isa(): a virtual machine
   * may show AVX-512F and hide AVX2. The checks include the OS's support
   * for the registers (XCR0). */
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) run = run_avx2;
  /* The sixteen-lane tiles where the products' ISA is AVX-512 (not when
   * SEQ_CPU_ISA or rt_cpu_gemm_set_isa asks for less). */
  if (run == run_avx2 && __builtin_cpu_supports("avx512f") &&
      strcmp(rt_cpu_gemm_isa(), "avx512f") == 0)
    run = run_avx512;
#endif
  run(&a, &s);
}
