/* sched_internal.h - what the files of sched/ share: the planning context.
 * plan.c decides per node (class, GEMM, fusion); build.c flattens the
 * instance tree, writes the signature, places buffers and builds the stage
 * tree; print.c prints it. */
#ifndef SEQ_SCHED_INTERNAL_H
#define SEQ_SCHED_INTERNAL_H

#include "sched/sched.h"

/* Elements past this in one value are refused (docs/language.md's limit on
 * dims keeps every product of two dims below 2^63). */
#define SCHED_LIMIT_ELEMS ((int64_t)1 << 40)

typedef struct Plan {
  Arena *a;
  const IrModule *m;
  DiagEngine *de;
  Schedule *s;
  SchedInst *in; /* the instance being planned */
  const IrFunc *fn;
  SchedValue *v; /* in->values */
  int failed;
} Plan;

void plan_unsupported(Plan *p, SrcLoc loc, const char *what);
/* The concrete shape of a value of type t in instance in; -1 with a
 * diagnostic at loc if a dim is out of range or the value too large. */
int plan_eval_type(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, int *rank, int64_t *shape,
                   int64_t *numel);
/* The interface shape: plan_eval_type plus a trailing 2 for complex values. */
int plan_interface_type(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, AbiTensor *ct);
/* Floats per example of a value of type t. */
int plan_type_floats(Plan *p, const SchedInst *in, IrType t, SrcLoc loc, int64_t *out);

/* Whether layer call `call` of p->in passes its argument j as a per-token
 * copy (CALL_IN): a value constant over the sequence given to an input read
 * per step, or in time chunks (chunked) a whole-sequence value gathered per
 * chunk. A callee's context takes the value as it is, one row per example. */
int plan_call_copies(const Plan *p, const IrNode *call, int j, int chunked);
/* Per node of p->in: support, class, shape, GEMM, uses, chunking. */
int plan_values(Plan *p);
/* Whether op has a complex form in the backends (the textbook formulas). */
int sched_complex_op_ok(IrOp op);
/* The last node of the fusable run of `phase` that starts at r (r itself
 * when it does not fuse). */
IrRef plan_fused_run_end(const Plan *p, SchedClass phase, IrRef r);
/* Operand a can be read at the flat index of a fused loop over key's
 * shape (same size, scalar, or numpy-broadcast to it). */
int sched_fused_readable(const SchedValue *a, const SchedValue *key, const SchedValue *n);
/* outer(a, b) = n as a member of a fused loop over key: n is the loop's
 * whole [M, N] shape, real, so its element (o, i) is a[o] * b[i]. */
int sched_outer_fusable(const SchedValue *a, const SchedValue *b, const SchedValue *n,
                        const SchedValue *key);

/* Fuses every scan of a parallel form with the elementwise work around it
 * (sched/scan.c); members get SchedValue.group, anchors in->groups. */
int plan_scan_groups(Plan *p);
int plan_folds(Plan *p);
int place_scan_buffers(Plan *p);
/* Plans every chunked matrix state (linattn ops) of a parallel form
 * (sched/chunk.c); members get SchedValue.group, anchors in->linattns. */
int plan_linattns(Plan *p);
/* Plans every causal attention (sched/attn.c): in->attns and its scratch. */
int plan_attns(Plan *p);
/* Whether a parallel form runs in time chunks (sched/plan.c). */
int plan_model_chunks(Plan *p);
/* Buffers the chunked forms need (kernel scratch, copies of S0). */
int place_linattn_buffers(Plan *p);
int sched_add_buf(Plan *p, SchedBufKind kind, SchedRows rows, int64_t floats, int weights,
                  IrRef node, int index);

#endif
