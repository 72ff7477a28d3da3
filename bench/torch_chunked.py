"""torch_chunked.py - the PyTorch CPU peer of seqc's chunkwise-parallel forms:
linear attention, GLA, mLSTM and Mamba-2 (SSD) written chunkwise in PyTorch,
with the std cells' parameter names and shapes (stdlib/linear_attention.seq,
gla.seq, mlstm.seq, mamba2.seq), so the same safetensors file runs in both.

The chunked forms follow the papers as flash-linear-attention's reference code
(fla/ops/*/naive.py) and mamba-ssm's ssd_minimal.py compute them: chunks of C
tokens (64 by default); inside a chunk, masked [C, C] matrix products; between
chunks, the state [Dk, Dv] per head passed on by a loop over chunks (T / C
iterations of elementwise work, the only sequential part); gates kept as
log-space cumulative sums within a chunk; exponential gates max-stabilized.
A T that is not a multiple of C is padded with zero inputs at the end: the
forms are causal, so padding changes nothing before T, and is sliced off.

usage:
  torch_chunked.py --check                 chunked vs step-by-step in float64
  torch_chunked.py MODEL B T THREADS REPS [--dims k=v,...] [--weights W.safetensors]
                   [--chunk C] [--stock-malloc]
                                           timing, float32; prints one line: the
                                           median, fastest and slowest of REPS
                                           forwards after one warm-up
MODEL: LinearAttention, GLA, MLSTM, Mamba2 (any case; linear_attention also).
Without --weights, parameters are uniform in [-1/sqrt(n), 1/sqrt(n)], n the
last dim, as seqc's --random-weights (the values differ: another generator).
Inputs are uniform in [-1, 1] as in bench/stdlib_throughput.c.
"""
import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def pad_time(t, chunk, dim):
    """Pads axis `dim` with zeros up to a multiple of `chunk`."""
    n = t.shape[dim]
    extra = (-n) % chunk
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def chunks(t, chunk):
    """[B, H, T, ...] -> [B, H, T/C, C, ...] (T already padded)."""
    return t.reshape(t.shape[0], t.shape[1], t.shape[2] // chunk, chunk, *t.shape[3:])


def causal_mask(n, device, diagonal=0):
    return torch.ones(n, n, dtype=torch.bool, device=device).tril(diagonal)


class Cell(torch.nn.Module):
    """A std cell's parameters under their declared names (dots make nested
    modules, so state_dict() names are the .seq names), random or loaded."""

    DIMS = {}

    def __init__(self, dims=None, dtype=torch.float32, seed=0):
        super().__init__()
        self.d = dict(self.DIMS)
        for key, val in (dims or {}).items():
            if key not in self.d:
                raise SystemExit(f"{type(self).__name__}: unknown dim {key} (dims: {', '.join(self.d)})")
            self.d[key] = val
        gen = torch.Generator().manual_seed(seed)
        self.w = {}
        for name, shape in self.param_shapes().items():
            bound = 1.0 / math.sqrt(shape[-1] if shape else 1)
            value = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            param = torch.nn.Parameter(value.to(dtype), requires_grad=False)
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, param)
            self.w[name] = param

    def load_weights(self, path):
        """seqc's rules (docs/cli.md, Weights): every parameter by name, any
        float dtype, and a stored shape that differs from the declared one only
        by axes of size 1 (mamba-ssm's conv1d.weight [D, 1, K]) is accepted."""
        from safetensors.torch import load_file

        stored = load_file(path)
        for name, param in self.w.items():
            if name not in stored:
                raise SystemExit(f"{path}: no tensor {name}")
            t = stored[name]
            squeeze = lambda s: [d for d in s if d != 1]
            if squeeze(t.shape) != squeeze(param.shape):
                raise SystemExit(f"{path}: {name} has shape {list(t.shape)}, the cell at dims "
                                 f"{self.d} declares {list(param.shape)} (set them with --dims)")
            param.copy_(t.reshape(param.shape).to(param.dtype))
        for name in stored:
            if name not in self.w:
                print(f"warning: {path}: tensor {name} is not a parameter of the cell", file=sys.stderr)

    def forward(self, x, chunk=64):
        return self.chunked(x, chunk)

    def input_dim(self):
        return self.d["I"]


