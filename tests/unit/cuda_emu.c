/* cuda_emu.c - see cuda_emu.h. */
#include "cuda_emu.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* CMake passes SEQ_CXX (the compiler, "" when none), SEQ_CUDA_EMU_DIR (where
 * the C++ header is), SEQ_EMU_CXXFLAGS (flags that compiler needs) and
 * SEQ_EMU_SAN_FLAGS (sanitizer flags, in a matching sanitizer build). */
#ifndef SEQ_CXX
#define SEQ_CXX ""
#endif
#ifndef SEQ_CUDA_EMU_DIR
#define SEQ_CUDA_EMU_DIR ""
#endif
#ifndef SEQ_EMU_CXXFLAGS
#define SEQ_EMU_CXXFLAGS ""
#endif
#ifndef SEQ_EMU_SAN_FLAGS
#define SEQ_EMU_SAN_FLAGS ""
#endif

typedef int (*EmuLaunchFn)(const char *kernel, unsigned grid, unsigned block,
                           const long long *frame, char *msg, size_t n);
typedef int (*EmuHasFn)(const char *kernel);
typedef void (*EmuOrderFn)(int reverse);

typedef struct EmuAlloc {
  char *p;
  size_t n;
} EmuAlloc;

struct EmuModule {
  void *dl;
  char dir[4100]; /* the build directory, removed by emu_free ("" when gone) */
  int keep;
  EmuLaunchFn launch;
  EmuOrderFn order;
  char **names;
  int nnames;
  EmuAlloc *allocs;
  size_t nallocs, cap;
  size_t total_allocs; /* ever made */
  int bad_frees;
  int stream_misses; /* operations on a stream other than the device's */
};

int emu_available(void) {
  return SEQ_CXX[0] != 0;
}

/* ---- building ------------------------------------------------------------------ */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Splits `flags` on blanks into argv[*argc...] (at most max in all); the
 * words point into `store`, a copy the caller frees. */
static char *split_flags(const char *flags, char **argv, int *argc, int max) {
  char *store = dup_str(flags);
  if (!store) return NULL;
  for (char *p = store; *p && *argc < max;) {
    while (*p == ' ' || *p == '\t') *p++ = 0;
    if (!*p) break;
    argv[(*argc)++] = p;
    while (*p && *p != ' ' && *p != '\t') p++;
  }
  return store;
}

