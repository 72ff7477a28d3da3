/* test_cuda_aot.c - shared objects for the GPU (`seqc --target=cuda -o
 * libNAME.so`; docs/cuda.md, "Shared objects for the GPU"), on a machine
 * with or without a GPU:
 *   - the plan's byte format: every std cell and example round-trips field
 *     by field; truncated, damaged and crafted blobs are refused with a
 *     message (never a crash);
 *   - the choice of image for a device's architecture;
 *   - libNAME.so for a few cells and a model with layers: it needs neither
 *     NVRTC nor libcuda (dlopen only), exports the ABI (step only where the
 *     CPU's has it), its header compiles, its plan is the pipeline's, and
 *     without a driver a call returns the device status and says why;
 *   - its plan, read back from the .so, runs on the tests' CPU emulation of
 *     CUDA (tests/unit/cuda_emu.h) and equals the interpreter;
 *   - the whole .so (lazy loading, image choice, forward, forward_blob,
 *     step, forward_device, error statuses) runs against a stand-in
 *     libcuda.so.1 built here whose launches run the emulated kernels.
 * Tolerances are test_cuda_gen.c's (formcheck.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "formcheck.h"
#include "cuda_emu.h"
#include "fake_streams.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cuda.h"

static const FcCase LSTM = {"stdlib/lstm.seq", "I=3,H=4"};
static const FcCase MINGRU = {"stdlib/mingru.seq", "I=3,H=4"};
static const FcCase MAMBA = {"stdlib/mamba_ssm.seq", "d_inner=4,d_state=3,dt_rank=2"};
static const FcCase BIGRU = {"examples/bigru.seq", "I=3,H=4"};
static const FcCase PARAGRU = {"stdlib/paragru.seq", "I=3,H=4"};

/* ---- compiling ------------------------------------------------------------------- */

/* Renders c for the GPU under `form` (PIPE_CUDA), or with so_path builds
 * libNAME.so too, with random weights bound (PIPE_OBJECT). Fails the test
 * on an error. */
static void compile(FcCompiled *cm, const FcCase *c, const char *form, const char *so_path) {
  PipeOptions po;
  fc_begin(cm, c, form, &po);
  po.cuda = 1;
  int rc = pipeline_run(&cm->pipe, &po);
  if (rc == 0 && so_path) {
    rc = ir_binding_random(&cm->pipe.bind, 5, &cm->de);
    po.goal = PIPE_OBJECT;
    po.emit = CG_EMIT_SO;
    po.out_path = so_path;
  } else {
    po.goal = PIPE_CUDA;
  }
  if (rc == 0) rc = pipeline_run(&cm->pipe, &po);
  if (rc == 0 && so_path)
    rc = drv_weights_from_binding(&cm->pipe.sched->sig, &cm->pipe.bind, &cm->w, &cm->de);
  if (rc) {
    fc_print_diags(cm);
    fail_msg("%s --strategy=%s does not %s", c->file, form, so_path ? "build" : "render");
  }
}

/* ---- the plan's format ---------------------------------------------------------- */

#define SAME(field) assert_true(a->field == b->field)

static void same_programs(const RtCuProgram *a, const RtCuProgram *b) {
  assert_string_equal(a->source, b->source);
  SAME(nkernels);
  for (int k = 0; k < a->nkernels; k++) assert_string_equal(a->kernels[k], b->kernels[k]);
  SAME(ninsts);
  SAME(nparams);
  SAME(ninputs);
  SAME(noutputs);
  SAME(nstates);
  for (int j = 0; j < a->nparams; j++) SAME(param_floats[j]);
  for (int j = 0; j < a->ninputs; j++) SAME(input_floats[j]);
  for (int j = 0; j < a->ninputs; j++) SAME(input_is_int[j]);
  for (int j = 0; j < a->ninputs; j++) SAME(input_context[j]);
  for (int j = 0; j < a->noutputs; j++) SAME(output_floats[j]);
  for (int j = 0; j < a->nstates; j++) SAME(state_floats[j]);
  for (int i = 0; i < a->ninsts; i++) {
    SAME(insts[i].ninputs);
    SAME(insts[i].nstates);
    SAME(insts[i].noutputs);
    SAME(insts[i].nbufs);
    SAME(insts[i].nsteps);
    for (int k = 0; k < a->insts[i].nbufs; k++) {
      SAME(insts[i].bufs[k].rows);
      SAME(insts[i].bufs[k].row_floats);
    }
    for (int k = 0; k < a->insts[i].nstates; k++) SAME(insts[i].state_buf[k]);
    for (int s = 0; s < a->insts[i].nsteps; s++) {
      const RtCuStep *x = &a->insts[i].steps[s], *y = &b->insts[i].steps[s];
      assert_int_equal(x->kind, y->kind);
      if (x->kind == RT_CU_STEP_LAUNCH) {
        assert_int_equal(x->kernel, y->kernel);
        assert_int_equal(x->grid, y->grid);
        assert_int_equal(x->n, y->n);
        assert_int_equal(x->per, y->per);
        assert_int_equal(x->block, y->block);
        continue;
      }
      assert_int_equal(x->inst, y->inst);
      assert_int_equal(x->reverse, y->reverse);
      assert_int_equal(x->over, y->over);
      if (x->over) {
        assert_int_equal(x->over_lengths.kind, y->over_lengths.kind);
        assert_int_equal(x->over_lengths.index, y->over_lengths.index);
      }
      const RtCuInst *ci = &a->insts[x->inst];
      const RtCuNewton *nx = x->newton, *ny = y->newton;
      int nargs = ci->ninputs, nouts = ci->noutputs;
      if (x->kind == RT_CU_STEP_NEWTON) {
        nargs -= nx->n * (nx->dense ? 2 : 1);
        nouts = nx->n;
        assert_int_equal(nx->n, ny->n);
        assert_int_equal(nx->dense, ny->dense);
        assert_int_equal(nx->max_iter, ny->max_iter);
        assert_true(nx->rtol == ny->rtol && nx->atol == ny->atol);
        assert_int_equal(nx->w, ny->w);
        assert_int_equal(nx->kernel, ny->kernel);
        assert_int_equal(nx->ordered, ny->ordered);
        for (int k = 0; k < nx->n; k++) {
          assert_int_equal(nx->h0[k].kind, ny->h0[k].kind);
          assert_int_equal(nx->h0[k].index, ny->h0[k].index);
          assert_int_equal(nx->h0_per_example[k], ny->h0_per_example[k]);
        }
        for (int j = 0; j < nargs; j++) {
          assert_int_equal(nx->in_rows[j], ny->in_rows[j]);
          assert_int_equal(nx->in_floats[j], ny->in_floats[j]);
        }
      }
      for (int j = 0; j < nargs; j++) {
        assert_int_equal(x->args[j].kind, y->args[j].kind);
        assert_int_equal(x->args[j].index, y->args[j].index);
      }
      for (int j = 0; j < nouts; j++) assert_int_equal(x->outs[j], y->outs[j]);
    }
  }
}

