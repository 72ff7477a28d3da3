/* plan.c - per-node decisions of the schedule: whether the backend can run
 * a node, its class (CONST, TOKEN, STEP), its concrete shape, whether a
 * matrix product is one GEMM over all rows, hoisting policy, use counts,
 * whether the time loop runs in chunks, and which nodes fuse into one
 * element loop.
 */
#include "sched/sched_internal.h"

#include <string.h>

#include "runtime/rt_cpu.h"

void plan_unsupported(Plan *p, SrcLoc loc, const char *what) {
  diag_error(p->de, loc, "the CPU backend does not support %s", what);
  p->failed = 1;
}

/* ---- shapes ------------------------------------------------------------------ */

int plan_eval_type(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, int *rank, int64_t *shape,
                   int64_t *numel) {
  *rank = t.rank;
  int64_t n = 1;
  for (int i = 0; i < t.rank; i++) {
    if (dim_eval(t.dims[i], in->dims, &shape[i]) != 0) {
      diag_error(p->de, loc,
                 "a dimension of this value is negative or too large with the given dims");
      p->failed = 1;
      return -1;
    }
    if (shape[i] != 0 && n > SCHED_LIMIT_ELEMS / shape[i]) {
      diag_error(p->de, loc, "this value has more than 2^40 elements");
      p->failed = 1;
      return -1;
    }
    n *= shape[i];
  }
  *numel = n;
  return 0;
}

int plan_interface_type(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, AbiTensor *ct) {
  if (plan_eval_type(p, in, t, loc, &ct->ndim, ct->shape, &ct->numel)) return -1;
  if (t.elem != IR_COMPLEX) return 0;
  if (ct->ndim >= SEQ_MAX_RANK) {
    plan_unsupported(p, loc, "a complex value of the largest rank");
    return -1;
  }
  ct->shape[ct->ndim++] = 2;
  ct->numel *= 2;
  ct->is_complex = 1;
  return 0;
}

int plan_type_floats(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, int64_t *out) {
  AbiTensor ct = {0};
  if (plan_interface_type(p, in, t, loc, &ct)) return -1;
  *out = ct.numel;
  return 0;
}

int64_t sched_row_floats(const SchedValue *v) {
  return v->numel * v->w;
}

int sched_is_view(IrOp op) {
  return op == IR_PARAM || op == IR_INPUT || op == IR_STATE || op == IR_RESHAPE || op == IR_RESULT;
}

void sched_axis_split(const SchedValue *v, int axis, int64_t *outer, int64_t *len, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int d = 0; d < axis; d++) *outer *= v->shape[d];
  *len = v->shape[axis];
  for (int d = axis + 1; d < v->rank; d++) *inner *= v->shape[d];
}

int64_t sched_packed_floats(const SchedValue *v) {
  return (v->gemm_n + RT_CPU_PACK_NR - 1) / RT_CPU_PACK_NR * RT_CPU_PACK_NR * v->gemm_k;
}

int sched_state_alias(const IrFunc *fn, IrRef r) {
  while (r >= 0 && fn->nodes.v[r].op == IR_RESHAPE) r = fn->nodes.v[r].args[0];
  return r >= 0 && fn->nodes.v[r].op == IR_STATE ? fn->nodes.v[r].index : -1;
}

/* ---- what the backend runs ------------------------------------------------ */

/* The complex ops the std SSMs (LRU, S4D, S5) need, and their neighbours. */
int sched_complex_op_ok(IrOp op) {
  switch (op) {
  case IR_NEG:
  case IR_EXP:
  case IR_LOG:
  case IR_ABS:
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
  case IR_CPLX:
  case IR_ADD:
  case IR_SUB:
  case IR_MUL:
  case IR_DIV:
  case IR_BROADCAST:
    return 1;
  default:
    return 0;
  }
}

/* Complex values: elementwise ops with a complex form, data movement, sums
 * and matrix products; not norms, softmax, min/max or convolutions. */
