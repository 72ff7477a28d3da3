/* scan.c - a cell's parallel form (passes/scan.c): the sequence ops scan,
 * scan_max, delay and window over each example's sequence, in the direction
 * the instance runs, and the final states they leave.
 *
 * Token rows are physical positions (b*T + t); an instance run backwards
 * (a reversed layer) processes step tau at t = len - 1 - tau, so "the
 * previous step" is t + 1 there and the last step is t = 0.
 */
#include "codegen/llvm.h"

#include <math.h>
#include <string.h>

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
  LLVMValueRef row = v->cls == SCHED_CONST ? ci64(L, 0)
                     : v->cls == SCHED_STEP || v->cls == SCHED_EXAMPLE
                         ? b
                         : add(L, mul(L, b, L->a_T), t);
  return gepf(L, L->ll[r].base, mul(L, row, ci64(L, sched_row_floats(v))));
}

/* The steps of example b this call runs: its whole sequence, or in time
 * chunks the chunk's steps [t0, t0 + tn) that lie inside it (first, count). */
void step_range(Lower *L, LLVMValueRef len, LLVMValueRef *first, LLVMValueRef *count) {
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
LLVMValueRef step_row(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef len, LLVMValueRef tau) {
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
  LLVMValueRef len = len_of(L, b), first, count;
  step_range(L, len, &first, &count);
  /* The value entering the first step this call runs: the initial value, or
   * in time chunks the storage of the state this delay is, which holds the
   * last chunk's last value (emit_chunk_states). */
  LLVMValueRef x0 = row_at(L, nd->args[1], b, ci64(L, 0));
  LLVMValueRef rel = loop_begin(L, &lt, ci64(L, 0), count);
  LLVMValueRef tau = add(L, first, rel);
  LLVMValueRef at0 = LLVMBuildICmp(L->bld, LLVMIntEQ, rel, ci64(L, 0), "");
  LLVMValueRef prev =
      LLVMBuildSelect(L->bld, at0, tau, LLVMBuildSub(L->bld, tau, ci64(L, 1), ""), "");
  LLVMValueRef src = LLVMBuildSelect(L->bld, at0, x0, step_row(L, nd->args[0], b, len, prev), "");
  LLVMValueRef dst = step_row(L, r, b, len, tau);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, floats));
  stf(L, ldf(L, src, k), dst, k);
  /* dst is the delay's own buffer, never its operand's (a delay is not
   * elementwise: the in-place rule does not reach it). */
  loop_end_parallel(L, &lk);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* A shift register's value entering step tau: along the axis, entries
 * [tau*m, tau*m + n) of the stream w0 (n entries), v at step 0 (m), v at
 * step 1 (m), ...; leaving it (an "after" window) those from (tau+1)*m. In
 * time chunks w0 is the storage, which holds the window entering the chunk
 * (emit_chunk_states), and tau counts from t0. */
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
  /* A window after the step that only its state reads (the register's next
   * value) is read at the last step alone (emit_chunk_states,
   * emit_seq_final_states). */
  int after = nd->index != 0;
  LLVMValueRef lo = ci64(L, 0);
  if (sched_window_last_only(L->in, r))
    lo = LLVMBuildSelect(L->bld, LLVMBuildICmp(L->bld, LLVMIntSGT, count, ci64(L, 0), ""),
                         LLVMBuildSub(L->bld, count, ci64(L, 1), ""), ci64(L, 0), "");
  LLVMValueRef rel = loop_begin(L, &lt, lo, count);
  LLVMValueRef dst = step_row(L, r, b, len, add(L, first, rel));
  LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, nlen));
  LLVMValueRef p = add(L, mul(L, add(L, rel, ci64(L, after)), ci64(L, mlen)), j);
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
  /* dst is the window's own row (a window is not elementwise: never in
   * place), an element per (j, q, k). */
  loop_end_parallel(L, &lk);
  loop_end_parallel(L, &lq);
  loop_end_parallel(L, &lj);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

enum { CONV_FAST_TAPS = 64 }; /* longer kernels take the general loop for every step */

/* out[tau] = b + sum_k w[:, k] u[tau - K + 1 + k] over the steps this call
 * runs, u before the first of them read from s0 [D, K-1], the window state's
 * storage (its initial value, or in time chunks the window entering the
 * chunk). Steps whose taps all lie in this call's rows take the fast loop:
 * K row pointers, then a loop over the channels that vectorizes. */
