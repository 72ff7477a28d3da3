/* safetensors.c - the safetensors format (huggingface/safetensors).
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON, then the
 * data buffer. The JSON maps each tensor name to
 *   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data buffer, plus an optional
 * "__metadata__" object of strings.
 *
 * The header is untrusted: every offset, shape and size is checked against
 * the file before any tensor is read, so that a lying header is reported
 * with the file and tensor it concerns instead of causing a huge allocation
 * or a read past the end. As in the reference implementation, the tensors
 * must tile the data buffer exactly: no overlaps, no holes, nothing after.
 */
#include "runtime/rt_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The reference implementation's bound on the header (MAX_HEADER_SIZE). */
#define ST_MAX_HEADER 100000000

/* Every dtype of the safetensors spec, with its size in bits (some are
 * sub-byte), so that offsets can be validated even for tensors we cannot
 * read; `rt` is -1 for those. */
static const struct {
  const char *name;
  int bits;
  int rt;
} st_dtypes[] = {
    {"F64", 64, RT_F64}, {"F32", 32, RT_F32}, {"F16", 16, RT_F16}, {"BF16", 16, RT_BF16},
    {"I64", 64, RT_I64}, {"I32", 32, RT_I32}, {"I16", 16, -1},     {"I8", 8, -1},
    {"U64", 64, -1},     {"U32", 32, -1},     {"U16", 16, -1},     {"U8", 8, -1},
    {"BOOL", 8, -1},     {"F8_E5M2", 8, -1},  {"F8_E4M3", 8, -1},  {"F8_E8M0", 8, -1},
    {"F6_E2M3", 6, -1},  {"F6_E3M2", 6, -1},  {"F4", 4, -1},       {"C64", 64, -1},
};

typedef struct StEntry {
  RtTensorInfo info; /* info.name is owned; info.dtype is valid only if readable */
  const char *file_dtype;
  int readable;
  int64_t begin, end; /* byte range relative to the data buffer */
} StEntry;

struct RtSafetensors {
  char *name;         /* path or caller's name, for messages */
  FILE *f;            /* open file, or NULL when reading from mem */
  unsigned char *mem; /* whole copied buffer when opened from memory */
  int64_t data_start, data_size;
  StEntry *ent; /* in header order */
  int n;
  StEntry **by_name; /* sorted by name, for bsearch */
  int *readable;     /* indices of entries with a supported dtype, header order */
  int nreadable;
};

static const char *st_dtype_name(RtDType t) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i].rt == (int)t) return st_dtypes[i].name;
  return "?";
}

void rt_st_close(RtSafetensors *st) {
  if (!st) return;
  for (int i = 0; i < st->n; i++) free((char *)st->ent[i].info.name);
  free(st->ent);
  free(st->by_name);
  free(st->readable);
  free(st->mem);
  free(st->name);
  if (st->f) fclose(st->f);
  free(st);
}

/* Reads a non-negative JSON integer; 0 on success. */
static int st_nonneg_int(const json_t *v, int64_t *out) {
  if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
  *out = (int64_t)json_integer_value(v);
  return 0;
}

/* Writes "[2, 3]" for messages. */
static void st_shape_str(const RtTensorInfo *ti, char *buf, size_t cap) {
  size_t len = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ti->ndim && len < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)ti->shape[i]);
  if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* Validates one header entry `key: val` into e (whose name is already set). */
