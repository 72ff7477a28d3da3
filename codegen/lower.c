/* lower.c - IR to LLVM IR for one bound root function.
 *
 * The instance tree under the root (a cell, or a model and its layers) is
 * flattened first: every instance gets concrete dims, its offset into the
 * flat parameter and state arrays, and one LLVM function
 *
 *   i32 inst(ptr params, i64 B, i64 T, ptr inputs, ptr lengths,
 *            ptr state_in, ptr outputs, ptr state_out, i32 reverse)
 *
 * Every IR node then belongs to one of three classes, read off its operands:
 *   0 CONST  depends on parameters and constants only: computed once per call;
 *   1 TOKEN  depends on inputs but not on state: computed for many tokens at
 *            once ahead of the steps that read them (hoisting; rows are
 *            b*T + t, so a root input's [B, T, ...] buffer is already such a
 *            node);
 *   2 STATE  depends on a state: computed inside the time loop for all B
 *            examples at once, one row per example.
 * Hoisting pays for matrix products, not for elementwise nodes that expand
 * their token's data (S4D's dB * x[:, None]): those are moved to STATE
 * (demote_expansions). In a cell the time loop runs in chunks of Tc steps
 * and the TOKEN nodes are computed per chunk into buffers of B*Tc rows
 * (b*Tc + t - t0), so the hoisted rows are still in cache when the steps
 * read them (plan_chunks); models and cells with layer calls or
 * convolutions compute TOKEN nodes for all B*T tokens before the loop.
 * Within a class, nodes are emitted in order inside one loop over rows; a run
 * of elementwise nodes of one shape becomes one element loop (emit_fused); a
 * matrix product of a row-vector with a constant matrix ends the row loop and
 * becomes one rt_cpu_sgemm_packed over all rows (for LSTM: [B*Tc, I] x
 * [I, 4H] per chunk, [B, H] x [H, 4H] per step).
 */
#include "codegen/cg.h"
#include "runtime/rt_cpu.h"

#include <math.h>
#include <string.h>

#define LIMIT_ELEMS ((int64_t)1 << 40)

enum { CLS_CONST, CLS_TOKEN, CLS_STATE };

typedef struct Inst {
  const IrFunc *fn;
  int64_t *dims;
  int param0, state0; /* offsets of this instance's own params/states in the flat arrays */
  int *layer_inst;    /* per layer: index of the child instance */
  LLVMValueRef llfn;
} Inst;

typedef struct NodeInfo {
  int cls;
  int rank;
  int64_t shape[SEQ_MAX_RANK];
  int64_t numel;
  int is_int;
  int w; /* floats per element: 2 for complex (re, im interleaved), else 1 */
  int uses;
  int gemm;    /* 'T': W[N,K] @ x (uses wt), 'N': x @ W[K,N] */
  int inplace; /* reuses operand 0's buffer */
  int chunked; /* a TOKEN scratch buffer holding one time chunk: rows b*Tc + j */
  int64_t gemm_k, gemm_n;
  int cgemm;          /* 'T' with a complex constant W: run as a real GEMM on W's real form (wr) */
  LLVMValueRef base;  /* float* (i32* for int inputs) */
  LLVMValueRef wt;    /* transposed weight for 'T' */
  LLVMValueRef gath;  /* chunked TOKEN GEMM over a whole-sequence operand: its chunk's rows */
  LLVMValueRef wr;    /* cgemm: the real [gemm_n, gemm_k] form of the complex weight */
  LLVMValueRef *outs; /* CALL: one buffer per callee output */
  LLVMValueRef *cins; /* CALL: [B*T] copies of inputs that do not vary over time */
} NodeInfo;

typedef struct Lower {
  Arena *a;
  const IrModule *m;
  DiagEngine *de;
  LLVMContextRef cx;
  LLVMModuleRef mod;
  LLVMBuilderRef bld;
  LLVMTypeRef f32, i32, i64, i1, ptr, void_t;
  LLVMTypeRef inst_ty;
  VEC(Inst) insts;
  AbiSignature *sig;
  int failed;
  /* per function being emitted */
  Inst *in;
  const IrFunc *fn;
  NodeInfo *ni;
  LLVMValueRef fv;
  LLVMValueRef a_params, a_B, a_T, a_inputs, a_lengths, a_sin, a_outputs, a_sout, a_rev;
  LLVMValueRef status; /* alloca i32 */
  LLVMBasicBlockRef cleanup;
  LLVMValueRef scratch;  /* ptr */
  LLVMValueRef wscratch; /* ptr: packed weights, not zeroed */
  /* current row context: example, whole-sequence token row (b*T + t) and,
   * in chunked cells, the chunk-local token row (b*Tc + t - t0) */
  LLVMValueRef r_b, r_tok, r_tokc;
  /* chunked cells: the time loop runs in chunks of Tc steps, and the
   * TOKEN nodes are computed per chunk (see emit_function) */
  int chunk_mode;
  LLVMValueRef Tc, t0, tn;
  /* i1: this call's GEMM weights are packed in phase 0 (see PACK_MIN_TOKENS) */
  LLVMValueRef packed;
  /* fused element loops (emit_fused): per node, its value in the current
   * iteration if it belongs to the group being emitted */
  LLVMValueRef *fval, *fval_im;
  char *fmember;
  /* work per token over all instances (multiply-adds and element
   * operations): rt_cpu_forward_batched's estimate of whether splitting the
   * batch across threads pays */
  int64_t work_per_token;
} Lower;

static void unsupported(Lower *L, SrcLoc loc, const char *what) {
  diag_error(L->de, loc, "the CPU backend does not support %s", what);
  L->failed = 1;
}

/* ---- small IR-building helpers ------------------------------------------- */

static LLVMValueRef ci64(Lower *L, int64_t v) {
  return LLVMConstInt(L->i64, (unsigned long long)v, 1);
}
static LLVMValueRef ci32(Lower *L, int v) {
  return LLVMConstInt(L->i32, (unsigned long long)(int64_t)v, 1);
}
static LLVMValueRef cf(Lower *L, double v) {
  return LLVMConstReal(L->f32, v);
}
static LLVMValueRef gepf(Lower *L, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildGEP2(L->bld, L->f32, p, &idx, 1, "");
}
static LLVMValueRef ldf(Lower *L, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildLoad2(L->bld, L->f32, gepf(L, p, idx), "");
}
static void stf(Lower *L, LLVMValueRef v, LLVMValueRef p, LLVMValueRef idx) {
  LLVMBuildStore(L->bld, v, gepf(L, p, idx));
}
static LLVMValueRef ldp(Lower *L, LLVMValueRef arr, int i) {
  LLVMValueRef idx = ci64(L, i);
  return LLVMBuildLoad2(L->bld, L->ptr, LLVMBuildGEP2(L->bld, L->ptr, arr, &idx, 1, ""), "");
}
static LLVMValueRef mul(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildMul(L->bld, x, y, "");
}
static LLVMValueRef add(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildAdd(L->bld, x, y, "");
}
static LLVMBasicBlockRef block(Lower *L, const char *name) {
  return LLVMAppendBasicBlockInContext(L->cx, L->fv, name);
}

/* A counted loop [lo, hi); the body is emitted between loop_begin and loop_end. */
typedef struct Loop {
  LLVMBasicBlockRef head, body, exit, pre;
  LLVMValueRef iv;
} Loop;

static LLVMValueRef loop_begin(Lower *L, Loop *lp, LLVMValueRef lo, LLVMValueRef hi) {
  lp->pre = LLVMGetInsertBlock(L->bld);
  lp->head = block(L, "loop");
  lp->body = block(L, "body");
  lp->exit = block(L, "done");
  LLVMBuildBr(L->bld, lp->head);
  LLVMPositionBuilderAtEnd(L->bld, lp->head);
  lp->iv = LLVMBuildPhi(L->bld, L->i64, "i");
  LLVMAddIncoming(lp->iv, &lo, &lp->pre, 1);
  LLVMBuildCondBr(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, lp->iv, hi, ""), lp->body, lp->exit);
  LLVMPositionBuilderAtEnd(L->bld, lp->body);
  return lp->iv;
}

static void loop_end(Lower *L, Loop *lp) {
  LLVMValueRef next = LLVMBuildNSWAdd(L->bld, lp->iv, ci64(L, 1), "");
  LLVMBasicBlockRef from = LLVMGetInsertBlock(L->bld);
  LLVMBuildBr(L->bld, lp->head);
  LLVMAddIncoming(lp->iv, &next, &from, 1);
  LLVMPositionBuilderAtEnd(L->bld, lp->exit);
}

/* An accumulator carried around loop lp: a phi in the loop header (so its
 * value after the loop is the final one), starting at init. The caller adds
 * the latch value with loop_phi_next before loop_end. */
static LLVMValueRef loop_phi(Lower *L, Loop *lp, LLVMValueRef init, const char *name) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(L->bld);
  LLVMPositionBuilderBefore(L->bld, LLVMGetNextInstruction(lp->iv));
  LLVMValueRef phi = LLVMBuildPhi(L->bld, L->f32, name);
  LLVMAddIncoming(phi, &init, &lp->pre, 1);
  LLVMPositionBuilderAtEnd(L->bld, cur);
  return phi;
}
static void loop_phi_next(Lower *L, LLVMValueRef phi, LLVMValueRef v) {
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->bld);
  LLVMAddIncoming(phi, &v, &latch, 1);
}

static LLVMValueRef intrinsic(Lower *L, const char *name, LLVMValueRef *args, int n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMTypeRef t = L->f32;
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(L->mod, id, &t, 1);
  LLVMTypeRef ft = LLVMIntrinsicGetType(L->cx, id, &t, 1);
  return LLVMBuildCall2(L->bld, ft, fn, args, (unsigned)n, "");
}
static LLVMValueRef intr1(Lower *L, const char *name, LLVMValueRef x) {
  return intrinsic(L, name, &x, 1);
}
static LLVMValueRef intr2(Lower *L, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef a[2] = {x, y};
  return intrinsic(L, name, a, 2);
}

static LLVMValueRef call_fn(Lower *L, const char *name, LLVMTypeRef ret, LLVMTypeRef *pt, int np,
                            LLVMValueRef *args) {
  LLVMTypeRef ft = LLVMFunctionType(ret, pt, (unsigned)np, 0);
  LLVMValueRef fn = LLVMGetNamedFunction(L->mod, name);
  if (!fn) fn = LLVMAddFunction(L->mod, name, ft);
  return LLVMBuildCall2(L->bld, ft, fn, args, (unsigned)np, "");
}

/* a * b + c, fused where the target has FMA (llvm.fmuladd: one instruction
 * there, a multiply and an add elsewhere). Used only inside the
 * approximations below, whose error it does not change beyond an ulp. */
static LLVMValueRef fma3(Lower *L, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
  LLVMValueRef args[3] = {a, b, c};
  return intrinsic(L, "llvm.fmuladd", args, 3);
}

/* x clamped to [lo, hi], a NaN x to lo (callers put NaN back themselves):
 * one vmaxps and one vminps on x86, where llvm.maxnum/minnum would cost three
 * instructions each for their NaN rule. */
static LLVMValueRef clamp(Lower *L, LLVMValueRef x, double lo, double hi) {
  LLVMBuilderRef b = L->bld;
  x = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealULT, x, cf(L, lo), ""), cf(L, lo), x, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, x, cf(L, hi), ""), cf(L, hi), x, "");
}

/* exp(x) in float32, vectorizable: Cody-Waite reduction x = n ln2 + r, a
 * degree-6 polynomial for e^r on |r| <= ln2/2 (Cephes expf coefficients) in
 * Horner form with fused multiply-adds, 2^n built in the exponent bits. The
 * clamp keeps 2^n a normal float; the error is about 1 ulp, far inside the
 * 1e-5 the backend promises. */
static LLVMValueRef emit_exp_finite(Lower *L, LLVMValueRef x) {
  x = clamp(L, x, -87.0, 88.0);
  LLVMValueRef n = intr1(L, "llvm.floor", fma3(L, x, cf(L, 1.44269504088896341), cf(L, 0.5)));
  LLVMValueRef r = fma3(L, n, cf(L, -0.693359375), x);
  r = fma3(L, n, cf(L, 2.12194440e-4), r);
  static const double c[] = {1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3,
                             4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1};
  LLVMValueRef p = cf(L, c[0]);
  for (int i = 1; i < 6; i++) p = fma3(L, p, r, cf(L, c[i]));
  LLVMValueRef r2 = LLVMBuildFMul(L->bld, r, r, "");
  p = LLVMBuildFAdd(L->bld, fma3(L, p, r2, r), cf(L, 1.0), "");
  LLVMValueRef ni = LLVMBuildFPToSI(L->bld, n, L->i32, "");
  LLVMValueRef bits =
      LLVMBuildShl(L->bld, LLVMBuildAdd(L->bld, ni, ci32(L, 127), ""), ci32(L, 23), "");
  return LLVMBuildFMul(L->bld, p, LLVMBuildBitCast(L->bld, bits, L->f32, ""), "");
}

/* The clamp above keeps the polynomial finite; the edges are put back here so
 * compiled code agrees with the interpreter (and libm) where it matters for
 * NaN/Inf checks: exp(NaN) = NaN, exp(x) = +inf past float32's overflow
 * threshold (88.72), and exp(x) = 0 below the smallest subnormal's log. */
static LLVMValueRef emit_exp(Lower *L, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  LLVMValueRef y = emit_exp_finite(L, x);
  y = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, x, cf(L, 88.7228391), ""), cf(L, INFINITY),
                      y, "");
  y = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, cf(L, -103.972084), ""), cf(L, 0.0), y,
                      "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, y, "");
}

static LLVMValueRef emit_sigmoid(Lower *L, LLVMValueRef x) {
  LLVMValueRef e = emit_exp(L, LLVMBuildFNeg(L->bld, x, ""));
  return LLVMBuildFDiv(L->bld, cf(L, 1.0), LLVMBuildFAdd(L->bld, cf(L, 1.0), e, ""), "");
}

/* log(1 + exp(-|x|)): the tail shared by softplus and logsigmoid. */
static LLVMValueRef emit_log1pexp_neg_abs(Lower *L, LLVMValueRef x) {
  LLVMValueRef e = emit_exp(L, LLVMBuildFNeg(L->bld, intr1(L, "llvm.fabs", x), ""));
  return intr1(L, "llvm.log", LLVMBuildFAdd(L->bld, cf(L, 1.0), e, ""));
}

static LLVMValueRef emit_unary(Lower *L, IrOp op, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  switch (op) {
  case IR_NEG:
    return LLVMBuildFNeg(b, x, "");
  case IR_EXP:
    return emit_exp(L, x);
  case IR_LOG:
    return intr1(L, "llvm.log", x);
  case IR_TANH: {
    /* tanh x = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow. */
    LLVMValueRef e = emit_exp(L, LLVMBuildFMul(b, intr1(L, "llvm.fabs", x), cf(L, -2.0), ""));
    LLVMValueRef t = LLVMBuildFDiv(b, LLVMBuildFSub(b, cf(L, 1.0), e, ""),
                                   LLVMBuildFAdd(b, cf(L, 1.0), e, ""), "");
    return intr2(L, "llvm.copysign", t, x);
  }
  case IR_SIGMOID:
    return emit_sigmoid(L, x);
  case IR_LOGSIGMOID:
    return LLVMBuildFSub(b, intr2(L, "llvm.minnum", x, cf(L, 0.0)), emit_log1pexp_neg_abs(L, x),
                         "");
  case IR_SOFTPLUS:
    return LLVMBuildFAdd(b, intr2(L, "llvm.maxnum", x, cf(L, 0.0)), emit_log1pexp_neg_abs(L, x),
                         "");
  case IR_RELU: /* NaN stays NaN, as in torch and the interpreter */
    return intr2(L, "llvm.maximum", x, cf(L, 0.0));
  case IR_SILU:
    return LLVMBuildFMul(b, x, emit_sigmoid(L, x), "");
  case IR_GELU: {
    LLVMTypeRef t = L->f32;
    LLVMValueRef arg = LLVMBuildFMul(b, x, cf(L, 0.70710678118654752), "");
    LLVMValueRef erf = call_fn(L, "erff", L->f32, &t, 1, &arg);
    return LLVMBuildFMul(b, LLVMBuildFMul(b, x, cf(L, 0.5), ""),
                         LLVMBuildFAdd(b, cf(L, 1.0), erf, ""), "");
  }
  case IR_SQRT:
    return intr1(L, "llvm.sqrt", x);
  case IR_RSQRT:
    return LLVMBuildFDiv(b, cf(L, 1.0), intr1(L, "llvm.sqrt", x), "");
  case IR_ABS:
    return intr1(L, "llvm.fabs", x);
  case IR_SIN:
    return intr1(L, "llvm.sin", x);
  case IR_COS:
    return intr1(L, "llvm.cos", x);
  case IR_BROADCAST:
    return x;
  default:
    return NULL;
  }
}

