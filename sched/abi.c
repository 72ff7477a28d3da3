/* abi.c - the ABI's status messages and tensor lookup (abi.h). */
#include "sched/abi.h"

#include <string.h>

const char *abi_status_message(int status) {
  switch (status) {
  case ABI_OK:
    return "ok";
  case ABI_ERR_ARG:
    return "bad argument (negative B or T, a NULL buffer, or a weights blob of the wrong size)";
  case ABI_ERR_NOMEM:
    return "out of memory (or B*T too large)";
  case ABI_ERR_TOKEN:
    return "a token index is out of range";
  case ABI_ERR_LENGTH:
    return "a sequence length is outside [0, T]";
  default:
    return "unknown status";
  }
}

int abi_find_tensor(const AbiTensor *v, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(v[i].name, name) == 0) return i;
  return -1;
}

const char *abi_c_identifier(Arena *a, const char *name) {
  size_t n = strlen(name);
  char *s = arena_alloc(a, n + 2);
  if (!s) return NULL;
  size_t j = 0;
  if (n == 0 || (name[0] >= '0' && name[0] <= '9')) s[j++] = '_';
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) c = '_';
    s[j++] = c;
  }
  s[j] = 0;
  return s;
}
