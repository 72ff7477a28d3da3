/* sched.h - the schedule: everything compiled code will do, decided before
 * any backend sees it, with no LLVM in it.
 *
 * A schedule is made for one bound root function (concrete dims) and one
 * target. It flattens the instance tree (a cell, or a model and its layers)
 * and, per instance, decides
 *   - where every IR node is computed (SchedValue.cls):
 *       CONST  params and constants only: once per call, one row;
 *       TOKEN  reads inputs but no state: hoisted out of the time loop, one
 *              row per token (B*T rows, or B*Tc per time chunk);
 *       STEP   reads a state: inside the time loop, one row per example;
 *   - which matrix products become one GEMM over all rows of their class,
 *     and whose weights are packed;
 *   - which runs of elementwise nodes share one element loop (fusion);
 *   - every buffer (rows and floats per row; in-place reuse), in the order a
 *     backend places them;
 *   - the stages in dependency order, as a tree of SchedOps: loops over rows,
 *     time chunks and time steps around nodes, fused runs and whole-sequence
 *     kernels.
 * A backend renders the tree; it decides nothing (sched_print shows it all:
 * `seqc --emit=sched`).
 */
#ifndef SEQ_SCHED_H
#define SEQ_SCHED_H

#include <stdio.h>

#include "ir/ir.h"
#include "sched/abi.h"

/* ---- Values ----------------------------------------------------------------- */

/* Where a node is computed; also how many rows its buffer has (ONE, B*T or
 * B*Tc, B). */
/* What a value varies with, least first: nothing (parameters and what they
 * give, computed once per call), the example (a context and what it gives,
 * once per example before the time loop), the token, the step (the state). */
typedef enum { SCHED_CONST, SCHED_EXAMPLE, SCHED_TOKEN, SCHED_STEP } SchedClass;

/* A matrix product run as one GEMM over all rows of its class. */
typedef enum {
  SCHED_GEMM_NONE = 0,
  SCHED_GEMM_WX = 'T', /* W[N,K] @ x: the weight is the first operand (read transposed) */
  SCHED_GEMM_XW = 'N', /* x @ W[K,N] */
} SchedGemm;

/* One per IR node of an instance. */
typedef struct SchedValue {
  SchedClass cls;
  int rank;
  int64_t shape[SEQ_MAX_RANK];
  int64_t numel; /* elements per row */
  int w;         /* floats per element: 2 for complex (re, im interleaved), else 1 */
  int is_int;    /* an int token input (int32) */
  int uses;      /* readers: nodes, outputs, states' init and next */
  SchedGemm gemm;
  int cgemm;              /* WX with a complex weight: a real GEMM on W's real form */
  int64_t gemm_k, gemm_n; /* the GEMM's K and N (in real floats for cgemm) */
  int chunked;            /* a TOKEN buffer holding one time chunk: rows b*Tc + j */
  int inplace;            /* writes over operand 0's buffer */
  int buf;                /* SchedInst.bufs index of its value; -1 for views and unused nodes */
  int pack_buf;           /* GEMM: its packed weight (-1: none) */
  int prep;               /* GEMM: its Schedule.prepared slot (-1: none) */
  int creal_buf;          /* cgemm: the real form of the complex weight */
  int gather_buf;         /* chunked GEMM over a whole-sequence operand: its chunk's rows */
  int *call_out;          /* CALL: per callee output, its buffer */
  int *call_in;           /* CALL: per argument, a per-token copy of a CONST argument (-1: none) */
  IrRef group;            /* a member of the fused scan of this scan node, or of the chunked
                             form anchored at this node (-1: none) */
  int stored;             /* a group member read outside it: written per token */
  int folded; /* an elementwise product of the step loop read only by the sum over its last
                 or second-to-last axis that follows it (a batched matrix-vector product
                 written as the language writes one): never stored, that sum multiplies
                 as it adds (sched/plan.c, plan_folds) */
  int across; /* that sum, when an operand of the product is a time-invariant matrix too big
                 for L1 (SCHED_OP_ACROSS) */
} SchedValue;

/* ---- Buffers ---------------------------------------------------------------- */

