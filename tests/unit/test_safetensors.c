/* test_safetensors.c - the safetensors reader and writer: round trips for
 * every dtype and ranks 0..4, files written by the reference implementation
 * (tests/data/io/st/good), and a table of malformed headers that must each
 * fail with the right status and a message naming the file and tensor. */
#include "testutil.h"

#include "runtime/rt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *tmp_path(const char *name) {
  static char buf[4][512];
  static int k;
  char *b = buf[k++ & 3];
  snprintf(b, 512, "%s/%s", tu_tmpdir(), name);
  return b;
}

static void fill(RtTensor *t, int seed) {
  int64_t n = rt_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v = (double)((i + seed) % 89) * 0.125 - 5;
    switch (t->dtype) {
    case RT_F32:
      ((float *)t->data)[i] = (float)v;
      break;
    case RT_F64:
      ((double *)t->data)[i] = v + 1e-12;
      break;
    case RT_F16:
      ((uint16_t *)t->data)[i] = (uint16_t)(0x3800 + i * 3 + seed);
      break;
    case RT_BF16:
      ((uint16_t *)t->data)[i] = (uint16_t)(0xbf00 + i * 5 + seed);
      break;
    case RT_I32:
      ((int32_t *)t->data)[i] = (int32_t)(i * 7919 - seed);
      break;
    case RT_I64:
      ((int64_t *)t->data)[i] = (int64_t)i * 9000000001LL - seed;
      break;
    }
  }
}

/* Reads `name` as f64 and compares with `want` converted the same way. */
static void check_tensor(const RtSafetensors *st, const char *name, const RtTensor *want) {
  RtError err;
  RtTensor got, ref;
  const RtTensorInfo *info = rt_st_find(st, name);
  assert_non_null(info);
  assert_string_equal(info->name, name);
  assert_int_equal(info->dtype, want->dtype);
  assert_int_equal(info->ndim, want->ndim);
  for (int i = 0; i < want->ndim; i++) assert_int_equal(info->shape[i], want->shape[i]);
  if (rt_st_read(st, name, RT_F64, &got, &err) != RT_OK) fail_msg("%s", err.msg);
  assert_int_equal(got.dtype, RT_F64);
  assert_int_equal(rt_tensor_convert(want, RT_F64, &ref, &err), RT_OK);
  size_t bytes = (size_t)rt_numel(want) * 8;
  if (bytes) assert_memory_equal(got.data, ref.data, bytes);
  rt_tensor_free(&got);
  rt_tensor_free(&ref);
  /* Same dtype in and out: the bytes come back untouched. */
  if (want->dtype == RT_F32) {
    assert_int_equal(rt_st_read(st, name, RT_F32, &got, &err), RT_OK);
    if (rt_numel(want)) assert_memory_equal(got.data, want->data, (size_t)rt_numel(want) * 4);
    rt_tensor_free(&got);
  }
}