# ---------------------------------------------------------------------------
# Linear attention (Katharopoulos et al. 2020): no gate, elu+1 feature map.
class LinearAttention(Cell):
    DIMS = {"I": 256, "NH": 4, "Dk": 64, "Dv": 64}

    def param_shapes(self):
        I, NH, Dk, Dv = (self.d[k] for k in ("I", "NH", "Dk", "Dv"))
        return {"W_q": [NH * Dk, I], "W_k": [NH * Dk, I], "W_v": [NH * Dv, I]}

    def project(self, x):
        """Per-token maps: q, k = phi(.), v, each [B, T, NH, D]."""
        NH, Dk, Dv = self.d["NH"], self.d["Dk"], self.d["Dv"]
        B, T, _ = x.shape
        q = F.elu(x @ self.w["W_q"].T).add_(1).view(B, T, NH, Dk)
        k = F.elu(x @ self.w["W_k"].T).add_(1).view(B, T, NH, Dk)
        v = (x @ self.w["W_v"].T).view(B, T, NH, Dv)
        return q, k, v

    def chunked(self, x, chunk=64):
        B, T, _ = x.shape
        Dv = self.d["Dv"]
        q, k, v = (pad_time(t.transpose(1, 2), chunk, 2) for t in self.project(x))
        # The normalizer z.q is the same sum with v replaced by 1: one extra
        # value column carries it through the same products, z as the state's
        # last column.
        v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1)
        q, k, v = (chunks(t, chunk) for t in (q, k, v))
        # State before each chunk: an exclusive prefix sum of the chunks' k^T v.
        kv = (k.transpose(-1, -2) @ v).cumsum(2)
        state = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1]], 2)
        scores = (q @ k.transpose(-1, -2)).masked_fill_(~causal_mask(chunk, x.device), 0)
        o = q @ state + scores @ v
        o = o.flatten(2, 3)[:, :, :T]
        y = o[..., :Dv] / (o[..., Dv:] + 1e-6)
        return y.transpose(1, 2).reshape(B, T, -1)

    def naive(self, x):
        """The .seq step, one token at a time."""
        NH, Dk, Dv = self.d["NH"], self.d["Dk"], self.d["Dv"]
        B, T, _ = x.shape
        q, k, v = self.project(x)
        S = x.new_zeros(B, NH, Dv, Dk)
        z = x.new_zeros(B, NH, Dk)
        ys = []
        for t in range(T):
            S = S + v[:, t, :, :, None] * k[:, t, :, None, :]
            z = z + k[:, t]
            num = (S * q[:, t, :, None, :]).sum(-1)
            ys.append((num / ((z * q[:, t]).sum(-1) + 1e-6)[..., None]).reshape(B, NH * Dv))
        return torch.stack(ys, 1)


