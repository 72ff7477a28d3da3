/* node.c - one node on the current row, the row's elements shared by the
 * threads of a block (SEQ_FOR), a barrier after it; runs of elementwise
 * nodes fused into one element loop with their values in registers. The
 * numerics follow the LLVM backend's rows.c and fuse.c: the same loops, the
 * same broadcasting, sums in a thread's own order. */
#include "cudagen/cu.h"

#include <math.h>
#include <string.h>

static const char *cf(Cu *c, double v) {
  if (isnan(v)) return "SEQ_NAN";
  if (isinf(v)) return v > 0 ? "SEQ_INF" : "(-SEQ_INF)";
  char buf[64];
  snprintf(buf, sizeof buf, "%.9g", v);
  /* "1" is an int to the C parser, and "1f" no number at all. */
  return arena_printf(c->a, "%s%sf", buf, strpbrk(buf, ".e") ? "" : ".0");
}

static const char *row_of(const SchedValue *n) {
  return cu_per_example(n) ? "rb" : n->chunked ? "rtokc" : "rtok";
}

const char *cu_rowptr(Cu *c, IrRef r) {
  const SchedValue *n = &c->v[r];
  const char *base = cu_base(c, r);
  if (n->cls == SCHED_CONST) return base;
  return arena_printf(c->a, "(%s + %s * %lld)", base, row_of(n), (long long)sched_row_floats(n));
}

void cu_copy_row(Cu *c, const char *dst, const char *src, int64_t floats) {
  fprintf(c->o, "    SEQ_FOR(e, %lld) (%s)[e] = (%s)[e];\n", (long long)floats, dst, src);
}

/* Strides of an operand of rank r, shape s, broadcast to a nest of the given
 * rank and shape (numpy: aligned at the right). */
static void bcast_strides(int rank, int r, const int64_t *s, int64_t *stride) {
  int64_t st = 1;
  for (int d = rank - 1; d >= 0; d--) {
    int k = d - (rank - r);
    if (k < 0 || s[k] == 1) {
      stride[d] = 0;
    } else {
      stride[d] = st;
      st *= s[k];
    }
  }
}

/* sum over axes d of ((e / inner_d) % shape_d) * stride_d. */
static const char *nest_index(Cu *c, int rank, const int64_t *shape, const int64_t *stride,
                              const char *e) {
  const char *idx = "0";
  int64_t inner = 1;
  for (int d = rank - 1; d >= 0; d--) {
    if (stride[d])
      idx = arena_printf(c->a, "%s + ((%s / %lld) %% %lld) * %lld", idx, e, (long long)inner,
                         (long long)shape[d], (long long)stride[d]);
    inner *= shape[d];
  }
  return arena_printf(c->a, "(%s)", idx);
}

const char *cu_bcast_index(Cu *c, const SchedValue *an, const SchedValue *key, const char *k,
                           const char *o, const char *i) {
  (void)o;
  (void)i;
  if (an->numel == 1) return "0";
  if (an->numel == key->numel) return k;
  int64_t stride[SEQ_MAX_RANK];
  bcast_strides(key->rank, an->rank, an->shape, stride);
  return nest_index(c, key->rank, key->shape, stride, k);
}

/* Element idx of a buffer with w floats per element. */
static void load(Cu *c, const char *ptr, const char *idx, int w, const char **re, const char **im) {
  if (w == 1) {
    *re = arena_printf(c->a, "%s[%s]", ptr, idx);
    *im = NULL;
  } else {
    *re = arena_printf(c->a, "%s[2 * (%s)]", ptr, idx);
    *im = arena_printf(c->a, "%s[2 * (%s) + 1]", ptr, idx);
  }
}

static void store(Cu *c, const char *ptr, const char *idx, int w, const char *re, const char *im) {
  if (w == 1) {
    fprintf(c->o, "      %s[%s] = %s;\n", ptr, idx, re);
  } else {
    fprintf(c->o, "      %s[2 * (%s)] = %s;\n", ptr, idx, re);
    fprintf(c->o, "      %s[2 * (%s) + 1] = %s;\n", ptr, idx, im ? im : "0.0f");
  }
}

