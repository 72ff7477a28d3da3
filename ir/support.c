/* support.c - arena, allocator hook, growable arrays, diagnostics, sources. */
#include "ir/support.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- Allocator hook ---------------------------------------------------- */

static long alloc_budget = -1; /* < 0: no failure injection */

static int alloc_allowed(void) {
  if (alloc_budget < 0) return 1;
  if (alloc_budget == 0) return 0;
  alloc_budget--;
  return 1;
}

void seq_alloc_fail_after(long n) {
  alloc_budget = n;
}

void *seq_malloc(size_t n) {
  return alloc_allowed() ? malloc(n ? n : 1) : NULL;
}

void *seq_realloc(void *p, size_t n) {
  return alloc_allowed() ? realloc(p, n ? n : 1) : NULL;
}

void seq_free(void *p) {
  free(p);
}

/* ---- Arena ------------------------------------------------------------- */

/* Blocks are chained; big requests get a block of their own. */
typedef struct Block {
  struct Block *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
} Block;

struct Arena {
  Block *head;
};

#define ARENA_BLOCK (64u * 1024u)

Arena *arena_create(void) {
  Arena *a = seq_malloc(sizeof *a);
  if (a) a->head = NULL;
  return a;
}

void arena_destroy(Arena *a) {
  if (!a) return;
  for (Block *b = a->head; b;) {
    Block *next = b->next;
    seq_free(b);
    b = next;
  }
  seq_free(a);
}

void *arena_alloc(Arena *a, size_t size) {
  size = (size + 15u) & ~(size_t)15u;
  if (size == 0) size = 16;
  Block *b = a->head;
  if (!b || b->cap - b->used < size) {
    size_t cap = size > ARENA_BLOCK ? size : ARENA_BLOCK;
    if (cap > SIZE_MAX - sizeof(Block)) return NULL;
    Block *nb = seq_malloc(sizeof(Block) + cap);
    if (!nb) return NULL;
    nb->used = 0;
    nb->cap = cap;
    /* A dedicated big block goes behind the head so the head keeps its space. */
    if (b && size > ARENA_BLOCK) {
      nb->next = b->next;
      b->next = nb;
    } else {
      nb->next = b;
      a->head = nb;
    }
    b = nb;
  }
  void *p = b->data + b->used;
  b->used += size;
  memset(p, 0, size);
  return p;
}

void *arena_calloc(Arena *a, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  return arena_alloc(a, n * size);
}

