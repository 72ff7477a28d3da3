/* cpu_inv.c - inverses of small matrices, for time-invariant work such as
 * the bilinear discretization of a state space model, (I - dt/2 A)^-1: run
 * once per call, so plain loops in float64 (the pivots of an ill-conditioned
 * matrix lose less there) rather than anything tuned. */
#include "runtime/rt_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Inverts the n x n matrix m (float64, destroyed) into v; 0, or -1 if it is
 * singular. */
static int invert(int64_t n, double *m, double *v) {
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

void rt_cpu_inv(int64_t count, int64_t n, const float *a, float *out) {
  if (count <= 0 || n <= 0) return;
  size_t nn = (size_t)n * (size_t)n;
  double *m = malloc(2 * nn * sizeof *m);
  for (int64_t b = 0; b < count; b++) {
    const float *src = a + (size_t)b * nn;
    float *dst = out + (size_t)b * nn;
    int bad = !m;
    if (m) {
      for (size_t k = 0; k < nn; k++) m[k] = src[k];
      bad = invert(n, m, m + nn) != 0;
    }
    for (size_t k = 0; k < nn; k++) dst[k] = bad ? NAN : (float)m[nn + k];
  }
  free(m);
}
