/* test_hardening.c - every bound and bad input gets a clean answer: a
 * diagnostic or an error status with a message, never a crash, a hang or an
 * allocation of garbage. Bounds (nesting, identifiers, dims, tensor sizes,
 * imports, file sizes) are tested through the library and the CLI; run-time
 * checks (T = 0, B = 0, lengths, NaN/Inf, dtypes, missing/extra weights and
 * InterpOptions.check_finite) through seqc run and interp_run. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "runtime/rt.h"
#include "testutil.h"

/* ---- helpers ----------------------------------------------------------------- */

static char dir[256];

/* Commands run in this program's temporary directory. */
#define EXPECT_RUN(args, want_rc, needle) tu_expect_seqc(dir, args, want_rc, needle)

static void write_text(const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(tu_write_file(path, text), 0);
}

/* Writes a .npy of the given dtype filled from vals (or with `fill` if vals is NULL). */
static void write_npy(const char *name, RtDType dt, int ndim, const int64_t *shape,
                      const double *vals, double fill) {
  RtTensor t;
  RtError err;
  assert_int_equal(rt_tensor_alloc(&t, dt, ndim, shape, &err), 0);
  int64_t n = rt_numel(&t);
  for (int64_t i = 0; i < n; i++) {
    double v = vals ? vals[i] : fill;
    if (dt == RT_F32)
      ((float *)t.data)[i] = (float)v;
    else if (dt == RT_F64)
      ((double *)t.data)[i] = v;
    else if (dt == RT_I32)
      ((int32_t *)t.data)[i] = (int32_t)v;
    else if (dt == RT_I64)
      ((int64_t *)t.data)[i] = (int64_t)v;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(rt_npy_write(path, &t, &err), 0);
  rt_tensor_free(&t);
}

/* Compiles `src` from a string; returns the first error message or NULL if it compiled. */
static Arena *A;
static DiagEngine DE;
static SrcMgr SM;

static IrModule *compile(const char *src) {
  if (A) arena_destroy(A);
  A = arena_create();
  assert_non_null(A);
  srcmgr_init(&SM, A);
  diag_init(&DE, A, NULL);
  return seq_compile_string(A, &SM, &DE, "t.seq", src, NULL);
}

static int has_diag(const char *needle) {
  for (int i = 0; i < DE.diags.n; i++)
    if (strstr(DE.diags.v[i].message, needle)) return 1;
  for (int i = 0; i < DE.diags.n; i++) fprintf(stderr, "  diag: %s\n", DE.diags.v[i].message);
  return 0;
}

/* A diagonal cell with a square matrix parameter whose size is set by --dims. */
static const char *big_src = "cell Big(D, H) {\n"
                             "  param w: [H, H]\n"
                             "  input x: [D]\n"
                             "  output y: [D]\n"
                             "  step {\n"
                             "    y = x\n"
                             "  }\n"
                             "}\n";

/* h' = a*h + x, y = tanh(h'). */
static const char *acc_src = "cell Acc(D) {\n"
                             "  param a: [D]\n"
                             "  input x: [D]\n"
                             "  state h: [D] = 0\n"
                             "  output y: [D]\n"
                             "  step {\n"
                             "    h' = a * h + x\n"
                             "    y = tanh(h')\n"
                             "  }\n"
                             "}\n";

/* The same recurrence with y = h' (no squashing). */
static const char *lin_src = "cell Lin(D) {\n"
                             "  param a: [D]\n"
                             "  input x: [D]\n"
                             "  state h: [D] = 0\n"
                             "  output y: [D]\n"
                             "  step {\n"
                             "    h' = a * h + x\n"
                             "    y = h'\n"
                             "  }\n"
                             "}\n";

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "%s", tu_tmpdir());
  write_text("big.seq", big_src);
  write_text("acc.seq", acc_src);
  write_text("state.seq", "cell S(D, H) {\n  input x: [D]\n  state h: [H, H] = 0\n"
                          "  output y: [D]\n  step {\n    h' = h + 1\n    y = x\n  }\n}\n");
  write_text("outer.seq", "cell O(D, H) {\n  param w: [H]\n  input x: [D]\n  output y: [D]\n"
                          "  step {\n    let m = outer(w, w)\n    y = x + sum(m)\n  }\n}\n");
  int64_t s123[3] = {1, 2, 3}, s103[3] = {1, 0, 3}, s023[3] = {0, 2, 3};
  write_npy("x.npy", RT_F32, 3, s123, NULL, 1.0);
  write_npy("x_t0.npy", RT_F32, 3, s103, NULL, 0);
  write_npy("x_b0.npy", RT_F32, 3, s023, NULL, 0);
  write_npy("x_i32.npy", RT_I32, 3, s123, NULL, 1);
  double nan6[6] = {1, 1, 1, 1, NAN, 1}, inf6[6] = {1, 1, 1, 1, 1, -INFINITY};
  write_npy("x_nan.npy", RT_F32, 3, s123, nan6, 0);
  write_npy("x_inf.npy", RT_F64, 3, s123, inf6, 0);
  write_npy("len_neg.npy", RT_I64, 1, (int64_t[]){1}, (double[]){-1}, 0);
  write_npy("len_big.npy", RT_I32, 1, (int64_t[]){1}, (double[]){3}, 0);
  write_npy("len_f32.npy", RT_F32, 1, (int64_t[]){1}, (double[]){1}, 0);
  /* Weights: exact, one missing (none for a), an extra tensor, a wrong shape, ints. */
  RtTensor w[3];
  RtError err;
  for (int i = 0; i < 3; i++) {
    int64_t n = i == 2 ? 4 : 3;
    assert_int_equal(rt_tensor_alloc(&w[i], RT_F32, 1, &n, &err), 0);
    for (int k = 0; k < n; k++) ((float *)w[i].data)[k] = 0.5f;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  assert_int_equal(rt_st_write(path, 1, (const char *[]){"a"}, &w[0], &err), 0);
  snprintf(path, sizeof path, "%s/w_extra.safetensors", dir);
  assert_int_equal(rt_st_write(path, 2, (const char *[]){"a", "b"}, w, &err), 0);
  snprintf(path, sizeof path, "%s/w_missing.safetensors", dir);
  assert_int_equal(rt_st_write(path, 1, (const char *[]){"alpha"}, &w[0], &err), 0);
  snprintf(path, sizeof path, "%s/w_shape.safetensors", dir);
  assert_int_equal(rt_st_write(path, 1, (const char *[]){"a"}, &w[2], &err), 0);
  for (int i = 0; i < 3; i++) rt_tensor_free(&w[i]);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (A) arena_destroy(A);
  A = NULL;
  return 0;
}

