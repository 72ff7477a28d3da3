/* test_cli.c - the command-line contract of docs/cli.md: exit statuses, error
 * messages that name the argument or file, and the run paths (inputs, states,
 * lengths, outputs, --expect) end to end on a small cell. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt.h"
#include "testutil.h"

/* Every command runs in the source tree, so paths like examples/lstm.seq work. */
#define EXPECT_RUN(args, want_rc, needle) tu_expect_seqc(SEQ_SOURCE_DIR, args, want_rc, needle)

/* A tiny diagonal cell: h' = a*h + x, y = h'. */
static const char *cell_src = "cell Acc(D) {\n"
                              "  param a: [D]\n"
                              "  input x: [D]\n"
                              "  state h: [D] = 0\n"
                              "  output y: [D]\n"
                              "  step {\n"
                              "    h' = a * h + x\n"
                              "    y = h'\n"
                              "  }\n"
                              "}\n";

/* Every elementwise function on special values: NaN and infinities must come
 * out of compiled code as they come out of the interpreter (and torch). */
static const char *special_src = "cell Special(D) {\n"
                                 "  input x: [D]\n"
                                 "  output y: [8*D]\n"
                                 "  step {\n"
                                 "    y = concat(tanh(x), sigmoid(x), exp(x), max(x, 0), relu(x),\n"
                                 "               softplus(x), logsigmoid(x), min(x, 1))\n"
                                 "  }\n"
                                 "}\n";

/* Acc with a context added to every step. */
static const char *ctx_src = "cell AccCtx(D) {\n"
                             "  param a: [D]\n"
                             "  input x: [D]\n"
                             "  context g: [D]\n"
                             "  state h: [D] = 0\n"
                             "  output y: [D]\n"
                             "  step {\n"
                             "    h' = a * h + x + g\n"
                             "    y = h'\n"
                             "  }\n"
                             "}\n";

static char dir[256];

static void write_npy(const char *name, RtDType dt, int ndim, const int64_t *shape,
                      const double *vals) {
  RtTensor t;
  RtError err;
  assert_int_equal(rt_tensor_alloc(&t, dt, ndim, shape, &err), 0);
  int64_t n = rt_numel(&t);
  for (int64_t i = 0; i < n; i++) {
    if (dt == RT_F32)
      ((float *)t.data)[i] = (float)vals[i];
    else if (dt == RT_I64)
      ((int64_t *)t.data)[i] = (int64_t)vals[i];
    else
      ((double *)t.data)[i] = vals[i];
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(rt_npy_write(path, &t, &err), 0);
  rt_tensor_free(&t);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "%s", tu_tmpdir());
  char path[1024];
  snprintf(path, sizeof path, "%s/acc.seq", dir);
  tu_write_file(path, cell_src);
  snprintf(path, sizeof path, "%s/special.seq", dir);
  tu_write_file(path, special_src);
  snprintf(path, sizeof path, "%s/ctx.seq", dir);
  tu_write_file(path, ctx_src);
  double special[8] = {NAN, INFINITY, -INFINITY, 0.0, 89.0, -120.0, 1.0, -1.0};
  write_npy("special.npy", RT_F32, 3, (int64_t[]){1, 1, 8}, special);
  /* x: [B=2, T=3, D=2] = 1; a = 0.5 (weights); h0 = [[10,10],[0,0]]; lengths [3, 1] */
  double ones[12], h0[4] = {10, 10, 0, 0}, len[2] = {3, 1}, a[2] = {0.5, 0.5};
  for (int i = 0; i < 12; i++) ones[i] = 1;
  write_npy("x.npy", RT_F32, 3, (int64_t[]){2, 3, 2}, ones);
  write_npy("h0.npy", RT_F32, 2, (int64_t[]){2, 2}, h0);
  write_npy("len.npy", RT_I64, 1, (int64_t[]){2}, len);
  write_npy("badlen.npy", RT_I64, 1, (int64_t[]){2}, (double[]){4, 1});
  write_npy("x_int.npy", RT_I64, 2, (int64_t[]){2, 3}, ones);
  write_npy("a.npy", RT_F32, 1, (int64_t[]){2}, a);
  RtTensor w;
  RtError err;
  assert_int_equal(rt_tensor_alloc(&w, RT_F32, 1, (int64_t[]){2}, &err), 0);
  ((float *)w.data)[0] = ((float *)w.data)[1] = 0.5f;
  const char *names[] = {"a"};
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  assert_int_equal(rt_st_write(path, 1, names, &w, &err), 0);
  rt_tensor_free(&w);
  /* Expected with h0 and lengths: batch 0: 6, 4, 3 ; batch 1: 1, then zeros. */
  double y[12] = {6, 6, 4, 4, 3, 3, 1, 1, 0, 0, 0, 0};
  write_npy("y_expected.npy", RT_F32, 3, (int64_t[]){2, 3, 2}, y);
  double hn[4] = {3, 3, 1, 1};
  write_npy("hn_expected.npy", RT_F32, 2, (int64_t[]){2, 2}, hn);
  /* AccCtx with the context g = h0 (per example [10, 10] and [0, 0]) and lengths [3, 1]:
   * batch 0: 11, 16.5, 19.25; batch 1: 1, then zeros. A batch of three contexts. */
  double yc[12] = {11, 11, 16.5, 16.5, 19.25, 19.25, 1, 1, 0, 0, 0, 0};
  write_npy("yctx_expected.npy", RT_F32, 3, (int64_t[]){2, 3, 2}, yc);
  write_npy("g3.npy", RT_F32, 2, (int64_t[]){3, 2}, (double[]){0, 0, 0, 0, 0, 0});
  return 0;
}

