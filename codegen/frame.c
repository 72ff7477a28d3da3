/* frame.c - one instance's function: its arguments and checks, the
 * schedule's buffers placed in two blocks, the stage tree rendered in order,
 * and the cleanup every exit goes through. Whole-sequence stages that are not
 * a form of their own (layer calls, causal convolutions, initial and final
 * states) are here too. */
#include "codegen/llvm.h"

#include "runtime/rt_cpu.h"

#include <string.h>

/* ---- whole-sequence stages ---------------------------------------------------- */

/* A Newton layer's call: the runtime's solve (rt_cpu_newton) calls the
 * step's function; the layout of each of its inputs, for the solve's
 * one-token fallback, comes from the class of the argument. */
static LLVMValueRef emit_newton(Lower *L, IrRef r, LLVMValueRef ins, LLVMValueRef outs,
                                LLVMValueRef rev) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r];
  const IrNewton *nw = &L->fn->layers.v[nd->index].newton;
  int ci = L->in->layers[nd->index];
  int m = nd->nargs - nw->states;
  LLVMValueRef fl = LLVMBuildArrayAlloca(L->bld, L->i64, ci64(L, m + 1), "in_floats");
  LLVMValueRef kind = LLVMBuildArrayAlloca(L->bld, L->i32, ci64(L, m + 1), "in_kind");
  for (int j = 0; j < m; j++) {
    const SchedValue *a = &L->v[nd->args[j]];
    int k = n->call_in[j] >= 0 || a->cls == SCHED_TOKEN       ? RT_NEWTON_PER_TOKEN
            : a->cls == SCHED_STEP || a->cls == SCHED_EXAMPLE ? RT_NEWTON_PER_EXAMPLE
                                                              : RT_NEWTON_ONCE;
    LLVMValueRef idx = ci64(L, j);
    LLVMBuildStore(L->bld, ci64(L, sched_row_floats(a)),
                   LLVMBuildGEP2(L->bld, L->i64, fl, &idx, 1, ""));
    LLVMBuildStore(L->bld, ci32(L, k), LLVMBuildGEP2(L->bld, L->i32, kind, &idx, 1, ""));
  }
  LLVMTypeRef pt[21] = {L->ptr, L->ptr, L->i64, L->i64, L->i64, L->i64, L->ptr,
                        L->ptr, L->i32, L->ptr, L->i32, L->i32, L->i64, L->f32,
                        L->f32, L->i32, L->i64, L->i32, L->ptr, L->ptr, L->i64};
  /* In time chunks, the chunk's rows hold its steps in order. */
  int ch = L->in->chunked;
  /* The call site's key in a warm store (runtime/cpu_warm.c): the calling
   * instance and the node, unique in the module. */
  int64_t site = (int64_t)(L->in - L->s->insts.v) << 32 | (int64_t)r;
  LLVMValueRef args[21] = {L->inst_fn[ci],
                           L->a_params,
                           L->a_B,
                           ch ? L->Tc : L->a_T,
                           ch ? L->t0 : ci64(L, 0),
                           ch ? L->tn : L->a_T,
                           ins,
                           L->a_lengths,
                           ch ? ci32(L, 0) : rev,
                           outs,
                           ci32(L, nw->states),
                           ci32(L, m),
                           ci64(L, sched_row_floats(n)),
                           LLVMConstReal(L->f32, nw->rtol),
                           LLVMConstReal(L->f32, nw->atol),
                           ci32(L, nw->max_iter),
                           ci64(L, nw->window),
                           ci32(L, nw->dense),
                           fl,
                           kind,
                           ci64(L, site)};
  return call_fn(L, "rt_cpu_newton", L->i32, pt, 21, args);
}

