/* cuda_nvrtc.c - CUDA C to PTX or a cubin through NVRTC, and the on-disk
 * cache of the results (docs/cuda.md, "Run time").
 *
 * libnvrtc is opened with dlopen the first time anything asks for it and its
 * functions are reached through a table of pointers typed here, so nothing of
 * the toolkit is needed to build seqc and a machine without it only gets an
 * error when it asks for CUDA. The lookup happens once per process
 * (pthread_once); its outcome, library or error, is kept.
 *
 * A cache entry is <dir>/<key>.ptx or .cubin, key the 128-bit XXH3 of
 * everything that decides NVRTC's output. The file starts with a header that
 * repeats the key and holds the content's size and hash, so a truncated or
 * damaged entry reads as a miss and is rewritten; entries are written to a
 * temporary file and renamed, so a reader never sees half of one. */
#include "runtime/rt_cuda.h"
#include "runtime/rt_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- NVRTC's API, typed here (no nvrtc.h) ---------------------------------- */

typedef int NvResult; /* nvrtcResult: 0 is NVRTC_SUCCESS */
typedef struct NvProgramImpl *NvProgram;
enum { NV_ERR_OUT_OF_MEMORY = 1, NV_ERR_INVALID_OPTION = 5, NV_ERR_COMPILATION = 6 };

typedef const char *(*NvGetErrorStringFn)(NvResult);
typedef NvResult (*NvVersionFn)(int *, int *);
typedef NvResult (*NvCreateProgramFn)(NvProgram *, const char *, const char *, int,
                                      const char *const *, const char *const *);
typedef NvResult (*NvDestroyProgramFn)(NvProgram *);
typedef NvResult (*NvCompileProgramFn)(NvProgram, int, const char *const *);
typedef NvResult (*NvGetSizeFn)(NvProgram, size_t *);
typedef NvResult (*NvGetBytesFn)(NvProgram, char *);
typedef NvResult (*NvGetNumArchsFn)(int *);
typedef NvResult (*NvGetArchsFn)(int *);

typedef struct NvApi {
  void *lib;
  const char *path; /* the name dlopen found it under */
  int major, minor;
  NvGetErrorStringFn GetErrorString;
  NvVersionFn Version;
  NvCreateProgramFn CreateProgram;
  NvDestroyProgramFn DestroyProgram;
  NvCompileProgramFn CompileProgram;
  NvGetSizeFn GetProgramLogSize, GetPTXSize, GetCUBINSize;
  NvGetBytesFn GetProgramLog, GetPTX, GetCUBIN;
  /* The archs this NVRTC compiles for (sm_XY as XY), when it can say (11.2+);
   * narchs 0 leaves the check to NVRTC's own option parsing. */
  int archs[64];
  int narchs;
} NvApi;

static pthread_once_t nv_once = PTHREAD_ONCE_INIT;
static NvApi nv;
static int nv_status = RT_ERR_IO;
static char nv_msg[sizeof(RtError)];

static _Atomic uint64_t nv_calls;
static _Atomic uint64_t nv_nanos;

/* Resolves every function seqc uses; NULL if all are there, else the first
 * missing name. */
static const char *nv_resolve(void *lib, NvApi *a) {
#define NV_SYM(field, type, name)                                                                  \
  if (!(a->field = (type)(uintptr_t)dlsym(lib, name))) return name
  NV_SYM(GetErrorString, NvGetErrorStringFn, "nvrtcGetErrorString");
  NV_SYM(Version, NvVersionFn, "nvrtcVersion");
  NV_SYM(CreateProgram, NvCreateProgramFn, "nvrtcCreateProgram");
  NV_SYM(DestroyProgram, NvDestroyProgramFn, "nvrtcDestroyProgram");
  NV_SYM(CompileProgram, NvCompileProgramFn, "nvrtcCompileProgram");
  NV_SYM(GetProgramLogSize, NvGetSizeFn, "nvrtcGetProgramLogSize");
  NV_SYM(GetProgramLog, NvGetBytesFn, "nvrtcGetProgramLog");
  NV_SYM(GetPTXSize, NvGetSizeFn, "nvrtcGetPTXSize");
  NV_SYM(GetPTX, NvGetBytesFn, "nvrtcGetPTX");
  NV_SYM(GetCUBINSize, NvGetSizeFn, "nvrtcGetCUBINSize");
  NV_SYM(GetCUBIN, NvGetBytesFn, "nvrtcGetCUBIN");
#undef NV_SYM
  return NULL;
}

