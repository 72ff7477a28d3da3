/* step_c.c - the C side of python/bench/overhead.py, built by it into a shared
 * object and called through ctypes once per round: CALLS calls of
 * seq_module_step (or seq_module_forward at T=1) on the caller's module and
 * buffers, straight from C, timed in C. Returns the mean ns per call. The
 * Python side times its own calls of the same module in the same rounds. */
#include <stdint.h>
#include <time.h>

#include "seq.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double seqc_bench_step(SeqModule *m, int64_t B, const void *const *in, const float *const *si,
                       float *const *out, float *const *so, int64_t calls) {
  double t0 = now_ns();
  for (int64_t k = 0; k < calls; k++)
    if (seq_module_step(m, B, in, si, out, so) != SEQ_OK) return -1;
  return (now_ns() - t0) / (double)calls;
}

double seqc_bench_forward(SeqModule *m, int64_t B, int64_t T, const void *const *in,
                          const float *const *si, float *const *out, float *const *so,
                          int64_t calls) {
  double t0 = now_ns();
  for (int64_t k = 0; k < calls; k++)
    if (seq_module_forward(m, B, T, in, NULL, si, out, so) != SEQ_OK) return -1;
  return (now_ns() - t0) / (double)calls;
}