/* ---- bounds: nesting, identifiers, dims, tensor sizes ------------------------- */

static void test_nesting_depth(void **state) {
  (void)state;
  size_t n = 100000;
  char *src = malloc(n + 200);
  assert_non_null(src);
  strcpy(src, "cell C(D) {\n  input x: [D]\n  output y: [D]\n  step {\n    y = ");
  size_t len = strlen(src);
  for (int i = 0; i < 5000; i++) src[len++] = '(';
  src[len++] = 'x';
  for (int i = 0; i < 5000; i++) src[len++] = ')';
  strcpy(src + len, "\n  }\n}\n");
  assert_null(compile(src));
  assert_true(has_diag("nesting deeper than"));
  /* A long run of unary minus is nesting too (each one a parser frame). */
  strcpy(src, "cell C(D) {\n  input x: [D]\n  output y: [D]\n  step {\n    y = ");
  len = strlen(src);
  for (int i = 0; i < 20000; i++) src[len++] = '-';
  strcpy(src + len, "x\n  }\n}\n");
  assert_null(compile(src));
  assert_true(has_diag("nesting deeper than"));
  /* A flat chain nests nothing but is as deep as it is long: a 200000-term sum
   * overflowed the stack in lowering. Operators per statement are bounded... */
  free(src);
  src = malloc(5 * 200000 + 200);
  assert_non_null(src);
  strcpy(src, "cell C(D) {\n  input x: [D]\n  output y: [D]\n  step {\n    y = x");
  len = strlen(src);
  for (int i = 0; i < 200000; i++) memcpy(src + len + 4 * (size_t)i, " + x", 4);
  strcpy(src + len + 4 * 200000, "\n  }\n}\n");
  assert_null(compile(src));
  assert_true(has_diag("more than 10000 operators and brackets in one statement"));
  /* ...and so are transposes and index brackets, which deepen the tree the same way. */
  strcpy(src, "cell C(D) {\n  input x: [D, D]\n  output y: [D, D]\n  step {\n    y = x");
  len = strlen(src);
  for (int i = 0; i < 20000; i++) memcpy(src + len + 2 * (size_t)i, "^T", 2);
  strcpy(src + len + 2 * 20000, "\n  }\n}\n");
  assert_null(compile(src));
  assert_true(has_diag("more than 10000 operators"));
  /* Just under the bound, every recursive walk copes (also under ASan). */
  strcpy(src, "cell C(D) {\n  input x: [D]\n  output y: [D]\n  step {\n    y = x");
  len = strlen(src);
  for (int i = 0; i < SEQ_MAX_STMT_OPS - 1; i++) memcpy(src + len + 4 * (size_t)i, " - x", 4);
  strcpy(src + len + 4 * (SEQ_MAX_STMT_OPS - 1), "\n  }\n}\n");
  IrModule *m = compile(src);
  assert_non_null(m);
  assert_int_equal(ir_verify(m, &DE, "test"), 0);
  /* Just inside the nesting bound compiles. */
  strcpy(src, "cell C(D) {\n  input x: [D]\n  output y: [D]\n  step {\n    y = ");
  len = strlen(src);
  for (int i = 0; i < 200; i++) src[len++] = '(';
  src[len++] = 'x';
  for (int i = 0; i < 200; i++) src[len++] = ')';
  strcpy(src + len, "\n  }\n}\n");
  assert_non_null(compile(src));
  free(src);
}

