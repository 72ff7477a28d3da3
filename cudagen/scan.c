/* scan.c - the scan form on the GPU: a fused scan (sched/scan.c) as one
 * thread per (example, row of the state's last axis), walking the example's
 * steps with the running value in the state's storage and computing the
 * group's members in node order, as the CPU's scan item does; a scan left
 * alone, delays and windows as a thread per (example, element); and the
 * final states these forms leave. Every thread's work is independent, so
 * nothing here synchronizes. (A scan split across the threads of one
 * sequence, with carries between blocks, is still to come.) */
#include "cudagen/cu.h"

/* Opens the loop over items (example b, index within it) of a kernel whose
 * threads each take items; `per` items per example. */
static void items_open(Cu *c, int64_t per, const char *idx) {
  fprintf(c->o,
          "  for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < B * %lld;\n"
          "       item += (i64)gridDim.x * blockDim.x) {\n"
          "    i64 b = item / %lld, %s = item %% %lld, len = SEQ_LEN(b);\n"
          "    i64 rb = b;\n"
          "    (void)rb;\n",
          (long long)per, (long long)(per ? per : 1), idx, (long long)(per ? per : 1));
}

/* Row pointer of node r for example b at position t. */
static const char *row_at(Cu *c, IrRef r, const char *t) {
  const SchedValue *v = &c->v[r];
  const char *base = cu_base(c, r);
  int64_t fl = sched_row_floats(v);
  if (v->cls == SCHED_CONST) return base;
  if (cu_per_example(v)) return arena_printf(c->a, "(%s + b * %lld)", base, (long long)fl);
  return arena_printf(c->a, "(%s + (b * T + (%s)) * %lld)", base, t, (long long)fl);
}

/* Row pointer of node r at processing step tau: chunk-ordered token
 * buffers hold steps in order (Tc = T on the GPU). */
static const char *step_row(Cu *c, IrRef r, const char *tau) {
  const SchedValue *v = &c->v[r];
  if (v->cls != SCHED_TOKEN || !v->chunked)
    return row_at(c, r, arena_printf(c->a, "rev ? len - 1 - (%s) : (%s)", tau, tau));
  return arena_printf(c->a, "(%s + (b * T + (%s)) * %lld)", cu_base(c, r), tau,
                      (long long)sched_row_floats(v));
}

static int is_sum(const IrNode *nd) {
  return nd->op == IR_SUM || nd->op == IR_MEAN || nd->op == IR_MATMUL;
}

