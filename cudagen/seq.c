/* seq.c - the sequential form on the GPU: token rows (a block per token,
 * for every token of every example at once), matrix products over all rows
 * of a class (tiled, 32 x 32 outputs per block), and the step loop: one
 * block per example walks its steps in order, the threads sharing each
 * step's nodes, the recurrent product of the step done by the block as a
 * matrix-vector product, and the commit at the end of each step. */
#include "cudagen/cu.h"

/* Opens a loop over every token row, b and tau (the processing step), with
 * the rows of cu.h's naming; inactive tokens are skipped (the whole block
 * agrees, so barriers inside stay uniform). */
static void token_loop_open(Cu *c) {
  fprintf(c->o, "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n"
                "    i64 b = row / T, tau = row %% T, len = SEQ_LEN(b);\n"
                "    if (tau >= len) continue;\n"
                "    i64 t = rev ? len - 1 - tau : tau;\n"
                "    i64 rb = b, rtok = b * T + t, rtokc = b * T + tau;\n"
                "    (void)rb; (void)rtok; (void)rtokc;\n");
}

static void body_ops(Cu *c, const SchedOp *ops, int n, SchedClass phase) {
  for (int i = 0; i < n && !c->failed; i++) {
    const SchedOp *op = &ops[i];
    switch (op->kind) {
    case SCHED_OP_NODE:
      cu_node(c, op->node);
      break;
    case SCHED_OP_FUSED:
      cu_fused(c, phase, op->node, op->last);
      break;
    case SCHED_OP_ROWS:
      body_ops(c, op->body.v, op->body.n, op->cls);
      break;
    case SCHED_OP_GEMM:
      cu_gemm_step(c, op->node);
      break;
    case SCHED_OP_ACROSS: /* a block per example: the node on its row, then its body */
      cu_node(c, op->node);
      body_ops(c, op->body.v, op->body.n, phase);
      break;
    case SCHED_OP_COMMIT:
      cu_commit(c);
      break;
    default:
      cu_unsupported(c, op->node, "this stage inside a loop over rows");
    }
  }
}

void cu_token_rows(Cu *c, const SchedOp *op) {
  if (op->cls == SCHED_CONST) {
    cu_kernel_begin(c, "const", RT_CU_GRID_FIXED, 1, 1);
    fprintf(c->o, "  if (blockIdx.x == 0) {\n    const i64 rb = 0, rtok = 0, rtokc = 0;\n"
                  "    (void)rb; (void)rtok; (void)rtokc;\n");
  } else if (op->cls == SCHED_EXAMPLE) {
    /* What a context gives, once per example (a block each). */
    cu_kernel_begin(c, "example_rows", RT_CU_GRID_B, 1, 1);
    fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
                  "    const i64 rb = b, rtok = b * T, rtokc = b * T;\n"
                  "    (void)rb; (void)rtok; (void)rtokc;\n");
  } else {
    cu_kernel_begin(c, "rows", RT_CU_GRID_BT, 1, 1);
    token_loop_open(c);
  }
  body_ops(c, op->body.v, op->body.n, op->cls);
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

void cu_time_loop(Cu *c, const SchedOp *op) {
  cu_kernel_begin(c, "steps", RT_CU_GRID_B, 1, 1);
  fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
                "    i64 len = SEQ_LEN(b);\n"
                "    for (i64 tau = 0; tau < len; tau++) {\n"
                "    i64 t = rev ? len - 1 - tau : tau;\n"
                "    i64 rb = b, rtok = b * T + t, rtokc = b * T + tau;\n"
                "    (void)rb; (void)rtok; (void)rtokc;\n");
  body_ops(c, op->body.v, op->body.n, SCHED_STEP);
  fprintf(c->o, "    }\n  }\n");
  cu_kernel_end(c);
}

