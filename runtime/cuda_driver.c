/* cuda_driver.c - one CUDA device through the driver API: a context, the
 * modules loaded into it and an RtCuDevice that allocates, copies and
 * launches there (docs/cuda.md, "Run time").
 *
 * libcuda.so.1 (or $SEQ_CUDA_DRIVER_LIB) is opened with dlopen once per
 * process, and cuInit runs then too; the outcome is kept. The functions are
 * typed here, without cuda.h, and the _v2 entry points are asked for by name
 * where the driver exports them (what cuda.h's macros would pick). The
 * toolkit's stub libcuda (lib64/stubs) is refused: it links but every call
 * fails, so it would pass for a driver only to fail later and obscurely. */
#define _GNU_SOURCE /* dladdr: where the driver was found */
#include "runtime/rt_cuda.h"
#include "runtime/rt_internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the driver's API, typed here (no cuda.h) ------------------------------ */

typedef int CuResult; /* CUresult: 0 is CUDA_SUCCESS */
typedef int CuDevice;
typedef struct CuCtxImpl *CuContext;
typedef struct CuModImpl *CuModule;
typedef struct CuFuncImpl *CuFunction;
typedef struct CuStreamImpl *CuStream;
typedef unsigned long long CuDevPtr; /* CUdeviceptr (v2): 64 bits */

enum {
  CU_ERR_INVALID_VALUE = 1,
  CU_ERR_OUT_OF_MEMORY = 2,
  CU_ERR_STUB_LIBRARY = 34,
  CU_ERR_NO_DEVICE = 100,
  CU_JIT_ERROR_LOG_BUFFER = 5,
  CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
  CU_ATTR_CC_MAJOR = 75,
  CU_ATTR_CC_MINOR = 76,
};

typedef CuResult (*CuInitFn)(unsigned);
typedef CuResult (*CuErrStrFn)(CuResult, const char **);
typedef CuResult (*CuDeviceGetCountFn)(int *);
typedef CuResult (*CuDeviceGetFn)(CuDevice *, int);
typedef CuResult (*CuDeviceGetNameFn)(char *, int, CuDevice);
typedef CuResult (*CuDeviceGetAttributeFn)(int *, int, CuDevice);
typedef CuResult (*CuDeviceTotalMemFn)(size_t *, CuDevice);
typedef CuResult (*CuPrimaryCtxRetainFn)(CuContext *, CuDevice);
typedef CuResult (*CuPrimaryCtxReleaseFn)(CuDevice);
typedef CuResult (*CuCtxSetCurrentFn)(CuContext);
typedef CuResult (*CuCtxSynchronizeFn)(void);
typedef CuResult (*CuModuleLoadDataExFn)(CuModule *, const void *, unsigned, int *, void **);
typedef CuResult (*CuModuleUnloadFn)(CuModule);
typedef CuResult (*CuModuleGetFunctionFn)(CuFunction *, CuModule, const char *);
typedef CuResult (*CuMemAllocFn)(CuDevPtr *, size_t);
typedef CuResult (*CuMemFreeFn)(CuDevPtr);
typedef CuResult (*CuMemsetD8Fn)(CuDevPtr, unsigned char, size_t, CuStream);
typedef CuResult (*CuMemcpyHtoDFn)(CuDevPtr, const void *, size_t, CuStream);
typedef CuResult (*CuMemcpyDtoHFn)(void *, CuDevPtr, size_t, CuStream);
typedef CuResult (*CuMemcpyDtoDFn)(CuDevPtr, CuDevPtr, size_t, CuStream);
typedef CuResult (*CuStreamSynchronizeFn)(CuStream);
typedef CuResult (*CuLaunchKernelFn)(CuFunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                     unsigned, unsigned, CuStream, void **, void **);

