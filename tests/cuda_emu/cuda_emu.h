/* cuda_emu.h - a CPU emulation of the CUDA execution model, for tests only.
 *
 * The CUDA backend renders kernels as CUDA C. So that the tests can run them
 * where there is no GPU, a kernel source in the subset seqc generates is
 * compiled as C++17 with this header forced in front of it:
 *
 *   c++ -std=c++17 -O1 -shared -fPIC -include cuda_emu.h -x c++ src.cu -o k.so
 *
 * and the .so's seq_emu_launch() runs a kernel on the host
 * (tests/unit/cuda_emu.c does this and wraps it as an RtCuDevice).
 *
 * The model:
 *   - Blocks run one after another, in order (blockIdx.x = 0, 1, ...), so a
 *     run is deterministic. Within a block every thread is a coroutine, made
 *     with makecontext on its own mmap'd stack (SEQ_EMU_STACK_BYTES, with a
 *     guard page below it; made once per .so and reused) and switched with
 *     swapcontext, or on x86-64 with a register-only switch (see
 *     SEQ_EMU_FAST_SWITCH). A thread runs until it reaches a barrier or
 *     returns; the next runnable thread (in index order) then runs. So
 *     threads really interleave at barriers, and code that relies on
 *     lock-step execution without a barrier is not hidden.
 *   - seq_emu_set_order(1) runs blocks and threads in descending order
 *     instead: a kernel whose results differ between the two orders has a
 *     race (two threads touching one location with no barrier between
 *     them) or reads what another block of the same launch writes.
 *   - __syncthreads() releases when every thread of the block has reached a
 *     __syncthreads() (any call site, as on Volta and later).
 *   - Warp-synchronous operations (__shfl*_sync, __syncwarp, votes) meet at a
 *     real per-warp barrier: lane i of warp w waits for the other lanes of
 *     warp w only, so `if (threadIdx.x < 32) { warp reduction }` works. A
 *     shuffle deposits the lane's value in a per-warp slot (double-buffered,
 *     so one barrier per shuffle is enough), meets its warp, and reads the
 *     source lane's slot. As on Volta and later, lanes that have returned
 *     (or do not exist, in a partial last warp) no longer take part; reading
 *     one's value is undefined in CUDA and an error here. The mask must name
 *     every lane still running (0xffffffff does): partial masks, i.e. warp
 *     operations inside lane-divergent code, are not emulated.
 *   - __shared__ variables are statics (`#define __shared__ static`) in the
 *     section seq_emu_shared; before each block the whole section is filled
 *     with 0xff bytes (NaN floats, -1 ints), since CUDA leaves shared memory
 *     undefined at block start: a kernel that reads shared memory before
 *     writing it, or that expects the previous block's values, sees garbage.
 *     (GCC needs -fno-weak for this when a __shared__ variable sits in an
 *     inline function or a template; define SEQ_EMU_NO_SHARED_SECTION to
 *     fall back to plain statics, without the poisoning.)
 *   - Misuse is an error, not a hang: a barrier some threads can never reach
 *     (a thread returned while others wait at __syncthreads(), lanes split
 *     between __syncthreads() and a warp operation, or between different
 *     warp operations), a shuffle from a lane that has returned, a partial
 *     mask, a bad width, __trap(), an unknown kernel or a bad launch
 *     configuration make seq_emu_launch return 1 with a message naming the
 *     kernel, block and thread. The module stays usable afterwards.
 *   - Atomics are plain read-modify-writes: threads never run concurrently.
 *
 * Not modelled: concurrency between blocks (a kernel that spins waiting for
 * another block, or for another thread without a barrier, hangs); data races
 * other than by running both orders and comparing (a racy kernel runs in
 * the order asked for and is not reported); the memory
 * model (every write is visible at once); 2-D/3-D launches; dynamic
 * (extern) shared memory; per-kernel shared memory and register limits;
 * texture, constant-cache and half types; fast-math and FMA contraction
 * (nvcc/NVRTC fuse a*b+c by default, the host build does not: compare with
 * a tolerance); host-vs-device pointer confusion (device addresses are host
 * addresses here); a thread's stack beyond SEQ_EMU_STACK_BYTES (large local
 * arrays fault on the guard page).
 *
 * AddressSanitizer: when this file is compiled with -fsanitize=address, the
 * stack switches are announced with __sanitizer_start_switch_fiber /
 * __sanitizer_finish_switch_fiber, so kernels' out-of-bounds accesses to
 * device buffers are reported. (With SEQ_EMU_UCONTEXT_ONLY, ASan prints one
 * warning that it does not fully support swapcontext: harmless.) Without
 * ASan nothing is needed.
 *
 * Kernel registration: the generated source ends with
 *
 *   #ifdef SEQ_CUDA_EMU
 *   SEQ_EMU_KERNELS_BEGIN
 *   SEQ_EMU_KERNEL(k0)
 *   SEQ_EMU_KERNELS_END
 *   #endif
 *
 * which builds the name -> function table seq_emu_launch() searches; every
 * kernel must be `extern "C" __global__ void NAME(const long long *F)`.
 */
