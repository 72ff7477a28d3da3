/* test_cuda_gen.c - the CUDA backend (cudagen/, runtime/cuda_exec.c) on a
 * machine with or without a GPU:
 *   - every example's and std cell's CUDA C, under each form the GPU runs
 *     (the step loop, the scan form where the class admits it, and the
 *     chunked forms), compiles with NVRTC to cubins for sm_80 and sm_90
 *     (NVRTC runs ptxas);
 *   - the same programs run through the executor on the tests' CPU
 *     emulation of CUDA (tests/cuda_emu/) equal the interpreter, with and
 *     without lengths and initial states, T from 1 to 70;
 *   - on a machine with a CUDA device, the same comparison on the device;
 *   - Newton layers (diagonal, block and dense Jacobians, and the fallback
 *     to the step loop) on the emulation against the interpreter;
 *   - what the GPU cannot run yet (a layer run over a context's positions)
 *     is refused by name, never run wrongly.
 * Tolerances are the CPU forms' (formcheck.h): within 1e-5 plus four times
 * the float32 interpreter's own error of the float64 one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "formcheck.h"
#include "cuda_emu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cuda.h"
#include "seq.h"

/* Every example and std cell (FC_CASES), then some wider than a block: rows
 * and scans stride over more than one pass of the threads. */
