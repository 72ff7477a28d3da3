/* test_cuda_emu.c - the CPU emulation of CUDA the CUDA backend's tests run on
 * (tests/cuda_emu/cuda_emu.h, tests/unit/cuda_emu.c): hand-written kernels in
 * the subset seqc generates, each checked against a serial computation, run
 * through the RtCuDevice table the executor uses. They show that threads
 * interleave at __syncthreads, that shuffles exchange values between the
 * lanes of a warp, that shared memory is garbage at block start, that the
 * reverse order of blocks and threads exposes races, and that
 * misuse (a barrier in divergent code, an unknown kernel, a bad launch, a
 * compile error) is a message, not a hang. Skipped without a C++ compiler. */
#include "testutil.h"

#include "cuda_emu.h"
#include "runtime/rt_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kernels' source, in parts (C limits a literal's length). Every kernel
 * takes the frame; F[0] is a count, the other slots device addresses, as in
 * generated code. */
static const char *const kSourceParts[] = {
    "extern \"C\" __global__ void saxpy(const long long *__restrict__ F) {\n"
    "  long long n = F[0];\n"
    "  float a = __int_as_float((int)F[1]);\n"
    "  const float *x = (const float *)F[2];\n"
    "  float *y = (float *)F[3];\n"
    "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n"
    "       i += (long long)gridDim.x * blockDim.x)\n"
    "    y[i] = a * x[i] + y[i];\n"
    "}\n"
    "\n",
    "/* One sum per block: a tree in shared memory, a barrier per level. */\n"
    "extern \"C\" __global__ void block_sum(const long long *__restrict__ F) {\n"
    "  __shared__ float part[256];\n"
    "  const float *x = (const float *)F[1];\n"
    "  float *out = (float *)F[2];\n"
    "  unsigned t = threadIdx.x;\n"
    "  part[t] = x[blockIdx.x * blockDim.x + t];\n"
    "  __syncthreads();\n"
    "  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {\n"
    "    if (t < s) part[t] += part[t + s];\n"
    "    __syncthreads();\n"
    "  }\n"
    "  if (t == 0) out[blockIdx.x] = part[0];\n"
    "}\n"
    "\n",
    "__device__ __forceinline__ int warp_scan(int v) {\n"
    "  int lane = threadIdx.x % warpSize;\n"
    "  for (int d = 1; d < warpSize; d <<= 1) {\n"
    "    int u = __shfl_up_sync(0xffffffffu, v, d);\n"
    "    if (lane >= d) v += u;\n"
    "  }\n"
    "  return v;\n"
    "}\n"
    "\n",
    "/* An inclusive scan of each block: per warp, then over the warps' totals. */\n"
    "extern \"C\" __global__ void block_scan(const long long *__restrict__ F) {\n"
    "  __shared__ int totals[32];\n"
    "  const int *x = (const int *)F[1];\n"
    "  int *warp_out = (int *)F[2], *block_out = (int *)F[3];\n"
    "  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;\n"
    "  int v = warp_scan(x[i]);\n"
    "  warp_out[i] = v;\n"
    "  if (lane == 31) totals[warp] = v;\n"
    "  __syncthreads();\n"
    "  if (warp == 0) {\n"
    "    int t = lane < nwarps ? totals[lane] : 0;\n"
    "    t = warp_scan(t);\n"
    "    if (lane < nwarps) totals[lane] = t;\n"
    "  }\n"
    "  __syncthreads();\n"
    "  block_out[i] = v + (warp > 0 ? totals[warp - 1] : 0);\n"
    "}\n"
    "\n",
    "/* The other shuffles, float and int, and a warp sum through xor. */\n"
    "extern \"C\" __global__ void shuffles(const long long *__restrict__ F) {\n"
    "  float *out = (float *)F[1];\n"
    "  int *iout = (int *)F[2];\n"
    "  unsigned i = threadIdx.x;\n"
    "  float v = (float)(i * i % 97);\n"
    "  out[6 * i + 0] = __shfl_down_sync(0xffffffffu, v, 3);\n"
    "  out[6 * i + 1] = __shfl_xor_sync(0xffffffffu, v, 5);\n"
    "  out[6 * i + 2] = __shfl_sync(0xffffffffu, v, 7);\n"
    "  out[6 * i + 3] = __shfl_up_sync(0xffffffffu, v, 2, 8);\n"
    "  float s = v;\n"
    "  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);\n"
    "  out[6 * i + 4] = s;\n"
    "  __syncwarp();\n"
    "  out[6 * i + 5] = (float)__popc(__ballot_sync(0xffffffffu, (i & 3) == 0));\n"
    "  iout[i] = __shfl_down_sync(0xffffffffu, (int)i * 3, 1, 16);\n"
    "}\n"
    "\n",
    "/* Reads the frame as generated code does: F[0] a count, F[1] a device\n"
    " * pointer, F[2] an int32 counter. */\n"
    "extern \"C\" __global__ void frame_reader(const long long *__restrict__ F) {\n"
    "  long long n = F[0];\n"
    "  float *p = (float *)F[1];\n"
    "  int *count = (int *)F[2];\n"
    "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  if (i >= n) return;\n"
    "  p[i] = 2.0f * p[i] + 1.0f;\n"
    "  atomicAdd(count, 1);\n"
    "  atomicMax(count + 1, (int)i);\n"
    "  atomicAdd((float *)(count + 2), 0.5f);\n"
    "}\n"
    "\n",
    "/* What shared memory holds before anything is written to it. */\n"
    "extern \"C\" __global__ void shared_garbage(const long long *__restrict__ F) {\n"
    "  __shared__ unsigned s[64];\n"
    "  unsigned *out = (unsigned *)F[1];\n"
    "  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];\n"
    "  __syncthreads();\n"
    "  s[threadIdx.x] = 7;\n"
    "}\n"
    "\n",
    "/* Misuse: threads that return before a barrier the others wait at. */\n"
    "extern \"C\" __global__ void divergent(const long long *__restrict__ F) {\n"
    "  (void)F;\n"
    "  if (threadIdx.x >= 40) return;\n"
    "  __syncthreads();\n"
    "}\n"
    "\n",
    "/* Lanes that return (and the missing half of a partial warp) leave the\n"
    " * warp operations of the others, as on Volta and later. */\n"
    "extern \"C\" __global__ void partial(const long long *__restrict__ F) {\n"
    "  float *out = (float *)F[1];\n"
    "  if (threadIdx.x >= 40) return;\n"
    "  float s = (float)threadIdx.x;\n"
    "  for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o, 8);\n"
    "  unsigned b = __ballot_sync(0xffffffffu, 1);\n"
    "  out[2 * threadIdx.x] = s;\n"
    "  out[2 * threadIdx.x + 1] = (float)__popc(b);\n"
    "}\n"
    "\n",
    "/* Misuse: a shuffle that reads a lane that has returned. */\n"
    "extern \"C\" __global__ void lane_gone(const long long *__restrict__ F) {\n"
    "  float *out = (float *)F[1];\n"
    "  if (threadIdx.x == 3) return;\n"
    "  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);\n"
    "}\n"
    "\n",
    "/* Reads what another thread (F[0] 0: with no barrier between, 1: after\n"
    " * one) or another block (2) writes: the first and the last depend on the\n"
    " * order threads and blocks run in. */\n"
    "extern \"C\" __global__ void order_probe(const long long *__restrict__ F) {\n"
    "  __shared__ unsigned s[64];\n"
    "  unsigned *out = (unsigned *)F[1];\n"
    "  unsigned t = threadIdx.x, n = blockDim.x, i = blockIdx.x * n + t;\n"
    "  if (F[0] == 2) {\n"
    "    out[i] = i + 1;\n"
    "    out[gridDim.x * n + i] = out[(i + n) % (gridDim.x * n)];\n"
    "    return;\n"
    "  }\n"
    "  s[t] = i + 1;\n"
    "  if (F[0] == 1) __syncthreads();\n"
    "  out[i] = s[(t + 1) % n];\n"
    "}\n"
    "\n",
    "#ifdef SEQ_CUDA_EMU\n"
    "SEQ_EMU_KERNELS_BEGIN\n"
    "SEQ_EMU_KERNEL(saxpy)\n"
    "SEQ_EMU_KERNEL(block_sum)\n"
    "SEQ_EMU_KERNEL(block_scan)\n"
    "SEQ_EMU_KERNEL(shuffles)\n"
    "SEQ_EMU_KERNEL(frame_reader)\n"
    "SEQ_EMU_KERNEL(shared_garbage)\n"
    "SEQ_EMU_KERNEL(divergent)\n"
    "SEQ_EMU_KERNEL(lane_gone)\n"
    "SEQ_EMU_KERNEL(partial)\n"
    "SEQ_EMU_KERNEL(order_probe)\n"
    "SEQ_EMU_KERNELS_END\n"
    "#endif\n",
    NULL};