static void emit_call(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r];
  int ci = L->in->layers[nd->index];
  const IrFunc *callee = L->s->insts.v[ci].fn;
  LLVMValueRef ins = LLVMBuildArrayAlloca(L->bld, L->ptr, ci64(L, callee->inputs.n + 1), "ins");
  LLVMValueRef outs = LLVMBuildArrayAlloca(L->bld, L->ptr, ci64(L, callee->outputs.n + 1), "outs");
  for (int j = 0; j < nd->nargs && j < callee->inputs.n; j++) {
    LLVMValueRef idx = ci64(L, j);
    const SchedValue *a = &L->v[nd->args[j]];
    LLVMValueRef p = L->ll[nd->args[j]].base;
    if (n->call_in[j] >= 0 && a->cls == SCHED_CONST) {
      /* A layer reads an input per token: repeat the value for each. */
      p = L->buf[n->call_in[j]];
      Loop lr;
      LLVMValueRef rows = mul(L, L->a_B, L->in->chunked ? L->Tc : L->a_T);
      LLVMValueRef row = loop_begin(L, &lr, ci64(L, 0), rows);
      copy_row(L, p, L->ll[nd->args[j]].base, sched_row_floats(a), row, ci64(L, 0));
      loop_end(L, &lr);
    } else if (n->call_in[j] >= 0 && a->cls == SCHED_EXAMPLE) {
      /* ... and a context's value, its example's for each of its tokens. */
      p = L->buf[n->call_in[j]];
      Loop lr;
      LLVMValueRef per = L->in->chunked ? L->Tc : L->a_T;
      LLVMValueRef row = loop_begin(L, &lr, ci64(L, 0), mul(L, L->a_B, per));
      copy_row(L, p, L->ll[nd->args[j]].base, sched_row_floats(a), row,
               LLVMBuildSDiv(L->bld, row, per, ""));
      loop_end(L, &lr);
    } else if (n->call_in[j] >= 0) {
      /* A whole-sequence value (an input) read by a Newton solve in time
       * chunks: the chunk's steps, in order. */
      p = L->buf[n->call_in[j]];
      Loop lb, lt;
      LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
      LLVMValueRef len = len_of(L, b), first, count;
      step_range(L, len, &first, &count);
      LLVMValueRef tau = loop_begin(L, &lt, first, add(L, first, count));
      LLVMValueRef row = add(L, mul(L, b, L->Tc), LLVMBuildSub(L->bld, tau, first, ""));
      copy_row(L, p, step_row(L, nd->args[j], b, len, tau), sched_row_floats(a), row, ci64(L, 0));
      loop_end(L, &lt);
      loop_end(L, &lb);
    }
    LLVMBuildStore(L->bld, p, LLVMBuildGEP2(L->bld, L->ptr, ins, &idx, 1, ""));
  }
  for (int j = 0; j < callee->outputs.n; j++) {
    LLVMValueRef idx = ci64(L, j);
    LLVMValueRef p = n->call_out[j] >= 0 ? L->buf[n->call_out[j]] : LLVMConstNull(L->ptr);
    LLVMBuildStore(L->bld, p, LLVMBuildGEP2(L->bld, L->ptr, outs, &idx, 1, ""));
  }
  const IrLayer *ly = &L->fn->layers.v[nd->index];
  LLVMValueRef crev = ly->reverse ? LLVMBuildXor(L->bld, L->a_rev, ci32(L, 1), "") : L->a_rev;
  LLVMValueRef st;
  if (ly->newton.states) {
    st = emit_newton(L, r, ins, outs, crev);
  } else if (ly->over) {
    /* Over a context's positions: N steps for every example (or its
     * length, the int context given last), forwards unless the layer is
     * reversed, whatever way this instance runs. */
    LLVMValueRef lens =
        ly->over_lengths ? L->ll[nd->args[nd->nargs - 1]].base : LLVMConstNull(L->ptr);
    LLVMValueRef args[9] = {L->a_params, L->a_B,    ci64(L, n->shape[0]), ins, lens, L->a_sin,
                            outs,        L->a_sout, ci32(L, ly->reverse)};
    st = LLVMBuildCall2(L->bld, L->inst_ty, L->inst_fn[ci], args, 9, "");
  } else {
    LLVMValueRef args[9] = {L->a_params, L->a_B, L->a_T,    ins, L->a_lengths,
                            L->a_sin,    outs,   L->a_sout, crev};
    st = LLVMBuildCall2(L->bld, L->inst_ty, L->inst_fn[ci], args, 9, "");
  }
  LLVMValueRef bad = LLVMBuildICmp(L->bld, LLVMIntNE, st, ci32(L, 0), "");
  LLVMBasicBlockRef badb = block(L, "callfail"), ok = block(L, "callok");
  LLVMBuildCondBr(L->bld, bad, badb, ok);
  LLVMPositionBuilderAtEnd(L->bld, badb);
  LLVMBuildStore(L->bld, st, L->status);
  LLVMBuildBr(L->bld, L->cleanup);
  LLVMPositionBuilderAtEnd(L->bld, ok);
}

/* Model-level depthwise causal convolution over the whole sequence, in the
 * direction the instance runs: out[tau] = b + sum_k w[k] u[tau - K + 1 + k]. */
