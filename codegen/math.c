/* math.c - the op table as LLVM expressions: float32 exp, sigmoid, tanh and
 * the other elementwise functions, written to vectorize and to agree with the
 * interpreter at the edges (NaN, infinities), and complex arithmetic on
 * (re, im) pairs. */
#include "codegen/llvm.h"

#include <math.h>

/* a * b + c, fused where the target has FMA (llvm.fmuladd: one instruction
 * there, a multiply and an add elsewhere), of floats, doubles or vectors of
 * them. Used inside the approximations below, whose error it does not
 * change beyond an ulp, and where the order of a chain matters
 * (codegen/scan.c, scan_next). */
LLVMValueRef fmuladd(Lower *L, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
  LLVMValueRef args[3] = {a, b, c};
  return intrinsic(L, "llvm.fmuladd", args, 3);
}

/* x clamped to [lo, hi], a NaN x left NaN: one vmaxps and one vminps on
 * x86 (whose operand order keeps the NaN), where llvm.maxnum/minnum would
 * cost three instructions each for their NaN rule. */
static LLVMValueRef clamp(Lower *L, LLVMValueRef x, double lo, double hi) {
  LLVMBuilderRef b = L->bld;
  x = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, cf(L, lo), ""), cf(L, lo), x, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, x, cf(L, hi), ""), cf(L, hi), x, "");
}

/* exp(x) in float32, vectorizable, with no selects for its edges.
 *   - Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and e^r by a
 *     polynomial of degree 6 in Horner form (fused multiply-adds), fitted
 *     for relative error (Lawson's iteration on Chebyshev nodes: 3.1e-9,
 *     0.05 ulp, before rounding); the result is within 1 ulp of libm's.
 *     The first two coefficients are exactly 1, so exp(0) is exactly 1.
 *   - n is rounded by the adder: t = x log2(e) + (1.5 * 2^23 + 126) holds
 *     n + 126 in its low mantissa bits, so t minus that constant is n, and
 *     t's bits shifted left by 23 are the float 2^(n - 1).
 *   - The result is (2 e^r) 2^(n - 1): the polynomial's coefficients carry
 *     the 2, so 2^(n - 1) is a normal float up to n = 128 and the product
 *     overflows to +inf where exp does (x > 88.72), with x clamped to 89.
 *   - Below, x is clamped to -87.5, where n = -126 makes the exponent bits
 *     0, so 2^(n - 1) is 0 and so is the result: exp flushes what it
 *     returns under 2.4e-38 (subnormal or nearly) to 0, as exp(-inf) = 0.
 *   - A NaN passes the clamp and every step, and the product is NaN.
 * 14 instructions per vector on x86 with FMA, and no branch or select. */
LLVMValueRef emit_exp(Lower *L, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  const double magic = 12582912.0 + 126.0;
  x = clamp(L, x, -87.5, 89.0);
  LLVMValueRef t = fmuladd(L, x, cf(L, 1.44269504088896341), cf(L, magic));
  LLVMValueRef n = LLVMBuildFSub(b, t, cf(L, magic), "");
  LLVMValueRef r = fmuladd(L, n, cf(L, -0.693359375), x);
  r = fmuladd(L, n, cf(L, 2.12194440e-4), r);
  /* 2 e^r, highest degree first */
  static const double c[] = {0.00138143973890692,
                             0.008368813432753086,
                             0.041668396443128586,
                             0.1666651964187622,
                             0.4999999403953552,
                             1.0,
                             1.0};
  LLVMValueRef p = cf(L, 2 * c[0]);
  for (int i = 1; i < 7; i++) p = fmuladd(L, p, r, cf(L, 2 * c[i]));
  LLVMValueRef bits = LLVMBuildShl(b, LLVMBuildBitCast(b, t, et(L, L->i32), ""), ei32(L, 23), "");
  return LLVMBuildFMul(b, p, LLVMBuildBitCast(b, bits, et(L, L->f32), ""), "");
}

