/* api.c - include/seq.h on top of the pipeline (driver/pipeline.h). Each
 * module owns its arena, diagnostics, pipeline and LLJIT, so modules share
 * nothing mutable and compile independently on different threads; the context
 * only marks the library's initialization.
 *
 * Running one module from several threads at once: the generated forward and
 * step allocate their scratch per call and read the module's parameter table
 * only (docs/abi.md), so a run touches nothing mutable of the module but the
 * error message. A failure's message goes to a per-thread buffer (the caller
 * reads it back on the thread that failed) and, under the module's lock, to
 * the module's own; what else a run may change lazily (the CUDA module's
 * device copy of the weights, the report, entry-point lookups in the arena)
 * is done under that lock. */
#include "seq.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt_cpu.h"
#include "runtime/rt_cuda.h"

struct SeqContext {
  int initialized;
};

struct SeqModule {
  Arena *arena;
  SrcMgr sm;
  DiagEngine de;
  Pipeline pipe;
  const AbiSignature *sig; /* the compiled root's, once compiled */
  CgJit *jit;
  SeqDiagnostic *diags;
  int ndiags;
  const float **params; /* per signature param: bound data or NULL */
  float **owned;        /* copies made from safetensors */
  AbiForwardFn forward;
  AbiStepFn step;
  /* The weights packed once (seq_module_prepare): the entry points that
   * read them, and the block while it is current (dropped by binding). */
  AbiForwardPreparedFn forward_prepared;
  AbiStepPreparedFn step_prepared;
  AbiPrepareFn prepare;
  int64_t prepared_floats;
  float *prepared;
  int is_prepared;
  int threads;
  /* The CUDA backend (SeqOptions.backend "cuda"): the device, the loaded
   * program, and the params on the device (uploaded at the first forward
   * after binding). */
  RtCuda *cu;
  RtCuDevice dev;
  RtDevPtr *dparams;
  uint64_t id;          /* unique per module of the process: the per-thread error's owner */
  pthread_mutex_t lock; /* error, dparams (and the CUDA run), report, arena after compiling */
  char *diag_text;      /* every diagnostic as the CLI prints it */
  char *report;         /* seq_module_report's JSON, made at the first call */
  char error[512];
  RtNewtonWarm *warm; /* SeqOptions.newton_warm: the Newton solves' last trajectories */
};

/* The calling thread's last failure, and the module it was on. */
static _Thread_local struct {
  uint64_t id;
  char msg[512];
} last_error;
static uint64_t next_module_id;

/* A module that compiled, for either backend. */
static int compiled(const SeqModule *m) {
  return m && (m->jit || m->cu);
}

static SeqStatus fail(SeqModule *m, SeqStatus st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static SeqStatus fail(SeqModule *m, SeqStatus st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error.msg, sizeof last_error.msg, fmt, ap);
  va_end(ap);
  last_error.id = m->id;
  pthread_mutex_lock(&m->lock);
  memcpy(m->error, last_error.msg, sizeof m->error);
  pthread_mutex_unlock(&m->lock);
  return st;
}

SeqContext *seq_context_create(void) {
  SeqContext *cx = seq_malloc(sizeof *cx);
  if (!cx) return NULL;
  cx->initialized = 1;
  cg_llvm_init();
  return cx;
}

void seq_context_destroy(SeqContext *cx) {
  seq_free(cx);
}

/* Copies the engine's records into the public form. */
static void collect_diags(SeqModule *m) {
  m->ndiags = m->de.diags.n;
  m->diags = arena_calloc(m->arena, (size_t)m->ndiags + 1, sizeof(SeqDiagnostic));
  if (!m->diags) {
    m->ndiags = 0;
    return;
  }
  for (int i = 0; i < m->ndiags; i++) {
    const Diag *d = &m->de.diags.v[i];
    m->diags[i].file = d->loc.file ? d->loc.file->name : NULL;
    m->diags[i].line = d->loc.file ? d->loc.line : 0;
    m->diags[i].col = d->loc.file ? d->loc.col : 0;
    m->diags[i].severity = d->severity == DIAG_ERROR     ? SEQ_SEVERITY_ERROR
                           : d->severity == DIAG_WARNING ? SEQ_SEVERITY_WARNING
                                                         : SEQ_SEVERITY_NOTE;
    m->diags[i].message = d->message;
  }
  /* The text, with the source line and caret (diag_format, as the CLI). */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f) {
    for (int i = 0; i < m->ndiags; i++) diag_format(f, &m->de.diags.v[i]);
    if (fclose(f) == 0 && buf) m->diag_text = arena_strndup(m->arena, buf, len);
  }
  free(buf);
}

static const char *first_error(SeqModule *m) {
  for (int i = 0; i < m->de.diags.n; i++)
    if (m->de.diags.v[i].severity == DIAG_ERROR) return m->de.diags.v[i].message;
  return "compilation failed";
}

/* A weights file and, through the pipeline, whether the root is a single
 * cell, which also accepts `NAME_l0` for a missing `NAME` (a one-layer
 * PyTorch state_dict), as the CLI does (docs/cli.md). */
