/* test_npy.c - the .npy reader and writer: round trips for every dtype and
 * ranks 0..4, byte-for-byte agreement with files numpy wrote
 * (tests/data/io/npy/good), and a table of malformed inputs that must each
 * fail with the right status and a message naming the file. */
#include "testutil.h"

#include "runtime/rt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *tmp_path(const char *name) {
  static char buf[4][512];
  static int k;
  char *b = buf[k++ & 3];
  snprintf(b, 512, "%s/%s", tu_tmpdir(), name);
  return b;
}

static void write_bytes(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  if (len) assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* Fills a tensor with distinct, exactly representable values. */
static void fill(RtTensor *t) {
  int64_t n = rt_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v = (double)(i % 97) * 0.25 - 7;
    switch (t->dtype) {
    case RT_F32:
      ((float *)t->data)[i] = (float)v;
      break;
    case RT_F64:
      ((double *)t->data)[i] = v;
      break;
    case RT_F16:
    case RT_BF16:
      ((uint16_t *)t->data)[i] = (uint16_t)(0x3c00 + i * 7);
      break;
    case RT_I32:
      ((int32_t *)t->data)[i] = (int32_t)(i * 1000003 - 5);
      break;
    case RT_I64:
      ((int64_t *)t->data)[i] = (int64_t)i * 4000000007LL - 5;
      break;
    }
  }
}

static void assert_same_tensor(const RtTensor *a, const RtTensor *b) {
  assert_int_equal(a->dtype, b->dtype);
  assert_int_equal(a->ndim, b->ndim);
  for (int i = 0; i < a->ndim; i++) assert_int_equal(a->shape[i], b->shape[i]);
  assert_int_equal(rt_numel(a), rt_numel(b));
  size_t bytes = (size_t)rt_numel(a) * rt_dtype_size(a->dtype);
  assert_memory_equal(a->data, b->data, bytes ? bytes : 1 /* cmocka rejects 0 */);
}

static void test_round_trip(void **state) {
  (void)state;
  static const RtDType dtypes[] = {RT_F32, RT_F64, RT_F16, RT_I32, RT_I64};
  static const int64_t dims[] = {2, 3, 1, 4};
  RtError err;
  for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
    for (int rank = 0; rank <= 5; rank++) {
      /* Ranks 0..4, then an empty (3, 0) tensor. */
      int64_t shape[4] = {3, 0};
      int ndim = rank == 5 ? 2 : rank;
      if (rank < 5) memcpy(shape, dims, sizeof shape);
      RtTensor t, back, back_mem;
      assert_int_equal(rt_tensor_alloc(&t, dtypes[d], ndim, shape, &err), RT_OK);
      fill(&t);
      const char *path = tmp_path("rt.npy");
      if (rt_npy_write(path, &t, &err) != RT_OK) fail_msg("%s", err.msg);
      if (rt_npy_read(path, &back, &err) != RT_OK) fail_msg("%s", err.msg);
      assert_same_tensor(&t, &back);

      size_t len;
      char *bytes = tu_read_file(path, &len);
      assert_non_null(bytes);
      assert_int_equal(rt_npy_read_mem(bytes, len, "mem.npy", &back_mem, &err), RT_OK);
      assert_same_tensor(&t, &back_mem);
      /* Version 1.0, preamble + header a multiple of 64 ending in '\n'. */
      assert_memory_equal(bytes, "\x93NUMPY\x01\x00", 8);
      size_t hlen = (unsigned char)bytes[8] | (size_t)(unsigned char)bytes[9] << 8;
      assert_int_equal((10 + hlen) % 64, 0);
      assert_int_equal(bytes[10 + hlen - 1], '\n');
      assert_int_equal(len, 10 + hlen + (size_t)rt_numel(&t) * rt_dtype_size(t.dtype));
      free(bytes);
      rt_tensor_free(&t);
      rt_tensor_free(&back);
      rt_tensor_free(&back_mem);
    }
  }
}

