/* passes.h - the passes' shared header: one section per file in passes/, in
 * the order the pipeline runs them (QBE style). A pass reads the IR (ir/ir.h)
 * and never includes a frontend header.
 */
#ifndef SEQ_PASSES_H
#define SEQ_PASSES_H

#include "ir/ir.h"

/* ---- build.c: building one function from another in a pass -------------- */

/* The function a pass builds (dst) from the one it reads (src); map gives
 * the dst node of a src node, where a helper needs one (pb_log). */
typedef struct PassBuild {
  Arena *a;
  DiagEngine *de;
  const char *pass; /* names internal errors */
  const IrFunc *src;
  IrFunc *dst;
  IrRef (*map)(void *ctx, IrRef x);
  void *ctx;
  int failed; /* an internal error or out of memory, diagnosed */
} PassBuild;
/* A node of dst typed by its op's rule; IR_NONE (and failed) when it does
 * not type, which is a bug in the pass, or memory runs out. */
IrRef pb_node(PassBuild *b, IrOp op, int nargs, const IrRef *args, const IrNode *attrs, SrcLoc loc);
IrRef pb_node2(PassBuild *b, IrOp op, IrRef x, IrRef y, SrcLoc loc);
IrRef pb_const(PassBuild *b, double v, SrcLoc loc);
/* x as exactly type t by op (IR_RESHAPE or IR_BROADCAST); x if it has t. */
IrRef pb_shape(PassBuild *b, IrOp op, IrRef x, IrType t, SrcLoc loc);
/* log of src node x in dst, where x is provably positive (exp, sigmoid,
 * positive constants, their products, quotients and reshapes); IR_NONE and
 * *why (with x's location) where it is not. */
IrRef pb_log(PassBuild *b, IrRef x, const char **why);

/* ---- classify.c: recurrence classes and parallel strategies ------------ */

/* How a state's new value depends on the old one (docs/algorithms.md §1).
 * Read off the IR by dataflow: which STATE nodes `next` reaches, and whether
 * the path from them is affine (over (+, x) or over (max, +)). Each class is
 * a precondition that classify.c proves on the IR (the comment above the code
 * that decides it says exactly what); a parallel form may rely on it. Where
 * a precondition cannot be proved, the next less specific class is taken. */
typedef enum {
  REC_MAP,             /* next reads no earlier value of its own group */
  REC_CARRIED,         /* next is the STATE node itself */
  REC_SHIFT,           /* elements copied from the state or S-free: a shift register */
  REC_LIN_DIAG,        /* h' = a * h + b, a S-free, elementwise (real or complex) */
  REC_LIN_MATRIX,      /* S' = g * S + rank-1 writes, g along heads and the key axis */
  REC_LIN_DPLR,        /* S' = S (diag(g) - a b^T) along one axis + ...: DPLR */
  REC_LIN_SMALL_DENSE, /* C' = T C along one axis + ..., T S-free per slice */
  REC_LIN_DENSE,       /* any other linear map: W h + b, coupling through a contraction */
  REC_MAXPLUS,         /* m' = max(a + m, b) elementwise: linear over (max, +) */
  REC_NONLINEAR,
  REC_LIN_BLOCK_DIAG, /* k states of one shape coupled elementwise: k x k blocks */
} RecClass;

/* The coefficient of the diagonal part, relative to the state's axes of
 * size other than 1: exactly 1; the same for every element (of a head, when
 * the gate varies along head axes only); varying along the key axis (a
 * matrix state's diagonal gate); varying along all of them. A diagonal
 * state's elements are all independent, so the axes its gate varies along,
 * when not all, are read as heads: a scalar gate per head. */
typedef enum { REC_GATE_NONE, REC_GATE_SCALAR, REC_GATE_DIAG, REC_GATE_FULL } RecGate;