static void test_usage_errors(void **state) {
  (void)state;
  EXPECT_RUN("", 2, "no input file");
  EXPECT_RUN("--bogus x.seq", 2, "unknown option '--bogus'");
  EXPECT_RUN("--emit=wat examples/lstm.seq", 2, "unknown --emit kind 'wat'");
  EXPECT_RUN("run examples/lstm.seq --in x=1.npy", 2, "pass --weights FILE or --random-weights");
  EXPECT_RUN("run examples/lstm.seq --random-weights --in x", 2, "--in takes NAME=FILE.npy");
  EXPECT_RUN("run examples/lstm.seq --random-weights --seed -3 --in x=a.npy", 2, "--seed");
  EXPECT_RUN("--help", 0, "usage:");
}

static void test_report(void **state) {
  (void)state;
  EXPECT_RUN("--report examples/lstm.seq", 0, "state h [H]: nonlinear");
  EXPECT_RUN("--report examples/mingru.seq", 0, "strategy: associative scan");
}

static void test_missing_source(void **state) {
  (void)state;
  EXPECT_RUN("--emit=ir no/such/file.seq", 1, "cannot open 'no/such/file.seq'");
}

static void test_run_with_state_and_lengths(void **state) {
  (void)state;
  char args[16384];
  snprintf(args, sizeof args,
           "run %s/acc.seq --weights %s/w.safetensors --in x=%s/x.npy --in h=%s/h0.npy "
           "--in lengths=%s/len.npy --out y=%s/y.npy --out h=%s/hn.npy "
           "--expect y=%s/y_expected.npy --expect h=%s/hn_expected.npy",
           dir, dir, dir, dir, dir, dir, dir, dir, dir);
  EXPECT_RUN(args, 0, "expect h: max abs error 0");
  EXPECT_RUN(args, 0, "output y: shape [2, 3, 2] f32");
}