void emit_conv_window(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r], *w = &L->v[nd->args[1]], *bias = &L->v[nd->args[2]];
  int64_t D = n->numel, K = D ? w->numel / D : 0, M = K - 1;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef wb = L->ll[nd->args[1]].base, bb = L->ll[nd->args[2]].base;
  Loop lb, lh, lt, ld;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b), first, count;
  step_range(L, len, &first, &count);
  LLVMValueRef w0 = row_at(L, nd->args[3], b, ci64(L, 0));
  /* The first M steps: taps before the first read s0. */
  LLVMValueRef head = K <= CONV_FAST_TAPS ? select_min(L, count, ci64(L, M)) : count;
  LLVMValueRef rel = loop_begin(L, &lh, ci64(L, 0), head);
  LLVMValueRef dst = step_row(L, r, b, len, add(L, first, rel));
  LLVMValueRef d = loop_begin(L, &ld, ci64(L, 0), ci64(L, D));
  LLVMValueRef acc = ldf(L, bb, bias->numel == 1 ? ci64(L, 0) : d);
  for (int64_t k = 0; k < K; k++) {
    LLVMValueRef p = add(L, rel, ci64(L, k - M));
    LLVMValueRef in_rows = LLVMBuildICmp(bld, LLVMIntSGE, p, ci64(L, 0), "");
    LLVMValueRef pu = LLVMBuildSelect(bld, in_rows, p, ci64(L, 0), "");
    LLVMValueRef ps = LLVMBuildSelect(bld, in_rows, ci64(L, -1), p, "");
    LLVMValueRef uv = ldf(L, step_row(L, nd->args[0], b, len, add(L, first, pu)), d);
    LLVMValueRef sv = ldf(L, w0, add(L, mul(L, d, ci64(L, M)), add(L, ci64(L, M), ps)));
    LLVMValueRef x = LLVMBuildSelect(bld, in_rows, uv, sv, "");
    acc = fadd(L, acc, fmul(L, ldf(L, wb, add(L, mul(L, d, ci64(L, K)), ci64(L, k))), x));
  }
  stf(L, acc, dst, d);
  /* dst is the convolution's own row, an element per channel; it reads
   * only operands (below too). */
  loop_end_parallel(L, &ld);
  loop_end(L, &lh);
  /* The rest: every tap in this call's rows. */
  LLVMValueRef t = loop_begin(L, &lt, head, count);
  if (K > CONV_FAST_TAPS) { /* every step took the loop above */
    loop_end(L, &lb);
    return;
  }
  LLVMValueRef taps[CONV_FAST_TAPS];
  int64_t nt = K;
  for (int64_t k = 0; k < nt; k++)
    taps[k] = step_row(L, nd->args[0], b, len, add(L, first, add(L, t, ci64(L, k - M))));
  dst = step_row(L, r, b, len, add(L, first, t));
  d = loop_begin(L, &ld, ci64(L, 0), ci64(L, D));
  acc = ldf(L, bb, bias->numel == 1 ? ci64(L, 0) : d);
  for (int64_t k = 0; k < nt; k++)
    acc = fadd(L, acc,
               fmul(L, ldf(L, wb, add(L, mul(L, d, ci64(L, K)), ci64(L, k))), ldf(L, taps[k], d)));
  stf(L, acc, dst, d);
  loop_end_parallel(L, &ld);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* An array of n floats in the function's entry block, 64-byte aligned. */
static LLVMValueRef entry_array(Lower *L, int64_t n, const char *name) {
  LLVMValueRef a = entry_alloca(L, LLVMArrayType(L->f32, (unsigned)(n ? n : 1)), name);
  LLVMSetAlignment(a, 64);
  return a;
}

/* ---- fused scans ------------------------------------------------------------ */

/* A fused scan (sched/scan.c): per example, per block of the state's
 * leading rows, per piece of its last axis, per step, one element loop
 * computes the members in node order: the coefficients, the update of the
 * running value (in the state's storage, so it ends as the final state), the
 * reads of the new value and of the old (delay), and the sums over the last
 * axis, which are stored per token after the loop over that axis. The
 * (example, block, piece) items touch disjoint elements, so they run on the
 * runtime's pool.
 *
 * When those items leave threads idle (one example, a narrow state) and
 * the sequence is long, a real group also splits its steps: the two-level
 * scan. With P threads per item the steps are cut into P + 1 parts, and
 *   1. one round runs part 0 as usual, in the storage, while part j (1 <= j
 *      < P) composes its steps' coefficients from the identity, (A, B) =
 *      (a_t A, a_t B + b_t) per step ((a_t + A, max(a_t + B, b_t)) over
 *      (max, +)), into the group's time_buf: only the members that feed the
 *      scan are computed, nothing is stored;
 *   2. the calling thread folds: the state entering part j + 1 is A h + B
 *      of the state entering part j (h after part 0 enters part 1), kept in
 *      part j's slot, and the storage takes the state entering part P;
 *   3. a second round runs parts 1 .. P as usual, each from its entering
 *      state: part P in the storage (which ends as the final state), the
 *      others in their slots.
 * Every step's coefficients are computed twice, so P threads finish in
 * about 2 / (P + 1) of the time of one: 1.5x faster on two threads, 8.5x
 * on sixteen. The results differ from the step loop's by float32
 * reassociation, as any scan's do. */

/* One item of a fused scan: its example, its elements (rows [ob, oend) of
 * the state's leading axes, last-axis range [i0, i1)) and its steps. */
typedef struct ScanItem {
  LLVMValueRef b, len, first, count, ob, oend, i0, i1;
  LLVMValueRef h; /* the example's row of the state's storage */
} ScanItem;

/* The phases of a scan split in time (see above), and the whole scan. */
typedef enum { SCAN_WHOLE, SCAN_FIRST, SCAN_REST } ScanPhase;
typedef struct ScanRun {
  const SchedOp *op;
  ScanPhase phase;
} ScanRun;

/* A part has at least this many steps and element-steps (a few
 * microseconds of work: the pool's workers spin between the two rounds, so
 * a round costs about a microsecond). A time chunk of a cell with GEMMs is a
 * few hundred steps at B = 1 (sched/build.c), so the bound in steps is low. */
#define SCAN_MIN_PART_STEPS 32
#define SCAN_MIN_PART_WORK 2048

/* How a group's state splits into items: rows of its last axis (outer of
 * them, in nblocks blocks) and pieces of that axis. */
typedef struct GroupShape {
  int64_t last, outer, nblocks, npieces;
} GroupShape;

static GroupShape group_shape(const SchedScanGroup *g, const SchedValue *key) {
  GroupShape s;
  s.last = key->rank ? key->shape[key->rank - 1] : 1;
  s.outer = s.last ? key->numel / s.last : 0;
  s.nblocks = g->block ? (s.outer + g->block - 1) / g->block : 0;
  s.npieces = g->split < s.last ? (s.last + g->split - 1) / g->split : 1;
  return s;
}

