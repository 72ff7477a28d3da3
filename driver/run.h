/* run.h - running compiled code on the interpreter's terms: the same
 * IrBinding, RtTensor inputs and outputs, lengths and states as interp_run,
 * so `seqc run --backend=cpu` and the tests swap one for the other. */
#ifndef SEQ_DRIVER_RUN_H
#define SEQ_DRIVER_RUN_H

#include "sched/abi.h"
#include "ir/interp.h"

/* Float32 copies of the binding's weights in the signature's parameter
 * order (matched by name). */
typedef struct DrvWeights {
  int n;
  float **data;
} DrvWeights;
int drv_weights_from_binding(const AbiSignature *sig, const IrBinding *b, DrvWeights *w,
                             DiagEngine *de);
void drv_weights_free(DrvWeights *w);

/* Same contract as interp_run (state_in/state_out in b->flat.states order;
 * outputs and state_out allocated here as RT_F32). */
int drv_run(const AbiSignature *sig, AbiForwardFn fn, const DrvWeights *w, const IrBinding *b,
            int64_t B, int64_t T, const RtTensor *inputs, const int64_t *lengths,
            const RtTensor *state_in, RtTensor *outputs, RtTensor *state_out, DiagEngine *de);

/* Checks the tokens v ([B, T], as doubles) of int input t the way the
 * interpreter does (integers in [0, t->vocab), steps before each length)
 * and reports the first bad one with its value and position. */
int drv_check_tokens(const AbiTensor *t, const double *v, int64_t B, int64_t T,
                     const int64_t *lengths, DiagEngine *de);

#endif
