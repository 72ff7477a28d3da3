/* test_codegen_chunks.c - the CPU backend's time chunks (codegen/lower.c: a cell's
 * hoisted token rows are computed per chunk of Tc steps, Tc from a fixed
 * budget of token-row floats). At I = H = 256 an LSTM or GRU chunk is a few
 * dozen steps at B = 8, so T = 77 or 90 crosses several chunk boundaries and
 * ends on a partial chunk. The references need no chunking: the chained step
 * function (one token per call), and each sequence run alone at its own
 * length (B = 1: one chunk of up to about 200 steps). The generic backend
 * tests (test_codegen) cover small dims, where a chunk is the whole sequence. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jitmodel.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

typedef TuModel Model;

static void model_open(Model *md, const char *file) {
  tu_model_open(md, file, "I=256,H=256", 1, uniform);
}

static float *randoms(int64_t n) {
  float *p = malloc(sizeof(float) * (size_t)(n ? n : 1));
  assert_non_null(p);
  for (int64_t i = 0; i < n; i++) p[i] = uniform();
  return p;
}

/* LSTM: the chunked forward over T tokens equals T chained steps. */
static void test_forward_equals_steps(void **st) {
  (void)st;
  Model md;
  model_open(&md, "examples/lstm.seq");
  enum { B = 8, I = 256, H = 256 };
  static const int64_t Ts[] = {77, 200, 3};
  for (int ti = 0; ti < 3; ti++) {
    int64_t T = Ts[ti];
    float *x = randoms(B * T * I), *y = malloc(sizeof(float) * B * T * H);
    float *h0 = randoms(B * H), *c0 = randoms(B * H);
    float *hf = malloc(sizeof(float) * B * H), *cf = malloc(sizeof(float) * B * H);
    assert_true(y && hf && cf);
    const void *in[1] = {x};
    float *out[1] = {y};
    const float *sin[2] = {h0, c0};
    float *sout[2] = {hf, cf};
    assert_int_equal(seq_module_forward(md.m, B, T, in, NULL, sin, out, sout), SEQ_OK);
    /* Steps: gather token t of every example, one call per token. */
    float *xt = malloc(sizeof(float) * B * I), *yt = malloc(sizeof(float) * B * H);
    float *h = malloc(sizeof(float) * B * H), *c = malloc(sizeof(float) * B * H);
    float *h2 = malloc(sizeof(float) * B * H), *c2 = malloc(sizeof(float) * B * H);
    assert_true(xt && yt && h && c && h2 && c2);
    memcpy(h, h0, sizeof(float) * B * H);
    memcpy(c, c0, sizeof(float) * B * H);
    double worst = 0;
    for (int64_t t = 0; t < T; t++) {
      for (int b = 0; b < B; b++) memcpy(xt + b * I, x + (b * T + t) * I, sizeof(float) * I);
      const void *sin_[1] = {xt};
      float *sout_[1] = {yt};
      const float *s_in[2] = {h, c};
      float *s_out[2] = {h2, c2};
      assert_int_equal(seq_module_step(md.m, B, sin_, s_in, sout_, s_out), SEQ_OK);
      memcpy(h, h2, sizeof(float) * B * H);
      memcpy(c, c2, sizeof(float) * B * H);
      for (int b = 0; b < B; b++)
        for (int j = 0; j < H; j++) {
          double e = fabs((double)yt[b * H + j] - (double)y[(b * T + t) * H + j]);
          if (e > worst) worst = e;
        }
    }
    for (int k = 0; k < B * H; k++) {
      double e = fabs((double)h[k] - (double)hf[k]) + fabs((double)c[k] - (double)cf[k]);
      if (e > worst) worst = e;
    }
    /* The two differ only in the summation order of the hoisted GEMM's
     * short row tiles; a chunk bug (a wrong row, a stale chunk) is O(1). */
    if (worst > 1e-4)
      fail_msg("T=%lld: chunked forward and steps differ by %g", (long long)T, worst);
    free(x), free(y), free(h0), free(c0), free(hf), free(cf);
    free(xt), free(yt), free(h), free(c), free(h2), free(c2);
  }
  tu_model_close(&md);
}

