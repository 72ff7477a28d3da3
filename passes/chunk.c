/* chunk.c - a matrix state's chunkwise-parallel form as IR.
 *
 * scan.c leaves a matrix state as H = scan(a, b, S): the state after every
 * step, materialized, which a readout then contracts with a per-token
 * vector. When the state is only read that way and its update is a gate
 * along one axis plus a rank-one write, the readouts can be computed without
 * ever forming S_t (docs/algorithms.md, the chunkwise-parallel form). This
 * pass finds that structure and rewrites the function into the canonical
 * ops (ir/ops.def), in the state's layout [L..., V, K]:
 *
 *   linattn(q, k, v, lg, S0)       o_t = S_t q_t (or S_{t-1} q_t)   [L..., V]
 *   linattn_state(k, v, lg, S0)    S_t (only its last value is a result)
 *
 * where S_t = S_{t-1} diag_K(exp(lg_t)) + v_t k_t^T. Read off the scan:
 *   - the contraction axis K is the one every readout sums over (the last or
 *     the second last axis; V is the other, the axes before are lead axes);
 *   - b must be a product of factors each varying along V or K but not both
 *     (a rank-one write per lead slice): those along K make k, the others v;
 *   - a must not vary along V, and must be provably positive so that its
 *     logarithm is exact: exp(z) gives z, sigmoid(x) logsigmoid(x), products
 *     sums of logarithms; a constant 1 is no gate;
 *   - every read of H, or of delay(H) (then the readout is exclusive), must
 *     be sum(H * q, axis=K) with q free of the state and of size 1 along V.
 * Anything else leaves the state to its elementwise scan, and says why.
 * The interpreter runs the rewritten function, so test_scan checks these
 * steps; the backends run the ops with their chunked kernels.
 */
#include "passes/passes.h"

#include <string.h>

typedef struct Chunk {
  PassBuild b; /* src: a parallel form; dst: it with chunked states */
  IrRef *map;
  const char *why;
} Chunk;

static IrRef map_cb(void *ctx, IrRef x) {
  return ((Chunk *)ctx)->map[x];
}

static int refuse(Chunk *C, const IrNode *n, const char *what) {
  if (!C->why)
    C->why = n && n->loc.file ? arena_printf(C->b.a, "%s at %s:%d:%d", what, n->loc.file->name,
                                             n->loc.line, n->loc.col)
                              : what;
  return -1;
}

/* x (of rank <= r, broadcastable to rank r) as rank r - 1 without axis
 * `drop`, where x has size 1: a reshape that keeps the element order. */
static IrRef drop_axis(Chunk *C, IrRef x, int r, int drop, SrcLoc loc) {
  IrType t = C->b.dst->nodes.v[x].type;
  DimExpr dims[SEQ_MAX_RANK];
  int n = 0;
  for (int ax = 0; ax < r; ax++)
    if (ax != drop) dims[n++] = ir_type_aligned(t, r, ax);
  return pb_shape(&C->b, IR_RESHAPE, x, ir_type(C->b.a, IR_REAL, n, dims), loc);
}

/* The factors of the rank-one write b (a tree of products), split by the
 * axis they vary along: product of those along K (into *k) and of the
 * others (*v), each as rank r - 1 without the other axis. outer(x, y) of a
 * matrix state is the factors x along its first axis and y along its
 * second. */
