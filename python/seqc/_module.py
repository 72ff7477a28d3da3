"""Modules: compiled by the JIT (seqc.compile) or loaded from an AOT shared
object (seqc.load_so); the same calling conventions for both."""
import builtins
import ctypes
import json
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Mapping

import numpy as np

from . import _lib
from ._arrays import (F32, I32, PTR_OFFSET, as_float, as_tokens, is_torch, np_ptr,
                      weight_array)

_VP = ctypes.c_void_p
_ND = np.ndarray
_np_empty = np.empty
_SMALL = tuple(ctypes.c_int64(i) for i in range(1025))


def _i64(v):
    """v as a c_int64 for the argtypes-less calls (shared for small values)."""
    return _SMALL[v] if 0 <= v <= 1024 else ctypes.c_int64(v)


class _NotLoaded:
    """Stands for torch.Tensor until torch is imported."""


_TT = _NotLoaded  # torch.Tensor once torch is loaded
_TDT = {}  # NumPy dtype -> torch dtype
_TF32 = _TI32 = _TEMPTY = _TEMPTY_LIKE = None  # torch's, once loaded (_sync_torch)


def _sync_torch():
    global _TT, _TF32, _TI32, _TEMPTY, _TEMPTY_LIKE
    t = sys.modules.get("torch")
    if t is not None and _TT is _NotLoaded:
        _TDT.update({F32: t.float32, I32: t.int32})
        _TF32, _TI32, _TEMPTY, _TEMPTY_LIKE = t.float32, t.int32, t.empty, t.empty_like
        _TT = t.Tensor
    return t is not None


def _fast(v, dt):
    """(data pointer, shape, is torch) of v when it can be handed over as it
    is: a NumPy array of dtype dt, or a CPU torch tensor of that dtype, C-
    contiguous; else None (the general path converts or raises)."""
    t = type(v)
    if t is _ND:
        if v.dtype is dt and v.flags.c_contiguous:
            return np_ptr(v), v.shape, False
    elif t is _TT:
        if v.dtype is _TDT[dt] and v.is_cpu and v.is_contiguous():
            return v.data_ptr(), v.shape, True
    elif _TT is _NotLoaded and _sync_torch():
        return _fast(v, dt)
    return None