void cu_scan_group(Cu *c, const SchedOp *op) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = c->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &c->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX;
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  int64_t outer = last ? key->numel / last : 0;
  int64_t srow = c->in->bufs.v[c->in->state_buf[g->state]].row_floats;
  if (outer == 0) return;
  cu_kernel_begin(c, "scan", RT_CU_GRID_B, (outer + CU_NT - 1) / CU_NT, 1);
  items_open(c, outer, "o");
  fprintf(c->o,
          "    float *h = (float *)F[%d] + b * %lld;\n"
          "    for (i64 tau = 0; tau < len; tau++) {\n"
          "    i64 t = rev ? len - 1 - tau : tau;\n"
          "    i64 rtok = b * T + t, rtokc = b * T + tau;\n"
          "    (void)rtok; (void)rtokc;\n",
          cu_slot_buf(c, c->in->state_buf[g->state]), (long long)srow);
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    if (is_sum(&fn->nodes.v[r])) {
      fprintf(c->o, "    float s%d = 0.0f, s%di = 0.0f;\n", r, r);
    } else {
      c->fmember[r] = 1;
    }
  }
  fprintf(c->o, "    for (i64 i = 0; i < %lld; i++) {\n      i64 k = o * %lld + i;\n",
          (long long)last, (long long)last);
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &c->v[r];
    if (r == scan) {
      const char *a, *ai, *bv, *bi;
      cu_fused_operand(c, sn->args[0], "k", "o", "i", key, &a, &ai);
      cu_fused_operand(c, sn->args[1], "k", "o", "i", key, &bv, &bi);
      if (n->w == 2) {
        fprintf(c->o,
                "      float pr = h[2 * k], pi = h[2 * k + 1];\n"
                "      float v%d = seq_cmul_re(%s, %s, pr, pi) + %s;\n"
                "      float v%di = seq_cmul_im(%s, %s, pr, pi) + %s;\n"
                "      h[2 * k] = v%d; h[2 * k + 1] = v%di;\n",
                r, a, ai ? ai : "0.0f", bv, r, a, ai ? ai : "0.0f", bi ? bi : "0.0f", r, r);
      } else {
        fprintf(c->o, "      float pr = h[k];\n");
        if (maxplus)
          fprintf(c->o, "      float v%d = seq_max(%s + pr, %s);\n", r, a, bv);
        else
          fprintf(c->o, "      float v%d = %s * pr + %s;\n", r, a, bv);
        fprintf(c->o, "      h[k] = v%d;\n", r);
      }
      if (g->delay >= 0) {
        fprintf(c->o, "      float v%d = pr;\n", g->delay);
        if (n->w == 2) fprintf(c->o, "      float v%di = pi;\n", g->delay);
        if (c->v[g->delay].stored) {
          const char *dp = cu_rowptr(c, g->delay);
          if (n->w == 2)
            fprintf(c->o, "      %s[2 * k] = pr; %s[2 * k + 1] = pi;\n", dp, dp);
          else
            fprintf(c->o, "      %s[k] = pr;\n", dp);
        }
      }
    } else if (r == g->delay) {
      continue;
    } else if (is_sum(nd)) {
      const char *x, *xi;
      cu_fused_operand(c, nd->args[0], "k", "o", "i", key, &x, &xi);
      if (nd->op == IR_MATMUL)
        fprintf(c->o, "      s%d += %s * %s[i];\n", r, x, cu_rowptr(c, nd->args[1]));
      else
        fprintf(c->o, "      s%d += %s;\n", r, x);
      if (n->w == 2) fprintf(c->o, "      s%di += %s;\n", r, xi ? xi : "0.0f");
      continue;
    } else {
      cu_fused_value(c, r, "k", "o", "i", key);
    }
    if (n->stored && r != scan) {
      const char *pp = cu_rowptr(c, r);
      if (n->w == 2)
        fprintf(c->o, "      %s[2 * k] = v%d; %s[2 * k + 1] = v%di;\n", pp, r, pp, r);
      else
        fprintf(c->o, "      %s[k] = v%d;\n", pp, r);
    } else if (n->stored) {
      const char *pp = cu_rowptr(c, r);
      if (n->w == 2)
        fprintf(c->o, "      %s[2 * k] = v%d; %s[2 * k + 1] = v%di;\n", pp, r, pp, r);
      else
        fprintf(c->o, "      %s[k] = v%d;\n", pp, r);
    }
  }
  fprintf(c->o, "    }\n");
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    const IrNode *nd = &fn->nodes.v[r];
    if (!is_sum(nd)) continue;
    const char *pp = cu_rowptr(c, r);
    if (nd->op == IR_MEAN)
      fprintf(c->o, "    s%d /= %lld.0f; s%di /= %lld.0f;\n", r, (long long)(last ? last : 1), r,
              (long long)(last ? last : 1));
    if (c->v[r].w == 2)
      fprintf(c->o, "    %s[2 * o] = s%d; %s[2 * o + 1] = s%di;\n", pp, r, pp, r);
    else
      fprintf(c->o, "    %s[o] = s%d;\n", pp, r);
  }
  fprintf(c->o, "    }\n  }\n");
  for (int m = 0; m < g->nmembers; m++) c->fmember[g->members[m]] = 0;
  cu_kernel_end(c);
}