enum {
  K_SAXPY,
  K_BLOCK_SUM,
  K_BLOCK_SCAN,
  K_SHUFFLES,
  K_FRAME,
  K_SHARED,
  K_DIVERGENT,
  K_LANE,
  K_PARTIAL,
  K_ORDER
};
static const char *const kNames[] = {"saxpy",        "block_sum",      "block_scan", "shuffles",
                                     "frame_reader", "shared_garbage", "divergent",  "lane_gone",
                                     "partial",      "order_probe"};

/* kSourceParts joined. */
static char *source(void) {
  size_t n = 1;
  for (int i = 0; kSourceParts[i]; i++) n += strlen(kSourceParts[i]);
  char *s = malloc(n);
  if (!s) return NULL;
  s[0] = 0;
  for (int i = 0; kSourceParts[i]; i++) strcat(s, kSourceParts[i]);
  return s;
}

static EmuModule *g_mod;
static RtCuDevice g_dev;
/* Allocations and bad frees when the test began (a failed test leaves its own). */
static size_t g_live0;
static int g_bad0;

static int setup(void **state) {
  (void)state;
  if (!emu_available()) return 0;
  char msg[1024];
  char *src = source();
  if (!src) return -1;
  int rc = emu_build(src, kNames, (int)(sizeof kNames / sizeof kNames[0]), &g_mod, msg, sizeof msg);
  free(src);
  if (rc != 0) {
    fprintf(stderr, "%s\n", msg);
    return -1;
  }
  g_dev = emu_device(g_mod);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  emu_free(g_mod);
  g_mod = NULL;
  return 0;
}

