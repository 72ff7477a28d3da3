/* interp.c - the reference interpreter: the oracle every compiled and
 * parallelized form is tested against.
 *
 * It runs each example of the batch on its own. A cell runs step by step; a
 * model runs node by node, each node over the whole sequence (a CALL node runs
 * its layer's instance over the sequence, which is how layers compose). Values
 * are double arrays in C order (complex: interleaved re, im); in float32 mode
 * every op's result is rounded to float, so the oracle rounds where float32
 * code would, while reductions and matrix products still accumulate in double.
 *
 * Before running, the instance tree is built once: per instance its concrete
 * dims, the concrete shape and buffer of every node, and the flat index of
 * every parameter and state (from ir_flatten's instance tree).
 * Nodes that depend on no input, state or call ("invariant": weights, dims,
 * constants and everything computed from them only) are evaluated once;
 * the others per step (cells) or per position (models).
 */
#include "ir/interp.h"

#include <complex.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Values ----------------------------------------------------------------- */

/* A view of one per-example value: concrete shape and storage. */
typedef struct Val {
  int rank;
  int64_t shape[SEQ_MAX_RANK];
  int cplx;
  int64_t n; /* elements; a complex element is two doubles */
  double *d;
} Val;

static int64_t val_width(const Val *v) {
  return v->cplx ? 2 * v->n : v->n;
}

/* Per node of an instance. */
typedef struct Slot {
  Val v;               /* shape; v.d is position 0 of the value */
  int64_t stride;      /* models: doubles between positions (0: the same at every position) */
  int live;            /* needed by an output, a state or a call */
  int varying;         /* depends on an input, a state or a call */
  int per_seq;         /* models: varying, but the same at every position (a context, a layer
                          run over one, what reads only those and invariants): one position */
  Val *argv;           /* scratch views of the operands */
  double **outs;       /* CALL: one T-position buffer per callee output (outs[0] == v.d) */
  double *aux;         /* RMSNORM, LAYERNORM: weight and bias broadcast to x's shape */
  struct Seq *seqargs; /* CALL: the operands as sequences */
} Slot;

/* A sequence handed to an instance: position t is at d + t*stride. */
typedef struct Seq {
  double *d;
  int64_t stride;
} Seq;

typedef struct Inst Inst;
struct Inst {
  const IrFunc *fn;
  const int64_t *dims;
  Slot *slot;
  int *param_flat;  /* local param -> index into binding flat.params */
  int *state_flat;  /* local state -> index into binding flat.states */
  Val *state_val;   /* cells: per state, shape and current value */
  Inst **child;     /* models: per layer */
  int *called;      /* models: per layer, whether some CALL node runs it */
  Seq *no_inputs;   /* for running an uncalled layer over zero steps */
  Seq *rev_inputs;  /* reversed models: their inputs, reversed within the length */
  double **out_seq; /* per output: T positions of its width */
  int64_t *out_width;
  int64_t T; /* positions it runs over: the call's T, or a layer run over a
                context's positions (IrLayer.over) its N */
};

typedef struct Run {
  const IrBinding *bind;
  Arena *arena;
  DiagEngine *de;
  int f64;
  int64_t T;
  int64_t b, t; /* where we are, for run-time error messages */
  const RtTensor *state_in;
  RtTensor *state_out;
  InterpNewtonStats *newton; /* NULL: not counted */
} Run;

#define MAX_DEPTH 64 /* nesting of layers; deeper trees are refused */

static void round_f32(double *d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = (double)(float)d[i];
}

/* C11's CMPLX is missing from some libc/compiler pairs; a complex is laid
 * out as double[2] (C11 6.2.5p13), and building it that way keeps infinities
 * and NaNs in their part (re + im*I would not). */
static double complex cmk(double re, double im) {
  double parts[2] = {re, im};
  double complex z;
  memcpy(&z, parts, sizeof z);
  return z;
}

static double complex cget(const Val *v, int64_t i) {
  return v->cplx ? cmk(v->d[2 * i], v->d[2 * i + 1]) : cmk(v->d[i], 0.0);
}

static void cput(Val *v, int64_t i, double complex z) {
  v->d[2 * i] = creal(z);
  v->d[2 * i + 1] = cimag(z);
}

/* ---- Broadcasting ------------------------------------------------------------- */

/* Walks the elements of an output shape, tracking the matching element of
 * each operand under NumPy broadcasting (axes aligned on the right; an axis of
 * size 1, or a missing one, repeats). */
typedef struct BIter {
  int rank, nin;
  int64_t shape[SEQ_MAX_RANK], idx[SEQ_MAX_RANK];
  int64_t st[3][SEQ_MAX_RANK];
  int64_t off[3];
} BIter;

static void biter_init(BIter *it, const Val *o, int nin, const Val *const *in) {
  memset(it, 0, sizeof *it);
  it->rank = o->rank;
  it->nin = nin;
  memcpy(it->shape, o->shape, sizeof it->shape);
  for (int k = 0; k < nin; k++) {
    int64_t s = 1;
    for (int i = o->rank - 1, j = in[k]->rank - 1; i >= 0; i--, j--) {
      it->st[k][i] = j >= 0 && in[k]->shape[j] != 1 ? s : 0;
      if (j >= 0) s *= in[k]->shape[j];
    }
  }
}

static void biter_next(BIter *it) {
  for (int ax = it->rank - 1; ax >= 0; ax--) {
    it->idx[ax]++;
    for (int k = 0; k < it->nin; k++) it->off[k] += it->st[k][ax];
    if (it->idx[ax] < it->shape[ax]) return;
    for (int k = 0; k < it->nin; k++) it->off[k] -= it->st[k][ax] * it->shape[ax];
    it->idx[ax] = 0;
  }
}

/* Copies x broadcast to o's shape (same element kind; a real x into a
 * complex o gets zero imaginary parts). */
static void broadcast_copy(const Val *x, Val *o) {
  if (x->n == o->n && x->cplx == o->cplx) {
    memcpy(o->d, x->d, (size_t)val_width(o) * sizeof(double));
    return;
  }
  BIter it;
  const Val *in[1] = {x};
  biter_init(&it, o, 1, in);
  for (int64_t j = 0; j < o->n; j++, biter_next(&it)) {
    if (o->cplx)
      cput(o, j, cget(x, it.off[0]));
    else
      o->d[j] = x->d[it.off[0]];
  }
}

/* ---- Elementwise ops ---------------------------------------------------------- */

static double sigmoid(double x) {
  /* Never exponentiates a large positive number. */
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

/* As torch.nn.functional.softplus (beta 1, threshold 20). */
static double softplus(double x) {
  return x > 20.0 ? x : log1p(exp(x));
}

static double real_unary(IrOp op, double x) {
  switch (op) {
  case IR_NEG:
    return -x;
  case IR_EXP:
    return exp(x);
  case IR_LOG:
    return log(x);
  case IR_TANH:
    return tanh(x);
  case IR_SIGMOID:
    return sigmoid(x);
  case IR_LOGSIGMOID:
    return -softplus(-x);
  case IR_SOFTPLUS:
    return softplus(x);
  case IR_RELU:
    return x < 0 ? 0.0 : x; /* NaN stays NaN, as in torch */
  case IR_SILU:
    return x * sigmoid(x);
  case IR_GELU:
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440));
  case IR_SQRT:
    return sqrt(x);
  case IR_RSQRT:
    return 1.0 / sqrt(x);
  case IR_ABS:
    return fabs(x);
  case IR_SIN:
    return sin(x);
  case IR_COS:
    return cos(x);
  case IR_RE:
    return x;
  case IR_IM:
    return 0.0;
  case IR_CONJ:
    return x;
  default:
    return NAN;
  }
}

/* 0 and *out, or -1 for an op without a complex form. */
static int complex_unary(IrOp op, double complex z, double complex *out) {
  switch (op) {
  case IR_NEG:
    *out = -z;
    return 0;
  case IR_EXP:
    *out = cexp(z);
    return 0;
  case IR_LOG:
    *out = clog(z);
    return 0;
  case IR_TANH:
    *out = ctanh(z);
    return 0;
  case IR_SIGMOID:
    *out = 1.0 / (1.0 + cexp(-z));
    return 0;
  case IR_SQRT:
    *out = csqrt(z);
    return 0;
  case IR_RSQRT:
    *out = 1.0 / csqrt(z);
    return 0;
  case IR_SIN:
    *out = csin(z);
    return 0;
  case IR_COS:
    *out = ccos(z);
    return 0;
  case IR_CONJ:
    *out = conj(z);
    return 0;
  case IR_ABS:
    *out = cabs(z);
    return 0;
  case IR_RE:
    *out = creal(z);
    return 0;
  case IR_IM:
    *out = cimag(z);
    return 0;
  default:
    return -1;
  }
}

static int ew_unary(Run *r, const IrNode *nd, const Val *x, Val *o) {
  if (!x->cplx) {
    if (o->cplx) { /* conj of a real promoted to complex */
      for (int64_t j = 0; j < o->n; j++) cput(o, j, cmk(real_unary(nd->op, x->d[j]), 0.0));
      return 0;
    }
    for (int64_t j = 0; j < o->n; j++) o->d[j] = real_unary(nd->op, x->d[j]);
    return 0;
  }
  for (int64_t j = 0; j < o->n; j++) {
    double complex z;
    if (complex_unary(nd->op, cget(x, j), &z)) {
      diag_error(r->de, nd->loc, "internal error in interp: %s of a complex value",
                 ir_op_info[nd->op].text);
      return -1;
    }
    if (o->cplx)
      cput(o, j, z);
    else
      o->d[j] = creal(z);
  }
  return 0;
}

static double real_binary(IrOp op, double x, double y) {
  switch (op) {
  case IR_ADD:
    return x + y;
  case IR_SUB:
    return x - y;
  case IR_MUL:
    return x * y;
  case IR_DIV:
    return x / y;
  /* torch.minimum/maximum propagate NaN (x + y is NaN if either is). */
  case IR_MIN:
    return isnan(x) || isnan(y) ? x + y : (x < y ? x : y);
  case IR_MAX:
    return isnan(x) || isnan(y) ? x + y : (x > y ? x : y);
  case IR_LT:
    return x < y ? 1.0 : 0.0;
  case IR_LE:
    return x <= y ? 1.0 : 0.0;
  case IR_POW:
    return pow(x, y);
  default:
    return NAN;
  }
}

/* x op y where x_real (y_real) says x (y) is a real value: as in C's
 * Annex G, a real operand takes part as a real number, not as (x, 0), so
 * (a + bi) * x is (a x, b x) and (a + bi) + x is (a + x, b), which differ
 * from the textbook formulas on (x, 0) only where a product with 0 is NaN
 * (an infinite part) or in the sign of a zero. Otherwise the textbook
 * formulas, which compiled code uses too (C's complex operators may take a
 * slower, rescaling path). */
static int complex_binary(IrOp op, double complex x, int x_real, double complex y, int y_real,
                          double complex *out) {
  double a = creal(x), b = cimag(x), c = creal(y), d = cimag(y);
  switch (op) {
  case IR_ADD:
    *out = x_real ? cmk(a + c, d) : y_real ? cmk(a + c, b) : x + y;
    return 0;
  case IR_SUB:
    *out = x_real ? cmk(a - c, -d) : y_real ? cmk(a - c, b) : x - y;
    return 0;
  case IR_MUL:
    *out = x_real   ? cmk(a * c, a * d)
           : y_real ? cmk(a * c, b * c)
                    : cmk(a * c - b * d, a * d + b * c);
    return 0;
  case IR_DIV: {
    if (y_real) {
      *out = cmk(a / c, b / c);
      return 0;
    }
    double den = c * c + d * d;
    *out = cmk((a * c + b * d) / den, (b * c - a * d) / den);
    return 0;
  }
  case IR_POW:
    *out = cpow(x, y);
    return 0;
  default:
    return -1;
  }
}

static int ew_binary(Run *r, const IrNode *nd, const Val *x, const Val *y, Val *o) {
  IrOp op = nd->op;
  if (!o->cplx) {
    const double *a = x->d, *b = y->d;
    double *d = o->d;
    if (x->n == o->n && y->n == o->n) {
      for (int64_t j = 0; j < o->n; j++) d[j] = real_binary(op, a[j], b[j]);
    } else if (x->n == o->n && y->n == 1) {
      for (int64_t j = 0; j < o->n; j++) d[j] = real_binary(op, a[j], b[0]);
    } else if (x->n == 1 && y->n == o->n) {
      for (int64_t j = 0; j < o->n; j++) d[j] = real_binary(op, a[0], b[j]);
    } else {
      BIter it;
      const Val *in[2] = {x, y};
      biter_init(&it, o, 2, in);
      for (int64_t j = 0; j < o->n; j++, biter_next(&it))
        d[j] = real_binary(op, a[it.off[0]], b[it.off[1]]);
    }
    return 0;
  }
  BIter it;
  const Val *in[2] = {x, y};
  biter_init(&it, o, 2, in);
  for (int64_t j = 0; j < o->n; j++, biter_next(&it)) {
    if (op == IR_CPLX) { /* both operands real */
      o->d[2 * j] = x->d[it.off[0]];
      o->d[2 * j + 1] = y->d[it.off[1]];
      continue;
    }
    double complex z;
    if (complex_binary(op, cget(x, it.off[0]), !x->cplx, cget(y, it.off[1]), !y->cplx, &z)) {
      diag_error(r->de, nd->loc, "internal error in interp: %s of complex values",
                 ir_op_info[op].text);
      return -1;
    }
    cput(o, j, z);
  }
  return 0;
}

/* ---- Linear algebra and data movement ----------------------------------------- */

/* [M,K]@[K,N], [M,K]@[K], [K]@[K,N], [K]@[K]: vectors are a 1-row or
 * 1-column matrix. Sums run over k in order, in double. */