def _make_quick(m, nlead):
    """The common call of m.forward (nlead 2) or m.step (nlead 1), written
    out for this module's inputs, states and outputs (no loops, no
    reference to m) and compiled with exec, as collections.namedtuple does:
    one input x, a NumPy array or CPU torch tensor of the input's dtype, C-
    contiguous, [B, T, ...] or [B, ...]; state None or a dict of every state,
    arrays of x's kind, float32, contiguous, [B, ...]; new outputs, or out=
    and state_out= arrays of x's kind to write into. quick(x, state,
    want_state, out, state_out) returns (y, states or None), the status (an
    int) when the call failed, or None when anything differs (the general
    path then converts or raises). None for modules with several inputs or
    without that call, and where NumPy's data pointer is not read directly.
    A NumPy step at B = 1 spends about 3.5 us here beyond C's own call, 5.2
    with the same checks in loops (BENCHMARKS.md, 2026-12-05)."""
    c = m._fwd_c if nlead == 2 else m._step_c
    if m._in0 is None or c is None or PTR_OFFSET is None:
        return None
    in_dt, _, in_rank, in_tail = m._in0
    names = m._st_names
    nst, nout = len(names), m._nout
    lead = ("B",) if nlead == 1 else ("B", "T")
    oshapes = [lead + tuple(s.shape) for s in m.outputs]
    sshapes = [("B",) + tuple(s.shape) for s in m.states]

    def tup(sh):  # a shape as source: "(B, 64)"
        return "(" + ", ".join(str(d) for d in sh) + ("," if len(sh) == 1 else "") + ")"

    def numel(sh):  # its bytes as source: "4 * B * 64"
        return " * ".join(["4"] + [str(d) for d in sh])

    t_in = "_TF32" if in_dt is F32 else "_TI32"
    L = []

    def emit(depth, line):
        L.append("    " * depth + line)

    def check(depth, v, shape, write):
        # v is an array of x's kind, float32, contiguous, of this shape (and
        # writable when written): else the general path.
        emit(depth, "if tx is ND:")
        emit(depth + 1, f"if type({v}) is not ND or {v}.dtype is not f32 or "
             f"not {v}.flags.c_contiguous or {v}.shape != {tup(shape)}"
             + (f" or not {v}.flags.writeable" if write else "") + ":")
        emit(depth + 2, "return None")
        emit(depth + 1, f"p_{v} = rd(id({v}) + off).value")
        emit(depth, "else:")
        emit(depth + 1, f"if type({v}) is not tx or {v}.dtype is not _TF32 or not {v}.is_cpu or "
             f"not {v}.is_contiguous() or {v}.shape != {tup(shape)}"
             + (f" or {v}.requires_grad" if write else "") + ":")
        emit(depth + 2, "return None")
        emit(depth + 1, f"p_{v} = {v}.data_ptr()")

    def state_dict(depth, d, prefix, write):
        emit(depth, f"if type({d}) is not dict or len({d}) != {nst}:")
        emit(depth + 1, "return None")
        for i, n in enumerate(names):
            emit(depth, f"{prefix}{i} = {d}.get({n!r})")
            check(depth, f"{prefix}{i}", sshapes[i], write)

    emit(0, "def quick(x, state, want_state, out=None, state_out=None):")
    emit(1, "tx = type(x)")
    emit(1, "if tx is ND:")
    emit(2, "if x.dtype is not in_dt or not x.flags.c_contiguous:")
    emit(3, "return None")
    emit(2, "p_x = rd(id(x) + off).value")
    emit(1, "elif tx is _TT:")
    emit(2, f"if x.dtype is not {t_in} or not x.is_cpu or not x.is_contiguous():")
    emit(3, "return None")
    emit(2, "p_x = x.data_ptr()")
    emit(1, "else:")
    emit(2, "return None")
    emit(1, "s = x.shape")
    emit(1, f"if len(s) != {nlead + in_rank} or s[{nlead}:] != {tup(in_tail)}:")
    emit(2, "return None")
    emit(1, "B = s[0]" if nlead == 1 else "B = s[0]; T = s[1]")
    if nst:
        emit(1, "if state is not None:")
        state_dict(2, "state", "i", False)
    else:
        emit(1, "if state is not None and (type(state) is not dict or state):")
        emit(2, "return None")
    # The caller's arrays: out (one output, or a tuple in order) and
    # state_out (a dict of every state, which may be `state` itself).
    emit(1, "if out is not None or state_out is not None:")
    emit(2, "if out is None:")
    emit(3, "return None")
    if nout == 1:
        emit(2, "if type(out) is tuple:")
        emit(3, "if len(out) != 1:")
        emit(4, "return None")
        emit(3, "o0 = out[0]")
        emit(2, "else:")
        emit(3, "o0 = out")
    else:
        emit(2, f"if type(out) is not tuple or len(out) != {nout}:")
        emit(3, "return None")
        emit(2, ", ".join(f"o{i}" for i in range(nout)) + ", = out")
    for i in range(nout):
        check(2, f"o{i}", oshapes[i], True)
    emit(2, "if want_state or state_out is not None:")
    if nst:
        # state_out=state (updated in place): its arrays were checked above;
        # only whether they can be written is left.
        emit(3, "if state_out is state and state is not None:")
        emit(4, "if tx is ND:")
        emit(5, "if " + " or ".join(f"not i{i}.flags.writeable" for i in range(nst)) + ":")
        emit(6, "return None")
        emit(4, "elif " + " or ".join(f"i{i}.requires_grad" for i in range(nst)) + ":")
        emit(5, "return None")
        for i in range(nst):
            emit(4, f"p_n{i} = p_i{i}")
        emit(3, "else:")
        state_dict(4, "state_out", "n", True)
    else:
        emit(3, "if type(state_out) is not dict or state_out:")
        emit(4, "return None")
    emit(2, "res = (out, state_out)")
    emit(1, "else:")
    emit(2, "res = None")
    # New outputs: NumPy's in one block where they have one shape (rows of
    # it handed out), torch's one by one (torch.empty(*shape), and
    # empty_like of a state given, parse fastest).
    emit(2, "if tx is ND:")

    def np_new(depth, vs, shapes):
        if len(vs) == 1:
            emit(depth, f"{vs[0]} = empty({tup(shapes[0])}, f32)")
            emit(depth, f"p_{vs[0]} = rd(id({vs[0]}) + off).value")
        elif all(sh == shapes[0] for sh in shapes):
            emit(depth, f"b = empty({tup((len(vs),) + shapes[0])}, f32)")
            emit(depth, "p = rd(id(b) + off).value")
            emit(depth, f"n = {numel(shapes[0])}")
            for i, v in enumerate(vs):
                emit(depth, f"{v} = b[{i}]")
                emit(depth, f"p_{v} = p" + (f" + {i} * n" if i else ""))
        else:
            for v, sh in zip(vs, shapes):
                np_new(depth, [v], [sh])

    ovs = [f"o{i}" for i in range(nout)]
    svs = [f"n{i}" for i in range(nst)]
    if nst:
        emit(3, "if want_state:")
        if all(sh == oshapes[0] for sh in oshapes + sshapes):
            np_new(4, ovs + svs, oshapes + sshapes)
        else:
            np_new(4, ovs, oshapes)
            np_new(4, svs, sshapes)
        emit(3, "else:")
        np_new(4, ovs, oshapes)
    else:
        np_new(3, ovs, oshapes)
    emit(2, "else:")
    for i in range(nout):
        emit(3, f"o{i} = _TEMPTY(" + ", ".join(str(d) for d in oshapes[i]) + ")")
        emit(3, f"p_o{i} = o{i}.data_ptr()")
    if nst:
        emit(3, "if want_state:")
        emit(4, "if state is not None:")
        for i in range(nst):
            emit(5, f"n{i} = _TEMPTY_LIKE(i{i})")
        emit(4, "else:")
        for i in range(nst):
            emit(5, f"n{i} = _TEMPTY(" + ", ".join(str(d) for d in sshapes[i]) + ")")
        for i in range(nst):
            emit(4, f"p_n{i} = n{i}.data_ptr()")
    # The pointer arrays: a set per call in flight (another thread may run
    # this module while the call has released the GIL).
    emit(1, "try:")
    emit(2, "a = free.pop()")
    emit(1, "except IndexError:")
    emit(2, "a = (in_arr(), st_arr(), out_arr(), st_arr())")
    emit(1, "ins, sin, optr, sout = a")
    emit(1, "ins[0] = p_x")
    if nst:
        emit(1, "if state is None:")
        emit(2, "sin = None")
        emit(1, "else:")
        for i in range(nst):
            emit(2, f"sin[{i}] = p_i{i}")
    else:
        emit(1, "sin = None")
    for i in range(nout):
        emit(1, f"optr[{i}] = p_o{i}")
    if nst:
        emit(1, "if want_state or res is not None and state_out is not None:")
        for i in range(nst):
            emit(2, f"sout[{i}] = p_n{i}")
        emit(1, "else:")
        emit(2, "sout = None")
    else:
        emit(1, "sout = None")
    bv = "SMALL[B] if B <= 1024 else c_int64(B)"
    if nlead == 1:
        emit(1, f"st = c(first, {bv}, ins, sin, optr, sout)")
    else:
        emit(1, f"st = c(first, {bv}, SMALL[T] if T <= 1024 else c_int64(T), ins, None, sin, "
             "optr, sout)")
    emit(1, "free.append(a)")
    emit(1, "if st:")
    emit(2, "return st")
    emit(1, "if res is not None:")
    emit(2, "return res")
    y = "o0" if nout == 1 else "(" + ", ".join(ovs) + ")"
    if nst:
        d = "{" + ", ".join(f"{n!r}: n{i}" for i, n in enumerate(names)) + "}"
        emit(1, f"return ({y}, {d} if want_state else None)")
    else:
        emit(1, f"return ({y}, {{}} if want_state else None)")
    env = {"ND": _ND, "f32": F32, "in_dt": in_dt, "rd": ctypes.c_void_p.from_address,
           "off": PTR_OFFSET, "empty": _np_empty, "free": m._free, "in_arr": m._in_arr,
           "st_arr": m._st_arr, "out_arr": m._out_arr, "c": c, "first": m._first,
           "SMALL": _SMALL, "c_int64": ctypes.c_int64}
    # quick's own values are a closure; torch's names (_TT, _TF32, ...) are
    # this module's globals, set once torch is loaded.
    src = "def build(" + ", ".join(env) + "):\n" + "".join("    " + ln + "\n" for ln in L) + \
        "    return quick\n"
    loc = {}
    exec(builtins.compile(src, f"<seqc quick {'forward' if nlead == 2 else 'step'}>", "exec"), globals(), loc)
    return loc["build"](*env.values())


