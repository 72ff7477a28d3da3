/* test_rt_tensor.c - runtime host tensors: sizes, allocation and dtype
 * conversion, with f16/bf16 decoding checked against known values and
 * against an independent formula for every f16 bit pattern. */
#include "testutil.h"

#include "runtime/rt.h"

#include <math.h>
#include <string.h>

static RtTensor tensor_of(RtDType dt, int ndim, const int64_t *shape, const void *data) {
  RtTensor t = {.dtype = dt, .ndim = ndim, .data = (void *)data};
  for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
  return t;
}

static void test_dtype_size_name(void **state) {
  (void)state;
  assert_int_equal(rt_dtype_size(RT_F32), 4);
  assert_int_equal(rt_dtype_size(RT_F64), 8);
  assert_int_equal(rt_dtype_size(RT_F16), 2);
  assert_int_equal(rt_dtype_size(RT_BF16), 2);
  assert_int_equal(rt_dtype_size(RT_I32), 4);
  assert_int_equal(rt_dtype_size(RT_I64), 8);
  assert_string_equal(rt_dtype_name(RT_F32), "f32");
  assert_string_equal(rt_dtype_name(RT_BF16), "bf16");
  assert_string_equal(rt_dtype_name(RT_I64), "i64");
  assert_string_equal(rt_dtype_name((RtDType)99), "invalid");
  assert_int_equal(rt_dtype_size((RtDType)99), 0);
}

static void test_numel(void **state) {
  (void)state;
  RtTensor scalar = {.ndim = 0};
  assert_int_equal(rt_numel(&scalar), 1);
  RtTensor t = tensor_of(RT_F32, 3, (int64_t[]){2, 3, 4}, NULL);
  assert_int_equal(rt_numel(&t), 24);
  t = tensor_of(RT_F32, 2, (int64_t[]){(int64_t)1 << 40, (int64_t)1 << 40}, NULL);
  assert_int_equal(rt_numel(&t), -1);
  /* A zero does not hide an overflowing shape, wherever it sits. */
  t = tensor_of(RT_F32, 3, (int64_t[]){0, (int64_t)1 << 40, (int64_t)1 << 40}, NULL);
  assert_int_equal(rt_numel(&t), -1);
  t = tensor_of(RT_F32, 3, (int64_t[]){(int64_t)1 << 40, (int64_t)1 << 40, 0}, NULL);
  assert_int_equal(rt_numel(&t), -1);
  t = tensor_of(RT_F32, 2, (int64_t[]){5, 0}, NULL);
  assert_int_equal(rt_numel(&t), 0);
  t = tensor_of(RT_F32, 2, (int64_t[]){5, -1}, NULL);
  assert_int_equal(rt_numel(&t), -1);
  t.ndim = RT_MAX_RANK + 1;
  assert_int_equal(rt_numel(&t), -1);
  assert_int_equal(rt_numel(NULL), -1);
}

static void test_alloc_free(void **state) {
  (void)state;
  RtError err;
  RtTensor t;
  assert_int_equal(rt_tensor_alloc(&t, RT_F64, 2, (int64_t[]){3, 5}, &err), RT_OK);
  assert_non_null(t.data);
  assert_true(t.owned);
  assert_int_equal(rt_numel(&t), 15);
  for (int i = 0; i < 15; i++) assert_true(((double *)t.data)[i] == 0.0);
  rt_tensor_free(&t);
  assert_null(t.data);
  rt_tensor_free(&t); /* twice is harmless */
  rt_tensor_free(NULL);

  assert_int_equal(rt_tensor_alloc(&t, RT_I32, 0, NULL, &err), RT_OK);
  assert_int_equal(rt_numel(&t), 1);
  rt_tensor_free(&t);
  assert_int_equal(rt_tensor_alloc(&t, RT_F16, 2, (int64_t[]){4, 0}, &err), RT_OK);
  assert_non_null(t.data);
  rt_tensor_free(&t);

  assert_int_equal(
      rt_tensor_alloc(&t, RT_F32, 2, (int64_t[]){(int64_t)1 << 40, (int64_t)1 << 40}, &err),
      RT_ERR_LIMIT);
  assert_null(t.data);
  assert_non_null(strstr(err.msg, "too large"));
  /* Fits in int64 but beyond the byte bound: refused before calloc. */
  assert_int_equal(rt_tensor_alloc(&t, RT_F64, 1, (int64_t[]){(int64_t)1 << 40}, &err),
                   RT_ERR_LIMIT);
  assert_int_equal(rt_tensor_alloc(&t, RT_F32, 1, (int64_t[]){-3}, &err), RT_ERR_ARG);
  assert_non_null(strstr(err.msg, "negative"));
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_int_equal(rt_tensor_alloc(&t, RT_F32, 9, nine, &err), RT_ERR_ARG);
  assert_int_equal(rt_tensor_alloc(&t, (RtDType)42, 1, nine, &err), RT_ERR_ARG);
  assert_int_equal(rt_tensor_alloc(NULL, RT_F32, 1, nine, NULL), RT_ERR_ARG);
  rt_tensor_free(&t);
}

