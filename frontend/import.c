/* import.c - loading a program: the main file and, transitively, the files it
 * imports. Each file is parsed once (files are identified by realpath, so two
 * spellings of one path are one file); an import that reaches a file still
 * being loaded is a cycle. The units of all files share one namespace and are
 * collected in load order: every file's units after those of the files it
 * imports, so callees tend to precede their callers.
 */
/* realpath is X/Open; the build defines only _POSIX_C_SOURCE. */
#define _XOPEN_SOURCE 700
#include "frontend/sema.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

/* The directory part of `name` including the trailing '/', or "" if none. */
static char *dir_prefix(Arena *a, const char *name) {
  const char *slash = strrchr(name, '/');
  return slash ? arena_strndup(a, name, (size_t)(slash - name + 1)) : arena_strdup(a, "");
}

static int is_regular_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Resolves `import "std/NAME"` against the standard library directories:
 * FrontendOptions.stdlib_dirs if given, else $SEQ_STDLIB, the source tree's
 * stdlib/ and the install prefix's, in that order. The first that holds the
 * file wins. On failure *searched lists the directories tried. */
static const char *resolve_std(Sema *S, const char *rest, const char **searched) {
  const char *defaults[4];
  int nd = 0;
  const char *const *dirs = S->opt ? S->opt->stdlib_dirs : NULL;
  if (!dirs) {
    const char *env = getenv("SEQ_STDLIB");
    if (env && *env) defaults[nd++] = env;
#ifdef SEQ_SOURCE_STDLIB
    defaults[nd++] = SEQ_SOURCE_STDLIB;
#endif
#ifdef SEQ_INSTALL_STDLIB
    defaults[nd++] = SEQ_INSTALL_STDLIB;
#endif
    defaults[nd] = NULL;
    dirs = defaults;
  }
  const char *list = "";
  for (int i = 0; dirs[i]; i++) {
    const char *sep = dirs[i][0] && dirs[i][strlen(dirs[i]) - 1] == '/' ? "" : "/";
    char *cand = arena_printf(S->a, "%s%s%s", dirs[i], sep, rest);
    if (!cand) return NULL;
    if (is_regular_file(cand)) return cand;
    list = arena_printf(S->a, "%s%s%s", list, i ? ", " : "", dirs[i]);
    if (!list) return NULL;
  }
  *searched = list;
  return NULL;
}

/* The parser locates an import at its keyword; errors about the path point
 * at the string itself, found as the first '"' after the keyword on the line. */
static SrcLoc path_loc(const AstImport *imp) {
  SrcLoc loc = imp->loc;
  const SrcFile *f = loc.file;
  if (!f || !f->text || loc.line < 1 || loc.col < 1) return loc;
  const char *p = f->text, *end = f->text + f->len;
  for (int line = 1; line < loc.line && p < end; p++)
    if (*p == '\n') line++;
  for (const char *q = p + loc.col - 1; q >= p && q < end && *q != '\n'; q++) {
    if (*q == '"') {
      loc.col = (int)(q - p) + 1;
      break;
    }
  }
  return loc;
}

/* Loads and parses one file (already resolved to `path`, shown as `name`). */
static SemaFile *load_file(Sema *S, SrcLoc from, const char *name, const char *path,
                           const char *key) {
  SrcFile *src = srcmgr_load(S->sm, S->de, from, name, path);
  if (!src) return NULL;
  SemaFile *sf = arena_alloc(S->a, sizeof *sf);
  if (!sf) {
    sema_oom(S);
    return NULL;
  }
  sf->src = src;
  sf->key = key ? arena_strdup(S->a, key) : NULL;
  sf->ast = ast_parse(S->a, S->de, src);
  if (!sf->ast) {
    sema_oom(S);
    return NULL;
  }
  return sf;
}

static SemaFile *find_loaded(Sema *S, const char *key) {
  for (int i = 0; i < S->files.n; i++)
    if (S->files.v[i]->key && strcmp(S->files.v[i]->key, key) == 0) return S->files.v[i];
  return NULL;
}

/* The chain from the first occurrence of `key` on the loading stack to the
 * top, then `key` again: "a.seq -> b.seq -> a.seq". */
static char *cycle_text(Sema *S, SemaFile **stack, int depth, const char *key) {
  int start = 0;
  for (int i = 0; i < depth; i++)
    if (stack[i]->key && strcmp(stack[i]->key, key) == 0) start = i;
  char *text = arena_strdup(S->a, "");
  for (int i = start; i < depth && text; i++)
    text = arena_printf(S->a, "%s%s -> ", text, stack[i]->src->name);
  if (text) text = arena_printf(S->a, "%s%s", text, stack[start]->src->name);
  return text;
}

