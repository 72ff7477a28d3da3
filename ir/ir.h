/* ir.h - the typed IR of seqc.
 *
 * A module holds functions. A function is either
 *   - a CELL: one time step. Its nodes compute, from parameters, the step's
 *     inputs and the states entering the step (STATE nodes), the states leaving
 *     the step (IrState.next) and the step's outputs (IrOutput.value); or
 *   - a MODEL: a sequence-level composition. Its nodes are per-token maps over
 *     whole sequences, plus CALL nodes that run a layer (a cell or a model) over
 *     the sequence, forwards or backwards in time.
 * Batch is implicit everywhere: types are per example. Time is implicit: a
 * cell's types are per step, a model's are per token.
 *
 * Nodes live in one array per function and refer to each other by index
 * (IrRef), always to earlier nodes, so the array is a topological order and a
 * pass is a loop. Construction deduplicates identical nodes (hash-consing), so
 * common subexpressions are shared from the start. Shapes are symbolic:
 * polynomials over the function's named dimensions.
 */
#ifndef SEQ_IR_H
#define SEQ_IR_H

#include "ir/support.h"

/* ---- Dimension expressions --------------------------------------------- */

/* A polynomial with integer coefficients over a function's dims: 4*H,
 * dt_rank + 2*d_state, H*H. Canonical form: terms sorted, no zero
 * coefficients, variables within a term sorted; so equality is memcmp-free
 * structural comparison (dim_eq). The zero polynomial has nterms == 0. */
#define DIM_MAX_TERMS 6
#define DIM_MAX_DEGREE 3
typedef struct DimTerm {
  int64_t coef;
  int8_t nvars;
  int16_t vars[DIM_MAX_DEGREE]; /* indices into IrFunc.dims, sorted */
} DimTerm;
typedef struct DimExpr {
  int8_t nterms;
  DimTerm t[DIM_MAX_TERMS];
} DimExpr;

DimExpr dim_const(int64_t c);
DimExpr dim_var(int v);
/* Arithmetic returns 0 on success, -1 if the result does not fit the
 * representation (too many terms, degree, or coefficient overflow). */
int dim_add(DimExpr a, DimExpr b, DimExpr *out);
int dim_sub(DimExpr a, DimExpr b, DimExpr *out);
int dim_mul(DimExpr a, DimExpr b, DimExpr *out);
int dim_div_exact(DimExpr a, int64_t k, DimExpr *out); /* -1 unless every coef divisible */
/* a / d for a one-term divisor d (3, NH, 2*NH): -1 unless every term of a
 * holds d's variables and a multiple of its coefficient. */
int dim_div_term(DimExpr a, DimExpr d, DimExpr *out);
int dim_eq(DimExpr a, DimExpr b);
int dim_is_const(DimExpr a, int64_t *value); /* 1 and *value if constant */
int dim_is_one(DimExpr a);                   /* the constant 1 */
/* Substitutes every variable v by sub[v]. */
int dim_subst(DimExpr a, const DimExpr *sub, DimExpr *out);
/* Evaluates with values[v]; -1 on overflow or a result outside
 * [0, SEQ_MAX_DIM_VALUE] (negative dimensions are errors too). */
int dim_eval(DimExpr a, const int64_t *values, int64_t *out);
/* Prints "4*H", "dt_rank + 2*d_state"; names[v] names the variables. */
void dim_print(FILE *out, DimExpr a, const char *const *names);
char *dim_str(Arena *a, DimExpr e, const char *const *names);

/* ---- Types -------------------------------------------------------------- */

typedef enum {
  IR_REAL,    /* float32 (float64 in the interpreter's f64 mode) */
  IR_COMPLEX, /* complex64: pairs of reals */
  IR_INT,     /* integer token index (scalar) */
} IrElem;

typedef struct IrType {
  IrElem elem;
  int rank;      /* 0 = scalar, at most SEQ_MAX_RANK */
  DimExpr *dims; /* rank entries, arena-owned and never mutated */
} IrType;

int ir_type_eq(IrType a, IrType b);
/* a's and b's axes other than those of size 1 are the same sizes in some
 * order: a reshape between them keeps the element count, whatever the
 * degree of its product (which DimExpr may not hold). */
int ir_type_same_sizes(IrType a, IrType b);

/* ---- Ops ---------------------------------------------------------------- */

enum {
  IRF_EW = 1 << 0,
  IRF_COMMUT = 1 << 1,
  IRF_LIN0 = 1 << 2,
  IRF_LIN1 = 1 << 3,
  IRF_LINALL = 1 << 4,
  IRF_LEAF = 1 << 5,
  IRF_SEQ = 1 << 6, /* a sequence-level op of a cell's parallel form (models only) */
};