typedef struct StFile {
  RtSafetensors *sf;
  const Pipeline *pipe; /* NULL: no _l0 names */
} StFile;

static int allow_l0(const StFile *f) {
  const IrModule *src = f->pipe ? f->pipe->source : NULL;
  return src && src->funcs.v[src->entry]->kind == IR_FN_CELL;
}

/* The stored name of parameter `name` (in buf if it is the _l0 form), or NULL. */
static const char *st_resolve(const StFile *f, const char *name, char *buf, size_t n) {
  if (rt_st_find_any(f->sf, name)) return name;
  if (!allow_l0(f)) return NULL;
  snprintf(buf, n, "%s_l0", name);
  return rt_st_find_any(f->sf, buf) ? buf : NULL;
}

static int st_lookup(void *ctx, const char *name, int *ndim, int64_t *shape) {
  char buf[512];
  const StFile *f = ctx;
  const char *stored = st_resolve(f, name, buf, sizeof buf);
  const RtTensorInfo *ti = stored ? rt_st_find_any(f->sf, stored) : NULL;
  if (!ti) return 0;
  *ndim = ti->ndim;
  memcpy(shape, ti->shape, sizeof(int64_t) * (size_t)ti->ndim);
  return 1;
}

enum { MAX_DIMS = 64 };

/* "H=256,I=64" into names and values; a dim given twice is an error, as on
 * the command line. */
static int parse_dims(SeqModule *m, const char *spec, const char **names, int64_t *values, int *n) {
  const char *p = spec;
  *n = 0;
  while (p && *p) {
    const char *eq = strchr(p, '='), *comma = strchr(p, ',');
    if (!eq || (comma && comma < eq)) {
      diag_error(&m->de, (SrcLoc){0}, "dims must look like H=256,I=64, got '%s'", spec);
      return -1;
    }
    char *end;
    long long v = strtoll(eq + 1, &end, 10);
    if (end == eq + 1 || (*end && *end != ',')) {
      diag_error(&m->de, (SrcLoc){0}, "dims must look like H=256,I=64, got '%s'", spec);
      return -1;
    }
    char *name = arena_strndup(m->arena, p, (size_t)(eq - p));
    if (!name) return -1;
    for (int i = 0; i < *n; i++)
      if (strcmp(names[i], name) == 0) {
        diag_error(&m->de, (SrcLoc){0}, "dims: '%s' is given twice", name);
        return -1;
      }
    if (*n == MAX_DIMS) {
      diag_error(&m->de, (SrcLoc){0}, "dims: more than %d entries", MAX_DIMS);
      return -1;
    }
    names[*n] = name;
    values[(*n)++] = v;
    p = *end ? end + 1 : end;
  }
  return 0;
}

/* Whether the source file can be read (a directory cannot); if not, an
 * error naming it. Its imports are the compiler's to report. */
static int readable_file(SeqModule *m, const char *path) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  int ok = f && fstat(fileno(f), &st) == 0 && !S_ISDIR(st.st_mode);
  if (!f)
    diag_error(&m->de, (SrcLoc){0}, "cannot open '%s': %s", path, strerror(errno));
  else if (!ok)
    diag_error(&m->de, (SrcLoc){0}, "'%s' is a directory, not a .seq file", path);
  if (f) fclose(f);
  return ok;
}

/* The CUDA backend: the pipeline's CUDA program, compiled by NVRTC (through
 * the kernel cache) for device 0's architecture and loaded there. */
static SeqStatus cuda_compile(SeqModule *m, PipeOptions *po) {
  po->goal = PIPE_CUDA;
  if (pipeline_run(&m->pipe, po)) return SEQ_ERR_COMPILE;
  m->sig = &m->pipe.sched->sig;
  RtError err;
  RtBlob image = {0};
  if (rt_cuda_open(0, &m->cu, &err)) {
    m->cu = NULL;
    diag_error(&m->de, (SrcLoc){0}, "%s", err.msg);
    return SEQ_ERR_DEVICE;
  }
  SeqStatus st = SEQ_OK;
  if (rt_nvrtc_compile(m->pipe.cuda->source, m->sig->symbol, rt_cuda_arch(m->cu), 1, &image,
                       &err)) {
    st = err.msg[0] && strstr(err.msg, "NVRTC not found") ? SEQ_ERR_DEVICE : SEQ_ERR_COMPILE;
  } else if (rt_cuda_load(m->cu, &image, m->pipe.cuda->kernels, m->pipe.cuda->nkernels, &m->dev,
                          &err)) {
    st = SEQ_ERR_DEVICE;
  }
  if (st != SEQ_OK) {
    diag_error(&m->de, (SrcLoc){0}, "%s", err.msg);
    /* A module that did not compile is no CUDA module (compiled() says). */
    rt_cuda_close(m->cu);
    m->cu = NULL;
  }
  rt_blob_free(&image);
  return st;
}