typedef enum {
  REC_STRAT_KEEP,         /* carried: nothing to compute */
  REC_STRAT_MAP,          /* parallel map over time */
  REC_STRAT_WINDOW,       /* parallel map reading earlier inputs (shift) */
  REC_STRAT_SCAN,         /* associative scan, diagonal combine */
  REC_STRAT_SCAN_DENSE,   /* associative scan, dense (d x d) combine */
  REC_STRAT_CHUNKED,      /* chunkwise-parallel with scalar/diagonal decay */
  REC_STRAT_CHUNKED_WY,   /* chunkwise-parallel, WY form (delta rule) */
  REC_STRAT_CHUNKED_TREE, /* chunkwise-parallel, tree of transition products */
  REC_STRAT_SCAN_MAXPLUS, /* associative scan over (max, +) */
  REC_STRAT_NEWTON,       /* Newton (DEER / ParaRNN); fallback: sequential */
  REC_STRAT_SCAN_BLOCK,   /* associative scan, combine of k x k blocks of diagonals */
} RecStrategy;

/* Structure of d next / d state within a nonlinear group. */
typedef enum { REC_JAC_NONE, REC_JAC_DIAG, REC_JAC_BLOCK_DIAG, REC_JAC_DENSE } RecJacobian;

typedef struct RecState {
  int state; /* index into IrFunc.states */
  RecClass cls;
  RecGate gate;       /* LIN_DIAG, LIN_MATRIX, LIN_DPLR */
  int gate_invariant; /* the gate reads only params and constants (time-invariant) */
  int is_complex;     /* complex state or coefficient */
  /* The axis of the state the class is about, or -1: LIN_MATRIX the key axis
   * (the one its gate may vary along; the last possible one when the gate
   * does not vary along either side of the writes), LIN_DPLR the axis the
   * transition acts on, LIN_SMALL_DENSE the mixed axis, SHIFT the axis the
   * elements move along. */
  int axis;
  unsigned heads;     /* LIN_DIAG, LIN_MATRIX, LIN_DPLR: axes read as heads (bit k = axis k) */
  int group;          /* strongly connected group of the state graph, 0-based */
  int *deps, ndeps;   /* states that `next` reads, ascending (may include itself) */
  int *given, ngiven; /* deps outside the group: known before this group is solved */
  const char *reason; /* in words, with locations: why this class */
  SrcLoc reason_loc;  /* where the deciding op is (may have no file) */
  RecStrategy strategy;
  RecJacobian jacobian; /* REC_NONLINEAR only */
  int block;            /* REC_JAC_BLOCK_DIAG, REC_LIN_BLOCK_DIAG: states per block */
  const char *jacobian_reason;
  /* A linear time-invariant system (docs/algorithms.md §9; classify.c says
   * what is proved): its outputs are its inputs convolved with a kernel
   * K_l = C A^l B computed once, plus a feedthrough. Reported with its
   * cost; no convolution form is built. */
  int lti;
  unsigned lti_channels;          /* state axes of independent channels (bit k = axis k); 0: one
                                     system mixing all of them */
  int *lti_inputs, nlti_inputs;   /* the inputs its update reads (indices into IrFunc.inputs) */
  int *lti_outputs, nlti_outputs; /* the outputs that read it (indices into IrFunc.outputs) */
  const char *lti_reason;         /* in words: inputs, outputs, channels */
} RecState;

typedef struct RecFunc {
  const IrFunc *func;
  RecState *states; /* one per func->states, same order */
  int nstates;
  int ngroups;
} RecFunc;

typedef struct ClassifyResult {
  RecFunc *funcs; /* one per module function (models have no states) */
  int nfuncs;
} ClassifyResult;

/* Classifies every state of f. Returns 0, or -1 with a diagnostic on
 * malformed IR (an internal error) or allocation failure. */
int classify_func(Arena *a, const IrFunc *f, RecFunc *out, DiagEngine *de);
int classify_module(Arena *a, const IrModule *m, ClassifyResult **out, DiagEngine *de);
/* A stable, readable report: one block per cell, one entry per state. */
void classify_print_report(FILE *out, const IrModule *m, const ClassifyResult *r);
const char *classify_class_name(RecClass c);
const char *classify_strategy_name(RecStrategy s);

/* ---- rewrite.c: contractions to matrix products, algebraic identities -- */

/* Returns in *out a rewritten copy of m (m itself is not changed: the
 * interpreter keeps running it as the oracle). A sum over the shared axis of
 * a broadcast product becomes a MATMUL with reshapes and transposes around
 * it, and exact identities (x * 1, x + 0, reshape of reshape, ...) fold.
 * Values are kept exactly, up to the order of the additions in a new matrix
 * product. Functions, dims, parameters, inputs, states and outputs keep
 * their order and names, so a binding of m serves *out, and function i of m
 * is function i of *out. Returns 0, or -1 with a diagnostic (allocation
 * failure or an internal error). */