static void emit_causal_conv(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r], *u = &L->v[nd->args[0]], *w = &L->v[nd->args[1]];
  int64_t D = n->numel, K = D ? w->numel / D : 0;
  LLVMValueRef ub = L->ll[nd->args[0]].base, wb = L->ll[nd->args[1]].base,
               bb = L->ll[nd->args[2]].base;
  Loop lb, lt, ld, lk;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef bT = mul(L, b, L->a_T);
  LLVMValueRef tau = loop_begin(L, &lt, ci64(L, 0), len);
  LLVMValueRef lm1 = LLVMBuildSub(L->bld, len, ci64(L, 1), "");
  LLVMValueRef phys = LLVMBuildSelect(L->bld, isrev, LLVMBuildSub(L->bld, lm1, tau, ""), tau, "");
  LLVMValueRef d = loop_begin(L, &ld, ci64(L, 0), ci64(L, D));
  LLVMValueRef acc0 = ldf(L, bb, L->v[nd->args[2]].numel == 1 ? ci64(L, 0) : d);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  LLVMValueRef phi = loop_phi(L, &lk, acc0, "acc");
  LLVMValueRef s = add(L, tau, LLVMBuildSub(L->bld, k, ci64(L, K - 1), ""));
  LLVMValueRef valid = LLVMBuildICmp(L->bld, LLVMIntSGE, s, ci64(L, 0), "");
  LLVMValueRef ps = LLVMBuildSelect(L->bld, isrev, LLVMBuildSub(L->bld, lm1, s, ""), s, "");
  ps = LLVMBuildSelect(L->bld, valid, ps, ci64(L, 0), "");
  LLVMValueRef uoff = u->cls == SCHED_CONST     ? d
                      : u->cls == SCHED_EXAMPLE ? add(L, mul(L, b, ci64(L, D)), d)
                                                : add(L, mul(L, add(L, bT, ps), ci64(L, D)), d);
  LLVMValueRef uv = ldf(L, ub, uoff);
  LLVMValueRef term = LLVMBuildFMul(L->bld, ldf(L, wb, add(L, mul(L, d, ci64(L, K)), k)), uv, "");
  term = LLVMBuildSelect(L->bld, valid, term, cf(L, 0.0), "");
  LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, term, "");
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  stf(L, phi, L->ll[r].base, add(L, mul(L, add(L, bT, phys), ci64(L, D)), d));
  loop_end(L, &ld);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* Initial states: state_in's row if given, else the declared value
 * (broadcast from the init node's shape). */
static void emit_state_init(Lower *L) {
  const IrFunc *fn = L->fn;
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef B = L->a_B;
  for (int s = 0; s < fn->states.n; s++) {
    const IrState *st = &fn->states.v[s];
    const AbiTensor *ct = &L->s->sig.states.v[in->states[s]];
    LLVMValueRef storage = L->buf[in->state_buf[s]];
    LLVMBasicBlockRef given = block(L, "sgiven"), deflt = block(L, "sdefault"),
                      next = block(L, "snext"), check = block(L, "scheck");
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_sin, ""), deflt, check);
    LLVMPositionBuilderAtEnd(bld, check);
    LLVMValueRef p = ldp(L, L->a_sin, in->states[s]);
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, p, ""), deflt, given);
    LLVMPositionBuilderAtEnd(bld, given);
    LLVMBuildMemCpy(bld, storage, 4, p, 4, mul(L, mul(L, B, ci64(L, ct->numel)), ci64(L, 4)));
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, deflt);
    if (st->init >= 0) {
      /* A broadcast of the initial value (numpy rules) into each row, so
       * that "= 0" or a [N] parameter fills an [H, N] state, and a real
       * value fills a complex state's real parts (the schedule checked the
       * shapes agree). */
      const SchedValue *iv = &L->v[st->init];
      Nest ns = {0};
      ns.nops = 1;
      ns.w[0] = iv->w;
      ns.ow = st->type.elem == IR_COMPLEX ? 2 : 1;
      ns.cplx = ns.ow == 2;
      ns.ptr[0] = L->ll[st->init].base;
      ns.rank = ct->ndim - (ns.ow == 2);
      memcpy(ns.shape, ct->shape, sizeof ns.shape);
      nest_operand(&ns, 0, iv->rank, iv->shape);
      Loop lb;
      LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), B);
      LLVMValueRef row = gepf(L, storage, mul(L, b, ci64(L, ct->numel)));
      LLVMValueRef z[4] = {ci64(L, 0), ci64(L, 0), ci64(L, 0), ci64(L, 0)};
      emit_ew_nest(L, IR_BROADCAST, &ns, row, 0, z, ci64(L, 0));
      loop_end(L, &lb);
    }
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, next);
  }
}

static void emit_final_states(Lower *L) {
  const IrFunc *fn = L->fn;
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  for (int s = 0; s < fn->states.n; s++) {
    const AbiTensor *ct = &L->s->sig.states.v[in->states[s]];
    LLVMBasicBlockRef check = block(L, "ocheck"), copy = block(L, "ocopy"),
                      next = block(L, "onext");
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_sout, ""), next, check);
    LLVMPositionBuilderAtEnd(bld, check);
    LLVMValueRef p = ldp(L, L->a_sout, in->states[s]);
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, p, ""), next, copy);
    LLVMPositionBuilderAtEnd(bld, copy);
    LLVMBuildMemCpy(bld, p, 4, L->buf[in->state_buf[s]], 4,
                    mul(L, mul(L, L->a_B, ci64(L, ct->numel)), ci64(L, 4)));
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, next);
  }
}

/* Outputs past a sequence's end are zero. */
static void emit_zero_outputs(Lower *L) {
  LLVMBuilderRef bld = L->bld;
  LLVMBasicBlockRef z = block(L, "zero"), after = block(L, "zeroed");
  LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_lengths, ""), after, z);
  LLVMPositionBuilderAtEnd(bld, z);
  for (int o = 0; o < L->fn->outputs.n; o++) {
    int64_t ne = 1;
    const SchedValue *v = L->fn->outputs.v[o].value >= 0 ? &L->v[L->fn->outputs.v[o].value] : NULL;
    if (v) ne = sched_row_floats(v);
    LLVMValueRef dst = ldp(L, L->a_outputs, o);
    LLVMBuildMemSet(bld, dst, LLVMConstInt(LLVMInt8TypeInContext(L->cx), 0, 0),
                    mul(L, mul(L, mul(L, L->a_B, L->a_T), ci64(L, ne)), ci64(L, 4)), 4);
  }
  LLVMBuildBr(bld, after);
  LLVMPositionBuilderAtEnd(bld, after);
}

/* ---- parallel loops ------------------------------------------------------------ */

/* The slots of a parallel loop's context: the instance's arguments, the
 * first item of this round, then every buffer's address. */
