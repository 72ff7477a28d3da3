/* build.c - a schedule for one bound root: the instance tree and the
 * signature (from ir_flatten, so names are made in one place), per instance
 * the values (plan.c), the buffers in placement order and the stage tree.
 */
#include "sched/sched_internal.h"

#include <string.h>

/* Floats the TOKEN buffers of one time chunk may take (1 MiB): the chunk's
 * GEMM output is still in L2 when its steps read it. For LSTM at I = H = 256
 * that is about 200 token rows (B = 64: Tc = 3, B = 1: Tc = 200); 100 to 400
 * rows measured the same, a whole [B*T, 4H] buffer (256 MiB at B = 64) 7%
 * slower. */
#define CHUNK_BUDGET ((int64_t)256 * 1024)
/* ... and on more than one thread (a call not already inside a batch slice),
 * four times that: each stage of a chunk hands its work to the other threads
 * and waits for them, and at B = 1 a 64-step chunk gave each stage only tens
 * of microseconds. Forms at B = 1, T = 16384 on two threads, 1 MiB against
 * 4 MiB: linear attention 37-39 -> 33 ms, mLSTM 52 -> 46, GLA 41-42 -> 38,
 * LSTM 135-138 -> 126-133; on one thread 4 MiB was no faster. */
#define CHUNK_BUDGET_THREADS (4 * CHUNK_BUDGET)

/* Calls with fewer tokens (B*T) than this multiply by unpacked weights: with
 * dot products, the LSTM step at I = H = 256 took 605 us unpacked and 706
 * packed at B = 32, 1189 and 989 at B = 64 (one thread, the dev machine).
 * Measured with the unpacked product as dot products; the swap below came
 * later. */
#define PACK_MIN_TOKENS 48
/* ... and so do calls with a batch of at least PACK_SWAP_MIN_B
 * (runtime/cpu_gemm.c, SWAP_MIN_M: there the unpacked product runs on the
 * packed kernel as (x^T W^T)^T, 632 us for that B = 64 step) and fewer than
 * PACK_MIN_STEPS steps. */
#define PACK_SWAP_MIN_B 32
#define PACK_MIN_STEPS 16

static int oom(Plan *p) {
  diag_error(p->de, (SrcLoc){0}, "out of memory scheduling %s", p->s->sig.func);
  return -1;
}

/* ---- instances and the signature ------------------------------------------ */

