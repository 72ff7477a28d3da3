/* seqc.c - the command-line driver: arguments and files around the
 * compiler's one pipeline (driver/pipeline.h), which it runs as far as the
 * command needs (the IR, the report, the schedule, a shared object, or a JIT
 * build to run), and the reference interpreter for --backend=interp. The
 * contract is documented in docs/cli.md; keep the two in step.
 *
 * Exit status: 0 success, 1 an error in the user's input (diagnostics
 * printed), 2 a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver/pipeline.h"
#include "driver/run.h"
#include "runtime/rt.h"
#include "runtime/rt_cpu.h"
#include "runtime/rt_cuda.h"

#define MAX_BINDINGS 64
#define MAX_DIM_ARGS 64

typedef struct NamedFile {
  const char *name;
  const char *path;
} NamedFile;

typedef struct Options {
  const char *cmd; /* "run" or NULL (emit) */
  const char *file;
  const char *emit; /* "ir" */
  const char *out_path;
  const char *weights;
  int random_weights;
  uint64_t seed;
  const char *dims_arg;
  const char *entry;
  int f64;
  int quiet;
  NamedFile ins[MAX_BINDINGS];
  int nins;
  NamedFile outs[MAX_BINDINGS];
  int nouts;
  NamedFile expects[MAX_BINDINGS];
  int nexpects;
  double tol;
  const char *backend;   /* "cpu" (default), "cuda" or "interp" */
  const char *target;    /* --target=cpu|cuda (compiling) */
  const char *cuda_arch; /* --cuda-arch=sm_80 (--emit=ptx), sm_80,sm_90 (-o libNAME.so) */
  int threads;           /* 0: $SEQ_NUM_THREADS or 1 */
  int opt_level;
  const char *target_cpu, *target_features;
  const char *header_path;
  const char *strategy;   /* --strategy=auto|sequential|scan|chunked, or STATE=FORM,... */
  const char *dump_after; /* --dump-after=rewrite|scan: the IR after that pass */
  long batch;             /* --batch N: the batch the cost model assumes (run: the input's) */
  long chunk;             /* --chunk N: tokens per chunk of the chunked forms (0: default) */
  double newton_rtol, newton_atol; /* --newton-rtol, --newton-atol (0: the defaults) */
  long newton_max_iter;            /* --newton-max-iter (0: the default) */
  long newton_window;              /* --newton-window (0: automatic) */
  int newton_dense;                /* --newton-jacobian dense */
  int report;                      /* --report: the recurrence classification of every cell */
  int check_finite;                /* --check-finite: report the first NaN/Inf and fail */
} Options;

static void usage(FILE *out) {
  fputs("usage:\n"
        "  seqc run FILE.seq (--weights W.safetensors | --random-weights [--seed N])\n"
        "           [--dims H=256,I=64] --in NAME=FILE.npy ... [--out NAME=FILE.npy ...]\n"
        "           [--expect NAME=FILE.npy ... [--tol X]] [--check-finite] [--f64] [--entry UNIT] "
        "[--quiet]\n"
        "           [--backend=cpu|cuda|interp] [--threads N] [-O0..-O3]\n"
        "           [--strategy=auto|sequential|scan|chunked|newton|STATE=FORM,...] [--chunk N]\n"
        "           [--newton-rtol X] [--newton-atol X] [--newton-max-iter N] [--newton-window N]\n"
        "           [--newton-jacobian quasi|dense]\n"
        "  seqc FILE.seq [--dims ...] [--weights W] -o libNAME.so [-H NAME.h] [-O0..-O3]\n"
        "       [--target-cpu=CPU] [--target-features=+f,-g]\n"
        "  seqc --target=cuda FILE.seq [--dims ...] [--weights W] -o libNAME.so [-H NAME.h]\n"
        "       [--cuda-arch=sm_80,sm_90]\n"
        "  seqc --emit=ir|sched|llvm|asm|obj FILE.seq [--dims ...] [-o OUT] [--entry UNIT]\n"
        "  seqc --emit=cuda|ptx FILE.seq [--dims ...] [--cuda-arch=sm_80] [-o OUT]\n"
        "  seqc --dump-after=rewrite|scan FILE.seq [--dims ...] [--strategy=...]\n"
        "  seqc --report FILE.seq      (each state's recurrence class and strategy)\n"
        "  seqc --help | --version\n"
        "See docs/cli.md.\n",
        out);
}

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "seqc: error: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  usage(stderr);
  return 2;
}

/* Splits "NAME=PATH"; the name may contain dots ("l0.h"). */
static int parse_named(const char *arg, NamedFile *nf) {
  const char *eq = strchr(arg, '=');
  if (!eq || eq == arg || !eq[1]) return -1;
  char *name = strndup(arg, (size_t)(eq - arg));
  if (!name) return -1;
  nf->name = name;
  nf->path = eq + 1;
  return 0;
}

/* The --emit kinds printed as text (to stdout unless -o): the IR, the IR
 * after a pass (--dump-after), the schedule. */
static int is_text_emit(const char *emit) {
  return strcmp(emit, "ir") == 0 || strcmp(emit, "sched") == 0 || strcmp(emit, "ir-rewrite") == 0 ||
         strcmp(emit, "ir-scan") == 0;
}

/* The --emit kinds of the CUDA target: its C source, or NVRTC's PTX of it. */
static int is_cuda_emit(const char *emit) {
  return strcmp(emit, "cuda") == 0 || strcmp(emit, "ptx") == 0;
}

