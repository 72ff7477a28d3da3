/* frame.c - an instance's stages as launches, in the schedule's order: its
 * frame (the slots every kernel reads: rt_cuda.h), kernels opened and
 * closed, layer calls, initial and final states, zeroed outputs, causal
 * convolutions and the real form of complex GEMM weights; and cuda_render,
 * which renders every instance and assembles the program. The GPU runs a
 * chunked schedule as one chunk (Tc = T): its memory holds the whole
 * sequence, and a chunk-ordered token row is b*T + tau. */
#include "cudagen/cu.h"

#include <stdlib.h>
#include <string.h>

/* ---- the frame ------------------------------------------------------------------ */

static int nparams(Cu *c) {
  return c->s->sig.params.n;
}
static int nstates(Cu *c) {
  return c->s->sig.states.n;
}

int cu_slot_param(Cu *c, int global) {
  (void)c;
  return RT_CU_F_FIXED + global;
}
int cu_slot_input(Cu *c, int j) {
  return RT_CU_F_FIXED + nparams(c) + j;
}
int cu_slot_sin(Cu *c, int global) {
  return cu_slot_input(c, c->fn->inputs.n) + global;
}
int cu_slot_output(Cu *c, int o) {
  return cu_slot_sin(c, nstates(c)) + o;
}
int cu_slot_sout(Cu *c, int global) {
  return cu_slot_output(c, c->fn->outputs.n) + global;
}
int cu_slot_buf(Cu *c, int b) {
  return cu_slot_sout(c, nstates(c)) + b;
}

int cu_scratch_buf(Cu *c, RtCuRows rows, int64_t row_floats) {
  RtCuBuf b = {rows, row_floats};
  if (vec_push(c->a, &c->extra, b)) c->failed = 1;
  return c->in->bufs.n + c->extra.n - 1;
}

static const char *fbuf(Cu *c, int b) {
  return arena_printf(c->a, "((float *)F[%d])", cu_slot_buf(c, b));
}

const char *cu_base(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  switch (nd->op) {
  case IR_PARAM:
    return arena_printf(c->a, "((const float *)F[%d])", cu_slot_param(c, c->in->params[nd->index]));
  case IR_INPUT:
    return arena_printf(c->a, "((const %s *)F[%d])", n->is_int ? "int" : "float",
                        cu_slot_input(c, nd->index));
  case IR_STATE:
    return fbuf(c, c->in->state_buf[nd->index]);
  case IR_RESHAPE:
    return cu_base(c, nd->args[0]);
  case IR_RESULT:
    return fbuf(c, c->v[nd->args[0]].call_out[nd->index]);
  case IR_CALL:
    return fbuf(c, n->call_out[0]);
  default:
    if (n->buf >= 0) return fbuf(c, n->buf);
    diag_internal(c->de, "cudagen", "node %d (%s) has no buffer", r, ir_op_info[nd->op].text);
    c->failed = 1;
    return "((float *)0)";
  }
}

/* Row pointer of node r for example b at the first step (t0), and its
 * stride in floats per step (dir: +1, or -1 run backwards). */
const char *cu_seq_operand(Cu *c, IrRef r, const char **ld) {
  const SchedValue *v = &c->v[r];
  long long f = sched_row_floats(v);
  const char *base = cu_base(c, r);
  *ld = "0";
  if (cu_per_example(v)) return arena_printf(c->a, "(%s + b * %lld)", base, f);
  if (v->cls == SCHED_CONST) return base;
  if (v->chunked) {
    *ld = arena_printf(c->a, "%lld", f);
    return arena_printf(c->a, "(%s + b * T * %lld)", base, f);
  }
  *ld = arena_printf(c->a, "(dir * %lld)", f);
  return arena_printf(c->a, "(%s + (b * T + t0) * %lld)", base, f);
}

void cu_unsupported(Cu *c, IrRef r, const char *what) {
  SrcLoc loc = r >= 0 && r < c->fn->nodes.n ? c->fn->nodes.v[r].loc : (SrcLoc){0};
  diag_error(c->de, loc, "the CUDA backend cannot run %s yet (in %s)", what, c->fn->name);
  c->failed = 1;
}