static int build_instances(Plan *p, const IrFunc *root, const int64_t *dims) {
  IrFlat flat;
  if (ir_flatten(p->a, p->m, root, &flat, p->de)) return -1;
  Schedule *s = p->s;
  for (int i = 0; i < flat.insts.n; i++) {
    const IrFlatInst *fi = &flat.insts.v[i];
    const IrFunc *fn = fi->fn;
    SchedInst in = {0};
    in.fn = fn;
    in.dims = arena_calloc(p->a, (size_t)fn->dims.n + 1, sizeof(int64_t));
    in.params = arena_calloc(p->a, (size_t)fn->params.n + 1, sizeof(int));
    in.states = arena_calloc(p->a, (size_t)fn->states.n + 1, sizeof(int));
    in.layers = arena_calloc(p->a, (size_t)fn->layers.n + 1, sizeof(int));
    in.values = arena_calloc(p->a, (size_t)fn->nodes.n + 1, sizeof(SchedValue));
    in.state_buf = arena_calloc(p->a, (size_t)fn->states.n + 1, sizeof(int));
    in.state_tmp = arena_calloc(p->a, (size_t)fn->states.n + 1, sizeof(int));
    in.state_inplace = arena_calloc(p->a, (size_t)fn->states.n + 1, 1);
    if (!in.dims || !in.params || !in.states || !in.layers || !in.values || !in.state_buf ||
        !in.state_tmp || !in.state_inplace)
      return oom(p);
    for (int l = 0; fn->kind == IR_FN_MODEL && fn->states.n > 0 && l < fn->layers.n; l++)
      if (!fn->layers.v[l].newton.states) {
        diag_error(p->de, fn->loc, "a model cannot have states of its own and layers");
        return -1;
      }
    for (int d = 0; d < fn->dims.n; d++)
      if (dim_eval(fi->dims[d], dims, &in.dims[d]) != 0) {
        diag_error(p->de, fn->dims.v[d].loc, "dimension %s of %s is negative or too large",
                   fn->dims.v[d].name, fn->name);
        return -1;
      }
    memcpy(in.params, fi->params, sizeof(int) * (size_t)fn->params.n);
    memcpy(in.states, fi->states, sizeof(int) * (size_t)fn->states.n);
    memcpy(in.layers, fi->layers, sizeof(int) * (size_t)fn->layers.n);
    if (vec_push(p->a, &s->insts, in)) return oom(p);
  }
  /* A Newton layer's step shares its caller's instance in the flat tree
   * (flatten.c: the caller's dims and parameters, no states); it is an
   * instance of its own here, after the tree's. */
  for (int i = 0, n = s->insts.n; i < n; i++) {
    const IrFunc *fn = s->insts.v[i].fn;
    for (int l = 0; l < fn->layers.n; l++) {
      if (!fn->layers.v[l].newton.states) continue;
      const IrFunc *step = p->m->funcs.v[fn->layers.v[l].callee];
      SchedInst in = {0};
      in.fn = step;
      in.dims = s->insts.v[i].dims;
      in.params = s->insts.v[i].params;
      in.states = arena_calloc(p->a, 1, sizeof(int));
      in.layers = arena_calloc(p->a, 1, sizeof(int));
      in.values = arena_calloc(p->a, (size_t)step->nodes.n + 1, sizeof(SchedValue));
      in.state_buf = arena_calloc(p->a, 1, sizeof(int));
      in.state_tmp = arena_calloc(p->a, 1, sizeof(int));
      in.state_inplace = arena_calloc(p->a, 1, 1);
      if (!in.states || !in.layers || !in.values || !in.state_buf || !in.state_tmp ||
          !in.state_inplace)
        return oom(p);
      s->insts.v[i].layers[l] = s->insts.n;
      if (vec_push(p->a, &s->insts, in)) return oom(p);
    }
  }
  /* Parameters and states, named once by ir_flatten; their shapes over the
   * root's dims. */
  const SchedInst *rin = &s->insts.v[0];
  for (int i = 0; i < flat.params.n; i++) {
    AbiTensor t = {0};
    t.name = flat.params.v[i].name;
    if (plan_interface_type(p, rin, flat.params.v[i].type, flat.params.v[i].loc, &t) ||
        vec_push(p->a, &s->sig.params, t))
      return -1;
  }
  for (int i = 0; i < flat.states.n; i++) {
    AbiTensor t = {0};
    t.name = flat.states.v[i].name;
    if (plan_interface_type(p, rin, flat.states.v[i].type, flat.states.v[i].loc, &t) ||
        vec_push(p->a, &s->sig.states, t))
      return -1;
  }
  for (int i = 0; i < root->inputs.n; i++) {
    AbiTensor t = {0};
    t.name = root->inputs.v[i].name;
    t.is_int = root->inputs.v[i].type.elem == IR_INT;
    t.context = root->inputs.v[i].context;
    if (plan_interface_type(p, rin, root->inputs.v[i].type, root->inputs.v[i].loc, &t) ||
        vec_push(p->a, &s->sig.inputs, t))
      return -1;
  }
  for (int i = 0; i < root->outputs.n; i++) {
    AbiTensor t = {0};
    t.name = root->outputs.v[i].name;
    if (root->outputs.v[i].type.elem == IR_INT) {
      plan_unsupported(p, root->outputs.v[i].loc, "integer outputs");
      return -1;
    }
    if (plan_interface_type(p, rin, root->outputs.v[i].type, root->outputs.v[i].loc, &t) ||
        vec_push(p->a, &s->sig.outputs, t))
      return -1;
  }
  return 0;
}

/* Whether the root needs the whole sequence at once (so has no step form):
 * a convolution over the sequence (unless it starts from a window state,
 * which a step carries), attention (its step would need every earlier key
 * and value), or a layer that reads it from its end. */
static int needs_whole_sequence(const Schedule *s) {
  for (int i = 0; i < s->insts.n; i++) {
    const IrFunc *fn = s->insts.v[i].fn;
    for (int r = 0; r < fn->nodes.n; r++)
      if ((fn->nodes.v[r].op == IR_CAUSAL_CONV && fn->nodes.v[r].nargs < 4) ||
          fn->nodes.v[r].op == IR_ATTN)
        return 1;
    /* A layer run over a context's positions would run again, from the
     * states given, at every step. */
    for (int k = 0; k < fn->layers.n; k++)
      if (fn->layers.v[k].reverse || fn->layers.v[k].over) return 1;
  }
  return 0;
}

/* ---- sizes and work ---------------------------------------------------------- */

