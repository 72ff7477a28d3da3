#!/usr/bin/env python3
"""Write the seq2seq model reference fixture (tests/reference/fixtures/torch_seq2seq_model/).

    python3 tests/reference/make_seq2seq_model_fixtures.py               # write, then self-check
    python3 tests/reference/make_seq2seq_model_fixtures.py --self-check  # re-check what is on disk

The model is examples/seq2seq.seq: the encoder and the decoder of a sequence-to-sequence model
with Bahdanau's additive attention in one model. The encoder is Bahdanau's bidirectional GRU: a
real torch.nn.GRU(I_SRC, H, batch_first=True, bidirectional=True) run over the padded source
src [B, S, I_SRC] (torch.randn, the padding included: it is not zero, so a direction that read
it would differ) through pack_padded_sequence(enforce_sorted=False) /
pad_packed_sequence(total_length=S) with the source lengths src_len = [4, 6, 3] (unsorted, not
decreasing; the second fills S), as seqc runs `encoder(src, lengths=src_len)` and
`encoder_back(src, lengths=src_len)` (a reverse layer: from each source's last position down to
0). Its outputs, forward then backward, are memory [B, S, 2H], zero at the padding; its h_n[0]
is the forward direction's state at each source's end and h_n[1] the backward one's after its
step at position 0. mask [B, S] is 0 at a source's positions and -1e9 after them, so the padding
gets exactly zero weight (exp(-1e9) underflows, in float64 and in float32). The decoder (layer
`decoder`, examples/attention_decoder.seq with state and memory width D = 2H) starts from
decoder.h = [h_n[0], h_n[1]] (both directions' final states side by side, what the packed
bidirectional GRU returns; given as the input state `decoder.h`) and runs over x [B, T, I]
(torch.randn) with unsorted target lengths [5, 7, 2]. B=3, S=6, T=7, I_SRC=5, I=4, H=8, D=16,
A=6. Per step, with h the decoder's state:

    keys = memory W_k^T;  e = tanh(keys + W_q h) v + mask;  a = softmax(e);  c = a memory
    h' = GRUCell([x, c], h);  y = h';  align = a

The parameters come from PyTorch modules with their default initialisation, all drawn after
torch.manual_seed(SEED), stored as F32 under the model's flat names: decoder.weight_ih
[3D, I+D], decoder.weight_hh, decoder.bias_ih, decoder.bias_hh from torch.nn.GRUCell(I + D, D)
(gate rows r, z, n); decoder.W_k, decoder.W_q from bias-free torch.nn.Linear(D, A); decoder.v
from torch.nn.Linear(A, 1, bias=False), its weight reshaped to [A] and multiplied by
V_SCALE = 8 (as in make_seq2seq_fixtures.py: unscaled, the largest weight per step is 0.26,
0.18 and 0.34 over the 4, 6 and 3 positions of the sources, uniform being 0.25, 0.17 and 0.33,
and dropping the query W_q h moves y by only 5e-4; scaled, the largest weight is 0.30, 0.23 and
0.39, and dropping the query moves y by 3e-3 and align by 1e-2); encoder.weight_ih,
encoder.weight_hh, encoder.bias_ih, encoder.bias_hh from the torch.nn.GRU's weight_ih_l0,
weight_hh_l0, bias_ih_l0, bias_hh_l0, and encoder_back.* from weight_ih_l0_reverse, ...

The expected outputs are PyTorch's, computed in float64 from the float32 weights and inputs
(the encoder through a float64 packed bidirectional torch.nn.GRU, the decoder's step through a
float64 torch.nn.GRUCell, loaded with the same weights): y [B, T, 2H] and align [B, T, S],
exactly zero past a target's length (seqc's convention); decoder.h, each sequence's decoder
state after its step lengths[b] - 1; encoder.h = h_n[0] and encoder_back.h = h_n[1]. src_len
and lengths are int64 [B].

The self-check recomputes the model in float64 NumPy from the definitions, without torch: each
encoder direction from a zero state over the first src_len[b] positions of each source only
(forward 0 .. src_len[b] - 1, backward src_len[b] - 1 .. 0; memory zero after them), then the
decoder one sequence at a time attending only over the source's own positions (no mask: the
mask's layout is checked against src_len separately), and requires torch's stored outputs to
agree within TOL / 4 (they agree to 2.9e-8, the float32 rounding of the stored values);
decoder.h's initial value must be the two final states side by side (within 1e-7, its float32
rounding). Mutations of that recomputation (measured, max abs change of y; of align or of a
final state where larger): both directions over all S positions, unpacked (decoder.h as given)
4.4e-2 (encoder.h 0.82, encoder_back.h 0.10); encoder_back.h taken after its first step, at
src_len[b] - 1, 0.43 (encoder_back.h 0.83); the backward direction not reversed 0.46
(encoder_back.h 0.90); the directions' weights swapped 0.52 (encoder_back.h 1.0); memory
concat(backward, forward) 0.19; the encoder's gates r and z swapped 9e-2 (forward; encoder.h
0.18) and 0.21 (backward; encoder_back.h 0.30); the encoders' weight_hh blocks transposed 7e-2
(encoder.h 0.14) and 0.11 (encoder_back.h 0.20); the decoder from a zero state 0.36; dropping the
query 3.2e-3 (align 1e-2); attending over the padding (no mask; memory is zero there) 4.9e-2
(align 0.17); uniform attention 4e-2 (align 0.10); W_k and W_q swapped 6.8e-2 (align 0.11);
concat(c, x) for concat(x, c) 0.92.

TOL = 2e-5, as for the other attention fixtures. The outputs are at most 1 in size (GRU states
and probabilities); seqc in float32 is within 1.2e-7 (interp; 6e-8 but for encoder.h) and
7.5e-8 (cpu) of them, and the interpreter with --f64 within 2.9e-8 (the stored values'
rounding), so 2e-5 leaves a wide margin for other summation orders while the smallest mutation
above is 160 times larger.

Needs torch, numpy and safetensors for writing; numpy for the self-check. Debian's torch 1.13
and PyPI's torch 2.15 write byte-identical files.
"""

