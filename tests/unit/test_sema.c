/* test_sema.c - the frontend's semantic analysis and lowering:
 *   - golden diagnostics: tests/golden/diag/NAME.seq -> NAME.expected, exactly
 *     what diag_format prints (compiled with a path relative to the source
 *     tree so the text is stable);
 *   - golden IR: tests/golden/ir/NAME.seq -> NAME.ir (ir_print_module);
 *   - one-line error cases checked by message;
 *   - options: stdlib directories, entry, dim overrides; and allocation
 *     failure at every point of a compilation.
 * Regenerate goldens with SEQ_UPDATE_GOLDEN=1, then read the diff.
 */
#include "testutil.h"

#include "frontend/frontend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One compilation with its own arena, sources and diagnostics. */
typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;
} Compiled;

static void open_compiled(Compiled *c) {
  c->arena = arena_create();
  assert_non_null(c->arena);
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, NULL);
  c->m = NULL;
}

static void compile_file(Compiled *c, const char *path, const FrontendOptions *opt) {
  open_compiled(c);
  c->m = seq_compile_file(c->arena, &c->sm, &c->de, path, opt);
}

static void compile_text(Compiled *c, const char *text, const FrontendOptions *opt) {
  open_compiled(c);
  c->m = seq_compile_string(c->arena, &c->sm, &c->de, "test.seq", text, opt);
}

static void close_compiled(Compiled *c) {
  arena_destroy(c->arena);
}

/* All diagnostics as the CLI prints them (caller frees). */
static char *format_diags(const DiagEngine *de) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  for (int i = 0; i < de->diags.n; i++) diag_format(f, &de->diags.v[i]);
  fclose(f);
  return buf;
}

static char *format_module(const IrModule *m) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  ir_print_module(f, m);
  fclose(f);
  return buf;
}

/* Relative file names keep golden text independent of the checkout. */
static int enter_source_dir(void **state) {
  (void)state;
  return chdir(SEQ_SOURCE_DIR);
}

/* ---- Golden diagnostics ------------------------------------------------------ */

static void test_diag_golden(void **state) {
  const char *name = *state;
  char seq[256], expected[256];
  snprintf(seq, sizeof seq, "tests/golden/diag/%s.seq", name);
  snprintf(expected, sizeof expected, "tests/golden/diag/%s.expected", name);
  Compiled c;
  compile_file(&c, seq, NULL);
  assert_null(c.m);
  assert_true(c.de.nerrors > 0);
  char *text = format_diags(&c.de);
  tu_check_golden(text, expected);
  free(text);
  close_compiled(&c);
}

/* A chain of SEQ_MAX_IMPORT_DEPTH + 2 files, each importing the next, is
 * written to a temporary directory and compiled from there (so the names in
 * the message are relative). */
static void test_import_depth(void **state) {
  (void)state;
  char cwd[4096];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(chdir(tu_tmpdir()), 0);
  for (int i = 0; i <= SEQ_MAX_IMPORT_DEPTH + 1; i++) {
    char path[64], text[256];
    snprintf(path, sizeof path, "d%02d.seq", i);
    snprintf(text, sizeof text,
             "import \"d%02d.seq\"\ncell C%d(H) {\n  input x: [H]\n  output y: [H]\n  step {\n"
             "    y = x\n  }\n}\n",
             i + 1, i);
    if (i == SEQ_MAX_IMPORT_DEPTH + 1) snprintf(text, sizeof text, "# the end\n");
    assert_int_equal(tu_write_file(path, text), 0);
  }
  Compiled c;
  compile_file(&c, "d00.seq", NULL);
  assert_int_equal(chdir(cwd), 0);
  assert_null(c.m);
  char *text = format_diags(&c.de);
  tu_check_golden(text, "tests/golden/diag/import_depth.expected");
  free(text);
  close_compiled(&c);
}

/* ---- Golden IR --------------------------------------------------------------------- */

static void test_ir_golden(void **state) {
  const char *name = *state;
  char seq[256], expected[256];
  snprintf(seq, sizeof seq, "tests/golden/ir/%s.seq", name);
  snprintf(expected, sizeof expected, "tests/golden/ir/%s.ir", name);
  Compiled c;
  compile_file(&c, seq, NULL);
  if (!c.m) {
    char *d = format_diags(&c.de);
    print_error("%s", d);
    free(d);
  }
  assert_non_null(c.m);
  assert_int_equal(c.de.nerrors, 0);
  assert_int_equal(ir_verify(c.m, &c.de, "test"), 0);
  char *text = format_module(c.m);
  tu_check_golden(text, expected);
  free(text);
  close_compiled(&c);
}

