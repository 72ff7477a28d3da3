/* cpu_gemm.c - single-precision GEMM for generated code.
 *
 * The recurrences seqc compiles spend their time in two shapes of product:
 * the hoisted input projection, [B*T, I] @ [I, 4H] (tall, compute-bound), and
 * the recurrent one, [B, H] @ [H, 4H] once per step (short, bound by reading
 * the weights). Both multiply by a constant weight matrix, so the weights are
 * packed once per call (rt_cpu_pack_b) into column panels of NR floats, k-major
 * (Bp[(p*K + k)*NR + j]): the kernel then reads B as one contiguous stream,
 * and a panel's K x NR block (32 KiB at K = 256) stays in L1 while every row
 * block of A passes over it.
 *
 * The micro-kernel keeps an MR x NR = 12 x 32 block of C in 24 vectors (of 32
 * AVX-512 registers) and broadcasts one element of A per row and k, the
 * BLIS-style shape for two FMA ports. Short products (M < 4: the recurrent
 * step at small batch) would be bound by FMA latency on so few accumulator
 * chains, so the kernel then also splits k over U independent partial sums.
 * GCC/Clang vector extensions keep it portable; an AVX-512 and an AVX2 copy
 * are compiled beside the generic one and picked at the first call.
 */
/* MAP_ANONYMOUS and MADV_HUGEPAGE are not POSIX. */
#define _DEFAULT_SOURCE
#include "runtime/rt_cpu.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The project builds with -std=c11, under which GCC does not contract
 * a * b + c into an FMA: the kernel would issue a multiply and an add per
 * FMA and run at half speed. Contraction only changes rounding within the
 * tolerance the backend promises. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

typedef float v16 __attribute__((vector_size(64)));

#define MR 12
#define NR RT_CPU_PACK_NR
#define KC 256 /* k block: a KC x NR panel of B (32 KiB) fits L1 */
#define MC 240 /* row block: an MC x KC block of A (240 KiB) stays in L2 */

_Static_assert(NR == 32, "the micro-kernel holds two 16-float vectors per row");

/* Unaligned vector load/store as macros: passing 64-byte vectors by value
 * across functions would tie the ABI to AVX-512. */
#define LOAD16(dst, p) memcpy(&(dst), (p), sizeof(v16))
#define STORE16(p, v) memcpy((p), &(v), sizeof(v16))

#define INLINE static inline __attribute__((always_inline))

int64_t rt_cpu_packed_floats(int64_t K, int64_t N) {
  if (K < 0 || N < 0) return 0;
  return (N + NR - 1) / NR * NR * K;
}

/* C[0:mr, 0:nc] (+)= A[0:mr, 0:kc] @ Bp-panel[0:kc, 0:32], with mr a constant
 * after inlining so that the accumulators become registers. U partial sums
 * over k keep at least eight FMA chains in flight when mr is small. */
INLINE void kernel(int mr, int64_t kc, const float *A, int64_t lda, const float *Bp, float *C,
                   int64_t ldc, int64_t nc, int accumulate) {
  enum { UMAX = 4 };
  const int U = mr >= 4 ? 1 : mr >= 2 ? 2 : 4;
  v16 c[UMAX][MR][2];
  for (int u = 0; u < U; u++)
    for (int r = 0; r < mr; r++) c[u][r][0] = c[u][r][1] = (v16){0};
  int64_t k = 0;
  for (; k + U <= kc; k += U)
    for (int u = 0; u < U; u++) {
      v16 b0, b1;
      LOAD16(b0, Bp + (k + u) * NR);
      LOAD16(b1, Bp + (k + u) * NR + 16);
      for (int r = 0; r < mr; r++) {
        float a = A[r * lda + k + u];
        c[u][r][0] += a * b0;
        c[u][r][1] += a * b1;
      }
    }
  for (; k < kc; k++) {
    v16 b0, b1;
    LOAD16(b0, Bp + k * NR);
    LOAD16(b1, Bp + k * NR + 16);
    for (int r = 0; r < mr; r++) {
      float a = A[r * lda + k];
      c[0][r][0] += a * b0;
      c[0][r][1] += a * b1;
    }
  }
  for (int u = 1; u < U; u++)
    for (int r = 0; r < mr; r++) {
      c[0][r][0] += c[u][r][0];
      c[0][r][1] += c[u][r][1];
    }
  for (int r = 0; r < mr; r++) {
    float *cr = C + r * ldc;
    if (nc == NR) {
      if (accumulate) {
        v16 o0, o1;
        LOAD16(o0, cr);
        LOAD16(o1, cr + 16);
        c[0][r][0] += o0;
        c[0][r][1] += o1;
      }
      STORE16(cr, c[0][r][0]);
      STORE16(cr + 16, c[0][r][1]);
    } else {
      float tmp[NR];
      STORE16(tmp, c[0][r][0]);
      STORE16(tmp + 16, c[0][r][1]);
      for (int64_t j = 0; j < nc; j++) cr[j] = accumulate ? cr[j] + tmp[j] : tmp[j];
    }
  }
}

