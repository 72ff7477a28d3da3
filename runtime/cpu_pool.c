/* cpu_pool.c - a small pthread pool for generated code.
 *
 * Generated recurrences hand the pool one GEMM per time step, a few
 * microseconds of work, a thousand times in a row. A condition-variable
 * wake-up costs about as much as the work, so workers spin on a generation
 * counter for a while before they sleep; the caller runs part 0 itself and
 * spins until the others are done. Parts are claimed one at a time from a
 * shared word (the job's number and its next part) so a slow worker does not
 * hold the rest back.
 */
#include "runtime/rt_cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#else
#include <fenv.h>
#endif

/* The floating-point controls a job runs under: its caller's, on every
 * thread (flush-to-zero and denormals-are-zero, as a host that set them
 * expects of the whole call, and the rounding mode). Without this a batch
 * split across the pool flushed subnormals in the caller's slices and kept
 * them in the workers', so the numbers depended on the thread count. x86-64:
 * MXCSR, which SSE and AVX arithmetic obey (a few cycles to read or set);
 * elsewhere the C environment (AArch64's FPCR has flush-to-zero). */
#if defined(__x86_64__) || defined(__i386__)
typedef unsigned FpControls;
static FpControls fp_get(void) {
  /* The status flags (exceptions raised) are the thread's own: not handed on. */
  return _mm_getcsr() & ~0x3fu;
}
static void fp_set(FpControls c) {
  _mm_setcsr(c);
}
#else
typedef fenv_t FpControls;
static FpControls fp_get(void) {
  fenv_t e;
  fegetenv(&e);
  return e;
}
static void fp_set(FpControls c) {
  fesetenv(&c);
}
#endif

/* About 50 us of spinning: enough to bridge the elementwise work between
 * two steps' GEMMs, or between a time chunk's stages at B = 1, short enough
 * that a spinning worker does not take many time slices from the caller
 * when the machine has no idle core. Measured in time, not in loads: 20000
 * loads were 20-40 us on the AMD guest this was first tuned on and 5 us on
 * a 3.7 GHz Xeon, where workers then slept between a chunk's stages and
 * every stage paid a wake-up (two threads ran GLA, mLSTM and DeltaNet at
 * B = 1 no faster than one; 1.2-1.5x faster spinning 50 us). */
#define SPIN_NS 50000
/* Loads between two looks at the clock. */
#define SPIN_BURST 1024

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct Pool {
  pthread_mutex_t lock; /* guards sleeping and the worker list */
  pthread_cond_t wake;
  pthread_mutex_t call_lock; /* one parallel_for at a time */
  int nworkers;              /* started worker threads */
  int nthreads;              /* threads in effect, caller included */
  int configured;
  atomic_uint generation; /* bumped for every job, and to stop the workers */
  atomic_int stop;        /* set once, when the code holding the pool is unloaded */
  atomic_int sleepers;    /* workers in (or entering) pthread_cond_wait */
  /* The claim word: the job's number in the high 32 bits, its next unclaimed
   * part in the low 32 (PARKED while the job is being described). A part is
   * claimed by a compare-and-swap of the whole word, so a worker that fell
   * behind (still in the loop of a finished job) cannot take a part of the
   * next one, nor read the next one's count against a part number of its
   * own: that once ran a part twice, let the caller go on while one still
   * ran, and gave wrong numbers (two threads, a sliced scan, a loaded
   * machine). */
  _Atomic uint64_t claim;
  atomic_int parts_done;
  int nparts;
  void (*fn)(void *, int);
  void *ctx;
  FpControls fp; /* the caller's (fp_get) */
  pthread_t threads[RT_CPU_MAX_THREADS];
} Pool;

static Pool pool = {.lock = PTHREAD_MUTEX_INITIALIZER,
                    .wake = PTHREAD_COND_INITIALIZER,
                    .call_lock = PTHREAD_MUTEX_INITIALIZER};

/* Set while this thread runs a part of a parallel_for: a part that asks for
 * the pool again (a batch slice of a forward call whose GEMMs would split
 * across threads) runs its inner parts itself instead of waiting for the
 * pool that it is part of. A thread-specific key, not a _Thread_local: an
 * AOT library links this runtime in and is loaded with dlopen, where a
 * thread-local is dynamic TLS, which the leak checkers walk at exit and
 * which LeakSanitizer (GCC 12's) once read as a garbage range and crashed
 * on. Without a key (none left in the process) every parallel_for runs on
 * its calling thread: slower, never wrong. */
