/* strategy.c - which form solves each state: the user's request
 * (--strategy), checked against what each class admits, and for `auto` the
 * cost model.
 *
 * A cell runs in parallel only when all its states do (its parallel form is
 * one model, scan.c), so forms are settled per cell: a state named in the
 * request with a form its class does not admit, or a parallel form for a
 * cell whose other states must stay sequential, is an error that says why;
 * a form asked for every state applies where it is admitted.
 */
#include "passes/passes.h"

#include <string.h>

const char *form_name(Form f) {
  switch (f) {
  case FORM_AUTO:
    return "auto";
  case FORM_SEQUENTIAL:
    return "sequential";
  case FORM_SCAN:
    return "scan";
  case FORM_CHUNKED:
    return "chunked";
  case FORM_NEWTON:
    return "newton";
  case FORM_COUNT:
    break;
  }
  return "?";
}

static int form_parse(const char *s, size_t n, Form *out) {
  for (int f = FORM_AUTO; f < FORM_COUNT; f++)
    if (strlen(form_name((Form)f)) == n && strncmp(form_name((Form)f), s, n) == 0) {
      *out = (Form)f;
      return 0;
    }
  return -1;
}

int strategy_parse(Arena *a, const char *spec, StrategyRequest *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  out->all = FORM_AUTO;
  int cap = 1;
  for (const char *p = spec; p && *p; p++) cap += *p == ',';
  out->names = arena_calloc(a, (size_t)cap, sizeof *out->names);
  out->forms = arena_calloc(a, (size_t)cap, sizeof *out->forms);
  if (!out->names || !out->forms) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  const char *p = spec ? spec : "";
  int seen_all = 0;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    const char *kind = eq ? eq + 1 : p;
    size_t klen = eq ? len - (size_t)(eq + 1 - p) : len;
    Form f;
    if (form_parse(kind, klen, &f)) {
      snprintf(err, errlen,
               "--strategy: unknown form '%.*s' (auto, sequential, scan, chunked, newton)",
               (int)klen, kind);
      return -1;
    }
    if (!eq) {
      if (seen_all++) {
        snprintf(err, errlen, "--strategy: a form for every state is given twice");
        return -1;
      }
      out->all = f;
    } else {
      if (eq == p) {
        snprintf(err, errlen, "--strategy: '%.*s' names no state", (int)len, p);
        return -1;
      }
      const char *name = arena_strndup(a, p, (size_t)(eq - p));
      if (!name) {
        snprintf(err, errlen, "out of memory");
        return -1;
      }
      for (int i = 0; i < out->n; i++)
        if (strcmp(out->names[i], name) == 0) {
          snprintf(err, errlen, "--strategy: state '%s' is given twice", name);
          return -1;
        }
      out->names[out->n] = name;
      out->forms[out->n++] = f;
    }
    p += len;
    if (*p == ',') p++;
  }
  return 0;
}

/* Whether class cls admits form f. */
static int admits(RecClass cls, Form f) {
  switch (f) {
  case FORM_AUTO:
  case FORM_SEQUENTIAL:
    return 1;
  case FORM_SCAN:
    return cls == REC_MAP || cls == REC_CARRIED || cls == REC_SHIFT || cls == REC_LIN_DIAG ||
           cls == REC_LIN_MATRIX || cls == REC_MAXPLUS;
  case FORM_CHUNKED:
    return cls == REC_LIN_MATRIX || cls == REC_LIN_DPLR || cls == REC_LIN_SMALL_DENSE;
  case FORM_NEWTON:
    return cls == REC_NONLINEAR;
  case FORM_COUNT:
    break;
  }
  return 0;
}

/* The form a request for every state gives a state of class cls: the form
 * where the class admits it; a chunked request scans the states of its cell
 * that have no chunked form (a linear attention's normalizer), since a cell
 * runs in parallel only as a whole. */
static Form form_for_all(Form all, RecClass cls) {
  if (admits(cls, all)) return all;
  if ((all == FORM_CHUNKED || all == FORM_NEWTON) && admits(cls, FORM_SCAN)) return FORM_SCAN;
  return FORM_SEQUENTIAL;
}