int rewrite_module(Arena *a, const IrModule *m, IrModule **out, DiagEngine *de);
/* ---- jacobian.c: forward-mode derivatives of a cell's step ------------- */

/* Builds in m a new cell "<cell>.jvp" computing the tangent map of the step
 * (docs/algorithms.md §6): ds -> J_t ds, J_t = d next / d state at (state, x_t),
 * all states jointly. It has cell's dims, params and states (same init and
 * next, so a run follows the primal trajectory), cell's inputs followed by
 * one input "d<state>" per state (the tangent, the state's type), and the
 * outputs "<state>'" (next) for every state, then "d<state>'" (J_t ds) for
 * every state. One rule per op (jacobian.c); an op with no derivative in a
 * step (a sequence-level op) or a model is a diagnostic. The new function is
 * verified; if m already has it (a second call), that one is returned. Returns
 * 0 and *out, or -1 with a diagnostic and m as it was. */
int jacobian_jvp_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de);
/* Builds "<cell>.diag": the diagonals of the blocks of J_t for quasi-DEER.
 * Same dims, params, inputs and states as cell; outputs "<state>'" for
 * every state, then for every state j and every state k of j's type the
 * elementwise derivative of next_k[i] by state_j[i], named "d<k>'/d<j>"
 * (zero if next_k does not read state j). Derived by per-op rules for
 * elementwise ops only: a path from a state through an op that mixes its
 * elements (a product, a reduction over its axes, a norm, broadcasting it),
 * or from a state to the next of a state of another type, means the block is
 * not diagonal, and that is a diagnostic naming the op. For complex states
 * the entry is the complex derivative (real-linear ops are refused). */
int jacobian_diag_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de);
/* Builds "<cell>.quasi": as "<cell>.diag", but where the Jacobian is dense
 * (a state [S] read through a product W h, W [c S, S], and elementwise ops)
 * its outputs are still the exact diagonals of the blocks, for quasi-Newton
 * (jacobian.c says when that holds); a path it cannot follow (a product of
 * a product, a state of rank other than 1) is a diagnostic. */
int jacobian_quasi_cell(Arena *a, IrModule *m, const IrFunc *cell, IrFunc **out, DiagEngine *de);

/* ---- strategy.c: the form that solves each state --------------------------- */

/* How a state is computed over a sequence (docs/algorithms.md). */
typedef enum {
  FORM_AUTO,       /* the cost model's choice */
  FORM_SEQUENTIAL, /* the step loop: any class */
  FORM_SCAN,       /* an associative scan: maps, linear diagonal and matrix states, (max, +) */
  FORM_CHUNKED,    /* chunkwise-parallel: a matrix state read through contractions */
  FORM_NEWTON,     /* Newton's method over the sequence: a nonlinear state (newton.c) */
  FORM_COUNT
} Form;

const char *form_name(Form f);

/* --strategy: a form for every state, and forms for named states (flat
 * names, "S" or "l0.S"). */
/* How a Newton solve stops (IrNewton; docs/algorithms.md): converged when
 * every |step| <= atol + rtol |value|; past max_iter iterations, the
 * sequential form instead. Zero fields take the defaults below. */
#define NEWTON_RTOL 1e-5
#define NEWTON_ATOL 1e-6
#define NEWTON_MAX_ITER 24
typedef struct NewtonOptions {
  double rtol, atol;
  int max_iter;
  int64_t window; /* steps per window (IrNewton.window); 0: automatic */
  int dense;      /* a dense Jacobian whole (IrNewton.dense), not its diagonals */
} NewtonOptions;

typedef struct StrategyRequest {
  NewtonOptions newton;
  Form all;
  int n;
  const char **names;
  Form *forms;
  int preference; /* `all` is a preference (the CUDA target's auto): no error when no
                     state admits it */
} StrategyRequest;

/* Parses "auto", "scan", "S=chunked,z=scan", "sequential,l0.h=scan", ...
 * Returns 0, or -1 with a message in err. */
int strategy_parse(Arena *a, const char *spec, StrategyRequest *out, char *err, size_t errlen);

/* ---- cost.c: what each form of a recurrence costs per token ------------ */

