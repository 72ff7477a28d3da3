/* gemm.c - matrix products the schedule runs as one GEMM over all rows of a
 * class, through the runtime (runtime/rt_cpu.h): the weight read as given
 * for calls with few tokens, or packed once per call for the packed kernel;
 * a complex weight through its real form. */
#include "codegen/llvm.h"

/* The rows of GEMM r's operand: its value's, or a chunk's copy of a
 * whole-sequence operand (a root input). */
static IrRef gemm_operand(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  return L->v[r].gemm == SCHED_GEMM_WX ? nd->args[1] : nd->args[0];
}

/* wr = the real form of a cgemm's complex weight W[N, K]: row 2n + c is
 * output part c (re, im) of W[n] @ y. */
static void emit_complex_real_form(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r], *w = &L->v[nd->args[0]], *y = &L->v[nd->args[1]];
  LLVMValueRef wr = L->ll[r].wr;
  int64_t N = w->shape[0], K = w->shape[1], Kr = n->gemm_k;
  Loop ln, lk;
  LLVMValueRef i = loop_begin(L, &ln, ci64(L, 0), ci64(L, N));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  Cx v = ldc(L, L->ll[nd->args[0]].base, add(L, mul(L, i, ci64(L, K)), k), 2);
  LLVMValueRef row_re = mul(L, mul(L, i, ci64(L, 2)), ci64(L, Kr));
  LLVMValueRef row_im = add(L, row_re, ci64(L, Kr));
  if (y->w == 1) {
    stf(L, v.re, wr, add(L, row_re, k));
    stf(L, v.im, wr, add(L, row_im, k));
  } else {
    LLVMValueRef c = mul(L, k, ci64(L, 2)), c1 = add(L, c, ci64(L, 1));
    stf(L, v.re, wr, add(L, row_re, c));
    stf(L, LLVMBuildFNeg(L->bld, v.im, ""), wr, add(L, row_re, c1));
    stf(L, v.im, wr, add(L, row_im, c));
    stf(L, v.re, wr, add(L, row_im, c1));
  }
  /* wr is the node's own: each (n, k) writes elements of its own. */
  loop_end_parallel(L, &lk);
  loop_end_parallel(L, &ln);
}

LLVMValueRef gemm_prepared(Lower *L, IrRef r) {
  int slot = L->v[r].prep;
  if (slot < 0) return LLVMConstNull(L->ptr);
  return ldp(L, L->a_params, L->s->sig.params.n + slot);
}

void emit_pack(Lower *L, IrRef r) {
  const SchedValue *n = &L->v[r];
  /* The weight is packed once per call for rt_cpu_sgemm_packed: W[N,K]
   * for W @ x (trans), W[K,N] for x @ W; not when the host prepared it. */
  int tr = n->gemm == SCHED_GEMM_WX;
  IrRef w = L->fn->nodes.v[r].args[tr ? 0 : 1];
  LLVMValueRef wb = L->ll[w].base;
  if (n->cgemm) {
    emit_complex_real_form(L, r);
    wb = L->ll[r].wr;
  }
  LLVMBasicBlockRef pack = block(L, "pack"), packed = block(L, "packed");
  LLVMValueRef own =
      LLVMBuildAnd(L->bld, L->packed, LLVMBuildIsNull(L->bld, gemm_prepared(L, r), ""), "");
  LLVMBuildCondBr(L->bld, own, pack, packed);
  LLVMPositionBuilderAtEnd(L->bld, pack);
  LLVMTypeRef pt[6] = {L->i64, L->i64, L->ptr, L->i64, L->i32, L->ptr};
  LLVMValueRef args[6] = {
      ci64(L, n->gemm_k), ci64(L, n->gemm_n), wb, ci64(L, tr ? n->gemm_k : n->gemm_n),
      ci32(L, tr),        L->ll[r].wt};
  call_fn(L, "rt_cpu_pack_b", L->void_t, pt, 6, args);
  LLVMBuildBr(L->bld, packed);
  LLVMPositionBuilderAtEnd(L->bld, packed);
}

/* Copies the current chunk's rows of a whole-sequence GEMM operand into
 * gath, so the chunk's product is one GEMM over B*Tc rows. */
static void emit_gather(Lower *L, IrRef r) {
  IrRef xv = gemm_operand(L, r);
  RowLoop rl = {0};
  rows_open(L, &rl, SCHED_TOKEN);
  copy_row(L, L->ll[r].gath, L->ll[xv].base, sched_row_floats(&L->v[xv]), L->r_tokc, L->r_tok);
  rows_close(L, &rl);
}

void emit_gemm(Lower *L, IrRef r, LLVMValueRef rows) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r];
  IrRef xv = gemm_operand(L, r);
  int64_t per_row = n->gemm_k ? sched_row_floats(&L->v[xv]) / n->gemm_k : 0;
  LLVMValueRef M = mul(L, rows, ci64(L, per_row));
  LLVMValueRef A = L->ll[xv].base;
  if (L->ll[r].gath) {
    /* A batch of one running forwards has the chunk's steps as rows t0 ..
     * t0 + tn of the operand already: the product reads them there (tn
     * rows, so never past the sequence), and only other calls gather. */
    LLVMBuilderRef bld = L->bld;
    LLVMValueRef direct =
        LLVMBuildAnd(bld, LLVMBuildICmp(bld, LLVMIntEQ, L->a_B, ci64(L, 1), ""),
                     LLVMBuildICmp(bld, LLVMIntEQ, L->a_rev, ci32(L, 0), ""), "direct");
    LLVMBasicBlockRef gather = block(L, "gather"), gathered = block(L, "gathered");
    LLVMBuildCondBr(bld, direct, gathered, gather);
    LLVMPositionBuilderAtEnd(bld, gather);
    emit_gather(L, r);
    LLVMBuildBr(bld, gathered);
    LLVMPositionBuilderAtEnd(bld, gathered);
    LLVMValueRef at = gepf(L, A, mul(L, L->t0, ci64(L, sched_row_floats(&L->v[xv]))));
    A = LLVMBuildSelect(bld, direct, at, L->ll[r].gath, "");
    M = LLVMBuildSelect(bld, direct, mul(L, L->tn, ci64(L, per_row)), M, "");
  }
  /* The weight as given, and its packed form: the host's (SYM_prepare), or
   * packed at the start of the call unless the call has too few tokens for
   * packing to pay. */
  int tr = n->gemm == SCHED_GEMM_WX;
  LLVMValueRef W = n->cgemm ? L->ll[r].wr : L->ll[nd->args[tr ? 0 : 1]].base;
  LLVMValueRef prep = gemm_prepared(L, r);
  LLVMValueRef Bp = LLVMBuildSelect(L->bld, L->packed, L->ll[r].wt, LLVMConstNull(L->ptr), "");
  Bp = LLVMBuildSelect(L->bld, LLVMBuildIsNull(L->bld, prep, ""), Bp, prep, "");
  LLVMTypeRef pt[11] = {L->i64, L->i64, L->i64, L->ptr, L->i64, L->ptr,
                        L->i64, L->i32, L->ptr, L->ptr, L->i64};
  LLVMValueRef args[11] = {M,
                           ci64(L, n->gemm_n),
                           ci64(L, n->gemm_k),
                           A,
                           ci64(L, n->gemm_k),
                           W,
                           ci64(L, tr ? n->gemm_k : n->gemm_n),
                           ci32(L, tr),
                           Bp,
                           L->ll[r].base,
                           ci64(L, n->gemm_n)};
  call_fn(L, "rt_cpu_sgemm_w", L->void_t, pt, 11, args);
}