/* C[i0:i1, panels p0:p1] = A[i0:i1, :] @ Bp, blocked for the caches: k in
 * KC slices (the first overwrites C, later ones add), rows in MC blocks, then
 * per panel every MR-row tile (the panel's KC x NR slice stays in L1). */
INLINE void gemm_range_body(int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N, int64_t K,
                            const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc) {
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    int64_t kc = K - k0 < KC ? K - k0 : KC;
    int acc = k0 > 0;
    for (int64_t m0 = i0; m0 < i1; m0 += MC) {
      int64_t m1 = i1 - m0 < MC ? i1 : m0 + MC;
      for (int64_t p = p0; p < p1; p++) {
        int64_t j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
        const float *bp = Bp + (p * K + k0) * NR;
        int64_t i = m0;
        for (; i + MR <= m1; i += MR)
          kernel(MR, kc, A + i * lda + k0, lda, bp, C + i * ldc + j0, ldc, nc, acc);
        const float *a = A + i * lda + k0;
        float *c = C + i * ldc + j0;
        /* One call per leftover count, each with a constant mr (kept out of
         * clang-format, which reflows these macro cases differently each run). */
        // clang-format off
        switch (m1 - i) {
#define TAIL(n) case n: kernel(n, kc, a, lda, bp, c, ldc, nc, acc); break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6)
        TAIL(7) TAIL(8) TAIL(9) TAIL(10) TAIL(11)
#undef TAIL
        default: break;
        }
        // clang-format on
      }
    }
  }
}

/* One copy of each hot loop per instruction set, chosen once at run time by
 * exactly the features the copies need (AVX-512F, or AVX2 and FMA). GCC's
 * target_clones("arch=x86-64-v4") would also demand AVX-512 CD/BW/DQ/VL,
 * BMI2, MOVBE and more, which a virtual machine may hide while it exposes
 * AVX-512F, and then quietly run the half-width kernel.
 * ISA_VARIANTS(name, params, args) compiles name##_body for each set into
 * the table name##_by_isa, indexed by isa(). */
enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512, ISA_COUNT };
static const char *const isa_names[ISA_COUNT] = {"generic", "avx2+fma", "avx512f"};
static int isa_level = ISA_GENERIC;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void isa_select(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* These check the OS's register-state support too (XCR0), not only CPUID. */
  if (__builtin_cpu_supports("avx512f"))
    isa_level = ISA_AVX512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    isa_level = ISA_AVX2;
#endif
}

static int isa(void) {
  pthread_once(&isa_once, isa_select);
  return isa_level;
}

const char *rt_cpu_gemm_isa(void) {
  return isa_names[isa()];
}