static int st_parse_entry(const RtSafetensors *st, const char *key, json_t *val, StEntry *e,
                          RtError *err) {
  const char *file = st->name;
  if (!json_is_object(val))
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", file, key);
  json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
         *jo = json_object_get(val, "data_offsets");
  if (!json_is_string(jd))
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", file,
                   key);
  if (!json_is_array(js))
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", file,
                   key);
  if (!json_is_array(jo) || json_array_size(jo) != 2)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: tensor '%s': \"data_offsets\" must be an array [begin, end]", file, key);

  const char *dname = json_string_value(jd);
  int bits = 0;
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (strcmp(dname, st_dtypes[i].name) == 0) {
      bits = st_dtypes[i].bits;
      e->file_dtype = st_dtypes[i].name;
      e->readable = st_dtypes[i].rt >= 0;
      e->info.dtype = e->readable ? (RtDType)st_dtypes[i].rt : RT_F32;
    }
  if (!bits)
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", file, key,
                   dname);

  size_t rank = json_array_size(js);
  if (rank > RT_MAX_RANK)
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': rank %zu exceeds the limit of %d", file,
                   key, rank, RT_MAX_RANK);
  e->info.ndim = (int)rank;
  for (size_t i = 0; i < rank; i++)
    if (st_nonneg_int(json_array_get(js, i), &e->info.shape[i]) != 0)
      return rt_fail(err, RT_ERR_FORMAT,
                     "%s: tensor '%s': shape entries must be non-negative integers", file, key);
  if (st_nonneg_int(json_array_get(jo, 0), &e->begin) != 0 ||
      st_nonneg_int(json_array_get(jo, 1), &e->end) != 0)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: tensor '%s': data_offsets must be non-negative integers", file, key);
  if (e->begin > e->end || e->end > st->data_size)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: tensor '%s': data_offsets [%lld, %lld] outside the data buffer of %lld "
                   "bytes",
                   file, key, (long long)e->begin, (long long)e->end, (long long)st->data_size);

  /* Size in bits, overflow-checked; sub-byte dtypes must fill whole bytes. */
  char shape[256];
  st_shape_str(&e->info, shape, sizeof shape);
  RtTensor probe = {.ndim = e->info.ndim};
  memcpy(probe.shape, e->info.shape, sizeof probe.shape);
  int64_t numel = rt_numel(&probe);
  if (numel < 0 || numel > INT64_MAX / bits)
    return rt_fail(err, RT_ERR_FORMAT, "%s: tensor '%s': shape %s is too large", file, key, shape);
  int64_t nbits = numel * bits;
  if (nbits % 8 != 0)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: tensor '%s': shape %s of %s is not a whole number of "
                   "bytes",
                   file, key, shape, e->file_dtype);
  if (nbits / 8 != e->end - e->begin)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but shape %s of %s "
                   "needs %lld",
                   file, key, (long long)e->begin, (long long)e->end,
                   (long long)(e->end - e->begin), shape, e->file_dtype, (long long)(nbits / 8));
  return RT_OK;
}

/* `__metadata__` is a flat map of strings (the reference rejects anything else). */
static int st_check_metadata(const RtSafetensors *st, json_t *meta, RtError *err) {
  const char *k;
  json_t *v;
  if (!json_is_object(meta))
    return rt_fail(err, RT_ERR_FORMAT, "%s: \"__metadata__\" is not an object", st->name);
  json_object_foreach(meta, k, v) {
    if (!json_is_string(v))
      return rt_fail(err, RT_ERR_FORMAT, "%s: \"__metadata__\" value for '%s' is not a string",
                     st->name, k);
  }
  return RT_OK;
}

static int st_cmp_offset(const void *a, const void *b) {
  const StEntry *x = *(StEntry *const *)a, *y = *(StEntry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static int st_cmp_name(const void *a, const void *b) {
  return strcmp((*(StEntry *const *)a)->info.name, (*(StEntry *const *)b)->info.name);
}

/* The tensors (ignoring empty ones, which occupy nothing) must tile
 * [0, data_size) exactly. `order` is scratch space for n pointers. */
static int st_check_tiling(const RtSafetensors *st, StEntry **order, RtError *err) {
  for (int i = 0; i < st->n; i++) order[i] = &st->ent[i];
  qsort(order, (size_t)st->n, sizeof *order, st_cmp_offset);
  int64_t pos = 0;
  const StEntry *prev = NULL;
  for (int i = 0; i < st->n; i++) {
    const StEntry *e = order[i];
    if (e->begin == e->end) continue;
    if (e->begin < pos)
      return rt_fail(err, RT_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data buffer",
                     st->name, prev->info.name, e->info.name);
    if (e->begin > pos)
      return rt_fail(err, RT_ERR_FORMAT,
                     "%s: data bytes [%lld, %lld) before tensor '%s' belong to no tensor", st->name,
                     (long long)pos, (long long)e->begin, e->info.name);
    pos = e->end;
    prev = e;
  }
  if (pos != st->data_size)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: %lld bytes at the end of the data buffer belong to no tensor", st->name,
                   (long long)(st->data_size - pos));
  return RT_OK;
}

/* Parses and validates the JSON header, filling st's tables. */
static int st_parse_header(RtSafetensors *st, const char *json, size_t len, RtError *err) {
  json_error_t jerr;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return rt_fail(err, RT_ERR_FORMAT, "%s: safetensors header is not valid JSON: %s (byte %d)",
                   st->name, jerr.text, jerr.position);
  int rc = RT_OK;
  if (!json_is_object(root)) {
    rc = rt_fail(err, RT_ERR_FORMAT, "%s: safetensors header is not a JSON object", st->name);
    goto done;
  }
  size_t cap = json_object_size(root);
  st->ent = calloc(cap ? cap : 1, sizeof *st->ent);
  st->by_name = calloc(cap ? cap : 1, sizeof *st->by_name);
  st->readable = calloc(cap ? cap : 1, sizeof *st->readable);
  if (!st->ent || !st->by_name || !st->readable) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory for %zu header entries", st->name, cap);
    goto done;
  }
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      if ((rc = st_check_metadata(st, val, err))) goto done;
      continue;
    }
    StEntry *e = &st->ent[st->n];
    size_t klen = strlen(key) + 1;
    char *name = malloc(klen);
    if (!name) {
      rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", st->name);
      goto done;
    }
    memcpy(name, key, klen);
    e->info.name = name;
    st->n++;
    if ((rc = st_parse_entry(st, key, val, e, err))) goto done;
    if (e->readable) st->readable[st->nreadable++] = st->n - 1;
  }
  if ((rc = st_check_tiling(st, st->by_name, err))) goto done;
  for (int i = 0; i < st->n; i++) st->by_name[i] = &st->ent[i];
  qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, st_cmp_name);