/* The examples and the standard library must compile and verify. */
static void test_examples_compile(void **state) {
  (void)state;
  static const char *const files[] = {
      "examples/lstm.seq",  "examples/gru.seq",       "examples/rnn.seq",
      "examples/bigru.seq", "examples/lm.seq",        "examples/s4d.seq",
      "examples/lru.seq",   "examples/mingru.seq",    "examples/mlstm.seq",
      "examples/lstm2.seq", "examples/mamba_ssm.seq", "examples/linear_attention.seq",
  };
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    if (access(files[i], R_OK) != 0) continue; /* examples are owned elsewhere */
    Compiled c;
    compile_file(&c, files[i], NULL);
    if (!c.m) {
      char *d = format_diags(&c.de);
      print_error("%s:\n%s", files[i], d);
      free(d);
    }
    assert_non_null(c.m);
    assert_int_equal(ir_verify(c.m, &c.de, "test"), 0);
    close_compiled(&c);
  }
}

/* ---- Structure of the lowered IR ---------------------------------------------------- */

static const char lstm_src[] =
    "cell LSTM(I, H) {\n"
    "  param weight_ih: [4*H, I]\n"
    "  param weight_hh: [4*H, H]\n"
    "  param bias: [4*H]\n"
    "  input x: [I]\n"
    "  state h: [H] = 0\n"
    "  state c: [H]\n"
    "  output y: [H]\n"
    "  step {\n"
    "    let i, f, g, o = split(weight_ih @ x + weight_hh @ h + bias, 4)\n"
    "    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)\n"
    "    h' = sigmoid(o) * tanh(c')\n"
    "    y = h'\n"
    "  }\n"
    "}\n";

static void test_cell_structure(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c, lstm_src, NULL);
  assert_non_null(c.m);
  assert_int_equal(c.m->funcs.n, 1);
  assert_int_equal(c.m->entry, 0);
  const IrFunc *f = c.m->funcs.v[0];
  assert_int_equal(f->kind, IR_FN_CELL);
  assert_int_equal(f->dims.n, 2);
  assert_true(f->dims.v[0].in_signature && f->dims.v[1].in_signature);
  assert_int_equal(f->params.n, 3);
  assert_int_equal(f->states.n, 2);
  /* h' = sigmoid(o) * tanh(c'): y is the very node assigned to h'. */
  assert_int_equal(f->outputs.v[0].value, f->states.v[0].next);
  assert_int_equal(f->nodes.v[f->states.v[0].next].op, IR_MUL);
  /* Both zero initial values are one hash-consed node. */
  assert_int_equal(f->states.v[0].init, f->states.v[1].init);
  assert_int_equal(f->nodes.v[f->states.v[0].init].op, IR_BROADCAST);
  close_compiled(&c);
}

static void test_unassigned_state_carries(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c,
               "cell C(H) {\n  input x: [H]\n  state h: [H] = 1\n  output y: [H]\n"
               "  step {\n    y = x * h\n  }\n}\n",
               NULL);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[0];
  IrRef next = f->states.v[0].next;
  assert_int_equal(f->nodes.v[next].op, IR_STATE);
  assert_int_equal(f->nodes.v[next].index, 0);
  close_compiled(&c);
}

/* A reshape that only adds a unit axis checks whatever the degree of the
 * element count (H*J*V*K is past what a DimExpr holds), as an indexing
 * with None and an explicit reshape; one that changes the count still
 * fails. */
static void test_high_degree_reshape(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c,
               "cell C(H, J, V, K) {\n  input x: [K]\n  state s: [H, J, V, K] = 0\n"
               "  output y: [H, 1, J, V, K]\n  step {\n    s' = s + x\n"
               "    y = s[:, None] + reshape(s', [H, 1, J, V, K])\n  }\n}\n",
               NULL);
  assert_non_null(c.m);
  close_compiled(&c);
  compile_text(&c,
               "cell C(H, J, V, K) {\n  input x: [K]\n  state s: [H, J, V, K] = 0\n"
               "  output y: [H, J, V]\n  step {\n    s' = s + x\n"
               "    y = reshape(s', [H, J, V])\n  }\n}\n",
               NULL);
  assert_null(c.m);
  int found = 0;
  for (int i = 0; i < c.de.diags.n; i++)
    found |= strstr(c.de.diags.v[i].message, "element count too complex") != NULL;
  assert_true(found);
  close_compiled(&c);
}

