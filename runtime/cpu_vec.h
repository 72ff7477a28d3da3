/* cpu_vec.h - eight-lane float vectors for the runtime's hand-tiled kernels
 * (cpu_linattn.c, and through cpu_tiles.h cpu_delta.c and cpu_dplr.c): the
 * vector types, unaligned loads and stores, exp on 8 lanes and an 8 x 8
 * register transpose. Everything is static inline, so each includer
 * compiles it once per instruction set inside its own target-attributed
 * variants. Include after the fp-contract pragma: the polynomial's
 * a * b + c must become FMAs.
 */
#ifndef SEQ_RUNTIME_CPU_VEC_H
#define SEQ_RUNTIME_CPU_VEC_H

#include <stdint.h>
#include <string.h>

/* Eight lanes, one AVX2 register. Not cpu_gemm.c's 16-float vectors: on
 * an AVX2 target GCC 12 lowers arrays of those through the stack (its AVX2
 * GEMM kernel runs at about 1 GFLOP/s on a Zen 3 core), and the linear
 * attention kernel's first version, written with them, ran at 4.4 GFLOP/s. */
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LOAD8(dst, p) memcpy(&(dst), (p), sizeof(v8))
#define STORE8(p, v) memcpy((p), &(v), sizeof(v8))

/* Sixteen lanes, one AVX-512 register: only for code that runs inside an
 * AVX-512 target's variant (for the reason above). */
typedef float v16 __attribute__((vector_size(64)));
#define LOAD16(dst, p) memcpy(&(dst), (p), sizeof(v16))
#define STORE16(p, v) memcpy((p), &(v), sizeof(v16))
#define INLINE static inline __attribute__((always_inline))

/* One register tile with a constant row count (the includer's MR rows, or
 * the mr left at the end): fn(rows, args...) for mr in 1 .. MR, so that each
 * call inlines with its accumulators in registers. */
// clang-format off
#define TILE_CASES(fn, ...)                                                                        \
  switch (mr) {                                                                                    \
  case 1: fn(1, __VA_ARGS__); break;                                                               \
  case 2: fn(2, __VA_ARGS__); break;                                                               \
  case 3: fn(3, __VA_ARGS__); break;                                                               \
  case 4: fn(4, __VA_ARGS__); break;                                                               \
  case 5: fn(5, __VA_ARGS__); break;                                                               \
  default: fn(MR, __VA_ARGS__); break;                                                             \
  }
// clang-format on

static inline int64_t round16(int64_t n) {
  return (n + 15) / 16 * 16;
}

/* A kernel's scratch carved into n buffers of sizes[i] floats, each at a
 * 16-float boundary from base (NULL: only counted); the floats used. */
static inline int64_t carve(float *base, const int64_t *sizes, float **const *ptrs, size_t n) {
  int64_t at = 0;
  for (size_t i = 0; i < n; i++) {
    if (base) *ptrs[i] = base + at;
    at += round16(sizes[i]);
  }
  return at;
}

static inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

/* exp on 8 lanes, so that per-key decays (K exps per token
 * and head, as many as the state has columns) vectorize; libm's expf is a
 * call per element (with it, cpu_dplr.c at H = 4, K = V = 64 spent a third
 * of its time there). 2^n from the exponent bits times a degree-7 Taylor
 * polynomial on |r| <= ln2/2 (truncation error r^8/8! < 6e-9, under float32
 * rounding). Results below 2^-125 (x < -87) are 0, so -inf gives exactly 0;
 * x is capped at 88, where exp is near the float32 maximum. NaN stays NaN. */
INLINE void exp8(v8 *xp) {
  const float log2e = 1.44269504f, ln2_hi = 0.693115234375f, ln2_lo = 3.19461833e-05f;
  /* Adding 1.5 * 2^23 rounds to an integer, which then sits in the low
   * mantissa bits. */
  const float round_magic = 12582912.0f;
  const v8 zero = {0};
  v8 x = *xp;
  v8i under = x < -87.0f;
  v8i over = x > 88.0f;
  v8 xc = (v8)(((v8i)x & ~over) | ((v8i)(zero + 88.0f) & over));
  xc = (v8)(((v8i)xc & ~under) | ((v8i)(zero - 87.0f) & under));
  v8 t = xc * log2e + round_magic;
  v8 n = t - round_magic;
  v8i ni = (v8i)t - (v8i)(zero + round_magic);
  /* n * ln2_hi is exact (ln2_hi has 12 significant bits, |n| < 2^7). */
  v8 r = (xc - n * ln2_hi) - n * ln2_lo;
  v8 p = 1.0f / 5040.0f + r * (1.0f / 40320.0f);
  p = 1.0f / 720.0f + r * p;
  p = 1.0f / 120.0f + r * p;
  p = 1.0f / 24.0f + r * p;
  p = 1.0f / 6.0f + r * p;
  p = 0.5f + r * p;
  p = 1.0f + r * p;
  p = 1.0f + r * p;
  v8 scale = (v8)((ni + 127) << 23);
  v8 y = p * scale;
  *xp = (v8)((v8i)y & ~under);
}

/* dst[d*ldd + i] = src[i*lds + d] for i < n, d < m: 8 x 8 blocks go
 * through registers (three rounds of shuffles), the edges element by
 * element. Scattering a row into a column one float at a time (a store
 * every 256 bytes) took a tenth of the kernel's time. */
INLINE void transpose(int64_t n, int64_t m, const float *src, int64_t lds, float *dst,
                      int64_t ldd) {
  int64_t n8 = n / 8 * 8, m8 = m / 8 * 8;
  for (int64_t i0 = 0; i0 < n8; i0 += 8)
    for (int64_t d0 = 0; d0 < m8; d0 += 8) {
      v8 r[8], t[8], u[8];
      for (int i = 0; i < 8; i++) LOAD8(r[i], src + (i0 + i) * lds + d0);
      /* t[2j], t[2j+1]: rows 2j and 2j+1 interleaved, columns {0,1,4,5}
       * and {2,3,6,7}. */
      for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      }
      /* u[b + c] (b = 0, 4): rows b .. b+3 of column c in the low half, of
       * column c + 4 in the high half. */
      for (int b = 0; b < 8; b += 4)
        for (int c = 0; c < 4; c += 2) {
          const v8 x = t[b + c / 2], y = t[b + c / 2 + 2];
          u[b + c] = __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13);
          u[b + c + 1] = __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
        }
      for (int c = 0; c < 4; c++) {
        v8 lo = __builtin_shufflevector(u[c], u[4 + c], 0, 1, 2, 3, 8, 9, 10, 11);
        v8 hi = __builtin_shufflevector(u[c], u[4 + c], 4, 5, 6, 7, 12, 13, 14, 15);
        STORE8(dst + (d0 + c) * ldd + i0, lo);
        STORE8(dst + (d0 + c + 4) * ldd + i0, hi);
      }
    }
  for (int64_t d = 0; d < m; d++)
    for (int64_t i = d < m8 ? n8 : 0; i < n; i++) dst[d * ldd + i] = src[i * lds + d];
}

#endif
