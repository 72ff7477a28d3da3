/* cost.c - what each form of a cell's recurrences costs per token, for
 * `auto` (strategy.c) and `seqc --report --dims`.
 *
 * Only the recurrences are counted: the rest of a cell (input projections,
 * gates, output maps) is the same work in every form. Per state of S
 * elements (w = 2 floats each when complex), per token of one example:
 *
 *   sequential  the step loop, all B examples per step. It updates and reads
 *               each state once per step: f = (2 + 2 r) S flops (x4 complex,
 *               r readouts), and moves the state through the cache each step,
 *               8 S w bytes, from L2 while B states fit there, else from
 *               memory. It vectorizes across the batch and the state.
 *   scan        the fused scan (sched/scan.c): the same flops, the state in L1
 *               (a shift register: no scan at all; counted as its window
 *               gathered per token, 8 S w bytes at L2 bandwidth, which is
 *               what it costs where the step reads it other than as a
 *               convolution -- read as one, the form reads the inputs in
 *               place and forms the window once per time chunk),
 *               across the steps of one example; a readout summing a short
 *               last axis wastes vector lanes (Mamba's d_state = 16).
 *   chunked     the chunkwise kernel (sched/chunk.c): per token 4 H K V
 *               flops of state passing and inter-chunk readout, plus
 *               2 C H (K + V) of intra-chunk products (C the chunk), and the
 *               state moved once per chunk, 8 H K V / C bytes. The delta
 *               rule's WY form: 6 H K V and C H (3 K + 2 V + C). A small
 *               dense transition (pLSTM, [L..., J, V, K]): 2 S (1 + r) +
 *               2 C H r (K + V) + 2 S J / C + C H J^2, its step loop
 *               2 S (J + 1 + r).
 *   newton      a nonlinear group: the step's work that reads the group (its
 *               share per state; also the step loop's cost) times the
 *               evaluations a solve takes (the iterations measured on the
 *               std cells, BENCHMARKS.md, plus the guess and its
 *               evaluation), the recurrence of the Jacobian's blocks, the
 *               solve's B*T buffers streamed from memory; split over every
 *               thread, where the step loop splits only the batch.
 *   convolution a time-invariant state's convolution form, reported and
 *               never built (cost_convolution says what it counts).
 *
 * Besides the recurrences, the weight products that read a state (Mamba's
 * x_proj, dt_proj and out_proj after its convolution window): in the step
 * loop they multiply B rows per step, re-reading the weight each step (from
 * L2, or from memory past it); in parallel forms every state's values exist
 * per token, and they run over a time chunk's rows (cost_state_products).
 *
 * Time per token is max(flops / (efficiency x peak), bytes / bandwidth),
 * divided among min(threads, B) cores (every form splits the batch; a
 * fused scan splits each example's state as well). The
 * efficiencies are the fractions of the FMA peak each loop reached in the
 * measurements recorded in BENCHMARKS.md (AMD EPYC Zen 3, AVX2); they make
 * the model rank forms, not predict times: it is checked against measured
 * times there.
 */
#include "passes/passes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Fractions of the FMA peak each kind of loop reaches, and of the L2 read
 * bandwidth, fitted to the forms' measured times (BENCHMARKS.md). They were
 * fitted while runtime/cpu_machine.c measured half the FMA peak (its loop's
 * multiplies and adds were not fused) and a third of the L2 bandwidth
 * (16-byte loads); with the measurement right, these are the fitted values
 * times 1/2 and 0.36, so every choice stays what it was on the machine they
 * were fitted on. */
#define EFF_STEP 0.06      /* the step loop's fused elementwise work, the whole batch per step */
#define EFF_GEMM 0.3       /* a weight product over a time chunk's rows (B Tc rows) */
#define EFF_GEMM_STEP 0.15 /* the same product inside the step loop, over B rows per step */
#define EFF_SCAN 0.075     /* a fused scan's element loop, one example at a time */
#define EFF_CHUNK 0.175    /* the chunkwise kernel's small matrix products */
#define EFF_L2 0.36        /* reads of a state or a weight that stays in L2 */
#define L2_BYTES (512 * 1024)
#define CHUNK 16                /* the runtime's default chunk length */
#define SCAN_BLOCK 2048         /* sched/scan.c */
#define TRANSCENDENTAL_FLOPS 10 /* exp, log, tanh and the functions built on them */
#define SCAN_PIECE 64
#define SCAN_NARROW 32 /* sched/scan.c */
#define SCAN_NARROW_ROWS 16

