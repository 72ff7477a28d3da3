/* support.h - the pieces every stage of seqc shares: source locations, the
 * per-compilation arena, growable arrays and the diagnostic engine.
 *
 * Dependencies point one way (frontend -> ir <- passes <- codegen); this header
 * lives in ir/ because it is the bottom of that graph. Nothing here knows about
 * the language.
 */
#ifndef SEQ_SUPPORT_H
#define SEQ_SUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- Source locations -------------------------------------------------- */

/* A source file registered with a SrcMgr. Text is kept for the whole
 * compilation so that every diagnostic can quote its line. */
typedef struct SrcFile {
  const char *name; /* as given by the user ("examples/lstm.seq") */
  const char *path; /* resolved path on disk, or "<string>" */
  const char *text; /* NUL-terminated contents */
  size_t len;       /* bytes in text (text may contain NULs: len is the truth) */
} SrcFile;

/* file == NULL means "no location" (command-line or internal). Lines and
 * columns count from 1; columns count bytes. */
typedef struct SrcLoc {
  const SrcFile *file;
  int line, col;
} SrcLoc;

/* ---- Arena ------------------------------------------------------------- */

/* One arena per compilation: passes allocate and never free; a single
 * arena_destroy releases everything. Allocation failure is reported through
 * the return value (NULL), never by aborting. */
typedef struct Arena Arena;

Arena *arena_create(void);
void arena_destroy(Arena *a);
void *arena_alloc(Arena *a, size_t size);            /* zeroed, 16-byte aligned */
void *arena_calloc(Arena *a, size_t n, size_t size); /* overflow-checked */
char *arena_strdup(Arena *a, const char *s);
char *arena_strndup(Arena *a, const char *s, size_t n);
char *arena_printf(Arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The one allocator hook: every heap allocation in the compiler and runtime
 * goes through seq_malloc/seq_realloc/seq_free so tests can inject failures. */
void *seq_malloc(size_t n);
void *seq_realloc(void *p, size_t n);
void seq_free(void *p);
/* Test hook: after `n` more successful allocations, fail every allocation.
 * n < 0 disables injection. */
void seq_alloc_fail_after(long n);

/* ---- Growable arrays (arena-backed) ------------------------------------ */

/* VEC(T) is {T *v; int n, cap;}. vec_push returns 0 on success, -1 on
 * allocation failure (the vector is unchanged). */
#define VEC(T)                                                                                     \
  struct {                                                                                         \
    T *v;                                                                                          \
    int n, cap;                                                                                    \
  }
int vec_grow_(Arena *a, void **v, int *cap, int need, size_t elem);
#define vec_push(a, vec, x)                                                                        \
  ((vec)->n < (vec)->cap ||                                                                        \
           vec_grow_((a), (void **)&(vec)->v, &(vec)->cap, (vec)->n + 1, sizeof(*(vec)->v)) == 0   \
       ? ((vec)->v[(vec)->n++] = (x), 0)                                                           \
       : -1)

/* ---- Diagnostics ------------------------------------------------------- */

typedef enum { DIAG_ERROR, DIAG_WARNING, DIAG_NOTE } DiagSeverity;

typedef struct Diag {
  DiagSeverity severity;
  SrcLoc loc;
  char *message; /* owned by the DiagEngine's arena */
} Diag;

/* Collects diagnostics for one compilation. Printing is optional (the CLI
 * prints to stderr; the library API hands the records to the caller). */
typedef struct DiagEngine {
  Arena *arena;
  VEC(Diag) diags;
  int nerrors;
  int max_errors; /* stop recording after this many errors (default 50) */
  FILE *print_to; /* if non-NULL, each diagnostic is printed as it arrives */
} DiagEngine;

void diag_init(DiagEngine *de, Arena *a, FILE *print_to);
void diag_report(DiagEngine *de, DiagSeverity sev, SrcLoc loc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_vreport(DiagEngine *de, DiagSeverity sev, SrcLoc loc, const char *fmt, va_list ap);
#define diag_error(de, loc, ...) diag_report((de), DIAG_ERROR, (loc), __VA_ARGS__)
#define diag_note(de, loc, ...) diag_report((de), DIAG_NOTE, (loc), __VA_ARGS__)
/* Formats one diagnostic the way the CLI prints it:
 *   file:line:col: error: message
 *     <source line>
 *     <spaces>^
 * Locations without a file print "seqc: error: message". */
void diag_format(FILE *out, const Diag *d);
/* Compiler bugs (not user errors): recorded as an error that names the pass. */
#define diag_internal(de, pass, ...)                                                               \
  diag_report((de), DIAG_ERROR, (SrcLoc){0}, "internal error in " pass ": " __VA_ARGS__)

/* ---- Source manager ---------------------------------------------------- */

typedef struct SrcMgr {
  Arena *arena;
  VEC(SrcFile *) files;
} SrcMgr;

void srcmgr_init(SrcMgr *sm, Arena *a);
/* Reads a file; on failure reports a diagnostic at `from` and returns NULL.
 * Files over SEQ_MAX_SOURCE_BYTES are refused with a diagnostic. */
SrcFile *srcmgr_load(SrcMgr *sm, DiagEngine *de, SrcLoc from, const char *name, const char *path);
SrcFile *srcmgr_add_string(SrcMgr *sm, const char *name, const char *text, size_t len);

/* ---- Limits (checked with diagnostics, never asserted) ----------------- */
#define SEQ_MAX_SOURCE_BYTES (16u << 20)
#define SEQ_MAX_NESTING 256     /* parenthesis/bracket/expression depth */
#define SEQ_MAX_IDENT_LEN 256   /* bytes in one identifier */
#define SEQ_MAX_IMPORT_DEPTH 32 /* chain of nested imports */
#define SEQ_MAX_STMT_OPS 10000  /* operators and brackets in one statement (AST depth) */
#define SEQ_MAX_RANK 8          /* tensor rank */
#define SEQ_MAX_DIM_VALUE ((int64_t)1 << 40) /* one dimension's value */

#endif