static LLVMValueRef emit_binary(Lower *L, IrOp op, LLVMValueRef x, LLVMValueRef y) {
  LLVMBuilderRef b = L->bld;
  switch (op) {
  case IR_ADD:
    return LLVMBuildFAdd(b, x, y, "");
  case IR_SUB:
    return LLVMBuildFSub(b, x, y, "");
  case IR_MUL:
    return LLVMBuildFMul(b, x, y, "");
  case IR_DIV:
    return LLVMBuildFDiv(b, x, y, "");
  /* llvm.minimum/maximum propagate NaN like torch.minimum/maximum (minnum and
   * maxnum would drop it). */
  case IR_MIN:
    return intr2(L, "llvm.minimum", x, y);
  case IR_MAX:
    return intr2(L, "llvm.maximum", x, y);
  case IR_POW:
    return intr2(L, "llvm.pow", x, y);
  default:
    return NULL;
  }
}

/* ---- complex numbers ------------------------------------------------------
 * A complex value is stored as interleaved (re, im) float pairs, the layout
 * the interpreter and the ABI use (a trailing axis of 2). Arithmetic is the
 * textbook formulas, as in the interpreter; a real operand of a complex op is
 * (x, 0). */

typedef struct Cx {
  LLVMValueRef re, im;
} Cx;

/* Whether op has a complex form here (complex_op_ok) with this shape of
 * operands; the ops the std SSMs (LRU, S4D, S5) need, and their neighbours. */
static int complex_op_ok(IrOp op) {
  switch (op) {
  case IR_NEG:
  case IR_EXP:
  case IR_LOG:
  case IR_ABS:
  case IR_CONJ:
  case IR_RE:
  case IR_IM:
  case IR_CPLX:
  case IR_ADD:
  case IR_SUB:
  case IR_MUL:
  case IR_DIV:
  case IR_BROADCAST:
    return 1;
  default:
    return 0;
  }
}

static LLVMValueRef fmul(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFMul(L->bld, x, y, "");
}
static LLVMValueRef fadd(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFAdd(L->bld, x, y, "");
}
static LLVMValueRef fsub(Lower *L, LLVMValueRef x, LLVMValueRef y) {
  return LLVMBuildFSub(L->bld, x, y, "");
}

static Cx cx_mul(Lower *L, Cx x, Cx y) {
  return (Cx){fsub(L, fmul(L, x.re, y.re), fmul(L, x.im, y.im)),
              fadd(L, fmul(L, x.re, y.im), fmul(L, x.im, y.re))};
}

/* |z| without overflow for large parts: hypotf from libm. */
static LLVMValueRef cx_abs(Lower *L, Cx z) {
  LLVMTypeRef pt[2] = {L->f32, L->f32};
  LLVMValueRef a[2] = {z.re, z.im};
  return call_fn(L, "hypotf", L->f32, pt, 2, a);
}

/* One elementwise op on complex operands; a real result (RE, IM, ABS) is
 * returned in .re. */
static Cx cx_op(Lower *L, IrOp op, Cx x, Cx y) {
  LLVMBuilderRef b = L->bld;
  switch (op) {
  case IR_NEG:
    return (Cx){LLVMBuildFNeg(b, x.re, ""), LLVMBuildFNeg(b, x.im, "")};
  case IR_EXP: {
    LLVMValueRef e = emit_exp(L, x.re);
    return (Cx){fmul(L, e, intr1(L, "llvm.cos", x.im)), fmul(L, e, intr1(L, "llvm.sin", x.im))};
  }
  case IR_LOG: {
    LLVMTypeRef pt[2] = {L->f32, L->f32};
    LLVMValueRef a[2] = {x.im, x.re};
    return (Cx){intr1(L, "llvm.log", cx_abs(L, x)), call_fn(L, "atan2f", L->f32, pt, 2, a)};
  }
  case IR_ABS:
    return (Cx){cx_abs(L, x), cf(L, 0.0)};
  case IR_CONJ:
    return (Cx){x.re, LLVMBuildFNeg(b, x.im, "")};
  case IR_RE:
  case IR_BROADCAST:
    return x;
  case IR_IM:
    return (Cx){x.im, cf(L, 0.0)};
  case IR_CPLX:
    return (Cx){x.re, y.re};
  case IR_ADD:
    return (Cx){fadd(L, x.re, y.re), fadd(L, x.im, y.im)};
  case IR_SUB:
    return (Cx){fsub(L, x.re, y.re), fsub(L, x.im, y.im)};
  case IR_MUL:
    return cx_mul(L, x, y);
  case IR_DIV: {
    LLVMValueRef den = fadd(L, fmul(L, y.re, y.re), fmul(L, y.im, y.im));
    LLVMValueRef re = fadd(L, fmul(L, x.re, y.re), fmul(L, x.im, y.im));
    LLVMValueRef im = fsub(L, fmul(L, x.im, y.re), fmul(L, x.re, y.im));
    return (Cx){LLVMBuildFDiv(b, re, den, ""), LLVMBuildFDiv(b, im, den, "")};
  }
  default: /* refused by supported() */
    return x;
  }
}

/* Element `idx` of a buffer holding w floats per element, as a complex. */
static Cx ldc(Lower *L, LLVMValueRef p, LLVMValueRef idx, int w) {
  if (w == 1) return (Cx){ldf(L, p, idx), cf(L, 0.0)};
  LLVMValueRef at = mul(L, idx, ci64(L, 2));
  return (Cx){ldf(L, p, at), ldf(L, p, add(L, at, ci64(L, 1)))};
}
static void stc(Lower *L, Cx v, LLVMValueRef p, LLVMValueRef idx, int w) {
  if (w == 1) {
    stf(L, v.re, p, idx);
    return;
  }
  LLVMValueRef at = mul(L, idx, ci64(L, 2));
  stf(L, v.re, p, at);
  stf(L, v.im, p, add(L, at, ci64(L, 1)));
}

/* ---- node shapes and classes -------------------------------------------- */

static int eval_type(Lower *L, const Inst *in, IrType t, SrcLoc loc, int *rank, int64_t *shape,
                     int64_t *numel) {
  *rank = t.rank;
  int64_t n = 1;
  for (int i = 0; i < t.rank; i++) {
    if (dim_eval(t.dims[i], in->dims, &shape[i]) != 0) {
      diag_error(L->de, loc,
                 "a dimension of this value is negative or too large with the given dims");
      L->failed = 1;
      return -1;
    }
    if (shape[i] != 0 && n > LIMIT_ELEMS / shape[i]) {
      diag_error(L->de, loc, "this value has more than 2^40 elements");
      L->failed = 1;
      return -1;
    }
    n *= shape[i];
  }
  *numel = n;
  return 0;
}

/* The interface shape of a value of type t: its dims plus, for a complex
 * value, a trailing axis of 2 (re, im), as the interpreter's tensors have;
 * numel counts floats. */
static int interface_type(Lower *L, const Inst *in, IrType t, SrcLoc loc, AbiTensor *ct) {
  if (eval_type(L, in, t, loc, &ct->ndim, ct->shape, &ct->numel)) return -1;
  if (t.elem != IR_COMPLEX) return 0;
  if (ct->ndim >= SEQ_MAX_RANK) {
    unsupported(L, loc, "a complex value of the largest rank");
    return -1;
  }
  ct->shape[ct->ndim++] = 2;
  ct->numel *= 2;
  ct->is_complex = 1;
  return 0;
}

/* Floats per example of a value of type t (complex: two per element). */
static int type_floats(Lower *L, const Inst *in, IrType t, SrcLoc loc, int64_t *out) {
  AbiTensor ct = {0};
  if (interface_type(L, in, t, loc, &ct)) return -1;
  *out = ct.numel;
  return 0;
}

/* ---- the instance tree --------------------------------------------------- */

static int flatten(Lower *L, const IrFunc *fn, const int64_t *dims, const char *prefix,
                   const char *suffix, const char *path, int depth) {
  if (depth > 64) {
    diag_error(L->de, fn->loc, "layers nest more than 64 deep");
    return -1;
  }
  Inst in = {0};
  in.fn = fn;
  in.dims = arena_calloc(L->a, (size_t)fn->dims.n + 1, sizeof(int64_t));
  in.layer_inst = arena_calloc(L->a, (size_t)fn->layers.n + 1, sizeof(int));
  if (!in.dims || !in.layer_inst) return -1;
  memcpy(in.dims, dims, sizeof(int64_t) * (size_t)fn->dims.n);
  in.param0 = L->sig->params.n;
  in.state0 = L->sig->states.n;
  if (fn->kind == IR_FN_MODEL && fn->states.n > 0) {
    diag_error(L->de, fn->loc, "a model cannot have states of its own");
    return -1;
  }
  for (int i = 0; i < fn->params.n; i++) {
    AbiTensor t = {0};
    t.name = arena_printf(L->a, "%s%s%s", prefix, fn->params.v[i].name, suffix);
    if (interface_type(L, &in, fn->params.v[i].type, fn->params.v[i].loc, &t)) return -1;
    if (vec_push(L->a, &L->sig->params, t)) return -1;
  }
  for (int i = 0; i < fn->states.n; i++) {
    AbiTensor t = {0};
    t.name = arena_printf(L->a, "%s%s", path, fn->states.v[i].name);
    if (interface_type(L, &in, fn->states.v[i].type, fn->states.v[i].loc, &t)) return -1;
    if (vec_push(L->a, &L->sig->states, t)) return -1;
  }
  int me = L->insts.n;
  if (vec_push(L->a, &L->insts, in)) return -1;
  for (int k = 0; k < fn->layers.n; k++) {
    const IrLayer *ly = &fn->layers.v[k];
    if (ly->callee < 0 || ly->callee >= L->m->funcs.n) {
      diag_internal(L->de, "codegen", "layer %s calls function %d", ly->name, ly->callee);
      return -1;
    }
    const IrFunc *callee = L->m->funcs.v[ly->callee];
    int64_t *cd = arena_calloc(L->a, (size_t)callee->dims.n + 1, sizeof(int64_t));
    if (!cd) return -1;
    for (int d = 0; d < callee->dims.n; d++) {
      if (dim_eval(ly->dim_args[d], dims, &cd[d]) != 0) {
        diag_error(L->de, ly->loc, "dimension %s of layer %s is negative or too large",
                   callee->dims.v[d].name, ly->name);
        return -1;
      }
    }
    const char *p = arena_printf(L->a, "%s%s", prefix, ly->prefix ? ly->prefix : "");
    const char *s = arena_printf(L->a, "%s%s", ly->suffix ? ly->suffix : "", suffix);
    const char *sp = arena_printf(L->a, "%s%s.", path, ly->name);
    int child = L->insts.n;
    if (flatten(L, callee, cd, p, s, sp, depth + 1)) return -1;
    L->insts.v[me].layer_inst[k] = child;
  }
  return 0;
}

/* ---- rows ---------------------------------------------------------------- */

/* Floats in one row of a node: complex elements are (re, im) pairs. */
static int64_t row_floats(const NodeInfo *n) {
  return n->numel * n->w;
}

/* Pointer to the current row of node r (see the class comment at the top). */
static LLVMValueRef rowptr(Lower *L, IrRef r) {
  NodeInfo *n = &L->ni[r];
  if (n->cls == CLS_CONST) return n->base;
  LLVMValueRef row = n->cls == CLS_TOKEN ? (n->chunked ? L->r_tokc : L->r_tok) : L->r_b;
  LLVMValueRef off = mul(L, row, ci64(L, row_floats(n)));
  if (n->is_int) return LLVMBuildGEP2(L->bld, L->i32, n->base, &off, 1, "");
  return gepf(L, n->base, off);
}

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

/* Strides of an operand of shape `s` (rank r) broadcast to the nest's shape. */
static void nest_operand(Nest *ns, int j, int r, const int64_t *s) {
  int64_t st = 1;
  for (int d = ns->rank - 1; d >= 0; d--) {
    int k = d - (ns->rank - r);
    if (k < 0 || s[k] == 1) {
      ns->stride[j][d] = 0;
    } else {
      ns->stride[j][d] = st;
      st *= s[k];
    }
  }
}

static void emit_ew_nest(Lower *L, IrOp op, Nest *ns, LLVMValueRef out, int d, LLVMValueRef *offs,
                         LLVMValueRef oofs) {
  if (d == ns->rank && ns->cplx) {
    Cx v[2] = {{NULL, NULL}, {NULL, NULL}};
    for (int j = 0; j < ns->nops && j < 2; j++) v[j] = ldc(L, ns->ptr[j], offs[j], ns->w[j]);
    stc(L, cx_op(L, op, v[0], v[1]), out, oofs, ns->ow);
    return;
  }
  if (d == ns->rank) {
    LLVMValueRef v[4];
    for (int j = 0; j < ns->nops; j++) v[j] = ldf(L, ns->ptr[j], offs[j]);
    LLVMValueRef r = ns->nops == 1 ? emit_unary(L, op, v[0]) : emit_binary(L, op, v[0], v[1]);
    stf(L, r, out, oofs);
    return;
  }
  Loop lp;
  LLVMValueRef i = loop_begin(L, &lp, ci64(L, 0), ci64(L, ns->shape[d]));
  LLVMValueRef o2[4];
  for (int j = 0; j < ns->nops; j++)
    o2[j] = ns->stride[j][d] ? add(L, offs[j], mul(L, i, ci64(L, ns->stride[j][d]))) : offs[j];
  int64_t ost = 1;
  for (int e = d + 1; e < ns->rank; e++) ost *= ns->shape[e];
  emit_ew_nest(L, op, ns, out, d + 1, o2, add(L, oofs, mul(L, i, ci64(L, ost))));
  loop_end(L, &lp);
}

/* Elementwise op (or broadcast copy) of the current row. */
static void emit_ew(Lower *L, const IrNode *nd, NodeInfo *n, LLVMValueRef out) {
  Nest ns = {0};
  ns.nops = nd->nargs;
  ns.ow = n->w;
  ns.cplx = n->w == 2;
  int flat = 1;
  for (int j = 0; j < nd->nargs; j++) {
    NodeInfo *a = &L->ni[nd->args[j]];
    ns.w[j] = a->w;
    ns.cplx |= a->w == 2;
    ns.ptr[j] = rowptr(L, nd->args[j]);
    if (a->numel != n->numel && a->numel != 1) flat = 0;
  }
  /* Operands that are all full-size or scalar: one flat loop (the common case,
   * and the one the loop vectorizer likes best). */
  if (flat) {
    ns.rank = 1;
    ns.shape[0] = n->numel;
    for (int j = 0; j < nd->nargs; j++) ns.stride[j][0] = L->ni[nd->args[j]].numel == 1 ? 0 : 1;
  } else {
    ns.rank = n->rank;
    memcpy(ns.shape, n->shape, sizeof ns.shape);
    for (int j = 0; j < nd->nargs; j++) {
      NodeInfo *a = &L->ni[nd->args[j]];
      nest_operand(&ns, j, a->rank, a->shape);
    }
  }
  LLVMValueRef z[4] = {ci64(L, 0), ci64(L, 0), ci64(L, 0), ci64(L, 0)};
  emit_ew_nest(L, nd->op, &ns, out, 0, z, ci64(L, 0));
}