void cu_kernel_begin(Cu *c, const char *what, RtCuGridKind grid, int64_t n, int64_t per) {
  const char *name =
      arena_printf(c->a, "%s_i%d_k%d_%s", c->s->sig.symbol, c->ii, c->kernels.n, what);
  RtCuStep st = {0};
  st.kind = RT_CU_STEP_LAUNCH;
  st.kernel = c->kernels.n;
  st.grid = grid;
  st.n = n > 0 ? n : 1;
  st.per = per > 0 ? per : 1;
  st.block = CU_NT;
  if (vec_push(c->a, &c->kernels, name) || vec_push(c->a, &c->steps, st)) c->failed = 1;
  fprintf(c->o,
          "\nextern \"C\" __global__ void __launch_bounds__(%d) %s(const i64 *__restrict__ F) {\n"
          "  const i64 B = F[%d], T = F[%d];\n"
          "  const int rev = (int)F[%d];\n"
          "  const int *lens = (const int *)F[%d];\n"
          "  int *status = (int *)F[%d];\n"
          "  (void)B; (void)T; (void)rev; (void)lens; (void)status;\n",
          CU_NT, name, RT_CU_F_B, RT_CU_F_T, RT_CU_F_REV, RT_CU_F_LENGTHS, RT_CU_F_STATUS);
}

void cu_kernel_end(Cu *c) {
  fprintf(c->o, "}\n");
}

/* ---- whole-sequence stages ------------------------------------------------------- */