static void test_header_text(void **state) {
  (void)state;
  RtError err;
  RtTensor t;
  const char *path = tmp_path("hdr.npy");
  struct {
    int ndim;
    int64_t shape[2];
    const char *dict;
  } cases[] = {
      {0, {0}, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"},
      {1, {3}, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"},
      {2, {2, 3}, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(rt_tensor_alloc(&t, RT_F32, cases[i].ndim, cases[i].shape, &err), RT_OK);
    assert_int_equal(rt_npy_write(path, &t, &err), RT_OK);
    char *bytes = tu_read_file(path, NULL);
    assert_non_null(bytes);
    assert_memory_equal(bytes + 10, cases[i].dict, strlen(cases[i].dict));
    free(bytes);
    rt_tensor_free(&t);
  }
}

/* numpy's own files: we read the values it wrote, and writing the same
 * tensor back produces the identical file. */
static void check_numpy_file(const char *rel, RtDType dt, int ndim, const int64_t *shape,
                             const void *values) {
  RtError err;
  RtTensor t;
  const char *path = tu_src(rel);
  if (rt_npy_read(path, &t, &err) != RT_OK) fail_msg("%s", err.msg);
  assert_int_equal(t.dtype, dt);
  assert_int_equal(t.ndim, ndim);
  for (int i = 0; i < ndim; i++) assert_int_equal(t.shape[i], shape[i]);
  size_t bytes = (size_t)rt_numel(&t) * rt_dtype_size(dt);
  if (bytes) assert_memory_equal(t.data, values, bytes);

  size_t want_len, got_len;
  char *want = tu_read_file(path, &want_len);
  const char *mine = tmp_path("again.npy");
  assert_int_equal(rt_npy_write(mine, &t, &err), RT_OK);
  char *got = tu_read_file(mine, &got_len);
  assert_non_null(want);
  assert_non_null(got);
  /* Versions 2.0 and 3.0 are only read; we write 1.0. */
  if (want[6] == 1) {
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
  }
  free(want);
  free(got);
  rt_tensor_free(&t);
}

static void test_numpy_files(void **state) {
  (void)state;
  const float f32[] = {-1, -0.5f, 0, 0.5f, 1, 1.5f};
  const double f64 = 3.25;
  const int64_t i64[] = {-5, 0, (int64_t)1 << 40};
  const uint16_t f16[] = {0x3c00, 0xc000, 0x7bff, 0x0001};
  check_numpy_file("tests/data/io/npy/good/f32_2x3.npy", RT_F32, 2, (int64_t[]){2, 3}, f32);
  check_numpy_file("tests/data/io/npy/good/f32_v2.npy", RT_F32, 2, (int64_t[]){2, 3}, f32);
  check_numpy_file("tests/data/io/npy/good/f32_v3.npy", RT_F32, 2, (int64_t[]){2, 3}, f32);
  check_numpy_file("tests/data/io/npy/good/f64_scalar.npy", RT_F64, 0, NULL, &f64);
  check_numpy_file("tests/data/io/npy/good/i64_1d.npy", RT_I64, 1, (int64_t[]){3}, i64);
  check_numpy_file("tests/data/io/npy/good/i32_empty.npy", RT_I32, 2, (int64_t[]){0, 3}, NULL);
  check_numpy_file("tests/data/io/npy/good/f16_4.npy", RT_F16, 1, (int64_t[]){4}, f16);
}

/* Every file in tests/data/io/npy/bad fails, naming the file. */
static void test_bad_seed_files(void **state) {
  (void)state;
  const char *dir = tu_src("tests/data/io/npy/bad");
  int seen = 0;
  char **names = tu_list_dir(dir, "", NULL);
  for (char **name = names; *name; name++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, *name);
    RtError err = {{0}};
    RtTensor t;
    int rc = rt_npy_read(path, &t, &err);
    if (rc == RT_OK) fail_msg("%s was accepted", path);
    if (!strstr(err.msg, path)) fail_msg("message for %s does not name it: %s", path, err.msg);
    assert_null(t.data);
    seen++;
  }
  tu_free_list(names);
  assert_true(seen >= 10);
}

/* Builds a .npy image: preamble for version major.0, the header text padded
 * to 64 with a newline (when pad), then data_len bytes of data. */
static size_t mk_npy(unsigned char *buf, int major, const char *hdr, int pad, size_t data_len) {
  size_t prefix = major == 1 ? 10 : 12, len = strlen(hdr), hlen = len + (pad ? 1 : 0);
  if (pad) hlen += (64 - (prefix + hlen) % 64) % 64;
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (unsigned char)major;
  buf[7] = 0;
  for (size_t i = 0; i < prefix - 8; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
  memcpy(buf + prefix, hdr, len);
  if (pad) {
    memset(buf + prefix + len, ' ', hlen - len - 1);
    buf[prefix + hlen - 1] = '\n';
  }
  memset(buf + prefix + hlen, 0x41, data_len);
  return prefix + hlen + data_len;
}

#define HDR(descr, fortran, shape)                                                                 \
  "{'descr': '" descr "', 'fortran_order': " fortran ", 'shape': " shape ", }"

static void test_good_variants(void **state) {
  (void)state;
  static unsigned char buf[4096];
  RtError err;
  RtTensor t;
  struct {
    int major;
    const char *hdr;
    size_t data;
    int ndim;
  } cases[] = {
      {2, HDR("<f4", "False", "(3,)"), 12, 1},
      {3, HDR("<f8", "False", "(2, 2)"), 32, 2},
      {1, HDR("=i4", "False", "()"), 4, 0},
      /* Any key order, double quotes, no trailing comma, odd spacing. */
      {1, "{\"shape\":(2,3),\"descr\":\"<i8\",\"fortran_order\":False}", 48, 2},
      {1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2L, 1L), }", 4, 2},
      {1, HDR("<f4", "False", "(1, 2, 3, 1, 1, 2, 1, 1,)"), 12 * 4, 8},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_true(cases[i].data < 4000);
    size_t len = mk_npy(buf, cases[i].major, cases[i].hdr, 1, cases[i].data);
    if (rt_npy_read_mem(buf, len, "v.npy", &t, &err) != RT_OK) fail_msg("case %zu: %s", i, err.msg);
    assert_int_equal(t.ndim, cases[i].ndim);
    rt_tensor_free(&t);
  }
}

typedef struct BadCase {
  int major;
  const char *hdr;
  size_t data;
  int status;
  const char *needle;
} BadCase;

static void test_malformed_table(void **state) {
  (void)state;
  static unsigned char buf[4096];
  const BadCase cases[] = {
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), ", 12, RT_ERR_FORMAT,
       "malformed"},
      {1, "hello", 0, RT_ERR_FORMAT, "expected '{'"},
      {1, HDR("<u1", "False", "(3,)"), 3, RT_ERR_DTYPE, "unsupported .npy dtype '<u1'"},
      {1, HDR("|O", "False", "(3,)"), 24, RT_ERR_DTYPE, "unsupported"},
      {1, HDR(">f4", "False", "(3,)"), 12, RT_ERR_DTYPE, "big-endian"},
      {1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", 12, RT_ERR_DTYPE,
       "structured"},
      {1, HDR("<f4", "True", "(3,)"), 12, RT_ERR_FORMAT, "Fortran order not supported"},
      {1, HDR("<f4", "Maybe", "(3,)"), 12, RT_ERR_FORMAT, "True or False"},
      {1, HDR("<f4", "False", "(3)"), 12, RT_ERR_FORMAT, "not a tuple"},
      {1, HDR("<f4", "False", "(3,,)"), 12, RT_ERR_FORMAT, "expected a dimension"},
      {1, HDR("<f4", "False", "(3 4)"), 48, RT_ERR_FORMAT, "expected ',' or ')'"},
      {1, HDR("<f4", "False", "[3]"), 12, RT_ERR_FORMAT, "expected '('"},
      {1, HDR("<f4", "False", "(-3,)"), 12, RT_ERR_FORMAT, "negative"},
      {1, HDR("<f4", "False", "(99999999999999999999,)"), 12, RT_ERR_FORMAT, "overflows"},
      {1, HDR("<f4", "False", "(4294967296, 4294967296)"), 12, RT_ERR_FORMAT, "too large"},
      {1, HDR("<f4", "False", "(1099511627776,)"), 12, RT_ERR_FORMAT,
       "truncated: expected 4398046511104 bytes of data, found 12"},
      {1, HDR("<f4", "False", "(1, 1, 1, 1, 1, 1, 1, 1, 1)"), 4, RT_ERR_FORMAT,
       "more than 8 dimensions"},
      {1, "{'descr': '<f4', 'fortran_order': False, }", 4, RT_ERR_FORMAT, "lacks 'shape'"},
      {1, "{'descr': '<f4', 'shape': (), }", 4, RT_ERR_FORMAT, "lacks 'fortran_order'"},
      {1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4,
       RT_ERR_FORMAT, "duplicate key 'descr'"},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'extra': 1, }", 4, RT_ERR_FORMAT,
       "unexpected key 'extra'"},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), } x", 4, RT_ERR_FORMAT,
       "after '}'"},
      {1, "{'descr: '<f4', 'fortran_order': False, 'shape': (), }", 4, RT_ERR_FORMAT, "malformed"},
      {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x", 4, RT_ERR_FORMAT,
       "unterminated string"},
      {1, HDR("<f4", "False", "(3,)"), 8, RT_ERR_FORMAT,
       "truncated: expected 12 bytes of data, found 8"},
      {1, HDR("<f4", "False", "(3,)"), 16, RT_ERR_FORMAT, "4 bytes of trailing data"},
      {4, HDR("<f4", "False", "(3,)"), 12, RT_ERR_FORMAT, "version 4.0"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    RtError err = {{0}};
    RtTensor t;
    size_t len =
        mk_npy(buf, cases[i].major == 4 ? 1 : cases[i].major, cases[i].hdr, 1, cases[i].data);
    if (cases[i].major == 4) buf[6] = 4;
    int rc = rt_npy_read_mem(buf, len, "bad.npy", &t, &err);
    if (rc != cases[i].status || !strstr(err.msg, "bad.npy") || !strstr(err.msg, cases[i].needle))
      fail_msg("case %zu (%s): status %d, message: %s", i, cases[i].hdr, rc, err.msg);
    assert_null(t.data);
  }
}

