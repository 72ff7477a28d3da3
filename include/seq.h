/* seq.h - the seqc JIT API (libseq). Compile a .seq model inside a host
 * program, bind its weights, and run it on the host's buffers.
 *
 *   SeqContext *cx = seq_context_create();
 *   SeqOptions opt = {.opt_level = 2, .weights_path = "lstm.safetensors"};
 *   SeqModule *m = NULL;
 *   if (seq_module_from_file(cx, "lstm.seq", &opt, &m) != SEQ_OK)
 *     for (int i = 0; i < seq_module_diag_count(m); i++) ... seq_module_diag(m, i) ...
 *   seq_module_forward(m, B, T, inputs, NULL, NULL, outputs, NULL);
 *   seq_module_destroy(m); seq_context_destroy(cx);
 *
 * Buffers follow docs/abi.md: float32, batch-first [B, T, ...], int tokens
 * as int32. No call aborts or exits: every failure is a status plus a message
 * (seq_module_error) and, for compile errors, diagnostics with locations.
 * Modules are independent: two threads may compile and run two modules at
 * once. One compiled module may also run from several threads at once
 * (seq_module_forward, seq_module_step and the other calls that only read it;
 * scratch memory is per call): binding weights is not to overlap its runs.
 * A failed call's message is kept per thread (seq_module_error).
 */
#ifndef SEQ_H
#define SEQ_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  SEQ_OK = 0,
  SEQ_ERR_ARG,     /* a NULL or out-of-range argument, a buffer of the wrong size */
  SEQ_ERR_COMPILE, /* the source has errors, or the backend cannot compile it */
  SEQ_ERR_BIND,    /* dims or weights missing, or of the wrong shape */
  SEQ_ERR_IO,      /* a file cannot be read (the source, the weights) */
  SEQ_ERR_NOMEM,
  SEQ_ERR_RUN,    /* the compiled code reported an error (a token out of range, bad lengths) */
  SEQ_ERR_DEVICE, /* backend "cuda": no driver, no device, no NVRTC, or the device failed */
} SeqStatus;

typedef enum { SEQ_SEVERITY_ERROR, SEQ_SEVERITY_WARNING, SEQ_SEVERITY_NOTE } SeqSeverity;

typedef struct SeqDiagnostic {
  const char *file; /* NULL when the message has no location */
  int line, col;    /* from 1; 0 without a location */
  SeqSeverity severity;
  const char *message;
} SeqDiagnostic;

typedef struct SeqOptions {
  int opt_level;               /* 0..3; 0 in a zeroed struct means -O0 */
  const char *entry;           /* unit to compile; NULL = the file's last unit */
  const char *dims;            /* "I=256,H=256" or NULL */
  const char *weights_path;    /* safetensors file: infers dims and binds weights; or NULL */
  const char *target_cpu;      /* NULL or "native" = the host's; checked (docs/cli.md):
                                  SEQ_ERR_ARG for a name LLVM would abort on */
  const char *target_features; /* NULL = the host's; "+avx2,-fma", checked likewise */
  int num_threads;             /* threads for matrix products; <= 0: $SEQ_NUM_THREADS or 1 */
  const char *strategy;        /* the form of each state: "auto" (NULL), "sequential", "scan",
                                  "chunked", or per state "S=chunked,z=scan" (docs/cli.md) */
  int chunk;                   /* tokens per chunk of the chunked forms; <= 0: the measured
                                  default (docs/cli.md, --chunk) */
  long batch;                  /* the batch `auto` plans for (docs/cli.md, --batch); <= 0: 8 */
  double newton_rtol;          /* Newton solves (strategy "newton"): converged when every
                                  |step| <= atol + rtol |value|; <= 0: 1e-5 */
  double newton_atol;          /* <= 0: 1e-6 */
  int newton_max_iter;         /* iterations before the step loop instead; <= 0: 24 */
  const char *backend;         /* NULL or "cpu": LLVM, JIT-compiled for this CPU; "cuda": CUDA
                                  device 0, kernels compiled by NVRTC (docs/cuda.md); without a
                                  driver, device or NVRTC the compile is SEQ_ERR_DEVICE */
  long newton_window;          /* most steps a Newton solve takes at once, one window after the
                                  other; <= 0: the whole sequence where its buffers fit
                                  the solve's memory budget (docs/algorithms.md section 6) */
  int newton_dense;            /* nonzero: a dense Jacobian is formed whole (exact Newton, d
                                  steps per evaluation) instead of its diagonals (quasi) */
  int newton_warm;             /* nonzero: warm starts. The module keeps the trajectories its
                                  Newton solves found, and a forward over the same B and T
                                  starts each solve from the last one's (docs/algorithms.md
                                  section 6); the guess changes the iterations, not the result
                                  beyond the tolerance. Memory: B*T*(state floats) per layer */
} SeqOptions;

