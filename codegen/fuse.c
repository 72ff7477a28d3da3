/* fuse.c - a run of elementwise nodes (chosen by the schedule) in one
 * element loop: values pass between the nodes in registers, and only those
 * read outside the run (by later nodes, outputs or state updates) are
 * stored. */
#include "codegen/llvm.h"

#include <string.h>

/* The vectors of L->lanes rows from row o of operand a at element i of the
 * last axis, in a rows-in-lanes scan (sched/scan.c, lane_member says which
 * operands it admits): a copy's, a per-row value's (one load), or a value
 * repeated along the rows (one load, splat). */
static Cx lane_operand(Lower *L, IrRef a, LLVMValueRef o, LLVMValueRef i) {
  if (L->pl_re && L->pl_re[a])
    return (Cx){lane_load(L, L->pl_re[a], L->pl_at),
                L->pl_im ? lane_load(L, L->pl_im[a], L->pl_at) : cf(L, 0.0)};
  const SchedValue *an = &L->v[a];
  int row, last;
  sched_lane_strides(an, &row, &last);
  if (row) return (Cx){lane_load(L, rowptr(L, a), o), cf(L, 0.0)};
  Cx s = ldc(L, rowptr(L, a), an->numel == 1 || !last ? ci64(L, 0) : i, an->w);
  return (Cx){lane_splat(L, s.re), an->w == 2 ? lane_splat(L, s.im) : s.im};
}

/* Operand a at the run's flat index k (shape key), as a complex (im 0 for a
 * real value). A broadcast operand is read at (o, i), k = o * last + i over
 * the key's last axis: the part from o is loop-invariant in the inner loop,
 * which stays contiguous (or constant) and vectorizes. */
Cx fused_operand(Lower *L, IrRef a, LLVMValueRef k, LLVMValueRef o, LLVMValueRef i,
                 const SchedValue *key) {
  if (L->fmember[a] || L->fval[a]) /* a member's value, or a scalar loaded before the loop */
    return (Cx){L->fval[a], L->fval_im[a] ? L->fval_im[a] : cf(L, 0.0)};
  if (L->lanes) return lane_operand(L, a, o, i);
  if (L->pl_re && L->pl_re[a])
    return (Cx){ldf(L, L->pl_re[a], L->pl_at),
                L->pl_im ? ldf(L, L->pl_im[a], L->pl_at) : cf(L, 0.0)};
  const SchedValue *an = &L->v[a];
  return ldc(L, rowptr(L, a), bcast_index(L, an, key, k, o, i), an->w);
}

Cx fused_value(Lower *L, IrRef r, LLVMValueRef k, LLVMValueRef o, LLVMValueRef i,
               const SchedValue *key) {
  const IrNode *nd = &L->fn->nodes.v[r];
  const SchedValue *n = &L->v[r];
  Cx v = {NULL, NULL};
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) cplx |= L->v[nd->args[j]].w == 2;
  if (nd->op == IR_SLICE || nd->op == IR_INDEX) {
    const SchedValue *x = &L->v[nd->args[0]];
    int64_t outer, len, inner, start = 0;
    sched_axis_split(x, nd->axis, &outer, &len, &inner);
    if (dim_eval(nd->start, L->in->dims, &start) != 0) start = 0;
    v.re = ldf(L, rowptr(L, nd->args[0]), add(L, k, ci64(L, start * inner)));
  } else if (nd->op == IR_OUTER && L->lanes) { /* rows o.. of a, times b[i] */
    v.re = fmul(L, lane_load(L, rowptr(L, nd->args[0]), o),
                lane_splat(L, ldf(L, rowptr(L, nd->args[1]), i)));
  } else if (nd->op == IR_OUTER) { /* sched_outer_fusable: element (o, i) of [M, N] */
    v.re = fmul(L, ldf(L, rowptr(L, nd->args[0]), o), ldf(L, rowptr(L, nd->args[1]), i));
  } else if (cplx) {
    Cx a0 = fused_operand(L, nd->args[0], k, o, i, key);
    Cx a1 = nd->nargs > 1 ? fused_operand(L, nd->args[1], k, o, i, key) : (Cx){NULL, NULL};
    v = cx_op(L, nd->op, a0, a1);
  } else if (nd->nargs == 1) {
    v.re = emit_unary(L, nd->op, fused_operand(L, nd->args[0], k, o, i, key).re);
  } else {
    v.re = emit_binary(L, nd->op, fused_operand(L, nd->args[0], k, o, i, key).re,
                       fused_operand(L, nd->args[1], k, o, i, key).re);
  }
  if (n->w != 2) v.im = NULL;
  return v;
}

