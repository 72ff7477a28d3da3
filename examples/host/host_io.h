/* host_io.h - just enough file reading for the host examples: float32 .npy
 * arrays and float32 tensors of a safetensors file. A real host has its own
 * way of loading data; libseq binds safetensors itself
 * (seq_module_bind_safetensors), a compiled .so takes plain pointers. */
#ifndef HOST_IO_H
#define HOST_IO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a little-endian float32, C-order .npy file: returns malloc'ed data
 * and its shape (up to 8 axes), or NULL. */
static inline float *read_npy(const char *path, int *ndim, int64_t shape[8]) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char pre[10];
  char header[4096];
  float *data = NULL;
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY\x01", 7) != 0) goto out;
  size_t hlen = pre[8] | (size_t)pre[9] << 8; /* format version 1.0 */
  if (hlen >= sizeof header || fread(header, 1, hlen, f) != hlen) goto out;
  header[hlen] = 0;
  if (!strstr(header, "'<f4'") || !strstr(header, "'fortran_order': False")) goto out;
  const char *p = strstr(header, "'shape': (");
  if (!p) goto out;
  p += strlen("'shape': (");
  int64_t n = 1;
  for (*ndim = 0; *ndim < 8 && *p != ')'; (*ndim)++) {
    shape[*ndim] = strtoll(p, (char **)&p, 10);
    n *= shape[*ndim];
    while (*p == ',' || *p == ' ') p++;
  }
  data = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (data && fread(data, sizeof(float), (size_t)n, f) != (size_t)n) {
    free(data);
    data = NULL;
  }
out:
  fclose(f);
  return data;
}

/* Reads the float32 tensor `name` of a safetensors file (8-byte header size,
 * a JSON header, then the data): malloc'ed data and its element count, or NULL. */
static inline float *read_safetensor(const char *path, const char *name, int64_t *numel) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char len8[8];
  char key[256], *header = NULL;
  float *data = NULL;
  if (fread(len8, 1, 8, f) != 8) goto out;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
  if (hlen > (1u << 24) || !(header = malloc(hlen + 1)) || fread(header, 1, hlen, f) != hlen)
    goto out;
  header[hlen] = 0;
  snprintf(key, sizeof key, "\"%s\":", name);
  const char *entry = strstr(header, key);
  const char *offs = entry ? strstr(entry, "\"data_offsets\":[") : NULL;
  const char *dtype = entry ? strstr(entry, "\"dtype\":") : NULL;
  unsigned long long begin, end;
  if (!offs || !dtype || dtype > offs || strncmp(dtype, "\"dtype\":\"F32\"", 13) != 0 ||
      sscanf(offs, "\"data_offsets\":[%llu,%llu]", &begin, &end) != 2 || end < begin)
    goto out;
  *numel = (int64_t)((end - begin) / sizeof(float));
  data = malloc(end - begin + 1);
  if (data && (fseek(f, (long)(8 + hlen + begin), SEEK_SET) != 0 ||
               fread(data, 1, end - begin, f) != end - begin)) {
    free(data);
    data = NULL;
  }
out:
  free(header);
  fclose(f);
  return data;
}

/* Largest |a[i] - b[i]|. */
static inline double max_abs_diff(const float *a, const float *b, int64_t n) {
  double e = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
    if (!(d <= e)) e = d;
  }
  return e;
}

#endif