static void outer_inner(const NodeInfo *n, int axis, int64_t *outer, int64_t *len, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int d = 0; d < axis; d++) *outer *= n->shape[d];
  *len = n->shape[axis];
  for (int d = axis + 1; d < n->rank; d++) *inner *= n->shape[d];
}

/* dst[o, dst_off + k, i] = src[o, src_off + k, i] for k < count. */
static void emit_axis_copy(Lower *L, LLVMValueRef dst, LLVMValueRef src, int64_t outer,
                           int64_t inner, int64_t dst_len, int64_t dst_off, int64_t src_len,
                           int64_t src_off, int64_t count) {
  Loop lo, lk;
  LLVMValueRef o = loop_begin(L, &lo, ci64(L, 0), ci64(L, outer));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, count * inner));
  LLVMValueRef d = add(L, mul(L, o, ci64(L, dst_len * inner)), add(L, k, ci64(L, dst_off * inner)));
  LLVMValueRef s = add(L, mul(L, o, ci64(L, src_len * inner)), add(L, k, ci64(L, src_off * inner)));
  stf(L, ldf(L, src, s), dst, d);
  loop_end(L, &lk);
  loop_end(L, &lo);
}

static void set_reassoc(LLVMValueRef v) {
#if LLVM_VERSION_MAJOR >= 18
  if (LLVMCanValueUseFastMathFlags(v)) LLVMSetFastMathFlags(v, LLVMFastMathAllowReassoc);
#else
  (void)v;
#endif
}

/* Accumulates into a stack slot so the reduction can be vectorized (reassoc). */
static void emit_reduce(Lower *L, const IrNode *nd, LLVMValueRef out) {
  NodeInfo *x = &L->ni[nd->args[0]];
  LLVMValueRef src = rowptr(L, nd->args[0]);
  int64_t outer, len, inner;
  if (nd->axis < 0) {
    outer = 1;
    len = x->numel;
    inner = 1;
  } else {
    outer_inner(x, nd->axis, &outer, &len, &inner);
  }
  inner *= x->w; /* a complex value reduces its parts separately */
  double init = nd->op == IR_AMAX ? -INFINITY : nd->op == IR_AMIN ? INFINITY : 0.0;
  Loop lo, li, lk;
  LLVMValueRef o = loop_begin(L, &lo, ci64(L, 0), ci64(L, outer));
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, inner));
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(L->bld);
  (void)pre;
  LLVMValueRef acc = cf(L, init);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef phi = loop_phi(L, &lk, acc, "acc");
  LLVMValueRef v =
      ldf(L, src, add(L, mul(L, add(L, mul(L, o, ci64(L, len)), k), ci64(L, inner)), i));
  LLVMValueRef nv;
  if (nd->op == IR_AMAX) /* a NaN sticks, as in torch.amax */
    nv = intr2(L, "llvm.maximum", phi, v);
  else if (nd->op == IR_AMIN)
    nv = intr2(L, "llvm.minimum", phi, v);
  else {
    nv = LLVMBuildFAdd(L->bld, phi, v, "");
    set_reassoc(nv);
  }
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  /* After the loop the phi holds the final value. */
  LLVMValueRef res = phi;
  if (nd->op == IR_MEAN) res = LLVMBuildFDiv(L->bld, res, cf(L, (double)(len ? len : 1)), "");
  stf(L, res, out, add(L, mul(L, o, ci64(L, inner)), i));
  loop_end(L, &li);
  loop_end(L, &lo);
}

/* Sum of f(x[k]) over a row of n, with f the identity or a square. */
static LLVMValueRef row_sum(Lower *L, LLVMValueRef src, LLVMValueRef base, int64_t n, int square,
                            LLVMValueRef shift) {
  Loop lk;
  LLVMValueRef z = cf(L, 0.0);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, n));
  LLVMValueRef phi = loop_phi(L, &lk, z, "acc");
  LLVMValueRef v = ldf(L, src, add(L, base, k));
  if (shift) v = LLVMBuildFSub(L->bld, v, shift, "");
  if (square) v = LLVMBuildFMul(L->bld, v, v, "");
  LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, v, "");
  set_reassoc(nv);
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  return phi;
}

/* Operand j of a norm, broadcast along the last axis (weight [n] or scalar). */
static LLVMValueRef norm_operand(Lower *L, const IrNode *nd, int j, LLVMValueRef k) {
  NodeInfo *w = &L->ni[nd->args[j]];
  LLVMValueRef p = rowptr(L, nd->args[j]);
  return ldf(L, p, w->numel == 1 ? ci64(L, 0) : k);
}

static void emit_norm(Lower *L, const IrNode *nd, NodeInfo *n, LLVMValueRef out) {
  LLVMValueRef src = rowptr(L, nd->args[0]);
  int64_t len = n->rank ? n->shape[n->rank - 1] : 1;
  int64_t rows = len ? n->numel / len : 0;
  Loop lr, lk;
  LLVMValueRef r = loop_begin(L, &lr, ci64(L, 0), ci64(L, rows));
  LLVMValueRef base = mul(L, r, ci64(L, len));
  LLVMValueRef scale = NULL, shift = NULL, denom = NULL;
  LLVMValueRef eps = cf(L, nd->cval);
  LLVMValueRef flen = cf(L, (double)(len ? len : 1));
  if (nd->op == IR_RMSNORM) {
    LLVMValueRef ms = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 1, NULL), flen, "");
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, ms, eps, "")), "");
  } else if (nd->op == IR_L2NORM) {
    LLVMValueRef ss = row_sum(L, src, base, len, 1, NULL);
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, ss, eps, "")), "");
  } else if (nd->op == IR_LAYERNORM) {
    shift = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 0, NULL), flen, "");
    LLVMValueRef var = LLVMBuildFDiv(L->bld, row_sum(L, src, base, len, 1, shift), flen, "");
    scale = LLVMBuildFDiv(L->bld, cf(L, 1.0),
                          intr1(L, "llvm.sqrt", LLVMBuildFAdd(L->bld, var, eps, "")), "");
  } else { /* SOFTMAX: max, then sum of exp(x - max) */
    Loop lm;
    LLVMValueRef ninf = cf(L, -INFINITY);
    LLVMValueRef k = loop_begin(L, &lm, ci64(L, 0), ci64(L, len));
    LLVMValueRef phi = loop_phi(L, &lm, ninf, "mx");
    LLVMValueRef nv = intr2(L, "llvm.maximum", phi, ldf(L, src, add(L, base, k)));
    loop_phi_next(L, phi, nv);
    loop_end(L, &lm);
    shift = phi;
    Loop ls;
    LLVMValueRef z = cf(L, 0.0);
    k = loop_begin(L, &ls, ci64(L, 0), ci64(L, len));
    LLVMValueRef acc = loop_phi(L, &ls, z, "sum");
    LLVMValueRef e = emit_exp(L, LLVMBuildFSub(L->bld, ldf(L, src, add(L, base, k)), shift, ""));
    stf(L, e, out, add(L, base, k));
    LLVMValueRef na = LLVMBuildFAdd(L->bld, acc, e, "");
    set_reassoc(na);
    loop_phi_next(L, acc, na);
    loop_end(L, &ls);
    denom = acc;
  }
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef idx = add(L, base, k);
  LLVMValueRef v;
  if (denom) {
    v = LLVMBuildFDiv(L->bld, ldf(L, out, idx), denom, "");
  } else {
    v = ldf(L, src, idx);
    if (shift) v = LLVMBuildFSub(L->bld, v, shift, "");
    v = LLVMBuildFMul(L->bld, v, scale, "");
    if (nd->op == IR_RMSNORM || nd->op == IR_LAYERNORM)
      v = LLVMBuildFMul(L->bld, v, norm_operand(L, nd, 1, k), "");
    if (nd->op == IR_LAYERNORM) v = LLVMBuildFAdd(L->bld, v, norm_operand(L, nd, 2, k), "");
  }
  stf(L, v, out, idx);
  loop_end(L, &lk);
  loop_end(L, &lr);
}

/* Complex matrix product of one row (either operand may be real): sums in
 * order over k, real and imaginary parts in two accumulators. */
static void emit_cmatmul_row(Lower *L, const IrNode *nd, LLVMValueRef out) {
  NodeInfo *x = &L->ni[nd->args[0]], *y = &L->ni[nd->args[1]];
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
  Loop li, lj, lk;
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, M));
  LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
  LLVMValueRef z = cf(L, 0.0);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  LLVMValueRef pre = loop_phi(L, &lk, z, "re"), pim = loop_phi(L, &lk, z, "im");
  Cx p = cx_mul(L, ldc(L, pa, add(L, mul(L, i, ci64(L, K)), k), x->w),
                ldc(L, pb, add(L, mul(L, k, ci64(L, N)), j), y->w));
  LLVMValueRef nre = fadd(L, pre, p.re), nim = fadd(L, pim, p.im);
  set_reassoc(nre);
  set_reassoc(nim);
  loop_phi_next(L, pre, nre);
  loop_phi_next(L, pim, nim);
  loop_end(L, &lk);
  stc(L, (Cx){pre, pim}, out, add(L, mul(L, i, ci64(L, N)), j), 2);
  loop_end(L, &lj);
  loop_end(L, &li);
}

/* Generic matrix product of one row: a as [M, K], b as [K, N]. */
static void emit_matmul_row(Lower *L, const IrNode *nd, LLVMValueRef out) {
  NodeInfo *x = &L->ni[nd->args[0]], *y = &L->ni[nd->args[1]];
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
  if (x->w == 2 || y->w == 2) {
    emit_cmatmul_row(L, nd, out);
    return;
  }
  Loop li, lk, lj;
  LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, M));
  if (N == 1) {
    LLVMValueRef z = cf(L, 0.0);
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
    LLVMValueRef phi = loop_phi(L, &lk, z, "acc");
    LLVMValueRef p =
        LLVMBuildFMul(L->bld, ldf(L, pa, add(L, mul(L, i, ci64(L, K)), k)), ldf(L, pb, k), "");
    LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, p, "");
    set_reassoc(nv);
    loop_phi_next(L, phi, nv);
    loop_end(L, &lk);
    stf(L, phi, out, i);
  } else {
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
    stf(L, cf(L, 0.0), out, add(L, mul(L, i, ci64(L, N)), j));
    loop_end(L, &lj);
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
    LLVMValueRef aik = ldf(L, pa, add(L, mul(L, i, ci64(L, K)), k));
    j = loop_begin(L, &lj, ci64(L, 0), ci64(L, N));
    LLVMValueRef o = add(L, mul(L, i, ci64(L, N)), j);
    LLVMValueRef v = LLVMBuildFAdd(
        L->bld, ldf(L, out, o),
        LLVMBuildFMul(L->bld, aik, ldf(L, pb, add(L, mul(L, k, ci64(L, N)), j)), ""), "");
    stf(L, v, out, o);
    loop_end(L, &lj);
    loop_end(L, &lk);
  }
  loop_end(L, &li);
}

static void fail_with(Lower *L, LLVMValueRef cond, int status) {
  LLVMBasicBlockRef bad = block(L, "bad"), ok = block(L, "ok");
  LLVMBuildCondBr(L->bld, cond, bad, ok);
  LLVMPositionBuilderAtEnd(L->bld, bad);
  LLVMBuildStore(L->bld, ci32(L, status), L->status);
  LLVMBuildBr(L->bld, L->cleanup);
  LLVMPositionBuilderAtEnd(L->bld, ok);
}

/* Emits node r for the current row. */
static void emit_row(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  LLVMValueRef out = rowptr(L, r);
  switch (nd->op) {
  case IR_CONST:
    stf(L, cf(L, nd->cval), out, ci64(L, 0));
    return;
  case IR_DIMVAL: {
    int64_t v = 0;
    if (dim_eval(nd->dval, L->in->dims, &v) != 0) v = 0;
    stf(L, cf(L, (double)v), out, ci64(L, 0));
    return;
  }
  case IR_TRANSPOSE: {
    NodeInfo *x = &L->ni[nd->args[0]];
    int64_t Mx = x->shape[x->rank - 2], Nx = x->shape[x->rank - 1];
    int64_t P = (Mx * Nx) != 0 ? x->numel / (Mx * Nx) : 0;
    LLVMValueRef src = rowptr(L, nd->args[0]);
    Loop lp, li, lj;
    LLVMValueRef p = loop_begin(L, &lp, ci64(L, 0), ci64(L, P));
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, Nx));
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, Mx));
    LLVMValueRef pb = mul(L, p, ci64(L, Mx * Nx));
    stc(L, ldc(L, src, add(L, pb, add(L, mul(L, j, ci64(L, Nx)), i)), x->w), out,
        add(L, pb, add(L, mul(L, i, ci64(L, Mx)), j)), x->w);
    loop_end(L, &lj);
    loop_end(L, &li);
    loop_end(L, &lp);
    return;
  }
  case IR_SLICE:
  case IR_INDEX: {
    NodeInfo *x = &L->ni[nd->args[0]];
    int64_t outer, len, inner, start = 0, stop = 0;
    outer_inner(x, nd->axis, &outer, &len, &inner);
    inner *= x->w;
    if (dim_eval(nd->start, L->in->dims, &start) != 0) start = 0;
    if (nd->op == IR_SLICE) {
      if (dim_eval(nd->stop, L->in->dims, &stop) != 0) stop = start;
    } else {
      stop = start + 1;
    }
    emit_axis_copy(L, out, rowptr(L, nd->args[0]), outer, inner, stop - start, 0, len, start,
                   stop - start);
    return;
  }
  case IR_CONCAT: {
    int64_t outer, len, inner, off = 0;
    outer_inner(n, nd->axis, &outer, &len, &inner);
    inner *= n->w; /* supported() checked that every operand has n's width */
    for (int j = 0; j < nd->nargs; j++) {
      NodeInfo *x = &L->ni[nd->args[j]];
      int64_t xl = x->shape[nd->axis];
      emit_axis_copy(L, out, rowptr(L, nd->args[j]), outer, inner, len, off, xl, 0, xl);
      off += xl;
    }
    return;
  }
  case IR_GATHER: {
    NodeInfo *tab = &L->ni[nd->args[0]];
    LLVMValueRef ip = rowptr(L, nd->args[1]);
    LLVMValueRef idx = LLVMBuildSExt(L->bld, LLVMBuildLoad2(L->bld, L->i32, ip, ""), L->i64, "");
    LLVMValueRef bad =
        LLVMBuildOr(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, idx, ci64(L, 0), ""),
                    LLVMBuildICmp(L->bld, LLVMIntSGE, idx, ci64(L, tab->shape[0]), ""), "");
    fail_with(L, bad, ABI_ERR_TOKEN);
    LLVMValueRef src = gepf(L, rowptr(L, nd->args[0]), mul(L, idx, ci64(L, row_floats(n))));
    Loop lk;
    LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, row_floats(n)));
    stf(L, ldf(L, src, k), out, k);
    loop_end(L, &lk);
    return;
  }
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    emit_reduce(L, nd, out);
    return;
  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
  case IR_SOFTMAX:
    emit_norm(L, nd, n, out);
    return;
  case IR_MATMUL:
    emit_matmul_row(L, nd, out);
    return;
  case IR_OUTER: {
    NodeInfo *y = &L->ni[nd->args[1]];
    LLVMValueRef pa = rowptr(L, nd->args[0]), pb = rowptr(L, nd->args[1]);
    NodeInfo *x = &L->ni[nd->args[0]];
    Loop li, lj;
    LLVMValueRef i = loop_begin(L, &li, ci64(L, 0), ci64(L, x->numel));
    LLVMValueRef j = loop_begin(L, &lj, ci64(L, 0), ci64(L, y->numel));
    LLVMValueRef o = add(L, mul(L, i, ci64(L, y->numel)), j);
    if (n->w == 2)
      stc(L, cx_mul(L, ldc(L, pa, i, x->w), ldc(L, pb, j, y->w)), out, o, 2);
    else
      stf(L, LLVMBuildFMul(L->bld, ldf(L, pa, i), ldf(L, pb, j), ""), out, o);
    loop_end(L, &lj);
    loop_end(L, &li);
    return;
  }
  default:
    if (ir_op_info[nd->op].flags & IRF_EW || nd->op == IR_BROADCAST) {
      emit_ew(L, nd, n, out);
      return;
    }
    diag_internal(L->de, "codegen", "op %s reached emit_row", ir_op_info[nd->op].text);
    L->failed = 1;
  }
}

