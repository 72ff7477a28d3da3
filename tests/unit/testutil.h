/* testutil.h - helpers shared by the cmocka test programs. */
#ifndef SEQ_TESTUTIL_H
#define SEQ_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ir/ir.h"

/* Reads a whole file (NUL-terminated); NULL if it cannot be read. Caller frees. */
char *tu_read_file(const char *path, size_t *len);
int tu_write_file(const char *path, const char *text);
/* Runs a shell command, capturing stdout and stderr together into *out
 * (caller frees). Returns the exit status (or -1). */
int tu_run(const char *cmd, char **out);
/* Compares `actual` with the file at `expected_path` (relative to the source
 * tree). With SEQ_UPDATE_GOLDEN=1 in the environment, rewrites the file. */
void tu_check_golden(const char *actual, const char *expected_path);
/* A fresh temporary directory for this test program (removed by the OS's tmp cleanup). */
const char *tu_tmpdir(void);
/* Absolute path inside the source tree (static buffer rotated among 8). */
const char *tu_src(const char *rel);

/* Runs `seqc ARGS` in directory `cwd`, output captured into *out (caller
 * frees); returns the exit status. */
int tu_seqc(const char *cwd, const char *args, char **out);
/* Fails the test unless `seqc ARGS` (run in cwd) exits with want_rc and prints
 * `needle`; on failure prints the command and its whole output. */
void tu_expect_seqc(const char *cwd, const char *args, int want_rc, const char *needle);
int tu_ends_with(const char *s, const char *suffix);
/* The names of the entries of `dir` that end with `suffix` ("" for all), dot
 * files left out, sorted; NULL-terminated, *n (if not NULL) their count. Fails
 * the test if dir cannot be read. Free with tu_free_list. */
char **tu_list_dir(const char *dir, const char *suffix, int *n);
void tu_free_list(char **names);

/* Signature entries of an IR function built by hand (arena a); each returns
 * the new entry's index. A dim with deflt > 0 has that default. */
int tu_ir_dim(Arena *a, IrFunc *f, const char *name, int sig, int64_t deflt);
int tu_ir_param(Arena *a, IrFunc *f, const char *name, IrType t);
int tu_ir_input(Arena *a, IrFunc *f, const char *name, IrType t);
int tu_ir_state(Arena *a, IrFunc *f, const char *name, IrType t);
int tu_ir_output(Arena *a, IrFunc *f, const char *name, IrType t);

#endif