# ---------------------------------------------------------------------------
# GLA (Yang et al. 2023): per-key gate alpha = sigmoid(.)^(1/16) from a rank-R
# projection, S' = diag(alpha) S + k v^T (stored [Dk, Dv] here), y = q S'.
class GLA(Cell):
    DIMS = {"I": 256, "NH": 4, "Dk": 64, "Dv": 64, "R": 16}
    SUBCHUNK = 16  # fla's BC: the sub-chunk whose first row is the reference point

    def param_shapes(self):
        I, NH, Dk, Dv, R = (self.d[k] for k in ("I", "NH", "Dk", "Dv", "R"))
        return {"W_q": [NH * Dk, I], "W_k": [NH * Dk, I], "W_v": [NH * Dv, I],
                "W_a1": [R, I], "W_a2": [NH * Dk, R], "b_a": [NH * Dk]}

    def project(self, x):
        """q (scaled by Dk^-1/2), k, v and the log gate g = log alpha <= 0."""
        NH, Dk, Dv = self.d["NH"], self.d["Dk"], self.d["Dv"]
        B, T, _ = x.shape
        q = (x @ self.w["W_q"].T).div_(math.sqrt(Dk)).view(B, T, NH, Dk)
        k = (x @ self.w["W_k"].T).view(B, T, NH, Dk)
        v = (x @ self.w["W_v"].T).view(B, T, NH, Dv)
        g = F.logsigmoid((x @ self.w["W_a1"].T) @ self.w["W_a2"].T + self.w["b_a"]).div_(16)
        return q, k, v, g.view(B, T, NH, Dk)

    def chunked(self, x, chunk=64):
        B, T, _ = x.shape
        sub = min(self.SUBCHUNK, chunk)
        assert chunk % sub == 0, "the chunk must be a multiple of the sub-chunk"
        q, k, v, g = (chunks(pad_time(t.transpose(1, 2), chunk, 2), chunk) for t in self.project(x))
        b = g.cumsum(-2)  # log of the decay from the chunk's start to each row, per key
        # Between chunks: each chunk's own k^T v decayed to its end, then the
        # state recurrence over chunks. Every exponent here is <= 0.
        b_last = b[:, :, :, -1:]
        kv = (k * (b_last - b).exp()).transpose(-1, -2) @ v
        decay = b_last.exp().transpose(-1, -2)  # [B, H, N, Dk, 1]
        state = torch.empty_like(kv)
        S = torch.zeros_like(kv[:, :, 0])
        for n in range(kv.shape[2]):
            state[:, :, n] = S
            S = decay[:, :, n] * S + kv[:, :, n]
        o = (q * b.exp()) @ state
        o += self.intra(q, k, b, sub) @ v
        return o.flatten(2, 3)[:, :, :T].transpose(1, 2).reshape(B, T, -1)

    @staticmethod
    def intra(q, k, b, sub):
        """A[t, s] = sum_d q_td k_sd exp(b_td - b_sd) for s <= t within a chunk.
        q exp(b) and k exp(-b) separately overflow once a chunk's decay passes
        exp(88) in float32, so, as fla's chunk_gla does, sub-chunk pairs i > j
        factor against a reference point r_i, the first row of sub-chunk i:
        q_t exp(b_t - r_i) and k_s exp(r_i - b_s), both exponents <= 0. The
        diagonal sub-chunks take the exact pairwise exponent, one column at a
        time (fla's intra kernel loops over the columns the same way)."""
        B, H, N, C, Dk = q.shape
        ns = C // sub
        qs, ks, bs = (t.reshape(B, H, N, ns, sub, Dk) for t in (q, k, b))
        ref = bs[:, :, :, :, :1]
        qg = qs * (bs - ref).exp()
        A = q.new_zeros(B, H, N, ns, ns, sub, sub)
        if ns > 1:
            i, j = torch.tril_indices(ns, ns, -1, device=q.device)
            kg = ks[:, :, :, j] * (ref[:, :, :, i] - bs[:, :, :, j]).exp()
            A[:, :, :, i, j] = qg[:, :, :, i] @ kg.transpose(-1, -2)
        diag = q.new_zeros(B, H, N, ns, sub, sub)
        for s in range(sub):
            w = (bs[:, :, :, :, s:] - bs[:, :, :, :, s:s + 1]).exp_()
            diag[:, :, :, :, s:, s] = (qs[:, :, :, :, s:] * w * ks[:, :, :, :, s:s + 1]).sum(-1)
        r = torch.arange(ns, device=q.device)
        A[:, :, :, r, r] = diag
        return A.permute(0, 1, 2, 3, 5, 4, 6).reshape(B, H, N, C, C)

    def naive(self, x):
        NH, Dk, Dv = self.d["NH"], self.d["Dk"], self.d["Dv"]
        B, T, _ = x.shape
        q, k, v, g = self.project(x)
        S = x.new_zeros(B, NH, Dv, Dk)
        ys = []
        for t in range(T):
            alpha = g[:, t].exp()
            S = alpha[:, :, None, :] * S + v[:, t, :, :, None] * k[:, t, :, None, :]
            ys.append((S * q[:, t, :, None, :]).sum(-1).reshape(B, NH * Dv))
        return torch.stack(ys, 1)


