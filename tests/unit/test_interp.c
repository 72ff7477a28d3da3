/* test_interp.c - binding (dims inference, weight checks, random weights) and
 * the reference interpreter, on IR built by hand with ir_emit and checked
 * against values computed independently here. */
#include "testutil.h"

#include "ir/interp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static Arena *A;
static DiagEngine DE;
static IrModule *M;

static int setup(void **state) {
  (void)state;
  A = arena_create();
  diag_init(&DE, A, NULL);
  M = ir_module_new(A);
  return A && M ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  arena_destroy(A);
  return 0;
}

/* ---- Building IR ------------------------------------------------------------ */

static DimExpr V(int v) {
  return dim_var(v);
}
static DimExpr C(int64_t c) {
  return dim_const(c);
}
static DimExpr scale(int64_t k, DimExpr e) {
  DimExpr r;
  assert_int_equal(dim_mul(dim_const(k), e, &r), 0);
  return r;
}

static IrType T0(void) {
  return ir_scalar(IR_REAL);
}
static IrType T1(DimExpr d0) {
  return ir_type(A, IR_REAL, 1, &d0);
}
static IrType T2(DimExpr d0, DimExpr d1) {
  DimExpr d[2] = {d0, d1};
  return ir_type(A, IR_REAL, 2, d);
}
static IrType T3(DimExpr d0, DimExpr d1, DimExpr d2) {
  DimExpr d[3] = {d0, d1, d2};
  return ir_type(A, IR_REAL, 3, d);
}
static IrType CT(IrType t) {
  t.elem = IR_COMPLEX;
  return t;
}

static int add_layer(IrFunc *f, const char *name, const IrFunc *callee, const DimExpr *dim_args,
                     const char *prefix, int reverse) {
  int ci = ir_func_index(M, callee->name);
  assert_true(ci >= 0);
  DimExpr *da = arena_calloc(A, (size_t)(callee->dims.n + 1), sizeof *da);
  memcpy(da, dim_args, (size_t)callee->dims.n * sizeof *da);
  IrLayer l = {name, {0}, ci, da, prefix, "", reverse, 0, 0, {0}};
  assert_int_equal(vec_push(A, &f->layers, l), 0);
  return f->layers.n - 1;
}

/* Emits a node with the type ir_infer_type gives it (which must succeed). */
static IrRef node(IrFunc *f, IrNode proto, int nargs, const IrRef *args) {
  char msg[256] = "";
  IrType t;
  if (ir_infer_type(f, A, &proto, nargs, args, &t, msg, sizeof msg))
    fail_msg("type error emitting %s: %s", ir_op_info[proto.op].text, msg);
  proto.type = t;
  IrRef r = ir_emit(f, A, &proto, nargs, args);
  assert_true(r >= 0);
  return r;
}
static IrRef leaf(IrFunc *f, IrOp op, int index) {
  return node(f, (IrNode){.op = op, .index = index}, 0, NULL);
}
static IrRef cst(IrFunc *f, double v) {
  return node(f, (IrNode){.op = IR_CONST, .cval = v}, 0, NULL);
}
static IrRef un(IrFunc *f, IrOp op, IrRef x) {
  return node(f, (IrNode){.op = op}, 1, &x);
}
static IrRef bin(IrFunc *f, IrOp op, IrRef x, IrRef y) {
  IrRef a[2] = {x, y};
  return node(f, (IrNode){.op = op}, 2, a);
}
static IrRef to_type(IrFunc *f, IrOp op, IrRef x, IrType t) {
  return node(f, (IrNode){.op = op, .type = t}, 1, &x);
}
static IrRef axis_op(IrFunc *f, IrOp op, IrRef x, int axis) {
  return node(f, (IrNode){.op = op, .axis = axis}, 1, &x);
}

/* ---- Weights and tensors ----------------------------------------------------- */

typedef struct WSet {
  int n;
  const char *name[16];
  int ndim[16];
  int64_t shape[16][RT_MAX_RANK];
  const double *data[16];
} WSet;

static void ws_add(WSet *ws, const char *name, int ndim, const int64_t *shape, const double *d) {
  ws->name[ws->n] = name;
  ws->ndim[ws->n] = ndim;
  memcpy(ws->shape[ws->n], shape, (size_t)ndim * sizeof *shape);
  ws->data[ws->n] = d;
  ws->n++;
}

static int ws_find(const WSet *ws, const char *name) {
  for (int i = 0; i < ws->n; i++)
    if (strcmp(ws->name[i], name) == 0) return i;
  return -1;
}

static int ws_lookup(void *ctx, const char *name, int *ndim, int64_t *shape) {
  const WSet *ws = ctx;
  int i = ws_find(ws, name);
  if (i < 0) return 0;
  *ndim = ws->ndim[i];
  memcpy(shape, ws->shape[i], (size_t)ws->ndim[i] * sizeof *shape);
  return 1;
}

static int ws_load(void *ctx, const char *name, RtTensor *out, RtError *err) {
  const WSet *ws = ctx;
  int i = ws_find(ws, name);
  if (i < 0) {
    snprintf(err->msg, sizeof err->msg, "no tensor '%s'", name);
    return RT_ERR_MISSING;
  }
  int rc = rt_tensor_alloc(out, RT_F64, ws->ndim[i], ws->shape[i], err);
  if (rc) return rc;
  int64_t n = rt_numel(out);
  if (n > 0) memcpy(out->data, ws->data[i], (size_t)n * sizeof(double));
  return 0;
}

/* A borrowed f64 tensor over test data. */
static RtTensor tens(int ndim, const int64_t *shape, double *d) {
  RtTensor t;
  memset(&t, 0, sizeof t);
  t.dtype = RT_F64;
  t.ndim = ndim;
  memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
  t.data = d;
  return t;
}

static double out_at(const RtTensor *t, int64_t i) {
  return t->dtype == RT_F32 ? ((const float *)t->data)[i] : ((const double *)t->data)[i];
}