/* Item `rest` of the (example, block, piece) items. */
static void scan_item_at(Lower *L, const SchedOp *op, LLVMValueRef rest, ScanItem *it) {
  const SchedScanGroup *g = op->group;
  GroupShape gs = group_shape(g, &L->v[op->node]);
  int64_t last = gs.last, outer = gs.outer, nblocks = gs.nblocks, npieces = gs.npieces;
  int64_t srow = L->in->bufs.v[L->in->state_buf[g->state]].row_floats;
  LLVMValueRef piece = LLVMBuildSRem(L->bld, rest, ci64(L, npieces), "");
  rest = LLVMBuildSDiv(L->bld, rest, ci64(L, npieces), "");
  LLVMValueRef blk = LLVMBuildSRem(L->bld, rest, ci64(L, nblocks), "");
  it->b = LLVMBuildSDiv(L->bld, rest, ci64(L, nblocks), "");
  L->r_b = it->b;
  it->len = len_of(L, it->b);
  step_range(L, it->len, &it->first, &it->count);
  it->h = gepf(L, L->buf[L->in->state_buf[g->state]], mul(L, it->b, ci64(L, srow)));
  it->ob = mul(L, blk, ci64(L, g->block));
  it->oend = select_min(L, add(L, it->ob, ci64(L, g->block)), ci64(L, outer));
  /* A whole last axis keeps its constant trip count. */
  it->i0 = ci64(L, 0);
  it->i1 = ci64(L, last);
  if (npieces > 1) {
    it->i0 = mul(L, piece, ci64(L, g->split));
    it->i1 = select_min(L, add(L, it->i0, ci64(L, g->split)), ci64(L, last));
  }
}

/* Sets the token rows of step rel (of the example's steps this call runs). */
static void at_step(Lower *L, const ScanItem *it, LLVMValueRef rel) {
  L->r_tok = add(L, mul(L, it->b, L->a_T), phys(L, it->len, add(L, it->first, rel)));
  if (L->in->chunked) L->r_tokc = add(L, mul(L, it->b, L->Tc), rel);
}

/* Index of element (o, i) of the item in its private copies: planar ones
 * keep the state's order from row ob, transposed ones put the last axis
 * outer, block rows apart. */
static LLVMValueRef copy_index(Lower *L, const SchedScanGroup *g, const ScanItem *it, int64_t last,
                               LLVMValueRef o, LLVMValueRef i, LLVMValueRef k) {
  if (g->transposed)
    return add(L, mul(L, i, ci64(L, g->block)), LLVMBuildSub(L->bld, o, it->ob, ""));
  return LLVMBuildSub(L->bld, k, mul(L, it->ob, ci64(L, last)), "");
}

/* Copies the item's elements between the state-shaped row `row` and the
 * copies re (and im, planar): in before the loop over time (in), or out
 * after it. */
static void block_copy(Lower *L, const SchedScanGroup *g, const ScanItem *it, int64_t last,
                       LLVMValueRef row, LLVMValueRef re, LLVMValueRef im, int in) {
  Loop lo, li;
  LLVMValueRef o = loop_begin(L, &lo, it->ob, it->oend);
  LLVMValueRef i = loop_begin(L, &li, it->i0, it->i1);
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  LLVMValueRef at = copy_index(L, g, it, last, o, i, k);
  if (im && in) {
    Cx v = ldc(L, row, k, 2);
    stf(L, v.re, re, at);
    stf(L, v.im, im, at);
  } else if (im) {
    stc(L, (Cx){ldf(L, re, at), ldf(L, im, at)}, row, k, 2);
  } else if (in) {
    stf(L, ldf(L, row, k), re, at);
  } else {
    stf(L, ldf(L, re, at), row, k);
  }
  /* Between the state's storage and the item's copies, an element to its
   * own place: no two iterations touch one element. */
  loop_end_parallel(L, &li);
  loop_end(L, &lo);
}

static int is_sum(IrOp op) {
  return op == IR_SUM || op == IR_MEAN || op == IR_MATMUL;
}

/* The running value after one step, a h + b (max(a + h, b) over (max, +)),
 * w floats per element. Complex: re = a.re h.re + (b.re - a.im h.im) and
 * its imaginary twin in fused multiply-adds, b's part first, so that the
 * chain from one step's h to the next is two of them (contraction left to
 * LLVM fused b's product instead and put a multiply on the chain); a real
 * gate scales both parts. */
static Cx scan_next(Lower *L, int maxplus, int w, Cx a, Cx b, Cx h) {
  if (w == 2 && cx_is_real(a))
    return (Cx){fmuladd(L, a.re, h.re, b.re), fmuladd(L, a.re, h.im, b.im)};
  if (w == 2) {
    LLVMValueRef re = fmuladd(L, LLVMBuildFNeg(L->bld, a.im, ""), h.im, b.re);
    LLVMValueRef im = fmuladd(L, a.im, h.re, b.im);
    return (Cx){fmuladd(L, a.re, h.re, re), fmuladd(L, a.re, h.im, im)};
  }
  if (maxplus) return (Cx){emit_binary(L, IR_MAX, fadd(L, a.re, h.re), b.re), NULL};
  return (Cx){fadd(L, fmul(L, a.re, h.re), b.re), NULL};
}

/* Where an element's members keep what outlives the element: the running
 * value (the storage h at k, or the copies hre/him at L->pl_at), and the
 * sums over the last axis, as phis of the loop over that axis (acc, two per
 * member) or, transposed, in arrays of the block's rows (rows, one per
 * member, index o - ob). */
typedef struct ScanElem {
  LLVMValueRef h, hre, him, *acc, *rows, ob;
} ScanElem;