static const FcCase WIDE[] = {
    {"stdlib/mingru.seq", "I=3,H=200"},
    {"stdlib/s4d.seq", "H=150,N=16"},
    {"stdlib/lstm.seq", "I=5,H=70"},
    /* dA (40 KiB) summed over all rows, the update made in its stores on the
     * CPU and after it here. */
    {"stdlib/lssl.seq", "H=40,N=16"},
    /* Causal attention: small heads; heads wider than a pass of output
     * columns (32) and keys crossing shared-memory tiles (56 keys of 72
     * floats); a model with it. */
    {"tests/data/models/attention.seq", "I=3,NH=2,D=4"},
    {"tests/data/models/attention.seq", "I=40,NH=2,D=40"},
    {"examples/hybrid.seq", "NH=2,DH=3"},
    {"examples/universal_transformer.seq", "NH=2,DH=3,F=8"},
    {"tests/data/models/compare.seq", "I=3,H=4"},
    {"tests/data/models/batched_matmul.seq", "I=3,NH=2,D=4"},
    {"tests/data/models/head_split.seq", "d=8,NH=2"},
    {"tests/data/models/eye.seq", "I=3,Dk=4,Dv=5"},
    /* The delta rule's WY form backwards (reversed_forms.seq's chunked
     * form is refused here for its RWKV-7 layer), and with heads wider
     * than a pass of the block's threads. */
    {"tests/data/models/reversed_delta.seq", "I=3,NH=2,D=4"},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=20,Dv=150"},
    /* The generalized delta rule's: a test cell with two readouts (a pass
     * on a copy of the initial state), forwards and backwards, and RWKV-7
     * with a head wider than a pass. */
    {"tests/data/models/dplr.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/rwkv7.seq", "C=140,D_w=3,D_a=3,D_g=3"},
    /* pLSTM's: heads, exclusive readouts, forwards and backwards. */
    {"tests/data/models/plstm_heads.seq", "I=3,NH=2,Dk=4,Dv=5,J=3"},
    /* Contexts (one value per sequence): an attention decoder over one, a
     * scan and a chunked state whose decays are computed from them, a model
     * passing one to its layers, a pointer network. */
    {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3"},
    {"tests/data/models/context_forms.seq", "I=3,H=4,S=5,NH=2,D=4"},
    {"tests/data/models/context_layers.seq", "I=3,H=4,S=5"},
    {"examples/pointer_network.seq", "I=3,H=4,S=5,A=3"},
    /* Layers run over a context's positions: seq2seq's bidirectional
     * encoder with the source's lengths, and a model that runs one. */
    {"tests/data/models/seq2seq.seq", "I_src=3,I=2,H=4,S=5"},
    {"tests/data/models/context_model.seq", "I=3,H=4,S=5"},
};
enum { NWIDE = sizeof WIDE / sizeof WIDE[0] };

static const FcCase *case_at(int k) {
  return k < FC_NCASES ? &FC_CASES[k] : &WIDE[k - FC_NCASES];
}

/* The forms the GPU runs: the step loop everywhere, its auto (the scan form
 * where the class admits it), and the chunked form of matrix states. */
static const char *const FORMS[] = {"sequential", "auto", "chunked"};
enum { NFORMS = 3 };

static const int64_t TS[] = {1, 3, 33, 70};

/* drv_run calls an ABI forward function; this one runs the current program
 * on the current device. */
static struct {
  const RtCuProgram *prog;
  RtCuDevice dev;
} cur;

static int32_t forward(const float *const *params, int64_t B, int64_t T, const void *const *inputs,
                       const int32_t *lengths, const float *const *state_in, float *const *outputs,
                       float *const *state_out) {
  RtError err;
  int rc = rt_cu_forward(cur.prog, &cur.dev, params, B, T, inputs, lengths, state_in, outputs,
                         state_out, &err);
  if (rc < 0) print_error("device: %s\n", err.msg);
  return rc < 0 ? 2 : rc;
}

/* A Newton solve's options beyond the defaults (0: the default). */
typedef struct NewtonOpt {
  int dense, max_iter;
} NewtonOpt;

/* Renders c's CUDA program under `form` (and Newton options nt, or NULL);
 * 0, 1 when no state of c has that form, or -1 with diagnostics. */
static int compile_with(FcCompiled *cm, const FcCase *c, const char *form, const NewtonOpt *nt) {
  PipeOptions po;
  fc_begin(cm, c, form, &po);
  if (nt && nt->dense) ((StrategyRequest *)po.strategy)->newton.dense = 1;
  if (nt && nt->max_iter) ((StrategyRequest *)po.strategy)->newton.max_iter = nt->max_iter;
  po.cuda = 1;
  if (pipeline_run(&cm->pipe, &po) || fc_random_weights(cm)) return -1;
  po.goal = PIPE_CUDA;
  if (pipeline_run(&cm->pipe, &po)) return fc_said(cm, "has that form") ? 1 : -1;
  cm->forward = forward;
  return drv_weights_from_binding(&cm->pipe.sched->sig, &cm->pipe.bind, &cm->w, &cm->de);
}

static int compile(FcCompiled *cm, const FcCase *c, const char *form) {
  return compile_with(cm, c, form, NULL);
}

/* Newton layers (runtime/cuda_newton.c, cudagen/newton.c): diagonal
 * Jacobians (ParaGRU), 2x2 blocks of diagonals (ParaLSTM), both directions
 * and in a model; GRU's dense Jacobian by its diagonals (quasi-Newton) and
 * whole (exact Newton, column by column); and a solve cut off after one
 * iteration, so that every example falls back to the step loop from its
 * first step that failed the test. A wrong Jacobian or linear solve would
 * still give the right numbers through the fallback, so each case also
 * bounds the iterations its solves took (exact Newton converges in a few,
 * the interpreter's count on the CPU) and counts the fallbacks. */
static const struct {
  FcCase c;
  NewtonOpt nt;
  int most_iters; /* of any solve; 0: every solve of 3 or more steps falls back */
} NEWTON[] = {
    {{"tests/data/models/newton_layers.seq", "I=3,H=4"}, {0, 0}, 4},
    {{"stdlib/paragru.seq", "I=3,H=150"}, {0, 0}, 4},
    {{"stdlib/gru.seq", "I=3,H=4"}, {0, 0}, 16},
    {{"stdlib/gru.seq", "I=3,H=4"}, {1, 0}, 4},
    {{"tests/data/models/newton_layers.seq", "I=3,H=4"}, {0, 1}, 0},
};
enum { NNEWTON = sizeof NEWTON / sizeof NEWTON[0] };

/* ---- NVRTC: every program compiles for sm_80 and sm_90 ----------------------------- */

static void test_every_program_compiles_with_nvrtc(void **st) {
  (void)st;
  if (!fc_nvrtc_present()) {
    skip();
    return;
  }
  /* A cache of this test's own, so the compiles are real. */
  char dir[512];
  snprintf(dir, sizeof dir, "%s/cuda-cache", tu_tmpdir());
  setenv("SEQ_CUDA_CACHE", dir, 1);
  uint64_t calls0 = rt_nvrtc_calls();
  double secs0 = rt_nvrtc_seconds();
  /* Twice: the second round comes from the cache, with no NVRTC call. */
  for (int round = 0; round < 2; round++) {
    uint64_t before = rt_nvrtc_calls();
    for (int k = 0; k < FC_NCASES + NWIDE; k++)
      for (int f = 0; f < NFORMS; f++) {
        if (round && k > 2) continue;
        const FcCase *c = case_at(k);
        FcCompiled cm;
        int rc = compile(&cm, c, FORMS[f]);
        if (rc < 0) {
          fc_print_diags(&cm);
          fail_msg("%s --strategy=%s does not render for CUDA", c->file, FORMS[f]);
        }
        if (rc > 0) {
          fc_release(&cm);
          continue;
        }
        static const char *const archs[] = {"sm_80", "sm_90"};
        for (int a = 0; a < 2; a++) {
          RtBlob bin = {0};
          RtError err;
          if (rt_nvrtc_compile(cm.pipe.cuda->source, cm.pipe.sched->sig.symbol, archs[a], 1, &bin,
                               &err))
            fail_msg("%s --strategy=%s for %s: %s", c->file, FORMS[f], archs[a], err.msg);
          assert_true(bin.size > 0);
          rt_blob_free(&bin);
        }
        fc_release(&cm);
      }
    for (int k = 0; k < NNEWTON && !round; k++) {
      FcCompiled cm;
      if (compile_with(&cm, &NEWTON[k].c, "newton", &NEWTON[k].nt)) {
        fc_print_diags(&cm);
        fail_msg("%s --strategy=newton does not render for CUDA", NEWTON[k].c.file);
      }
      for (int a = 0; a < 2; a++) {
        static const char *const archs[] = {"sm_80", "sm_90"};
        RtBlob bin = {0};
        RtError err;
        if (rt_nvrtc_compile(cm.pipe.cuda->source, cm.pipe.sched->sig.symbol, archs[a], 1, &bin,
                             &err))
          fail_msg("%s --strategy=newton for %s: %s", NEWTON[k].c.file, archs[a], err.msg);
        rt_blob_free(&bin);
      }
      fc_release(&cm);
    }
    if (round == 0) {
      uint64_t n = rt_nvrtc_calls() - calls0;
      print_message("NVRTC: %llu cubins, %.3f s each on average (cold)\n", (unsigned long long)n,
                    n ? (rt_nvrtc_seconds() - secs0) / (double)n : 0.0);
    } else {
      assert_int_equal(rt_nvrtc_calls(), before);
    }
  }
  unsetenv("SEQ_CUDA_CACHE");
}

/* ---- the programs run and equal the interpreter ---------------------------------- */

/* Runs case c under every form on the device `dev_of` gives, against the
 * interpreter. */
typedef int (*DeviceFor)(FcCompiled *cm, RtCuDevice *dev, void **handle);
typedef void (*DeviceDone)(void *handle);

static int emu_for(FcCompiled *cm, RtCuDevice *dev, void **handle);

/* The batches an emulated program also runs in the reverse order: those
 * with lengths and initial states, at every T but 1. */
static int reverse_too(int64_t T, int variant) {
  return variant == 1 && T > 1;
}

/* On the emulation, the batch once more with the blocks and threads of
 * every launch in descending order, for the bits of og and sg: a race
 * between threads, or a block reading what another block of its launch
 * writes, changes them (a GPU gives neither order). */
static void same_reversed(const FcBatch *bt, FcCompiled *cm, const char *what, void *emu,
                          const RtTensor *og, const RtTensor *sg) {
  char rev[600];
  snprintf(rev, sizeof rev, "%s, blocks and threads in reverse order", what);
  emu_set_reverse(emu, 1);
  fc_batch_same(bt, cm, rev, og, sg);
  emu_set_reverse(emu, 0);
}

static void run_case_at(const FcCase *c, DeviceFor dev_for, DeviceDone dev_done, const int64_t *ts,
                        int nts) {
  FcCompiled cm[NFORMS];
  void *handle[NFORMS] = {0};
  RtCuDevice dev[NFORMS];
  int have[NFORMS];
  for (int f = 0; f < NFORMS; f++) {
    int rc = compile(&cm[f], c, FORMS[f]);
    if (rc < 0) {
      fc_print_diags(&cm[f]);
      fail_msg("%s --strategy=%s does not render for CUDA", c->file, FORMS[f]);
    }
    have[f] = rc == 0;
    if (have[f] && dev_for(&cm[f], &dev[f], &handle[f])) fail_msg("%s: no device program", c->file);
  }
  for (int ti = 0; ti < nts; ti++)
    for (int64_t B = 1; B <= 5; B += 4)
      for (int variant = 0; variant < 2; variant++) {
        FcBatch bt;
        fc_batch_make(&bt, &cm[0], B, ts[ti], variant);
        for (int f = 0; f < NFORMS; f++) {
          if (!have[f]) continue;
          cur.prog = cm[f].pipe.cuda;
          cur.dev = dev[f];
          char what[512];
          snprintf(what, sizeof what, "%s --strategy=%s", c->file, FORMS[f]);
          RtTensor og[8], sg[16];
          fc_batch_check_keep(&bt, &cm[f], what, 0, og, sg);
          if (dev_for == emu_for && reverse_too(ts[ti], variant))
            same_reversed(&bt, &cm[f], what, handle[f], og, sg);
          fc_batch_outputs_free(&bt, og, sg);
        }
        fc_batch_free(&bt);
      }
  for (int f = 0; f < NFORMS; f++) {
    if (have[f]) dev_done(handle[f]);
    fc_release(&cm[f]);
  }
}

static void run_case(const FcCase *c, DeviceFor dev_for, DeviceDone dev_done) {
  run_case_at(c, dev_for, dev_done, TS, (int)(sizeof TS / sizeof TS[0]));
}

static int emu_for(FcCompiled *cm, RtCuDevice *dev, void **handle) {
  EmuModule *m = NULL;
  char msg[2048];
  const RtCuProgram *p = cm->pipe.cuda;
  if (emu_build(p->source, p->kernels, p->nkernels, &m, msg, sizeof msg)) {
    print_error("%s\n", msg);
    return -1;
  }
  *dev = emu_device(m);
  *handle = m;
  return 0;
}

static void emu_done(void *handle) {
  EmuModule *m = handle;
  assert_int_equal(emu_live_allocs(m), 0);
  assert_int_equal(emu_bad_frees(m), 0);
  assert_int_equal(emu_stream_misses(m), 0);
  emu_free(m);
}

static void test_emulated_programs_equal_interpreter(void **st) {
  (void)st;
  if (!emu_available()) {
    print_message("no C++ compiler for the CUDA emulation: skipped\n");
    skip();
    return;
  }
  /* CUDA_CASE=N runs one case (debugging). */
  const char *one = getenv("CUDA_CASE");
  for (int k = 0; k < FC_NCASES + NWIDE; k++)
    if (!one || atoi(one) == k) run_case(case_at(k), emu_for, emu_done);
}

/* Each Newton case on the emulation against the interpreter. */
static void run_newton(DeviceFor dev_for, DeviceDone dev_done) {
  const char *one = getenv("CUDA_NEWTON");
  for (int k = 0; k < NNEWTON; k++) {
    if (one && atoi(one) != k) continue;
    FcCompiled cm;
    RtCuDevice dev;
    void *handle = NULL;
    const FcCase *c = &NEWTON[k].c;
    if (compile_with(&cm, c, "newton", &NEWTON[k].nt)) {
      fc_print_diags(&cm);
      fail_msg("%s --strategy=newton does not render for CUDA", c->file);
    }
    if (dev_for(&cm, &dev, &handle)) fail_msg("%s: no device program", c->file);
    size_t first_allocs = 0;
    for (size_t ti = 0; ti < sizeof TS / sizeof TS[0]; ti++)
      for (int64_t B = 1; B <= 5; B += 4)
        for (int variant = 0; variant < 2; variant++) {
          FcBatch bt;
          fc_batch_make(&bt, &cm, B, TS[ti], variant);
          cur.prog = cm.pipe.cuda;
          cur.dev = dev;
          char what[512];
          snprintf(what, sizeof what, "%s --strategy=newton%s%s", c->file,
                   NEWTON[k].nt.dense ? " (dense)" : "", NEWTON[k].nt.max_iter ? " (cut off)" : "");
          RtCuNewtonStats ns;
          rt_cu_newton_stats(NULL, 1);
          size_t allocs = dev_for == emu_for ? emu_total_allocs(handle) : 0;
          RtTensor og[8], sg[16];
          fc_batch_check_keep(&bt, &cm, what, 0, og, sg);
          rt_cu_newton_stats(&ns, 1);
          /* The call's buffers come from its pool: a solve's many
           * evaluations of the step allocate as one does, so a longer
           * sequence (more iterations, a fallback of more steps) allocates
           * about as many as T = 3 did (the split recurrence has scratch, a
           * longer fallback a few more rows of the step). */
          if (dev_for == emu_for && TS[ti] >= 3) {
            allocs = emu_total_allocs(handle) - allocs;
            if (!first_allocs) first_allocs = allocs;
            if (allocs > first_allocs + first_allocs / 4 + 8)
              fail_msg("%s, T = %lld: %zu device allocations (T = 3: %zu)", what, (long long)TS[ti],
                       allocs, first_allocs);
          }
          int most = NEWTON[k].most_iters;
          if (ns.solves < 1 || (most && (ns.fallbacks || ns.max_iter > most)) ||
              (!most && TS[ti] >= 3 && ns.fallbacks != ns.solves))
            fail_msg("%s, T = %lld, B = %lld: %lld solves, %lld fallbacks, at most %d iterations",
                     what, (long long)TS[ti], (long long)B, (long long)ns.solves,
                     (long long)ns.fallbacks, ns.max_iter);
          if (dev_for == emu_for && reverse_too(TS[ti], variant))
            same_reversed(&bt, &cm, what, handle, og, sg);
          fc_batch_outputs_free(&bt, og, sg);
          fc_batch_free(&bt);
        }
    dev_done(handle);
    fc_release(&cm);
  }
}

static void test_emulated_newton_equals_interpreter(void **st) {
  (void)st;
  const char *cases = getenv("CUDA_CASE");
  if (!emu_available() || (cases && atoi(cases) < 0)) {
    skip();
    return;
  }
  run_newton(emu_for, emu_done);
}

/* A layer run over a context's positions checks the lengths it is given as
 * the entry points check theirs: outside [0, S] is status 4 (as on the
 * CPU), S itself runs. */
static void test_emulated_over_lengths(void **st) {
  (void)st;
  if (!emu_available()) {
    skip();
    return;
  }
  FcCase c = {"tests/data/models/seq2seq.seq", "I_src=3,I=2,H=4,S=5"};
  FcCompiled cm;
  RtCuDevice dev;
  void *handle = NULL;
  assert_int_equal(compile(&cm, &c, "sequential"), 0);
  assert_int_equal(emu_for(&cm, &dev, &handle), 0);
  enum { B = 2, T = 3 };
  float x[B * T * 2] = {0}, src[B * 5 * 3] = {0}, mask[B * 5] = {0};
  float y[B * T * (2 * 4 * 2 + 5)];
  int32_t src_len[B] = {5, 2};
  const void *ins[4] = {x, src, src_len, mask};
  float *outs[1] = {y};
  const float *const *W = (const float *const *)cm.w.data;
  RtError err;
  assert_int_equal(rt_cu_forward(cm.pipe.cuda, &dev, W, B, T, ins, NULL, NULL, outs, NULL, &err),
                   0);
  src_len[1] = 6;
  assert_int_equal(rt_cu_forward(cm.pipe.cuda, &dev, W, B, T, ins, NULL, NULL, outs, NULL, &err),
                   4);
  src_len[1] = -1;
  assert_int_equal(rt_cu_forward(cm.pipe.cuda, &dev, W, B, T, ins, NULL, NULL, outs, NULL, &err),
                   4);
  emu_done(handle);
  fc_release(&cm);
}

/* Attention's queries go in rounds of one per thread of a block (128): a
 * sequence of 300 takes three, the keys of the last one crossing tiles. */
static void test_emulated_attention_long(void **st) {
  (void)st;
  if (!emu_available()) {
    skip();
    return;
  }
  static const int64_t long_ts[] = {129, 300};
  FcCase c = {"tests/data/models/attention.seq", "I=40,NH=2,D=40"};
  run_case_at(&c, emu_for, emu_done, long_ts, 2);
}

/* ---- 16-bit inputs and outputs (rt_cu_run_io) ------------------------------------- */

static int kernel_index(const RtCuProgram *p, const char *name) {
  for (int k = 0; k < p->nkernels; k++)
    if (strcmp(p->kernels[k], name) == 0) return k;
  fail_msg("no kernel %s", name);
  return -1;
}

/* Device memory of the emulation holding n bytes of host. */
static RtDevPtr dev_put(const RtCuDevice *d, const void *host, size_t n) {
  RtDevPtr p = 0;
  RtError err;
  assert_int_equal(d->alloc(d->ctx, d->stream, n, &p, &err), 0);
  if (host)
    assert_int_equal(d->copy(d->ctx, d->stream, p, (RtDevPtr)(uintptr_t)host, n, RT_CU_H2D, &err),
                     0);
  return p;
}

static void dev_put_at(const RtCuDevice *d, RtDevPtr p, const void *host, size_t n) {
  RtError err;
  assert_int_equal(d->copy(d->ctx, d->stream, p, (RtDevPtr)(uintptr_t)host, n, RT_CU_H2D, &err), 0);
}

static void dev_get(const RtCuDevice *d, void *host, RtDevPtr p, size_t n) {
  RtError err;
  assert_int_equal(d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)host, p, n, RT_CU_D2H, &err), 0);
}