/* Deterministic test data in [-1, 1). */
static uint64_t lcg = 12345;
static double rnd(void) {
  lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(lcg >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}
static void fill(double *d, int64_t n, double k) {
  for (int64_t i = 0; i < n; i++) d[i] = k * rnd();
}

static int has_diag(const char *needle) {
  for (int i = 0; i < DE.diags.n; i++)
    if (strstr(DE.diags.v[i].message, needle)) return 1;
  return 0;
}
static void dump_diags(void) {
  for (int i = 0; i < DE.diags.n; i++) print_message("diag: %s\n", DE.diags.v[i].message);
}

static void bind_ok(IrBinding *b, IrFunc *root, WSet *ws) {
  assert_int_equal(ir_binding_init(b, A, M, root, &DE), 0);
  int rc = ir_binding_infer(b, ws_lookup, ws, NULL, NULL, &DE);
  if (rc) dump_diags();
  assert_int_equal(rc, 0);
  rc = ir_binding_load(b, ws_load, ws, &DE);
  if (rc) dump_diags();
  assert_int_equal(rc, 0);
}

static const InterpOptions F64 = {.f64 = 1}, F32 = {.f64 = 0};

/* ---- Elman RNN: h' = tanh(W x + U h + b) ------------------------------------- */

static IrFunc *make_elman(void) {
  IrFunc *f = ir_func_new(M, "Elman", IR_FN_CELL, (SrcLoc){0});
  int I = tu_ir_dim(A, f, "I", 1, 0), H = tu_ir_dim(A, f, "H", 1, 0);
  int pW = tu_ir_param(A, f, "W", T2(V(H), V(I)));
  int pU = tu_ir_param(A, f, "U", T2(V(H), V(H)));
  int pb = tu_ir_param(A, f, "b", T1(V(H)));
  int ix = tu_ir_input(A, f, "x", T1(V(I)));
  int sh = tu_ir_state(A, f, "h", T1(V(H)));
  int oy = tu_ir_output(A, f, "y", T1(V(H)));
  IrRef W = leaf(f, IR_PARAM, pW), U = leaf(f, IR_PARAM, pU), b = leaf(f, IR_PARAM, pb);
  IrRef x = leaf(f, IR_INPUT, ix), h = leaf(f, IR_STATE, sh);
  IrRef pre = bin(f, IR_ADD, bin(f, IR_ADD, bin(f, IR_MATMUL, W, x), bin(f, IR_MATMUL, U, h)), b);
  IrRef hn = un(f, IR_TANH, pre);
  f->states.v[sh].init = to_type(f, IR_BROADCAST, cst(f, 0.0), T1(V(H)));
  f->states.v[sh].next = hn;
  f->outputs.v[oy].value = hn;
  return f;
}

enum { EI = 3, EH = 4, EB = 2, ET = 5 };
static double eW[EH * EI], eU[EH * EH], eb[EH];

static void elman_weights(WSet *ws) {
  static const int64_t sW[2] = {EH, EI}, sU[2] = {EH, EH}, sb[1] = {EH};
  fill(eW, EH * EI, 0.8);
  fill(eU, EH * EH, 0.8);
  fill(eb, EH, 0.5);
  memset(ws, 0, sizeof *ws);
  ws_add(ws, "W", 2, sW, eW);
  ws_add(ws, "U", 2, sU, eU);
  ws_add(ws, "b", 1, sb, eb);
}

/* The same recurrence written directly. */
static void elman_ref(const double *x, const double *h0, double *y, double *hT) {
  for (int b = 0; b < EB; b++) {
    double h[EH];
    for (int i = 0; i < EH; i++) h[i] = h0 ? h0[b * EH + i] : 0.0;
    for (int t = 0; t < ET; t++) {
      double hn[EH];
      for (int i = 0; i < EH; i++) {
        double s = eb[i];
        for (int k = 0; k < EI; k++) s += eW[i * EI + k] * x[(b * ET + t) * EI + k];
        for (int k = 0; k < EH; k++) s += eU[i * EH + k] * h[k];
        hn[i] = tanh(s);
      }
      memcpy(h, hn, sizeof h);
      memcpy(y + (b * ET + t) * EH, h, sizeof h);
    }
    memcpy(hT + b * EH, h, sizeof h);
  }
}

static double f32(double v) {
  return (double)(float)v;
}

/* Float32 mode rounds every op's result (matrix products accumulate in
 * double and round once), with weights and inputs rounded as read: the same
 * recurrence written that way must agree exactly. */
static void elman_ref_f32(const double *x, const double *h0, double *y) {
  for (int b = 0; b < EB; b++) {
    double h[EH];
    for (int i = 0; i < EH; i++) h[i] = f32(h0[b * EH + i]);
    for (int t = 0; t < ET; t++) {
      double hn[EH];
      for (int i = 0; i < EH; i++) {
        double wx = 0, uh = 0;
        for (int k = 0; k < EI; k++) wx += f32(eW[i * EI + k]) * f32(x[(b * ET + t) * EI + k]);
        for (int k = 0; k < EH; k++) uh += f32(eU[i * EH + k]) * h[k];
        hn[i] = f32(tanh(f32(f32(f32(wx) + f32(uh)) + f32(eb[i]))));
      }
      memcpy(h, hn, sizeof h);
      memcpy(y + (b * ET + t) * EH, h, sizeof h);
    }
  }
}

static void test_elman(void **state) {
  (void)state;
  IrFunc *f = make_elman();
  WSet ws;
  elman_weights(&ws);
  IrBinding b;
  bind_ok(&b, f, &ws);
  assert_int_equal(b.dims[0], EI);
  assert_int_equal(b.dims[1], EH);

  double x[EB * ET * EI], h0[EB * EH], yref[EB * ET * EH], href[EB * EH];
  fill(x, EB * ET * EI, 1.0);
  fill(h0, EB * EH, 0.5);
  int64_t xs[3] = {EB, ET, EI}, hs[2] = {EB, EH};
  RtTensor in = tens(3, xs, x);

  /* From the declared initial state. */
  RtTensor out, sout;
  assert_int_equal(interp_run(&b, EB, ET, &in, NULL, NULL, &out, &sout, &F64, &DE), 0);
  elman_ref(x, NULL, yref, href);
  assert_int_equal(out.dtype, RT_F64);
  assert_int_equal(out.ndim, 3);
  assert_int_equal(out.shape[2], EH);
  for (int i = 0; i < EB * ET * EH; i++) assert_true(fabs(out_at(&out, i) - yref[i]) < 1e-12);
  for (int i = 0; i < EB * EH; i++) assert_true(fabs(out_at(&sout, i) - href[i]) < 1e-12);
  rt_tensor_free(&out);
  rt_tensor_free(&sout);

  /* From a given initial state. */
  RtTensor sin = tens(2, hs, h0);
  assert_int_equal(interp_run(&b, EB, ET, &in, NULL, &sin, &out, &sout, &F64, &DE), 0);
  elman_ref(x, h0, yref, href);
  for (int i = 0; i < EB * ET * EH; i++) assert_true(fabs(out_at(&out, i) - yref[i]) < 1e-12);
  for (int i = 0; i < EB * EH; i++) assert_true(fabs(out_at(&sout, i) - href[i]) < 1e-12);
  rt_tensor_free(&out);
  rt_tensor_free(&sout);

  /* float32 mode: close to the double result, but rounded. */
  double maxdiff = 0;
  assert_int_equal(interp_run(&b, EB, ET, &in, NULL, &sin, &out, NULL, &F32, &DE), 0);
  assert_int_equal(out.dtype, RT_F32);
  for (int i = 0; i < EB * ET * EH; i++) {
    double d = fabs(out_at(&out, i) - yref[i]);
    if (d > maxdiff) maxdiff = d;
  }
  assert_true(maxdiff < 1e-5);
  assert_true(maxdiff > 0);
  elman_ref_f32(x, h0, yref);
  for (int i = 0; i < EB * ET * EH; i++) assert_true(out_at(&out, i) == yref[i]);
  rt_tensor_free(&out);
}

/* A wrong input shape and out-of-range lengths are errors naming the argument. */
static void test_bad_arguments(void **state) {
  (void)state;
  IrFunc *f = make_elman();
  WSet ws;
  elman_weights(&ws);
  IrBinding b;
  bind_ok(&b, f, &ws);
  double x[EB * ET * (EI + 1)];
  memset(x, 0, sizeof x);
  int64_t bad[3] = {EB, ET, EI + 1}, good[3] = {EB, ET, EI};
  RtTensor in = tens(3, bad, x), out;
  assert_int_not_equal(interp_run(&b, EB, ET, &in, NULL, NULL, &out, NULL, &F64, &DE), 0);
  assert_true(has_diag("input 'x' has shape [2, 5, 4] but expected [2, 5, 3]"));
  in = tens(3, good, x);
  int64_t lengths[EB] = {2, ET + 1};
  assert_int_not_equal(interp_run(&b, EB, ET, &in, lengths, NULL, &out, NULL, &F64, &DE), 0);
  assert_true(has_diag("lengths[1] = 6"));
  assert_null(out.data);
}

/* ---- One-step evaluation of single ops --------------------------------------- */

/* A cell without dims whose single output is built by `build` from inputs of
 * the given (constant) shapes; runs one step (B = 1, T = 1) in f64 mode. */
typedef IrRef (*Build)(IrFunc *f, const IrRef *in);

static void run_op(const char *name, int nin, const IrType *in_types, double *const *in_data,
                   Build build, RtTensor *out) {
  IrFunc *f = ir_func_new(M, name, IR_FN_CELL, (SrcLoc){0});
  IrRef in[4];
  for (int i = 0; i < nin; i++) {
    tu_ir_input(A, f, arena_printf(A, "x%d", i), in_types[i]);
    in[i] = leaf(f, IR_INPUT, i);
  }
  IrRef y = build(f, in);
  int oy = tu_ir_output(A, f, "y", f->nodes.v[y].type);
  f->outputs.v[oy].value = y;
  IrBinding b;
  WSet ws = {0};
  bind_ok(&b, f, &ws);
  RtTensor ts[4];
  for (int i = 0; i < nin; i++) {
    int64_t shape[RT_MAX_RANK] = {1, 1};
    int n = 2;
    for (int k = 0; k < in_types[i].rank; k++) dim_is_const(in_types[i].dims[k], &shape[n++]);
    if (in_types[i].elem == IR_COMPLEX) shape[n++] = 2;
    ts[i] = tens(n, shape, in_data[i]);
  }
  int rc = interp_run(&b, 1, 1, ts, NULL, NULL, out, NULL, &F64, &DE);
  if (rc) dump_diags();
  assert_int_equal(rc, 0);
}

static IrOp cur_op;
static IrRef build_unary(IrFunc *f, const IrRef *in) {
  return un(f, cur_op, in[0]);
}
static IrRef build_binary(IrFunc *f, const IrRef *in) {
  return bin(f, cur_op, in[0], in[1]);
}

static double ref_sigmoid(double x) {
  return 1.0 / (1.0 + exp(-x));
}
static double ref_softplus(double x) {
  return x > 20 ? x : log(1.0 + exp(x));
}

static double ref_unary(IrOp op, double x) {
  switch (op) {
  case IR_NEG:
    return -x;
  case IR_EXP:
    return exp(x);
  case IR_LOG:
    return log(x);
  case IR_TANH:
    return tanh(x);
  case IR_SIGMOID:
    return ref_sigmoid(x);
  case IR_LOGSIGMOID:
    return log(ref_sigmoid(x));
  case IR_SOFTPLUS:
    return ref_softplus(x);
  case IR_RELU:
    return x > 0 ? x : 0;
  case IR_SILU:
    return x * ref_sigmoid(x);
  case IR_GELU:
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  case IR_SQRT:
    return sqrt(x);
  case IR_RSQRT:
    return 1 / sqrt(x);
  case IR_ABS:
    return fabs(x);
  case IR_SIN:
    return sin(x);
  case IR_COS:
    return cos(x);
  default:
    fail_msg("no reference for op %d", (int)op);
  }
  return 0;
}

static void test_unary_ops(void **state) {
  (void)state;
  static const IrOp ops[] = {IR_NEG,        IR_EXP,      IR_LOG,  IR_TANH, IR_SIGMOID,
                             IR_LOGSIGMOID, IR_SOFTPLUS, IR_RELU, IR_SILU, IR_GELU,
                             IR_SQRT,       IR_RSQRT,    IR_ABS,  IR_SIN,  IR_COS};
  enum { N = 9 };
  double xs[N] = {-30, -3.5, -1, -0.25, 0.5, 1, 2.5, 19.5, 25};
  double pos[N] = {1e-3, 0.1, 0.5, 1, 2, 3.5, 10, 100, 1e6};
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
    cur_op = ops[k];
    int positive = cur_op == IR_LOG || cur_op == IR_SQRT || cur_op == IR_RSQRT;
    double *x = positive ? pos : xs;
    IrType t = T1(C(N));
    RtTensor out;
    run_op(ir_op_info[cur_op].text, 1, &t, &x, build_unary, &out);
    for (int i = 0; i < N; i++) {
      double want = ref_unary(cur_op, x[i]), got = out_at(&out, i);
      if (!(fabs(got - want) <= 1e-13 * (1 + fabs(want))))
        fail_msg("%s(%g) = %.17g, want %.17g", ir_op_info[cur_op].text, x[i], got, want);
    }
    rt_tensor_free(&out);
  }
}