static void test_layer_structure(void **state) {
  (void)state;
  Compiled c;
  compile_file(&c, "tests/golden/ir/bidir_model.seq", NULL);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[c.m->entry];
  assert_string_equal(f->name, "BiGRU");
  assert_int_equal(f->layers.n, 4);
  assert_string_equal(f->layers.v[0].prefix, "");
  assert_string_equal(f->layers.v[0].suffix, "_l0");
  assert_int_equal(f->layers.v[0].reverse, 0);
  assert_int_equal(f->layers.v[1].reverse, 1);
  assert_string_equal(f->layers.v[2].prefix, "top_");
  assert_string_equal(f->layers.v[3].prefix, "pair.");
  /* Callees precede their callers. */
  for (int i = 0; i < f->layers.n; i++) assert_true(f->layers.v[i].callee < c.m->entry);
  close_compiled(&c);
}

static void test_fresh_dims(void **state) {
  (void)state;
  Compiled c;
  compile_file(&c, "tests/golden/ir/layer_array.seq", NULL);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[c.m->entry];
  assert_int_equal(f->layers.n, 3);
  assert_string_equal(f->layers.v[1].name, "blocks.1");
  assert_string_equal(f->layers.v[1].suffix, "_l1");
  int fresh = 0;
  for (int i = 0; i < f->dims.n; i++) {
    if (f->dims.v[i].in_signature) continue;
    fresh++;
    assert_non_null(strstr(f->dims.v[i].name, ".F"));
  }
  assert_int_equal(fresh, 3);
  close_compiled(&c);
}

static void test_hidden_conv_state(void **state) {
  (void)state;
  Compiled c;
  compile_file(&c, "tests/golden/ir/conv_cell.seq", NULL);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[0];
  assert_int_equal(f->states.n, 2);
  assert_string_equal(f->states.v[0].name, "conv0.window");
  assert_int_equal(f->states.v[0].hidden, 1);
  assert_int_equal(f->states.v[0].type.rank, 2);
  close_compiled(&c);
}

static const char conv_model_src[] = "model M(D, K) {\n"
                                     "  param w: [D, 1, K]\n  param b: [D]\n"
                                     "  input u: [D]\n  output y: [D]\n"
                                     "  forward {\n    y = causal_conv(u, w, b)\n  }\n}\n";

static void test_causal_conv_in_model(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c, conv_model_src, NULL);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[0];
  const IrNode *y = &f->nodes.v[f->outputs.v[0].value];
  assert_int_equal(y->op, IR_CAUSAL_CONV);
  /* The weight is reshaped from [D, 1, K] to [D, K]. */
  assert_int_equal(f->nodes.v[y->args[1]].op, IR_RESHAPE);
  assert_int_equal(f->nodes.v[y->args[1]].type.rank, 2);
  close_compiled(&c);
}

/* ---- Options ----------------------------------------------------------------------- */

static const char stack_src[] = "cell Cell(H) {\n  input x: [H]\n  output y: [H]\n"
                                "  step {\n    y = x\n  }\n}\n"
                                "model M(D, N) {\n  input x: [D]\n  output y: [D]\n"
                                "  layer blocks[N] = Cell(D)\n"
                                "  forward {\n    let h = x\n    for b in blocks {\n"
                                "      h = b(h)\n    }\n    y = h\n  }\n}\n";

static void test_dim_override(void **state) {
  (void)state;
  const char *names[] = {"N"};
  const int64_t values[] = {5};
  FrontendOptions opt = {0};
  opt.ndim_overrides = 1;
  opt.dim_override_names = names;
  opt.dim_override_values = values;
  Compiled c;
  compile_text(&c, stack_src, &opt);
  assert_non_null(c.m);
  const IrFunc *f = c.m->funcs.v[c.m->entry];
  assert_int_equal(f->layers.n, 5);
  assert_string_equal(f->layers.v[4].name, "blocks.4");
  assert_string_equal(f->layers.v[4].prefix, "blocks.4.");
  close_compiled(&c);
}

static void test_entry_option(void **state) {
  (void)state;
  FrontendOptions opt = {0};
  opt.entry = "Cell";
  Compiled c;
  compile_text(&c, stack_src, &opt);
  assert_null(c.m); /* N has no value: the layer count error */
  close_compiled(&c);

  const char *names[] = {"N"};
  const int64_t values[] = {2};
  opt.ndim_overrides = 1;
  opt.dim_override_names = names;
  opt.dim_override_values = values;
  compile_text(&c, stack_src, &opt);
  assert_non_null(c.m);
  assert_string_equal(c.m->funcs.v[c.m->entry]->name, "Cell");
  close_compiled(&c);

  opt.entry = "Cel";
  compile_text(&c, stack_src, &opt);
  assert_null(c.m);
  assert_string_equal(c.de.diags.v[0].message,
                      "no cell or model named 'Cel' (did you mean 'Cell'?)");
  close_compiled(&c);
}

