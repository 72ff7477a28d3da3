/* chunk.c - a matrix state's chunked form (sched/chunk.c): per example, one
 * call of the runtime's chunkwise kernel (rt_cpu_linattn, rt_cpu_delta,
 * rt_cpu_dplr or rt_cpu_plstm) per readout, over
 * the example's sequence in the direction the instance runs (a reversed
 * sequence is read from its last token with negative strides). The last
 * call runs on the state's storage and leaves the final state there. */
#include "codegen/llvm.h"

/* Row pointer of node r for example b at its first step, and its stride in
 * floats from one step to the next (0 for values constant over the
 * sequence): a time chunk's rows hold the steps in order (b*Tc + j); a
 * whole-sequence buffer is read from token t0 in direction dir. */
LLVMValueRef seq_operand(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef t0, LLVMValueRef dir,
                         LLVMValueRef *ld) {
  const SchedValue *v = &L->v[r];
  int64_t f = sched_row_floats(v);
  LLVMValueRef row = ci64(L, 0);
  *ld = ci64(L, 0);
  if (v->cls == SCHED_STEP || v->cls == SCHED_EXAMPLE) {
    row = b;
  } else if (v->cls == SCHED_TOKEN && v->chunked) {
    row = mul(L, b, L->Tc);
    *ld = ci64(L, f);
  } else if (v->cls == SCHED_TOKEN) {
    row = add(L, mul(L, b, L->a_T), t0);
    *ld = mul(L, dir, ci64(L, f));
  }
  return gepf(L, L->ll[r].base, mul(L, row, ci64(L, f)));
}

/* dst[h, j, i] = src[h, i, j] for heads matrices of rows x cols. */
static void transpose_heads(Lower *L, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef heads,
                            int64_t rows, int64_t cols) {
  Loop lh, li, lj;
  LLVMValueRef h = loop_begin(L, &lh, ci64(L, 0), heads);
  LLVMValueRef base = mul(L, h, ci64(L, rows * cols));
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, rows));
  LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, cols));
  stf(L, ldf(L, src, add(L, base, add(L, mul(L, i, ci64(L, cols)), j))), dst,
      add(L, base, add(L, mul(L, j, ci64(L, rows)), i)));
  /* dst and src are different buffers (the state and its copy): each
   * element is written once. */
  loop_end_parallel(L, &lj);
  loop_end_parallel(L, &li);
  loop_end_parallel(L, &lh);
}

/* One item of the chunked form: example b's heads [h0, h0 + hn) and value
 * columns [v0, v0 + vn), where item = b * per + g and per, the loop's extra
 * value, is 1 (every head, every column), heads (one head each) or heads x
 * slices (a slice of one head's columns each: the rows of S are
 * independent, so a slice is the kernel on V = vn, its rows of S, v and o). */
