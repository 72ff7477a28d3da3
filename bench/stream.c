/* stream.c - this machine's memory bandwidth, measured: the STREAM triad
 * a[i] = b[i] + s * c[i] over arrays far larger than the last-level cache,
 * and the read bandwidth of a buffer that stays in each core's L2, with one
 * thread and more. The chunked and scanned CPU forms are bound by one or the
 * other, so their GB/s are judged against these two numbers.
 *
 * usage: stream [MAX_THREADS [ARRAY_MIB [L2_KIB]]]
 *   MAX_THREADS  1..N threads are measured (default 2)
 *   ARRAY_MIB    size of each of the three triad arrays (default 256)
 *   L2_KIB       each thread's read buffer (default: half the L2 that
 *                sysconf reports, at most 1024; see l2_buffer_bytes)
 * Prints "stream triad threads=N GB/s=..." and "l2 read threads=N GB/s=..."
 * lines: the median of REPS timed repetitions after a warm-up, with the
 * fastest and slowest repetition beside it.
 * build: gcc -O3 -march=native -pthread bench/stream.c -o stream */
#define _GNU_SOURCE /* pthread_setaffinity_np, CPU_SET */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

enum { REPS = 10, MAX_THREADS = 64 };

/* The L2 pass reads this much per thread per repetition, whatever the
 * buffer size, so a repetition lasts long enough (tens of milliseconds) for
 * the clock's resolution and the barrier's cost not to matter. */
#define L2_BYTES_PER_REP (512.0 * 1024 * 1024)

/* The read loop sums with eight independent vector accumulators: eight
 * chains of adds cover add latency on two ports, so the loop is bound by the
 * loads, not by one chain of dependent adds (a plain float loop would not be
 * vectorized at all without -ffast-math: the reordering changes rounding).
 * The vector is the widest the target has: GCC lowers a wider one through
 * the stack, which measures store forwarding instead. may_alias: the buffer
 * is written as floats and read as vectors. */
