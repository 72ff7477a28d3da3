"""Modules: compiled by the JIT (seqc.compile) or loaded from an AOT shared
object (seqc.load_so); the same calling conventions for both."""
import ctypes
import json
import os
import re
import struct
import tempfile
import threading
from collections.abc import Mapping

import numpy as np

from . import _lib
from ._arrays import Buf, as_float, as_tokens, empty, is_torch, weight_array

_VP = ctypes.c_void_p


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

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


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


def compile(path_or_source, dims=None, strategy=None, threads=None, *, weights=None,
            opt_level=2, entry=None, chunk=None, batch=None, backend=None, target_cpu=None,
            target_features=None, newton_rtol=None, newton_atol=None, newton_max_iter=None,
            name="<string>"):
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
                if kind in ("inputs", "outputs"):
                    dims = dims[2:]  # B, T
                elif kind == "states_in":
                    dims = dims[1:]  # B
                specs.append(TensorSpec(f.group(2), [int(d) for d in dims],
                                        f.group(1) == "int32_t"))
        out[kind] = specs
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
                out.append(TensorSpec(ti.name.decode(), list(ti.shape[:ti.ndim]), ti.is_int))
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
        fwd, stp, err = lib.seq_module_forward, lib.seq_module_step, lib.seq_module_error
        self._forward = lambda B, T, i, ln, si, o, so: fwd(h, B, T, i, ln, si, o, so)
        self._step = lambda B, i, si, o, so: stp(h, B, i, si, o, so)
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
        self.dims = list(vals[:n])  # the unit's header order; names are in the header's macros
        self._pbuf = (_VP * max(len(self.params), 1))()
        pb = self._pbuf
        fwd = getattr(so, sym + "_forward")
        fwd.restype = ctypes.c_int32
        fwd.argtypes = [_VP, ctypes.c_int64, ctypes.c_int64, _VP, _VP, _VP, _VP, _VP]
        self._forward = lambda B, T, i, ln, si, o, so_: fwd(pb, B, T, i, ln, si, o, so_)
        try:
            stp = getattr(so, sym + "_step")
        except AttributeError:
            stp = None
        self.has_step = stp is not None
        if stp is not None:
            stp.restype = ctypes.c_int32
            stp.argtypes = [_VP, ctypes.c_int64, _VP, _VP, _VP, _VP]
            self._step = lambda B, i, si, o, so_: stp(pb, B, i, si, o, so_)
        self._message = lambda st: _STATUS_ABI.get(st, f"status {st}")
        self._setup()
        return self

    def _setup(self):
        self._in_index = {s.name: i for i, s in enumerate(self.inputs)}
        self._st_index = {s.name: i for i, s in enumerate(self.states)}
        self._st_names = tuple(s.name for s in self.states)
        self._in_arr = _VP * max(len(self.inputs), 1)
        self._out_arr = _VP * max(len(self.outputs), 1)
        self._st_arr = _VP * max(len(self.states), 1)

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
        return self

    def _key(self, k):
        # An AOT module's names are C names: match the same replacement.
        return k if self._h else re.sub(r"[^A-Za-z0-9_]", "_", str(k))

    def _one_cell(self):
        if self._h:
            return not any("." in s.name for s in self.states) and \
                not any("." in p.name for p in self.params)
        return True

    def _check_bound(self):
        if self._so is not None and len(self._weights) != len(self.params):
            raise WeightError("weights are not bound: call load_weights first")

    # ---- running ---------------------------------------------------------------
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
            what = f"input {spec.name}"
            b = as_tokens(v, what) if spec.is_int else as_float(v, what)
            nl = len(lead)
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

    def _states_in(self, state, B, what="state"):
        if state is None:
            return None, []
        if isinstance(state, Mapping):
            items = state.items()
        else:
            state = tuple(state)
            if len(state) != len(self.states):
                raise ValueError(f"{what}: {len(state)} values, the model has "
                                 f"{len(self.states)} states ({', '.join(self._st_names)})")
            items = zip(self._st_names, state)
        arr = self._st_arr()
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
            arr[i] = b.ptr
            keep.append(b)
        return arr, keep

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
        return a.ctypes.data, a

    def _fail(self, st):
        msg = self._message(st)
        if st in (_lib.SEQ_ERR_ARG, _lib.SEQ_ERR_RUN) or self._so is not None:
            raise RunError(msg, st)
        if st == _lib.SEQ_ERR_BIND:
            raise WeightError(msg, st)
        raise SeqError(msg, st)

    def forward(self, *xs, lengths=None, state=None, return_state=False, **kw):
        """Runs whole sequences: inputs [B, T, ...] (tokens [B, T]); lengths:
        None or B values in [0, T] (outputs past the end are zero, the final
        state is the state at the end); state: None, a dict by state name
        (m.state_names) or a sequence in that order, each [B, ...]. Returns the
        output (a tuple for several), and with return_state=True also the final
        states as a dict."""
        self._check_bound()
        bufs, (B, T) = self._prepare(self._collect_inputs(xs, kw), (None, None))
        torch_out = is_torch(bufs[0].obj) if bufs else False
        ins = self._in_arr(*[b.ptr for b in bufs])
        lp, lkeep = self._lengths(lengths, B, T)
        sin, skeep = self._states_in(state, B)
        outs, optr = [], self._out_arr()
        for i, s in enumerate(self.outputs):
            o, optr[i] = empty((B, T, *s.shape), torch_out)
            outs.append(o)
        sout = None
        if return_state:
            sout = self._st_arr()
            souts = []
            for i, s in enumerate(self.states):
                o, sout[i] = empty((B, *s.shape), torch_out)
                souts.append(o)
        st = self._forward(B, T, ins, lp, sin, optr, sout)
        if st:
            self._fail(st)
        y = outs[0] if len(outs) == 1 else tuple(outs)
        if return_state:
            return y, dict(zip(self._st_names, souts))
        return y

    __call__ = forward

    def step(self, x=None, state=None, **kw):
        """One token: x [B, ...] (tokens [B]); for several inputs a dict by
        name, a tuple in order, or keywords. state as in forward (None: the
        initial state). Returns (output, state): chained over a sequence it
        gives forward's outputs and final state."""
        xs = () if x is None else (tuple(x) if isinstance(x, (tuple, list)) else (x,))
        if not self.has_step:
            raise SeqError("this model has no step form (it reads whole sequences: a reverse "
                           "layer, causal_conv or attention); call it on the whole sequence")
        self._check_bound()
        if len(xs) == 1 and not kw and len(self.inputs) == 1:
            b = xs[0]
            spec = self.inputs[0]
            b = as_tokens(b, "input " + spec.name) if spec.is_int else \
                as_float(b, "input " + spec.name)
            if len(b.shape) != 1 + len(spec.shape) or tuple(b.shape[1:]) != spec.shape:
                want = "[B" + "".join(f", {d}" for d in spec.shape) + "]"
                raise ValueError(f"input {spec.name}: shape {list(b.shape)}, expected {want}")
            bufs, B = (b,), b.shape[0]
        else:
            bufs, (B,) = self._prepare(self._collect_inputs(xs, kw), (None,))
        torch_out = is_torch(bufs[0].obj)
        ins = self._in_arr(*[b.ptr for b in bufs])
        sin, skeep = self._states_in(state, B)
        optr, outs = self._out_arr(), []
        for i, s in enumerate(self.outputs):
            o, optr[i] = empty((B, *s.shape), torch_out)
            outs.append(o)
        sout, souts = self._st_arr(), []
        for i, s in enumerate(self.states):
            o, sout[i] = empty((B, *s.shape), torch_out)
            souts.append(o)
        st = self._step(B, ins, sin, optr, sout)
        if st:
            self._fail(st)
        return (outs[0] if len(outs) == 1 else tuple(outs)), dict(zip(self._st_names, souts))

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