void cu_fused_operand(Cu *c, IrRef a, const char *k, const char *o, const char *i,
                      const SchedValue *key, const char **re, const char **im) {
  if (c->fmember[a]) {
    *re = arena_printf(c->a, "v%d", a);
    *im = c->v[a].w == 2 ? arena_printf(c->a, "v%di", a) : NULL;
    return;
  }
  const SchedValue *an = &c->v[a];
  load(c, cu_rowptr(c, a), cu_bcast_index(c, an, key, k, o, i), an->w, re, im);
}

void cu_fused_value(Cu *c, IrRef r, const char *k, const char *o, const char *i,
                    const SchedValue *key) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  const char *re, *im = NULL;
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) cplx |= c->v[nd->args[j]].w == 2;
  if (nd->op == IR_SLICE || nd->op == IR_INDEX) {
    const SchedValue *x = &c->v[nd->args[0]];
    int64_t outer, len, inner, start = 0;
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
    if (dim_eval(nd->start, c->in->dims, &start) != 0) start = 0;
    re = arena_printf(c->a, "%s[%s + %lld]", cu_rowptr(c, nd->args[0]), k,
                      (long long)(start * inner));
  } else if (nd->op == IR_OUTER) { /* sched_outer_fusable: element k of [M, N] */
    long long N = (long long)n->shape[1];
    re = arena_printf(c->a, "(%s[(%s) / %lld] * %s[(%s) %% %lld])", cu_rowptr(c, nd->args[0]), k, N,
                      cu_rowptr(c, nd->args[1]), k, N);
  } else {
    const char *a, *ai, *b = NULL, *bi = NULL;
    cu_fused_operand(c, nd->args[0], k, o, i, key, &a, &ai);
    if (nd->nargs > 1) cu_fused_operand(c, nd->args[1], k, o, i, key, &b, &bi);
    re = cu_op_expr(c, nd->op, a, ai, b, bi, cplx, &im);
  }
  fprintf(c->o, "      float v%d = %s;\n", r, re);
  if (n->w == 2) fprintf(c->o, "      float v%di = %s;\n", r, im ? im : "0.0f");
}

void cu_fused(Cu *c, SchedClass phase, IrRef first, IrRef last) {
  const IrFunc *fn = c->fn;
  const SchedValue *key = &c->v[first];
  for (IrRef r = first; r <= last; r++) c->fmember[r] = 0;
  fprintf(c->o, "    SEQ_FOR(k, %lld) {\n", (long long)key->numel);
  for (IrRef r = first; r <= last; r++) {
    if (!sched_in_phase(c->in, phase, r)) continue;
    const SchedValue *n = &c->v[r];
    cu_fused_value(c, r, "k", "0", "k", key);
    c->fmember[r] = 1;
    int inside = 0;
    for (IrRef q = r + 1; q <= last; q++)
      if (sched_in_phase(c->in, phase, q))
        for (int j = 0; j < fn->nodes.v[q].nargs; j++) inside += fn->nodes.v[q].args[j] == r;
    if (inside < n->uses)
      store(c, cu_rowptr(c, r), "k", n->w, arena_printf(c->a, "v%d", r),
            n->w == 2 ? arena_printf(c->a, "v%di", r) : NULL);
  }
  fprintf(c->o, "    }\n    __syncthreads();\n");
  for (IrRef r = first; r <= last; r++) c->fmember[r] = 0;
}