static void test_identifier_length(void **state) {
  (void)state;
  char src[4096], name[SEQ_MAX_IDENT_LEN + 2];
  memset(name, 'q', sizeof name - 1);
  name[sizeof name - 1] = 0;
  snprintf(src, sizeof src,
           "cell C(D) {\n  input %s: [D]\n  output y: [D]\n  step {\n    y = %s\n  }\n}\n", name,
           name);
  assert_null(compile(src));
  assert_true(has_diag("identifier longer than 256 bytes"));
  name[SEQ_MAX_IDENT_LEN] = 0; /* exactly at the bound */
  snprintf(src, sizeof src,
           "cell C(D) {\n  input %s: [D]\n  output y: [D]\n  step {\n    y = %s\n  }\n}\n", name,
           name);
  assert_non_null(compile(src));
}

static void test_dimension_values(void **state) {
  (void)state;
  /* A constant dimension and a default beyond SEQ_MAX_DIM_VALUE, and one past int64. */
  assert_null(compile("cell C(D) {\n  param w: [2000000000000]\n  input x: [D]\n"
                      "  output y: [D]\n  step {\n    y = x\n  }\n}\n"));
  assert_true(has_diag("2000000000000"));
  assert_null(compile("cell C(D = 2000000000000) {\n  input x: [D]\n"
                      "  output y: [D]\n  step {\n    y = x\n  }\n}\n"));
  assert_true(DE.nerrors > 0);
  assert_null(compile("cell C(D = 99999999999999999999) {\n  input x: [D]\n"
                      "  output y: [D]\n  step {\n    y = x\n  }\n}\n"));
  assert_true(DE.nerrors > 0);
  /* On the command line: negative, past the bound, not a number. */
  EXPECT_RUN("run big.seq --random-weights --dims H=-1 --in x=x.npy", 2, "--dims");
  EXPECT_RUN("run big.seq --random-weights --dims H=2199023255552 --in x=x.npy", 2, "--dims");
  EXPECT_RUN("run big.seq --random-weights --dims H=99999999999999999999999 --in x=x.npy", 2,
             "--dims");
}

/* [H, H] with H = 2e9 is 4e18 elements, 3.2e19 bytes as float64: that must be
 * a diagnostic naming the weight, on both backends, not a malloc of garbage. */