static void need_emu(void) {
  if (!g_mod) skip();
  g_live0 = emu_live_allocs(g_mod);
  g_bad0 = emu_bad_frees(g_mod);
}

/* ---- helpers over the device table ------------------------------------------------ */

static RtDevPtr dalloc(size_t bytes) {
  RtError err = {{0}};
  RtDevPtr p = 0;
  if (g_dev.alloc(g_dev.ctx, g_dev.stream, bytes, &p, &err) != 0) fail_msg("alloc: %s", err.msg);
  assert_true(p != 0);
  return p;
}

static void h2d(RtDevPtr dst, const void *src, size_t bytes) {
  RtError err = {{0}};
  if (g_dev.copy(g_dev.ctx, g_dev.stream, dst, (RtDevPtr)(uintptr_t)src, bytes, RT_CU_H2D, &err) !=
      0)
    fail_msg("copy: %s", err.msg);
}

static void d2h(void *dst, RtDevPtr src, size_t bytes) {
  RtError err = {{0}};
  if (g_dev.copy(g_dev.ctx, g_dev.stream, (RtDevPtr)(uintptr_t)dst, src, bytes, RT_CU_D2H, &err) !=
      0)
    fail_msg("copy: %s", err.msg);
}

/* Copies the frame to the device and launches; returns the device's status
 * with its message in err. */
static int launch(int kernel, unsigned grid, unsigned block, const int64_t *frame, int nslots,
                  RtError *err) {
  RtDevPtr f = dalloc((size_t)nslots * sizeof *frame);
  h2d(f, frame, (size_t)nslots * sizeof *frame);
  int rc = g_dev.launch(g_dev.ctx, g_dev.stream, kernel, grid, block, f, err);
  if (rc == 0) rc = g_dev.sync(g_dev.ctx, g_dev.stream, err);
  g_dev.free(g_dev.ctx, f);
  return rc;
}

static void launch_ok(int kernel, unsigned grid, unsigned block, const int64_t *frame, int nslots) {
  RtError err = {{0}};
  if (launch(kernel, grid, block, frame, nslots, &err) != 0)
    fail_msg("launch %s: %s", kNames[kernel], err.msg);
}

