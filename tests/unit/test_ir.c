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
  int I = tu_ir_dim(A, f, "I", 1, 0), H = tu_ir_dim(A, f, "H", 1, 0);
  DimExpr h4 = scale(4, V(H));
  tu_ir_param(A, f, "weight_ih", T2(h4, V(I)));
  tu_ir_param(A, f, "weight_hh", T2(h4, V(H)));
  tu_ir_param(A, f, "bias_ih", T1(h4));
  tu_ir_param(A, f, "bias_hh", T1(h4));
  tu_ir_input(A, f, "x", T1(V(I)));
  int sh = tu_ir_state(A, f, "h", T1(V(H)));
  int sc = tu_ir_state(A, f, "c", T1(V(H)));
  int y = tu_ir_output(A, f, "y", T1(V(H)));

  IrRef zero = cnst(f, 0.0);
  IrNode bp = P(IR_BROADCAST);
  bp.type = T1(V(H));
  IrRef init = node(f, bp, 1, &zero);
  f->states.v[sh].init = init;
  f->states.v[sc].init = init;

  IrRef wih = leaf(f, IR_PARAM, 0), whh = leaf(f, IR_PARAM, 1);
  IrRef bih = leaf(f, IR_PARAM, 2), bhh = leaf(f, IR_PARAM, 3);
  IrRef x = leaf(f, IR_INPUT, 0), h = leaf(f, IR_STATE, sh), c = leaf(f, IR_STATE, sc);
  /* One node per statement: C leaves the order of argument evaluation
   * open, and node numbering (so the golden text) depends on it. */
  IrRef mx = bin(f, IR_MATMUL, wih, x);
  IrRef gx = bin(f, IR_ADD, mx, bih);
  IrRef mh = bin(f, IR_MATMUL, whh, h);
  IrRef gh = bin(f, IR_ADD, mh, bhh);
  IrRef gates = bin(f, IR_ADD, gx, gh);
  IrRef g[4];
  for (int k = 0; k < 4; k++) g[k] = slice(f, gates, 0, scale(k, V(H)), scale(k + 1, V(H)));
  IrRef si = un(f, IR_SIGMOID, g[0]);
  IrRef sf = un(f, IR_SIGMOID, g[1]);
  IrRef tg = un(f, IR_TANH, g[2]);
  IrRef so = un(f, IR_SIGMOID, g[3]);
  IrRef fc = bin(f, IR_MUL, sf, c);
  IrRef ig = bin(f, IR_MUL, si, tg);
  IrRef c2 = bin(f, IR_ADD, fc, ig);
  IrRef tc = un(f, IR_TANH, c2);
  IrRef h2 = bin(f, IR_MUL, so, tc);
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
  int I = tu_ir_dim(A, g, "I", 1, 0), H = tu_ir_dim(A, g, "H", 1, 0);
  tu_ir_input(A, g, "x", T1(V(I)));
  DimExpr *dargs = arena_calloc(A, 2, sizeof *dargs);
  dargs[0] = V(I);
  dargs[1] = V(H);
  IrLayer l = {"l0", {0}, 0, dargs, "", "_l0", 0, 0, 0, {0}};
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
  int H = tu_ir_dim(A, f, "H", 1, 0), N = tu_ir_dim(A, f, "N", 1, 64),
      V_ = tu_ir_dim(A, f, "V", 1, 0);
  tu_ir_param(A, f, "A_re", T2(V(H), V(N)));
  tu_ir_param(A, f, "A_im", T2(V(H), V(N)));
  tu_ir_param(A, f, "emb", T2(V(V_), V(H)));
  tu_ir_input(A, f, "tok", ir_scalar(IR_INT));
  tu_ir_state(A, f, "s", CT(T2(V(H), V(N))));
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
  int D = tu_ir_dim(A, g, "D", 1, 0), K = tu_ir_dim(A, g, "K", 1, 4);
  tu_ir_param(A, g, "w", T2(V(D), V(K)));
  tu_ir_param(A, g, "b", T1(V(D)));
  tu_ir_input(A, g, "u", T1(V(D)));
  IrRef a3[3] = {leaf(g, IR_INPUT, 0), leaf(g, IR_PARAM, 0), leaf(g, IR_PARAM, 1)};
  assert_true(ir_type_eq(g->nodes.v[node(g, P(IR_CAUSAL_CONV), 3, a3)].type, T1(V(D))));
  a3[1] = a3[0];
  bad(g, P(IR_CAUSAL_CONV), 3, a3,
      "causal_conv needs u: [D], w: [D, K] or [D, 1, K], b: [D]; got [D], [D], [D]");
}