#ifndef SEQ_CUDA_EMU_H
#define SEQ_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is C++: compile the CUDA source with -x c++ -std=c++17"
#endif

#define SEQ_CUDA_EMU 1

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SEQ_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SEQ_EMU_ASAN 1
#endif
#endif
#ifdef SEQ_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* Threads are made with makecontext and first entered with setcontext; on
 * x86-64 they then switch with the few instructions below, which save what
 * the ABI says a call preserves (swapcontext also saves the signal mask, a
 * system call per switch: nine tenths of the emulation's time).
 * SEQ_EMU_UCONTEXT_ONLY switches with swapcontext everywhere. */
#if defined(__x86_64__) && defined(__linux__) && !defined(SEQ_EMU_UCONTEXT_ONLY)
#define SEQ_EMU_FAST_SWITCH 1
#else
#define SEQ_EMU_FAST_SWITCH 0
#endif

#ifndef SEQ_EMU_STACK_BYTES
#ifdef SEQ_EMU_ASAN
#define SEQ_EMU_STACK_BYTES (256 * 1024)
#else
#define SEQ_EMU_STACK_BYTES (64 * 1024)
#endif
#endif

/* ---- CUDA's qualifiers ------------------------------------------------------ */

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#ifdef SEQ_EMU_NO_SHARED_SECTION
#define __shared__ static
#else
#define __shared__ static __attribute__((section("seq_emu_shared")))
#endif
/* __restrict__ is a GCC and clang keyword already. */

#pragma GCC visibility push(hidden)

/* ---- built-in variables and vector types ------------------------------------ */

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};
struct __align__(8) float2 {
  float x, y;
};
struct __align__(16) float4 {
  float x, y, z, w;
};
struct __align__(8) int2 {
  int x, y;
};
struct __align__(16) int4 {
  int x, y, z, w;
};
static inline float2 make_float2(float x, float y) {
  return float2{x, y};
}
static inline float4 make_float4(float x, float y, float z, float w) {
  return float4{x, y, z, w};
}
static inline int2 make_int2(int x, int y) {
  return int2{x, y};
}
static inline int4 make_int4(int x, int y, int z, int w) {
  return int4{x, y, z, w};
}

/* Set by the scheduler at every switch (globals, so a kernel rereads them
 * after any call that may switch threads). */
static uint3 threadIdx = {0, 0, 0};
static uint3 blockIdx = {0, 0, 0};
static dim3 blockDim = {1, 1, 1};
static dim3 gridDim = {1, 1, 1};
static constexpr int warpSize = 32;

/* ---- the scheduler ---------------------------------------------------------- */

#ifndef SEQ_EMU_NO_SHARED_SECTION
/* The linker's bounds of the __shared__ variables (null when there are none). */
extern "C" char __start_seq_emu_shared[] __attribute__((weak));
extern "C" char __stop_seq_emu_shared[] __attribute__((weak));
#endif

namespace seq_emu {

enum { kMaxThreads = 1024, kWarp = 32, kMaxWarps = kMaxThreads / kWarp };
enum : unsigned char { kReady, kWaitBlock, kWaitWarp, kDone };
enum : unsigned char { kOpNone, kOpSyncwarp, kOpShfl, kOpVote };

/* A thread's (or the launcher's) saved state. */
struct Ctx {
  ucontext_t uc; /* swapcontext's; with the fast switch, only a new thread's entry */
  void *sp;      /* the fast switch's: the stack holding the saved registers */
  bool started;  /* the fast switch's: entered once (else enter through uc) */
};

struct Thread {
  Ctx ctx;
  char *map;     /* the mapping: guard page, then the stack */
  char *stack;   /* SEQ_EMU_STACK_BYTES */
  unsigned wgen; /* warp operations passed (selects the slot buffer) */
  unsigned bgen; /* __syncthreads passed (selects the count buffer) */
  unsigned char state;
  unsigned char fresh; /* needs makecontext: never run, or abandoned mid-kernel */
};

struct Emu {
  Thread th[kMaxThreads];
  Ctx main;
  void (*kernel)(const long long *);
  const long long *frame;
  const char *name;
  unsigned n;                       /* threads per block */
  unsigned live;                    /* threads of this block not yet returned */
  unsigned wait_block;              /* threads waiting at __syncthreads */
  unsigned bcount[2];               /* __syncthreads_count, double-buffered */
  unsigned warp_wait[kMaxWarps];    /* lanes waiting at a warp operation */
  unsigned warp_live[kMaxWarps];    /* lanes not yet returned */
  unsigned char warp_op[kMaxWarps]; /* the operation they wait at */
  unsigned long long slot[kMaxWarps][2][kWarp];
  unsigned slot_mask[kMaxWarps][2]; /* the lanes that filled a slot buffer */
  size_t page;
  int cur; /* the running thread; -1: the launcher */
  int active;
  int failed;
  int reverse; /* seq_emu_set_order: blocks and threads in descending order */
  char msg[512];
#ifdef SEQ_EMU_ASAN
  const void *main_bottom;
  size_t main_size;
  int from_main;
#endif
};

static Emu g;

static void vfail(const char *fmt, va_list ap) {
  if (g.failed) return;
  g.failed = 1;
  vsnprintf(g.msg, sizeof g.msg, fmt, ap);
}

static void __attribute__((format(printf, 1, 2))) fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
  va_end(ap);
}