static pthread_key_t part_key;
static pthread_once_t part_once = PTHREAD_ONCE_INIT;
static int part_key_ok;

static void part_key_make(void) {
  part_key_ok = pthread_key_create(&part_key, NULL) == 0;
}

static int get_in_part(void) {
  pthread_once(&part_once, part_key_make);
  return !part_key_ok || pthread_getspecific(part_key) != NULL;
}

static void set_in_part(int on) {
  if (part_key_ok) pthread_setspecific(part_key, on ? &part_key : NULL);
}

int rt_cpu_in_parallel(void) {
  return get_in_part();
}

#define PARKED 0xffffffffu

/* worker: a pool thread, which takes the caller's floating-point controls
 * for the job's parts. */
static void run_parts(int worker) {
  int outer = get_in_part();
  set_in_part(1);
  uint64_t v = atomic_load(&pool.claim);
  uint32_t job = (uint32_t)(v >> 32);
  uint32_t n = (uint32_t)pool.nparts;
  void (*fn)(void *, int) = pool.fn;
  void *ctx = pool.ctx;
  FpControls fp = pool.fp;
  /* Those are this job's if its number still stands: a caller renumbers the
   * word (parked) before it rewrites them, and publishes it after. */
  if ((uint32_t)(atomic_load(&pool.claim) >> 32) == job && (uint32_t)(v >> 32) == job &&
      (uint32_t)v < n) {
    FpControls own = fp;
    if (worker) own = fp_get(), fp_set(fp);
    while ((uint32_t)(v >> 32) == job && (uint32_t)v < n) {
      if (!atomic_compare_exchange_weak(&pool.claim, &v, v + 1)) continue; /* v reloaded */
      fn(ctx, (int)(uint32_t)v);
      atomic_fetch_add(&pool.parts_done, 1);
      v = atomic_load(&pool.claim);
    }
    if (worker) fp_set(own);
  }
  set_in_part(outer);
}

static void *worker(void *arg) {
  (void)arg;
  unsigned seen = atomic_load(&pool.generation);
  for (;;) {
    /* Also before sleeping: a worker that starts only after the pool was
     * stopped has the stop's generation as its first. */
    if (atomic_load(&pool.stop)) return NULL;
    unsigned g = atomic_load(&pool.generation);
    for (int64_t t0 = now_ns(); g == seen && now_ns() - t0 < SPIN_NS;)
      for (int k = 0; k < SPIN_BURST && (g = atomic_load(&pool.generation)) == seen; k++) {
      }
    if (g == seen) {
      /* Counted as a sleeper before the last look at the generation, so a
       * caller that bumps it afterwards sees the count and broadcasts. */
      pthread_mutex_lock(&pool.lock);
      atomic_fetch_add(&pool.sleepers, 1);
      while ((g = atomic_load(&pool.generation)) == seen && !atomic_load(&pool.stop))
        pthread_cond_wait(&pool.wake, &pool.lock);
      atomic_fetch_sub(&pool.sleepers, 1);
      pthread_mutex_unlock(&pool.lock);
    }
    if (atomic_load(&pool.stop)) return NULL;
    seen = g;
    run_parts(1);
  }
}

/* The workers end with the code that holds the pool. Every copy of this
 * runtime has a pool of its own: an AOT library links one in, and a host
 * that dlcloses the library unmaps the code its workers spin or sleep in
 * (they crashed there, or the leak checker that walks every thread at exit
 * did: LeakSanitizer's tracer read the dead threads' dynamic TLS). So the
 * library's destructor, which runs at dlclose and at exit, stops them and
 * waits for them. A worker in the middle of a part finishes it first; one
 * between jobs claims nothing, as the claim word is spent. */
__attribute__((destructor)) static void pool_stop(void) {
  pthread_mutex_lock(&pool.lock);
  int n = pool.nworkers;
  atomic_store(&pool.stop, 1);
  atomic_fetch_add(&pool.generation, 1);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  for (int i = 0; i < n; i++) pthread_join(pool.threads[i], NULL);
  if (part_key_ok) pthread_key_delete(part_key);
}

