/* formcheck.c - what the tests of compiled forms share (formcheck.h). */
#include "formcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_cuda.h"

const FcCase FC_CASES[] = {
    {"examples/lstm.seq", "I=3,H=4"},
    {"examples/mingru.seq", "I=3,H=4"},
    {"examples/lru.seq", "H=3,N=4"},
    {"examples/s4d.seq", "H=3,N=4"},
    {"examples/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2"},
    {"examples/linear_attention.seq", "I=3,Dk=4,Dv=5"},
    {"examples/mlstm.seq", "I=3,D=4"},
    {"examples/bigru.seq", "I=3,H=4"},
    {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2"},
    {"stdlib/lstm.seq", "I=3,H=4"},
    {"stdlib/gru.seq", "I=3,H=4"},
    {"stdlib/rnn.seq", "I=3,H=4"},
    {"stdlib/mingru.seq", "I=3,H=4"},
    {"stdlib/minlstm.seq", "I=3,H=4"},
    {"stdlib/lru.seq", "H=3,N=4"},
    {"stdlib/s4d.seq", "H=3,N=4"},
    {"stdlib/s4.seq", "H=3,N=4"},
    {"stdlib/lssl.seq", "H=3,N=4"},
    {"stdlib/lssl_zoh.seq", "H=3,N=4"},
    {"stdlib/s5.seq", "H=3,P=4"},
    {"stdlib/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2"},
    {"stdlib/mamba.seq", "d_model=4,d_inner=8,d_state=3,d_conv=4,dt_rank=2"},
    {"stdlib/mamba2.seq", "d_model=4,ngroups=2,hpg=2,headdim=2,d_state=3,d_conv=4"},
    {"stdlib/linear_attention.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/retnet.seq", "I=3,NH=2,P=2,Dv=5"},
    {"stdlib/gla.seq", "I=3,NH=2,Dk=4,Dv=5,R=2"},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4"},
    {"stdlib/slstm.seq", "I=3,H=4"},
    {"stdlib/gam.seq", "D=3,Mem=4,K=3"},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3"},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2"},
    {"stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5"},
    {"stdlib/paragru.seq", "I=3,H=4"},
    {"stdlib/paralstm.seq", "I=3,H=4"},
    {"tests/data/models/reversed_forms.seq", "I=3,H=4,NH=2,D=4"},
};
const int FC_NCASES = (int)(sizeof FC_CASES / sizeof FC_CASES[0]);

/* ---- compiling ------------------------------------------------------------------- */

enum { MAX_DIMS = 16 };

void fc_begin(FcCompiled *cm, const FcCase *c, const char *form, PipeOptions *po) {
  memset(cm, 0, sizeof *cm);
  cm->file = c->file;
  cm->arena = arena_create();
  srcmgr_init(&cm->sm, cm->arena);
  diag_init(&cm->de, cm->arena, NULL);
  pipeline_init(&cm->pipe, cm->arena, &cm->sm, &cm->de);
  const char **names = arena_calloc(cm->arena, MAX_DIMS, sizeof *names);
  int64_t *values = arena_calloc(cm->arena, MAX_DIMS, sizeof *values);
  StrategyRequest *req = arena_calloc(cm->arena, 1, sizeof *req);
  char *spec = arena_strdup(cm->arena, c->dims);
  assert_true(names && values && req && spec);
  int n = 0;
  for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    assert_true(eq && n < MAX_DIMS);
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  char err[256];
  if (strategy_parse(cm->arena, form, req, err, sizeof err)) fail_msg("%s", err);
  memset(po, 0, sizeof *po);
  po->path = tu_src(c->file);
  po->ndims = n;
  po->dim_names = names;
  po->dim_values = values;
  po->strategy = req;
  po->goal = PIPE_BOUND;
}