import os
import sys

import numpy as np

from fixture_io import main, read_safetensors, report, write_case

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAME = "torch_seq2seq_model"
SEQ = "examples/seq2seq.seq"
B, S, T = 3, 6, 7
I_SRC, I, H, A = 5, 4, 8, 6
D = 2 * H  # the decoder's state and memory width: the two directions side by side
SRC_LENGTHS = [4, 6, 3]  # unsorted (not decreasing); the second fills S
LENGTHS = [5, 7, 2]  # unsorted, all >= 1, the second fills T
V_SCALE = 8.0
MASK = -1e9  # exact in float32
SEED = 602
TOL = "2e-5"
GRU = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
DECODER = ("W_k", "W_q", "v") + GRU
ENCODERS = {"encoder": "_l0", "encoder_back": "_l0_reverse"}  # layer: nn.GRU's suffix
NAMES = tuple(e + "." + k for e in ENCODERS for k in GRU) + tuple("decoder." + k for k in DECODER)
SHAPES = {"decoder.W_k": (A, D), "decoder.W_q": (A, D), "decoder.v": (A,),
          "decoder.weight_ih": (3 * D, I + D), "decoder.weight_hh": (3 * D, D),
          "decoder.bias_ih": (3 * D,), "decoder.bias_hh": (3 * D,)}
for _e in ENCODERS:
    SHAPES.update({_e + ".weight_ih": (3 * H, I_SRC), _e + ".weight_hh": (3 * H, H),
                   _e + ".bias_ih": (3 * H,), _e + ".bias_hh": (3 * H,)})
FILES = {"x": (B, T, I), "src": (B, S, I_SRC), "src_len": (B,), "mask": (B, S), "lengths": (B,),
         "h0_decoder": (B, D), "y": (B, T, D), "align": (B, T, S), "h_n_decoder": (B, D),
         "h_n_encoder": (B, H), "h_n_encoder_back": (B, H)}
INTS = ("src_len", "lengths")


