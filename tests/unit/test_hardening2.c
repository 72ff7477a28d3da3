/* test_hardening2.c - the second hardening round (issue 12), one table per
 * class of fault a careless or hostile user met:
 *   - target CPUs and features LLVM would abort on: a diagnostic, from the
 *     CLI and through include/seq.h, never an abort or text from LLVM;
 *   - silent wrong answers: float token files, two --out to one file, weights
 *     of integer dtypes;
 *   - --out files written only after the run succeeded;
 *   - compiled-path errors as precise as the interpreter's;
 *   - one diagnostic per mistake, and the right one (no follow-on errors);
 *   - `seqc run` without weights for a cell without parameters;
 *   - the C API's status codes and dims.
 * Each case runs on both backends where both apply. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codegen/cg.h"
#include "runtime/rt.h"
#include "seq.h"
#include "testutil.h"

static char dir[256];

#define EXPECT_RUN(args, want_rc, needle) tu_expect_seqc(dir, args, want_rc, needle)

typedef struct CliCase {
  const char *args; /* run in dir */
  int rc;
  const char *needle;
} CliCase;

static void run_table(const CliCase *c, size_t n) {
  for (size_t i = 0; i < n; i++) EXPECT_RUN(c[i].args, c[i].rc, c[i].needle);
}
#define RUN_TABLE(t) run_table(t, sizeof t / sizeof t[0])

static void write_text(const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(tu_write_file(path, text), 0);
}

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
    else
      ((int64_t *)t.data)[i] = (int64_t)v;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(rt_npy_write(path, &t, &err), 0);
  rt_tensor_free(&t);
}

/* A safetensors file of W [4, 2] (dtype w_dt) and U [4, 4] f32. */
static void write_weights(const char *name, RtDType w_dt, int64_t u_rows) {
  RtTensor t[2];
  RtError err;
  assert_int_equal(rt_tensor_alloc(&t[0], w_dt, 2, (int64_t[]){4, 2}, &err), 0);
  assert_int_equal(rt_tensor_alloc(&t[1], RT_F32, 2, (int64_t[]){u_rows, 4}, &err), 0);
  memset(t[0].data, 0, (size_t)rt_numel(&t[0]) * rt_dtype_size(w_dt));
  memset(t[1].data, 0, (size_t)rt_numel(&t[1]) * sizeof(float));
  const char *names[] = {"W", "U"};
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  assert_int_equal(rt_st_write(path, 2, names, t, &err), 0);
  rt_tensor_free(&t[0]);
  rt_tensor_free(&t[1]);
}

static const char *rnn_src = "cell RNN(I, H) {\n"
                             "  param W: [H, I]\n"
                             "  param U: [H, H]\n"
                             "  input x: [I]\n"
                             "  state h: [H] = 0\n"
                             "  output y: [H]\n"
                             "  step {\n"
                             "    h' = tanh(W @ x + U @ h)\n"
                             "    y = h'\n"
                             "  }\n"
                             "}\n";

static const char *emb_src = "cell Emb(V, H) {\n"
                             "  param E: [V, H]\n"
                             "  input tok: int\n"
                             "  state h: [H] = 0\n"
                             "  output y: [H]\n"
                             "  step {\n"
                             "    h' = h + E[tok]\n"
                             "    y = h'\n"
                             "  }\n"
                             "}\n";

/* No parameters: runs without --weights. */
static const char *free_src = "cell Free(H) {\n"
                              "  input x: [H]\n"
                              "  output y: []\n"
                              "  step {\n"
                              "    y = x[-5]\n"
                              "  }\n"
                              "}\n";

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "%s", tu_tmpdir());
  write_text("rnn.seq", rnn_src);
  write_text("emb.seq", emb_src);
  write_text("free.seq", free_src);
  write_npy("x.npy", RT_F32, 3, (int64_t[]){2, 3, 2}, NULL, 0.5);
  write_npy("x_rank2.npy", RT_F32, 2, (int64_t[]){2, 3}, NULL, 0.5);
  write_npy("x8.npy", RT_F32, 3, (int64_t[]){1, 2, 8}, NULL, 1.0);
  write_npy("x3.npy", RT_F32, 3, (int64_t[]){1, 2, 3}, NULL, 1.0);
  write_npy("h3.npy", RT_F32, 2, (int64_t[]){2, 3}, NULL, 0.0);
  write_npy("tok_float.npy", RT_F32, 2, (int64_t[]){1, 3}, (double[]){1.5, 2, 0}, 0);
  write_npy("tok_big.npy", RT_I32, 2, (int64_t[]){1, 3}, (double[]){1, 2, 7}, 0);
  write_npy("tok_neg.npy", RT_I64, 2, (int64_t[]){1, 3}, (double[]){1, -1, 0}, 0);
  write_npy("tok_ok.npy", RT_I64, 2, (int64_t[]){1, 3}, (double[]){1, 3, 0}, 0);
  /* A bad token past the sequence's length is never read by either backend. */
  write_npy("tok_late.npy", RT_I64, 2, (int64_t[]){1, 3}, (double[]){1, 2, 9}, 0);
  write_npy("len2.npy", RT_I64, 1, (int64_t[]){1}, (double[]){2}, 0);
  write_weights("w.safetensors", RT_F32, 4);
  write_weights("w_i64.safetensors", RT_I64, 4);
  write_weights("w_bad.safetensors", RT_F32, 5);
  return 0;
}

