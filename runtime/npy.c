/* npy.c - NumPy .npy files, format versions 1.0, 2.0 and 3.0.
 *
 * Layout (numpy/lib/format.py): the magic "\x93NUMPY", a major and minor
 * version byte, the header length (2 bytes little-endian in 1.0, 4 bytes in
 * 2.0 and 3.0), then a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 * padded with spaces and a newline, then the raw C-order data. We parse the
 * dict by hand rather than evaluating Python: only the three keys numpy
 * writes, string, bool and int-tuple values, and nothing else is accepted.
 */
#include "runtime/rt_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* numpy refuses headers over 10000 bytes unless told otherwise; we allow
 * more but still bound what a lying length field can make us read. */
#define NPY_MAX_HEADER (1u << 20)
/* numpy pads the whole preamble to a multiple of this, so data is aligned. */
#define NPY_ALIGN 64

typedef struct NpyHeader {
  RtDType dtype;
  int ndim;
  int64_t shape[RT_MAX_RANK];
  size_t data_off; /* first byte of the array data */
} NpyHeader;

/* A cursor over the header text; every error names the file. */
typedef struct NpyParser {
  const char *start, *p, *end;
  const char *name;
  RtError *err;
} NpyParser;

static int npy_syntax(NpyParser *ps, const char *what) {
  return rt_fail(ps->err, RT_ERR_FORMAT, "%s: malformed .npy header: %s at header byte %ld",
                 ps->name, what, (long)(ps->p - ps->start));
}

static void npy_skip_ws(NpyParser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int npy_accept(NpyParser *ps, char c) {
  npy_skip_ws(ps);
  if (ps->p < ps->end && *ps->p == c) {
    ps->p++;
    return 1;
  }
  return 0;
}

/* string := "'" chars "'" | '"' chars '"'   (no escapes: no valid value has one) */
static int npy_string(NpyParser *ps, char *out, size_t cap) {
  npy_skip_ws(ps);
  if (ps->p >= ps->end || (*ps->p != '\'' && *ps->p != '"'))
    return npy_syntax(ps, "expected a string");
  char q = *ps->p++;
  size_t n = 0;
  while (ps->p < ps->end && *ps->p != q) {
    /* Over-long strings are kept truncated; they match no key or dtype. */
    if (n + 1 < cap) out[n++] = *ps->p;
    ps->p++;
  }
  if (ps->p >= ps->end) return npy_syntax(ps, "unterminated string");
  ps->p++;
  out[n] = 0;
  return RT_OK;
}

static int npy_word(NpyParser *ps, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, w, n) == 0) {
    ps->p += n;
    return 1;
  }
  return 0;
}

/* int := digits ['L']   (Python 2 numpy wrote long dimensions as 3L) */
static int npy_int(NpyParser *ps, int64_t *out) {
  npy_skip_ws(ps);
  if (ps->p < ps->end && *ps->p == '-')
    return rt_fail(ps->err, RT_ERR_FORMAT, "%s: negative dimension in .npy shape", ps->name);
  if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
    return npy_syntax(ps, "expected a dimension");
  int64_t v = 0;
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
    int d = *ps->p++ - '0';
    if (v > (INT64_MAX - d) / 10)
      return rt_fail(ps->err, RT_ERR_FORMAT, "%s: .npy shape dimension overflows int64", ps->name);
    v = v * 10 + d;
  }
  if (ps->p < ps->end && *ps->p == 'L') ps->p++;
  *out = v;
  return RT_OK;
}

/* shape := '(' ')' | '(' int ',' ')' | '(' int (',' int)+ [','] ')'
 * A one-element tuple needs its comma, as in Python: "(3)" is not a tuple. */
static int npy_shape(NpyParser *ps, NpyHeader *h) {
  if (!npy_accept(ps, '(')) return npy_syntax(ps, "expected '(' for shape");
  h->ndim = 0;
  if (npy_accept(ps, ')')) return RT_OK;
  for (;;) {
    int64_t d = 0;
    int rc = npy_int(ps, &d);
    if (rc) return rc;
    if (h->ndim == RT_MAX_RANK)
      return rt_fail(ps->err, RT_ERR_FORMAT, "%s: .npy shape has more than %d dimensions", ps->name,
                     RT_MAX_RANK);
    h->shape[h->ndim++] = d;
    int comma = npy_accept(ps, ',');
    if (npy_accept(ps, ')')) {
      if (h->ndim == 1 && !comma) return npy_syntax(ps, "shape (n) is not a tuple; expected (n,)");
      return RT_OK;
    }
    if (!comma) return npy_syntax(ps, "expected ',' or ')' in shape");
  }
}

/* Accepts '<' and '=' (native, which numpy only writes on a little-endian
 * host for these types) and the five element types the runtime knows. */
