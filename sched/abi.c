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
