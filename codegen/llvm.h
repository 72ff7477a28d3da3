/* llvm.h - what the files of the LLVM renderer share. The renderer turns a
 * schedule (sched/sched.h) into LLVM IR and decides nothing: every loop,
 * buffer and kernel is the schedule's. One file per concern:
 *   build.c   IR-building helpers (constants, loads, counted loops, calls)
 *   math.c    the op table as LLVM expressions: exp, tanh, complex numbers
 *   rows.c    one node on the current row (data movement, reductions, norms)
 *   fuse.c    a fused run of elementwise nodes in one element loop
 *   gemm.c    GEMMs through the runtime, packed weights
 *   frame.c   an instance's function: arguments, buffers, the stage tree
 *   seq.c     the sequential form: time chunks, time steps, commits
 *   scan.c    a cell's parallel form: scans, delays and windows over each sequence
 *   chunk.c   a matrix state's chunked form: the runtime's chunkwise kernel
 *   attn.c    causal softmax attention: the runtime's tiled kernel
 *   entry.c   the ABI's entry points and cg_lower
 *
 * Every instance is one LLVM function
 *   i32 inst(ptr params, i64 B, i64 T, ptr inputs, ptr lengths,
 *            ptr state_in, ptr outputs, ptr state_out, i32 reverse)
 * over batch-first buffers. Rows: a CONST value has one row; a TOKEN value
 * one per token, at b*T + t (or b*Tc + t - t0 in a time chunk), so a root
 * input's [B, T, ...] buffer is already such a value; a STEP value one per
 * example, at b.
 */
#ifndef SEQ_CODEGEN_LLVM_H
#define SEQ_CODEGEN_LLVM_H

#include "codegen/cg.h"
#include "sched/sched.h"

/* The LLVM values of a node: its buffer and a GEMM's auxiliary ones. */
typedef struct NodeLL {
  LLVMValueRef base;  /* float* (i32* for int inputs) */
  LLVMValueRef wt;    /* GEMM: the packed weight */
  LLVMValueRef gath;  /* chunked GEMM over a whole-sequence operand: its chunk's rows */
  LLVMValueRef wr;    /* cgemm: the real [gemm_n, gemm_k] form of the complex weight */
  LLVMValueRef *outs; /* CALL: one buffer per callee output */
  LLVMValueRef *cins; /* CALL: [B*T] copies of constant arguments */
} NodeLL;

typedef struct Lower {
  Arena *a;
  const Schedule *s;
  DiagEngine *de;
  LLVMContextRef cx;
  LLVMModuleRef mod;
  LLVMBuilderRef bld;
  LLVMTypeRef f32, i32, i64, i1, ptr, void_t;
  LLVMTypeRef inst_ty;
  LLVMValueRef *inst_fn; /* per schedule instance */
  int failed;
  int nworkers;  /* parallel-loop bodies emitted so far (their names) */
  int in_worker; /* emitting a parallel loop's worker (its loops stay serial) */
  /* per function being emitted */
  const SchedInst *in;
  const IrFunc *fn;
  const SchedValue *v; /* in->values */
  NodeLL *ll;          /* per node */
  LLVMValueRef *buf;   /* per schedule buffer: its address */
  LLVMValueRef fv;
  LLVMValueRef a_params, a_B, a_T, a_inputs, a_lengths, a_sin, a_outputs, a_sout, a_rev;
  LLVMValueRef status; /* alloca i32 */
  LLVMBasicBlockRef cleanup;
  LLVMValueRef scratch;  /* ptr */
  LLVMValueRef wscratch; /* ptr: packed weights, not zeroed */
  /* current row: example, whole-sequence token row (b*T + t) and, in
   * chunked cells, the chunk-local token row (b*Tc + t - t0) */
  LLVMValueRef r_b, r_tok, r_tokc;
  /* chunked cells: chunk length, first step of the chunk, steps in it */
  LLVMValueRef Tc, t0, tn;
  /* the current time step inside a time loop (NULL outside) */
  LLVMValueRef t;
  /* i1: this call's GEMM weights are packed */
  LLVMValueRef packed;
  /* fused element loops: per node, its value in the current iteration if it
   * belongs to the run being emitted */
  LLVMValueRef *fval, *fval_im;
  char *fmember;
  /* inside a scan group's item that runs on private copies (sched.h,
   * SchedScanGroup.copied): per node, the copy of its block (planar: real
   * and imaginary parts; transposed: pl_im NULL) and the current element's
   * index in them; NULL elsewhere */
  LLVMValueRef *pl_re, *pl_im;
  LLVMValueRef pl_at;
  /* inside a fused run whose shape ends in axes of size 1 (Mamba-2's
   * [1, 8, 64, 1]): how many of them the loops leave out (emit_fused), so
   * the inner loop runs over the last axis longer than 1 and vectorizes;
   * bcast_index drops as many trailing axes of each operand */
  int squeeze;
  /* element values are vectors of this many lanes (0: scalars): set only
   * while a rows-in-lanes scan (scan.c, lanes_steps) emits its elements,
   * when cf, ei32, ei64, ef64 and et give vectors (splats) */
  int lanes;
  /* the target's vector registers: floats in one, and how many
   * (cg_target_vectors); loops that keep several vectors of 16 lanes in
   * registers size themselves by these */
  int vec_floats, vec_regs;
} Lower;