/* The machine and the workload the cost model assumes. */
typedef struct CostMachine {
  double flops;   /* FMA peak of one core, flop/s */
  double dram_bw; /* one core's memory bandwidth, bytes/s */
  double l2_bw;   /* one core's L2 read bandwidth, bytes/s */
  int lanes;      /* floats per vector of the code's ISA */
  int threads;    /* threads the compiled code runs on */
  int64_t batch;  /* examples per call assumed (the batch splits across threads) */
} CostMachine;

typedef struct FormCost {
  double flops, bytes; /* per token of one example, the recurrence only */
  double seconds;      /* estimated per token of the batch, over the threads used */
} FormCost;

/* Iterations of a Newton solve the cost model assumes (the medians measured
 * on the std cells at rtol 1e-5, docs/algorithms.md section 6): exact
 * Newton (diagonal or block-diagonal Jacobians), quasi-Newton (dense). A
 * solve evaluates the step that many times plus two (the guess, and the
 * step at it). */
#define COST_NEWTON_ITERS_EXACT 4
#define COST_NEWTON_ITERS_QUASI 11
int cost_newton_evals(RecJacobian jac);

/* The cost of running state rs of cell f (concrete dims) in `form`; 0, or
 * -1 if the dims do not evaluate. cost.c says what is counted and how. */
int cost_state(const IrFunc *f, const RecState *rs, const int64_t *dims, const CostMachine *mc,
               int64_t B, Form form, FormCost *out);

/* The sequence length the convolution's estimate assumes: dims do not
 * include one (docs/algorithms.md §9). */
#define COST_CONV_T 4096
/* The cost of the convolution form of a time-invariant state rs (rs->lti)
 * over sequences of T tokens: the kernel once per call for B examples, and
 * per example FFTs of 2T points and the products of their spectra. It is
 * reported, never built. 0, or -1 if rs is not time-invariant or the dims
 * do not evaluate. */
int cost_convolution(const IrFunc *f, const RecState *rs, const int64_t *dims,
                     const CostMachine *mc, int64_t B, int64_t T, FormCost *out);

/* Seconds per token of the weight products of cell f that read a state
 * (transitively): in the step loop (parallel 0) or over time chunks of
 * token rows, as every all-parallel form runs them (1). */
double cost_state_products(const IrFunc *f, const int64_t *dims, const CostMachine *mc, int64_t B,
                           int parallel);

/* What one token of cell f costs at the least, in any form: the flops of
 * every node that varies per token (time-invariant work once per call is
 * left out; a matrix product 2 M N K, an elementwise op 1, exp, log, tanh
 * and the functions built on them 10, a complex op 4 times a real one), the
 * bytes of its inputs and outputs, and the bytes of its weights (read at
 * least once per call). For a roofline. */
void cost_cell_work(const IrFunc *f, const int64_t *dims, double *flops, double *io_bytes,
                    double *weight_bytes);

/* The form of every state of every function of a module, and why. */
typedef struct StateForm {
  Form form;
  const char *why; /* in words: the request, the cost model's numbers, or why not parallel */
  int costed;      /* cost[] holds the estimate of each form the class admits */
  FormCost cost[FORM_COUNT];
  int admitted[FORM_COUNT];
  int newton_evals; /* evaluations of the step a Newton solve takes (cost_newton_evals) */
  int conv;         /* a time-invariant state, costed: conv_cost is its convolution form's */
  FormCost conv_cost;
} StateForm;

typedef struct StrategyPlan {
  NewtonOptions newton; /* the request's, defaults filled in */
  StateForm **funcs;    /* per module function, per state */
  int64_t **dims;       /* per module function: its first instance's concrete dims, or NULL */
} StrategyPlan;

/* Chooses the form of every state of m (the module the backends compile,
 * classified as cr) under the request, for the root `root` with concrete
 * root dims: a cell runs in parallel only when all its states do, and a
 * form the class does not admit is an error naming the class when the
 * request names it. Returns 0, or -1 with a diagnostic. */
int strategy_choose(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *root_dims,
                    const ClassifyResult *cr, const StrategyRequest *req, const CostMachine *mc,
                    StrategyPlan **out, DiagEngine *de);
/* `seqc --report --dims`: per cell and state, the form chosen and why, the
 * cost of every form the class admits, and for a time-invariant state that
 * of its convolution form (reported, not built). */
