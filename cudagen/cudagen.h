/* cudagen.h - the CUDA C renderer: a schedule (sched/sched.h) as CUDA C
 * kernels and the launch plan that runs them (runtime/rt_cuda.h). It renders
 * what the schedule decided and decides nothing of its own beyond how GPU
 * threads share the work of each stage; NVRTC compiles the source at run
 * time (or ahead of time), and runtime/cuda_exec.c runs the plan.
 *
 * The files, one concern each:
 *   frame.c    an instance's stages in order: launches, layer calls, buffers,
 *              initial and final states, zeroed outputs
 *   node.c     one node on the current row, its work shared by a block's
 *              threads; fused elementwise runs; per-row matrix products
 *   expr.c     the op table as C expressions (real and complex)
 *   seq.c      the sequential form: token rows, the step loop (one block
 *              per example), the commit
 *   scan.c     the scan form: fused scans (a thread per state row), scans,
 *              delays, windows and the final states they leave
 *   chunk.c    the chunked form of a matrix state: a block per (example,
 *              head) walking the sequence in chunks
 *   attn.c     causal softmax attention: a block per (example, head), a
 *              thread per query, keys and values through shared memory
 *   prelude.c  the device functions every program starts with
 * docs/cuda.md describes the kernels and what is not rendered yet.
 */
#ifndef SEQ_CUDAGEN_H
#define SEQ_CUDAGEN_H

#include "ir/ir.h"
#include "runtime/rt_cuda.h"
#include "sched/sched.h"

/* Renders s. Returns 0 and *out (arena-owned: source, kernels, plan), or -1
 * with a diagnostic naming the construct that has no CUDA form yet. */
int cuda_render(Arena *a, const Schedule *s, RtCuProgram **out, DiagEngine *de);

#endif