/* The first lines of the compiler's log, on one line, into msg after `prefix`. */
static void log_excerpt(const char *log_path, const char *prefix, char *msg, size_t msgn) {
  char buf[2048] = {0};
  FILE *f = fopen(log_path, "rb");
  size_t got = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[got] = 0;
  for (char *p = buf; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  snprintf(msg, msgn, "%s: %s", prefix, buf);
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t n = strlen(text);
  int bad = fwrite(text, 1, n, f) != n;
  return fclose(f) != 0 || bad ? -1 : 0;
}

/* Runs argv with stdout and stderr into log_path; the exit status, or -1. */
static int run_logged(char *const *argv, const char *log_path) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void remove_dir(const char *dir, int keep) {
  if (keep) return;
  const char *files[] = {"kernels.cu", "kernels.so", "build.log"};
  char path[4200];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static int env_is(const char *name, const char *value) {
  const char *v = getenv(name);
  return v && strcmp(v, value) == 0;
}

int emu_build(const char *cuda_source, const char *const *kernel_names, int n, EmuModule **out,
              char *msg, size_t msgn) {
  char scratch[8];
  if (!msg || msgn == 0) {
    msg = scratch;
    msgn = sizeof scratch;
  }
  msg[0] = 0;
  if (out) *out = NULL;
  if (!cuda_source || !out || n < 0 || (n > 0 && !kernel_names)) {
    snprintf(msg, msgn, "emu_build: bad arguments");
    return -1;
  }
  if (!emu_available()) {
    snprintf(msg, msgn, "emu_build: no C++ compiler was found at configure time");
    return -1;
  }
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp || strlen(tmp) > 4000) tmp = "/tmp";
  char dir[4100], src[4200], so[4200], log[4200], header[4200];
  snprintf(dir, sizeof dir, "%s/seq-emu-XXXXXX", tmp);
  if (!mkdtemp(dir)) {
    snprintf(msg, msgn, "emu_build: cannot create a directory under %s", tmp);
    return -1;
  }
  snprintf(src, sizeof src, "%s/kernels.cu", dir);
  snprintf(so, sizeof so, "%s/kernels.so", dir);
  snprintf(log, sizeof log, "%s/build.log", dir);
  snprintf(header, sizeof header, "%s/cuda_emu.h", SEQ_CUDA_EMU_DIR);
  int keep = env_is("SEQ_EMU_KEEP", "1");
  if (write_text(src, cuda_source) != 0) {
    snprintf(msg, msgn, "emu_build: cannot write %s", src);
    remove_dir(dir, keep);
    return -1;
  }

  /* c++ -std=c++17 -O1 -shared -fPIC -fvisibility=hidden [flags] -include
   * cuda_emu.h -x c++ kernels.cu -o kernels.so */
  char *argv[64];
  int argc = 0;
  const char *fixed[] = {SEQ_CXX, "-std=c++17",         "-O1", "-g", "-shared",
                         "-fPIC", "-fvisibility=hidden"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) argv[argc++] = (char *)fixed[i];
  char *s1 = split_flags(SEQ_EMU_CXXFLAGS, argv, &argc, 40);
  int sanitized = SEQ_EMU_SAN_FLAGS[0] != 0 && !env_is("SEQ_EMU_SANITIZE", "0");
  char *s2 = sanitized ? split_flags(SEQ_EMU_SAN_FLAGS, argv, &argc, 48) : NULL;
  const char *extra = getenv("SEQ_EMU_CXXFLAGS");
  char *s3 = extra ? split_flags(extra, argv, &argc, 56) : NULL;
  const char *tail[] = {"-include", header, "-x", "c++", src, "-o", so};
  for (size_t i = 0; i < sizeof tail / sizeof tail[0]; i++) argv[argc++] = (char *)tail[i];
  argv[argc] = NULL;
  int rc = run_logged(argv, log);
  free(s1);
  free(s2);
  free(s3);
  if (rc != 0) {
    char prefix[4400];
    snprintf(prefix, sizeof prefix, "emu_build: %s failed (exit %d)%s%s", SEQ_CXX, rc,
             keep ? ", kept in " : "", keep ? dir : "");
    log_excerpt(log, prefix, msg, msgn);
    remove_dir(dir, keep);
    return -1;
  }

  EmuModule *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(msg, msgn, "emu_build: out of memory");
    remove_dir(dir, keep);
    return -1;
  }
  /* A sanitized module's directory stays until emu_free, so that a report
   * can name kernels.cu's lines (a test that fails or crashes before
   * emu_free leaves it behind); otherwise it goes once the .so is loaded. */
  memcpy(m->dir, dir, sizeof m->dir);
  m->keep = keep;
  if (keep) fprintf(stderr, "emu_build: kept %s\n", dir);
  m->dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!sanitized) {
    remove_dir(m->dir, keep);
    m->dir[0] = 0;
  }
  if (!m->dl) {
    const char *e = dlerror();
    snprintf(msg, msgn, "emu_build: dlopen: %s", e ? e : "failed");
    emu_free(m);
    return -1;
  }
  m->launch = (EmuLaunchFn)(uintptr_t)dlsym(m->dl, "seq_emu_launch");
  EmuHasFn has = (EmuHasFn)(uintptr_t)dlsym(m->dl, "seq_emu_has_kernel");
  m->order = (EmuOrderFn)(uintptr_t)dlsym(m->dl, "seq_emu_set_order");
  if (!m->launch || !has || !m->order) {
    snprintf(msg, msgn, "emu_build: the module has no seq_emu_launch (was cuda_emu.h included?)");
    emu_free(m);
    return -1;
  }
  m->names = calloc(n > 0 ? (size_t)n : 1, sizeof *m->names);
  if (!m->names) {
    snprintf(msg, msgn, "emu_build: out of memory");
    emu_free(m);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    if (!kernel_names[i] || !has(kernel_names[i])) {
      snprintf(msg, msgn, "emu_build: kernel '%s' is not in the source's SEQ_EMU_KERNELS table",
               kernel_names[i] ? kernel_names[i] : "(null)");
      emu_free(m);
      return -1;
    }
    if (!(m->names[i] = dup_str(kernel_names[i]))) {
      snprintf(msg, msgn, "emu_build: out of memory");
      emu_free(m);
      return -1;
    }
    m->nnames = i + 1;
  }
  *out = m;
  return 0;
}

void emu_free(EmuModule *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nallocs; i++) free(m->allocs[i].p);
  free(m->allocs);
  for (int i = 0; i < m->nnames; i++) free(m->names[i]);
  free(m->names);
  if (m->dl) dlclose(m->dl);
  if (m->dir[0]) remove_dir(m->dir, m->keep);
  free(m);
}

int emu_launch_name(EmuModule *m, const char *kernel, unsigned grid, unsigned block,
                    const long long *frame, char *msg, size_t msgn) {
  return m->launch(kernel, grid, block, frame, msg, msgn);
}

void emu_set_reverse(EmuModule *m, int reverse) {
  m->order(reverse);
}

size_t emu_live_allocs(const EmuModule *m) {
  return m->nallocs;
}

size_t emu_total_allocs(const EmuModule *m) {
  return m->total_allocs;
}

int emu_bad_frees(const EmuModule *m) {
  return m->bad_frees;
}

int emu_stream_misses(const EmuModule *m) {
  return m->stream_misses;
}