/* The thread count has its own lock: a forward pass holds call_lock for its
 * whole duration, and other host threads must still be able to read or set
 * the count meanwhile. */
static pthread_mutex_t conf_lock = PTHREAD_MUTEX_INITIALIZER;

static int clamp_threads(int n) {
  return n < 1 ? 1 : n > RT_CPU_MAX_THREADS ? RT_CPU_MAX_THREADS : n;
}

int rt_cpu_set_num_threads(int n) {
  pthread_mutex_lock(&conf_lock);
  pool.configured = 1;
  pool.nthreads = clamp_threads(n);
  n = pool.nthreads;
  pthread_mutex_unlock(&conf_lock);
  return n;
}

int rt_cpu_get_num_threads(void) {
  pthread_mutex_lock(&conf_lock);
  if (!pool.configured) {
    pool.configured = 1;
    const char *env = getenv("SEQ_NUM_THREADS");
    pool.nthreads = clamp_threads(env ? atoi(env) : 1);
  }
  int n = pool.nthreads;
  pthread_mutex_unlock(&conf_lock);
  return n;
}

/* Runs the n parts on the calling thread, marked as a part so that what they
 * ask of the pool runs there too. */
static void run_inline(int n, void (*fn)(void *ctx, int i), void *ctx) {
  int outer = get_in_part();
  set_in_part(1);
  for (int i = 0; i < n; i++) fn(ctx, i);
  set_in_part(outer);
}

static void run_locked(int n, void (*fn)(void *ctx, int i), void *ctx);

void rt_cpu_parallel_for(int n, void (*fn)(void *ctx, int i), void *ctx) {
  if (n <= 0) return;
  if (get_in_part()) { /* nested: this thread is one of the pool's already */
    for (int i = 0; i < n; i++) fn(ctx, i);
    return;
  }
  pthread_mutex_lock(&pool.call_lock);
  run_locked(n, fn, ctx);
}

int rt_cpu_parallel_for_nowait(int n, void (*fn)(void *ctx, int i), void *ctx) {
  if (n <= 0) return 0;
  if (get_in_part() || pthread_mutex_trylock(&pool.call_lock) != 0) {
    run_inline(n, fn, ctx);
    return 1;
  }
  run_locked(n, fn, ctx);
  return 0;
}

/* The body of a parallel_for, with call_lock held; releases it. */
static void run_locked(int n, void (*fn)(void *ctx, int i), void *ctx) {
  int want = rt_cpu_get_num_threads();
  /* Start workers lazily; if a thread cannot be created, run with fewer.
   * (nworkers changes only under call_lock, which this thread holds.) */
  if (pool.nworkers < want - 1) {
    pthread_mutex_lock(&pool.lock);
    while (pool.nworkers < want - 1) {
      if (pthread_create(&pool.threads[pool.nworkers], NULL, worker, NULL) != 0) break;
      pool.nworkers++;
    }
    pthread_mutex_unlock(&pool.lock);
  }
  if (n == 1 || pool.nworkers == 0 || atomic_load(&pool.stop)) {
    /* As parts: a parallel_for inside them (a GEMM of a step the Newton
     * solve calls) must run there, not wait for the lock this thread holds. */
    run_inline(n, fn, ctx);
    pthread_mutex_unlock(&pool.call_lock);
    return;
  }
  /* A worker still leaving the previous job must not claim a part of this one
   * before it is fully described: park the counter out of range first. */
  uint64_t job = (atomic_load(&pool.claim) >> 32) + 1;
  atomic_store(&pool.claim, (job << 32) | PARKED);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.fp = fp_get();
  pool.nparts = n;
  atomic_store(&pool.parts_done, 0);
  atomic_store(&pool.claim, (job & 0xffffffffu) << 32);
  /* Workers still spinning from the previous job see the new generation
   * at once; the lock and the broadcast (a system call) are only for those
   * asleep, which a recurrence handing the pool one GEMM per step rarely
   * has. */
  atomic_fetch_add(&pool.generation, 1);
  if (atomic_load(&pool.sleepers) > 0) {
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
  }
  run_parts(0);
  while (atomic_load(&pool.parts_done) < n) {
  }
  pthread_mutex_unlock(&pool.call_lock);
}