typedef enum {
  SCHED_ROWS_ONE, /* once per call */
  SCHED_ROWS_B,   /* one row per example */
  SCHED_ROWS_BT,  /* one row per token */
  SCHED_ROWS_BTC, /* one row per token of a time chunk */
} SchedRows;

typedef enum {
  SCHED_BUF_NODE,      /* a node's value */
  SCHED_BUF_PACKED,    /* a GEMM weight packed for the runtime kernel (only when packing) */
  SCHED_BUF_CREAL,     /* the real form of a complex GEMM weight */
  SCHED_BUF_GATHER,    /* one chunk's rows of a whole-sequence GEMM operand */
  SCHED_BUF_CALL_OUT,  /* a layer call's output sequence */
  SCHED_BUF_CALL_IN,   /* a constant argument of a layer call, repeated per token */
  SCHED_BUF_STATE,     /* a state's storage */
  SCHED_BUF_STATE_TMP, /* a shifted state's new value, before it is stored */
  SCHED_BUF_WORK,      /* a runtime kernel's scratch */
} SchedBufKind;

/* Buffers are placed in order, each at a 16-float boundary, in one of two
 * blocks: scratch is zeroed when allocated; the weights block (packed and
 * real-form weights, written whole before they are read) is not. */
typedef struct SchedBuf {
  SchedBufKind kind;
  SchedRows rows;
  int64_t row_floats;
  int weights_block;
  IrRef node; /* the node it belongs to, or the state index for STATE and STATE_TMP */
  int index;  /* CALL_OUT: output; CALL_IN: argument */
} SchedBuf;

/* ---- Stages ------------------------------------------------------------------- */

typedef enum {
  SCHED_OP_NODE,             /* node on the current row (or once, for CONST) */
  SCHED_OP_FUSED,            /* nodes node..last of the loop's class in one element loop */
  SCHED_OP_ROWS,             /* a loop over the rows of class `cls` around `body` */
  SCHED_OP_GEMM,             /* node over all rows of its class: one runtime GEMM */
  SCHED_OP_ACROSS,           /* node, a sum with a folded product (SchedValue.across), over
                                all rows of its class: each block of its time-invariant
                                operand read once for all of them (the row loop inside);
                                body: none, or the SCHED_OP_FUSED run after it, made from
                                each vector of sums before it is stored (sched/build.c,
                                epilogue_fits) */
  SCHED_OP_CALL,             /* node runs a layer over the whole sequence */
  SCHED_OP_CONV,             /* node: causal convolution over the whole sequence */
  SCHED_OP_SCAN,             /* node: scan or scan_max over the whole sequence, per example */
  SCHED_OP_DELAY,            /* node: each token's previous token (the initial value first) */
  SCHED_OP_WINDOW,           /* node: a shift register's window at each token */
  SCHED_OP_LINATTN,          /* a matrix state's chunked form: its readouts and final state */
  SCHED_OP_ATTN,             /* node: causal softmax attention over the sequence, per example */
  SCHED_OP_PACK,             /* the weight of GEMM `node` packed (after its real form, for cgemm) */
  SCHED_OP_LANE_COPIES,      /* a rows-in-lanes scan's copies of its constants, made once */
  SCHED_OP_ZERO_OUTPUTS,     /* outputs past each sequence's end are zero (with lengths) */
  SCHED_OP_STATE_INIT,       /* states from state_in, else their declared initial value */
  SCHED_OP_TOKEN_OUTPUTS,    /* outputs that read no state, for the TOKEN rows in hand */
  SCHED_OP_CHUNK_LOOP,       /* for each time chunk of Tc steps: body */
  SCHED_OP_TIME_LOOP,        /* for each step t (of the chunk, or of [0, T)): body */
  SCHED_OP_COMMIT,           /* per active example: this step's outputs, then the new states */
  SCHED_OP_FINAL_STATES,     /* state_out from the states' storage */
  SCHED_OP_SEQ_FINAL_STATES, /* a parallel form's state_out: next at each sequence's last
                                step (the initial value for an empty one); in time chunks,
                                the storage */
  SCHED_OP_CHUNK_STATES,     /* a parallel form in time chunks: the states not carried by a
                                fused group (windows) take next at the chunk's last step */
} SchedOpKind;