static int split_write(Chunk *C, IrRef b, int r, int vax, int kax, IrRef *v, IrRef *k) {
  const IrFunc *f = C->b.src;
  /* Pending factors: src nodes, or (negated) dst nodes already shaped. */
  IrRef stack[64];
  int dst[64];
  int sp = 0;
  stack[sp] = b;
  dst[sp++] = 0;
  *v = *k = IR_NONE;
  while (sp > 0) {
    sp--;
    IrRef x = stack[sp], part;
    IrType t;
    SrcLoc loc;
    if (!dst[sp]) {
      const IrNode *n = &f->nodes.v[x];
      loc = n->loc;
      if ((n->op == IR_MUL || n->op == IR_OUTER) && sp + 2 <= 64) {
        IrRef u = n->args[0], w = n->args[1];
        int shaped = n->op == IR_OUTER;
        if (shaped) { /* x [M] as [M, 1], y [N] as [1, N] */
          DimExpr du[2] = {f->nodes.v[u].type.dims[0], dim_const(1)};
          DimExpr dw[2] = {dim_const(1), f->nodes.v[w].type.dims[0]};
          u = pb_shape(&C->b, IR_RESHAPE, C->map[u], ir_type(C->b.a, IR_REAL, 2, du), loc);
          w = pb_shape(&C->b, IR_RESHAPE, C->map[w], ir_type(C->b.a, IR_REAL, 2, dw), loc);
          if (C->b.failed) return -1;
        }
        stack[sp] = u;
        dst[sp++] = shaped;
        stack[sp] = w;
        dst[sp++] = shaped;
        continue;
      }
      if (n->op == IR_BROADCAST && n->type.rank == r) {
        stack[sp] = n->args[0];
        dst[sp++] = 0;
        continue;
      }
      if (n->type.elem != IR_REAL) return refuse(C, n, "a complex write");
      t = n->type;
      part = C->map[x];
    } else {
      part = x;
      t = C->b.dst->nodes.v[x].type;
      loc = C->b.dst->nodes.v[x].loc;
    }
    if (t.rank > r) return refuse(C, NULL, "a write of higher rank than the state");
    int along_v = !dim_is_one(ir_type_aligned(t, r, vax));
    int along_k = !dim_is_one(ir_type_aligned(t, r, kax));
    if (along_v && along_k)
      return refuse(C, NULL, "a write that is not rank one (a factor varies along both axes)");
    IrRef *side = along_k ? k : v;
    part = drop_axis(C, part, r, along_k ? vax : kax, loc);
    if (*side == IR_NONE) {
      *side = part;
    } else {
      IrRef args[2] = {*side, part};
      *side = pb_node(&C->b, IR_MUL, 2, args, NULL, loc);
    }
  }
  return C->b.failed ? -1 : 0;
}

/* Users of every node of f (counts, then lists). */
typedef struct Users {
  int *n;
  IrRef **of;
} Users;

static int users_of(Arena *a, const IrFunc *f, Users *u) {
  u->n = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *u->n);
  u->of = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *u->of);
  if (!u->n || !u->of) return -1;
  for (IrRef r = 0; r < f->nodes.n; r++)
    for (int j = 0; j < f->nodes.v[r].nargs; j++) u->n[f->nodes.v[r].args[j]]++;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    u->of[r] = arena_calloc(a, (size_t)u->n[r] + 1, sizeof **u->of);
    if (!u->of[r]) return -1;
    u->n[r] = 0;
  }
  for (IrRef r = 0; r < f->nodes.n; r++)
    for (int j = 0; j < f->nodes.v[r].nargs; j++) {
      IrRef a0 = f->nodes.v[r].args[j];
      u->of[a0][u->n[a0]++] = r;
    }
  return 0;
}

/* What replaces a readout sum(X * q, axis=K). */
typedef struct Readout {
  IrRef sum, q;
  int exclusive;
  int vector; /* q is already the [K] vector (a matrix-vector product) */
  IrRef m;    /* plstm: the mark, aligned to the state's rank or (mvec) a [J] vector;
                 IR_NONE: 1 */
  int mvec;
} Readout;

/* The plan for state s of f: its readouts, axes and scan; 0, or -1 with why. */
typedef struct Plan {
  int s;
  int delta; /* the state is delta_state or dplr_state (the delta rule), not a scan */
  int plstm; /* the state is plstm_state (a small dense transition) */
  IrRef scan, delay;
  int r, vax, kax;
  Readout *reads;
  int nreads;
} Plan;

/* plstm: the readouts of Y = sum_j m[j] X[j] ([L..., V, K]), each
 * Y @ q (no lead axes) or sum(Y * q, axis=K) with q free of V. */