static void test_plan_round_trip(void **st) {
  (void)st;
  static const char *const forms[] = {"sequential", "auto", "newton"};
  /* Beside every std cell and example, one with context inputs (their
   * flags) and one with Newton layers (their solves). */
  static const FcCase ctx = {"examples/attention_decoder.seq", "I=3,H=4,S=5,A=3"};
  static const FcCase nt = {"tests/data/models/newton_layers.seq", "I=3,H=4"};
  static const FcCase s2s = {"tests/data/models/seq2seq.seq", "I_src=3,I=2,H=4,S=5"};
  size_t total = 0;
  int n = 0;
  for (int k = 0; k <= FC_NCASES + 2; k++)
    for (int f = 0; f < 3; f++) {
      const FcCase *c = k < FC_NCASES        ? &FC_CASES[k]
                        : k == FC_NCASES     ? &ctx
                        : k == FC_NCASES + 1 ? &nt
                                             : &s2s;
      if ((f == 2) != (k == FC_NCASES + 1)) continue;
      FcCompiled cm;
      compile(&cm, c, forms[f], NULL);
      RtBlob blob = {0}, again = {0};
      RtCuProgram *p = NULL;
      RtError err;
      assert_int_equal(rt_cu_program_write(cm.pipe.cuda, &blob), 0);
      if (rt_cu_program_read(blob.data, blob.size, &p, &err))
        fail_msg("%s --strategy=%s: %s", c->file, forms[f], err.msg);
      same_programs(cm.pipe.cuda, p);
      if (k == FC_NCASES) assert_int_equal(p->input_context[1], 1); /* memory */
      int solves = 0;
      for (int i = 0; i < p->ninsts; i++)
        for (int j = 0; j < p->insts[i].nsteps; j++)
          solves += p->insts[i].steps[j].kind == RT_CU_STEP_NEWTON;
      assert_int_equal(solves, k == FC_NCASES + 1 ? 3 : 0);
      /* seq2seq's encoder: two layers over the source's positions, with lengths. */
      int overs = 0;
      for (int i = 0; i < p->ninsts; i++)
        for (int j = 0; j < p->insts[i].nsteps; j++)
          overs += p->insts[i].steps[j].over == 5 &&
                   p->insts[i].steps[j].over_lengths.kind == RT_CU_ARG_INPUT;
      assert_int_equal(overs, k == FC_NCASES + 2 ? 2 : 0);
      /* What was read writes the same bytes. */
      assert_int_equal(rt_cu_program_write(p, &again), 0);
      assert_int_equal(again.size, blob.size);
      assert_memory_equal(again.data, blob.data, blob.size);
      total += blob.size;
      n++;
      rt_blob_free(&again);
      rt_blob_free(&blob);
      rt_cu_program_free(p);
      fc_release(&cm);
    }
  print_message("%d plans, %zu bytes on average (with their CUDA C)\n", n, total / (size_t)n);
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* Puts a valid hash back, so that what follows is checked by structure. */
static void rehash(unsigned char *b, size_t n) {
  uint64_t h = fnv1a(b + 32, n - 32);
  for (int i = 0; i < 8; i++) b[24 + i] = (unsigned char)(h >> (8 * i));
}

static void expect_refused(const void *data, size_t n, const char *needle, const char *what) {
  RtCuProgram *p = (RtCuProgram *)1;
  RtError err = {{0}};
  int rc = rt_cu_program_read(data, n, &p, &err);
  if (rc != RT_ERR_FORMAT) fail_msg("%s: read gives %d, not RT_ERR_FORMAT", what, rc);
  assert_null(p);
  if (strncmp(err.msg, "CUDA plan: ", 11) != 0 || (needle && !strstr(err.msg, needle)))
    fail_msg("%s: message '%s' (want '%s')", what, err.msg, needle ? needle : "CUDA plan: ...");
}

/* A copy of p's step (inst i, step s) edited by `edit`, written: the bytes
 * of a program the renderer would never make. */
static void expect_crafted_refused(const RtCuProgram *p, int i, int s, int kernel, int inst,
                                   int arg_index, const char *needle) {
  RtCuProgram q = *p;
  RtCuInst *insts = calloc((size_t)p->ninsts, sizeof *insts);
  RtCuStep *steps = calloc((size_t)p->insts[i].nsteps, sizeof *steps);
  RtCuArg args[16];
  assert_non_null(insts);
  assert_non_null(steps);
  memcpy(insts, p->insts, (size_t)p->ninsts * sizeof *insts);
  memcpy(steps, p->insts[i].steps, (size_t)p->insts[i].nsteps * sizeof *steps);
  insts[i].steps = steps;
  q.insts = insts;
  RtCuStep *st = &steps[s];
  if (kernel >= 0) st->kernel = kernel;
  if (inst >= 0) st->inst = inst;
  if (arg_index >= 0) {
    int na = p->insts[st->inst].ninputs;
    assert_true(na >= 1 && na <= 16);
    memcpy(args, st->args, (size_t)na * sizeof *args);
    args[0].index = arg_index;
    st->args = args;
  }
  RtBlob b = {0};
  if (rt_cu_program_write(&q, &b) == 0) {
    expect_refused(b.data, b.size, needle, needle);
    rt_blob_free(&b);
  }
  free(steps);
  free(insts);
}

/* Changes one byte of blob b past the source (where the structure is), the
 * hash put back, `tries` times: each is refused by name or read, and most
 * are refused. */
static void changed_bytes(const unsigned char *b, size_t n, const char *source, int tries) {
  unsigned char *c = malloc(n + 1);
  assert_non_null(c);
  size_t from = 32 + 4 + strlen(source);
  int refused = 0;
  for (int t = 0; t < tries; t++) {
    memcpy(c, b, n);
    size_t k = from + (size_t)((fc_urand() * 0.5 + 0.5) * (double)(n - from - 1));
    c[k] = (unsigned char)(t % 3 == 0 ? 0xff : t % 3 == 1 ? c[k] + 1 : c[k] ^ 0x80);
    rehash(c, n);
    RtCuProgram *q = NULL;
    RtError err;
    if (rt_cu_program_read(c, n, &q, &err) == 0)
      rt_cu_program_free(q);
    else
      refused += strncmp(err.msg, "CUDA plan: ", 11) == 0;
  }
  print_message("%d of %d plans with a changed byte (hash put back) refused\n", refused, tries);
  assert_true(refused > tries / 2);
  free(c);
}

static void test_plan_damaged(void **st) {
  (void)st;
  /* A model with layers: its plan has calls, with arguments and outputs. */
  FcCompiled cm;
  compile(&cm, &BIGRU, "auto", NULL);
  const RtCuProgram *p = cm.pipe.cuda;
  RtBlob blob = {0};
  assert_int_equal(rt_cu_program_write(p, &blob), 0);
  unsigned char *b = blob.data;
  size_t n = blob.size;
  unsigned char *c = malloc(n + 1);
  assert_non_null(c);
  char what[64];
  /* Every truncation, and a byte too many. */
  for (size_t k = 0; k < n; k++) {
    snprintf(what, sizeof what, "truncated to %zu bytes", k);
    expect_refused(b, k, k < 32 ? NULL : "truncated", what);
  }
  memcpy(c, b, n);
  c[n] = 0;
  expect_refused(c, n + 1, "padded", "a byte too many");
  /* A changed byte anywhere: the magic, the version, the size or the hash
   * (the header), or the contents (the hash). */
  for (size_t k = 0; k < n; k += k < 64 ? 1 : 7) {
    memcpy(c, b, n);
    c[k] ^= 0x20;
    snprintf(what, sizeof what, "byte %zu changed", k);
    expect_refused(c, n, NULL, what);
  }
  memcpy(c, b, n);
  c[8] = 4; /* a later version: this runtime reads 3 */
  expect_refused(c, n, "format version 4", "version 4");
  c[8] = 2; /* the version before Newton steps */
  expect_refused(c, n, "format version 2", "version 2");
  /* Changed bytes with the hash put back: the structure is checked, and a
   * blob is refused or read, never a crash (run under ASan in the
   * sanitizer build), for this plan and one with Newton solves. */
  changed_bytes(b, n, p->source, 3000);
  FcCompiled nm;
  FcCase newton = {"tests/data/models/newton_layers.seq", "I=3,H=4"};
  compile(&nm, &newton, "newton", NULL);
  RtBlob nb = {0};
  assert_int_equal(rt_cu_program_write(nm.pipe.cuda, &nb), 0);
  changed_bytes(nb.data, nb.size, nm.pipe.cuda->source, 1000);
  rt_blob_free(&nb);
  fc_release(&nm);
  /* Programs the renderer never makes: a kernel out of range, a call to
   * its own caller (recursion), an argument out of range. */
  int li = -1, ls = -1, ci = -1, cs = -1;
  for (int i = 0; i < p->ninsts; i++)
    for (int s = 0; s < p->insts[i].nsteps; s++) {
      if (p->insts[i].steps[s].kind == RT_CU_STEP_LAUNCH && li < 0) li = i, ls = s;
      if (p->insts[i].steps[s].kind == RT_CU_STEP_CALL && ci < 0) ci = i, cs = s;
    }
  assert_true(li >= 0 && ci >= 0);
  expect_crafted_refused(p, li, ls, p->nkernels, -1, -1, "launches kernel");
  expect_crafted_refused(p, ci, cs, -1, ci, -1, "calls instance");
  expect_crafted_refused(p, ci, cs, -1, -1, 1000, "passes argument 0");
  free(c);
  rt_blob_free(&blob);
  fc_release(&cm);
}

/* ---- the image for a device -------------------------------------------------------- */

static void expect_pick(const char *device, const char *want) {
  static const RtCuImage images[] = {
      {"sm_80", "", 1}, {"sm_86", "", 1},   {"sm_90a", "", 1},
      {"sm_90", "", 1}, {"sm_100f", "", 1}, {"compute_80", "", 1},
  };
  int order[8];
  int n = rt_cu_aot_pick(images, 6, device, order);
  char got[200] = "";
  for (int i = 0; i < n; i++) {
    strcat(got, i ? " " : "");
    strcat(got, images[order[i]].arch);
  }
  if (strcmp(got, want) != 0) fail_msg("device %s: picked '%s', want '%s'", device, got, want);
}

static void test_image_choice(void **st) {
  (void)st;
  expect_pick("sm_80", "sm_80 compute_80");
  expect_pick("sm_86", "sm_86 sm_80 compute_80");
  expect_pick("sm_89", "sm_86 sm_80 compute_80");
  expect_pick("sm_90", "sm_90a sm_90 compute_80");
  expect_pick("sm_100", "sm_100f compute_80");
  expect_pick("sm_103", "sm_100f compute_80");
  expect_pick("sm_120", "compute_80");
  expect_pick("sm_75", "");
  expect_pick("sm_9", "");
  expect_pick("sm_90a", "");
  expect_pick("gfx90a", "");
  const RtCuImage ptx90a[] = {{"compute_90a", "", 1}, {"compute_100f", "", 1}};
  int order[2];
  assert_int_equal(rt_cu_aot_pick(ptx90a, 2, "sm_90", order), 1);
  assert_int_equal(order[0], 0);
  assert_int_equal(rt_cu_aot_pick(ptx90a, 2, "sm_103", order), 1);
  assert_int_equal(order[0], 1);
  assert_int_equal(rt_cu_aot_pick(ptx90a, 2, "sm_120", order), 0);
}

/* ---- shared objects ---------------------------------------------------------------- */

static const char *so_path(const char *name) {
  static char buf[8][600];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 600, "%s/%s", tu_tmpdir(), name);
  return p;
}