/* The flat state named `name` under root: its instance's function and the
 * state's index there; -1 if there is none. */
static int find_named_state(const IrFlat *flat, const char *name, const IrFunc **fn, int *k) {
  for (int i = 0; i < flat->insts.n; i++) {
    const IrFlatInst *in = &flat->insts.v[i];
    for (int s = 0; s < in->fn->states.n; s++)
      if (strcmp(flat->states.v[in->states[s]].name, name) == 0) {
        *fn = in->fn;
        *k = s;
        return 0;
      }
  }
  return -1;
}

/* The chunked forms of a cell whose parallel form is par: a dry run of
 * chunk.c for the states sf asks chunked; a state that has none runs as a
 * scan when it was asked for every state and its class admits one (else the
 * cell runs its step loop), and is an error when named. */
static int chunked_forms(Arena *a, const IrFunc *f, StateForm *sf, const char *named,
                         const IrFunc *par, DiagEngine *de) {
  char *chunked = arena_calloc(a, (size_t)f->states.n + 1, 1);
  if (!chunked) {
    diag_error(de, (SrcLoc){0}, "out of memory choosing forms");
    return -1;
  }
  for (int k = 0; k < f->states.n; k++) {
    if (sf[k].form != FORM_CHUNKED) continue;
    memset(chunked, 0, (size_t)f->states.n);
    chunked[k] = 1;
    IrFunc *out;
    const char *why;
    int rc = chunk_func(a, par, chunked, &out, &why, de);
    if (rc < 0) return -1;
    if (rc == 0) continue;
    if (named[k]) {
      diag_error(de, f->states.v[k].loc, "--strategy: state %s of %s has no chunked form: %s",
                 f->states.v[k].name, f->name, why);
      return -1;
    }
    if (!sf[k].admitted[FORM_SCAN]) { /* no other parallel form: the cell's step loop */
      for (int j = 0; j < f->states.n; j++) {
        sf[j].form = FORM_SEQUENTIAL;
        sf[j].why = arena_printf(a, "sequential: state %s has no chunked form (%s)",
                                 f->states.v[k].name, why);
      }
      return 0;
    }
    sf[k].form = FORM_SCAN;
    sf[k].why = arena_printf(a, "scan: no chunked form (%s)", why);
  }
  return 0;
}

/* The dims of function f's first instance under root, concrete; NULL if
 * root does not instantiate f. */
static int64_t *instance_dims(Arena *a, const IrFlat *flat, const IrFunc *f,
                              const int64_t *root_dims) {
  for (int i = 0; i < flat->insts.n; i++) {
    const IrFlatInst *in = &flat->insts.v[i];
    if (in->fn != f) continue;
    int64_t *d = arena_calloc(a, (size_t)f->dims.n + 1, sizeof *d);
    if (!d) return NULL;
    for (int k = 0; k < f->dims.n; k++)
      if (dim_eval(in->dims[k], root_dims, &d[k])) return NULL;
    return d;
  }
  return NULL;
}

/* The parallel form a state of the cell costs least in (of those its class
 * admits), or FORM_SEQUENTIAL when it admits none. */
static Form best_parallel(const StateForm *sf) {
  Form best = FORM_SEQUENTIAL;
  for (int f = FORM_SCAN; f <= FORM_NEWTON; f++)
    if (sf->admitted[f] && (f != FORM_NEWTON || sf->costed) &&
        (best == FORM_SEQUENTIAL || sf->cost[f].seconds < sf->cost[best].seconds))
      best = (Form)f;
  return best;
}

/* `auto` for a cell: all its states sequential, or all in their cheapest
 * parallel forms (states the request pinned keep their form), whichever the
 * cost model says is faster per token. */