static void test_round_trip(void **state) {
  (void)state;
  enum { N = 6 * 6 };
  static const RtDType dtypes[] = {RT_F32, RT_F64, RT_F16, RT_BF16, RT_I32, RT_I64};
  static const int64_t dims[] = {3, 1, 2, 5};
  RtTensor ts[N];
  char names[N][32];
  const char *name_ptrs[N];
  RtError err;
  int n = 0;
  for (int d = 0; d < 6; d++)
    for (int rank = 0; rank <= 5; rank++, n++) {
      int64_t shape[4] = {2, 0};
      int ndim = rank == 5 ? 2 : rank; /* ranks 0..4, then an empty (2, 0) */
      if (rank < 5) memcpy(shape, dims, sizeof shape);
      assert_int_equal(rt_tensor_alloc(&ts[n], dtypes[d], ndim, shape, &err), RT_OK);
      fill(&ts[n], n);
      /* Names deliberately out of order, to check the writer sorts. */
      snprintf(names[n], sizeof names[n], "layer.%d.%s.r%d", (n * 7) % N, rt_dtype_name(dtypes[d]),
               rank);
      name_ptrs[n] = names[n];
    }
  const char *path = tmp_path("rt.safetensors");
  if (rt_st_write(path, N, name_ptrs, ts, &err) != RT_OK) fail_msg("%s", err.msg);

  RtSafetensors *st;
  if (rt_st_open(path, &st, &err) != RT_OK) fail_msg("%s", err.msg);
  assert_int_equal(rt_st_count(st), N);
  for (int i = 0; i < N; i++) check_tensor(st, names[i], &ts[i]);
  assert_null(rt_st_info(st, N));
  assert_null(rt_st_info(st, -1));
  rt_st_close(st);

  size_t len;
  char *bytes = tu_read_file(path, &len);
  assert_non_null(bytes);
  if (rt_st_open_mem(bytes, len, "mem.safetensors", &st, &err) != RT_OK) fail_msg("%s", err.msg);
  for (int i = 0; i < N; i++) check_tensor(st, names[i], &ts[i]);
  /* Header order is name order, so rt_st_info lists names sorted. */
  for (int i = 1; i < N; i++)
    assert_true(strcmp(rt_st_info(st, i - 1)->name, rt_st_info(st, i)->name) < 0);
  rt_st_close(st);

  /* Header padded with spaces to 8 bytes; every tensor aligned to its
   * element size within the 8-aligned data buffer. */
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | (unsigned char)bytes[i];
  assert_int_equal(hlen % 8, 0);
  assert_true(8 + hlen <= len);
  char *json = strndup(bytes + 8, (size_t)hlen);
  assert_non_null(json);
  assert_int_equal(json[0], '{');
  for (int i = 0; i < N; i++) {
    char key[sizeof names[0] + 16];
    snprintf(key, sizeof key, "\"%.31s\":{\"dtype\":", names[i]);
    char *at = strstr(json, key);
    assert_non_null(at);
    long long begin;
    assert_int_equal(sscanf(strstr(at, "\"data_offsets\":[") + 16, "%lld", &begin), 1);
    assert_int_equal(begin % (long long)rt_dtype_size(ts[i].dtype), 0);
  }
  free(json);
  free(bytes);
  for (int i = 0; i < N; i++) rt_tensor_free(&ts[i]);
}

static void test_f64_to_f32_and_ints(void **state) {
  (void)state;
  RtError err;
  double d[] = {0.1, -1e40, 3.5};
  int64_t big[] = {((int64_t)1 << 53) + 1};
  RtTensor ts[2] = {{.dtype = RT_F64, .ndim = 1, .shape = {3}, .data = d},
                    {.dtype = RT_I64, .ndim = 1, .shape = {1}, .data = big}};
  const char *names[] = {"d", "big"};
  const char *path = tmp_path("conv.safetensors");
  assert_int_equal(rt_st_write(path, 2, names, ts, &err), RT_OK);
  RtSafetensors *st;
  assert_int_equal(rt_st_open(path, &st, &err), RT_OK);
  RtTensor t;
  assert_int_equal(rt_st_read(st, "d", RT_F32, &t, &err), RT_OK);
  assert_int_equal(t.dtype, RT_F32);
  assert_true(((float *)t.data)[0] == 0.1f);
  assert_true(((float *)t.data)[1] < -3e38f); /* -inf */
  assert_true(((float *)t.data)[2] == 3.5f);
  rt_tensor_free(&t);
  assert_int_equal(rt_st_read(st, "big", RT_F64, &t, &err), RT_OK);
  assert_true(((double *)t.data)[0] == 9007199254740992.0);
  rt_tensor_free(&t);
  assert_int_equal(rt_st_read(st, "d", RT_I32, &t, &err), RT_ERR_DTYPE);
  assert_non_null(strstr(err.msg, "'d'"));
  assert_int_equal(rt_st_read(st, "nope", RT_F32, &t, &err), RT_ERR_MISSING);
  assert_non_null(strstr(err.msg, "nope"));
  assert_non_null(strstr(err.msg, path));
  assert_null(t.data);
  rt_st_close(st);
}

