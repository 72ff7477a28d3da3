/* test_codegen_forms.c - every std cell and example under every form its
 * classes admit (sequential, scan, chunked), compiled by the CPU backend (JIT), equals
 * the interpreter (sequential, scan, chunked): T in {1, 2, 3, 7, 63, 64, 65, 1000, 4097}, B in {1,
 * 5}, with and without lengths and initial states.
 *
 * Tolerance. A parallel form adds and multiplies in another order than the
 * step loop, so its float32 result differs from the float32 interpreter's
 * by rounding, growing with T where the recurrence accumulates. Both are
 * judged against the float64 interpreter: the compiled result may be off the
 * float64 one by at most 1e-5 (absolute, floats of order 1) plus four times
 * the float32 interpreter's own error there, plus 1e-4 relative to the
 * output's scale for T >= 1000 (the bound the sequential backend has always
 * met, test_codegen.c). A wrong form (a lost term, a wrong step) is off by
 * the size of a term, orders of magnitude above that. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cpu.h"

typedef struct Case {
  const char *file, *dims;
} Case;

static const Case CASES[] = {
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
    {"tests/data/models/reversed_forms.seq", "I=3,H=4,NH=2,D=4"},
    {"stdlib/paragru.seq", "I=3,H=4"},
    {"stdlib/paralstm.seq", "I=3,H=4"},
    {"tests/data/models/newton_layers.seq", "I=3,H=4"},
    /* Wide enough that a fused scan splits: a one-row state into pieces
     * (the last one short), a many-row state into blocks (likewise). */
    {"stdlib/mingru.seq", "I=3,H=200"},
    {"stdlib/s4d.seq", "H=150,N=16"},
};

/* Each form as the schedule chunks time, and the parallel forms again with
 * the shortest time chunks (a budget of one float: 16 steps, 64 with a
 * chunked state), so that sequences cross many chunk boundaries; the
 * chunked kernels also with chunks of 5 tokens, which do not divide them. */
static const struct {
  const char *strategy;
  int64_t chunk_budget, kernel_chunk;
} FORMS[] = {{"sequential", 0, 0}, {"scan", 0, 0},    {"chunked", 0, 0}, {"scan", 1, 0},
             {"chunked", 1, 0},    {"chunked", 1, 5}, {"newton", 0, 0}};
enum { NFORMS = sizeof FORMS / sizeof FORMS[0] };
static const int64_t TS[] = {1, 2, 3, 7, 63, 64, 65, 1000, 4097};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

typedef struct Compiled {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
  AbiForwardFn forward;
  DrvWeights w;
} Compiled;

/* Compiles c under --strategy=form; 1 if no state of it has that form
 * (nothing to test), -1 on any other failure. */
static int compile(Compiled *cm, const Case *c, const char *form, int64_t chunk_budget,
                   int64_t kernel_chunk) {
  memset(cm, 0, sizeof *cm);
  cm->arena = arena_create();
  srcmgr_init(&cm->sm, cm->arena);
  diag_init(&cm->de, cm->arena, NULL);
  pipeline_init(&cm->pipe, cm->arena, &cm->sm, &cm->de);
  const char *names[16];
  int64_t values[16];
  int n = 0;
  char *spec = arena_strdup(cm->arena, c->dims);
  for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  StrategyRequest req;
  char err[256];
  if (strategy_parse(cm->arena, form, &req, err, sizeof err)) fail_msg("%s", err);
  PipeOptions po = {0};
  po.path = tu_src(c->file);
  po.ndims = n;
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = &req;
  po.chunk_budget = chunk_budget;
  po.kernel_chunk = kernel_chunk;
  po.cg = (CgOptions){2, NULL, NULL};
  po.goal = PIPE_BOUND;
  if (pipeline_run(&cm->pipe, &po)) return -1;
  if (ir_binding_random(&cm->pipe.bind, 5, &cm->de)) return -1;
  /* Stable recurrences, as trained ones are: S5's Lambda_re and RetNet's
   * decay (log gamma) are used as stored, and a positive one grows like
   * e^t until float32 overflows (docs/stdlib.md). */
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; i < b->flat.params.n; i++)
    if (strcmp(b->flat.params.v[i].name, "Lambda_re") == 0 ||
        strcmp(b->flat.params.v[i].name, "decay") == 0)
      for (int64_t k = 0; k < rt_numel(&b->weights[i]); k++)
        ((double *)b->weights[i].data)[k] = -fabs(((double *)b->weights[i].data)[k]);
  po.goal = PIPE_JIT;
  if (pipeline_run(&cm->pipe, &po)) {
    for (int i = 0; i < cm->de.diags.n; i++)
      if (strstr(cm->de.diags.v[i].message, "has that form")) return 1;
    return -1;
  }
  const AbiSignature *sig = &cm->pipe.sched->sig;
  cm->forward = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      cm->pipe.jit, arena_printf(cm->arena, "%s_forward", sig->symbol), &cm->de);
  if (!cm->forward) return -1;
  return drv_weights_from_binding(sig, &cm->pipe.bind, &cm->w, &cm->de);
}

