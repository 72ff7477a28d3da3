"""Float64 NumPy references for the std cells, written from each paper's
equations and the reference implementation's conventions, not from seqc.

Every cell is a function  cell(p, x, st) -> (y, final_states)  over ONE
sequence: p maps parameter names (the .seq names, so the fixture's
safetensors loads into seqc unchanged) to float64 arrays, x is [L, ...] (the
sequence's valid steps only), st maps state names to initial values (missing
states start at the paper's initial value, zero everywhere here). y is
[L, ...]; final_states maps state names to the state after step L.

Multi-head cells (Mamba-2, linear attention, RetNet, GLA, mLSTM, DeltaNet,
gated DeltaNet) are computed one head at a time on the head-major slices of
the projections, each head as the single-head paper writes it.

Where it helps independence, a cell is evaluated in a different but
equivalent form from the per-step recurrence the .seq writes: S4D as the
reference's convolution kernel, Mamba-2 through the SSD "attention" (dual)
form, linear attention and retention through their parallel (masked
quadratic) forms, RetNet's rotation as complex multiplication, and the xLSTM cells both with and without the max
stabilizer (the two must agree; the stabilized states are what seqc keeps).
"""

import math

import numpy as np

# ---------------------------------------------------------------- helpers


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def softplus(x):
    return np.logaddexp(0.0, x)


def silu(x):
    return x * sigmoid(x)