/* Tries one candidate; 1 when it is a usable NVRTC (nv filled in). A library
 * that opens but lacks a function is remembered in `lacks` (the first one)
 * and passed over, so an old libnvrtc.so ahead of a newer .so.12 is no dead
 * end. */
static int nv_try(const char *path, char *lacks, size_t lacks_cap) {
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return 0;
  NvApi a;
  memset(&a, 0, sizeof a);
  const char *missing = nv_resolve(lib, &a);
  if (!missing && a.Version(&a.major, &a.minor) != 0) missing = "a working nvrtcVersion";
  if (missing) {
    if (!lacks[0]) snprintf(lacks, lacks_cap, "%s lacks %s", path, missing);
    dlclose(lib);
    return 0;
  }
  NvGetNumArchsFn num = (NvGetNumArchsFn)(uintptr_t)dlsym(lib, "nvrtcGetNumSupportedArchs");
  NvGetArchsFn get = (NvGetArchsFn)(uintptr_t)dlsym(lib, "nvrtcGetSupportedArchs");
  int n = 0;
  if (num && get && num(&n) == 0 && n > 0 && n <= (int)(sizeof a.archs / sizeof a.archs[0]) &&
      get(a.archs) == 0)
    a.narchs = n;
  a.lib = lib;
  a.path = path;
  nv = a;
  return 1;
}

static void nv_load(void) {
  static const char *const names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"};
  /* Candidates live as long as the process: nv.path points at one. */
  static char cand[16][512];
  int ncand = 0;
  const char *env = getenv("SEQ_NVRTC_LIB");
  if (env && env[0]) {
    /* An explicit choice is the only one tried: falling back to another
     * NVRTC would hide the mistake the variable was meant to rule out. */
    snprintf(cand[ncand++], sizeof cand[0], "%s", env);
  } else {
    const char *dirs[3] = {NULL, getenv("CUDA_HOME"), "/usr/local/cuda"};
    for (int d = 0; d < 3; d++) {
      if (d == 1 && (!dirs[1] || !dirs[1][0] || strcmp(dirs[1], dirs[2]) == 0)) continue;
      for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (d == 0)
          snprintf(cand[ncand++], sizeof cand[0], "%s", names[i]);
        else if (snprintf(cand[ncand], sizeof cand[0], "%s/lib64/%s", dirs[d], names[i]) <
                 (int)sizeof cand[0])
          ncand++;
      }
    }
  }
  char lacks[256] = "";
  for (int i = 0; i < ncand; i++)
    if (nv_try(cand[i], lacks, sizeof lacks)) {
      nv_status = RT_OK;
      return;
    }
  size_t len = (size_t)snprintf(nv_msg, sizeof nv_msg, "NVRTC not found (tried");
  for (int i = 0; i < ncand && len < sizeof nv_msg; i++)
    len += (size_t)snprintf(nv_msg + len, sizeof nv_msg - len, "%s %s", i ? "," : "", cand[i]);
  if (len < sizeof nv_msg)
    snprintf(nv_msg + len, sizeof nv_msg - len, "%s%s)", lacks[0] ? "; " : "", lacks);
  nv_status = RT_ERR_IO;
}

static int nv_ready(RtError *err) {
  pthread_once(&nv_once, nv_load);
  if (nv_status) return rt_fail(err, nv_status, "%s", nv_msg);
  return RT_OK;
}

int rt_nvrtc_version(int *major, int *minor, RtError *err) {
  int rc = nv_ready(err);
  if (rc) return rc;
  if (major) *major = nv.major;
  if (minor) *minor = nv.minor;
  return RT_OK;
}

uint64_t rt_nvrtc_calls(void) {
  return atomic_load(&nv_calls);
}

double rt_nvrtc_seconds(void) {
  return (double)atomic_load(&nv_nanos) * 1e-9;
}

void rt_blob_free(RtBlob *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->size = 0;
}

/* ---- archs ------------------------------------------------------------------- */

typedef struct Arch {
  int cc;       /* compute capability as major*10+minor: 90 for sm_90a */
  char opt[40]; /* "-arch=compute_90a" (PTX) or "-arch=sm_90a" (cubin) */
} Arch;

/* "sm_" then the compute capability (two or three digits: sm_80, sm_120) and
 * an optional 'a' or 'f' (arch- or family-specific features). */
