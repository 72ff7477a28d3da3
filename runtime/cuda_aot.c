/* cuda_aot.c - what a shared object for the GPU calls (rt_cuda.h, "shared
 * objects for the GPU"; docs/cuda.md): its entry points are one-line calls
 * into here with the library's RtCuAotModel, which holds the plan, the
 * images (cubins and PTX) and a pointer for what the first call loads.
 *
 * The first call reads the plan (no device needed: the arguments are
 * checked against it before the GPU is touched), then the first call that
 * runs opens the device, picks the image (rt_cu_aot_pick) and loads it. A
 * mutex (one per library: the archive is linked into each with its symbols
 * hidden) guards the loading; what is loaded stays until the process exits,
 * since releasing a context from a destructor at exit can race the driver's
 * own teardown. A failed attempt keeps nothing of the device, so a later
 * call tries again (the driver library itself is looked up once per
 * process, rt_cuda_open). Every call that fails leaves a one-line message
 * for SYM_last_error, per thread; a call that succeeds clears it. */
#include "runtime/rt_cuda.h"
#include "runtime/rt_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ABI's status codes (docs/abi.md; the compiler's sched/abi.h). */
enum { ST_OK = 0, ST_ARG = 1, ST_NOMEM = 2, ST_TOKEN = 3, ST_LENGTH = 4 };
enum { ST_DEVICE = RT_CU_AOT_ERR_DEVICE };

typedef struct Loaded {
  RtCuProgram *prog; /* read once */
  RtCuda *cuda;      /* NULL until a call has loaded an image */
  RtCuDevice dev;
  char info[600];      /* "NVIDIA H200 (sm_90, device 0): cubin sm_90" */
  struct Loaded *next; /* every model this library loaded (its own copy of this file) */
} Loaded;

static pthread_mutex_t aot_lock = PTHREAD_MUTEX_INITIALIZER;
static Loaded *all_loaded;

/* When the library is unloaded (dlclose, or the process ends), what it
 * loaded goes with it: the plan, the module and the context it holds. */
__attribute__((destructor)) static void unload_all(void) {
  pthread_mutex_lock(&aot_lock);
  while (all_loaded) {
    Loaded *L = all_loaded;
    all_loaded = L->next;
    if (L->cuda) rt_cuda_close(L->cuda);
    rt_cu_program_free(L->prog);
    free(L);
  }
  pthread_mutex_unlock(&aot_lock);
}
static _Thread_local char last_error[600];

