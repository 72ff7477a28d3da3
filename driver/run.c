/* run.c - adapters between RtTensors / IrBindings and the generated ABI. */
#include "driver/run.h"

#include <string.h>

void drv_weights_free(DrvWeights *w) {
  if (!w->data) return;
  for (int i = 0; i < w->n; i++) seq_free(w->data[i]);
  seq_free(w->data);
  w->data = NULL;
  w->n = 0;
}

int drv_weights_from_binding(const AbiSignature *sig, const IrBinding *b, DrvWeights *w,
                            DiagEngine *de) {
  w->n = sig->params.n;
  w->data = seq_malloc(sizeof(float *) * (size_t)(w->n + 1));
  if (!w->data) {
    diag_error(de, (SrcLoc){0}, "out of memory copying weights");
    return -1;
  }
  memset(w->data, 0, sizeof(float *) * (size_t)(w->n + 1));
  for (int i = 0; i < w->n; i++) {
    const AbiTensor *p = &sig->params.v[i];
    int k = -1;
    for (int j = 0; j < b->flat.params.n; j++)
      if (strcmp(b->flat.params.v[j].name, p->name) == 0) k = j;
    if (k < 0 || !b->weights || !b->weights[k].data) {
      diag_error(de, (SrcLoc){0}, "no weight bound for parameter %s", p->name);
      drv_weights_free(w);
      return -1;
    }
    const RtTensor *t = &b->weights[k];
    if (rt_numel(t) != p->numel) {
      diag_error(de, (SrcLoc){0}, "weight %s has %lld elements, the compiled code expects %lld",
                 p->name, (long long)rt_numel(t), (long long)p->numel);
      drv_weights_free(w);
      return -1;
    }
    RtTensor f;
    RtError err;
    if (rt_tensor_convert(t, RT_F32, &f, &err)) {
      diag_error(de, (SrcLoc){0}, "%s", err.msg);
      drv_weights_free(w);
      return -1;
    }
    w->data[i] = seq_malloc(sizeof(float) * (size_t)(p->numel ? p->numel : 1));
    if (!w->data[i]) {
      rt_tensor_free(&f);
      diag_error(de, (SrcLoc){0}, "out of memory copying weights");
      drv_weights_free(w);
      return -1;
    }
    memcpy(w->data[i], f.data, sizeof(float) * (size_t)p->numel);
    rt_tensor_free(&f);
  }
  return 0;
}

/* Index in the binding's flat states of the signature's state i. */
static int flat_state(const IrBinding *b, const char *name) {
  for (int j = 0; j < b->flat.states.n; j++)
    if (strcmp(b->flat.states.v[j].name, name) == 0) return j;
  return -1;
}

