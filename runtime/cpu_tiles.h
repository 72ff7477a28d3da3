/* cpu_tiles.h - the register tiles shared by the chunkwise-parallel kernels
 * of the delta rules and of pLSTM (cpu_delta.c, cpu_dplr.c, cpu_plstm.c): small matrix products
 * with rows of 16 floats, with a lower-triangular variant and a blocked forward substitution, and a
 * cursor that prefetches the next head's inputs from between the tiles (the vectors, exp8 and the
 * register transpose are cpu_vec.h's, shared with cpu_linattn.c). Every function is static inline
 * (the products always inline), so that each includer compiles them once
 * per instruction set, inside its own target-attributed variants.
 *
 * Include after the fp-contract pragma (as cpu_delta.c does): the tiles'
 * a * b + c must become FMAs.
 */
#ifndef SEQ_RUNTIME_CPU_TILES_H
#define SEQ_RUNTIME_CPU_TILES_H

#include <stdint.h>
#include <string.h>

#include "runtime/cpu_vec.h"
#include "runtime/rt_cpu.h"

/* A register tile is MR rows by one 16-float panel (two vectors): 12
 * accumulators, with the two B vectors and a broadcast within AVX2's 16
 * registers. It is also the block of the forward substitution. */
#define MR 6

/* ---- prefetching ------------------------------------------------------------------------ */

/* The inputs are prefetched a few lines at a time from between the register
 * tiles of the products, where the misses overlap the arithmetic (the
 * includers say what they fetch and when). The cursor walks token by token
 * over up to PREFETCH_MAX_ARRAYS arrays, a row of each per token. */
#define PREFETCH_MAX_ARRAYS 12
typedef struct Prefetch {
  const char *at[PREFETCH_MAX_ARRAYS]; /* the current token's row of each array, 64-byte aligned */
  int64_t ld[PREFETCH_MAX_ARRAYS];     /* bytes from one token to the next */
  int64_t len[PREFETCH_MAX_ARRAYS];    /* bytes to fetch per token */
  int narrays, arr;
  int64_t tokens; /* tokens left, the current one included */
} Prefetch;

/* Lines handed to the prefetcher after each register tile, at least (for
 * cpu_delta.c 2 to 8 ran at the same speed: a head's slices are about 300
 * lines at C = 16, its chunk about 100 tiles; for cpu_dplr.c 3 to 10 did). */
#define PREFETCH_LINES 3

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

/* Adds an array to the cursor (nothing if base is NULL): the rows from
 * token t0 on, width floats each from column col, ld floats apart. */
static inline void prefetch_add(Prefetch *p, const float *base, int64_t ld, int64_t col,
                                int64_t width, int64_t t0) {
  if (!base) return;
  const float *row = base + t0 * ld + col;
  uintptr_t start = (uintptr_t)row & ~(uintptr_t)63;
  p->at[p->narrays] = (const char *)start;
  p->ld[p->narrays] = ld * (int64_t)sizeof(float);
  p->len[p->narrays] = (int64_t)((uintptr_t)(row + width) - start);
  p->narrays++;
}

/* ---- small matrix products --------------------------------------------------------------- */

enum { PROD_SET, PROD_ADD, PROD_SCALE };
enum { TRI_NONE, TRI_N, TRI_K2, TRI_SOLVE };

/* One product, or two summed into one result: for rows i < M and columns
 * j < N (a multiple of 16),
 *   C[i, j] = (mode: 0 | C0[i, j] | beta[i] C0[i, j])
 *           + s1[i] sum_{k < k1} A1[i*lda1 + k] B1[k*ldb1 + j]
 *           + sum_{k < k2} A2[i*lda2 + k] B2[k*ldb2 + j]
 * C0 is C unless c0 is given (then c0 with stride ldc0); s1 is 1 unless
 * scale1 is given; a2 == NULL: no second sum. Row i of the A operands
 * stands for the micro-steps up to (i + 1) step - 1 (step = R for queries
 * against micro-steps, 1 otherwise), and tri says which terms are known to
 * be zero:
 * TRI_N, the rows of a block of MR need only the columns below
 * round16((i + MR) step) (a lower triangle of K K^T or Q K^T); TRI_K2, only
 * the first (i + MR) step terms of the second sum (A2 lower triangular).
 * TRI_SOLVE makes it the forward substitution
 *   C[i, :] <- C[i, :] + sum_{k < k1} A1[i, k] B1[k, :] + sum_{k < i} A2[i, k] C[k, :]
 * in order of i (A2 strictly lower triangular, B2 == C, k2 ignored): a block
 * of rows adds the finished rows above it as an ordinary second sum, then
 * the small triangle inside the block in registers. */