/* The program's seq_io_in on every 16-bit pattern and seq_io_out on each
 * value that widens from one, the midpoints between neighbours (ties), a
 * float either side of each midpoint and random bit patterns, against the
 * references. */
static void check_conversions(const RtCuProgram *p, const RtCuDevice *d) {
  enum { NR = 200000 };
  const int64_t n16 = 65536, nf = 4 * 65536 + NR;
  uint16_t *h = malloc(sizeof *h * (size_t)nf);
  float *f = malloc(sizeof *f * (size_t)nf);
  assert_true(h && f);
  RtDevPtr dh = dev_put(d, NULL, sizeof *h * (size_t)nf),
           df = dev_put(d, NULL, sizeof *f * (size_t)nf);
  RtDevPtr frame = dev_put(d, NULL, 4 * sizeof(int64_t));
  RtError err;
  for (int type = RT_CU_IO_BF16; type <= RT_CU_IO_F16; type++) {
    for (int64_t i = 0; i < n16; i++) h[i] = (uint16_t)i;
    dev_put_at(d, dh, h, sizeof *h * (size_t)n16);
    int64_t fr[4] = {n16, (int64_t)dh, (int64_t)df, type};
    dev_put_at(d, frame, fr, sizeof fr);
    assert_int_equal(
        d->launch(d->ctx, d->stream, kernel_index(p, "seq_io_in"), 64, 256, frame, &err), 0);
    dev_get(d, f, df, sizeof *f * (size_t)n16);
    for (int64_t i = 0; i < n16; i++) {
      float r = fc_widen16((uint16_t)i, type);
      if (isnan(r) ? !isnan(f[i]) : memcmp(&r, &f[i], sizeof r) != 0)
        fail_msg("type %d: 0x%04x widens to %a, expected %a", type, (unsigned)i, f[i], r);
    }
    /* Then to 16 bits: the values themselves, the midpoints (rounded as
     * doubles, exact in float32) and a float either side. */
    int64_t m = n16;
    for (int64_t i = 0; i + 1 < n16; i++) {
      float a = fc_widen16((uint16_t)i, type), b = fc_widen16((uint16_t)(i + 1), type);
      if (!isfinite(a) || !isfinite(b) || (i & 0x7fff) == 0x7fff) continue;
      float mid = (float)(((double)a + (double)b) / 2);
      f[m++] = mid;
      f[m++] = nextafterf(mid, -INFINITY);
      f[m++] = nextafterf(mid, INFINITY);
    }
    for (int k = 0; k < NR; k++) {
      uint32_t u = (uint32_t)(fc_urand() * 2147483648.0) ^ ((uint32_t)(fc_urand() * 65536.0) << 16);
      memcpy(&f[m++], &u, sizeof u);
    }
    assert_true(m <= nf);
    dev_put_at(d, df, f, sizeof *f * (size_t)m);
    int64_t fo[4] = {m, (int64_t)df, (int64_t)dh, type};
    dev_put_at(d, frame, fo, sizeof fo);
    assert_int_equal(
        d->launch(d->ctx, d->stream, kernel_index(p, "seq_io_out"), 64, 256, frame, &err), 0);
    dev_get(d, h, dh, sizeof *h * (size_t)m);
    for (int64_t i = 0; i < m; i++) {
      if (isnan(f[i])) {
        if (!isnan(fc_widen16(h[i], type)) || (h[i] >> 15) != (signbit(f[i]) ? 1 : 0))
          fail_msg("type %d: NaN %a narrows to 0x%04x", type, f[i], h[i]);
        continue;
      }
      uint16_t r = fc_narrow16(f[i], type);
      if (h[i] != r)
        fail_msg("type %d: %a narrows to 0x%04x, expected 0x%04x", type, f[i], h[i], r);
    }
  }
  d->free(d->ctx, dh);
  d->free(d->ctx, df);
  d->free(d->ctx, frame);
  free(h);
  free(f);
}