#ifdef SEQ_EMU_ASAN
static void after_switch(void *fake) {
  const void *bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(fake, &bottom, &size);
  if (g.from_main) {
    g.main_bottom = bottom;
    g.main_size = size;
    g.from_main = 0;
  }
}
#endif

#if SEQ_EMU_FAST_SWITCH
/* seq_emu_switch(save, to): pushes the callee-saved registers and the
 * floating-point control words, stores the stack pointer in *save, and pops
 * the same from the stack `to` (saved by a switch), returning where that
 * switch was called. seq_emu_switch_uctx(save, uc) saves the same way, then
 * enters a new thread with setcontext(uc). */
extern "C" void seq_emu_switch(void **save, void *to);
extern "C" void seq_emu_switch_uctx(void **save, ucontext_t *to);
#define SEQ_EMU_SAVE                                                                               \
  "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"           \
  "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n  movq %rsp, (%rdi)\n"
asm(".text\n"
    ".p2align 4\n"
    ".globl seq_emu_switch\n"
    ".hidden seq_emu_switch\n"
    ".type seq_emu_switch, @function\n"
    "seq_emu_switch:\n" SEQ_EMU_SAVE "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size seq_emu_switch, .-seq_emu_switch\n"
    ".p2align 4\n"
    ".globl seq_emu_switch_uctx\n"
    ".hidden seq_emu_switch_uctx\n"
    ".type seq_emu_switch_uctx, @function\n"
    "seq_emu_switch_uctx:\n" SEQ_EMU_SAVE "  movq %rsi, %rdi\n"
    "  call setcontext@PLT\n"
    "  ud2\n"
    ".size seq_emu_switch_uctx, .-seq_emu_switch_uctx\n");
#undef SEQ_EMU_SAVE
#endif

/* Switches from the context `from` (a thread's or the launcher's) to thread
 * j, or to the launcher (j = -1). `last`: `from` is abandoned for good. */
static void swap_to(Ctx *from, int j, bool last) {
  Ctx *to = j < 0 ? &g.main : &g.th[j].ctx;
  g.cur = j;
  threadIdx.x = j < 0 ? 0u : (unsigned)j;
  asm volatile("" ::: "memory");
#ifdef SEQ_EMU_ASAN
  void *fake = nullptr;
  if (from == &g.main) g.from_main = 1;
  if (j < 0)
    __sanitizer_start_switch_fiber(last ? nullptr : &fake, g.main_bottom, g.main_size);
  else
    __sanitizer_start_switch_fiber(last ? nullptr : &fake, g.th[j].stack, SEQ_EMU_STACK_BYTES);
#else
  (void)last;
#endif
#if SEQ_EMU_FAST_SWITCH
  if (to->started) {
    seq_emu_switch(&from->sp, to->sp);
  } else {
    to->started = true;
    seq_emu_switch_uctx(&from->sp, &to->uc);
  }
#else
  swapcontext(&from->uc, &to->uc);
#endif
#ifdef SEQ_EMU_ASAN
  after_switch(fake);
#endif
  asm volatile("" ::: "memory");
}

/* The thread at place p of the scheduling order: index order, or its
 * reverse (seq_emu_set_order). Its own inverse. */
static unsigned at(unsigned p) {
  return g.reverse ? g.n - 1 - p : p;
}

/* The first runnable thread from place p on, or -1. */
static int next_ready(unsigned p) {
  for (; p < g.n; p++)
    if (g.th[at(p)].state == kReady) return (int)at(p);
  return -1;
}

/* Thread `me` is waiting or has returned: run the next runnable thread after
 * it in the order, or go back to the launcher, which starts over from the
 * first place. */
static void yield(int me) {
  swap_to(&g.th[me].ctx, next_ready(at((unsigned)me) + 1), false);
}

/* A fatal error inside a kernel: the launch stops; this thread never resumes. */
[[noreturn]] static void __attribute__((format(printf, 1, 2))) abort_thread(const char *fmt, ...) {
  int me = g.cur;
  if (!g.failed) {
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fail("block %u thread %d: %s", blockIdx.x, me, what);
  }
  swap_to(&g.th[me].ctx, -1, true);
  __builtin_trap(); /* never resumed */
}