static int npy_descr(NpyParser *ps, const char *d, RtDType *out) {
  static const struct {
    const char *code;
    RtDType dtype;
  } codes[] = {{"f2", RT_F16}, {"f4", RT_F32}, {"f8", RT_F64}, {"i4", RT_I32}, {"i8", RT_I64}};
  if (d[0] == '>' && strlen(d) == 3)
    return rt_fail(ps->err, RT_ERR_DTYPE, "%s: big-endian data ('%s') is not supported", ps->name,
                   d);
  if (d[0] == '<' || d[0] == '=')
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
      if (strcmp(d + 1, codes[i].code) == 0) {
        *out = codes[i].dtype;
        return RT_OK;
      }
  return rt_fail(ps->err, RT_ERR_DTYPE,
                 "%s: unsupported .npy dtype '%s' (expected <f2, <f4, <f8, <i4 or <i8)", ps->name,
                 d);
}

/* header := '{' [entry (',' entry)* [',']] '}' whitespace
 * entry  := string ':' value, for exactly the keys descr, fortran_order, shape */
static int npy_parse_dict(NpyParser *ps, NpyHeader *h) {
  int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
  if (!npy_accept(ps, '{')) return npy_syntax(ps, "expected '{'");
  while (!npy_accept(ps, '}')) {
    char key[32], val[32];
    int rc = npy_string(ps, key, sizeof key);
    if (rc) return rc;
    if (!npy_accept(ps, ':')) return npy_syntax(ps, "expected ':'");
    int *seen = strcmp(key, "descr") == 0           ? &seen_descr
                : strcmp(key, "fortran_order") == 0 ? &seen_fortran
                : strcmp(key, "shape") == 0         ? &seen_shape
                                                    : NULL;
    if (!seen)
      return rt_fail(ps->err, RT_ERR_FORMAT, "%s: unexpected key '%s' in .npy header", ps->name,
                     key);
    if (*seen)
      return rt_fail(ps->err, RT_ERR_FORMAT, "%s: duplicate key '%s' in .npy header", ps->name,
                     key);
    *seen = 1;
    if (seen == &seen_descr) {
      npy_skip_ws(ps);
      if (ps->p < ps->end && *ps->p == '[')
        return rt_fail(ps->err, RT_ERR_DTYPE, "%s: structured .npy dtypes are not supported",
                       ps->name);
      if ((rc = npy_string(ps, val, sizeof val)) || (rc = npy_descr(ps, val, &h->dtype))) return rc;
    } else if (seen == &seen_fortran) {
      npy_skip_ws(ps);
      if (npy_word(ps, "True"))
        return rt_fail(ps->err, RT_ERR_FORMAT, "%s: Fortran order not supported", ps->name);
      if (!npy_word(ps, "False")) return npy_syntax(ps, "expected True or False");
    } else if ((rc = npy_shape(ps, h))) {
      return rc;
    }
    if (!npy_accept(ps, ',')) {
      if (!npy_accept(ps, '}')) return npy_syntax(ps, "expected ',' or '}'");
      break;
    }
  }
  npy_skip_ws(ps);
  if (ps->p != ps->end) return npy_syntax(ps, "unexpected text after '}'");
  if (!seen_descr || !seen_fortran || !seen_shape)
    return rt_fail(ps->err, RT_ERR_FORMAT, "%s: .npy header lacks '%s'", ps->name,
                   !seen_descr     ? "descr"
                   : !seen_fortran ? "fortran_order"
                                   : "shape");
  return RT_OK;
}

/* Parses the preamble and header. `buf` holds the first `avail` bytes of a
 * file of `total` bytes; the caller guarantees avail >= min(total, 12 +
 * NPY_MAX_HEADER), so a header that passes the length checks is in buf.
 * On success the data size has been checked against the file size too. */