static int complex_supported(Plan *p, const IrNode *nd) {
  int any = nd->type.elem == IR_COMPLEX;
  for (int j = 0; j < nd->nargs; j++) any |= p->fn->nodes.v[nd->args[j]].type.elem == IR_COMPLEX;
  if (!any) return 1;
  switch (nd->op) {
  case IR_PARAM:
  case IR_INPUT:
  case IR_STATE:
  case IR_RESHAPE:
  case IR_RESULT:
  case IR_CALL:
  case IR_TRANSPOSE:
  case IR_DIAG:
  case IR_SLICE:
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN:
  case IR_MATMUL:
  case IR_OUTER:
    return 1;
  case IR_CONCAT:
    for (int j = 0; j < nd->nargs; j++)
      if (p->fn->nodes.v[nd->args[j]].type.elem != nd->type.elem) {
        plan_unsupported(p, nd->loc, "concatenating real and complex values");
        return 0;
      }
    return 1;
  default:
    if (sched_complex_op_ok(nd->op)) return 1;
    diag_error(p->de, nd->loc, "the CPU backend does not support %s of complex values",
               ir_op_info[nd->op].text);
    p->failed = 1;
    return 0;
  }
}

/* The sequence ops of a cell's parallel form (passes/scan.c). */
static int is_seq_op(IrOp op) {
  return op == IR_SCAN || op == IR_SCAN_MAX || op == IR_DELAY || op == IR_WINDOW || op == IR_ATTN;
}

static int supported(Plan *p, const IrNode *nd) {
  if (is_seq_op(nd->op)) return 1;
  if (!complex_supported(p, nd)) return 0;
  if (nd->op == IR_CAUSAL_CONV) {
    if (p->fn->kind == IR_FN_CELL) {
      plan_unsupported(p, nd->loc, "causal_conv inside a cell step");
      return 0;
    }
    return 1;
  }
  if (nd->type.elem == IR_INT && nd->op != IR_INPUT) {
    plan_unsupported(p, nd->loc, "integer arithmetic");
    return 0;
  }
  for (int j = 0; j < nd->nargs; j++) {
    const IrNode *a = &p->fn->nodes.v[nd->args[j]];
    if (a->type.elem == IR_INT && !(nd->op == IR_GATHER && j == 1) && nd->op != IR_CALL) {
      plan_unsupported(p, nd->loc, "integer tokens outside an embedding lookup");
      return 0;
    }
  }
  return 1;
}

/* ---- GEMMs ------------------------------------------------------------------------ */

/* A MATMUL becomes one runtime GEMM over all rows of its class when the
 * per-row operand has the node's class (its rows are contiguous) and the
 * other operand is a constant matrix. */
static void plan_gemm(Plan *p, IrRef r) {
  const IrNode *nd = &p->fn->nodes.v[r];
  SchedValue *n = &p->v[r];
  if (nd->op != IR_MATMUL || n->cls == SCHED_CONST) return;
  SchedValue *x = &p->v[nd->args[0]], *y = &p->v[nd->args[1]];
  /* A complex constant matrix times a vector (LRU's B x, S5's C s): a
   * complex product is a real one with the real form of W, [2N, K] for a
   * real vector (rows re, im of each output) or [2N, 2K] for a complex one
   * (the 2x2 blocks [re -im; im re]), on interleaved (re, im) floats. */
  if (n->w == 2 && x->w == 2 && x->cls == SCHED_CONST && x->rank == 2 && y->cls == n->cls &&
      y->rank == 1) {
    n->gemm = SCHED_GEMM_WX;
    n->cgemm = 1;
    n->gemm_k = x->shape[1] * y->w;
    n->gemm_n = x->shape[0] * 2;
    return;
  }
  if (n->w != 1 || x->w != 1 || y->w != 1) return; /* other complex products: per row */
  if (x->cls == SCHED_CONST && x->rank == 2 && y->cls == n->cls && y->rank == 1) {
    n->gemm = SCHED_GEMM_WX;
    n->gemm_k = x->shape[1];
    n->gemm_n = x->shape[0];
  } else if (y->cls == SCHED_CONST && y->rank == 2 && x->cls == n->cls) {
    n->gemm = SCHED_GEMM_XW;
    n->gemm_k = y->shape[0];
    n->gemm_n = y->shape[1];
  }
}

/* ---- hoisting policy -------------------------------------------------------- */