typedef struct Prod {
  int64_t M, N;
  const float *a1, *b1, *a2, *b2;
  int64_t lda1, ldb1, k1, lda2, ldb2, k2;
  float *c;
  int64_t ldc;
  int mode, tri;
  const float *beta, *scale1, *c0;
  int64_t step, ldc0;
} Prod;

/* One register tile of a Prod: rows i .. i+mr-1 of the result, nv vectors
 * of columns from j; k2 the second sum's length for this block. mr and nv
 * are constants after inlining, so acc lives in registers. The accumulators
 * start from (beta) C0 rather than adding it at the end (as in
 * cpu_linattn.c, for the short sums of the state update), unless the first
 * sum is scaled. One body, two vector widths (as cpu_linattn.c's tiles):
 * tile8 covers one 16-float panel with two eight-lane vectors; tile16, for
 * the AVX-512 variant only, one or two panels with sixteen-lane vectors.
 * The loops over rows are unrolled by request (GCC 12 otherwise keeps acc
 * in memory). */
#define TILE_ACCUMULATE(vec, lanes, load, A, lda, B, ldb, kk)                                      \
  for (int64_t k = 0; k < (kk); k++) {                                                             \
    vec b[2];                                                                                      \
    for (int h = 0; h < nv; h++) load(b[h], (B) + k * (ldb) + lanes * h);                          \
    _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) {                                         \
      float a = (A)[r * (lda) + k];                                                                \
      for (int h = 0; h < nv; h++) acc[r][h] += a * b[h];                                          \
    }                                                                                              \
  }
#define DEFINE_TILE(name, vec, lanes, load, store)                                                 \
  INLINE void name(int mr, int nv, const Prod *p, int64_t i, int64_t j, int64_t k2) {              \
    vec acc[MR][2];                                                                                \
    float *C = p->c + i * p->ldc + j;                                                              \
    const int64_t ldc = p->ldc;                                                                    \
    const float *C0 = p->c0 ? p->c0 + i * p->ldc0 + j : C;                                         \
    const int64_t ldc0 = p->c0 ? p->ldc0 : ldc;                                                    \
    _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) for (int h = 0; h < nv; h++) {            \
      vec c = {0};                                                                                 \
      if (p->mode != PROD_SET && !p->scale1) load(c, C0 + r * ldc0 + lanes * h);                   \
      if (p->mode == PROD_SCALE && !p->scale1) c *= p->beta[i + r];                                \
      acc[r][h] = c;                                                                               \
    }                                                                                              \
    TILE_ACCUMULATE(vec, lanes, load, p->a1 + i * p->lda1, p->lda1, p->b1 + j, p->ldb1, p->k1)     \
    if (p->scale1) {                                                                               \
      _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) for (int h = 0; h < nv; h++) {          \
        vec c = {0};                                                                               \
        if (p->mode != PROD_SET) load(c, C0 + r * ldc0 + lanes * h);                               \
        if (p->mode == PROD_SCALE) c *= p->beta[i + r];                                            \
        acc[r][h] = acc[r][h] * p->scale1[i + r] + c;                                              \
      }                                                                                            \
    }                                                                                              \
    if (p->a2) {                                                                                   \
      TILE_ACCUMULATE(vec, lanes, load, p->a2 + i * p->lda2, p->lda2, p->b2 + j, p->ldb2, k2)      \
    }                                                                                              \
    if (p->tri == TRI_SOLVE) {                                                                     \
      const float *A = p->a2 + i * p->lda2 + i;                                                    \
      _Pragma("GCC unroll 6") for (int r = 1; r < mr; r++)                                         \
          _Pragma("GCC unroll 6") for (int q = 0; q < r; q++) {                                    \
        float a = A[r * p->lda2 + q];                                                              \
        for (int h = 0; h < nv; h++) acc[r][h] += a * acc[q][h];                                   \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 6") for (int r = 0; r < mr; r++) for (int h = 0; h < nv; h++)              \
        store(C + r * ldc + lanes * h, acc[r][h]);                                                 \
  }
DEFINE_TILE(tile8, v8, 8, LOAD8, STORE8)
DEFINE_TILE(tile16, v16, 16, LOAD16, STORE16)

/* A Prod in tiles of MR rows by one panel (two with wide, the AVX-512
 * variant's tiles). */
INLINE void product_body(const Prod *p, Prefetch *pf, int wide) {
  for (int64_t i = 0; i < p->M; i += MR) {
    int mr = p->M - i < MR ? (int)(p->M - i) : MR;
    int64_t n = p->tri == TRI_N ? min64(p->N, round16((i + mr) * p->step)) : p->N;
    int64_t k2 = p->tri == TRI_K2      ? min64(p->k2, (i + mr) * p->step)
                 : p->tri == TRI_SOLVE ? i
                                       : p->k2;
    for (int64_t j = 0; j < n;) {
      int np = wide && j + 32 <= n ? 2 : 1;
      if (!wide)
        TILE_CASES(tile8, 2, p, i, j, k2)
      else if (np == 2)
        TILE_CASES(tile16, 2, p, i, j, k2)
      else
        TILE_CASES(tile16, 1, p, i, j, k2)
      j += 16 * np;
      prefetch_lines(pf);
    }
  }
}

typedef void (*ProductFn)(const Prod *p, Prefetch *pf);

/* Every head's state, S [H, V, K], into the scratch transposed ([K, Vp]
 * per head, the columns past V zero), and back at the end of a call. */
static inline void states_in(int64_t H, int64_t K, int64_t V, int64_t Vp, const float *S,
                             float *states) {
  for (int64_t h = 0; h < H; h++) {
    float *st = states + h * K * Vp;
    transpose(V, K, S + h * V * K, K, st, Vp);
    for (int64_t d = 0; d < K; d++)
      for (int64_t j = V; j < Vp; j++) st[d * Vp + j] = 0.0f;
  }
}

static inline void states_out(int64_t H, int64_t K, int64_t V, int64_t Vp, const float *states,
                              float *S) {
  for (int64_t h = 0; h < H; h++) transpose(K, V, states + h * K * Vp, Vp, S + h * V * K, K);
}

/* dst[0:n] = src[0:n], then zeros up to m. Not memcpy: a call per row
 * took 8% of cpu_dplr.c's time at K = 64. */
INLINE void copy_row(float *dst, const float *src, int64_t n, int64_t m) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8 x;
    LOAD8(x, src + j);
    STORE8(dst + j, x);
  }
  for (; j < n; j++) dst[j] = src[j];
  for (; j < m; j++) dst[j] = 0.0f;
}

