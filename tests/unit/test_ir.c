/* test_ir.c - building IR by hand: hash-consing, type inference and its
 * error messages, the printer (golden), the verifier and flattening. */
#include "testutil.h"

#include "ir/ir.h"

#include <stdlib.h>
#include <string.h>

static Arena *A;
static char msg[256];

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
static DimExpr plus(DimExpr a, DimExpr b) {
  DimExpr r;
  assert_int_equal(dim_add(a, b, &r), 0);
  return r;
}

static IrType T1(DimExpr d0) {
  return ir_type(A, IR_REAL, 1, &d0);
}
static IrType T2(DimExpr d0, DimExpr d1) {
  DimExpr d[2] = {d0, d1};
  return ir_type(A, IR_REAL, 2, d);
}
static IrType CT(IrType t) {
  t.elem = IR_COMPLEX;
  return t;
}

static int add_dim(IrFunc *f, const char *name, int sig, int64_t deflt) {
  IrDim d = {name, {0}, sig, deflt > 0, deflt > 0 ? deflt : 0};
  assert_int_equal(vec_push(A, &f->dims, d), 0);
  return f->dims.n - 1;
}
static int add_param(IrFunc *f, const char *name, IrType t) {
  IrParam p = {name, t, {0}};
  assert_int_equal(vec_push(A, &f->params, p), 0);
  return f->params.n - 1;
}
static int add_input(IrFunc *f, const char *name, IrType t) {
  IrInput p = {name, t, {0}};
  assert_int_equal(vec_push(A, &f->inputs, p), 0);
  return f->inputs.n - 1;
}
static int add_state(IrFunc *f, const char *name, IrType t) {
  IrState s = {name, t, {0}, IR_NONE, IR_NONE, 0};
  assert_int_equal(vec_push(A, &f->states, s), 0);
  return f->states.n - 1;
}
static int add_output(IrFunc *f, const char *name, IrType t) {
  IrOutput o = {name, t, {0}, IR_NONE};
  assert_int_equal(vec_push(A, &f->outputs, o), 0);
  return f->outputs.n - 1;
}

/* Infers the type of the node and emits it; the test fails if either
 * fails. */
static IrRef node(IrFunc *f, IrNode p, int nargs, const IrRef *args) {
  IrType t;
  msg[0] = 0;
  if (ir_infer_type(f, A, &p, nargs, args, &t, msg, sizeof msg))
    fail_msg("ir_infer_type(%s): %s", ir_op_info[p.op].text, msg);
  p.type = t;
  IrRef r = ir_emit(f, A, &p, nargs, args);
  assert_true(r >= 0);
  return r;
}
/* Expects the inference to fail with exactly this message. */
static void bad(IrFunc *f, IrNode p, int nargs, const IrRef *args, const char *want) {
  IrType t;
  msg[0] = 0;
  assert_int_equal(ir_infer_type(f, A, &p, nargs, args, &t, msg, sizeof msg), -1);
  assert_string_equal(msg, want);
}

static IrNode P(IrOp op) {
  IrNode n;
  memset(&n, 0, sizeof n);
  n.op = op;
  return n;
}
static IrRef leaf(IrFunc *f, IrOp op, int index) {
  IrNode p = P(op);
  p.index = index;
  return node(f, p, 0, NULL);
}
static IrRef cnst(IrFunc *f, double v) {
  IrNode p = P(IR_CONST);
  p.cval = v;
  return node(f, p, 0, NULL);
}
static IrRef un(IrFunc *f, IrOp op, IrRef x) {
  return node(f, P(op), 1, &x);
}
static IrRef bin(IrFunc *f, IrOp op, IrRef x, IrRef y) {
  IrRef args[2] = {x, y};
  return node(f, P(op), 2, args);
}
static IrRef slice(IrFunc *f, IrRef x, int axis, DimExpr start, DimExpr stop) {
  IrNode p = P(IR_SLICE);
  p.axis = axis;
  p.start = start;
  p.stop = stop;
  return node(f, p, 1, &x);
}