static int plan_limits(Plan *p) {
  const IrFunc *fn = p->fn;
  SchedInst *in = p->in;
  int64_t per_tok = 16, per_ex = 16;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const SchedValue *n = &p->v[r];
    const IrNode *nd = &fn->nodes.v[r];
    if (sched_is_view(nd->op) || n->folded) continue;
    int64_t sz = sched_row_floats(n) + 16;
    if (nd->op == IR_CALL) {
      const SchedInst *child = &p->s->insts.v[in->layers[nd->index]];
      /* A Newton solve keeps the Jacobian's blocks (the step's outputs
       * after the states) to itself, a window at a time. */
      int nw = fn->layers.v[nd->index].newton.states;
      for (int j = 0; j < child->fn->outputs.n; j++) {
        int64_t ne;
        if (nw && j >= nw) continue;
        if (plan_type_floats(p, child, child->fn->outputs.v[j].type, nd->loc, &ne)) return -1;
        if (fn->layers.v[nd->index].over) /* all N positions, once per example */
          per_ex += ne * n->shape[0] + 16;
        else
          per_tok += ne + 16;
      }
      for (int j = 0; j < nd->nargs; j++)
        if (plan_call_copies(p, nd, j, 0)) per_tok += sched_row_floats(&p->v[nd->args[j]]) + 16;
      continue;
    }
    if (n->cls == SCHED_TOKEN)
      per_tok += sz;
    else if (n->cls == SCHED_STEP || n->cls == SCHED_EXAMPLE)
      per_ex += sz;
  }
  for (int st = 0; st < fn->states.n; st++)
    per_ex += 2 * (p->s->sig.states.v[in->states[st]].numel + 16);
  in->per_token = per_tok;
  in->per_example = per_ex;
  /* Work per token: the runtime's estimate of whether splitting the batch
   * across threads pays. */
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const SchedValue *n = &p->v[r];
    if (n->cls <= SCHED_EXAMPLE || n->uses == 0 || sched_is_view(fn->nodes.v[r].op)) continue;
    int64_t w = n->gemm ? n->gemm_k * n->gemm_n : n->numel * n->w;
    if (w > 0 && p->s->work_per_token < SCHED_LIMIT_ELEMS) p->s->work_per_token += w;
  }
  return 0;
}

/* ---- buffers ---------------------------------------------------------------- */

int sched_add_buf(Plan *p, SchedBufKind kind, SchedRows rows, int64_t floats, int weights,
                  IrRef node, int index) {
  SchedBuf b = {kind, rows, floats, weights, node, index};
  if (vec_push(p->a, &p->in->bufs, b)) return -1;
  return p->in->bufs.n - 1;
}

/* GEMM r's weight, if it is a parameter read as it is (through reshapes),
 * gets a slot of the prepared block (Schedule.prepared). */
static int add_prepared(Plan *p, IrRef r) {
  const IrFunc *fn = p->in->fn;
  SchedValue *n = &p->v[r];
  n->prep = -1;
  int trans = n->gemm == SCHED_GEMM_WX;
  IrRef w = fn->nodes.v[r].args[trans ? 0 : 1];
  while (fn->nodes.v[w].op == IR_RESHAPE) w = fn->nodes.v[w].args[0];
  if (n->cgemm || fn->nodes.v[w].op != IR_PARAM) return 0;
  Schedule *s = p->s;
  if (s->prepared.n == 0) s->prepared_floats = SCHED_PREPARED_HEADER;
  SchedPrepared sp = {p->in->params[fn->nodes.v[w].index], n->gemm_k, n->gemm_n,
                      trans ? n->gemm_k : n->gemm_n,       trans,     s->prepared_floats};
  if (vec_push(p->a, &s->prepared, sp)) return -1;
  n->prep = s->prepared.n - 1;
  s->prepared_floats += (sched_packed_floats(n) + 15) / 16 * 16;
  return 0;
}

/* The state whose new value node r is and writes over its storage, or -1. */
static int next_in_place(const IrFunc *fn, const SchedInst *in, IrRef r) {
  for (int st = 0; st < fn->states.n; st++)
    if (in->state_inplace[st] && fn->states.v[st].next == r) return st;
  return -1;
}

/* Whether node r is read as an output, a state's next value or initial value
 * (its buffer must then survive the node's other readers). */
static int read_at_end(const IrFunc *fn, IrRef r) {
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value == r) return 1;
  for (int i = 0; i < fn->states.n; i++)
    if (fn->states.v[i].next == r || fn->states.v[i].init == r) return 1;
  return 0;
}

