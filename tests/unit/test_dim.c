/* test_dim.c - dimension polynomials: canonical forms, arithmetic limits,
 * substitution, evaluation and printing. */
#include "testutil.h"

#include "ir/ir.h"

#include <string.h>

/* Dims of a Mamba-like unit: 0 = H, 1 = I, 2 = dt_rank, 3 = d_state. */
static const char *const names[] = {"H", "I", "dt_rank", "d_state"};
enum { H, I, R, S };

static DimExpr V(int v) {
  return dim_var(v);
}
static DimExpr C(int64_t c) {
  return dim_const(c);
}
static DimExpr add(DimExpr a, DimExpr b) {
  DimExpr r;
  assert_int_equal(dim_add(a, b, &r), 0);
  return r;
}
static DimExpr sub(DimExpr a, DimExpr b) {
  DimExpr r;
  assert_int_equal(dim_sub(a, b, &r), 0);
  return r;
}
static DimExpr mul(DimExpr a, DimExpr b) {
  DimExpr r;
  assert_int_equal(dim_mul(a, b, &r), 0);
  return r;
}

static void check_str(DimExpr e, const char *want) {
  Arena *a = arena_create();
  char *s = dim_str(a, e, names);
  assert_non_null(s);
  assert_string_equal(s, want);
  arena_destroy(a);
}

static void test_constants(void **state) {
  (void)state;
  int64_t v = -1;
  assert_int_equal(C(0).nterms, 0);
  assert_true(dim_is_const(C(0), &v));
  assert_int_equal(v, 0);
  assert_true(dim_is_const(C(7), &v));
  assert_int_equal(v, 7);
  assert_false(dim_is_const(V(H), &v));
  assert_true(dim_is_const(sub(V(H), V(H)), &v));
  assert_int_equal(v, 0);
  assert_int_equal(sub(V(H), V(H)).nterms, 0); /* zero terms dropped */
  assert_true(dim_is_const(add(C(3), C(4)), NULL));
}

static void test_canonical_equality(void **state) {
  (void)state;
  /* 2*H + I == I + H + H */
  DimExpr a = add(mul(C(2), V(H)), V(I));
  DimExpr b = add(add(V(I), V(H)), V(H));
  assert_true(dim_eq(a, b));
  assert_false(dim_eq(a, add(V(I), V(H))));
  /* I*H == H*I, and (H + 1)*(H - 1) == H*H - 1 */
  assert_true(dim_eq(mul(V(I), V(H)), mul(V(H), V(I))));
  assert_true(dim_eq(mul(add(V(H), C(1)), sub(V(H), C(1))), sub(mul(V(H), V(H)), C(1))));
  /* 4*H == H + H + H + H and 4*H != 4*I */
  DimExpr h4 = add(add(V(H), V(H)), add(V(H), V(H)));
  assert_true(dim_eq(h4, mul(C(4), V(H))));
  assert_false(dim_eq(h4, mul(C(4), V(I))));
  /* Terms are stored sorted: the constant is last whatever the build order. */
  DimExpr c = add(C(5), add(V(I), mul(V(H), V(H))));
  assert_int_equal(c.nterms, 3);
  assert_int_equal(c.t[0].nvars, 2);
  assert_int_equal(c.t[2].nvars, 0);
  assert_int_equal(c.t[2].coef, 5);
}