typedef enum {
#define IR_OP(name, text, arity, flags) IR_##name,
#include "ir/ops.def"
#undef IR_OP
  IR_NUM_OPS
} IrOp;

typedef struct IrOpInfo {
  const char *text;
  int arity; /* -1: variadic */
  unsigned flags;
} IrOpInfo;
extern const IrOpInfo ir_op_info[IR_NUM_OPS];

/* ---- Nodes -------------------------------------------------------------- */

typedef int32_t IrRef; /* index into IrFunc.nodes; -1 = none */
#define IR_NONE (-1)

typedef struct IrNode {
  IrOp op;
  IrType type;
  SrcLoc loc;
  int nargs;
  IrRef *args;
  /* Attributes (which are meaningful depends on op; unused ones are zero so
   * that hash-consing can compare them all). */
  double cval;   /* CONST; eps of RMSNORM, LAYERNORM, L2NORM */
  DimExpr dval;  /* DIMVAL */
  int index;     /* PARAM, INPUT, STATE, CALL (layer), RESULT (output) */
  int axis;      /* SLICE, INDEX, CONCAT, SUM/MEAN/AMAX/AMIN (-1: all axes) */
  DimExpr start; /* SLICE, INDEX */
  DimExpr stop;  /* SLICE */
} IrNode;

/* ---- Functions ---------------------------------------------------------- */

typedef enum { IR_FN_CELL, IR_FN_MODEL } IrFuncKind;

typedef struct IrDim {
  const char *name; /* "H"; fresh dims of layers are "l0.I" */
  SrcLoc loc;
  int in_signature; /* declared in the unit's header (cell LSTM(I, H)) */
  int has_default;
  int64_t deflt;
} IrDim;

/* A dim whose default is an expression over the dims before it:
 * cell Mamba(d_model, d_inner = 2*d_model). Such a dim has has_default == 0
 * in IrDim; the default applies (ir/bind.c) only when nothing else fixes the
 * dim. It lives in a list beside the dims rather than in IrDim so that
 * positional IrDim initializers elsewhere stay complete. */
typedef struct IrDimDefault {
  int dim;      /* index into IrFunc.dims */
  DimExpr expr; /* over dims with smaller indices */
} IrDimDefault;

/* A dim that is a quotient of earlier ones: cell MHA(D, NH, Dh = D / NH).
 * Inside the unit the numerator dim is written as den * dim everywhere (D
 * is NH*Dh in every type), so shapes stay polynomials and
 * reshape([NH, Dh] -> [D]) checks symbolically; binding (ir/bind.c) computes
 * the quotient from the numerator or the numerator from the quotient and
 * reports a numerator the divisor does not divide. */
typedef struct IrDimQuotient {
  int dim;     /* the quotient, an index into IrFunc.dims */
  int num;     /* the numerator dim (earlier) */
  DimExpr den; /* one term over earlier dims: 4, NH, 2*NH */
  SrcLoc loc;  /* the default that declared it */
} IrDimQuotient;

/* A dim whose value the frontend used when compiling (a loop's trip count,
 * a layer array's length): binding starts from that value (ir/bind.c), so
 * weights or inputs of another size are reported, not run with a count
 * that does not match them. */
typedef struct IrDimPin {
  int dim;
  int64_t value;
  SrcLoc loc; /* the count that used it */
} IrDimPin;

typedef struct IrParam {
  const char *name; /* "weight_ih", "in_proj.weight" */
  IrType type;
  SrcLoc loc;
} IrParam;

typedef struct IrInput {
  const char *name;
  IrType type;
  SrcLoc loc;
  /* A context: one value per sequence ([B, ...] at the boundary, no time
   * axis), the same at every step. */
  int context;
} IrInput;

typedef struct IrState {
  const char *name;
  IrType type;
  SrcLoc loc;
  IrRef init; /* value before the first step; depends only on params/consts */
  IrRef next; /* value leaving the step (== the STATE node itself if unchanged) */
  int hidden; /* introduced by the compiler (causal_conv's window) */
} IrState;

typedef struct IrOutput {
  const char *name;
  IrType type;
  SrcLoc loc;
  IrRef value;
} IrOutput;

/* A layer solved by Newton's method (passes/newton.c builds it): the callee
 * is a cell's step with no states, F(x, p) -> (next, J): its last `states`
 * inputs are the previous values p_k of the solved states (all of one type),
 * its first `states` outputs their next values F_k, and the next states^2
 * outputs the Jacobian's diagonal blocks J_kj = d F_k / d p_j, elementwise,
 * k-major. A call passes the solved states' initial values for p and its
 * results are the solved states' values over the sequence: h_k[t] =
 * F_k(x_t, h[t-1]), h[-1] the initial values. How it is solved (iterations,
 * tolerances, damping, the sequential fallback): docs/algorithms.md, and
 * interp.c's newton_solve, which defines it. */