#if defined(__x86_64__) && defined(__GNUC__)
#define ISA_VARIANTS(name, params, args)                                                           \
  static void name##_generic params {                                                              \
    name##_body args;                                                                              \
  }                                                                                                \
  __attribute__((target("avx2,fma"))) static void name##_avx2 params {                             \
    name##_body args;                                                                              \
  }                                                                                                \
  __attribute__((target("avx512f,fma"))) static void name##_avx512 params {                        \
    name##_body args;                                                                              \
  }                                                                                                \
  static void(*const name##_by_isa[ISA_COUNT])                                                     \
      params = {name##_generic, name##_avx2, name##_avx512};
#else
#define ISA_VARIANTS(name, params, args)                                                           \
  static void name##_generic params {                                                              \
    name##_body args;                                                                              \
  }                                                                                                \
  static void(*const name##_by_isa[ISA_COUNT])                                                     \
      params = {name##_generic, name##_generic, name##_generic};
#endif

ISA_VARIANTS(gemm_range,
             (int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N, int64_t K, const float *A,
              int64_t lda, const float *Bp, float *C, int64_t ldc),
             (i0, i1, p0, p1, N, K, A, lda, Bp, C, ldc))

static void gemm_range(int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N, int64_t K,
                       const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc) {
  gemm_range_by_isa[isa()](i0, i1, p0, p1, N, K, A, lda, Bp, C, ldc);
}

/* ---- packing ---------------------------------------------------------- */

/* r[i][c] -> r[c][i] for 16 vectors of 16: stage `bit` swaps that bit of the
 * row index with the same bit of the column index (two-source permutes, one
 * vpermt2ps each on AVX-512). */
#define TRANSPOSE_STAGE(bit, I0, I1)                                                               \
  for (int i = 0; i < 16; i++)                                                                     \
    if (!(i & (bit))) {                                                                            \
      v16 x_ = r[i], y_ = r[i + (bit)];                                                            \
      r[i] = __builtin_shufflevector(x_, y_, EXPAND I0);                                           \
      r[i + (bit)] = __builtin_shufflevector(x_, y_, EXPAND I1);                                   \
    }
#define EXPAND(...) __VA_ARGS__
INLINE void transpose16(v16 *r) {
  TRANSPOSE_STAGE(1, (0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                  (1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31));
  TRANSPOSE_STAGE(2, (0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                  (2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31));
  TRANSPOSE_STAGE(4, (0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                  (4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31));
  TRANSPOSE_STAGE(8, (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                  (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
}

/* Packs B[K,N] into panels (see rt_cpu_pack_b). From W = B's transpose, a
 * full panel goes through 16 x 16 register transposes: the scalar scatter it
 * replaces was most of a step function's time at B = 64. */
INLINE void pack_body(int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *Bp) {
  int64_t panels = (N + NR - 1) / NR;
  for (int64_t p = 0; p < panels; p++) {
    int64_t j0 = p * NR, nj = N - j0 < NR ? N - j0 : NR;
    float *dst = Bp + p * K * NR;
    if (!trans) {
      for (int64_t k = 0; k < K; k++) {
        memcpy(dst + k * NR, B + k * ldb + j0, sizeof(float) * (size_t)nj);
        for (int64_t j = nj; j < NR; j++) dst[k * NR + j] = 0.0f;
      }
      continue;
    }
    /* B[k, j] = W[j, k]. */
    int64_t k16 = nj == NR ? K / 16 * 16 : 0;
    for (int64_t jb = 0; jb < NR && k16 > 0; jb += 16)
      for (int64_t k0 = 0; k0 < k16; k0 += 16) {
        v16 r[16];
        for (int i = 0; i < 16; i++) LOAD16(r[i], B + (j0 + jb + i) * ldb + k0);
        transpose16(r);
        for (int i = 0; i < 16; i++) STORE16(dst + (k0 + i) * NR + jb, r[i]);
      }
    /* The k tail, and partial panels (zero-padded), element by element. */
    for (int64_t j = 0; j < NR; j++)
      for (int64_t k = k16; k < K; k++) dst[k * NR + j] = j < nj ? B[(j0 + j) * ldb + k] : 0.0f;
  }
}

ISA_VARIANTS(pack, (int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *Bp),
             (K, N, B, ldb, trans, Bp))

void rt_cpu_pack_b(int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *Bp) {
  pack_by_isa[isa()](K, N, B, ldb, trans, Bp);
}

typedef struct GemmTask {
  int64_t M, N, K, lda, ldc;
  const float *A, *Bp;
  float *C;
  int nparts;
  int split_rows; /* 1: parts are row ranges (multiples of MR), 0: panel ranges */
} GemmTask;

static void gemm_part(void *ctx, int part) {
  const GemmTask *t = ctx;
  int64_t panels = (t->N + NR - 1) / NR;
  if (t->split_rows) {
    int64_t tiles = (t->M + MR - 1) / MR;
    int64_t per = (tiles + t->nparts - 1) / t->nparts;
    int64_t i0 = per * MR * part, i1 = i0 + per * MR < t->M ? i0 + per * MR : t->M;
    if (i0 < i1) gemm_range(i0, i1, 0, panels, t->N, t->K, t->A, t->lda, t->Bp, t->C, t->ldc);
  } else {
    int64_t per = (panels + t->nparts - 1) / t->nparts;
    int64_t p0 = per * part, p1 = p0 + per < panels ? p0 + per : panels;
    if (p0 < p1) gemm_range(0, t->M, p0, p1, t->N, t->K, t->A, t->lda, t->Bp, t->C, t->ldc);
  }
}

void rt_cpu_sgemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                         const float *Bp, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, sizeof(float) * (size_t)N);
    return;
  }
  int64_t panels = (N + NR - 1) / NR;
  /* Inside a batch slice (rt_cpu_forward_batched) the threads are taken. */
  int nt = rt_cpu_in_parallel() ? 1 : rt_cpu_get_num_threads();
  /* Below 128K multiply-adds (a few microseconds) the hand-off to a spinning
   * worker costs more than it saves. Batches of two or more are split across
   * threads a level up (rt_cpu_forward_batched), so what reaches this split
   * is mostly the batch-1 step, [1, 256] @ [256, 1024] for LSTM (256K): on
   * two free cores its forward went from 16-17 to 12-14 ms. */
  if (nt <= 1 || (double)M * (double)N * (double)K < 131072.0) {
    gemm_range(0, M, 0, panels, N, K, A, lda, Bp, C, ldc);
    return;
  }
  GemmTask t = {M, N, K, lda, ldc, A, Bp, C, nt, 0};
  /* Tall products split by rows (each thread streams its own rows of A and
   * reads all of B); short ones by panels, so that each thread reads only
   * its own part of the weights, which then stays in its own core's L2. */
  t.split_rows = M >= (int64_t)MR * 8 * nt || panels < nt;
  if (!t.split_rows && panels < t.nparts) t.nparts = (int)panels;
  rt_cpu_parallel_for(t.nparts, gemm_part, &t);
}

/* ---- products straight from the weight, for calls with few tokens ------- */

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* The sum of a vector's 16 lanes by halving (4 shuffles and adds), not 15
 * dependent scalar adds, which were the unpacked kernel's bottleneck. */
INLINE float hsum16(const v16 *ap) {
  v16 a = *ap;
  v8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
}

/* C[m, n] = sum_k A[m, k] W[n, k] (W given as [N, K], the `W @ x` case):
 * 8 rows by 2 columns of dot products at a time, 16 lanes of k each, reduced
 * at the end, so W is read once for every 8 rows of A (16 accumulators and 10
 * loads per k step stay within the 32 vector registers). */
INLINE void nt_body(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
                    int64_t ldw, float *C, int64_t ldc) {
  enum { TM = 8, TN = 2 };
  int64_t K16 = K / 16 * 16;
  for (int64_t m0 = 0; m0 < M; m0 += TM) {
    int mr = M - m0 < TM ? (int)(M - m0) : TM;
    for (int64_t n0 = 0; n0 < N; n0 += TN) {
      int nr = N - n0 < TN ? (int)(N - n0) : TN;
      v16 acc[TM][TN];
      for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) acc[i][j] = (v16){0};
      for (int64_t k = 0; k < K16; k += 16) {
        v16 w[TN];
        for (int j = 0; j < TN; j++) {
          if (j < nr)
            LOAD16(w[j], W + (n0 + j) * ldw + k);
          else
            w[j] = (v16){0};
        }
        for (int i = 0; i < mr; i++) {
          v16 a;
          LOAD16(a, A + (m0 + i) * lda + k);
          for (int j = 0; j < TN; j++) acc[i][j] += a * w[j];
        }
      }
      for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
          float sum = hsum16(&acc[i][j]);
          for (int64_t k = K16; k < K; k++) sum += A[(m0 + i) * lda + k] * W[(n0 + j) * ldw + k];
          C[(m0 + i) * ldc + n0 + j] = sum;
        }
    }
  }
}

/* C[m, :] = sum_k A[m, k] W[k, :] (W given as [K, N], the `x @ W` case): 4
 * rows by 64 columns of C in registers, one row of W per k. */
INLINE void nn_body(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
                    int64_t ldw, float *C, int64_t ldc) {
  int64_t N64 = N / 64 * 64;
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    int mr = M - m0 < 4 ? (int)(M - m0) : 4;
    for (int64_t n0 = 0; n0 < N64; n0 += 64) {
      v16 acc[4][4];
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = (v16){0};
      for (int64_t k = 0; k < K; k++) {
        v16 w[4];
        for (int j = 0; j < 4; j++) LOAD16(w[j], W + k * ldw + n0 + 16 * j);
        for (int i = 0; i < mr; i++) {
          float a = A[(m0 + i) * lda + k];
          for (int j = 0; j < 4; j++) acc[i][j] += a * w[j];
        }
      }
      for (int i = 0; i < mr; i++)
        for (int j = 0; j < 4; j++) STORE16(C + (m0 + i) * ldc + n0 + 16 * j, acc[i][j]);
    }
    for (int i = 0; i < mr; i++)
      for (int64_t n = N64; n < N; n++) {
        float sum = 0.0f;
        for (int64_t k = 0; k < K; k++) sum += A[(m0 + i) * lda + k] * W[k * ldw + n];
        C[(m0 + i) * ldc + n] = sum;
      }
  }
}

ISA_VARIANTS(nt,
             (int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
              int64_t ldw, float *C, int64_t ldc),
             (M, N, K, A, lda, W, ldw, C, ldc))
ISA_VARIANTS(nn,
             (int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
              int64_t ldw, float *C, int64_t ldc),
             (M, N, K, A, lda, W, ldw, C, ldc))

/* C[m, n] = D[n, m] for D [N, M] (row-major, ld M), 16 x 16 blocks in
 * registers. */
INLINE void trans_body(int64_t N, int64_t M, const float *D, float *C, int64_t ldc) {
  int64_t N16 = N / 16 * 16, M16 = M / 16 * 16;
  for (int64_t n0 = 0; n0 < N16; n0 += 16)
    for (int64_t m0 = 0; m0 < M16; m0 += 16) {
      v16 r[16];
      for (int i = 0; i < 16; i++) LOAD16(r[i], D + (n0 + i) * M + m0);
      transpose16(r);
      for (int j = 0; j < 16; j++) STORE16(C + (m0 + j) * ldc + n0, r[j]);
    }
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = m < M16 ? N16 : 0; n < N; n++) C[m * ldc + n] = D[n * M + m];
}
ISA_VARIANTS(trans, (int64_t N, int64_t M, const float *D, float *C, int64_t ldc),
             (N, M, D, C, ldc))

/* C = A @ W^T for W [N, K] and at least SWAP_MIN_M rows of A, without
 * packing W: compute D = W @ A^T instead, where W is the kernel's row operand
 * (read in place, row by row) and A^T the packed operand (A packed: M x K
 * floats, a fraction of W), then C = D^T. The two transposes cost a few
 * percent of the product; packing W, which this avoids, cost as much as the
 * whole product of a 64-row step. -1 if the temporaries cannot be had. */
#define SWAP_MIN_M 32
static int swapped_nt(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
                      int64_t ldw, float *C, int64_t ldc) {
  float *Ap = rt_cpu_alloc_uninit(4 * rt_cpu_packed_floats(K, M));
  float *D = rt_cpu_alloc_uninit(4 * N * M);
  if (!Ap || !D) {
    rt_cpu_free(Ap);
    rt_cpu_free(D);
    return -1;
  }
  rt_cpu_pack_b(K, M, A, lda, 1, Ap); /* B'[k, m] = A[m, k] */
  rt_cpu_sgemm_packed(N, M, K, W, ldw, Ap, D, M);
  trans_by_isa[isa()](N, M, D, C, ldc);
  rt_cpu_free(Ap);
  rt_cpu_free(D);
  return 0;
}

void rt_cpu_sgemm_w(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
                    int64_t ldw, int trans, const float *Bp, float *C, int64_t ldc) {
  if (Bp) {
    rt_cpu_sgemm_packed(M, N, K, A, lda, Bp, C, ldc);
    return;
  }
  if (M <= 0 || N <= 0) return;
  if (trans && M >= SWAP_MIN_M && K > 0 && swapped_nt(M, N, K, A, lda, W, ldw, C, ldc) == 0) return;
  (trans ? nt_by_isa : nn_by_isa)[isa()](M, N, K, A, lda, W, ldw, C, ldc);
}

void rt_cpu_sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  float *bp = rt_cpu_alloc(4 * rt_cpu_packed_floats(K, N));
  if (!bp) {
    /* Out of memory for the packed copy: a plain loop still gets it right. */
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) s += A[i * lda + k] * B[k * ldb + j];
        C[i * ldc + j] = s;
      }
    return;
  }
  rt_cpu_pack_b(K, N, B, ldb, 0, bp);
  rt_cpu_sgemm_packed(M, N, K, A, lda, bp, C, ldc);
  rt_cpu_free(bp);
}