static void test_stdlib_dirs(void **state) {
  (void)state;
  char dir[512], path[600];
  snprintf(dir, sizeof dir, "%s/std1", tu_tmpdir());
  assert_true(mkdir(dir, 0777) == 0 || access(dir, W_OK) == 0);
  snprintf(path, sizeof path, "%s/tiny.seq", dir);
  assert_int_equal(tu_write_file(path, "cell Tiny(H) {\n  input x: [H]\n  output y: [H]\n"
                                       "  step {\n    y = 2 * x\n  }\n}\n"),
                   0);
  const char *dirs[] = {"/nonexistent-seq-dir", dir, NULL};
  FrontendOptions opt = {0};
  opt.stdlib_dirs = dirs;
  Compiled c;
  compile_text(&c,
               "import \"std/tiny.seq\"\nmodel M(D) {\n  input x: [D]\n  output y: [D]\n"
               "  layer t = Tiny(D)\n  forward {\n    y = t(x)\n  }\n}\n",
               &opt);
  if (!c.m) {
    char *d = format_diags(&c.de);
    print_error("%s", d);
    free(d);
  }
  assert_non_null(c.m);
  assert_int_equal(c.m->funcs.n, 2);
  close_compiled(&c);

  compile_text(&c, "import \"std/missing.seq\"\n", &opt);
  assert_null(c.m);
  assert_non_null(strstr(c.de.diags.v[0].message, "cannot find 'std/missing.seq' in the standard "
                                                  "library (searched: /nonexistent-seq-dir, "));
  close_compiled(&c);

  /* $SEQ_STDLIB is searched first when no directories are given. */
  setenv("SEQ_STDLIB", dir, 1);
  compile_text(&c,
               "import \"std/tiny.seq\"\nmodel M(D) {\n  input x: [D]\n  output y: [D]\n"
               "  layer t = Tiny()\n  forward {\n    y = t(x)\n  }\n}\n",
               NULL);
  assert_non_null(c.m);
  close_compiled(&c);
  unsetenv("SEQ_STDLIB");
}

static void test_default_stdlib(void **state) {
  (void)state;
  if (access("stdlib/lstm.seq", R_OK) != 0) skip();
  Compiled c;
  compile_text(&c,
               "import \"std/lstm.seq\"\nmodel M(I, H) {\n  input x: [I]\n  output y: [H]\n"
               "  layer l = LSTM(I, H)\n  forward {\n    y = l(x)\n  }\n}\n",
               NULL);
  if (!c.m) {
    char *d = format_diags(&c.de);
    print_error("%s", d);
    free(d);
  }
  assert_non_null(c.m);
  close_compiled(&c);
}

/* ---- One-line error cases ------------------------------------------------------------ */

typedef struct ErrorCase {
  const char *decls;   /* inside `cell C(H) { ... }` before step */
  const char *body;    /* the step body */
  const char *message; /* the first error's message */
} ErrorCase;