/* Frees the params' device copies (a new binding uploads again). */
static void cuda_drop_params(SeqModule *m) {
  if (!m->dparams) return;
  for (int i = 0; i < m->sig->params.n; i++)
    if (m->dparams[i]) m->dev.free(m->dev.ctx, m->dparams[i]);
  seq_free(m->dparams);
  m->dparams = NULL;
}

/* The params' device copies, uploaded on `stream` (the call's) at the first
 * forward after they were bound; every call waits for its stream before it
 * returns, so a later call on another stream finds them in place. */
static SeqStatus cuda_upload_params(SeqModule *m, void *stream) {
  if (m->dparams) return SEQ_OK;
  m->dparams = seq_malloc(sizeof *m->dparams * (size_t)(m->sig->params.n + 1));
  if (!m->dparams) return fail(m, SEQ_ERR_NOMEM, "out of memory");
  memset(m->dparams, 0, sizeof *m->dparams * (size_t)(m->sig->params.n + 1));
  RtError err;
  for (int i = 0; i < m->sig->params.n; i++) {
    size_t bytes = sizeof(float) * (size_t)m->sig->params.v[i].numel;
    if (m->dev.alloc(m->dev.ctx, stream, bytes, &m->dparams[i], &err) ||
        m->dev.copy(m->dev.ctx, stream, m->dparams[i], (RtDevPtr)(uintptr_t)m->params[i], bytes,
                    RT_CU_H2D, &err)) {
      cuda_drop_params(m);
      return fail(m, SEQ_ERR_DEVICE, "%s", err.msg);
    }
  }
  return SEQ_OK;
}

static SeqStatus status_of(SeqModule *m, int rc, const RtError *err) {
  if (rc < 0) return fail(m, SEQ_ERR_DEVICE, "%s", err ? err->msg : "the device failed");
  if (rc == 0) return SEQ_OK;
  return fail(m,
              rc == ABI_ERR_ARG     ? SEQ_ERR_ARG
              : rc == ABI_ERR_NOMEM ? SEQ_ERR_NOMEM
                                    : SEQ_ERR_RUN,
              "%s", abi_status_message(rc));
}

