#!/usr/bin/env python3
"""Regenerate the PyTorch reference fixtures the C test suite compares against.

    python3 tests/reference/make_torch_fixtures.py               # write fixtures + example data, then self-check
    python3 tests/reference/make_torch_fixtures.py --self-check  # only re-check what is on disk (numpy only)

Each case directory under tests/reference/fixtures/ holds a PyTorch module's
state_dict (weights.safetensors), its batch-first input, initial states and
lengths where the case has them, PyTorch's outputs and final states (.npy),
and case.txt, the manifest the C tests read (format in README.md).

The self-check does not use torch: it re-reads every fixture from disk
(safetensors parsed by hand, so the file format is checked too), runs the
recurrences step by step in float64 numpy with PyTorch's gate layouts, and
compares with the stored outputs. A transposed weight, a swapped gate or a
misplaced final state shows up there as an error of order 1e-1, not 1e-6.

Only torch (generation), numpy and safetensors (generation) are needed; CI
needs none of them, because the fixtures are committed.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")
EXAMPLE_DATA = os.path.join(REPO, "examples", "data")

TOL = 1e-5
TOL_TEXT = "1e-5"  # as written in case.txt

# How each .seq model is laid out, in PyTorch's terms. A model is a list of
# stages (PyTorch layers); each stage is a list of directions run on the same
# input, whose outputs are concatenated to form the next stage's input. A
# direction is (state prefix in the manifest, weight-name suffix, reversed?,
# file tag). The flattened order of directions is PyTorch's h_n order
# (layer-major, direction-minor).
MODELS = {
    "examples/lstm.seq": ("lstm", [[("", "_l0", False, "")]]),
    "examples/gru.seq": ("gru", [[("", "_l0", False, "")]]),
    "examples/rnn.seq": ("rnn", [[("", "_l0", False, "")]]),
    "examples/lstm2.seq": ("lstm", [[("l0.", "_l0", False, "_l0")], [("l1.", "_l1", False, "_l1")]]),
    "examples/bigru.seq": ("gru", [[("fwd.", "_l0", False, "_fwd"), ("bwd.", "_l0_reverse", True, "_bwd")]]),
}

STATES = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",)}

# name, .seq, batch, time, input, hidden, initial states?, lengths (None = full), seed.
# Lengths are deliberately unsorted: the C side must not assume sorted batches.
CASES = [
    ("lstm", "examples/lstm.seq", 3, 7, 5, 4, False, None, 101),
    ("lstm_init", "examples/lstm.seq", 3, 7, 5, 4, True, None, 102),
    ("lstm_lengths", "examples/lstm.seq", 3, 7, 5, 4, True, [3, 7, 1], 103),
    ("lstm_large", "examples/lstm.seq", 2, 33, 16, 24, True, [19, 33], 104),
    ("gru", "examples/gru.seq", 3, 7, 5, 4, False, None, 201),
    ("gru_init", "examples/gru.seq", 3, 7, 5, 4, True, None, 202),
    ("gru_lengths", "examples/gru.seq", 3, 7, 5, 4, True, [3, 7, 1], 203),
    ("gru_large", "examples/gru.seq", 2, 33, 16, 24, True, [19, 33], 204),
    ("rnn", "examples/rnn.seq", 3, 7, 5, 4, False, None, 301),
    ("rnn_init", "examples/rnn.seq", 3, 7, 5, 4, True, None, 302),
    ("rnn_lengths", "examples/rnn.seq", 3, 7, 5, 4, True, [3, 7, 1], 303),
    ("rnn_large", "examples/rnn.seq", 2, 33, 16, 24, True, [19, 33], 304),
    ("lstm2", "examples/lstm2.seq", 3, 7, 5, 4, False, None, 401),
    ("bigru", "examples/bigru.seq", 3, 7, 5, 4, False, [4, 7, 2], 501),
]


def directions(seq):
    kind, stages = MODELS[seq]
    return kind, [d for stage in stages for d in stage]


def init_file(state, tag):
    return "%s0%s.npy" % (state, tag)


def final_file(state, tag):
    return "%s_n%s.npy" % (state, tag)


# ---- generation (torch) ------------------------------------------------------


def make_case(case, out_root):
    import torch
    from safetensors.torch import save_file

    name, seq, B, T, I, H, with_init, lengths, seed = case
    kind, stages = MODELS[seq]
    dirs = [d for stage in stages for d in stage]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    torch.manual_seed(seed)
    kwargs = dict(num_layers=len(stages), bidirectional=len(stages[0]) == 2, batch_first=True)
    if kind == "rnn":
        kwargs["nonlinearity"] = "tanh"
    m = cls(I, H, **kwargs).float().eval()
    x = torch.randn(B, T, I, dtype=torch.float32)
    n = len(dirs)
    init = {}
    if with_init:
        for s in STATES[kind]:
            init[s] = torch.randn(n, B, H, dtype=torch.float32)
    hx = None
    if init:
        hx = (init["h"], init["c"]) if kind == "lstm" else init["h"]

    with torch.no_grad():
        if lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.tensor(lengths, dtype=torch.int64), batch_first=True, enforce_sorted=False
            )
            out, hn = m(packed, hx)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        else:
            y, hn = m(x, hx)
    final = {"h": hn[0], "c": hn[1]} if kind == "lstm" else {"h": hn}

    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):  # a regenerated case must not keep stale files
        os.remove(os.path.join(d, f))

    def npy(fname, t, dtype=np.float32):
        np.save(os.path.join(d, fname), np.ascontiguousarray(np.asarray(t, dtype=dtype)))

    sd = {k: v.detach().contiguous().float() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(d, "weights.safetensors"))
    lines = ["seq " + seq, "weights weights.safetensors", "in x=x.npy"]
    npy("x.npy", x.numpy())
    for k, (prefix, _sfx, _rev, tag) in enumerate(dirs):
        for s in STATES[kind]:
            if s in init:
                npy(init_file(s, tag), init[s][k].numpy())
                lines.append("in %s%s=%s" % (prefix, s, init_file(s, tag)))
    if lengths is not None:
        npy("lengths.npy", lengths, np.int64)
        lines.append("in lengths=lengths.npy")
    npy("y.npy", y.numpy())
    lines.append("out y=y.npy")
    for k, (prefix, _sfx, _rev, tag) in enumerate(dirs):
        for s in STATES[kind]:
            npy(final_file(s, tag), final[s][k].numpy())
            lines.append("out %s%s=%s" % (prefix, s, final_file(s, tag)))
    lines.append("tol " + TOL_TEXT)
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s" % os.path.relpath(d, REPO))


def make_example_data(out_dir):
    """The README's main job: a 1-layer LSTM, I=32, H=64, seed 0, B=4, T=50."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = torch.nn.LSTM(32, 64, batch_first=True).float().eval()
    x = torch.randn(4, 50, 32, dtype=torch.float32)
    with torch.no_grad():
        y, _ = m(x)
    os.makedirs(out_dir, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().float() for k, v in m.state_dict().items()},
        os.path.join(out_dir, "lstm_weights.safetensors"),
    )
    np.save(os.path.join(out_dir, "lstm_x.npy"), np.ascontiguousarray(x.numpy(), dtype=np.float32))
    np.save(os.path.join(out_dir, "lstm_y.npy"), np.ascontiguousarray(y.numpy(), dtype=np.float32))
    print("wrote %s" % os.path.relpath(out_dir, REPO))