static void *open_so(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) fail_msg("dlopen %s: %s", path, dlerror());
  return h;
}

static void *sym(void *h, const char *symbol, const char *name) {
  char full[200];
  snprintf(full, sizeof full, "%s_%s", symbol, name);
  void *f = dlsym(h, full);
  if (!f) fail_msg("%s is not exported", full);
  return f;
}

typedef const char *(*StrFn)(void);
typedef const void *(*PlanFn)(int64_t *);
typedef int32_t (*DimsFn)(int64_t *);
typedef int32_t (*BlobFn)(const float *, int64_t, int64_t, int64_t, const void *const *,
                          const int32_t *, const float *const *, float *const *, float *const *);

/* The libraries a .so needs (readelf -d): the C library's only. */
static void check_needed(const char *path) {
  char cmd[800], *out = NULL;
  snprintf(cmd, sizeof cmd, "readelf -d '%s'", path);
  if (tu_run(cmd, &out) != 0) {
    print_message("readelf not run (%s): NEEDED not checked\n", out ? out : "");
    free(out);
    return;
  }
  int n = 0;
  for (char *l = strstr(out, "(NEEDED)"); l; l = strstr(l + 1, "(NEEDED)")) {
    char *lb = strchr(l, '['), *rb = lb ? strchr(lb, ']') : NULL;
    assert_non_null(rb);
    char lib[128];
    snprintf(lib, sizeof lib, "%.*s", (int)(rb - lb - 1), lb + 1);
    int ok = strcmp(lib, "libc.so.6") == 0 || strcmp(lib, "libm.so.6") == 0 ||
             strcmp(lib, "libdl.so.2") == 0 || strcmp(lib, "libpthread.so.0") == 0 ||
             strncmp(lib, "ld-linux", 8) == 0;
    if (!ok) fail_msg("%s needs %s:\n%s", path, lib, out);
    n++;
  }
  assert_true(n >= 1);
  free(out);
}

