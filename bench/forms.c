/* forms.c - one std cell, sequential against another --strategy (auto by
 * default), in paired rounds: per round one timed forward of each, back to
 * back, on the same seeded weights and inputs (the machine's speed drifts
 * within minutes, so each round's ratio is what is compared). Prints one
 * line: the medians of each side's times, the range, and the median of the
 * per-round ratios sequential / other. BASE and BASE_THREADS replace the
 * first side (--strategy=sequential on THREADS threads): scan on 1 thread
 * against scan on 2 measures what a second core adds to one form. STRATEGY
 * newton-dense is newton with dense Jacobians formed whole
 * (SeqOptions.newton_dense); newton-warm is newton with warm starts
 * (SeqOptions.newton_warm: each forward starts from the last one's
 * trajectory) on the same input every round, newton-drift the same with the
 * input moved by 1% of its scale before each of that side's forwards (as
 * successive nearby inputs would). FORMS_FTZ=1 sets flush-to-zero and
 * denormals-are-zero in the calling thread first (x86-64), which every
 * thread of a call then runs under (docs/abi.md, Threads).
 * usage: forms FILE.seq DIMS B T THREADS ROUNDS [STRATEGY [BASE BASE_THREADS]] */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "seq.h"

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

typedef struct Run {
  SeqModule *m;
  void **in;
  float **out;
  int drift;     /* move the inputs before each forward */
  int64_t numel; /* of the first input */
} Run;

/* Compiles and binds; weights from the shared generator state reset per module. */
static int open_run(SeqContext *cx, Run *r, const char *file, const char *dims, int threads,
                    const char *strategy, int64_t B, int64_t T) {
  int dense = strcmp(strategy, "newton-dense") == 0;
  int warm = strcmp(strategy, "newton-warm") == 0 || strcmp(strategy, "newton-drift") == 0;
  r->drift = strcmp(strategy, "newton-drift") == 0;
  SeqOptions o = {.opt_level = 2,
                  .dims = dims,
                  .num_threads = threads,
                  .strategy = dense || warm ? "newton" : strategy,
                  .batch = (long)B,
                  .newton_dense = dense,
                  .newton_warm = warm};
  if (seq_module_from_file(cx, file, &o, &r->m) != SEQ_OK) {
    fprintf(stderr, "%s (%s): %s\n", file, strategy, seq_module_error(r->m));
    return -1;
  }
  rng = 0x2545f4914f6cdd1dull;
  int np = seq_module_count(r->m, SEQ_PARAM), ni = seq_module_count(r->m, SEQ_INPUT),
      no = seq_module_count(r->m, SEQ_OUTPUT);
  for (int i = 0; i < np; i++) {
    SeqTensorInfo ti;
    seq_module_info(r->m, SEQ_PARAM, i, &ti);
    float *w = malloc(sizeof(float) * (size_t)(ti.numel + 1));
    float k = ti.ndim ? 1.0f / sqrtf((float)ti.shape[ti.ndim - 1]) : 1.0f;
    for (int64_t j = 0; j < ti.numel; j++) w[j] = k * uniform();
    /* Stable recurrences (docs/stdlib.md): decays and eigenvalues negative. */
    if (strcmp(ti.name, "Lambda_re") == 0 || strcmp(ti.name, "decay") == 0)
      for (int64_t j = 0; j < ti.numel; j++) w[j] = -fabsf(w[j]);
    seq_module_bind_weight(r->m, ti.name, w, ti.numel); /* kept for the process's life */
  }
  r->in = calloc((size_t)ni + 1, sizeof *r->in);
  r->out = calloc((size_t)no + 1, sizeof *r->out);
  for (int i = 0; i < ni; i++) {
    SeqTensorInfo ti;
    seq_module_info(r->m, SEQ_INPUT, i, &ti);
    int64_t n = B * T * ti.numel;
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t j = 0; j < n; j++) x[j] = uniform();
    r->in[i] = x;
    if (i == 0) r->numel = n;
  }
  for (int i = 0; i < no; i++) {
    SeqTensorInfo ti;
    seq_module_info(r->m, SEQ_OUTPUT, i, &ti);
    r->out[i] = malloc(sizeof(float) * (size_t)(B * T * ti.numel));
  }
  return 0;
}

