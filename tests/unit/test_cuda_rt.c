/* test_cuda_rt.c - CUDA at run time (runtime/cuda_nvrtc.c, cuda_driver.c):
 * NVRTC compiles to PTX and cubins for sm_80 and sm_90, the on-disk cache
 * hits, misses and heals, compile errors and bad archs say what is wrong, a
 * missing NVRTC or driver is an error and never a crash, and on a machine
 * with a GPU a cubin runs.
 *
 * NVRTC tests skip (saying why) only where NVRTC cannot be found and there is
 * no /usr/local/cuda; with a toolkit there, not finding NVRTC is a failure.
 * The device test runs only where rt_cuda_open succeeds.
 *
 * The library lookups are made once per process, so the cases that need a
 * different SEQ_NVRTC_LIB or SEQ_CUDA_DRIVER_LIB run this program again with
 * --probe in a child, which reports what the lookups gave. */
#include "testutil.h"
#include "fake_streams.h"

#include "runtime/rt_cuda.h"

#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char kernels_src[] =
    "// a saxpy and a block sum: warp shuffles and a barrier\n"
    "extern \"C\" __global__ void saxpy(const long long *frame) {\n"
    "  long long n = frame[0];\n"
    "  float a = __int_as_float((int)frame[1]);\n"
    "  const float *x = (const float *)frame[2];\n"
    "  float *y = (float *)frame[3];\n"
    "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  if (i < n) y[i] = a * x[i] + y[i];\n"
    "}\n"
    "extern \"C\" __global__ void block_sum(const long long *frame) {\n"
    "  __shared__ float part[32];\n"
    "  long long n = frame[0];\n"
    "  const float *x = (const float *)frame[2];\n"
    "  float *out = (float *)frame[3];\n"
    "  float v = 0.0f;\n"
    "  for (long long i = threadIdx.x; i < n; i += blockDim.x) v += x[i];\n"
    "  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);\n"
    "  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;\n"
    "  __syncthreads();\n"
    "  if (threadIdx.x < 32) {\n"
    "    v = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.0f;\n"
    "    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);\n"
    "    if (threadIdx.x == 0) *out = v;\n"
    "  }\n"
    "}\n";

/* Line 3 names what is not declared. */
static const char bad_src[] = "extern \"C\" __global__ void broken(float *y) {\n"
                              "  float z = 1.0f;\n"
                              "  y[0] = z + undeclared;\n"
                              "}\n";

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* NVRTC is there, or the test is skipped: only where no toolkit is installed
 * at all may it be absent. */
static void need_nvrtc(void) {
  RtError err;
  int major = 0, minor = 0;
  if (rt_nvrtc_version(&major, &minor, &err) == RT_OK) return;
  if (access("/usr/local/cuda", F_OK) == 0)
    fail_msg("/usr/local/cuda exists but NVRTC does not load: %s", err.msg);
  print_message("skipped: %s (and no /usr/local/cuda)\n", err.msg);
  skip();
}

/* Points the cache at a fresh directory under the test's temporary one. */
static const char *fresh_cache(const char *name) {
  static char dir[512];
  snprintf(dir, sizeof dir, "%s/%s/nested/cache", tu_tmpdir(), name);
  setenv("SEQ_CUDA_CACHE", dir, 1);
  return dir;
}

static void compile_ok(const char *src, const char *arch, int cubin, RtBlob *out) {
  RtError err;
  if (rt_nvrtc_compile(src, "kernels.cu", arch, cubin, out, &err) != RT_OK)
    fail_msg("compile for %s (%s): %s", arch, cubin ? "cubin" : "PTX", err.msg);
  assert_non_null(out->data);
  assert_true(out->size > 0);
}

static void assert_same_blob(const RtBlob *a, const RtBlob *b) {
  assert_int_equal(a->size, b->size);
  assert_memory_equal(a->data, b->data, a->size);
}

static int count_entries(const char *dir, const char *suffix) {
  int n = 0;
  char **names = tu_list_dir(dir, suffix, &n);
  tu_free_list(names);
  return n;
}

static int count_dot_files(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] == '.' && strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
  closedir(d);
  return n;
}

static void test_version(void **state) {
  (void)state;
  need_nvrtc();
  RtError err;
  int major = -1, minor = -1;
  assert_int_equal(rt_nvrtc_version(&major, &minor, &err), RT_OK);
  assert_true(major >= 11);
  assert_true(minor >= 0);
  assert_int_equal(rt_nvrtc_version(NULL, NULL, &err), RT_OK);
  print_message("NVRTC %d.%d\n", major, minor);
}