/* ---- per-node planning ----------------------------------------------------- */

static int is_alias_op(IrOp op) {
  return op == IR_PARAM || op == IR_INPUT || op == IR_STATE || op == IR_RESHAPE || op == IR_RESULT;
}

/* Complex values: elementwise ops with a complex form (complex_op_ok), data
 * movement, sums and matrix products; not norms, softmax, min/max or
 * convolutions. */
static int complex_supported(Lower *L, const IrNode *nd) {
  int any = nd->type.elem == IR_COMPLEX;
  for (int j = 0; j < nd->nargs; j++) any |= L->fn->nodes.v[nd->args[j]].type.elem == IR_COMPLEX;
  if (!any) return 1;
  switch (nd->op) {
  case IR_PARAM:
  case IR_INPUT:
  case IR_STATE:
  case IR_RESHAPE:
  case IR_RESULT:
  case IR_CALL:
  case IR_TRANSPOSE:
  case IR_SLICE:
  case IR_INDEX:
  case IR_SUM:
  case IR_MEAN:
  case IR_MATMUL:
  case IR_OUTER:
    return 1;
  case IR_CONCAT:
    for (int j = 0; j < nd->nargs; j++)
      if (L->fn->nodes.v[nd->args[j]].type.elem != nd->type.elem) {
        unsupported(L, nd->loc, "concatenating real and complex values");
        return 0;
      }
    return 1;
  default:
    if (complex_op_ok(nd->op)) return 1;
    diag_error(L->de, nd->loc, "the CPU backend does not support %s of complex values",
               ir_op_info[nd->op].text);
    L->failed = 1;
    return 0;
  }
}

static int supported(Lower *L, const IrNode *nd) {
  if (!complex_supported(L, nd)) return 0;
  switch (nd->op) {
  case IR_CAUSAL_CONV:
    if (L->fn->kind == IR_FN_CELL) {
      unsupported(L, nd->loc, "causal_conv inside a cell step");
      return 0;
    }
    return 1;
  default:
    break;
  }
  if (nd->type.elem == IR_INT && nd->op != IR_INPUT) {
    unsupported(L, nd->loc, "integer arithmetic");
    return 0;
  }
  for (int j = 0; j < nd->nargs; j++) {
    const IrNode *a = &L->fn->nodes.v[nd->args[j]];
    if (a->type.elem == IR_INT && !(nd->op == IR_GATHER && j == 1) && nd->op != IR_CALL) {
      unsupported(L, nd->loc, "integer tokens outside an embedding lookup");
      return 0;
    }
  }
  return 1;
}

/* Decides whether a MATMUL becomes one rt_cpu_sgemm over all rows: the
 * per-row operand must have the node's class (rows contiguous) and the
 * other one must be a constant matrix. */
static void plan_gemm(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  if (nd->op != IR_MATMUL || n->cls == CLS_CONST) return;
  NodeInfo *x = &L->ni[nd->args[0]], *y = &L->ni[nd->args[1]];
  /* A complex constant matrix times a vector (LRU's B x, S5's C s): a
   * complex product is a real one with the real form of W, [2N, K] for a
   * real vector (rows re, im of each output) or [2N, 2K] for a complex one
   * (the 2x2 blocks [re -im; im re]), on interleaved (re, im) floats. */
  if (n->w == 2 && x->w == 2 && x->cls == CLS_CONST && x->rank == 2 && y->cls == n->cls &&
      y->rank == 1) {
    n->gemm = 'T';
    n->cgemm = 1;
    n->gemm_k = x->shape[1] * y->w;
    n->gemm_n = x->shape[0] * 2;
    return;
  }
  if (n->w != 1 || x->w != 1 || y->w != 1) return; /* other complex products: per row */
  if (x->cls == CLS_CONST && x->rank == 2 && y->cls == n->cls && y->rank == 1) {
    n->gemm = 'T';
    n->gemm_k = x->shape[1];
    n->gemm_n = x->shape[0];
  } else if (y->cls == CLS_CONST && y->rank == 2 && x->cls == n->cls) {
    n->gemm = 'N';
    n->gemm_k = y->shape[0];
    n->gemm_n = y->shape[1];
  }
}

/* ---- functions ------------------------------------------------------------ */

/* The state whose old value node r is (through reshapes), or -1. */
static int state_alias(Lower *L, IrRef r) {
  while (r >= 0 && L->fn->nodes.v[r].op == IR_RESHAPE) r = L->fn->nodes.v[r].args[0];
  return r >= 0 && L->fn->nodes.v[r].op == IR_STATE ? L->fn->nodes.v[r].index : -1;
}

static LLVMValueRef len_of(Lower *L, LLVMValueRef b) {
  /* lengths == NULL means every sequence has length T. */
  LLVMValueRef isnull = LLVMBuildIsNull(L->bld, L->a_lengths, "");
  LLVMValueRef safe_b = LLVMBuildSelect(L->bld, isnull, ci64(L, 0), b, "");
  LLVMValueRef p = LLVMBuildGEP2(L->bld, L->i32, L->a_lengths, &safe_b, 1, "");
  /* A load through NULL must not be emitted: branchless select on a
   * pointer to a zero constant instead. */
  LLVMValueRef zero = LLVMGetNamedGlobal(L->mod, "seq.zero_i32");
  LLVMValueRef pp = LLVMBuildSelect(L->bld, isnull, zero, p, "");
  LLVMValueRef v = LLVMBuildSExt(L->bld, LLVMBuildLoad2(L->bld, L->i32, pp, ""), L->i64, "");
  return LLVMBuildSelect(L->bld, isnull, L->a_T, v, "");
}

/* Scratch layout: buffers are placed by a running offset (in floats, rounded
 * to 16) computed at run time, since B and T are arguments. */
typedef struct Alloc {
  LLVMValueRef off; /* i64 floats */
} Alloc;

static LLVMValueRef reserve(Lower *L, Alloc *al, LLVMValueRef floats) {
  LLVMValueRef at = al->off;
  LLVMValueRef rounded =
      LLVMBuildAnd(L->bld, add(L, floats, ci64(L, 15)), ci64(L, ~(int64_t)15), "");
  al->off = add(L, al->off, rounded);
  return at;
}

static void state_copy_rows(Lower *L, LLVMValueRef dst, LLVMValueRef src, int64_t numel,
                            LLVMValueRef drow, LLVMValueRef srow) {
  Loop lk;
  LLVMValueRef d = gepf(L, dst, mul(L, drow, ci64(L, numel)));
  LLVMValueRef s = gepf(L, src, mul(L, srow, ci64(L, numel)));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, numel));
  stf(L, ldf(L, s, k), d, k);
  loop_end(L, &lk);
}

typedef struct RowLoop {
  int open;
  Loop lb, lt;
  int phase;
  LLVMBasicBlockRef skip;
} RowLoop;

static void rows_open(Lower *L, RowLoop *rl, int phase, LLVMValueRef t) {
  if (rl->open) return;
  rl->open = 1;
  rl->phase = phase;
  L->r_b = loop_begin(L, &rl->lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, L->r_b);
  LLVMValueRef bT = mul(L, L->r_b, L->a_T);
  if (phase == CLS_TOKEN && L->chunk_mode) {
    /* This example's active steps in the chunk: j < min(tn, len - t0). The
     * chunk row j holds step t0 + j, read at its token in the direction the
     * instance runs, so the time loop finds it at b*Tc + t - t0. */
    LLVMValueRef jn = LLVMBuildSub(L->bld, len, L->t0, "");
    jn = LLVMBuildSelect(L->bld, LLVMBuildICmp(L->bld, LLVMIntSLT, jn, L->tn, ""), jn, L->tn, "");
    LLVMValueRef j = loop_begin(L, &rl->lt, ci64(L, 0), jn);
    LLVMValueRef tt = add(L, L->t0, j);
    LLVMValueRef rt = LLVMBuildSub(L->bld, LLVMBuildSub(L->bld, len, ci64(L, 1), ""), tt, "");
    LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
    L->r_tok = add(L, bT, LLVMBuildSelect(L->bld, isrev, rt, tt, ""));
    L->r_tokc = add(L, mul(L, L->r_b, L->Tc), j);
  } else if (phase == CLS_TOKEN) {
    LLVMValueRef tt = loop_begin(L, &rl->lt, ci64(L, 0), len);
    L->r_tok = add(L, bT, tt);
  } else {
    /* Rows past their sequence's end are computed on row 0's tokens and
     * thrown away; that keeps the batch GEMMs dense. */
    LLVMValueRef active = LLVMBuildICmp(L->bld, LLVMIntSLT, t, len, "");
    LLVMValueRef rt = LLVMBuildSub(L->bld, LLVMBuildSub(L->bld, len, ci64(L, 1), ""), t, "");
    LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
    LLVMValueRef te = LLVMBuildSelect(L->bld, isrev, rt, t, "");
    te = LLVMBuildSelect(L->bld, active, te, ci64(L, 0), "");
    L->r_tok = add(L, bT, te);
    if (L->chunk_mode)
      L->r_tokc = add(L, mul(L, L->r_b, L->Tc), LLVMBuildSub(L->bld, t, L->t0, ""));
  }
}

static void rows_close(Lower *L, RowLoop *rl) {
  if (!rl->open) return;
  if (rl->phase == CLS_TOKEN) loop_end(L, &rl->lt);
  loop_end(L, &rl->lb);
  rl->open = 0;
}

/* Floats of a GEMM's packed weight (runtime/rt_cpu.h, rt_cpu_packed_floats). */
static int64_t packed_floats(const NodeInfo *n) {
  return (n->gemm_n + RT_CPU_PACK_NR - 1) / RT_CPU_PACK_NR * RT_CPU_PACK_NR * n->gemm_k;
}

/* n->wr = the real form of a cgemm's complex weight W[N, K] (see
 * plan_gemm): row 2n + c is output part c (re, im) of W[n] @ y. */
static void emit_complex_real_form(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r], *w = &L->ni[nd->args[0]], *y = &L->ni[nd->args[1]];
  int64_t N = w->shape[0], K = w->shape[1], Kr = n->gemm_k;
  Loop ln, lk;
  LLVMValueRef i = loop_begin(L, &ln, ci64(L, 0), ci64(L, N));
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  Cx v = ldc(L, w->base, add(L, mul(L, i, ci64(L, K)), k), 2);
  LLVMValueRef row_re = mul(L, mul(L, i, ci64(L, 2)), ci64(L, Kr));
  LLVMValueRef row_im = add(L, row_re, ci64(L, Kr));
  if (y->w == 1) {
    stf(L, v.re, n->wr, add(L, row_re, k));
    stf(L, v.im, n->wr, add(L, row_im, k));
  } else {
    LLVMValueRef c = mul(L, k, ci64(L, 2)), c1 = add(L, c, ci64(L, 1));
    stf(L, v.re, n->wr, add(L, row_re, c));
    stf(L, LLVMBuildFNeg(L->bld, v.im, ""), n->wr, add(L, row_re, c1));
    stf(L, v.im, n->wr, add(L, row_im, c));
    stf(L, v.re, n->wr, add(L, row_im, c1));
  }
  loop_end(L, &lk);
  loop_end(L, &ln);
}

/* Copies the current chunk's rows of a whole-sequence GEMM operand (a root
 * input) into n->gath, so the chunk's product is one GEMM over B*Tc rows. */
static void emit_gather(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  IrRef xv = n->gemm == 'T' ? nd->args[1] : nd->args[0];
  NodeInfo *x = &L->ni[xv];
  RowLoop rl = {0};
  rows_open(L, &rl, CLS_TOKEN, NULL);
  state_copy_rows(L, n->gath, x->base, row_floats(x), L->r_tokc, L->r_tok);
  rows_close(L, &rl);
}

static void emit_gemm(Lower *L, IrRef r, LLVMValueRef rows) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  IrRef xv = n->gemm == 'T' ? nd->args[1] : nd->args[0];
  NodeInfo *x = &L->ni[xv];
  int64_t per_row = n->gemm_k ? row_floats(x) / n->gemm_k : 0;
  LLVMValueRef M = mul(L, rows, ci64(L, per_row));
  LLVMValueRef A = x->base;
  if (n->gath) {
    emit_gather(L, r);
    A = n->gath;
  }
  /* The weight as given, and its packed form (n->wt, packed in phase 0)
   * unless the call has too few tokens for packing to pay (L->packed). */
  int tr = n->gemm == 'T';
  LLVMValueRef W = n->cgemm ? n->wr : L->ni[nd->args[tr ? 0 : 1]].base;
  LLVMValueRef Bp = LLVMBuildSelect(L->bld, L->packed, n->wt, LLVMConstNull(L->ptr), "");
  LLVMTypeRef pt[11] = {L->i64, L->i64, L->i64, L->ptr, L->i64, L->ptr,
                        L->i64, L->i32, L->ptr, L->ptr, L->i64};
  LLVMValueRef args[11] = {M,
                           ci64(L, n->gemm_n),
                           ci64(L, n->gemm_k),
                           A,
                           ci64(L, n->gemm_k),
                           W,
                           ci64(L, tr ? n->gemm_k : n->gemm_n),
                           ci32(L, tr),
                           Bp,
                           n->base,
                           ci64(L, n->gemm_n)};
  call_fn(L, "rt_cpu_sgemm_w", L->void_t, pt, 11, args);
}

static void emit_call(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  Inst *child = &L->insts.v[L->in->layer_inst[nd->index]];
  const IrFunc *cf_ = child->fn;
  LLVMValueRef ins = LLVMBuildArrayAlloca(L->bld, L->ptr, ci64(L, cf_->inputs.n + 1), "ins");
  LLVMValueRef outs = LLVMBuildArrayAlloca(L->bld, L->ptr, ci64(L, cf_->outputs.n + 1), "outs");
  for (int j = 0; j < nd->nargs && j < cf_->inputs.n; j++) {
    LLVMValueRef idx = ci64(L, j);
    NodeInfo *a = &L->ni[nd->args[j]];
    LLVMValueRef p = a->base;
    if (a->cls == CLS_CONST) {
      /* A layer reads an input per token: repeat the value for each. */
      p = n->cins[j];
      Loop lr;
      LLVMValueRef row = loop_begin(L, &lr, ci64(L, 0), mul(L, L->a_B, L->a_T));
      state_copy_rows(L, p, a->base, row_floats(a), row, ci64(L, 0));
      loop_end(L, &lr);
    }
    LLVMBuildStore(L->bld, p, LLVMBuildGEP2(L->bld, L->ptr, ins, &idx, 1, ""));
  }
  for (int j = 0; j < cf_->outputs.n; j++) {
    LLVMValueRef idx = ci64(L, j);
    LLVMBuildStore(L->bld, n->outs[j], LLVMBuildGEP2(L->bld, L->ptr, outs, &idx, 1, ""));
  }
  int rev = L->fn->layers.v[nd->index].reverse;
  LLVMValueRef crev = rev ? LLVMBuildXor(L->bld, L->a_rev, ci32(L, 1), "") : L->a_rev;
  LLVMValueRef args[9] = {L->a_params, L->a_B, L->a_T,    ins, L->a_lengths,
                          L->a_sin,    outs,   L->a_sout, crev};
  LLVMValueRef st = LLVMBuildCall2(L->bld, L->inst_ty, child->llfn, args, 9, "");
  LLVMValueRef bad = LLVMBuildICmp(L->bld, LLVMIntNE, st, ci32(L, 0), "");
  LLVMBasicBlockRef badb = block(L, "callfail"), ok = block(L, "callok");
  LLVMBuildCondBr(L->bld, bad, badb, ok);
  LLVMPositionBuilderAtEnd(L->bld, badb);
  LLVMBuildStore(L->bld, st, L->status);
  LLVMBuildBr(L->bld, L->cleanup);
  LLVMPositionBuilderAtEnd(L->bld, ok);
}