static int npy_parse(const unsigned char *buf, size_t avail, int64_t total, const char *name,
                     NpyHeader *h, RtError *err) {
  if (total == 0) return rt_fail(err, RT_ERR_FORMAT, "%s: empty file, not a .npy file", name);
  size_t m = avail < sizeof npy_magic ? avail : sizeof npy_magic;
  if (memcmp(buf, npy_magic, m) != 0)
    return rt_fail(err, RT_ERR_FORMAT, "%s: not a .npy file (bad magic)", name);
  if (total < 10)
    return rt_fail(err, RT_ERR_FORMAT, "%s: truncated .npy preamble (%lld bytes)", name,
                   (long long)total);
  int major = buf[6], minor = buf[7];
  if (major < 1 || major > 3 || minor != 0)
    return rt_fail(err, RT_ERR_FORMAT, "%s: unsupported .npy format version %d.%d", name, major,
                   minor);
  size_t prefix = major == 1 ? 10 : 12;
  if (total < (int64_t)prefix)
    return rt_fail(err, RT_ERR_FORMAT, "%s: truncated .npy preamble (%lld bytes)", name,
                   (long long)total);
  uint32_t hlen = buf[8] | (uint32_t)buf[9] << 8;
  if (major > 1) hlen |= (uint32_t)buf[10] << 16 | (uint32_t)buf[11] << 24;
  if ((int64_t)hlen > total - (int64_t)prefix)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: .npy header length %lu runs past the end of the file (%lld bytes)", name,
                   (unsigned long)hlen, (long long)total);
  if (hlen > NPY_MAX_HEADER)
    return rt_fail(err, RT_ERR_LIMIT, "%s: .npy header of %lu bytes exceeds the limit of %u", name,
                   (unsigned long)hlen, NPY_MAX_HEADER);
  if (prefix + hlen > avail)
    return rt_fail(err, RT_ERR_ARG, "%s: internal error: .npy header not fully read", name);

  memset(h, 0, sizeof *h);
  const char *text = (const char *)buf + prefix;
  NpyParser ps = {text, text, text + hlen, name, err};
  int rc = npy_parse_dict(&ps, h);
  if (rc) return rc;
  h->data_off = prefix + hlen;

  RtTensor shape_only = {.dtype = h->dtype, .ndim = h->ndim};
  memcpy(shape_only.shape, h->shape, sizeof h->shape);
  int64_t n = rt_numel(&shape_only), size = (int64_t)rt_dtype_size(h->dtype);
  if (n < 0 || n > INT64_MAX / size)
    return rt_fail(err, RT_ERR_FORMAT, "%s: .npy shape is too large (element count overflows)",
                   name);
  int64_t expected = n * size, found = total - (int64_t)h->data_off;
  if (found < expected)
    return rt_fail(err, RT_ERR_FORMAT, "%s: truncated: expected %lld bytes of data, found %lld",
                   name, (long long)expected, (long long)found);
  if (found > expected)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: %lld bytes of trailing data after the array (expected %lld bytes of data)",
                   name, (long long)(found - expected), (long long)expected);
  return RT_OK;
}

static int npy_alloc(const NpyHeader *h, const char *name, RtTensor *out, RtError *err) {
  int rc = rt_tensor_alloc(out, h->dtype, h->ndim, h->shape, err);
  if (rc) {
    /* Prefix the allocator's message with the file it was for. */
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
    return rt_fail(err, rc, "%s: %s", name, msg);
  }
  return RT_OK;
}

int rt_npy_read_mem(const void *buf, size_t len, const char *name, RtTensor *out, RtError *err) {
  if (!name) name = "<memory>";
  if (!out) return rt_fail(err, RT_ERR_ARG, "%s: null output tensor", name);
  memset(out, 0, sizeof *out);
  if (!buf && len > 0) return rt_fail(err, RT_ERR_ARG, "%s: null buffer", name);
  if ((uint64_t)len > (uint64_t)RT_MAX_FILE_BYTES)
    return rt_fail(err, RT_ERR_LIMIT, "%s: %zu bytes exceeds the file size limit", name, len);
  NpyHeader h;
  int rc = npy_parse(buf ? buf : "", len, (int64_t)len, name, &h, err);
  if (rc || (rc = npy_alloc(&h, name, out, err))) return rc;
  size_t bytes = (size_t)rt_numel(out) * rt_dtype_size(out->dtype);
  memcpy(out->data, (const unsigned char *)buf + h.data_off, bytes);
  if (!rt_host_is_little_endian())
    rt_swap_elements(out->data, (size_t)rt_numel(out), rt_dtype_size(out->dtype));
  return RT_OK;
}

int rt_npy_read(const char *path, RtTensor *out, RtError *err) {
  if (!path) return rt_fail(err, RT_ERR_ARG, "rt_npy_read: null path");
  if (!out) return rt_fail(err, RT_ERR_ARG, "%s: null output tensor", path);
  memset(out, 0, sizeof *out);
  FILE *f;
  int64_t total;
  int rc = rt_open_file(path, &f, &total, err);
  if (rc) return rc;
  unsigned char *head = NULL;
  /* Read the preamble and the largest header we accept; the data goes
   * straight into the tensor afterwards, never through a second buffer. */
  size_t avail = total < 12 + (int64_t)NPY_MAX_HEADER ? (size_t)total : 12 + NPY_MAX_HEADER;
  head = malloc(avail ? avail : 1);
  if (!head) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", path);
    goto done;
  }
  if (rt_read_at(f, 0, head, avail) != 0) {
    rc = rt_fail(err, RT_ERR_IO, "%s: read failed", path);
    goto done;
  }
  NpyHeader h;
  if ((rc = npy_parse(head, avail, total, path, &h, err))) goto done;
  if ((rc = npy_alloc(&h, path, out, err))) goto done;
  size_t bytes = (size_t)rt_numel(out) * rt_dtype_size(out->dtype);
  if (rt_read_at(f, (int64_t)h.data_off, out->data, bytes) != 0) {
    rt_tensor_free(out);
    rc = rt_fail(err, RT_ERR_IO, "%s: read failed (file changed while reading?)", path);
    goto done;
  }
  if (!rt_host_is_little_endian())
    rt_swap_elements(out->data, (size_t)rt_numel(out), rt_dtype_size(out->dtype));