void strategy_print(FILE *out, const IrModule *m, const StrategyPlan *plan);

/* ---- delta.c: the delta rule read off a step ------------------------------ */

/* A state S [L..., V, K] updated per token as exp(lg) S, then R factors
 * S (I - beta k k^T) + beta v k^T, or as S diag(d) + (S a) b^T + v k^T
 * (delta.c says how they are found). Each
 * coefficient is a product of nodes of the cell, each aligned to the
 * state's rank or to that of a [L..., V] vector (ctx 0 or 1). */
#define DELTA_MAX_R 4
#define DELTA_MAX_FACTORS 12
typedef struct DeltaFac {
  int sign, n;
  IrRef x[DELTA_MAX_FACTORS];
  signed char ctx[DELTA_MAX_FACTORS];
} DeltaFac;
typedef struct DeltaFactor {
  DeltaFac gate, k, beta, v; /* gate: the first factor's only */
} DeltaFactor;
/* general: the rule with a decay per key and two vectors in its low-rank
 * term (RWKV-7), S diag(d) + (S a) b^T + v k^T, one factor per token (in
 * d, a, b, v, k; f unused): the dplr ops. Else the R factors in f: the
 * delta ops. */
typedef struct DeltaForm {
  int R, rank;
  DeltaFactor f[DELTA_MAX_R];
  int general;
  DeltaFac d, a, b, v, k;
} DeltaForm;
/* The operands of delta and delta_state, or of dplr and dplr_state
 * (ir/ops.def), in a parallel form: op (IR_DELTA_STATE or IR_DPLR_STATE)
 * and its operands but S0, in order. */
typedef struct DeltaOps {
  IrOp op;
  int nargs;
  IrRef args[5];
} DeltaOps;
/* 0 and *out when state `state` of cell is the delta rule; 1 and *why (in
 * words, with a location) when it is not; -1 out of memory. */
int delta_analyze(Arena *a, const IrFunc *cell, int state, DeltaForm *out, const char **why);
/* The operands of form in dst, whose nodes map(ctx, src) gives for the
 * cell's nodes; 0, 1 and *why (a gate not provably positive), or -1 with a
 * diagnostic. */
int delta_build(Arena *a, const IrFunc *cell, int state, const DeltaForm *form, IrFunc *dst,
                IrRef (*map)(void *ctx, IrRef src), void *ctx, DeltaOps *out, const char **why,
                DiagEngine *de);

/* ---- transition.c: a small dense transition (pLSTM), for its chunked form */

#define TRANSITION_MAX_TERMS 4
#define TRANSITION_MAX_FACTORS 8
#define TRANSITION_MAX_SCALES 4
/* How a transition term's matrix (a node of the cell) is laid out: T of
 * T @ reshape(S, [J, V*K]) ([J, J], row: the new j); or T' of
 * sum(T' * S', axis) aligned to rank r + 1 with its new j before the summed
 * one (ROWS_FIRST) or after it (COLS_FIRST); or a coefficient (DIAG). */
typedef enum {
  TRANSITION_MATMUL,
  TRANSITION_ROWS_FIRST,
  TRANSITION_COLS_FIRST,
  TRANSITION_DIAG, /* c * S: diag(c) along J, c aligned to the state's rank (IR_NONE: 1) */
} TransitionLayout;
typedef struct TransitionTerm {
  IrRef x;
  TransitionLayout form;
  int sign;
  IrRef scale[TRANSITION_MAX_SCALES]; /* S-free factors along J that scale its rows */
  int nscale;
} TransitionTerm;
/* Factors of the write along one of J, V, K: nodes of the cell aligned to
 * the state's rank, or (vec) vectors along that axis alone. */
typedef struct TransitionFac {
  int n;
  IrRef x[TRANSITION_MAX_FACTORS];
  signed char vec[TRANSITION_MAX_FACTORS];
} TransitionFac;
/* S[j] = sum_j' tr[j, j'] S[j'] + s[j] v k^T with the state [L..., J, V, K]:
 * tr the sum of the terms, s v k^T wsign times the product of the factors
 * (fac[0] along J, [1] V, [2] K). */