/* Element (o, i) of the current step: every member, in node order. */
static void scan_element(Lower *L, const SchedOp *op, const ScanElem *e, LLVMValueRef k,
                         LLVMValueRef o, LLVMValueRef i) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &L->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX;
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &L->v[r];
    Cx v = {NULL, NULL};
    if (r == scan) {
      Cx a = fused_operand(L, sn->args[0], k, o, i, key);
      Cx bv = fused_operand(L, sn->args[1], k, o, i, key);
      Cx prev = e->hre ? (Cx){ldf(L, e->hre, L->pl_at), e->him ? ldf(L, e->him, L->pl_at) : NULL}
                       : ldc(L, e->h, k, n->w);
      v = scan_next(L, maxplus, n->w, a, bv, prev);
      if (e->hre) {
        stf(L, v.re, e->hre, L->pl_at);
        if (e->him) stf(L, v.im, e->him, L->pl_at);
      } else {
        stc(L, v, e->h, k, n->w);
      }
      if (g->delay >= 0) {
        L->fval[g->delay] = prev.re;
        L->fval_im[g->delay] = n->w == 2 ? prev.im : NULL;
        if (L->v[g->delay].stored) stc(L, prev, rowptr(L, g->delay), k, n->w);
      }
    } else if (r == g->delay) {
      continue;
    } else if (is_sum(nd->op)) {
      Cx x = fused_operand(L, nd->args[0], k, o, i, key);
      if (nd->op == IR_MATMUL) x.re = fmul(L, x.re, ldf(L, rowptr(L, nd->args[1]), i));
      if (e->rows) { /* real only (plan_copies) */
        LLVMValueRef at = LLVMBuildSub(L->bld, o, e->ob, "");
        stf(L, fadd(L, ldf(L, e->rows[m], at), x.re), e->rows[m], at);
        continue;
      }
      LLVMValueRef s = fadd(L, e->acc[2 * m], x.re);
      set_reassoc(s);
      loop_phi_next(L, e->acc[2 * m], s);
      if (n->w == 2) {
        LLVMValueRef si = fadd(L, e->acc[2 * m + 1], x.im);
        set_reassoc(si);
        loop_phi_next(L, e->acc[2 * m + 1], si);
      }
      continue;
    } else {
      v = fused_value(L, r, k, o, i, key);
    }
    L->fval[r] = v.re;
    L->fval_im[r] = n->w == 2 ? v.im : NULL;
    if (n->stored) stc(L, v, rowptr(L, r), k, n->w);
  }
}

/* A sum member's value at row o, stored per token (a mean divided). */
static void store_sum(Lower *L, IrRef r, Cx s, LLVMValueRef o, int64_t last) {
  if (L->fn->nodes.v[r].op == IR_MEAN) {
    LLVMValueRef d = cf(L, (double)(last ? last : 1));
    s.re = LLVMBuildFDiv(L->bld, s.re, d, "");
    if (s.im) s.im = LLVMBuildFDiv(L->bld, s.im, d, "");
  }
  stc(L, s, rowptr(L, r), o, L->v[r].w);
}

/* One step of a transposed item: the sums' rows zeroed, then per element
 * of the last axis a loop along the block's rows (the one that vectorizes),
 * then the sums stored. */
static void transposed_step(Lower *L, const SchedOp *op, const ScanItem *it, ScanElem *e,
                            int64_t last) {
  const SchedScanGroup *g = op->group;
  Loop lo, li;
  LLVMValueRef o = loop_begin(L, &lo, it->ob, it->oend);
  for (int m = 0; m < g->nmembers; m++)
    if (e->rows[m]) stf(L, cf(L, 0.0), e->rows[m], LLVMBuildSub(L->bld, o, it->ob, ""));
  loop_end(L, &lo);
  LLVMValueRef i = loop_begin(L, &li, it->i0, it->i1);
  o = loop_begin(L, &lo, it->ob, it->oend);
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  L->pl_at = copy_index(L, g, it, last, o, i, k);
  scan_element(L, op, e, k, o, i);
  loop_end(L, &lo);
  loop_end(L, &li);
  o = loop_begin(L, &lo, it->ob, it->oend);
  for (int m = 0; m < g->nmembers; m++)
    if (e->rows[m])
      store_sum(L, g->members[m],
                (Cx){ldf(L, e->rows[m], LLVMBuildSub(L->bld, o, it->ob, "")), NULL}, o, last);
  loop_end(L, &lo);
}

/* ---- rows in vector lanes ------------------------------------------------
 * A group with SchedScanGroup.lanes runs its item (one example, a block of
 * SCHED_SCAN_LANES rows) on a transposed copy of its state and on the
 * constants copied into the same layout once per call (emit_lane_copies),
 * element of the last axis by element, four (or two) at a time where the
 * axis allows (independent chains of the recurrence), the loop over the steps
 * inside: the running values are phis of that loop, the constants' vectors
 * loop-invariant, and every member is computed on vectors of the block's
 * rows (L->lanes makes the op table's constants and types vectors,
 * fused_operand reads vectors). Each sum over the last axis adds its
 * vector into a scratch of the tile's steps, stored into the steps' rows
 * of the output after the last element: no horizontal sum. S4D's update
 * and readout are then the eight fused multiply-adds per element the math
 * needs. */

/* Element i of the last axis, this step, on vectors of rows from ob: every
 * member in node order; the running value in *h (updated), each sum's vector
 * added to acc[m]. */
static void lane_element(Lower *L, const SchedOp *op, LLVMValueRef ob, LLVMValueRef i, Cx *h,
                         LLVMValueRef *acc) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &L->v[scan];
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &L->v[r];
    Cx v = {NULL, NULL};
    if (r == scan) {
      Cx a = fused_operand(L, sn->args[0], NULL, ob, i, key);
      Cx bv = fused_operand(L, sn->args[1], NULL, ob, i, key);
      Cx prev = *h;
      v = scan_next(L, sn->op == IR_SCAN_MAX, n->w, a, bv, prev);
      *h = v;
      if (g->delay >= 0) {
        L->fval[g->delay] = prev.re;
        L->fval_im[g->delay] = n->w == 2 ? prev.im : NULL;
      }
    } else if (r == g->delay) {
      continue;
    } else if (is_sum(nd->op)) {
      LLVMValueRef x = fused_operand(L, nd->args[0], NULL, ob, i, key).re;
      if (nd->op == IR_MATMUL) x = fmul(L, x, lane_splat(L, ldf(L, rowptr(L, nd->args[1]), i)));
      acc[m] = acc[m] ? fadd(L, acc[m], x) : x;
      continue;
    } else {
      v = fused_value(L, r, NULL, ob, i, key);
    }
    L->fval[r] = v.re;
    L->fval_im[r] = n->w == 2 ? v.im : NULL;
  }
}

