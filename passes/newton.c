/* newton.c - a nonlinear recurrence solved by Newton's method, IR to IR.
 *
 * A group of states whose next values depend on themselves nonlinearly
 * (classify.c: REC_NONLINEAR) has no scan, but the recurrence
 * h[t] = F(x_t, h[t-1]) is the root of the residual h[t] - F(x_t, h[t-1])
 * over all positions at once, and Newton's method finds it by solving one
 * linear recurrence per iteration (docs/algorithms.md, "Newton"). What a
 * solve needs of the cell is its step with the states as inputs, and the
 * Jacobian of the step by those states. This pass builds both as one new
 * cell with no states, the step (newton_step_cell):
 *
 *   inputs   the cell's inputs, then the hoisted values (below), then the
 *            value of every state entering the step: the states not solved
 *            here first, the solved ones last;
 *   outputs  the solved states' next values F_k, then the blocks
 *            J_kj = d F_k / d h_j (elementwise, k-major) from jacobian.c's
 *            diagonal mode: exact Newton for a cell whose Jacobian is
 *            diagonal, or k x k blocks of diagonals as ParaLSTM's [c, h];
 *            for a dense one (GRU, LSTM: h read through weight_hh @ h) the
 *            diagonals of its blocks (jacobian_quasi_cell), which is
 *            quasi-Newton: the same fixed point, reached more slowly.
 *
 * A solve evaluates the step several times at every token, and what the
 * step computes from the inputs alone (the projections W x + b, usually
 * most of its work) is the same each time: such values are hoisted. A node
 * that reads no state but an input, and that a node reading a state reads,
 * becomes an input of the step (looking through reshapes, broadcasts and
 * transposes, so the smaller value is hoisted), and the caller computes it
 * once per token beside the call.
 *
 * scan.c then writes the group as a call of a Newton layer (ir.h, IrNewton)
 * of that step: its results are the solved states' values over the sequence,
 * and everything else of the cell reads them as it reads a scan's. The
 * interpreter defines the solve (interp.c, newton_solve), so the tests check
 * the rewritten cell against its step loop like any other parallel form.
 */
#include "passes/passes.h"

#include <string.h>

static const IrOutput *output_named(const IrFunc *f, const char *name) {
  for (int i = 0; i < f->outputs.n; i++)
    if (strcmp(f->outputs.v[i].name, name) == 0) return &f->outputs.v[i];
  return NULL;
}

/* The cell with each hoisted node read as a new input (after the cell's
 * own), in a module of its own; the hoisted nodes into *hoisted. */