static void linattn_item(Lower *L, LLVMValueRef item, LLVMValueRef per, const void *arg) {
  const SchedOp *op = arg;
  const SchedLinattn *la = op->linattn;
  const SchedInst *in = L->in;
  LLVMBuilderRef bld = L->bld;
  int64_t hfloats = la->J * la->K * la->V, sfloats = la->heads * hfloats;
  LLVMValueRef b = LLVMBuildSDiv(bld, item, per, "");
  LLVMValueRef g = LLVMBuildSRem(bld, item, per, "");
  LLVMValueRef one = LLVMBuildICmp(bld, LLVMIntEQ, per, ci64(L, 1), "");
  LLVMValueRef hsplit = LLVMBuildSelect(bld, one, ci64(L, 1), ci64(L, la->heads), "");
  LLVMValueRef slices = LLVMBuildSDiv(bld, per, hsplit, "");
  LLVMValueRef hn = LLVMBuildSDiv(bld, ci64(L, la->heads), hsplit, "");
  LLVMValueRef h0 = mul(L, LLVMBuildSDiv(bld, g, slices, ""), hn);
  /* Slices of a multiple of 16 columns (the kernels' vectors), the last
   * one short (or empty: V < 1 runs nothing). */
  LLVMValueRef width = LLVMBuildSDiv(
      bld, add(L, ci64(L, la->V), LLVMBuildSub(bld, slices, ci64(L, 1), "")), slices, "");
  width = mul(L, LLVMBuildSDiv(bld, add(L, width, ci64(L, 15)), ci64(L, 16), ""), ci64(L, 16));
  width = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntEQ, slices, ci64(L, 1), ""),
                          ci64(L, la->V), width, "");
  LLVMValueRef v0 = mul(L, LLVMBuildSRem(bld, g, slices, ""), width);
  LLVMValueRef vn = select_min(L, width, LLVMBuildSub(bld, ci64(L, la->V), v0, ""));
  vn = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, vn, ci64(L, 0), ""), ci64(L, 0), vn, "");
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef isrev = LLVMBuildICmp(bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  /* The steps this call runs: the sequence, or those of the time chunk
   * [t0, t0 + tn) inside it; step s is token s, or len - 1 - s reversed. */
  LLVMValueRef s0 = ci64(L, 0), n = len;
  if (in->chunked) {
    LLVMValueRef jn = select_min(L, LLVMBuildSub(bld, len, L->t0, ""), L->tn);
    s0 = L->t0;
    n = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, jn, ci64(L, 0), ""), jn, ci64(L, 0),
                        "");
  }
  LLVMValueRef rt0 = LLVMBuildSub(bld, LLVMBuildSub(bld, len, ci64(L, 1), ""), s0, "");
  LLVMValueRef t0 = LLVMBuildSelect(bld, isrev, rt0, s0, "");
  t0 = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, n, ci64(L, 0), ""), t0, ci64(L, 0), "");
  LLVMValueRef dir = LLVMBuildSelect(bld, isrev, ci64(L, -1), ci64(L, 1), "");
  LLVMValueRef ldk, ldv, ldg = ci64(L, 0);
  LLVMValueRef k = gepf(L, seq_operand(L, la->k, b, t0, dir, &ldk), mul(L, h0, ci64(L, la->K)));
  LLVMValueRef v =
      gepf(L, seq_operand(L, la->v, b, t0, dir, &ldv), add(L, mul(L, h0, ci64(L, la->V)), v0));
  LLVMValueRef lg =
      la->no_gate ? LLVMConstNull(L->ptr)
                  : gepf(L, seq_operand(L, la->lg, b, t0, dir, &ldg), mul(L, h0, ci64(L, la->Kg)));
  LLVMValueRef hoff = add(L, add(L, mul(L, b, ci64(L, sfloats)), mul(L, h0, ci64(L, hfloats))),
                          mul(L, v0, ci64(L, la->K)));
  LLVMValueRef store = gepf(L, L->buf[in->state_buf[la->state]], hoff);
  LLVMValueRef copy = la->copy_buf >= 0 ? gepf(L, L->buf[la->copy_buf], hoff) : NULL;
  LLVMValueRef work =
      gepf(L, L->buf[la->work_buf],
           add(L, mul(L, b, ci64(L, la->work_floats)), mul(L, h0, ci64(L, la->work_head))));
  if (la->split_buf >= 0) /* a slice: its own scratch (item < SCHED_CHUNK_SLICES) */
    work = LLVMBuildSelect(
        bld, LLVMBuildICmp(bld, LLVMIntSGT, slices, ci64(L, 1), ""),
        gepf(L, L->buf[la->split_buf],
             mul(L, select_min(L, item, ci64(L, SCHED_CHUNK_SLICES - 1)), ci64(L, la->work_head))),
        work, "");
  /* The kernel works on [L..., V, K]: a state stored [L..., K, V] runs on a
   * transposed copy, transposed back at the end. */
  LLVMValueRef S = store;
  if (la->transposed) {
    transpose_heads(L, copy, store, hn, la->K, la->V);
    S = copy;
  }
  LLVMTypeRef pt[24];
  for (int i = 0; i < 24; i++) pt[i] = L->i64;
  int calls = la->nreads ? la->nreads : 1;
  for (int c = 0; c < calls; c++) {
    IrRef rd = la->nreads ? la->reads[c] : IR_NONE;
    LLVMValueRef q = LLVMConstNull(L->ptr), o = LLVMConstNull(L->ptr);
    LLVMValueRef ldq = ci64(L, 0), ldo = ci64(L, 0);
    if (rd != IR_NONE) {
      q = gepf(L, seq_operand(L, L->fn->nodes.v[rd].args[0], b, t0, dir, &ldq),
               mul(L, h0, ci64(L, la->K)));
      o = gepf(L, seq_operand(L, rd, b, t0, dir, &ldo), add(L, mul(L, h0, ci64(L, la->V)), v0));
    }
    /* All calls but the last start from a copy of the initial state (of a
     * slice, its rows: a slice is one head). */
    LLVMValueRef Sc = S;
    if (c < calls - 1) {
      if (la->kind == SCHED_CHUNK_PLSTM) {
        /* A slice of plstm's state is vn rows of each of its J blocks. */
        Loop lj;
        LLVMValueRef jb = loop_begin(L, &lj, ci64(L, 0), mul(L, hn, ci64(L, la->J)));
        LLVMValueRef at = mul(L, jb, ci64(L, la->V * la->K));
        LLVMBuildMemCpy(bld, gepf(L, copy, at), 4, gepf(L, S, at), 4,
                        mul(L, vn, ci64(L, la->K * 4)));
        loop_end(L, &lj);
      } else {
        LLVMBuildMemCpy(bld, copy, 4, S, 4, mul(L, hn, mul(L, vn, ci64(L, la->K * 4))));
      }
      Sc = copy;
    }
    if (la->kind == SCHED_CHUNK_PLSTM) {
      /* m, s [L..., J] and tr [L..., J, J] per token; the state's J blocks
       * of every head V K floats apart (a slice: vn rows of each). */
      LLVMValueRef m = LLVMConstNull(L->ptr), ldm = ci64(L, 0), ldt, lds;
      if (rd != IR_NONE)
        m = gepf(L, seq_operand(L, L->fn->nodes.v[rd].args[1], b, t0, dir, &ldm),
                 mul(L, h0, ci64(L, la->J)));
      LLVMValueRef tr =
          gepf(L, seq_operand(L, la->tr, b, t0, dir, &ldt), mul(L, h0, ci64(L, la->J * la->J)));
      LLVMValueRef sv =
          gepf(L, seq_operand(L, la->src, b, t0, dir, &lds), mul(L, h0, ci64(L, la->J)));
      LLVMValueRef args[24] = {n,
                               hn,
                               ci64(L, la->J),
                               ci64(L, la->K),
                               vn,
                               q,
                               ldq,
                               m,
                               ldm,
                               ci32(L, rd != IR_NONE && L->fn->nodes.v[rd].index ? 1 : 0),
                               tr,
                               ldt,
                               sv,
                               lds,
                               v,
                               ldv,
                               k,
                               ldk,
                               Sc,
                               ci64(L, la->V * la->K),
                               o,
                               ldo,
                               ci64(L, la->chunk),
                               work};
      int ptrs[] = {5, 7, 10, 12, 14, 16, 18, 20, 23};
      for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) pt[ptrs[i]] = L->ptr;
      pt[9] = L->i32;
      call_fn(L, "rt_cpu_plstm_ld", L->void_t, pt, 24, args);
      pt[9] = L->i64;
      continue;
    }
    if (la->kind == SCHED_CHUNK_DPLR) {
      /* lw, a, b, k [L..., K] and v [L..., V] per token. */
      LLVMValueRef ldw, lda, ldb;
      LLVMValueRef lw =
          gepf(L, seq_operand(L, la->lg, b, t0, dir, &ldw), mul(L, h0, ci64(L, la->K)));
      LLVMValueRef av =
          gepf(L, seq_operand(L, la->a, b, t0, dir, &lda), mul(L, h0, ci64(L, la->K)));
      LLVMValueRef bv =
          gepf(L, seq_operand(L, la->b, b, t0, dir, &ldb), mul(L, h0, ci64(L, la->K)));
      LLVMValueRef args[21] = {
          n, hn,  ci64(L, la->K),     vn,  q, ldq, lw, ldw, av, lda, bv, ldb, v, ldv, k, ldk, Sc,
          o, ldo, ci64(L, la->chunk), work};
      int ptrs[] = {4, 6, 8, 10, 12, 14, 16, 17, 20};
      for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) pt[ptrs[i]] = L->ptr;
      call_fn(L, "rt_cpu_dplr", L->void_t, pt, 21, args);
      continue;
    }
    if (la->kind == SCHED_CHUNK_DELTA) {
      /* k [R, L..., K], v [R, L..., V], beta [R, L...], lg [L...]: factor r
       * of a token is heads rows further on. */
      LLVMValueRef ldbeta, ldlg = ci64(L, 0);
      LLVMValueRef beta = gepf(L, seq_operand(L, la->beta, b, t0, dir, &ldbeta), h0);
      LLVMValueRef glg = la->no_gate ? LLVMConstNull(L->ptr)
                                     : gepf(L, seq_operand(L, la->lg, b, t0, dir, &ldlg), h0);
      LLVMValueRef args[23] = {n,
                               hn,
                               ci64(L, la->K),
                               vn,
                               ci64(L, la->R),
                               q,
                               ldq,
                               k,
                               ldk,
                               ci64(L, la->heads * la->K),
                               v,
                               ldv,
                               ci64(L, la->heads * la->V),
                               beta,
                               ldbeta,
                               ci64(L, la->heads),
                               glg,
                               ldlg,
                               Sc,
                               o,
                               ldo,
                               ci64(L, la->chunk),
                               work};
      int ptrs[] = {5, 7, 10, 13, 16, 18, 19, 22};
      for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) pt[ptrs[i]] = L->ptr;
      call_fn(L, "rt_cpu_delta", L->void_t, pt, 23, args);
      continue;
    }
    LLVMValueRef args[19] = {n,
                             hn,
                             ci64(L, la->K),
                             vn,
                             q,
                             ldq,
                             k,
                             ldk,
                             v,
                             ldv,
                             lg,
                             ldg,
                             ci64(L, la->Kg),
                             Sc,
                             o,
                             ldo,
                             ci64(L, la->chunk),
                             ci32(L, rd != IR_NONE && L->fn->nodes.v[rd].index ? 1 : 0),
                             work};
    int ptrs[] = {4, 6, 8, 10, 13, 14, 18};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) pt[ptrs[i]] = L->ptr;
    pt[17] = L->i32;
    call_fn(L, "rt_cpu_linattn", L->void_t, pt, 19, args);
  }
  if (la->transposed) transpose_heads(L, store, copy, hn, la->V, la->K);
}

