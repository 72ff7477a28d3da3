/* rows.c - one node on the current row: elementwise ops with numpy
 * broadcasting, data movement (transpose, slice, concat, gather), reductions,
 * norms and softmax, and per-row matrix and outer products. */
#include "codegen/llvm.h"

#include <math.h>
#include <string.h>

/* Rows of SCHED_OP_ACROSS that share each vector of its matrix (emit_across):
 * at most this many, and as many as the target's registers hold. */
enum { ACROSS_ROWS_MAX = 8 };

/* Pointer to the current row of node r (see the class comment at the top). */
LLVMValueRef rowptr(Lower *L, IrRef r) {
  const SchedValue *n = &L->v[r];
  LLVMValueRef base = L->ll[r].base;
  if (n->cls == SCHED_CONST) return base;
  LLVMValueRef row = n->cls == SCHED_TOKEN ? (n->chunked ? L->r_tokc : L->r_tok) : L->r_b;
  LLVMValueRef off = mul(L, row, ci64(L, sched_row_floats(n)));
  if (n->is_int) return LLVMBuildGEP2(L->bld, L->i32, base, &off, 1, "");
  return gepf(L, base, off);
}

/* Strides of an operand of shape `s` (rank r) broadcast to the nest's shape. */
void nest_operand(Nest *ns, int j, int r, const int64_t *s) {
  int64_t st = 1;
  for (int d = ns->rank - 1; d >= 0; d--) {
    int k = d - (ns->rank - r);
    if (k < 0 || s[k] == 1) {
      ns->stride[j][d] = 0;
    } else {
      ns->stride[j][d] = st;
      st *= s[k];
    }
  }
}

void emit_ew_nest(Lower *L, IrOp op, Nest *ns, LLVMValueRef out, int d, LLVMValueRef *offs,
                  LLVMValueRef oofs) {
  if (d == ns->rank && ns->cplx) {
    Cx v[2] = {{NULL, NULL}, {NULL, NULL}};
    for (int j = 0; j < ns->nops && j < 2; j++) v[j] = ldc(L, ns->ptr[j], offs[j], ns->w[j]);
    stc(L, cx_op(L, op, v[0], v[1]), out, oofs, ns->ow);
    return;
  }
  if (d == ns->rank) {
    LLVMValueRef v[4];
    for (int j = 0; j < ns->nops; j++) v[j] = ldf(L, ns->ptr[j], offs[j]);
    LLVMValueRef r = ns->nops == 1 ? emit_unary(L, op, v[0]) : emit_binary(L, op, v[0], v[1]);
    stf(L, r, out, oofs);
    return;
  }
  Loop lp;
  LLVMValueRef i = loop_begin(L, &lp, ci64(L, 0), ci64(L, ns->shape[d]));
  LLVMValueRef o2[4];
  for (int j = 0; j < ns->nops; j++)
    o2[j] = ns->stride[j][d] ? add(L, offs[j], mul(L, i, ci64(L, ns->stride[j][d]))) : offs[j];
  int64_t ost = 1;
  for (int e = d + 1; e < ns->rank; e++) ost *= ns->shape[e];
  emit_ew_nest(L, op, ns, out, d + 1, o2, add(L, oofs, mul(L, i, ci64(L, ost))));
  /* Each element of the nest writes an element of its own, and an operand
   * it writes over is read at that element only (the schedule's in-place
   * rule: same size, no broadcasting): every level is parallel (an outer
   * one is what LLVM vectorizes when the inner ones are short). */
  loop_end_parallel(L, &lp);
}

/* Elementwise op (or broadcast copy) of the current row. */
static void emit_ew(Lower *L, const IrNode *nd, const SchedValue *n, LLVMValueRef out) {
  Nest ns = {0};
  ns.nops = nd->nargs;
  ns.ow = n->w;
  ns.cplx = n->w == 2;
  int flat = 1;
  for (int j = 0; j < nd->nargs; j++) {
    const SchedValue *a = &L->v[nd->args[j]];
    ns.w[j] = a->w;
    ns.cplx |= a->w == 2;
    ns.ptr[j] = rowptr(L, nd->args[j]);
    if (a->numel != n->numel && a->numel != 1) flat = 0;
  }
  /* Operands that are all full-size or scalar: one flat loop (the common case,
   * and the one the loop vectorizer likes best). */
  if (flat) {
    ns.rank = 1;
    ns.shape[0] = n->numel;
    for (int j = 0; j < nd->nargs; j++) ns.stride[j][0] = L->v[nd->args[j]].numel == 1 ? 0 : 1;
  } else {
    ns.rank = n->rank;
    memcpy(ns.shape, n->shape, sizeof ns.shape);
    for (int j = 0; j < nd->nargs; j++) {
      const SchedValue *a = &L->v[nd->args[j]];
      nest_operand(&ns, j, a->rank, a->shape);
    }
  }
  LLVMValueRef z[4] = {ci64(L, 0), ci64(L, 0), ci64(L, 0), ci64(L, 0)};
  emit_ew_nest(L, nd->op, &ns, out, 0, z, ci64(L, 0));
}

/* dst[o, dst_off + k, i] = src[o, src_off + k, i] for k < count. */
static void emit_axis_copy(Lower *L, LLVMValueRef dst, LLVMValueRef src, int64_t outer,
                           int64_t inner, int64_t dst_len, int64_t dst_off, int64_t src_len,
                           int64_t src_off, int64_t count) {
  Loop lo, lk;
  LLVMValueRef o = loop_begin(L, &lo, ci64(L, 0), ci64(L, outer));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, count * inner));
  LLVMValueRef d = add(L, mul(L, o, ci64(L, dst_len * inner)), add(L, k, ci64(L, dst_off * inner)));
  LLVMValueRef s = add(L, mul(L, o, ci64(L, src_len * inner)), add(L, k, ci64(L, src_off * inner)));
  stf(L, ldf(L, src, s), dst, d);
  /* dst is the node's own buffer: a slice, index or concat is never
   * written over its operand (the in-place rule is for elementwise ops);
   * each o writes its own range of it. Index along a last axis copies one
   * element per o: the outer loop is the one LLVM vectorizes. */
  loop_end_parallel(L, &lk);
  loop_end_parallel(L, &lo);
}

