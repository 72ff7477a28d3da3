"""Per-call overhead of the Python layer (issue 14): m.step and m(x) at B=1
against the same calls made from C, on the same module and weights in the
same process. step_c.c (compiled here with cc against the libseq in use)
times CALLS calls of seq_module_step / seq_module_forward in C; each round
times every variant once, in turn, so that a busy machine slows all of them
alike; it prints per variant the median over ROUNDS of the mean time per call,
and the median over rounds of its difference to C's.

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
VP = ctypes.c_void_p


def per_call_ns(loop, calls):
    t0 = time.perf_counter_ns()
    loop(calls)
    return (time.perf_counter_ns() - t0) / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--I", type=int, default=64)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    libdir = pathlib.Path(seqc.library_path).resolve().parent
    tmp = tempfile.mkdtemp()
    so = os.path.join(tmp, "libstep_c.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", so,
                    str(pathlib.Path(__file__).with_name("step_c.c")), f"-I{ROOT / 'include'}",
                    f"-L{libdir}", "-lseq", f"-Wl,-rpath,{libdir}"], check=True)
    cbench = ctypes.CDLL(so)
    cbench.seqc_bench_step.restype = ctypes.c_double
    cbench.seqc_bench_step.argtypes = [VP, ctypes.c_int64, VP, VP, VP, VP, ctypes.c_int64]
    cbench.seqc_bench_forward.restype = ctypes.c_double
    cbench.seqc_bench_forward.argtypes = [VP, ctypes.c_int64, ctypes.c_int64, VP, VP, VP, VP,
                                          ctypes.c_int64]

    m = seqc.compile(ROOT / "examples" / "lstm.seq", dims={"I": a.I, "H": a.H}, threads=1)
    m.load_weights({p.name: ((np.arange(p.numel) % 17 - 8) * 0.01).astype(np.float32)
                    .reshape(p.shape) for p in m.params})
    I, H = a.I, a.H
    x = np.full((1, I), 0.1, np.float32)
    x3 = x.reshape(1, 1, I)
    y, h, c = (np.zeros((1, H), np.float32) for _ in range(3))
    ins, outs = (VP * 1)(x.ctypes.data), (VP * 1)(y.ctypes.data)
    sts = (VP * 2)(h.ctypes.data, c.ctypes.data)
    hnd = m._h

    def c_step(n):
        return cbench.seqc_bench_step(hnd, 1, ins, sts, outs, sts, n)

    def c_forward(n):
        return cbench.seqc_bench_forward(hnd, 1, 1, ins, None, outs, None, n)

    raw, hv, one = _lib.raw.seq_module_step, VP(hnd), ctypes.c_int64(1)

    def ctypes_floor(n):
        for _ in range(n):
            raw(hv, one, ins, sts, outs, sts)

    def chain(xv):
        def loop(n):
            state = m.step(xv)[1]
            for _ in range(n):
                _, state = m.step(xv, state)
        return loop

    def step_out_of(xv, yb):
        def loop(n):
            state = m.step(xv)[1]
            for _ in range(n):
                m.step(xv, state, out=yb, state_out=state)
        return loop

    def fwd(xv):
        def loop(n):
            for _ in range(n):
                m(xv)
        return loop

    variants = [("C seq_module_step", None), ("ctypes, prebuilt arrays (floor)", ctypes_floor),
                ("m.step(x, state) NumPy", chain(x)),
                ("m.step(x, state, out=, state_out=state) NumPy",
                 step_out_of(x, np.empty((1, H), np.float32)))]
    fvariants = [("C seq_module_forward, T=1", None), ("m(x) NumPy, T=1", fwd(x3))]
    try:
        import torch
        xt = torch.from_numpy(x.copy())
        variants.append(("m.step(x, state) torch", chain(xt)))
        variants.append(("m.step(x, state, out=, state_out=state) torch",
                         step_out_of(xt, torch.empty(1, H))))
        fvariants.append(("m(x) torch, T=1", fwd(xt.reshape(1, 1, I))))
    except ImportError:
        pass

    times = {name: [] for name, _ in variants + fvariants}
    diffs = {name: [] for name, _ in variants + fvariants}
    for r in range(a.rounds + 1):  # round 0: warm-up
        for group, cfun in ((variants, c_step), (fvariants, c_forward)):
            base = cfun(a.calls)
            if base < 0:
                raise SystemExit("the C loop failed")
            for name, fn in group:
                t = base if fn is None else per_call_ns(fn, a.calls)
                if r:
                    times[name].append(t)
                    diffs[name].append(t - base)

    print(f"LSTM I={I} H={H}, B=1, threads=1: median over {a.rounds} rounds of the mean of "
          f"{a.calls} calls (libseq: {seqc.library_path})")
    print("| call | us per call | Python layer (us, vs C) |\n|---|---:|---:|")
    for name, _ in variants + fvariants:
        d = statistics.median(diffs[name])
        extra = "" if name.startswith("C ") else f"{d / 1e3:+.2f}"
        print(f"| {name} | {statistics.median(times[name]) / 1e3:.2f} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