/* Copy j of block blk of a rows-in-lanes group's copy buffer (real parts;
 * the imaginary ones follow, last * SCHED_SCAN_LANES floats on). */
static LLVMValueRef lane_copy_at(Lower *L, const SchedScanGroup *g, int64_t last, int w,
                                 LLVMValueRef blk, int j) {
  int64_t per = last * SCHED_SCAN_LANES * w;
  return gepf(L, L->buf[g->copy_buf],
              mul(L, add(L, mul(L, blk, ci64(L, g->ncopied)), ci64(L, j)), ci64(L, per)));
}

void emit_lane_copies(Lower *L, const SchedOp *op) {
  const SchedScanGroup *g = op->group;
  const SchedValue *key = &L->v[op->node];
  int64_t last = key->shape[key->rank - 1], nblocks = key->numel / last / SCHED_SCAN_LANES;
  int w = key->w;
  Loop lb, li, lo;
  LLVMValueRef blk = loop_begin(L, &lb, ci64(L, 0), ci64(L, nblocks));
  for (int j = 0; j < g->ncopied; j++) {
    LLVMValueRef dst = lane_copy_at(L, g, last, w, blk, j), src = rowptr(L, g->copied[j]);
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, last));
    LLVMValueRef o = loop_begin(L, &lo, ci64(L, 0), ci64(L, SCHED_SCAN_LANES));
    LLVMValueRef k =
        add(L, mul(L, add(L, mul(L, blk, ci64(L, SCHED_SCAN_LANES)), o), ci64(L, last)), i);
    LLVMValueRef at = add(L, mul(L, i, ci64(L, SCHED_SCAN_LANES)), o);
    Cx v = ldc(L, src, k, w);
    stf(L, v.re, dst, at);
    if (w == 2) stf(L, v.im, dst, add(L, at, ci64(L, last * SCHED_SCAN_LANES)));
    loop_end_parallel(L, &lo); /* from a node into the group's own copy buffer */
    loop_end(L, &li);
  }
  loop_end(L, &lb);
}

/* Steps per tile of a rows-in-lanes item: its sums' vectors for a tile (2
 * KiB each) and the per-row inputs it reads stay in L1 while every element
 * of the last axis runs over the tile. The inputs' rows of consecutive
 * steps are a row of the buffer apart (1 KiB for S4D's [256]), so they fall
 * in a few of L1's sets: 64 steps overflowed them (S4D at B = 8 on one
 * thread: 91-93 ms at 64 steps, 85-87 at 32, 84-86 at 16). */
#define LANE_TILE 32

/* Steps [lo, hi) of a rows-in-lanes item whose state and copies are in
 * e->hre (e->him) and L->pl_re (pl_im), transposed: in tiles of LANE_TILE
 * steps, per tile the sums accumulated in a scratch of the tile's vectors
 * (zeroed, then every element adds to it), then stored into the steps'
 * rows of the output (means divided). */
static void lanes_steps(Lower *L, const SchedOp *op, const ScanItem *it, ScanElem *e, int64_t last,
                        LLVMValueRef lo, LLVMValueRef hi) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  int lanes = SCHED_SCAN_LANES, cplx = e->him != NULL;
  /* Independent chains of the recurrence in flight: S4D's update is two
   * dependent fused multiply-adds a step, 8 cycles, against 8 a step per
   * element on two FMA ports; four elements hid it best (S4D at B = 8, one
   * thread: 2 -> 4 elements 88.4 -> 85.0 ms, 8 spilled: 90.5;
   * BENCHMARKS.md, 2026-12-06). */
  int group = last % 4 == 0 ? 4 : last % 2 == 0 ? 2 : 1;
  LLVMValueRef *acc = arena_calloc(L->a, (size_t)g->nmembers + 1, sizeof *acc);
  LLVMValueRef *sums = arena_calloc(L->a, (size_t)g->nmembers + 1, sizeof *sums);
  if (!acc || !sums) {
    L->failed = 1;
    return;
  }
  for (int m = 0; m < g->nmembers; m++)
    if (is_sum(fn->nodes.v[g->members[m]].op))
      sums[m] = entry_array(L, LANE_TILE * lanes, "lane_sums");
  Loop lk, lt, li;
  LLVMValueRef t0 = loop_begin_step(L, &lk, lo, hi, LANE_TILE);
  LLVMValueRef t1 = select_min(L, add(L, t0, ci64(L, LANE_TILE)), hi);
  L->lanes = lanes;
  LLVMValueRef zero = cf(L, 0.0);
  L->lanes = 0;
  LLVMValueRef rel = loop_begin(L, &lt, t0, t1);
  LLVMValueRef slot = mul(L, LLVMBuildSub(L->bld, rel, t0, ""), ci64(L, lanes));
  L->lanes = lanes;
  for (int m = 0; m < g->nmembers; m++)
    if (sums[m]) lane_store(L, zero, sums[m], slot);
  L->lanes = 0;
  loop_end(L, &lt);
  LLVMValueRef i = loop_begin_step(L, &li, ci64(L, 0), ci64(L, last), group);
  LLVMValueRef at[4];
  Cx h[4], phi[4];
  L->lanes = lanes;
  for (int u = 0; u < group; u++) {
    at[u] = mul(L, add(L, i, ci64(L, u)), ci64(L, lanes));
    h[u] = (Cx){lane_load(L, e->hre, at[u]), cplx ? lane_load(L, e->him, at[u]) : NULL};
  }
  L->lanes = 0;
  rel = loop_begin(L, &lt, t0, t1);
  for (int u = 0; u < group; u++) {
    phi[u] =
        (Cx){loop_phi(L, &lt, h[u].re, "lane"), cplx ? loop_phi(L, &lt, h[u].im, "lane") : NULL};
    h[u] = phi[u];
  }
  at_step(L, it, rel);
  slot = mul(L, LLVMBuildSub(L->bld, rel, t0, ""), ci64(L, lanes));
  memset(acc, 0, sizeof *acc * (size_t)g->nmembers);
  L->lanes = lanes;
  for (int u = 0; u < group; u++) {
    L->pl_at = at[u];
    lane_element(L, op, it->ob, add(L, i, ci64(L, u)), &h[u], acc);
  }
  for (int m = 0; m < g->nmembers; m++)
    if (acc[m]) lane_store(L, fadd(L, lane_load(L, sums[m], slot), acc[m]), sums[m], slot);
  L->lanes = 0;
  for (int u = 0; u < group; u++) {
    loop_phi_next(L, phi[u].re, h[u].re);
    if (cplx) loop_phi_next(L, phi[u].im, h[u].im);
  }
  loop_end(L, &lt);
  /* After the tile's steps, the phis hold the element's running value. */
  L->lanes = lanes;
  for (int u = 0; u < group; u++) {
    lane_store(L, phi[u].re, e->hre, at[u]);
    if (cplx) lane_store(L, phi[u].im, e->him, at[u]);
  }
  L->lanes = 0;
  loop_end(L, &li);
  /* The tile's sums into the steps' rows of the output. */
  rel = loop_begin(L, &lt, t0, t1);
  at_step(L, it, rel);
  slot = mul(L, LLVMBuildSub(L->bld, rel, t0, ""), ci64(L, lanes));
  L->lanes = lanes;
  for (int m = 0; m < g->nmembers; m++) {
    if (!sums[m]) continue;
    IrRef r = g->members[m];
    LLVMValueRef v = lane_load(L, sums[m], slot);
    if (fn->nodes.v[r].op == IR_MEAN) v = LLVMBuildFDiv(L->bld, v, cf(L, (double)last), "");
    lane_store(L, v, rowptr(L, r), it->ob);
  }
  L->lanes = 0;
  loop_end(L, &lt);
  loop_end(L, &lk);
}

