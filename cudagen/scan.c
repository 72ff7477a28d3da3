/* scan.c - the scan form on the GPU: a fused scan (sched/scan.c) as one
 * thread per (example, row of the state's last axis), walking the example's
 * steps with the running value in the state's storage and computing the
 * group's members in node order, as the CPU's scan item does; a scan left
 * alone, delays and windows as a thread per (example, element); and the
 * final states these forms leave. Every thread's work is independent, so
 * nothing here synchronizes; where a fused scan's items are too few to
 * fill a device, each example's steps are split into segments, with a
 * kernel for the segments' maps and one carrying the value between them. */
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

/* How many segments each example's steps are split into (the same
 * expression in every kernel of a split scan): one where the items of a
 * step already fill a device (64K threads), else enough segments of at
 * least 16 steps to. */
static const char *segments(Cu *c, int64_t rows) {
  return arena_printf(c->a,
                      "  const i64 G = B * %lld >= %d || T < %d ? 1\n"
                      "                : (T / %d < (%d + B * %lld - 1) / (B * %lld)\n"
                      "                       ? T / %d : (%d + B * %lld - 1) / (B * %lld));\n"
                      "  const i64 S = (T + G - 1) / G;\n",
                      (long long)rows, RT_CU_SPLIT_THREADS, 2 * RT_CU_SPLIT_STEPS,
                      RT_CU_SPLIT_STEPS, RT_CU_SPLIT_THREADS, (long long)rows, (long long)rows,
                      RT_CU_SPLIT_STEPS, RT_CU_SPLIT_THREADS, (long long)rows, (long long)rows);
}

/* Opens the loop over items (example b, segment g, row o) of a split scan,
 * and the segment's steps [lo, hi). */
static void segment_items_open(Cu *c, int64_t outer) {
  fprintf(c->o,
          "  for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < B * G * %lld;\n"
          "       item += (i64)gridDim.x * blockDim.x) {\n"
          "    i64 b = item / (G * %lld), g = (item / %lld) %% G, o = item %% %lld;\n"
          "    i64 len = SEQ_LEN(b), rb = b;\n"
          "    i64 lo = g * S, hi = lo + S < len ? lo + S : len;\n"
          "    (void)rb;\n",
          (long long)outer, (long long)outer, (long long)outer, (long long)outer);
}

/* The loop over the steps [lo, hi) and the rows of the current one. */
static void steps_open(Cu *c) {
  fprintf(c->o, "    for (i64 tau = lo; tau < hi; tau++) {\n"
                "    i64 t = rev ? len - 1 - tau : tau;\n"
                "    i64 rtok = b * T + t, rtokc = b * T + tau;\n"
                "    (void)rtok; (void)rtokc;\n");
}

/* Whether member r of the group reads the running value (the scan or its
 * delay), directly or through other members. */
static char *reads_state(Cu *c, const SchedScanGroup *g, IrRef scan) {
  char *dep = arena_calloc(c->a, (size_t)c->fn->nodes.n + 1, 1);
  if (!dep) {
    c->failed = 1;
    return NULL;
  }
  dep[scan] = 1;
  if (g->delay >= 0) dep[g->delay] = 1;
  for (int m = 0; m < g->nmembers; m++) {
    const IrNode *nd = &c->fn->nodes.v[g->members[m]];
    for (int j = 0; j < nd->nargs; j++) dep[g->members[m]] |= dep[nd->args[j]];
  }
  return dep;
}

/* The split scan's first kernel: for each (example, segment, element) the
 * segment's map of the running value, h -> A h + c (max(A + h, c) for the
 * (max, +) scan), from the coefficients alone, into ac. */