static void test_limits(void **state) {
  (void)state;
  DimExpr r;
  /* Degree: H*H*H fits, H*H*H*H does not. */
  DimExpr h3 = mul(mul(V(H), V(H)), V(H));
  assert_int_equal(dim_mul(h3, V(H), &r), -1);
  /* Terms: seven distinct monomials do not fit in six. */
  DimExpr e = C(1);
  for (int v = 0; v < DIM_MAX_TERMS - 1; v++) e = add(e, V(v));
  assert_int_equal(e.nterms, DIM_MAX_TERMS);
  assert_int_equal(dim_add(e, V(DIM_MAX_TERMS), &r), -1);
  /* But a sum that cancels back under the limit is fine. */
  assert_int_equal(dim_add(e, sub(C(0), V(0)), &r), 0);
  assert_int_equal(r.nterms, DIM_MAX_TERMS - 1);
  /* Coefficient overflow. */
  assert_int_equal(dim_add(C(INT64_MAX), C(1), &r), -1);
  assert_int_equal(dim_sub(C(INT64_MIN), C(1), &r), -1);
  assert_int_equal(dim_sub(C(0), C(INT64_MIN), &r), -1);
  assert_int_equal(dim_mul(mul(C(INT64_MAX / 2 + 1), V(H)), C(2), &r), -1);
  /* Products of sums whose intermediate terms overflow the table. */
  DimExpr s = add(add(V(0), V(1)), add(V(2), V(3)));
  assert_int_equal(dim_mul(s, s, &r), -1); /* 10 distinct monomials */
}

static void test_div_exact(void **state) {
  (void)state;
  DimExpr r;
  DimExpr e = add(mul(C(4), V(H)), C(8));
  assert_int_equal(dim_div_exact(e, 4, &r), 0);
  assert_true(dim_eq(r, add(V(H), C(2))));
  assert_int_equal(dim_div_exact(e, 3, &r), -1);
  assert_int_equal(dim_div_exact(e, 0, &r), -1);
  assert_int_equal(dim_div_exact(C(INT64_MIN), -1, &r), -1);
  assert_int_equal(dim_div_exact(e, -2, &r), 0);
  check_str(r, "-2*H - 4");
  assert_int_equal(dim_div_exact(C(0), 5, &r), 0);
  assert_int_equal(r.nterms, 0);
}

/* Division by one term: H*I / I, (2*H*I + 4*I) / (2*I); nothing else. */
static void test_div_term(void **state) {
  (void)state;
  DimExpr r;
  assert_int_equal(dim_div_term(mul(V(H), V(I)), V(I), &r), 0);
  assert_true(dim_eq(r, V(H)));
  DimExpr e = add(mul(C(2), mul(V(H), V(I))), mul(C(4), V(I)));
  assert_int_equal(dim_div_term(e, mul(C(2), V(I)), &r), 0);
  check_str(r, "H + 2");
  assert_int_equal(dim_div_term(mul(V(H), V(H)), V(H), &r), 0);
  assert_true(dim_eq(r, V(H)));
  assert_int_equal(dim_div_term(e, V(H), &r), -1);            /* 4*I holds no H */
  assert_int_equal(dim_div_term(e, mul(C(4), V(I)), &r), -1); /* 2*H*I / 4 */
  assert_int_equal(dim_div_term(V(H), add(V(H), C(1)), &r), -1);
  assert_int_equal(dim_div_term(V(H), C(0), &r), -1);
  assert_int_equal(dim_div_term(C(INT64_MIN), C(-1), &r), -1);
  assert_int_equal(dim_div_term(C(6), C(3), &r), 0);
  assert_true(dim_eq(r, C(2)));
}

static void test_subst(void **state) {
  (void)state;
  /* (4*H + I)[H := 2*D, I := D + 1] == 9*D + 1, with D the variable 0 of
   * the outer function. */
  DimExpr sub_[4] = {mul(C(2), V(0)), add(V(0), C(1)), C(0), C(0)};
  DimExpr r;
  assert_int_equal(dim_subst(add(mul(C(4), V(H)), V(I)), sub_, &r), 0);
  assert_true(dim_eq(r, add(mul(C(9), V(0)), C(1))));
  /* H*I[H := 2*D, I := D + 1] == 2*D*D + 2*D */
  assert_int_equal(dim_subst(mul(V(H), V(I)), sub_, &r), 0);
  assert_true(dim_eq(r, add(mul(C(2), mul(V(0), V(0))), mul(C(2), V(0)))));
  /* Composition that exceeds the degree fails. */
  DimExpr sq[1] = {mul(V(0), V(0))};
  assert_int_equal(dim_subst(mul(V(0), V(0)), sq, &r), -1);
  /* Constants substitute to themselves. */
  assert_int_equal(dim_subst(C(12), sub_, &r), 0);
  assert_true(dim_eq(r, C(12)));
}