/* Steps [lo, hi) of an item that is not rows-in-lanes: per step, the loop
 * over its elements (along the rows when transposed), each sum over the last
 * axis in a phi (or the transposed item's rows), stored per token. */
static void element_steps(Lower *L, const SchedOp *op, const ScanItem *it, ScanElem *e,
                          int64_t last, int copies, LLVMValueRef lo, LLVMValueRef hi) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  /* Accumulators of the sums. */
  e->acc = arena_calloc(L->a, (size_t)g->nmembers * 2 + 1, sizeof *e->acc);
  if (g->transposed) e->rows = arena_calloc(L->a, (size_t)g->nmembers + 1, sizeof *e->rows);
  if (!e->acc || (g->transposed && !e->rows)) {
    L->failed = 1;
    return;
  }
  for (int m = 0; m < g->nmembers && e->rows; m++)
    if (is_sum(fn->nodes.v[g->members[m]].op)) e->rows[m] = entry_array(L, g->block, "sum_rows");
  Loop lt, lo_, li;
  LLVMValueRef rel = loop_begin(L, &lt, lo, hi);
  at_step(L, it, rel);
  if (g->transposed) {
    transposed_step(L, op, it, e, last);
  } else {
    LLVMValueRef o = loop_begin(L, &lo_, it->ob, it->oend);
    LLVMValueRef i = loop_begin(L, &li, it->i0, it->i1);
    for (int m = 0; m < g->nmembers; m++)
      if (is_sum(fn->nodes.v[g->members[m]].op)) {
        e->acc[2 * m] = loop_phi(L, &li, cf(L, 0.0), "acc");
        if (L->v[g->members[m]].w == 2) e->acc[2 * m + 1] = loop_phi(L, &li, cf(L, 0.0), "acci");
      }
    LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
    if (copies) L->pl_at = copy_index(L, g, it, last, o, i, k);
    scan_element(L, op, e, k, o, i);
    /* Each element of the state runs its own recurrence: an iteration
     * reads and writes the running value, its copies and the stored
     * members at its own element (the sums are phis), and reads only
     * operands the group does not write. */
    loop_end_parallel(L, &li);
    /* After the loop over the last axis, a phi holds its sum. */
    for (int m = 0; m < g->nmembers; m++)
      if (is_sum(fn->nodes.v[g->members[m]].op))
        store_sum(L, g->members[m], (Cx){e->acc[2 * m], e->acc[2 * m + 1]}, o, last);
    loop_end(L, &lo_);
  }
  loop_end(L, &lt);
}

/* Steps [lo, hi) of the item, every member, the running value in h (the
 * storage, or a part's slot). */