static int current(const char *what) {
  if (!g.active || g.cur < 0) {
    fprintf(stderr, "cuda_emu: %s called outside a kernel launch\n", what);
    return -1;
  }
  return g.cur;
}

static unsigned warp_members(unsigned w) {
  unsigned left = g.n - w * kWarp;
  return left < kWarp ? left : (unsigned)kWarp;
}

/* The lanes of warp w that exist and have not returned. */
static unsigned live_mask(unsigned w) {
  unsigned m = 0;
  for (unsigned l = 0; l < warp_members(w); l++)
    if (g.th[w * kWarp + l].state != kDone) m |= 1u << l;
  return m;
}

static void release_warp(unsigned w) {
  for (unsigned i = w * kWarp; i < w * kWarp + warp_members(w); i++)
    if (g.th[i].state == kWaitWarp) g.th[i].state = kReady;
  g.warp_wait[w] = 0;
}

static void thread_main() {
#ifdef SEQ_EMU_ASAN
  after_switch(nullptr);
#endif
  for (;;) {
    int me = g.cur;
    g.kernel(g.frame);
    unsigned w = (unsigned)me / kWarp;
    g.th[me].state = kDone;
    g.live--;
    /* As on Volta and later, a returned lane no longer holds up its warp. */
    if (--g.warp_live[w] && g.warp_wait[w] == g.warp_live[w]) release_warp(w);
    yield(me); /* resumed for the next block or launch */
  }
}

/* __syncthreads: waits for every thread of the block; returns how many of
 * them passed a nonzero `pred`. */
static unsigned block_barrier(int pred) {
  int me = current("__syncthreads");
  if (me < 0) return 0;
  Thread &t = g.th[me];
  unsigned buf = t.bgen & 1u;
  t.bgen++;
  g.bcount[buf] += pred != 0;
  t.state = kWaitBlock;
  if (++g.wait_block == g.n) {
    for (unsigned i = 0; i < g.n; i++) g.th[i].state = kReady;
    g.wait_block = 0;
    g.bcount[buf ^ 1u] = 0; /* every thread has read it: free for the next barrier */
  } else {
    yield(me);
  }
  asm volatile("" ::: "memory");
  return g.bcount[buf];
}

static const char *op_name(unsigned char op) {
  return op == kOpSyncwarp ? "__syncwarp" : op == kOpShfl ? "a shuffle" : "a warp vote";
}

/* The warp barrier of a warp-synchronous operation. */
static void warp_barrier(int me, unsigned char op) {
  unsigned w = (unsigned)me / kWarp;
  if (g.warp_wait[w] == 0) {
    g.warp_op[w] = op;
  } else if (g.warp_op[w] != op) {
    abort_thread("%s while other lanes of warp %u wait at %s (divergent warp operations)",
                 op_name(op), w, op_name(g.warp_op[w]));
  }
  g.th[me].state = kWaitWarp;
  if (++g.warp_wait[w] == g.warp_live[w])
    release_warp(w);
  else
    yield(me);
  asm volatile("" ::: "memory");
}

/* The mask must name this lane and every lane of its warp still running
 * (0xffffffff always does; lanes that do not exist or have returned may be
 * named too, as on Volta and later). */
static void check_mask(int me, unsigned mask, const char *what) {
  unsigned w = (unsigned)me / kWarp, lane = (unsigned)me % kWarp, live = live_mask(w);
  if (!(mask >> lane & 1u))
    abort_thread("%s: mask 0x%08x does not name the calling lane %u", what, mask, lane);
  if ((mask & live) != live)
    abort_thread("%s: mask 0x%08x leaves out running lanes of warp %u (0x%08x): only masks "
                 "naming every running lane are emulated",
                 what, mask, w, live);
}

/* Deposits `bits` in this lane's slot, meets the warp, and returns the warp's
 * slots (valid until this lane's next warp operation) and, in *lanes, the
 * lanes that took part. */
static const unsigned long long *exchange(int me, unsigned long long bits, unsigned char op,
                                          unsigned *lanes) {
  Thread &t = g.th[me];
  unsigned w = (unsigned)me / kWarp, buf = t.wgen & 1u;
  t.wgen++;
  if (g.warp_wait[w] == 0) g.slot_mask[w][buf] = 0; /* the first lane of this operation */
  g.slot[w][buf][(unsigned)me % kWarp] = bits;
  g.slot_mask[w][buf] |= 1u << ((unsigned)me % kWarp);
  warp_barrier(me, op);
  if (lanes) *lanes = g.slot_mask[w][buf];
  return g.slot[w][buf];
}

enum { kShflIdx, kShflUp, kShflDown, kShflXor };