static int marked_reads(Chunk *C, const Users *u, Plan *p, IrRef y, IrRef m, int mvec, int excl) {
  const IrFunc *f = C->b.src;
  const IrNode *yn = &f->nodes.v[y];
  int L = p->r - 3;
  if (u->n[y] == 0) return refuse(C, yn, "a marked state that is never read");
  for (int i = 0; i < u->n[y]; i++) {
    IrRef use = u->of[y][i];
    const IrNode *n = &f->nodes.v[use];
    if (n->op == IR_MATMUL && L == 0 && n->args[0] == y && n->args[1] != y &&
        f->nodes.v[n->args[1]].type.rank == 1) {
      p->reads[p->nreads++] = (Readout){use, n->args[1], excl, 1, m, mvec};
      continue;
    }
    if (n->op != IR_MUL || !ir_type_eq(n->type, yn->type) || (n->args[0] == y) == (n->args[1] == y))
      return refuse(C, n, "a marked state read other than through a product with a vector");
    IrRef q = n->args[n->args[0] == y ? 1 : 0];
    IrType qt = f->nodes.v[q].type;
    if (qt.rank > L + 2 || !dim_is_one(ir_type_aligned(qt, L + 2, L)))
      return refuse(C, &f->nodes.v[q], "a readout vector that varies along the value axis");
    for (int k = 0; k < u->n[use]; k++) {
      const IrNode *sum = &f->nodes.v[u->of[use][k]];
      if (sum->op != IR_SUM || sum->axis != L + 1)
        return refuse(C, sum, "a product with the marked state not summed over its last axis");
      p->reads[p->nreads++] = (Readout){u->of[use][k], q, excl, 0, m, mvec};
    }
  }
  return 0;
}

/* plstm: every read of H and delay(H) (exclusive) is a mark, sum_j m[j] X[j]
 * (reshape(m @ reshape(X, [J, V*K]), [V, K]) without lead axes,
 * sum(X * m, axis=J) with m free of V and K, or sum(X, axis=J) for m = 1),
 * read by vectors. */
static int plan_marked(Chunk *C, const Users *u, Plan *p) {
  const IrFunc *f = C->b.src;
  int r = p->r, L = r - 3;
  IrType st = f->states.v[p->s].type;
  p->vax = r - 2;
  p->kax = r - 1;
  IrRef xs[2] = {p->scan, IR_NONE};
  for (int xi = 0; xi < 2; xi++) {
    IrRef x = xs[xi];
    if (x == IR_NONE) continue;
    for (int i = 0; i < u->n[x]; i++) {
      IrRef use = u->of[x][i];
      const IrNode *m = &f->nodes.v[use];
      if (xi == 0 && m->op == IR_DELAY && m->args[0] == x) {
        xs[1] = p->delay = use;
        continue;
      }
      if (m->op == IR_RESHAPE && L == 0 && m->type.rank == 2 &&
          dim_eq(m->type.dims[0], st.dims[0])) {
        for (int j = 0; j < u->n[use]; j++) {
          const IrNode *mm = &f->nodes.v[u->of[use][j]];
          if (mm->op != IR_MATMUL || mm->args[1] != use || mm->args[0] == use ||
              f->nodes.v[mm->args[0]].type.rank != 1)
            return refuse(C, mm, "the state is read other than through a mark over J");
          IrRef y0 = u->of[use][j];
          for (int k = 0; k < u->n[y0]; k++) {
            IrRef y = u->of[y0][k];
            const IrNode *yn = &f->nodes.v[y];
            if (yn->op != IR_RESHAPE || yn->type.rank != 2 || !dim_eq(yn->type.dims[0], st.dims[1]))
              return refuse(C, yn, "a marked state read other than as [V, K]");
            if (marked_reads(C, u, p, y, mm->args[0], 1, xi == 1)) return -1;
          }
        }
        continue;
      }
      if (m->op == IR_MUL && ir_type_eq(m->type, st) && (m->args[0] == x) != (m->args[1] == x)) {
        IrRef mk = m->args[m->args[0] == x ? 1 : 0];
        IrType mt = f->nodes.v[mk].type;
        if (mt.rank > r || !dim_is_one(ir_type_aligned(mt, r, L + 1)) ||
            !dim_is_one(ir_type_aligned(mt, r, L + 2)))
          return refuse(C, m, "a mark that varies along V or K");
        for (int j = 0; j < u->n[use]; j++) {
          IrRef y = u->of[use][j];
          const IrNode *yn = &f->nodes.v[y];
          if (yn->op != IR_SUM || yn->axis != L)
            return refuse(C, yn, "a product with the state not summed over J");
          if (marked_reads(C, u, p, y, mk, 0, xi == 1)) return -1;
        }
        continue;
      }
      if (m->op == IR_SUM && m->axis == L) { /* the mark 1 */
        if (marked_reads(C, u, p, use, IR_NONE, 0, xi == 1)) return -1;
        continue;
      }
      return refuse(C, m, "the state is read other than through a mark over J");
    }
  }
  if (p->nreads == 0) return refuse(C, &f->nodes.v[p->scan], "the state is never read");
  return 0;
}