done:
  json_decref(root);
  return rc;
}

/* Shared tail of the two openers: the first 8 bytes hold the header length. */
static int st_check_length(RtSafetensors *st, const unsigned char *first8, int64_t total,
                           uint64_t *hlen, RtError *err) {
  if (total == 0) return rt_fail(err, RT_ERR_FORMAT, "%s: empty file, not safetensors", st->name);
  if (total < 8)
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: file of %lld bytes is too short for a safetensors "
                   "header",
                   st->name, (long long)total);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | first8[i];
  if (n > (uint64_t)(total - 8))
    return rt_fail(err, RT_ERR_FORMAT,
                   "%s: safetensors header length %llu runs past the end of the file (%lld bytes)",
                   st->name, (unsigned long long)n, (long long)total);
  if (n > ST_MAX_HEADER)
    return rt_fail(err, RT_ERR_LIMIT,
                   "%s: safetensors header of %llu bytes exceeds the limit of "
                   "%d",
                   st->name, (unsigned long long)n, ST_MAX_HEADER);
  *hlen = n;
  st->data_start = 8 + (int64_t)n;
  st->data_size = total - st->data_start;
  return RT_OK;
}

static RtSafetensors *st_new(const char *name, RtError *err) {
  RtSafetensors *st = calloc(1, sizeof *st);
  size_t len = strlen(name) + 1;
  if (st) st->name = malloc(len);
  if (!st || !st->name) {
    free(st);
    rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", name);
    return NULL;
  }
  memcpy(st->name, name, len);
  return st;
}

int rt_st_open_mem(const void *buf, size_t len, const char *name, RtSafetensors **out,
                   RtError *err) {
  if (!name) name = "<memory>";
  if (!out) return rt_fail(err, RT_ERR_ARG, "%s: null output", name);
  *out = NULL;
  if (!buf && len > 0) return rt_fail(err, RT_ERR_ARG, "%s: null buffer", name);
  if ((uint64_t)len > (uint64_t)RT_MAX_FILE_BYTES)
    return rt_fail(err, RT_ERR_LIMIT, "%s: %zu bytes exceeds the file size limit", name, len);
  RtSafetensors *st = st_new(name, err);
  if (!st) return RT_ERR_NOMEM;
  int rc;
  uint64_t hlen;
  st->mem = malloc(len ? len : 1);
  if (!st->mem) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory for %zu bytes", name, len);
    goto fail;
  }
  if (len) memcpy(st->mem, buf, len);
  if ((rc = st_check_length(st, st->mem, (int64_t)len, &hlen, err))) goto fail;
  if ((rc = st_parse_header(st, (const char *)st->mem + 8, (size_t)hlen, err))) goto fail;
  *out = st;
  return RT_OK;