static IrFunc *hoist(Arena *a, IrModule *m, const IrFunc *cell, IrRefs *hoisted) {
  int nn = cell->nodes.n;
  char *dep_state = arena_calloc(a, (size_t)nn + 1, 1),
       *dep_tok = arena_calloc(a, (size_t)nn + 1, 1);
  char *take = arena_calloc(a, (size_t)nn + 1, 1);
  IrRef *map = arena_calloc(a, (size_t)nn + 1, sizeof *map);
  IrFunc *f = ir_func_new(m, cell->name, IR_FN_CELL, cell->loc);
  if (!dep_state || !dep_tok || !take || !map || !f) return NULL;
  for (IrRef r = 0; r < nn; r++) {
    const IrNode *nd = &cell->nodes.v[r];
    dep_state[r] = nd->op == IR_STATE;
    dep_tok[r] = nd->op == IR_INPUT;
    for (int j = 0; j < nd->nargs; j++) {
      dep_state[r] |= dep_state[nd->args[j]];
      dep_tok[r] |= dep_tok[nd->args[j]];
    }
  }
  for (IrRef r = 0; r < nn; r++) {
    const IrNode *nd = &cell->nodes.v[r];
    if (!dep_state[r]) continue;
    for (int j = 0; j < nd->nargs; j++) {
      IrRef x = nd->args[j];
      if (dep_state[x] || !dep_tok[x]) continue;
      while (cell->nodes.v[x].op == IR_RESHAPE || cell->nodes.v[x].op == IR_BROADCAST ||
             cell->nodes.v[x].op == IR_TRANSPOSE)
        x = cell->nodes.v[x].args[0];
      if (cell->nodes.v[x].op != IR_INPUT) take[x] = 1;
    }
  }
  ir_func_share_header(f, cell);
  for (int i = 0; i < cell->inputs.n; i++)
    if (vec_push(a, &f->inputs, cell->inputs.v[i])) return NULL;
  for (IrRef r = 0; r < nn; r++) {
    IrNode nd = cell->nodes.v[r];
    IrRef *args = nd.nargs ? arena_calloc(a, (size_t)nd.nargs, sizeof *args) : NULL;
    if (nd.nargs && !args) return NULL;
    for (int j = 0; j < nd.nargs; j++) args[j] = map[nd.args[j]];
    if (take[r]) {
      IrInput in = {arena_printf(a, "%s.hoisted%d", cell->name, (int)hoisted->n), nd.type, nd.loc,
                    0};
      IrNode leaf;
      memset(&leaf, 0, sizeof leaf);
      leaf.op = IR_INPUT;
      leaf.index = f->inputs.n;
      leaf.type = nd.type;
      leaf.loc = nd.loc;
      if (!in.name || vec_push(a, &f->inputs, in) || vec_push(a, hoisted, r)) return NULL;
      nd = leaf;
      args = NULL;
    }
    if ((map[r] = ir_emit(f, a, &nd, nd.nargs, args)) == IR_NONE) return NULL;
  }
  for (int k = 0; k < cell->states.n; k++) {
    IrState st = cell->states.v[k];
    st.init = st.init >= 0 ? map[st.init] : IR_NONE;
    st.next = map[st.next];
    if (vec_push(a, &f->states, st)) return NULL;
  }
  return f;
}