static void matmul(const Val *x, const Val *y, Val *o) {
  int64_t M = x->rank == 2 ? x->shape[0] : 1, K = x->shape[x->rank - 1];
  int64_t N = y->rank == 2 ? y->shape[1] : 1;
  if (!o->cplx) {
    const double *a = x->d, *b = y->d;
    for (int64_t i = 0; i < M; i++) {
      double *oi = o->d + i * N;
      if (N == 1) {
        double acc = 0;
        const double *ai = a + i * K;
        for (int64_t k = 0; k < K; k++) acc += ai[k] * b[k];
        oi[0] = acc;
        continue;
      }
      for (int64_t j = 0; j < N; j++) oi[j] = 0;
      for (int64_t k = 0; k < K; k++) {
        double xv = a[i * K + k];
        const double *bk = b + k * N;
        for (int64_t j = 0; j < N; j++) oi[j] += xv * bk[j];
      }
    }
    return;
  }
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double re = 0, im = 0;
      for (int64_t k = 0; k < K; k++) {
        double complex p = cget(x, i * K + k), q = cget(y, k * N + j);
        re += creal(p) * creal(q) - cimag(p) * cimag(q);
        im += creal(p) * cimag(q) + cimag(p) * creal(q);
      }
      cput(o, i * N + j, cmk(re, im));
    }
}

static void outer(const Val *x, const Val *y, Val *o) {
  int64_t M = x->shape[0], N = y->shape[0];
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      if (!o->cplx) {
        o->d[i * N + j] = x->d[i] * y->d[j];
      } else {
        double complex p = cget(x, i), q = cget(y, j);
        cput(o, i * N + j,
             cmk(creal(p) * creal(q) - cimag(p) * cimag(q),
                 creal(p) * cimag(q) + cimag(p) * creal(q)));
      }
    }
}

static void transpose(const Val *x, Val *o) {
  int64_t w = x->cplx ? 2 : 1;
  if (x->rank < 2) {
    memcpy(o->d, x->d, (size_t)val_width(x) * sizeof(double));
    return;
  }
  int64_t R = x->shape[x->rank - 2], C = x->shape[x->rank - 1];
  int64_t mat = R * C, nb = mat ? x->n / mat : 0;
  for (int64_t b = 0; b < nb; b++)
    for (int64_t i = 0; i < R; i++)
      for (int64_t j = 0; j < C; j++)
        for (int64_t c = 0; c < w; c++)
          o->d[(b * mat + j * R + i) * w + c] = x->d[(b * mat + i * C + j) * w + c];
}

/* The inverse of each N x N matrix of x's last two axes: Gauss-Jordan
 * elimination with partial pivoting, in float64. A matrix that meets a zero
 * or non-finite pivot (singular) gets NaN in every element, as the
 * compiled code gives it. */
static int inverse(Run *r, const IrNode *nd, const Val *x, Val *o) {
  int64_t N = x->shape[x->rank - 1], mat = N * N, nb = mat ? x->n / mat : 0;
  double *w = malloc(sizeof(double) * (size_t)(mat ? mat : 1));
  if (!w) {
    diag_error(r->de, nd->loc, "out of memory");
    return -1;
  }
  for (int64_t b = 0; b < nb; b++) {
    double *v = o->d + b * mat;
    memcpy(w, x->d + b * mat, sizeof(double) * (size_t)mat);
    for (int64_t k = 0; k < mat; k++) v[k] = k % (N + 1) == 0 ? 1.0 : 0.0;
    int singular = 0;
    for (int64_t k = 0; k < N && !singular; k++) {
      int64_t p = k;
      for (int64_t i = k + 1; i < N; i++)
        if (fabs(w[i * N + k]) > fabs(w[p * N + k])) p = i;
      double piv = w[p * N + k];
      if (piv == 0.0 || !isfinite(piv)) {
        singular = 1;
        break;
      }
      for (int64_t j = 0; j < N && p != k; j++) {
        double t = w[k * N + j];
        w[k * N + j] = w[p * N + j], w[p * N + j] = t;
        t = v[k * N + j];
        v[k * N + j] = v[p * N + j], v[p * N + j] = t;
      }
      for (int64_t j = 0; j < N; j++) w[k * N + j] /= piv, v[k * N + j] /= piv;
      for (int64_t i = 0; i < N; i++) {
        double f = w[i * N + k];
        if (i == k || f == 0.0) continue;
        for (int64_t j = 0; j < N; j++)
          w[i * N + j] -= f * w[k * N + j], v[i * N + j] -= f * v[k * N + j];
      }
    }
    for (int64_t k = 0; k < mat && singular; k++) v[k] = NAN;
  }
  free(w);
  return 0;
}

/* The exponential of each N x N matrix of x (real) into o: scaling and
 * squaring of the Taylor series, in float64. A is scaled by 2^-s to a
 * 1-norm of at most 1/4, where 20 terms leave a remainder under 1e-24
 * relative to the sum, then the result squared s times. A matrix with an
 * entry that is not finite, or a 1-norm past 2^60, gives NaN everywhere. */
static int matexp(Run *r, const IrNode *nd, const Val *x, Val *o) {
  int64_t N = x->shape[x->rank - 1], mat = N * N, nb = mat ? x->n / mat : 0;
  double *t = malloc(sizeof(double) * (size_t)(mat ? mat : 1));
  if (!t) {
    diag_error(r->de, nd->loc, "out of memory");
    return -1;
  }
  for (int64_t b = 0; b < nb; b++) {
    const double *a = x->d + b * mat;
    double *e = o->d + b * mat, norm = 0;
    for (int64_t j = 0; j < N; j++) {
      double c = 0;
      for (int64_t i = 0; i < N; i++) c += fabs(a[i * N + j]);
      norm = c > norm || c != c ? c : norm;
    }
    if (!(norm <= 0x1p60)) {
      for (int64_t k = 0; k < mat; k++) e[k] = NAN;
      continue;
    }
    int s = 0;
    double scale = 1;
    while (norm * scale > 0.25) s++, scale *= 0.5;
    for (int64_t k = 0; k < mat; k++) e[k] = k % (N + 1) == 0 ? 1.0 : 0.0;
    for (int k = 20; k >= 1; k--) { /* e = I + (A 2^-s / k) e */
      for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) {
          double acc = 0;
          for (int64_t l = 0; l < N; l++) acc += a[i * N + l] * e[l * N + j];
          t[i * N + j] = acc * scale / k;
        }
      for (int64_t q = 0; q < mat; q++) e[q] = t[q] + (q % (N + 1) == 0 ? 1.0 : 0.0);
    }
    for (int q = 0; q < s; q++) { /* e = e e */
      for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) {
          double acc = 0;
          for (int64_t l = 0; l < N; l++) acc += e[i * N + l] * e[l * N + j];
          t[i * N + j] = acc;
        }
      memcpy(e, t, sizeof(double) * (size_t)mat);
    }
  }
  free(t);
  return 0;
}

/* Sizes around an axis: outer = product of the axes before it, inner =
 * doubles per step along it (product of the axes after it, times 2 if
 * complex). */
static void axis_split(const Val *v, int axis, int64_t *outer, int64_t *inner) {
  int64_t a = 1, b = v->cplx ? 2 : 1;
  for (int i = 0; i < axis; i++) a *= v->shape[i];
  for (int i = axis + 1; i < v->rank; i++) b *= v->shape[i];
  *outer = a;
  *inner = b;
}

static void slice(const Val *x, int axis, int64_t start, int64_t len, Val *o) {
  int64_t outer, inner;
  axis_split(x, axis, &outer, &inner);
  int64_t D = x->shape[axis];
  for (int64_t i = 0; i < outer; i++)
    memcpy(o->d + i * len * inner, x->d + (i * D + start) * inner,
           (size_t)(len * inner) * sizeof(double));
}

static void concat(const Val *args, int nargs, int axis, Val *o) {
  int64_t outer, inner;
  axis_split(o, axis, &outer, &inner);
  int64_t D = o->shape[axis];
  for (int64_t i = 0; i < outer; i++) {
    int64_t at = 0;
    for (int k = 0; k < nargs; k++) {
      int64_t Dk = args[k].shape[axis];
      memcpy(o->d + (i * D + at) * inner, args[k].d + i * Dk * inner,
             (size_t)(Dk * inner) * sizeof(double));
      at += Dk;
    }
  }
}

/* ---- Reductions and normalizations -------------------------------------------- */

static double reduce(IrOp op, const double *x, int64_t n, int64_t step) {
  double acc = op == IR_AMAX ? -INFINITY : op == IR_AMIN ? INFINITY : 0.0;
  for (int64_t i = 0; i < n; i++) {
    double v = x[i * step];
    switch (op) {
    case IR_AMAX: /* a NaN sticks, as in torch.amax */
      if (v > acc || isnan(v)) acc = isnan(acc) ? acc : v;
      break;
    case IR_AMIN:
      if (v < acc || isnan(v)) acc = isnan(acc) ? acc : v;
      break;
    default:
      acc += v;
      break;
    }
  }
  if (op == IR_MEAN) acc /= (double)n;
  return acc;
}

static void reduction(const IrNode *nd, const Val *x, Val *o) {
  if (nd->axis < 0) { /* all axes; a complex value reduces its parts separately */
    if (x->cplx) {
      o->d[0] = reduce(nd->op, x->d, x->n, 2);
      o->d[1] = reduce(nd->op, x->d + 1, x->n, 2);
    } else {
      o->d[0] = reduce(nd->op, x->d, x->n, 1);
    }
    return;
  }
  int64_t outer, inner;
  axis_split(x, nd->axis, &outer, &inner);
  int64_t D = x->shape[nd->axis];
  for (int64_t i = 0; i < outer; i++)
    for (int64_t j = 0; j < inner; j++)
      o->d[i * inner + j] = reduce(nd->op, x->d + i * D * inner + j, D, inner);
}

/* Over the last axis: RMSNORM x * rsqrt(mean(x^2) + eps) * w; LAYERNORM
 * (x - mean) / sqrt(var + eps) * w + b with the biased variance (PyTorch);
 * L2NORM x / sqrt(sum(x^2) + eps); SOFTMAX with the row max subtracted.
 * w and b arrive already broadcast to x's shape. */
static void normalize(const IrNode *nd, const Val *x, const double *w, const double *b, Val *o) {
  int64_t D = x->rank ? x->shape[x->rank - 1] : 1;
  int64_t rows = D ? x->n / D : 0;
  double eps = nd->cval;
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x->d + r * D;
    double *orow = o->d + r * D;
    switch (nd->op) {
    case IR_RMSNORM: {
      double ss = 0;
      for (int64_t i = 0; i < D; i++) ss += xr[i] * xr[i];
      double s = 1.0 / sqrt(ss / (double)D + eps);
      for (int64_t i = 0; i < D; i++) orow[i] = xr[i] * s * w[r * D + i];
      break;
    }
    case IR_LAYERNORM: {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < D; i++) mean += xr[i];
      mean /= (double)D;
      for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
      var /= (double)D;
      double s = 1.0 / sqrt(var + eps);
      for (int64_t i = 0; i < D; i++) orow[i] = (xr[i] - mean) * s * w[r * D + i] + b[r * D + i];
      break;
    }
    case IR_L2NORM: {
      double ss = 0;
      for (int64_t i = 0; i < D; i++) ss += xr[i] * xr[i];
      double s = sqrt(ss + eps);
      for (int64_t i = 0; i < D; i++) orow[i] = xr[i] / s;
      break;
    }
    default: { /* IR_SOFTMAX */
      double m = -INFINITY, s = 0;
      for (int64_t i = 0; i < D; i++)
        if (xr[i] > m || isnan(xr[i])) m = xr[i];
      for (int64_t i = 0; i < D; i++) s += (orow[i] = exp(xr[i] - m));
      for (int64_t i = 0; i < D; i++) orow[i] /= s;
      break;
    }
    }
  }
}

/* ---- One node ------------------------------------------------------------------ */

static int gather(Run *r, const IrNode *nd, const Val *tab, const Val *idx, Val *o) {
  double t = idx->d[0];
  int64_t V = tab->shape[0];
  if (!(t == floor(t))) { /* also NaN and infinities */
    diag_error(r->de, nd->loc, "token index %g is not an integer at batch %lld, step %lld", t,
               (long long)r->b, (long long)r->t);
    return -1;
  }
  if (t < 0 || t >= (double)V) {
    diag_error(r->de, nd->loc, "token index %.0f out of range [0, %lld) at batch %lld, step %lld",
               t, (long long)V, (long long)r->b, (long long)r->t);
    return -1;
  }
  int64_t row = o->n;
  memcpy(o->d, tab->d + (int64_t)t * row, (size_t)row * sizeof(double));
  return 0;
}

/* Evaluates a per-step (or per-position) node from its operands' views a[]
 * into o. Leaves that need the instance (PARAM, INPUT, STATE) and the
 * sequence-level ops are handled by the callers. */