/* Model-level depthwise causal convolution over the whole sequence, in the
 * direction the instance runs: out[tau] = b + sum_k w[k] u[tau - K + 1 + k]. */
static void emit_causal_conv(Lower *L, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r], *u = &L->ni[nd->args[0]], *w = &L->ni[nd->args[1]];
  int64_t D = n->numel, K = D ? w->numel / D : 0;
  LLVMValueRef ub = u->base, wb = L->ni[nd->args[1]].base, bb = L->ni[nd->args[2]].base;
  int ucls = u->cls;
  Loop lb, lt, ld, lk;
  LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), L->a_B);
  LLVMValueRef len = len_of(L, b);
  LLVMValueRef isrev = LLVMBuildICmp(L->bld, LLVMIntNE, L->a_rev, ci32(L, 0), "");
  LLVMValueRef bT = mul(L, b, L->a_T);
  LLVMValueRef tau = loop_begin(L, &lt, ci64(L, 0), len);
  LLVMValueRef lm1 = LLVMBuildSub(L->bld, len, ci64(L, 1), "");
  LLVMValueRef phys = LLVMBuildSelect(L->bld, isrev, LLVMBuildSub(L->bld, lm1, tau, ""), tau, "");
  LLVMValueRef d = loop_begin(L, &ld, ci64(L, 0), ci64(L, D));
  LLVMValueRef acc0 = ldf(L, bb, L->ni[nd->args[2]].numel == 1 ? ci64(L, 0) : d);
  LLVMValueRef k = loop_begin(L, &lk, ci64(L, 0), ci64(L, K));
  LLVMValueRef phi = loop_phi(L, &lk, acc0, "acc");
  LLVMValueRef s = add(L, tau, LLVMBuildSub(L->bld, k, ci64(L, K - 1), ""));
  LLVMValueRef valid = LLVMBuildICmp(L->bld, LLVMIntSGE, s, ci64(L, 0), "");
  LLVMValueRef ps = LLVMBuildSelect(L->bld, isrev, LLVMBuildSub(L->bld, lm1, s, ""), s, "");
  ps = LLVMBuildSelect(L->bld, valid, ps, ci64(L, 0), "");
  LLVMValueRef uoff = ucls == CLS_CONST ? d : add(L, mul(L, add(L, bT, ps), ci64(L, D)), d);
  LLVMValueRef uv = ldf(L, ub, uoff);
  LLVMValueRef term = LLVMBuildFMul(L->bld, ldf(L, wb, add(L, mul(L, d, ci64(L, K)), k)), uv, "");
  term = LLVMBuildSelect(L->bld, valid, term, cf(L, 0.0), "");
  LLVMValueRef nv = LLVMBuildFAdd(L->bld, phi, term, "");
  loop_phi_next(L, phi, nv);
  loop_end(L, &lk);
  stf(L, phi, n->base, add(L, mul(L, add(L, bT, phys), ci64(L, D)), d));
  loop_end(L, &ld);
  loop_end(L, &lt);
  loop_end(L, &lb);
}

/* ---- fused element loops ------------------------------------------------
 * Within a row, a run of real elementwise nodes of one size N (and slices
 * that are a contiguous piece of their operand, such as LSTM's four gates)
 * becomes one loop over N elements instead of a loop per node: values pass
 * between the nodes in registers, and only those read outside the run (by
 * later nodes, outputs or state updates) are stored. Complex values and
 * operands broadcast to the run's shape (S4D's [H, N] state update) fuse too. For LSTM that turns
 * the 13 loops of the gate nonlinearities and the state update into one. */

/* Whether operand a of a node of shape key can be read at the run's flat
 * index: the same number of elements, a scalar, or (numpy rules) broadcast
 * to key's shape, such as S4D's x[:, None] against [H, N]. */
static int fused_readable(const NodeInfo *a, const NodeInfo *key, const NodeInfo *n) {
  if (a->numel == key->numel || a->numel == 1) return 1;
  if (n->rank != key->rank || memcmp(n->shape, key->shape, sizeof(int64_t) * (size_t)n->rank))
    return 0;
  if (a->rank > key->rank) return 0;
  for (int d = 0; d < a->rank; d++) {
    int64_t s = a->shape[d], t = key->shape[key->rank - a->rank + d];
    if (s != t && s != 1) return 0;
  }
  return 1;
}

static int fusable(Lower *L, int phase, IrRef r, const NodeInfo *key) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  if (n->cls != phase || n->gemm || n->is_int || n->numel != key->numel || n->uses == 0) return 0;
  if (nd->op == IR_SLICE || nd->op == IR_INDEX) {
    NodeInfo *x = &L->ni[nd->args[0]];
    int64_t outer, len, inner;
    if (n->w != 1 || x->w != 1 || x->is_int) return 0;
    outer_inner(x, nd->axis, &outer, &len, &inner);
    return outer == 1;
  }
  if (!(ir_op_info[nd->op].flags & IRF_EW) && nd->op != IR_BROADCAST) return 0;
  if (nd->nargs < 1 || nd->nargs > 2) return 0;
  int cplx = n->w == 2;
  for (int j = 0; j < nd->nargs; j++) {
    NodeInfo *a = &L->ni[nd->args[j]];
    if (a->is_int || !fused_readable(a, key, n)) return 0;
    cplx |= a->w == 2;
  }
  if (cplx) return complex_op_ok(nd->op);
  return nd->op != IR_CPLX && nd->op != IR_RE && nd->op != IR_IM && nd->op != IR_CONJ;
}

/* Whether node r is emitted by emit_phase in this phase (not skipped). */
static int in_phase(Lower *L, int phase, IrRef r) {
  const IrNode *nd = &L->fn->nodes.v[r];
  NodeInfo *n = &L->ni[r];
  return n->cls == phase && !is_alias_op(nd->op) && (n->uses > 0 || nd->op == IR_CALL);
}

/* At most this many nodes share one fused loop. A chain of thousands of
 * elementwise ops in one loop body made LLVM's per-loop analyses (SCEV,
 * scheduling, register allocation over one huge block) superlinear: 2000 ops
 * took 7 s, 10000 minutes. Past the cap the run continues in a new loop; the
 * value crossing the cut is stored and reloaded, one extra pass over a row
 * per FUSED_RUN_MAX ops, which costs nothing measurable. */
enum { FUSED_RUN_MAX = 64 };

/* The last node of the fusable run that starts at r, or r if the run has
 * one node. */
static IrRef fused_run_end(Lower *L, int phase, IrRef r) {
  const NodeInfo *key = &L->ni[r];
  if (!fusable(L, phase, r, key)) return r;
  IrRef last = r;
  int members = 1;
  for (IrRef q = r + 1; q < L->fn->nodes.n && members < FUSED_RUN_MAX; q++) {
    if (!in_phase(L, phase, q)) continue;
    if (!fusable(L, phase, q, key)) break;
    last = q;
    members++;
  }
  return last;
}

/* Operand a at the run's flat index k (shape key), as a complex (im 0 for a
 * real value). A broadcast operand is read at (o, i), k = o * last + i over
 * the key's last axis: the part from o is loop-invariant in the inner loop,
 * which stays contiguous (or constant) and vectorizes. */
static Cx fused_operand(Lower *L, IrRef a, LLVMValueRef k, LLVMValueRef o, LLVMValueRef i,
                        const NodeInfo *key) {
  if (L->fmember[a]) return (Cx){L->fval[a], L->fval_im[a] ? L->fval_im[a] : cf(L, 0.0)};
  NodeInfo *an = &L->ni[a];
  LLVMValueRef idx = k;
  if (an->numel == 1) {
    idx = ci64(L, 0);
  } else if (an->numel != key->numel) {
    Nest ns = {0};
    ns.rank = key->rank;
    memcpy(ns.shape, key->shape, sizeof ns.shape);
    nest_operand(&ns, 0, an->rank, an->shape);
    int last = key->rank - 1;
    idx = mul(L, i, ci64(L, ns.stride[0][last]));
    int64_t inner = 1;
    for (int d = last - 1; d >= 0; d--) {
      if (ns.stride[0][d]) {
        LLVMValueRef c = LLVMBuildUDiv(L->bld, o, ci64(L, inner), "");
        c = LLVMBuildURem(L->bld, c, ci64(L, key->shape[d]), "");
        idx = add(L, idx, mul(L, c, ci64(L, ns.stride[0][d])));
      }
      inner *= key->shape[d];
    }
  }
  return ldc(L, rowptr(L, a), idx, an->w);
}

static void emit_fused(Lower *L, int phase, IrRef first, IrRef last) {
  const IrFunc *fn = L->fn;
  const NodeInfo *key = &L->ni[first];
  int bcast = 0;
  for (IrRef r = first; r <= last; r++) {
    L->fmember[r] = in_phase(L, phase, r);
    const IrNode *nd = &fn->nodes.v[r];
    if (L->fmember[r] && nd->op != IR_SLICE && nd->op != IR_INDEX)
      for (int j = 0; j < nd->nargs; j++) {
        const NodeInfo *a = &L->ni[nd->args[j]];
        bcast |= a->numel != key->numel && a->numel != 1;
      }
  }
  /* With a broadcast operand: a loop over the leading axes around one over
   * the last (key's rank >= 1 then, see fused_readable). */
  int64_t len = bcast ? key->shape[key->rank - 1] : key->numel;
  Loop lo, lk;
  LLVMValueRef o =
      bcast ? loop_begin(L, &lo, ci64(L, 0), ci64(L, len ? key->numel / len : 0)) : ci64(L, 0);
  LLVMValueRef i = loop_begin(L, &lk, ci64(L, 0), ci64(L, len));
  LLVMValueRef k = bcast ? add(L, mul(L, o, ci64(L, len)), i) : i;
  for (IrRef r = first; r <= last; r++) {
    if (!L->fmember[r]) continue;
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    Cx v = {NULL, NULL};
    int cplx = n->w == 2;
    for (int j = 0; j < nd->nargs; j++) cplx |= L->ni[nd->args[j]].w == 2;
    if (nd->op == IR_SLICE || nd->op == IR_INDEX) {
      NodeInfo *x = &L->ni[nd->args[0]];
      int64_t outer, len, inner, start = 0;
      outer_inner(x, nd->axis, &outer, &len, &inner);
      if (dim_eval(nd->start, L->in->dims, &start) != 0) start = 0;
      v.re = ldf(L, rowptr(L, nd->args[0]), add(L, k, ci64(L, start * inner)));
    } else if (cplx) {
      Cx a0 = fused_operand(L, nd->args[0], k, o, i, key);
      Cx a1 = nd->nargs > 1 ? fused_operand(L, nd->args[1], k, o, i, key) : (Cx){NULL, NULL};
      v = cx_op(L, nd->op, a0, a1);
    } else if (nd->nargs == 1) {
      v.re = emit_unary(L, nd->op, fused_operand(L, nd->args[0], k, o, i, key).re);
    } else {
      v.re = emit_binary(L, nd->op, fused_operand(L, nd->args[0], k, o, i, key).re,
                         fused_operand(L, nd->args[1], k, o, i, key).re);
    }
    L->fval[r] = v.re;
    L->fval_im[r] = n->w == 2 ? v.im : NULL;
    /* Stored only if something outside the run reads it. */
    int inside = 0;
    for (IrRef q = r + 1; q <= last; q++)
      if (L->fmember[q])
        for (int j = 0; j < fn->nodes.v[q].nargs; j++) inside += fn->nodes.v[q].args[j] == r;
    if (inside < n->uses) stc(L, v, rowptr(L, r), k, n->w);
  }
  loop_end(L, &lk);
  if (bcast) loop_end(L, &lo);
  for (IrRef r = first; r <= last; r++) {
    L->fmember[r] = 0;
    L->fval[r] = L->fval_im[r] = NULL;
  }
}

/* Emits all nodes of `phase` in order, fusing runs of row-wise nodes into one
 * loop and breaking it for GEMMs, CALLs and causal convolutions. */
static void emit_phase(Lower *L, int phase, LLVMValueRef t) {
  RowLoop rl = {0};
  const IrFunc *fn = L->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    if (n->cls != phase || is_alias_op(nd->op)) continue;
    if (n->uses == 0 && nd->op != IR_CALL) continue;
    if (n->gemm || nd->op == IR_CALL || nd->op == IR_CAUSAL_CONV) {
      rows_close(L, &rl);
      if (n->gemm) {
        LLVMValueRef rows = phase != CLS_TOKEN ? L->a_B
                            : L->chunk_mode    ? mul(L, L->a_B, L->Tc)
                                               : mul(L, L->a_B, L->a_T);
        emit_gemm(L, r, rows);
      } else if (nd->op == IR_CALL) {
        emit_call(L, r);
      } else {
        emit_causal_conv(L, r);
      }
      continue;
    }
    rows_open(L, &rl, phase, t);
    IrRef last = fused_run_end(L, phase, r);
    if (last > r) {
      emit_fused(L, phase, r, last);
      r = last;
      continue;
    }
    emit_row(L, r);
  }
  rows_close(L, &rl);
}

static int count_uses(Lower *L) {
  const IrFunc *fn = L->fn;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    for (int j = 0; j < fn->nodes.v[r].nargs; j++) L->ni[fn->nodes.v[r].args[j]].uses++;
  for (int i = 0; i < fn->states.n; i++) {
    if (fn->states.v[i].init >= 0) L->ni[fn->states.v[i].init].uses++;
    if (fn->states.v[i].next >= 0) L->ni[fn->states.v[i].next].uses++;
  }
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value >= 0) L->ni[fn->outputs.v[i].value].uses++;
  return 0;
}

/* Hoisting policy. Computing a TOKEN node for all tokens before the time
 * loop pays for matrix products (one GEMM over many rows instead of a small
 * one per step), but an elementwise node whose row is much larger than the
 * per-token rows it reads (S4D's dB * x[:, None], [H, N] complex per [H]
 * token) would only write out a huge buffer (B*T rows) for the loop to read
 * back once. Such nodes, when no hoisted GEMM needs them, are computed in
 * the time loop from the token's inputs instead (class STATE), and so is
 * everything downstream of them. */
#define EXPANSION_RATIO 4

/* A contiguous slice of a token row read only inside the time loop (GRU's
 * three input gates): hoisted it would be a copy written and read back; in
 * the loop it is a load at an offset inside the step's fused element loop. */