enum {
  CTX_PARAMS,
  CTX_INPUTS,
  CTX_LENGTHS,
  CTX_SIN,
  CTX_OUTPUTS,
  CTX_SOUT,
  CTX_B,
  CTX_T,
  CTX_REV,
  CTX_TC,
  CTX_T0,
  CTX_TN,
  CTX_FIRST,
  CTX_EXTRA,
  CTX_BUFS
};
/* Items per round: the pool counts parts in an int. */
#define PAR_ROUND ((int64_t)1 << 30)

static int is_i64_slot(int k) {
  return k == CTX_B || k == CTX_T || k == CTX_REV || k == CTX_TC || k == CTX_T0 || k == CTX_TN ||
         k == CTX_FIRST || k == CTX_EXTRA;
}

void emit_parallel_for(Lower *L, LLVMValueRef n, LLVMValueRef extra, ParBody body,
                       const void *arg) {
  LLVMBuilderRef bld = L->bld;
  int nb = L->in->bufs.n;
  /* The context lives in the entry block: one slot per argument and buffer. */
  LLVMBasicBlockRef here = LLVMGetInsertBlock(bld);
  LLVMValueRef ctx = entry_alloca(L, LLVMArrayType(L->i64, (unsigned)(CTX_BUFS + nb)), "ctx");
  LLVMValueRef vals[CTX_BUFS] = {L->a_params, L->a_inputs, L->a_lengths, L->a_sin, L->a_outputs,
                                 L->a_sout,   L->a_B,      L->a_T,       NULL,     NULL,
                                 NULL,        NULL,        NULL,         NULL};
  vals[CTX_REV] = LLVMBuildSExt(bld, L->a_rev, L->i64, "");
  vals[CTX_TC] = L->Tc ? L->Tc : ci64(L, 0);
  vals[CTX_T0] = L->t0 ? L->t0 : ci64(L, 0);
  vals[CTX_TN] = L->tn ? L->tn : ci64(L, 0);
  vals[CTX_FIRST] = ci64(L, 0);
  vals[CTX_EXTRA] = extra ? extra : ci64(L, 0);
  /* The worker: void(ptr ctx, i32 i), its own frame over the same buffers.
   * It is built first, so that the caller stores only the buffers it reads
   * (a grid cell's unrolled row has thousands of buffers, and a store of
   * each per call would be most of a step). */
  LLVMTypeRef wpt[2] = {L->ptr, L->i32};
  LLVMTypeRef wty = LLVMFunctionType(L->void_t, wpt, 2, 0);
  LLVMValueRef wf = LLVMAddFunction(
      L->mod, arena_printf(L->a, "%s.worker%d", L->s->sig.symbol, L->nworkers++), wty);
  LLVMSetLinkage(wf, LLVMInternalLinkage);
  LLVMAddAttributeAtIndex(wf, LLVMAttributeFunctionIndex,
                          LLVMCreateStringAttribute(L->cx, "prefer-vector-width", 19, "512", 3));
  Lower saved = *L;
  L->fv = wf;
  L->in_worker = 1;
  LLVMPositionBuilderAtEnd(bld, block(L, "entry"));
  LLVMValueRef c = LLVMGetParam(wf, 0);
  LLVMValueRef *w = arena_calloc(L->a, (size_t)(CTX_BUFS + nb), sizeof *w);
  L->buf = arena_calloc(L->a, (size_t)nb + 1, sizeof *L->buf);
  L->ll = arena_calloc(L->a, (size_t)L->fn->nodes.n + 1, sizeof *L->ll);
  if (!w || !L->buf || !L->ll) {
    *L = saved;
    L->failed = 1;
    return;
  }
  for (int k = 0; k < CTX_BUFS + nb; k++) {
    LLVMValueRef idx = ci64(L, k);
    LLVMTypeRef t = is_i64_slot(k) ? L->i64 : L->ptr;
    w[k] = LLVMBuildLoad2(bld, t, LLVMBuildGEP2(bld, t, c, &idx, 1, ""), "");
  }
  L->a_params = w[CTX_PARAMS];
  L->a_inputs = w[CTX_INPUTS];
  L->a_lengths = w[CTX_LENGTHS];
  L->a_sin = w[CTX_SIN];
  L->a_outputs = w[CTX_OUTPUTS];
  L->a_sout = w[CTX_SOUT];
  L->a_B = w[CTX_B];
  L->a_T = w[CTX_T];
  L->a_rev = LLVMBuildTrunc(bld, w[CTX_REV], L->i32, "");
  L->Tc = saved.Tc ? w[CTX_TC] : NULL;
  L->t0 = saved.t0 ? w[CTX_T0] : NULL;
  L->tn = saved.tn ? w[CTX_TN] : NULL;
  L->t = L->r_b = L->r_tok = L->r_tokc = NULL;
  for (int k = 0; k < nb; k++) L->buf[k] = w[CTX_BUFS + k];
  /* Nothing in a worker fails: its status and exit are only a frame. */
  L->status = LLVMBuildAlloca(bld, L->i32, "status");
  L->cleanup = block(L, "cleanup");
  LLVMValueRef item = add(L, w[CTX_FIRST], LLVMBuildSExt(bld, LLVMGetParam(wf, 1), L->i64, ""));
  if (assign_bases(L) == 0) body(L, item, w[CTX_EXTRA], arg);
  LLVMBuildBr(bld, L->cleanup);
  LLVMPositionBuilderAtEnd(bld, L->cleanup);
  LLVMBuildRetVoid(bld);
  int failed = L->failed;
  *L = saved;
  L->failed |= failed;
  LLVMPositionBuilderAtEnd(bld, here);
  for (int k = 0; k < CTX_BUFS + nb; k++) {
    if (k >= CTX_BUFS && !LLVMGetFirstUse(w[k])) { /* a buffer the worker never reads */
      LLVMValueRef gep = LLVMGetOperand(w[k], 0);
      LLVMInstructionEraseFromParent(w[k]);
      LLVMInstructionEraseFromParent(gep);
      continue;
    }
    LLVMValueRef idx = ci64(L, k);
    LLVMValueRef v = k < CTX_BUFS ? vals[k] : L->buf[k - CTX_BUFS];
    LLVMTypeRef t = is_i64_slot(k) ? L->i64 : L->ptr;
    LLVMBuildStore(bld, v, LLVMBuildGEP2(bld, t, ctx, &idx, 1, ""));
  }
  /* Rounds of at most PAR_ROUND items. */
  Loop lr;
  LLVMValueRef nr = LLVMBuildSDiv(bld, add(L, n, ci64(L, PAR_ROUND - 1)), ci64(L, PAR_ROUND), "");
  LLVMValueRef r = loop_begin(L, &lr, ci64(L, 0), nr);
  LLVMValueRef from = mul(L, r, ci64(L, PAR_ROUND));
  LLVMValueRef idx = ci64(L, CTX_FIRST);
  LLVMBuildStore(bld, from, LLVMBuildGEP2(bld, L->i64, ctx, &idx, 1, ""));
  LLVMValueRef cnt = select_min(L, LLVMBuildSub(bld, n, from, ""), ci64(L, PAR_ROUND));
  LLVMTypeRef pt[3] = {L->i32, L->ptr, L->ptr};
  LLVMValueRef args[3] = {LLVMBuildTrunc(bld, cnt, L->i32, ""), wf, ctx};
  /* Like a forward pass, a loop whose pool is busy with another host
   * thread's call runs on its own thread rather than waiting. */
  call_fn(L, "rt_cpu_parallel_for_nowait", L->i32, pt, 3, args);
  loop_end(L, &lr);
}

