/* scan.c - a cell's parallel form (passes/scan.c): the sequence ops scan,
 * scan_max, delay and window over each example's sequence, in the direction
 * the instance runs, and the final states they leave.
 *
 * Token rows are physical positions (b*T + t); an instance run backwards
 * (a reversed layer) processes step tau at t = len - 1 - tau, so "the
 * previous step" is t + 1 there and the last step is t = 0.
 */
#include "codegen/llvm.h"

/* The position of processing step tau of a sequence of length len. */
static LLVMValueRef phys(Lower *L, LLVMValueRef len, LLVMValueRef tau) {
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef back = LLVMBuildSub(L->bld, LLVMBuildSub(L->bld, len, ci64(L, 1), ""), tau, "");
  return LLVMBuildSelect(L->bld, isrev, back, tau, "");
}

/* Row pointer of node r for example b at position t (its class says which
 * row: one for constants, the example's for states, the token's else). */
static LLVMValueRef row_at(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef t) {
  const SchedValue *v = &L->v[r];
  LLVMValueRef row = v->cls == SCHED_CONST  ? ci64(L, 0)
                     : v->cls == SCHED_STEP ? b
                                            : add(L, mul(L, b, L->a_T), t);
  return gepf(L, L->ll[r].base, mul(L, row, ci64(L, sched_row_floats(v))));
}

/* The steps of example b this call runs: its whole sequence, or in time
 * chunks the chunk's steps [t0, t0 + tn) that lie inside it (first, count). */
static void step_range(Lower *L, LLVMValueRef len, LLVMValueRef *first, LLVMValueRef *count) {
  if (!L->in->chunked) {
    *first = ci64(L, 0);
    *count = len;
    return;
  }
  LLVMValueRef jn = select_min(L, LLVMBuildSub(L->bld, len, L->t0, ""), L->tn);
  *first = L->t0;
  *count = LLVMBuildSelect(L->bld, LLVMBuildICmp(L->bld, LLVMIntSGT, jn, ci64(L, 0), ""), jn,
                           ci64(L, 0), "");
}

/* Row pointer of node r for example b at processing step tau: a chunk's
 * rows hold its steps in order (b*Tc + tau - t0), a whole-sequence buffer
 * the tokens (b*T + t). */
static LLVMValueRef step_row(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef len,
                             LLVMValueRef tau) {
  const SchedValue *v = &L->v[r];
  if (v->cls != SCHED_TOKEN || !v->chunked) return row_at(L, r, b, phys(L, len, tau));
  LLVMValueRef row = add(L, mul(L, b, L->Tc), LLVMBuildSub(L->bld, tau, L->t0, ""));
  return gepf(L, L->ll[r].base, mul(L, row, ci64(L, sched_row_floats(v))));
}

/* h_t = a_t * h_{t-1} + b_t (scan) or max(a_t + h_{t-1}, b_t) (scan_max)
 * per example, h_{-1} the initial value, over the example's steps; the
 * element loop runs along the value's last axis, where a broadcast
 * coefficient is contiguous or constant. */
void emit_scan(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r], *av = &L->v[nd->args[0]];
  int maxplus = nd->op == IR_SCAN_MAX;
  int64_t last = n->rank ? n->shape[n->rank - 1] : 1;
  int64_t outer = last ? n->numel / last : 0;
  Loop lb, lt, lo, li;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef h0 = row_at(L, nd->args[2], b, ci64(L, 0));
  LLVMValueRef tau = loop_begin(L, &lt, ci64(L, 0), len);
  LLVMValueRef t = phys(L, len, tau);
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef tprev = LLVMBuildSelect(L->bld, isrev, add(L, t, ci64(L, 1)),
                                       LLVMBuildSub(L->bld, t, ci64(L, 1), ""), "");
  LLVMValueRef first = LLVMBuildICmp(L->bld, LLVMIntEQ, tau, ci64(L, 0), "");
  /* Step 0 reads the initial value; the others the previous step's. */
  LLVMValueRef prev = LLVMBuildSelect(
      L->bld, first, h0, row_at(L, r, b, LLVMBuildSelect(L->bld, first, t, tprev, "")), "");
  LLVMValueRef out = row_at(L, r, b, t);
  LLVMValueRef pa = row_at(L, nd->args[0], b, t), pb = row_at(L, nd->args[1], b, t);
  LLVMValueRef o = loop_begin(L, &lo, ci64(L, 0), ci64(L, outer));
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, last));
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  LLVMValueRef ka = bcast_index(L, av, n, k, o, i);
  if (n->w == 2) {
    Cx h = cx_mul(L, ldc(L, pa, ka, av->w), ldc(L, prev, k, 2));
    Cx y = ldc(L, pb, k, 2);
    stc(L, (Cx){fadd(L, h.re, y.re), fadd(L, h.im, y.im)}, out, k, 2);
  } else if (maxplus) {
    LLVMValueRef s = fadd(L, ldf(L, pa, ka), ldf(L, prev, k));
    stf(L, emit_binary(L, IR_MAX, s, ldf(L, pb, k)), out, k);
  } else {
    stf(L, fadd(L, fmul(L, ldf(L, pa, ka), ldf(L, prev, k)), ldf(L, pb, k)), out, k);
  }
  loop_end(L, &li);
  loop_end(L, &lo);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* Each step reads the previous step's value; the first the initial one. */
