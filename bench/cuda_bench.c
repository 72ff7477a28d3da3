/* cuda_bench.c - one cell on a CUDA device: compiled through the pipeline
 * for the GPU (PipeOptions.cuda), its kernels through NVRTC (the kernel
 * cache) for the device's architecture, seeded random weights (stable
 * recurrences, as test_cuda_gen.c binds them) and random inputs uploaded
 * once, then one warm-up call of rt_cu_run and ROUNDS timed ones over device
 * buffers. Each timed call is what rt_cu_run costs: it allocates and zeroes
 * the program's intermediate buffers, launches the plan and synchronizes
 * before it returns.
 *
 * usage: cuda_bench [--io=bf16|f16|f32] FILE.seq DIMS B T ROUNDS [STRATEGY]
 *        cuda_bench --compile-only [--arch=sm_XX] FILE.seq DIMS [STRATEGY]
 *        cuda_bench --copy-bw BYTES     (K, M, G suffixes: powers of 1024)
 *        cuda_bench --info
 * STRATEGY is --strategy's syntax (auto, sequential, "S=scan", ...); without
 * it the GPU's auto (the scan form where the class admits it). --io: the
 * float inputs and outputs in bfloat16 or float16 (rt_cu_run_io: converted
 * to and from float32 around the run), float32 by default.
 *
 * Prints, for a run:
 *   device: NAME (sm_XX, N GiB), NVRTC X.Y
 *   compile: FILE DIMS strategy=S: forms STATE=FORM ...; N kernels (...); cubin sm_XX
 *            compiled by NVRTC in S s (cold) | from the cache (no NVRTC call)
 *   buffers: intermediate bytes per call (allocated and zeroed inside each call)
 *   result file=... B=.. T=.. rounds=.. median_ms=.. min_ms=.. tok_s=..
 *          io_GB=.. io_GBps=.. (achieved-traffic lower bound: ...) finite=yes|no
 * --copy-bw prints "copy_bw bytes=N median_ms=.. min_ms=.. GBps=.." for
 * cuMemcpyDtoD (RtCuDevice.copy, RT_CU_D2D) over two buffers of BYTES, the
 * median of 10 after a warm-up, counting BYTES read and BYTES written.
 * --compile-only needs no device: it renders and compiles (default sm_90)
 * and prints the compile line. --info prints NVRTC's version, the cache and
 * device 0.
 *
 * Exit status: 0; 1 on a usage, compile or run error; 2 when CUDA is not
 * there (no driver, no device, no NVRTC), with the runtime's message.
 *
 * Build (tools/gpu-check.sh does this against build-gpu), like the tests:
 *   cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -I. -Iinclude \
 *      -I$(llvm-config-19 --includedir) bench/cuda_bench.c -Wl,--start-group \
 *      BUILD/libseqcg.a BUILD/libseqcore.a BUILD/libseqrt.a -Wl,--end-group \
 *      -L$(llvm-config-19 --libdir) -lLLVM-19 -Wl,-rpath,$(llvm-config-19 --libdir) \
 *      $(pkg-config --libs jansson libxxhash) -ldl -lpthread -lm -o cuda_bench */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cuda.h"

