/* build.c - building a function's nodes in a pass that rewrites one function
 * into another (scan.c, chunk.c, delta.c): each node typed by the op table's
 * rule as it is made, so a rule of a pass that builds an ill-typed node is
 * an internal error at once, not a verifier report later.
 */
#include "passes/passes.h"

#include <math.h>
#include <string.h>

IrRef pb_node(PassBuild *b, IrOp op, int nargs, const IrRef *args, const IrNode *attrs,
              SrcLoc loc) {
  if (b->failed) return IR_NONE;
  for (int i = 0; i < nargs; i++)
    if (args[i] == IR_NONE) {
      diag_report(b->de, DIAG_ERROR, (SrcLoc){0},
                  "internal error in %s: %s: %s of a value never built", b->pass, b->src->name,
                  ir_op_info[op].text);
      b->failed = 1;
      return IR_NONE;
    }
  IrNode proto;
  memset(&proto, 0, sizeof proto);
  if (attrs) proto = *attrs;
  proto.op = op;
  proto.loc = loc;
  char msg[256];
  IrRef r = ir_emit_typed(b->dst, b->a, &proto, nargs, args, msg, sizeof msg);
  if (r == IR_NONE && msg[0])
    diag_report(b->de, DIAG_ERROR, (SrcLoc){0}, "internal error in %s: %s: %s does not type: %s",
                b->pass, b->src->name, ir_op_info[op].text, msg);
  else if (r == IR_NONE)
    diag_error(b->de, b->src->loc, "out of memory rewriting %s", b->src->name);
  if (r == IR_NONE) b->failed = 1;
  return r;
}

IrRef pb_node2(PassBuild *b, IrOp op, IrRef x, IrRef y, SrcLoc loc) {
  IrRef args[2] = {x, y};
  return pb_node(b, op, 2, args, NULL, loc);
}

IrRef pb_const(PassBuild *b, double v, SrcLoc loc) {
  IrNode c;
  memset(&c, 0, sizeof c);
  c.cval = v;
  return pb_node(b, IR_CONST, 0, NULL, &c, loc);
}

IrRef pb_shape(PassBuild *b, IrOp op, IrRef x, IrType t, SrcLoc loc) {
  if (b->failed || x == IR_NONE) return pb_node(b, op, 1, &x, NULL, loc);
  if (ir_type_eq(b->dst->nodes.v[x].type, t)) return x;
  IrNode attrs;
  memset(&attrs, 0, sizeof attrs);
  attrs.type = t;
  return pb_node(b, op, 1, &x, &attrs, loc);
}

IrRef pb_log(PassBuild *b, IrRef x, const char **why) {
  const IrNode *n = &b->src->nodes.v[x];
  SrcLoc loc = n->loc;
  switch (n->op) {
  case IR_EXP:
    return b->map(b->ctx, n->args[0]);
  case IR_SIGMOID: {
    IrRef y = b->map(b->ctx, n->args[0]);
    return pb_node(b, IR_LOGSIGMOID, 1, &y, NULL, loc);
  }
  case IR_CONST:
    if (n->cval > 0) return pb_const(b, log(n->cval), loc);
    break;
  case IR_RESHAPE:
  case IR_BROADCAST: {
    IrRef y = pb_log(b, n->args[0], why);
    return y == IR_NONE ? IR_NONE : pb_shape(b, n->op, y, n->type, loc);
  }
  case IR_MUL:
  case IR_DIV: {
    IrRef u = pb_log(b, n->args[0], why), w = pb_log(b, n->args[1], why);
    if (u == IR_NONE || w == IR_NONE) return IR_NONE;
    return pb_node2(b, n->op == IR_MUL ? IR_ADD : IR_SUB, u, w, loc);
  }
  default:
    break;
  }
  if (why && !*why)
    *why = n->loc.file ? arena_printf(b->a,
                                      "a gate not provably positive (not exp, sigmoid or their "
                                      "products) at %s:%d:%d",
                                      n->loc.file->name, n->loc.line, n->loc.col)
                       : "a gate not provably positive (not exp, sigmoid or their products)";
  return IR_NONE;
}