static int parse_arch(const char *arch, int cubin, Arch *a, RtError *err) {
  if (!arch) return rt_fail(err, RT_ERR_ARG, "no CUDA arch given (want sm_80, sm_90, ...)");
  int cc = 0, digits = 0;
  const char *p = arch + 3;
  int ok = strncmp(arch, "sm_", 3) == 0 && arch[3] != '0';
  for (; ok && *p >= '0' && *p <= '9' && digits < 4; p++, digits++) cc = cc * 10 + (*p - '0');
  const char *suffix = p;
  if (ok && (*p == 'a' || *p == 'f')) p++;
  if (!ok || digits < 2 || digits > 3 || *p)
    return rt_fail(err, RT_ERR_ARG,
                   "bad CUDA arch '%s' (want sm_ and a compute capability: sm_80, sm_90, sm_90a)",
                   arch);
  a->cc = cc;
  snprintf(a->opt, sizeof a->opt, "-arch=%s_%d%s", cubin ? "sm" : "compute", cc, suffix);
  return RT_OK;
}

/* After NVRTC is loaded: whether it compiles for the arch at all, checked
 * here so the message names the range rather than an option NVRTC rejects. */
static int check_arch(const char *arch, const Arch *a, RtError *err) {
  if (!nv.narchs) return RT_OK;
  for (int i = 0; i < nv.narchs; i++)
    if (nv.archs[i] == a->cc) return RT_OK;
  return rt_fail(err, RT_ERR_ARG, "NVRTC %d.%d cannot compile for %s (it supports sm_%d to sm_%d)",
                 nv.major, nv.minor, arch, nv.archs[0], nv.archs[nv.narchs - 1]);
}

/* ---- the cache --------------------------------------------------------------- */

const char *rt_cuda_cache_dir(void) {
  /* Recomputed per call (tests and hosts change the variables), into a
   * buffer per thread so that concurrent compiles do not share one. */
  static _Thread_local char buf[4096];
  const char *e = getenv("SEQ_CUDA_CACHE");
  int n;
  if (e && e[0]) {
    if (strcmp(e, "off") == 0) return NULL;
    n = snprintf(buf, sizeof buf, "%s", e);
  } else if ((e = getenv("XDG_CACHE_HOME")) && e[0] == '/') {
    /* The XDG spec says a relative XDG_CACHE_HOME is invalid and ignored. */
    n = snprintf(buf, sizeof buf, "%s/seqc/cuda", e);
  } else if ((e = getenv("HOME")) && e[0]) {
    n = snprintf(buf, sizeof buf, "%s/.cache/seqc/cuda", e);
  } else {
    return NULL;
  }
  return n > 0 && (size_t)n < sizeof buf ? buf : NULL;
}

enum { CACHE_HEADER = 48 };
static const char cache_magic[8] = {'S', 'E', 'Q', 'C', 'U', 'D', 'A', '1'};
/* Entries larger than this are not believed (a PTX of a large model is a few
 * MB). */
#define CACHE_MAX_BYTES ((uint64_t)1 << 30)

typedef struct CacheKey {
  XXH128_canonical_t key;
  char hex[33];
} CacheKey;

static void hash_field(XXH3_state_t *st, const void *data, size_t n) {
  /* Each field is preceded by its length, so no two different field lists
   * hash the same bytes. */
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)n >> (8 * i));
  XXH3_128bits_update(st, len, sizeof len);
  XXH3_128bits_update(st, data, n);
}

static int cache_key(const char *src, const char *const *opts, int nopts, const char *arch,
                     int cubin, CacheKey *k) {
  XXH3_state_t *st = XXH3_createState();
  if (!st) return -1;
  char version[32];
  snprintf(version, sizeof version, "NVRTC %d.%d", nv.major, nv.minor);
  const char *kind = cubin ? "cubin" : "ptx";
  XXH3_128bits_reset(st);
  hash_field(st, "seqc cuda cache 1", 17);
  hash_field(st, kind, strlen(kind));
  hash_field(st, arch, strlen(arch));
  hash_field(st, version, strlen(version));
  for (int i = 0; i < nopts; i++) hash_field(st, opts[i], strlen(opts[i]));
  hash_field(st, src, strlen(src));
  XXH128_canonicalFromHash(&k->key, XXH3_128bits_digest(st));
  XXH3_freeState(st);
  for (int i = 0; i < 16; i++) snprintf(k->hex + 2 * i, 3, "%02x", k->key.digest[i]);
  return 0;
}

static void content_hash(const void *data, size_t n, XXH128_canonical_t *out) {
  XXH128_canonicalFromHash(out, XXH3_128bits(data, n));
}

static int read_full(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n) {
    ssize_t got = read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    p += got;
    n -= (size_t)got;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n) {
    ssize_t put = write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return -1;
    p += put;
    n -= (size_t)put;
  }
  return 0;
}

