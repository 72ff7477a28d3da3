/* test_codegen.c - the LLVM CPU backend, JIT and AOT (a .so loaded with
 * dlopen), against the reference interpreter: every example, for B in {1, 3, 8}
 * and T in {1, 2, 17, 1000}, with and without lengths and initial states; the
 * chained step function against the full one; error statuses. Tolerance: max
 * abs error 1e-5 (relative 1e-4 for T >= 1000, where the two float32 rounding
 * orders drift apart over the recurrence). */
#include "testutil.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/pipeline.h"
#include "driver/run.h"

typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
  IrBinding bind;
  AbiSignature sig;
  AbiForwardFn forward;
  AbiStepFn step;
  void *so; /* the same model built ahead of time */
  AbiForwardFn aot_forward;
  AbiStepFn aot_step;
  DrvWeights w;
} Compiled;

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Compiles an example through the pipeline with every dim that has no
 * default set to `dimval`. */
static int compile_example(Compiled *c, const char *file, int64_t dimval) {
  memset(c, 0, sizeof *c);
  c->arena = arena_create();
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, stderr);
  pipeline_init(&c->pipe, c->arena, &c->sm, &c->de);
  PipeOptions po = {0};
  po.path = file[0] == '/' ? file : tu_src(file);
  po.cg = (CgOptions){2, NULL, NULL};
  po.goal = PIPE_IR;
  if (pipeline_run(&c->pipe, &po)) return -1;
  const IrFunc *root = c->pipe.source->funcs.v[c->pipe.source->entry];
  const char **names = arena_calloc(c->arena, (size_t)root->dims.n + 1, sizeof *names);
  int64_t *values = arena_calloc(c->arena, (size_t)root->dims.n + 1, sizeof *values);
  for (int i = 0; i < root->dims.n; i++)
    if (!root->dims.v[i].has_default) {
      names[po.ndims] = root->dims.v[i].name;
      values[po.ndims++] = dimval;
    }
  po.dim_names = names;
  po.dim_values = values;
  po.goal = PIPE_BOUND;
  if (pipeline_run(&c->pipe, &po)) return -1;
  if (ir_binding_random(&c->pipe.bind, 7, &c->de)) return -1;
  /* Random weights can make an SSM unstable (S5's Lambda_re > 0 grows like
   * e^t), and float32 cannot hold a growing value to 1e-5: keep it stable. */
  IrBinding *b = &c->pipe.bind;
  for (int i = 0; i < b->flat.params.n; i++)
    if (strcmp(b->flat.params.v[i].name, "Lambda_re") == 0)
      for (int64_t k = 0; k < rt_numel(&b->weights[i]); k++)
        ((double *)b->weights[i].data)[k] = -fabs(((double *)b->weights[i].data)[k]);
  po.goal = PIPE_JIT;
  if (pipeline_run(&c->pipe, &po)) return -1;
  c->bind = c->pipe.bind;
  c->sig = c->pipe.sched->sig;
  const char *sym = c->sig.symbol;
  c->forward = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      c->pipe.jit, arena_printf(c->arena, "%s_forward", sym), &c->de);
  if (c->sig.has_step)
    c->step = (AbiStepFn)(uintptr_t)cg_jit_lookup(c->pipe.jit,
                                                  arena_printf(c->arena, "%s_step", sym), &c->de);
  if (!c->forward) return -1;
  /* The AOT build of the same schedule: its own file name, since dlopen of
   * a path already loaded returns the loaded object. */
  static int nbuilt;
  char so[1024];
  snprintf(so, sizeof so, "%s/m%d.so", tu_tmpdir(), nbuilt++);
  po.goal = PIPE_OBJECT;
  po.emit = CG_EMIT_SO;
  po.out_path = so;
  if (pipeline_run(&c->pipe, &po)) return -1;
  c->so = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!c->so) fail_msg("dlopen %s: %s", so, dlerror());
  c->aot_forward = (AbiForwardFn)(uintptr_t)dlsym(c->so, arena_printf(c->arena, "%s_forward", sym));
  if (c->sig.has_step)
    c->aot_step = (AbiStepFn)(uintptr_t)dlsym(c->so, arena_printf(c->arena, "%s_step", sym));
  if (!c->aot_forward || (c->sig.has_step && !c->aot_step)) return -1;
  return drv_weights_from_binding(&c->sig, &c->bind, &c->w, &c->de);
}

