/* cpu_expm.c - exponentials of small matrices, for time-invariant work such
 * as the zero-order-hold discretization of a state space model, exp(dt A):
 * run once per call, so plain loops in float64.
 *
 * Scaling and squaring of the Taylor series: with s such that A / 2^s has
 * a 1-norm of at most 1/4, exp(A / 2^s) = I + B (I + B/2 (I + B/3 (...)))
 * to 20 terms (the remainder is under 0.25^21 / 21!, 1e-32, of the sum),
 * then squared s times. The interpreter (ir/interp.c) computes the same
 * function; the references (tests/reference) use SciPy's Pade-based expm. */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

void rt_cpu_expm(int64_t count, int64_t n, const float *a, float *out) {
  if (count <= 0 || n <= 0) return;
  size_t nn = (size_t)n * (size_t)n;
  double *m = malloc(3 * nn * sizeof *m);
  for (int64_t b = 0; b < count; b++) {
    const float *src = a + (size_t)b * nn;
    float *dst = out + (size_t)b * nn;
    int bad = !m;
    if (m) {
      for (size_t k = 0; k < nn; k++) m[k] = src[k];
      bad = expm(n, m, m + nn, m + 2 * nn) != 0;
    }
    for (size_t k = 0; k < nn; k++) dst[k] = bad ? NAN : (float)m[nn + k];
  }
  free(m);
}