/* ---- 1. target CPUs and features -------------------------------------------- */

static const CliCase target_cases[] = {
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=skylakx", 2,
     "unknown target CPU 'skylakx'; did you mean 'skylake'?"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=i386", 2,
     "target CPU 'i386' cannot run x86-64 code"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=help", 2, "unknown target CPU 'help'"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=-64bit", 2,
     "target feature '-64bit' cannot be used"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=-sse", 2,
     "target feature '-sse' cannot be used"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=+soft-float", 2,
     "target feature '+soft-float' cannot be used"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=+16bit-mode", 2,
     "target feature '+16bit-mode' cannot be used"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=+avx2,+fam", 2,
     "unknown target feature '+fam'; did you mean 'fma'?"},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=avx2", 0, ""},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-features=+avx512f", 0, ""},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=x86-64-v3", 0, ""},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=native", 0, ""},
    {"rnn.seq --dims I=2,H=4 --emit=obj -o t.o --target-cpu=x86-64 --target-features=-avx", 0, ""},
};

static void test_target_cli(void **state) {
  (void)state;
#if defined(__x86_64__)
  RUN_TABLE(target_cases);
  /* Nothing of LLVM's own reaches stderr: no "LLVM ERROR", no "is not a
   * recognized processor" warning. */
  for (size_t i = 0; i < sizeof target_cases / sizeof target_cases[0]; i++) {
    char *out = NULL;
    tu_seqc(dir, target_cases[i].args, &out);
    assert_null(strstr(out, "LLVM ERROR"));
    assert_null(strstr(out, "recognized"));
    free(out);
  }
#else
  skip();
#endif
}

/* The table (codegen/target_x86.def) knows this machine: its CPU's name and
 * every feature LLVM detects on it pass, so the table is not stale for the
 * host, the one target that runs code here. */
static void test_target_table_knows_host(void **state) {
  (void)state;
#if defined(__x86_64__)
  cg_llvm_init();
  char *cpu = LLVMGetHostCPUName(), *features = LLVMGetHostCPUFeatures();
  char msg[512] = "";
  if (cg_target_check(cpu, NULL, msg, sizeof msg)) fail_msg("host CPU: %s", msg);
  if (cg_target_check(NULL, features, msg, sizeof msg)) fail_msg("host features: %s", msg);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(features);
#else
  skip();
#endif
}

/* The vector registers the lowering sizes its register-blocked loops by
 * (codegen/target.c, cg_target_vectors): AVX-512's 32 of 16 floats, AVX2's 16
 * of 8, SSE's 16 of 4, from the target machine's features; the host's as
 * the CPU reports them. */
static void test_target_vectors(void **state) {
  (void)state;
#if defined(__x86_64__)
  static const struct {
    const char *cpu, *features;
    int floats, regs;
  } cases[] = {
      {"skylake-avx512", "+avx512f", 16, 32},
      {"znver3", "+avx2,+fma", 8, 16},
      {"x86-64", "-avx", 4, 16},
  };
  Arena *a = arena_create();
  assert_non_null(a);
  DiagEngine de;
  diag_init(&de, a, stderr);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CgOptions o = {.opt_level = 2, .cpu = cases[i].cpu, .features = cases[i].features};
    LLVMTargetMachineRef tm = cg_target_machine(&o, LLVMRelocDefault, &de);
    assert_non_null(tm);
    int floats = 0, regs = 0;
    cg_target_vectors(tm, &floats, &regs);
    if (floats != cases[i].floats || regs != cases[i].regs)
      fail_msg("%s %s: %d floats x %d registers, expected %d x %d", cases[i].cpu, cases[i].features,
               floats, regs, cases[i].floats, cases[i].regs);
    LLVMDisposeTargetMachine(tm);
  }
  LLVMTargetMachineRef tm = cg_target_machine(NULL, LLVMRelocDefault, &de);
  assert_non_null(tm);
  int floats = 0, regs = 0;
  cg_target_vectors(tm, &floats, &regs);
  __builtin_cpu_init();
  int want = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx") ? 8 : 4;
  assert_int_equal(floats, want);
  assert_int_equal(regs, want == 16 ? 32 : 16);
  LLVMDisposeTargetMachine(tm);
  arena_destroy(a);
