/* cuda_emu.h - the CUDA backend's kernels run on the CPU, for tests.
 *
 * emu_build compiles a CUDA C source (the subset seqc generates, see
 * tests/cuda_emu/cuda_emu.h) as C++ with the C++ compiler CMake found
 * (SEQ_CXX) into a shared object and loads it; emu_device wraps it as an
 * RtCuDevice whose memory is host memory, so runtime/cuda_exec.c runs on it
 * unchanged. Without a C++ compiler emu_available() is 0 and tests skip.
 *
 * The shared object is built without sanitizers, except in a sanitizer
 * build whose C++ compiler matches the C compiler (CMake decides: the
 * SEQ_EMU_CXXFLAGS it passes then hold -fsanitize=address); there the
 * emulation announces its stack switches to ASan, and kernels' out-of-bounds
 * accesses to device buffers are reported (naming kernels.cu's lines: the
 * build directory, $TMPDIR/seq-emu-XXXXXX, then stays until emu_free;
 * otherwise it is removed as soon as the .so is loaded).
 * Environment: SEQ_EMU_SANITIZE=0 builds without the sanitizer;
 * SEQ_EMU_CXXFLAGS adds flags; SEQ_EMU_KEEP=1 keeps the build directory
 * (named on stderr).
 */
#ifndef SEQ_TEST_CUDA_EMU_H
#define SEQ_TEST_CUDA_EMU_H

#include <stddef.h>

#include "runtime/rt_cuda.h"

typedef struct EmuModule EmuModule;

/* 1 when a C++ compiler was found at configure time. */
int emu_available(void);

/* Compiles `cuda_source` and loads it; `kernel_names[0..n)` are the kernels
 * launch's index refers to, each of which must be in the source's
 * SEQ_EMU_KERNELS table. 0, or -1 with a message (the compiler's first
 * lines on a compile error). */
int emu_build(const char *cuda_source, const char *const *kernel_names, int n, EmuModule **out,
              char *msg, size_t msgn);
/* Frees what the device still holds and unloads the module. NULL is fine. */
void emu_free(EmuModule *m);

/* The device: alloc is calloc, copy is memcpy (the device ranges must lie
 * in one allocation), launch runs the kernel by index, sync does nothing.
 * Its stream is a tag, the module's address: every operation must be given
 * it (emu_stream_misses counts those that were not). */
RtCuDevice emu_device(EmuModule *m);

/* Launches a kernel by name, as the module's seq_emu_launch: 0, or nonzero
 * with a message. */
int emu_launch_name(EmuModule *m, const char *kernel, unsigned grid, unsigned block,
                    const long long *frame, char *msg, size_t msgn);

/* Later launches run blocks and threads in descending order (reverse 1) or
 * in index order (0, the default): a program whose results differ between
 * the two has a race (tests/cuda_emu/cuda_emu.h). */
void emu_set_reverse(EmuModule *m, int reverse);

/* Allocations not yet freed; device frees of an address it never gave out
 * (double frees included). */
size_t emu_live_allocs(const EmuModule *m);
/* Allocations ever made. */
size_t emu_total_allocs(const EmuModule *m);
int emu_bad_frees(const EmuModule *m);
/* Operations given a stream other than the device's own. */
int emu_stream_misses(const EmuModule *m);

#endif