typedef struct CuApi {
  void *lib;
  CuInitFn Init;
  CuErrStrFn GetErrorString, GetErrorName;
  CuDeviceGetCountFn DeviceGetCount;
  CuDeviceGetFn DeviceGet;
  CuDeviceGetNameFn DeviceGetName;
  CuDeviceGetAttributeFn DeviceGetAttribute;
  CuDeviceTotalMemFn DeviceTotalMem;
  CuPrimaryCtxRetainFn PrimaryCtxRetain;
  CuPrimaryCtxReleaseFn PrimaryCtxRelease;
  CuCtxSetCurrentFn CtxSetCurrent;
  CuCtxSynchronizeFn CtxSynchronize;
  CuModuleLoadDataExFn ModuleLoadDataEx;
  CuModuleUnloadFn ModuleUnload;
  CuModuleGetFunctionFn ModuleGetFunction;
  CuMemAllocFn MemAlloc;
  CuMemFreeFn MemFree;
  CuMemsetD8Fn MemsetD8;
  CuMemcpyHtoDFn MemcpyHtoD;
  CuMemcpyDtoHFn MemcpyDtoH;
  CuMemcpyDtoDFn MemcpyDtoD;
  CuLaunchKernelFn LaunchKernel;
  CuStreamSynchronizeFn StreamSynchronize;
} CuApi;

static pthread_once_t cu_once = PTHREAD_ONCE_INIT;
static CuApi cu;
static int cu_status = RT_ERR_IO;
static char cu_msg[sizeof(RtError)];

static const char *cu_resolve(void *lib, CuApi *a) {
#define CU_SYM(field, type, name)                                                                  \
  if (!(a->field = (type)(uintptr_t)dlsym(lib, name))) return name
  CU_SYM(Init, CuInitFn, "cuInit");
  CU_SYM(GetErrorString, CuErrStrFn, "cuGetErrorString");
  CU_SYM(GetErrorName, CuErrStrFn, "cuGetErrorName");
  CU_SYM(DeviceGetCount, CuDeviceGetCountFn, "cuDeviceGetCount");
  CU_SYM(DeviceGet, CuDeviceGetFn, "cuDeviceGet");
  CU_SYM(DeviceGetName, CuDeviceGetNameFn, "cuDeviceGetName");
  CU_SYM(DeviceGetAttribute, CuDeviceGetAttributeFn, "cuDeviceGetAttribute");
  CU_SYM(DeviceTotalMem, CuDeviceTotalMemFn, "cuDeviceTotalMem_v2");
  CU_SYM(PrimaryCtxRetain, CuPrimaryCtxRetainFn, "cuDevicePrimaryCtxRetain");
  CU_SYM(PrimaryCtxRelease, CuPrimaryCtxReleaseFn, "cuDevicePrimaryCtxRelease_v2");
  CU_SYM(CtxSetCurrent, CuCtxSetCurrentFn, "cuCtxSetCurrent");
  CU_SYM(CtxSynchronize, CuCtxSynchronizeFn, "cuCtxSynchronize");
  CU_SYM(ModuleLoadDataEx, CuModuleLoadDataExFn, "cuModuleLoadDataEx");
  CU_SYM(ModuleUnload, CuModuleUnloadFn, "cuModuleUnload");
  CU_SYM(ModuleGetFunction, CuModuleGetFunctionFn, "cuModuleGetFunction");
  CU_SYM(MemAlloc, CuMemAllocFn, "cuMemAlloc_v2");
  CU_SYM(MemFree, CuMemFreeFn, "cuMemFree_v2");
  /* Every copy and fill is ordered on the call's stream (RtCuDevice). */
  CU_SYM(MemsetD8, CuMemsetD8Fn, "cuMemsetD8Async");
  CU_SYM(MemcpyHtoD, CuMemcpyHtoDFn, "cuMemcpyHtoDAsync_v2");
  CU_SYM(MemcpyDtoH, CuMemcpyDtoHFn, "cuMemcpyDtoHAsync_v2");
  CU_SYM(MemcpyDtoD, CuMemcpyDtoDFn, "cuMemcpyDtoDAsync_v2");
  CU_SYM(LaunchKernel, CuLaunchKernelFn, "cuLaunchKernel");
  CU_SYM(StreamSynchronize, CuStreamSynchronizeFn, "cuStreamSynchronize");
#undef CU_SYM
  return NULL;
}

