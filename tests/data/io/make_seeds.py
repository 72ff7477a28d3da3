#!/usr/bin/env python3
"""Regenerates the .npy and safetensors sample files in this directory.

good/ files are written by numpy and by the safetensors package (the
reference implementation), so the runtime's tests check compatibility with
them without needing Python. bad/ files are malformed in one way each; the
tests expect every one to fail with a message naming the file. Both sets
double as fuzzing seeds. Run from anywhere: python3 make_seeds.py
"""
import json
import os
import struct

import numpy as np
from numpy.lib import format as npf
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def out(*parts):
    path = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def npy_bytes(arr, version=None):
    import io
    buf = io.BytesIO()
    npf.write_array(buf, arr, version=version, allow_pickle=False)
    return buf.getvalue()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---- .npy ---------------------------------------------------------------
f32 = (np.arange(6, dtype="<f4") * 0.5 - 1).reshape(2, 3)
np.save(out("npy", "good", "f32_2x3.npy"), f32)
np.save(out("npy", "good", "f64_scalar.npy"), np.array(3.25, dtype="<f8"))
np.save(out("npy", "good", "i64_1d.npy"), np.array([-5, 0, 2**40], dtype="<i8"))
np.save(out("npy", "good", "i32_empty.npy"), np.zeros((0, 3), dtype="<i4"))
np.save(out("npy", "good", "f16_4.npy"), np.array([1.0, -2.0, 65504.0, 2.0**-24], dtype="<f2"))
write(out("npy", "good", "f32_v2.npy"), npy_bytes(f32, (2, 0)))
write(out("npy", "good", "f32_v3.npy"), npy_bytes(f32, (3, 0)))

good = npy_bytes(f32)
write(out("npy", "bad", "empty.npy"), b"")
write(out("npy", "bad", "short_magic.npy"), b"\x93NUM")
write(out("npy", "bad", "bad_magic.npy"), b"\x93NUMPZ" + good[6:])
write(out("npy", "bad", "version_9.npy"), good[:6] + b"\x09\x00" + good[8:])
write(out("npy", "bad", "header_past_end.npy"), good[:8] + b"\xff\xff" + good[10:40])
write(out("npy", "bad", "truncated.npy"), good[:-4])
write(out("npy", "bad", "trailing.npy"), good + b"\0\0\0\0")
np.save(out("npy", "bad", "fortran.npy"), np.asfortranarray(f32))
np.save(out("npy", "bad", "big_endian.npy"), f32.astype(">f4"))
np.save(out("npy", "bad", "u8.npy"), np.arange(4, dtype="u1"))
hdr = good[10:good.index(b"\n") + 1]
bad_hdr = hdr.replace(b"(2, 3)", b"(2 3) ")
write(out("npy", "bad", "shape_syntax.npy"), good[:10] + bad_hdr + good[10 + len(hdr):])

# ---- safetensors ----------------------------------------------------------
save_file(
    {
        "w": f32,
        "b": np.array([0.1, -2.0, 1e300], dtype="<f8"),
        "h": np.array([[1.0, -2.0], [0.5, 65504.0]], dtype="<f2"),
        "n": np.array(-7, dtype="<i8"),
        "k": np.array([3, -4], dtype="<i4"),
        "e": np.zeros((0, 4), dtype="<f4"),
    },
    out("st", "good", "mixed.safetensors"),
    metadata={"format": "np"},
)
save_file(
    {"mask": np.array([1, 0, 1, 1], dtype="u1"), "x": np.array([1.5, 2.5], dtype="<f4")},
    out("st", "good", "with_u8.safetensors"),
)


def st(header, data=b"", hlen=None):
    text = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(text) if hlen is None else hlen) + text + data


def hdr(entries):
    return json.dumps(entries)


ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
write(out("st", "bad", "empty.safetensors"), b"")
write(out("st", "bad", "short.safetensors"), b"\x10\0\0")
write(out("st", "bad", "header_past_end.safetensors"), st(hdr(ok), bytes(8), hlen=1000))
write(out("st", "bad", "header_huge.safetensors"), st(hdr(ok), bytes(8), hlen=2**63))
write(out("st", "bad", "not_json.safetensors"), st("{not json", bytes(8)))
write(out("st", "bad", "not_object.safetensors"), st("[1, 2]", bytes(8)))
write(out("st", "bad", "missing_dtype.safetensors"),
      st(hdr({"a": {"shape": [2], "data_offsets": [0, 8]}}), bytes(8)))
write(out("st", "bad", "negative_shape.safetensors"),
      st(hdr({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}), bytes(8)))
write(out("st", "bad", "offsets_out_of_range.safetensors"),
      st(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), bytes(4)))
write(out("st", "bad", "overlap.safetensors"),
      st(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), bytes(12)))
write(out("st", "bad", "size_mismatch.safetensors"),
      st(hdr({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), bytes(8)))
write(out("st", "bad", "huge_shape.safetensors"),
      st(hdr({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}), bytes(8)))
write(out("st", "bad", "unknown_dtype.safetensors"),
      st(hdr({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}), bytes(8)))
write(out("st", "bad", "duplicate_key.safetensors"),
      st('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
         '"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8)))
write(out("st", "bad", "u8_read.safetensors"),
      st(hdr({"m": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}), bytes(4)))