static void release(Compiled *cm) {
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; b->weights && i < b->flat.params.n; i++) rt_tensor_free(&b->weights[i]);
  drv_weights_free(&cm->w);
  pipeline_release(&cm->pipe);
  arena_destroy(cm->arena);
}

static double get(const RtTensor *t, int64_t k) {
  return t->dtype == RT_F64 ? ((double *)t->data)[k] : ((float *)t->data)[k];
}

/* Fails unless got is within the stated tolerance of ref64 (see the top). */
static void check(const char *what, const RtTensor *got, const RtTensor *ref32,
                  const RtTensor *ref64, int64_t T) {
  int64_t n = rt_numel(got);
  assert_int_equal(n, rt_numel(ref64));
  double e = 0, e32 = 0, scale = 0;
  for (int64_t k = 0; k < n; k++) {
    double g = get(got, k), r = get(ref64, k), r32 = get(ref32, k);
    if (isnan(g) != isnan(r)) fail_msg("%s: NaN at %lld", what, (long long)k);
    if (isnan(r)) continue;
    e = fmax(e, fabs(g - r));
    e32 = fmax(e32, fabs(r32 - r));
    scale = fmax(scale, fabs(r));
  }
  double tol = 1e-5 + 4 * e32 + (T >= 1000 ? 1e-4 * scale : 0);
  if (!(e <= tol))
    fail_msg("%s: off the float64 interpreter by %g > %g (float32 interpreter: %g, scale %g)", what,
             e, tol, e32, scale);
}