static void no_leaks(void) {
  assert_int_equal(emu_live_allocs(g_mod), g_live0);
  assert_int_equal(emu_bad_frees(g_mod), g_bad0);
}

/* ---- kernels --------------------------------------------------------------------- */

/* A grid-stride loop: 3 blocks of 128 threads cover 1000 elements. */
static void test_saxpy(void **state) {
  (void)state;
  need_emu();
  enum { N = 1000 };
  float x[N], y[N], got[N];
  for (int i = 0; i < N; i++) {
    x[i] = (float)(i % 17) - 8.0f;
    y[i] = (float)(i % 5) * 0.5f;
  }
  float a = 1.5f;
  int32_t abits;
  memcpy(&abits, &a, sizeof abits);
  RtDevPtr dx = dalloc(sizeof x), dy = dalloc(sizeof y);
  h2d(dx, x, sizeof x);
  h2d(dy, y, sizeof y);
  int64_t frame[4] = {N, abits, (int64_t)dx, (int64_t)dy};
  launch_ok(K_SAXPY, 3, 128, frame, 4);
  d2h(got, dy, sizeof got);
  for (int i = 0; i < N; i++) assert_float_equal(got[i], a * x[i] + y[i], 0);
  g_dev.free(g_dev.ctx, dx);
  g_dev.free(g_dev.ctx, dy);
  no_leaks();
}

/* A tree reduction in shared memory with __syncthreads in the loop: wrong
 * unless every thread's write at one level is seen by the next level. */
static void test_block_sum(void **state) {
  (void)state;
  need_emu();
  static const unsigned blocks[] = {32, 64, 256};
  for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
    unsigned block = blocks[k], grid = 5, n = grid * block;
    float x[5 * 256], out[5];
    for (unsigned i = 0; i < n; i++) x[i] = (float)((i * 7) % 23) - 11.0f;
    RtDevPtr dx = dalloc(n * sizeof *x), dout = dalloc(sizeof out);
    h2d(dx, x, n * sizeof *x);
    int64_t frame[3] = {n, (int64_t)dx, (int64_t)dout};
    launch_ok(K_BLOCK_SUM, grid, block, frame, 3);
    d2h(out, dout, sizeof out);
    for (unsigned b = 0; b < grid; b++) {
      float want = 0;
      for (unsigned i = 0; i < block; i++) want += x[b * block + i];
      if (out[b] != want)
        fail_msg("block %u of %u threads: sum %g, want %g", b, block, out[b], want);
    }
    g_dev.free(g_dev.ctx, dx);
    g_dev.free(g_dev.ctx, dout);
  }
  no_leaks();
}

/* An inclusive scan: per warp with __shfl_up_sync over 32 lanes, then over the
 * warps, against a serial prefix sum, for blocks of 32 to 256 threads. */
static void test_warp_scan(void **state) {
  (void)state;
  need_emu();
  static const unsigned blocks[] = {32, 64, 128, 256};
  for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
    unsigned block = blocks[k], grid = 2, n = grid * block;
    int x[2 * 256], warp_out[2 * 256], block_out[2 * 256];
    for (unsigned i = 0; i < n; i++) x[i] = (int)((i * 13 + k) % 11) - 4;
    RtDevPtr dx = dalloc(n * sizeof *x), dw = dalloc(n * sizeof *x), db = dalloc(n * sizeof *x);
    h2d(dx, x, n * sizeof *x);
    int64_t frame[4] = {n, (int64_t)dx, (int64_t)dw, (int64_t)db};
    launch_ok(K_BLOCK_SCAN, grid, block, frame, 4);
    d2h(warp_out, dw, n * sizeof *x);
    d2h(block_out, db, n * sizeof *x);
    for (unsigned b = 0; b < grid; b++) {
      int warp_sum = 0, block_sum = 0;
      for (unsigned t = 0; t < block; t++) {
        unsigned i = b * block + t;
        if (t % 32 == 0) warp_sum = 0;
        warp_sum += x[i];
        block_sum += x[i];
        if (warp_out[i] != warp_sum)
          fail_msg("block size %u, block %u, thread %u: warp scan %d, want %d", block, b, t,
                   warp_out[i], warp_sum);
        if (block_out[i] != block_sum)
          fail_msg("block size %u, block %u, thread %u: block scan %d, want %d", block, b, t,
                   block_out[i], block_sum);
      }
    }
    g_dev.free(g_dev.ctx, dx);
    g_dev.free(g_dev.ctx, dw);
    g_dev.free(g_dev.ctx, db);
  }
  no_leaks();
}