static void choose_auto(Arena *a, const IrFunc *f, StateForm *sf, const char *named,
                        const int64_t *dims, const CostMachine *mc) {
  int any_auto = 0, par_ok = 1, seq_ok = 1;
  double seq = 0, par = 0;
  for (int k = 0; k < f->states.n; k++) {
    if (sf[k].form == FORM_AUTO) {
      any_auto = 1;
      if (best_parallel(&sf[k]) == FORM_SEQUENTIAL) par_ok = 0;
    } else if (named[k] && sf[k].form != FORM_SEQUENTIAL) {
      seq_ok = 0;
    } else if (sf[k].form == FORM_SEQUENTIAL) {
      par_ok = 0;
    }
  }
  if (!any_auto) return;
  int costed = 1;
  for (int k = 0; k < f->states.n; k++) {
    costed &= sf[k].costed;
    if (!sf[k].costed) continue;
    seq += sf[k].cost[FORM_SEQUENTIAL].seconds;
    Form pf = sf[k].form == FORM_AUTO ? best_parallel(&sf[k]) : sf[k].form;
    if (pf != FORM_SEQUENTIAL) par += sf[k].cost[pf].seconds;
  }
  /* The weight products after the states: per step in the step loop, over
   * token rows in parallel forms. A nonlinear state's own costs count the
   * products it reads already. */
  int nonlinear = 0;
  for (int k = 0; k < f->states.n; k++) nonlinear |= sf[k].admitted[FORM_NEWTON];
  int products = 0;
  if (costed && mc && dims && !nonlinear) {
    double ps = cost_state_products(f, dims, mc, mc->batch, 0);
    products = ps > 0;
    seq += ps;
    par += cost_state_products(f, dims, mc, mc->batch, 1);
  }
  int parallel = par_ok && (!seq_ok || (costed && par < seq));
  for (int k = 0; k < f->states.n; k++) {
    if (sf[k].form != FORM_AUTO) continue;
    sf[k].form = parallel ? best_parallel(&sf[k]) : FORM_SEQUENTIAL;
    if (!par_ok && sf[k].admitted[FORM_NEWTON])
      sf[k].why = arena_printf(
          a,
          "auto: sequential; Newton evaluates the step about %d times per token (%s), split "
          "over every thread where the step loop splits the batch, so it pays only with more "
          "than %d times as many threads as examples (the cost model compares them there)",
          sf[k].newton_evals,
          sf[k].newton_evals > COST_NEWTON_ITERS_EXACT + 2 ? "quasi-Newton" : "exact Newton",
          sf[k].newton_evals);
    else if (!par_ok)
      sf[k].why = "auto: sequential, since not every state of the cell has a parallel form";
    else if (!costed)
      sf[k].why = "auto: sequential (no instance of the cell to cost)";
    else
      sf[k].why = arena_printf(
          a, "auto: the cell's recurrences%s %s run %.3g us per token, %s %.3g",
          products ? " and the weight products reading them" : "",
          parallel ? "in parallel forms" : "sequentially", (parallel ? par : seq) * 1e6,
          parallel ? "sequentially" : "in parallel forms", (parallel ? seq : par) * 1e6);
  }
}

