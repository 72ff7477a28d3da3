/* rt_cuda.h - CUDA at run time. Nothing of the compiler is in it, and
 * nothing of CUDA is linked: libnvrtc and libcuda are opened with dlopen on
 * first use, so seqc builds and runs where neither exists and says so when
 * asked for them.
 *
 *   NVRTC         CUDA C -> PTX or a cubin, through an on-disk cache
 *                 (runtime/cuda_nvrtc.c)
 *   driver        a context on one device: memory, modules, launches
 *                 (runtime/cuda_driver.c)
 *   executor      runs a CUDA program, the launch plan the CUDA renderer
 *                 made of a schedule, on any RtCuDevice: the driver's, or
 *                 the tests' CPU emulation (runtime/cuda_exec.c)
 *
 * Errors follow rt.h: 0 or an RtStatus, with a one-line message in RtError.
 */
#ifndef SEQ_RT_CUDA_H
#define SEQ_RT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/rt.h"

/* ---- NVRTC (cuda_nvrtc.c) -------------------------------------------------- */

typedef struct RtBlob {
  void *data;
  size_t size;
} RtBlob;
void rt_blob_free(RtBlob *b);

/* Whether libnvrtc can be opened (SEQ_NVRTC_LIB names the library to try
 * first); the version it reports. RT_ERR_IO "NVRTC not found (tried ...)". */
int rt_nvrtc_version(int *major, int *minor, RtError *err);

/* Compiles CUDA C `src` (reported as `name`) for `arch` ("sm_80", "sm_90")
 * to PTX (cubin = 0, NUL-terminated) or to a cubin (cubin = 1, NVRTC runs
 * ptxas), with the options seqc always uses (-std=c++17, --use_fast_math off,
 * -default-device). The result comes from the cache when the key (a hash of
 * the source, the options, NVRTC's version, the arch and the kind) is there;
 * otherwise NVRTC runs and the result is stored. A compile error is
 * RT_ERR_FORMAT with NVRTC's log (first lines) in err. */
int rt_nvrtc_compile(const char *src, const char *name, const char *arch, int cubin, RtBlob *out,
                     RtError *err);

/* nvrtcCompileProgram calls this process made, and the seconds they took. */
uint64_t rt_nvrtc_calls(void);
double rt_nvrtc_seconds(void);

/* The cache directory: $SEQ_CUDA_CACHE, else $XDG_CACHE_HOME/seqc/cuda, else
 * $HOME/.cache/seqc/cuda; SEQ_CUDA_CACHE=off turns the cache off (NULL). */
const char *rt_cuda_cache_dir(void);

/* ---- the device API every executor backend provides ------------------------ */

/* Device addresses are 64-bit integers (CUdeviceptr, or a host address in
 * the emulation). */
typedef uint64_t RtDevPtr;

typedef enum { RT_CU_H2D, RT_CU_D2H, RT_CU_D2D } RtCuCopyKind;

/* A device's operations, each ordered on `stream` (a CUstream; NULL is the
 * default stream): the executor passes its device's stream field, which a
 * caller sets on a copy of the device for one call. A copy to the host has
 * finished when it returns; the other operations may still be in flight
 * until sync, which waits for the stream (the whole context for NULL). */
typedef struct RtCuDevice {
  void *ctx;
  void *stream;
  /* Zeroed device memory; 0 bytes gives a valid address too. */
  int (*alloc)(void *ctx, void *stream, size_t bytes, RtDevPtr *out, RtError *err);
  void (*free)(void *ctx, RtDevPtr p);
  int (*copy)(void *ctx, void *stream, RtDevPtr dst, RtDevPtr src, size_t bytes, RtCuCopyKind kind,
              RtError *err);
  int (*zero)(void *ctx, void *stream, RtDevPtr dst, size_t bytes, RtError *err);
  /* Launches kernel `kernel` (an index into the program's names) on a 1-D
   * grid of `grid` blocks of `block` threads; its one argument is the frame. */
  int (*launch)(void *ctx, void *stream, int kernel, uint32_t grid, uint32_t block, RtDevPtr frame,
                RtError *err);
  int (*sync)(void *ctx, void *stream, RtError *err);
} RtCuDevice;

