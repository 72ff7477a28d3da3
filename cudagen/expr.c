/* expr.c - the op table as C expressions: one case per elementwise op, for
 * real operands and for (re, im) pairs. The functions named seq_* are the
 * prelude's (prelude.c). */
#include "cudagen/cu.h"

static const char *p(Cu *c, const char *fmt, const char *a, const char *b) {
  return arena_printf(c->a, fmt, a, b ? b : "");
}

static const char *unary(Cu *c, IrOp op, const char *x) {
  switch (op) {
  case IR_NEG:
    return p(c, "(-%s)", x, NULL);
  case IR_EXP:
    return p(c, "expf(%s)", x, NULL);
  case IR_LOG:
    return p(c, "logf(%s)", x, NULL);
  case IR_TANH:
    return p(c, "seq_tanh(%s)", x, NULL);
  case IR_SIGMOID:
    return p(c, "seq_sigmoid(%s)", x, NULL);
  case IR_LOGSIGMOID:
    return p(c, "seq_logsigmoid(%s)", x, NULL);
  case IR_SOFTPLUS:
    return p(c, "seq_softplus(%s)", x, NULL);
  case IR_RELU:
    return p(c, "seq_relu(%s)", x, NULL);
  case IR_SILU:
    return p(c, "(%s * seq_sigmoid(%s))", x, x);
  case IR_GELU:
    return p(c, "seq_gelu(%s)", x, NULL);
  case IR_SQRT:
    return p(c, "sqrtf(%s)", x, NULL);
  case IR_RSQRT:
    return p(c, "(1.0f / sqrtf(%s))", x, NULL);
  case IR_ABS:
    return p(c, "fabsf(%s)", x, NULL);
  case IR_SIN:
    return p(c, "sinf(%s)", x, NULL);
  case IR_COS:
    return p(c, "cosf(%s)", x, NULL);
  case IR_BROADCAST:
  case IR_RE:
  case IR_RESHAPE:
    return x;
  case IR_IM:
    return "0.0f";
  case IR_CONJ:
    return x;
  default:
    return NULL;
  }
}

static const char *binary(Cu *c, IrOp op, const char *x, const char *y) {
  switch (op) {
  case IR_ADD:
    return p(c, "(%s + %s)", x, y);
  case IR_SUB:
    return p(c, "(%s - %s)", x, y);
  case IR_MUL:
    return p(c, "(%s * %s)", x, y);
  case IR_DIV:
    return p(c, "(%s / %s)", x, y);
  case IR_MIN:
    return p(c, "seq_min(%s, %s)", x, y);
  case IR_MAX:
    return p(c, "seq_max(%s, %s)", x, y);
  case IR_POW:
    return p(c, "powf(%s, %s)", x, y);
  case IR_LT:
    return p(c, "((%s) < (%s) ? 1.0f : 0.0f)", x, y);
  case IR_LE:
    return p(c, "((%s) <= (%s) ? 1.0f : 0.0f)", x, y);
  case IR_CPLX:
    return x;
  default:
    return NULL;
  }
}

static const char *q4(Cu *c, const char *f, const char *a, const char *ai, const char *b,
                      const char *bi) {
  return arena_printf(c->a, "%s(%s, %s, %s, %s)", f, a, ai, b, bi);
}

const char *cu_op_expr(Cu *c, IrOp op, const char *a, const char *ai, const char *b, const char *bi,
                       int cplx, const char **out_im) {
  *out_im = NULL;
  if (!cplx) {
    const char *r = b ? binary(c, op, a, b) : unary(c, op, a);
    if (!r) c->failed = 1;
    return r ? r : "0.0f";
  }
  /* A real operand (no imaginary part) takes part as a real number, as in
   * the interpreter: (a + bi) x = (a x, b x), (a + bi) + x = (a + x, b). */
  int a_real = !ai, b_real = b && !bi;
  if (!ai) ai = "0.0f";
  if (b && !bi) bi = "0.0f";
  const char *re = NULL, *im = NULL;
  switch (op) {
  case IR_NEG:
    re = p(c, "(-%s)", a, NULL);
    im = p(c, "(-%s)", ai, NULL);
    break;
  case IR_EXP:
    re = arena_printf(c->a, "(expf(%s) * cosf(%s))", a, ai);
    im = arena_printf(c->a, "(expf(%s) * sinf(%s))", a, ai);
    break;
  case IR_LOG:
    re = arena_printf(c->a, "logf(hypotf(%s, %s))", a, ai);
    im = arena_printf(c->a, "atan2f(%s, %s)", ai, a);
    break;
  case IR_ABS:
    re = arena_printf(c->a, "hypotf(%s, %s)", a, ai);
    break;
  case IR_CONJ:
    re = a;
    im = p(c, "(-%s)", ai, NULL);
    break;
  case IR_RE:
    re = a;
    break;
  case IR_IM:
    re = ai;
    break;
  case IR_BROADCAST:
  case IR_RESHAPE:
    re = a;
    im = ai;
    break;
  case IR_CPLX:
    re = a;
    im = b;
    break;
  case IR_ADD:
    re = p(c, "(%s + %s)", a, b);
    im = a_real ? bi : b_real ? ai : p(c, "(%s + %s)", ai, bi);
    break;
  case IR_SUB:
    re = p(c, "(%s - %s)", a, b);
    im = a_real ? p(c, "(-%s)", bi, NULL) : b_real ? ai : p(c, "(%s - %s)", ai, bi);
    break;
  case IR_MUL:
    if (a_real || b_real) {
      re = p(c, "(%s * %s)", a, b);
      im = a_real ? p(c, "(%s * %s)", a, bi) : p(c, "(%s * %s)", ai, b);
      break;
    }
    re = q4(c, "seq_cmul_re", a, ai, b, bi);
    im = q4(c, "seq_cmul_im", a, ai, b, bi);
    break;
  case IR_DIV:
    if (b_real) {
      re = p(c, "(%s / %s)", a, b);
      im = p(c, "(%s / %s)", ai, b);
      break;
    }
    re = q4(c, "seq_cdiv_re", a, ai, b, bi);
    im = q4(c, "seq_cdiv_im", a, ai, b, bi);
    break;
  default:
    c->failed = 1;
    return "0.0f";
  }
  *out_im = im ? im : "0.0f";
  return re;
}