static const ErrorCase cell_errors[] = {
    {"param p: int\n output y: [H]", "y = 0", "only inputs can have type int (a token index)"},
    {"input x: [H]\n output y: [H]", "let y = x",
     "'y' is an output; assign it with y = ..., not let"},
    {"input x: [H]\n output y: [H]", "x = x\n y = x", "cannot assign to input 'x'"},
    {"input x: [H]\n state h: [H]\n output y: [H]", "h = x\n y = x",
     "cannot assign to state 'h' itself; assign h' (its value leaving the step)"},
    {"input x: [H]\n output y: [H]", "y = x\n y = x", "output 'y' is assigned twice"},
    {"input x: [H]\n output y: [H]", "y = sum(x, axs=0)",
     "sum has no keyword argument 'axs' (did you mean 'axis'?)"},
    {"input x: [H]\n output y: []", "y = sum(x, axis=1)",
     "axis 1 is out of range for a value of rank 1"},
    {"input x: [H]\n state h: [H] = x\n output y: [H]", "y = h",
     "the initial value of state 'h' may only use params, dims and constants; 'x' is an input"},
    {"param p: [2]\n state h: [H] = p\n output y: [H]", "y = h",
     "the initial value of state 'h' has shape [2], which cannot be broadcast to [H]"},
    {"input x: [H]\n output y: [H]", "let a, b = split(x, [1, H - 1])\n y = a",
     "y has shape [1] but output 'y' is declared [H]"},
    {"input x: [H]\n output y: [H]", "let a, b = split(x, [1, H])\n y = x",
     "split sizes add up to [H + 1], but axis 0 of [H] has size [H]"},
    {"input x: [H]\n output y: [H]", "let a, b, c = split(x, [1, H - 1])\n y = x",
     "this call gives 2 values, but 3 names are bound"},
    {"input x: [2*H]\n output y: [H]", "y = split(x, 2)",
     "this call gives 2 values; bind them with let a, b, ... = ..."},
    {"input x: [H]\n output y: [H]", "y = x[0, 1]", "too many indices for a value of shape []"},
    {"input x: [H]\n output y: [H]", "let a = x\n y = x[a]",
     "index 'a' must be an integer constant, a dim expression or an int token"},
    {"input x: [H]\n output y: [H]", "y = x + [1, 2]",
     "a list [...] can only give the sizes in split(x, [...])"},
    {"input x: [H]\n output y: [H]", "for l in x {\n y = x\n }",
     "a step loops over range(n), not a layer array (layers are a model's)"},
    {"input x: [H]\n output y: [H]", "y = C(x)",
     "'C' is a cell; to run it, declare a layer in a model (layer l = C(...)) and call l(...)"},
    {"input x: [H]\n output y: [H]\n output z: [H]", "z = y\n y = x",
     "output 'y' cannot be read; bind its value with let and assign that instead"},
    {"input x: [H]\n output y: [H]", "y = x * H + dot(x, x) + outer(x, x)",
     "y has shape [H, H] but output 'y' is declared [H]"},
    {"input t: int\n output y: [H]", "y = t + 1",
     "add cannot take an int operand (ints are only token "
     "indices)"},
    {"param W: [H, H]\n output y: [H]", "y = W[0:2*H, 0]",
     "slice [0, 2*H) is out of range for axis 0 of [H, H]"},
    {"param W: [H, H]\n output y: [H]", "y = W[H]", "index H is out of range for axis 0 of [H, H]"},
    {"param W: [H, 4]\n output y: [H]", "y = W[:, 4]",
     "index 4 is out of range for axis 1 of [H, 4]"},
    {"input x: [H]\n output y: [H]", "y = rmsnorm(x, eps=-1)", "eps must be a non-negative number"},
    {"param W: [H*H*H*H, H]\n output y: [H]", "y = 0",
     "dimension expression is too large or too complex (at most 6 terms of degree 3)"},
    {"input x: [H]\n state h: [H] = causal_conv(h, h, h)\n output y: [H]", "y = x",
     "the initial value of state 'h' may only use params, dims and constants; 'h' is a state"},
    {"input x: [H]\n layer l = C(H)\n output y: [H]", "y = x",
     "cells cannot contain layers; compose cells in a model"},
    {"input x: [H]\n output y: [2, H]", "y = reshape(x, [2, H])",
     "cannot reshape [H] to [2, H]: they have H and 2*H elements"},
    {"input x: [H]\n output y: [H]", "y = reshape(x, H)",
     "reshape takes the new shape as a list: reshape(x, [d1, d2, ...])"},
    {"input x: [H]\n output y: [H]", "y = reshape(x, [1, 1, 1, 1, 1, 1, 1, 1, H])",
     "a value may have at most 8 dimensions"},
    {"input x: [H]\n output y: [H]\n def exp(v) = v", "y = x",
     "function 'exp' has the name of a builtin"},
    {"input x: [H]\n output y: [H]\n def f(v) = v\n def f(w) = w", "y = f(x)",
     "duplicate function 'f'"},
    {"input x: [H]\n output y: [H]\n def f(v, v) = v", "y = x",
     "function 'f' has two parameters named 'v'"},
    {"input x: [H]\n output y: [H]\n def f(v) = v + x", "y = f(x)",
     "function 'f' may only use its parameters, params and dims; 'x' is an input"},
    {"input x: [H]\n state h: [H]\n output y: [H]\n def f(v) = v + h'", "h' = x\n y = f(x)",
     "function 'f' may only use its parameters, params and dims; 'h'' is a new state value"},
    {"input x: [H]\n output y: [H]\n def f(v) = v", "let a = x\n y = f(x, a)",
     "function 'f' takes 1 argument, got 2"},
    {"input x: [H]\n output y: [H]\n def f(v) = g(v)\n def g(v) = f(v) * 2", "y = f(x)",
     "function 'f' calls itself: f -> g -> f (recursion is not allowed)"},
    {"input x: [H]\n output y: [H]\n def f(v) = v * a", "let a = x\n y = f(x)", "unknown name 'a'"},
    {"input x: [H]\n output y: [H]\n def f(v) = v + H", "y = f(x) @ x",
     "y has shape [] but output 'y' is declared [H]"},
    {"context t: int\n input x: [H]\n output y: [H]", "y = x",
     "an int context gives lengths to a layer run over a context's positions, so only a model "
     "declares one"},
    {"context m: [H]\n input x: [H]\n output y: [H]", "m = x\n y = x",
     "cannot assign to context 'm'"},
};