static void release(Compiled *c) {
  if (c->so) dlclose(c->so);
  drv_weights_free(&c->w);
  pipeline_release(&c->pipe);
  arena_destroy(c->arena);
}

static int is_int_input(const Compiled *c, int i) {
  return c->sig.inputs.v[i].is_int;
}

static void make_inputs(Compiled *c, int64_t B, int64_t T, RtTensor *in) {
  RtError err;
  for (int i = 0; i < c->sig.inputs.n; i++) {
    const AbiTensor *t = &c->sig.inputs.v[i];
    int64_t shape[RT_MAX_RANK] = {B, T};
    for (int d = 0; d < t->ndim; d++) shape[2 + d] = t->shape[d];
    assert_int_equal(rt_tensor_alloc(&in[i], RT_F64, t->ndim + 2, shape, &err), 0);
    double *d = in[i].data;
    int64_t n = rt_numel(&in[i]);
    /* Token inputs index the first table the model has: the vocabulary is
     * the dim we set, so tokens in [0, 5) are always in range. */
    for (int64_t k = 0; k < n; k++) d[k] = is_int_input(c, i) ? (double)(k % 5) : urand();
  }
}

static double max_err(const RtTensor *a, const RtTensor *b, double *scale) {
  int64_t n = rt_numel(a);
  assert_int_equal(n, rt_numel(b));
  double e = 0;
  *scale = 0;
  for (int64_t k = 0; k < n; k++) {
    double x = a->dtype == RT_F32 ? ((float *)a->data)[k] : ((double *)a->data)[k];
    double y = b->dtype == RT_F32 ? ((float *)b->data)[k] : ((double *)b->data)[k];
    if (!(fabs(x - y) <= e)) e = fabs(x - y);
    if (fabs(y) > *scale) *scale = fabs(y);
  }
  return e;
}

static void check_close(const char *what, const RtTensor *got, const RtTensor *want, int64_t T) {
  double scale;
  double e = max_err(got, want, &scale);
  double tol = T >= 1000 ? fmax(1e-5, 1e-4 * scale) : 1e-5;
  if (!(e <= tol)) fail_msg("%s: max abs error %g > %g (largest value %g)", what, e, tol, scale);
}

/* One comparison: compiled vs interpreter for (B, T, lengths?, state_in?). */
static void compare(Compiled *c, int64_t B, int64_t T, int use_lengths, int use_state) {
  int ni = c->sig.inputs.n, no = c->sig.outputs.n, ns = c->bind.flat.states.n;
  RtTensor in[8] = {0}, o1[8], o2[8], s1[32], s2[32], sin[32];
  assert_true(ni <= 8 && no <= 8 && ns <= 32);
  make_inputs(c, B, T, in);
  int64_t lengths[16];
  for (int64_t b = 0; b < B; b++) lengths[b] = (T * (b + 1)) / (B + 1) + (b % 2); /* 0 < len <= T */
  if (B > 0) lengths[B - 1] = T;
  memset(sin, 0, sizeof sin);
  RtError err;
  for (int s = 0; s < ns && use_state; s++) {
    const IrFlatVar *v = &c->bind.flat.states.v[s];
    int64_t shape[RT_MAX_RANK] = {B};
    assert_int_equal(ir_binding_shape(&c->bind, v->type, shape + 1), 0);
    int rank = v->type.rank + 1;
    if (v->type.elem == IR_COMPLEX) shape[rank++] = 2; /* (re, im), as in docs/abi.md */
    assert_int_equal(rt_tensor_alloc(&sin[s], RT_F64, rank, shape, &err), 0);
    for (int64_t k = 0; k < rt_numel(&sin[s]); k++) ((double *)sin[s].data)[k] = 0.5 * urand();
  }
  InterpOptions io = {0};
  assert_int_equal(interp_run(&c->bind, B, T, in, use_lengths ? lengths : NULL,
                              use_state ? sin : NULL, o1, s1, &io, &c->de),
                   0);
  for (int aot = 0; aot < 2; aot++) {
    assert_int_equal(drv_run(&c->sig, aot ? c->aot_forward : c->forward, &c->w, &c->bind, B, T, in,
                            use_lengths ? lengths : NULL, use_state ? sin : NULL, o2, s2, &c->de),
                     0);
    const char *how = aot ? "AOT" : "JIT";
    char what[256];
    for (int o = 0; o < no; o++) {
      snprintf(what, sizeof what, "%s %s output %d B=%lld T=%lld len=%d state=%d", how, c->sig.func,
               o, (long long)B, (long long)T, use_lengths, use_state);
      check_close(what, &o2[o], &o1[o], T);
      rt_tensor_free(&o2[o]);
    }
    for (int s = 0; s < ns; s++) {
      snprintf(what, sizeof what, "%s %s state %s B=%lld T=%lld len=%d state=%d", how, c->sig.func,
               c->bind.flat.states.v[s].name, (long long)B, (long long)T, use_lengths, use_state);
      check_close(what, &s2[s], &s1[s], T);
      rt_tensor_free(&s2[s]);
    }
  }
  for (int o = 0; o < no; o++) rt_tensor_free(&o1[o]);
  for (int s = 0; s < ns; s++) {
    rt_tensor_free(&s1[s]);
    rt_tensor_free(&sin[s]);
  }
  for (int i = 0; i < ni; i++) rt_tensor_free(&in[i]);
}