def _describe(v):
    if isinstance(v, np.ndarray) or is_torch(v):
        return f"{type(v).__name__} {list(v.shape)} {v.dtype}"
    return type(v).__name__


class SeqError(RuntimeError):
    """A failure reported by libseq or a compiled model (message as given)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class CompileError(SeqError):
    """The source did not compile. str(e) is every diagnostic as the seqc
    command line prints them (file:line:col: error: message, the source line
    and a caret); e.diagnostics lists them as Diagnostic tuples."""

    def __init__(self, message, status=None, diagnostics=()):
        super().__init__(message, status)
        self.diagnostics = list(diagnostics)


class WeightError(SeqError, ValueError):
    """A weight is missing, unexpected, or of the wrong shape (named)."""


class RunError(SeqError, ValueError):
    """The compiled code refused a call (bad lengths, a token out of range)."""


class Diagnostic(tuple):
    """(file, line, col, severity, message); file None without a location."""
    __slots__ = ()

    def __new__(cls, file, line, col, severity, message):
        return tuple.__new__(cls, (file, line, col, severity, message))

    file = property(lambda s: s[0])
    line = property(lambda s: s[1])
    col = property(lambda s: s[2])
    severity = property(lambda s: s[3])
    message = property(lambda s: s[4])


class TensorSpec(tuple):
    """(name, shape, is_int): a parameter's full shape; an input's, output's
    or state's per-example shape (without the batch and time axes)."""
    __slots__ = ()

    def __new__(cls, name, shape, is_int=False):
        return tuple.__new__(cls, (name, tuple(shape), bool(is_int)))

    name = property(lambda s: s[0])
    shape = property(lambda s: s[1])
    is_int = property(lambda s: s[2])
    context = False  # a context input: given once per sequence, [B, *shape]

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


class ContextSpec(TensorSpec):
    """A context input's TensorSpec: one value per sequence, [B, *shape]
    (no time axis), read by every step."""
    __slots__ = ()
    context = True


_context = None
_context_lock = threading.Lock()


def _cx():
    global _context
    with _context_lock:
        if _context is None:
            _context = _lib.lib.seq_context_create()
            if not _context:
                raise MemoryError("seqc: seq_context_create failed")
        return _context


def _b(s):
    return None if s is None else str(s).encode()


def _dims_text(dims):
    if dims is None:
        return None
    if isinstance(dims, str):
        return dims
    return ",".join(f"{k}={int(v)}" for k, v in dims.items())


def _looks_like_source(s):
    return "\n" in s or "{" in s


def write_safetensors(path, tensors):
    """A float32 safetensors file of {name: array} (for the dims of a state
    dict given to compile)."""
    header, blobs, off = {}, [], 0
    for name, v in tensors.items():
        a, _, shape = weight_array(v, name)
        data = np.asarray(a.numpy() if is_torch(a) else a).tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for d in blobs:
            f.write(d)


def newton_stats(reset=False):
    """What the Newton solves of every forward in this process did since the
    last reset (include/seq.h SeqNewtonStats) as a dict: solves, fallbacks
    (solves that ran as the step loop after all), fallback_steps, damped,
    iterations, max_iter, warm_starts. reset=True zeroes the counts after
    reading them."""
    st = _lib.SeqNewtonStats()
    _lib.lib.seq_newton_stats(ctypes.byref(st), 1 if reset else 0)
    return {name: getattr(st, name) for name, _ in st._fields_}


