/* test_codegen_forms.c - every std cell and example under every form its
 * classes admit (sequential, scan, chunked), compiled by the CPU backend (JIT), equals
 * the interpreter (sequential, scan, chunked): T in {1, 2, 3, 7, 63, 64, 65, 1000, 4097}, B in {1,
 * 5}, with and without lengths and initial states.
 *
 * Tolerance (formcheck.h). A parallel form adds and multiplies in another
 * order than the step loop, so its float32 result differs from the float32
 * interpreter's by rounding, growing with T where the recurrence
 * accumulates: on top of the shared bound (1e-5 plus four times the float32
 * interpreter's own error of the float64 one), 1e-4 relative to the output's
 * scale for T >= 1000 (the bound the sequential backend has always met,
 * test_codegen.c). A wrong form (a lost term, a wrong step) is off by the
 * size of a term, orders of magnitude above that.
 *
 * The cases are this test's own, not formcheck.h's FC_CASES: they hold
 * Newton layers (which the GPU refuses), other wide cases, fewer std cells,
 * and come in another order (which the random inputs follow). */
#include "formcheck.h"

#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cpu.h"
#include "bench/std_cells.h"

static const FcCase CASES[] = {
    {"examples/lstm.seq", "I=3,H=4"},
    {"examples/mingru.seq", "I=3,H=4"},
    {"examples/lru.seq", "H=3,N=4"},
    {"examples/s4d.seq", "H=3,N=4"},
    {"examples/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2"},
    {"examples/linear_attention.seq", "I=3,Dk=4,Dv=5"},
    {"examples/mlstm.seq", "I=3,D=4"},
    {"examples/bigru.seq", "I=3,H=4"},
    {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2"},
    {"stdlib/mingru.seq", "I=3,H=4"},
    {"stdlib/minlstm.seq", "I=3,H=4"},
    {"stdlib/lru.seq", "H=3,N=4"},
    {"stdlib/s4d.seq", "H=3,N=4"},
    /* Rows in vector lanes (sched/scan.c): rows a multiple of 16, a last
     * axis odd (one element at a time), even (two: lanes_ops below) and a
     * multiple of four (four, once and twice over the axis). */
    {"stdlib/s4d.seq", "H=32,N=3"},
    {"stdlib/mamba_ssm.seq", "d_inner=16,d_state=4,dt_rank=2"},
    {"stdlib/s4d.seq", "H=16,N=8"},
    /* The element code's functions on vectors, a mean, a (max, +) scan. */
    {"tests/data/models/lanes_ops.seq", "I=3,R=16,N=2"},
    {"stdlib/s5.seq", "H=3,P=4"},
    {"stdlib/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2"},
    {"stdlib/mamba.seq", "d_model=4,d_inner=8,d_state=3,d_conv=4,dt_rank=2"},
    {"stdlib/mamba2.seq", "d_model=4,ngroups=2,hpg=2,headdim=2,d_state=3,d_conv=4"},
    {"stdlib/linear_attention.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/retnet.seq", "I=3,NH=2,P=2,Dv=5"},
    {"stdlib/gla.seq", "I=3,NH=2,Dk=4,Dv=5,R=2"},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4"},
    {"stdlib/gam.seq", "D=3,Mem=4,K=3"},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3"},
    {"stdlib/gru.seq", "I=3,H=4"},
    {"stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5"},
    /* Three factors from the step's loop: the WY form over 3 sub-steps per token. */
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5,n_h=3"},
    {"tests/data/models/reversed_forms.seq", "I=3,H=4,NH=2,D=4"},
    /* Contexts (one value per sequence): an attention decoder over one, and
     * a scan and a chunked state whose decays are computed from them. */
    {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3"},
    {"tests/data/models/context_forms.seq", "I=3,H=4,S=5,NH=2,D=4"},
    {"tests/data/models/context_model.seq", "I=3,H=4,S=5"},
    /* An encoder run over a context's positions inside the model (S = 5
     * positions, T up to 4097 target steps), its outputs the decoder's memory. */
    {"tests/data/models/seq2seq.seq", "I_src=3,I=2,H=4,S=5"},
    {"examples/pointer_network.seq", "I=3,H=4,S=5,A=3"},
    {"stdlib/paragru.seq", "I=3,H=4"},
    {"stdlib/paralstm.seq", "I=3,H=4"},
    {"tests/data/models/newton_layers.seq", "I=3,H=4"},
    {"tests/data/models/attention.seq", "I=3,NH=2,D=4"},
    {"tests/data/models/compare.seq", "I=3,H=4"},
    {"tests/data/models/batched_matmul.seq", "I=3,NH=2,D=4"},
    {"tests/data/models/head_split.seq", "d=8,NH=2"},
    {"tests/data/models/eye.seq", "I=3,Dk=4,Dv=5"},
    {"tests/data/models/dplr.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2"},
    {"tests/data/models/plstm_heads.seq", "I=3,NH=2,J=3,Dk=4,Dv=5"},
    {"stdlib/titans.seq", "I=3,D=4,Dh=5"},
    {"tests/data/models/order_nesting.seq", "N=3"},
    {"stdlib/plstm2d.seq", "I=3,Dk=4,Dv=5,Y=3"},
    {"stdlib/lightnet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/lightnet2d.seq", "I=3,NH=2,Dk=4,Dv=5,Y=3"},
    {"tests/data/models/grid.seq", "D=4"},
    /* Wide enough that a fused scan splits: a one-row state into pieces
     * (the last one short), a many-row state into blocks (likewise). */
    {"stdlib/mingru.seq", "I=3,H=200"},
    {"stdlib/s4d.seq", "H=150,N=16"},
    /* A narrow summed last axis: the scan runs transposed (sched/scan.c),
     * in two blocks of rows, the second short of a vector multiple. */
    {"stdlib/mamba_ssm.seq", "d_inner=150,d_state=16,dt_rank=2"},
    /* Dense and low-rank continuous-time transitions, discretized once per
     * call: LSSL bilinear (inv) and zero-order hold (expm), S4's Woodbury step. */
    {"stdlib/lssl.seq", "H=3,N=4"},
    {"stdlib/lssl_zoh.seq", "H=3,N=4"},
    {"stdlib/s4.seq", "H=3,N=4"},
    /* dA @ s read by columns (passes/rewrite.c), 16 outputs in vector lanes:
     * over all the batch's rows at once (dA 160 KiB; the update made in that
     * sum's stores), and alone per row with a scalar tail (N = 24); readouts
     * of 16 rows at a time and the rest one by one (codegen/rows.c). At
     * N = 32 each row of the sum is two vectors and the update, which writes
     * the state the sum reads, runs after it. */
    {"stdlib/lssl.seq", "H=40,N=16"},
    {"stdlib/lssl.seq", "H=16,N=32"},
    {"stdlib/lssl_zoh.seq", "H=5,N=24"},
    {"tests/data/models/row_sums.seq", "R=40"},
};

/* Each form as the schedule chunks time, and the parallel forms again with
 * the shortest time chunks (a budget of one float: 16 steps, 64 with a
 * chunked state), so that sequences cross many chunk boundaries; the
 * chunked kernels also with chunks of 5 tokens, which do not divide them;
 * Newton solves also in windows of 5 steps (runtime/cpu_newton.c), which
 * divide neither the sequences nor their lengths, and in time chunks of 16
 * steps (at least the window) holding windows of 5; and with dense
 * Jacobians formed whole (exact Newton) where they are dense. */
static const struct {
  const char *strategy;
  int64_t chunk_budget, kernel_chunk, newton_window;
  int newton_dense;
} FORMS[] = {{"sequential", 0, 0, 0, 0}, {"scan", 0, 0, 0, 0},    {"chunked", 0, 0, 0, 0},
             {"scan", 1, 0, 0, 0},       {"chunked", 1, 0, 0, 0}, {"chunked", 1, 5, 0, 0},
             {"newton", 0, 0, 0, 0},     {"newton", 0, 0, 5, 0},  {"newton", 1, 0, 5, 0},
             {"newton", 0, 0, 0, 1}};
enum { NFORMS = sizeof FORMS / sizeof FORMS[0] };
static const int64_t TS[] = {1, 2, 3, 7, 63, 64, 65, 1000, 4097};

/* Compiles c under --strategy=form; 1 if no state of it has that form
 * (nothing to test), -1 on any other failure. */
static int compile(FcCompiled *cm, const FcCase *c, const char *form, int64_t chunk_budget,
                   int64_t kernel_chunk, int64_t newton_window, int newton_dense) {
  PipeOptions po;
  fc_begin(cm, c, form, &po);
  ((StrategyRequest *)po.strategy)->newton.window = newton_window;
  ((StrategyRequest *)po.strategy)->newton.dense = newton_dense;
  po.chunk_budget = chunk_budget;
  po.kernel_chunk = kernel_chunk;
  po.cg = (CgOptions){2, NULL, NULL};
  if (pipeline_run(&cm->pipe, &po) || fc_random_weights(cm)) return -1;
  po.goal = PIPE_JIT;
  if (pipeline_run(&cm->pipe, &po)) return fc_said(cm, "has that form") ? 1 : -1;
  const AbiSignature *sig = &cm->pipe.sched->sig;
  cm->forward = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      cm->pipe.jit, arena_printf(cm->arena, "%s_forward", sig->symbol), &cm->de);
  if (!cm->forward) return -1;
  return drv_weights_from_binding(sig, &cm->pipe.bind, &cm->w, &cm->de);
}

static void run_case(const FcCase *c) {
  FcCompiled cm[NFORMS];
  int have[NFORMS];
  for (int f = 0; f < NFORMS; f++) {
    have[f] = compile(&cm[f], c, FORMS[f].strategy, FORMS[f].chunk_budget, FORMS[f].kernel_chunk,
                      FORMS[f].newton_window, FORMS[f].newton_dense);
    if (have[f] < 0) {
      fc_print_diags(&cm[f]);
      fail_msg("%s does not compile under --strategy=%s", c->file, FORMS[f].strategy);
    }
    have[f] = have[f] == 0;
    /* FORMS_VERBOSE=1: which forms each case runs. */
    if (getenv("FORMS_VERBOSE"))
      fprintf(stderr, "%s --strategy=%s, chunk budget %lld, --chunk %lld: %s\n", c->file,
              FORMS[f].strategy, (long long)FORMS[f].chunk_budget, (long long)FORMS[f].kernel_chunk,
              have[f] ? "runs" : "no such form");
  }
  for (size_t ti = 0; ti < sizeof TS / sizeof TS[0]; ti++)
    for (int64_t B = 1; B <= 5; B += 4)
      for (int variant = 0; variant < 2; variant++) {
        int64_t T = TS[ti];
        /* The longest sequences once, with lengths and states. */
        if (T > 1000 && (B > 1 || !variant)) continue;
        FcBatch bt;
        fc_batch_make(&bt, &cm[0], B, T, variant);
        /* The variant with lengths and states runs on two threads: one
         * example's parallel form splits over the pool, several examples
         * split the batch. */
        rt_cpu_set_num_threads(variant ? 2 : 1);
        for (int f = 0; f < NFORMS; f++) {
          if (!have[f]) continue;
          char what[512];
          snprintf(what, sizeof what,
                   "%s --strategy=%s (chunk budget %lld, --chunk %lld, --newton-window %lld%s)",
                   c->file, FORMS[f].strategy, (long long)FORMS[f].chunk_budget,
                   (long long)FORMS[f].kernel_chunk, (long long)FORMS[f].newton_window,
                   FORMS[f].newton_dense ? ", dense" : "");
          fc_batch_check(&bt, &cm[f], what, T >= 1000 ? 1e-4 : 0);
        }
        fc_batch_free(&bt);
      }
  for (int f = 0; f < NFORMS; f++) fc_release(&cm[f]);
}

static void test_forms_equal_interpreter(void **st) {
  (void)st;
  /* FORMS_ONLY=TEXT: only the cases whose file contains TEXT. */
  const char *only = getenv("FORMS_ONLY");
  for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++)
    if (!only || strstr(CASES[k].file, only)) run_case(&CASES[k]);
}