/* Whether operand an of a fused loop over key's shape is contiguous along
 * key's last axis (else it is the same along it: broadcast, or one element). */
static int along_last(const Lower *L, const SchedValue *an, const SchedValue *key) {
  if (an->numel == 1) return 0;
  if (an->numel == key->numel) return 1;
  Nest ns = {0};
  ns.rank = key->rank;
  memcpy(ns.shape, key->shape, sizeof ns.shape);
  int arank = an->rank - (L->squeeze < an->rank ? L->squeeze : an->rank);
  nest_operand(&ns, 0, arank, an->shape);
  return ns.stride[0][key->rank - 1] != 0;
}

/* A folded product (sched/plan.c plan_folds) summed over its second-to-last
 * axis: out[o, i] = sum_k a[o, k, i] * b[o, k, i], LSSL's transpose(dA) *
 * s[:, :, None] summed over axis 1. The outputs i of a row are vector lanes
 * and each accumulates in a register across k: an operand contiguous along
 * i is one vector load, one the same along it a load and a splat. (The
 * scalar order, k innermost, reads every operand with a stride of the row
 * and sums in memory.) Rows of `inner` not a multiple of the lanes end in
 * the scalar loop, from i = first. Rows o0 <= o < o1. Returns first. */
static int64_t emit_reduce_lanes(Lower *L, const IrNode *nd, LLVMValueRef out, LLVMValueRef o0,
                                 LLVMValueRef o1, int64_t len, int64_t inner) {
  const SchedValue *x = &L->v[nd->args[0]];
  const IrNode *xn = &L->fn->nodes.v[nd->args[0]];
  const int lanes = SCHED_SCAN_LANES;
  int64_t blocks = inner / lanes;
  if (blocks == 0) return 0;
  int contig[2];
  for (int j = 0; j < 2; j++) contig[j] = along_last(L, &L->v[xn->args[j]], x);
  Loop lo, lb, lk;
  LLVMValueRef o = loop_begin(L, &lo, o0, o1);
  LLVMValueRef i0 = mul(L, loop_begin(L, &lb, ci64(L, 0), ci64(L, blocks)), ci64(L, lanes));
  int saved = L->lanes;
  L->lanes = lanes;
  /* A short sum (LSSL's N = 16) is written out: as a loop, LLVM kept it
   * rolled, with more index arithmetic than multiply-adds. */
  int unrolled = len <= 32;
  LLVMValueRef acc = cf(L, 0.0), phi = NULL;
  for (int64_t u = 0; u < (unrolled ? len : 1); u++) {
    LLVMValueRef k = unrolled ? ci64(L, u) : loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
    if (!unrolled) acc = phi = loop_phi(L, &lk, acc, "acc");
    LLVMValueRef row = add(L, mul(L, o, ci64(L, len)), k);
    LLVMValueRef at = add(L, mul(L, row, ci64(L, inner)), i0);
    LLVMValueRef f[2];
    for (int j = 0; j < 2; j++) {
      const SchedValue *an = &L->v[xn->args[j]];
      LLVMValueRef p = rowptr(L, xn->args[j]), ia = bcast_index(L, an, x, at, row, i0);
      f[j] = contig[j] ? lane_load(L, p, ia) : lane_splat(L, ldf(L, p, ia));
    }
    acc = fadd(L, acc, fmul(L, f[0], f[1]));
    if (!unrolled) {
      loop_phi_next(L, phi, acc);
      loop_end(L, &lk);
      acc = phi;
    }
  }
  LLVMValueRef res = acc;
  if (nd->op == IR_MEAN) res = LLVMBuildFDiv(L->bld, res, cf(L, (double)(len ? len : 1)), "");
  lane_store(L, res, out, add(L, mul(L, o, ci64(L, inner)), i0));
  L->lanes = saved;
  /* Each (o, block) writes its own lanes of out and reads only operands. */
  loop_end_parallel(L, &lb);
  loop_end_parallel(L, &lo);
  return blocks * lanes;
}

/* The sizes a reduction splits its operand into: outer x len (reduced) x inner. */
static void reduce_split(Lower *L, const IrNode *nd, int64_t *outer, int64_t *len, int64_t *inner) {
  const SchedValue *x = &L->v[nd->args[0]];
  if (nd->axis < 0) {
    *outer = 1;
    *len = x->numel;
    *inner = 1;
  } else {
    sched_axis_split(x, nd->axis, outer, len, inner);
  }
  *inner *= x->w; /* a complex value reduces its parts separately */
}

/* Rows o0 <= o < o1 of a reduction. Accumulates in a register (phi) so the
 * reduction can be vectorized (reassoc). */
