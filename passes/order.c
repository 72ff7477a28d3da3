/* order.c - the order of a cell's nodes, chosen for fusion.
 *
 * The schedule fuses a run of consecutive elementwise nodes of one size into
 * one element loop (sched/plan.c), so where the frontend happened to put a
 * node decides what fuses: in `S' = eta * S - theta * grad(loss, W)` the
 * product `eta * S` comes first, then the gradient's matrix-vector products,
 * then the rest of the update, and `eta * S` becomes a loop of its own that
 * writes a state-sized buffer every step. This pass re-emits every cell's
 * nodes in an order where such work sits together, changing nothing else:
 *
 *   - nodes that are not movable (leaves, products, reductions,
 *     normalizations, sequence ops) keep their order;
 *   - a movable node (elementwise, outer products, views) is emitted only
 *     when something needs it: just before the first unmovable node that
 *     reads it, or at the end for the states' new values and the outputs;
 *   - what is emitted for a need is a cluster: the pending movable nodes of
 *     the needed node's size reachable from it through nodes of that size.
 *     The cluster's other operands (of other sizes) are emitted first, each
 *     as a cluster of its own, then the cluster's nodes in their old order.
 *
 * So a state's update, however it was written, becomes one run: its
 * vector-sized inputs first, then every state-sized node of it.
 */
#include "passes/passes.h"

#include <stdlib.h>

enum { MAX_NESTING = 256 };

typedef struct Order {
  const IrFunc *f;
  char *done; /* emitted */
  int *mark;  /* the cluster that last claimed the node */
  IrRef *out; /* the new order */
  int n;      /* nodes in out */
  int nclusters;
} Order;

/* A growable list of nodes. */
typedef struct Refs {
  IrRef *v;
  int n, cap;
} Refs;

static int push(Refs *l, IrRef r) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 16;
    IrRef *v = realloc(l->v, (size_t)cap * sizeof *v);
    if (!v) return -1;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = r;
  return 0;
}

static int movable(const IrNode *nd) {
  unsigned fl = ir_op_info[nd->op].flags;
  if (fl & (IRF_LEAF | IRF_SEQ)) return 0;
  return (fl & IRF_EW) || nd->op == IR_OUTER || nd->op == IR_BROADCAST || nd->op == IR_RESHAPE ||
         nd->op == IR_SLICE || nd->op == IR_INDEX || nd->op == IR_TRANSPOSE;
}

static void put(Order *o, IrRef r) {
  o->done[r] = 1;
  o->out[o->n++] = r;
}

static int cmp_ref(const void *x, const void *y) {
  IrRef a = *(const IrRef *)x, b = *(const IrRef *)y;
  return (a > b) - (a < b);
}

/* Every pending node r needs, in the old order (always topological): the
 * fallback for a nesting too deep to pursue. */
static int emit_plain(Order *o, IrRef r) {
  Refs stack = {0}, list = {0};
  int id = ++o->nclusters, rc = push(&stack, r);
  o->mark[r] = id;
  while (rc == 0 && stack.n > 0) {
    IrRef q = stack.v[--stack.n];
    rc = push(&list, q);
    const IrNode *nd = &o->f->nodes.v[q];
    for (int j = 0; j < nd->nargs && rc == 0; j++) {
      IrRef a = nd->args[j];
      if (!o->done[a] && o->mark[a] != id) {
        o->mark[a] = id;
        rc = push(&stack, a);
      }
    }
  }
  if (rc == 0) {
    if (list.n > 1) qsort(list.v, (size_t)list.n, sizeof *list.v, cmp_ref);
    for (int i = 0; i < list.n; i++)
      if (!o->done[list.v[i]]) put(o, list.v[i]);
  }
  free(stack.v);
  free(list.v);
  return rc;
}

/* Emits pending node r and what it needs (a cluster, as above). Returns -1
 * when memory runs out. */