static void test_eval(void **state) {
  (void)state;
  int64_t vals[4] = {256, 64, 16, 8}, out = -1;
  assert_int_equal(dim_eval(add(mul(C(4), V(H)), V(I)), vals, &out), 0);
  assert_int_equal(out, 4 * 256 + 64);
  assert_int_equal(dim_eval(sub(mul(C(2), V(H)), C(1)), vals, &out), 0);
  assert_int_equal(out, 511);
  assert_int_equal(dim_eval(C(0), vals, &out), 0);
  assert_int_equal(out, 0);
  /* Negative results are errors. */
  assert_int_equal(dim_eval(sub(V(I), V(H)), vals, &out), -1);
  /* Above SEQ_MAX_DIM_VALUE, and int64 overflow. */
  int64_t big[4] = {(int64_t)1 << 21, 1, 1, 1};
  assert_int_equal(dim_eval(mul(V(H), V(H)), big, &out), -1);
  assert_int_equal(dim_eval(V(H), big, &out), 0);
  int64_t huge[4] = {(int64_t)1 << 40, 1, 1, 1};
  assert_int_equal(dim_eval(V(H), huge, &out), 0);
  assert_int_equal(out, SEQ_MAX_DIM_VALUE);
  assert_int_equal(dim_eval(add(V(H), C(1)), huge, &out), -1);
  assert_int_equal(dim_eval(mul(mul(V(H), V(H)), V(H)), huge, &out), -1);
  /* An intermediate that goes negative is fine if the total is not. */
  assert_int_equal(dim_eval(sub(mul(V(H), V(H)), mul(C(100), V(H))), vals, &out), 0);
  assert_int_equal(out, 256 * 256 - 25600);
}

static void test_print(void **state) {
  (void)state;
  check_str(mul(C(4), V(H)), "4*H");
  check_str(add(mul(C(2), V(S)), V(R)), "dt_rank + 2*d_state");
  check_str(mul(V(H), V(H)), "H*H");
  check_str(sub(mul(C(2), V(H)), C(1)), "2*H - 1");
  check_str(C(0), "0");
  check_str(C(-3), "-3");
  check_str(sub(C(0), V(H)), "-H");
  check_str(add(mul(V(I), V(H)), add(V(H), C(1))), "H*I + H + 1");
  check_str(sub(C(1), mul(C(3), V(I))), "-3*I + 1");
  check_str(C(INT64_MIN), "-9223372036854775808");
  /* Unnamed variables print by index. */
  Arena *a = arena_create();
  assert_string_equal(dim_str(a, mul(C(2), V(1)), NULL), "2*$1");
  arena_destroy(a);
  /* dim_print agrees with dim_str, including past its small buffer. */
  static const char *const long_names[] = {
      "a_rather_long_dimension_name_that_goes_on_and_on_and_on_and_on_and_on_0",
      "a_rather_long_dimension_name_that_goes_on_and_on_and_on_and_on_and_on_1",
      "a_rather_long_dimension_name_that_goes_on_and_on_and_on_and_on_and_on_2"};
  DimExpr e = add(mul(mul(V(0), V(1)), V(2)), add(mul(V(0), V(0)), V(2)));
  char buf[2048];
  FILE *f = fmemopen(buf, sizeof buf, "w");
  assert_non_null(f);
  dim_print(f, e, long_names);
  fclose(f);
  a = arena_create();
  assert_string_equal(buf, dim_str(a, e, long_names));
  assert_true(strlen(buf) > 256);
  arena_destroy(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_constants), cmocka_unit_test(test_canonical_equality),
      cmocka_unit_test(test_limits),    cmocka_unit_test(test_div_exact),
      cmocka_unit_test(test_div_term),  cmocka_unit_test(test_subst),
      cmocka_unit_test(test_eval),      cmocka_unit_test(test_print),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