static int eval_node(Run *r, Inst *in, const IrNode *nd, Slot *s, const Val *a, Val *o) {
  switch (nd->op) {
  case IR_CONST:
    o->d[0] = nd->cval;
    return 0;
  case IR_DIMVAL: {
    int64_t v;
    if (dim_eval(nd->dval, in->dims, &v)) {
      diag_error(r->de, nd->loc, "dimension value overflows");
      return -1;
    }
    o->d[0] = (double)v;
    return 0;
  }
  case IR_EYE: {
    int64_t n = o->rank ? o->shape[0] : 0;
    for (int64_t i = 0; i < n * n; i++) o->d[i] = i % (n + 1) == 0 ? 1.0 : 0.0;
    return 0;
  }
  case IR_MATMUL:
    matmul(&a[0], &a[1], o);
    return 0;
  case IR_OUTER:
    outer(&a[0], &a[1], o);
    return 0;
  case IR_TRANSPOSE:
    transpose(&a[0], o);
    return 0;
  case IR_INV:
    return inverse(r, nd, &a[0], o);
  case IR_EXPM:
    return matexp(r, nd, &a[0], o);
  case IR_DIAG: {
    int64_t N = o->rank ? o->shape[o->rank - 1] : 1, P = N ? o->n / N : 0;
    int w = o->cplx ? 2 : 1;
    for (int64_t p = 0; p < P; p++)
      for (int64_t i = 0; i < N; i++)
        for (int c = 0; c < w; c++)
          o->d[(p * N + i) * w + c] = a[0].d[((p * N + i) * N + i) * w + c];
    return 0;
  }
  case IR_BROADCAST:
    broadcast_copy(&a[0], o);
    return 0;
  case IR_RESHAPE:
    memcpy(o->d, a[0].d, (size_t)val_width(o) * sizeof(double));
    return 0;
  case IR_SLICE:
  case IR_INDEX: {
    int64_t start, stop = 0;
    if (ir_check_index_bounds(in->fn, nd, in->dims, a[0].shape[nd->axis], r->de)) return -1;
    if (dim_eval(nd->start, in->dims, &start) ||
        (nd->op == IR_SLICE && dim_eval(nd->stop, in->dims, &stop))) {
      diag_internal(r->de, "interp", "%s bounds that passed the check", ir_op_info[nd->op].text);
      return -1;
    }
    int64_t len = nd->op == IR_SLICE ? stop - start : 1;
    slice(&a[0], nd->axis, start, len, o);
    return 0;
  }
  case IR_CONCAT:
    concat(a, nd->nargs, nd->axis, o);
    return 0;
  case IR_GATHER:
    return gather(r, nd, &a[0], &a[1], o);
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN:
    reduction(nd, &a[0], o);
    return 0;
  case IR_RMSNORM:
  case IR_LAYERNORM: {
    Val w = a[0], b = a[0];
    w.cplx = b.cplx = 0;
    w.d = s->aux;
    b.d = s->aux + a[0].n;
    broadcast_copy(&a[1], &w);
    if (nd->op == IR_LAYERNORM) broadcast_copy(&a[2], &b);
    normalize(nd, &a[0], w.d, b.d, o);
    return 0;
  }
  case IR_L2NORM:
  case IR_SOFTMAX:
    normalize(nd, &a[0], NULL, NULL, o);
    return 0;
  default:
    break;
  }
  unsigned flags = ir_op_info[nd->op].flags;
  if ((flags & IRF_EW) && nd->nargs == 1) return ew_unary(r, nd, &a[0], o);
  if ((flags & IRF_EW) && nd->nargs == 2) return ew_binary(r, nd, &a[0], &a[1], o);
  diag_error(r->de, nd->loc, "internal error in interp: %s cannot be evaluated in a %s",
             ir_op_info[nd->op].text, in->fn->kind == IR_FN_CELL ? "cell" : "model here");
  return -1;
}

/* Evaluates node i of an instance at one position: the operands' views are
 * taken at position t (models) and the result is rounded in float32 mode. */
static int eval_at(Run *r, Inst *in, int i, int64_t t) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  for (int k = 0; k < nd->nargs; k++) {
    const Slot *as = &in->slot[nd->args[k]];
    s->argv[k] = as->v;
    s->argv[k].d += t * as->stride;
  }
  Val o = s->v;
  o.d += t * s->stride;
  if (eval_node(r, in, nd, s, s->argv, &o)) return -1;
  if (!r->f64) round_f32(o.d, val_width(&o));
  return 0;
}

/* ---- Building the instance tree ---------------------------------------------- */

static int oom(Run *r) {
  diag_error(r->de, (SrcLoc){0}, "out of memory in the interpreter");
  return -1;
}

/* Doubles for n elements (times 2 if complex) times `positions`; -1 on overflow. */
static double *alloc_doubles(Run *r, int64_t n, int64_t positions) {
  int64_t cnt;
  /* The bound on tensor files bounds every buffer too: past it, a request is
   * a dimension mistake, not something to hand to malloc. */
  if (__builtin_mul_overflow(n, positions, &cnt) ||
      cnt > RT_MAX_FILE_BYTES / (int64_t)sizeof(double))
    return NULL;
  return arena_calloc(r->arena, (size_t)(cnt ? cnt : 1), sizeof(double));
}

/* An intermediate value too large to hold: name it and say how large, since
 * the cause is nearly always a dimension (outer(w, w) with a large --dims). */
static int value_oom(Run *r, const IrNode *nd, int64_t width, int64_t positions) {
  int64_t bytes;
  if (__builtin_mul_overflow(width, positions, &bytes) ||
      __builtin_mul_overflow(bytes, (int64_t)sizeof(double), &bytes))
    bytes = INT64_MAX;
  if (bytes > RT_MAX_FILE_BYTES)
    diag_error(r->de, nd->loc, "this value needs %lld bytes, more than the limit of %lld",
               (long long)bytes, (long long)RT_MAX_FILE_BYTES);
  else
    diag_error(r->de, nd->loc, "out of memory in the interpreter for this value (%lld bytes)",
               (long long)bytes);
  return -1;
}

/* The concrete shape of a type under an instance's dims. */
static int shape_val(const Inst *in, IrType t, Val *v) {
  memset(v, 0, sizeof *v);
  if (t.rank < 0 || t.rank > SEQ_MAX_RANK) return -1;
  v->rank = t.rank;
  v->cplx = t.elem == IR_COMPLEX;
  v->n = 1;
  for (int i = 0; i < t.rank; i++) {
    if (dim_eval(t.dims[i], in->dims, &v->shape[i])) return -1;
    if (__builtin_mul_overflow(v->n, v->shape[i], &v->n)) return -1;
  }
  if (v->cplx && v->n > INT64_MAX / 2) return -1;
  return 0;
}

/* Reachability from the roots, then which reachable nodes vary. */
static void mark_nodes(Inst *in) {
  const IrFunc *fn = in->fn;
  Slot *sl = in->slot;
  for (int k = 0; k < fn->outputs.n; k++)
    if (fn->outputs.v[k].value >= 0) sl[fn->outputs.v[k].value].live = 1;
  for (int k = 0; k < fn->states.n; k++) {
    if (fn->states.v[k].next >= 0) sl[fn->states.v[k].next].live = 1;
    if (fn->states.v[k].init >= 0) sl[fn->states.v[k].init].live = 1;
  }
  /* A layer runs even when its outputs go unused: its final states are
   * results too. */
  for (int i = 0; i < fn->nodes.n; i++)
    if (fn->nodes.v[i].op == IR_CALL) sl[i].live = 1;
  for (int i = fn->nodes.n - 1; i >= 0; i--)
    if (sl[i].live)
      for (int k = 0; k < fn->nodes.v[i].nargs; k++) sl[fn->nodes.v[i].args[k]].live = 1;
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    int v = nd->op == IR_INPUT || nd->op == IR_STATE || nd->op == IR_CALL || nd->op == IR_RESULT ||
            nd->op == IR_CAUSAL_CONV || (ir_op_info[nd->op].flags & IRF_SEQ);
    for (int k = 0; k < nd->nargs && !v; k++) v = sl[nd->args[k]].varying;
    sl[i].varying = v;
    if (fn->kind != IR_FN_MODEL) continue;
    const IrNode *call = nd->op == IR_RESULT ? &fn->nodes.v[nd->args[0]] : nd;
    int seq = (nd->op == IR_INPUT && fn->inputs.v[nd->index].context) ||
              ((nd->op == IR_CALL || nd->op == IR_RESULT) && fn->layers.v[call->index].over);
    if (!seq && v && nd->op != IR_INPUT && nd->op != IR_STATE && nd->op != IR_CALL &&
        nd->op != IR_RESULT && nd->op != IR_CAUSAL_CONV && !(ir_op_info[nd->op].flags & IRF_SEQ)) {
      seq = 1;
      for (int k = 0; k < nd->nargs && seq; k++)
        seq = !sl[nd->args[k]].varying || sl[nd->args[k]].per_seq;
    }
    sl[i].per_seq = seq;
  }
}

/* The evaluators index buffers by the node types, so IR whose types
 * disagree with its operands (a compiler bug the verifier would report) must
 * be refused here rather than read out of bounds. */
static int check_func(Run *r, const IrFunc *fn) {
  char msg[256];
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    for (int k = 0; k < nd->nargs; k++)
      if (nd->args[k] < 0 || nd->args[k] >= i) {
        diag_error(r->de, nd->loc, "internal error in interp: node %d of '%s' has operand %d", i,
                   fn->name, (int)nd->args[k]);
        return -1;
      }
    IrType t;
    msg[0] = 0;
    if (ir_infer_type(fn, r->arena, nd, nd->nargs, nd->args, &t, msg, sizeof msg) ||
        !ir_type_eq(t, nd->type)) {
      diag_error(r->de, nd->loc, "internal error in interp: node %d (%s) of '%s' is ill-typed%s%s",
                 i, ir_op_info[nd->op].text, fn->name, msg[0] ? ": " : "", msg);
      return -1;
    }
  }
  for (int k = 0; k < fn->outputs.n; k++) {
    const IrOutput *o = &fn->outputs.v[k];
    if (o->value < 0 || o->value >= fn->nodes.n ||
        !ir_type_eq(fn->nodes.v[o->value].type, o->type)) {
      diag_error(r->de, o->loc, "internal error in interp: output '%s' has no value of its type",
                 o->name);
      return -1;
    }
  }
  for (int k = 0; k < fn->states.n; k++) {
    const IrState *st = &fn->states.v[k];
    int ok = st->next >= 0 && st->next < fn->nodes.n && st->init < fn->nodes.n &&
             ir_type_eq(fn->nodes.v[st->next].type, st->type);
    if (ok && st->init >= 0) {
      /* The initial value may be smaller than the state: it is broadcast. */
      IrNode bc = {0};
      bc.op = IR_BROADCAST;
      bc.type = st->type;
      IrType t;
      ok = !ir_infer_type(fn, r->arena, &bc, 1, &st->init, &t, NULL, 0);
    }
    if (!ok) {
      diag_error(r->de, st->loc, "internal error in interp: state '%s' is malformed", st->name);
      return -1;
    }
  }
  return 0;
}

static int inst_build(Run *r, const IrFunc *fn, int flat, const int64_t *dims, int depth,
                      Inst **out);

/* Children of a model: one instance per layer, with the layer's dims
 * evaluated under ours; flat.insts[flat].layers says which flat instance
 * (and so which parameters and states) each is. */
static int build_children(Run *r, Inst *in, int flat, int depth) {
  const IrFunc *fn = in->fn;
  const IrModule *m = r->bind->mod;
  int nl = fn->layers.n;
  in->child = arena_calloc(r->arena, (size_t)(nl ? nl : 1), sizeof *in->child);
  in->called = arena_calloc(r->arena, (size_t)(nl ? nl : 1), sizeof *in->called);
  if (!in->child || !in->called) return oom(r);
  for (int l = 0; l < nl; l++) {
    const IrLayer *ly = &fn->layers.v[l];
    if (ly->callee < 0 || ly->callee >= m->funcs.n) {
      diag_error(r->de, ly->loc, "internal error in interp: layer '%s' has no callee", ly->name);
      return -1;
    }
    const IrFunc *callee = m->funcs.v[ly->callee];
    int nd = callee->dims.n;
    int64_t *cd = arena_calloc(r->arena, (size_t)(nd ? nd : 1), sizeof *cd);
    if (!cd) return oom(r);
    for (int k = 0; k < nd; k++)
      if (!ly->dim_args || dim_eval(ly->dim_args[k], in->dims, &cd[k])) {
        diag_error(r->de, ly->loc, "dimension %s of layer '%s' cannot be evaluated (overflow)",
                   callee->dims.v[k].name, ly->name);
        return -1;
      }
    /* The binding may come from another module with the same functions in
     * the same order (a rewritten copy): only the tree's shape is shared.
     * A Newton layer's step is the caller's instance (flatten.c). */
    int child = ly->newton.states > 0 ? flat : r->bind->flat.insts.v[flat].layers[l];
    if (ly->newton.states > 0) {
      if (inst_build(r, callee, child, cd, depth + 1, &in->child[l])) return -1;
      continue;
    }
    if (child < 0 || child >= r->bind->flat.insts.n ||
        r->bind->flat.insts.v[child].fn->params.n != callee->params.n ||
        r->bind->flat.insts.v[child].fn->states.n != callee->states.n) {
      diag_error(r->de, ly->loc, "internal error in interp: layer '%s' is not flattened", ly->name);
      return -1;
    }
    /* A layer run over a context's positions is built for N of them: the
     * first axis of its call's result. */
    int64_t T = r->T;
    for (int i = 0; ly->over && i < fn->nodes.n; i++) {
      const IrNode *nd = &fn->nodes.v[i];
      if (nd->op != IR_CALL || nd->index != l) continue;
      if (nd->type.rank < 1 || dim_eval(nd->type.dims[0], in->dims, &r->T) || r->T < 0) {
        diag_error(r->de, nd->loc, "internal error in interp: layer '%s' has no positions",
                   ly->name);
        r->T = T;
        return -1;
      }
    }
    int rc = inst_build(r, callee, child, cd, depth + 1, &in->child[l]);
    r->T = T;
    if (rc) return -1;
  }
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    if (nd->op != IR_CALL) continue;
    if (nd->index < 0 || nd->index >= nl) {
      diag_error(r->de, nd->loc, "internal error in interp: call of layer %d", nd->index);
      return -1;
    }
    const Inst *c = in->child[nd->index];
    const IrNewton *nw = &fn->layers.v[nd->index].newton;
    int own = nw->dense ? nw->states : 0; /* a dense solve's tangents */
    int lens = fn->layers.v[nd->index].over && fn->layers.v[nd->index].over_lengths;
    if (nd->nargs != c->fn->inputs.n - own + lens || c->fn->outputs.n < 1) {
      diag_error(r->de, nd->loc,
                 "internal error in interp: call of '%s' with %d arguments for %d inputs",
                 c->fn->name, nd->nargs, c->fn->inputs.n);
      return -1;
    }
    in->called[nd->index] = 1;
  }
  return 0;
}