void rt_cpu_transpose(int64_t rows, int64_t cols, const float *src, float *dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += 32)
    for (int64_t c0 = 0; c0 < cols; c0 += 32)
      for (int64_t r = r0; r < rows && r < r0 + 32; r++)
        for (int64_t c = c0; c < cols && c < c0 + 32; c++) dst[c * rows + r] = src[r * cols + c];
}

/* Scratch for one call of a generated function can be hundreds of MiB (the
 * hoisted LSTM gates at B = 64 once were 256 MiB), freshly faulted in on every
 * call: in 4 KiB pages that was a fifth of the run time, and clearing fresh
 * pages (in this VM) was still a fifth with 2 MiB pages. Large blocks are
 * therefore mapped directly, 2 MiB-aligned and marked for transparent huge
 * pages, and freed ones are kept for the next calls (which only need a
 * memset: the memory is already mapped). A forward call split across threads
 * allocates one block per slice at once, so up to CACHE_SLOTS blocks are kept;
 * with a single slot, every slice but one faulted in fresh memory on every call
 * (LSTM at B = 8 on two threads ran 45% slower than two processes at B = 4).
 * Small blocks come from malloc. A 64-byte header in front of every block says
 * which. */
#define HUGE_PAGE ((size_t)2 << 20)
#define BIG_BLOCK ((size_t)256 << 10)
#define CACHE_SLOTS 16
typedef struct AllocHeader {
  size_t mapped; /* bytes mapped at the header, or 0 for a malloc block */
} AllocHeader;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static AllocHeader *cached[CACHE_SLOTS]; /* freed big blocks; NULL where empty */