enum { EXIT_ERR = 1, EXIT_NO_CUDA = 2, COPY_ROUNDS = 10 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int usage(void) {
  fprintf(stderr, "usage: cuda_bench [--io=bf16|f16|f32] FILE.seq DIMS B T ROUNDS [STRATEGY]\n"
                  "       cuda_bench --compile-only [--arch=sm_XX] FILE.seq DIMS [STRATEGY]\n"
                  "       cuda_bench --copy-bw BYTES\n"
                  "       cuda_bench --info\n");
  return EXIT_ERR;
}

/* ---- the device and NVRTC --------------------------------------------------------- */

/* Opens device 0 and prints it with NVRTC's version; 0, or EXIT_NO_CUDA
 * with the runtime's message. */
static int open_device(RtCuda **cu) {
  RtError err;
  if (rt_cuda_open(0, cu, &err)) {
    fprintf(stderr, "cuda_bench: %s\n", err.msg);
    return EXIT_NO_CUDA;
  }
  int major = 0, minor = 0;
  if (rt_nvrtc_version(&major, &minor, &err)) {
    fprintf(stderr, "cuda_bench: %s\n", err.msg);
    rt_cuda_close(*cu);
    *cu = NULL;
    return EXIT_NO_CUDA;
  }
  printf("device: %s (%s, %.1f GiB), NVRTC %d.%d\n", rt_cuda_name(*cu), rt_cuda_arch(*cu),
         (double)rt_cuda_memory(*cu) / (1024.0 * 1024 * 1024), major, minor);
  return 0;
}

/* Compiles src to a cubin for arch through the cache and says where it came
 * from; 0, EXIT_NO_CUDA (no NVRTC) or EXIT_ERR. */
static int compile_cubin(const char *src, const char *name, const char *arch, RtBlob *bin,
                         char *how, size_t howlen) {
  RtError err;
  uint64_t calls = rt_nvrtc_calls();
  double secs = rt_nvrtc_seconds();
  int rc = rt_nvrtc_compile(src, name, arch, 1, bin, &err);
  if (rc) {
    fprintf(stderr, "cuda_bench: %s\n", err.msg);
    return strstr(err.msg, "NVRTC not found") ? EXIT_NO_CUDA : EXIT_ERR;
  }
  if (rt_nvrtc_calls() == calls)
    snprintf(how, howlen, "cubin %s from the cache (no NVRTC call; cache %s)", arch,
             rt_cuda_cache_dir() ? rt_cuda_cache_dir() : "off");
  else
    snprintf(how, howlen, "cubin %s compiled by NVRTC in %.3f s (cold)", arch,
             rt_nvrtc_seconds() - secs);
  return 0;
}

/* ---- --info and --copy-bw --------------------------------------------------------- */

static int info(void) {
  RtError err;
  int major = 0, minor = 0, rc = 0;
  if (rt_nvrtc_version(&major, &minor, &err) == 0) {
    const char *dir = rt_cuda_cache_dir();
    printf("NVRTC %d.%d (kernel cache: %s)\n", major, minor, dir ? dir : "off");
  } else {
    printf("NVRTC: %s\n", err.msg);
    rc = EXIT_NO_CUDA;
  }
  RtCuda *cu = NULL;
  if (rt_cuda_open(0, &cu, &err) == 0) {
    printf("device 0: %s (%s, %.1f GiB)\n", rt_cuda_name(cu), rt_cuda_arch(cu),
           (double)rt_cuda_memory(cu) / (1024.0 * 1024 * 1024));
    rt_cuda_close(cu);
  } else {
    printf("device: %s\n", err.msg);
    rc = EXIT_NO_CUDA;
  }
  return rc;
}

static int parse_bytes(const char *s, size_t *out) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  unsigned long long mul = 1;
  if (end == s) return -1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10;
  if (*end == 'M' || *end == 'm') mul = 1ull << 20;
  if (*end == 'G' || *end == 'g') mul = 1ull << 30;
  if (mul > 1) end++;
  if (*end || v == 0 || v > (1ull << 50) / mul) return -1;
  *out = (size_t)(v * mul);
  return 0;
}

static void report_copy(double *t, size_t bytes) {
  double mn = t[0];
  for (int r = 1; r < COPY_ROUNDS; r++) mn = fmin(mn, t[r]);
  double med = median(t, COPY_ROUNDS);
  printf("copy_bw bytes=%zu median_ms=%.3f min_ms=%.3f GBps=%.1f (device-to-device cuMemcpyDtoD, "
         "read+write bytes counted, median of %d)\n",
         bytes, med * 1e3, mn * 1e3, 2.0 * (double)bytes / med / 1e9, COPY_ROUNDS);
}

/* Device-to-device copy bandwidth: what the scans' GB/s are set against. */
static int copy_bw(size_t bytes) {
  RtCuda *cu = NULL;
  int rc = open_device(&cu);
  if (rc) return rc;
  /* An RtCuDevice needs a module: one empty kernel. */
  static const char *const names[] = {"seq_bench_nop"};
  const char *src = "extern \"C\" __global__ void seq_bench_nop(void) {}\n";
  RtBlob bin = {0};
  RtCuDevice d = {0};
  RtError err = {{0}};
  RtDevPtr a = 0, b = 0;
  char how[600];
  double t[COPY_ROUNDS];
  rc = compile_cubin(src, "copy_bw.cu", rt_cuda_arch(cu), &bin, how, sizeof how);
  if (rc) goto out;
  rc = EXIT_ERR;
  if (rt_cuda_load(cu, &bin, names, 1, &d, &err) || d.alloc(d.ctx, d.stream, bytes, &a, &err) ||
      d.alloc(d.ctx, d.stream, bytes, &b, &err) ||
      d.copy(d.ctx, d.stream, b, a, bytes, RT_CU_D2D, &err) || d.sync(d.ctx, d.stream, &err)) {
    fprintf(stderr, "cuda_bench: --copy-bw: %s\n", err.msg);
    goto out;
  }
  for (int r = 0; r < COPY_ROUNDS; r++) {
    double t0 = now();
    /* cuMemcpyDtoD does not wait for the copy: the sync does. */
    if (d.copy(d.ctx, d.stream, r % 2 ? a : b, r % 2 ? b : a, bytes, RT_CU_D2D, &err) ||
        d.sync(d.ctx, d.stream, &err)) {
      fprintf(stderr, "cuda_bench: --copy-bw: %s\n", err.msg);
      goto out;
    }
    t[r] = now() - t0;
  }
  report_copy(t, bytes);
  rc = 0;
out:
  if (a) d.free(d.ctx, a);
  if (b) d.free(d.ctx, b);
  rt_blob_free(&bin);
  rt_cuda_close(cu);
  return rc;
}