/* ---- the driver (cuda_driver.c) -------------------------------------------- */

typedef struct RtCuda RtCuda;

/* Opens device `ordinal` (libcuda.so.1, or SEQ_CUDA_DRIVER_LIB). Errors:
 * "CUDA driver not found (libcuda.so.1)", "no CUDA device", the driver's
 * message otherwise. */
int rt_cuda_open(int ordinal, RtCuda **out, RtError *err);
void rt_cuda_close(RtCuda *c);
/* "sm_90", the device's name and its global memory in bytes. */
const char *rt_cuda_arch(const RtCuda *c);
const char *rt_cuda_name(const RtCuda *c);
size_t rt_cuda_memory(const RtCuda *c);
/* Loads a module from PTX or a cubin and resolves the named kernels; the
 * returned device runs them (launch's `kernel` indexes names). */
int rt_cuda_load(RtCuda *c, const RtBlob *image, const char *const *names, int n, RtCuDevice *out,
                 RtError *err);
/* Unloads the module behind a device rt_cuda_load returned (memory it
 * allocated stays until freed or rt_cuda_close); rt_cuda_close unloads the
 * modules left. Devices not from rt_cuda_load are left alone. */
void rt_cuda_unload(RtCuDevice *d);

/* ---- CUDA programs and their executor (cuda_exec.c) ------------------------ */

/* Every generated kernel takes one argument, the frame: int64 slots holding
 * the call's sizes and device addresses, in this order:
 *   B, T, rev (the instance runs backwards), lengths (0: all T), status
 *   (an int32 the kernels set on bad input: ABI_ERR_TOKEN), then the
 *   program's params, the instance's inputs, the program's state_in (0: not
 *   given), the instance's outputs, the program's state_out (0: not wanted)
 *   and the instance's buffers. */
enum { RT_CU_F_B, RT_CU_F_T, RT_CU_F_REV, RT_CU_F_LENGTHS, RT_CU_F_STATUS, RT_CU_F_FIXED };

/* How many blocks a launch runs. */
typedef enum {
  RT_CU_GRID_FIXED, /* n */
  RT_CU_GRID_B,     /* n per example */
  RT_CU_GRID_BT,    /* n per token (rounded up to n * B * T / per) */
  RT_CU_GRID_BMIN,  /* n per example, and at least per in all */
} RtCuGridKind;

typedef enum {
  RT_CU_ROWS_ONE,
  RT_CU_ROWS_B,
  RT_CU_ROWS_BT,
} RtCuRows;

typedef struct RtCuBuf {
  RtCuRows rows;
  int64_t row_floats;
} RtCuBuf;

/* Where a layer's argument lives in its caller's frame. */
typedef enum { RT_CU_ARG_NONE = -1, RT_CU_ARG_PARAM, RT_CU_ARG_INPUT, RT_CU_ARG_BUF } RtCuArgKind;
typedef struct RtCuArg {
  RtCuArgKind kind;
  int index;
} RtCuArg;

typedef enum {
  RT_CU_STEP_LAUNCH,
  RT_CU_STEP_CALL,   /* run instance `inst` over the whole sequence */
  RT_CU_STEP_NEWTON, /* solve the recurrence whose step is instance `inst` (RtCuNewton) */
} RtCuStepKind;

/* A Newton solve (cuda_newton.c; docs/cuda.md, "Newton layers"): the host
 * runs the iteration the interpreter defines, evaluating instance `inst`
 * (the step: no states; its inputs are the call's m arguments, then each
 * solved state's previous value P, then with a dense Jacobian a tangent per
 * state; its outputs each state's next value F, then J's diagonal blocks
 * J_kj (k-major) or, dense, J times the tangents) at every token at once,
 * and the program's solver kernels (RT_CU_NT_K_*, from `kernel` on) for the
 * rest. The step's args are its first m inputs; its outs the n states'
 * values over the sequence (the caller's buffers). */
