/* entry.c - the ABI's entry points (docs/abi.md) around the instance
 * functions, and cg_lower, which renders a whole schedule into a module. */
#include "codegen/llvm.h"

#include <string.h>

/* ---- entry points --------------------------------------------------------- */

/* Full-width vectors for the element loops: LLVM's default on recent AVX-512
 * cores is 256-bit, which halves the throughput of the gate math (sigmoid,
 * tanh, exp), a quarter of an LSTM step. Every function gets it, the entry
 * points too, since the instances are inlined into them. Targets without
 * 512-bit vectors ignore the preference. */
static void prefer_wide_vectors(Lower *L, LLVMValueRef f) {
  static const char key[] = "prefer-vector-width", val[] = "512";
  LLVMAddAttributeAtIndex(
      f, LLVMAttributeFunctionIndex,
      LLVMCreateStringAttribute(L->cx, key, sizeof key - 1, val, sizeof val - 1));
}

static LLVMValueRef add_entry(Lower *L, const char *name, LLVMTypeRef *pt, int np) {
  LLVMTypeRef ft = LLVMFunctionType(L->i32, pt, (unsigned)np, 0);
  LLVMValueRef f = LLVMAddFunction(L->mod, name, ft);
  prefer_wide_vectors(L, f);
  L->fv = f;
  LLVMPositionBuilderAtEnd(L->bld, block(L, "entry"));
  return f;
}

/* Returns code from the current entry point where cond holds. */
static void return_if(Lower *L, LLVMValueRef cond, int code) {
  LLVMBasicBlockRef bad = block(L, "bad"), ok = block(L, "ok");
  LLVMBuildCondBr(L->bld, cond, bad, ok);
  LLVMPositionBuilderAtEnd(L->bld, bad);
  LLVMBuildRet(L->bld, ci32(L, code));
  LLVMPositionBuilderAtEnd(L->bld, ok);
}

/* The mark and layout hash SYM_prepare writes at the start of the block
 * (FNV-1a over every slot's param, K, N, leading dimension, transposition
 * and offset), so that a block of another model, or one never prepared, is
 * an argument error and not wrong numbers. */
enum { PREPARED_MARK = 0x50514553 /* "SEQP" */ };
static uint32_t prepared_hash(const Schedule *s) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < s->prepared.n; i++) {
    const SchedPrepared *sp = &s->prepared.v[i];
    int64_t f[6] = {sp->param, sp->k, sp->n, sp->ld, sp->trans, sp->offset};
    for (int j = 0; j < 6; j++)
      for (int b = 0; b < 8; b++)
        h = (h ^ (uint32_t)((uint64_t)f[j] >> (8 * b) & 0xff)) * 16777619u;
  }
  return h;
}

/* The header's word i of block b (an i32 view of the floats). */
static LLVMValueRef header_word(Lower *L, LLVMValueRef b, int i) {
  LLVMValueRef idx = ci64(L, i);
  return LLVMBuildGEP2(L->bld, L->i32, b, &idx, 1, "");
}

/* Whether block b is NULL or lacks this model's mark and layout hash. */
static LLVMValueRef bad_block(Lower *L, LLVMValueRef b) {
  LLVMBuilderRef bld = L->bld;
  LLVMBasicBlockRef from = LLVMGetInsertBlock(bld), read = block(L, "read"),
                    done = block(L, "done");
  LLVMValueRef null = LLVMBuildIsNull(bld, b, "");
  LLVMBuildCondBr(bld, null, done, read);
  LLVMPositionBuilderAtEnd(bld, read);
  LLVMValueRef m = LLVMBuildLoad2(bld, L->i32, header_word(L, b, 0), "");
  LLVMValueRef h = LLVMBuildLoad2(bld, L->i32, header_word(L, b, 1), "");
  LLVMValueRef wrong =
      LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntNE, m, ci32(L, PREPARED_MARK), ""),
                  LLVMBuildICmp(bld, LLVMIntNE, h, ci32(L, (int32_t)prepared_hash(L->s)), ""), "");
  LLVMBuildBr(bld, done);
  LLVMPositionBuilderAtEnd(bld, done);
  LLVMValueRef phi = LLVMBuildPhi(bld, L->i1, "bad");
  LLVMValueRef vals[2] = {LLVMConstInt(L->i1, 1, 0), wrong};
  LLVMBasicBlockRef froms[2] = {from, read};
  LLVMAddIncoming(phi, vals, froms, 2);
  return phi;
}