/* cell LSTM(I, H): PyTorch's gate order (i, f, g, o). */
static IrFunc *build_lstm(IrModule *m, const char *name) {
  IrFunc *f = ir_func_new(m, name, IR_FN_CELL, (SrcLoc){0});
  assert_non_null(f);
  int I = add_dim(f, "I", 1, 0), H = add_dim(f, "H", 1, 0);
  DimExpr h4 = scale(4, V(H));
  add_param(f, "weight_ih", T2(h4, V(I)));
  add_param(f, "weight_hh", T2(h4, V(H)));
  add_param(f, "bias_ih", T1(h4));
  add_param(f, "bias_hh", T1(h4));
  add_input(f, "x", T1(V(I)));
  int sh = add_state(f, "h", T1(V(H)));
  int sc = add_state(f, "c", T1(V(H)));
  int y = add_output(f, "y", T1(V(H)));

  IrRef zero = cnst(f, 0.0);
  IrNode bp = P(IR_BROADCAST);
  bp.type = T1(V(H));
  IrRef init = node(f, bp, 1, &zero);
  f->states.v[sh].init = init;
  f->states.v[sc].init = init;

  IrRef wih = leaf(f, IR_PARAM, 0), whh = leaf(f, IR_PARAM, 1);
  IrRef bih = leaf(f, IR_PARAM, 2), bhh = leaf(f, IR_PARAM, 3);
  IrRef x = leaf(f, IR_INPUT, 0), h = leaf(f, IR_STATE, sh), c = leaf(f, IR_STATE, sc);
  IrRef gates = bin(f, IR_ADD, bin(f, IR_ADD, bin(f, IR_MATMUL, wih, x), bih),
                    bin(f, IR_ADD, bin(f, IR_MATMUL, whh, h), bhh));
  IrRef g[4];
  for (int k = 0; k < 4; k++) g[k] = slice(f, gates, 0, scale(k, V(H)), scale(k + 1, V(H)));
  IrRef c2 = bin(f, IR_ADD, bin(f, IR_MUL, un(f, IR_SIGMOID, g[1]), c),
                 bin(f, IR_MUL, un(f, IR_SIGMOID, g[0]), un(f, IR_TANH, g[2])));
  IrRef h2 = bin(f, IR_MUL, un(f, IR_SIGMOID, g[3]), un(f, IR_TANH, c2));
  f->states.v[sh].next = h2;
  f->states.v[sc].next = c2;
  f->outputs.v[y].value = h2;
  return f;
}

static void test_op_table(void **state) {
  (void)state;
  assert_string_equal(ir_op_info[IR_CONST].text, "const");
  assert_string_equal(ir_op_info[IR_CPLX].text, "complex");
  assert_string_equal(ir_op_info[IR_CAUSAL_CONV].text, "causal_conv");
  assert_int_equal(ir_op_info[IR_CONCAT].arity, -1);
  assert_int_equal(ir_op_info[IR_LAYERNORM].arity, 3);
  assert_true(ir_op_info[IR_ADD].flags & IRF_COMMUT);
  assert_true(ir_op_info[IR_PARAM].flags & IRF_LEAF);
  for (int op = 0; op < IR_NUM_OPS; op++) assert_non_null(ir_op_info[op].text);
}

static void test_module(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  assert_non_null(m);
  IrFunc *f = ir_func_new(m, "A", IR_FN_CELL, (SrcLoc){0});
  IrFunc *g = ir_func_new(m, "B", IR_FN_MODEL, (SrcLoc){0});
  assert_non_null(f);
  assert_non_null(g);
  assert_int_equal(m->funcs.n, 2);
  assert_ptr_equal(m->funcs.v[1], g);
  assert_int_equal(ir_func_index(m, "A"), 0);
  assert_int_equal(ir_func_index(m, "B"), 1);
  assert_int_equal(ir_func_index(m, "C"), -1);
}

static void test_types(void **state) {
  (void)state;
  DimExpr d[2] = {V(0), C(3)};
  IrType t = ir_type(A, IR_REAL, 2, d);
  d[0] = V(1); /* the type keeps its own copy */
  assert_true(dim_eq(t.dims[0], V(0)));
  assert_true(ir_type_eq(t, T2(V(0), C(3))));
  assert_false(ir_type_eq(t, T2(V(1), C(3))));
  assert_false(ir_type_eq(t, CT(T2(V(0), C(3)))));
  assert_false(ir_type_eq(t, T1(V(0))));
  assert_true(ir_type_eq(ir_scalar(IR_INT), ir_scalar(IR_INT)));
  assert_false(ir_type_eq(ir_scalar(IR_INT), ir_scalar(IR_REAL)));
  assert_int_equal(ir_type(A, IR_REAL, SEQ_MAX_RANK + 1, d).rank, -1);
}