int drv_run(const AbiSignature *sig, AbiForwardFn fn, const DrvWeights *w, const IrBinding *b,
           int64_t B, int64_t T, const RtTensor *inputs, const int64_t *lengths,
           const RtTensor *state_in, RtTensor *outputs, RtTensor *state_out, DiagEngine *de) {
  int rc = -1;
  RtError err;
  int ni = sig->inputs.n, no = sig->outputs.n, ns = sig->states.n;
  RtTensor *conv = seq_malloc(sizeof(RtTensor) * (size_t)(ni + 1));
  const void **in_ptrs = seq_malloc(sizeof(void *) * (size_t)(ni + 1));
  float **out_ptrs = seq_malloc(sizeof(float *) * (size_t)(no + 1));
  const float **sin = seq_malloc(sizeof(float *) * (size_t)(ns + 1));
  float **sout = seq_malloc(sizeof(float *) * (size_t)(ns + 1));
  RtTensor *sconv = seq_malloc(sizeof(RtTensor) * (size_t)(ns + 1));
  int32_t *len32 = seq_malloc(sizeof(int32_t) * (size_t)(B + 1));
  if (!conv || !in_ptrs || !out_ptrs || !sin || !sout || !sconv || !len32) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    goto done;
  }
  memset(conv, 0, sizeof(RtTensor) * (size_t)(ni + 1));
  memset(sconv, 0, sizeof(RtTensor) * (size_t)(ns + 1));
  for (int o = 0; o < no; o++) memset(&outputs[o], 0, sizeof(RtTensor));
  for (int i = 0; i < ni; i++) {
    if (rt_tensor_convert(&inputs[i], sig->inputs.v[i].is_int ? RT_F64 : RT_F32, &conv[i], &err)) {
      diag_error(de, (SrcLoc){0}, "input %s: %s", sig->inputs.v[i].name, err.msg);
      goto done;
    }
    if (sig->inputs.v[i].is_int) {
      /* Tokens travel as int32 (docs/abi.md); out-of-int32 values become -1,
       * which the generated code reports as out of range. */
      int64_t n = rt_numel(&conv[i]);
      double *d = conv[i].data;
      int32_t *q = (int32_t *)conv[i].data;
      for (int64_t k = 0; k < n; k++) q[k] = d[k] >= 0 && d[k] < 2147483647.0 ? (int32_t)d[k] : -1;
    }
    if (rt_numel(&conv[i]) != B * T * sig->inputs.v[i].numel) {
      diag_error(de, (SrcLoc){0}, "input %s has %lld elements, expected B*T*%lld",
                 sig->inputs.v[i].name, (long long)rt_numel(&conv[i]),
                 (long long)sig->inputs.v[i].numel);
      goto done;
    }
    in_ptrs[i] = conv[i].data;
  }
  for (int o = 0; o < no; o++) {
    const AbiTensor *t = &sig->outputs.v[o];
    int64_t shape[RT_MAX_RANK];
    shape[0] = B;
    shape[1] = T;
    for (int d = 0; d < t->ndim; d++) shape[2 + d] = t->shape[d];
    if (t->ndim + 2 > RT_MAX_RANK ||
        rt_tensor_alloc(&outputs[o], RT_F32, t->ndim + 2, shape, &err)) {
      diag_error(de, (SrcLoc){0}, "output %s: cannot allocate", t->name);
      goto done;
    }
    out_ptrs[o] = outputs[o].data;
  }
  for (int s = 0; s < ns; s++) {
    int k = flat_state(b, sig->states.v[s].name);
    sin[s] = NULL;
    sout[s] = NULL;
    if (state_in && k >= 0 && state_in[k].data) {
      if (rt_tensor_convert(&state_in[k], RT_F32, &sconv[s], &err) ||
          rt_numel(&sconv[s]) != B * sig->states.v[s].numel) {
        diag_error(de, (SrcLoc){0}, "initial state %s has the wrong size", sig->states.v[s].name);
        goto done;
      }
      sin[s] = sconv[s].data;
    }
    if (state_out && k >= 0) {
      const AbiTensor *t = &sig->states.v[s];
      int64_t shape[RT_MAX_RANK];
      shape[0] = B;
      for (int d = 0; d < t->ndim; d++) shape[1 + d] = t->shape[d];
      if (rt_tensor_alloc(&state_out[k], RT_F32, t->ndim + 1, shape, &err)) {
        diag_error(de, (SrcLoc){0}, "state %s: cannot allocate", t->name);
        goto done;
      }
      sout[s] = state_out[k].data;
    }
  }
  if (lengths)
    for (int64_t i = 0; i < B; i++) {
      if (lengths[i] < 0 || lengths[i] > T) {
        diag_error(de, (SrcLoc){0}, "length %lld of sequence %lld is outside [0, %lld]",
                   (long long)lengths[i], (long long)i, (long long)T);
        goto done;
      }
      len32[i] = (int32_t)lengths[i];
    }
  int st = fn((const float *const *)w->data, B, T, in_ptrs, lengths ? len32 : NULL,
              (const float *const *)sin, out_ptrs, state_out ? sout : NULL);
  if (st != 0) {
    diag_error(de, (SrcLoc){0}, "compiled %s failed: %s", sig->func, abi_status_message(st));
    goto done;
  }
  rc = 0;
done:
  for (int i = 0; conv && i < ni; i++) rt_tensor_free(&conv[i]);
  for (int s = 0; sconv && s < ns; s++) rt_tensor_free(&sconv[s]);
  seq_free(conv);
  seq_free(in_ptrs);
  seq_free(out_ptrs);
  seq_free(sin);
  seq_free(sout);
  seq_free(sconv);
  seq_free(len32);
  return rc;
}