/* Rows per vector of a rows-in-lanes scan (SchedScanGroup.lanes): one AVX-512
 * vector of float32 (two AVX2 ones). */
#define SCHED_SCAN_LANES 16

typedef struct SchedOp SchedOp;
/* SCHED_OP_SCAN fused with the elementwise work around it (sched/scan.c):
 * per example, per block of the state's leading elements, per step, one
 * element loop computes the members in order (the coefficients, the
 * update, the reads and sums of the new value), the state in its own
 * storage throughout. The (example, block, piece) items are independent and
 * run on the runtime's pool. */
typedef struct SchedScanGroup {
  IrRef *members; /* node order; the scan node among them */
  int nmembers;
  IrRef delay;   /* delay(scan) among the members (its value is the old state), or -1 */
  int state;     /* the state whose storage holds the running value */
  int64_t block; /* leading elements (rows of the last axis) per block */
  int64_t split; /* elements of the last axis per piece: the whole axis, or (with no sum over
                    it among the members) a part, so a one-row state still splits */
  /* A group may run each item on private copies of its block, filled before
   * the loop over time (the running value also written back after it), so
   * that the element loop reads whole vectors:
   *   - planar: a complex group holds the running value and the full-shaped
   *     complex constants it reads (S4D's dA, dB, C) as separate real and
   *     imaginary arrays, instead of de-interleaving every step;
   *   - transposed: a real group whose last axis is narrow and summed
   *     (Mamba's s @ C over d_state = 16) holds them with the last axis
   *     outer; the element loop then runs along the rows, contiguous in the
   *     copies and in the per-row operands (delta, x), and each sum over the
   *     last axis accumulates a vector of rows instead of ending every row in
   *     a horizontal reduction (a dozen shuffles and adds per 16 elements).
   * (The CUDA renderer, one thread per element, reads each complex as one
   * float2 and each element where it lies, and has no use for either.) */
  IrRef *copied; /* the constants copied, node order */
  int ncopied;
  int planar_state; /* complex: the running value and the copies are planar */
  int transposed;   /* they are transposed, block rows contiguous */
  /* Rows in vector lanes (a [rows, last] group, rows a multiple of
   * SCHED_SCAN_LANES, every member computable on vectors): blocks of
   * SCHED_SCAN_LANES rows, transposed copies (planar too for a complex
   * state), and per element of the last axis the loop over time inside, so
   * the running value and the constants stay in registers across the steps
   * and the sums over the last axis add whole vectors of rows into each
   * step's output (codegen/scan.c, lanes_steps). */
  int lanes;
  /* lanes: the copies of the constants, made once per call
   * (SCHED_OP_LANE_COPIES) in this buffer: per block, per copy, its real
   * parts [last][SCHED_SCAN_LANES] then its imaginary parts; -1 if none. */
  int copy_buf;
  /* A real state of at most SCHED_SCAN_SPLIT_FLOATS elements may also split
   * its steps across threads when the examples and items leave threads idle
   * (the two-level scan, codegen/scan.c; how many parts is decided per call).
   * time_buf: per part but the first and the last, the part's composed
   * coefficients and then its entering state, 2 rows of the state each, for
   * at most SCHED_SCAN_SLOTS (example, part) pairs; -1 if the group does not
   * split in time. */
  int time_buf;
} SchedScanGroup;

/* How operand a of a member of a fused loop over a rank-2 key [rows, last]
 * varies along the rows and along the last axis (numpy broadcast, aligned
 * on the right): *row and *last are 1 where it does, 0 where it repeats. */
void sched_lane_strides(const SchedValue *a, int *row, int *last);

#define SCHED_SCAN_SPLIT_FLOATS 4096
#define SCHED_SCAN_SLOTS 8

/* SCHED_OP_ATTN (sched/attn.c): per example and head, the runtime's tiled
 * causal attention (rt_cpu_attention) over the sequence. */
typedef struct SchedAttn {
  IrRef q, k, v; /* [L..., K], [L..., K], [L..., V]; the heads are the L... */
  int64_t heads, K, V;
  double scale; /* of q . k */
  int work_buf; /* the kernel's scratch: per example, heads * work_head floats */
  int64_t work_head;
} SchedAttn;

