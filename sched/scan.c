/* scan.c - how a scan runs: fused with the elementwise work around it.
 *
 * A scan's coefficients are often expansions of small per-token values
 * (S4D's dB * x[:, None], [H, N] from [H]) and its value is read by
 * elementwise work that ends in a sum over the state's last axis (y =
 * sum(C * s)): materialized per token, every one of those is a state-sized
 * buffer written and read back for each of B*T tokens. Fused, one loop per
 * step computes them in registers, from the small values, and stores only
 * what leaves the group (the sums). The running state stays in its own
 * storage (one row per example), and the loops run per example, per block
 * of the state's leading elements, then over time, so a block of state
 * stays in L1 across all steps (the loop order docs/algorithms.md asks of a
 * diagonal recurrence).
 *
 * Members, decided here:
 *   - the scan, and delay(scan) (its value is the old state);
 *   - prologue: state-sized elementwise nodes that feed the scan's a or b and
 *     that nothing outside the group reads;
 *   - epilogue: state-sized elementwise nodes reading members (and values
 *     computed before the group), and sums or means over the last axis of a
 *     member, which are stored per token;
 * a member read from outside the group is stored per token too. The group
 * runs where its last member is in node order; a node outside it that reads
 * a member earlier than that cuts the epilogue short.
 */
#include "sched/sched_internal.h"

#include <string.h>

/* Floats of one block of a state: a few KiB, so the block and the step's
 * other rows stay in L1. */
#define SCAN_BLOCK_FLOATS 2048
/* Elements of a piece of a one-row state: eight AVX2 vectors. */
#define SCAN_PIECE 64
/* A real state runs transposed (plan_copies) when its last axis, summed, is
 * at most this long (two AVX-512 vectors) and it has rows for a vector. */
#define SCAN_NARROW 32
#define SCAN_NARROW_ROWS 16

static int elementwise(const Plan *p, IrRef r, const SchedValue *key) {
  const IrNode *nd = &p->fn->nodes.v[r];
  const SchedValue *n = &p->v[r];
  if (n->cls != SCHED_TOKEN || n->gemm || n->is_int || n->numel != key->numel) return 0;
  /* Mamba's outer(delta * x, B), computed in the loop instead of stored per token. */
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

/* A sum or mean over the last axis of a state-sized value, or a product
 * of a state-sized [M, K] matrix with a [K] vector (Mamba's s @ C), which is
 * the sum over the last axis of the matrix times the broadcast vector. */
static int last_axis_sum(const Plan *p, IrRef r, const SchedValue *key) {
  const IrNode *nd = &p->fn->nodes.v[r];
  if (p->v[r].cls != SCHED_TOKEN) return 0;
  const SchedValue *x = &p->v[nd->args[0]];
  if (nd->op == IR_MATMUL) {
    const SchedValue *y = &p->v[nd->args[1]];
    return x->numel == key->numel && x->rank == 2 && y->rank == 1 && x->w == 1 && y->w == 1 &&
           !p->v[r].gemm;
  }
  if (nd->op != IR_SUM && nd->op != IR_MEAN) return 0;
  return x->numel == key->numel && x->rank >= 1 && nd->axis == x->rank - 1;
}

/* Users of node r (r's readers among the nodes; outputs and states apart). */
static int read_outside(const Plan *p, IrRef r, const char *member) {
  const IrFunc *fn = p->fn;
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value == r) return 1;
  for (int i = 0; i < fn->states.n; i++)
    if (fn->states.v[i].init == r) return 1;
  for (IrRef q = r + 1; q < fn->nodes.n; q++)
    if (!member[q])
      for (int j = 0; j < fn->nodes.v[q].nargs; j++)
        if (fn->nodes.v[q].args[j] == r) return 1;
  return 0;
}

/* The private copies of a group's items (SchedScanGroup.copied): planar
 * for a complex state; transposed for a real [rows, last] state whose last
 * axis is at most SCAN_NARROW, is summed, and leaves rows enough for a
 * vector, when the transposed loop reads no full-shaped value it cannot
 * copy (a per-token one, or a slice member's) and stores none per token.
 * The copies are the full-shaped constants that members read as operands (a
 * slice or index member reads its operand its own way and takes none). */