static int parse_args(int argc, char **argv, Options *o) {
  memset(o, 0, sizeof *o);
  o->tol = 1e-5;
  o->backend = "cpu";
  o->opt_level = 2;
  int i = 1;
  if (i < argc && strcmp(argv[i], "run") == 0) o->cmd = argv[i++];
  for (; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
#define TAKE(flag)                                                                                 \
  (strcmp(a, flag) == 0                                                                            \
       ? (i + 1 < argc ? (val = argv[++i], 1) : -1)                                                \
       : (strncmp(a, flag "=", sizeof(flag)) == 0 ? (val = a + sizeof(flag), 1) : 0))
    int r;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(a, "--version") == 0) {
      printf("seqc 0.1.0\n");
      exit(0);
    } else if ((r = TAKE("--emit")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->emit = val;
    } else if ((r = TAKE("-o")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->out_path = val;
    } else if ((r = TAKE("--weights")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->weights = val;
    } else if (strcmp(a, "--random-weights") == 0) {
      o->random_weights = 1;
    } else if ((r = TAKE("--seed")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      unsigned long long s = strtoull(val, &end, 10);
      if (errno || *end || !*val || *val == '-')
        return usage_error("--seed takes a non-negative integer, got '%s'", val);
      o->seed = s;
    } else if ((r = TAKE("--dims")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->dims_arg = val;
    } else if ((r = TAKE("--entry")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->entry = val;
    } else if ((r = TAKE("--in")) != 0) {
      if (r < 0) return usage_error("%s needs NAME=FILE.npy", a);
      if (o->nins == MAX_BINDINGS) return usage_error("too many --in arguments (%s)", val);
      if (parse_named(val, &o->ins[o->nins++]))
        return usage_error("--in takes NAME=FILE.npy, got '%s'", val);
    } else if ((r = TAKE("--out")) != 0) {
      if (r < 0) return usage_error("%s needs NAME=FILE.npy", a);
      if (o->nouts == MAX_BINDINGS) return usage_error("too many --out arguments (%s)", val);
      if (parse_named(val, &o->outs[o->nouts++]))
        return usage_error("--out takes NAME=FILE.npy, got '%s'", val);
    } else if ((r = TAKE("--expect")) != 0) {
      if (r < 0) return usage_error("%s needs NAME=FILE.npy", a);
      if (o->nexpects == MAX_BINDINGS) return usage_error("too many --expect arguments (%s)", val);
      if (parse_named(val, &o->expects[o->nexpects++]))
        return usage_error("--expect takes NAME=FILE.npy, got '%s'", val);
    } else if ((r = TAKE("--tol")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      o->tol = strtod(val, &end);
      if (errno || *end || !*val || !(o->tol >= 0))
        return usage_error("--tol takes a non-negative number, got '%s'", val);
    } else if ((r = TAKE("--backend")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      if (strcmp(val, "cpu") != 0 && strcmp(val, "interp") != 0 && strcmp(val, "cuda") != 0)
        return usage_error("unknown backend '%s' (cpu, cuda, interp)", val);
      o->backend = val;
    } else if ((r = TAKE("--target")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      if (strcmp(val, "cpu") != 0 && strcmp(val, "cuda") != 0)
        return usage_error("unknown target '%s' (cpu, cuda)", val);
      o->target = val;
    } else if ((r = TAKE("--cuda-arch")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->cuda_arch = val;
    } else if ((r = TAKE("--threads")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      long t = strtol(val, &end, 10);
      if (errno || *end || !*val || t < 1 || t > 1024)
        return usage_error("--threads takes an integer in [1, 1024], got '%s'", val);
      o->threads = (int)t;
    } else if (a[0] == '-' && a[1] == 'O' && a[2] && !a[3]) {
      if (a[2] < '0' || a[2] > '3')
        return usage_error("unknown optimization level '%s' (-O0 to -O3)", a);
      o->opt_level = a[2] - '0';
    } else if ((r = TAKE("--target-cpu")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->target_cpu = val;
    } else if ((r = TAKE("--target-features")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->target_features = val;
    } else if ((r = TAKE("-H")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->header_path = val;
    } else if ((r = TAKE("--batch")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      long b = strtol(val, &end, 10);
      if (errno || *end || !*val || b < 1 || b > (1L << 31))
        return usage_error("--batch takes an integer in [1, 2^31], got '%s'", val);
      o->batch = b;
    } else if ((r = TAKE("--dump-after")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      if (strcmp(val, "rewrite") != 0 && strcmp(val, "scan") != 0)
        return usage_error("unknown pass '%s' for --dump-after (rewrite, scan)", val);
      o->dump_after = val;
    } else if ((r = TAKE("--chunk")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      long c = strtol(val, &end, 10);
      if (errno || *end || !*val || c < 1 || c > 4096)
        return usage_error("--chunk takes an integer in [1, 4096], got '%s'", val);
      o->chunk = c;
    } else if ((r = TAKE("--newton-rtol")) != 0 || (r = TAKE("--newton-atol")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      double x = strtod(val, &end);
      if (errno || *end || !*val || !(x > 0 && x < 1))
        return usage_error("--newton-rtol and --newton-atol take a number in (0, 1), got '%s'",
                           val);
      if (strncmp(a, "--newton-rtol", 13) == 0)
        o->newton_rtol = x;
      else
        o->newton_atol = x;
    } else if ((r = TAKE("--newton-max-iter")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      long c = strtol(val, &end, 10);
      if (errno || *end || !*val || c < 1 || c > 1000)
        return usage_error("--newton-max-iter takes an integer in [1, 1000], got '%s'", val);
      o->newton_max_iter = c;
    } else if ((r = TAKE("--newton-window")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      char *end;
      errno = 0;
      long c = strtol(val, &end, 10);
      if (errno || *end || !*val || c < 1 || c > (1L << 30))
        return usage_error("--newton-window takes a number of steps in [1, 2^30], got '%s'", val);
      o->newton_window = c;
    } else if ((r = TAKE("--newton-jacobian")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      if (strcmp(val, "dense") && strcmp(val, "quasi"))
        return usage_error("--newton-jacobian takes 'quasi' or 'dense', got '%s'", val);
      o->newton_dense = strcmp(val, "dense") == 0;
    } else if ((r = TAKE("--strategy")) != 0) {
      if (r < 0) return usage_error("%s needs a value", a);
      o->strategy = val;
    } else if (strcmp(a, "--check-finite") == 0) {
      o->check_finite = 1;
    } else if (strcmp(a, "--report") == 0) {
      o->report = 1;
    } else if (strcmp(a, "--f64") == 0) {
      o->f64 = 1;
    } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
      o->quiet = 1;
    } else if (a[0] == '-' && a[1]) {
      return usage_error("unknown option '%s'", a);
    } else if (!o->file) {
      o->file = a;
    } else {
      return usage_error("unexpected argument '%s' (one .seq file at a time)", a);
    }
#undef TAKE
  }
  if (!o->file) return usage_error("%s", "no input file");
  /* LLVM would abort on some CPUs and features: they are checked first. */
  char msg[512];
  if ((o->target_cpu || o->target_features) &&
      cg_target_check(o->target_cpu, o->target_features, msg, sizeof msg))
    return usage_error("%s", msg);
  if (o->cmd) {
    if (o->emit) return usage_error("%s", "'run' and --emit cannot be combined");
    if (o->weights && o->random_weights)
      return usage_error("%s", "'run' takes one of --weights FILE or --random-weights, not both");
    if (o->f64 && strcmp(o->backend, "interp") != 0)
      return usage_error("%s", "--f64 needs --backend=interp (compiled code is float32)");
  } else {
    if (o->dump_after && o->emit)
      return usage_error("%s", "--dump-after and --emit cannot be combined");
    if (o->dump_after) o->emit = o->dump_after[0] == 'r' ? "ir-rewrite" : "ir-scan";
    if (!o->emit && !o->out_path && !o->report)
      return usage_error("%s",
                         "nothing to do: use 'seqc run', -o libNAME.so, --emit=ir or --report");
    if (o->emit && !is_text_emit(o->emit) && !is_cuda_emit(o->emit) &&
        strcmp(o->emit, "llvm") != 0 && strcmp(o->emit, "asm") != 0 && strcmp(o->emit, "obj") != 0)
      return usage_error("unknown --emit kind '%s' (ir, sched, llvm, asm, obj, cuda, ptx)",
                         o->emit);
    if (o->emit && is_cuda_emit(o->emit)) {
      if (o->target && strcmp(o->target, "cuda") != 0)
        return usage_error("--emit=%s is the CUDA target's (drop --target=cpu)", o->emit);
      o->target = "cuda";
    }
    if (o->target && strcmp(o->target, "cuda") == 0 && o->emit && !is_cuda_emit(o->emit) &&
        !is_text_emit(o->emit))
      return usage_error("--emit=%s is the CPU target's; --target=cuda writes -o libNAME.so, "
                         "--emit=cuda or --emit=ptx",
                         o->emit);
    if (o->emit && strcmp(o->emit, "ptx") == 0 && o->cuda_arch && strchr(o->cuda_arch, ','))
      return usage_error("--emit=ptx takes one --cuda-arch, got '%s'", o->cuda_arch);
    if (o->emit && !is_text_emit(o->emit) && !is_cuda_emit(o->emit) && !o->out_path)
      return usage_error("--emit=%s needs -o OUT", o->emit);
    if (o->nins || o->nouts || o->nexpects || o->random_weights)
      return usage_error("%s", "--in, --out, --expect and --random-weights belong to 'seqc run'");
  }
  return 0;
}

/* ---- --dims H=256,I=64 ---------------------------------------------------- */

typedef struct DimArgs {
  int n;
  const char *names[MAX_DIM_ARGS];
  int64_t values[MAX_DIM_ARGS];
} DimArgs;

static int parse_dims(Arena *a, const char *s, DimArgs *d) {
  d->n = 0;
  if (!s) return 0;
  const char *p = s;
  while (*p) {
    const char *eq = strchr(p, '=');
    const char *comma = strchr(p, ',');
    if (!comma) comma = p + strlen(p);
    if (!eq || eq > comma || eq == p) {
      fprintf(stderr, "seqc: error: --dims takes NAME=N[,NAME=N...], got '%s'\n", s);
      return -1;
    }
    if (d->n == MAX_DIM_ARGS) {
      fprintf(stderr, "seqc: error: too many --dims entries\n");
      return -1;
    }
    char *name = arena_strndup(a, p, (size_t)(eq - p));
    char *num = arena_strndup(a, eq + 1, (size_t)(comma - eq - 1));
    char *end;
    errno = 0;
    long long v = strtoll(num, &end, 10);
    if (!name || !num || errno || *end || !*num || v < 0 || v > SEQ_MAX_DIM_VALUE) {
      fprintf(stderr,
              "seqc: error: --dims: '%s' needs an integer in [0, 2^40] (a dim's largest value is "
              "%lld), got '%s'\n",
              name ? name : "?", (long long)SEQ_MAX_DIM_VALUE, num ? num : "?");
      return -1;
    }
    for (int i = 0; i < d->n; i++)
      if (strcmp(d->names[i], name) == 0) {
        fprintf(stderr, "seqc: error: --dims: '%s' is given twice\n", name);
        return -1;
      }
    d->names[d->n] = name;
    d->values[d->n++] = v;
    p = *comma ? comma + 1 : comma;
  }
  return 0;
}

/* ---- Weights: safetensors with PyTorch's single-layer fallback ------------ */

typedef struct WeightSource {
  RtSafetensors *st;
  const char *path;
  int allow_l0; /* the root is a single cell: accept `weight_ih_l0` for `weight_ih` */
  char **used;  /* names actually bound, to report extras */
  int nused, capused;
} WeightSource;

static const RtTensorInfo *find_weight(WeightSource *ws, const char *name, char *resolved,
                                       size_t n) {
  const RtTensorInfo *ti = rt_st_find_any(ws->st, name);
  snprintf(resolved, n, "%s", name);
  if (!ti && ws->allow_l0) {
    snprintf(resolved, n, "%s_l0", name);
    ti = rt_st_find_any(ws->st, resolved);
  }
  return ti;
}

static int lookup_shape(void *ctx, const char *name, int *ndim, int64_t *shape) {
  char resolved[1024];
  const RtTensorInfo *ti = find_weight(ctx, name, resolved, sizeof resolved);
  if (!ti) return 0;
  *ndim = ti->ndim;
  memcpy(shape, ti->shape, sizeof(int64_t) * (size_t)ti->ndim);
  return 1;
}

static int load_weight(void *ctx, const char *name, RtTensor *out, RtError *err) {
  WeightSource *ws = ctx;
  char resolved[1024];
  if (!find_weight(ws, name, resolved, sizeof resolved)) {
    snprintf(err->msg, sizeof err->msg, "%s: missing weight '%s'", ws->path, name);
    return RT_ERR_MISSING;
  }
  if (ws->nused == ws->capused) {
    int cap = ws->capused ? ws->capused * 2 : 16;
    char **nu = realloc(ws->used, sizeof(char *) * (size_t)cap);
    if (!nu) return RT_ERR_NOMEM;
    ws->used = nu;
    ws->capused = cap;
  }
  ws->used[ws->nused] = strdup(resolved);
  if (ws->used[ws->nused]) ws->nused++;
  return rt_st_read_weight(ws->st, resolved, RT_F64, out, err);
}

/* Extra tensors are not an error (a checkpoint may hold more than one model
 * uses) but a silent mismatch of names is a classic bug, so say so. */
static void warn_unused_weights(WeightSource *ws) {
  int nunused = 0;
  for (int i = 0; i < rt_st_count(ws->st); i++) {
    const char *name = rt_st_info(ws->st, i)->name;
    int used = 0;
    for (int j = 0; j < ws->nused && !used; j++) used = strcmp(ws->used[j], name) == 0;
    if (!used) {
      if (nunused < 8)
        fprintf(stderr, "seqc: warning: %s: tensor '%s' is not used by the model\n", ws->path,
                name);
      nunused++;
    }
  }
  if (nunused > 8)
    fprintf(stderr, "seqc: warning: %s: %d more unused tensors\n", ws->path, nunused - 8);
}

static void print_shape(FILE *out, const RtTensor *t);

/* --expect NAME=FILE.npy: compares a result with a stored reference and
 * reports the largest absolute difference; a mismatch fails the run. */
static int check_expected(const char *name, const RtTensor *got, const char *path, double tol) {
  RtError err;
  RtTensor want, want64, got64;
  if (rt_npy_read(path, &want, &err)) {
    fprintf(stderr, "seqc: error: --expect %s: %s\n", name, err.msg);
    return -1;
  }
  int rc = -1;
  memset(&want64, 0, sizeof want64);
  memset(&got64, 0, sizeof got64);
  if (want.ndim != got->ndim ||
      memcmp(want.shape, got->shape, sizeof(int64_t) * (size_t)got->ndim)) {
    fprintf(stderr, "seqc: error: --expect %s: %s has shape ", name, path);
    print_shape(stderr, &want);
    fprintf(stderr, " but the result has shape ");
    print_shape(stderr, got);
    fputc('\n', stderr);
    goto out;
  }
  if (rt_tensor_convert(&want, RT_F64, &want64, &err) ||
      rt_tensor_convert(got, RT_F64, &got64, &err)) {
    fprintf(stderr, "seqc: error: --expect %s: %s\n", name, err.msg);
    goto out;
  }
  double maxerr = 0;
  int64_t n = rt_numel(got), worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double w = ((double *)want64.data)[i], g = ((double *)got64.data)[i];
    /* NaN matches NaN and an infinity the same infinity: those are results too. */
    double d = (isnan(w) && isnan(g)) || (isinf(w) && w == g) ? 0.0 : fabs(w - g);
    if (!(d <= maxerr)) { /* NaN counts as the worst */
      maxerr = isnan(d) ? INFINITY : d;
      worst = i;
    }
  }
  int ok = maxerr <= tol;
  printf("expect %s: max abs error %.3g (element %" PRId64 ") vs %s, tol %.3g: %s\n", name, maxerr,
         worst, path, tol, ok ? "ok" : "MISMATCH");
  rc = ok ? 0 : 1;
out:
  rt_tensor_free(&want);
  rt_tensor_free(&want64);
  rt_tensor_free(&got64);
  return rc;
}

/* ---- run -------------------------------------------------------------------- */

static int find_input(const IrFunc *f, const char *name) {
  for (int i = 0; i < f->inputs.n; i++)
    if (strcmp(f->inputs.v[i].name, name) == 0) return i;
  return -1;
}

static int find_output(const IrFunc *f, const char *name) {
  for (int i = 0; i < f->outputs.n; i++)
    if (strcmp(f->outputs.v[i].name, name) == 0) return i;
  return -1;
}

static int find_state(const IrFlat *fl, const char *name) {
  for (int i = 0; i < fl->states.n; i++)
    if (strcmp(fl->states.v[i].name, name) == 0) return i;
  return -1;
}

static void list_names(const IrFunc *f, const IrFlat *fl, int with_outputs) {
  fprintf(stderr, "  inputs:");
  for (int i = 0; i < f->inputs.n; i++) fprintf(stderr, " %s", f->inputs.v[i].name);
  fprintf(stderr, " lengths\n");
  if (with_outputs) {
    fprintf(stderr, "  outputs:");
    for (int i = 0; i < f->outputs.n; i++) fprintf(stderr, " %s", f->outputs.v[i].name);
    fputc('\n', stderr);
  }
  if (fl->states.n) {
    fprintf(stderr, "  states:");
    for (int i = 0; i < fl->states.n; i++) fprintf(stderr, " %s", fl->states.v[i].name);
    fputc('\n', stderr);
  }
}

static void print_shape(FILE *out, const RtTensor *t) {
  fputc('[', out);
  for (int d = 0; d < t->ndim; d++) fprintf(out, "%s%" PRId64, d ? ", " : "", t->shape[d]);
  fputc(']', out);
}

/* The checksum printed for each output: the sum and the sum of absolute values
 * in float64, enough to spot a changed result by eye. */
static void print_summary(const char *kind, const char *name, const RtTensor *t) {
  int64_t n = rt_numel(t);
  double sum = 0, asum = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = t->dtype == RT_F64 ? ((const double *)t->data)[i] : ((const float *)t->data)[i];
    sum += v;
    asum += fabs(v);
  }
  printf("%s %s: shape ", kind, name);
  print_shape(stdout, t);
  printf(" %s  sum %.9g  abs-sum %.9g\n", rt_dtype_name(t->dtype), sum, asum);
}

/* Whether the CPU backend refused a construct it does not compile (where the
 * interpreter is the way out); other errors say all there is to say. */
static int backend_refused(const DiagEngine *de) {
  static const char refusal[] = "the CPU backend does not support";
  for (int i = 0; i < de->diags.n; i++)
    if (de->diags.v[i].severity == DIAG_ERROR &&
        strncmp(de->diags.v[i].message, refusal, sizeof refusal - 1) == 0)
      return 1;
  return 0;
}

/* The CPU backend: the pipeline's JIT build, run on the binding's weights
 * with the interpreter's contract (driver/run.h). */
static int run_compiled(const Options *o, Pipeline *p, PipeOptions *po, int64_t B, int64_t T,
                        const RtTensor *inputs, const int64_t *lengths, const RtTensor *state_in,
                        RtTensor *outputs, RtTensor *state_out, RtNewtonStats *nstats) {
  if (o->threads > 0) rt_cpu_set_num_threads(o->threads);
  po->goal = PIPE_JIT;
  if (pipeline_run(p, po)) return -1;
  const AbiSignature *sig = &p->sched->sig;
  AbiForwardFn fn = (AbiForwardFn)(uintptr_t)cg_jit_lookup(
      p->jit, arena_printf(p->arena, "%s_forward", sig->symbol), p->de);
  DrvWeights w = {0};
  int rc = -1;
  rt_cpu_newton_stats(NULL, 1);
  if (fn && drv_weights_from_binding(sig, &p->bind, &w, p->de) == 0)
    rc = drv_run(sig, fn, &w, &p->bind, B, T, inputs, lengths, state_in, outputs, state_out, p->de);
  drv_weights_free(&w);
  rt_cpu_newton_stats(nstats, 1);
  if (rc == 0 && nstats->fallbacks)
    fprintf(stderr,
            "seqc: warning: %lld of %lld Newton solves did not converge; those sequences ran as "
            "the step loop from their first unconverged step (%lld steps in all)\n",
            (long long)nstats->fallbacks, (long long)nstats->solves,
            (long long)nstats->fallback_steps);
  return rc;
}

/* The CUDA backend: the program drv_run calls through a forward function
 * of the ABI's type, which finds the program and the device here (the CLI
 * runs one model per process). */
static struct {
  const RtCuProgram *prog;
  RtCuDevice dev;
  RtError err;
} cuda_run;

static int32_t cuda_forward(const float *const *params, int64_t B, int64_t T,
                            const void *const *inputs, const int32_t *lengths,
                            const float *const *state_in, float *const *outputs,
                            float *const *state_out) {
  int rc = rt_cu_forward(cuda_run.prog, &cuda_run.dev, params, B, T, inputs, lengths, state_in,
                         outputs, state_out, &cuda_run.err);
  if (rc < 0) fprintf(stderr, "seqc: error: --backend=cuda: %s\n", cuda_run.err.msg);
  return rc < 0 ? ABI_ERR_NOMEM : rc;
}

/* The pipeline's CUDA program, compiled by NVRTC (through the kernel cache)
 * for the device's architecture and run with the interpreter's contract. */
static int run_cuda(Pipeline *p, PipeOptions *po, int64_t B, int64_t T, const RtTensor *inputs,
                    const int64_t *lengths, const RtTensor *state_in, RtTensor *outputs,
                    RtTensor *state_out) {
  po->goal = PIPE_CUDA;
  if (pipeline_run(p, po)) return -1;
  RtCuda *cu = NULL;
  RtBlob image = {0};
  RtError err;
  int rc = -1;
  if (rt_cuda_open(0, &cu, &err)) {
    fprintf(stderr, "seqc: error: --backend=cuda: %s\n", err.msg);
    return -1;
  }
  if (rt_nvrtc_compile(p->cuda->source, p->sched->sig.symbol, rt_cuda_arch(cu), 1, &image, &err) ||
      rt_cuda_load(cu, &image, p->cuda->kernels, p->cuda->nkernels, &cuda_run.dev, &err)) {
    fprintf(stderr, "seqc: error: --backend=cuda: %s\n", err.msg);
  } else {
    const AbiSignature *sig = &p->sched->sig;
    DrvWeights w = {0};
    cuda_run.prog = p->cuda;
    if (drv_weights_from_binding(sig, &p->bind, &w, p->de) == 0)
      rc = drv_run(sig, cuda_forward, &w, &p->bind, B, T, inputs, lengths, state_in, outputs,
                   state_out, p->de);
    drv_weights_free(&w);
  }
  rt_blob_free(&image);
  rt_cuda_close(cu);
  return rc;
}

/* ---- --out files: checked before the run, written only after it -------- */

/* Whether two paths name the same file: the same inode when both exist,
 * else the same last component in the same directory (by inode too). */
static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  const char *ba = strrchr(a, '/'), *bb = strrchr(b, '/');
  ba = ba ? ba + 1 : a;
  bb = bb ? bb + 1 : b;
  if (strcmp(ba, bb) != 0) return 0;
  char *da = strndup(a, (size_t)(ba - a)), *db = strndup(b, (size_t)(bb - b));
  int same = da && db && stat(*da ? da : ".", &sa) == 0 && stat(*db ? db : ".", &sb) == 0 &&
             sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  free(da);
  free(db);
  return same;
}

/* Every --out names an output or state, no two share a file, and each can
 * be written: a temporary file is created beside each target now (tmp[k]),
 * so a bad path fails the command before the run, and the results are
 * renamed over the targets only once all of them are written. */
static int outs_prepare(const Options *o, const IrFunc *root, const IrFlat *flat, char **tmp) {
  for (int k = 0; k < o->nouts; k++) {
    const NamedFile *nf = &o->outs[k];
    if (find_output(root, nf->name) < 0 && find_state(flat, nf->name) < 0) {
      fprintf(stderr,
              "seqc: error: --out %s: '%s' is not an output or state of '%s'; valid names:\n",
              nf->name, nf->name, root->name);
      list_names(root, flat, 1);
      return -1;
    }
    for (int j = 0; j < k; j++)
      if (same_file(o->outs[j].path, nf->path)) {
        fprintf(stderr, "seqc: error: --out %s and --out %s both write '%s'\n", o->outs[j].name,
                nf->name, nf->path);
        return -1;
      }
    struct stat st;
    if (stat(nf->path, &st) == 0 && S_ISDIR(st.st_mode)) {
      fprintf(stderr, "seqc: error: --out %s: '%s' is a directory\n", nf->name, nf->path);
      return -1;
    }
    size_t n = strlen(nf->path) + 8;
    tmp[k] = malloc(n);
    if (!tmp[k]) {
      fprintf(stderr, "seqc: error: out of memory\n");
      return -1;
    }
    snprintf(tmp[k], n, "%s.XXXXXX", nf->path);
    int fd = mkstemp(tmp[k]);
    if (fd < 0) {
      fprintf(stderr, "seqc: error: --out %s: cannot write '%s': %s\n", nf->name, nf->path,
              strerror(errno));
      free(tmp[k]);
      tmp[k] = NULL;
      return -1;
    }
    /* mkstemp makes the file 0600; an output gets the usual 0666 & ~umask
     * (if that fails, the file is still a correct output, only private). */
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    close(fd);
  }
  return 0;
}

/* Renames the written temporaries over their targets. */
static int outs_commit(const Options *o, char **tmp) {
  for (int k = 0; k < o->nouts; k++) {
    if (rename(tmp[k], o->outs[k].path)) {
      fprintf(stderr, "seqc: error: --out %s: cannot write '%s': %s\n", o->outs[k].name,
              o->outs[k].path, strerror(errno));
      return -1;
    }
    free(tmp[k]);
    tmp[k] = NULL;
  }
  return 0;
}

/* Removes the temporaries not renamed (after a failure). */
static void outs_discard(const Options *o, char **tmp) {
  for (int k = 0; k < o->nouts; k++)
    if (tmp[k]) {
      remove(tmp[k]);
      free(tmp[k]);
      tmp[k] = NULL;
    }
}

/* A sequence input is [B, T] and then its declared shape (a trailing 2 for
 * complex values), a context [B] and then its shape: a file of another rank
 * is refused here with its real shape, before binding would compare
 * per-token shapes that do not exist. */
static int check_input_rank(const NamedFile *nf, const IrInput *in, const RtTensor *t) {
  int lead = in->context ? 1 : 2;
  int want = lead + in->type.rank + (in->type.elem == IR_COMPLEX);
  if (t->ndim == want) return 0;
  fprintf(stderr, "seqc: error: --in %s: %s has shape ", nf->name, nf->path);
  print_shape(stderr, t);
  fprintf(stderr, "; %s '%s' needs rank %d: %s and then its declared shape%s\n",
          in->context ? "context" : "input", in->name, want, in->context ? "[B]" : "[B, T]",
          in->type.elem == IR_COMPLEX ? " and (re, im)" : "");
  return -1;
}

static int cmd_run(const Options *o, Pipeline *p, PipeOptions *po) {
  const IrModule *mod = p->source;
  const IrFunc *root = mod->funcs.v[mod->entry];
  IrBinding *bp = NULL;
  IrFlat flat;
  int rc = 1;
  RtTensor inputs[MAX_BINDINGS];
  RtTensor loaded[MAX_BINDINGS];
  int given[MAX_BINDINGS] = {0};
  int nloaded = 0;
  RtTensor *state_in = NULL, *state_out = NULL, *outputs = NULL;
  int64_t *lengths = NULL;
  WeightSource ws = {0};
  RtError err;
  char *out_tmp[MAX_BINDINGS] = {0};
  memset(inputs, 0, sizeof inputs);

  /* The flat state names, before anything is bound. */
  if (ir_flatten(p->arena, mod, root, &flat, p->de)) return 1;
  int nstates = flat.states.n;
  /* Weights are needed only where there are parameters. */
  if (!o->weights && !o->random_weights && flat.params.n > 0) {
    fprintf(stderr,
            "seqc: error: '%s' has %d parameter%s (%s%s): pass --weights FILE or "
            "--random-weights\n",
            root->name, flat.params.n, flat.params.n == 1 ? "" : "s", flat.params.v[0].name,
            flat.params.n > 1 ? ", ..." : "");
    return 2;
  }
  if (outs_prepare(o, root, &flat, out_tmp)) goto done;

  /* Read every --in file first: inputs fix B and T, states need B. */
  state_in = calloc((size_t)nstates + 1, sizeof *state_in);
  state_out = calloc((size_t)nstates + 1, sizeof *state_out);
  outputs = calloc((size_t)root->outputs.n + 1, sizeof *outputs);
  if (!state_in || !state_out || !outputs) {
    fprintf(stderr, "seqc: error: out of memory\n");
    goto done;
  }
  int64_t B = -1, T = -1;
  const char *bt_from = NULL;
  for (int k = 0; k < o->nins; k++) {
    const NamedFile *nf = &o->ins[k];
    int is_len = strcmp(nf->name, "lengths") == 0;
    int ii = find_input(root, nf->name);
    int si = ii < 0 ? find_state(&flat, nf->name) : -1;
    if (!is_len && ii < 0 && si < 0) {
      fprintf(stderr, "seqc: error: --in %s: '%s' is not an input or state of '%s'; valid names:\n",
              nf->name, nf->name, root->name);
      list_names(root, &flat, 0);
      goto done;
    }
    for (int j = 0; j < k; j++)
      if (strcmp(o->ins[j].name, nf->name) == 0) {
        fprintf(stderr, "seqc: error: --in %s given twice\n", nf->name);
        goto done;
      }
    RtTensor *t = &loaded[nloaded];
    if (rt_npy_read(nf->path, t, &err)) {
      fprintf(stderr, "seqc: error: --in %s: %s\n", nf->name, err.msg);
      goto done;
    }
    nloaded++;
    if (is_len) {
      if (t->dtype != RT_I32 && t->dtype != RT_I64) {
        fprintf(stderr, "seqc: error: --in lengths: %s has dtype %s; expected int32 or int64\n",
                nf->path, rt_dtype_name(t->dtype));
        goto done;
      }
      if (t->ndim != 1) {
        fprintf(stderr, "seqc: error: --in lengths: %s must have shape [B]\n", nf->path);
        goto done;
      }
    } else if (ii >= 0) {
      int elem_int = root->inputs.v[ii].type.elem == IR_INT;
      if (!elem_int && (t->dtype == RT_I32 || t->dtype == RT_I64)) {
        fprintf(stderr, "seqc: error: --in %s: %s holds integers but '%s' is a real input\n",
                nf->name, nf->path, nf->name);
        goto done;
      }
      if (check_input_rank(nf, &root->inputs.v[ii], t)) goto done;
      if (root->inputs.v[ii].context) {
        /* Its batch is checked once a sequence input has given B. */
      } else if (B < 0) {
        B = t->shape[0];
        T = t->shape[1];
        bt_from = nf->name;
      } else if (t->shape[0] != B || t->shape[1] != T) {
        fprintf(stderr,
                "seqc: error: --in %s: batch and time [%" PRId64 ", %" PRId64
                "] differ from input '%s' [%" PRId64 ", %" PRId64 "]\n",
                nf->name, t->shape[0], t->shape[1], bt_from, B, T);
        goto done;
      }
      inputs[ii] = *t;
      given[ii] = 1;
    } else {
      state_in[si] = *t;
    }
  }
  for (int i = 0; i < root->inputs.n; i++)
    if (!given[i]) {
      fprintf(stderr, "seqc: error: missing input '%s': pass --in %s=FILE.npy\n",
              root->inputs.v[i].name, root->inputs.v[i].name);
      goto done;
    }
  if (B < 0) {
    fprintf(stderr, "seqc: error: '%s' has no inputs to run over\n", root->name);
    goto done;
  }
  for (int i = 0; i < root->inputs.n; i++)
    if (root->inputs.v[i].context && inputs[i].shape[0] != B) {
      fprintf(stderr,
              "seqc: error: --in %s: a batch of %" PRId64 " contexts for a batch of %" PRId64
              " sequences (input '%s')\n",
              root->inputs.v[i].name, inputs[i].shape[0], B, bt_from);
      goto done;
    }
  for (int k = 0; k < o->nins; k++) {
    if (strcmp(o->ins[k].name, "lengths") != 0) continue;
    const RtTensor *t = &loaded[k];
    if (t->shape[0] != B) {
      fprintf(stderr, "seqc: error: --in lengths: %" PRId64 " lengths for a batch of %" PRId64 "\n",
              t->shape[0], B);
      goto done;
    }
    lengths = calloc((size_t)B + 1, sizeof *lengths);
    if (!lengths) goto done;
    for (int64_t i = 0; i < B; i++) {
      lengths[i] =
          t->dtype == RT_I32 ? ((const int32_t *)t->data)[i] : ((const int64_t *)t->data)[i];
      if (lengths[i] < 0 || lengths[i] > T) {
        fprintf(stderr,
                "seqc: error: --in lengths: lengths[%" PRId64 "] = %" PRId64
                " is outside [0, T=%" PRId64 "]\n",
                i, lengths[i], T);
        goto done;
      }
    }
  }

  /* Dims: from --dims, the weights' shapes and the inputs' per-token shapes. */
  int in_ndims[MAX_BINDINGS];
  const int64_t *in_shapes[MAX_BINDINGS];
  for (int i = 0; i < root->inputs.n && i < MAX_BINDINGS; i++) {
    int lead = root->inputs.v[i].context ? 1 : 2;
    in_ndims[i] = inputs[i].ndim - lead;
    in_shapes[i] = given[i] ? inputs[i].shape + lead : NULL;
  }
  if (o->weights) {
    if (rt_st_open(o->weights, &ws.st, &err)) {
      fprintf(stderr, "seqc: error: %s\n", err.msg);
      goto done;
    }
    ws.path = o->weights;
    ws.allow_l0 = root->kind == IR_FN_CELL;
  }
  po->weight_shape = ws.st ? lookup_shape : NULL;
  po->weight_ctx = &ws;
  po->weight_file = ws.path;
  if (!o->batch) po->batch = B; /* the cost model's batch: this run's */
  po->input_ndims = in_ndims;
  po->input_shapes = in_shapes;
  po->goal = PIPE_BOUND;
  if (pipeline_run(p, po)) goto done;
  bp = &p->bind;
  if (ws.st) {
    if (ir_binding_load(bp, load_weight, &ws, p->de)) goto done;
    warn_unused_weights(&ws);
  } else if (ir_binding_random(bp, o->seed, p->de)) {
    goto done;
  }

  InterpNewtonStats nstats = {0};
  InterpOptions iopt = {.f64 = o->f64, .check_finite = o->check_finite, .newton = &nstats};
  /* The interpreter runs the source; with --strategy, the parallel forms
   * (a Newton solve has no CPU code yet, so this is how it runs). */
  IrBinding par_bind;
  if (strcmp(o->backend, "interp") == 0 && o->strategy) {
    po->goal = PIPE_FORMS;
    if (pipeline_run(p, po)) goto done;
    par_bind = *bp;
    par_bind.mod = p->parallel;
    par_bind.root = p->parallel->funcs.v[p->parallel->entry];
    bp = &par_bind;
  }
  int want_states = 0;
  for (int k = 0; k < o->nouts; k++) want_states |= find_output(root, o->outs[k].name) < 0;
  for (int k = 0; k < o->nexpects; k++) want_states |= find_output(root, o->expects[k].name) < 0;
  want_states |= o->check_finite;
  int use_cpu = strcmp(o->backend, "cpu") == 0;
  int use_cuda = strcmp(o->backend, "cuda") == 0;
  RtNewtonStats cstats = {0};
  if (use_cuda  ? run_cuda(p, po, B, T, inputs, lengths, state_in, outputs,
                          want_states ? state_out : NULL)
      : use_cpu ? run_compiled(o, p, po, B, T, inputs, lengths, state_in, outputs,
                               want_states ? state_out : NULL, &cstats)
                : interp_run(bp, B, T, inputs, lengths, state_in, outputs,
                             want_states ? state_out : NULL, &iopt, p->de)) {
    if (use_cpu && backend_refused(p->de))
      fprintf(stderr,
              "seqc: note: '--backend=interp' runs any model with the reference interpreter\n");
    goto done;
  }
  if ((use_cpu || use_cuda) && o->check_finite &&
      interp_check_finite(bp, B, T, inputs, lengths, outputs, want_states ? state_out : NULL,
                          p->de))
    goto done;

  /* What the Newton solves did (the interpreter's counts or the runtime's). */
  if (!o->quiet && nstats.solves) {
    int64_t iters = 0;
    for (int i = 0; i < INTERP_NEWTON_HIST; i++) iters += i * nstats.hist[i];
    cstats.solves = nstats.solves, cstats.fallbacks = nstats.fallbacks;
    cstats.fallback_steps = nstats.fallback_steps;
    cstats.damped = nstats.damped, cstats.iterations = iters, cstats.max_iter = nstats.max_iter;
  }
  if (!o->quiet && cstats.solves) {
    int64_t conv = cstats.solves - cstats.fallbacks;
    printf("newton: %lld solves, %lld fell back to the step loop (%lld steps), %lld halved "
           "steps; iterations of the converged: %.3g on average, at most %d\n",
           (long long)cstats.solves, (long long)cstats.fallbacks, (long long)cstats.fallback_steps,
           (long long)cstats.damped, conv ? (double)cstats.iterations / (double)conv : 0.0,
           cstats.max_iter);
  }
  /* Summaries, then the requested files. */
  if (!o->quiet)
    for (int i = 0; i < root->outputs.n; i++)
      print_summary("output", root->outputs.v[i].name, &outputs[i]);
  for (int k = 0; k < o->nouts; k++) {
    const NamedFile *nf = &o->outs[k];
    int oi = find_output(root, nf->name);
    const RtTensor *t = oi >= 0 ? &outputs[oi] : &state_out[find_state(&flat, nf->name)];
    if (!o->quiet && oi < 0) print_summary("state", nf->name, t);
    if (rt_npy_write(out_tmp[k], t, &err)) {
      /* The message names the temporary; the user knows the target. */
      const char *m = err.msg;
      size_t n = strlen(out_tmp[k]);
      if (strncmp(m, out_tmp[k], n) == 0 && m[n] == ':') m += n + 2;
      fprintf(stderr, "seqc: error: --out %s: cannot write '%s': %s\n", nf->name, nf->path, m);
      goto done;
    }
  }
  if (outs_commit(o, out_tmp)) goto done;
  rc = 0;
  for (int k = 0; k < o->nexpects; k++) {
    const NamedFile *nf = &o->expects[k];
    int oi = find_output(root, nf->name);
    int si = oi < 0 ? find_state(&flat, nf->name) : -1;
    if (oi < 0 && si < 0) {
      fprintf(stderr, "seqc: error: --expect %s: '%s' is not an output or state of '%s'\n",
              nf->name, nf->name, root->name);
      rc = 1;
      continue;
    }
    if (check_expected(nf->name, oi >= 0 ? &outputs[oi] : &state_out[si], nf->path, o->tol)) rc = 1;
  }

done:
  outs_discard(o, out_tmp);
  for (int i = 0; i < nloaded; i++) rt_tensor_free(&loaded[i]);
  if (outputs)
    for (int i = 0; i < root->outputs.n; i++) rt_tensor_free(&outputs[i]);
  if (state_out)
    for (int i = 0; i < nstates; i++) rt_tensor_free(&state_out[i]);
  for (int i = 0; bp && bp->weights && i < bp->flat.params.n; i++) rt_tensor_free(&bp->weights[i]);
  free(outputs);
  free(state_in);
  free(state_out);
  free(lengths);
  for (int i = 0; i < ws.nused; i++) free(ws.used[i]);
  free(ws.used);
  if (ws.st) rt_st_close(ws.st);
  return rc;
}

/* --weights for the shapes only (compiling, --report, --emit): the stored
 * shapes fix the dims the flags leave open. 0, or 1 with the error printed. */
static int weight_shapes(const Options *o, Pipeline *p, PipeOptions *po, WeightSource *ws) {
  RtError err;
  if (rt_st_open(o->weights, &ws->st, &err)) {
    fprintf(stderr, "seqc: error: %s\n", err.msg);
    return 1;
  }
  ws->path = o->weights;
  ws->allow_l0 = p->source->funcs.v[p->source->entry]->kind == IR_FN_CELL;
  po->weight_shape = lookup_shape;
  po->weight_ctx = ws;
  po->weight_file = ws->path;
  return 0;
}

/* ---- seqc FILE.seq -o libNAME.so / --emit=llvm|asm|obj ------------------- */

/* Ahead-of-time compilation specializes on concrete dims, which come from
 * --dims and, if given, the shapes in --weights (nothing is read but the
 * header). */
static int cmd_compile(const Options *o, Pipeline *p, PipeOptions *po) {
  WeightSource ws = {0};
  if (o->weights && weight_shapes(o, p, po, &ws)) return 1;
  po->goal = PIPE_OBJECT;
  po->emit = CG_EMIT_SO;
  if (o->emit && strcmp(o->emit, "llvm") == 0)
    po->emit = CG_EMIT_LLVM;
  else if (o->emit && strcmp(o->emit, "asm") == 0)
    po->emit = CG_EMIT_ASM;
  else if (o->emit && strcmp(o->emit, "obj") == 0)
    po->emit = CG_EMIT_OBJ;
  po->out_path = o->out_path;
  po->header_path = o->header_path;
  po->cuda_archs = o->cuda_arch; /* --target=cuda: a comma-separated list */
  int rc = pipeline_run(p, po) ? 1 : 0;
  if (ws.st) rt_st_close(ws.st);
  return rc;
}

/* --emit=cuda|ptx: the CUDA C the schedule renders as, or NVRTC's PTX of it
 * for --cuda-arch (sm_80 unless given), to stdout or -o. */
static int cmd_emit_cuda(const Options *o, Pipeline *p, PipeOptions *po) {
  WeightSource ws = {0};
  RtError err;
  if (o->weights && weight_shapes(o, p, po, &ws)) return 1;
  po->goal = PIPE_CUDA;
  int rc = 1;
  RtBlob ptx = {0};
  if (pipeline_run(p, po) == 0) {
    const char *text = p->cuda->source;
    if (strcmp(o->emit, "ptx") == 0) {
      const char *arch = o->cuda_arch ? o->cuda_arch : "sm_80";
      if (rt_nvrtc_compile(text, p->sched->sig.symbol, arch, 0, &ptx, &err)) {
        fprintf(stderr, "seqc: error: --emit=ptx: %s\n", err.msg);
        text = NULL;
      } else {
        text = ptx.data;
      }
    }
    FILE *out = !text ? NULL : o->out_path ? fopen(o->out_path, "w") : stdout;
    if (text && !out) {
      fprintf(stderr, "seqc: error: cannot write '%s': %s\n", o->out_path, strerror(errno));
    } else if (text) {
      fputs(text, out);
      rc = 0;
      if (out != stdout && fclose(out)) {
        fprintf(stderr, "seqc: error: cannot write '%s'\n", o->out_path);
        rc = 1;
      }
    }
  }
  rt_blob_free(&ptx);
  if (ws.st) rt_st_close(ws.st);
  return rc;
}

/* --report --dims: the forms chosen at the bound dims and their costs. */
static int cmd_report_forms(const Options *o, Pipeline *p, PipeOptions *po) {
  WeightSource ws = {0};
  if (o->weights && weight_shapes(o, p, po, &ws)) return 1;
  int rc = 1;
  if (pipeline_run(p, po) == 0) {
    const RtCpuMachine *mc = rt_cpu_machine();
    printf("cost model: B=%lld, %d thread(s); one core: %.3g GFLOP/s FMA peak (%s), %.3g GB/s to "
           "memory, %.3g GB/s from L2 (%s)\n",
           (long long)(po->batch > 0 ? po->batch : 8),
           po->threads > 0 ? po->threads : rt_cpu_get_num_threads(), mc->flops / 1e9, mc->isa,
           mc->dram_bw / 1e9, mc->l2_bw / 1e9, mc->measured ? "measured" : "$SEQ_MACHINE");
    strategy_print(stdout, p->rewritten, p->plan);
    rc = 0;
  }
  if (ws.st) rt_st_close(ws.st);
  return rc;
}

/* --emit=ir|sched and --dump-after=PASS: the IR of the source, the IR after
 * a pass, or the schedule of the bound root, as text to stdout or -o. */
static int cmd_emit_text(const Options *o, Pipeline *p, PipeOptions *po) {
  int sched = strcmp(o->emit, "sched") == 0;
  int bound = sched || strcmp(o->emit, "ir-scan") == 0;
  WeightSource ws = {0};
  if (bound && o->weights && weight_shapes(o, p, po, &ws)) return 1;
  po->goal = sched                                ? PIPE_SCHED
             : strcmp(o->emit, "ir-scan") == 0    ? PIPE_FORMS
             : strcmp(o->emit, "ir-rewrite") == 0 ? PIPE_REPORT
                                                  : PIPE_IR;
  int rc = 1;
  if (pipeline_run(p, po) == 0) {
    FILE *out = o->out_path ? fopen(o->out_path, "w") : stdout;
    if (!out) {
      fprintf(stderr, "seqc: error: cannot write '%s': %s\n", o->out_path, strerror(errno));
    } else {
      if (sched)
        sched_print(out, p->sched);
      else
        ir_print_module(out, po->goal == PIPE_FORMS    ? p->parallel
                             : po->goal == PIPE_REPORT ? p->rewritten
                                                       : p->source);
      rc = 0;
      if (out != stdout && fclose(out)) {
        fprintf(stderr, "seqc: error: cannot write '%s'\n", o->out_path);
        rc = 1;
      }
    }
  }
  if (ws.st) rt_st_close(ws.st);
  return rc;
}

static void free_options(Options *o) {
  for (int i = 0; i < o->nins; i++) free((void *)o->ins[i].name);
  for (int i = 0; i < o->nouts; i++) free((void *)o->outs[i].name);
  for (int i = 0; i < o->nexpects; i++) free((void *)o->expects[i].name);
}

int main(int argc, char **argv) {
  Options o;
  int rc = parse_args(argc, argv, &o);
  if (rc) {
    free_options(&o);
    return rc;
  }

  Arena *arena = arena_create();
  if (!arena) {
    fprintf(stderr, "seqc: error: out of memory\n");
    free_options(&o);
    return 1;
  }
  DiagEngine de;
  diag_init(&de, arena, stderr);
  SrcMgr sm;
  srcmgr_init(&sm, arena);

  DimArgs dims;
  if (parse_dims(arena, o.dims_arg, &dims)) {
    free_options(&o);
    arena_destroy(arena);
    return 2;
  }
  Pipeline p;
  pipeline_init(&p, arena, &sm, &de);
  PipeOptions po = {0};
  po.path = o.file;
  po.entry = o.entry;
  po.ndims = dims.n;
  po.dim_names = dims.names;
  po.dim_values = dims.values;
  po.cg = (CgOptions){o.opt_level, o.target_cpu, o.target_features};
  StrategyRequest strategy;
  char serr[256];
  if (strategy_parse(arena, o.strategy, &strategy, serr, sizeof serr)) {
    rc = usage_error("%s", serr);
    free_options(&o);
    arena_destroy(arena);
    return rc;
  }
  strategy.newton.rtol = o.newton_rtol;
  strategy.newton.atol = o.newton_atol;
  strategy.newton.max_iter = (int)o.newton_max_iter;
  strategy.newton.window = o.newton_window;
  strategy.newton.dense = o.newton_dense;
  po.strategy = &strategy;
  po.kernel_chunk = o.chunk;
  po.threads = o.threads;
  po.batch = o.batch;
  po.cuda = (o.target && strcmp(o.target, "cuda") == 0) || strcmp(o.backend, "cuda") == 0;
  po.goal = o.report ? PIPE_REPORT : PIPE_IR;
  if (pipeline_run(&p, &po)) {
    rc = 1;
  } else if (o.report) {
    classify_print_report(stdout, p.rewritten, p.classes);
    /* With dims (or weights that fix them), the form of every state and
     * what each costs at those dims. */
    if (dims.n || o.weights) {
      po.goal = PIPE_FORMS;
      rc = cmd_report_forms(&o, &p, &po);
    }
  } else if (o.emit && is_text_emit(o.emit)) {
    rc = cmd_emit_text(&o, &p, &po);
  } else if (o.emit && is_cuda_emit(o.emit)) {
    rc = cmd_emit_cuda(&o, &p, &po);
  } else if (!o.cmd) {
    rc = cmd_compile(&o, &p, &po);
  } else {
    rc = cmd_run(&o, &p, &po);
  }
  pipeline_release(&p);
  if (de.nerrors > de.max_errors)
    fprintf(stderr, "seqc: %d errors in all (only the first %d shown)\n", de.nerrors,
            de.max_errors);
  free_options(&o);
  arena_destroy(arena);
  return rc;
}
