#!/usr/bin/env python3
"""Write the pointer network reference fixture (tests/reference/fixtures/torch_pointer/).

    python3 tests/reference/make_pointer_fixtures.py               # write, then self-check
    python3 tests/reference/make_pointer_fixtures.py --self-check  # re-check what is on disk

The model is examples/pointer_network.seq: a Pointer Network's decoder (Vinyals, Fortunato &
Jaitly 2015, section 2.3), an LSTM whose output per step is a distribution over the items of
its input set, on the sorting task (the simplest pointer task; the paper's are convex hulls,
Delaunay triangulations and the TSP). The input is B=3 sets of numbers, values [B, S]
(torch.rand, in [0, 1)), with unsorted set lengths [4, 6, 3] (the second fills S), each number
embedded as an I-vector by a torch.nn.Linear(1, I), items [B, S, I] (zero at the padding). The
encoder is a real torch.nn.LSTM(I, H, batch_first=True) run over the items through
pack_padded_sequence / pad_packed_sequence(total_length=S), so memory [B, S, H] is zero at the
padding; mask [B, S] is 0 at a set's items and -1e9 after them, the same at every step (a
context; masking the items already pointed to needs one call per step, as
examples/pointer_network.seq says; tried by hand, not in the fixture: T = 1 calls of seqc run,
the state carried from call to call and the targets of the earlier steps masked, agree with
NumPy within 2.1e-7 on both backends). The encoder's weights are not in the fixture: memory is
an input. The decoder starts from the encoder's final state (h0, c0 = h_n, c_n of the packed
run, each set's state at its end), as seq2seq models do, and reads x [B, T, I] built by teacher
forcing: x_0 is a start vector (torch.randn(I), standing in for a learned one, the same for
every set) and x_t, 1 <= t < n, is the item with the t-th smallest value (the target
permutation's step t - 1), for a set of n items; x is zero past n. Target lengths = set lengths
(T = S = 6). I=4, H=8, A=6. Per step, with (h, c) the state:

    (h', c') = LSTMCell(x, (h, c));  u_j = v . tanh(W1 e_j + W2 h');  probs = softmax(u + mask)
    y = h'

The decoder's parameters come from PyTorch modules with their default initialisation, all drawn
after torch.manual_seed(SEED): weight_ih [4H, I], weight_hh [4H, H], bias_ih, bias_hh from
torch.nn.LSTMCell(I, H) (gate rows i, f, g, o); W1, W2 from bias-free torch.nn.Linear(H, A),
multiplied by W_SCALE = 4; v from torch.nn.Linear(A, 1, bias=False), its weight reshaped to [A]
and multiplied by V_SCALE = 8. The embedding's weight is multiplied by EMBED_SCALE = 8 (the
numbers stay in [0, 1), like the paper's points in the unit square). Three scales, because at
the default initialisation the pointer is nearly blind: the encoder's outputs for different
items differ little (standard deviation over a set's items 0.02, memory at most 0.24 in size),
|W1 e_j| is at most 0.04, and in that near-linear range of tanh, W2 h' adds almost the same
amount to every u_j, which the softmax cancels. Unscaled, the largest probability per step is
0.17 to 0.33 over 3 to 6 items (uniform being 0.17 to 0.33) and W2 h', the only way the
decoder's state reaches the pointer, moves probs by only 2e-5 (1.6e-4 with V_SCALE alone).
Scaled, the standard deviation over a set's items is 0.07 (memory at most 0.84), |W1 e_j|
reaches 2, the largest probability per step is 0.47 to 0.74, and dropping W2 h' moves probs by
8e-2. (Untrained, the pointer picks the same item at every step; the constant mask allows
that.) All are stored as F32 under the .seq's names.

The expected outputs (probs [B, T, S], y [B, T, H], h_n, c_n [B, H]) are PyTorch's, computed in
float64 from the float32 weights and inputs (the LSTM step through a float64 torch.nn.LSTMCell
loaded with the same state_dict); outputs past a target's length are exactly zero (seqc's
convention) and h_n, c_n are each sequence's state after its step lengths[b] - 1. The padding
gets exactly zero probability: exp(-1e9) underflows, in float64 and in float32.

values.npy (the numbers) and items.npy (their embeddings, what the encoder read) are not in
case.txt; the self-check uses them to check the teacher forcing: x[b, t] is bit for bit the
item with the t-th smallest value, and the items are an affine function of the values.

The self-check recomputes the decoder in float64 NumPy from the definitions, without torch, one
sequence at a time, pointing only over the set's own items (no mask: the mask's layout and
memory's zero padding are checked separately), and requires torch's stored outputs to agree
within TOL / 4 (they agree to 5.5e-8, the float32 rounding of the stored values). Mutations of
that recomputation (measured, max abs change of probs): the pointer reading the state entering
the step (h, the decoder state of the step before) for h' 5.6e-2, dropping W2 h' 8.4e-2, the
forget and input gates swapped (rows f, i, g, o) 1.7e-2 (y: 0.21), pointing over the padding
(no mask; memory is zero there) 1.1e-2, W1 and W2 swapped 0.41, uniform 0.49.

TOL = 2e-5, as for the other attention fixtures. The outputs are at most 1.2 in size (probs are
probabilities, y an LSTM state, c_n at most 1.16); seqc in float32 is within 1.2e-7 of them with
the interpreter and 2.4e-7 with the CPU backend (1 to 4 ulps, probs the largest), so 2e-5
leaves a wide margin for other summation orders while the smallest mutation above is 550 times
larger.

Needs torch, numpy and safetensors for writing; numpy for the self-check.
"""