static void count_uses(Plan *p) {
  const IrFunc *fn = p->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    for (int j = 0; j < fn->nodes.v[r].nargs; j++) p->v[fn->nodes.v[r].args[j]].uses++;
  for (int i = 0; i < fn->states.n; i++) {
    if (fn->states.v[i].init >= 0) p->v[fn->states.v[i].init].uses++;
    if (fn->states.v[i].next >= 0) p->v[fn->states.v[i].next].uses++;
  }
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value >= 0) p->v[fn->outputs.v[i].value].uses++;
}

/* Computing a TOKEN node for all tokens before the time loop pays for
 * matrix products (one GEMM over many rows instead of a small one per
 * step), but an elementwise node whose row is much larger than the
 * per-token rows it reads (S4D's dB * x[:, None], [H, N] complex per [H]
 * token) would only write out a huge buffer (B*T rows) for the loop to read
 * back once. Such nodes, when no hoisted GEMM needs them, are computed in
 * the time loop from the token's inputs instead (class STEP), and so is
 * everything downstream of them. */
#define EXPANSION_RATIO 4

/* A contiguous slice of a token row read only inside the time loop (GRU's
 * three input gates): hoisted it would be a copy written and read back; in
 * the loop it is a load at an offset inside the step's fused element loop. */
static int step_only_slice(const Plan *p, IrRef r) {
  const IrFunc *fn = p->fn;
  const IrNode *nd = &fn->nodes.v[r];
  if (nd->op != IR_SLICE && nd->op != IR_INDEX) return 0;
  int64_t outer, len, inner;
  sched_axis_split(&p->v[nd->args[0]], nd->axis, &outer, &len, &inner);
  if (outer != 1) return 0;
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value == r) return 0;
  for (int i = 0; i < fn->states.n; i++)
    if (fn->states.v[i].next == r || fn->states.v[i].init == r) return 0;
  int users = 0;
  for (IrRef q = r + 1; q < fn->nodes.n; q++)
    for (int j = 0; j < fn->nodes.v[q].nargs; j++)
      if (fn->nodes.v[q].args[j] == r) {
        if (p->v[q].cls != SCHED_STEP) return 0;
        users++;
      }
  return users > 0;
}

static int demote_expansions(Plan *p) {
  const IrFunc *fn = p->fn;
  if (fn->kind != IR_FN_CELL || fn->states.n == 0) return 0;
  char *feeds = arena_calloc(p->a, (size_t)fn->nodes.n + 1, 1);
  if (!feeds) return -1;
  /* feeds[r]: r is, or is read by, a TOKEN node that must stay hoisted. */
  for (IrRef r = fn->nodes.n - 1; r >= 0; r--) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    if (n->cls != SCHED_TOKEN) continue;
    if (n->gemm || nd->op == IR_CALL || nd->op == IR_CAUSAL_CONV || is_seq_op(nd->op)) feeds[r] = 1;
    if (feeds[r])
      for (int j = 0; j < nd->nargs; j++) feeds[nd->args[j]] = 1;
  }
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    if (n->cls != SCHED_TOKEN) continue;
    int64_t in = 0;
    int after_demoted = 0;
    for (int j = 0; j < nd->nargs; j++) {
      const SchedValue *a = &p->v[nd->args[j]];
      after_demoted |= a->cls == SCHED_STEP;
      if (a->cls == SCHED_TOKEN) in += sched_row_floats(a);
    }
    int ew = (ir_op_info[nd->op].flags & IRF_EW) || nd->op == IR_BROADCAST || nd->op == IR_OUTER;
    if (after_demoted ||
        (!feeds[r] && ew && !sched_is_view(nd->op) &&
         sched_row_floats(n) >= EXPANSION_RATIO * in) ||
        (!feeds[r] && step_only_slice(p, r)))
      n->cls = SCHED_STEP;
  }
  return 0;
}

/* Whether this cell's time loop runs in chunks (a cell with states whose
 * TOKEN nodes need no whole sequence: no layer calls, no convolutions, and
 * constant initial states), and which buffers then hold one chunk's rows. */