#else
  skip();
#endif
}

/* The same values through seq.h: a status and a message, and the host lives. */
static void test_target_api(void **state) {
  (void)state;
#if defined(__x86_64__)
  static const struct {
    const char *cpu, *features;
    SeqStatus st;
    const char *needle;
  } cases[] = {
      {"skylakx", NULL, SEQ_ERR_ARG, "unknown target CPU"},
      {"i386", NULL, SEQ_ERR_ARG, "cannot run x86-64 code"},
      {NULL, "-64bit", SEQ_ERR_ARG, "'-64bit' cannot be used"},
      {NULL, "+nosuchfeature", SEQ_ERR_ARG, "unknown target feature"},
      {"x86-64-v2", "+avx2", SEQ_OK, NULL},
  };
  SeqContext *cx = seq_context_create();
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    SeqOptions opt = {.opt_level = 1, .dims = "I=2,H=4"};
    opt.target_cpu = cases[i].cpu;
    opt.target_features = cases[i].features;
    SeqModule *m = NULL;
    SeqStatus st = seq_module_from_string(cx, "rnn.seq", rnn_src, &opt, &m);
    if (st != cases[i].st) fail_msg("case %zu: status %d: %s", i, st, seq_module_error(m));
    if (cases[i].needle && !strstr(seq_module_error(m), cases[i].needle))
      fail_msg("case %zu: '%s' lacks '%s'", i, seq_module_error(m), cases[i].needle);
    seq_module_destroy(m);
  }
  seq_context_destroy(cx);
#else
  skip();
#endif
}

/* ---- 2. silent wrong answers ------------------------------------------------- */

static const CliCase silent_cases[] = {
    /* Token files: both backends, the same message with value and position. */
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_float.npy", 1,
     "token index 1.5 is not an integer at batch 0, step 0"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_float.npy --backend=interp", 1,
     "token index 1.5 is not an integer at batch 0, step 0"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_big.npy", 1,
     "token index 7 out of range [0, 4) at batch 0, step 2"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_big.npy --backend=interp", 1,
     "token index 7 out of range [0, 4) at batch 0, step 2"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_neg.npy", 1,
     "token index -1 out of range [0, 4) at batch 0, step 1"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_late.npy --in lengths=len2.npy", 0,
     "output y"},
    {"run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_late.npy --in lengths=len2.npy "
     "--backend=interp",
     0, "output y"},
    /* Two outputs into one file. */
    {"run rnn.seq --weights w.safetensors --in x=x.npy --out y=same.npy --out h=./same.npy", 1,
     "--out y and --out h both write './same.npy'"},
    /* Weights of an integer dtype. */
    {"run rnn.seq --weights w_i64.safetensors --in x=x.npy", 1,
     "w_i64.safetensors: tensor 'W' has dtype I64; weights must be F32, F64, F16 or BF16"},
    {"run rnn.seq --weights w_i64.safetensors --in x=x.npy --backend=interp", 1,
     "tensor 'W' has dtype I64"},
};

static void test_silent_wrong_answers(void **state) {
  (void)state;
  RUN_TABLE(silent_cases);
  /* Neither backend wrote the file twice over. */
  char path[1024];
  snprintf(path, sizeof path, "%s/same.npy", dir);
  assert_int_not_equal(access(path, F_OK), 0);
}

/* ---- 3. outputs are written only after everything succeeded ----------------- */

static int exists(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return access(path, F_OK) == 0;
}

/* No file left behind: neither the target nor a temporary beside it. */
static int no_leftovers(const char *prefix) {
  int n = 0, bad = 0;
  char **names = tu_list_dir(dir, "", &n);
  for (int i = 0; i < n; i++) bad |= strncmp(names[i], prefix, strlen(prefix)) == 0;
  tu_free_list(names);
  return !bad;
}