/* Chaining SYM_step over T tokens equals SYM_forward. */
static void check_step(Compiled *c, AbiForwardFn forward, AbiStepFn step, int64_t B, int64_t T) {
  if (!step) return;
  int ni = c->sig.inputs.n, no = c->sig.outputs.n, ns = c->sig.states.n;
  int64_t per_in[8], per_out[8];
  const void *ip[8];
  float *op[8], *sp[32];
  float *full_out[8], *states[32], *full_states[32];
  void *inbuf[8];
  for (int i = 0; i < ni; i++) {
    per_in[i] = c->sig.inputs.v[i].numel;
    inbuf[i] = calloc((size_t)(B * T * per_in[i]), 4);
    for (int64_t k = 0; k < B * T * per_in[i]; k++) {
      if (c->sig.inputs.v[i].is_int)
        ((int32_t *)inbuf[i])[k] = (int32_t)(k % 5);
      else
        ((float *)inbuf[i])[k] = (float)urand();
    }
    ip[i] = inbuf[i];
  }
  for (int o = 0; o < no; o++) {
    per_out[o] = c->sig.outputs.v[o].numel;
    full_out[o] = calloc((size_t)(B * T * per_out[o]), 4);
    op[o] = full_out[o];
  }
  for (int s = 0; s < ns; s++) {
    full_states[s] = calloc((size_t)(B * c->sig.states.v[s].numel), 4);
    states[s] = calloc((size_t)(B * c->sig.states.v[s].numel), 4);
    sp[s] = full_states[s];
  }
  assert_int_equal(forward((const float *const *)c->w.data, B, T, ip, NULL, NULL, op, sp), 0);
  /* Step: the first token from the declared initial state, then state in = state out. */
  const void *tip[8];
  float *top[8];
  void *tokbuf[8];
  float *stepout[8];
  for (int i = 0; i < ni; i++) tokbuf[i] = calloc((size_t)(B * per_in[i]), 4);
  for (int o = 0; o < no; o++) stepout[o] = calloc((size_t)(B * per_out[o]), 4);
  for (int64_t t = 0; t < T; t++) {
    for (int i = 0; i < ni; i++) {
      for (int64_t b = 0; b < B; b++)
        memcpy((char *)tokbuf[i] + 4 * b * per_in[i],
               (char *)inbuf[i] + 4 * (b * T + t) * per_in[i], 4 * (size_t)per_in[i]);
      tip[i] = tokbuf[i];
    }
    for (int o = 0; o < no; o++) top[o] = stepout[o];
    assert_int_equal(step((const float *const *)c->w.data, B, tip,
                          t == 0 ? NULL : (const float *const *)states, top, states),
                     0);
    for (int o = 0; o < no; o++)
      for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < per_out[o]; k++) {
          float x = stepout[o][b * per_out[o] + k], y = full_out[o][(b * T + t) * per_out[o] + k];
          if (!(fabsf(x - y) <= 1e-5f))
            fail_msg("%s step t=%lld differs: %g vs %g", c->sig.func, (long long)t, x, y);
        }
  }
  for (int s = 0; s < ns; s++)
    for (int64_t k = 0; k < B * c->sig.states.v[s].numel; k++)
      assert_true(fabsf(states[s][k] - full_states[s][k]) <= 1e-5f);
  for (int i = 0; i < ni; i++) free(inbuf[i]), free(tokbuf[i]);
  for (int o = 0; o < no; o++) free(full_out[o]), free(stepout[o]);
  for (int s = 0; s < ns; s++) free(full_states[s]), free(states[s]);
}