static void state_init(Cu *c) {
  const IrFunc *fn = c->fn;
  const SchedInst *in = c->in;
  if (fn->states.n == 0) return;
  cu_kernel_begin(c, "state_init", RT_CU_GRID_B, 1, 1);
  fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n");
  for (int s = 0; s < fn->states.n; s++) {
    const IrState *st = &fn->states.v[s];
    const AbiTensor *ct = &c->s->sig.states.v[in->states[s]];
    int64_t fl = ct->numel;
    fprintf(c->o,
            "    {\n"
            "      float *st = (float *)F[%d] + b * %lld;\n"
            "      const float *si = (const float *)F[%d];\n"
            "      if (si) {\n"
            "        SEQ_FOR(e, %lld) st[e] = si[b * %lld + e];\n"
            "      }",
            cu_slot_buf(c, in->state_buf[s]), (long long)fl, cu_slot_sin(c, in->states[s]),
            (long long)fl, (long long)fl);
    if (st->init >= 0) {
      /* The declared value broadcast to the state's shape (numpy rules); a
       * real value fills a complex state's real parts. */
      const SchedValue *iv = &c->v[st->init];
      int ow = st->type.elem == IR_COMPLEX ? 2 : 1;
      int rank = ct->ndim - (ow == 2);
      int64_t elems = ow == 2 ? fl / 2 : fl;
      int64_t stride[SEQ_MAX_RANK] = {0}, st1 = 1;
      for (int d = rank - 1; d >= 0; d--) {
        int k = d - (rank - iv->rank);
        if (k < 0 || iv->shape[k] == 1) {
          stride[d] = 0;
        } else {
          stride[d] = st1;
          st1 *= iv->shape[k];
        }
      }
      const char *idx = "0";
      int64_t inner = 1;
      for (int d = rank - 1; d >= 0; d--) {
        if (stride[d])
          idx = arena_printf(c->a, "%s + ((e / %lld) %% %lld) * %lld", idx, (long long)inner,
                             (long long)ct->shape[d], (long long)stride[d]);
        inner *= ct->shape[d];
      }
      const char *src = cu_base(c, st->init);
      fprintf(c->o, " else {\n        SEQ_FOR(e, %lld) {\n          i64 x = %s;\n",
              (long long)elems, idx);
      if (ow == 1)
        fprintf(c->o, "          st[e] = %s[x];\n", src);
      else if (iv->w == 2)
        fprintf(c->o, "          st[2 * e] = %s[2 * x]; st[2 * e + 1] = %s[2 * x + 1];\n", src,
                src);
      else
        fprintf(c->o, "          st[2 * e] = %s[x]; st[2 * e + 1] = 0.0f;\n", src);
      fprintf(c->o, "        }\n      }");
    }
    fprintf(c->o, "\n    }\n");
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

static void final_states(Cu *c) {
  const IrFunc *fn = c->fn;
  const SchedInst *in = c->in;
  if (fn->states.n == 0) return;
  cu_kernel_begin(c, "final_states", RT_CU_GRID_B, 1, 1);
  fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n");
  for (int s = 0; s < fn->states.n; s++) {
    int64_t fl = c->s->sig.states.v[in->states[s]].numel;
    int so = cu_slot_sout(c, in->states[s]);
    fprintf(c->o, "    if (F[%d]) {\n", so);
    cu_copy_row(c, arena_printf(c->a, "((float *)F[%d] + b * %lld)", so, (long long)fl),
                arena_printf(c->a, "(%s + b * %lld)", fbuf(c, in->state_buf[s]), (long long)fl),
                fl);
    fprintf(c->o, "    }\n");
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

static void zero_outputs(Cu *c) {
  const IrFunc *fn = c->fn;
  if (fn->outputs.n == 0) return;
  cu_kernel_begin(c, "zero_outputs", RT_CU_GRID_BT, 1, CU_NT);
  fprintf(c->o, "  if (lens) {\n");
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    int64_t fl = v >= 0 ? sched_row_floats(&c->v[v]) : 1;
    fprintf(c->o,
            "    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < B * T * %lld;\n"
            "         e += (i64)gridDim.x * blockDim.x)\n"
            "      ((float *)F[%d])[e] = 0.0f;\n",
            (long long)fl, cu_slot_output(c, o));
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

/* Model-level depthwise causal convolution, in the direction the instance
 * runs: out[tau] = b + sum_k w[k] u[tau - K + 1 + k]. */
static void causal_conv(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r], *u = &c->v[nd->args[0]], *w = &c->v[nd->args[1]];
  int64_t D = n->numel, K = D ? w->numel / D : 0;
  cu_kernel_begin(c, "conv", RT_CU_GRID_BT, 1, 1);
  fprintf(c->o,
          "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n"
          "    i64 b = row / T, tau = row %% T, len = SEQ_LEN(b);\n"
          "    if (tau >= len) continue;\n"
          "    i64 ph = rev ? len - 1 - tau : tau;\n"
          "    SEQ_FOR(d, %lld) {\n"
          "      float acc = %s[%s];\n"
          "      for (i64 k = 0; k < %lld; k++) {\n"
          "        i64 s = tau + k - %lld;\n"
          "        if (s < 0) continue;\n"
          "        i64 ps = rev ? len - 1 - s : s;\n"
          "        acc += %s[d * %lld + k] * %s[%s];\n"
          "      }\n"
          "      %s[(b * T + ph) * %lld + d] = acc;\n"
          "    }\n"
          "  }\n",
          (long long)D, cu_base(c, nd->args[2]), c->v[nd->args[2]].numel == 1 ? "0" : "d",
          (long long)K, (long long)(K - 1), cu_base(c, nd->args[1]), (long long)K,
          cu_base(c, nd->args[0]),
          u->cls == SCHED_CONST ? "d" : arena_printf(c->a, "(b * T + ps) * %lld + d", (long long)D),
          cu_base(c, r), (long long)D);
  cu_kernel_end(c);
}

/* The real form of a complex GEMM weight W[N, K]: row 2n + c is output part
 * c (re, im) of W[n] @ y (codegen/gemm.c has the same layout). */
static void complex_real_form(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r], *w = &c->v[nd->args[0]], *y = &c->v[nd->args[1]];
  long long N = w->shape[0], K = w->shape[1], Kr = n->gemm_k;
  const char *wb = cu_base(c, nd->args[0]), *wr = fbuf(c, n->creal_buf);
  cu_kernel_begin(c, "creal", RT_CU_GRID_FIXED, 1, 1);
  fprintf(c->o,
          "  SEQ_FOR(e, %lld) {\n"
          "    i64 i = e / %lld, k = e %% %lld;\n"
          "    float re = %s[2 * e], im = %s[2 * e + 1];\n"
          "    i64 rre = 2 * i * %lld, rim = rre + %lld;\n",
          N * K, K, K, wb, wb, Kr, Kr);
  if (y->w == 1)
    fprintf(c->o, "    %s[rre + k] = re; %s[rim + k] = im;\n", wr, wr);
  else
    fprintf(c->o,
            "    %s[rre + 2 * k] = re; %s[rre + 2 * k + 1] = -im;\n"
            "    %s[rim + 2 * k] = im; %s[rim + 2 * k + 1] = re;\n",
            wr, wr, wr, wr);
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

/* Where argument node r lives in the caller's frame. */
RtCuArg cu_arg_of(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  switch (nd->op) {
  case IR_PARAM:
    return (RtCuArg){RT_CU_ARG_PARAM, c->in->params[nd->index]};
  case IR_INPUT:
    return (RtCuArg){RT_CU_ARG_INPUT, nd->index};
  case IR_STATE:
    return (RtCuArg){RT_CU_ARG_BUF, c->in->state_buf[nd->index]};
  case IR_RESHAPE:
    return cu_arg_of(c, nd->args[0]);
  case IR_RESULT:
    return (RtCuArg){RT_CU_ARG_BUF, c->v[nd->args[0]].call_out[nd->index]};
  case IR_CALL:
    return (RtCuArg){RT_CU_ARG_BUF, n->call_out[0]};
  default:
    return (RtCuArg){RT_CU_ARG_BUF, n->buf};
  }
}

RtCuArg cu_call_arg(Cu *c, IrRef r, int j) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  IrRef a = nd->args[j];
  if (n->call_in[j] < 0) return cu_arg_of(c, a);
  /* A layer reads an input per token: the value repeated for each (a
   * value per example, a context's, its example's); a whole-sequence
   * value read by a Newton solve in a chunked instance, its rows in the
   * order the instance takes its steps. */
  const SchedValue *v = &c->v[a];
  int64_t fl = sched_row_floats(v);
  cu_kernel_begin(c, "call_in", RT_CU_GRID_BT, 1, 1);
  fprintf(c->o, "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n");
  const char *src = cu_base(c, a);
  if (v->cls == SCHED_EXAMPLE) {
    src = arena_printf(c->a, "(%s + (row / T) * %lld)", src, (long long)fl);
  } else if (v->cls == SCHED_TOKEN) {
    fprintf(c->o, "    i64 b = row / T, tau = row %% T, len = SEQ_LEN(b);\n"
                  "    if (tau >= len) continue;\n");
    src = arena_printf(c->a, "(%s + (b * T + (rev ? len - 1 - tau : tau)) * %lld)", src,
                       (long long)fl);
  }
  cu_copy_row(c, arena_printf(c->a, "(%s + row * %lld)", fbuf(c, n->call_in[j]), (long long)fl),
              src, fl);
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
  return (RtCuArg){RT_CU_ARG_BUF, n->call_in[j]};
}

static void call(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  const IrLayer *ly = &c->fn->layers.v[nd->index];
  if (ly->newton.states) {
    cu_newton(c, r);
    return;
  }
  int ci = c->in->layers[nd->index];
  const IrFunc *callee = c->s->insts.v[ci].fn;
  RtCuStep st = {0};
  st.kind = RT_CU_STEP_CALL;
  st.inst = ci;
  st.reverse = ly->reverse;
  st.args = arena_calloc(c->a, (size_t)callee->inputs.n + 1, sizeof *st.args);
  st.outs = arena_calloc(c->a, (size_t)callee->outputs.n + 1, sizeof *st.outs);
  if (!st.args || !st.outs) {
    c->failed = 1;
    return;
  }
  for (int j = 0; j < nd->nargs && j < callee->inputs.n; j++) st.args[j] = cu_call_arg(c, r, j);
  for (int j = 0; j < callee->outputs.n; j++) st.outs[j] = n->call_out[j];
  /* Over a context's positions: each example's N of them, its arguments'
   * rows per example [N, ...] read as the callee's [B, N, ...] tokens; the
   * lengths, where given, the int context after the callee's inputs. */
  st.over_lengths.kind = RT_CU_ARG_NONE;
  if (ly->over) {
    st.over = n->shape[0];
    if (ly->over_lengths) st.over_lengths = cu_arg_of(c, nd->args[nd->nargs - 1]);
  }
  if (vec_push(c->a, &c->steps, st)) c->failed = 1;
}

/* ---- the stage tree ---------------------------------------------------------------- */

void cu_ops(Cu *c, const SchedOp *ops, int n) {
  for (int i = 0; i < n && !c->failed; i++) {
    const SchedOp *op = &ops[i];
    switch (op->kind) {
    case SCHED_OP_LANE_COPIES: /* each thread reads its element where it lies */
      break;
    case SCHED_OP_NODE:
    case SCHED_OP_FUSED: {
      /* Constants computed once, outside any loop over rows: one block. */
      int j = i;
      while (j + 1 < n && (ops[j + 1].kind == SCHED_OP_NODE || ops[j + 1].kind == SCHED_OP_FUSED))
        j++;
      SchedOp rows = {0};
      rows.kind = SCHED_OP_ROWS;
      rows.cls = SCHED_CONST;
      rows.body.v = (SchedOp *)&ops[i];
      rows.body.n = j - i + 1;
      cu_token_rows(c, &rows);
      i = j;
      break;
    }
    case SCHED_OP_ROWS:
      cu_token_rows(c, op);
      break;
    case SCHED_OP_GEMM:
      cu_gemm(c, op->node, op->cls);
      break;
    case SCHED_OP_CALL:
      call(c, op->node);
      break;
    case SCHED_OP_CONV:
      if (c->fn->nodes.v[op->node].nargs == 4)
        cu_conv_window(c, op->node);
      else
        causal_conv(c, op->node);
      break;
    case SCHED_OP_SCAN:
      if (op->group)
        cu_scan_group(c, op);
      else
        cu_scan(c, op->node);
      break;
    case SCHED_OP_DELAY:
      cu_delay(c, op->node);
      break;
    case SCHED_OP_WINDOW:
      cu_window(c, op->node);
      break;
    case SCHED_OP_LINATTN:
      cu_linattn(c, op);
      break;
    case SCHED_OP_ATTN:
      cu_attn(c, op);
      break;
    case SCHED_OP_PACK:
      if (c->v[op->node].cgemm) complex_real_form(c, op->node);
      break;
    case SCHED_OP_ZERO_OUTPUTS:
      zero_outputs(c);
      break;
    case SCHED_OP_STATE_INIT:
      state_init(c);
      break;
    case SCHED_OP_TOKEN_OUTPUTS:
      cu_token_outputs(c);
      break;
    case SCHED_OP_CHUNK_LOOP:
      cu_ops(c, op->body.v, op->body.n); /* one chunk: Tc = T */
      break;
    case SCHED_OP_TIME_LOOP:
      cu_time_loop(c, op);
      break;
    case SCHED_OP_ACROSS:
      cu_unsupported(c, op->node, "a sum over all rows outside the step loop");
      break;
    case SCHED_OP_COMMIT:
      cu_unsupported(c, -1, "a commit outside the step loop");
      break;
    case SCHED_OP_FINAL_STATES:
      final_states(c);
      break;
    case SCHED_OP_SEQ_FINAL_STATES:
      cu_seq_final_states(c);
      break;
    case SCHED_OP_CHUNK_STATES:
      cu_chunk_states(c);
      break;
    }
  }
}

/* ---- the program ------------------------------------------------------------------- */

static int render_inst(Cu *c, int i, RtCuInst *out) {
  const SchedInst *in = &c->s->insts.v[i];
  c->ii = i;
  c->in = in;
  c->fn = in->fn;
  c->v = in->values;
  c->steps.v = NULL;
  c->steps.n = c->steps.cap = 0;
  c->extra.v = NULL;
  c->extra.n = c->extra.cap = 0;
  c->fmember = arena_calloc(c->a, (size_t)in->fn->nodes.n + 1, 1);
  if (!c->fmember) return -1;
  cu_ops(c, in->ops.v, in->ops.n);
  if (c->failed) return -1;
  out->ninputs = in->fn->inputs.n;
  out->noutputs = in->fn->outputs.n;
  out->nstates = in->fn->states.n;
  out->nbufs = in->bufs.n + c->extra.n;
  out->bufs = arena_calloc(c->a, (size_t)out->nbufs + 1, sizeof *out->bufs);
  out->state_buf = arena_calloc(c->a, (size_t)in->fn->states.n + 1, sizeof *out->state_buf);
  if (!out->bufs || !out->state_buf) return -1;
  for (int b = 0; b < in->bufs.n; b++) {
    const SchedBuf *sb = &in->bufs.v[b];
    out->bufs[b].rows = sb->rows == SCHED_ROWS_ONE ? RT_CU_ROWS_ONE
                        : sb->rows == SCHED_ROWS_B ? RT_CU_ROWS_B
                                                   : RT_CU_ROWS_BT;
    /* Packed weights are the CPU kernel's; the GPU reads W as given. */
    out->bufs[b].row_floats = sb->kind == SCHED_BUF_PACKED ? 0 : sb->row_floats;
  }
  for (int b = 0; b < c->extra.n; b++) out->bufs[in->bufs.n + b] = c->extra.v[b];
  for (int s = 0; s < in->fn->states.n; s++) out->state_buf[s] = in->state_buf[s];
  out->steps = c->steps.v;
  out->nsteps = c->steps.n;
  return 0;
}

static int64_t *tensor_floats(Arena *a, const AbiTensor *t, int n) {
  int64_t *f = arena_calloc(a, (size_t)n + 1, sizeof *f);
  if (f)
    for (int i = 0; i < n; i++) f[i] = t[i].numel;
  return f;
}

int cuda_render(Arena *a, const Schedule *s, RtCuProgram **out, DiagEngine *de) {
  *out = NULL;
  Cu c = {0};
  c.a = a;
  c.s = s;
  c.de = de;
  char *text = NULL;
  size_t len = 0;
  c.o = open_memstream(&text, &len);
  RtCuProgram *p = arena_calloc(a, 1, sizeof *p);
  RtCuInst *insts = arena_calloc(a, (size_t)s->insts.n + 1, sizeof *insts);
  if (!c.o || !p || !insts) {
    if (c.o) fclose(c.o);
    free(text);
    diag_error(de, (SrcLoc){0}, "out of memory rendering CUDA for %s", s->sig.func);
    return -1;
  }
  fprintf(c.o, "/* %s: generated by seqc from the schedule of %s */\n", s->sig.symbol, s->sig.func);
  for (int i = 0; cu_prelude[i]; i++) fputs(cu_prelude[i], c.o);
  /* The prelude's kernels, found by name (rt_cu_run_io). */
  int rc = vec_push(a, &c.kernels, "seq_io_in") || vec_push(a, &c.kernels, "seq_io_out") ? -1 : 0;
  for (int i = 0; i < s->insts.n && rc == 0; i++)
    if (render_inst(&c, i, &insts[i])) rc = -1;
  fprintf(c.o, "\n#ifdef SEQ_CUDA_EMU\nSEQ_EMU_KERNELS_BEGIN\n");
  for (int k = 0; k < c.kernels.n; k++) fprintf(c.o, "SEQ_EMU_KERNEL(%s)\n", c.kernels.v[k]);
  fprintf(c.o, "SEQ_EMU_KERNELS_END\n#endif\n");
  fclose(c.o);
  if (rc == 0 && c.failed) rc = -1;
  if (rc) {
    if (de->nerrors == 0) diag_error(de, (SrcLoc){0}, "rendering CUDA for %s failed", s->sig.func);
    free(text);
    return -1;
  }
  p->source = arena_strndup(a, text, len);
  free(text);
  p->kernels = c.kernels.v;
  p->nkernels = c.kernels.n;
  p->insts = insts;
  p->ninsts = s->insts.n;
  p->nparams = s->sig.params.n;
  p->ninputs = s->sig.inputs.n;
  p->noutputs = s->sig.outputs.n;
  p->nstates = s->sig.states.n;
  p->param_floats = tensor_floats(a, s->sig.params.v, s->sig.params.n);
  p->input_floats = tensor_floats(a, s->sig.inputs.v, s->sig.inputs.n);
  p->output_floats = tensor_floats(a, s->sig.outputs.v, s->sig.outputs.n);
  p->state_floats = tensor_floats(a, s->sig.states.v, s->sig.states.n);
  p->input_is_int = arena_calloc(a, (size_t)s->sig.inputs.n + 1, sizeof(int));
  p->input_context = arena_calloc(a, (size_t)s->sig.inputs.n + 1, sizeof(int));
  if (!p->source || !p->param_floats || !p->input_floats || !p->output_floats || !p->state_floats ||
      !p->input_is_int || !p->input_context) {
    diag_error(de, (SrcLoc){0}, "out of memory rendering CUDA for %s", s->sig.func);
    return -1;
  }
  for (int i = 0; i < s->sig.inputs.n; i++) {
    p->input_is_int[i] = s->sig.inputs.v[i].is_int;
    p->input_context[i] = s->sig.inputs.v[i].context;
  }
  *out = p;
  return 0;
}
