"""seq2seq.py - examples/attention_decoder.seq (a GRU decoder with additive
attention over a context, Bahdanau et al. 2015) and examples/seq2seq.seq (a
bidirectional GRU encoder over the source run inside the same model) through
seqc's Python API, against the same models written in PyTorch (nn.GRUCell and
the attention in a Python loop over the target steps, the encoder an nn.GRU
over the packed source), same weights, float32, the same thread count, paired
rounds: each round times seqc, then PyTorch, REPS forwards each, and the
script prints the medians over rounds and the median of the per-round ratios.
The outputs are compared once first (max abs difference).

usage (from the repository root; torch's own threads are set to THREADS):
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE SEQC_LIBRARY=build-perf/libseq.so \\
    PYTHONPATH=python build-perf/venv/bin/python bench/seq2seq.py [--B 16] [--T 64] [--S 64]
    [--H 256] [--I 256] [--A 256] [--threads 1] [--rounds 7] [--reps 3]
"""
import argparse
import pathlib
import statistics
import time

import numpy as np
import torch

import seqc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def torch_decoder(p, x, memory, mask, h0):
    """The decoder of attention_decoder.seq: keys once, then per step the
    additive attention, the context vector and a GRU cell on [x, c]."""
    H = h0.shape[1]
    cell = torch.nn.GRUCell(p["weight_ih"].shape[1], H)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).copy_(p[n])
    keys = memory @ p["W_k"].T                                   # [B, S, A]
    h, ys, aligns = h0, [], []
    for t in range(x.shape[1]):
        e = torch.tanh(keys + (h @ p["W_q"].T)[:, None, :]) @ p["v"] + mask
        a = torch.softmax(e, dim=-1)
        c = torch.bmm(a[:, None, :], memory)[:, 0]
        h = cell(torch.cat([x[:, t], c], dim=-1), h)
        ys.append(h)
        aligns.append(a)
    return torch.stack(ys, 1), torch.stack(aligns, 1)


def torch_seq2seq(p, gru, x, src, src_len, mask):
    """examples/seq2seq.seq: a bidirectional nn.GRU over the packed source,
    its outputs (zero at the padding) the decoder's memory."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(src, src_len, batch_first=True,
                                                     enforce_sorted=False)
    out, _ = gru(packed)
    memory, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                       total_length=src.shape[1])
    dec = {k[len("decoder."):]: v for k, v in p.items() if k.startswith("decoder.")}
    return torch_decoder(dec, x, memory, mask, torch.zeros(x.shape[0], memory.shape[2]))


def timed(name, a, run_seqc, run_torch, err):
    ts, tt, ratio = [], [], []
    run_seqc()
    run_torch()
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        run_seqc()
        t1 = time.perf_counter()
        run_torch()
        t2 = time.perf_counter()
        ts.append((t1 - t0) / a.reps * 1e3)
        tt.append((t2 - t1) / a.reps * 1e3)
        ratio.append(tt[-1] / ts[-1])
    print(f"{name} B={a.B} T={a.T} S={a.S} I={a.I} H={a.H} A={a.A} threads={a.threads}: "
          f"seqc {statistics.median(ts):.2f} ms [{min(ts):.2f}-{max(ts):.2f}], "
          f"PyTorch {statistics.median(tt):.2f} ms [{min(tt):.2f}-{max(tt):.2f}], "
          f"PyTorch / seqc {statistics.median(ratio):.2f}x (max abs difference {err:.1e}, "
          f"torch {torch.__version__})")


def main():
    ap = argparse.ArgumentParser()
    for k, v in (("B", 16), ("T", 64), ("S", 64), ("H", 256), ("I", 256), ("A", 256),
                 ("threads", 1), ("rounds", 7), ("reps", 3)):
        ap.add_argument(f"--{k}", type=int, default=v)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    B, T, S, H, I, A = a.B, a.T, a.S, a.H, a.I, a.A
    dims = {"I": I, "H": H, "S": S, "A": A}
    m = seqc.compile(ROOT / "examples/attention_decoder.seq", dims=dims, threads=a.threads)
    rng = np.random.default_rng(0)
    w = {s.name: (rng.uniform(-1, 1, s.shape) / np.sqrt(s.shape[-1])).astype(np.float32)
         for s in m.params}
    m.load_weights(w)
    tw = {k: torch.from_numpy(v) for k, v in w.items()}
    x = torch.from_numpy(rng.uniform(-1, 1, (B, T, I)).astype(np.float32))
    memory = torch.from_numpy(rng.uniform(-1, 1, (B, S, H)).astype(np.float32))
    mask = torch.zeros(B, S)
    h0 = torch.zeros(B, H)
    with torch.no_grad():
        y_ref, a_ref = torch_decoder(tw, x, memory, mask, h0)
    y, al = m(x, memory=memory, mask=mask)
    err = max(float((y - y_ref).abs().max()), float((al - a_ref).abs().max()))

    def run_seqc():
        for _ in range(a.reps):
            m(x, memory=memory, mask=mask)

    def run_torch():
        with torch.no_grad():
            for _ in range(a.reps):
                torch_decoder(tw, x, memory, mask, h0)

    timed("attention decoder", a, run_seqc, run_torch, err)

    # The whole model: the encoder (H/2 per direction) over sources of
    # lengths between S/2 and S, then the decoder.
    dims2 = {"I_src": I, "I": I, "H": H // 2, "S": S, "A": A}
    m2 = seqc.compile(ROOT / "examples/seq2seq.seq", dims=dims2, threads=a.threads)
    w2 = {s.name: (rng.uniform(-1, 1, s.shape) / np.sqrt(s.shape[-1])).astype(np.float32)
          for s in m2.params}
    m2.load_weights(w2)
    tw2 = {k: torch.from_numpy(v) for k, v in w2.items()}
    gru = torch.nn.GRU(I, H // 2, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, n + "_l0").copy_(tw2["encoder." + n])
            getattr(gru, n + "_l0_reverse").copy_(tw2["encoder_back." + n])
    src = torch.from_numpy(rng.uniform(-1, 1, (B, S, I)).astype(np.float32))
    src_len = torch.from_numpy(rng.integers(S // 2, S + 1, B))
    mask2 = torch.where(torch.arange(S)[None, :] < src_len[:, None], 0.0, -1e9)
    with torch.no_grad():
        y_ref, a_ref = torch_seq2seq(tw2, gru, x, src, src_len, mask2)
    y, al = m2(x, src=src, src_len=src_len.numpy(), mask=mask2)
    err = max(float((y - y_ref).abs().max()), float((al - a_ref).abs().max()))

    def run_seqc2():
        for _ in range(a.reps):
            m2(x, src=src, src_len=src_len.numpy(), mask=mask2)

    def run_torch2():
        with torch.no_grad():
            for _ in range(a.reps):
                torch_seq2seq(tw2, gru, x, src, src_len, mask2)

    timed("seq2seq (encoder + decoder)", a, run_seqc2, run_torch2, err)


if __name__ == "__main__":
    main()