void cu_token_outputs(Cu *c) {
  int any = 0;
  for (int o = 0; o < c->fn->outputs.n; o++) {
    IrRef v = c->fn->outputs.v[o].value;
    any |= v >= 0 && c->v[v].cls != SCHED_STEP;
  }
  if (!any) return;
  cu_kernel_begin(c, "token_outputs", RT_CU_GRID_BT, 1, 1);
  token_loop_open(c);
  for (int o = 0; o < c->fn->outputs.n; o++) {
    IrRef v = c->fn->outputs.v[o].value;
    if (v < 0 || c->v[v].cls == SCHED_STEP) continue;
    int64_t fl = sched_row_floats(&c->v[v]);
    cu_copy_row(
        c,
        arena_printf(c->a, "((float *)F[%d] + rtok * %lld)", cu_slot_output(c, o), (long long)fl),
        cu_rowptr(c, v), fl);
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

/* The operand whose rows the product reads, and the weight. */
static IrRef gemm_operand(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  return c->v[r].gemm == SCHED_GEMM_WX ? nd->args[1] : nd->args[0];
}

static const char *gemm_weight(Cu *c, IrRef r) {
  const SchedValue *n = &c->v[r];
  const IrNode *nd = &c->fn->nodes.v[r];
  if (n->cgemm) return arena_printf(c->a, "((float *)F[%d])", cu_slot_buf(c, n->creal_buf));
  return cu_base(c, nd->args[n->gemm == SCHED_GEMM_WX ? 0 : 1]);
}

void cu_gemm(Cu *c, IrRef r, SchedClass cls) {
  const SchedValue *n = &c->v[r];
  IrRef xv = gemm_operand(c, r);
  const SchedValue *x = &c->v[xv];
  int64_t per_row = n->gemm_k ? sched_row_floats(x) / n->gemm_k : 0;
  const char *A = cu_base(c, xv);
  if (n->gather_buf >= 0) {
    /* A chunk's rows of a whole-sequence operand, in processing order. */
    A = arena_printf(c->a, "((float *)F[%d])", cu_slot_buf(c, n->gather_buf));
    cu_kernel_begin(c, "gather", RT_CU_GRID_BT, 1, 1);
    token_loop_open(c);
    int64_t fl = sched_row_floats(x);
    cu_copy_row(c, arena_printf(c->a, "(%s + rtokc * %lld)", A, (long long)fl),
                arena_printf(c->a, "(%s + rtok * %lld)", cu_base(c, xv), (long long)fl), fl);
    fprintf(c->o, "  }\n");
    cu_kernel_end(c);
  }
  int tr = n->gemm == SCHED_GEMM_WX;
  long long N = n->gemm_n, K = n->gemm_k;
  int64_t ntn = (N + 31) / 32;
  if (cls == SCHED_CONST)
    cu_kernel_begin(c, "gemm", RT_CU_GRID_FIXED, ((per_row + 31) / 32) * ntn, 1);
  else if (cls == SCHED_EXAMPLE) /* rows once per example (a context's) */
    cu_kernel_begin(c, "gemm", RT_CU_GRID_B, ((per_row + 31) / 32) * ntn, 1);
  else
    cu_kernel_begin(c, "gemm", RT_CU_GRID_BT, ntn * per_row, 32);
  fprintf(c->o,
          "  i64 M = %s * %lld;\n"
          "  i64 ntiles = ((M + 31) / 32) * %lld;\n"
          "  for (i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x)\n"
          "    seq_gemm_tile(M, %lld, %lld, %s, %lld, %s, %lld, %d, %s, %lld, tile);\n",
          cls == SCHED_CONST     ? "(i64)1"
          : cls == SCHED_EXAMPLE ? "B"
                                 : "B * T",
          (long long)per_row, (long long)ntn, N, K, A, K, gemm_weight(c, r), tr ? K : N, tr,
          cu_base(c, r), N);
  cu_kernel_end(c);
}

void cu_gemm_step(Cu *c, IrRef r) {
  const SchedValue *n = &c->v[r];
  IrRef xv = gemm_operand(c, r);
  int64_t per_row = n->gemm_k ? sched_row_floats(&c->v[xv]) / n->gemm_k : 0;
  long long N = n->gemm_n, K = n->gemm_k;
  int tr = n->gemm == SCHED_GEMM_WX;
  fprintf(c->o,
          "    {\n"
          "      const float *A = %s, *W = %s;\n"
          "      float *C = %s;\n"
          "      SEQ_FOR(e, %lld) {\n"
          "        i64 m = e / %lld, n = e %% %lld;\n"
          "        float acc = 0.0f;\n"
          "        for (i64 k = 0; k < %lld; k++) acc += A[m * %lld + k] * W[%s];\n"
          "        C[m * %lld + n] = acc;\n"
          "      }\n"
          "    }\n"
          "    __syncthreads();\n",
          cu_rowptr(c, xv), gemm_weight(c, r), cu_rowptr(c, r), (long long)(per_row * N), N, N, K,
          K, tr ? arena_printf(c->a, "n * %lld + k", K) : arena_printf(c->a, "k * %lld + n", N), N);
}

/* The row of node v that the current step reads. */
static const char *source_row(const SchedValue *v) {
  return cu_per_example(v) ? "rb" : v->cls == SCHED_CONST ? "0" : v->chunked ? "rtokc" : "rtok";
}

void cu_commit(Cu *c) {
  const IrFunc *fn = c->fn;
  const SchedInst *in = c->in;
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    if (v < 0 || c->v[v].cls != SCHED_STEP) continue;
    int64_t fl = sched_row_floats(&c->v[v]);
    cu_copy_row(
        c,
        arena_printf(c->a, "((float *)F[%d] + rtok * %lld)", cu_slot_output(c, o), (long long)fl),
        cu_rowptr(c, v), fl);
  }
  fprintf(c->o, "    __syncthreads();\n");
  for (int s = 0; s < fn->states.n; s++) {
    if (in->state_tmp[s] < 0) continue;
    IrRef nx = fn->states.v[s].next;
    int64_t fl = in->bufs.v[in->state_buf[s]].row_floats;
    cu_copy_row(c,
                arena_printf(c->a, "((float *)F[%d] + rb * %lld)", cu_slot_buf(c, in->state_tmp[s]),
                             (long long)fl),
                arena_printf(c->a, "(%s + rb * %lld)", cu_base(c, nx), (long long)fl), fl);
  }
  fprintf(c->o, "    __syncthreads();\n");
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    if (nx < 0 || sched_state_alias(fn, nx) == s || in->state_inplace[s]) continue;
    const SchedValue *nv = &c->v[nx];
    int64_t fl = in->bufs.v[in->state_buf[s]].row_floats;
    int tmp = in->state_tmp[s] >= 0;
    const char *src =
        tmp ? arena_printf(c->a, "((float *)F[%d] + rb * %lld)", cu_slot_buf(c, in->state_tmp[s]),
                           (long long)fl)
            : arena_printf(c->a, "(%s + %s * %lld)", cu_base(c, nx), source_row(nv), (long long)fl);
    cu_copy_row(c,
                arena_printf(c->a, "((float *)F[%d] + rb * %lld)", cu_slot_buf(c, in->state_buf[s]),
                             (long long)fl),
                src, fl);
  }
  fprintf(c->o, "    __syncthreads();\n");
}