/* SCHED_OP_LINATTN (sched/chunk.c): per example, the runtime's chunkwise
 * kernel over the sequence, for each readout of one state, the last call
 * leaving the final state in the state's storage. The kernel: */
typedef enum {
  SCHED_CHUNK_LINATTN, /* linattn ops, rt_cpu_linattn */
  SCHED_CHUNK_DELTA,   /* the delta rule: delta ops, rt_cpu_delta */
  SCHED_CHUNK_DPLR,    /* the generalized delta rule: dplr ops, rt_cpu_dplr */
  SCHED_CHUNK_PLSTM,   /* a small dense transition: plstm ops, rt_cpu_plstm */
} SchedChunkKind;
typedef struct SchedLinattn {
  int state;      /* whose storage holds S: initial, then final */
  int transposed; /* the state is [L..., K, V] (S0 = transpose(state)) */
  IrRef *reads;   /* linattn nodes, node order; each stored per token */
  int nreads;
  IrRef final; /* linattn_state, or -1 */
  SchedChunkKind kind;
  IrRef k, v, lg; /* the operands every call shares (lg: dplr's lw, the decay's log) */
  IrRef beta;     /* the delta rule's, [R, L...] */
  IrRef a, b;     /* dplr's low-rank term's vectors, [L..., K] */
  IrRef tr, src;  /* plstm's transition [L..., J, J] and source [L..., J] */
  int no_gate;    /* lg is the constant 0 */
  int64_t heads, K, V, Kg;
  int64_t J;           /* plstm: S is [L..., J, V, K]; 1 for the others */
  int64_t R;           /* the delta rule's factors per token (k [R, L..., K]); 1 for linattn */
  int64_t chunk;       /* tokens per chunk */
  int work_buf;        /* the kernel's scratch, per example: for all its heads in one call,
                          or for each head in a call of its own */
  int64_t work_floats; /* of an example: max(kernel's work for all heads, heads x work_head) */
  int64_t work_head;   /* the kernel's work for one head */
  int copy_buf;        /* a canonical copy of S0 per example: for all readouts but the last,
                          or for a transposed state (-1: none) */
  /* With fewer examples x heads than threads, a head's value columns may
   * split too (the rows of S are independent; codegen/chunk.c decides per
   * call): SCHED_CHUNK_SLICES calls at most, each with work_head floats of
   * split_buf (-1: no split: a transposed state, or V under 32). */
  int split_buf;
} SchedLinattn;
#define SCHED_CHUNK_SLICES 16

struct SchedOp {
  SchedOpKind kind;
  SchedClass cls; /* ROWS: whose rows */
  IrRef node, last;
  VEC(SchedOp) body;
  SchedScanGroup *group; /* SCHED_OP_SCAN fused; NULL: the scan alone, materialized */
  SchedLinattn *linattn; /* SCHED_OP_LINATTN */
  SchedAttn *attn;       /* SCHED_OP_ATTN */
};

/* ---- Instances and the schedule ---------------------------------------------- */

typedef struct SchedInst {
  const IrFunc *fn;
  int64_t *dims;      /* concrete, per dim of fn */
  int *params;        /* per param of fn: index into the signature's params */
  int *states;        /* per state of fn: index into the signature's states */
  int *layers;        /* per layer of fn: index into Schedule.insts */
  SchedValue *values; /* per node of fn */
  VEC(SchedBuf) bufs;
  int *state_buf; /* per state: its storage */
  int *state_tmp; /* per state: STATE_TMP buffer, or -1 */
  /* Per state: its new value is written over its storage by the step's fused
   * loop, which is the only reader of the old value (each element read before
   * it is overwritten); the value has no buffer of its own and the commit
   * copies nothing for it. The step's row loops then skip the examples past
   * their length, whose states must not change. */
  unsigned char *state_inplace;
  SchedScanGroup **groups; /* per node: the fused scan it anchors (its last member), or NULL */
  SchedLinattn **linattns; /* per node: the chunked state it anchors, or NULL */
  SchedAttn **attns;       /* per node: its attention plan (attn nodes), or NULL */
  /* The time loop runs in chunks of Tc steps, Tc = clamp(chunk_budget /
   * (chunk_floats * max(B, 1)), 1, T) (chunk_budget_threads on several
   * threads), so a chunk's hoisted rows are still in cache when its steps
   * read them. */
  int chunked;
  int64_t chunk_floats; /* floats one token takes in the chunk's buffers */
  int64_t min_tc;       /* a parallel form's chunks are at least this long (or T) */
  /* Size limits: calls with B*T*per_token or B*per_example floats past 2^40
   * are refused (ABI_ERR_NOMEM) before anything is allocated. */
  int64_t per_token, per_example;
  VEC(SchedOp) ops;
} SchedInst;