/* ---- the stage tree ---------------------------------------------------------- */

/* Token rows in parallel: with fewer examples than threads (and not inside
 * a part already), each example's rows of a ROWS stage split into pieces
 * across the pool, as the GEMMs beside them split their rows; a stage with
 * less than ROWS_PAR_WORK element operations per call stays on its thread
 * (the hand-off would cost more), and a piece has at least ROWS_PAR_MIN
 * rows. Rows of a token class are independent: the stage's ops are maps
 * of their own rows. The bound is low enough for a time chunk's bias adds
 * at B = 1 (64 rows of 256) to take both cores of two: GLA 43-47 -> 41-42
 * ms, mLSTM 52-56 -> 50-52, DeltaNet 38-41 -> 37-39 against 64K (4K
 * measured as 16K). */
#define ROWS_PAR_WORK 16384
#define ROWS_PAR_MIN 16

/* Element operations per row of a stage's body (the values it computes). */
static int64_t rows_work(const Lower *L, const SchedOp *ops, int n) {
  int64_t w = 0;
  for (int i = 0; i < n; i++) {
    const SchedOp *op = &ops[i];
    if (op->kind == SCHED_OP_NODE) w += L->v[op->node].numel;
    if (op->kind == SCHED_OP_FUSED)
      for (IrRef r = op->node; r <= op->last; r++) w += L->v[r].numel;
    if (op->kind == SCHED_OP_ROWS) w += rows_work(L, op->body.v, op->body.n);
  }
  return w;
}

static void rows_item(Lower *L, LLVMValueRef item, LLVMValueRef per, const void *arg) {
  const SchedOp *op = arg;
  RowLoop rl = {0};
  rows_open_piece(L, &rl, item, per);
  emit_ops(L, op->body.v, op->body.n);
  rows_close(L, &rl);
}

