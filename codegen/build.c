/* build.c - small IR-building helpers of the LLVM renderer: constants,
 * float loads and stores, counted loops with phis, intrinsics and runtime
 * calls, the failure exit. */
#include "codegen/llvm.h"

#include <llvm-c/IRReader.h>
#include <string.h>

LLVMValueRef ci64(Lower *L, int64_t v) {
  return LLVMConstInt(L->i64, (unsigned long long)v, 1);
}
LLVMValueRef ci32(Lower *L, int v) {
  return LLVMConstInt(L->i32, (unsigned long long)(int64_t)v, 1);
}
static LLVMValueRef splat(Lower *L, LLVMValueRef c) {
  if (!L->lanes) return c;
  LLVMValueRef e[64];
  for (int j = 0; j < L->lanes; j++) e[j] = c;
  return LLVMConstVector(e, (unsigned)L->lanes);
}
LLVMValueRef cf(Lower *L, double v) {
  return splat(L, LLVMConstReal(L->f32, v));
}
LLVMValueRef ei32(Lower *L, int v) {
  return splat(L, ci32(L, v));
}
LLVMValueRef ei64(Lower *L, int64_t v) {
  return splat(L, ci64(L, v));
}
LLVMValueRef ef64(Lower *L, double v) {
  return splat(L, LLVMConstReal(LLVMDoubleTypeInContext(L->cx), v));
}
LLVMValueRef lane_load(Lower *L, LLVMValueRef p, LLVMValueRef idx) {
  LLVMValueRef v =
      LLVMBuildLoad2(L->bld, LLVMVectorType(L->f32, (unsigned)L->lanes), gepf(L, p, idx), "");
  LLVMSetAlignment(v, 4);
  return v;
}
void lane_store(Lower *L, LLVMValueRef v, LLVMValueRef p, LLVMValueRef idx) {
  LLVMSetAlignment(LLVMBuildStore(L->bld, v, gepf(L, p, idx)), 4);
}
LLVMValueRef lane_splat(Lower *L, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(L->f32, (unsigned)L->lanes);
  LLVMValueRef u = LLVMBuildInsertElement(L->bld, LLVMGetUndef(vt), x, ci32(L, 0), "");
  return LLVMBuildShuffleVector(L->bld, u, LLVMGetUndef(vt),
                                LLVMConstNull(LLVMVectorType(L->i32, (unsigned)L->lanes)), "");
}
LLVMTypeRef et(Lower *L, LLVMTypeRef scalar) {
  return L->lanes ? LLVMVectorType(scalar, (unsigned)L->lanes) : scalar;
}
LLVMValueRef gepf(Lower *L, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildGEP2(L->bld, L->f32, p, &idx, 1, "");
}
LLVMValueRef ldf(Lower *L, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildLoad2(L->bld, L->f32, gepf(L, p, idx), "");
}
void stf(Lower *L, LLVMValueRef v, LLVMValueRef p, LLVMValueRef idx) {
  LLVMBuildStore(L->bld, v, gepf(L, p, idx));
}
LLVMValueRef ldp(Lower *L, LLVMValueRef arr, int i) {
  LLVMValueRef idx = ci64(L, i);
  return LLVMBuildLoad2(L->bld, L->ptr, LLVMBuildGEP2(L->bld, L->ptr, arr, &idx, 1, ""), "");
}
LLVMValueRef mul(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildMul(L->bld, x, y, "");
}
LLVMValueRef add(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildAdd(L->bld, x, y, "");
}
LLVMValueRef fmul(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFMul(L->bld, x, y, "");
}
LLVMValueRef fadd(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFAdd(L->bld, x, y, "");
}
LLVMValueRef fsub(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFSub(L->bld, x, y, "");
}
LLVMValueRef select_min(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildSelect(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, x, y, ""), x, y, "");
}
LLVMBasicBlockRef block(Lower *L, const char *name) {
  return LLVMAppendBasicBlockInContext(L->cx, L->fv, name);
}