# ---------------------------------------------------------------------------
# mLSTM (Beck et al. 2024): exponential input gate, log-sigmoid forget gate,
# stabilizer m, normalizer n, output gate.
class MLSTM(Cell):
    DIMS = {"I": 256, "NH": 4, "DH": 64}

    def param_shapes(self):
        I, NH, DH = self.d["I"], self.d["NH"], self.d["DH"]
        shapes = {}
        for p in "qkvo":
            shapes[f"W_{p}"] = [NH * DH, I]
            shapes[f"b_{p}"] = [NH * DH]
        shapes.update({"w_i": [NH, I], "b_i": [NH], "w_f": [NH, I], "b_f": [NH]})
        return shapes

    def project(self, x):
        """q, k, v [B, T, NH, DH], log i and log f [B, T, NH], the output gate."""
        NH, DH = self.d["NH"], self.d["DH"]
        B, T, _ = x.shape
        w = self.w
        q = (x @ w["W_q"].T + w["b_q"]).view(B, T, NH, DH)
        k = ((x @ w["W_k"].T) / math.sqrt(DH) + w["b_k"]).view(B, T, NH, DH)
        v = (x @ w["W_v"].T + w["b_v"]).view(B, T, NH, DH)
        li = x @ w["w_i"].T + w["b_i"]
        lf = F.logsigmoid(x @ w["w_f"].T + w["b_f"])
        og = torch.sigmoid(x @ w["W_o"].T + w["b_o"])
        return q, k, v, li, lf, og

    def chunked(self, x, chunk=64):
        B, T, _ = x.shape
        DH = self.d["DH"]
        q, k, v, li, lf, og = self.project(x)
        q, k, v = (chunks(pad_time(t.transpose(1, 2), chunk, 2), chunk) for t in (q, k, v))
        li, lf = (chunks(pad_time(t.transpose(1, 2), chunk, 2), chunk) for t in (li, lf))
        # n is C with v replaced by 1: one more value column, n the state's last.
        v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1)
        b = lf.cumsum(-1)  # log forget product from the chunk's start, [B, H, N, C]
        # Each chunk's own contribution to the state at its end, stabilized by
        # its own max; the loop rescales it to the running m (the cell's m at
        # the chunk's last row: max(b_last + m_prev, max_s(li_s + b_last - b_s))).
        b_last = b[..., -1]
        a = li + b_last[..., None] - b
        m_own = a.amax(-1)
        kv = (k * (a - m_own[..., None]).exp()[..., None]).transpose(-1, -2) @ v
        state = torch.empty_like(kv)
        m_prev = torch.empty_like(m_own)
        S = torch.zeros_like(kv[:, :, 0])
        m = torch.zeros_like(m_own[:, :, 0])  # the cell's m starts at 0
        for n in range(kv.shape[2]):
            state[:, :, n], m_prev[:, :, n] = S, m
            m_next = torch.maximum(b_last[:, :, n] + m, m_own[:, :, n])
            S = ((b_last[:, :, n] + m - m_next).exp()[..., None, None] * S
                 + (m_own[:, :, n] - m_next).exp()[..., None, None] * kv[:, :, n])
            m = m_next
        # Within a chunk: log weight of token s at row t, then the cell's m_t
        # (the max over the carried state and every token so far) as stabilizer.
        carried = b + m_prev[..., None]
        logw = (b[..., :, None] - b[..., None, :] + li[..., None, :]).masked_fill_(
            ~causal_mask(chunk, x.device), -math.inf)
        m_t = torch.maximum(carried, logw.amax(-1))
        w = (logw - m_t[..., None]).exp_() * (q @ k.transpose(-1, -2))
        o = (carried - m_t).exp()[..., None] * (q @ state) + w @ v
        den = torch.maximum(o[..., DH].abs(), (-m_t).exp())
        h = o[..., :DH] / den[..., None]
        h = h.flatten(2, 3)[:, :, :T].transpose(1, 2).reshape(B, T, -1)
        return og * h

    def naive(self, x):
        NH, DH = self.d["NH"], self.d["DH"]
        B, T, _ = x.shape
        q, k, v, li, lf, og = self.project(x)
        C = x.new_zeros(B, NH, DH, DH)
        n = x.new_zeros(B, NH, DH)
        m = x.new_zeros(B, NH)
        ys = []
        for t in range(T):
            m_new = torch.maximum(lf[:, t] + m, li[:, t])
            i_s = (li[:, t] - m_new).exp()
            f_s = (lf[:, t] + m - m_new).exp()
            m = m_new
            C = f_s[..., None, None] * C + i_s[..., None, None] * v[:, t, :, :, None] * k[:, t, :, None, :]
            n = f_s[..., None] * n + i_s[..., None] * k[:, t]
            num = (C * q[:, t, :, None, :]).sum(-1)
            den = torch.maximum((n * q[:, t]).sum(-1).abs(), (-m).exp())
            ys.append(og[:, t] * (num / den[..., None]).reshape(B, NH * DH))
        return torch.stack(ys, 1)


