/* test_lang.c - language features end to end, through binding and the
 * reference interpreter: `def` functions, elu and reshape compute what they
 * say; a dim default expression applies only when nothing else fixes the
 * dim; a stored weight that differs from its declaration only by axes of
 * size 1 loads.
 */
#include "testutil.h"

#include "frontend/frontend.h"
#include "ir/interp.h"

#include <math.h>
#include <string.h>

typedef struct Run {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;
  IrBinding b;
} Run;

static const IrFunc *compile(Run *r, const char *text) {
  r->arena = arena_create();
  assert_non_null(r->arena);
  srcmgr_init(&r->sm, r->arena);
  diag_init(&r->de, r->arena, NULL);
  r->m = seq_compile_string(r->arena, &r->sm, &r->de, "test.seq", text, NULL);
  if (!r->m)
    for (int i = 0; i < r->de.diags.n; i++) print_error("%s\n", r->de.diags.v[i].message);
  assert_non_null(r->m);
  const IrFunc *root = r->m->funcs.v[r->m->entry];
  assert_int_equal(ir_binding_init(&r->b, r->arena, r->m, root, &r->de), 0);
  return root;
}

static int64_t dim_of(const Run *r, const char *name) {
  for (int i = 0; i < r->b.root->dims.n; i++)
    if (strcmp(r->b.root->dims.v[i].name, name) == 0) return r->b.dims[i];
  fail_msg("no dim %s", name);
  return -1;
}

static const double *weight(const Run *r, const char *name) {
  for (int i = 0; i < r->b.flat.params.n; i++)
    if (strcmp(r->b.flat.params.v[i].name, name) == 0) return r->b.weights[i].data;
  fail_msg("no weight %s", name);
  return NULL;
}

/* Runs one sequence of T steps of a single input of width D (f64 mode) and
 * returns the output tensor (caller frees). */
static RtTensor run_one(Run *r, int64_t T, int64_t D, const double *x) {
  RtTensor in, out;
  RtError err;
  int64_t shape[3] = {1, T, D};
  assert_int_equal(rt_tensor_alloc(&in, RT_F64, 3, shape, &err), 0);
  memcpy(in.data, x, (size_t)(T * D) * sizeof(double));
  InterpOptions opt = {0};
  opt.f64 = 1;
  memset(&out, 0, sizeof out);
  int rc = interp_run(&r->b, 1, T, &in, NULL, NULL, &out, NULL, &opt, &r->de);
  for (int i = 0; i < r->de.diags.n; i++) print_error("%s\n", r->de.diags.v[i].message);
  assert_int_equal(rc, 0);
  rt_tensor_free(&in);
  return out;
}

static double elu(double v) {
  return v > 0 ? v : exp(v) - 1;
}

/* y = reshape(phi(W @ x), [2, D]) + bias with phi(v) = elu(v) + 1, through
 * a top-level def, a local def and the H = 2*D default. */
static void test_def_elu_reshape(void **state) {
  (void)state;
  Run r;
  compile(&r, "def phi(v) = elu(v) + 1\n"
              "cell A(D, H = 2*D) {\n"
              "  def heads(v) = reshape(v, [2, D])\n"
              "  param W: [2*D, D]\n"
              "  param bias: []\n"
              "  param c: [H]\n"
              "  input x: [D]\n"
              "  output y: [2, D]\n"
              "  step {\n"
              "    y = heads(phi(W @ x)) + bias + 0 * sum(c)\n"
              "  }\n"
              "}\n");
  enum { D = 3, T = 2 };
  int ndims[1] = {1};
  int64_t xs[1] = {D};
  const int64_t *shapes[1] = {xs};
  assert_int_equal(ir_binding_infer(&r.b, NULL, NULL, ndims, shapes, &r.de), 0);
  assert_int_equal(dim_of(&r, "D"), D);
  assert_int_equal(dim_of(&r, "H"), 2 * D); /* the default expression */
  assert_int_equal(ir_binding_random(&r.b, 7, &r.de), 0);
  double x[T * D] = {0.5, -1.0, 2.0, -0.25, 0.0, 1.5};
  RtTensor y = run_one(&r, T, D, x);
  assert_int_equal(y.ndim, 4);
  assert_int_equal(y.shape[2], 2);
  assert_int_equal(y.shape[3], D);
  const double *W = weight(&r, "W"), *bias = weight(&r, "bias");
  const double *yd = y.data;
  for (int t = 0; t < T; t++)
    for (int k = 0; k < 2 * D; k++) {
      double u = 0;
      for (int j = 0; j < D; j++) u += W[k * D + j] * x[t * D + j];
      assert_float_equal(yd[t * 2 * D + k], elu(u) + 1 + bias[0], 1e-6);
    }
  rt_tensor_free(&y);
  arena_destroy(r.arena);
}

/* Stored shapes for the loader below: bias [1] for a declared [], g
 * [1, 1, C] for a declared [C], and W [5, 2] fixing H = 5 against its
 * default 2*D. */