int fc_random_weights(FcCompiled *cm) {
  if (ir_binding_random(&cm->pipe.bind, 5, &cm->de)) return -1;
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; i < b->flat.params.n; i++)
    if (strcmp(b->flat.params.v[i].name, "Lambda_re") == 0 ||
        strcmp(b->flat.params.v[i].name, "decay") == 0)
      for (int64_t k = 0; k < rt_numel(&b->weights[i]); k++)
        ((double *)b->weights[i].data)[k] = -fabs(((double *)b->weights[i].data)[k]);
  /* A square state matrix A of continuous time (the LSSL cells): its
   * diagonal made negative and dominant (Gershgorin: every eigenvalue in
   * the left half-plane), so that the discretized recurrence decays instead
   * of growing by e^(dt |lambda|) a step, past what float32 can compare. */
  for (int i = 0; i < b->flat.params.n; i++) {
    RtTensor *t = &b->weights[i];
    if (strcmp(b->flat.params.v[i].name, "A") != 0 || t->ndim != 2 || t->shape[0] != t->shape[1])
      continue;
    int64_t n = t->shape[0];
    double *d = t->data;
    for (int64_t r = 0; r < n; r++) {
      double off = 0;
      for (int64_t c = 0; c < n; c++) off += c == r ? 0 : fabs(d[r * n + c]);
      d[r * n + r] = (double)(float)(-(1.0 + off + fabs(d[r * n + r])));
    }
  }
  return 0;
}

int fc_said(const FcCompiled *cm, const char *needle) {
  for (int i = 0; i < cm->de.diags.n; i++)
    if (strstr(cm->de.diags.v[i].message, needle)) return 1;
  return 0;
}

void fc_print_diags(const FcCompiled *cm) {
  for (int i = 0; i < cm->de.diags.n; i++) print_error("%s\n", cm->de.diags.v[i].message);
}

void fc_release(FcCompiled *cm) {
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; b->weights && i < b->flat.params.n; i++) rt_tensor_free(&b->weights[i]);
  drv_weights_free(&cm->w);
  pipeline_release(&cm->pipe);
  arena_destroy(cm->arena);
}

int fc_nvrtc_present(void) {
  int major = 0, minor = 0;
  RtError err;
  if (rt_nvrtc_version(&major, &minor, &err) == 0) return 1;
  if (access("/usr/local/cuda", F_OK) == 0) fail_msg("the CUDA toolkit is here but %s", err.msg);
  print_message("no CUDA toolkit: %s; the checks that need NVRTC skip\n", err.msg);
  return 0;
}