LLVMValueRef loop_begin(Lower *L, Loop *lp, LLVMValueRef lo, LLVMValueRef hi) {
  return loop_begin_step(L, lp, lo, hi, 1);
}

/* A loop from lo by `step` while below hi. */
LLVMValueRef loop_begin_step(Lower *L, Loop *lp, LLVMValueRef lo, LLVMValueRef hi, int64_t step) {
  lp->step = step;
  lp->pre = LLVMGetInsertBlock(L->bld);
  lp->head = block(L, "loop");
  lp->body = block(L, "body");
  lp->exit = block(L, "done");
  LLVMBuildBr(L->bld, lp->head);
  LLVMPositionBuilderAtEnd(L->bld, lp->head);
  lp->iv = LLVMBuildPhi(L->bld, L->i64, "i");
  LLVMAddIncoming(lp->iv, &lo, &lp->pre, 1);
  LLVMBuildCondBr(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, lp->iv, hi, ""), lp->body, lp->exit);
  LLVMPositionBuilderAtEnd(L->bld, lp->body);
  return lp->iv;
}

void loop_end(Lower *L, Loop *lp) {
  LLVMValueRef next = LLVMBuildNSWAdd(L->bld, lp->iv, ci64(L, lp->step), "");
  LLVMBasicBlockRef from = LLVMGetInsertBlock(L->bld);
  LLVMBuildBr(L->bld, lp->head);
  LLVMAddIncoming(lp->iv, &next, &from, 1);
  LLVMPositionBuilderAtEnd(L->bld, lp->exit);
}

/* A loop ID whose iterations' memory accesses are independent, and the
 * access group they are tagged with:
 *   !0 = distinct !{!0, !1}   !1 = !{!"llvm.loop.parallel_accesses", !2}
 *   !2 = distinct !{}
 * The C API builds only uniqued metadata, and an access group must be a
 * distinct node without operands: the IR parser makes both, in the
 * module's context, which owns metadata (the parsed module can go). */
static int parallel_metadata(Lower *L, LLVMValueRef *id, LLVMValueRef *group) {
  static const char src[] = "!seq = !{!0, !2}\n"
                            "!0 = distinct !{!0, !1}\n"
                            "!1 = !{!\"llvm.loop.parallel_accesses\", !2}\n"
                            "!2 = distinct !{}\n";
  LLVMMemoryBufferRef mb =
      LLVMCreateMemoryBufferWithMemoryRange(src, sizeof src - 1, "parallel_accesses", 0);
  LLVMModuleRef m = NULL;
  char *err = NULL;
  if (LLVMParseIRInContext(L->cx, mb, &m, &err)) { /* takes mb */
    LLVMDisposeMessage(err);
    return -1;
  }
  LLVMValueRef ops[2];
  LLVMGetNamedMetadataOperands(m, "seq", ops);
  *id = ops[0];
  *group = ops[1];
  LLVMDisposeModule(m);
  return 0;
}

/* Adds group to the access groups of bb's loads and stores. An access
 * inside nested parallel loops is in the group of each (a list of groups:
 * an inner loop tagged first keeps its own when its outer loop is tagged). */
static void tag_accesses(Lower *L, LLVMBasicBlockRef bb, unsigned kind, LLVMValueRef group) {
  for (LLVMValueRef x = LLVMGetFirstInstruction(bb); x; x = LLVMGetNextInstruction(x)) {
    if (!LLVMIsALoadInst(x) && !LLVMIsAStoreInst(x)) continue;
    LLVMValueRef old = LLVMGetMetadata(x, kind);
    if (!old) {
      LLVMSetMetadata(x, kind, group);
      continue;
    }
    /* A group is an empty node, a list has the groups as operands. */
    unsigned n = LLVMGetMDNodeNumOperands(old);
    LLVMValueRef ops[8];
    if (n + 1 > sizeof ops / sizeof ops[0]) continue; /* deeper nests keep the inner claims */
    if (n == 0)
      ops[n++] = old;
    else
      LLVMGetMDNodeOperands(old, ops);
    ops[n++] = group;
    LLVMMetadataRef md[8];
    for (unsigned i = 0; i < n; i++) md[i] = LLVMValueAsMetadata(ops[i]);
    LLVMSetMetadata(x, kind, LLVMMetadataAsValue(L->cx, LLVMMDNodeInContext2(L->cx, md, n)));
  }
}