static SeqStatus compile(SeqContext *cx, const char *path, const char *name, const char *source,
                         const SeqOptions *opt, SeqModule **out) {
  if (!out) return SEQ_ERR_ARG;
  *out = NULL;
  if (!cx || (!path && !source)) return SEQ_ERR_ARG;
  SeqModule *m = seq_malloc(sizeof *m);
  if (!m) return SEQ_ERR_NOMEM;
  memset(m, 0, sizeof *m);
  m->arena = arena_create();
  if (!m->arena) {
    seq_free(m);
    return SEQ_ERR_NOMEM;
  }
  m->id = __atomic_add_fetch(&next_module_id, 1, __ATOMIC_RELAXED);
  /* Recursive: fail() takes it, and is called under it on the CUDA paths. */
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&m->lock, &attr);
  pthread_mutexattr_destroy(&attr);
  *out = m;
  SeqOptions o = {0};
  if (opt) o = *opt;
  srcmgr_init(&m->sm, m->arena);
  diag_init(&m->de, m->arena, NULL);
  pipeline_init(&m->pipe, m->arena, &m->sm, &m->de);
  const char *dim_names[MAX_DIMS];
  int64_t dim_values[MAX_DIMS];
  int ndims = 0;
  RtSafetensors *sf = NULL;
  StFile stf = {NULL, &m->pipe};
  PipeOptions po = {0};
  po.path = path;
  po.name = name;
  po.text = source;
  po.entry = o.entry;
  po.cg = (CgOptions){o.opt_level, o.target_cpu, o.target_features};
  StrategyRequest strategy;
  char serr[512];
  SeqStatus st = SEQ_ERR_ARG;
  /* LLVM would abort the host on some CPUs and features: checked first. */
  if (cg_target_check(o.target_cpu, o.target_features, serr, sizeof serr)) {
    diag_error(&m->de, (SrcLoc){0}, "%s", serr);
    goto done;
  }
  if (strategy_parse(m->arena, o.strategy, &strategy, serr, sizeof serr)) {
    diag_error(&m->de, (SrcLoc){0}, "%s", serr);
    goto done;
  }
  strategy.newton.rtol = o.newton_rtol > 0 ? o.newton_rtol : 0;
  strategy.newton.atol = o.newton_atol > 0 ? o.newton_atol : 0;
  strategy.newton.max_iter = o.newton_max_iter > 0 ? o.newton_max_iter : 0;
  strategy.newton.window = o.newton_window > 0 ? o.newton_window : 0;
  strategy.newton.dense = o.newton_dense != 0;
  po.strategy = &strategy;
  po.kernel_chunk = o.chunk > 0 ? o.chunk : 0;
  po.batch = o.batch > 0 ? o.batch : 0;
  if (o.backend && strcmp(o.backend, "cuda") == 0) {
    po.cuda = 1;
  } else if (o.backend && strcmp(o.backend, "cpu") != 0) {
    diag_error(&m->de, (SrcLoc){0}, "unknown backend '%s' (cpu, cuda)", o.backend);
    goto done;
  }
  /* The cost model plans for the threads the module will run on. */
  po.threads = o.num_threads > 0 ? o.num_threads : rt_cpu_get_num_threads();
  st = SEQ_ERR_BIND;
  if (o.dims && parse_dims(m, o.dims, dim_names, dim_values, &ndims)) goto done;
  po.ndims = ndims;
  po.dim_names = dim_names;
  po.dim_values = dim_values;
  st = SEQ_ERR_IO; /* as seq.h promises for a source that cannot be read */
  if (path && !readable_file(m, path)) goto done;
  st = SEQ_ERR_COMPILE;
  po.goal = PIPE_REPORT;
  if (pipeline_run(&m->pipe, &po)) goto done;
  if (o.weights_path) {
    RtError err;
    if (rt_st_open(o.weights_path, &sf, &err)) {
      diag_error(&m->de, (SrcLoc){0}, "%s", err.msg);
      st = SEQ_ERR_IO;
      goto done;
    }
    stf.sf = sf;
    po.weight_shape = st_lookup;
    po.weight_ctx = &stf;
    po.weight_file = o.weights_path;
  }
  st = SEQ_ERR_BIND;
  po.goal = PIPE_BOUND;
  if (pipeline_run(&m->pipe, &po)) goto done;
  st = SEQ_ERR_COMPILE;
  if (po.cuda) {
    st = cuda_compile(m, &po);
    if (st != SEQ_OK) goto done;
    st = SEQ_ERR_NOMEM;
    goto params;
  }
  po.goal = PIPE_JIT;
  if (pipeline_run(&m->pipe, &po)) goto done;
  m->jit = m->pipe.jit;
  m->sig = &m->pipe.sched->sig;
  m->forward = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      m->jit, arena_printf(m->arena, "%s_forward", m->sig->symbol), &m->de);
  if (m->sig->has_step)
    m->step = (AbiStepFn)(uintptr_t)cg_jit_lookup(
        m->jit, arena_printf(m->arena, "%s_step", m->sig->symbol), &m->de);
  m->forward_prepared = (AbiForwardPreparedFn)(uintptr_t)cg_jit_lookup(
      m->jit, arena_printf(m->arena, "%s_forward_prepared", m->sig->symbol), &m->de);
  if (m->sig->has_step)
    m->step_prepared = (AbiStepPreparedFn)(uintptr_t)cg_jit_lookup(
        m->jit, arena_printf(m->arena, "%s_step_prepared", m->sig->symbol), &m->de);
  m->prepare = (AbiPrepareFn)(uintptr_t)cg_jit_lookup(
      m->jit, arena_printf(m->arena, "%s_prepare", m->sig->symbol), &m->de);
  AbiPreparedFloatsFn pf = (AbiPreparedFloatsFn)(uintptr_t)cg_jit_lookup(
      m->jit, arena_printf(m->arena, "%s_prepared_floats", m->sig->symbol), &m->de);
  if (!m->forward || !m->forward_prepared || !m->prepare || !pf ||
      (m->sig->has_step && (!m->step || !m->step_prepared)))
    goto done;
  m->prepared_floats = pf();
params:
  m->params = arena_calloc(m->arena, (size_t)m->sig->params.n + 1, sizeof(float *));
  m->owned = arena_calloc(m->arena, (size_t)m->sig->params.n + 1, sizeof(float *));
  if (!m->params || !m->owned) {
    st = SEQ_ERR_NOMEM;
    goto done;
  }
  m->threads = o.num_threads;
  if (o.newton_warm && !(m->warm = rt_cpu_warm_create())) {
    st = SEQ_ERR_NOMEM;
    goto done;
  }
  st = SEQ_OK;
done:
  if (sf) rt_st_close(sf);
  collect_diags(m);
  if (st != SEQ_OK) {
    fail(m, st, "%s", first_error(m));
    return st;
  }
  if (o.weights_path) return seq_module_bind_safetensors(m, o.weights_path);
  return SEQ_OK;
}

SeqStatus seq_module_from_file(SeqContext *cx, const char *path, const SeqOptions *opt,
                               SeqModule **out) {
  return compile(cx, path, NULL, NULL, opt, out);
}

SeqStatus seq_module_from_string(SeqContext *cx, const char *name, const char *source,
                                 const SeqOptions *opt, SeqModule **out) {
  return compile(cx, NULL, name, source, opt, out);
}

/* Drops the packed weights: binding changed what they were packed from. */
static void unprepare(SeqModule *m) {
  rt_cpu_free(m->prepared);
  m->prepared = NULL;
  m->is_prepared = 0;
}

void seq_module_destroy(SeqModule *m) {
  if (!m) return;
  unprepare(m);
  for (int i = 0; m->owned && i < m->sig->params.n; i++) seq_free(m->owned[i]);
  if (m->cu) {
    cuda_drop_params(m);
    rt_cuda_close(m->cu);
  }
  pipeline_release(&m->pipe);
  rt_cpu_warm_destroy(m->warm);
  arena_destroy(m->arena);
  pthread_mutex_destroy(&m->lock);
  seq_free(m);
}