def compile(path_or_source, dims=None, strategy=None, threads=None, *, weights=None,
            opt_level=2, entry=None, chunk=None, batch=None, backend=None, target_cpu=None,
            target_features=None, newton_rtol=None, newton_atol=None, newton_max_iter=None,
            newton_window=None, newton_dense=False, newton_warm=False, name="<string>"):
    """Compiles a .seq file (a path) or source text (a str with a newline or a
    brace) into a Module. dims: {"I": 32, "H": 64} or "I=32,H=64"; weights: a
    safetensors path or a state dict, which also fix the dims they imply;
    strategy and the rest as SeqOptions in include/seq.h. Raises CompileError."""
    opt = _lib.SeqOptions()
    opt.opt_level = int(opt_level)
    opt.entry = _b(entry)
    opt.dims = _b(_dims_text(dims))
    opt.num_threads = int(threads or 0)
    opt.strategy = _b(strategy)
    opt.chunk = int(chunk or 0)
    opt.batch = int(batch or 0)
    opt.backend = _b(backend)
    opt.target_cpu = _b(target_cpu)
    opt.target_features = _b(target_features)
    opt.newton_rtol = float(newton_rtol or 0)
    opt.newton_atol = float(newton_atol or 0)
    opt.newton_max_iter = int(newton_max_iter or 0)
    opt.newton_window = int(newton_window or 0)
    opt.newton_dense = 1 if newton_dense else 0
    opt.newton_warm = 1 if newton_warm else 0
    tmp = None
    state_dict = None
    if weights is not None:
        if isinstance(weights, Mapping):
            # The C API infers dims from a safetensors file: a temporary one.
            state_dict = weights
            fd, tmp = tempfile.mkstemp(suffix=".safetensors")
            os.close(fd)
            write_safetensors(tmp, weights)
            opt.weights_path = tmp.encode()
        else:
            opt.weights_path = os.fsencode(weights)
    h = _VP()
    try:
        if isinstance(path_or_source, os.PathLike) or (
                isinstance(path_or_source, str) and not _looks_like_source(path_or_source)):
            st = _lib.lib.seq_module_from_file(_cx(), os.fsencode(path_or_source),
                                               ctypes.byref(opt), ctypes.byref(h))
        else:
            st = _lib.lib.seq_module_from_string(_cx(), _b(name), _b(path_or_source),
                                                 ctypes.byref(opt), ctypes.byref(h))
    finally:
        if tmp:
            os.unlink(tmp)
    if st != _lib.SEQ_OK:
        _raise_compile(h.value, st)
    m = Module._from_jit(h.value)
    if state_dict is not None:
        m.load_weights(state_dict)
    return m


def _raise_compile(h, st):
    if not h:
        raise MemoryError("seqc: out of memory compiling")
    try:
        lib = _lib.lib
        diags = []
        for i in range(lib.seq_module_diag_count(h)):
            d = lib.seq_module_diag(h, i).contents
            diags.append(Diagnostic(d.file.decode() if d.file else None, d.line, d.col,
                                    ("error", "warning", "note")[d.severity],
                                    d.message.decode()))
        text = (lib.seq_module_diag_text(h) or b"").decode().rstrip("\n")
        if not text:
            text = (lib.seq_module_error(h) or b"").decode()
    finally:
        _lib.lib.seq_module_destroy(h)
    raise CompileError(text, st, diags)


_HEADER_FIELD = re.compile(r"^\s*(?:const )?(float|int32_t) \*(\w+); /\* \[([^\]]*)\] \*/")


def _parse_header(text):
    """The structs of a header generated by seqc -o (docs/abi.md)."""
    m = re.search(r"int32_t (\w+)_forward\(", text)
    if not m:
        raise SeqError("not a header generated by seqc (no SYM_forward)")
    sym = m.group(1)
    out = {}
    for kind in ("params", "inputs", "outputs", "states_in"):
        body = re.search(r"typedef struct %s_%s \{\n(.*?)\n\} " % (sym, kind), text, re.S)
        specs = []
        if body:
            for line in body.group(1).splitlines():
                f = _HEADER_FIELD.match(line)
                if not f:
                    continue
                dims = [d.strip() for d in f.group(3).split(",") if d.strip()]
                spec = TensorSpec
                if kind == "inputs" and dims[1:2] != ["T"]:
                    dims, spec = dims[1:], ContextSpec  # B: a context
                elif kind in ("inputs", "outputs"):
                    dims = dims[2:]  # B, T
                elif kind == "states_in":
                    dims = dims[1:]  # B
                specs.append(spec(f.group(2), [int(d) for d in dims], f.group(1) == "int32_t"))
        out[kind] = specs
    # The dims, in SYM_dims' order: "#define SYM_DIM_NAME 4LL" (codegen/aot.c).
    out["dim_names"] = re.findall(r"^#define %s_DIM_(\w+) -?\d+LL$" % re.escape(sym.upper()),
                                  text, re.M)
    return sym, out


def load_so(path, header=None):
    """Loads a shared object made by `seqc FILE.seq -o libX.so`. Its header
    (libX.h beside it, or `header`) gives the names and shapes. Names are the
    header's C names (`l0.h` is `l0_h`); load_weights matches a state dict's
    keys after the same replacement."""
    path = os.fspath(path)
    if header is None:
        header = os.path.splitext(path)[0] + ".h"
    with open(header) as f:
        sym, specs = _parse_header(f.read())
    so = ctypes.CDLL(os.path.abspath(path))
    return Module._from_so(so, sym, specs, path)


_STATUS_ABI = {1: "bad argument (negative B or T, a NULL buffer)", 2: "out of memory",
               3: "a token index is out of range", 4: "a sequence length is outside [0, T]"}