static int state_only_slice(Lower *L, IrRef r) {
  const IrFunc *fn = L->fn;
  const IrNode *nd = &fn->nodes.v[r];
  if (nd->op != IR_SLICE && nd->op != IR_INDEX) return 0;
  NodeInfo *x = &L->ni[nd->args[0]];
  int64_t outer, len, inner;
  outer_inner(x, nd->axis, &outer, &len, &inner);
  if (outer != 1) return 0;
  for (int i = 0; i < fn->outputs.n; i++)
    if (fn->outputs.v[i].value == r) return 0;
  for (int i = 0; i < fn->states.n; i++)
    if (fn->states.v[i].next == r || fn->states.v[i].init == r) return 0;
  int users = 0;
  for (IrRef q = r + 1; q < fn->nodes.n; q++)
    for (int j = 0; j < fn->nodes.v[q].nargs; j++)
      if (fn->nodes.v[q].args[j] == r) {
        if (L->ni[q].cls != CLS_STATE) return 0;
        users++;
      }
  return users > 0;
}
static int demote_expansions(Lower *L) {
  const IrFunc *fn = L->fn;
  if (fn->kind != IR_FN_CELL || fn->states.n == 0) return 0;
  char *feeds = arena_calloc(L->a, (size_t)fn->nodes.n + 1, 1);
  if (!feeds) return -1;
  /* feeds[r]: r is, or is read by, a TOKEN node that must stay hoisted. */
  for (IrRef r = fn->nodes.n - 1; r >= 0; r--) {
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    if (n->cls != CLS_TOKEN) continue;
    if (n->gemm || nd->op == IR_CALL || nd->op == IR_CAUSAL_CONV) feeds[r] = 1;
    if (feeds[r])
      for (int j = 0; j < nd->nargs; j++) feeds[nd->args[j]] = 1;
  }
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    if (n->cls != CLS_TOKEN) continue;
    int64_t in = 0;
    int after_demoted = 0;
    for (int j = 0; j < nd->nargs; j++) {
      const NodeInfo *a = &L->ni[nd->args[j]];
      after_demoted |= a->cls == CLS_STATE;
      if (a->cls == CLS_TOKEN) in += row_floats(a);
    }
    int ew = (ir_op_info[nd->op].flags & IRF_EW) || nd->op == IR_BROADCAST || nd->op == IR_OUTER;
    if (after_demoted ||
        (!feeds[r] && ew && !is_alias_op(nd->op) && row_floats(n) >= EXPANSION_RATIO * in) ||
        (!feeds[r] && state_only_slice(L, r)))
      n->cls = CLS_STATE;
  }
  return 0;
}

static int plan_nodes(Lower *L) {
  const IrFunc *fn = L->fn;
  L->ni = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(NodeInfo));
  if (!L->ni) return -1;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    if (!supported(L, nd)) return -1;
    for (int j = 0; j < nd->nargs; j++) {
      if (nd->args[j] < 0 || nd->args[j] >= r) {
        diag_internal(L->de, "codegen", "node %d has operand %d out of order", r, nd->args[j]);
        return -1;
      }
      if (L->ni[nd->args[j]].cls > n->cls) n->cls = L->ni[nd->args[j]].cls;
    }
    if (nd->op == IR_INPUT || nd->op == IR_CALL) n->cls = CLS_TOKEN;
    if (nd->op == IR_STATE) n->cls = CLS_STATE;
    if (nd->op == IR_CAUSAL_CONV && n->cls < CLS_TOKEN) n->cls = CLS_TOKEN;
    n->is_int = nd->type.elem == IR_INT;
    n->w = nd->type.elem == IR_COMPLEX ? 2 : 1;
    if (eval_type(L, L->in, nd->type, nd->loc, &n->rank, n->shape, &n->numel)) return -1;
    plan_gemm(L, r);
  }
  return demote_expansions(L) ? -1 : count_uses(L);
}

/* Initial states: state_in's row if given, else the declared value
 * (broadcast from the init node's shape). */
static int emit_state_init(Lower *L, Inst *in, LLVMValueRef *st_offs) {
  const IrFunc *fn = L->fn;
  LLVMBuilderRef bld = L->bld;
  LLVMValueRef B = L->a_B;
  for (int s = 0; s < fn->states.n; s++) {
    const IrState *st = &fn->states.v[s];
    const AbiTensor *ct = &L->sig->states.v[in->state0 + s];
    LLVMValueRef storage = gepf(L, L->scratch, st_offs[s]);
    int g = in->state0 + s;
    LLVMBasicBlockRef given = block(L, "sgiven"), deflt = block(L, "sdefault"),
                      next = block(L, "snext");
    LLVMValueRef sin_null = LLVMBuildIsNull(bld, L->a_sin, "");
    LLVMBasicBlockRef here = LLVMGetInsertBlock(bld);
    LLVMBasicBlockRef check = block(L, "scheck");
    LLVMBuildCondBr(bld, sin_null, deflt, check);
    (void)here;
    LLVMPositionBuilderAtEnd(bld, check);
    LLVMValueRef p = ldp(L, L->a_sin, g);
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, p, ""), deflt, given);
    LLVMPositionBuilderAtEnd(bld, given);
    LLVMBuildMemCpy(bld, storage, 4, p, 4, mul(L, mul(L, B, ci64(L, ct->numel)), ci64(L, 4)));
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, deflt);
    if (st->init >= 0) {
      /* A broadcast of the initial value (numpy rules) into each row, so
       * that "= 0" or a [N] parameter fills an [H, N] state, and a real
       * value fills a complex state's real parts. */
      NodeInfo *iv = &L->ni[st->init];
      if ((iv->w == 2 && st->type.elem != IR_COMPLEX) || iv->rank > ct->ndim) {
        unsupported(L, st->loc, "this initial value of a state");
        return -1;
      }
      Nest ns = {0};
      ns.nops = 1;
      ns.w[0] = iv->w;
      ns.ow = st->type.elem == IR_COMPLEX ? 2 : 1;
      ns.cplx = ns.ow == 2;
      ns.ptr[0] = iv->base;
      ns.rank = ct->ndim - (ns.ow == 2);
      memcpy(ns.shape, ct->shape, sizeof ns.shape);
      nest_operand(&ns, 0, iv->rank, iv->shape);
      Loop lb;
      LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), B);
      LLVMValueRef row = gepf(L, storage, mul(L, b, ci64(L, ct->numel)));
      LLVMValueRef z[4] = {ci64(L, 0), ci64(L, 0), ci64(L, 0), ci64(L, 0)};
      emit_ew_nest(L, IR_BROADCAST, &ns, row, 0, z, ci64(L, 0));
      loop_end(L, &lb);
    }
    LLVMBuildBr(bld, next);
    LLVMPositionBuilderAtEnd(bld, next);
  }

  return 0;
}

/* One step t of the time loop: the state-dependent nodes for all B
 * examples, then per active example its outputs and new states. */
static int emit_step(Lower *L, Inst *in, LLVMValueRef t, LLVMValueRef *st_offs,
                     LLVMValueRef *st_tmp) {
  const IrFunc *fn = L->fn;
  LLVMBuilderRef bld = L->bld;
  emit_phase(L, CLS_STATE, t);
  /* Per active example: outputs of this step, then the new states. */
  RowLoop rl = {0};
  rows_open(L, &rl, CLS_STATE, t);
  LLVMValueRef len = len_of(L, L->r_b);
  LLVMBasicBlockRef act = block(L, "active"), skip = block(L, "inactive");
  LLVMBuildCondBr(bld, LLVMBuildICmp(bld, LLVMIntSLT, t, len, ""), act, skip);
  LLVMPositionBuilderAtEnd(bld, act);
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    if (v < 0 || L->ni[v].cls != CLS_STATE) continue;
    state_copy_rows(L, ldp(L, L->a_outputs, o), L->ni[v].base, row_floats(&L->ni[v]), L->r_tok,
                    L->r_b);
  }
  /* A new value that is another state's old value (a shift register,
   * "a' = b") reads that state's storage, which this loop may already
   * have overwritten: such rows go through a per-state temporary first. */
  for (int s = 0; s < fn->states.n; s++) {
    const IrState *st = &fn->states.v[s];
    int j = st->next >= 0 ? state_alias(L, st->next) : -1;
    if (j < 0 || j == s) continue;
    state_copy_rows(L, gepf(L, L->scratch, st_tmp[s]), L->ni[st->next].base,
                    L->sig->states.v[in->state0 + s].numel, L->r_b, L->r_b);
  }
  for (int s = 0; s < fn->states.n; s++) {
    const IrState *st = &fn->states.v[s];
    if (st->next < 0) continue;
    int j = state_alias(L, st->next);
    if (j == s) continue; /* carried unchanged */
    NodeInfo *nv = &L->ni[st->next];
    int64_t floats = L->sig->states.v[in->state0 + s].numel;
    if (row_floats(nv) != floats) {
      unsupported(L, st->loc, "a state update of a different size or type than the state");
      return -1;
    }
    LLVMValueRef src = j >= 0 ? gepf(L, L->scratch, st_tmp[s]) : nv->base;
    LLVMValueRef srow = j >= 0 || nv->cls == CLS_STATE ? L->r_b
                        : nv->cls == CLS_CONST         ? ci64(L, 0)
                        : nv->chunked                  ? L->r_tokc
                                                       : L->r_tok;
    state_copy_rows(L, gepf(L, L->scratch, st_offs[s]), src, floats, L->r_b, srow);
  }
  LLVMBuildBr(bld, skip);
  LLVMPositionBuilderAtEnd(bld, skip);
  rows_close(L, &rl);
  return 0;
}

/* Outputs that do not depend on state, for the TOKEN rows of the current
 * pass (all tokens, or one chunk's). */
static void emit_token_outputs(Lower *L) {
  const IrFunc *fn = L->fn;
  RowLoop rl = {0};
  for (int o = 0; o < fn->outputs.n; o++) {
    IrRef v = fn->outputs.v[o].value;
    if (v < 0 || L->ni[v].cls == CLS_STATE) continue;
    NodeInfo *nv = &L->ni[v];
    rows_open(L, &rl, CLS_TOKEN, NULL);
    LLVMValueRef srow = nv->cls == CLS_CONST ? ci64(L, 0) : nv->chunked ? L->r_tokc : L->r_tok;
    state_copy_rows(L, ldp(L, L->a_outputs, o), nv->base, row_floats(nv), L->r_tok, srow);
  }
  rows_close(L, &rl);
}

/* Whether this function's time loop runs in chunks (a cell with states whose
 * TOKEN nodes need no whole sequence: no layer calls, no convolutions, and
 * constant initial states), and which buffers then hold one chunk's rows.
 * Returns the floats one token takes in those buffers (0: not chunked). */
static int64_t plan_chunks(Lower *L) {
  const IrFunc *fn = L->fn;
  L->chunk_mode = 0;
  if (fn->kind != IR_FN_CELL || fn->states.n == 0) return 0;
  for (IrRef r = 0; r < fn->nodes.n; r++)
    if (fn->nodes.v[r].op == IR_CALL || fn->nodes.v[r].op == IR_CAUSAL_CONV) return 0;
  for (int s = 0; s < fn->states.n; s++)
    if (fn->states.v[s].init >= 0 && L->ni[fn->states.v[s].init].cls != CLS_CONST) return 0;
  int64_t floats = 0;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const IrNode *nd = &fn->nodes.v[r];
    NodeInfo *n = &L->ni[r];
    if (n->cls != CLS_TOKEN) continue;
    if (nd->op == IR_RESHAPE) {
      n->chunked = L->ni[nd->args[0]].chunked;
    } else if (!is_alias_op(nd->op) && n->uses > 0) {
      n->chunked = 1;
      floats += row_floats(n) + 16;
      if (n->gemm) /* room for a gathered operand */
        floats += row_floats(&L->ni[nd->args[n->gemm == 'T' ? 1 : 0]]) + 16;
    }
  }
  L->chunk_mode = floats > 0;
  return floats;
}

/* Floats the TOKEN buffers of one chunk may take (1 MiB): the chunk's GEMM
 * output is still in L2 when its steps read it. For LSTM at I = H = 256 that
 * is about 200 token rows (B = 64: Tc = 3, B = 1: Tc = 200); 100 to 400 rows
 * measured the same, a whole [B*T, 4H] buffer (256 MiB at B = 64) 7% slower. */
#define CHUNK_FLOATS ((int64_t)256 * 1024)

/* Calls with fewer tokens (B*T) than this multiply by unpacked weights: with
 * dot products, the LSTM step at I = H = 256 took 605 us unpacked and 706
 * packed at B = 32, 1189 and 989 at B = 64 (one thread, the dev machine). */
#define PACK_MIN_TOKENS 48
/* ... and so do calls with a batch of at least PACK_SWAP_MIN_B
 * (runtime/cpu_gemm.c, SWAP_MIN_M: there the unpacked product runs on the
 * packed kernel as (x^T W^T)^T, 632 us for that B = 64 step) and fewer than
 * PACK_MIN_STEPS steps. */
#define PACK_SWAP_MIN_B 32
#define PACK_MIN_STEPS 16

