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
 *   inputs   the cell's inputs, then the value of every state entering the
 *            step: the states not solved here first, the solved ones last;
 *   outputs  the solved states' next values F_k, then the blocks
 *            J_kj = d F_k / d h_j (elementwise, k-major) from jacobian.c's
 *            diagonal mode (so only cells whose Jacobian is diagonal, or
 *            k x k blocks of diagonals as ParaLSTM's [c, h], have one).
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

int newton_step_cell(Arena *a, const IrFunc *cell, const int *solved, int n, IrFunc **out,
                     const char **why, DiagEngine *de) {
  *out = NULL;
  *why = NULL;
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
  /* The diagonal blocks of the Jacobian; a cell whose Jacobian has none
   * says why (quietly: the caller reports). */
  DiagEngine quiet;
  diag_init(&quiet, a, NULL);
  IrFunc *d;
  if (jacobian_diag_cell(a, scratch, cell, &d, &quiet)) {
    for (int i = 0; i < quiet.diags.n; i++)
      if (quiet.diags.v[i].severity == DIAG_ERROR) *why = quiet.diags.v[i].message;
    if (!*why) *why = "its Jacobian has no diagonal form";
    return 1;
  }

  IrFunc *f = ir_func_new(scratch, arena_printf(a, "%s.step", cell->name), IR_FN_CELL, cell->loc);
  int ns = cell->states.n, ni = cell->inputs.n;
  int *input_of = arena_calloc(a, (size_t)ns + 1, sizeof *input_of); /* state -> input */
  char *is_solved = arena_calloc(a, (size_t)ns + 1, 1);
  IrRef *map = arena_calloc(a, (size_t)d->nodes.n + 1, sizeof *map);
  if (!f || !f->name || !input_of || !is_solved || !map) goto oom;
  f->doc = cell->doc;
  f->dims = cell->dims;
  f->params = cell->params;
  f->dim_defaults = cell->dim_defaults;
  /* Shared with the cell, so never grown in place. */
  f->dims.cap = f->dims.n;
  f->params.cap = f->params.n;
  f->dim_defaults.cap = f->dim_defaults.n;
  for (int i = 0; i < ni; i++)
    if (vec_push(a, &f->inputs, cell->inputs.v[i])) goto oom;
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
      IrInput in = {st->name, st->type, st->loc};
      input_of[k] = f->inputs.n;
      if (vec_push(a, &f->inputs, in)) goto oom;
    }
  /* The diagonal cell's nodes, with each state read as its input. */
  for (IrRef r = 0; r < d->nodes.n; r++) {
    IrNode nd = d->nodes.v[r];
    IrRef *args = nd.nargs ? arena_calloc(a, (size_t)nd.nargs, sizeof *args) : NULL;
    if (nd.nargs && !args) goto oom;
    for (int j = 0; j < nd.nargs; j++) args[j] = map[nd.args[j]];
    if (nd.op == IR_STATE) {
      nd.op = IR_INPUT;
      nd.index = input_of[nd.index];
    }
    if ((map[r] = ir_emit(f, a, &nd, nd.nargs, args)) == IR_NONE) goto oom;
  }
  for (int k = 0; k < n + n * n; k++) {
    const IrState *sk = &cell->states.v[solved[k < n ? k : (k - n) / n]];
    const IrState *sj = &cell->states.v[solved[k < n ? k : (k - n) % n]];
    const char *name =
        k < n ? arena_printf(a, "%s'", sk->name) : arena_printf(a, "d%s'/d%s", sk->name, sj->name);
    const IrOutput *o = name ? output_named(d, name) : NULL;
    if (!o) {
      diag_internal(de, "newton", "%s.diag has no output %s", cell->name, name ? name : "?");
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