int seq_module_diag_count(const SeqModule *m) {
  return m ? m->ndiags : 0;
}

const SeqDiagnostic *seq_module_diag(const SeqModule *m, int i) {
  return m && i >= 0 && i < m->ndiags ? &m->diags[i] : NULL;
}

const char *seq_module_error(const SeqModule *m) {
  if (!m) return "no module";
  return last_error.id == m->id ? last_error.msg : m->error;
}

const char *seq_module_diag_text(const SeqModule *m) {
  return m && m->diag_text ? m->diag_text : "";
}

static const AbiTensor *tensors(const SeqModule *m, SeqTensorKind k, int *n) {
  switch (k) {
  case SEQ_PARAM:
    *n = m->sig->params.n;
    return m->sig->params.v;
  case SEQ_INPUT:
    *n = m->sig->inputs.n;
    return m->sig->inputs.v;
  case SEQ_OUTPUT:
    *n = m->sig->outputs.n;
    return m->sig->outputs.v;
  case SEQ_STATE:
    *n = m->sig->states.n;
    return m->sig->states.v;
  }
  *n = 0;
  return NULL;
}

int seq_module_count(const SeqModule *m, SeqTensorKind kind) {
  int n = 0;
  if (compiled(m)) tensors(m, kind, &n);
  return n;
}

SeqStatus seq_module_info(const SeqModule *m, SeqTensorKind kind, int i, SeqTensorInfo *info) {
  int n = 0;
  if (!compiled(m) || !info) return SEQ_ERR_ARG;
  const AbiTensor *t = tensors(m, kind, &n);
  if (i < 0 || i >= n) return SEQ_ERR_ARG;
  memset(info, 0, sizeof *info);
  info->name = t[i].name;
  info->ndim = t[i].ndim;
  for (int d = 0; d < t[i].ndim && d < 8; d++) info->shape[d] = t[i].shape[d];
  info->numel = t[i].numel;
  info->is_int = t[i].is_int;
  info->context = t[i].context;
  return SEQ_OK;
}

int seq_module_dims(const SeqModule *m, const char **names, int64_t *values) {
  if (!compiled(m)) return 0;
  for (int i = 0; i < m->sig->ndims; i++) {
    if (names) names[i] = m->sig->dim_names[i];
    if (values) values[i] = m->sig->dim_values[i];
  }
  return m->sig->ndims;
}

SeqStatus seq_module_bind_weight(SeqModule *m, const char *name, const float *data, int64_t numel) {
  if (!compiled(m) || !name || !data) return m ? fail(m, SEQ_ERR_ARG, "bad argument") : SEQ_ERR_ARG;
  int i = abi_find_tensor(m->sig->params.v, m->sig->params.n, name);
  if (i < 0) return fail(m, SEQ_ERR_BIND, "the model has no parameter named %s", name);
  if (numel != m->sig->params.v[i].numel)
    return fail(m, SEQ_ERR_BIND, "parameter %s has %lld elements, not %lld", name,
                (long long)m->sig->params.v[i].numel, (long long)numel);
  m->params[i] = data;
  unprepare(m);
  if (m->cu) {
    pthread_mutex_lock(&m->lock);
    cuda_drop_params(m);
    pthread_mutex_unlock(&m->lock);
  }
  return SEQ_OK;
}

SeqStatus seq_module_bind_safetensors(SeqModule *m, const char *path) {
  if (!compiled(m) || !path) return m ? fail(m, SEQ_ERR_ARG, "bad argument") : SEQ_ERR_ARG;
  RtSafetensors *sf = NULL;
  RtError err;
  if (rt_st_open(path, &sf, &err)) return fail(m, SEQ_ERR_IO, "%s", err.msg);
  SeqStatus st = SEQ_OK;
  StFile f = {sf, &m->pipe};
  for (int i = 0; i < m->sig->params.n && st == SEQ_OK; i++) {
    const AbiTensor *p = &m->sig->params.v[i];
    RtTensor t;
    char buf[512];
    const char *stored = st_resolve(&f, p->name, buf, sizeof buf);
    if (!stored) {
      st = fail(m, SEQ_ERR_BIND, "%s: no tensor named %s", path, p->name);
      break;
    }
    if (rt_st_read_weight(sf, stored, RT_F32, &t, &err)) {
      st = fail(m, SEQ_ERR_BIND, "%s", err.msg);
      break;
    }
    if (rt_numel(&t) != p->numel) {
      st = fail(m, SEQ_ERR_BIND, "%s: tensor %s has %lld elements, the model needs %lld", path,
                p->name, (long long)rt_numel(&t), (long long)p->numel);
      rt_tensor_free(&t);
      break;
    }
    float *copy = seq_malloc(sizeof(float) * (size_t)(p->numel ? p->numel : 1));
    if (!copy) {
      rt_tensor_free(&t);
      st = fail(m, SEQ_ERR_NOMEM, "out of memory");
      break;
    }
    memcpy(copy, t.data, sizeof(float) * (size_t)p->numel);
    rt_tensor_free(&t);
    seq_free(m->owned[i]);
    m->owned[i] = copy;
    m->params[i] = copy;
  }
  unprepare(m);
  if (m->cu) {
    pthread_mutex_lock(&m->lock);
    cuda_drop_params(m);
    pthread_mutex_unlock(&m->lock);
  }
  rt_st_close(sf);
  return st;
}