static void test_tensor_size_overflow(void **state) {
  (void)state;
  EXPECT_RUN("run big.seq --random-weights --dims H=2000000000 --in x=x.npy --backend=interp", 1,
             "weight 'w' of shape [2000000000, 2000000000] is too large");
  EXPECT_RUN("run big.seq --random-weights --dims H=2000000000 --in x=x.npy", 1, "'w'");
  EXPECT_RUN("run big.seq --random-weights --dims H=1099511627776 --in x=x.npy --backend=interp", 1,
             "too large");
  /* A state and an intermediate value that only the dims make huge. */
  EXPECT_RUN("run state.seq --random-weights --dims H=3000000000,D=3 --in x=x.npy "
             "--backend=interp",
             1, "state 'h'");
  EXPECT_RUN("run state.seq --random-weights --dims H=3000000000,D=3 --in x=x.npy", 1, "error");
  EXPECT_RUN("run outer.seq --random-weights --dims H=10000000,D=3 --in x=x.npy --backend=interp",
             1,
             "outer.seq:6:13: error: this value needs 800000000000000 bytes, more than the limit");
  EXPECT_RUN("run outer.seq --random-weights --dims H=10000000,D=3 --in x=x.npy", 1, "error");
  /* The library call: the binding refuses the weight. */
  IrModule *m = compile(big_src);
  assert_non_null(m);
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, A, m, m->funcs.v[m->entry], &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "H", 2000000000, &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "D", 2, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &DE), 0);
  assert_int_not_equal(ir_binding_random(&b, 0, &DE), 0);
  assert_true(has_diag("too large"));
  /* rt_tensor_alloc: element count and byte count overflow. */
  RtTensor t;
  RtError err;
  int64_t huge[3] = {(int64_t)1 << 31, (int64_t)1 << 31, (int64_t)1 << 31};
  assert_int_equal(rt_tensor_alloc(&t, RT_F64, 3, huge, &err), RT_ERR_LIMIT);
  int64_t bytes_over[1] = {INT64_MAX / 4};
  assert_int_equal(rt_tensor_alloc(&t, RT_F64, 1, bytes_over, &err), RT_ERR_LIMIT);
  assert_non_null(strstr(err.msg, "too large"));
}

/* Thirty models each holding two layers of the one before: 2^30 instances
 * from a 300-line file. Binding refuses it instead of exhausting memory. */
static void test_instance_tree_size(void **state) {
  (void)state;
  size_t cap = 64 * 1024, len = 0;
  char *src = malloc(cap);
  assert_non_null(src);
  len += (size_t)snprintf(src + len, cap - len,
                          "cell C0(D) {\n  param w: [D]\n  input x: [D]\n  output y: [D]\n"
                          "  step {\n    y = w * x\n  }\n}\n");
  for (int i = 1; i <= 30; i++)
    len += (size_t)snprintf(src + len, cap - len,
                            "model M%d(D) {\n  layer a = %s%d(D = D)\n  layer b = %s%d(D = D)\n"
                            "  input x: [D]\n  output y: [D]\n  forward {\n    y = a(x) + b(x)\n"
                            "  }\n}\n",
                            i, i == 1 ? "C" : "M", i - 1, i == 1 ? "C" : "M", i - 1);
  write_text("tree.seq", src);
  IrModule *m = compile(src);
  assert_non_null(m);
  IrBinding b;
  assert_int_not_equal(ir_binding_init(&b, A, m, m->funcs.v[m->entry], &DE), 0);
  assert_true(has_diag("M30 holds more than 65536 layer instances in all"));
  assert_int_equal(DE.nerrors, 1);
  /* At M30's header, not at a layer deep inside the tree. */
  int m30_line = 1;
  for (const char *c = src; c < strstr(src, "model M30("); c++) m30_line += *c == '\n';
  assert_int_equal(DE.diags.v[0].loc.line, m30_line);
  /* A tree of 2^15 instances (15 levels) binds: the bound is not in the way of real models. */
  IrBinding b15;
  assert_int_equal(ir_binding_init(&b15, A, m, m->funcs.v[ir_func_index(m, "M15")], &DE), 0);
  assert_int_equal(b15.flat.params.n, 1 << 15);
  free(src);
  EXPECT_RUN("run tree.seq --random-weights --in x=x.npy --backend=interp", 1,
             "holds more than 65536 layer instances");
  EXPECT_RUN("run tree.seq --random-weights --in x=x.npy", 1,
             "holds more than 65536 layer instances");
}

static void test_import_depth(void **state) {
  (void)state;
  /* A chain of files each importing the next, deeper than SEQ_MAX_IMPORT_DEPTH. */
  char name[64], text[256];
  int n = SEQ_MAX_IMPORT_DEPTH + 3;
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "chain%d.seq", i);
    if (i + 1 < n)
      snprintf(text, sizeof text, "import \"chain%d.seq\"\n", i + 1);
    else
      snprintf(text, sizeof text,
               "cell Last(D) {\n input x: [D]\n output y: [D]\n step {\n    y = x\n  }\n}\n");
    write_text(name, text);
  }
  EXPECT_RUN("--emit=ir chain0.seq", 1, "imports are nested more than 32 files deep");
  /* A file importing itself is a cycle, not infinite recursion. */
  write_text("self.seq", "import \"self.seq\"\ncell C(D) {\n input x: [D]\n output y: [D]\n"
                         " step {\n    y = x\n  }\n}\n");
  EXPECT_RUN("--emit=ir self.seq", 1, "self.seq");
}

