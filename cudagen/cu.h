/* cu.h - what the files of the CUDA renderer share (cudagen.h lists them).
 *
 * Generated code names things in a fixed way:
 *   F                the frame (rt_cuda.h): int64 slots
 *   B, T, rev, lens  the call's sizes, direction and lengths (lens may be 0)
 *   rb, rtok, rtokc  the current rows: the example's, the token's (b*T + t,
 *                    physical), and the processing step's in a chunk-ordered
 *                    token buffer (b*T + tau: the GPU runs one chunk, Tc = T)
 *   vN, vNi          a fused node's value (and imaginary part) in registers
 */
#ifndef SEQ_CUDAGEN_CU_H
#define SEQ_CUDAGEN_CU_H

#include <stdio.h>

#include "cudagen/cudagen.h"

typedef struct Cu {
  Arena *a;
  const Schedule *s;
  DiagEngine *de;
  FILE *o; /* the source being written */
  int failed;
  /* The instance being rendered. */
  int ii;
  const SchedInst *in;
  const IrFunc *fn;
  const SchedValue *v;
  VEC(RtCuStep) steps;
  VEC(const char *) kernels;
  /* Fused values in registers: node -> whether it is a member now. */
  char *fmember;
  /* The Newton solver's first kernel + 1 (0: not rendered yet). */
  int nt_kernel;
  /* Scratch the renderer adds to the instance's buffers (after the
   * schedule's): how threads share a stage's work can need some. */
  VEC(RtCuBuf) extra;
} Cu;

/* Threads per block of every launch (a multiple of 32). */
#define CU_NT 128

/* ---- frame.c ---- */
/* Frame slot of node r's base address ("-1" for values without one). */
const char *cu_base(Cu *c, IrRef r);
/* Slot numbers of the frame's parts. */
int cu_slot_param(Cu *c, int global);
int cu_slot_input(Cu *c, int j);
int cu_slot_sin(Cu *c, int global);
int cu_slot_output(Cu *c, int o);
int cu_slot_sout(Cu *c, int global);
int cu_slot_buf(Cu *c, int b);
/* A scratch buffer of the instance, after the schedule's; its index. */
int cu_scratch_buf(Cu *c, RtCuRows rows, int64_t row_floats);
/* Starts a kernel: its name, signature and the frame's common locals;
 * appends a launch step. cu_kernel_end closes it. */
void cu_kernel_begin(Cu *c, const char *what, RtCuGridKind grid, int64_t n, int64_t per);
void cu_kernel_end(Cu *c);
void cu_unsupported(Cu *c, IrRef r, const char *what);
/* Where argument node r lives in the caller's frame. */
RtCuArg cu_arg_of(Cu *c, IrRef r);
/* Argument j of call node r as the callee reads it: where it lives, or the
 * buffer a kernel rendered here copies it into per token. */
RtCuArg cu_call_arg(Cu *c, IrRef r, int j);
void cu_ops(Cu *c, const SchedOp *ops, int n);

/* ---- node.c ---- */
/* Pointer expression to the current row of node r. */
const char *cu_rowptr(Cu *c, IrRef r);
/* Node r on the current row, its elements shared by the block's threads;
 * ends with a barrier. */
void cu_node(Cu *c, IrRef r);
void cu_fused(Cu *c, SchedClass phase, IrRef first, IrRef last);
/* dst[drow] = src[srow] for `floats` floats, by the block's threads. */
void cu_copy_row(Cu *c, const char *dst, const char *src, int64_t floats);
/* The flat index of operand an read at index k of a loop over key's shape
 * (numpy broadcasting; o and i split k over key's last axis). */
const char *cu_bcast_index(Cu *c, const SchedValue *an, const SchedValue *key, const char *k,
                           const char *o, const char *i);
/* Renders member r's value at element k of key into locals vR (and vRi),
 * storing it when read outside; operands that are members are read from
 * their locals. */
void cu_fused_value(Cu *c, IrRef r, const char *k, const char *o, const char *i,
                    const SchedValue *key);
/* Operand a at element k as a complex expression pair. */
void cu_fused_operand(Cu *c, IrRef a, const char *k, const char *o, const char *i,
                      const SchedValue *key, const char **re, const char **im);

/* ---- expr.c ---- */
/* One elementwise op on operand expressions: real (im NULL) or complex.
 * Returns the result's re (and *out_im for complex results). */
const char *cu_op_expr(Cu *c, IrOp op, const char *a, const char *ai, const char *b, const char *bi,
                       int cplx, const char **out_im);

/* ---- seq.c ---- */
void cu_token_rows(Cu *c, const SchedOp *op);
void cu_time_loop(Cu *c, const SchedOp *op);
void cu_token_outputs(Cu *c);
void cu_gemm(Cu *c, IrRef r, SchedClass cls);
void cu_gemm_step(Cu *c, IrRef r);
void cu_commit(Cu *c);

/* ---- scan.c ---- */
void cu_scan_group(Cu *c, const SchedOp *op);
void cu_scan(Cu *c, IrRef r);
void cu_delay(Cu *c, IrRef r);
void cu_window(Cu *c, IrRef r);
void cu_conv_window(Cu *c, IrRef r);
void cu_seq_final_states(Cu *c);
void cu_chunk_states(Cu *c);

/* Row pointer (an expression over b, T, t0) of node r for example b at
 * processing step 0, and in *ld its stride in floats per step (an
 * expression over dir: +1, or -1 run backwards; "0" for values constant
 * over the sequence). */
const char *cu_seq_operand(Cu *c, IrRef r, const char **ld);
/* A value with one row per example: a state's, or what a context gives. */
static inline int cu_per_example(const SchedValue *v) {
  return v->cls == SCHED_STEP || v->cls == SCHED_EXAMPLE;
}

/* ---- chunk.c ---- */
void cu_linattn(Cu *c, const SchedOp *op);

/* ---- newton.c ---- */
/* A Newton layer's call node r: a solve step, and the solver's kernels
 * rendered once per program. */
void cu_newton(Cu *c, IrRef r);

/* ---- attn.c ---- */
void cu_attn(Cu *c, const SchedOp *op);

/* ---- prelude.c ---- */
extern const char *const cu_prelude[]; /* NULL-terminated pieces */

#endif