/* A context, one value per sequence read by every step, in both backends. */
static void test_run_with_context(void **state) {
  (void)state;
  char args[16384];
  for (int be = 0; be < 2; be++) {
    snprintf(args, sizeof args,
             "run %s/ctx.seq --weights %s/w.safetensors --in x=%s/x.npy --in g=%s/h0.npy "
             "--in lengths=%s/len.npy --expect y=%s/yctx_expected.npy --backend=%s",
             dir, dir, dir, dir, dir, dir, be ? "cpu" : "interp");
    EXPECT_RUN(args, 0, ": ok");
  }
}

static void test_run_errors_name_the_culprit(void **state) {
  (void)state;
  char args[16384];
  snprintf(args, sizeof args, "run %s/acc.seq --weights %s/w.safetensors --in q=%s/x.npy", dir, dir,
           dir);
  EXPECT_RUN(args, 1, "'q' is not an input or state");
  snprintf(args, sizeof args, "run %s/acc.seq --weights %s/w.safetensors --in h=%s/h0.npy", dir,
           dir, dir);
  EXPECT_RUN(args, 1, "missing input 'x'");
  snprintf(args, sizeof args,
           "run %s/acc.seq --weights %s/w.safetensors --in x=%s/x.npy --in lengths=%s/badlen.npy",
           dir, dir, dir, dir);
  EXPECT_RUN(args, 1, "lengths[0] = 4 is outside [0, T=3]");
  snprintf(args, sizeof args, "run %s/acc.seq --weights %s/nope.safetensors --in x=%s/x.npy", dir,
           dir, dir);
  EXPECT_RUN(args, 1, "nope.safetensors");
  snprintf(args, sizeof args, "run %s/acc.seq --weights %s/w.safetensors --in x=%s/x_int.npy", dir,
           dir, dir);
  EXPECT_RUN(args, 1, "holds integers");
  snprintf(args, sizeof args,
           "run %s/acc.seq --weights %s/w.safetensors --in x=%s/x.npy --expect y=%s/h0.npy", dir,
           dir, dir, dir);
  EXPECT_RUN(args, 1, "--expect y");
  /* A context is [B, ...]: per token, or for another batch, it is refused by name. */
  snprintf(args, sizeof args,
           "run %s/ctx.seq --weights %s/w.safetensors --in x=%s/x.npy --in g=%s/x.npy", dir, dir,
           dir, dir);
  EXPECT_RUN(args, 1, "context 'g' needs rank 2: [B] and then its declared shape");
  snprintf(args, sizeof args,
           "run %s/ctx.seq --weights %s/w.safetensors --in x=%s/x.npy --in g=%s/g3.npy", dir, dir,
           dir, dir);
  EXPECT_RUN(args, 1, "--in g: a batch of 3 contexts for a batch of 2 sequences (input 'x')");
  snprintf(args, sizeof args, "run %s/ctx.seq --weights %s/w.safetensors --in x=%s/x.npy", dir, dir,
           dir);
  EXPECT_RUN(args, 1, "missing input 'g'");
  /* A weights file that is not safetensors at all. */
  snprintf(args, sizeof args, "run %s/acc.seq --weights %s/x.npy --in x=%s/x.npy", dir, dir, dir);
  EXPECT_RUN(args, 1, "x.npy");
}

/* A step loop is unrolled for the n_h known when compiling (DeltaProduct's
 * default 2): weights for 3 factors are an error that says so, not a run
 * that ignores the third; --dims n_h=3 runs them. A layer may not rebind a
 * dim its callee's loop was unrolled with. */
