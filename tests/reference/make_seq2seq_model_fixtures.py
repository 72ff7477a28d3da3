#!/usr/bin/env python3
"""Write the seq2seq model reference fixture (tests/reference/fixtures/torch_seq2seq_model/).

    python3 tests/reference/make_seq2seq_model_fixtures.py               # write, then self-check
    python3 tests/reference/make_seq2seq_model_fixtures.py --self-check  # re-check what is on disk

The model is examples/seq2seq.seq: the encoder and the decoder of a sequence-to-sequence model
with Bahdanau's additive attention in one model. The encoder (layer `encoder`, std GRU) is a
real torch.nn.GRU(I_SRC, H, batch_first=True) run over the whole padded source, src
[B, S, I_SRC] (torch.randn, the padding included: it is not zero), all S positions, without
packing, from a zero state, as seqc runs a layer over a context; its outputs are memory
[B, S, H]. The source lengths [6, 4, 3] (unsorted; the first fills S) reach the model only
through mask [B, S], 0 at a source's positions and -1e9 after them, so the padding gets exactly
zero weight (exp(-1e9) underflows, in float64 and in float32). A forward GRU's outputs at a
source's positions do not depend on the padding after them: checked when writing, they equal
those of a packed run (pack_padded_sequence, enforce_sorted=False) to 3e-17 in float64 (0
with torch 1.13; asserted within 1e-12), and the packed run's h_n is the unpacked output at
each source's last position. The decoder (layer `decoder`, examples/attention_decoder.seq)
starts from decoder.h = the encoder's output at each source's last position (its state at the
source's end, as seq2seq models do; given as the input state `decoder.h`) and runs over
x [B, T, I] (torch.randn) with unsorted target lengths [5, 7, 2]. B=3, S=6, T=7, I_SRC=5,
I=4, H=8, A=6. Per step, with h the decoder's state:

    keys = memory W_k^T;  e = tanh(keys + W_q h) v + mask;  a = softmax(e);  c = a memory
    h' = GRUCell([x, c], h);  y = h';  align = a

The parameters come from PyTorch modules with their default initialisation, all drawn after
torch.manual_seed(SEED), stored as F32 under the model's flat names: decoder.weight_ih
[3H, I+H], decoder.weight_hh, decoder.bias_ih, decoder.bias_hh from torch.nn.GRUCell(I + H, H)
(gate rows r, z, n); decoder.W_k, decoder.W_q from bias-free torch.nn.Linear(H, A); decoder.v
from torch.nn.Linear(A, 1, bias=False), its weight reshaped to [A] and multiplied by
V_SCALE = 8 (as in make_seq2seq_fixtures.py: unscaled, the largest weight per step is 0.18,
0.26 and 0.34 over the 6, 4 and 3 positions of the sources, uniform being 0.17, 0.25 and 0.33,
and dropping the query W_q h moves y by only 2e-4; scaled, the largest weight is 0.31, 0.38 and
0.41, and dropping the query moves y by 2e-3 and align by 2e-2); encoder.weight_ih,
encoder.weight_hh, encoder.bias_ih, encoder.bias_hh from the torch.nn.GRU's weight_ih_l0,
weight_hh_l0, bias_ih_l0, bias_hh_l0.

The expected outputs are PyTorch's, computed in float64 from the float32 weights and inputs
(the encoder through a float64 torch.nn.GRU, the decoder's step through a float64
torch.nn.GRUCell, loaded with the same weights): y [B, T, H] and align [B, T, S], exactly zero
past a target's length (seqc's convention); decoder.h, each sequence's decoder state after its
step lengths[b] - 1; and encoder.h, the encoder's state after all S positions, the padding
included (h_n of the unpacked run: that is what seqc computes, the encoder runs over every
position of the context, whatever the mask; it is not each source's state at its end).

The self-check recomputes the model in float64 NumPy from the definitions, without torch: the
encoder's GRU over all S positions of each source (memory and encoder.h), then the decoder one
sequence at a time attending only over the source's own positions (no mask: the mask's layout
is checked separately), and requires torch's stored outputs to agree within TOL / 4 (they agree
to 2.8e-8, the float32 rounding of the stored values); decoder.h's initial value must be that
encoder output at each source's last position (within 1e-7, its float32 rounding). Mutations
of that recomputation (measured, max abs change of y; of align or encoder.h where larger):
encoder.h taken at each source's end (a packed run's h_n) 0 (encoder.h 0.65); dropping the
query 2e-3 (align 2e-2); attending over the padding (no mask; memory is not zero there) 0.12
(align 0.24); uniform attention 4e-2 (align 0.15); W_k and W_q swapped 5e-2 (align 0.22);
concat(c, x) for concat(x, c) 1.1; the encoder's gates r and z swapped 7e-2 (encoder.h 0.13);
the encoder's weight_hh blocks transposed 8e-2 (encoder.h 0.19).

TOL = 2e-5, as for the other attention fixtures. The outputs are at most 1 in size (GRU states
and probabilities); seqc in float32 is within 6e-8 (interp) and 9.7e-8 (cpu) of them, and
the interpreter with --f64 within 2.8e-8 (the stored values' rounding), so 2e-5 leaves a wide
margin for other summation orders while the smallest mutation above is 100 times larger.

Needs torch, numpy and safetensors for writing; numpy for the self-check.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAME = "torch_seq2seq_model"
SEQ = "examples/seq2seq.seq"
B, S, T = 3, 6, 7
I_SRC, I, H, A = 5, 4, 8, 6
SRC_LENGTHS = [6, 4, 3]  # unsorted; the first fills S
LENGTHS = [5, 7, 2]  # unsorted, all >= 1, the second fills T
V_SCALE = 8.0
MASK = -1e9  # exact in float32
SEED = 602
TOL = "2e-5"
GRU = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
DECODER = ("W_k", "W_q", "v") + GRU
NAMES = tuple("encoder." + k for k in GRU) + tuple("decoder." + k for k in DECODER)
SHAPES = {"encoder.weight_ih": (3 * H, I_SRC), "encoder.weight_hh": (3 * H, H),
          "encoder.bias_ih": (3 * H,), "encoder.bias_hh": (3 * H,),
          "decoder.W_k": (A, H), "decoder.W_q": (A, H), "decoder.v": (A,),
          "decoder.weight_ih": (3 * H, I + H), "decoder.weight_hh": (3 * H, H),
          "decoder.bias_ih": (3 * H,), "decoder.bias_hh": (3 * H,)}
FILES = {"x": (B, T, I), "src": (B, S, I_SRC), "mask": (B, S), "lengths": (B,),
         "h0_decoder": (B, H), "y": (B, T, H), "align": (B, T, S), "h_n_decoder": (B, H),
         "h_n_encoder": (B, H)}


def make_inputs():
    """PyTorch's modules and data, drawn in a fixed order from one seed; the weights and data
    rounded to float32 (what the fixture stores)."""
    import torch

    torch.manual_seed(SEED)
    cell = torch.nn.GRUCell(I + H, H)
    key = torch.nn.Linear(H, A, bias=False)
    query = torch.nn.Linear(H, A, bias=False)
    score = torch.nn.Linear(A, 1, bias=False)
    encoder = torch.nn.GRU(I_SRC, H, batch_first=True)
    src = torch.randn(B, S, I_SRC)
    x = torch.randn(B, T, I)
    p = {"decoder." + k: v.detach() for k, v in cell.state_dict().items()}
    p["decoder.W_k"] = key.weight.detach()
    p["decoder.W_q"] = query.weight.detach()
    p["decoder.v"] = score.weight.detach().reshape(A) * V_SCALE
    p.update({"encoder." + k: encoder.state_dict()[k + "_l0"].detach() for k in GRU})
    p = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in p.items()}
    mask = np.where(np.arange(S)[None, :] < np.array(SRC_LENGTHS)[:, None], 0.0, MASK)
    return p, {"x": x.numpy().astype(np.float32), "src": src.numpy().astype(np.float32),
               "mask": mask.astype(np.float32)}


def torch_encoder(p, src):
    """The encoder in float64 torch over all S positions (memory [B, S, H], h_n [B, H]); checks
    that a packed run gives the same outputs at the sources' positions."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    encoder = torch.nn.GRU(I_SRC, H, batch_first=True).double()
    encoder.load_state_dict({k + "_l0": torch.tensor(p["encoder." + k], dtype=torch.float64)
                             for k in GRU})
    s = torch.tensor(src, dtype=torch.float64)
    with torch.no_grad():
        memory, h_n = encoder(s)
        packed = pack_padded_sequence(s, torch.tensor(SRC_LENGTHS), batch_first=True,
                                      enforce_sorted=False)
        out, h_end = encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)
    memory, h_n, out, h_end = (v.numpy() for v in (memory, h_n[0], out, h_end[0]))
    err = 0.0
    for b, m in enumerate(SRC_LENGTHS):
        err = max(err, float(np.max(np.abs(out[b, :m] - memory[b, :m]))),
                  float(np.max(np.abs(h_end[b] - memory[b, m - 1]))))
    assert err <= 1e-12, "packed and unpacked encoder runs differ by %.2e" % err
    print("%s packed vs unpacked encoder at the sources' positions: %.2e" % (NAME, err))
    return memory, h_n


