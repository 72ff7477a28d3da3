/* aot_cuda.c - shared objects for the GPU (aot_cuda.h).
 *
 * NVRTC compiles the program's CUDA C to a cubin per architecture asked for
 * and to PTX for the lowest one (through the kernel cache). An LLVM module
 * holds them, the plan (rt_cu_program_write's bytes, read back here once as
 * a check) and the compiled dims as private constants, an RtCuAotModel
 * pointing at them, and the exported entry points, each a tail call into
 * runtime/cuda_aot.c with the model. The module is compiled to a
 * position-independent object, which the system C compiler links with
 * libseqrt_cuda.a as aot.c links the CPU's: the archive's symbols hidden, so
 * the .so needs libc (and libdl, libpthread) only; libcuda is opened with
 * dlopen at the first call, and NVRTC is never needed at run time. */
#include "codegen/aot_cuda.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codegen/aot.h"

/* ---- images ------------------------------------------------------------------ */

enum { MAX_ARCHS = 16 };

typedef struct Images {
  int n;
  const char *arch[MAX_ARCHS + 1]; /* "sm_80", ..., then "compute_80" */
  RtBlob blob[MAX_ARCHS + 1];
} Images;

static void images_free(Images *im) {
  for (int i = 0; i < im->n; i++) rt_blob_free(&im->blob[i]);
}

/* The compute capability of a valid "sm_XY[a|f]" (NVRTC has checked it). */
static int arch_cc(const char *arch) {
  return atoi(arch + 3);
}

/* Splits the list, compiles a cubin per arch and PTX for the lowest. */
static int compile_images(Arena *a, const RtCuProgram *prog, const char *symbol, const char *archs,
                          Images *im, DiagEngine *de) {
  memset(im, 0, sizeof *im);
  const char *list = archs && *archs ? archs : CG_CUDA_DEFAULT_ARCHS;
  char *spec = arena_strdup(a, list);
  if (!spec) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    return -1;
  }
  int lowest = -1;
  for (char *p = spec; p;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = 0;
    if (!*p) {
      diag_error(de, (SrcLoc){0}, "--cuda-arch takes a list such as sm_80,sm_90, got '%s'", list);
      images_free(im);
      return -1;
    }
    int dup = 0;
    for (int i = 0; i < im->n; i++) dup |= strcmp(im->arch[i], p) == 0;
    if (!dup) {
      if (im->n == MAX_ARCHS) {
        diag_error(de, (SrcLoc){0}, "--cuda-arch: at most %d architectures", MAX_ARCHS);
        images_free(im);
        return -1;
      }
      RtError err;
      if (rt_nvrtc_compile(prog->source, symbol, p, 1, &im->blob[im->n], &err)) {
        diag_error(de, (SrcLoc){0}, "--target=cuda: %s", err.msg);
        images_free(im);
        return -1;
      }
      im->arch[im->n] = p;
      if (lowest < 0 || arch_cc(p) < arch_cc(im->arch[lowest])) lowest = im->n;
      im->n++;
    }
    p = comma ? comma + 1 : NULL;
  }
  RtError err;
  if (rt_nvrtc_compile(prog->source, symbol, im->arch[lowest], 0, &im->blob[im->n], &err)) {
    diag_error(de, (SrcLoc){0}, "--target=cuda: %s", err.msg);
    images_free(im);
    return -1;
  }
  /* PTX comes back with a NUL the size does not count; the driver gets one
   * again when it loads it (runtime/cuda_driver.c). */
  im->arch[im->n++] = arena_printf(a, "compute_%s", im->arch[lowest] + 3);
  if (!im->arch[im->n - 1]) {
    diag_error(de, (SrcLoc){0}, "out of memory");
    images_free(im);
    return -1;
  }
  return 0;
}

/* ---- the module -------------------------------------------------------------- */

typedef struct Gen {
  Arena *a;
  LLVMContextRef cx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef ptr, i64, i32;
  LLVMValueRef model;
  const char *sym;
} Gen;

