/* test_sched.c - the schedule layer (sched/): `seqc --emit=sched` text for a
 * set of models pinned by golden files (tests/golden/sched/NAME.sched; run
 * with SEQ_UPDATE_GOLDEN=1 to rewrite them, then read the diff), and
 * properties every schedule must have whatever the model and form (every
 * --strategy it admits): buffers of views
 * are never placed, every node read by a stage has a buffer or is a view,
 * and stages appear in dependency order. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/pipeline.h"

typedef struct Case {
  const char *file;
  const char *dims;   /* "I=3,H=4" */
  const char *golden; /* NULL: properties only */
  const char *forms;  /* the --strategy values some state of it admits */
} Case;

static const Case CASES[] = {
    {"examples/lstm.seq", "I=3,H=4", "lstm", "sequential"},
    {"examples/gru.seq", "I=3,H=4", "gru", "sequential"},
    {"examples/lru.seq", "H=3,N=4", "lru", "sequential scan"},
    {"examples/s4d.seq", "H=3,N=4", "s4d", "sequential scan"},
    {"examples/bigru.seq", "I=3,H=4", "bigru", "sequential"},
    {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2", "lm", "sequential scan"},
    {"examples/hybrid.seq", "NH=2,DH=3", "hybrid", "sequential scan"},
    /* Contexts: what reads only them runs once per example, before the steps. */
    {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3", "attention_decoder", "sequential"},
    /* A layer run over a context's positions: once per example, before the steps. */
    {"examples/seq2seq.seq", "I_src=3,I=2,H=4,S=5,A=3", "seq2seq", "sequential"},
    {"stdlib/mamba2.seq", "d_model=4,ngroups=2,hpg=2,headdim=2,d_state=3,d_conv=4", NULL,
     "sequential scan chunked"},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4", NULL, "sequential scan chunked"},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3", NULL, "sequential chunked"},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2", NULL, "sequential chunked"},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5", NULL, "sequential chunked"},
    {"stdlib/paralstm.seq", "I=3,H=4", NULL, "sequential newton"},
    {"tests/data/models/newton_layers.seq", "I=3,H=4", NULL, "sequential newton"},
};

typedef struct Built {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
} Built;