template <class T>
static T shfl(unsigned mask, T v, int mode, int arg, int width, const char *what) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "shuffles move values of at most 8 bytes");
  int me = current(what);
  if (me < 0) return v;
  check_mask(me, mask, what);
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0)
    abort_thread("%s: width %d is not a power of two in 1..32", what, width);
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof v);
  unsigned lanes = 0;
  const unsigned long long *s = exchange(me, bits, kOpShfl, &lanes);
  /* Within groups of `width` lanes; a source past the group is the lane's own. */
  long long lane = me % kWarp, base = lane & ~(width - 1), src = lane;
  long long delta = (unsigned)arg; /* up and down: unsigned */
  switch (mode) {
  case kShflIdx:
    src = base + (arg & (width - 1));
    break;
  case kShflUp:
    src = lane - delta < base ? lane : lane - delta;
    break;
  case kShflDown:
    src = lane + delta >= base + width ? lane : lane + delta;
    break;
  default:
    src = (lane ^ arg) >= base + width ? lane : lane ^ arg;
    break;
  }
  if (src < 0 || src >= kWarp)
    abort_thread("%s: lane %lld: lane mask %d is out of range", what, lane, arg);
  if (!(lanes >> src & 1u))
    abort_thread("%s: lane %lld reads lane %lld, which %s (an undefined value)", what, lane, src,
                 (unsigned)src < warp_members((unsigned)me / kWarp) ? "has returned"
                                                                    : "does not exist");
  T r;
  memcpy(&r, &s[src], sizeof r);
  return r;
}

/* The lanes that passed a nonzero pred; *lanes: those that voted. */
static unsigned ballot(unsigned mask, int pred, const char *what, unsigned *lanes) {
  int me = current(what);
  if (me < 0) return 0;
  check_mask(me, mask, what);
  const unsigned long long *s = exchange(me, pred != 0, kOpVote, lanes);
  unsigned r = 0;
  for (unsigned i = 0; i < kWarp; i++)
    if (*lanes >> i & 1u) r |= (unsigned)s[i] << i;
  return r;
}

/* ---- the launcher ------------------------------------------------------------- */

static void release_stacks() {
  for (unsigned i = 0; i < kMaxThreads; i++) {
    if (!g.th[i].map) continue;
#ifdef SEQ_EMU_ASAN
    /* Stack frames leave redzone marks in the shadow; whatever is mapped
     * here next (another module's data) must not inherit them. */
    __asan_unpoison_memory_region(g.th[i].stack, SEQ_EMU_STACK_BYTES);
#endif
    munmap(g.th[i].map, g.page + SEQ_EMU_STACK_BYTES);
    g.th[i].map = g.th[i].stack = nullptr;
  }
}

/* Runs when the .so is unloaded (dlclose). */
__attribute__((destructor)) static void fini() {
  release_stacks();
}

static int prepare(unsigned n) {
  if (!g.page) g.page = (size_t)sysconf(_SC_PAGESIZE);
  for (unsigned i = 0; i < n; i++) {
    Thread &t = g.th[i];
    if (!t.map) {
      void *m = mmap(nullptr, g.page + SEQ_EMU_STACK_BYTES, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) {
        fail("cannot map a %d-byte stack for thread %u", SEQ_EMU_STACK_BYTES, i);
        return -1;
      }
      t.map = (char *)m;
      t.stack = t.map + g.page;
      mprotect(t.map, g.page, PROT_NONE); /* a stack overflow faults */
      t.fresh = 1;
    }
    if (t.fresh) {
      memset(&t.ctx, 0, sizeof t.ctx);
      if (getcontext(&t.ctx.uc) != 0) {
        fail("getcontext failed");
        return -1;
      }
      t.ctx.uc.uc_stack.ss_sp = t.stack;
      t.ctx.uc.uc_stack.ss_size = SEQ_EMU_STACK_BYTES;
      t.ctx.uc.uc_link = nullptr; /* thread_main never returns */
      makecontext(&t.ctx.uc, thread_main, 0);
#ifdef SEQ_EMU_ASAN
      /* An abandoned thread's frames may have left their redzones poisoned. */
      __asan_unpoison_memory_region(t.stack, SEQ_EMU_STACK_BYTES);
#endif
      t.fresh = 0;
    }
  }
  return 0;
}

/* Why no thread can run while some have not returned. */
static void describe_deadlock(unsigned b) {
  unsigned waiting_block = 0, done = 0, first_done = 0;
  for (unsigned i = 0; i < g.n; i++) {
    if (g.th[i].state == kDone && done++ == 0) first_done = i;
    waiting_block += g.th[i].state == kWaitBlock;
  }
  for (unsigned w = 0; w * kWarp < g.n; w++) {
    unsigned at_warp = 0, at_block = 0;
    for (unsigned i = w * kWarp; i < w * kWarp + warp_members(w); i++) {
      at_warp += g.th[i].state == kWaitWarp;
      at_block += g.th[i].state == kWaitBlock;
    }
    if (at_warp && at_block) {
      fail("block %u warp %u: %u lanes wait at %s, %u at __syncthreads() (divergent barriers)", b,
           w, at_warp, op_name(g.warp_op[w]), at_block);
      return;
    }
  }
  if (waiting_block && done) {
    fail("block %u: %u of %u threads wait at __syncthreads() but %u have returned (thread %u "
         "first): a barrier in divergent code",
         b, waiting_block, g.n, done, first_done);
    return;
  }
  fail("block %u: deadlock (%u threads at __syncthreads(), %u returned)", b, waiting_block, done);
}