static void test_cell_errors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof cell_errors / sizeof cell_errors[0]; i++) {
    const ErrorCase *ec = &cell_errors[i];
    char src[2048];
    snprintf(src, sizeof src, "cell C(H) {\n %s\n step {\n %s\n }\n}\n", ec->decls, ec->body);
    Compiled c;
    compile_text(&c, src, NULL);
    if (c.m || c.de.diags.n == 0 || strcmp(c.de.diags.v[0].message, ec->message) != 0) {
      char *d = format_diags(&c.de);
      print_error("case %zu:\n%s--- expected first message: %s\n--- got:\n%s\n", i, src,
                  ec->message, d);
      free(d);
      fail();
    }
    close_compiled(&c);
  }
}

/* Model-level mistakes, each a whole file. */
typedef struct ModelCase {
  const char *src;
  const char *message;
} ModelCase;

#define CELL_ID "cell Id(H) {\n input x: [H]\n output y: [H]\n step {\n y = x\n }\n}\n"

static const ModelCase model_errors[] = {
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D, D)\n"
             " forward {\n y = l(x)\n }\n}\n",
     "'Id' takes 1 dimension argument, got 2"},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(Q=D)\n"
             " forward {\n y = l(x)\n }\n}\n",
     "'Id' has no dimension 'Q'"},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D)\n"
             " forward {\n y = l(x[0:1])\n }\n}\n",
     "argument 1 of layer 'l' is [1], but input 'x' of Id is [D] here"},
    {CELL_ID "model M(D) {\n input x: int\n output y: [D]\n layer l = Id(D)\n"
             " forward {\n y = l(x)\n }\n}\n",
     "argument 1 of layer 'l' is int, but input 'x' of Id is [D] here"},
    {CELL_ID "model M(D, N = 2) {\n input x: [D]\n output y: [D]\n layer l[N] = Id(D)\n"
             " forward {\n y = l(x)\n }\n}\n",
     "'l' is a layer array; loop over it (for l in l { ... }) or call one element (l[0](...))"},
    {CELL_ID "model M(D, N = 2) {\n input x: [D]\n output y: [D]\n layer l[N] = Id(D)\n"
             " forward {\n y = l[1](x)\n }\n}\n",
     NULL},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D)\n"
             " forward {\n for k in l {\n y = k(x)\n }\n }\n}\n",
     "'l' is a single layer, not a layer array"},
    {"model A(D) {\n input x: [D]\n output y: [D]\n layer b = B(D)\n forward {\n y = b(x)\n }\n}\n"
     "model B(D) {\n input x: [D]\n output y: [D]\n layer a = A(D)\n forward {\n y = a(x)\n }\n}\n",
     "model 'A' contains itself: A -> B -> A"},
    {CELL_ID "model S(D, N = 2) {\n input x: [D]\n output y: [D]\n layer l[N] = Id(D)\n"
             " forward {\n let h = x\n for k in l {\n h = k(h)\n }\n y = h\n }\n}\n"
             "model T(D) {\n input x: [D]\n output y: [D]\n layer s = S(D, 3)\n"
             " forward {\n y = s(x)\n }\n}\n",
     "dimension 'N' of 'S' sets a count unrolled when compiling (a layer array's length or a "
     "loop's bound), fixed at 2 when 'S' was compiled; it cannot be rebound here (set it for the "
     "whole program with --dims N=...)"},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D)\n"
             " forward {\n y = l\n }\n}\n",
     "'l' is a layer; call it: l(...)"},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D) suffix \"_{i}\"\n"
             " forward {\n y = l(x)\n }\n}\n",
     "'{i}' in a prefix or suffix needs a layer array (layer l[n] = ...)"},
    {CELL_ID "cell Id(H) {\n input x: [H]\n output y: [H]\n step {\n y = x\n }\n}\n",
     "duplicate unit 'Id'"},
    {"cell C(H) {\n input x: [H]\n output y: [H]\n step {\n let a = x\n a = a * 2\n y = a\n }\n}\n",
     NULL},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n forward {\n y = x'\n }\n}\n",
     "'x' is not a state; only a state can be primed"},
    /* Top-level functions see only their parameters: no dims, no params. */
    {"def f(v) = v * D\n" CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n forward {\n"
     " y = f(x)\n }\n}\n",
     "unknown name 'D'"},
    {"def f(v) = v * p\ncell C(H) {\n param p: [H]\n input x: [H]\n output y: [H]\n step {\n"
     " y = f(x)\n }\n}\n",
     "function 'f' may only use its parameters (it is defined outside any unit); 'p' is a param"},
    {"def f(v) = v\ndef f(v) = v * 2\n" CELL_ID, "duplicate function 'f'"},
    {CELL_ID "model M(D) {\n input x: [D]\n output y: [D]\n layer l = Id(D)\n def f(v) = l(v)\n"
             " forward {\n y = f(x)\n }\n}\n",
     "a function cannot call a layer"},
    {"cell C(A = 2*B, B) {\n input x: [A]\n output y: [A]\n step {\n y = x\n }\n}\n",
     "unknown dimension 'B'"},
    /* Functions work in models and in state initializers; a top-level one
     * may call another. */
    {"def sq(v) = v * v\ndef quad(v) = sq(sq(v))\n"
     "cell C(H, K = H + 1) {\n param p: [K]\n def scaled(v) = quad(v) * mean(p) + H\n"
     " input x: [H]\n state h: [H] = scaled(2)\n output y: [H]\n step {\n"
     " h' = scaled(x) + h\n y = elu(h')\n }\n}\n"
     "model M(D) {\n input x: [D]\n output y: [D]\n layer c = C(D)\n def g(v) = sq(v) + 1\n"
     " forward {\n y = g(c(g(x)))\n }\n}\n",
     NULL},
    {"cell A(H) {\n input x: [H]\n context m: [H]\n output y: [H]\n step {\n y = x + m\n }\n}\n"
     "model M(D) {\n input x: [D]\n context c: [D]\n output y: [D]\n layer l = A(D)\n"
     " forward {\n y = l(x, c + x)\n }\n}\n",
     "argument 2 of layer 'l' is context 'm' of A, so it must be the same at every step: "
     "computed from contexts, params and dims only"},
    {CELL_ID
     "model M(D, S) {\n input x: [D]\n context c: [S, D]\n output y: [D]\n layer l = Id(D)\n"
     " forward {\n let m = l(c)\n y = l(x)\n }\n}\n",
     "layer 'l' runs per step here but over the positions of a context elsewhere"},
    {CELL_ID "model M(D, S) {\n input x: [D]\n context n: int\n output y: [D]\n"
             " forward {\n y = x + n\n }\n}\n",
     "int context 'n' can only give a layer's lengths: layer(..., lengths=n)"},
    {CELL_ID "model M(D, S) {\n input x: [D]\n context n: int\n output y: [D]\n layer l = Id(D)\n"
             " forward {\n y = l(x, lengths=n)\n }\n}\n",
     "lengths= is for a layer run over a context's positions (its inputs given values read from "
     "contexts, with one more leading axis)"},
    {CELL_ID
     "model M(D, S) {\n input x: [D]\n context c: [S, D]\n output y: [D]\n layer l = Id(D)\n"
     " forward {\n let m = l(c, steps=3)\n y = x\n }\n}\n",
     "a layer call takes one keyword argument, lengths= (for a layer run over a context's "
     "positions)"},
    {CELL_ID "model M(D, S) {\n input x: [D]\n context c: [S, D]\n context m: [D]\n output y: [D]\n"
             " layer l = Id(D)\n forward {\n let u = l(c, lengths=m)\n y = x\n }\n}\n",
     "lengths= takes an int context (context n: int), one length per example"},
};