void cu_scan(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r], *av = &c->v[nd->args[0]];
  int maxplus = nd->op == IR_SCAN_MAX;
  if (n->numel == 0) return;
  cu_kernel_begin(c, "scan", RT_CU_GRID_B, (n->numel + CU_NT - 1) / CU_NT, 1);
  items_open(c, n->numel, "k");
  const char *ka = cu_bcast_index(c, av, n, "k", "0", "k");
  const char *h0 = row_at(c, nd->args[2], "0");
  const char *pa = row_at(c, nd->args[0], "t"), *pb = row_at(c, nd->args[1], "t");
  const char *out = row_at(c, r, "t");
  if (n->w == 2) {
    const char *are = av->w == 2 ? arena_printf(c->a, "%s[2 * (%s)]", pa, ka)
                                 : arena_printf(c->a, "%s[%s]", pa, ka);
    const char *aim = av->w == 2 ? arena_printf(c->a, "%s[2 * (%s) + 1]", pa, ka) : "0.0f";
    fprintf(c->o,
            "    float pr = %s[2 * k], pi = %s[2 * k + 1];\n"
            "    for (i64 tau = 0; tau < len; tau++) {\n"
            "      i64 t = rev ? len - 1 - tau : tau;\n"
            "      float ar = %s, ai = %s;\n"
            "      float nr = seq_cmul_re(ar, ai, pr, pi) + %s[2 * k];\n"
            "      float ni = seq_cmul_im(ar, ai, pr, pi) + %s[2 * k + 1];\n"
            "      %s[2 * k] = nr; %s[2 * k + 1] = ni;\n"
            "      pr = nr; pi = ni;\n"
            "    }\n",
            h0, h0, are, aim, pb, pb, out, out);
  } else {
    fprintf(c->o,
            "    float pr = %s[k];\n"
            "    for (i64 tau = 0; tau < len; tau++) {\n"
            "      i64 t = rev ? len - 1 - tau : tau;\n"
            "      float nv = %s;\n"
            "      %s[k] = nv;\n"
            "      pr = nv;\n"
            "    }\n",
            h0,
            maxplus ? arena_printf(c->a, "seq_max(%s[%s] + pr, %s[k])", pa, ka, pb)
                    : arena_printf(c->a, "%s[%s] * pr + %s[k]", pa, ka, pb),
            out);
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

void cu_delay(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  int64_t fl = sched_row_floats(&c->v[r]);
  if (fl == 0) return;
  cu_kernel_begin(c, "delay", RT_CU_GRID_B, (fl + CU_NT - 1) / CU_NT, 1);
  items_open(c, fl, "e");
  /* By processing step: in a chunked schedule the token rows are in
   * processing order, reversed for a reversed layer. */
  fprintf(c->o,
          "    for (i64 tau = 0; tau < len; tau++) {\n"
          "      const float *src = tau == 0 ? %s : %s;\n"
          "      %s[e] = src[e];\n"
          "    }\n  }\n",
          row_at(c, nd->args[1], "0"), step_row(c, nd->args[0], "tau - 1"), step_row(c, r, "tau"));
  cu_kernel_end(c);
}

void cu_window(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r], *v = &c->v[nd->args[0]];
  int64_t outer, nlen, inner, vo, mlen, vi;
  sched_axis_split(n, nd->axis, &outer, &nlen, &inner);
  sched_axis_split(v, nd->axis, &vo, &mlen, &vi);
  inner *= n->w;
  int64_t fl = outer * nlen * inner;
  if (fl == 0) return;
  long long m = mlen ? mlen : 1;
  cu_kernel_begin(c, "window", RT_CU_GRID_B, (fl + CU_NT - 1) / CU_NT, 1);
  items_open(c, fl, "e");
  fprintf(c->o,
          "    i64 q = e / %lld, j = (e / %lld) %% %lld, kk = e %% %lld;\n"
          "    const float *w0 = %s;\n"
          "    for (i64 rel = 0; rel < len; rel++) {\n"
          "      i64 p = (rel + %d) * %lld + j;\n"
          "      int from_w0 = p < %lld;\n"
          "      i64 pvs = from_w0 ? 0 : p - %lld;\n"
          "      i64 vstep = pvs / %lld, vat = pvs %% %lld;\n"
          "      const float *src = from_w0 ? w0 : %s;\n"
          "      i64 at = from_w0 ? p : vat, extent = from_w0 ? %lld : %lld;\n"
          "      (%s)[(q * %lld + j) * %lld + kk] = src[(q * extent + at) * %lld + kk];\n"
          "    }\n  }\n",
          (long long)(nlen * inner), (long long)inner, (long long)nlen, (long long)inner,
          row_at(c, nd->args[1], "0"), nd->index ? 1 : 0, (long long)mlen, (long long)nlen,
          (long long)nlen, m, m, step_row(c, nd->args[0], "vstep"), (long long)nlen,
          (long long)mlen, step_row(c, r, "rel"), (long long)nlen, (long long)inner,
          (long long)inner);
  cu_kernel_end(c);
}