static void scan_steps(Lower *L, const SchedOp *op, const ScanItem *it, LLVMValueRef h,
                       LLVMValueRef lo, LLVMValueRef hi) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = L->fn;
  const SchedValue *key = &L->v[op->node];
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  ScanElem e = {h, NULL, NULL, NULL, NULL, it->ob};
  /* The item's private copies of the state and constants. */
  int copies = g->planar_state || g->transposed;
  if (copies) {
    int64_t n = g->block * last;
    L->pl_re = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof *L->pl_re);
    L->pl_im =
        g->planar_state ? arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof *L->pl_im) : NULL;
    if (!L->pl_re || (g->planar_state && !L->pl_im)) {
      L->failed = 1;
      return;
    }
    e.hre = entry_array(L, n, "state_re");
    e.him = g->planar_state ? entry_array(L, n, "state_im") : NULL;
    block_copy(L, g, it, last, h, e.hre, e.him, 1);
    for (int j = 0; j < g->ncopied && g->copy_buf >= 0; j++) { /* made once (lanes) */
      IrRef a = g->copied[j];
      LLVMValueRef blk = LLVMBuildSDiv(L->bld, it->ob, ci64(L, g->block), "");
      L->pl_re[a] = lane_copy_at(L, g, last, L->v[op->node].w, blk, j);
      if (g->planar_state) L->pl_im[a] = gepf(L, L->pl_re[a], ci64(L, last * SCHED_SCAN_LANES));
    }
    for (int j = 0; j < g->ncopied && g->copy_buf < 0; j++) {
      IrRef a = g->copied[j];
      L->pl_re[a] = entry_array(L, n, "copy_re");
      if (g->planar_state) L->pl_im[a] = entry_array(L, n, "copy_im");
      block_copy(L, g, it, last, rowptr(L, a), L->pl_re[a], g->planar_state ? L->pl_im[a] : NULL,
                 1);
    }
  }
  if (g->lanes)
    lanes_steps(L, op, it, &e, last, lo, hi);
  else
    element_steps(L, op, it, &e, last, copies, lo, hi);
  if (copies) block_copy(L, g, it, last, h, e.hre, e.him, 0);
  L->pl_re = L->pl_im = NULL;
  L->pl_at = NULL;
}

/* Steps [lo, hi) of a real item composed into (A, B) in x and y (rows of
 * the state's shape): only the members that feed the scan (the prologue,
 * before it in node order), nothing stored. */
static void compose_steps(Lower *L, const SchedOp *op, const ScanItem *it, LLVMValueRef x,
                          LLVMValueRef y, LLVMValueRef lo, LLVMValueRef hi) {
  const SchedScanGroup *g = op->group;
  IrRef scan = op->node;
  const IrNode *sn = &L->fn->nodes.v[scan];
  const SchedValue *key = &L->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX;
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  Loop lo_, li, lt;
  /* The identity: h = 1 h + 0, or max(0 + h, -inf). */
  LLVMValueRef o = loop_begin(L, &lo_, it->ob, it->oend);
  LLVMValueRef i = loop_begin(L, &li, it->i0, it->i1);
  LLVMValueRef k = add(L, mul(L, o, ci64(L, last)), i);
  stf(L, cf(L, maxplus ? 0.0 : 1.0), x, k);
  stf(L, cf(L, maxplus ? -INFINITY : 0.0), y, k);
  /* Element k of the part's two rows in time_buf only, here and below (the
   * members are values, nothing of the group is stored). */
  loop_end_parallel(L, &li);
  loop_end_parallel(L, &lo_);
  LLVMValueRef rel = loop_begin(L, &lt, lo, hi);
  at_step(L, it, rel);
  o = loop_begin(L, &lo_, it->ob, it->oend);
  i = loop_begin(L, &li, it->i0, it->i1);
  k = add(L, mul(L, o, ci64(L, last)), i);
  for (int m = 0; m < g->nmembers && g->members[m] < scan; m++) {
    IrRef r = g->members[m];
    L->fval[r] = fused_value(L, r, k, o, i, key).re;
  }
  LLVMValueRef a = fused_operand(L, sn->args[0], k, o, i, key).re;
  LLVMValueRef bv = fused_operand(L, sn->args[1], k, o, i, key).re;
  LLVMValueRef A = ldf(L, x, k), B = ldf(L, y, k);
  if (maxplus) {
    stf(L, fadd(L, a, A), x, k);
    stf(L, emit_binary(L, IR_MAX, fadd(L, a, B), bv), y, k);
  } else {
    stf(L, fmul(L, a, A), x, k);
    stf(L, fadd(L, fmul(L, a, B), bv), y, k);
  }
  loop_end_parallel(L, &li);
  loop_end_parallel(L, &lo_);
  loop_end(L, &lt);
}

/* Slot q (1 <= q < P) of example b in time_buf: (A, B) of part q, then the
 * state entering it, in the first row. */
static LLVMValueRef slot(Lower *L, const SchedOp *op, LLVMValueRef b, LLVMValueRef q,
                         LLVMValueRef P) {
  int64_t numel = L->v[op->node].numel;
  LLVMValueRef idx = add(L, mul(L, b, LLVMBuildSub(L->bld, P, ci64(L, 1), "")),
                         LLVMBuildSub(L->bld, q, ci64(L, 1), ""));
  return gepf(L, L->buf[op->group->time_buf], mul(L, idx, ci64(L, 2 * numel)));
}

static void scan_item(Lower *L, LLVMValueRef item, LLVMValueRef extra, const void *arg) {
  const ScanRun *run = arg;
  const SchedOp *op = run->op;
  int64_t numel = L->v[op->node].numel;
  ScanItem it;
  if (run->phase == SCAN_WHOLE) {
    scan_item_at(L, op, item, &it);
    scan_steps(L, op, &it, it.h, ci64(L, 0), it.count);
    return;
  }
  /* Part j of P per item: steps [j plen, (j + 1) plen) of P + 1 parts. */
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef P = extra, j = LLVMBuildSRem(bld, item, P, "");
  scan_item_at(L, op, LLVMBuildSDiv(bld, item, P, ""), &it);
  LLVMValueRef plen = LLVMBuildSDiv(bld, add(L, it.count, P), add(L, P, ci64(L, 1)), "");
  if (run->phase == SCAN_FIRST) {
    LLVMBasicBlockRef first = block(L, "part0"), other = block(L, "compose"),
                      done = block(L, "parted");
    LLVMBuildCondBr(bld, LLVMBuildICmp(bld, LLVMIntEQ, j, ci64(L, 0), ""), first, other);
    LLVMPositionBuilderAtEnd(bld, first);
    scan_steps(L, op, &it, it.h, ci64(L, 0), select_min(L, plen, it.count));
    LLVMBuildBr(bld, done);
    LLVMPositionBuilderAtEnd(bld, other);
    LLVMValueRef x = slot(L, op, it.b, j, P);
    compose_steps(L, op, &it, x, gepf(L, x, ci64(L, numel)),
                  select_min(L, mul(L, j, plen), it.count),
                  select_min(L, mul(L, add(L, j, ci64(L, 1)), plen), it.count));
    LLVMBuildBr(bld, done);
    LLVMPositionBuilderAtEnd(bld, done);
    return;
  }
  LLVMValueRef q = add(L, j, ci64(L, 1));
  LLVMValueRef in_slot = LLVMBuildICmp(bld, LLVMIntSLT, q, P, "");
  LLVMValueRef h = LLVMBuildSelect(
      bld, in_slot, slot(L, op, it.b, LLVMBuildSelect(bld, in_slot, q, ci64(L, 1), ""), P), it.h,
      "");
  scan_steps(L, op, &it, h, select_min(L, mul(L, q, plen), it.count),
             LLVMBuildSelect(bld, in_slot,
                             select_min(L, mul(L, add(L, q, ci64(L, 1)), plen), it.count), it.count,
                             ""));
}