/* Creates a sparse file of `size` bytes (no disk used) starting with `head`. */
static int sparse_file(const char *name, const void *head, size_t nhead, int64_t size) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) return -1;
  int ok = write(fd, head, nhead) == (ssize_t)nhead && ftruncate(fd, (off_t)size) == 0;
  close(fd);
  return ok ? 0 : -1;
}

static void test_file_sizes(void **state) {
  (void)state;
  /* Weight and input files past RT_MAX_FILE_BYTES are refused before reading. */
  uint64_t hlen = 2;
  unsigned char head[10];
  memcpy(head, &hlen, 8);
  memcpy(head + 8, "{}", 2);
  if (sparse_file("huge.safetensors", head, sizeof head, RT_MAX_FILE_BYTES + 1) == 0) {
    EXPECT_RUN("run acc.seq --weights huge.safetensors --in x=x.npy", 1, "huge.safetensors");
    RtSafetensors *st = NULL;
    RtError err;
    char path[1024];
    snprintf(path, sizeof path, "%s/huge.safetensors", dir);
    assert_int_equal(rt_st_open(path, &st, &err), RT_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "limit"));
  }
  if (sparse_file("huge.npy", "\x93NUMPY", 6, RT_MAX_FILE_BYTES + 1) == 0) {
    RtTensor t;
    RtError err;
    char path[1024];
    snprintf(path, sizeof path, "%s/huge.npy", dir);
    assert_int_equal(rt_npy_read(path, &t, &err), RT_ERR_LIMIT);
    EXPECT_RUN("run acc.seq --weights w.safetensors --in x=huge.npy", 1, "huge.npy");
  }
  /* A header length that claims more than the file holds. */
  uint64_t lie = UINT64_MAX;
  memcpy(head, &lie, 8);
  if (sparse_file("lie.safetensors", head, sizeof head, sizeof head) == 0)
    EXPECT_RUN("run acc.seq --weights lie.safetensors --in x=x.npy", 1, "lie.safetensors");
  /* A source file past SEQ_MAX_SOURCE_BYTES. */
  if (sparse_file("huge.seq", "# big\n", 6, (int64_t)SEQ_MAX_SOURCE_BYTES + 1) == 0)
    EXPECT_RUN("--emit=ir huge.seq", 1, "huge.seq");
}

/* ---- run-time checks through the CLI ------------------------------------------- */

static void test_empty_batch_and_time(void **state) {
  (void)state;
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_t0.npy --backend=interp", 0,
             "output y: shape [1, 0, 3]");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_b0.npy --backend=interp", 0,
             "output y: shape [0, 2, 3]");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_t0.npy", 0, "output y: shape [1, 0, 3]");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_b0.npy", 0, "output y: shape [0, 2, 3]");
}

static void test_lengths(void **state) {
  (void)state;
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x.npy --in lengths=len_neg.npy", 1,
             "lengths[0] = -1 is outside [0, T=2]");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x.npy --in lengths=len_big.npy", 1,
             "lengths[0] = 3 is outside [0, T=2]");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x.npy --in lengths=len_f32.npy", 1,
             "expected int32 or int64");
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x.npy --in lengths=len_neg.npy "
             "--backend=interp",
             1, "lengths[0] = -1");
}

static void test_dtypes_and_weights(void **state) {
  (void)state;
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_i32.npy", 1, "holds integers");
  EXPECT_RUN("run acc.seq --weights w_missing.safetensors --in x=x.npy", 1, "'a'");
  EXPECT_RUN("run acc.seq --weights w_shape.safetensors --dims D=3 --in x=x.npy", 1, "'a'");
  EXPECT_RUN("run acc.seq --weights w_extra.safetensors --in x=x.npy", 0, "'b'");
}

/* NaN and Inf inputs are not errors by default: they propagate like IEEE
 * arithmetic says, so that a user sees them in the outputs. */