static void test_binary_broadcast(void **state) {
  (void)state;
  /* [2, 3] op [3], [2, 1] op [3], [2, 3] op [] */
  double a[6] = {1, -2, 3, 0.5, 4, -6}, row[3] = {2, 0.5, -1}, col[2] = {3, -0.5}, s[1] = {1.5};
  static const IrOp ops[] = {IR_ADD, IR_SUB, IR_MUL, IR_DIV, IR_MIN, IR_MAX, IR_POW};
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
    cur_op = ops[k];
    for (int form = 0; form < 3; form++) {
      IrType ts[2];
      double *ds[2];
      if (form == 0) {
        ts[0] = T2(C(2), C(3)), ts[1] = T1(C(3)), ds[0] = a, ds[1] = row;
      } else if (form == 1) {
        ts[0] = T2(C(2), C(1)), ts[1] = T1(C(3)), ds[0] = col, ds[1] = row;
      } else {
        ts[0] = T2(C(2), C(3)), ts[1] = T0(), ds[0] = a, ds[1] = s;
      }
      RtTensor out;
      run_op("bin", 2, ts, ds, build_binary, &out);
      assert_int_equal(out.ndim, 4);
      assert_int_equal(out.shape[2], 2);
      assert_int_equal(out.shape[3], 3);
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
          double x = form == 1 ? col[i] : a[i * 3 + j], y = form == 2 ? s[0] : row[j];
          double want = 0;
          switch (cur_op) {
          case IR_ADD:
            want = x + y;
            break;
          case IR_SUB:
            want = x - y;
            break;
          case IR_MUL:
            want = x * y;
            break;
          case IR_DIV:
            want = x / y;
            break;
          case IR_MIN:
            want = fmin(x, y);
            break;
          case IR_MAX:
            want = fmax(x, y);
            break;
          default:
            want = pow(x, y);
            break;
          }
          double got = out_at(&out, i * 3 + j);
          if (!(got == want || (isnan(got) && isnan(want))))
            fail_msg("%s form %d at (%d,%d): %g, want %g", ir_op_info[cur_op].text, form, i, j, got,
                     want);
        }
      rt_tensor_free(&out);
    }
  }
}

static IrRef build_matmul(IrFunc *f, const IrRef *in) {
  return bin(f, IR_MATMUL, in[0], in[1]);
}
static IrRef build_outer(IrFunc *f, const IrRef *in) {
  return bin(f, IR_OUTER, in[0], in[1]);
}
static IrRef build_transpose(IrFunc *f, const IrRef *in) {
  return un(f, IR_TRANSPOSE, in[0]);
}

static void test_matmul(void **state) {
  (void)state;
  double X[6], Y[12], v3[3], w3[3];
  fill(X, 6, 1), fill(Y, 12, 1), fill(v3, 3, 1), fill(w3, 3, 1);
  RtTensor out;
  /* [2,3] @ [3,4] */
  IrType t1[2] = {T2(C(2), C(3)), T2(C(3), C(4))};
  double *d1[2] = {X, Y};
  run_op("mm", 2, t1, d1, build_matmul, &out);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) {
      double s = 0;
      for (int k = 0; k < 3; k++) s += X[i * 3 + k] * Y[k * 4 + j];
      assert_true(fabs(out_at(&out, i * 4 + j) - s) < 1e-15);
    }
  rt_tensor_free(&out);
  /* [2,3] @ [3] */
  IrType t2[2] = {T2(C(2), C(3)), T1(C(3))};
  double *d2[2] = {X, v3};
  run_op("mv", 2, t2, d2, build_matmul, &out);
  assert_int_equal(out.ndim, 3);
  for (int i = 0; i < 2; i++) {
    double s = 0;
    for (int k = 0; k < 3; k++) s += X[i * 3 + k] * v3[k];
    assert_true(fabs(out_at(&out, i) - s) < 1e-15);
  }
  rt_tensor_free(&out);
  /* [3] @ [3,4] */
  IrType t3[2] = {T1(C(3)), T2(C(3), C(4))};
  double *d3[2] = {v3, Y};
  run_op("vm", 2, t3, d3, build_matmul, &out);
  for (int j = 0; j < 4; j++) {
    double s = 0;
    for (int k = 0; k < 3; k++) s += v3[k] * Y[k * 4 + j];
    assert_true(fabs(out_at(&out, j) - s) < 1e-15);
  }
  rt_tensor_free(&out);
  /* [3] @ [3] */
  IrType t4[2] = {T1(C(3)), T1(C(3))};
  double *d4[2] = {v3, w3};
  run_op("vv", 2, t4, d4, build_matmul, &out);
  assert_int_equal(out.ndim, 2);
  assert_true(fabs(out_at(&out, 0) - (v3[0] * w3[0] + v3[1] * w3[1] + v3[2] * w3[2])) < 1e-15);
  rt_tensor_free(&out);
  /* outer and transpose */
  run_op("outer", 2, t4, d4, build_outer, &out);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) assert_true(out_at(&out, i * 3 + j) == v3[i] * w3[j]);
  rt_tensor_free(&out);
  run_op("tr", 1, t1, d1, build_transpose, &out);
  assert_int_equal(out.shape[2], 3);
  assert_int_equal(out.shape[3], 2);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) assert_true(out_at(&out, j * 2 + i) == X[i * 3 + j]);
  rt_tensor_free(&out);
}

