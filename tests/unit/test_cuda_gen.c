/* test_cuda_gen.c - the CUDA backend (cudagen/, runtime/cuda_exec.c) on a
 * machine with or without a GPU:
 *   - every example's and std cell's CUDA C, under each form the GPU runs
 *     (the step loop, and the scan form where the class admits it),
 *     compiles with NVRTC to cubins for sm_80 and sm_90 (NVRTC runs ptxas);
 *   - the same programs run through the executor on the tests' CPU
 *     emulation of CUDA (tests/cuda_emu/) equal the interpreter, with and
 *     without lengths and initial states, T from 1 to 200;
 *   - on a machine with a CUDA device, the same comparison on the device;
 *   - what the GPU cannot run yet (chunked forms, Newton layers) is refused
 *     by name, never run wrongly.
 * Tolerances are the CPU forms' (test_codegen_forms.c): within 1e-5 plus
 * four times the float32 interpreter's own error of the float64 one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"
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
    {"stdlib/lstm.seq", "I=3,H=4"},
    {"stdlib/gru.seq", "I=3,H=4"},
    {"stdlib/rnn.seq", "I=3,H=4"},
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
    {"stdlib/slstm.seq", "I=3,H=4"},
    {"stdlib/gam.seq", "D=3,Mem=4,K=3"},
    {"stdlib/rwkv7.seq", "C=4,D_w=3,D_a=3,D_g=3"},
    {"stdlib/plstm.seq", "I=3,Dk=4,Dv=5,J=2"},
    {"stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/gated_deltanet.seq", "I=3,NH=2,Dk=4,Dv=5"},
    {"stdlib/deltaproduct.seq", "I=3,Dk=4,Dv=5"},
    {"stdlib/paragru.seq", "I=3,H=4"},
    {"stdlib/paralstm.seq", "I=3,H=4"},
    {"tests/data/models/reversed_forms.seq", "I=3,H=4,NH=2,D=4"},
    /* Wider than a block: rows and scans stride over more than one pass
     * of the threads. */
    {"stdlib/mingru.seq", "I=3,H=200"},
    {"stdlib/s4d.seq", "H=150,N=16"},
    {"stdlib/lstm.seq", "I=5,H=70"},
};
enum { NCASES = sizeof CASES / sizeof CASES[0] };

/* The forms the GPU runs: the step loop everywhere, its auto (the scan form
 * where the class admits it), and the chunked form of matrix states. */
static const char *const FORMS[] = {"sequential", "auto", "chunked"};
enum { NFORMS = 3 };

static const int64_t TS[] = {1, 3, 33, 200};

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
  DrvWeights w;
} Compiled;

static int parse_dims(Arena *a, const char *dims, const char **names, int64_t *values) {
  int n = 0;
  char *spec = arena_strdup(a, dims);
  for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  return n;
}

/* Renders c's CUDA program under `form`; 0, 1 when no state of c has that
 * form or the GPU does not run it yet (the delta rule's WY form), or -1
 * with diagnostics. */
static int compile(Compiled *cm, const Case *c, const char *form) {
  memset(cm, 0, sizeof *cm);
  cm->arena = arena_create();
  srcmgr_init(&cm->sm, cm->arena);
  diag_init(&cm->de, cm->arena, NULL);
  pipeline_init(&cm->pipe, cm->arena, &cm->sm, &cm->de);
  const char *names[16];
  int64_t values[16];
  int n = parse_dims(cm->arena, c->dims, names, values);
  StrategyRequest *req = arena_calloc(cm->arena, 1, sizeof *req);
  char err[256];
  if (strategy_parse(cm->arena, form, req, err, sizeof err)) fail_msg("%s", err);
  PipeOptions po = {0};
  po.path = tu_src(c->file);
  po.ndims = n;
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = req;
  po.cuda = 1;
  po.goal = PIPE_BOUND;
  if (pipeline_run(&cm->pipe, &po)) return -1;
  if (ir_binding_random(&cm->pipe.bind, 5, &cm->de)) return -1;
  /* Stable recurrences, as trained ones are (test_codegen_forms.c). */
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; i < b->flat.params.n; i++)
    if (strcmp(b->flat.params.v[i].name, "Lambda_re") == 0 ||
        strcmp(b->flat.params.v[i].name, "decay") == 0)
      for (int64_t k = 0; k < rt_numel(&b->weights[i]); k++)
        ((double *)b->weights[i].data)[k] = -fabs(((double *)b->weights[i].data)[k]);
  po.goal = PIPE_CUDA;
  if (pipeline_run(&cm->pipe, &po)) {
    for (int i = 0; i < cm->de.diags.n; i++)
      if (strstr(cm->de.diags.v[i].message, "has that form") ||
          strstr(cm->de.diags.v[i].message, "cannot run the chunked WY form"))
        return 1;
    return -1;
  }
  return drv_weights_from_binding(&cm->pipe.sched->sig, &cm->pipe.bind, &cm->w, &cm->de);
}

