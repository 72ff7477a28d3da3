/* chunk.c - how a matrix state's chunked form runs (passes/chunk.c made its
 * linattn, delta, dplr or plstm ops): per example, the runtime's chunkwise
 * kernel (rt_cpu_linattn, runtime/cpu_linattn.c; rt_cpu_delta,
 * runtime/cpu_delta.c for the delta rule; rt_cpu_dplr, runtime/cpu_dplr.c
 * for the generalized one; rt_cpu_plstm, runtime/cpu_plstm.c for a small
 * dense transition) over the sequence or the time chunk, once per
 * readout. The state S_t is never formed per token: the kernel keeps one
 * state per example, starting from the state's storage and leaving the
 * final state there, so linattn_state (whose value only matters at the last
 * step) is not computed as a node at all.
 *
 * Members of a state's form: its readouts (stored per token), its
 * linattn_state and a transpose of it that is the state's next value (for a
 * state laid out [L..., K, V]), and the transpose of the state that feeds
 * the kernel then. The stage runs where its last member is in node order.
 */
#include "sched/sched_internal.h"

#include <string.h>

#include "runtime/rt_cpu.h"

static int is_transpose_of_state(const IrFunc *fn, IrRef r, int *state) {
  const IrNode *n = &fn->nodes.v[r];
  if (n->op != IR_TRANSPOSE || fn->nodes.v[n->args[0]].op != IR_STATE) return 0;
  *state = fn->nodes.v[n->args[0]].index;
  return 1;
}

/* A chunked form's ops: linattn (q, k, v, lg, S0), delta (q, k, v, beta,
 * lg, S0), dplr (q, lw, a, b, v, k, S0) and plstm (q, m, tr, s, v, k, S0),
 * and their _state forms without q (and m). */
static int is_form_op(IrOp op) {
  return op == IR_LINATTN || op == IR_LINATTN_STATE || op == IR_DELTA || op == IR_DELTA_STATE ||
         op == IR_DPLR || op == IR_DPLR_STATE || op == IR_PLSTM || op == IR_PLSTM_STATE;
}

static int is_readout(IrOp op) {
  return op == IR_LINATTN || op == IR_DELTA || op == IR_DPLR || op == IR_PLSTM;
}

static SchedChunkKind kind_of(IrOp op) {
  return op == IR_DELTA || op == IR_DELTA_STATE   ? SCHED_CHUNK_DELTA
         : op == IR_DPLR || op == IR_DPLR_STATE   ? SCHED_CHUNK_DPLR
         : op == IR_PLSTM || op == IR_PLSTM_STATE ? SCHED_CHUNK_PLSTM
                                                  : SCHED_CHUNK_LINATTN;
}

/* The S0 operand of a form op: the last. */
static IrRef s0_of(const IrNode *nd) {
  return nd->args[nd->nargs - 1];
}

/* The operands every call of a state's form shares, in the fields of la. */
static void shared_operands(const IrNode *nd, SchedLinattn *la) {
  la->kind = kind_of(nd->op);
  const IrRef *x = nd->args + (!is_readout(nd->op) ? 0 : la->kind == SCHED_CHUNK_PLSTM ? 2 : 1);
  la->beta = la->a = la->b = la->tr = la->src = IR_NONE;
  switch (la->kind) {
  case SCHED_CHUNK_LINATTN:
    la->k = x[0], la->v = x[1], la->lg = x[2];
    break;
  case SCHED_CHUNK_DELTA:
    la->k = x[0], la->v = x[1], la->beta = x[2], la->lg = x[3];
    break;
  case SCHED_CHUNK_DPLR:
    la->lg = x[0], la->a = x[1], la->b = x[2], la->v = x[3], la->k = x[4];
    break;
  case SCHED_CHUNK_PLSTM:
    la->tr = x[0], la->src = x[1], la->v = x[2], la->k = x[3], la->lg = IR_NONE;
    break;
  }
}