static void plan_chunks(Plan *p) {
  const IrFunc *fn = p->fn;
  SchedInst *in = p->in;
  in->chunked = 0;
  in->chunk_floats = 0;
  if (fn->kind != IR_FN_CELL || fn->states.n == 0) return;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    if (fn->nodes.v[r].op == IR_CALL || fn->nodes.v[r].op == IR_CAUSAL_CONV) return;
  for (int s = 0; s < fn->states.n; s++)
    if (fn->states.v[s].init >= 0 && p->v[fn->states.v[s].init].cls != SCHED_CONST) return;
  int64_t floats = 0;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    if (n->cls != SCHED_TOKEN) continue;
    if (nd->op == IR_RESHAPE) {
      n->chunked = p->v[nd->args[0]].chunked;
    } else if (!sched_is_view(nd->op) && n->uses > 0) {
      n->chunked = 1;
      floats += sched_row_floats(n) + 16;
      if (n->gemm) /* room for a gathered operand */
        floats += sched_row_floats(&p->v[nd->args[n->gemm == SCHED_GEMM_WX ? 1 : 0]]) + 16;
    }
  }
  in->chunked = floats > 0;
  in->chunk_floats = floats;
}

/* Whether a cell's parallel form (a model) runs in time chunks too: its
 * recurrences are fused scans and chunked states that carry their running
 * value in the state's storage from one chunk to the next, or windows and
 * delays (a state that is its last step's value of something, as a token
 * shift) that read the storage as the value entering the chunk (updated at
 * the chunk's end). Then the whole-sequence intermediates (the projections, the
 * coefficients, the readouts) take one chunk's rows, which stay in cache,
 * instead of [B*T, ...] buffers in memory. A Newton solve runs chunk by
 * chunk from the values its states' storage holds (and writes each chunk's
 * last value there, as a window's state does), which bounds the memory of
 * its projections too; its chunks are long (or the windows it was given),
 * since each is a solve of its own. Needs: no other layer calls, no convolutions, no scan or delay
 * outside a fused group, and the states read only by their groups, windows
 * and solves. Runs after the groups are planned. */
#define MODEL_MIN_TC 16
#define MODEL_MIN_TC_LINATTN 64
#define MODEL_MIN_TC_LANES 64
#define MODEL_MIN_TC_NEWTON 4096