void emit_fused(Lower *L, SchedClass phase, IrRef first, IrRef last) {
  const IrFunc *fn = L->fn;
  const SchedValue *key = &L->v[first];
  int bcast = 0;
  for (IrRef r = first; r <= last; r++) {
    L->fmember[r] = sched_in_phase(L->in, phase, r);
    const IrNode *nd = &fn->nodes.v[r];
    if (L->fmember[r] && nd->op != IR_SLICE && nd->op != IR_INDEX)
      for (int j = 0; j < nd->nargs; j++) {
        const SchedValue *a = &L->v[nd->args[j]];
        bcast |= a->numel != key->numel && a->numel != 1;
      }
  }
  /* With a broadcast operand: a loop over the leading axes around one over
   * the last (key's rank >= 1 then, see fused_readable), trailing axes of
   * size 1 left out (an inner loop of one iteration would keep the outer one
   * from vectorizing). */
  SchedValue kq = *key;
  if (bcast)
    while (kq.rank > 1 && kq.shape[kq.rank - 1] == 1) kq.rank--;
  L->squeeze = key->rank - kq.rank;
  key = &kq;
  int64_t len = bcast ? key->shape[key->rank - 1] : key->numel;
  /* Operands of one element (a constant, a scalar weight) are loaded once,
   * here: read inside the loop, beside its stores into buffers of the same
   * block, they left LLVM's vectorizer unable to tell the accesses apart
   * (a single-threaded map of sigmoid and tanh ran scalar, 2.6x slower). */
  IrRef *pre = NULL;
  int npre = 0;
  if (!L->lanes && !L->pl_re) {
    size_t nargs = 0;
    for (IrRef r = first; r <= last; r++) nargs += (size_t)fn->nodes.v[r].nargs;
    pre = nargs ? arena_calloc(L->a, nargs, sizeof *pre) : NULL;
    for (IrRef r = first; r <= last && pre; r++) {
      const IrNode *nd = &fn->nodes.v[r];
      if (!L->fmember[r] || nd->op == IR_SLICE || nd->op == IR_INDEX || nd->op == IR_OUTER)
        continue;
      for (int j = 0; j < nd->nargs; j++) {
        IrRef a = nd->args[j];
        if (L->fmember[a] || L->fval[a] || L->v[a].numel != 1) continue;
        Cx s = ldc(L, rowptr(L, a), ci64(L, 0), L->v[a].w);
        L->fval[a] = s.re;
        L->fval_im[a] = L->v[a].w == 2 ? s.im : NULL;
        pre[npre++] = a;
      }
    }
  }
  Loop lo, lk;
  LLVMValueRef o =
      bcast ? loop_begin(L, &lo, ci64(L, 0), ci64(L, len ? key->numel / len : 0)) : ci64(L, 0);
  LLVMValueRef i = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef k = bcast ? add(L, mul(L, o, ci64(L, len)), i) : i;
  for (IrRef r = first; r <= last; r++) {
    if (!L->fmember[r]) continue;
    const SchedValue *n = &L->v[r];
    Cx v = fused_value(L, r, k, o, i, key);
    L->fval[r] = v.re;
    L->fval_im[r] = n->w == 2 ? v.im : NULL;
    /* Stored only if something outside the run reads it. */
    int inside = 0;
    for (IrRef q = r + 1; q <= last; q++)
      if (L->fmember[q])
        for (int j = 0; j < fn->nodes.v[q].nargs; j++) inside += fn->nodes.v[q].args[j] == r;
    if (inside < n->uses) stc(L, v, rowptr(L, r), k, n->w);
  }
  /* Each iteration writes its own elements and reads only elements no
   * other iteration writes: its operands' (an in-place node or state
   * reads the element it then writes, sched/build.c) or nodes outside the
   * run. A scan's private copies are read at the scan's element instead. */
  if (L->lanes || L->pl_re)
    loop_end(L, &lk);
  else
    loop_end_parallel(L, &lk);
  if (bcast) loop_end(L, &lo);
  L->squeeze = 0;
  for (IrRef r = first; r <= last; r++) {
    L->fmember[r] = 0;
    L->fval[r] = L->fval_im[r] = NULL;
  }
  for (int j = 0; j < npre; j++) L->fval[pre[j]] = L->fval_im[pre[j]] = NULL;
}