/* "what: the driver's text (CUDA_ERROR_NAME)"; the status says what kind of
 * failure it is where one fits. */
static int cu_fail(RtError *err, CuResult r, const char *what) {
  const char *s = NULL, *n = NULL;
  if (cu.GetErrorString && cu.GetErrorString(r, &s) != 0) s = NULL;
  if (cu.GetErrorName && cu.GetErrorName(r, &n) != 0) n = NULL;
  int status = r == CU_ERR_OUT_OF_MEMORY   ? RT_ERR_NOMEM
               : r == CU_ERR_INVALID_VALUE ? RT_ERR_ARG
                                           : RT_ERR_IO;
  if (s && n) return rt_fail(err, status, "%s: %s (%s)", what, s, n);
  return rt_fail(err, status, "%s: CUDA error %d", what, r);
}

static void cu_load(void) {
  const char *env = getenv("SEQ_CUDA_DRIVER_LIB");
  const char *path = env && env[0] ? env : "libcuda.so.1";
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(cu_msg, sizeof cu_msg, "CUDA driver not found (%s)", path);
    return;
  }
  CuApi a;
  memset(&a, 0, sizeof a);
  const char *missing = cu_resolve(lib, &a);
  Dl_info info;
  if (missing) {
    snprintf(cu_msg, sizeof cu_msg, "CUDA driver %s lacks %s", path, missing);
  } else if (dladdr((void *)(uintptr_t)a.Init, &info) && info.dli_fname &&
             strstr(info.dli_fname, "/stubs/")) {
    snprintf(cu_msg, sizeof cu_msg, "CUDA driver not found (%s is the toolkit's stub)",
             info.dli_fname);
  } else {
    CuResult r = a.Init(0);
    cu = a; /* for cu_fail's texts */
    if (r == 0) {
      cu.lib = lib;
      cu_status = RT_OK;
      return;
    }
    if (r == CU_ERR_STUB_LIBRARY)
      snprintf(cu_msg, sizeof cu_msg, "CUDA driver not found (%s is a stub)", path);
    else if (r == CU_ERR_NO_DEVICE)
      snprintf(cu_msg, sizeof cu_msg, "no CUDA device");
    else {
      RtError e;
      cu_fail(&e, r, "cuInit");
      snprintf(cu_msg, sizeof cu_msg, "%s", e.msg);
    }
    memset(&cu, 0, sizeof cu);
  }
  dlclose(lib);
}

/* ---- devices and contexts ---------------------------------------------------- */

typedef struct CuMod CuMod;

struct RtCuda {
  int ordinal;
  CuDevice dev;
  CuContext ctx;
  char arch[16];
  char name[256];
  size_t memory;
  pthread_mutex_t lock; /* guards mods */
  CuMod *mods;
};

/* A loaded module: the RtCuDevice's ctx. */
struct CuMod {
  RtCuda *cuda;
  CuModule mod;
  int n;
  CuFunction *fns;
  char **names; /* for messages */
  CuMod *prev, *next;
};

/* The context is made current on every entry: callers may run on any
 * thread, and cuCtxSetCurrent costs a thread-local store. */
static int cu_enter(const RtCuda *c, RtError *err) {
  CuResult r = cu.CtxSetCurrent(c->ctx);
  return r ? cu_fail(err, r, "cuCtxSetCurrent") : RT_OK;
}