typedef struct SeqContext SeqContext;
typedef struct SeqModule SeqModule;

SeqContext *seq_context_create(void); /* NULL only when out of memory */
void seq_context_destroy(SeqContext *cx);

/* Compile. *out is set even on failure (so its diagnostics can be read) unless
 * memory ran out; destroy it either way. */
SeqStatus seq_module_from_file(SeqContext *cx, const char *path, const SeqOptions *opt,
                               SeqModule **out);
SeqStatus seq_module_from_string(SeqContext *cx, const char *name, const char *source,
                                 const SeqOptions *opt, SeqModule **out);
void seq_module_destroy(SeqModule *m);

int seq_module_diag_count(const SeqModule *m);
const SeqDiagnostic *seq_module_diag(const SeqModule *m, int i); /* NULL if out of range */
/* The message of the calling thread's last failure on m, or when this thread
 * had none, of m's last failure on any thread; "" if none. */
const char *seq_module_error(const SeqModule *m);
/* Every diagnostic of the compile as the CLI prints it, one after another:
 * "file:line:col: error: message", the source line and a caret under the
 * column; "" when there are none. Valid while m lives. */
const char *seq_module_diag_text(const SeqModule *m);
/* What `seqc --report --dims` prints, as JSON (valid while m lives; NULL for
 * a module that did not compile, or out of memory):
 *   {"unit": "LSTM", "dims": {"I": 32, ...},
 *    "cells": [{"name", "loc": {"file","line","col"} or null,
 *               "work_per_token": {"flops","io_bytes","weight_bytes_per_call"},
 *               "states": [{"name","type","hidden","class","reason","reads","given",
 *                           "coupled_with","strategy","jacobian_reason"?,
 *                           "form","why","admitted": {"FORM": {"flops","bytes",
 *                           "us_per_token"} or null (not costed)}}]}],
 *    "text": the report as text}
 * "class" and "strategy" are the recurrence classification (docs/algorithms.md),
 * "form" the form it runs in (docs/cli.md, --strategy). */
const char *seq_module_report(SeqModule *m);

/* The interface: names and per-example shapes. */
typedef enum { SEQ_PARAM, SEQ_INPUT, SEQ_OUTPUT, SEQ_STATE } SeqTensorKind;
typedef struct SeqTensorInfo {
  const char *name;
  int ndim;
  int64_t shape[8];
  int64_t numel;
  int is_int;  /* int32 token input */
  int context; /* a context input: [B, shape], no time axis (docs/abi.md) */
} SeqTensorInfo;
int seq_module_count(const SeqModule *m, SeqTensorKind kind);
SeqStatus seq_module_info(const SeqModule *m, SeqTensorKind kind, int i, SeqTensorInfo *info);
/* Dims compiled in: returns how many; writes names/values when not NULL. */
int seq_module_dims(const SeqModule *m, const char **names, int64_t *values);

/* Weights: from a safetensors file (copied, converted to float32), or caller
 * memory (not copied: it must stay valid while the module runs). */
SeqStatus seq_module_bind_safetensors(SeqModule *m, const char *path);
SeqStatus seq_module_bind_weight(SeqModule *m, const char *name, const float *data, int64_t numel);
/* Packs the bound weights once into memory the module owns (about their
 * size again): later forwards and steps read that copy instead of packing
 * the weights at every call (a forward of few tokens, or a step, which
 * otherwise reads them unpacked). It is a snapshot: binding again drops it,
 * and caller memory changed after this call is not seen until it is called
 * again. Like binding, not to overlap runs of the module. All weights must
 * be bound. A no-op for a "cuda" module. */
SeqStatus seq_module_prepare(SeqModule *m);

