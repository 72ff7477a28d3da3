/* chunk.c - the chunked form of a matrix state on the GPU (sched/chunk.c):
 * a block per (example, head) walks the example's sequence in chunks of C
 * tokens (seq_linattn_chunk, prelude.c), in the direction the instance
 * runs, the state in its own storage; one pass per readout, every pass but
 * the last on a copy of the initial state, as on the CPU. The products run
 * on the block's threads in plain fp32 (tensor cores are still to come);
 * the WY forms of the delta rule and of the generalized one (dplr) and the
 * small dense transitions' form (plstm) are not rendered yet. */
#include "cudagen/cu.h"

void cu_linattn(Cu *c, const SchedOp *op) {
  const SchedLinattn *la = op->linattn;
  const SchedInst *in = c->in;
  if (la->kind != SCHED_CHUNK_LINATTN) {
    cu_unsupported(c, op->node,
                   la->kind == SCHED_CHUNK_DELTA
                       ? "the chunked WY form of the delta rule (use --strategy=sequential)"
                   : la->kind == SCHED_CHUNK_DPLR
                       ? "the chunked WY form of the generalized delta rule (use "
                         "--strategy=sequential)"
                       : "the chunked form of a small dense transition (use "
                         "--strategy=sequential)");
    return;
  }
  long long H = la->heads, K = la->K, V = la->V, Kg = la->Kg;
  long long C = la->chunk < 1 ? 16 : la->chunk > 32 ? 32 : la->chunk;
  long long hf = K * V, sf = H * K * V;
  cu_kernel_begin(c, "chunked", RT_CU_GRID_B, H, 1);
  fprintf(c->o,
          "  __shared__ float G[%lld], Gm[%lld], A[%lld];\n"
          "  for (i64 item = blockIdx.x; item < B * %lld; item += gridDim.x) {\n"
          "    i64 b = item / %lld, h = item %% %lld, len = SEQ_LEN(b);\n"
          "    i64 t0 = rev && len > 0 ? len - 1 : 0, dir = rev ? -1 : 1;\n"
          "    (void)t0; (void)dir;\n"
          "    float *store = (float *)F[%d] + b * %lld + h * %lld;\n",
          C * Kg, C * Kg, C * C, H, H, H, cu_slot_buf(c, in->state_buf[la->state]), sf, hf);
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
    IrRef rd = la->nreads ? la->reads[ci] : IR_NONE;
    const char *q = "(const float *)0", *o = "(float *)0", *ldq = "0", *ldo = "0";
    if (rd != IR_NONE) {
      q = arena_printf(c->a, "%s + h * %lld", cu_seq_operand(c, c->fn->nodes.v[rd].args[0], &ldq),
                       K);
      o = arena_printf(c->a, "%s + h * %lld", cu_seq_operand(c, rd, &ldo), V);
    }
    const char *S = "store";
    fprintf(c->o, "    {\n");
    if (ci < calls - 1) {
      /* This readout's pass starts from a copy of the initial state. */
      fprintf(c->o,
              "      float *S = (float *)F[%d] + b * %lld + h * %lld;\n"
              "      SEQ_FOR(e, %lld) S[e] = store[e];\n"
              "      __syncthreads();\n",
              cu_slot_buf(c, la->copy_buf), sf, hf, hf);
      S = "S";
    }
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
            q, (const char *)o, C, C, C, K, V, Kg,
            rd != IR_NONE && c->fn->nodes.v[rd].index ? 1 : 0, ldq, ldq, ldk, ldk, ldv, ldv, ldg,
            ldg, S, la->transposed, ldo, ldo);
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}