int strategy_choose(Arena *a, const IrModule *m, const IrFunc *root, const int64_t *root_dims,
                    const ClassifyResult *cr, const StrategyRequest *req, const CostMachine *mc,
                    StrategyPlan **out, DiagEngine *de) {
  *out = NULL;
  StrategyPlan *plan = arena_calloc(a, 1, sizeof *plan);
  StateForm **funcs = arena_calloc(a, (size_t)m->funcs.n + 1, sizeof *funcs);
  /* named[f][k]: the request names state k of function f (its form is pinned). */
  char **named = arena_calloc(a, (size_t)m->funcs.n + 1, sizeof *named);
  if (!plan || !funcs || !named) goto oom;
  plan->funcs = funcs;
  plan->dims = arena_calloc(a, (size_t)m->funcs.n + 1, sizeof *plan->dims);
  if (!plan->dims) goto oom;
  StrategyRequest none = {{0}, FORM_AUTO, 0, NULL, NULL, 0};
  if (!req) req = &none;
  plan->newton = req->newton;
  if (!(plan->newton.rtol > 0)) plan->newton.rtol = NEWTON_RTOL;
  if (!(plan->newton.atol > 0)) plan->newton.atol = NEWTON_ATOL;
  if (plan->newton.max_iter <= 0) plan->newton.max_iter = NEWTON_MAX_ITER;
  for (int i = 0; i < m->funcs.n; i++) {
    const IrFunc *f = m->funcs.v[i];
    funcs[i] = arena_calloc(a, (size_t)f->states.n + 1, sizeof **funcs);
    named[i] = arena_calloc(a, (size_t)f->states.n + 1, 1);
    if (!funcs[i] || !named[i]) goto oom;
    for (int k = 0; k < f->states.n; k++) {
      RecClass cls = cr->funcs[i].states[k].cls;
      StateForm *sf = &funcs[i][k];
      sf->form = form_for_all(req->all, cls);
      sf->why = req->all == FORM_AUTO ? "auto"
                : req->preference     ? (sf->form == req->all ? "auto on the GPU: the scan form"
                                                              : "auto on the GPU: the step loop")
                : sf->form == req->all
                    ? arena_printf(a, "--strategy=%s", form_name(req->all))
                    : arena_printf(a, "--strategy=%s, which %s does not admit", form_name(req->all),
                                   classify_class_name(cls));
    }
  }
  /* Every form a state's class admits, costed at the dims of the cell's
   * first instance. */
  IrFlat flat;
  if (ir_flatten(a, m, root, &flat, de)) return -1;
  for (int i = 0; i < m->funcs.n; i++) {
    const IrFunc *f = m->funcs.v[i];
    if (f->kind != IR_FN_CELL || f->states.n == 0) continue;
    int64_t *dims = root_dims ? instance_dims(a, &flat, f, root_dims) : NULL;
    plan->dims[i] = dims;
    if (!mc) dims = NULL; /* no machine: nothing is costed */
    for (int k = 0; k < f->states.n; k++) {
      StateForm *sf = &funcs[i][k];
      RecClass cls = cr->funcs[i].states[k].cls;
      int ok = dims != NULL;
      for (int fm = FORM_SEQUENTIAL; fm < FORM_COUNT; fm++) {
        sf->admitted[fm] = admits(cls, (Form)fm);
        /* Newton needs the Jacobian's diagonal blocks (newton.c). */
        if (fm == FORM_NEWTON) {
          RecJacobian jac = cr->funcs[i].states[k].jacobian;
          sf->admitted[fm] &=
              jac == REC_JAC_DIAG || jac == REC_JAC_BLOCK_DIAG || jac == REC_JAC_DENSE;
          sf->newton_evals = cost_newton_evals(jac);
        }
        /* The delta rule's chunked form needs its operands found. */
        if (sf->admitted[fm] && cls == REC_LIN_DPLR && fm == FORM_CHUNKED) {
          DeltaForm dform;
          const char *why;
          int rc = delta_analyze(a, f, k, &dform, &why);
          if (rc < 0) goto oom;
          sf->admitted[fm] = rc == 0;
        }
        if (sf->admitted[fm] && cls == REC_LIN_SMALL_DENSE && fm == FORM_CHUNKED) {
          TransitionForm tform;
          const char *why;
          int rc = transition_analyze(a, f, k, 0, &tform, &why);
          if (rc < 0) goto oom;
          sf->admitted[fm] = rc == 0;
        }
        if (ok && sf->admitted[fm] &&
            cost_state(f, &cr->funcs[i].states[k], dims, mc, mc->batch, (Form)fm, &sf->cost[fm]))
          ok = 0;
      }
      sf->costed = ok;
      sf->conv = ok && cost_convolution(f, &cr->funcs[i].states[k], dims, mc, mc->batch,
                                        COST_CONV_T, &sf->conv_cost) == 0;
    }
  }
  /* Named states pin their function's state; the name must exist and its
   * class must admit the form. */
  for (int r = 0; r < req->n; r++) {
    const IrFunc *fn = NULL;
    int k = -1, fi = -1;
    if (find_named_state(&flat, req->names[r], &fn, &k)) {
      diag_error(de, root->loc, "--strategy: %s has no state named '%s'", root->name,
                 req->names[r]);
      return -1;
    }
    for (int i = 0; i < m->funcs.n; i++)
      if (m->funcs.v[i] == fn) fi = i;
    RecClass cls = cr->funcs[fi].states[k].cls;
    if (!admits(cls, req->forms[r])) {
      diag_error(de, fn->states.v[k].loc,
                 "--strategy: state %s is %s, which has no %s form (it admits: sequential%s%s%s)",
                 req->names[r], classify_class_name(cls), form_name(req->forms[r]),
                 admits(cls, FORM_SCAN) ? ", scan" : "",
                 admits(cls, FORM_CHUNKED) ? ", chunked" : "",
                 admits(cls, FORM_NEWTON) ? ", newton" : "");
      return -1;
    }
    if (named[fi][k] && funcs[fi][k].form != req->forms[r]) {
      diag_error(de, fn->states.v[k].loc,
                 "--strategy: two instances of %s ask for different forms of its state %s",
                 fn->name, fn->states.v[k].name);
      return -1;
    }
    named[fi][k] = 1;
    funcs[fi][k].form = req->forms[r];
    funcs[fi][k].why = arena_printf(a, "--strategy=%s=%s", req->names[r], form_name(req->forms[r]));
  }
  /* A cell runs in parallel as a whole. */
  for (int i = 0; i < m->funcs.n; i++) {
    const IrFunc *f = m->funcs.v[i];
    if (f->kind != IR_FN_CELL || f->states.n == 0) continue;
    StateForm *sf = funcs[i];
    choose_auto(a, f, sf, named[i], plan->dims[i], mc);
    int nseq = 0, pinned_par = -1, seq_state = -1;
    for (int k = 0; k < f->states.n; k++) {
      if (sf[k].form == FORM_SEQUENTIAL) {
        nseq++;
        if (seq_state < 0 || named[i][k]) seq_state = k;
      } else if (named[i][k]) {
        pinned_par = k;
      }
    }
    if (nseq == 0) {
      /* The parallel form must exist: a dry run says why not. */
      IrFunc *par;
      const char *why;
      int rc = scan_cell(a, f, &cr->funcs[i], &plan->newton, &par, NULL, &why, de);
      if (rc < 0) return -1;
      if (rc == 0 && chunked_forms(a, f, sf, named[i], par, de)) return -1;
      if (rc > 0) {
        for (int k = 0; k < f->states.n; k++)
          if (named[i][k]) {
            diag_error(de, f->states.v[k].loc, "--strategy: %s has no parallel form: %s", f->name,
                       why);
            return -1;
          }
        for (int k = 0; k < f->states.n; k++) {
          sf[k].form = FORM_SEQUENTIAL;
          sf[k].why = arena_printf(a, "sequential: no parallel form of %s (%s)", f->name, why);
        }
      }
      continue;
    }
    if (nseq == f->states.n) continue;
    if (pinned_par >= 0) {
      diag_error(de, f->states.v[pinned_par].loc,
                 "--strategy: state %s of %s can run in parallel only with all of the cell's "
                 "states, but %s is %s (%s)",
                 f->states.v[pinned_par].name, f->name, f->states.v[seq_state].name,
                 form_name(FORM_SEQUENTIAL), sf[seq_state].why);
      return -1;
    }
    for (int k = 0; k < f->states.n; k++)
      if (sf[k].form != FORM_SEQUENTIAL) {
        sf[k].form = FORM_SEQUENTIAL;
        sf[k].why = arena_printf(a, "sequential: %s of the same cell is sequential",
                                 f->states.v[seq_state].name);
      }
  }
  /* A request for every state that no state could take is a mistake. */
  if (!req->preference &&
      (req->all == FORM_SCAN || req->all == FORM_CHUNKED || req->all == FORM_NEWTON)) {
    int any = 0;
    for (int i = 0; i < m->funcs.n; i++)
      for (int k = 0; k < m->funcs.v[i]->states.n; k++) any |= funcs[i][k].form == req->all;
    if (!any) {
      const char *why = "";
      for (int i = 0; i < m->funcs.n; i++)
        for (int k = 0; k < m->funcs.v[i]->states.n; k++)
          why = arena_printf(a, "%s%s%s: %s", why, *why ? "; " : "",
                             m->funcs.v[i]->states.v[k].name, funcs[i][k].why);
      diag_error(de, root->loc, "--strategy=%s: no state of %s has that form (%s)",
                 form_name(req->all), root->name, why);
      return -1;
    }
  }
  /* A dense Jacobian's Newton: which kind (newton.c). */
  for (int i = 0; i < m->funcs.n; i++)
    for (int k = 0; k < m->funcs.v[i]->states.n; k++) {
      StateForm *sf = &funcs[i][k];
      if (sf->form != FORM_NEWTON || cr->funcs[i].states[k].jacobian != REC_JAC_DENSE) continue;
      /* Formed whole only for a group of all the cell's states. */
      int all = 1;
      for (int j = 0; j < m->funcs.v[i]->states.n; j++)
        all &= cr->funcs[i].states[j].group == cr->funcs[i].states[k].group;
      sf->why =
          arena_printf(a, "%s; %s", sf->why,
                       plan->newton.dense && all ? "exact Newton, its dense Jacobian formed whole "
                                                   "(the step once per column)"
                                                 : "quasi-Newton with its dense Jacobian's "
                                                   "diagonals (--newton-jacobian dense: exact)");
      if (!sf->why) goto oom;
    }
  *out = plan;
  return 0;
oom:
  diag_error(de, (SrcLoc){0}, "out of memory choosing forms");
  return -1;
}