int rt_cuda_open(int ordinal, RtCuda **out, RtError *err) {
  if (!out) return rt_fail(err, RT_ERR_ARG, "rt_cuda_open: no output");
  *out = NULL;
  pthread_once(&cu_once, cu_load);
  if (cu_status) return rt_fail(err, cu_status, "%s", cu_msg);
  int count = 0;
  CuResult r = cu.DeviceGetCount(&count);
  if (r == CU_ERR_NO_DEVICE || (r == 0 && count == 0))
    return rt_fail(err, RT_ERR_IO, "no CUDA device");
  if (r) return cu_fail(err, r, "cuDeviceGetCount");
  if (ordinal < 0 || ordinal >= count)
    return rt_fail(err, RT_ERR_ARG, "CUDA device %d does not exist (%d device%s)", ordinal, count,
                   count == 1 ? "" : "s");
  RtCuda *c = calloc(1, sizeof *c);
  if (!c) return rt_fail(err, RT_ERR_NOMEM, "out of memory");
  c->ordinal = ordinal;
  int major = 0, minor = 0;
  char what[64];
  snprintf(what, sizeof what, "CUDA device %d", ordinal);
  if ((r = cu.DeviceGet(&c->dev, ordinal)) ||
      (r = cu.DeviceGetAttribute(&major, CU_ATTR_CC_MAJOR, c->dev)) ||
      (r = cu.DeviceGetAttribute(&minor, CU_ATTR_CC_MINOR, c->dev)) ||
      (r = cu.DeviceGetName(c->name, (int)sizeof c->name, c->dev)) ||
      (r = cu.DeviceTotalMem(&c->memory, c->dev))) {
    free(c);
    return cu_fail(err, r, what);
  }
  c->name[sizeof c->name - 1] = 0;
  snprintf(c->arch, sizeof c->arch, "sm_%d%d", major, minor);
  if ((r = cu.PrimaryCtxRetain(&c->ctx, c->dev))) {
    free(c);
    return cu_fail(err, r, "cuDevicePrimaryCtxRetain");
  }
  int rc = cu_enter(c, err);
  if (rc || pthread_mutex_init(&c->lock, NULL) != 0) {
    cu.PrimaryCtxRelease(c->dev);
    free(c);
    return rc ? rc : rt_fail(err, RT_ERR_NOMEM, "rt_cuda_open: cannot make a mutex");
  }
  *out = c;
  return RT_OK;
}

const char *rt_cuda_arch(const RtCuda *c) {
  return c ? c->arch : "";
}

const char *rt_cuda_name(const RtCuda *c) {
  return c ? c->name : "";
}

size_t rt_cuda_memory(const RtCuda *c) {
  return c ? c->memory : 0;
}

static void mod_free(CuMod *m) {
  if (m->mod) cu.ModuleUnload(m->mod);
  for (int i = 0; i < m->n; i++) free(m->names ? m->names[i] : NULL);
  free(m->names);
  free(m->fns);
  free(m);
}

void rt_cuda_close(RtCuda *c) {
  if (!c) return;
  cu_enter(c, NULL);
  while (c->mods) {
    CuMod *m = c->mods;
    c->mods = m->next;
    mod_free(m);
  }
  pthread_mutex_destroy(&c->lock);
  /* Releasing the last reference destroys the primary context and with it
   * whatever memory the caller left allocated. */
  cu.PrimaryCtxRelease(c->dev);
  free(c);
}

/* ---- the RtCuDevice ---------------------------------------------------------- */

static int dev_alloc(void *ctx, void *stream, size_t bytes, RtDevPtr *out, RtError *err) {
  CuMod *m = ctx;
  *out = 0;
  int rc = cu_enter(m->cuda, err);
  if (rc) return rc;
  /* cuMemAlloc refuses 0 bytes; the contract wants an address for them. */
  size_t n = bytes ? bytes : 1;
  CuDevPtr p = 0;
  CuResult r = cu.MemAlloc(&p, n);
  if (r) {
    char what[64];
    snprintf(what, sizeof what, "cuMemAlloc(%zu bytes)", bytes);
    return cu_fail(err, r, what);
  }
  if ((r = cu.MemsetD8(p, 0, n, stream))) {
    cu.MemFree(p);
    return cu_fail(err, r, "cuMemsetD8");
  }
  *out = (RtDevPtr)p;
  return RT_OK;
}

static void dev_free(void *ctx, RtDevPtr p) {
  CuMod *m = ctx;
  if (!p || cu_enter(m->cuda, NULL)) return;
  cu.MemFree((CuDevPtr)p);
}