/* PTX and cubins for both archs, each a fresh compile (cache off). */
static void test_compile(void **state) {
  (void)state;
  need_nvrtc();
  setenv("SEQ_CUDA_CACHE", "off", 1);
  assert_null(rt_cuda_cache_dir());
  static const char *const archs[] = {"sm_80", "sm_90"};
  for (int a = 0; a < 2; a++) {
    uint64_t calls = rt_nvrtc_calls();
    RtBlob ptx, cubin;
    double t0 = now_s();
    compile_ok(kernels_src, archs[a], 0, &ptx);
    double t1 = now_s();
    compile_ok(kernels_src, archs[a], 1, &cubin);
    double t2 = now_s();
    assert_int_equal(rt_nvrtc_calls(), calls + 2);
    const char *text = ptx.data;
    assert_int_equal(text[ptx.size], 0);
    assert_int_equal(strlen(text), ptx.size);
    assert_non_null(strstr(text, ".entry saxpy"));
    assert_non_null(strstr(text, ".entry block_sum"));
    assert_non_null(strstr(text, "shfl.sync.down"));
    assert_non_null(strstr(text, "bar.sync"));
    char target[32];
    snprintf(target, sizeof target, ".target %s", archs[a]);
    assert_non_null(strstr(text, target));
    assert_memory_equal(cubin.data,
                        "\x7f"
                        "ELF",
                        4);
    /* The kernel names are in the cubin's symbol table, unmangled. */
    assert_true(cubin.size > 64);
    int found = 0;
    for (size_t i = 0; i + 5 < cubin.size; i++)
      if (memcmp((char *)cubin.data + i, "saxpy", 6) == 0) found = 1;
    assert_true(found);
    print_message("%s: PTX %zu bytes in %.3f s, cubin %zu bytes in %.3f s\n", archs[a], ptx.size,
                  t1 - t0, cubin.size, t2 - t1);
    rt_blob_free(&ptx);
    rt_blob_free(&cubin);
    assert_null(ptx.data);
  }
  assert_true(rt_nvrtc_seconds() > 0);
}

static void test_cache_hits(void **state) {
  (void)state;
  need_nvrtc();
  const char *dir = fresh_cache("hits");
  assert_string_equal(rt_cuda_cache_dir(), dir);
  uint64_t calls = rt_nvrtc_calls();
  double s0 = rt_nvrtc_seconds();

  RtBlob cold, warm;
  double t0 = now_s();
  compile_ok(kernels_src, "sm_80", 0, &cold);
  double t1 = now_s();
  assert_int_equal(rt_nvrtc_calls(), calls + 1);
  /* The directory was made, with one entry in it. */
  assert_int_equal(count_entries(dir, ".ptx"), 1);
  compile_ok(kernels_src, "sm_80", 0, &warm);
  double t2 = now_s();
  assert_int_equal(rt_nvrtc_calls(), calls + 1);
  assert_same_blob(&cold, &warm);
  assert_int_equal(((char *)warm.data)[warm.size], 0);
  print_message("sm_80 PTX: cold %.3f s (NVRTC %.3f s), cached %.6f s\n", t1 - t0,
                rt_nvrtc_seconds() - s0, t2 - t1);

  /* Another arch, another kind, another source: each compiles once more. */
  RtBlob other;
  compile_ok(kernels_src, "sm_90", 0, &other);
  assert_int_equal(rt_nvrtc_calls(), calls + 2);
  rt_blob_free(&other);
  compile_ok(kernels_src, "sm_80", 1, &other);
  assert_int_equal(rt_nvrtc_calls(), calls + 3);
  assert_int_equal(count_entries(dir, ".cubin"), 1);
  RtBlob again;
  compile_ok(kernels_src, "sm_80", 1, &again);
  assert_int_equal(rt_nvrtc_calls(), calls + 3);
  assert_same_blob(&other, &again);
  rt_blob_free(&other);
  rt_blob_free(&again);
  char src2[sizeof kernels_src + 32];
  snprintf(src2, sizeof src2, "%s// changed\n", kernels_src);
  compile_ok(src2, "sm_80", 0, &other);
  assert_int_equal(rt_nvrtc_calls(), calls + 4);
  assert_int_equal(count_entries(dir, ".ptx"), 3);
  /* No temporary files are left behind (they are dot files, which
   * tu_list_dir leaves out). */
  assert_int_equal(count_dot_files(dir), 0);
  rt_blob_free(&other);
  rt_blob_free(&cold);
  rt_blob_free(&warm);
}