void emit_delay(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  int64_t floats = sched_row_floats(&L->v[r]);
  Loop lb, lt, lk;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef x0 = row_at(L, nd->args[1], b, ci64(L, 0));
  LLVMValueRef tau = loop_begin(L, &lt, ci64(L, 0), len);
  LLVMValueRef t = phys(L, len, tau);
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef first = LLVMBuildICmp(L->bld, LLVMIntEQ, tau, ci64(L, 0), "");
  LLVMValueRef tprev = LLVMBuildSelect(L->bld, isrev, add(L, t, ci64(L, 1)),
                                       LLVMBuildSub(L->bld, t, ci64(L, 1), ""), "");
  LLVMValueRef src =
      LLVMBuildSelect(L->bld, first, x0,
                      row_at(L, nd->args[0], b, LLVMBuildSelect(L->bld, first, t, tprev, "")), "");
  LLVMValueRef dst = row_at(L, r, b, t);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, floats));
  stf(L, ldf(L, src, k), dst, k);
  loop_end(L, &lk);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* A shift register's value entering step tau: along the axis, entries
 * [tau*m, tau*m + n) of the stream w0 (n entries), v at step 0 (m), v at
 * step 1 (m), ... In time chunks w0 is the storage, which holds the window
 * entering the chunk (emit_chunk_states), and tau counts from t0. */
void emit_window(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r], *v = &L->v[nd->args[0]];
  int64_t outer, nlen, inner, vo, mlen, vi;
  sched_axis_split(n, nd->axis, &outer, &nlen, &inner);
  sched_axis_split(v, nd->axis, &vo, &mlen, &vi);
  inner *= n->w;
  Loop lb, lt, lj, lq, lk;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b), first, count;
  step_range(L, len, &first, &count);
  LLVMValueRef w0 = row_at(L, nd->args[1], b, ci64(L, 0));
  LLVMValueRef rel = loop_begin(L, &lt, ci64(L, 0), count);
  LLVMValueRef dst = step_row(L, r, b, len, add(L, first, rel));
  LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, nlen));
  LLVMValueRef p = add(L, mul(L, rel, ci64(L, mlen)), j);
  LLVMValueRef from_w0 = LLVMBuildICmp(L->bld, LLVMIntSLT, p, ci64(L, nlen), "");
  LLVMValueRef pv = LLVMBuildSub(L->bld, p, ci64(L, nlen), "");
  /* Stream entries past w0: the m entries of v at step (p - n) / m. */
  LLVMValueRef pvs = LLVMBuildSelect(L->bld, from_w0, ci64(L, 0), pv, "");
  LLVMValueRef vstep = LLVMBuildSDiv(L->bld, pvs, ci64(L, mlen ? mlen : 1), "");
  LLVMValueRef vat = LLVMBuildSRem(L->bld, pvs, ci64(L, mlen ? mlen : 1), "");
  LLVMValueRef src = LLVMBuildSelect(L->bld, from_w0, w0,
                                     step_row(L, nd->args[0], b, len, add(L, first, vstep)), "");
  LLVMValueRef at = LLVMBuildSelect(L->bld, from_w0, p, vat, "");
  LLVMValueRef extent = LLVMBuildSelect(L->bld, from_w0, ci64(L, nlen), ci64(L, mlen), "");
  LLVMValueRef q = loop_begin(L, &lq, ci64(L, 0), ci64(L, outer));
  LLVMValueRef so = mul(L, add(L, mul(L, q, extent), at), ci64(L, inner));
  LLVMValueRef dof = mul(L, add(L, mul(L, q, ci64(L, nlen)), j), ci64(L, inner));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, inner));
  stf(L, ldf(L, src, add(L, so, k)), dst, add(L, dof, k));
  loop_end(L, &lk);
  loop_end(L, &lq);
  loop_end(L, &lj);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* An array of n floats in the function's entry block, 64-byte aligned. */