static void reduce_rows(Lower *L, const IrNode *nd, LLVMValueRef out, LLVMValueRef o0,
                        LLVMValueRef o1) {
  const SchedValue *x = &L->v[nd->args[0]];
  LLVMValueRef src = x->folded ? NULL : rowptr(L, nd->args[0]);
  int64_t outer, len, inner;
  reduce_split(L, nd, &outer, &len, &inner);
  int64_t first = x->folded && inner > 1 ? emit_reduce_lanes(L, nd, out, o0, o1, len, inner) : 0;
  if (first == inner) return;
  double init = nd->op == IR_AMAX ? -INFINITY : nd->op == IR_AMIN ? INFINITY : 0.0;
  Loop lo, li, lk;
  LLVMValueRef o = loop_begin(L, &lo, o0, o1);
  LLVMValueRef i = loop_begin(L, &li, ci64(L, first), ci64(L, inner));
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(L->bld);
  (void)pre;
  LLVMValueRef acc = cf(L, init);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef phi = loop_phi(L, &lk, acc, "acc");
  LLVMValueRef at = add(L, mul(L, add(L, mul(L, o, ci64(L, len)), k), ci64(L, inner)), i);
  LLVMValueRef v;
  if (x->folded) { /* the product made here (sched/plan.c plan_folds) */
    const IrNode *xn = &L->fn->nodes.v[nd->args[0]];
    /* Element (row, i) of the product's last axis: with inner 1 that axis
     * is the one summed. */
    LLVMValueRef row = inner == 1 ? o : add(L, mul(L, o, ci64(L, len)), k);
    LLVMValueRef el = inner == 1 ? k : i;
    v = LLVMBuildFMul(L->bld, fused_operand(L, xn->args[0], at, row, el, x).re,
                      fused_operand(L, xn->args[1], at, row, el, x).re, "");
  } else {
    v = ldf(L, src, at);
  }
  LLVMValueRef nv;
  if (nd->op == IR_AMAX) /* a NaN sticks, as in torch.amax */
    nv = intr2(L, "llvm.maximum", phi, v);
  else if (nd->op == IR_AMIN)
    nv = intr2(L, "llvm.minimum", phi, v);
  else {
    nv = LLVMBuildFAdd(L->bld, phi, v, "");
    set_reassoc(nv);
  }
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  /* After the loop the phi holds the final value. */
  LLVMValueRef res = phi;
  if (nd->op == IR_MEAN) res = LLVMBuildFDiv(L->bld, res, cf(L, (double)(len ? len : 1)), "");
  stf(L, res, out, add(L, mul(L, o, ci64(L, inner)), i));
  loop_end(L, &li);
  loop_end(L, &lo);
}

/* The 16 vectors v (16 lanes each) folded into one vector of their lane
 * sums, sum(v[j]) in lane j: four halving stages, each pairing two vectors
 * whose lanes hold groups of g partial sums (a group per source vector):
 * the low halves of the groups against the high halves, one add, groups
 * of g / 2 and twice as many, and a last shuffle into source order: 15
 * adds and 31 shuffles for the 16 sums, where a horizontal sum takes 8
 * operations per vector (128). */
static LLVMValueRef fold16(Lower *L, LLVMValueRef *v) {
  enum { W = 16 };
  int src[W][W]; /* src[j][group]: the source vector of that group of v[j] */
  for (int j = 0; j < W; j++) src[j][0] = j;
  int n = W;
  for (int g = W; g > 1; g /= 2, n /= 2) {
    LLVMValueRef lo[W], hi[W];
    for (int m = 0; m < W / g; m++)
      for (int t = 0; t < g / 2; t++) {
        lo[m * g + t] = ci32(L, m * g + t);
        lo[m * g + g / 2 + t] = ci32(L, W + m * g + t);
        hi[m * g + t] = ci32(L, m * g + g / 2 + t);
        hi[m * g + g / 2 + t] = ci32(L, W + m * g + g / 2 + t);
      }
    LLVMValueRef mlo = LLVMConstVector(lo, W), mhi = LLVMConstVector(hi, W);
    for (int j = 0; j < n / 2; j++) {
      LLVMValueRef a = v[2 * j], b = v[2 * j + 1];
      v[j] = fadd(L, LLVMBuildShuffleVector(L->bld, a, b, mlo, ""),
                  LLVMBuildShuffleVector(L->bld, a, b, mhi, ""));
      int s2[W];
      for (int m = 0; m < W / g; m++) {
        s2[2 * m] = src[2 * j][m];
        s2[2 * m + 1] = src[2 * j + 1][m];
      }
      memcpy(src[j], s2, sizeof(int) * (size_t)(2 * W / g));
    }
  }
  LLVMValueRef perm[W];
  for (int l = 0; l < W; l++) perm[src[0][l]] = ci32(L, l);
  return LLVMBuildShuffleVector(L->bld, v[0], v[0], LLVMConstVector(perm, W), "");
}

/* A sum or mean over a last axis of a multiple of 16 elements, 16 rows at a
 * time (LSSL's readout sum(C * s', axis=-1), 256 rows of 16): each row's
 * terms added as vectors, the 16 rows' vectors folded into one (fold16) and
 * stored whole. Returns the rows done, a multiple of 16. */