static int dev_copy(void *ctx, void *stream, RtDevPtr dst, RtDevPtr src, size_t bytes,
                    RtCuCopyKind kind, RtError *err) {
  CuMod *m = ctx;
  if (bytes == 0) return RT_OK;
  int rc = cu_enter(m->cuda, err);
  if (rc) return rc;
  CuResult r;
  const char *call;
  switch (kind) {
  case RT_CU_H2D:
    r = cu.MemcpyHtoD((CuDevPtr)dst, (const void *)(uintptr_t)src, bytes, stream);
    call = "cuMemcpyHtoDAsync";
    break;
  case RT_CU_D2H:
    /* Done when this returns, whatever the host memory is (an async copy
     * into page-locked memory would return at once). */
    r = cu.MemcpyDtoH((void *)(uintptr_t)dst, (CuDevPtr)src, bytes, stream);
    call = "cuMemcpyDtoHAsync";
    if (!r) {
      r = stream ? cu.StreamSynchronize(stream) : cu.CtxSynchronize();
      call = stream ? "cuStreamSynchronize after cuMemcpyDtoHAsync"
                    : "cuCtxSynchronize after cuMemcpyDtoHAsync";
    }
    break;
  case RT_CU_D2D:
    r = cu.MemcpyDtoD((CuDevPtr)dst, (CuDevPtr)src, bytes, stream);
    call = "cuMemcpyDtoDAsync";
    break;
  default:
    return rt_fail(err, RT_ERR_ARG, "copy: bad kind %d", (int)kind);
  }
  if (!r) return RT_OK;
  char what[80];
  snprintf(what, sizeof what, "%s(%zu bytes)", call, bytes);
  return cu_fail(err, r, what);
}

static int dev_zero(void *ctx, void *stream, RtDevPtr dst, size_t bytes, RtError *err) {
  CuMod *m = ctx;
  if (bytes == 0) return RT_OK;
  int rc = cu_enter(m->cuda, err);
  if (rc) return rc;
  CuResult r = cu.MemsetD8((CuDevPtr)dst, 0, bytes, stream);
  if (!r) return RT_OK;
  char what[64];
  snprintf(what, sizeof what, "cuMemsetD8(%zu bytes)", bytes);
  return cu_fail(err, r, what);
}

static int dev_launch(void *ctx, void *stream, int kernel, uint32_t grid, uint32_t block,
                      RtDevPtr frame, RtError *err) {
  CuMod *m = ctx;
  if (kernel < 0 || kernel >= m->n)
    return rt_fail(err, RT_ERR_ARG, "launch: kernel %d out of range (%d kernels)", kernel, m->n);
  /* No blocks is no work (a batch of 0), not an error. */
  if (grid == 0) return RT_OK;
  int rc = cu_enter(m->cuda, err);
  if (rc) return rc;
  /* The kernel's one parameter, the frame's address; the driver copies it
   * from here at launch. */
  CuDevPtr arg = (CuDevPtr)frame;
  void *params[1] = {&arg};
  CuResult r = cu.LaunchKernel(m->fns[kernel], grid, 1, 1, block, 1, 1, 0, stream, params, NULL);
  if (!r) return RT_OK;
  char what[400];
  snprintf(what, sizeof what, "cuLaunchKernel(%.200s, %u blocks of %u threads)", m->names[kernel],
           grid, block);
  return cu_fail(err, r, what);
}

static int dev_sync(void *ctx, void *stream, RtError *err) {
  CuMod *m = ctx;
  int rc = cu_enter(m->cuda, err);
  if (rc) return rc;
  if (stream) {
    CuResult r = cu.StreamSynchronize(stream);
    return r ? cu_fail(err, r, "cuStreamSynchronize") : RT_OK;
  }
  CuResult r = cu.CtxSynchronize();
  return r ? cu_fail(err, r, "cuCtxSynchronize") : RT_OK;
}

/* ---- modules ----------------------------------------------------------------- */

