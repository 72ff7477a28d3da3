/* run.c - adapters between RtTensors / IrBindings and the generated ABI. */
#include "driver/run.h"

#include <math.h>
#include <stdio.h>
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

/* The first token of input t (values v, [B, T]) the interpreter would
 * refuse, in its order (example by example, step by step, only steps before
 * each sequence's length); reported in its words at the embedding lookup.
 * Returns -1 after a diagnostic, 0 when every token is fine. */
int drv_check_tokens(const AbiTensor *t, const double *v, int64_t B, int64_t T,
                     const int64_t *lengths, DiagEngine *de) {
  for (int64_t b = 0; b < B; b++) {
    int64_t len = lengths ? lengths[b] : T;
    for (int64_t s = 0; s < len; s++) {
      double x = v[b * T + s];
      if (!(x == floor(x))) { /* also NaN and infinities */
        diag_error(de, t->vocab_loc, "token index %g is not an integer at batch %lld, step %lld", x,
                   (long long)b, (long long)s);
        return -1;
      }
      if (x < 0 || (t->vocab > 0 && x >= (double)t->vocab) || x > 2147483647.0) {
        if (t->vocab > 0)
          diag_error(de, t->vocab_loc,
                     "token index %.0f out of range [0, %lld) at batch %lld, step %lld", x,
                     (long long)t->vocab, (long long)b, (long long)s);
        else
          diag_error(de, t->vocab_loc,
                     "token index %.0f of input %s out of range at batch %lld, "
                     "step %lld",
                     x, t->name, (long long)b, (long long)s);
        return -1;
      }
    }
  }
  return 0;
}

/* Index in the binding's flat states of the signature's state i. */
static int flat_state(const IrBinding *b, const char *name) {
  for (int j = 0; j < b->flat.states.n; j++)
    if (strcmp(b->flat.states.v[j].name, name) == 0) return j;
  return -1;
}

/* "[2, 3, 4]" */
static const char *shape_text(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = 0;
  buf[k++] = '[';
  for (int d = 0; d < ndim && k + 24 < n; d++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
  snprintf(buf + k, n - k, "]");
  return buf;
}

/* A tensor handed to compiled code must have the interface's shape behind
 * the lead axes ([B, T] for inputs, [B] for states) and a real dtype (an int
 * input also takes integers): checked as the interpreter checks it, with
 * its words, so both backends refuse the same arguments the same way. */
static int check_tensor(const char *what, const AbiTensor *t, int nlead, const int64_t *lead,
                        SrcLoc loc, const RtTensor *x, DiagEngine *de) {
  int64_t want[RT_MAX_RANK];
  int n = t->is_int ? 0 : t->ndim;
  if (nlead + n > RT_MAX_RANK) {
    diag_error(de, loc, "%s '%s' does not fit a tensor of rank %d", what, t->name, RT_MAX_RANK);
    return -1;
  }
  memcpy(want, lead, sizeof(int64_t) * (size_t)nlead);
  memcpy(want + nlead, t->shape, sizeof(int64_t) * (size_t)n);
  n += nlead;
  if (x->dtype != RT_F32 && x->dtype != RT_F64 &&
      !(t->is_int && (x->dtype == RT_I32 || x->dtype == RT_I64))) {
    diag_error(de, loc, "%s '%s' has dtype %s; expected f32 or f64%s", what, t->name,
               rt_dtype_name(x->dtype), t->is_int ? " (or i32, i64)" : "");
    return -1;
  }
  if (x->ndim != n || memcmp(x->shape, want, sizeof(int64_t) * (size_t)n) != 0) {
    char got_s[256], want_s[256];
    diag_error(de, loc, "%s '%s' has shape %s but expected %s", what, t->name,
               shape_text(got_s, sizeof got_s, x->ndim, x->shape),
               shape_text(want_s, sizeof want_s, n, want));
    return -1;
  }
  return 0;
}

/* Tokens travel as int32 (docs/abi.md). They are checked first as the
 * interpreter checks them (a float token file holding 1.5 is refused, not
 * truncated); steps past a sequence's length, which the interpreter never
 * reads, become token 0, so the compiled lookups accept what it accepts. */
static int tokens_to_int32(const AbiTensor *t, RtTensor *conv, int64_t B, int64_t T,
                           const int64_t *lengths, DiagEngine *de) {
  double *d = conv->data;
  if (drv_check_tokens(t, d, B, T, lengths, de)) return -1;
  int32_t *q = (int32_t *)conv->data;
  for (int64_t b = 0; b < B; b++) {
    int64_t len = lengths ? lengths[b] : T;
    for (int64_t s = 0; s < T; s++) {
      int64_t k = b * T + s; /* q[k] overwrites d[k]'s first half, read already */
      q[k] = s < len ? (int32_t)d[k] : 0;
    }
  }
  return 0;
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
  if (lengths)
    for (int64_t i = 0; i < B; i++) {
      if (lengths[i] < 0 || lengths[i] > T) {
        diag_error(de, (SrcLoc){0}, "lengths[%lld] = %lld is outside [0, T] = [0, %lld]",
                   (long long)i, (long long)lengths[i], (long long)T);
        goto done;
      }
      len32[i] = (int32_t)lengths[i];
    }
  int64_t lead[2] = {B, T};
  for (int i = 0; i < ni; i++) {
    const AbiTensor *t = &sig->inputs.v[i];
    SrcLoc loc = i < b->root->inputs.n ? b->root->inputs.v[i].loc : (SrcLoc){0};
    int64_t per = t->context ? 1 : T; /* a context has no time axis */
    if (check_tensor(t->context ? "context" : "input", t, t->context ? 1 : 2, lead, loc, &inputs[i],
                     de))
      goto done;
    if (rt_tensor_convert(&inputs[i], sig->inputs.v[i].is_int ? RT_F64 : RT_F32, &conv[i], &err)) {
      diag_error(de, (SrcLoc){0}, "input %s: %s", sig->inputs.v[i].name, err.msg);
      goto done;
    }
    if (rt_numel(&conv[i]) != B * per * sig->inputs.v[i].numel) {
      diag_error(de, (SrcLoc){0}, "input %s has %lld elements, expected B*%s%lld",
                 sig->inputs.v[i].name, (long long)rt_numel(&conv[i]), t->context ? "" : "T*",
                 (long long)sig->inputs.v[i].numel);
      goto done;
    }
    if (sig->inputs.v[i].is_int && t->context) {
      /* An int context: a length per example, exact integers. */
      const double *d = conv[i].data;
      int32_t *q = (int32_t *)conv[i].data;
      for (int64_t b = 0; b < B; b++) {
        if (!(d[b] >= 0 && d[b] <= 2147483647.0) || d[b] != (double)(int64_t)d[b]) {
          diag_error(de, loc, "context %s[%lld] = %g is not a length (an integer >= 0)", t->name,
                     (long long)b, d[b]);
          goto done;
        }
        q[b] = (int32_t)d[b]; /* q[b] overwrites d[b]'s first half, read already */
      }
    } else if (sig->inputs.v[i].is_int &&
               tokens_to_int32(&sig->inputs.v[i], &conv[i], B, T, lengths, de))
      goto done;
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
      if (check_tensor("initial state", &sig->states.v[s], 1, lead, b->flat.states.v[k].loc,
                       &state_in[k], de))
        goto done;
      if (rt_tensor_convert(&state_in[k], RT_F32, &sconv[s], &err)) {
        diag_error(de, b->flat.states.v[k].loc, "initial state '%s': %s", sig->states.v[s].name,
                   err.msg);
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