static LLVMValueRef entry_array(Lower *L, int64_t n, const char *name) {
  LLVMValueRef a = entry_alloca(L, LLVMArrayType(L->f32, (unsigned)(n ? n : 1)), name);
  LLVMSetAlignment(a, 64);
  return a;
}

/* Copies the item's elements (rows [ob, oend), last-axis range [i0, i1))
 * between an interleaved complex row `cx` and planar arrays indexed from
 * ob * last: in (to_planar) before the loop over time, or out after it. */
static void planar_copy(Lower *L, LLVMValueRef cx, LLVMValueRef re, LLVMValueRef im, int64_t last,
                        LLVMValueRef ob, LLVMValueRef oend, LLVMValueRef i0, LLVMValueRef i1,
                        int to_planar) {
  Loop lo, li;
  LLVMValueRef o = loop_begin(L, &lo, ob, oend);
  LLVMValueRef i = loop_begin(L, &li, i0, i1);
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  LLVMValueRef at = LLVMBuildSub(L->bld, k, L->pl_base, "");
  if (to_planar) {
    Cx v = ldc(L, cx, k, 2);
    stf(L, v.re, re, at);
    stf(L, v.im, im, at);
  } else {
    stc(L, (Cx){ldf(L, re, at), ldf(L, im, at)}, cx, k, 2);
  }
  loop_end(L, &li);
  loop_end(L, &lo);
}

/* A fused scan (sched/scan.c): per example, per block of the state's
 * leading rows, per piece of its last axis, per step, one element loop
 * computes the members in node order: the coefficients, the update of the
 * running value (in the state's storage, so it ends as the final state), the
 * reads of the new value and of the old (delay), and the sums over the last
 * axis, which are stored per token after the loop over that axis. The
 * (example, block, piece) items touch disjoint elements, so they run on the
 * runtime's pool. */