static int cache_path(char *buf, size_t cap, const char *dir, const CacheKey *k, int cubin) {
  int n = snprintf(buf, cap, "%s/%s.%s", dir, k->hex, cubin ? "cubin" : "ptx");
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* 1 and *out when a sound entry is there; 0 for any miss: absent, unreadable,
 * short, or not what its header says. */
static int cache_read(const char *dir, const CacheKey *k, int cubin, RtBlob *out) {
  char path[4200];
  if (cache_path(path, sizeof path, dir, k, cubin)) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat sb;
  unsigned char h[CACHE_HEADER];
  char *data = NULL;
  int hit = 0;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < CACHE_HEADER ||
      read_full(fd, h, sizeof h) != 0 || memcmp(h, cache_magic, 8) != 0 ||
      memcmp(h + 16, k->key.digest, 16) != 0)
    goto done;
  uint64_t size = 0;
  for (int i = 0; i < 8; i++) size |= (uint64_t)h[8 + i] << (8 * i);
  if (size > CACHE_MAX_BYTES || (uint64_t)sb.st_size != CACHE_HEADER + size) goto done;
  /* One spare byte: PTX comes back NUL-terminated. */
  if (!(data = malloc((size_t)size + 1)) || read_full(fd, data, (size_t)size) != 0) goto done;
  data[size] = 0;
  XXH128_canonical_t sum;
  content_hash(data, (size_t)size, &sum);
  if (memcmp(h + 32, sum.digest, 16) != 0) goto done;
  /* PTX is text: a NUL inside would cut it short for the driver. */
  if (!cubin && memchr(data, 0, (size_t)size)) goto done;
  out->data = data;
  out->size = (size_t)size;
  data = NULL;
  hit = 1;
done:
  free(data);
  close(fd);
  return hit;
}

/* mkdir -p; the directories it makes are private to the user (0700), as the
 * XDG spec asks of a cache. */
static int make_dirs(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof p) return -1;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != 0) continue;
    char c = p[i];
    p[i] = 0;
    if (mkdir(p, 0700) != 0 && errno != EEXIST) return -1;
    p[i] = c;
  }
  struct stat sb;
  return stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) ? 0 : -1;
}

/* Best effort: a cache that cannot be written only costs the next compile. */
static void cache_write(const char *dir, const CacheKey *k, int cubin, const RtBlob *b) {
  static _Atomic unsigned tmp_counter;
  char path[4200], tmp[4300];
  if (cache_path(path, sizeof path, dir, k, cubin) || make_dirs(dir)) return;
  int n = snprintf(tmp, sizeof tmp, "%s/.%s.%ld.%u.tmp", dir, k->hex, (long)getpid(),
                   atomic_fetch_add(&tmp_counter, 1));
  if (n < 0 || (size_t)n >= sizeof tmp) return;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return;
  unsigned char h[CACHE_HEADER];
  memcpy(h, cache_magic, 8);
  for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)((uint64_t)b->size >> (8 * i));
  memcpy(h + 16, k->key.digest, 16);
  XXH128_canonical_t sum;
  content_hash(b->data, b->size, &sum);
  memcpy(h + 32, sum.digest, 16);
  int ok = write_full(fd, h, sizeof h) == 0 && write_full(fd, b->data, b->size) == 0;
  ok = close(fd) == 0 && ok;
  /* rename replaces a damaged entry as well as it adds a new one. */
  if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

/* ---- compiling --------------------------------------------------------------- */

static int contains(const char *s, size_t n, const char *needle) {
  size_t m = strlen(needle);
  for (size_t i = 0; i + m <= n; i++)
    if (memcmp(s + i, needle, m) == 0) return 1;
  return 0;
}

/* Up to three lines of NVRTC's log on one line, joined by " | ": the lines
 * that report errors if any (warnings come first otherwise and would crowd
 * them out), else the first lines. */
static void log_summary(const char *log, char *buf, size_t cap) {
  size_t len = 0;
  int taken = 0;
  buf[0] = 0;
  for (int pass = 0; pass < 2 && !taken; pass++) {
    const char *l = log;
    while (*l && taken < 3) {
      const char *e = strchr(l, '\n');
      size_t n = e ? (size_t)(e - l) : strlen(l);
      const char *next = e ? e + 1 : l + n;
      while (n && (*l == ' ' || *l == '\t')) l++, n--;
      while (n && (l[n - 1] == ' ' || l[n - 1] == '\r' || l[n - 1] == '\t')) n--;
      if (n && (pass == 1 || contains(l, n, "error:")) && len < cap) {
        len += (size_t)snprintf(buf + len, cap - len, "%s%.*s", taken ? " | " : "", (int)n, l);
        taken++;
      }
      l = next;
    }
  }
  if (!taken) snprintf(buf, cap, "(NVRTC wrote no log)");
}