/* The prepared block starts with a header of this many floats (SYM_prepare
 * writes a mark and the hash of the block's layout there; the entry points
 * refuse a block without them), then the packed weights. */
enum { SCHED_PREPARED_HEADER = 16 };

/* A GEMM weight the host may pack once (SYM_prepare, docs/abi.md): a
 * parameter read as it is, packed like SCHED_BUF_PACKED at `offset` floats
 * into the prepared block. */
typedef struct SchedPrepared {
  int param;        /* its index in the signature's params */
  int64_t k, n, ld; /* rt_cpu_pack_b's K, N and leading dimension */
  int trans;        /* the weight is [N, K] (W @ x) */
  int64_t offset;   /* floats into the block (a multiple of 16) */
} SchedPrepared;

typedef struct Schedule {
  const IrModule *mod;
  AbiSignature sig;
  VEC(SchedInst) insts; /* insts.v[0] is the root, then its layers depth first */
  /* The weights a host may pack once; the entry points then read slot i's
   * packed form from params[sig.params.n + i] (NULL: pack per call). */
  VEC(SchedPrepared) prepared;
  int64_t prepared_floats;
  /* Work per token over all instances (multiply-adds and element
   * operations): the runtime's estimate of whether splitting the batch
   * across threads pays. */
  int64_t work_per_token;
  /* Run-time policies with the measurements behind them (sched/plan.c). */
  int64_t chunk_budget;         /* floats a time chunk's TOKEN buffers may take */
  int64_t chunk_budget_threads; /* ... on more than one thread */
  int64_t pack_min_tokens;      /* calls with fewer tokens multiply by unpacked weights */
  int64_t pack_swap_min_b;      /* ... and so do calls with at least this batch */
  int64_t pack_min_steps;       /*     and fewer steps than this */
  int64_t kernel_chunk;         /* tokens per chunk of the chunked kernels (the runtime's default,
                                   or --chunk) */
} Schedule;

/* Schedules `root` of m with the concrete values dims[v] of its dims for the
 * CPU. `symbol` prefixes the entry points. What the backend cannot run is a
 * diagnostic at the construct. Returns 0 and *out (arena-owned). */
/* kernel_chunk: tokens per chunk of the chunked kernels; 0, the runtime's
 * measured default. */
int sched_build(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *dims,
                const char *symbol, int64_t kernel_chunk, Schedule **out, DiagEngine *de);

/* The stable text form (`seqc --emit=sched`). */
void sched_print(FILE *out, const Schedule *s);

/* Elements of a row of v in floats (complex elements are pairs). */
int64_t sched_row_floats(const SchedValue *v);
/* Whether node r of fn is a view of another value (no buffer of its own). */
int sched_is_view(IrOp op);
/* For an axis of v: the product of the sizes before it, its size, and the
 * product after it. */
void sched_axis_split(const SchedValue *v, int axis, int64_t *outer, int64_t *len, int64_t *inner);
/* Floats a packed K x N weight takes (the runtime's layout, rt_cpu.h). */
int64_t sched_packed_floats(const SchedValue *v);
/* Node r of in is computed in `phase`: of that class, not a view, read by
 * something (or a layer call, which runs for its states), and not computed
 * by a fused scan or a chunked form. */
int sched_in_phase(const SchedInst *in, SchedClass phase, IrRef r);
/* Whether window node r (a shift register's value leaving each step) is
 * read only as its state's next value, so only at each chunk's (or the
 * sequence's) last step. */
int sched_window_last_only(const SchedInst *in, IrRef r);
/* The state whose old value node r is (through reshapes), or -1. */
int sched_state_alias(const IrFunc *fn, IrRef r);

#endif
