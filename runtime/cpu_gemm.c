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
 * The AVX-512 micro-kernel keeps an MR x NR = 12 x 32 block of C in 24
 * vectors (of 32 registers) and broadcasts one element of A per row and k,
 * the BLIS-style shape for two FMA ports. Short products (M < 4: the
 * recurrent step at small batch) would be bound by FMA latency on so few
 * accumulator chains, so the kernel then also splits k over U independent
 * partial sums. AVX2 has 16 registers of 8 floats: there that block would
 * take 48, and a 64-byte vector has no register at all, so the same code kept
 * every accumulator in memory (1.5 GFLOP/s of a 99 GFLOP/s peak on a Zen 3).
 * Its kernel keeps 6 x 16 instead (12 accumulators, two vectors of B, one
 * broadcast of A) and walks a 32-wide panel as two 16-wide slices, so the
 * packed format is the same for every ISA. The generic copy (SSE2 on x86-64,
 * NEON elsewhere) runs the same narrow code in 4-float vectors, 4 x 8.
 * GCC/Clang vector extensions keep it portable; the AVX-512 and AVX2 copies
 * are compiled beside the generic one and picked at the first call, or by
 * $SEQ_CPU_ISA (rt_cpu_gemm_set_isa).
 */
/* MAP_ANONYMOUS and MADV_HUGEPAGE are not POSIX. */
#define _DEFAULT_SOURCE
#include "runtime/rt_cpu.h"

