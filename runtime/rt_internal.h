/* rt_internal.h - helpers shared by the runtime's .c files and nobody else.
 * Not part of the runtime's interface (that is rt.h). */
#ifndef SEQ_RT_INTERNAL_H
#define SEQ_RT_INTERNAL_H

#include "runtime/rt.h"

#include <stdio.h>

/* Formats a one-line message into err (which may be NULL) and returns status,
 * so that error paths read `return rt_fail(err, RT_ERR_IO, "%s: ...", path);`. */
int rt_fail(RtError *err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Files store little-endian bytes; on a big-endian host every element is
 * swapped after reading and before writing. */
int rt_host_is_little_endian(void);
void rt_swap_elements(void *data, size_t count, size_t elem_size);

/* dtype is one of the six RtDType values (guards against garbage enums). */
int rt_dtype_valid(int dtype);

/* Opens a regular file for reading and gets its size, refusing files over
 * RT_MAX_FILE_BYTES; on failure *f is NULL and err names the path. */
int rt_open_file(const char *path, FILE **f, int64_t *size, RtError *err);

/* Reads exactly n bytes at offset off; 0 on success, -1 on a short read. */
int rt_read_at(FILE *f, int64_t off, void *buf, size_t n);

/* Half-precision decoders, exact (every f16 and bf16 value is a float). */
float rt_f16_to_f32(uint16_t h);
float rt_bf16_to_f32(uint16_t b);

#endif