/* Elements of a state of concrete shape. */
static int64_t state_elems(const IrFunc *f, int k, const int64_t *dims) {
  int64_t n = 1, v;
  const IrType *t = &f->states.v[k].type;
  for (int d = 0; d < t->rank; d++) {
    if (dim_eval(t->dims[d], dims, &v)) return -1;
    n *= v;
  }
  return n;
}

/* The size of the last axis of state k (the one its readouts sum, when they
 * are written over the last axis). */
static int64_t last_axis(const IrFunc *f, int k, const int64_t *dims) {
  const IrType *t = &f->states.v[k].type;
  int64_t v = 1;
  if (t->rank > 0 && dim_eval(t->dims[t->rank - 1], dims, &v)) v = 1;
  return v;
}

/* The size of the axis a small dense transition mixes: the one the
 * classifier found (LSSL's [H, N] mixes its last), else the third last
 * (pLSTM's [J, V, K]). */
static int64_t small_j(const IrFunc *f, const RecState *rs, const int64_t *dims) {
  const IrType *t = &f->states.v[rs->state].type;
  int axis = rs->axis >= 0 && rs->axis < t->rank ? rs->axis : t->rank - 3;
  int64_t v = 1;
  if (axis >= 0 && dim_eval(t->dims[axis], dims, &v)) v = 1;
  return v;
}

static double node_flops(const IrFunc *f, const IrNode *nd, const int64_t *dims);

/* Flops per token of the nodes of f that read a state of rs's group (the
 * work a Newton iteration repeats; hoisted work reads none), and the
 * group's size. */
static double group_flops(const IrFunc *f, const RecState *rs, const int64_t *dims, int *nstates) {
  char *in_group = calloc((size_t)f->states.n + 1, 1), *dep = calloc((size_t)f->nodes.n + 1, 1);
  double w = 0;
  *nstates = 1;
  if (!in_group || !dep) {
    free(in_group);
    free(dep);
    return 0;
  }
  in_group[rs->state] = 1;
  for (int i = 0; i < rs->ndeps; i++) {
    int d = rs->deps[i], given = 0;
    for (int j = 0; j < rs->ngiven; j++) given |= rs->given[j] == d;
    if (!given && !in_group[d]) in_group[d] = 1, (*nstates)++;
  }
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    dep[r] = nd->op == IR_STATE && in_group[nd->index];
    for (int j = 0; j < nd->nargs && !dep[r]; j++) dep[r] = dep[nd->args[j]];
    if (dep[r]) w += node_flops(f, nd, dims);
  }
  free(in_group);
  free(dep);
  return w;
}

/* Reads of state k's value other than by its own update: nodes outside the
 * cone of next that read the state or its next value. */
static int readouts(const IrFunc *f, int k) {
  IrRef nx = f->states.v[k].next;
  int n = 0;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    for (int j = 0; j < nd->nargs; j++) {
      const IrNode *a = &f->nodes.v[nd->args[j]];
      int reads = nd->args[j] == nx || (a->op == IR_STATE && a->index == k);
      if (reads && r > nx) {
        n++;
        break;
      }
    }
  }
  for (int i = 0; i < f->outputs.n; i++) n += f->outputs.v[i].value == nx;
  return n > 0 ? n : 1;
}