/* Whether an output of f is the state after (or before) each step itself:
 * the form of the delta rules and of small dense transitions never forms
 * it per token. */
static int output_reads(const IrFunc *f, IrRef x) {
  for (int i = 0; i < f->outputs.n; i++)
    if (x != IR_NONE && f->outputs.v[i].value == x) return 1;
  return 0;
}

static int plan_state(Chunk *C, const Users *u, int s, Plan *p) {
  const IrFunc *f = C->b.src;
  const IrState *st = &f->states.v[s];
  memset(p, 0, sizeof *p);
  p->s = s;
  p->delay = IR_NONE;
  p->scan = st->next;
  const IrNode *h = &f->nodes.v[p->scan];
  p->delta = h->op == IR_DELTA_STATE || h->op == IR_DPLR_STATE;
  p->plstm = h->op == IR_PLSTM_STATE;
  if (h->op != IR_SCAN && !p->delta && !p->plstm) return refuse(C, h, "the state is not a scan");
  p->r = st->type.rank;
  if (p->r < 2) return refuse(C, h, "the state is not a matrix");
  p->reads = arena_calloc(C->b.a, (size_t)f->nodes.n + 1, sizeof *p->reads);
  if (!p->reads) return -1;
  if (p->plstm || p->delta) {
    /* delay(H) too: the state entering each step. */
    IrRef dl = IR_NONE;
    for (int i = 0; i < u->n[p->scan]; i++)
      if (f->nodes.v[u->of[p->scan][i]].op == IR_DELAY) dl = u->of[p->scan][i];
    if (output_reads(f, p->scan) || output_reads(f, dl))
      return refuse(C, h, "an output is the state itself, which this form never forms per step");
  }
  if (p->plstm) return plan_marked(C, u, p);
  p->kax = -1;
  /* Every use of H and delay(H): the delay, a product contracted by sums. */
  IrRef xs[2] = {p->scan, IR_NONE};
  for (int xi = 0; xi < 2; xi++) {
    IrRef x = xs[xi];
    if (x == IR_NONE) continue;
    for (int i = 0; i < u->n[x]; i++) {
      IrRef use = u->of[x][i];
      const IrNode *m = &f->nodes.v[use];
      if (xi == 0 && m->op == IR_DELAY && m->args[0] == x) {
        xs[1] = p->delay = use;
        continue;
      }
      /* A matrix-vector product with a matrix state: the sum spelled as
       * S @ q (over its last axis) or q @ S (over its first). */
      if (m->op == IR_MATMUL && p->r == 2 && (m->args[0] == x) != (m->args[1] == x) &&
          f->nodes.v[m->args[m->args[0] == x ? 1 : 0]].type.rank == 1) {
        int ax = m->args[0] == x ? 1 : 0;
        if (p->kax >= 0 && ax != p->kax) return refuse(C, m, "readouts over different axes");
        p->kax = ax;
        p->vax = 1 - ax;
        p->reads[p->nreads++] =
            (Readout){use, m->args[m->args[0] == x ? 1 : 0], xi == 1, 1, IR_NONE, 0};
        continue;
      }
      if (m->op != IR_MUL || !ir_type_eq(m->type, st->type) ||
          (m->args[0] == x) == (m->args[1] == x))
        return refuse(C, m, "the state is read other than through contractions");
      IrRef q = m->args[m->args[0] == x ? 1 : 0];
      const IrNode *qn = &f->nodes.v[q];
      for (int k = 0; k < u->n[use]; k++) {
        const IrNode *sum = &f->nodes.v[u->of[use][k]];
        if (sum->op != IR_SUM || sum->axis < p->r - 2 || sum->axis >= p->r)
          return refuse(C, sum, "a product with the state not summed over one of its last axes");
        if (p->kax >= 0 && sum->axis != p->kax)
          return refuse(C, sum, "readouts that sum over different axes");
        p->kax = sum->axis;
        p->vax = p->kax == p->r - 1 ? p->r - 2 : p->r - 1;
        if (qn->type.rank > p->r || !dim_is_one(ir_type_aligned(qn->type, p->r, p->vax)))
          return refuse(C, qn, "a readout vector that varies along the value axis");
        p->reads[p->nreads++] = (Readout){u->of[use][k], q, xi == 1, 0, IR_NONE, 0};
      }
    }
  }
  if (p->kax < 0) return refuse(C, h, "the state is never read");
  if (p->delta) { /* delta_state is in the canonical layout, read after each step */
    if (p->kax != p->r - 1) return refuse(C, h, "a delta-rule readout over the value axis");
    for (int i = 0; i < p->nreads; i++)
      if (p->reads[i].exclusive) return refuse(C, h, "a delta-rule state read before its update");
  }
  /* The state's other users: only its own next (the model's state). */
  return 0;
}