import os
import sys

import numpy as np

from fixture_io import main, read_safetensors, report, write_case

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAME = "torch_pointer"
SEQ = "examples/pointer_network.seq"
B, S, I, H, A = 3, 6, 4, 8, 6
T = S  # one pointer per item
LENGTHS = [4, 6, 3]  # set lengths = target lengths; unsorted, all >= 1, one fills S
EMBED_SCALE = 8.0
W_SCALE = 4.0
V_SCALE = 8.0
MASK = -1e9  # exact in float32
SEED = 602
TOL = "2e-5"
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "W1", "W2", "v")
LSTM = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def teacher_forcing(start, items, values, lengths):
    """x [B, T, I]: the start vector, then the items in increasing order of value, dropping the
    last (the decoder's input at step t is what it should have pointed to at step t - 1)."""
    x = np.zeros((B, T, I), dtype=np.float32)
    for b, n in enumerate(lengths):
        order = np.argsort(values[b, :n], kind="stable")
        x[b, 0] = start
        x[b, 1:n] = items[b, order[: n - 1]]
    return x


def make_inputs():
    """PyTorch's modules and data, drawn in a fixed order from one seed."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(SEED)
    cell = torch.nn.LSTMCell(I, H)
    w1 = torch.nn.Linear(H, A, bias=False)
    w2 = torch.nn.Linear(H, A, bias=False)
    score = torch.nn.Linear(A, 1, bias=False)
    embed = torch.nn.Linear(1, I)
    encoder = torch.nn.LSTM(I, H, batch_first=True)
    start = torch.randn(I)
    live = torch.arange(S)[None, :] < torch.tensor(LENGTHS)[:, None]  # [B, S]
    values = torch.rand(B, S) * live
    with torch.no_grad():
        embed.weight.mul_(EMBED_SCALE)
        items = embed(values[..., None]) * live[..., None]  # [B, S, I]
        packed = pack_padded_sequence(items, torch.tensor(LENGTHS), batch_first=True,
                                      enforce_sorted=False)
        out, (h_n, c_n) = encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)
    p = {k: v.detach() for k, v in cell.state_dict().items()}
    p["W1"] = w1.weight.detach() * W_SCALE
    p["W2"] = w2.weight.detach() * W_SCALE
    p["v"] = score.weight.detach().reshape(A) * V_SCALE
    p = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in p.items()}
    values = values.numpy().astype(np.float32)
    items = np.ascontiguousarray(items.numpy(), dtype=np.float32)
    mask = np.where(live.numpy(), 0.0, MASK)
    return p, {
        "x": teacher_forcing(start.numpy(), items, values, LENGTHS),
        "memory": np.ascontiguousarray(memory.numpy(), dtype=np.float32),
        "mask": mask.astype(np.float32),
        "h0": np.ascontiguousarray(h_n[0].numpy(), dtype=np.float32),
        "c0": np.ascontiguousarray(c_n[0].numpy(), dtype=np.float32),
    }, {"values": values, "items": items}


def torch_decoder(p, d, lengths):
    """The decoder in float64 torch, the whole batch per step; outputs past a length are zero
    and the state stops at each sequence's last step."""
    import torch

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
    cell = torch.nn.LSTMCell(I, H).double()
    cell.load_state_dict({k: t[k] for k in LSTM})
    x, memory, mask, h, c = (torch.tensor(d[k], dtype=torch.float64)
                             for k in ("x", "memory", "mask", "h0", "c0"))
    n = torch.tensor(lengths)
    keys = memory @ t["W1"].T  # [B, S, A]: W1 e_j, once per sequence
    probs, ys = [], []
    with torch.no_grad():
        for s in range(T):
            h_new, c_new = cell(x[:, s], (h, c))
            u = torch.tanh(keys + (h_new @ t["W2"].T)[:, None, :]) @ t["v"]  # [B, S], eq. 3
            a = torch.softmax(u + mask, dim=-1)
            live = (s < n)[:, None]
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
            probs.append(torch.where(live, a, torch.zeros_like(a)))
            ys.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    return (torch.stack(probs, 1).numpy(), torch.stack(ys, 1).numpy(), h.numpy(), c.numpy())


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_decoder(p, x, memory, h0, c0, set_lengths, lengths):
    """The decoder from the definitions, float64, one sequence at a time, pointing over the
    first set_lengths[b] items of memory only."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    probs, y = np.zeros((B, T, S)), np.zeros((B, T, H))
    h_n, c_n = np.zeros((B, H)), np.zeros((B, H))
    for b in range(B):
        e = memory[b, : set_lengths[b]].astype(np.float64)
        h, c = h0[b].astype(np.float64), c0[b].astype(np.float64)
        for s in range(lengths[b]):
            z = p["weight_ih"] @ x[b, s] + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
            i, f, g, o = sigmoid(z[:H]), sigmoid(z[H : 2 * H]), np.tanh(z[2 * H : 3 * H]), \
                sigmoid(z[3 * H :])
            c = f * c + i * g
            h = o * np.tanh(c)  # d_i, the decoder state of this step
            u = np.array([p["v"] @ np.tanh(p["W1"] @ e[j] + p["W2"] @ h) for j in range(len(e))])
            w = np.exp(u - u.max())
            probs[b, s, : len(e)] = w / w.sum()
            y[b, s] = h
        h_n[b], c_n[b] = h, c
    return probs, y, h_n, c_n


def manifest():
    """case.txt: the contexts are inputs like any other; the states' initial values are `in h`,
    `in c`, their final values `out h`, `out c`."""
    return "\n".join(["seq " + SEQ, "weights weights.safetensors",
                      "dims I=%d,H=%d,S=%d,A=%d" % (I, H, S, A), "in x=x.npy",
                      "in memory=memory.npy", "in mask=mask.npy", "in lengths=lengths.npy",
                      "in h=h0.npy", "in c=c0.npy", "out probs=probs.npy", "out y=y.npy",
                      "out h=h_n.npy", "out c=c_n.npy", "tol " + TOL]) + "\n"


def write():
    p, d, extra = make_inputs()
    probs, y, h_n, c_n = torch_decoder(p, d, LENGTHS)
    files = dict(d, **extra, lengths=np.array(LENGTHS, dtype=np.int64),
                 probs=probs.astype(np.float32), y=y.astype(np.float32),
                 h_n=h_n.astype(np.float32), c_n=c_n.astype(np.float32))
    write_case(os.path.join(FIXTURES, NAME), p, files, manifest())


def self_check():
    d = os.path.join(FIXTURES, NAME)
    with open(os.path.join(d, "case.txt")) as f:
        assert f.read() == manifest(), "case.txt differs from the script's manifest"
    p = read_safetensors(os.path.join(d, "weights.safetensors"))
    assert sorted(p) == sorted(NAMES), sorted(p)
    shapes = {"weight_ih": (4 * H, I), "weight_hh": (4 * H, H), "bias_ih": (4 * H,),
              "bias_hh": (4 * H,), "W1": (A, H), "W2": (A, H), "v": (A,)}
    assert all(p[k].shape == shapes[k] for k in NAMES), {k: p[k].shape for k in NAMES}
    want = {"x": (B, T, I), "memory": (B, S, H), "mask": (B, S), "h0": (B, H), "c0": (B, H),
            "lengths": (B,), "probs": (B, T, S), "y": (B, T, H), "h_n": (B, H), "c_n": (B, H),
            "values": (B, S), "items": (B, S, I)}
    f = {k: np.load(os.path.join(d, k + ".npy")) for k in want}
    for k, shape in want.items():
        dtype = np.int64 if k == "lengths" else np.float32
        assert f[k].shape == shape and f[k].dtype == dtype, (k, f[k].shape, f[k].dtype)
    lengths = [int(n) for n in f["lengths"]]
    assert all(1 <= n <= T for n in lengths) and min(lengths) < T, lengths
    # The mask is 0 then -1e9, and memory (the packed encoder's output) is zero after the set.
    set_lengths = [int(n) for n in (f["mask"] == 0).sum(1)]
    assert set_lengths == lengths, (set_lengths, lengths)  # one pointer per item
    for b, m in enumerate(set_lengths):
        assert 1 <= m <= S and not f["mask"][b, :m].any() and (f["mask"][b, m:] == MASK).all()
        assert not f["memory"][b, m:].any() and f["memory"][b, :m].all()
    # Teacher forcing: x is the start vector, then the items in increasing order of value.
    values, items = f["values"], f["items"]
    real = np.concatenate([np.c_[values[b, :n], np.ones(n)] for b, n in enumerate(lengths)])
    emb = np.concatenate([items[b, :n] for b, n in enumerate(lengths)])
    fit = np.linalg.lstsq(real.astype(np.float64), emb.astype(np.float64), rcond=None)[0]
    assert np.abs(real @ fit - emb).max() < 1e-6, "the items are not an embedding of the values"
    for b, n in enumerate(lengths):
        assert len(set(values[b, :n].tolist())) == n and not values[b, n:].any()
        assert not items[b, n:].any() and not f["x"][b, n:].any()
        assert np.array_equal(f["x"][b, 0], f["x"][0, 0]), "the start vector differs"
    x = teacher_forcing(f["x"][0, 0], items, values, lengths)
    assert np.array_equal(x, f["x"]), "x is not the teacher-forced sorting input"
    for b, n in enumerate(lengths):
        assert not f["y"][b, n:].any() and not f["probs"][b, n:].any(), "output past the end"
        assert not f["probs"][b, :, set_lengths[b] :].any(), "probability on the padding"
    ref = numpy_decoder(p, f["x"], f["memory"], f["h0"], f["c0"], set_lengths, lengths)
    err = max(float(np.max(np.abs(r - f[k])))
              for r, k in zip(ref, ("probs", "y", "h_n", "c_n")))
    return report(NAME, d, err, float(TOL))


if __name__ == "__main__":
    sys.exit(main(__doc__, write, self_check))