static void scan_item(Lower *L, LLVMValueRef item, LLVMValueRef extra, const void *arg) {
  (void)extra;
  const SchedOp *op = arg;
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &L->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX;
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  int64_t outer = last ? key->numel / last : 0;
  int64_t nblocks = g->block ? (outer + g->block - 1) / g->block : 0;
  int64_t npieces = g->split < last ? (last + g->split - 1) / g->split : 1;
  int64_t srow = L->in->bufs.v[L->in->state_buf[g->state]].row_floats;
  LLVMValueRef piece = LLVMBuildSRem(L->bld, item, ci64(L, npieces), "");
  LLVMValueRef rest = LLVMBuildSDiv(L->bld, item, ci64(L, npieces), "");
  LLVMValueRef blk = LLVMBuildSRem(L->bld, rest, ci64(L, nblocks), "");
  LLVMValueRef b = LLVMBuildSDiv(L->bld, rest, ci64(L, nblocks), "");
  L->r_b = b;
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef h = gepf(L, L->buf[L->in->state_buf[g->state]], mul(L, b, ci64(L, srow)));
  LLVMValueRef ob = mul(L, blk, ci64(L, g->block));
  LLVMValueRef oend = select_min(L, add(L, ob, ci64(L, g->block)), ci64(L, outer));
  /* A whole last axis keeps its constant trip count. */
  LLVMValueRef i0 = ci64(L, 0), i1 = ci64(L, last);
  if (npieces > 1) {
    i0 = mul(L, piece, ci64(L, g->split));
    i1 = select_min(L, add(L, i0, ci64(L, g->split)), ci64(L, last));
  }
  /* Planar copies of the complex state and constants for this item. */
  LLVMValueRef hre = NULL, him = NULL;
  if (g->planar_state) {
    int64_t n = g->block * last;
    L->pl_base = mul(L, ob, ci64(L, last));
    L->pl_re = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof *L->pl_re);
    L->pl_im = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof *L->pl_im);
    if (!L->pl_re || !L->pl_im) {
      L->failed = 1;
      return;
    }
    hre = entry_array(L, n, "state_re");
    him = entry_array(L, n, "state_im");
    planar_copy(L, h, hre, him, last, ob, oend, i0, i1, 1);
    for (int j = 0; j < g->nplanar; j++) {
      IrRef a = g->planar[j];
      L->pl_re[a] = entry_array(L, n, "planar_re");
      L->pl_im[a] = entry_array(L, n, "planar_im");
      planar_copy(L, rowptr(L, a), L->pl_re[a], L->pl_im[a], last, ob, oend, i0, i1, 1);
    }
  }
  Loop lt, lo, li;
  LLVMValueRef first, count;
  step_range(L, len, &first, &count);
  LLVMValueRef rel = loop_begin(L, &lt, ci64(L, 0), count);
  L->r_tok = add(L, mul(L, b, L->a_T), phys(L, len, add(L, first, rel)));
  if (L->in->chunked) L->r_tokc = add(L, mul(L, b, L->Tc), rel);
  LLVMValueRef o = loop_begin(L, &lo, ob, oend);
  /* Accumulators of the sums, carried around the loop over the last axis. */
  LLVMValueRef *acc = arena_calloc(L->a, (size_t)g->nmembers * 2 + 1, sizeof *acc);
  if (!acc) {
    L->failed = 1;
    return;
  }
  LLVMValueRef i = loop_begin(L, &li, i0, i1);
  for (int m = 0; m < g->nmembers; m++) {
    const IrNode *nd = &fn->nodes.v[g->members[m]];
    if (nd->op == IR_SUM || nd->op == IR_MEAN || nd->op == IR_MATMUL) {
      acc[2 * m] = loop_phi(L, &li, cf(L, 0.0), "acc");
      if (L->v[g->members[m]].w == 2) acc[2 * m + 1] = loop_phi(L, &li, cf(L, 0.0), "acci");
    }
  }
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &L->v[r];
    Cx v = {NULL, NULL};
    if (r == scan) {
      Cx a = fused_operand(L, sn->args[0], k, o, i, key);
      Cx bv = fused_operand(L, sn->args[1], k, o, i, key);
      LLVMValueRef at = hre ? LLVMBuildSub(L->bld, k, L->pl_base, "") : NULL;
      Cx prev = hre ? (Cx){ldf(L, hre, at), ldf(L, him, at)} : ldc(L, h, k, n->w);
      if (n->w == 2) {
        Cx p = cx_mul(L, a, prev);
        v = (Cx){fadd(L, p.re, bv.re), fadd(L, p.im, bv.im)};
      } else if (maxplus) {
        v.re = emit_binary(L, IR_MAX, fadd(L, a.re, prev.re), bv.re);
      } else {
        v.re = fadd(L, fmul(L, a.re, prev.re), bv.re);
      }
      if (hre) {
        stf(L, v.re, hre, at);
        stf(L, v.im, him, at);
      } else {
        stc(L, v, h, k, n->w);
      }
      if (g->delay >= 0) {
        L->fval[g->delay] = prev.re;
        L->fval_im[g->delay] = n->w == 2 ? prev.im : NULL;
        if (L->v[g->delay].stored) stc(L, prev, rowptr(L, g->delay), k, n->w);
      }
    } else if (r == g->delay) {
      continue;
    } else if (nd->op == IR_SUM || nd->op == IR_MEAN || nd->op == IR_MATMUL) {
      Cx x = fused_operand(L, nd->args[0], k, o, i, key);
      if (nd->op == IR_MATMUL) x.re = fmul(L, x.re, ldf(L, rowptr(L, nd->args[1]), i));
      LLVMValueRef s = fadd(L, acc[2 * m], x.re);
      set_reassoc(s);
      loop_phi_next(L, acc[2 * m], s);
      if (n->w == 2) {
        LLVMValueRef si = fadd(L, acc[2 * m + 1], x.im);
        set_reassoc(si);
        loop_phi_next(L, acc[2 * m + 1], si);
      }
      continue;
    } else {
      v = fused_value(L, r, k, o, i, key);
    }
    L->fval[r] = v.re;
    L->fval_im[r] = n->w == 2 ? v.im : NULL;
    if (n->stored) stc(L, v, rowptr(L, r), k, n->w);
  }
  loop_end(L, &li);
  /* After the loop over the last axis, a phi holds its sum. */
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    if (!(nd->op == IR_SUM || nd->op == IR_MEAN || nd->op == IR_MATMUL)) continue;
    Cx s = {acc[2 * m], acc[2 * m + 1]};
    if (nd->op == IR_MEAN) {
      LLVMValueRef d = cf(L, (double)(last ? last : 1));
      s.re = LLVMBuildFDiv(L->bld, s.re, d, "");
      if (s.im) s.im = LLVMBuildFDiv(L->bld, s.im, d, "");
    }
    stc(L, s, rowptr(L, r), o, L->v[r].w);
  }
  loop_end(L, &lo);
  loop_end(L, &lt);
  if (hre) planar_copy(L, h, hre, him, last, ob, oend, i0, i1, 0);
  L->pl_re = L->pl_im = NULL;
  L->pl_base = NULL;
}

