"""ctypes declarations of include/seq.h, and where libseq is found.

libseq is looked up, in order: $SEQC_LIBRARY (a path to libseq.so), the copy
installed in this package (the wheel puts it in seqc/lib/), then the system's
loader path. ctypes.CDLL releases the GIL around every foreign call, so
compiled code runs while other Python threads go on.
"""
import ctypes
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

SEQ_OK, SEQ_ERR_ARG, SEQ_ERR_COMPILE, SEQ_ERR_BIND, SEQ_ERR_IO, SEQ_ERR_NOMEM, SEQ_ERR_RUN, \
    SEQ_ERR_DEVICE = range(8)
STATUS_NAMES = ["ok", "bad argument", "compile error", "bind error", "I/O error", "out of memory",
                "run error", "device error"]
SEQ_PARAM, SEQ_INPUT, SEQ_OUTPUT, SEQ_STATE = range(4)


class SeqDiagnostic(ctypes.Structure):
    _fields_ = [("file", ctypes.c_char_p), ("line", ctypes.c_int), ("col", ctypes.c_int),
                ("severity", ctypes.c_int), ("message", ctypes.c_char_p)]


class SeqOptions(ctypes.Structure):
    _fields_ = [("opt_level", ctypes.c_int), ("entry", ctypes.c_char_p),
                ("dims", ctypes.c_char_p), ("weights_path", ctypes.c_char_p),
                ("target_cpu", ctypes.c_char_p), ("target_features", ctypes.c_char_p),
                ("num_threads", ctypes.c_int), ("strategy", ctypes.c_char_p),
                ("chunk", ctypes.c_int), ("batch", ctypes.c_long),
                ("newton_rtol", ctypes.c_double), ("newton_atol", ctypes.c_double),
                ("newton_max_iter", ctypes.c_int), ("backend", ctypes.c_char_p),
                ("newton_window", ctypes.c_long), ("newton_dense", ctypes.c_int),
                ("newton_warm", ctypes.c_int)]


class SeqTensorInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * 8), ("numel", ctypes.c_int64),
                ("is_int", ctypes.c_int), ("context", ctypes.c_int)]


class SeqNewtonStats(ctypes.Structure):
    _fields_ = [("solves", ctypes.c_int64), ("fallbacks", ctypes.c_int64),
                ("damped", ctypes.c_int64), ("iterations", ctypes.c_int64),
                ("max_iter", ctypes.c_int), ("fallback_steps", ctypes.c_int64),
                ("warm_starts", ctypes.c_int64)]


def _candidates():
    env = os.environ.get("SEQC_LIBRARY")
    if env:
        return [env]
    out = []
    for d in ("lib", "lib64"):
        for n in ("libseq.so.0", "libseq.so"):
            p = os.path.join(_HERE, d, n)
            if os.path.exists(p):
                out.append(p)
    return out + ["libseq.so.0"]


def _load():
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("seqc: cannot load libseq (" + "; ".join(errors) +
                      "); set SEQC_LIBRARY to the path of libseq.so")


lib, path = _load()

P = ctypes.c_void_p
PP = ctypes.POINTER(ctypes.c_void_p)
_sigs = {
    "seq_context_create": (P, []),
    "seq_context_destroy": (None, [P]),
    "seq_module_from_file": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(SeqOptions),
                                            ctypes.POINTER(P)]),
    "seq_module_from_string": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_char_p,
                                              ctypes.POINTER(SeqOptions), ctypes.POINTER(P)]),
    "seq_module_destroy": (None, [P]),
    "seq_module_diag_count": (ctypes.c_int, [P]),
    "seq_module_diag": (ctypes.POINTER(SeqDiagnostic), [P, ctypes.c_int]),
    "seq_module_error": (ctypes.c_char_p, [P]),
    "seq_module_diag_text": (ctypes.c_char_p, [P]),
    "seq_module_report": (ctypes.c_char_p, [P]),
    "seq_module_count": (ctypes.c_int, [P, ctypes.c_int]),
    "seq_module_info": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_int,
                                       ctypes.POINTER(SeqTensorInfo)]),
    "seq_module_dims": (ctypes.c_int, [P, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.POINTER(ctypes.c_int64)]),
    "seq_module_bind_safetensors": (ctypes.c_int, [P, ctypes.c_char_p]),
    "seq_module_bind_weight": (ctypes.c_int, [P, ctypes.c_char_p, P, ctypes.c_int64]),
    "seq_module_prepare": (ctypes.c_int, [P]),
    # Pointer arrays are passed as ctypes arrays of c_void_p (or None).
    "seq_module_forward": (ctypes.c_int, [P, ctypes.c_int64, ctypes.c_int64, P, P, P, P, P]),
    "seq_module_step": (ctypes.c_int, [P, ctypes.c_int64, P, P, P, P]),
    "seq_module_entry": (P, [P, ctypes.c_char_p]),
    "seq_newton_stats": (None, [ctypes.POINTER(SeqNewtonStats), ctypes.c_int]),
}
for _name, (_res, _args) in _sigs.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args

# The run calls again, without argtypes, for the per-call path of Module:
# converting each argument through argtypes costs about 0.5 us a call; the
# caller passes ctypes objects of the exact C types instead (c_void_p handle,
# c_int64 B and T, ctypes arrays of c_void_p or None), which ctypes hands over
# as they are. A second CDLL so that `lib`'s declared functions stay checked.
raw = ctypes.CDLL(path)
for _name in ("seq_module_forward", "seq_module_step"):
    getattr(raw, _name).restype = ctypes.c_int
    getattr(raw, _name).argtypes = None
