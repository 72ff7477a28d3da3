/* jitmodel.c - see jitmodel.h. */
#include "jitmodel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

void tu_model_open(TuModel *md, const char *file, const char *dims, int threads,
                   float (*uniform)(void)) {
  memset(md, 0, sizeof *md);
  md->cx = seq_context_create();
  assert_non_null(md->cx);
  SeqOptions opt = {.opt_level = 2, .dims = dims, .num_threads = threads};
  if (seq_module_from_file(md->cx, tu_src(file), &opt, &md->m) != SEQ_OK)
    fail_msg("%s: %s", file, md->m ? seq_module_error(md->m) : "out of memory");
  md->np = seq_module_count(md->m, SEQ_PARAM);
  assert_true(md->np <= TU_MODEL_MAX_PARAMS);
  for (int i = 0; i < md->np; i++) {
    SeqTensorInfo ti;
    assert_int_equal(seq_module_info(md->m, SEQ_PARAM, i, &ti), SEQ_OK);
    md->weights[i] = malloc(sizeof(float) * (size_t)ti.numel);
    assert_non_null(md->weights[i]);
    float k = 1.0f / sqrtf((float)ti.shape[ti.ndim - 1]);
    for (int64_t j = 0; j < ti.numel; j++) md->weights[i][j] = k * uniform();
    assert_int_equal(seq_module_bind_weight(md->m, ti.name, md->weights[i], ti.numel), SEQ_OK);
  }
}

void tu_model_close(TuModel *md) {
  for (int i = 0; i < md->np; i++) free(md->weights[i]);
  seq_module_destroy(md->m);
  seq_context_destroy(md->cx);
}