/* The generated header compiles as C11 with every warning. */
static void check_header(const char *h) {
  char cmd[1200], *out = NULL;
  snprintf(cmd, sizeof cmd,
           "printf '#include \"%s\"\\nint main(void) { return 0; }\\n' | "
           "cc -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -x c -",
           h);
  if (tu_run(cmd, &out) != 0) fail_msg("%s does not compile:\n%s", h, out ? out : "");
  free(out);
}

typedef struct Built {
  const FcCase *c;
  const char *lib, *symbol;
  int has_step;
} Built;

static void test_shared_objects(void **st) {
  (void)st;
  if (!fc_nvrtc_present()) {
    skip();
    return;
  }
  const Built built[] = {
      {&LSTM, "liblstm.so", "lstm", 1},
      {&MINGRU, "libmingru.so", "mingru", 1},
      {&MAMBA, "libmamba_ssm.so", "mambassm", 1},
      {&BIGRU, "libbigru.so", "bigru", 0},
  };
  RtCuda *gpu = NULL;
  RtError gerr;
  int have_gpu = rt_cuda_open(0, &gpu, &gerr) == 0;
  if (have_gpu) rt_cuda_close(gpu);
  for (size_t k = 0; k < sizeof built / sizeof built[0]; k++) {
    const Built *bt = &built[k];
    const char *path = so_path(bt->lib);
    char args[1200];
    snprintf(args, sizeof args, "--target=cuda %s --dims %s -o %s", bt->c->file, bt->c->dims, path);
    tu_expect_seqc(SEQ_SOURCE_DIR, args, 0, "");
    check_needed(path);
    char h[640];
    snprintf(h, sizeof h, "%.*s.h", (int)(strlen(path) - 3), path);
    check_header(h);
    size_t hl = 0;
    char *htext = tu_read_file(h, &hl);
    assert_non_null(htext);
    assert_non_null(strstr(htext, "_forward_device("));
    assert_non_null(strstr(htext, "_ERR_DEVICE 5"));
    assert_true((strstr(htext, "_step(") != NULL) == bt->has_step);
    free(htext);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    print_message("%s: %ld bytes\n", bt->lib, ftell(f));
    fclose(f);

    void *so = open_so(path);
    /* The ABI, and nothing of the runtime. */
    AbiForwardFn fwd = (AbiForwardFn)(uintptr_t)sym(so, bt->symbol, "forward");
    BlobFn blob = (BlobFn)(uintptr_t)sym(so, bt->symbol, "forward_blob");
    sym(so, bt->symbol, "forward_device");
    DimsFn dims = (DimsFn)(uintptr_t)sym(so, bt->symbol, "dims");
    StrFn last_error = (StrFn)(uintptr_t)sym(so, bt->symbol, "last_error");
    StrFn device = (StrFn)(uintptr_t)sym(so, bt->symbol, "cuda_device");
    PlanFn plan = (PlanFn)(uintptr_t)sym(so, bt->symbol, "cuda_plan");
    char step[200];
    snprintf(step, sizeof step, "%s_step", bt->symbol);
    assert_true((dlsym(so, step) != NULL) == bt->has_step);
    assert_null(dlsym(so, "rt_cu_forward"));
    assert_null(dlsym(so, "rt_cuda_open"));
    assert_null(dlsym(so, "rt_cu_aot_forward"));
    int64_t dv[16];
    assert_true(dims(NULL) >= 2);
    assert_int_equal(dims(dv), dims(NULL));

    /* The plan embedded is the pipeline's. */
    FcCompiled cm;
    compile(&cm, bt->c, "auto", NULL);
    int64_t size = 0;
    const void *bytes = plan(&size);
    RtCuProgram *p = NULL;
    RtError err;
    if (rt_cu_program_read(bytes, (size_t)size, &p, &err)) fail_msg("%s: %s", bt->lib, err.msg);
    same_programs(cm.pipe.cuda, p);
    assert_string_equal(device(), "");

    /* Arguments are checked before the device is looked for. */
    float *w[64] = {0};
    float x[1024] = {0}, y[1024];
    const void *in[4] = {x, x, x, x};
    float *out[4] = {y, y, y, y};
    for (int j = 0; j < p->nparams; j++) w[j] = x;
    assert_int_equal(fwd((const float *const *)w, -1, 1, in, NULL, NULL, out, NULL), 1);
    assert_non_null(strstr(last_error(), "B = -1"));
    assert_int_equal(fwd(NULL, 1, 1, in, NULL, NULL, out, NULL), 1);
    assert_non_null(strstr(last_error(), "params array is NULL"));
    int32_t bad_len[1] = {5};
    assert_int_equal(fwd((const float *const *)w, 1, 2, in, bad_len, NULL, out, NULL), 4);
    assert_int_equal(blob(x, 3, 1, 1, in, NULL, NULL, out, NULL), 1);
    assert_non_null(strstr(last_error(), "a weights blob of 3 floats"));
    if (!have_gpu) {
      /* No driver or no device: the device status, and why. */
      assert_int_equal(fwd((const float *const *)w, 1, 1, in, NULL, NULL, out, NULL), 5);
      char want[700];
      snprintf(want, sizeof want, "%s: %s", bt->symbol, gerr.msg);
      assert_string_equal(last_error(), want);
      assert_string_equal(device(), "");
    }
    rt_cu_program_free(p);
    fc_release(&cm);
    dlclose(so);
  }
  /* Another copy, loaded fresh, looks for the driver where it is told. */
  char cmd[1400], *out = NULL;
  const char *copy = so_path("libmingru_copy.so");
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", so_path("libmingru.so"), copy);
  assert_int_equal(tu_run(cmd, &out), 0);
  free(out);
  setenv("SEQ_CUDA_DRIVER_LIB", "/nonexistent/libcuda.so.1", 1);
  void *so = open_so(copy);
  AbiForwardFn fwd = (AbiForwardFn)(uintptr_t)sym(so, "mingru", "forward");
  float x[64] = {0};
  const float *w[8] = {x, x, x, x, x, x, x, x};
  const void *in[1] = {x};
  float *o[1] = {x};
  assert_int_equal(fwd(w, 1, 1, in, NULL, NULL, o, NULL), 5);
  assert_string_equal(((StrFn)(uintptr_t)sym(so, "mingru", "last_error"))(),
                      "mingru: CUDA driver not found (/nonexistent/libcuda.so.1)");
  unsetenv("SEQ_CUDA_DRIVER_LIB");
  dlclose(so);
}

/* ---- running: the emulation, and a stand-in driver -------------------------------- */

/* Runs fn (an ABI forward) on cm's signature against the interpreter, T in
 * {1, 9}, B in {1, 3}, with and without lengths and initial states. */
