/* chunk.c - the chunked form of a matrix state on the GPU (sched/chunk.c):
 * a block per (example, head) walks the example's sequence in chunks of C
 * tokens (seq_linattn_chunk, prelude.c), in the direction the instance
 * runs, the state in its own storage; one pass per readout, every pass but
 * the last on a copy of the initial state, as on the CPU. The products run
 * on the block's threads in plain fp32 (tensor cores are still to come).
 * The WY forms of the delta rule and of the generalized one (dplr), and the
 * small dense transitions' form (plstm), likewise (seq_delta_chunk,
 * seq_dplr_chunk, seq_plstm_chunk). */
#include "cudagen/cu.h"

/* Opens the loop of a chunked form's kernel over (example, head) items, a
 * block each: b, h, the example's length, its first processed token t0 and
 * direction (cu_seq_operand's rows read them), and `store`, the head's
 * state. */
static void item_open(Cu *c, const SchedLinattn *la, long long sf, long long hf) {
  long long H = la->heads;
  fprintf(c->o,
          "  for (i64 item = blockIdx.x; item < B * %lld; item += gridDim.x) {\n"
          "    i64 b = item / %lld, h = item %% %lld, len = SEQ_LEN(b);\n"
          "    i64 t0 = rev && len > 0 ? len - 1 : 0, dir = rev ? -1 : 1;\n"
          "    (void)t0; (void)dir;\n"
          "    float *store = (float *)F[%d] + b * %lld + h * %lld;\n",
          H, H, H, cu_slot_buf(c, c->in->state_buf[la->state]), sf, hf);
}

/* Readout ci of a chunked state's passes: its query, output and (pLSTM)
 * weights with their strides, and the state the pass runs on; opens the
 * pass's block, which every pass but the last starts by copying the initial
 * state (of `hf` floats per head, `sf` per example) into. */
typedef struct Readout {
  const char *q, *ldq, *o, *ldo, *m, *ldm, *S;
  int excl;
} Readout;

static Readout readout_open(Cu *c, const SchedLinattn *la, int ci, long long sf, long long hf) {
  Readout r = {"(const float *)0", "0", "(float *)0", "0", "(const float *)0", "0", "store", 0};
  IrRef rd = la->nreads ? la->reads[ci] : IR_NONE;
  if (rd != IR_NONE) {
    const IrNode *nd = &c->fn->nodes.v[rd];
    r.q = arena_printf(c->a, "%s + h * %lld", cu_seq_operand(c, nd->args[0], &r.ldq),
                       (long long)la->K);
    r.o = arena_printf(c->a, "%s + h * %lld", cu_seq_operand(c, rd, &r.ldo), (long long)la->V);
    r.excl = nd->index != 0;
    if (la->kind == SCHED_CHUNK_PLSTM)
      r.m = arena_printf(c->a, "%s + h * %lld", cu_seq_operand(c, nd->args[1], &r.ldm),
                         (long long)la->J);
  }
  fprintf(c->o, "    {\n");
  if (ci < (la->nreads ? la->nreads : 1) - 1) {
    fprintf(c->o,
            "      float *S = (float *)F[%d] + b * %lld + h * %lld;\n"
            "      SEQ_FOR(e, %lld) S[e] = store[e];\n"
            "      __syncthreads();\n",
            cu_slot_buf(c, la->copy_buf), sf, hf, hf);
    r.S = "S";
  }
  return r;
}

/* The WY forms and pLSTM's: a block per (example, head), the head's chunks
 * in order (seq_delta_chunk, seq_dplr_chunk or seq_plstm_chunk, prelude.c),
 * its scratch a slice of the schedule's work buffer. Operands as on the CPU
 * (codegen/chunk.c): the delta rule's k [R, L..., K], v [R, L..., V], beta
 * [R, L...], lg [L...] (factor r of a token heads rows further on); the
 * generalized rule's lw, a, b, k [L..., K] and v [L..., V]; pLSTM's tr
 * [L..., J, J], src and the readouts' m [L..., J] (the state [L..., J, V,
 * K]). */