static void poison_shared() {
#ifndef SEQ_EMU_NO_SHARED_SECTION
  if (!+__start_seq_emu_shared || +__stop_seq_emu_shared <= +__start_seq_emu_shared) return;
#ifdef SEQ_EMU_ASAN
  /* The section's variables carry no redzones (ASan leaves variables in
   * named sections alone), but its shadow may hold stale marks: an earlier
   * module's thread stacks can have been mapped at these addresses. */
  __asan_unpoison_memory_region(__start_seq_emu_shared,
                                (size_t)(__stop_seq_emu_shared - __start_seq_emu_shared));
#endif
  memset(__start_seq_emu_shared, 0xff, (size_t)(__stop_seq_emu_shared - __start_seq_emu_shared));
#endif
}

static void run_block(unsigned b) {
  blockIdx.x = b;
  poison_shared();
  for (unsigned i = 0; i < g.n; i++) {
    g.th[i].state = kReady;
    g.th[i].wgen = g.th[i].bgen = 0;
  }
  memset(g.warp_wait, 0, sizeof g.warp_wait);
  for (unsigned w = 0; w * kWarp < g.n; w++) g.warp_live[w] = warp_members(w);
  g.live = g.n;
  g.wait_block = 0;
  g.bcount[0] = g.bcount[1] = 0;
  for (;;) {
    int j = next_ready(0);
    if (j < 0) break;
    swap_to(&g.main, j, false);
    if (g.failed) break;
  }
  if (!g.failed && g.live) describe_deadlock(b);
  if (g.failed)
    for (unsigned i = 0; i < g.n; i++) g.th[i].fresh = 1; /* stopped mid-kernel */
}

struct Kernel {
  const char *name;
  void (*fn)(const long long *);
};

} // namespace seq_emu

/* The table SEQ_EMU_KERNELS_BEGIN ... END defines (absent: none). */
extern "C" const seq_emu::Kernel seq_emu_kernels_[] __attribute__((weak));

#define SEQ_EMU_KERNELS_BEGIN extern "C" const seq_emu::Kernel seq_emu_kernels_[] = {
#define SEQ_EMU_KERNEL(k) {#k, k},
#define SEQ_EMU_KERNELS_END                                                                        \
  { nullptr, nullptr }                                                                             \
  }                                                                                                \
  ;

namespace seq_emu {
static const Kernel *find(const char *name) {
  if (!seq_emu_kernels_ || !name) return nullptr;
  for (const Kernel *k = seq_emu_kernels_; k->name; k++)
    if (strcmp(k->name, name) == 0) return k;
  return nullptr;
}
} // namespace seq_emu

#pragma GCC visibility pop

/* The order of later launches: 0 (the default) runs blocks and, within a
 * block, threads in index order; 1 in descending order. A kernel whose
 * results differ between the two depends on an order CUDA does not give:
 * a race between threads with no barrier between them, or a block reading
 * what another block of the same launch writes. */
extern "C" __attribute__((visibility("default"))) void seq_emu_set_order(int reverse) {
  seq_emu::g.reverse = reverse != 0;
}

/* 1 when the module has a kernel called `name`. */
extern "C" __attribute__((visibility("default"))) int seq_emu_has_kernel(const char *name) {
  return seq_emu::find(name) != nullptr;
}

/* Runs kernel `kernel` on `grid` blocks of `block` threads with the frame as
 * its argument. 0, or 1 with a one-line message in msg. */