/* Examples run on the pool; with fewer examples than threads (and not
 * already inside a part of a split batch), each head of each is an item.
 * One head over the whole sequence reads its rows in pieces, slower per
 * core than every head in step, so the split is only for spare threads. */
void emit_linattn(Lower *L, const SchedOp *op) {
  const SchedLinattn *la = op->linattn;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef threads =
      LLVMBuildSExt(bld, call_fn(L, "rt_cpu_get_num_threads", L->i32, NULL, 0, NULL), L->i64, "");
  LLVMValueRef nested = LLVMBuildICmp(
      bld, LLVMIntNE, call_fn(L, "rt_cpu_in_parallel", L->i32, NULL, 0, NULL), ci32(L, 0), "");
  LLVMValueRef few = LLVMBuildAnd(bld, LLVMBuildNot(bld, nested, ""),
                                  LLVMBuildICmp(bld, LLVMIntSLT, L->a_B, threads, ""), "");
  LLVMValueRef per = LLVMBuildSelect(bld, few, ci64(L, la->heads), ci64(L, 1), "");
  if (la->split_buf >= 0) {
    /* Threads still idle split each head's columns: slices of at least 16,
     * at most SCHED_CHUNK_SLICES calls in all. */
    LLVMValueRef bh = mul(L, L->a_B, ci64(L, la->heads));
    bh = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, bh, ci64(L, 1), ""), ci64(L, 1), bh,
                         "");
    LLVMValueRef slices = select_min(L, LLVMBuildSDiv(bld, threads, bh, ""), ci64(L, la->V / 16));
    slices = select_min(L, slices, LLVMBuildSDiv(bld, ci64(L, SCHED_CHUNK_SLICES), bh, ""));
    slices = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, slices, ci64(L, 1), ""),
                             ci64(L, 1), slices, "");
    per = LLVMBuildSelect(bld, few, mul(L, per, slices), per, "");
  }
  emit_parallel_for(L, mul(L, L->a_B, per), per, linattn_item, op);
}
