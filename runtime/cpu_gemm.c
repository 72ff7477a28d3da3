/* cpu_gemm.c - single-precision GEMM for generated code.
 *
 * The recurrences seqc compiles spend their time in two shapes of product:
 * the hoisted input projection, [B*T, I] @ [I, 4H] (tall, compute-bound), and
 * the recurrent one, [B, H] @ [H, 4H] once per step (short, bandwidth-bound on
 * the weights). One register-blocked kernel serves both: a 4 x 64 block of C
 * lives in sixteen 16-float vectors while k runs over the whole of K, so a
 * 64-column panel of B (K*256 bytes) stays in L2 across all row blocks.
 * GCC/Clang vector extensions keep it portable; target_clones compiles an
 * AVX-512 and an AVX2 version beside the generic one and picks at load time.
 */
#include "runtime/rt_cpu.h"

#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

#define MR 4
#define NR 64

/* Unaligned vector load/store as macros: passing 64-byte vectors by value
 * across functions would tie the ABI to AVX-512. */
#define LOAD16(dst, p) memcpy(&(dst), (p), sizeof(v16))
#define STORE16(p, v) memcpy((p), &(v), sizeof(v16))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* C[i0:i1, j0:j1] = A[i0:i1, :] @ B[:, j0:j1]. */
MULTIVERSION
static void gemm_block(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t K, const float *A,
                       int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
  int64_t j = j0;
  for (; j + NR <= j1; j += NR) {
    int64_t i = i0;
    for (; i + MR <= i1; i += MR) {
      v16 c[MR][4];
      memset(c, 0, sizeof c);
      for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb + j;
        v16 b0, b1, b2, b3;
        LOAD16(b0, b);
        LOAD16(b1, b + 16);
        LOAD16(b2, b + 32);
        LOAD16(b3, b + 48);
        for (int r = 0; r < MR; r++) {
          float a = A[(i + r) * lda + k];
          c[r][0] += a * b0;
          c[r][1] += a * b1;
          c[r][2] += a * b2;
          c[r][3] += a * b3;
        }
      }
      for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) STORE16(C + (i + r) * ldc + j + 16 * q, c[r][q]);
    }
    for (; i < i1; i++) {
      v16 c[4];
      memset(c, 0, sizeof c);
      for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb + j;
        float a = A[i * lda + k];
        v16 b0, b1, b2, b3;
        LOAD16(b0, b);
        LOAD16(b1, b + 16);
        LOAD16(b2, b + 32);
        LOAD16(b3, b + 48);
        c[0] += a * b0;
        c[1] += a * b1;
        c[2] += a * b2;
        c[3] += a * b3;
      }
      for (int q = 0; q < 4; q++) STORE16(C + i * ldc + j + 16 * q, c[q]);
    }
  }
  /* Columns left over (N not a multiple of 64): a plain loop the compiler
   * vectorizes over j. */
  if (j < j1) {
    for (int64_t i = i0; i < i1; i++) {
      float *c = C + i * ldc;
      for (int64_t jj = j; jj < j1; jj++) c[jj] = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        float a = A[i * lda + k];
        const float *b = B + k * ldb;
        for (int64_t jj = j; jj < j1; jj++) c[jj] += a * b[jj];
      }
    }
  }
}

typedef struct GemmTask {
  int64_t M, N, K, lda, ldb, ldc;
  const float *A, *B;
  float *C;
  int nparts;
  int split_rows; /* 1: parts are row ranges, 0: column ranges (multiples of NR) */
} GemmTask;

static void gemm_part(void *ctx, int p) {
  const GemmTask *t = ctx;
  if (t->split_rows) {
    int64_t rows = (t->M + t->nparts - 1) / t->nparts;
    rows = (rows + MR - 1) / MR * MR;
    int64_t i0 = rows * p, i1 = i0 + rows < t->M ? i0 + rows : t->M;
    if (i0 < i1) gemm_block(i0, i1, 0, t->N, t->K, t->A, t->lda, t->B, t->ldb, t->C, t->ldc);
  } else {
    int64_t panels = (t->N + NR - 1) / NR;
    int64_t per = (panels + t->nparts - 1) / t->nparts;
    int64_t j0 = per * NR * p, j1 = j0 + per * NR < t->N ? j0 + per * NR : t->N;
    if (j0 < j1) gemm_block(0, t->M, j0, j1, t->K, t->A, t->lda, t->B, t->ldb, t->C, t->ldc);
  }
}

void rt_cpu_sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  int nt = rt_cpu_get_num_threads();
  /* Below ~64K multiply-adds the hand-off to another core costs more than it saves. */
  if (nt <= 1 || (double)M * (double)N * (double)K < 65536.0) {
    gemm_block(0, M, 0, N, K, A, lda, B, ldb, C, ldc);
    return;
  }
  GemmTask t = {M, N, K, lda, ldb, ldc, A, B, C, nt, 0};
  int64_t panels = (N + NR - 1) / NR;
  /* Tall products split by rows (each thread streams its own rows of A);
   * short ones by column panels (each thread reads its own part of B). */
  t.split_rows = M >= (int64_t)MR * 4 * nt || panels < nt;
  if (!t.split_rows && panels < t.nparts) t.nparts = (int)panels;
  rt_cpu_parallel_for(t.nparts, gemm_part, &t);
}

void rt_cpu_transpose(int64_t rows, int64_t cols, const float *src, float *dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += 32)
    for (int64_t c0 = 0; c0 < cols; c0 += 32)
      for (int64_t r = r0; r < rows && r < r0 + 32; r++)
        for (int64_t c = c0; c < cols && c < c0 + 32; c++) dst[c * rows + r] = src[r * cols + c];
}

void *rt_cpu_alloc(int64_t bytes) {
  if (bytes < 0 || bytes > ((int64_t)1 << 46)) return NULL;
  size_t n = ((size_t)bytes + 63) / 64 * 64;
  if (n == 0) n = 64;
  void *p = NULL;
  if (posix_memalign(&p, 64, n) != 0) return NULL;
  memset(p, 0, n);
  return p;
}

void rt_cpu_free(void *p) {
  free(p);
}