fail:
  rt_st_close(st);
  return rc;
}

int rt_st_open(const char *path, RtSafetensors **out, RtError *err) {
  if (!path) return rt_fail(err, RT_ERR_ARG, "rt_st_open: null path");
  if (!out) return rt_fail(err, RT_ERR_ARG, "%s: null output", path);
  *out = NULL;
  RtSafetensors *st = st_new(path, err);
  if (!st) return RT_ERR_NOMEM;
  int rc;
  char *json = NULL;
  unsigned char first8[8] = {0};
  uint64_t hlen;
  int64_t total;
  if ((rc = rt_open_file(path, &st->f, &total, err))) goto fail;
  /* Reads are few and large (one per tensor): stdio's buffer would only add
   * a copy, and would serve stale bytes if the file changed after opening. */
  setvbuf(st->f, NULL, _IONBF, 0);
  if (total >= 8 && rt_read_at(st->f, 0, first8, 8) != 0) {
    rc = rt_fail(err, RT_ERR_IO, "%s: read failed", path);
    goto fail;
  }
  if ((rc = st_check_length(st, first8, total, &hlen, err))) goto fail;
  /* Only the header is read now; tensors are read by rt_st_read. */
  json = malloc(hlen ? (size_t)hlen : 1);
  if (!json) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory for the header", path);
    goto fail;
  }
  if (rt_read_at(st->f, 8, json, (size_t)hlen) != 0) {
    rc = rt_fail(err, RT_ERR_IO, "%s: read failed", path);
    goto fail;
  }
  if ((rc = st_parse_header(st, json, (size_t)hlen, err))) goto fail;
  free(json);
  *out = st;
  return RT_OK;
fail:
  free(json);
  rt_st_close(st);
  return rc;
}

int rt_st_count(const RtSafetensors *st) {
  return st ? st->nreadable : 0;
}

const RtTensorInfo *rt_st_info(const RtSafetensors *st, int i) {
  if (!st || i < 0 || i >= st->nreadable) return NULL;
  return &st->ent[st->readable[i]].info;
}

static const StEntry *st_lookup(const RtSafetensors *st, const char *name) {
  int lo = 0, hi = st->n - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const StEntry *e = st->by_name[mid];
    int c = strcmp(name, e->info.name);
    if (c == 0) return e;
    if (c < 0)
      hi = mid - 1;
    else
      lo = mid + 1;
  }
  return NULL;
}

/* Tensors whose dtype the runtime cannot convert are not listed by
 * rt_st_count/rt_st_info/rt_st_find (RtTensorInfo has no way to name their
 * dtype); rt_st_read still finds them so that its error says why. */
const RtTensorInfo *rt_st_find(const RtSafetensors *st, const char *name) {
  if (!st || !name) return NULL;
  const StEntry *e = st_lookup(st, name);
  return e && e->readable ? &e->info : NULL;
}

const RtTensorInfo *rt_st_find_any(const RtSafetensors *st, const char *name) {
  if (!st || !name) return NULL;
  const StEntry *e = st_lookup(st, name);
  return e ? &e->info : NULL;
}

/* Integer tensors read fine as data, but a weight stored as I64 is almost
 * always the wrong tensor (a step counter, token ids), so weights take
 * floats only rather than converting silently. */
int rt_st_read_weight(const RtSafetensors *st, const char *name, RtDType to, RtTensor *out,
                      RtError *err) {
  if (!out) return rt_fail(err, RT_ERR_ARG, "rt_st_read_weight: null output tensor");
  memset(out, 0, sizeof *out);
  if (!st || !name) return rt_fail(err, RT_ERR_ARG, "rt_st_read_weight: null argument");
  const StEntry *e = st_lookup(st, name);
  if (e && !(e->readable && (e->info.dtype == RT_F32 || e->info.dtype == RT_F64 ||
                             e->info.dtype == RT_F16 || e->info.dtype == RT_BF16)))
    return rt_fail(err, RT_ERR_DTYPE,
                   "%s: tensor '%s' has dtype %s; weights must be F32, F64, F16 or BF16", st->name,
                   name, e->file_dtype);
  return rt_st_read(st, name, to, out, err);
}