# ---------------------------------------------------------------------------
# Mamba-2 (Dao & Gu 2024): SSD with a scalar decay per head, grouped B and C,
# causal conv1d, D skip, gated RMSNorm, in/out projections (mamba-ssm names).
class Mamba2(Cell):
    DIMS = {"d_model": 256, "ngroups": 1, "hpg": 8, "headdim": 64, "d_state": 64, "d_conv": 4}

    def sizes(self):
        d = self.d
        nheads = d["ngroups"] * d["hpg"]
        d_inner = nheads * d["headdim"]
        return nheads, d_inner, d_inner + 2 * d["ngroups"] * d["d_state"]

    def param_shapes(self):
        nheads, d_inner, conv_dim = self.sizes()
        d_model, d_conv = self.d["d_model"], self.d["d_conv"]
        return {"in_proj.weight": [d_inner + conv_dim + nheads, d_model],
                "conv1d.weight": [conv_dim, d_conv], "conv1d.bias": [conv_dim],
                "dt_bias": [nheads], "A_log": [nheads], "D": [nheads],
                "norm.weight": [d_inner], "out_proj.weight": [d_model, d_inner]}

    def project(self, x):
        """Everything before the recurrence: z, u [B, T, nheads, headdim],
        B and C [B, T, ngroups, d_state], dt and log decay dt A [B, T, nheads].
        in_proj is applied as three products, one per part, so each part is
        contiguous: torch's elementwise kernels on the strided views a split
        gives were several times slower (silu over z: 43 ms against 24)."""
        G, N, P = self.d["ngroups"], self.d["d_state"], self.d["headdim"]
        nheads, d_inner, conv_dim = self.sizes()
        Bsz, T, _ = x.shape
        W = self.w["in_proj.weight"]
        z = x @ W[:d_inner].T
        xbc = x @ W[d_inner:d_inner + conv_dim].T
        dt = x @ W[d_inner + conv_dim:].T
        K = self.d["d_conv"]
        # Depthwise and causal: left padding K-1, cross-correlation puts
        # w[:, K-1] on the current token, as causal_conv in the language. The
        # convolution runs on a contiguous [B, D, T] (on the transposed view
        # it took 4x as long).
        xbc = F.conv1d(xbc.transpose(1, 2).contiguous(), self.w["conv1d.weight"][:, None, :],
                       self.w["conv1d.bias"], padding=K - 1, groups=conv_dim)[..., :T]
        u, Bm, Cm = F.silu(xbc).transpose(1, 2).split([d_inner, G * N, G * N], -1)
        dt = F.softplus(dt + self.w["dt_bias"])
        loga = dt * -self.w["A_log"].exp()
        return (z, u.reshape(Bsz, T, nheads, P), Bm.reshape(Bsz, T, G, N),
                Cm.reshape(Bsz, T, G, N), dt, loga)

    def finish(self, y, z, u):
        """D skip, gated RMSNorm over each group's channels, out_proj."""
        G, hpg, P = self.d["ngroups"], self.d["hpg"], self.d["headdim"]
        Bsz, T = y.shape[:2]
        y = (y + self.w["D"][:, None] * u).reshape(Bsz, T, G, hpg * P)
        g = y * F.silu(z).view(Bsz, T, G, hpg * P)
        # The weight differs between groups, so the fused norm goes without it.
        g = F.rms_norm(g, (hpg * P,), eps=1e-5) * self.w["norm.weight"].view(G, hpg * P)
        return g.reshape(Bsz, T, -1) @ self.w["out_proj.weight"].T

    @staticmethod
    def segsum(a):
        """[..., C] -> [..., C, C]: sum of a over (s, t] for s <= t, -inf above
        the diagonal. Summed directly rather than as cumsum differences, as
        ssd_minimal does, so no precision is lost to cancellation."""
        C = a.shape[-1]
        x = a[..., None].expand(*a.shape, C).masked_fill(~causal_mask(C, a.device, -1), 0)
        return x.cumsum(-2).masked_fill_(~causal_mask(C, a.device), -math.inf)

    def chunked(self, x, chunk=64):
        G, hpg = self.d["ngroups"], self.d["hpg"]
        Bsz, T, _ = x.shape
        z, u, Bm, Cm, dt, loga = self.project(x)
        # Heads as [B, G, hpg, ...] so B and C of a group broadcast to its heads.
        prep = lambda t: chunks(pad_time(t.transpose(1, 2), chunk, 2), chunk)
        X = prep(u * dt[..., None]).unflatten(1, (G, hpg))   # [B, G, hpg, N, C, P]
        a = prep(loga).unflatten(1, (G, hpg))                # [B, G, hpg, N, C]
        Bc, Cc = prep(Bm)[:, :, None], prep(Cm)[:, :, None]  # [B, G, 1, N, C, S]
        acum = a.cumsum(-1)
        # Within a chunk: y_t = sum_{s<=t} exp(a_(s,t]) (C_t . B_s) x_s.
        y = ((self.segsum(a).exp_() * (Cc @ Bc.transpose(-1, -2))) @ X)
        # Between chunks: each chunk's state contribution decayed to its end
        # ([headdim, d_state] per head, the cell's orientation), then the loop.
        a_last = acum[..., -1:]
        own = (X * (a_last - acum).exp()[..., None]).transpose(-1, -2) @ Bc
        decay = a_last.exp()[..., None]
        state = torch.empty_like(own)
        S = torch.zeros_like(own[:, :, :, 0])
        for n in range(own.shape[3]):
            state[:, :, :, n] = S
            S = decay[:, :, :, n] * S + own[:, :, :, n]
        y += acum.exp()[..., None] * (Cc @ state.transpose(-1, -2))
        y = y.flatten(1, 2).flatten(2, 3)[:, :, :T].transpose(1, 2)  # [B, T, nheads, P]
        return self.finish(y, z, u)

    def naive(self, x):
        G, hpg, P, N, K = (self.d[k] for k in ("ngroups", "hpg", "headdim", "d_state", "d_conv"))
        nheads, d_inner, conv_dim = self.sizes()
        Bsz, T, _ = x.shape
        zs, xbcs, dts = (x @ self.w["in_proj.weight"].T).split([d_inner, conv_dim, nheads], -1)
        A = -self.w["A_log"].exp().reshape(G, hpg, 1, 1)
        Dh = self.w["D"].reshape(G, hpg, 1, 1)
        wconv, bconv = self.w["conv1d.weight"], self.w["conv1d.bias"]
        window = x.new_zeros(Bsz, conv_dim, K - 1)
        s = x.new_zeros(Bsz, G, hpg, P, N)
        ys = []
        for t in range(T):
            full = torch.cat([window, xbcs[:, t, :, None]], -1)
            window = full[:, :, 1:]
            xbc = F.silu((full * wconv).sum(-1) + bconv)
            u, Bt, Ct = xbc.split([d_inner, G * N, G * N], -1)
            dt = F.softplus(dts[:, t] + self.w["dt_bias"]).reshape(Bsz, G, hpg, 1, 1)
            u = u.reshape(Bsz, G, hpg, P, 1)
            Bt, Ct = Bt.reshape(Bsz, G, 1, 1, N), Ct.reshape(Bsz, G, 1, 1, N)
            s = (dt * A).exp() * s + dt * u * Bt
            yh = (s * Ct).sum(-1)[..., None] + Dh * u
            g = (yh * F.silu(zs[:, t]).reshape(Bsz, G, hpg, P, 1)).reshape(Bsz, G, hpg * P)
            g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + 1e-5)
            g = g * self.w["norm.weight"].reshape(G, hpg * P)
            ys.append(g.reshape(Bsz, d_inner) @ self.w["out_proj.weight"].T)
        return torch.stack(ys, 1)

    def input_dim(self):
        return self.d["d_model"]


