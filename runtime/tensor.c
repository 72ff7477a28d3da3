/* tensor.c - host tensors: sizes, allocation, dtype conversion, and the small
 * helpers (errors, byte order, file reads) that npy.c and safetensors.c share.
 *
 * The runtime stands alone: plain malloc/free, no compiler headers. */
#include "runtime/rt_internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/types.h>

int rt_fail(RtError *err, int status, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return status;
}

int rt_host_is_little_endian(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

void rt_swap_elements(void *data, size_t count, size_t elem_size) {
  unsigned char *p = data;
  for (size_t i = 0; i < count; i++, p += elem_size)
    for (size_t a = 0, b = elem_size - 1; a < b; a++, b--) {
      unsigned char t = p[a];
      p[a] = p[b];
      p[b] = t;
    }
}

int rt_dtype_valid(int dtype) {
  return dtype >= RT_F32 && dtype <= RT_I64;
}

int rt_open_file(const char *path, FILE **f, int64_t *size, RtError *err) {
  *f = fopen(path, "rb");
  if (!*f) return rt_fail(err, RT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  /* Directories open fine on Linux and pipes have no size; both are
   * refused here rather than failing obscurely later. */
  struct stat sb;
  int rc = RT_OK;
  if (fstat(fileno(*f), &sb) != 0)
    rc = rt_fail(err, RT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
  else if (!S_ISREG(sb.st_mode))
    rc = rt_fail(err, RT_ERR_IO, "%s: not a regular file", path);
  else if ((int64_t)sb.st_size > RT_MAX_FILE_BYTES)
    rc = rt_fail(err, RT_ERR_LIMIT, "%s: %lld bytes exceeds the file size limit of %lld", path,
                 (long long)sb.st_size, (long long)RT_MAX_FILE_BYTES);
  if (rc) {
    fclose(*f);
    *f = NULL;
    return rc;
  }
  *size = (int64_t)sb.st_size;
  return RT_OK;
}

int rt_read_at(FILE *f, int64_t off, void *buf, size_t n) {
  if ((int64_t)(off_t)off != off || fseeko(f, (off_t)off, SEEK_SET) != 0) return -1;
  return fread(buf, 1, n, f) == n ? 0 : -1;
}

size_t rt_dtype_size(RtDType t) {
  switch (t) {
  case RT_F32:
    return 4;
  case RT_F64:
    return 8;
  case RT_F16:
    return 2;
  case RT_BF16:
    return 2;
  case RT_I32:
    return 4;
  case RT_I64:
    return 8;
  }
  return 0;
}

const char *rt_dtype_name(RtDType t) {
  switch (t) {
  case RT_F32:
    return "f32";
  case RT_F64:
    return "f64";
  case RT_F16:
    return "f16";
  case RT_BF16:
    return "bf16";
  case RT_I32:
    return "i32";
  case RT_I64:
    return "i64";
  }
  return "invalid";
}

int64_t rt_numel(const RtTensor *t) {
  if (!t || t->ndim < 0 || t->ndim > RT_MAX_RANK) return -1;
  /* The product of the nonzero dimensions must fit even when a zero makes
   * the count 0: [0, 2^40, 2^40] is as much a lying shape as [2^40, 2^40],
   * and the answer should not depend on where the zero sits. */
  int64_t n = 1;
  int empty = 0;
  for (int i = 0; i < t->ndim; i++) {
    int64_t d = t->shape[i];
    if (d < 0) return -1;
    if (d == 0) {
      empty = 1;
      continue;
    }
    if (n > INT64_MAX / d) return -1;
    n *= d;
  }
  return empty ? 0 : n;
}

int rt_tensor_alloc(RtTensor *t, RtDType dtype, int ndim, const int64_t *shape, RtError *err) {
  if (!t) return rt_fail(err, RT_ERR_ARG, "rt_tensor_alloc: null tensor");
  memset(t, 0, sizeof *t);
  if (!rt_dtype_valid((int)dtype))
    return rt_fail(err, RT_ERR_ARG, "rt_tensor_alloc: invalid dtype %d", (int)dtype);
  if (ndim < 0 || ndim > RT_MAX_RANK)
    return rt_fail(err, RT_ERR_ARG, "rt_tensor_alloc: rank %d outside 0..%d", ndim, RT_MAX_RANK);
  if (ndim > 0 && !shape) return rt_fail(err, RT_ERR_ARG, "rt_tensor_alloc: null shape");
  RtTensor tmp = {.dtype = dtype, .ndim = ndim};
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return rt_fail(err, RT_ERR_ARG, "rt_tensor_alloc: negative dimension %lld",
                     (long long)shape[i]);
    tmp.shape[i] = shape[i];
  }
  int64_t n = rt_numel(&tmp);
  int64_t size = (int64_t)rt_dtype_size(dtype);
  if (n < 0 || n > RT_MAX_FILE_BYTES / size || (uint64_t)(n * size) > SIZE_MAX)
    return rt_fail(err, RT_ERR_LIMIT, "rt_tensor_alloc: %s tensor too large (limit %lld bytes)",
                   rt_dtype_name(dtype), (long long)RT_MAX_FILE_BYTES);
  /* calloc(0) may return NULL; one byte keeps "data == NULL" meaning "failed". */
  size_t bytes = (size_t)(n * size);
  tmp.data = calloc(bytes ? bytes : 1, 1);
  if (!tmp.data)
    return rt_fail(err, RT_ERR_NOMEM, "rt_tensor_alloc: out of memory for %zu bytes", bytes);
  tmp.owned = 1;
  *t = tmp;
  return RT_OK;
}

void rt_tensor_free(RtTensor *t) {
  if (!t) return;
  if (t->owned) free(t->data);
  t->data = NULL;
  t->owned = 0;
}

float rt_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    /* Inf or NaN; the NaN payload moves to the top of the f32 mantissa. */
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    /* Subnormal: mant * 2^-24. Normalise so the leading 1 becomes implicit;
     * every f16 subnormal is a normal f32. */
    int e = -1;
    do {
      mant <<= 1;
      e++;
    } while (!(mant & 0x400));
    bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

float rt_bf16_to_f32(uint16_t b) {
  /* bfloat16 is the top half of a float32, so widening is a shift. */
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Each source type is read once per element and converted straight to the
 * destination: going i64 -> double -> float would round twice. */
#define CONVERT_LOOP(DST_T, SRC_T, EXPR)                                                           \
  do {                                                                                             \
    const SRC_T *s = src->data;                                                                    \
    DST_T *d = out.data;                                                                           \
    for (int64_t i = 0; i < n; i++) d[i] = (DST_T)(EXPR);                                          \
  } while (0)

#define CONVERT_ALL(DST_T)                                                                         \
  switch (src->dtype) {                                                                            \
  case RT_F32:                                                                                     \
    CONVERT_LOOP(DST_T, float, s[i]);                                                              \
    break;                                                                                         \
  case RT_F64:                                                                                     \
    CONVERT_LOOP(DST_T, double, s[i]);                                                             \
    break;                                                                                         \
  case RT_F16:                                                                                     \
    CONVERT_LOOP(DST_T, uint16_t, rt_f16_to_f32(s[i]));                                            \
    break;                                                                                         \
  case RT_BF16:                                                                                    \
    CONVERT_LOOP(DST_T, uint16_t, rt_bf16_to_f32(s[i]));                                           \
    break;                                                                                         \
  case RT_I32:                                                                                     \
    CONVERT_LOOP(DST_T, int32_t, s[i]);                                                            \
    break;                                                                                         \
  case RT_I64:                                                                                     \
    CONVERT_LOOP(DST_T, int64_t, s[i]);                                                            \
    break;                                                                                         \
  }

int rt_tensor_convert(const RtTensor *src, RtDType to, RtTensor *dst, RtError *err) {
  if (!src || !dst) return rt_fail(err, RT_ERR_ARG, "rt_tensor_convert: null tensor");
  /* Converting in place would drop the source buffer on the floor. */
  if (src == dst)
    return rt_fail(err, RT_ERR_ARG, "rt_tensor_convert: source and destination are the same");
  if (to != RT_F32 && to != RT_F64)
    return rt_fail(err, RT_ERR_DTYPE, "rt_tensor_convert: can only convert to f32 or f64, not %s",
                   rt_dtype_name(to));
  if (!rt_dtype_valid((int)src->dtype))
    return rt_fail(err, RT_ERR_ARG, "rt_tensor_convert: invalid source dtype %d", (int)src->dtype);
  int64_t n = rt_numel(src);
  if (n < 0) return rt_fail(err, RT_ERR_ARG, "rt_tensor_convert: invalid source shape");
  if (n > 0 && !src->data) return rt_fail(err, RT_ERR_ARG, "rt_tensor_convert: source has no data");
  RtTensor out;
  int rc = rt_tensor_alloc(&out, to, src->ndim, src->shape, err);
  if (rc) return rc;
  if (to == RT_F32) {
    CONVERT_ALL(float)
  } else {
    CONVERT_ALL(double)
  }
  *dst = out;
  return RT_OK;
}