int rt_st_read(const RtSafetensors *st, const char *name, RtDType to, RtTensor *out, RtError *err) {
  if (!out) return rt_fail(err, RT_ERR_ARG, "rt_st_read: null output tensor");
  memset(out, 0, sizeof *out);
  if (!st || !name) return rt_fail(err, RT_ERR_ARG, "rt_st_read: null argument");
  const StEntry *e = st_lookup(st, name);
  if (!e) return rt_fail(err, RT_ERR_MISSING, "%s: no tensor named '%s'", st->name, name);
  if (!e->readable)
    return rt_fail(err, RT_ERR_DTYPE,
                   "%s: tensor '%s' has dtype %s; expected a float type (F32, F64, F16, BF16) "
                   "or I32/I64",
                   st->name, name, e->file_dtype);
  if (to != RT_F32 && to != RT_F64)
    return rt_fail(err, RT_ERR_DTYPE, "%s: tensor '%s': can only read as f32 or f64, not %s",
                   st->name, name, rt_dtype_name(to));

  RtTensor raw;
  int rc = rt_tensor_alloc(&raw, e->info.dtype, e->info.ndim, e->info.shape, err);
  if (rc) {
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
    return rt_fail(err, rc, "%s: tensor '%s': %s", st->name, name, msg);
  }
  size_t bytes = (size_t)(e->end - e->begin);
  if (st->mem) {
    memcpy(raw.data, st->mem + st->data_start + e->begin, bytes);
  } else if (rt_read_at(st->f, st->data_start + e->begin, raw.data, bytes) != 0) {
    rt_tensor_free(&raw);
    return rt_fail(err, RT_ERR_IO, "%s: tensor '%s': read failed (file changed since open?)",
                   st->name, name);
  }
  if (!rt_host_is_little_endian())
    rt_swap_elements(raw.data, (size_t)rt_numel(&raw), rt_dtype_size(raw.dtype));
  if (raw.dtype == to) {
    *out = raw;
    return RT_OK;
  }
  rc = rt_tensor_convert(&raw, to, out, err);
  rt_tensor_free(&raw);
  if (rc) {
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
    return rt_fail(err, rc, "%s: tensor '%s': %s", st->name, name, msg);
  }
  return RT_OK;
}

/* ---- writer ------------------------------------------------------------- */

/* One tensor being written. */
typedef struct StItem {
  const char *name;
  const RtTensor *t;
  int64_t begin, end; /* its bytes in the data buffer */
} StItem;

static int st_cmp_item_name(const void *a, const void *b) {
  return strcmp((*(StItem *const *)a)->name, (*(StItem *const *)b)->name);
}

/* Data order: larger elements first, then by name, as the reference writer
 * does; with the 8-aligned data start every tensor is then aligned to its
 * element size. */