/* ---- Data movement ---------------------------------------------------------------- */

static IrRef build_movement(IrFunc *f, const IrRef *in) {
  /* x: [2, 3], y: [2, 2]
   * out = concat(reshape(slice(x, axis 1, [1, 3)) -> [4]),
   *              index(y, axis 0, 1) -> [2],
   *              broadcast(index(x, axis 1, 0) [2] -> [1,2]) reshaped [2]) -> [8] */
  IrRef s = node(f, (IrNode){.op = IR_SLICE, .axis = 1, .start = C(1), .stop = C(3)}, 1, &in[0]);
  IrRef r = to_type(f, IR_RESHAPE, s, T1(C(4)));
  IrRef i1 = node(f, (IrNode){.op = IR_INDEX, .axis = 0, .start = C(1)}, 1, &in[1]);
  IrRef i0 = node(f, (IrNode){.op = IR_INDEX, .axis = 1, .start = C(0)}, 1, &in[0]);
  IrRef bc = to_type(f, IR_BROADCAST, i0, T2(C(3), C(2)));
  IrRef flat = to_type(f, IR_RESHAPE, bc, T1(C(6)));
  IrRef parts[3] = {r, i1, flat};
  return node(f, (IrNode){.op = IR_CONCAT, .axis = 0}, 3, parts);
}

static void test_data_movement(void **state) {
  (void)state;
  double x[6] = {1, 2, 3, 4, 5, 6}, y[4] = {7, 8, 9, 10};
  IrType ts[2] = {T2(C(2), C(3)), T2(C(2), C(2))};
  double *ds[2] = {x, y};
  RtTensor out;
  run_op("move", 2, ts, ds, build_movement, &out);
  double want[12] = {2, 3, 5, 6, 9, 10, 1, 4, 1, 4, 1, 4};
  assert_int_equal(out.shape[2], 12);
  for (int i = 0; i < 12; i++) assert_true(out_at(&out, i) == want[i]);
  rt_tensor_free(&out);
}

/* ---- Reductions and normalizations ------------------------------------------------ */

static IrRef build_reductions(IrFunc *f, const IrRef *in) {
  /* x: [2, 3] -> concat(sum axis 0 [3], mean axis 1 [2], amax all, amin all broadcast to [1]) */
  IrRef s0 = axis_op(f, IR_SUM, in[0], 0);
  IrRef m1 = axis_op(f, IR_MEAN, in[0], 1);
  IrRef mx = to_type(f, IR_BROADCAST, axis_op(f, IR_AMAX, in[0], -1), T1(C(1)));
  IrRef mn = to_type(f, IR_BROADCAST, axis_op(f, IR_AMIN, in[0], -1), T1(C(1)));
  IrRef sa = to_type(f, IR_BROADCAST, axis_op(f, IR_SUM, in[0], -1), T1(C(1)));
  IrRef parts[5] = {s0, m1, mx, mn, sa};
  return node(f, (IrNode){.op = IR_CONCAT, .axis = 0}, 5, parts);
}

static void test_reductions(void **state) {
  (void)state;
  double x[6] = {1, -2, 3, 4, 5, -6};
  IrType t = T2(C(2), C(3));
  double *d = x;
  RtTensor out;
  run_op("red", 1, &t, &d, build_reductions, &out);
  double want[8] = {5, 3, -3, 2.0 / 3, 1, 5, -6, 5};
  for (int i = 0; i < 8; i++) assert_true(fabs(out_at(&out, i) - want[i]) < 1e-15);
  rt_tensor_free(&out);
}

static IrRef build_norms(IrFunc *f, const IrRef *in) {
  /* x: [2, 4], w: [4], b: [4] -> concat over axis 0 of the four normalizations: [8, 4] */
  IrRef a3[3] = {in[0], in[1], in[2]};
  IrRef rms = node(f, (IrNode){.op = IR_RMSNORM, .cval = 1e-5}, 2, a3);
  IrRef ln = node(f, (IrNode){.op = IR_LAYERNORM, .cval = 1e-5}, 3, a3);
  IrRef l2 = node(f, (IrNode){.op = IR_L2NORM, .cval = 1e-6}, 1, a3);
  IrRef sm = node(f, (IrNode){.op = IR_SOFTMAX}, 1, a3);
  IrRef parts[4] = {rms, ln, l2, sm};
  return node(f, (IrNode){.op = IR_CONCAT, .axis = 0}, 4, parts);
}

static void test_norms(void **state) {
  (void)state;
  double x[8] = {1, -2, 3, 0.5, 100, 101, 99, 98}, w[4] = {1, 2, 0.5, -1}, bb[4] = {0, 1, -1, 2};
  IrType ts[3] = {T2(C(2), C(4)), T1(C(4)), T1(C(4))};
  double *ds[3] = {x, w, bb};
  RtTensor out;
  run_op("norms", 3, ts, ds, build_norms, &out);
  for (int r = 0; r < 2; r++) {
    const double *xr = x + r * 4;
    double ss = 0, mean = 0, var = 0, mx = -INFINITY, se = 0;
    for (int i = 0; i < 4; i++) ss += xr[i] * xr[i], mean += xr[i] / 4, mx = fmax(mx, xr[i]);
    for (int i = 0; i < 4; i++) var += (xr[i] - mean) * (xr[i] - mean) / 4, se += exp(xr[i] - mx);
    for (int i = 0; i < 4; i++) {
      double rms = xr[i] / sqrt(ss / 4 + 1e-5) * w[i];
      double ln = (xr[i] - mean) / sqrt(var + 1e-5) * w[i] + bb[i];
      double l2 = xr[i] / sqrt(ss + 1e-6);
      double sm = exp(xr[i] - mx) / se;
      assert_true(fabs(out_at(&out, (0 + r) * 4 + i) - rms) < 1e-12);
      assert_true(fabs(out_at(&out, (2 + r) * 4 + i) - ln) < 1e-12);
      assert_true(fabs(out_at(&out, (4 + r) * 4 + i) - l2) < 1e-12);
      assert_true(fabs(out_at(&out, (6 + r) * 4 + i) - sm) < 1e-12);
    }
  }
  rt_tensor_free(&out);
}

/* ---- Complex numbers ----------------------------------------------------------------- */

static IrRef build_complex(IrFunc *f, const IrRef *in) {
  /* z = complex(a, b), w: complex input; out = concat(z * w, exp(z), conj(w) / z) */
  IrRef z = bin(f, IR_CPLX, in[0], in[1]);
  IrRef parts[3] = {bin(f, IR_MUL, z, in[2]), un(f, IR_EXP, z),
                    bin(f, IR_DIV, un(f, IR_CONJ, in[2]), z)};
  return node(f, (IrNode){.op = IR_CONCAT, .axis = 0}, 3, parts);
}
static IrRef build_cabs(IrFunc *f, const IrRef *in) {
  /* abs(w) + real(w) * imag(w) */
  return bin(f, IR_ADD, un(f, IR_ABS, in[0]),
             bin(f, IR_MUL, un(f, IR_RE, in[0]), un(f, IR_IM, in[0])));
}