typedef struct IrNewton {
  int states;  /* 0: an ordinary layer */
  double rtol; /* converged when every |step| <= atol + rtol |value| */
  double atol;
  int max_iter;   /* past this many iterations, the sequential recurrence instead */
  int quasi;      /* J_kj are the diagonals of a dense Jacobian's blocks (quasi-Newton) */
  int dense;      /* the step's outputs after the n values are J times its last n inputs
                     (tangents), not the n^2 blocks: the solve forms J column by column */
  int64_t window; /* steps solved at once, one window after another (0: the whole
                     sequence, or in compiled code as many as a memory budget allows) */
} IrNewton;

/* A layer of a model: an instance of another function. Every dim of the
 * callee is bound to an expression over the caller's dims (dims the user did
 * not pass become fresh dims of the caller, inferred later from weights).
 * Parameter names of the instance are prefix + callee name + suffix. */
typedef struct IrLayer {
  const char *name; /* "l0", "layers.3" */
  SrcLoc loc;
  int callee;        /* index into IrModule.funcs */
  DimExpr *dim_args; /* one per callee dim */
  const char *prefix, *suffix;
  int reverse; /* run backwards in time within each sequence's length */
  /* Run over positions: called on per-sequence values of one more leading
   * axis [N, ...] than its per-step inputs, it runs once per example over
   * those N positions as a sequence of its own (an encoder over a context),
   * its outputs per-sequence values [N, ...]. Its contexts are passed as they are. */
  int over;
  /* ... with lengths: the call's last operand, after one per callee input,
   * is an int context giving each example's length (positions from it on
   * are not run: outputs zero, final states at the length). */
  int over_lengths;
  IrNewton newton;
} IrLayer;

typedef struct IrFunc {
  const char *name;
  IrFuncKind kind;
  SrcLoc loc;
  const char *doc;
  VEC(IrDim) dims;
  VEC(IrParam) params;
  VEC(IrInput) inputs;
  VEC(IrState) states;
  VEC(IrOutput) outputs;
  VEC(IrLayer) layers;
  VEC(IrNode) nodes;
  struct IrHash *cse;               /* hash-consing table (builder-private) */
  VEC(IrDimDefault) dim_defaults;   /* at most one per dim */
  VEC(IrDimPin) dim_pins;           /* may repeat a dim (always with the same value) */
  VEC(IrDimQuotient) dim_quotients; /* at most one per dim and per numerator */
  /* A grid cell (`step grid(Y)`, docs/language.md "Grids"): the frontend
   * wrote its step for one row of `grid` positions (each position reading
   * the one before it in the row and the one above it in the previous row),
   * so its inputs, states and outputs have a leading axis of that length and
   * a time step is a row. 0 for any other function. */
  int64_t grid;
} IrFunc;

typedef struct IrModule {
  Arena *arena;
  VEC(IrFunc *) funcs;
  int entry; /* the function `seqc run` executes: the last unit of the main file */
} IrModule;

/* ---- Building ----------------------------------------------------------- */

IrModule *ir_module_new(Arena *a);
IrFunc *ir_func_new(IrModule *m, const char *name, IrFuncKind kind, SrcLoc loc);
int ir_func_index(const IrModule *m, const char *name); /* -1 if absent */
/* f takes src's doc, dims (with their defaults and pins), params and grid,
 * shared (never grown in place): a function derived from src. */
void ir_func_share_header(IrFunc *f, const IrFunc *src);
/* A copy of f in m with only its live nodes (those the outputs, the states'
 * initial and next values and the layer calls read), in the same order;
 * the signature is shared with f. NULL when memory runs out. */
IrFunc *ir_func_prune(IrModule *m, const IrFunc *f);
/* A copy of f in m with the nodes order[0..n) (a topological order of the
 * nodes kept, which must hold every node they, the states and the outputs
 * read) in that order. NULL when memory runs out. */
IrFunc *ir_func_reorder(IrModule *m, const IrFunc *f, const IrRef *order, int n);

/* Copies dims into the arena. A rank outside [0, SEQ_MAX_RANK] or a failed
 * allocation gives a type of rank -1 (never equal to a valid type). */
IrType ir_type(Arena *a, IrElem elem, int rank, const DimExpr *dims);
/* The size of t along axis ax of a value of rank r that t broadcasts to
 * (numpy rules: axes aligned on the right, a missing axis has size 1). */
