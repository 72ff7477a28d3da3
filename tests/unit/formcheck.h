/* formcheck.h - what the tests of compiled forms share (test_codegen_forms.c
 * for the CPU, test_cuda_gen.c and test_cuda_aot.c for the GPU): the cases,
 * a case compiled through the pipeline with random weights bound, and the
 * check of a compiled form against the interpreter, the oracle.
 *
 * Tolerance (fc_check). A compiled form adds and multiplies in another order
 * than the interpreter's step loop, so its float32 result differs from the
 * float32 interpreter's by rounding. Both are judged against the float64
 * interpreter: the compiled result may be off the float64 one by at most
 * 1e-5 (absolute, floats of order 1) plus four times the float32
 * interpreter's own error there, plus `rel` times the output's scale (the
 * CPU forms' 1e-4 for T >= 1000, where a recurrence accumulates rounding;
 * 0 elsewhere). A wrong form (a lost term, a wrong step) is off by the size
 * of a term, orders of magnitude above that. */
#ifndef SEQ_TEST_FORMCHECK_H
#define SEQ_TEST_FORMCHECK_H

#include "testutil.h"

#include "driver/pipeline.h"
#include "driver/run.h"

typedef struct FcCase {
  const char *file, *dims;
} FcCase;

/* Every example and std cell with small dims (the GPU tests' list). */
extern const FcCase FC_CASES[];
extern const int FC_NCASES;

/* A case through the pipeline: forward is what fc_batch_check runs (the
 * JIT's entry point, or a device's through a test's callback). */
typedef struct FcCompiled {
  const char *file;
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
  AbiForwardFn forward;
  DrvWeights w;
} FcCompiled;

/* Starts cm for case c under --strategy=form and fills *po with c's file and
 * dims and the strategy, goal PIPE_BOUND; the caller adds its own options and
 * runs the pipeline. Fails the test on a bad form. */
void fc_begin(FcCompiled *cm, const FcCase *c, const char *form, PipeOptions *po);
/* Binds random weights (seed 5) to cm's bound root, with stable recurrences
 * as trained ones are: S5's Lambda_re and RetNet's decay (log gamma) are used
 * as stored, and a positive one grows like e^t until float32 overflows
 * (docs/stdlib.md), so they are made negative. 0, or -1 with diagnostics. */
int fc_random_weights(FcCompiled *cm);
/* Whether one of cm's diagnostics says `needle`. */
int fc_said(const FcCompiled *cm, const char *needle);
void fc_print_diags(const FcCompiled *cm);
/* Frees cm: its weights, the pipeline and the arena. */
void fc_release(FcCompiled *cm);

/* NVRTC is part of the CUDA toolkit: where the toolkit is installed it must
 * load (else the test fails); where there is none this says so and gives 0,
 * and the checks that need it skip. */
int fc_nvrtc_present(void);

/* Uniform in [-1, 1), a xorshift sequence each test program seeds. */
void fc_seed(uint64_t seed);
double fc_urand(void);

/* Fails unless got is within the tolerance above of ref64 (ref32: the
 * float32 interpreter's result). */
void fc_check(const char *what, const RtTensor *got, const RtTensor *ref32, const RtTensor *ref64,
              double rel);

/* One batch and the interpreter's results on it: B random sequences of T
 * tokens (integer inputs k % 7), with (variant 1) or without lengths and
 * random initial states. */
enum { FC_MAX_B = 16 };

typedef struct FcBatch {
  int64_t B, T; /* B <= FC_MAX_B */
  int variant;
  int ni, no, ns;
  RtTensor ins[8], sin[16];
  int64_t lengths[FC_MAX_B];
  RtTensor o32[8], o64[8], s32[16], s64[16];
} FcBatch;

/* Draws the batch for cm's root and runs the interpreter on it, in float32
 * and in float64. Fails the test if the interpreter fails. */
void fc_batch_make(FcBatch *bt, FcCompiled *cm, int64_t B, int64_t T, int variant);
/* Runs cm->forward on the batch (cm compiled from the same case as the
 * batch's) and checks every output and final state (fc_check with rel);
 * `what` names the form in messages. */
void fc_batch_check(const FcBatch *bt, FcCompiled *cm, const char *what, double rel);
/* fc_batch_check that hands the outputs and final states over (og[0..no),
 * sg[0..ns)), to be freed with fc_batch_outputs_free. */
void fc_batch_check_keep(const FcBatch *bt, FcCompiled *cm, const char *what, double rel,
                         RtTensor *og, RtTensor *sg);
/* Runs cm->forward on the batch again and fails unless every output and
 * final state has the bytes of og and sg (an earlier run's). */
void fc_batch_same(const FcBatch *bt, FcCompiled *cm, const char *what, const RtTensor *og,
                   const RtTensor *sg);
void fc_batch_outputs_free(const FcBatch *bt, RtTensor *og, RtTensor *sg);
void fc_batch_free(FcBatch *bt);

/* 16-bit floats as a device call's inputs and outputs hold them (type 1
 * bfloat16, 2 IEEE half; rt_cu_run_io), converted by reference code:
 * widened exactly, and x (not NaN) narrowed to nearest, ties to even,
 * overflow to infinity. */
float fc_widen16(uint16_t h, int type);
uint16_t fc_narrow16(float x, int type);

#endif