/* ---- Models: printing, verifying, flattening ------------------------------ */

static IrLayer layer(const char *name, int callee, int ndims, const DimExpr *args,
                     const char *prefix, const char *suffix, int reverse) {
  DimExpr *d = arena_calloc(A, (size_t)ndims, sizeof *d);
  assert_non_null(d);
  memcpy(d, args, (size_t)ndims * sizeof *d);
  IrLayer l = {name, {0}, callee, d, prefix, suffix, reverse, 0, 0, {0}};
  return l;
}

static IrRef call(IrFunc *f, int li, IrType t, int nargs, const IrRef *args) {
  IrNode p = P(IR_CALL);
  p.index = li;
  p.type = t;
  return node(f, p, nargs, args);
}

/* model BiLSTM(I, H) { layer fwd = LSTM(I, H) suffix "_l0"; layer bwd =
 * reverse LSTM(I, H) suffix "_l0_reverse"; y = concat(fwd(x), bwd(x)) } */
static IrFunc *build_bilstm(IrModule *m, int lstm) {
  IrFunc *f = ir_func_new(m, "BiLSTM", IR_FN_MODEL, (SrcLoc){0});
  int I = tu_ir_dim(A, f, "I", 1, 0), H = tu_ir_dim(A, f, "H", 1, 0);
  tu_ir_input(A, f, "x", T1(V(I)));
  int y = tu_ir_output(A, f, "y", T1(scale(2, V(H))));
  DimExpr args[2] = {V(I), V(H)};
  assert_int_equal(vec_push(A, &f->layers, layer("fwd", lstm, 2, args, "", "_l0", 0)), 0);
  assert_int_equal(vec_push(A, &f->layers, layer("bwd", lstm, 2, args, "", "_l0_reverse", 1)), 0);
  IrRef x = leaf(f, IR_INPUT, 0);
  IrRef cc[2];
  cc[0] = call(f, 0, T1(V(H)), 1, &x);
  cc[1] = call(f, 1, T1(V(H)), 1, &x);
  IrNode cp = P(IR_CONCAT);
  cp.axis = 0;
  f->outputs.v[y].value = node(f, cp, 2, cc);
  return f;
}

/* model Net(D, V=100, fresh enc.K): an embedding, then BiLSTM(I=D, H=2*D)
 * loaded under "enc.", then a second BiLSTM whose H is a fresh dim. */
