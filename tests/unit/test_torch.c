/* test_torch.c - the interpreter against PyTorch. Each directory under
 * tests/reference/fixtures/ holds weights, inputs and PyTorch's outputs, written
 * by tests/reference/make_torch_fixtures.py, and a case.txt manifest:
 *     seq examples/lstm.seq
 *     weights weights.safetensors
 *     in x=x.npy          (inputs, initial states, lengths)
 *     out y=y.npy         (expected outputs and final states)
 *     tol 1e-5
 *     entry LSTMStack     (optional: the unit to run, --entry)
 * Each case runs `seqc run ... --expect NAME=FILE` through the documented CLI,
 * so this also tests the contract in docs/cli.md. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define MAX_CASES 256

static char case_dirs[MAX_CASES][1024];
static char case_names[MAX_CASES][256];

/* Builds the seqc command line for one case from its manifest. */
static int build_command(const char *dir, char *cmd, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/case.txt", dir);
  char *text = tu_read_file(path, NULL);
  if (!text) return -1;
  char seq[4096] = "", weights[2048] = "", args[8192] = "", tol[64] = "1e-5", entry[160] = "";
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    char key[32], val[256];
    if (sscanf(line, "%31s %255s", key, val) != 2) continue;
    size_t len = strlen(args);
    if (strcmp(key, "seq") == 0)
      snprintf(seq, sizeof seq, "%s", tu_src(val));
    else if (strcmp(key, "weights") == 0)
      snprintf(weights, sizeof weights, "%s/%s", dir, val);
    else if (strcmp(key, "tol") == 0)
      snprintf(tol, sizeof tol, "%.60s", val);
    else if (strcmp(key, "entry") == 0)
      snprintf(entry, sizeof entry, " --entry %.128s", val);
    else if (strcmp(key, "dims") == 0)
      snprintf(args + len, sizeof args - len, " --dims %s", val);
    else if (strcmp(key, "in") == 0 || strcmp(key, "out") == 0) {
      char *eq = strchr(val, '=');
      if (!eq) continue;
      *eq = 0;
      snprintf(args + len, sizeof args - len, " --%s %s=%s/%s",
               strcmp(key, "in") == 0 ? "in" : "expect", val, dir, eq + 1);
    }
  }
  free(text);
  if (!seq[0] || !weights[0]) return -1;
  snprintf(cmd, n, "%s run %s%s --weights %s%s --tol %s --quiet", SEQC_BIN, seq, entry, weights,
           args, tol);
  return 0;
}

/* The CPU backend refuses, with this diagnostic, what it cannot compile yet. */
#define CPU_UNSUPPORTED "the CPU backend does not support"

static void run_backend(const char *dir, const char *backend) {
  char cmd[16384];
  assert_int_equal(build_command(dir, cmd, sizeof cmd), 0);
  size_t len = strlen(cmd);
  snprintf(cmd + len, sizeof cmd - len, " --backend=%s", backend);
  char *out = NULL;
  int rc = tu_run(cmd, &out);
  if (rc != 0 && strcmp(backend, "cpu") == 0 && out && strstr(out, CPU_UNSUPPORTED)) {
    print_message("cpu backend skipped: %s", strstr(out, CPU_UNSUPPORTED));
    free(out);
    return;
  }
  if (rc != 0) print_error("command: %s\n%s", cmd, out ? out : "");
  /* Every --expect line must have been checked and found ok. */
  assert_int_equal(rc, 0);
  assert_non_null(strstr(out, ": ok"));
  assert_null(strstr(out, "MISMATCH"));
  free(out);
}

static void run_case(void **state) {
  run_backend(*state, "interp");
  run_backend(*state, "cpu");
}

static int by_name(const void *a, const void *b) {
  return strcmp((const char *)a, (const char *)b);
}

int main(void) {
  const char *root = tu_src("tests/reference/fixtures");
  DIR *d = opendir(root);
  if (!d) {
    fprintf(stderr, "no fixtures at %s\n", root);
    return 1;
  }
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (n == MAX_CASES) {
      fprintf(stderr, "more than %d fixtures: raise MAX_CASES\n", MAX_CASES);
      closedir(d);
      return 1;
    }
    snprintf(case_names[n], sizeof case_names[n], "%s", e->d_name);
    n++;
  }
  closedir(d);
  qsort(case_names, (size_t)n, sizeof case_names[0], by_name);
  struct CMUnitTest tests[MAX_CASES];
  for (int i = 0; i < n; i++) {
    snprintf(case_dirs[i], sizeof case_dirs[i], "%.700s/%.255s", root, case_names[i]);
    tests[i] = (struct CMUnitTest){case_names[i], run_case, NULL, NULL, case_dirs[i]};
  }
  return _cmocka_run_group_tests("torch_fixtures", tests, (size_t)n, NULL, NULL);
}