def torch_decoder(p, d, memory, lengths):
    """The decoder in float64 torch, the whole batch per step; outputs past a length are zero
    and the state stops at each sequence's last step."""
    import torch

    t = {k[len("decoder."):]: torch.tensor(v, dtype=torch.float64)
         for k, v in p.items() if k.startswith("decoder.")}
    cell = torch.nn.GRUCell(I + H, H).double()
    cell.load_state_dict({k: t[k] for k in GRU})
    x, mask, h = (torch.tensor(d[k], dtype=torch.float64) for k in ("x", "mask", "h0_decoder"))
    memory = torch.tensor(memory, dtype=torch.float64)
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


def gru_step(w_ih, w_hh, b_ih, b_hh, x, h):
    """PyTorch's GRU step: gates r, z, n; n = tanh(W_in x + b_in + r (W_hn h + b_hn))."""
    gi = w_ih @ x + b_ih
    gh = w_hh @ h + b_hh
    r = sigmoid(gi[:H] + gh[:H])
    z = sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
    n = np.tanh(gi[2 * H :] + r * gh[2 * H :])
    return (1 - z) * n + z * h


def numpy_encoder(p, src):
    """The encoder from the definitions, float64, over all S positions of each source from a
    zero state: memory [B, S, H] and the state after position S - 1."""
    w = [p["encoder." + k].astype(np.float64) for k in GRU]
    memory, h_n = np.zeros((B, S, H)), np.zeros((B, H))
    for b in range(B):
        h = np.zeros(H)
        for s in range(S):
            h = gru_step(*w, src[b, s].astype(np.float64), h)
            memory[b, s] = h
        h_n[b] = h
    return memory, h_n


