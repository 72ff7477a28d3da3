"""Inputs and outputs: NumPy arrays and CPU torch tensors, read in place.

A float32 C-contiguous array or tensor is handed to compiled code as it is
(its data pointer, no copy). Other layouts are copied once into a contiguous
float32 buffer; other float dtypes are refused (TypeError), as a torch module
refuses a float64 input. Token inputs (int) take int32 in place and int64
(torch's default for indices) through a checked copy.
"""
import ctypes
import sys

import numpy as np

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)


def _slow_data_ptr(a):
    return a.ctypes.data


def _fast_data_ptr_or_none():
    """np_ptr(a): the data pointer of an ndarray. `a.ctypes.data` and
    `a.__array_interface__` build Python objects and take 1.5-2 us; this reads
    the `data` field of NumPy's PyArrayObject, which follows the object header
    (what NumPy's own PyArray_DATA does), in 0.3 us. Used only on CPython and
    only when it agrees with `a.ctypes.data` on arrays of several kinds here."""
    if sys.implementation.name != "cpython":
        return None
    off = object.__basicsize__
    read = ctypes.c_void_p.from_address

    def ptr(a):
        return read(id(a) + off).value

    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    probes = [base, base[1:], base[:, 2:], np.empty(0, np.float32), np.zeros((3, 5), np.int32),
              np.empty((2, 7), np.float32)[1]]
    try:
        if all(ptr(a) == a.ctypes.data for a in probes):
            return ptr, off
    except Exception:  # noqa: BLE001 - any surprise: the documented path
        pass
    return None, None


np_ptr, PTR_OFFSET = _fast_data_ptr_or_none()
if np_ptr is None:
    np_ptr = _slow_data_ptr


def torch_or_none():
    return sys.modules.get("torch")


def is_torch(x):
    t = sys.modules.get("torch")
    return t is not None and isinstance(x, t.Tensor)


class Buf:
    """One buffer handed to C: its pointer and what keeps it alive."""
    __slots__ = ("ptr", "obj", "shape", "copied")

    def __init__(self, ptr, obj, shape, copied):
        self.ptr, self.obj, self.shape, self.copied = ptr, obj, shape, copied


def as_float(x, what):
    """A float32 C-contiguous view of x (no copy), or a contiguous copy when
    x is strided. TypeError for another dtype, ValueError for a GPU tensor."""
    if is_torch(x):
        torch = sys.modules["torch"]
        if x.device.type != "cpu":
            raise ValueError(f"{what}: a tensor on {x.device}; seqc reads CPU tensors "
                             "(call .cpu() first)")
        if x.dtype != torch.float32:
            raise TypeError(f"{what}: dtype {x.dtype}, expected torch.float32 "
                            "(convert with .float())")
        copied = False
        if not x.is_contiguous():
            x = x.contiguous()
            copied = True
        return Buf(x.data_ptr(), x, tuple(x.shape), copied)
    if not isinstance(x, np.ndarray):
        x = np.asarray(x, dtype=np.float32)
    if x.dtype != np.float32:
        raise TypeError(f"{what}: dtype {x.dtype}, expected float32 "
                        "(convert with .astype(np.float32))")
    copied = False
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
        copied = True
    return Buf(np_ptr(x), x, x.shape, copied)


def as_tokens(x, what):
    """int32 C-contiguous tokens: int32 in place, other integer dtypes copied
    (values must fit int32)."""
    if is_torch(x):
        torch = sys.modules["torch"]
        if x.device.type != "cpu":
            raise ValueError(f"{what}: a tensor on {x.device}; seqc reads CPU tensors")
        if x.dtype == torch.int32 and x.is_contiguous():
            return Buf(x.data_ptr(), x, tuple(x.shape), False)
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{what}: dtype {x.dtype}, expected an integer dtype (token ids)")
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == np.int32 and x.flags.c_contiguous:
        return Buf(np_ptr(x), x, x.shape, False)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{what}: dtype {x.dtype}, expected an integer dtype (token ids)")
    if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{what}: token ids beyond int32")
    y = np.ascontiguousarray(x, dtype=np.int32)
    return Buf(np_ptr(y), y, y.shape, True)


def empty(shape, like_torch):
    """A new float32 output buffer, a torch tensor when the inputs were."""
    if like_torch:
        torch = sys.modules["torch"]
        t = torch.empty(shape, dtype=torch.float32)
        return t, t.data_ptr()
    a = np.empty(shape, dtype=np.float32)
    return a, np_ptr(a)


def weight_array(v, name):
    """A parameter's data as a float32 C-contiguous array kept by the module:
    the caller's memory when it already is one, else a copy."""
    if is_torch(v):
        v = v.detach()
        torch = sys.modules["torch"]
        if v.device.type != "cpu":
            v = v.cpu()
        if v.dtype != torch.float32 or not v.is_contiguous():
            v = v.to(torch.float32).contiguous()
        return v, v.data_ptr(), tuple(v.shape)
    a = np.asarray(v)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"weight {name}: dtype {a.dtype}, expected a float array")
    # (np.ascontiguousarray would make a scalar parameter, `param b: []`, [1].)
    a = np.asarray(a, dtype=np.float32, order="C")
    return a, a.ctypes.data, a.shape