extern "C" __attribute__((visibility("default"))) int seq_emu_launch(const char *kernel,
                                                                     unsigned grid, unsigned block,
                                                                     const long long *frame,
                                                                     char *msg, size_t n) {
  using namespace seq_emu;
  char scratch[8];
  if (!msg || n == 0) {
    msg = scratch;
    n = sizeof scratch;
  }
  msg[0] = 0;
  const Kernel *k = find(kernel);
  if (!k) {
    if (!seq_emu_kernels_) {
      snprintf(msg, n, "unknown kernel '%s': the source has no SEQ_EMU_KERNELS table",
               kernel ? kernel : "(null)");
      return 1;
    }
    size_t len = (size_t)snprintf(
        msg, n, "unknown kernel '%s' (the module has:", kernel ? kernel : "(null)");
    for (const Kernel *q = seq_emu_kernels_; q->name && len < n; q++)
      len += (size_t)snprintf(msg + len, n - len, " %s", q->name);
    if (len < n) snprintf(msg + len, n - len, ")");
    return 1;
  }
  if (g.active) {
    snprintf(msg, n, "kernel %s: launched from inside a kernel", k->name);
    return 1;
  }
  if (grid == 0 || grid > 0x7fffffffu || block == 0 || block > kMaxThreads) {
    snprintf(msg, n, "kernel %s: invalid launch configuration (grid %u, block %u; 1..%d threads)",
             k->name, grid, block, (int)kMaxThreads);
    return 1;
  }
  g.failed = 0;
  g.msg[0] = 0;
  if (prepare(block) != 0) {
    snprintf(msg, n, "kernel %s: %s", k->name, g.msg);
    return 1;
  }
  g.active = 1;
  g.main.started = true; /* the launcher runs: it is only ever resumed */
  g.kernel = k->fn;
  g.frame = frame;
  g.name = k->name;
  g.n = block;
  g.cur = -1;
  blockDim = dim3{block, 1, 1};
  gridDim = dim3{grid, 1, 1};
  threadIdx = uint3{0, 0, 0};
  for (unsigned b = 0; b < grid && !g.failed; b++) run_block(g.reverse ? grid - 1 - b : b);
  g.active = 0;
  g.cur = -1;
  if (g.failed) {
    snprintf(msg, n, "kernel %s: %s", k->name, g.msg);
    return 1;
  }
  return 0;
}

/* ---- synchronization, shuffles, votes ---------------------------------------- */

static inline void __syncthreads() {
  seq_emu::block_barrier(0);
}
static inline int __syncthreads_count(int pred) {
  return (int)seq_emu::block_barrier(pred);
}
static inline int __syncthreads_and(int pred) {
  return seq_emu::block_barrier(pred) == seq_emu::g.n;
}
static inline int __syncthreads_or(int pred) {
  return seq_emu::block_barrier(pred) != 0;
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  int me = seq_emu::current("__syncwarp");
  if (me < 0) return;
  seq_emu::check_mask(me, mask, "__syncwarp");
  seq_emu::exchange(me, 0, seq_emu::kOpSyncwarp, nullptr);
}
static inline void __threadfence() {
  asm volatile("" ::: "memory");
}
static inline void __threadfence_block() {
  asm volatile("" ::: "memory");
}
[[noreturn]] static inline void __trap() {
  seq_emu::abort_thread("__trap()");
}

template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return seq_emu::shfl(mask, v, seq_emu::kShflIdx, src, width, "__shfl_sync");
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return seq_emu::shfl(mask, v, seq_emu::kShflUp, (int)d, width, "__shfl_up_sync");
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return seq_emu::shfl(mask, v, seq_emu::kShflDown, (int)d, width, "__shfl_down_sync");
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
  return seq_emu::shfl(mask, v, seq_emu::kShflXor, m, width, "__shfl_xor_sync");
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned lanes;
  return seq_emu::ballot(mask, pred, "__ballot_sync", &lanes);
}
static inline int __any_sync(unsigned mask, int pred) {
  unsigned lanes;
  return seq_emu::ballot(mask, pred, "__any_sync", &lanes) != 0;
}
static inline int __all_sync(unsigned mask, int pred) {
  unsigned lanes;
  return seq_emu::ballot(mask, pred, "__all_sync", &lanes) == lanes;
}
/* Every lane still running (the emulation has no divergence to model). */
static inline unsigned __activemask() {
  return seq_emu::live_mask(threadIdx.x / 32u);
}

/* ---- atomics: plain read-modify-writes (threads never run at once) ----------- */