static void test_outputs_atomic(void **state) {
  (void)state;
  static const CliCase cases[] = {
      /* A later --out that cannot be written: nothing is written. */
      {"run rnn.seq --weights w.safetensors --in x=x.npy --out y=at_y.npy --out h=nodir/h.npy", 1,
       "--out h: cannot write 'nodir/h.npy'"},
      {"run rnn.seq --weights w.safetensors --in x=x.npy --out y=at_y.npy --out zz=at_z.npy", 1,
       "'zz' is not an output or state"},
      {"run rnn.seq --weights w.safetensors --in x=x.npy --out y=at_y.npy --out h=.", 1,
       "'.' is a directory"},
      /* A run that fails: nothing is written. */
      {"run rnn.seq --weights w_bad.safetensors --in x=x.npy --out y=at_y.npy", 1,
       "w_bad.safetensors"},
  };
  RUN_TABLE(cases);
  assert_true(no_leftovers("at_"));
  EXPECT_RUN("run rnn.seq --weights w.safetensors --in x=x.npy --out y=at_y.npy --out h=at_h.npy",
             0, "output y");
  assert_true(exists("at_y.npy") && exists("at_h.npy"));
  /* Outputs get the usual permissions, not mkstemp's 0600. */
  char path[1024];
  struct stat st;
  snprintf(path, sizeof path, "%s/at_y.npy", dir);
  assert_int_equal(stat(path, &st), 0);
  mode_t mask = umask(0);
  umask(mask);
  assert_int_equal(st.st_mode & 0777, 0666 & ~mask);
}

/* ---- 4. compiled-path messages ----------------------------------------------- */

static const CliCase message_cases[] = {
    {"run rnn.seq --weights w.safetensors --in x=x.npy --in h=h3.npy", 1,
     "initial state 'h' has shape [2, 3] but expected [2, 4]"},
    {"run rnn.seq --weights w.safetensors --in x=x.npy --in h=h3.npy --backend=interp", 1,
     "initial state 'h' has shape [2, 3] but expected [2, 4]"},
    {"run rnn.seq --weights w.safetensors --in x=x_rank2.npy", 1,
     "x_rank2.npy has shape [2, 3]; input 'x' needs rank 3"},
    {"run rnn.seq --weights w_bad.safetensors --in x=x.npy", 1,
     "weight 'U' in w_bad.safetensors has shape [5, 4] but is declared [H, H] = [4, 4]"},
    {"run rnn.seq --weights free.seq --in x=x.npy", 1, "free.seq"},
};

/* The CPU backend's errors need no note pointing at the interpreter. */
static void test_compiled_messages(void **state) {
  (void)state;
  RUN_TABLE(message_cases);
  const char *no_note[] = {
      "run rnn.seq --weights w.safetensors --in x=x.npy --in h=h3.npy",
      "run emb.seq --random-weights --dims V=4,H=2 --in tok=tok_big.npy",
  };
  for (size_t i = 0; i < sizeof no_note / sizeof no_note[0]; i++) {
    char *out = NULL;
    assert_int_equal(tu_seqc(dir, no_note[i], &out), 1);
    if (strstr(out, "--backend=interp")) fail_msg("%s:\n%s", no_note[i], out);
    free(out);
  }
}

/* ---- 5. one diagnostic per mistake -------------------------------------------- */

typedef struct DiagCase {
  const char *src;
  const char *needle; /* the one error */
} DiagCase;

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p++) n++;
  return n;
}

static void test_one_diagnostic_per_mistake(void **state) {
  (void)state;
  static const DiagCase cases[] = {
      {"cell C(I, H) {\n  param W: [H/2, I]\n  param U: [H, H]\n  input x: [I]\n"
       "  state h: [H] = 0\n  output y: [H]\n  step {\n    h' = tanh(U @ h + W @ x)\n"
       "    y = h'\n  }\n}\n",
       "H / 2 is not a whole number for every H"},
      {"cell C(H) {\n  input x: [H]\n  state h: [H] = 0\n  output y: int\n  step {\n"
       "    h' = h + x\n    y = h'\n  }\n}\n",
       "only inputs can have type int"},
      {"cell C(H) {\n  input x: [H]\n  state h: [H/2] = 0\n  output y: [H]\n  step {\n"
       "    h' = h + x\n    y = x\n  }\n}\n",
       "H / 2 is not a whole number for every H"},
      {"cell C(H) {\n  input x: [H]\n  state h: [H] = 0\n  output y: [H]\n}\n",
       "cell 'C' has no 'step { ... }' block"},
      {"model M(H) {\n  input x: [H]\n  output y: [H]\n}\n",
       "model 'M' has no 'forward { ... }' block"},
      {"import \"adir\"\ncell C(H) {\n  input x: [H]\n  output y: [H]\n  step {\n    y = x\n"
       "  }\n}\n",
       "imported 'adir' is a directory"},
  };
  char path[1024];
  snprintf(path, sizeof path, "%s/adir", dir);
  mkdir(path, 0755);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_text("one.seq", cases[i].src);
    char *out = NULL;
    assert_int_equal(tu_seqc(dir, "--emit=ir one.seq", &out), 1);
    if (!strstr(out, cases[i].needle) || count(out, "error:") != 1)
      fail_msg("case %zu: wanted one error '%s', got:\n%s", i, cases[i].needle, out);
    free(out);
  }
  EXPECT_RUN("--emit=ir adir", 1, "'adir' is a directory");
}