static LLVMValueRef private_const(Gen *g, const char *name, LLVMValueRef init, unsigned align) {
  LLVMValueRef v = LLVMAddGlobal(g->mod, LLVMTypeOf(init), name);
  LLVMSetInitializer(v, init);
  LLVMSetGlobalConstant(v, 1);
  LLVMSetLinkage(v, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(v, LLVMGlobalUnnamedAddr);
  if (align) LLVMSetAlignment(v, align);
  return v;
}

static LLVMValueRef bytes(Gen *g, const char *name, const void *data, size_t n) {
  return private_const(g, name, LLVMConstStringInContext(g->cx, data, (unsigned)n, 1), 16);
}

static LLVMValueRef cstring(Gen *g, const char *name, const char *s) {
  return private_const(g, name, LLVMConstStringInContext(g->cx, s, (unsigned)strlen(s), 0), 1);
}

/* An exported entry point: `ret name(pt...)` returning rt(model, pt...). */
static void entry(Gen *g, const char *name, LLVMTypeRef ret, LLVMTypeRef *pt, int np,
                  const char *rt) {
  LLVMTypeRef cpt[12];
  cpt[0] = g->ptr;
  for (int i = 0; i < np; i++) cpt[i + 1] = pt[i];
  LLVMTypeRef cft = LLVMFunctionType(ret, cpt, (unsigned)np + 1, 0);
  LLVMValueRef callee = LLVMGetNamedFunction(g->mod, rt);
  if (!callee) callee = LLVMAddFunction(g->mod, rt, cft);
  LLVMValueRef f = LLVMAddFunction(g->mod, arena_printf(g->a, "%s_%s", g->sym, name),
                                   LLVMFunctionType(ret, pt, (unsigned)np, 0));
  LLVMPositionBuilderAtEnd(g->b, LLVMAppendBasicBlockInContext(g->cx, f, "entry"));
  LLVMValueRef args[12];
  args[0] = g->model;
  for (int i = 0; i < np; i++) args[i + 1] = LLVMGetParam(f, (unsigned)i);
  LLVMValueRef call = LLVMBuildCall2(g->b, cft, callee, args, (unsigned)np + 1, "");
  LLVMSetTailCall(call, 1);
  LLVMBuildRet(g->b, call);
}

static void build_module(Gen *g, const Schedule *s, const RtBlob *plan, const Images *im) {
  const AbiSignature *sig = &s->sig;
  const char *sym = g->sym;
  /* The images: {arch, data, size} in the cubins' order, then the PTX. */
  LLVMTypeRef imt_el[3] = {g->ptr, g->ptr, g->i64};
  LLVMTypeRef imt = LLVMStructTypeInContext(g->cx, imt_el, 3, 0);
  LLVMValueRef rows[MAX_ARCHS + 1];
  for (int i = 0; i < im->n; i++) {
    LLVMValueRef f[3] = {cstring(g, arena_printf(g->a, "%s.cuda.arch.%d", sym, i), im->arch[i]),
                         bytes(g, arena_printf(g->a, "%s.cuda.image.%d", sym, i), im->blob[i].data,
                               im->blob[i].size),
                         LLVMConstInt(g->i64, im->blob[i].size, 0)};
    rows[i] = LLVMConstStructInContext(g->cx, f, 3, 0);
  }
  LLVMValueRef images = private_const(g, arena_printf(g->a, "%s.cuda.images", sym),
                                      LLVMConstArray2(imt, rows, (uint64_t)im->n), 8);
  LLVMValueRef *dv = arena_calloc(g->a, (size_t)sig->ndims + 1, sizeof *dv);
  for (int i = 0; dv && i < sig->ndims; i++)
    dv[i] = LLVMConstInt(g->i64, (unsigned long long)sig->dim_values[i], 1);
  LLVMValueRef dims = private_const(g, arena_printf(g->a, "%s.cuda.dims", sym),
                                    LLVMConstArray2(g->i64, dv, (uint64_t)sig->ndims), 8);
  /* What the first call loads: a pointer of the library's own. */
  LLVMValueRef state = LLVMAddGlobal(g->mod, g->ptr, arena_printf(g->a, "%s.cuda.state", sym));
  LLVMSetInitializer(state, LLVMConstNull(g->ptr));
  LLVMSetLinkage(state, LLVMInternalLinkage);
  /* RtCuAotModel (runtime/rt_cuda.h): nine 8-byte fields. */
  LLVMValueRef mf[9] = {LLVMConstInt(g->i64, RT_CU_AOT_VERSION, 0),
                        cstring(g, arena_printf(g->a, "%s.cuda.symbol", sym), sym),
                        bytes(g, arena_printf(g->a, "%s.cuda.plan", sym), plan->data, plan->size),
                        LLVMConstInt(g->i64, plan->size, 0),
                        images,
                        LLVMConstInt(g->i64, (unsigned long long)im->n, 0),
                        dims,
                        LLVMConstInt(g->i64, (unsigned long long)sig->ndims, 0),
                        state};
  g->model = private_const(g, arena_printf(g->a, "%s.cuda.model", sym),
                           LLVMConstStructInContext(g->cx, mf, 9, 0), 8);

  LLVMTypeRef P = g->ptr, I = g->i64, R = g->i32;
  LLVMTypeRef fwd[8] = {P, I, I, P, P, P, P, P};
  entry(g, "forward", R, fwd, 8, "rt_cu_aot_forward");
  LLVMTypeRef blob[9] = {P, I, I, I, P, P, P, P, P};
  entry(g, "forward_blob", R, blob, 9, "rt_cu_aot_forward_blob");
  if (sig->has_step) {
    LLVMTypeRef step[6] = {P, I, P, P, P, P};
    entry(g, "step", R, step, 6, "rt_cu_aot_step");
  }
  entry(g, "forward_device", R, fwd, 8, "rt_cu_aot_forward_device");
  LLVMTypeRef fwd_stream[9] = {P, P, I, I, P, P, P, P, P};
  entry(g, "forward_device_stream", R, fwd_stream, 9, "rt_cu_aot_forward_device_stream");
  LLVMTypeRef fwd_io[10] = {P, P, R, I, I, P, P, P, P, P};
  entry(g, "forward_device_io", R, fwd_io, 10, "rt_cu_aot_forward_device_io");
  entry(g, "dims", R, &P, 1, "rt_cu_aot_dims");
  entry(g, "last_error", P, NULL, 0, "rt_cu_aot_last_error");
  entry(g, "cuda_plan", P, &P, 1, "rt_cu_aot_plan");
  entry(g, "cuda_device", P, NULL, 0, "rt_cu_aot_device");
}

/* ---- the header -------------------------------------------------------------- */

/* The CPU header (aot.c's writer: the same structs, forward, forward_blob,
 * step and dims), with what the GPU adds inserted before its closing lines. */
static int write_header(Arena *a, const Schedule *s, const Images *im, const char *path,
                        DiagEngine *de) {
  if (cg_write_header(&s->sig, 0, path, de)) return -1;
  static const char tail[] = "#ifdef __cplusplus\n}\n#endif\n#endif\n";
  FILE *f = fopen(path, "rb");
  char *text = NULL;
  long n = -1;
  if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      (text = arena_alloc(a, (size_t)n + 1)) && fread(text, 1, (size_t)n, f) == (size_t)n)
    text[n] = 0;
  else
    n = -1;
  if (f) fclose(f);
  size_t tl = sizeof tail - 1;
  if (n < (long)tl || strcmp(text + n - (long)tl, tail) != 0) {
    diag_error(de, (SrcLoc){0}, "cannot read back %s to add the GPU's entry points", path);
    return -1;
  }
  const char *sym = s->sig.symbol;
  char *up = arena_strdup(a, sym);
  for (char *p = up; p && *p; p++)
    if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
  char archs[400] = "";
  size_t at = 0;
  for (int i = 0; i + 1 < im->n && at + 1 < sizeof archs; i++) {
    int w = snprintf(archs + at, sizeof archs - at, "%s%s", i ? "," : "", im->arch[i]);
    if (w > 0) at += (size_t)w;
  }
  if (!(f = fopen(path, "w"))) {
    diag_error(de, (SrcLoc){0}, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  fwrite(text, 1, (size_t)n - tl, f);
  fprintf(f,
          "/* ---- the GPU (seqc --target=cuda; docs/abi.md) ---- */\n"
          "/* The GPU could not run the call: no CUDA driver, no device, no image in\n"
          " * this library for its architecture, a driver error (out of device memory\n"
          " * is %s_ERR_NOMEM); %s_last_error() says which. */\n"
          "#define %s_ERR_DEVICE 5\n"
          "/* Cubins compiled in (plus the PTX of the lowest, which the driver\n"
          " * compiles for newer GPUs). */\n"
          "#define %s_CUDA_ARCHS \"%s\"\n"
          "/* %s_forward over device memory: every pointer in the structs, and\n"
          " * lengths, is a device address on the library's device (device 0, or\n"
          " * $SEQ_CUDA_DEVICE), e.g. cudaMalloc'd. Returns when the work is done. */\n"
          "int32_t %s_forward_device(const %s_params *params, int64_t B, int64_t T,\n"
          "                          const %s_inputs *in, const int32_t *lengths,\n"
          "                          const %s_states_in *state_in, %s_outputs *out,\n"
          "                          %s_states_out *state_out);\n"
          "/* The same on a CUstream (cast to a pointer; NULL is the default stream):\n"
          " * every copy, fill and kernel of the call is ordered on it, and the call\n"
          " * returns when that stream has done them (it waits for the stream, not\n"
          " * for the device). */\n"
          "int32_t %s_forward_device_stream(const %s_params *params, void *stream,\n"
          "                                 int64_t B, int64_t T, const %s_inputs *in,\n"
          "                                 const int32_t *lengths,\n"
          "                                 const %s_states_in *state_in, %s_outputs *out,\n"
          "                                 %s_states_out *state_out);\n"
          "/* The same with the float inputs and outputs in bfloat16 (io = 1) or\n"
          " * IEEE half (io = 2), two bytes an element (cast their pointers to float *\n"
          " * in the structs); io = 0 is float32. Int inputs, lengths and the states\n"
          " * stay int32 and float32; the kernels compute in float32, the outputs are\n"
          " * rounded to nearest even. */\n"
          "int32_t %s_forward_device_io(const %s_params *params, void *stream, int32_t io,\n"
          "                             int64_t B, int64_t T, const %s_inputs *in,\n"
          "                             const int32_t *lengths,\n"
          "                             const %s_states_in *state_in, %s_outputs *out,\n"
          "                             %s_states_out *state_out);\n"
          "/* The message of this thread's last call into this library that failed\n"
          " * (\"\" after one that succeeded). */\n"
          "const char *%s_last_error(void);\n"
          "/* The device and the image loaded (\"\" before the first call that ran). */\n"
          "const char *%s_cuda_device(void);\n"
          "/* The launch plan embedded (docs/cuda.md); *size its bytes. */\n"
          "const void *%s_cuda_plan(int64_t *size);\n\n",
          up, sym, up, up, archs, sym, sym, sym, sym, sym, sym, sym, sym, sym, sym, sym, sym, sym,
          sym, sym, sym, sym, sym, sym, sym, sym, sym);
  fputs(tail, f);
  if (fclose(f) != 0) {
    diag_error(de, (SrcLoc){0}, "cannot write %s", path);
    return -1;
  }
  return 0;
}

/* ---- the build --------------------------------------------------------------- */

int cg_aot_cuda_build(Arena *a, const Schedule *s, const RtCuProgram *prog, const char *archs,
                      const CgOptions *opt, const char *out_path, const char *header_path,
                      DiagEngine *de) {
  const char *sym = s->sig.symbol;
  /* The plan, read back as the library will read it. */
  RtBlob plan = {0};
  RtCuProgram *back = NULL;
  RtError err;
  int wrc = rt_cu_program_write(prog, &plan);
  if (wrc || rt_cu_program_read(plan.data, plan.size, &back, &err)) {
    diag_internal(de, "cuda", "the CUDA plan of %s does not serialize: %s", s->sig.func,
                  wrc ? "rt_cu_program_write failed" : err.msg);
    rt_blob_free(&plan);
    return -1;
  }
  rt_cu_program_free(back);
  Images im;
  if (compile_images(a, prog, sym, archs, &im, de)) {
    rt_blob_free(&plan);
    return -1;
  }
  for (int i = 0; i < im.n; i++)
    if (im.blob[i].size > 0xffffffffu || plan.size > 0xffffffffu) {
      diag_error(de, (SrcLoc){0}, "%s: an image of %zu bytes is too large to embed", sym,
                 im.blob[i].size);
      images_free(&im);
      rt_blob_free(&plan);
      return -1;
    }

  cg_llvm_init();
  Gen g = {0};
  g.a = a;
  g.sym = sym;
  g.cx = LLVMContextCreate();
  cg_capture_diagnostics(g.cx, de);
  g.mod = LLVMModuleCreateWithNameInContext(sym, g.cx);
  g.b = LLVMCreateBuilderInContext(g.cx);
  g.ptr = LLVMPointerTypeInContext(g.cx, 0);
  g.i64 = LLVMInt64TypeInContext(g.cx);
  g.i32 = LLVMInt32TypeInContext(g.cx);
  build_module(&g, s, &plan, &im);
  LLVMDisposeBuilder(g.b);
  images_free(&im);
  rt_blob_free(&plan);

  /* The host code is a few calls: the architecture's generic CPU unless one
   * is asked for, so the .so runs on any host the GPU sits in. */
  CgOptions host = {opt ? opt->opt_level : 2, "generic", NULL};
  if (opt && opt->cpu && *opt->cpu) host = *opt;
  LLVMTargetMachineRef tm = cg_target_machine(&host, LLVMRelocPIC, de);
  int rc = -1;
  char *obj = arena_printf(a, "%s.%ld.o", out_path, (long)getpid());
  if (tm && obj && cg_optimize(g.mod, tm, host.opt_level, de) == 0 &&
      cg_emit_file(g.mod, tm, LLVMObjectFile, obj, de) == 0) {
    const char *cc = getenv("CC");
    if (!cc || !*cc) cc = "cc";
    char *argv[] = {(char *)cc,
                    "-shared",
                    "-o",
                    (char *)out_path,
                    obj,
                    (char *)cg_aot_runtime_archive(a, "libseqrt_cuda.a", "SEQ_RT_CUDA_LIB",
                                                   SEQ_RT_CUDA_BUILD_ARCHIVE,
                                                   SEQ_RT_CUDA_INSTALL_ARCHIVE),
                    "-Wl,--exclude-libs,ALL",
                    "-Wl,--as-needed",
                    "-ldl",
                    "-lpthread",
                    NULL};
    rc = cg_aot_run_command(argv, de);
    unlink(obj);
  }
  if (tm) LLVMDisposeTargetMachine(tm);
  LLVMDisposeModule(g.mod);
  LLVMContextDispose(g.cx);
  if (rc) return -1;
  const char *h = header_path;
  if (!h) {
    size_t n = strlen(out_path);
    if (n > 3 && strcmp(out_path + n - 3, ".so") == 0)
      h = arena_printf(a, "%.*s.h", (int)(n - 3), out_path);
    else
      h = arena_printf(a, "%s.h", out_path);
  }
  return h ? write_header(a, s, &im, h, de) : -1;
}