/* ---- the cell ------------------------------------------------------------------------ */

typedef struct Cell {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
  DrvWeights w;
} Cell;

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0 && (n == k || s[n - k - 1] == '.');
}

/* Renders the cell's CUDA program and binds its weights; 0 or -1 (the
 * diagnostics are printed as they come). */
static int compile_cell(Cell *c, const char *file, const char *dims, const char *strategy) {
  memset(c, 0, sizeof *c);
  c->arena = arena_create();
  srcmgr_init(&c->sm, c->arena);
  diag_init(&c->de, c->arena, stderr);
  pipeline_init(&c->pipe, c->arena, &c->sm, &c->de);
  const char *names[32];
  int64_t values[32];
  int n = 0;
  char *spec = arena_strdup(c->arena, dims);
  for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    if (!eq || eq == tok || !eq[1] || n == 32) {
      fprintf(stderr, "cuda_bench: bad DIMS '%s' (NAME=VALUE,...)\n", dims);
      return -1;
    }
    *eq = 0;
    names[n] = tok;
    values[n++] = atoll(eq + 1);
  }
  StrategyRequest *req = NULL;
  if (strategy) {
    char err[256];
    req = arena_calloc(c->arena, 1, sizeof *req);
    if (strategy_parse(c->arena, strategy, req, err, sizeof err)) {
      fprintf(stderr, "cuda_bench: --strategy=%s: %s\n", strategy, err);
      return -1;
    }
  }
  PipeOptions po = {0};
  po.path = file;
  po.ndims = n;
  po.dim_names = names;
  po.dim_values = values;
  po.strategy = req;
  po.cuda = 1;
  po.goal = PIPE_BOUND;
  if (pipeline_run(&c->pipe, &po) || ir_binding_random(&c->pipe.bind, 5, &c->de)) return -1;
  /* Stable recurrences, as trained ones are (test_cuda_gen.c, bench/forms.c). */
  IrBinding *b = &c->pipe.bind;
  for (int i = 0; i < b->flat.params.n; i++)
    if (ends_with(b->flat.params.v[i].name, "Lambda_re") ||
        ends_with(b->flat.params.v[i].name, "decay"))
      for (int64_t k = 0; k < rt_numel(&b->weights[i]); k++)
        ((double *)b->weights[i].data)[k] = -fabs(((double *)b->weights[i].data)[k]);
  po.goal = PIPE_CUDA;
  if (pipeline_run(&c->pipe, &po)) return -1;
  if (drv_weights_from_binding(&c->pipe.sched->sig, &c->pipe.bind, &c->w, &c->de)) return -1;
  if (c->w.n != c->pipe.cuda->nparams) {
    fprintf(stderr, "cuda_bench: %d weights for %d parameters of the CUDA program\n", c->w.n,
            c->pipe.cuda->nparams);
    return -1;
  }
  return 0;
}

static void release_cell(Cell *c) {
  IrBinding *b = &c->pipe.bind;
  for (int i = 0; b->weights && i < b->flat.params.n; i++) rt_tensor_free(&b->weights[i]);
  drv_weights_free(&c->w);
  pipeline_release(&c->pipe);
  arena_destroy(c->arena);
}

/* The stage a kernel runs: SYMBOL_iN_kM_STAGE gives STAGE. */
static const char *stage_of(const char *kernel) {
  const char *stage = kernel;
  for (const char *s = strstr(kernel, "_k"); s; s = strstr(s + 1, "_k")) {
    const char *q = s + 2;
    if (*q < '0' || *q > '9') continue;
    while (*q >= '0' && *q <= '9') q++;
    if (*q == '_' && q[1]) stage = q + 1;
  }
  return stage;
}

