#!/usr/bin/env python3
"""Write the causal-attention reference fixtures (tests/reference/fixtures/torch_hybrid/ and
torch_universal_transformer/).

    python3 tests/reference/make_attention_fixtures.py               # write, then self-check
    python3 tests/reference/make_attention_fixtures.py --self-check  # re-check what is on disk

torch_universal_transformer is examples/universal_transformer.seq: one pre-norm block (causal
self-attention through the same SDPA, a ReLU MLP) applied max_steps = 4 times with shared
weights and adaptive computation time per token, written as the paper's code does it
(halting threshold 0.99, remainders, the state mix), with halting weights drawn so that tokens
halt after different numbers of steps.

The first model is examples/hybrid.seq: x -> x + MinGRU(rmsnorm(x)) -> h + attn(rmsnorm(h)),
the attention PyTorch's own: torch.nn.functional.scaled_dot_product_attention
with is_causal=True over [B, NH, T, DH], bias-free q/k/v/o projections. B=2,
T=9, lengths [9, 4]: a token of the short sequence never attends to the padding
after it (attention is causal), and outputs past a sequence's length are zero
(seqc's convention). The self-check recomputes everything in float64 NumPy,
written from the definitions, without torch.

Needs torch, numpy and safetensors for writing; numpy for the self-check.
"""

import argparse
import os
import sys

import numpy as np

from fixture_io import read_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAME = "torch_hybrid"
NH, DH = 2, 3
D = NH * DH
B, T = 2, 9
LENGTHS = [9, 4]
TOL = "2e-5"


def weights(rng):
    def lin(o, i):
        return rng.normal(0, 1 / np.sqrt(i), (o, i))
    p = {"norm0.weight": 1 + rng.normal(0, 0.2, D), "norm1.weight": 1 + rng.normal(0, 0.2, D)}
    for n in ("linear_z", "linear_h"):
        p["rnn.%s.weight" % n] = lin(D, D)
        p["rnn.%s.bias" % n] = rng.normal(0, 0.2, D)
    for n in ("q", "k", "v", "o"):
        p["attn.%s_proj.weight" % n] = lin(D, D)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def torch_model(p, x, lengths):
    import torch
    import torch.nn.functional as F

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
    xs = torch.tensor(x, dtype=torch.float64)

    def rmsnorm(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5) * w

    u = rmsnorm(xs, t["norm0.weight"])
    z = torch.sigmoid(u @ t["rnn.linear_z.weight"].T + t["rnn.linear_z.bias"])
    ht = u @ t["rnn.linear_h.weight"].T + t["rnn.linear_h.bias"]
    hs, h = [], torch.zeros(B, D, dtype=torch.float64)
    for s in range(T):
        h = (1 - z[:, s]) * h + z[:, s] * ht[:, s]
        hs.append(h)
    h = xs + torch.stack(hs, 1)
    a = rmsnorm(h, t["norm1.weight"])
    q, k, v = (a @ t["attn.%s_proj.weight" % n].T for n in "qkv")
    q, k, v = (m.reshape(B, T, NH, DH).transpose(1, 2) for m in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o = o.transpose(1, 2).reshape(B, T, D) @ t["attn.o_proj.weight"].T
    y = (h + o).numpy()
    for b, n in enumerate(lengths):
        y[b, n:] = 0
    return y


def np_attention(q, k, v):
    """Causal softmax attention of one sequence, [n, NH, DH] each, as defined:
    token t mixes the values of tokens 0..t by softmax(q_t . k_s / sqrt(DH))."""
    n = len(q)
    o = np.zeros((n, NH, DH))
    for t in range(n):
        for hd in range(NH):
            sc = k[: t + 1, hd] @ q[t, hd] / np.sqrt(DH)
            w = np.exp(sc - sc.max())
            o[t, hd] = w @ v[: t + 1, hd] / w.sum()
    return o.reshape(n, D)


def numpy_model(p, x, lengths):
    """The same model from the definitions, float64, one sequence at a time."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    y = np.zeros((B, T, D))
    for b, n in enumerate(lengths):
        xs = x[b, :n].astype(np.float64)
        u = xs / np.sqrt((xs ** 2).mean(-1, keepdims=True) + 1e-5) * p["norm0.weight"]
        h, hs = np.zeros(D), []
        for s in range(n):
            z = 1 / (1 + np.exp(-(p["rnn.linear_z.weight"] @ u[s] + p["rnn.linear_z.bias"])))
            h = (1 - z) * h + z * (p["rnn.linear_h.weight"] @ u[s] + p["rnn.linear_h.bias"])
            hs.append(h)
        hh = xs + np.array(hs).reshape(n, D)
        a = hh / np.sqrt((hh ** 2).mean(-1, keepdims=True) + 1e-5) * p["norm1.weight"]
        q, k, v = ((a @ p["attn.%s_proj.weight" % m].T).reshape(n, NH, DH) for m in "qkv")
        y[b, :n] = hh + np_attention(q, k, v) @ p["attn.o_proj.weight"].T
    return y


def write():
    from safetensors.numpy import save_file

    rng = np.random.default_rng(301)
    p = weights(rng)
    x = rng.normal(0, 1, (B, T, D)).astype(np.float32)
    lengths = np.array(LENGTHS, dtype=np.int64)
    y = torch_model(p, x, LENGTHS)
    d = os.path.join(FIXTURES, NAME)
    os.makedirs(d, exist_ok=True)
    save_file(dict(sorted(p.items())), os.path.join(d, "weights.safetensors"))
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "lengths.npy"), lengths)
    np.save(os.path.join(d, "y.npy"), y.astype(np.float32))
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write("\n".join(["seq examples/hybrid.seq", "weights weights.safetensors",
                           "dims NH=%d,DH=%d" % (NH, DH), "in x=x.npy", "in lengths=lengths.npy",
                           "out y=y.npy", "tol " + TOL]) + "\n")


# ------------------------------------------------------- Universal Transformer
UT = "torch_universal_transformer"
F_UT, STEPS = 8, 4


def ut_weights(rng):
    def lin(o, i):
        return rng.normal(0, 1 / np.sqrt(i), (o, i))
    p = {"block.norm1.weight": 1 + rng.normal(0, 0.2, D), "block.norm2.weight": 1 + rng.normal(0, 0.2, D)}
    for n in ("q", "k", "v", "o"):
        p["block.%s_proj.weight" % n] = lin(D, D)
    p["block.fc1.weight"] = lin(F_UT, D)
    p["block.fc2.weight"] = lin(D, F_UT)
    p["halt.weight"] = rng.normal(0, 1.0, (1, D))
    p["halt.bias"] = np.array([0.3])
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def ut_torch(p, x, lengths):
    import torch
    import torch.nn.functional as F

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}

    def rmsnorm(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5) * w

    def block(h):
        a = rmsnorm(h, t["block.norm1.weight"])
        q, k, v = (a @ t["block.%s_proj.weight" % n].T for n in "qkv")
        q, k, v = (m.reshape(B, T, NH, DH).transpose(1, 2) for m in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        h = h + o @ t["block.o_proj.weight"].T
        f = torch.relu(rmsnorm(h, t["block.norm2.weight"]) @ t["block.fc1.weight"].T)
        return h + f @ t["block.fc2.weight"].T

    state = torch.tensor(x, dtype=torch.float64)
    hp = torch.zeros(B, T, 1, dtype=torch.float64)
    rem = torch.zeros_like(hp)
    prev = torch.zeros_like(state)
    for _ in range(STEPS):
        pr = torch.sigmoid(state @ t["halt.weight"].T + t["halt.bias"])
        running = (hp < 1.0).double()
        new_halted = ((hp + pr * running) > 0.99).double() * running
        running = ((hp + pr * running) <= 0.99).double() * running
        hp = hp + pr * running
        rem = rem + new_halted * (1 - hp)
        hp = hp + new_halted * rem
        w = pr * running + new_halted * rem
        state = block(state)
        prev = state * w + prev * (1 - w)
    y = prev.numpy()
    for b, n in enumerate(lengths):
        y[b, n:] = 0
    return y


def ut_numpy(p, x, lengths):
    """The same in float64 NumPy, one sequence at a time, from the definitions."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    y = np.zeros((B, T, D))

    def rms(v, w):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + 1e-5) * w

    for b, n in enumerate(lengths):
        h = x[b, :n].astype(np.float64)
        hp, rem, out = np.zeros((n, 1)), np.zeros((n, 1)), np.zeros((n, D))
        for _ in range(STEPS):
            pr = 1 / (1 + np.exp(-(h @ p["halt.weight"].T + p["halt.bias"])))
            running = (hp < 1).astype(float)
            halts = (hp + pr * running > 0.99) * running
            running = (hp + pr * running <= 0.99) * running
            hp = hp + pr * running
            rem = rem + halts * (1 - hp)
            hp = hp + halts * rem
            w = pr * running + halts * rem
            a = rms(h, p["block.norm1.weight"])
            q, k, v = ((a @ p["block.%s_proj.weight" % m].T).reshape(n, NH, DH) for m in "qkv")
            h = h + np_attention(q, k, v) @ p["block.o_proj.weight"].T
            h = h + np.maximum(rms(h, p["block.norm2.weight"]) @ p["block.fc1.weight"].T, 0) @ p["block.fc2.weight"].T
            out = h * w + out * (1 - w)
        y[b, :n] = out
    return y


