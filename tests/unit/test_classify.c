/* test_classify.c - the recurrence classification pass (passes/classify.c).
 *
 * Every cell in stdlib/ and examples/ is classified, as written and after the
 * rewrite (what seqc classifies), and each state's class is checked against
 * a table written from the papers (docs/algorithms.md §1 and the comment at
 * the top of each .seq file), not from the pass's output. Golden
 * reports pin the wording for a few cells; small cells written here cover
 * classes the library does not use, and malformed IR and allocation failure
 * must give an error, never a crash.
 */
#include "testutil.h"

#include "frontend/frontend.h"
#include "passes/passes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  IrModule *m;
  ClassifyResult *r;
} Compiled;

static void compile_and_classify(Compiled *c, const char *path, const char *text) {
  c->arena = arena_create();
  assert_non_null(c->arena);
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, stderr);
  c->m = text ? seq_compile_string(c->arena, &c->sm, &c->de, path, text, NULL)
              : seq_compile_file(c->arena, &c->sm, &c->de, path, NULL);
  if (!c->m) fail_msg("%s does not compile", path);
  assert_int_equal(classify_module(c->arena, c->m, &c->r, &c->de), 0);
  assert_non_null(c->r);
  assert_int_equal(c->r->nfuncs, c->m->funcs.n);
}

static const RecState *find_state(const Compiled *c, const char *cell, const char *state) {
  for (int i = 0; i < c->r->nfuncs; i++) {
    const IrFunc *f = c->m->funcs.v[i];
    if (strcmp(f->name, cell) != 0) continue;
    for (int k = 0; k < c->r->funcs[i].nstates; k++)
      if (strcmp(f->states.v[c->r->funcs[i].states[k].state].name, state) == 0)
        return &c->r->funcs[i].states[k];
  }
  fail_msg("no state %s in cell %s", state, cell);
  return NULL;
}

static char *report(const Compiled *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  assert_non_null(out);
  classify_print_report(out, c->m, c->r);
  fclose(out);
  return buf;
}

/* ---- The library against the papers ------------------------------------- */

#define ANY (-1)
typedef struct Expect {
  const char *cell, *state;
  RecClass cls;
  int gate;          /* RecGate, or ANY */
  int jacobian;      /* RecJacobian, or ANY */
  const char *given; /* the one state of an earlier group the update reads, or NULL */
  int is_complex;
} Expect;

/* From the papers: the update of each state, written in the comment at the
 * top of its .seq file, read against docs/algorithms.md §1. */