int newton_step_cell(Arena *a, const IrFunc *cell, const int *solved, int n, int want_dense,
                     IrFunc **out, IrRefs *hoisted, int *quasi, int *dense, const char **why,
                     DiagEngine *de) {
  *out = NULL;
  *why = NULL;
  hoisted->n = 0;
  IrModule *scratch = ir_module_new(a);
  if (!scratch) goto oom;
  scratch->entry = 0; /* the diagonal cell, once built (ir_verify wants an entry) */
  if (n < 1 || n > NEWTON_MAX_STATES) {
    *why = arena_printf(a, "%d states are solved together (Newton takes 1 to %d)", n,
                        NEWTON_MAX_STATES);
    return 1;
  }
  for (int k = 0; k < n; k++) {
    const IrState *st = &cell->states.v[solved[k]];
    if (st->type.elem != IR_REAL || !ir_type_eq(st->type, cell->states.v[solved[0]].type)) {
      *why = arena_printf(a, "state %s is complex or of another shape than %s", st->name,
                          cell->states.v[solved[0]].name);
      return 1;
    }
  }
  /* The diagonal blocks of the Jacobian of the cell with its hoisted
   * values as inputs; a cell whose Jacobian has none says why (quietly:
   * the caller reports). */
  IrModule *hm = ir_module_new(a);
  const IrFunc *hc = hm ? hoist(a, hm, cell, hoisted) : NULL;
  if (!hc) goto oom;
  DiagEngine quiet;
  diag_init(&quiet, a, NULL);
  IrFunc *d;
  *quasi = *dense = 0;
  int no_diag = jacobian_diag_cell(a, scratch, hc, &d, &quiet) != 0;
  if (no_diag && want_dense && n == cell->states.n) {
    /* A dense Jacobian, whole: applied to tangents (jacobian.c's jvp
     * mode), the solve forms it column by column. */
    DiagEngine q2;
    diag_init(&q2, a, NULL);
    if (jacobian_jvp_cell(a, scratch, hc, &d, &q2)) {
      *why = "its Jacobian-vector product cannot be formed";
      return 1;
    }
    *dense = 1;
  } else if (no_diag) {
    /* A dense Jacobian: quasi-Newton with its diagonal, where it can be
     * followed (jacobian.c). */
    DiagEngine q2;
    diag_init(&q2, a, NULL);
    if (jacobian_quasi_cell(a, scratch, hc, &d, &q2)) {
      for (int i = 0; i < q2.diags.n; i++)
        if (q2.diags.v[i].severity == DIAG_ERROR) *why = q2.diags.v[i].message;
      if (!*why) *why = "its Jacobian has no diagonal form";
      return 1;
    }
    *quasi = 1;
  }

  IrFunc *f = ir_func_new(scratch, arena_printf(a, "%s.step", cell->name), IR_FN_CELL, cell->loc);
  int ns = cell->states.n, ni = hc->inputs.n;
  int *input_of = arena_calloc(a, (size_t)ns + 1, sizeof *input_of);     /* state -> input */
  int *tangent_of = arena_calloc(a, (size_t)ns + 1, sizeof *tangent_of); /* dense: likewise */
  char *is_solved = arena_calloc(a, (size_t)ns + 1, 1);
  IrRef *map = arena_calloc(a, (size_t)d->nodes.n + 1, sizeof *map);
  if (!f || !f->name || !input_of || !tangent_of || !is_solved || !map) goto oom;
  ir_func_share_header(f, cell);
  for (int i = 0; i < ni; i++)
    if (vec_push(a, &f->inputs, hc->inputs.v[i])) goto oom;
  for (int k = 0; k < n; k++) is_solved[solved[k]] = 1;
  for (int pass = 0; pass < 2; pass++)
    for (int j = 0; j < ns; j++) {
      int k = j;
      if (pass == 1) {
        if (j >= n) break;
        k = solved[j];
      } else if (is_solved[k]) {
        continue;
      }
      const IrState *st = &cell->states.v[k];
      IrInput in = {st->name, st->type, st->loc, 0};
      input_of[k] = f->inputs.n;
      if (vec_push(a, &f->inputs, in)) goto oom;
    }
  /* Dense: the jvp cell's tangents (its inputs after hc's, one per state)
   * after the solved states, in their order. */
  for (int j = 0; *dense && j < n; j++) {
    const IrInput *t = &d->inputs.v[ni + solved[j]];
    tangent_of[solved[j]] = f->inputs.n;
    if (vec_push(a, &f->inputs, *t)) goto oom;
  }
  /* The diagonal (or jvp) cell's nodes, with each state read as its input. */
  for (IrRef r = 0; r < d->nodes.n; r++) {
    IrNode nd = d->nodes.v[r];
    IrRef *args = nd.nargs ? arena_calloc(a, (size_t)nd.nargs, sizeof *args) : NULL;
    if (nd.nargs && !args) goto oom;
    for (int j = 0; j < nd.nargs; j++) args[j] = map[nd.args[j]];
    if (nd.op == IR_STATE) {
      nd.op = IR_INPUT;
      nd.index = input_of[nd.index];
    } else if (nd.op == IR_INPUT && nd.index >= ni) {
      nd.index = tangent_of[nd.index - ni];
    }
    if ((map[r] = ir_emit(f, a, &nd, nd.nargs, args)) == IR_NONE) goto oom;
  }
  /* The next values, then the blocks d<k>'/d<j> (dense: the products d<k>'). */
  for (int k = 0; k < (*dense ? 2 * n : n + n * n); k++) {
    int kk = k < n ? k : *dense ? k - n : (k - n) / n, jj = k < n ? k : (k - n) % n;
    const IrState *sk = &cell->states.v[solved[kk]], *sj = &cell->states.v[solved[jj]];
    const char *name = k < n    ? arena_printf(a, "%s'", sk->name)
                       : *dense ? arena_printf(a, "d%s'", sk->name)
                                : arena_printf(a, "d%s'/d%s", sk->name, sj->name);
    const IrOutput *o = name ? output_named(d, name) : NULL;
    if (!o) {
      diag_internal(de, "newton", "%s has no output %s", d->name, name ? name : "?");
      return -1;
    }
    IrOutput to = *o;
    to.value = map[o->value];
    if (vec_push(a, &f->outputs, to)) goto oom;
  }
  /* The other states' next values and blocks go. */
  if (!(*out = ir_func_prune(scratch, f))) goto oom;
  return 0;
oom:
  diag_error(de, cell->loc, "out of memory building the Newton step of %s", cell->name);
  return -1;
}