static void run_example(const char *file, int64_t dimval) {
  Compiled c;
  if (compile_example(&c, file, dimval)) fail_msg("%s does not compile", file);
  static const int64_t Bs[] = {1, 3, 8};
  static const int64_t Ts[] = {1, 2, 17, 1000};
  for (int bi = 0; bi < 3; bi++)
    for (int ti = 0; ti < 4; ti++)
      for (int l = 0; l < 2; l++)
        for (int s = 0; s < 2; s++) compare(&c, Bs[bi], Ts[ti], l, s);
  check_step(&c, c.forward, c.step, 3, 17);
  check_step(&c, c.aot_forward, c.aot_step, 3, 17);
  release(&c);
}

/* A source written to the temporary directory, for constructs no example has. */
static const char *write_source(const char *name, const char *text) {
  static char path[8][1024];
  static int k;
  char *p = path[k++ & 7];
  snprintf(p, 1024, "%s/%s", tu_tmpdir(), name);
  assert_int_equal(tu_write_file(p, text), 0);
  return p;
}

static void test_lstm(void **st) {
  (void)st;
  run_example("examples/lstm.seq", 6);
  /* GEMM tails: 4H = 280 is not a multiple of 64 (short sequences only). */
  Compiled c;
  if (compile_example(&c, "examples/lstm.seq", 70)) fail_msg("lstm does not compile");
  compare(&c, 3, 17, 1, 1);
  check_step(&c, c.aot_forward, c.aot_step, 3, 5);
  release(&c);
}
static void test_gru(void **st) {
  (void)st;
  run_example("examples/gru.seq", 6);
}
static void test_rnn(void **st) {
  (void)st;
  run_example("examples/rnn.seq", 6);
}
static void test_mingru(void **st) {
  (void)st;
  run_example("examples/mingru.seq", 6);
}
static void test_mlstm(void **st) {
  (void)st;
  run_example("examples/mlstm.seq", 4);
}
static void test_linear_attention(void **st) {
  (void)st;
  run_example("examples/linear_attention.seq", 4);
}
static void test_mamba_ssm(void **st) {
  (void)st;
  run_example("examples/mamba_ssm.seq", 4);
}
static void test_bigru(void **st) {
  (void)st;
  run_example("examples/bigru.seq", 5);
}
static void test_lstm2(void **st) {
  (void)st;
  run_example("examples/lstm2.seq", 5);
}
static void test_lm(void **st) {
  (void)st;
  run_example("examples/lm.seq", 5);
}
/* Complex states: (re, im) pairs; complex @ real, complex @ complex, sums. */
static void test_lru(void **st) {
  (void)st;
  run_example("examples/lru.seq", 4);
}
static void test_s4d(void **st) {
  (void)st;
  run_example("examples/s4d.seq", 4);
}
static void test_s5(void **st) {
  (void)st;
  run_example("stdlib/s5.seq", 4);
}

/* A state whose new value is another state's old value (a shift register),
 * initial values broadcast from a parameter, complex log/exp/conj/abs/div. */
static void test_state_moves_and_complex_ops(void **st) {
  (void)st;
  run_example(write_source("shift.seq", "cell Shift(H) {\n"
                                        "  param p: [H]\n"
                                        "  input  x: [H]\n"
                                        "  state  a: [H] = p\n"
                                        "  state  b: [H, 2] = 0.5\n"
                                        "  state  c: [H] = 0\n"
                                        "  state  z: complex [H] = p\n"
                                        "  output y: [H]\n"
                                        "  step {\n"
                                        "    a' = x\n"
                                        "    b' = concat(a[:, None], c[:, None])\n"
                                        "    c' = b[:, 0]\n"
                                        "    z' = z * complex(0.5, x) / (1 + abs(z))\n"
                                        "    y  = a + 2 * c + real(log(z' + 2) + exp(conj(z')))\n"
                                        "  }\n"
                                        "}\n"),
              3);
}