static SeqStatus check_ready(SeqModule *m) {
  if (!compiled(m)) return SEQ_ERR_ARG;
  for (int i = 0; i < m->sig->params.n; i++)
    if (!m->params[i])
      return fail(m, SEQ_ERR_BIND, "parameter %s is not bound", m->sig->params.v[i].name);
  if (m->threads > 0) rt_cpu_set_num_threads(m->threads);
  return SEQ_OK;
}

SeqStatus seq_module_prepare(SeqModule *m) {
  SeqStatus st = check_ready(m);
  if (st != SEQ_OK || m->cu) return st;
  unprepare(m);
  /* From the runtime's allocator, aligned as the per-call packed weights. */
  int64_t bytes = m->prepared_floats * (int64_t)sizeof(float);
  if (bytes > 0 && !(m->prepared = rt_cpu_alloc_uninit(bytes)))
    return fail(m, SEQ_ERR_NOMEM, "out of memory packing the weights (%lld bytes)",
                (long long)bytes);
  int rc = m->prepare(m->params, m->prepared);
  if (rc != ABI_OK) {
    unprepare(m);
    return status_of(m, rc, NULL);
  }
  m->is_prepared = 1;
  return SEQ_OK;
}

SeqStatus seq_module_forward(SeqModule *m, int64_t B, int64_t T, const void *const *inputs,
                             const int32_t *lengths, const float *const *state_in,
                             float *const *outputs, float *const *state_out) {
  SeqStatus st = check_ready(m);
  if (st != SEQ_OK) return st;
  if (m->cu) {
    /* One run at a time on the device (the weights' upload is lazy, and the
     * runs share the default stream anyway). */
    pthread_mutex_lock(&m->lock);
    if ((st = cuda_upload_params(m, NULL)) == SEQ_OK) {
      RtError err;
      int rc = rt_cu_forward_bound(m->pipe.cuda, &m->dev, m->dparams, B, T, inputs, lengths,
                                   state_in, outputs, state_out, &err);
      st = status_of(m, rc, &err);
    }
    pthread_mutex_unlock(&m->lock);
    return st;
  }
  RtWarmCtx wc;
  rt_cpu_warm_enter(&wc, m->warm, 0, 0, 0);
  int rc = m->is_prepared
               ? m->forward_prepared(m->params, m->prepared, B, T, inputs, lengths, state_in,
                                     outputs, state_out)
               : m->forward(m->params, B, T, inputs, lengths, state_in, outputs, state_out);
  rt_cpu_warm_leave(&wc);
  return status_of(m, rc, NULL);
}

static SeqStatus run_device(SeqModule *m, void *stream, SeqDtype io, int64_t B, int64_t T,
                            const void *const *inputs, const int32_t *lengths,
                            const float *const *state_in, void *const *outputs,
                            float *const *state_out);

_Static_assert((int)SEQ_DTYPE_BF16 == (int)RT_CU_IO_BF16 && (int)SEQ_DTYPE_F16 == (int)RT_CU_IO_F16,
               "seq.h's dtypes are the runtime's");

SeqStatus seq_module_forward_device_io(SeqModule *m, void *stream, SeqDtype io, int64_t B,
                                       int64_t T, const void *const *inputs, const int32_t *lengths,
                                       const float *const *state_in, void *const *outputs,
                                       float *const *state_out) {
  SeqStatus st = check_ready(m);
  if (st != SEQ_OK) return st;
  if (!m->cu) return fail(m, SEQ_ERR_ARG, "device buffers need a module compiled for \"cuda\"");
  if (io != SEQ_DTYPE_F32 && io != SEQ_DTYPE_BF16 && io != SEQ_DTYPE_F16)
    return fail(m, SEQ_ERR_ARG,
                "io dtype %d: expected SEQ_DTYPE_F32, SEQ_DTYPE_BF16 or SEQ_DTYPE_F16", (int)io);
  pthread_mutex_lock(&m->lock);
  st = run_device(m, stream, io, B, T, inputs, lengths, state_in, outputs, state_out);
  pthread_mutex_unlock(&m->lock);
  return st;
}

SeqStatus seq_module_forward_device_stream(SeqModule *m, void *stream, int64_t B, int64_t T,
                                           const void *const *inputs, const int32_t *lengths,
                                           const float *const *state_in, float *const *outputs,
                                           float *const *state_out) {
  return seq_module_forward_device_io(m, stream, SEQ_DTYPE_F32, B, T, inputs, lengths, state_in,
                                      (void *const *)outputs, state_out);
}

SeqStatus seq_module_forward_device(SeqModule *m, int64_t B, int64_t T, const void *const *inputs,
                                    const int32_t *lengths, const float *const *state_in,
                                    float *const *outputs, float *const *state_out) {
  return seq_module_forward_device_stream(m, NULL, B, T, inputs, lengths, state_in, outputs,
                                          state_out);
}