/* causal_conv with a window state's initial value s0 [D, K-1] (a fourth
 * operand): a thread per (example, channel) walks the example's steps,
 * taps before the first read from s0. */
void cu_conv_window(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r], *w = &c->v[nd->args[1]];
  int64_t D = n->numel, K = D ? w->numel / D : 0;
  if (D == 0) return;
  cu_kernel_begin(c, "conv", RT_CU_GRID_B, (D + CU_NT - 1) / CU_NT, 1);
  items_open(c, D, "d");
  fprintf(c->o,
          "    const float *w0 = %s;\n"
          "    for (i64 tau = 0; tau < len; tau++) {\n"
          "      float acc = %s[%s];\n"
          "      for (i64 k = 0; k < %lld; k++) {\n"
          "        i64 s = tau + k - %lld;\n"
          "        float x = s < 0 ? w0[d * %lld + %lld + s] : %s[d];\n"
          "        acc += %s[d * %lld + k] * x;\n"
          "      }\n"
          "      %s[d] = acc;\n"
          "    }\n  }\n",
          row_at(c, nd->args[3], "0"), cu_base(c, nd->args[2]),
          c->v[nd->args[2]].numel == 1 ? "0" : "d", (long long)K, (long long)(K - 1),
          (long long)(K - 1), (long long)(K - 1), step_row(c, nd->args[0], "s"),
          cu_base(c, nd->args[1]), (long long)K, step_row(c, r, "tau"));
  cu_kernel_end(c);
}

void cu_seq_final_states(Cu *c) {
  const IrFunc *fn = c->fn;
  const SchedInst *in = c->in;
  cu_kernel_begin(c, "final_states", RT_CU_GRID_B, 1, 1);
  fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
                "    i64 len = SEQ_LEN(b);\n"
                "    (void)len;\n");
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    int64_t fl = in->bufs.v[in->state_buf[s]].row_floats;
    const char *init = arena_printf(c->a, "((float *)F[%d] + b * %lld)",
                                    cu_slot_buf(c, in->state_buf[s]), (long long)fl);
    const char *src =
        c->v[nx].group >= 0 || in->chunked
            ? init
            : arena_printf(c->a, "(len == 0 ? %s : %s)", init, row_at(c, nx, "rev ? 0 : len - 1"));
    fprintf(c->o,
            "    if (F[%d]) {\n"
            "      float *dst = (float *)F[%d] + b * %lld;\n"
            "      const float *src = %s;\n",
            cu_slot_sout(c, in->states[s]), cu_slot_sout(c, in->states[s]), (long long)fl, src);
    cu_copy_row(c, "dst", "src", fl);
    fprintf(c->o, "    }\n");
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}

void cu_chunk_states(Cu *c) {
  const IrFunc *fn = c->fn;
  const SchedInst *in = c->in;
  int any = 0;
  for (int s = 0; s < fn->states.n; s++) any |= c->v[fn->states.v[s].next].group < 0;
  if (!any) return;
  cu_kernel_begin(c, "chunk_states", RT_CU_GRID_B, 1, 1);
  fprintf(c->o, "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
                "    i64 len = SEQ_LEN(b);\n"
                "    if (len == 0) continue;\n");
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    if (c->v[nx].group >= 0) continue;
    int64_t fl = in->bufs.v[in->state_buf[s]].row_floats;
    cu_copy_row(c,
                arena_printf(c->a, "((float *)F[%d] + b * %lld)", cu_slot_buf(c, in->state_buf[s]),
                             (long long)fl),
                step_row(c, nx, "len - 1"), fl);
  }
  fprintf(c->o, "  }\n");
  cu_kernel_end(c);
}