/* A model feeding a layer a value that does not vary over time. */
static void test_constant_layer_input(void **st) {
  (void)st;
  char text[1024];
  snprintf(text, sizeof text,
           "import \"%s\"\n"
           "model M(H) {\n"
           "  param p: [H]\n"
           "  input  x: [H]\n"
           "  output y: [H]\n"
           "  layer l0 = RNN(H, H)\n"
           "  forward {\n"
           "    y = l0(p) + x\n"
           "  }\n"
           "}\n",
           tu_src("examples/rnn.seq"));
  run_example(write_source("const_in.seq", text), 4);
}

/* Values too large for the limits are diagnostics, not crashes. */
static void test_limits_are_diagnostics(void **st) {
  (void)st;
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, NULL);
  Pipeline p;
  pipeline_init(&p, a, &sm, &de);
  const char *names[2] = {"I", "H"};
  int64_t dims[2] = {(int64_t)1 << 21, (int64_t)1 << 21}; /* W is [4H, I]: 2^44 elements */
  PipeOptions po = {0};
  po.path = tu_src("examples/lstm.seq");
  po.ndims = 2;
  po.dim_names = names;
  po.dim_values = dims;
  po.cg = (CgOptions){2, NULL, NULL};
  po.goal = PIPE_JIT;
  assert_int_equal(pipeline_run(&p, &po), -1);
  int found = 0;
  for (int i = 0; i < de.diags.n; i++) found |= strstr(de.diags.v[i].message, "2^40") != NULL;
  assert_true(found);
  pipeline_release(&p);
  arena_destroy(a);
}

/* Statuses instead of crashes for bad arguments. */
static void test_statuses(void **st) {
  (void)st;
  Compiled c;
  assert_int_equal(compile_example(&c, "examples/lstm.seq", 4), 0);
  float x[4 * 2 * 4] = {0}, y[4 * 2 * 4];
  const void *ip[1] = {x};
  float *op[1] = {y};
  const float *const *P = (const float *const *)c.w.data;
  for (int aot = 0; aot < 2; aot++) {
    AbiForwardFn f = aot ? c.aot_forward : c.forward;
    assert_int_equal(f(P, -1, 2, ip, NULL, NULL, op, NULL), ABI_ERR_ARG);
    assert_int_equal(f(NULL, 1, 2, ip, NULL, NULL, op, NULL), ABI_ERR_ARG);
    assert_int_equal(f(P, 1, 2, NULL, NULL, NULL, op, NULL), ABI_ERR_ARG);
    int32_t bad_len[1] = {3};
    assert_int_equal(f(P, 1, 2, ip, bad_len, NULL, op, NULL), ABI_ERR_LENGTH);
    assert_int_equal(f(P, (int64_t)1 << 40, 2, ip, NULL, NULL, op, NULL), ABI_ERR_NOMEM);
    assert_int_equal(f(P, 4, 2, ip, NULL, NULL, op, NULL), ABI_OK);
    assert_int_equal(f(P, 0, 0, ip, NULL, NULL, op, NULL), ABI_OK);
  }
  release(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lstm),
      cmocka_unit_test(test_gru),
      cmocka_unit_test(test_rnn),
      cmocka_unit_test(test_mingru),
      cmocka_unit_test(test_mlstm),
      cmocka_unit_test(test_linear_attention),
      cmocka_unit_test(test_mamba_ssm),
      cmocka_unit_test(test_bigru),
      cmocka_unit_test(test_lstm2),
      cmocka_unit_test(test_lm),
      cmocka_unit_test(test_lru),
      cmocka_unit_test(test_s4d),
      cmocka_unit_test(test_s5),
      cmocka_unit_test(test_state_moves_and_complex_ops),
      cmocka_unit_test(test_constant_layer_input),
      cmocka_unit_test(test_limits_are_diagnostics),
      cmocka_unit_test(test_statuses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