static void check_f16(uint16_t bits, double expect) {
  RtError err;
  RtTensor src = tensor_of(RT_F16, 1, (int64_t[]){1}, &bits), d32, d64;
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &d32, &err), RT_OK);
  assert_int_equal(rt_tensor_convert(&src, RT_F64, &d64, &err), RT_OK);
  float f = *(float *)d32.data;
  double d = *(double *)d64.data;
  if (isnan(expect)) {
    assert_true(isnan(f) && isnan(d));
  } else {
    if (!(f == (float)expect && d == expect && !signbit(f) == !signbit(expect)))
      fail_msg("f16 0x%04x: got %.17g / %.17g, expected %.17g", bits, (double)f, d, expect);
  }
  rt_tensor_free(&d32);
  rt_tensor_free(&d64);
}

static void check_bf16(uint16_t bits, double expect) {
  RtError err;
  RtTensor src = tensor_of(RT_BF16, 1, (int64_t[]){1}, &bits), d64;
  assert_int_equal(rt_tensor_convert(&src, RT_F64, &d64, &err), RT_OK);
  double d = *(double *)d64.data;
  if (isnan(expect))
    assert_true(isnan(d));
  else if (!(d == expect && !signbit(d) == !signbit(expect)))
    fail_msg("bf16 0x%04x: got %.17g, expected %.17g", bits, d, expect);
  rt_tensor_free(&d64);
}

static void test_f16_known(void **state) {
  (void)state;
  check_f16(0x3c00, 1.0);
  check_f16(0xc000, -2.0);
  check_f16(0x3555, 0.333251953125);
  check_f16(0x7bff, 65504.0);            /* largest normal */
  check_f16(0x0400, ldexp(1.0, -14));    /* smallest normal */
  check_f16(0x0001, ldexp(1.0, -24));    /* smallest subnormal */
  check_f16(0x03ff, ldexp(1023.0, -24)); /* largest subnormal */
  check_f16(0x8001, -ldexp(1.0, -24));
  check_f16(0x0000, 0.0);
  check_f16(0x8000, -0.0);
  check_f16(0x7c00, INFINITY);
  check_f16(0xfc00, -INFINITY);
  check_f16(0x7e00, NAN);
  check_f16(0x7c01, NAN); /* signalling-NaN pattern stays a NaN, not inf */
}

/* Every finite f16 against (-1)^s * m * 2^e computed in double. */
static void test_f16_exhaustive(void **state) {
  (void)state;
  static uint16_t bits[65536];
  for (int i = 0; i < 65536; i++) bits[i] = (uint16_t)i;
  RtTensor src = tensor_of(RT_F16, 1, (int64_t[]){65536}, bits), out;
  RtError err;
  assert_int_equal(rt_tensor_convert(&src, RT_F64, &out, &err), RT_OK);
  const double *v = out.data;
  for (int i = 0; i < 65536; i++) {
    int s = i >> 15, e = (i >> 10) & 31, m = i & 1023;
    double want;
    if (e == 31)
      want = m ? NAN : INFINITY;
    else if (e == 0)
      want = ldexp(m, -24);
    else
      want = ldexp(1024 + m, e - 25);
    if (s) want = -want;
    if (isnan(want) ? !isnan(v[i]) : (v[i] != want || !signbit(v[i]) != !signbit(want)))
      fail_msg("f16 0x%04x decoded to %.17g, expected %.17g", i, v[i], want);
  }
  rt_tensor_free(&out);
}