/* An elementwise op or broadcast copy of the current row. */
static void node_ew(Cu *c, const IrNode *nd, const SchedValue *n, const char *out) {
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) cplx |= c->v[nd->args[j]].w == 2;
  const char *ops[2][2] = {{NULL, NULL}, {NULL, NULL}};
  fprintf(c->o, "    SEQ_FOR(e, %lld) {\n", (long long)n->numel);
  for (int j = 0; j < nd->nargs && j < 2; j++) {
    const SchedValue *a = &c->v[nd->args[j]];
    const char *idx;
    if (a->numel == n->numel) {
      idx = "e";
    } else if (a->numel == 1) {
      idx = "0";
    } else {
      int64_t stride[SEQ_MAX_RANK];
      bcast_strides(n->rank, a->rank, a->shape, stride);
      idx = nest_index(c, n->rank, n->shape, stride, "e");
    }
    load(c, cu_rowptr(c, nd->args[j]), idx, a->w, &ops[j][0], &ops[j][1]);
  }
  const char *im = NULL;
  const char *re = cu_op_expr(c, nd->op, ops[0][0], ops[0][1], ops[1][0], ops[1][1], cplx, &im);
  /* Both parts before either is stored: the op may run in place. */
  fprintf(c->o, "      float re_ = %s;\n", re);
  if (n->w == 2) fprintf(c->o, "      float im_ = %s;\n", im ? im : "0.0f");
  store(c, out, "e", n->w, "re_", n->w == 2 ? "im_" : NULL);
  fprintf(c->o, "    }\n");
}

static void node_reduce(Cu *c, const IrNode *nd, const char *out) {
  const SchedValue *x = &c->v[nd->args[0]];
  int64_t outer, len, inner;
  if (nd->axis < 0) {
    outer = 1;
    len = x->numel;
    inner = 1;
  } else {
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
  }
  inner *= x->w;
  const char *init = nd->op == IR_AMAX ? "(-SEQ_INF)" : nd->op == IR_AMIN ? "SEQ_INF" : "0.0f";
  fprintf(c->o,
          "    SEQ_FOR(e, %lld) {\n"
          "      i64 o = e / %lld, i = e %% %lld;\n"
          "      float acc = %s;\n"
          "      for (i64 k = 0; k < %lld; k++) {\n",
          (long long)(outer * inner), (long long)inner, (long long)inner, init, (long long)len);
  if (x->folded) { /* the product made here (sched/plan.c plan_folds) */
    const IrNode *xn = &c->fn->nodes.v[nd->args[0]];
    /* Element (row, el) of the product's last axis; with inner 1 that axis
     * is the one summed. */
    const char *row = arena_printf(c->a, "(o * %lld + k)", (long long)len);
    const char *kf =
        inner == 1 ? row : arena_printf(c->a, "(%s * %lld + i)", row, (long long)inner);
    const char *ro = inner == 1 ? "o" : row, *el = inner == 1 ? "k" : "i", *a, *ai, *b, *bi;
    cu_fused_operand(c, xn->args[0], kf, ro, el, x, &a, &ai);
    cu_fused_operand(c, xn->args[1], kf, ro, el, x, &b, &bi);
    fprintf(c->o, "        float x = %s * %s;\n", a, b);
  } else {
    fprintf(c->o, "        float x = %s[(o * %lld + k) * %lld + i];\n", cu_rowptr(c, nd->args[0]),
            (long long)len, (long long)inner);
  }
  if (nd->op == IR_AMAX)
    fprintf(c->o, "        acc = seq_max(acc, x);\n");
  else if (nd->op == IR_AMIN)
    fprintf(c->o, "        acc = seq_min(acc, x);\n");
  else
    fprintf(c->o, "        acc += x;\n");
  fprintf(c->o, "      }\n");
  if (nd->op == IR_MEAN) fprintf(c->o, "      acc /= %s;\n", cf(c, (double)(len ? len : 1)));
  fprintf(c->o, "      %s[e] = acc;\n    }\n", out);
}

