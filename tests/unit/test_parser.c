/* test_parser.c - the scanner and parser: golden AST dumps and diagnostics for
 * tests/golden/parse/NAME.seq, the tree's fields and locations, and inputs
 * built to break a parser (deep nesting, garbage, NULs, huge tokens,
 * allocation failure). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/ast.h"

/* One parse with everything a test wants to look at. */
typedef struct Parsed {
  Arena *arena;
  DiagEngine de;
  SrcMgr sm;
  AstFile *file;
} Parsed;

static Parsed *parse_bytes(const char *name, const char *text, size_t len) {
  Parsed *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->arena = arena_create();
  assert_non_null(p->arena);
  diag_init(&p->de, p->arena, NULL);
  srcmgr_init(&p->sm, p->arena);
  SrcFile *src = srcmgr_add_string(&p->sm, name, text, len);
  assert_non_null(src);
  p->file = ast_parse(p->arena, &p->de, src);
  assert_non_null(p->file);
  return p;
}

static Parsed *parse_text(const char *text) {
  return parse_bytes("t.seq", text, strlen(text));
}

static void parsed_free(Parsed *p) {
  arena_destroy(p->arena);
  free(p);
}

/* All diagnostics as the CLI prints them. Caller frees. */
static char *diags_text(const Parsed *p) {
  char *buf = NULL;
  size_t size = 0;
  FILE *out = open_memstream(&buf, &size);
  assert_non_null(out);
  for (int i = 0; i < p->de.diags.n; i++) diag_format(out, &p->de.diags.v[i]);
  fclose(out);
  return buf;
}

static char *ast_text(const Parsed *p) {
  char *buf = NULL;
  size_t size = 0;
  FILE *out = open_memstream(&buf, &size);
  assert_non_null(out);
  ast_print(out, p->file);
  fclose(out);
  return buf;
}

/* Asserts that the first diagnostic is an error at line:col whose message
 * contains `needle`. */
static void expect_first_error(const Parsed *p, int line, int col, const char *needle) {
  if (p->de.diags.n == 0) fail_msg("expected an error containing '%s', got none", needle);
  const Diag *d = &p->de.diags.v[0];
  if (d->severity != DIAG_ERROR || d->loc.line != line || d->loc.col != col ||
      !strstr(d->message, needle)) {
    char *all = diags_text(p);
    print_error("expected error at %d:%d containing '%s', got:\n%s", line, col, needle, all);
    free(all);
    fail();
  }
}

/* ---- Golden files --------------------------------------------------------- */

/* Every tests/golden/parse/NAME.seq is parsed; NAME.expected holds the AST
 * dump, or for err_*.seq the diagnostics (which must be non-empty). */
static void test_golden(void **state) {
  (void)state;
  const char *dir = tu_src("tests/golden/parse");
  int n = 0;
  char **names = tu_list_dir(dir, ".seq", &n);
  assert_true(n >= 10);
  for (int i = 0; i < n; i++) {
    char rel[512], expected[512];
    snprintf(rel, sizeof rel, "tests/golden/parse/%s", names[i]);
    snprintf(expected, sizeof expected, "tests/golden/parse/%.*s.expected",
             (int)strlen(names[i]) - 4, names[i]);
    size_t len;
    char *text = tu_read_file(tu_src(rel), &len);
    assert_non_null(text);
    Parsed *p = parse_bytes(names[i], text, len);
    int is_err = strncmp(names[i], "err_", 4) == 0;
    char *out = is_err ? diags_text(p) : ast_text(p);
    if (is_err && p->de.nerrors == 0) fail_msg("%s: expected errors, got none", names[i]);
    if (!is_err && p->de.nerrors != 0) {
      char *diags = diags_text(p);
      fail_msg("%s: unexpected errors:\n%s", names[i], diags);
    }
    tu_check_golden(out, expected);
    free(out);
    free(text);
    parsed_free(p);
  }
  tu_free_list(names);
}

/* ---- The tree ------------------------------------------------------------- */

static void test_empty_inputs(void **state) {
  (void)state;
  const char *empties[] = {"",      "\n\n\n",   "# only a comment", "/* block */\n# and line\n",
                           ";;\n;", "   \t\r\n"};
  for (size_t i = 0; i < sizeof empties / sizeof *empties; i++) {
    Parsed *p = parse_text(empties[i]);
    assert_int_equal(p->de.nerrors, 0);
    assert_int_equal(p->file->nunits, 0);
    assert_int_equal(p->file->nimports, 0);
    parsed_free(p);
  }
}