static int64_t reduce_rows16(Lower *L, const IrNode *nd, LLVMValueRef out, int64_t outer,
                             int64_t len) {
  enum { W = 16 };
  const SchedValue *x = &L->v[nd->args[0]];
  if ((nd->op != IR_SUM && nd->op != IR_MEAN) || x->w != 1 || len % W || outer < W) return 0;
  const IrNode *xn = &L->fn->nodes.v[nd->args[0]];
  LLVMValueRef src = x->folded ? NULL : rowptr(L, nd->args[0]), p[2] = {NULL, NULL};
  int contig[2] = {0, 0};
  for (int j = 0; j < 2 && x->folded; j++) {
    p[j] = rowptr(L, xn->args[j]);
    contig[j] = along_last(L, &L->v[xn->args[j]], x);
  }
  Loop lo;
  LLVMValueRef o0 = mul(L, loop_begin(L, &lo, ci64(L, 0), ci64(L, outer / W)), ci64(L, W));
  int saved = L->lanes;
  L->lanes = W;
  LLVMValueRef v[W];
  for (int m = 0; m < W; m++) {
    LLVMValueRef o = add(L, o0, ci64(L, m));
    v[m] = NULL;
    for (int64_t c = 0; c < len; c += W) {
      LLVMValueRef at = add(L, mul(L, o, ci64(L, len)), ci64(L, c)), term;
      if (x->folded) {
        LLVMValueRef f[2];
        for (int j = 0; j < 2; j++) {
          LLVMValueRef ia = bcast_index(L, &L->v[xn->args[j]], x, at, o, ci64(L, c));
          f[j] = contig[j] ? lane_load(L, p[j], ia) : lane_splat(L, ldf(L, p[j], ia));
        }
        term = fmul(L, f[0], f[1]);
      } else {
        term = lane_load(L, src, at);
      }
      v[m] = v[m] ? fadd(L, v[m], term) : term;
    }
  }
  LLVMValueRef res = fold16(L, v);
  if (nd->op == IR_MEAN) res = LLVMBuildFDiv(L->bld, res, cf(L, (double)len), "");
  lane_store(L, res, out, o0);
  L->lanes = saved;
  /* Each block writes its own 16 sums and reads only the operand. */
  loop_end_parallel(L, &lo);
  return outer / W * W;
}

static void emit_reduce(Lower *L, const IrNode *nd, LLVMValueRef out) {
  int64_t outer, len, inner;
  reduce_split(L, nd, &outer, &len, &inner);
  /* Rows of up to 4 vectors each (longer ones: the vectorizer's own loop). */
  int64_t done = inner == 1 && len <= 64 ? reduce_rows16(L, nd, out, outer, len) : 0;
  if (done < outer) reduce_rows(L, nd, out, ci64(L, done), ci64(L, outer));
}

/* Whether node q is a state's new value written over its storage. */
static int writes_state(const Lower *L, IrRef q) {
  for (int s = 0; s < L->fn->states.n; s++)
    if (L->in->state_inplace[s] && L->fn->states.v[s].next == q) return 1;
  return 0;
}

/* The fused run epi (SCHED_OP_ACROSS's body) on row b's vector of sums
 * acc, the sum's elements k .. k + lanes - 1 (row o, lanes from i0 of its
 * last axis): each member from its operands' vectors in registers or loaded
 * there, stored where read outside the run; the sum itself stored where
 * read outside it. A state written over in place keeps its value past the
 * example's length (as in a step's row loop, codegen/seq.c): by a select,
 * not a branch, around which LLVM sank each row's multiply-adds into its
 * own block and spilled the shared vectors of the matrix (LSSL on AVX2). */
static void across_epilogue(Lower *L, IrRef r, const SchedOp *epi, LLVMValueRef b, LLVMValueRef acc,
                            LLVMValueRef k, LLVMValueRef o, LLVMValueRef i0) {
  const IrFunc *fn = L->fn;
  LLVMValueRef sb = L->r_b, st = L->r_tok, stc = L->r_tokc;
  LLVMValueRef active = enter_step_row(L, b);
  const SchedValue *key = &L->v[epi->node];
  L->fval[r] = acc;
  int inside_r = 0;
  for (IrRef q = epi->node; q <= epi->last; q++) {
    if (!sched_in_phase(L->in, SCHED_STEP, q)) continue;
    const IrNode *nd = &fn->nodes.v[q];
    LLVMValueRef a[2];
    for (int j = 0; j < nd->nargs; j++) {
      IrRef x = nd->args[j];
      const SchedValue *xv = &L->v[x];
      inside_r += x == r;
      if (L->fval[x]) {
        a[j] = L->fval[x];
      } else {
        LLVMValueRef p = rowptr(L, x), at = bcast_index(L, xv, key, k, o, i0);
        a[j] = along_last(L, xv, key) ? lane_load(L, p, at) : lane_splat(L, ldf(L, p, at));
      }
    }
    LLVMValueRef v =
        nd->nargs == 1 ? emit_unary(L, nd->op, a[0]) : emit_binary(L, nd->op, a[0], a[1]);
    L->fval[q] = v;
    int inside = 0;
    for (IrRef u = q + 1; u <= epi->last; u++)
      if (sched_in_phase(L->in, SCHED_STEP, u))
        for (int j = 0; j < fn->nodes.v[u].nargs; j++) inside += fn->nodes.v[u].args[j] == q;
    if (inside < L->v[q].uses) {
      LLVMValueRef p = rowptr(L, q), out = v;
      if (writes_state(L, q)) out = LLVMBuildSelect(L->bld, active, v, lane_load(L, p, k), "");
      lane_store(L, out, p, k);
    }
  }
  if (inside_r < L->v[r].uses) lane_store(L, acc, rowptr(L, r), k);
  for (IrRef q = epi->node; q <= epi->last; q++) L->fval[q] = NULL;
  L->fval[r] = NULL;
  L->r_b = sb, L->r_tok = st, L->r_tokc = stc;
}

/* Rows b0 .. b0 + nb - 1 of SCHED_OP_ACROSS's sum r, outputs o0 <= o < o1:
 * out[b, o, i] = sum_k W[o, k, i] v[b, o, k] with W the time-invariant
 * operand (sched/plan.c: contiguous along i, the other operand a row
 * value) and i in vector lanes: each vector of W is loaded once for the nb
 * rows, each row's accumulator in a register; epi, if any, is made from
 * each vector of sums (across_epilogue) instead of storing it. */