char *arena_strndup(Arena *a, const char *s, size_t n) {
  char *p = arena_alloc(a, n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *arena_strdup(Arena *a, const char *s) {
  return arena_strndup(a, s, strlen(s));
}

char *arena_printf(Arena *a, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = n >= 0 ? arena_alloc(a, (size_t)n + 1) : NULL;
  if (p) vsnprintf(p, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return p;
}

int vec_grow_(Arena *a, void **v, int *cap, int need, size_t elem) {
  if (need <= *cap) return 0;
  if (need > (1 << 28)) return -1;
  int ncap = *cap ? *cap : 8;
  while (ncap < need) ncap *= 2;
  void *nv = arena_calloc(a, (size_t)ncap, elem);
  if (!nv) return -1;
  if (*v && *cap) memcpy(nv, *v, (size_t)*cap * elem);
  *v = nv;
  *cap = ncap;
  return 0;
}

/* ---- Diagnostics ------------------------------------------------------- */

void diag_init(DiagEngine *de, Arena *a, FILE *print_to) {
  memset(de, 0, sizeof *de);
  de->arena = a;
  de->max_errors = 50;
  de->print_to = print_to;
}

static const char *severity_name(DiagSeverity s) {
  switch (s) {
  case DIAG_ERROR:
    return "error";
  case DIAG_WARNING:
    return "warning";
  case DIAG_NOTE:
    return "note";
  }
  return "error";
}

void diag_vreport(DiagEngine *de, DiagSeverity sev, SrcLoc loc, const char *fmt, va_list ap) {
  if (sev == DIAG_ERROR) {
    if (de->nerrors >= de->max_errors) {
      de->nerrors++;
      return;
    }
    de->nerrors++;
  } else if (de->nerrors > de->max_errors) {
    return;
  }
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  Diag d = {sev, loc, arena_strdup(de->arena, buf)};
  if (!d.message) d.message = "out of memory while reporting a diagnostic";
  (void)vec_push(de->arena, &de->diags, d);
  if (de->print_to) diag_format(de->print_to, &d);
}

void diag_report(DiagEngine *de, DiagSeverity sev, SrcLoc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  diag_vreport(de, sev, loc, fmt, ap);
  va_end(ap);
}

/* Prints the source line containing loc and a caret under its column. Tabs are
 * kept so the caret lines up in a terminal; other control bytes print as '?'. */
static void print_source_line(FILE *out, SrcLoc loc) {
  const SrcFile *f = loc.file;
  if (!f || !f->text || loc.line < 1) return;
  const char *p = f->text, *end = f->text + f->len;
  for (int line = 1; line < loc.line && p < end; p++)
    if (*p == '\n') line++;
  if (p >= end && loc.line > 1) return;
  const char *e = p;
  while (e < end && *e != '\n' && e - p < 300) e++;
  fputs("  ", out);
  for (const char *q = p; q < e; q++) {
    unsigned char c = (unsigned char)*q;
    fputc(c == '\t' || c >= 0x20 ? c : '?', out);
  }
  fputs("\n  ", out);
  int col = loc.col < 1 ? 1 : loc.col;
  for (int i = 1; i < col && i <= e - p; i++) fputc(p[i - 1] == '\t' ? '\t' : ' ', out);
  fputs("^\n", out);
}

void diag_format(FILE *out, const Diag *d) {
  if (d->loc.file)
    fprintf(out, "%s:%d:%d: %s: %s\n", d->loc.file->name, d->loc.line, d->loc.col,
            severity_name(d->severity), d->message);
  else
    fprintf(out, "seqc: %s: %s\n", severity_name(d->severity), d->message);
  print_source_line(out, d->loc);
}

/* ---- Source manager ---------------------------------------------------- */

void srcmgr_init(SrcMgr *sm, Arena *a) {
  memset(sm, 0, sizeof *sm);
  sm->arena = a;
}

SrcFile *srcmgr_add_string(SrcMgr *sm, const char *name, const char *text, size_t len) {
  SrcFile *f = arena_alloc(sm->arena, sizeof *f);
  char *copy = arena_strndup(sm->arena, text, len);
  if (!f || !copy) return NULL;
  f->name = arena_strdup(sm->arena, name);
  f->path = f->name;
  f->text = copy;
  f->len = len;
  if (!f->name || vec_push(sm->arena, &sm->files, f)) return NULL;
  return f;
}

SrcFile *srcmgr_load(SrcMgr *sm, DiagEngine *de, SrcLoc from, const char *name, const char *path) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    diag_error(de, from, "cannot open '%s': %s", name, strerror(errno));
    return NULL;
  }
  /* A directory opens on Linux and fails only at the first read. */
  struct stat st;
  if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
    diag_error(de, from, "'%s' is a directory, not a .seq file", name);
    fclose(fp);
    return NULL;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      if (cap >= SEQ_MAX_SOURCE_BYTES) {
        diag_error(de, from, "'%s' is larger than %u bytes", name, SEQ_MAX_SOURCE_BYTES);
        seq_free(buf);
        fclose(fp);
        return NULL;
      }
      cap = cap ? cap * 2 : 4096;
      char *nb = seq_realloc(buf, cap);
      if (!nb) {
        diag_error(de, from, "out of memory reading '%s'", name);
        seq_free(buf);
        fclose(fp);
        return NULL;
      }
      buf = nb;
    }
    size_t got = fread(buf + len, 1, cap - len, fp);
    len += got;
    if (got == 0) break;
  }
  int err = ferror(fp);
  fclose(fp);
  if (err) {
    diag_error(de, from, "cannot read '%s'", name);
    seq_free(buf);
    return NULL;
  }
  SrcFile *f = srcmgr_add_string(sm, name, buf ? buf : "", len);
  seq_free(buf);
  if (!f) {
    diag_error(de, from, "out of memory reading '%s'", name);
    return NULL;
  }
  f->path = arena_strdup(sm->arena, path);
  return f;
}