/* Allocates the buffers of every live node and checks the node shapes that
 * the evaluators rely on. */
static int alloc_slots(Run *r, Inst *in) {
  const IrFunc *fn = in->fn;
  int model = fn->kind == IR_FN_MODEL;
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    Slot *s = &in->slot[i];
    if (!s->live) continue;
    if (shape_val(in, nd->type, &s->v)) {
      diag_error(r->de, nd->loc, "the shape of this value overflows with the given dimensions");
      return -1;
    }
    int64_t w = val_width(&s->v);
    if (nd->nargs > 0 && !(s->argv = arena_calloc(r->arena, (size_t)nd->nargs, sizeof(Val))))
      return oom(r);
    if (nd->op == IR_INPUT || nd->op == IR_RESULT) continue; /* views, set when run */
    /* A state read in a model is its value entering the sequence: one
     * position, the same at every step. */
    int per_position = model && s->varying && nd->op != IR_STATE && !s->per_seq;
    int64_t positions = per_position ? r->T : 1;
    if (!(s->v.d = alloc_doubles(r, w, positions))) return value_oom(r, nd, w, positions);
    s->stride = per_position ? w : 0;
    if (nd->op == IR_RMSNORM || nd->op == IR_LAYERNORM)
      if (!(s->aux = alloc_doubles(r, s->v.n, 2))) return oom(r);
    if (nd->op == IR_LINATTN) { /* the running state, [L..., V, K] */
      const Val *S0 = &in->slot[nd->args[4]].v;
      if (!(s->aux = alloc_doubles(r, S0->n, 1))) return oom(r);
    }
    if (nd->op == IR_DELTA || nd->op == IR_DELTA_STATE || nd->op == IR_DPLR ||
        nd->op == IR_DPLR_STATE) { /* the running state and S k (S a) */
      int s0 = nd->op == IR_DELTA ? 5 : nd->op == IR_DPLR ? 6 : nd->op == IR_DPLR_STATE ? 5 : 4;
      const Val *S0 = &in->slot[nd->args[s0]].v;
      if (!(s->aux = alloc_doubles(r, S0->n + (S0->rank ? S0->shape[S0->rank - 2] : 0), 1)))
        return oom(r);
    }
    if (nd->op == IR_PLSTM || nd->op == IR_PLSTM_STATE) { /* the running state, the next one */
      const Val *S0 = &in->slot[nd->args[nd->op == IR_PLSTM ? 6 : 4]].v;
      if (!(s->aux = alloc_doubles(r, S0->n, 2))) return oom(r);
    }
    if (nd->op == IR_CALL) {
      const Inst *c = in->child[nd->index];
      int no = c->fn->outputs.n;
      if (!(s->outs = arena_calloc(r->arena, (size_t)no, sizeof *s->outs))) return oom(r);
      s->outs[0] = s->v.d;
      /* Three times over for a Newton solve: its sequential fallback's
       * arguments and the whole sequence's (newton_solve). */
      if (!(s->seqargs = arena_calloc(r->arena, (size_t)(3 * c->fn->inputs.n + 1), sizeof(Seq))))
        return oom(r);
      int over = fn->layers.v[nd->index].over;
      for (int k = 1; k < no; k++)
        if (!(s->outs[k] = alloc_doubles(r, c->out_width[k], over ? c->T : r->T))) return oom(r);
      /* The lengths of a call run over positions come last. */
      int nin = nd->nargs - (over && fn->layers.v[nd->index].over_lengths);
      for (int k = 0; k < nin; k++) {
        Val want;
        const Slot *as = &in->slot[nd->args[k]];
        /* Run over positions: a per-step input's argument holds all N of them. */
        int64_t n = over && !c->fn->inputs.v[k].context ? c->T : 1;
        if (shape_val(c, c->fn->inputs.v[k].type, &want) || want.cplx != as->v.cplx ||
            want.n * n != as->v.n) {
          diag_error(r->de, nd->loc,
                     "internal error in interp: argument %d of the call has the "
                     "wrong shape",
                     k + 1);
          return -1;
        }
      }
      if (c->out_width[0] * (over ? c->T : 1) != w) {
        diag_error(r->de, nd->loc, "internal error in interp: call result type disagrees");
        return -1;
      }
      /* A Newton solve: the guess, a candidate and the step (then the new
       * guess), and the previous values the step reads, per solved state. */
      int n = fn->layers.v[nd->index].newton.states;
      int dense = fn->layers.v[nd->index].newton.dense;
      int nout = dense ? 2 * n : n + n * n;
      if (n > 0) {
        if (nd->nargs < n || no < nout) {
          diag_error(r->de, nd->loc, "internal error in interp: malformed Newton layer");
          return -1;
        }
        for (int k = 0; k < nout; k++)
          if (c->out_width[k] != w || s->v.cplx) {
            diag_error(r->de, nd->loc,
                       "internal error in interp: a Newton layer's values differ in shape");
            return -1;
          }
        /* Dense: the tangents, and J per position. */
        int64_t per = 3 * n * w + (dense ? n * w + n * w * n * w : 0);
        if (!(s->aux = alloc_doubles(r, per, r->T))) return value_oom(r, nd, per, r->T);
      }
    }
  }
  /* Shapes the evaluators index by: RESULT's type is its output's. */
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    Slot *s = &in->slot[i];
    if (!s->live || nd->op != IR_RESULT) continue;
    const IrNode *call = &fn->nodes.v[nd->args[0]];
    const Inst *c = call->op == IR_CALL ? in->child[call->index] : NULL;
    int over = c && fn->layers.v[call->index].over;
    if (!c || nd->index < 0 || nd->index >= c->fn->outputs.n ||
        c->out_width[nd->index] * (over ? c->T : 1) != val_width(&s->v)) {
      diag_error(r->de, nd->loc, "internal error in interp: malformed result node");
      return -1;
    }
    /* Run over positions, its results are one value for the whole sequence. */
    s->stride = over ? 0 : val_width(&s->v);
  }
  return 0;
}

/* Evaluates the invariant live nodes once. */
static int eval_invariants(Run *r, Inst *in) {
  const IrFunc *fn = in->fn;
  for (int i = 0; i < fn->nodes.n; i++) {
    const IrNode *nd = &fn->nodes.v[i];
    Slot *s = &in->slot[i];
    if (!s->live || s->varying) continue;
    if (nd->op == IR_PARAM) {
      if (nd->index < 0 || nd->index >= fn->params.n) {
        diag_error(r->de, nd->loc, "internal error in interp: param %d", nd->index);
        return -1;
      }
      const RtTensor *wt = &r->bind->weights[in->param_flat[nd->index]];
      int64_t w = val_width(&s->v);
      if (!wt->data || wt->dtype != RT_F64 || rt_numel(wt) != w) {
        diag_error(r->de, fn->params.v[nd->index].loc, "weight '%s' is not loaded",
                   r->bind->flat.params.v[in->param_flat[nd->index]].name);
        return -1;
      }
      memcpy(s->v.d, wt->data, (size_t)w * sizeof(double));
      if (!r->f64) round_f32(s->v.d, w);
      continue;
    }
    if (eval_at(r, in, i, 0)) return -1;
  }
  return 0;
}

/* Builds an instance of fn, the function of flat.insts[flat] (or its
 * counterpart in a rewritten module), with concrete dims `dims`. */
static int inst_build(Run *r, const IrFunc *fn, int flat, const int64_t *dims, int depth,
                      Inst **out) {
  const IrFlatInst *fi = &r->bind->flat.insts.v[flat];
  int reverse = fi->reverse;
  /* A Newton layer's step has no states and shares its caller's instance. */
  if (fi->fn->params.n != fn->params.n || (fi->fn->states.n != fn->states.n && fn->states.n)) {
    diag_error(r->de, fn->loc, "internal error in interp: %s does not match its binding", fn->name);
    return -1;
  }
  if (depth > MAX_DEPTH) {
    diag_error(r->de, fn->loc, "layers nest deeper than %d (is '%s' recursive?)", MAX_DEPTH,
               fn->name);
    return -1;
  }
  if (check_func(r, fn)) return -1;
  Inst *in = arena_alloc(r->arena, sizeof *in);
  if (!in) return oom(r);
  in->fn = fn;
  in->dims = dims;
  in->T = r->T;
  int nn = fn->nodes.n, np = fn->params.n, ns = fn->states.n, no = fn->outputs.n;
  in->slot = arena_calloc(r->arena, (size_t)(nn ? nn : 1), sizeof *in->slot);
  in->param_flat = arena_calloc(r->arena, (size_t)(np ? np : 1), sizeof(int));
  in->state_flat = arena_calloc(r->arena, (size_t)(ns ? ns : 1), sizeof(int));
  in->state_val = arena_calloc(r->arena, (size_t)(ns ? ns : 1), sizeof(Val));
  in->out_seq = arena_calloc(r->arena, (size_t)(no ? no : 1), sizeof(double *));
  in->out_width = arena_calloc(r->arena, (size_t)(no ? no : 1), sizeof(int64_t));
  in->no_inputs = arena_calloc(r->arena, (size_t)(fn->inputs.n + 1), sizeof(Seq));
  if (!in->slot || !in->param_flat || !in->state_flat || !in->state_val || !in->out_seq ||
      !in->out_width || !in->no_inputs)
    return oom(r);

  for (int p = 0; p < np; p++) in->param_flat[p] = fi->params[p];
  for (int k = 0; k < ns; k++) {
    const char *name = r->bind->flat.states.v[fi->states[k]].name;
    in->state_flat[k] = fi->states[k];
    if (shape_val(in, fn->states.v[k].type, &in->state_val[k]) ||
        !(in->state_val[k].d = alloc_doubles(r, val_width(&in->state_val[k]), 1))) {
      diag_error(r->de, fn->states.v[k].loc, "the shape of state '%s' overflows", name);
      return -1;
    }
  }
  for (int k = 0; k < no; k++) {
    Val v;
    if (shape_val(in, fn->outputs.v[k].type, &v)) {
      diag_error(r->de, fn->outputs.v[k].loc, "the shape of output '%s' overflows",
                 fn->outputs.v[k].name);
      return -1;
    }
    in->out_width[k] = val_width(&v);
    if (!(in->out_seq[k] = alloc_doubles(r, in->out_width[k], r->T))) return oom(r);
  }
  if (fn->kind == IR_FN_MODEL && reverse) {
    int ni = fn->inputs.n;
    if (!(in->rev_inputs = arena_calloc(r->arena, (size_t)(ni + 1), sizeof(Seq)))) return oom(r);
    for (int k = 0; k < ni; k++) {
      Val v;
      if (shape_val(in, fn->inputs.v[k].type, &v)) {
        diag_error(r->de, fn->inputs.v[k].loc, "the shape of input '%s' overflows",
                   fn->inputs.v[k].name);
        return -1;
      }
      in->rev_inputs[k].stride = val_width(&v);
      if (!(in->rev_inputs[k].d = alloc_doubles(r, val_width(&v), r->T))) return oom(r);
    }
  }
  if (fn->kind == IR_FN_MODEL && build_children(r, in, flat, depth)) return -1;
  mark_nodes(in);
  for (int i = 0; i < nn; i++) {
    IrOp op = fn->nodes.v[i].op;
    int seq_op = op == IR_CALL || op == IR_RESULT || op == IR_CAUSAL_CONV ||
                 (ir_op_info[op].flags & IRF_SEQ);
    if (in->slot[i].live && ((fn->kind == IR_FN_CELL && seq_op) ||
                             (fn->kind == IR_FN_MODEL && op == IR_STATE && fn->states.n == 0))) {
      diag_error(r->de, fn->nodes.v[i].loc, "internal error in interp: %s in a %s",
                 ir_op_info[op].text, fn->kind == IR_FN_CELL ? "cell" : "model");
      return -1;
    }
  }
  if (alloc_slots(r, in) || eval_invariants(r, in)) return -1;
  *out = in;
  return 0;
}

/* ---- Finite checks (InterpOptions.check_finite) -------------------------------- */

/* The earliest non-finite value seen so far: ordered by time step, then by
 * kind (an input before the outputs it poisons), then by batch example, so
 * the report names where a NaN first enters, not where it was noticed. */
typedef struct NonFinite {
  int found;
  int64_t t, b, j;
  int kind; /* 0 input, 1 output */
  int index;
  double v;
} NonFinite;

static void nonfinite_scan(NonFinite *nf, const double *d, int64_t len, int64_t width, int64_t b,
                           int kind, int index) {
  for (int64_t t = 0; t < len; t++) {
    if (nf->found && (t > nf->t || (t == nf->t && kind > nf->kind))) return;
    for (int64_t j = 0; j < width; j++) {
      double v = d[t * width + j];
      if (isfinite(v)) continue;
      if (nf->found && t == nf->t && kind == nf->kind && b > nf->b) return;
      *nf = (NonFinite){1, t, b, j, kind, index, v};
      return;
    }
  }
}

static int nonfinite_report(const IrFunc *root, const NonFinite *nf, DiagEngine *de) {
  const char *kind = nf->kind == 0 ? "input" : "output";
  const char *name =
      nf->kind == 0 ? root->inputs.v[nf->index].name : root->outputs.v[nf->index].name;
  SrcLoc loc = nf->kind == 0 ? root->inputs.v[nf->index].loc : root->outputs.v[nf->index].loc;
  diag_error(de, loc,
             "%s '%s' is not finite first at time step %lld (batch %lld, element %lld: %s)", kind,
             name, (long long)nf->t, (long long)nf->b, (long long)nf->j,
             isnan(nf->v) ? "nan"
             : nf->v > 0  ? "inf"
                          : "-inf");
  return -1;
}

