/* jitmodel.h - a compiled module with random weights bound, for the tests that
 * run generated code through the JIT API (include/seq.h): test_codegen_*.c and
 * test_jit*.c link jitmodel.c. */
#ifndef SEQ_TEST_JITMODEL_H
#define SEQ_TEST_JITMODEL_H

#include "seq.h"

enum { TU_MODEL_MAX_PARAMS = 64 };

typedef struct TuModel {
  SeqContext *cx;
  SeqModule *m;
  float *weights[TU_MODEL_MAX_PARAMS];
  int np;
} TuModel;

/* Compiles `file` (relative to the source tree) with `dims` for `threads`
 * threads at -O2 and binds every parameter to values uniform() * 1/sqrt(fan-in)
 * drawn in parameter order; fails the test on any error. */
void tu_model_open(TuModel *md, const char *file, const char *dims, int threads,
                   float (*uniform)(void));
void tu_model_close(TuModel *md);

#endif