static int fail(const RtCuAotModel *m, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(const RtCuAotModel *m, int status, const char *fmt, ...) {
  int n = snprintf(last_error, sizeof last_error, "%.80s: ", m && m->symbol ? m->symbol : "seqc");
  if (n < 0) n = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
  va_end(ap);
  return status;
}

/* ---- architectures ----------------------------------------------------------- */

typedef struct Arch {
  int cc;      /* major*10 + minor: 90 for sm_90a */
  char suffix; /* 0, 'a' or 'f' */
} Arch;

/* prefix, then two or three digits, then an optional 'a' or 'f'. */
static int parse_arch(const char *s, const char *prefix, Arch *a) {
  size_t n = strlen(prefix);
  if (!s || strncmp(s, prefix, n) != 0) return -1;
  s += n;
  int cc = 0, digits = 0;
  while (*s >= '0' && *s <= '9' && digits < 4) cc = cc * 10 + (*s++ - '0'), digits++;
  if (digits < 2 || digits > 3) return -1;
  a->cc = cc;
  a->suffix = 0;
  if (*s == 'a' || *s == 'f') a->suffix = *s++;
  return *s ? -1 : 0;
}

/* How well image i suits device d: 0 not at all, else the higher the
 * better (a cubin for the arch, a cubin of the same major version, PTX). */
static int suits(const RtCuImage *im, Arch d) {
  Arch a;
  if (parse_arch(im->arch, "sm_", &a) == 0) {
    if (a.cc == d.cc) return a.suffix == 'a' ? 3000 : 2999;
    if (a.suffix != 'a' && a.cc / 10 == d.cc / 10 && a.cc < d.cc) return 2000 + a.cc % 10;
    return 0;
  }
  if (parse_arch(im->arch, "compute_", &a) == 0) {
    int ok = a.suffix == 'a'   ? a.cc == d.cc
             : a.suffix == 'f' ? a.cc / 10 == d.cc / 10 && a.cc <= d.cc
                               : a.cc <= d.cc;
    return ok ? 1000 + a.cc : 0;
  }
  return 0;
}

int rt_cu_aot_pick(const RtCuImage *images, int n, const char *device_arch, int *order) {
  Arch d;
  if (!images || !order || parse_arch(device_arch, "sm_", &d) || d.suffix) return 0;
  int k = 0;
  for (int i = 0; i < n; i++) {
    int s = suits(&images[i], d);
    if (!s) continue;
    /* Insertion by score; equal scores keep the library's order. */
    int j = k++;
    while (j > 0 && suits(&images[order[j - 1]], d) < s) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
  return k;
}

/* ---- loading ----------------------------------------------------------------- */

/* The archs of the library's images, for messages. */
static void list_images(const RtCuAotModel *m, char *buf, size_t n) {
  size_t at = 0;
  buf[0] = 0;
  for (int64_t i = 0; i < m->nimages && at + 1 < n; i++) {
    int w = snprintf(buf + at, n - at, "%s%s", i ? ", " : "", m->images[i].arch);
    if (w < 0) break;
    at += (size_t)w;
  }
}

/* The device ordinal: $SEQ_CUDA_DEVICE, else 0. */
static int device_ordinal(const RtCuAotModel *m, int *ordinal) {
  const char *env = getenv("SEQ_CUDA_DEVICE");
  *ordinal = 0;
  if (!env || !*env) return 0;
  int v = 0;
  for (const char *p = env; *p; p++) {
    if (*p < '0' || *p > '9' || v > 9999)
      return fail(m, ST_DEVICE, "SEQ_CUDA_DEVICE='%.40s' is not a device number", env);
    v = v * 10 + (*p - '0');
  }
  *ordinal = v;
  return 0;
}

/* Opens the device and loads the best image that loads; under aot_lock. */
static int load_device(const RtCuAotModel *m, Loaded *L) {
  int ordinal;
  int rc = device_ordinal(m, &ordinal);
  if (rc) return rc;
  RtError err;
  RtCuda *c = NULL;
  if (rt_cuda_open(ordinal, &c, &err)) return fail(m, ST_DEVICE, "%s", err.msg);
  const char *arch = rt_cuda_arch(c);
  int n = m->nimages > 0 && m->nimages < 1024 ? (int)m->nimages : 0;
  int order[1024];
  int k = rt_cu_aot_pick(m->images, n, arch, order);
  char have[400];
  list_images(m, have, sizeof have);
  if (k == 0) {
    rc = fail(m, ST_DEVICE,
              "no image in this library runs on %s (%s); it has %s (rebuild with "
              "--cuda-arch=%s)",
              rt_cuda_name(c), arch, have[0] ? have : "none", arch);
    rt_cuda_close(c);
    return rc;
  }
  /* The best first; one that does not load (a driver older than the
   * toolkit that made it) gives way to the next. */
  char why[sizeof last_error] = "";
  size_t at = 0;
  for (int i = 0; i < k; i++) {
    const RtCuImage *im = &m->images[order[i]];
    RtBlob blob = {(void *)(uintptr_t)im->data, (size_t)im->size};
    if (rt_cuda_load(c, &blob, L->prog->kernels, L->prog->nkernels, &L->dev, &err) == 0) {
      int ptx = strncmp(im->arch, "compute_", 8) == 0;
      snprintf(L->info, sizeof L->info, "%s (%s, device %d): %s %s%s", rt_cuda_name(c), arch,
               ordinal, ptx ? "PTX" : "cubin", im->arch, ptx ? " (compiled by the driver)" : "");
      L->cuda = c;
      return ST_OK;
    }
    int w = snprintf(why + at, sizeof why - at, "%s%s: %s", i ? "; " : "", im->arch, err.msg);
    if (w > 0 && (size_t)w < sizeof why - at) at += (size_t)w;
  }
  rc = fail(m, ST_DEVICE, "no image in this library loads on %s (%s): %s", rt_cuda_name(c), arch,
            why);
  rt_cuda_close(c);
  return rc;
}

/* The library's loaded state: the plan always; the device too when
 * `device` is set. 0, or a status with last_error set. */
static int acquire(const RtCuAotModel *m, int device, Loaded **out) {
  *out = NULL;
  if (!m || !m->state) return fail(m, ST_DEVICE, "no model");
  if (m->version != RT_CU_AOT_VERSION)
    return fail(m, ST_DEVICE, "built for runtime version %lld, this is version %d",
                (long long)m->version, RT_CU_AOT_VERSION);
  pthread_mutex_lock(&aot_lock);
  Loaded *L = *m->state;
  int rc = ST_OK;
  if (!L) {
    RtError err;
    RtCuProgram *p = NULL;
    if (rt_cu_program_read(m->plan, m->plan_size > 0 ? (size_t)m->plan_size : 0, &p, &err)) {
      rc = fail(m, ST_DEVICE, "the library's plan is damaged: %s", err.msg);
    } else if (!(L = calloc(1, sizeof *L))) {
      rt_cu_program_free(p);
      rc = fail(m, ST_NOMEM, "out of memory");
    } else {
      L->prog = p;
      L->next = all_loaded;
      all_loaded = L;
      *m->state = L;
    }
  }
  if (rc == ST_OK && device && !L->cuda) rc = load_device(m, L);
  pthread_mutex_unlock(&aot_lock);
  if (rc == ST_OK) *out = L;
  return rc;
}

/* ---- calls ------------------------------------------------------------------- */

static const char *status_text(int st) {
  switch (st) {
  case ST_ARG:
    return "bad argument";
  case ST_NOMEM:
    return "out of memory, or B*T too large";
  case ST_TOKEN:
    return "a token outside [0, V)";
  case ST_LENGTH:
    return "a lengths value outside [0, T]";
  default:
    return "failed";
  }
}

/* The arguments, checked as the CPU entry points check them (docs/abi.md):
 * host pointers; lengths only when on the host. */
static int check_args(const RtCuAotModel *m, const RtCuProgram *p, const void *const *params,
                      int64_t B, int64_t T, const void *const *inputs, const int32_t *lengths,
                      const void *const *outputs) {
  if (B < 0 || T < 0)
    return fail(m, ST_ARG, "B = %lld, T = %lld (want >= 0)", (long long)B, (long long)T);
  if (B > ((int64_t)1 << 31) || T > ((int64_t)1 << 31))
    return fail(m, ST_NOMEM, "B = %lld, T = %lld is too large", (long long)B, (long long)T);
  if (!params || !inputs || !outputs)
    return fail(m, ST_ARG, "the %s array is NULL",
                !params   ? "params"
                : !inputs ? "inputs"
                          : "outputs");
  for (int j = 0; j < p->nparams; j++)
    if (!params[j]) return fail(m, ST_ARG, "parameter %d is NULL", j);
  for (int j = 0; j < p->ninputs; j++)
    if (!inputs[j]) return fail(m, ST_ARG, "input %d is NULL", j);
  for (int j = 0; j < p->noutputs; j++)
    if (!outputs[j]) return fail(m, ST_ARG, "output %d is NULL", j);
  for (int64_t b = 0; lengths && b < B; b++)
    if (lengths[b] < 0 || lengths[b] > T)
      return fail(m, ST_LENGTH, "lengths[%lld] = %d is outside [0, T = %lld]", (long long)b,
                  lengths[b], (long long)T);
  return ST_OK;
}

/* A status from the executor: -1 is the device's failure (its out of memory
 * is the ABI's), else the ABI's. */
static int finish(const RtCuAotModel *m, int rc, const RtError *err) {
  if (rc == ST_OK) {
    last_error[0] = 0;
    return ST_OK;
  }
  if (rc < 0)
    return fail(m, strstr(err->msg, "CUDA_ERROR_OUT_OF_MEMORY") ? ST_NOMEM : ST_DEVICE, "%s",
                err->msg);
  return fail(m, rc, "%s", status_text(rc));
}

int32_t rt_cu_aot_forward(const RtCuAotModel *m, const float *const *params, int64_t B, int64_t T,
                          const void *const *inputs, const int32_t *lengths,
                          const float *const *state_in, float *const *outputs,
                          float *const *state_out) {
  Loaded *L;
  int rc = acquire(m, 0, &L);
  if (rc) return rc;
  if ((rc = check_args(m, L->prog, (const void *const *)params, B, T, inputs, lengths,
                       (const void *const *)outputs)) ||
      (rc = acquire(m, 1, &L)))
    return rc;
  RtError err;
  rc = rt_cu_forward(L->prog, &L->dev, params, B, T, inputs, lengths, state_in, outputs, state_out,
                     &err);
  return finish(m, rc, &err);
}

int32_t rt_cu_aot_forward_blob(const RtCuAotModel *m, const float *blob, int64_t blob_floats,
                               int64_t B, int64_t T, const void *const *inputs,
                               const int32_t *lengths, const float *const *state_in,
                               float *const *outputs, float *const *state_out) {
  Loaded *L;
  int rc = acquire(m, 0, &L);
  if (rc) return rc;
  const RtCuProgram *p = L->prog;
  int64_t total = 0;
  for (int j = 0; j < p->nparams; j++) total += p->param_floats[j];
  if (!blob || blob_floats != total)
    return fail(m, ST_ARG, "a weights blob of %lld floats (want %lld)",
                blob ? (long long)blob_floats : 0LL, (long long)total);
  const float **params = malloc(((size_t)p->nparams + 1) * sizeof *params);
  if (!params) return fail(m, ST_NOMEM, "out of memory");
  int64_t off = 0;
  for (int j = 0; j < p->nparams; j++) {
    params[j] = blob + off;
    off += p->param_floats[j];
  }
  rc = rt_cu_aot_forward(m, params, B, T, inputs, lengths, state_in, outputs, state_out);
  free(params);
  return rc;
}

int32_t rt_cu_aot_step(const RtCuAotModel *m, const float *const *params, int64_t B,
                       const void *const *inputs, const float *const *state_in,
                       float *const *outputs, float *const *state_out) {
  return rt_cu_aot_forward(m, params, B, 1, inputs, NULL, state_in, outputs, state_out);
}

/* n device addresses from pointers (NULL entries are 0), or NULL for a NULL
 * array; *oom on failure. */
static RtDevPtr *dev_ptrs(const void *const *v, int n, int *oom) {
  if (!v) return NULL;
  RtDevPtr *d = calloc((size_t)n + 1, sizeof *d);
  if (!d) {
    *oom = 1;
    return NULL;
  }
  for (int j = 0; j < n; j++) d[j] = (RtDevPtr)(uintptr_t)v[j];
  return d;
}

int32_t rt_cu_aot_forward_device(const RtCuAotModel *m, const void *const *params, int64_t B,
                                 int64_t T, const void *const *inputs, const int32_t *lengths,
                                 const void *const *state_in, void *const *outputs,
                                 void *const *state_out) {
  return rt_cu_aot_forward_device_stream(m, params, NULL, B, T, inputs, lengths, state_in, outputs,
                                         state_out);
}

int32_t rt_cu_aot_forward_device_stream(const RtCuAotModel *m, const void *const *params,
                                        void *stream, int64_t B, int64_t T,
                                        const void *const *inputs, const int32_t *lengths,
                                        const void *const *state_in, void *const *outputs,
                                        void *const *state_out) {
  return rt_cu_aot_forward_device_io(m, params, stream, RT_CU_IO_F32, B, T, inputs, lengths,
                                     state_in, outputs, state_out);
}

int32_t rt_cu_aot_forward_device_io(const RtCuAotModel *m, const void *const *params, void *stream,
                                    int32_t io, int64_t B, int64_t T, const void *const *inputs,
                                    const int32_t *lengths, const void *const *state_in,
                                    void *const *outputs, void *const *state_out) {
  if (io != RT_CU_IO_F32 && io != RT_CU_IO_BF16 && io != RT_CU_IO_F16)
    return fail(m, ST_ARG, "io %d: expected 0 (float32), 1 (bfloat16) or 2 (float16)", (int)io);
  Loaded *L;
  int rc = acquire(m, 0, &L);
  if (rc) return rc;
  if ((rc = check_args(m, L->prog, params, B, T, inputs, NULL, (const void *const *)outputs)) ||
      (rc = acquire(m, 1, &L)))
    return rc;
  const RtCuProgram *p = L->prog;
  int oom = 0;
  RtDevPtr *dp = dev_ptrs(params, p->nparams, &oom);
  RtDevPtr *di = dev_ptrs(inputs, p->ninputs, &oom);
  RtDevPtr *dsi = dev_ptrs(state_in, p->nstates, &oom);
  RtDevPtr *d_o = dev_ptrs((const void *const *)outputs, p->noutputs, &oom);
  RtDevPtr *dso = dev_ptrs((const void *const *)state_out, p->nstates, &oom);
  RtError err;
  RtCuDevice dev = L->dev; /* the library's device, on the call's stream */
  dev.stream = stream;
  if (oom)
    rc = fail(m, ST_NOMEM, "out of memory");
  else
    rc = finish(
        m,
        rt_cu_run_io(p, &dev, io, dp, B, T, di, (RtDevPtr)(uintptr_t)lengths, dsi, d_o, dso, &err),
        &err);
  free(dp);
  free(di);
  free(dsi);
  free(d_o);
  free(dso);
  return rc;
}

int32_t rt_cu_aot_dims(const RtCuAotModel *m, int64_t *out) {
  if (!m) return 0;
  for (int64_t i = 0; out && i < m->ndims; i++) out[i] = m->dims[i];
  return (int32_t)m->ndims;
}

const char *rt_cu_aot_last_error(const RtCuAotModel *m) {
  (void)m;
  return last_error;
}

const void *rt_cu_aot_plan(const RtCuAotModel *m, int64_t *size) {
  if (size) *size = m ? m->plan_size : 0;
  return m ? m->plan : NULL;
}

const char *rt_cu_aot_device(const RtCuAotModel *m) {
  if (!m || !m->state) return "";
  pthread_mutex_lock(&aot_lock);
  const Loaded *L = *m->state;
  const char *s = L && L->cuda ? L->info : "";
  pthread_mutex_unlock(&aot_lock);
  return s;
}
