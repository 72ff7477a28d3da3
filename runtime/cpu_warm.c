/* cpu_warm.c - Newton warm starts: a store of the trajectories the Newton
 * solves of one module found, so that the module's next forward starts each
 * solve from them instead of from F(x, 0) (docs/algorithms.md section 6).
 *
 * The store belongs to whoever runs the module (the C API keeps one per
 * module compiled with SeqOptions.newton_warm) and reaches the solves
 * through the calling thread: rt_cpu_warm_use names the store of the
 * thread's forward calls, rt_cpu_forward_batched hands it, with each
 * slice's first example, to the thread that runs the slice, and
 * rt_cpu_newton opens the store's trajectory of its call site. Generated
 * code never sees it, so the ABI is unchanged and an AOT library (which
 * has no store) starts every solve cold.
 *
 * A trajectory is kept per call site of a Newton layer (the generated
 * code's site number) for the whole batch and sequence of the call that
 * wrote it: [B, T] rows of n*w floats (the n solved states of w floats one
 * after another), row b*T + p for example b at position p, with a byte per
 * row saying whether it has been written. A call of another B, T or width
 * starts the site's trajectory afresh. A guess changes how many iterations
 * a solve takes, never what it converges to (within its tolerance), so
 * forwards from several threads may share a store: each access holds the
 * store's lock, and a guess written by another call is still a guess.
 */
#include "runtime/rt_cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct Site {
  int64_t site, B, T, nw;
  float *traj;
  unsigned char *valid;
} Site;

struct RtNewtonWarm {
  pthread_mutex_t lock;
  Site *v;
  int n, cap;
};

/* The calling thread's context: a pointer to its innermost enter's frame,
 * under a thread-specific key rather than in a _Thread_local for the reason
 * cpu_pool.c gives (an AOT library's dynamic TLS). Without a key, solves
 * start cold. */
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static int ctx_key_ok;

static void ctx_key_make(void) {
  ctx_key_ok = pthread_key_create(&ctx_key, NULL) == 0;
}

static RtWarmCtx *thread_ctx(void) {
  pthread_once(&ctx_once, ctx_key_make);
  return ctx_key_ok ? pthread_getspecific(ctx_key) : NULL;
}

/* At dlclose or exit (no forward runs then, so every thread's value is
 * back to NULL). */
__attribute__((destructor)) static void ctx_key_drop(void) {
  if (ctx_key_ok) pthread_key_delete(ctx_key);
  ctx_key_ok = 0;
}

RtNewtonWarm *rt_cpu_warm_create(void) {
  RtNewtonWarm *w = calloc(1, sizeof *w);
  if (w) pthread_mutex_init(&w->lock, NULL);
  return w;
}

static void drop(Site *s) {
  free(s->traj);
  free(s->valid);
  s->traj = NULL;
  s->valid = NULL;
}

void rt_cpu_warm_destroy(RtNewtonWarm *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) drop(&w->v[i]);
  free(w->v);
  pthread_mutex_destroy(&w->lock);
  free(w);
}

void rt_cpu_warm_enter(RtWarmCtx *c, RtNewtonWarm *store, int64_t b0, int64_t B, int64_t T) {
  c->outer = thread_ctx();
  c->store = store;
  c->b0 = b0;
  c->B = B;
  c->T = T;
  if (ctx_key_ok) pthread_setspecific(ctx_key, c);
}

void rt_cpu_warm_leave(RtWarmCtx *c) {
  if (ctx_key_ok) pthread_setspecific(ctx_key, c->outer);
}

RtNewtonWarm *rt_cpu_warm_current(void) {
  RtWarmCtx *c = thread_ctx();
  return c ? c->store : NULL;
}

int rt_cpu_warm_open(int64_t site, int64_t nw, RtWarmView *v) {
  memset(v, 0, sizeof *v);
  RtWarmCtx *c = thread_ctx();
  if (!c) return 0;
  RtWarmCtx ctx = *c;
  RtNewtonWarm *w = ctx.store;
  if (!w || ctx.B < 1 || ctx.T < 1 || nw < 1) return 0;
  /* A trajectory past the solve's own budget is not kept. */
  if ((double)ctx.B * (double)ctx.T * (double)nw > (double)RT_NEWTON_BUDGET) return 0;
  pthread_mutex_lock(&w->lock);
  Site *s = NULL;
  for (int i = 0; i < w->n && !s; i++)
    if (w->v[i].site == site) s = &w->v[i];
  if (!s) {
    if (w->n == w->cap) {
      int cap = w->cap ? 2 * w->cap : 4;
      Site *nv = realloc(w->v, sizeof *nv * (size_t)cap);
      if (!nv) goto none;
      w->v = nv;
      w->cap = cap;
    }
    s = &w->v[w->n++];
    memset(s, 0, sizeof *s);
    s->site = site;
  }
  if (s->B != ctx.B || s->T != ctx.T || s->nw != nw || !s->traj) {
    drop(s);
    s->B = ctx.B, s->T = ctx.T, s->nw = nw;
    s->traj = malloc(sizeof(float) * (size_t)(ctx.B * ctx.T * nw));
    s->valid = calloc((size_t)(ctx.B * ctx.T), 1);
    if (!s->traj || !s->valid) {
      drop(s);
      goto none;
    }
  }
  v->traj = s->traj;
  v->valid = s->valid;
  v->b0 = ctx.b0;
  v->B = ctx.B;
  v->T = ctx.T;
  v->nw = nw;
  v->store = w;
  return 1;
none:
  pthread_mutex_unlock(&w->lock);
  return 0;
}

void rt_cpu_warm_close(RtWarmView *v) {
  if (v->store) pthread_mutex_unlock(&v->store->lock);
  memset(v, 0, sizeof *v);
}