static int plan_copies(Plan *p, SchedScanGroup *g, const SchedValue *key, const char *member,
                       int sums, int64_t outer) {
  const IrFunc *fn = p->fn;
  int64_t last = key->rank ? key->shape[key->rank - 1] : 1;
  if (key->w == 2) {
    g->planar_state = 1;
    g->transposed = g->lanes;
  } else if (g->lanes) {
    g->transposed = 1;
  } else if (key->rank == 2 && sums && last <= SCAN_NARROW && outer >= SCAN_NARROW_ROWS &&
             g->split == last) {
    g->transposed = 1;
    for (int m = 0; m < g->nmembers && g->transposed; m++) {
      IrRef q = g->members[m];
      const IrNode *nd = &fn->nodes.v[q];
      if (nd->op == IR_SLICE || nd->op == IR_INDEX ||
          (p->v[q].stored && p->v[q].numel > 1 && p->v[q].numel == key->numel))
        g->transposed = 0;
      for (int j = 0; j < nd->nargs; j++) {
        const SchedValue *av = &p->v[nd->args[j]];
        int is_h0 = (nd->op == IR_SCAN || nd->op == IR_SCAN_MAX) && j == 2;
        if (!is_h0 && !member[nd->args[j]] && av->numel == key->numel && av->numel > 1 &&
            av->cls != SCHED_CONST)
          g->transposed = 0;
      }
    }
  }
  if (!g->planar_state && !g->transposed) return 0;
  g->copied = arena_calloc(p->a, (size_t)fn->nodes.n + 1, sizeof(IrRef));
  if (!g->copied) return -1;
  for (IrRef a = 0; a < fn->nodes.n; a++) {
    const SchedValue *av = &p->v[a];
    if (member[a] || av->cls != SCHED_CONST || av->w != key->w || av->numel != key->numel) continue;
    int read = 0;
    for (int m = 0; m < g->nmembers && !read; m++) {
      const IrNode *nd = &fn->nodes.v[g->members[m]];
      if (g->members[m] == g->delay || nd->op == IR_SLICE || nd->op == IR_INDEX) continue;
      for (int j = 0; j < nd->nargs; j++) read |= nd->args[j] == a;
    }
    if (read) g->copied[g->ncopied++] = a;
  }
  return 0;
}

void sched_lane_strides(const SchedValue *a, int *row, int *last) {
  int r = a->rank;
  *last = r >= 1 && a->shape[r - 1] != 1;
  *row = r >= 2 && a->shape[r - 2] != 1;
}

/* Whether member q can be computed on vectors of rows (SchedScanGroup.lanes):
 * an op the element code emits without a call per element (no gelu, pow, or
 * complex log and abs), and operands that are members, scalars, copies
 * (full-shaped constants of the state's kind), per-row real values (one
 * vector load) or per-element values of the last axis (one load and a
 * splat). */
static int lane_member(const Plan *p, IrRef q, const SchedValue *key, const char *member) {
  const IrNode *nd = &p->fn->nodes.v[q];
  const SchedValue *n = &p->v[q];
  if (nd->op == IR_SLICE || nd->op == IR_INDEX || nd->op == IR_GELU || nd->op == IR_POW) return 0;
  if (n->stored && n->numel == key->numel) return 0;
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) cplx |= p->v[nd->args[j]].w == 2;
  if (cplx && (nd->op == IR_LOG || nd->op == IR_ABS)) return 0;
  if (last_axis_sum(p, q, key) && n->w != 1) return 0;
  if (nd->op == IR_OUTER) return 1; /* real [rows] times [last] (sched_outer_fusable) */
  for (int j = 0; j < nd->nargs; j++) {
    IrRef a = nd->args[j];
    const SchedValue *av = &p->v[a];
    if ((nd->op == IR_SCAN || nd->op == IR_SCAN_MAX) && j == 2) continue; /* h0: the storage */
    if (member[a] || av->numel == 1) continue;
    if (av->numel == key->numel) {
      if (av->cls != SCHED_CONST || av->w != key->w) return 0; /* not copied */
      continue;
    }
    int row, last;
    sched_lane_strides(av, &row, &last);
    if (row && (last || av->w != 1)) return 0;
  }
  return 1;
}

