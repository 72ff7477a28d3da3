/* sema.h - private to the frontend: the state shared by import.c (loading
 * files and collecting units), sema.c (declarations, dims, layers, the
 * pipeline) and lower.c (step and forward bodies to IR). Nothing outside
 * frontend/ includes this; the public entry points are in frontend.h.
 */
#ifndef SEQ_SEMA_H
#define SEQ_SEMA_H

#include "frontend/frontend.h"

/* The marker an expression lowers to after an error has been reported for
 * it. Every consumer passes it through silently, so one mistake yields one
 * diagnostic instead of a cascade. */
#define REF_ERROR (-2)

/* One loaded source file. Files are loaded once (deduplicated by realpath). */
typedef struct SemaFile {
  const SrcFile *src;
  AstFile *ast;
  const char *key; /* realpath, or NULL for a string */
} SemaFile;

/* A unit of the program, in the order files were completed (imports first). */
typedef struct SemaUnit {
  const AstUnit *ast;
  const SemaFile *file;
  int func;     /* index into IrModule.funcs once lowered, else -1 */
  int visiting; /* on the model dependency stack (recursion check) */
  int failed;   /* its declarations could not be built: callers skip it */
  /* Header dims whose value was used as a layer count, and that value: a
   * caller cannot rebind them, because the unrolling is already fixed. */
  VEC(int) count_dims;
  VEC(int64_t) count_values;
} SemaUnit;

typedef struct Sema {
  Arena *a;
  DiagEngine *de;
  SrcMgr *sm;
  const FrontendOptions *opt;
  IrModule *m;
  VEC(SemaFile *) files; /* post-order: every file after the files it imports */
  SemaFile *main;
  VEC(SemaUnit) units;
  VEC(int) stack;            /* model dependency stack (unit indices), for cycle messages */
  VEC(const AstDecl *) defs; /* top-level `def`s of every loaded file */
  int oom;                   /* an allocation failed (reported once) */
} Sema;

/* ---- Lowering one unit ---------------------------------------------------- */

typedef enum { DECL_NONE, DECL_PARAM, DECL_INPUT, DECL_STATE, DECL_OUTPUT, DECL_LAYER } DeclKind;

/* A name visible in a body: a let-bound value, or (inside `for l in L`) a
 * layer. Later entries shadow earlier ones. */
typedef struct Binding {
  const char *name;
  IrRef ref;     /* value, or REF_ERROR */
  int layer;     /* >= 0: the name is a layer (index into IrFunc.layers) */
  int is_index;  /* a range loop's counter: ref is the constant `index` */
  int64_t index; /* usable where a dim expression is (x[j], x[j*D:(j+1)*D]) */
} Binding;

typedef struct StateSlot {
  IrRef read; /* the STATE node (value entering the step) */
  IrRef next; /* the value assigned to h', or IR_NONE */
  SrcLoc assigned_at;
  const AstDecl *decl; /* NULL for hidden states */
  int bad;             /* its declared type had an error: reads are REF_ERROR, silently */
} StateSlot;

typedef struct OutputSlot {
  int assigned;
  SrcLoc assigned_at;
  int bad; /* its declared type had an error: its value is not checked against it */
} OutputSlot;

/* A layer of a model while its body is lowered. Callee dims the user did not
 * pass stay unbound until the first call, where they are unified with the
 * argument shapes; the rest then become fresh dims "<layer>.<dim>". */
typedef struct LayerSlot {
  const IrFunc *callee;
  int callee_unit;
  unsigned char *bound; /* per callee dim */
  int final;            /* dim_args complete */
  int failed;           /* completing dim_args failed (reported once): calls yield REF_ERROR */
  int called;           /* 0: not yet; 1: per step; 2: run over positions (IrLayer.over) */
} LayerSlot;

/* A `layer NAME[...]` declaration (count == -1 for a single layer). */
typedef struct LayerDecl {
  const char *name;
  SrcLoc loc;
  int first, count;
  int failed;
} LayerDecl;

typedef enum { MODE_INIT, MODE_STEP, MODE_FORWARD } LowerMode;

typedef struct Lower {
  Sema *S;
  Arena *a;
  DiagEngine *de;
  IrFunc *f;
  const AstUnit *unit;
  int unit_index;
  LowerMode mode;
  const char *init_state; /* MODE_INIT: the state whose initializer this is */
  VEC(Binding) env;
  VEC(StateSlot) states;   /* parallel to f->states */
  VEC(OutputSlot) outputs; /* parallel to f->outputs */
  VEC(LayerSlot) layers;   /* parallel to f->layers */
  VEC(LayerDecl) layer_decls;
  VEC(unsigned char) bad_params; /* parallel to f->params: the declared type had an error */
  VEC(unsigned char) bad_inputs; /* parallel to f->inputs */
  int nsig;                      /* header dims: f->dims[0..nsig) */
  int64_t unrolled;              /* statements loops of this body have unrolled to */
  int nconv;                     /* causal_conv windows created so far */
  VEC(const AstDecl *) defs;     /* this unit's `def`s */
  VEC(const AstDecl *) fn_stack; /* `def`s being inlined, innermost last */
  int fn_env_base;    /* inside a def body: env entries below this are the caller's, hidden */
  int fn_toplevel;    /* the innermost def is a top-level one: the unit's names are hidden */
  int ninlined;       /* def calls inlined in this unit (bounded) */
  int int_context_ok; /* lowering a layer call's lengths=: an int context may be read */
  /* A grid cell (step grid(Y)): Y, the position j of the row being lowered
   * (the step is lowered once per position), and per state its value at
   * position j - 1 (what left(h) reads) and its initial value at one
   * position (left(h) at j = 0). Inputs, states and outputs are declared
   * per position and typed [Y, ...] in the IR (sema_grid_pos_type). */
  int64_t grid;
  DimExpr grid_dim;
  int64_t grid_j;
  IrRef *grid_left;
  IrRef *grid_border;
} Lower;

/* import.c: loads the main file and, transitively, its imports; collects the
 * units of all files. is_file: main_src was read from disk (so importing it
 * again is a cycle). Returns 0 on success (errors are diagnostics). */
int sema_load_program(Sema *S, const SrcFile *main_src, int is_file);

/* sema.c helpers shared with lower.c */
void sema_oom(Sema *S);
const char *sema_suggest(const char *name, const char *const *cands, int n);
int sema_dim_expr(Lower *L, const AstExpr *e, DimExpr *out);
/* The value in [lo, hi] of a dim expression the compiler must know now (a
 * layer array's length, a loop bound); fixes the dims it uses. */
int sema_known_value(Lower *L, const AstExpr *x, const char *what, int64_t lo, int64_t hi,
                     int64_t *out);
const char *sema_type_str(Lower *L, IrType t);
int sema_find_decl(const Lower *L, const char *name, int *index);
char *sema_path_str(Arena *a, const AstPath *p);
SrcLoc sema_expr_start(const AstExpr *e);
int sema_finalize_layer(Lower *L, int layer, const IrRef *args, int nargs);

/* In a grid cell, the per-position type of a value the IR types [Y, ...]. */
IrType sema_grid_pos_type(IrType t);

/* lower.c */
int lower_is_builtin(const char *name);
IrRef lower_expr(Lower *L, const AstExpr *e);
IrRef lower_const(Lower *L, double v, SrcLoc loc);
IrRef lower_broadcast_to(Lower *L, IrRef v, IrType t, SrcLoc loc, const char *what);
void lower_body(Lower *L);

#endif