static void across_rows(Lower *L, IrRef r, const SchedOp *epi, LLVMValueRef b0, int nb,
                        LLVMValueRef o0, LLVMValueRef o1, int64_t len, int64_t inner) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *x = &L->v[nd->args[0]];
  const IrNode *xn = &L->fn->nodes.v[nd->args[0]];
  const int lanes = SCHED_SCAN_LANES;
  int wj = L->v[xn->args[0]].cls == SCHED_CONST ? 0 : 1;
  IrRef w = xn->args[wj], v = xn->args[1 - wj];
  int vcontig = along_last(L, &L->v[v], x);
  LLVMValueRef saved = L->r_b, vp[ACROSS_ROWS_MAX], op[ACROSS_ROWS_MAX];
  for (int u = 0; u < nb; u++) {
    L->r_b = add(L, b0, ci64(L, u));
    vp[u] = rowptr(L, v);
    op[u] = rowptr(L, r);
  }
  L->r_b = saved;
  LLVMValueRef wp = rowptr(L, w);
  Loop lo, lb, lk;
  LLVMValueRef o = loop_begin(L, &lo, o0, o1);
  LLVMValueRef i0 = mul(L, loop_begin(L, &lb, ci64(L, 0), ci64(L, inner / lanes)), ci64(L, lanes));
  int saved_lanes = L->lanes;
  L->lanes = lanes;
  /* A short sum (LSSL's N = 16) is written out where the target holds a
   * vector of the matrix per k in registers (AVX-512: as a loop, LLVM kept
   * it rolled, with more index arithmetic than multiply-adds). On AVX2 the
   * loop stays: written out, LLVM loaded every row's 16 broadcasts ahead
   * and spilled them with the matrix's vectors (LSSL B = 8 on a Zen 3:
   * 230-240 ms unrolled, 90-127 as a loop). */
  int unrolled = len <= 32 && L->vec_floats >= SCHED_SCAN_LANES;
  /* Fewer than 4 rows: the sum in 4 / nb partial sums over k, so that 4
   * chains of multiply-adds are in flight (one row's alone waits on the
   * latency of each: LSSL at B = 1). */
  int parts = nb < 4 && len % (4 / nb) == 0 ? 4 / nb : 1;
  LLVMValueRef acc[ACROSS_ROWS_MAX * 4], phi[ACROSS_ROWS_MAX * 4];
  for (int u = 0; u < nb * parts; u++) acc[u] = cf(L, 0.0);
  for (int64_t t = 0; t < (unrolled ? len : 1); t += unrolled ? parts : 1) {
    LLVMValueRef k0 =
        unrolled ? ci64(L, t) : loop_begin_step(L, &lk, ci64(L, 0), ci64(L, len), parts);
    for (int u = 0; u < nb * parts && !unrolled; u++)
      acc[u] = phi[u] = loop_phi(L, &lk, acc[u], "acc");
    for (int q = 0; q < parts; q++) {
      LLVMValueRef k = add(L, k0, ci64(L, q));
      LLVMValueRef row = add(L, mul(L, o, ci64(L, len)), k);
      LLVMValueRef at = add(L, mul(L, row, ci64(L, inner)), i0);
      LLVMValueRef wv = lane_load(L, wp, bcast_index(L, &L->v[w], x, at, row, i0));
      LLVMValueRef iv = bcast_index(L, &L->v[v], x, at, row, i0);
      for (int u = 0; u < nb; u++) {
        LLVMValueRef vv = vcontig ? lane_load(L, vp[u], iv) : lane_splat(L, ldf(L, vp[u], iv));
        acc[q * nb + u] = fadd(L, acc[q * nb + u], fmul(L, wv, vv));
      }
    }
    if (!unrolled) {
      for (int u = 0; u < nb * parts; u++) loop_phi_next(L, phi[u], acc[u]);
      loop_end(L, &lk);
      for (int u = 0; u < nb * parts; u++) acc[u] = phi[u];
    }
  }
  for (int q = 1; q < parts; q++)
    for (int u = 0; u < nb; u++) acc[u] = fadd(L, acc[u], acc[q * nb + u]);
  LLVMValueRef oi = add(L, mul(L, o, ci64(L, inner)), i0);
  for (int u = 0; u < nb; u++) {
    LLVMValueRef res = acc[u];
    if (nd->op == IR_MEAN) res = LLVMBuildFDiv(L->bld, res, cf(L, (double)(len ? len : 1)), "");
    if (epi)
      across_epilogue(L, r, epi, add(L, b0, ci64(L, u)), res, oi, o, i0);
    else
      lane_store(L, res, op[u], oi);
  }
  L->lanes = saved_lanes;
  /* Each (o, block) writes its own lanes of the rows' outputs and reads
   * only operands. */
  loop_end_parallel(L, &lb);
  loop_end_parallel(L, &lo);
}

/* SCHED_OP_ACROSS: sum r with its folded product for every row of the step,
 * the rows of its time-invariant operand outermost, in blocks of 16 KiB
 * read from L2 for the batch's first rows and from L1 for the others
 * (LSSL's dA^T, 256 KiB, once per step instead of once per example), the
 * rows in groups of 8, then 4, then one at a time. A group's sums, a vector
 * of the matrix and a splat of the row's value must fit the registers: on
 * AVX2 (16 of 8 floats) eight rows' sums alone would take all of them, and
 * the spills cost more than the shared loads save, so groups start at 4
 * there (LSSL, B = 8: 175-187 ms -> 116-125 on a Zen 3), at 8 with AVX-512. */
