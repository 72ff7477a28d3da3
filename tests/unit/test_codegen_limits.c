/* test_codegen_limits.c - the CPU backend on inputs that are large in one
 * direction. A step that is a chain of thousands of elementwise ops once put
 * every op in one fused element loop, and LLVM's per-loop work grew faster
 * than the loop (2000 ops: 7 s, 10000: minutes); codegen/lower.c now caps a
 * fused run (FUSED_RUN_MAX). The chain here must compile in seconds through
 * the public API (include/seq.h) and match the reference interpreter. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "seq.h"

enum { CHAIN = 2000, B = 2, T = 5, H = 16 };

/* h' = f_N(...f_1(x + h)), f alternately a + 1 - 0.75 * a (contracting, so
 * the value stays bounded) and tanh: 2 ops or 1 op per link, N ops in all. */
static char *chain_source(int n) {
  size_t cap = 256 + (size_t)n * 64;
  char *s = malloc(cap);
  assert_non_null(s);
  size_t len = (size_t)snprintf(s, cap,
                                "cell Chain(H) {\n  input x: [H]\n  state h: [H] = 0\n"
                                "  output y: [H]\n  step {\n    let a0 = x + h\n");
  int ops = 0, i = 0;
  while (ops < n) {
    i++;
    if (i % 2 == 0 || n - ops < 2) {
      len += (size_t)snprintf(s + len, cap - len, "    let a%d = tanh(a%d)\n", i, i - 1);
      ops += 1;
    } else {
      len += (size_t)snprintf(s + len, cap - len, "    let a%d = a%d * 0.25 + 1\n", i, i - 1);
      ops += 2;
    }
  }
  snprintf(s + len, cap - len, "    h' = a%d\n    y = a%d\n  }\n}\n", i, i);
  return s;
}

static void test_codegen_long_elementwise_chain(void **st) {
  (void)st;
  char *src = chain_source(CHAIN);
  float x[B * T * H], y[B * T * H], hout[B * H];
  for (int k = 0; k < B * T * H; k++) x[k] = sinf(0.37f * (float)k);

  /* The compiled path, timed: the cap makes it linear in the chain. */
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  SeqContext *cx = seq_context_create();
  assert_non_null(cx);
  SeqOptions opt = {.opt_level = 2, .dims = "H=16", .num_threads = 1};
  SeqModule *m = NULL;
  if (seq_module_from_string(cx, "chain.seq", src, &opt, &m) != SEQ_OK)
    fail_msg("compile: %s", m ? seq_module_error(m) : "out of memory");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  print_message("%d-op chain: JIT compile %.2f s\n", CHAIN, secs);
  /* Generous for a loaded or sanitized build; before the cap it took 7 s
   * unloaded at -O0 of the compiler, growing like N^1.5. */
  assert_true(secs < 60.0);
  const void *ins[1] = {x};
  float *outs[1] = {y}, *souts[1] = {hout};
  assert_int_equal(seq_module_forward(m, B, T, ins, NULL, NULL, outs, souts), SEQ_OK);
  seq_module_destroy(m);
  seq_context_destroy(cx);

  /* The reference interpreter on the same source. */
  Arena *a = arena_create();
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, stderr);
  IrModule *mod = seq_compile_string(a, &sm, &de, "chain.seq", src, NULL);
  assert_non_null(mod);
  const IrFunc *root = mod->funcs.v[mod->entry];
  IrBinding bind;
  assert_int_equal(ir_binding_init(&bind, a, mod, root, &de), 0);
  assert_int_equal(ir_binding_set_dim(&bind, "H", H, &de), 0);
  assert_int_equal(ir_binding_infer(&bind, NULL, NULL, NULL, NULL, &de), 0);
  RtTensor in = {0}, out[1], sout[1];
  RtError err;
  int64_t shape[3] = {B, T, H};
  assert_int_equal(rt_tensor_alloc(&in, RT_F32, 3, shape, &err), 0);
  memcpy(in.data, x, sizeof x);
  InterpOptions io = {0};
  assert_int_equal(interp_run(&bind, B, T, &in, NULL, NULL, out, sout, &io, &de), 0);
  RtTensor yref, href;
  assert_int_equal(rt_tensor_convert(&out[0], RT_F32, &yref, &err), 0);
  assert_int_equal(rt_tensor_convert(&sout[0], RT_F32, &href, &err), 0);
  const float *yr = yref.data, *hr = href.data;
  for (int k = 0; k < B * T * H; k++)
    if (fabsf(y[k] - yr[k]) > 1e-4f * (1 + fabsf(yr[k])))
      fail_msg("y[%d] = %g, interpreter %g", k, (double)y[k], (double)yr[k]);
  for (int k = 0; k < B * H; k++)
    if (fabsf(hout[k] - hr[k]) > 1e-4f * (1 + fabsf(hr[k])))
      fail_msg("h[%d] = %g, interpreter %g", k, (double)hout[k], (double)hr[k]);
  rt_tensor_free(&yref);
  rt_tensor_free(&href);
  rt_tensor_free(&out[0]);
  rt_tensor_free(&sout[0]);
  rt_tensor_free(&in);
  arena_destroy(a);
  free(src);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_codegen_long_elementwise_chain),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