static int nv_fail(RtError *err, NvResult r, const char *name, const char *call) {
  const char *s = nv.GetErrorString(r);
  return rt_fail(err, r == NV_ERR_OUT_OF_MEMORY ? RT_ERR_NOMEM : RT_ERR_IO, "%s: %s: %s", name,
                 call, s ? s : "unknown NVRTC error");
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int nv_compile(const char *src, const char *name, const char *arch, int cubin,
                      const char *const *opts, int nopts, RtBlob *out, RtError *err) {
  NvProgram prog = NULL;
  NvResult r = nv.CreateProgram(&prog, src, name, 0, NULL, NULL);
  if (r) return nv_fail(err, r, name, "nvrtcCreateProgram");
  uint64_t t0 = now_ns();
  r = nv.CompileProgram(prog, nopts, opts);
  atomic_fetch_add(&nv_nanos, now_ns() - t0);
  atomic_fetch_add(&nv_calls, 1);
  int rc = RT_OK;
  if (r) {
    size_t n = 0;
    char *log = NULL;
    if (nv.GetProgramLogSize(prog, &n) == 0 && n > 0 && (log = malloc(n + 1)) &&
        nv.GetProgramLog(prog, log) == 0) {
      log[n] = 0;
    } else {
      free(log);
      log = NULL;
    }
    char lines[400];
    log_summary(log ? log : "", lines, sizeof lines);
    free(log);
    const char *what = nv.GetErrorString(r);
    if (r == NV_ERR_COMPILATION)
      rc = rt_fail(err, RT_ERR_FORMAT, "%s: CUDA C does not compile (NVRTC %d.%d, %s): %s", name,
                   nv.major, nv.minor, arch, lines);
    else
      rc = rt_fail(err, r == NV_ERR_INVALID_OPTION ? RT_ERR_ARG : RT_ERR_IO,
                   "%s: nvrtcCompileProgram (NVRTC %d.%d, %s): %s: %s", name, nv.major, nv.minor,
                   arch, what ? what : "unknown NVRTC error", lines);
    nv.DestroyProgram(&prog);
    return rc;
  }
  size_t size = 0;
  char *data = NULL;
  r = cubin ? nv.GetCUBINSize(prog, &size) : nv.GetPTXSize(prog, &size);
  if (r) {
    rc = nv_fail(err, r, name, cubin ? "nvrtcGetCUBINSize" : "nvrtcGetPTXSize");
  } else if (!(data = malloc(size + 1))) {
    rc = rt_fail(err, RT_ERR_NOMEM, "%s: out of memory for %zu bytes of %s", name, size,
                 cubin ? "cubin" : "PTX");
  } else if ((r = cubin ? nv.GetCUBIN(prog, data) : nv.GetPTX(prog, data))) {
    rc = nv_fail(err, r, name, cubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX");
  } else {
    data[size] = 0;
    out->data = data;
    /* PTX's size counts the text, not NVRTC's terminating NUL (which stays). */
    out->size = cubin ? size : strlen(data);
    data = NULL;
  }
  free(data);
  nv.DestroyProgram(&prog);
  return rc;
}

int rt_nvrtc_compile(const char *src, const char *name, const char *arch, int cubin, RtBlob *out,
                     RtError *err) {
  if (!out) return rt_fail(err, RT_ERR_ARG, "rt_nvrtc_compile: no output blob");
  out->data = NULL;
  out->size = 0;
  if (!name || !name[0]) name = "seqc.cu";
  if (!src) return rt_fail(err, RT_ERR_ARG, "%s: no CUDA C source", name);
  cubin = cubin != 0;
  Arch a;
  int rc = parse_arch(arch, cubin, &a, err);
  if (rc || (rc = nv_ready(err)) || (rc = check_arch(arch, &a, err))) return rc;
  /* --use_fast_math is left off: the kernels must agree with the CPU
   * backends and the interpreter to float32 rounding, not approximately. */
  const char *const opts[] = {a.opt, "-std=c++17", "-default-device"};
  const int nopts = (int)(sizeof opts / sizeof opts[0]);

  const char *dir = rt_cuda_cache_dir();
  CacheKey key;
  if (dir && cache_key(src, opts, nopts, arch, cubin, &key) != 0) dir = NULL;
  if (dir && cache_read(dir, &key, cubin, out)) return RT_OK;
  if ((rc = nv_compile(src, name, arch, cubin, opts, nopts, out, err))) return rc;
  if (dir) cache_write(dir, &key, cubin, out);
  return RT_OK;
}
