/* print.c - the schedule as stable text (`seqc --emit=sched`): the
 * signature, then per instance its buffers and its stage tree. Nodes are
 * named as in `--emit=ir` (v12), so the two read side by side. */
#include "sched/sched_internal.h"

static const char *rows_name(SchedRows r) {
  switch (r) {
  case SCHED_ROWS_ONE:
    return "1";
  case SCHED_ROWS_B:
    return "B";
  case SCHED_ROWS_BT:
    return "B*T";
  case SCHED_ROWS_BTC:
    return "B*Tc";
  }
  return "?";
}

/* Rows of a class's loop in instance in. */
static const char *class_rows(const SchedInst *in, SchedClass c) {
  return c == SCHED_STEP || c == SCHED_EXAMPLE ? "B"
         : c == SCHED_CONST                    ? "1"
         : in->chunked                         ? "B*Tc"
                                               : "B*T";
}

static void print_tensor(FILE *out, const char *kind, const AbiTensor *t) {
  fprintf(out, "  %s %s [", kind, t->name);
  for (int d = 0; d < t->ndim; d++) fprintf(out, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
  fprintf(out, "]%s%s\n", t->is_int ? " int32" : "", t->is_complex ? " complex (re, im)" : "");
}

static void print_shape(FILE *out, const SchedValue *v) {
  fputc('[', out);
  for (int d = 0; d < v->rank; d++) fprintf(out, "%s%lld", d ? ", " : "", (long long)v->shape[d]);
  fputc(']', out);
  if (v->w == 2) fputs(" complex", out);
}

static void print_buf(FILE *out, const SchedInst *in, int i) {
  const SchedBuf *b = &in->bufs.v[i];
  fprintf(out, "    b%d ", i);
  switch (b->kind) {
  case SCHED_BUF_NODE:
    fprintf(out, "v%d", b->node);
    break;
  case SCHED_BUF_PACKED:
    fprintf(out, "packed weight of v%d (only when the call packs)", b->node);
    break;
  case SCHED_BUF_CREAL:
    fprintf(out, "real form of the complex weight of v%d", b->node);
    break;
  case SCHED_BUF_GATHER:
    fprintf(out, "chunk rows of the operand of v%d", b->node);
    break;
  case SCHED_BUF_CALL_OUT:
    fprintf(out, "output %d of call v%d", b->index, b->node);
    break;
  case SCHED_BUF_CALL_IN:
    fprintf(out, "argument %d of call v%d, per token", b->index, b->node);
    break;
  case SCHED_BUF_STATE:
    fprintf(out, "state %s", in->fn->states.v[b->node].name);
    break;
  case SCHED_BUF_STATE_TMP:
    fprintf(out, "next value of state %s", in->fn->states.v[b->node].name);
    break;
  case SCHED_BUF_WORK:
    fprintf(out, "%s at v%d",
            b->index == 4   ? "copies of the constants of the scan"
            : b->index == 3 ? "slices of the kernel's value columns"
            : b->index == 2 ? "parts of the scan split in time"
            : b->index == 1 ? "copy of the state of the kernel"
                            : "scratch of the kernel",
            b->node);
    break;
  }
  fprintf(out, ": %s x %lld floats%s\n", rows_name(b->rows), (long long)b->row_floats,
          b->weights_block ? ", weights block" : "");
}

static void indent(FILE *out, int depth) {
  for (int i = 0; i < depth; i++) fputs("  ", out);
}

static void print_node(FILE *out, const SchedInst *in, IrRef r) {
  const IrNode *nd = &in->fn->nodes.v[r];
  fprintf(out, "v%d %s", r, ir_op_info[nd->op].text);
}

static void print_ops(FILE *out, const SchedInst *in, const SchedOp *ops, int n, int depth) {
  for (int i = 0; i < n; i++) {
    const SchedOp *op = &ops[i];
    const SchedValue *v = op->node >= 0 ? &in->values[op->node] : NULL;
    indent(out, depth);
    switch (op->kind) {
    case SCHED_OP_NODE:
      print_node(out, in, op->node);
      fputc(' ', out);
      print_shape(out, v);
      if (v->inplace) fputs(" in place", out);
      if (in->fn->nodes.v[op->node].nargs > 0 &&
          in->values[in->fn->nodes.v[op->node].args[0]].folded)
        fprintf(out, " of v%d mul, folded in", in->fn->nodes.v[op->node].args[0]);
      fputc('\n', out);
      break;
    case SCHED_OP_FUSED: {
      int members = 0;
      for (IrRef r = op->node; r <= op->last; r++)
        members += in->values[r].cls == op->cls && !sched_is_view(in->fn->nodes.v[r].op) &&
                   (in->values[r].uses > 0);
      fprintf(out, "fused v%d..v%d (%d nodes) over ", op->node, op->last, members);
      print_shape(out, v);
      for (int st = 0; st < in->fn->states.n; st++) {
        IrRef nx = in->fn->states.v[st].next;
        if (in->state_inplace[st] && nx >= op->node && nx <= op->last &&
            sched_in_phase(in, op->cls, nx))
          fprintf(out, ", v%d over state %s", nx, in->fn->states.v[st].name);
      }
      fputc('\n', out);
      break;
    }
    case SCHED_OP_ROWS:
      fprintf(out, "rows %s:\n", class_rows(in, op->cls));
      print_ops(out, in, op->body.v, op->body.n, depth + 1);
      break;
    case SCHED_OP_ACROSS:
      print_node(out, in, op->node);
      fputc(' ', out);
      print_shape(out, v);
      fprintf(out, " of v%d mul, folded in, over %s rows, each block of the matrix once%s\n",
              in->fn->nodes.v[op->node].args[0], class_rows(in, op->cls),
              op->body.n ? "; in its stores:" : "");
      print_ops(out, in, op->body.v, op->body.n, depth + 1);
      break;
    case SCHED_OP_GEMM:
      fprintf(out, "gemm v%d = %s, N=%lld K=%lld%s, over %s rows\n", op->node,
              v->gemm == SCHED_GEMM_WX ? "W @ x" : "x @ W", (long long)v->gemm_n,
              (long long)v->gemm_k, v->cgemm ? " (complex W as real)" : "",
              class_rows(in, op->cls));
      break;
    case SCHED_OP_CALL: {
      const IrLayer *l = &in->fn->layers.v[in->fn->nodes.v[op->node].index];
      int ci = in->layers[in->fn->nodes.v[op->node].index];
      if (l->newton.states) {
        fprintf(out,
                "%snewton solve v%d of %d state(s), step: instance %d (rtol %g, atol %g, at most "
                "%d iterations, then the step loop; ",
                l->newton.quasi   ? "quasi-"
                : l->newton.dense ? "dense-Jacobian "
                                  : "",
                op->node, l->newton.states, ci, l->newton.rtol, l->newton.atol, l->newton.max_iter);
        if (l->newton.window)
          fprintf(out, "windows of %lld steps)\n", (long long)l->newton.window);
        else
          fprintf(out, "windows within the memory budget)\n");
      } else {
        fprintf(out, "call v%d layer %s (instance %d)%s", op->node, l->name, ci,
                l->reverse ? " reversed" : "");
        if (l->over) /* once per example, over its context's positions */
          fprintf(out, " over %lld positions", (long long)in->values[op->node].shape[0]);
        if (l->over && l->over_lengths) {
          const IrNode *c = &in->fn->nodes.v[op->node];
          fprintf(out, ", lengths v%d", c->args[c->nargs - 1]);
        }
        fputc('\n', out);
      }
      break;
    }
    case SCHED_OP_CONV:
      fprintf(out, "causal_conv v%d over the sequence\n", op->node);
      break;
    case SCHED_OP_SCAN:
      fprintf(out, in->chunked ? "%s v%d over the chunk's steps, " : "%s v%d over the sequence, ",
              in->fn->nodes.v[op->node].op == IR_SCAN_MAX ? "scan_max" : "scan", op->node);
      print_shape(out, v);
      if (!op->group) {
        fputs(" per token, materialized\n", out);
        break;
      }
      fprintf(out, ", fused in blocks of %lld rows", (long long)op->group->block);
      if (op->group->split < (v->rank ? v->shape[v->rank - 1] : 1))
        fprintf(out, " and pieces of %lld", (long long)op->group->split);
      fputs(" with:", out);
      for (int m = 0; m < op->group->nmembers; m++) {
        IrRef q = op->group->members[m];
        if (q == op->node) continue;
        fprintf(out, " v%d %s%s", q, ir_op_info[in->fn->nodes.v[q].op].text,
                in->values[q].stored ? " (stored)" : "");
      }
      if (op->group->time_buf >= 0) fputs("; may split its steps across idle threads", out);
      if (op->group->lanes) fputs("; rows in vector lanes, time inside each element", out);
      if (op->group->planar_state || op->group->transposed) {
        fputs(op->group->planar_state && op->group->transposed
                  ? "; planar (re, im) and transposed per block: the state"
              : op->group->planar_state ? "; planar (re, im) per block: the state"
                                        : "; transposed per block: the state",
              out);
        for (int m = 0; m < op->group->ncopied; m++) fprintf(out, ", v%d", op->group->copied[m]);
      }
      fputc('\n', out);
      break;
    case SCHED_OP_ATTN: {
      const SchedAttn *at = op->attn;
      fprintf(out, "causal attention v%d over the sequence: %lld heads, K=%lld V=%lld, scale %g\n",
              op->node, (long long)at->heads, (long long)at->K, (long long)at->V, at->scale);
      break;
    }
    case SCHED_OP_LINATTN: {
      const SchedLinattn *la = op->linattn;
      fprintf(out, "chunked state %s", in->fn->states.v[la->state].name);
      if (la->kind == SCHED_CHUNK_DELTA)
        fprintf(out, " (delta rule, %lld factors per token)", (long long)la->R);
      if (la->kind == SCHED_CHUNK_DPLR) fprintf(out, " (generalized delta rule)");
      if (la->kind == SCHED_CHUNK_PLSTM)
        fprintf(out, " (small dense transition, J = %lld)", (long long)la->J);
      fprintf(out, ": %lld heads, K=%lld V=%lld, %s, chunks of %lld tokens; readouts",
              (long long)la->heads, (long long)la->K, (long long)la->V,
              la->no_gate   ? "no gate"
              : la->Kg == 1 ? "scalar gate"
                            : "gate per key",
              (long long)la->chunk);
      for (int r = 0; r < la->nreads; r++)
        fprintf(out, " v%d%s", la->reads[r],
                in->fn->nodes.v[la->reads[r]].index ? " (exclusive)" : "");
      fprintf(out, "%s\n", la->transposed ? "; state stored [..., K, V]" : "");
      break;
    }
    case SCHED_OP_DELAY:
      fprintf(out, "delay v%d\n", op->node);
      break;
    case SCHED_OP_WINDOW:
      fprintf(out, "window v%d%s\n", op->node,
              sched_window_last_only(in, op->node) ? " leaving the step, at the last step only"
              : in->fn->nodes.v[op->node].index    ? " leaving the step"
                                                   : "");
      break;
    case SCHED_OP_PACK:
      fprintf(out, "pack the weight of v%d%s (when the call packs)\n", op->node,
              v->cgemm ? " after its real form" : "");
      break;
    case SCHED_OP_LANE_COPIES:
      fputs("copy", out);
      for (int m = 0; m < op->group->ncopied; m++)
        fprintf(out, "%s v%d", m ? "," : "", op->group->copied[m]);
      fprintf(out, " for scan v%d, rows in vector lanes\n", op->node);
      break;
    case SCHED_OP_ZERO_OUTPUTS:
      fputs("zero the outputs (with lengths)\n", out);
      break;
    case SCHED_OP_STATE_INIT:
      fputs("initial states\n", out);
      break;
    case SCHED_OP_TOKEN_OUTPUTS:
      fputs("outputs that read no state\n", out);
      break;
    case SCHED_OP_CHUNK_LOOP:
      fprintf(out, "time chunks of Tc steps (%lld floats per token", (long long)in->chunk_floats);
      if (in->min_tc > 1) fprintf(out, ", at least %lld steps", (long long)in->min_tc);
      fputs("):\n", out);
      print_ops(out, in, op->body.v, op->body.n, depth + 1);
      break;
    case SCHED_OP_TIME_LOOP:
      fputs("time steps:\n", out);
      print_ops(out, in, op->body.v, op->body.n, depth + 1);
      break;
    case SCHED_OP_COMMIT:
      fputs("commit: outputs of the step, new states (active examples)\n", out);
      break;
    case SCHED_OP_FINAL_STATES:
      fputs("final states\n", out);
      break;
    case SCHED_OP_SEQ_FINAL_STATES:
      fputs(in->chunked ? "final states: the storage\n"
                        : "final states: next at each sequence's last step\n",
            out);
      break;
    case SCHED_OP_CHUNK_STATES:
      fputs("states: next at the chunk's last step\n", out);
      break;
    }
  }
}

void sched_print(FILE *out, const Schedule *s) {
  const AbiSignature *sig = &s->sig;
  fprintf(out, "schedule %s (symbol %s)", sig->func, sig->symbol);
  for (int i = 0; i < sig->ndims; i++)
    fprintf(out, "%s%s=%lld", i ? ", " : " dims ", sig->dim_names[i],
            (long long)sig->dim_values[i]);
  fputc('\n', out);
  for (int i = 0; i < sig->params.n; i++) print_tensor(out, "param", &sig->params.v[i]);
  for (int i = 0; i < sig->inputs.n; i++)
    print_tensor(out, sig->inputs.v[i].context ? "context" : "input", &sig->inputs.v[i]);
  for (int i = 0; i < sig->outputs.n; i++) print_tensor(out, "output", &sig->outputs.v[i]);
  for (int i = 0; i < sig->states.n; i++) print_tensor(out, "state", &sig->states.v[i]);
  fprintf(out, "  step entry point: %s\n", sig->has_step ? "yes" : "no (needs whole sequences)");
  fprintf(out, "  work per token: %lld\n", (long long)s->work_per_token);
  for (int i = 0; i < s->prepared.n; i++) {
    const SchedPrepared *sp = &s->prepared.v[i];
    fprintf(out, "  prepared %s: K=%lld N=%lld%s at float %lld\n", sig->params.v[sp->param].name,
            (long long)sp->k, (long long)sp->n, sp->trans ? " (W @ x)" : "", (long long)sp->offset);
  }
  for (int i = 0; i < s->insts.n; i++) {
    const SchedInst *in = &s->insts.v[i];
    fprintf(out, "instance %d: %s %s", i, in->fn->kind == IR_FN_CELL ? "cell" : "model",
            in->fn->name);
    for (int d = 0; d < in->fn->dims.n; d++)
      fprintf(out, "%s%s=%lld", d ? ", " : " (", in->fn->dims.v[d].name, (long long)in->dims[d]);
    fputs(in->fn->dims.n ? ")\n" : "\n", out);
    fprintf(out, "  limits: %lld floats per token, %lld per example\n", (long long)in->per_token,
            (long long)in->per_example);
    fputs("  buffers:\n", out);
    for (int b = 0; b < in->bufs.n; b++) print_buf(out, in, b);
    fputs("  stages:\n", out);
    print_ops(out, in, in->ops.v, in->ops.n, 2);
  }
}