static void wy(Cu *c, const SchedOp *op) {
  const SchedLinattn *la = op->linattn;
  int dplr = la->kind == SCHED_CHUNK_DPLR, plstm = la->kind == SCHED_CHUNK_PLSTM;
  long long H = la->heads, K = la->K, V = la->V, R = la->R, J = la->J;
  long long C = la->chunk < 1 ? 1 : la->chunk;
  long long hf = J * K * V, sf = H * hf;
  /* The device function's scratch: the CPU kernel's holds it, but for
   * pLSTM's transitions' products, (C + 1) J^2, where J is large. */
  long long need = dplr    ? 2 * C * K + 4 * C * C + C * V
                   : plstm ? (C + 1) * J * J + 2 * C * J + 2 * C * C
                           : C * R * (C * R + V + C + 1) + 2 * C;
  if (plstm && (J > 64 || la->work_head < need)) {
    cu_unsupported(c, op->node,
                   arena_printf(c->a,
                                "the chunked form of a small dense transition this large (J = "
                                "%lld: its products need %lld floats of scratch, the schedule "
                                "has %lld)",
                                J, need, (long long)la->work_head));
    return;
  }
  if (la->work_head < need) {
    diag_internal(c->de, "cuda", "the chunked form's scratch (%lld floats) is under %lld",
                  (long long)la->work_head, need);
    c->failed = 1;
    return;
  }
  cu_kernel_begin(c, dplr ? "dplr" : plstm ? "plstm" : "delta", RT_CU_GRID_B, H, 1);
  item_open(c, la, sf, hf);
  fprintf(c->o, "    float *W = (float *)F[%d] + b * %lld + h * %lld;\n",
          cu_slot_buf(c, la->work_buf), (long long)la->work_floats, (long long)la->work_head);
  const char *ldk, *ldv, *ldb, *lda = "0", *ldg = "0";
  const char *k = cu_seq_operand(c, la->k, &ldk), *v = cu_seq_operand(c, la->v, &ldv);
  if (plstm) {
    const char *tr = cu_seq_operand(c, la->tr, &lda), *src = cu_seq_operand(c, la->src, &ldb);
    fprintf(c->o,
            "    const float *k = %s + h * %lld, *v = %s + h * %lld, *tr = %s + h * %lld;\n"
            "    const float *src = %s + h * %lld;\n",
            k, K, v, V, tr, J * J, src, J);
  } else if (dplr) {
    const char *lw = cu_seq_operand(c, la->lg, &ldg), *a = cu_seq_operand(c, la->a, &lda);
    const char *bv = cu_seq_operand(c, la->b, &ldb);
    fprintf(c->o,
            "    const float *k = %s + h * %lld, *v = %s + h * %lld, *lw = %s + h * %lld;\n"
            "    const float *a = %s + h * %lld, *bv = %s + h * %lld;\n",
            k, K, v, V, lw, K, a, K, bv, K);
  } else {
    const char *beta = cu_seq_operand(c, la->beta, &ldb);
    const char *lg = la->no_gate ? "(const float *)0" : cu_seq_operand(c, la->lg, &ldg);
    fprintf(c->o,
            "    const float *k = %s + h * %lld, *v = %s + h * %lld, *beta = %s + h;\n"
            "    const float *lg = %s;\n"
            "    if (lg) lg += h;\n",
            k, K, v, V, beta, lg);
  }
  int calls = la->nreads ? la->nreads : 1;
  for (int ci = 0; ci < calls; ci++) {
    Readout r = readout_open(c, la, ci, sf, hf);
    fprintf(c->o,
            "      const float *q = %s, *m = %s;\n"
            "      float *o = %s;\n"
            "      (void)m;\n"
            "      for (i64 c0 = 0; c0 < len; c0 += %lld) {\n"
            "        int n = (int)(len - c0 < %lld ? len - c0 : %lld);\n",
            r.q, r.m, r.o, C, C, C);
    if (plstm)
      fprintf(
          c->o,
          "        seq_plstm_chunk(n, %lld, %lld, %lld, q ? q + c0 * %s : q, %s,\n"
          "                        m ? m + c0 * %s : m, %s, %d, tr + c0 * %s, %s,\n"
          "                        src + c0 * %s, %s, v + c0 * %s, %s, k + c0 * %s, %s, %s, %d,\n"
          "                        o ? o + c0 * %s : o, %s, W);\n",
          J, K, V, r.ldq, r.ldq, r.ldm, r.ldm, r.excl, lda, lda, ldb, ldb, ldv, ldv, ldk, ldk, r.S,
          la->transposed, r.ldo, r.ldo);
    else if (dplr)
      fprintf(c->o,
              "        seq_dplr_chunk(n, %lld, %lld, q ? q + c0 * %s : q, %s, lw + c0 * %s, %s,\n"
              "                       a + c0 * %s, %s, bv + c0 * %s, %s, v + c0 * %s, %s,\n"
              "                       k + c0 * %s, %s, %s, %d, o ? o + c0 * %s : o, %s, W);\n",
              K, V, r.ldq, r.ldq, ldg, ldg, lda, lda, ldb, ldb, ldv, ldv, ldk, ldk, r.S,
              la->transposed, r.ldo, r.ldo);
    else
      fprintf(c->o,
              "        seq_delta_chunk(n, %lld, %lld, %lld, q ? q + c0 * %s : q, %s, k + c0 * %s,\n"
              "                        %s, %lld, v + c0 * %s, %s, %lld, beta + c0 * %s, %s, %lld,\n"
              "                        lg ? lg + c0 * %s : lg, %s, %s, %d, o ? o + c0 * %s : o, "
              "%s, W);\n",
              R, K, V, r.ldq, r.ldq, ldk, ldk, H * K, ldv, ldv, H * V, ldb, ldb, H, ldg, ldg, r.S,
              la->transposed, r.ldo, r.ldo);
    fprintf(c->o, "      }\n    }\n");
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

void cu_linattn(Cu *c, const SchedOp *op) {
  const SchedLinattn *la = op->linattn;
  if (la->kind != SCHED_CHUNK_LINATTN) {
    wy(c, op);
    return;
  }
  long long H = la->heads, K = la->K, V = la->V, Kg = la->Kg;
  long long C = la->chunk < 1 ? 16 : la->chunk > 32 ? 32 : la->chunk;
  long long hf = K * V, sf = H * K * V;
  cu_kernel_begin(c, "chunked", RT_CU_GRID_B, H, 1);
  fprintf(c->o, "  __shared__ float G[%lld], Gm[%lld], A[%lld];\n", C * Kg, C * Kg, C * C);
  item_open(c, la, sf, hf);
  const char *ldk, *ldv, *ldg = "0";
  const char *k = cu_seq_operand(c, la->k, &ldk), *v = cu_seq_operand(c, la->v, &ldv);
  const char *lg = la->no_gate ? "(const float *)0" : cu_seq_operand(c, la->lg, &ldg);
  fprintf(c->o,
          "    const float *k = %s + h * %lld, *v = %s + h * %lld;\n"
          "    const float *lg = %s;\n"
          "    if (lg) lg += h * %lld;\n",
          k, K, v, V, lg, Kg);
  int calls = la->nreads ? la->nreads : 1;
  for (int ci = 0; ci < calls; ci++) {
    Readout r = readout_open(c, la, ci, sf, hf);
    fprintf(c->o,
            "      const float *q = %s;\n"
            "      float *o = %s;\n"
            "      for (i64 c0 = 0; c0 < len; c0 += %lld) {\n"
            "        int n = (int)(len - c0 < %lld ? len - c0 : %lld);\n"
            "        seq_linattn_chunk(n, %lld, %lld, %lld, %d, q ? q + c0 * %s : q, %s,\n"
            "                          k + c0 * %s, %s, v + c0 * %s, %s, lg ? lg + c0 * %s : lg, "
            "%s,\n"
            "                          %s, %d, o ? o + c0 * %s : o, %s, G, Gm, A);\n"
            "      }\n"
            "    }\n",
            r.q, r.o, C, C, C, K, V, Kg, r.excl, r.ldq, r.ldq, ldk, ldk, ldv, ldv, ldg, ldg, r.S,
            la->transposed, r.ldo, r.ldo);
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}
