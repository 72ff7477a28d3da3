/* bench_aot.c - forward time of an ahead-of-time compiled .so (seqc FILE.seq
 * -o libNAME.so), loaded with dlopen: no LLVM needed where it runs, so the
 * same measurement works on any x86-64 Linux machine. Threads come from
 * $SEQ_NUM_THREADS, read by the .so's runtime. Weights are a blob of small
 * deterministic values; inputs in [-1, 1].
 * usage: bench_aot LIB.so SYMBOL PARAM_FLOATS IN_WIDTH OUT_WIDTH T REPS B...
 * prints: "<SYMBOL> threads=N B=b forward_ms=<median> reps=n" per B. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int32_t (*ForwardBlob)(const float *blob, int64_t blob_floats, int64_t B, int64_t T,
                               const void *in, const int32_t *lengths, const void *state_in,
                               void *out, void *state_out);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 9) {
    fprintf(stderr, "usage: %s LIB.so SYMBOL PARAM_FLOATS IN_WIDTH OUT_WIDTH T REPS B...\n",
            argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  char sym[256];
  snprintf(sym, sizeof sym, "%s_forward_blob", argv[2]);
  ForwardBlob fwd;
  *(void **)&fwd = dlsym(lib, sym);
  if (!fwd) {
    fprintf(stderr, "dlsym %s: %s\n", sym, dlerror());
    return 1;
  }
  int64_t nparam = atoll(argv[3]), in_w = atoll(argv[4]), out_w = atoll(argv[5]);
  int64_t T = atoll(argv[6]);
  int reps = atoi(argv[7]);
  if (reps < 1 || reps > 100) reps = 5;
  float *blob = malloc(sizeof(float) * (size_t)nparam);
  if (!blob) return 1;
  for (int64_t k = 0; k < nparam; k++) blob[k] = (float)((k * 7919 % 1000) / 1000.0 - 0.5) * 0.1f;
  const char *threads = getenv("SEQ_NUM_THREADS");
  for (int a = 8; a < argc; a++) {
    int64_t B = atoll(argv[a]);
    float *x = malloc(sizeof(float) * (size_t)(B * T * in_w));
    float *y = malloc(sizeof(float) * (size_t)(B * T * out_w));
    if (!x || !y) return 1;
    for (int64_t k = 0; k < B * T * in_w; k++) x[k] = (float)((k * 104729 % 2001) / 1000.0 - 1.0);
    const float *ins[1] = {x};
    float *outs[1] = {y};
    double times[100];
    for (int r = -1; r < reps; r++) {
      double s = now();
      int32_t st = fwd(blob, nparam, B, T, ins, NULL, NULL, outs, NULL);
      if (st != 0) {
        fprintf(stderr, "%s returned %d\n", sym, st);
        return 1;
      }
      if (r >= 0) times[r] = now() - s;
    }
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    printf("%s threads=%s B=%lld forward_ms=%.2f reps=%d\n", argv[2], threads ? threads : "1",
           (long long)B, times[reps / 2] * 1e3, reps);
    fflush(stdout);
    free(x);
    free(y);
  }
  free(blob);
  dlclose(lib);
  return 0;
}