MODELS = {"linearattention": LinearAttention, "linear_attention": LinearAttention,
          "gla": GLA, "mlstm": MLSTM, "mamba2": Mamba2}


def model_class(name):
    cls = MODELS.get(name.lower())
    if cls is None:
        raise SystemExit(f"unknown model {name}: LinearAttention, GLA, MLSTM or Mamba2")
    return cls


def parse_dims(text):
    dims = {}
    for item in filter(None, (text or "").split(",")):
        key, _, val = item.partition("=")
        dims[key.strip()] = int(val)
    return dims


# Small dims that still have several heads and groups, and sizes unlike each
# other so a transposed axis shows up as a shape error rather than passing.
CHECK_DIMS = {
    LinearAttention: {"I": 12, "NH": 2, "Dk": 8, "Dv": 6},
    GLA: {"I": 12, "NH": 2, "Dk": 8, "Dv": 6, "R": 3},
    MLSTM: {"I": 12, "NH": 3, "DH": 5},
    Mamba2: {"d_model": 12, "ngroups": 2, "hpg": 3, "headdim": 4, "d_state": 5, "d_conv": 4},
}


# Gate biases shifted so that the gates are far outside what float32 could
# hold unstabilized, even in float64 for mLSTM: GLA decays by about exp(-12.5)
# a token (exp(-800) over a chunk, so q exp(b) and k exp(-b) alone would
# overflow float64), mLSTM's input gate is about exp(800), Mamba-2's A about
# -55, so a chunk decays by far more than exp(-700).
STRONG_GATES = {GLA: {"b_a": -200.0}, MLSTM: {"b_i": 800.0, "b_f": -20.0}, Mamba2: {"A_log": 4.0}}


