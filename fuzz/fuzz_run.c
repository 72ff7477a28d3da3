/* fuzz_run.c - libFuzzer target for what follows the frontend: every program
 * that compiles is bound (all root dims 1..3, chosen by the input's last byte;
 * seeded random weights) and run through the reference interpreter on a small
 * batch with per-sequence lengths. Binding and running may fail with a
 * diagnostic (a dim that cannot be inferred, a token index out of range) but
 * never crash, leak or trip a sanitizer. Programs whose weights or instance
 * trees are large are skipped: they are valid, just not worth a fuzzer's time.
 * Built only with -DSEQ_FUZZ=ON. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/interp.h"
#include "ir/support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { FUZZ_B = 2, FUZZ_T = 3, MAX_ELEMS = 1 << 14, MAX_VARS = 256 };

/* Elements in a tensor of type t under the binding, or -1 if too many or unknown. */
static int64_t elems(const IrBinding *b, IrType t) {
  int64_t shape[SEQ_MAX_RANK], n = 1;
  if (ir_binding_shape(b, t, shape)) return -1;
  for (int i = 0; i < t.rank; i++) {
    if (shape[i] > MAX_ELEMS) return -1;
    n *= shape[i];
    if (n > MAX_ELEMS) return -1;
  }
  return n;
}

static void run_entry(Arena *a, IrModule *m, DiagEngine *de, int64_t dimval) {
  if (m->entry < 0 || m->entry >= m->funcs.n) return;
  IrBinding b;
  if (ir_binding_init(&b, a, m, m->funcs.v[m->entry], de)) return;
  const IrFunc *root = b.root;
  if (b.flat.params.n + b.flat.states.n > MAX_VARS) return;
  for (int i = 0; i < root->dims.n; i++)
    if (ir_binding_set_dim(&b, root->dims.v[i].name, dimval, de)) return;
  if (ir_binding_infer(&b, NULL, NULL, NULL, NULL, de)) return;
  for (int i = 0; i < b.flat.params.n; i++)
    if (elems(&b, b.flat.params.v[i].type) < 0) return;
  for (int i = 0; i < b.flat.states.n; i++)
    if (elems(&b, b.flat.states.v[i].type) < 0) return;
  if (ir_binding_random(&b, 1, de)) return;

  int ni = root->inputs.n;
  RtTensor ins[16];
  if (ni > 16 || root->outputs.n > 64) return;
  RtError err;
  int ok = 1, made = 0;
  for (int i = 0; i < ni && ok; i++) {
    IrType t = root->inputs.v[i].type;
    int lead = root->inputs.v[i].context ? 1 : 2; /* a context has no time axis */
    int64_t shape[RT_MAX_RANK] = {FUZZ_B, FUZZ_T};
    if (t.rank + lead + (t.elem == IR_COMPLEX) > RT_MAX_RANK || elems(&b, t) < 0 ||
        ir_binding_shape(&b, t, shape + lead)) {
      ok = 0;
      break;
    }
    int nd = t.rank + lead;
    if (t.elem == IR_COMPLEX) shape[nd++] = 2;
    RtDType dt = t.elem == IR_INT ? RT_I64 : RT_F32;
    if (rt_tensor_alloc(&ins[i], dt, nd, shape, &err)) {
      ok = 0;
      break;
    }
    made++;
    int64_t n = rt_numel(&ins[i]);
    for (int64_t k = 0; k < n; k++) {
      if (dt == RT_I64)
        ((int64_t *)ins[i].data)[k] = k % 2;
      else
        ((float *)ins[i].data)[k] = (float)((k % 7) - 3) * 0.25f;
    }
  }
  if (ok) {
    RtTensor outs[64];
    RtTensor *states = arena_calloc(a, (size_t)b.flat.states.n + 1, sizeof *states);
    int64_t lengths[FUZZ_B] = {FUZZ_T, 1};
    InterpOptions opt = {.check_finite = 1};
    if (states && interp_run(&b, FUZZ_B, FUZZ_T, ins, lengths, NULL, outs, states, &opt, de) == 0) {
      for (int k = 0; k < root->outputs.n; k++) rt_tensor_free(&outs[k]);
      for (int k = 0; k < b.flat.states.n; k++) rt_tensor_free(&states[k]);
    }
  }
  for (int i = 0; i < made; i++) rt_tensor_free(&ins[i]);
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
  if (m && de.nerrors == 0) run_entry(a, m, &de, size ? 1 + data[size - 1] % 3 : 2);
  arena_destroy(a);
  return 0;
}