static void segment_maps(Cu *c, const SchedOp *op, int64_t outer, int64_t last, int ac) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = c->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &c->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX, w = key->w;
  char *dep = reads_state(c, g, scan);
  if (!dep) return;
  cu_kernel_begin(c, "scan_maps", RT_CU_GRID_BMIN, (outer + CU_NT - 1) / CU_NT,
                  RT_CU_SPLIT_THREADS / CU_NT);
  fputs(segments(c, outer), c->o);
  fprintf(c->o, "  if (G < 2) return;\n");
  segment_items_open(c, outer);
  fprintf(c->o,
          "    float *ac = (float *)F[%d] + (b * G + g) * %lld;\n"
          "    for (i64 i = 0; i < %lld; i++) {\n"
          "      i64 k = o * %lld + i;\n",
          cu_slot_buf(c, ac), (long long)(2 * key->numel * w), (long long)last, (long long)last);
  if (w == 2)
    fprintf(c->o, "      ac[4 * k] = 1.0f; ac[4 * k + 1] = 0.0f;\n"
                  "      ac[4 * k + 2] = 0.0f; ac[4 * k + 3] = 0.0f;\n");
  else
    fprintf(c->o, "      ac[2 * k] = %s; ac[2 * k + 1] = %s;\n", maxplus ? "0.0f" : "1.0f",
            maxplus ? "(-SEQ_INF)" : "0.0f");
  fprintf(c->o, "    }\n");
  steps_open(c);
  fprintf(c->o, "    for (i64 i = 0; i < %lld; i++) {\n      i64 k = o * %lld + i;\n",
          (long long)last, (long long)last);
  for (int m = 0; m < g->nmembers; m++) {
    IrRef r = g->members[m];
    if (dep[r] || is_sum(&fn->nodes.v[r])) continue;
    c->fmember[r] = 1;
    cu_fused_value(c, r, "k", "o", "i", key);
  }
  const char *a, *ai, *bv, *bi;
  cu_fused_operand(c, sn->args[0], "k", "o", "i", key, &a, &ai);
  cu_fused_operand(c, sn->args[1], "k", "o", "i", key, &bv, &bi);
  if (w == 2)
    fprintf(
        c->o,
        "      float ar = %s, ai = %s;\n"
        "      float Ar = ac[4 * k], Ai = ac[4 * k + 1], cr = ac[4 * k + 2], ci = ac[4 * k + 3];\n"
        "      ac[4 * k] = seq_cmul_re(ar, ai, Ar, Ai);\n"
        "      ac[4 * k + 1] = seq_cmul_im(ar, ai, Ar, Ai);\n"
        "      ac[4 * k + 2] = seq_cmul_re(ar, ai, cr, ci) + %s;\n"
        "      ac[4 * k + 3] = seq_cmul_im(ar, ai, cr, ci) + %s;\n",
        a, ai ? ai : "0.0f", bv, bi ? bi : "0.0f");
  else if (maxplus)
    fprintf(c->o,
            "      float av = %s;\n"
            "      ac[2 * k] = av + ac[2 * k];\n"
            "      ac[2 * k + 1] = seq_max(av + ac[2 * k + 1], %s);\n",
            a, bv);
  else
    fprintf(c->o,
            "      float av = %s;\n"
            "      ac[2 * k] = av * ac[2 * k];\n"
            "      ac[2 * k + 1] = av * ac[2 * k + 1] + %s;\n",
            a, bv);
  fprintf(c->o, "    }\n    }\n  }\n");
  for (int m = 0; m < g->nmembers; m++) c->fmember[g->members[m]] = 0;
  cu_kernel_end(c);
}

/* The split scan's second kernel: a thread per (example, element) carries
 * the running value from the state's storage through the segments' maps,
 * writing each segment's start into its copy of the state and the value
 * after the example's last step into the storage. */