/* A forward with 16-bit float inputs and outputs equals the float32
 * forward on the same inputs widened, with its outputs rounded, bit for bit,
 * and leaves the same final states: the conversions are all that differs.
 * Int inputs, lengths and the states pass as they are. A bad length is the
 * call's status and leaves the outputs as they were. */
static void check_io_forward(const RtCuProgram *p, const RtCuDevice *d, const DrvWeights *w, int io,
                             int variant, int exact) {
  enum { B = 3, T = 5, MAXT = 16 };
  assert_true(p->nparams <= 64 && p->ninputs <= MAXT && p->noutputs <= MAXT && p->nstates <= MAXT);
  RtDevPtr params[64], x16[MAXT], x32[MAXT], y16[MAXT], y32[MAXT], si[MAXT], so16[MAXT], so32[MAXT];
  for (int j = 0; j < p->nparams; j++)
    params[j] = dev_put(d, w->data[j], sizeof(float) * (size_t)p->param_floats[j]);
  for (int j = 0; j < p->ninputs; j++) {
    int64_t n = (p->input_context && p->input_context[j] ? B : B * T) * p->input_floats[j];
    if (p->input_is_int[j]) {
      int32_t *tok = malloc(sizeof *tok * (size_t)n + 1);
      assert_non_null(tok);
      for (int64_t k = 0; k < n; k++) tok[k] = (int32_t)(k % 7);
      x16[j] = x32[j] = dev_put(d, tok, sizeof *tok * (size_t)n);
      free(tok);
      continue;
    }
    uint16_t *h = malloc(sizeof *h * (size_t)n + 1);
    float *g = malloc(sizeof *g * (size_t)n + 1);
    assert_true(h && g);
    for (int64_t k = 0; k < n; k++) {
      h[k] = fc_narrow16((float)fc_urand(), io);
      g[k] = fc_widen16(h[k], io);
    }
    x16[j] = dev_put(d, h, sizeof *h * (size_t)n);
    x32[j] = dev_put(d, g, sizeof *g * (size_t)n);
    free(h);
    free(g);
  }
  for (int j = 0; j < p->noutputs; j++) {
    size_t n = (size_t)(B * T * p->output_floats[j]);
    y32[j] = dev_put(d, NULL, n * sizeof(float));
    y16[j] = dev_put(d, NULL, n * sizeof(uint16_t));
  }
  for (int j = 0; j < p->nstates; j++) {
    size_t n = (size_t)(B * p->state_floats[j]);
    float *v = malloc(sizeof *v * n + 1);
    assert_non_null(v);
    for (size_t k = 0; k < n; k++) v[k] = (float)fc_urand();
    si[j] = variant ? dev_put(d, v, n * sizeof *v) : 0;
    so32[j] = dev_put(d, NULL, n * sizeof(float));
    so16[j] = dev_put(d, NULL, n * sizeof(float));
    free(v);
  }
  int32_t lens[B] = {T, 0, 3};
  RtDevPtr dl = variant ? dev_put(d, lens, sizeof lens) : 0;
  RtError err;
  int rc = rt_cu_run(p, d, params, B, T, x32, dl, si, y32, so32, &err);
  if (rc) fail_msg("float32 forward: status %d (%s)", rc, rc < 0 ? err.msg : "");
  /* Empty calls first (nothing to convert), then the real one. */
  for (int e = 0; e < 2; e++) {
    rc = rt_cu_run_io(p, d, io, params, e ? 0 : B, e ? T : 0, x16, 0, si, y16, so16, &err);
    if (rc)
      fail_msg("16-bit forward with B=%d: status %d (%s)", e ? 0 : B, rc, rc < 0 ? err.msg : "");
  }
  rc = rt_cu_run_io(p, d, io, params, B, T, x16, dl, si, y16, so16, &err);
  if (rc) fail_msg("16-bit forward: status %d (%s)", rc, rc < 0 ? err.msg : "");
  for (int j = 0; j < p->noutputs; j++) {
    size_t n = (size_t)(B * T * p->output_floats[j]);
    float *a = malloc(n * sizeof *a + 1);
    uint16_t *h = malloc(n * sizeof *h + 1);
    assert_true(a && h);
    dev_get(d, a, y32[j], n * sizeof *a);
    dev_get(d, h, y16[j], n * sizeof *h);
    for (size_t k = 0; k < n; k++)
      if (isnan(a[k]) ? !isnan(fc_widen16(h[k], io))
                      : h[k] != fc_narrow16(a[k], io) &&
                            (exact || abs((int)h[k] - (int)fc_narrow16(a[k], io)) > 1))
        fail_msg("io %d variant %d: output %d[%zu] is 0x%04x, the float32 forward's %a", io,
                 variant, j, k, h[k], a[k]);
    if (variant) { /* a bad length: status 4, the outputs untouched */
      int32_t bad[B] = {T + 1, 0, 0};
      dev_put_at(d, dl, bad, sizeof bad);
      assert_int_equal(rt_cu_run_io(p, d, io, params, B, T, x16, dl, si, y16, so16, &err), 4);
      uint16_t *h2 = malloc(n * sizeof *h2 + 1);
      assert_non_null(h2);
      dev_get(d, h2, y16[j], n * sizeof *h2);
      assert_memory_equal(h, h2, n * sizeof *h);
      free(h2);
      dev_put_at(d, dl, lens, sizeof lens);
    }
    free(a);
    free(h);
  }
  for (int j = 0; j < p->nstates; j++) {
    size_t n = (size_t)(B * p->state_floats[j]);
    float *a = malloc(n * sizeof *a + 1), *b = malloc(n * sizeof *b + 1);
    assert_true(a && b);
    dev_get(d, a, so32[j], n * sizeof *a);
    dev_get(d, b, so16[j], n * sizeof *b);
    for (size_t k = 0; k < n; k++)
      if (exact ? memcmp(&a[k], &b[k], sizeof *a) != 0
                : !(fabsf(a[k] - b[k]) <= 1e-6f * (1 + fabsf(a[k]))))
        fail_msg("io %d variant %d: state %d[%zu] is %a, the float32 forward's %a", io, variant, j,
                 k, b[k], a[k]);
    free(a);
    free(b);
  }
  for (int j = 0; j < p->nparams; j++) d->free(d->ctx, params[j]);
  for (int j = 0; j < p->ninputs; j++) {
    d->free(d->ctx, x16[j]);
    if (x32[j] != x16[j]) d->free(d->ctx, x32[j]);
  }
  for (int j = 0; j < p->noutputs; j++) {
    d->free(d->ctx, y16[j]);
    d->free(d->ctx, y32[j]);
  }
  for (int j = 0; j < p->nstates; j++) {
    if (si[j]) d->free(d->ctx, si[j]);
    d->free(d->ctx, so16[j]);
    d->free(d->ctx, so32[j]);
  }
  if (dl) d->free(d->ctx, dl);
}