/* The state an S0 operand reads (the state itself, or its transpose). */
static int state_of(const IrFunc *fn, IrRef s0, int *transposed) {
  int s;
  *transposed = 0;
  if (fn->nodes.v[s0].op == IR_STATE) return fn->nodes.v[s0].index;
  if (is_transpose_of_state(fn, s0, &s)) {
    *transposed = 1;
    return s;
  }
  return -1;
}

static int is_const_zero(const IrFunc *fn, IrRef r) {
  while (fn->nodes.v[r].op == IR_BROADCAST || fn->nodes.v[r].op == IR_RESHAPE)
    r = fn->nodes.v[r].args[0];
  return fn->nodes.v[r].op == IR_CONST && fn->nodes.v[r].cval == 0.0;
}

int plan_linattns(Plan *p) {
  const IrFunc *fn = p->fn;
  int n = fn->nodes.n;
  p->in->linattns = arena_calloc(p->a, (size_t)n + 1, sizeof *p->in->linattns);
  if (!p->in->linattns) return -1;
  if (fn->kind != IR_FN_MODEL || fn->states.n == 0) return 0;
  for (int s = 0; s < fn->states.n; s++) {
    SchedLinattn *la = NULL;
    IrRef last = IR_NONE;
    for (IrRef r = 0; r < n; r++) {
      const IrNode *nd = &fn->nodes.v[r];
      if (!is_form_op(nd->op)) continue;
      int tr;
      if (state_of(fn, s0_of(nd), &tr) != s) continue;
      SchedLinattn ops;
      shared_operands(nd, &ops);
      int delta = ops.kind == SCHED_CHUNK_DELTA;
      if (!la) {
        if (!(la = arena_calloc(p->a, 1, sizeof *la)) ||
            !(la->reads = arena_calloc(p->a, (size_t)n + 1, sizeof *la->reads)))
          return -1;
        la->state = s;
        la->transposed = tr;
        la->final = IR_NONE;
        shared_operands(nd, la);
        /* (dplr's kernel always reads its decays; plstm has none.) */
        int plstm = la->kind == SCHED_CHUNK_PLSTM;
        la->no_gate = plstm || (la->kind != SCHED_CHUNK_DPLR && is_const_zero(fn, la->lg));
        const SchedValue *sv = &p->v[s0_of(nd)];
        int L = sv->rank - 2;
        la->J = plstm ? sv->shape[L - 1] : 1;
        la->V = sv->shape[L];
        la->K = sv->shape[L + 1];
        la->heads = la->J && la->V && la->K ? sv->numel / (la->J * la->V * la->K) : 0;
        /* The delta rule: k [R, L..., K], one gate per head. */
        la->R = delta ? p->v[la->k].shape[0] : 1;
        la->Kg = delta || plstm ? 1 : p->v[la->lg].shape[L];
        /* The delta kernel's default counts rank-one factors: 16 / R tokens. */
        la->chunk = p->s->kernel_chunk > 0 ? p->s->kernel_chunk
                    : delta ? (RT_CPU_DELTA_CHUNK / la->R > 0 ? RT_CPU_DELTA_CHUNK / la->R : 1)
                    : la->kind == SCHED_CHUNK_DPLR  ? RT_CPU_DPLR_CHUNK
                    : la->kind == SCHED_CHUNK_PLSTM ? RT_CPU_PLSTM_CHUNK
                                                    : RT_CPU_LINATTN_CHUNK;
        la->work_buf = la->copy_buf = la->split_buf = -1;
      } else if (ops.kind != la->kind || ops.k != la->k || ops.v != la->v || ops.lg != la->lg ||
                 ops.beta != la->beta || ops.a != la->a || ops.b != la->b || ops.tr != la->tr ||
                 ops.src != la->src || tr != la->transposed) {
        plan_unsupported(p, nd->loc, "two chunked forms of one state with different operands");
        return -1;
      }
      /* The stage runs at its last readout (its outputs are read after
       * it); the final state is read only as the state's next value, at the
       * end, so it does not move the stage. */
      if (is_readout(nd->op)) {
        la->reads[la->nreads++] = r;
        last = r;
      } else {
        la->final = r;
        if (la->nreads == 0) last = r;
      }
    }
    if (!la) continue;
    /* The final state is computed at the end only: nothing may read it per
     * token (passes/chunk.c never builds that). */
    for (int i = 0; i < fn->outputs.n && la->final != IR_NONE; i++)
      if (fn->outputs.v[i].value == la->final) {
        plan_unsupported(p, fn->states.v[s].loc, "an output that is a chunked state itself");
        return -1;
      }
    /* The state's next value is the final state, or its transpose. */
    IrRef nx = fn->states.v[s].next;
    if (nx != la->final && !(fn->nodes.v[nx].op == IR_TRANSPOSE &&
                             fn->nodes.v[nx].args[0] == la->final && la->transposed)) {
      plan_unsupported(p, fn->states.v[s].loc,
                       "a chunked state whose next value is not its form's");
      return -1;
    }
    /* Members: the readouts (stored per token), the final state and its
     * transpose (the storage holds them), the transposed initial state
     * (the kernel reads the storage). */
    for (IrRef r = 0; r < n; r++) {
      const IrNode *nd = &fn->nodes.v[r];
      int st, tr, member = 0;
      if (is_form_op(nd->op))
        member = state_of(fn, s0_of(nd), &tr) == s;
      else if (is_transpose_of_state(fn, r, &st))
        member = st == s;
      else
        member = r == nx;
      if (member) p->v[r].group = last;
    }
    for (int i = 0; i < la->nreads; i++) p->v[la->reads[i]].stored = 1;
    if (la->transposed && la->nreads > 1) {
      plan_unsupported(p, fn->states.v[s].loc,
                       "several readouts of a chunked state laid out [..., K, V]");
      return -1;
    }
    p->in->linattns[last] = la;
  }
  return 0;
}

