/* seq.c - the sequential form: loops over the rows of a class, time chunks
 * and time steps, and the commit that ends a step (outputs of the step and
 * new states, for the examples still inside their sequence). */
#include "codegen/llvm.h"

/* [*lo, *hi) narrowed to piece item % per of it, in pieces of equal size
 * (the last ones short or empty). */
static void piece_range(Lower *L, LLVMValueRef item, LLVMValueRef per, LLVMValueRef *lo,
                        LLVMValueRef *hi) {
  LLVMBuilderRef b = L->bld;
  LLVMValueRef g = LLVMBuildSRem(b, item, per, "");
  LLVMValueRef n = LLVMBuildSub(b, *hi, *lo, "");
  LLVMValueRef size = LLVMBuildSDiv(b, add(L, n, LLVMBuildSub(b, per, ci64(L, 1), "")), per, "");
  LLVMValueRef a = add(L, *lo, mul(L, g, size));
  *hi = select_min(L, add(L, a, size), *hi);
  *lo = a;
}

/* Makes example b the current row of the step in hand (L->t): L->r_b, and
 * the token rows it reads. Rows past their sequence's end are computed on
 * row 0's tokens and thrown away; that keeps the batch GEMMs dense. Returns
 * whether b is still active at this step. */
LLVMValueRef enter_step_row(Lower *L, LLVMValueRef b) {
  L->r_b = b;
  LLVMValueRef len = len_of(L, b), t = L->t;
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef active = LLVMBuildICmp(L->bld, LLVMIntSLT, t, len, "");
  LLVMValueRef rt = LLVMBuildSub(L->bld, LLVMBuildSub(L->bld, len, ci64(L, 1), ""), t, "");
  LLVMValueRef te = LLVMBuildSelect(L->bld, isrev, rt, t, "");
  te = LLVMBuildSelect(L->bld, active, te, ci64(L, 0), "");
  L->r_tok = add(L, mul(L, b, L->a_T), te);
  if (L->in->chunked) L->r_tokc = add(L, mul(L, b, L->Tc), LLVMBuildSub(L->bld, t, L->t0, ""));
  return active;
}

/* The loop over the rows of class cls: every example's, or (item != NULL,
 * token rows only) piece item % per of example item / per's active steps. */
static void open_rows(Lower *L, RowLoop *rl, SchedClass cls, LLVMValueRef item, LLVMValueRef per) {
  if (rl->open) return;
  rl->open = 1;
  rl->cls = cls;
  rl->piece = item != NULL;
  L->r_b = item ? LLVMBuildSDiv(L->bld, item, per, "") : loop_begin(L, &rl->lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, L->r_b);
  LLVMValueRef bT = mul(L, L->r_b, L->a_T);
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef lm1 = LLVMBuildSub(L->bld, len, ci64(L, 1), "");
  if (cls == SCHED_EXAMPLE) {
    /* One row per example: the b loop alone. */
  } else if (cls == SCHED_TOKEN && L->in->chunked) {
    /* This example's active steps in the chunk: j < min(tn, len - t0). The
     * chunk row j holds step t0 + j, read at its token in the direction the
     * instance runs, so the time loop finds it at b*Tc + t - t0. */
    LLVMValueRef jn = select_min(L, LLVMBuildSub(L->bld, len, L->t0, ""), L->tn);
    LLVMValueRef j0 = ci64(L, 0);
    if (item) piece_range(L, item, per, &j0, &jn);
    LLVMValueRef j = loop_begin(L, &rl->lt, j0, jn);
    LLVMValueRef tt = add(L, L->t0, j);
    LLVMValueRef rt = LLVMBuildSub(L->bld, lm1, tt, "");
    L->r_tok = add(L, bT, LLVMBuildSelect(L->bld, isrev, rt, tt, ""));
    L->r_tokc = add(L, mul(L, L->r_b, L->Tc), j);
  } else if (cls == SCHED_TOKEN) {
    LLVMValueRef t0 = ci64(L, 0), t1 = len;
    if (item) piece_range(L, item, per, &t0, &t1);
    LLVMValueRef tt = loop_begin(L, &rl->lt, t0, t1);
    L->r_tok = add(L, bT, tt);
  } else {
    LLVMValueRef active = enter_step_row(L, L->r_b);
    /* A state written over in place must keep its value past the example's
     * length: its rows are skipped there. */
    int inplace = 0;
    for (int s = 0; s < L->fn->states.n; s++) inplace |= L->in->state_inplace[s];
    if (cls == SCHED_STEP && inplace) {
      LLVMBasicBlockRef act = block(L, "step_active");
      rl->skip = block(L, "step_inactive");
      LLVMBuildCondBr(L->bld, active, act, rl->skip);
      LLVMPositionBuilderAtEnd(L->bld, act);
    }
  }
}

