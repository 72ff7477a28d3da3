#!/usr/bin/env python3
"""Write the seq2seq attention reference fixture (tests/reference/fixtures/torch_seq2seq/).

    python3 tests/reference/make_seq2seq_fixtures.py               # write, then self-check
    python3 tests/reference/make_seq2seq_fixtures.py --self-check  # re-check what is on disk

The model is examples/attention_decoder.seq: a GRU decoder with Bahdanau's additive attention
over an encoder's outputs. The encoder is a real torch.nn.GRU(I_SRC, H, batch_first=True) run
over a source batch src [B, S, I_SRC] with unsorted source lengths [6, 4, 3] through
pack_padded_sequence / pad_packed_sequence(total_length=S), so memory [B, S, H] is zero at the
padding; mask [B, S] is 0 at a source's positions and -1e9 after them. The encoder's weights are
not in the fixture: memory is an input (a context, given once per sequence). The decoder starts
from the encoder's final state (h0 = h_n of the packed run, each source's state at its end), as
seq2seq models do, and runs over x [B, T, I] (torch.randn) with unsorted target lengths
[7, 3, 5]. B=3, S=6, T=7, I=4, I_SRC=5, H=8, A=6. Per step, with h the state:

    keys = memory W_k^T;  e = tanh(keys + W_q h) v + mask;  a = softmax(e);  c = a memory
    h' = GRUCell([x, c], h);  y = h';  align = a

The decoder's parameters come from PyTorch modules with their default initialisation, all
drawn after torch.manual_seed(SEED): weight_ih [3H, I+H], weight_hh, bias_ih, bias_hh from
torch.nn.GRUCell(I + H, H) (gate rows r, z, n); W_k, W_q from bias-free torch.nn.Linear(H, A);
v from torch.nn.Linear(A, 1, bias=False), its weight reshaped to [A] and multiplied by
V_SCALE = 8. Unscaled, the energies differ little and the alignment is nearly uniform (the
largest weight per step is 0.19 to 0.35 over 3 to 6 positions, uniform being 0.17 to 0.33), so
the query W_q h, the only way the state reaches the attention, moves the outputs by only 7e-4;
scaled, the largest weight is 0.35 to 0.51 and dropping the query moves y by 5e-3 and align by
1.5e-2. All are stored as F32 under the .seq's names.

The expected outputs (y [B, T, H], align [B, T, S], h_n [B, H]) are PyTorch's, computed in
float64 from the float32 weights and inputs (the GRU step through a float64 torch.nn.GRUCell
loaded with the same state_dict); outputs past a target's length are exactly zero (seqc's
convention) and h_n is each sequence's state after its step lengths[b] - 1. The padding gets
exactly zero weight: exp(-1e9) underflows, in float64 and in float32.

The self-check recomputes the decoder in float64 NumPy from the definitions, without torch, one
sequence at a time, attending only over the source's own positions (no mask: the mask's layout
and memory's zero padding are checked separately), and requires torch's stored outputs to agree
within TOL / 4 (they agree to 3e-8, the float32 rounding of the stored values). Mutations of
that recomputation (measured, max abs change of y): dropping the query 5e-3, attending over
the padding (no mask) 5e-2, uniform attention 7e-2, W_k and W_q swapped 0.12, concat(c, x)
for concat(x, c) 0.8 (align: 8e-3 to 0.35).

TOL = 2e-5, as for the other attention fixtures. The outputs are at most 1 in size (y is a GRU
state, align a probability); seqc in float32 is within 7.5e-8 of them on both backends (1 to 2
ulps of 0.5, with the errors of 7 steps through the state and the softmax), so 2e-5 leaves a
wide margin for other summation orders while the smallest mutation above is 230 times larger.

Needs torch, numpy and safetensors for writing; numpy for the self-check.
"""

import os
import sys

import numpy as np