/* BiGRU (a forward and a reversed GRU layer) with lengths: each sequence of
 * the chunked batch equals the same sequence run alone at its own length, and
 * outputs past a sequence's end are zero. */
static void test_lengths_and_reverse(void **st) {
  (void)st;
  Model md;
  model_open(&md, "examples/bigru.seq");
  enum { B = 8, T = 90, I = 256, Y = 512 };
  static const int32_t len[B] = {90, 1, 37, 25, 26, 50, 0, 89};
  float *x = randoms(B * T * I), *y = malloc(sizeof(float) * B * T * Y);
  float *y1 = malloc(sizeof(float) * T * Y);
  assert_true(y && y1);
  const void *in[1] = {x};
  float *out[1] = {y};
  assert_int_equal(seq_module_forward(md.m, B, T, in, len, NULL, out, NULL), SEQ_OK);
  for (int b = 0; b < B; b++) {
    const float *yb = y + (int64_t)b * T * Y;
    for (int64_t k = (int64_t)len[b] * Y; k < (int64_t)T * Y; k++)
      if (yb[k] != 0.0f) fail_msg("example %d: output past its length is %g", b, (double)yb[k]);
    if (len[b] == 0) continue;
    const void *in1[1] = {x + (int64_t)b * T * I};
    float *out1[1] = {y1};
    assert_int_equal(seq_module_forward(md.m, 1, len[b], in1, NULL, NULL, out1, NULL), SEQ_OK);
    for (int64_t k = 0; k < (int64_t)len[b] * Y; k++)
      if (fabs((double)yb[k] - (double)y1[k]) > 1e-4)
        fail_msg("example %d (length %d): element %lld is %g batched, %g alone", b, len[b],
                 (long long)k, (double)yb[k], (double)y1[k]);
  }
  free(x), free(y), free(y1);
  tu_model_close(&md);
}

/* A large batch for a few steps multiplies by the weights unpacked, W @ x as
 * (x^T W^T)^T (codegen/lower.c, PACK_SWAP_MIN_B; runtime rt_cpu_sgemm_w);
 * the same sequences padded to 16 steps take the packed path. The first
 * steps of both must agree. */
static void test_unpacked_large_batch(void **st) {
  (void)st;
  Model md;
  model_open(&md, "examples/gru.seq");
  enum { B = 40, T = 5, TP = 16, I = 256, H = 256 };
  float *x = randoms(B * T * I), *xp = calloc(B * TP * I, sizeof(float));
  float *y = malloc(sizeof(float) * B * T * H), *yp = malloc(sizeof(float) * B * TP * H);
  float *h0 = randoms(B * H);
  assert_true(xp && y && yp);
  for (int b = 0; b < B; b++) memcpy(xp + b * TP * I, x + b * T * I, sizeof(float) * T * I);
  const void *in[1] = {x}, *inp[1] = {xp};
  float *out[1] = {y}, *outp[1] = {yp};
  const float *sin[1] = {h0};
  assert_int_equal(seq_module_forward(md.m, B, T, in, NULL, sin, out, NULL), SEQ_OK);
  assert_int_equal(seq_module_forward(md.m, B, TP, inp, NULL, sin, outp, NULL), SEQ_OK);
  for (int b = 0; b < B; b++)
    for (int k = 0; k < T * H; k++) {
      double e = fabs((double)y[b * T * H + k] - (double)yp[b * TP * H + k]);
      if (e > 1e-5)
        fail_msg("example %d, element %d: %g unpacked, %g packed", b, k, (double)y[b * T * H + k],
                 (double)yp[b * TP * H + k]);
    }
  free(x), free(xp), free(y), free(yp), free(h0);
  tu_model_close(&md);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_equals_steps),
      cmocka_unit_test(test_lengths_and_reverse),
      cmocka_unit_test(test_unpacked_large_batch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
