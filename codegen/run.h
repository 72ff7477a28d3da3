/* run.h - running compiled code on the interpreter's terms: the same
 * IrBinding, RtTensor inputs and outputs, lengths and states as interp_run,
 * so `seqc run --backend=cpu` and the tests swap one for the other. */
#ifndef SEQ_CG_RUN_H
#define SEQ_CG_RUN_H

#include "codegen/cg.h"
#include "ir/interp.h"

/* Float32 copies of the binding's weights in the signature's parameter
 * order (matched by name). */
typedef struct CgWeights {
  int n;
  float **data;
} CgWeights;
int cg_weights_from_binding(const AbiSignature *sig, const IrBinding *b, CgWeights *w,
                            DiagEngine *de);
void cg_weights_free(CgWeights *w);

/* Same contract as interp_run (state_in/state_out in b->flat.states order;
 * outputs and state_out allocated here as RT_F32). */
int cg_run(const AbiSignature *sig, AbiForwardFn fn, const CgWeights *w, const IrBinding *b,
           int64_t B, int64_t T, const RtTensor *inputs, const int64_t *lengths,
           const RtTensor *state_in, RtTensor *outputs, RtTensor *state_out, DiagEngine *de);

#endif