static void against_interpreter(FcCompiled *cm, AbiForwardFn fn, const char *what) {
  cm->forward = fn;
  for (int64_t T = 1; T <= 9; T += 8)
    for (int64_t B = 1; B <= 3; B += 2)
      for (int variant = 0; variant < 2; variant++) {
        FcBatch bt;
        fc_batch_make(&bt, cm, B, T, variant);
        fc_batch_check(&bt, cm, what, 0);
        fc_batch_free(&bt);
      }
}

/* The emulated kernels drv_run's forward runs (rt_cu_forward on the plan
 * read back from a .so), and the launches of the stand-in driver. */
static struct {
  const RtCuProgram *prog;
  EmuModule *emu;
  int fail_launches;
} cur;

static int32_t emu_forward(const float *const *params, int64_t B, int64_t T,
                           const void *const *inputs, const int32_t *lengths,
                           const float *const *state_in, float *const *outputs,
                           float *const *state_out) {
  RtError err;
  RtCuDevice dev = emu_device(cur.emu);
  int rc = rt_cu_forward(cur.prog, &dev, params, B, T, inputs, lengths, state_in, outputs,
                         state_out, &err);
  if (rc < 0) print_error("emulated device: %s\n", err.msg);
  return rc < 0 ? 2 : rc;
}

static int fake_launch(const char *kernel, unsigned grid, unsigned block, const long long *frame) {
  char msg[1024];
  if (cur.fail_launches) return 1;
  int rc = emu_launch_name(cur.emu, kernel, grid, block, frame, msg, sizeof msg);
  if (rc) print_error("%s\n", msg);
  return rc;
}

/* A stand-in for libcuda.so.1, built here with the system's C compiler:
 * memory is host memory, a module is any image (it records whether it got
 * an ELF cubin or PTX text) and a launch calls the hook the test sets, which
 * runs the kernel on the emulation. FAKE_DEVICES (1), FAKE_CC (90),
 * FAKE_REJECT_CUBIN and FAKE_OOM are read at every call. */
static const char *const fake_driver[] = {
    "#include <stdint.h>",
    "#include <stdlib.h>",
    "#include <string.h>",
    "typedef unsigned long long P;",
    FAKE_DRIVER_STREAMS "typedef int (*Hook)(const char *, unsigned, unsigned, const long long *);",
    "static int allocs, ctx_obj;",
    "static Hook hook;",
    "static char loaded[16];",
    "void fake_set_launch(Hook h) { hook = h; }",
    "int fake_allocs(void) { return allocs; }",
    "const char *fake_loaded(void) { return loaded; }",
    "static int env(const char *n, int d) {",
    "  const char *v = getenv(n); return v && *v ? atoi(v) : d;",
    "}",
    "int cuInit(unsigned f) { return f ? 1 : 0; }",
    "int cuGetErrorString(int r, const char **s) {",
    "  *s = r == 2 ? \"out of memory\" : r == 200 ? \"invalid image\" : \"launch failed\";",
    "  return 0;",
    "}",
    "int cuGetErrorName(int r, const char **s) {",
    "  *s = r == 2 ? \"CUDA_ERROR_OUT_OF_MEMORY\" : r == 200 ? \"CUDA_ERROR_INVALID_IMAGE\" :",
    "       \"CUDA_ERROR_LAUNCH_FAILED\";",
    "  return 0;",
    "}",
    "int cuDeviceGetCount(int *n) { *n = env(\"FAKE_DEVICES\", 1); return 0; }",
    "int cuDeviceGet(int *d, int o) { *d = o; return 0; }",
    "int cuDeviceGetName(char *b, int n, int d) {",
    "  (void)d; strncpy(b, \"Fake GPU\", n); return 0;",
    "}",
    "int cuDeviceGetAttribute(int *v, int a, int d) {",
    "  int cc = env(\"FAKE_CC\", 90); (void)d;",
    "  if (a == 75) *v = cc / 10; else if (a == 76) *v = cc % 10; else return 1;",
    "  return 0;",
    "}",
    "int cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)1 << 30; return 0; }",
    "int cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = &ctx_obj; return 0; }",
    "int cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }",
    "int cuCtxSetCurrent(void *c) { (void)c; return 0; }",
    "int cuCtxSynchronize(void) { ctx_syncs++; return 0; }",
    "int cuModuleLoadDataEx(void **m, const void *img, unsigned n, int *o, void **v) {",
    "  const unsigned char *p = img; (void)n; (void)o; (void)v;",
    "  int elf = p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F';",
    "  if (elf && env(\"FAKE_REJECT_CUBIN\", 0)) return 200;",
    "  strcpy(loaded, elf ? \"cubin\" : strstr(img, \".entry\") ? \"ptx\" : \"other\");",
    "  *m = malloc(1); return 0;",
    "}",
    "int cuModuleUnload(void *m) { free(m); return 0; }",
    "int cuModuleGetFunction(void **f, void *m, const char *name) {",
    "  (void)m; *f = strdup(name); return 0;",
    "}",
    "int cuMemAlloc_v2(P *p, size_t n) {",
    "  if (env(\"FAKE_OOM\", 0)) return 2;",
    "  void *q = malloc(n); memset(q, 0xab, n); *p = (P)(uintptr_t)q; allocs++; return 0;",
    "}",
    "int cuMemFree_v2(P p) { free((void *)(uintptr_t)p); allocs--; return 0; }",
    "int cuMemsetD8Async(P p, unsigned char c, size_t n, void *st) {",
    "  seen(st); memset((void *)(uintptr_t)p, c, n); return 0;",
    "}",
    "int cuMemcpyHtoDAsync_v2(P d, const void *s, size_t n, void *st) {",
    "  seen(st); memcpy((void *)(uintptr_t)d, s, n); return 0;",
    "}",
    "int cuMemcpyDtoHAsync_v2(void *d, P s, size_t n, void *st) {",
    "  seen(st); memcpy(d, (void *)(uintptr_t)s, n); return 0;",
    "}",
    "int cuMemcpyDtoDAsync_v2(P d, P s, size_t n, void *st) {",
    "  seen(st); memmove((void *)(uintptr_t)d, (void *)(uintptr_t)s, n); return 0;",
    "}",
    "int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,",
    "                   unsigned by, unsigned bz, unsigned shm, void *st, void **p, void **e) {",
    "  (void)gy; (void)gz; (void)by; (void)bz; (void)shm; (void)e;",
    "  seen(st);",
    "  const long long *fr = (const long long *)(uintptr_t)*(P *)p[0];",
    "  return hook && hook((const char *)f, gx, bx, fr) == 0 ? 0 : 719;",
    "}",
};

typedef void (*SetHookFn)(int (*)(const char *, unsigned, unsigned, const long long *));
typedef int (*CountFn)(void);
static void *fake_lib; /* the stand-in, once fake_driver_lib built it */

