"""lm.py - examples/lm.seq (a Mamba language model: token embedding, pre-norm
blocks of a Mamba mixer and a GELU MLP, a final RMSNorm and an output head)
end to end through seqc's Python API against the same model written in
PyTorch with the same weights, in paired rounds.

The PyTorch model is written here from the model's equations, its selective
scan the way PyTorch runs Mamba on a CPU without mamba-ssm's CUDA kernels
(Hugging Face transformers' MambaMixer.slow_forward): the discretized A and
B*u for every token at once, then a loop over time updating the [B, d_inner,
d_state] state and reading it with C. Both sides get the same random weights
(the same float32 arrays: seqc binds them, PyTorch wraps them); outputs are
compared first.

usage: PYTHONPATH=python SEQC_LIBRARY=build-perf/libseq.so \\
       python bench/lm.py [--threads N] [--B B] [--T T] [--rounds R] [--layers L]
       (run under env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
Prints one Markdown row: medians [range] of each side and of the per-round
ratio, and the largest difference of the logits.
"""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import seqc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def random_weights(rng, vocab, d_model, d_ff, dt_rank, n_layer, d_state=16, d_conv=4):
    """Weights under examples/lm.seq's names, scaled as nn.Linear's default
    (uniform in +-1/sqrt(fan_in)); A_log and dt_proj.bias as mamba-ssm
    initializes them (A = -[1..d_state], dt in [1e-3, 1e-1])."""
    d_inner = 2 * d_model

    def lin(n, k):
        return rng.uniform(-1, 1, (n, k)) / math.sqrt(k)

    p = {"embedding.weight": rng.normal(0, 1, (vocab, d_model)),
         "norm_f.weight": np.ones(d_model),
         "lm_head.weight": lin(vocab, d_model)}
    for i in range(n_layer):
        pre = "blocks.%d." % i
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), d_inner))
        p.update({
            pre + "norm.weight": np.ones(d_model),
            pre + "mlp_norm.weight": np.ones(d_model),
            pre + "mlp.up.weight": lin(d_ff, d_model),
            pre + "mlp.down.weight": lin(d_model, d_ff),
            pre + "mixer.in_proj.weight": lin(2 * d_inner, d_model),
            pre + "mixer.conv1d.weight": rng.uniform(-1, 1, (d_inner, 1, d_conv)) / math.sqrt(d_conv),
            pre + "mixer.conv1d.bias": rng.uniform(-1, 1, d_inner) / math.sqrt(d_conv),
            pre + "mixer.x_proj.weight": lin(dt_rank + 2 * d_state, d_inner),
            pre + "mixer.dt_proj.weight": lin(d_inner, dt_rank),
            pre + "mixer.dt_proj.bias": dt + np.log(-np.expm1(-dt)),  # softplus^-1(dt)
            pre + "mixer.A_log": np.log(np.tile(np.arange(1, d_state + 1), (d_inner, 1))),
            pre + "mixer.D": np.ones(d_inner),
            pre + "mixer.out_proj.weight": lin(d_model, d_inner),
        })
    return {k: v.astype(np.float32) for k, v in p.items()}


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class TorchLM:
    """The model of examples/lm.seq in PyTorch, on the given weights."""

    def __init__(self, p, n_layer):
        self.p = {k: torch.from_numpy(v) for k, v in p.items()}
        self.n_layer = n_layer

    def mixer(self, pre, x):
        p = self.p
        A = -torch.exp(p[pre + "A_log"])  # [D, N]
        d_inner, d_state = A.shape
        dt_rank = p[pre + "dt_proj.weight"].shape[1]
        T = x.shape[1]
        u, z = (x @ p[pre + "in_proj.weight"].T).chunk(2, dim=-1)
        w = p[pre + "conv1d.weight"]
        u = F.conv1d(u.transpose(1, 2), w, p[pre + "conv1d.bias"], padding=w.shape[-1] - 1,
                     groups=d_inner)[..., :T].transpose(1, 2)
        u = F.silu(u)
        dt, Bm, Cm = torch.split(u @ p[pre + "x_proj.weight"].T, [dt_rank, d_state, d_state], -1)
        delta = F.softplus(dt @ p[pre + "dt_proj.weight"].T + p[pre + "dt_proj.bias"])
        dA = torch.exp(delta[..., None] * A)  # [B, T, D, N]
        dBu = delta[..., None] * Bm[:, :, None, :] * u[..., None]
        s = x.new_zeros(x.shape[0], d_inner, d_state)
        ys = []
        for t in range(T):
            s = dA[:, t] * s + dBu[:, t]
            ys.append(torch.matmul(s, Cm[:, t, :, None])[..., 0])
        y = torch.stack(ys, dim=1) + p[pre + "D"] * u
        return (y * F.silu(z)) @ p[pre + "out_proj.weight"].T

    def __call__(self, tokens):
        p = self.p
        h = p["embedding.weight"][tokens]
        for i in range(self.n_layer):
            pre = "blocks.%d." % i
            h = h + self.mixer(pre + "mixer.", rmsnorm(h, p[pre + "norm.weight"]))
            up = rmsnorm(h, p[pre + "mlp_norm.weight"]) @ p[pre + "mlp.up.weight"].T
            h = h + F.gelu(up) @ p[pre + "mlp.down.weight"].T
        return rmsnorm(h, p["norm_f.weight"]) @ p["lm_head.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    a = ap.parse_args()
    d_model, d_ff, dt_rank = a.d_model, 4 * a.d_model, math.ceil(a.d_model / 16)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    p = random_weights(rng, a.vocab, d_model, d_ff, dt_rank, a.layers)
    dims = {"vocab": a.vocab, "d_model": d_model, "d_ff": d_ff, "dt_rank": dt_rank,
            "n_layer": a.layers}
    m = seqc.compile(os.path.join(ROOT, "examples/lm.seq"), dims=dims, threads=a.threads)
    m.load_weights(p)
    ref = TorchLM(p, a.layers)
    tokens = rng.integers(0, a.vocab, (a.B, a.T)).astype(np.int32)
    tt = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode():
        y_ref = ref(tt).numpy()
    y = m(tokens)
    err = float(np.abs(y - y_ref).max())
    scale = float(np.abs(y_ref).max())
    if not err <= 1e-3 * max(scale, 1.0):
        sys.exit(f"outputs differ: max abs {err:.3g} (logits up to {scale:.3g})")
    ts, tp = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        m(tokens)
        ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref(tt)
        tp.append(time.perf_counter() - t0)
    ratios = [q / s for s, q in zip(ts, tp)]

    def col(v):
        return f"{statistics.median(v) * 1e3:.1f} [{min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}]"

    print(f"| {a.layers} x Mamba + MLP, d_model {d_model}, vocab {a.vocab} | {a.B} | {a.T} | "
          f"{a.threads} | {col(ts)} | {col(tp)} | {statistics.median(ratios):.2f}x "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] | {err:.1e} |")


if __name__ == "__main__":
    main()