static IrModule *build_net(void) {
  IrModule *m = ir_module_new(A);
  build_lstm(m, "LSTM");
  build_bilstm(m, 0);
  IrFunc *f = ir_func_new(m, "Net", IR_FN_MODEL, (SrcLoc){0});
  f->doc = "A tiny two-layer network.\nUsed by test_ir.";
  int D = tu_ir_dim(A, f, "D", 1, 0), Vd = tu_ir_dim(A, f, "V", 1, 100),
      K = tu_ir_dim(A, f, "dec.H", 0, 0);
  tu_ir_param(A, f, "emb", T2(V(Vd), V(D)));
  tu_ir_input(A, f, "tok", ir_scalar(IR_INT));
  int y = tu_ir_output(A, f, "y", T1(scale(2, V(K))));
  DimExpr enc_args[2] = {V(D), scale(2, V(D))};
  DimExpr dec_args[2] = {scale(4, V(D)), V(K)};
  assert_int_equal(vec_push(A, &f->layers, layer("enc", 1, 2, enc_args, "enc.", "", 0)), 0);
  assert_int_equal(vec_push(A, &f->layers, layer("dec", 1, 2, dec_args, "dec.", "", 0)), 0);
  IrRef a2[2];
  a2[0] = leaf(f, IR_PARAM, 0);
  a2[1] = leaf(f, IR_INPUT, 0);
  IrRef e = node(f, P(IR_GATHER), 2, a2);
  IrRef h = call(f, 0, T1(scale(4, V(D))), 1, &e);
  IrNode sc = P(IR_CONST);
  sc.cval = 0.1;
  IrRef tenth = node(f, sc, 0, NULL);
  IrNode dv = P(IR_DIMVAL);
  dv.dval = V(D);
  IrRef dval = node(f, dv, 0, NULL);
  IrRef scaled = bin(f, IR_MUL, h, bin(f, IR_DIV, tenth, dval));
  IrNode np = P(IR_RMSNORM);
  np.cval = 1e-5;
  IrRef an[2] = {scaled, scaled};
  IrRef normed = node(f, np, 2, an);
  IrNode mp = P(IR_MEAN);
  mp.axis = -1;
  IrRef mean = node(f, mp, 1, &normed);
  IrRef out = call(f, 1, T1(scale(2, V(K))), 1, &normed);
  f->outputs.v[y].value = bin(f, IR_ADD, out, mean);
  m->entry = 2;
  return m;
}

static char *print_to_string(const IrModule *m) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  ir_print_module(f, m);
  fclose(f);
  return buf;
}

static void test_print_golden(void **state) {
  (void)state;
  IrModule *m = build_net();
  char *text = print_to_string(m);
  tu_check_golden(text, "tests/golden/ir/net.ir");
  /* Printing is deterministic. */
  char *again = print_to_string(m);
  assert_string_equal(text, again);
  free(text);
  free(again);
}

static void test_print_type(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = build_lstm(m, "LSTM");
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  ir_print_type(out, f, T2(scale(4, V(1)), V(0)));
  fputc(' ', out);
  ir_print_type(out, f, CT(T1(V(1))));
  fputc(' ', out);
  ir_print_type(out, f, ir_scalar(IR_INT));
  fputc(' ', out);
  ir_print_type(out, f, ir_scalar(IR_REAL));
  fputc(' ', out);
  ir_print_type(out, f, T1(V(7))); /* a dim the function does not have */
  fclose(out);
  assert_string_equal(buf, "[4*H, I] complex[H] int [] [$7]");
  free(buf);
}

static int verify(const IrModule *m, const char *want) {
  DiagEngine de;
  diag_init(&de, A, NULL);
  int rc = ir_verify(m, &de, "testpass");
  if (want) {
    int found = 0;
    for (int i = 0; i < de.diags.n; i++)
      if (strstr(de.diags.v[i].message, want)) found = 1;
    if (!found) {
      for (int i = 0; i < de.diags.n; i++) print_error("%s\n", de.diags.v[i].message);
      fail_msg("no diagnostic containing \"%s\"", want);
    }
    assert_true(strncmp(de.diags.v[0].message, "internal error in testpass: ", 28) == 0);
  } else {
    for (int i = 0; i < de.diags.n; i++) print_error("%s\n", de.diags.v[i].message);
    assert_int_equal(de.diags.n, 0);
  }
  return rc;
}

static void test_verify_ok(void **state) {
  (void)state;
  assert_int_equal(verify(build_net(), NULL), 0);
}