/* The params array the instances read: the host's, then per prepared
 * weight (Schedule.prepared) its packed form in the host's block, or NULL
 * when prepared is NULL (the call packs). params is not NULL here. */
static LLVMValueRef extend_params(Lower *L, LLVMValueRef params, LLVMValueRef prepared) {
  int n = L->s->sig.params.n, g = L->s->prepared.n;
  if (g == 0) return params;
  LLVMValueRef arr = LLVMBuildArrayAlloca(L->bld, L->ptr, ci64(L, n + g), "params");
  for (int i = 0; i < n + g; i++) {
    LLVMValueRef v = i < n      ? ldp(L, params, i)
                     : prepared ? gepf(L, prepared, ci64(L, L->s->prepared.v[i - n].offset))
                                : LLVMConstNull(L->ptr);
    LLVMValueRef idx = ci64(L, i);
    LLVMBuildStore(L->bld, v, LLVMBuildGEP2(L->bld, L->ptr, arr, &idx, 1, ""));
  }
  return arr;
}

static void emit_entries(Lower *L, const char *sym) {
  LLVMTypeRef P = L->ptr, I = L->i64;
  LLVMValueRef root = L->inst_fn[0];
  /* SYM.run(params, B, T, inputs, lengths, state_in, outputs, state_out),
   * params extended (extend_params): what SYM_forward and
   * SYM_forward_prepared share. */
  LLVMTypeRef fpt[8] = {P, I, I, P, P, P, P, P};
  LLVMValueRef f = add_entry(L, arena_printf(L->a, "%s.run", sym), fpt, 8);
  LLVMSetLinkage(f, LLVMPrivateLinkage);
  {
    LLVMValueRef args[9];
    for (int i = 0; i < 8; i++) args[i] = LLVMGetParam(f, (unsigned)i);
    args[8] = ci32(L, 0);
    /* NULL params, inputs or outputs are argument errors, not crashes. */
    return_if(L,
              LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, args[0], ""),
                          LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, args[3], ""),
                                      LLVMBuildIsNull(L->bld, args[6], ""), ""),
                          ""),
              ABI_ERR_ARG);
    /* Every pointer inside the arrays must be non-NULL too. */
    struct {
      LLVMValueRef arr;
      int n;
    } checks[3] = {{args[0], L->s->sig.params.n},
                   {args[3], L->s->sig.inputs.n},
                   {args[6], L->s->sig.outputs.n}};
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < checks[c].n; i++)
        return_if(L, LLVMBuildIsNull(L->bld, ldp(L, checks[c].arr, i), ""), ABI_ERR_ARG);
    /* The root runs over slices of the batch, one per thread
     * (runtime/cpu_forward.c); layout gives the per-token and per-example
     * sizes of every buffer so the runtime can point into them. */
    int nin = L->s->sig.inputs.n, nst = L->s->sig.states.n, nout = L->s->sig.outputs.n;
    int nl = 4 + nin + nst + nout;
    LLVMValueRef *lv = arena_calloc(L->a, (size_t)nl, sizeof(LLVMValueRef));
    if (!lv) {
      L->failed = 1;
      return;
    }
    int k = 0;
    lv[k++] = ci64(L, nin);
    lv[k++] = ci64(L, nst);
    lv[k++] = ci64(L, nout);
    lv[k++] = ci64(L, L->s->work_per_token);
    for (int i = 0; i < nin; i++) /* a context's per example, negated */
      lv[k++] = ci64(L, L->s->sig.inputs.v[i].context ? -L->s->sig.inputs.v[i].numel
                                                      : L->s->sig.inputs.v[i].numel);
    for (int i = 0; i < nst; i++) lv[k++] = ci64(L, L->s->sig.states.v[i].numel);
    for (int i = 0; i < nout; i++) lv[k++] = ci64(L, L->s->sig.outputs.v[i].numel);
    LLVMTypeRef lty = LLVMArrayType2(I, (uint64_t)nl);
    LLVMValueRef layout = LLVMAddGlobal(L->mod, lty, arena_printf(L->a, "%s.layout", sym));
    LLVMSetInitializer(layout, LLVMConstArray2(I, lv, (uint64_t)nl));
    LLVMSetGlobalConstant(layout, 1);
    LLVMSetLinkage(layout, LLVMPrivateLinkage);
    LLVMTypeRef bpt[10] = {P, P, P, I, I, P, P, P, P, P};
    LLVMValueRef bargs[10] = {root,    layout,  args[0], args[1], args[2],
                              args[3], args[4], args[5], args[6], args[7]};
    LLVMBuildRet(L->bld, call_fn(L, "rt_cpu_forward_batched", L->i32, bpt, 10, bargs));
  }
  LLVMTypeRef fwd_ty = LLVMFunctionType(L->i32, fpt, 8, 0);
  LLVMValueRef run = f;
  /* SYM_forward(params, B, T, inputs, lengths, state_in, outputs, state_out). */
  f = add_entry(L, arena_printf(L->a, "%s_forward", sym), fpt, 8);
  {
    LLVMValueRef args[8];
    for (int i = 0; i < 8; i++) args[i] = LLVMGetParam(f, (unsigned)i);
    return_if(L, LLVMBuildIsNull(L->bld, args[0], ""), ABI_ERR_ARG);
    args[0] = extend_params(L, args[0], NULL);
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, run, args, 8, ""));
  }
  /* SYM_forward_prepared(params, prepared, B, T, inputs, lengths, state_in,
   * outputs, state_out): the weights packed by SYM_prepare read from
   * prepared (NULL is an error where the model has any). */
  LLVMTypeRef ppt[9] = {P, P, I, I, P, P, P, P, P};
  LLVMValueRef fp = add_entry(L, arena_printf(L->a, "%s_forward_prepared", sym), ppt, 9);
  {
    LLVMValueRef args[8], prepared = LLVMGetParam(fp, 1);
    args[0] = LLVMGetParam(fp, 0);
    for (int i = 1; i < 8; i++) args[i] = LLVMGetParam(fp, (unsigned)i + 1);
    return_if(L, LLVMBuildIsNull(L->bld, args[0], ""), ABI_ERR_ARG);
    if (L->s->prepared.n > 0) return_if(L, bad_block(L, prepared), ABI_ERR_ARG);
    args[0] = extend_params(L, args[0], prepared);
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, run, args, 8, ""));
  }
  /* SYM_forward_blob(blob, blob_floats, B, T, inputs, lengths, state_in, outputs, state_out):
   * the parameters concatenated in flat order; the size is checked. */
  LLVMTypeRef bpt[9] = {P, I, I, I, P, P, P, P, P};
  LLVMValueRef fb = add_entry(L, arena_printf(L->a, "%s_forward_blob", sym), bpt, 9);
  {
    int64_t total = 0;
    for (int i = 0; i < L->s->sig.params.n; i++) total += L->s->sig.params.v[i].numel;
    LLVMValueRef blob = LLVMGetParam(fb, 0);
    LLVMValueRef bad =
        LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, blob, ""),
                    LLVMBuildICmp(L->bld, LLVMIntNE, LLVMGetParam(fb, 1), ci64(L, total), ""), "");
    LLVMBasicBlockRef badb = block(L, "bad"), ok = block(L, "ok");
    LLVMBuildCondBr(L->bld, bad, badb, ok);
    LLVMPositionBuilderAtEnd(L->bld, badb);
    LLVMBuildRet(L->bld, ci32(L, ABI_ERR_ARG));
    LLVMPositionBuilderAtEnd(L->bld, ok);
    LLVMValueRef arr = LLVMBuildArrayAlloca(L->bld, P, ci64(L, L->s->sig.params.n + 1), "params");
    int64_t off = 0;
    for (int i = 0; i < L->s->sig.params.n; i++) {
      LLVMValueRef idx = ci64(L, i);
      LLVMBuildStore(L->bld, gepf(L, blob, ci64(L, off)),
                     LLVMBuildGEP2(L->bld, P, arr, &idx, 1, ""));
      off += L->s->sig.params.v[i].numel;
    }
    LLVMValueRef args[8] = {arr,
                            LLVMGetParam(fb, 2),
                            LLVMGetParam(fb, 3),
                            LLVMGetParam(fb, 4),
                            LLVMGetParam(fb, 5),
                            LLVMGetParam(fb, 6),
                            LLVMGetParam(fb, 7),
                            LLVMGetParam(fb, 8)};
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, f, args, 8, ""));
  }
  /* SYM_step(params, B, inputs, state_in, outputs, state_out): one token;
   * [B, 1, ...] and [B, ...] are the same buffers. */
  if (L->s->sig.has_step) {
    LLVMTypeRef spt[6] = {P, I, P, P, P, P};
    LLVMValueRef fs = add_entry(L, arena_printf(L->a, "%s_step", sym), spt, 6);
    LLVMValueRef args[8] = {LLVMGetParam(fs, 0), LLVMGetParam(fs, 1), ci64(L, 1),
                            LLVMGetParam(fs, 2), LLVMConstNull(P),    LLVMGetParam(fs, 3),
                            LLVMGetParam(fs, 4), LLVMGetParam(fs, 5)};
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, f, args, 8, ""));
    /* SYM_step_prepared(params, prepared, B, inputs, state_in, outputs,
     * state_out). */
    LLVMTypeRef sppt[7] = {P, P, I, P, P, P, P};
    LLVMValueRef fsp = add_entry(L, arena_printf(L->a, "%s_step_prepared", sym), sppt, 7);
    LLVMValueRef pargs[9] = {LLVMGetParam(fsp, 0), LLVMGetParam(fsp, 1), LLVMGetParam(fsp, 2),
                             ci64(L, 1),           LLVMGetParam(fsp, 3), LLVMConstNull(P),
                             LLVMGetParam(fsp, 4), LLVMGetParam(fsp, 5), LLVMGetParam(fsp, 6)};
    LLVMBuildRet(L->bld,
                 LLVMBuildCall2(L->bld, LLVMFunctionType(L->i32, ppt, 9, 0), fp, pargs, 9, ""));
  }
  /* SYM_prepared_floats(): the floats of SYM_prepare's block. */
  {
    LLVMValueRef fc = LLVMAddFunction(L->mod, arena_printf(L->a, "%s_prepared_floats", sym),
                                      LLVMFunctionType(I, NULL, 0, 0));
    /* The same attributes as every function: a function with others gets
     * a code generator of its own (7 ms more for the std LSTM). */
    prefer_wide_vectors(L, fc);
    L->fv = fc;
    LLVMPositionBuilderAtEnd(L->bld, block(L, "entry"));
    LLVMBuildRet(L->bld, ci64(L, L->s->prepared_floats));
  }
  /* SYM_prepare(params, prepared): packs every weight with a slot into the
   * block, as each call would. */
  LLVMTypeRef prt[2] = {P, P};
  LLVMValueRef fpr = add_entry(L, arena_printf(L->a, "%s_prepare", sym), prt, 2);
  {
    LLVMValueRef params = LLVMGetParam(fpr, 0), prepared = LLVMGetParam(fpr, 1);
    LLVMValueRef bad = LLVMBuildIsNull(L->bld, params, "");
    if (L->s->prepared.n > 0)
      bad = LLVMBuildOr(L->bld, bad, LLVMBuildIsNull(L->bld, prepared, ""), "");
    return_if(L, bad, ABI_ERR_ARG);
    for (int i = 0; i < L->s->sig.params.n; i++)
      return_if(L, LLVMBuildIsNull(L->bld, ldp(L, params, i), ""), ABI_ERR_ARG);
    for (int i = 0; i < L->s->prepared.n; i++) {
      const SchedPrepared *sp = &L->s->prepared.v[i];
      LLVMTypeRef pt[6] = {I, I, P, I, L->i32, P};
      LLVMValueRef args[6] = {
          ci64(L, sp->k),  ci64(L, sp->n),     ldp(L, params, sp->param),
          ci64(L, sp->ld), ci32(L, sp->trans), gepf(L, prepared, ci64(L, sp->offset))};
      call_fn(L, "rt_cpu_pack_b", L->void_t, pt, 6, args);
    }
    if (L->s->prepared.n > 0) {
      for (int i = 0; i < SCHED_PREPARED_HEADER; i++)
        LLVMBuildStore(L->bld, ci32(L, 0), header_word(L, prepared, i));
      LLVMBuildStore(L->bld, ci32(L, PREPARED_MARK), header_word(L, prepared, 0));
      LLVMBuildStore(L->bld, ci32(L, (int32_t)prepared_hash(L->s)), header_word(L, prepared, 1));
      LLVMBuildStore(L->bld, ci32(L, L->s->prepared.n), header_word(L, prepared, 2));
    }
    LLVMBuildRet(L->bld, ci32(L, ABI_OK));
  }
  /* SYM_dims(int64 *out): the dims compiled in, in the root's order. */
  LLVMValueRef fd = add_entry(L, arena_printf(L->a, "%s_dims", sym), &P, 1);
  {
    LLVMValueRef out = LLVMGetParam(fd, 0);
    LLVMBasicBlockRef w = block(L, "write"), done = block(L, "done");
    LLVMBuildCondBr(L->bld, LLVMBuildIsNull(L->bld, out, ""), done, w);
    LLVMPositionBuilderAtEnd(L->bld, w);
    for (int i = 0; i < L->s->sig.ndims; i++) {
      LLVMValueRef idx = ci64(L, i);
      LLVMBuildStore(L->bld, ci64(L, L->s->sig.dim_values[i]),
                     LLVMBuildGEP2(L->bld, I, out, &idx, 1, ""));
    }
    LLVMBuildBr(L->bld, done);
    LLVMPositionBuilderAtEnd(L->bld, done);
    LLVMBuildRet(L->bld, ci32(L, L->s->sig.ndims));
  }
}