static void schedule(Built *b, const Case *c, const char *strategy) {
  b->arena = arena_create();
  srcmgr_init(&b->sm, b->arena);
  diag_init(&b->de, b->arena, stderr);
  pipeline_init(&b->pipe, b->arena, &b->sm, &b->de);
  const char *names[16];
  int64_t values[16];
  int n = 0;
  char *spec = arena_strdup(b->arena, c->dims);
  for (char *tok = strtok(spec, ","); tok && n < 16; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    assert_non_null(eq);
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  PipeOptions po = {0};
  po.path = tu_src(c->file);
  po.ndims = n;
  po.dim_names = names;
  po.dim_values = values;
  StrategyRequest req;
  char err[256];
  if (strategy_parse(b->arena, strategy, &req, err, sizeof err)) fail_msg("%s", err);
  po.strategy = &req;
  po.goal = PIPE_SCHED;
  if (pipeline_run(&b->pipe, &po)) fail_msg("%s does not schedule", c->file);
}

/* Every node a stage computes has a buffer (or is a view), and its operands
 * are computed by an earlier stage, are views, or are constants computed
 * once at the start. */
static void check_order(const SchedInst *in, const SchedOp *ops, int n, char *done) {
  for (int i = 0; i < n; i++) {
    const SchedOp *op = &ops[i];
    /* A sum over all rows makes its body from its sums: after it. */
    if (op->body.n && op->kind != SCHED_OP_ACROSS) check_order(in, op->body.v, op->body.n, done);
    if (op->node < 0 || op->kind == SCHED_OP_PACK) continue;
    /* A rows-in-lanes scan's copies read constants computed before them. */
    if (op->kind == SCHED_OP_LANE_COPIES) {
      for (int j = 0; j < op->group->ncopied; j++)
        if (!done[op->group->copied[j]] && !sched_is_view(in->fn->nodes.v[op->group->copied[j]].op))
          fail_msg("%s: v%d copied for scan v%d before it is computed", in->fn->name,
                   op->group->copied[j], op->node);
      continue;
    }
    /* A fused scan or a chunked state computes all its members at once. */
    if (op->kind == SCHED_OP_SCAN || op->kind == SCHED_OP_LINATTN) {
      for (IrRef r = 0; r < in->fn->nodes.n; r++)
        if (in->values[r].group >= 0 &&
            (op->kind == SCHED_OP_SCAN ? in->values[r].group == op->node
                                       : in->values[r].group == op->last))
          done[r] = 1;
      done[op->node] = 1;
      continue;
    }
    IrRef last = op->kind == SCHED_OP_FUSED ? op->last : op->node;
    for (IrRef r = op->node; r <= last; r++) {
      const SchedValue *v = &in->values[r];
      const IrNode *nd = &in->fn->nodes.v[r];
      if (op->kind == SCHED_OP_FUSED && (v->cls != op->cls || sched_is_view(nd->op) || !v->uses))
        continue;
      if (nd->op != IR_CALL && v->buf < 0)
        fail_msg("%s: v%d (%s) is computed but has no buffer", in->fn->name, r,
                 ir_op_info[nd->op].text);
      for (int j = 0; j < nd->nargs; j++) {
        IrRef a = nd->args[j];
        /* Views are ready when what they view is; walk down to a real value. */
        while (a >= 0 && sched_is_view(in->fn->nodes.v[a].op) && in->fn->nodes.v[a].nargs > 0 &&
               in->fn->nodes.v[a].op != IR_RESULT)
          a = in->fn->nodes.v[a].args[0];
        const IrNode *an = &in->fn->nodes.v[a];
        if (sched_is_view(an->op) && an->op != IR_RESULT) continue;
        if (an->op == IR_RESULT) a = an->args[0];
        /* A product folded into its sum is made there, from its operands. */
        if (in->values[a].folded) {
          for (int q = 0; q < an->nargs; q++) {
            IrRef b = an->args[q];
            while (sched_is_view(in->fn->nodes.v[b].op) && in->fn->nodes.v[b].nargs > 0)
              b = in->fn->nodes.v[b].args[0];
            if (!sched_is_view(in->fn->nodes.v[b].op) && !done[b])
              fail_msg("%s: v%d (folding v%d) reads v%d before a stage computes it", in->fn->name,
                       r, a, b);
          }
          continue;
        }
        if (!done[a] && !(op->kind == SCHED_OP_FUSED && a >= op->node && a < r))
          fail_msg("%s: v%d reads v%d before a stage computes it", in->fn->name, r, a);
      }
      done[r] = 1;
    }
    if (op->body.n && op->kind == SCHED_OP_ACROSS) check_order(in, op->body.v, op->body.n, done);
  }
}

static void test_properties(void **st) {
  (void)st;
  static const char *const strategies[] = {"sequential", "scan", "chunked", "newton"};
  enum { NS = sizeof strategies / sizeof strategies[0] };
  for (size_t k = 0; k < sizeof CASES / sizeof CASES[0] * NS; k++) {
    Built b;
    const Case *c = &CASES[k / NS];
    /* A form no state of the model has is an error, not a schedule. */
    if (!strstr(c->forms, strategies[k % NS])) continue;
    schedule(&b, c, strategies[k % NS]);
    const Schedule *s = b.pipe.sched;
    for (int i = 0; i < s->insts.n; i++) {
      const SchedInst *in = &s->insts.v[i];
      for (int j = 0; j < in->bufs.n; j++)
        if (in->bufs.v[j].kind == SCHED_BUF_NODE &&
            sched_is_view(in->fn->nodes.v[in->bufs.v[j].node].op))
          fail_msg("%s: a view has a buffer", c->file);
      char *done = arena_calloc(b.arena, (size_t)in->fn->nodes.n + 1, 1);
      assert_non_null(done);
      check_order(in, in->ops.v, in->ops.n, done);
      /* Every value something reads is computed by some stage. */
      for (IrRef r = 0; r < in->fn->nodes.n; r++) {
        const IrNode *nd = &in->fn->nodes.v[r];
        if (in->values[r].uses > 0 && !sched_is_view(nd->op) && nd->op != IR_CALL && !done[r] &&
            !in->values[r].folded)
          fail_msg("%s --strategy=%s: v%d (%s) is read but no stage computes it", c->file,
                   strategies[k % NS], r, ir_op_info[nd->op].text);
      }
    }
    pipeline_release(&b.pipe);
    arena_destroy(b.arena);
  }
}

/* Schedules of the parallel forms, pinned the same way. */
static const Case FORM_CASES[] = {
    {"examples/s4d.seq", "H=3,N=4", "s4d_scan", "scan"},
    {"stdlib/mlstm.seq", "I=3,NH=2,DH=4", "mlstm_chunked", "chunked"},
    {"stdlib/mamba.seq", "d_model=4,d_inner=8,d_state=3,d_conv=4,dt_rank=2", "mamba_scan", "scan"},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", "gated_deltanet_chunked", "chunked"},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3", "rwkv7_chunked", "chunked"},
    {"tests/data/models/plstm_heads.seq", "I=3,NH=2,J=3,Dk=4,Dv=5", "plstm_heads_chunked",
     "chunked"},
    {"stdlib/paralstm.seq", "I=3,H=4", "paralstm_newton", "newton"},
    {"tests/data/models/context_forms.seq", "I=3,H=4,S=5,NH=2,D=4", "context_forms_chunked",
     "chunked"},
    /* dA @ s and C * s' summed: products folded into their sums. */
    {"stdlib/lssl.seq", "H=3,N=4", "lssl_sequential", "sequential"},
    /* dA (40 KiB) over all the batch's rows, the update s' = v + dB x made in
     * that sum's stores; at N = 32 (two vectors a row) the update, which
     * writes the state the sum reads, runs after it instead. */
    {"stdlib/lssl.seq", "H=40,N=16", "lssl_across", "sequential"},
    {"stdlib/lssl.seq", "H=16,N=32", "lssl_across_wide", "sequential"},
};