static void test_nonfinite_inputs_propagate(void **state) {
  (void)state;
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_nan.npy --backend=interp", 0, "sum nan");
  /* tanh(-inf) = -1 at step 1 and the state is -inf from there: y stays finite. */
  EXPECT_RUN("run acc.seq --weights w.safetensors --in x=x_inf.npy --backend=interp --out h=h.npy",
             0, "output y");
}

/* ---- InterpOptions.check_finite ---------------------------------------------- */

/* Binds acc_src with a = 0.5 and runs it over x ([B, T, 3]); returns interp_run's status. */
static int run_acc(const char *src, const RtTensor *x, const InterpOptions *opt, RtTensor *y,
                   RtTensor *hout) {
  IrModule *m = compile(src);
  assert_non_null(m);
  IrBinding b;
  assert_int_equal(ir_binding_init(&b, A, m, m->funcs.v[m->entry], &DE), 0);
  assert_int_equal(ir_binding_set_dim(&b, "D", 3, &DE), 0);
  assert_int_equal(ir_binding_infer(&b, NULL, NULL, NULL, NULL, &DE), 0);
  assert_int_equal(ir_binding_random(&b, 1, &DE), 0);
  for (int i = 0; i < 3; i++) ((double *)b.weights[0].data)[i] = 0.5;
  return interp_run(&b, x->shape[0], x->shape[1], x, NULL, NULL, y, hout, opt, &DE);
}

static void test_check_finite(void **state) {
  (void)state;
  RtTensor x, y, h;
  RtError err;
  int64_t shape[3] = {2, 4, 3};
  assert_int_equal(rt_tensor_alloc(&x, RT_F32, 3, shape, &err), 0);
  float *xd = x.data;
  for (int i = 0; i < 24; i++) xd[i] = 0.25f;
  InterpOptions check = {.check_finite = 1}, plain = {0};
  /* All finite: the check passes and changes nothing. */
  assert_int_equal(run_acc(acc_src, &x, &check, &y, &h), 0);
  rt_tensor_free(&y);
  rt_tensor_free(&h);
  /* A NaN input at batch 1, step 2; an Inf at batch 0, step 3: the first step is reported,
   * and as the input (where it entered), not the output. */
  xd[(1 * 4 + 2) * 3 + 1] = NAN;
  xd[(0 * 4 + 3) * 3 + 0] = INFINITY;
  assert_int_not_equal(run_acc(acc_src, &x, &check, &y, &h), 0);
  assert_true(has_diag("input 'x' is not finite first at time step 2 (batch 1, element 1: nan)"));
  assert_null(y.data);
  /* Without the check the NaN reaches the outputs and the run succeeds. */
  assert_int_equal(run_acc(acc_src, &x, &plain, &y, &h), 0);
  assert_true(isnan(((float *)y.data)[(1 * 4 + 2) * 3 + 1]));
  assert_true(isnan(((float *)y.data)[(1 * 4 + 3) * 3 + 1]));
  rt_tensor_free(&y);
  rt_tensor_free(&h);
  /* Finite inputs that overflow in the recurrence: h grows by 3e38 per step in float32.
   * With y = tanh(h') the outputs stay finite and the final state is reported... */
  for (int i = 0; i < 24; i++) xd[i] = 3e38f;
  assert_int_not_equal(run_acc(acc_src, &x, &check, &y, &h), 0);
  assert_true(has_diag("final state 'h' is not finite (batch 0, element 0: inf)"));
  /* ...with y = h' the output is +inf first at step 1, the earliest over the batch. */
  for (int i = 0; i < 12; i++) xd[i] = 1.0f;
  assert_int_not_equal(run_acc(lin_src, &x, &check, &y, &h), 0);
  assert_true(has_diag("output 'y' is not finite first at time step 1 (batch 1, element 0: inf)"));
  /* In float64 nothing overflows. */
  InterpOptions check64 = {.f64 = 1, .check_finite = 1};
  assert_int_equal(run_acc(lin_src, &x, &check64, &y, &h), 0);
  rt_tensor_free(&y);
  rt_tensor_free(&h);
  rt_tensor_free(&x);
}