/* The smallest cached block that holds len bytes (removed from the cache), or
 * NULL. */
static AllocHeader *cache_take(size_t len) {
  pthread_mutex_lock(&cache_lock);
  int best = -1;
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (cached[i] && cached[i]->mapped >= len &&
        (best < 0 || cached[i]->mapped < cached[best]->mapped))
      best = i;
  AllocHeader *h = NULL;
  if (best >= 0) {
    h = cached[best];
    cached[best] = NULL;
  }
  pthread_mutex_unlock(&cache_lock);
  return h;
}

/* Keeps h in an empty slot, or in place of the smallest cached block if that
 * is smaller than h; unmaps whichever block is left over. */
static void cache_put(AllocHeader *h) {
  pthread_mutex_lock(&cache_lock);
  int slot = -1;
  for (int i = 0; i < CACHE_SLOTS && slot < 0; i++)
    if (!cached[i]) slot = i;
  if (slot < 0) {
    slot = 0;
    for (int i = 1; i < CACHE_SLOTS; i++)
      if (cached[i]->mapped < cached[slot]->mapped) slot = i;
    if (cached[slot]->mapped >= h->mapped) slot = -1;
  }
  if (slot >= 0) {
    AllocHeader *old = cached[slot];
    cached[slot] = h;
    h = old;
  }
  pthread_mutex_unlock(&cache_lock);
  if (h) munmap(h, h->mapped);
}