# ---- self-check (numpy only) -------------------------------------------------


def read_safetensors(path):
    """A minimal reader, independent of the safetensors package."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    data = blob[8 + n :]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", "%s: %s is %s, want F32" % (path, k, v["dtype"])
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
        out[k] = arr.astype(np.float64)
    return out


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def cell_step(kind, W, x, st):
    """One step of PyTorch's cell on one sequence (vectors), float64.

    Gate rows: LSTM [i, f, g, o]; GRU [r, z, n]."""
    Wih, Whh, bih, bhh = W
    h = st["h"]
    gi = Wih @ x + bih
    gh = Whh @ h + bhh
    if kind == "rnn":
        return {"h": np.tanh(gi + gh)}
    if kind == "lstm":
        i, f, g, o = np.split(gi + gh, 4)
        c = sigmoid(f) * st["c"] + sigmoid(i) * np.tanh(g)
        return {"h": sigmoid(o) * np.tanh(c), "c": c}
    r_i, z_i, n_i = np.split(gi, 3)
    r_h, z_h, n_h = np.split(gh, 3)
    r = sigmoid(r_i + r_h)
    z = sigmoid(z_i + z_h)
    n = np.tanh(n_i + r * n_h)
    return {"h": (1.0 - z) * n + z * h}


def read_manifest(path):
    m = {"in": {}, "out": {}}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            key, _, rest = line.partition(" ")
            if key in ("in", "out"):
                name, _, fname = rest.partition("=")
                m[key][name] = fname
            else:
                m[key] = rest
    return m


def check_case(d):
    man = read_manifest(os.path.join(d, "case.txt"))
    kind, stages = MODELS[man["seq"]]
    W = read_safetensors(os.path.join(d, man["weights"]))
    load = lambda f: np.load(os.path.join(d, f))
    x = load(man["in"]["x"])
    assert x.dtype == np.float32 and x.ndim == 3 and x.flags.c_contiguous
    B, T, _ = x.shape
    lengths = load(man["in"]["lengths"]) if "lengths" in man["in"] else np.full(B, T, np.int64)
    assert lengths.dtype == np.int64 and lengths.shape == (B,)
    y_ref = load(man["out"]["y"])
    used = set()

    inp = x.astype(np.float64)
    worst = 0.0
    for stage in stages:
        outs = []
        for prefix, sfx, rev, _tag in stage:
            w = tuple(W["%s%s" % (n, sfx)] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            used.update("%s%s" % (n, sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            H = w[1].shape[1]
            y = np.zeros((B, T, H))
            for b in range(B):
                st = {}
                for s in STATES[kind]:
                    key = prefix + s
                    st[s] = load(man["in"][key])[b].astype(np.float64) if key in man["in"] else np.zeros(H)
                steps = range(lengths[b])
                for t in reversed(steps) if rev else steps:
                    st = cell_step(kind, w, inp[b, t], st)
                    y[b, t] = st["h"]
                for s in STATES[kind]:
                    ref = load(man["out"][prefix + s])
                    assert ref.shape == (B, H) and ref.dtype == np.float32
                    worst = max(worst, float(np.max(np.abs(ref[b] - st[s]))))
            outs.append(y)
        inp = np.concatenate(outs, axis=-1)
    assert y_ref.shape == inp.shape and y_ref.dtype == np.float32, (y_ref.shape, inp.shape)
    worst = max(worst, float(np.max(np.abs(y_ref - inp))))
    for b in range(B):  # outputs past a sequence's end must be exactly zero
        assert not np.any(y_ref[b, lengths[b] :]), "nonzero output past the end in %s" % d
    assert used == set(W), "unused or missing weights in %s: %s" % (d, set(W) ^ used)
    tol = float(man["tol"])
    return worst, tol


def self_check():
    ok = True
    total = 0
    # Only the cases this script writes: the other writers (make_std_fixtures.py,
    # make_attention_fixtures.py, ...) check theirs.
    for name in sorted(c[0] for c in CASES):
        d = os.path.join(FIXTURES, name)
        if not os.path.isdir(d):
            continue
        total += sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        worst, tol = check_case(d)
        # Leave head-room: the C side rounds every op to float32, so PyTorch
        # versus a float64 recurrence must sit well inside the tolerance.
        good = worst < tol / 4
        ok &= good
        print("%-14s max |torch - numpy f64| = %.3g  %s" % (name, worst, "ok" if good else "TOO LARGE"))
    print("fixtures: %d bytes" % total)
    if total >= 1 << 20:
        print("fixtures exceed 1 MiB")
        ok = False
    ex = os.path.join(EXAMPLE_DATA, "lstm_weights.safetensors")
    if os.path.exists(ex):
        # The example data is a one-layer LSTM with no lengths: reuse the same path.
        W = read_safetensors(ex)
        x = np.load(os.path.join(EXAMPLE_DATA, "lstm_x.npy")).astype(np.float64)
        y_ref = np.load(os.path.join(EXAMPLE_DATA, "lstm_y.npy"))
        w = tuple(W[n + "_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        H = w[1].shape[1]
        y = np.zeros(y_ref.shape)
        for b in range(x.shape[0]):
            st = {"h": np.zeros(H), "c": np.zeros(H)}
            for t in range(x.shape[1]):
                st = cell_step("lstm", w, x[b, t], st)
                y[b, t] = st["h"]
        worst = float(np.max(np.abs(y - y_ref)))
        good = worst < TOL / 4
        ok &= good
        print("%-14s max |torch - numpy f64| = %.3g  %s" % ("examples/data", worst, "ok" if good else "TOO LARGE"))
    print("self-check %s" % ("passed" if ok else "FAILED"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-check", action="store_true", help="only check the fixtures on disk (no torch)")
    ap.add_argument("--only", action="append", metavar="CASE", help="regenerate just this case (repeatable)")
    args = ap.parse_args()
    if not args.self_check:
        import torch

        torch.set_num_threads(1)  # one summation order, whatever the machine
        known = {c[0] for c in CASES}
        for name in args.only or []:
            if name not in known:
                ap.error("unknown case %s (known: %s)" % (name, ", ".join(sorted(known))))
        for case in CASES:
            if not args.only or case[0] in args.only:
                make_case(case, FIXTURES)
        if not args.only:
            make_example_data(EXAMPLE_DATA)
        print("torch %s, numpy %s" % (torch.__version__, np.__version__))
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