/* Files written by the reference implementation (safetensors.numpy). */
static void test_reference_files(void **state) {
  (void)state;
  RtError err;
  RtSafetensors *st;
  const char *path = tu_src("tests/data/io/st/good/mixed.safetensors");
  if (rt_st_open(path, &st, &err) != RT_OK) fail_msg("%s", err.msg);
  assert_int_equal(rt_st_count(st), 6);
  float w[] = {-1, -0.5f, 0, 0.5f, 1, 1.5f};
  double b[] = {0.1, -2.0, 1e300};
  uint16_t h[] = {0x3c00, 0xc000, 0x3800, 0x7bff};
  int64_t n = -7;
  int32_t k[] = {3, -4};
  RtTensor want[] = {
      {.dtype = RT_F32, .ndim = 2, .shape = {2, 3}, .data = w},
      {.dtype = RT_F64, .ndim = 1, .shape = {3}, .data = b},
      {.dtype = RT_F16, .ndim = 2, .shape = {2, 2}, .data = h},
      {.dtype = RT_I64, .ndim = 0, .data = &n},
      {.dtype = RT_I32, .ndim = 1, .shape = {2}, .data = k},
      {.dtype = RT_F32, .ndim = 2, .shape = {0, 4}},
  };
  const char *names[] = {"w", "b", "h", "n", "k", "e"};
  for (int i = 0; i < 6; i++) check_tensor(st, names[i], &want[i]);
  rt_st_close(st);

  /* A U8 tensor: the file opens, the float tensor reads, the U8 one is not
   * listed and reading it says why. */
  path = tu_src("tests/data/io/st/good/with_u8.safetensors");
  if (rt_st_open(path, &st, &err) != RT_OK) fail_msg("%s", err.msg);
  assert_int_equal(rt_st_count(st), 1);
  assert_string_equal(rt_st_info(st, 0)->name, "x");
  assert_null(rt_st_find(st, "mask"));
  RtTensor t;
  assert_int_equal(rt_st_read(st, "mask", RT_F32, &t, &err), RT_ERR_DTYPE);
  assert_non_null(strstr(err.msg, "tensor 'mask' has dtype U8; expected a float type"));
  assert_non_null(strstr(err.msg, path));
  assert_int_equal(rt_st_read(st, "x", RT_F32, &t, &err), RT_OK);
  assert_true(((float *)t.data)[1] == 2.5f);
  rt_tensor_free(&t);
  rt_st_close(st);
}

/* Every file in tests/data/io/st/bad fails to open or to read, naming itself. */
static void test_bad_seed_files(void **state) {
  (void)state;
  const char *dir = tu_src("tests/data/io/st/bad");
  int seen = 0;
  char **names = tu_list_dir(dir, "", NULL);
  for (char **name = names; *name; name++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, *name);
    RtError err = {{0}};
    RtSafetensors *st;
    int rc = rt_st_open(path, &st, &err);
    if (rc == RT_OK) {
      /* Only a valid header with an unreadable dtype gets this far. */
      RtTensor t;
      rc = rt_st_read(st, "m", RT_F32, &t, &err);
      rt_st_close(st);
      assert_int_equal(rc, RT_ERR_DTYPE);
    } else {
      assert_null(st);
    }
    if (!strstr(err.msg, path)) fail_msg("message for %s does not name it: %s", path, err.msg);
    seen++;
  }
  tu_free_list(names);
  assert_true(seen >= 14);
}

/* A safetensors image with the given header text and data_len bytes of data. */
static size_t mk_st(unsigned char *buf, const char *hdr, size_t data_len) {
  uint64_t n = strlen(hdr);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
  memcpy(buf + 8, hdr, n);
  memset(buf + 8 + n, 0x3f, data_len);
  return 8 + n + data_len;
}

typedef struct BadCase {
  const char *hdr;
  size_t data;
  int status;
  const char *needle; /* besides the file name */
} BadCase;

#define T(name, dtype, shape, offs)                                                                \
  "\"" name "\": {\"dtype\": \"" dtype "\", \"shape\": " shape ", \"data_offsets\": " offs "}"