def write_ut():
    from safetensors.numpy import save_file

    rng = np.random.default_rng(302)
    p = ut_weights(rng)
    x = rng.normal(0, 1, (B, T, D)).astype(np.float32)
    y = ut_torch(p, x, LENGTHS)
    d = os.path.join(FIXTURES, UT)
    os.makedirs(d, exist_ok=True)
    save_file(dict(sorted(p.items())), os.path.join(d, "weights.safetensors"))
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "lengths.npy"), np.array(LENGTHS, dtype=np.int64))
    np.save(os.path.join(d, "y.npy"), y.astype(np.float32))
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write("\n".join(["seq examples/universal_transformer.seq", "weights weights.safetensors",
                           "dims NH=%d,DH=%d,F=%d" % (NH, DH, F_UT), "in x=x.npy",
                           "in lengths=lengths.npy", "out y=y.npy", "tol " + TOL]) + "\n")


def self_check():
    ok = True
    for name, model in ((NAME, numpy_model), (UT, ut_numpy)):
        d = os.path.join(FIXTURES, name)
        p = read_safetensors(os.path.join(d, "weights.safetensors"))
        x = np.load(os.path.join(d, "x.npy"))
        lengths = np.load(os.path.join(d, "lengths.npy"))
        y = np.load(os.path.join(d, "y.npy"))
        err = float(np.max(np.abs(model(p, x, list(lengths)) - y)))
        good = err <= float(TOL) / 4
        ok &= good
        print("%s self-check err %.2e %s" % (name, err, "ok" if good else "FAIL"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    if not args.self_check:
        write()
        write_ut()
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