/* Between the rounds of a split scan, on the calling thread: per example,
 * the state entering each part from the one entering the part before (the
 * storage holds the state after part 0), kept in that part's slot; the
 * storage ends with the state entering the last part. */
static void fold_parts(Lower *L, const SchedOp *op, LLVMValueRef P) {
  const SchedScanGroup *g = op->group;
  int64_t numel = L->v[op->node].numel;
  int64_t srow = L->in->bufs.v[L->in->state_buf[g->state]].row_floats;
  int maxplus = L->fn->nodes.v[op->node].op == IR_SCAN_MAX;
  Loop lb, lj, lk;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef h = gepf(L, L->buf[L->in->state_buf[g->state]], mul(L, b, ci64(L, srow)));
  LLVMValueRef q = loop_begin(L, &lj, ci64(L, 1), P);
  LLVMValueRef x = slot(L, op, b, q, P), y = gepf(L, x, ci64(L, numel));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, numel));
  LLVMValueRef e = ldf(L, h, k), A = ldf(L, x, k), B = ldf(L, y, k);
  stf(L, e, x, k);
  stf(L, maxplus ? emit_binary(L, IR_MAX, fadd(L, A, e), B) : fadd(L, fmul(L, A, e), B), h, k);
  /* Element k of the state and of the part's two rows in time_buf only. */
  loop_end_parallel(L, &lk);
  loop_end(L, &lj);
  loop_end(L, &lb);
}

/* Threads per item for a split in time: those the items leave idle, as
 * many as the slots allow, parts of at least SCAN_MIN_PART_* steps; 1 (no
 * split) inside a part of another parallel loop. */
static LLVMValueRef time_parts(Lower *L, const SchedOp *op, int64_t items) {
  LLVMBuilderRef bld = L->bld;
  int64_t numel = L->v[op->node].numel;
  int64_t minpart = SCAN_MIN_PART_WORK / numel;
  if (minpart < SCAN_MIN_PART_STEPS) minpart = SCAN_MIN_PART_STEPS;
  LLVMValueRef threads =
      LLVMBuildSExt(bld, call_fn(L, "rt_cpu_get_num_threads", L->i32, NULL, 0, NULL), L->i64, "");
  LLVMValueRef nested = LLVMBuildICmp(
      bld, LLVMIntNE, call_fn(L, "rt_cpu_in_parallel", L->i32, NULL, 0, NULL), ci32(L, 0), "");
  /* B = 0 runs nothing; it only must not divide by 0. */
  LLVMValueRef B = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, L->a_B, ci64(L, 1), ""),
                                   ci64(L, 1), L->a_B, "");
  LLVMValueRef P = LLVMBuildSDiv(bld, threads, mul(L, B, ci64(L, items)), "");
  P = select_min(L, P, add(L, LLVMBuildSDiv(bld, ci64(L, SCHED_SCAN_SLOTS), B, ""), ci64(L, 1)));
  LLVMValueRef span = L->in->chunked ? L->tn : L->a_T;
  P = select_min(L, P,
                 LLVMBuildSub(bld, LLVMBuildSDiv(bld, span, ci64(L, minpart), ""), ci64(L, 1), ""));
  return LLVMBuildSelect(bld, nested, ci64(L, 1), P, "");
}

void emit_scan_group(Lower *L, const SchedOp *op) {
  const SchedScanGroup *g = op->group;
  GroupShape gs = group_shape(g, &L->v[op->node]);
  int64_t items = gs.nblocks * gs.npieces;
  if (items == 0) return; /* an empty state */
  for (int m = 0; m < g->nmembers; m++) L->fmember[g->members[m]] = 1;
  LLVMValueRef work = mul(L, L->a_B, ci64(L, items));
  ScanRun whole = {op, SCAN_WHOLE}, first = {op, SCAN_FIRST}, rest = {op, SCAN_REST};
  if (g->time_buf < 0) {
    emit_parallel_for(L, work, NULL, scan_item, &whole);
  } else {
    LLVMBuilderRef bld = L->bld;
    LLVMValueRef P = time_parts(L, op, items);
    LLVMBasicBlockRef split = block(L, "tsplit"), one = block(L, "tone"), done = block(L, "tdone");
    LLVMBuildCondBr(bld, LLVMBuildICmp(bld, LLVMIntSGE, P, ci64(L, 2), ""), split, one);
    LLVMPositionBuilderAtEnd(bld, split);
    emit_parallel_for(L, mul(L, work, P), P, scan_item, &first);
    fold_parts(L, op, P);
    emit_parallel_for(L, mul(L, work, P), P, scan_item, &rest);
    LLVMBuildBr(bld, done);
    LLVMPositionBuilderAtEnd(bld, one);
    emit_parallel_for(L, work, NULL, scan_item, &whole);
    LLVMBuildBr(bld, done);
    LLVMPositionBuilderAtEnd(bld, done);
  }
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