/* "forms s=scan; 7 kernels (const zero_outputs ...)": what the GPU runs. */
static void print_compile(const Cell *c, const char *file, const char *dims, const char *strategy,
                          const char *how) {
  const Pipeline *p = &c->pipe;
  printf("compile: %s %s strategy=%s: forms", file, dims, strategy ? strategy : "auto");
  for (int i = 0; i < p->rewritten->funcs.n; i++) {
    const IrFunc *f = p->rewritten->funcs.v[i];
    if (f->kind != IR_FN_CELL || !p->plan->dims[i]) continue;
    for (int k = 0; k < f->states.n; k++)
      printf(" %s=%s", f->states.v[k].name, form_name(p->plan->funcs[i][k].form));
  }
  const RtCuProgram *g = p->cuda;
  printf("; %d kernels (", g->nkernels);
  for (int k = 0; k < g->nkernels; k++) printf("%s%s", k ? " " : "", stage_of(g->kernels[k]));
  printf("); %.1f KB of CUDA C; %s\n", (double)strlen(g->source) / 1024.0, how);
}

/* Bytes of intermediate buffers one call allocates (every instance once). */
static double buffer_bytes(const RtCuProgram *g, int64_t B, int64_t T) {
  double total = 0;
  for (int i = 0; i < g->ninsts; i++)
    for (int k = 0; k < g->insts[i].nbufs; k++) {
      const RtCuBuf *bf = &g->insts[i].bufs[k];
      double rows = bf->rows == RT_CU_ROWS_ONE ? 1.0
                    : bf->rows == RT_CU_ROWS_B ? (double)B
                                               : (double)(B * T);
      total += rows * (double)bf->row_floats * 4.0;
    }
  return total;
}

/* x in [-1, 1] as 16 bits (RT_CU_IO_BF16 or RT_CU_IO_F16), truncated:
 * random test data, not a rounding reference. */
static uint16_t to16(float x, int io) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if (io == RT_CU_IO_BF16) return (uint16_t)(u >> 16);
  int e = (int)((u >> 23) & 0xff) - 127 + 15;
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  return e <= 0 ? sign : (uint16_t)(sign | (e << 10) | ((u >> 13) & 0x3ff));
}

/* Fills n elements at dev with random values (float32, or 16-bit with io),
 * through a host block of at most 16M floats repeated over the buffer. */
static int upload_random(const RtCuDevice *d, RtDevPtr dev, int64_t n, float *block,
                         int64_t block_n, int io, RtError *err) {
  size_t es = io ? 2 : 4;
  uint16_t *h = NULL;
  if (io && !(h = malloc((size_t)block_n * sizeof *h))) {
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return -1;
  }
  for (int64_t k = 0; io && k < block_n; k++) h[k] = to16(block[k], io);
  int rc = 0;
  for (int64_t off = 0; off < n && rc == 0; off += block_n) {
    int64_t k = n - off < block_n ? n - off : block_n;
    rc = d->copy(d->ctx, d->stream, dev + (RtDevPtr)off * es,
                 (RtDevPtr)(uintptr_t)(io ? (void *)h : (void *)block), (size_t)k * es, RT_CU_H2D,
                 err);
  }
  free(h);
  return rc;
}

/* Uploads the weights and random inputs and allocates the outputs (device
 * buffers, once; float inputs and outputs in 16 bits with io); io_bytes
 * gets the inputs' and outputs' bytes per call. */
static int upload_all(const Cell *c, const RtCuDevice *d, int64_t B, int64_t T, int io,
                      RtDevPtr *dp, RtDevPtr *din, RtDevPtr *dout, float *block, int64_t block_n,
                      double *io_bytes, RtError *err) {
  const RtCuProgram *g = c->pipe.cuda;
  *io_bytes = 0;
  for (int j = 0; j < g->nparams; j++) {
    size_t bytes = (size_t)g->param_floats[j] * sizeof(float);
    if (d->alloc(d->ctx, d->stream, bytes, &dp[j], err) ||
        (bytes && d->copy(d->ctx, d->stream, dp[j], (RtDevPtr)(uintptr_t)c->w.data[j], bytes,
                          RT_CU_H2D, err)))
      return -1;
  }
  for (int j = 0; j < g->ninputs; j++) {
    int64_t n = B * T * g->input_floats[j];
    int is_int = g->input_is_int && g->input_is_int[j];
    size_t es = io && !is_int ? 2 : 4;
    *io_bytes += (double)es * (double)n;
    if (d->alloc(d->ctx, d->stream, (size_t)n * es, &din[j], err)) return -1;
    /* Int inputs stay zero: token 0, valid for any vocabulary. */
    if (!is_int && upload_random(d, din[j], n, block, block_n, io, err)) return -1;
  }
  for (int j = 0; j < g->noutputs; j++) {
    int64_t n = B * T * g->output_floats[j];
    size_t es = io ? 2 : 4;
    *io_bytes += (double)es * (double)n;
    if (d->alloc(d->ctx, d->stream, (size_t)n * es, &dout[j], err)) return -1;
  }
  return 0;
}