static const CliCase limit_cases[] = {
    /* Negative indices report the index as written, on both backends. */
    {"run free.seq --in x=x3.npy", 1,
     "index -5 is out of range for axis 0 of size 3 (valid: -3 to 2"},
    {"run free.seq --in x=x3.npy --backend=interp", 1, "index -5 is out of range for axis 0"},
    {"run free.seq --in x=x8.npy", 0, "output y: shape [1, 2] f32  sum 2"},
    /* The dim limit is stated. */
    {"run rnn.seq --random-weights --dims H=2199023255552 --in x=x.npy", 2,
     "needs an integer in [0, 2^40]"},
};

static void test_limits_are_stated(void **state) {
  (void)state;
  RUN_TABLE(limit_cases);
}

/* ---- 6. no weights needed without parameters ---------------------------------- */

static const CliCase weightless_cases[] = {
    {"run free.seq --in x=x8.npy", 0, "output y"},
    {"run free.seq --in x=x8.npy --backend=interp", 0, "output y"},
    {"run rnn.seq --in x=x.npy", 2, "'RNN' has 2 parameters (W, ...): pass --weights FILE"},
    {"run rnn.seq --in x=x.npy --weights w.safetensors --random-weights", 2, "not both"},
};

static void test_weightless_run(void **state) {
  (void)state;
  RUN_TABLE(weightless_cases);
}

/* ---- 7. the C API ---------------------------------------------------------------- */

static void test_api_status(void **state) {
  (void)state;
  SeqContext *cx = seq_context_create();
  SeqModule *m = NULL;
  char path[1024];
  snprintf(path, sizeof path, "%s/no_such.seq", dir);
  assert_int_equal(seq_module_from_file(cx, path, NULL, &m), SEQ_ERR_IO);
  assert_non_null(strstr(seq_module_error(m), "no_such.seq"));
  seq_module_destroy(m);
  snprintf(path, sizeof path, "%s", dir);
  assert_int_equal(seq_module_from_file(cx, path, NULL, &m), SEQ_ERR_IO);
  seq_module_destroy(m);
  static const char *const dup[] = {"H=4,H=4", "I=2,H=4,I=3"};
  for (size_t i = 0; i < sizeof dup / sizeof dup[0]; i++) {
    SeqOptions opt = {.dims = dup[i]};
    assert_int_not_equal(seq_module_from_string(cx, "rnn.seq", rnn_src, &opt, &m), SEQ_OK);
    if (!strstr(seq_module_error(m), "given twice"))
      fail_msg("dims '%s': %s", dup[i], seq_module_error(m));
    seq_module_destroy(m);
  }
  /* Integer weights are refused through seq.h too. */
  snprintf(path, sizeof path, "%s/w_i64.safetensors", dir);
  SeqOptions opt = {.weights_path = path, .dims = "I=2"};
  assert_int_equal(seq_module_from_string(cx, "rnn.seq", rnn_src, &opt, &m), SEQ_ERR_BIND);
  assert_non_null(strstr(seq_module_error(m), "has dtype I64"));
  seq_module_destroy(m);
  seq_context_destroy(cx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_target_table_knows_host),
      cmocka_unit_test(test_target_cli),
      cmocka_unit_test(test_target_api),
      cmocka_unit_test(test_silent_wrong_answers),
      cmocka_unit_test(test_outputs_atomic),
      cmocka_unit_test(test_compiled_messages),
      cmocka_unit_test(test_one_diagnostic_per_mistake),
      cmocka_unit_test(test_limits_are_stated),
      cmocka_unit_test(test_weightless_run),
      cmocka_unit_test(test_api_status),
      cmocka_unit_test(test_target_vectors),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