#define RT_CU_NT_MAX_STATES 4
#define RT_CU_NT_MAX_INPUTS 64
typedef struct RtCuNewton {
  int n;        /* states solved at once */
  int dense;    /* the step gives J times tangents (exact Newton on a dense J) */
  int max_iter; /* past it, the step loop from the first step failing the test */
  float rtol, atol;
  int64_t w;   /* floats per row of each state */
  int kernel;  /* the first of the solver's kernels in the program */
  int ordered; /* the rows are in processing order already (a chunked caller): no reversal */
  RtCuArg h0[RT_CU_NT_MAX_STATES];         /* each state's value entering the sequence */
  int h0_per_example[RT_CU_NT_MAX_STATES]; /* a row per example (else one row for all) */
  RtCuRows *in_rows;                       /* per argument: BT, or B (a context) */
  int64_t *in_floats;                      /* per argument: floats per row */
} RtCuNewton;

/* Splitting sequences in time (a fused scan's items, a Newton solve's
 * linear recurrence): where an item per thread makes fewer than
 * RT_CU_SPLIT_THREADS threads, each example's steps are split into enough
 * segments of at least RT_CU_SPLIT_STEPS steps to make about that many. Both
 * are guesses until measured on a device. */
enum { RT_CU_SPLIT_THREADS = 65536, RT_CU_SPLIT_STEPS = 16 };

/* What the Newton solves on devices did since the last reset, in this
 * process (seq_newton_stats adds them to the CPU's): one solve per example
 * and call; a fallback ran the step loop from its first step that failed
 * the last test. */
typedef struct RtCuNewtonStats {
  int64_t solves, fallbacks, damped;
  int64_t iterations; /* of the converged solves, in all */
  int32_t max_iter;   /* of a converged solve */
  int64_t fallback_steps;
} RtCuNewtonStats;
void rt_cu_newton_stats(RtCuNewtonStats *out, int reset);

/* The solver's kernels, in this order from RtCuNewton.kernel. */
enum {
  RT_CU_NT_K_DELAY,   /* P = the guess X one step later, h0 first (XSEL 0: P = 0) */
  RT_CU_NT_K_RESID,   /* RES[b] = max |X - F| over example b's rows */
  RT_CU_NT_K_LINEAR,  /* D = the linear recurrence's solution, J's diagonal blocks (FLAG),
                         NSEG segments each from its start (h0 for one) */
  RT_CU_NT_K_DENSE,   /* the same with J whole */
  RT_CU_NT_K_TEST,    /* RES[b] = max |D - H| / (atol + rtol |D|), BAD[b] the first step over 1 */
  RT_CU_NT_K_ROWS,    /* OP on FLAG's examples: H = D, D -= H, C = H + LAM D, H = C */
  RT_CU_NT_K_TANGENT, /* TG = unit vector COL at every token */
  RT_CU_NT_K_JCOL,    /* column COL of J from the step's J TG */
  RT_CU_NT_K_GATHER,  /* step COL's rows of the per-token arguments and P, a row per example */
  RT_CU_NT_K_SCATTER, /* H at step COL = the step's value there, for FLAG's examples from BAD */
  RT_CU_NT_K_SEG_REDUCE, /* LINEAR split in time: each segment's map from its start to its end */
  RT_CU_NT_K_SEG_CARRY,  /* each segment's start, from h0 through the maps before it */
  RT_CU_NT_NKERNELS
};