static void *alloc_block(int64_t bytes, int zero) {
  if (bytes < 0 || bytes > ((int64_t)1 << 46)) return NULL;
  size_t n = ((size_t)bytes + 63) / 64 * 64 + 64;
  if (n >= BIG_BLOCK) {
    size_t len = (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    AllocHeader *h = cache_take(len);
    if (h) {
      if (zero) memset((char *)h + 64, 0, n - 64);
      return (char *)h + 64;
    }
    /* Fresh anonymous pages read as zero. */
    char *raw =
        mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw != MAP_FAILED) {
      char *p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
      if (p > raw) munmap(raw, (size_t)(p - raw));
      if (p + len < raw + len + HUGE_PAGE)
        munmap(p + len, (size_t)(raw + len + HUGE_PAGE - (p + len)));
#ifdef MADV_HUGEPAGE
      madvise(p, len, MADV_HUGEPAGE); /* only advice: without it, 4 KiB pages */
#endif
      ((AllocHeader *)p)->mapped = len;
      return p + 64;
    }
    /* No mapping: fall back to malloc. */
  }
  void *p = NULL;
  if (posix_memalign(&p, 64, n) != 0) return NULL;
  if (zero) memset(p, 0, n);
  ((AllocHeader *)p)->mapped = 0;
  return (char *)p + 64;
}

void *rt_cpu_alloc(int64_t bytes) {
  return alloc_block(bytes, 1);
}

void *rt_cpu_alloc_uninit(int64_t bytes) {
  return alloc_block(bytes, 0);
}

void rt_cpu_free(void *p) {
  if (!p) return;
  AllocHeader *h = (AllocHeader *)((char *)p - 64);
  if (h->mapped)
    cache_put(h);
  else
    free(h);
}