typedef struct TransitionForm {
  int rank, nt, has_write, wsign;
  TransitionTerm t[TRANSITION_MAX_TERMS];
  TransitionFac fac[3];
} TransitionForm;
/* 0 and *out when state `state` of cell has that form (with class_only,
 * when its next value is transitions plus anything S-free: the class
 * REC_LIN_SMALL_DENSE, whatever its write); 1 and *why (in words, with a
 * location) when not; -1 out of memory. */
int transition_analyze(Arena *a, const IrFunc *cell, int state, int class_only, TransitionForm *out,
                       const char **why);
/* plstm_state's operands tr, s, v, k (ir/ops.def) of form in dst, whose
 * nodes map(ctx, src) gives for the cell's; 0, or -1 with a diagnostic. */
int transition_build(Arena *a, const IrFunc *cell, int state, const TransitionForm *form,
                     IrFunc *dst, IrRef (*map)(void *ctx, IrRef src), void *ctx, IrRef ops[4],
                     DiagEngine *de);

/* ---- newton.c: the step a Newton solve iterates ------------------------- */

#define NEWTON_MAX_STATES 4
/* Builds "<cell>.step", a cell with no states (newton.c says what it
 * computes) for solving the n states solved[] (of one real type) by Newton,
 * and in *hoisted the nodes of cell whose values it takes as inputs after
 * the cell's own; *quasi is 1 when its blocks are the diagonals of a dense
 * Jacobian (quasi-Newton). With want_dense, a dense Jacobian of a group of
 * all the cell's states is applied instead (*dense = 1): the step takes a
 * tangent per solved state after them and gives J times it after the next
 * values (exact Newton, the runtime forming J column by column). Returns 0
 * and *out (in a module of its own); 1 and *why when the Jacobian has no
 * diagonal blocks; -1 with a diagnostic. */
typedef VEC(IrRef) IrRefs;
int newton_step_cell(Arena *a, const IrFunc *cell, const int *solved, int n, int want_dense,
                     IrFunc **out, IrRefs *hoisted, int *quasi, int *dense, const char **why,
                     DiagEngine *de);

/* ---- scan.c: a cell's parallel form as sequence-level IR ------------------ */

/* Builds the parallel form of `cell` (whose classification is rf): a new
 * model with the cell's name and signature in which every state's values
 * over the sequence come from a scan, a scan over (max, +), a map, the
 * initial value or a Newton solve (scan.c says how), read back through
 * delays. Returns 0 and *out; 1 and *why (in words) when a state has no
 * such form; -1 with a diagnostic on an internal error. A nonlinear group
 * is a call of layer 0 of *out, a Newton layer whose step (newton.c) is
 * *step: the caller places it in the module and sets the layer's callee
 * (*step is NULL when no state is nonlinear). */
int scan_cell(Arena *a, const IrFunc *cell, const RecFunc *rf, const NewtonOptions *no,
              IrFunc **out, IrFunc **step, const char **why, DiagEngine *de);
/* A copy of m in which every cell whose states all have a parallel form in
 * plan is its parallel form (scan_cell); function i of m is function i of
 * *out, with the same names, parameters, states and outputs, so a binding
 * of m serves *out. A cell the plan runs in parallel but that has no such
 * form is an error (the plan checked what it could). */
int scan_module(Arena *a, const IrModule *m, const ClassifyResult *cr, const StrategyPlan *plan,
                IrModule **out, DiagEngine *de);

/* ---- chunk.c: a matrix state's chunkwise-parallel form as IR ------------- */

/* Rewrites f, a cell's parallel form (scan.c), with the states marked in
 * chunked[] in their chunked form (linattn, linattn_state; chunk.c says
 * what it needs). Returns 0 and *out (a function of its own module); 1
 * and *why when a state has no such form; -1 with a diagnostic. */
int chunk_func(Arena *a, const IrFunc *f, const char *chunked, IrFunc **out, const char **why,
               DiagEngine *de);
/* A copy of m (a module of parallel forms) with every state the plan runs
 * chunked in that form; function i of m is function i of *out. */
int chunk_module(Arena *a, const IrModule *m, const StrategyPlan *plan, IrModule **out,
                 DiagEngine *de);

/* ---- order.c: the order of a cell's nodes, for fusion -------------------- */

/* A copy of m with every cell's nodes in an order that puts the elementwise
 * work of one size together (order.c says which); function i of m is
 * function i of *out, the same computation. */
int order_module(Arena *a, const IrModule *m, IrModule **out, DiagEngine *de);

#endif