void emit_across(Lower *L, const SchedOp *op) {
  IrRef r = op->node;
  const SchedOp *epi = op->body.n ? &op->body.v[0] : NULL;
  const IrNode *nd = &L->fn->nodes.v[r];
  int64_t outer, len, inner;
  reduce_split(L, nd, &outer, &len, &inner);
  int64_t per = len * inner > 0 ? 4096 / (len * inner) : 1;
  if (per < 1) per = 1;
  Loop lb;
  LLVMValueRef o0 = loop_begin_step(L, &lb, ci64(L, 0), ci64(L, outer), per);
  LLVMValueRef o1 = select_min(L, add(L, o0, ci64(L, per)), ci64(L, outer));
  LLVMValueRef B = L->a_B, from = ci64(L, 0);
  int per_vec = L->vec_floats >= SCHED_SCAN_LANES ? 1 : SCHED_SCAN_LANES / L->vec_floats;
  for (int nb = ACROSS_ROWS_MAX; nb >= 1; nb /= 2) {
    if (nb == 2 || (nb > 1 && (nb + 1) * per_vec + 2 > L->vec_regs)) continue;
    /* Groups of nb from `from` while whole; the next size starts after them. */
    LLVMValueRef end = mul(L, LLVMBuildSDiv(L->bld, B, ci64(L, nb), ""), ci64(L, nb));
    Loop lg;
    LLVMValueRef b0 = loop_begin_step(L, &lg, from, end, nb);
    across_rows(L, r, epi, b0, nb, o0, o1, len, inner);
    loop_end(L, &lg);
    from = end; /* end >= from: a size divides the one before */
  }
  loop_end(L, &lb);
}

/* Sum of f(x[k]) over a row of n, with f the identity or a square. */
static LLVMValueRef row_sum(Lower *L, LLVMValueRef src, LLVMValueRef base, int64_t n, int square,
                            LLVMValueRef shift) {
  Loop lk;
  LLVMValueRef z = cf(L, 0.0);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, n));
  LLVMValueRef phi = loop_phi(L, &lk, z, "acc");
  LLVMValueRef v = ldf(L, src, add(L, base, k));
  if (shift) v = LLVMBuildFSub(L->bld, v, shift, "");
  if (square) v = LLVMBuildFMul(L->bld, v, v, "");
  LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, v, "");
  set_reassoc(nv);
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  return phi;
}

/* Operand j of a norm, broadcast along the last axis (weight [n] or scalar). */
static LLVMValueRef norm_operand(Lower *L, const IrNode *nd, int j, LLVMValueRef k) {
  const SchedValue *w = &L->v[nd->args[j]];
  LLVMValueRef p = rowptr(L, nd->args[j]);
  return ldf(L, p, w->numel == 1 ? ci64(L, 0) : k);
}

static void emit_norm(Lower *L, const IrNode *nd, const SchedValue *n, LLVMValueRef out) {
  LLVMValueRef src = rowptr(L, nd->args[0]);
  int64_t len = n->rank ? n->shape[n->rank - 1] : 1;
  int64_t rows = len ? n->numel / len : 0;
  Loop lr, lk;
  LLVMValueRef r = loop_begin(L, &lr, ci64(L, 0), ci64(L, rows));
  LLVMValueRef base = mul(L, r, ci64(L, len));
  LLVMValueRef scale = NULL, shift = NULL, denom = NULL;
  LLVMValueRef eps = cf(L, nd->cval);
  LLVMValueRef flen = cf(L, (double)(len ? len : 1));
  if (nd->op == IR_RMSNORM) {
    LLVMValueRef ms = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 1, NULL), flen, "");
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, ms, eps, "")), "");
  } else if (nd->op == IR_L2NORM) {
    LLVMValueRef ss = row_sum(L, src, base, len, 1, NULL);
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, ss, eps, "")), "");
  } else if (nd->op == IR_LAYERNORM) {
    shift = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 0, NULL), flen, "");
    LLVMValueRef var = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 1, shift), flen, "");
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, var, eps, "")), "");
  } else { /* SOFTMAX: max, then sum of exp(x - max) */
    Loop lm;
    LLVMValueRef ninf = cf(L, -INFINITY);
    LLVMValueRef k = loop_begin(L, &lm, ci64(L, 0), ci64(L, len));
    LLVMValueRef phi = loop_phi(L, &lm, ninf, "mx");
    LLVMValueRef nv = intr2(L, "llvm.maximum", phi, ldf(L, src, add(L, base, k)));
    loop_phi_next(L, phi, nv);
    loop_end(L, &lm);
    shift = phi;
    Loop ls;
    LLVMValueRef z = cf(L, 0.0);
    k = loop_begin(L, &ls, ci64(L, 0), ci64(L, len));
    LLVMValueRef acc = loop_phi(L, &ls, z, "sum");
    LLVMValueRef e = emit_exp(L, LLVMBuildFSub(L->bld, ldf(L, src, add(L, base, k)), shift, ""));
    stf(L, e, out, add(L, base, k));
    LLVMValueRef na = LLVMBuildFAdd(L->bld, acc, e, "");
    set_reassoc(na);
    loop_phi_next(L, acc, na);
    loop_end_parallel(L, &ls); /* out is the node's own buffer (a norm is never in place) */
    denom = acc;
  }
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef idx = add(L, base, k);
  LLVMValueRef v;
  if (denom) {
    v = LLVMBuildFDiv(L->bld, ldf(L, out, idx), denom, "");
  } else {
    v = ldf(L, src, idx);
    if (shift) v = LLVMBuildFSub(L->bld, v, shift, "");
    v = LLVMBuildFMul(L->bld, v, scale, "");
    if (nd->op == IR_RMSNORM || nd->op == IR_LAYERNORM)
      v = LLVMBuildFMul(L->bld, v, norm_operand(L, nd, 1, k), "");
    if (nd->op == IR_LAYERNORM) v = LLVMBuildFAdd(L->bld, v, norm_operand(L, nd, 2, k), "");
  }
  stf(L, v, out, idx);
  loop_end_parallel(L, &lk);
  loop_end(L, &lr);
}