static void test_model_errors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof model_errors / sizeof model_errors[0]; i++) {
    const ModelCase *mc = &model_errors[i];
    Compiled c;
    compile_text(&c, mc->src, NULL);
    int ok = mc->message
                 ? !c.m && c.de.diags.n > 0 && strcmp(c.de.diags.v[0].message, mc->message) == 0
                 : c.m != NULL;
    if (!ok) {
      char *d = format_diags(&c.de);
      print_error("case %zu:\n%s--- expected: %s\n--- got:\n%s\n", i, mc->src,
                  mc->message ? mc->message : "(success)", d);
      free(d);
      fail();
    }
    close_compiled(&c);
  }
}

/* A statement with an error is reported once and its names do not cascade;
 * the next statement is still checked. */
static void test_errors_do_not_cascade(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c,
               "cell C(H) {\n input x: [H]\n state h: [H]\n output y: [H]\n step {\n"
               "  let a = nope(x)\n  let b = a * a + a\n  h' = b\n  y = h' + a + missing\n"
               " }\n}\n",
               NULL);
  assert_null(c.m);
  assert_int_equal(c.de.nerrors, 2);
  close_compiled(&c);
}

static void test_syntax_error_returns_null(void **state) {
  (void)state;
  Compiled c;
  compile_text(&c, "cell C(H) {\n input x: [H\n}\n", NULL);
  assert_null(c.m);
  assert_true(c.de.nerrors > 0);
  close_compiled(&c);
}