static void test_verify_broken(void **state) {
  (void)state;
  IrModule *m = build_net();
  IrFunc *lstm = m->funcs.v[0];
  /* An operand that refers forward. */
  IrNode *n = &lstm->nodes.v[lstm->nodes.n - 1];
  IrRef saved = n->args[0];
  n->args[0] = lstm->nodes.n - 1;
  assert_int_not_equal(verify(m, "LSTM, v26: operand 0 (v26) of mul does not precede its user"), 0);
  n->args[0] = saved;
  assert_int_equal(verify(m, NULL), 0);
  /* A stored type that is not the inferred one. */
  IrType t = n->type;
  n->type = T1(scale(4, V(1)));
  assert_int_not_equal(verify(m, "stored type of mul differs from the inferred one"), 0);
  n->type = t;
  /* A state whose initial value reads an input. */
  IrRef init = lstm->states.v[0].init;
  lstm->states.v[0].init = lstm->states.v[1].next;
  assert_int_not_equal(verify(m, "initial value of state h depends on"), 0);
  lstm->states.v[0].init = init;
  /* An output of the wrong type. */
  IrFunc *net = m->funcs.v[2];
  IrRef yv = net->outputs.v[0].value;
  net->outputs.v[0].value = 0;
  assert_int_not_equal(verify(m, "value of output y is missing or not of its type"), 0);
  net->outputs.v[0].value = yv;
  /* A call whose result type is not the callee's output type. */
  IrFunc *bi = m->funcs.v[1];
  IrNode *c = &bi->nodes.v[1];
  assert_int_equal(c->op, IR_CALL);
  c->type = T1(V(0));
  assert_int_not_equal(verify(m, "type differs from that of output y of fwd"), 0);
  c->type = T1(V(1));
  /* A layer that leaves out the callee's dims, and self-instantiation. */
  DimExpr *da = bi->layers.v[0].dim_args;
  bi->layers.v[0].dim_args = NULL;
  assert_int_not_equal(verify(m, "layer fwd binds none of the dims of LSTM"), 0);
  bi->layers.v[0].dim_args = da;
  bi->layers.v[0].callee = 2;
  assert_int_not_equal(verify(m, "instantiates itself through its layers"), 0);
  bi->layers.v[0].callee = 0;
  /* STATE in a model. */
  IrState st = {"s", T1(V(0)), {0}, 0, 0, 0};
  assert_int_equal(vec_push(A, &net->states, st), 0);
  assert_int_not_equal(verify(m, "a model has states of its own"), 0);
  net->states.n = 0;
  assert_int_equal(verify(m, NULL), 0);
  m->entry = 7;
  assert_int_not_equal(verify(m, "entry 7 is not a function of the module"), 0);
}

static void test_flatten(void **state) {
  (void)state;
  IrModule *m = build_net();
  DiagEngine de;
  diag_init(&de, A, NULL);
  IrFlat flat;
  const IrFunc *net = m->funcs.v[2];
  assert_int_equal(ir_flatten(A, m, net, &flat, &de), 0);
  assert_int_equal(de.diags.n, 0);
  /* Names and types over the root's dims (D = 0, V = 1, dec.H = 2). */
  static const char *const want_params[] = {
      "emb",
      "enc.weight_ih_l0",
      "enc.weight_hh_l0",
      "enc.bias_ih_l0",
      "enc.bias_hh_l0",
      "enc.weight_ih_l0_reverse",
      "enc.weight_hh_l0_reverse",
      "enc.bias_ih_l0_reverse",
      "enc.bias_hh_l0_reverse",
      "dec.weight_ih_l0",
      "dec.weight_hh_l0",
      "dec.bias_ih_l0",
      "dec.bias_hh_l0",
      "dec.weight_ih_l0_reverse",
      "dec.weight_hh_l0_reverse",
      "dec.bias_ih_l0_reverse",
      "dec.bias_hh_l0_reverse",
  };
  assert_int_equal(flat.params.n, 17);
  for (int i = 0; i < 17; i++) assert_string_equal(flat.params.v[i].name, want_params[i]);
  assert_true(ir_type_eq(flat.params.v[0].type, T2(V(1), V(0))));
  /* enc: LSTM(I = D, H = 2*D): weight_ih is [8*D, D]. */
  assert_true(ir_type_eq(flat.params.v[1].type, T2(scale(8, V(0)), V(0))));
  /* dec: LSTM(I = 4*D, H = dec.H): weight_hh is [4*dec.H, dec.H]. */
  assert_true(ir_type_eq(flat.params.v[10].type, T2(scale(4, V(2)), V(2))));
  assert_true(ir_type_eq(flat.params.v[9].type, T2(scale(4, V(2)), scale(4, V(0)))));
  static const char *const want_states[] = {"enc.fwd.h", "enc.fwd.c", "enc.bwd.h", "enc.bwd.c",
                                            "dec.fwd.h", "dec.fwd.c", "dec.bwd.h", "dec.bwd.c"};
  assert_int_equal(flat.states.n, 8);
  for (int i = 0; i < 8; i++) assert_string_equal(flat.states.v[i].name, want_states[i]);
  assert_true(ir_type_eq(flat.states.v[0].type, T1(scale(2, V(0)))));
  assert_true(ir_type_eq(flat.states.v[7].type, T1(V(2))));

  /* Flattening a cell is the identity. */
  assert_int_equal(ir_flatten(A, m, m->funcs.v[0], &flat, &de), 0);
  assert_int_equal(flat.params.n, 4);
  assert_string_equal(flat.states.v[1].name, "c");
  assert_true(ir_type_eq(flat.params.v[0].type, T2(scale(4, V(1)), V(0))));
}