int cost_state(const IrFunc *f, const RecState *rs, const int64_t *dims, const CostMachine *mc,
               int64_t B, Form form, FormCost *out) {
  memset(out, 0, sizeof *out);
  int k = rs->state;
  int64_t S = state_elems(f, k, dims);
  if (S < 0) return -1;
  int cplx = rs->is_complex || f->states.v[k].type.elem == IR_COMPLEX;
  double w = cplx ? 2 : 1, per = cplx ? 8 : 2;
  int r = readouts(f, k);
  if (B < 1) B = 1;
  double cores = (double)(mc->threads < B ? mc->threads : B);
  if (cores < 1) cores = 1;
  switch (form) {
  case FORM_SEQUENTIAL: {
    /* The delta rule also contracts the state with k before its update; a
     * small dense transition mixes J blocks per element. */
    out->flops = per * (double)S * (1 + r + (rs->cls == REC_LIN_DPLR));
    if (rs->cls == REC_LIN_SMALL_DENSE)
      out->flops = 2.0 * (double)S * (double)(small_j(f, rs, dims) + 1 + r);
    /* A nonlinear state: its share of the step's work that reads the group. */
    if (rs->cls == REC_NONLINEAR) {
      int n;
      out->flops = group_flops(f, rs, dims, &n) / n;
    }
    out->bytes = 8.0 * (double)S * w;
    double bw = (double)B * (double)S * w * 4 <= L2_BYTES ? EFF_L2 * mc->l2_bw : mc->dram_bw;
    out->seconds = fmax(out->flops / (EFF_STEP * mc->flops), out->bytes / bw);
    break;
  }
  case FORM_SCAN: {
    /* A shift register's parallel form is no scan: the window entering each
     * step is gathered from earlier inputs (a copy of the state per token,
     * over all rows and threads). */
    if (rs->cls == REC_SHIFT) {
      out->flops = 0;
      out->bytes = 8.0 * (double)S * w;
      out->seconds = out->bytes / (EFF_L2 * mc->l2_bw);
      cores = fmin((double)mc->threads, (double)B * ceil((double)S * w / SCAN_BLOCK));
      break;
    }
    out->flops = per * (double)S * (1 + r);
    out->bytes = 0; /* the state stays in L1; the token streams are every form's */
    /* A sum over a short last axis fills only part of the vectors (the
     * loop keeps four in flight), unless the state runs transposed (a real
     * [rows, last] state with last <= SCAN_NARROW and rows for a vector,
     * sched/scan.c): then the loop runs along the rows. */
    int64_t lastn = last_axis(f, k, dims);
    double fill = fmin(1.0, (double)lastn * w / (4.0 * mc->lanes));
    if (!cplx && f->states.v[k].type.rank == 2 && lastn <= SCAN_NARROW &&
        S / (lastn ? lastn : 1) >= SCAN_NARROW_ROWS)
      fill = 1;
    out->seconds = out->flops / (EFF_SCAN * fill * mc->flops);
    /* Examples split into blocks of about SCAN_BLOCK floats, a one-row
     * state into pieces of SCAN_PIECE (sched/scan.c), all on the pool. */
    int64_t last = last_axis(f, k, dims);
    double parts = last < S ? ceil((double)S * w / SCAN_BLOCK)
                            : (last >= 2 * SCAN_PIECE ? ceil((double)last / SCAN_PIECE) : 1);
    cores = fmin((double)mc->threads, (double)B * parts);
    break;
  }
  case FORM_CHUNKED: {
    /* [L..., V, K]: heads are the leading elements, K and V the last two. */
    const IrType *t = &f->states.v[k].type;
    int64_t K = 1, V = 1;
    if (t->rank >= 2 &&
        (dim_eval(t->dims[t->rank - 1], dims, &K) || dim_eval(t->dims[t->rank - 2], dims, &V)))
      return -1;
    double H = K > 0 && V > 0 ? (double)S / (double)(K * V) : 0;
    out->flops = 4 * (double)S + 2.0 * CHUNK * H * (double)(K + V);
    /* The delta rule (WY form): the pseudo-values U - W S^T as well, and
     * per chunk the triangular solve and W = A K, U = A V. */
    if (rs->cls == REC_LIN_DPLR)
      out->flops = 6 * (double)S + CHUNK * H * (3.0 * (double)K + 2.0 * (double)V + CHUNK);
    /* A small dense transition [L..., J, V, K]: per readout the J blocks
     * read with q and the pairs within the chunk, per chunk the J x J
     * mixing of the entering state and the products of transitions. */
    if (rs->cls == REC_LIN_SMALL_DENSE) {
      double J = (double)small_j(f, rs, dims);
      H = J > 0 ? H / J : 0;
      out->flops = 2 * (double)S * (1 + r) + 2.0 * CHUNK * H * r * (double)(K + V) +
                   2 * (double)S * J / CHUNK + CHUNK * H * J * J;
    }
    out->bytes = 8.0 * (double)S / CHUNK;
    out->seconds = fmax(out->flops / (EFF_CHUNK * mc->flops), out->bytes / mc->dram_bw);
    /* With fewer examples than threads each head is a part of its own, at
     * about two thirds of the speed of all heads in step (BENCHMARKS.md). */
    if (B < mc->threads && H > 1) {
      cores = fmin((double)mc->threads, (double)B * H);
      out->seconds *= 1.5;
    }
    break;
  }
  case FORM_NEWTON: {
    /* Every evaluation reruns the group's share of the step over all
     * tokens, split over every thread; each iteration also runs the linear
     * recurrence of the Jacobian's blocks and streams the solve's B*T
     * buffers (guess, values, previous values, candidate, blocks). */
    if (rs->cls != REC_NONLINEAR) return -1;
    int n;
    double evals = cost_newton_evals(rs->jacobian), iters = evals - 2;
    double share = group_flops(f, rs, dims, &n) / n;
    out->flops = evals * share + iters * 2.0 * n * (double)S;
    out->bytes = evals * 4.0 * (4 + n) * (double)S * w;
    out->seconds = fmax(out->flops / (EFF_STEP * mc->flops), out->bytes / mc->dram_bw);
    cores = mc->threads > 0 ? mc->threads : 1;
    break;
  }
  default:
    return -1;
  }
  out->seconds /= cores;
  return 0;
}

