/* fuzz_safetensors.c - libFuzzer target for the safetensors reader: open the
 * bytes as a file, then read every tensor the header lists, as float32 and as
 * float64. Every step either succeeds with storage matching the shape or
 * returns an error with a message. Built only with -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <string.h>

#include "runtime/rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void touch(const RtTensor *t) {
  int64_t n = rt_numel(t);
  if (n < 0) __builtin_trap();
  size_t bytes = (size_t)n * rt_dtype_size(t->dtype);
  volatile unsigned char sum = 0;
  for (size_t i = 0; i < bytes; i++) sum ^= ((const unsigned char *)t->data)[i];
  (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  RtSafetensors *st = NULL;
  RtError err;
  err.msg[0] = 0;
  if (rt_st_open_mem(data, size, "fuzz.safetensors", &st, &err) != 0) {
    if (!err.msg[0]) __builtin_trap();
    return 0;
  }
  int n = rt_st_count(st);
  for (int i = 0; i < n; i++) {
    const RtTensorInfo *info = rt_st_info(st, i);
    if (!info || !info->name) __builtin_trap();
    if (rt_st_find(st, info->name) == NULL) __builtin_trap();
    static const RtDType to[2] = {RT_F32, RT_F64};
    for (int k = 0; k < 2; k++) {
      RtTensor t;
      memset(&t, 0, sizeof t);
      err.msg[0] = 0;
      if (rt_st_read(st, info->name, to[k], &t, &err) == 0) {
        if (t.ndim != info->ndim) __builtin_trap();
        touch(&t);
        rt_tensor_free(&t);
      } else if (!err.msg[0]) {
        __builtin_trap();
      }
    }
  }
  rt_st_close(st);
  return 0;
}