/* The solver kernels' frame: int64 slots (floats' and pointers' bits). */
enum {
  RT_CU_NF_B,
  RT_CU_NF_T,
  RT_CU_NF_REV,
  RT_CU_NF_LENS,
  RT_CU_NF_N,
  RT_CU_NF_W,
  RT_CU_NF_RTOL, /* doubles' bits */
  RT_CU_NF_ATOL,
  RT_CU_NF_OP,   /* ROWS: 0 H = D, 1 D -= H, 2 C, 3 H = C; TANGENT, JCOL: the column; GATHER,
                    SCATTER: the step */
  RT_CU_NF_FLAG, /* int32 per example */
  RT_CU_NF_LAM,  /* float per example */
  RT_CU_NF_RES,  /* float per example */
  RT_CU_NF_BAD,  /* int64 per example */
  RT_CU_NF_XSEL, /* DELAY, RESID: the guess X: 0 none, 1 H, 2 C */
  RT_CU_NF_SEG,  /* SEG_*: per (example, segment, element) its map, then its start */
  RT_CU_NF_NSEG, /* SEG_*: segments per example (steps split evenly) */
  RT_CU_NF_H = 16,
  RT_CU_NF_F = RT_CU_NF_H + RT_CU_NT_MAX_STATES,
  RT_CU_NF_P = RT_CU_NF_F + RT_CU_NT_MAX_STATES,
  RT_CU_NF_D = RT_CU_NF_P + RT_CU_NT_MAX_STATES,
  RT_CU_NF_C = RT_CU_NF_D + RT_CU_NT_MAX_STATES,
  RT_CU_NF_H0 = RT_CU_NF_C + RT_CU_NT_MAX_STATES,
  RT_CU_NF_H0S = RT_CU_NF_H0 + RT_CU_NT_MAX_STATES, /* h0's floats per example (0: shared) */
  RT_CU_NF_J = RT_CU_NF_H0S + RT_CU_NT_MAX_STATES,  /* blocks; dense: J whole in the first */
  RT_CU_NF_TG = RT_CU_NF_J + RT_CU_NT_MAX_STATES * RT_CU_NT_MAX_STATES,
  RT_CU_NF_DF = RT_CU_NF_TG + RT_CU_NT_MAX_STATES,
  RT_CU_NF_F1 = RT_CU_NF_DF + RT_CU_NT_MAX_STATES, /* one step's F, a row per example */
  RT_CU_NF_P1 = RT_CU_NF_F1 + RT_CU_NT_MAX_STATES, /* one step's P */
  RT_CU_NF_NG = RT_CU_NF_P1 + RT_CU_NT_MAX_STATES, /* per-token arguments GATHER copies */
  RT_CU_NF_G,                                      /* then (src, dst, floats) for each */
};

typedef struct RtCuStep {
  RtCuStepKind kind;
  int kernel;         /* LAUNCH */
  RtCuGridKind grid;  /* LAUNCH */
  int64_t n;          /* LAUNCH: blocks (FIXED), per example (B), per token (BT) */
  int64_t per;        /* BT: tokens per n blocks (>= 1) */
  int block;          /* LAUNCH: threads per block */
  int inst;           /* CALL */
  int reverse;        /* CALL: the layer runs in the other direction */
  RtCuArg *args;      /* CALL: per callee input; NEWTON: per argument */
  int *outs;          /* CALL: per callee output, the caller's buffer; NEWTON: per state */
  RtCuNewton *newton; /* NEWTON */
  /* CALL over a context's positions: over > 0 positions per example, each
   * example's own sequence (the callee's T; its direction `reverse` alone),
   * with the lengths in over_lengths (an int32 [B] argument) unless its
   * kind is RT_CU_ARG_NONE. */
  int64_t over;
  RtCuArg over_lengths;
} RtCuStep;

/* One instance of the schedule (the root, or a layer): its frame holds the
 * program's params and states (all of them, in flat order) and its own
 * inputs, outputs and buffers. */
typedef struct RtCuInst {
  int ninputs, nstates, noutputs, nbufs;
  RtCuBuf *bufs;  /* in the frame's order */
  int *state_buf; /* per state: the buffer holding it */
  RtCuStep *steps;
  int nsteps;
} RtCuInst;

/* What the caller's tensors look like (per example for states, per token for
 * inputs and outputs, whole for params), in floats (int inputs: int32s). */
typedef struct RtCuProgram {
  const char *source; /* the CUDA C the kernels come from */
  const char **kernels;
  int nkernels;
  RtCuInst *insts; /* insts[0] is the root */
  int ninsts;
  int nparams, ninputs, noutputs, nstates;
  int64_t *param_floats, *input_floats, *output_floats, *state_floats;
  int *input_is_int;
  int *input_context; /* given once per sequence ([B, ...]), not per token (NULL: none) */
} RtCuProgram;