static void node_norm(Cu *c, const IrNode *nd, const SchedValue *n, const char *out) {
  const char *src = cu_rowptr(c, nd->args[0]);
  int64_t len = n->rank ? n->shape[n->rank - 1] : 1;
  int64_t rows = len ? n->numel / len : 0;
  const char *flen = cf(c, (double)(len ? len : 1));
  fprintf(c->o,
          "    SEQ_FOR(r, %lld) {\n"
          "      const float *x = %s + r * %lld;\n"
          "      float *y = %s + r * %lld;\n",
          (long long)rows, src, (long long)len, out, (long long)len);
  const char *w = NULL, *bias = NULL;
  if (nd->op == IR_RMSNORM || nd->op == IR_LAYERNORM) {
    const SchedValue *wv = &c->v[nd->args[1]];
    w = arena_printf(c->a, "%s[%s]", cu_rowptr(c, nd->args[1]), wv->numel == 1 ? "0" : "k");
  }
  if (nd->op == IR_LAYERNORM) {
    const SchedValue *bv = &c->v[nd->args[2]];
    bias = arena_printf(c->a, "%s[%s]", cu_rowptr(c, nd->args[2]), bv->numel == 1 ? "0" : "k");
  }
  long long L = (long long)len;
  switch (nd->op) {
  case IR_RMSNORM:
  case IR_L2NORM:
    fprintf(c->o,
            "      float ss = 0.0f;\n"
            "      for (i64 k = 0; k < %lld; k++) ss += x[k] * x[k];\n",
            L);
    if (nd->op == IR_RMSNORM)
      fprintf(c->o, "      float sc = 1.0f / sqrtf(ss / %s + %s);\n", flen, cf(c, nd->cval));
    else
      fprintf(c->o, "      float sc = 1.0f / sqrtf(ss + %s);\n", cf(c, nd->cval));
    fprintf(c->o, "      for (i64 k = 0; k < %lld; k++) y[k] = x[k] * sc%s%s;\n", L, w ? " * " : "",
            w ? w : "");
    break;
  case IR_LAYERNORM:
    fprintf(c->o,
            "      float mu = 0.0f, var = 0.0f;\n"
            "      for (i64 k = 0; k < %lld; k++) mu += x[k];\n"
            "      mu /= %s;\n"
            "      for (i64 k = 0; k < %lld; k++) var += (x[k] - mu) * (x[k] - mu);\n"
            "      float sc = 1.0f / sqrtf(var / %s + %s);\n"
            "      for (i64 k = 0; k < %lld; k++) y[k] = (x[k] - mu) * sc * %s + %s;\n",
            L, flen, L, flen, cf(c, nd->cval), L, w, bias);
    break;
  default: /* SOFTMAX */
    fprintf(c->o,
            "      float mx = -SEQ_INF, sum = 0.0f;\n"
            "      for (i64 k = 0; k < %lld; k++) mx = seq_max(mx, x[k]);\n"
            "      for (i64 k = 0; k < %lld; k++) { y[k] = expf(x[k] - mx); sum += y[k]; }\n"
            "      for (i64 k = 0; k < %lld; k++) y[k] = y[k] / sum;\n",
            L, L, L);
  }
  fprintf(c->o, "    }\n");
}

static void node_matmul(Cu *c, const IrNode *nd, const char *out) {
  const SchedValue *x = &c->v[nd->args[0]], *y = &c->v[nd->args[1]];
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  const char *pa = cu_rowptr(c, nd->args[0]), *pb = cu_rowptr(c, nd->args[1]);
  fprintf(c->o,
          "    SEQ_FOR(e, %lld) {\n"
          "      i64 i = e / %lld, j = e %% %lld;\n"
          "      float acc = 0.0f, acci = 0.0f;\n"
          "      for (i64 k = 0; k < %lld; k++) {\n",
          (long long)(M * N), (long long)N, (long long)N, (long long)K);
  const char *a, *ai, *b, *bi;
  load(c, pa, arena_printf(c->a, "i * %lld + k", (long long)K), x->w, &a, &ai);
  load(c, pb, arena_printf(c->a, "k * %lld + j", (long long)N), y->w, &b, &bi);
  if (x->w == 2 || y->w == 2) {
    const char *im;
    const char *re = cu_op_expr(c, IR_MUL, a, ai, b, bi, 1, &im);
    fprintf(c->o, "        acc += %s;\n        acci += %s;\n      }\n", re, im);
    store(c, out, "e", 2, "acc", "acci");
  } else {
    fprintf(c->o, "        acc += %s * %s;\n      }\n", a, b);
    store(c, out, "e", 1, "acc", NULL);
  }
  fprintf(c->o, "    }\n");
}