static void test_malformed_preamble(void **state) {
  (void)state;
  static unsigned char buf[4096];
  RtError err;
  RtTensor t;
  assert_int_equal(rt_npy_read_mem("", 0, "e.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "e.npy: empty file"));
  assert_int_equal(rt_npy_read_mem("\x93NUM", 4, "s.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "s.npy: truncated"));
  assert_int_equal(rt_npy_read_mem("PK\x03\x04", 4, "z.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "z.npy: not a .npy file"));
  /* Version 2.0 preamble cut after the 2-byte length a 1.0 file would have. */
  assert_int_equal(rt_npy_read_mem("\x93NUMPY\x02\x00\x10\x00", 10, "p.npy", &t, &err),
                   RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "p.npy: truncated"));
  size_t len = mk_npy(buf, 1, HDR("<f4", "False", "(3,)"), 1, 12);
  buf[7] = 1; /* 1.1 */
  assert_int_equal(rt_npy_read_mem(buf, len, "v.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "version 1.1"));
  /* Header length past the end of the file, then past our bound. */
  len = mk_npy(buf, 1, HDR("<f4", "False", "(3,)"), 1, 12);
  buf[8] = 0xff, buf[9] = 0xff;
  assert_int_equal(rt_npy_read_mem(buf, len, "h.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "h.npy: .npy header length 65535 runs past the end"));
  len = mk_npy(buf, 2, HDR("<f4", "False", "(3,)"), 1, 12);
  buf[11] = 0x80;
  assert_int_equal(rt_npy_read_mem(buf, len, "h2.npy", &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "runs past the end"));
  unsigned char *big = calloc(1, (2u << 20) + 64);
  assert_non_null(big);
  memcpy(big, "\x93NUMPY\x02\x00\x00\x00\x20\x00", 12); /* 2 MiB header */
  assert_int_equal(rt_npy_read_mem(big, (2u << 20) + 64, "b.npy", &t, &err), RT_ERR_LIMIT);
  assert_non_null(strstr(err.msg, "b.npy"));
  free(big);
  assert_int_equal(rt_npy_read_mem(NULL, 4, "n.npy", &t, &err), RT_ERR_ARG);
}

/* Cutting a valid file anywhere, or changing any header byte, never crashes
 * or leaks; cuts always fail. (Valgrind and ASan runs check the rest.) */
static void test_mutations(void **state) {
  (void)state;
  static unsigned char buf[4096], mut[4096];
  RtError err;
  RtTensor t;
  size_t len = mk_npy(buf, 1, HDR("<f8", "False", "(2, 3)"), 1, 48);
  for (size_t cut = 0; cut < len; cut++) {
    assert_int_not_equal(rt_npy_read_mem(buf, cut, "cut.npy", &t, &err), RT_OK);
    assert_non_null(strstr(err.msg, "cut.npy"));
  }
  static const unsigned char vals[] = {0, ' ', '\'', '(', ')', ',', '-', '9', 0x80, 0xff};
  for (size_t pos = 0; pos < len - 48; pos++)
    for (size_t v = 0; v < sizeof vals; v++) {
      memcpy(mut, buf, len);
      mut[pos] = vals[v];
      if (rt_npy_read_mem(mut, len, "mut.npy", &t, &err) == RT_OK)
        rt_tensor_free(&t);
      else
        assert_non_null(strstr(err.msg, "mut.npy"));
    }
}

static void test_file_errors(void **state) {
  (void)state;
  RtError err;
  RtTensor t;
  const char *missing = tmp_path("does-not-exist.npy");
  assert_int_equal(rt_npy_read(missing, &t, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, missing));
  /* Directories open on Linux; they must still be refused cleanly. */
  assert_int_equal(rt_npy_read(tu_tmpdir(), &t, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, "not a regular file"));
  const char *empty = tmp_path("empty.npy");
  write_bytes(empty, "", 0);
  assert_int_equal(rt_npy_read(empty, &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, empty));

  /* A truncated file on disk reports expected and found sizes. */
  static unsigned char buf[256];
  size_t len = mk_npy(buf, 1, HDR("<i8", "False", "(4,)"), 1, 32);
  const char *cut = tmp_path("cut.npy");
  write_bytes(cut, buf, len - 5);
  assert_int_equal(rt_npy_read(cut, &t, &err), RT_ERR_FORMAT);
  assert_non_null(strstr(err.msg, "truncated: expected 32 bytes of data, found 27"));
  assert_non_null(strstr(err.msg, cut));

  RtTensor bf;
  assert_int_equal(rt_tensor_alloc(&bf, RT_BF16, 1, (int64_t[]){2}, &err), RT_OK);
  assert_int_equal(rt_npy_write(tmp_path("bf.npy"), &bf, &err), RT_ERR_DTYPE);
  assert_non_null(strstr(err.msg, "bfloat16"));
  assert_int_equal(rt_npy_write(tmp_path("no-such-dir/x.npy"), &bf, &err), RT_ERR_DTYPE);
  bf.dtype = RT_F16;
  assert_int_equal(rt_npy_write(tmp_path("no-such-dir/x.npy"), &bf, &err), RT_ERR_IO);
  assert_non_null(strstr(err.msg, "no-such-dir/x.npy"));
  rt_tensor_free(&bf);
  RtTensor nodata = {.dtype = RT_F32, .ndim = 1, .shape = {3}};
  assert_int_equal(rt_npy_write(tmp_path("n.npy"), &nodata, &err), RT_ERR_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),         cmocka_unit_test(test_header_text),
      cmocka_unit_test(test_numpy_files),        cmocka_unit_test(test_bad_seed_files),
      cmocka_unit_test(test_good_variants),      cmocka_unit_test(test_malformed_table),
      cmocka_unit_test(test_malformed_preamble), cmocka_unit_test(test_mutations),
      cmocka_unit_test(test_file_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