/* log(x) in float32, vectorizable (llvm.log is a libm call per element,
 * which kept a whole loop scalar): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 * log(m) = f - f^2/2 + f^3 P(f) for f = m - 1 (Cephes logf coefficients,
 * Horner form), e ln2 added in two parts (Cody-Waite). Subnormals are scaled
 * by 2^23 first. About 1 ulp; the edges as libm: log(0) = -inf, log(+inf) =
 * +inf, NaN for x < 0 and for NaN. */
static LLVMValueRef emit_log(Lower *L, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  LLVMValueRef tiny = LLVMBuildFCmp(b, LLVMRealOLT, x, cf(L, 1.17549435e-38), "");
  LLVMValueRef xs = LLVMBuildSelect(b, tiny, LLVMBuildFMul(b, x, cf(L, 8388608.0), ""), x, "");
  LLVMValueRef bits = LLVMBuildBitCast(b, xs, et(L, L->i32), "");
  /* e: the exponent for a mantissa in [1/2, 1). */
  LLVMValueRef e = LLVMBuildSub(b, LLVMBuildLShr(b, bits, ei32(L, 23), ""), ei32(L, 126), "");
  e = LLVMBuildSub(b, e, LLVMBuildSelect(b, tiny, ei32(L, 23), ei32(L, 0), ""), "");
  LLVMValueRef mbits =
      LLVMBuildOr(b, LLVMBuildAnd(b, bits, ei32(L, 0x007fffff), ""), ei32(L, 0x3f000000), "");
  LLVMValueRef m = LLVMBuildBitCast(b, mbits, et(L, L->f32), "");
  /* m < sqrt(1/2): use 2m and e - 1, so that f = m - 1 is in [-0.29, 0.41). */
  LLVMValueRef lo = LLVMBuildFCmp(b, LLVMRealOLT, m, cf(L, 0.707106781186547524), "");
  e = LLVMBuildSub(b, e, LLVMBuildZExt(b, lo, et(L, L->i32), ""), "");
  LLVMValueRef f =
      LLVMBuildFSub(b, LLVMBuildSelect(b, lo, LLVMBuildFAdd(b, m, m, ""), m, ""), cf(L, 1.0), "");
  static const double c[] = {7.0376836292E-2,  -1.1514610310E-1, 1.1676998740E-1,
                             -1.2420140846E-1, 1.4249322787E-1,  -1.6668057665E-1,
                             2.0000714765E-1,  -2.4999993993E-1, 3.3333331174E-1};
  LLVMValueRef p = cf(L, c[0]);
  for (int i = 1; i < 9; i++) p = fmuladd(L, p, f, cf(L, c[i]));
  LLVMValueRef f2 = LLVMBuildFMul(b, f, f, "");
  LLVMValueRef ef = LLVMBuildSIToFP(b, e, et(L, L->f32), "");
  LLVMValueRef y = LLVMBuildFMul(b, LLVMBuildFMul(b, p, f, ""), f2, "");
  y = fmuladd(L, ef, cf(L, -2.12194440e-4), y);
  y = fmuladd(L, f2, cf(L, -0.5), y);
  LLVMValueRef r = fmuladd(L, ef, cf(L, 0.693359375), LLVMBuildFAdd(b, f, y, ""));
  r = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, cf(L, 0.0), ""), cf(L, -INFINITY), r, "");
  r = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, cf(L, INFINITY), ""), cf(L, INFINITY), r,
                      "");
  r = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, cf(L, 0.0), ""), cf(L, NAN), r, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, r, "");
}

/* sin(x) (cos_shift 0) or cos(x) (1) in float32, vectorizable (llvm.sin
 * and llvm.cos are a libm call per element, which kept a whole loop
 * scalar: RetNet's rotations). x = n pi/2 + r with |r| <= pi/4, reduced in
 * double: n rounded by the adder (t = x 2/pi + 1.5 * 2^52 holds n in its
 * low bits, so the quadrant is t's two lowest bits), r = x - n pi/2 with
 * pi/2 in two parts, the first of 33 bits so that n times it is exact in
 * double for |x| up to about 10^6 (beyond, r loses accuracy as n grows) and
 * x minus it exact too (fused or not, so no libm fma is ever called).
 * Then sin r or cos r by a polynomial in float (Cephes sinf and cosf
 * coefficients, about 1 ulp on |r| <= pi/4), chosen and signed by the
 * quadrant, plus one for cos: cos x = sin(x + pi/2). sin(-0) = -0;
 * infinities and NaN give NaN. */