static void test_tree_fields(void **state) {
  (void)state;
  Parsed *p = parse_text("import \"std/a.seq\"\n"
                         "cell C(I, H=8) {\n"
                         "  param in_proj.weight: complex[4*H, I]\n"
                         "  input t: int\n"
                         "  state h: [H] = 1.5\n"
                         "  step {\n"
                         "    let a, b = split(x, 2, axis=-1)\n"
                         "    h' = a[:, None]^T + 1e-5\n"
                         "  }\n"
                         "}\n");
  assert_int_equal(p->de.nerrors, 0);
  AstFile *f = p->file;
  assert_int_equal(f->nimports, 1);
  assert_string_equal(f->imports[0].path, "std/a.seq");
  assert_int_equal(f->imports[0].loc.line, 1);
  assert_int_equal(f->imports[0].loc.col, 1);
  assert_int_equal(f->nunits, 1);
  AstUnit *u = f->units[0];
  assert_int_equal(u->kind, AST_CELL);
  assert_string_equal(u->name, "C");
  assert_int_equal(u->loc.line, 2);
  assert_null(u->doc);
  assert_int_equal(u->ndims, 2);
  assert_string_equal(u->dims[1].name, "H");
  assert_int_equal(u->dims[1].loc.col, 11);
  assert_int_equal(u->dims[1].deflt->kind, AST_NUM);
  assert_true(u->dims[1].deflt->num == 8.0);
  assert_int_equal(u->ndecls, 3);

  AstDecl *param = u->decls[0];
  assert_int_equal(param->kind, AST_PARAM);
  assert_int_equal(param->name.nparts, 2);
  assert_string_equal(param->name.parts[0], "in_proj");
  assert_string_equal(param->name.parts[1], "weight");
  assert_int_equal(param->name.loc.col, 9);
  assert_int_equal(param->type.elem, AST_TY_COMPLEX);
  assert_int_equal(param->type.ndims, 2);
  assert_int_equal(param->type.loc.col, 25);
  AstExpr *d0 = param->type.dims[0];
  assert_int_equal(d0->kind, AST_BINARY);
  assert_int_equal(d0->op, '*');
  /* A binary operation is located at its operator (2*H: the '*'). */
  assert_int_equal(d0->loc.col, 34);
  assert_int_equal(u->decls[1]->type.elem, AST_TY_INT);
  AstExpr *init = u->decls[2]->init;
  assert_int_equal(init->kind, AST_NUM);
  assert_false(init->is_int);
  assert_true(init->num == 1.5);
  assert_string_equal(init->text, "1.5");

  assert_int_equal(u->nbody, 2);
  assert_int_equal(u->body_loc.line, 6);
  assert_int_equal(u->body_loc.col, 3);
  AstStmt *let = u->body[0];
  assert_int_equal(let->kind, AST_LET);
  assert_int_equal(let->loc.col, 5);
  assert_int_equal(let->nnames, 2);
  assert_string_equal(let->names[1], "b");
  assert_int_equal(let->name_locs[1].col, 12);
  assert_int_equal(let->nvalues, 1);
  AstExpr *call = let->values[0];
  assert_int_equal(call->kind, AST_CALL);
  assert_int_equal(call->callee->kind, AST_NAME);
  assert_string_equal(call->callee->path.parts[0], "split");
  assert_int_equal(call->nargs, 3);
  assert_int_equal(call->args[1]->kind, AST_NUM);
  assert_true(call->args[1]->is_int);
  AstExpr *kw = call->args[2];
  assert_int_equal(kw->kind, AST_KWARG);
  assert_string_equal(kw->kwname, "axis");
  assert_int_equal(kw->loc.col, 28);
  assert_int_equal(kw->lhs->kind, AST_UNARY);
  assert_int_equal(kw->lhs->op, '-');

  AstStmt *assign = u->body[1];
  assert_int_equal(assign->kind, AST_ASSIGN);
  assert_int_equal(assign->target->kind, AST_NAME);
  assert_true(assign->target->primed);
  AstExpr *sum = assign->value;
  assert_int_equal(sum->kind, AST_BINARY);
  assert_int_equal(sum->loc.col, 23); /* the '+' */
  assert_int_equal(sum->lhs->kind, AST_TRANSPOSE);
  AstExpr *index = sum->lhs->lhs;
  assert_int_equal(index->kind, AST_INDEX);
  assert_int_equal(index->nargs, 2);
  assert_int_equal(index->args[0]->kind, AST_SLICE);
  assert_null(index->args[0]->lhs);
  assert_null(index->args[0]->rhs);
  assert_int_equal(index->args[0]->loc.col, 12);
  assert_int_equal(index->args[1]->kind, AST_NONE);
  assert_int_equal(index->args[1]->loc.col, 15);
  assert_true(sum->rhs->num == 1e-5);
  parsed_free(p);
}