static void test_golden(void **st) {
  (void)st;
  size_t ncases = sizeof CASES / sizeof CASES[0], nforms = sizeof FORM_CASES / sizeof FORM_CASES[0];
  for (size_t k = 0; k < ncases + nforms; k++) {
    const Case *c = k < ncases ? &CASES[k] : &FORM_CASES[k - ncases];
    if (!c->golden) continue;
    Built b;
    schedule(&b, c, k < ncases ? "auto" : c->forms);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    sched_print(out, b.pipe.sched);
    fclose(out);
    char path[256];
    snprintf(path, sizeof path, "tests/golden/sched/%s.sched", c->golden);
    tu_check_golden(text, path);
    free(text);
    pipeline_release(&b.pipe);
    arena_destroy(b.arena);
  }
}

/* The CLI prints the same text. */
static void test_cli(void **st) {
  (void)st;
  char args[1024];
  snprintf(args, sizeof args, "--emit=sched %s --dims I=3,H=4", tu_src("examples/lstm.seq"));
  tu_expect_seqc(tu_tmpdir(), args, 0, "schedule LSTM (symbol lstm) dims I=3, H=4");
  snprintf(args, sizeof args, "--emit=sched %s", tu_src("examples/lstm.seq"));
  tu_expect_seqc(tu_tmpdir(), args, 1, "dim");
}

int main(void) {
  /* The cost model's machine, fixed, so `auto` (and the goldens) do not
   * depend on this machine's speed at the moment. */
  setenv("SEQ_MACHINE", "flops=160e9,dram=15e9,l2=250e9,cores=2", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_properties),
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_cli),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