#include <pthread.h>
#include <stdatomic.h>
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
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* Indices of the per-ISA copies, in order of preference. */
enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512, ISA_COUNT };

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
INLINE void kernel16(int mr, int64_t kc, const float *A, int64_t lda, const float *Bp, float *C,
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
INLINE void gemm_range_wide(int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N, int64_t K,
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
          kernel16(MR, kc, A + i * lda + k0, lda, bp, C + i * ldc + j0, ldc, nc, acc);
        const float *a = A + i * lda + k0;
        float *c = C + i * ldc + j0;
        /* One call per leftover count, each with a constant mr (kept out of
         * clang-format, which reflows these macro cases differently each run). */
        // clang-format off
        switch (m1 - i) {
#define TAIL(n) case n: kernel16(n, kc, a, lda, bp, c, ldc, nc, acc); break;
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

/* ---- the narrow kernels: AVX2, and generic (SSE2 or NEON) ------------- */

/* kernel_V for a vector type V of L floats (v8 for AVX2's 16 registers, v4
 * for the generic copy: SSE2 and NEON have no wider registers, and a wider
 * GCC vector then lives in memory):
 *   C[0:mr, 0:nc] (+)= A[0:mr, 0:kc] @ B[0:kc, 0:L*nv]
 * with B's rows ldb floats apart (a slice of a packed panel, ldb = NR, or the
 * weight itself, nn_narrow), and mr, nv, U constants after inlining. The
 * mr * nv * U accumulators, nv vectors of B and a broadcast of A must fit 16
 * registers (see the shapes below). U partial sums over k keep 8 FMA chains
 * in flight (4-cycle latency, two ports) where mr * nv is small.
 * The loops over nv are unrolled by pragma: left as loops, GCC's loop
 * distribution turned the loads of B into one memcpy to a stack array, and
 * the wide tail shapes then kept every vector in memory. */
#define NARROW_KERNEL(V, L)                                                                        \
  INLINE void kernel_##V(int mr, int nv, int U, int64_t kc, const float *A, int64_t lda,           \
                         const float *B, int64_t ldb, float *C, int64_t ldc, int64_t nc,           \
                         int accumulate) {                                                         \
    enum { RMAX = 6, VMAX = 4, UMAX = 2 };                                                         \
    V c[UMAX][RMAX][VMAX];                                                                         \
    for (int u = 0; u < U; u++)                                                                    \
      for (int r = 0; r < mr; r++)                                                                 \
        for (int v = 0; v < nv; v++) c[u][r][v] = (V){0};                                          \
    int64_t k = 0;                                                                                 \
    for (; k + U <= kc; k += U)                                                                    \
      for (int u = 0; u < U; u++) {                                                                \
        V b[VMAX];                                                                                 \
        _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                                       \
            memcpy(&b[v], B + (k + u) * ldb + L * v, sizeof(V));                                   \
        for (int r = 0; r < mr; r++) {                                                             \
          float a = A[r * lda + k + u];                                                            \
          for (int v = 0; v < nv; v++) c[u][r][v] += a * b[v];                                     \
        }                                                                                          \
      }                                                                                            \
    for (; k < kc; k++) {                                                                          \
      V b[VMAX];                                                                                   \
      _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                                         \
          memcpy(&b[v], B + k * ldb + L * v, sizeof(V));                                           \
      for (int r = 0; r < mr; r++) {                                                               \
        float a = A[r * lda + k];                                                                  \
        for (int v = 0; v < nv; v++) c[0][r][v] += a * b[v];                                       \
      }                                                                                            \
    }                                                                                              \
    for (int u = 1; u < U; u++)                                                                    \
      for (int r = 0; r < mr; r++)                                                                 \
        for (int v = 0; v < nv; v++) c[0][r][v] += c[u][r][v];                                     \
    for (int r = 0; r < mr; r++) {                                                                 \
      float *cr = C + r * ldc;                                                                     \
      if (nc == L * nv) {                                                                          \
        for (int v = 0; v < nv; v++) {                                                             \
          if (accumulate) {                                                                        \
            V o;                                                                                   \
            memcpy(&o, cr + L * v, sizeof(V));                                                     \
            c[0][r][v] += o;                                                                       \
          }                                                                                        \
          memcpy(cr + L * v, &c[0][r][v], sizeof(V));                                              \
        }                                                                                          \
      } else {                                                                                     \
        float tmp[L * VMAX];                                                                       \
        for (int v = 0; v < nv; v++) memcpy(tmp + L * v, &c[0][r][v], sizeof(V));                  \
        for (int64_t j = 0; j < nc; j++) cr[j] = accumulate ? cr[j] + tmp[j] : tmp[j];             \
      }                                                                                            \
    }                                                                                              \
  }
NARROW_KERNEL(v8, 8)
NARROW_KERNEL(v4, 4)

/* The narrow copies' shapes. A full tile is TILE_ROWS x TILE_VECS vectors:
 * AVX2 6 x 2 (12 accumulators, 2 of B, 1 of A: 15 of 16 ymm), generic 4 x 2
 * (SSE2 multiplies into a temporary before the add: 12 of 16 xmm). The last
 * mr rows of a row block take TAIL_VECS vectors and TAIL_SPLIT partial sums:
 * 1 and 2 rows the whole width of 4 vectors (8 chains for the same loads of
 * A), 3 rows 2 vectors in two partial sums on AVX2 (12 chains; at 4 vectors,
 * 12 accumulators and 4 vectors of B spilled under clang). */
#define LANES(isa_) ((isa_) == ISA_AVX2 ? 8 : 4)
#define TILE_ROWS(isa_) ((isa_) == ISA_AVX2 ? 6 : 4)
#define TILE_VECS 2
#define TAIL_VECS(mr) ((mr) <= 2 ? 4 : 2)
#define TAIL_SPLIT(isa_, mr) ((mr) == 1 || ((mr) == 3 && (isa_) == ISA_AVX2) ? 2 : 1)

INLINE void kernel_narrow(int isa_, int mr, int nv, int U, int64_t kc, const float *A, int64_t lda,
                          const float *B, int64_t ldb, float *C, int64_t ldc, int64_t nc,
                          int accumulate) {
  if (isa_ == ISA_AVX2)
    kernel_v8(mr, nv, U, kc, A, lda, B, ldb, C, ldc, nc, accumulate);
  else
    kernel_v4(mr, nv, U, kc, A, lda, B, ldb, C, ldc, nc, accumulate);
}

/* Rows [0, mr) of one panel's columns [0, nc), mr < TILE_ROWS. */
INLINE void tail_narrow(int isa_, int mr, int64_t kc, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int64_t nc, int acc) {
  const int nv = TAIL_VECS(mr), w = LANES(isa_) * nv;
  for (int64_t j = 0; j < nc; j += w)
    kernel_narrow(isa_, mr, nv, TAIL_SPLIT(isa_, mr), kc, A, lda, B + j, ldb, C + j, ldc,
                  nc - j < w ? nc - j : w, acc);
}

/* gemm_range_wide for the narrow kernels, on B packed (ldb = 0) or on the
 * weight W[K, N] itself, rows ldb apart (nn_narrow; whole panels only, as
 * the kernels read every column of a slice). A panel is walked in slices of
 * L * TILE_VECS columns: one slice (KC x 16 floats on AVX2, 16 KiB) stays in
 * L1 while every row tile of the block passes over it. */
INLINE void gemm_block_narrow(int isa_, int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N,
                              int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                              float *C, int64_t ldc) {
  const int tr = TILE_ROWS(isa_), sw = LANES(isa_) * TILE_VECS;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    int64_t kc = K - k0 < KC ? K - k0 : KC;
    int acc = k0 > 0;
    for (int64_t m0 = i0; m0 < i1; m0 += MC) {
      int64_t m1 = i1 - m0 < MC ? i1 : m0 + MC, mt = m0 + (m1 - m0) / tr * tr;
      for (int64_t p = p0; p < p1; p++) {
        int64_t j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
        const float *bp = ldb ? B + k0 * ldb + j0 : B + (p * K + k0) * NR;
        int64_t bs = ldb ? ldb : NR;
        for (int64_t j = 0; j < nc; j += sw)
          for (int64_t i = m0; i < mt; i += tr)
            kernel_narrow(isa_, tr, TILE_VECS, 1, kc, A + i * lda + k0, lda, bp + j, bs,
                          C + i * ldc + j0 + j, ldc, nc - j < sw ? nc - j : sw, acc);
        /* The leftover rows: one call per count, each with constant shapes
         * (kept out of clang-format, as in gemm_range_wide). */
        const float *a = A + mt * lda + k0;
        float *c = C + mt * ldc + j0;
        // clang-format off
        switch (m1 - mt) {
#define TAIL(n) case n: tail_narrow(isa_, n, kc, a, lda, bp, bs, c, ldc, nc, acc); break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5)
#undef TAIL
        default: break;
        }
        // clang-format on
      }
    }
  }
}

/* gemm_range_wide's signature for the table. */
INLINE void gemm_range_narrow(int isa_, int64_t i0, int64_t i1, int64_t p0, int64_t p1, int64_t N,
                              int64_t K, const float *A, int64_t lda, const float *Bp, float *C,
                              int64_t ldc) {
  gemm_block_narrow(isa_, i0, i1, p0, p1, N, K, A, lda, Bp, 0, C, ldc);
}

/* One copy of each hot loop per instruction set, chosen at run time by
 * exactly the features the copies need (AVX-512F, or AVX2 and FMA). GCC's
 * target_clones("arch=x86-64-v4") would also demand AVX-512 CD/BW/DQ/VL,
 * BMI2, MOVBE and more, which a virtual machine may hide while it exposes
 * AVX-512F, and then quietly run the half-width kernel.
 * ISA_VARIANTS(name, params, args) compiles name##_wide for AVX-512 and
 * name##_narrow(ISA_AVX2 or ISA_GENERIC, args) for the others into the table
 * name##_by_isa, indexed by isa(). */
static const char *const isa_names[ISA_COUNT] = {"generic", "avx2+fma", "avx512f"};
static int isa_best = ISA_GENERIC; /* the best the CPU and OS support */
/* Read by every product, possibly on pool threads while a test or benchmark
 * switches it: every copy packs the same format, so a product that sees
 * both is still right. */
static _Atomic int isa_level = ISA_GENERIC;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

/* The level a name asks for ("avx512", "avx2", "generic", or the names
 * rt_cpu_gemm_isa returns), capped at what this machine runs; -1 for NULL
 * and unknown names. */
static int isa_parse(const char *name) {
  static const char *const short_names[ISA_COUNT] = {"generic", "avx2", "avx512"};
  for (int i = 0; name && i < ISA_COUNT; i++)
    if (!strcmp(name, short_names[i]) || !strcmp(name, isa_names[i]))
      return i < isa_best ? i : isa_best;
  return -1;
}

/* The default: $SEQ_CPU_ISA where it names an ISA, else the best. */
static int isa_default(void) {
  int level = isa_parse(getenv("SEQ_CPU_ISA"));
  return level >= 0 ? level : isa_best;
}

static void isa_select(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* These check the OS's register-state support too (XCR0), not only CPUID. */
  if (__builtin_cpu_supports("avx512f"))
    isa_best = ISA_AVX512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    isa_best = ISA_AVX2;
#endif
  atomic_store_explicit(&isa_level, isa_default(), memory_order_relaxed);
}

static int isa(void) {
  pthread_once(&isa_once, isa_select);
  return atomic_load_explicit(&isa_level, memory_order_relaxed);
}

const char *rt_cpu_gemm_isa(void) {
  return isa_names[isa()];
}

const char *rt_cpu_gemm_set_isa(const char *name) {
  pthread_once(&isa_once, isa_select);
  int level = name ? isa_parse(name) : isa_default();
  if (level >= 0) atomic_store_explicit(&isa_level, level, memory_order_relaxed);
  return rt_cpu_gemm_isa();
}

#define UNPAREN(...) __VA_ARGS__
#if defined(__x86_64__) && defined(__GNUC__)
#define ISA_VARIANTS(name, params, args)                                                           \
  static void name##_generic params {                                                              \
    name##_narrow(ISA_GENERIC, UNPAREN args);                                                      \
  }                                                                                                \
  __attribute__((target("avx2,fma"))) static void name##_avx2 params {                             \
    name##_narrow(ISA_AVX2, UNPAREN args);                                                         \
  }                                                                                                \
  __attribute__((target("avx512f,fma"))) static void name##_avx512 params {                        \
    name##_wide args;                                                                              \
  }                                                                                                \
  static void(*const name##_by_isa[ISA_COUNT])                                                     \
      params = {name##_generic, name##_avx2, name##_avx512};
#else
#define ISA_VARIANTS(name, params, args)                                                           \
  static void name##_generic params {                                                              \
    name##_narrow(ISA_GENERIC, UNPAREN args);                                                      \
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
INLINE void pack_wide(int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *Bp) {
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

/* r[i][c] -> r[c][i] for 8 vectors of 8, in the three steps of the usual
 * AVX sequence (each index list is one unpcklps/unpckhps, shufps or
 * vperm2f128), within the 16 registers; and for 4 vectors of 4 (SSE2's
 * unpcklps/unpckhps, movlhps/movhlps). */
INLINE void transpose8(v8 *r) {
  v8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; h++) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] =
          __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; i++) {
    r[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

INLINE void transpose4(v4 *r) {
  v4 t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
  v4 t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  v4 t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
  v4 t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  r[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
  r[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
  r[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
  r[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

/* dst[j * ldd + i] = src[i * lds + j] for an L x L block, L = LANES(isa_).
 * The 8-row loops are unrolled by pragma, as in kernel_V: GCC otherwise
 * copied the rows through a stack array. */
INLINE void transpose_block(int isa_, const float *src, int64_t lds, float *dst, int64_t ldd) {
  if (isa_ == ISA_AVX2) {
    v8 r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) memcpy(&r[i], src + i * lds, sizeof(v8));
    transpose8(r);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) memcpy(dst + i * ldd, &r[i], sizeof(v8));
  } else {
    v4 r[4];
    for (int i = 0; i < 4; i++) memcpy(&r[i], src + i * lds, sizeof(v4));
    transpose4(r);
    for (int i = 0; i < 4; i++) memcpy(dst + i * ldd, &r[i], sizeof(v4));
  }
}

/* pack_wide in L x L blocks (16 x 16 would not fit the registers). */
INLINE void pack_narrow(int isa_, int64_t K, int64_t N, const float *B, int64_t ldb, int trans,
                        float *Bp) {
  const int L = LANES(isa_);
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
    int64_t kl = nj == NR ? K / L * L : 0;
    for (int64_t jb = 0; jb < NR && kl > 0; jb += L)
      for (int64_t k0 = 0; k0 < kl; k0 += L)
        transpose_block(isa_, B + (j0 + jb) * ldb + k0, ldb, dst + k0 * NR + jb, NR);
    for (int64_t j = 0; j < NR; j++)
      for (int64_t k = kl; k < K; k++) dst[k * NR + j] = j < nj ? B[(j0 + j) * ldb + k] : 0.0f;
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

/* Sums of n vectors' lanes (n 1, 2, 4, 8 or 16: a stage pairs x[2i] with
 * x[2i + 1]), out[j] = sum of x[j]'s 16 lanes: four
 * halving stages, each adding the two halves of every group of lanes and
 * packing two vectors' groups into one (a vector of n / 2^s groups, pairs of
 * vectors while there are several, a vector with itself after), so that 16
 * sums take 15 pairs of permutes and an add each instead of 16 reductions of
 * one vector (and never 15 dependent scalar adds, once the unpacked kernel's
 * bottleneck). After the last stage lane j holds out[j]. */
#define HALVE(x, y, LO, HI)                                                                        \
  (__builtin_shufflevector(x, y, EXPAND LO) + __builtin_shufflevector(x, y, EXPAND HI))
INLINE void hsum_many(v16 *x, int n, float *out) {
  int m = n;
#define STAGE(LO, HI)                                                                              \
  for (int i = 0; i < (m + 1) / 2; i++) x[i] = HALVE(x[2 * i], x[m > 1 ? 2 * i + 1 : 0], LO, HI);  \
  m = (m + 1) / 2;
  STAGE((0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
        (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
  STAGE((0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
        (4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31))
  STAGE((0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
        (2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31))
  STAGE((0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        (1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31))
#undef STAGE
  float t[16];
  STORE16(t, x[0]);
  for (int j = 0; j < n; j++) out[j] = t[j];
}
#undef HALVE

/* C[0:mr, 0:tn] = A[0:mr, :] @ W[0:tn, :]^T: mr * tn dot products of 16
 * lanes of k each (mr and tn constants after inlining), reduced at the end.
 * The accumulators, tn vectors of W and one of A fit the 32 registers. */
INLINE void nt_tile16(int mr, int tn, int64_t K, const float *A, int64_t lda, const float *W,
                      int64_t ldw, float *C, int64_t ldc) {
  enum { RMAX = 4, TMAX = 16 };
  int64_t K16 = K / 16 * 16;
  v16 acc[RMAX][TMAX];
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < tn; j++) acc[i][j] = (v16){0};
  for (int64_t k = 0; k < K16; k += 16) {
    v16 w[TMAX];
    for (int j = 0; j < tn; j++) LOAD16(w[j], W + j * ldw + k);
    for (int i = 0; i < mr; i++) {
      v16 a;
      LOAD16(a, A + i * lda + k);
      for (int j = 0; j < tn; j++) acc[i][j] += a * w[j];
    }
  }
  for (int i = 0; i < mr; i++) {
    float sum[TMAX];
    hsum_many(acc[i], tn, sum);
    for (int j = 0; j < tn; j++) {
      for (int64_t k = K16; k < K; k++) sum[j] += A[i * lda + k] * W[j * ldw + k];
      C[i * ldc + j] = sum[j];
    }
  }
}

/* Rows [0, mr) of C, tn columns at a time, the last few one by one. */
INLINE void nt_rows16(int mr, int tn, int64_t N, int64_t K, const float *A, int64_t lda,
                      const float *W, int64_t ldw, float *C, int64_t ldc) {
  int64_t n = 0;
  for (; n + tn <= N; n += tn) nt_tile16(mr, tn, K, A, lda, W + n * ldw, ldw, C + n, ldc);
  for (; n < N; n++) nt_tile16(mr, 1, K, A, lda, W + n * ldw, ldw, C + n, ldc);
}

/* C[m, n] = sum_k A[m, k] W[n, k] (W given as [N, K], the `W @ x` case):
 * 4 rows by 4 columns of dot products at a time (W read once for every 4
 * rows of A), then the last rows 3 by 4, 2 by 8 or 1 by 16: 12 to 16
 * independent chains of FMAs. 8 rows by 2 columns for every row block, as
 * before, left a single row two chains, bound by the FMA latency, and added
 * a 16-lane reduction per output: [M, 256] @ [256, 1024]^T on this file's
 * old kernel and this one, us (one thread, AVX-512, the weight in L2): M = 1
 * 21 -> 11, M = 4 48 -> 23, M = 8 77 -> 45, M = 16 161 -> 91. */
INLINE void nt_wide(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
                    int64_t ldw, float *C, int64_t ldc) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) nt_rows16(4, 4, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
  switch (M - m) {
  case 3:
    nt_rows16(3, 4, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    break;
  case 2:
    nt_rows16(2, 8, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    break;
  case 1:
    nt_rows16(1, 16, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    break;
  default:
    break;
  }
}

/* C[m, :] = sum_k A[m, k] W[k, :] (W given as [K, N], the `x @ W` case): 4
 * rows by 64 columns of C in registers, one row of W per k. */
INLINE void nn_wide(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *W,
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

INLINE float hsum4(v4 c) {
  return (c[0] + c[2]) + (c[1] + c[3]);
}

INLINE float hsum8(const v8 *ap) {
  v8 a = *ap;
  return hsum4(__builtin_shufflevector(a, a, 0, 1, 2, 3) +
               __builtin_shufflevector(a, a, 4, 5, 6, 7));
}

/* nt_tile_V for a vector type V of L floats: C[0:mr, 0:tn] = A[0:mr, :] @
 * W[0:tn, :]^T, in L lanes of k reduced at the end. mr * tn accumulators, tn
 * vectors of W and one of A fit the 16 registers (a single row uses each
 * vector of W once, as a memory operand). nt_rows_V: rows [0, mr) of C,
 * tn columns at a time, the last few one by one. */
#define NT_ROWS(V, L)                                                                              \
  INLINE void nt_tile_##V(int mr, int tn, int64_t K, const float *A, int64_t lda, const float *W,  \
                          int64_t ldw, float *C, int64_t ldc) {                                    \
    enum { RMAX = 4, TMAX = 8 };                                                                   \
    int64_t KL = K / L * L;                                                                        \
    V acc[RMAX][TMAX];                                                                             \
    for (int i = 0; i < mr; i++)                                                                   \
      for (int j = 0; j < tn; j++) acc[i][j] = (V){0};                                             \
    for (int64_t k = 0; k < KL; k += L) {                                                          \
      V w[TMAX];                                                                                   \
      _Pragma("GCC unroll 8") for (int j = 0; j < tn; j++)                                         \
          memcpy(&w[j], W + j * ldw + k, sizeof(V));                                               \
      for (int i = 0; i < mr; i++) {                                                               \
        V a;                                                                                       \
        memcpy(&a, A + i * lda + k, sizeof(V));                                                    \
        for (int j = 0; j < tn; j++) acc[i][j] += a * w[j];                                        \
      }                                                                                            \
    }                                                                                              \
    for (int i = 0; i < mr; i++)                                                                   \
      for (int j = 0; j < tn; j++) {                                                               \
        float sum = HSUM_##V(acc[i][j]);                                                           \
        for (int64_t k = KL; k < K; k++) sum += A[i * lda + k] * W[j * ldw + k];                   \
        C[i * ldc + j] = sum;                                                                      \
      }                                                                                            \
  }                                                                                                \
  INLINE void nt_rows_##V(int mr, int tn, int64_t N, int64_t K, const float *A, int64_t lda,       \
                          const float *W, int64_t ldw, float *C, int64_t ldc) {                    \
    int64_t n = 0;                                                                                 \
    for (; n + tn <= N; n += tn) nt_tile_##V(mr, tn, K, A, lda, W + n * ldw, ldw, C + n, ldc);     \
    for (; n < N; n++) nt_tile_##V(mr, 1, K, A, lda, W + n * ldw, ldw, C + n, ldc);                \
  }
#define HSUM_v8(x) hsum8(&(x))
#define HSUM_v4(x) hsum4(x)
NT_ROWS(v8, 8)
NT_ROWS(v4, 4)

/* nt_wide in narrow vectors: rows in blocks of 4 by 3 columns on AVX2, of
 * 2 by 4 generic (SSE2 multiplies into a temporary first), and a last row
 * by 8 columns (8 chains). */
INLINE void nt_narrow(int isa_, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                      const float *W, int64_t ldw, float *C, int64_t ldc) {
  int64_t m = 0;
  if (isa_ == ISA_AVX2) {
    for (; m + 4 <= M; m += 4) nt_rows_v8(4, 3, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    for (; m + 2 <= M; m += 2) nt_rows_v8(2, 4, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    if (m < M) nt_rows_v8(1, 8, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
  } else {
    for (; m + 2 <= M; m += 2) nt_rows_v4(2, 4, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
    if (m < M) nt_rows_v4(1, 8, N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc);
  }
}

/* nn_wide through the narrow packed kernels, with W in place of a packed
 * panel: whole 32-column blocks, then the last columns one by one. */
INLINE void nn_narrow(int isa_, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                      const float *W, int64_t ldw, float *C, int64_t ldc) {
  int64_t N32 = N / NR * NR;
  if (K == 0) /* the kernels' k loop would write nothing */
    for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, sizeof(float) * (size_t)N32);
  if (N32 > 0) gemm_block_narrow(isa_, 0, M, 0, N32 / NR, N32, K, A, lda, W, ldw, C, ldc);
  for (int64_t i = 0; i < M; i++)
    for (int64_t n = N32; n < N; n++) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; k++) sum += A[i * lda + k] * W[k * ldw + n];
      C[i * ldc + n] = sum;
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
INLINE void trans_wide(int64_t N, int64_t M, const float *D, float *C, int64_t ldc) {
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
/* trans_wide in L x L blocks. */
INLINE void trans_narrow(int isa_, int64_t N, int64_t M, const float *D, float *C, int64_t ldc) {
  const int L = LANES(isa_);
  int64_t NL = N / L * L, ML = M / L * L;
  for (int64_t n0 = 0; n0 < NL; n0 += L)
    for (int64_t m0 = 0; m0 < ML; m0 += L)
      transpose_block(isa_, D + n0 * M + m0, M, C + m0 * ldc + n0, ldc);
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = m < ML ? NL : 0; n < N; n++) C[m * ldc + n] = D[n * M + m];
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