/* A cubin or fatbinary goes to the driver as it is; anything else is PTX,
 * which the driver reads up to a NUL, so it gets one. */
static int is_binary(const RtBlob *b) {
  const unsigned char *p = b->data;
  if (b->size < 4) return 0;
  return (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') ||
         (p[0] == 0x50 && p[1] == 0xed && p[2] == 0x55 && p[3] == 0xba);
}

int rt_cuda_load(RtCuda *c, const RtBlob *image, const char *const *names, int n, RtCuDevice *out,
                 RtError *err) {
  if (!c || !image || !image->data || !image->size || !out || n < 0 || (n > 0 && !names))
    return rt_fail(err, RT_ERR_ARG, "rt_cuda_load: missing module, names or output");
  memset(out, 0, sizeof *out);
  int rc = cu_enter(c, err);
  if (rc) return rc;
  CuMod *m = calloc(1, sizeof *m);
  if (!m || (n && (!(m->fns = calloc((size_t)n, sizeof *m->fns)) ||
                   !(m->names = calloc((size_t)n, sizeof *m->names))))) {
    if (m) mod_free(m);
    return rt_fail(err, RT_ERR_NOMEM, "rt_cuda_load: out of memory");
  }
  m->cuda = c;
  m->n = n;

  char *text = NULL;
  const void *img = image->data;
  if (!is_binary(image)) {
    if (!(text = malloc(image->size + 1))) {
      mod_free(m);
      return rt_fail(err, RT_ERR_NOMEM, "rt_cuda_load: out of memory");
    }
    memcpy(text, image->data, image->size);
    text[image->size] = 0;
    img = text;
  }
  char log[2048] = "";
  int opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *vals[2] = {log, (void *)(uintptr_t)sizeof log};
  CuResult r = cu.ModuleLoadDataEx(&m->mod, img, 2, opts, vals);
  free(text);
  if (r) {
    m->mod = NULL;
    mod_free(m);
    /* The log's first line says what ptxas or the loader disliked. */
    log[sizeof log - 1] = 0;
    char *nl = strchr(log, '\n');
    if (nl) *nl = 0;
    char what[400];
    snprintf(what, sizeof what, "cuModuleLoadDataEx%s%.300s%s", log[0] ? " (" : "", log,
             log[0] ? ")" : "");
    return cu_fail(err, r, what);
  }
  for (int i = 0; i < n; i++) {
    r = names[i] ? cu.ModuleGetFunction(&m->fns[i], m->mod, names[i]) : CU_ERR_INVALID_VALUE;
    if (r || !(m->names[i] = strdup(names[i]))) {
      char what[300];
      snprintf(what, sizeof what, "cuModuleGetFunction(%.200s)", names[i] ? names[i] : "(null)");
      mod_free(m);
      return r ? cu_fail(err, r, what) : rt_fail(err, RT_ERR_NOMEM, "%s: out of memory", what);
    }
  }
  pthread_mutex_lock(&c->lock);
  m->next = c->mods;
  if (c->mods) c->mods->prev = m;
  c->mods = m;
  pthread_mutex_unlock(&c->lock);

  out->ctx = m;
  out->stream = NULL; /* the default stream; a caller may set its own per call */
  out->alloc = dev_alloc;
  out->free = dev_free;
  out->copy = dev_copy;
  out->zero = dev_zero;
  out->launch = dev_launch;
  out->sync = dev_sync;
  return RT_OK;
}

void rt_cuda_unload(RtCuDevice *d) {
  if (!d || !d->ctx || d->launch != dev_launch) return;
  CuMod *m = d->ctx;
  RtCuda *c = m->cuda;
  pthread_mutex_lock(&c->lock);
  if (m->prev)
    m->prev->next = m->next;
  else
    c->mods = m->next;
  if (m->next) m->next->prev = m->prev;
  pthread_mutex_unlock(&c->lock);
  cu_enter(c, NULL);
  mod_free(m);
  memset(d, 0, sizeof *d);
}