def gelu(x):
    # exact (erf) GELU, as torch.nn.GELU() by default
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def l2normalize(x):
    """The papers' exact unit-norm map (DeltaNet eq. 2): x / ||x||."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def l2normalize_fla(x, eps=1e-6):
    """fla's l2norm (the DeltaNet / Gated DeltaNet reference code):
    x / sqrt(sum(x^2) + eps). Equal to the exact map up to eps / (2 |x|^2):
    ~1e-5 for SiLU'd keys of norm ~0.3, which is why those cells use it."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def rms_norm(x, w, eps=1e-5):
    """mamba-ssm's RMSNorm (eps 1e-5)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def torch_causal_conv1d(u, w, b):
    """nn.Conv1d(D, D, K, groups=D, padding=K-1)(u.T)[..., :L].T, as Mamba,
    Mamba-2 and GAM apply it. u [L, D], w [D, 1, K] (PyTorch layout), b [D].
    Cross-correlation: out[t] = b + sum_k w[:, 0, k] * u[t - (K - 1) + k]."""
    L, D = u.shape
    K = w.shape[-1]
    pad = np.concatenate([np.zeros((K - 1, D)), u], axis=0)
    out = np.empty((L, D))
    for t in range(L):
        out[t] = b + np.sum(w[:, 0, :].T * pad[t:t + K], axis=0)
    return out


def zeros_or(st, name, shape, dtype=float):
    v = st.get(name)
    return np.zeros(shape, dtype=dtype) if v is None else np.array(v, dtype=dtype)


# ------------------------------------------------------ minGRU / minLSTM
# Feng et al. 2024, "Were RNNs all we needed?", sections 3.1 and 3.2
# (sequential mode).


def mingru(p, x, st):
    z = sigmoid(x @ p["linear_z.weight"].T + p["linear_z.bias"])
    h_tilde = x @ p["linear_h.weight"].T + p["linear_h.bias"]
    h = zeros_or(st, "h", h_tilde.shape[1:])
    ys = []
    for t in range(len(x)):
        h = (1 - z[t]) * h + z[t] * h_tilde[t]
        ys.append(h)
    return np.array(ys), {"h": h}


def minlstm(p, x, st):
    f = sigmoid(x @ p["linear_f.weight"].T + p["linear_f.bias"])
    i = sigmoid(x @ p["linear_i.weight"].T + p["linear_i.bias"])
    f_prime, i_prime = f / (f + i), i / (f + i)
    h_tilde = x @ p["linear_h.weight"].T + p["linear_h.bias"]
    h = zeros_or(st, "h", h_tilde.shape[1:])
    ys = []
    for t in range(len(x)):
        h = f_prime[t] * h + i_prime[t] * h_tilde[t]
        ys.append(h)
    return np.array(ys), {"h": h}


# ------------------------------------------------------------------- LRU
# Orvieto et al. 2023, section 3 and the appendix A code:
#   Lambda = exp(-exp(nu_log) + 1j exp(theta_log))
#   B_norm = (B_re + 1j B_im) * exp(gamma_log)[:, None]
#   x_k = Lambda x_{k-1} + B_norm u_k;  y_k = (C x_k).real + D u_k


def lru(p, x, st):
    Lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    B_norm = (p["B_re"] + 1j * p["B_im"]) * np.exp(p["gamma_log"])[:, None]
    C = p["C_re"] + 1j * p["C_im"]
    s = zeros_or(st, "s", Lam.shape, complex)
    ys = []
    for u in x:
        s = Lam * s + B_norm @ u
        ys.append((C @ s).real + p["D"] * u)
    return np.array(ys), {}


# ------------------------------------------------------------------- S4D
# Gu et al. 2022 (S4D), ZOH, evaluated as the reference S4DKernel does: a
# length-L convolution kernel K[h, l] = 2 Re(sum_n C~[h,n] exp(dtA[h,n] l)),
# C~ = C (exp(dtA) - 1) / A, then y = K * u (causal) + D u.


def s4d(p, x, st):
    L, H = x.shape
    A = -np.exp(p["kernel.log_A_real"]) + 1j * p["kernel.A_imag"]
    dt = np.exp(p["kernel.log_dt"])
    dtA = A * dt[:, None]
    C = p["kernel.C"][..., 0] + 1j * p["kernel.C"][..., 1]
    C = C * (np.exp(dtA) - 1.0) / A
    K = 2 * np.einsum("hn,hnl->hl", C, np.exp(dtA[..., None] * np.arange(L))).real
    y = np.zeros((L, H))
    for t in range(L):
        for l in range(t + 1):
            y[t] += K[:, l] * x[t - l]
    return y + p["D"] * x, {}


# -------------------------------------------------------------------- S4
# Gu, Goel & Re 2022 (S4), section 3: A = Lambda - P P* (normal plus low
# rank, Q = P), the bilinear discretization formed densely per channel with
# solves (the paper's Woodbury step is what s4.seq writes; this is the
# definition it rewrites), y = 2 Re(C s) + D u over conjugate pairs.


def s4(p, x, st):
    L, H = x.shape
    lam = -np.exp(p["kernel.log_A_real"]) + 1j * p["kernel.A_imag"]
    cplx = lambda a: a[..., 0] + 1j * a[..., 1]
    P, B, C = cplx(p["kernel.P"]), cplx(p["kernel.B"]), cplx(p["kernel.C"])
    dt = np.exp(p["kernel.log_dt"])
    N = lam.shape[1]
    y = np.zeros((L, H))
    for h in range(H):
        A = np.diag(lam[h]) - np.outer(P[h], P[h].conj())
        M = np.eye(N) - dt[h] / 2 * A
        dA = np.linalg.solve(M, np.eye(N) + dt[h] / 2 * A)
        dB = np.linalg.solve(M, dt[h] * B[h])
        s = np.zeros(N, dtype=complex)
        for t in range(L):
            s = dA @ s + dB * x[t, h]
            y[t, h] = 2 * (C[h] @ s).real + p["D"][h] * x[t, h]
    return y, {}


# ------------------------------------------------------------------ LSSL
# Gu et al. 2021 (LSSL), section 3: the bilinear (GBT, alpha = 1/2)
# discretization of x' = A x + B u per channel, evaluated in the paper's
# convolutional view: dA = (I - dt/2 A) \ (I + dt/2 A), dB = (I - dt/2 A) \
# dt B (solves, no inverse), the kernel K_l = C dA^l dB, y = K * u + D u,
# plus the initial state's free response C dA^(t+1) s0.


def lssl(p, x, st, zoh=False):
    L, H = x.shape
    A = p["A"]
    N = A.shape[0]
    dt = np.exp(p["log_dt"])
    s0 = zeros_or(st, "s", (H, N))
    y = np.zeros((L, H))
    fin = np.zeros((H, N))
    for h in range(H):
        if zoh:
            # Zero-order hold: dA = e^{dt A}, dB = A^-1 (e^{dt A} - I) B (SciPy's
            # Pade expm, not seqc's Taylor series).
            import scipy.linalg

            dA = scipy.linalg.expm(dt[h] * A)
            dB = np.linalg.solve(A, (dA - np.eye(N)) @ p["B"][h])
        else:
            M = np.eye(N) - dt[h] / 2 * A
            dA = np.linalg.solve(M, np.eye(N) + dt[h] / 2 * A)
            dB = np.linalg.solve(M, dt[h] * p["B"][h])
        powers = [np.eye(N)]
        for _ in range(L):
            powers.append(dA @ powers[-1])
        K = np.array([p["C"][h] @ powers[l] @ dB for l in range(L)])
        for t in range(L):
            y[t, h] = K[: t + 1] @ x[t::-1, h] + p["C"][h] @ powers[t + 1] @ s0[h] + p["D"][h] * x[t, h]
        fin[h] = powers[L] @ s0[h] + sum(powers[l] @ dB * x[L - 1 - l, h] for l in range(L))
    return y, {"s": fin}


def lssl_zoh(p, x, st):
    return lssl(p, x, st, zoh=True)


# -------------------------------------------------------------------- S5
# Smith et al. 2023, eqs. 6-7 / ssm.py: ZOH, conjugate-symmetric output.


def s5(p, x, st):
    Lam = p["Lambda_re"] + 1j * p["Lambda_im"]
    step = np.exp(p["log_step"][:, 0])
    Lam_bar = np.exp(Lam * step)
    B_tilde = p["B"][..., 0] + 1j * p["B"][..., 1]
    C_tilde = p["C"][..., 0] + 1j * p["C"][..., 1]
    B_bar = (1 / Lam * (Lam_bar - 1))[:, None] * B_tilde
    # x_k = Lam_bar^k x_0 + sum_j Lam_bar^(k-j) B_bar u_j, unrolled directly
    Bu = x @ B_bar.T
    L = len(x)
    s0 = zeros_or(st, "s", Lam.shape, complex)
    ys = []
    for k in range(L):
        s = Lam_bar ** (k + 1) * s0
        for j in range(k + 1):
            s = s + Lam_bar ** (k - j) * Bu[j]
        ys.append(2 * (C_tilde @ s).real + p["D"] * x[k])
    return np.array(ys), {}


# ------------------------------------------------------------- Mamba SSM
# Gu & Dao 2023, Algorithm 2, as mamba-ssm's selective_scan_ref computes it:
#   deltaA = exp(delta A), deltaB_u = delta B u, x = deltaA x + deltaB_u,
#   y = x C, out = y + D u   (delta = softplus(dt_proj(dt) + delta_bias))


def selective_scan(u, delta, A, B, C, D, s0):
    deltaA = np.exp(np.einsum("ld,dn->ldn", delta, A))
    deltaB_u = np.einsum("ld,ln,ld->ldn", delta, B, u)
    s = s0
    ys = []
    for t in range(len(u)):
        s = deltaA[t] * s + deltaB_u[t]
        ys.append(np.einsum("dn,n->d", s, C[t]))
    return np.array(ys) + u * D, s


def mamba_ssm(p, x, st):
    d_state = p["A_log"].shape[1]
    dt_rank = p["dt_proj.weight"].shape[1]
    x_dbl = x @ p["x_proj.weight"].T
    dt, B, C = np.split(x_dbl, [dt_rank, dt_rank + d_state], axis=-1)
    delta = softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    A = -np.exp(p["A_log"])
    s0 = zeros_or(st, "s", A.shape)
    y, s = selective_scan(x, delta, A, B, C, p["D"], s0)
    return y, {"s": s}


def mamba(p, x, st):
    """The block of mamba_simple.py through mamba_inner_ref: in_proj, causal
    depthwise conv + SiLU, x_proj, dt_proj (bias as delta_bias, softplus),
    selective scan with z gating (y * silu(z)), out_proj."""
    d_state = p["A_log"].shape[1]
    dt_rank = p["dt_proj.weight"].shape[1]
    xz = x @ p["in_proj.weight"].T
    u, z = np.split(xz, 2, axis=-1)
    u = silu(torch_causal_conv1d(u, p["conv1d.weight"], p["conv1d.bias"]))
    x_dbl = u @ p["x_proj.weight"].T
    dt, B, C = np.split(x_dbl, [dt_rank, dt_rank + d_state], axis=-1)
    delta = softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    A = -np.exp(p["A_log"])
    s0 = zeros_or(st, "s", A.shape)
    y, s = selective_scan(u, delta, A, B, C, p["D"], s0)
    y = y * silu(z)
    return y @ p["out_proj.weight"].T, {"s": s}


# --------------------------------------------------------------- Mamba-2
# Dao & Gu 2024, mamba_ssm/modules/mamba2.py: nheads heads of headdim
# channels, ngroups groups of B and C (head h reads group h // (nheads /
# ngroups)), RMSNormGated(norm_before_gate=False, group_size = d_inner /
# ngroups). ngroups is configuration, not a weight: the caller passes it.
# Each head's SSD layer is evaluated in its quadratic "attention" form
# (section 4 / ssd_minimal's segsum):  Y = (L o C B^T) (dt X),
# L[t, s] = exp(sum_{r=s+1..t} dt_r A), plus the initial state's
# contribution exp(sum_{r<=t} dt_r A) S0 C_t. States are mamba-ssm's
# [nheads, headdim, d_state], returned as [ngroups, hpg, headdim, d_state]
# (the .seq's split of the head axis; same elements).


def ssd_head(u, dt, A, B, C, S0):
    """One head: u [L, P], dt [L], A scalar, B, C [L, N], S0 [P, N]."""
    L = len(u)
    cs = np.cumsum(dt * A)  # cs[t] = sum_{r<=t} dt_r A
    seg = cs[:, None] - cs[None, :]
    mask = np.tril(np.ones((L, L), dtype=bool))
    Lmat = np.where(mask, np.exp(np.where(mask, seg, 0.0)), 0.0)
    y = ((C @ B.T) * Lmat) @ (dt[:, None] * u) + np.exp(cs)[:, None] * (C @ S0.T)
    S = np.exp(cs[-1]) * S0 + np.einsum("s,s,sp,sn->pn", np.exp(cs[-1] - cs), dt, u, B)
    return y, S


def mamba2(p, x, st, ngroups=1):
    nheads = p["A_log"].shape[0]
    d_inner = p["norm.weight"].shape[0]
    headdim = d_inner // nheads
    conv_dim = p["conv1d.weight"].shape[0]
    d_state = (conv_dim - d_inner) // (2 * ngroups)
    hpg = nheads // ngroups
    zxbcdt = x @ p["in_proj.weight"].T
    z, xBC, dt = np.split(zxbcdt, [d_inner, d_inner + conv_dim], axis=-1)
    dt = softplus(dt + p["dt_bias"])  # [L, nheads]
    xBC = silu(torch_causal_conv1d(xBC, p["conv1d.weight"].reshape(conv_dim, 1, -1),
                                   p["conv1d.bias"]))
    u, B, C = np.split(xBC, [d_inner, d_inner + ngroups * d_state], axis=-1)
    L = len(x)
    u = u.reshape(L, nheads, headdim)
    B = B.reshape(L, ngroups, d_state)
    C = C.reshape(L, ngroups, d_state)
    A = -np.exp(p["A_log"])
    S0 = zeros_or(st, "s", (ngroups, hpg, headdim, d_state)).reshape(nheads, headdim, d_state)
    y = np.empty((L, nheads, headdim))
    S = np.empty((nheads, headdim, d_state))
    for h in range(nheads):
        g = h // hpg
        y[:, h], S[h] = ssd_head(u[:, h], dt[:, h], A[h], B[:, g], C[:, g], S0[h])
    y = y + p["D"][:, None] * u
    # RMSNormGated, norm_before_gate=False: rmsnorm(y * silu(z)) per group
    g = (y.reshape(L, d_inner) * silu(z)).reshape(L, ngroups, d_inner // ngroups)
    w = p["norm.weight"].reshape(ngroups, d_inner // ngroups)
    y = rms_norm(g, w).reshape(L, d_inner)
    return y @ p["out_proj.weight"].T, {"s": S.reshape(ngroups, hpg, headdim, d_state)}


# ------------------------------------------------------ linear attention
# Katharopoulos et al. 2020, eq. 9 masked to j <= i (the causal form that
# eqs. 16-20 compute recurrently), phi = elu + 1, eps 1e-6 added to the
# denominator as in fast-transformers' CausalLinearAttention, per head
# (projections split head-major into [NH, D]). NH is W_q's rows / the
# state's head count: heads(p, st) below reads it from the initial state's
# shape or the caller.


def elu_plus_one(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def split_heads(a, nh):
    """[L, nh*D] -> [nh, L, D] (head-major rows, as the projections store them)."""
    L = a.shape[0]
    return a.reshape(L, nh, -1).transpose(1, 0, 2)


def linear_attention(p, x, st, nh=1):
    qs = split_heads(elu_plus_one(x @ p["W_q"].T), nh)
    ks = split_heads(elu_plus_one(x @ p["W_k"].T), nh)
    vs = split_heads(x @ p["W_v"].T, nh)
    Dk, Dv = qs.shape[2], vs.shape[2]
    S0 = zeros_or(st, "S", (nh, Dv, Dk))  # seqc's layout [NH, Dv, Dk]
    z0 = zeros_or(st, "z", (nh, Dk))
    ys, S, z = [], np.empty_like(S0), np.empty_like(z0)
    for h in range(nh):
        q, k, v = qs[h], ks[h], vs[h]
        A = np.tril(q @ k.T)  # A[i, j] = phi(q_i) . phi(k_j), j <= i
        num = A @ v + q @ S0[h].T
        den = A.sum(axis=1) + q @ z0[h] + 1e-6
        ys.append(num / den[:, None])
        S[h] = S0[h] + v.T @ k
        z[h] = z0[h] + k.sum(axis=0)
    return np.concatenate(ys, axis=1), {"S": S, "z": z}


# --------------------------------------------------------------- RetNet
# Sun et al. 2023, multi-scale retention, the parallel representation eq. 5
# per head, Retention(X) = (Q K^T o D) V, D[n, m] = gamma^(n-m) (n >= m),
# gamma_h = 1 - 2^(-5-h) (section 2.2, computed here, not read from the
# weights' `decay`, which must hold its log), K scaled by d^-1/2 (d = the
# head's key dim), Q and K rotated by n theta (Theta_n = e^{i n theta},
# section 2.1) on pairs (2j, 2j+1) with theta_j = 10000^(-j / (d/2 - 1))
# (torchscale's angle, linspace(0, 1, d/2)), as complex numbers; an initial
# state S0 at position n0 adds gamma^(n - n0 + 1) Q_n S0. Then eq. 8:
# GroupNorm per head (no affine, eps 1e-6), swish(X W_G) gate, W_O.


def retnet_gamma(nh):
    return 1 - 2.0 ** (-5 - np.arange(nh))


def retnet_theta(d):
    return 1.0 / (10000 ** np.linspace(0, 1, d // 2))


def retnet(p, x, st):
    nh = p["decay"].shape[0]
    gamma = retnet_gamma(nh)
    assert np.allclose(np.exp(p["decay"]), gamma, rtol=1e-6), "decay holds log gamma"
    d = p["q_proj.weight"].shape[0] // nh
    theta = retnet_theta(d)
    assert np.allclose(p["angle"], np.repeat(theta, 2), rtol=1e-6), "angle holds theta, each twice"
    L = len(x)
    n0 = float(zeros_or(st, "pos", ()))
    pos = n0 + np.arange(L)
    rot = np.exp(1j * pos[:, None] * theta[None, :])  # [L, d/2]

    def as_complex(a):  # [L, d] -> [L, d/2]: pairs (2j, 2j+1) as re, im
        return a[:, 0::2] + 1j * a[:, 1::2]

    qs = split_heads(x @ p["q_proj.weight"].T, nh)
    ks = split_heads(x @ p["k_proj.weight"].T / math.sqrt(d), nh)
    vs = split_heads(x @ p["v_proj.weight"].T, nh)
    Dv = vs.shape[2]
    S0 = zeros_or(st, "S", (nh, Dv, d))  # [NH, Dv, Dk], keys in rotated coordinates
    n = np.arange(L)
    o, S = [], np.empty_like(S0)
    for h in range(nh):
        g = gamma[h]
        q = as_complex(qs[h]) * rot
        k = as_complex(ks[h]) * rot
        # Re(q conj(k)) summed over pairs = the real dot product of the rotated vectors
        qk = (q @ k.conj().T).real
        D = np.where(n[:, None] >= n[None, :], g ** (n[:, None] - n[None, :]).astype(float), 0.0)
        qr = np.stack([q.real, q.imag], axis=-1).reshape(L, d)
        kr = np.stack([k.real, k.imag], axis=-1).reshape(L, d)
        o.append((qk * D) @ vs[h] + (g ** (n + 1))[:, None] * (qr @ S0[h].T))
        S[h] = g ** L * S0[h] + np.einsum("m,md,mk->dk", g ** (L - 1 - n), vs[h], kr)
    o = np.stack(o, axis=1)  # [L, NH, Dv]
    mu = o.mean(axis=-1, keepdims=True)
    o = (o - mu) / np.sqrt(o.var(axis=-1, keepdims=True) + 1e-6)
    y = silu(x @ p["g_proj.weight"].T) * o.reshape(L, nh * Dv)
    return y @ p["out_proj.weight"].T, {"S": S, "pos": np.array(n0 + L)}


# ------------------------------------------------------------------- GLA
# Yang et al. 2023, section 4.1, per head: S_t = (alpha_t^T 1) o S_{t-1} +
# k_t^T v_t, S [Dk, Dv] (the paper's orientation), o_t = q_t S_t,
# alpha_t = sigmoid(x W_a1 W_a2 + b)^(1/16) (NH*Dk logits, head-major);
# q scaled by Dk^-1/2 (the head's key dim) as fla does.


def gla(p, x, st, nh=1):
    qs = split_heads(x @ p["W_q"].T, nh)
    ks = split_heads(x @ p["W_k"].T, nh)
    vs = split_heads(x @ p["W_v"].T, nh)
    als = split_heads(sigmoid(x @ p["W_a1"].T @ p["W_a2"].T + p["b_a"]) ** (1.0 / 16), nh)
    Dk, Dv = qs.shape[2], vs.shape[2]
    S0 = zeros_or(st, "S", (nh, Dv, Dk))
    ys, Sf = [], np.empty_like(S0)
    for h in range(nh):
        S = S0[h].T.copy()  # seqc stores [Dv, Dk]
        yh = []
        for t in range(len(x)):
            S = als[h, t][:, None] * S + np.outer(ks[h, t], vs[h, t])
            yh.append(qs[h, t] / math.sqrt(Dk) @ S)
        ys.append(np.array(yh))
        Sf[h] = S.T
    return np.concatenate(ys, axis=1), {"S": Sf}


# ----------------------------------------------------------------- mLSTM
# Beck et al. 2024 (xLSTM), eqs. 19-27 per head (NH = w_i's rows; each head
# has its own scalar input and forget gate), with k_t = W_k x_t / sqrt(d) +
# b_k (eq. 22: the bias is NOT scaled; d the head dim), sigmoid forget gate,
# exponential input gate, and the stabilizer of appendix A. The
# unstabilized recurrence is run alongside and must give the same h (the
# stabilized C, n are exp(-m) times the true ones).


def mlstm(p, x, st):
    nh = p["w_i"].shape[0]
    qs = split_heads(x @ p["W_q"].T + p["b_q"], nh)
    d = qs.shape[2]
    ks = split_heads(x @ p["W_k"].T / math.sqrt(d) + p["b_k"], nh)
    vs = split_heads(x @ p["W_v"].T + p["b_v"], nh)
    o = sigmoid(x @ p["W_o"].T + p["b_o"])
    i_tilde = x @ p["w_i"].T + p["b_i"]  # [L, NH]
    f_tilde = x @ p["w_f"].T + p["b_f"]
    C0 = zeros_or(st, "C", (nh, d, d))
    n0 = zeros_or(st, "n", (nh, d))
    m0 = zeros_or(st, "m", (nh,))
    hs, Cf, nf, mf = [], np.empty_like(C0), np.empty_like(n0), np.empty_like(m0)
    for hd in range(nh):
        q, k, v = qs[hd], ks[hd], vs[hd]
        C, n, m = C0[hd], n0[hd], m0[hd]
        Ct, nt = C * np.exp(m), n * np.exp(m)  # unstabilized
        out = []
        for t in range(len(x)):
            log_f = logsigmoid(f_tilde[t, hd])
            m_new = max(log_f + m, i_tilde[t, hd])
            i_p = np.exp(i_tilde[t, hd] - m_new)
            f_p = np.exp(log_f + m - m_new)
            C = f_p * C + i_p * np.outer(v[t], k[t])
            n = f_p * n + i_p * k[t]
            m = m_new
            h = (C @ q[t]) / max(abs(n @ q[t]), np.exp(-m))
            # the paper without stabilization: i = exp(i~), f = sigmoid(f~)
            ft, it = sigmoid(f_tilde[t, hd]), np.exp(i_tilde[t, hd])
            Ct = ft * Ct + it * np.outer(v[t], k[t])
            nt = ft * nt + it * k[t]
            h_plain = (Ct @ q[t]) / max(abs(nt @ q[t]), 1.0)
            assert np.allclose(h, h_plain, rtol=1e-9, atol=1e-12), "mLSTM stabilizer"
            out.append(h)
        hs.append(np.array(out))
        Cf[hd], nf[hd], mf[hd] = C, n, m
    return o * np.concatenate(hs, axis=1), {"C": Cf, "n": nf, "m": mf}


# ----------------------------------------------------------------- sLSTM
# Beck et al. 2024 (xLSTM), eqs. 8-17, one head (dense R), gate order of
# the reference i, f, z, o, sigmoid forget gate; stabilized and plain runs
# must agree on h.


def slstm(p, x, st):
    H = p["R"].shape[1]
    h = zeros_or(st, "h", (H,))
    c = zeros_or(st, "c", (H,))
    n = zeros_or(st, "n", (H,))
    m = zeros_or(st, "m", (H,))
    ct, nt = c * np.exp(m), n * np.exp(m)
    ys = []
    for t in range(len(x)):
        raw = p["W"] @ x[t] + p["R"] @ h + p["b"]
        i_t, f_t, z_t, o_t = np.split(raw, 4)
        z, o = np.tanh(z_t), sigmoid(o_t)
        log_f = logsigmoid(f_t)
        m_new = np.maximum(log_f + m, i_t)
        i_p = np.exp(i_t - m_new)
        f_p = np.exp(log_f + m - m_new)
        c = f_p * c + i_p * z
        n = f_p * n + i_p
        m = m_new
        ct = sigmoid(f_t) * ct + np.exp(i_t) * z
        nt = sigmoid(f_t) * nt + np.exp(i_t)
        h_new = o * (c / n)
        assert np.allclose(h_new, o * (ct / nt), rtol=1e-9, atol=1e-12), "sLSTM stabilizer"
        h = h_new
        ys.append(h)
    return np.array(ys), {"h": h, "c": c, "n": n, "m": m}


# ------------------------------------------------------- delta rule family
# DeltaNet: S_t = S_{t-1} (I - beta k k^T) + beta v k^T, o_t = S_t q_t, with
# unit-norm q, k (Yang et al. 2024 eqs. 1-2; normalized as fla's l2norm
# does, with eps 1e-6), per head (NH = W_b's rows, one beta per head).
# Written with the identity matrix as the papers write it.


def deltanet(p, x, st):
    nh = p["W_b"].shape[0]
    qs = l2normalize_fla(split_heads(x @ p["W_q"].T, nh))
    ks = l2normalize_fla(split_heads(x @ p["W_k"].T, nh))
    vs = split_heads(x @ p["W_v"].T, nh)
    beta = sigmoid(x @ p["W_b"].T)  # [L, NH]
    Dk, Dv = ks.shape[2], vs.shape[2]
    S0 = zeros_or(st, "S", (nh, Dv, Dk))
    I = np.eye(Dk)
    ys, Sf = [], np.empty_like(S0)
    for h in range(nh):
        S, out = S0[h], []
        for t in range(len(x)):
            k, b = ks[h, t], beta[t, h]
            S = S @ (I - b * np.outer(k, k)) + b * np.outer(vs[h, t], k)
            out.append(S @ qs[h, t])
        ys.append(np.array(out))
        Sf[h] = S
    return np.concatenate(ys, axis=1), {"S": Sf}


def gated_deltanet(p, x, st):
    """Yang, Kautz & Hatamizadeh 2024 eq. 10, per head:
    S_t = S_{t-1} alpha_t (I - beta_t k k^T) + beta_t v k^T, fla's gate
    alpha = exp(-exp(A_log) softplus(a + dt_bias)) (one per head),
    q, k = l2(silu(.)) per head (fla's l2norm, eps 1e-6)."""
    nh = p["W_b"].shape[0]
    qs = l2normalize_fla(silu(split_heads(x @ p["W_q"].T, nh)))
    ks = l2normalize_fla(silu(split_heads(x @ p["W_k"].T, nh)))
    vs = silu(split_heads(x @ p["W_v"].T, nh))
    beta = sigmoid(x @ p["W_b"].T)
    alpha = np.exp(-np.exp(p["A_log"]) * softplus(x @ p["W_a"].T + p["dt_bias"]))  # [L, NH]
    Dk, Dv = ks.shape[2], vs.shape[2]
    S0 = zeros_or(st, "S", (nh, Dv, Dk))
    I = np.eye(Dk)
    ys, Sf = [], np.empty_like(S0)
    for h in range(nh):
        S, out = S0[h], []
        for t in range(len(x)):
            k, b, a = ks[h, t], beta[t, h], alpha[t, h]
            S = S @ (a * (I - b * np.outer(k, k))) + b * np.outer(vs[h, t], k)
            out.append(S @ qs[h, t])
        ys.append(np.array(out))
        Sf[h] = S
    return np.concatenate(ys, axis=1), {"S": Sf}


def deltaproduct(p, x, st):
    """Siems et al. 2025 eq. 4: per token, the product of n_h generalized
    Householder transitions (I - beta_j k_j k_j^T), each with its own write
    beta_j v_j k_j^T; n_h is the number of rows of W_b."""
    Dk = p["W_q"].shape[0]
    nh = p["W_b"].shape[0]
    q = l2normalize(x @ p["W_q"].T)
    kk = x @ p["W_k"].T
    vv = x @ p["W_v"].T
    bb = sigmoid(x @ p["W_b"].T)
    Dv = vv.shape[1] // nh
    ks = [l2normalize(kk[:, j * Dk:(j + 1) * Dk]) for j in range(nh)]
    vs = [vv[:, j * Dv:(j + 1) * Dv] for j in range(nh)]
    S = zeros_or(st, "S", (Dv, Dk))
    I = np.eye(Dk)
    ys = []
    for t in range(len(x)):
        for j in range(nh):
            k, v, b = ks[j][t], vs[j][t], bb[t, j]
            S = S @ (I - b * np.outer(k, k)) + b * np.outer(v, k)
        ys.append(S @ q[t])
    return np.array(ys), {"S": S}


# ----------------------------------------------------------------- pLSTM
# Poeppel et al. 2025, 1D pLSTM as ml-jku/plstm's plstm_1d: the mark reads the
# state entering step t, the direct term carries token t, the source writes
# the state leaving t:  y_t = q_t^T (sum_j M_t^j C_{t-1}^j + D_t k_t v_t^T),
# C_t^i = sum_j T_t^{ij} C_{t-1}^j + S_t^i k_t v_t^T, scaled by Dk^-1/2.
# The S, T, M, D parameterization is the .seq's (stated there).


def plstm(p, x, st):
    Dk = p["W_q"].shape[0]
    J = p["W_S"].shape[0]
    q, k, v = x @ p["W_q"].T, x @ p["W_k"].T, x @ p["W_v"].T
    S_g = sigmoid(x @ p["W_S"].T + p["b_S"])
    T_g = np.tanh(np.einsum("abi,ti->tab", p["W_T"], x) + p["b_T"]) / J
    M_g = sigmoid(x @ p["W_M"].T + p["b_M"])
    D_g = sigmoid(x @ p["w_D"] + p["b_D"])
    C = zeros_or(st, "C", (J, v.shape[1], Dk))  # [J, Dv, Dk]
    ys = []
    for t in range(len(x)):
        kv = np.outer(v[t], k[t])
        y = np.einsum("j,jvk,k->v", M_g[t], C, q[t]) + D_g[t] * kv @ q[t]
        ys.append(y / math.sqrt(Dk))
        C = np.einsum("ij,jvk->ivk", T_g[t], C) + S_g[t][:, None, None] * kv
    return np.array(ys), {"C": C}


# ------------------------------------------------------------------- GAM
# Acharya 2025 / rishiraj/gam GAMBlock's mixer (the part between ln1 and
# the residual): local = causal depthwise conv, global = softmax(x M^T) M,
# fused with sigmoid gates.


def gam(p, x, st):
    local = torch_causal_conv1d(x, p["causal_conv.weight"], p["causal_conv.bias"])
    scores = x @ p["memory_bank"].T
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    w = w / w.sum(axis=-1, keepdims=True)
    glob = w @ p["memory_bank"]
    g = x @ p["gate.weight"].T + p["gate.bias"]
    g_l, g_g = np.split(g, 2, axis=-1)
    return sigmoid(g_l) * local + sigmoid(g_g) * glob, {}


# ------------------------------------------------------------ ParaRNN
# apple/ml-pararnn gru_diag_mh.py and lstm_cifg_diag_mh.py recurrence_step,
# with heads = 1:  Bx = einsum('hivj,hi->vhj', B, x).


def paragru(p, x, st):
    A, b = p["A"], p["b"]
    Bxpb = np.einsum("hivj,ti->tvj", p["B"], x) + b  # [t, 3, H]
    h = zeros_or(st, "h", (A.shape[1],))
    ys = []
    for t in range(len(x)):
        z = sigmoid(A[0] * h + Bxpb[t, 0])
        r = sigmoid(A[1] * h + Bxpb[t, 1])
        h_new = np.tanh(A[2] * h * r + Bxpb[t, 2])
        h = z * h_new + (1 - z) * h
        ys.append(h)
    return np.array(ys), {"h": h}


def paralstm(p, x, st):
    A, Cp, b = p["A"], p["C"], p["b"]
    Bxpb = np.einsum("hivj,ti->tvj", p["B"], x) + b  # rows f, o, c
    H = A.shape[1]
    c = zeros_or(st, "c", (H,))
    h = zeros_or(st, "h", (H,))
    ys = []
    for t in range(len(x)):
        f_pre, o_pre, c_pre = A[0] * h + Bxpb[t, 0], A[1] * h + Bxpb[t, 1], A[2] * h + Bxpb[t, 2]
        f = sigmoid(f_pre + Cp[0] * c)
        c = f * c + (1 - f) * np.tanh(c_pre)
        o = sigmoid(o_pre + Cp[1] * c)
        h = o * np.tanh(c)
        ys.append(h)
    return np.array(ys), {"c": c, "h": h}


# ---------------------------------------------------------------- RWKV-7
# Peng et al. 2025, section 4, as RWKV-LM's rwkv_v7_demo.py computes one
# head of RWKV_Tmix_x070 at layer 0 (no value residual), written with the
# decay in the demo's later closed form exp(-e^-1/2 sigmoid(w0 + w)) (equal
# to exp(-exp(-softplus(-(w0 + w)) - 1/2))), F.normalize for kk, and the
# state update  state = state diag(w) + state (-kk)(kk a)^T + v k^T.


def rwkv7(p, x, st):
    C = x.shape[1]
    v1 = lambda name: p[name].reshape(C)  # [1, 1, C] -> [C]
    x_prev = zeros_or(st, "x_prev", (C,))
    state = zeros_or(st, "S", (C, C))
    xs_prev = np.concatenate([x_prev[None], x[:-1]], axis=0)
    xx = xs_prev - x
    xr, xw, xk = x + xx * v1("x_r"), x + xx * v1("x_w"), x + xx * v1("x_k")
    xv, xa, xg = x + xx * v1("x_v"), x + xx * v1("x_a"), x + xx * v1("x_g")
    r = xr @ p["receptance.weight"].T
    k = xk @ p["key.weight"].T
    v = xv @ p["value.weight"].T
    w = np.tanh(xw @ p["w1"]) @ p["w2"]
    a = sigmoid(v1("a0") + (xa @ p["a1"]) @ p["a2"])
    g = sigmoid(xg @ p["g1"]) @ p["g2"]
    kk = k * v1("k_k")
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
    k = k * (1 + (a - 1) * v1("k_a"))
    decay = np.exp(-0.606531 * sigmoid(v1("w0") + w))
    decay_exact = np.exp(-np.exp(-softplus(-(v1("w0") + w)) - 0.5))
    assert np.allclose(decay, decay_exact, rtol=1e-6)
    decay = decay_exact  # 0.606531 is e^-0.5 to 6 digits only
    outs = []
    for t in range(len(x)):
        ab = np.outer(-kk[t], kk[t] * a[t])
        state = state * decay[t][None, :] + state @ ab + np.outer(v[t], k[t])
        outs.append(state @ r[t])
    o = np.array(outs)
    # GroupNorm with one group (one head) over the C channels, eps 64e-5
    mu = o.mean(axis=-1, keepdims=True)
    var = o.var(axis=-1, keepdims=True)
    o = (o - mu) / np.sqrt(var + 64e-5) * p["ln_x.weight"] + p["ln_x.bias"]
    o = o + np.sum(r * k * p["r_k"].reshape(C), axis=-1, keepdims=True) * v
    return (o * g) @ p["W_o"].T, {"x_prev": x[-1], "S": state}


# -------------------------------------------------------------------- LM
# examples/lm.seq: embedding, pre-norm residual blocks (RMSNorm, Mamba mixer,
# RMSNorm, GELU MLP), final RMSNorm, head. x is [L] token ids.


def lm(p, x, st):
    h = p["embedding.weight"][x]
    n_layer = 1 + max(int(k.split(".")[1]) for k in p if k.startswith("blocks."))
    for i in range(n_layer):
        pre = "blocks.%d." % i
        mix = {k[len(pre) + len("mixer."):]: v for k, v in p.items() if k.startswith(pre + "mixer.")}
        y, _ = mamba(mix, rms_norm(h, p[pre + "norm.weight"]), {})
        h = h + y
        up = rms_norm(h, p[pre + "mlp_norm.weight"]) @ p[pre + "mlp.up.weight"].T
        h = h + gelu(up) @ p[pre + "mlp.down.weight"].T
    return rms_norm(h, p["norm_f.weight"]) @ p["lm_head.weight"].T, {}


# ------------------------------------------------------------------ Titans
# Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test
# Time", section 3.1: eqs. 10, 12, 13, 15; q, k, v as in section 4.4.


def titans(p, x, st):
    """The MLP memory M(k) = W2 silu(W1 k), one gradient step per token on
    |M(k) - v|^2 with momentum S and forgetting gate alpha. The gradient is
    derived by hand here (backpropagation through the two layers), not by
    an autodiff system:
        e = W2 h - v,  h = silu(a),  a = W1 k
        dL/dW2 = 2 e h^T
        dL/dW1 = ((W2^T 2e) * silu'(a)) k^T,  silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)."""
    W1 = np.array(st.get("W1", p["W1_0"]), dtype=float)
    W2 = np.array(st.get("W2", p["W2_0"]), dtype=float)
    S1 = zeros_or(st, "S1", W1.shape)
    S2 = zeros_or(st, "S2", W2.shape)
    ys = []
    for xt in x:
        q = l2normalize_fla(silu(p["W_q"] @ xt))
        k = l2normalize_fla(silu(p["W_k"] @ xt))
        v = silu(p["W_v"] @ xt)
        alpha = sigmoid(p["w_alpha"] @ xt)
        eta = sigmoid(p["w_eta"] @ xt)
        theta = sigmoid(p["w_theta"] @ xt)
        a = W1 @ k
        s = sigmoid(a)
        h = a * s
        e = W2 @ h - v
        g2 = np.outer(2 * e, h)
        g1 = np.outer((W2.T @ (2 * e)) * s * (1 + a * (1 - s)), k)
        S1 = eta * S1 - theta * g1
        S2 = eta * S2 - theta * g2
        W1 = (1 - alpha) * W1 + S1
        W2 = (1 - alpha) * W2 + S2
        ys.append(W2 @ silu(W1 @ q))
    return np.array(ys), {"W1": W1, "W2": W2, "S1": S1, "S2": S2}


# ------------------------------------------------------------- pLSTM 2D
# Poeppel et al. 2025, section 4: states on the edges of a grid, P-mode
# (an orientation gate splits each incoming state between the right and the
# down edge), scalar gates.


def plstm2d(p, x, st):
    """x [X, Y, I] (rows, positions); Cr leaves a position to the right, Cd
    downward. Position (i, j) reads Cr of (i, j-1) (0 at j = 0) and Cd of
    (i-1, j) (the initial Cd at i = 0)."""
    X, Y, _ = x.shape
    Dk, Dv = p["W_q"].shape[0], p["W_v"].shape[0]
    Cr = zeros_or(st, "Cr", (Y, Dv, Dk))
    Cd = zeros_or(st, "Cd", (Y, Dv, Dk))
    ys = np.zeros((X, Y, Dv))
    for i in range(X):
        new_r, new_d = np.empty_like(Cr), np.empty_like(Cd)
        for j in range(Y):
            xt = x[i, j]
            q, k, v = p["W_q"] @ xt, p["W_k"] @ xt, p["W_v"] @ xt
            s = sigmoid(p["w_S"] @ xt + p["b_S"])
            t = np.tanh(p["w_T"] @ xt + p["b_T"])
            m = sigmoid(p["w_M"] @ xt + p["b_M"])
            d = sigmoid(p["w_D"] @ xt + p["b_D"])
            o = sigmoid(p["w_O"] @ xt + p["b_O"])
            left = new_r[j - 1] if j > 0 else np.zeros((Dv, Dk))
            into = left + Cd[j]
            ys[i, j] = (m * into @ q + d * (q @ k) * v) / math.sqrt(Dk)
            new_r[j] = o * (t * into + s * np.outer(v, k))
            new_d[j] = (1 - o) * (t * into + s * np.outer(v, k))
        Cr, Cd = new_r, new_d
    return ys, {"Cr": Cr, "Cd": Cd}


# ------------------------------------------------------------- LightNet
# Qin et al. 2024, arXiv:2405.21022: the additive recurrence, written as the
# unrolled sums S = diag(1/E) U (no stabilizer: float64 and small keys).


def lightnet(p, x, st):
    nh = LIGHTNET_HEADS
    q = silu(split_heads(x @ p["W_q"].T, nh))   # [NH, L, Dk]
    k = split_heads(x @ p["W_k"].T, nh)
    v = split_heads(x @ p["W_v"].T, nh)         # [NH, L, Dv]
    Dk, Dv = q.shape[2], v.shape[2]
    # A given state (m, E, U) stands for the sums exp(m) E, exp(m) U.
    m0 = zeros_or(st, "m", (nh, Dk)) if "m" in st else np.full((nh, Dk), -1e30)
    E = zeros_or(st, "E", (nh, Dk)) * np.exp(m0)
    U = zeros_or(st, "U", (nh, Dv, Dk)) * np.exp(m0)[:, None, :]
    ys = []
    for t in range(len(x)):
        w = np.exp(k[:, t])                     # [NH, Dk]
        E = E + w
        U = U + v[:, t, :, None] * w[:, None, :]
        ys.append(np.einsum("hvk,hk->hv", U, q[:, t] / E).reshape(-1))
    return np.array(ys), {}


# The fixtures' head count (the weights fix only NH * Dk: --dims NH=2).
LIGHTNET_HEADS = 2


def lightnet2d(p, x, st):
    """x [X, Y, I]; y(i, j) reads the sums over the quadrant (i', j') <= (i, j),
    computed directly (no recurrence)."""
    X, Y, _ = x.shape
    nh = LIGHTNET_HEADS
    flat = x.reshape(X * Y, -1)
    q = silu(split_heads(flat @ p["W_q"].T, nh)).reshape(nh, X, Y, -1)
    k = split_heads(flat @ p["W_k"].T, nh).reshape(nh, X, Y, -1)
    v = split_heads(flat @ p["W_v"].T, nh).reshape(nh, X, Y, -1)
    w = np.exp(k)
    ys = np.zeros((X, Y, nh * v.shape[-1]))
    for i in range(X):
        for j in range(Y):
            E = w[:, :i + 1, :j + 1].sum(axis=(1, 2))                              # [NH, Dk]
            U = np.einsum("hxyv,hxyk->hvk", v[:, :i + 1, :j + 1], w[:, :i + 1, :j + 1])
            ys[i, j] = np.einsum("hvk,hk->hv", U, q[:, i, j] / E).reshape(-1)
    return ys, {}