/* __shfl_down_sync, __shfl_xor_sync, __shfl_sync, __shfl_up_sync with a
 * width, a xor reduction, a ballot; CUDA's rules for lanes out of range. */
static void test_shuffles(void **state) {
  (void)state;
  need_emu();
  enum { BLOCK = 64 };
  float out[6 * BLOCK];
  int iout[BLOCK];
  RtDevPtr dout = dalloc(sizeof out), diout = dalloc(sizeof iout);
  int64_t frame[3] = {BLOCK, (int64_t)dout, (int64_t)diout};
  launch_ok(K_SHUFFLES, 1, BLOCK, frame, 3);
  d2h(out, dout, sizeof out);
  d2h(iout, diout, sizeof iout);
#define V(l) ((float)((unsigned)(l) * (unsigned)(l) % 97u))
  for (unsigned i = 0; i < BLOCK; i++) {
    unsigned lane = i % 32, w = i / 32 * 32;
    float warp_sum = 0;
    for (unsigned l = 0; l < 32; l++) warp_sum += V(w + l);
    unsigned seg = lane & ~7u;
    float want[6] = {
        lane + 3 < 32 ? V(i + 3) : V(i),   /* down 3: the top lanes keep theirs */
        V(w + (lane ^ 5)),                 /* xor 5 */
        V(w + 7),                          /* lane 7 of the warp */
        lane >= seg + 2 ? V(i - 2) : V(i), /* up 2 within groups of 8 */
        warp_sum,                          /* xor tree */
        8.0f,                              /* lanes with (i & 3) == 0 */
    };
    for (int j = 0; j < 6; j++)
      if (out[6 * i + j] != want[j])
        fail_msg("thread %u, result %d: %g, want %g", i, j, out[6 * i + j], want[j]);
    int iwant = (lane % 16) + 1 < 16 ? (int)(i + 1) * 3 : (int)i * 3; /* down 1, width 16 */
    assert_int_equal(iout[i], iwant);
  }
#undef V
  g_dev.free(g_dev.ctx, dout);
  g_dev.free(g_dev.ctx, diout);
  no_leaks();
}

/* A block of 48 threads whose threads 40.. return: warp 1 has 8 running
 * lanes, which shuffle among themselves with the full mask. */
static void test_partial_warp(void **state) {
  (void)state;
  need_emu();
  float out[2 * 48];
  RtDevPtr dout = dalloc(sizeof out);
  int64_t frame[2] = {48, (int64_t)dout};
  launch_ok(K_PARTIAL, 1, 48, frame, 2);
  d2h(out, dout, sizeof out);
  for (unsigned i = 0; i < 48; i++) {
    float sum = 0;
    for (unsigned j = i & ~7u; j < (i & ~7u) + 8; j++) sum += (float)j;
    float want_sum = i < 40 ? sum : 0.0f, want_votes = i < 32 ? 32.0f : i < 40 ? 8.0f : 0.0f;
    if (out[2 * i] != want_sum || out[2 * i + 1] != want_votes)
      fail_msg("thread %u: sum %g votes %g, want %g and %g", i, out[2 * i], out[2 * i + 1],
               want_sum, want_votes);
  }
  g_dev.free(g_dev.ctx, dout);
  no_leaks();
}

/* The frame as the executor builds it: in device memory, a count and device
 * addresses; the kernel's guard against threads past the count; atomics. */