int plan_model_chunks(Plan *p) {
  const IrFunc *fn = p->fn;
  SchedInst *in = p->in;
  if (fn->kind != IR_FN_MODEL || fn->states.n == 0) return 0;
  int64_t kchunk = 0; /* the longest chunk of a chunked kernel here */
  int newton = 0;
  int64_t window = 0; /* the longest window a solve here was given */
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &p->v[r];
    /* A convolution over a window state's initial value reads that state's
     * storage, which holds the window entering each chunk. */
    int conv_window = nd->op == IR_CAUSAL_CONV && nd->nargs == 4;
    /* So does a Newton solve, for its states' initial values (its last
     * operands). */
    int solved = nd->op == IR_CALL ? fn->layers.v[nd->index].newton.states : 0;
    newton |= solved > 0;
    if (solved && fn->layers.v[nd->index].newton.window > window)
      window = fn->layers.v[nd->index].newton.window;
    if ((nd->op == IR_CALL && !solved) || (nd->op == IR_CAUSAL_CONV && !conv_window) ||
        nd->op == IR_ATTN)
      return 0;
    /* A state solved as the delay of its next values reads its storage,
     * which holds the value entering each chunk. */
    int delay_state = nd->op == IR_DELAY && fn->nodes.v[nd->args[1]].op == IR_STATE &&
                      fn->states.v[fn->nodes.v[nd->args[1]].index].next == nd->args[0];
    if ((nd->op == IR_SCAN || nd->op == IR_SCAN_MAX || nd->op == IR_DELAY) && n->group < 0 &&
        !delay_state)
      return 0;
    if (in->linattns[r] && in->linattns[r]->chunk > kchunk) kchunk = in->linattns[r]->chunk;
    for (int j = 0; j < nd->nargs; j++) {
      const IrNode *a = &fn->nodes.v[nd->args[j]];
      if (a->op == IR_STATE && n->group < 0 && !(nd->op == IR_WINDOW && j == 1) &&
          !(delay_state && j == 1) && !(conv_window && j == 3) &&
          !(solved && j >= nd->nargs - solved))
        return 0;
    }
  }
  for (int s = 0; s < fn->states.n; s++) {
    IrRef nx = fn->states.v[s].next;
    if (nx < 0 || (p->v[nx].group < 0 && p->v[nx].cls != SCHED_TOKEN)) return 0;
  }
  int64_t floats = 0;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    if (n->cls != SCHED_TOKEN) continue;
    if (nd->op == IR_RESHAPE || nd->op == IR_RESULT) {
      n->chunked = p->v[nd->args[0]].chunked;
    } else if (nd->op == IR_CALL) {
      /* A Newton solve's results, and its whole-sequence operands (inputs)
       * gathered for each chunk. */
      n->chunked = 1;
      floats += fn->layers.v[nd->index].newton.states * (sched_row_floats(n) + 16);
      for (int j = 0; j < nd->nargs; j++)
        if (plan_call_copies(p, nd, j, 1)) floats += sched_row_floats(&p->v[nd->args[j]]) + 16;
    } else if (!sched_is_view(nd->op) && n->uses > 0 && (n->group < 0 || n->stored)) {
      n->chunked = 1;
      floats += sched_row_floats(n) + 16;
      if (n->gemm) /* room for a gathered operand */
        floats += sched_row_floats(&p->v[nd->args[n->gemm == SCHED_GEMM_WX ? 1 : 0]]) + 16;
    }
  }
  in->chunked = floats > 0;
  in->chunk_floats = floats;
  /* A chunked kernel's own chunks are 16 tokens (or --chunk): a time chunk
   * of a few steps would pass the state through memory at every one. */
  in->min_tc = MODEL_MIN_TC;
  /* A rows-in-lanes scan copies its state in and out of each chunk: where
   * no GEMM's output wants the chunk short (the budget's reason), the
   * chunks are long enough to pay for that (S4D at B = 8: 97 ms at 30
   * steps, 88 at 64; the Mamba SSM, with its projections, 148 at 16 steps
   * and 167 at 64, BENCHMARKS.md). */
  int lanes = 0, gemms = 0;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    lanes |= p->in->groups[r] && p->in->groups[r]->lanes;
    gemms |= p->v[r].cls == SCHED_TOKEN && p->v[r].gemm && p->v[r].uses > 0;
  }
  if (lanes && !gemms) in->min_tc = MODEL_MIN_TC_LANES;
  if (kchunk) in->min_tc = 4 * kchunk > MODEL_MIN_TC_LINATTN ? 4 * kchunk : MODEL_MIN_TC_LINATTN;
  /* A solve's chunks are its windows when it was given some. */
  int64_t newton_tc = window ? window : MODEL_MIN_TC_NEWTON;
  if (newton && in->min_tc < newton_tc) in->min_tc = newton_tc;
  return 0;
}

int plan_call_copies(const Plan *p, const IrNode *call, int j, int chunked) {
  const IrFunc *callee = p->s->mod->funcs.v[p->fn->layers.v[call->index].callee];
  const SchedValue *a = &p->v[call->args[j]];
  if (j < callee->inputs.n && callee->inputs.v[j].context) return 0;
  /* Run over a context's positions, an argument's row per example is that
   * example's sequence, [N, ...] as the callee reads [B, T, ...]. */
  if (p->fn->layers.v[call->index].over) return 0;
  return a->cls == SCHED_CONST || a->cls == SCHED_EXAMPLE ||
         (chunked && a->cls == SCHED_TOKEN && !a->chunked);
}