static void emit_rows(Lower *L, const SchedOp *op) {
  LLVMBuilderRef bld = L->bld;
  int64_t work = rows_work(L, op->body.v, op->body.n);
  if (op->cls != SCHED_TOKEN || work <= 0 || L->in_worker) {
    RowLoop rl = {0};
    rows_open(L, &rl, op->cls);
    emit_ops(L, op->body.v, op->body.n);
    rows_close(L, &rl);
    return;
  }
  /* per: pieces per example, ceil(threads / B) where that leaves each piece
   * ROWS_PAR_MIN rows of the T (or Tc) of an example and the call
   * ROWS_PAR_WORK operations; 1 runs the loop here. */
  LLVMValueRef threads =
      LLVMBuildSExt(bld, call_fn(L, "rt_cpu_get_num_threads", L->i32, NULL, 0, NULL), L->i64, "");
  LLVMValueRef nested = LLVMBuildICmp(
      bld, LLVMIntNE, call_fn(L, "rt_cpu_in_parallel", L->i32, NULL, 0, NULL), ci32(L, 0), "");
  LLVMValueRef steps = L->in->chunked ? L->tn : L->a_T;
  LLVMValueRef B1 = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, L->a_B, ci64(L, 1), ""),
                                    ci64(L, 1), L->a_B, "");
  LLVMValueRef per =
      LLVMBuildSDiv(bld, add(L, threads, LLVMBuildSub(bld, B1, ci64(L, 1), "")), B1, "");
  per = select_min(L, per, LLVMBuildSDiv(bld, steps, ci64(L, ROWS_PAR_MIN), ""));
  LLVMValueRef big = LLVMBuildICmp(bld, LLVMIntSGE, mul(L, mul(L, B1, steps), ci64(L, work)),
                                   ci64(L, ROWS_PAR_WORK), "");
  LLVMValueRef go =
      LLVMBuildAnd(bld, LLVMBuildAnd(bld, LLVMBuildNot(bld, nested, ""), big, ""),
                   LLVMBuildAnd(bld, LLVMBuildICmp(bld, LLVMIntSLT, L->a_B, threads, ""),
                                LLVMBuildICmp(bld, LLVMIntSGE, per, ci64(L, 2), ""), ""),
                   "");
  LLVMBasicBlockRef par = block(L, "rows_par"), ser = block(L, "rows_ser"),
                    done = block(L, "rows_done");
  LLVMBuildCondBr(bld, go, par, ser);
  LLVMPositionBuilderAtEnd(bld, par);
  emit_parallel_for(L, mul(L, L->a_B, per), per, rows_item, op);
  LLVMBuildBr(bld, done);
  LLVMPositionBuilderAtEnd(bld, ser);
  RowLoop rl = {0};
  rows_open(L, &rl, op->cls);
  emit_ops(L, op->body.v, op->body.n);
  rows_close(L, &rl);
  LLVMBuildBr(bld, done);
  LLVMPositionBuilderAtEnd(bld, done);
}

/* Rows a GEMM of class cls runs over. */
static LLVMValueRef class_rows(Lower *L, SchedClass cls) {
  if (cls == SCHED_STEP || cls == SCHED_EXAMPLE) return L->a_B;
  return L->in->chunked ? mul(L, L->a_B, L->Tc) : mul(L, L->a_B, L->a_T);
}

void emit_ops(Lower *L, const SchedOp *ops, int n) {
  for (int i = 0; i < n && !L->failed; i++) {
    const SchedOp *op = &ops[i];
    switch (op->kind) {
    case SCHED_OP_NODE:
      emit_row(L, op->node);
      break;
    case SCHED_OP_FUSED:
      emit_fused(L, op->cls, op->node, op->last);
      break;
    case SCHED_OP_ROWS:
      emit_rows(L, op);
      break;
    case SCHED_OP_GEMM:
      emit_gemm(L, op->node, class_rows(L, op->cls));
      break;
    case SCHED_OP_ACROSS:
      emit_across(L, op);
      break;
    case SCHED_OP_CALL:
      emit_call(L, op->node);
      break;
    case SCHED_OP_CONV:
      if (L->fn->nodes.v[op->node].nargs == 4)
        emit_conv_window(L, op->node);
      else
        emit_causal_conv(L, op->node);
      break;
    case SCHED_OP_SCAN:
      if (op->group)
        emit_scan_group(L, op);
      else
        emit_scan(L, op->node);
      break;
    case SCHED_OP_DELAY:
      emit_delay(L, op->node);
      break;
    case SCHED_OP_LINATTN:
      emit_linattn(L, op);
      break;
    case SCHED_OP_ATTN:
      emit_attn(L, op);
      break;
    case SCHED_OP_WINDOW:
      emit_window(L, op->node);
      break;
    case SCHED_OP_SEQ_FINAL_STATES:
      emit_seq_final_states(L);
      break;
    case SCHED_OP_CHUNK_STATES:
      emit_chunk_states(L);
      break;
    case SCHED_OP_PACK:
      emit_pack(L, op->node);
      break;
    case SCHED_OP_LANE_COPIES:
      emit_lane_copies(L, op);
      break;
    case SCHED_OP_ZERO_OUTPUTS:
      emit_zero_outputs(L);
      break;
    case SCHED_OP_STATE_INIT:
      emit_state_init(L);
      break;
    case SCHED_OP_TOKEN_OUTPUTS:
      emit_token_outputs(L);
      break;
    case SCHED_OP_CHUNK_LOOP:
      emit_chunk_loop(L, op);
      break;
    case SCHED_OP_TIME_LOOP:
      emit_time_loop(L, op);
      break;
    case SCHED_OP_COMMIT:
      emit_commit(L);
      break;
    case SCHED_OP_FINAL_STATES:
      emit_final_states(L);
      break;
    }
  }
}

/* ---- the frame ------------------------------------------------------------------ */

/* The argument checks: B and T in range, B*T times the floats per token
 * within the limit, every length in [0, T]. */