/* A scan's canonical operands, shared by the readouts and the final state
 * (the delta rule's are its _state op's own). */
typedef struct Operands {
  IrRef k, v, lg, S0;
} Operands;

static int operands(Chunk *C, const Plan *p, Operands *o) {
  const IrFunc *f = C->b.src;
  const IrNode *h = &f->nodes.v[p->scan];
  const IrState *st = &f->states.v[p->s];
  int r = p->r, L = r - 2;
  SrcLoc loc = h->loc;
  DimExpr lead[SEQ_MAX_RANK];
  for (int i = 0; i < L; i++) lead[i] = st->type.dims[i];
  DimExpr V = st->type.dims[p->vax], K = st->type.dims[p->kax];
  if (split_write(C, h->args[1], r, p->vax, p->kax, &o->v, &o->k)) return -1;
  DimExpr dv[SEQ_MAX_RANK], dk[SEQ_MAX_RANK];
  memcpy(dv, lead, sizeof(DimExpr) * (size_t)L);
  memcpy(dk, lead, sizeof(DimExpr) * (size_t)L);
  dv[L] = V;
  dk[L] = K;
  IrNode one;
  memset(&one, 0, sizeof one);
  one.cval = 1.0;
  if (o->v == IR_NONE) o->v = pb_node(&C->b, IR_CONST, 0, NULL, &one, loc);
  if (o->k == IR_NONE) o->k = pb_node(&C->b, IR_CONST, 0, NULL, &one, loc);
  o->v = pb_shape(&C->b, IR_BROADCAST, o->v, ir_type(C->b.a, IR_REAL, L + 1, dv), loc);
  o->k = pb_shape(&C->b, IR_BROADCAST, o->k, ir_type(C->b.a, IR_REAL, L + 1, dk), loc);
  /* The gate: free of V, positive; its log along K (or one per lead slice). */
  IrRef a = h->args[0];
  const IrNode *an = &f->nodes.v[a];
  if (an->type.rank > r || !dim_is_one(ir_type_aligned(an->type, r, p->vax)))
    return refuse(C, an, "a gate that varies along the value axis");
  IrRef lg = pb_log(&C->b, a, &C->why);
  if (lg == IR_NONE || C->b.failed) return -1;
  lg = drop_axis(C, lg, r, p->vax, loc);
  DimExpr dg[SEQ_MAX_RANK];
  memcpy(dg, lead, sizeof(DimExpr) * (size_t)L);
  dg[L] = dim_is_one(ir_type_aligned(an->type, r, p->kax)) ? dim_const(1) : K;
  o->lg = pb_shape(&C->b, IR_BROADCAST, lg, ir_type(C->b.a, IR_REAL, L + 1, dg), loc);
  /* The initial state in the canonical layout [L..., V, K]. */
  o->S0 = C->map[h->args[2]];
  if (p->kax == r - 2) o->S0 = pb_node(&C->b, IR_TRANSPOSE, 1, &o->S0, NULL, loc);
  return C->b.failed ? -1 : 0;
}

/* Rewrites f with the matrix states marked in `chunked` in their chunked
 * form; returns 0 and *out, 1 and *why, -1 on internal errors. */