static void test_complex(void **state) {
  (void)state;
  double a[2] = {0.5, -1}, b[2] = {2, 0.25}, w[4] = {1, -1, -0.5, 3};
  IrType ts[3] = {T1(C(2)), T1(C(2)), CT(T1(C(2)))};
  double *ds[3] = {a, b, w};
  RtTensor out;
  run_op("cplx", 3, ts, ds, build_complex, &out);
  assert_int_equal(out.ndim, 4);
  assert_int_equal(out.shape[2], 6);
  assert_int_equal(out.shape[3], 2);
  for (int i = 0; i < 2; i++) {
    double zr = a[i], zi = b[i], wr = w[2 * i], wi = w[2 * i + 1];
    double want[3][2] = {
        {zr * wr - zi * wi, zr * wi + zi * wr},
        {exp(zr) * cos(zi), exp(zr) * sin(zi)},
        {(wr * zr - wi * zi) / (zr * zr + zi * zi), (-wi * zr - wr * zi) / (zr * zr + zi * zi)}};
    for (int p = 0; p < 3; p++)
      for (int c = 0; c < 2; c++)
        assert_true(fabs(out_at(&out, (p * 2 + i) * 2 + c) - want[p][c]) < 1e-14);
  }
  rt_tensor_free(&out);
  double *dw = w;
  run_op("cabs", 1, &ts[2], &dw, build_cabs, &out);
  for (int i = 0; i < 2; i++)
    assert_true(fabs(out_at(&out, i) - (hypot(w[2 * i], w[2 * i + 1]) + w[2 * i] * w[2 * i + 1])) <
                1e-15);
  rt_tensor_free(&out);
}

/* ---- Diagonal linear recurrence with lengths ----------------------------------------- */

/* cell Acc(H): h' = a * h + x, y = h' (h starts at 0.5 * s, s a param) */
static IrFunc *make_acc(const char *name) {
  IrFunc *f = ir_func_new(M, name, IR_FN_CELL, (SrcLoc){0});
  int H = tu_ir_dim(A, f, "H", 1, 0);
  int pa = tu_ir_param(A, f, "a", T1(V(H)));
  int ps = tu_ir_param(A, f, "s", T1(V(H)));
  int ix = tu_ir_input(A, f, "x", T1(V(H)));
  int sh = tu_ir_state(A, f, "h", T1(V(H)));
  int oy = tu_ir_output(A, f, "y", T1(V(H)));
  IrRef a = leaf(f, IR_PARAM, pa), s = leaf(f, IR_PARAM, ps);
  IrRef x = leaf(f, IR_INPUT, ix), h = leaf(f, IR_STATE, sh);
  IrRef hn = bin(f, IR_ADD, bin(f, IR_MUL, a, h), x);
  f->states.v[sh].init = bin(f, IR_MUL, cst(f, 0.5), s);
  f->states.v[sh].next = hn;
  f->outputs.v[oy].value = hn;
  return f;
}

enum { AH = 3, AB = 3, AT = 5 };
static double acc_a[AH], acc_s[AH];

static void acc_weights(WSet *ws, const char *pa, const char *ps) {
  static const int64_t sh[1] = {AH};
  fill(acc_a, AH, 0.9);
  fill(acc_s, AH, 1.0);
  ws_add(ws, pa, 1, sh, acc_a);
  ws_add(ws, ps, 1, sh, acc_s);
}

static void test_lengths(void **state) {
  (void)state;
  IrFunc *f = make_acc("Acc");
  WSet ws = {0};
  acc_weights(&ws, "a", "s");
  IrBinding b;
  bind_ok(&b, f, &ws);
  double x[AB * AT * AH], h0[AB * AH];
  fill(x, AB * AT * AH, 1);
  fill(h0, AB * AH, 1);
  int64_t xs[3] = {AB, AT, AH}, hs[2] = {AB, AH}, lengths[AB] = {AT, 2, 0};
  RtTensor in = tens(3, xs, x), out, sout;
  for (int given = 0; given < 2; given++) {
    RtTensor sin = tens(2, hs, given ? h0 : NULL);
    assert_int_equal(interp_run(&b, AB, AT, &in, lengths, &sin, &out, &sout, &F64, &DE), 0);
    for (int e = 0; e < AB; e++)
      for (int i = 0; i < AH; i++) {
        double h = given ? h0[e * AH + i] : 0.5 * acc_s[i];
        for (int t = 0; t < AT; t++) {
          double got = out_at(&out, (e * AT + t) * AH + i);
          if (t < lengths[e]) {
            h = acc_a[i] * h + x[(e * AT + t) * AH + i];
            assert_true(fabs(got - h) < 1e-14);
          } else {
            assert_true(got == 0.0);
          }
        }
        assert_true(fabs(out_at(&sout, e * AH + i) - h) < 1e-14);
      }
    rt_tensor_free(&out);
    rt_tensor_free(&sout);
  }
  /* B = 0 and T = 0 are valid and give empty (or zero-length) results. */
  int64_t e0[3] = {0, AT, AH}, e1[3] = {AB, 0, AH};
  RtTensor in0 = tens(3, e0, x), in1 = tens(3, e1, x);
  assert_int_equal(interp_run(&b, 0, AT, &in0, NULL, NULL, &out, &sout, &F32, &DE), 0);
  assert_int_equal(out.shape[0], 0);
  assert_int_equal(sout.shape[0], 0);
  rt_tensor_free(&out);
  rt_tensor_free(&sout);
  assert_int_equal(interp_run(&b, AB, 0, &in1, NULL, NULL, &out, &sout, &F64, &DE), 0);
  assert_int_equal(out.shape[1], 0);
  for (int e = 0; e < AB; e++)
    for (int i = 0; i < AH; i++) assert_true(out_at(&sout, e * AH + i) == 0.5 * acc_s[i]);
  rt_tensor_free(&out);
  rt_tensor_free(&sout);
}

/* ---- Models: a bidirectional layer pair, a reversed model, causal conv ------------- */

static IrRef call(IrFunc *f, int layer, IrType t, int nargs, const IrRef *args) {
  return node(f, (IrNode){.op = IR_CALL, .index = layer, .type = t}, nargs, args);
}

static void test_bidirectional(void **state) {
  (void)state;
  IrFunc *acc = make_acc("Acc");
  IrFunc *m = ir_func_new(M, "Bi", IR_FN_MODEL, (SrcLoc){0});
  int H = tu_ir_dim(A, m, "H", 1, 0);
  tu_ir_input(A, m, "x", T1(V(H)));
  int oy = tu_ir_output(A, m, "y", T1(scale(2, V(H))));
  DimExpr da[1] = {V(H)};
  int lf = add_layer(m, "fwd", acc, da, "f.", 0);
  int lb = add_layer(m, "bwd", acc, da, "b.", 1);
  IrRef x = leaf(m, IR_INPUT, 0);
  IrRef cf = call(m, lf, T1(V(H)), 1, &x);
  IrRef cb = call(m, lb, T1(V(H)), 1, &x);
  IrRef both[2] = {cf, cb};
  m->outputs.v[oy].value = node(m, (IrNode){.op = IR_CONCAT, .axis = 0}, 2, both);

  WSet ws = {0};
  acc_weights(&ws, "f.a", "f.s");
  double ba[AH], bs[AH];
  static const int64_t sh[1] = {AH};
  fill(ba, AH, 0.9);
  fill(bs, AH, 1);
  ws_add(&ws, "b.a", 1, sh, ba);
  ws_add(&ws, "b.s", 1, sh, bs);
  IrBinding b;
  bind_ok(&b, m, &ws);
  assert_int_equal(b.flat.states.n, 2);
  assert_string_equal(b.flat.states.v[0].name, "fwd.h");
  assert_string_equal(b.flat.states.v[1].name, "bwd.h");

  double x_[AB * AT * AH];
  fill(x_, AB * AT * AH, 1);
  int64_t xs[3] = {AB, AT, AH}, lengths[AB] = {AT, 3, 1};
  RtTensor in = tens(3, xs, x_), out, sout[2];
  assert_int_equal(interp_run(&b, AB, AT, &in, lengths, NULL, &out, sout, &F64, &DE), 0);
  assert_int_equal(out.shape[2], 2 * AH);
  for (int e = 0; e < AB; e++)
    for (int i = 0; i < AH; i++) {
      int64_t L = lengths[e];
      double h = 0.5 * acc_s[i];
      for (int t = 0; t < L; t++) {
        h = acc_a[i] * h + x_[(e * AT + t) * AH + i];
        assert_true(fabs(out_at(&out, (e * AT + t) * 2 * AH + i) - h) < 1e-14);
      }
      assert_true(fabs(out_at(&sout[0], e * AH + i) - h) < 1e-14);
      double g = 0.5 * bs[i];
      for (int64_t t = L - 1; t >= 0; t--) {
        g = ba[i] * g + x_[(e * AT + t) * AH + i];
        assert_true(fabs(out_at(&out, (e * AT + t) * 2 * AH + AH + i) - g) < 1e-14);
      }
      assert_true(fabs(out_at(&sout[1], e * AH + i) - g) < 1e-14);
      for (int64_t t = L; t < AT; t++)
        for (int k = 0; k < 2 * AH; k++) assert_true(out_at(&out, (e * AT + t) * 2 * AH + k) == 0);
    }
  rt_tensor_free(&out);
  rt_tensor_free(&sout[0]);
  rt_tensor_free(&sout[1]);
}