/* Final states are checked after the whole batch: they have no time step. */
static int nonfinite_states(const IrBinding *b, const RtTensor *state_out, DiagEngine *de) {
  for (int i = 0; state_out && i < b->flat.states.n; i++) {
    const RtTensor *t = &state_out[i];
    int64_t n = rt_numel(t);
    for (int64_t j = 0; j < n; j++) {
      double v = t->dtype == RT_F32 ? ((const float *)t->data)[j] : ((const double *)t->data)[j];
      if (isfinite(v)) continue;
      int64_t per = t->shape[0] > 0 ? n / t->shape[0] : 1;
      diag_error(de, b->flat.states.v[i].loc,
                 "final state '%s' is not finite (batch %lld, element %lld: %s)",
                 b->flat.states.v[i].name, (long long)(j / per), (long long)(j % per),
                 isnan(v) ? "nan"
                 : v > 0  ? "inf"
                          : "-inf");
      return -1;
    }
  }
  return 0;
}

/* ---- Running an instance over one sequence ------------------------------------- */

static double tensor_get(const RtTensor *t, int64_t i) {
  switch (t->dtype) {
  case RT_F32:
    return ((const float *)t->data)[i];
  case RT_F64:
    return ((const double *)t->data)[i];
  case RT_I32:
    return ((const int32_t *)t->data)[i];
  case RT_I64:
    return (double)((const int64_t *)t->data)[i];
  default:
    return NAN;
  }
}

static void tensor_put(RtTensor *t, int64_t i, double v) {
  if (t->dtype == RT_F32)
    ((float *)t->data)[i] = (float)v;
  else
    ((double *)t->data)[i] = v;
}

static void state_init(Run *r, Inst *in, int k) {
  const IrState *st = &in->fn->states.v[k];
  Val *sv = &in->state_val[k];
  int64_t w = val_width(sv);
  const RtTensor *given = r->state_in ? &r->state_in[in->state_flat[k]] : NULL;
  if (given && given->data) {
    for (int64_t j = 0; j < w; j++) sv->d[j] = tensor_get(given, r->b * w + j);
    if (!r->f64) round_f32(sv->d, w);
  } else if (st->init >= 0) {
    broadcast_copy(&in->slot[st->init].v, sv);
  } else {
    memset(sv->d, 0, (size_t)w * sizeof(double));
  }
}

static void state_final(Run *r, Inst *in, int k) {
  if (!r->state_out) return;
  RtTensor *t = &r->state_out[in->state_flat[k]];
  int64_t w = val_width(&in->state_val[k]);
  for (int64_t j = 0; j < w; j++) tensor_put(t, r->b * w + j, in->state_val[k].d[j]);
}

static int run_inst(Run *r, Inst *in, const Seq *ins, int64_t len, int reverse);

static int run_cell(Run *r, Inst *in, const Seq *ins, int64_t len, int reverse) {
  const IrFunc *fn = in->fn;
  for (int k = 0; k < fn->states.n; k++) state_init(r, in, k);
  for (int64_t step = 0; step < len; step++) {
    int64_t t = reverse ? len - 1 - step : step;
    r->t = t;
    for (int i = 0; i < fn->nodes.n; i++) {
      Slot *s = &in->slot[i];
      if (!s->live || !s->varying) continue;
      const IrNode *nd = &fn->nodes.v[i];
      if (nd->op == IR_INPUT) {
        s->v.d = ins[nd->index].d + t * ins[nd->index].stride;
      } else if (nd->op == IR_STATE) {
        /* A copy, not a view: the state storage is overwritten at the end of
         * the step while other states' next values may still read it. */
        memcpy(s->v.d, in->state_val[nd->index].d, (size_t)val_width(&s->v) * sizeof(double));
      } else if (eval_at(r, in, i, 0)) {
        return -1;
      }
    }
    for (int k = 0; k < fn->outputs.n; k++)
      memcpy(in->out_seq[k] + t * in->out_width[k], in->slot[fn->outputs.v[k].value].v.d,
             (size_t)in->out_width[k] * sizeof(double));
    /* Every next value is computed before any state is stored. */
    for (int k = 0; k < fn->states.n; k++)
      memcpy(in->state_val[k].d, in->slot[fn->states.v[k].next].v.d,
             (size_t)val_width(&in->state_val[k]) * sizeof(double));
  }
  for (int k = 0; k < fn->states.n; k++) state_final(r, in, k);
  return 0;
}

/* Depthwise causal convolution over a sequence (Mamba's conv1d):
 * out[t] = b + sum_k w[:, k] * u[t - K + 1 + k], with u = 0 before t = 0,
 * or with a fourth operand s0 [D, K-1] (a window state's value entering the
 * sequence) u[t] = s0[:, K - 1 + t] there. */
static void causal_conv(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  const Slot *u = &in->slot[nd->args[0]], *w = &in->slot[nd->args[1]], *b = &in->slot[nd->args[2]];
  const Slot *s0 = nd->nargs > 3 ? &in->slot[nd->args[3]] : NULL;
  int64_t D = s->v.n, K = w->v.shape[w->v.rank - 1];
  for (int64_t t = 0; t < len; t++) {
    double *o = s->v.d + t * s->stride;
    for (int64_t d = 0; d < D; d++) {
      double acc = b->v.d[d];
      for (int64_t k = 0; k < K; k++) {
        int64_t at = t - K + 1 + k;
        if (at >= 0)
          acc += w->v.d[d * K + k] * u->v.d[at * u->stride + d];
        else if (s0)
          acc += w->v.d[d * K + k] * s0->v.d[d * (K - 1) + K - 1 + at];
      }
      o[d] = acc;
    }
    if (!r->f64) round_f32(o, D);
  }
}

/* A cell's parallel form (passes/scan.c), evaluated as its definition:
 * SCAN h_t = a_t * h_{t-1} + b_t, SCAN_MAX h_t = max(a_t + h_{t-1}, b_t),
 * with h_{-1} the initial value at position 0, over positions [0, len). The
 * product (sum) and the sum (max) are rounded separately in float32 mode,
 * as the cell's ops would be, so the parallel form agrees with the step
 * form to the bit when the step is written a * h + b. */
static void scan(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  const Slot *a = &in->slot[nd->args[0]], *b = &in->slot[nd->args[1]], *h0 = &in->slot[nd->args[2]];
  int maxplus = nd->op == IR_SCAN_MAX;
  Val av = a->v;
  const Val *avp[1] = {&av};
  for (int64_t t = 0; t < len; t++) {
    Val prev = s->v, bv = b->v, o = s->v;
    prev.d = t ? s->v.d + (t - 1) * s->stride : h0->v.d;
    av.d = a->v.d + t * a->stride;
    bv.d = b->v.d + t * b->stride;
    o.d = s->v.d + t * s->stride;
    BIter it;
    biter_init(&it, &o, 1, avp);
    for (int64_t j = 0; j < o.n; j++, biter_next(&it)) {
      if (o.cplx) {
        double complex p;
        complex_binary(IR_MUL, cget(&av, it.off[0]), !av.cplx, cget(&prev, j), 0, &p);
        double pp[2] = {creal(p), cimag(p)};
        if (!r->f64) round_f32(pp, 2);
        double complex q = cmk(pp[0], pp[1]) + cget(&bv, j);
        cput(&o, j, q);
        if (!r->f64) round_f32(o.d + 2 * j, 2);
      } else if (maxplus) {
        double p = av.d[it.off[0]] + prev.d[j];
        if (!r->f64) p = (double)(float)p;
        o.d[j] = real_binary(IR_MAX, p, bv.d[j]);
      } else {
        double p = av.d[it.off[0]] * prev.d[j];
        if (!r->f64) p = (double)(float)p;
        o.d[j] = p + bv.d[j];
        if (!r->f64) o.d[j] = (double)(float)o.d[j];
      }
    }
  }
}

/* DELAY: position t holds x at t - 1, position 0 the initial value. */
static void delay(Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  const Slot *x = &in->slot[nd->args[0]], *x0 = &in->slot[nd->args[1]];
  size_t bytes = (size_t)val_width(&s->v) * sizeof(double);
  for (int64_t t = 0; t < len; t++)
    memcpy(s->v.d + t * s->stride, t ? x->v.d + (t - 1) * x->stride : x0->v.d, bytes);
}

/* WINDOW: at step t, the entries [t*m, t*m + n) along the axis of the
 * stream w0 (n entries), v_0 (m), v_1 (m), ...: what a shift register
 * `w' = concat(w[m:], v)` holds entering step t; "after" (index 1), those
 * from (t+1)*m: what it holds leaving step t. */
static void window(Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  const Slot *v = &in->slot[nd->args[0]], *w0 = &in->slot[nd->args[1]];
  int64_t outer, inner; /* inner in doubles */
  axis_split(&s->v, nd->axis, &outer, &inner);
  int64_t n = s->v.shape[nd->axis], m = v->v.shape[nd->axis];
  for (int64_t t = 0; t < len; t++) {
    double *o = s->v.d + t * s->stride;
    for (int64_t j = 0; j < n; j++) {
      int64_t p = (t + (nd->index ? 1 : 0)) * m + j; /* index into the stream */
      const double *src;
      int64_t at, extent;
      if (p < n) {
        src = w0->v.d;
        at = p;
        extent = n;
      } else {
        src = v->v.d + ((p - n) / m) * v->stride;
        at = (p - n) % m;
        extent = m;
      }
      for (int64_t q = 0; q < outer; q++)
        memcpy(o + (q * n + j) * inner, src + (q * extent + at) * inner,
               (size_t)inner * sizeof(double));
    }
  }
}

/* A matrix state's chunkwise-parallel form (passes/chunk.c), evaluated as
 * its definition, step by step: S_t = S_{t-1} * exp(lg_t) along K +
 * v_t k_t^T per lead slice, and LINATTN's readout sum_K S q_t after the
 * update (before it when exclusive). The state is kept in float64 and
 * rounded after each step in float32 mode, as the cell's ops would be. */
static void linattn(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  int readout = nd->op == IR_LINATTN, off = readout ? 1 : 0;
  const Slot *q = readout ? &in->slot[nd->args[0]] : NULL;
  const Slot *k = &in->slot[nd->args[off]], *v = &in->slot[nd->args[off + 1]],
             *lg = &in->slot[nd->args[off + 2]], *S0 = &in->slot[nd->args[off + 3]];
  int L = S0->v.rank - 2;
  int64_t V = S0->v.shape[L], K = S0->v.shape[L + 1], Kg = lg->v.shape[L];
  int64_t heads = V > 0 && K > 0 ? S0->v.n / (V * K) : 0;
  double *S = readout ? s->aux : NULL;
  for (int64_t t = 0; t < len; t++) {
    const double *prev = t == 0 ? S0->v.d : readout ? S : s->v.d + (t - 1) * s->stride;
    double *cur = readout ? S : s->v.d + t * s->stride;
    if (readout && t == 0) memcpy(S, S0->v.d, (size_t)S0->v.n * sizeof(double));
    const double *qt = readout ? q->v.d + t * q->stride : NULL;
    const double *kt = k->v.d + t * k->stride, *vt = v->v.d + t * v->stride,
                 *gt = lg->v.d + t * lg->stride;
    double *o = readout ? s->v.d + t * s->stride : NULL;
    for (int64_t h = 0; h < heads; h++) {
      if (readout && nd->index)
        for (int64_t a = 0; a < V; a++) {
          double acc = 0;
          for (int64_t j = 0; j < K; j++) acc += prev[(h * V + a) * K + j] * qt[h * K + j];
          o[h * V + a] = acc;
        }
      for (int64_t a = 0; a < V; a++)
        for (int64_t j = 0; j < K; j++) {
          double g = exp(gt[h * Kg + (Kg == 1 ? 0 : j)]);
          double x = prev[(h * V + a) * K + j] * g + vt[h * V + a] * kt[h * K + j];
          cur[(h * V + a) * K + j] = r->f64 ? x : (double)(float)x;
        }
      if (readout && !nd->index)
        for (int64_t a = 0; a < V; a++) {
          double acc = 0;
          for (int64_t j = 0; j < K; j++) acc += cur[(h * V + a) * K + j] * qt[h * K + j];
          o[h * V + a] = acc;
        }
    }
    if (o && !r->f64) round_f32(o, heads * V);
  }
}

/* Causal softmax attention, as its definition: per lead slice h, token t's
 * output is sum_{s <= t} p_s v_s with p = softmax over s of scale q_t . k_s
 * (the largest score subtracted first). t counts processing steps, so a
 * reversed layer attends to the tokens after it. */
static void attn(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  const Slot *q = &in->slot[nd->args[0]], *k = &in->slot[nd->args[1]], *v = &in->slot[nd->args[2]];
  int L = q->v.rank - 1;
  int64_t K = q->v.shape[L], V = v->v.shape[L];
  int64_t heads = K > 0 ? q->v.n / K : V > 0 ? v->v.n / V : 0;
  double scale = nd->index ? nd->cval : K > 0 ? 1.0 / sqrt((double)K) : 1.0;
  for (int64_t t = 0; t < len; t++) {
    const double *qt = q->v.d + t * q->stride;
    double *o = s->v.d + t * s->stride;
    for (int64_t h = 0; h < heads; h++) {
      double m = -INFINITY, sum = 0;
      for (int64_t u = 0; u <= t; u++) {
        const double *ku = k->v.d + u * k->stride + h * K;
        double dot = 0;
        for (int64_t j = 0; j < K; j++) dot += qt[h * K + j] * ku[j];
        if (scale * dot > m) m = scale * dot;
      }
      for (int64_t a = 0; a < V; a++) o[h * V + a] = 0;
      for (int64_t u = 0; u <= t; u++) {
        const double *ku = k->v.d + u * k->stride + h * K;
        const double *vu = v->v.d + u * v->stride + h * V;
        double dot = 0;
        for (int64_t j = 0; j < K; j++) dot += qt[h * K + j] * ku[j];
        double p = exp(scale * dot - m);
        sum += p;
        for (int64_t a = 0; a < V; a++) o[h * V + a] += p * vu[a];
      }
      for (int64_t a = 0; a < V; a++) o[h * V + a] /= sum;
    }
    if (!r->f64) round_f32(o, heads * V);
  }
}

