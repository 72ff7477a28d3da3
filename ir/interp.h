/* interp.h - binding a root function to concrete dims and weights, and the
 * reference interpreter: the oracle every compiled and parallelized form is
 * tested against. Clarity over speed: it runs each example of the batch
 * separately, step by step, in float64 storage rounded to float32 after every
 * op (or kept in float64 in f64 mode).
 */
#ifndef SEQ_INTERP_H
#define SEQ_INTERP_H

#include "ir/ir.h"
#include "runtime/rt.h"

/* Concrete dims and weights for one root function and its instance tree. */
typedef struct IrBinding {
  Arena *arena;
  const IrModule *mod;
  const IrFunc *root;
  IrFlat flat;
  int64_t *dims;            /* per root dim; -1 while unknown */
  SrcLoc *dim_from;         /* unused by callers; where each dim was inferred */
  RtTensor *weights;        /* per flat param (flat.params order), RT_F64, concrete shape */
  const char *weights_from; /* the weights' file, named in weight errors; NULL: none */
} IrBinding;

/* Looks up the shape of a stored weight by full name: returns 1 and fills
 * ndim/shape if present, 0 if absent. */
typedef int (*IrShapeLookup)(void *ctx, const char *name, int *ndim, int64_t *shape);
/* Loads a weight by full name as RT_F64 into *out; 0 on success. */
typedef int (*IrWeightLoad)(void *ctx, const char *name, RtTensor *out, RtError *err);

int ir_binding_init(IrBinding *b, Arena *a, const IrModule *m, const IrFunc *root, DiagEngine *de);
/* Sets a root dim by name (--dims H=256). Unknown names are errors. */
int ir_binding_set_dim(IrBinding *b, const char *name, int64_t value, DiagEngine *de);
/* Infers the remaining dims from the stored weights' shapes and the inputs'
 * per-token shapes (input_shapes[i] has input_ndims[i] entries; pass NULL for
 * inputs not given), then applies defaults. Every dim must end up known and
 * every shape consistent; errors name the tensor and both shapes. */
int ir_binding_infer(IrBinding *b, IrShapeLookup lookup, void *ctx, const int *input_ndims,
                     const int64_t *const *input_shapes, DiagEngine *de);
/* Evaluates a type's shape with the bound dims. */
int ir_binding_shape(const IrBinding *b, IrType t, int64_t *shape);
/* Loads every flat parameter through `load`, checking shapes. */
int ir_binding_load(IrBinding *b, IrWeightLoad load, void *ctx, DiagEngine *de);
/* Fills every parameter with seeded uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
 * values, fan_in being the parameter's last dimension (documented in cli.md). */
int ir_binding_random(IrBinding *b, uint64_t seed, DiagEngine *de);

/* What the Newton solves of a run did (IrLayer.newton): one solve per
 * example per call of a Newton layer. */
#define INTERP_NEWTON_HIST 33
typedef struct InterpNewtonStats {
  int64_t solves;
  int64_t fallbacks;                /* solves that ran the sequential form instead */
  int64_t fallback_steps;           /* steps they ran that way (from the first unconverged) */
  int64_t damped;                   /* halvings of a step */
  int max_iter;                     /* most iterations a converged solve took */
  int64_t hist[INTERP_NEWTON_HIST]; /* converged solves by iterations (the last: or more) */
} InterpNewtonStats;

typedef struct InterpOptions {
  int f64; /* keep float64 instead of rounding every result to float32 */
  /* Fail with a diagnostic naming the first time step (over the whole batch)
   * at which an input or output holds a NaN or an infinity, or the final
   * state that does (seqc run --check-finite). */
  int check_finite;
  InterpNewtonStats *newton; /* NULL, or added to by the run */
} InterpOptions;

/* Runs the root over a batch.
 *   inputs[i]:  root input i as [B, T, ...] (RT_F32/RT_F64; int inputs also RT_I32/RT_I64)
 *   lengths:    NULL, or B values in [0, T]: steps past a sequence's end are
 *               not run, its outputs there are zero, its final state is the
 *               state at its end
 *   state_in:   NULL, or one tensor per flat state ([B, ...]); an entry whose
 *               data is NULL means "the declared initial value"
 *   outputs[i]: allocated here, [B, T, ...], RT_F32 (RT_F64 in f64 mode)
 *   state_out:  NULL, or one slot per flat state, allocated here, [B, ...]
 * Run-time errors (a token index out of range) are diagnostics at the node's
 * location; the return value is 0 on success. */
int interp_run(const IrBinding *b, int64_t B, int64_t T, const RtTensor *inputs,
               const int64_t *lengths, const RtTensor *state_in, RtTensor *outputs,
               RtTensor *state_out, const InterpOptions *opt, DiagEngine *de);

/* The check_finite report for results computed by another backend: the first
 * time step (per example, within its length) where an input or output is NaN
 * or infinite, then any non-finite final state. 0 if everything is finite. */
int interp_check_finite(const IrBinding *b, int64_t B, int64_t T, const RtTensor *inputs,
                        const int64_t *lengths, const RtTensor *outputs, const RtTensor *state_out,
                        DiagEngine *de);

#endif