/* Whether the last values of output 0 (up to block_n) are finite; -1 if
 * they cannot be read back. */
static int tail_finite(const RtCuProgram *g, const RtCuDevice *d, int64_t B, int64_t T, int io,
                       RtDevPtr out0, float *block, int64_t block_n, RtError *err) {
  int64_t nout = g->noutputs ? B * T * g->output_floats[0] : 0;
  int64_t tail = nout < block_n ? nout : block_n;
  size_t es = io ? 2 : 4;
  if (tail <= 0) return 1;
  if (d->copy(d->ctx, d->stream, (RtDevPtr)(uintptr_t)block, out0 + (RtDevPtr)(nout - tail) * es,
              (size_t)tail * es, RT_CU_D2H, err))
    return -1;
  const uint16_t *h = (const uint16_t *)block;
  for (int64_t k = 0; k < tail; k++) /* 16 bits: an all-ones exponent is an infinity or a NaN */
    if (io == RT_CU_IO_BF16  ? (h[k] & 0x7f80) == 0x7f80
        : io == RT_CU_IO_F16 ? (h[k] & 0x7c00) == 0x7c00
                             : !isfinite(block[k]))
      return 0;
  return 1;
}

static int bench(const char *file, const char *dims, int64_t B, int64_t T, int rounds,
                 const char *strategy, int io) {
  const int64_t block_n = (int64_t)1 << 24;
  RtCuda *cu = NULL;
  Cell c;
  RtBlob bin = {0};
  RtCuDevice d = {0};
  RtError err = {{0}};
  char how[600];
  int loaded = 0, finite = 0;
  double io_bytes = 0;
  const RtCuProgram *g = NULL;
  RtDevPtr *dp = NULL, *din = NULL, *dout = NULL;
  float *block = NULL;
  double *t = NULL;

  int rc = open_device(&cu);
  if (rc) return rc;
  if (compile_cell(&c, file, dims, strategy)) {
    fprintf(stderr, "cuda_bench: %s does not compile for CUDA\n", file);
    rc = EXIT_ERR;
    goto out;
  }
  g = c.pipe.cuda;
  rc = compile_cubin(g->source, c.pipe.sched->sig.symbol, rt_cuda_arch(cu), &bin, how, sizeof how);
  if (rc) goto out;
  rc = EXIT_ERR;
  print_compile(&c, file, dims, strategy, how);
  if (rt_cuda_load(cu, &bin, g->kernels, g->nkernels, &d, &err)) goto dev_fail;
  loaded = 1;
  printf("buffers: %.4g GB of intermediates per call (allocated and zeroed inside each timed "
         "call)\n",
         buffer_bytes(g, B, T) / 1e9);
  fflush(stdout);

  t = calloc((size_t)rounds, sizeof *t);
  dp = calloc((size_t)g->nparams + 1, sizeof *dp);
  din = calloc((size_t)g->ninputs + 1, sizeof *din);
  dout = calloc((size_t)g->noutputs + 1, sizeof *dout);
  block = malloc((size_t)block_n * sizeof *block);
  if (!t || !dp || !din || !dout || !block) {
    fprintf(stderr, "cuda_bench: out of memory\n");
    goto out;
  }
  for (int64_t k = 0; k < block_n; k++) block[k] = uniform();
  if (upload_all(&c, &d, B, T, io, dp, din, dout, block, block_n, &io_bytes, &err)) goto dev_fail;

  /* One warm-up call, then the timed ones. */
  for (int r = -1; r < rounds; r++) {
    double t0 = now();
    int st = rt_cu_run_io(g, &d, io, dp, B, T, din, 0, NULL, dout, NULL, &err);
    double t1 = now();
    if (st < 0) goto dev_fail;
    if (st > 0) {
      fprintf(stderr, "cuda_bench: rt_cu_run returned ABI status %d\n", st);
      goto out;
    }
    if (r >= 0) t[r] = t1 - t0;
  }
  finite = tail_finite(g, &d, B, T, io, g->noutputs ? dout[0] : 0, block, block_n, &err);
  if (finite < 0) goto dev_fail;

  {
    double mn = t[0];
    for (int r = 1; r < rounds; r++) mn = fmin(mn, t[r]);
    double med = median(t, rounds);
    printf("result file=%s dims=%s strategy=%s io=%s B=%lld T=%lld rounds=%d median_ms=%.3f "
           "min_ms=%.3f tok_s=%.4g io_GB=%.4g io_GBps=%.4g (achieved-traffic lower bound: "
           "inputs+outputs only) finite=%s\n",
           file, dims, strategy ? strategy : "auto",
           io == RT_CU_IO_BF16  ? "bf16"
           : io == RT_CU_IO_F16 ? "f16"
                                : "f32",
           (long long)B, (long long)T, rounds, med * 1e3, mn * 1e3, (double)(B * T) / med,
           io_bytes / 1e9, io_bytes / med / 1e9, finite ? "yes" : "no");
    if (finite)
      rc = 0;
    else
      fprintf(stderr, "cuda_bench: the output holds NaN or Inf\n");
  }
  goto out;
dev_fail:
  fprintf(stderr, "cuda_bench: %s\n", err.msg);
out:
  for (int j = 0; loaded && dp && j < g->nparams; j++)
    if (dp[j]) d.free(d.ctx, dp[j]);
  for (int j = 0; loaded && din && j < g->ninputs; j++)
    if (din[j]) d.free(d.ctx, din[j]);
  for (int j = 0; loaded && dout && j < g->noutputs; j++)
    if (dout[j]) d.free(d.ctx, dout[j]);
  if (loaded) rt_cuda_unload(&d);
  rt_blob_free(&bin);
  release_cell(&c);
  free(dp);
  free(din);
  free(dout);
  free(block);
  free(t);
  rt_cuda_close(cu);
  return rc;
}