void loop_end_parallel(Lower *L, Loop *lp) {
  LLVMBasicBlockRef last = LLVMGetInsertBlock(L->bld);
  loop_end(L, lp);
  LLVMValueRef id, group;
  if (parallel_metadata(L, &id, &group)) return; /* a serial loop, vectorized with checks */
  /* The loop's blocks: its head and body, and every block its body added
   * (appended after its exit, which loop_begin made). */
  unsigned kind = LLVMGetMDKindIDInContext(L->cx, "llvm.access.group", 17);
  tag_accesses(L, lp->head, kind, group);
  tag_accesses(L, lp->body, kind, group);
  for (LLVMBasicBlockRef bb = LLVMGetNextBasicBlock(lp->exit); bb; bb = LLVMGetNextBasicBlock(bb))
    tag_accesses(L, bb, kind, group);
  LLVMSetMetadata(LLVMGetBasicBlockTerminator(last),
                  LLVMGetMDKindIDInContext(L->cx, "llvm.loop", 9), id);
}

LLVMValueRef loop_phi(Lower *L, Loop *lp, LLVMValueRef init, const char *name) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(L->bld);
  LLVMPositionBuilderBefore(L->bld, LLVMGetNextInstruction(lp->iv));
  LLVMValueRef phi = LLVMBuildPhi(L->bld, LLVMTypeOf(init), name);
  LLVMAddIncoming(phi, &init, &lp->pre, 1);
  LLVMPositionBuilderAtEnd(L->bld, cur);
  return phi;
}

void loop_phi_next(Lower *L, LLVMValueRef phi, LLVMValueRef v) {
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->bld);
  LLVMAddIncoming(phi, &v, &latch, 1);
}

LLVMValueRef intrinsic_of(Lower *L, const char *name, LLVMTypeRef t, LLVMValueRef *args, int n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(L->mod, id, &t, 1);
  LLVMTypeRef ft = LLVMIntrinsicGetType(L->cx, id, &t, 1);
  return LLVMBuildCall2(L->bld, ft, fn, args, (unsigned)n, "");
}
/* An intrinsic overloaded on its first operand's type (float, or a vector). */
LLVMValueRef intrinsic(Lower *L, const char *name, LLVMValueRef *args, int n) {
  return intrinsic_of(L, name, LLVMTypeOf(args[0]), args, n);
}
LLVMValueRef intr1(Lower *L, const char *name, LLVMValueRef x) {
  return intrinsic(L, name, &x, 1);
}
LLVMValueRef intr2(Lower *L, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef a[2] = {x, y};
  return intrinsic(L, name, a, 2);
}

LLVMValueRef call_fn(Lower *L, const char *name, LLVMTypeRef ret, LLVMTypeRef *pt, int np,
                     LLVMValueRef *args) {
  LLVMTypeRef ft = LLVMFunctionType(ret, pt, (unsigned)np, 0);
  LLVMValueRef fn = LLVMGetNamedFunction(L->mod, name);
  if (!fn) fn = LLVMAddFunction(L->mod, name, ft);
  return LLVMBuildCall2(L->bld, ft, fn, args, (unsigned)np, "");
}