static void test_dedup(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = build_lstm(m, "LSTM");
  int n = f->nodes.n;
  /* Rebuilding the same expressions finds the existing nodes. */
  IrRef wih = leaf(f, IR_PARAM, 0), x = leaf(f, IR_INPUT, 0);
  IrRef mm = bin(f, IR_MATMUL, wih, x);
  assert_int_equal(f->nodes.n, n);
  assert_int_equal(f->nodes.v[mm].op, IR_MATMUL);
  /* The location does not take part: the first node's is kept. */
  SrcFile file = {"t.seq", "t.seq", "", 0};
  IrNode p = P(IR_CONST);
  p.cval = 0.0;
  p.loc = (SrcLoc){&file, 3, 4};
  p.type = ir_scalar(IR_REAL);
  IrRef z = ir_emit(f, A, &p, 0, NULL);
  assert_int_equal(f->nodes.n, n);
  assert_null(f->nodes.v[z].loc.file);
  /* Constants are compared bitwise: -0.0 is a new node, as is 0.5. */
  IrRef nz = cnst(f, -0.0);
  assert_int_not_equal(nz, z);
  assert_int_equal(cnst(f, -0.0), nz);
  assert_int_not_equal(cnst(f, 0.5), z);
  /* Attributes matter: two slices of different bounds differ. */
  IrRef s1 = slice(f, mm, 0, C(0), V(1));
  IrRef s2 = slice(f, mm, 0, C(0), scale(2, V(1)));
  assert_int_not_equal(s1, s2);
  assert_int_equal(slice(f, mm, 0, C(0), V(1)), s1);
  /* Argument order matters (no canonicalization of commutative ops). */
  IrRef xa = bin(f, IR_ADD, s1, s1);
  assert_int_equal(bin(f, IR_ADD, s1, s1), xa);
  /* Many nodes: the table grows and still finds them all. */
  IrRef first[300];
  for (int i = 0; i < 300; i++) first[i] = cnst(f, 1000.0 + i);
  for (int i = 0; i < 300; i++) assert_int_equal(cnst(f, 1000.0 + i), first[i]);
}

static void test_call_not_deduped(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  build_lstm(m, "LSTM");
  IrFunc *g = ir_func_new(m, "Net", IR_FN_MODEL, (SrcLoc){0});
  int I = add_dim(g, "I", 1, 0), H = add_dim(g, "H", 1, 0);
  add_input(g, "x", T1(V(I)));
  DimExpr *dargs = arena_calloc(A, 2, sizeof *dargs);
  dargs[0] = V(I);
  dargs[1] = V(H);
  IrLayer l = {"l0", {0}, 0, dargs, "", "_l0", 0};
  assert_int_equal(vec_push(A, &g->layers, l), 0);
  IrRef x = leaf(g, IR_INPUT, 0);
  IrNode p = P(IR_CALL);
  p.index = 0;
  p.type = T1(V(H));
  IrRef c1 = node(g, p, 1, &x), c2 = node(g, p, 1, &x);
  assert_int_not_equal(c1, c2);
  /* RESULT of the same call is an ordinary value and is shared. */
  IrNode r = P(IR_RESULT);
  r.type = T1(V(H));
  assert_int_equal(node(g, r, 1, &c1), node(g, r, 1, &c1));
  /* Calls of layers that do not exist, results of non-calls. */
  p.index = 1;
  bad(g, p, 1, &x, "call of layer 1, which does not exist");
  bad(g, r, 1, &x, "result of a node that is not a call");
}

static void test_infer_lstm(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = build_lstm(m, "LSTM");
  IrRef y = f->outputs.v[0].value;
  assert_true(ir_type_eq(f->nodes.v[y].type, T1(V(1))));
  assert_true(ir_type_eq(f->nodes.v[f->states.v[1].next].type, T1(V(1))));
}