void rows_open(Lower *L, RowLoop *rl, SchedClass cls) {
  open_rows(L, rl, cls, NULL, NULL);
}

void rows_open_piece(Lower *L, RowLoop *rl, LLVMValueRef item, LLVMValueRef per) {
  open_rows(L, rl, SCHED_TOKEN, item, per);
}

void rows_close(Lower *L, RowLoop *rl) {
  if (!rl->open) return;
  if (rl->skip) {
    LLVMBuildBr(L->bld, rl->skip);
    LLVMPositionBuilderAtEnd(L->bld, rl->skip);
    rl->skip = NULL;
  }
  if (rl->cls == SCHED_TOKEN) loop_end(L, &rl->lt);
  if (!rl->piece) loop_end(L, &rl->lb);
  rl->open = 0;
}

/* The row of node r's buffer that the current row reads. */
static LLVMValueRef source_row(Lower *L, const SchedValue *v) {
  return v->cls == SCHED_STEP || v->cls == SCHED_EXAMPLE ? L->r_b
         : v->cls == SCHED_CONST                         ? ci64(L, 0)
         : v->chunked                                    ? L->r_tokc
                                                         : L->r_tok;
}

void emit_commit(Lower *L) {
  const IrFunc *fn = L->fn;
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  RowLoop rl = {0};
  rows_open(L, &rl, SCHED_STEP);
  LLVMValueRef len = len_of(L, L->r_b);
  LLVMBasicBlockRef act = block(L, "active"), skip = block(L, "inactive");
  LLVMBuildCondBr(bld, LLVMBuildICmp(bld, LLVMIntSLT, L->t, len, ""), act, skip);
  LLVMPositionBuilderAtEnd(bld, act);
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    if (v < 0 || L->v[v].cls != SCHED_STEP) continue;
    copy_row(L, ldp(L, L->a_outputs, o), L->ll[v].base, sched_row_floats(&L->v[v]), L->r_tok,
             L->r_b);
  }
  /* A new value that is another state's old value (a shift register,
   * "a' = b") reads that state's storage, which this loop may already
   * have overwritten: such rows go through a per-state temporary first. */
  for (int s = 0; s < fn->states.n; s++) {
    if (in->state_tmp[s] < 0) continue;
    IrRef nx = fn->states.v[s].next;
    copy_row(L, L->buf[in->state_tmp[s]], L->ll[nx].base, in->bufs.v[in->state_buf[s]].row_floats,
             L->r_b, L->r_b);
  }
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    /* Carried unchanged, or already written over its storage. */
    if (nx < 0 || sched_state_alias(fn, nx) == s || in->state_inplace[s]) continue;
    const SchedValue *nv = &L->v[nx];
    int64_t floats = in->bufs.v[in->state_buf[s]].row_floats;
    int tmp = in->state_tmp[s] >= 0;
    LLVMValueRef src = tmp ? L->buf[in->state_tmp[s]] : L->ll[nx].base;
    copy_row(L, L->buf[in->state_buf[s]], src, floats, L->r_b, tmp ? L->r_b : source_row(L, nv));
  }
  LLVMBuildBr(bld, skip);
  LLVMPositionBuilderAtEnd(bld, skip);
  rows_close(L, &rl);
}

void emit_token_outputs(Lower *L) {
  const IrFunc *fn = L->fn;
  RowLoop rl = {0};
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    if (v < 0 || L->v[v].cls == SCHED_STEP) continue;
    rows_open(L, &rl, SCHED_TOKEN);
    copy_row(L, ldp(L, L->a_outputs, o), L->ll[v].base, sched_row_floats(&L->v[v]), L->r_tok,
             source_row(L, &L->v[v]));
  }
  rows_close(L, &rl);
}

void emit_chunk_loop(Lower *L, const SchedOp *op) {
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef T = L->a_T;
  Loop lc;
  LLVMValueRef nch =
      LLVMBuildSDiv(bld, add(L, T, LLVMBuildSub(bld, L->Tc, ci64(L, 1), "")), L->Tc, "");
  LLVMValueRef c = loop_begin(L, &lc, ci64(L, 0), nch);
  L->t0 = mul(L, c, L->Tc);
  L->tn = select_min(L, LLVMBuildSub(bld, T, L->t0, ""), L->Tc);
  emit_ops(L, op->body.v, op->body.n);
  loop_end(L, &lc);
}

void emit_time_loop(Lower *L, const SchedOp *op) {
  Loop lt;
  LLVMValueRef lo = L->in->chunked ? L->t0 : ci64(L, 0);
  LLVMValueRef hi = L->in->chunked ? add(L, L->t0, L->tn) : L->a_T;
  L->t = loop_begin(L, &lt, lo, hi);
  emit_ops(L, op->body.v, op->body.n);
  loop_end(L, &lt);
  L->t = NULL;
}