/* Loads the imports of stack[depth-1], depth first, appending each completed
 * file to S->files after its own imports (post-order). */
static void load_imports(Sema *S, SemaFile **stack, int depth) {
  SemaFile *file = stack[depth - 1];
  for (int i = 0; i < file->ast->nimports; i++) {
    const AstImport *imp = &file->ast->imports[i];
    SrcLoc at = path_loc(imp);
    if (!imp->path || !*imp->path) {
      diag_error(S->de, at, "empty import path");
      continue;
    }
    const char *name, *path;
    if (strncmp(imp->path, "std/", 4) == 0) {
      const char *searched = "";
      path = resolve_std(S, imp->path + 4, &searched);
      if (!path) {
        if (searched)
          diag_error(S->de, at, "cannot find '%s' in the standard library (searched: %s)",
                     imp->path, *searched ? searched : "no directories");
        else
          sema_oom(S);
        continue;
      }
      name = path;
    } else if (imp->path[0] == '/') {
      name = path = imp->path;
    } else {
      /* Relative to the importing file: keep the importer's spelling of its
       * directory in the shown name so that messages stay relative too. */
      name = arena_printf(S->a, "%s%s", dir_prefix(S->a, file->src->name), imp->path);
      path = arena_printf(S->a, "%s%s", dir_prefix(S->a, file->src->path), imp->path);
      if (!name || !path) {
        sema_oom(S);
        return;
      }
    }
    char real[PATH_MAX];
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
      diag_error(S->de, at, "imported '%s' is %s, not a .seq file (%s)", imp->path,
                 S_ISDIR(st.st_mode) ? "a directory" : "not a regular file", name);
      continue;
    }
    if (!is_regular_file(path) || !realpath(path, real)) {
      diag_error(S->de, at, "cannot find imported file '%s' (looked for %s)", imp->path, name);
      continue;
    }
    for (int k = 0; k < depth; k++) {
      if (stack[k]->key && strcmp(stack[k]->key, real) == 0) {
        const char *cyc = cycle_text(S, stack, depth, real);
        diag_error(S->de, at, "import cycle: %s", cyc ? cyc : "?");
        goto next;
      }
    }
    if (find_loaded(S, real)) continue;
    if (depth >= SEQ_MAX_IMPORT_DEPTH) {
      diag_error(S->de, at, "imports are nested more than %d files deep", SEQ_MAX_IMPORT_DEPTH);
      continue;
    }
    SemaFile *child = load_file(S, at, name, path, real);
    if (!child) continue;
    stack[depth] = child;
    load_imports(S, stack, depth + 1);
    if (vec_push(S->a, &S->files, child)) {
      sema_oom(S);
      return;
    }
  next:;
  }
}

int sema_load_program(Sema *S, const SrcFile *main_src, int is_file) {
  int errors = S->de->nerrors;
  SemaFile *main = arena_alloc(S->a, sizeof *main);
  if (!main) {
    sema_oom(S);
    return -1;
  }
  main->src = main_src;
  /* A string has no file to dedupe against; a file does (so importing the
   * main file is reported as a cycle). */
  char real[PATH_MAX];
  if (is_file && is_regular_file(main_src->path) && realpath(main_src->path, real))
    main->key = arena_strdup(S->a, real);
  main->ast = ast_parse(S->a, S->de, main_src);
  if (!main->ast) {
    sema_oom(S);
    return -1;
  }
  S->main = main;
  SemaFile *stack[SEQ_MAX_IMPORT_DEPTH + 1];
  stack[0] = main;
  load_imports(S, stack, 1);
  if (vec_push(S->a, &S->files, main)) {
    sema_oom(S);
    return -1;
  }
  if (S->de->nerrors > errors) return -1;

  /* One namespace for the units of all files. */
  for (int i = 0; i < S->files.n; i++) {
    const SemaFile *sf = S->files.v[i];
    for (int k = 0; k < sf->ast->nunits; k++) {
      const AstUnit *u = sf->ast->units[k];
      if (!u || !u->name) continue;
      int dup = 0;
      for (int j = 0; j < S->units.n && !dup; j++) {
        if (strcmp(S->units.v[j].ast->name, u->name) == 0) {
          diag_error(S->de, u->loc, "duplicate unit '%s'", u->name);
          diag_note(S->de, S->units.v[j].ast->loc, "'%s' was first defined here", u->name);
          dup = 1;
        }
      }
      if (dup) continue;
      SemaUnit su = {0};
      su.ast = u;
      su.file = sf;
      su.func = -1;
      if (vec_push(S->a, &S->units, su)) {
        sema_oom(S);
        return -1;
      }
    }
  }
  return S->de->nerrors > errors ? -1 : 0;
}