static void write_raw(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  if (n) assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Every kind of damage reads as a miss: NVRTC runs again, the result is the
 * same and the entry is sound afterwards (the next compile hits). */
static void test_cache_heals(void **state) {
  (void)state;
  need_nvrtc();
  const char *dir = fresh_cache("heals");
  for (int cubin = 0; cubin < 2; cubin++) {
    const char *suffix = cubin ? ".cubin" : ".ptx";
    RtBlob good;
    compile_ok(kernels_src, "sm_90", cubin, &good);
    int n = 0;
    char **names = tu_list_dir(dir, suffix, &n);
    assert_int_equal(n, 1);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, names[0]);
    tu_free_list(names);
    size_t len = 0;
    char *orig = tu_read_file(path, &len);
    assert_non_null(orig);
    assert_int_equal(len, good.size + 48);

    for (int damage = 0; damage < 7; damage++) {
      char *bytes = malloc(len);
      assert_non_null(bytes);
      memcpy(bytes, orig, len);
      size_t keep = len;
      switch (damage) {
      case 0:
        keep = 0;
        break; /* empty */
      case 1:
        keep = 20;
        break; /* inside the header */
      case 2:
        keep = len / 2;
        break; /* truncated content */
      case 3:
        bytes[len - 7] ^= 0x10;
        break; /* a flipped bit in the content */
      case 4:
        bytes[0] = 'X';
        break; /* bad magic */
      case 5:
        bytes[8] ^= 1;
        break; /* the size is wrong */
      case 6:
        bytes[20] ^= 1;
        break; /* another key */
      }
      write_raw(path, bytes, keep);
      free(bytes);
      uint64_t calls = rt_nvrtc_calls();
      RtBlob back;
      compile_ok(kernels_src, "sm_90", cubin, &back);
      if (rt_nvrtc_calls() != calls + 1) fail_msg("damage %d to %s was not noticed", damage, path);
      assert_same_blob(&good, &back);
      rt_blob_free(&back);
      compile_ok(kernels_src, "sm_90", cubin, &back);
      if (rt_nvrtc_calls() != calls + 1) fail_msg("damage %d to %s was not repaired", damage, path);
      assert_same_blob(&good, &back);
      rt_blob_free(&back);
    }
    /* An entry that is a directory is passed over as well. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkdir(path, 0700), 0);
    uint64_t calls = rt_nvrtc_calls();
    RtBlob back;
    compile_ok(kernels_src, "sm_90", cubin, &back);
    assert_int_equal(rt_nvrtc_calls(), calls + 1);
    assert_same_blob(&good, &back);
    rt_blob_free(&back);
    assert_int_equal(rmdir(path), 0);
    free(orig);
    rt_blob_free(&good);
  }
}

typedef struct Racer {
  int cubin;
  RtBlob out;
  int rc;
  RtError err;
} Racer;

static void *race(void *arg) {
  Racer *r = arg;
  r->rc = rt_nvrtc_compile(kernels_src, "kernels.cu", "sm_90", r->cubin, &r->out, &r->err);
  return NULL;
}

/* Threads compiling at once into one cache all get the same, sound result,
 * and a later compile hits what they left. */
static void test_cache_threads(void **state) {
  (void)state;
  need_nvrtc();
  const char *dir = fresh_cache("threads");
  enum { NT = 6 };
  Racer r[NT];
  pthread_t t[NT];
  for (int i = 0; i < NT; i++) {
    memset(&r[i], 0, sizeof r[i]);
    r[i].cubin = i & 1;
    assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
  }
  for (int i = 0; i < NT; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
  for (int i = 0; i < NT; i++) {
    if (r[i].rc) fail_msg("thread %d: %s", i, r[i].err.msg);
    if (i >= 2) assert_same_blob(&r[i & 1].out, &r[i].out);
  }
  assert_int_equal(count_entries(dir, ".ptx"), 1);
  assert_int_equal(count_entries(dir, ".cubin"), 1);
  assert_int_equal(count_dot_files(dir), 0);
  uint64_t calls = rt_nvrtc_calls();
  for (int cubin = 0; cubin < 2; cubin++) {
    RtBlob b;
    compile_ok(kernels_src, "sm_90", cubin, &b);
    assert_same_blob(&r[cubin].out, &b);
    rt_blob_free(&b);
  }
  assert_int_equal(rt_nvrtc_calls(), calls);
  for (int i = 0; i < NT; i++) rt_blob_free(&r[i].out);
}

/* A cache that cannot be made only means compiling every time. */
static void test_cache_unwritable(void **state) {
  (void)state;
  need_nvrtc();
  char file[512], dir[600];
  snprintf(file, sizeof file, "%s/not-a-dir", tu_tmpdir());
  assert_int_equal(tu_write_file(file, "x"), 0);
  snprintf(dir, sizeof dir, "%s/cache", file);
  setenv("SEQ_CUDA_CACHE", dir, 1);
  for (int i = 0; i < 2; i++) {
    uint64_t calls = rt_nvrtc_calls();
    RtBlob b;
    compile_ok(kernels_src, "sm_80", 0, &b);
    assert_int_equal(rt_nvrtc_calls(), calls + 1);
    rt_blob_free(&b);
  }
}

static void test_cache_dir(void **state) {
  (void)state;
  char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
  setenv("SEQ_CUDA_CACHE", "/some/where", 1);
  assert_string_equal(rt_cuda_cache_dir(), "/some/where");
  setenv("SEQ_CUDA_CACHE", "off", 1);
  assert_null(rt_cuda_cache_dir());
  unsetenv("SEQ_CUDA_CACHE");
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  assert_string_equal(rt_cuda_cache_dir(), "/xdg/seqc/cuda");
  /* A relative XDG_CACHE_HOME is not one (the XDG spec). */
  setenv("XDG_CACHE_HOME", "rel", 1);
  setenv("HOME", "/home/someone", 1);
  assert_string_equal(rt_cuda_cache_dir(), "/home/someone/.cache/seqc/cuda");
  unsetenv("XDG_CACHE_HOME");
  assert_string_equal(rt_cuda_cache_dir(), "/home/someone/.cache/seqc/cuda");
  unsetenv("HOME");
  assert_null(rt_cuda_cache_dir());
  if (home) setenv("HOME", home, 1);
  free(home);
  setenv("SEQ_CUDA_CACHE", "off", 1);
}

static void test_compile_error(void **state) {
  (void)state;
  need_nvrtc();
  fresh_cache("errors");
  for (int cubin = 0; cubin < 2; cubin++) {
    uint64_t calls = rt_nvrtc_calls();
    RtError err;
    RtBlob b = {(void *)1, 1};
    assert_int_equal(rt_nvrtc_compile(bad_src, "bad.cu", "sm_80", cubin, &b, &err), RT_ERR_FORMAT);
    assert_null(b.data);
    assert_int_equal(b.size, 0);
    if (!strstr(err.msg, "bad.cu(3): error") || !strstr(err.msg, "bad.cu: ") ||
        strchr(err.msg, '\n'))
      fail_msg("message: %s", err.msg);
    /* A failed compile is not cached: the next one runs NVRTC again. */
    assert_int_equal(rt_nvrtc_compile(bad_src, "bad.cu", "sm_80", cubin, &b, &err), RT_ERR_FORMAT);
    assert_int_equal(rt_nvrtc_calls(), calls + 2);
    if (cubin == 0) print_message("compile error: %s\n", err.msg);
  }
}

static void test_bad_args(void **state) {
  (void)state;
  RtError err;
  RtBlob b;
  static const char *const bad[] = {"sm_x",       "sm_",    "sm_8",    "sm_08", "sm_1000",
                                    "compute_80", "sm_90b", "sm_90aa", "SM_80", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(rt_nvrtc_compile(kernels_src, "k.cu", bad[i], 0, &b, &err), RT_ERR_ARG);
    char want[64];
    snprintf(want, sizeof want, "bad CUDA arch '%s'", bad[i]);
    if (!strstr(err.msg, want)) fail_msg("%s: %s", bad[i], err.msg);
  }
  assert_int_equal(rt_nvrtc_compile(kernels_src, "k.cu", NULL, 0, &b, &err), RT_ERR_ARG);
  assert_int_equal(rt_nvrtc_compile(NULL, "k.cu", "sm_80", 0, &b, &err), RT_ERR_ARG);
  assert_int_equal(rt_nvrtc_compile(kernels_src, "k.cu", "sm_80", 0, NULL, &err), RT_ERR_ARG);
  need_nvrtc();
  /* Well formed, but no NVRTC of this decade compiles for it. */
  assert_int_equal(rt_nvrtc_compile(kernels_src, "k.cu", "sm_20", 0, &b, &err), RT_ERR_ARG);
  if (!strstr(err.msg, "cannot compile for sm_20") && !strstr(err.msg, "sm_20"))
    fail_msg("sm_20: %s", err.msg);
  print_message("sm_20: %s\n", err.msg);
  /* sm_90a is an arch of its own. */
  setenv("SEQ_CUDA_CACHE", "off", 1);
  RtBlob ptx;
  compile_ok(kernels_src, "sm_90a", 0, &ptx);
  assert_non_null(strstr(ptx.data, ".target sm_90a"));
  rt_blob_free(&ptx);
  rt_blob_free(NULL);
}

/* Runs this program in a child with `mode` (--probe, --fake-device) under
 * the given environment; its exit status must be 0. */
static char *probe(const char *env, const char *mode) {
  char self[1024];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  assert_true(n > 0);
  self[n] = 0;
  char cmd[2048], *out = NULL;
  snprintf(cmd, sizeof cmd, "env %s SEQ_CUDA_CACHE=off '%s' %s", env, self, mode);
  int rc = tu_run(cmd, &out);
  assert_non_null(out);
  if (rc != 0) fail_msg("%s: exit %d\n%s", cmd, rc, out);
  return out;
}

static void test_nvrtc_not_found(void **state) {
  (void)state;
  char *out = probe("SEQ_NVRTC_LIB=/nonexistent/libnvrtc.so", "--probe");
  if (!strstr(out, "version 1 NVRTC not found (tried /nonexistent/libnvrtc.so)") ||
      !strstr(out, "compile 1 NVRTC not found (tried /nonexistent/libnvrtc.so)"))
    fail_msg("probe said:\n%s", out);
  free(out);
  /* A library that is no NVRTC is passed over the same way. */
  out = probe("SEQ_NVRTC_LIB=libc.so.6", "--probe");
  if (!strstr(out, "version 1 NVRTC not found (tried libc.so.6; libc.so.6 lacks nvrtc"))
    fail_msg("probe said:\n%s", out);
  free(out);
  /* A real one named explicitly is used. */
  const char *lib = "/usr/local/cuda/lib64/libnvrtc.so";
  if (access(lib, R_OK) == 0) {
    char env[256];
    snprintf(env, sizeof env, "SEQ_NVRTC_LIB=%s", lib);
    out = probe(env, "--probe");
    if (!strstr(out, "version 0 ok") || !strstr(out, "compile 0 ok"))
      fail_msg("probe said:\n%s", out);
    free(out);
  }
}

static void test_driver_absent(void **state) {
  (void)state;
  RtError err;
  RtCuda *c = (RtCuda *)1;
  int rc = rt_cuda_open(0, &c, &err);
  if (rc == RT_OK) {
    print_message("CUDA device 0: %s, %s, %zu MiB\n", rt_cuda_name(c), rt_cuda_arch(c),
                  rt_cuda_memory(c) >> 20);
    assert_int_equal(strncmp(rt_cuda_arch(c), "sm_", 3), 0);
    assert_true(rt_cuda_memory(c) > 0);
    rt_cuda_close(c);
    assert_int_equal(rt_cuda_open(-1, &c, &err), RT_ERR_ARG);
    assert_int_equal(rt_cuda_open(1 << 20, &c, &err), RT_ERR_ARG);
    assert_null(c);
  } else {
    assert_null(c);
    if (!strstr(err.msg, "CUDA driver not found") && !strstr(err.msg, "no CUDA device"))
      fail_msg("rt_cuda_open: %s", err.msg);
    print_message("rt_cuda_open: %s\n", err.msg);
    /* The outcome is kept: the same answer again. */
    char first[sizeof err.msg];
    memcpy(first, err.msg, sizeof first);
    assert_int_equal(rt_cuda_open(0, &c, &err), rc);
    assert_string_equal(err.msg, first);
  }
  rt_cuda_close(NULL);
  assert_int_equal(rt_cuda_open(0, NULL, &err), RT_ERR_ARG);

  char *out = probe("SEQ_CUDA_DRIVER_LIB=/nonexistent/libcuda.so.1", "--probe");
  if (!strstr(out, "driver 1 CUDA driver not found (/nonexistent/libcuda.so.1)"))
    fail_msg("probe said:\n%s", out);
  free(out);
  /* The toolkit's stub links but is no driver. */
  const char *stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (access(stub, R_OK) == 0) {
    char env[256];
    snprintf(env, sizeof env, "SEQ_CUDA_DRIVER_LIB=%s", stub);
    out = probe(env, "--probe");
    if (!strstr(out, "driver 1 CUDA driver not found (")) fail_msg("probe said:\n%s", out);
    print_message("stub: %s", strstr(out, "driver 1"));
    free(out);
  }
}

/* Runs both kernels of `image` through an RtCuDevice of c, its operations
 * on `stream` (NULL: the default stream), and checks them against the host,
 * then the driver's error paths. The real device and the fake driver below
 * go through it alike. */
static void exercise(RtCuda *c, const RtBlob *image, void *stream) {
  RtError err;
  const char *const names[] = {"saxpy", "block_sum"};
  enum { N = 1000 };
  static float x[N], y[N], back[N];
  double sum = 0;
  for (int i = 0; i < N; i++) {
    x[i] = (float)(i % 17) * 0.5f - 3.0f;
    y[i] = (float)(i % 5);
    sum += x[i];
  }
  RtCuDevice d;
  if (rt_cuda_load(c, image, names, 2, &d, &err) != RT_OK) fail_msg("load: %s", err.msg);
  assert_null(d.stream);
  d.stream = stream;
  RtDevPtr dx = 0, dy = 0, dframe = 0, dsum = 0, dnone = 0;
  if (d.alloc(d.ctx, d.stream, sizeof x, &dx, &err) ||
      d.alloc(d.ctx, d.stream, sizeof y, &dy, &err) ||
      d.alloc(d.ctx, d.stream, 4 * sizeof(int64_t), &dframe, &err) ||
      d.alloc(d.ctx, d.stream, sizeof(float), &dsum, &err) ||
      d.alloc(d.ctx, d.stream, 0, &dnone, &err))
    fail_msg("alloc: %s", err.msg);
  assert_true(dnone != 0);
  /* Memory comes zeroed. */
  if (d.copy(d.ctx, d.stream, (RtDevPtr)(uintptr_t)back, dy, sizeof back, RT_CU_D2H, &err))
    fail_msg("%s", err.msg);
  for (int i = 0; i < N; i++) assert_true(back[i] == 0.0f);
  float a = 2.5f;
  int32_t abits;
  memcpy(&abits, &a, 4);
  int64_t frame[4] = {N, abits, (int64_t)dx, (int64_t)dy};
  if (d.copy(d.ctx, d.stream, dx, (RtDevPtr)(uintptr_t)x, sizeof x, RT_CU_H2D, &err) ||
      d.copy(d.ctx, d.stream, dy, (RtDevPtr)(uintptr_t)y, sizeof y, RT_CU_H2D, &err) ||
      d.copy(d.ctx, d.stream, dframe, (RtDevPtr)(uintptr_t)frame, sizeof frame, RT_CU_H2D, &err) ||
      d.launch(d.ctx, d.stream, 0, (N + 127) / 128, 128, dframe, &err) ||
      d.sync(d.ctx, d.stream, &err) ||
      d.copy(d.ctx, d.stream, (RtDevPtr)(uintptr_t)back, dy, sizeof back, RT_CU_D2H, &err))
    fail_msg("saxpy: %s", err.msg);
  for (int i = 0; i < N; i++)
    if (back[i] != a * x[i] + y[i])
      fail_msg("saxpy[%d] = %g, want %g", i, back[i], a * x[i] + y[i]);
  /* The block sum, its result copied device to device first. */
  frame[3] = (int64_t)dsum;
  float got = 0;
  if (d.copy(d.ctx, d.stream, dframe, (RtDevPtr)(uintptr_t)frame, sizeof frame, RT_CU_H2D, &err) ||
      d.launch(d.ctx, d.stream, 1, 1, 256, dframe, &err) || d.sync(d.ctx, d.stream, &err) ||
      d.copy(d.ctx, d.stream, dy, dsum, sizeof(float), RT_CU_D2D, &err) ||
      d.copy(d.ctx, d.stream, (RtDevPtr)(uintptr_t)&got, dy, sizeof got, RT_CU_D2H, &err))
    fail_msg("block_sum: %s", err.msg);
  assert_float_equal(got, sum, 1e-3);
  if (d.zero(d.ctx, d.stream, dy, sizeof y, &err) ||
      d.copy(d.ctx, d.stream, (RtDevPtr)(uintptr_t)back, dy, sizeof back, RT_CU_D2H, &err))
    fail_msg("zero: %s", err.msg);
  assert_true(back[0] == 0.0f && back[N - 1] == 0.0f);
  /* Errors name the call; no blocks is no work. */
  assert_int_equal(d.launch(d.ctx, d.stream, 2, 1, 32, dframe, &err), RT_ERR_ARG);
  assert_int_equal(d.launch(d.ctx, d.stream, 0, 0, 32, dframe, &err), RT_OK);
  assert_int_equal(d.launch(d.ctx, d.stream, 0, 1, 4096, dframe, &err), RT_ERR_ARG);
  if (!strstr(err.msg, "cuLaunchKernel(saxpy, 1 blocks of 4096 threads): ") ||
      !strstr(err.msg, "(CUDA_ERROR_INVALID_VALUE)"))
    fail_msg("%s", err.msg);
  RtDevPtr huge = 1;
  assert_int_equal(d.alloc(d.ctx, d.stream, (size_t)1 << 60, &huge, &err), RT_ERR_NOMEM);
  assert_int_equal(huge, 0);
  if (!strstr(err.msg, "cuMemAlloc(1152921504606846976 bytes): ") ||
      !strstr(err.msg, "(CUDA_ERROR_OUT_OF_MEMORY)"))
    fail_msg("%s", err.msg);
  assert_int_equal(d.copy(d.ctx, d.stream, dy, dx, 0, RT_CU_D2D, &err), RT_OK);
  assert_int_equal(d.zero(d.ctx, d.stream, dy, 0, &err), RT_OK);
  d.free(d.ctx, dx);
  d.free(d.ctx, dy);
  d.free(d.ctx, dframe);
  d.free(d.ctx, dsum);
  d.free(d.ctx, dnone);
  d.free(d.ctx, 0);
  rt_cuda_unload(&d);
  assert_null(d.ctx);
  rt_cuda_unload(&d);

  /* A kernel the module lacks; a module that is no module. */
  const char *const wrong[] = {"saxpy", "nope"};
  assert_int_not_equal(rt_cuda_load(c, image, wrong, 2, &d, &err), RT_OK);
  if (!strstr(err.msg, "cuModuleGetFunction(nope): ")) fail_msg("%s", err.msg);
  RtBlob junk = {"not PTX at all", 14};
  assert_int_not_equal(rt_cuda_load(c, &junk, names, 1, &d, &err), RT_OK);
  if (!strstr(err.msg, "cuModuleLoadDataEx")) fail_msg("%s", err.msg);
  print_message("junk module: %s\n", err.msg);
  assert_int_equal(rt_cuda_load(c, NULL, names, 1, &d, &err), RT_ERR_ARG);
  /* A module left loaded is unloaded by close. */
  if (rt_cuda_load(c, image, names, 2, &d, &err)) fail_msg("%s", err.msg);
}

/* On a machine with a GPU: both kernels from a cubin and from PTX (which
 * the driver JIT-compiles). */
static void test_device(void **state) {
  (void)state;
  RtError err;
  RtCuda *c = NULL;
  if (rt_cuda_open(0, &c, &err) != RT_OK) {
    print_message("skipped: no device to run on (%s)\n", err.msg);
    skip();
  }
  need_nvrtc();
  fresh_cache("device");
  const char *arch = rt_cuda_arch(c);
  print_message("CUDA device 0: %s, %s, %zu MiB\n", rt_cuda_name(c), arch, rt_cuda_memory(c) >> 20);
  for (int cubin = 1; cubin >= 0; cubin--) {
    RtBlob image;
    if (rt_nvrtc_compile(kernels_src, "kernels.cu", arch, cubin, &image, &err) != RT_OK)
      fail_msg("%s: %s", arch, err.msg);
    RtCuDevice d;
    int rc = rt_cuda_load(c, &image, (const char *const[]){"saxpy"}, 1, &d, &err);
    /* A driver older than this NVRTC cannot JIT its PTX; that is the
     * machine's setup, not a fault here. */
    if (rc && !cubin && strstr(err.msg, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION")) {
      print_message("PTX not run: %s\n", err.msg);
      rt_blob_free(&image);
      continue;
    }
    if (rc) fail_msg("load (%s): %s", cubin ? "cubin" : "PTX", err.msg);
    rt_cuda_unload(&d);
    exercise(c, &image, NULL);
    /* Again on a non-blocking stream of the test's own (the context is
     * current on this thread since the load above). */
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    typedef int (*StreamCreateFn)(void **, unsigned);
    typedef int (*StreamDestroyFn)(void *);
    StreamCreateFn create = cuda ? (StreamCreateFn)(uintptr_t)dlsym(cuda, "cuStreamCreate") : NULL;
    StreamDestroyFn destroy =
        cuda ? (StreamDestroyFn)(uintptr_t)dlsym(cuda, "cuStreamDestroy_v2") : NULL;
    void *stream = NULL;
    if (!create || !destroy || create(&stream, 1 /* CU_STREAM_NON_BLOCKING */) != 0)
      fail_msg("cuStreamCreate failed");
    exercise(c, &image, stream);
    assert_int_equal(destroy(stream), 0);
    dlclose(cuda);
    rt_blob_free(&image);
  }
  rt_cuda_close(c);
}

/* A stand-in for libcuda.so.1, built at test time with the system's C
 * compiler: memory is host memory and a "module" (text starting //fake)
 * holds the two test kernels as C. It lets the driver layer run here,
 * without a GPU; fake_live() counts what is still allocated, loaded and
 * retained. */
static const char *const fake_driver[] = {
    "#include <stdint.h>",
    "#include <stdlib.h>",
    "#include <string.h>",
    "typedef unsigned long long P;",
    FAKE_DRIVER_STREAMS "static int allocs, mods, retained, ctx_obj;",
    "static void *current;",
    "int fake_live(void) { return allocs + mods + retained; }",
    "int cuInit(unsigned f) { return f ? 1 : 0; }",
    "int cuGetErrorString(int r, const char **s) {",
    "  *s = r == 1 ? \"invalid argument\" : r == 2 ? \"out of memory\" : r == 500 ?",
    "       \"named symbol not found\" : \"fake failure\";",
    "  return 0;",
    "}",
    "int cuGetErrorName(int r, const char **s) {",
    "  *s = r == 1 ? \"CUDA_ERROR_INVALID_VALUE\" : r == 2 ? \"CUDA_ERROR_OUT_OF_MEMORY\" :",
    "       r == 500 ? \"CUDA_ERROR_NOT_FOUND\" : \"CUDA_ERROR_INVALID_IMAGE\";",
    "  return 0;",
    "}",
    "int cuDeviceGetCount(int *n) { *n = 1; return 0; }",
    "int cuDeviceGet(int *d, int o) { *d = o; return o == 0 ? 0 : 101; }",
    "int cuDeviceGetName(char *b, int n, int d) { (void)d; strncpy(b, \"Fake GPU\", n); return 0; "
    "}",
    "int cuDeviceGetAttribute(int *v, int a, int d) {",
    "  (void)d; *v = a == 75 ? 9 : 0; return a == 75 || a == 76 ? 0 : 1;",
    "}",
    "int cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)1 << 30; return 0; }",
    "int cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = &ctx_obj; retained++; return 0; "
    "}",
    "int cuDevicePrimaryCtxRelease_v2(int d) { (void)d; retained--; return 0; }",
    "int cuCtxSetCurrent(void *c) { current = c; return 0; }",
    "int cuCtxSynchronize(void) { ctx_syncs++; return current == &ctx_obj ? 0 : 201; }",
    "int cuModuleLoadDataEx(void **m, const void *img, unsigned n, int *o, void **v) {",
    "  if (current != &ctx_obj) return 201;",
    "  if (strncmp(img, \"//fake\", 6) != 0) {",
    "    for (unsigned i = 0; i < n; i++)",
    "      if (o[i] == 5) strcpy(v[i], \"fake: no module here\\nsecond line\");",
    "    return 200;",
    "  }",
    "  *m = malloc(1); mods++; return 0;",
    "}",
    "int cuModuleUnload(void *m) { free(m); mods--; return 0; }",
    "int cuModuleGetFunction(void **f, void *m, const char *name) {",
    "  (void)m;",
    "  if (strcmp(name, \"saxpy\") == 0) *f = (void *)1;",
    "  else if (strcmp(name, \"block_sum\") == 0) *f = (void *)2;",
    "  else return 500;",
    "  return 0;",
    "}",
    "int cuMemAlloc_v2(P *p, size_t n) {",
    "  if (n == 0) return 1;",
    "  if (n > ((size_t)1 << 32)) return 2;",
    "  void *q = malloc(n); memset(q, 0xab, n); /* the caller must zero it */",
    "  *p = (P)(uintptr_t)q; allocs++; return 0;",
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
    "  seen(st);",
    "  if (bx > 1024 || gy != 1 || gz != 1 || by != 1 || bz != 1 || shm || e || !p)",
    "    return 1;",
    "  const long long *fr = (const long long *)(uintptr_t)*(P *)p[0];",
    "  long long n = fr[0];",
    "  const float *x = (const float *)(uintptr_t)fr[2];",
    "  float *y = (float *)(uintptr_t)fr[3], a;",
    "  int32_t bits = (int32_t)fr[1];",
    "  memcpy(&a, &bits, 4);",
    "  if (f == (void *)1) {",
    "    for (long long i = 0; i < n && i < (long long)gx * bx; i++) y[i] = a * x[i] + y[i];",
    "  } else {",
    "    float s = 0;",
    "    for (long long i = 0; i < n; i++) s += x[i];",
    "    *y = s;",
    "  }",
    "  return 0;",
    "}",
};

/* The child's side of test_fake_driver: rt_cuda_open finds the fake. */
static void test_fake_device(void **state) {
  (void)state;
  RtError err;
  RtCuda *c = NULL;
  if (rt_cuda_open(0, &c, &err) != RT_OK) fail_msg("rt_cuda_open: %s", err.msg);
  assert_string_equal(rt_cuda_name(c), "Fake GPU");
  assert_string_equal(rt_cuda_arch(c), "sm_90");
  assert_int_equal(rt_cuda_memory(c), (size_t)1 << 30);
  RtCuda *c2 = (RtCuda *)1;
  assert_int_equal(rt_cuda_open(1, &c2, &err), RT_ERR_ARG);
  assert_null(c2);
  if (!strstr(err.msg, "CUDA device 1 does not exist (1 device)")) fail_msg("%s", err.msg);
  char text[] = "//fake module";
  RtBlob image = {text, strlen(text)};
  void *lib = dlopen(getenv("SEQ_CUDA_DRIVER_LIB"), RTLD_NOW | RTLD_NOLOAD);
  assert_non_null(lib);
  void (*want)(void *) = (void (*)(void *))(uintptr_t)dlsym(lib, "fake_want_stream");
  int (*misses)(void) = (int (*)(void))(uintptr_t)dlsym(lib, "fake_stream_misses");
  int (*ctx_syncs)(void) = (int (*)(void))(uintptr_t)dlsym(lib, "fake_ctx_syncs");
  assert_true(want && misses && ctx_syncs);
  /* On the default stream, then on a stream of the caller's: every copy,
   * fill and launch is given that stream, and sync waits for it alone. */
  want(NULL);
  exercise(c, &image, NULL);
  assert_int_equal(misses(), 0);
  assert_true(ctx_syncs() > 0);
  static char stream_obj;
  want(&stream_obj);
  exercise(c, &image, &stream_obj);
  assert_int_equal(misses(), 0);
  assert_int_equal(ctx_syncs(), 0);
  rt_cuda_close(c);
  /* Nothing left: every allocation freed, modules unloaded, context released. */
  int (*live)(void) = (int (*)(void))(uintptr_t)dlsym(lib, "fake_live");
  assert_non_null(live);
  assert_int_equal(live(), 0);
  dlclose(lib);
}

static void test_fake_driver(void **state) {
  (void)state;
  char src[600], so[600], cmd[2048];
  snprintf(src, sizeof src, "%s/fakecuda.c", tu_tmpdir());
  snprintf(so, sizeof so, "%s/libfakecuda.so.1", tu_tmpdir());
  FILE *f = fopen(src, "w");
  assert_non_null(f);
  for (size_t i = 0; i < sizeof fake_driver / sizeof fake_driver[0]; i++)
    fprintf(f, "%s\n", fake_driver[i]);
  assert_int_equal(fclose(f), 0);
  char *out = NULL;
  snprintf(cmd, sizeof cmd, "cc -std=c11 -shared -fPIC -o '%s' '%s'", so, src);
  if (tu_run(cmd, &out) != 0) {
    print_message("skipped: no C compiler to build the fake driver (%s)\n", out ? out : "");
    free(out);
    skip();
  }
  free(out);
  char env[700];
  snprintf(env, sizeof env, "SEQ_CUDA_DRIVER_LIB=%s", so);
  out = probe(env, "--fake-device");
  if (!strstr(out, "[  PASSED  ] 1 test(s).")) fail_msg("fake driver:\n%s", out);
  free(out);
}

/* The child's side of probe(): what the lookups give under its environment. */
static int run_probe(void) {
  RtError err;
  int major, minor;
  int rc = rt_nvrtc_version(&major, &minor, &err);
  printf("version %d %s\n", rc != 0, rc ? err.msg : "ok");
  RtBlob b;
  rc = rt_nvrtc_compile(kernels_src, "k.cu", "sm_80", 0, &b, &err);
  printf("compile %d %s\n", rc != 0, rc ? err.msg : "ok");
  if (!rc) rt_blob_free(&b);
  RtCuda *c;
  rc = rt_cuda_open(0, &c, &err);
  printf("driver %d %s\n", rc != 0, rc ? err.msg : rt_cuda_name(c));
  if (!rc) rt_cuda_close(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--probe") == 0) return run_probe();
  if (argc > 1 && strcmp(argv[1], "--fake-device") == 0) {
    const struct CMUnitTest fake[] = {cmocka_unit_test(test_fake_device)};
    return cmocka_run_group_tests(fake, NULL, NULL);
  }
  /* Nothing a test does may reach the user's own cache. */
  setenv("SEQ_CUDA_CACHE", "off", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version),       cmocka_unit_test(test_compile),
      cmocka_unit_test(test_cache_hits),    cmocka_unit_test(test_cache_heals),
      cmocka_unit_test(test_cache_threads), cmocka_unit_test(test_cache_unwritable),
      cmocka_unit_test(test_cache_dir),     cmocka_unit_test(test_compile_error),
      cmocka_unit_test(test_bad_args),      cmocka_unit_test(test_nvrtc_not_found),
      cmocka_unit_test(test_driver_absent), cmocka_unit_test(test_fake_driver),
      cmocka_unit_test(test_device),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