void emit_scan_group(Lower *L, const SchedOp *op) {
  const SchedScanGroup *g = op->group;
  const SchedValue *key = &L->v[op->node];
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  int64_t outer = last ? key->numel / last : 0;
  int64_t nblocks = g->block ? (outer + g->block - 1) / g->block : 0;
  int64_t npieces = g->split < last ? (last + g->split - 1) / g->split : 1;
  if (nblocks * npieces == 0) return; /* an empty state */
  for (int m = 0; m < g->nmembers; m++) L->fmember[g->members[m]] = 1;
  emit_parallel_for(L, mul(L, L->a_B, ci64(L, nblocks * npieces)), NULL, scan_item, op);
  for (int m = 0; m < g->nmembers; m++) {
    L->fmember[g->members[m]] = 0;
    L->fval[g->members[m]] = L->fval_im[g->members[m]] = NULL;
  }
}

/* state_out: next at each sequence's last step (t = len - 1, or 0 run
 * backwards); the initial value when the sequence is empty. */
void emit_seq_final_states(Lower *L) {
  const IrFunc *fn = L->fn;
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    int64_t floats = in->bufs.v[in->state_buf[s]].row_floats;
    LLVMBasicBlockRef check = block(L, "ocheck"), copy = block(L, "ocopy"),
                      next = block(L, "onext");
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_sout, ""), next, check);
    LLVMPositionBuilderAtEnd(bld, check);
    LLVMValueRef dst = ldp(L, L->a_sout, in->states[s]);
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, dst, ""), next, copy);
    LLVMPositionBuilderAtEnd(bld, copy);
    Loop lb;
    LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
    LLVMValueRef len = len_of(L, b);
    LLVMValueRef empty = LLVMBuildICmp(bld, LLVMIntEQ, len, ci64(L, 0), "");
    LLVMValueRef lastp = phys(L, len, LLVMBuildSub(bld, len, ci64(L, 1), ""));
    lastp = LLVMBuildSelect(bld, empty, ci64(L, 0), lastp, "");
    LLVMValueRef init = gepf(L, L->buf[in->state_buf[s]], mul(L, b, ci64(L, floats)));
    /* A fused scan, or a chunked form, runs in the state's storage, which
     * ends as the final state (and holds the initial one when the sequence
     * is empty); so does every state in time chunks. */
    LLVMValueRef src = L->v[nx].group >= 0 || in->chunked
                           ? init
                           : LLVMBuildSelect(bld, empty, init, row_at(L, nx, b, lastp), "");
    copy_row(L, dst, src, floats, b, ci64(L, 0));
    loop_end(L, &lb);
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, next);
  }
}

/* In time chunks, a state not carried by a fused group (a window) takes
 * its next value at the last step of the chunk, for the examples with
 * steps in it: the next chunk's windows read it. */
void emit_chunk_states(Lower *L) {
  const IrFunc *fn = L->fn;
  const SchedInst *in = L->in;
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    if (L->v[nx].group >= 0) continue;
    int64_t floats = in->bufs.v[in->state_buf[s]].row_floats;
    Loop lb;
    LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
    LLVMValueRef len = len_of(L, b), first, count;
    step_range(L, len, &first, &count);
    LLVMBasicBlockRef copy = block(L, "ccopy"), next = block(L, "cnext");
    LLVMBuildCondBr(L->bld, LLVMBuildICmp(L->bld, LLVMIntSGT, count, ci64(L, 0), ""), copy, next);
    LLVMPositionBuilderAtEnd(L->bld, copy);
    LLVMValueRef lastp = LLVMBuildSub(L->bld, add(L, first, count), ci64(L, 1), "");
    LLVMValueRef dst = gepf(L, L->buf[in->state_buf[s]], mul(L, b, ci64(L, floats)));
    copy_row(L, dst, step_row(L, nx, b, len, lastp), floats, ci64(L, 0), ci64(L, 0));
    LLVMBuildBr(L->bld, next);
    LLVMPositionBuilderAtEnd(L->bld, next);
    loop_end(L, &lb);
  }
}