static int place_buffers(Plan *p) {
  const IrFunc *fn = p->fn;
  SchedInst *in = p->in;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    SchedValue *n = &p->v[r];
    const IrNode *nd = &fn->nodes.v[r];
    if (sched_is_view(nd->op) || n->folded) continue;
    SchedRows rows = n->cls == SCHED_CONST                             ? SCHED_ROWS_ONE
                     : n->cls == SCHED_STEP || n->cls == SCHED_EXAMPLE ? SCHED_ROWS_B
                     : n->chunked                                      ? SCHED_ROWS_BTC
                                                                       : SCHED_ROWS_BT;
    if (nd->op == IR_CALL) {
      const SchedInst *child = &p->s->insts.v[in->layers[nd->index]];
      n->call_out = arena_calloc(p->a, (size_t)child->fn->outputs.n + 1, sizeof(int));
      n->call_in = arena_calloc(p->a, (size_t)nd->nargs + 1, sizeof(int));
      if (!n->call_out || !n->call_in) return oom(p);
      for (int j = 0; j < nd->nargs; j++) {
        n->call_in[j] = -1;
        const SchedValue *a = &p->v[nd->args[j]];
        /* A layer reads an input per token: a constant is repeated for
         * each; in time chunks, a whole-sequence value (an input) is
         * gathered, the chunk's steps in order. */
        int copy = plan_call_copies(p, nd, j, in->chunked);
        if (copy && (n->call_in[j] = sched_add_buf(p, SCHED_BUF_CALL_IN,
                                                   in->chunked ? SCHED_ROWS_BTC : SCHED_ROWS_BT,
                                                   sched_row_floats(a), 0, r, j)) < 0)
          return oom(p);
      }
      /* A Newton solve keeps the Jacobian's blocks (the step's outputs
       * after the states) to itself, a window at a time. */
      int nw = fn->layers.v[nd->index].newton.states;
      for (int j = 0; j < child->fn->outputs.n; j++) {
        int64_t ne;
        n->call_out[j] = -1;
        if (nw && j >= nw) continue;
        if (plan_type_floats(p, child, child->fn->outputs.v[j].type, nd->loc, &ne)) return -1;
        /* Run over a context's positions: all N of them per example. */
        if (fn->layers.v[nd->index].over) ne *= n->shape[0];
        if ((n->call_out[j] = sched_add_buf(p, SCHED_BUF_CALL_OUT, rows, ne, 0, r, j)) < 0)
          return oom(p);
      }
      continue;
    }
    if (n->uses == 0) continue;
    /* Written over its state's storage (assigned below). */
    if (next_in_place(fn, in, r) >= 0) continue;
    /* A fused scan's members live in registers, unless read outside it. */
    if (n->group >= 0 && !n->stored) continue;
    /* An elementwise node whose first operand is a scratch buffer of the
     * same class and size, read by nothing else, writes over it (the
     * hoisted "W x + b" then costs one [B*T, 4H] buffer, not two). */
    if ((ir_op_info[nd->op].flags & IRF_EW) && nd->nargs >= 1) {
      IrRef a0 = nd->args[0];
      const IrNode *an = &fn->nodes.v[a0];
      const SchedValue *a = &p->v[a0];
      if (!read_at_end(fn, a0) && a->uses == 1 && a->cls == n->cls && a->numel == n->numel &&
          a->w == n->w && !sched_is_view(an->op) && an->op != IR_CALL && !a->inplace &&
          a->buf >= 0 && n->group < 0 && a->group < 0) {
        n->inplace = 1;
        n->buf = a->buf;
        continue;
      }
    }
    if ((n->buf = sched_add_buf(p, SCHED_BUF_NODE, rows, sched_row_floats(n), 0, r, 0)) < 0)
      return oom(p);
    if (n->gemm && (n->pack_buf = sched_add_buf(p, SCHED_BUF_PACKED, SCHED_ROWS_ONE,
                                                sched_packed_floats(n), 1, r, 0)) < 0)
      return oom(p);
    if (n->gemm && add_prepared(p, r)) return oom(p);
    if (n->cgemm && (n->creal_buf = sched_add_buf(p, SCHED_BUF_CREAL, SCHED_ROWS_ONE,
                                                  n->gemm_n * n->gemm_k, 1, r, 0)) < 0)
      return oom(p);
    if (n->gemm && n->chunked) {
      const SchedValue *x = &p->v[nd->args[n->gemm == SCHED_GEMM_WX ? 1 : 0]];
      if (!x->chunked && (n->gather_buf = sched_add_buf(p, SCHED_BUF_GATHER, SCHED_ROWS_BTC,
                                                        sched_row_floats(x), 0, r, 0)) < 0)
        return oom(p);
    }
  }
  for (int st = 0; st < fn->states.n; st++) {
    int64_t floats = p->s->sig.states.v[in->states[st]].numel;
    in->state_tmp[st] = -1;
    if ((in->state_buf[st] = sched_add_buf(p, SCHED_BUF_STATE, SCHED_ROWS_B, floats, 0, st, 0)) < 0)
      return oom(p);
    int j = fn->states.v[st].next >= 0 ? sched_state_alias(fn, fn->states.v[st].next) : -1;
    if (j >= 0 && j != st &&
        (in->state_tmp[st] =
             sched_add_buf(p, SCHED_BUF_STATE_TMP, SCHED_ROWS_B, floats, 0, st, 0)) < 0)
      return oom(p);
    if (in->state_inplace[st]) p->v[fn->states.v[st].next].buf = in->state_buf[st];
  }
  return 0;
}