static void test_bf16_known(void **state) {
  (void)state;
  check_bf16(0x3f80, 1.0);
  check_bf16(0xc000, -2.0);
  check_bf16(0x4049, 3.140625);
  check_bf16(0x7f7f, 3.3895313892515355e38); /* largest finite */
  check_bf16(0x0001, ldexp(1.0, -133));      /* smallest subnormal */
  check_bf16(0x8000, -0.0);
  check_bf16(0x7f80, INFINITY);
  check_bf16(0xff80, -INFINITY);
  check_bf16(0x7fc0, NAN);
}

static void test_convert_ints_and_floats(void **state) {
  (void)state;
  RtError err;
  RtTensor out;
  int64_t i64[] = {((int64_t)1 << 53) + 1, ((int64_t)1 << 24) + 1, -7, INT64_MIN};
  RtTensor src = tensor_of(RT_I64, 2, (int64_t[]){2, 2}, i64);
  assert_int_equal(rt_tensor_convert(&src, RT_F64, &out, &err), RT_OK);
  assert_int_equal(out.ndim, 2);
  assert_int_equal(out.shape[1], 2);
  assert_true(((double *)out.data)[1] == 16777217.0); /* exact in f64 */
  assert_true(((double *)out.data)[2] == -7.0);
  assert_true(((double *)out.data)[3] == -9223372036854775808.0);
  rt_tensor_free(&out);
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, &err), RT_OK);
  /* One rounding straight to f32 (2^53+1 -> 2^53), not via f64. */
  assert_true(((float *)out.data)[0] == 9007199254740992.0f);
  assert_true(((float *)out.data)[1] == 16777216.0f);
  rt_tensor_free(&out);

  int32_t i32[] = {INT32_MIN, INT32_MAX, 0};
  src = tensor_of(RT_I32, 1, (int64_t[]){3}, i32);
  assert_int_equal(rt_tensor_convert(&src, RT_F64, &out, &err), RT_OK);
  assert_true(((double *)out.data)[0] == -2147483648.0);
  assert_true(((double *)out.data)[1] == 2147483647.0);
  rt_tensor_free(&out);

  double f64[] = {0.1, 1e300, -1e-300};
  src = tensor_of(RT_F64, 1, (int64_t[]){3}, f64);
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, &err), RT_OK);
  assert_true(((float *)out.data)[0] == 0.1f);
  assert_true(isinf(((float *)out.data)[1]));
  assert_true(((float *)out.data)[2] == 0.0f);
  rt_tensor_free(&out);

  float f32 = 2.5f;
  src = tensor_of(RT_F32, 0, NULL, &f32);
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, &err), RT_OK); /* a copy */
  assert_ptr_not_equal(out.data, &f32);
  assert_true(*(float *)out.data == 2.5f);
  rt_tensor_free(&out);

  /* Empty tensors convert without touching data. */
  src = tensor_of(RT_F16, 2, (int64_t[]){0, 3}, NULL);
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, &err), RT_OK);
  assert_int_equal(rt_numel(&out), 0);
  rt_tensor_free(&out);
}

static void test_convert_errors(void **state) {
  (void)state;
  RtError err;
  RtTensor out;
  float x = 1;
  RtTensor src = tensor_of(RT_F32, 1, (int64_t[]){1}, &x);
  assert_int_equal(rt_tensor_convert(&src, RT_I32, &out, &err), RT_ERR_DTYPE);
  assert_non_null(strstr(err.msg, "i32"));
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &src, &err), RT_ERR_ARG);
  assert_int_equal(rt_tensor_convert(NULL, RT_F32, &out, &err), RT_ERR_ARG);
  src.data = NULL;
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, &err), RT_ERR_ARG);
  src = tensor_of(RT_F32, 1, (int64_t[]){-1}, &x);
  assert_int_equal(rt_tensor_convert(&src, RT_F32, &out, NULL), RT_ERR_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dtype_size_name),
      cmocka_unit_test(test_numel),
      cmocka_unit_test(test_alloc_free),
      cmocka_unit_test(test_f16_known),
      cmocka_unit_test(test_f16_exhaustive),
      cmocka_unit_test(test_bf16_known),
      cmocka_unit_test(test_convert_ints_and_floats),
      cmocka_unit_test(test_convert_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
