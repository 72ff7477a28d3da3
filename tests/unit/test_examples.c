/* test_examples.c - every example and standard cell goes through the documented
 * CLI: `seqc --emit=ir` and `seqc run --random-weights` on a small random batch
 * with per-sequence lengths. Checks that each compiles, runs, produces finite
 * outputs of the declared shape, and zeros past each sequence's end. Numerical
 * agreement with independent references is test_torch's job. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt.h"
#include "testutil.h"

typedef struct Case {
  const char *file;
  const char *dims;
  int64_t xdim; /* per-token input size; 0 = int tokens */
  int64_t ydim; /* per-token output size (flattened) */
  int64_t vocab;
  /* Contexts, "name:d1,d2;..." (each [B, d1, d2] of random reals), or
   * "name:int=n" (an int context: lengths n and 2). */
  const char *ctx;
} Case;

static const Case cases[] = {
    {"examples/lstm.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"examples/gru.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"examples/rnn.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"examples/mingru.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"examples/lru.seq", "H=3,N=4", 3, 3, 0, NULL},
    {"examples/s4d.seq", "H=3,N=4", 3, 3, 0, NULL},
    {"examples/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2", 4, 4, 0, NULL},
    {"examples/linear_attention.seq", "I=3,Dk=4,Dv=5", 3, 5, 0, NULL},
    {"examples/mlstm.seq", "I=3,D=4", 3, 4, 0, NULL},
    {"examples/lstm2.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"examples/bigru.seq", "I=3,H=4", 3, 8, 0, NULL},
    {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2", 0, 11, 11, NULL},
    {"examples/hybrid.seq", "NH=2,DH=3", 6, 6, 0, NULL},
    {"examples/universal_transformer.seq", "NH=2,DH=3,F=8", 6, 6, 0, NULL},
    {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3", 3, 4, 0, "memory:5,4;mask:5"},
    {"examples/pointer_network.seq", "I=3,H=4,S=5,A=3", 3, 4, 0, "memory:5,4;mask:5"},
    {"examples/seq2seq.seq", "I_src=3,I=2,H=4,S=5,A=3", 2, 8, 0, "src:5,3;src_len:int=5;mask:5"},
    {"stdlib/lstm.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/gru.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/rnn.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/mingru.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/minlstm.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/lru.seq", "H=3,N=4", 3, 3, 0, NULL},
    {"stdlib/s4d.seq", "H=3,N=4", 3, 3, 0, NULL},
    {"stdlib/s5.seq", "H=3,P=4", 3, 3, 0, NULL},
    {"stdlib/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2", 4, 4, 0, NULL},
    {"stdlib/mamba.seq", "d_model=4,d_inner=8,d_state=3,d_conv=4,dt_rank=2", 4, 4, 0, NULL},
    {"stdlib/mamba2.seq", "d_model=4,ngroups=2,hpg=2,headdim=2,d_state=3,d_conv=4", 4, 4, 0, NULL},
    {"stdlib/linear_attention.seq", "I=3,NH=2,Dk=4,Dv=5", 3, 10, 0, NULL},
    {"stdlib/retnet.seq", "I=3,NH=2,P=2,Dv=5", 3, 3, 0, NULL},
    {"stdlib/gla.seq", "I=3,NH=2,Dk=4,Dv=5,R=2", 3, 10, 0, NULL},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4", 3, 8, 0, NULL},
    {"stdlib/slstm.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", 3, 10, 0, NULL},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", 3, 10, 0, NULL},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5", 3, 5, 0, NULL},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2", 3, 5, 0, NULL},
    {"stdlib/gam.seq", "D=3,Mem=4,K=3", 3, 3, 0, NULL},
    {"stdlib/paragru.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/paralstm.seq", "I=3,H=4", 3, 4, 0, NULL},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3", 4, 4, 0, NULL},
};

enum { B = 2, T = 5 };

static void write_inputs(const char *dir, const Case *c) {
  RtTensor x, len;
  RtError err;
  int64_t shape[3] = {B, T, c->xdim};
  uint64_t s = 0x9e3779b97f4a7c15ull;
  if (c->xdim) {
    assert_int_equal(rt_tensor_alloc(&x, RT_F32, 3, shape, &err), 0);
    for (int64_t i = 0; i < B * T * c->xdim; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      ((float *)x.data)[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
    }
  } else {
    assert_int_equal(rt_tensor_alloc(&x, RT_I64, 2, shape, &err), 0);
    for (int64_t i = 0; i < B * T; i++) ((int64_t *)x.data)[i] = (i * 7 + 3) % c->vocab;
  }
  assert_int_equal(rt_tensor_alloc(&len, RT_I64, 1, (int64_t[]){B}, &err), 0);
  ((int64_t *)len.data)[0] = T;
  ((int64_t *)len.data)[1] = 2;
  char path[1024];
  snprintf(path, sizeof path, "%s/x.npy", dir);
  assert_int_equal(rt_npy_write(path, &x, &err), 0);
  snprintf(path, sizeof path, "%s/len.npy", dir);
  assert_int_equal(rt_npy_write(path, &len, &err), 0);
  rt_tensor_free(&x);
  rt_tensor_free(&len);
  /* The contexts, [B, ...] each. */
  char spec[256];
  snprintf(spec, sizeof spec, "%s", c->ctx ? c->ctx : "");
  for (char *save = NULL, *item = strtok_r(spec, ";", &save); item;
       item = strtok_r(NULL, ";", &save)) {
    char *colon = strchr(item, ':');
    assert_non_null(colon);
    *colon = 0;
    RtTensor t;
    int64_t cshape[4] = {B, 1, 1, 1};
    int rank = 1;
    if (strncmp(colon + 1, "int=", 4) == 0) {
      assert_int_equal(rt_tensor_alloc(&t, RT_I64, 1, cshape, &err), 0);
      ((int64_t *)t.data)[0] = atoll(colon + 5);
      ((int64_t *)t.data)[1] = 2;
    } else {
      for (char *d = colon + 1; d && *d; d = strchr(d, ',') ? strchr(d, ',') + 1 : NULL)
        cshape[rank++] = atoll(d);
      assert_int_equal(rt_tensor_alloc(&t, RT_F32, rank, cshape, &err), 0);
      for (int64_t i = 0; i < rt_numel(&t); i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ((float *)t.data)[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
      }
    }
    snprintf(path, sizeof path, "%s/%s.npy", dir, item);
    assert_int_equal(rt_npy_write(path, &t, &err), 0);
    rt_tensor_free(&t);
  }
}

/* " --in NAME=DIR/NAME.npy" for every context of the case. */
static void ctx_args(const Case *c, const char *dir, char *out, size_t n) {
  char spec[256];
  snprintf(spec, sizeof spec, "%s", c->ctx ? c->ctx : "");
  out[0] = 0;
  for (char *save = NULL, *item = strtok_r(spec, ";", &save); item;
       item = strtok_r(NULL, ";", &save)) {
    char *colon = strchr(item, ':');
    if (colon) *colon = 0;
    size_t k = strlen(out);
    snprintf(out + k, n - k, " --in %s=%s/%s.npy", item, dir, item);
  }
}

/* The CPU backend refuses, with this diagnostic, what it cannot compile yet. */
#define CPU_UNSUPPORTED "the CPU backend does not support"

static void run_case(void **state) {
  const Case *c = *state;
  const char *dir = tu_tmpdir();
  char cmd[8192], *out = NULL;
  snprintf(cmd, sizeof cmd, "%s --emit=ir %s -o %s/out.ir", SEQC_BIN, tu_src(c->file), dir);
  int rc = tu_run(cmd, &out);
  if (rc) print_error("%s\n%s", cmd, out);
  assert_int_equal(rc, 0);
  free(out);

  /* The interpreter's result, then the CPU backend's checked against it. */
  write_inputs(dir, c);
  char ctx[2048];
  ctx_args(c, dir, ctx, sizeof ctx);
  snprintf(cmd, sizeof cmd,
           "%s run %s --backend=interp --random-weights --seed 3 --dims %s --in x=%s/x.npy "
           "--in lengths=%s/len.npy%s --out y=%s/y.npy --quiet",
           SEQC_BIN, tu_src(c->file), c->dims, dir, dir, ctx, dir);
  rc = tu_run(cmd, &out);
  if (rc) print_error("%s\n%s", cmd, out);
  assert_int_equal(rc, 0);
  free(out);
  snprintf(cmd, sizeof cmd,
           "%s run %s --backend=cpu --random-weights --seed 3 --dims %s --in x=%s/x.npy "
           "--in lengths=%s/len.npy%s --expect y=%s/y.npy --tol 1e-5 --quiet",
           SEQC_BIN, tu_src(c->file), c->dims, dir, dir, ctx, dir);
  rc = tu_run(cmd, &out);
  int cpu_unsupported = rc != 0 && out && strstr(out, CPU_UNSUPPORTED);
  if (rc && !cpu_unsupported) print_error("%s\n%s", cmd, out);
  if (cpu_unsupported)
    print_message("cpu backend skipped for %s: %s", c->file, strstr(out, CPU_UNSUPPORTED));
  assert_true(rc == 0 || cpu_unsupported);
  free(out);

  RtTensor y;
  RtError err;
  char path[1024];
  snprintf(path, sizeof path, "%s/y.npy", dir);
  assert_int_equal(rt_npy_read(path, &y, &err), 0);
  assert_int_equal(y.shape[0], B);
  assert_int_equal(y.shape[1], T);
  int64_t per = rt_numel(&y) / (B * T);
  assert_int_equal(per, c->ydim);
  const float *v = y.data;
  double asum = 0;
  for (int64_t t = 0; t < T; t++)
    for (int64_t k = 0; k < per; k++) {
      assert_true(isfinite(v[t * per + k]));
      asum += fabs(v[t * per + k]);
      /* Sequence 1 has length 2: everything after is zero. */
      float w = v[(T + t) * per + k];
      assert_true(isfinite(w));
      if (t >= 2) assert_true(w == 0.0f);
    }
  assert_true(asum > 0); /* random weights and inputs: a zero output means nothing ran */
  rt_tensor_free(&y);
}

int main(void) {
  enum { N = sizeof cases / sizeof cases[0] };
  struct CMUnitTest tests[N];
  for (int i = 0; i < N; i++)
    tests[i] = (struct CMUnitTest){cases[i].file, run_case, NULL, NULL, (void *)&cases[i]};
  return _cmocka_run_group_tests("examples", tests, N, NULL, NULL);
}