def make_inputs():
    """PyTorch's modules and data, drawn in a fixed order from one seed; the weights and data
    rounded to float32 (what the fixture stores)."""
    import torch

    torch.manual_seed(SEED)
    cell = torch.nn.GRUCell(I + D, D)
    key = torch.nn.Linear(D, A, bias=False)
    query = torch.nn.Linear(D, A, bias=False)
    score = torch.nn.Linear(A, 1, bias=False)
    encoder = torch.nn.GRU(I_SRC, H, batch_first=True, bidirectional=True)
    src = torch.randn(B, S, I_SRC)
    x = torch.randn(B, T, I)
    p = {"decoder." + k: v.detach() for k, v in cell.state_dict().items()}
    p["decoder.W_k"] = key.weight.detach()
    p["decoder.W_q"] = query.weight.detach()
    p["decoder.v"] = score.weight.detach().reshape(A) * V_SCALE
    sd = encoder.state_dict()
    p.update({e + "." + k: sd[k + suffix].detach() for e, suffix in ENCODERS.items() for k in GRU})
    p = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in p.items()}
    mask = np.where(np.arange(S)[None, :] < np.array(SRC_LENGTHS)[:, None], 0.0, MASK)
    return p, {"x": x.numpy().astype(np.float32), "src": src.numpy().astype(np.float32),
               "mask": mask.astype(np.float32)}


def torch_encoder(p, src):
    """Bahdanau's encoder in float64 torch: a bidirectional nn.GRU over the packed sources
    (memory [B, S, 2H], zero at the padding; h_n [2, B, H], each direction's final state)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    encoder = torch.nn.GRU(I_SRC, H, batch_first=True, bidirectional=True).double()
    encoder.load_state_dict({k + suffix: torch.tensor(p[e + "." + k], dtype=torch.float64)
                             for e, suffix in ENCODERS.items() for k in GRU})
    s = torch.tensor(src, dtype=torch.float64)
    with torch.no_grad():
        packed = pack_padded_sequence(s, torch.tensor(SRC_LENGTHS), batch_first=True,
                                      enforce_sorted=False)
        out, h_n = encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)
    return memory.numpy(), h_n.numpy()


def torch_decoder(p, d, memory, lengths):
    """The decoder in float64 torch, the whole batch per step; outputs past a length are zero
    and the state stops at each sequence's last step."""
    import torch

    t = {k[len("decoder."):]: torch.tensor(v, dtype=torch.float64)
         for k, v in p.items() if k.startswith("decoder.")}
    cell = torch.nn.GRUCell(I + D, D).double()
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
            c = torch.bmm(a[:, None, :], memory)[:, 0]  # [B, 2H]
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
    n_ = len(h)
    gi = w_ih @ x + b_ih
    gh = w_hh @ h + b_hh
    r = sigmoid(gi[:n_] + gh[:n_])
    z = sigmoid(gi[n_ : 2 * n_] + gh[n_ : 2 * n_])
    n = np.tanh(gi[2 * n_ :] + r * gh[2 * n_ :])
    return (1 - z) * n + z * h


def numpy_encoder(p, src, src_lengths):
    """The encoder from the definitions, float64, each direction from a zero state over the
    first src_lengths[b] positions only (the backward one from position src_lengths[b] - 1
    down to 0): memory [B, S, 2H], forward then backward, zero at the padding, and each
    direction's final state (forward: after position src_lengths[b] - 1; backward: after 0)."""
    memory, h_n = np.zeros((B, S, D)), np.zeros((2, B, H))
    for j, e in enumerate(ENCODERS):
        w = [p[e + "." + k].astype(np.float64) for k in GRU]
        for b, m in enumerate(src_lengths):
            h = np.zeros(H)
            for s in (range(m) if j == 0 else range(m - 1, -1, -1)):
                h = gru_step(*w, src[b, s].astype(np.float64), h)
                memory[b, s, j * H : (j + 1) * H] = h
            h_n[j, b] = h
    return memory, h_n