/* The device's stream is a tag, the module's own address (emu_device): an
 * operation given anything else counts as a miss. */
static void on_stream(EmuModule *m, void *stream) {
  if (stream != (void *)m) m->stream_misses++;
}

/* ---- the device ------------------------------------------------------------------ */

static int dev_alloc(void *ctx, void *stream, size_t bytes, RtDevPtr *out, RtError *err) {
  EmuModule *m = ctx;
  on_stream(m, stream);
  if (m->nallocs == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    EmuAlloc *a = realloc(m->allocs, cap * sizeof *a);
    if (!a) {
      snprintf(err->msg, sizeof err->msg, "emulated device: out of memory");
      return RT_ERR_NOMEM;
    }
    m->allocs = a;
    m->cap = cap;
  }
  char *p = calloc(1, bytes ? bytes : 1);
  if (!p) {
    snprintf(err->msg, sizeof err->msg, "emulated device: out of memory (%zu bytes)", bytes);
    return RT_ERR_NOMEM;
  }
  m->allocs[m->nallocs].p = p;
  m->allocs[m->nallocs].n = bytes;
  m->nallocs++;
  m->total_allocs++;
  *out = (RtDevPtr)(uintptr_t)p;
  return 0;
}

static void dev_free(void *ctx, RtDevPtr ptr) {
  EmuModule *m = ctx;
  if (!ptr) return;
  for (size_t i = 0; i < m->nallocs; i++) {
    if ((uintptr_t)m->allocs[i].p == ptr) {
      free(m->allocs[i].p);
      m->allocs[i] = m->allocs[--m->nallocs];
      return;
    }
  }
  m->bad_frees++;
}

/* Whether [p, p + n) lies inside one allocation. */
static int in_device(const EmuModule *m, RtDevPtr p, size_t n) {
  if (n == 0) return 1;
  for (size_t i = 0; i < m->nallocs; i++) {
    uintptr_t a = (uintptr_t)m->allocs[i].p;
    if (p >= a && p - a <= m->allocs[i].n && n <= m->allocs[i].n - (p - a)) return 1;
  }
  return 0;
}

static int dev_copy(void *ctx, void *stream, RtDevPtr dst, RtDevPtr src, size_t bytes,
                    RtCuCopyKind kind, RtError *err) {
  EmuModule *m = ctx;
  on_stream(m, stream);
  int dst_dev = kind == RT_CU_H2D || kind == RT_CU_D2D;
  int src_dev = kind == RT_CU_D2H || kind == RT_CU_D2D;
  if ((dst_dev && !in_device(m, dst, bytes)) || (src_dev && !in_device(m, src, bytes))) {
    snprintf(err->msg, sizeof err->msg,
             "emulated device: copy of %zu bytes from %#llx to %#llx (%s) leaves the allocation",
             bytes, (unsigned long long)src, (unsigned long long)dst,
             kind == RT_CU_H2D   ? "host to device"
             : kind == RT_CU_D2H ? "device to host"
                                 : "device to device");
    return RT_ERR_ARG;
  }
  if (bytes) memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
  return 0;
}

static int dev_zero(void *ctx, void *stream, RtDevPtr dst, size_t bytes, RtError *err) {
  EmuModule *m = ctx;
  on_stream(m, stream);
  if (!in_device(m, dst, bytes)) {
    snprintf(err->msg, sizeof err->msg,
             "emulated device: zeroing %zu bytes at %#llx leaves the allocation", bytes,
             (unsigned long long)dst);
    return RT_ERR_ARG;
  }
  if (bytes) memset((void *)(uintptr_t)dst, 0, bytes);
  return 0;
}

static int dev_launch(void *ctx, void *stream, int kernel, uint32_t grid, uint32_t block,
                      RtDevPtr frame, RtError *err) {
  EmuModule *m = ctx;
  on_stream(m, stream);
  if (kernel < 0 || kernel >= m->nnames) {
    snprintf(err->msg, sizeof err->msg, "emulated device: no kernel %d (the module has %d)", kernel,
             m->nnames);
    return RT_ERR_ARG;
  }
  if (!in_device(m, frame, sizeof(int64_t))) {
    snprintf(err->msg, sizeof err->msg,
             "emulated device: kernel %s: the frame %#llx is not device memory", m->names[kernel],
             (unsigned long long)frame);
    return RT_ERR_ARG;
  }
  if (m->launch(m->names[kernel], grid, block, (const long long *)(uintptr_t)frame, err->msg,
                sizeof err->msg) != 0)
    return RT_ERR_ARG;
  return 0;
}

static int dev_sync(void *ctx, void *stream, RtError *err) {
  (void)err;
  on_stream(ctx, stream);
  return 0;
}

RtCuDevice emu_device(EmuModule *m) {
  RtCuDevice d = {m, m, dev_alloc, dev_free, dev_copy, dev_zero, dev_launch, dev_sync};
  return d;
}