/* dst[o, dst_off + k, i] = src[o, src_off + k, i] for k < count. */
static void axis_copy(Cu *c, const char *dst, const char *src, int64_t outer, int64_t inner,
                      int64_t dst_len, int64_t dst_off, int64_t src_len, int64_t src_off,
                      int64_t count) {
  fprintf(c->o,
          "    SEQ_FOR(e, %lld) {\n"
          "      i64 o = e / %lld, k = e %% %lld;\n"
          "      %s[o * %lld + k + %lld] = %s[o * %lld + k + %lld];\n"
          "    }\n",
          (long long)(outer * count * inner), (long long)(count * inner),
          (long long)(count * inner), dst, (long long)(dst_len * inner),
          (long long)(dst_off * inner), src, (long long)(src_len * inner),
          (long long)(src_off * inner));
}

/* Opens a loop giving each thread one n x n matrix of the last two axes of
 * node nd's operand (a) and of its value (out): inv's and expm's kernels. */
static void per_matrix(Cu *c, const IrNode *nd, const SchedValue *n, const char *out) {
  long long N = n->shape[n->rank - 1], NN = N * N, P = NN ? n->numel / NN : 0;
  fprintf(c->o,
          "    SEQ_FOR(p, %lld) {\n"
          "      const i64 n = %lld;\n"
          "      const float *a = %s + p * n * n;\n"
          "      float *out = %s + p * n * n;\n",
          P, N, cu_rowptr(c, nd->args[0]), out);
}