def check():
    """Chunked against step-by-step in float64, for T in {1, 63, 64, 65, 200}
    and chunks of 64 and 16: inputs at scale 1, at scale 8, and (gated cells)
    with the gates of STRONG_GATES, which is what the stabilization, the
    sub-chunk reference points and the direct segment sums are for."""
    import os
    import tempfile

    from safetensors.torch import save_file

    torch.manual_seed(0)
    worst = 0.0
    for cls, dims in CHECK_DIMS.items():
        regimes = [("x*1", 1.0, {}), ("x*8", 8.0, {})]
        if cls in STRONG_GATES:
            regimes.append(("strong_gates", 1.0, STRONG_GATES[cls]))
        for label, scale, shifts in regimes:
            model = cls(dims, dtype=torch.float64, seed=1)
            for name, shift in shifts.items():
                model.w[name].add_(shift)
            for T in (1, 63, 64, 65, 200):
                x = torch.randn(2, T, model.input_dim(), dtype=torch.float64) * scale
                ref = model.naive(x)
                assert torch.isfinite(ref).all(), f"{cls.__name__}: the step loop is not finite"
                for chunk in (64, 16):
                    got = model.chunked(x, chunk)
                    assert got.shape == ref.shape, (cls.__name__, got.shape, ref.shape)
                    err = ((got - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()
                    worst = max(worst, err)
                    status = "ok" if err < 1e-9 else "FAIL"
                    print(f"check {cls.__name__} {label} T={T} C={chunk} rel_err={err:.2e} {status}")
                    assert err < 1e-9, f"{cls.__name__}: chunked differs from the step loop"
        # The weights path: save under the .seq names (conv1d.weight in
        # mamba-ssm's [D, 1, K]), load into a differently seeded model.
        model = cls(dims, dtype=torch.float64, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "w.safetensors")
            sd = {n: p.detach().clone() for n, p in model.w.items()}
            if "conv1d.weight" in sd:
                sd["conv1d.weight"] = sd["conv1d.weight"][:, None, :]
            save_file(sd, path)
            other = cls(dims, dtype=torch.float64, seed=2)
            other.load_weights(path)
            x = torch.randn(2, 65, model.input_dim(), dtype=torch.float64)
            assert torch.equal(other(x), model(x)), f"{cls.__name__}: loaded weights differ"
            print(f"check {cls.__name__} weights round trip ok")
    print(f"check passed: worst rel_err={worst:.2e} (limit 1e-9)")


def keep_freed_memory():
    """Makes glibc's malloc keep freed memory for the next allocation instead
    of returning it to the kernel. By default a block over the mmap threshold
    (128 KiB, rising to at most 32 MiB) is its own mapping, unmapped on free,
    so each of a forward's big temporaries faults its pages in afresh, and in
    this VM that took half the forward
    (LinearAttention at B=8, T=4096: 1.3 s, 0.66 s with this). seqc's runtime
    keeps its scratch mapped between calls for the same reason
    (runtime/cpu_gemm.c, alloc_block), so the peer does too; --stock-malloc
    leaves malloc alone. No-op where the C library is not glibc."""
    import ctypes

    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    try:
        libc = ctypes.CDLL("libc.so.6")  # mallopt takes an int: 2 GiB is the most it can say
        ok = libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        print("warning: could not configure malloc; freed memory goes back to the kernel",
              file=sys.stderr)


def bench(args):
    if not args.stock_malloc:
        keep_freed_memory()
    cls = model_class(args.model)
    torch.set_num_threads(args.threads)
    model = cls(parse_dims(args.dims), dtype=torch.float32, seed=0)
    if args.weights:
        model.load_weights(args.weights)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.B, args.T, model.input_dim(), generator=gen) * 2 - 1
    times = []
    with torch.inference_mode():
        y = model(x, args.chunk)  # warm-up
        if not torch.isfinite(y).all():
            raise SystemExit(f"{cls.__name__}: non-finite output")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model(x, args.chunk)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"torch {cls.__name__} B={args.B} T={args.T} threads={torch.get_num_threads()} "
          f"median_ms={med * 1e3:.2f} min_ms={min(times) * 1e3:.2f} max_ms={max(times) * 1e3:.2f} "
          f"tokens_per_s={args.B * args.T / med:.0f}", flush=True)


def main():
    if "--check" in sys.argv[1:]:
        check()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("B", type=int)
    ap.add_argument("T", type=int)
    ap.add_argument("threads", type=int)
    ap.add_argument("reps", type=int)
    ap.add_argument("--dims", default="", help="k=v,... over the model's defaults")
    ap.add_argument("--weights", help="a safetensors file with the std cell's parameters")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--stock-malloc", action="store_true",
                    help="leave glibc's malloc as it is (see keep_freed_memory)")
    bench(ap.parse_args())


if __name__ == "__main__":
    main()