static void test_frame(void **state) {
  (void)state;
  need_emu();
  enum { N = 300 };
  float p[N], got[N];
  for (int i = 0; i < N; i++) p[i] = (float)i * 0.25f;
  RtDevPtr dp = dalloc(sizeof p), dc = dalloc(3 * sizeof(int32_t));
  h2d(dp, p, sizeof p);
  RtError err = {{0}};
  assert_int_equal(g_dev.zero(g_dev.ctx, g_dev.stream, dc, 3 * sizeof(int32_t), &err), 0);
  int64_t frame[3] = {N, (int64_t)dp, (int64_t)dc};
  launch_ok(K_FRAME, (N + 127) / 128, 128, frame, 3);
  d2h(got, dp, sizeof got);
  for (int i = 0; i < N; i++) assert_float_equal(got[i], 2.0f * p[i] + 1.0f, 0);
  int32_t counts[3];
  d2h(counts, dc, sizeof counts);
  assert_int_equal(counts[0], N);
  assert_int_equal(counts[1], N - 1);
  float halves;
  memcpy(&halves, &counts[2], sizeof halves);
  assert_float_equal(halves, N * 0.5f, 0);

  /* Device-to-device copies; copies that leave an allocation fail. */
  RtDevPtr dq = dalloc(sizeof p);
  assert_int_equal(g_dev.copy(g_dev.ctx, g_dev.stream, dq, dp, sizeof p, RT_CU_D2D, &err), 0);
  memset(got, 0, sizeof got);
  d2h(got, dq, sizeof got);
  for (int i = 0; i < N; i++) assert_float_equal(got[i], 2.0f * p[i] + 1.0f, 0);
  assert_int_not_equal(g_dev.copy(g_dev.ctx, g_dev.stream, dq + 4, (RtDevPtr)(uintptr_t)p, sizeof p,
                                  RT_CU_H2D, &err),
                       0);
  assert_non_null(strstr(err.msg, "leaves the allocation"));
  /* A host address is not a frame. */
  assert_int_not_equal(
      g_dev.launch(g_dev.ctx, g_dev.stream, K_FRAME, 1, 32, (RtDevPtr)(uintptr_t)frame, &err), 0);
  assert_non_null(strstr(err.msg, "not device memory"));
  g_dev.free(g_dev.ctx, dp);
  g_dev.free(g_dev.ctx, dq);
  g_dev.free(g_dev.ctx, dc);
  no_leaks();
  g_dev.free(g_dev.ctx, dc); /* a double free is counted, not done */
  assert_int_equal(emu_bad_frees(g_mod), g_bad0 + 1);
  g_bad0++;
  /* 0 bytes is a valid address too. */
  RtDevPtr z = dalloc(0);
  g_dev.free(g_dev.ctx, z);
  no_leaks();
}

/* Shared memory is undefined at block start: the emulation fills it with
 * 0xff bytes before every block, so block 1 does not see block 0's 7s. */
static void test_shared_garbage(void **state) {
  (void)state;
  need_emu();
  unsigned out[2 * 64];
  RtDevPtr dout = dalloc(sizeof out);
  int64_t frame[2] = {2 * 64, (int64_t)dout};
  launch_ok(K_SHARED, 2, 64, frame, 2);
  d2h(out, dout, sizeof out);
  for (int i = 0; i < 2 * 64; i++) assert_int_equal(out[i], 0xffffffffu);
  g_dev.free(g_dev.ctx, dout);
  no_leaks();
}

/* The reverse order (emu_set_reverse) runs blocks and threads backwards:
 * reading another thread's write with no barrier between, or another
 * block's, gives other values than in index order; a barrier, and the
 * reductions above, give the same. */
static void run_probe(int64_t mode, int reverse, unsigned *out) {
  RtDevPtr dout = dalloc(2 * 2 * 64 * sizeof *out);
  int64_t frame[2] = {mode, (int64_t)dout};
  emu_set_reverse(g_mod, reverse);
  launch_ok(K_ORDER, 2, 64, frame, 2);
  emu_set_reverse(g_mod, 0);
  d2h(out, dout, 2 * 2 * 64 * sizeof *out);
  g_dev.free(g_dev.ctx, dout);
}