static void emit_checks(Lower *L) {
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef B = L->a_B, T = L->a_T;
  LLVMValueRef bad = LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, B, ci64(L, 0), ""),
                                 LLVMBuildICmp(bld, LLVMIntSLT, T, ci64(L, 0), ""), "");
  fail_with(L, bad, ABI_ERR_ARG);
  const int64_t limit = (int64_t)1 << 40;
  LLVMValueRef toobig =
      LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, (int64_t)1 << 31), ""),
                  LLVMBuildICmp(bld, LLVMIntSGT, T, ci64(L, (int64_t)1 << 31), ""), "");
  toobig = LLVMBuildOr(
      bld, toobig,
      LLVMBuildICmp(bld, LLVMIntSGT, mul(L, B, T), ci64(L, limit / L->in->per_token), ""), "");
  toobig = LLVMBuildOr(
      bld, toobig, LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, limit / L->in->per_example), ""), "");
  fail_with(L, toobig, ABI_ERR_NOMEM);
  LLVMBasicBlockRef chk = block(L, "lenchk"), after = block(L, "lenok");
  LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_lengths, ""), after, chk);
  LLVMPositionBuilderAtEnd(bld, chk);
  Loop lb;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), B);
  LLVMValueRef len = len_of(L, b);
  fail_with(L,
            LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, len, ci64(L, 0), ""),
                        LLVMBuildICmp(bld, LLVMIntSGT, len, T, ""), ""),
            ABI_ERR_LENGTH);
  loop_end(L, &lb);
  LLVMBuildBr(bld, after);
  LLVMPositionBuilderAtEnd(bld, after);
}

/* The run-time policies the schedule states: the chunk length and whether
 * this call packs its weights. */
static void emit_policies(Lower *L) {
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef B = L->a_B, T = L->a_T, BT = mul(L, B, T);
  const Schedule *s = L->s;
  if (L->in->chunked) {
    /* As many steps as keep B*Tc token rows within the budget, at least 1
     * and at most T. */
    LLVMValueRef Bm =
        LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, 1), ""), B, ci64(L, 1), "");
    /* The budget of a call on several threads where this call's threads
     * are its own (not a slice of a batch). */
    LLVMValueRef threads = call_fn(L, "rt_cpu_get_num_threads", L->i32, NULL, 0, NULL);
    LLVMValueRef nested = call_fn(L, "rt_cpu_in_parallel", L->i32, NULL, 0, NULL);
    LLVMValueRef many = LLVMBuildAnd(bld, LLVMBuildICmp(bld, LLVMIntSGT, threads, ci32(L, 1), ""),
                                     LLVMBuildICmp(bld, LLVMIntEQ, nested, ci32(L, 0), ""), "");
    LLVMValueRef budget =
        LLVMBuildSelect(bld, many, ci64(L, s->chunk_budget_threads / L->in->chunk_floats),
                        ci64(L, s->chunk_budget / L->in->chunk_floats), "");
    LLVMValueRef tc = LLVMBuildSDiv(bld, budget, Bm, "");
    /* A parallel form's chunks have a floor (SchedInst.min_tc). */
    LLVMValueRef mt = ci64(L, L->in->min_tc);
    tc = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, tc, mt, ""), mt, tc, "");
    tc = select_min(L, tc, T);
    L->Tc = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, tc, ci64(L, 1), ""), tc, ci64(L, 1),
                            "");
  }
  L->packed = LLVMBuildICmp(bld, LLVMIntSGE, BT, ci64(L, s->pack_min_tokens), "");
  L->packed = LLVMBuildAnd(
      bld, L->packed,
      LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, B, ci64(L, s->pack_swap_min_b), ""),
                  LLVMBuildICmp(bld, LLVMIntSGE, T, ci64(L, s->pack_min_steps), ""), ""),
      "packed");
}

/* Rows of a buffer at run time. */
static LLVMValueRef buf_rows(Lower *L, SchedRows rows) {
  switch (rows) {
  case SCHED_ROWS_ONE:
    return ci64(L, 1);
  case SCHED_ROWS_B:
    return L->a_B;
  case SCHED_ROWS_BT:
    return mul(L, L->a_B, L->a_T);
  case SCHED_ROWS_BTC:
    return mul(L, L->a_B, L->Tc);
  }
  return ci64(L, 0);
}

/* Places the schedule's buffers, in order, at 16-float boundaries in two
 * blocks (scratch, zeroed; weights, not), allocates both and points every
 * node at its value. Sizes depend on B and T, so offsets are computed at
 * run time. */
static int emit_buffers(Lower *L, LLVMValueRef scratch_slot, LLVMValueRef wscratch_slot) {
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef *off = arena_calloc(L->a, (size_t)in->bufs.n + 1, sizeof *off);
  L->buf = arena_calloc(L->a, (size_t)in->bufs.n + 1, sizeof *L->buf);
  if (!off || !L->buf) return -1;
  LLVMValueRef end[2] = {ci64(L, 0), ci64(L, 0)};
  for (int i = 0; i < in->bufs.n; i++) {
    const SchedBuf *b = &in->bufs.v[i];
    LLVMValueRef floats = mul(L, buf_rows(L, b->rows), ci64(L, b->row_floats));
    /* A packed weight takes room only when the call packs it. */
    if (b->kind == SCHED_BUF_PACKED)
      floats = LLVMBuildSelect(
          bld,
          LLVMBuildAnd(bld, L->packed, LLVMBuildIsNull(bld, gemm_prepared(L, b->node), ""), ""),
          floats, ci64(L, 0), "");
    off[i] = end[b->weights_block];
    LLVMValueRef rounded =
        LLVMBuildAnd(bld, add(L, floats, ci64(L, 15)), ci64(L, ~(int64_t)15), "");
    end[b->weights_block] = add(L, end[b->weights_block], rounded);
  }
  LLVMTypeRef pt = L->i64;
  LLVMValueRef bytes = mul(L, end[0], ci64(L, 4));
  L->scratch = call_fn(L, "rt_cpu_alloc", L->ptr, &pt, 1, &bytes);
  LLVMBuildStore(bld, L->scratch, scratch_slot);
  fail_with(L, LLVMBuildIsNull(bld, L->scratch, ""), ABI_ERR_NOMEM);
  LLVMValueRef wbytes = mul(L, end[1], ci64(L, 4));
  L->wscratch = call_fn(L, "rt_cpu_alloc_uninit", L->ptr, &pt, 1, &wbytes);
  LLVMBuildStore(bld, L->wscratch, wscratch_slot);
  fail_with(L, LLVMBuildIsNull(bld, L->wscratch, ""), ABI_ERR_NOMEM);
  for (int i = 0; i < in->bufs.n; i++)
    L->buf[i] = gepf(L, in->bufs.v[i].weights_block ? L->wscratch : L->scratch, off[i]);
  return assign_bases(L);
}