def numpy_decoder(p, x, memory, h0, src_lengths, lengths):
    """The decoder from the definitions, float64, one sequence at a time, attending over the
    first src_lengths[b] positions of memory only."""
    p = {k[len("decoder."):]: v.astype(np.float64) for k, v in p.items()
         if k.startswith("decoder.")}
    w = [p[k] for k in GRU]
    y, align, h_n = np.zeros((B, T, H)), np.zeros((B, T, S)), np.zeros((B, H))
    for b in range(B):
        m = memory[b, : src_lengths[b]]
        h = h0[b].astype(np.float64)
        for s in range(lengths[b]):
            e = np.array([p["v"] @ np.tanh(p["W_k"] @ m[j] + p["W_q"] @ h) for j in range(len(m))])
            u = np.exp(e - e.max())
            a = u / u.sum()
            c = a @ m
            h = gru_step(*w, np.concatenate([x[b, s].astype(np.float64), c]), h)
            y[b, s] = h
            align[b, s, : len(m)] = a
        h_n[b] = h
    return y, align, h_n


def manifest():
    """case.txt: the contexts are inputs like any other; the decoder's state is given and
    checked as decoder.h, the encoder's final state checked as encoder.h."""
    return "\n".join([
        "seq " + SEQ, "weights weights.safetensors",
        "dims I_src=%d,I=%d,H=%d,S=%d,A=%d" % (I_SRC, I, H, S, A),
        "in x=x.npy", "in src=src.npy", "in mask=mask.npy", "in lengths=lengths.npy",
        "in decoder.h=h0_decoder.npy", "out y=y.npy", "out align=align.npy",
        "out decoder.h=h_n_decoder.npy", "out encoder.h=h_n_encoder.npy", "tol " + TOL]) + "\n"