/* Splits of one example's work across threads that only run when threads
 * outnumber the examples' items, checked on 8 threads:
 *   - the two-level scan (codegen/scan.c): a narrow real scan splits each
 *     time chunk's steps into parts; B = 1 runs 4 parts per chunk of these
 *     small states (5 with the extra one), B = 2 and 3 run 2 per example
 *     (with lengths: some parts empty, some examples done before the
 *     chunk); a diagonal scan, one run transposed (Mamba's, 20 rows), one
 *     with its rows in vector lanes (32 rows),
 *     (max, +) (mLSTM's m) and a reversed layer;
 *   - slices of a chunked state's value columns (codegen/chunk.c): V = 40
 *     in two slices, 32 and 8 columns; linear attention, the delta rule with
 *     a gate and two factors, the generalized rule with two readouts, a
 *     small dense transition with two readouts (a slice: 32 or 8 rows of
 *     each of its J blocks);
 *   - a Newton solve's passes (runtime/cpu_newton.c): an example's rows in
 *     pieces of steps, its linear recurrence in pieces of elements (H = 40:
 *     two pieces of 32 and 8 per state), ParaLSTM's 2x2 blocks and
 *     ParaGRU's diagonal; GRU's dense Jacobian (40 columns). */
static void test_thread_splits(void **st) {
  (void)st;
  static const struct {
    FcCase c;
    const char *form;
    int dense;
  } split[] = {
      {{"examples/mingru.seq", "I=3,H=4"}, "scan", 0},
      {{"stdlib/mamba_ssm.seq", "d_inner=20,d_state=16,dt_rank=2"}, "scan", 0},
      {{"stdlib/mamba_ssm.seq", "d_inner=32,d_state=4,dt_rank=2"}, "scan", 0},
      {{"stdlib/mlstm.seq", "I=3,NH=2,DH=4"}, "scan", 0},
      {{"tests/data/models/reversed_forms.seq", "I=3,H=4,NH=2,D=4"}, "scan", 0},
      {{"stdlib/linear_attention.seq", "I=3,NH=2,Dk=4,Dv=40"}, "chunked", 0},
      {{"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=40"}, "chunked", 0},
      {{"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=40"}, "chunked", 0},
      {{"tests/data/models/dplr.seq", "I=3,NH=2,Dk=4,Dv=40"}, "chunked", 0},
      {{"tests/data/models/plstm_heads.seq", "I=3,NH=2,J=3,Dk=4,Dv=40"}, "chunked", 0},
      {{"stdlib/paralstm.seq", "I=3,H=40"}, "newton", 0},
      {{"stdlib/paragru.seq", "I=3,H=40"}, "newton", 0},
      {{"stdlib/gru.seq", "I=3,H=40"}, "newton", 1},
  };
  for (size_t k = 0; k < sizeof split / sizeof split[0]; k++) {
    const FcCase *c = &split[k].c;
    FcCompiled cm;
    if (compile(&cm, c, split[k].form, 0, 0, 0, split[k].dense) != 0) {
      fc_print_diags(&cm);
      fail_msg("%s does not compile under --strategy=%s", c->file, split[k].form);
    }
    const int64_t shapes[][2] = {{1, 4097}, {2, 1000}, {3, 3000}, {1, 6000}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
      for (int variant = 0; variant < 2; variant++) {
        FcBatch bt;
        fc_batch_make(&bt, &cm, shapes[i][0], shapes[i][1], variant);
        rt_cpu_set_num_threads(8);
        char what[512];
        snprintf(what, sizeof what, "%s --strategy=%s on 8 threads", c->file, split[k].form);
        fc_batch_check(&bt, &cm, what, 1e-4);
        fc_batch_free(&bt);
      }
    rt_cpu_set_num_threads(1);
    fc_release(&cm);
  }
}

/* A sum over all the batch's rows at once (SCHED_OP_ACROSS, codegen/rows.c)
 * takes the rows in groups of 8, then 4, then one at a time: batches that
 * use each size, with and without lengths and initial states. */
static void test_across_batches(void **st) {
  (void)st;
  static const FcCase cases[] = {{"stdlib/lssl.seq", "H=40,N=16"},
                                 {"tests/data/models/row_sums.seq", "R=40"}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    FcCompiled cm;
    if (compile(&cm, &cases[k], "sequential", 0, 0, 0, 0) != 0) {
      fc_print_diags(&cm);
      fail_msg("%s does not compile", cases[k].file);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    sched_print(f, cm.pipe.sched);
    fclose(f);
    if (!strstr(text, "folded in, over B rows"))
      fail_msg("%s: no sum over all rows", cases[k].file);
    free(text);
    for (int64_t B = 7; B <= 13; B += 3)
      for (int variant = 0; variant < 2; variant++) {
        FcBatch bt;
        fc_batch_make(&bt, &cm, B, 33, variant);
        char what[512];
        snprintf(what, sizeof what, "%s at B = %lld", cases[k].file, (long long)B);
        fc_batch_check(&bt, &cm, what, 0);
        fc_batch_free(&bt);
      }
    fc_release(&cm);
  }
}

/* Every std cell at the dims of docs/stdlib.md (bench/std_cells.h), under the step loop and
 * auto, compiles to element loops that LLVM vectorizes without run-time
 * overlap checks between buffers ("found.conflict", "diff.check") and the
 * scalar copy of the loop they guard: codegen claims the iterations of each
 * loop it knows independent (codegen/build.c, loop_end_parallel), which is
 * what kept the compile of these cells down. A loop that loses its claim
 * compiles (and runs) as before, only slower to compile: this says so. */
static void test_std_cells_vectorize_without_overlap_checks(void **st) {
  (void)st;
  static const char *const forms[] = {"sequential", "auto"};
  char path[4200];
  snprintf(path, sizeof path, "%s/cell.ll", tu_tmpdir());
  for (int k = 0; k < SEQ_NSTD_CELLS; k++)
    for (int f = 0; f < 2; f++) {
      const FcCase cell = {SEQ_STD_CELLS[k].file, SEQ_STD_CELLS[k].dims};
      FcCompiled cm;
      PipeOptions po;
      fc_begin(&cm, &cell, forms[f], &po);
      po.goal = PIPE_OBJECT;
      po.emit = CG_EMIT_LLVM;
      po.out_path = path;
      po.cg = (CgOptions){2, NULL, NULL};
      if (pipeline_run(&cm.pipe, &po)) {
        fc_print_diags(&cm);
        fail_msg("%s --strategy=%s does not compile", cell.file, forms[f]);
      }
      char *text = tu_read_file(path, NULL);
      assert_non_null(text);
      if (strstr(text, "found.conflict") || strstr(text, "diff.check"))
        fail_msg("%s --strategy=%s: a loop vectorized with run-time overlap checks", cell.file,
                 forms[f]);
      free(text);
      fc_release(&cm);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forms_equal_interpreter),
      cmocka_unit_test(test_thread_splits),
      cmocka_unit_test(test_across_batches),
      cmocka_unit_test(test_std_cells_vectorize_without_overlap_checks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
