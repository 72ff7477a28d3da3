/* cpu_smallmat.c - functions of small matrices for time-invariant work, run
 * once per call on the calling thread: inverses, such as the bilinear
 * discretization's (I - dt/2 A)^-1, and exponentials, such as the
 * zero-order hold's exp(dt A). Plain loops in float64 rather than anything
 * tuned (the pivots of an ill-conditioned matrix, and the squarings of an
 * exponential, lose less there).
 *
 * The exponential is the scaling and squaring of the Taylor series: with s
 * such that A / 2^s has a 1-norm of at most 1/4, exp(A / 2^s) = I + B (I +
 * B/2 (I + B/3 (...))) to 20 terms (the remainder is under 0.25^21 / 21!,
 * 1e-32, of the sum), then squared s times. The interpreter (ir/interp.c)
 * computes the same functions; the references (tests/reference) use
 * NumPy's solve and SciPy's Pade-based expm. */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Inverts the n x n matrix m (float64, destroyed) into v; 0, or -1 if it is
 * singular. */
static int invert(int64_t n, double *m, double *v, double *unused) {
  (void)unused;
  for (int64_t k = 0; k < n * n; k++) v[k] = k % (n + 1) == 0 ? 1.0 : 0.0;
  for (int64_t k = 0; k < n; k++) {
    int64_t p = k;
    for (int64_t i = k + 1; i < n; i++)
      if (fabs(m[i * n + k]) > fabs(m[p * n + k])) p = i;
    double piv = m[p * n + k];
    if (piv == 0.0 || !isfinite(piv)) return -1;
    if (p != k)
      for (int64_t j = 0; j < n; j++) {
        double t = m[k * n + j];
        m[k * n + j] = m[p * n + j];
        m[p * n + j] = t;
        t = v[k * n + j];
        v[k * n + j] = v[p * n + j];
        v[p * n + j] = t;
      }
    double r = 1.0 / piv;
    for (int64_t j = 0; j < n; j++) {
      m[k * n + j] *= r;
      v[k * n + j] *= r;
    }
    for (int64_t i = 0; i < n; i++) {
      double f = m[i * n + k];
      if (i == k || f == 0.0) continue;
      for (int64_t j = 0; j < n; j++) {
        m[i * n + j] -= f * m[k * n + j];
        v[i * n + j] -= f * v[k * n + j];
      }
    }
  }
  return 0;
}

#define TERMS 20
#define MAX_NORM 0x1p60 /* past it, NaN: 62 squarings of an overflowing matrix */

/* c = a b, n x n row-major (c distinct from both); i-l-j order so the
 * innermost loop runs along rows. */
static void mul(int64_t n, const double *a, const double *b, double *c) {
  memset(c, 0, sizeof(double) * (size_t)(n * n));
  for (int64_t i = 0; i < n; i++)
    for (int64_t l = 0; l < n; l++) {
      double f = a[i * n + l];
      for (int64_t j = 0; j < n; j++) c[i * n + j] += f * b[l * n + j];
    }
}

/* exp(m) into e (t: scratch); -1 for a matrix it cannot take. */
static int expm(int64_t n, double *m, double *e, double *t) {
  double norm = 0;
  for (int64_t j = 0; j < n; j++) {
    double c = 0;
    for (int64_t i = 0; i < n; i++) c += fabs(m[i * n + j]);
    if (!(c <= MAX_NORM)) return -1; /* NaN or too large */
    if (c > norm) norm = c;
  }
  int s = 0;
  double scale = 1;
  for (; norm * scale > 0.25; s++) scale *= 0.5;
  for (int64_t k = 0; k < n * n; k++) m[k] *= scale;
  for (int64_t k = 0; k < n * n; k++) e[k] = k % (n + 1) == 0;
  for (int k = TERMS; k >= 1; k--) {
    mul(n, m, e, t);
    for (int64_t q = 0; q < n * n; q++) e[q] = t[q] / k + (q % (n + 1) == 0);
  }
  for (int q = 0; q < s; q++) {
    mul(n, e, e, t);
    memcpy(e, t, sizeof(double) * (size_t)(n * n));
  }
  return 0;
}

/* f over each of the count n x n matrices of a, in float64: it gets a copy
 * (which it may destroy), the place for its result and one matrix of
 * scratch; the result goes to out in float32, NaN where f refuses the
 * matrix (or everywhere, without the scratch memory). a and out may be the
 * same. */
static void each_matrix(int64_t count, int64_t n, const float *a, float *out,
                        int (*f)(int64_t n, double *m, double *r, double *s)) {
  if (count <= 0 || n <= 0) return;
  size_t nn = (size_t)n * (size_t)n;
  double *m = malloc(3 * nn * sizeof *m);
  for (int64_t b = 0; b < count; b++) {
    const float *src = a + (size_t)b * nn;
    float *dst = out + (size_t)b * nn;
    int bad = !m;
    if (m) {
      for (size_t k = 0; k < nn; k++) m[k] = src[k];
      bad = f(n, m, m + nn, m + 2 * nn) != 0;
    }
    for (size_t k = 0; k < nn; k++) dst[k] = bad ? NAN : (float)m[nn + k];
  }
  free(m);
}

void rt_cpu_inv(int64_t count, int64_t n, const float *a, float *out) {
  each_matrix(count, n, a, out, invert);
}

void rt_cpu_expm(int64_t count, int64_t n, const float *a, float *out) {
  each_matrix(count, n, a, out, expm);
}