typedef struct Store {
  int bad_bias; /* store bias as [2]: not the same numbers */
} Store;

static int store_shape(void *ctx, const char *name, int *ndim, int64_t *shape) {
  Store *s = ctx;
  if (strcmp(name, "bias") == 0) {
    *ndim = 1;
    shape[0] = s->bad_bias ? 2 : 1;
    return 1;
  }
  if (strcmp(name, "g") == 0) {
    *ndim = 3;
    shape[0] = shape[1] = 1;
    shape[2] = 2;
    return 1;
  }
  if (strcmp(name, "W") == 0) {
    *ndim = 2;
    shape[0] = 5;
    shape[1] = 2;
    return 1;
  }
  return 0;
}

static int store_load(void *ctx, const char *name, RtTensor *out, RtError *err) {
  int64_t shape[RT_MAX_RANK];
  int ndim;
  if (!store_shape(ctx, name, &ndim, shape)) return -1;
  if (rt_tensor_alloc(out, RT_F64, ndim, shape, err)) return -1;
  double *d = out->data;
  for (int64_t i = 0; i < rt_numel(out); i++) d[i] = (double)(i + 1) * (name[0] == 'b' ? 10 : 1);
  return 0;
}

static const char unit_axes_src[] = "cell U(C, D, H = 2*D) {\n"
                                    "  param bias: []\n"
                                    "  param g: [C]\n"
                                    "  param W: [H, D]\n"
                                    "  input x: [C]\n"
                                    "  output y: [C]\n"
                                    "  step {\n"
                                    "    y = x * g + bias + sum(W) * 0\n"
                                    "  }\n"
                                    "}\n";

static void test_unit_axes_and_fixed_default(void **state) {
  (void)state;
  Run r;
  Store st = {0};
  compile(&r, unit_axes_src);
  assert_int_equal(ir_binding_infer(&r.b, store_shape, &st, NULL, NULL, &r.de), 0);
  assert_int_equal(dim_of(&r, "C"), 2); /* from g's [1, 1, 2] */
  assert_int_equal(dim_of(&r, "D"), 2);
  assert_int_equal(dim_of(&r, "H"), 5); /* the weight wins over 2*D */
  assert_int_equal(ir_binding_load(&r.b, store_load, &st, &r.de), 0);
  assert_int_equal(r.b.weights[0].ndim, 0);
  assert_int_equal(r.b.weights[1].ndim, 1);
  double x[2] = {3, 4};
  RtTensor y = run_one(&r, 1, 2, x);
  const double *yd = y.data;
  assert_float_equal(yd[0], 3 * 1 + 10, 1e-12);
  assert_float_equal(yd[1], 4 * 2 + 10, 1e-12);
  rt_tensor_free(&y);
  arena_destroy(r.arena);

  /* A stored [2] for a declared [] holds other numbers: an error. */
  st.bad_bias = 1;
  compile(&r, unit_axes_src);
  assert_int_not_equal(ir_binding_infer(&r.b, store_shape, &st, NULL, NULL, &r.de), 0);
  assert_non_null(strstr(r.de.diags.v[0].message, "weight 'bias' has shape [2]"));
  arena_destroy(r.arena);
}

/* A layer that does not pass a dim with a default expression gets the
 * expression over the caller's dims; passing it overrides. */
static void test_layer_default_expr(void **state) {
  (void)state;
  Run r;
  const IrFunc *root = compile(&r, "cell A(D, H = 2*D + 1) {\n"
                                   "  param W: [H, D]\n"
                                   "  input x: [D]\n"
                                   "  output y: [H]\n"
                                   "  step {\n"
                                   "    y = W @ x\n"
                                   "  }\n"
                                   "}\n"
                                   "model M(E) {\n"
                                   "  input x: [E]\n"
                                   "  output y: [2*E + 1]\n"
                                   "  output z: [7]\n"
                                   "  layer a = A(E)\n"
                                   "  layer b = A(E, 7)\n"
                                   "  forward {\n"
                                   "    y = a(x)\n"
                                   "    z = b(x)\n"
                                   "  }\n"
                                   "}\n");
  assert_int_equal(root->dims.n, 1); /* no fresh dims: H was substituted */
  int ndims[1] = {1};
  int64_t xs[1] = {4};
  const int64_t *shapes[1] = {xs};
  assert_int_equal(ir_binding_infer(&r.b, NULL, NULL, ndims, shapes, &r.de), 0);
  int64_t s[RT_MAX_RANK];
  assert_int_equal(ir_binding_shape(&r.b, r.b.flat.params.v[0].type, s), 0);
  assert_int_equal(s[0], 9);
  assert_int_equal(ir_binding_shape(&r.b, r.b.flat.params.v[1].type, s), 0);
  assert_int_equal(s[0], 7);
  arena_destroy(r.arena);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_def_elu_reshape),
      cmocka_unit_test(test_unit_axes_and_fixed_default),
      cmocka_unit_test(test_layer_default_expr),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