int plan_values(Plan *p) {
  const IrFunc *fn = p->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    n->buf = n->pack_buf = n->creal_buf = n->gather_buf = n->prep = -1;
    if (!supported(p, nd)) return -1;
    for (int j = 0; j < nd->nargs; j++) {
      if (nd->args[j] < 0 || nd->args[j] >= r) {
        diag_internal(p->de, "schedule", "node %d has operand %d out of order", r, nd->args[j]);
        return -1;
      }
      if (p->v[nd->args[j]].cls > n->cls) n->cls = p->v[nd->args[j]].cls;
    }
    if (nd->op == IR_INPUT) n->cls = fn->inputs.v[nd->index].context ? SCHED_EXAMPLE : SCHED_TOKEN;
    if (nd->op == IR_CALL) /* run over a context's positions: once per example */
      n->cls = fn->layers.v[nd->index].over ? SCHED_EXAMPLE : SCHED_TOKEN;
    if (nd->op == IR_STATE) n->cls = SCHED_STEP;
    if ((nd->op == IR_CAUSAL_CONV || is_seq_op(nd->op)) && n->cls < SCHED_TOKEN)
      n->cls = SCHED_TOKEN;
    /* A model (a cell's parallel form) reads a state as one row per example
     * (the value entering the sequence); what it computes from it is per
     * token, read at that example's row. */
    if (fn->kind == IR_FN_MODEL && nd->op != IR_STATE && n->cls == SCHED_STEP) n->cls = SCHED_TOKEN;
    n->is_int = nd->type.elem == IR_INT;
    n->w = nd->type.elem == IR_COMPLEX ? 2 : 1;
    if (plan_eval_type(p, p->in, nd->type, nd->loc, &n->rank, n->shape, &n->numel)) return -1;
    /* Only now are the dims concrete: x[-5] on an axis of size 3 (or x[H-5]
     * with H = 3) is refused here, never read out of bounds. */
    if ((nd->op == IR_INDEX || nd->op == IR_SLICE) &&
        ir_check_index_bounds(fn, nd, p->in->dims, p->v[nd->args[0]].shape[nd->axis], p->de))
      return -1;
    plan_gemm(p, r);
  }
  if (demote_expansions(p)) return -1;
  count_uses(p);
  plan_chunks(p);
  return 0;
}

/* ---- fusion -------------------------------------------------------------------
 * Within a row, a run of elementwise nodes of one size N (and slices that are
 * a contiguous piece of their operand, such as LSTM's four gates) becomes one
 * loop over N elements instead of a loop per node: values pass between the
 * nodes in registers, and only those read outside the run are stored.
 * Complex values and operands broadcast to the run's shape (S4D's [H, N]
 * state update) fuse too. For LSTM that turns the 13 loops of the gate
 * nonlinearities and the state update into one. */

int sched_fused_readable(const SchedValue *a, const SchedValue *key, const SchedValue *n) {
  if (a->numel == key->numel || a->numel == 1) return 1;
  if (n->rank != key->rank || memcmp(n->shape, key->shape, sizeof(int64_t) * (size_t)n->rank))
    return 0;
  if (a->rank > key->rank) return 0;
  for (int d = 0; d < a->rank; d++) {
    int64_t s = a->shape[d], t = key->shape[key->rank - a->rank + d];
    if (s != t && s != 1) return 0;
  }
  return 1;
}

int sched_outer_fusable(const SchedValue *a, const SchedValue *b, const SchedValue *n,
                        const SchedValue *key) {
  return n->w == 1 && a->w == 1 && b->w == 1 && !a->is_int && !b->is_int && n->rank == 2 &&
         key->rank == 2 && key->shape[0] == n->shape[0] && key->shape[1] == n->shape[1] &&
         a->numel == n->shape[0] && b->numel == n->shape[1] && a->numel > 1 && b->numel > 1;
}

static int fusable(const Plan *p, SchedClass phase, IrRef r, const SchedValue *key) {
  const IrNode *nd = &p->fn->nodes.v[r];
  const SchedValue *n = &p->v[r];
  if (n->cls != phase || n->gemm || n->is_int || n->numel != key->numel || n->uses == 0 ||
      n->group >= 0 || n->folded)
    return 0;
  if (nd->op == IR_SLICE || nd->op == IR_INDEX) {
    const SchedValue *x = &p->v[nd->args[0]];
    int64_t outer, len, inner;
    if (n->w != 1 || x->w != 1 || x->is_int) return 0;
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
    return outer == 1;
  }
  if (nd->op == IR_OUTER)
    return sched_outer_fusable(&p->v[nd->args[0]], &p->v[nd->args[1]], n, key);
  if (!(ir_op_info[nd->op].flags & IRF_EW) && nd->op != IR_BROADCAST) return 0;
  if (nd->nargs < 1 || nd->nargs > 2) return 0;
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) {
    const SchedValue *a = &p->v[nd->args[j]];
    if (a->is_int || !sched_fused_readable(a, key, n)) return 0;
    cplx |= a->w == 2;
  }
  if (cplx) return sched_complex_op_ok(nd->op);
  return nd->op != IR_CPLX && nd->op != IR_RE && nd->op != IR_IM && nd->op != IR_CONJ;
}