/* ---- checking ---------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

void fc_seed(uint64_t seed) {
  rng = seed;
}

double fc_urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static double get(const RtTensor *t, int64_t k) {
  return t->dtype == RT_F64 ? ((double *)t->data)[k] : ((float *)t->data)[k];
}

void fc_check(const char *what, const RtTensor *got, const RtTensor *ref32, const RtTensor *ref64,
              double rel) {
  int64_t n = rt_numel(got);
  assert_int_equal(n, rt_numel(ref64));
  double e = 0, e32 = 0, scale = 0;
  for (int64_t k = 0; k < n; k++) {
    double g = get(got, k), r = get(ref64, k), r32 = get(ref32, k);
    if (isnan(g) != isnan(r)) fail_msg("%s: NaN at %lld", what, (long long)k);
    if (isnan(r)) continue;
    e = fmax(e, fabs(g - r));
    e32 = fmax(e32, fabs(r32 - r));
    scale = fmax(scale, fabs(r));
  }
  double tol = 1e-5 + 4 * e32 + rel * scale;
  if (!(e <= tol))
    fail_msg("%s: off the float64 interpreter by %g > %g (float32 interpreter: %g, scale %g)", what,
             e, tol, e32, scale);
}

void fc_batch_make(FcBatch *bt, FcCompiled *cm, int64_t B, int64_t T, int variant) {
  memset(bt, 0, sizeof *bt);
  const IrBinding *b = &cm->pipe.bind;
  const IrFunc *root = b->root;
  bt->B = B;
  bt->T = T;
  bt->variant = variant;
  bt->ni = root->inputs.n;
  bt->no = root->outputs.n;
  bt->ns = b->flat.states.n;
  assert_true(bt->ni <= 8 && bt->no <= 8 && bt->ns <= 16 && B <= FC_MAX_B);
  RtError e;
  for (int i = 0; i < bt->ni; i++) {
    IrType t = root->inputs.v[i].type;
    int lead = root->inputs.v[i].context ? 1 : 2; /* a context has no time axis */
    int64_t shape[RT_MAX_RANK] = {B, T};
    assert_int_equal(ir_binding_shape(b, t, shape + lead), 0);
    RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F64;
    assert_int_equal(rt_tensor_alloc(&bt->ins[i], dt, t.rank + lead, shape, &e), 0);
    for (int64_t k = 0; k < rt_numel(&bt->ins[i]); k++) {
      if (dt == RT_I64)
        ((int64_t *)bt->ins[i].data)[k] = k % 7;
      else
        ((double *)bt->ins[i].data)[k] = fc_urand();
    }
  }
  for (int s = 0; s < bt->ns && variant; s++) {
    const IrFlatVar *v = &b->flat.states.v[s];
    int64_t shape[RT_MAX_RANK] = {B};
    assert_int_equal(ir_binding_shape(b, v->type, shape + 1), 0);
    int rank = v->type.rank + 1;
    if (v->type.elem == IR_COMPLEX) shape[rank++] = 2;
    assert_int_equal(rt_tensor_alloc(&bt->sin[s], RT_F64, rank, shape, &e), 0);
    for (int64_t k = 0; k < rt_numel(&bt->sin[s]); k++)
      ((double *)bt->sin[s].data)[k] = 0.5 * fc_urand();
  }
  /* 0 <= ... <= T, the last example full, one of them odd. */
  for (int64_t k = 0; k < B; k++) {
    bt->lengths[k] = (T * (k + 1)) / B - (k % 2);
    if (bt->lengths[k] < 0) bt->lengths[k] = 0;
  }
  const int64_t *len = variant ? bt->lengths : NULL;
  const RtTensor *sin = variant ? bt->sin : NULL;
  InterpOptions i32 = {0}, i64 = {.f64 = 1};
  if (interp_run(b, B, T, bt->ins, len, sin, bt->o32, bt->s32, &i32, &cm->de) ||
      interp_run(b, B, T, bt->ins, len, sin, bt->o64, bt->s64, &i64, &cm->de)) {
    fc_print_diags(cm);
    fail_msg("%s: the interpreter fails", cm->file);
  }
}

static void batch_run(const FcBatch *bt, FcCompiled *cm, const char *what, RtTensor *og,
                      RtTensor *sg) {
  if (drv_run(&cm->pipe.sched->sig, cm->forward, &cm->w, &cm->pipe.bind, bt->B, bt->T, bt->ins,
              bt->variant ? bt->lengths : NULL, bt->variant ? bt->sin : NULL, og, sg, &cm->de)) {
    fc_print_diags(cm);
    fail_msg("%s does not run", what);
  }
}

void fc_batch_check_keep(const FcBatch *bt, FcCompiled *cm, const char *what, double rel,
                         RtTensor *og, RtTensor *sg) {
  const IrBinding *b = &cm->pipe.bind;
  batch_run(bt, cm, what, og, sg);
  char name[768];
  for (int k = 0; k < bt->no; k++) {
    snprintf(name, sizeof name, "%s: output %s B=%lld T=%lld variant=%d", what,
             b->root->outputs.v[k].name, (long long)bt->B, (long long)bt->T, bt->variant);
    fc_check(name, &og[k], &bt->o32[k], &bt->o64[k], rel);
  }
  for (int k = 0; k < bt->ns; k++) {
    snprintf(name, sizeof name, "%s: state %s B=%lld T=%lld variant=%d", what,
             b->flat.states.v[k].name, (long long)bt->B, (long long)bt->T, bt->variant);
    fc_check(name, &sg[k], &bt->s32[k], &bt->s64[k], rel);
  }
}