int cg_lower(Arena *a, const Schedule *s, LLVMContextRef ctx, LLVMTargetMachineRef tm,
             LLVMModuleRef *out, DiagEngine *de) {
  *out = NULL;
  Lower L;
  memset(&L, 0, sizeof L);
  L.vec_floats = 16, L.vec_regs = 32;
  if (tm) cg_target_vectors(tm, &L.vec_floats, &L.vec_regs);
  L.a = a;
  L.s = s;
  L.de = de;
  L.cx = ctx;
  L.inst_fn = arena_calloc(a, (size_t)s->insts.n + 1, sizeof(LLVMValueRef));
  if (!L.inst_fn) {
    diag_error(de, (SrcLoc){0}, "out of memory compiling %s", s->sig.func);
    return -1;
  }
  const char *symbol = s->sig.symbol;
  L.mod = LLVMModuleCreateWithNameInContext(symbol, ctx);
  L.bld = LLVMCreateBuilderInContext(ctx);
  L.f32 = LLVMFloatTypeInContext(ctx);
  L.i32 = LLVMInt32TypeInContext(ctx);
  L.i64 = LLVMInt64TypeInContext(ctx);
  L.i1 = LLVMInt1TypeInContext(ctx);
  L.ptr = LLVMPointerTypeInContext(ctx, 0);
  L.void_t = LLVMVoidTypeInContext(ctx);
  LLVMTypeRef pt[9] = {L.ptr, L.i64, L.i64, L.ptr, L.ptr, L.ptr, L.ptr, L.ptr, L.i32};
  L.inst_ty = LLVMFunctionType(L.i32, pt, 9, 0);
  LLVMValueRef zero = LLVMAddGlobal(L.mod, L.i32, "seq.zero_i32");
  LLVMSetInitializer(zero, ci32(&L, 0));
  LLVMSetGlobalConstant(zero, 1);
  LLVMSetLinkage(zero, LLVMPrivateLinkage);
  for (int i = 0; i < s->insts.n; i++) {
    L.inst_fn[i] = LLVMAddFunction(
        L.mod, arena_printf(a, "%s.%d.%s", symbol, i, s->insts.v[i].fn->name), L.inst_ty);
    LLVMSetLinkage(L.inst_fn[i], LLVMInternalLinkage);
    prefer_wide_vectors(&L, L.inst_fn[i]);
  }
  int rc = 0;
  for (int i = 0; i < s->insts.n && rc == 0; i++) rc = emit_function(&L, i);
  if (rc == 0 && !L.failed) emit_entries(&L, symbol);
  if (rc == 0 && !L.failed) allow_contract(L.mod);
  LLVMDisposeBuilder(L.bld);
  if (rc != 0 || L.failed) {
    LLVMDisposeModule(L.mod);
    return -1;
  }
  *out = L.mod;
  return 0;
}