/* Whether node r is a weight (a parameter, through reshapes). */
static int is_weight(const IrFunc *f, IrRef r) {
  while (f->nodes.v[r].op == IR_RESHAPE || f->nodes.v[r].op == IR_TRANSPOSE)
    r = f->nodes.v[r].args[0];
  return f->nodes.v[r].op == IR_PARAM;
}

double cost_state_products(const IrFunc *f, const int64_t *dims, const CostMachine *mc, int64_t B,
                           int parallel) {
  char *dep = calloc((size_t)f->nodes.n + 1, 1);
  if (!dep || !dims) {
    free(dep);
    return 0;
  }
  double flops = 0, wbytes = 0;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    dep[r] = nd->op == IR_STATE;
    for (int j = 0; j < nd->nargs && !dep[r]; j++) dep[r] = dep[nd->args[j]];
    if (!dep[r] || nd->op != IR_MATMUL || nd->nargs != 2) continue;
    int w = is_weight(f, nd->args[0]) ? 0 : is_weight(f, nd->args[1]) ? 1 : -1;
    if (w < 0) continue;
    double fl = node_flops(f, nd, dims);
    flops += fl;
    /* The weight's K x N floats for 2 K N flops per row. */
    wbytes += 4.0 * fl / 2.0;
  }
  free(dep);
  if (B < 1) B = 1;
  if (parallel) return flops / (EFF_GEMM * mc->flops) / (double)mc->threads;
  double cores = (double)(mc->threads < B ? mc->threads : B);
  double bw = wbytes <= L2_BYTES ? EFF_L2 * mc->l2_bw : mc->dram_bw;
  return fmax(flops / (EFF_GEMM_STEP * mc->flops), wbytes / (double)B / bw) / cores;
}

int cost_newton_evals(RecJacobian jac) {
  return jac == REC_JAC_DENSE ? COST_NEWTON_ITERS_QUASI + 2 : COST_NEWTON_ITERS_EXACT + 2;
}

/* Flops of one node per token (elements of its value; matrix products
 * 2 M N K; complex arithmetic four real operations per element, two
 * where one operand is real). */
