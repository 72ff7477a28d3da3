/* attn.c - causal softmax attention (sched/attn.c): one call of the
 * runtime's tiled kernel (rt_cpu_attention) per example and head, on the
 * pool, over the example's tokens in the direction the instance runs (a
 * reversed sequence is read from its last token with negative strides, so
 * each token attends to those after it). */
#include "codegen/llvm.h"

static void attn_item(Lower *L, LLVMValueRef item, LLVMValueRef extra, const void *arg) {
  (void)extra;
  const SchedOp *op = arg;
  const SchedAttn *at = op->attn;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef b = LLVMBuildSDiv(bld, item, ci64(L, at->heads), "");
  LLVMValueRef h = LLVMBuildSRem(bld, item, ci64(L, at->heads), "");
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef isrev = LLVMBuildICmp(bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef last = LLVMBuildSub(bld, len, ci64(L, 1), "");
  LLVMValueRef t0 = LLVMBuildSelect(bld, isrev, last, ci64(L, 0), "");
  t0 =
      LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, len, ci64(L, 0), ""), t0, ci64(L, 0), "");
  LLVMValueRef dir = LLVMBuildSelect(bld, isrev, ci64(L, -1), ci64(L, 1), "");
  LLVMValueRef ldq, ldk, ldv, ldo;
  LLVMValueRef hk = mul(L, h, ci64(L, at->K)), hv = mul(L, h, ci64(L, at->V));
  LLVMValueRef q = gepf(L, seq_operand(L, at->q, b, t0, dir, &ldq), hk);
  LLVMValueRef k = gepf(L, seq_operand(L, at->k, b, t0, dir, &ldk), hk);
  LLVMValueRef v = gepf(L, seq_operand(L, at->v, b, t0, dir, &ldv), hv);
  LLVMValueRef o = gepf(L, seq_operand(L, op->node, b, t0, dir, &ldo), hv);
  LLVMValueRef work = gepf(
      L, L->buf[at->work_buf],
      add(L, mul(L, b, ci64(L, at->heads * at->work_head)), mul(L, h, ci64(L, at->work_head))));
  LLVMTypeRef pt[14] = {L->i64, L->i64, L->i64, L->i64, L->ptr, L->i64, L->ptr,
                        L->i64, L->ptr, L->i64, L->ptr, L->i64, L->f32, L->ptr};
  LLVMValueRef args[14] = {len,
                           ci64(L, 1),
                           ci64(L, at->K),
                           ci64(L, at->V),
                           q,
                           ldq,
                           k,
                           ldk,
                           v,
                           ldv,
                           o,
                           ldo,
                           cf(L, at->scale),
                           work};
  call_fn(L, "rt_cpu_attention", L->void_t, pt, 14, args);
}

void emit_attn(Lower *L, const SchedOp *op) {
  const SchedAttn *at = op->attn;
  if (at->heads < 1 || at->V < 1) return; /* nothing to compute */
  emit_parallel_for(L, mul(L, L->a_B, ci64(L, at->heads)), NULL, attn_item, op);
}