/* seq_module_forward_device_io under the module's lock: the module's
 * device with the call's stream. */
static SeqStatus run_device(SeqModule *m, void *stream, SeqDtype io, int64_t B, int64_t T,
                            const void *const *inputs, const int32_t *lengths,
                            const float *const *state_in, void *const *outputs,
                            float *const *state_out) {
  SeqStatus st;
  if ((st = cuda_upload_params(m, stream)) != SEQ_OK) return st;
  RtCuDevice dev = m->dev;
  dev.stream = stream;
  int ni = m->sig->inputs.n, no = m->sig->outputs.n, ns = m->sig->states.n;
  RtDevPtr *a = seq_malloc(sizeof *a * (size_t)(ni + no + 2 * ns + 1));
  if (!a) return fail(m, SEQ_ERR_NOMEM, "out of memory");
  for (int j = 0; j < ni; j++) a[j] = inputs ? (RtDevPtr)(uintptr_t)inputs[j] : 0;
  for (int j = 0; j < no; j++) a[ni + j] = outputs ? (RtDevPtr)(uintptr_t)outputs[j] : 0;
  for (int j = 0; j < ns; j++) {
    a[ni + no + j] = state_in ? (RtDevPtr)(uintptr_t)state_in[j] : 0;
    a[ni + no + ns + j] = state_out ? (RtDevPtr)(uintptr_t)state_out[j] : 0;
  }
  RtError err;
  int rc = rt_cu_run_io(m->pipe.cuda, &dev, (int)io, m->dparams, B, T, (ni && inputs) ? a : NULL,
                        (RtDevPtr)(uintptr_t)lengths, a + ni + no, (no && outputs) ? a + ni : NULL,
                        a + ni + no + ns, &err);
  seq_free(a);
  return status_of(m, rc, &err);
}

SeqStatus seq_module_step(SeqModule *m, int64_t B, const void *const *inputs,
                          const float *const *state_in, float *const *outputs,
                          float *const *state_out) {
  SeqStatus st = check_ready(m);
  if (st != SEQ_OK) return st;
  if (!m->sig->has_step)
    return fail(m, SEQ_ERR_ARG, "%s has no step form (it reads whole sequences)", m->sig->func);
  /* On the GPU a step is a forward over one token ([B, 1, ...] is [B, ...]). */
  if (m->cu) return seq_module_forward(m, B, 1, inputs, NULL, state_in, outputs, state_out);
  if (!m->step)
    return fail(m, SEQ_ERR_ARG, "%s has no step form (it reads whole sequences)", m->sig->func);
  RtWarmCtx wc;
  rt_cpu_warm_enter(&wc, m->warm, 0, 0, 0);
  int rc = m->is_prepared
               ? m->step_prepared(m->params, m->prepared, B, inputs, state_in, outputs, state_out)
               : m->step(m->params, B, inputs, state_in, outputs, state_out);
  rt_cpu_warm_leave(&wc);
  return status_of(m, rc, NULL);
}

void *seq_module_entry(SeqModule *m, const char *which) {
  if (!m || !m->jit || !which) return NULL;
  if ((strcmp(which, "step") == 0 || strcmp(which, "step_prepared") == 0) && !m->sig->has_step)
    return NULL;
  pthread_mutex_lock(&m->lock);
  DiagEngine de;
  diag_init(&de, m->arena, NULL);
  void *fn = cg_jit_lookup(m->jit, arena_printf(m->arena, "%s_%s", m->sig->symbol, which), &de);
  pthread_mutex_unlock(&m->lock);
  return fn;
}

/* The CPU's solves and the devices' together. */
void seq_newton_stats(SeqNewtonStats *out, int reset) {
  RtNewtonStats st;
  RtCuNewtonStats gs;
  rt_cpu_newton_stats(&st, reset);
  rt_cu_newton_stats(&gs, reset);
  if (!out) return;
  out->solves = st.solves + gs.solves;
  out->fallbacks = st.fallbacks + gs.fallbacks;
  out->fallback_steps = st.fallback_steps + gs.fallback_steps;
  out->damped = st.damped + gs.damped;
  out->iterations = st.iterations + gs.iterations;
  out->max_iter = st.max_iter > gs.max_iter ? st.max_iter : gs.max_iter;
  out->warm_starts = st.warm;
}

/* ---- seq_module_report -------------------------------------------------------- */

static char *print_to_string(Arena *a, void (*print)(FILE *, const void *, const void *),
                             const void *x, const void *y) {
  char *buf = NULL, *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  print(f, x, y);
  if (fclose(f) == 0 && buf) out = arena_strndup(a, buf, len);
  free(buf);
  return out;
}

static void print_type(FILE *f, const void *fn, const void *t) {
  ir_print_type(f, fn, *(const IrType *)t);
}
static void print_classes(FILE *f, const void *m, const void *r) {
  classify_print_report(f, m, r);
}
static void print_plan(FILE *f, const void *m, const void *plan) {
  strategy_print(f, m, plan);
}