static const Expect EXPECTED[] = {
    /* Nonlinear cells: h enters through a full recurrent matrix. */
    {"LSTM", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"LSTM", "c", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"GRU", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"RNN", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    /* sLSTM (xLSTM §2.2): recurrent R, exponential gating, coupled h, c, n, m. */
    {"SLSTM", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"SLSTM", "c", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"SLSTM", "n", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"SLSTM", "m", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    /* Bahdanau's attention decoder: h enters the attention over its context and the GRU. */
    {"AttentionDecoder", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    /* The pointer network's LSTM decoder (its attention reads h', not h). */
    {"PointerDecoder", "h", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    {"PointerDecoder", "c", REC_NONLINEAR, ANY, REC_JAC_DENSE, NULL, 0},
    /* LightNet: the running maximum of the keys is a (max, +) scan; the sums
     * it scales are a diagonal and a matrix state with gate exp(m - m'). */
    {"LightNet", "m", REC_MAXPLUS, ANY, ANY, NULL, 0},
    {"LightNet", "E", REC_LIN_DIAG, ANY, ANY, "m", 0},
    {"LightNet", "U", REC_LIN_MATRIX, REC_GATE_DIAG, ANY, "m", 0},
    /* Its grid: the row prefixes are maps of the row step (recomputed from
     * the left along the row); the quadrant's maximum mixes positions by
     * max (not proved (max, +) through the row's gathering: nonlinear); its
     * sums are linear maps along the row, written as rank-one terms. */
    {"LightNet2D", "mr", REC_MAP, ANY, ANY, NULL, 0},
    {"LightNet2D", "Er", REC_MAP, ANY, ANY, NULL, 0},
    {"LightNet2D", "Rr", REC_MAP, ANY, ANY, NULL, 0},
    {"LightNet2D", "m", REC_NONLINEAR, ANY, ANY, NULL, 0},
    {"LightNet2D", "E", REC_LIN_DPLR, ANY, ANY, "m", 0},
    {"LightNet2D", "U", REC_LIN_DPLR, ANY, ANY, "m", 0},
    /* 2D pLSTM, a grid cell: its row step recomputes the row of rightward
     * states Cr from the row above (a map given Cd); the row of downward
     * states Cd is a linear map along the row, written as rank-one terms. */
    {"PLSTM2D", "Cr", REC_MAP, ANY, ANY, "Cd", 0},
    {"PLSTM2D", "Cd", REC_LIN_DPLR, ANY, ANY, NULL, 0},
    /* Titans: an MLP memory and its momentum, coupled through the gradient;
     * states of two shapes, so no Newton form (REC_JAC_NONE). */
    {"Titans", "W1", REC_NONLINEAR, ANY, REC_JAC_NONE, NULL, 0},
    {"Titans", "W2", REC_NONLINEAR, ANY, REC_JAC_NONE, NULL, 0},
    {"Titans", "S1", REC_NONLINEAR, ANY, REC_JAC_NONE, NULL, 0},
    {"Titans", "S2", REC_NONLINEAR, ANY, REC_JAC_NONE, NULL, 0},
    /* ParaRNN: vector recurrent weights; ParaLSTM's [c, h] gives 2x2 blocks. */
    {"ParaGRU", "h", REC_NONLINEAR, ANY, REC_JAC_DIAG, NULL, 0},
    {"ParaLSTM", "c", REC_NONLINEAR, ANY, REC_JAC_BLOCK_DIAG, NULL, 0},
    {"ParaLSTM", "h", REC_NONLINEAR, ANY, REC_JAC_BLOCK_DIAG, NULL, 0},
    /* Diagonal linear: minGRU/minLSTM (Feng et al. 2024), Mamba-1 (A diagonal,
     * Delta per channel: a full elementwise gate), S4D/S5/LRU (complex). */
    {"MinGRU", "h", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 0},
    {"MinLSTM", "h", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 0},
    {"MambaSSM", "s", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 0},
    {"Mamba", "s", REC_LIN_DIAG, REC_GATE_FULL, ANY, "conv0.window", 0},
    {"Mamba", "conv0.window", REC_SHIFT, ANY, ANY, NULL, 0},
    {"S4D", "s", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 1},
    /* S4: Lambda - P P*, bilinear, through Woodbury: diagonal plus rank one. */
    {"S4", "s", REC_LIN_DPLR, REC_GATE_DIAG, ANY, NULL, 1},
    {"S5", "s", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 1},
    {"LRU", "s", REC_LIN_DIAG, REC_GATE_FULL, ANY, NULL, 1},
    /* Matrix states: linear attention (no decay), its normalizer z (a
     * cumulative sum), RetNet (constant scalar gamma), GLA (per-key gate),
     * Mamba-2 (scalar A per head). All multi-head: the gate is read per head. */
    {"LinearAttention", "S", REC_LIN_MATRIX, REC_GATE_NONE, ANY, NULL, 0},
    {"LinearAttention", "z", REC_LIN_DIAG, REC_GATE_NONE, ANY, NULL, 0},
    {"Retention", "S", REC_LIN_MATRIX, REC_GATE_SCALAR, ANY, "pos", 0},
    /* RetNet's position counter (for the xPos rotation): pos' = pos + 1. */
    {"Retention", "pos", REC_LIN_DIAG, REC_GATE_NONE, ANY, NULL, 0},
    {"GLA", "S", REC_LIN_MATRIX, REC_GATE_DIAG, ANY, NULL, 0},
    {"Mamba2", "s", REC_LIN_MATRIX, REC_GATE_SCALAR, ANY, "conv0.window", 0},
    {"Mamba2", "conv0.window", REC_SHIFT, ANY, ANY, NULL, 0},
    /* mLSTM: m is (max, +) linear; C and n have the scalar gate f' (one per
     * head) that reads m (and m'), so they are linear given m. n is a vector
     * per head: diagonal, not a matrix state. */
    {"MLSTM", "m", REC_MAXPLUS, ANY, ANY, NULL, 0},
    {"MLSTM", "C", REC_LIN_MATRIX, REC_GATE_SCALAR, ANY, "m", 0},
    {"MLSTM", "n", REC_LIN_DIAG, REC_GATE_SCALAR, ANY, "m", 0},
    /* Delta rules: generalized Householder transitions (I - beta k k^T),
     * with a scalar decay (gated DeltaNet) or per-key decay (RWKV-7). */
    {"DeltaNet", "S", REC_LIN_DPLR, REC_GATE_NONE, ANY, NULL, 0},
    {"DeltaProduct", "S", REC_LIN_DPLR, REC_GATE_NONE, ANY, NULL, 0},
    {"GatedDeltaNet", "S", REC_LIN_DPLR, REC_GATE_SCALAR, ANY, NULL, 0},
    {"RWKV7", "S", REC_LIN_DPLR, REC_GATE_DIAG, ANY, "x_prev", 0},
    /* RWKV's token shift: x_prev' = x, no recurrence at all. */
    {"RWKV7", "x_prev", REC_MAP, ANY, ANY, NULL, 0},
    /* pLSTM: C_t = T_t C_{t-1} + ..., T_t a J x J matrix. */
    {"PLSTM", "C", REC_LIN_SMALL_DENSE, ANY, ANY, NULL, 0},
    /* A dense N x N transition per channel, time-invariant (inv of params). */
    {"LSSL", "s", REC_LIN_SMALL_DENSE, ANY, ANY, NULL, 0},
    {"LSSLZOH", "s", REC_LIN_SMALL_DENSE, ANY, ANY, NULL, 0},
    /* GAM's local branch is a causal convolution: its window only shifts. */
    {"GAM", "conv0.window", REC_SHIFT, ANY, ANY, NULL, 0},
};

/* The linear time-invariant systems (docs/algorithms.md §9), from the
 * papers: S4D, S4 and LSSL have fixed A, B, C per channel, one input and
 * one output each (channels along axis 0, H); LRU and S5 are time-invariant
 * too, but B and C mix all H channels into one shared state: one system.
 * Every other state of the library is not one (selective gates, inputs
 * through nonlinear maps, gated readouts). */
typedef struct LtiExpect {
  const char *cell, *state;
  unsigned channels; /* its axes of independent channels */
} LtiExpect;

static const LtiExpect LTI_EXPECTED[] = {
    {"S4D", "s", 1u},     {"S4", "s", 1u},  {"LSSL", "s", 1u},
    {"LSSLZOH", "s", 1u}, {"LRU", "s", 0u}, {"S5", "s", 0u},
};

static const LtiExpect *lti_expected(const char *cell, const char *state) {
  for (size_t i = 0; i < sizeof LTI_EXPECTED / sizeof *LTI_EXPECTED; i++)
    if (strcmp(LTI_EXPECTED[i].cell, cell) == 0 && strcmp(LTI_EXPECTED[i].state, state) == 0)
      return &LTI_EXPECTED[i];
  return NULL;
}

static const Expect *expected_for(const char *cell, const char *state) {
  for (size_t i = 0; i < sizeof EXPECTED / sizeof *EXPECTED; i++)
    if (strcmp(EXPECTED[i].cell, cell) == 0 && strcmp(EXPECTED[i].state, state) == 0)
      return &EXPECTED[i];
  return NULL;
}

/* The module seqc classifies: c's after the rewrite (contractions made
 * matrix products), classified into c->r in place of the source's. */
static void rewrite_and_classify(Compiled *c) {
  IrModule *rw;
  assert_int_equal(rewrite_module(c->arena, c->m, &rw, &c->de), 0);
  c->m = rw;
  assert_int_equal(classify_module(c->arena, c->m, &c->r, &c->de), 0);
}

/* Every state of path's cells has its expected class, in the source as
 * written and (rewritten) as the compiler sees it; the time-invariant ones,
 * and only those, are reported with their convolution form. */
static int check_file(const char *path, int rewritten) {
  Compiled c;
  int checked = 0, lti = 0;
  compile_and_classify(&c, path, NULL);
  if (rewritten) rewrite_and_classify(&c);
  for (int i = 0; i < c.r->nfuncs; i++) {
    const IrFunc *f = c.m->funcs.v[i];
    const RecFunc *rf = &c.r->funcs[i];
    assert_ptr_equal(rf->func, f);
    for (int k = 0; k < rf->nstates; k++) {
      const RecState *rs = &rf->states[k];
      const char *sn = f->states.v[rs->state].name;
      const Expect *e = expected_for(f->name, sn);
      if (!e) fail_msg("%s: no expected class for %s.%s: add it to EXPECTED", path, f->name, sn);
      if (rs->cls != e->cls)
        fail_msg("%s%s: %s.%s is %s, expected %s (%s)", path, rewritten ? " (rewritten)" : "",
                 f->name, sn, classify_class_name(rs->cls), classify_class_name(e->cls),
                 rs->reason);
      if (e->gate != ANY && (int)rs->gate != e->gate)
        fail_msg("%s: %s.%s gate %d, expected %d", path, f->name, sn, rs->gate, e->gate);
      if (e->jacobian != ANY && (int)rs->jacobian != e->jacobian)
        fail_msg("%s: %s.%s jacobian %d, expected %d", path, f->name, sn, rs->jacobian,
                 e->jacobian);
      assert_int_equal(rs->is_complex, e->is_complex);
      const LtiExpect *le = lti_expected(f->name, sn);
      if (rs->lti != (le != NULL) || (le && rs->lti_channels != le->channels))
        fail_msg("%s%s: %s.%s lti %d channels %#x, expected %d %#x", path,
                 rewritten ? " (rewritten)" : "", f->name, sn, rs->lti, rs->lti_channels,
                 le != NULL, le ? le->channels : 0u);
      lti += rs->lti;
      if (e->given) {
        assert_int_equal(rs->ngiven, 1);
        assert_string_equal(f->states.v[rs->given[0]].name, e->given);
      } else {
        assert_int_equal(rs->ngiven, 0);
      }
      assert_non_null(rs->reason);
      checked++;
    }
  }
  char *text = report(&c);
  assert_int_equal(strstr(text, "convolution (reported, not built)") != NULL, lti > 0);
  free(text);
  arena_destroy(c.arena);
  return checked;
}

static int check_dir(const char *dir) {
  int files = 0, checked = 0;
  char **names = tu_list_dir(dir, ".seq", &files);
  for (int i = 0; i < files; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    checked += check_file(path, 0);
    checked += check_file(path, 1);
  }
  tu_free_list(names);
  assert_true(files > 0);
  return checked;
}

static void test_stdlib_classes(void **state) {
  (void)state;
  assert_true(check_dir("stdlib") >= 60);
}

static void test_example_classes(void **state) {
  (void)state;
  assert_true(check_dir("examples") >= 20);
}

/* ---- Reasons in words ----------------------------------------------------- */

static void test_lstm_reasons(void **state) {
  (void)state;
  Compiled c;
  compile_and_classify(&c, "stdlib/lstm.seq", NULL);
  const RecState *h = find_state(&c, "LSTM", "h"), *cs = find_state(&c, "LSTM", "c");
  assert_non_null(strstr(h->reason, "h' depends on h through sigmoid at stdlib/lstm.seq:"));
  assert_non_null(strstr(h->jacobian_reason, "matmul with weight_hh"));
  assert_int_equal(h->group, cs->group);
  assert_int_equal(h->strategy, REC_STRAT_NEWTON);
  assert_int_equal(h->ndeps, 2);
  arena_destroy(c.arena);
}

/* ---- Golden reports ----------------------------------------------------- */

static void check_report(const char *name) {
  char path[256], golden[256];
  snprintf(path, sizeof path, "stdlib/%s.seq", name);
  snprintf(golden, sizeof golden, "tests/golden/classify/%s.expected", name);
  Compiled c;
  compile_and_classify(&c, path, NULL);
  char *text = report(&c);
  tu_check_golden(text, golden);
  free(text);
  arena_destroy(c.arena);
}

static void test_golden_reports(void **state) {
  (void)state;
  const char *names[] = {"lstm",  "mlstm", "deltanet", "paralstm", "plstm", "mamba",
                         "rwkv7", "gla",   "s4d",      "lru",      "lssl"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) check_report(names[i]);
}

/* ---- Classes the library does not exercise -------------------------------- */

static const char SYNTH[] = "cell Synth(H) {\n"
                            "  param W: [H, H]\n"
                            "  param a: [H]\n"
                            "  input  x: [H]\n"
                            "  state  k: [H] = 0\n"
                            "  state  d: [H] = 0\n"
                            "  state  p: [H] = 0\n"
                            "  state  u: [H] = 0\n"
                            "  state  v: [H] = 0\n"
                            "  state  g: [H] = 0\n"
                            "  state  q: [H] = 0\n"
                            "  state  m: [H] = 0\n"
                            "  state  w: [H] = 0\n"
                            "  output y: [H]\n"
                            "  step {\n"
                            "    d' = W @ d + x\n"
                            "    p' = p * p + x\n"
                            "    u' = a * v + x\n"
                            "    v' = u - x\n"
                            "    g' = tanh(x + g)\n"
                            "    q' = exp(g) * q + x\n"
                            "    m' = 2 * max(m + x, a)\n"
                            "    w' = x / (w + 1)\n"
                            "    y  = k + d' + p' + u' + q' + m' + w'\n"
                            "  }\n"
                            "}\n";

static void test_synthetic(void **state) {
  (void)state;
  Compiled c;
  compile_and_classify(&c, "synth.seq", SYNTH);
  const RecState *k = find_state(&c, "Synth", "k");
  assert_int_equal(k->cls, REC_CARRIED);
  assert_int_equal(k->strategy, REC_STRAT_KEEP);

  const RecState *d = find_state(&c, "Synth", "d");
  assert_int_equal(d->cls, REC_LIN_DENSE);
  assert_int_equal(d->strategy, REC_STRAT_SCAN_DENSE);

  const RecState *p = find_state(&c, "Synth", "p");
  assert_int_equal(p->cls, REC_NONLINEAR);
  assert_non_null(strstr(p->reason, "product of two values"));
  assert_int_equal(p->jacobian, REC_JAC_DIAG);

  /* u and v read each other only, elementwise: one linear group of two,
   * a 2x2 block of diagonals per element. */
  const RecState *u = find_state(&c, "Synth", "u"), *v = find_state(&c, "Synth", "v");
  assert_int_equal(u->group, v->group);
  assert_int_equal(u->cls, REC_LIN_BLOCK_DIAG);
  assert_int_equal(u->block, 2);
  assert_int_equal(u->strategy, REC_STRAT_SCAN_BLOCK);
  assert_int_equal(u->ngiven, 0);

  const RecState *g = find_state(&c, "Synth", "g");
  assert_int_equal(g->cls, REC_NONLINEAR);
  assert_non_null(strstr(g->reason, "through tanh"));

  /* q's gate reads g, a nonlinear state of an earlier group. */
  const RecState *q = find_state(&c, "Synth", "q");
  assert_int_equal(q->cls, REC_LIN_DIAG);
  assert_int_equal(q->ngiven, 1);
  assert_non_null(strstr(q->reason, "coefficient reads g"));

  /* Scaling a (max, +) expression leaves the semiring. */
  const RecState *m = find_state(&c, "Synth", "m");
  assert_int_equal(m->cls, REC_NONLINEAR);

  const RecState *w = find_state(&c, "Synth", "w");
  assert_int_equal(w->cls, REC_NONLINEAR);
  assert_non_null(strstr(w->reason, "division"));

  char *text = report(&c);
  assert_non_null(strstr(text, "cell Synth (synth.seq:1:1)"));
  assert_non_null(strstr(text, "coupled with v"));
  assert_non_null(strstr(text, "strategy: associative scan with 2x2 blocks of diagonals"));
  free(text);
  arena_destroy(c.arena);
}

/* ---- Cells built to fool the classifier ---------------------------------- */

/* Each cell tries to get a class it must not have, or must keep one under a
 * rewriting. The expected class comes from the algebra of the update, with
 * the gate kind for linear classes and the axis the class is about. */
typedef struct Fool {
  const char *what;
  const char *states; /* declarations, beside the common ones below */
  const char *step;
  const char *state; /* the state checked */
  RecClass cls;
  int gate;  /* RecGate, or ANY */
  int axis;  /* RecState.axis, or ANY */
  int block; /* REC_LIN_BLOCK_DIAG: states per block */
} Fool;

static const char FOOL_DECLS[] = "  param a: [H]\n"
                                 "  param W: [H, H]\n"
                                 "  param theta: []\n"
                                 "  input x: [H]\n"
                                 "  input c: [N]\n"
                                 "  input sn: [N]\n"
                                 "  input k: [Dk]\n"
                                 "  input v: [Dv]\n"
                                 "  input gk: [NH, Dk]\n"
                                 "  input gv: [NH, Dv]\n"
                                 "  input kh: [NH, Dk]\n"
                                 "  input vh: [NH, Dv]\n";

#define WINDOW "state w: [H, K] = 0"
#define GLA_HDV "state S: [NH, Dv, Dk] = 0"

static const Fool FOOLS[] = {
    /* The coefficient reads the state: never a scan. */
    {"gate reads the state", "state h: [H] = 0", "h' = sigmoid(h) * h + x", "h", REC_NONLINEAR, ANY,
     ANY, 0},
    {"square", "state h: [H] = 0", "h' = h * h", "h", REC_NONLINEAR, ANY, ANY, 0},
    {"coefficient through a reduction", "state h: [H] = 0", "h' = sum(h) * h + x", "h",
     REC_NONLINEAR, ANY, ANY, 0},
    {"division by the state", "state h: [H] = 0", "h' = x / h", "h", REC_NONLINEAR, ANY, ANY, 0},
    /* One linear diagonal update, spelled in several ways. */
    {"gate times a sum", "state h: [H] = 0", "h' = a * (h + x)", "h", REC_LIN_DIAG, REC_GATE_FULL,
     ANY, 0},
    {"operands swapped", "state h: [H] = 0", "h' = x + h * a", "h", REC_LIN_DIAG, REC_GATE_FULL,
     ANY, 0},
    {"subtraction", "state h: [H] = 0", "h' = x - (-a) * h", "h", REC_LIN_DIAG, REC_GATE_FULL, ANY,
     0},
    {"negation", "state h: [H] = 0", "h' = -(-a * h - x)", "h", REC_LIN_DIAG, REC_GATE_FULL, ANY,
     0},
    {"subtracted state: the coefficient is -1, not 1", "state h: [H] = 0", "h' = x - h", "h",
     REC_LIN_DIAG, REC_GATE_SCALAR, ANY, 0},
    {"cumulative sum", "state h: [H] = 0", "h' = h + x", "h", REC_LIN_DIAG, REC_GATE_NONE, ANY, 0},
    /* Shift registers stay shifts, whatever the axis and direction. */
    {"window along the last axis", WINDOW, "w' = concat(w[:, 1:], x[:, None], axis=1)", "w",
     REC_SHIFT, ANY, 1, 0},
    {"window along the first axis", "state w: [K, H] = 0", "w' = concat(w[1:], x[None], axis=0)",
     "w", REC_SHIFT, ANY, 0, 0},
    {"window moving the other way", WINDOW, "w' = concat(x[:, None], w[:, 0:K-1], axis=1)", "w",
     REC_SHIFT, ANY, 1, 0},
    {"two places a step", "state w: [K] = 0", "w' = concat(w[2:], x[0:2])", "w", REC_SHIFT, ANY, 0,
     0},
    /* Data movement whose elements never leave, or with arithmetic: no shift. */
    {"cyclic rotation", WINDOW, "w' = concat(w[:, 1:], w[:, 0:1], axis=1)", "w",
     REC_LIN_SMALL_DENSE, ANY, 1, 0},
    {"last element kept", WINDOW, "w' = concat(w[:, 1:], w[:, K-1:K], axis=1)", "w",
     REC_LIN_SMALL_DENSE, ANY, 1, 0},
    {"scaled window", WINDOW, "w' = concat(0.5 * w[:, 1:], x[:, None], axis=1)", "w",
     REC_LIN_SMALL_DENSE, ANY, 1, 0},
    {"window plus a value", WINDOW, "w' = concat(w[:, 1:], x[:, None], axis=1) + 1", "w",
     REC_LIN_SMALL_DENSE, ANY, 1, 0},
    {"2x2 rotation per channel", "state s: [2, N] = 0",
     "s' = concat(c * s[0:1] - sn * s[1:2], sn * s[0:1] + c * s[1:2], axis=0)", "s",
     REC_LIN_SMALL_DENSE, ANY, 0, 0},
    {"constant 2x2 rotation", "state s: [2, N] = 0",
     "s' = concat(cos(theta) * s[0:1] - sin(theta) * s[1:2], "
     "sin(theta) * s[0:1] + cos(theta) * s[1:2], axis=0)",
     "s", REC_LIN_SMALL_DENSE, ANY, 0, 0},
    {"accumulator", "state s: [2, N] = 0", "s' = concat(c[None], s[0:1] + s[1:2], axis=0)", "s",
     REC_LIN_SMALL_DENSE, ANY, 0, 0},
    {"accumulator of one channel", "state s: [2] = 0", "s' = concat(x[0:1], s[0:1] + s[1:2])", "s",
     REC_LIN_DENSE, ANY, ANY, 0},
    /* Matrix states in any layout and operand order. */
    {"GLA in FLA's layout [H, K, V]", "state S: [NH, Dk, Dv] = 0",
     "S' = S * exp(gk)[:, :, None] + kh[:, :, None] * vh[:, None, :]", "S", REC_LIN_MATRIX,
     REC_GATE_DIAG, 1, 0},
    {"GLA in the stdlib layout [H, V, K]", GLA_HDV,
     "S' = exp(gk)[:, None, :] * S + vh[:, :, None] * kh[:, None, :]", "S", REC_LIN_MATRIX,
     REC_GATE_DIAG, 2, 0},
    {"GLA with the write first", GLA_HDV,
     "S' = vh[:, :, None] * kh[:, None, :] + S * exp(gk)[:, None, :]", "S", REC_LIN_MATRIX,
     REC_GATE_DIAG, 2, 0},
    {"linear attention with outer", "state S: [Dv, Dk] = 0", "S' = S + outer(v, k)", "S",
     REC_LIN_MATRIX, REC_GATE_NONE, ANY, 0},
    {"linear attention with broadcasts", "state S: [Dv, Dk] = 0",
     "S' = S + v[:, None] * k[None, :]", "S", REC_LIN_MATRIX, REC_GATE_NONE, ANY, 0},
    {"linear attention, state transposed", "state S: [Dk, Dv] = 0", "S' = S + outer(k, v)", "S",
     REC_LIN_MATRIX, REC_GATE_NONE, ANY, 0},
    {"column times row", "state S: [Dv, Dk] = 0", "S' = S + v[:, None] @ k[None, :]", "S",
     REC_LIN_MATRIX, REC_GATE_NONE, ANY, 0},
    {"key gate, state transposed", "state S: [Dk, Dv] = 0",
     "S' = exp(k)[:, None] * S + outer(k, v)", "S", REC_LIN_MATRIX, REC_GATE_DIAG, 0, 0},
    /* Not matrix states: a full gate, a vector per head, a write of full rank. */
    {"gate along values and keys", GLA_HDV,
     "S' = exp(gv)[:, :, None] * exp(gk)[:, None, :] * S + vh[:, :, None] * kh[:, None, :]", "S",
     REC_LIN_DIAG, REC_GATE_FULL, ANY, 0},
    {"vector per head", "state n: [NH, Dk] = 0", "n' = exp(gk[:, 0])[:, None] * n + kh", "n",
     REC_LIN_DIAG, REC_GATE_SCALAR, ANY, 0},
    {"write of full rank", GLA_HDV, "S' = S + exp(gv[:, :, None] * gk[:, None, :])", "S",
     REC_LIN_DIAG, REC_GATE_NONE, ANY, 0},
    /* Contractions with S-free matrices. */
    {"matrix product", "state h: [H] = 0", "h' = W @ h + x", "h", REC_LIN_DENSE, ANY, ANY, 0},
    {"matrix along one axis", "state S: [H, N] = 0", "S' = W @ S", "S", REC_LIN_SMALL_DENSE, ANY, 0,
     0},
    {"delta rule, state transposed", "state S: [Dk, Dv] = 0", "S' = S - outer(k, k @ S - v)", "S",
     REC_LIN_DPLR, REC_GATE_NONE, 0, 0},
    /* Coupled linear states. */
    {"coupled elementwise", "state p: [H] = 0\n  state q: [H] = 0",
     "p' = a * p + x * q\n    q' = 2 * p + a * q", "p", REC_LIN_BLOCK_DIAG, ANY, ANY, 2},
    {"three coupled elementwise", "state p: [H] = 0\n  state q: [H] = 0\n  state r: [H] = 0",
     "p' = a * q + x\n    q' = r\n    r' = p * x", "r", REC_LIN_BLOCK_DIAG, ANY, ANY, 3},
    {"coupled through a matrix product", "state p: [H] = 0\n  state q: [H] = 0",
     "p' = a * p + W @ q\n    q' = p + x", "q", REC_LIN_DENSE, ANY, ANY, 0},
    {"coupled states of two shapes", "state p: [H] = 0\n  state q: [] = 0",
     "p' = p + q\n    q' = sum(p)", "p", REC_LIN_DENSE, ANY, ANY, 0},
    /* (max, +) only element by element, and never mixed with (+, x). */
    {"running max", "state m: [H] = 0", "m' = max(m + x, a)", "m", REC_MAXPLUS, ANY, ANY, 0},
    {"running max, shifted", "state m: [H] = 0", "m' = max(concat(m[1:], x[0:1]) + x, a)", "m",
     REC_NONLINEAR, ANY, ANY, 0},
    {"(+, x) coupled with (max, +)", "state p: [H] = 0\n  state q: [H] = 0",
     "p' = a * p + q\n    q' = max(q + x, p)", "p", REC_NONLINEAR, ANY, ANY, 0},
};

static void check_fool(const Fool *t) {
  char text[4096];
  snprintf(text, sizeof text,
           "cell Fool(H, K, N, NH, Dk, Dv) {\n%s  %s\n  step {\n    %s\n  }\n}\n", FOOL_DECLS,
           t->states, t->step);
  Compiled c;
  compile_and_classify(&c, "fool.seq", text);
  const RecState *rs = find_state(&c, "Fool", t->state);
  if (rs->cls != t->cls)
    fail_msg("%s: %s' = ... is %s, expected %s (%s)", t->what, t->state,
             classify_class_name(rs->cls), classify_class_name(t->cls), rs->reason);
  if (t->gate != ANY && (int)rs->gate != t->gate)
    fail_msg("%s: gate %d, expected %d (%s)", t->what, rs->gate, t->gate, rs->reason);
  if (t->axis != ANY && rs->axis != t->axis)
    fail_msg("%s: axis %d, expected %d (%s)", t->what, rs->axis, t->axis, rs->reason);
  if (t->cls == REC_LIN_BLOCK_DIAG) assert_int_equal(rs->block, t->block);
  if (t->cls == REC_NONLINEAR) assert_int_equal(rs->strategy, REC_STRAT_NEWTON);
  assert_non_null(rs->reason);
  arena_destroy(c.arena);
}

static void test_fooling_cells(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof FOOLS / sizeof *FOOLS; i++) check_fool(&FOOLS[i]);
}

/* The report says which axis a matrix state's gate varies along, relative
 * to the state's own axes. */
static void test_gate_axis_words(void **state) {
  (void)state;
  Compiled c;
  compile_and_classify(&c, "stdlib/gla.seq", NULL);
  const RecState *s = find_state(&c, "GLA", "S");
  assert_int_equal(s->heads, 1u);
  assert_non_null(strstr(s->reason, "diagonal gate per head along axis 2 (Dk)"));
  arena_destroy(c.arena);
}

/* ---- Time-invariant systems: the convolution form -------------------------- */

/* Cells built to be called time-invariant or not (docs/algorithms.md §9):
 * the state's update and every output that reads it linear, with
 * time-invariant coefficients, in the state and the inputs. `channels`: the
 * axes of independent channels expected where it is (0: one system). */
typedef struct LtiCase {
  const char *what;
  const char *decls; /* states and outputs */
  const char *step;
  int lti;
  unsigned channels;
} LtiCase;

static const char LTI_DECLS[] = "  param a: [H]\n"
                                "  param b: [H]\n"
                                "  param c: [H]\n"
                                "  param d: [H]\n"
                                "  param W: [N, N]\n"
                                "  param U: [N, H]\n"
                                "  param V: [H, N]\n"
                                "  param M: [H, H]\n"
                                "  param A2: [H, N]\n"
                                "  input x: [H]\n"
                                "  input z: [H]\n";

#define LTI_H "state h: [H] = 0\n  output y: [H]"
#define LTI_HN "state s: [H, N] = 0\n  output y: [H]"

static const LtiCase LTI_CASES[] = {
    /* Time-invariant, one input and one output per channel. */
    {"real diagonal per channel", LTI_H, "h' = a * h + b * x\n    y = c * h' + d * x", 1, 1u},
    {"readout of the state entering the step", LTI_H, "h' = a * h + b * x\n    y = c * h + d * x",
     1, 1u},
    {"cumulative sum", LTI_H, "h' = h + x\n    y = h'", 1, 1u},
    {"N states per channel", LTI_HN,
     "s' = exp(-A2) * s + A2 * x[:, None]\n    y = sum(V * s', axis=1) + d * x", 1, 1u},
    {"channels along the last axis", "state s: [N, H] = 0\n  output y: [H]",
     "s' = transpose(A2) * s + x[None, :]\n    y = sum(s', axis=0)", 1, 2u},
    {"a feedthrough that mixes channels", LTI_H, "h' = a * h + x\n    y = c * h' + M @ x", 1, 1u},
    {"input through a scaled difference", LTI_H, "h' = a * h + (x - z) / 2\n    y = -h'", 1, 1u},
    /* Time-invariant, channels mixed: one system. */
    {"dense transition", "state s: [N] = 0\n  output y: [H]", "s' = W @ s + U @ x\n    y = V @ s'",
     1, 0u},
    {"transition mixes channels", LTI_H, "h' = M @ h + x\n    y = h'", 1, 0u},
    {"input mixes channels", LTI_H, "h' = a * h + M @ x\n    y = h'", 1, 0u},
    {"readout mixes channels", LTI_H, "h' = a * h + x\n    y = M @ h'", 1, 0u},
    {"readout rotates channels", LTI_H, "h' = a * h + x\n    y = concat(h'[1:], h'[0:1])", 1, 0u},
    /* Not time-invariant: selective, nonlinear or affine somewhere. */
    {"gate reads an input", LTI_H, "h' = sigmoid(z) * h + x\n    y = h'", 0, 0u},
    {"gate is a product with an input", LTI_H, "h' = (a * z) * h + b * x\n    y = h'", 0, 0u},
    {"input squared", LTI_H, "h' = a * h + x * x\n    y = h'", 0, 0u},
    {"input through exp", LTI_H, "h' = a * h + exp(x)\n    y = h'", 0, 0u},
    {"input with an offset", LTI_H, "h' = a * h + b * x + c\n    y = h'", 0, 0u},
    {"readout through tanh", LTI_H, "h' = a * h + x\n    y = tanh(c * h')", 0, 0u},
    {"readout gated by an input", LTI_H, "h' = a * h + x\n    y = c * h' * z", 0, 0u},
    {"readout with an offset", LTI_H, "h' = a * h + x\n    y = c * h' + d", 0, 0u},
    {"readout clipped", LTI_H, "h' = a * h + x\n    y = max(h', 0)", 0, 0u},
    {"no input", LTI_H, "h' = a * h\n    y = h'", 0, 0u},
    {"no output reads it", LTI_H, "h' = a * h + x\n    y = c * x", 0, 0u},
    {"read by another state", "state h: [H] = 0\n  state g: [H] = 0\n  output y: [H]",
     "h' = a * h + x\n    g' = g + h'\n    y = g'", 0, 0u},
    {"coefficient reads a counter", "state h: [H] = 0\n  state p: [] = 0\n  output y: [H]",
     "p' = p + 1\n    h' = cos(p) * h + x\n    y = h'", 0, 0u},
    {"a shift register is a convolution already", "state w: [H, N] = 0\n  output y: [H]",
     "w' = concat(w[:, 1:], x[:, None], axis=1)\n    y = sum(A2 * w', axis=1)", 0, 0u},
};

static void check_lti_case(const LtiCase *t, int rewritten) {
  char text[4096];
  snprintf(text, sizeof text, "cell Lti(H, N) {\n%s  %s\n  step {\n    %s\n  }\n}\n", LTI_DECLS,
           t->decls, t->step);
  Compiled c;
  compile_and_classify(&c, "lti.seq", text);
  if (rewritten) rewrite_and_classify(&c);
  const RecFunc *rf = &c.r->funcs[c.r->nfuncs - 1];
  const RecState *rs = &rf->states[0];
  if (rs->lti != t->lti || (t->lti && rs->lti_channels != t->channels))
    fail_msg("%s%s: lti %d channels %#x, expected %d %#x (%s)", t->what,
             rewritten ? " (rewritten)" : "", rs->lti, rs->lti_channels, t->lti, t->channels,
             rs->reason);
  for (int k = 1; k < rf->nstates; k++) assert_int_equal(rf->states[k].lti, 0);
  char *rep = report(&c);
  assert_int_equal(strstr(rep, "convolution (reported, not built)") != NULL, t->lti);
  free(rep);
  arena_destroy(c.arena);
}

static void test_lti_cells(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof LTI_CASES / sizeof *LTI_CASES; i++) {
    check_lti_case(&LTI_CASES[i], 0);
    check_lti_case(&LTI_CASES[i], 1);
  }
}

/* What the inputs and outputs of a time-invariant state are, in the report. */
static void test_lti_words(void **state) {
  (void)state;
  Compiled c;
  compile_and_classify(&c, "stdlib/s4d.seq", NULL);
  const RecState *s = find_state(&c, "S4D", "s");
  assert_int_equal(s->nlti_inputs, 1);
  assert_int_equal(s->nlti_outputs, 1);
  assert_string_equal(s->lti_reason,
                      "time-invariant from x to y; K_l = C A^l B per channel along axis 0 (H)");
  arena_destroy(c.arena);
  compile_and_classify(&c, "stdlib/s5.seq", NULL);
  assert_non_null(strstr(find_state(&c, "S5", "s")->lti_reason, "one multi-input multi-output"));
  arena_destroy(c.arena);
}

/* The forms of cell `cell` of stdlib/NAME.seq at dims (in the cell's order)
 * on a fixed machine (1.6e11 flop/s, 15 GB/s to memory, 250 GB/s from L2, 16
 * lanes, one thread, B = 8), as seqc --report --dims prints them; *sf is
 * the first state's. */
static char *forms(Compiled *c, const char *path, const char *cell, const int64_t *dims,
                   StateForm *sf) {
  compile_and_classify(c, path, NULL);
  rewrite_and_classify(c);
  const IrFunc *root = NULL;
  int fi = -1;
  for (int i = 0; i < c->m->funcs.n; i++)
    if (strcmp(c->m->funcs.v[i]->name, cell) == 0) root = c->m->funcs.v[i], fi = i;
  assert_non_null(root);
  CostMachine mc = {1.6e11, 1.5e10, 2.5e11, 16, 1, 8};
  StrategyPlan *plan = NULL;
  assert_int_equal(strategy_choose(c->arena, c->m, root, dims, c->r, NULL, &mc, &plan, &c->de), 0);
  *sf = plan->funcs[fi][0];
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  assert_non_null(out);
  strategy_print(out, c->m, plan);
  fclose(out);
  return buf;
}

/* The convolution's cost, from docs/algorithms.md §9 by hand: S4D at H = 256,
 * N = 64 (complex), T = 4096 (FFTs of n = 8192 points, 5 n log2 n = 532480
 * flops), B = 8; one input and one output per channel; a step of the
 * transition dA * s + dB * x costs 8 flops per complex state (a complex
 * product and a complex sum, 4 each), 512 per channel.
 *   per example: 256 (2 * 532480 + 8 * 8192) / 4096             = 70656
 *   per call:    256 (532480 + 4096 (512 + 8 * 64)) / (8 * 4096) = 36928
 * Bytes: 8 n 256 (1 + 2) / T = 12288. Seconds: flops at 0.15 of the peak. */
static void test_convolution_cost(void **state) {
  (void)state;
  Compiled c;
  StateForm sf;
  const int64_t dims[] = {256, 64};
  char *text = forms(&c, "stdlib/s4d.seq", "S4D", dims, &sf);
  assert_true(sf.conv);
  assert_true(sf.conv_cost.flops == 70656.0 + 36928.0);
  assert_true(sf.conv_cost.bytes == 12288.0);
  assert_true(fabs(sf.conv_cost.seconds - 107584.0 / (0.15 * 8e10)) < 1e-12);
  assert_true(sf.conv_cost.seconds < sf.cost[FORM_SCAN].seconds);
  tu_check_golden(text, "tests/golden/classify/s4d.forms");
  free(text);
  arena_destroy(c.arena);

  /* S5 at H = 256, P = 64: one system, K_l a 256 x 256 matrix per lag; the
   * channel mixing dwarfs the scan. */
  text = forms(&c, "stdlib/s5.seq", "S5", dims, &sf);
  assert_true(sf.conv);
  assert_true(sf.conv_cost.seconds > 100 * sf.cost[FORM_SCAN].seconds);
  tu_check_golden(text, "tests/golden/classify/s5.forms");
  free(text);
  arena_destroy(c.arena);

  /* LSSL: a dense N x N transition per channel, N^2 per lag. */
  text = forms(&c, "stdlib/lssl.seq", "LSSL", dims, &sf);
  assert_true(sf.conv);
  tu_check_golden(text, "tests/golden/classify/lssl.forms");
  free(text);
  arena_destroy(c.arena);
}

/* Selective cells are costed without a convolution line. */
static void test_no_convolution(void **state) {
  (void)state;
  Compiled c;
  StateForm sf;
  const int64_t mamba[] = {64, 128, 16, 4, 8}, gla[] = {64, 2, 16, 16, 4};
  char *text = forms(&c, "stdlib/mamba.seq", "Mamba", mamba, &sf);
  assert_false(sf.conv);
  assert_null(strstr(text, "convolution"));
  free(text);
  arena_destroy(c.arena);
  text = forms(&c, "stdlib/gla.seq", "GLA", gla, &sf);
  assert_false(sf.conv);
  assert_null(strstr(text, "convolution"));
  free(text);
  arena_destroy(c.arena);
}

/* ---- Malformed IR and allocation failure --------------------------------- */

static void test_malformed_ir(void **state) {
  (void)state;
  Arena *a = arena_create();
  DiagEngine de;
  diag_init(&de, a, NULL);
  IrModule *m = ir_module_new(a);
  IrFunc *f = ir_func_new(m, "Bad", IR_FN_CELL, (SrcLoc){0});
  assert_non_null(f);
  IrState s = {"h", ir_scalar(IR_REAL), {0}, IR_NONE, 42, 0};
  assert_int_equal(vec_push(a, &f->states, s), 0);
  ClassifyResult *r = NULL;
  assert_int_equal(classify_module(a, m, &r, &de), -1);
  assert_null(r);
  assert_true(de.nerrors > 0);
  assert_non_null(strstr(de.diags.v[0].message, "internal error in classify"));

  /* A STATE node naming a state the function does not have. */
  IrNode proto;
  memset(&proto, 0, sizeof proto);
  proto.op = IR_STATE;
  proto.type = ir_scalar(IR_REAL);
  proto.index = 7;
  IrRef st = ir_emit(f, a, &proto, 0, NULL);
  assert_true(st >= 0);
  f->states.v[0].next = st;
  RecFunc rf;
  assert_int_equal(classify_func(a, f, &rf, &de), -1);
  arena_destroy(a);
}

static void test_allocation_failure(void **state) {
  (void)state;
  Compiled c;
  compile_and_classify(&c, "stdlib/mlstm.seq", NULL);
  int succeeded = 0;
  for (long n = 0; n < 2000 && !succeeded; n++) {
    Arena *a = arena_create();
    assert_non_null(a);
    DiagEngine de;
    diag_init(&de, a, NULL);
    ClassifyResult *r = NULL;
    seq_alloc_fail_after(n);
    int rc = classify_module(a, c.m, &r, &de);
    seq_alloc_fail_after(-1);
    if (rc == 0) {
      assert_non_null(r);
      succeeded = 1;
    } else {
      assert_int_equal(rc, -1);
      assert_null(r);
    }
    arena_destroy(a);
  }
  assert_true(succeeded);
  arena_destroy(c.arena);
}

static int enter_source_dir(void **state) {
  (void)state;
  return chdir(SEQ_SOURCE_DIR);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stdlib_classes),     cmocka_unit_test(test_example_classes),
      cmocka_unit_test(test_lstm_reasons),       cmocka_unit_test(test_golden_reports),
      cmocka_unit_test(test_synthetic),          cmocka_unit_test(test_malformed_ir),
      cmocka_unit_test(test_allocation_failure), cmocka_unit_test(test_fooling_cells),
      cmocka_unit_test(test_gate_axis_words),    cmocka_unit_test(test_lti_cells),
      cmocka_unit_test(test_lti_words),          cmocka_unit_test(test_convolution_cost),
      cmocka_unit_test(test_no_convolution),
  };
  return cmocka_run_group_tests(tests, enter_source_dir, NULL);
}