template <class T> static inline T seq_emu_atomic_add(T *p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
static inline int atomicAdd(int *p, int v) {
  int old = *p;
  *p = (int)((unsigned)old + (unsigned)v); /* wraps, as on the device */
  return old;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
  return seq_emu_atomic_add(p, v);
}
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  return seq_emu_atomic_add(p, v);
}
static inline float atomicAdd(float *p, float v) {
  return seq_emu_atomic_add(p, v);
}
static inline double atomicAdd(double *p, double v) {
  return seq_emu_atomic_add(p, v);
}
static inline int atomicSub(int *p, int v) {
  int old = *p;
  *p = (int)((unsigned)old - (unsigned)v);
  return old;
}
static inline unsigned atomicSub(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old - v;
  return old;
}
template <class T> static inline T seq_emu_atomic_max(T *p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T> static inline T seq_emu_atomic_min(T *p, T v) {
  T old = *p;
  if (v < old) *p = v;
  return old;
}
static inline int atomicMax(int *p, int v) {
  return seq_emu_atomic_max(p, v);
}
static inline unsigned atomicMax(unsigned *p, unsigned v) {
  return seq_emu_atomic_max(p, v);
}
static inline long long atomicMax(long long *p, long long v) {
  return seq_emu_atomic_max(p, v);
}
static inline unsigned long long atomicMax(unsigned long long *p, unsigned long long v) {
  return seq_emu_atomic_max(p, v);
}
static inline int atomicMin(int *p, int v) {
  return seq_emu_atomic_min(p, v);
}
static inline unsigned atomicMin(unsigned *p, unsigned v) {
  return seq_emu_atomic_min(p, v);
}
static inline long long atomicMin(long long *p, long long v) {
  return seq_emu_atomic_min(p, v);
}
static inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
  return seq_emu_atomic_min(p, v);
}
template <class T> static inline T seq_emu_atomic_cas(T *p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}
static inline int atomicCAS(int *p, int cmp, int v) {
  return seq_emu_atomic_cas(p, cmp, v);
}
static inline unsigned atomicCAS(unsigned *p, unsigned cmp, unsigned v) {
  return seq_emu_atomic_cas(p, cmp, v);
}
static inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long cmp,
                                           unsigned long long v) {
  return seq_emu_atomic_cas(p, cmp, v);
}
template <class T> static inline T seq_emu_atomic_exch(T *p, T v) {
  T old = *p;
  *p = v;
  return old;
}
static inline int atomicExch(int *p, int v) {
  return seq_emu_atomic_exch(p, v);
}
static inline unsigned atomicExch(unsigned *p, unsigned v) {
  return seq_emu_atomic_exch(p, v);
}
static inline unsigned long long atomicExch(unsigned long long *p, unsigned long long v) {
  return seq_emu_atomic_exch(p, v);
}
static inline float atomicExch(float *p, float v) {
  return seq_emu_atomic_exch(p, v);
}
static inline int atomicAnd(int *p, int v) {
  int old = *p;
  *p = old & v;
  return old;
}
static inline int atomicOr(int *p, int v) {
  int old = *p;
  *p = old | v;
  return old;
}
static inline unsigned atomicAnd(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old & v;
  return old;
}
static inline unsigned atomicOr(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old | v;
  return old;
}

/* ---- math: <math.h> has the rest (expf, log1pf, erff, fmaxf, isnan, ...) ----- */

static inline float rsqrtf(float x) {
  return 1.0f / sqrtf(x);
}
static inline double rsqrt(double x) {
  return 1.0 / sqrt(x);
}
/* glibc declares __expf, __logf, ... as its own names for expf, logf, ...:
 * macros, so as not to redeclare them. */
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf(x, y)
static inline float __fdividef(float x, float y) {
  return x / y;
}
static inline float __frcp_rn(float x) {
  return 1.0f / x;
}
static inline float __fsqrt_rn(float x) {
  return sqrtf(x);
}
static inline float __frsqrt_rn(float x) {
  return 1.0f / sqrtf(x);
}
static inline float __fmaf_rn(float a, float b, float c) {
  return fmaf(a, b, c);
}
static inline float __fadd_rn(float a, float b) {
  return a + b;
}
static inline float __fmul_rn(float a, float b) {
  return a * b;
}
static inline float __saturatef(float x) {
  return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x == x ? x : 0.0f;
}
static inline int __float_as_int(float x) {
  int r;
  memcpy(&r, &x, sizeof r);
  return r;
}
static inline unsigned __float_as_uint(float x) {
  unsigned r;
  memcpy(&r, &x, sizeof r);
  return r;
}
static inline float __int_as_float(int x) {
  float r;
  memcpy(&r, &x, sizeof r);
  return r;
}
static inline float __uint_as_float(unsigned x) {
  float r;
  memcpy(&r, &x, sizeof r);
  return r;
}
static inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
static inline int __clz(int x) {
  return x ? __builtin_clz((unsigned)x) : 32;
}
static inline int __ffs(int x) {
  return __builtin_ffs(x);
}
template <class T> static inline T __ldg(const T *p) {
  return *p;
}
static inline int min(int a, int b) {
  return a < b ? a : b;
}
static inline int max(int a, int b) {
  return a > b ? a : b;
}
static inline unsigned min(unsigned a, unsigned b) {
  return a < b ? a : b;
}
static inline unsigned max(unsigned a, unsigned b) {
  return a > b ? a : b;
}
static inline long long min(long long a, long long b) {
  return a < b ? a : b;
}
static inline long long max(long long a, long long b) {
  return a > b ? a : b;
}
static inline unsigned long long min(unsigned long long a, unsigned long long b) {
  return a < b ? a : b;
}
static inline unsigned long long max(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}
static inline float min(float a, float b) {
  return fminf(a, b);
}
static inline float max(float a, float b) {
  return fmaxf(a, b);
}
static inline double min(double a, double b) {
  return fmin(a, b);
}
static inline double max(double a, double b) {
  return fmax(a, b);
}

#endif
