#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/wait.h>

char *tu_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap + 1);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      cap *= 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        buf = NULL;
      } else {
        buf = nb;
      }
    }
  }
  fclose(f);
  if (!buf) return NULL;
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

int tu_write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

int tu_run(const char *cmd, char **out) {
  char full[8192];
  snprintf(full, sizeof full, "(%s) 2>&1", cmd);
  FILE *p = popen(full, "r");
  if (!p) return -1;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap + 1);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, p)) > 0) {
    n += got;
    if (n == cap) {
      cap *= 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        buf = NULL;
      } else {
        buf = nb;
      }
    }
  }
  int st = pclose(p);
  if (buf) buf[n] = 0;
  if (out)
    *out = buf;
  else
    free(buf);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *tu_src(const char *rel) {
  static char bufs[8][4096];
  static int k;
  char *b = bufs[k++ & 7];
  snprintf(b, 4096, "%s/%s", SEQ_SOURCE_DIR, rel);
  return b;
}

void tu_check_golden(const char *actual, const char *expected_path) {
  const char *path = tu_src(expected_path);
  const char *upd = getenv("SEQ_UPDATE_GOLDEN");
  if (upd && *upd == '1') {
    assert_int_equal(tu_write_file(path, actual), 0);
    return;
  }
  char *expected = tu_read_file(path, NULL);
  if (!expected) fail_msg("golden file %s is missing (run with SEQ_UPDATE_GOLDEN=1)", path);
  if (strcmp(expected, actual) != 0) {
    print_error("golden mismatch for %s\n--- expected\n%s--- actual\n%s---\n", path, expected,
                actual);
    free(expected);
    fail();
  }
  free(expected);
}

const char *tu_tmpdir(void) {
  static char dir[256];
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "/tmp/seqc-test-XXXXXX");
    if (!mkdtemp(dir)) fail_msg("mkdtemp failed");
  }
  return dir;
}

int tu_seqc(const char *cwd, const char *args, char **out) {
  size_t n = strlen(cwd) + strlen(SEQC_BIN) + strlen(args) + 16;
  char *cmd = malloc(n);
  if (!cmd) fail_msg("out of memory");
  snprintf(cmd, n, "cd %s && %s %s", cwd, SEQC_BIN, args);
  int rc = tu_run(cmd, out);
  free(cmd);
  return rc;
}

void tu_expect_seqc(const char *cwd, const char *args, int want_rc, const char *needle) {
  char *out = NULL;
  int rc = tu_seqc(cwd, args, &out);
  int ok = rc == want_rc && out && strstr(out, needle);
  if (!ok)
    print_error("seqc %s\nexit %d, output:\n%s\nwanted exit %d and '%s'\n", args, rc,
                out ? out : "(none)", want_rc, needle);
  free(out);
  assert_true(ok);
}

int tu_ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

int tu_ir_dim(Arena *a, IrFunc *f, const char *name, int sig, int64_t deflt) {
  IrDim d = {name, {0}, sig, deflt > 0, deflt > 0 ? deflt : 0};
  assert_int_equal(vec_push(a, &f->dims, d), 0);
  return f->dims.n - 1;
}

int tu_ir_param(Arena *a, IrFunc *f, const char *name, IrType t) {
  IrParam p = {name, t, {0}};
  assert_int_equal(vec_push(a, &f->params, p), 0);
  return f->params.n - 1;
}

int tu_ir_input(Arena *a, IrFunc *f, const char *name, IrType t) {
  IrInput p = {name, t, {0}, 0};
  assert_int_equal(vec_push(a, &f->inputs, p), 0);
  return f->inputs.n - 1;
}

int tu_ir_state(Arena *a, IrFunc *f, const char *name, IrType t) {
  IrState s = {name, t, {0}, IR_NONE, IR_NONE, 0};
  assert_int_equal(vec_push(a, &f->states, s), 0);
  return f->states.n - 1;
}

int tu_ir_output(Arena *a, IrFunc *f, const char *name, IrType t) {
  IrOutput o = {name, t, {0}, IR_NONE};
  assert_int_equal(vec_push(a, &f->outputs, o), 0);
  return f->outputs.n - 1;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

char **tu_list_dir(const char *dir, const char *suffix, int *n) {
  DIR *d = opendir(dir);
  if (!d) fail_msg("cannot read the directory %s", dir);
  int count = 0, cap = 16;
  char **names = malloc(sizeof *names * (size_t)cap);
  assert_non_null(names);
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.' || !tu_ends_with(e->d_name, suffix)) continue;
    if (count + 1 >= cap) {
      cap *= 2;
      names = realloc(names, sizeof *names * (size_t)cap);
      assert_non_null(names);
    }
    names[count] = strdup(e->d_name);
    assert_non_null(names[count]);
    count++;
  }
  closedir(d);
  qsort(names, (size_t)count, sizeof *names, by_name);
  names[count] = NULL;
  if (n) *n = count;
  return names;
}

void tu_free_list(char **names) {
  if (!names) return;
  for (char **p = names; *p; p++) free(*p);
  free(names);
}