static LLVMValueRef emit_sincos(Lower *L, LLVMValueRef x, int cos_shift) {
  LLVMBuilderRef b = L->bld;
  LLVMTypeRef f64 = et(L, LLVMDoubleTypeInContext(L->cx)), i64 = et(L, L->i64);
  const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
  LLVMValueRef xd = LLVMBuildFPExt(b, x, f64, "");
  LLVMValueRef t = fmuladd(L, xd, ef64(L, 0.63661977236758134308), ef64(L, magic));
  LLVMValueRef nn = LLVMBuildFSub(b, ef64(L, magic), t, ""); /* -n */
  LLVMValueRef rd = fmuladd(L, nn, ef64(L, 1.57079632673412561417e+00), xd);
  rd = fmuladd(L, nn, ef64(L, 6.07710050650619224932e-11), rd);
  LLVMValueRef r = LLVMBuildFPTrunc(b, rd, et(L, L->f32), "");
  LLVMValueRef q = LLVMBuildAdd(b, LLVMBuildBitCast(b, t, i64, ""), ei64(L, cos_shift), "");
  q = LLVMBuildTrunc(b, LLVMBuildAnd(b, q, ei64(L, 3), ""), et(L, L->i32), "");
  LLVMValueRef z = LLVMBuildFMul(b, r, r, "");
  /* sin r = r + r z (S1 + z (S2 + z S3)) */
  LLVMValueRef ps = fmuladd(L, fmuladd(L, cf(L, -1.9515295891E-4), z, cf(L, 8.3321608736E-3)), z,
                            cf(L, -1.6666654611E-1));
  LLVMValueRef sn = fmuladd(L, LLVMBuildFMul(b, r, z, ""), ps, r);
  /* cos r = 1 - z/2 + z^2 (C1 + z (C2 + z C3)) */
  LLVMValueRef pc =
      fmuladd(L, fmuladd(L, cf(L, 2.443315711809948E-5), z, cf(L, -1.388731625493765E-3)), z,
              cf(L, 4.166664568298827E-2));
  LLVMValueRef cs =
      fmuladd(L, LLVMBuildFMul(b, z, z, ""), pc, fmuladd(L, z, cf(L, -0.5), cf(L, 1.0)));
  LLVMValueRef odd =
      LLVMBuildICmp(b, LLVMIntNE, LLVMBuildAnd(b, q, ei32(L, 1), ""), ei32(L, 0), "");
  LLVMValueRef neg =
      LLVMBuildICmp(b, LLVMIntNE, LLVMBuildAnd(b, q, ei32(L, 2), ""), ei32(L, 0), "");
  LLVMValueRef v = LLVMBuildSelect(b, odd, cs, sn, "");
  v = LLVMBuildSelect(b, neg, LLVMBuildFNeg(b, v, ""), v, "");
  /* sin(-0) = -0 (the polynomial adds a +0 to it). */
  if (!cos_shift)
    v = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, cf(L, 0.0), ""), x, v, "");
  return v;
}

/* erf(x) in float32, vectorizable (libm's erff is a call per element, which
 * kept every loop with a GELU scalar: a map of GELUs ran 6x slower than one
 * of tanh). Two polynomials, both computed and one selected:
 *   - |x| <= 1: x + x P(x^2), P of degree 6 fitted (least squares on
 *     Chebyshev nodes, reweighted toward the largest errors) to
 *     erf(x) / x - 1: relative error 1.2e-9 in exact arithmetic;
 *   - |x| > 1: 1 - exp(-x^2) Q(|x| - 2.5), Q of degree 10 fitted the same
 *     way to erfc(x) exp(x^2) on [1, 4]: relative error 1.5e-7, which
 *     erfc's size (0.16 at 1) makes under 3e-8 of the result; |x| is
 *     clamped to 4 (erf rounds to 1 from 3.92), the sign of x copied.
 * About 1 ulp in float32 with fused multiply-adds (a simulation over
 * [-5, 5] and tiny arguments; test_jit bounds GELU against float64, 3 ulps
 * where 1 + erf does not cancel); erf(+-inf) = +-1, erf(-0) = -0, NaN for
 * NaN. */