/* SchedScanGroup.lanes for a group of key's shape. */
static int plan_lanes(const Plan *p, const SchedScanGroup *g, const SchedValue *key,
                      const char *member) {
  if (key->rank != 2 || key->shape[0] % SCHED_SCAN_LANES != 0 || key->shape[0] < 1 ||
      g->split != key->shape[1])
    return 0;
  if (g->delay >= 0 && p->v[g->delay].stored) return 0;
  for (int m = 0; m < g->nmembers; m++)
    if (g->members[m] != g->delay && !lane_member(p, g->members[m], key, member)) return 0;
  return 1;
}

static int plan_group(Plan *p, IrRef scan) {
  const IrFunc *fn = p->fn;
  const IrNode *sn = &fn->nodes.v[scan];
  const SchedValue *key = &p->v[scan];
  int n = fn->nodes.n;
  IrRef h0 = sn->args[2];
  /* The running value lives in the state's storage: h0 must be the state
   * itself, read by nothing but this scan and its delay, and the scan must
   * be its next value (so its final value is the storage's). */
  if (fn->nodes.v[h0].op != IR_STATE) return 0;
  int state = fn->nodes.v[h0].index;
  if (fn->states.v[state].next != scan) return 0;
  char *member = arena_calloc(p->a, (size_t)n + 1, 1);
  char *taint = arena_calloc(p->a, (size_t)n + 1, 1); /* depends on a member */
  if (!member || !taint) return -1;
  IrRef delay = IR_NONE;
  for (IrRef q = 0; q < n; q++) {
    const IrNode *nd = &fn->nodes.v[q];
    for (int j = 0; j < nd->nargs; j++)
      if (nd->args[j] == h0 && q != scan) {
        if (nd->op != IR_DELAY || nd->args[0] != scan || delay != IR_NONE) return 0;
        delay = q;
      }
  }
  member[scan] = 1;
  if (delay != IR_NONE) member[delay] = 1;
  /* Prologue: candidates feeding a or b, then drop those read outside. */
  for (IrRef q = scan - 1; q >= 0; q--) {
    int feeds = 0;
    for (IrRef u = q + 1; u <= scan && !feeds; u++)
      if (member[u])
        for (int j = 0; j < fn->nodes.v[u].nargs; j++)
          feeds |= fn->nodes.v[u].args[j] == q && (u != scan || j < 2);
    if (feeds && elementwise(p, q, key)) member[q] = 1;
  }
  for (int changed = 1; changed;) {
    changed = 0;
    for (IrRef q = 0; q < scan; q++)
      if (member[q] && read_outside(p, q, member)) {
        member[q] = 0;
        changed = 1;
      }
  }
  /* Epilogue, forward from the scan. */
  for (IrRef q = 0; q < n; q++) {
    const IrNode *nd = &fn->nodes.v[q];
    for (int j = 0; j < nd->nargs; j++) taint[q] |= member[nd->args[j]] || taint[nd->args[j]];
    if (q <= scan || member[q] || !taint[q]) continue;
    int ok = elementwise(p, q, key) || last_axis_sum(p, q, key);
    for (int j = 0; j < nd->nargs && ok; j++) {
      IrRef a = nd->args[j];
      ok = member[a] || !taint[a];
    }
    /* A matrix-vector product reduces its matrix operand: that one must be
     * a member, the vector a value from before. */
    if (ok && nd->op == IR_MATMUL) ok = member[nd->args[0]] && !member[nd->args[1]];
    if (ok) {
      member[q] = 1;
      taint[q] = 0;
    }
  }
  /* The group runs at its last member; an outside reader of a member that
   * comes earlier would run before it: cut the epilogue there. */
  for (;;) {
    IrRef last = scan;
    for (IrRef q = scan; q < n; q++)
      if (member[q]) last = q;
    IrRef cut = IR_NONE;
    for (IrRef q = scan + 1; q < last && cut == IR_NONE; q++)
      if (!member[q])
        for (int j = 0; j < fn->nodes.v[q].nargs; j++)
          if (member[fn->nodes.v[q].args[j]]) cut = q;
    if (cut == IR_NONE) break;
    for (IrRef q = cut + 1; q <= last; q++)
      if (q != delay) member[q] = 0;
  }
  /* Shapes the element loop needs: a state of rank >= 1 (scalars loop once). */
  SchedScanGroup *g = arena_calloc(p->a, 1, sizeof *g);
  int count = 0;
  for (IrRef q = 0; q < n; q++) count += member[q];
  if (!g || !(g->members = arena_calloc(p->a, (size_t)count, sizeof(IrRef)))) return -1;
  IrRef last = scan;
  for (IrRef q = 0; q < n; q++)
    if (member[q]) {
      g->members[g->nmembers++] = q;
      p->v[q].group = scan;
      last = q;
    }
  for (int i = 0; i < g->nmembers; i++) {
    IrRef q = g->members[i];
    p->v[q].stored = last_axis_sum(p, q, key) || read_outside(p, q, member);
  }
  g->delay = delay;
  g->state = state;
  int64_t lastlen = key->rank ? key->shape[key->rank - 1] : 1;
  int64_t outer = lastlen ? key->numel / lastlen : 0;
  int64_t rowf = lastlen * key->w;
  g->block = rowf ? SCAN_BLOCK_FLOATS / rowf : outer;
  if (g->block < 1) g->block = 1;
  if (g->block > outer) g->block = outer;
  /* A state of one row splits along its last axis when nothing sums over
   * it: pieces of a few vectors each, so two cores get work even for one
   * example. */
  g->split = lastlen;
  int sums = 0;
  for (int i = 0; i < g->nmembers; i++) sums |= last_axis_sum(p, g->members[i], key);
  if (outer == 1 && !sums && lastlen >= 2 * SCAN_PIECE) g->split = SCAN_PIECE;
  g->lanes = plan_lanes(p, g, key, member);
  if (g->lanes) g->block = SCHED_SCAN_LANES;
  if (plan_copies(p, g, key, member, sums, outer) < 0) return -1;
  g->time_buf = -1;
  g->copy_buf = -1;
  p->in->groups[last] = g;
  return 0;
}

