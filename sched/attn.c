/* attn.c - how causal softmax attention runs (the IR's attn): per example
 * and head, one call of the runtime's tiled kernel (rt_cpu_attention) over
 * the sequence in the direction the instance runs, with its scratch. The
 * operands are whole-sequence values, so a model with attention does not
 * run in time chunks (plan_model_chunks). */
#include "sched/sched_internal.h"

#include "runtime/rt_cpu.h"

#include <math.h>

int plan_attns(Plan *p) {
  const IrFunc *fn = p->fn;
  p->in->attns = arena_calloc(p->a, (size_t)fn->nodes.n + 1, sizeof *p->in->attns);
  if (!p->in->attns) return -1;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    if (nd->op != IR_ATTN) continue;
    if (fn->kind != IR_FN_MODEL) {
      plan_unsupported(p, nd->loc, "causal_attention inside a cell step");
      return -1;
    }
    SchedAttn *at = arena_calloc(p->a, 1, sizeof *at);
    if (!at) return -1;
    const SchedValue *q = &p->v[nd->args[0]], *v = &p->v[nd->args[2]];
    at->q = nd->args[0];
    at->k = nd->args[1];
    at->v = nd->args[2];
    at->K = q->rank ? q->shape[q->rank - 1] : 1;
    at->V = v->rank ? v->shape[v->rank - 1] : 1;
    at->heads = at->V ? v->numel / at->V : 0;
    at->scale = nd->index ? nd->cval : at->K > 0 ? 1.0 / sqrt((double)at->K) : 1.0;
    at->work_head = rt_cpu_attention_work(at->K, at->V);
    if (at->heads > 0 && at->V > 0 &&
        (at->work_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_B, at->heads * at->work_head, 0,
                                      r, 0)) < 0)
      return -1;
    p->in->attns[r] = at;
  }
  return 0;
}
