/* fuzz_forms.c - libFuzzer target for the passes that find parallel forms:
 * every program that compiles is rewritten and classified, its root dims
 * bound (all 1..3, chosen by the input's last byte), and under each strategy
 * (auto, scan, chunked, newton) its cells are rewritten into their parallel
 * forms (passes/scan.c, chunk.c, delta.c, transition.c, newton.c), which
 * must pass the IR verifier. A form that does not apply is a diagnostic;
 * nothing may crash, leak or trip a sanitizer, and what a pass returns must
 * verify (else the target aborts: a bug in the pass); then the forms are
 * scheduled (sched/), which may refuse with a diagnostic. Programs with
 * large instance trees are skipped.
 * Built only with -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "ir/support.h"
#include "passes/passes.h"
#include "sched/sched.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_VARS = 256 };

static void forms(Arena *a, IrModule *m, DiagEngine *de, int64_t dimval) {
  if (m->entry < 0 || m->entry >= m->funcs.n) return;
  IrModule *rw;
  ClassifyResult *cr;
  if (rewrite_module(a, m, &rw, de)) return;
  if (ir_verify(rw, de, "rewrite")) abort(); /* the passes' output must verify */
  if (classify_module(a, rw, &cr, de)) return;
  IrBinding b;
  if (ir_binding_init(&b, a, m, m->funcs.v[m->entry], de)) return;
  if (b.flat.params.n + b.flat.states.n > MAX_VARS) return;
  const IrFunc *root = b.root;
  for (int i = 0; i < root->dims.n; i++)
    if (ir_binding_set_dim(&b, root->dims.v[i].name, dimval, de)) return;
  if (ir_binding_infer(&b, NULL, NULL, NULL, NULL, de)) return;
  /* Newton twice more: with a dense Jacobian formed whole, and in windows
   * (the model then in time chunks of the window). */
  static const char *const strategies[] = {"auto", "scan", "chunked", "newton", "newton", "newton"};
  for (size_t k = 0; k < sizeof strategies / sizeof strategies[0]; k++) {
    StrategyRequest req;
    char err[256];
    StrategyPlan *plan;
    IrModule *par, *chunked;
    if (strategy_parse(a, strategies[k], &req, err, sizeof err)) abort();
    req.newton.dense = k == 4;
    req.newton.window = k == 5 ? 5 : 0;
    if (strategy_choose(a, rw, rw->funcs.v[m->entry], b.dims, cr, &req, NULL, &plan, de)) continue;
    if (scan_module(a, rw, cr, plan, &par, de)) continue;
    if (ir_verify(par, de, "scan")) abort();
    if (chunk_module(a, par, plan, &chunked, de)) continue;
    if (ir_verify(chunked, de, "chunk")) abort();
    IrModule *ordered;
    if (order_module(a, chunked, &ordered, de)) continue;
    if (ir_verify(ordered, de, "order")) abort();
    /* The schedule of the forms: refusals are diagnostics. */
    Schedule *sched;
    (void)sched_build(a, ordered, ordered->funcs.v[ordered->entry], b.dims, "fuzz", 0, &sched, de);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Arena *a = arena_create();
  if (!a) return 0;
  char *text = arena_alloc(a, size + 1);
  if (!text) {
    arena_destroy(a);
    return 0;
  }
  memcpy(text, data, size);
  SrcMgr sm;
  DiagEngine de;
  srcmgr_init(&sm, a);
  diag_init(&de, a, NULL);
  IrModule *m = seq_compile_string(a, &sm, &de, "fuzz.seq", text, NULL);
  if (m && de.nerrors == 0) forms(a, m, &de, size ? 1 + data[size - 1] % 3 : 2);
  arena_destroy(a);
  return 0;
}