/* The root's forward over host buffers, as SYM_forward (docs/abi.md): params,
 * inputs, lengths and initial states are copied to the device, outputs and
 * final states back; returns an ABI status (0, ABI_ERR_*), or -1 with err set
 * when the device fails. */
int rt_cu_forward(const RtCuProgram *p, const RtCuDevice *d, const float *const *params, int64_t B,
                  int64_t T, const void *const *inputs, const int32_t *lengths,
                  const float *const *state_in, float *const *outputs, float *const *state_out,
                  RtError *err);

/* The same with the params already on the device (uploaded once by the
 * caller, e.g. at bind time), the rest on the host. */
int rt_cu_forward_bound(const RtCuProgram *p, const RtCuDevice *d, const RtDevPtr *params,
                        int64_t B, int64_t T, const void *const *inputs, const int32_t *lengths,
                        const float *const *state_in, float *const *outputs,
                        float *const *state_out, RtError *err);

/* The same over device buffers of d (no copies): params, inputs, outputs;
 * lengths an int32 [B] device array or 0; state_in and state_out NULL or
 * arrays of device addresses, 0 entries meaning "declared initial value" and
 * "not wanted". The lengths are read back to be checked. The work is done
 * when it returns. */
int rt_cu_run(const RtCuProgram *p, const RtCuDevice *d, const RtDevPtr *params, int64_t B,
              int64_t T, const RtDevPtr *inputs, RtDevPtr lengths, const RtDevPtr *state_in,
              const RtDevPtr *outputs, const RtDevPtr *state_out, RtError *err);

/* The types a call's float inputs and outputs may have on the device. */
enum { RT_CU_IO_F32 = 0, RT_CU_IO_BF16 = 1, RT_CU_IO_F16 = 2 };

/* rt_cu_run with the float inputs and outputs in `io` (2 bytes an element
 * for RT_CU_IO_BF16 and RT_CU_IO_F16; int inputs, lengths and the states
 * stay int32 and float32): the program's kernels seq_io_in and seq_io_out
 * convert them to float32 scratch before the run and the outputs back
 * after it (rounded to nearest even), on d's stream. ABI_ERR_ARG (1) for
 * another `io`. */
int rt_cu_run_io(const RtCuProgram *p, const RtCuDevice *d, int io, const RtDevPtr *params,
                 int64_t B, int64_t T, const RtDevPtr *inputs, RtDevPtr lengths,
                 const RtDevPtr *state_in, const RtDevPtr *outputs, const RtDevPtr *state_out,
                 RtError *err);

/* ---- shared objects for the GPU (cuda_plan.c, cuda_aot.c) ------------------ */

/* A program as bytes: a small versioned little-endian format with a hash
 * (docs/cuda.md, "Shared objects for the GPU"), what `seqc --target=cuda -o
 * libNAME.so` embeds. write: 0, RT_ERR_ARG (no program, bad counts) or
 * RT_ERR_NOMEM; free out with rt_blob_free (or free(out->data)). read: every
 * size, index and the hash are checked, so damaged bytes are RT_ERR_FORMAT
 * ("CUDA plan: ...") and never a crash; the program owns its memory (the
 * source, names and arrays are copies) and is freed with rt_cu_program_free,
 * which takes only programs rt_cu_program_read made. */
int rt_cu_program_write(const RtCuProgram *p, RtBlob *out);
int rt_cu_program_read(const void *data, size_t size, RtCuProgram **out, RtError *err);
void rt_cu_program_free(RtCuProgram *p);

/* The status a shared object for the GPU adds to the ABI's (docs/abi.md):
 * the GPU could not run the call (no driver, no device, no image for its
 * architecture, a driver error); SYM_last_error() says which. */
enum { RT_CU_AOT_ERR_DEVICE = 5 };

/* One embedded image: a cubin ("sm_90", an ELF) or PTX ("compute_80",
 * text without a NUL). */
typedef struct RtCuImage {
  const char *arch;
  const void *data;
  uint64_t size;
} RtCuImage;