static void test_doc_comments(void **state) {
  (void)state;
  Parsed *p = parse_text("# not attached\n"
                         "\n"
                         "# First line.\n"
                         "#   indented\n"
                         "#\n"
                         "cell A {\n  step {\n  }\n}\n"
                         "x # trailing, not a doc\n");
  /* the trailing junk is an error, but A parsed with its doc */
  assert_int_equal(p->file->nunits, 1);
  assert_string_equal(p->file->units[0]->doc, "First line.\n  indented\n");
  parsed_free(p);

  p = parse_text("# separated by a blank line\n\nmodel M {\n  forward {\n  }\n}\n"
                 "cell B { # on the same line\n  step {\n  }\n}\n");
  assert_int_equal(p->de.nerrors, 0);
  assert_int_equal(p->file->nunits, 2);
  assert_null(p->file->units[0]->doc);
  assert_null(p->file->units[1]->doc);
  parsed_free(p);
}

static void test_newlines_and_separators(void **state) {
  (void)state;
  /* CRLF line ends, ';' separators, no newline at the end of the file,
   * newlines inside brackets, a block comment spanning lines ending a line. */
  Parsed *p = parse_text("import \"a.seq\"; import \"b.seq\"\r\n"
                         "cell A(I,\r\n H) {\r\n step {\r\n  let a = f(1,\r\n 2); y = a\r\n"
                         "  z = 1 /* spans\n lines */ w = 2\n"
                         " }\r\n}");
  if (p->de.nerrors) fail_msg("%s", diags_text(p));
  assert_int_equal(p->file->nimports, 2);
  assert_int_equal(p->file->units[0]->ndims, 2);
  assert_int_equal(p->file->units[0]->nbody, 4);
  parsed_free(p);

  p = parse_text("import \"last.seq\"");
  assert_int_equal(p->de.nerrors, 0);
  assert_int_equal(p->file->nimports, 1);
  parsed_free(p);
}

/* ---- Diagnostics ------------------------------------------------------------ */

static void test_diag_format(void **state) {
  (void)state;
  Parsed *p = parse_text("cell A {\n  step {\n    y = x +\n  }\n}\n");
  char *out = diags_text(p);
  assert_string_equal(out, "t.seq:3:12: error: unexpected newline, expecting an expression\n"
                           "      y = x +\n"
                           "             ^\n");
  free(out);
  parsed_free(p);
}

static void test_several_errors(void **state) {
  (void)state;
  Parsed *p = parse_text("cell A {\n"
                         "  param : [H]\n"
                         "  input x: [H]\n"
                         "  step {\n"
                         "    y = = 1\n"
                         "    z = x\n"
                         "    w = (1, 2)\n"
                         "  }\n"
                         "}\n"
                         "cell B {\n"
                         "  step {\n"
                         "    let = 2\n"
                         "  }\n"
                         "}\n");
  assert_int_equal(p->de.nerrors, 4);
  int lines[] = {2, 5, 7, 12};
  for (int i = 0; i < 4; i++) assert_int_equal(p->de.diags.v[i].loc.line, lines[i]);
  /* recovery kept the good parts */
  assert_int_equal(p->file->nunits, 2);
  assert_int_equal(p->file->units[0]->ndecls, 1);
  assert_int_equal(p->file->units[0]->nbody, 1);
  parsed_free(p);
}

static void test_max_errors(void **state) {
  (void)state;
  Arena *a = arena_create();
  DiagEngine de;
  diag_init(&de, a, NULL);
  de.max_errors = 3;
  SrcMgr sm;
  srcmgr_init(&sm, a);
  const char *text = "$ $ $ $ $ $ $ $ $ $\n";
  SrcFile *src = srcmgr_add_string(&sm, "m.seq", text, strlen(text));
  assert_non_null(ast_parse(a, &de, src));
  assert_int_equal(de.diags.n, 3);
  arena_destroy(a);
}