static double time_one(Run *r, int64_t B, int64_t T) {
  if (r->drift)
    for (int64_t j = 0; j < r->numel; j++) ((float *)r->in[0])[j] += 0.01f * uniform();
  double s = now();
  if (seq_module_forward(r->m, B, T, (const void *const *)r->in, NULL, NULL, r->out, NULL) !=
      SEQ_OK) {
    fprintf(stderr, "forward failed: %s\n", seq_module_error(r->m));
    exit(1);
  }
  return now() - s;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr,
            "usage: forms FILE.seq DIMS B T THREADS ROUNDS [STRATEGY [BASE BASE_THREADS]]\n");
    return 2;
  }
  const char *file = argv[1], *dims = argv[2], *other = argc > 7 ? argv[7] : "auto";
  const char *base = argc > 9 ? argv[8] : "sequential";
  int64_t B = atoll(argv[3]), T = atoll(argv[4]);
  int threads = atoi(argv[5]), rounds = atoi(argv[6]);
#if defined(__x86_64__)
  if (getenv("FORMS_FTZ") && atoi(getenv("FORMS_FTZ")))
    __builtin_ia32_ldmxcsr(__builtin_ia32_stmxcsr() | 0x8040);
#endif
  int base_threads = argc > 9 ? atoi(argv[9]) : threads;
  SeqContext *cx = seq_context_create();
  Run seq, oth;
  if (open_run(cx, &seq, file, dims, base_threads, base, B, T) ||
      open_run(cx, &oth, file, dims, threads, other, B, T))
    return 1;
  time_one(&seq, B, T); /* warm-up: page faults, packed weights */
  time_one(&oth, B, T);
  /* The other side's Newton solves only (the base may solve too). */
  SeqNewtonStats ns = {0}, one;
  double *ts = calloc((size_t)rounds, sizeof *ts), *to = calloc((size_t)rounds, sizeof *to),
         *ratio = calloc((size_t)rounds, sizeof *ratio);
  for (int k = 0; k < rounds; k++) {
    ts[k] = time_one(&seq, B, T);
    seq_newton_stats(NULL, 1);
    to[k] = time_one(&oth, B, T);
    seq_newton_stats(&one, 1);
    ns.solves += one.solves, ns.fallbacks += one.fallbacks, ns.iterations += one.iterations;
    ns.damped += one.damped, ns.warm_starts += one.warm_starts;
    ns.max_iter = one.max_iter > ns.max_iter ? one.max_iter : ns.max_iter;
    ratio[k] = ts[k] / to[k];
  }
  qsort(ts, (size_t)rounds, sizeof *ts, cmp);
  qsort(to, (size_t)rounds, sizeof *to, cmp);
  qsort(ratio, (size_t)rounds, sizeof *ratio, cmp);
  if (argc > 9) printf("base %s on %d threads: ", base, base_threads);
  printf("forms %s B=%lld T=%lld threads=%d sequential_ms=%.1f [%.1f-%.1f] %s_ms=%.1f [%.1f-%.1f] "
         "seq_tokens_per_s=%.0f %s_tokens_per_s=%.0f ratio=%.2f\n",
         file, (long long)B, (long long)T, threads, ts[rounds / 2] * 1e3, ts[0] * 1e3,
         ts[rounds - 1] * 1e3, other, to[rounds / 2] * 1e3, to[0] * 1e3, to[rounds - 1] * 1e3,
         (double)(B * T) / ts[rounds / 2], other, (double)(B * T) / to[rounds / 2],
         ratio[rounds / 2]);
  /* Newton solves (the other side's): iterations and fallbacks. */
  if (ns.solves)
    printf("newton solves=%lld fallbacks=%lld iterations_mean=%.2f iterations_max=%d damped=%lld "
           "warm=%lld\n",
           (long long)ns.solves, (long long)ns.fallbacks,
           ns.solves > ns.fallbacks ? (double)ns.iterations / (double)(ns.solves - ns.fallbacks)
                                    : 0.0,
           ns.max_iter, (long long)ns.damped, (long long)ns.warm_starts);
  seq_module_destroy(seq.m);
  seq_module_destroy(oth.m);
  seq_context_destroy(cx);
  return 0;
}
