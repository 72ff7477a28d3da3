/* attn.c - causal softmax attention on the GPU (sched/attn.c): a block per
 * (example, head); its threads take the example's queries in rounds of one
 * per thread, and for each round the block walks the keys the round needs
 * in tiles loaded into shared memory, every thread keeping the online
 * softmax of its query (running maximum, sum and weighted values, in
 * registers) as the CPU kernel does (docs/algorithms.md, section 8). Output
 * columns go in groups of at most VC, each group one more pass over the
 * keys, so the accumulator stays in registers for any V. Plain fp32, no
 * tensor cores yet. */
#include "cudagen/cu.h"

/* Output columns per pass, and the floats of shared memory the key and
 * value tiles may take. */
enum { VC = 32, TILE_FLOATS = 4096 };

void cu_attn(Cu *c, const SchedOp *op) {
  const SchedAttn *at = op->attn;
  long long H = at->heads, K = at->K, V = at->V;
  if (H < 1 || V < 1) return;
  long long vc = V < VC ? V : VC;
  long long tj = TILE_FLOATS / (K + vc > 0 ? K + vc : 1);
  if (tj < 1) tj = 1;
  if (tj > CU_NT) tj = CU_NT;
  const char *ldq, *ldk, *ldv, *ldo;
  const char *q = cu_seq_operand(c, at->q, &ldq), *k = cu_seq_operand(c, at->k, &ldk);
  const char *v = cu_seq_operand(c, at->v, &ldv), *o = cu_seq_operand(c, op->node, &ldo);
  cu_kernel_begin(c, "attn", RT_CU_GRID_B, H, 1);
  fprintf(c->o,
          "  __shared__ float ks[%lld], vs[%lld];\n"
          "  const float scale = %.9g;\n"
          "  for (i64 item = blockIdx.x; item < B * %lld; item += gridDim.x) {\n"
          "    i64 b = item / %lld, h = item %% %lld, len = SEQ_LEN(b);\n"
          "    i64 t0 = rev && len > 0 ? len - 1 : 0, dir = rev ? -1 : 1;\n"
          "    (void)t0; (void)dir;\n"
          "    const float *q = %s + h * %lld, *k = %s + h * %lld, *v = %s + h * %lld;\n"
          "    float *o = %s + h * %lld;\n"
          "    const i64 ldq = %s, ldk = %s, ldv = %s, ldo = %s;\n",
          tj * (K > 0 ? K : 1), tj * vc, at->scale, H, H, H, q, K, k, K, v, V, o, V, ldq, ldk, ldv,
          ldo);
  fprintf(
      c->o,
      "    for (i64 r0 = 0; r0 < len; r0 += blockDim.x) {\n"
      "      const i64 t = r0 + threadIdx.x;\n"
      "      const int live = t < len;\n"
      "      const i64 jend = len < r0 + (i64)blockDim.x ? len : r0 + (i64)blockDim.x;\n"
      "      for (i64 a0 = 0; a0 < %lld; a0 += %lld) {\n"
      "        const int na = (int)(%lld - a0 < %lld ? %lld - a0 : %lld);\n"
      "        float m = -SEQ_INF, l = 0.0f, acc[%lld];\n"
      "        for (int a = 0; a < %lld; a++) acc[a] = 0.0f;\n"
      "        for (i64 j0 = 0; j0 < jend; j0 += %lld) {\n"
      "          const int nj = (int)(jend - j0 < %lld ? jend - j0 : %lld);\n"
      "          __syncthreads();\n"
      "          SEQ_FOR(e, nj * %lld) ks[e] = k[(j0 + e / %lld) * ldk + e %% %lld];\n"
      "          SEQ_FOR(e, nj * na) vs[e] = v[(j0 + e / na) * ldv + a0 + e %% na];\n"
      "          __syncthreads();\n"
      "          if (!live) continue;\n"
      "          const float *qt = q + t * ldq;\n"
      "          for (int j = 0; j < nj && j0 + j <= t; j++) {\n"
      "            float s = 0.0f;\n"
      "            for (int e = 0; e < %lld; e++) s += qt[e] * ks[j * %lld + e];\n"
      "            s *= scale;\n"
      "            const float mn = fmaxf(m, s);\n"
      "            const float alpha = m == -SEQ_INF ? 0.0f : expf(m - mn);\n"
      "            const float p = expf(s - mn);\n"
      "            for (int a = 0; a < na; a++) acc[a] = acc[a] * alpha + p * vs[j * na + a];\n"
      "            l = l * alpha + p;\n"
      "            m = mn;\n"
      "          }\n"
      "        }\n"
      "        if (live)\n"
      "          for (int a = 0; a < na; a++) o[t * ldo + a0 + a] = l > 0.0f ? acc[a] / l : 0.0f;\n"
      "      }\n"
      "    }\n"
      "  }\n",
      V, vc, V, vc, V, vc, vc, vc, tj, tj, tj, K, K > 0 ? K : 1, K > 0 ? K : 1, K, K > 0 ? K : 1);
  cu_kernel_end(c);
}