static void release(Compiled *cm) {
  IrBinding *b = &cm->pipe.bind;
  for (int i = 0; b->weights && i < b->flat.params.n; i++) rt_tensor_free(&b->weights[i]);
  drv_weights_free(&cm->w);
  pipeline_release(&cm->pipe);
  arena_destroy(cm->arena);
}

static void print_diags(const Compiled *cm) {
  for (int i = 0; i < cm->de.diags.n; i++) print_error("%s\n", cm->de.diags.v[i].message);
}

/* ---- NVRTC: every program compiles for sm_80 and sm_90 ----------------------------- */

/* NVRTC is part of the CUDA toolkit: where the toolkit is installed it must
 * load; where there is none the compile checks skip. */
static int nvrtc_present(void) {
  int major = 0, minor = 0;
  RtError err;
  if (rt_nvrtc_version(&major, &minor, &err) == 0) return 1;
  if (access("/usr/local/cuda", F_OK) == 0) fail_msg("the CUDA toolkit is here but %s", err.msg);
  print_message("no CUDA toolkit: %s; the NVRTC checks skip\n", err.msg);
  return 0;
}

static void test_every_program_compiles_with_nvrtc(void **st) {
  (void)st;
  if (!nvrtc_present()) {
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
    for (int k = 0; k < NCASES; k++)
      for (int f = 0; f < NFORMS; f++) {
        if (round && k > 2) continue;
        Compiled cm;
        int rc = compile(&cm, &CASES[k], FORMS[f]);
        if (rc < 0) {
          print_diags(&cm);
          fail_msg("%s --strategy=%s does not render for CUDA", CASES[k].file, FORMS[f]);
        }
        if (rc > 0) {
          release(&cm);
          continue;
        }
        static const char *const archs[] = {"sm_80", "sm_90"};
        for (int a = 0; a < 2; a++) {
          RtBlob bin = {0};
          RtError err;
          if (rt_nvrtc_compile(cm.pipe.cuda->source, cm.pipe.sched->sig.symbol, archs[a], 1, &bin,
                               &err))
            fail_msg("%s --strategy=%s for %s: %s", CASES[k].file, FORMS[f], archs[a], err.msg);
          assert_true(bin.size > 0);
          rt_blob_free(&bin);
        }
        release(&cm);
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

static double get(const RtTensor *t, int64_t k) {
  return t->dtype == RT_F64 ? ((double *)t->data)[k] : ((float *)t->data)[k];
}

static void check(const char *what, const RtTensor *got, const RtTensor *ref32,
                  const RtTensor *ref64) {
  int64_t n = rt_numel(got);
  assert_int_equal(n, rt_numel(ref64));
  double e = 0, e32 = 0;
  for (int64_t k = 0; k < n; k++) {
    double g = get(got, k), r = get(ref64, k), r32 = get(ref32, k);
    if (isnan(g) != isnan(r)) fail_msg("%s: NaN at %lld", what, (long long)k);
    if (isnan(r)) continue;
    e = fmax(e, fabs(g - r));
    e32 = fmax(e32, fabs(r32 - r));
  }
  double tol = 1e-5 + 4 * e32;
  if (!(e <= tol))
    fail_msg("%s: off the float64 interpreter by %g > %g (float32 interpreter: %g)", what, e, tol,
             e32);
}

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

/* Runs case c under every form on the device `dev_of` gives, against the
 * interpreter. */
typedef int (*DeviceFor)(Compiled *cm, RtCuDevice *dev, void **handle);
typedef void (*DeviceDone)(void *handle);

static void run_case(const Case *c, DeviceFor dev_for, DeviceDone dev_done) {
  Compiled cm[NFORMS];
  void *handle[NFORMS] = {0};
  RtCuDevice dev[NFORMS];
  int have[NFORMS];
  for (int f = 0; f < NFORMS; f++) {
    int rc = compile(&cm[f], c, FORMS[f]);
    if (rc < 0) {
      print_diags(&cm[f]);
      fail_msg("%s --strategy=%s does not render for CUDA", c->file, FORMS[f]);
    }
    have[f] = rc == 0;
    if (have[f] && dev_for(&cm[f], &dev[f], &handle[f])) fail_msg("%s: no device program", c->file);
  }
  const IrBinding *b = &cm[0].pipe.bind;
  const IrFunc *root = b->root;
  int ni = root->inputs.n, no = root->outputs.n, ns = b->flat.states.n;
  assert_true(no <= 8 && ns <= 16 && ni <= 8);
  for (size_t ti = 0; ti < sizeof TS / sizeof TS[0]; ti++)
    for (int64_t B = 1; B <= 5; B += 4)
      for (int variant = 0; variant < 2; variant++) {
        int64_t T = TS[ti];
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
        for (int64_t k = 0; k < B; k++) {
          lengths[k] = (T * (k + 1)) / B - (k % 2);
          if (lengths[k] < 0) lengths[k] = 0;
        }
        const int64_t *len = variant ? lengths : NULL;
        RtTensor o32[8], o64[8], s32[16], s64[16];
        InterpOptions i32 = {0}, i64 = {.f64 = 1};
        if (interp_run(b, B, T, ins, len, variant ? sin : NULL, o32, s32, &i32, &cm[0].de) ||
            interp_run(b, B, T, ins, len, variant ? sin : NULL, o64, s64, &i64, &cm[0].de)) {
          print_diags(&cm[0]);
          fail_msg("%s: the interpreter fails", c->file);
        }
        for (int f = 0; f < NFORMS; f++) {
          if (!have[f]) continue;
          RtTensor og[8], sg[16];
          cur.prog = cm[f].pipe.cuda;
          cur.dev = dev[f];
          if (drv_run(&cm[f].pipe.sched->sig, forward, &cm[f].w, &cm[f].pipe.bind, B, T, ins, len,
                      variant ? sin : NULL, og, sg, &cm[f].de)) {
            print_diags(&cm[f]);
            fail_msg("%s --strategy=%s does not run", c->file, FORMS[f]);
          }
          char what[512];
          for (int k = 0; k < no; k++) {
            snprintf(what, sizeof what, "%s --strategy=%s output %s B=%lld T=%lld variant=%d",
                     c->file, FORMS[f], root->outputs.v[k].name, (long long)B, (long long)T,
                     variant);
            check(what, &og[k], &o32[k], &o64[k]);
            rt_tensor_free(&og[k]);
          }
          for (int k = 0; k < ns; k++) {
            snprintf(what, sizeof what, "%s --strategy=%s state %s B=%lld T=%lld variant=%d",
                     c->file, FORMS[f], b->flat.states.v[k].name, (long long)B, (long long)T,
                     variant);
            check(what, &sg[k], &s32[k], &s64[k]);
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
  for (int f = 0; f < NFORMS; f++) {
    if (have[f]) dev_done(handle[f]);
    release(&cm[f]);
  }
}

static int emu_for(Compiled *cm, RtCuDevice *dev, void **handle) {
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
  for (int k = 0; k < NCASES; k++)
    if (!one || atoi(one) == k) run_case(&CASES[k], emu_for, emu_done);
}

/* ---- on a real device, where there is one --------------------------------------- */

static RtCuda *gpu;

static int gpu_for(Compiled *cm, RtCuDevice *dev, void **handle) {
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
  for (int k = 0; k < NCASES; k++) run_case(&CASES[k], gpu_for, gpu_done);
  rt_cuda_close(gpu);
  gpu = NULL;
}

/* ---- refusals ------------------------------------------------------------------------ */

static void expect_refused(const char *file, const char *dims, const char *form,
                           const char *needle) {
  Compiled cm;
  Case c = {file, dims};
  assert_int_not_equal(compile(&cm, &c, form), 0);
  int found = 0;
  for (int i = 0; i < cm.de.diags.n; i++) found |= strstr(cm.de.diags.v[i].message, needle) != NULL;
  if (!found) {
    print_diags(&cm);
    fail_msg("%s --strategy=%s: no diagnostic saying '%s'", file, form, needle);
  }
  release(&cm);
}

static void test_what_the_gpu_cannot_run_is_refused(void **st) {
  (void)st;
  expect_refused("stdlib/deltanet.seq", "I=3,NH=2,Dk=4,Dv=5", "chunked",
                 "the CUDA backend cannot run the chunked WY form of the delta rule");
  expect_refused("tests/data/models/newton_layers.seq", "I=3,H=4", "newton",
                 "the CUDA backend cannot run a Newton layer");
}

/* ---- the command line ---------------------------------------------------------------- */

static void test_cli(void **st) {
  (void)st;
  const char *dir = SEQ_SOURCE_DIR;
  tu_expect_seqc(dir, "--emit=cuda stdlib/lstm.seq --dims I=3,H=4", 0, "extern \"C\" __global__");
  tu_expect_seqc(dir, "--emit=cuda --target=cpu stdlib/lstm.seq --dims I=3,H=4", 2,
                 "--emit=cuda is the CUDA target's");
  tu_expect_seqc(dir,
                 "--emit=cuda stdlib/deltanet.seq --dims I=3,NH=2,Dk=4,Dv=5 "
                 "--strategy=chunked",
                 1, "the CUDA backend cannot run the chunked WY form");
  if (nvrtc_present()) {
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
  for (int64_t k = 0; k < B * T * xi.numel; k++) x[k] = (float)urand();
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
      cmocka_unit_test(test_emulated_programs_equal_interpreter),
      cmocka_unit_test(test_gpu_programs_equal_interpreter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