/* A reversed layer whose callee is itself a model, with composed prefixes. */
static void test_reversed_model(void **state) {
  (void)state;
  IrFunc *acc = make_acc("Acc");
  IrFunc *wrap = ir_func_new(M, "Wrap", IR_FN_MODEL, (SrcLoc){0});
  int WH = tu_ir_dim(A, wrap, "H", 1, 0);
  tu_ir_input(A, wrap, "x", T1(V(WH)));
  int wy = tu_ir_output(A, wrap, "y", T1(V(WH)));
  DimExpr wda[1] = {V(WH)};
  int wl = add_layer(wrap, "c", acc, wda, "c.", 0);
  IrRef wx = leaf(wrap, IR_INPUT, 0);
  /* y = 2 * c(x): a per-token op after the call */
  wrap->outputs.v[wy].value = bin(wrap, IR_MUL, call(wrap, wl, T1(V(WH)), 1, &wx), cst(wrap, 2));

  IrFunc *top = ir_func_new(M, "Top", IR_FN_MODEL, (SrcLoc){0});
  int H = tu_ir_dim(A, top, "H", 1, 0);
  tu_ir_input(A, top, "x", T1(V(H)));
  int oy = tu_ir_output(A, top, "y", T1(V(H)));
  DimExpr da[1] = {V(H)};
  int l = add_layer(top, "r", wrap, da, "r.", 1);
  IrRef x = leaf(top, IR_INPUT, 0);
  top->outputs.v[oy].value = call(top, l, T1(V(H)), 1, &x);

  WSet ws = {0};
  acc_weights(&ws, "r.c.a", "r.c.s");
  IrBinding b;
  bind_ok(&b, top, &ws);
  assert_string_equal(b.flat.states.v[0].name, "r.c.h");
  double x_[AB * AT * AH];
  fill(x_, AB * AT * AH, 1);
  int64_t xs[3] = {AB, AT, AH}, lengths[AB] = {4, AT, 0};
  RtTensor in = tens(3, xs, x_), out, sout;
  assert_int_equal(interp_run(&b, AB, AT, &in, lengths, NULL, &out, &sout, &F64, &DE), 0);
  for (int e = 0; e < AB; e++)
    for (int i = 0; i < AH; i++) {
      double g = 0.5 * acc_s[i];
      for (int64_t t = lengths[e] - 1; t >= 0; t--) {
        g = acc_a[i] * g + x_[(e * AT + t) * AH + i];
        assert_true(fabs(out_at(&out, (e * AT + t) * AH + i) - 2 * g) < 1e-14);
      }
      for (int64_t t = lengths[e]; t < AT; t++)
        assert_true(out_at(&out, (e * AT + t) * AH + i) == 0);
      assert_true(fabs(out_at(&sout, e * AH + i) - g) < 1e-14);
    }
  rt_tensor_free(&out);
  rt_tensor_free(&sout);
}

/* States update simultaneously (p' = q, q' = p + x swaps through the old
 * values), and RESULT picks a layer's second output. */
static void test_swap_and_results(void **state) {
  (void)state;
  IrFunc *c = ir_func_new(M, "Swap", IR_FN_CELL, (SrcLoc){0});
  int CH = tu_ir_dim(A, c, "H", 1, 0);
  tu_ir_input(A, c, "x", T1(V(CH)));
  int sp = tu_ir_state(A, c, "p", T1(V(CH))), sq = tu_ir_state(A, c, "q", T1(V(CH)));
  int oy = tu_ir_output(A, c, "y", T1(V(CH))), oz = tu_ir_output(A, c, "z", T1(V(CH)));
  IrRef p = leaf(c, IR_STATE, sp), q = leaf(c, IR_STATE, sq), x = leaf(c, IR_INPUT, 0);
  IrRef qn = bin(c, IR_ADD, p, x);
  c->states.v[sp].init = to_type(c, IR_BROADCAST, cst(c, 1.0), T1(V(CH)));
  c->states.v[sq].init = to_type(c, IR_BROADCAST, cst(c, 2.0), T1(V(CH)));
  c->states.v[sp].next = q;
  c->states.v[sq].next = qn;
  c->outputs.v[oy].value = q;
  c->outputs.v[oz].value = qn;

  IrFunc *m = ir_func_new(M, "UseSwap", IR_FN_MODEL, (SrcLoc){0});
  int H = tu_ir_dim(A, m, "H", 1, 0);
  tu_ir_input(A, m, "x", T1(V(H)));
  int oo = tu_ir_output(A, m, "o", T1(V(H)));
  DimExpr da[1] = {V(H)};
  int l = add_layer(m, "s", c, da, "s.", 0);
  IrRef mx = leaf(m, IR_INPUT, 0);
  IrRef cl = call(m, l, T1(V(H)), 1, &mx);
  IrRef z = node(m, (IrNode){.op = IR_RESULT, .index = 1, .type = T1(V(H))}, 1, &cl);
  /* o = 10 * y + z */
  m->outputs.v[oo].value = bin(m, IR_ADD, bin(m, IR_MUL, cst(m, 10), cl), z);

  IrBinding b;
  WSet ws = {0};
  assert_int_equal(ir_binding_init(&b, A, M, m, &DE), 0);
  int nd[1] = {1};
  int64_t xshape[1] = {2};
  const int64_t *shapes[1] = {xshape};
  assert_int_equal(ir_binding_infer(&b, ws_lookup, &ws, nd, shapes, &DE), 0);
  assert_int_equal(b.dims[0], 2);
  enum { T = 4 };
  double x_[T * 2];
  fill(x_, T * 2, 1);
  int64_t xs[3] = {1, T, 2};
  RtTensor in = tens(3, xs, x_), out, sout[2];
  assert_int_equal(interp_run(&b, 1, T, &in, NULL, NULL, &out, sout, &F64, &DE), 0);
  for (int i = 0; i < 2; i++) {
    double pv = 1, qv = 2;
    for (int t = 0; t < T; t++) {
      double y = qv, zz = pv + x_[t * 2 + i];
      pv = y, qv = zz;
      assert_true(fabs(out_at(&out, t * 2 + i) - (10 * y + zz)) < 1e-13);
    }
    assert_true(out_at(&sout[0], i) == pv);
    assert_true(out_at(&sout[1], i) == qv);
  }
  rt_tensor_free(&out);
  rt_tensor_free(&sout[0]);
  rt_tensor_free(&sout[1]);
}

/* IR whose types disagree with its operands is refused, not read out of
 * bounds; a layer no node calls still reports its (initial) final state. */