static int st_cmp_item_data(const void *a, const void *b) {
  const StItem *x = *(StItem *const *)a, *y = *(StItem *const *)b;
  size_t sx = rt_dtype_size(x->t->dtype), sy = rt_dtype_size(y->t->dtype);
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int st_write_tensor(FILE *f, const RtTensor *t) {
  size_t es = rt_dtype_size(t->dtype), n = (size_t)rt_numel(t);
  if (rt_host_is_little_endian()) return fwrite(t->data, es, n, f) == n ? 0 : -1;
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

/* Validates the arguments, lays the data out and builds the header JSON
 * (keys in name order). items[] is filled; data_order[] receives pointers to
 * them in the order their bytes go in the file. */
static int st_build_header(const char *path, int n, const char *const *names,
                           const RtTensor *tensors, StItem *items, StItem **by_name,
                           StItem **data_order, char **json, RtError *err) {
  for (int i = 0; i < n; i++) {
    const RtTensor *t = &tensors[i];
    if (!names[i]) return rt_fail(err, RT_ERR_ARG, "%s: tensor %d has no name", path, i);
    if (strcmp(names[i], "__metadata__") == 0)
      return rt_fail(err, RT_ERR_ARG, "%s: \"__metadata__\" is reserved, not a tensor name", path);
    if (!rt_dtype_valid((int)t->dtype))
      return rt_fail(err, RT_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, names[i],
                     (int)t->dtype);
    int64_t numel = rt_numel(t);
    if (numel < 0 || numel > RT_MAX_FILE_BYTES / (int64_t)rt_dtype_size(t->dtype))
      return rt_fail(err, RT_ERR_ARG, "%s: tensor '%s': invalid or too large shape", path,
                     names[i]);
    if (numel > 0 && !t->data)
      return rt_fail(err, RT_ERR_ARG, "%s: tensor '%s' has no data", path, names[i]);
    items[i] = (StItem){.name = names[i], .t = t};
    by_name[i] = data_order[i] = &items[i];
  }
  qsort(by_name, (size_t)n, sizeof *by_name, st_cmp_item_name);
  qsort(data_order, (size_t)n, sizeof *data_order, st_cmp_item_data);
  for (int i = 1; i < n; i++)
    if (strcmp(by_name[i - 1]->name, by_name[i]->name) == 0)
      return rt_fail(err, RT_ERR_ARG, "%s: duplicate tensor name '%s'", path, by_name[i]->name);
  int64_t pos = 0;
  for (int k = 0; k < n; k++) {
    StItem *it = data_order[k];
    it->begin = pos;
    pos += rt_numel(it->t) * (int64_t)rt_dtype_size(it->t->dtype);
    it->end = pos;
    if (pos > RT_MAX_FILE_BYTES)
      return rt_fail(err, RT_ERR_LIMIT, "%s: tensors exceed the file size limit", path);
  }

  json_t *root = json_object();
  if (!root) return rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", path);
  /* jansson keeps insertion order, so inserting by name sorts the keys; the
   * fields go in the order the reference writer uses. */
  for (int k = 0; k < n; k++) {
    const StItem *it = by_name[k];
    json_t *shape = json_array();
    int bad = !shape;
    for (int d = 0; !bad && d < it->t->ndim; d++)
      bad = json_array_append_new(shape, json_integer((json_int_t)it->t->shape[d])) != 0;
    /* "o" steals shape even when json_pack fails. */
    json_t *entry =
        bad ? NULL
            : json_pack("{s:s, s:o, s:[II]}", "dtype", st_dtype_name(it->t->dtype), "shape", shape,
                        "data_offsets", (json_int_t)it->begin, (json_int_t)it->end);
    if (bad) json_decref(shape);
    if (!entry) {
      json_decref(root);
      return rt_fail(err, RT_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    /* set_new steals entry even on failure; it fails for invalid UTF-8. */
    if (json_object_set_new(root, it->name, entry) != 0) {
      json_decref(root);
      return rt_fail(err, RT_ERR_ARG, "%s: tensor name '%s' is not valid UTF-8", path, it->name);
    }
  }
  *json = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (!*json) return rt_fail(err, RT_ERR_NOMEM, "%s: out of memory writing the header", path);
  return RT_OK;
}

int rt_st_write(const char *path, int n, const char *const *names, const RtTensor *tensors,
                RtError *err) {
  if (!path) return rt_fail(err, RT_ERR_ARG, "rt_st_write: null path");
  if (n < 0 || (n > 0 && (!names || !tensors)))
    return rt_fail(err, RT_ERR_ARG, "%s: bad tensor list", path);
  size_t cap = (size_t)(n ? n : 1);
  StItem *items = malloc(cap * sizeof *items);
  StItem **by_name = malloc(cap * sizeof *by_name), **data_order = malloc(cap * sizeof *data_order);
  char *json = NULL;
  int rc;
  if (!items || !by_name || !data_order) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", path);
    goto done;
  }
  rc = st_build_header(path, n, names, tensors, items, by_name, data_order, &json, err);
  if (rc) goto done;

  /* Pad the header with spaces so the data starts 8-byte aligned, as the
   * reference implementation does. */
  size_t jlen = strlen(json), hlen = jlen + (8 - jlen % 8) % 8;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  FILE *f = fopen(path, "wb");
  if (!f) {
    rc = rt_fail(err, RT_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
    goto done;
  }
  int bad = fwrite(len8, 1, 8, f) != 8 || fwrite(json, 1, jlen, f) != jlen;
  for (size_t i = jlen; !bad && i < hlen; i++) bad = fputc(' ', f) == EOF;
  for (int k = 0; !bad && k < n; k++) bad = st_write_tensor(f, data_order[k]->t) != 0;
  int saved = errno;
  if (fclose(f) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (bad) {
    remove(path);
    rc = rt_fail(err, RT_ERR_IO, "%s: write failed: %s", path, strerror(saved));
  }
done:
  free(json);
  free(items);
  free(by_name);
  free(data_order);
  return rc;
}