/* Complex matrix product of one row (either operand may be real): sums in
 * order over k, real and imaginary parts in two accumulators. */
static void emit_cmatmul_row(Lower *L, const IrNode *nd, LLVMValueRef out) {
  const SchedValue *x = &L->v[nd->args[0]], *y = &L->v[nd->args[1]];
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
  Loop li, lj, lk;
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, M));
  LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
  LLVMValueRef z = cf(L, 0.0);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  LLVMValueRef pre = loop_phi(L, &lk, z, "re"), pim = loop_phi(L, &lk, z, "im");
  Cx p = cx_mul(L, ldc(L, pa, add(L, mul(L, i, ci64(L, K)), k), x->w),
                ldc(L, pb, add(L, mul(L, k, ci64(L, N)), j), y->w));
  LLVMValueRef nre = fadd(L, pre, p.re), nim = fadd(L, pim, p.im);
  set_reassoc(nre);
  set_reassoc(nim);
  loop_phi_next(L, pre, nre);
  loop_phi_next(L, pim, nim);
  loop_end(L, &lk);
  stc(L, (Cx){pre, pim}, out, add(L, mul(L, i, ci64(L, N)), j), 2);
  loop_end(L, &lj);
  loop_end(L, &li);
}

/* Generic matrix product of one row: a as [M, K], b as [K, N]. */
static void emit_matmul_row(Lower *L, const IrNode *nd, LLVMValueRef out) {
  const SchedValue *x = &L->v[nd->args[0]], *y = &L->v[nd->args[1]];
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
  if (x->w == 2 || y->w == 2) {
    emit_cmatmul_row(L, nd, out);
    return;
  }
  Loop li, lk, lj;
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, M));
  if (N == 1) {
    LLVMValueRef z = cf(L, 0.0);
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
    LLVMValueRef phi = loop_phi(L, &lk, z, "acc");
    LLVMValueRef p =
        LLVMBuildFMul(L->bld, ldf(L, pa, add(L, mul(L, i, ci64(L, K)), k)), ldf(L, pb, k), "");
    LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, p, "");
    set_reassoc(nv);
    loop_phi_next(L, phi, nv);
    loop_end(L, &lk);
    stf(L, phi, out, i);
  } else {
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
    stf(L, cf(L, 0.0), out, add(L, mul(L, i, ci64(L, N)), j));
    loop_end(L, &lj);
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
    LLVMValueRef aik = ldf(L, pa, add(L, mul(L, i, ci64(L, K)), k));
    j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
    LLVMValueRef o = add(L, mul(L, i, ci64(L, N)), j);
    LLVMValueRef v = LLVMBuildFAdd(
        L->bld, ldf(L, out, o),
        LLVMBuildFMul(L->bld, aik, ldf(L, pb, add(L, mul(L, k, ci64(L, N)), j)), ""), "");
    stf(L, v, out, o);
    /* out is the node's own buffer (a product is never in place): each j
     * its own element of it. */
    loop_end_parallel(L, &lj);
    loop_end(L, &lk);
  }
  loop_end(L, &li);
}

LLVMValueRef bcast_index(Lower *L, const SchedValue *an, const SchedValue *key, LLVMValueRef k,
                         LLVMValueRef o, LLVMValueRef i) {
  if (an->numel == 1) return ci64(L, 0);
  if (an->numel == key->numel) return k;
  Nest ns = {0};
  ns.rank = key->rank;
  memcpy(ns.shape, key->shape, sizeof ns.shape);
  /* The key's trailing axes of size 1 left out (L->squeeze): as many of the
   * operand's, which align with them (so are 1 too). */
  int arank = an->rank - (L->squeeze < an->rank ? L->squeeze : an->rank);
  nest_operand(&ns, 0, arank, an->shape);
  int last = key->rank - 1;
  LLVMValueRef idx = mul(L, i, ci64(L, ns.stride[0][last]));
  int64_t inner = 1;
  for (int d = last - 1; d >= 0; d--) {
    if (ns.stride[0][d]) {
      LLVMValueRef c = LLVMBuildUDiv(L->bld, o, ci64(L, inner), "");
      /* o < the product of the leading axes: the first needs no remainder
       * (which would keep a loop along o from vectorizing). */
      if (d > 0) c = LLVMBuildURem(L->bld, c, ci64(L, key->shape[d]), "");
      idx = add(L, idx, mul(L, c, ci64(L, ns.stride[0][d])));
    }
    inner *= key->shape[d];
  }
  return idx;
}