/* ---- stages ----------------------------------------------------------------- */

typedef VEC(SchedOp) OpList;

static SchedOp *add_op(Plan *p, OpList *list, SchedOpKind kind, SchedClass cls, IrRef node,
                       IrRef last) {
  SchedOp op;
  memset(&op, 0, sizeof op);
  op.kind = kind;
  op.cls = cls;
  op.node = node;
  op.last = last;
  if (vec_push(p->a, list, op)) {
    oom(p);
    p->failed = 1;
    return NULL;
  }
  return &list->v[list->n - 1];
}

/* The sum that folded product q is made in (its one reader). */
static IrRef folding_sum(const IrFunc *fn, IrRef q) {
  for (IrRef r = q + 1; r < fn->nodes.n; r++)
    if (fn->nodes.v[r].nargs > 0 && fn->nodes.v[r].args[0] == q) return r;
  return IR_NONE;
}

/* Whether state st's old value is read only by elementwise members of the
 * fused run first..last, at the run's own index and no later than node nx
 * (so each element is read before the run overwrites it with nx), or by
 * step nodes before the run that compute a value of their own (a matrix
 * product of the state, or a product folded into a sum before the run:
 * done before the run starts; not a view of the state's storage). */
static int old_value_read_in_run(const Plan *p, int st, IrRef first, IrRef last, IrRef nx) {
  const IrFunc *fn = p->fn;
  const SchedValue *key = &p->v[first];
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    if (nd->op != IR_STATE || nd->index != st) continue;
    if (read_at_end(fn, r) || p->v[r].numel != key->numel || p->v[r].w != p->v[nx].w) return 0;
    /* The state and its reshapes (the same elements in the same places). */
    char *view = arena_calloc(p->a, (size_t)fn->nodes.n + 1, 1);
    if (!view) return 0;
    view[r] = 1;
    for (IrRef q = r + 1; q < fn->nodes.n; q++) {
      const IrNode *qd = &fn->nodes.v[q];
      if (qd->op != IR_RESHAPE || !view[qd->args[0]]) continue;
      if (read_at_end(fn, q)) return 0;
      view[q] = 1;
    }
    for (IrRef q = 0; q < fn->nodes.n; q++) {
      const IrNode *qd = &fn->nodes.v[q];
      int reads = 0;
      for (int j = 0; j < qd->nargs; j++) reads |= view[qd->args[j]];
      if (!reads || view[q]) continue;
      if (q < first && p->v[q].folded) { /* read where its sum is made */
        IrRef sum = folding_sum(fn, q);
        if (sum < 0 || sum >= first || !sched_in_phase(p->in, SCHED_STEP, sum) ||
            p->v[sum].group >= 0)
          return 0;
        continue;
      }
      if (q < first) {
        if (!sched_in_phase(p->in, SCHED_STEP, q) || sched_is_view(qd->op) || p->v[q].group >= 0)
          return 0;
        continue;
      }
      if (q > nx || q > last || !sched_in_phase(p->in, SCHED_STEP, q) ||
          !(ir_op_info[qd->op].flags & IRF_EW) || qd->op == IR_BROADCAST || qd->op == IR_SLICE ||
          qd->op == IR_INDEX || qd->op == IR_OUTER)
        return 0;
    }
  }
  return 1;
}

/* A cell's state whose new value the step's fused run first..last computes
 * writes it over the state's storage when nothing else reads the old value
 * (LSTM's c, Mamba's s under the step loop): one pass over the state per
 * step instead of three (read, write the new value, copy it back at the
 * commit), and half the state-sized memory per example. */
static void mark_in_place(Plan *p, IrRef first, IrRef last) {
  const IrFunc *fn = p->fn;
  if (fn->kind != IR_FN_CELL) return;
  for (int st = 0; st < fn->states.n; st++) {
    IrRef nx = fn->states.v[st].next;
    if (nx < first || nx > last || !sched_in_phase(p->in, SCHED_STEP, nx)) continue;
    const SchedValue *n = &p->v[nx];
    if (n->numel != p->v[first].numel || sched_state_alias(fn, nx) >= 0) continue;
    int shared = 0; /* the value is also another state's next or initial value */
    for (int o = 0; o < fn->states.n; o++)
      shared |= o != st && (fn->states.v[o].next == nx || fn->states.v[o].init == nx);
    if (shared || fn->states.v[st].init == nx) continue;
    if (old_value_read_in_run(p, st, first, last, nx)) p->in->state_inplace[st] = 1;
  }
}