/* Every float add, subtract and multiply of the module may contract into a
 * fused multiply-add (one rounding instead of two): the ops the cells are
 * made of (a*h + b, dot products, complex products) then run as FMAs, which
 * is also what NVRTC does for the CUDA renderer by default. Results move by
 * at most the last bit of each contracted pair, within every form's stated
 * tolerance. */
void allow_contract(LLVMModuleRef m) {
#if LLVM_VERSION_MAJOR >= 18
  for (LLVMValueRef f = LLVMGetFirstFunction(m); f; f = LLVMGetNextFunction(f))
    for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(f); bb; bb = LLVMGetNextBasicBlock(bb))
      for (LLVMValueRef v = LLVMGetFirstInstruction(bb); v; v = LLVMGetNextInstruction(v)) {
        LLVMOpcode op = LLVMGetInstructionOpcode(v);
        if ((op == LLVMFAdd || op == LLVMFSub || op == LLVMFMul) && LLVMCanValueUseFastMathFlags(v))
          LLVMSetFastMathFlags(v, LLVMGetFastMathFlags(v) | LLVMFastMathAllowContract);
      }
#else
  (void)m;
#endif
}

LLVMValueRef entry_alloca(Lower *L, LLVMTypeRef t, const char *name) {
  LLVMBasicBlockRef here = LLVMGetInsertBlock(L->bld);
  LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(L->fv);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first)
    LLVMPositionBuilderBefore(L->bld, first);
  else
    LLVMPositionBuilderAtEnd(L->bld, entry);
  LLVMValueRef a = LLVMBuildAlloca(L->bld, t, name);
  LLVMPositionBuilderAtEnd(L->bld, here);
  return a;
}

void set_reassoc(LLVMValueRef v) {
#if LLVM_VERSION_MAJOR >= 18
  if (LLVMCanValueUseFastMathFlags(v)) LLVMSetFastMathFlags(v, LLVMFastMathAllowReassoc);
#else
  (void)v;
#endif
}

void fail_with(Lower *L, LLVMValueRef cond, int status) {
  LLVMBasicBlockRef bad = block(L, "bad"), ok = block(L, "ok");
  LLVMBuildCondBr(L->bld, cond, bad, ok);
  LLVMPositionBuilderAtEnd(L->bld, bad);
  LLVMBuildStore(L->bld, ci32(L, status), L->status);
  LLVMBuildBr(L->bld, L->cleanup);
  LLVMPositionBuilderAtEnd(L->bld, ok);
}

LLVMValueRef len_of(Lower *L, LLVMValueRef b) {
  /* lengths == NULL means every sequence has length T. */
  LLVMValueRef isnull = LLVMBuildIsNull(L->bld, L->a_lengths, "");
  LLVMValueRef safe_b = LLVMBuildSelect(L->bld, isnull, ci64(L, 0), b, "");
  LLVMValueRef p = LLVMBuildGEP2(L->bld, L->i32, L->a_lengths, &safe_b, 1, "");
  /* A load through NULL must not be emitted: branchless select on a
   * pointer to a zero constant instead. */
  LLVMValueRef zero = LLVMGetNamedGlobal(L->mod, "seq.zero_i32");
  LLVMValueRef pp = LLVMBuildSelect(L->bld, isnull, zero, p, "");
  LLVMValueRef v = LLVMBuildSExt(L->bld, LLVMBuildLoad2(L->bld, L->i32, pp, ""), L->i64, "");
  return LLVMBuildSelect(L->bld, isnull, L->a_T, v, "");
}

void copy_row(Lower *L, LLVMValueRef dst, LLVMValueRef src, int64_t numel, LLVMValueRef drow,
              LLVMValueRef srow) {
  Loop lk;
  LLVMValueRef d = gepf(L, dst, mul(L, drow, ci64(L, numel)));
  LLVMValueRef s = gepf(L, src, mul(L, srow, ci64(L, numel)));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, numel));
  stf(L, ldf(L, s, k), d, k);
  loop_end_parallel(L, &lk); /* distinct rows of one buffer do not overlap */
}