def numpy_decoder(p, x, memory, h0, src_lengths, lengths):
    """The decoder from the definitions, float64, one sequence at a time, attending over the
    first src_lengths[b] positions of memory only."""
    p = {k[len("decoder."):]: v.astype(np.float64) for k, v in p.items()
         if k.startswith("decoder.")}
    w = [p[k] for k in GRU]
    y, align, h_n = np.zeros((B, T, D)), np.zeros((B, T, S)), np.zeros((B, D))
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
    """case.txt: the contexts are inputs like any other (src_len an int one); the decoder's
    state is given and checked as decoder.h, the directions' final states checked as
    encoder.h and encoder_back.h."""
    return "\n".join([
        "seq " + SEQ, "weights weights.safetensors",
        "dims I_src=%d,I=%d,H=%d,S=%d,A=%d" % (I_SRC, I, H, S, A),
        "in x=x.npy", "in src=src.npy", "in src_len=src_len.npy", "in mask=mask.npy",
        "in lengths=lengths.npy", "in decoder.h=h0_decoder.npy", "out y=y.npy",
        "out align=align.npy", "out decoder.h=h_n_decoder.npy", "out encoder.h=h_n_encoder.npy",
        "out encoder_back.h=h_n_encoder_back.npy", "tol " + TOL]) + "\n"


def write():
    p, d = make_inputs()
    memory, h_n_encoder = torch_encoder(p, d["src"])
    # The decoder starts from both directions' final states side by side (the packed run's
    # h_n[0] and h_n[1]), rounded to float32.
    d["h0_decoder"] = np.concatenate([h_n_encoder[0], h_n_encoder[1]], axis=1).astype(np.float32)
    y, align, h_n = torch_decoder(p, d, memory, LENGTHS)
    files = dict(d, src_len=np.array(SRC_LENGTHS, dtype=np.int64),
                 lengths=np.array(LENGTHS, dtype=np.int64), y=y.astype(np.float32),
                 align=align.astype(np.float32), h_n_decoder=h_n.astype(np.float32),
                 h_n_encoder=h_n_encoder[0].astype(np.float32),
                 h_n_encoder_back=h_n_encoder[1].astype(np.float32))
    write_case(os.path.join(FIXTURES, NAME), p, files, manifest())


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
        dtype = np.int64 if k in INTS else np.float32
        assert f[k].shape == shape and f[k].dtype == dtype, (k, f[k].shape, f[k].dtype)
    lengths = [int(n) for n in f["lengths"]]
    assert all(1 <= n <= T for n in lengths) and min(lengths) < T, lengths
    src_lengths = [int(n) for n in f["src_len"]]
    assert all(1 <= m <= S for m in src_lengths) and min(src_lengths) < S, src_lengths
    assert src_lengths != sorted(src_lengths, reverse=True), "source lengths sorted"
    # The mask is 0 then -1e9 at src_len; the source is not zero at the padding (a direction
    # that read it would differ).
    for b, m in enumerate(src_lengths):
        assert not f["mask"][b, :m].any() and (f["mask"][b, m:] == MASK).all()
        assert f["src"][b].all()
    for b, n in enumerate(lengths):
        assert not f["y"][b, n:].any() and not f["align"][b, n:].any(), "output past the end"
        assert not f["align"][b, :, src_lengths[b] :].any(), "weight on the padding"
    memory, h_n_encoder = numpy_encoder(p, f["src"], src_lengths)
    h0 = np.concatenate([h_n_encoder[0], h_n_encoder[1]], axis=1)
    h0_err = float(np.max(np.abs(h0 - f["h0_decoder"])))
    assert h0_err <= 1e-7, "decoder.h is not the directions' final states: %.2e" % h0_err
    ref = numpy_decoder(p, f["x"], memory, f["h0_decoder"], src_lengths, lengths)
    ref += (h_n_encoder[0], h_n_encoder[1])
    err = max(float(np.max(np.abs(r - f[k]))) for r, k in
              zip(ref, ("y", "align", "h_n_decoder", "h_n_encoder", "h_n_encoder_back")))
    return report(NAME, d, err, float(TOL))


if __name__ == "__main__":
    sys.exit(main(__doc__, write, self_check))