/* Emits node r for the current row. */
void emit_row(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r];
  LLVMValueRef out = rowptr(L, r);
  switch (nd->op) {
  case IR_CONST:
    stf(L, cf(L, nd->cval), out, ci64(L, 0));
    return;
  case IR_DIMVAL: {
    int64_t v = 0;
    if (dim_eval(nd->dval, L->in->dims, &v) != 0) v = 0;
    stf(L, cf(L, (double)v), out, ci64(L, 0));
    return;
  }
  case IR_EYE: {
    int64_t N = n->rank ? n->shape[0] : 0;
    Loop lk;
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, N * N));
    LLVMValueRef diag = LLVMBuildICmp(L->bld, LLVMIntEQ,
                                      LLVMBuildSRem(L->bld, k, ci64(L, N + 1), ""), ci64(L, 0), "");
    stf(L, LLVMBuildSelect(L->bld, diag, cf(L, 1.0), cf(L, 0.0), ""), out, k);
    loop_end_parallel(L, &lk); /* stores only */
    return;
  }
  case IR_INV: /* the runtime's, per matrix of the last two axes */
  case IR_EXPM: {
    int64_t N = n->shape[n->rank - 1], P = N ? n->numel / (N * N) : 0;
    LLVMTypeRef pt[4] = {L->i64, L->i64, L->ptr, L->ptr};
    LLVMValueRef args[4] = {ci64(L, P), ci64(L, N), rowptr(L, nd->args[0]), out};
    call_fn(L, nd->op == IR_INV ? "rt_cpu_inv" : "rt_cpu_expm", L->void_t, pt, 4, args);
    return;
  }
  case IR_DIAG: {
    const SchedValue *x = &L->v[nd->args[0]];
    int64_t N = x->shape[x->rank - 1], P = N ? n->numel / N : 0;
    LLVMValueRef src = rowptr(L, nd->args[0]);
    Loop lp, li;
    LLVMValueRef p = loop_begin(L, &lp, ci64(L, 0), ci64(L, P));
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, N));
    LLVMValueRef pi = add(L, mul(L, p, ci64(L, N)), i);
    stc(L, ldc(L, src, add(L, mul(L, pi, ci64(L, N)), i), x->w), out, pi, x->w);
    loop_end_parallel(L, &li); /* into the node's own buffer, an element each */
    loop_end_parallel(L, &lp);
    return;
  }
  case IR_TRANSPOSE: {
    const SchedValue *x = &L->v[nd->args[0]];
    int64_t Mx = x->shape[x->rank - 2], Nx = x->shape[x->rank - 1];
    int64_t P = (Mx * Nx) != 0 ? x->numel / (Mx * Nx) : 0;
    LLVMValueRef src = rowptr(L, nd->args[0]);
    Loop lp, li, lj;
    LLVMValueRef p = loop_begin(L, &lp, ci64(L, 0), ci64(L, P));
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, Nx));
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, Mx));
    LLVMValueRef pb = mul(L, p, ci64(L, Mx * Nx));
    stc(L, ldc(L, src, add(L, pb, add(L, mul(L, j, ci64(L, Nx)), i)), x->w), out,
        add(L, pb, add(L, mul(L, i, ci64(L, Mx)), j)), x->w);
    loop_end_parallel(L, &lj); /* into the node's own buffer, an element each */
    loop_end_parallel(L, &li);
    loop_end_parallel(L, &lp);
    return;
  }
  case IR_SLICE:
  case IR_INDEX: {
    const SchedValue *x = &L->v[nd->args[0]];
    int64_t outer, len, inner, start = 0, stop = 0;
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
    inner *= x->w;
    if (dim_eval(nd->start, L->in->dims, &start) != 0) start = 0;
    if (nd->op == IR_SLICE) {
      if (dim_eval(nd->stop, L->in->dims, &stop) != 0) stop = start;
    } else {
      stop = start + 1;
    }
    emit_axis_copy(L, out, rowptr(L, nd->args[0]), outer, inner, stop - start, 0, len, start,
                   stop - start);
    return;
  }
  case IR_CONCAT: {
    int64_t outer, len, inner, off = 0;
    sched_axis_split(n, nd->axis, &outer, &len, &inner);
    inner *= n->w; /* supported() checked that every operand has n's width */
    for (int j = 0; j < nd->nargs; j++) {
      const SchedValue *x = &L->v[nd->args[j]];
      int64_t xl = x->shape[nd->axis];
      emit_axis_copy(L, out, rowptr(L, nd->args[j]), outer, inner, len, off, xl, 0, xl);
      off += xl;
    }
    return;
  }
  case IR_GATHER: {
    const SchedValue *tab = &L->v[nd->args[0]];
    LLVMValueRef ip = rowptr(L, nd->args[1]);
    LLVMValueRef idx = LLVMBuildSExt(L->bld, LLVMBuildLoad2(L->bld, L->i32, ip, ""), L->i64, "");
    LLVMValueRef bad =
        LLVMBuildOr(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, idx, ci64(L, 0), ""),
                    LLVMBuildICmp(L->bld, LLVMIntSGE, idx, ci64(L, tab->shape[0]), ""), "");
    fail_with(L, bad, ABI_ERR_TOKEN);
    LLVMValueRef src = gepf(L, rowptr(L, nd->args[0]), mul(L, idx, ci64(L, sched_row_floats(n))));
    Loop lk;
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, sched_row_floats(n)));
    stf(L, ldf(L, src, k), out, k);
    loop_end_parallel(L, &lk); /* a table row into the node's own buffer */
    return;
  }
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    emit_reduce(L, nd, out);
    return;
  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
  case IR_SOFTMAX:
    emit_norm(L, nd, n, out);
    return;
  case IR_MATMUL:
    emit_matmul_row(L, nd, out);
    return;
  case IR_OUTER: {
    const SchedValue *y = &L->v[nd->args[1]];
    LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
    const SchedValue *x = &L->v[nd->args[0]];
    Loop li, lj;
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, x->numel));
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, y->numel));
    LLVMValueRef o = add(L, mul(L, i, ci64(L, y->numel)), j);
    if (n->w == 2)
      stc(L, cx_mul(L, ldc(L, pa, i, x->w), ldc(L, pb, j, y->w)), out, o, 2);
    else
      stf(L, LLVMBuildFMul(L->bld, ldf(L, pa, i), ldf(L, pb, j), ""), out, o);
    loop_end_parallel(L, &lj); /* into the node's own buffer, an element each */
    loop_end_parallel(L, &li);
    return;
  }
  default:
    if (ir_op_info[nd->op].flags & IRF_EW || nd->op == IR_BROADCAST) {
      emit_ew(L, nd, n, out);
      return;
    }
    diag_internal(L->de, "codegen", "op %s reached emit_row", ir_op_info[nd->op].text);
    L->failed = 1;
  }
}