static void run_case(const Case *c) {
  Compiled cm[NFORMS];
  int have[NFORMS];
  for (int f = 0; f < NFORMS; f++) {
    have[f] = compile(&cm[f], c, FORMS[f].strategy, FORMS[f].chunk_budget, FORMS[f].kernel_chunk);
    if (have[f] < 0) {
      for (int i = 0; i < cm[f].de.diags.n; i++) print_error("%s\n", cm[f].de.diags.v[i].message);
      fail_msg("%s does not compile under --strategy=%s", c->file, FORMS[f].strategy);
    }
    have[f] = have[f] == 0;
    /* FORMS_VERBOSE=1: which forms each case runs. */
    if (getenv("FORMS_VERBOSE"))
      fprintf(stderr, "%s --strategy=%s, chunk budget %lld, --chunk %lld: %s\n", c->file,
              FORMS[f].strategy, (long long)FORMS[f].chunk_budget, (long long)FORMS[f].kernel_chunk,
              have[f] ? "runs" : "no such form");
  }
  const IrBinding *b = &cm[0].pipe.bind;
  const IrFunc *root = b->root;
  int ni = root->inputs.n, no = root->outputs.n, ns = b->flat.states.n;
  assert_true(no <= 8 && ns <= 16);
  for (size_t ti = 0; ti < sizeof TS / sizeof TS[0]; ti++)
    for (int64_t B = 1; B <= 5; B += 4)
      for (int variant = 0; variant < 2; variant++) {
        int64_t T = TS[ti];
        /* The longest sequences once, with lengths and states. */
        if (T > 1000 && (B > 1 || !variant)) continue;
        RtTensor ins[8] = {0}, sin[16] = {0};
        RtError e;
        for (int i = 0; i < ni; i++) {
          IrType t = root->inputs.v[i].type;
          int64_t shape[RT_MAX_RANK] = {B, T};
          assert_int_equal(ir_binding_shape(b, t, shape + 2), 0);
          RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F64;
          assert_int_equal(rt_tensor_alloc(&ins[i], dt, t.rank + 2, shape, &e), 0);
          for (int64_t k = 0; k < rt_numel(&ins[i]); k++) {
            if (dt == RT_I64)
              ((int64_t *)ins[i].data)[k] = k % 7;
            else
              ((double *)ins[i].data)[k] = urand();
          }
        }
        for (int s = 0; s < ns && variant; s++) {
          const IrFlatVar *v = &b->flat.states.v[s];
          int64_t shape[RT_MAX_RANK] = {B};
          assert_int_equal(ir_binding_shape(b, v->type, shape + 1), 0);
          int rank = v->type.rank + 1;
          if (v->type.elem == IR_COMPLEX) shape[rank++] = 2;
          assert_int_equal(rt_tensor_alloc(&sin[s], RT_F64, rank, shape, &e), 0);
          for (int64_t k = 0; k < rt_numel(&sin[s]); k++)
            ((double *)sin[s].data)[k] = 0.5 * urand();
        }
        int64_t lengths[5];
        /* 0 < ... <= T, the last example full, one of them odd. */
        for (int64_t k = 0; k < B; k++) {
          lengths[k] = (T * (k + 1)) / B - (k % 2);
          if (lengths[k] < 0) lengths[k] = 0;
        }
        const int64_t *len = variant ? lengths : NULL;
        RtTensor o32[8], o64[8], s32[16], s64[16];
        InterpOptions i32 = {0}, i64 = {.f64 = 1};
        if (interp_run(b, B, T, ins, len, variant ? sin : NULL, o32, s32, &i32, &cm[0].de) ||
            interp_run(b, B, T, ins, len, variant ? sin : NULL, o64, s64, &i64, &cm[0].de)) {
          for (int i = 0; i < cm[0].de.diags.n; i++)
            print_error("%s\n", cm[0].de.diags.v[i].message);
          fail_msg("%s: the interpreter fails", c->file);
        }
        /* The variant with lengths and states runs on two threads: one
         * example's parallel form splits over the pool, several examples
         * split the batch. */
        rt_cpu_set_num_threads(variant ? 2 : 1);
        for (int f = 0; f < NFORMS; f++) {
          if (!have[f]) continue;
          RtTensor og[8], sg[16];
          const AbiSignature *sig = &cm[f].pipe.sched->sig;
          if (drv_run(sig, cm[f].forward, &cm[f].w, &cm[f].pipe.bind, B, T, ins, len,
                      variant ? sin : NULL, og, sg, &cm[f].de))
            fail_msg("%s --strategy=%s does not run", c->file, FORMS[f].strategy);
          char what[512];
          for (int k = 0; k < no; k++) {
            snprintf(what, sizeof what,
                     "%s --strategy=%s (chunk budget %lld, --chunk %lld) output %s B=%lld "
                     "T=%lld variant=%d",
                     c->file, FORMS[f].strategy, (long long)FORMS[f].chunk_budget,
                     (long long)FORMS[f].kernel_chunk, root->outputs.v[k].name, (long long)B,
                     (long long)T, variant);
            check(what, &og[k], &o32[k], &o64[k], T);
            rt_tensor_free(&og[k]);
          }
          for (int k = 0; k < ns; k++) {
            snprintf(what, sizeof what,
                     "%s --strategy=%s (chunk budget %lld, --chunk %lld) state %s B=%lld "
                     "T=%lld variant=%d",
                     c->file, FORMS[f].strategy, (long long)FORMS[f].chunk_budget,
                     (long long)FORMS[f].kernel_chunk, b->flat.states.v[k].name, (long long)B,
                     (long long)T, variant);
            check(what, &sg[k], &s32[k], &s64[k], T);
            rt_tensor_free(&sg[k]);
          }
        }
        for (int k = 0; k < no; k++) {
          rt_tensor_free(&o32[k]);
          rt_tensor_free(&o64[k]);
        }
        for (int k = 0; k < ns; k++) {
          rt_tensor_free(&s32[k]);
          rt_tensor_free(&s64[k]);
          rt_tensor_free(&sin[k]);
        }
        for (int i = 0; i < ni; i++) rt_tensor_free(&ins[i]);
      }
  for (int f = 0; f < NFORMS; f++) release(&cm[f]);
}

static void test_forms_equal_interpreter(void **st) {
  (void)st;
  for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) run_case(&CASES[k]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forms_equal_interpreter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