def write():
    from safetensors.numpy import save_file

    p, d = make_inputs()
    memory, h_n_encoder = torch_encoder(p, d["src"])
    # The decoder starts from each source's encoder state at its end, rounded to float32.
    d["h0_decoder"] = np.stack([memory[b, m - 1] for b, m in enumerate(SRC_LENGTHS)])
    d["h0_decoder"] = d["h0_decoder"].astype(np.float32)
    y, align, h_n = torch_decoder(p, d, memory, LENGTHS)
    out = os.path.join(FIXTURES, NAME)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):  # a regenerated case must not keep stale files
        os.remove(os.path.join(out, f))
    save_file(dict(sorted(p.items())), os.path.join(out, "weights.safetensors"))
    files = dict(d, lengths=np.array(LENGTHS, dtype=np.int64), y=y.astype(np.float32),
                 align=align.astype(np.float32), h_n_decoder=h_n.astype(np.float32),
                 h_n_encoder=h_n_encoder.astype(np.float32))
    for k, v in files.items():
        np.save(os.path.join(out, k + ".npy"), v)
    with open(os.path.join(out, "case.txt"), "w") as f:
        f.write(manifest())


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", "%s is %s, want F32" % (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
    return out


def self_check():
    d = os.path.join(FIXTURES, NAME)
    with open(os.path.join(d, "case.txt")) as f:
        assert f.read() == manifest(), "case.txt differs from the script's manifest"
    p = read_safetensors(os.path.join(d, "weights.safetensors"))
    assert sorted(p) == sorted(NAMES), sorted(p)
    assert all(p[k].shape == SHAPES[k] for k in NAMES), {k: p[k].shape for k in NAMES}
    assert sorted(os.listdir(d)) == sorted([k + ".npy" for k in FILES] +
                                           ["case.txt", "weights.safetensors"]), os.listdir(d)
    f = {k: np.load(os.path.join(d, k + ".npy")) for k in FILES}
    for k, shape in FILES.items():
        dtype = np.int64 if k == "lengths" else np.float32
        assert f[k].shape == shape and f[k].dtype == dtype, (k, f[k].shape, f[k].dtype)
    lengths = [int(n) for n in f["lengths"]]
    assert all(1 <= n <= T for n in lengths) and min(lengths) < T, lengths
    # The mask is 0 then -1e9; the source is not zero at the padding (the encoder reads it).
    src_lengths = [int(n) for n in (f["mask"] == 0).sum(1)]
    for b, m in enumerate(src_lengths):
        assert 1 <= m <= S and not f["mask"][b, :m].any() and (f["mask"][b, m:] == MASK).all()
        assert f["src"][b].all()
    assert min(src_lengths) < S, src_lengths
    for b, n in enumerate(lengths):
        assert not f["y"][b, n:].any() and not f["align"][b, n:].any(), "output past the end"
        assert not f["align"][b, :, src_lengths[b] :].any(), "weight on the padding"
    memory, h_n_encoder = numpy_encoder(p, f["src"])
    h0 = np.stack([memory[b, m - 1] for b, m in enumerate(src_lengths)])
    h0_err = float(np.max(np.abs(h0 - f["h0_decoder"])))
    assert h0_err <= 1e-7, "decoder.h is not the encoder's state at the source's end: %.2e" % h0_err
    ref = numpy_decoder(p, f["x"], memory, f["h0_decoder"], src_lengths, lengths) + (h_n_encoder,)
    err = max(float(np.max(np.abs(r - f[k])))
              for r, k in zip(ref, ("y", "align", "h_n_decoder", "h_n_encoder")))
    good = err <= float(TOL) / 4
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    print("%s self-check err %.2e %s (%d bytes)" % (NAME, err, "ok" if good else "FAIL", size))
    return good


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    if not args.self_check:
        import torch

        torch.set_num_threads(1)  # one summation order, whatever the machine
        write()
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