static int compile_only(const char *file, const char *dims, const char *strategy,
                        const char *arch) {
  Cell c;
  RtBlob bin = {0};
  char how[600];
  int rc = EXIT_ERR;
  if (compile_cell(&c, file, dims, strategy)) {
    fprintf(stderr, "cuda_bench: %s does not compile for CUDA\n", file);
  } else {
    rc = compile_cubin(c.pipe.cuda->source, c.pipe.sched->sig.symbol, arch, &bin, how, sizeof how);
    if (rc == 0) print_compile(&c, file, dims, strategy, how);
  }
  rt_blob_free(&bin);
  release_cell(&c);
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--info") == 0) return info();
  if (argc == 3 && strcmp(argv[1], "--copy-bw") == 0) {
    size_t bytes;
    if (parse_bytes(argv[2], &bytes)) return usage();
    return copy_bw(bytes);
  }
  if (argc >= 2 && strcmp(argv[1], "--compile-only") == 0) {
    const char *arch = "sm_90";
    int a = 2;
    if (argc > a && strncmp(argv[a], "--arch=", 7) == 0) arch = argv[a++] + 7;
    if (argc - a != 2 && argc - a != 3) return usage();
    return compile_only(argv[a], argv[a + 1], argc - a == 3 ? argv[a + 2] : NULL, arch);
  }
  int io = RT_CU_IO_F32;
  if (argc >= 2 && strncmp(argv[1], "--io=", 5) == 0) {
    if (strcmp(argv[1] + 5, "bf16") == 0)
      io = RT_CU_IO_BF16;
    else if (strcmp(argv[1] + 5, "f16") == 0)
      io = RT_CU_IO_F16;
    else if (strcmp(argv[1] + 5, "f32") != 0)
      return usage();
    argv++;
    argc--;
  }
  if (argc != 6 && argc != 7) return usage();
  char *e1, *e2, *e3;
  long long B = strtoll(argv[3], &e1, 10), T = strtoll(argv[4], &e2, 10);
  long rounds = strtol(argv[5], &e3, 10);
  if (*e1 || *e2 || *e3 || B < 1 || T < 1 || rounds < 1 || rounds > 100000) return usage();
  return bench(argv[1], argv[2], B, T, (int)rounds, argc == 7 ? argv[6] : NULL, io);
}