static void test_loop_count_is_fixed(void **state) {
  (void)state;
  const char *d = "tests/reference/fixtures/std_deltaproduct_n3";
  char args[16384];
  snprintf(args, sizeof args,
           "run stdlib/deltaproduct.seq --weights %s/weights.safetensors --in x=%s/x.npy --quiet",
           d, d);
  EXPECT_RUN(args, 1, "n_h = 2 was fixed when compiling, by this count");
  snprintf(
      args, sizeof args,
      "run stdlib/deltaproduct.seq --dims n_h=3 --weights %s/weights.safetensors --in x=%s/x.npy "
      "--in S=%s/S0.npy --in lengths=%s/lengths.npy --expect y=%s/y.npy --tol 1e-5 --quiet",
      d, d, d, d, d);
  EXPECT_RUN(args, 0, "ok");
  char path[4096];
  snprintf(path, sizeof path, "%s/dp_caller.seq", dir);
  tu_write_file(path, "import \"std/deltaproduct.seq\"\n"
                      "model M(I) {\n"
                      "  input x: [I]\n"
                      "  output y: [4]\n"
                      "  layer c = DeltaProduct(I, 3, 4, n_h = 3)\n"
                      "  forward {\n"
                      "    y = c(x)\n"
                      "  }\n"
                      "}\n");
  snprintf(args, sizeof args, "--report %s", path);
  EXPECT_RUN(args, 1, "dimension 'n_h' of 'DeltaProduct' sets a count unrolled when compiling");
  /* With --dims n_h=3 the callee is compiled for 3, and the model agrees. */
  snprintf(args, sizeof args, "--report %s --dims n_h=3,I=5", path);
  EXPECT_RUN(args, 0, "chunked WY");
}

static void test_special_values_agree(void **state) {
  (void)state;
  char args[16384];
  snprintf(args, sizeof args,
           "run %s/special.seq --backend=interp --random-weights --in x=%s/special.npy "
           "--out y=%s/special_y.npy",
           dir, dir, dir);
  EXPECT_RUN(args, 0, "output y: shape [1, 1, 64]");
  snprintf(args, sizeof args,
           "run %s/special.seq --backend=cpu --random-weights --in x=%s/special.npy "
           "--expect y=%s/special_y.npy --tol 1e-6",
           dir, dir, dir);
  EXPECT_RUN(args, 0, ": ok");
}

static void test_check_finite(void **state) {
  (void)state;
  char args[16384];
  for (int cpu = 0; cpu < 2; cpu++) {
    snprintf(args, sizeof args,
             "run %s/special.seq --backend=%s --random-weights --in x=%s/special.npy "
             "--check-finite",
             dir, cpu ? "cpu" : "interp", dir);
    EXPECT_RUN(args, 1, "input 'x' is not finite first at time step 0 (batch 0, element 0: nan)");
    snprintf(args, sizeof args,
             "run %s/acc.seq --backend=%s --weights %s/w.safetensors --in x=%s/x.npy "
             "--check-finite",
             dir, cpu ? "cpu" : "interp", dir, dir);
    EXPECT_RUN(args, 0, "output y");
  }
}

static void test_duplicate_dims(void **state) {
  (void)state;
  EXPECT_RUN("run examples/lstm.seq --random-weights --dims H=3,H=4 --in x=a.npy", 2,
             "'H' is given twice");
}

static void test_random_weights_are_deterministic(void **state) {
  (void)state;
  char args[16384];
  snprintf(args, sizeof args, "run %s/acc.seq --random-weights --seed 7 --in x=%s/x.npy", dir, dir);
  int rc1, rc2;
  char *a = NULL, *b = NULL;
  rc1 = tu_seqc(SEQ_SOURCE_DIR, args, &a);
  rc2 = tu_seqc(SEQ_SOURCE_DIR, args, &b);
  assert_int_equal(rc1, 0);
  assert_int_equal(rc2, 0);
  assert_string_equal(a, b);
  free(a);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_usage_errors),
      cmocka_unit_test(test_missing_source),
      cmocka_unit_test(test_report),
      cmocka_unit_test(test_special_values_agree),
      cmocka_unit_test(test_check_finite),
      cmocka_unit_test(test_duplicate_dims),
      cmocka_unit_test(test_run_with_state_and_lengths),
      cmocka_unit_test(test_run_with_context),
      cmocka_unit_test(test_run_errors_name_the_culprit),
      cmocka_unit_test(test_loop_count_is_fixed),
      cmocka_unit_test(test_random_weights_are_deterministic),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
