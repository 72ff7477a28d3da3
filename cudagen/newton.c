/* newton.c - a Newton layer on the GPU: the call becomes a solve step of the
 * plan (RT_CU_STEP_NEWTON, rt_cuda.h), which the runtime's host loop
 * (runtime/cuda_newton.c) drives, evaluating the layer's step instance at
 * every token at once and running the passes over the sequence as the
 * solver's kernels below. Those are the same for every solve (sizes and
 * buffers come in their frame, RT_CU_NF_*), so a program has them once:
 *
 *   delay     P = the guess one step later (h0 first), or 0: a block per row
 *   resid     max |X - F| per example: a block per example, a tree in shared
 *             memory (NaN counts as infinite)
 *   linear    the linear recurrence with J's diagonal blocks: a thread per
 *             (example, element) walks the example's steps; or, where that
 *             is too few threads, split in time (seg_*): each segment's map
 *             (the product of its J, n x n), the maps carried to every
 *             segment's start, each segment walked again from its start
 *   dense     the same with J whole: a block per example, its threads over
 *             the state's rows, a barrier per step
 *   test      max |D - H| / (atol + rtol |D|) and the first step over 1
 *   rows      H = D, D -= H, C = H + lam D, H = C on the flagged examples
 *   tangent, jcol   J column by column through the step's J times tangents
 *   gather, scatter one step of the step loop, a row per example (the
 *             fallback)
 * Plain fp32 and correctness first, as the rest of the backend; the host
 * reads a float and an int per example back per iteration.
 */
#include "cudagen/cu.h"

#include <string.h>

/* The solver's kernels, in the order of RT_CU_NT_K_*. */
static const char *const nt_names[RT_CU_NT_NKERNELS] = {
    "seq_nt_delay",  "seq_nt_resid",   "seq_nt_linear",     "seq_nt_dense",
    "seq_nt_test",   "seq_nt_rows",    "seq_nt_tangent",    "seq_nt_jcol",
    "seq_nt_gather", "seq_nt_scatter", "seq_nt_seg_reduce", "seq_nt_seg_carry"};

/* What every solver kernel starts with: the frame's sizes as locals and
 * the row of example b's step tau. */
static void nt_begin(Cu *c, const char *name) {
  fprintf(c->o,
          "\nextern \"C\" __global__ void __launch_bounds__(%d) %s(const i64 *__restrict__ N) {\n"
          "  const i64 B = N[%d], T = N[%d], w = N[%d];\n"
          "  const int rev = (int)N[%d], n = (int)N[%d];\n"
          "  const int *lens = (const int *)N[%d];\n"
          "  (void)B; (void)T; (void)w; (void)rev; (void)n; (void)lens;\n",
          CU_NT, name, RT_CU_NF_B, RT_CU_NF_T, RT_CU_NF_W, RT_CU_NF_REV, RT_CU_NF_N, RT_CU_NF_LENS);
}

/* A per-example maximum over a block: every thread's m into red, the block's
 * maximum in red[0] after the barriers. */
static const char *const nt_block_max =
    "__device__ void seq_nt_block_max(float *red, float m) {\n"
    "  red[threadIdx.x] = m;\n"
    "  __syncthreads();\n"
    "  for (int s = blockDim.x / 2; s > 0; s /= 2) {\n"
    "    if ((int)threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + "
    "s]);\n"
    "    __syncthreads();\n"
    "  }\n"
    "}\n"
    "__device__ void seq_nt_block_min(i64 *red, i64 m) {\n"
    "  red[threadIdx.x] = m;\n"
    "  __syncthreads();\n"
    "  for (int s = blockDim.x / 2; s > 0; s /= 2) {\n"
    "    if ((int)threadIdx.x < s && red[threadIdx.x + s] < red[threadIdx.x])\n"
    "      red[threadIdx.x] = red[threadIdx.x + s];\n"
    "    __syncthreads();\n"
    "  }\n"
    "}\n"
    "#define SEQ_NT_ROW(b, len, tau) ((b) * T + (rev ? (len) - 1 - (tau) : (tau)))\n"
    "#define SEQ_NT_PTR(slot, k) ((float *)N[(slot) + (k)])\n";