static int emit_function(Lower *L, Inst *in) {
  L->in = in;
  L->fn = in->fn;
  const IrFunc *fn = in->fn;
  if (plan_nodes(L)) return -1;
  L->fval = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  L->fval_im = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  L->fmember = arena_calloc(L->a, (size_t)fn->nodes.n + 1, 1);
  if (!L->fval || !L->fval_im || !L->fmember) return -1;
  int64_t chunk_floats = plan_chunks(L);
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    const NodeInfo *n = &L->ni[r];
    if (n->cls == CLS_CONST || n->uses == 0 || is_alias_op(fn->nodes.v[r].op)) continue;
    int64_t w = n->gemm ? n->gemm_k * n->gemm_n : n->numel * n->w;
    if (w > 0 && L->work_per_token < LIMIT_ELEMS) L->work_per_token += w;
  }
  LLVMBuilderRef bld = L->bld;
  L->fv = in->llfn;
  LLVMBasicBlockRef entry = block(L, "entry");
  LLVMPositionBuilderAtEnd(bld, entry);
  L->a_params = LLVMGetParam(L->fv, 0);
  L->a_B = LLVMGetParam(L->fv, 1);
  L->a_T = LLVMGetParam(L->fv, 2);
  L->a_inputs = LLVMGetParam(L->fv, 3);
  L->a_lengths = LLVMGetParam(L->fv, 4);
  L->a_sin = LLVMGetParam(L->fv, 5);
  L->a_outputs = LLVMGetParam(L->fv, 6);
  L->a_sout = LLVMGetParam(L->fv, 7);
  L->a_rev = LLVMGetParam(L->fv, 8);
  L->status = LLVMBuildAlloca(bld, L->i32, "status");
  LLVMValueRef scratch_slot = LLVMBuildAlloca(bld, L->ptr, "scratch");
  LLVMBuildStore(bld, ci32(L, 0), L->status);
  LLVMBuildStore(bld, LLVMConstNull(L->ptr), scratch_slot);
  LLVMValueRef wscratch_slot = LLVMBuildAlloca(bld, L->ptr, "wscratch");
  LLVMBuildStore(bld, LLVMConstNull(L->ptr), wscratch_slot);
  L->cleanup = block(L, "cleanup");

  /* Sizes: reject B*T*(per-token floats) beyond the limit before multiplying. */
  int64_t per_tok = 16, per_ex = 16, fixed = 16;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    NodeInfo *n = &L->ni[r];
    const IrNode *nd = &fn->nodes.v[r];
    if (is_alias_op(nd->op)) continue;
    int64_t sz = row_floats(n) + 16;
    if (nd->op == IR_CALL) {
      const Inst *child = &L->insts.v[in->layer_inst[nd->index]];
      for (int j = 0; j < child->fn->outputs.n; j++) {
        int64_t ne;
        if (type_floats(L, child, child->fn->outputs.v[j].type, nd->loc, &ne)) return -1;
        per_tok += ne + 16;
      }
      for (int j = 0; j < nd->nargs; j++)
        if (L->ni[nd->args[j]].cls == CLS_CONST) per_tok += row_floats(&L->ni[nd->args[j]]) + 16;
      continue;
    }
    if (n->cls == CLS_CONST)
      fixed += sz + (n->gemm ? 0 : 0);
    else if (n->cls == CLS_TOKEN)
      per_tok += sz;
    else
      per_ex += sz;
    if (n->gemm) fixed += packed_floats(n) + 16;
  }
  for (int s = 0; s < fn->states.n; s++)
    per_ex += 2 * (L->sig->states.v[in->state0 + s].numel + 16);
  LLVMValueRef B = L->a_B, T = L->a_T;
  LLVMValueRef bad = LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, B, ci64(L, 0), ""),
                                 LLVMBuildICmp(bld, LLVMIntSLT, T, ci64(L, 0), ""), "");
  fail_with(L, bad, ABI_ERR_ARG);
  LLVMValueRef toobig =
      LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, (int64_t)1 << 31), ""),
                  LLVMBuildICmp(bld, LLVMIntSGT, T, ci64(L, (int64_t)1 << 31), ""), "");
  LLVMValueRef BT = mul(L, B, T);
  toobig = LLVMBuildOr(bld, toobig,
                       LLVMBuildICmp(bld, LLVMIntSGT, BT, ci64(L, LIMIT_ELEMS / per_tok), ""), "");
  toobig = LLVMBuildOr(bld, toobig,
                       LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, LIMIT_ELEMS / per_ex), ""), "");
  fail_with(L, toobig, ABI_ERR_NOMEM);
  /* lengths must lie in [0, T]. */
  {
    LLVMBasicBlockRef chk = block(L, "lenchk"), after = block(L, "lenok");
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_lengths, ""), after, chk);
    LLVMPositionBuilderAtEnd(bld, chk);
    Loop lb;
    LLVMValueRef b = loop_begin(L, &lb, ci64(L, 0), B);
    LLVMValueRef len = len_of(L, b);
    fail_with(L,
              LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, len, ci64(L, 0), ""),
                          LLVMBuildICmp(bld, LLVMIntSGT, len, T, ""), ""),
              ABI_ERR_LENGTH);
    loop_end(L, &lb);
    LLVMBuildBr(bld, after);
    LLVMPositionBuilderAtEnd(bld, after);
  }

  /* Chunk length: as many steps as keep B*Tc token rows within
   * CHUNK_FLOATS, at least 1 and at most T. */
  LLVMValueRef BTc = BT;
  if (L->chunk_mode) {
    LLVMValueRef Bm =
        LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, B, ci64(L, 1), ""), B, ci64(L, 1), "");
    int64_t chunk_rows = CHUNK_FLOATS / chunk_floats;
    LLVMValueRef tc = LLVMBuildSDiv(bld, ci64(L, chunk_rows), Bm, "");
    tc = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, tc, T, ""), tc, T, "");
    L->Tc = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSGT, tc, ci64(L, 1), ""), tc, ci64(L, 1),
                            "");
    BTc = mul(L, B, L->Tc);
  }
  /* Packing a weight costs about as much as multiplying a hundred tokens by
   * it: calls with fewer tokens (a step function, short sequences) multiply
   * by the weights as given (rt_cpu_sgemm_w) and reserve no room for packed
   * copies. An LSTM step at I = H = 256 and B = 8 took 480 us with packing
   * (and zeroing the 2 MiB it packs into), most of the call. */
  L->packed = LLVMBuildICmp(bld, LLVMIntSGE, BT, ci64(L, PACK_MIN_TOKENS), "");
  /* A few steps of a large batch do not pack either: there the unpacked
   * product of W @ x runs as (x^T W^T)^T on the full-speed kernel, a few
   * percent slower per step than packed, and packing costs about one step. */
  L->packed =
      LLVMBuildAnd(bld, L->packed,
                   LLVMBuildOr(bld, LLVMBuildICmp(bld, LLVMIntSLT, B, ci64(L, PACK_SWAP_MIN_B), ""),
                               LLVMBuildICmp(bld, LLVMIntSGE, T, ci64(L, PACK_MIN_STEPS), ""), ""),
                   "packed");
  /* Place every buffer. */
  Alloc al = {ci64(L, 0)};
  /* Packed weights and complex real forms are written whole before they are
   * read: they go in a second block that is not zeroed (zeroing them was a
   * tenth of a step call at B = 64). */
  Alloc alw = {ci64(L, 0)};
  LLVMValueRef *offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  LLVMValueRef *wt_offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  LLVMValueRef *gath_offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  LLVMValueRef *wr_offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef));
  LLVMValueRef **call_offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef *));
  LLVMValueRef **cin_offs = arena_calloc(L->a, (size_t)fn->nodes.n + 1, sizeof(LLVMValueRef *));
  LLVMValueRef *st_offs = arena_calloc(L->a, (size_t)fn->states.n + 1, sizeof(LLVMValueRef));
  LLVMValueRef *st_tmp = arena_calloc(L->a, (size_t)fn->states.n + 1, sizeof(LLVMValueRef));
  if (!offs || !wt_offs || !gath_offs || !wr_offs || !call_offs || !cin_offs || !st_offs || !st_tmp)
    return -1;
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    NodeInfo *n = &L->ni[r];
    const IrNode *nd = &fn->nodes.v[r];
    if (is_alias_op(nd->op)) continue;
    LLVMValueRef rows = n->cls == CLS_CONST   ? ci64(L, 1)
                        : n->cls == CLS_STATE ? B
                        : n->chunked          ? BTc
                                              : BT;
    if (nd->op == IR_CALL) {
      const Inst *child = &L->insts.v[in->layer_inst[nd->index]];
      call_offs[r] = arena_calloc(L->a, (size_t)child->fn->outputs.n + 1, sizeof(LLVMValueRef));
      n->outs = arena_calloc(L->a, (size_t)child->fn->outputs.n + 1, sizeof(LLVMValueRef));
      n->cins = arena_calloc(L->a, (size_t)nd->nargs + 1, sizeof(LLVMValueRef));
      cin_offs[r] = arena_calloc(L->a, (size_t)nd->nargs + 1, sizeof(LLVMValueRef));
      if (!call_offs[r] || !n->outs || !n->cins || !cin_offs[r]) return -1;
      for (int j = 0; j < nd->nargs; j++)
        if (L->ni[nd->args[j]].cls == CLS_CONST)
          cin_offs[r][j] = reserve(L, &al, mul(L, BT, ci64(L, row_floats(&L->ni[nd->args[j]]))));
      for (int j = 0; j < child->fn->outputs.n; j++) {
        int64_t ne;
        if (type_floats(L, child, child->fn->outputs.v[j].type, nd->loc, &ne)) return -1;
        call_offs[r][j] = reserve(L, &al, mul(L, BT, ci64(L, ne)));
      }
      continue;
    }
    if (n->uses == 0) continue;
    /* An elementwise node whose first operand is a dead-after-this scratch
     * buffer of the same class and size writes over it (the hoisted
     * "W x + b" then costs one [B*T, 4H] buffer, not two). */
    if ((ir_op_info[nd->op].flags & IRF_EW) && nd->nargs >= 1) {
      IrRef a0 = nd->args[0];
      const IrNode *an = &fn->nodes.v[a0];
      NodeInfo *a = &L->ni[a0];
      int is_out = 0;
      for (int i = 0; i < fn->outputs.n; i++) is_out |= fn->outputs.v[i].value == a0;
      for (int i = 0; i < fn->states.n; i++)
        is_out |= fn->states.v[i].next == a0 || fn->states.v[i].init == a0;
      if (!is_out && a->uses == 1 && a->cls == n->cls && a->numel == n->numel && a->w == n->w &&
          !is_alias_op(an->op) && an->op != IR_CALL && !a->inplace && offs[a0]) {
        n->inplace = 1;
        offs[r] = offs[a0];
        continue;
      }
    }
    offs[r] = reserve(L, &al, mul(L, rows, ci64(L, row_floats(n))));
    if (n->gemm)
      wt_offs[r] = reserve(
          L, &alw, LLVMBuildSelect(bld, L->packed, ci64(L, packed_floats(n)), ci64(L, 0), ""));
    if (n->cgemm) wr_offs[r] = reserve(L, &alw, ci64(L, n->gemm_n * n->gemm_k));
    if (n->gemm && n->chunked) {
      NodeInfo *x = &L->ni[nd->args[n->gemm == 'T' ? 1 : 0]];
      if (!x->chunked) gath_offs[r] = reserve(L, &al, mul(L, BTc, ci64(L, row_floats(x))));
    }
  }
  for (int s = 0; s < fn->states.n; s++) {
    LLVMValueRef sz = mul(L, B, ci64(L, L->sig->states.v[in->state0 + s].numel));
    st_offs[s] = reserve(L, &al, sz);
    int j = fn->states.v[s].next >= 0 ? state_alias(L, fn->states.v[s].next) : -1;
    if (j >= 0 && j != s) st_tmp[s] = reserve(L, &al, sz);
  }
  {
    LLVMTypeRef pt = L->i64;
    LLVMValueRef bytes = mul(L, al.off, ci64(L, 4));
    LLVMValueRef sp = call_fn(L, "rt_cpu_alloc", L->ptr, &pt, 1, &bytes);
    LLVMBuildStore(bld, sp, scratch_slot);
    fail_with(L, LLVMBuildIsNull(bld, sp, ""), ABI_ERR_NOMEM);
    L->scratch = sp;
    LLVMValueRef wbytes = mul(L, alw.off, ci64(L, 4));
    LLVMValueRef wp = call_fn(L, "rt_cpu_alloc_uninit", L->ptr, &pt, 1, &wbytes);
    LLVMBuildStore(bld, wp, wscratch_slot);
    fail_with(L, LLVMBuildIsNull(bld, wp, ""), ABI_ERR_NOMEM);
    L->wscratch = wp;
  }
  /* Bases. */
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    NodeInfo *n = &L->ni[r];
    const IrNode *nd = &fn->nodes.v[r];
    switch (nd->op) {
    case IR_PARAM:
      n->base = ldp(L, L->a_params, in->param0 + nd->index);
      break;
    case IR_INPUT:
      n->base = ldp(L, L->a_inputs, nd->index);
      break;
    case IR_STATE:
      n->base = gepf(L, L->scratch, st_offs[nd->index]);
      break;
    case IR_RESHAPE:
      n->base = L->ni[nd->args[0]].base;
      break;
    case IR_RESULT:
      n->base = L->ni[nd->args[0]].outs ? L->ni[nd->args[0]].outs[nd->index] : NULL;
      break;
    case IR_CALL: {
      const Inst *child = &L->insts.v[in->layer_inst[nd->index]];
      for (int j = 0; j < child->fn->outputs.n; j++)
        n->outs[j] = gepf(L, L->scratch, call_offs[r][j]);
      for (int j = 0; j < nd->nargs; j++)
        if (cin_offs[r][j]) n->cins[j] = gepf(L, L->scratch, cin_offs[r][j]);
      n->base = n->outs[0];
      break;
    }
    default:
      if (offs[r]) n->base = gepf(L, L->scratch, offs[r]);
      if (wt_offs[r]) n->wt = gepf(L, L->wscratch, wt_offs[r]);
      if (gath_offs[r]) n->gath = gepf(L, L->scratch, gath_offs[r]);
      if (wr_offs[r]) n->wr = gepf(L, L->wscratch, wr_offs[r]);
    }
    if (!n->base && n->uses > 0) {
      diag_internal(L->de, "codegen", "node %d (%s) has no buffer", r, ir_op_info[nd->op].text);
      return -1;
    }
  }

  /* Phase 0: constants, and transposed weights for the GEMMs. */
  L->r_b = ci64(L, 0);
  L->r_tok = ci64(L, 0);
  L->r_tokc = ci64(L, 0);
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    NodeInfo *n = &L->ni[r];
    const IrNode *nd = &fn->nodes.v[r];
    if (n->cls == CLS_CONST && !is_alias_op(nd->op) && n->uses > 0) emit_row(L, r);
  }
  for (IrRef r = 0; r < fn->nodes.n; r++) {
    NodeInfo *n = &L->ni[r];
    if (n->gemm && n->uses > 0) {
      /* The weight is packed once per call for rt_cpu_sgemm_packed: W[N,K]
       * for W @ x (trans), W[K,N] for x @ W. */
      int tr = n->gemm == 'T';
      IrRef w = fn->nodes.v[r].args[tr ? 0 : 1];
      LLVMValueRef wb = L->ni[w].base;
      if (n->cgemm) {
        emit_complex_real_form(L, r);
        wb = n->wr;
      }
      LLVMBasicBlockRef pack = block(L, "pack"), packed = block(L, "packed");
      LLVMBuildCondBr(bld, L->packed, pack, packed);
      LLVMPositionBuilderAtEnd(bld, pack);
      LLVMTypeRef pt[6] = {L->i64, L->i64, L->ptr, L->i64, L->i32, L->ptr};
      LLVMValueRef args[6] = {ci64(L, n->gemm_k),
                              ci64(L, n->gemm_n),
                              wb,
                              ci64(L, tr ? n->gemm_k : n->gemm_n),
                              ci32(L, tr),
                              n->wt};
      call_fn(L, "rt_cpu_pack_b", L->void_t, pt, 6, args);
      LLVMBuildBr(bld, packed);
      LLVMPositionBuilderAtEnd(bld, packed);
    }
  }
  /* Outputs past a sequence's end are zero. */
  {
    LLVMBasicBlockRef z = block(L, "zero"), after = block(L, "zeroed");
    LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_lengths, ""), after, z);
    LLVMPositionBuilderAtEnd(bld, z);
    for (int o = 0; o < fn->outputs.n; o++) {
      int64_t ne;
      if (type_floats(L, in, fn->outputs.v[o].type, fn->outputs.v[o].loc, &ne)) return -1;
      LLVMValueRef dst = ldp(L, L->a_outputs, o);
      LLVMBuildMemSet(bld, dst, LLVMConstInt(LLVMInt8TypeInContext(L->cx), 0, 0),
                      mul(L, mul(L, BT, ci64(L, ne)), ci64(L, 4)), 4);
    }
    LLVMBuildBr(bld, after);
    LLVMPositionBuilderAtEnd(bld, after);
  }

  if (fn->kind == IR_FN_CELL && L->chunk_mode) {
    /* Chunks of Tc steps: the chunk's TOKEN rows (its share of the hoisted
     * input projections), then its steps, so those rows are read back from
     * cache rather than from a [B*T, ...] buffer in memory. */
    if (emit_state_init(L, in, st_offs)) return -1;
    Loop lc;
    LLVMValueRef nch =
        LLVMBuildSDiv(bld, add(L, T, LLVMBuildSub(bld, L->Tc, ci64(L, 1), "")), L->Tc, "");
    LLVMValueRef c = loop_begin(L, &lc, ci64(L, 0), nch);
    L->t0 = mul(L, c, L->Tc);
    LLVMValueRef rest = LLVMBuildSub(bld, T, L->t0, "");
    L->tn = LLVMBuildSelect(bld, LLVMBuildICmp(bld, LLVMIntSLT, rest, L->Tc, ""), rest, L->Tc, "");
    emit_phase(L, CLS_TOKEN, NULL);
    emit_token_outputs(L);
    Loop lt;
    LLVMValueRef t = loop_begin(L, &lt, L->t0, add(L, L->t0, L->tn));
    if (emit_step(L, in, t, st_offs, st_tmp)) return -1;
    loop_end(L, &lt);
    loop_end(L, &lc);
  } else {
    /* Phase 1: everything that depends on inputs but not on state. */
    emit_phase(L, CLS_TOKEN, NULL);
    emit_token_outputs(L);
    if (fn->kind == IR_FN_CELL) {
      if (emit_state_init(L, in, st_offs)) return -1;
      /* Phase 2: the time loop over the state-dependent nodes. */
      if (fn->states.n > 0) {
        Loop lt;
        LLVMValueRef t = loop_begin(L, &lt, ci64(L, 0), T);
        if (emit_step(L, in, t, st_offs, st_tmp)) return -1;
        loop_end(L, &lt);
      }
    }
  }

  if (fn->kind == IR_FN_CELL) {
    /* Final states. */
    for (int s = 0; s < fn->states.n; s++) {
      const AbiTensor *ct = &L->sig->states.v[in->state0 + s];
      LLVMBasicBlockRef check = block(L, "ocheck"), copy = block(L, "ocopy"),
                        next = block(L, "onext");
      LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, L->a_sout, ""), next, check);
      LLVMPositionBuilderAtEnd(bld, check);
      LLVMValueRef p = ldp(L, L->a_sout, in->state0 + s);
      LLVMBuildCondBr(bld, LLVMBuildIsNull(bld, p, ""), next, copy);
      LLVMPositionBuilderAtEnd(bld, copy);
      LLVMBuildMemCpy(bld, p, 4, gepf(L, L->scratch, st_offs[s]), 4,
                      mul(L, mul(L, B, ci64(L, ct->numel)), ci64(L, 4)));
      LLVMBuildBr(bld, next);
      LLVMPositionBuilderAtEnd(bld, next);
    }
  }
  LLVMBuildBr(bld, L->cleanup);
  LLVMPositionBuilderAtEnd(bld, L->cleanup);
  {
    LLVMTypeRef pt = L->ptr;
    LLVMValueRef sp = LLVMBuildLoad2(bld, L->ptr, scratch_slot, "");
    call_fn(L, "rt_cpu_free", L->void_t, &pt, 1, &sp);
    LLVMValueRef wp = LLVMBuildLoad2(bld, L->ptr, wscratch_slot, "");
    call_fn(L, "rt_cpu_free", L->void_t, &pt, 1, &wp);
    LLVMBuildRet(bld, LLVMBuildLoad2(bld, L->i32, L->status, ""));
  }
  return L->failed ? -1 : 0;
}

