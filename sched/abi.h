/* abi.h - the C ABI of compiled code, the same for every backend
 * (docs/abi.md): the status codes generated entry points return, the
 * interface of a compiled root (its parameters, inputs, outputs and states
 * with concrete shapes) and the entry points' C types. No backend code is
 * needed to read it: the C API, the header writer and the tests use it. */
#ifndef SEQ_SCHED_ABI_H
#define SEQ_SCHED_ABI_H

#include "ir/ir.h"

/* Status codes returned by generated entry points (docs/abi.md). */
enum {
  ABI_OK = 0,
  ABI_ERR_ARG = 1,    /* B < 0, T < 0, a required pointer is NULL, a blob of the wrong size */
  ABI_ERR_NOMEM = 2,  /* scratch allocation failed or B*T too large */
  ABI_ERR_TOKEN = 3,  /* an int token outside [0, V) */
  ABI_ERR_LENGTH = 4, /* lengths[b] outside [0, T] */
};

/* A message for a status returned by generated code. */
const char *abi_status_message(int status);

/* One named tensor of the interface, with its concrete per-example shape. */
typedef struct AbiTensor {
  const char *name; /* full flat name: "weight_ih_l0", "l0.h" */
  int is_int;       /* an int token input: int32 [B, T] */
  int context;      /* a context input: [B, shape] (no time axis), read by every step */
  int is_complex;   /* complex: shape's last axis is the 2 of (re, im) */
  int ndim;
  int64_t shape[SEQ_MAX_RANK];
  int64_t numel;
  int64_t vocab;    /* an int input read by embedding lookups in the root: the smallest
                       table's rows (tokens must be in [0, vocab)); 0 when unknown */
  SrcLoc vocab_loc; /* that lookup, for diagnostics */
} AbiTensor;

/* What a compiled root looks like from outside. */
typedef struct AbiSignature {
  const char *func;   /* the IR function's name */
  const char *symbol; /* C identifier prefix of the entry points */
  int ndims;
  const char **dim_names;
  int64_t *dim_values;
  VEC(AbiTensor) params;  /* flat parameter order (ir_flatten): own params, then layers */
  VEC(AbiTensor) inputs;  /* the root's inputs */
  VEC(AbiTensor) outputs; /* the root's outputs */
  VEC(AbiTensor) states;  /* flat states, layer paths dotted ("l0.h") */
  int has_step;           /* 0 when a reversed layer or a model-level causal_conv needs
                             the whole sequence */
} AbiSignature;

/* Finds the parameter, input, output or state named `name`; -1 if absent. */
int abi_find_tensor(const AbiTensor *v, int n, const char *name);

/* The C identifier prefix of a root's entry points, from its unit name:
 * lower case, other characters than [a-z0-9_] replaced ("LSTM" -> "lstm"). */
const char *abi_c_identifier(Arena *a, const char *name);

/* The generated SYM_forward and SYM_step (docs/abi.md). */
typedef int32_t (*AbiForwardFn)(const float *const *params, int64_t B, int64_t T,
                                const void *const *inputs, const int32_t *lengths,
                                const float *const *state_in, float *const *outputs,
                                float *const *state_out);
typedef int32_t (*AbiStepFn)(const float *const *params, int64_t B, const void *const *inputs,
                             const float *const *state_in, float *const *outputs,
                             float *const *state_out);

/* SYM_forward_prepared, SYM_step_prepared and SYM_prepare (docs/abi.md). */
typedef int32_t (*AbiForwardPreparedFn)(const float *const *params, const float *prepared,
                                        int64_t B, int64_t T, const void *const *inputs,
                                        const int32_t *lengths, const float *const *state_in,
                                        float *const *outputs, float *const *state_out);
typedef int32_t (*AbiStepPreparedFn)(const float *const *params, const float *prepared, int64_t B,
                                     const void *const *inputs, const float *const *state_in,
                                     float *const *outputs, float *const *state_out);
typedef int32_t (*AbiPrepareFn)(const float *const *params, float *prepared);
typedef int64_t (*AbiPreparedFloatsFn)(void);

#endif