/* Whether the step's fused run first..last, right after the SCHED_OP_ACROSS
 * sum `sum`, can be made in that stage's stores (its body): each member a
 * real elementwise operation over the sum's elements (the same shape, last
 * axis in the sum's vector lanes), so it is computed from the vector of sums
 * in registers. A state the run writes over in place is read by the sum (its
 * folded product reads the old value): that is safe when each row of the sum
 * is one vector, as every read of a row's old value then comes before the
 * store of its new one. LSSL's s' = dA s + dB x: the update, then, adds to
 * sums still in registers instead of reading them back. */
static int epilogue_fits(const Plan *p, IrRef sum, IrRef first, IrRef last) {
  const IrFunc *fn = p->fn;
  const SchedValue *sv = &p->v[sum], *key = &p->v[first];
  if (sv->rank < 1 || key->rank < 1 || key->numel != sv->numel ||
      key->shape[key->rank - 1] != sv->shape[sv->rank - 1])
    return 0;
  for (IrRef r = first; r <= last; r++) {
    if (!sched_in_phase(p->in, SCHED_STEP, r)) continue;
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &p->v[r];
    if (!(ir_op_info[nd->op].flags & IRF_EW) || nd->op == IR_BROADCAST || nd->op == IR_SLICE ||
        nd->op == IR_INDEX || nd->op == IR_OUTER || nd->nargs < 1 || nd->nargs > 2 || n->w != 1 ||
        n->is_int || n->numel != key->numel)
      return 0;
    for (int j = 0; j < nd->nargs; j++)
      if (p->v[nd->args[j]].w != 1 || p->v[nd->args[j]].is_int) return 0;
  }
  for (int st = 0; st < fn->states.n; st++) {
    IrRef nx = fn->states.v[st].next;
    if (p->in->state_inplace[st] && nx >= first && nx <= last &&
        sv->shape[sv->rank - 1] != SCHED_SCAN_LANES)
      return 0;
  }
  return 1;
}

/* The nodes of `phase` in order: runs of row-wise nodes inside loops over
 * the phase's rows (fused where they can be), broken by GEMMs, layer calls
 * and convolutions, which run over all rows at once. */
static int build_phase(Plan *p, OpList *list, SchedClass phase) {
  const IrFunc *fn = p->fn;
  int rows = -1; /* index in list of the open ROWS op */
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    const SchedValue *n = &p->v[r];
    if (n->cls != phase || sched_is_view(nd->op) || n->folded) continue;
    if (n->uses == 0 && nd->op != IR_CALL) continue;
    /* A fused scan, or a chunked state's kernel calls, run as one stage
     * where the last member is. */
    if (p->in->groups[r]) {
      rows = -1;
      SchedOp *op = add_op(p, list, SCHED_OP_SCAN, phase, n->group, r);
      if (!op) return -1;
      op->group = p->in->groups[r];
      continue;
    }
    if (p->in->linattns[r]) {
      rows = -1;
      SchedOp *op = add_op(p, list, SCHED_OP_LINATTN, phase, r, r);
      if (!op) return -1;
      op->linattn = p->in->linattns[r];
      continue;
    }
    if (p->in->attns[r]) {
      rows = -1;
      SchedOp *op = add_op(p, list, SCHED_OP_ATTN, phase, r, r);
      if (!op) return -1;
      op->attn = p->in->attns[r];
      continue;
    }
    if (n->group >= 0) continue;
    SchedOpKind k = n->gemm                                      ? SCHED_OP_GEMM
                    : n->across                                  ? SCHED_OP_ACROSS
                    : nd->op == IR_CALL                          ? SCHED_OP_CALL
                    : nd->op == IR_CAUSAL_CONV                   ? SCHED_OP_CONV
                    : nd->op == IR_SCAN || nd->op == IR_SCAN_MAX ? SCHED_OP_SCAN
                    : nd->op == IR_DELAY                         ? SCHED_OP_DELAY
                    : nd->op == IR_WINDOW                        ? SCHED_OP_WINDOW
                                                                 : SCHED_OP_NODE;
    if (k != SCHED_OP_NODE) {
      rows = -1;
      if (!add_op(p, list, k, phase, r, r)) return -1;
      continue;
    }
    IrRef last = plan_fused_run_end(p, phase, r);
    if (phase == SCHED_STEP && last > r) mark_in_place(p, r, last);
    /* Right after a sum over all rows: in its stores, where it fits. */
    SchedOp *prev = rows < 0 && list->n > 0 ? &list->v[list->n - 1] : NULL;
    if (prev && prev->kind == SCHED_OP_ACROSS && epilogue_fits(p, prev->node, r, last)) {
      if (!add_op(p, (OpList *)&prev->body, SCHED_OP_FUSED, phase, r, last)) return -1;
      r = last;
      continue;
    }
    if (rows < 0) {
      if (!add_op(p, list, SCHED_OP_ROWS, phase, -1, -1)) return -1;
      rows = list->n - 1;
    }
    OpList *body = (OpList *)&list->v[rows].body;
    if (!add_op(p, body, last > r ? SCHED_OP_FUSED : SCHED_OP_NODE, phase, r, last)) return -1;
    r = last;
  }
  return 0;
}