/* Float inputs and outputs in bfloat16 and float16 (rt_cu_run_io) on the
 * device dev_for gives: the conversion kernels exhaustively, then forwards
 * of a bidirectional model (two directions, one float input), a language
 * model (an int token input) and an attention decoder (a float context,
 * [B, ...]). */
static void run_io_cases(DeviceFor dev_for, DeviceDone dev_done, int exact) {
  static const FcCase cases[] = {
      {"examples/bigru.seq", "I=3,H=4"},
      {"examples/lm.seq", "vocab=11,d_model=8,d_ff=16,dt_rank=2"},
      {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3"},
  };
  for (int k = 0; k < 3; k++) {
    FcCompiled cm;
    RtCuDevice dev;
    void *handle = NULL;
    if (compile(&cm, &cases[k], "auto")) {
      fc_print_diags(&cm);
      fail_msg("%s does not render for CUDA", cases[k].file);
    }
    if (dev_for(&cm, &dev, &handle)) fail_msg("%s: no device program", cases[k].file);
    const RtCuProgram *p = cm.pipe.cuda;
    if (k == 0) check_conversions(p, &dev);
    for (int io = RT_CU_IO_BF16; io <= RT_CU_IO_F16; io++)
      for (int variant = 0; variant < 2; variant++)
        check_io_forward(p, &dev, &cm.w, io, variant, exact);
    RtError err;
    assert_int_equal(rt_cu_run_io(p, &dev, 3, NULL, 1, 1, NULL, 0, NULL, NULL, NULL, &err), 1);
    dev_done(handle);
    fc_release(&cm);
  }
}

static void test_emulated_16bit_io(void **st) {
  (void)st;
  if (!emu_available()) {
    skip();
    return;
  }
  run_io_cases(emu_for, emu_done, 1);
}

/* ---- on a real device, where there is one --------------------------------------- */

static RtCuda *gpu;

static int gpu_for(FcCompiled *cm, RtCuDevice *dev, void **handle) {
  RtBlob bin = {0};
  RtError err;
  const RtCuProgram *p = cm->pipe.cuda;
  RtCuDevice *d = calloc(1, sizeof *d);
  *handle = NULL;
  if (!d ||
      rt_nvrtc_compile(p->source, cm->pipe.sched->sig.symbol, rt_cuda_arch(gpu), 1, &bin, &err) ||
      rt_cuda_load(gpu, &bin, p->kernels, p->nkernels, d, &err)) {
    print_error("%s\n", d ? err.msg : "out of memory");
    rt_blob_free(&bin);
    free(d);
    return -1;
  }
  rt_blob_free(&bin);
  *dev = *d;
  *handle = d;
  return 0;
}

static void gpu_done(void *handle) {
  rt_cuda_unload(handle);
  free(handle);
}

static void test_gpu_programs_equal_interpreter(void **st) {
  (void)st;
  RtError err;
  if (rt_cuda_open(0, &gpu, &err)) {
    print_message("no GPU (%s): skipped\n", err.msg);
    skip();
    return;
  }
  print_message("device: %s (%s)\n", rt_cuda_name(gpu), rt_cuda_arch(gpu));
  for (int k = 0; k < FC_NCASES + NWIDE; k++) run_case(case_at(k), gpu_for, gpu_done);
  run_newton(gpu_for, gpu_done);
  run_io_cases(gpu_for, gpu_done, 0);
  rt_cuda_close(gpu);
  gpu = NULL;
}

/* ---- refusals ------------------------------------------------------------------------ */

static void expect_refused(const char *file, const char *dims, const char *form,
                           const char *needle) {
  FcCompiled cm;
  FcCase c = {file, dims};
  assert_int_not_equal(compile(&cm, &c, form), 0);
  if (!fc_said(&cm, needle)) {
    fc_print_diags(&cm);
    fail_msg("%s --strategy=%s: no diagnostic saying '%s'", file, form, needle);
  }
  fc_release(&cm);
}

static void test_what_the_gpu_cannot_run_is_refused(void **st) {
  (void)st;
  expect_refused("stdlib/plstm.seq", "I=3,Dk=1,Dv=1,J=64", "chunked",
                 "the CUDA backend cannot run the chunked form of a small dense transition this "
                 "large (J = 64");
}

/* ---- the command line ---------------------------------------------------------------- */

static void test_cli(void **st) {
  (void)st;
  const char *dir = SEQ_SOURCE_DIR;
  tu_expect_seqc(dir, "--emit=cuda stdlib/lstm.seq --dims I=3,H=4", 0, "extern \"C\" __global__");
  tu_expect_seqc(dir, "--emit=cuda --target=cpu stdlib/lstm.seq --dims I=3,H=4", 2,
                 "--emit=cuda is the CUDA target's");
  tu_expect_seqc(dir, "--emit=cuda stdlib/plstm.seq --dims I=3,Dk=4,Dv=5,J=2 --strategy=chunked", 0,
                 "seq_plstm_chunk(n, 2, 4, 5,");
  tu_expect_seqc(dir,
                 "--emit=cuda tests/data/models/newton_layers.seq --dims I=3,H=4 "
                 "--strategy=newton",
                 0, "seq_nt_linear(const i64");
  tu_expect_seqc(dir,
                 "--emit=cuda tests/data/models/dplr.seq --dims I=3,NH=2,Dk=4,Dv=5 "
                 "--strategy=chunked",
                 0, "seq_dplr_chunk(n, 4, 5,");
  tu_expect_seqc(dir,
                 "--emit=cuda stdlib/deltanet.seq --dims I=3,NH=2,Dk=4,Dv=5 "
                 "--strategy=chunked",
                 0, "seq_delta_chunk(n, 1, 4, 5,");
  if (fc_nvrtc_present()) {
    tu_expect_seqc(dir, "--emit=ptx --cuda-arch=sm_90 stdlib/mingru.seq --dims I=3,H=4", 0,
                   ".entry mingru_i0_k");
    tu_expect_seqc(dir, "--emit=ptx --cuda-arch=sm_x stdlib/mingru.seq --dims I=3,H=4", 1,
                   "bad CUDA arch 'sm_x'");
  }
  /* Without a GPU, a run on one says why and stops. */
  RtCuda *c = NULL;
  RtError err;
  if (rt_cuda_open(0, &c, &err) == 0) {
    rt_cuda_close(c);
    return;
  }
  tu_expect_seqc(dir,
                 "run examples/lstm.seq --backend=cuda --weights "
                 "examples/data/lstm_weights.safetensors --in x=examples/data/lstm_x.npy",
                 1, err.msg);
}

/* ---- include/seq.h with backend "cuda" ------------------------------------------------ */

/* Without a device the compile says why; with one, the GPU module's forward,
 * step and device-buffer forward equal the CPU module's. */
static void test_api(void **st) {
  (void)st;
  SeqContext *cx = seq_context_create();
  assert_non_null(cx);
  char path[1024], weights[1024];
  snprintf(path, sizeof path, "%s/examples/lstm.seq", SEQ_SOURCE_DIR);
  snprintf(weights, sizeof weights, "%s/examples/data/lstm_weights.safetensors", SEQ_SOURCE_DIR);
  SeqOptions o = {0};
  o.weights_path = weights;
  o.backend = "tpu";
  SeqModule *m = NULL;
  assert_int_equal(seq_module_from_file(cx, path, &o, &m), SEQ_ERR_ARG);
  assert_non_null(strstr(seq_module_error(m), "unknown backend 'tpu'"));
  seq_module_destroy(m);
  /* Device buffers need a CUDA module, whatever their type. */
  o.backend = NULL;
  assert_int_equal(seq_module_from_file(cx, path, &o, &m), SEQ_OK);
  assert_int_equal(
      seq_module_forward_device_io(m, NULL, SEQ_DTYPE_BF16, 1, 1, NULL, NULL, NULL, NULL, NULL),
      SEQ_ERR_ARG);
  assert_non_null(strstr(seq_module_error(m), "compiled for \"cuda\""));
  seq_module_destroy(m);
  o.backend = "cuda";
  RtCuda *c = NULL;
  RtError err;
  if (rt_cuda_open(0, &c, &err)) {
    assert_int_equal(seq_module_from_file(cx, path, &o, &m), SEQ_ERR_DEVICE);
    assert_non_null(strstr(seq_module_error(m), err.msg));
    seq_module_destroy(m);
    seq_context_destroy(cx);
    return;
  }
  rt_cuda_close(c);
  SeqModule *g = NULL, *h = NULL;
  assert_int_equal(seq_module_from_file(cx, path, &o, &g), SEQ_OK);
  o.backend = NULL;
  assert_int_equal(seq_module_from_file(cx, path, &o, &h), SEQ_OK);
  SeqTensorInfo xi, yi;
  assert_int_equal(seq_module_info(h, SEQ_INPUT, 0, &xi), SEQ_OK);
  assert_int_equal(seq_module_info(h, SEQ_OUTPUT, 0, &yi), SEQ_OK);
  enum { B = 3, T = 17 };
  float *x = calloc((size_t)(B * T * xi.numel), sizeof *x);
  float *yg = calloc((size_t)(B * T * yi.numel), sizeof *yg);
  float *yh = calloc((size_t)(B * T * yi.numel), sizeof *yh);
  assert_true(x && yg && yh);
  for (int64_t k = 0; k < B * T * xi.numel; k++) x[k] = (float)fc_urand();
  const void *ins[1] = {x};
  float *og[1] = {yg}, *oh[1] = {yh};
  assert_int_equal(seq_module_forward(g, B, T, ins, NULL, NULL, og, NULL), SEQ_OK);
  assert_int_equal(seq_module_forward(h, B, T, ins, NULL, NULL, oh, NULL), SEQ_OK);
  for (int64_t k = 0; k < B * T * yi.numel; k++) assert_true(fabsf(yg[k] - yh[k]) < 1e-4f);
  /* One step equals the first token of the forward. */
  memset(yg, 0, sizeof *yg * (size_t)(B * T * yi.numel));
  float *x0 = calloc((size_t)(B * xi.numel), sizeof *x0);
  assert_non_null(x0);
  for (int b = 0; b < B; b++)
    memcpy(x0 + b * xi.numel, x + (int64_t)b * T * xi.numel, sizeof *x0 * (size_t)xi.numel);
  const void *ins0[1] = {x0};
  assert_int_equal(seq_module_step(g, B, ins0, NULL, og, NULL), SEQ_OK);
  for (int b = 0; b < B; b++)
    for (int64_t k = 0; k < yi.numel; k++)
      assert_true(fabsf(yg[b * yi.numel + k] - yh[(int64_t)b * T * yi.numel + k]) < 1e-4f);
  free(x0);
  free(x);
  free(yg);
  free(yh);
  seq_module_destroy(g);
  seq_module_destroy(h);
  seq_context_destroy(cx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_what_the_gpu_cannot_run_is_refused),
      cmocka_unit_test(test_cli),
      cmocka_unit_test(test_api),
      cmocka_unit_test(test_every_program_compiles_with_nvrtc),
      cmocka_unit_test(test_emulated_attention_long),
      cmocka_unit_test(test_emulated_over_lengths),
      cmocka_unit_test(test_emulated_16bit_io),
      cmocka_unit_test(test_emulated_programs_equal_interpreter),
      cmocka_unit_test(test_emulated_newton_equals_interpreter),
      cmocka_unit_test(test_gpu_programs_equal_interpreter),
  };
  /* CUDA_CASE=N >= 0 (debugging one case): only the emulated comparison;
   * CUDA_NEWTON=N the same for Newton case N; CUDA_IO=1 only the 16-bit
   * inputs and outputs. CUDA_CASE=-1 runs every test but the emulated
   * comparisons of the cases and Newton solves. */
  if (getenv("CUDA_CASE") && atoi(getenv("CUDA_CASE")) >= 0) {
    const struct CMUnitTest one[] = {cmocka_unit_test(test_emulated_programs_equal_interpreter)};
    return cmocka_run_group_tests(one, NULL, NULL);
  }
  if (getenv("CUDA_IO")) { /* only the 16-bit inputs and outputs */
    const struct CMUnitTest one[] = {cmocka_unit_test(test_emulated_16bit_io)};
    return cmocka_run_group_tests(one, NULL, NULL);
  }
  if (getenv("CUDA_NEWTON")) {
    const struct CMUnitTest one[] = {cmocka_unit_test(test_emulated_newton_equals_interpreter)};
    return cmocka_run_group_tests(one, NULL, NULL);
  }
  /* CUDA_TESTS=emulated runs the emulated comparisons only, =rest the
   * others: CTest runs the two halves as two tests, side by side. */
  const char *part = getenv("CUDA_TESTS");
  if (part && !strcmp(part, "emulated")) cmocka_set_test_filter("test_emulated_*");
  if (part && !strcmp(part, "rest")) cmocka_set_skip_filter("test_emulated_*");
  return cmocka_run_group_tests(tests, NULL, NULL);
}