static inline int64_t round8(int64_t n) {
  return (n + 7) / 8 * 8;
}

/* The first 64-byte boundary of the caller's work (any float alignment). */
static inline float *align_work(float *work) {
  return work + (16 - (int64_t)((uintptr_t)work / sizeof(float) % 16)) % 16;
}

/* ---- one copy per instruction set ----------------------------------------------------- */

/* A kernel's driver run_body(a, s, product) and the products, compiled once
 * per instruction set by TILES_VARIANTS(Args) (Args and Scratch are the
 * includer's types), and TILES_RUN(a, s) running the best copy the CPU and
 * the OS (its XCR0) support: the AVX-512 copy's products use sixteen-lane
 * tiles, the rest of its driver is the eight-lane code compiled for
 * AVX-512; it runs only where the products' ISA (rt_cpu_gemm_isa, which
 * SEQ_CPU_ISA can lower) is AVX-512. */
#define TILES_VARIANT(suffix, attr, Args, wide)                                                    \
  attr static void product_##suffix(const Prod *p, Prefetch *pf) {                                 \
    product_body(p, pf, wide);                                                                     \
  }                                                                                                \
  attr static void run_##suffix(const Args *a, Scratch *s) {                                       \
    run_body(a, s, product_##suffix);                                                              \
  }
#if defined(__x86_64__) && defined(__GNUC__)
#define TILES_VARIANTS(Args)                                                                       \
  TILES_VARIANT(generic, , Args, 0)                                                                \
  TILES_VARIANT(avx2, __attribute__((target("avx2,fma"))), Args, 0)                                \
  TILES_VARIANT(avx512, __attribute__((target("avx512f,avx2,fma"))), Args, 1)
#define TILES_RUN(a, s)                                                                            \
  do {                                                                                             \
    __builtin_cpu_init();                                                                          \
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&                         \
        __builtin_cpu_supports("avx512f") && strcmp(rt_cpu_gemm_isa(), "avx512f") == 0)            \
      run_avx512(a, s);                                                                            \
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))                      \
      run_avx2(a, s);                                                                              \
    else                                                                                           \
      run_generic(a, s);                                                                           \
  } while (0)
#else
#define TILES_VARIANTS(Args) TILES_VARIANT(generic, , Args, 0)
#define TILES_RUN(a, s) run_generic(a, s)
#endif

#endif