void fc_batch_check(const FcBatch *bt, FcCompiled *cm, const char *what, double rel) {
  RtTensor og[8], sg[16];
  fc_batch_check_keep(bt, cm, what, rel, og, sg);
  fc_batch_outputs_free(bt, og, sg);
}

/* Fails unless a and b hold the same bytes (so NaNs of one pattern match). */
static void same_bits(const char *what, const char *kind, const char *name, const FcBatch *bt,
                      const RtTensor *a, const RtTensor *b) {
  int64_t n = rt_numel(a);
  if (rt_numel(b) != n || a->dtype != b->dtype)
    fail_msg("%s: %s %s has another shape in the second run", what, kind, name);
  size_t size = rt_dtype_size(a->dtype);
  for (int64_t i = 0; i < n; i++)
    if (memcmp((const char *)a->data + (size_t)i * size, (const char *)b->data + (size_t)i * size,
               size))
      fail_msg("%s: %s %s B=%lld T=%lld variant=%d differs between the runs at element %lld", what,
               kind, name, (long long)bt->B, (long long)bt->T, bt->variant, (long long)i);
}

void fc_batch_same(const FcBatch *bt, FcCompiled *cm, const char *what, const RtTensor *og,
                   const RtTensor *sg) {
  const IrBinding *b = &cm->pipe.bind;
  RtTensor og2[8], sg2[16];
  batch_run(bt, cm, what, og2, sg2);
  for (int k = 0; k < bt->no; k++)
    same_bits(what, "output", b->root->outputs.v[k].name, bt, &og[k], &og2[k]);
  for (int k = 0; k < bt->ns; k++)
    same_bits(what, "state", b->flat.states.v[k].name, bt, &sg[k], &sg2[k]);
  fc_batch_outputs_free(bt, og2, sg2);
}

void fc_batch_outputs_free(const FcBatch *bt, RtTensor *og, RtTensor *sg) {
  for (int k = 0; k < bt->no; k++) rt_tensor_free(&og[k]);
  for (int k = 0; k < bt->ns; k++) rt_tensor_free(&sg[k]);
}

void fc_batch_free(FcBatch *bt) {
  for (int k = 0; k < bt->no; k++) {
    rt_tensor_free(&bt->o32[k]);
    rt_tensor_free(&bt->o64[k]);
  }
  for (int k = 0; k < bt->ns; k++) {
    rt_tensor_free(&bt->s32[k]);
    rt_tensor_free(&bt->s64[k]);
    rt_tensor_free(&bt->sin[k]);
  }
  for (int i = 0; i < bt->ni; i++) rt_tensor_free(&bt->ins[i]);
}

/* In double arithmetic, by the spacing of the target's values: apart from
 * the kernels' integer tricks. */
float fc_widen16(uint16_t h, int type) {
  if (type == 1) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
  }
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (float)((h & 0x8000) ? -v : v);
}

uint16_t fc_narrow16(float x, int type) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  uint16_t s = (uint16_t)((u >> 16) & 0x8000);
  double a = fabs((double)x);
  if (a == 0) return s;
  int e;
  frexp(a, &e); /* a in [2^(e-1), 2^e) */
  if (type == 1) {
    int q = e - 8 < -133 ? -133 : e - 8; /* 8 significant bits; float32's subnormals */
    double v = ldexp(nearbyint(ldexp(a, -q)), q);
    if (v >= 0x1p128) return s | 0x7f80;
    float f = (float)v;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(s | (u >> 16));
  }
  if (a >= 65520.0) return s | 0x7c00;
  int q = e - 11 < -24 ? -24 : e - 11; /* 11 significant bits; subnormals from 2^-24 */
  double v = ldexp(nearbyint(ldexp(a, -q)), q);
  if (v < 0x1p-14) return (uint16_t)(s | (uint16_t)ldexp(v, 24));
  double f = frexp(v, &e);
  return (uint16_t)(s | (uint16_t)((e + 14) << 10) | (uint16_t)((2 * f - 1) * 1024));
}