static json_t *state_names(const IrFunc *f, const int *v, int n) {
  json_t *a = json_array();
  for (int i = 0; i < n; i++) json_array_append_new(a, json_string(f->states.v[v[i]].name));
  return a;
}

static json_t *loc_json(SrcLoc l) {
  if (!l.file) return json_null();
  return json_pack("{s:s,s:i,s:i}", "file", l.file->name, "line", l.line, "col", l.col);
}

/* One cell: its states' classes (classify_print_report) and, when the plan
 * has them, their forms and costs (strategy_print). */
static json_t *cell_json(SeqModule *m, int fi) {
  const IrModule *mod = m->pipe.rewritten;
  const IrFunc *f = mod->funcs.v[fi];
  const RecFunc *rf = &m->pipe.classes->funcs[fi];
  const StrategyPlan *plan = m->pipe.plan;
  json_t *cell = json_pack("{s:s,s:o}", "name", f->name, "loc", loc_json(f->loc));
  if (plan && plan->dims[fi]) {
    double fl, io, wb;
    cost_cell_work(f, plan->dims[fi], &fl, &io, &wb);
    json_object_set_new(
        cell, "work_per_token",
        json_pack("{s:f,s:f,s:f}", "flops", fl, "io_bytes", io, "weight_bytes_per_call", wb));
  }
  json_t *states = json_array();
  for (int i = 0; i < rf->nstates; i++) {
    const RecState *rs = &rf->states[i];
    const IrState *s = &f->states.v[rs->state];
    IrType ty = s->type;
    json_t *js = json_pack("{s:s,s:s*,s:b,s:s,s:s*,s:o,s:o,s:s}", "name", s->name, "type",
                           print_to_string(m->arena, print_type, f, &ty), "hidden", s->hidden,
                           "class", classify_class_name(rs->cls), "reason", rs->reason, "reads",
                           state_names(f, rs->deps, rs->ndeps), "given",
                           state_names(f, rs->given, rs->ngiven), "strategy",
                           classify_strategy_name(rs->strategy));
    json_t *coupled = json_array();
    for (int j = 0; j < rf->nstates; j++)
      if (j != i && rf->states[j].group == rs->group)
        json_array_append_new(coupled, json_string(f->states.v[rf->states[j].state].name));
    json_object_set_new(js, "coupled_with", coupled);
    if (rs->strategy == REC_STRAT_NEWTON && rs->jacobian_reason)
      json_object_set_new(js, "jacobian_reason", json_string(rs->jacobian_reason));
    if (plan && plan->funcs[fi]) {
      const StateForm *sf = &plan->funcs[fi][rs->state];
      json_object_set_new(js, "form", json_string(form_name(sf->form)));
      if (sf->why) json_object_set_new(js, "why", json_string(sf->why));
      json_t *adm = json_object();
      for (int fm = FORM_SEQUENTIAL; fm <= FORM_NEWTON; fm++) {
        if (!sf->admitted[fm]) continue;
        json_t *c = json_null();
        if (sf->costed)
          c = json_pack("{s:f,s:f,s:f}", "flops", sf->cost[fm].flops, "bytes", sf->cost[fm].bytes,
                        "us_per_token", sf->cost[fm].seconds * 1e6);
        json_object_set_new(adm, form_name((Form)fm), c);
      }
      json_object_set_new(js, "admitted", adm);
    }
    json_array_append_new(states, js);
  }
  json_object_set_new(cell, "states", states);
  return cell;
}

const char *seq_module_report(SeqModule *m) {
  if (!compiled(m) || !m->pipe.rewritten || !m->pipe.classes) return NULL;
  pthread_mutex_lock(&m->lock);
  if (!m->report) {
    const IrModule *mod = m->pipe.rewritten;
    json_t *cells = json_array();
    for (int fi = 0; fi < mod->funcs.n && fi < m->pipe.classes->nfuncs; fi++)
      if (mod->funcs.v[fi]->kind == IR_FN_CELL) json_array_append_new(cells, cell_json(m, fi));
    /* The text seqc --report prints (less the machine line). */
    char *classes = print_to_string(m->arena, print_classes, mod, m->pipe.classes);
    char *forms = m->pipe.plan ? print_to_string(m->arena, print_plan, mod, m->pipe.plan) : NULL;
    json_t *dims = json_object();
    for (int i = 0; i < m->sig->ndims; i++)
      json_object_set_new(dims, m->sig->dim_names[i], json_integer(m->sig->dim_values[i]));
    json_t *root = json_pack("{s:s,s:o,s:o,s:s+}", "unit", m->sig->func, "dims", dims, "cells",
                             cells, "text", classes ? classes : "", forms ? forms : "");
    char *text = root ? json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    if (text) m->report = arena_strdup(m->arena, text);
    free(text);
    json_decref(root);
  }
  pthread_mutex_unlock(&m->lock);
  if (!m->report) fail(m, SEQ_ERR_NOMEM, "out of memory");
  return m->report;
}