static LLVMValueRef emit_erf(Lower *L, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  static const double p[] = {0.12837916572667620,   -0.37612625823996143,  0.11283585145922018,
                             -0.026853811822595280, 0.0051883274714940950, -0.00080101917423362380,
                             7.8538551343093570e-05};
  static const double q[] = {
      0.21080636961114910,     -0.074347576661650930,   0.024937926205938644,
      -0.0079994930396024980,  0.0024669917558789653,   -0.00073875759945512020,
      0.00021169513454054963,  -5.3729774071622244e-05, 1.5010381521977470e-05,
      -6.3573827264622360e-06, 1.5539113704724394e-06};
  LLVMValueRef x2 = LLVMBuildFMul(b, x, x, "");
  LLVMValueRef pa = cf(L, p[6]);
  for (int i = 5; i >= 0; i--) pa = fmuladd(L, pa, x2, cf(L, p[i]));
  LLVMValueRef small = fmuladd(L, x, pa, x);
  LLVMValueRef ax = intr1(L, "llvm.fabs", x);
  LLVMValueRef a4 = clamp(L, ax, 0.0, 4.0);
  LLVMValueRef sq = LLVMBuildFSub(b, a4, cf(L, 2.5), "");
  LLVMValueRef qb = cf(L, q[10]);
  for (int i = 9; i >= 0; i--) qb = fmuladd(L, qb, sq, cf(L, q[i]));
  LLVMValueRef e = emit_exp(L, LLVMBuildFNeg(b, LLVMBuildFMul(b, a4, a4, ""), ""));
  LLVMValueRef big = fmuladd(L, LLVMBuildFNeg(b, e, ""), qb, cf(L, 1.0));
  big = intr2(L, "llvm.copysign", big, x);
  /* NaN fails the test and takes the second form, which keeps it. */
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLE, ax, cf(L, 1.0), ""), small, big, "");
}

static LLVMValueRef emit_sigmoid(Lower *L, LLVMValueRef x) {
  LLVMValueRef e = emit_exp(L, LLVMBuildFNeg(L->bld, x, ""));
  return LLVMBuildFDiv(L->bld, cf(L, 1.0), LLVMBuildFAdd(L->bld, cf(L, 1.0), e, ""), "");
}

/* log(1 + exp(-|x|)): the tail shared by softplus and logsigmoid. */
static LLVMValueRef emit_log1pexp_neg_abs(Lower *L, LLVMValueRef x) {
  LLVMValueRef e = emit_exp(L, LLVMBuildFNeg(L->bld, intr1(L, "llvm.fabs", x), ""));
  return emit_log(L, LLVMBuildFAdd(L->bld, cf(L, 1.0), e, ""));
}

LLVMValueRef emit_unary(Lower *L, IrOp op, LLVMValueRef x) {
  LLVMBuilderRef b = L->bld;
  switch (op) {
  case IR_NEG:
    return LLVMBuildFNeg(b, x, "");
  case IR_EXP:
    return emit_exp(L, x);
  case IR_LOG:
    return emit_log(L, x);
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
    LLVMValueRef erf = emit_erf(L, LLVMBuildFMul(b, x, cf(L, 0.70710678118654752), ""));
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
    return emit_sincos(L, x, 0);
  case IR_COS:
    return emit_sincos(L, x, 1);
  case IR_BROADCAST:
    return x;
  default:
    return NULL;
  }
}