int sched_window_last_only(const SchedInst *in, IrRef r) {
  const IrFunc *fn = in->fn;
  if (fn->nodes.v[r].op != IR_WINDOW || !fn->nodes.v[r].index || in->values[r].uses != 1) return 0;
  for (int s = 0; s < fn->states.n; s++)
    if (fn->states.v[s].next == r) return 1;
  return 0;
}

/* A product that only its sum over the last or the second-to-last axis
 * reads, in the step loop (LSSL's dA @ s, which passes/rewrite.c turns into
 * transpose(dA) [H, N, N] times s [H, N, 1] summed over axis 1): stored, it
 * is N times the state written and read back every step; folded into the
 * sum, each product is made where it is added. Real values, operands that a
 * fused loop over the product's shape can read. */
enum { ACROSS_BYTES = 32 * 1024 };

int plan_folds(Plan *p) {
  const IrFunc *fn = p->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    SchedValue *n = &p->v[r];
    if ((nd->op != IR_SUM && nd->op != IR_MEAN) || n->cls != SCHED_STEP || n->group >= 0 ||
        n->w != 1)
      continue;
    IrRef x = nd->args[0];
    const IrNode *xn = &fn->nodes.v[x];
    SchedValue *xv = &p->v[x];
    if (xn->op != IR_MUL || xv->cls != SCHED_STEP || xv->uses != 1 || xv->group >= 0 || xv->gemm ||
        xv->w != 1 || xv->is_int || xv->rank < 2 ||
        (nd->axis != xv->rank - 1 && nd->axis != xv->rank - 2))
      continue;
    int ok = 1;
    for (int j = 0; j < 2 && ok; j++) {
      const SchedValue *a = &p->v[xn->args[j]];
      ok = a->w == 1 && !a->is_int && sched_fused_readable(a, xv, xv);
    }
    xv->folded = ok;
    /* A time-invariant matrix by columns (passes/rewrite.c, by_columns) too
     * big for L1 (LSSL's 256 channels of 16 x 16: 256 KiB) is read from L2
     * for every row of the batch when each row runs the sum alone; for a
     * block of its rows, all the batch's rows in turn, it is read once. */
    for (int j = 0; j < 2 && ok; j++) {
      const SchedValue *a = &p->v[xn->args[j]];
      if (a->cls == SCHED_CONST && a->numel * 4 > ACROSS_BYTES && nd->axis == xv->rank - 2 &&
          a->numel == xv->numel && xv->shape[xv->rank - 1] % SCHED_SCAN_LANES == 0 &&
          p->v[xn->args[1 - j]].cls == SCHED_STEP)
        n->across = 1;
    }
  }
  return 0;
}

int sched_in_phase(const SchedInst *in, SchedClass phase, IrRef r) {
  const IrNode *nd = &in->fn->nodes.v[r];
  const SchedValue *n = &in->values[r];
  /* A fused scan's or chunked state's members are computed by that stage. */
  return n->cls == phase && !sched_is_view(nd->op) && (n->uses > 0 || nd->op == IR_CALL) &&
         n->group < 0;
}

/* At most this many nodes share one fused loop. A chain of thousands of
 * elementwise ops in one loop body made LLVM's per-loop analyses (SCEV,
 * scheduling, register allocation over one huge block) superlinear: 2000 ops
 * took 7 s, 10000 minutes. Past the cap the run continues in a new loop; the
 * value crossing the cut is stored and reloaded, one extra pass over a row
 * per FUSED_RUN_MAX ops, which costs nothing measurable. */
enum { FUSED_RUN_MAX = 64 };

IrRef plan_fused_run_end(const Plan *p, SchedClass phase, IrRef r) {
  const SchedValue *key = &p->v[r];
  if (!fusable(p, phase, r, key)) return r;
  IrRef last = r;
  int members = 1;
  for (IrRef q = r + 1; q < p->fn->nodes.n && members < FUSED_RUN_MAX; q++) {
    /* A fused scan or chunked state runs as its own stage: the run ends. */
    if (p->v[q].group >= 0 && p->v[q].cls == phase) break;
    if (!sched_in_phase(p->in, phase, q)) continue;
    if (!fusable(p, phase, q, key)) break;
    last = q;
    members++;
  }
  return last;
}