static void test_missing_brace(void **state) {
  (void)state;
  Parsed *p = parse_text("cell A {\n  step {\n    y = x\n  }\n");
  expect_first_error(p, 4, 4, "unexpected end of file, expecting '}'");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);
}

static void test_unterminated(void **state) {
  (void)state;
  Parsed *p = parse_text("cell A {\n  step {\n  }\n}\n  /* not closed\n\n cell B {\n");
  expect_first_error(p, 5, 3, "unterminated comment");
  assert_int_equal(p->de.nerrors, 1);
  assert_int_equal(p->file->nunits, 1);
  parsed_free(p);

  p = parse_text("import \"abc\nimport \"ok.seq\"\n");
  expect_first_error(p, 1, 8, "unterminated string");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);

  p = parse_text("import \"a\\tb\"\n");
  expect_first_error(p, 1, 10, "unknown escape '\\t'");
  parsed_free(p);

  p = parse_text("import \"q\\\"\\\\\"\n");
  assert_int_equal(p->de.nerrors, 0);
  assert_string_equal(p->file->imports[0].path, "q\"\\");
  parsed_free(p);
}

static void test_numbers(void **state) {
  (void)state;
  static const struct {
    const char *text;
    const char *error; /* NULL: valid */
    double value;
    int is_int;
  } cases[] = {
      {"42", NULL, 42, 1},
      {"0.5", NULL, 0.5, 0},
      {".5", NULL, 0.5, 0},
      {"3.", NULL, 3, 0},
      {"1e-5", NULL, 1e-5, 0},
      {"2E+3", NULL, 2000, 0},
      {"9223372036854775807", NULL, 9223372036854775807.0, 1},
      {"1e308", NULL, 1e308, 0},
      {"1e-400", NULL, 0, 0}, /* underflow is not an error */
      {"9223372036854775808", "number out of range", 0, 0},
      {"99999999999999999999999999", "number out of range", 0, 0},
      {"1e309", "number out of range", 0, 0},
      {"1e", "malformed number '1e'", 0, 0},
      {"1e+", "malformed number '1e+'", 0, 0},
      {"1.2.3", "malformed number '1.2.3'", 0, 0},
      {"2x", "malformed number '2x'", 0, 0},
      {"1e5e5", "malformed number", 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char text[256];
    snprintf(text, sizeof text, "cell A {\n  step {\n    y = %s\n  }\n}\n", cases[i].text);
    Parsed *p = parse_text(text);
    if (cases[i].error) {
      expect_first_error(p, 3, 9, cases[i].error);
      assert_int_equal(p->de.nerrors, 1);
    } else {
      if (p->de.nerrors) fail_msg("%s: %s", cases[i].text, diags_text(p));
      AstExpr *e = p->file->units[0]->body[0]->value;
      assert_int_equal(e->kind, AST_NUM);
      assert_int_equal(e->is_int, cases[i].is_int);
      assert_true(e->num == cases[i].value);
      assert_string_equal(e->text, cases[i].text);
    }
    parsed_free(p);
  }
}

static void test_identifiers_and_primes(void **state) {
  (void)state;
  char text[2048], ident[600];
  memset(ident, 'a', 256);
  ident[256] = 0;
  snprintf(text, sizeof text, "cell %s {\n  step {\n  }\n}\n", ident);
  Parsed *p = parse_text(text);
  assert_int_equal(p->de.nerrors, 0);
  parsed_free(p);

  memset(ident, 'b', 257);
  ident[257] = 0;
  snprintf(text, sizeof text, "cell A {\n  step {\n    y = %s\n  }\n}\n", ident);
  p = parse_text(text);
  expect_first_error(p, 3, 9, "identifier longer than 256 bytes");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);

  /* a megabyte-long identifier */
  size_t n = 1u << 20;
  char *big = malloc(n + 64);
  assert_non_null(big);
  memcpy(big, "cell ", 5);
  memset(big + 5, 'x', n);
  strcpy(big + 5 + n, " {\n step {\n }\n}\n");
  p = parse_text(big);
  expect_first_error(p, 1, 6, "identifier longer than 256 bytes");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);
  free(big);

  p = parse_text("cell A {\n  step {\n    y = h '\n    z = x^2\n    w = l.h' + a.b .c\n  }\n}\n");
  expect_first_error(p, 3, 11, "a prime (') must directly follow a name");
  assert_int_equal(p->de.nerrors, 2);
  assert_int_equal(p->de.diags.v[1].loc.line, 4);
  assert_int_equal(p->de.diags.v[1].loc.col, 10);
  assert_string_equal(p->de.diags.v[1].message, "expected 'T' after '^'");
  AstExpr *sum = p->file->units[0]->body[0]->value;
  assert_int_equal(sum->lhs->path.nparts, 2);
  assert_true(sum->lhs->primed);
  assert_int_equal(sum->rhs->path.nparts, 3);
  parsed_free(p);
}