/* The delta rule (passes/delta.c), evaluated as its definition, step by
 * step: per lead slice S = exp(lg_t) S, then for each factor r
 * S = S - beta_r (S k_r - v_r) k_r^T, and DELTA's readout sum_K S q_t. The
 * state is kept in float64 and rounded after each factor in float32 mode,
 * as the cell's ops would be. */
static void delta(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  int readout = nd->op == IR_DELTA, off = readout ? 1 : 0;
  const Slot *q = readout ? &in->slot[nd->args[0]] : NULL;
  const Slot *k = &in->slot[nd->args[off]], *v = &in->slot[nd->args[off + 1]],
             *beta = &in->slot[nd->args[off + 2]], *lg = &in->slot[nd->args[off + 3]],
             *S0 = &in->slot[nd->args[off + 4]];
  int L = S0->v.rank - 2;
  int64_t V = S0->v.shape[L], K = S0->v.shape[L + 1], R = k->v.shape[0];
  int64_t heads = V > 0 && K > 0 ? S0->v.n / (V * K) : 0;
  double *S = readout ? s->aux : NULL, *sk = s->aux + S0->v.n;
  for (int64_t t = 0; t < len; t++) {
    const double *prev = t == 0 ? S0->v.d : readout ? S : s->v.d + (t - 1) * s->stride;
    double *cur = readout ? S : s->v.d + t * s->stride;
    if (cur != prev) memcpy(cur, prev, (size_t)S0->v.n * sizeof(double));
    const double *kt = k->v.d + t * k->stride, *vt = v->v.d + t * v->stride,
                 *bt = beta->v.d + t * beta->stride, *gt = lg->v.d + t * lg->stride;
    for (int64_t h = 0; h < heads; h++) {
      double *Sh = cur + h * V * K, g = exp(gt[h]);
      for (int64_t e = 0; e < V * K; e++) Sh[e] *= g;
      for (int64_t f = 0; f < R; f++) {
        const double *kr = kt + (f * heads + h) * K, *vr = vt + (f * heads + h) * V;
        double b = bt[f * heads + h];
        for (int64_t a = 0; a < V; a++) {
          double acc = 0;
          for (int64_t j = 0; j < K; j++) acc += Sh[a * K + j] * kr[j];
          sk[a] = b * (acc - vr[a]);
        }
        for (int64_t a = 0; a < V; a++)
          for (int64_t j = 0; j < K; j++) {
            double x = Sh[a * K + j] - sk[a] * kr[j];
            Sh[a * K + j] = r->f64 ? x : (double)(float)x;
          }
      }
    }
    if (readout) {
      const double *qt = q->v.d + t * q->stride;
      double *o = s->v.d + t * s->stride;
      for (int64_t h = 0; h < heads; h++)
        for (int64_t a = 0; a < V; a++) {
          double acc = 0;
          for (int64_t j = 0; j < K; j++) acc += cur[(h * V + a) * K + j] * qt[h * K + j];
          o[h * V + a] = acc;
        }
      if (!r->f64) round_f32(o, heads * V);
    }
  }
}

/* The generalized delta rule (passes/delta.c), evaluated as its definition,
 * step by step: per lead slice S = S diag(exp(lw_t)) + (S a_t) b_t^T +
 * v_t k_t^T, S a_t read before the update, and DPLR's readout sum_K S q_t.
 * The state is kept in float64 and rounded after each step in float32 mode,
 * as the cell's ops would be. */
static void dplr(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  int readout = nd->op == IR_DPLR, off = readout ? 1 : 0;
  const Slot *q = readout ? &in->slot[nd->args[0]] : NULL;
  const Slot *lw = &in->slot[nd->args[off]], *av = &in->slot[nd->args[off + 1]],
             *bv = &in->slot[nd->args[off + 2]], *v = &in->slot[nd->args[off + 3]],
             *k = &in->slot[nd->args[off + 4]], *S0 = &in->slot[nd->args[off + 5]];
  int L = S0->v.rank - 2;
  int64_t V = S0->v.shape[L], K = S0->v.shape[L + 1];
  int64_t heads = V > 0 && K > 0 ? S0->v.n / (V * K) : 0;
  double *S = readout ? s->aux : NULL, *sa = s->aux + S0->v.n;
  for (int64_t t = 0; t < len; t++) {
    const double *prev = t == 0 ? S0->v.d : readout ? S : s->v.d + (t - 1) * s->stride;
    double *cur = readout ? S : s->v.d + t * s->stride;
    if (cur != prev) memcpy(cur, prev, (size_t)S0->v.n * sizeof(double));
    const double *wt = lw->v.d + t * lw->stride, *at = av->v.d + t * av->stride,
                 *bt = bv->v.d + t * bv->stride, *vt = v->v.d + t * v->stride,
                 *kt = k->v.d + t * k->stride;
    for (int64_t h = 0; h < heads; h++) {
      double *Sh = cur + h * V * K;
      const double *ah = at + h * K, *bh = bt + h * K, *kh = kt + h * K, *vh = vt + h * V;
      for (int64_t x = 0; x < V; x++) {
        double acc = 0;
        for (int64_t j = 0; j < K; j++) acc += Sh[x * K + j] * ah[j];
        sa[x] = acc;
      }
      for (int64_t x = 0; x < V; x++)
        for (int64_t j = 0; j < K; j++) {
          double y = Sh[x * K + j] * exp(wt[h * K + j]) + sa[x] * bh[j] + vh[x] * kh[j];
          Sh[x * K + j] = r->f64 ? y : (double)(float)y;
        }
    }
    if (readout) {
      const double *qt = q->v.d + t * q->stride;
      double *o = s->v.d + t * s->stride;
      for (int64_t h = 0; h < heads; h++)
        for (int64_t x = 0; x < V; x++) {
          double acc = 0;
          for (int64_t j = 0; j < K; j++) acc += cur[(h * V + x) * K + j] * qt[h * K + j];
          o[h * V + x] = acc;
        }
      if (!r->f64) round_f32(o, heads * V);
    }
  }
}

/* A small dense transition (passes/transition.c; pLSTM), evaluated as its
 * definition, step by step: per lead slice S[j] = sum_j' tr_t[j, j'] S[j'] +
 * s_t[j] v_t k_t^T from the state before the token, and PLSTM's readout
 * sum_j m_t[j] S[j] q_t after the update (before it when exclusive). The
 * state is kept in float64 and rounded after each step in float32 mode, as
 * the cell's ops would be. */
static void plstm(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  int readout = nd->op == IR_PLSTM, off = readout ? 2 : 0;
  const Slot *q = readout ? &in->slot[nd->args[0]] : NULL;
  const Slot *m = readout ? &in->slot[nd->args[1]] : NULL;
  const Slot *tr = &in->slot[nd->args[off]], *sv = &in->slot[nd->args[off + 1]],
             *v = &in->slot[nd->args[off + 2]], *k = &in->slot[nd->args[off + 3]],
             *S0 = &in->slot[nd->args[off + 4]];
  int L = S0->v.rank - 3;
  int64_t J = S0->v.shape[L], V = S0->v.shape[L + 1], K = S0->v.shape[L + 2], W = V * K;
  int64_t heads = J > 0 && W > 0 ? S0->v.n / (J * W) : 0;
  /* aux: the running state (a readout's), then the new state being built. */
  double *S = readout ? s->aux : NULL, *nx = s->aux + S0->v.n;
  for (int64_t t = 0; t < len; t++) {
    const double *prev = t == 0 ? S0->v.d : readout ? S : s->v.d + (t - 1) * s->stride;
    double *cur = readout ? S : s->v.d + t * s->stride;
    const double *trt = tr->v.d + t * tr->stride, *st = sv->v.d + t * sv->stride,
                 *vt = v->v.d + t * v->stride, *kt = k->v.d + t * k->stride;
    double *o = readout ? s->v.d + t * s->stride : NULL;
    const double *qt = readout ? q->v.d + t * q->stride : NULL;
    const double *mt = readout ? m->v.d + t * m->stride : NULL;
    for (int64_t h = 0; h < heads; h++) {
      const double *Ph = prev + h * J * W, *Th = trt + h * J * J, *qh = qt ? qt + h * K : NULL;
      double *Ch = cur + h * J * W;
      if (readout && nd->index == 1) /* exclusive: read the state entering the step */
        for (int64_t x = 0; x < V; x++) {
          double acc = 0;
          for (int64_t j = 0; j < J; j++)
            for (int64_t c = 0; c < K; c++) acc += mt[h * J + j] * Ph[j * W + x * K + c] * qh[c];
          o[h * V + x] = acc;
        }
      for (int64_t j = 0; j < J; j++)
        for (int64_t x = 0; x < V; x++)
          for (int64_t c = 0; c < K; c++) {
            double y = st[h * J + j] * vt[h * V + x] * kt[h * K + c];
            for (int64_t jj = 0; jj < J; jj++) y += Th[j * J + jj] * Ph[jj * W + x * K + c];
            nx[j * W + x * K + c] = r->f64 ? y : (double)(float)y;
          }
      memcpy(Ch, nx, (size_t)(J * W) * sizeof(double));
      if (readout && nd->index != 1)
        for (int64_t x = 0; x < V; x++) {
          double acc = 0;
          for (int64_t j = 0; j < J; j++)
            for (int64_t c = 0; c < K; c++) acc += mt[h * J + j] * Ch[j * W + x * K + c] * qh[c];
          o[h * V + x] = acc;
        }
    }
    if (readout && !r->f64) round_f32(o, heads * V);
  }
}

/* ---- Newton ---------------------------------------------------------------------- */

/* A call of a Newton layer (IrLayer.newton): the n solved states' values
 * h_k[t] = F_k(x_t, h[t-1]) over positions [0, len), h[-1] = h0, where the
 * callee computes F and the blocks J_kj = d F_k / d h_j (elementwise). This
 * is the definition of the form; a backend does the same steps:
 *
 *   guess   H = F(x, 0) at every position;
 *   step    P = delay(H, h0), F and J at P, and the new guess N from the
 *           linear recurrence N[t] = J[t] N[t-1] + F[t] - J[t] P[t],
 *           N[-1] = h0 (exact Newton when J is the whole Jacobian);
 *   stop    when every |N - H| <= atol + rtol |N|: N is the result;
 *   damp    the step D = N - H is taken as H + D; when the new guess's
 *           residual max |H - F(P)| is larger than the old one's (or not
 *           finite), as H + D/2, H + D/4, ... (4 halvings at most);
 *   give up after max_iter steps, or on a value that is not finite: the
 *           sequential recurrence gives the result (always the exact one),
 *           and the caller is told (InterpNewtonStats, and a warning).
 * Arithmetic is in double; in float32 mode the values the step stores are
 * rounded to float, as compiled code would. */
typedef struct Newton {
  Run *r;
  Inst *c;           /* the step */
  Seq *args;         /* its inputs: the caller's, then P */
  int n;             /* solved states */
  int64_t w, len, T; /* elements per state; positions; buffer stride in positions */
  const double **h0; /* per state */
  double **H, **C, **D, **P;
  int dense;       /* the step applies J to tangents TG (IrNewton.dense); J holds it whole */
  double **TG, *J; /* dense: per state [T, w]; [T, nw, nw] */
} Newton;

static int64_t nt_at(const Newton *N, int k, int64_t t) {
  return (int64_t)k * N->T * N->w + t * N->w;
}

/* F and J at P = delay(X, h0) (X NULL: P = 0); the residual max |X - F|. */
static int nt_eval(Newton *N, double *const *X, double *resid) {
  int64_t w = N->w;
  for (int k = 0; k < N->n; k++)
    for (int64_t t = 0; t < N->len; t++) {
      double *p = N->P[k] + t * w;
      if (!X)
        memset(p, 0, (size_t)w * sizeof *p);
      else
        memcpy(p, t ? X[k] + (t - 1) * w : N->h0[k], (size_t)w * sizeof *p);
    }
  if (!N->dense || !X) { /* the guess (X NULL) needs no J */
    if (run_cell(N->r, N->c, N->args, N->len, 0)) return -1;
  } else {
    /* J column by column: the step applied to each unit tangent. */
    int64_t nw = N->n * w;
    for (int64_t c = 0; c < nw; c++) {
      for (int k = 0; k < N->n; k++)
        for (int64_t t = 0; t < N->len; t++)
          for (int64_t i = 0; i < w; i++) N->TG[k][t * w + i] = k * w + i == c;
      if (run_cell(N->r, N->c, N->args, N->len, 0)) return -1;
      for (int k = 0; k < N->n; k++) {
        const double *dF = N->c->out_seq[N->n + k];
        for (int64_t t = 0; t < N->len; t++)
          for (int64_t i = 0; i < w; i++) N->J[(t * nw + k * w + i) * nw + c] = dF[t * w + i];
      }
    }
  }
  double m = 0;
  for (int k = 0; X && k < N->n; k++) {
    const double *f = N->c->out_seq[k];
    for (int64_t i = 0; i < N->len * w; i++) {
      double d = fabs(X[k][i] - f[i]);
      if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
  }
  *resid = m;
  return 0;
}

/* The new guess into D from F, J at P: the linear recurrence, per element
 * (per position with a dense J). */
static void nt_linear(Newton *N) {
  int n = N->n;
  int64_t w = N->w;
  double *const *out = N->c->out_seq;
  if (N->dense) {
    int64_t nw = n * w;
    for (int64_t t = 0; t < N->len; t++)
      for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < w; i++) {
          const double *Jr = N->J + (t * nw + k * w + i) * nw;
          double acc = out[k][t * w + i];
          for (int j = 0; j < n; j++)
            for (int64_t c = 0; c < w; c++) {
              double prev = t ? N->D[j][(t - 1) * w + c] : N->h0[j][c];
              acc += Jr[j * w + c] * (prev - N->P[j][t * w + c]);
            }
          /* Position t reads only t - 1. */
          N->D[k][t * w + i] = N->r->f64 ? acc : (double)(float)acc;
        }
    return;
  }
  for (int64_t t = 0; t < N->len; t++)
    for (int64_t i = 0; i < w; i++) {
      int64_t at = t * w + i;
      double v[8];
      for (int k = 0; k < n; k++) {
        double acc = out[k][at];
        for (int j = 0; j < n; j++) {
          double J = out[n + k * n + j][at];
          double prev = t ? N->D[j][at - w] : N->h0[j][i];
          acc += J * (prev - N->P[j][at]);
        }
        v[k] = N->r->f64 ? acc : (double)(float)acc;
      }
      for (int k = 0; k < n; k++) N->D[k][at] = v[k];
    }
}