int plan_scan_groups(Plan *p) {
  const IrFunc *fn = p->fn;
  p->in->groups = arena_calloc(p->a, (size_t)fn->nodes.n + 1, sizeof *p->in->groups);
  if (!p->in->groups) return -1;
  for (IrRef r = 0; r < fn->nodes.n; r++) p->v[r].group = IR_NONE;
  if (fn->kind != IR_FN_MODEL || fn->states.n == 0) return 0;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    if ((fn->nodes.v[r].op == IR_SCAN || fn->nodes.v[r].op == IR_SCAN_MAX) && p->v[r].uses > 0 &&
        plan_group(p, r))
      return -1;
  return 0;
}

/* The scratch of the groups that may split their steps across threads: a
 * real state small enough that its examples and items can leave threads
 * idle (a wide one fills them with blocks and pieces); and a rows-in-lanes
 * group's copies of its constants. Written whole before they are read, so
 * they are not zeroed. */
int place_scan_buffers(Plan *p) {
  for (IrRef r = 0; r < p->fn->nodes.n; r++) {
    SchedScanGroup *g = p->in->groups[r];
    if (!g) continue;
    IrRef scan = IR_NONE;
    for (int m = 0; m < g->nmembers && scan == IR_NONE; m++) {
      int op = p->fn->nodes.v[g->members[m]].op;
      if (op == IR_SCAN || op == IR_SCAN_MAX) scan = g->members[m];
    }
    const SchedValue *key = &p->v[scan];
    if (g->lanes && g->ncopied > 0 &&
        (g->copy_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_ONE,
                                     g->ncopied * key->numel * key->w, 1, scan, 4)) < 0)
      return -1;
    if (key->w != 1 || key->numel < 1 || key->numel > SCHED_SCAN_SPLIT_FLOATS) continue;
    g->time_buf = sched_add_buf(p, SCHED_BUF_WORK, SCHED_ROWS_ONE,
                                SCHED_SCAN_SLOTS * 2 * key->numel, 1, scan, 2);
    if (g->time_buf < 0) return -1;
  }
  return 0;
}