#if defined(__AVX512F__)
#define VEC_BYTES 64
#elif defined(__AVX__)
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif
typedef float vf __attribute__((vector_size(VEC_BYTES), may_alias));
enum { VF_FLOATS = VEC_BYTES / sizeof(float), CHAINS = 8 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

typedef struct Shared {
  int nthreads;
  size_t n;         /* triad elements, all threads together */
  size_t l2_floats; /* each thread's read buffer */
  float *a, *b, *c; /* the triad arrays, allocated but untouched */
  pthread_barrier_t barrier;
  double triad_s[REPS]; /* times of thread 0, which waits for all */
  double l2_s[REPS];
  int bad; /* a triad result that does not check */
} Shared;

typedef struct Worker {
  Shared *sh;
  int id;
  float sink; /* the L2 sums: stored where other threads could see them, so
                 the compiler must compute them */
} Worker;

static void triad(float *restrict a, const float *restrict b, const float *restrict c, float s,
                  size_t n) {
  for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}

static float sum_buffer(const float *buf, size_t nfloats) {
  const vf *p = (const vf *)buf;
  size_t nv = nfloats / VF_FLOATS;
  /* Named accumulators rather than an array, so that they live in registers. */
  vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
  for (size_t i = 0; i + CHAINS <= nv; i += CHAINS) {
    a0 += p[i];
    a1 += p[i + 1];
    a2 += p[i + 2];
    a3 += p[i + 3];
    a4 += p[i + 4];
    a5 += p[i + 5];
    a6 += p[i + 6];
    a7 += p[i + 7];
  }
  vf acc = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
  float total = 0;
  for (int j = 0; j < VF_FLOATS; j++) total += acc[j];
  return total;
}

/* Thread 0's view of one repetition: all threads start together at the
 * first barrier and the time runs until the last one reaches the second, so
 * the bandwidth is that of the slowest thread, as a parallel kernel sees it. */
static double timed(Worker *w, void (*body)(Worker *)) {
  pthread_barrier_wait(&w->sh->barrier);
  double t0 = now();
  body(w);
  pthread_barrier_wait(&w->sh->barrier);
  return now() - t0;
}

static void slice(const Worker *w, size_t *lo, size_t *hi) {
  size_t n = w->sh->n, per = n / (size_t)w->sh->nthreads;
  *lo = per * (size_t)w->id;
  *hi = w->id == w->sh->nthreads - 1 ? n : *lo + per;
}

static void triad_body(Worker *w) {
  size_t lo, hi;
  slice(w, &lo, &hi);
  triad(w->sh->a + lo, w->sh->b + lo, w->sh->c + lo, 3.0f, hi - lo);
}

static float *l2_buf_of[MAX_THREADS];

static long l2_passes(size_t l2_floats) {
  return (long)(L2_BYTES_PER_REP / (double)(l2_floats * sizeof(float)));
}

static void l2_body(Worker *w) {
  long passes = l2_passes(w->sh->l2_floats);
  for (long p = 0; p < passes; p++) w->sink += sum_buffer(l2_buf_of[w->id], w->sh->l2_floats);
}

static void *worker_main(void *arg) {
  Worker *w = arg;
  Shared *sh = w->sh;
  /* One thread per CPU: on a two-vCPU guest an unpinned pair can land on
   * the same CPU for a while and measure half the machine. */
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(w->id % (int)sysconf(_SC_NPROCESSORS_ONLN), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);

  /* First touch from the thread that will use the pages: the kernel places
   * a page on the memory node of the CPU that first writes it. */
  size_t lo, hi;
  slice(w, &lo, &hi);
  for (size_t i = lo; i < hi; i++) {
    sh->a[i] = 0.0f;
    sh->b[i] = 1.0f + (float)(i & 7);
    sh->c[i] = 2.0f;
  }
  for (int r = -1; r < REPS; r++) { /* r = -1 warms up */
    double t = timed(w, triad_body);
    if (w->id == 0 && r >= 0) sh->triad_s[r] = t;
  }
  for (size_t i = lo; i < hi; i++)
    if (sh->a[i] != sh->b[i] + 3.0f * sh->c[i]) sh->bad = 1;

  float *buf = aligned_alloc(64, sh->l2_floats * sizeof(float));
  if (!buf) {
    fprintf(stderr, "stream: out of memory\n");
    exit(1);
  }
  for (size_t i = 0; i < sh->l2_floats; i++) buf[i] = (float)(i & 15);
  l2_buf_of[w->id] = buf;
  for (int r = -1; r < REPS; r++) {
    double t = timed(w, l2_body);
    if (w->id == 0 && r >= 0) sh->l2_s[r] = t;
  }
  free(buf);
  return NULL;
}

/* The median repetition and the range, as GB/s (1e9 bytes per second);
 * times must be sorted. */
static void report(const char *what, int nthreads, double bytes, const double *times,
                   const char *extra) {
  printf("%s threads=%d GB/s=%.1f (min %.1f, max %.1f over %d reps)%s\n", what, nthreads,
         bytes / times[REPS / 2] * 1e-9, bytes / times[REPS - 1] * 1e-9, bytes / times[0] * 1e-9,
         REPS, extra);
}

/* Half the L2: the other half is left to the stack, the page tables and
 * whatever else the core touches, so the buffer is not evicted to L3 between
 * passes. Capped at 1 MiB, which is half of a 2 MiB L2 (Intel server cores);
 * on a core with a smaller L2, 1 MiB would measure the L3 instead. */
static size_t l2_buffer_bytes(void) {
  long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  size_t want = l2 > 0 ? (size_t)l2 / 2 : 1u << 20;
  return want > (1u << 20) ? 1u << 20 : want;
}

int main(int argc, char **argv) {
  int max_threads = argc > 1 ? atoi(argv[1]) : 2;
  long array_mib = argc > 2 ? atol(argv[2]) : 256;
  long l2_kib = argc > 3 ? atol(argv[3]) : 0;
  if (max_threads < 1 || max_threads > MAX_THREADS || array_mib < 1 || l2_kib < 0) {
    fprintf(stderr, "usage: stream [MAX_THREADS [ARRAY_MIB [L2_KIB]]]\n");
    return 2;
  }
  size_t n = (size_t)array_mib << 20 >> 2;
  size_t l2_bytes = l2_kib ? (size_t)l2_kib << 10 : l2_buffer_bytes();
  /* Whole groups of accumulators, so no tail loop disturbs the count. */
  size_t l2_floats = l2_bytes / sizeof(float) / (CHAINS * VF_FLOATS) * (CHAINS * VF_FLOATS);
  if (l2_floats == 0) {
    fprintf(stderr, "stream: L2 buffer too small\n");
    return 2;
  }
  printf("stream: triad arrays 3 x %ld MiB, L2 read buffer %zu KiB per thread (sysconf L2 %ld "
         "KiB, L3 %ld KiB), %d reps\n",
         array_mib, l2_floats * sizeof(float) >> 10, sysconf(_SC_LEVEL2_CACHE_SIZE) >> 10,
         sysconf(_SC_LEVEL3_CACHE_SIZE) >> 10, REPS);

  for (int nt = 1; nt <= max_threads; nt++) {
    Shared sh = {.nthreads = nt, .n = n, .l2_floats = l2_floats};
    /* Fresh arrays for each thread count: malloc of this size maps new,
     * untouched pages, so the first touch above is each thread's own. */
    sh.a = malloc(n * sizeof(float));
    sh.b = malloc(n * sizeof(float));
    sh.c = malloc(n * sizeof(float));
    if (!sh.a || !sh.b || !sh.c) {
      fprintf(stderr, "stream: out of memory for 3 x %ld MiB\n", array_mib);
      return 1;
    }
    pthread_barrier_init(&sh.barrier, NULL, (unsigned)nt);
    Worker workers[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    for (int i = 0; i < nt; i++) {
      workers[i] = (Worker){.sh = &sh, .id = i};
      if (pthread_create(&tids[i], NULL, worker_main, &workers[i])) {
        fprintf(stderr, "stream: pthread_create failed\n");
        return 1;
      }
    }
    for (int i = 0; i < nt; i++) pthread_join(tids[i], NULL);
    pthread_barrier_destroy(&sh.barrier);
    free(sh.a);
    free(sh.b);
    free(sh.c);
    if (sh.bad) {
      fprintf(stderr, "stream: triad result wrong\n");
      return 1;
    }
    /* STREAM's count: b and c read, a written, 3 x 4 bytes per element. The
     * store also reads a's line into the cache first (write-allocate), so
     * the memory moves 4 x 4 bytes; like STREAM, no correction is made for
     * it, and the true traffic is 4/3 of the figure printed. */
    qsort(sh.triad_s, REPS, sizeof sh.triad_s[0], cmp_double);
    qsort(sh.l2_s, REPS, sizeof sh.l2_s[0], cmp_double);
    report("stream triad", nt, 3.0 * sizeof(float) * (double)n, sh.triad_s, "");
    double l2_total =
        (double)nt * (double)l2_passes(l2_floats) * (double)(l2_floats * sizeof(float));
    char extra[96];
    snprintf(extra, sizeof extra, " buffer_kib=%zu per_thread_GB/s=%.1f",
             l2_floats * sizeof(float) >> 10, l2_total / nt / sh.l2_s[REPS / 2] * 1e-9);
    report("l2 read", nt, l2_total, sh.l2_s, extra);
  }
  return 0;
}