static void test_invalid_characters(void **state) {
  (void)state;
  static const char text[] = "cell A {\n  step {\n    y = x \x01 $\n    z = \xc3\xa9\n  }\n}\n";
  Parsed *p = parse_bytes("t.seq", text, sizeof text - 1);
  assert_int_equal(p->de.nerrors, 3);
  expect_first_error(p, 3, 11, "unexpected character '\\x01'");
  assert_string_equal(p->de.diags.v[1].message, "unexpected character '$'");
  assert_int_equal(p->de.diags.v[2].loc.col, 9);
  assert_non_null(strstr(p->de.diags.v[2].message, "'\\xc3' (non-ASCII"));
  parsed_free(p);
}

/* ---- Hostile inputs --------------------------------------------------------- */

static char *repeat(const char *head, const char *unit, int n, const char *mid, const char *unit2,
                    int n2, const char *tail) {
  size_t len = strlen(head) + strlen(unit) * (size_t)n + strlen(mid) + strlen(unit2) * (size_t)n2 +
               strlen(tail) + 1;
  char *s = malloc(len), *q = s;
  assert_non_null(s);
  q += sprintf(q, "%s", head);
  for (int i = 0; i < n; i++) q += sprintf(q, "%s", unit);
  q += sprintf(q, "%s", mid);
  for (int i = 0; i < n2; i++) q += sprintf(q, "%s", unit2);
  sprintf(q, "%s", tail);
  return s;
}

static void expect_nesting_error(const char *text, int line, int col) {
  Parsed *p = parse_text(text);
  expect_first_error(p, line, col, "nesting deeper than 256");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);
}

static void test_deep_nesting(void **state) {
  (void)state;
  const char *head = "cell A {\n  step {\n    y = ", *tail = "\n  }\n}\n";
  /* 256 levels are fine, 257 are not, 100000 stop at the 257th. */
  char *s = repeat(head, "(", 256, "x", ")", 256, tail);
  Parsed *p = parse_text(s);
  assert_int_equal(p->de.nerrors, 0);
  parsed_free(p);
  free(s);
  s = repeat(head, "(", 257, "x", ")", 257, tail);
  expect_nesting_error(s, 3, 9 + 256);
  free(s);
  s = repeat(head, "(", 100000, "x", ")", 100000, tail);
  expect_nesting_error(s, 3, 9 + 256);
  free(s);
  s = repeat(head, "[", 100000, "x", "]", 100000, tail);
  expect_nesting_error(s, 3, 9 + 256);
  free(s);

  /* Prefix operators stack up in the parser like brackets do. */
  s = repeat(head, "-", 256, "x", "", 0, tail);
  p = parse_text(s);
  assert_int_equal(p->de.nerrors, 0);
  AstExpr *e = p->file->units[0]->body[0]->value;
  for (int i = 0; i < 256; i++) {
    assert_int_equal(e->kind, AST_UNARY);
    e = e->lhs;
  }
  assert_int_equal(e->kind, AST_NAME);
  parsed_free(p);
  free(s);
  s = repeat(head, "-", 100000, "x", "", 0, tail);
  expect_nesting_error(s, 3, 9 + 256);
  free(s);
  s = repeat(head, "+ -", 50000, "x", "", 0, tail);
  expect_nesting_error(s, 3, 9 + 3 * 128); /* the 257th operator */
  free(s);
  s = repeat(head, "-(", 100000, "x", ")", 100000, tail);
  expect_nesting_error(s, 3, 9 + 256);
  free(s);
  /* Long flat chains are not nesting: the grammar is left-recursive. */
  s = repeat(head, "x + -x * ", 3000, "x", "", 0, tail);
  p = parse_text(s);
  assert_int_equal(p->de.nerrors, 0);
  parsed_free(p);
  free(s);
  /* But every operator deepens the tree that sema walks recursively, so a
   * statement holds at most SEQ_MAX_STMT_OPS of them (test_hardening). */
  s = repeat(head, "x + -x * ", 100000, "x", "", 0, tail);
  p = parse_text(s);
  assert_int_equal(p->de.nerrors, 1);
  assert_non_null(strstr(p->de.diags.v[0].message, "more than 10000 operators"));
  parsed_free(p);
  free(s);

  /* Blocks nest through 'for'. */
  s = repeat("cell A {\n  step {\n", "for l in a {\n", 100000, "", "}\n", 100000, "  }\n}\n");
  expect_nesting_error(s, 257, 12);
  free(s);
}