class Module:
    """A compiled model. Call it on a batch: y = m(x), or
    y, state = m(x, lengths=..., state=..., return_state=True); one token at a
    time: y_t, state = m.step(x_t, state). Inputs: NumPy arrays or CPU torch
    tensors, [B, T, ...] (step: [B, ...]); outputs of the same kind."""

    def __init__(self):
        raise TypeError("use seqc.compile or seqc.load_so")

    # ---- construction ---------------------------------------------------------
    @classmethod
    def _new(cls):
        self = object.__new__(cls)
        self._h = None
        self._so = None
        self._weights = {}
        return self

    @classmethod
    def _from_jit(cls, h):
        self = cls._new()
        self._h = h
        lib = _lib.lib

        def specs(kind):
            out = []
            ti = _lib.SeqTensorInfo()
            for i in range(lib.seq_module_count(h, kind)):
                lib.seq_module_info(h, kind, i, ctypes.byref(ti))
                spec = ContextSpec if ti.context else TensorSpec
                out.append(spec(ti.name.decode(), list(ti.shape[:ti.ndim]), ti.is_int))
            return out

        self.params = specs(_lib.SEQ_PARAM)
        self.inputs = specs(_lib.SEQ_INPUT)
        self.outputs = specs(_lib.SEQ_OUTPUT)
        self.states = specs(_lib.SEQ_STATE)
        n = lib.seq_module_dims(h, None, None)
        names = (ctypes.c_char_p * max(n, 1))()
        values = (ctypes.c_int64 * max(n, 1))()
        lib.seq_module_dims(h, names, values)
        self.dims = {names[i].decode(): values[i] for i in range(n)}
        self.has_step = bool(lib.seq_module_entry(h, b"step"))
        err = lib.seq_module_error
        # The run calls: `_lib.raw`'s, without argtypes (see there); the first
        # argument, the module handle, made once.
        self._first = _VP(h)
        self._fwd_c = _lib.raw.seq_module_forward
        self._step_c = _lib.raw.seq_module_step if self.has_step else None
        self._message = lambda st: (err(h) or b"").decode()
        self._setup()
        return self

    @classmethod
    def _from_so(cls, so, sym, specs, path):
        self = cls._new()
        self._so = so
        self.params = specs["params"]
        self.inputs = specs["inputs"]
        self.outputs = specs["outputs"]
        self.states = specs["states_in"]
        dims_fn = getattr(so, sym + "_dims")
        dims_fn.restype = ctypes.c_int32
        n = dims_fn(None)
        vals = (ctypes.c_int64 * max(n, 1))()
        dims_fn(vals)
        names = specs["dim_names"]
        if len(names) != n:
            raise SeqError(f"{path}: the header names {len(names)} dims, {sym}_dims returns {n}")
        self.dims = dict(zip(names, vals[:n]))
        self._pbuf = (_VP * max(len(self.params), 1))()
        self._first = self._pbuf
        # Without argtypes, as _lib.raw's calls: the caller passes exact C types.
        fwd = getattr(so, sym + "_forward")
        fwd.restype = ctypes.c_int32
        fwd.argtypes = None
        self._fwd_c = fwd
        try:
            stp = getattr(so, sym + "_step")
        except AttributeError:
            stp = None
        self.has_step = stp is not None
        if stp is not None:
            stp.restype = ctypes.c_int32
            stp.argtypes = None
        self._step_c = stp
        self._message = lambda st: _STATUS_ABI.get(st, f"status {st}")
        self._sym = sym
        self._plain = (fwd, stp)  # the calls without prepared weights
        self._setup()
        return self

    def _setup(self):
        self._in_index = {s.name: i for i, s in enumerate(self.inputs)}
        self._st_index = {s.name: i for i, s in enumerate(self.states)}
        self._st_names = tuple(s.name for s in self.states)
        self._nin = len(self.inputs)
        self._nout = len(self.outputs)
        self._nst = len(self.states)
        self._in_arr = _VP * max(self._nin, 1)
        self._out_arr = _VP * max(self._nout, 1)
        self._st_arr = _VP * max(self._nst, 1)
        # The one-input fast path: the input's dtype (NumPy's, torch's once
        # torch is loaded), rank with the batch axis and per-example shape.
        if self._nin == 1 and not self.inputs[0].context:
            s0 = self.inputs[0]
            self._in0 = (I32 if s0.is_int else F32, s0.is_int, len(s0.shape), s0.shape)
        else:
            self._in0 = None
        self._shapes = {}
        self._free = []  # pointer arrays of finished calls, for the next (list ops are atomic)
        self._bound = self._h is not None  # a JIT module checks its own bindings
        self._qfwd = _make_quick(self, 2)
        self._qstep = _make_quick(self, 1)

    def _shapes_of(self, B, T):
        """The full shapes of the outputs and states for B (and T; None: a step)."""
        key = (B,) if T is None else (B, T)
        sh = self._shapes.get(key)
        if sh is None:
            lead = (B,) if T is None else (B, T)
            sh = (lead + self.inputs[0].shape if self._nin == 1 else None,
                  tuple(lead + s.shape for s in self.outputs),
                  tuple((B,) + s.shape for s in self.states))
            if len(self._shapes) > 64:
                self._shapes.clear()
            self._shapes[key] = sh
        return sh

    def _arrays(self):
        """Four pointer arrays (inputs, states in, outputs, states out) of a
        call: a finished call's, or new ones. Each call holds its own, so
        threads (and a call from a finalizer) never share them."""
        try:
            return self._free.pop()
        except IndexError:
            return (self._in_arr(), self._st_arr(), self._out_arr(), self._st_arr())

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h and _lib is not None and _lib.lib is not None:
            _lib.lib.seq_module_destroy(h)

    def __repr__(self):
        kind = "jit" if self._h else "so"
        return (f"<seqc.Module ({kind}) inputs={[tuple(s) for s in self.inputs]} "
                f"outputs={[tuple(s) for s in self.outputs]} states={list(self._st_names)}>")

    # ---- weights --------------------------------------------------------------
    def load_weights(self, weights, strict=True):
        """Binds every parameter: from a safetensors path (read and copied), or
        a mapping of names to NumPy arrays or torch tensors such as an
        nn.Module's state_dict(). float32 contiguous CPU arrays are used in
        place (the module keeps a reference; later in-place changes are seen),
        others copied. A one-cell model also takes `NAME_l0` for NAME (a
        one-layer PyTorch state dict). Raises WeightError naming a missing,
        unexpected (strict) or misshapen weight; nothing is bound then."""
        if not isinstance(weights, Mapping):
            if self._h is None:
                raise SeqError("load_weights(path) needs a JIT module; pass a state dict")
            st = _lib.lib.seq_module_bind_safetensors(self._h, os.fsencode(weights))
            if st != _lib.SEQ_OK:
                raise WeightError(self._message(st), st)
            self._weights = {}
            return self
        keys = {self._key(k): k for k in weights}
        chosen, used = {}, set()
        for p in self.params:
            k = keys.get(p.name)
            if k is None and len(self.inputs) >= 0:
                k = keys.get(p.name + "_l0") if self._one_cell() else None
            if k is None:
                raise WeightError(f"missing weight {p.name} (shape {list(p.shape)})")
            arr, ptr, shape = weight_array(weights[k], k)
            if tuple(shape) != p.shape:
                raise WeightError(f"weight {k} has shape {list(shape)}, the model's "
                                  f"{p.name} is {list(p.shape)}")
            chosen[p.name] = (arr, ptr)
            used.add(k)
        extra = [k for k in weights if k not in used]
        if strict and extra:
            raise WeightError("unexpected weights: " + ", ".join(map(str, extra)) +
                              " (load_weights(..., strict=False) ignores them)")
        for i, p in enumerate(self.params):
            arr, ptr = chosen[p.name]
            if self._h:
                st = _lib.lib.seq_module_bind_weight(self._h, p.name.encode(), ptr, p.numel)
                if st != _lib.SEQ_OK:
                    raise WeightError(self._message(st), st)
            else:
                self._pbuf[i] = ptr
        self._weights = {n: a for n, (a, _) in chosen.items()}
        self._bound = True
        self._unprepare()
        return self

    def prepare(self):
        """Packs the bound weights once (a copy of about their size, which the
        module owns): later calls read it instead of packing the weights at
        every call, which makes token-by-token steps and short forwards
        faster. A snapshot: in-place changes to the weights are seen again
        after prepare() or load_weights(). Like load_weights, not to run
        while another thread calls the module."""
        self._check_bound()
        if self._h is not None:
            st = _lib.lib.seq_module_prepare(self._h)
            if st != _lib.SEQ_OK:
                raise WeightError(self._message(st), st)
            return self
        so, sym = self._so, self._sym
        floats = getattr(so, sym + "_prepared_floats")
        floats.restype = ctypes.c_int64
        prep = getattr(so, sym + "_prepare")
        prep.restype = ctypes.c_int32
        block = np.empty(max(int(floats()), 1), dtype=np.float32)
        bp = _VP(block.ctypes.data)
        st = prep(self._pbuf, bp)
        if st:
            self._fail(st)
        fwd, stp = (getattr(so, sym + "_forward_prepared"),
                    getattr(so, sym + "_step_prepared") if self._plain[1] else None)
        for f in (fwd, stp):
            if f is not None:
                f.restype = ctypes.c_int32
                f.argtypes = None
        self._prepared = block
        self._fwd_c = lambda p, *a: fwd(p, bp, *a)
        self._step_c = (lambda p, *a: stp(p, bp, *a)) if stp else None
        self._qfwd = _make_quick(self, 2)
        self._qstep = _make_quick(self, 1)
        return self

    def _unprepare(self):
        # Binding again drops the packed copy (the C API does so itself).
        if self._so is not None and getattr(self, "_prepared", None) is not None:
            self._prepared = None
            self._fwd_c, self._step_c = self._plain
            self._qfwd = _make_quick(self, 2)
            self._qstep = _make_quick(self, 1)

    def _key(self, k):
        # An AOT module's names are C names: match the same replacement.
        return k if self._h else re.sub(r"[^A-Za-z0-9_]", "_", str(k))

    def _one_cell(self):
        if self._h:
            return not any("." in s.name for s in self.states) and \
                not any("." in p.name for p in self.params)
        return True

    def _check_bound(self):
        if not self._bound:
            raise WeightError("weights are not bound: call load_weights first")

    # ---- running ---------------------------------------------------------------
    # A call costs a few microseconds of Python around the compiled code
    # (docs/python.md, Overhead): the common case (one input, a NumPy array or
    # torch tensor that is float32/int32, contiguous and of the right shape;
    # states a dict of such) is checked with attribute reads and handed over
    # as pointers; anything else takes the general path below, which converts
    # (copies) or raises naming the tensor.
    def _collect_inputs(self, xs, kw):
        if len(xs) == 1 and isinstance(xs[0], Mapping):
            kw = dict(xs[0], **kw)
            xs = ()
        if len(xs) + len(kw) != len(self.inputs):
            raise TypeError(f"the model takes {len(self.inputs)} input(s) "
                            f"({', '.join(s.name for s in self.inputs)}), got {len(xs) + len(kw)}")
        vals = list(xs) + [None] * (len(self.inputs) - len(xs))
        for k, v in kw.items():
            if k not in self._in_index:
                raise TypeError(f"the model has no input named {k}")
            if vals[self._in_index[k]] is not None:
                raise TypeError(f"input {k} given twice")
            vals[self._in_index[k]] = v
        return vals

    def _prepare(self, vals, lead):
        """Buffers of the inputs, checked against [*lead, *shape]; lead is
        (B, T) or (B,) with None where the first input fixes it."""
        bufs = []
        lead = list(lead)
        for spec, v in zip(self.inputs, vals):
            what = f"{'context' if spec.context else 'input'} {spec.name}"
            b = as_tokens(v, what) if spec.is_int else as_float(v, what)
            nl = 1 if spec.context else len(lead)  # a context: [B, ...]
            if len(b.shape) != nl + len(spec.shape) or tuple(b.shape[nl:]) != spec.shape:
                axes = "[B, T" if nl == 2 else "[B"
                want = axes + "".join(f", {d}" for d in spec.shape) + "]"
                raise ValueError(f"{what}: shape {list(b.shape)}, expected {want}")
            for i in range(nl):
                if lead[i] is None:
                    lead[i] = b.shape[i]
                elif lead[i] != b.shape[i]:
                    raise ValueError(f"{what}: shape {list(b.shape)}, but the other inputs "
                                     f"have {'BT'[i]} = {lead[i]}")
            bufs.append(b)
        return bufs, lead

    def _inputs(self, xs, kw, ins, nlead):
        """Fills ins with the input pointers; returns (lead dims, whether the
        first input is a torch tensor, what keeps copies alive)."""
        f = self._in0
        if f is not None and not kw and len(xs) == 1:
            x = xs[0]
            r = _fast(x, f[0])
            if r is not None:
                shp = r[1]
                if len(shp) == nlead + f[2] and shp[nlead:] == f[3]:
                    ins[0] = r[0]
                    return shp[:nlead], r[2], None
        bufs, lead = self._prepare(self._collect_inputs(xs, kw), (None,) * nlead)
        for i, b in enumerate(bufs):
            ins[i] = b.ptr
        return tuple(lead), (is_torch(bufs[0].obj) if bufs else False), bufs

    def _states_in(self, state, B, sin, what="state"):
        """Fills sin from state (None, a dict by name, or a sequence in order);
        returns sin or None, and what keeps copies alive."""
        if state is None:
            return None, None
        n = self._nst
        if type(state) is dict and len(state) == n:
            # All states given, each float32, contiguous, [B, ...]: pointers.
            i = 0
            for name, s in zip(self._st_names, self.states):
                v = state.get(name)
                r = _fast(v, F32)
                if r is None or r[1][:1] != (B,) or r[1][1:] != s.shape:
                    break
                sin[i] = r[0]
                i += 1
            else:
                return sin, None
        if isinstance(state, Mapping):
            items = state.items()
        else:
            state = tuple(state)
            if len(state) != n:
                raise ValueError(f"{what}: {len(state)} values, the model has "
                                 f"{n} states ({', '.join(self._st_names)})")
            items = zip(self._st_names, state)
        for i in range(n):
            sin[i] = None
        keep = []
        for name, v in items:
            if v is None:
                continue
            i = self._st_index.get(name)
            if i is None:
                raise ValueError(f"{what}: the model has no state named {name} "
                                 f"(states: {', '.join(self._st_names)})")
            spec = self.states[i]
            b = as_float(v, f"state {name}")
            if tuple(b.shape) != (B, *spec.shape):
                raise ValueError(f"state {name}: shape {list(b.shape)}, expected "
                                 f"{[B, *spec.shape]}")
            sin[i] = b.ptr
            keep.append(b)
        return sin, keep

    def _outs(self, out, shapes, arr, torch_out, what):
        """Fills arr with new output buffers of these shapes (tensors when
        torch_out), or with the caller's `out` arrays, checked; returns them."""
        if out is None:
            res = []
            if torch_out:
                new = sys.modules["torch"].empty
                for i, shape in enumerate(shapes):
                    t = new(shape)
                    arr[i] = t.data_ptr()
                    res.append(t)
            else:
                for i, shape in enumerate(shapes):
                    a = _np_empty(shape, F32)
                    arr[i] = np_ptr(a)
                    res.append(a)
            return res
        names = self._st_names if what == "state_out" else [s.name for s in self.outputs]
        if what == "state_out" and isinstance(out, Mapping):
            missing = [n for n in names if n not in out]
            if missing or len(out) != len(names):
                raise ValueError(f"state_out: a dict of every state ({', '.join(names)})")
            vals = [out[n] for n in names]
        elif isinstance(out, (tuple, list)):
            vals = list(out)
        elif len(names) == 1:
            vals = [out]
        else:
            raise TypeError(f"{what}: a tuple of {len(names)} arrays ({', '.join(names)})")
        if len(vals) != len(names):
            raise ValueError(f"{what}: {len(vals)} arrays, the model has {len(names)} "
                             f"({', '.join(names)})")
        for i, (name, v, shape) in enumerate(zip(names, vals, shapes)):
            r = _fast(v, F32)
            if r is None or tuple(r[1]) != shape or (type(v) is not _ND and is_torch(v) and
                                                     v.requires_grad) or \
                    (type(v) is _ND and not v.flags.writeable):
                raise ValueError(f"{what} {name}: expected a writable float32 C-contiguous "
                                 f"CPU array of shape {list(shape)} (without requires_grad), "
                                 f"got {_describe(v)}")
            arr[i] = r[0]
        return vals

    def _lengths(self, lengths, B, T):
        if lengths is None:
            return None, None
        if is_torch(lengths):
            lengths = lengths.detach().cpu().numpy()
        a = np.asarray(lengths)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"lengths: dtype {a.dtype}, expected integers")
        if a.shape != (B,):
            raise ValueError(f"lengths: shape {list(a.shape)}, expected [{B}]")
        if a.size and (a.min() < 0 or a.max() > T):
            raise ValueError(f"lengths: values must lie in [0, {T}], got {a.tolist()}")
        a = np.ascontiguousarray(a, dtype=np.int32)
        return _VP(np_ptr(a)), a

    def _fail(self, st):
        msg = self._message(st)
        if st in (_lib.SEQ_ERR_ARG, _lib.SEQ_ERR_RUN) or self._so is not None:
            raise RunError(msg, st)
        if st == _lib.SEQ_ERR_BIND:
            raise WeightError(msg, st)
        raise SeqError(msg, st)

    def forward(self, *xs, lengths=None, state=None, return_state=False, out=None,
                state_out=None, **kw):
        """Runs whole sequences: inputs [B, T, ...] (tokens [B, T]); lengths:
        None or B values in [0, T] (outputs past the end are zero, the final
        state is the state at the end); state: None, a dict by state name
        (m.state_names) or a sequence in that order, each [B, ...]. Returns the
        output (a tuple for several), and with return_state=True also the final
        states as a dict. out: arrays to write the outputs into (returned)
        instead of new ones; state_out: the same for the final states (a dict
        or a sequence; implies return_state; it may be `state` itself)."""
        q = self._qfwd
        if q is not None and lengths is None and not kw and len(xs) == 1 and self._bound:
            rs = return_state or state_out is not None
            r = q(xs[0], state, rs, out, state_out)
            if r is not None:
                if type(r) is int:
                    self._fail(r)
                return r if rs else r[0]
        if not self._bound:
            self._check_bound()
        a = self._arrays()
        ins, sin, optr, sout = a
        (B, T), torch_out, keep = self._inputs(xs, kw, ins, 2)
        lp, lkeep = self._lengths(lengths, B, T) if lengths is not None else (None, None)
        sin, skeep = self._states_in(state, B, sin)
        _, oshapes, sshapes = self._shapes_of(B, T)
        outs = self._outs(out, oshapes, optr, torch_out, "out")
        if return_state or state_out is not None:
            souts = self._outs(state_out, sshapes, sout, torch_out, "state_out")
        else:
            sout = None
        st = self._fwd_c(self._first, _i64(B), _i64(T), ins, lp, sin, optr, sout)
        self._free.append(a)
        if st:
            self._fail(st)
        y = outs[0] if self._nout == 1 else tuple(outs)
        if sout is None:
            return y
        if type(state_out) is dict:
            return y, state_out
        return y, dict(zip(self._st_names, souts))

    __call__ = forward

    def step(self, x=None, state=None, *, out=None, state_out=None, **kw):
        """One token: x [B, ...] (tokens [B]); for several inputs a dict by
        name, a tuple in order, or keywords. state as in forward (None: the
        initial state). Returns (output, state): chained over a sequence it
        gives forward's outputs and final state. out / state_out: arrays to
        write into instead of new ones, as in forward; state_out=state
        updates the state in place."""
        q = self._qstep
        if q is not None and not kw and self._bound:
            r = q(x, state, True, out, state_out)
            if r is not None:
                if type(r) is int:
                    self._fail(r)
                return r
        c = self._step_c
        if c is None:
            raise SeqError("this model has no step form (it reads whole sequences: a reverse "
                           "layer, causal_conv or attention); call it on the whole sequence")
        if not self._bound:
            self._check_bound()
        a = self._arrays()
        ins, sin, optr, sout = a
        xs = () if x is None else (tuple(x) if isinstance(x, (tuple, list)) else (x,))
        (B,), torch_out, keep = self._inputs(xs, kw, ins, 1)
        sin, skeep = self._states_in(state, B, sin)
        _, oshapes, sshapes = self._shapes_of(B, None)
        outs = self._outs(out, oshapes, optr, torch_out, "out")
        souts = self._outs(state_out, sshapes, sout, torch_out, "state_out")
        st = c(self._first, _i64(B), ins, sin, optr, sout)
        self._free.append(a)
        if st:
            self._fail(st)
        y = outs[0] if self._nout == 1 else tuple(outs)
        if type(state_out) is dict:
            return y, state_out
        return y, dict(zip(self._st_names, souts))

    # ---- introspection -------------------------------------------------------------
    @property
    def state_names(self):
        return self._st_names

    def report(self):
        """What `seqc --report --dims` prints, as data: {"unit", "dims",
        "cells": [{"name", "loc", "states": [{"name", "class", "strategy",
        "form", "why", "admitted", ...}]}], "text"} (include/seq.h)."""
        if not self._h:
            raise SeqError("report() needs a module compiled by seqc.compile")
        r = _lib.lib.seq_module_report(self._h)
        if not r:
            raise SeqError(self._message(0) or "report unavailable")
        return json.loads(r.decode())