/* The stand-in driver, built once and named in SEQ_CUDA_DRIVER_LIB; NULL
 * where there is no C compiler. */
static void *fake_driver_lib(void) {
  static void *lib;
  static int tried;
  if (tried) return lib;
  tried = 1;
  char src[600], so[600], cmd[1400], *out = NULL;
  snprintf(src, sizeof src, "%s/fakecuda.c", tu_tmpdir());
  snprintf(so, sizeof so, "%s/libfakecuda.so.1", tu_tmpdir());
  FILE *f = fopen(src, "w");
  assert_non_null(f);
  for (size_t i = 0; i < sizeof fake_driver / sizeof fake_driver[0]; i++)
    fprintf(f, "%s\n", fake_driver[i]);
  assert_int_equal(fclose(f), 0);
  snprintf(cmd, sizeof cmd, "cc -std=gnu11 -shared -fPIC -o '%s' '%s'", so, src);
  if (tu_run(cmd, &out) != 0) {
    print_message("no C compiler for the stand-in driver (%s)\n", out ? out : "");
    free(out);
    return NULL;
  }
  free(out);
  lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  assert_non_null(lib);
  ((SetHookFn)(uintptr_t)dlsym(lib, "fake_set_launch"))(fake_launch);
  fake_lib = lib;
  setenv("SEQ_CUDA_DRIVER_LIB", so, 1);
  return lib;
}

/* Sets or clears a stand-in driver's knob. */
static void knob(const char *name, const char *value) {
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
}

typedef int32_t (*StepFn)(const float *const *, int64_t, const void *const *, const float *const *,
                          float *const *, float *const *);

typedef int32_t (*StreamFn)(const float *const *, void *, int64_t, int64_t, const void *const *,
                            const int32_t *, const float *const *, float *const *, float *const *);
typedef int32_t (*IoFn)(const float *const *, void *, int32_t, int64_t, int64_t,
                        const void *const *, const int32_t *, const float *const *, void *const *,
                        float *const *);

/* forward_blob, forward_device and forward_device_stream (with host_device:
 * the stand-in's device memory is host memory; on a stream, every operation
 * the stand-in sees must be on it and none wait for the whole device) and
 * chained steps against forward on the same random inputs (bfloat16
 * values, so that forward_device_io with bfloat16 inputs and outputs gives
 * forward's outputs rounded, bit for bit). */
static void entry_points_agree(FcCompiled *cm, void *so, const char *symbol, int host_device) {
  const AbiSignature *sig = &cm->pipe.sched->sig;
  AbiForwardFn fwd = (AbiForwardFn)(uintptr_t)sym(so, symbol, "forward");
  BlobFn blob = (BlobFn)(uintptr_t)sym(so, symbol, "forward_blob");
  AbiForwardFn dev = (AbiForwardFn)(uintptr_t)sym(so, symbol, "forward_device");
  StreamFn dev_stream = (StreamFn)(uintptr_t)sym(so, symbol, "forward_device_stream");
  IoFn dev_io = (IoFn)(uintptr_t)sym(so, symbol, "forward_device_io");
  char sname[200];
  snprintf(sname, sizeof sname, "%s_step", symbol);
  StepFn step = (StepFn)(uintptr_t)dlsym(so, sname);
  assert_true((step != NULL) == sig->has_step);
  const int64_t B = 3, T = 6;
  int ni = sig->inputs.n, no = sig->outputs.n, ns = sig->states.n;
  assert_true(ni <= 4 && no <= 4 && ns <= 8);
  float *in[4], *out[4][4], *sout[4][8];
  int64_t total = 0;
  for (int j = 0; j < sig->params.n; j++) total += sig->params.v[j].numel;
  float *wblob = malloc((size_t)total * sizeof *wblob + 1);
  assert_non_null(wblob);
  for (int j = 0, off = 0; j < sig->params.n; off += (int)sig->params.v[j].numel, j++)
    memcpy(wblob + off, cm->w.data[j], (size_t)sig->params.v[j].numel * sizeof *wblob);
  for (int i = 0; i < ni; i++) {
    assert_false(sig->inputs.v[i].is_int);
    in[i] = malloc((size_t)(B * T * sig->inputs.v[i].numel) * sizeof(float));
    for (int64_t k = 0; k < B * T * sig->inputs.v[i].numel; k++)
      in[i][k] = fc_widen16(fc_narrow16((float)fc_urand(), 1), 1);
  }
  for (int r = 0; r < 4; r++) {
    for (int i = 0; i < no; i++)
      out[r][i] = calloc((size_t)(B * T * sig->outputs.v[i].numel), sizeof(float));
    for (int s = 0; s < ns; s++)
      sout[r][s] = calloc((size_t)(B * sig->states.v[s].numel), sizeof(float));
  }
  const float *const *W = (const float *const *)cm->w.data;
  const void *const *I = (const void *const *)in;
  assert_int_equal(fwd(W, B, T, I, NULL, NULL, out[0], sout[0]), 0);
  assert_int_equal(blob(wblob, total, B, T, I, NULL, NULL, out[1], sout[1]), 0);
  if (host_device) {
    assert_int_equal(dev(W, B, T, I, NULL, NULL, out[2], sout[2]), 0);
    void (*want)(void *) = (void (*)(void *))(uintptr_t)dlsym(fake_lib, "fake_want_stream");
    CountFn misses = (CountFn)(uintptr_t)dlsym(fake_lib, "fake_stream_misses");
    CountFn ctx_syncs = (CountFn)(uintptr_t)dlsym(fake_lib, "fake_ctx_syncs");
    assert_true(want && misses && ctx_syncs);
    static char stream_obj;
    want(&stream_obj);
    assert_int_equal(dev_stream(W, &stream_obj, B, T, I, NULL, NULL, out[3], sout[3]), 0);
    assert_int_equal(misses(), 0);
    assert_int_equal(ctx_syncs(), 0);
    /* bfloat16 in and out, on the stream too */
    uint16_t *in16[4], *out16[4];
    float *sout16[8];
    for (int i = 0; i < ni; i++) {
      int64_t n = B * T * sig->inputs.v[i].numel;
      in16[i] = malloc((size_t)n * sizeof **in16 + 1);
      for (int64_t k = 0; k < n; k++) in16[i][k] = fc_narrow16(in[i][k], 1);
    }
    for (int i = 0; i < no; i++)
      out16[i] = calloc((size_t)(B * T * sig->outputs.v[i].numel), sizeof **out16);
    for (int s = 0; s < ns; s++) sout16[s] = calloc((size_t)(B * sig->states.v[s].numel), 4);
    assert_int_equal(dev_io(W, &stream_obj, 1, B, T, (const void *const *)in16, NULL, NULL,
                            (void *const *)out16, sout16),
                     0);
    assert_int_equal(misses(), 0);
    assert_int_equal(ctx_syncs(), 0);
    assert_int_equal(dev_io(W, &stream_obj, 3, B, T, (const void *const *)in16, NULL, NULL,
                            (void *const *)out16, sout16),
                     1);
    const char *(*last)(void) = (const char *(*)(void))(uintptr_t)sym(so, symbol, "last_error");
    assert_non_null(strstr(last(), "io 3: expected 0 (float32)"));
    want(NULL);
    for (int i = 0; i < no; i++)
      for (int64_t k = 0; k < B * T * sig->outputs.v[i].numel; k++)
        if (out16[i][k] != fc_narrow16(out[0][i][k], 1))
          fail_msg("%s_forward_device_io: output %d[%lld] 0x%04x, forward's %a", symbol, i,
                   (long long)k, out16[i][k], out[0][i][k]);
    for (int s = 0; s < ns; s++)
      assert_memory_equal(sout16[s], sout[0][s],
                          (size_t)(B * sig->states.v[s].numel) * sizeof(float));
    for (int i = 0; i < ni; i++) free(in16[i]);
    for (int i = 0; i < no; i++) free(out16[i]);
    for (int s = 0; s < ns; s++) free(sout16[s]);
  }
  for (int r = 1; r < (host_device ? 4 : 2); r++) {
    for (int i = 0; i < no; i++)
      assert_memory_equal(out[r][i], out[0][i],
                          (size_t)(B * T * sig->outputs.v[i].numel) * sizeof(float));
    for (int s = 0; s < ns; s++)
      assert_memory_equal(sout[r][s], sout[0][s],
                          (size_t)(B * sig->states.v[s].numel) * sizeof(float));
  }
  if (step) {
    /* Token by token, the state fed back: forward's result within float32
     * rounding (the step may run another form than the sequence). */
    float *tin[4], *tout[4], *st[8];
    for (int i = 0; i < ni; i++) tin[i] = malloc((size_t)(B * sig->inputs.v[i].numel) * 4);
    for (int i = 0; i < no; i++) tout[i] = malloc((size_t)(B * sig->outputs.v[i].numel) * 4);
    for (int s = 0; s < ns; s++) st[s] = calloc((size_t)(B * sig->states.v[s].numel), 4);
    for (int64_t t = 0; t < T; t++) {
      for (int i = 0; i < ni; i++) {
        int64_t f = sig->inputs.v[i].numel;
        for (int64_t b = 0; b < B; b++)
          memcpy(tin[i] + b * f, in[i] + (b * T + t) * f, (size_t)f * 4);
      }
      assert_int_equal(
          step(W, B, (const void *const *)tin, t ? (const float *const *)st : NULL, tout, st), 0);
      for (int i = 0; i < no; i++) {
        int64_t f = sig->outputs.v[i].numel;
        for (int64_t b = 0; b < B; b++)
          for (int64_t k = 0; k < f; k++) {
            float want = out[0][i][(b * T + t) * f + k], got = tout[i][b * f + k];
            if (!(fabsf(got - want) <= 1e-5f * (1 + fabsf(want))))
              fail_msg("%s_step at t=%lld: %g, forward %g", symbol, (long long)t, got, want);
          }
      }
    }
    for (int i = 0; i < ni; i++) free(tin[i]);
    for (int i = 0; i < no; i++) free(tout[i]);
    for (int s = 0; s < ns; s++) free(st[s]);
  }
  for (int i = 0; i < ni; i++) free(in[i]);
  for (int r = 0; r < 4; r++) {
    for (int i = 0; i < no; i++) free(out[r][i]);
    for (int s = 0; s < ns; s++) free(sout[r][s]);
  }
  free(wblob);
}