/* What a generated shared object holds (codegen/aot_cuda.c writes it as a
 * constant; every field is 8 bytes, so the layout is the same for LLVM's
 * struct and this one). `state` points at a pointer of the library's own,
 * NULL until the first call has loaded the model. */
enum { RT_CU_AOT_VERSION = 1 };
typedef struct RtCuAotModel {
  int64_t version; /* RT_CU_AOT_VERSION */
  const char *symbol;
  const void *plan; /* rt_cu_program_write's bytes */
  int64_t plan_size;
  const RtCuImage *images; /* the cubins, then the PTX */
  int64_t nimages;
  const int64_t *dims; /* the dims compiled in (SYM_dims) */
  int64_t ndims;
  void **state;
} RtCuAotModel;

/* The entry points behind SYM_forward, SYM_forward_blob, SYM_step,
 * SYM_forward_device (device addresses in the structs), SYM_dims,
 * SYM_last_error, SYM_cuda_plan and SYM_cuda_device. The first call that
 * needs the GPU opens device $SEQ_CUDA_DEVICE (0), reads the plan, loads the
 * best image for the device (rt_cu_aot_pick) and keeps them for the life of
 * the process; a failed attempt keeps nothing and the next call tries
 * again. Thread-safe. Statuses are the ABI's plus RT_CU_AOT_ERR_DEVICE; a
 * nonzero one leaves a message for rt_cu_aot_last_error (per thread). */
int32_t rt_cu_aot_forward(const RtCuAotModel *m, const float *const *params, int64_t B, int64_t T,
                          const void *const *inputs, const int32_t *lengths,
                          const float *const *state_in, float *const *outputs,
                          float *const *state_out);
int32_t rt_cu_aot_forward_blob(const RtCuAotModel *m, const float *blob, int64_t blob_floats,
                               int64_t B, int64_t T, const void *const *inputs,
                               const int32_t *lengths, const float *const *state_in,
                               float *const *outputs, float *const *state_out);
int32_t rt_cu_aot_step(const RtCuAotModel *m, const float *const *params, int64_t B,
                       const void *const *inputs, const float *const *state_in,
                       float *const *outputs, float *const *state_out);
int32_t rt_cu_aot_forward_device(const RtCuAotModel *m, const void *const *params, int64_t B,
                                 int64_t T, const void *const *inputs, const int32_t *lengths,
                                 const void *const *state_in, void *const *outputs,
                                 void *const *state_out);
/* The same on a CUstream (NULL: the default stream), as
 * seq_module_forward_device_stream. */
int32_t rt_cu_aot_forward_device_stream(const RtCuAotModel *m, const void *const *params,
                                        void *stream, int64_t B, int64_t T,
                                        const void *const *inputs, const int32_t *lengths,
                                        const void *const *state_in, void *const *outputs,
                                        void *const *state_out);
/* The same with the float inputs and outputs in `io` (rt_cu_run_io), as
 * seq_module_forward_device_io. */
int32_t rt_cu_aot_forward_device_io(const RtCuAotModel *m, const void *const *params, void *stream,
                                    int32_t io, int64_t B, int64_t T, const void *const *inputs,
                                    const int32_t *lengths, const void *const *state_in,
                                    void *const *outputs, void *const *state_out);
int32_t rt_cu_aot_dims(const RtCuAotModel *m, int64_t *out);
const char *rt_cu_aot_last_error(const RtCuAotModel *m);
const void *rt_cu_aot_plan(const RtCuAotModel *m, int64_t *size);
const char *rt_cu_aot_device(const RtCuAotModel *m);

/* The images that run on a device of compute capability `device_arch`
 * ("sm_86"), best first, as indices into images: a cubin for exactly that
 * arch ("sm_86a" before "sm_86"), then cubins of the same major version and
 * a lower minor one, newest first ("sm_80"; never one with an 'a' suffix),
 * then PTX the driver can compile for it (compute_XY up to the device's;
 * 'a': only the same arch; 'f': the same major version). Returns how many
 * (0: none runs there). */
int rt_cu_aot_pick(const RtCuImage *images, int n, const char *device_arch, int *order);

#endif