/* One step: the state-dependent nodes for all B examples, then per active
 * example its outputs and new states. */
static int build_time_loop(Plan *p, OpList *list) {
  SchedOp *loop = add_op(p, list, SCHED_OP_TIME_LOOP, SCHED_STEP, -1, -1);
  if (!loop) return -1;
  OpList *body = (OpList *)&loop->body;
  if (build_phase(p, body, SCHED_STEP)) return -1;
  return add_op(p, body, SCHED_OP_COMMIT, SCHED_STEP, -1, -1) ? 0 : -1;
}

static int build_ops(Plan *p) {
  const IrFunc *fn = p->fn;
  SchedInst *in = p->in;
  OpList *top = (OpList *)&in->ops;
  /* Constants, once per call; then the GEMMs' packed weights. */
  for (IrRef r = 0; r < fn->nodes.n; r++)
    if (p->v[r].cls == SCHED_CONST && !sched_is_view(fn->nodes.v[r].op) && p->v[r].uses > 0 &&
        !add_op(p, top, SCHED_OP_NODE, SCHED_CONST, r, r))
      return -1;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    if (p->v[r].gemm && p->v[r].uses > 0 && !add_op(p, top, SCHED_OP_PACK, SCHED_CONST, r, r))
      return -1;
  /* The constants a rows-in-lanes scan reads, in its layout, once. */
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    SchedScanGroup *g = in->groups[r];
    if (!g || !g->lanes || g->ncopied == 0) continue; /* place_scan_buffers: copy_buf */
    SchedOp *op = add_op(p, top, SCHED_OP_LANE_COPIES, SCHED_CONST, p->v[r].group, r);
    if (!op) return -1;
    op->group = g;
  }
  if (!add_op(p, top, SCHED_OP_ZERO_OUTPUTS, SCHED_CONST, -1, -1)) return -1;
  /* What a context gives, once per example. */
  if (build_phase(p, top, SCHED_EXAMPLE)) return -1;
  int cell = fn->kind == IR_FN_CELL;
  if (cell && in->chunked) {
    /* Chunks of Tc steps: the chunk's TOKEN rows (its share of the hoisted
     * input projections), then its steps, so those rows are read back from
     * cache rather than from a [B*T, ...] buffer in memory. */
    if (!add_op(p, top, SCHED_OP_STATE_INIT, SCHED_CONST, -1, -1)) return -1;
    SchedOp *chunks = add_op(p, top, SCHED_OP_CHUNK_LOOP, SCHED_TOKEN, -1, -1);
    if (!chunks) return -1;
    OpList *body = (OpList *)&chunks->body;
    if (build_phase(p, body, SCHED_TOKEN) ||
        !add_op(p, body, SCHED_OP_TOKEN_OUTPUTS, SCHED_TOKEN, -1, -1) || build_time_loop(p, body))
      return -1;
  } else if (!cell && in->chunked) {
    /* A parallel form in time chunks (plan_model_chunks): the recurrences
     * carry their values in the states' storage from chunk to chunk. */
    if (!add_op(p, top, SCHED_OP_STATE_INIT, SCHED_CONST, -1, -1)) return -1;
    SchedOp *chunks = add_op(p, top, SCHED_OP_CHUNK_LOOP, SCHED_TOKEN, -1, -1);
    if (!chunks) return -1;
    OpList *body = (OpList *)&chunks->body;
    if (build_phase(p, body, SCHED_TOKEN) ||
        !add_op(p, body, SCHED_OP_TOKEN_OUTPUTS, SCHED_TOKEN, -1, -1))
      return -1;
    int loose = 0; /* states no fused group carries */
    for (int s = 0; s < fn->states.n; s++) loose |= p->v[fn->states.v[s].next].group < 0;
    if ((loose && !add_op(p, body, SCHED_OP_CHUNK_STATES, SCHED_TOKEN, -1, -1)) ||
        !add_op(p, top, SCHED_OP_SEQ_FINAL_STATES, SCHED_TOKEN, -1, -1))
      return -1;
  } else {
    /* A model's own states (a cell's parallel form) are read from the
     * start. */
    if (!cell && fn->states.n > 0 && !add_op(p, top, SCHED_OP_STATE_INIT, SCHED_CONST, -1, -1))
      return -1;
    if (build_phase(p, top, SCHED_TOKEN) ||
        !add_op(p, top, SCHED_OP_TOKEN_OUTPUTS, SCHED_TOKEN, -1, -1))
      return -1;
    if (!cell && fn->states.n > 0 &&
        !add_op(p, top, SCHED_OP_SEQ_FINAL_STATES, SCHED_TOKEN, -1, -1))
      return -1;
    if (cell) {
      if (!add_op(p, top, SCHED_OP_STATE_INIT, SCHED_CONST, -1, -1)) return -1;
      if (fn->states.n > 0 && build_time_loop(p, top)) return -1;
    }
  }
  if (cell && !add_op(p, top, SCHED_OP_FINAL_STATES, SCHED_CONST, -1, -1)) return -1;
  return p->failed ? -1 : 0;
}