/* The scratch the state's kernel needs for `heads` heads. */
static int64_t kernel_work(const SchedLinattn *la, int64_t heads) {
  switch (la->kind) {
  case SCHED_CHUNK_DELTA:
    return rt_cpu_delta_work(heads, la->K, la->V, la->R, la->chunk);
  case SCHED_CHUNK_DPLR:
    return rt_cpu_dplr_work(heads, la->K, la->V, la->chunk);
  case SCHED_CHUNK_PLSTM:
    return rt_cpu_plstm_work(heads, la->J, la->K, la->V, la->chunk);
  case SCHED_CHUNK_LINATTN:
    break;
  }
  return rt_cpu_linattn_work(heads, la->K, la->V, la->Kg, la->chunk);
}

int place_linattn_buffers(Plan *p) {
  for (IrRef r = 0; r < p->fn->nodes.n; r++) {
    SchedLinattn *la = p->in->linattns[r];
    if (!la) continue;
    /* The kernel's scratch per example: one call over all heads, or (with
     * spare threads, codegen decides) one call per head at once. */
    int64_t work = kernel_work(la, la->heads);
    la->work_head = kernel_work(la, 1);
    if (work <= 0 || la->work_head <= 0) {
      plan_unsupported(p, p->fn->nodes.v[r].loc, "a chunked state of these sizes");
      return -1;
    }
    la->work_floats = work > la->heads * la->work_head ? work : la->heads * la->work_head;
    if ((la->work_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_B, la->work_floats, 1, r, 0)) <
        0)
      return -1;
    /* Every readout but the last starts from a copy of S0 (the last one,
     * or the state-only call, runs in the storage and leaves the final
     * state); a transposed state always works on a canonical copy. */
    if (la->nreads > 1 || la->transposed)
      if ((la->copy_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_B,
                                        la->heads * la->J * la->K * la->V, 0, r, 1)) < 0)
        return -1;
    if (!la->transposed && la->V >= 32 &&
        (la->split_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_ONE,
                                       SCHED_CHUNK_SLICES * la->work_head, 1, r, 3)) < 0)
      return -1;
  }
  return 0;
}
