/* aot_cuda.h - shared objects for the GPU (docs/cuda.md, "Shared objects for
 * the GPU"; docs/abi.md): the CUDA program of a schedule with its PTX and
 * cubins compiled ahead of time, linked with the seqrt_cuda archive into a
 * .so that needs neither NVRTC nor seqc at run time, plus its C header. */
#ifndef SEQ_CG_AOT_CUDA_H
#define SEQ_CG_AOT_CUDA_H

#include "codegen/cg.h"
#include "runtime/rt_cuda.h"

/* The architectures built when none are given. */
#define CG_CUDA_DEFAULT_ARCHS "sm_80,sm_90"

/* Builds out_path from schedule s and its CUDA program (cuda_render's):
 * the plan (rt_cu_program_write), a cubin per arch of the comma-separated
 * list `archs` (NULL: CG_CUDA_DEFAULT_ARCHS) and the PTX of the lowest (so
 * newer GPUs can compile it), all by NVRTC through its cache; the entry
 * points call runtime/cuda_aot.c. The header goes to header_path, or
 * out_path with .so replaced by .h. opt: the host code's optimization level
 * and CPU (NULL or no CPU: the host architecture's generic CPU, so the .so
 * runs on any machine of that architecture). 0, or -1 with diagnostics. */
int cg_aot_cuda_build(Arena *a, const Schedule *s, const RtCuProgram *prog, const char *archs,
                      const CgOptions *opt, const char *out_path, const char *header_path,
                      DiagEngine *de);

#endif