int chunk_func(Arena *a, const IrFunc *f, const char *chunked, IrFunc **out, const char **why,
               DiagEngine *de) {
  *out = NULL;
  *why = NULL;
  Chunk C;
  memset(&C, 0, sizeof C);
  C.b.a = a;
  C.b.de = de;
  C.b.pass = "chunk";
  C.b.src = f;
  C.b.map = map_cb;
  C.b.ctx = &C;
  Users u;
  IrModule *scratch = ir_module_new(a);
  C.map = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *C.map);
  Plan *plans = arena_calloc(a, (size_t)f->states.n + 1, sizeof *plans);
  /* Per node: the readout that replaces it (its index + 1), if any. */
  int *readout_of = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *readout_of);
  int *plan_of = arena_calloc(a, (size_t)f->nodes.n + 1, sizeof *plan_of);
  if (!scratch || !C.map || !plans || !readout_of || !plan_of || users_of(a, f, &u)) goto oom;
  C.b.dst = ir_func_new(scratch, f->name, f->kind, f->loc);
  if (!C.b.dst) goto oom;
  ir_func_share_header(C.b.dst, f);
  C.b.dst->inputs = f->inputs;
  C.b.dst->inputs.cap = f->inputs.n;
  for (int i = 0; i < f->states.n; i++)
    if (vec_push(a, &C.b.dst->states, f->states.v[i])) goto oom;
  for (int i = 0; i < f->outputs.n; i++)
    if (vec_push(a, &C.b.dst->outputs, f->outputs.v[i])) goto oom;
  for (int s = 0; s < f->states.n; s++) {
    if (!chunked[s]) continue;
    if (plan_state(&C, &u, s, &plans[s])) goto refused;
    for (int i = 0; i < plans[s].nreads; i++) {
      readout_of[plans[s].reads[i].sum] = i + 1;
      plan_of[plans[s].reads[i].sum] = s;
    }
  }
  /* Copy in order; a readout becomes linattn once its operands exist. */
  Operands *ops = arena_calloc(a, (size_t)f->states.n + 1, sizeof *ops);
  char *have = arena_calloc(a, (size_t)f->states.n + 1, 1);
  if (!ops || !have) goto oom;
  for (IrRef r = 0; r < f->nodes.n; r++) {
    const IrNode *n = &f->nodes.v[r];
    if (readout_of[r]) {
      int s = plan_of[r];
      const Plan *p = &plans[s];
      if (!have[s] && !p->delta && !p->plstm) {
        if (operands(&C, p, &ops[s])) goto refused;
        have[s] = 1;
      }
      const Readout *ro = &p->reads[readout_of[r] - 1];
      IrRef q = ro->vector ? C.map[ro->q] : drop_axis(&C, C.map[ro->q], p->r, p->vax, n->loc);
      IrNode attrs;
      memset(&attrs, 0, sizeof attrs);
      attrs.index = ro->exclusive;
      if (p->plstm) {
        /* q [L..., K], m [L..., J], then plstm_state's own operands. */
        const IrNode *h = &f->nodes.v[p->scan];
        IrType S0 = C.b.dst->nodes.v[C.map[h->args[4]]].type;
        int L = p->r - 3;
        DimExpr d[SEQ_MAX_RANK];
        memcpy(d, S0.dims, sizeof(DimExpr) * (size_t)L);
        IrRef mk = ro->m == IR_NONE ? pb_const(&C.b, 1.0, n->loc) : C.map[ro->m];
        if (!ro->mvec && ro->m != IR_NONE)
          mk = drop_axis(&C, drop_axis(&C, mk, p->r, L + 2, n->loc), p->r - 1, L + 1, n->loc);
        IrRef qv = ro->vector ? C.map[ro->q] : drop_axis(&C, C.map[ro->q], L + 2, L, n->loc);
        IrRef args[7];
        d[L] = S0.dims[L + 2];
        args[0] = pb_shape(&C.b, IR_BROADCAST, qv, ir_type(a, IR_REAL, L + 1, d), n->loc);
        d[L] = S0.dims[L];
        args[1] = pb_shape(&C.b, IR_BROADCAST, mk, ir_type(a, IR_REAL, L + 1, d), n->loc);
        for (int j = 0; j < 5; j++) args[j + 2] = C.map[h->args[j]];
        C.map[r] = pb_node(&C.b, IR_PLSTM, 7, args, &attrs, n->loc);
      } else if (p->delta) {
        /* delta or dplr: q, then the _state op's own operands (S0 last). */
        const IrNode *h = &f->nodes.v[p->scan];
        IrType S0 = C.b.dst->nodes.v[C.map[h->args[h->nargs - 1]]].type;
        DimExpr dq[SEQ_MAX_RANK];
        for (int i = 0; i < p->r - 2; i++) dq[i] = S0.dims[i];
        dq[p->r - 2] = S0.dims[p->r - 1];
        IrRef args[7];
        args[0] = pb_shape(&C.b, IR_BROADCAST, q, ir_type(a, IR_REAL, p->r - 1, dq), n->loc);
        for (int j = 0; j < h->nargs; j++) args[j + 1] = C.map[h->args[j]];
        IrOp op = h->op == IR_DPLR_STATE ? IR_DPLR : IR_DELTA;
        C.map[r] = pb_node(&C.b, op, h->nargs + 1, args, &attrs, n->loc);
      } else {
        q = pb_shape(&C.b, IR_BROADCAST, q, C.b.dst->nodes.v[ops[s].k].type, n->loc);
        IrRef args[5] = {q, ops[s].k, ops[s].v, ops[s].lg, ops[s].S0};
        C.map[r] = pb_node(&C.b, IR_LINATTN, 5, args, &attrs, n->loc);
      }
    } else {
      IrRef *args = n->nargs ? arena_calloc(a, (size_t)n->nargs, sizeof *args) : NULL;
      if (n->nargs && !args) goto oom;
      for (int j = 0; j < n->nargs; j++) args[j] = C.map[n->args[j]];
      C.map[r] = ir_emit(C.b.dst, a, n, n->nargs, args);
      if (C.map[r] == IR_NONE) goto oom;
    }
    if (C.b.failed) return -1;
  }
  for (int s = 0; s < f->states.n; s++) {
    IrState *st = &C.b.dst->states.v[s];
    st->init = st->init >= 0 ? C.map[st->init] : IR_NONE;
    if (!chunked[s]) {
      st->next = C.map[st->next];
      continue;
    }
    const Plan *p = &plans[s];
    if (p->delta || p->plstm) { /* the _state op stays, its last value the final state */
      st->next = C.map[p->scan];
      continue;
    }
    if (!have[s] && operands(&C, p, &ops[s])) goto refused;
    IrRef args[4] = {ops[s].k, ops[s].v, ops[s].lg, ops[s].S0};
    IrRef S = pb_node(&C.b, IR_LINATTN_STATE, 4, args, NULL, f->nodes.v[p->scan].loc);
    if (p->kax == p->r - 2) S = pb_node(&C.b, IR_TRANSPOSE, 1, &S, NULL, f->nodes.v[p->scan].loc);
    st->next = S;
  }
  for (int i = 0; i < f->outputs.n; i++)
    C.b.dst->outputs.v[i].value = C.map[C.b.dst->outputs.v[i].value];
  if (C.b.failed) return -1;
  *out = C.b.dst;
  return 0;