static void test_malformed_table(void **state) {
  (void)state;
  static unsigned char buf[4096];
  const BadCase cases[] = {
      {"{not json", 8, RT_ERR_FORMAT, "not valid JSON"},
      {"", 8, RT_ERR_FORMAT, "not valid JSON"},
      {"{} trailing", 0, RT_ERR_FORMAT, "not valid JSON"},
      {"[1, 2]", 8, RT_ERR_FORMAT, "not a JSON object"},
      {"{\"w\": 1}", 8, RT_ERR_FORMAT, "tensor 'w': header entry is not an object"},
      {"{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, RT_ERR_FORMAT,
       "tensor 'w': missing or non-string \"dtype\""},
      {"{\"w\": {\"dtype\": 5, \"shape\": [2], \"data_offsets\": [0, 8]}}", 8, RT_ERR_FORMAT,
       "tensor 'w': missing or non-string \"dtype\""},
      {"{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, RT_ERR_FORMAT,
       "tensor 'w': missing or non-array \"shape\""},
      {"{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8, RT_ERR_FORMAT,
       "tensor 'w': \"data_offsets\" must be"},
      {"{" T("w", "F32", "[2]", "[0, 8, 9]") "}", 8, RT_ERR_FORMAT, "tensor 'w': \"data_offsets\""},
      {"{" T("w", "F32", "[-2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': shape entries must be non-negative integers"},
      {"{" T("w", "F32", "[2.0]", "[0, 8]") "}", 8, RT_ERR_FORMAT, "tensor 'w': shape entries"},
      {"{" T("w", "F32", "[\"2\"]", "[0, 8]") "}", 8, RT_ERR_FORMAT, "tensor 'w': shape entries"},
      {"{" T("w", "F32", "2", "[0, 8]") "}", 8, RT_ERR_FORMAT, "tensor 'w': missing or non-array"},
      {"{" T("w", "F32", "[2]", "[-1, 8]") "}", 8, RT_ERR_FORMAT, "tensor 'w': data_offsets must"},
      {"{" T("w", "F32", "[2]", "[0, 8.5]") "}", 8, RT_ERR_FORMAT, "tensor 'w': data_offsets must"},
      {"{" T("w", "F32", "[2]", "[0, 99999999999999999999]") "}", 8, RT_ERR_FORMAT,
       "not valid JSON"},
      {"{" T("w", "F32", "[2]", "[8, 0]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': data_offsets [8, 0] outside"},
      {"{" T("w", "F32", "[4]", "[0, 16]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': data_offsets [0, 16] outside the data buffer of 8 bytes"},
      {"{" T("w", "F32", "[3]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': data_offsets [0, 8] hold 8 bytes but shape [3] of F32 needs 12"},
      {"{" T("a", "F32", "[2]", "[0, 8]") ", " T("b", "F32", "[2]", "[4, 12]") "}", 12,
       RT_ERR_FORMAT, "tensors 'a' and 'b' overlap"},
      {"{" T("a", "F32", "[2]", "[0, 8]") ", " T("b", "F32", "[2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "overlap"},
      {"{" T("a", "F32", "[1]", "[4, 8]") "}", 8, RT_ERR_FORMAT,
       "data bytes [0, 4) before tensor 'a' belong to no tensor"},
      {"{" T("a", "F32", "[1]", "[0, 4]") "}", 8, RT_ERR_FORMAT,
       "4 bytes at the end of the data buffer belong to no tensor"},
      {"{" T("w", "F32", "[1099511627776, 1099511627776]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': shape [1099511627776, 1099511627776] is too large"},
      {"{" T("w", "F64", "[1, 1152921504606846976]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': shape [1, 1152921504606846976] is too large"},
      {"{" T("w", "F32", "[1, 1, 1, 1, 1, 1, 1, 1, 2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': rank 9 exceeds the limit of 8"},
      {"{" T("w", "F33", "[2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "tensor 'w': unknown dtype \"F33\""},
      {"{" T("w", "F4", "[3]", "[0, 2]") "}", 2, RT_ERR_FORMAT, "not a whole number of bytes"},
      {"{" T("w", "F32", "[2]", "[0, 8]") ", " T("w", "F32", "[2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "duplicate"},
      {"{\"__metadata__\": [1], " T("w", "F32", "[2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "\"__metadata__\" is not an object"},
      {"{\"__metadata__\": {\"k\": 1}, " T("w", "F32", "[2]", "[0, 8]") "}", 8, RT_ERR_FORMAT,
       "\"__metadata__\" value for 'k' is not a string"},
      {"{\"w\\u0000x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
       RT_ERR_FORMAT, "not valid JSON"},
      {"{\"\xff\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
       RT_ERR_FORMAT, "not valid JSON"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    RtError err = {{0}};
    RtSafetensors *st = (RtSafetensors *)&err; /* must be reset to NULL */
    size_t len = mk_st(buf, cases[i].hdr, cases[i].data);
    int rc = rt_st_open_mem(buf, len, "bad.st", &st, &err);
    if (rc != cases[i].status || !strstr(err.msg, "bad.st") || !strstr(err.msg, cases[i].needle))
      fail_msg("case %zu (%s): status %d, message: %s", i, cases[i].hdr, rc, err.msg);
    assert_null(st);
  }
}

static void test_good_headers(void **state) {
  (void)state;
  static unsigned char buf[4096];
  RtError err;
  RtSafetensors *st;
  /* Metadata, extra fields, empty tensors anywhere, zero tensors at all,
   * sub-byte dtypes that fill whole bytes, and trailing header spaces. */
  const char *hdrs[] = {
      "{\"__metadata__\": {\"format\": \"pt\"}, " T("w", "F32", "[2]", "[0, 8]") "}   ",
      "{" T("w", "F32", "[2]", "[0, 8]") ", " T("z", "F16", "[0, 3]",
                                                "[8, 8]") ", " T("y", "I8", "[0]", "[0, 0]") "}",
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8], \"x\": null}}",
      "{" T("w", "F4", "[16]", "[0, 8]") "}",
  };
  for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
    size_t len = mk_st(buf, hdrs[i], 8);
    if (rt_st_open_mem(buf, len, "ok.st", &st, &err) != RT_OK) fail_msg("%zu: %s", i, err.msg);
    rt_st_close(st);
  }
  size_t len = mk_st(buf, "{}", 0);
  assert_int_equal(rt_st_open_mem(buf, len, "none.st", &st, &err), RT_OK);
  assert_int_equal(rt_st_count(st), 0);
  assert_null(rt_st_find(st, "w"));
  rt_st_close(st);
  rt_st_close(NULL);
}

static void test_malformed_length(void **state) {
  (void)state;
  static unsigned char buf[256];
  RtError err;
  RtSafetensors *st;
  assert_int_equal(rt_st_open_mem("", 0, "e.st", &st, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "e.st: empty file"));
  assert_int_equal(rt_st_open_mem("\x02\0\0", 3, "s.st", &st, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "s.st: file of 3 bytes is too short"));
  size_t len = mk_st(buf, "{}", 0);
  buf[0] = 3;
  assert_int_equal(rt_st_open_mem(buf, len, "p.st", &st, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "p.st: safetensors header length 3 runs past the end"));
  memset(buf, 0xff, 8);
  assert_int_equal(rt_st_open_mem(buf, len, "h.st", &st, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "18446744073709551615 runs past the end"));
  /* Within the file but over the 100 MB bound. */
  size_t big = 100000008 + 2;
  unsigned char *b = calloc(1, big);
  assert_non_null(b);
  b[0] = 0x02, b[1] = 0xe1, b[2] = 0xf5, b[3] = 0x05; /* 100000002 */
  assert_int_equal(rt_st_open_mem(b, big, "big.st", &st, &err), RT_ERR_LIMIT);
  assert_non_null(strstr(err.msg, "big.st"));
  free(b);
  assert_int_equal(rt_st_open_mem(NULL, 8, "n.st", &st, &err), RT_ERR_ARG);
}

/* Cuts and byte changes of a valid file never crash or leak; cuts always
 * fail; whatever opens can be read. */
static void test_mutations(void **state) {
  (void)state;
  static unsigned char buf[4096], mut[4096];
  RtError err;
  RtSafetensors *st;
  size_t len = mk_st(buf,
                     "{\"__metadata__\":{\"a\":\"b\"}," T("w", "F32", "[2]", "[0,8]") "," T(
                         "h", "BF16", "[2,2]", "[8,16]") "," T("u", "U8", "[2]", "[16,18]") "}",
                     18);
  assert_int_equal(rt_st_open_mem(buf, len, "ok.st", &st, &err), RT_OK);
  rt_st_close(st);
  for (size_t cut = 0; cut < len; cut++) {
    assert_int_not_equal(rt_st_open_mem(buf, cut, "cut.st", &st, &err), RT_OK);
    assert_non_null(strstr(err.msg, "cut.st"));
  }
  static const unsigned char vals[] = {0, ' ', '"', '[', ']', ',', '-', '9', '0', 0xc3, 0xff};
  for (size_t pos = 0; pos < len - 18; pos++)
    for (size_t v = 0; v < sizeof vals; v++) {
      memcpy(mut, buf, len);
      mut[pos] = vals[v];
      if (rt_st_open_mem(mut, len, "mut.st", &st, &err) != RT_OK) {
        assert_non_null(strstr(err.msg, "mut.st"));
        continue;
      }
      for (int i = 0; i < rt_st_count(st); i++) {
        RtTensor t;
        assert_int_equal(rt_st_read(st, rt_st_info(st, i)->name, RT_F32, &t, &err), RT_OK);
        rt_tensor_free(&t);
      }
      rt_st_close(st);
    }
}

static void test_file_errors(void **state) {
  (void)state;
  RtError err;
  RtSafetensors *st;
  const char *missing = tmp_path("none.safetensors");
  assert_int_equal(rt_st_open(missing, &st, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, missing));
  assert_null(st);
  assert_int_equal(rt_st_open(tu_tmpdir(), &st, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, "not a regular file"));

  /* Tensors are read on demand: a file cut after opening is an I/O error. */
  float v[4] = {1, 2, 3, 4};
  RtTensor t = {.dtype = RT_F32, .ndim = 1, .shape = {4}, .data = v};
  const char *name = "v";
  const char *path = tmp_path("cut.safetensors");
  assert_int_equal(rt_st_write(path, 1, &name, &t, &err), RT_OK);
  assert_int_equal(rt_st_open(path, &st, &err), RT_OK);
  size_t len;
  char *bytes = tu_read_file(path, &len);
  assert_non_null(bytes);
  assert_int_equal(truncate(path, (off_t)len - 4), 0);
  RtTensor out;
  assert_int_equal(rt_st_read(st, "v", RT_F32, &out, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, "tensor 'v'"));
  assert_non_null(strstr(err.msg, path));
  assert_null(out.data);
  rt_st_close(st);
  /* Reopening the cut file finds the lie in the header. */
  assert_int_equal(rt_st_open(path, &st, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "tensor 'v'"));
  free(bytes);
}

static void test_write_errors(void **state) {
  (void)state;
  RtError err;
  float v[2] = {1, 2};
  RtTensor t[2] = {{.dtype = RT_F32, .ndim = 1, .shape = {2}, .data = v},
                   {.dtype = RT_F32, .ndim = 1, .shape = {2}, .data = v}};
  const char *path = tmp_path("w.safetensors");
  const char *dup[] = {"a", "a"};
  assert_int_equal(rt_st_write(path, 2, dup, t, &err), RT_ERR_ARG);
  assert_non_null(strstr(err.msg, "duplicate tensor name 'a'"));
  const char *meta[] = {"a", "__metadata__"};
  assert_int_equal(rt_st_write(path, 2, meta, t, &err), RT_ERR_ARG);
  assert_non_null(strstr(err.msg, "__metadata__"));
  const char *bad_utf8[] = {"a", "\xff"};
  assert_int_equal(rt_st_write(path, 2, bad_utf8, t, &err), RT_ERR_ARG);
  assert_non_null(strstr(err.msg, "UTF-8"));
  const char *ok[] = {"a", "b"};
  t[1].data = NULL;
  assert_int_equal(rt_st_write(path, 2, ok, t, &err), RT_ERR_ARG);
  assert_non_null(strstr(err.msg, "'b' has no data"));
  t[1].data = v;
  t[1].shape[0] = -2;
  assert_int_equal(rt_st_write(path, 2, ok, t, &err), RT_ERR_ARG);
  t[1].shape[0] = 2;
  assert_int_equal(rt_st_write(tmp_path("nodir/x.safetensors"), 2, ok, t, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, "nodir/x.safetensors"));
  assert_int_equal(rt_st_write(path, -1, ok, t, &err), RT_ERR_ARG);
  /* An empty file set is still a valid file. */
  assert_int_equal(rt_st_write(path, 0, NULL, NULL, &err), RT_OK);
  RtSafetensors *st;
  assert_int_equal(rt_st_open(path, &st, &err), RT_OK);
  assert_int_equal(rt_st_count(st), 0);
  rt_st_close(st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_f64_to_f32_and_ints),
      cmocka_unit_test(test_reference_files),  cmocka_unit_test(test_bad_seed_files),
      cmocka_unit_test(test_malformed_table),  cmocka_unit_test(test_good_headers),
      cmocka_unit_test(test_malformed_length), cmocka_unit_test(test_mutations),
      cmocka_unit_test(test_file_errors),      cmocka_unit_test(test_write_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