done:
  free(head);
  fclose(f);
  return rc;
}

/* ---- writer ------------------------------------------------------------- */

static int npy_write_data(FILE *f, const RtTensor *t, size_t n) {
  size_t es = rt_dtype_size(t->dtype);
  if (rt_host_is_little_endian()) return fwrite(t->data, es, n, f) == n ? 0 : -1;
  /* Big-endian host: swap a chunk at a time rather than copying the tensor. */
  unsigned char chunk[1 << 16];
  size_t per = sizeof chunk / es;
  for (size_t i = 0; i < n; i += per) {
    size_t k = n - i < per ? n - i : per;
    memcpy(chunk, (const unsigned char *)t->data + i * es, k * es);
    rt_swap_elements(chunk, k, es);
    if (fwrite(chunk, es, k, f) != k) return -1;
  }
  return 0;
}

int rt_npy_write(const char *path, const RtTensor *t, RtError *err) {
  if (!path) return rt_fail(err, RT_ERR_ARG, "rt_npy_write: null path");
  if (!t) return rt_fail(err, RT_ERR_ARG, "%s: null tensor", path);
  static const char *const descr[] = {
      [RT_F32] = "<f4", [RT_F64] = "<f8", [RT_F16] = "<f2", [RT_I32] = "<i4", [RT_I64] = "<i8"};
  if (!rt_dtype_valid((int)t->dtype))
    return rt_fail(err, RT_ERR_ARG, "%s: invalid dtype %d", path, (int)t->dtype);
  if (t->dtype == RT_BF16)
    return rt_fail(err, RT_ERR_DTYPE, "%s: .npy has no bfloat16 type; convert to f32 first", path);
  int64_t n = rt_numel(t);
  if (n < 0) return rt_fail(err, RT_ERR_ARG, "%s: invalid tensor shape", path);
  if (n > 0 && !t->data) return rt_fail(err, RT_ERR_ARG, "%s: tensor has no data", path);

  /* The dict exactly as numpy writes it, so that our files and numpy's are
   * byte-identical: keys sorted, then spare spaces that let the first
   * dimension grow in place (GROWTH_AXIS_MAX_DIGITS = 21 in format.py). */
  char dict[512];
  int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     descr[t->dtype]);
  for (int i = 0; i < t->ndim; i++)
    len += snprintf(dict + len, sizeof dict - (size_t)len, "%s%lld", i ? ", " : "",
                    (long long)t->shape[i]);
  len += snprintf(dict + len, sizeof dict - (size_t)len, "%s), }", t->ndim == 1 ? "," : "");
  if (t->ndim > 0) {
    int digits = snprintf(NULL, 0, "%lld", (long long)t->shape[0]);
    len += snprintf(dict + len, sizeof dict - (size_t)len, "%*s", 21 - digits, "");
  }

  /* Pad with spaces so that preamble + header + '\n' is a multiple of 64;
   * like numpy, a header that is already aligned still gets 64 spaces.
   * Version 2.0 only when the header overflows 1.0's 16-bit length. */
  size_t prefix = 10, hlen = (size_t)len + 1;
  hlen += NPY_ALIGN - (prefix + hlen) % NPY_ALIGN;
  int major = 1;
  if (hlen > 0xffff) {
    major = 2;
    prefix = 12;
    hlen = (size_t)len + 1;
    hlen += NPY_ALIGN - (prefix + hlen) % NPY_ALIGN;
  }
  unsigned char pre[12];
  memcpy(pre, npy_magic, 6);
  pre[6] = (unsigned char)major;
  pre[7] = 0;
  for (size_t i = 0; i + 8 < prefix; i++) pre[8 + i] = (unsigned char)(hlen >> (8 * i));

  FILE *f = fopen(path, "wb");
  if (!f) return rt_fail(err, RT_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
  int bad = fwrite(pre, 1, prefix, f) != prefix || fwrite(dict, 1, (size_t)len, f) != (size_t)len;
  for (size_t i = (size_t)len; !bad && i + 1 < hlen; i++) bad = fputc(' ', f) == EOF;
  bad = bad || fputc('\n', f) == EOF || npy_write_data(f, t, (size_t)n) != 0;
  int saved = errno;
  if (fclose(f) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (bad) {
    remove(path);
    return rt_fail(err, RT_ERR_IO, "%s: write failed: %s", path, strerror(saved));
  }
  return RT_OK;
}