void cu_node(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *n = &c->v[r];
  const char *out = cu_rowptr(c, r);
  switch (nd->op) {
  case IR_CONST:
    fprintf(c->o, "    if (threadIdx.x == 0) %s[0] = %s;\n", out, cf(c, nd->cval));
    break;
  case IR_DIMVAL: {
    int64_t v = 0;
    if (dim_eval(nd->dval, c->in->dims, &v) != 0) v = 0;
    fprintf(c->o, "    if (threadIdx.x == 0) %s[0] = %s;\n", out, cf(c, (double)v));
    break;
  }
  case IR_EYE: {
    long long N = n->rank ? n->shape[0] : 0;
    fprintf(c->o, "    SEQ_FOR(k, %lld) %s[k] = k %% %lld == 0 ? 1.0f : 0.0f;\n", N * N, out,
            N + 1);
    break;
  }
  case IR_INV: {
    /* One thread per matrix: a float64 copy inverted in place by
     * Gauss-Jordan with row pivoting (the rows swapped on the way are the
     * columns swapped back at the end), as the CPU's runtime/cpu_smallmat.c in
     * float64; NaN where singular, as the interpreter. */
    long long N = n->shape[n->rank - 1];
    per_matrix(c, nd, n, out);
    fprintf(c->o, "      double v[%lld];\n      int piv[%lld], bad = 0;\n", N * N, N);
    fputs(
        "      for (i64 k = 0; k < n * n; k++) v[k] = (double)a[k];\n"
        "      for (i64 k = 0; k < n && !bad; k++) {\n"
        "        i64 q = k;\n"
        "        for (i64 i = k + 1; i < n; i++)\n"
        "          if (fabs(v[i * n + k]) > fabs(v[q * n + k])) q = i;\n"
        "        double d = v[q * n + k];\n"
        "        if (d == 0.0 || !(fabs(d) < (double)SEQ_INF)) { bad = 1; break; }\n"
        "        piv[k] = (int)q;\n"
        "        for (i64 j = 0; j < n && q != k; j++) {\n"
        "          double t = v[k * n + j]; v[k * n + j] = v[q * n + j]; v[q * n + j] = t;\n"
        "        }\n"
        "        d = 1.0 / d;\n"
        "        v[k * n + k] = 1.0;\n"
        "        for (i64 j = 0; j < n; j++) v[k * n + j] *= d;\n"
        "        for (i64 i = 0; i < n; i++) {\n"
        "          if (i == k) continue;\n"
        "          double f = v[i * n + k];\n"
        "          v[i * n + k] = 0.0;\n"
        "          for (i64 j = 0; j < n; j++) v[i * n + j] -= f * v[k * n + j];\n"
        "        }\n"
        "      }\n"
        "      for (i64 k = n - 1; k >= 0 && !bad; k--)\n"
        "        for (i64 i = 0; i < n && piv[k] != k; i++) {\n"
        "          double t = v[i * n + k]; v[i * n + k] = v[i * n + piv[k]]; v[i * n + piv[k]] = "
        "t;\n"
        "        }\n"
        "      for (i64 k = 0; k < n * n; k++) out[k] = bad ? SEQ_NAN : (float)v[k];\n"
        "    }\n",
        c->o);
    break;
  }
  case IR_EXPM: {
    /* One thread per matrix, as the CPU's runtime/cpu_smallmat.c, in float64
     * (float32 squarings lose too much on long steps): A scaled by 2^-s to
     * a 1-norm of at most 1/4, the Taylor series by Horner's rule to 20
     * terms, squared s times; NaN for an entry that is not finite or a
     * norm past 2^60. */
    long long NN = n->shape[n->rank - 1] * n->shape[n->rank - 1];
    per_matrix(c, nd, n, out);
    fprintf(c->o,
            "      double m[%lld], e[%lld], t[%lld], norm = 0.0, scale = 1.0;\n      int s = 0;\n",
            NN, NN, NN);
    fputs(
        "      for (i64 j = 0; j < n; j++) {\n"
        "        double cs = 0.0;\n"
        "        for (i64 i = 0; i < n; i++) cs += fabs((double)a[i * n + j]);\n"
        "        norm = cs > norm || cs != cs ? cs : norm;\n"
        "      }\n"
        "      if (!(norm <= 1.152921504606846976e18)) {\n"
        "        for (i64 k = 0; k < n * n; k++) out[k] = SEQ_NAN;\n"
        "      } else {\n"
        "        for (; norm * scale > 0.25; s++) scale *= 0.5;\n"
        "        for (i64 k = 0; k < n * n; k++) m[k] = (double)a[k] * scale;\n"
        "        for (i64 k = 0; k < n * n; k++) e[k] = k % (n + 1) == 0 ? 1.0 : 0.0;\n"
        "        for (int k = 20; k >= 1; k--) {\n"
        "          for (i64 i = 0; i < n; i++)\n"
        "            for (i64 j = 0; j < n; j++) {\n"
        "              double acc = 0.0;\n"
        "              for (i64 l = 0; l < n; l++) acc += m[i * n + l] * e[l * n + j];\n"
        "              t[i * n + j] = acc / k;\n"
        "            }\n"
        "          for (i64 q = 0; q < n * n; q++) e[q] = t[q] + (q % (n + 1) == 0 ? 1.0 : 0.0);\n"
        "        }\n"
        "        for (int q = 0; q < s; q++) {\n"
        "          for (i64 i = 0; i < n; i++)\n"
        "            for (i64 j = 0; j < n; j++) {\n"
        "              double acc = 0.0;\n"
        "              for (i64 l = 0; l < n; l++) acc += e[i * n + l] * e[l * n + j];\n"
        "              t[i * n + j] = acc;\n"
        "            }\n"
        "          for (i64 k = 0; k < n * n; k++) e[k] = t[k];\n"
        "        }\n"
        "        for (i64 k = 0; k < n * n; k++) out[k] = (float)e[k];\n"
        "      }\n"
        "    }\n",
        c->o);
    break;
  }
  case IR_DIAG: {
    const SchedValue *x = &c->v[nd->args[0]];
    int64_t N = x->shape[x->rank - 1];
    const char *src = cu_rowptr(c, nd->args[0]), *re, *im;
    fprintf(c->o, "    SEQ_FOR(e, %lld) {\n      i64 p = e / %lld, i = e %% %lld;\n",
            (long long)n->numel, (long long)N, (long long)N);
    load(c, src, arena_printf(c->a, "(p * %lld + i) * %lld + i", (long long)N, (long long)N), x->w,
         &re, &im);
    store(c, out, "e", x->w, re, im);
    fprintf(c->o, "    }\n");
    break;
  }
  case IR_TRANSPOSE: {
    const SchedValue *x = &c->v[nd->args[0]];
    long long Mx = x->shape[x->rank - 2], Nx = x->shape[x->rank - 1];
    const char *src = cu_rowptr(c, nd->args[0]), *re, *im;
    fprintf(c->o,
            "    SEQ_FOR(e, %lld) {\n"
            "      i64 p = e / %lld, i = (e / %lld) %% %lld, j = e %% %lld;\n",
            (long long)x->numel, Mx * Nx, Mx, Nx, Mx);
    load(c, src, arena_printf(c->a, "p * %lld + j * %lld + i", Mx * Nx, Nx), x->w, &re, &im);
    store(c, out, "e", x->w, re, im);
    fprintf(c->o, "    }\n");
    break;
  }
  case IR_SLICE:
  case IR_INDEX: {
    const SchedValue *x = &c->v[nd->args[0]];
    int64_t outer, len, inner, start = 0, stop = 0;
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
    inner *= x->w;
    if (dim_eval(nd->start, c->in->dims, &start) != 0) start = 0;
    if (nd->op == IR_SLICE) {
      if (dim_eval(nd->stop, c->in->dims, &stop) != 0) stop = start;
    } else {
      stop = start + 1;
    }
    axis_copy(c, out, cu_rowptr(c, nd->args[0]), outer, inner, stop - start, 0, len, start,
              stop - start);
    break;
  }
  case IR_CONCAT: {
    int64_t outer, len, inner, off = 0;
    sched_axis_split(n, nd->axis, &outer, &len, &inner);
    inner *= n->w;
    for (int j = 0; j < nd->nargs; j++) {
      const SchedValue *x = &c->v[nd->args[j]];
      int64_t xl = x->shape[nd->axis];
      axis_copy(c, out, cu_rowptr(c, nd->args[j]), outer, inner, len, off, xl, 0, xl);
      off += xl;
    }
    break;
  }
  case IR_GATHER: {
    const SchedValue *tab = &c->v[nd->args[0]];
    int64_t fl = sched_row_floats(n);
    fprintf(c->o,
            "    {\n"
            "      i64 id = %s[0];\n"
            "      if (id < 0 || id >= %lld) {\n"
            "        if (threadIdx.x == 0 && status) *status = 3;\n"
            "      } else {\n"
            "        SEQ_FOR(e, %lld) %s[e] = %s[id * %lld + e];\n"
            "      }\n"
            "    }\n",
            cu_rowptr(c, nd->args[1]), (long long)tab->shape[0], (long long)fl, out,
            cu_rowptr(c, nd->args[0]), (long long)fl);
    break;
  }
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    node_reduce(c, nd, out);
    break;
  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
  case IR_SOFTMAX:
    node_norm(c, nd, n, out);
    break;
  case IR_MATMUL:
    node_matmul(c, nd, out);
    break;
  case IR_OUTER: {
    const SchedValue *x = &c->v[nd->args[0]], *y = &c->v[nd->args[1]];
    const char *a, *ai, *b, *bi, *im;
    fprintf(c->o, "    SEQ_FOR(e, %lld) {\n      i64 i = e / %lld, j = e %% %lld;\n",
            (long long)(x->numel * y->numel), (long long)y->numel, (long long)y->numel);
    load(c, cu_rowptr(c, nd->args[0]), "i", x->w, &a, &ai);
    load(c, cu_rowptr(c, nd->args[1]), "j", y->w, &b, &bi);
    const char *re = cu_op_expr(c, IR_MUL, a, ai, b, bi, n->w == 2, &im);
    store(c, out, "e", n->w, re, im);
    fprintf(c->o, "    }\n");
    break;
  }
  default:
    if (ir_op_info[nd->op].flags & IRF_EW || nd->op == IR_BROADCAST) {
      node_ew(c, nd, n, out);
      break;
    }
    cu_unsupported(c, r, ir_op_info[nd->op].text);
    return;
  }
  fprintf(c->o, "    __syncthreads();\n");
}