/* ---- build.c ---- */
typedef struct Loop {
  LLVMBasicBlockRef head, body, exit, pre;
  LLVMValueRef iv;
  int64_t step;
} Loop;

LLVMValueRef ci64(Lower *L, int64_t v);
LLVMValueRef ci32(Lower *L, int v);
LLVMValueRef cf(Lower *L, double v);
/* Element constants and types: vectors of L->lanes where that is set. */
LLVMValueRef ei32(Lower *L, int v);
LLVMValueRef ei64(Lower *L, int64_t v);
LLVMValueRef ef64(Lower *L, double v);
LLVMTypeRef et(Lower *L, LLVMTypeRef scalar);
/* L->lanes floats from p[idx] (unaligned), stored there, or x in every lane. */
LLVMValueRef lane_load(Lower *L, LLVMValueRef p, LLVMValueRef idx);
void lane_store(Lower *L, LLVMValueRef v, LLVMValueRef p, LLVMValueRef idx);
LLVMValueRef lane_splat(Lower *L, LLVMValueRef x);
LLVMValueRef gepf(Lower *L, LLVMValueRef p, LLVMValueRef idx);
LLVMValueRef ldf(Lower *L, LLVMValueRef p, LLVMValueRef idx);
void stf(Lower *L, LLVMValueRef v, LLVMValueRef p, LLVMValueRef idx);
LLVMValueRef ldp(Lower *L, LLVMValueRef arr, int i);
LLVMValueRef mul(Lower *L, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef add(Lower *L, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef fmul(Lower *L, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef fadd(Lower *L, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef fsub(Lower *L, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef select_min(Lower *L, LLVMValueRef x, LLVMValueRef y); /* signed i64 */
LLVMBasicBlockRef block(Lower *L, const char *name);
/* A counted loop [lo, hi); the body is emitted between loop_begin and loop_end. */
LLVMValueRef loop_begin(Lower *L, Loop *lp, LLVMValueRef lo, LLVMValueRef hi);
LLVMValueRef loop_begin_step(Lower *L, Loop *lp, LLVMValueRef lo, LLVMValueRef hi, int64_t step);
void loop_end(Lower *L, Loop *lp);
/* loop_end for a loop whose iterations touch no memory another iteration
 * touches (a fused elementwise map: each writes its own elements and reads
 * elements no iteration writes, or its own): the vectorizer then needs no
 * runtime overlap checks, nor a scalar copy of the loop behind them. A
 * loop nested in the body is claimed too. */
void loop_end_parallel(Lower *L, Loop *lp);
/* An accumulator carried around loop lp, starting at init (a float or a
 * vector of them: the phi takes init's type); the caller
 * adds the latch value with loop_phi_next before loop_end. After the loop
 * the phi holds the final value. */
LLVMValueRef loop_phi(Lower *L, Loop *lp, LLVMValueRef init, const char *name);
void loop_phi_next(Lower *L, LLVMValueRef phi, LLVMValueRef v);
LLVMValueRef intrinsic(Lower *L, const char *name, LLVMValueRef *args, int n);
/* The same, overloaded on type t instead of float32. */
LLVMValueRef intrinsic_of(Lower *L, const char *name, LLVMTypeRef t, LLVMValueRef *args, int n);
LLVMValueRef intr1(Lower *L, const char *name, LLVMValueRef x);
LLVMValueRef intr2(Lower *L, const char *name, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef call_fn(Lower *L, const char *name, LLVMTypeRef ret, LLVMTypeRef *pt, int np,
                     LLVMValueRef *args);
/* A stack slot of type t in the function's entry block (one frame slot, not
 * a stack that grows per loop iteration); the builder stays where it was. */
LLVMValueRef entry_alloca(Lower *L, LLVMTypeRef t, const char *name);
/* Reductions may be reassociated (so vectorized). */
void set_reassoc(LLVMValueRef v);
/* Float adds, subtracts and multiplies may contract into FMAs. */
void allow_contract(LLVMModuleRef m);
/* On cond: store status and leave through the cleanup block. */
void fail_with(Lower *L, LLVMValueRef cond, int status);
/* The length of sequence b (T when lengths is NULL). */
LLVMValueRef len_of(Lower *L, LLVMValueRef b);
/* dst[drow] = src[srow] for rows of numel floats. */
void copy_row(Lower *L, LLVMValueRef dst, LLVMValueRef src, int64_t numel, LLVMValueRef drow,
              LLVMValueRef srow);

/* ---- math.c ---- */
/* A complex value: interleaved (re, im) floats in buffers, two registers
 * here; a real operand of a complex op is (x, 0). */
typedef struct Cx {
  LLVMValueRef re, im;
} Cx;
LLVMValueRef emit_exp(Lower *L, LLVMValueRef x);
LLVMValueRef emit_unary(Lower *L, IrOp op, LLVMValueRef x);
LLVMValueRef emit_binary(Lower *L, IrOp op, LLVMValueRef x, LLVMValueRef y);
/* A real operand of a complex op: its imaginary part the constant +0. */
int cx_is_real(Cx x);
/* a * b + c (llvm.fmuladd: fused where the target has FMA). */
LLVMValueRef fmuladd(Lower *L, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c);
Cx cx_mul(Lower *L, Cx x, Cx y);
/* One elementwise op on complex operands; a real result is in .re. */
Cx cx_op(Lower *L, IrOp op, Cx x, Cx y);
/* Element idx of a buffer of w floats per element, as a complex. */
Cx ldc(Lower *L, LLVMValueRef p, LLVMValueRef idx, int w);
void stc(Lower *L, Cx v, LLVMValueRef p, LLVMValueRef idx, int w);

/* ---- rows.c ---- */
/* Loop nest over an output shape; operand j is read at sum(idx[d] * stride[j][d]). */
typedef struct Nest {
  int cplx; /* some operand or the result is complex: the Cx path */
  int w[4], ow;
  int rank;
  int64_t shape[SEQ_MAX_RANK];
  int nops;
  int64_t stride[4][SEQ_MAX_RANK];
  LLVMValueRef ptr[4];
} Nest;
/* Strides of an operand of shape s (rank r) broadcast to the nest's shape. */
void nest_operand(Nest *ns, int j, int r, const int64_t *s);
void emit_ew_nest(Lower *L, IrOp op, Nest *ns, LLVMValueRef out, int d, LLVMValueRef *offs,
                  LLVMValueRef oofs);
/* The element of an operand an (numpy-broadcast to key's shape) at key's
 * flat index k = o * last + i, i along key's last axis: the part from o is
 * invariant in a loop over i, which stays contiguous (or constant). */
LLVMValueRef bcast_index(Lower *L, const SchedValue *an, const SchedValue *key, LLVMValueRef k,
                         LLVMValueRef o, LLVMValueRef i);
/* Pointer to the current row of node r. */
LLVMValueRef rowptr(Lower *L, IrRef r);
/* Emits node r for the current row. */
void emit_row(Lower *L, IrRef r);
void emit_across(Lower *L, const SchedOp *op);

/* ---- fuse.c ---- */
void emit_fused(Lower *L, SchedClass phase, IrRef first, IrRef last);
/* Inside an element loop over key's shape at flat index k = o * last + i:
 * operand a (a member's register, L->fmember, or its row read through
 * broadcasting), and the value of elementwise node r from its operands. */
Cx fused_operand(Lower *L, IrRef a, LLVMValueRef k, LLVMValueRef o, LLVMValueRef i,
                 const SchedValue *key);
Cx fused_value(Lower *L, IrRef r, LLVMValueRef k, LLVMValueRef o, LLVMValueRef i,
               const SchedValue *key);

/* ---- gemm.c ---- */
/* GEMM node r over `rows` rows of its class. */
void emit_gemm(Lower *L, IrRef r, LLVMValueRef rows);
/* Packs GEMM r's weight (after its complex real form) when the call packs. */
void emit_pack(Lower *L, IrRef r);
/* GEMM r's weight as the host packed it (SYM_prepare), NULL if not given. */
LLVMValueRef gemm_prepared(Lower *L, IrRef r);

/* ---- scan.c ---- */
void emit_scan(Lower *L, IrRef r);
void emit_scan_group(Lower *L, const SchedOp *op);
/* A rows-in-lanes scan's constants copied into its layout (once per call). */
void emit_lane_copies(Lower *L, const SchedOp *op);
void emit_delay(Lower *L, IrRef r);
void emit_window(Lower *L, IrRef r);
/* causal_conv with a window state's initial value (a fourth operand). */
void emit_conv_window(Lower *L, IrRef r);
void emit_seq_final_states(Lower *L);
void emit_chunk_states(Lower *L);
/* The steps of example b this call runs (first, count): its whole sequence,
 * or in time chunks the chunk's steps that lie inside it. */
void step_range(Lower *L, LLVMValueRef len, LLVMValueRef *first, LLVMValueRef *count);
/* Row pointer of node r for example b at processing step tau. */
LLVMValueRef step_row(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef len, LLVMValueRef tau);

/* ---- chunk.c ---- */
void emit_linattn(Lower *L, const SchedOp *op);
/* Row pointer of node r for example b at token t0, and its stride in floats
 * from one processing step to the next (dir = -1 backwards; 0 for values
 * constant over the sequence; a time chunk's rows in order). */
LLVMValueRef seq_operand(Lower *L, IrRef r, LLVMValueRef b, LLVMValueRef t0, LLVMValueRef dir,
                         LLVMValueRef *ld);

/* ---- attn.c ---- */
void emit_attn(Lower *L, const SchedOp *op);

/* ---- seq.c ---- */
/* An open loop over the rows of a class (examples, or their tokens). */
typedef struct RowLoop {
  int open, piece;
  Loop lb, lt;
  SchedClass cls;
  LLVMBasicBlockRef skip; /* a step's rows: where examples past their length go, or NULL */
} RowLoop;
void rows_open(Lower *L, RowLoop *rl, SchedClass cls);
/* Token rows of one item of a parallel loop: piece item % per of example
 * item / per's active steps (an empty loop where the piece is). */
void rows_open_piece(Lower *L, RowLoop *rl, LLVMValueRef item, LLVMValueRef per);
/* Example b as the current row of the step in hand; whether it is active. */
LLVMValueRef enter_step_row(Lower *L, LLVMValueRef b);
void rows_close(Lower *L, RowLoop *rl);
void emit_chunk_loop(Lower *L, const SchedOp *op);
void emit_time_loop(Lower *L, const SchedOp *op);
void emit_commit(Lower *L);
void emit_token_outputs(Lower *L);

/* ---- frame.c ---- */
/* Renders a list of stages in order. */
void emit_ops(Lower *L, const SchedOp *ops, int n);
/* Points every node at its value (L->ll) from the function's arguments and
 * the placed buffers (L->buf). */
int assign_bases(Lower *L);
/* Runs body(L, i, extra, arg) for i in [0, n) on the runtime's pool: the
 * body is emitted into a function of its own, which gets the instance's
 * arguments, its buffers and one more i64 (extra, or 0 when NULL) through a
 * context and rebuilds the node bases from them. */
typedef void (*ParBody)(Lower *L, LLVMValueRef i, LLVMValueRef extra, const void *arg);
void emit_parallel_for(Lower *L, LLVMValueRef n, LLVMValueRef extra, ParBody body, const void *arg);
/* Emits the function of schedule instance i. */
int emit_function(Lower *L, int i);

#endif