/* ---- the schedule ------------------------------------------------------------- */

/* Records, per int input of the root, the rows of the tables the root's
 * embedding lookups index with it, so callers can check tokens on the host
 * and name the value, its position and the lookup (as the interpreter does)
 * rather than only hear ABI_ERR_TOKEN from the code. */
static void token_vocab(Schedule *s) {
  const SchedInst *rin = &s->insts.v[0];
  const IrFunc *fn = rin->fn;
  for (int r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    if (nd->op != IR_GATHER || nd->nargs < 2) continue;
    const IrNode *ix = &fn->nodes.v[nd->args[1]];
    if (ix->op != IR_INPUT || ix->index < 0 || ix->index >= s->sig.inputs.n) continue;
    AbiTensor *t = &s->sig.inputs.v[ix->index];
    int64_t V = rin->values[nd->args[0]].shape[0];
    if (t->is_int && (t->vocab == 0 || V < t->vocab)) {
      t->vocab = V;
      t->vocab_loc = nd->loc;
    }
  }
}

int sched_build(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *dims,
                const char *symbol, int64_t kernel_chunk, Schedule **out, DiagEngine *de) {
  *out = NULL;
  Schedule *s = arena_calloc(a, 1, sizeof *s);
  if (!s) {
    diag_error(de, (SrcLoc){0}, "out of memory scheduling %s", root->name);
    return -1;
  }
  Plan p = {a, m, de, s, NULL, NULL, NULL, 0};
  s->mod = m;
  s->chunk_budget = CHUNK_BUDGET;
  s->chunk_budget_threads = CHUNK_BUDGET_THREADS;
  s->kernel_chunk = kernel_chunk;
  s->pack_min_tokens = PACK_MIN_TOKENS;
  s->pack_swap_min_b = PACK_SWAP_MIN_B;
  s->pack_min_steps = PACK_MIN_STEPS;
  AbiSignature *sig = &s->sig;
  sig->func = root->name;
  sig->symbol = symbol;
  sig->ndims = root->dims.n;
  sig->dim_names = arena_calloc(a, (size_t)root->dims.n + 1, sizeof(char *));
  sig->dim_values = arena_calloc(a, (size_t)root->dims.n + 1, sizeof(int64_t));
  if (!sig->dim_names || !sig->dim_values) return oom(&p);
  for (int i = 0; i < root->dims.n; i++) {
    if (dims[i] < 0) {
      diag_error(de, root->dims.v[i].loc, "dimension %s has no value", root->dims.v[i].name);
      return -1;
    }
    sig->dim_names[i] = root->dims.v[i].name;
    sig->dim_values[i] = dims[i];
  }
  if (build_instances(&p, root, dims)) return -1;
  sig->has_step = !needs_whole_sequence(s);
  for (int i = 0; i < s->insts.n; i++) {
    p.in = &s->insts.v[i];
    p.fn = p.in->fn;
    p.v = p.in->values;
    /* The stages first: they decide which states are updated in place,
     * which the buffers follow. */
    if (plan_values(&p) || plan_scan_groups(&p) || plan_linattns(&p) || plan_folds(&p) ||
        plan_model_chunks(&p) || plan_limits(&p) || plan_attns(&p) || build_ops(&p) || p.failed ||
        place_buffers(&p) || place_scan_buffers(&p) || place_linattn_buffers(&p))
      return -1;
  }
  token_vocab(s);
  *out = s;
  return 0;
}