static void test_libraries_run(void **st) {
  (void)st;
  if (!fc_nvrtc_present()) {
    skip();
    return;
  }
  if (!emu_available()) {
    print_message("no C++ compiler for the CUDA emulation: skipped\n");
    skip();
    return;
  }
  RtCuda *gpu = NULL;
  RtError gerr;
  if (rt_cuda_open(0, &gpu, &gerr) == 0) {
    /* A device is here: the libraries run on it (the stand-in replaces the
     * driver only where none is installed). */
    print_message("device: %s (%s)\n", rt_cuda_name(gpu), rt_cuda_arch(gpu));
    rt_cuda_close(gpu);
    const FcCase *cases[] = {&MINGRU, &BIGRU, &MAMBA, &LSTM};
    const char *syms[] = {"mingru", "bigru", "mambassm", "lstm"};
    for (int k = 0; k < 4; k++) {
      FcCompiled cm;
      char lib[64];
      snprintf(lib, sizeof lib, "lib%s_gpu.so", syms[k]);
      compile(&cm, cases[k], "auto", so_path(lib));
      void *so = open_so(so_path(lib));
      against_interpreter(&cm, (AbiForwardFn)(uintptr_t)sym(so, syms[k], "forward"), lib);
      print_message("%s: %s\n", lib, ((StrFn)(uintptr_t)sym(so, syms[k], "cuda_device"))());
      entry_points_agree(&cm, so, syms[k], 0);
      fc_release(&cm);
    }
    return;
  }
  void *fake = fake_driver_lib();
  if (!fake) {
    skip();
    return;
  }
  CountFn allocs = (CountFn)(uintptr_t)dlsym(fake, "fake_allocs");
  StrFn loaded = (StrFn)(uintptr_t)dlsym(fake, "fake_loaded");
  const struct {
    const FcCase *c;
    const char *lib, *symbol, *cc, *reject, *want, *form;
  } runs[] = {
      {&MINGRU, "libmingru_run.so", "mingru", "90", NULL, "cubin sm_90", "auto"},
      {&BIGRU, "libbigru_run.so", "bigru", "86", NULL, "cubin sm_80", "auto"},
      {&MAMBA, "libmamba_run.so", "mambassm", "120", NULL, "PTX compute_80", "auto"},
      {&LSTM, "liblstm_run.so", "lstm", "90", "1", "PTX compute_80", "auto"},
      /* A Newton solve: the runtime's host loop inside the library. */
      {&PARAGRU, "libparagru_run.so", "paragru", "90", NULL, "cubin sm_90", "newton"},
  };
  for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
    FcCompiled cm;
    const char *path = so_path(runs[k].lib);
    compile(&cm, runs[k].c, runs[k].form, path);
    void *so = open_so(path);
    AbiForwardFn fwd = (AbiForwardFn)(uintptr_t)sym(so, runs[k].symbol, "forward");
    StrFn last_error = (StrFn)(uintptr_t)sym(so, runs[k].symbol, "last_error");
    StrFn device = (StrFn)(uintptr_t)sym(so, runs[k].symbol, "cuda_device");
    PlanFn plan = (PlanFn)(uintptr_t)sym(so, runs[k].symbol, "cuda_plan");
    /* The kernels of the plan in the .so, emulated. */
    int64_t size = 0;
    const void *bytes = plan(&size);
    RtCuProgram *p = NULL;
    RtError err;
    if (rt_cu_program_read(bytes, (size_t)size, &p, &err)) fail_msg("%s", err.msg);
    char msg[2048];
    if (emu_build(p->source, p->kernels, p->nkernels, &cur.emu, msg, sizeof msg))
      fail_msg("%s", msg);
    cur.prog = p;
    char what[300];
    if (k < 2 || k == 4) {
      /* The plan read back, run by the executor on the emulation. */
      snprintf(what, sizeof what, "%s's plan on the emulation", runs[k].lib);
      against_interpreter(&cm, emu_forward, what);
      assert_int_equal(emu_live_allocs(cur.emu), 0);
    }
    /* The library itself: no device first (nothing kept), then one. */
    knob("FAKE_CC", runs[k].cc);
    knob("FAKE_REJECT_CUBIN", runs[k].reject);
    knob("FAKE_DEVICES", "0");
    const float *const *W = (const float *const *)cm.w.data;
    float x[256] = {0}, y[256];
    const void *in[2] = {x, x};
    float *out[2] = {y, y};
    assert_int_equal(fwd(W, 1, 1, in, NULL, NULL, out, NULL), 5);
    snprintf(what, sizeof what, "%s: no CUDA device", runs[k].symbol);
    assert_string_equal(last_error(), what);
    knob("FAKE_DEVICES", NULL);
    snprintf(what, sizeof what, "%s through the stand-in driver", runs[k].lib);
    against_interpreter(&cm, fwd, what);
    assert_string_equal(last_error(), "");
    print_message("%s on a stand-in sm_%s: %s\n", runs[k].lib, runs[k].cc, device());
    if (!strstr(device(), runs[k].want))
      fail_msg("%s loaded '%s', want %s", runs[k].lib, device(), runs[k].want);
    assert_string_equal(loaded(), strstr(runs[k].want, "PTX") ? "ptx" : "cubin");
    entry_points_agree(&cm, so, runs[k].symbol, 1);
    assert_int_equal(allocs(), 0);
    /* The device's failures: a launch, out of memory. */
    cur.fail_launches = 1;
    assert_int_equal(fwd(W, 1, 1, in, NULL, NULL, out, NULL), 5);
    assert_non_null(strstr(last_error(), "cuLaunchKernel("));
    assert_non_null(strstr(last_error(), "CUDA_ERROR_LAUNCH_FAILED"));
    cur.fail_launches = 0;
    knob("FAKE_OOM", "1");
    assert_int_equal(fwd(W, 1, 1, in, NULL, NULL, out, NULL), 2);
    assert_non_null(strstr(last_error(), "CUDA_ERROR_OUT_OF_MEMORY"));
    knob("FAKE_OOM", NULL);
    assert_int_equal(fwd(W, 1, 1, in, NULL, NULL, out, NULL), 0);
    assert_string_equal(last_error(), "");
    assert_int_equal(allocs(), 0);
    knob("FAKE_CC", NULL);
    knob("FAKE_REJECT_CUBIN", NULL);
    emu_free(cur.emu);
    cur.emu = NULL;
    rt_cu_program_free(p);
    fc_release(&cm);
    /* The library keeps its context and module for the life of the
     * process; it is not unloaded here, so its driver stays valid. */
  }
  /* A device no image suits: the status, and what the library has. */
  char cmd[1400], *out = NULL;
  const char *copy = so_path("libmingru_sm75.so");
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", so_path("libmingru_run.so"), copy);
  assert_int_equal(tu_run(cmd, &out), 0);
  free(out);
  knob("FAKE_CC", "75");
  void *so = open_so(copy);
  float x[64] = {0};
  const float *w[8] = {x, x, x, x, x, x, x, x};
  const void *in[1] = {x};
  float *o[1] = {x};
  assert_int_equal(
      ((AbiForwardFn)(uintptr_t)sym(so, "mingru", "forward"))(w, 1, 1, in, NULL, NULL, o, NULL), 5);
  assert_string_equal(((StrFn)(uintptr_t)sym(so, "mingru", "last_error"))(),
                      "mingru: no image in this library runs on Fake GPU (sm_75); it has sm_80, "
                      "sm_90, compute_80 (rebuild with --cuda-arch=sm_75)");
  knob("FAKE_CC", NULL);
}

