/* fuzz_npy.c - libFuzzer target for the .npy reader: any bytes either give a
 * tensor whose shape matches its storage (touched here end to end so ASan sees
 * a short buffer) or an error status with a message. Built only with
 * -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <string.h>

#include "runtime/rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  RtTensor t;
  RtError err;
  memset(&t, 0, sizeof t);
  int rc = rt_npy_read_mem(data, size, "fuzz.npy", &t, &err);
  if (rc != 0) {
    /* A failure must say why. */
    if (!err.msg[0]) __builtin_trap();
    return 0;
  }
  int64_t n = rt_numel(&t);
  if (n < 0 || t.ndim < 0 || t.ndim > RT_MAX_RANK) __builtin_trap();
  size_t bytes = (size_t)n * rt_dtype_size(t.dtype);
  volatile unsigned char sum = 0;
  for (size_t i = 0; i < bytes; i++) sum ^= ((const unsigned char *)t.data)[i];
  (void)sum;
  RtTensor f;
  if (rt_tensor_convert(&t, RT_F64, &f, &err) == 0) rt_tensor_free(&f);
  rt_tensor_free(&t);
  return 0;
}