int assign_bases(Lower *L) {
  const SchedInst *in = L->in;
  const IrFunc *fn = L->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const SchedValue *n = &L->v[r];
    const IrNode *nd = &fn->nodes.v[r];
    NodeLL *ll = &L->ll[r];
    switch (nd->op) {
    case IR_PARAM:
      ll->base = ldp(L, L->a_params, in->params[nd->index]);
      break;
    case IR_INPUT:
      ll->base = ldp(L, L->a_inputs, nd->index);
      break;
    case IR_STATE:
      ll->base = L->buf[in->state_buf[nd->index]];
      break;
    case IR_RESHAPE:
      ll->base = L->ll[nd->args[0]].base;
      break;
    case IR_RESULT:
      ll->base = L->buf[L->v[nd->args[0]].call_out[nd->index]];
      break;
    case IR_CALL:
      ll->base = L->buf[n->call_out[0]];
      break;
    default:
      if (n->buf >= 0) ll->base = L->buf[n->buf];
      if (n->pack_buf >= 0) ll->wt = L->buf[n->pack_buf];
      if (n->gather_buf >= 0) ll->gath = L->buf[n->gather_buf];
      if (n->creal_buf >= 0) ll->wr = L->buf[n->creal_buf];
    }
    if (!ll->base && n->uses > 0 && (n->group < 0 || n->stored) && !n->folded) {
      diag_internal(L->de, "codegen", "node %d (%s) has no buffer", r, ir_op_info[nd->op].text);
      return -1;
    }
  }
  return 0;
}

int emit_function(Lower *L, int i) {
  const SchedInst *in = &L->s->insts.v[i];
  const IrFunc *fn = in->fn;
  L->in = in;
  L->fn = fn;
  L->v = in->values;
  L->ll = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(NodeLL));
  L->fval = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  L->fval_im = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  L->fmember = arena_calloc(L->a, (size_t)fn->nodes.n + 1, 1);
  if (!L->ll || !L->fval || !L->fval_im || !L->fmember) return -1;
  LLVMBuilderRef bld = L->bld;
  L->fv = L->inst_fn[i];
  LLVMPositionBuilderAtEnd(bld, block(L, "entry"));
  L->a_params = LLVMGetParam(L->fv, 0);
  L->a_B = LLVMGetParam(L->fv, 1);
  L->a_T = LLVMGetParam(L->fv, 2);
  L->a_inputs = LLVMGetParam(L->fv, 3);
  L->a_lengths = LLVMGetParam(L->fv, 4);
  L->a_sin = LLVMGetParam(L->fv, 5);
  L->a_outputs = LLVMGetParam(L->fv, 6);
  L->a_sout = LLVMGetParam(L->fv, 7);
  L->a_rev = LLVMGetParam(L->fv, 8);
  L->status = LLVMBuildAlloca(bld, L->i32, "status");
  LLVMValueRef scratch_slot = LLVMBuildAlloca(bld, L->ptr, "scratch");
  LLVMValueRef wscratch_slot = LLVMBuildAlloca(bld, L->ptr, "wscratch");
  LLVMBuildStore(bld, ci32(L, 0), L->status);
  LLVMBuildStore(bld, LLVMConstNull(L->ptr), scratch_slot);
  LLVMBuildStore(bld, LLVMConstNull(L->ptr), wscratch_slot);
  L->cleanup = block(L, "cleanup");
  L->Tc = L->t0 = L->tn = L->t = NULL;

  emit_checks(L);
  emit_policies(L);
  if (emit_buffers(L, scratch_slot, wscratch_slot)) return -1;
  /* CONST nodes run once: their one row. */
  L->r_b = L->r_tok = L->r_tokc = ci64(L, 0);
  emit_ops(L, in->ops.v, in->ops.n);

  LLVMBuildBr(bld, L->cleanup);
  LLVMPositionBuilderAtEnd(bld, L->cleanup);
  LLVMTypeRef pt = L->ptr;
  LLVMValueRef sp = LLVMBuildLoad2(bld, L->ptr, scratch_slot, "");
  call_fn(L, "rt_cpu_free", L->void_t, &pt, 1, &sp);
  LLVMValueRef wp = LLVMBuildLoad2(bld, L->ptr, wscratch_slot, "");
  call_fn(L, "rt_cpu_free", L->void_t, &pt, 1, &wp);
  LLVMBuildRet(bld, LLVMBuildLoad2(bld, L->i32, L->status, ""));
  return L->failed ? -1 : 0;
}