/* ---- the command line ---------------------------------------------------------------- */

static void test_cli(void **st) {
  (void)st;
  const char *dir = SEQ_SOURCE_DIR;
  tu_expect_seqc(dir, "--target=cuda stdlib/lstm.seq --dims I=3,H=4 --emit=llvm -o x.ll", 2,
                 "--emit=llvm is the CPU target's; --target=cuda writes -o libNAME.so");
  tu_expect_seqc(dir, "--emit=ptx --cuda-arch=sm_80,sm_90 stdlib/lstm.seq --dims I=3,H=4", 2,
                 "--emit=ptx takes one --cuda-arch, got 'sm_80,sm_90'");
  tu_expect_seqc(dir, "--target=cuda --emit=sched stdlib/mingru.seq --dims I=3,H=4", 0, "scan");
  if (!fc_nvrtc_present()) return;
  char args[800];
  snprintf(args, sizeof args,
           "--target=cuda stdlib/lstm.seq --dims I=3,H=4 --cuda-arch=sm_x -o %s/libx.so",
           tu_tmpdir());
  tu_expect_seqc(dir, args, 1, "bad CUDA arch 'sm_x'");
  snprintf(args, sizeof args,
           "--target=cuda stdlib/lstm.seq --dims I=3,H=4 --cuda-arch=sm_80, -o %s/libx.so",
           tu_tmpdir());
  tu_expect_seqc(dir, args, 1, "--cuda-arch takes a list such as sm_80,sm_90, got 'sm_80,'");
  /* One arch: its cubin and its PTX; -H places the header. */
  snprintf(args, sizeof args,
           "--target=cuda stdlib/lstm.seq --dims I=3,H=4 --cuda-arch=sm_86 -o %s/libone.so -H "
           "%s/one.h",
           tu_tmpdir(), tu_tmpdir());
  tu_expect_seqc(dir, args, 0, "");
  char h[600];
  snprintf(h, sizeof h, "%s/one.h", tu_tmpdir());
  char *text = tu_read_file(h, NULL);
  assert_non_null(text);
  assert_non_null(strstr(text, "#define LSTM_CUDA_ARCHS \"sm_86\""));
  free(text);
}

int main(void) {
  fc_seed(0x2545f4914f6cdd1dull);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_image_choice),   cmocka_unit_test(test_plan_round_trip),
      cmocka_unit_test(test_plan_damaged),   cmocka_unit_test(test_cli),
      cmocka_unit_test(test_shared_objects), cmocka_unit_test(test_libraries_run),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