static void test_flatten_shared_and_conflicting(void **state) {
  (void)state;
  IrModule *m = build_net();
  IrFunc *net = m->funcs.v[2];
  DiagEngine de;
  diag_init(&de, A, NULL);
  IrFlat flat;
  /* Same prefix, same dims: the two instances share their weights. */
  net->layers.v[1].prefix = "enc.";
  DimExpr enc_args[2] = {V(0), scale(2, V(0))};
  memcpy(net->layers.v[1].dim_args, enc_args, sizeof enc_args);
  assert_int_equal(ir_flatten(A, m, net, &flat, &de), 0);
  assert_int_equal(flat.params.n, 9);
  assert_int_equal(flat.states.n, 8); /* states stay per instance */
  /* Same names, different shapes: an error naming both. */
  net->layers.v[1].dim_args[1] = V(2);
  assert_int_equal(ir_flatten(A, m, net, &flat, &de), -1);
  assert_true(de.diags.n > 0);
  assert_string_equal(de.diags.v[0].message,
                      "parameter enc.weight_ih_l0 declared with two shapes, [8*D, D] and "
                      "[4*dec.H, D]");
}

static void test_scalar_elementwise(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = ir_func_new(m, "S", IR_FN_CELL, (SrcLoc){0});
  IrRef c = cnst(f, 2.0);
  IrRef t = un(f, IR_TANH, c);
  assert_int_equal(f->nodes.v[t].type.rank, 0);
  assert_int_equal(f->nodes.v[bin(f, IR_POW, t, c)].type.rank, 0);
}

/* Allocation failure makes ir_emit return IR_NONE, never crash. */
static void test_emit_out_of_memory(void **state) {
  (void)state;
  IrModule *m = ir_module_new(A);
  IrFunc *f = ir_func_new(m, "Oom", IR_FN_CELL, (SrcLoc){0});
  assert_non_null(f);
  seq_alloc_fail_after(0);
  IrRef r = 0;
  for (int i = 0; i < 1000000 && r != IR_NONE; i++) {
    IrNode p = P(IR_CONST);
    p.cval = i;
    r = ir_emit(f, A, &p, 0, NULL);
  }
  seq_alloc_fail_after(-1);
  assert_int_equal(r, IR_NONE);
  /* The function is still usable afterwards. */
  IrRef c = cnst(f, -1.0);
  assert_int_equal(cnst(f, -1.0), c);
  assert_int_equal(cnst(f, 3.0), 3);
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
      cmocka_unit_test_setup_teardown(test_scalar_elementwise, setup, teardown),
      cmocka_unit_test_setup_teardown(test_emit_out_of_memory, setup, teardown),
      cmocka_unit_test_setup_teardown(test_print_golden, setup, teardown),
      cmocka_unit_test_setup_teardown(test_print_type, setup, teardown),
      cmocka_unit_test_setup_teardown(test_verify_ok, setup, teardown),
      cmocka_unit_test_setup_teardown(test_verify_broken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_flatten, setup, teardown),
      cmocka_unit_test_setup_teardown(test_flatten_shared_and_conflicting, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