static double node_flops(const IrFunc *f, const IrNode *nd, const int64_t *dims) {
  double n = 1;
  int64_t v;
  for (int d = 0; d < nd->type.rank; d++) {
    if (dim_eval(nd->type.dims[d], dims, &v)) return 0;
    n *= (double)v;
  }
  /* A complex result costs 4 real ops when its operands are complex (a
   * product's 4 multiplies), 2 when one of two is real (a complex weight
   * times a real input is two real products). */
  double c = 1;
  if (nd->type.elem == IR_COMPLEX) {
    int ncplx = 0;
    for (int j = 0; j < nd->nargs; j++) ncplx += f->nodes.v[nd->args[j]].type.elem == IR_COMPLEX;
    c = nd->nargs == 2 && ncplx < 2 ? 2 : 4;
  }
  switch (nd->op) {
  case IR_MATMUL: {
    const IrType *x = &f->nodes.v[nd->args[0]].type;
    if (x->rank < 1 || dim_eval(x->dims[x->rank - 1], dims, &v)) return 0;
    return 2 * n * (double)v * c;
  }
  case IR_PARAM:
  case IR_INPUT:
  case IR_STATE:
  case IR_CONST:
  case IR_DIMVAL:
  case IR_EYE:
  case IR_RESHAPE:
  case IR_BROADCAST:
  case IR_SLICE:
  case IR_INDEX:
  case IR_CONCAT:
  case IR_TRANSPOSE:
  case IR_DIAG:
    return 0;
  case IR_EXPM:  /* about 20 products of N x N matrices (Taylor and squarings) */
  case IR_INV: { /* Gauss-Jordan: 2 N^3 per matrix */
    const IrType *x = &nd->type;
    if (dim_eval(x->dims[x->rank - 1], dims, &v)) return 0;
    return (nd->op == IR_EXPM ? 40 : 2) * n * (double)v;
  }
  case IR_SUM:
  case IR_MEAN:
  case IR_AMAX:
  case IR_AMIN: {
    const IrType *x = &f->nodes.v[nd->args[0]].type;
    double m = 1;
    for (int d = 0; d < x->rank; d++) {
      if (dim_eval(x->dims[d], dims, &v)) return 0;
      m *= (double)v;
    }
    return m * c;
  }
  case IR_RMSNORM:
  case IR_LAYERNORM:
  case IR_L2NORM:
  case IR_SOFTMAX:
    return 5 * n;
  case IR_EXP:
  case IR_LOG:
  case IR_TANH:
  case IR_SIGMOID:
  case IR_LOGSIGMOID:
  case IR_SOFTPLUS:
  case IR_SILU:
  case IR_GELU:
  case IR_SIN:
  case IR_COS:
  case IR_POW:
    /* A vector polynomial and its range reduction (codegen/math.c's exp:
     * a degree-6 Horner form with fused multiply-adds, about 20 flops);
     * counted at half that, a floor no evaluation on the FMA units beats. */
    return TRANSCENDENTAL_FLOPS * n * c;
  default:
    return n * c;
  }
}

/* Elements of a type at concrete dims, or -1. */
static double type_elems(IrType t, const int64_t *dims) {
  double n = 1;
  int64_t v;
  for (int d = 0; d < t.rank; d++) {
    if (dim_eval(t.dims[d], dims, &v)) return -1;
    n *= (double)v;
  }
  return n;
}

/* Flops of one step of state k's transition: the nodes of its update that
 * read the state. */
static double transition_flops(const IrFunc *f, int k, const int64_t *dims) {
  IrRef nx = f->states.v[k].next;
  char *cone = calloc((size_t)nx + 1, 1), *dep = calloc((size_t)nx + 1, 1);
  double w = 0;
  if (cone && dep) {
    cone[nx] = 1;
    for (IrRef r = nx; r >= 0; r--)
      for (int j = 0; j < f->nodes.v[r].nargs && cone[r]; j++) cone[f->nodes.v[r].args[j]] = 1;
    for (IrRef r = 0; r <= nx; r++) {
      const IrNode *nd = &f->nodes.v[r];
      dep[r] = nd->op == IR_STATE && nd->index == k;
      for (int j = 0; j < nd->nargs && !dep[r]; j++) dep[r] = dep[nd->args[j]];
      if (cone[r] && dep[r]) w += node_flops(f, nd, dims);
    }
  }
  free(cone);
  free(dep);
  return w;
}

/* Elements per channel of the listed inputs (or outputs) of f. */
static double lti_width(const IrFunc *f, const int *idx, int n, int outputs, double channels,
                        const int64_t *dims) {
  double m = 0;
  for (int i = 0; i < n; i++) {
    double e = type_elems(outputs ? f->outputs.v[idx[i]].type : f->inputs.v[idx[i]].type, dims);
    if (e < 0) return -1;
    m += e / channels;
  }
  return m;
}