/* h[t] = F(x_t, h[t-1]) one position at a time: the sequential form. */
/* Steps [t0, len) by the step loop, from the solve's values before t0. */
static int nt_sequential(Newton *N, int64_t t0) {
  int ni = N->c->fn->inputs.n, m = ni - N->n * (N->dense ? 2 : 1);
  Seq *one = N->args + ni; /* scratch after the arguments (alloc_slots) */
  for (int64_t t = t0; t < N->len; t++) {
    for (int i = 0; i < m; i++) one[i] = (Seq){N->args[i].d + t * N->args[i].stride, 0};
    for (int k = 0; k < N->n; k++)
      one[m + k] = (Seq){t ? N->H[k] + (t - 1) * N->w : (double *)N->h0[k], 0};
    for (int k = 0; N->dense && k < N->n; k++) one[m + N->n + k] = (Seq){N->TG[k], 0};
    if (run_cell(N->r, N->c, one, 1, 0)) return -1;
    for (int k = 0; k < N->n; k++)
      memcpy(N->H[k] + t * N->w, N->c->out_seq[k], (size_t)N->w * sizeof(double));
  }
  return 0;
}

/* One window of the solve: positions [0, N->len) from N->h0 (the caller has
 * pointed H, h0 and the per-token arguments at the window). */
static int nt_window(Newton *N, const IrNode *nd, const IrNewton *opt, int64_t w0,
                     int64_t len_all) {
  Run *r = N->r;
  int n = N->n;
  int64_t len = N->len;
  double **H = N->H, **C = N->C, **D = N->D;
  /* The guess, and F and J at it. */
  double res;
  if (nt_eval(N, NULL, &res)) return -1;
  for (int k = 0; k < n; k++) memcpy(H[k], N->c->out_seq[k], (size_t)(len * N->w) * sizeof(double));
  if (nt_eval(N, H, &res)) return -1;
  int it = 0, converged = 0, damped = 0;
  double err = INFINITY;
  int64_t t0 = 0; /* the first step the last test failed at */
  while (it < opt->max_iter && isfinite(res)) {
    it++;
    nt_linear(N);
    err = 0;
    t0 = len;
    for (int k = 0; k < n; k++)
      for (int64_t j = 0; j < len * N->w; j++) {
        double e = fabs(D[k][j] - H[k][j]) / (opt->atol + opt->rtol * fabs(D[k][j]));
        if (!(e <= err)) err = isnan(e) ? INFINITY : e;
        if (!(e <= 1) && j / N->w < t0) t0 = j / N->w;
      }
    if (err <= 1) {
      for (int k = 0; k < n; k++) memcpy(H[k], D[k], (size_t)(len * N->w) * sizeof(double));
      converged = 1;
      break;
    }
    if (!isfinite(err)) break;
    for (int k = 0; k < n; k++)
      for (int64_t j = 0; j < len * N->w; j++) D[k][j] -= H[k][j];
    double lam = 1, rc = INFINITY;
    for (int h = 0;; h++) {
      for (int k = 0; k < n; k++)
        for (int64_t j = 0; j < len * N->w; j++) {
          double v = H[k][j] + lam * D[k][j];
          C[k][j] = r->f64 ? v : (double)(float)v;
        }
      if (nt_eval(N, C, &rc)) return -1;
      if ((isfinite(rc) && rc <= res) || h == 4) break;
      lam *= 0.5;
      damped++;
    }
    for (int k = 0; k < n; k++) memcpy(H[k], C[k], (size_t)(len * N->w) * sizeof(double));
    res = rc;
  }
  InterpNewtonStats *st = r->newton;
  if (st) {
    st->solves++;
    st->damped += damped;
    if (converged) {
      st->hist[it < INTERP_NEWTON_HIST - 1 ? it : INTERP_NEWTON_HIST - 1]++;
      if (it > st->max_iter) st->max_iter = it;
    }
  }
  if (converged) return 0;
  /* The steps before the first that failed the last test passed it: they
   * are kept, and the step loop runs from there to the window's end. */
  if (t0 > len) t0 = len;
  if (st) {
    st->fallbacks++;
    st->fallback_steps += len - t0;
  }
  diag_report(r->de, DIAG_WARNING, nd->loc,
              "Newton did not converge (example %lld: %d iterations, last step %.3g of the "
              "tolerance%s); the sequential form ran from step %lld to %lld of %lld",
              (long long)r->b, it, err, damped ? ", damped" : "", (long long)(w0 + t0),
              (long long)(w0 + len), (long long)len_all);
  return nt_sequential(N, t0);
}

/* The solve over positions [0, len), in windows of opt->window positions
 * (all of them when 0), each from the last value of the one before. */
static int newton_solve(Run *r, Inst *in, int i, int64_t len) {
  const IrNode *nd = &in->fn->nodes.v[i];
  const IrNewton *opt = &in->fn->layers.v[nd->index].newton;
  Slot *s = &in->slot[i];
  Newton N;
  memset(&N, 0, sizeof N);
  N.r = r;
  N.c = in->child[nd->index];
  N.n = opt->states;
  N.w = val_width(&s->v);
  N.T = r->T;
  int n = N.n, ni = N.c->fn->inputs.n, m = nd->nargs - n;
  const double *h0[4];
  double *H[4], *C[4], *D[4], *P[4], *TG[4];
  if (n > 4) {
    diag_error(r->de, nd->loc, "internal error in interp: more than 4 states in one Newton solve");
    return -1;
  }
  Seq *args = s->seqargs, *base = args + 2 * ni; /* alloc_slots */
  memcpy(base, args, (size_t)m * sizeof *args);
  for (int k = 0; k < n; k++) {
    C[k] = s->aux + nt_at(&N, k, 0);
    D[k] = s->aux + nt_at(&N, n + k, 0);
    P[k] = s->aux + nt_at(&N, 2 * n + k, 0);
    args[m + k] = (Seq){P[k], N.w};
    if (opt->dense) {
      TG[k] = s->aux + nt_at(&N, 3 * n + k, 0);
      args[m + n + k] = (Seq){TG[k], N.w};
    }
  }
  N.args = args, N.h0 = h0, N.H = H, N.C = C, N.D = D, N.P = P;
  N.dense = opt->dense;
  N.TG = TG;
  N.J = s->aux + nt_at(&N, 4 * n, 0);
  int64_t win = opt->window > 0 ? opt->window : len;
  for (int64_t w0 = 0; w0 < len; w0 += win) {
    N.len = len - w0 < win ? len - w0 : win;
    for (int j = 0; j < m; j++) args[j] = (Seq){base[j].d + w0 * base[j].stride, base[j].stride};
    for (int k = 0; k < n; k++) {
      H[k] = s->outs[k] + w0 * N.w;
      h0[k] = w0 ? H[k] - N.w : in->slot[nd->args[m + k]].v.d;
    }
    if (nt_window(&N, nd, opt, w0, len)) return -1;
  }
  return 0;
}

/* A layer run over a context's positions (IrLayer.over), call node i: the
 * child runs over its N positions, its per-step inputs read from the
 * per-sequence arguments position by position, its contexts as they are;
 * its outputs become one value for the whole sequence (stride 0). */
static int run_over(Run *r, Inst *in, int i) {
  const IrNode *nd = &in->fn->nodes.v[i];
  Slot *s = &in->slot[i];
  Inst *c = in->child[nd->index];
  Seq *args = s->seqargs;
  const IrLayer *ly = &in->fn->layers.v[nd->index];
  for (int k = 0; k < c->fn->inputs.n; k++) {
    int ctx = c->fn->inputs.v[k].context;
    Val want;
    if (shape_val(c, c->fn->inputs.v[k].type, &want)) return -1;
    args[k] = (Seq){in->slot[nd->args[k]].v.d, ctx ? 0 : val_width(&want)};
  }
  /* Each example's length, from its int context (all N positions without). */
  int64_t len = c->T;
  if (ly->over_lengths) {
    double v = in->slot[nd->args[nd->nargs - 1]].v.d[0];
    if (!(v >= 0 && v <= (double)c->T) || v != (double)(int64_t)v) {
      diag_error(r->de, nd->loc,
                 "lengths of layer '%s' for example %lld: %g is outside [0, %lld], the positions "
                 "it runs over",
                 ly->name, (long long)r->b, v, (long long)c->T);
      return -1;
    }
    len = (int64_t)v;
  }
  int64_t T = r->T;
  r->T = c->T;
  int rc = run_inst(r, c, args, len, ly->reverse);
  r->T = T;
  if (rc) return -1;
  for (int k = 0; k < c->fn->outputs.n; k++)
    memcpy(s->outs[k], c->out_seq[k], (size_t)(c->T * c->out_width[k]) * sizeof(double));
  s->stride = 0;
  return 0;
}

static int run_model(Run *r, Inst *in, const Seq *ins, int64_t len) {
  const IrFunc *fn = in->fn;
  /* A model's own states (a cell's parallel form): the value entering the
   * sequence; the final value is `next` at the sequence's last step. */
  for (int k = 0; k < fn->states.n; k++) state_init(r, in, k);
  for (int i = 0; i < fn->nodes.n; i++) {
    Slot *s = &in->slot[i];
    if (!s->live || !s->varying) continue;
    const IrNode *nd = &fn->nodes.v[i];
    switch (nd->op) {
    case IR_INPUT:
      s->v.d = ins[nd->index].d;
      s->stride = ins[nd->index].stride;
      break;
    case IR_CALL: {
      Inst *c = in->child[nd->index];
      Seq *args = s->seqargs;
      for (int k = 0; k < nd->nargs; k++)
        args[k] = (Seq){in->slot[nd->args[k]].v.d, in->slot[nd->args[k]].stride};
      if (in->fn->layers.v[nd->index].over) {
        if (run_over(r, in, i)) return -1;
        break;
      }
      if (in->fn->layers.v[nd->index].newton.states > 0) {
        if (newton_solve(r, in, i, len)) return -1;
        break;
      }
      if (run_inst(r, c, args, len, in->fn->layers.v[nd->index].reverse)) return -1;
      for (int k = 0; k < c->fn->outputs.n; k++)
        memcpy(s->outs[k], c->out_seq[k], (size_t)(r->T * c->out_width[k]) * sizeof(double));
      break;
    }
    case IR_RESULT:
      s->v.d = in->slot[nd->args[0]].outs[nd->index];
      break;
    case IR_CAUSAL_CONV:
      causal_conv(r, in, i, len);
      break;
    case IR_STATE:
      memcpy(s->v.d, in->state_val[nd->index].d, (size_t)val_width(&s->v) * sizeof(double));
      break;
    case IR_SCAN:
    case IR_SCAN_MAX:
      scan(r, in, i, len);
      break;
    case IR_DELAY:
      delay(in, i, len);
      break;
    case IR_WINDOW:
      window(in, i, len);
      break;
    case IR_LINATTN:
    case IR_LINATTN_STATE:
      linattn(r, in, i, len);
      break;
    case IR_DELTA:
    case IR_DELTA_STATE:
      delta(r, in, i, len);
      break;
    case IR_DPLR:
    case IR_DPLR_STATE:
      dplr(r, in, i, len);
      break;
    case IR_PLSTM:
    case IR_PLSTM_STATE:
      plstm(r, in, i, len);
      break;
    case IR_ATTN:
      attn(r, in, i, len);
      break;
    default:
      /* A value the same at every position is computed once, even for a
       * sequence of length 0 (a layer run over a context may read it). */
      for (int64_t t = 0; t < (s->per_seq ? 1 : len); t++) {
        r->t = t;
        if (eval_at(r, in, i, t)) return -1;
      }
      break;
    }
  }
  for (int k = 0; k < fn->outputs.n; k++) {
    const Slot *s = &in->slot[fn->outputs.v[k].value];
    int64_t w = in->out_width[k];
    for (int64_t t = 0; t < len; t++)
      memcpy(in->out_seq[k] + t * w, s->v.d + t * s->stride, (size_t)w * sizeof(double));
  }
  for (int k = 0; k < fn->states.n; k++) {
    const Slot *nx = &in->slot[fn->states.v[k].next];
    if (len > 0)
      memcpy(in->state_val[k].d, nx->v.d + (len - 1) * nx->stride,
             (size_t)val_width(&in->state_val[k]) * sizeof(double));
    state_final(r, in, k);
  }
  /* A layer no node calls still has states: their final value is the initial one. */
  for (int l = 0; l < fn->layers.n; l++)
    if (!in->called[l] && run_inst(r, in->child[l], in->child[l]->no_inputs, 0, 0)) return -1;
  return 0;
}

/* Runs an instance over positions [0, len) of its input sequences, writing
 * its outputs' sequences (zero from len on) and its final states. */