LLVMValueRef emit_binary(Lower *L, IrOp op, LLVMValueRef x, LLVMValueRef y) {
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
  /* Ordered comparisons: false (0) when either is NaN. */
  case IR_LT:
  case IR_LE:
    return LLVMBuildUIToFP(b, LLVMBuildFCmp(b, op == IR_LT ? LLVMRealOLT : LLVMRealOLE, x, y, ""),
                           et(L, L->f32), "");
  default:
    return NULL;
  }
}

/* ---- complex numbers ------------------------------------------------------
 * A complex value is stored as interleaved (re, im) float pairs, the layout
 * the interpreter and the ABI use (a trailing axis of 2). Arithmetic is the
 * textbook formulas, as in the interpreter, but for a real operand (cx_is_real),
 * which takes part as a real number, not as (x, 0). */

/* A real operand of a complex op comes as (x, 0) with the 0 a constant
 * (fused_operand, ldc): it takes part as a real number, as in the
 * interpreter (C's Annex G): (a + bi) x = (a x, b x), (a + bi) + x =
 * (a + x, b), two multiplies or one add fewer than on (x, 0). */
int cx_is_real(Cx x) {
  return x.im && LLVMIsConstant(x.im) && LLVMIsNull(x.im); /* +0, or a vector of them */
}

Cx cx_mul(Lower *L, Cx x, Cx y) {
  if (cx_is_real(x)) return (Cx){fmul(L, x.re, y.re), fmul(L, x.re, y.im)};
  if (cx_is_real(y)) return (Cx){fmul(L, x.re, y.re), fmul(L, x.im, y.re)};
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
Cx cx_op(Lower *L, IrOp op, Cx x, Cx y) {
  LLVMBuilderRef b = L->bld;
  switch (op) {
  case IR_NEG:
    return (Cx){LLVMBuildFNeg(b, x.re, ""), LLVMBuildFNeg(b, x.im, "")};
  case IR_EXP: {
    LLVMValueRef e = emit_exp(L, x.re);
    return (Cx){fmul(L, e, emit_sincos(L, x.im, 1)), fmul(L, e, emit_sincos(L, x.im, 0))};
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
    return (Cx){fadd(L, x.re, y.re), cx_is_real(x)   ? y.im
                                     : cx_is_real(y) ? x.im
                                                     : fadd(L, x.im, y.im)};
  case IR_SUB:
    return (Cx){fsub(L, x.re, y.re), cx_is_real(x)   ? LLVMBuildFNeg(b, y.im, "")
                                     : cx_is_real(y) ? x.im
                                                     : fsub(L, x.im, y.im)};
  case IR_MUL:
    return cx_mul(L, x, y);
  case IR_DIV: {
    if (cx_is_real(y))
      return (Cx){LLVMBuildFDiv(b, x.re, y.re, ""), LLVMBuildFDiv(b, x.im, y.re, "")};
    LLVMValueRef den = fadd(L, fmul(L, y.re, y.re), fmul(L, y.im, y.im));
    LLVMValueRef re = fadd(L, fmul(L, x.re, y.re), fmul(L, x.im, y.im));
    LLVMValueRef im = fsub(L, fmul(L, x.im, y.re), fmul(L, x.re, y.im));
    return (Cx){LLVMBuildFDiv(b, re, den, ""), LLVMBuildFDiv(b, im, den, "")};
  }
  default: /* refused by the schedule (sched_complex_op_ok) */
    return x;
  }
}

/* Element `idx` of a buffer holding w floats per element, as a complex. */
Cx ldc(Lower *L, LLVMValueRef p, LLVMValueRef idx, int w) {
  if (w == 1) return (Cx){ldf(L, p, idx), cf(L, 0.0)};
  LLVMValueRef at = mul(L, idx, ci64(L, 2));
  return (Cx){ldf(L, p, at), ldf(L, p, add(L, at, ci64(L, 1)))};
}
void stc(Lower *L, Cx v, LLVMValueRef p, LLVMValueRef idx, int w) {
  if (w == 1) {
    stf(L, v.re, p, idx);
    return;
  }
  LLVMValueRef at = mul(L, idx, ci64(L, 2));
  stf(L, v.re, p, at);
  stf(L, v.im, p, add(L, at, ci64(L, 1)));
}