static void nt_kernels(Cu *c) {
  FILE *o = c->o;
  fputs(nt_block_max, o);
  /* delay */
  nt_begin(c, nt_names[RT_CU_NT_K_DELAY]);
  fprintf(
      o,
      "  const int xsel = (int)N[%d];\n"
      "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n"
      "    i64 b = row / T, tau = row %% T, len = SEQ_LEN(b);\n"
      "    if (tau >= len) continue;\n"
      "    i64 at = SEQ_NT_ROW(b, len, tau) * w;\n"
      "    i64 pv = tau ? SEQ_NT_ROW(b, len, tau - 1) * w : -1;\n"
      "    for (int k = 0; k < n; k++) {\n"
      "      float *P = SEQ_NT_PTR(%d, k);\n"
      "      const float *X = xsel == 1 ? SEQ_NT_PTR(%d, k) : xsel == 2 ? SEQ_NT_PTR(%d, k) : 0;\n"
      "      const float *h0 = SEQ_NT_PTR(%d, k) + b * N[%d + k];\n"
      "      SEQ_FOR(i, w) P[at + i] = !X ? 0.0f : pv >= 0 ? X[pv + i] : h0[i];\n"
      "    }\n"
      "  }\n"
      "}\n",
      RT_CU_NF_XSEL, RT_CU_NF_P, RT_CU_NF_H, RT_CU_NF_C, RT_CU_NF_H0, RT_CU_NF_H0S);
  /* resid */
  nt_begin(c, nt_names[RT_CU_NT_K_RESID]);
  fprintf(o,
          "  __shared__ float red[%d];\n"
          "  const int xsel = (int)N[%d];\n"
          "  float *res = (float *)N[%d];\n"
          "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
          "    i64 len = SEQ_LEN(b);\n"
          "    float m = 0.0f;\n"
          "    for (i64 e = threadIdx.x; e < n * len * w; e += blockDim.x) {\n"
          "      int k = (int)(e / (len * w));\n"
          "      i64 q = e %% (len * w), at = SEQ_NT_ROW(b, len, q / w) * w + q %% w;\n"
          "      const float *X = SEQ_NT_PTR(xsel == 1 ? %d : %d, k);\n"
          "      float d = fabsf(X[at] - SEQ_NT_PTR(%d, k)[at]);\n"
          "      if (!(d <= m)) m = d != d ? SEQ_INF : d;\n"
          "    }\n"
          "    seq_nt_block_max(red, m);\n"
          "    if (threadIdx.x == 0) res[b] = red[0];\n"
          "    __syncthreads();\n"
          "  }\n"
          "}\n",
          CU_NT, RT_CU_NF_XSEL, RT_CU_NF_RES, RT_CU_NF_H, RT_CU_NF_C, RT_CU_NF_F);
  /* dense */
  nt_begin(c, nt_names[RT_CU_NT_K_DENSE]);
  fprintf(o,
          "  const int *flag = (const int *)N[%d];\n"
          "  const float *J = SEQ_NT_PTR(%d, 0);\n"
          "  const i64 nw = n * w;\n"
          "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
          "    i64 len = SEQ_LEN(b);\n"
          "    if (!flag[b]) continue;\n"
          "    for (i64 tau = 0; tau < len; tau++) {\n"
          "      i64 row = SEQ_NT_ROW(b, len, tau), pr = tau ? SEQ_NT_ROW(b, len, tau - 1) : -1;\n"
          "      for (i64 r = threadIdx.x; r < nw; r += blockDim.x) {\n"
          "        int k = (int)(r / w);\n"
          "        float acc = SEQ_NT_PTR(%d, k)[row * w + r %% w];\n"
          "        const float *Jr = J + (row * nw + r) * nw;\n"
          "        for (i64 q = 0; q < nw; q++) {\n"
          "          int j = (int)(q / w);\n"
          "          i64 ci = q %% w;\n"
          "          float prev = pr >= 0 ? SEQ_NT_PTR(%d, j)[pr * w + ci]\n"
          "                               : SEQ_NT_PTR(%d, j)[b * N[%d + j] + ci];\n"
          "          acc += Jr[q] * (prev - SEQ_NT_PTR(%d, j)[row * w + ci]);\n"
          "        }\n"
          "        SEQ_NT_PTR(%d, k)[row * w + r %% w] = acc;\n"
          "      }\n"
          "      __syncthreads();\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NF_FLAG, RT_CU_NF_J, RT_CU_NF_F, RT_CU_NF_D, RT_CU_NF_H0, RT_CU_NF_H0S, RT_CU_NF_P,
          RT_CU_NF_D);
  /* test */
  nt_begin(c, nt_names[RT_CU_NT_K_TEST]);
  fprintf(o,
          "  __shared__ float red[%d];\n"
          "  __shared__ i64 first[%d];\n"
          "  const int *flag = (const int *)N[%d];\n"
          "  float *res = (float *)N[%d];\n"
          "  i64 *bad = (i64 *)N[%d];\n"
          "  union { i64 i; double d; } rt, at;\n"
          "  rt.i = N[%d];\n"
          "  at.i = N[%d];\n"
          "  const float rtol = (float)rt.d, atol = (float)at.d;\n"
          "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
          "    i64 len = SEQ_LEN(b);\n"
          "    if (!flag[b]) continue;\n"
          "    float m = 0.0f;\n"
          "    i64 t0 = len;\n"
          "    for (i64 e = threadIdx.x; e < n * len * w; e += blockDim.x) {\n"
          "      int k = (int)(e / (len * w));\n"
          "      i64 q = e %% (len * w), tau = q / w, x = SEQ_NT_ROW(b, len, tau) * w + q %% w;\n"
          "      float d = SEQ_NT_PTR(%d, k)[x], h = SEQ_NT_PTR(%d, k)[x];\n"
          "      float r = fabsf(d - h) / (atol + rtol * fabsf(d));\n"
          "      if (!(r <= m)) m = r != r ? SEQ_INF : r;\n"
          "      if (!(r <= 1.0f) && tau < t0) t0 = tau;\n"
          "    }\n"
          "    seq_nt_block_max(red, m);\n"
          "    seq_nt_block_min(first, t0);\n"
          "    if (threadIdx.x == 0) {\n"
          "      res[b] = red[0];\n"
          "      bad[b] = first[0];\n"
          "    }\n"
          "    __syncthreads();\n"
          "  }\n"
          "}\n",
          CU_NT, CU_NT, RT_CU_NF_FLAG, RT_CU_NF_RES, RT_CU_NF_BAD, RT_CU_NF_RTOL, RT_CU_NF_ATOL,
          RT_CU_NF_D, RT_CU_NF_H);
  /* rows */
  nt_begin(c, nt_names[RT_CU_NT_K_ROWS]);
  fprintf(o,
          "  const int op = (int)N[%d];\n"
          "  const int *flag = (const int *)N[%d];\n"
          "  const float *lam = (const float *)N[%d];\n"
          "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n"
          "    i64 b = row / T, tau = row %% T;\n"
          "    if (tau >= SEQ_LEN(b) || (op != 2 && !flag[b])) continue;\n"
          "    for (int k = 0; k < n; k++) {\n"
          "      float *h = SEQ_NT_PTR(%d, k) + row * w, *d = SEQ_NT_PTR(%d, k) + row * w;\n"
          "      float *cc = SEQ_NT_PTR(%d, k) + row * w;\n"
          "      float l = flag[b] ? lam[b] : 0.0f;\n"
          "      SEQ_FOR(i, w) {\n"
          "        if (op == 0) h[i] = d[i];\n"
          "        else if (op == 1) d[i] -= h[i];\n"
          "        else if (op == 2) cc[i] = flag[b] ? h[i] + l * d[i] : h[i];\n"
          "        else h[i] = cc[i];\n"
          "      }\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NF_OP, RT_CU_NF_FLAG, RT_CU_NF_LAM, RT_CU_NF_H, RT_CU_NF_D, RT_CU_NF_C);
  /* tangent */
  nt_begin(c, nt_names[RT_CU_NT_K_TANGENT]);
  fprintf(o,
          "  const i64 col = N[%d];\n"
          "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x)\n"
          "    for (int k = 0; k < n; k++) {\n"
          "      float *tg = SEQ_NT_PTR(%d, k) + row * w;\n"
          "      SEQ_FOR(i, w) tg[i] = k * w + i == col ? 1.0f : 0.0f;\n"
          "    }\n"
          "}\n",
          RT_CU_NF_OP, RT_CU_NF_TG);
  /* jcol */
  nt_begin(c, nt_names[RT_CU_NT_K_JCOL]);
  fprintf(o,
          "  const i64 col = N[%d], nw = n * w;\n"
          "  float *J = SEQ_NT_PTR(%d, 0);\n"
          "  for (i64 row = blockIdx.x; row < B * T; row += gridDim.x) {\n"
          "    if (row %% T >= SEQ_LEN(row / T)) continue;\n"
          "    for (int k = 0; k < n; k++) {\n"
          "      const float *df = SEQ_NT_PTR(%d, k) + row * w;\n"
          "      SEQ_FOR(i, w) J[(row * nw + k * w + i) * nw + col] = df[i];\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NF_OP, RT_CU_NF_J, RT_CU_NF_DF);
  /* gather */
  nt_begin(c, nt_names[RT_CU_NT_K_GATHER]);
  fprintf(o,
          "  const i64 tau = N[%d], ng = N[%d];\n"
          "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
          "    i64 len = SEQ_LEN(b);\n"
          "    if (tau >= len) continue;\n"
          "    i64 row = SEQ_NT_ROW(b, len, tau);\n"
          "    for (i64 g = 0; g < ng; g++) {\n"
          "      const float *src = (const float *)N[%d + 3 * g];\n"
          "      float *dst = (float *)N[%d + 3 * g + 1];\n"
          "      i64 fl = N[%d + 3 * g + 2];\n"
          "      SEQ_FOR(e, fl) dst[b * fl + e] = src[row * fl + e];\n"
          "    }\n"
          "    for (int k = 0; k < n; k++) {\n"
          "      const float *prev = tau ? SEQ_NT_PTR(%d, k) + SEQ_NT_ROW(b, len, tau - 1) * w\n"
          "                              : SEQ_NT_PTR(%d, k) + b * N[%d + k];\n"
          "      SEQ_FOR(i, w) SEQ_NT_PTR(%d, k)[b * w + i] = prev[i];\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NF_OP, RT_CU_NF_NG, RT_CU_NF_G, RT_CU_NF_G, RT_CU_NF_G, RT_CU_NF_H, RT_CU_NF_H0,
          RT_CU_NF_H0S, RT_CU_NF_P1);
  /* scatter */
  nt_begin(c, nt_names[RT_CU_NT_K_SCATTER]);
  fprintf(o,
          "  const i64 tau = N[%d];\n"
          "  const int *flag = (const int *)N[%d];\n"
          "  const i64 *from = (const i64 *)N[%d];\n"
          "  for (i64 b = blockIdx.x; b < B; b += gridDim.x) {\n"
          "    i64 len = SEQ_LEN(b);\n"
          "    if (!flag[b] || tau < from[b] || tau >= len) continue;\n"
          "    i64 row = SEQ_NT_ROW(b, len, tau);\n"
          "    for (int k = 0; k < n; k++)\n"
          "      SEQ_FOR(i, w) SEQ_NT_PTR(%d, k)[row * w + i] = SEQ_NT_PTR(%d, k)[b * w + i];\n"
          "  }\n"
          "}\n",
          RT_CU_NF_OP, RT_CU_NF_FLAG, RT_CU_NF_BAD, RT_CU_NF_H, RT_CU_NF_F1);
}

/* The linear recurrence split in time: each example's steps in NSEG
 * segments of S, a thread per (example, segment, element) forms its
 * segment's map x -> M x + c (M = the product of its J, n x n), a thread per
 * (example, element) carries h0 through the maps to every segment's start,
 * and the first kind of thread walks its segment again from there. */
static void nt_seg_kernels(Cu *c) {
  FILE *o = c->o;
  const char *seg_begin =
      "  const int *flag = (const int *)N[%d];\n"
      "  const i64 G = N[%d], S = (T + G - 1) / G, nm = n * n + n;\n"
      "  float *seg = (float *)N[%d], *start = seg ? seg + B * G * w * nm : 0;\n"
      "  (void)S; (void)start;\n";
  nt_begin(c, nt_names[RT_CU_NT_K_SEG_REDUCE]);
  fprintf(o, seg_begin, RT_CU_NF_FLAG, RT_CU_NF_NSEG, RT_CU_NF_SEG);
  fprintf(
      o,
      "  for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < B * G * w;\n"
      "       e += (i64)gridDim.x * blockDim.x) {\n"
      "    i64 b = e / (G * w), g = (e / w) %% G, i = e %% w, len = SEQ_LEN(b);\n"
      "    if (!flag[b]) continue;\n"
      "    i64 lo = g * S, hi = lo + S < len ? lo + S : len;\n"
      "    float M[%d], cc[%d], nM[%d], nc[%d];\n"
      "    for (int q = 0; q < n * n; q++) M[q] = q / n == q %% n ? 1.0f : 0.0f;\n"
      "    for (int k = 0; k < n; k++) cc[k] = 0.0f;\n"
      "    for (i64 tau = lo; tau < hi; tau++) {\n"
      "      i64 at = SEQ_NT_ROW(b, len, tau) * w + i;\n"
      "      for (int k = 0; k < n; k++) {\n"
      "        float acc = SEQ_NT_PTR(%d, k)[at];\n"
      "        for (int j = 0; j < n; j++)\n"
      "          acc += SEQ_NT_PTR(%d, k * n + j)[at] * (cc[j] - SEQ_NT_PTR(%d, j)[at]);\n"
      "        nc[k] = acc;\n"
      "        for (int q = 0; q < n; q++) {\n"
      "          float m = 0.0f;\n"
      "          for (int j = 0; j < n; j++) m += SEQ_NT_PTR(%d, k * n + j)[at] * M[j * n + q];\n"
      "          nM[k * n + q] = m;\n"
      "        }\n"
      "      }\n"
      "      for (int q = 0; q < n * n; q++) M[q] = nM[q];\n"
      "      for (int k = 0; k < n; k++) cc[k] = nc[k];\n"
      "    }\n"
      "    float *out = seg + e * nm;\n"
      "    for (int q = 0; q < n * n; q++) out[q] = M[q];\n"
      "    for (int k = 0; k < n; k++) out[n * n + k] = cc[k];\n"
      "  }\n"
      "}\n",
      RT_CU_NT_MAX_STATES * RT_CU_NT_MAX_STATES, RT_CU_NT_MAX_STATES,
      RT_CU_NT_MAX_STATES * RT_CU_NT_MAX_STATES, RT_CU_NT_MAX_STATES, RT_CU_NF_F, RT_CU_NF_J,
      RT_CU_NF_P, RT_CU_NF_J);
  nt_begin(c, nt_names[RT_CU_NT_K_SEG_CARRY]);
  fprintf(o, seg_begin, RT_CU_NF_FLAG, RT_CU_NF_NSEG, RT_CU_NF_SEG);
  fprintf(o,
          "  for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < B * w;\n"
          "       e += (i64)gridDim.x * blockDim.x) {\n"
          "    i64 b = e / w, i = e %% w, len = SEQ_LEN(b);\n"
          "    if (!flag[b]) continue;\n"
          "    float x[%d], nx[%d];\n"
          "    for (int k = 0; k < n; k++) x[k] = SEQ_NT_PTR(%d, k)[b * N[%d + k] + i];\n"
          "    for (i64 g = 0; g < G && g * S < len; g++) {\n"
          "      i64 at = (b * G + g) * w + i;\n"
          "      const float *m = seg + at * nm;\n"
          "      for (int k = 0; k < n; k++) {\n"
          "        start[at * n + k] = x[k];\n"
          "        float acc = m[n * n + k];\n"
          "        for (int j = 0; j < n; j++) acc += m[k * n + j] * x[j];\n"
          "        nx[k] = acc;\n"
          "      }\n"
          "      for (int k = 0; k < n; k++) x[k] = nx[k];\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NT_MAX_STATES, RT_CU_NT_MAX_STATES, RT_CU_NF_H0, RT_CU_NF_H0S);
  nt_begin(c, nt_names[RT_CU_NT_K_LINEAR]);
  fprintf(o, seg_begin, RT_CU_NF_FLAG, RT_CU_NF_NSEG, RT_CU_NF_SEG);
  fprintf(o,
          "  for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < B * G * w;\n"
          "       e += (i64)gridDim.x * blockDim.x) {\n"
          "    i64 b = e / (G * w), g = (e / w) %% G, i = e %% w, len = SEQ_LEN(b);\n"
          "    if (!flag[b]) continue;\n"
          "    i64 lo = g * S, hi = lo + S < len ? lo + S : len;\n"
          "    float prev[%d], v[%d];\n"
          "    for (int k = 0; k < n; k++)\n"
          "      prev[k] = G < 2 ? SEQ_NT_PTR(%d, k)[b * N[%d + k] + i] : start[e * n + k];\n"
          "    for (i64 tau = lo; tau < hi; tau++) {\n"
          "      i64 at = SEQ_NT_ROW(b, len, tau) * w + i;\n"
          "      for (int k = 0; k < n; k++) {\n"
          "        float acc = SEQ_NT_PTR(%d, k)[at];\n"
          "        for (int j = 0; j < n; j++)\n"
          "          acc += SEQ_NT_PTR(%d, k * n + j)[at] * (prev[j] - SEQ_NT_PTR(%d, j)[at]);\n"
          "        v[k] = acc;\n"
          "      }\n"
          "      for (int k = 0; k < n; k++) {\n"
          "        SEQ_NT_PTR(%d, k)[at] = v[k];\n"
          "        prev[k] = v[k];\n"
          "      }\n"
          "    }\n"
          "  }\n"
          "}\n",
          RT_CU_NT_MAX_STATES, RT_CU_NT_MAX_STATES, RT_CU_NF_H0, RT_CU_NF_H0S, RT_CU_NF_F,
          RT_CU_NF_J, RT_CU_NF_P, RT_CU_NF_D);
}

void cu_newton(Cu *c, IrRef r) {
  const IrNode *nd = &c->fn->nodes.v[r];
  const SchedValue *v = &c->v[r];
  const IrNewton *nw = &c->fn->layers.v[nd->index].newton;
  int ci = c->in->layers[nd->index];
  const IrFunc *step = c->s->insts.v[ci].fn;
  int n = nw->states, m = nd->nargs - n;
  if (n > RT_CU_NT_MAX_STATES || m < 0 || m > RT_CU_NT_MAX_INPUTS ||
      step->inputs.n != m + n * (nw->dense ? 2 : 1)) {
    cu_unsupported(c, r, "a Newton layer of this many states and inputs");
    return;
  }
  if (!c->nt_kernel) {
    c->nt_kernel = c->kernels.n + 1;
    for (int k = 0; k < RT_CU_NT_NKERNELS; k++)
      if (vec_push(c->a, &c->kernels, nt_names[k])) c->failed = 1;
    nt_kernels(c);
    nt_seg_kernels(c);
  }
  RtCuStep st = {0};
  RtCuNewton *nt = arena_calloc(c->a, 1, sizeof *nt);
  st.kind = RT_CU_STEP_NEWTON;
  st.inst = ci;
  st.reverse = c->fn->layers.v[nd->index].reverse;
  st.args = arena_calloc(c->a, (size_t)m + 1, sizeof *st.args);
  st.outs = arena_calloc(c->a, (size_t)n + 1, sizeof *st.outs);
  if (!nt || !st.args || !st.outs) {
    c->failed = 1;
    return;
  }
  nt->in_rows = arena_calloc(c->a, (size_t)m + 1, sizeof *nt->in_rows);
  nt->in_floats = arena_calloc(c->a, (size_t)m + 1, sizeof *nt->in_floats);
  if (!nt->in_rows || !nt->in_floats) {
    c->failed = 1;
    return;
  }
  st.newton = nt;
  nt->n = n;
  nt->dense = nw->dense;
  nt->max_iter = nw->max_iter;
  nt->rtol = (float)nw->rtol;
  nt->atol = (float)nw->atol;
  nt->w = sched_row_floats(v);
  nt->kernel = c->nt_kernel - 1;
  /* A chunked instance's rows are its steps in order (one chunk here). */
  nt->ordered = c->in->chunked;
  for (int j = 0; j < m; j++) {
    st.args[j] = cu_call_arg(c, r, j);
    nt->in_rows[j] = step->inputs.v[j].context ? RT_CU_ROWS_B : RT_CU_ROWS_BT;
    nt->in_floats[j] = sched_row_floats(&c->v[nd->args[j]]);
  }
  for (int k = 0; k < n; k++) {
    IrRef h0 = nd->args[m + k];
    st.outs[k] = v->call_out[k];
    nt->h0[k] = cu_arg_of(c, h0);
    nt->h0_per_example[k] = cu_per_example(&c->v[h0]);
    if (sched_row_floats(&c->v[h0]) != nt->w || c->v[h0].cls == SCHED_TOKEN) {
      cu_unsupported(c, r, "a Newton layer whose initial value is not one row per example");
      return;
    }
  }
  if (vec_push(c->a, &c->steps, st)) c->failed = 1;
}