static void test_malformed_and_uncalled(void **state) {
  (void)state;
  IrFunc *f = ir_func_new(M, "Bad", IR_FN_CELL, (SrcLoc){0});
  tu_ir_input(A, f, "x", T1(C(3)));
  int oy = tu_ir_output(A, f, "y", T1(C(7)));
  IrRef x = leaf(f, IR_INPUT, 0);
  IrNode bad = {.op = IR_TANH, .type = T1(C(7))};
  f->outputs.v[oy].value = ir_emit(f, A, &bad, 1, &x);
  IrBinding b;
  WSet ws = {0};
  bind_ok(&b, f, &ws);
  double xd[3] = {1, 2, 3};
  int64_t xs[3] = {1, 1, 3};
  RtTensor in = tens(3, xs, xd), out;
  assert_int_not_equal(interp_run(&b, 1, 1, &in, NULL, NULL, &out, NULL, &F64, &DE), 0);
  assert_true(has_diag("ill-typed"));

  IrFunc *acc = make_acc("Acc");
  IrFunc *m = ir_func_new(M, "Idle", IR_FN_MODEL, (SrcLoc){0});
  int H = tu_ir_dim(A, m, "H", 1, 0);
  tu_ir_input(A, m, "x", T1(V(H)));
  int mo = tu_ir_output(A, m, "y", T1(V(H)));
  DimExpr da[1] = {V(H)};
  add_layer(m, "idle", acc, da, "i.", 0);
  m->outputs.v[mo].value = un(m, IR_NEG, leaf(m, IR_INPUT, 0));
  memset(&ws, 0, sizeof ws);
  acc_weights(&ws, "i.a", "i.s");
  bind_ok(&b, m, &ws);
  double x2[2 * AH];
  fill(x2, 2 * AH, 1);
  int64_t x2s[3] = {1, 2, AH};
  RtTensor in2 = tens(3, x2s, x2), sout;
  assert_int_equal(interp_run(&b, 1, 2, &in2, NULL, NULL, &out, &sout, &F64, &DE), 0);
  for (int i = 0; i < 2 * AH; i++) assert_true(out_at(&out, i) == -x2[i]);
  for (int i = 0; i < AH; i++) assert_true(out_at(&sout, i) == 0.5 * acc_s[i]);
  rt_tensor_free(&out);
  rt_tensor_free(&sout);
}

static void test_causal_conv(void **state) {
  (void)state;
  enum { D = 3, K = 4, B = 2, T = 6 };
  for (int w3 = 0; w3 < 2; w3++) {
    IrFunc *m = ir_func_new(M, w3 ? "Conv3" : "Conv2", IR_FN_MODEL, (SrcLoc){0});
    int dD = tu_ir_dim(A, m, "D", 1, 0), dK = tu_ir_dim(A, m, "K", 1, 0);
    int pw = tu_ir_param(A, m, "w", w3 ? T3(V(dD), C(1), V(dK)) : T2(V(dD), V(dK)));
    int pb = tu_ir_param(A, m, "b", T1(V(dD)));
    tu_ir_input(A, m, "u", T1(V(dD)));
    int oy = tu_ir_output(A, m, "y", T1(V(dD)));
    IrRef args[3] = {leaf(m, IR_INPUT, 0), leaf(m, IR_PARAM, pw), leaf(m, IR_PARAM, pb)};
    m->outputs.v[oy].value = node(m, (IrNode){.op = IR_CAUSAL_CONV}, 3, args);
    double w[D * K], bias[D], u[B * T * D];
    fill(w, D * K, 1), fill(bias, D, 1), fill(u, B * T * D, 1);
    int64_t sw2[2] = {D, K}, sw3[3] = {D, 1, K}, sb[1] = {D}, su[3] = {B, T, D};
    WSet ws = {0};
    ws_add(&ws, "w", w3 ? 3 : 2, w3 ? sw3 : sw2, w);
    ws_add(&ws, "b", 1, sb, bias);
    IrBinding b;
    bind_ok(&b, m, &ws);
    assert_int_equal(b.dims[1], K);
    RtTensor in = tens(3, su, u), out;
    int64_t lengths[B] = {T, 4};
    assert_int_equal(interp_run(&b, B, T, &in, lengths, NULL, &out, NULL, &F64, &DE), 0);
    for (int e = 0; e < B; e++)
      for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
          double want = 0;
          if (t < lengths[e]) {
            want = bias[d];
            for (int k = 0; k < K; k++) {
              int at = t - K + 1 + k;
              if (at >= 0) want += w[d * K + k] * u[(e * T + at) * D + d];
            }
          }
          assert_true(fabs(out_at(&out, (e * T + t) * D + d) - want) < 1e-14);
        }
    rt_tensor_free(&out);
  }
}

/* ---- Embedding lookup and its run-time error ------------------------------------- */

static void test_gather(void **state) {
  (void)state;
  IrFunc *m = ir_func_new(M, "Emb", IR_FN_MODEL, (SrcLoc){0});
  int dV = tu_ir_dim(A, m, "V", 1, 0), dE = tu_ir_dim(A, m, "E", 1, 0);
  int pt = tu_ir_param(A, m, "table", T2(V(dV), V(dE)));
  tu_ir_input(A, m, "tok", ir_scalar(IR_INT));
  int oy = tu_ir_output(A, m, "y", T1(V(dE)));
  m->outputs.v[oy].value = bin(m, IR_GATHER, leaf(m, IR_PARAM, pt), leaf(m, IR_INPUT, 0));
  double table[5 * 2];
  fill(table, 10, 1);
  int64_t st[2] = {5, 2};
  WSet ws = {0};
  ws_add(&ws, "table", 2, st, table);
  IrBinding b;
  bind_ok(&b, m, &ws);

  int64_t toks[2 * 4] = {0, 4, 2, 1, 3, 3, 0, 2};
  RtTensor in;
  memset(&in, 0, sizeof in);
  in.dtype = RT_I64;
  in.ndim = 2;
  in.shape[0] = 2;
  in.shape[1] = 4;
  in.data = toks;
  RtTensor out;
  assert_int_equal(interp_run(&b, 2, 4, &in, NULL, NULL, &out, NULL, &F64, &DE), 0);
  for (int i = 0; i < 8; i++)
    for (int k = 0; k < 2; k++) assert_true(out_at(&out, i * 2 + k) == table[toks[i] * 2 + k]);
  rt_tensor_free(&out);

  toks[3] = 7;
  assert_int_not_equal(interp_run(&b, 2, 4, &in, NULL, NULL, &out, NULL, &F64, &DE), 0);
  assert_true(has_diag("token index 7 out of range [0, 5) at batch 0, step 3"));
  assert_null(out.data);
  /* Past a sequence's length the token is never read. */
  int64_t lengths[2] = {3, 4};
  assert_int_equal(interp_run(&b, 2, 4, &in, lengths, NULL, &out, NULL, &F64, &DE), 0);
  rt_tensor_free(&out);
}

/* ---- Dims inference ---------------------------------------------------------------- */

static IrFunc *make_lstm_decls(void) {
  IrFunc *f = ir_func_new(M, "LSTM", IR_FN_CELL, (SrcLoc){0});
  int I = tu_ir_dim(A, f, "I", 1, 0), H = tu_ir_dim(A, f, "H", 1, 0);
  tu_ir_param(A, f, "weight_ih", T2(scale(4, V(H)), V(I)));
  tu_ir_param(A, f, "weight_hh", T2(scale(4, V(H)), V(H)));
  tu_ir_param(A, f, "bias_ih", T1(scale(4, V(H))));
  tu_ir_param(A, f, "bias_hh", T1(scale(4, V(H))));
  tu_ir_input(A, f, "x", T1(V(I)));
  return f;
}

static void lstm_shapes(WSet *ws, int64_t rows, int64_t in, int64_t hh, int with_bias_hh) {
  static int64_t s[4][2];
  s[0][0] = rows, s[0][1] = in;
  s[1][0] = rows, s[1][1] = hh;
  s[2][0] = rows;
  s[3][0] = rows;
  memset(ws, 0, sizeof *ws);
  ws_add(ws, "weight_ih", 2, s[0], NULL);
  ws_add(ws, "weight_hh", 2, s[1], NULL);
  ws_add(ws, "bias_ih", 1, s[2], NULL);
  if (with_bias_hh) ws_add(ws, "bias_hh", 1, s[3], NULL);
}