/* Null pointers into the runtime and the interpreter are errors with a message. */
static void test_null_arguments(void **state) {
  (void)state;
  RtError err;
  RtTensor t;
  RtSafetensors *st = NULL;
  assert_int_equal(rt_tensor_alloc(NULL, RT_F32, 0, NULL, &err), RT_ERR_ARG);
  assert_int_equal(rt_tensor_alloc(&t, RT_F32, 2, NULL, &err), RT_ERR_ARG);
  assert_int_equal(rt_npy_read_mem(NULL, 10, "x.npy", &t, &err) != 0, 1);
  assert_int_equal(rt_st_open_mem(NULL, 10, "w", &st, &err) != 0, 1);
  assert_int_equal(rt_st_read(NULL, "a", RT_F32, &t, &err), RT_ERR_ARG);
  assert_int_equal(rt_st_read(NULL, "a", RT_F32, NULL, &err), RT_ERR_ARG);
  assert_int_equal(rt_numel(NULL), -1);
  rt_tensor_free(NULL);
  rt_st_close(NULL);
  IrBinding empty = {0};
  diag_init(&DE, A ? A : (A = arena_create()), NULL);
  assert_int_not_equal(interp_run(&empty, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL, &DE), 0);
  assert_int_not_equal(interp_run(NULL, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL), 0);
  assert_true(has_diag("no binding"));
}

/* ---- fuzz regressions ---------------------------------------------------------- */

/* Every committed fuzz input (tests/fuzz/TARGET/: seeds and inputs that once
 * crashed a target) goes through what its target calls; under the ASan stage
 * of tools/test.sh this replays each crash with the sanitizers on. */
static void replay_dir(const char *target, void (*one)(const char *path)) {
  char cmd[1024], *list = NULL;
  snprintf(cmd, sizeof cmd, "ls -1 %s/tests/fuzz/%s", SEQ_SOURCE_DIR, target);
  assert_int_equal(tu_run(cmd, &list), 0);
  int n = 0;
  for (char *name = strtok(list, "\n"); name; name = strtok(NULL, "\n")) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fuzz/%s/%s", SEQ_SOURCE_DIR, target, name);
    one(path);
    n++;
  }
  free(list);
  assert_true(n > 0);
}

static void replay_frontend(const char *path) {
  size_t len;
  char *text = tu_read_file(path, &len);
  assert_non_null(text);
  IrModule *m = compile(text);
  if (m) {
    assert_int_equal(ir_verify(m, &DE, "replay"), 0);
    FILE *null = fopen("/dev/null", "w");
    assert_non_null(null);
    ir_print_module(null, m);
    fclose(null);
  }
  free(text);
}

static void replay_npy(const char *path) {
  RtTensor t;
  RtError err;
  if (rt_npy_read(path, &t, &err) == 0)
    rt_tensor_free(&t);
  else
    assert_true(err.msg[0] != 0);
}

static void replay_safetensors(const char *path) {
  RtSafetensors *st = NULL;
  RtError err;
  if (rt_st_open(path, &st, &err) != 0) {
    assert_true(err.msg[0] != 0);
    return;
  }
  for (int i = 0; i < rt_st_count(st); i++) {
    RtTensor t;
    if (rt_st_read(st, rt_st_info(st, i)->name, RT_F32, &t, &err) == 0) rt_tensor_free(&t);
  }
  rt_st_close(st);
}

static void test_fuzz_regressions(void **state) {
  (void)state;
  replay_dir("frontend", replay_frontend);
  replay_dir("npy", replay_npy);
  replay_dir("safetensors", replay_safetensors);
  /* The first crash fuzz_frontend found: a model with a layer of itself and
   * unbound dims went on to bind the layer's dims against the function being
   * built, growing them while iterating. */
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fuzz/frontend/regress-self-layer-dims.seq", SEQ_SOURCE_DIR);
  char *text = tu_read_file(path, NULL);
  assert_non_null(text);
  assert_null(compile(text));
  assert_true(has_diag("model 'Block' contains itself"));
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_nesting_depth),
      cmocka_unit_test(test_identifier_length),
      cmocka_unit_test(test_dimension_values),
      cmocka_unit_test(test_tensor_size_overflow),
      cmocka_unit_test(test_instance_tree_size),
      cmocka_unit_test(test_import_depth),
      cmocka_unit_test(test_file_sizes),
      cmocka_unit_test(test_empty_batch_and_time),
      cmocka_unit_test(test_lengths),
      cmocka_unit_test(test_dtypes_and_weights),
      cmocka_unit_test(test_nonfinite_inputs_propagate),
      cmocka_unit_test(test_check_finite),
      cmocka_unit_test(test_null_arguments),
      cmocka_unit_test(test_fuzz_regressions),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
