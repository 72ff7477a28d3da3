"""The LSTM forward table through Python (issue 14): std LSTM
(stdlib/lstm.seq, I = H = 256) compiled by seqc.compile with the weights of a
torch nn.LSTM's state_dict, called as m(x) on a torch tensor, beside that
nn.LSTM's own forward; T = 1024, B in {1, 8, 64}, one thread on both sides
(torch.set_num_threads(1), threads=1). The outputs are checked to agree first.
Then ROUNDS rounds of a pair, a seqc call then a torch call (each after one
warm-up call per B); it prints a Markdown table of the medians, the range of
the rounds in brackets, and the median of the per-round ratios PyTorch / seqc.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE SEQC_LIBRARY=build/libseq.so \\
        PYTHONPATH=python python3 python/bench/lstm_table.py [--rounds 5]
"""
import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

import seqc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--B", default="1,8,64")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    I = H = a.H
    ref = torch.nn.LSTM(I, H, batch_first=True).eval()
    t0 = time.perf_counter()
    m = seqc.compile(ROOT / "stdlib" / "lstm.seq", weights=ref.state_dict(), threads=1)
    compile_ms = (time.perf_counter() - t0) * 1e3
    rows = []
    with torch.inference_mode():
        for B in (int(b) for b in a.B.split(",")):
            x = torch.randn(B, a.T, I)
            y = m(x)
            y_ref = ref(x)[0]
            err = (y - y_ref).abs().max().item()
            if not err < 1e-4:
                raise SystemExit(f"B={B}: seqc and torch differ by {err}")
            ours, theirs, ratios = [], [], []
            for _ in range(a.rounds):
                s = timed(lambda: m(x))
                t = timed(lambda: ref(x))
                ours.append(s)
                theirs.append(t)
                ratios.append(t / s)
            rows.append((B, ours, theirs, ratios, err))

    def cell(v):
        return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"

    print(f"std LSTM I=H={H}, T={a.T}, fp32, one thread; seqc {seqc.__version__} "
          f"(libseq {seqc.library_path}), torch {torch.__version__}; {a.rounds} rounds of "
          f"a pair (seqc m(x), then nn.LSTM(x)); Python {platform.python_version()}, "
          f"load average at the end {os.getloadavg()[0]:.2f}; JIT compile with the state "
          f"dict {compile_ms:.0f} ms")
    print()
    print("| B | seqc m(x) ms | PyTorch ms | PyTorch / seqc (per-round range) | max abs diff |")
    print("|---|---|---|---|---|")
    for B, ours, theirs, ratios, err in rows:
        print(f"| {B} | {cell(ours)} | {cell(theirs)} | **{statistics.median(ratios):.2f}** "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] | {err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