static void segment_starts(Cu *c, const SchedOp *op, int64_t outer, int ac, int hs) {
  IrRef scan = op->node;
  const SchedValue *key = &c->v[scan];
  int maxplus = c->fn->nodes.v[scan].op == IR_SCAN_MAX, w = key->w;
  long long ew = (long long)(key->numel * w);
  long long srow = (long long)c->in->bufs.v[c->in->state_buf[op->group->state]].row_floats;
  cu_kernel_begin(c, "scan_starts", RT_CU_GRID_B, (key->numel + CU_NT - 1) / CU_NT, 1);
  fputs(segments(c, outer), c->o);
  fprintf(c->o, "  if (G < 2) return;\n");
  items_open(c, key->numel, "k");
  fprintf(c->o,
          "    float *h = (float *)F[%d] + b * %lld;\n"
          "    const float *ac = (const float *)F[%d] + b * G * %lld;\n"
          "    float *hs = (float *)F[%d] + b * G * %lld;\n",
          cu_slot_buf(c, c->in->state_buf[op->group->state]), srow, cu_slot_buf(c, ac), 2 * ew,
          cu_slot_buf(c, hs), ew);
  if (w == 2)
    fprintf(c->o,
            "    float xr = h[2 * k], xi = h[2 * k + 1];\n"
            "    for (i64 g = 0; g < G && g * S < len; g++) {\n"
            "      hs[g * %lld + 2 * k] = xr; hs[g * %lld + 2 * k + 1] = xi;\n"
            "      const float *m = ac + g * %lld + 4 * k;\n"
            "      float nr = seq_cmul_re(m[0], m[1], xr, xi) + m[2];\n"
            "      float ni = seq_cmul_im(m[0], m[1], xr, xi) + m[3];\n"
            "      xr = nr; xi = ni;\n"
            "    }\n"
            "    h[2 * k] = xr; h[2 * k + 1] = xi;\n"
            "  }\n",
            ew, ew, 2 * ew);
  else
    fprintf(c->o,
            "    float x = h[k];\n"
            "    for (i64 g = 0; g < G && g * S < len; g++) {\n"
            "      hs[g * %lld + k] = x;\n"
            "      const float *m = ac + g * %lld + 2 * k;\n"
            "      x = %s;\n"
            "    }\n"
            "    h[k] = x;\n"
            "  }\n",
            ew, 2 * ew, maxplus ? "seq_max(m[0] + x, m[1])" : "m[0] * x + m[1]");
  cu_kernel_end(c);
}

/* A fused scan. Its items (example, row of the last axis) each walk their
 * example's steps; where they are too few to fill a device, each example's
 * steps are split into segments (a run-time choice, `segments`): the
 * segments' maps, their starts carried from the state, and then every
 * segment walked as a whole sequence would be, from its start in a copy of
 * the state (the storage already holds the final value). */
void cu_scan_group(Cu *c, const SchedOp *op) {
  const SchedScanGroup *g = op->group;
  const IrFunc *fn = c->fn;
  IrRef scan = op->node;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &c->v[scan];
  int maxplus = sn->op == IR_SCAN_MAX;
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  int64_t outer = last ? key->numel / last : 0;
  int64_t ew = key->numel * key->w;
  int64_t srow = c->in->bufs.v[c->in->state_buf[g->state]].row_floats;
  if (outer == 0) return;
  /* Scratch per example: at most T / RT_CU_SPLIT_STEPS segments, each a map (two values
   * per element) and a start (one). */
  const int64_t q = RT_CU_SPLIT_STEPS;
  int ac = cu_scratch_buf(c, RT_CU_ROWS_BT, (2 * ew + q - 1) / q);
  int hs = cu_scratch_buf(c, RT_CU_ROWS_BT, (ew + q - 1) / q);
  segment_maps(c, op, outer, last, ac);
  segment_starts(c, op, outer, ac, hs);
  cu_kernel_begin(c, "scan", RT_CU_GRID_BMIN, (outer + CU_NT - 1) / CU_NT,
                  RT_CU_SPLIT_THREADS / CU_NT);
  fputs(segments(c, outer), c->o);
  segment_items_open(c, outer);
  fprintf(c->o,
          "    float *h = G < 2 ? (float *)F[%d] + b * %lld\n"
          "                     : (float *)F[%d] + (b * G + g) * %lld;\n",
          cu_slot_buf(c, c->in->state_buf[g->state]), (long long)srow, cu_slot_buf(c, hs),
          (long long)ew);
  steps_open(c);
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