static void test_infer_dims(void **state) {
  (void)state;
  IrFunc *f = make_lstm_decls();
  WSet ws;
  IrBinding b;

  lstm_shapes(&ws, 1024, 64, 256, 1);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_int_equal(b.dims[0], 64);
  assert_int_equal(b.dims[1], 256);
  int64_t shape[2];
  assert_int_equal(ir_binding_shape(&b, f->params.v[0].type, shape), 0);
  assert_int_equal(shape[0], 1024);
  assert_int_equal(shape[1], 64);

  /* 4*H = 1023 has no integer solution. */
  lstm_shapes(&ws, 1023, 64, 256, 1);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_true(has_diag("weight 'weight_ih' has shape [1023, 64] but is declared [4*H, I]: "
                       "4*H = 1023 has no integer solution"));

  /* A shape that contradicts the solved dims names the tensor and all shapes. */
  lstm_shapes(&ws, 1024, 64, 100, 1);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_true(
      has_diag("weight 'weight_hh' has shape [1024, 100] but is declared [4*H, H] = [1024, 256]"));

  /* A wrong rank is reported along with the dim it leaves unknown. */
  lstm_shapes(&ws, 1024, 64, 256, 1);
  ws.ndim[0] = 1;
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_true(has_diag("weight 'weight_ih' has shape [1024] but is declared [4*H, I]"));
  assert_true(has_diag("cannot infer dimension 'I': pass --dims I=N"));

  /* A missing weight. */
  lstm_shapes(&ws, 1024, 64, 256, 0);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_true(has_diag("missing weight 'bias_hh' (declared [4*H])"));

  /* Without weights, I comes from the input's shape and H from --dims; an
   * input that disagrees is reported. */
  int nd[1] = {1};
  int64_t xshape[1] = {64};
  const int64_t *shapes[1] = {xshape};
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "H", 32, &DE), 0);
  assert_int_not_equal(ir_binding_set_dim(&b, "Q", 32, &DE), 0);
  assert_true(has_diag("no dimension 'Q'"));
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, nd, shapes, &DE), 0);
  assert_int_equal(b.dims[0], 64);
  assert_int_equal(b.dims[1], 32);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "I", 10, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "H", 32, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, NULL, NULL, nd, shapes, &DE), 0);
  assert_true(has_diag("input 'x' has shape [64] but is declared [I] = [10]"));

  /* Nothing fixes H. */
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, NULL, NULL, nd, shapes, &DE), 0);
  assert_true(has_diag("cannot infer dimension 'H': pass --dims H=N"));
}

/* A quotient dim (Dh = D / NH, D written NH*Dh in the shapes): binding
 * divides a given D, reports a D the divisor does not divide, finds D from
 * a Dh the weights fix, and reports a D that disagrees with them. */
static void test_infer_quotient(void **state) {
  (void)state;
  IrFunc *f = ir_func_new(M, "Heads", IR_FN_CELL, (SrcLoc){0});
  int D = tu_ir_dim(A, f, "D", 1, 0), NH = tu_ir_dim(A, f, "NH", 1, 0),
      Dh = tu_ir_dim(A, f, "Dh", 1, 0);
  IrDimQuotient q = {Dh, D, V(NH), {0}};
  assert_int_equal(vec_push(A, &f->dim_quotients, q), 0);
  DimExpr width;
  assert_int_equal(dim_mul(V(NH), V(Dh), &width), 0);
  tu_ir_param(A, f, "W", T2(width, width));
  tu_ir_input(A, f, "x", T1(width));
  IrBinding b;

  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "D", 64, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "NH", 4, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &DE), 0);
  assert_int_equal(b.dims[Dh], 16);

  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "D", 66, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "NH", 4, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &DE), 0);
  assert_true(has_diag("dimension 'Dh' = D / NH, but D = 66 is not a multiple of NH = 4"));

  static int64_t wshape[2] = {64, 64};
  WSet ws;
  memset(&ws, 0, sizeof ws);
  ws_add(&ws, "W", 2, wshape, NULL);
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "NH", 4, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_int_equal(b.dims[Dh], 16);
  assert_int_equal(b.dims[D], 64);

  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "NH", 4, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "D", 60, &DE), 0);
  assert_int_not_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_true(has_diag("dimension 'D' = 60 is not NH * Dh = 4 * 16 (Dh = D / NH)"));
}

/* Defaults apply only where the shapes say nothing; a dim solved through
 * another's default is found by iterating again. */
static void test_infer_defaults(void **state) {
  (void)state;
  IrFunc *f = ir_func_new(M, "S4D", IR_FN_CELL, (SrcLoc){0});
  int H = tu_ir_dim(A, f, "H", 1, 0), N = tu_ir_dim(A, f, "N", 1, 64),
      R = tu_ir_dim(A, f, "R", 1, 0), Q = tu_ir_dim(A, f, "Q", 1, 8);
  DimExpr hn, rn;
  assert_int_equal(dim_mul(V(H), V(N), &hn), 0);
  assert_int_equal(dim_add(V(R), V(N), &rn), 0);
  tu_ir_param(A, f, "A", T1(hn));   /* H*N: not linear once both are unknown */
  tu_ir_param(A, f, "B", T1(rn));   /* R + N */
  tu_ir_param(A, f, "C", T1(V(Q))); /* Q: stored, so its default is not used */
  WSet ws = {0};
  int64_t sA[1] = {6 * 64}, sB[1] = {64 + 5}, sC[1] = {3};
  ws_add(&ws, "A", 1, sA, NULL);
  ws_add(&ws, "B", 1, sB, NULL);
  ws_add(&ws, "C", 1, sC, NULL);
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, A, M, f, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, ws_lookup, &ws, NULL, NULL, &DE), 0);
  assert_int_equal(b.dims[N], 64);
  assert_int_equal(b.dims[H], 6);
  assert_int_equal(b.dims[R], 5);
  assert_int_equal(b.dims[Q], 3);
}

/* Seeded random weights: deterministic, within +-1/sqrt(fan_in), float-exact. */
static void test_random_weights(void **state) {
  (void)state;
  IrFunc *f = make_elman();
  IrBinding b1, b2;
  for (int k = 0; k < 2; k++) {
    IrBinding *b = k ? &b2 : &b1;
    assert_int_equal(ir_binding_init(b, A, M, f, &DE), 0);
    assert_int_equal(ir_binding_set_dim(b, "I", 16, &DE), 0);
    assert_int_equal(ir_binding_set_dim(b, "H", 4, &DE), 0);
    assert_int_equal(ir_binding_infer(b, NULL, NULL, NULL, NULL, &DE), 0);
    assert_int_equal(ir_binding_random(b, 42, &DE), 0);
  }
  const double *w1 = b1.weights[0].data, *w2 = b2.weights[0].data;
  assert_int_equal(b1.weights[0].shape[1], 16);
  double mx = 0;
  for (int i = 0; i < 4 * 16; i++) {
    assert_true(w1[i] == w2[i]);
    assert_true(fabs(w1[i]) <= 0.25);
    assert_true(w1[i] == (double)(float)w1[i]);
    if (fabs(w1[i]) > mx) mx = fabs(w1[i]);
  }
  assert_true(mx > 0.1);
  assert_int_equal(ir_binding_random(&b2, 43, &DE), 0);
  assert_true(memcmp(b1.weights[0].data, b2.weights[0].data, 64 * sizeof(double)) != 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_elman, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unary_ops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_binary_broadcast, setup, teardown),
      cmocka_unit_test_setup_teardown(test_matmul, setup, teardown),
      cmocka_unit_test_setup_teardown(test_data_movement, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reductions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_norms, setup, teardown),
      cmocka_unit_test_setup_teardown(test_complex, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lengths, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bidirectional, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reversed_model, setup, teardown),
      cmocka_unit_test_setup_teardown(test_swap_and_results, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_and_uncalled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_causal_conv, setup, teardown),
      cmocka_unit_test_setup_teardown(test_gather, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_dims, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_defaults, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_quotient, setup, teardown),
      cmocka_unit_test_setup_teardown(test_random_weights, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