static int run_inst(Run *r, Inst *in, const Seq *ins, int64_t len, int reverse) {
  for (int k = 0; k < in->fn->outputs.n; k++)
    memset(in->out_seq[k], 0, (size_t)(in->T * in->out_width[k]) * sizeof(double));
  if (in->fn->kind == IR_FN_CELL) return run_cell(r, in, ins, len, reverse);
  if (!reverse || !in->rev_inputs) return run_model(r, in, ins, len);
  /* A model run backwards in time: its inputs reversed within the length,
   * run forwards, and its outputs put back at the positions they came from. */
  for (int k = 0; k < in->fn->inputs.n; k++) {
    int64_t w = in->rev_inputs[k].stride;
    for (int64_t t = 0; t < len; t++)
      memcpy(in->rev_inputs[k].d + t * w, ins[k].d + (len - 1 - t) * ins[k].stride,
             (size_t)w * sizeof(double));
  }
  if (run_model(r, in, in->rev_inputs, len)) return -1;
  for (int k = 0; k < in->fn->outputs.n; k++) {
    int64_t w = in->out_width[k];
    double *o = in->out_seq[k];
    for (int64_t t = 0; t < len / 2; t++)
      for (int64_t j = 0; j < w; j++) {
        double tmp = o[t * w + j];
        o[t * w + j] = o[(len - 1 - t) * w + j];
        o[(len - 1 - t) * w + j] = tmp;
      }
  }
  return 0;
}

/* ---- The entry point -------------------------------------------------------------- */

static const char *shape_text(Arena *a, int ndim, const int64_t *shape) {
  const char *s = "[";
  for (int i = 0; i < ndim && s; i++)
    s = arena_printf(a, "%s%s%lld", s, i ? ", " : "", (long long)shape[i]);
  s = s ? arena_printf(a, "%s]", s) : NULL;
  return s ? s : "?";
}

/* The tensor shape of a batch of values of type t: lead (B or B, T), the
 * per-example dims, and a trailing 2 for complex. Returns the rank or -1. */
static int batch_shape(const IrBinding *b, IrType t, int nlead, const int64_t *lead,
                       int64_t *shape) {
  int64_t per[SEQ_MAX_RANK];
  if (ir_binding_shape(b, t, per)) return -1;
  int n = 0;
  for (int i = 0; i < nlead; i++) shape[n++] = lead[i];
  for (int i = 0; i < t.rank; i++) {
    if (n >= RT_MAX_RANK) return -1;
    shape[n++] = per[i];
  }
  if (t.elem == IR_COMPLEX) {
    if (n >= RT_MAX_RANK) return -1;
    shape[n++] = 2;
  }
  return n;
}

static int check_tensor(Run *r, const char *what, const char *name, SrcLoc loc, const RtTensor *t,
                        int n, const int64_t *want, int int_ok) {
  if (!t->data && rt_numel(t) != 0) {
    diag_error(r->de, loc, "%s '%s' has no data", what, name);
    return -1;
  }
  if (t->dtype != RT_F32 && t->dtype != RT_F64 &&
      !(int_ok && (t->dtype == RT_I32 || t->dtype == RT_I64))) {
    diag_error(r->de, loc, "%s '%s' has dtype %s; expected f32 or f64%s", what, name,
               rt_dtype_name(t->dtype), int_ok ? " (or i32, i64)" : "");
    return -1;
  }
  if (t->ndim != n || memcmp(t->shape, want, (size_t)n * sizeof *want) != 0) {
    diag_error(r->de, loc, "%s '%s' has shape %s but expected %s", what, name,
               shape_text(r->arena, t->ndim, t->shape), shape_text(r->arena, n, want));
    return -1;
  }
  return 0;
}

/* Everything interp_run checks before it runs anything. */
static int check_args(Run *r, int64_t B, int64_t T, const RtTensor *inputs, const int64_t *lengths,
                      const RtTensor *state_in) {
  const IrBinding *b = r->bind;
  const IrFunc *root = b->root;
  if (B < 0 || T < 0) {
    diag_error(r->de, (SrcLoc){0}, "batch size %lld and sequence length %lld must be >= 0",
               (long long)B, (long long)T);
    return -1;
  }
  for (int i = 0; i < root->dims.n; i++)
    if (b->dims[i] < 0) {
      diag_error(r->de, root->dims.v[i].loc, "cannot infer dimension '%s': pass --dims %s=N",
                 root->dims.v[i].name, root->dims.v[i].name);
      return -1;
    }
  for (int i = 0; i < b->flat.params.n; i++) {
    int64_t shape[RT_MAX_RANK];
    const IrFlatVar *p = &b->flat.params.v[i];
    int n = batch_shape(b, p->type, 0, NULL, shape);
    const RtTensor *w = &b->weights[i];
    if (!w->data || w->dtype != RT_F64 || w->ndim != n ||
        memcmp(w->shape, shape, (size_t)(n > 0 ? n : 0) * sizeof *shape) != 0) {
      diag_error(r->de, p->loc, "weight '%s' is not loaded", p->name);
      return -1;
    }
  }
  if (root->inputs.n > 0 && !inputs) {
    diag_error(r->de, root->loc, "'%s' takes %d inputs; none were given", root->name,
               root->inputs.n);
    return -1;
  }
  int64_t lead[2] = {B, T};
  for (int i = 0; i < root->inputs.n; i++) {
    const IrInput *in = &root->inputs.v[i];
    int64_t shape[RT_MAX_RANK];
    /* A context has no time axis: [B, ...]. */
    int n = batch_shape(b, in->type, in->context ? 1 : 2, lead, shape);
    if (n < 0) {
      diag_error(r->de, in->loc, "input '%s' does not fit a tensor of rank %d", in->name,
                 RT_MAX_RANK);
      return -1;
    }
    if (check_tensor(r, in->context ? "context" : "input", in->name, in->loc, &inputs[i], n, shape,
                     in->type.elem == IR_INT))
      return -1;
  }
  for (int64_t k = 0; lengths && k < B; k++)
    if (lengths[k] < 0 || lengths[k] > T) {
      diag_error(r->de, (SrcLoc){0}, "lengths[%lld] = %lld is outside [0, T] = [0, %lld]",
                 (long long)k, (long long)lengths[k], (long long)T);
      return -1;
    }
  for (int i = 0; state_in && i < b->flat.states.n; i++) {
    const IrFlatVar *sv = &b->flat.states.v[i];
    if (!state_in[i].data) continue;
    int64_t shape[RT_MAX_RANK];
    int n = batch_shape(b, sv->type, 1, &B, shape);
    if (n < 0 || check_tensor(r, "initial state", sv->name, sv->loc, &state_in[i], n, shape, 0))
      return -1;
  }
  return 0;
}

static int alloc_results(Run *r, int64_t B, int64_t T, RtTensor *outputs, RtTensor *state_out) {
  const IrBinding *b = r->bind;
  RtDType dt = r->f64 ? RT_F64 : RT_F32;
  int64_t lead[2] = {B, T};
  RtError err;
  for (int i = 0; i < b->root->outputs.n; i++) {
    const IrOutput *o = &b->root->outputs.v[i];
    int64_t shape[RT_MAX_RANK];
    int n = batch_shape(b, o->type, 2, lead, shape);
    if (n < 0) {
      diag_error(r->de, o->loc, "output '%s' does not fit a tensor of rank %d", o->name,
                 RT_MAX_RANK);
      return -1;
    }
    if (rt_tensor_alloc(&outputs[i], dt, n, shape, &err)) {
      diag_error(r->de, o->loc, "cannot allocate output '%s': %s", o->name, err.msg);
      return -1;
    }
  }
  for (int i = 0; state_out && i < b->flat.states.n; i++) {
    const IrFlatVar *sv = &b->flat.states.v[i];
    int64_t shape[RT_MAX_RANK];
    int n = batch_shape(b, sv->type, 1, &B, shape);
    if (n < 0) {
      diag_error(r->de, sv->loc, "state '%s' does not fit a tensor of rank %d", sv->name,
                 RT_MAX_RANK);
      return -1;
    }
    if (rt_tensor_alloc(&state_out[i], dt, n, shape, &err)) {
      diag_error(r->de, sv->loc, "cannot allocate final state '%s': %s", sv->name, err.msg);
      return -1;
    }
  }
  return 0;
}

int interp_run(const IrBinding *b, int64_t B, int64_t T, const RtTensor *inputs,
               const int64_t *lengths, const RtTensor *state_in, RtTensor *outputs,
               RtTensor *state_out, const InterpOptions *opt, DiagEngine *de) {
  if (!b || !b->root || !b->dims) {
    if (de) diag_error(de, (SrcLoc){0}, "interp_run: no binding (call ir_binding_init first)");
    return -1;
  }
  const IrFunc *root = b->root;
  int nout = root->outputs.n, nstate = b->flat.states.n;
  if ((nout > 0 && !outputs) || (root->inputs.n > 0 && !inputs)) {
    diag_error(de, root->loc, "interp_run: '%s' needs %d input and %d output tensors", root->name,
               root->inputs.n, nout);
    return -1;
  }
  for (int i = 0; i < nout; i++) memset(&outputs[i], 0, sizeof outputs[i]);
  for (int i = 0; state_out && i < nstate; i++) memset(&state_out[i], 0, sizeof state_out[i]);

  Run run = {0};
  Run *r = &run;
  r->bind = b;
  r->de = de;
  r->f64 = opt && opt->f64;
  r->T = T;
  r->state_in = state_in;
  r->state_out = state_out;
  r->newton = opt ? opt->newton : NULL;
  if (!(r->arena = arena_create())) {
    diag_error(de, (SrcLoc){0}, "out of memory in the interpreter");
    return -1;
  }
  int rc = -1;
  Inst *top = NULL;
  Seq *ins = NULL;
  int check_finite = opt && opt->check_finite;
  NonFinite nf = {0};
  if (check_args(r, B, T, inputs, lengths, state_in) || alloc_results(r, B, T, outputs, state_out))
    goto done;
  if (inst_build(r, root, 0, b->dims, 0, &top)) goto done;

  /* Root inputs are converted per example into double sequences. */
  int ni = root->inputs.n;
  ins = arena_calloc(r->arena, (size_t)(ni + 1), sizeof *ins);
  int64_t *in_w = arena_calloc(r->arena, (size_t)(ni + 1), sizeof *in_w);
  if (!ins || !in_w) {
    oom(r);
    goto done;
  }
  for (int i = 0; i < ni; i++) {
    Val v;
    if (shape_val(top, root->inputs.v[i].type, &v)) goto done;
    in_w[i] = val_width(&v);
    /* A context is one position that every step reads. */
    ins[i].stride = root->inputs.v[i].context ? 0 : in_w[i];
    if (!(ins[i].d = alloc_doubles(r, in_w[i], root->inputs.v[i].context ? 1 : T))) {
      oom(r);
      goto done;
    }
  }
  for (int64_t e = 0; e < B; e++) {
    int64_t len = lengths ? lengths[e] : T;
    r->b = e;
    for (int i = 0; i < ni; i++) {
      int ctx = root->inputs.v[i].context;
      int64_t steps = ctx ? 1 : len;
      int64_t n = steps * in_w[i], base = e * (ctx ? 1 : T) * in_w[i];
      for (int64_t j = 0; j < n; j++) ins[i].d[j] = tensor_get(&inputs[i], base + j);
      /* Token indices stay exact; reals are what float32 code would read. */
      if (!r->f64 && root->inputs.v[i].type.elem != IR_INT) round_f32(ins[i].d, n);
      if (check_finite) nonfinite_scan(&nf, ins[i].d, steps, in_w[i], e, 0, i);
    }
    if (run_inst(r, top, ins, len, 0)) goto done;
    for (int k = 0; k < nout; k++) {
      int64_t n = T * top->out_width[k], base = e * n;
      if (check_finite) nonfinite_scan(&nf, top->out_seq[k], len, top->out_width[k], e, 1, k);
      for (int64_t j = 0; j < n; j++) tensor_put(&outputs[k], base + j, top->out_seq[k][j]);
    }
  }
  if (nf.found) {
    nonfinite_report(root, &nf, de);
    goto done;
  }
  if (check_finite && nonfinite_states(b, state_out, de)) goto done;
  rc = 0;
done:
  if (rc) {
    for (int i = 0; i < nout; i++) rt_tensor_free(&outputs[i]);
    for (int i = 0; state_out && i < nstate; i++) rt_tensor_free(&state_out[i]);
  }
  arena_destroy(r->arena);
  return rc;
}

/* The same check for results computed elsewhere (the CPU backend): inputs and
 * outputs are scanned per example within its length, earliest time step first,
 * then the final states. */
int interp_check_finite(const IrBinding *b, int64_t B, int64_t T, const RtTensor *inputs,
                        const int64_t *lengths, const RtTensor *outputs, const RtTensor *state_out,
                        DiagEngine *de) {
  const IrFunc *root = b->root;
  NonFinite nf = {0};
  double *row = NULL;
  int rc = -1;
  for (int64_t e = 0; e < B; e++) {
    int64_t len = lengths ? lengths[e] : T;
    for (int kind = 0; kind < 2; kind++) {
      int n = kind == 0 ? root->inputs.n : root->outputs.n;
      const RtTensor *ts = kind == 0 ? inputs : outputs;
      for (int i = 0; i < n; i++) {
        const RtTensor *t = &ts[i];
        int64_t width = B && T ? rt_numel(t) / (B * T) : 0;
        if (width <= 0 || len <= 0) continue;
        double *nr = seq_realloc(row, sizeof(double) * (size_t)(len * width));
        if (!nr) {
          diag_error(de, (SrcLoc){0}, "out of memory checking for non-finite values");
          goto done;
        }
        row = nr;
        for (int64_t j = 0; j < len * width; j++) row[j] = tensor_get(t, e * T * width + j);
        nonfinite_scan(&nf, row, len, width, e, kind, i);
      }
    }
  }
  if (nf.found) {
    nonfinite_report(root, &nf, de);
    goto done;
  }
  if (nonfinite_states(b, state_out, de)) goto done;
  rc = 0;
done:
  seq_free(row);
  return rc;
}