static void test_garbage(void **state) {
  (void)state;
  /* Deterministic pseudo-random bytes, NULs included. */
  size_t n = 200000;
  char *buf = malloc(n);
  assert_non_null(buf);
  uint32_t x = 12345;
  for (int round = 0; round < 4; round++) {
    for (size_t i = 0; i < n; i++) {
      x = x * 1664525u + 1013904223u;
      unsigned char c = (unsigned char)(x >> 24);
      /* round 1: printable-ish source characters only; round 2: all NUL;
       * round 3: tokens of the language in random order */
      if (round == 1) c = (unsigned char)(" \n(){}[]=+-*/@:,.'^T;#\"ax1"[c % 26]);
      if (round == 2) c = 0;
      buf[i] = (char)c;
    }
    if (round == 3) {
      static const char *const toks[] = {
          "cell ",    "model ", "step ",  "forward ", "{", "}",  "(",     ")",    "[",
          "]",        "\n",     "x ",     "1 ",       "=", "+",  "-",     "let ", "for ",
          "in ",      "param ", "state ", "layer ",   ":", ",",  "None ", "^T",   "'",
          "reverse ", "\"s\" ", "int ",   "complex ", ".", "/*", "*/",    "#"};
      size_t k = 0;
      while (k + 16 < n) {
        x = x * 1664525u + 1013904223u;
        const char *t = toks[(x >> 16) % (sizeof toks / sizeof *toks)];
        memcpy(buf + k, t, strlen(t));
        k += strlen(t);
      }
      n = k;
    }
    Parsed *p = parse_bytes("garbage.seq", buf, n);
    assert_true(p->de.nerrors > 0);
    assert_true(p->de.diags.n <= 20);
    for (int i = 0; i < p->de.diags.n; i++) {
      assert_true(p->de.diags.v[i].loc.line >= 1);
      assert_true(p->de.diags.v[i].loc.col >= 1);
    }
    parsed_free(p);
  }
  free(buf);

  static const char nul_inside[] = "cell A {\n  step {\n    y = x\0\n  }\n}\n";
  Parsed *p = parse_bytes("nul.seq", nul_inside, sizeof nul_inside - 1);
  expect_first_error(p, 3, 10, "unexpected character '\\x00'");
  assert_int_equal(p->de.nerrors, 1);
  parsed_free(p);
}

/* With allocation failing at every possible point, ast_parse returns NULL or
 * a tree, and never crashes or leaks (valgrind sees the leaks). */
static void test_allocation_failure(void **state) {
  (void)state;
  size_t len;
  char *text = tu_read_file(tu_src("tests/golden/parse/mamba.seq"), &len);
  assert_non_null(text);
  int completed = 0;
  for (long n = 0; n < 100000 && !completed; n++) {
    Arena *a = arena_create();
    assert_non_null(a);
    DiagEngine de;
    diag_init(&de, a, NULL);
    SrcMgr sm;
    srcmgr_init(&sm, a);
    SrcFile *src = srcmgr_add_string(&sm, "mamba.seq", text, len);
    assert_non_null(src);
    seq_alloc_fail_after(n);
    AstFile *f = ast_parse(a, &de, src);
    seq_alloc_fail_after(-1);
    if (!f) assert_true(de.nerrors > 0); /* "out of memory", even if unrecorded */
    if (f && de.nerrors == 0) {
      assert_int_equal(f->nunits, 2);
      completed = 1;
    }
    arena_destroy(a);
  }
  assert_true(completed);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_empty_inputs),
      cmocka_unit_test(test_tree_fields),
      cmocka_unit_test(test_doc_comments),
      cmocka_unit_test(test_newlines_and_separators),
      cmocka_unit_test(test_diag_format),
      cmocka_unit_test(test_several_errors),
      cmocka_unit_test(test_max_errors),
      cmocka_unit_test(test_missing_brace),
      cmocka_unit_test(test_unterminated),
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_identifiers_and_primes),
      cmocka_unit_test(test_invalid_characters),
      cmocka_unit_test(test_deep_nesting),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_allocation_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
