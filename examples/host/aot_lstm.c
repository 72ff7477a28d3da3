/* aot_lstm.c - link an LSTM compiled ahead of time and call it through the
 * header seqc wrote beside it. The program needs neither libseq nor LLVM:
 *
 *   seqc lstm.seq --weights lstm_weights.safetensors -o liblstm.so   (and liblstm.h)
 *   cc aot_lstm.c -I. -L. -llstm -o aot_lstm
 *   ./aot_lstm lstm_weights.safetensors lstm_x.npy lstm_y.npy
 *
 * It runs the whole sequence with lstm_forward, then token by token with
 * lstm_step, and checks both against PyTorch's output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_io.h"
#include "liblstm.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s WEIGHTS.safetensors X.npy Y.npy\n", argv[0]);
    return 2;
  }
  /* Weights: plain float pointers, named as in the checkpoint (one-layer
   * PyTorch names end in _l0). Their shapes were fixed at compile time. */
  int64_t n[4];
  lstm_params p = {
      .weight_ih = read_safetensor(argv[1], "weight_ih_l0", &n[0]),
      .weight_hh = read_safetensor(argv[1], "weight_hh_l0", &n[1]),
      .bias_ih = read_safetensor(argv[1], "bias_ih_l0", &n[2]),
      .bias_hh = read_safetensor(argv[1], "bias_hh_l0", &n[3]),
  };
  if (!p.weight_ih || !p.weight_hh || !p.bias_ih || !p.bias_hh ||
      n[0] + n[1] + n[2] + n[3] != LSTM_PARAM_FLOATS) {
    fprintf(stderr, "%s does not hold this LSTM's weights\n", argv[1]);
    return 1;
  }
  int nx, ny;
  int64_t xs[8], ys[8];
  float *x = read_npy(argv[2], &nx, xs), *want = read_npy(argv[3], &ny, ys);
  if (!x || !want || nx != 3 || ny != 3 || xs[2] != LSTM_DIM_I || ys[2] != LSTM_DIM_H) {
    fprintf(stderr, "%s or %s is not [B, T, %lld] / [B, T, %lld] float32\n", argv[2], argv[3],
            LSTM_DIM_I, LSTM_DIM_H);
    return 1;
  }
  int64_t B = xs[0], T = xs[1];

  /* The whole sequence at once. */
  float *y = calloc((size_t)(B * T * LSTM_DIM_H), sizeof(float));
  lstm_inputs in = {.x = x};
  lstm_outputs out = {.y = y};
  int32_t st = lstm_forward(&p, B, T, &in, NULL, NULL, &out, NULL);
  if (st != LSTM_OK) {
    fprintf(stderr, "lstm_forward failed with status %d\n", st);
    return 1;
  }
  double err = max_abs_diff(y, want, B * T * LSTM_DIM_H);

  /* Token by token: the state out of one step is the state into the next. */
  float *xt = malloc(sizeof(float) * (size_t)(B * LSTM_DIM_I));
  float *yt = malloc(sizeof(float) * (size_t)(B * LSTM_DIM_H));
  float *h = calloc((size_t)(B * LSTM_DIM_H), sizeof(float));
  float *c = calloc((size_t)(B * LSTM_DIM_H), sizeof(float));
  lstm_states_in sin = {.h = h, .c = c};
  lstm_states_out sout = {.h = h, .c = c};
  double step_err = 0;
  for (int64_t t = 0; t < T && st == LSTM_OK; t++) {
    for (int64_t b = 0; b < B; b++)
      memcpy(xt + b * LSTM_DIM_I, x + (b * T + t) * LSTM_DIM_I, sizeof(float) * LSTM_DIM_I);
    lstm_inputs tin = {.x = xt};
    lstm_outputs tout = {.y = yt};
    st = lstm_step(&p, B, &tin, &sin, &tout, &sout);
    for (int64_t b = 0; b < B; b++) {
      double e = max_abs_diff(yt + b * LSTM_DIM_H, want + (b * T + t) * LSTM_DIM_H, LSTM_DIM_H);
      if (e > step_err) step_err = e;
    }
  }
  printf("LSTM B=%lld T=%lld: max abs error vs PyTorch %.3g (forward), %.3g (step by step)\n",
         (long long)B, (long long)T, err, step_err);
  free((void *)p.weight_ih);
  free((void *)p.weight_hh);
  free((void *)p.bias_ih);
  free((void *)p.bias_hh);
  free(x);
  free(want);
  free(y);
  free(xt);
  free(yt);
  free(h);
  free(c);
  return st == LSTM_OK && err <= 1e-5 && step_err <= 1e-5 ? 0 : 1;
}