/* Run on caller buffers (docs/abi.md). inputs/outputs: one pointer per input/
 * output; lengths: NULL or B values; state_in/state_out: NULL or one pointer
 * per state (NULL entries allowed). */
SeqStatus seq_module_forward(SeqModule *m, int64_t B, int64_t T, const void *const *inputs,
                             const int32_t *lengths, const float *const *state_in,
                             float *const *outputs, float *const *state_out);
SeqStatus seq_module_step(SeqModule *m, int64_t B, const void *const *inputs,
                          const float *const *state_in, float *const *outputs,
                          float *const *state_out);
/* A "cuda" module on device buffers (CUdeviceptr values of device 0's
 * primary context, cast to pointers), the same arguments otherwise; lengths,
 * when given, is an int32 device array. The weights are copied to the device
 * at the first forward after they are bound (host forwards copy inputs and
 * outputs per call). Runs on the default stream and returns when done.
 * SEQ_ERR_ARG for a "cpu" module. */
SeqStatus seq_module_forward_device(SeqModule *m, int64_t B, int64_t T, const void *const *inputs,
                                    const int32_t *lengths, const float *const *state_in,
                                    float *const *outputs, float *const *state_out);
/* The same on `stream`, a CUstream of device 0's primary context cast to a
 * pointer (NULL: the default stream): every copy, fill and kernel of the
 * call, the weights' upload included, is ordered on it, so it follows the
 * work the caller queued there before (a framework's current stream), and
 * the call returns when that stream has done them (it waits for the stream,
 * not for the device). */
SeqStatus seq_module_forward_device_stream(SeqModule *m, void *stream, int64_t B, int64_t T,
                                           const void *const *inputs, const int32_t *lengths,
                                           const float *const *state_in, float *const *outputs,
                                           float *const *state_out);
/* The element type of a device call's float inputs and outputs. */
typedef enum { SEQ_DTYPE_F32 = 0, SEQ_DTYPE_BF16 = 1, SEQ_DTYPE_F16 = 2 } SeqDtype;
/* seq_module_forward_device_stream with the float inputs and outputs in
 * `io`: SEQ_DTYPE_BF16 (bfloat16) or SEQ_DTYPE_F16 (IEEE half), two bytes an
 * element, as a framework's bf16/fp16 tensors hold them (SEQ_DTYPE_F32 is
 * seq_module_forward_device_stream). Int inputs, lengths and the states
 * stay int32 and float32, and the kernels compute in float32: the inputs are
 * widened into float32 scratch on the device before the run and the outputs
 * rounded (to nearest, ties to even) into the caller's buffers after it,
 * on `stream`. SEQ_ERR_ARG for another `io`. */
SeqStatus seq_module_forward_device_io(SeqModule *m, void *stream, SeqDtype io, int64_t B,
                                       int64_t T, const void *const *inputs, const int32_t *lengths,
                                       const float *const *state_in, void *const *outputs,
                                       float *const *state_out);
/* What the Newton solves (the "newton" strategy, docs/algorithms.md section
 * 6) of every forward in this process, on the CPU and on CUDA devices, did
 * since the last reset: one solve
 * per sequence, window (newton_window) and call; a fallback is a window
 * that did not converge within newton_max_iter iterations (or met a value
 * that is not finite) and ran as the step loop instead from the first step
 * that failed the last test to the window's end (the steps before it passed
 * it, as a converged solve's do). */
typedef struct SeqNewtonStats {
  int64_t solves, fallbacks;
  int64_t damped;         /* steps halved because the residual grew */
  int64_t iterations;     /* of the converged solves, in all */
  int max_iter;           /* of a converged solve */
  int64_t fallback_steps; /* steps the fallbacks ran as the step loop: from the first step
                             that failed the last test (those before it are kept) */
  int64_t warm_starts;    /* solves whose guess was the trajectory a previous forward of the
                             module found (SeqOptions.newton_warm) */
} SeqNewtonStats;
void seq_newton_stats(SeqNewtonStats *out, int reset);

/* Address of a generated entry point ("forward", "forward_blob", "step",
 * "dims", "prepare", "prepared_floats", "forward_prepared",
 * "step_prepared"; signatures in docs/abi.md), NULL if absent (always, for a "cuda"
 * module). The caller casts it. */
void *seq_module_entry(SeqModule *m, const char *which);

#ifdef __cplusplus
}
#endif
#endif
