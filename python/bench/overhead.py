"""Per-call overhead of the Python layer (issue 14): m.step at B=1 against the
same seq_module_step called from C (step_c.c, compiled here with cc against
the libseq in use). Also ctypes calling seq_module_step with prebuilt pointer
arrays (the floor of any ctypes binding). Prints medians over REPS runs of the
mean time per call of CALLS calls.

    SEQC_LIBRARY=build/libseq.so PYTHONPATH=python python3 python/bench/overhead.py [--I 64 --H 64]
"""
import argparse
import ctypes
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import seqc
from seqc import _lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def median_ns(fn, reps, calls):
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--I", type=int, default=64)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    seq = ROOT / "examples" / "lstm.seq"
    libdir = pathlib.Path(seqc.library_path).resolve().parent
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "step_c")
        subprocess.run(["cc", "-O2", "-o", exe, str(pathlib.Path(__file__).with_name("step_c.c")),
                        f"-I{ROOT / 'include'}", f"-L{libdir}", "-lseq", f"-Wl,-rpath,{libdir}"],
                       check=True)
        c_ns = float(subprocess.run([exe, str(seq), str(a.I), str(a.H), str(a.reps),
                                     str(a.calls)], check=True, capture_output=True,
                                    text=True).stdout)

    m = seqc.compile(seq, dims={"I": a.I, "H": a.H}, threads=1)
    m.load_weights({p.name: ((np.arange(p.numel) % 17 - 8) * 0.01).astype(np.float32)
                    .reshape(p.shape) for p in m.params})
    x = np.zeros((1, a.I), np.float32)
    state = m.step(x)[1]
    py_ns = median_ns(lambda: m.step(x, state), a.reps, a.calls)

    # ctypes with prebuilt arrays: what any ctypes binding pays at the least.
    y = np.zeros((1, a.H), np.float32)
    h, c = np.zeros((1, a.H), np.float32), np.zeros((1, a.H), np.float32)
    VP = ctypes.c_void_p
    ins, outs = (VP * 1)(x.ctypes.data), (VP * 1)(y.ctypes.data)
    sts = (VP * 2)(h.ctypes.data, c.ctypes.data)
    step, hnd = _lib.lib.seq_module_step, m._h
    raw_ns = median_ns(lambda: step(hnd, 1, ins, sts, outs, sts), a.reps, a.calls)

    try:
        import torch
        xt = torch.zeros(1, a.I)
        st_t = {k: torch.from_numpy(v) for k, v in state.items()}
        torch_ns = median_ns(lambda: m.step(xt, st_t), a.reps, a.calls)
    except ImportError:
        torch_ns = None

    print(f"LSTM I={a.I} H={a.H}, B=1, one step; median of {a.reps} x {a.calls} calls "
          f"(libseq: {seqc.library_path})")
    print(f"  C, seq_module_step:                 {c_ns / 1e3:8.2f} us")
    print(f"  ctypes, prebuilt pointer arrays:    {raw_ns / 1e3:8.2f} us  "
          f"(+{(raw_ns - c_ns) / 1e3:.2f})")
    print(f"  seqc m.step(x, state), NumPy:       {py_ns / 1e3:8.2f} us  "
          f"(+{(py_ns - c_ns) / 1e3:.2f})")
    if torch_ns is not None:
        print(f"  seqc m.step(x, state), torch:       {torch_ns / 1e3:8.2f} us  "
              f"(+{(torch_ns - c_ns) / 1e3:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