refused:
  if (C.b.failed) return -1;
  *why = C.why ? C.why : "no chunked form";
  return 1;
oom:
  diag_error(de, f->loc, "out of memory");
  return -1;
}

int chunk_module(Arena *a, const IrModule *m, const StrategyPlan *plan, IrModule **out,
                 DiagEngine *de) {
  *out = NULL;
  IrModule *cm = ir_module_new(a), *scratch = ir_module_new(a);
  if (!cm || !scratch) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    return -1;
  }
  cm->entry = m->entry;
  for (int i = 0; i < m->funcs.n; i++) {
    IrFunc *f = m->funcs.v[i];
    char *chunked = arena_calloc(a, (size_t)f->states.n + 1, 1);
    int any = 0;
    if (!chunked) {
      diag_error(de, (SrcLoc){0}, "out of memory");
      return -1;
    }
    for (int k = 0; k < f->states.n; k++)
      any |= chunked[k] = plan->funcs[i][k].form == FORM_CHUNKED;
    if (any && f->kind == IR_FN_MODEL) {
      IrFunc *g;
      const char *why;
      int rc = chunk_func(a, f, chunked, &g, &why, de);
      if (rc < 0) return -1;
      if (rc > 0) {
        diag_error(de, f->loc, "%s has no chunked form: %s", f->name, why);
        return -1;
      }
      if (!(f = ir_func_prune(scratch, g))) {
        diag_error(de, (SrcLoc){0}, "out of memory");
        return -1;
      }
    }
    if (vec_push(a, &cm->funcs, f)) {
      diag_error(de, (SrcLoc){0}, "out of memory");
      return -1;
    }
  }
  *out = cm;
  return 0;
}