DimExpr ir_type_aligned(IrType t, int r, int ax);
IrType ir_scalar(IrElem elem);

/* Appends (or finds an identical) node. `proto` carries op, type, loc and
 * attributes; args are copied. Returns IR_NONE on allocation failure. The
 * type is not inferred here: see ir_infer_type. */
IrRef ir_emit(IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args);

/* ir_infer_type, then ir_emit: proto's op, loc and attributes, typed by the
 * op's rule. The node, or IR_NONE: with msg holding the rule's reason when it
 * does not type, with msg empty when memory runs out. */
IrRef ir_emit_typed(IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args,
                    char *msg, size_t msglen);

/* Result-type rule of every op: fills *out from the operands' types and the
 * attributes in proto. On a shape or type error returns -1 and, if msg is
 * non-NULL, writes a human-readable reason ("cannot broadcast [H] with [4*H]")
 * using the function's dim names. */
int ir_infer_type(const IrFunc *f, Arena *a, const IrNode *proto, int nargs, const IrRef *args,
                  IrType *out, char *msg, size_t msglen);

/* ---- Derivatives (grad.c) ---------------------------------------------- */

/* d loss / d wrt, built into f as ordinary nodes (reverse mode): loss a real
 * scalar node, wrt an earlier real node (the frontend passes a leaf: a
 * state, an input or a param), `name` its name in messages. Every node built
 * carries loc. IR_NONE after a diagnostic where loss does not depend on wrt,
 * or an op on a path between them has no rule (at that op, with a note at
 * loc). */
IrRef ir_grad(IrFunc *f, Arena *a, IrRef loss, IrRef wrt, const char *name, SrcLoc loc,
              DiagEngine *de);

/* ---- Printing and checking --------------------------------------------- */

/* Stable text form (seqc --emit=ir). */
void ir_print_module(FILE *out, const IrModule *m);
void ir_print_func(FILE *out, const IrModule *m, const IrFunc *f);
void ir_print_type(FILE *out, const IrFunc *f, IrType t);

/* Checks the invariants (operands precede users, arities, types agree with
 * ir_infer_type, indices in range, states' init/next well-typed, CALL only in
 * models, STATE only in cells, layer dim bindings complete). Problems are
 * reported as internal errors naming `after_pass`. Returns 0 if valid. */
int ir_verify(const IrModule *m, DiagEngine *de, const char *after_pass);

/* Checks the bounds of INDEX or SLICE node nd of f at concrete dims (one
 * value per f->dims), its operand's axis having `size` elements: 0 when they
 * fit; otherwise -1 after a diagnostic at the node giving each bound as
 * written (a negative constant counts from the end: x[-5] says -5) and the
 * size. Both backends call it, so both refuse the same indices alike. */
int ir_check_index_bounds(const IrFunc *f, const IrNode *nd, const int64_t *dims, int64_t size,
                          DiagEngine *de);

/* ---- Instances: flattened names, dims, weights -------------------------- */

/* A parameter or state of the whole instance tree under a root function,
 * with its full name (prefixes and suffixes applied) and its type expressed
 * over the root's dims. */
typedef struct IrFlatVar {
  const char *name; /* "weight_ih_l0", "layers.0.mixer.A_log", "l0.h" */
  IrType type;      /* over root dims */
  SrcLoc loc;       /* the declaration */
  int hidden;       /* states only */
} IrFlatVar;

/* One instance of the tree: the root (index 0) or a layer of an instance,
 * in depth-first order (an instance before its layers). The naming rule
 * (prefixes, suffixes, state paths) is applied once, in ir_flatten; every
 * other stage finds an instance's parameters and states by these indices. */
typedef struct IrFlatInst {
  const IrFunc *fn;
  DimExpr *dims; /* per dim of fn: its value as an expression over the root's dims */
  int *params;   /* per param of fn: index into IrFlat.params (tied weights share one) */
  int *states;   /* per state of fn: index into IrFlat.states */
  int *layers;   /* per layer of fn: index into IrFlat.insts of its instance */
  int parent;    /* -1 for the root */
  int reverse;   /* the layer runs backwards in time relative to its parent */
} IrFlatInst;

typedef struct IrFlat {
  VEC(IrFlatVar) params;
  VEC(IrFlatVar) states; /* state names are dotted layer paths: "l0.h" */
  VEC(IrFlatInst) insts; /* insts.v[0] is the root */
} IrFlat;

int ir_flatten(Arena *a, const IrModule *m, const IrFunc *root, IrFlat *out, DiagEngine *de);

#endif