/* The convolution form (docs/algorithms.md §9), per token of one example,
 * for C independent channels of Nc states each, with m_in inputs and m_out
 * outputs per channel (C = 1 for one multi-input multi-output system), over
 * sequences of T tokens, FFTs of n >= 2T points at 5 n log2 n flops:
 *   per call, shared by the B examples: the kernel, T lags of the impulse
 *     response, the transition stepped on each of the m_in input columns
 *     (what one step of the recurrence costs, per channel) and read out
 *     into m_out outputs (a multiply-add per state), then the m_in m_out
 *     transforms of K;
 *   per example: the m_in + m_out transforms of the inputs and outputs,
 *     and the product of the spectra, an m_out x m_in complex matrix per
 *     frequency (8 flops per entry).
 * Bytes: K's spectrum read, the inputs' and outputs' spectra written, once
 * per example. No FFT is generated, so none is measured: its loops are
 * counted at the fused scan's efficiency (elementwise vector loops as its
 * are); the examples and channels split across the threads. */
int cost_convolution(const IrFunc *f, const RecState *rs, const int64_t *dims,
                     const CostMachine *mc, int64_t B, int64_t T, FormCost *out) {
  memset(out, 0, sizeof *out);
  if (!rs->lti || T < 1) return -1;
  const IrType *st = &f->states.v[rs->state].type;
  double S = type_elems(*st, dims), C = 1;
  int64_t v;
  for (int d = 0; d < st->rank; d++)
    if (rs->lti_channels >> d & 1) {
      if (dim_eval(st->dims[d], dims, &v)) return -1;
      C *= (double)v;
    }
  if (S < 0 || C < 1) return -1;
  double m_in = lti_width(f, rs->lti_inputs, rs->nlti_inputs, 0, C, dims);
  double m_out = lti_width(f, rs->lti_outputs, rs->nlti_outputs, 1, C, dims);
  if (m_in < 0 || m_out < 0) return -1;
  int cplx = rs->is_complex || st->elem == IR_COMPLEX;
  double per = cplx ? 8 : 2, Nc = S / C, trans = transition_flops(f, rs->state, dims) / C;
  double n = 1, t = (double)T;
  while (n < 2 * t) n *= 2;
  double fft = 5 * n * log2(n);
  if (B < 1) B = 1;
  double kernel = C * (m_in * m_out * fft + t * m_in * (trans + per * Nc * m_out));
  double example = C * ((m_in + m_out) * fft + 8 * n * m_in * m_out);
  out->flops = example / t + kernel / ((double)B * t);
  double kbytes = 8 * n * C * m_in * m_out;
  out->bytes = (kbytes + 8 * n * C * (m_in + m_out)) / t;
  double bw = kbytes <= L2_BYTES ? EFF_L2 * mc->l2_bw : mc->dram_bw;
  double cores = fmax(1, fmin((double)mc->threads, (double)B * C * fmax(m_in, 1)));
  out->seconds = fmax(out->flops / (EFF_SCAN * mc->flops), out->bytes / bw) / cores;
  return 0;
}

static double type_bytes(IrType t, const int64_t *dims) {
  double n = type_elems(t, dims);
  if (n < 0) return 0;
  return (t.elem == IR_COMPLEX ? 8 : 4) * n;
}

void cost_cell_work(const IrFunc *f, const int64_t *dims, double *flops, double *io_bytes,
                    double *weight_bytes) {
  *flops = *io_bytes = *weight_bytes = 0;
  /* Time-invariant nodes (params and constants only) run once per call. */
  char *inv = calloc((size_t)f->nodes.n + 1, 1);
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *nd = &f->nodes.v[r];
    int v = nd->op != IR_INPUT && nd->op != IR_STATE;
    for (int j = 0; j < nd->nargs; j++) v = v && inv && inv[nd->args[j]];
    if (inv) inv[r] = (char)v;
    if (!v) *flops += node_flops(f, nd, dims);
  }
  free(inv);
  for (int i = 0; i < f->inputs.n; i++) *io_bytes += type_bytes(f->inputs.v[i].type, dims);
  for (int i = 0; i < f->outputs.n; i++) *io_bytes += type_bytes(f->outputs.v[i].type, dims);
  for (int i = 0; i < f->params.n; i++) *weight_bytes += type_bytes(f->params.v[i].type, dims);
}