static int emit(Order *o, IrRef r, int depth) {
  if (o->done[r]) return 0;
  if (depth > MAX_NESTING) return emit_plain(o, r);
  const IrFunc *f = o->f;
  int id = ++o->nclusters, rc = 0;
  IrType t = f->nodes.v[r].type;
  Refs members = {0}, outside = {0};
  rc = push(&members, r);
  o->mark[r] = id;
  for (int i = 0; i < members.n && rc == 0; i++) {
    const IrNode *nd = &f->nodes.v[members.v[i]];
    for (int j = 0; j < nd->nargs && rc == 0; j++) {
      IrRef a = nd->args[j];
      if (o->done[a] || o->mark[a] == id) continue;
      const IrNode *ad = &f->nodes.v[a];
      if (movable(ad) && ir_type_same_sizes(ad->type, t)) {
        o->mark[a] = id;
        rc = push(&members, a);
      }
    }
  }
  for (int i = 0; i < members.n && rc == 0; i++) {
    const IrNode *nd = &f->nodes.v[members.v[i]];
    for (int j = 0; j < nd->nargs && rc == 0; j++) {
      IrRef a = nd->args[j];
      if (!o->done[a] && o->mark[a] != id && o->mark[a] != -id) {
        o->mark[a] = -id; /* listed once */
        rc = push(&outside, a);
      }
    }
  }
  if (rc == 0 && members.n > 1) qsort(members.v, (size_t)members.n, sizeof *members.v, cmp_ref);
  if (rc == 0 && outside.n > 1) qsort(outside.v, (size_t)outside.n, sizeof *outside.v, cmp_ref);
  for (int i = 0; i < outside.n && rc == 0; i++) rc = emit(o, outside.v[i], depth + 1);
  for (int i = 0; i < members.n && rc == 0; i++)
    if (!o->done[members.v[i]]) put(o, members.v[i]);
  free(members.v);
  free(outside.v);
  return rc;
}

/* The new order of cell f's nodes into o->out. */
static int order_cell(Order *o) {
  const IrFunc *f = o->f;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    if (movable(nd)) continue;
    for (int j = 0; j < nd->nargs; j++)
      if (emit(o, nd->args[j], 0)) return -1;
    if (!o->done[r]) put(o, r);
  }
  for (int i = 0; i < f->states.n; i++) {
    if (f->states.v[i].next >= 0 && emit(o, f->states.v[i].next, 0)) return -1;
    if (f->states.v[i].init >= 0 && emit(o, f->states.v[i].init, 0)) return -1;
  }
  for (int i = 0; i < f->outputs.n; i++)
    if (f->outputs.v[i].value >= 0 && emit(o, f->outputs.v[i].value, 0)) return -1;
  for (IrRef r = 0; r < f->nodes.n; r++) /* what nothing reads */
    if (!o->done[r]) put(o, r);
  return 0;
}

int order_module(Arena *a, const IrModule *m, IrModule **out, DiagEngine *de) {
  *out = NULL;
  IrModule *om = ir_module_new(a);
  if (!om) goto oom;
  om->entry = m->entry;
  for (int i = 0; i < m->funcs.n; i++) {
    IrFunc *f = m->funcs.v[i];
    if (f->kind == IR_FN_CELL && f->nodes.n > 0) {
      size_t n = (size_t)f->nodes.n;
      Order o = {f, calloc(n, 1), calloc(n, sizeof(int)), calloc(n, sizeof(IrRef)), 0, 0};
      int rc = o.done && o.mark && o.out ? order_cell(&o) : -1;
      IrFunc *g = NULL;
      if (rc == 0) {
        /* ir_func_reorder appends g to the module: build it in a scratch one. */
        IrModule *scratch = ir_module_new(a);
        g = scratch ? ir_func_reorder(scratch, f, o.out, o.n) : NULL;
      }
      free(o.done);
      free(o.mark);
      free(o.out);
      if (!g) goto oom;
      f = g;
    }
    if (vec_push(a, &om->funcs, f)) goto oom;
  }
  *out = om;
  return 0;
oom:
  diag_error(de, (SrcLoc){0}, "out of memory");
  return -1;
}
