/* parser.y - the grammar of Seq (docs/language.md section 2).
 *
 * Actions only build AST nodes from the arena; names, shapes and lowering are
 * sema's business. The scanner (lexer.l) turns newlines into NL tokens outside
 * brackets, collapses runs of them, and bounds nesting depth, so the grammar
 * can say "NL" where the spec does and the parser stack stays small on any
 * input.
 *
 * Error recovery: a broken statement or declaration is skipped up to the next
 * newline (or the '}' that closes its block); a broken unit header skips to
 * the next unit. Syntax errors are phrased with token names that read well
 * ("unexpected newline, expecting ']'").
 */

%define api.pure full
%define api.prefix {seq_yy}
%define parse.error custom
%define parse.lac full
%locations
%lex-param {void *scanner}
%parse-param {ParseState *P} {void *scanner}

%code top {
/* The parser stack grows through the allocator hook like everything else. */
#define YYMALLOC seq_malloc
#define YYFREE seq_free
}

%code requires {
#include <setjmp.h>

#include "frontend/ast.h"

/* Growable lists the grammar builds before a node takes their array. */
typedef VEC(AstExpr *) ExprVec;
typedef VEC(AstStmt *) StmtVec;
typedef VEC(AstDecl *) DeclVec;
typedef VEC(AstDimParam) DimVec;
typedef VEC(const char *) StrVec;
typedef struct NameVec {
  StrVec names;
  VEC(SrcLoc) locs;
} NameVec;

/* A number literal as the scanner read it. */
typedef struct NumLit {
  double value;
  int is_int;
  const char *text;
} NumLit;

/* `prefix "..."` or `suffix "..."` after a layer's callee. */
typedef struct LayerNaming {
  const char *prefix, *suffix;
} LayerNaming;

/* State shared by the scanner and the parser for one ast_parse call. The
 * scanner's half is all about tokens: where we are, what came before (for
 * primes, newline collapsing and nesting depth) and the comment block that may
 * document the next unit. */
typedef struct ParseState {
  Arena *arena;
  DiagEngine *de;
  const SrcFile *src;
  const char *buf; /* the scanner's copy of src->text */
  VEC(AstImport) imports;
  VEC(AstUnit *) units;
  VEC(AstDecl *) defs; /* top-level `def`s */

  int errors; /* diagnostics reported by this parse */
  int stop;   /* too many errors, or one that ends the parse: the scanner reports end of input */
  int oom;    /* an allocation failed */
  jmp_buf *fatal; /* where flex's fatal errors (allocation failure) land */
#define FLEX_MAX_BLOCKS 8
  void *flex_mem[FLEX_MAX_BLOCKS]; /* the heap blocks flex holds (see lexer.l) */
  int nflex_mem;

  int line, col;   /* position of the next byte */
  SrcLoc eof_loc;  /* where "end of file" is reported */
  int last_nl;     /* the last token returned was NL (or none was returned yet) */
  int prev_nl;     /* ... and the one before it */
  int eof_nl_sent; /* the NL that ends an unterminated last line was sent */
  int brackets;    /* open ( and [: newlines inside them are not tokens */
  int braces;      /* open { */
  int after_operand; /* the last token ends an operand, so '-' is binary */
  int unary_run;     /* consecutive prefix '+'/'-' at this bracket level */
  int unary_pending; /* prefix operators still open in enclosing levels */
  int unary_saved[SEQ_MAX_NESTING + 2];
  int stmt_ops; /* operators and brackets since the last NL or brace (SEQ_MAX_STMT_OPS) */
  size_t ident_end; /* offset just past the last identifier: a prime must start there */
  size_t dot_end;   /* offset just past a '.' that directly follows a path part: a part
                       written right there may be an integer or a keyword (ffn.0.weight) */
  const char *tok_text; /* the last token returned, quoted in syntax errors */
  size_t tok_len;
  int swallowed_nl;        /* a newline inside brackets went by since the last token */
  SrcLoc swallowed_nl_loc; /* the first such newline */

  int tok_on_line;     /* a token was returned on the current line */
  long doc_start;      /* offset of the first '#' of the comment block, or -1 */
  long doc_end;        /* offset just past its last line */
  int doc_last_line;   /* line of the block's last comment */
  SrcLoc comment_loc;  /* the opening of the block comment being skipped */
  int comment_has_nl;
} ParseState;

/* Reports an error for this parse (scanner and parser share the error cap). */
void ast_syntax_error(ParseState *P, SrcLoc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
}

%code provides {
/* Defined by flex in lexer.c (whose header would be circular here). */
int seq_yylex(SEQ_YYSTYPE *lval, SEQ_YYLTYPE *lloc, void *scanner);
}

%code {
#include <string.h>

static void seq_yyerror(SEQ_YYLTYPE *loc, ParseState *P, void *scanner, const char *msg);

static SrcLoc loc_of(ParseState *P, SEQ_YYLTYPE l) {
  return (SrcLoc){P->src, l.first_line, l.first_column};
}
#define LOC(l) loc_of(P, (l))

/* Every allocation in an action goes through NEED: on failure the parse ends
 * with "out of memory" instead of dereferencing NULL. */
#define NEED(x)                                                                                    \
  do {                                                                                             \
    if (!(x)) {                                                                                    \
      P->oom = 1;                                                                                  \
      YYNOMEM;                                                                                     \
    }                                                                                              \
  } while (0)
#define PUSH(vec, x) NEED(vec_push(P->arena, (vec), (x)) == 0)
#define NEWVEC(v) NEED((v) = arena_alloc(P->arena, sizeof *(v)))

static AstExpr *expr_new(ParseState *P, AstExprKind kind, SrcLoc loc) {
  AstExpr *e = arena_alloc(P->arena, sizeof *e);
  if (e) {
    e->kind = kind;
    e->loc = loc;
  }
  return e;
}

static AstExpr *expr_op(ParseState *P, AstExprKind kind, int op, AstExpr *lhs, AstExpr *rhs,
                        SrcLoc loc) {
  AstExpr *e = expr_new(P, kind, loc);
  if (e) {
    e->op = op;
    e->lhs = lhs;
    e->rhs = rhs;
  }
  return e;
}

static AstDecl *decl_new(ParseState *P, AstDeclKind kind, SrcLoc loc, const char *name,
                         SrcLoc name_loc) {
  AstDecl *d = arena_alloc(P->arena, sizeof *d);
  const char **parts = arena_alloc(P->arena, sizeof *parts);
  if (!d || !parts) return NULL;
  parts[0] = name;
  d->kind = kind;
  d->loc = loc;
  d->name = (AstPath){1, parts, name_loc};
  return d;
}

/* A real literal as a dim's default is a slip worth naming here; other
 * expressions are sema's to check. */
static void dim_default_check(ParseState *P, const char *name, const AstExpr *e) {
  if (e && e->kind == AST_NUM && !e->is_int)
    ast_syntax_error(P, e->loc, "the default of dimension '%s' must be an integer", name);
}

static AstPath path_of(const StrVec *v, SrcLoc loc) {
  return (AstPath){v->n, v->v, loc};
}
}

%union {
  const char *str;
  NumLit num;
  int flag;
  AstExpr *expr;
  AstStmt *stmt;
  AstDecl *decl;
  AstUnit *unit;
  AstType type;
  LayerNaming naming;
  ExprVec *exprs;
  StmtVec *stmts;
  DeclVec *decls;
  DimVec *dimps;
  StrVec *strs;
  NameVec *names;
}

%token <str> IDENT "identifier"
%token <num> NUMBER "number"
%token <str> STRING "string"
%token NL "newline"
%token <str> CELL "'cell'" MODEL "'model'"
%token PARAM "'param'" INPUT "'input'" CONTEXT "'context'" STATE "'state'" OUTPUT "'output'" LAYER "'layer'"
%token STEP "'step'" FORWARD "'forward'" LET "'let'" FOR "'for'" IN "'in'" IMPORT "'import'"
%token DEF "'def'"
%token REVERSE "'reverse'" PREFIX "'prefix'" SUFFIX "'suffix'" COMPLEX "'complex'" INT "'int'"
%token NONE "'None'" TRANSPOSE "'^T'" PRIME "prime (')"
%token BAD "invalid token"

%type <unit> unit unit_head
%type <flag> body_kw reverse_opt
%type <dimps> dims_opt dim_list
%type <decls> decls
%type <decl> decl fndef
%type <type> type
%type <expr> count_opt expr term unary postfix primary name arg index
%type <exprs> expr_list args_opt args indices
%type <naming> naming_opt
%type <stmts> block stmts
%type <stmt> stmt
%type <names> let_names fparams_opt fparams
%type <strs> path

%start file

%%

/* file = { NL } { ( import | unit | fndef NL ) { NL } } */
file:
  %empty
| file NL
| file import
| file unit     { PUSH(&P->units, $2); }
| file fndef NL { PUSH(&P->defs, $2); }
  /* A broken unit header: skip tokens until something that can start the
   * next top-level item. */
| file error
;

/* import = "import" STRING NL */
import:
  IMPORT STRING NL { PUSH(&P->imports, ((AstImport){$2, LOC(@1)})); }
;

/* unit = ("cell" | "model") IDENT [ dimparams ] "{" { NL } { decl NL { NL } }
 *        ("step" | "forward") block { NL } "}" */
unit:
  unit_head '{' decls body_kw block nls_opt '}' {
    $$ = $1;
    $$->ndecls = $3->n;
    $$->decls = $3->v;
    $$->nbody = $5->n;
    $$->body = $5->v;
    $$->body_loc = LOC(@4);
    if ((AstUnitKind)$4 != $$->kind)
      ast_syntax_error(P, LOC(@4), "the body of a %s is written '%s { ... }'",
                       $$->kind == AST_CELL ? "cell" : "model",
                       $$->kind == AST_CELL ? "step" : "forward");
  }
  /* A grid cell: step grid(Y) { ... } runs once per position of a grid of
   * rows of Y positions (docs/language.md, "Grids"). */
| unit_head '{' decls STEP IDENT '(' expr ')' block nls_opt '}' {
    $$ = $1;
    $$->ndecls = $3->n;
    $$->decls = $3->v;
    $$->nbody = $9->n;
    $$->body = $9->v;
    $$->body_loc = LOC(@4);
    $$->grid = $7;
    if (strcmp($5, "grid") != 0)
      ast_syntax_error(P, LOC(@5), "a step takes no arguments; 'step grid(Y) { ... }' is a grid "
                       "cell's step");
    else if ($$->kind != AST_CELL)
      ast_syntax_error(P, LOC(@4), "the body of a model is written 'forward { ... }'");
  }
  /* Declarations and no body: say what is missing rather than "unexpected '}'". */
| unit_head '{' decls '}' {
    $$ = $1;
    $$->ndecls = $3->n;
    $$->decls = $3->v;
    ast_syntax_error(P, LOC(@4), "%s '%s' has no '%s { ... }' block", $$->kind == AST_CELL ?
                     "cell" : "model", $$->name, $$->kind == AST_CELL ? "step" : "forward");
  }
  /* A declaration broke and its recovery ran into the unit's closing brace. */
| unit_head '{' decls error '}' {
    $$ = $1;
    $$->ndecls = $3->n;
    $$->decls = $3->v;
  }
;

unit_head:
  CELL unit_start IDENT dims_opt {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    *$$ = (AstUnit){.kind = AST_CELL, .name = $3, .loc = LOC(@1), .doc = $1};
    $$->ndims = $4->n;
    $$->dims = $4->v;
  }
| MODEL unit_start IDENT dims_opt {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    *$$ = (AstUnit){.kind = AST_MODEL, .name = $3, .loc = LOC(@1), .doc = $1};
    $$->ndims = $4->n;
    $$->dims = $4->v;
  }
;

/* `cell` or `model` accepted at top level starts a unit afresh, even while
 * recovering from an error in the previous one: report its errors at once. */
unit_start:
  %empty { yyerrok; }
;

body_kw:
  STEP    { $$ = AST_CELL; }
| FORWARD { $$ = AST_MODEL; }
;

nls_opt:
  %empty
| nls_opt NL
;

/* dimparams = "(" [ dimparam { "," dimparam } ] ")" */
dims_opt:
  %empty      { NEWVEC($$); }
| '(' ')'     { NEWVEC($$); }
| '(' dim_list ')' { $$ = $2; }
;

/* dimparam = IDENT [ "=" expr ]   (sema: an integer, or a dim expression
 * over the dims before it) */
dim_list:
  IDENT {
    NEWVEC($$);
    PUSH($$, ((AstDimParam){$1, NULL, LOC(@1)}));
  }
| IDENT '=' expr {
    dim_default_check(P, $1, $3);
    NEWVEC($$);
    PUSH($$, ((AstDimParam){$1, $3, LOC(@1)}));
  }
| dim_list ',' IDENT {
    $$ = $1;
    PUSH($$, ((AstDimParam){$3, NULL, LOC(@3)}));
  }
| dim_list ',' IDENT '=' expr {
    dim_default_check(P, $3, $5);
    $$ = $1;
    PUSH($$, ((AstDimParam){$3, $5, LOC(@3)}));
  }
;

decls:
  %empty             { NEWVEC($$); }
| decls NL           { $$ = $1; }
| decls decl NL      { $$ = $1; PUSH($$, $2); }
  /* Recovery resynchronizes at a line end, so the next line is a fresh start:
   * yyerrok lets its errors be reported instead of waiting three tokens. */
| decls error NL     { $$ = $1; yyerrok; }
;

/* decl = "param" path ":" type | "input" IDENT ":" type | "context" IDENT ":" type
 *      | "state" IDENT ":" type [ "=" expr ] | "output" IDENT ":" type
 *      | "layer" IDENT [ "[" expr "]" ] "=" [ "reverse" ] IDENT "(" [ args ] ")"
 *        [ ( "prefix" | "suffix" ) STRING ]
 *      | fndef */
decl:
  fndef
| PARAM path ':' type {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    $$->kind = AST_PARAM;
    $$->loc = LOC(@1);
    $$->name = path_of($2, LOC(@2));
    $$->type = $4;
  }
| INPUT IDENT ':' type {
    NEED($$ = decl_new(P, AST_INPUT, LOC(@1), $2, LOC(@2)));
    $$->type = $4;
  }
| CONTEXT IDENT ':' type {
    NEED($$ = decl_new(P, AST_INPUT, LOC(@1), $2, LOC(@2)));
    $$->type = $4;
    $$->context = 1;
  }
| STATE IDENT ':' type {
    NEED($$ = decl_new(P, AST_STATE, LOC(@1), $2, LOC(@2)));
    $$->type = $4;
  }
| STATE IDENT ':' type '=' expr {
    NEED($$ = decl_new(P, AST_STATE, LOC(@1), $2, LOC(@2)));
    $$->type = $4;
    $$->init = $6;
  }
| OUTPUT IDENT ':' type {
    NEED($$ = decl_new(P, AST_OUTPUT, LOC(@1), $2, LOC(@2)));
    $$->type = $4;
  }
| LAYER IDENT count_opt '=' reverse_opt IDENT '(' args_opt ')' naming_opt {
    NEED($$ = decl_new(P, AST_LAYER, LOC(@1), $2, LOC(@2)));
    $$->count = $3;
    $$->reverse = $5;
    $$->callee = $6;
    $$->callee_loc = LOC(@6);
    $$->nargs = $8->n;
    $$->args = $8->v;
    $$->prefix = $10.prefix;
    $$->suffix = $10.suffix;
  }
;

/* fndef = "def" IDENT "(" [ IDENT { "," IDENT } ] ")" "=" expr */
fndef:
  DEF IDENT '(' fparams_opt ')' '=' expr {
    NEED($$ = decl_new(P, AST_DEF, LOC(@1), $2, LOC(@2)));
    $$->nfparams = $4->names.n;
    $$->fparams = $4->names.v;
    $$->fparam_locs = $4->locs.v;
    $$->body = $7;
  }
;

fparams_opt:
  %empty { NEWVEC($$); }
| fparams
;

fparams:
  IDENT {
    NEWVEC($$);
    PUSH(&$$->names, $1);
    PUSH(&$$->locs, LOC(@1));
  }
| fparams ',' IDENT {
    $$ = $1;
    PUSH(&$$->names, $3);
    PUSH(&$$->locs, LOC(@3));
  }
;

count_opt:
  %empty       { $$ = NULL; }
| '[' expr ']' { $$ = $2; }
;

reverse_opt:
  %empty  { $$ = 0; }
| REVERSE { $$ = 1; }
;

naming_opt:
  %empty        { $$ = (LayerNaming){NULL, NULL}; }
| PREFIX STRING { $$ = (LayerNaming){$2, NULL}; }
| SUFFIX STRING { $$ = (LayerNaming){NULL, $2}; }
;

/* type = [ "complex" ] "[" [ expr { "," expr } ] "]" | "int" */
type:
  '[' ']'                   { $$ = (AstType){AST_TY_REAL, 0, NULL, LOC(@1)}; }
| '[' expr_list ']'         { $$ = (AstType){AST_TY_REAL, $2->n, $2->v, LOC(@1)}; }
| COMPLEX '[' ']'           { $$ = (AstType){AST_TY_COMPLEX, 0, NULL, LOC(@1)}; }
| COMPLEX '[' expr_list ']' { $$ = (AstType){AST_TY_COMPLEX, $3->n, $3->v, LOC(@1)}; }
| INT                       { $$ = (AstType){AST_TY_INT, 0, NULL, LOC(@1)}; }
;

/* block = "{" { NL } { stmt NL { NL } } "}" */
block:
  '{' stmts '}'       { $$ = $2; }
  /* A statement broke and its recovery ran into the closing brace. */
| '{' stmts error '}' { $$ = $2; }
;

stmts:
  %empty          { NEWVEC($$); }
| stmts NL        { $$ = $1; }
| stmts stmt NL   { $$ = $1; PUSH($$, $2); }
| stmts error NL  { $$ = $1; yyerrok; }
;

/* stmt = "let" IDENT { "," IDENT } "=" expr { "," expr }
 *      | name "=" expr
 *      | "for" IDENT "in" path block
 *      | "for" IDENT "in" "range" "(" expr [ "," expr ] ")" block */
stmt:
  LET let_names '=' expr_list {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    $$->kind = AST_LET;
    $$->loc = LOC(@1);
    $$->nnames = $2->names.n;
    $$->names = $2->names.v;
    $$->name_locs = $2->locs.v;
    $$->nvalues = $4->n;
    $$->values = $4->v;
    /* sema relies on nvalues being 1 (take a tuple apart) or nnames. */
    if ($4->n != 1 && $4->n != $2->names.n)
      ast_syntax_error(P, LOC(@3), "'let' binds %d names to %d values", $2->names.n, $4->n);
  }
| name '=' expr {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    $$->kind = AST_ASSIGN;
    $$->loc = LOC(@1);
    $$->target = $1;
    $$->value = $3;
  }
| FOR IDENT IN path block {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    $$->kind = AST_FOR;
    $$->loc = LOC(@1);
    $$->var = $2;
    $$->array = path_of($4, LOC(@4));
    $$->nbody = $5->n;
    $$->body = $5->v;
  }
| FOR IDENT IN path '(' expr_list ')' block {
    NEED($$ = arena_alloc(P->arena, sizeof *$$));
    $$->kind = AST_FOR;
    $$->loc = LOC(@1);
    $$->var = $2;
    $$->array = path_of($4, LOC(@4));
    $$->nrange = $6->n;
    $$->range = $6->v;
    $$->nbody = $8->n;
    $$->body = $8->v;
    if ($4->n != 1 || strcmp($4->v[0], "range") != 0)
      ast_syntax_error(P, LOC(@4), "a loop runs over a layer array or range(n), range(a, b)");
    else if ($6->n > 2)
      ast_syntax_error(P, LOC(@6), "range takes one or two bounds, not %d", $6->n);
  }
;

let_names:
  IDENT {
    NEWVEC($$);
    PUSH(&$$->names, $1);
    PUSH(&$$->locs, LOC(@1));
  }
| let_names ',' IDENT {
    $$ = $1;
    PUSH(&$$->names, $3);
    PUSH(&$$->locs, LOC(@3));
  }
;

expr_list:
  expr               { NEWVEC($$); PUSH($$, $1); }
| expr_list ',' expr { $$ = $1; PUSH($$, $3); }
;

/* expr = term { ( "+" | "-" ) term } */
expr:
  term
| expr '+' term { NEED($$ = expr_op(P, AST_BINARY, '+', $1, $3, LOC(@2))); }
| expr '-' term { NEED($$ = expr_op(P, AST_BINARY, '-', $1, $3, LOC(@2))); }
;

/* term = unary { ( "*" | "/" | "@" ) unary } */
term:
  unary
| term '*' unary { NEED($$ = expr_op(P, AST_BINARY, '*', $1, $3, LOC(@2))); }
| term '/' unary { NEED($$ = expr_op(P, AST_BINARY, '/', $1, $3, LOC(@2))); }
| term '@' unary { NEED($$ = expr_op(P, AST_BINARY, '@', $1, $3, LOC(@2))); }
;

/* unary = ( "-" | "+" ) unary | postfix */
unary:
  '-' unary { NEED($$ = expr_op(P, AST_UNARY, '-', $2, NULL, LOC(@1))); }
| '+' unary { NEED($$ = expr_op(P, AST_UNARY, '+', $2, NULL, LOC(@1))); }
| postfix
;

/* postfix = primary { "(" [ args ] ")" | "[" index { "," index } "]" | "^T" } */
postfix:
  primary
| postfix '(' args_opt ')' {
    NEED($$ = expr_new(P, AST_CALL, LOC(@1)));
    $$->callee = $1;
    $$->nargs = $3->n;
    $$->args = $3->v;
  }
  /* `complex` is a type keyword and also the builtin complex(re, im). */
| COMPLEX '(' args_opt ')' {
    const char **parts;
    NEED(parts = arena_alloc(P->arena, sizeof *parts));
    parts[0] = "complex";
    NEED($$ = expr_new(P, AST_CALL, LOC(@1)));
    NEED($$->callee = expr_new(P, AST_NAME, LOC(@1)));
    $$->callee->path = (AstPath){1, parts, LOC(@1)};
    $$->nargs = $3->n;
    $$->args = $3->v;
  }
| postfix '[' indices ']' {
    NEED($$ = expr_new(P, AST_INDEX, LOC(@1)));
    $$->lhs = $1;
    $$->nargs = $3->n;
    $$->args = $3->v;
  }
| postfix TRANSPOSE { NEED($$ = expr_op(P, AST_TRANSPOSE, 0, $1, NULL, LOC(@1))); }
;

/* primary = NUMBER | name | "(" expr ")" | "[" [ expr { "," expr } ] "]" */
primary:
  NUMBER {
    NEED($$ = expr_new(P, AST_NUM, LOC(@1)));
    $$->num = $1.value;
    $$->is_int = $1.is_int;
    $$->text = $1.text;
  }
| name
| '(' expr ')' { $$ = $2; }
| '[' ']' {
    NEED($$ = expr_new(P, AST_LIST, LOC(@1)));
  }
| '[' expr_list ']' {
    NEED($$ = expr_new(P, AST_LIST, LOC(@1)));
    $$->nargs = $2->n;
    $$->args = $2->v;
  }
;

/* name = path [ "'" ] */
name:
  path {
    NEED($$ = expr_new(P, AST_NAME, LOC(@1)));
    $$->path = path_of($1, LOC(@1));
  }
| path PRIME {
    NEED($$ = expr_new(P, AST_NAME, LOC(@1)));
    $$->path = path_of($1, LOC(@1));
    $$->primed = 1;
  }
;

/* path = IDENT { "." ( IDENT | INT | keyword ) }: the scanner turns an
 * integer or keyword written right after such a '.' into an IDENT. */
path:
  IDENT          { NEWVEC($$); PUSH($$, $1); }
| path '.' IDENT { $$ = $1; PUSH($$, $3); }
;

/* args = arg { "," arg } */
args_opt:
  %empty { NEWVEC($$); }
| args
;

args:
  arg          { NEWVEC($$); PUSH($$, $1); }
| args ',' arg { $$ = $1; PUSH($$, $3); }
;

/* arg = expr | IDENT "=" expr */
arg:
  expr
| IDENT '=' expr {
    NEED($$ = expr_new(P, AST_KWARG, LOC(@1)));
    $$->kwname = $1;
    $$->lhs = $3;
  }
;

indices:
  index             { NEWVEC($$); PUSH($$, $1); }
| indices ',' index { $$ = $1; PUSH($$, $3); }
;

/* index = expr | [ expr ] ":" [ expr ] | "None" */
index:
  expr
| NONE          { NEED($$ = expr_new(P, AST_NONE, LOC(@1))); }
| ':'           { NEED($$ = expr_op(P, AST_SLICE, 0, NULL, NULL, LOC(@1))); }
| expr ':'      { NEED($$ = expr_op(P, AST_SLICE, 0, $1, NULL, LOC(@1))); }
| ':' expr      { NEED($$ = expr_op(P, AST_SLICE, 0, NULL, $2, LOC(@1))); }
| expr ':' expr { NEED($$ = expr_op(P, AST_SLICE, 0, $1, $3, LOC(@1))); }
;

%%

void ast_syntax_error(ParseState *P, SrcLoc loc, const char *fmt, ...) {
  if (P->stop) return;
  va_list ap;
  va_start(ap, fmt);
  diag_vreport(P->de, DIAG_ERROR, loc, fmt, ap);
  va_end(ap);
  /* Past a handful of errors the rest is usually noise (or binary garbage):
   * stop reading so the time spent stays bounded. */
  if (++P->errors >= 20 || P->de->nerrors >= P->de->max_errors) P->stop = 1;
}

/* Only "memory exhausted" reaches yyerror (syntax errors go through
 * yyreport_syntax_error). The scanner's nesting limits keep the stack far
 * below YYMAXDEPTH, so it means an allocation failed; ast_parse reports it. */
static void seq_yyerror(SEQ_YYLTYPE *loc, ParseState *P, void *scanner, const char *msg) {
  (void)loc;
  (void)scanner;
  (void)msg;
  P->oom = 1;
}

/* Describes a token for "unexpected X": identifiers and numbers quote their
 * text, which the scanner kept for the token it returned last (the lookahead
 * that failed). */
static void describe_token(char *buf, size_t size, ParseState *P, yysymbol_kind_t sym) {
  if ((sym == YYSYMBOL_IDENT || sym == YYSYMBOL_NUMBER) && P->tok_text) {
    int n = P->tok_len > 40 ? 40 : (int)P->tok_len;
    snprintf(buf, size, "%s '%.*s%s'", yysymbol_name(sym), n, P->tok_text,
             P->tok_len > 40 ? "..." : "");
  } else {
    snprintf(buf, size, "%s", yysymbol_name(sym));
  }
}

/* Removes the tokens in `group` from the expected set if all of `needed` are
 * in it; returns whether it did. Lists like "'+', '-', '*', '/', '@', '(',
 * '[', '^T', '.' or newline" read better as "an operator or newline". */
static int take_group(int *has, const int *needed, int nneeded, const int *group, int ngroup) {
  for (int i = 0; i < nneeded; i++)
    if (!has[needed[i]]) return 0;
  for (int i = 0; i < ngroup; i++) has[group[i]] = 0;
  return 1;
}

static int yyreport_syntax_error(const yypcontext_t *ctx, ParseState *P, void *scanner) {
  (void)scanner;
  yysymbol_kind_t sym = yypcontext_token(ctx);
  /* The scanner already explained an invalid character or a stray prime. */
  if (sym == YYSYMBOL_BAD || P->stop) return 0;
  yysymbol_kind_t expected[YYNTOKENS];
  int n = yypcontext_expected_tokens(ctx, expected, YYNTOKENS);
  if (n < 0) return n;
  int has[YYNTOKENS] = {0};
  for (int i = 0; i < n; i++) has[expected[i]] = 1;
  /* The scanner never sends two NLs in a row, so right after one a newline is
   * not a real alternative; listing it would only confuse. */
  if (P->prev_nl) has[YYSYMBOL_NL] = 0;

  const char *groups[2];
  int ngroups = 0;
  /* Not static: YYTRANSLATE reads bison's yytranslate[] table, which is no
   * constant expression (GCC folds it anyway; clang rejects it). */
  const int op_needed[] = {YYTRANSLATE('*'), YYTRANSLATE('@')};
  const int op_group[] = {YYTRANSLATE('+'), YYTRANSLATE('-'), YYTRANSLATE('*'),
                          YYTRANSLATE('/'), YYTRANSLATE('@'), YYTRANSLATE('('),
                          YYTRANSLATE('['), YYTRANSLATE('.'), YYSYMBOL_TRANSPOSE,
                          YYSYMBOL_PRIME};
  const int expr_needed[] = {YYSYMBOL_NUMBER, YYSYMBOL_IDENT, YYTRANSLATE('(')};
  const int expr_group[] = {YYSYMBOL_NUMBER,  YYSYMBOL_IDENT,   YYTRANSLATE('('),
                            YYTRANSLATE('['), YYTRANSLATE('-'), YYTRANSLATE('+'),
                            YYSYMBOL_COMPLEX};
  if (take_group(has, op_needed, 2, op_group, (int)(sizeof op_group / sizeof *op_group)))
    groups[ngroups++] = "an operator";
  else if (take_group(has, expr_needed, 3, expr_group,
                      (int)(sizeof expr_group / sizeof *expr_group)))
    groups[ngroups++] = "an expression";

  const char *names[YYNTOKENS];
  int k = 0;
  for (int i = 0; i < ngroups; i++) names[k++] = groups[i];
  for (int i = 0; i < YYNTOKENS; i++)
    if (has[i]) names[k++] = yysymbol_name((yysymbol_kind_t)i);

  char msg[512], what[128];
  describe_token(what, sizeof what, P, sym);
  int len = snprintf(msg, sizeof msg, "unexpected %s", what);
  /* A long list of alternatives helps nobody. */
  if (k <= 6)
    for (int i = 0; i < k && len > 0 && (size_t)len < sizeof msg; i++)
      len += snprintf(msg + len, sizeof msg - (size_t)len, "%s%s",
                      i == 0 ? ", expecting " : i == k - 1 ? " or " : ", ", names[i]);
  ast_syntax_error(P, LOC(*yypcontext_location(ctx)), "%s", msg);
  return 0;
}
