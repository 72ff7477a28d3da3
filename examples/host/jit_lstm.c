/* jit_lstm.c - compile examples/lstm.seq inside a host program with libseq
 * (include/seq.h), bind a PyTorch LSTM's weights from safetensors, run it and
 * compare with PyTorch's output.
 *
 *   cc jit_lstm.c $(pkg-config --cflags --libs seq) -o jit_lstm
 *   ./jit_lstm lstm.seq lstm_weights.safetensors lstm_x.npy lstm_y.npy
 */
#include <stdio.h>
#include <stdlib.h>

#include "host_io.h"
#include "seq.h"

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s MODEL.seq WEIGHTS.safetensors X.npy Y.npy\n", argv[0]);
    return 2;
  }
  SeqContext *cx = seq_context_create();
  /* The weights give the dims (I, H) and are bound as the module is built. */
  SeqOptions opt = {.opt_level = 2, .weights_path = argv[2]};
  SeqModule *m = NULL;
  if (seq_module_from_file(cx, argv[1], &opt, &m) != SEQ_OK) {
    for (int i = 0; i < seq_module_diag_count(m); i++) {
      const SeqDiagnostic *d = seq_module_diag(m, i);
      fprintf(stderr, "%s:%d:%d: %s\n", d->file ? d->file : "?", d->line, d->col, d->message);
    }
    fprintf(stderr, "compile failed: %s\n", seq_module_error(m));
    seq_module_destroy(m);
    seq_context_destroy(cx);
    return 1;
  }

  /* x is [B, T, I]; y is [B, T, H]. */
  int nx, ny;
  int64_t xs[8], ys[8];
  float *x = read_npy(argv[3], &nx, xs), *want = read_npy(argv[4], &ny, ys);
  if (!x || !want || nx != 3 || ny != 3) {
    fprintf(stderr, "cannot read %s or %s as float32 [B, T, ...]\n", argv[3], argv[4]);
    return 1;
  }
  int64_t B = ys[0], T = ys[1], n = B * T * ys[2];
  float *y = calloc((size_t)n, sizeof(float));
  float *hT = calloc((size_t)(B * ys[2]), sizeof(float));

  /* One pointer per input, output and state, in the module's order (x; y;
   * h, c): no lengths (every sequence has T tokens), zero initial state, and
   * only the final h wanted. */
  const void *inputs[] = {x};
  float *outputs[] = {y};
  float *state_out[] = {hT, NULL};
  if (seq_module_forward(m, B, T, inputs, NULL, NULL, outputs, state_out) != SEQ_OK) {
    fprintf(stderr, "forward failed: %s\n", seq_module_error(m));
    return 1;
  }

  double err = max_abs_diff(y, want, n);
  /* The final h is the last output of each sequence. */
  double herr = max_abs_diff(hT, want + (T - 1) * ys[2], ys[2]);
  printf("LSTM B=%lld T=%lld: max abs error vs PyTorch %.3g (final h of sequence 0: %.3g)\n",
         (long long)B, (long long)T, err, herr);
  free(x);
  free(want);
  free(y);
  free(hT);
  seq_module_destroy(m);
  seq_context_destroy(cx);
  return err <= 1e-5 && herr <= 1e-5 ? 0 : 1;
}