from fixture_io import main, read_safetensors, report, write_case

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAME = "torch_seq2seq"
SEQ = "examples/attention_decoder.seq"
B, S, T = 3, 6, 7
I, I_SRC, H, A = 4, 5, 8, 6
SRC_LENGTHS = [6, 4, 3]  # unsorted; the first fills S
LENGTHS = [7, 3, 5]  # unsorted, all >= 1, two shorter than T
V_SCALE = 8.0
MASK = -1e9  # exact in float32
SEED = 601
TOL = "2e-5"
NAMES = ("W_k", "W_q", "v", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
GRU = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def make_inputs():
    """PyTorch's modules and data, drawn in a fixed order from one seed."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(SEED)
    cell = torch.nn.GRUCell(I + H, H)
    key = torch.nn.Linear(H, A, bias=False)
    query = torch.nn.Linear(H, A, bias=False)
    score = torch.nn.Linear(A, 1, bias=False)
    encoder = torch.nn.GRU(I_SRC, H, batch_first=True)
    src = torch.randn(B, S, I_SRC)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        packed = pack_padded_sequence(src, torch.tensor(SRC_LENGTHS), batch_first=True,
                                      enforce_sorted=False)
        out, h_n = encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)
    p = {k: v.detach() for k, v in cell.state_dict().items()}
    p["W_k"] = key.weight.detach()
    p["W_q"] = query.weight.detach()
    p["v"] = score.weight.detach().reshape(A) * V_SCALE
    p = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in p.items()}
    mask = np.where(np.arange(S)[None, :] < np.array(SRC_LENGTHS)[:, None], 0.0, MASK)
    return p, {
        "x": x.numpy().astype(np.float32),
        "memory": np.ascontiguousarray(memory.numpy(), dtype=np.float32),
        "mask": mask.astype(np.float32),
        "h0": np.ascontiguousarray(h_n[0].numpy(), dtype=np.float32),
    }


def torch_decoder(p, d, lengths):
    """The decoder in float64 torch, the whole batch per step; outputs past a length are zero
    and the state stops at each sequence's last step."""
    import torch

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
    cell = torch.nn.GRUCell(I + H, H).double()
    cell.load_state_dict({k: t[k] for k in GRU})
    x, memory, mask, h = (torch.tensor(d[k], dtype=torch.float64)
                          for k in ("x", "memory", "mask", "h0"))
    n = torch.tensor(lengths)
    keys = memory @ t["W_k"].T  # [B, S, A]
    ys, aligns = [], []
    with torch.no_grad():
        for s in range(T):
            e = torch.tanh(keys + (h @ t["W_q"].T)[:, None, :]) @ t["v"] + mask  # [B, S]
            a = torch.softmax(e, dim=-1)
            c = torch.bmm(a[:, None, :], memory)[:, 0]  # [B, H]
            h_new = cell(torch.cat([x[:, s], c], dim=-1), h)
            live = (s < n)[:, None]
            h = torch.where(live, h_new, h)
            ys.append(torch.where(live, h_new, torch.zeros_like(h_new)))
            aligns.append(torch.where(live, a, torch.zeros_like(a)))
    return torch.stack(ys, 1).numpy(), torch.stack(aligns, 1).numpy(), h.numpy()


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_decoder(p, x, memory, h0, src_lengths, lengths):
    """The decoder from the definitions, float64, one sequence at a time, attending over the
    first src_lengths[b] positions of memory only."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    y, align, h_n = np.zeros((B, T, H)), np.zeros((B, T, S)), np.zeros((B, H))
    for b in range(B):
        m = memory[b, : src_lengths[b]].astype(np.float64)
        h = h0[b].astype(np.float64)
        for s in range(lengths[b]):
            e = np.array([p["v"] @ np.tanh(p["W_k"] @ m[j] + p["W_q"] @ h) for j in range(len(m))])
            w = np.exp(e - e.max())
            a = w / w.sum()
            c = a @ m
            gi = p["weight_ih"] @ np.concatenate([x[b, s], c]) + p["bias_ih"]
            gh = p["weight_hh"] @ h + p["bias_hh"]
            r = sigmoid(gi[:H] + gh[:H])
            z = sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
            n = np.tanh(gi[2 * H :] + r * gh[2 * H :])
            h = (1 - z) * n + z * h
            y[b, s] = h
            align[b, s, : len(m)] = a
        h_n[b] = h
    return y, align, h_n


def manifest():
    """case.txt: the contexts are inputs like any other; the state's initial value is `in h`,
    its final value `out h`."""
    return "\n".join(["seq " + SEQ, "weights weights.safetensors",
                      "dims I=%d,H=%d,S=%d,A=%d" % (I, H, S, A), "in x=x.npy",
                      "in memory=memory.npy", "in mask=mask.npy", "in h=h0.npy",
                      "in lengths=lengths.npy", "out y=y.npy", "out align=align.npy",
                      "out h=h_n.npy", "tol " + TOL]) + "\n"


def write():
    p, d = make_inputs()
    y, align, h_n = torch_decoder(p, d, LENGTHS)
    files = dict(d, lengths=np.array(LENGTHS, dtype=np.int64), y=y.astype(np.float32),
                 align=align.astype(np.float32), h_n=h_n.astype(np.float32))
    write_case(os.path.join(FIXTURES, NAME), p, files, manifest())


def self_check():
    d = os.path.join(FIXTURES, NAME)
    with open(os.path.join(d, "case.txt")) as f:
        assert f.read() == manifest(), "case.txt differs from the script's manifest"
    p = read_safetensors(os.path.join(d, "weights.safetensors"))
    assert sorted(p) == sorted(NAMES), sorted(p)
    shapes = {"W_k": (A, H), "W_q": (A, H), "v": (A,), "weight_ih": (3 * H, I + H),
              "weight_hh": (3 * H, H), "bias_ih": (3 * H,), "bias_hh": (3 * H,)}
    assert all(p[k].shape == shapes[k] for k in NAMES), {k: p[k].shape for k in NAMES}
    f = {k: np.load(os.path.join(d, k + ".npy"))
         for k in ("x", "memory", "mask", "h0", "lengths", "y", "align", "h_n")}
    want = {"x": (B, T, I), "memory": (B, S, H), "mask": (B, S), "h0": (B, H), "lengths": (B,),
            "y": (B, T, H), "align": (B, T, S), "h_n": (B, H)}
    for k, shape in want.items():
        dtype = np.int64 if k == "lengths" else np.float32
        assert f[k].shape == shape and f[k].dtype == dtype, (k, f[k].shape, f[k].dtype)
    lengths = [int(n) for n in f["lengths"]]
    assert all(1 <= n <= T for n in lengths) and min(lengths) < T, lengths
    # The mask is 0 then -1e9, and memory (the packed encoder's output) is zero after the source.
    src_lengths = [int(n) for n in (f["mask"] == 0).sum(1)]
    for b, m in enumerate(src_lengths):
        assert 1 <= m <= S and not f["mask"][b, :m].any() and (f["mask"][b, m:] == MASK).all()
        assert not f["memory"][b, m:].any() and f["memory"][b, :m].all()
    for b, n in enumerate(lengths):
        assert not f["y"][b, n:].any() and not f["align"][b, n:].any(), "output past the end"
        assert not f["align"][b, :, src_lengths[b] :].any(), "weight on the padding"
    ref = numpy_decoder(p, f["x"], f["memory"], f["h0"], src_lengths, lengths)
    err = max(float(np.max(np.abs(r - f[k]))) for r, k in zip(ref, ("y", "align", "h_n")))
    return report(NAME, d, err, float(TOL))


if __name__ == "__main__":
    sys.exit(main(__doc__, write, self_check))