static void test_infer_errors(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = build_lstm(m, "LSTM");
  int I = 0, H = 1;
  IrRef wih = leaf(f, IR_PARAM, 0), whh = leaf(f, IR_PARAM, 1), bih = leaf(f, IR_PARAM, 2);
  IrRef x = leaf(f, IR_INPUT, 0), h = leaf(f, IR_STATE, 0);
  IrRef a2[2];

  a2[0] = h, a2[1] = bih;
  bad(f, P(IR_ADD), 2, a2, "cannot broadcast [H] with [4*H]");
  a2[0] = wih, a2[1] = h;
  bad(f, P(IR_MATMUL), 2, a2,
      "matrix product of [4*H, I] and [H]: inner dimensions I and H differ");
  a2[0] = wih, a2[1] = whh;
  bad(f, P(IR_MATMUL), 2, a2,
      "matrix product of [4*H, I] and [4*H, H]: inner dimensions I and 4*H differ");
  bad(f, P(IR_ADD), 1, a2, "add takes 2 operands, not 1");
  IrRef nowhere = 9999;
  bad(f, P(IR_NEG), 1, &nowhere, "neg: operand 0 refers to node 9999, which does not exist");

  /* Broadcasting: [4*H, I] + [I] is fine, + [1] too, + [4*H] not. */
  a2[0] = wih, a2[1] = x;
  assert_true(ir_type_eq(f->nodes.v[node(f, P(IR_ADD), 2, a2)].type, T2(scale(4, V(H)), V(I))));
  a2[1] = bih;
  bad(f, P(IR_MUL), 2, a2, "cannot broadcast [4*H, I] with [4*H]");

  /* Matmul shapes. */
  IrRef hx = bin(f, IR_MATMUL, h, un(f, IR_TRANSPOSE, whh)); /* [H] @ [H, 4*H] */
  assert_true(ir_type_eq(f->nodes.v[hx].type, T1(scale(4, V(H)))));
  IrRef dot = bin(f, IR_MATMUL, h, h);
  assert_int_equal(f->nodes.v[dot].type.rank, 0);
  IrRef mm = bin(f, IR_MATMUL, un(f, IR_TRANSPOSE, wih), wih); /* [I,4H]@[4H,I] */
  assert_true(ir_type_eq(f->nodes.v[mm].type, T2(V(I), V(I))));
  assert_true(ir_type_eq(f->nodes.v[bin(f, IR_OUTER, h, x)].type, T2(V(H), V(I))));
  bad(f, P(IR_TRANSPOSE), 1, &h, "transpose needs an operand of rank at least 2, not [H]");

  /* Slices and indices. */
  IrNode sp = P(IR_SLICE);
  sp.axis = 0;
  sp.start = V(H);
  sp.stop = scale(2, V(H));
  assert_true(ir_type_eq(f->nodes.v[node(f, sp, 1, &bih)].type, T1(V(H))));
  sp.axis = 1;
  bad(f, sp, 1, &bih, "slice: axis 1 out of range for [4*H]");
  sp.axis = 0;
  sp.start = C(3);
  sp.stop = C(2);
  bad(f, sp, 1, &bih, "slice [3, 2) out of range for axis 0 of [4*H]");
  sp.start = C(0);
  sp.stop = plus(scale(4, V(H)), C(1));
  bad(f, sp, 1, &bih, "slice [0, 4*H + 1) out of range for axis 0 of [4*H]");
  IrNode ip = P(IR_INDEX);
  ip.axis = 1;
  ip.start = C(2);
  assert_true(ir_type_eq(f->nodes.v[node(f, ip, 1, &wih)].type, T1(scale(4, V(H)))));
  ip.axis = 0;
  ip.start = scale(4, V(H));
  bad(f, ip, 1, &bih, "index 4*H out of range for axis 0 of [4*H]");

  /* Concat along an axis sums it. */
  IrNode cp = P(IR_CONCAT);
  cp.axis = 0;
  IrRef a3[3] = {h, x, h};
  IrRef cc = node(f, cp, 3, a3);
  assert_true(ir_type_eq(f->nodes.v[cc].type, T1(plus(V(I), scale(2, V(H))))));
  a3[1] = wih;
  bad(f, cp, 3, a3, "cannot concatenate [H] and [4*H, I] along axis 0");

  /* Reductions. */
  IrNode rp = P(IR_SUM);
  rp.axis = -1;
  assert_int_equal(f->nodes.v[node(f, rp, 1, &wih)].type.rank, 0);
  rp.axis = 0;
  assert_true(ir_type_eq(f->nodes.v[node(f, rp, 1, &wih)].type, T1(V(I))));
  rp.axis = 2;
  bad(f, rp, 1, &wih, "sum: axis 2 out of range for [4*H, I]");

  /* Reshape keeps the element count, symbolically. */
  IrNode shp = P(IR_RESHAPE);
  shp.type = T2(V(H), scale(4, V(I)));
  assert_true(ir_type_eq(f->nodes.v[node(f, shp, 1, &wih)].type, shp.type));
  shp.type = T1(scale(4, V(H)));
  bad(f, shp, 1, &wih, "cannot reshape [4*H, I] to [4*H]: element counts 4*I*H and 4*H differ");
  IrNode bp = P(IR_BROADCAST);
  bp.type = T2(V(I), V(H));
  assert_true(ir_type_eq(f->nodes.v[node(f, bp, 1, &h)].type, bp.type));
  bp.type = T2(V(H), V(I));
  bad(f, bp, 1, &h, "cannot broadcast [H] to [H, I]");

  /* Norms: the weight must broadcast to x. */
  IrRef a3n[3] = {h, h, h};
  IrNode np = P(IR_LAYERNORM);
  np.cval = 1e-5;
  assert_true(ir_type_eq(f->nodes.v[node(f, np, 3, a3n)].type, T1(V(H))));
  a3n[2] = bih;
  bad(f, np, 3, a3n, "cannot broadcast [H] with [4*H]");
  IrRef sc = cnst(f, 2.0);
  bad(f, P(IR_SOFTMAX), 1, &sc, "softmax needs an operand of rank at least 1, not []");
}