/* A time-invariant state's convolution form: its cost in the columns of the
 * others, the sequence length it assumed, and its time against the form
 * chosen. Reported only: no pass builds it. */
static void print_convolution(FILE *out, const StateForm *sf) {
  const FormCost *cv = &sf->conv_cost, *chosen = &sf->cost[sf->form];
  fprintf(out,
          "    convolution%10.4g flops %10.4g bytes per token, %8.4g us per token; reported, not "
          "built (T = %d assumed)",
          cv->flops, cv->bytes, cv->seconds * 1e6, COST_CONV_T);
  if (chosen->seconds > 0)
    fprintf(out, ": %.3g times the %s form's time", cv->seconds / chosen->seconds,
            form_name(sf->form));
  fputc('\n', out);
}

void strategy_print(FILE *out, const IrModule *m, const StrategyPlan *plan) {
  for (int i = 0; i < m->funcs.n; i++) {
    const IrFunc *f = m->funcs.v[i];
    if (f->kind != IR_FN_CELL || f->states.n == 0) continue;
    fprintf(out, "forms of %s:\n", f->name);
    if (plan->dims[i]) {
      double fl, io, wb;
      cost_cell_work(f, plan->dims[i], &fl, &io, &wb);
      fprintf(out,
              "  per token, any form: %.4g flops, %.4g bytes in and out; weights %.4g bytes "
              "per call\n",
              fl, io, wb);
    }
    for (int k = 0; k < f->states.n; k++) {
      const StateForm *sf = &plan->funcs[i][k];
      fprintf(out, "  state %s: %s (%s)\n", f->states.v[k].name, form_name(sf->form), sf->why);
      if (sf->admitted[FORM_NEWTON] && !sf->costed)
        fprintf(out, "    %-10s admitted (--strategy=newton), not costed\n",
                form_name(FORM_NEWTON));
      if (!sf->costed) continue;
      for (int fm = FORM_SEQUENTIAL; fm <= FORM_NEWTON; fm++)
        if (sf->admitted[fm])
          fprintf(out, "    %-10s %10.4g flops %10.4g bytes per token, %8.4g us per token\n",
                  form_name((Form)fm), sf->cost[fm].flops, sf->cost[fm].bytes,
                  sf->cost[fm].seconds * 1e6);
      if (sf->conv) print_convolution(out, sf);
    }
  }
}
