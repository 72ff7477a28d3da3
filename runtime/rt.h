/* rt.h - the runtime library generated code and the CLI link against: host
 * tensors and tensor file I/O (.npy, safetensors). It depends on nothing of
 * the compiler (no LLVM, no IR), only on libc, libm and jansson.
 *
 * Error convention: every function that can fail returns 0 on success and a
 * nonzero RtStatus otherwise, and writes a one-line message naming the file,
 * tensor or argument into the caller's RtError. Nothing here exits or aborts.
 */
#ifndef SEQ_RT_H
#define SEQ_RT_H

#include <stddef.h>
#include <stdint.h>

#define RT_MAX_RANK 8

typedef enum {
  RT_OK = 0,
  RT_ERR_IO,      /* cannot open/read/write */
  RT_ERR_FORMAT,  /* malformed or truncated file, lying header */
  RT_ERR_DTYPE,   /* unsupported or unexpected dtype */
  RT_ERR_SHAPE,   /* shape mismatch */
  RT_ERR_MISSING, /* a named tensor is absent */
  RT_ERR_NOMEM,
  RT_ERR_ARG,   /* bad argument (null pointer, out of range) */
  RT_ERR_LIMIT, /* a size bound was exceeded */
} RtStatus;

typedef struct RtError {
  char msg[512];
} RtError;

typedef enum {
  RT_F32,
  RT_F64,
  RT_F16,
  RT_BF16,
  RT_I32,
  RT_I64,
} RtDType;

size_t rt_dtype_size(RtDType t);
const char *rt_dtype_name(RtDType t); /* "f32", "bf16", ... */

/* A dense, C-order host tensor. `data` is owned by the tensor when `owned`. */
typedef struct RtTensor {
  RtDType dtype;
  int ndim;
  int64_t shape[RT_MAX_RANK];
  void *data;
  int owned;
} RtTensor;

/* Number of elements; -1 if it overflows int64. */
int64_t rt_numel(const RtTensor *t);
/* Allocates zeroed storage for the given shape; fails cleanly on overflow. */
int rt_tensor_alloc(RtTensor *t, RtDType dtype, int ndim, const int64_t *shape, RtError *err);
void rt_tensor_free(RtTensor *t);
/* Converts (a copy) to float32 or float64; integers convert exactly where representable. */
int rt_tensor_convert(const RtTensor *src, RtDType to, RtTensor *dst, RtError *err);

/* ---- .npy --------------------------------------------------------------- */
/* Reads format versions 1.0, 2.0 (and 3.0), little-endian f32, f64, i32, i64
 * (also f16), C order. Fortran order, big-endian, object arrays and headers
 * that disagree with the file size are errors naming the file. */
int rt_npy_read(const char *path, RtTensor *out, RtError *err);
int rt_npy_read_mem(const void *buf, size_t len, const char *name, RtTensor *out, RtError *err);
/* Writes version 1.0 (2.0 if the header would not fit). */
int rt_npy_write(const char *path, const RtTensor *t, RtError *err);

/* ---- safetensors -------------------------------------------------------- */
/* Header parsed with jansson; offsets, sizes and shapes are validated against
 * the file before any tensor is touched. Tensors are read on demand. */
typedef struct RtSafetensors RtSafetensors;

typedef struct RtTensorInfo {
  const char *name;
  RtDType dtype;
  int ndim;
  int64_t shape[RT_MAX_RANK];
} RtTensorInfo;

int rt_st_open(const char *path, RtSafetensors **out, RtError *err);
int rt_st_open_mem(const void *buf, size_t len, const char *name, RtSafetensors **out,
                   RtError *err); /* copies buf */
void rt_st_close(RtSafetensors *st);
int rt_st_count(const RtSafetensors *st);
const RtTensorInfo *rt_st_info(const RtSafetensors *st, int i);
const RtTensorInfo *rt_st_find(const RtSafetensors *st, const char *name); /* NULL if absent */
/* Reads a tensor converted to float32 or float64 (F32, F64, F16, BF16 sources;
 * integer tensors are converted too). */
int rt_st_read(const RtSafetensors *st, const char *name, RtDType to, RtTensor *out, RtError *err);
/* A tensor of any stored dtype, even one rt_st_find does not list (U8,
 * F8_*): its shape is valid, its info.dtype only if rt_st_find lists it. */
const RtTensorInfo *rt_st_find_any(const RtSafetensors *st, const char *name);
/* rt_st_read for a model weight: only float dtypes (F32, F64, F16, BF16, as
 * docs/cli.md lists); any other is RT_ERR_DTYPE naming the tensor and file. */
int rt_st_read_weight(const RtSafetensors *st, const char *name, RtDType to, RtTensor *out,
                      RtError *err);
/* Writes tensors (names[i], tensors[i]) as a safetensors file. */
int rt_st_write(const char *path, int n, const char *const *names, const RtTensor *tensors,
                RtError *err);

/* Bound on weight and input files (bytes); larger files are refused. */
#define RT_MAX_FILE_BYTES ((int64_t)64 << 30)

#endif