static void test_infer_complex_and_int(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = ir_func_new(m, "S4D", IR_FN_CELL, (SrcLoc){0});
  int H = add_dim(f, "H", 1, 0), N = add_dim(f, "N", 1, 64), V_ = add_dim(f, "V", 1, 0);
  add_param(f, "A_re", T2(V(H), V(N)));
  add_param(f, "A_im", T2(V(H), V(N)));
  add_param(f, "emb", T2(V(V_), V(H)));
  add_input(f, "tok", ir_scalar(IR_INT));
  add_state(f, "s", CT(T2(V(H), V(N))));
  IrRef re = leaf(f, IR_PARAM, 0), im = leaf(f, IR_PARAM, 1), emb = leaf(f, IR_PARAM, 2);
  IrRef tok = leaf(f, IR_INPUT, 0), s = leaf(f, IR_STATE, 0);
  IrRef z = bin(f, IR_CPLX, re, im);
  assert_true(ir_type_eq(f->nodes.v[z].type, CT(T2(V(H), V(N)))));
  IrRef e = un(f, IR_EXP, z);
  IrRef zs = bin(f, IR_MUL, e, s);
  IrRef half = cnst(f, 0.5);
  /* Real operands promote to complex. */
  assert_int_equal(f->nodes.v[bin(f, IR_MUL, half, zs)].type.elem, IR_COMPLEX);
  assert_int_equal(f->nodes.v[un(f, IR_RE, zs)].type.elem, IR_REAL);
  assert_int_equal(f->nodes.v[un(f, IR_ABS, zs)].type.elem, IR_REAL);
  assert_int_equal(f->nodes.v[un(f, IR_CONJ, zs)].type.elem, IR_COMPLEX);
  bad(f, P(IR_TANH), 1, &zs, "tanh needs a real operand, not complex[H, N]");
  bad(f, P(IR_RE), 1, &re, "real needs a complex operand, not [H, N]");
  IrRef a2[2] = {zs, re};
  bad(f, P(IR_CPLX), 2, a2, "complex needs a real operand, not complex[H, N]");
  bad(f, P(IR_MAX), 2, a2, "max needs a real operand, not complex[H, N]");
  /* Ints: only as gather's index. */
  a2[0] = emb, a2[1] = tok;
  assert_true(ir_type_eq(f->nodes.v[node(f, P(IR_GATHER), 2, a2)].type, T1(V(H))));
  a2[0] = tok, a2[1] = half;
  bad(f, P(IR_ADD), 2, a2, "add cannot take an int operand (ints are only token indices)");
  a2[0] = emb, a2[1] = half;
  bad(f, P(IR_GATHER), 2, a2, "gather needs an int index, not []");
  /* Causal convolution. */
  IrFunc *g = ir_func_new(m, "Conv", IR_FN_CELL, (SrcLoc){0});
  int D = add_dim(g, "D", 1, 0), K = add_dim(g, "K", 1, 4);
  add_param(g, "w", T2(V(D), V(K)));
  add_param(g, "b", T1(V(D)));
  add_input(g, "u", T1(V(D)));
  IrRef a3[3] = {leaf(g, IR_INPUT, 0), leaf(g, IR_PARAM, 0), leaf(g, IR_PARAM, 1)};
  assert_true(ir_type_eq(g->nodes.v[node(g, P(IR_CAUSAL_CONV), 3, a3)].type, T1(V(D))));
  a3[1] = a3[0];
  bad(g, P(IR_CAUSAL_CONV), 3, a3,
      "causal_conv needs u: [D], w: [D, K] or [D, 1, K], b: [D]; got [D], [D], [D]");
}

static int setup(void **state) {
  (void)state;
  A = arena_create();
  return A ? 0 : -1;
}
static int teardown(void **state) {
  (void)state;
  arena_destroy(A);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_op_table, setup, teardown),
      cmocka_unit_test_setup_teardown(test_module, setup, teardown),
      cmocka_unit_test_setup_teardown(test_types, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_call_not_deduped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_lstm, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_infer_complex_and_int, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