/* ---- entry points --------------------------------------------------------- */

/* Full-width vectors for the element loops: LLVM's default on recent AVX-512
 * cores is 256-bit, which halves the throughput of the gate math (sigmoid,
 * tanh, exp), a quarter of an LSTM step. Every function gets it, the entry
 * points too, since the instances are inlined into them. Targets without
 * 512-bit vectors ignore the preference. */
static void prefer_wide_vectors(Lower *L, LLVMValueRef f) {
  static const char key[] = "prefer-vector-width", val[] = "512";
  LLVMAddAttributeAtIndex(
      f, LLVMAttributeFunctionIndex,
      LLVMCreateStringAttribute(L->cx, key, sizeof key - 1, val, sizeof val - 1));
}

static LLVMValueRef add_entry(Lower *L, const char *name, LLVMTypeRef *pt, int np) {
  LLVMTypeRef ft = LLVMFunctionType(L->i32, pt, (unsigned)np, 0);
  LLVMValueRef f = LLVMAddFunction(L->mod, name, ft);
  prefer_wide_vectors(L, f);
  L->fv = f;
  LLVMPositionBuilderAtEnd(L->bld, block(L, "entry"));
  return f;
}

static void emit_entries(Lower *L, const char *sym) {
  LLVMTypeRef P = L->ptr, I = L->i64;
  LLVMValueRef root = L->insts.v[0].llfn;
  /* SYM_forward(params, B, T, inputs, lengths, state_in, outputs, state_out) */
  LLVMTypeRef fpt[8] = {P, I, I, P, P, P, P, P};
  LLVMValueRef f = add_entry(L, arena_printf(L->a, "%s_forward", sym), fpt, 8);
  {
    LLVMValueRef args[9];
    for (int i = 0; i < 8; i++) args[i] = LLVMGetParam(f, (unsigned)i);
    args[8] = ci32(L, 0);
    /* NULL params, inputs or outputs are argument errors, not crashes. */
    LLVMValueRef bad = LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, args[0], ""),
                                   LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, args[3], ""),
                                               LLVMBuildIsNull(L->bld, args[6], ""), ""),
                                   "");
    LLVMBasicBlockRef badb = block(L, "bad"), ok = block(L, "ok");
    LLVMBuildCondBr(L->bld, bad, badb, ok);
    LLVMPositionBuilderAtEnd(L->bld, badb);
    LLVMBuildRet(L->bld, ci32(L, ABI_ERR_ARG));
    LLVMPositionBuilderAtEnd(L->bld, ok);
    /* Every pointer inside the arrays must be non-NULL too. */
    struct {
      LLVMValueRef arr;
      int n;
    } checks[3] = {
        {args[0], L->sig->params.n}, {args[3], L->sig->inputs.n}, {args[6], L->sig->outputs.n}};
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < checks[c].n; i++) {
        LLVMBasicBlockRef b2 = block(L, "bad"), ok2 = block(L, "ok");
        LLVMBuildCondBr(L->bld, LLVMBuildIsNull(L->bld, ldp(L, checks[c].arr, i), ""), b2, ok2);
        LLVMPositionBuilderAtEnd(L->bld, b2);
        LLVMBuildRet(L->bld, ci32(L, ABI_ERR_ARG));
        LLVMPositionBuilderAtEnd(L->bld, ok2);
      }
    /* The root runs over slices of the batch, one per thread
     * (runtime/cpu_forward.c); layout gives the per-token and per-example
     * sizes of every buffer so the runtime can point into them. */
    int nin = L->sig->inputs.n, nst = L->sig->states.n, nout = L->sig->outputs.n;
    int nl = 4 + nin + nst + nout;
    LLVMValueRef *lv = arena_calloc(L->a, (size_t)nl, sizeof(LLVMValueRef));
    if (!lv) {
      L->failed = 1;
      return;
    }
    int k = 0;
    lv[k++] = ci64(L, nin);
    lv[k++] = ci64(L, nst);
    lv[k++] = ci64(L, nout);
    lv[k++] = ci64(L, L->work_per_token);
    for (int i = 0; i < nin; i++) lv[k++] = ci64(L, L->sig->inputs.v[i].numel);
    for (int i = 0; i < nst; i++) lv[k++] = ci64(L, L->sig->states.v[i].numel);
    for (int i = 0; i < nout; i++) lv[k++] = ci64(L, L->sig->outputs.v[i].numel);
    LLVMTypeRef lty = LLVMArrayType2(I, (uint64_t)nl);
    LLVMValueRef layout = LLVMAddGlobal(L->mod, lty, arena_printf(L->a, "%s.layout", sym));
    LLVMSetInitializer(layout, LLVMConstArray2(I, lv, (uint64_t)nl));
    LLVMSetGlobalConstant(layout, 1);
    LLVMSetLinkage(layout, LLVMPrivateLinkage);
    LLVMTypeRef bpt[10] = {P, P, P, I, I, P, P, P, P, P};
    LLVMValueRef bargs[10] = {root,    layout,  args[0], args[1], args[2],
                              args[3], args[4], args[5], args[6], args[7]};
    LLVMBuildRet(L->bld, call_fn(L, "rt_cpu_forward_batched", L->i32, bpt, 10, bargs));
  }
  LLVMTypeRef fwd_ty = LLVMFunctionType(L->i32, fpt, 8, 0);
  /* SYM_forward_blob(blob, blob_floats, B, T, inputs, lengths, state_in, outputs, state_out):
   * the parameters concatenated in flat order; the size is checked. */
  LLVMTypeRef bpt[9] = {P, I, I, I, P, P, P, P, P};
  LLVMValueRef fb = add_entry(L, arena_printf(L->a, "%s_forward_blob", sym), bpt, 9);
  {
    int64_t total = 0;
    for (int i = 0; i < L->sig->params.n; i++) total += L->sig->params.v[i].numel;
    LLVMValueRef blob = LLVMGetParam(fb, 0);
    LLVMValueRef bad =
        LLVMBuildOr(L->bld, LLVMBuildIsNull(L->bld, blob, ""),
                    LLVMBuildICmp(L->bld, LLVMIntNE, LLVMGetParam(fb, 1), ci64(L, total), ""), "");
    LLVMBasicBlockRef badb = block(L, "bad"), ok = block(L, "ok");
    LLVMBuildCondBr(L->bld, bad, badb, ok);
    LLVMPositionBuilderAtEnd(L->bld, badb);
    LLVMBuildRet(L->bld, ci32(L, ABI_ERR_ARG));
    LLVMPositionBuilderAtEnd(L->bld, ok);
    LLVMValueRef arr = LLVMBuildArrayAlloca(L->bld, P, ci64(L, L->sig->params.n + 1), "params");
    int64_t off = 0;
    for (int i = 0; i < L->sig->params.n; i++) {
      LLVMValueRef idx = ci64(L, i);
      LLVMBuildStore(L->bld, gepf(L, blob, ci64(L, off)),
                     LLVMBuildGEP2(L->bld, P, arr, &idx, 1, ""));
      off += L->sig->params.v[i].numel;
    }
    LLVMValueRef args[8] = {arr,
                            LLVMGetParam(fb, 2),
                            LLVMGetParam(fb, 3),
                            LLVMGetParam(fb, 4),
                            LLVMGetParam(fb, 5),
                            LLVMGetParam(fb, 6),
                            LLVMGetParam(fb, 7),
                            LLVMGetParam(fb, 8)};
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, f, args, 8, ""));
  }
  /* SYM_step(params, B, inputs, state_in, outputs, state_out): one token;
   * [B, 1, ...] and [B, ...] are the same buffers. */
  if (L->sig->has_step) {
    LLVMTypeRef spt[6] = {P, I, P, P, P, P};
    LLVMValueRef fs = add_entry(L, arena_printf(L->a, "%s_step", sym), spt, 6);
    LLVMValueRef args[8] = {LLVMGetParam(fs, 0), LLVMGetParam(fs, 1), ci64(L, 1),
                            LLVMGetParam(fs, 2), LLVMConstNull(P),    LLVMGetParam(fs, 3),
                            LLVMGetParam(fs, 4), LLVMGetParam(fs, 5)};
    LLVMBuildRet(L->bld, LLVMBuildCall2(L->bld, fwd_ty, f, args, 8, ""));
  }
  /* SYM_dims(int64 *out): the dims compiled in, in the root's order. */
  LLVMValueRef fd = add_entry(L, arena_printf(L->a, "%s_dims", sym), &P, 1);
  {
    LLVMValueRef out = LLVMGetParam(fd, 0);
    LLVMBasicBlockRef w = block(L, "write"), done = block(L, "done");
    LLVMBuildCondBr(L->bld, LLVMBuildIsNull(L->bld, out, ""), done, w);
    LLVMPositionBuilderAtEnd(L->bld, w);
    for (int i = 0; i < L->sig->ndims; i++) {
      LLVMValueRef idx = ci64(L, i);
      LLVMBuildStore(L->bld, ci64(L, L->sig->dim_values[i]),
                     LLVMBuildGEP2(L->bld, I, out, &idx, 1, ""));
    }
    LLVMBuildBr(L->bld, done);
    LLVMPositionBuilderAtEnd(L->bld, done);
    LLVMBuildRet(L->bld, ci32(L, L->sig->ndims));
  }
}

/* Whether the root needs the whole sequence at once (so has no step form). */
static int needs_whole_sequence(Lower *L) {
  for (int i = 0; i < L->insts.n; i++) {
    const IrFunc *fn = L->insts.v[i].fn;
    for (int r = 0; r < fn->nodes.n; r++)
      if (fn->nodes.v[r].op == IR_CAUSAL_CONV) return 1;
    /* A reversed layer reads the sequence from its end: no step form. */
    for (int k = 0; k < fn->layers.n; k++)
      if (fn->layers.v[k].reverse) return 1;
  }
  return 0;
}


int cg_lower(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *dims,
             const char *symbol, LLVMContextRef ctx, LLVMModuleRef *out, AbiSignature *sig,
             DiagEngine *de) {
  *out = NULL;
  memset(sig, 0, sizeof *sig);
  Lower L = {0};
  L.a = a;
  L.m = m;
  L.de = de;
  L.cx = ctx;
  L.sig = sig;
  sig->func = root->name;
  sig->symbol = symbol;
  sig->ndims = root->dims.n;
  sig->dim_names = arena_calloc(a, (size_t)root->dims.n + 1, sizeof(char *));
  sig->dim_values = arena_calloc(a, (size_t)root->dims.n + 1, sizeof(int64_t));
  if (!sig->dim_names || !sig->dim_values) return -1;
  for (int i = 0; i < root->dims.n; i++) {
    if (dims[i] < 0) {
      diag_error(de, root->dims.v[i].loc, "dimension %s has no value", root->dims.v[i].name);
      return -1;
    }
    sig->dim_names[i] = root->dims.v[i].name;
    sig->dim_values[i] = dims[i];
  }
  if (flatten(&L, root, dims, "", "", "", 0)) return -1;
  Inst *rin = &L.insts.v[0];
  for (int i = 0; i < root->inputs.n; i++) {
    AbiTensor t = {0};
    t.name = root->inputs.v[i].name;
    t.is_int = root->inputs.v[i].type.elem == IR_INT;
    if (interface_type(&L, rin, root->inputs.v[i].type, root->inputs.v[i].loc, &t) ||
        vec_push(a, &sig->inputs, t))
      return -1;
  }
  for (int i = 0; i < root->outputs.n; i++) {
    AbiTensor t = {0};
    t.name = root->outputs.v[i].name;
    if (root->outputs.v[i].type.elem == IR_INT) {
      unsupported(&L, root->outputs.v[i].loc, "integer outputs");
      return -1;
    }
    if (interface_type(&L, rin, root->outputs.v[i].type, root->outputs.v[i].loc, &t) ||
        vec_push(a, &sig->outputs, t))
      return -1;
  }
  sig->has_step = !needs_whole_sequence(&L);

  L.mod = LLVMModuleCreateWithNameInContext(symbol, ctx);
  L.bld = LLVMCreateBuilderInContext(ctx);
  L.f32 = LLVMFloatTypeInContext(ctx);
  L.i32 = LLVMInt32TypeInContext(ctx);
  L.i64 = LLVMInt64TypeInContext(ctx);
  L.i1 = LLVMInt1TypeInContext(ctx);
  L.ptr = LLVMPointerTypeInContext(ctx, 0);
  L.void_t = LLVMVoidTypeInContext(ctx);
  LLVMTypeRef pt[9] = {L.ptr, L.i64, L.i64, L.ptr, L.ptr, L.ptr, L.ptr, L.ptr, L.i32};
  L.inst_ty = LLVMFunctionType(L.i32, pt, 9, 0);
  LLVMValueRef zero = LLVMAddGlobal(L.mod, L.i32, "seq.zero_i32");
  LLVMSetInitializer(zero, ci32(&L, 0));
  LLVMSetGlobalConstant(zero, 1);
  LLVMSetLinkage(zero, LLVMPrivateLinkage);
  for (int i = 0; i < L.insts.n; i++) {
    Inst *in = &L.insts.v[i];
    in->llfn =
        LLVMAddFunction(L.mod, arena_printf(a, "%s.%d.%s", symbol, i, in->fn->name), L.inst_ty);
    LLVMSetLinkage(in->llfn, LLVMInternalLinkage);
    prefer_wide_vectors(&L, in->llfn);
  }
  int rc = 0;
  for (int i = 0; i < L.insts.n && rc == 0; i++) rc = emit_function(&L, &L.insts.v[i]);
  if (rc == 0 && !L.failed) emit_entries(&L, symbol);
  LLVMDisposeBuilder(L.bld);
  if (rc != 0 || L.failed) {
    LLVMDisposeModule(L.mod);
    return -1;
  }
  *out = L.mod;
  return 0;
}

const char *cg_c_identifier(Arena *a, const char *name) {
  size_t n = strlen(name);
  char *s = arena_alloc(a, n + 2);
  if (!s) return NULL;
  size_t j = 0;
  if (n == 0 || (name[0] >= '0' && name[0] <= '9')) s[j++] = '_';
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) c = '_';
    s[j++] = c;
  }
  s[j] = 0;
  return s;
}