/* Every allocation of a compilation may fail: the result is NULL with an
 * error, never a crash (AddressSanitizer builds check the rest). */
static void test_allocation_failure(void **state) {
  (void)state;
  for (long n = 0; n < 100000; n += n < 400 ? 1 : 37) {
    Arena *a = arena_create();
    if (!a) continue;
    SrcMgr sm;
    DiagEngine de;
    srcmgr_init(&sm, a);
    diag_init(&de, a, NULL);
    seq_alloc_fail_after(n);
    IrModule *m = seq_compile_file(a, &sm, &de, "tests/golden/ir/bidir_model.seq", NULL);
    seq_alloc_fail_after(-1);
    if (m) {
      assert_int_equal(de.nerrors, 0);
      arena_destroy(a);
      return;
    }
    assert_true(de.nerrors > 0);
    arena_destroy(a);
  }
  fail_msg("compilation never succeeded");
}

#define DIAG(name) cmocka_unit_test_prestate(test_diag_golden, (void *)name)
#define IR(name) cmocka_unit_test_prestate(test_ir_golden, (void *)name)

int main(void) {
  const struct CMUnitTest tests[] = {
      DIAG("unknown_name"),
      DIAG("unknown_function"),
      DIAG("wrong_arity"),
      DIAG("add_shape"),
      DIAG("matmul_inner"),
      DIAG("matmul_scalar"),
      DIAG("dim_quotient"),
      DIAG("inv_square"),
      DIAG("inv_complex"),
      DIAG("expm_square"),
      DIAG("output_unassigned"),
      DIAG("state_assigned_twice"),
      DIAG("primed_before_assign"),
      DIAG("prime_non_state"),
      DIAG("state_shape"),
      DIAG("split_indivisible"),
      DIAG("unknown_dim"),
      DIAG("bad_dim_expr"),
      DIAG("missing_import"),
      DIAG("import_cycle"),
      DIAG("duplicate_unit"),
      DIAG("duplicate_decl"),
      DIAG("unknown_layer_cell"),
      DIAG("layer_call_args"),
      DIAG("model_state"),
      DIAG("layer_count"),
      DIAG("step_loop"),
      DIAG("attention"),
      DIAG("grad"),
      DIAG("grid"),
      DIAG("several_errors"),
      cmocka_unit_test(test_import_depth),
      IR("lstm"),
      IR("gru"),
      IR("conv_cell"),
      IR("s4d_complex"),
      IR("bidir_model"),
      IR("layer_array"),
      IR("embedding_model"),
      IR("builtins"),
      IR("lang_features"),
      IR("step_loop"),
      IR("contexts"),
      IR("grad"),
      IR("grid"),
      cmocka_unit_test(test_examples_compile),
      cmocka_unit_test(test_cell_structure),
      cmocka_unit_test(test_unassigned_state_carries),
      cmocka_unit_test(test_layer_structure),
      cmocka_unit_test(test_high_degree_reshape),
      cmocka_unit_test(test_fresh_dims),
      cmocka_unit_test(test_hidden_conv_state),
      cmocka_unit_test(test_causal_conv_in_model),
      cmocka_unit_test(test_dim_override),
      cmocka_unit_test(test_entry_option),
      cmocka_unit_test(test_stdlib_dirs),
      cmocka_unit_test(test_default_stdlib),
      cmocka_unit_test(test_cell_errors),
      cmocka_unit_test(test_model_errors),
      cmocka_unit_test(test_errors_do_not_cascade),
      cmocka_unit_test(test_syntax_error_returns_null),
      cmocka_unit_test(test_allocation_failure),
  };
  return cmocka_run_group_tests(tests, enter_source_dir, NULL);
}