static void test_reverse_order(void **state) {
  (void)state;
  need_emu();
  unsigned fwd[256], rev[256];
  for (int64_t mode = 0; mode < 3; mode++) {
    run_probe(mode, 0, fwd);
    run_probe(mode, 1, rev);
    int differ = memcmp(fwd, rev, sizeof fwd) != 0;
    if (mode == 1) {
      assert_false(differ);
      for (unsigned i = 0; i < 128; i++) assert_int_equal(fwd[i], (i / 64) * 64 + (i + 1) % 64 + 1);
    } else if (!differ) {
      fail_msg("order_probe mode %lld: the same values in both orders", (long long)mode);
    }
  }
  /* Thread 0 of block 0 reads thread 1's slot before (index order) and
   * after (reverse) thread 1 writes it. */
  run_probe(0, 0, fwd);
  run_probe(0, 1, rev);
  assert_int_equal(fwd[0], 0xffffffffu);
  assert_int_equal(rev[0], 2);
  emu_set_reverse(g_mod, 1);
  test_block_sum(state);
  test_warp_scan(state);
  test_shuffles(state);
  emu_set_reverse(g_mod, 0);
  no_leaks();
}

/* ---- errors ------------------------------------------------------------------------ */

static void expect_launch_error(int kernel, unsigned grid, unsigned block, const char *needle) {
  int64_t frame[2] = {0, 0};
  RtDevPtr scratch = dalloc(64 * sizeof(float));
  frame[1] = (int64_t)scratch;
  RtError err = {{0}};
  assert_int_not_equal(launch(kernel, grid, block, frame, 2, &err), 0);
  if (!strstr(err.msg, needle)) fail_msg("expected '%s' in: %s", needle, err.msg);
  g_dev.free(g_dev.ctx, scratch);
}

static void test_errors(void **state) {
  (void)state;
  need_emu();
  char msg[512];
  long long host_frame[1] = {0};
  int64_t frame[1] = {0};
  /* An unknown name, straight to the module's launcher. */
  assert_int_not_equal(emu_launch_name(g_mod, "no_such_kernel", 1, 32, host_frame, msg, sizeof msg),
                       0);
  assert_non_null(strstr(msg, "unknown kernel 'no_such_kernel'"));
  assert_non_null(strstr(msg, "saxpy"));
  /* An index past the program's kernels. */
  RtError err = {{0}};
  assert_int_not_equal(launch(99, 1, 32, frame, 1, &err), 0);
  assert_non_null(strstr(err.msg, "no kernel 99"));
  /* Launch configurations CUDA rejects. */
  expect_launch_error(K_SAXPY, 1, 2048, "invalid launch configuration");
  expect_launch_error(K_SAXPY, 0, 32, "invalid launch configuration");
  /* Threads 40.. return while 0..39 wait at __syncthreads(). */
  expect_launch_error(K_DIVERGENT, 2, 64, "barrier in divergent code");
  /* Lane 3 returns; the others shuffle with it. */
  expect_launch_error(K_LANE, 1, 32, "lane 2 reads lane 3, which has returned");
  /* The module still works after a failed launch. */
  test_saxpy(state);
  no_leaks();
}

/* A name the source does not register; a source that does not compile. */
static void test_build_errors(void **state) {
  (void)state;
  need_emu();
  char msg[1024];
  EmuModule *m = NULL;
  const char *small = "extern \"C\" __global__ void k(const long long *F) { (void)F; }\n"
                      "SEQ_EMU_KERNELS_BEGIN\nSEQ_EMU_KERNEL(k)\nSEQ_EMU_KERNELS_END\n";
  const char *names[] = {"k", "missing"};
  assert_int_not_equal(emu_build(small, names, 2, &m, msg, sizeof msg), 0);
  assert_null(m);
  assert_non_null(strstr(msg, "kernel 'missing' is not in"));
  const char *bad = "extern \"C\" __global__ void k(const long long *F) { undeclared_x = 1; }\n";
  assert_int_not_equal(emu_build(bad, NULL, 0, &m, msg, sizeof msg), 0);
  assert_null(m);
  assert_non_null(strstr(msg, "undeclared_x"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_saxpy),          cmocka_unit_test(test_block_sum),
      cmocka_unit_test(test_warp_scan),      cmocka_unit_test(test_shuffles),
      cmocka_unit_test(test_partial_warp),   cmocka_unit_test(test_frame),
      cmocka_unit_test(test_shared_garbage), cmocka_unit_test(test_errors),
      cmocka_unit_test(test_build_errors),   cmocka_unit_test(test_reverse_order),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
